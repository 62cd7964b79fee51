//! JSON logs (O3): every `ControlEvent` becomes one JSON object a line with its dotted
//! name and every field at the top level, at its level.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use qos_control::logs::{
    self, BackpressureSeverity, ControlEvent, EVENT_TARGET, EventLevel, new_trace_id,
};
use serde_json::{Value, json};
use tracing_subscriber::fmt::MakeWriter;

/// An in-memory `MakeWriter`: every writer appends to the same buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Emits `events` into a fresh capture and returns the parsed lines.
/// Tests of this file that touch tracing's dispatch run one at a time: tracing caches
/// each call site's interest process-wide, and an event emitted on another test's thread
/// with no subscriber can mark call sites "never" while a capture is running (seen in CI:
/// the capture stopped after 7 of 13 lines).
static TRACING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tracing_lock() -> std::sync::MutexGuard<'static, ()> {
    TRACING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn capture(events: &[ControlEvent]) -> (String, Vec<Value>) {
    let _serial = tracing_lock();
    let sink = Capture::default();
    tracing::subscriber::with_default(logs::json_subscriber(sink.clone()), || {
        for event in events {
            logs::emit(event);
        }
    });
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (text, lines)
}

const TRACE: &str = "00112233445566778899aabbccddeeff";

/// Each variant with the exact fields its log line must carry (beyond timestamp, level,
/// target) and the level it must be logged at.
fn cases() -> Vec<(ControlEvent, &'static str, Value)> {
    vec![
        (
            ControlEvent::PolicyApplied {
                version: 7,
                source: "sighup".into(),
                sha256: "ab".repeat(32),
                signed: true,
            },
            "INFO",
            json!({"event": "policy.applied", "version": 7, "source": "sighup",
                   "sha256": "ab".repeat(32), "signed": true}),
        ),
        (
            ControlEvent::PolicyRejected {
                version: Some(8),
                source: "http".into(),
                reason: "tiers[2].share_percent: 3 is below the 5% minimum".into(),
            },
            "WARN",
            json!({"event": "policy.rejected", "version": 8, "source": "http",
                   "reason": "tiers[2].share_percent: 3 is below the 5% minimum"}),
        ),
        (
            // `None` is left out of the log line (tracing has no null).
            ControlEvent::PolicyRejected {
                version: None,
                source: "file".into(),
                reason: "line 1: expected `=`\nsecond \"line\"".into(),
            },
            "WARN",
            json!({"event": "policy.rejected", "source": "file",
                   "reason": "line 1: expected `=`\nsecond \"line\""}),
        ),
        (
            ControlEvent::BackpressureTriggered {
                stream_id: "3".into(),
                priority: 7,
                queue_depth: 9500,
                severity: BackpressureSeverity::Warning,
                trace_id: TRACE.into(),
                worker: 1,
            },
            "WARN",
            json!({"event": "backpressure.triggered", "stream_id": "3", "priority": 7,
                   "queue_depth": 9500, "severity": "warning", "trace_id": TRACE, "worker": 1}),
        ),
        (
            ControlEvent::BackpressureTriggered {
                stream_id: "4".into(),
                priority: 2,
                queue_depth: 10_000,
                severity: BackpressureSeverity::Critical,
                trace_id: TRACE.into(),
                worker: 0,
            },
            "ERROR",
            json!({"event": "backpressure.triggered", "stream_id": "4", "priority": 2,
                   "queue_depth": 10000, "severity": "critical", "trace_id": TRACE, "worker": 0}),
        ),
        (
            ControlEvent::BackpressureCleared {
                stream_id: "3".into(),
                priority: 7,
                queue_depth: 4000,
                worker: 1,
            },
            "INFO",
            json!({"event": "backpressure.cleared", "stream_id": "3", "priority": 7,
                   "queue_depth": 4000, "worker": 1}),
        ),
        (
            ControlEvent::StreamDisconnected {
                stream_id: "9".into(),
                priority: 0,
                dropped: 10_001,
                worker: 3,
            },
            "WARN",
            json!({"event": "stream.disconnected", "stream_id": "9", "priority": 0,
                   "dropped": 10001, "worker": 3}),
        ),
        (
            ControlEvent::PerfBudgetViolation {
                priority: 6,
                worker: 2,
                samples: 1000,
                over_budget: 61,
                budget_ms: 20.5,
            },
            "WARN",
            json!({"event": "perf.budget.violation", "priority": 6, "worker": 2,
                   "samples": 1000, "over_budget": 61, "budget_ms": 20.5}),
        ),
        (
            ControlEvent::PerfDegradeApplied {
                from: "NORMAL".into(),
                to: "DEGRADED".into(),
                hazard: "pool_near_full".into(),
                shed_tiers: vec!["Low".into(), "Bulk, slow".into()],
            },
            "WARN",
            json!({"event": "perf.degrade.applied", "from": "NORMAL", "to": "DEGRADED",
                   "hazard": "pool_near_full", "shed_tiers": "[\"Low\",\"Bulk, slow\"]"}),
        ),
        (
            ControlEvent::PerfDegradeRecovered {
                from: "DEGRADED".into(),
                to: "NORMAL".into(),
                held_ms: 12_345,
            },
            "INFO",
            json!({"event": "perf.degrade.recovered", "from": "DEGRADED", "to": "NORMAL",
                   "held_ms": 12345}),
        ),
        (
            ControlEvent::HealthChanged {
                from: "NORMAL".into(),
                to: "UNKNOWN".into(),
                reason: "worker 2 heartbeat stale for 1500 ms".into(),
            },
            "WARN",
            json!({"event": "health.changed", "from": "NORMAL", "to": "UNKNOWN",
                   "reason": "worker 2 heartbeat stale for 1500 ms"}),
        ),
        (
            ControlEvent::HealthChanged {
                from: "UNKNOWN".into(),
                to: "NORMAL".into(),
                reason: "all heartbeats fresh".into(),
            },
            "INFO",
            json!({"event": "health.changed", "from": "UNKNOWN", "to": "NORMAL",
                   "reason": "all heartbeats fresh"}),
        ),
        (
            ControlEvent::StreamPromoted {
                stream_id: "12".into(),
                priority: 1,
                worker: 0,
            },
            "INFO",
            json!({"event": "stream.promoted", "stream_id": "12", "priority": 1, "worker": 0}),
        ),
        (
            ControlEvent::AuditTornTail {
                offset: 4096,
                bytes: 17,
                sha256: "cd".repeat(32),
            },
            "WARN",
            json!({"event": "audit.torn_tail", "offset": 4096, "bytes": 17,
                   "sha256": "cd".repeat(32)}),
        ),
        (
            ControlEvent::ConfigReloaded {
                trigger: "sighup".into(),
                path: "/etc/qosd.toml".into(),
                sha256: "ef".repeat(32),
                policy_version: 3,
            },
            "INFO",
            json!({"event": "config.reloaded", "trigger": "sighup", "path": "/etc/qosd.toml",
                   "sha256": "ef".repeat(32), "policy_version": 3}),
        ),
        (
            ControlEvent::ConfigRejected {
                trigger: "http".into(),
                path: "/etc/qosd.toml".into(),
                reason: "config: gateway.workers = 0: expected 1..=64".into(),
            },
            "WARN",
            json!({"event": "config.rejected", "trigger": "http", "path": "/etc/qosd.toml",
                   "reason": "config: gateway.workers = 0: expected 1..=64"}),
        ),
    ]
}

#[test]
fn every_variant_is_one_json_line_with_exact_fields() {
    let cases = cases();
    let events: Vec<_> = cases.iter().map(|(e, _, _)| e.clone()).collect();
    let (text, lines) = capture(&events);
    assert_eq!(
        text.matches('\n').count(),
        cases.len(),
        "one line per event:\n{text}"
    );
    assert_eq!(lines.len(), cases.len());
    for ((event, level, fields), line) in cases.iter().zip(&lines) {
        let mut line = line.as_object().unwrap().clone();
        assert_eq!(line.remove("level"), Some(json!(level)), "{event:?}");
        assert_eq!(
            line.remove("target"),
            Some(json!(EVENT_TARGET)),
            "{event:?}"
        );
        let ts = line.remove("timestamp").unwrap();
        let ts = ts.as_str().unwrap();
        assert!(
            ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        // Nothing else: exactly the event's fields, flattened.
        assert_eq!(Value::Object(line), *fields, "{event:?}");
    }
}

#[test]
fn log_fields_agree_with_the_serde_form_used_by_the_audit_log() {
    for (event, _, log_fields) in cases() {
        let serde_form = serde_json::to_value(&event).unwrap();
        assert_eq!(serde_form["event"], json!(event.name()));
        for (key, value) in log_fields.as_object().unwrap() {
            match key.as_str() {
                // The documented representation difference: a list as its JSON text.
                "shed_tiers" => assert_eq!(
                    serde_json::from_str::<Value>(value.as_str().unwrap()).unwrap(),
                    serde_form[key]
                ),
                _ => assert_eq!(&serde_form[key], value, "{key} of {event:?}"),
            }
        }
        // Round trip through serde.
        let back: ControlEvent = serde_json::from_value(serde_form).unwrap();
        assert_eq!(back, event);
    }
}

#[test]
fn serde_form_of_backpressure_matches_the_spec_fields() {
    let event = ControlEvent::BackpressureTriggered {
        stream_id: "3".into(),
        priority: 7,
        queue_depth: 9500,
        severity: BackpressureSeverity::Critical,
        trace_id: TRACE.into(),
        worker: 0,
    };
    assert_eq!(
        serde_json::to_string(&event).unwrap(),
        format!(
            r#"{{"event":"backpressure.triggered","stream_id":"3","priority":7,"queue_depth":9500,"severity":"critical","trace_id":"{TRACE}","worker":0}}"#
        )
    );
    assert_eq!(event.level(), EventLevel::Error);
    assert_eq!(EventLevel::Error.as_tracing(), tracing::Level::ERROR);
}

#[test]
fn unknown_event_names_and_bad_severity_are_rejected_by_serde() {
    let bad_name =
        r#"{"event":"policy.aplied","version":1,"source":"x","sha256":"","signed":false}"#;
    assert!(serde_json::from_str::<ControlEvent>(bad_name).is_err());
    let bad_severity = r#"{"event":"backpressure.triggered","stream_id":"1","priority":1,"queue_depth":1,"severity":"WARNING","trace_id":"","worker":0}"#;
    assert!(serde_json::from_str::<ControlEvent>(bad_severity).is_err());
}

#[test]
fn nothing_is_written_below_info_or_without_a_subscriber() {
    let _serial = tracing_lock();
    // Without a subscriber `emit` is a no-op (must not panic).
    logs::emit(&ControlEvent::StreamPromoted {
        stream_id: "1".into(),
        priority: 0,
        worker: 0,
    });
    let sink = Capture::default();
    tracing::subscriber::with_default(logs::json_subscriber(sink.clone()), || {
        tracing::debug!(target: EVENT_TARGET, event = "debug.only");
    });
    assert!(sink.0.lock().unwrap().is_empty());
}

#[test]
fn trace_ids_are_32_hex_digits_and_distinct() {
    let ids: Vec<String> = (0..1000).map(|_| new_trace_id()).collect();
    for id in &ids {
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{id}"
        );
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len());
}
