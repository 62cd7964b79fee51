//! Token buckets for link pacing (S5) and per-stream rate caps (S6).
//!
//! Tokens are counted in bit-nanoseconds per second (`bits * 10^9`), so that one
//! nanosecond at `rate_bps` adds exactly `rate_bps` tokens: refilling multiplies and
//! never divides, and the bound `bytes <= rate * t + burst` holds exactly in integers.
//! The only division computes how long to wait, on the path that returns a wait.

const NS_PER_SEC: u64 = 1_000_000_000;

/// A token bucket that starts full.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    tokens: u64,
    depth: u64,
    rate_bps: u64,
    /// Idle time after which the bucket is full whatever it held.
    fill_ns: u64,
    last: u64,
}

impl TokenBucket {
    /// A full bucket of `burst_bytes` refilled at `rate_bps` (both > 0, burst <= 2^30).
    pub(crate) fn new(rate_bps: u64, burst_bytes: u64, now: u64) -> Self {
        let depth = burst_bytes * 8 * NS_PER_SEC;
        let rate_bps = rate_bps.max(1);
        Self {
            tokens: depth,
            depth,
            rate_bps,
            fill_ns: depth.div_ceil(rate_bps),
            last: now,
        }
    }

    /// Changes rate and depth at `now`: tokens earned so far are credited at the old
    /// rate, the ones held are kept (clamped to the new depth), never refilled.
    pub(crate) fn reconfigure(&mut self, rate_bps: u64, burst_bytes: u64, now: u64) {
        self.refill(now);
        let (tokens, last) = (self.tokens, self.last);
        *self = Self::new(rate_bps, burst_bytes, last);
        self.tokens = tokens.min(self.depth);
    }

    /// Tokens `len` bytes take. A packet larger than the whole bucket (possible only
    /// when a policy change shrank the burst below a packet already queued) takes a full
    /// bucket, so it waits for one and then passes instead of waiting forever.
    #[inline(always)]
    fn cost(&self, len: u32) -> u64 {
        (u64::from(len) * 8 * NS_PER_SEC).min(self.depth)
    }

    /// Adds the tokens earned since the last call (time never runs backwards here).
    #[inline]
    pub(crate) fn refill(&mut self, now: u64) {
        let dt = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        self.tokens = if dt >= self.fill_ns {
            self.depth
        } else {
            // dt < fill_ns, so dt * rate < depth + rate: no overflow.
            (self.tokens + dt * self.rate_bps).min(self.depth)
        };
    }

    /// Refills, then returns `None` if `len` bytes may pass now, or the nanoseconds to
    /// wait until they may.
    #[inline]
    pub(crate) fn wait_for(&mut self, now: u64, len: u32) -> Option<u64> {
        self.refill(now);
        let cost = self.cost(len);
        if self.tokens >= cost {
            None
        } else {
            Some((cost - self.tokens).div_ceil(self.rate_bps))
        }
    }

    /// Takes the tokens for `len` bytes; call only after `wait_for` returned `None`.
    #[inline]
    pub(crate) fn consume(&mut self, len: u32) {
        self.tokens = self.tokens.saturating_sub(self.cost(len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_bucket_starts_full_and_refills_at_rate() {
        // 8 Mbit/s = 1 byte per microsecond, burst 1500 bytes.
        let mut b = TokenBucket::new(8_000_000, 1500, 0);
        assert_eq!(b.wait_for(0, 1500), None);
        b.consume(1500);
        assert_eq!(b.wait_for(0, 100), Some(100_000), "100 bytes at 1 B/us");
        assert_eq!(b.wait_for(100_000, 100), None);
        b.consume(100);
        assert_eq!(
            b.wait_for(10_000_000_000, 1500),
            None,
            "full after a long idle"
        );
    }

    #[test]
    fn s5_packet_larger_than_the_bucket_passes_once_it_is_full() {
        let mut b = TokenBucket::new(8_000_000, 1500, 0);
        b.consume(1500);
        assert_eq!(
            b.wait_for(0, 9000),
            Some(1_500_000),
            "waits for a full bucket"
        );
        assert_eq!(b.wait_for(1_500_000, 9000), None);
    }

    #[test]
    fn s5_reconfigure_credits_elapsed_time_at_the_old_rate() {
        let mut b = TokenBucket::new(8_000_000, 1500, 0);
        b.consume(1500);
        b.reconfigure(80_000_000, 1500, 100_000); // 100 us at 1 B/us: 100 bytes earned
        assert_eq!(b.wait_for(100_000, 100), None);
        b.consume(100);
        assert_eq!(b.wait_for(100_000, 10), Some(1_000), "new rate: 10 B/us");
    }
}
