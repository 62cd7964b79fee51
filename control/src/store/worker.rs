//! [`StoreWorker`]: runs a [`MetricsStore`] on its own thread behind a bounded queue.
//!
//! The producer side ([`StoreWorker::submit`]) only ever does a `try_send` and a few
//! relaxed counter updates, so a slow, hung or failing store can never hold up the
//! control thread, let alone the dataplane. The status is a set of atomics in a shared
//! struct, read by [`StoreWorker::status`] from any thread.

use std::convert::Infallible;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{MetricsStore, QosMetricsRow, StoreError};

/// Name of the worker thread.
pub const THREAD_NAME: &str = "qos-metrics-db";

/// Largest queue capacity [`StoreWorker::spawn`] accepts, in batches.
pub const MAX_QUEUE_BATCHES: usize = 1024;

/// Sentinel of `Shared::last_write_ns`: no batch handled yet.
const NO_DURATION: u64 = u64::MAX;
/// Sentinel of `Shared::last_success_unix_ms`: no success yet.
const NO_SUCCESS: i64 = i64::MIN;

/// Why [`StoreWorker::submit`] refused a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue already holds its capacity of batches: the store is behind.
    QueueFull,
    /// The worker thread is gone (it only exits after [`StoreWorker::stop`], so this
    /// means it died unexpectedly).
    WorkerGone,
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::QueueFull => "the metrics.db queue is full (the store is behind)",
            Self::WorkerGone => "the metrics.db worker thread is gone",
        })
    }
}

/// A batch that [`StoreWorker::submit`] dropped (and counted); the batch is given back so
/// that its allocation can be reused.
#[derive(Debug, thiserror::Error)]
#[error("metrics batch of {} rows dropped: {reason}", batch.len())]
pub struct Dropped {
    /// Why it was dropped.
    pub reason: DropReason,
    /// The batch, untouched.
    pub batch: Vec<QosMetricsRow>,
}

/// A snapshot of the worker's counters. Counters only grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// Batches accepted into the queue.
    pub batches_submitted: u64,
    /// Batches the store wrote successfully.
    pub batches_written: u64,
    /// Rows of those batches.
    pub rows_written: u64,
    /// Batches the store failed to write (error or panic); their rows are lost.
    pub batches_failed: u64,
    /// Rows of those batches.
    pub rows_failed: u64,
    /// Batches refused by [`StoreWorker::submit`] (queue full or worker gone).
    pub batches_dropped: u64,
    /// Rows of those batches.
    pub rows_dropped: u64,
    /// Batches still queued when [`StoreWorker::stop`] gave up, discarded unwritten.
    pub batches_abandoned: u64,
    /// Message of the most recent failure, naming the file and step; kept after a later
    /// success so that an operator can still see what went wrong.
    pub last_error: Option<String>,
    /// Wall time of the most recent write attempt (successful or not).
    pub last_write_duration: Option<Duration>,
    /// Unix time in milliseconds at which the most recent successful write ended.
    pub last_success_unix_ms: Option<i64>,
    /// `false` from a failure until the next success; `true` before the first write.
    pub healthy: bool,
}

impl StoreStatus {
    /// The error the store is failing with now: [`StoreStatus::last_error`] while not
    /// [`StoreStatus::healthy`], `None` once a write succeeded again.
    pub fn failing(&self) -> Option<&str> {
        if self.healthy {
            None
        } else {
            self.last_error.as_deref()
        }
    }
}

/// State shared by the producer, the worker thread and status readers.
#[derive(Debug)]
struct Shared {
    batches_submitted: AtomicU64,
    batches_written: AtomicU64,
    rows_written: AtomicU64,
    batches_failed: AtomicU64,
    rows_failed: AtomicU64,
    batches_dropped: AtomicU64,
    rows_dropped: AtomicU64,
    batches_abandoned: AtomicU64,
    last_write_ns: AtomicU64,
    last_success_unix_ms: AtomicI64,
    healthy: AtomicBool,
    /// Set by `stop` when it gives up: the worker discards what is still queued.
    abandon: AtomicBool,
    /// Written (by the worker) before `batches_failed` is incremented.
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            batches_submitted: AtomicU64::new(0),
            batches_written: AtomicU64::new(0),
            rows_written: AtomicU64::new(0),
            batches_failed: AtomicU64::new(0),
            rows_failed: AtomicU64::new(0),
            batches_dropped: AtomicU64::new(0),
            rows_dropped: AtomicU64::new(0),
            batches_abandoned: AtomicU64::new(0),
            last_write_ns: AtomicU64::new(NO_DURATION),
            last_success_unix_ms: AtomicI64::new(NO_SUCCESS),
            healthy: AtomicBool::new(true),
            abandon: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    fn snapshot(&self) -> StoreStatus {
        // Acquire pairs with the Release increments in `record`: a reader that sees a
        // failure counted also sees its `last_error`.
        let batches_failed = self.batches_failed.load(Ordering::Acquire);
        let batches_written = self.batches_written.load(Ordering::Acquire);
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let ns = self.last_write_ns.load(Ordering::Relaxed);
        let ms = self.last_success_unix_ms.load(Ordering::Relaxed);
        StoreStatus {
            batches_submitted: self.batches_submitted.load(Ordering::Relaxed),
            batches_written,
            rows_written: self.rows_written.load(Ordering::Relaxed),
            batches_failed,
            rows_failed: self.rows_failed.load(Ordering::Relaxed),
            batches_dropped: self.batches_dropped.load(Ordering::Relaxed),
            rows_dropped: self.rows_dropped.load(Ordering::Relaxed),
            batches_abandoned: self.batches_abandoned.load(Ordering::Relaxed),
            last_error,
            last_write_duration: (ns != NO_DURATION).then(|| Duration::from_nanos(ns)),
            last_success_unix_ms: (ms != NO_SUCCESS).then_some(ms),
            healthy: self.healthy.load(Ordering::Relaxed),
        }
    }

    /// Records the outcome of one write attempt (worker thread only).
    fn record(&self, rows: usize, took: Duration, outcome: Result<(), String>) {
        let rows = u64::try_from(rows).unwrap_or(u64::MAX);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(NO_DURATION - 1);
        self.last_write_ns.store(ns, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                self.last_success_unix_ms
                    .store(unix_now_ms(), Ordering::Relaxed);
                self.rows_written.fetch_add(rows, Ordering::Relaxed);
                self.healthy.store(true, Ordering::Relaxed);
                // Release pairs with the Acquire load in `snapshot`.
                self.batches_written.fetch_add(1, Ordering::Release);
            }
            Err(message) => {
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(message);
                self.rows_failed.fetch_add(rows, Ordering::Relaxed);
                self.healthy.store(false, Ordering::Relaxed);
                // Release pairs with the Acquire load in `snapshot`.
                self.batches_failed.fetch_add(1, Ordering::Release);
            }
        }
    }
}

/// What [`StoreWorker::stop`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// `true` when every queued batch was handled (written or failed) and the thread
    /// was joined within the timeout; `false` when `stop` gave up and left the thread
    /// to finish its current batch and discard the rest.
    pub completed: bool,
    /// Batches accepted but not yet handled when `stop` returned (0 when completed).
    pub pending_batches: u64,
    /// The counters when `stop` returned.
    pub status: StoreStatus,
}

/// Runs a [`MetricsStore`] on the thread `qos-metrics-db`, fed by a bounded queue.
///
/// Call order: [`spawn`](Self::spawn), then [`submit`](Self::submit) once per period
/// and [`status`](Self::status) whenever, then [`stop`](Self::stop). Dropping the worker
/// without `stop` lets the thread finish the queue in the background, unobserved.
#[derive(Debug)]
pub struct StoreWorker {
    tx: SyncSender<Vec<QosMetricsRow>>,
    shared: Arc<Shared>,
    handle: JoinHandle<()>,
    /// Disconnected when the thread's main function returns (or unwinds).
    exited: Receiver<Infallible>,
    queue_batches: usize,
}

impl StoreWorker {
    /// Starts the thread with a queue of `queue_batches` batches.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidConfig`] unless `1 <= queue_batches <= MAX_QUEUE_BATCHES`;
    /// [`StoreError::Spawn`] when the thread cannot be created.
    pub fn spawn(store: Box<dyn MetricsStore>, queue_batches: usize) -> Result<Self, StoreError> {
        if !(1..=MAX_QUEUE_BATCHES).contains(&queue_batches) {
            return Err(StoreError::InvalidConfig {
                field: "queue_batches",
                value: queue_batches.to_string(),
                expected: "between 1 and 1024 batches",
            });
        }
        let (tx, rx) = mpsc::sync_channel(queue_batches);
        let (exited_tx, exited) = mpsc::channel();
        let shared = Arc::new(Shared::new());
        let thread_shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || run(store, &rx, &thread_shared, exited_tx))
            .map_err(StoreError::Spawn)?;
        Ok(Self {
            tx,
            shared,
            handle,
            exited,
            queue_batches,
        })
    }

    /// Queues `batch` for writing. Never blocks: when the queue is full (or the worker is
    /// gone) the batch is counted as dropped and given back in the error.
    ///
    /// # Errors
    ///
    /// [`Dropped`] with the reason and the batch.
    pub fn submit(&self, batch: Vec<QosMetricsRow>) -> Result<(), Dropped> {
        let s = &self.shared;
        // Counted before the send so that `pending` never underflows in `stop`.
        s.batches_submitted.fetch_add(1, Ordering::Relaxed);
        let (reason, batch) = match self.tx.try_send(batch) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(batch)) => (DropReason::QueueFull, batch),
            Err(TrySendError::Disconnected(batch)) => (DropReason::WorkerGone, batch),
        };
        s.batches_submitted.fetch_sub(1, Ordering::Relaxed);
        s.batches_dropped.fetch_add(1, Ordering::Relaxed);
        s.rows_dropped.fetch_add(
            u64::try_from(batch.len()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Err(Dropped { reason, batch })
    }

    /// A snapshot of the counters; callable from any thread (through `&self`).
    pub fn status(&self) -> StoreStatus {
        self.shared.snapshot()
    }

    /// `false` from a failed write until the next successful one.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// The queue capacity, in batches.
    pub fn queue_batches(&self) -> usize {
        self.queue_batches
    }

    /// Closes the queue, lets the thread write what is queued, and joins it, waiting at
    /// most `timeout`. When the timeout passes first, `stop` gives up: it returns a
    /// report with `completed == false`, and the thread (detached) finishes the batch it
    /// is writing, discards the rest as `batches_abandoned`, and exits.
    pub fn stop(self, timeout: Duration) -> StopReport {
        let Self {
            tx,
            shared,
            handle,
            exited,
            ..
        } = self;
        drop(tx);
        let completed = match exited.recv_timeout(timeout) {
            Ok(never) => match never {},
            // The thread's main function has returned: joining is immediate.
            Err(RecvTimeoutError::Disconnected) => handle.join().is_ok(),
            Err(RecvTimeoutError::Timeout) => {
                shared.abandon.store(true, Ordering::Relaxed);
                drop(handle);
                false
            }
        };
        let status = shared.snapshot();
        let handled = status.batches_written + status.batches_failed + status.batches_abandoned;
        StopReport {
            completed,
            pending_batches: status.batches_submitted.saturating_sub(handled),
            status,
        }
    }
}

/// The worker thread's main function: returns when the queue is closed and empty.
fn run(
    mut store: Box<dyn MetricsStore>,
    rx: &Receiver<Vec<QosMetricsRow>>,
    shared: &Shared,
    _exited: Sender<Infallible>,
) {
    while let Ok(batch) = rx.recv() {
        if shared.abandon.load(Ordering::Relaxed) {
            shared.batches_abandoned.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let start = monotonic_now();
        // A beta engine may panic; that is one failed batch, not a dead worker. The
        // store is used again afterwards: `TursoStore` keeps no state between batches.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| store.write_batch(&batch)));
        let took = monotonic_now().saturating_duration_since(start);
        let outcome = match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(payload) => Err(format!(
                "metrics store panicked while writing {} rows: {}",
                batch.len(),
                panic_message(payload.as_ref())
            )),
        };
        shared.record(batch.len(), took, outcome);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

// The store worker is not on the packet path: it reads the clock to time its own writes.
#[allow(clippy::disallowed_methods)]
fn monotonic_now() -> Instant {
    Instant::now()
}

#[allow(clippy::disallowed_methods)]
fn unix_now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        // A clock before 1970: report it as such rather than fail.
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN + 1, |ms| -ms),
    }
}
