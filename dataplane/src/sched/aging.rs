//! Starvation guard (S9): the aging lane.
//!
//! A cursor walks the listed streams of the lowest tier, one stream per check. Checks
//! are paced by time, not by packets: with `n` streams listed there, the next check is
//! due `aging_timeout / (4n)` after the last one, and a dequeue call (`dequeue`, or a
//! whole `dequeue_batch`) makes at most one, before its first decision. So every listed
//! stream of the tier is looked at within a quarter of the aging timeout of the last
//! visit whenever the scheduler is called at least `4n / aging_timeout` times per
//! second (and within `n` calls otherwise), and the cost is at most one stream look-up
//! per call, usually far less: each look-up is a likely cache miss, so a check per
//! packet would cost more than the rest of the decision. A stream whose oldest packet waited past
//! the aging timeout is promoted: it moves to the aging lane, a service class beside the
//! tiers whose share equals the lowest tier's (and doubles while every backlogged stream
//! of that tier is promoted, so the lane then also has the tier's own share). Inside the
//! lane promoted streams keep their own weights. A promoted stream therefore gets at
//! least what it had in its own tier (the lane's share is split among no more streams
//! than the tier's); the extra bandwidth, at most the lowest tier's share, comes from
//! every backlogged class in proportion to its share (from the lowest tier alone when
//! the other tiers are idle; a single-tier policy ages nothing). It returns to its
//! tier when its oldest packet is younger than the timeout again, or its queue
//! empties. Counters and budgets stay under the stream's
//! own priority, and its packets stay in order.
//!
//! Promotion cannot help a tier whose own offered load exceeds what it can get, so the
//! bound is enforced at the head: a lowest-tier packet older than the timeout plus one
//! second is dropped with reason `expired` instead of being sent (see `hot`). Such a
//! drop also checks its stream: the cursor's next visit may come after the grace, so a
//! stream whose next head has waited past the timeout is promoted there and then.

use super::pool::NIL;
use super::stream::{Flags, StreamId};
use super::{Event, Priority, Scheduler};

impl<P> Scheduler<P> {
    /// Looks at the stream under the aging cursor when a check is due.
    #[inline(always)]
    pub(super) fn aging_tick(&mut self, now: u64) {
        if now < self.aging_next {
            return;
        }
        self.aging_check(now);
    }

    #[inline(never)]
    fn aging_check(&mut self, now: u64) {
        if self.c.aging_ns == u64::MAX {
            self.aging_next = u64::MAX;
            return;
        }
        let n = u64::from(self.wfq.low_listed()).max(1);
        self.aging_next = now.saturating_add((self.c.aging_ns / (4 * n)).max(1));
        let s = self.wfq.cursor_step(&self.streams);
        if s != NIL {
            self.promote_if_aged(s, now);
        }
    }

    /// Promotes listed stream `s` of the lowest tier if its oldest packet has waited
    /// the aging timeout at `now` (and it is not promoted already).
    pub(super) fn promote_if_aged(&mut self, s: u32, now: u64) {
        let st = &self.streams[s as usize];
        if st.len == 0 || st.has(Flags::PROMOTED) {
            return;
        }
        let oldest = self.pool.get(st.fifo.head).stamp;
        if now.saturating_sub(oldest) >= self.c.aging_ns {
            self.promote(s);
        }
    }

    /// Moves listed stream `s` into the aging lane.
    fn promote(&mut self, s: u32) {
        self.wfq.unlink(&mut self.streams, s);
        let st = &mut self.streams[s as usize];
        st.set(Flags::PROMOTED);
        let priority = Priority::saturating(st.prio());
        let stream = StreamId::new(s, st.generation());
        self.wfq.link(&mut self.streams, s);
        self.prio_stats[priority.index()].promotions += 1;
        self.events.push(Event::Promoted { stream, priority });
    }

    /// Back to its own tier (its oldest packet is young again, it emptied, or the policy
    /// changed).
    pub(super) fn demote(&mut self, s: u32) {
        let listed = self.streams[s as usize].has(Flags::LISTED);
        if listed {
            self.wfq.unlink(&mut self.streams, s);
        } else if !self.streams[s as usize].has(Flags::THROTTLED) {
            // A lingering mark left in the lane does not count in the tier (a parked
            // stream's links hold its place on the timing wheel instead).
            self.streams[s as usize].clear_linger();
        }
        self.streams[s as usize].clear(Flags::PROMOTED);
        if listed && self.streams[s as usize].len > 0 {
            self.wfq.link(&mut self.streams, s);
        }
    }
}
