//! `qos-ctl` end to end against real components on loopback: a real
//! `qos_control::plane::ControlPlane` around a small running `Dataplane`, its HTTP API,
//! its audit log, and `.hlog` files written by `qos_control::hlog::HlogWriter`. The CLI
//! runs through `qos_tools::ctl::cli::run` (the binary's own code path) and, in
//! `the_binary_*`, as the built `qos-ctl` process. Each test is bounded (a few seconds),
//! uses loopback only and removes its temp dir.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use qos_control::audit::VerifyReport;
use qos_control::hlog::HlogWriter;
use qos_control::plane::{ControlConfig, ControlPlane};
use qos_control::policy::signing;
use qos_dataplane::runtime::{Dataplane, Egress, Outbox, Pinning, StopMode};
use qos_dataplane::sched::PolicySpec;
use qos_tools::ctl::cli::{Cli, run};
use qos_tools::ctl::http::ApiClient;
use qos_tools::ctl::{self, CtlError, SignatureSource};

// ---------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "qos-ctl-{name}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `text` to `name` and returns its path as a string (for argv).
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        s(&p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// Sends everything the scheduler releases.
struct Sink;
impl Egress<u64> for Sink {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        while out.pop().is_some() {}
    }
}

/// A control plane on 127.0.0.1:0 around a one-worker dataplane running the default
/// policy (version 1), its audit log in `dir/audit.jsonl`.
fn plane(dir: &TempDir, verifying_key: Option<&Path>, token: Option<&str>) -> ControlPlane<u64> {
    let policy = PolicySpec {
        disconnect: false,
        ..PolicySpec::default()
    }
    .build()
    .unwrap();
    let (dp, _producers) = Dataplane::<u64>::builder()
        .workers(1)
        .pinning(Pinning::Off)
        .policy(Arc::new(policy))
        .build(|_| Sink)
        .unwrap();
    ControlPlane::start(
        dp,
        ControlConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tick: Duration::from_millis(50),
            report_every: Duration::from_millis(50),
            audit_log: Some(dir.path("audit.jsonl")),
            verifying_key: verifying_key.map(|k| signing::read_verifying_key(k).unwrap()),
            bearer_token: token.map(str::to_owned),
            ..ControlConfig::default()
        },
    )
    .unwrap()
}

/// Runs `qos-ctl args...` through the library entry point; (exit code, stdout, stderr).
fn ctl(args: &[&str]) -> (u8, String, String) {
    let cli = Cli::try_parse_from(std::iter::once("qos-ctl").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(cli, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn status_json(addr: &str) -> serde_json::Value {
    let api = ApiClient::new(addr, None).unwrap();
    ctl::fetch_json(&api, "/status").unwrap().1
}

/// Polls `f` every 20 ms until it holds; fails after 3 s.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let limit = Instant::now() + Duration::from_secs(3);
    while !f() {
        assert!(Instant::now() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const V2: &str = "version = 2\npreset = \"default\"\ndisconnect = false\nmax_queue_depth = 2000\n";

// ---------------------------------------------------------------------------------
// Policies: keygen -> sign -> apply -> status
// ---------------------------------------------------------------------------------

/// keygen writes both key files; `policy sign --out` then `policy apply --signature`
/// runs version 2 on the control plane and on its worker, `status` shows it; applying
/// the same bytes again (signed on the fly with `--key`) is the idempotent no-op.
#[test]
fn keygen_sign_apply_runs_version_2_and_status_shows_it() {
    let dir = TempDir::new("apply");
    let keys = dir.path("keys");
    let (code, out, err) = ctl(&["keygen", "--out", &s(&keys)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(ctl::SIGNING_KEY_FILE) && out.contains(ctl::VERIFYING_KEY_FILE));
    let signing_key = keys.join(ctl::SIGNING_KEY_FILE);
    let p = plane(&dir, Some(&keys.join(ctl::VERIFYING_KEY_FILE)), None);
    let addr = p.addr().to_string();
    let doc = dir.write("v2.toml", V2);
    let sig = s(&dir.path("v2.sig"));

    let (code, out, err) = ctl(&[
        "policy",
        "sign",
        &doc,
        "--key",
        &s(&signing_key),
        "--out",
        &sig,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("wrote the signature"), "{out}");
    let written = std::fs::read_to_string(&sig).unwrap();
    assert_eq!(written.trim().len(), 88, "64 bytes of base64: {written:?}");
    // The printed form is the same signature (ed25519 is deterministic).
    let (_, printed, _) = ctl(&["policy", "sign", &doc, "--key", &s(&signing_key)]);
    assert_eq!(printed, written);

    let (code, out, err) = ctl(&["policy", "apply", &doc, "--signature", &sig, "--api", &addr]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("{addr}: applied: policy version 2 is running\n")
    );
    wait_until("the worker to run version 2", || {
        status_json(&addr)["worker_policy_versions"] == serde_json::json!([2])
    });
    let (code, out, _) = ctl(&["status", "--api", &addr]);
    assert_eq!(code, 0);
    assert!(out.contains("policy version  2\n"), "{out}");
    let (code, raw, _) = ctl(&["status", "--api", &addr, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["policy_version"], 2);

    let again = ctl::apply_policy(
        &ApiClient::new(&addr, None).unwrap(),
        Path::new(&doc),
        &SignatureSource::Key(signing_key),
    )
    .unwrap();
    assert_eq!(
        again,
        ctl::Applied {
            version: 2,
            changed: false
        }
    );
    p.shutdown(StopMode::Discard).unwrap();
}

/// With a verifying key configured, an unsigned document, one signed by another key,
/// and a signature of other bytes are each refused (403) with the server's reason
/// naming `signature`; exit code 1; the running version stays 1. A stale version is
/// refused (409) naming `version`.
#[test]
fn unsigned_or_wrongly_signed_apply_is_refused_and_the_version_stays() {
    let dir = TempDir::new("refuse");
    let good = ctl::keygen(&dir.path("good")).unwrap();
    let other = ctl::keygen(&dir.path("other")).unwrap();
    let p = plane(&dir, Some(&good.verifying), None);
    let addr = p.addr().to_string();
    let doc = dir.write("v2.toml", V2);
    let api = ApiClient::new(&addr, None).unwrap();

    let refused = |source: SignatureSource, reason: &str| match ctl::apply_policy(
        &api,
        Path::new(&doc),
        &source,
    ) {
        Err(CtlError::Refused {
            status,
            message,
            field,
            ..
        }) => {
            assert_eq!(status, 403, "{message}");
            assert_eq!(field.as_deref(), Some("signature"));
            assert!(message.contains(reason), "{message}");
        }
        other => panic!("{source:?}: expected a refusal, got {other:?}"),
    };
    refused(SignatureSource::None, "signature: missing");
    refused(
        SignatureSource::Key(other.signing.clone()),
        "does not verify",
    );
    // A valid signature, of other bytes.
    let v3 = dir.write("v3.toml", "version = 3\n");
    let sig = dir.path("v3.sig");
    ctl::write_signature(
        &sig,
        &ctl::sign_policy(Path::new(&v3), &good.signing).unwrap(),
    )
    .unwrap();
    refused(SignatureSource::File(sig), "does not verify");

    // A signature file that is not a signature is refused here, before sending (exit 3).
    let junk = dir.write("junk.sig", "not a signature\n");
    let (code, _, err) = ctl(&[
        "policy",
        "apply",
        &doc,
        "--signature",
        &junk,
        "--api",
        &addr,
    ]);
    assert_eq!(code, ctl::EXIT_FAILED);
    assert!(
        err.contains("junk.sig: signature: \"not a signature\" is malformed"),
        "{err}"
    );

    // Through the CLI: the server's reason on stderr, exit 1, nothing on stdout.
    let (code, out, err) = ctl(&["policy", "apply", &doc, "--api", &addr]);
    assert_eq!(code, ctl::EXIT_REFUSED);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!(
            "qos-ctl: {addr} refused POST /policy (403): signature: missing"
        )),
        "{err}"
    );

    let stale = dir.write("v0.toml", "version = 0\n");
    let (code, _, err) = ctl(&[
        "policy",
        "apply",
        &stale,
        "--key",
        &s(&good.signing),
        "--api",
        &addr,
    ]);
    assert_eq!(code, ctl::EXIT_REFUSED);
    assert!(err.contains("(409): version: 0 is stale"), "{err}");

    assert_eq!(status_json(&addr)["policy_version"], 1);
    p.shutdown(StopMode::Discard).unwrap();
}

/// `policy validate` prints the summary of a good document (exit 0) and names the field,
/// the value and what was expected for a bad one (exit 1), TOML or JSON; an unreadable
/// file is exit 3 naming the file.
#[test]
fn validate_names_the_field_of_a_bad_document() {
    let dir = TempDir::new("validate");
    let good = dir.write("good.toml", qos_control::policy::EXAMPLE_TOML);
    let (code, out, err) = ctl(&["policy", "validate", &good]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("valid: policy version 7\n"), "{out}");
    assert!(
        out.contains("High") && out.contains("25%") && out.contains("p7 10 ms"),
        "{out}"
    );

    let shares = dir.write(
        "shares.toml",
        "version = 3\n[[tiers]]\nname = \"All\"\npriorities = [0, 1, 2, 3, 4, 5, 6, 7]\nshare_percent = 90\n",
    );
    match ctl::validate_policy(Path::new(&shares)) {
        Err(CtlError::PolicyRejected { rejection, .. }) => {
            assert_eq!(
                rejection.field(),
                Some("tiers[*].share_percent"),
                "{rejection}"
            )
        }
        other => panic!("{other:?}"),
    }
    let (code, out, err) = ctl(&["policy", "validate", &shares]);
    assert_eq!((code, out.as_str()), (ctl::EXIT_REFUSED, ""));
    assert_eq!(
        err,
        format!(
            "qos-ctl: {shares}: tiers[*].share_percent: shares sum to 90, expected shares summing to 100\n"
        )
    );

    let json = dir.write("depth.json", r#"{"version": 2, "max_queue_depth": 0}"#);
    let (code, _, err) = ctl(&["policy", "validate", &json]);
    assert_eq!(code, ctl::EXIT_REFUSED);
    assert!(err.contains("max_queue_depth: 0, expected"), "{err}");

    let typo = dir.write("typo.toml", "version = 2\nmax_queue_dept = 5\n");
    let (code, _, err) = ctl(&["policy", "validate", &typo]);
    assert_eq!(code, ctl::EXIT_REFUSED);
    assert!(err.contains("max_queue_dept"), "{err}");

    let missing = s(&dir.path("missing.toml"));
    let (code, _, err) = ctl(&["policy", "validate", &missing]);
    assert_eq!(code, ctl::EXIT_FAILED);
    assert!(
        err.starts_with(&format!("qos-ctl: {missing}: cannot read")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------

/// `audit verify` passes on the plane's own audit log (exit 0, with the record count),
/// also anchored at the head `/status` showed, and names the anchored line for an anchor
/// with another hash; after line 2 of a copy is edited it names line 2 (exit 1); a copy
/// with a torn last line is reported as torn.
#[test]
fn audit_verify_passes_on_the_planes_log_and_names_an_edited_line() {
    let dir = TempDir::new("audit");
    let p = plane(&dir, None, None);
    let addr = p.addr().to_string();
    for v in 2..=4 {
        let doc = dir.write(&format!("v{v}.toml"), &format!("version = {v}\n"));
        let (code, _, err) = ctl(&["policy", "apply", &doc, "--api", &addr]);
        assert_eq!(code, 0, "{err}");
    }
    let head = status_json(&addr)["audit_head"].clone();
    let anchor = format!(
        "{}:{}",
        head["next_seq"],
        head["last_hash"].as_str().unwrap()
    );
    p.shutdown(StopMode::Discard).unwrap();
    let log = dir.path("audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");

    let (code, out, err) = ctl(&["audit", "verify", &s(&log)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(": ok: {} records, head hash ", lines.len())),
        "{out}"
    );

    // Anchored at the head /status showed: still intact; an anchor whose hash the
    // file does not have names the anchored line.
    let (code, _, err) = ctl(&["audit", "verify", &s(&log), "--anchor", &anchor]);
    assert_eq!(code, 0, "{err}");
    let seq: u64 = head["next_seq"].as_u64().unwrap();
    let wrong = format!("{seq}:{}", "ab".repeat(32));
    let (code, _, err) = ctl(&["audit", "verify", &s(&log), "--anchor", &wrong]);
    assert_eq!(code, ctl::EXIT_REFUSED);
    assert!(err.contains(&format!("line {seq}: tampered")), "{err}");
    let (code, _, err) = ctl(&["audit", "verify", &s(&log), "--anchor", "twelve"]);
    assert_eq!(code, ctl::EXIT_FAILED);
    assert!(err.contains("--anchor \"twelve\""), "{err}");

    // Edit line 2: its timestamp, one digit; it still parses, line 3 no longer links.
    let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    edited[1] = bump_timestamp(&edited[1]);
    let copy = dir.path("edited.jsonl");
    std::fs::write(&copy, edited.join("\n") + "\n").unwrap();
    assert_eq!(
        ctl::verify_audit(&copy, None).unwrap(),
        VerifyReport::Tampered { line: 2 }
    );
    let (code, out, err) = ctl(&["audit", "verify", &s(&copy)]);
    assert_eq!((code, out.as_str()), (ctl::EXIT_REFUSED, ""));
    assert_eq!(err, format!("qos-ctl: {}: line 2: tampered\n", s(&copy)));

    let torn = dir.path("torn.jsonl");
    std::fs::write(&torn, format!("{text}{{\"seq\":")).unwrap();
    let (code, _, err) = ctl(&["audit", "verify", &s(&torn)]);
    assert_eq!(code, ctl::EXIT_REFUSED);
    assert!(
        err.contains(&format!("line {}: torn", lines.len() + 1)),
        "{err}"
    );
}

fn bump_timestamp(line: &str) -> String {
    let key = "\"ts_unix_ms\":";
    let at = line.find(key).unwrap() + key.len();
    let digits = line[at..].find(|c: char| !c.is_ascii_digit()).unwrap();
    let ts: u64 = line[at..at + digits].parse().unwrap();
    format!("{}{}{}", &line[..at], ts + 1, &line[at + digits..])
}

// ---------------------------------------------------------------------------------
// HDR dumps
// ---------------------------------------------------------------------------------

const MS: u64 = 1_000_000;

fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000 * MS, 3).unwrap();
    for v in values {
        h.record(v).unwrap();
    }
    h
}

/// An `.hlog` as the control plane writes it: `p7.sojourn` holds 1..=1000 ms (one
/// value each, split over two intervals), `p6.sojourn` 400 values of 20 ms, `p0.sojourn`
/// 1..=100 ms; `w0.cost` 2 µs.
fn write_hlog(path: &Path) {
    let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut w = HlogWriter::create(path, start).unwrap();
    let second = Duration::from_secs(1);
    w.write_interval_at(
        "p7.sojourn",
        Duration::ZERO,
        second,
        &histogram((1..=500).map(|i| i * MS)),
    )
    .unwrap();
    w.write_interval_at(
        "p6.sojourn",
        Duration::ZERO,
        second,
        &histogram(vec![20 * MS; 400]),
    )
    .unwrap();
    w.write_interval_at(
        "p0.sojourn",
        Duration::ZERO,
        second,
        &histogram((1..=100).map(|i| i * MS)),
    )
    .unwrap();
    w.write_interval_at(
        "w0.cost",
        Duration::ZERO,
        second,
        &histogram(vec![2_000; 10]),
    )
    .unwrap();
    w.write_interval_at(
        "p7.sojourn",
        second,
        second,
        &histogram((501..=1000).map(|i| i * MS)),
    )
    .unwrap();
    w.finish().unwrap();
}

/// Within HdrHistogram's precision at 3 significant digits (0.1%).
fn near(got: u64, expected: u64) -> bool {
    got.abs_diff(expected) <= expected / 1000 + 1
}

/// `hdr print` sums each tag's intervals and reports the percentiles of the known values
/// (p7: 1..=1000 ms gives p50 500, p90 900, p99 990, p99.9 999, max 1000 ms), in ms;
/// `--tag p7` keeps only `p7.sojourn`.
#[test]
fn hdr_print_gives_the_known_percentiles() {
    let dir = TempDir::new("hdr");
    let log = dir.path("sojourn.hlog");
    write_hlog(&log);
    let rows = ctl::hdr::table(&log, &[]).unwrap().rows;
    let tags: Vec<&str> = rows.iter().map(|r| r.tag.as_deref().unwrap()).collect();
    assert_eq!(tags, ["p0.sojourn", "p6.sojourn", "p7.sojourn", "w0.cost"]);
    let p7 = &rows[2];
    assert_eq!((p7.intervals, p7.count), (2, 1000));
    for (got, expected) in [
        (p7.p50, 500),
        (p7.p90, 900),
        (p7.p99, 990),
        (p7.p999, 999),
        (p7.max, 1000),
    ] {
        assert!(near(got, expected * MS), "{got} ns, expected {expected} ms");
    }
    assert!(near(rows[1].p99, 20 * MS) && near(rows[0].p50, 50 * MS));

    let (code, out, err) = ctl(&["hdr", "print", &s(&log), "--tag", "p7"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("p50 ms") && lines[0].contains("p99.9 ms"),
        "{out}"
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cols[..3], ["p7.sojourn", "2", "1000"]);
    let ms: Vec<f64> = cols[3..].iter().map(|c| c.parse().unwrap()).collect();
    assert_eq!(ms.len(), 5, "{out}");
    for (got, expected) in ms.iter().zip([500.0, 900.0, 990.0, 999.0, 1000.0]) {
        assert!((got - expected).abs() <= expected / 1000.0 + 0.001, "{out}");
    }

    // A file that is not an interval log: exit 3 naming the file and line.
    let bad = dir.write(
        "bad.hlog",
        "#[StartTime: 1.0 (seconds since epoch)]\nnot,an,interval\n",
    );
    let (code, _, err) = ctl(&["hdr", "print", &bad]);
    assert_eq!(code, ctl::EXIT_FAILED);
    assert!(err.contains("bad.hlog:2: not a comment"), "{err}");
}

/// `hdr plot` writes a well-formed SVG with exactly one curve (`<polyline>`) per tag,
/// each with more than two points, the tag names in the legend and both axis labels.
#[test]
fn hdr_plot_writes_one_curve_per_tag_with_a_legend() {
    let dir = TempDir::new("plot");
    let log = dir.path("sojourn.hlog");
    write_hlog(&log);
    let svg_path = dir.path("sojourn.svg");
    let (code, out, err) = ctl(&[
        "hdr",
        "plot",
        &s(&log),
        "--out",
        &s(&svg_path),
        "--tag",
        "p0",
        "--tag",
        "p6",
        "--tag",
        "p7",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("3 curves"), "{out}");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    check_well_formed(&svg);
    // Axes and ticks are two-point polylines in black; curves have many points.
    let mut curves = Vec::new();
    for (i, _) in svg.match_indices("<polyline") {
        let element = &svg[i..i + svg[i..].find("/>").unwrap()];
        let points = element
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let xy: Vec<(f64, f64)> = points
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        if xy.len() > 2 {
            let stroke = element
                .split("stroke=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            curves.push((stroke.to_owned(), xy));
        }
    }
    assert_eq!(curves.len(), 3, "one curve per tag");
    let colors: std::collections::HashSet<&str> = curves.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(colors.len(), 3, "each curve its own colour");
    for (_, xy) in &curves {
        // Left to right, and latency never falls as the percentile rises (y grows down).
        assert!(
            xy.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 <= w[0].1),
            "{xy:?}"
        );
    }
    let texts = texts(&svg);
    for tag in ["p0.sojourn", "p6.sojourn", "p7.sojourn"] {
        let legend = format!("{tag} (");
        assert!(
            texts.iter().any(|t| t.starts_with(&legend)),
            "legend lacks {tag}: {texts:?}"
        );
    }
    assert!(!svg.contains("w0.cost"));
    for label in ["percentile", "latency (ms)", "50%", "90%", "99%", "99.9%"] {
        assert!(texts.iter().any(|t| t == label), "no {label}: {texts:?}");
    }
}

/// The contents of the `<text>` elements, trimmed.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .map(|t| {
            let body = &t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()];
            body.trim().to_owned()
        })
        .collect()
}

/// A minimal XML check: tags nest and close, one root `<svg>`, no stray `<` in text.
fn check_well_formed(svg: &str) {
    let mut stack: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let after = &rest[open..];
        if let Some(body) = after.strip_prefix("<?") {
            rest = &body[body.find("?>").unwrap() + 2..];
            continue;
        }
        if let Some(body) = after.strip_prefix("<!--") {
            rest = &body[body.find("-->").unwrap() + 3..];
            continue;
        }
        let close = after.find('>').expect("unterminated tag");
        let tag = &after[1..close];
        assert!(!tag.contains('<'), "stray < in {tag:?}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
        } else {
            let name = tag.split([' ', '\n', '\t', '/']).next().unwrap();
            if stack.is_empty() {
                roots += 1;
                assert_eq!(name, "svg");
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &after[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
    assert_eq!(roots, 1);
}

// ---------------------------------------------------------------------------------
// Keys, tokens, network errors, the binary
// ---------------------------------------------------------------------------------

/// keygen refuses to overwrite either key file (exit 3, naming it) and leaves the old
/// keys as they were; the signing key is mode 0600.
#[test]
fn keygen_never_overwrites() {
    let dir = TempDir::new("keygen");
    let keys = ctl::keygen(&dir.0).unwrap();
    let before = std::fs::read(&keys.signing).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys.signing)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, _, err) = ctl(&["keygen", "--out", &s(&dir.0)]);
    assert_eq!(code, ctl::EXIT_FAILED);
    assert!(
        err.contains(&format!("{}: exists already", s(&keys.signing))),
        "{err}"
    );
    assert_eq!(std::fs::read(&keys.signing).unwrap(), before);
    // Only the verifying key there: still refused, nothing written.
    std::fs::remove_file(&keys.signing).unwrap();
    assert!(matches!(
        ctl::keygen(&dir.0),
        Err(CtlError::KeyExists { .. })
    ));
    assert!(!keys.signing.exists());
}

/// With a bearer token configured, `status` with the token works, without it is
/// refused (401, exit 1); `integrity` prints the S11 statement.
#[test]
fn token_is_sent_and_integrity_is_shown() {
    let dir = TempDir::new("token");
    let p = plane(&dir, None, Some("s3cret"));
    let addr = p.addr().to_string();
    let (code, out, err) = ctl(&["status", "--api", &addr, "--token", "s3cret"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("policy version  1"), "{out}");
    let (code, _, err) = ctl(&["status", "--api", &addr]);
    assert_eq!(code, ctl::EXIT_REFUSED);
    assert!(
        err.contains("(401): missing or wrong bearer token"),
        "{err}"
    );
    // Before the worker's first report S11 cannot be checked: exit 1, the server's
    // statement on stderr. Once reported, it holds: exit 0.
    let (code, out, err) = ctl(&["integrity", "--api", &addr, "--token", "s3cret"]);
    if code != 0 {
        assert_eq!(code, ctl::EXIT_REFUSED);
        assert!(err.contains(": S11 cannot be checked"), "{out}{err}");
    }
    wait_until("a worker report", || {
        ctl(&["integrity", "--api", &addr, "--token", "s3cret"]).0 == 0
    });
    let (code, out, err) = ctl(&["integrity", "--api", &addr, "--token", "s3cret"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("S11 holds"), "{out}");
    assert!(
        out.contains("conserved") && out.contains("dropped  none"),
        "{out}"
    );
    p.shutdown(StopMode::Discard).unwrap();
}

/// Nobody listening, and a peer that accepts but never answers: both errors name the
/// address (exit 3), the second within the timeout.
#[test]
fn network_errors_name_the_address() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (code, _, err) = ctl(&["status", "--api", &closed]);
    assert_eq!(code, ctl::EXIT_FAILED);
    assert!(
        err.starts_with(&format!("qos-ctl: {closed}: cannot connect")),
        "{err}"
    );

    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let (code, _, err) = ctl(&["integrity", "--api", &addr, "--timeout", "0.3"]);
    assert_eq!(code, ctl::EXIT_FAILED);
    assert!(
        err.starts_with(&format!("qos-ctl: {addr}: GET /integrity: receive:")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(silent);
}

/// A malformed `--api` is a usage error (exit 2, as the docs say; found exiting 3 by a
/// red-team review), and the message tells a missing port from one out of range.
#[test]
fn a_malformed_api_address_is_a_usage_error_that_says_what_is_wrong() {
    for (addr, reason) in [
        ("127.0.0.1", "no port number"),
        ("127.0.0.1:", "no port number"),
        ("127.0.0.1:99999", "the port is not a number in 0..=65535"),
        ("https://127.0.0.1:9100", "https is not served"),
        ("127.0.0.1:9100/status", "a path after the address"),
    ] {
        let (code, out, err) = ctl(&["status", "--api", addr]);
        assert_eq!(code, ctl::EXIT_USAGE, "{addr}: {err}");
        assert!(out.is_empty(), "{addr}: {out}");
        assert!(err.starts_with("qos-ctl: "), "{addr}: {err}");
        assert!(err.contains(reason), "{addr}: {err}");
        assert_eq!(err.lines().count(), 1, "{addr}: {err}");
    }
}

/// The built binary: exit codes 0 / 1 / 2 and its output, against a running plane.
#[test]
fn the_binary_runs_against_a_real_plane() {
    let bin = env!("CARGO_BIN_EXE_qos-ctl");
    let dir = TempDir::new("bin");
    let p = plane(&dir, None, None);
    let addr = p.addr().to_string();
    let doc = dir.write("v2.toml", V2);

    let o = Command::new(bin)
        .args(["policy", "apply", &doc, "--api", &addr])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{addr}: applied: policy version 2 is running\n")
    );
    let o = Command::new(bin)
        .args(["status", "--api", &addr])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("policy version  2\n"));

    let bad = dir.write("bad.toml", "version = 3\nmax_queue_depth = 0\n");
    let o = Command::new(bin)
        .args(["policy", "validate", &bad])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("max_queue_depth: 0, expected"));

    let o = Command::new(bin)
        .args(["policy", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    p.shutdown(StopMode::Discard).unwrap();
}

/// O4: `hdr print` sums a long log in bounded memory. 4,000 intervals of the histograms
/// the control plane writes (1 ns to 100 s at 3 digits, 220 KB each once decoded) are
/// read by the real binary under a 256 MB address-space limit (`prlimit`); keeping
/// every interval took 899 MB. The sums are exact: 500 intervals per tag, 2 values each.
#[test]
fn hdr_print_of_a_long_log_fits_in_bounded_memory() {
    let dir = TempDir::new("hdr-long");
    let log = dir.path("long.hlog");
    let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut w = HlogWriter::create(&log, start).unwrap();
    let mut h = Histogram::<u64>::new_with_bounds(1, 100_000 * MS, 3).unwrap();
    h.record(3 * MS).unwrap();
    h.record(40 * MS).unwrap();
    for i in 0..4000u64 {
        let tag = format!("p{}.sojourn", i % 8);
        w.write_interval_at(&tag, Duration::from_secs(i / 8), Duration::from_secs(1), &h)
            .unwrap();
    }
    w.finish().unwrap();
    let out = Command::new("prlimit")
        .arg(format!("--as={}", 256u64 << 20))
        .arg(env!("CARGO_BIN_EXE_qos-ctl"))
        .args(["hdr", "print", &s(&log)])
        .output()
        .expect("prlimit (util-linux) runs qos-ctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 8, "{stdout}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1..3], ["500", "1000"], "{row}");
    }
}

/// O4: a log whose last line was cut short (the writer died mid-line) still prints:
/// the table of every whole line, and a warning on stderr naming the skipped line, exit
/// 0 (`hdr print` refused the whole file with exit 3 before). `hdr plot` does the same.
#[test]
fn hdr_print_and_plot_skip_a_torn_last_line_with_a_warning() {
    let dir = TempDir::new("hdr-torn");
    let log = dir.path("sojourn.hlog");
    write_hlog(&log);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.lines().count();
    std::fs::write(&log, &text[..text.len() - 20]).unwrap();
    let (code, out, err) = ctl(&["hdr", "print", &s(&log)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "sojourn.hlog:{lines}: the last line is incomplete"
        )),
        "{err}"
    );
    // The cut line was the second p7 interval: p7 keeps its first (500 values).
    let p7 = out.lines().find(|l| l.starts_with("p7.sojourn")).unwrap();
    let cols: Vec<&str> = p7.split_whitespace().collect();
    assert_eq!(cols[1..3], ["1", "500"], "{out}");
    let svg = dir.path("torn.svg");
    let (code, _, err) = ctl(&["hdr", "plot", &s(&log), "--out", &s(&svg)]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the last line is incomplete"), "{err}");
}

/// Audit red team: the verifier kept 80 bytes for every line before judging, so a file
/// of newlines took 80 times its size (8 MiB: 662 MB). It now judges while reading and
/// stops at the first problem: a 64 MiB file of newlines (5 GB before) is refused at
/// line 1 under a 256 MB address-space limit.
#[test]
fn audit_verify_of_a_hostile_file_fits_in_bounded_memory() {
    let dir = TempDir::new("audit-newlines");
    let path = dir.path("audit.jsonl");
    std::fs::write(&path, vec![b'\n'; 64 << 20]).unwrap();
    let out = Command::new("prlimit")
        .arg(format!("--as={}", 256u64 << 20))
        .arg(env!("CARGO_BIN_EXE_qos-ctl"))
        .args(["audit", "verify", &s(&path)])
        .output()
        .expect("prlimit (util-linux) runs qos-ctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(ctl::EXIT_REFUSED)),
        "{err}"
    );
    assert!(err.contains("line 1: tampered"), "{err}");
}

/// A FIFO at `path` (the `mkfifo` command, as an operator would make one).
fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(ok.success());
}

/// Runs the real binary with `args`, killed after 10 s: (exit code, stderr, seconds).
fn bounded(args: &[&str]) -> (Option<i32>, String, f64) {
    let start = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qos-ctl"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed().as_secs_f64(),
    )
}

/// ctl red team: a FIFO given as a policy, key or signature to read, or as the
/// signature or plot to write, hung qos-ctl for good (a plain open waits for the other
/// end). Now a FIFO nobody writes reads as empty, and one nobody reads is refused, both
/// at once.
#[test]
fn files_that_are_fifos_are_answered_at_once() {
    let dir = TempDir::new("fifos");
    let keys = dir.path("keys");
    let (code, _, err) = ctl(&["keygen", "--out", &s(&keys)]);
    assert_eq!(code, 0, "{err}");
    let key = s(&keys.join(ctl::SIGNING_KEY_FILE));
    let doc = dir.write("v2.toml", V2);
    let log = dir.path("sojourn.hlog");
    write_hlog(&log);
    let fifo = dir.path("fifo");
    mkfifo(&fifo);
    let f = s(&fifo);
    let (refused, failed) = (i32::from(ctl::EXIT_REFUSED), i32::from(ctl::EXIT_FAILED));
    for (args, code, says) in [
        (
            vec!["policy", "validate", &f],
            refused,
            "missing field `version`",
        ),
        (
            vec!["policy", "sign", &doc, "--key", &f],
            failed,
            "0 bytes of signing key",
        ),
        (
            vec!["policy", "sign", &doc, "--key", &key, "--out", &f],
            failed,
            "nobody reads",
        ),
        (
            vec![
                "policy",
                "apply",
                &doc,
                "--signature",
                &f,
                "--api",
                "127.0.0.1:9",
            ],
            failed,
            "signature",
        ),
        (
            vec!["hdr", "plot", &s(&log), "--out", &f],
            failed,
            "nobody reads",
        ),
    ] {
        let (got, err, secs) = bounded(&args);
        assert!(secs < 5.0, "{args:?}: {secs:.1} s");
        assert_eq!(got, Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// A server that answers each connection with `head`, then sends `drip` one byte every
/// 100 ms for up to 30 s (or until the client leaves).
fn trickling_server(head: &'static [u8], drip: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in l.incoming().take(1) {
            let mut c = conn.unwrap();
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut c, &mut buf);
            let _ = std::io::Write::write_all(&mut c, head);
            for _ in 0..300 {
                for &b in drip {
                    if std::io::Write::write_all(&mut c, &[b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    });
    addr
}

/// ctl red team: `--timeout` bounded each read, not the answer, so a server sending a
/// byte a second (body or head), or interim `100 Continue` responses without end, held
/// qos-ctl for as long as it liked (killed after 40 s). Now the whole answer has one
/// deadline.
#[test]
fn a_trickling_server_is_cut_off_at_the_timeout() {
    for (head, drip) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"[..],
            &b"x"[..],
        ),
        (&b"HTTP/1.1 200 OK\r\nX-Slow: "[..], &b"y"[..]),
        (&b""[..], &b"HTTP/1.1 100 Continue\r\n\r\n"[..]),
    ] {
        let addr = trickling_server(head, drip);
        let started = Instant::now();
        let (code, _, err) = ctl(&["status", "--api", &addr, "--timeout", "1"]);
        let took = started.elapsed();
        assert_eq!(code, ctl::EXIT_FAILED, "{err}");
        assert!(err.contains("timed out"), "{err}");
        assert!(took < Duration::from_secs(3), "{took:?}: {err}");
    }
}

/// ctl red team: `hdr print` and `status` into a full disk exited 0 with their output
/// lost: stdout is line-buffered, so the write of whole lines failed at once, unread,
/// and the final flush had nothing left to fail on.
#[test]
fn a_failed_write_to_stdout_exits_3() {
    let dir = TempDir::new("full");
    let log = dir.path("sojourn.hlog");
    write_hlog(&log);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qos-ctl"))
        .args(["hdr", "print", &s(&log)])
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(ctl::EXIT_FAILED)),
        "{err}"
    );
    assert!(err.contains("qos-ctl: stdout: No space left"), "{err}");
}

/// ctl red team: the server's strings (health, warnings, errors; a metrics.db column
/// name reached `/status` through the store's error) were printed raw, so escape
/// sequences in them cleared the operator's screen and retitled the terminal. They are
/// written as escapes now, on stdout and stderr.
#[test]
fn control_characters_from_the_server_reach_the_terminal_as_escapes() {
    let body = "{\"error\":\"\\u001b[2J\\u001b]0;owned\\u0007\\u009b31m all good\",\"field\":null}";
    let head: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let addr = trickling_server(head, b"");
    let (code, out, err) = ctl(&["status", "--api", &addr, "--timeout", "2"]);
    assert_ne!(code, 0);
    assert_eq!(out, "");
    assert!(
        !err.contains('\u{1b}') && !err.contains('\u{7}') && !err.contains('\u{9b}'),
        "{err:?}"
    );
    assert!(
        err.contains("\\u001b[2J\\u001b]0;owned\\u0007\\u009b31m all good"),
        "{err}"
    );
}

/// Review finding: the escapes must keep `--json` output valid JSON. The server's JSON
/// may hold DEL and C1 characters raw in its strings (serde_json escapes only C0);
/// they come out as JSON escapes, so the printed JSON means the same.
#[test]
fn json_output_with_del_and_c1_stays_the_same_json() {
    let value = serde_json::json!({"health": "a\u{7f}b\u{85}c\u{1b}d", "n": 1});
    let body = serde_json::to_string(&value).unwrap();
    assert!(
        body.contains('\u{7f}') && body.contains('\u{85}'),
        "raw in the body"
    );
    let head: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let addr = trickling_server(head, b"");
    let (code, out, err) = ctl(&["status", "--api", &addr, "--json", "--timeout", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains('\u{7f}') && !out.contains('\u{85}'),
        "{out:?}"
    );
    let printed: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(printed, value);
}

/// Review finding: `--timeout 1e19` overflowed the answer's deadline (a panic); a
/// timeout of a day or more is a usage error.
#[test]
fn a_timeout_of_a_day_or_more_is_a_usage_error() {
    for t in ["1e19", "86400"] {
        let parsed =
            Cli::try_parse_from(["qos-ctl", "status", "--api", "127.0.0.1:9", "--timeout", t]);
        let e = parsed.expect_err(t).to_string();
        assert!(e.contains("under a day"), "{t}: {e}");
    }
    assert!(
        Cli::try_parse_from([
            "qos-ctl",
            "status",
            "--api",
            "127.0.0.1:9",
            "--timeout",
            "86399"
        ])
        .is_ok()
    );
}

/// ctl red team: a 500 exited 1 ("refused", as a 403 does) and a redirect printed an
/// empty reason. A server error exits 3; a redirect names where it points.
#[test]
fn a_server_error_exits_3_and_a_redirect_says_where() {
    let addr = trickling_server(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
        b"",
    );
    let (code, _, err) = ctl(&["status", "--api", &addr, "--timeout", "2"]);
    assert_eq!(code, ctl::EXIT_FAILED, "{err}");
    assert!(err.contains("(500): Internal Server Error"), "{err}");
    let addr = trickling_server(
        b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9200/status\r\nContent-Length: 0\r\n\r\n",
        b"",
    );
    let (code, _, err) = ctl(&["status", "--api", &addr, "--timeout", "2"]);
    assert_eq!(code, ctl::EXIT_REFUSED, "{err}");
    assert!(
        err.contains("redirected to http://127.0.0.1:9200/status"),
        "{err}"
    );
}
