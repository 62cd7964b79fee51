//! The operator's tools around the dataplane: `qosd` (a UDP QoS gateway),
//! `qos-loadgen` (its load generator and sink) and `qos-ctl` (the operator CLI).
//!
//! The binaries are thin: everything they do lives here, so that tests drive the same
//! code. [`header`] is the one definition of the load-generator datagram header, read
//! by both the gateway's classifier and the load generator's sink.
#![forbid(unsafe_code)]

pub mod config;
pub mod ctl;
pub mod daemon;
pub mod demo;
pub mod gateway;
pub mod header;
pub mod loadgen;
pub mod relay;
pub mod udp;
