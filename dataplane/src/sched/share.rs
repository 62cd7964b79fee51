//! Link sharing across workers (T6): the runtime gives each worker's scheduler its part
//! of the link rate and re-weights its tiers to the part of each tier's share it
//! carries. The scheduler only applies what it is told; the runtime computes it.

use super::Scheduler;
use super::policy::MAX_TIERS;

/// One worker's part of a shared link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkShare {
    /// This scheduler's pacing rate, in bit/s (>= 1).
    pub rate_bps: u64,
    /// Its bucket depth, in bytes: taken as at least one largest packet of the policy
    /// in force and at most 2^30.
    pub burst_bytes: u64,
    /// Relative SFQ weight of each tier of the running policy (any scale, e.g. bit/s;
    /// 0 counts as 1, so a tier that turns busy is never starved until the next update).
    pub tier_weights: [u64; MAX_TIERS],
}

impl<P> Scheduler<P> {
    /// Applies `share` at time `now`: time before `now` is credited to the link bucket
    /// at the old rate, after it at the new one (tokens held are kept, clamped to the
    /// new depth); tier weights change from the next decision. A depth outside
    /// `max_packet_bytes..=2^30` is clamped into it (0 would switch pacing off, more
    /// would overflow the token count). O(tiers), no allocation.
    /// The next [`Scheduler::set_policy`] restores the policy's own link and shares.
    pub fn set_link_share(&mut self, now: u64, share: LinkShare) {
        let now = self.now.max(now);
        self.now = now;
        let rate = share.rate_bps.max(1);
        let burst = share
            .burst_bytes
            .clamp(u64::from(self.c.max_packet), super::policy::MAX_BURST_BYTES);
        match self.link.as_mut() {
            Some(b) => b.reconfigure(rate, burst, now),
            None => {
                self.link = Some(super::shaper::TokenBucket::new(rate, burst, now));
            }
        }
        self.wfq.set_weights(&share.tier_weights);
    }
}
