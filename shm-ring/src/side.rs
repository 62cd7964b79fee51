//! What both halves share: claiming a side, liveness (abandon flag, heartbeat, pid),
//! and copying records between caller buffers and slot words.

use crate::error::{RecordError, RegionError, Role};
use crate::layout::{Header, STATE_ABANDONED, STATE_ATTACHED, STATE_FREE, SideLine};
use crate::sync::{DataCell, Ordering};

/// What a half can tell about the other half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStatus {
    /// Nobody has taken the other side yet.
    NotAttached,
    /// The other side is attached and (as far as a pid check can tell) its process runs.
    Alive,
    /// The other side dropped its half; what it committed can still be drained.
    Abandoned,
    /// The other side is attached but its process no longer exists (crashed or killed
    /// without dropping its half). Pids can be reused, so `Alive` is a hint, `Gone` is
    /// certain. Only reported in normal (non-loom) builds.
    Gone {
        /// The pid it had published.
        pid: u32,
    },
    /// The other side's state word holds a value the protocol never writes.
    Invalid {
        /// The value found.
        state: u32,
    },
}

/// The role's line in the header.
pub(crate) fn line(header: &Header, role: Role) -> &SideLine {
    match role {
        Role::Producer => &header.producer,
        Role::Consumer => &header.consumer,
    }
}

/// The other role.
pub(crate) fn other(role: Role) -> Role {
    match role {
        Role::Producer => Role::Consumer,
        Role::Consumer => Role::Producer,
    }
}

/// Takes `role`'s side of the ring: exactly one claimer ever wins.
pub(crate) fn claim(header: &Header, role: Role) -> Result<(), RegionError> {
    let own = line(header, role);
    // Relaxed: only atomicity matters (one winner); the indices read after a successful
    // claim carry their own Acquire loads (partners: the peer's Release index stores).
    own.state
        .compare_exchange(
            STATE_FREE,
            STATE_ATTACHED,
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .map_err(|state| RegionError::RoleTaken { role, state })?;
    // Relaxed: informational; the peer reads it with a Relaxed load in `peer_status` and
    // treats 0 (not yet visible) as unknown.
    own.pid.store(own_pid(), Ordering::Relaxed);
    Ok(())
}

/// Marks `role`'s side as abandoned; called from the halves' `Drop`.
pub(crate) fn abandon(header: &Header, role: Role) {
    // Release: orders every earlier index store of this half before the flag; partner:
    // the Acquire load of `state` in `peer_abandoned` / `peer_status`.
    line(header, role)
        .state
        .store(STATE_ABANDONED, Ordering::Release);
}

/// Whether the other side has abandoned the ring. When true, the other side's index has
/// its final value and a fresh Acquire load of it sees every committed record.
pub(crate) fn peer_abandoned(header: &Header, role: Role) -> bool {
    // Acquire: partner is the Release store of STATE_ABANDONED in `abandon`.
    line(header, other(role)).state.load(Ordering::Acquire) == STATE_ABANDONED
}

/// Publishes a new heartbeat value for `role`.
pub(crate) fn beat(header: &Header, role: Role, value: u64) {
    // Relaxed: a liveness hint with no data attached; partner: the Relaxed load in
    // `peer_heartbeat`.
    line(header, role).heartbeat.store(value, Ordering::Relaxed);
}

/// The other side's heartbeat counter.
pub(crate) fn peer_heartbeat(header: &Header, role: Role) -> u64 {
    // Relaxed: partner is the Relaxed store in `beat`; no data is read on its account.
    line(header, other(role)).heartbeat.load(Ordering::Relaxed)
}

/// The other side's status (see [`PeerStatus`]).
pub(crate) fn peer_status(header: &Header, role: Role) -> PeerStatus {
    let peer = line(header, other(role));
    // Acquire: partner is the Release store of STATE_ABANDONED in `abandon`.
    match peer.state.load(Ordering::Acquire) {
        STATE_FREE => PeerStatus::NotAttached,
        STATE_ABANDONED => PeerStatus::Abandoned,
        // Relaxed: partner is the Relaxed store in `claim`; a stale 0 reads as unknown.
        STATE_ATTACHED => pid_status(peer.pid.load(Ordering::Relaxed)),
        state => PeerStatus::Invalid { state },
    }
}

#[cfg(not(qos_loom))]
fn own_pid() -> u32 {
    rustix::process::getpid()
        .as_raw_nonzero()
        .get()
        .unsigned_abs()
}

#[cfg(qos_loom)]
fn own_pid() -> u32 {
    0
}

/// Checks with `kill(pid, 0)` whether the process still exists. A pid the peer wrote is
/// untrusted: 0 reads as unknown (alive), values outside `1..=i32::MAX` as invalid.
#[cfg(not(qos_loom))]
fn pid_status(pid: u32) -> PeerStatus {
    let Ok(raw) = i32::try_from(pid) else {
        return PeerStatus::Invalid {
            state: STATE_ATTACHED,
        };
    };
    let Some(p) = rustix::process::Pid::from_raw(raw) else {
        return PeerStatus::Alive;
    };
    match rustix::process::test_kill_process(p) {
        Err(rustix::io::Errno::SRCH) => PeerStatus::Gone { pid },
        // EPERM: the process exists but belongs to someone else.
        _ => PeerStatus::Alive,
    }
}

#[cfg(qos_loom)]
fn pid_status(_pid: u32) -> PeerStatus {
    PeerStatus::Alive
}

/// Writes one record into the slot whose words are `slot` (length word first).
/// The caller checked `record.len() <= (slot.len() - 1) * 8`.
#[inline(always)]
pub(crate) fn write_record(slot: &[DataCell], record: &[u8]) {
    let Some((len_word, words)) = slot.split_first() else {
        return;
    };
    len_word.store(record.len() as u64);
    let mut chunks = record.chunks_exact(8);
    let mut cells = words.iter();
    for (chunk, cell) in (&mut chunks).zip(&mut cells) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        cell.store(u64::from_le_bytes(b));
    }
    let rest = chunks.remainder();
    if let (false, Some(cell)) = (rest.is_empty(), cells.next()) {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        cell.store(u64::from_le_bytes(b));
    }
}

/// Copies one record out of the slot whose words are `slot` into `buf`, reading the
/// length word exactly once and bounds-checking it before anything else.
#[inline(always)]
pub(crate) fn read_record(slot: &[DataCell], buf: &mut [u8]) -> Result<usize, RecordError> {
    let Some((len_word, words)) = slot.split_first() else {
        return Err(RecordError::TooLong { len: 0, max: 0 });
    };
    let max = words.len() * 8;
    let len = len_word.load();
    if len > max as u64 {
        return Err(RecordError::TooLong { len, max });
    }
    let len = len as usize;
    let Some(out) = buf.get_mut(..len) else {
        return Err(RecordError::BufferTooSmall {
            len,
            buf: buf.len(),
        });
    };
    let mut chunks = out.chunks_exact_mut(8);
    let mut cells = words.iter();
    for (chunk, cell) in (&mut chunks).zip(&mut cells) {
        chunk.copy_from_slice(&cell.load().to_le_bytes());
    }
    let rest = chunks.into_remainder();
    if let (false, Some(cell)) = (rest.is_empty(), cells.next()) {
        let n = rest.len();
        rest.copy_from_slice(&cell.load().to_le_bytes()[..n]);
    }
    Ok(len)
}
