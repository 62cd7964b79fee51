//! Reading an audit file and judging its chain in one streaming pass ([`check`]): the
//! one place that decides which line is named.
//!
//! The pass keeps the previous line's seq and hash, never the lines: a log of any
//! length, and a hostile file of millions of short lines, cost a few kilobytes. Where a
//! link breaks, it reads ahead only as far as the judgement needs (the next line, or
//! the rest of the file for the seq it expected) and stops at the first problem.

use std::io::{self, BufRead, Read};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{GENESIS, MAX_LINE_BYTES, VerifyReport};
use crate::logs::hex;

/// What the chain needs from one complete line.
#[derive(Debug, Clone, Copy)]
enum LineInfo {
    /// A JSON object with a numeric `seq`, a 64-hex-digit `prev` and a string `event`.
    Parsed {
        seq: u64,
        prev: [u8; 32],
        /// SHA-256 of the line's bytes without the newline.
        hash: [u8; 32],
    },
    /// Anything else: not JSON, not an object, a field missing or malformed, too long.
    Bad,
}

/// Bytes after the last newline.
#[derive(Debug, Clone, Copy)]
pub(super) struct Torn {
    /// Where they start: the length of the complete lines.
    pub(super) offset: u64,
    /// How many there are.
    pub(super) bytes: u64,
    /// Their SHA-256.
    pub(super) sha256: [u8; 32],
    /// Their first bytes (up to [`TORN_HEAD`]), and how many of those there are.
    pub(super) head: [u8; TORN_HEAD],
    pub(super) head_len: usize,
    /// They are text (no byte below 0x20), then only zero bytes (either part may be
    /// empty): what a torn append leaves, possibly followed by the zeros of a length
    /// that reached the disk before the data.
    pub(super) text_then_zeros: bool,
}

/// Bytes of a torn tail kept to check it against the record header (`{"seq":N,
/// "ts_unix_ms":T,"prev":"<64 hex>","event":"`, at most 141 bytes).
const TORN_HEAD: usize = 192;

impl Torn {
    /// Whether these bytes can be what a crash of the writer left after the line
    /// hashing to `last_hash`: no longer than one record line without its newline (the
    /// writer refuses longer ones), text then zero bytes, the text beginning as the
    /// record the writer appends next does (`{"seq":N,"ts_unix_ms":T,"prev":"<that
    /// hash>","event":"`, as far as it goes). Only zero bytes are allowed too (a power
    /// loss can leave a file's new length on disk before its data). Anything else is
    /// not this writer's: checking only `{"seq":N,` (and, for zeros, the first 32
    /// bytes) cut someone else's 680 KB behind such a start.
    pub(super) fn could_be_record(&self, next_seq: u64, last_hash: &[u8; 32]) -> bool {
        if self.bytes > MAX_LINE_BYTES as u64 || !self.text_then_zeros {
            return false;
        }
        let head = &self.head[..self.head_len];
        let text = &head[..head.iter().position(|&b| b == 0).unwrap_or(head.len())];
        let start = format!("{{\"seq\":{next_seq},\"ts_unix_ms\":");
        let n = text.len().min(start.len());
        if text[..n] != start.as_bytes()[..n] {
            return false;
        }
        let rest = &text[n..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == rest.len() {
            return digits <= 20;
        }
        if digits == 0 || digits > 20 {
            return false;
        }
        let rest = &rest[digits..];
        let link = format!(",\"prev\":\"{}\",\"event\":\"", hex(last_hash));
        let n = rest.len().min(link.len());
        rest[..n] == link.as_bytes()[..n]
    }
}

/// The judgement of a file, and what a writer continuing it needs.
#[derive(Debug)]
pub(super) struct Checked {
    pub(super) report: VerifyReport,
    /// Seq and hash of the last complete line (`None` for an empty file); meaningful
    /// when the report is `Ok` or `TornTail`.
    pub(super) last: Option<(u64, [u8; 32])>,
    /// Bytes of the complete lines (the offset of the torn tail, if any).
    pub(super) complete_len: u64,
    pub(super) torn: Option<Torn>,
}

/// The record the chain was anchored at: `seq` must hash to `hash`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Anchor {
    pub(super) seq: u64,
    pub(super) hash: [u8; 32],
}

/// The fields the chain reads; everything else on the line is covered by its hash.
#[derive(Deserialize)]
struct ChainFields {
    seq: u64,
    prev: String,
    // Only checked for presence and type: a verifier must not reject records of event
    // kinds newer than itself.
    #[allow(dead_code)]
    event: String,
}

/// One step of the reader.
enum Item {
    /// A complete line and its length with the newline.
    Line(LineInfo, u64),
    /// Bytes after the last newline.
    Torn(Torn),
}

/// Reads lines one at a time, each at most [`MAX_LINE_BYTES`] in memory.
struct Lines<R> {
    reader: R,
    offset: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    fn next(&mut self) -> io::Result<Option<Item>> {
        self.buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = self
            .reader
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut self.buf)? as u64;
        if n == 0 {
            return Ok(None);
        }
        let start = self.offset;
        let mut head = [0u8; TORN_HEAD];
        let head_len = self.buf.len().min(TORN_HEAD);
        head[..head_len].copy_from_slice(&self.buf[..head_len]);
        if let Some(content) = self.buf.strip_suffix(b"\n") {
            let info = parse_line(content);
            self.offset += n;
            return Ok(Some(Item::Line(info, n)));
        }
        if n == limit {
            // Longer than any line the writer produces: skip to its end.
            let mut hasher = Sha256::new();
            hasher.update(&self.buf);
            let (rest, ended) = skip_line(&mut self.reader, &mut hasher)?;
            let bytes = n + rest;
            if ended {
                self.offset += bytes;
                return Ok(Some(Item::Line(LineInfo::Bad, bytes)));
            }
            return Ok(Some(Item::Torn(Torn {
                offset: start,
                bytes,
                sha256: hasher.finalize().into(),
                head,
                head_len,
                // Longer than a record: never the writer's, whatever its bytes.
                text_then_zeros: false,
            })));
        }
        Ok(Some(Item::Torn(Torn {
            offset: start,
            bytes: n,
            sha256: Sha256::digest(&self.buf).into(),
            head,
            head_len,
            text_then_zeros: text_then_zeros(&self.buf),
        })))
    }
}

/// Text (no byte below 0x20), then only zero bytes.
fn text_then_zeros(bytes: &[u8]) -> bool {
    let text = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes[..text].iter().all(|&b| b >= 0x20) && bytes[text..].iter().all(|&b| b == 0)
}

/// Reads `reader` to its end (or to the first problem) and judges the chain, checking
/// the anchored record if there is one.
///
/// Walks the lines in order; at each, the link (`prev` against the previous line's
/// hash, or [`GENESIS`] for line 1) and the seq (previous + 1, or 0) must hold. See
/// [`classify_break`] for how a broken link is attributed.
pub(super) fn check<R: BufRead>(reader: R, anchor: Option<Anchor>) -> io::Result<Checked> {
    let mut lines = Lines {
        reader,
        offset: 0,
        buf: Vec::new(),
    };
    let mut expected = (0u64, GENESIS);
    let mut last = None;
    let mut count = 0u64;
    let mut torn = None;
    let stop = |report: VerifyReport, lines: &Lines<R>, last| Checked {
        report,
        last,
        complete_len: lines.offset,
        torn: None,
    };
    while let Some(item) = lines.next()? {
        let (info, _) = match item {
            Item::Line(info, n) => (info, n),
            Item::Torn(t) => {
                torn = Some(t);
                break;
            }
        };
        count += 1;
        let line = count;
        let LineInfo::Parsed { seq, prev, hash } = info else {
            return Ok(stop(VerifyReport::Tampered { line }, &lines, last));
        };
        let (expected_seq, expected_prev) = expected;
        if prev != expected_prev {
            let report = classify_break(&mut lines, line, seq, hash, expected_seq, anchor)?;
            return Ok(stop(report, &lines, last));
        }
        if seq != expected_seq {
            // The link into this line holds, so the line before is exactly what the
            // writer wrote; the writer never skips a seq: this line was changed.
            return Ok(stop(VerifyReport::Tampered { line }, &lines, last));
        }
        if anchor.is_some_and(|a| a.seq == seq && a.hash != hash) {
            return Ok(stop(VerifyReport::Tampered { line }, &lines, last));
        }
        expected = (seq.saturating_add(1), hash);
        last = Some((seq, hash));
    }
    let report = if let Some(a) = anchor.filter(|a| a.seq >= expected.0) {
        VerifyReport::Truncated {
            line: count + 1,
            expected_seq: expected.0,
            anchored_seq: a.seq,
        }
    } else if torn.is_some() {
        VerifyReport::TornTail { line: count + 1 }
    } else {
        VerifyReport::Ok {
            lines: count,
            head_hash: hex(&expected.1),
        }
    };
    let complete_len = torn.map_or(lines.offset, |t: Torn| t.offset);
    Ok(Checked {
        report,
        last,
        complete_len,
        torn,
    })
}

/// Consumes up to and including the next newline, hashing what it reads. Returns the
/// byte count and whether a newline ended it (`false`: end of file).
fn skip_line<R: BufRead>(reader: &mut R, hasher: &mut Sha256) -> io::Result<(u64, bool)> {
    let mut total = 0u64;
    let mut chunk = Vec::new();
    loop {
        chunk.clear();
        let n = reader
            .by_ref()
            .take(64 * 1024)
            .read_until(b'\n', &mut chunk)?;
        if n == 0 {
            return Ok((total, false));
        }
        hasher.update(&chunk);
        total += n as u64;
        if chunk.ends_with(b"\n") {
            return Ok((total, true));
        }
    }
}

fn parse_line(content: &[u8]) -> LineInfo {
    // The writer emits compact objects; an array would also deserialize into the
    // struct, so insist on the object form.
    if content.first() != Some(&b'{') {
        return LineInfo::Bad;
    }
    let Ok(fields) = serde_json::from_slice::<ChainFields>(content) else {
        return LineInfo::Bad;
    };
    match parse_hash(&fields.prev) {
        Some(prev) => LineInfo::Parsed {
            seq: fields.seq,
            prev,
            hash: Sha256::digest(content).into(),
        },
        None => LineInfo::Bad,
    }
}

/// 64 lowercase hex digits into 32 bytes; anything else is `None`.
pub(super) fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// The link into line `line` (seq `seq`, own hash `hash`) is broken: its `prev` is
/// not the previous line's hash.
///
/// * Same seq as expected: one of the two lines was changed. If the next line links to
///   this one, this one is intact and the line before was changed; if the next line
///   does not link either, this line was changed (its `prev`). Without a usable next
///   line (this is the last line, or the next does not parse) only an anchor on this
///   line decides; otherwise the report is [`VerifyReport::BrokenLink`].
/// * The expected seq appears further down: lines were moved ([`VerifyReport::Reordered`]).
/// * The seq jumps forward and the expected one is nowhere: [`VerifyReport::Missing`].
/// * The seq goes backward (a duplicated or reinserted line): `Reordered`.
fn classify_break<R: BufRead>(
    lines: &mut Lines<R>,
    line: u64,
    seq: u64,
    hash: [u8; 32],
    expected_seq: u64,
    anchor: Option<Anchor>,
) -> io::Result<VerifyReport> {
    if seq == expected_seq {
        if line == 1 {
            // There is no line before the first: its own `prev` was changed.
            return Ok(VerifyReport::Tampered { line });
        }
        return Ok(match lines.next()? {
            Some(Item::Line(LineInfo::Parsed { prev, .. }, _)) if prev == hash => {
                VerifyReport::Tampered { line: line - 1 }
            }
            Some(Item::Line(LineInfo::Parsed { .. }, _)) => VerifyReport::Tampered { line },
            Some(Item::Line(LineInfo::Bad, _)) => VerifyReport::BrokenLink { line },
            None | Some(Item::Torn(_)) => match anchor.filter(|a| a.seq == seq) {
                Some(a) if a.hash == hash => VerifyReport::Tampered { line: line - 1 },
                Some(_) => VerifyReport::Tampered { line },
                None => VerifyReport::BrokenLink { line },
            },
        });
    }
    let mut found_later = false;
    while let Some(item) = lines.next()? {
        if matches!(item, Item::Line(LineInfo::Parsed { seq, .. }, _) if seq == expected_seq) {
            found_later = true;
            break;
        }
    }
    Ok(if !found_later && seq > expected_seq {
        VerifyReport::Missing {
            line,
            expected_seq,
            found_seq: seq,
        }
    } else {
        VerifyReport::Reordered {
            line,
            expected_seq,
            found_seq: seq,
        }
    })
}
