//! Replays the committed fuzz corpus (`fuzz/corpus/{header,config,policy,hlog}/`) through
//! the checks the cargo-fuzz targets make (`fuzz/checks.rs`, included as is), so that
//! `cargo test --workspace` keeps the corpus green on stable without nightly or
//! libFuzzer.
//!
//! The header seeds are written by the ignored test `write_header_seeds`:
//! `cargo test -p qos-tools --test fuzz_corpus -- --ignored write_header_seeds`.

use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../../fuzz/checks.rs"]
mod checks;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every file of `fuzz/corpus/<target>/`, sorted; fails when there is none.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {}: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            files.push((path, bytes));
        }
    }
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Runs `check` on every file, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = corpus(target);
    for (path, bytes) in &files {
        if std::panic::catch_unwind(|| check(bytes)).is_err() {
            panic!(
                "fuzz corpus file {} fails the `{target}` checks (reproduce with \
                 `cargo +nightly fuzz run {target} {}` in fuzz/)",
                path.display(),
                path.display()
            );
        }
    }
    files.len()
}

#[test]
fn header_corpus_parses_without_panics_and_round_trips() {
    let n = replay("header", checks::header);
    assert!(n >= 5, "only {n} header inputs");
}

#[test]
fn config_corpus_is_accepted_or_rejected_and_accepted_configs_hold_their_invariants() {
    let n = replay("config", checks::config);
    assert!(n >= 5, "only {n} config inputs");
}

#[test]
fn policy_corpus_round_trips_through_toml_and_json() {
    let n = replay("policy", checks::policy);
    assert!(n >= 3, "only {n} policy inputs");
}

#[test]
fn hlog_corpus_is_read_or_refused_by_line_and_sums_without_panics() {
    let n = replay("hlog", checks::hlog);
    assert!(n >= 20, "only {n} hlog inputs");
}

/// The seed headers of the `header` corpus: valid ones at the extremes, truncated
/// ones, and one of each rejection. Written once; `cmin` keeps what it needs.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_header_seeds() {
    use qos_tools::header::{Header, LEN};

    let dir = corpus_dir("header");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let valid = Header::new(0x0102_0304_0506_0708, 5, 42, 1_700_000_000_000_000_000);
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        ("seed-valid-zero", Header::new(0, 0, 0, 0).encode().to_vec()),
        (
            "seed-valid-max",
            Header::new(u64::MAX, 7, u64::MAX, u64::MAX)
                .encode()
                .to_vec(),
        ),
        (
            "seed-valid-flags",
            Header {
                flags: 0xBEEF,
                ..valid
            }
            .encode()
            .to_vec(),
        ),
        ("seed-truncated-magic", valid.encode()[..LEN - 1].to_vec()),
        ("seed-truncated-4", valid.encode()[..4].to_vec()),
        ("seed-plain", b"hello, plain udp client".to_vec()),
        ("seed-empty", Vec::new()),
    ];
    let mut with_payload = valid.encode().to_vec();
    with_payload.extend_from_slice(&[0xAA; 64]);
    seeds.push(("seed-valid-payload", with_payload));
    let mut bad_version = valid.encode();
    bad_version[4] = 2;
    seeds.push(("seed-bad-version", bad_version.to_vec()));
    let mut bad_priority = valid.encode();
    bad_priority[5] = 8;
    seeds.push(("seed-bad-priority", bad_priority.to_vec()));
    let mut bad_magic = valid.encode();
    bad_magic[0] = b'X';
    seeds.push(("seed-bad-magic", bad_magic.to_vec()));
    for (name, bytes) in seeds {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
