//! `StoreWorker` under failing, slow, hung and panicking stores: submit never blocks,
//! failures are reported, stop is bounded (DESIGN O2, section 9).
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod store_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use qos_control::store::{
    DropReason, FlushSchedule, MetricsStore, QosMetricsRow, StoreError, StoreWorker, THREAD_NAME,
    TursoStore, read_rows,
};
use store_common::{can_create_in, rows, sqlite3_count, temp_dir, wait_for};

/// A store that sleeps `delay` per batch and counts the batches it wrote.
struct SlowStore {
    delay: Duration,
    written: Arc<AtomicUsize>,
}

impl MetricsStore for SlowStore {
    fn write_batch(&mut self, _rows: &[QosMetricsRow]) -> Result<(), StoreError> {
        std::thread::sleep(self.delay);
        self.written.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Runs `f` on another thread and returns its result, failing (instead of hanging) when
/// it takes more than `limit`: keeps the non-blocking tests bounded even if submit blocks.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("did not finish within {limit:?} ({e}): submit blocked?"))
}

/// Runs `f` with a path under a directory that refuses new files, then restores the
/// directory so that it can be used (and removed). As root, permission bits are not
/// enforced: a path whose parent is a regular file is used instead.
fn with_unwritable_path(f: impl FnOnce(&Path, &dyn Fn())) {
    let dir = temp_dir("readonly");
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if can_create_in(&ro) {
        // Root: chmod is not enforced. Make `blocker` a regular file: `blocker/metrics.db`
        // cannot be created by anyone.
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        let blocker = dir.join("blocker");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let fix = || {
            std::fs::remove_file(&blocker).unwrap();
            std::fs::create_dir(&blocker).unwrap();
        };
        f(&blocker.join("metrics.db"), &fix);
    } else {
        let fix = || std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        f(&ro.join("metrics.db"), &fix);
        let _ = std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_store_that_cannot_create_its_file_reports_failures_and_keeps_accepting() {
    with_unwritable_path(|db, fix| {
        let store = TursoStore::new(db)
            .unwrap()
            .with_lock_retry(0, Duration::ZERO);
        let worker = StoreWorker::spawn(Box::new(store), 4).unwrap();
        assert!(worker.healthy());
        for base in 0..3 {
            worker.submit(rows(base, 2)).unwrap();
            wait_for(&worker, "a failure", |s| {
                s.batches_failed == base as u64 + 1
            });
        }
        let status = worker.status();
        assert_eq!(status.batches_failed, 3);
        assert_eq!(status.rows_failed, 6);
        assert_eq!(status.batches_written, 0);
        assert_eq!(status.last_success_unix_ms, None);
        assert!(!status.healthy);
        assert!(!worker.healthy());
        let err = status.last_error.clone().unwrap();
        assert!(
            err.contains(db.to_str().unwrap()),
            "last_error must name the path: {err}"
        );
        assert!(err.contains("open"), "last_error must name the step: {err}");

        // Once the directory is usable again the next batch succeeds and health returns;
        // the last error stays visible.
        fix();
        worker.submit(rows(7, 3)).unwrap();
        let status = wait_for(&worker, "a success", |s| s.batches_written == 1);
        assert!(status.healthy);
        assert_eq!(status.rows_written, 3);
        assert_eq!(status.last_error.as_deref(), Some(err.as_str()));
        let report = worker.stop(Duration::from_secs(10));
        assert!(report.completed);
        assert_eq!(read_rows(db).unwrap(), rows(7, 3));
    });
}

#[test]
fn a_directory_removed_under_the_store_is_reported_then_recovered() {
    let dir = temp_dir("removed");
    let sub = dir.join("data");
    std::fs::create_dir(&sub).unwrap();
    let db = sub.join("metrics.db");
    let store = TursoStore::new(&db)
        .unwrap()
        .with_lock_retry(0, Duration::ZERO);
    let worker = StoreWorker::spawn(Box::new(store), 2).unwrap();
    worker.submit(rows(0, 1)).unwrap();
    wait_for(&worker, "the first batch", |s| s.batches_written == 1);
    std::fs::remove_dir_all(&sub).unwrap();
    worker.submit(rows(1, 1)).unwrap();
    let status = wait_for(&worker, "a failure", |s| s.batches_failed == 1);
    assert!(!status.healthy);
    assert!(status.last_error.unwrap().contains(db.to_str().unwrap()));
    std::fs::create_dir(&sub).unwrap();
    worker.submit(rows(2, 1)).unwrap();
    let report = worker.stop(Duration::from_secs(10));
    assert!(report.completed);
    assert_eq!(report.status.batches_written, 2);
    assert!(report.status.healthy);
    assert_eq!(read_rows(&db).unwrap(), rows(2, 1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn submit_never_blocks_on_a_slow_store_and_stop_gives_up_in_time() {
    let written = Arc::new(AtomicUsize::new(0));
    let store = SlowStore {
        delay: Duration::from_millis(200),
        written: Arc::clone(&written),
    };
    let worker = StoreWorker::spawn(Box::new(store), 4).unwrap();
    let batch = rows(0, 3);

    let (worker, accepted, dropped, took) = within(Duration::from_secs(5), move || {
        let start = Instant::now();
        let mut accepted = 0u64;
        let mut dropped = 0u64;
        for _ in 0..1000 {
            match worker.submit(batch.clone()) {
                Ok(()) => accepted += 1,
                Err(d) => {
                    assert_eq!(d.reason, DropReason::QueueFull);
                    assert_eq!(d.batch, batch, "a dropped batch is given back intact");
                    dropped += 1;
                }
            }
        }
        (worker, accepted, dropped, start.elapsed())
    });
    // Writing even the accepted batches takes >= 4 x 200 ms; every submit returned long
    // before: a bound on non-blocking, not a speed target.
    assert!(
        took < Duration::from_millis(100),
        "1000 submits took {took:?}"
    );
    // The queue holds 4; at most one more was taken off it by the worker meanwhile.
    assert!((4..=5).contains(&accepted), "accepted {accepted}");
    assert_eq!(accepted + dropped, 1000);
    let status = worker.status();
    assert_eq!(status.batches_dropped, dropped);
    assert_eq!(status.rows_dropped, dropped * 3);
    assert_eq!(status.batches_submitted, accepted);

    let (report, took) = within(Duration::from_secs(5), move || {
        let start = Instant::now();
        let report = worker.stop(Duration::from_millis(300));
        (report, start.elapsed())
    });
    assert!(
        took < Duration::from_millis(600),
        "stop(300 ms) took {took:?}"
    );
    assert!(!report.completed, "{report:?}");
    assert!(report.pending_batches >= 1, "{report:?}");
    assert_eq!(
        report.status.batches_written + report.pending_batches,
        accepted,
        "{report:?}"
    );
    // The detached thread finishes its current batch at most, then discards the rest.
    let at_stop = written.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(700));
    let later = written.load(Ordering::SeqCst);
    assert!(
        later <= at_stop + 1,
        "wrote {at_stop} then {later} after stop gave up"
    );
}

/// A store that blocks until the test lets it go: a hung engine.
struct HungStore {
    release: Arc<Mutex<mpsc::Receiver<()>>>,
    entered: mpsc::Sender<()>,
}

impl MetricsStore for HungStore {
    fn write_batch(&mut self, _rows: &[QosMetricsRow]) -> Result<(), StoreError> {
        let _ = self.entered.send(());
        let _ = self.release.lock().unwrap().recv();
        Ok(())
    }
}

#[test]
fn a_hung_store_holds_neither_submit_nor_stop() {
    let (release_tx, release_rx) = mpsc::channel();
    let (entered_tx, entered_rx) = mpsc::channel();
    let store = HungStore {
        release: Arc::new(Mutex::new(release_rx)),
        entered: entered_tx,
    };
    let worker = StoreWorker::spawn(Box::new(store), 1).unwrap();
    worker.submit(rows(0, 1)).unwrap();
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (worker, err) = within(Duration::from_secs(5), move || {
        worker.submit(rows(1, 1)).unwrap(); // fills the queue of one
        let err = worker.submit(rows(2, 1)).unwrap_err();
        (worker, err)
    });
    assert_eq!(err.reason, DropReason::QueueFull);
    assert!(err.to_string().contains("1 rows dropped"), "{err}");

    let (report, took) = within(Duration::from_secs(5), move || {
        let start = Instant::now();
        let report = worker.stop(Duration::from_millis(200));
        (report, start.elapsed())
    });
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(500),
        "{took:?}"
    );
    assert!(!report.completed);
    assert_eq!(report.pending_batches, 2);
    assert_eq!(report.status.batches_written, 0);
    assert_eq!(report.status.batches_dropped, 1);
    drop(release_tx); // lets the detached thread end
}

/// Panics on its first batch, then writes.
struct PanickyStore {
    calls: usize,
}

impl MetricsStore for PanickyStore {
    fn write_batch(&mut self, _rows: &[QosMetricsRow]) -> Result<(), StoreError> {
        self.calls += 1;
        assert!(self.calls > 1, "engine assertion failed (simulated)");
        Ok(())
    }
}

#[test]
fn a_panicking_store_is_one_failed_batch_not_a_dead_worker() {
    let worker = StoreWorker::spawn(Box::new(PanickyStore { calls: 0 }), 2).unwrap();
    worker.submit(rows(0, 2)).unwrap();
    let status = wait_for(&worker, "the panic", |s| s.batches_failed == 1);
    assert!(!status.healthy);
    let err = status.last_error.unwrap();
    assert!(
        err.contains("panicked") && err.contains("simulated"),
        "{err}"
    );
    worker.submit(rows(1, 2)).unwrap();
    let report = worker.stop(Duration::from_secs(10));
    assert!(report.completed);
    assert_eq!(report.status.batches_written, 1);
    assert_eq!(report.status.rows_written, 2);
    assert!(report.status.healthy);
}

/// (thread name, rows) of every batch a `RecordingStore` wrote.
type Seen = Arc<Mutex<Vec<(Option<String>, usize)>>>;

/// Records the thread it runs on and the row counts, with a small delay per batch.
struct RecordingStore {
    seen: Seen,
}

impl MetricsStore for RecordingStore {
    fn write_batch(&mut self, rows: &[QosMetricsRow]) -> Result<(), StoreError> {
        std::thread::sleep(Duration::from_millis(20));
        let name = std::thread::current().name().map(str::to_owned);
        self.seen.lock().unwrap().push((name, rows.len()));
        Ok(())
    }
}

#[test]
fn stop_flushes_every_queued_batch_in_order_on_the_named_thread() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = RecordingStore {
        seen: Arc::clone(&seen),
    };
    let worker = StoreWorker::spawn(Box::new(store), 4).unwrap();
    assert_eq!(worker.queue_batches(), 4);
    for n in 1..=4 {
        worker.submit(rows(0, n)).unwrap();
    }
    let report = worker.stop(Duration::from_secs(10));
    assert!(report.completed, "{report:?}");
    assert_eq!(report.pending_batches, 0);
    assert_eq!(report.status.batches_written, 4);
    assert_eq!(report.status.rows_written, 10);
    assert!(report.status.last_write_duration.unwrap() >= Duration::from_millis(20));
    let seen = seen.lock().unwrap();
    let name = Some(THREAD_NAME.to_owned());
    assert_eq!(
        *seen,
        [
            (name.clone(), 1),
            (name.clone(), 2),
            (name.clone(), 3),
            (name, 4)
        ]
    );
}

#[test]
fn a_reader_holding_the_file_delays_the_write_within_the_retry_budget() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let dir = temp_dir("locked");
    let db = dir.join("metrics.db");
    TursoStore::new(&db)
        .unwrap()
        .write_batch(&rows(0, 1))
        .unwrap();
    assert_eq!(sqlite3_count(&db), 1);

    // An sqlite3 session that has read the file and stays open holds a shared lock.
    let mut reader = Command::new("sqlite3")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the sqlite3 CLI is required (apt-get install sqlite3)");
    let mut stdin = reader.stdin.take().unwrap();
    writeln!(stdin, "select count(*) from qos_metrics;").unwrap();
    let mut line = String::new();
    BufReader::new(reader.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "1");

    // Without retries the write fails at once with the engine's locking error.
    let err = TursoStore::new(&db)
        .unwrap()
        .with_lock_retry(0, Duration::ZERO)
        .write_batch(&rows(1, 1))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("open failed") && msg.contains("lock"), "{msg}");

    // With retries, closing the reader within the budget lets the write through.
    let writer = std::thread::spawn({
        let db = db.clone();
        move || {
            TursoStore::new(&db)
                .unwrap()
                .with_lock_retry(50, Duration::from_millis(20))
                .write_batch(&rows(2, 1))
        }
    });
    std::thread::sleep(Duration::from_millis(150));
    drop(stdin);
    reader.wait().unwrap();
    writer.join().unwrap().unwrap();
    let ids: Vec<String> = read_rows(&db)
        .unwrap()
        .into_iter()
        .map(|r| r.stream_id)
        .collect();
    assert_eq!(ids, ["stream-0-0", "stream-2-0"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configuration_is_refused_with_the_field_and_value() {
    let store = TursoStore::new("/nonexistent/metrics.db").unwrap();
    let err = StoreWorker::spawn(Box::new(store.clone()), 0).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("queue_batches = 0"), "{msg}");
    assert!(StoreWorker::spawn(Box::new(store), 1025).is_err());
    assert!(matches!(
        TursoStore::new(""),
        Err(StoreError::InvalidPath { .. })
    ));
    let err = FlushSchedule::new(Duration::ZERO).unwrap_err();
    assert!(err.to_string().contains("period = 0ns"), "{err}");
    assert!(FlushSchedule::new(Duration::from_secs(86_401)).is_err());
}

#[test]
fn flush_schedule_fires_once_per_period_and_skips_missed_ones() {
    let mut s = FlushSchedule::new(Duration::from_secs(10)).unwrap();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    assert!(!s.due(at(0)), "the first call arms the schedule");
    assert!(!s.due(at(9_999)));
    assert!(s.due(at(10_000)));
    assert!(!s.due(at(10_001)));
    assert!(!s.due(at(19_999)));
    assert!(s.due(at(20_500)));
    // 45 s late: one batch, not four, and the phase is kept (next at 70 s).
    assert!(s.due(at(65_000)));
    assert!(!s.due(at(69_999)));
    assert!(s.due(at(70_000)));
    assert_eq!(s.period(), Duration::from_secs(10));
}
