//! The one place `qos-loadgen` reads the clock.
//!
//! A [`Clock`] reads the wall clock once, when it starts, and the monotonic clock after
//! that: wall time is the start's wall time plus the monotonic time elapsed since. Send
//! timestamps therefore never step backwards within a run (an NTP step during the run
//! moves nothing), and offsets from the start are exact, which is what the sender's
//! active windows and the tests that check them rely on.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A monotonic clock anchored to the wall clock at its start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    anchor: Instant,
    anchor_wall_ns: u64,
}

impl Clock {
    /// Starts a clock now.
    #[allow(clippy::disallowed_methods)] // the load generator's single clock read
    pub fn start() -> Self {
        let anchor = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            anchor,
            anchor_wall_ns: u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Nanoseconds since [`start`](Self::start) (monotonic).
    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.anchor.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Wall-clock time of the start, ns since the Unix epoch.
    pub fn start_wall_ns(&self) -> u64 {
        self.anchor_wall_ns
    }

    /// Wall-clock time now, ns since the Unix epoch: the start's plus the elapsed time.
    pub fn wall_ns(&self) -> u64 {
        self.anchor_wall_ns.saturating_add(self.elapsed_ns())
    }

    /// The start as a [`SystemTime`] (for `.hlog` start times).
    pub fn start_system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.anchor_wall_ns)
    }
}
