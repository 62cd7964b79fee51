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
//! | `cost` ([`COST_TAG`]) | scheduling cost per packet, all workers, ns |
//! | `w{worker}.cost` ([`cost_tag`]) | scheduling cost per packet of one worker, ns |
//!
//! # Reading
//!
//! [`read_hlog`] parses any interval log (ours or another writer's) line by line with the
//! crate's [`IntervalLogIterator`], so each error names the file and the line; each
//! payload is inflated with a size limit before the crate's [`Deserializer`] decodes it,
//! so a hostile length field cannot make it allocate gigabytes. [`percentile_table`] sums
//! the intervals of each tag and reports p50/p90/p99/p99.9/max/count (`qos-ctl hdr print`).
//!
//! [`V2DeflateSerializer`]: hdrhistogram::serialization::V2DeflateSerializer
//! [`IntervalLogWriterBuilder`]: hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder
//! [`IntervalLogIterator`]: hdrhistogram::serialization::interval_log::IntervalLogIterator
//! [`Deserializer`]: hdrhistogram::serialization::Deserializer

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
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

/// Tag of the scheduling-cost histogram of all workers.
pub const COST_TAG: &str = "cost";

/// First 4 bytes (big-endian) of a V2 compressed payload.
pub const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9314;

/// First 4 bytes (big-endian) of a V2 uncompressed payload (and of an inflated one).
pub const V2_COOKIE: u32 = 0x1c84_9313;

/// Largest inflated payload accepted, in bytes. The largest histogram the `hdrhistogram`
/// crate can build (1..=u64::MAX, 5 significant digits) has about 6.3 million counters,
/// at most 9 bytes each once encoded: 57 MB.
pub const MAX_INFLATED_BYTES: usize = 64 << 20;

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
/// flushed, so a crash leaves at most the last line incomplete.
pub struct HlogWriter {
    path: PathBuf,
    file: File,
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
        let line = &self.scratch[line_start..];
        let written = self.file.write_all(line).and_then(|()| self.file.flush());
        written.map_err(|source| self.io_error("write", source))
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

    fn write_line(&mut self, bytes: &[u8]) -> Result<(), HlogError> {
        let result = self.file.write_all(bytes).and_then(|()| self.file.flush());
        result.map_err(|source| self.io_error("write", source))
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> HlogError {
        HlogError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }
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
/// # Errors
/// [`HlogError::Io`] when the file cannot be read; [`HlogError::Parse`], naming the line,
/// for a line that is not a comment, legend, time header or interval, or whose payload is
/// not valid base64, not a V2 (compressed) histogram, truncated, or inflates beyond
/// [`MAX_INFLATED_BYTES`].
pub fn read_hlog(path: impl AsRef<Path>) -> Result<Vec<Interval>, HlogError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| HlogError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })?;
    parse_hlog(path, &bytes)
}

/// As [`read_hlog`], from bytes already in memory; `path` only names the source in errors.
///
/// # Errors
/// As [`read_hlog`], except `Io`.
pub fn parse_hlog(path: &Path, bytes: &[u8]) -> Result<Vec<Interval>, HlogError> {
    let mut reader = LogReader::default();
    let mut intervals = Vec::new();
    let mut line_buf = Vec::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let text = raw.strip_suffix(b"\r").unwrap_or(raw);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        line_buf.clear();
        line_buf.extend_from_slice(text);
        line_buf.push(b'\n');
        let parse_err = |message: String| HlogError::Parse {
            path: path.to_path_buf(),
            line,
            message,
        };
        if let Some(interval) = reader.line(&line_buf, line).map_err(parse_err)? {
            intervals.push(interval);
        }
    }
    Ok(intervals)
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

    /// base64 -> (inflate, bounded) -> V2 -> histogram.
    fn decode(&mut self, encoded: &str) -> Result<Histogram<u64>, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("histogram payload is not valid base64: {e}"))?;
        let cookie = read_u32(&raw, 0).ok_or_else(|| {
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
        self.deserializer
            .deserialize(&mut v2.as_slice())
            .map_err(|e| format!("histogram payload does not decode: {e}"))
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

/// The V2 header's payload length must fit in what is there (the decoder allocates it).
fn check_v2(v2: &[u8]) -> Result<(), String> {
    let claimed = read_u32(v2, 4).map(|n| n as usize);
    let present = v2.len().saturating_sub(V2_HEADER_BYTES);
    match claimed {
        Some(n) if v2.len() >= V2_HEADER_BYTES && n <= present => Ok(()),
        _ => Err(format!(
            "V2 histogram claims {} counter bytes but holds {present}: truncated",
            claimed.unwrap_or(0)
        )),
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
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
/// order (untagged first).
///
/// # Errors
/// [`HlogError::Merge`] when an interval cannot be added to its tag's sum (a histogram
/// larger than the crate can represent).
pub fn tag_sums(
    intervals: &[Interval],
    keep: impl Fn(Option<&str>) -> bool,
) -> Result<Vec<TagSum>, HlogError> {
    let mut sums: BTreeMap<Option<&str>, (usize, Histogram<u64>)> = BTreeMap::new();
    for interval in intervals {
        let tag = interval.tag.as_deref();
        if !keep(tag) {
            continue;
        }
        let (n, sum) = sums.entry(tag).or_insert_with(|| {
            let mut empty = Histogram::new_from(&interval.hist);
            empty.auto(true);
            (0, empty)
        });
        sum.add(&interval.hist).map_err(|e| HlogError::Merge {
            line: interval.line,
            tag: tag.unwrap_or_default().to_owned(),
            message: e.to_string(),
        })?;
        *n += 1;
    }
    Ok(sums
        .into_iter()
        .map(|(tag, (intervals, hist))| TagSum {
            tag: tag.map(str::to_owned),
            intervals,
            hist,
        })
        .collect())
}

/// Sums the intervals of each tag and reports their percentiles, one [`Row`] per tag in
/// tag order (untagged first). With `filter`, only tags equal to it or starting with
/// `filter` followed by `.` are kept: `p7` selects `p7.sojourn`, `w0` selects `w0.cost`.
/// An empty histogram reports zeros.
///
/// # Errors
/// [`HlogError::Merge`] when an interval cannot be added to its tag's sum (a histogram
/// larger than the crate can represent).
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

    #[test]
    fn filters() {
        assert!(tag_matches(Some("p7.sojourn"), Some("p7")));
        assert!(tag_matches(Some("p7.sojourn"), Some("p7.sojourn")));
        assert!(!tag_matches(Some("p70.sojourn"), Some("p7")));
        assert!(!tag_matches(None, Some("p7")));
        assert!(tag_matches(None, None));
    }
}
