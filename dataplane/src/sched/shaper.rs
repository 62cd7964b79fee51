//! Token buckets for link pacing (S5) and per-stream rate caps (S6).
//!
//! Tokens are counted in bit-nanoseconds per second (`bits * 10^9`), so that one
//! nanosecond at `rate_bps` adds exactly `rate_bps` tokens: refilling multiplies and
//! never divides, and the bound `bytes <= rate * t + burst` holds exactly in integers.
//! Divisions compute how long to wait, on the path that returns a wait, and an
//! oversize packet's excess (below), on a cold path.
//!
//! A packet larger than the whole bucket (one queued before a policy change shrank
//! the burst below it) cannot wait for its tokens, which would never fit: it passes
//! when the bucket is full and pays the rest in time, the bucket earning nothing until
//! the excess is paid off. So the long-run rate holds exactly, and over any interval
//! `t` the bytes through one bucket are at most `rate * t + max(burst, largest
//! packet)`.

const NS_PER_SEC: u64 = 1_000_000_000;

/// A token bucket that starts full.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    tokens: u64,
    depth: u64,
    rate_bps: u64,
    /// Idle time after which the bucket is full whatever it held.
    fill_ns: u64,
    /// When tokens were last added; later than the clock while an oversize packet's
    /// excess is paid off (the bucket earns from here on).
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
    /// rate, the ones held are kept (clamped to the new depth), never refilled; an
    /// excess still owed is carried over, paid at the new rate.
    pub(crate) fn reconfigure(&mut self, rate_bps: u64, burst_bytes: u64, now: u64) {
        self.refill(now);
        let (tokens, last, old_rate) = (self.tokens, self.last, self.rate_bps);
        let owing_ns = last.saturating_sub(now);
        *self = Self::new(rate_bps, burst_bytes, last);
        self.tokens = tokens.min(self.depth);
        if owing_ns > 0 {
            // The tokens owed: nanoseconds owed (at most a 64 KiB packet's worth at
            // 1 bit/s, under 2^49) times a rate under 2^64, so u128.
            let owed = u128::from(owing_ns) * u128::from(old_rate);
            let ns = owed.div_ceil(u128::from(self.rate_bps));
            self.last = now.saturating_add(u64::try_from(ns).unwrap_or(u64::MAX));
        }
    }

    /// Tokens `len` bytes take at full size.
    #[inline(always)]
    fn size(len: u32) -> u64 {
        u64::from(len) * 8 * NS_PER_SEC
    }

    /// Tokens `len` bytes must find in the bucket: all of them, or a full bucket for
    /// a packet larger than the bucket (the rest is paid in time by `consume`).
    #[inline(always)]
    fn cost(&self, len: u32) -> u64 {
        Self::size(len).min(self.depth)
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
            // The bucket earns from `last` on (later than `now` while an excess is owed).
            let owing = self.last.saturating_sub(now);
            Some(owing.saturating_add((cost - self.tokens).div_ceil(self.rate_bps)))
        }
    }

    /// Takes the tokens for `len` bytes; call only after `wait_for` returned `None`.
    /// A packet larger than the bucket empties it, and the bucket earns nothing until
    /// its excess is paid off at the rate.
    #[inline]
    pub(crate) fn consume(&mut self, len: u32) {
        let size = Self::size(len);
        if size <= self.depth {
            self.tokens = self.tokens.saturating_sub(size);
        } else {
            self.oversize(size);
        }
    }

    #[cold]
    #[inline(never)]
    fn oversize(&mut self, size: u64) {
        self.tokens = 0;
        let excess_ns = (size - self.depth).div_ceil(self.rate_bps);
        self.last = self.last.saturating_add(excess_ns);
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
        // It pays its 7,500 bytes beyond the bucket in time: the bucket earns nothing
        // for 7.5 ms, then refills at the rate.
        b.consume(9000);
        assert_eq!(b.wait_for(1_500_000, 100), Some(7_600_000));
        assert_eq!(b.wait_for(9_000_000, 100), Some(100_000));
        assert_eq!(b.wait_for(9_100_000, 100), None);
        assert_eq!(
            b.wait_for(9_000_000 + 1_500_000, 9000),
            None,
            "full again 1.5 ms after the excess is paid"
        );
    }

    /// Over any interval the bytes a bucket passes stay within `rate * t + max(burst,
    /// largest packet)`, and in the long run within `rate * t + burst`: an oversize
    /// packet is charged all its bytes (S5, S6).
    #[test]
    fn s5_s6_oversize_packets_are_charged_in_full() {
        // 1 byte a microsecond, burst 1,500; 50 packets of 9,000 bytes sent as soon as
        // they may.
        let mut b = TokenBucket::new(8_000_000, 1500, 0);
        let mut now = 0;
        let mut sent = Vec::new();
        for _ in 0..50 {
            if let Some(w) = b.wait_for(now, 9000) {
                now += w;
            }
            assert_eq!(b.wait_for(now, 9000), None);
            b.consume(9000);
            sent.push(now);
        }
        for (i, &a) in sent.iter().enumerate() {
            for (j, &z) in sent.iter().enumerate().skip(i) {
                let bytes = 9000 * (j - i + 1) as u64;
                let t_us = (z - a) / 1000;
                assert!(bytes <= t_us + 9000, "{bytes} B in {t_us} us");
            }
        }
        let span_us = (sent[49] - sent[0]) / 1000;
        assert_eq!(
            span_us,
            49 * 9000,
            "one packet every 9 ms: the rate exactly"
        );
    }

    #[test]
    fn s5_an_excess_owed_is_carried_over_a_rate_change() {
        let mut b = TokenBucket::new(8_000_000, 1500, 0);
        assert_eq!(b.wait_for(0, 9000), None);
        b.consume(9000); // owes 7,500 bytes: 7.5 ms at 1 B/us
        // 1.5 ms later the rate doubles: 6,000 bytes still owed take 3 ms.
        b.reconfigure(16_000_000, 1500, 1_500_000);
        assert_eq!(b.wait_for(1_500_000, 200), Some(3_000_000 + 100_000));
        assert_eq!(b.wait_for(4_600_000, 200), None);
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
