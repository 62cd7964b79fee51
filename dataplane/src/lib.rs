//! QoS dataplane: the packet-scheduling stage of a userspace transport or gateway.
//!
//! [`sched`] is the sans-IO hierarchical weighted fair queueing scheduler of one shard:
//! tiers sharing the link by percentage, weight `2^priority` inside a tier, round robin
//! inside a priority, link pacing, per-stream caps, bounded queues with backpressure,
//! aging, latency budgets and exact counters. The pinned worker runtime that feeds it
//! from SPSC rings and publishes policy snapshots builds on it.
#![deny(unsafe_code)]
#![warn(missing_docs)]
pub mod runtime;
pub mod sched;

/// The README's embedding example, compiled and run as a doctest.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
