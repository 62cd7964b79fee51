//! metrics.db written through `StoreWorker` + `TursoStore`, read back through
//! `turso_core` and through the `sqlite3` CLI (DESIGN O2).
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod store_common;

use std::sync::Arc;
use std::time::Duration;

use qos_control::store::{
    MetricsStore, QosMetricsRow, StoreError, StoreStep, StoreWorker, TursoStore, read_rows,
};
use store_common::{rows, sqlite3_count, sqlite3_json, temp_dir, wait_for};
use turso_core::{Database, OpenFlags, OpenOptions, PlatformIO, SqliteDialect, Value};

/// Reads the table with raw `turso_core` calls, independent of `read_rows`.
fn turso_select(path: &std::path::Path) -> Vec<Vec<Value>> {
    let io = Arc::new(PlatformIO::new().unwrap());
    let opts = OpenOptions::new(Arc::new(SqliteDialect)).flags(OpenFlags::ReadOnly);
    let db = Database::open(io, path.to_str().unwrap(), opts).unwrap();
    let conn = db.connect().unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT timestamp_ms, timestamp, stream_id, priority, queue_depth, packets_dropped, \
             bandwidth_allocated_mbps, latency_p95_ms FROM qos_metrics ORDER BY rowid",
        )
        .unwrap();
    let values = stmt.run_collect_rows().unwrap();
    drop(stmt);
    conn.close().unwrap();
    values
}

fn wal_len(db: &std::path::Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(std::path::PathBuf::from(wal)).map_or(0, |m| m.len())
}

#[test]
fn two_batches_round_trip_through_turso_and_the_sqlite3_cli() {
    let dir = temp_dir("roundtrip");
    let db = dir.join("metrics.db");
    let first = rows(0, 5);
    let second = rows(1, 7);

    let worker = StoreWorker::spawn(Box::new(TursoStore::new(&db).unwrap()), 4).unwrap();
    worker.submit(first.clone()).unwrap();
    let status = wait_for(&worker, "the first batch", |s| s.batches_written == 1);
    assert_eq!(status.rows_written, 5);
    assert!(status.healthy);
    assert!(status.last_success_unix_ms.is_some());
    assert!(status.last_write_duration.is_some());

    // Between batches the file is closed and checkpointed: the CLI sees batch one.
    assert_eq!(wal_len(&db), 0, "the -wal must be empty between batches");
    assert_eq!(sqlite3_count(&db), 5);
    let cli = sqlite3_json(&db, "select stream_id from qos_metrics order by rowid");
    let ids: Vec<&str> = cli
        .iter()
        .map(|r| r["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "stream-0-0",
            "stream-0-1",
            "stream-0-2",
            "stream-0-3",
            "stream-0-4"
        ]
    );

    // The CLI opened (and closed) the file: the next batch must still go in.
    worker.submit(second.clone()).unwrap();
    let report = worker.stop(Duration::from_secs(20));
    assert!(report.completed, "{report:?}");
    assert_eq!(report.pending_batches, 0);
    assert_eq!(report.status.batches_written, 2);
    assert_eq!(report.status.rows_written, 12);
    assert_eq!(report.status.batches_failed, 0);
    assert_eq!(report.status.last_error, None);
    assert_eq!(wal_len(&db), 0, "the -wal must be empty after stop");

    let expected: Vec<QosMetricsRow> = first.iter().chain(&second).cloned().collect();
    assert_eq!(read_rows(&db).unwrap(), expected);

    // Raw turso_core: every column, exact values, including the RFC 3339 text.
    let raw = turso_select(&db);
    assert_eq!(raw.len(), 12);
    for (got, want) in raw.iter().zip(&expected) {
        assert_eq!(got[0].as_int(), Some(want.timestamp_ms));
        assert_eq!(got[2].to_text(), Some(want.stream_id.as_str()));
        assert_eq!(got[3].as_int(), Some(i64::from(want.priority)));
        assert_eq!(
            got[4].as_int(),
            Some(i64::try_from(want.queue_depth).unwrap())
        );
        assert_eq!(
            got[5].as_int(),
            Some(i64::try_from(want.packets_dropped).unwrap())
        );
        assert_eq!(got[6].as_float(), want.bandwidth_allocated_mbps);
        assert_eq!(got[7].as_float(), want.latency_p95_ms);
    }
    // 1_759_314_600_000 ms = 2025-10-01T10:30:00Z (the spec's example instant).
    assert_eq!(raw[0][1].to_text(), Some("2025-10-01T10:30:00.000Z"));
    assert_eq!(raw[5][1].to_text(), Some("2025-10-01T10:30:10.000Z"));

    // The sqlite3 CLI: count and exact values of a few rows.
    assert_eq!(sqlite3_count(&db), 12);
    let cli = sqlite3_json(
        &db,
        "select timestamp_ms, timestamp, stream_id, priority, queue_depth, packets_dropped, \
         bandwidth_allocated_mbps, latency_p95_ms from qos_metrics \
         where stream_id in ('stream-0-4', 'stream-1-6') order by timestamp_ms",
    );
    assert_eq!(cli.len(), 2);
    let r = &cli[0];
    assert_eq!(r["timestamp_ms"].as_i64(), Some(1_759_314_600_004));
    assert_eq!(r["timestamp"].as_str(), Some("2025-10-01T10:30:00.004Z"));
    assert_eq!(r["priority"].as_u64(), Some(4));
    assert_eq!(r["queue_depth"].as_u64(), Some(104));
    assert_eq!(r["packets_dropped"].as_u64(), Some(12));
    assert_eq!(r["bandwidth_allocated_mbps"].as_f64(), Some(154.5));
    assert_eq!(r["latency_p95_ms"].as_f64(), Some(8.25));
    let r = &cli[1];
    assert_eq!(r["timestamp_ms"].as_i64(), Some(1_759_314_610_006));
    assert_eq!(r["stream_id"].as_str(), Some("stream-1-6"));
    assert_eq!(r["priority"].as_u64(), Some(6));
    assert_eq!(r["queue_depth"].as_u64(), Some(1106));
    assert_eq!(r["packets_dropped"].as_u64(), Some(18));
    assert_eq!(r["bandwidth_allocated_mbps"].as_f64(), Some(156.5));
    assert_eq!(r["latency_p95_ms"].as_f64(), Some(16.5));

    // The CLI agrees that the file is sound and has the timestamp index.
    let check = sqlite3_json(&db, "pragma integrity_check");
    assert_eq!(check[0]["integrity_check"].as_str(), Some("ok"));
    let idx = sqlite3_json(
        &db,
        "select name from sqlite_master where type = 'index' and tbl_name = 'qos_metrics'",
    );
    assert_eq!(idx.len(), 1, "{idx:?}");
    assert_eq!(idx[0]["name"].as_str(), Some("qos_metrics_timestamp_ms"));

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn odd_strings_and_floats_round_trip_exactly() {
    let dir = temp_dir("odd");
    let db = dir.join("metrics.db");
    let kilobyte: String = "ü'\"".repeat(200) + &"x".repeat(1024 - 200 * 4);
    assert_eq!(kilobyte.len(), 1024);
    let ids = [
        "it's".to_owned(),
        "\"quoted\"".to_owned(),
        "'); DROP TABLE qos_metrics; --".to_owned(),
        "?1 :name @p $x".to_owned(),
        "日本語ストリーム 🚀".to_owned(),
        "tab\tnewline\ncr\r".to_owned(),
        String::new(),
        kilobyte,
    ];
    let floats = [
        0.1 + 0.2,
        1e300,
        -0.0,
        f64::MIN_POSITIVE,
        123_456.789_012_345_67,
        0.0,
    ];
    let batch: Vec<QosMetricsRow> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| QosMetricsRow {
            timestamp_ms: [-1, 0, i64::MAX, i64::MIN, 42, 7, 8, 9][i],
            stream_id: id.clone(),
            priority: [0, 7, 255, 1, 2, 3, 4, 5][i],
            queue_depth: [0, u64::try_from(i64::MAX).unwrap(), 1, 2, 3, 4, 5, 6][i],
            packets_dropped: i as u64,
            bandwidth_allocated_mbps: floats[i % floats.len()],
            latency_p95_ms: floats[(i + 3) % floats.len()],
        })
        .collect();

    let mut store = TursoStore::new(&db).unwrap();
    store.write_batch(&batch).unwrap();
    let back = read_rows(&db).unwrap();
    assert_eq!(back.len(), batch.len());
    for (got, want) in back.iter().zip(&batch) {
        assert_eq!(got.stream_id, want.stream_id);
        assert_eq!(got.timestamp_ms, want.timestamp_ms);
        assert_eq!(got.priority, want.priority);
        assert_eq!(got.queue_depth, want.queue_depth);
        assert_eq!(got.packets_dropped, want.packets_dropped);
        // Bit-exact, except that SQLite has no negative zero in REAL comparisons: -0.0
        // must at least compare equal.
        assert_eq!(got.bandwidth_allocated_mbps, want.bandwidth_allocated_mbps);
        assert_eq!(got.latency_p95_ms, want.latency_p95_ms);
        if want.bandwidth_allocated_mbps != 0.0 {
            assert_eq!(
                got.bandwidth_allocated_mbps.to_bits(),
                want.bandwidth_allocated_mbps.to_bits()
            );
        }
    }
    // The table survived the injection attempt and the CLI reads the same strings.
    assert_eq!(sqlite3_count(&db), 8);
    let cli = sqlite3_json(&db, "select stream_id from qos_metrics order by rowid");
    let cli_ids: Vec<&str> = cli
        .iter()
        .map(|r| r["stream_id"].as_str().unwrap())
        .collect();
    let want_ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(cli_ids, want_ids);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nan_is_stored_as_null_and_read_back_as_nan() {
    let dir = temp_dir("nan");
    let db = dir.join("metrics.db");
    let mut row = rows(3, 1).remove(0);
    row.latency_p95_ms = f64::NAN;
    row.bandwidth_allocated_mbps = f64::NAN;
    TursoStore::new(&db)
        .unwrap()
        .write_batch(std::slice::from_ref(&row))
        .unwrap();
    let back = read_rows(&db).unwrap();
    assert_eq!(back.len(), 1);
    assert!(back[0].latency_p95_ms.is_nan());
    assert!(back[0].bandwidth_allocated_mbps.is_nan());
    let cli = sqlite3_json(
        &db,
        "select latency_p95_ms is null as l, bandwidth_allocated_mbps is null as b from qos_metrics",
    );
    assert_eq!(cli[0]["l"].as_u64(), Some(1));
    assert_eq!(cli[0]["b"].as_u64(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_value_beyond_sqlite_integer_rejects_the_whole_batch() {
    let dir = temp_dir("range");
    let db = dir.join("metrics.db");
    let mut batch = rows(0, 3);
    batch[2].packets_dropped = u64::MAX;
    let mut store = TursoStore::new(&db).unwrap();
    let err = store.write_batch(&batch).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OutOfRange {
                row: 2,
                field: "packets_dropped",
                value: u64::MAX,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("packets_dropped") && msg.contains(&u64::MAX.to_string()),
        "{msg}"
    );
    assert!(msg.contains(db.to_str().unwrap()), "{msg}");
    assert!(!db.exists(), "nothing may be written for a refused batch");
    // The store is still usable.
    store.write_batch(&batch[..2]).unwrap();
    assert_eq!(read_rows(&db).unwrap(), batch[..2]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_existing_file_that_is_not_a_database_fails_with_the_path_and_step() {
    let dir = temp_dir("garbage");
    let db = dir.join("metrics.db");
    std::fs::write(&db, vec![b'z'; 8192]).unwrap();
    let err = TursoStore::new(&db)
        .unwrap()
        .write_batch(&rows(0, 2))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(db.to_str().unwrap()), "{msg}");
    assert!(matches!(err, StoreError::Engine { .. }), "{err:?}");
    // The file was not clobbered.
    assert_eq!(std::fs::read(&db).unwrap(), vec![b'z'; 8192]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn read_rows_of_a_missing_file_is_an_error_not_an_empty_table() {
    let dir = temp_dir("missing");
    let db = dir.join("absent.db");
    let err = read_rows(&db).unwrap_err();
    assert!(err.to_string().contains(db.to_str().unwrap()), "{err}");
    assert!(
        matches!(
            err,
            StoreError::Engine {
                step: StoreStep::Open | StoreStep::Query,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!db.exists(), "a read must not create the file");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_batch_creates_the_table() {
    let dir = temp_dir("empty");
    let db = dir.join("metrics.db");
    TursoStore::new(&db).unwrap().write_batch(&[]).unwrap();
    assert_eq!(sqlite3_count(&db), 0);
    assert_eq!(read_rows(&db).unwrap(), []);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// O2, bad input: a `qos_metrics` table another program made (no `packets_dropped`)
/// fails every batch with an error naming the missing column, and the store changes
/// nothing in the user's file: no row, no index, not a byte.
#[test]
fn a_foreign_qos_metrics_table_is_refused_and_left_untouched() {
    let dir = temp_dir("foreign");
    let db = dir.join("metrics.db");
    let made = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(
            "CREATE TABLE qos_metrics (timestamp_ms INTEGER, stream_id TEXT, priority INTEGER); \
             INSERT INTO qos_metrics VALUES (1, 'theirs', 3);",
        )
        .status()
        .unwrap();
    assert!(made.success());
    let schema = |db: &std::path::Path| {
        let out = std::process::Command::new("sqlite3")
            .arg(db)
            .arg(".schema")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let before = schema(&db);
    let bytes = std::fs::read(&db).unwrap();
    let mut store = TursoStore::new(&db).unwrap();
    for _ in 0..2 {
        let err = store.write_batch(&rows(0, 3)).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                &err,
                StoreError::ForeignTable {
                    missing: "timestamp",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(msg.contains(db.to_str().unwrap()), "{msg}");
        assert!(msg.contains("no column timestamp "), "{msg}");
    }
    assert_eq!(schema(&db), before, "no index or table added");
    // Not even the header: opening the file read-write switched it to WAL (bytes 18
    // and 19 from 1 to 2) before the table was refused (found by a red team).
    assert!(
        std::fs::read(&db).unwrap() == bytes,
        "the file's bytes are unchanged"
    );
    assert!(!before.contains("INDEX"), "{before}");
    assert_eq!(sqlite3_count(&db), 1, "the user's row only");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// metrics.db red team: a database with auto-vacuum on failed every batch with the
/// engine's "attempt to write a readonly database", which sent the operator to check
/// permissions. It is refused saying why, and left unchanged.
#[test]
fn an_auto_vacuum_database_is_refused_saying_why() {
    let dir = temp_dir("autovacuum");
    let db = dir.join("metrics.db");
    let made = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA auto_vacuum = FULL; CREATE TABLE theirs (x INTEGER);")
        .status()
        .unwrap();
    assert!(made.success());
    let bytes = std::fs::read(&db).unwrap();
    let err = TursoStore::new(&db)
        .unwrap()
        .write_batch(&rows(0, 3))
        .unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("auto_vacuum"), "{err}");
    assert!(std::fs::read(&db).unwrap() == bytes, "unchanged");
    // Without auto-vacuum, a database sqlite3 made is written as before.
    let plain = dir.join("plain.db");
    let made = std::process::Command::new("sqlite3")
        .arg(&plain)
        .arg("CREATE TABLE theirs (x INTEGER);")
        .status()
        .unwrap();
    assert!(made.success());
    TursoStore::new(&plain)
        .unwrap()
        .write_batch(&rows(0, 3))
        .unwrap();
    assert_eq!(sqlite3_count(&plain), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
