//! HdrHistogram interval logs (`.hlog`) of sojourn and scheduling cost (O4).
//!
//! The files are the standard interval log format that HdrHistogram's Java
//! (`HistogramLogReader`, `HistogramLogProcessor`), Go, Python and Rust readers read.
//! [`HlogWriter`] writes, in the order the Java writer's conventions give:
//!
//! ```text
//! #[Logged with qos-control 0.1.0]
//! #[Histogram log format version 1.3]
//! #[StartTime: 1700000000.123 (seconds since epoch), Tue Nov 14 22:13:20 UTC 2023]
//! #[BaseTime: 1700000000.123 (seconds since epoch)]
//! #[MaxValueDivisor: 1000000.000]
//! "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
//! Tag=p7.sojourn,0.000,1.000,0.250,HISTFAAAA...
//! ```
//!
//! * **Times.** `StartTime` and `BaseTime` are both the `start_time` given to
//!   [`HlogWriter::create`], truncated to the millisecond. With both present every reader
//!   takes the per-interval `StartTimestamp` as seconds since `BaseTime` (no heuristic), so
//!   interval lines carry offsets (`0.000`, `1.000`, ...), rounded to the millisecond.
//!   The human date of `StartTime` is written in UTC (the Java writer uses the local zone;
//!   readers skip it).
//! * **Values** recorded in the histograms are nanoseconds.
//! * **`Interval_Max`** is the interval's largest value divided by
//!   [`MAX_VALUE_UNIT_RATIO`] = 1,000,000, i.e. in milliseconds: the default of the Java
//!   `HistogramLogWriter` (its "msec : nsec ratio") for nanosecond data. No reader uses
//!   this column for anything but display (the Java scanner skips it; the percentiles come
//!   from the histogram), and the `#[MaxValueDivisor]` comment (written by the Rust
//!   crate's builder, ignored as a comment by the other readers) records the ratio.
//! * **Payloads** are the V2 compressed encoding (cookie `0x1c849314`: Java's
//!   `V2CompressedEncodingCookieBase` `0x1c849304` with word-size bits `0x10`; inflated,
//!   a V2 encoding with cookie `0x1c849313`) in standard base64, produced by the
//!   `hdrhistogram` crate's [`V2DeflateSerializer`] through its
//!   [`IntervalLogWriterBuilder`].
//!
//! # Tags
//!
//! Every interval carries a tag naming what was measured (tags cannot contain `,`, space,
//! `\r` or `\n`):
//!
//! | tag | histogram |
//! | --- | --- |
//! | `p{priority}.sojourn` ([`sojourn_tag`]) | sojourn time (enqueue to dequeue, S10) of priority 0..=7, all workers, ns |
//! | `w{worker}.cost` ([`cost_tag`]) | scheduling cost of one worker: the time of each loop iteration that moved packets (a batch of decisions, not one packet), ns |
//! | `cost` ([`COST_TAG`]) | the same for all workers together; the control plane does not write it (an embedder may) |
//!
//! # Reading
//!
//! [`read_hlog`] parses an interval log in the V2 encoding (ours or another writer's;
//! timestamps in seconds with a fraction) line by line with the crate's
//! [`IntervalLogIterator`], so each error names the file and the line. Hostile input is
//! bounded before anything is allocated for it: only regular files are read, a line may
//! hold at most [`MAX_LINE_BYTES`], a payload is inflated up to [`MAX_INFLATED_BYTES`],
//! the histogram its header declares may have at most [`MAX_COUNTERS`] counters before
//! the crate's [`Deserializer`] builds it, and counts may not overflow. [`summarize_hlog`]
//! sums each tag's intervals while reading (bounded memory for any length of log, at most
//! [`MAX_SUM_COUNTERS`] counters in all) and skips an incomplete last line, reporting it;
//! [`TagSum::row`] gives p50/p90/p99/p99.9/max/count (`qos-ctl hdr print`).
//!
//! [`V2DeflateSerializer`]: hdrhistogram::serialization::V2DeflateSerializer
//! [`IntervalLogWriterBuilder`]: hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder
//! [`IntervalLogIterator`]: hdrhistogram::serialization::interval_log::IntervalLogIterator
//! [`Deserializer`]: hdrhistogram::serialization::Deserializer

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, IntervalLogWriterError, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};

/// Divisor of the `Interval_Max` column: values are ns, the column is in ms (the Java
/// `HistogramLogWriter` default).
pub const MAX_VALUE_UNIT_RATIO: f64 = 1_000_000.0;

/// The interval log format version written in the header (the Java writer's current one).
pub const LOG_FORMAT_VERSION: &str = "1.3";

/// The legend line (without its newline), as the Java writer writes it.
pub const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"";

/// Tag of a scheduling-cost histogram of all workers together (not written by the
/// control plane, which writes one per worker, [`cost_tag`]).
pub const COST_TAG: &str = "cost";

/// First 4 bytes (big-endian) of a V2 compressed payload.
pub const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;

/// First 4 bytes (big-endian) of a V2 uncompressed payload (and of an inflated one).
pub const V2_COOKIE: u32 = 0x1c84_9313;

/// Largest histogram an interval may declare, in counters (8 MB of counts once
/// decoded). `qosd`'s histograms (1 ns to 100 s, 3 significant digits) have 27,648; the
/// widest at 3 digits (1..=u64::MAX) 55,296; 1..=u64::MAX at 5 digits would need 6.3
/// million (50 MB), and is refused.
pub const MAX_COUNTERS: u64 = 1 << 20;

/// Largest number of counters the sums of one read may hold, all tags together (128 MB).
pub const MAX_SUM_COUNTERS: u64 = 1 << 24;

/// Largest total count of a histogram or a tag's sum: counts are signed 64-bit in the
/// encoding, and percentiles add them up.
pub const MAX_TOTAL_COUNT: u64 = i64::MAX as u64;

/// Largest inflated payload accepted, in bytes: [`MAX_COUNTERS`] counters at most 9
/// bytes each once encoded, plus the header.
pub const MAX_INFLATED_BYTES: usize = 10 << 20;

/// Longest line accepted, in bytes: the base64 of a compressed payload that inflates to
/// [`MAX_INFLATED_BYTES`] is at most about 14 MB.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Bytes of a V2 header: cookie, payload length, normalizing offset, significant digits,
/// lowest and highest trackable values, integer-to-double ratio.
const V2_HEADER_BYTES: usize = 40;

/// The tag of priority `priority`'s sojourn histogram: `p{priority}.sojourn`.
pub fn sojourn_tag(priority: u8) -> String {
    format!("p{priority}.sojourn")
}

/// The tag of worker `worker`'s scheduling-cost histogram: `w{worker}.cost`.
pub fn cost_tag(worker: usize) -> String {
    format!("w{worker}.cost")
}

/// What went wrong writing or reading an interval log. Every message names the file (and,
/// when reading, the line).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HlogError {
    /// The file could not be created, written, flushed or read.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// What was being done (`create`, `write`, `read`).
        action: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A time before 1970-01-01 (interval logs count seconds since the epoch).
    #[error(
        "{path}: {field} is {secs_before_epoch:.3} s before the Unix epoch, expected a time after 1970-01-01"
    )]
    BeforeEpoch {
        /// The log file.
        path: PathBuf,
        /// Which parameter (`start_time`).
        field: &'static str,
        /// How far before the epoch, in seconds.
        secs_before_epoch: f64,
    },
    /// An interval starting before the log's `BaseTime`.
    #[error(
        "{path}: interval start is {secs_before_base:.3} s before the log's start time, expected a start at or after it"
    )]
    IntervalBeforeStart {
        /// The log file.
        path: PathBuf,
        /// How far before `BaseTime`, in seconds.
        secs_before_base: f64,
    },
    /// A tag that is empty or contains `,`, space, `\r` or `\n`.
    #[error(
        "{path}: tag {tag:?} is not valid, expected a non-empty tag without ',', ' ', '\\r' or '\\n'"
    )]
    BadTag {
        /// The log file.
        path: PathBuf,
        /// The offending tag.
        tag: String,
    },
    /// The histogram could not be serialized.
    #[error("{path}: cannot serialize the histogram of tag {tag:?}: {message}")]
    Serialize {
        /// The log file.
        path: PathBuf,
        /// Tag of the interval.
        tag: String,
        /// The serializer's message.
        message: String,
    },
    /// A line of a log is not a comment, legend, time header or valid interval.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The log file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Two intervals of one tag could not be added.
    #[error("line {line} (tag {tag:?}): cannot add the interval to the earlier ones: {message}")]
    Merge {
        /// Line of the interval that could not be added.
        line: usize,
        /// Its tag (`""` for none).
        tag: String,
        /// The histogram's message.
        message: String,
    },
}

/// Writes one `.hlog` file: the header on [`create`](Self::create), then one line per
/// [`write_interval`](Self::write_interval), each written whole with a single write and
/// flushed. A write that fails part way (a full disk) is cut back to the last whole line,
/// so later lines follow whole ones; only a crash mid-write leaves an incomplete last
/// line, which [`summarize_hlog`] skips.
pub struct HlogWriter {
    path: PathBuf,
    file: File,
    /// Bytes of whole lines written: where the next line starts.
    whole: u64,
    serializer: V2DeflateSerializer,
    /// Scratch for the crate's per-interval writer (header comment + interval line).
    scratch: Vec<u8>,
    /// `start_time` truncated to the millisecond: the log's StartTime and BaseTime.
    base: SystemTime,
}

impl std::fmt::Debug for HlogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HlogWriter")
            .field("path", &self.path)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl HlogWriter {
    /// Creates (or truncates) `path` and writes the header: the logging application, the
    /// format version, `StartTime` (with a UTC date), `BaseTime`, the max-value divisor and
    /// the legend. `start_time` is truncated to the millisecond; interval starts are
    /// written relative to it.
    ///
    /// # Errors
    /// [`HlogError::BeforeEpoch`] for a `start_time` before 1970, [`HlogError::Io`] when the
    /// file cannot be created or written.
    pub fn create(path: impl AsRef<Path>, start_time: SystemTime) -> Result<Self, HlogError> {
        let path = path.as_ref().to_path_buf();
        let since_epoch =
            start_time
                .duration_since(UNIX_EPOCH)
                .map_err(|e| HlogError::BeforeEpoch {
                    path: path.clone(),
                    field: "start_time",
                    secs_before_epoch: e.duration().as_secs_f64(),
                })?;
        let base_since_epoch = Duration::from_millis(since_epoch.as_secs() * 1000)
            + Duration::from_millis(u64::from(since_epoch.subsec_millis()));
        let file = File::create(&path).map_err(|source| HlogError::Io {
            path: path.clone(),
            action: "create",
            source,
        })?;
        let mut writer = Self {
            path,
            file,
            whole: 0,
            serializer: V2DeflateSerializer::new(),
            scratch: Vec::new(),
            base: UNIX_EPOCH + base_since_epoch,
        };
        let header = header(base_since_epoch, &mut writer.serializer)
            .map_err(|source| writer.io_error("write", source))?;
        writer.write_line(&header)?;
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log's `StartTime` and `BaseTime`: `start_time` truncated to the millisecond.
    pub fn base_time(&self) -> SystemTime {
        self.base
    }

    /// Appends one interval: `hist` (values in ns) measured from `start` for `duration`,
    /// under `tag` (see the module docs for the tag scheme). The line is written with one
    /// write and flushed.
    ///
    /// # Errors
    /// [`HlogError::BadTag`] for an empty tag or one with `,`, space, `\r` or `\n`;
    /// [`HlogError::IntervalBeforeStart`] when `start` is before [`base_time`](Self::base_time);
    /// [`HlogError::Serialize`] or [`HlogError::Io`] when encoding or writing fails.
    pub fn write_interval(
        &mut self,
        tag: &str,
        start: SystemTime,
        duration: Duration,
        hist: &Histogram<u64>,
    ) -> Result<(), HlogError> {
        let offset =
            start
                .duration_since(self.base)
                .map_err(|e| HlogError::IntervalBeforeStart {
                    path: self.path.clone(),
                    secs_before_base: e.duration().as_secs_f64(),
                })?;
        self.write_interval_at(tag, offset, duration, hist)
    }

    /// As [`write_interval`](Self::write_interval), with the start given as an offset from
    /// [`base_time`](Self::base_time).
    ///
    /// # Errors
    /// As [`write_interval`](Self::write_interval), except `IntervalBeforeStart`.
    pub fn write_interval_at(
        &mut self,
        tag: &str,
        offset: Duration,
        duration: Duration,
        hist: &Histogram<u64>,
    ) -> Result<(), HlogError> {
        let valid_tag = Tag::new(tag).filter(|t| !t.is_empty());
        let Some(valid_tag) = valid_tag else {
            return Err(HlogError::BadTag {
                path: self.path.clone(),
                tag: tag.to_owned(),
            });
        };
        self.scratch.clear();
        // The crate's writer borrows its output and serializer for its whole life, so one
        // is built per interval over a scratch buffer. Built with the same divisor as the
        // header, it repeats the `#[MaxValueDivisor]` comment first: only the last line,
        // the interval, is kept.
        let result = IntervalLogWriterBuilder::new()
            .with_max_value_divisor(MAX_VALUE_UNIT_RATIO)
            .begin_log_with(&mut self.scratch, &mut self.serializer)
            .map_err(IntervalLogWriterError::IoError)
            .and_then(|mut w| w.write_histogram(hist, offset, duration, Some(valid_tag)));
        if let Err(e) = result {
            return Err(HlogError::Serialize {
                path: self.path.clone(),
                tag: tag.to_owned(),
                message: e.to_string(),
            });
        }
        let body = self.scratch.strip_suffix(b"\n").unwrap_or(&self.scratch);
        let line_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let scratch = std::mem::take(&mut self.scratch);
        let written = self.write_line(&scratch[line_start..]);
        self.scratch = scratch;
        written
    }

    /// Syncs the file to disk and closes it (every line is already written and flushed).
    ///
    /// # Errors
    /// [`HlogError::Io`] when the sync fails.
    pub fn finish(self) -> Result<(), HlogError> {
        self.file
            .sync_all()
            .map_err(|source| self.io_error("sync", source))
    }

    /// Appends whole lines; on failure, cuts the file back to the lines before (best
    /// effort: if even that fails, the reader reports the torn line).
    fn write_line(&mut self, bytes: &[u8]) -> Result<(), HlogError> {
        let result = self.file.write_all(bytes).and_then(|()| self.file.flush());
        match result {
            Ok(()) => {
                self.whole += bytes.len() as u64;
                Ok(())
            }
            Err(source) => {
                let _ = self
                    .file
                    .set_len(self.whole)
                    .and_then(|()| self.file.seek(io::SeekFrom::Start(self.whole)));
                Err(self.io_error("write", source))
            }
        }
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> HlogError {
        HlogError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }
}

/// Before a new log is created at `path` (the control plane does this at start): a
/// restart must not destroy the last run's evidence, so an `.hlog` already at `path`
/// that holds at least one interval is renamed to `path` + `.1` (replacing an older
/// one) before a new log is created there. A log with only its header (a run that
/// ended before its first interval) is not kept, so a restart loop cannot push the last
/// real log out of `.1`; what is not a regular file is left for `create` to refuse.
///
/// # Errors
/// [`HlogError::Io`] when the rename fails.
pub fn keep_previous(path: &Path) -> Result<(), HlogError> {
    let is_file = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    if !is_file || !has_interval(path) {
        return Ok(());
    }
    let mut previous = path.as_os_str().to_owned();
    previous.push(".1");
    std::fs::rename(path, &previous).map_err(|source| HlogError::Io {
        path: path.to_path_buf(),
        action: "keep the previous log as <path>.1",
        source,
    })
}

/// Whether the log at `path` has an interval line: one that is neither a comment nor
/// the legend. Our writer puts the first right after a header of a few hundred bytes,
/// so the first 64 KB tell.
fn has_interval(path: &Path) -> bool {
    let mut head = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(64 << 10).read_to_end(&mut head));
    read.is_ok()
        && head.split(|&b| b == b'\n').any(|line| {
            let line = line.trim_ascii();
            !line.is_empty() && !line.starts_with(b"#") && !line.starts_with(b"\"")
        })
}

/// The header lines, through the crate's builder (comments, BaseTime, divisor) plus the
/// legend, which the crate does not write. StartTime is written as a comment because the
/// crate's own StartTime line lacks the human date the Java writer adds.
fn header(base: Duration, serializer: &mut V2DeflateSerializer) -> io::Result<Vec<u8>> {
    let millis = base.as_millis();
    let (secs, frac) = (millis / 1000, millis % 1000);
    let mut header = Vec::new();
    IntervalLogWriterBuilder::new()
        .add_comment(&format!(
            "[Logged with qos-control {}]",
            env!("CARGO_PKG_VERSION")
        ))
        .add_comment(&format!(
            "[Histogram log format version {LOG_FORMAT_VERSION}]"
        ))
        .add_comment(&format!(
            "[StartTime: {secs}.{frac:03} (seconds since epoch), {}]",
            java_date_utc(base.as_secs())
        ))
        .with_base_time(UNIX_EPOCH + base)
        .with_max_value_divisor(MAX_VALUE_UNIT_RATIO)
        .begin_log_with(&mut header, serializer)?;
    header.extend_from_slice(LEGEND.as_bytes());
    header.push(b'\n');
    Ok(header)
}

/// `Thu Jan 01 00:00:00 UTC 1970`: the layout of Java's `Date.toString()`, in UTC.
fn java_date_utc(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{} {} {:02} {:02}:{:02}:{:02} UTC {}",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

/// (year, month 1..=12, day 1..=31) of `days` since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// One interval histogram read back from a log.
#[derive(Clone, Debug)]
pub struct Interval {
    /// Line of the file it was read from, from 1.
    pub line: usize,
    /// Its tag, if the line has one.
    pub tag: Option<String>,
    /// Start, in seconds since the Unix epoch: `BaseTime` plus the logged timestamp; without
    /// `BaseTime`, the Java reader's rule: the logged timestamp is an offset from
    /// `StartTime` when it is more than a year smaller than it, else absolute.
    pub start_secs: f64,
    /// The `StartTimestamp` column as logged (seconds, usually since `BaseTime`).
    pub offset_secs: f64,
    /// The `Interval_Length` column, in seconds.
    pub duration_secs: f64,
    /// The `Interval_Max` column as logged (scaled by the writer's divisor: ms for ours).
    pub max: f64,
    /// The decoded histogram (values as recorded: ns for ours).
    pub hist: Histogram<u64>,
}

/// Reads every interval of the log at `path`, in file order. Comments, the legend and
/// blank lines are skipped; `#[StartTime: ..]` and `#[BaseTime: ..]` lines set the time
/// base of the intervals after them.
///
/// Every interval is kept in memory (about 220 KB each for the histograms `qosd`
/// writes): to summarize a long log, use [`summarize_hlog`], which sums as it reads.
///
/// # Errors
/// [`HlogError::Io`] when the file cannot be read or is not a regular file;
/// [`HlogError::Parse`], naming the line, for a line that is not a comment, legend, time
/// header or interval, or whose payload is not valid base64, not a V2 (compressed)
/// histogram, truncated, inflates beyond [`MAX_INFLATED_BYTES`], declares a histogram of
/// more than [`MAX_COUNTERS`] counters or holds more than [`MAX_TOTAL_COUNT`] values, and
/// for a line longer than [`MAX_LINE_BYTES`]. An incomplete last line is an error here
/// ([`summarize_hlog`] skips it).
pub fn read_hlog(path: impl AsRef<Path>) -> Result<Vec<Interval>, HlogError> {
    let path = path.as_ref();
    let file = open_log(path)?;
    let mut intervals = Vec::new();
    scan(path, io::BufReader::new(file), false, |interval| {
        intervals.push(interval);
        Ok(())
    })?;
    Ok(intervals)
}

/// As [`read_hlog`], from bytes already in memory; `path` only names the source in errors.
///
/// # Errors
/// As [`read_hlog`], except `Io`.
pub fn parse_hlog(path: &Path, bytes: &[u8]) -> Result<Vec<Interval>, HlogError> {
    let mut intervals = Vec::new();
    scan(path, bytes, false, |interval| {
        intervals.push(interval);
        Ok(())
    })?;
    Ok(intervals)
}

/// What [`summarize_hlog`] read.
#[derive(Debug)]
pub struct HlogSummary {
    /// One sum per selected tag, in tag order (untagged first).
    pub sums: Vec<TagSum>,
    /// Intervals read, selected or not.
    pub intervals: usize,
    /// The line number of an incomplete last line that was skipped: a write cut short
    /// (the writer died mid-line). Everything before it was read.
    pub torn_tail: Option<usize>,
}

/// Reads the log at `path` and sums the intervals of each tag that `keep` selects as it
/// goes, holding one histogram per selected tag rather than every interval, so a log of
/// any length is summarized in bounded memory. An incomplete last line (no newline, and
/// it does not parse) is skipped and reported in [`HlogSummary::torn_tail`].
///
/// # Errors
/// As [`read_hlog`], and [`HlogError::Parse`] naming the line of an interval that cannot
/// be added to its tag's sum: the tag would hold more than [`MAX_TOTAL_COUNT`] values, or
/// the sums together would need more than [`MAX_SUM_COUNTERS`] counters.
pub fn summarize_hlog(
    path: impl AsRef<Path>,
    keep: impl Fn(Option<&str>) -> bool,
) -> Result<HlogSummary, HlogError> {
    let path = path.as_ref();
    let file = open_log(path)?;
    let mut summer = Summer::default();
    let mut intervals = 0;
    let torn_tail = scan(path, io::BufReader::new(file), true, |interval| {
        intervals += 1;
        if !keep(interval.tag.as_deref()) {
            return Ok(());
        }
        summer.add(&interval).map_err(|message| HlogError::Parse {
            path: path.to_path_buf(),
            line: interval.line,
            message,
        })
    })?;
    Ok(HlogSummary {
        sums: summer.finish(),
        intervals,
        torn_tail,
    })
}

/// Opens a log for reading; only a regular file is accepted (a device such as
/// `/dev/zero` never ends, a pipe would block).
fn open_log(path: &Path) -> Result<File, HlogError> {
    let io_error = |source| HlogError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if !meta.is_file() {
        return Err(io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a directory, device or pipe), expected an .hlog file",
        )));
    }
    File::open(path).map_err(io_error)
}

/// Reads `reader` line by line and hands each interval to `each`. With `tolerate_torn`,
/// a last line without its newline that does not parse is skipped and its number
/// returned; otherwise it is an error like any other.
fn scan<R: io::BufRead>(
    path: &Path,
    mut reader: R,
    tolerate_torn: bool,
    mut each: impl FnMut(Interval) -> Result<(), HlogError>,
) -> Result<Option<usize>, HlogError> {
    let mut log = LogReader::default();
    let mut raw = Vec::new();
    let mut line_buf = Vec::new();
    let mut line = 0;
    loop {
        raw.clear();
        let read = io::BufRead::read_until(
            &mut Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1),
            b'\n',
            &mut raw,
        )
        .map_err(|source| HlogError::Io {
            path: path.to_path_buf(),
            action: "read",
            source,
        })?;
        if read == 0 {
            return Ok(None);
        }
        line += 1;
        let parse_err = |message: String| HlogError::Parse {
            path: path.to_path_buf(),
            line,
            message,
        };
        let terminated = raw.last() == Some(&b'\n');
        if !terminated && raw.len() > MAX_LINE_BYTES {
            return Err(parse_err(format!(
                "line is longer than {MAX_LINE_BYTES} bytes, expected an interval line \
                 (is this an .hlog file?)"
            )));
        }
        let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        line_buf.clear();
        line_buf.extend_from_slice(text);
        line_buf.push(b'\n');
        match log.line(&line_buf, line) {
            Ok(Some(interval)) => each(interval)?,
            Ok(None) => {}
            Err(_) if tolerate_torn && !terminated => return Ok(Some(line)),
            Err(message) => return Err(parse_err(message)),
        }
    }
}

/// Time headers seen so far, and the decoder.
#[derive(Default)]
struct LogReader {
    start_time: Option<f64>,
    base_time: Option<f64>,
    deserializer: Deserializer,
}

impl LogReader {
    /// Parses one line (ending in `\n`); `Some` for an interval.
    fn line(&mut self, text: &[u8], line: usize) -> Result<Option<Interval>, String> {
        let mut entries = IntervalLogIterator::new(text);
        let entry = match entries.next() {
            None => return Ok(None),
            Some(Ok(entry)) => entry,
            Some(Err(_)) => {
                return Err(format!(
                    "not a comment, legend, StartTime/BaseTime header or interval: {:?}, \
                     expected `[Tag=<tag>,]<start secs>,<length secs>,<max>,<base64 histogram>`",
                    preview(text)
                ));
            }
        };
        match entry {
            LogEntry::StartTime(d) => self.start_time = Some(d.as_secs_f64()),
            LogEntry::BaseTime(d) => self.base_time = Some(d.as_secs_f64()),
            LogEntry::Interval(h) => {
                let hist = self.decode(h.encoded_histogram())?;
                let offset_secs = h.start_timestamp().as_secs_f64();
                return Ok(Some(Interval {
                    line,
                    tag: h.tag().map(|t| t.as_str().to_owned()),
                    start_secs: self.absolute(offset_secs),
                    offset_secs,
                    duration_secs: h.duration().as_secs_f64(),
                    max: h.max(),
                    hist,
                }));
            }
        }
        Ok(None)
    }

    /// The Java `HistogramLogReader`'s rule for turning a logged timestamp into epoch
    /// seconds.
    fn absolute(&self, logged: f64) -> f64 {
        const YEAR_SECS: f64 = 365.0 * 24.0 * 3600.0;
        match (self.base_time, self.start_time) {
            (Some(base), _) => base + logged,
            (None, Some(start)) if logged < start - YEAR_SECS => start + logged,
            _ => logged,
        }
    }

    /// base64 -> (inflate, bounded) -> V2 (shape checked) -> histogram (count checked).
    fn decode(&mut self, encoded: &str) -> Result<Histogram<u64>, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("histogram payload is not valid base64: {e}"))?;
        // Cookie and length: 8 bytes, before anything reads past the cookie.
        let cookie = read_u32(&raw, 0)
            .filter(|_| raw.len() >= 8)
            .ok_or_else(|| {
                format!(
                    "histogram payload is {} bytes, expected at least 8",
                    raw.len()
                )
            })?;
        let v2 = match cookie {
            V2_COMPRESSED_COOKIE => inflate(&raw)?,
            V2_COOKIE => raw,
            other => {
                return Err(format!(
                    "histogram payload cookie is {other:#010x}, expected {V2_COMPRESSED_COOKIE:#010x} \
                     (V2 compressed) or {V2_COOKIE:#010x} (V2)"
                ));
            }
        };
        check_v2(&v2)?;
        let hist = self
            .deserializer
            .deserialize(&mut v2.as_slice())
            .map_err(|e| format!("histogram payload does not decode: {e}"))?;
        // The crate saturates the total: anything past MAX_TOTAL_COUNT is an overflow
        // (each count is at most i64::MAX in the encoding; percentiles add them in u64).
        if hist.len() > MAX_TOTAL_COUNT {
            return Err(format!(
                "histogram holds more than {MAX_TOTAL_COUNT} values (its counts overflow)"
            ));
        }
        Ok(hist)
    }
}

/// The inflated V2 encoding inside a compressed payload, at most [`MAX_INFLATED_BYTES`].
fn inflate(raw: &[u8]) -> Result<Vec<u8>, String> {
    let claimed = read_u32(raw, 4).map_or(0, |n| n as usize);
    let present = raw.len() - 8;
    if claimed > present {
        return Err(format!(
            "compressed histogram claims {claimed} bytes but the line holds {present}: truncated"
        ));
    }
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(&raw[8..8 + claimed])
        .take(MAX_INFLATED_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("compressed histogram does not inflate: {e}"))?;
    if out.len() > MAX_INFLATED_BYTES {
        return Err(format!(
            "compressed histogram inflates beyond {MAX_INFLATED_BYTES} bytes"
        ));
    }
    if read_u32(&out, 0) != Some(V2_COOKIE) {
        return Err(format!(
            "inflated histogram does not start with the V2 cookie {V2_COOKIE:#010x}"
        ));
    }
    Ok(out)
}

/// The V2 header's payload length must fit in what is there, and the histogram it
/// declares (the decoder allocates one counter per bucket of the range before reading a
/// count) must have at most [`MAX_COUNTERS`] counters.
fn check_v2(v2: &[u8]) -> Result<(), String> {
    let claimed = read_u32(v2, 4).map(|n| n as usize);
    let present = v2.len().saturating_sub(V2_HEADER_BYTES);
    let body = match claimed {
        Some(n) if v2.len() >= V2_HEADER_BYTES && n <= present => {
            &v2[V2_HEADER_BYTES..V2_HEADER_BYTES + n]
        }
        _ => {
            return Err(format!(
                "V2 histogram claims {} counter bytes but holds {present}: truncated",
                claimed.unwrap_or(0)
            ));
        }
    };
    if let Some(at) = zero_run_of_i64_min(body) {
        return Err(format!(
            "V2 histogram holds a zero run of 2^63 at byte {at} of its counts, which no \
             histogram has (the decoder would overflow negating it)"
        ));
    }
    let (digits, low, high) = (
        read_u32(v2, 12).unwrap_or(0),
        read_u64(v2, 16).unwrap_or(0),
        read_u64(v2, 24).unwrap_or(0),
    );
    match counters_of(low, high, digits) {
        None => Err(format!(
            "V2 histogram range {low}..={high} at {digits} significant digits is not valid, \
             expected lowest >= 1, highest >= 2 * lowest and at most 5 digits"
        )),
        Some(n) if n > MAX_COUNTERS => Err(format!(
            "V2 histogram range {low}..={high} at {digits} significant digits needs {n} \
             counters, more than the {MAX_COUNTERS} accepted"
        )),
        Some(_) => Ok(()),
    }
}

/// How many counters `Histogram::new_with_bounds(low, high, digits)` allocates, or `None`
/// where it refuses the bounds. HdrHistogram's layout: unit resolution up to
/// `2 * 10^digits`, rounded up to a power of two of sub-buckets, scaled by the largest
/// power of two not above `low`; each further bucket doubles the range and adds half as
/// many counters, until `high` is covered.
fn counters_of(low: u64, high: u64, digits: u32) -> Option<u64> {
    if low == 0 || low > u64::MAX / 2 || high < 2 * low || digits > 5 {
        return None;
    }
    let largest = 2 * 10u64.pow(digits);
    // ceil(log2(largest)): `largest` is never a power of two above 2.
    let sub_magnitude = (largest - 1).ilog2() + 1;
    // floor(log2(low)) as the crate computes it, through f64 (which rounds a `low` just
    // under a large power of two up to it).
    let unit_magnitude = (low as f64).log2().floor() as u32;
    if unit_magnitude + sub_magnitude > 63 {
        return None;
    }
    let mut untrackable = 1u64 << (unit_magnitude + sub_magnitude);
    let mut buckets = 1u64;
    while untrackable <= high {
        if untrackable > u64::MAX / 2 {
            buckets += 1;
            break;
        }
        untrackable <<= 1;
        buckets += 1;
    }
    Some((buckets + 1) * (1u64 << (sub_magnitude - 1)))
}

/// The offset of a number in `counts` (the V2 body: zig-zag LEB128, at most 9 bytes,
/// the 9th holding 8 bits) that decodes to `i64::MIN`, which the crate's decoder negates
/// as a zero run (an overflow: a panic in builds with overflow checks).
fn zero_run_of_i64_min(counts: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < counts.len() {
        let start = i;
        let mut value = 0u64;
        for shift in (0..=56).step_by(7) {
            let &b = counts.get(i)?;
            i += 1;
            if shift == 56 {
                value |= u64::from(b) << 56;
                break;
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        // zig-zag: u64::MAX is i64::MIN.
        if value == u64::MAX {
            return Some(start);
        }
    }
    None
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let word: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(word))
}

/// The start of a line for an error message (lines can be megabytes of base64).
fn preview(text: &[u8]) -> String {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let shown = &text[..text.len().min(60)];
    let mut s = String::from_utf8_lossy(shown).into_owned();
    if text.len() > shown.len() {
        s.push_str("...");
    }
    s
}

/// Significant digits of a tag's sum (0.1% resolution), whatever its intervals have.
const SUM_DIGITS: u8 = 3;

/// The running sums of each tag. A tag's sum has one shape whatever order its intervals
/// come in: lowest value 1, [`SUM_DIGITS`] digits, growing to the widest range added (an
/// interval of another shape is re-bucketed into it).
#[derive(Default)]
struct Summer {
    sums: BTreeMap<Option<String>, (usize, Histogram<u64>)>,
    /// Counters held by all the sums.
    counters: u64,
}

impl Summer {
    fn add(&mut self, interval: &Interval) -> Result<(), String> {
        if !self.sums.contains_key(&interval.tag) {
            let mut empty = Histogram::new_with_bounds(1, interval.hist.high().max(2), SUM_DIGITS)
                .map_err(|e| format!("cannot make the tag's sum: {e}"))?;
            empty.auto(true);
            self.counters += empty.distinct_values() as u64;
            self.sums.insert(interval.tag.clone(), (0, empty));
        }
        let Some((n, sum)) = self.sums.get_mut(&interval.tag) else {
            return Err(String::from("the tag's sum is missing"));
        };
        if interval.hist.len() > MAX_TOTAL_COUNT.saturating_sub(sum.len()) {
            return Err(format!(
                "the tag's intervals add up to more than {MAX_TOTAL_COUNT} values"
            ));
        }
        let before = sum.distinct_values() as u64;
        sum.add(&interval.hist)
            .map_err(|e| format!("cannot add the interval to the tag's earlier ones: {e}"))?;
        *n += 1;
        self.counters += (sum.distinct_values() as u64).saturating_sub(before);
        if self.counters > MAX_SUM_COUNTERS {
            return Err(format!(
                "the tags' sums need {} counters, more than the {MAX_SUM_COUNTERS} accepted \
                 (too many tags, or too wide a range)",
                self.counters
            ));
        }
        Ok(())
    }

    fn finish(self) -> Vec<TagSum> {
        self.sums
            .into_iter()
            .map(|(tag, (intervals, hist))| TagSum {
                tag,
                intervals,
                hist,
            })
            .collect()
    }
}

/// Percentiles of one tag, all its intervals summed. Values are in the histogram's unit
/// (ns for our logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The tag (`None` for untagged intervals).
    pub tag: Option<String>,
    /// Intervals summed.
    pub intervals: usize,
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value (highest equivalent of the largest recorded bucket).
    pub max: u64,
}

/// One tag's intervals added together.
#[derive(Debug)]
pub struct TagSum {
    /// The tag (`None`: untagged intervals).
    pub tag: Option<String>,
    /// Intervals summed.
    pub intervals: usize,
    /// Their histograms added together.
    pub hist: Histogram<u64>,
}

impl TagSum {
    /// The tag's percentile row. An empty histogram reports zeros.
    pub fn row(self) -> Row {
        let h = &self.hist;
        Row {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            tag: self.tag,
            intervals: self.intervals,
        }
    }
}

/// Sums the intervals of each tag that `keep` selects, one [`TagSum`] per tag in tag
/// order (untagged first). Each sum has the same shape whatever order the intervals come
/// in (lowest value 1, 3 significant digits, growing to the widest range added).
///
/// # Errors
/// [`HlogError::Merge`] when an interval cannot be added to its tag's sum: the tag would
/// hold more than `i64::MAX` values, or the sums together would need more than
/// [`MAX_SUM_COUNTERS`] counters.
pub fn tag_sums(
    intervals: &[Interval],
    keep: impl Fn(Option<&str>) -> bool,
) -> Result<Vec<TagSum>, HlogError> {
    let mut summer = Summer::default();
    for interval in intervals {
        if keep(interval.tag.as_deref()) {
            summer.add(interval).map_err(|message| HlogError::Merge {
                line: interval.line,
                tag: interval.tag.clone().unwrap_or_default(),
                message,
            })?;
        }
    }
    Ok(summer.finish())
}

/// Sums the intervals of each tag and reports their percentiles, one [`Row`] per tag in
/// tag order (untagged first). With `filter`, only tags equal to it or starting with
/// `filter` followed by `.` are kept: `p7` selects `p7.sojourn`, `w0` selects `w0.cost`.
/// An empty histogram reports zeros.
///
/// # Errors
/// [`HlogError::Merge`] when an interval cannot be added to its tag's sum (as
/// [`tag_sums`]).
pub fn percentile_table(
    intervals: &[Interval],
    filter: Option<&str>,
) -> Result<Vec<Row>, HlogError> {
    Ok(tag_sums(intervals, |tag| tag_matches(tag, filter))?
        .into_iter()
        .map(TagSum::row)
        .collect())
}

/// Whether `tag` is selected by `filter`: no filter, the tag itself, or the tag's
/// prefix before a `.` (see [`percentile_table`]).
pub fn tag_matches(tag: Option<&str>, filter: Option<&str>) -> bool {
    match (filter, tag) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(f), Some(t)) => t == f || t.strip_prefix(f).is_some_and(|rest| rest.starts_with('.')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_dates() {
        assert_eq!(java_date_utc(0), "Thu Jan 01 00:00:00 UTC 1970");
        // date -u -d @1700000000: Tue Nov 14 22:13:20 UTC 2023
        assert_eq!(java_date_utc(1_700_000_000), "Tue Nov 14 22:13:20 UTC 2023");
        // A leap day: date -u -d @951782400 -> Tue Feb 29 00:00:00 UTC 2000
        assert_eq!(java_date_utc(951_782_400), "Tue Feb 29 00:00:00 UTC 2000");
    }

    /// `counters_of` is what the crate allocates, over lows from 1 to 2^62 (powers of
    /// two, their neighbours, and values just under a large power of two that f64
    /// rounds up), every digit count, and highs up to `u64::MAX`.
    #[test]
    fn counters_of_matches_the_crate() {
        let mut lows = vec![1u64, 2, 3, 5, 1000, 1_000_000, (1 << 53) + 1, (1 << 60) - 1];
        lows.extend((0..62).flat_map(|k| [1u64 << k, (1u64 << k) + 1]));
        let mut checked = 0;
        for &low in &lows {
            for digits in 0..=5u8 {
                for high in [2 * low, 2 * low + 1, low.saturating_mul(1000), u64::MAX] {
                    let ours = counters_of(low, high, u32::from(digits));
                    let crate_len = Histogram::<u8>::new_with_bounds(low, high, digits)
                        .ok()
                        .map(|h| h.distinct_values() as u64);
                    if high < 2 * low {
                        continue;
                    }
                    assert_eq!(ours, crate_len, "low {low} high {high} digits {digits}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 2000, "{checked}");
        assert_eq!(counters_of(0, 10, 3), None);
        assert_eq!(counters_of(1, 10, 6), None);
    }

    #[test]
    fn filters() {
        assert!(tag_matches(Some("p7.sojourn"), Some("p7")));
        assert!(tag_matches(Some("p7.sojourn"), Some("p7.sojourn")));
        assert!(!tag_matches(Some("p70.sojourn"), Some("p7")));
        assert!(!tag_matches(None, Some("p7")));
        assert!(tag_matches(None, None));
    }
}
