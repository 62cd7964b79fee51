//! The append-only, hash-chained audit log (C5) and its verifier.
//!
//! # File format
//!
//! JSON lines. Each line is one compact object, written as
//!
//! ```json
//! {"seq":0,"ts_unix_ms":1759314600000,"prev":"000…000","event":"policy.applied","version":3,...}
//! ```
//!
//! * `seq`: 0 for the first line, then consecutive.
//! * `ts_unix_ms`: wall-clock time of the append, milliseconds since the Unix epoch.
//! * `prev`: lowercase hex SHA-256 of the previous line's bytes (without its newline);
//!   64 zeros ([`GENESIS_HASH`]) on the first line.
//! * then the [`ControlEvent`], flattened: `event` with its dotted name and its fields,
//!   exactly as serde writes them.
//!
//! A line's hash is SHA-256 over its bytes as written, so any change to any byte of a
//! line breaks the link its successor holds. Lines are at most [`MAX_LINE_BYTES`].
//!
//! # What the chain proves, and what it cannot
//!
//! [`verify`] names the first problem by 1-based line number ([`VerifyReport`]): a
//! changed line, a removed line, moved lines, a torn last line. The last line has no
//! successor holding its hash, so a change to the body of the last line (or the removal
//! of the last lines) is invisible to the file alone. An operator closes that gap by
//! recording the [head](AuditLog::head) somewhere else (the status API shows it) and
//! verifying against it with [`verify_with_anchor`], or opening with
//! [`AuditOptions::anchor`].
//!
//! The hash is unkeyed: it catches damage and edits that leave the chain as it was,
//! not a writer who recomputes it. Anyone who can write the file can rewrite it from
//! any line on, recomputing every later `prev`, and it verifies; only the records up to
//! an anchor kept out of that writer's reach are protected.
//!
//! # Crash safety
//!
//! Each append is one `write_all` of the whole line and its newline on an unbuffered
//! file opened for appending, so a crash leaves at most one torn line: bytes after the
//! last newline, at most one line long and beginning as the next record does.
//! [`AuditLog::open`] cuts such a tail off and appends an `audit.torn_tail` record with
//! the torn bytes' offset, length and SHA-256, so the evidence stays in the chain while
//! the chain itself stays intact. A tail no crash of the writer can have left is refused
//! ([`AuditError::ForeignTail`]) and left in place: it is someone else's. Anything else wrong
//! with the file (a changed, missing or moved line) makes `open` refuse with
//! [`AuditError::Corrupt`], naming the line: extending a broken chain would bless it.
//!
//! By default lines are handed to the kernel, not forced to disk: a power loss can lose
//! the last appends (never corrupt the ones before; a tail of zero bytes it may leave,
//! at most one line long, is cut like a torn line). [`AuditOptions::fsync`] calls
//! `fsync` (`sync_data`) after every line, at the cost of a disk flush per record.
//!
//! # One writer
//!
//! `open` takes an exclusive `flock` on the file for the life of the [`AuditLog`]; a
//! second writer (this process or another) gets [`AuditError::Locked`] instead of
//! interleaving lines and forking the chain. Verifying needs no lock.

mod verify;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::logs::{ControlEvent, hex};
use verify::{Anchor, parse_hash};

/// The `prev` of the first line: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const GENESIS: [u8; 32] = [0; 32];

/// The longest line the writer produces and the verifier reads as a record, in bytes
/// without the newline (1 MiB). A longer line in a file is reported as tampered.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// How [`AuditLog::open`] treats the file.
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    /// `fsync` after every appended line (default off; see the [module docs](self)).
    pub fsync: bool,
    /// A head recorded earlier ([`AuditLog::head`]); when set, `open` refuses a file
    /// whose record `anchor.next_seq - 1` is missing or does not hash to
    /// `anchor.last_hash`.
    pub anchor: Option<AuditHead>,
}

/// Where the chain ends: what an operator records elsewhere to anchor it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// The seq the next record gets (= the number of records).
    pub next_seq: u64,
    /// Lowercase hex SHA-256 of the last line ([`GENESIS_HASH`] for an empty log).
    pub last_hash: String,
}

impl AuditHead {
    /// Checks the head as an anchor: 64 lowercase hex digits, [`GENESIS_HASH`] when
    /// `next_seq` is 0.
    ///
    /// # Errors
    ///
    /// [`AuditError::BadAnchor`], as [`AuditLog::open`] and [`verify_with_anchor`] give.
    pub fn check(&self) -> Result<(), AuditError> {
        to_anchor(self).map(|_| ())
    }
}

/// What [`AuditLog::append`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecordInfo {
    /// The record's seq.
    pub seq: u64,
    /// Lowercase hex SHA-256 of its line (without the newline): the next line's `prev`.
    pub hash: String,
}

/// One line of the audit log, for readers that want the records back.
///
/// The verifier does not need it (it reads only `seq` and `prev`, and accepts event
/// kinds it does not know).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 0-based position in the chain.
    pub seq: u64,
    /// Wall-clock time of the append, ms since the Unix epoch.
    pub ts_unix_ms: u64,
    /// Hex SHA-256 of the previous line.
    pub prev: String,
    /// The event, flattened into the line.
    #[serde(flatten)]
    pub event: ControlEvent,
}

/// The line as written: [`AuditRecord`] without owning its parts.
#[derive(Serialize)]
struct RecordRef<'a> {
    seq: u64,
    ts_unix_ms: u64,
    prev: &'a str,
    #[serde(flatten)]
    event: &'a ControlEvent,
}

/// The verdict of [`verify`]: the chain is intact, or the first problem, by 1-based
/// line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyReport {
    /// Every line parses and links to the one before, seqs run 0, 1, ... without a gap,
    /// and the file ends with a newline (an empty file is `Ok` with 0 lines).
    Ok {
        /// Number of records.
        lines: u64,
        /// Hash of the last line ([`GENESIS_HASH`] if there is none).
        head_hash: String,
    },
    /// Line `line` was changed: it does not parse as a record, its seq is not the
    /// previous one + 1 although it links to the previous line, its successor does not
    /// link to it, or it does not match the anchor.
    Tampered {
        /// The changed line.
        line: u64,
    },
    /// Line `line` does not link to the previous one and its seq jumps forward to a
    /// seq while `expected_seq` is nowhere in the file: records were removed before it.
    Missing {
        /// The first line after the gap.
        line: u64,
        /// The seq that should have been here.
        expected_seq: u64,
        /// The seq that is here.
        found_seq: u64,
    },
    /// Line `line` does not link to the previous one and holds the wrong seq while the
    /// expected seq appears further down (lines were swapped or moved), or its seq
    /// goes backward (a line was duplicated or reinserted).
    Reordered {
        /// The first line out of place.
        line: u64,
        /// The seq that should have been here.
        expected_seq: u64,
        /// The seq that is here.
        found_seq: u64,
    },
    /// The link into line `line` (the last line, or followed by a line that does not
    /// parse) is broken with the right seq: either line `line - 1` or line `line` was
    /// changed, and without an anchor on line `line` the file cannot tell which.
    BrokenLink {
        /// The line whose `prev` does not match.
        line: u64,
    },
    /// Line `line` is the bytes after the last newline: a write torn by a crash
    /// ([`AuditLog::open`] repairs it when it can be one: see
    /// [`AuditError::ForeignTail`]). Not evidence of tampering by itself.
    TornTail {
        /// The torn line (the number of complete lines + 1).
        line: u64,
    },
    /// The anchor names a record the file does not have: the file ends before line
    /// `line`, whose seq would be `expected_seq`, but records up to `anchored_seq`
    /// existed when the head was recorded.
    Truncated {
        /// The first missing line.
        line: u64,
        /// Its seq.
        expected_seq: u64,
        /// The anchored record's seq.
        anchored_seq: u64,
    },
}

impl VerifyReport {
    /// Whether the chain is intact.
    pub fn is_ok(&self) -> bool {
        matches!(self, VerifyReport::Ok { .. })
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyReport::Ok { lines, head_hash } => {
                write!(f, "ok: {lines} records, head hash {head_hash}")
            }
            VerifyReport::Tampered { line } => write!(f, "line {line}: tampered"),
            VerifyReport::Missing {
                line,
                expected_seq,
                found_seq,
            } => write!(
                f,
                "line {line}: records missing before it (expected seq {expected_seq}, found {found_seq})"
            ),
            VerifyReport::Reordered {
                line,
                expected_seq,
                found_seq,
            } => write!(
                f,
                "line {line}: out of order (expected seq {expected_seq}, found {found_seq})"
            ),
            VerifyReport::BrokenLink { line } => write!(
                f,
                "line {line}: prev does not match line {}; one of the two was changed (an anchor tells which)",
                line.saturating_sub(1)
            ),
            VerifyReport::TornTail { line } => {
                write!(
                    f,
                    "line {line}: torn (no final newline), as an interrupted write leaves"
                )
            }
            VerifyReport::Truncated {
                line,
                expected_seq,
                anchored_seq,
            } => write!(
                f,
                "line {line}: missing; the file ends before seq {expected_seq} but the anchor names seq {anchored_seq}"
            ),
        }
    }
}

/// What went wrong with an audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log {path}: {op}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// What was being done (`"open"`, `"read"`, `"append line 12"`, ...).
        op: String,
        /// The OS error.
        source: io::Error,
    },
    /// The file's chain is broken somewhere other than a torn tail; `open` will not
    /// extend it.
    #[error("audit log {path}: refusing to continue a broken chain: {report}")]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// The first problem, naming the line.
        report: VerifyReport,
    },
    /// The bytes after the last complete line cannot have been left by a crash of the
    /// writer (longer than one record, or not the start of record `next_seq`): the file
    /// is not this writer's log, or someone wrote to it. `open` refuses to cut them.
    #[error(
        "audit log {path}: {bytes} bytes at byte {offset} after the last complete line are not a torn record (expected at most one line starting {{\"seq\":{next_seq},); refusing to cut them: is this the right file?"
    )]
    ForeignTail {
        /// The log file.
        path: PathBuf,
        /// Where the bytes start.
        offset: u64,
        /// How many there are.
        bytes: u64,
        /// The seq a torn record would carry.
        next_seq: u64,
    },
    /// Another [`AuditLog`] (in this or another process) holds the file.
    #[error("audit log {path}: already open for writing elsewhere (flock held)")]
    Locked {
        /// The log file.
        path: PathBuf,
    },
    /// The path is not a regular file (a directory, a FIFO, a device): reading it could
    /// block or never end.
    #[error("audit log {path}: not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The serialized record would exceed [`MAX_LINE_BYTES`].
    #[error(
        "audit log {path}: record seq {seq} ({event}) is {bytes} bytes, more than the {max} allowed"
    )]
    RecordTooLong {
        /// The log file.
        path: PathBuf,
        /// The seq it would have had.
        seq: u64,
        /// Its event name.
        event: &'static str,
        /// Its length.
        bytes: usize,
        /// [`MAX_LINE_BYTES`].
        max: usize,
    },
    /// The event could not be serialized.
    #[error("audit log {path}: cannot serialize record seq {seq} ({event}): {source}")]
    Serialize {
        /// The log file.
        path: PathBuf,
        /// The seq it would have had.
        seq: u64,
        /// Its event name.
        event: &'static str,
        /// The serde error.
        source: serde_json::Error,
    },
    /// An earlier append failed and its partial line could not be removed; the
    /// in-memory head no longer matches the file. Reopen the log (which repairs a torn
    /// tail) to continue.
    #[error(
        "audit log {path}: an earlier append failed half-way and could not be rolled back; reopen the log"
    )]
    Poisoned {
        /// The log file.
        path: PathBuf,
    },
    /// An anchor's hash is not 64 lowercase hex digits, or an empty anchor
    /// (`next_seq` 0) carries a hash other than [`GENESIS_HASH`].
    #[error(
        "audit anchor: last_hash {value:?} for next_seq {next_seq} is invalid: expected 64 lowercase hex digits ({GENESIS_HASH} when next_seq is 0)"
    )]
    BadAnchor {
        /// The anchor's `next_seq`.
        next_seq: u64,
        /// The offending hash text.
        value: String,
    },
}

/// The writer: an open, locked, verified audit file and the head of its chain.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    fsync: bool,
    next_seq: u64,
    last_hash: [u8; 32],
    /// Length of the file up to the end of the last complete line.
    len: u64,
    poisoned: bool,
    /// The `audit.torn_tail` record `open` appended, until the caller takes it.
    repair: Option<ControlEvent>,
}

impl AuditLog {
    /// Opens `path` for appending, creating it if absent, after verifying the whole
    /// chain (and the anchor, if [`AuditOptions::anchor`] is set).
    ///
    /// A torn last line that a crash of the writer can have left is cut off and an
    /// `audit.torn_tail` record appended (see the [module docs](self)); the returned
    /// log continues the chain at the next seq.
    ///
    /// # Errors
    ///
    /// [`AuditError::ForeignTail`] for bytes after the last newline that no crash of the
    /// writer can have left (left in place), [`AuditError::Corrupt`] naming the first
    /// bad line for any other problem,
    /// [`AuditError::Locked`] if another writer holds the file, [`AuditError::BadAnchor`]
    /// for a malformed anchor, [`AuditError::Io`] for file errors.
    pub fn open(path: impl AsRef<Path>, options: AuditOptions) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_path_buf();
        let anchor = options
            .anchor
            .as_ref()
            .map(to_anchor)
            .transpose()?
            .flatten();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|source| io_error(&path, "open", source))?;
        regular_file(&file, &path)?;
        lock(&file, &path)?;
        let checked =
            verify::check(BufReader::new(&file), anchor).map_err(|e| io_error(&path, "read", e))?;
        if !matches!(
            checked.report,
            VerifyReport::Ok { .. } | VerifyReport::TornTail { .. }
        ) {
            return Err(AuditError::Corrupt {
                path,
                report: checked.report,
            });
        }
        let (next_seq, last_hash) = checked
            .last
            .map_or((0, GENESIS), |(s, h)| (s.saturating_add(1), h));
        // Only what a crash of this writer can leave is cut: the start of the next
        // record (its header names this seq and the last line's hash), at most one
        // line long. Anything else (a file that is not an audit log, a tail someone
        // wrote) is refused and left as it is.
        if let Some(torn) = checked
            .torn
            .filter(|t| !t.could_be_record(next_seq, &last_hash))
        {
            return Err(AuditError::ForeignTail {
                path,
                offset: torn.offset,
                bytes: torn.bytes,
                next_seq,
            });
        }
        // From the read, not a stat: bytes someone appended after the read must not be
        // counted as part of the chain.
        let len = checked.complete_len;
        let mut log = AuditLog {
            path,
            file,
            fsync: options.fsync,
            next_seq,
            last_hash,
            len,
            poisoned: false,
            repair: None,
        };
        if let Some(torn) = checked.torn {
            log.cut_torn_tail(torn)?;
        }
        Ok(log)
    }

    /// Truncates the torn bytes and records them.
    fn cut_torn_tail(&mut self, torn: verify::Torn) -> Result<(), AuditError> {
        let op = format!("truncate torn tail at byte {}", torn.offset);
        self.file
            .set_len(torn.offset)
            .map_err(|e| io_error(&self.path, &op, e))?;
        self.sync().map_err(|e| io_error(&self.path, &op, e))?;
        let event = ControlEvent::AuditTornTail {
            offset: torn.offset,
            bytes: torn.bytes,
            sha256: hex(&torn.sha256),
        };
        self.append(&event)?;
        self.repair = Some(event);
        Ok(())
    }

    /// The `audit.torn_tail` record [`AuditLog::open`] appended when it cut a torn
    /// tail, once: for the caller to log (the JSON logs see only what it emits).
    pub fn take_repair(&mut self) -> Option<ControlEvent> {
        self.repair.take()
    }

    /// Appends `event`, stamped with the current wall-clock time.
    ///
    /// # Errors
    ///
    /// As [`AuditLog::append_at`].
    pub fn append(&mut self, event: &ControlEvent) -> Result<AuditRecordInfo, AuditError> {
        self.append_at(event, unix_millis_now())
    }

    /// Appends `event` with the given timestamp (ms since the Unix epoch), for replays
    /// and tests: one `write_all` of the line and its newline, then `sync_data` if
    /// [`AuditOptions::fsync`] is set.
    ///
    /// # Errors
    ///
    /// [`AuditError::RecordTooLong`] or [`AuditError::Serialize`] (nothing written),
    /// [`AuditError::Io`] if the write failed (the partial line is truncated away and
    /// the head is unchanged; if that truncation fails too, or `fsync` fails, the log is
    /// poisoned), [`AuditError::Poisoned`] after such a failure.
    pub fn append_at(
        &mut self,
        event: &ControlEvent,
        ts_unix_ms: u64,
    ) -> Result<AuditRecordInfo, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned {
                path: self.path.clone(),
            });
        }
        let seq = self.next_seq;
        let mut line = self.serialize(event, seq, ts_unix_ms)?;
        let hash: [u8; 32] = Sha256::digest(&line).into();
        line.push(b'\n');
        let op = || format!("append line {} (seq {seq})", seq + 1);
        if let Err(e) = self.file.write_all(&line) {
            // Leave no partial line behind: the next append would glue onto it.
            if self.file.set_len(self.len).is_err() {
                self.poisoned = true;
            }
            return Err(io_error(&self.path, &op(), e));
        }
        if let Err(e) = self.sync() {
            // After a failed fsync the kernel may have dropped the dirty pages: what is
            // on disk is unknown.
            self.poisoned = true;
            return Err(io_error(&self.path, &format!("fsync after {}", op()), e));
        }
        self.len += line.len() as u64;
        self.next_seq += 1;
        self.last_hash = hash;
        Ok(AuditRecordInfo {
            seq,
            hash: hex(&hash),
        })
    }

    /// `sync_data` if [`AuditOptions::fsync`] asks for it.
    fn sync(&self) -> io::Result<()> {
        if self.fsync {
            self.file.sync_data()
        } else {
            Ok(())
        }
    }

    fn serialize(&self, event: &ControlEvent, seq: u64, ts: u64) -> Result<Vec<u8>, AuditError> {
        let prev = hex(&self.last_hash);
        let record = RecordRef {
            seq,
            ts_unix_ms: ts,
            prev: &prev,
            event,
        };
        let line = serde_json::to_vec(&record).map_err(|source| AuditError::Serialize {
            path: self.path.clone(),
            seq,
            event: event.name(),
            source,
        })?;
        if line.len() > MAX_LINE_BYTES {
            return Err(AuditError::RecordTooLong {
                path: self.path.clone(),
                seq,
                event: event.name(),
                bytes: line.len(),
                max: MAX_LINE_BYTES,
            });
        }
        Ok(line)
    }

    /// The head of the chain: the next seq and the hash of the last line.
    pub fn head(&self) -> AuditHead {
        AuditHead {
            next_seq: self.next_seq,
            last_hash: hex(&self.last_hash),
        }
    }

    /// The file this log writes.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Verifies the chain of the audit file at `path` and names its first problem.
///
/// Reads the file once, streaming (memory: the previous line, whatever the length of
/// the log), stops at the first problem, and changes nothing. A change to the body of the last line is not detectable here; see
/// [`verify_with_anchor`].
///
/// # Errors
///
/// [`AuditError::Io`] if the file cannot be opened or read. A missing chain problem is
/// never an error: it is the report.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, AuditError> {
    verify_inner(path.as_ref(), None)
}

/// As [`verify`], and also checks that the file still holds the record the `anchor`
/// head was taken at (seq `anchor.next_seq - 1`) with the same hash. Detects a change
/// to that record (reported [`VerifyReport::Tampered`]) and the removal of records up
/// to it ([`VerifyReport::Truncated`]); it decides [`VerifyReport::BrokenLink`] cases
/// on that record. An anchor with `next_seq` 0 checks nothing more than [`verify`].
///
/// # Errors
///
/// [`AuditError::BadAnchor`] for a malformed anchor, else as [`verify`].
pub fn verify_with_anchor(
    path: impl AsRef<Path>,
    anchor: &AuditHead,
) -> Result<VerifyReport, AuditError> {
    verify_inner(path.as_ref(), to_anchor(anchor)?)
}

fn verify_inner(path: &Path, anchor: Option<Anchor>) -> Result<VerifyReport, AuditError> {
    // Non-blocking: opening a FIFO for reading would otherwise wait for a writer, and
    // the type check below would never run. Cleared again once the file is known to be
    // regular (a leased or FUSE file could answer a non-blocking read with EAGAIN).
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| io_error(path, "open", e))?;
    regular_file(&file, path)?;
    rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::empty())
        .map_err(|e| io_error(path, "fcntl", e.into()))?;
    let checked =
        verify::check(BufReader::new(file), anchor).map_err(|e| io_error(path, "read", e))?;
    Ok(checked.report)
}

/// The record a head anchors, or `None` for the empty head.
fn to_anchor(head: &AuditHead) -> Result<Option<Anchor>, AuditError> {
    let bad = || AuditError::BadAnchor {
        next_seq: head.next_seq,
        value: head.last_hash.clone(),
    };
    let hash = parse_hash(&head.last_hash).ok_or_else(bad)?;
    match head.next_seq.checked_sub(1) {
        Some(seq) => Ok(Some(Anchor { seq, hash })),
        None if hash == GENESIS => Ok(None),
        None => Err(bad()),
    }
}

fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    use rustix::fs::{FlockOperation, flock};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(AuditError::Locked {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_error(path, "flock", e.into())),
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 before it), for `ts_unix_ms`.
#[allow(clippy::disallowed_methods)] // an audit record's wall-clock stamp, on the control thread
fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn regular_file(file: &File, path: &Path) -> Result<(), AuditError> {
    let meta = file.metadata().map_err(|e| io_error(path, "stat", e))?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(AuditError::NotAFile {
            path: path.to_path_buf(),
        })
    }
}

fn io_error(path: &Path, op: &str, source: io::Error) -> AuditError {
    AuditError::Io {
        path: path.to_path_buf(),
        op: op.to_owned(),
        source,
    }
}
