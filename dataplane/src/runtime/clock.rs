//! The runtime's clock: the one place in the workspace that reads `Instant::now`
//! (STYLE 1). Workers read it once per loop iteration and pass the value to the
//! sans-IO scheduler as `now`.

use std::time::Instant;

/// Monotonic nanoseconds since the dataplane started, shared by every worker so that
/// their timestamps compare (the link-sharing coordination relies on it).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    #[allow(clippy::disallowed_methods)] // the single allowed clock read
    pub fn start() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since [`Clock::start`] (monotonic; saturates after 584 years).
    #[inline]
    #[allow(clippy::disallowed_methods)] // the single allowed clock read
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}
