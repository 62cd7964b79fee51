//! Reading an audit file into per-line chain facts ([`scan`]) and judging them
//! ([`judge`]): the one place that decides which line is named.
//!
//! The scan streams the file and keeps 72 bytes per line (seq, prev, own hash), never
//! the lines themselves, so a long log costs little memory. The judgement is pure.

use std::io::{self, BufRead, Read};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{GENESIS, MAX_LINE_BYTES, VerifyReport};
use crate::logs::hex;

/// What the chain needs from one complete line.
#[derive(Debug, Clone, Copy)]
pub(super) enum LineInfo {
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
}

/// The whole file, line by line.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub(super) lines: Vec<LineInfo>,
    pub(super) torn: Option<Torn>,
    /// Bytes of the complete lines (the offset of the torn tail, if any).
    pub(super) complete_len: u64,
}

impl Scan {
    /// Seq and hash of the last complete line if it parsed (`None` for an empty file).
    pub(super) fn last(&self) -> Option<(u64, [u8; 32])> {
        match self.lines.last() {
            Some(LineInfo::Parsed { seq, hash, .. }) => Some((*seq, *hash)),
            _ => None,
        }
    }
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

/// Reads every line of `reader`.
pub(super) fn scan<R: BufRead>(mut reader: R) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let mut offset = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = reader.by_ref().take(limit).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(scan);
        }
        if let Some(content) = buf.strip_suffix(b"\n") {
            scan.lines.push(parse_line(content));
            offset += n as u64;
            scan.complete_len = offset;
        } else if n as u64 == limit {
            // Longer than any line the writer produces: skip to its end.
            let mut hasher = Sha256::new();
            hasher.update(&buf);
            let (rest, ended) = skip_line(&mut reader, &mut hasher)?;
            let bytes = n as u64 + rest;
            if ended {
                scan.lines.push(LineInfo::Bad);
                offset += bytes;
                scan.complete_len = offset;
            } else {
                scan.torn = Some(Torn {
                    offset,
                    bytes,
                    sha256: hasher.finalize().into(),
                });
                return Ok(scan);
            }
        } else {
            let sha256 = Sha256::digest(&buf).into();
            scan.torn = Some(Torn {
                offset,
                bytes: n as u64,
                sha256,
            });
            return Ok(scan);
        }
    }
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

/// Names the first problem of `scan`, checking the anchored record if there is one.
///
/// Walks the lines in order; at each, the link (`prev` against the previous line's
/// hash, or [`GENESIS`] for line 1) and the seq (previous + 1, or 0) must hold. See
/// [`classify_break`] for how a broken link is attributed.
pub(super) fn judge(scan: &Scan, anchor: Option<Anchor>) -> VerifyReport {
    let lines = &scan.lines;
    let mut expected = (0u64, GENESIS);
    for (index, info) in lines.iter().enumerate() {
        let line = index as u64 + 1;
        let LineInfo::Parsed { seq, prev, hash } = *info else {
            return VerifyReport::Tampered { line };
        };
        let (expected_seq, expected_prev) = expected;
        if prev != expected_prev {
            return classify_break(lines, index, expected_seq, anchor);
        }
        if seq != expected_seq {
            // The link into this line holds, so the line before is exactly what the
            // writer wrote; the writer never skips a seq: this line was changed.
            return VerifyReport::Tampered { line };
        }
        if anchor.is_some_and(|a| a.seq == seq && a.hash != hash) {
            return VerifyReport::Tampered { line };
        }
        expected = (seq.saturating_add(1), hash);
    }
    let complete = lines.len() as u64;
    if let Some(a) = anchor.filter(|a| a.seq >= expected.0) {
        return VerifyReport::Truncated {
            line: complete + 1,
            expected_seq: expected.0,
            anchored_seq: a.seq,
        };
    }
    if scan.torn.is_some() {
        return VerifyReport::TornTail { line: complete + 1 };
    }
    VerifyReport::Ok {
        lines: complete,
        head_hash: hex(&expected.1),
    }
}

/// The link into `lines[index]` is broken (its `prev` is not the previous line's hash).
///
/// * Same seq as expected: one of the two lines was changed. If the next line links to
///   this one, this one is intact and the line before was changed; if the next line
///   does not link either, this line was changed (its `prev`). Without a usable next
///   line (this is the last line, or the next does not parse) only an anchor on this
///   line decides; otherwise the report is [`VerifyReport::BrokenLink`].
/// * The expected seq appears further down: lines were moved ([`VerifyReport::Reordered`]).
/// * The seq jumps forward and the expected one is nowhere: [`VerifyReport::Missing`].
/// * The seq goes backward (a duplicated or reinserted line): `Reordered`.
fn classify_break(
    lines: &[LineInfo],
    index: usize,
    expected_seq: u64,
    anchor: Option<Anchor>,
) -> VerifyReport {
    let line = index as u64 + 1;
    let LineInfo::Parsed { seq, hash, .. } = lines[index] else {
        return VerifyReport::Tampered { line };
    };
    if seq == expected_seq {
        if index == 0 {
            // There is no line before the first: its own `prev` was changed.
            return VerifyReport::Tampered { line };
        }
        return match lines.get(index + 1) {
            Some(LineInfo::Parsed { prev, .. }) if *prev == hash => {
                VerifyReport::Tampered { line: line - 1 }
            }
            Some(LineInfo::Parsed { .. }) => VerifyReport::Tampered { line },
            Some(LineInfo::Bad) => VerifyReport::BrokenLink { line },
            None => match anchor.filter(|a| a.seq == seq) {
                Some(a) if a.hash == hash => VerifyReport::Tampered { line: line - 1 },
                Some(_) => VerifyReport::Tampered { line },
                None => VerifyReport::BrokenLink { line },
            },
        };
    }
    let found_later = lines[index + 1..]
        .iter()
        .any(|l| matches!(l, LineInfo::Parsed { seq, .. } if *seq == expected_seq));
    if !found_later && seq > expected_seq {
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
    }
}
