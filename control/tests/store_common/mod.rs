//! Helpers shared by the `store_*` integration tests.
#![allow(dead_code, clippy::disallowed_methods, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use qos_control::store::{QosMetricsRow, StoreStatus, StoreWorker};

/// A fresh, empty directory under the system temp dir, unique to this process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "qos-store-{tag}-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `count` distinct rows; `base` makes batches distinct from each other.
pub fn rows(base: i64, count: usize) -> Vec<QosMetricsRow> {
    (0..count)
        .map(|i| {
            let i64i = i64::try_from(i).unwrap();
            QosMetricsRow {
                timestamp_ms: 1_759_314_600_000 + base * 10_000 + i64i,
                stream_id: format!("stream-{base}-{i}"),
                priority: u8::try_from(i % 8).unwrap(),
                queue_depth: 100 + u64::try_from(base).unwrap() * 1000 + i as u64,
                packets_dropped: i as u64 * 3,
                // Exactly representable, so the CLI's decimal rendering is exact too.
                bandwidth_allocated_mbps: 150.5 + i as f64,
                latency_p95_ms: 8.25 * (base as f64 + 1.0),
            }
        })
        .collect()
}

/// Waits (bounded) until `cond(status)` holds; panics with the last status otherwise.
pub fn wait_for(
    worker: &StoreWorker,
    what: &str,
    cond: impl Fn(&StoreStatus) -> bool,
) -> StoreStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = worker.status();
        if cond(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `sqlite3 -json <db> <sql>` and parses its output (an empty output is `[]`).
/// Fails, never skips, when the CLI is missing: CI installs it with apt-get.
pub fn sqlite3_json(db: &Path, sql: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let out = Command::new("sqlite3")
        .arg("-json")
        .arg(db)
        .arg(sql)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the sqlite3 CLI is required by this test and could not be run ({e}); \
                 install it (apt-get install sqlite3)"
            )
        });
    assert!(
        out.status.success(),
        "sqlite3 {} {sql:?} failed: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    if text.trim().is_empty() {
        return Vec::new();
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    rows.into_iter()
        .map(|r| r.as_object().unwrap().clone())
        .collect()
}

/// `select count(*)` through the CLI.
pub fn sqlite3_count(db: &Path) -> u64 {
    let rows = sqlite3_json(db, "select count(*) as n from qos_metrics");
    rows[0]["n"].as_u64().unwrap()
}

/// `true` when this process can create files in `dir` (root ignores permission bits).
pub fn can_create_in(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let ok = std::fs::write(&probe, b"x").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
