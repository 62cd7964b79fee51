//! The load-generator datagram header: the one definition shared by `qos-loadgen`
//! (which writes it and reads it back at its sink) and `qosd` (whose classifier reads
//! the stream id and the claimed priority from it).
//!
//! Layout, 32 bytes, big-endian, at the start of the datagram; the payload follows:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `QOSL` (0x514F_534C) |
//! | 4 | 1 | version (1) |
//! | 5 | 1 | priority (0..=7) |
//! | 6 | 2 | flags (0; receivers ignore bits they do not know) |
//! | 8 | 8 | stream id |
//! | 16 | 8 | sequence number (0, 1, 2, ... per stream) |
//! | 24 | 8 | send timestamp, ns since the Unix epoch (the sender's wall clock) |
//!
//! Parsing never panics: every byte string is either a header or a [`HeaderError`]
//! naming what is wrong (the fuzz target `header` holds it to that).

use std::fmt;

/// `QOSL` in ASCII.
pub const MAGIC: u32 = 0x514F_534C;
/// The version this code writes and reads.
pub const VERSION: u8 = 1;
/// Encoded size in bytes.
pub const LEN: usize = 32;

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Claimed priority, 0..=7 (a gateway rule may cap it).
    pub priority: u8,
    /// Flags; 0 from this version's writers.
    pub flags: u16,
    /// Stream id chosen by the sender.
    pub stream_id: u64,
    /// Per-stream sequence number, from 0.
    pub seq: u64,
    /// Send time, ns since the Unix epoch.
    pub send_ns: u64,
}

/// Why bytes are not a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer than [`LEN`] bytes.
    #[error("truncated: {len} bytes, a header needs {LEN}")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// The first four bytes are not [`MAGIC`]: not a load-generator datagram.
    #[error("no loadgen magic (found {found:#010x})")]
    BadMagic {
        /// The first four bytes.
        found: u32,
    },
    /// A version this code does not read.
    #[error("unsupported header version {found} (reads {VERSION})")]
    Version {
        /// The version byte.
        found: u8,
    },
    /// A priority outside 0..=7.
    #[error("priority {found} out of range 0..=7")]
    Priority {
        /// The priority byte.
        found: u8,
    },
}

impl HeaderError {
    /// A short stable reason, for drop counters and metrics labels.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::BadMagic { .. } => "bad_magic",
            Self::Version { .. } => "bad_version",
            Self::Priority { .. } => "bad_priority",
        }
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl Header {
    /// A header for `stream_id` at priority `priority` (clamped to 7).
    pub fn new(stream_id: u64, priority: u8, seq: u64, send_ns: u64) -> Self {
        Self {
            priority: priority.min(7),
            flags: 0,
            stream_id,
            seq,
            send_ns,
        }
    }

    /// Reads the header at the start of `bytes` (the payload after it is not looked at).
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderError> {
        let Some(h) = bytes.get(..LEN) else {
            return Err(HeaderError::Truncated { len: bytes.len() });
        };
        let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        if h[4] != VERSION {
            return Err(HeaderError::Version { found: h[4] });
        }
        if h[5] > 7 {
            return Err(HeaderError::Priority { found: h[5] });
        }
        Ok(Self {
            priority: h[5],
            flags: u16::from_be_bytes([h[6], h[7]]),
            stream_id: be_u64(&h[8..16]),
            seq: be_u64(&h[16..24]),
            send_ns: be_u64(&h[24..32]),
        })
    }

    /// `true` when `bytes` starts with the magic (whether or not the rest is valid):
    /// a datagram that claims to be from the load generator.
    pub fn has_magic(bytes: &[u8]) -> bool {
        bytes.get(..4) == Some(&MAGIC.to_be_bytes()[..])
    }

    /// The encoded header.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4] = VERSION;
        b[5] = self.priority;
        b[6..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..16].copy_from_slice(&self.stream_id.to_be_bytes());
        b[16..24].copy_from_slice(&self.seq.to_be_bytes());
        b[24..32].copy_from_slice(&self.send_ns.to_be_bytes());
        b
    }

    /// Writes the header at the start of `buf`; `Err` if `buf` is shorter than [`LEN`].
    pub fn write_to(&self, buf: &mut [u8]) -> Result<(), HeaderError> {
        let len = buf.len();
        let Some(dst) = buf.get_mut(..LEN) else {
            return Err(HeaderError::Truncated { len });
        };
        dst.copy_from_slice(&self.encode());
        Ok(())
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream {} P{} seq {} sent {} ns",
            self.stream_id, self.priority, self.seq, self.send_ns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_field_at_the_extremes() {
        for h in [
            Header::new(0, 0, 0, 0),
            Header::new(u64::MAX, 7, u64::MAX, u64::MAX),
            Header {
                flags: 0xBEEF,
                ..Header::new(0x0102_0304_0506_0708, 3, 42, 1_700_000_000_000_000_000)
            },
        ] {
            let mut buf = vec![0xAA; LEN + 100];
            h.write_to(&mut buf).expect("fits");
            assert_eq!(Header::parse(&buf), Ok(h));
            assert_eq!(&buf[LEN..], &[0xAA; 100][..], "payload untouched");
        }
    }

    #[test]
    fn every_short_prefix_is_truncated_not_a_panic() {
        let full = Header::new(9, 5, 1, 2).encode();
        for n in 0..LEN {
            assert_eq!(
                Header::parse(&full[..n]),
                Err(HeaderError::Truncated { len: n })
            );
        }
        let mut small = [0u8; LEN - 1];
        assert!(Header::new(1, 1, 1, 1).write_to(&mut small).is_err());
    }

    #[test]
    fn s9_bad_magic_version_and_priority_are_named() {
        let mut b = Header::new(9, 5, 1, 2).encode();
        b[0] = b'X';
        assert!(matches!(
            Header::parse(&b),
            Err(HeaderError::BadMagic { .. })
        ));
        assert!(!Header::has_magic(&b));
        let mut b = Header::new(9, 5, 1, 2).encode();
        b[4] = 2;
        assert_eq!(Header::parse(&b), Err(HeaderError::Version { found: 2 }));
        assert!(Header::has_magic(&b));
        for p in 8..=255u8 {
            let mut b = Header::new(9, 5, 1, 2).encode();
            b[5] = p;
            assert_eq!(Header::parse(&b), Err(HeaderError::Priority { found: p }));
        }
        assert_eq!(Header::new(1, 200, 0, 0).priority, 7);
    }
}
