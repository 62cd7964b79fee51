//! QoS dataplane: a sans-IO hierarchical WFQ scheduler.
#![deny(unsafe_code)]
pub mod sched;

/// The README's embedding example, compiled and run as a doctest.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
