//! Single-producer single-consumer ring over shared memory, safe against a hostile peer.
//!
//! One process (or thread) writes records with a [`Producer`], another reads them with a
//! [`Consumer`]. The ring lives in a sealed memfd mapped by both processes
//! ([`ShmRegion`]); records are byte strings of up to `slot_size - 8` bytes, one per
//! fixed-size slot. This is the cross-process leg of DESIGN T2.
//!
//! ```
//! use qos_shm_ring::{PopError, RingConfig, ShmRegion};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let region = ShmRegion::create(RingConfig::for_records(8, 64))?;
//! // Another process would call `ShmRegion::open(&region.proc_path(), None)` and take
//! // one side; here both halves stay in this process.
//! let (mut tx, mut rx) = region.split()?;
//! tx.push(b"hello")?;
//! let mut batch = tx.reserve(2)?;
//! batch.write(b"a")?;
//! batch.write(b"bc")?;
//! assert_eq!(batch.commit(), 2);
//!
//! let mut buf = [0u8; 64];
//! let n = rx.pop(&mut buf)?;
//! assert_eq!(&buf[..n], b"hello");
//! let mut batch = rx.read(32)?;
//! while let Some(n) = batch.next_into(&mut buf) {
//!     let _record = &buf[..n?];
//! }
//! assert_eq!(batch.release(), 2);
//! drop(tx);
//! assert_eq!(rx.pop(&mut buf), Err(PopError::Disconnected));
//! # Ok(()) }
//! ```
//!
//! # Protocol
//!
//! The region ([`layout`]) holds a write-once header, one 128-byte line per side, and
//! `capacity` slots (a power of two). Each side owns one free-running `u64` index in its
//! own line: the producer's `tail` counts records committed, the consumer's `head`
//! records released. Record `i` lives in slot `i % capacity`; the ring holds
//! `tail - head` records, `0 <= tail - head <= capacity`.
//!
//! * **Push.** The producer copies the record into slot `tail % capacity` with plain
//!   (relaxed) word stores, then stores `tail + 1` with `Release`. A batch writes several
//!   slots and publishes them with a single `Release` store of the final `tail`.
//! * **Pop.** The consumer loads `tail` with `Acquire` (pairing with that `Release`, so
//!   the slot words are visible), copies the record out of slot `head % capacity` into the
//!   caller's buffer, then stores `head + 1` with `Release`. A batch copies several
//!   records and publishes one `head` store.
//! * **Reuse.** Before overwriting a slot, the producer loads `head` with `Acquire`
//!   (pairing with the consumer's `Release`), so the consumer's copy of the old record
//!   happened before the overwrite.
//! * **Caching.** Each half keeps the last validated value of the other's index and
//!   reloads it only when the cached value shows too little room or too few records
//!   (as `rtrb` does): on a busy ring most operations touch no line the other side writes.
//! * **Abandonment.** Dropping a half stores `STATE_ABANDONED` into its `state` word with
//!   `Release`, after its last index store. A half that finds the ring full/empty loads
//!   the peer's state with `Acquire`; if abandoned, it re-reads the peer's index once, so
//!   the consumer drains every committed record and then gets [`PopError::Disconnected`]
//!   (the producer gets [`PushError::Disconnected`]).
//! * **Liveness.** Each side publishes its pid when it claims its side and may bump a
//!   `heartbeat` counter. [`Consumer::peer_status`] / [`Producer::peer_status`] report
//!   abandonment, and a peer process that died without dropping its half (SIGKILL) as
//!   [`PeerStatus::Gone`] (a `kill(pid, 0)` check); a stuck heartbeat reveals a stalled
//!   peer. The survivor can always drain what was committed.
//! * **Sides.** Each side's `state` goes `FREE -> ATTACHED` by compare-and-swap when a
//!   half is created, so each side is taken once, by one handle in one process, ever,
//!   as long as the peer leaves that word alone: a peer that writes `FREE` back into our
//!   side's word lets a second claim of the same side succeed, and if our process makes
//!   one (a bug of its own), the two handles overwrite each other's records. Take each
//!   side once. In a process, halves are `Send`, not `Sync`, not `Clone`.
//!
//! # Trust model
//!
//! The peer process may be buggy or hostile: it may write any byte of the region at any
//! time. This crate guarantees that whatever it writes, our process sees an error or a
//! counted rejection, never undefined behaviour, a panic or an out-of-bounds access:
//!
//! * **Only atomic accesses to shared bytes.** The header is a `#[repr(C)]` struct of
//!   atomics and slot words are `AtomicU64`s: concurrent writes by the peer are not data
//!   races in the Rust memory model. No `&[u8]` into the region is ever handed out; records
//!   are copied into caller buffers.
//! * **Read once, then validate.** Every value read from the region (index, length word)
//!   is loaded once into a local, bounds-checked, and only the local is used.
//! * **Attach-time validation.** [`ShmRegion::from_fd`] reads the header with `pread`,
//!   checks magic, version, header length, capacity (power of two, bounded), slot size
//!   (multiple of 8, bounded), region length and the file size, and requires the file to
//!   be sealed against shrinking (`F_SEAL_SHRINK`), so the peer cannot truncate it under
//!   our mapping (a SIGBUS). The validated geometry is cached and never re-read: a peer
//!   rewriting the header later changes nothing ([`ShmRegion::verify_header`] reports it).
//! * **Indices.** Each half trusts only its own index, kept in process memory and only
//!   written to the region. A peer index that moves backwards, or beyond what the protocol
//!   allows (`tail > head + capacity`, `head > tail`), poisons the half with a
//!   [`CorruptError`]; every later call returns it. A half starts from the indices it
//!   finds when it takes its side (those of an earlier run on the region, normally 0),
//!   checked the same way; the producer also refuses a starting index above
//!   [`layout::MAX_CLAIM_INDEX`], which would let its own index overflow.
//! * **Records.** A length word larger than the slot is consumed, counted
//!   ([`Consumer::rejected`]) and reported as [`RecordError::TooLong`].
//! * **What a hostile peer can still do.** Deny service (never commit, or stop
//!   releasing), and feed garbage payload bytes of legal length: records carry no
//!   integrity check, that is the application's business.
//!
//! # Build configurations
//!
//! Under `--cfg qos_loom` the atomics come from loom (see the private `sync` facade), the
//! region lives on the heap ([`ShmRegion::create`] and [`pair`] only), and the layout
//! assertions are compiled out; `loom-tests/` model-checks this code.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

mod consumer;
mod error;
pub mod layout;
mod producer;
#[allow(unsafe_code)]
mod region;
mod side;
#[allow(unsafe_code)]
mod sync;

pub use consumer::{Consumer, ReadBatch};
pub use error::{CorruptError, PopError, PushError, RecordError, RegionError, Role};
pub use layout::RingConfig;
pub use producer::{Producer, WriteBatch};
pub use region::{ShmRegion, pair};
pub use side::PeerStatus;
