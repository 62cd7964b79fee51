//! Ingress from another process over a `qos-shm-ring` ring (T2): the record format and
//! its decoder. The peer may be buggy or hostile: every record is length-checked and a
//! bad one is counted (`shm_rejected`) and skipped, never a panic.
//!
//! # Record format (little endian)
//!
//! | bytes | field |
//! | --- | --- |
//! | 0 | kind: 1 = open, 2 = packet, 3 = update, 4 = close |
//! | 1 | priority (open, update: 0..=7) |
//! | 2..4 | weight override (open, update; 0 = `2^priority`) |
//! | 4..8 | the sender's local stream number (any `u32` it chooses) |
//! | 8..12 | packet length in bytes, as scheduled (packet only) |
//! | 12.. | packet payload (packet only; may be empty), handed to the decoder |
//!
//! Open, update and close records are exactly 8 bytes, packet records at least 12. As
//! with in-process producers, a stream's records travel in order on one ring, and a
//! packet for a local number never opened is discarded as `UnknownStream`. Local numbers
//! must be below the worker's `max_streams` (others are rejected); opening a number
//! that is already open closes the old stream first.

use crate::sched::{Priority, StreamConfig};

const OPEN: u8 = 1;
const PACKET: u8 = 2;
const UPDATE: u8 = 3;
const CLOSE: u8 = 4;

/// Bytes of a packet record before its payload.
pub const PACKET_HEADER: usize = 12;

/// A decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShmRecord<'a> {
    /// Open local stream `local` with `config`.
    Open {
        /// The sender's stream number.
        local: u32,
        /// Priority and weight.
        config: StreamConfig,
    },
    /// A packet of `len` bytes for stream `local`, with its payload bytes.
    Packet {
        /// The sender's stream number.
        local: u32,
        /// Length as scheduled.
        len: u32,
        /// Payload carried in the record.
        payload: &'a [u8],
    },
    /// Update stream `local` to `config`.
    Update {
        /// The sender's stream number.
        local: u32,
        /// Priority and weight.
        config: StreamConfig,
    },
    /// Close stream `local`.
    Close {
        /// The sender's stream number.
        local: u32,
    },
}

impl ShmRecord<'_> {
    /// The sender's stream number.
    pub fn local(&self) -> u32 {
        match *self {
            Self::Open { local, .. }
            | Self::Packet { local, .. }
            | Self::Update { local, .. }
            | Self::Close { local } => local,
        }
    }
}

/// Why a record was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShmRecordError {
    /// Shorter than its kind needs.
    #[error("shm record: {len} bytes, expected >= {expected} for its kind")]
    Short {
        /// Bytes received.
        len: usize,
        /// Bytes the kind needs.
        expected: usize,
    },
    /// Unknown kind byte.
    #[error("shm record: kind {0}, expected 1..=4")]
    Kind(u8),
    /// Priority above 7.
    #[error("shm record: priority {0}, expected 0..=7")]
    Priority(u8),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes one record.
pub fn decode(b: &[u8]) -> Result<ShmRecord<'_>, ShmRecordError> {
    let need = |expected: usize| {
        if b.len() < expected {
            Err(ShmRecordError::Short {
                len: b.len(),
                expected,
            })
        } else {
            Ok(())
        }
    };
    need(8)?;
    let local = u32_at(b, 4);
    let config = || -> Result<StreamConfig, ShmRecordError> {
        let priority = Priority::new(b[1]).ok_or(ShmRecordError::Priority(b[1]))?;
        let weight = u16::from_le_bytes([b[2], b[3]]);
        Ok(StreamConfig {
            priority,
            weight: (weight != 0).then_some(weight),
            cap: None,
        })
    };
    match b[0] {
        OPEN => Ok(ShmRecord::Open {
            local,
            config: config()?,
        }),
        UPDATE => Ok(ShmRecord::Update {
            local,
            config: config()?,
        }),
        CLOSE => Ok(ShmRecord::Close { local }),
        PACKET => {
            need(PACKET_HEADER)?;
            Ok(ShmRecord::Packet {
                local,
                len: u32_at(b, 8),
                payload: &b[PACKET_HEADER..],
            })
        }
        k => Err(ShmRecordError::Kind(k)),
    }
}

/// Writes an open record into `out` (8 bytes); returns its length.
pub fn encode_open(out: &mut [u8], local: u32, priority: Priority, weight: Option<u16>) -> usize {
    control(out, OPEN, local, priority, weight)
}

/// Writes an update record into `out` (8 bytes); returns its length.
pub fn encode_update(out: &mut [u8], local: u32, priority: Priority, weight: Option<u16>) -> usize {
    control(out, UPDATE, local, priority, weight)
}

/// Writes a close record into `out` (8 bytes); returns its length.
pub fn encode_close(out: &mut [u8], local: u32) -> usize {
    out[..8].fill(0);
    out[0] = CLOSE;
    out[4..8].copy_from_slice(&local.to_le_bytes());
    8
}

/// Writes a packet record into `out` (12 bytes + payload); returns its length.
/// Panics if `out` is too small (a programming error on the sending side).
pub fn encode_packet(out: &mut [u8], local: u32, len: u32, payload: &[u8]) -> usize {
    out[..4].copy_from_slice(&[PACKET, 0, 0, 0]);
    out[4..8].copy_from_slice(&local.to_le_bytes());
    out[8..12].copy_from_slice(&len.to_le_bytes());
    out[PACKET_HEADER..PACKET_HEADER + payload.len()].copy_from_slice(payload);
    PACKET_HEADER + payload.len()
}

fn control(out: &mut [u8], kind: u8, local: u32, priority: Priority, weight: Option<u16>) -> usize {
    out[0] = kind;
    out[1] = priority.get();
    out[2..4].copy_from_slice(&weight.unwrap_or(0).to_le_bytes());
    out[4..8].copy_from_slice(&local.to_le_bytes());
    8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t2_records_round_trip_and_bad_ones_are_errors() {
        let mut b = [0u8; 32];
        let n = encode_open(&mut b, 7, Priority::new(5).unwrap(), Some(3));
        assert_eq!(
            decode(&b[..n]),
            Ok(ShmRecord::Open {
                local: 7,
                config: StreamConfig {
                    priority: Priority::new(5).unwrap(),
                    weight: Some(3),
                    cap: None
                }
            })
        );
        let n = encode_packet(&mut b, 7, 1200, b"abc");
        assert_eq!(
            decode(&b[..n]),
            Ok(ShmRecord::Packet {
                local: 7,
                len: 1200,
                payload: b"abc"
            })
        );
        let n = encode_close(&mut b, 9);
        assert_eq!(decode(&b[..n]), Ok(ShmRecord::Close { local: 9 }));
        assert!(matches!(decode(&b[..3]), Err(ShmRecordError::Short { .. })));
        assert_eq!(
            decode(&[9, 0, 0, 0, 0, 0, 0, 0]),
            Err(ShmRecordError::Kind(9))
        );
        assert_eq!(
            decode(&[1, 8, 0, 0, 0, 0, 0, 0]),
            Err(ShmRecordError::Priority(8))
        );
        assert!(matches!(
            decode(&[2, 0, 0, 0, 1, 0, 0, 0, 5]),
            Err(ShmRecordError::Short { expected: 12, .. })
        ));
    }
}
