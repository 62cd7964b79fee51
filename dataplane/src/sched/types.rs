//! The scheduler's public value types: configuration, errors, decisions and outputs.

use std::fmt;

use thiserror::Error;

use super::priority::Priority;
use super::stats::{DropReason, PriorityStats, RefuseReason, ServiceStats};
use super::stream::StreamId;

/// Capacities fixed when the scheduler is built (the policy can change later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most streams open at once (1..=2^31).
    pub max_streams: u32,
    /// Packet descriptors: most packets queued (or awaiting reclaim) at once.
    pub max_packets: u32,
    /// Events held before further ones are counted as lost.
    pub event_capacity: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_streams: 65_536,
            max_packets: 1 << 20,
            event_capacity: 4_096,
        }
    }
}

/// A capacity in [`SchedulerConfig`] is out of range.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{field}: {value}, expected {expected}")]
pub struct ConfigError {
    /// Field name.
    pub field: &'static str,
    /// The value given.
    pub value: u64,
    /// What is accepted.
    pub expected: &'static str,
}

/// Why a stream operation failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The handle names no open stream.
    #[error("stream {0}: unknown (never opened, or closed and its slot reused)")]
    Unknown(StreamId),
    /// The stream was closed.
    #[error("stream {0}: closed")]
    Closed(StreamId),
    /// `reopen` of a stream that is not disconnected.
    #[error("stream {0}: not disconnected, nothing to reopen")]
    NotDisconnected(StreamId),
    /// The stream was disconnected (S8); `reopen` it first.
    #[error("stream {0}: disconnected for ignoring backpressure; reopen it")]
    Disconnected(StreamId),
    /// Every stream slot is in use (or retired after exhausting its generations).
    #[error("max_streams: all {0} stream slots are open")]
    TableFull(u32),
    /// Weight override of 0.
    #[error("weight: 0, expected 1..=65535")]
    Weight,
    /// A rate cap field out of range.
    #[error("cap.{field}: {value}, expected {expected}")]
    Cap {
        /// Field name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// What is accepted.
        expected: &'static str,
    },
}

/// A packet the scheduler did not keep, handed back with the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected<P> {
    /// The caller's packet, untouched.
    pub packet: P,
    /// Why.
    pub reason: Rejection,
}

impl<P> fmt::Display for Rejected<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Rejection::Refused(r) => write!(f, "packet refused: {}", r.as_str()),
            Rejection::Dropped(r) => write!(f, "packet dropped: {}", r.as_str()),
        }
    }
}

impl<P: fmt::Debug> std::error::Error for Rejected<P> {}

/// Refused at the door, or counted as enqueued and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Not accepted; counted under [`ShardStats::refused`](super::ShardStats::refused), not as enqueued.
    Refused(RefuseReason),
    /// Counted as enqueued and dropped (S11): tail drop or the push that disconnected.
    Dropped(DropReason),
}

/// A dequeued packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Dequeued<P> {
    /// The caller's packet.
    pub packet: P,
    /// Its stream.
    pub stream: StreamId,
    /// Its length in bytes, as given to `enqueue`.
    pub len: u32,
    /// The stream's own priority (promotion does not change it).
    pub priority: Priority,
    /// Time from enqueue to this dequeue, in ns.
    pub sojourn_ns: u64,
}

/// What [`Scheduler::dequeue`](super::Scheduler::dequeue) decided.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Next<P> {
    /// Send this packet now.
    Packet(Dequeued<P>),
    /// Packets are queued but none may go before `until_ns` (pacing or caps).
    Wait {
        /// Earliest time to call `dequeue` again, in ns.
        until_ns: u64,
    },
    /// Nothing is queued.
    Idle,
}

/// A packet dropped inside the scheduler (AQM, expiry, disconnect or close), handed back
/// for reuse.
#[derive(Debug, PartialEq, Eq)]
pub struct Reclaimed<P> {
    /// Its stream.
    pub stream: StreamId,
    /// The caller's packet.
    pub packet: P,
    /// Why it was dropped (already counted).
    pub reason: DropReason,
}

/// Counters of one tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Sum of the counters of the tier's priorities (under the current policy).
    pub totals: PriorityStats,
    /// What the tier served (promoted streams count where they were served).
    pub served: ServiceStats,
}

/// How a [`Scheduler::dequeue_batch`](super::Scheduler::dequeue_batch) call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum BatchEnd {
    /// `max` packets were taken; more may be eligible now.
    Full,
    /// Packets are queued but none may go before `until_ns` (pacing or caps).
    Wait {
        /// Earliest time to ask again, in ns.
        until_ns: u64,
    },
    /// Nothing is queued.
    Idle,
}
