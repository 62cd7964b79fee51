//! Starvation guard (S9): streams of the lowest tier whose oldest packet waited past the
//! aging timeout are served at the promotion priority until it is younger again.
//!
//! A cursor walks the lowest tier's backlogged streams, one stream every eighth
//! decision, so the check costs O(1) per packet and reaches every such stream within
//! `8 * n` decisions. A promoted stream keeps its own priority for counters and
//! budgets; only where it is served changes, and its packets stay in order.

use super::pool::NIL;
use super::stats::PriorityStats;
use super::stream::{ACTIVE, PROMOTED, StreamId, WEIGHT_SET};
use super::wfq::{BUCKETS, group_of};
use super::{Event, Scheduler};

impl<P> Scheduler<P> {
    /// Checks the stream under the aging cursor (every eighth call) and moves it on.
    #[inline]
    pub(super) fn aging_tick(&mut self, now: u64) {
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks & 7 != 0 {
            return;
        }
        let low = self.c.low_tier;
        let groups = self.wfq.tier_groups(low);
        if groups == 0 {
            return;
        }
        let mut s = self.aging_cursor;
        let valid = |s: u32| {
            self.streams.get(s as usize).is_some_and(|st| {
                st.has(ACTIVE) && !st.has(PROMOTED) && self.wfq.tier_of(st.prio) == low
            })
        };
        if !valid(s) {
            s = self.wfq.group_head(groups.trailing_zeros() as usize);
        }
        let st = &self.streams[s as usize];
        if st.has(PROMOTED) {
            // Only after a policy change made the target part of the lowest tier.
            self.aging_cursor = NIL;
            return;
        }
        let next = if st.next != NIL {
            st.next
        } else {
            let gid = group_of(st.prio, st.weight);
            let later = if gid + 1 >= 8 * BUCKETS {
                0
            } else {
                groups & (!0u128 << (gid + 1))
            };
            if later == 0 {
                NIL
            } else {
                self.wfq.group_head(later.trailing_zeros() as usize)
            }
        };
        let oldest = self.pool.get(st.fifo.head).stamp;
        if now.saturating_sub(oldest) >= self.c.aging_ns {
            self.promote(s);
        }
        self.aging_cursor = next;
    }

    /// Serves stream `s` at the promotion priority from the next decision on.
    fn promote(&mut self, s: u32) {
        self.wfq.deactivate(&mut self.streams, s);
        let to = self.c.promote_to;
        let st = &mut self.streams[s as usize];
        let from = st.base;
        st.flags |= PROMOTED;
        st.prio = to;
        if !st.has(WEIGHT_SET) {
            st.weight = 1 << to;
        }
        let stream = StreamId::new(s, st.generation);
        self.wfq.activate(&mut self.streams, s);
        let ps: &mut PriorityStats = &mut self.prio_stats[usize::from(from)];
        ps.promotions += 1;
        self.events.push(Event::Promoted { stream, from, to });
    }

    /// Back to its own priority: its oldest packet is younger than the timeout.
    pub(super) fn demote(&mut self, s: u32) {
        self.wfq.deactivate(&mut self.streams, s);
        self.restore_priority(s);
        self.wfq.activate(&mut self.streams, s);
    }

    /// Clears the promotion of an inactive stream.
    pub(super) fn restore_priority(&mut self, s: u32) {
        let st = &mut self.streams[s as usize];
        st.flags &= !PROMOTED;
        st.prio = st.base;
        if !st.has(WEIGHT_SET) {
            st.weight = 1 << st.base;
        }
    }
}
