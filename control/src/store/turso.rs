//! [`TursoStore`]: the [`MetricsStore`] backed by `turso_core` (pure-Rust SQLite).
//!
//! The engine is beta, so each batch is a complete, short session: open, create the
//! schema if needed, one transaction of prepared inserts, TRUNCATE checkpoint, close,
//! and a check that the `-wal` is empty. Nothing stays open between batches, so the file
//! is a plain SQLite database that any reader can open then.

use std::num::NonZero;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use turso_core::{
    CheckpointMode, Connection, Database, IO, LimboError, OpenFlags, OpenOptions, PlatformIO,
    SqliteDialect, Value,
};

use super::{MetricsStore, QosMetricsRow, StoreError, StoreStep};

const TABLE_SQL: &str = "\
CREATE TABLE IF NOT EXISTS qos_metrics (
    timestamp_ms INTEGER NOT NULL,
    timestamp TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    queue_depth INTEGER NOT NULL,
    packets_dropped INTEGER NOT NULL,
    bandwidth_allocated_mbps REAL,
    latency_p95_ms REAL
);";

/// The columns `INSERT_SQL` writes, checked in a table that was already there.
const COLUMNS: [&str; 8] = [
    "timestamp_ms",
    "timestamp",
    "stream_id",
    "priority",
    "queue_depth",
    "packets_dropped",
    "bandwidth_allocated_mbps",
    "latency_p95_ms",
];

const COLUMNS_SQL: &str = "PRAGMA table_info(qos_metrics)";

const INDEX_SQL: &str =
    "CREATE INDEX IF NOT EXISTS qos_metrics_timestamp_ms ON qos_metrics (timestamp_ms)";

const INSERT_SQL: &str = "INSERT INTO qos_metrics (timestamp_ms, timestamp, stream_id, priority, \
     queue_depth, packets_dropped, bandwidth_allocated_mbps, latency_p95_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const SELECT_SQL: &str = "SELECT timestamp_ms, stream_id, priority, queue_depth, \
     packets_dropped, bandwidth_allocated_mbps, latency_p95_ms FROM qos_metrics ORDER BY rowid";

/// Default number of extra attempts to open a file locked by another process.
pub const DEFAULT_LOCK_RETRIES: u32 = 5;

/// Default pause between two such attempts.
pub const DEFAULT_LOCK_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Writes batches into one SQLite file through `turso_core`, opening and closing the
/// file for every batch.
///
/// The engine takes an exclusive lock on the file while it is open, and SQLite readers
/// hold a shared lock for as long as their connection is open (in WAL mode, even when
/// idle). When the file is locked, the open is retried `lock_retries` times, each after
/// `lock_retry_delay` (1 s in all by default); after that the batch fails with the
/// engine's locking error.
#[derive(Debug, Clone)]
pub struct TursoStore {
    path: PathBuf,
    /// `path` as UTF-8, which the engine requires.
    path_str: String,
    lock_retries: u32,
    lock_retry_delay: Duration,
}

impl TursoStore {
    /// A store writing to `path` (created with its table on the first batch; the parent
    /// directory must exist). No I/O happens here.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidPath`] when `path` is empty or not valid UTF-8.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let path_str = utf8_path(&path)?;
        Ok(Self {
            path,
            path_str,
            lock_retries: DEFAULT_LOCK_RETRIES,
            lock_retry_delay: DEFAULT_LOCK_RETRY_DELAY,
        })
    }

    /// Sets how often, and after what pause, opening a locked file is retried within
    /// one batch (0 retries: fail at once).
    #[must_use]
    pub fn with_lock_retry(mut self, retries: u32, delay: Duration) -> Self {
        self.lock_retries = retries;
        self.lock_retry_delay = delay;
        self
    }

    /// Opens the file, retrying while another process holds its lock.
    fn open(&self, flags: OpenFlags) -> Result<Arc<Database>, StoreError> {
        let mut retries = self.lock_retries;
        loop {
            let io: Arc<dyn IO> = Arc::new(PlatformIO::new().map_err(self.err(StoreStep::Io))?);
            let options = OpenOptions::new(Arc::new(SqliteDialect)).flags(flags);
            match Database::open(io, &self.path_str, options) {
                Err(LimboError::LockingError(_)) if retries > 0 => {
                    retries -= 1;
                    std::thread::sleep(self.lock_retry_delay);
                }
                other => return other.map_err(self.err(StoreStep::Open)),
            }
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, step: StoreStep) -> impl FnOnce(LimboError) -> StoreError + '_ {
        move |source| StoreError::Engine {
            path: self.path.clone(),
            step,
            source,
        }
    }

    /// Schema, one transaction of inserts, checkpoint. The caller closes `conn`.
    fn insert_all(&self, conn: &Arc<Connection>, rows: &[QosMetricsRow]) -> Result<(), StoreError> {
        conn.execute(TABLE_SQL)
            .map_err(self.err(StoreStep::CreateSchema))?;
        // A `qos_metrics` table someone else made (or an older layout) is refused
        // before anything, the index included, is added to it.
        self.check_columns(conn, false)?;
        conn.execute(INDEX_SQL)
            .map_err(self.err(StoreStep::CreateSchema))?;
        conn.execute("BEGIN").map_err(self.err(StoreStep::Begin))?;
        let inserted = self
            .insert_rows(conn, rows)
            .and_then(|()| conn.execute("COMMIT").map_err(self.err(StoreStep::Commit)));
        if inserted.is_err() {
            // Best effort: closing the connection rolls back an open transaction too.
            let _ = conn.execute("ROLLBACK");
        }
        inserted?;
        // TRUNCATE: every frame is copied into the main file and the -wal cut to 0 bytes,
        // so readers that open the file later see every row without the WAL.
        let result = conn
            .checkpoint(CheckpointMode::Truncate {
                upper_bound_inclusive: None,
            })
            .map_err(self.err(StoreStep::Checkpoint))?;
        drop(result);
        Ok(())
    }

    /// Before a read-write open, which changes the file (it switches a database to
    /// WAL), a file that exists is opened read-only: one whose `qos_metrics` table is
    /// someone else's is refused before a byte of it changes.
    fn check_existing(&self) -> Result<(), StoreError> {
        if std::fs::metadata(&self.path).map_or(true, |m| m.len() == 0) {
            return Ok(());
        }
        // Auto-vacuum (header bytes 52..56, the largest root page, non-zero): the
        // engine refuses every write with "attempt to write a readonly database",
        // which sends the operator to check permissions.
        let mut header = [0u8; 56];
        let read = std::fs::File::open(&self.path)
            .and_then(|f| std::io::Read::read_exact(&mut std::io::Read::take(f, 56), &mut header));
        if read.is_ok() && header.starts_with(b"SQLite format 3\0") && header[52..56] != [0; 4] {
            return Err(StoreError::Unsupported {
                path: self.path.clone(),
                reason: "auto_vacuum is on, and the engine cannot write such a database",
            });
        }
        let db = self.open(OpenFlags::ReadOnly)?;
        let conn = db.connect().map_err(self.err(StoreStep::Connect))?;
        let checked = self.check_columns(&conn, true);
        let _ = conn.close();
        drop(conn);
        drop(db);
        checked
    }

    /// Every column `INSERT_SQL` names is in the table (with `absent_ok`, also no
    /// table at all: it is created later).
    fn check_columns(&self, conn: &Arc<Connection>, absent_ok: bool) -> Result<(), StoreError> {
        let rows = conn
            .prepare(COLUMNS_SQL)
            .and_then(|mut stmt| stmt.run_collect_rows())
            .map_err(self.err(StoreStep::CreateSchema))?;
        // `table_info` rows: cid, name, type, notnull, default, pk.
        let names: Vec<String> = rows
            .iter()
            .filter_map(|r| r.get(1).and_then(Value::to_text).map(str::to_owned))
            .collect();
        if absent_ok && names.is_empty() {
            return Ok(());
        }
        match COLUMNS
            .iter()
            .find(|c| !names.iter().any(|n| n.eq_ignore_ascii_case(c)))
        {
            Some(missing) => Err(StoreError::ForeignTable {
                path: self.path.clone(),
                missing,
                found: names,
            }),
            None => Ok(()),
        }
    }

    fn insert_rows(
        &self,
        conn: &Arc<Connection>,
        rows: &[QosMetricsRow],
    ) -> Result<(), StoreError> {
        let mut stmt = conn
            .prepare(INSERT_SQL)
            .map_err(self.err(StoreStep::Prepare))?;
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                stmt.reset()
                    .map_err(self.err(StoreStep::Insert { row: i }))?;
            }
            // Parameters are numbered from 1 (`?1` .. `?8`).
            let mut index = NonZero::<usize>::MIN;
            for value in row_values(row) {
                stmt.bind_at(index, value)
                    .map_err(self.err(StoreStep::Bind { row: i }))?;
                index = index.saturating_add(1);
            }
            stmt.run_ignore_rows()
                .map_err(self.err(StoreStep::Insert { row: i }))?;
        }
        Ok(())
    }

    /// After close the `-wal` must be absent or empty: a reader that opens the file must
    /// find every row in the main file.
    fn verify_wal(&self) -> Result<(), StoreError> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        match std::fs::metadata(&wal) {
            Ok(meta) if meta.len() > 0 => Err(StoreError::WalNotEmpty {
                path: self.path.clone(),
                wal,
                bytes: meta.len(),
            }),
            _ => Ok(()),
        }
    }
}

impl MetricsStore for TursoStore {
    fn write_batch(&mut self, rows: &[QosMetricsRow]) -> Result<(), StoreError> {
        check_ranges(&self.path, rows)?;
        self.check_existing()?;
        let db = self.open(OpenFlags::default())?;
        let conn = db.connect().map_err(self.err(StoreStep::Connect))?;
        let inserted = self.insert_all(&conn, rows);
        let closed = conn.close().map_err(self.err(StoreStep::Close));
        // Dropping the last handles closes the file and releases its lock.
        drop(conn);
        drop(db);
        inserted?;
        closed?;
        self.verify_wal()
    }
}

fn utf8_path(path: &Path) -> Result<String, StoreError> {
    let invalid = |reason| StoreError::InvalidPath {
        path: path.to_path_buf(),
        reason,
    };
    let s = path
        .to_str()
        .ok_or_else(|| invalid("expected valid UTF-8 (the engine takes a UTF-8 path)"))?;
    if s.is_empty() {
        return Err(invalid("expected a file name, found an empty path"));
    }
    Ok(s.to_owned())
}

/// SQLite `INTEGER` is an `i64`: refuse the batch rather than wrap or clamp silently.
fn check_ranges(path: &Path, rows: &[QosMetricsRow]) -> Result<(), StoreError> {
    for (row, r) in rows.iter().enumerate() {
        for (field, value) in [
            ("queue_depth", r.queue_depth),
            ("packets_dropped", r.packets_dropped),
        ] {
            if i64::try_from(value).is_err() {
                return Err(StoreError::OutOfRange {
                    path: path.to_path_buf(),
                    row,
                    field,
                    value,
                    max: i64::MAX,
                });
            }
        }
    }
    Ok(())
}

/// The eight bound values of `INSERT_SQL`, in order. Ranges were checked before.
fn row_values(row: &QosMetricsRow) -> [Value; 8] {
    let int = |v: u64| Value::from_i64(i64::try_from(v).unwrap_or(i64::MAX));
    [
        Value::from_i64(row.timestamp_ms),
        Value::from_text(rfc3339_millis(row.timestamp_ms)),
        Value::from_text(row.stream_id.clone()),
        Value::from_i64(i64::from(row.priority)),
        int(row.queue_depth),
        int(row.packets_dropped),
        // NaN has no SQLite representation: the engine maps it to NULL.
        Value::from_f64(row.bandwidth_allocated_mbps),
        Value::from_f64(row.latency_p95_ms),
    ]
}

/// `ms` since the unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (proleptic Gregorian, UTC).
pub(crate) fn rfc3339_millis(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (secs, millis) = (in_day / 1000, in_day % 1000);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day). Howard Hinnant's `civil_from_days`;
/// exact for every `i64` millisecond timestamp (|days| < 1.1e11).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in small ranges (commented above), so the conversions cannot fail.
    let month = u32::try_from(month).unwrap_or(1);
    let day = u32::try_from(day).unwrap_or(1);
    (year, month, day)
}

/// Reads every row of `path`'s `qos_metrics` table, in insertion order, through
/// `turso_core`, opening the file read-only.
///
/// Meant for tools and tests between batches or after [`super::StoreWorker::stop`]: the
/// engine keeps one `Database` per file per process, so do not call it while this
/// process's worker is writing the same file.
///
/// # Errors
///
/// [`StoreError::Engine`] when the file cannot be opened or queried (a missing file or
/// table included), [`StoreError::BadValue`] when a stored value has the wrong type or
/// range.
pub fn read_rows(path: &Path) -> Result<Vec<QosMetricsRow>, StoreError> {
    let path_str = utf8_path(path)?;
    let err = |step| {
        move |source| StoreError::Engine {
            path: path.to_path_buf(),
            step,
            source,
        }
    };
    let io: Arc<dyn IO> = Arc::new(PlatformIO::new().map_err(err(StoreStep::Io))?);
    let options = OpenOptions::new(Arc::new(SqliteDialect)).flags(OpenFlags::ReadOnly);
    let db = Database::open(io, &path_str, options).map_err(err(StoreStep::Open))?;
    let conn = db.connect().map_err(err(StoreStep::Connect))?;
    let values = conn
        .prepare(SELECT_SQL)
        .and_then(|mut stmt| stmt.run_collect_rows())
        .map_err(err(StoreStep::Query));
    let closed = conn.close().map_err(err(StoreStep::Close));
    drop(conn);
    drop(db);
    let values = values?;
    closed?;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| parse_row(path, i, v))
        .collect()
}

fn parse_row(path: &Path, row: usize, v: &[Value]) -> Result<QosMetricsRow, StoreError> {
    let bad = |column, found: Option<&Value>, expected| StoreError::BadValue {
        path: path.to_path_buf(),
        row,
        column,
        found: found.map_or_else(|| "no column".to_owned(), |v| format!("{v:?}")),
        expected,
    };
    let int = |i: usize, column| {
        v.get(i)
            .and_then(Value::as_int)
            .ok_or_else(|| bad(column, v.get(i), "an INTEGER"))
    };
    let uint = |i: usize, column| {
        int(i, column).and_then(|n| {
            u64::try_from(n).map_err(|_| bad(column, v.get(i), "a non-negative INTEGER"))
        })
    };
    let real = |i: usize, column| match v.get(i) {
        Some(Value::Null) => Ok(f64::NAN),
        Some(x @ Value::Numeric(_)) => Ok(x.as_float()),
        other => Err(bad(column, other, "a REAL or NULL")),
    };
    let stream_id = v
        .get(1)
        .and_then(Value::to_text)
        .ok_or_else(|| bad("stream_id", v.get(1), "TEXT"))?
        .to_owned();
    let priority = int(2, "priority")?;
    Ok(QosMetricsRow {
        timestamp_ms: int(0, "timestamp_ms")?,
        stream_id,
        priority: u8::try_from(priority)
            .map_err(|_| bad("priority", v.get(2), "an INTEGER in 0..=255"))?,
        queue_depth: uint(3, "queue_depth")?,
        packets_dropped: uint(4, "packets_dropped")?,
        bandwidth_allocated_mbps: real(5, "bandwidth_allocated_mbps")?,
        latency_p95_ms: real(6, "latency_p95_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::rfc3339_millis;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        // 2025-10-01T10:30:00Z, the spec's example: 20362 days after the epoch.
        assert_eq!(
            rfc3339_millis(20_362 * 86_400_000 + (10 * 3600 + 30 * 60) * 1000 + 7),
            "2025-10-01T10:30:00.007Z"
        );
        // Leap day 2024-02-29 = day 19782.
        assert_eq!(
            rfc3339_millis(19_782 * 86_400_000),
            "2024-02-29T00:00:00.000Z"
        );
        assert_eq!(rfc3339_millis(-1), "1969-12-31T23:59:59.999Z");
        // Extremes do not panic.
        let _ = rfc3339_millis(i64::MAX);
        let _ = rfc3339_millis(i64::MIN);
    }
}
