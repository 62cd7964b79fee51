//! The tools' clocks, in one place (the workspace's clippy config forbids reading them
//! anywhere else).
#![allow(clippy::disallowed_methods)]

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Monotonic ms since the first call in this process.
pub fn monotonic_ms() -> u64 {
    origin().elapsed().as_millis() as u64
}

/// Monotonic ns since the first call in this process.
pub fn monotonic_ns() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// The monotonic clock, for deadlines.
pub fn now() -> Instant {
    Instant::now()
}

/// Wall clock, ns since the Unix epoch (what load-generator headers carry; the same
/// on every process of a machine).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Wall clock.
pub fn wall() -> SystemTime {
    SystemTime::now()
}
