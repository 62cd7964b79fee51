//! `metrics.db`: QoSMetrics rows in a real SQLite file (DESIGN O2, section 10).
//!
//! Every period (10 s by default, see [`FlushSchedule`]) the control thread gathers one
//! [`QosMetricsRow`] per stream and hands the batch to a [`StoreWorker`]. The worker runs
//! a [`MetricsStore`] on its own thread (`qos-metrics-db`), fed by a bounded queue whose
//! [`StoreWorker::submit`] never blocks: when the store falls behind, whole batches are
//! dropped and counted. A failing store is reported in [`StoreStatus`] and never reaches
//! the dataplane.
//!
//! The production store is [`TursoStore`], backed by the pure-Rust SQLite engine
//! `turso_core` (beta). For every batch it opens the file, creates the schema if needed,
//! inserts the rows in one transaction through a prepared statement with bound
//! parameters, checkpoints the WAL into the main file (truncating the `-wal`), and
//! closes, so that other readers (the `sqlite3` CLI, dashboards) can open the file
//! between batches. Readers should not keep a connection open: while one is open (a
//! WAL-mode SQLite connection holds a shared lock even when idle) the engine cannot lock
//! the file, the write is retried for about a second (see [`TursoStore::with_lock_retry`])
//! and then counted as failed.
//!
//! # Schema
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS qos_metrics (
//!     timestamp_ms INTEGER NOT NULL,      -- unix time in milliseconds (UTC)
//!     timestamp TEXT NOT NULL,            -- the same instant as RFC 3339, e.g. 2025-10-01T10:30:00.000Z
//!     stream_id TEXT NOT NULL,
//!     priority INTEGER NOT NULL,          -- 0..=7
//!     queue_depth INTEGER NOT NULL,       -- packets queued at sampling time
//!     packets_dropped INTEGER NOT NULL,   -- packets dropped during the period
//!     bandwidth_allocated_mbps REAL,      -- NULL when the value is NaN
//!     latency_p95_ms REAL                 -- NULL when the value is NaN (no sample)
//! );
//! CREATE INDEX IF NOT EXISTS qos_metrics_timestamp_ms ON qos_metrics (timestamp_ms);
//! ```
//!
//! A `qos_metrics` table already in the file must have these columns (it may have
//! more); otherwise every batch fails with [`StoreError::ForeignTable`] and nothing,
//! not even the index, is added to the file.
//!
//! The column names follow the QoSMetrics entity of the module spec; `timestamp` keeps
//! the spec's RFC 3339 text and `timestamp_ms` is the indexed integer form.

mod turso;
mod worker;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use turso::{DEFAULT_LOCK_RETRIES, DEFAULT_LOCK_RETRY_DELAY, TursoStore, read_rows};
pub use worker::{
    DropReason, Dropped, MAX_QUEUE_BATCHES, StopReport, StoreStatus, StoreWorker, THREAD_NAME,
};

/// Name of the table that holds the rows.
pub const TABLE: &str = "qos_metrics";

/// Default period between two batches (DESIGN O2: every 10 s).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);

/// Default capacity of the worker's queue, in batches.
pub const DEFAULT_QUEUE_BATCHES: usize = 4;

/// Shortest period [`FlushSchedule`] accepts.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);

/// Longest period [`FlushSchedule`] accepts (one day).
pub const MAX_PERIOD: Duration = Duration::from_secs(24 * 60 * 60);

/// One QoSMetrics row: the state of one stream at the end of one period.
#[derive(Debug, Clone, PartialEq)]
pub struct QosMetricsRow {
    /// Sampling time, unix time in milliseconds (UTC).
    pub timestamp_ms: i64,
    /// Stream identifier, any UTF-8 text (bound as a parameter, never spliced into SQL).
    pub stream_id: String,
    /// Priority tier, 0 (lowest) to 7 (highest).
    pub priority: u8,
    /// Packets queued at sampling time. At most `i64::MAX` (SQLite `INTEGER`).
    pub queue_depth: u64,
    /// Packets dropped during the period. At most `i64::MAX` (SQLite `INTEGER`).
    pub packets_dropped: u64,
    /// Bandwidth allocated to the stream, Mbit/s. NaN is stored as `NULL` and read back
    /// as NaN.
    pub bandwidth_allocated_mbps: f64,
    /// 95th percentile latency over the period, milliseconds. NaN (no sample) is stored
    /// as `NULL` and read back as NaN.
    pub latency_p95_ms: f64,
}

/// Where a batch goes. Implementations run on the worker thread only, one batch at a
/// time; they may block (the caller of [`StoreWorker::submit`] never waits for them).
pub trait MetricsStore: Send {
    /// Writes all `rows` durably, or none of them.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] naming the file and the step that failed; the worker records it
    /// and goes on with the next batch.
    fn write_batch(&mut self, rows: &[QosMetricsRow]) -> Result<(), StoreError>;
}

/// The step of a batch write that failed, as named in [`StoreError::Engine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreStep {
    /// Creating the I/O back end.
    Io,
    /// Opening (or creating) the database file.
    Open,
    /// Connecting to the opened database.
    Connect,
    /// `CREATE TABLE` / `CREATE INDEX IF NOT EXISTS`.
    CreateSchema,
    /// `BEGIN`.
    Begin,
    /// Preparing the `INSERT` statement.
    Prepare,
    /// Binding a row's values (`row` is its index in the batch).
    Bind {
        /// Index of the row in the batch.
        row: usize,
    },
    /// Running the `INSERT` of one row (`row` is its index in the batch).
    Insert {
        /// Index of the row in the batch.
        row: usize,
    },
    /// `COMMIT`.
    Commit,
    /// Checkpointing the WAL into the main file (TRUNCATE mode).
    Checkpoint,
    /// Closing the connection.
    Close,
    /// Checking, after close, that the `-wal` file holds no frame.
    VerifyWal,
    /// Querying rows back ([`read_rows`]).
    Query,
}

impl std::fmt::Display for StoreStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io => f.write_str("creating the I/O back end"),
            Self::Open => f.write_str("open"),
            Self::Connect => f.write_str("connect"),
            Self::CreateSchema => f.write_str("create schema"),
            Self::Begin => f.write_str("BEGIN"),
            Self::Prepare => f.write_str("prepare INSERT"),
            Self::Bind { row } => write!(f, "bind row {row}"),
            Self::Insert { row } => write!(f, "insert row {row}"),
            Self::Commit => f.write_str("COMMIT"),
            Self::Checkpoint => f.write_str("checkpoint (TRUNCATE)"),
            Self::Close => f.write_str("close"),
            Self::VerifyWal => f.write_str("verify the -wal is empty after close"),
            Self::Query => f.write_str("query"),
        }
    }
}

/// Errors of the metrics store. Every message names the file (when there is one) and
/// what failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine reported an error at `step`.
    #[error("metrics.db {}: {step} failed: {source}", path.display())]
    Engine {
        /// The database file.
        path: PathBuf,
        /// The step that failed.
        step: StoreStep,
        /// The engine's error.
        #[source]
        source: turso_core::LimboError,
    },
    /// The path cannot be handed to the engine.
    #[error("metrics.db path {}: {reason}", path.display())]
    InvalidPath {
        /// The offending path.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A row value does not fit the SQLite column; nothing of the batch was written.
    #[error(
        "metrics.db {}: row {row} field {field} = {value} is out of range: expected at most {max} (SQLite INTEGER)",
        path.display()
    )]
    OutOfRange {
        /// The database file.
        path: PathBuf,
        /// Index of the row in the batch.
        row: usize,
        /// Name of the field.
        field: &'static str,
        /// The value.
        value: u64,
        /// The largest accepted value.
        max: i64,
    },
    /// After close, the `-wal` file still holds data: rows may not be visible to readers
    /// that ignore the WAL.
    #[error(
        "metrics.db {}: {} still holds {bytes} bytes after checkpoint and close (expected 0)",
        path.display(),
        wal.display()
    )]
    WalNotEmpty {
        /// The database file.
        path: PathBuf,
        /// The `-wal` file.
        wal: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The file already holds a `qos_metrics` table without a column the rows need (a
    /// table another program made, or an older layout); nothing was written to it.
    #[error(
        "metrics.db {}: table qos_metrics has no column {missing} (found: {}); it was not made by this store: move the file aside or point the store elsewhere",
        path.display(),
        found.join(", ")
    )]
    ForeignTable {
        /// The database file.
        path: PathBuf,
        /// The first missing column.
        missing: &'static str,
        /// The table's columns.
        found: Vec<String>,
    },
    /// The file is a SQLite database the engine cannot write (auto-vacuum on); nothing
    /// was written to it.
    #[error(
        "metrics.db {}: {reason}: move the file aside or point the store elsewhere",
        path.display()
    )]
    Unsupported {
        /// The database file.
        path: PathBuf,
        /// What the engine does not support.
        reason: &'static str,
    },
    /// A stored value does not have the type or range of its column ([`read_rows`]).
    #[error(
        "metrics.db {}: row {row} column {column}: found {found}, expected {expected}",
        path.display()
    )]
    BadValue {
        /// The database file.
        path: PathBuf,
        /// Index of the row in the result.
        row: usize,
        /// Name of the column.
        column: &'static str,
        /// What was found.
        found: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A configuration value is out of range.
    #[error("metrics store {field} = {value} is invalid: expected {expected}")]
    InvalidConfig {
        /// Name of the field.
        field: &'static str,
        /// The value, as given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The worker thread could not be started.
    #[error("metrics store: cannot spawn thread qos-metrics-db: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Decides when the next batch is due: every `period`, aligned on the first call, never
/// firing twice for periods that were missed (a late caller gets one batch, not a burst).
///
/// Sans-IO: the caller passes `now`.
#[derive(Debug, Clone)]
pub struct FlushSchedule {
    period: Duration,
    next_due: Option<Instant>,
}

impl FlushSchedule {
    /// A schedule with the given period.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidConfig`] unless `MIN_PERIOD <= period <= MAX_PERIOD`.
    pub fn new(period: Duration) -> Result<Self, StoreError> {
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return Err(StoreError::InvalidConfig {
                field: "period",
                value: format!("{period:?}"),
                expected: "between 1 ms and 24 h",
            });
        }
        Ok(Self {
            period,
            next_due: None,
        })
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Returns `true` when a batch is due at `now`. The first call arms the schedule and
    /// returns `false`: the first batch is due one period later.
    pub fn due(&mut self, now: Instant) -> bool {
        let Some(next) = self.next_due else {
            self.next_due = Some(now + self.period);
            return false;
        };
        if now < next {
            return false;
        }
        // Skip the periods that were missed, keeping the phase.
        let period_ns = self.period.as_nanos();
        let late_ns = now.duration_since(next).as_nanos() % period_ns;
        // late_ns < period_ns <= MAX_PERIOD in ns, which fits a u64.
        let late = Duration::from_nanos(u64::try_from(late_ns).unwrap_or(0));
        self.next_due = Some(now + (self.period - late));
        true
    }
}
