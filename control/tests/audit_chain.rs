//! Audit log (C5): the chain of 20 real records verifies; each kind of damage is named
//! at the right line; reopening repairs a torn tail and continues the chain exactly.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use qos_control::audit::{
    AuditError, AuditHead, AuditLog, AuditOptions, AuditRecord, GENESIS_HASH, MAX_LINE_BYTES,
    VerifyReport, verify, verify_with_anchor,
};
use qos_control::logs::{BackpressureSeverity, ControlEvent};
use sha2::{Digest, Sha256};

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("qos-audit-{name}-{}-{n}", std::process::id()));
        // A leftover of an earlier run with the same pid must not leak into this one.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Twenty events of every kind, in a plausible order.
fn events() -> Vec<ControlEvent> {
    let kinds = [
        ControlEvent::PolicyApplied {
            version: 1,
            source: "startup".into(),
            sha256: "11".repeat(32),
            signed: false,
        },
        ControlEvent::BackpressureTriggered {
            stream_id: "3".into(),
            priority: 7,
            queue_depth: 9000,
            severity: BackpressureSeverity::Warning,
            trace_id: "0f".repeat(16),
            worker: 1,
        },
        ControlEvent::BackpressureTriggered {
            stream_id: "3".into(),
            priority: 7,
            queue_depth: 10_000,
            severity: BackpressureSeverity::Critical,
            trace_id: "0f".repeat(16),
            worker: 1,
        },
        ControlEvent::StreamDisconnected {
            stream_id: "3".into(),
            priority: 7,
            dropped: 10_001,
            worker: 1,
        },
        ControlEvent::PolicyRejected {
            version: None,
            source: "http".into(),
            reason: "tiers[0].share_percent: \"x\" is not a number".into(),
        },
        ControlEvent::PerfBudgetViolation {
            priority: 6,
            worker: 0,
            samples: 500,
            over_budget: 40,
            budget_ms: 20.0,
        },
        ControlEvent::PerfDegradeApplied {
            from: "NORMAL".into(),
            to: "DEGRADED".into(),
            hazard: "pool_near_full".into(),
            shed_tiers: vec!["Low".into()],
        },
        ControlEvent::HealthChanged {
            from: "NORMAL".into(),
            to: "DEGRADED".into(),
            reason: "pool 95% full".into(),
        },
        ControlEvent::PerfDegradeRecovered {
            from: "DEGRADED".into(),
            to: "NORMAL".into(),
            held_ms: 3000,
        },
        ControlEvent::StreamPromoted {
            stream_id: "8".into(),
            priority: 0,
            worker: 2,
        },
        ControlEvent::BackpressureCleared {
            stream_id: "3".into(),
            priority: 7,
            queue_depth: 100,
            worker: 1,
        },
    ];
    (0..20).map(|i| kinds[i % kinds.len()].clone()).collect()
}

const T0: u64 = 1_759_314_600_000;

/// Writes the 20 events with timestamps T0 + 1000*i; returns the head.
fn write_log(path: &Path) -> AuditHead {
    let mut log = AuditLog::open(path, AuditOptions::default()).unwrap();
    for (i, event) in events().iter().enumerate() {
        let info = log.append_at(event, T0 + 1000 * i as u64).unwrap();
        assert_eq!(info.seq, i as u64);
    }
    log.head()
}

/// The file's lines, each without its newline; asserts the file ends with one.
fn lines_of(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).unwrap();
    assert_eq!(bytes.last(), Some(&b'\n'));
    bytes[..bytes.len() - 1]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    fs::write(path, out).unwrap();
}

/// A copy of the 20-record log with `damage` applied to its lines.
fn damaged(dir: &TempDir, name: &str, damage: impl FnOnce(&mut Vec<Vec<u8>>)) -> PathBuf {
    let original = dir.path("original.jsonl");
    if !original.exists() {
        write_log(&original);
    }
    let mut lines = lines_of(&original);
    damage(&mut lines);
    let path = dir.path(name);
    write_lines(&path, &lines);
    path
}

/// Replaces the first occurrence of `from` in `line` by `to` (same length).
fn replace(line: &mut Vec<u8>, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let text = String::from_utf8(line.clone()).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    *line = text.replacen(from, to, 1).into_bytes();
}

/// Changes one digit of the timestamp: the line still parses, only its hash changes.
fn bump_ts(line: &mut Vec<u8>, index: usize) {
    let ts = (T0 + 1000 * index as u64).to_string();
    let mut changed = ts.clone().into_bytes();
    changed[3] = if changed[3] == b'9' {
        b'0'
    } else {
        changed[3] + 1
    };
    replace(line, &ts, std::str::from_utf8(&changed).unwrap());
}

/// Changes one hex digit of `prev`.
fn bump_prev(line: &mut [u8]) {
    let text = String::from_utf8(line.to_vec()).unwrap();
    let at = text.find("\"prev\":\"").unwrap() + 8 + 5;
    line[at] = if line[at] == b'a' { b'b' } else { b'a' };
}

#[test]
fn twenty_records_verify_and_every_line_is_what_the_format_says() {
    let dir = TempDir::new("ok");
    let path = dir.path("audit.jsonl");
    let head = write_log(&path);
    let lines = lines_of(&path);
    assert_eq!(lines.len(), 20);
    let mut prev = GENESIS_HASH.to_owned();
    for (i, (line, event)) in lines.iter().zip(events()).enumerate() {
        let record: AuditRecord = serde_json::from_slice(line).unwrap();
        assert_eq!(
            record,
            AuditRecord {
                seq: i as u64,
                ts_unix_ms: T0 + 1000 * i as u64,
                prev,
                event
            }
        );
        let text = std::str::from_utf8(line).unwrap();
        assert!(
            text.starts_with(&format!(
                "{{\"seq\":{i},\"ts_unix_ms\":{},\"prev\":\"",
                T0 + 1000 * i as u64
            )),
            "{text}"
        );
        prev = sha_hex(line);
    }
    assert_eq!(
        head,
        AuditHead {
            next_seq: 20,
            last_hash: prev.clone()
        }
    );
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Ok {
            lines: 20,
            head_hash: prev.clone()
        }
    );
    assert!(verify_with_anchor(&path, &head).unwrap().is_ok());
    // An anchor taken earlier still verifies a log that grew since.
    let early = AuditHead {
        next_seq: 5,
        last_hash: sha_hex(&lines[4]),
    };
    assert!(verify_with_anchor(&path, &early).unwrap().is_ok());
}

#[test]
fn empty_and_missing_files() {
    let dir = TempDir::new("empty");
    let path = dir.path("empty.jsonl");
    fs::write(&path, b"").unwrap();
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Ok {
            lines: 0,
            head_hash: GENESIS_HASH.into()
        }
    );
    let missing = dir.path("nope.jsonl");
    let err = verify(&missing).unwrap_err();
    assert!(matches!(err, AuditError::Io { .. }));
    assert!(err.to_string().contains("nope.jsonl"), "{err}");
    // Opening creates it, empty, with the genesis head.
    let log = AuditLog::open(&missing, AuditOptions::default()).unwrap();
    assert_eq!(
        log.head(),
        AuditHead {
            next_seq: 0,
            last_hash: GENESIS_HASH.into()
        }
    );
    assert_eq!(fs::read(&missing).unwrap().len(), 0);
}

#[test]
fn one_byte_changed_in_a_middle_line_names_that_line() {
    let dir = TempDir::new("mid");
    // Still valid JSON: a timestamp digit.
    let path = damaged(&dir, "ts.jsonl", |l| bump_ts(&mut l[6], 6));
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 7 });
    // Its prev.
    let path = damaged(&dir, "prev.jsonl", |l| bump_prev(&mut l[6]));
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 7 });
    // Its seq (6 -> 9): links fine, seq wrong.
    let path = damaged(&dir, "seq.jsonl", |l| {
        replace(&mut l[6], "\"seq\":6", "\"seq\":9")
    });
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 7 });
    // A byte in an event field.
    let path = damaged(&dir, "field.jsonl", |l| {
        replace(&mut l[6], "DEGRADED", "DEGRADEE")
    });
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 7 });
    // A byte that breaks the JSON.
    let path = damaged(&dir, "json.jsonl", |l| replace(&mut l[6], "{", "["));
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 7 });
    // A key renamed.
    let path = damaged(&dir, "key.jsonl", |l| {
        replace(&mut l[6], "\"prev\"", "\"prew\"")
    });
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 7 });
}

#[test]
fn one_byte_changed_in_the_first_line() {
    let dir = TempDir::new("first");
    let path = damaged(&dir, "ts.jsonl", |l| bump_ts(&mut l[0], 0));
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 1 });
    let path = damaged(&dir, "prev.jsonl", |l| bump_prev(&mut l[0]));
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 1 });
    let path = damaged(&dir, "seq.jsonl", |l| {
        replace(&mut l[0], "\"seq\":0", "\"seq\":5")
    });
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 1 });
}

#[test]
fn a_change_at_the_end_needs_the_anchor() {
    let dir = TempDir::new("last");
    let original = dir.path("original.jsonl");
    let head = write_log(&original);
    let lines = lines_of(&original);
    let anchor_19 = AuditHead {
        next_seq: 19,
        last_hash: sha_hex(&lines[18]),
    };

    // Last line's body: invisible to the file alone (documented), caught by the anchor.
    let path = damaged(&dir, "body.jsonl", |l| bump_ts(&mut l[19], 19));
    assert!(verify(&path).unwrap().is_ok());
    assert_eq!(
        verify_with_anchor(&path, &head).unwrap(),
        VerifyReport::Tampered { line: 20 }
    );

    // Last line's prev: the link into line 20 breaks; the anchor says line 20 changed.
    let path = damaged(&dir, "prev.jsonl", |l| bump_prev(&mut l[19]));
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::BrokenLink { line: 20 }
    );
    assert_eq!(
        verify_with_anchor(&path, &head).unwrap(),
        VerifyReport::Tampered { line: 20 }
    );

    // Line 19's body: same symptom, but the anchor on line 20 matches: line 19 changed.
    let path = damaged(&dir, "body19.jsonl", |l| bump_ts(&mut l[18], 18));
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::BrokenLink { line: 20 }
    );
    assert_eq!(
        verify_with_anchor(&path, &head).unwrap(),
        VerifyReport::Tampered { line: 19 }
    );
    // An anchor on line 19 itself catches it too.
    assert_eq!(
        verify_with_anchor(&path, &anchor_19).unwrap(),
        VerifyReport::Tampered { line: 19 }
    );

    // Last line's seq.
    let path = damaged(&dir, "seq.jsonl", |l| {
        replace(&mut l[19], "\"seq\":19", "\"seq\":10")
    });
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 20 });

    // Last line removed: only the anchor sees it.
    let path = damaged(&dir, "cut.jsonl", |l| {
        l.pop();
    });
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Ok {
            lines: 19,
            head_hash: sha_hex(&lines[18])
        }
    );
    assert_eq!(
        verify_with_anchor(&path, &head).unwrap(),
        VerifyReport::Truncated {
            line: 20,
            expected_seq: 19,
            anchored_seq: 19
        }
    );
}

#[test]
fn removed_lines_are_missing_at_the_gap() {
    let dir = TempDir::new("missing");
    let path = damaged(&dir, "7.jsonl", |l| {
        l.remove(6);
    });
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Missing {
            line: 7,
            expected_seq: 6,
            found_seq: 7
        }
    );
    let path = damaged(&dir, "7-8.jsonl", |l| {
        l.drain(6..8);
    });
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Missing {
            line: 7,
            expected_seq: 6,
            found_seq: 8
        }
    );
    let path = damaged(&dir, "1.jsonl", |l| {
        l.remove(0);
    });
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Missing {
            line: 1,
            expected_seq: 0,
            found_seq: 1
        }
    );
}

#[test]
fn swapped_moved_and_duplicated_lines_are_reordered() {
    let dir = TempDir::new("reorder");
    let path = damaged(&dir, "swap.jsonl", |l| l.swap(6, 7));
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Reordered {
            line: 7,
            expected_seq: 6,
            found_seq: 7
        }
    );
    let path = damaged(&dir, "swap-last.jsonl", |l| l.swap(18, 19));
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Reordered {
            line: 19,
            expected_seq: 18,
            found_seq: 19
        }
    );
    let path = damaged(&dir, "move.jsonl", |l| {
        let line = l.remove(6);
        l.push(line);
    });
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Reordered {
            line: 7,
            expected_seq: 6,
            found_seq: 7
        }
    );
    let path = damaged(&dir, "dup.jsonl", |l| {
        let copy = l[6].clone();
        l.insert(7, copy);
    });
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Reordered {
            line: 8,
            expected_seq: 7,
            found_seq: 6
        }
    );
}

#[test]
fn torn_lines_at_the_end_and_in_the_middle() {
    let dir = TempDir::new("torn");
    let original = dir.path("original.jsonl");
    write_log(&original);
    let bytes = fs::read(&original).unwrap();
    let lines = lines_of(&original);

    // Cut mid-way through the last line.
    let torn = dir.path("torn.jsonl");
    fs::write(&torn, &bytes[..bytes.len() - lines[19].len() / 2]).unwrap();
    assert_eq!(verify(&torn).unwrap(), VerifyReport::TornTail { line: 20 });
    // Cut just before the final newline: still torn (the writer always ends lines).
    fs::write(&torn, &bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(verify(&torn).unwrap(), VerifyReport::TornTail { line: 20 });

    // A half line followed by more lines: tampering, not a torn tail.
    let path = damaged(&dir, "mid.jsonl", |l| {
        let half = l[9].len() / 2;
        let glued = [&l[9][..half], &l[10][..]].concat();
        l.splice(9..11, [glued]);
    });
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 10 });

    // Only a torn line.
    let only = dir.path("only.jsonl");
    fs::write(&only, &lines[0][..30]).unwrap();
    assert_eq!(verify(&only).unwrap(), VerifyReport::TornTail { line: 1 });

    // An empty line in the middle.
    let path = damaged(&dir, "blank.jsonl", |l| l.insert(4, Vec::new()));
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 5 });
}

#[test]
fn an_overlong_line_is_tampering_and_an_overlong_tail_is_torn() {
    let dir = TempDir::new("long");
    let path = damaged(&dir, "long.jsonl", |l| {
        l.insert(3, vec![b'a'; MAX_LINE_BYTES + 10])
    });
    assert_eq!(verify(&path).unwrap(), VerifyReport::Tampered { line: 4 });
    let path = damaged(&dir, "longtail.jsonl", |_| {});
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend(std::iter::repeat_n(b'z', 2 * MAX_LINE_BYTES + 3));
    fs::write(&path, &bytes).unwrap();
    assert_eq!(verify(&path).unwrap(), VerifyReport::TornTail { line: 21 });
}

#[test]
fn reopening_continues_seq_and_chain_exactly() {
    let dir = TempDir::new("reopen");
    let path = dir.path("audit.jsonl");
    let head = write_log(&path);
    let mut log = AuditLog::open(
        &path,
        AuditOptions {
            fsync: true,
            anchor: Some(head.clone()),
        },
    )
    .unwrap();
    assert_eq!(log.head(), head);
    let event = ControlEvent::PolicyApplied {
        version: 2,
        source: "sighup".into(),
        sha256: "22".repeat(32),
        signed: true,
    };
    let info = log.append_at(&event, T0 + 99_000).unwrap();
    let lines = lines_of(&path);
    assert_eq!(lines.len(), 21);
    assert_eq!(info.seq, 20);
    assert_eq!(info.hash, sha_hex(&lines[20]));
    let record: AuditRecord = serde_json::from_slice(&lines[20]).unwrap();
    assert_eq!(
        record,
        AuditRecord {
            seq: 20,
            ts_unix_ms: T0 + 99_000,
            prev: head.last_hash.clone(),
            event
        }
    );
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Ok {
            lines: 21,
            head_hash: sha_hex(&lines[20])
        }
    );
    // The head before the append still anchors the longer log.
    assert!(verify_with_anchor(&path, &head).unwrap().is_ok());
}

#[test]
fn reopening_a_torn_tail_cuts_it_records_it_and_stays_verifiable() {
    let dir = TempDir::new("repair");
    let path = dir.path("audit.jsonl");
    write_log(&path);
    let bytes = fs::read(&path).unwrap();
    let lines = lines_of(&path);
    let keep = bytes.len() - lines[19].len() - 1; // 19 complete lines
    let torn_len = lines[19].len() / 3;
    let torn_bytes = &bytes[keep..keep + torn_len];
    fs::write(&path, &bytes[..keep + torn_len]).unwrap();
    assert_eq!(verify(&path).unwrap(), VerifyReport::TornTail { line: 20 });

    let mut log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    let after = lines_of(&path);
    assert_eq!(after.len(), 20);
    assert_eq!(after[..19], lines[..19]);
    let record: AuditRecord = serde_json::from_slice(&after[19]).unwrap();
    assert_eq!(record.seq, 19);
    assert_eq!(record.prev, sha_hex(&lines[18]));
    assert_eq!(
        record.event,
        ControlEvent::AuditTornTail {
            offset: keep as u64,
            bytes: torn_len as u64,
            sha256: sha_hex(torn_bytes),
        }
    );
    assert_eq!(
        log.head(),
        AuditHead {
            next_seq: 20,
            last_hash: sha_hex(&after[19])
        }
    );
    log.append_at(&events()[3], T0).unwrap();
    drop(log);
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Ok {
            lines: 21,
            head_hash: sha_hex(&lines_of(&path)[20])
        }
    );
}

#[test]
fn a_file_of_only_a_torn_line_reopens_as_a_fresh_chain() {
    let dir = TempDir::new("onlytorn");
    let path = dir.path("audit.jsonl");
    fs::write(&path, b"{\"seq\":0,\"ts_un").unwrap();
    let log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    assert_eq!(log.head().next_seq, 1);
    let lines = lines_of(&path);
    let record: AuditRecord = serde_json::from_slice(&lines[0]).unwrap();
    assert_eq!(record.seq, 0);
    assert_eq!(record.prev, GENESIS_HASH);
    assert_eq!(
        record.event,
        ControlEvent::AuditTornTail {
            offset: 0,
            bytes: 15,
            sha256: sha_hex(b"{\"seq\":0,\"ts_un")
        }
    );
    assert!(verify(&path).unwrap().is_ok());
}

#[test]
fn opening_a_broken_chain_is_refused_and_changes_nothing() {
    let dir = TempDir::new("refuse");
    let path = damaged(&dir, "bad.jsonl", |l| bump_ts(&mut l[6], 6));
    let before = fs::read(&path).unwrap();
    let err = AuditLog::open(&path, AuditOptions::default()).unwrap_err();
    match &err {
        AuditError::Corrupt { report, .. } => {
            assert_eq!(*report, VerifyReport::Tampered { line: 7 })
        }
        other => panic!("{other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("bad.jsonl") && message.contains("line 7"),
        "{message}"
    );
    // Even with a torn tail after the damage, nothing is cut.
    let mut torn = before.clone();
    torn.extend_from_slice(b"{\"seq\":20,");
    fs::write(&path, &torn).unwrap();
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::Corrupt {
            report: VerifyReport::Tampered { line: 7 },
            ..
        })
    ));
    assert_eq!(fs::read(&path).unwrap(), torn);
}

#[test]
fn opening_against_an_anchor_refuses_a_rewritten_end() {
    let dir = TempDir::new("anchor");
    let original = dir.path("original.jsonl");
    let head = write_log(&original);
    let path = damaged(&dir, "body.jsonl", |l| bump_ts(&mut l[19], 19));
    // Without the anchor the rewritten last line would be extended (documented limit).
    let options = AuditOptions {
        fsync: false,
        anchor: Some(head.clone()),
    };
    assert!(matches!(
        AuditLog::open(&path, options.clone()),
        Err(AuditError::Corrupt {
            report: VerifyReport::Tampered { line: 20 },
            ..
        })
    ));
    let path = damaged(&dir, "cut.jsonl", |l| l.truncate(15));
    assert!(matches!(
        AuditLog::open(&path, options),
        Err(AuditError::Corrupt {
            report: VerifyReport::Truncated {
                line: 16,
                expected_seq: 15,
                anchored_seq: 19
            },
            ..
        })
    ));
}

#[test]
fn malformed_anchors_are_errors() {
    let dir = TempDir::new("badanchor");
    let path = dir.path("audit.jsonl");
    write_log(&path);
    for (next_seq, hash) in [
        (3, "xyz".to_owned()),
        (3, "AB".repeat(32)),
        (3, "ab".repeat(33)),
        (0, "ab".repeat(32)),
    ] {
        let anchor = AuditHead {
            next_seq,
            last_hash: hash.clone(),
        };
        let err = verify_with_anchor(&path, &anchor).unwrap_err();
        assert!(matches!(err, AuditError::BadAnchor { .. }), "{err:?}");
        assert!(err.to_string().contains(&format!("{hash:?}")), "{err}");
    }
    // The empty head is a valid anchor that checks nothing more.
    let empty = AuditHead {
        next_seq: 0,
        last_hash: GENESIS_HASH.into(),
    };
    assert!(verify_with_anchor(&path, &empty).unwrap().is_ok());
}

#[test]
fn a_second_writer_is_refused_while_the_first_is_open() {
    let dir = TempDir::new("lock");
    let path = dir.path("audit.jsonl");
    let mut first = AuditLog::open(&path, AuditOptions::default()).unwrap();
    first.append_at(&events()[0], T0).unwrap();
    let err = AuditLog::open(&path, AuditOptions::default()).unwrap_err();
    assert!(matches!(err, AuditError::Locked { .. }), "{err:?}");
    // Verifying needs no lock.
    assert!(verify(&path).unwrap().is_ok());
    drop(first);
    let second = AuditLog::open(&path, AuditOptions::default()).unwrap();
    assert_eq!(second.head().next_seq, 1);
}

#[test]
fn an_oversized_record_is_refused_and_leaves_the_chain_intact() {
    let dir = TempDir::new("oversize");
    let path = dir.path("audit.jsonl");
    let mut log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    log.append_at(&events()[0], T0).unwrap();
    let head = log.head();
    let huge = ControlEvent::PolicyRejected {
        version: Some(1),
        source: "http".into(),
        reason: "x".repeat(MAX_LINE_BYTES),
    };
    let err = log.append_at(&huge, T0).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::RecordTooLong {
                seq: 1,
                event: "policy.rejected",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(log.head(), head);
    log.append_at(&events()[1], T0).unwrap();
    assert_eq!(
        verify(&path).unwrap(),
        VerifyReport::Ok {
            lines: 2,
            head_hash: log.head().last_hash
        }
    );
}

#[test]
fn directories_and_devices_are_refused_not_read_forever() {
    let dir = TempDir::new("notafile");
    assert!(matches!(verify(&dir.0), Err(AuditError::NotAFile { .. })));
    assert!(matches!(
        AuditLog::open(&dir.0, AuditOptions::default()),
        Err(AuditError::NotAFile { .. }) | Err(AuditError::Io { .. })
    ));
    // An endless source of bytes must not hang the verifier.
    let zero = Path::new("/dev/zero");
    if zero.exists() {
        let err = verify(zero).unwrap_err();
        assert!(matches!(err, AuditError::NotAFile { .. }), "{err:?}");
        assert!(err.to_string().contains("/dev/zero"), "{err}");
    }
}

/// Audit red team: opening the writer on a file whose last bytes were not a torn record
/// cut them, whatever they were: a 3 MiB file without a newline (not an audit log at
/// all) was cut to nothing, and 5 MiB after a valid log were cut too, both "recorded"
/// as a torn tail. Only what a crash of the writer can leave (at most one line, the
/// start of the next record) is cut now; anything else is refused, the file untouched.
#[test]
fn opening_refuses_to_cut_a_tail_a_crash_cannot_have_left() {
    let dir = TempDir::new("foreign");
    let path = dir.path("not-audit.bin");
    let junk = vec![b'A'; 3 << 20];
    fs::write(&path, &junk).unwrap();
    match AuditLog::open(&path, AuditOptions::default()) {
        Err(e @ AuditError::ForeignTail { .. }) => {
            assert!(e.to_string().contains("3145728 bytes at byte 0"), "{e}");
        }
        other => panic!("expected ForeignTail, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), junk, "the file is left as it was");
    // A valid log, then 5 MiB without a newline.
    let path = dir.path("audit.jsonl");
    write_log(&path);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend(std::iter::repeat_n(b'x', 5 << 20));
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::ForeignTail { next_seq: 20, .. })
    ));
    assert_eq!(fs::read(&path).unwrap(), bytes);
    // A short tail that is not the start of record 20 is refused too.
    let mut short = fs::read(&path).unwrap();
    short.truncate(short.len() - (5 << 20));
    short.extend_from_slice(b"{\"seq\":7,");
    fs::write(&path, &short).unwrap();
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::ForeignTail { .. })
    ));
    // The start of record 20 as the writer writes it: its header names the hash of
    // line 20.
    let base = short[..short.len() - 9].to_vec();
    fs::write(&path, &base).unwrap();
    let head = AuditLog::open(&path, AuditOptions::default())
        .unwrap()
        .head();
    let record20 = format!(
        "{{\"seq\":20,\"ts_unix_ms\":1795429598686,\"prev\":\"{}\",\"event\":\"health.changed\",\"from\":\"",
        head.last_hash
    );
    // A tail that begins as record 20 but is longer than any record line: refused, at
    // the limit's edge too (a line has at most MAX_LINE_BYTES before its newline).
    for len in [MAX_LINE_BYTES + 1, 3 * MAX_LINE_BYTES] {
        let mut long = base.clone();
        long.extend_from_slice(record20.as_bytes());
        long.resize(base.len() + len, b'x');
        fs::write(&path, &long).unwrap();
        assert!(
            matches!(
                AuditLog::open(&path, AuditOptions::default()),
                Err(AuditError::ForeignTail { .. })
            ),
            "{len} bytes"
        );
        assert_eq!(fs::read(&path).unwrap(), long);
    }
    let mut at_limit = base.clone();
    at_limit.extend_from_slice(record20.as_bytes());
    at_limit.resize(base.len() + MAX_LINE_BYTES, b'x');
    fs::write(&path, &at_limit).unwrap();
    drop(AuditLog::open(&path, AuditOptions::default()).unwrap());
    write_lines(&path, &lines_of(&path)[..20]);
    // A review: `{"seq":20,` then someone else's text was cut as a torn record, as was
    // a header naming another hash; and a control byte is never in a record line.
    let wrong_prev = record20.replace(&head.last_hash, &"0".repeat(64));
    for tail in [
        format!("{{\"seq\":20,{}", "SOMEONE ELSE'S DATA ".repeat(1_000)),
        wrong_prev,
        format!("{record20}\u{1}"),
    ] {
        let mut foreign = base.clone();
        foreign.extend_from_slice(tail.as_bytes());
        fs::write(&path, &foreign).unwrap();
        assert!(
            matches!(
                AuditLog::open(&path, AuditOptions::default()),
                Err(AuditError::ForeignTail { .. })
            ),
            "{}",
            &tail[..40]
        );
        assert_eq!(fs::read(&path).unwrap(), foreign);
    }
    // A torn record 20 and the zeros of a length that reached the disk first: repaired.
    let mut torn = base.clone();
    torn.extend_from_slice(&record20.as_bytes()[..100]);
    torn.extend_from_slice(&[0u8; 200]);
    fs::write(&path, &torn).unwrap();
    drop(AuditLog::open(&path, AuditOptions::default()).unwrap());
    assert!(verify(&path).unwrap().is_ok());
    write_lines(&path, &lines_of(&path)[..20]);
    // Zero bytes, as a power loss without fsync can leave: repaired.
    let mut zeros = base.clone();
    zeros.extend_from_slice(&[0u8; 300]);
    fs::write(&path, &zeros).unwrap();
    drop(AuditLog::open(&path, AuditOptions::default()).unwrap());
    write_lines(&path, &lines_of(&path)[..20]);
    // Audit red team: 32 zero bytes and then someone else's data were cut as a torn
    // line (only the first 32 bytes were looked at). Refused, left as they are.
    let mut foreign = base.clone();
    foreign.extend_from_slice(&[0u8; 32]);
    foreign.extend_from_slice(&b"SOMEONE ELSE'S DATA ".repeat(1_000));
    fs::write(&path, &foreign).unwrap();
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::ForeignTail { .. })
    ));
    assert_eq!(fs::read(&path).unwrap(), foreign);
    fs::write(&path, &base).unwrap();
    // The start of record 20, cut anywhere (inside its seq digits too), is repaired.
    for cut in [1, 5, 8, 9, 40] {
        let mut torn = short[..short.len() - 9].to_vec();
        torn.extend_from_slice(&b"{\"seq\":20,\"ts_unix_ms\":1795429598686,\"pr"[..cut]);
        fs::write(&path, &torn).unwrap();
        let log = AuditLog::open(&path, AuditOptions::default()).unwrap();
        assert_eq!(log.head().next_seq, 21, "cut {cut}");
        drop(log);
        assert!(verify(&path).unwrap().is_ok());
        // Back to 20 records for the next cut.
        let lines = lines_of(&path);
        write_lines(&path, &lines[..20]);
    }
}

/// An empty log torn in its very first record is repaired; the start of another
/// record is not.
#[test]
fn a_torn_first_record_is_repaired_and_a_foreign_one_is_not() {
    let dir = TempDir::new("first");
    let path = dir.path("audit.jsonl");
    fs::write(&path, b"{\"seq\":0,\"ts").unwrap();
    drop(AuditLog::open(&path, AuditOptions::default()).unwrap());
    assert!(verify(&path).unwrap().is_ok());
    fs::write(&path, b"{\"seq\":3,\"ts").unwrap();
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::ForeignTail { next_seq: 0, .. })
    ));
}

/// Audit red team: `verify` opened a FIFO for reading, which waits for a writer, so
/// `qos-ctl audit verify` on one hung for ever before its "not a regular file" check.
#[test]
fn verifying_a_fifo_is_refused_at_once() {
    let dir = TempDir::new("fifo");
    let fifo = dir.path("audit.jsonl");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let p = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(verify(&p).map(|_| ()).map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Err(e)) => assert!(e.contains("not a regular file"), "{e}"),
        Ok(Ok(())) => panic!("a FIFO verified as a log"),
        Err(_) => {
            // Unblock the stuck verifier so the test process can end, then fail.
            let _w = fs::OpenOptions::new().write(true).open(&fifo);
            panic!("verify blocked on a FIFO");
        }
    }
}
