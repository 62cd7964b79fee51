//! QoS dataplane: a sans-IO hierarchical WFQ scheduler.
#![deny(unsafe_code)]
pub mod sched;
