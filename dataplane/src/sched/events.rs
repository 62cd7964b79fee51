//! Events the scheduler emits, through a bounded queue the caller drains.

use std::collections::VecDeque;

use super::priority::Priority;
use super::stream::StreamId;

/// Something the embedder (or the control plane) should know about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The stream's queue crossed `warning_percent` of its depth (S7); fires once per
    /// episode, until [`Event::BackpressureCleared`].
    BackpressureWarning {
        /// The stream.
        stream: StreamId,
        /// Packets queued when it fired.
        depth: u32,
    },
    /// The stream's queue was full and the arriving packet was tail-dropped (S7).
    BackpressureCritical {
        /// The stream.
        stream: StreamId,
        /// Packets queued.
        depth: u32,
        /// How many CRITICALs this episode has raised so far (1-based).
        strike: u8,
    },
    /// The queue fell to `clear_percent` of its depth or below: the episode is over,
    /// strikes reset.
    BackpressureCleared {
        /// The stream.
        stream: StreamId,
        /// Packets queued when it cleared.
        depth: u32,
    },
    /// The stream kept pushing after `critical_strikes` CRITICALs and was disconnected
    /// (S8); its queued packets were dropped with reason `disconnected`.
    Disconnected {
        /// The stream.
        stream: StreamId,
        /// Packets dropped, including the one whose push triggered it.
        dropped: u32,
    },
    /// A stream of the lowest tier had a packet older than the aging timeout and is now
    /// served in the aging lane (on top of its own tier's share) until its oldest packet
    /// is younger than the timeout (S9).
    Promoted {
        /// The stream.
        stream: StreamId,
        /// Its own priority.
        priority: Priority,
    },
    /// Over the last budget window, the p95 sojourn of `priority` exceeded its budget
    /// (more than 5% of its packets were over budget), `perf.budget.violation` (S10).
    BudgetViolation {
        /// The priority.
        priority: Priority,
        /// Packets dequeued at this priority in the window.
        samples: u64,
        /// Of those, how many waited longer than the budget.
        over_budget: u64,
        /// The budget, in ns.
        budget_ns: u64,
    },
}

/// Bounded event queue: reserved once, never grows; overflow is counted, not silent.
#[derive(Debug)]
pub(crate) struct EventQueue {
    queue: VecDeque<Event>,
    capacity: usize,
    lost: u64,
}

impl EventQueue {
    /// `None` if the memory cannot be had.
    pub(crate) fn try_with_capacity(capacity: usize) -> Option<Self> {
        let capacity = capacity.max(1);
        let mut queue = VecDeque::new();
        queue.try_reserve_exact(capacity).ok()?;
        Some(Self {
            queue,
            capacity,
            lost: 0,
        })
    }

    /// Queues `event`, or counts it lost when the queue is full.
    #[inline]
    pub(crate) fn push(&mut self, event: Event) {
        if self.queue.len() < self.capacity {
            self.queue.push_back(event);
        } else {
            self.lost += 1;
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Event> {
        self.queue.pop_front()
    }

    pub(crate) fn lost(&self) -> u64 {
        self.lost
    }
}
