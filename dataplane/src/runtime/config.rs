//! Runtime configuration: what [`DataplaneBuilder`](super::DataplaneBuilder) collects.

use std::time::Duration;

use thiserror::Error;

use crate::sched::{ConfigError, SchedulerConfig};

/// How workers are pinned to cores (T1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pinning {
    /// Worker `i` on core `i`; more workers than cores is a build error.
    Strict,
    /// Worker `i` on core `i mod cores`: workers share cores round robin when there are
    /// more workers than cores (reported by [`Dataplane::pinning`](super::Dataplane::pinning)).
    #[default]
    Wrap,
    /// No pinning: the OS places the threads.
    Off,
}

/// What an idle worker does (nothing in its rings, nothing eligible to send).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Spin forever (lowest latency, burns the core).
    Spin,
    /// Spin, then yield (crossbeam's `Backoff`), then park until a producer, the
    /// control side or the pacing deadline wakes it; parked at most `park_timeout`, so
    /// the heartbeat stays fresh.
    Backoff {
        /// Longest park, which is also the heartbeat period of an idle worker.
        park_timeout: Duration,
    },
}

impl Default for IdleStrategy {
    fn default() -> Self {
        Self::Backoff {
            park_timeout: Duration::from_millis(10),
        }
    }
}

/// Everything about the runtime except the policy and the egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Worker threads (1..=1024).
    pub workers: usize,
    /// Producer handles created by `build` (1..=1024); each has one ring per worker.
    pub producers: usize,
    /// Pinning policy.
    pub pinning: Pinning,
    /// Capacity of each (producer, worker) ring, in messages (2..=2^24; the builder also
    /// refuses rings this machine cannot allocate).
    pub ring_capacity: usize,
    /// Most messages a worker takes from one ring per iteration (>= 1).
    pub ingress_batch: usize,
    /// Most packets a worker dequeues per iteration (>= 1).
    pub egress_batch: usize,
    /// Idle behaviour.
    pub idle: IdleStrategy,
    /// Capacities of each worker's scheduler.
    pub scheduler: SchedulerConfig,
    /// An iteration longer than this counts as a stall.
    pub stall_budget: Duration,
    /// Longest interval between two publications of the scheduler counters.
    pub publish_interval: Duration,
    /// Period of the link-sharing recomputation (T6), at most 1 ms.
    pub link_period: Duration,
    /// Capacity of each worker's event ring (scheduler events for the control plane),
    /// 1..=2^24.
    pub event_capacity: usize,
    /// Benchmark baseline (P4): packets go from the rings straight to the egress in
    /// arrival order, unscheduled and unpaced (reported with priority 0 and no
    /// sojourn). Everything else in the loop runs as usual. Never for production.
    #[doc(hidden)]
    pub bypass_scheduler: bool,
    /// Benchmark baseline (P8): when `false`, the schedulers record no sojourn
    /// histograms. Never for production.
    #[doc(hidden)]
    pub sojourn_histograms: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            producers: 1,
            pinning: Pinning::default(),
            ring_capacity: 4096,
            ingress_batch: 64,
            egress_batch: 32,
            idle: IdleStrategy::default(),
            scheduler: SchedulerConfig::default(),
            stall_budget: Duration::from_millis(1),
            publish_interval: Duration::from_micros(100),
            link_period: Duration::from_micros(500),
            event_capacity: 4096,
            bypass_scheduler: false,
            sojourn_histograms: true,
        }
    }
}

impl RuntimeConfig {
    /// Checks every field; the error names it. (Whether the rings fit in memory depends
    /// on the packet type: the builder checks that before it allocates them.)
    pub fn validate(&self) -> Result<(), BuildError> {
        let bad = |field, value: usize, expected| {
            Err(BuildError::Config {
                field,
                value: value as u64,
                expected,
            })
        };
        if !(1..=1024).contains(&self.workers) {
            return bad("workers", self.workers, "1..=1024");
        }
        if !(1..=1024).contains(&self.producers) {
            return bad("producers", self.producers, "1..=1024");
        }
        if self.ring_capacity < 2 || self.ring_capacity > 1 << 24 {
            return bad("ring_capacity", self.ring_capacity, "2..=2^24");
        }
        if self.ingress_batch == 0 || self.ingress_batch > 1 << 16 {
            return bad("ingress_batch", self.ingress_batch, "1..=65536");
        }
        if self.egress_batch == 0 || self.egress_batch > 1 << 16 {
            return bad("egress_batch", self.egress_batch, "1..=65536");
        }
        if self.event_capacity == 0 || self.event_capacity > 1 << 24 {
            return bad("event_capacity", self.event_capacity, "1..=2^24");
        }
        let period = self.link_period.as_nanos();
        if period == 0 || period > 1_000_000 {
            return bad("link_period", period as usize, "1 ns..=1 ms");
        }
        Ok(())
    }
}

/// Why a dataplane could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A runtime setting is out of range.
    #[error("{field}: {value}, expected {expected}")]
    Config {
        /// Field name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// What is accepted.
        expected: &'static str,
    },
    /// A scheduler capacity is out of range.
    #[error("scheduler.{0}")]
    Scheduler(#[from] ConfigError),
    /// `Pinning::Strict` asked for a core this machine does not have, or pinning failed.
    #[error("pinning: worker {worker} needs core {core}, but only {available} cores are usable")]
    NoSuchCore {
        /// Worker index.
        worker: usize,
        /// Core index asked for.
        core: usize,
        /// Cores `core_affinity` reports.
        available: usize,
    },
    /// With a link rate, each worker needs a bucket that holds one largest packet.
    #[error(
        "policy.link.burst_bytes: {burst}, expected >= workers ({workers}) * max_packet_bytes ({max_packet}) so each worker's share of the burst holds a packet"
    )]
    BurstTooSmall {
        /// The policy's burst.
        burst: u64,
        /// Worker count.
        workers: usize,
        /// The policy's largest packet.
        max_packet: u32,
    },
    /// The OS refused to start a worker thread.
    #[error("spawning worker {worker}: {source}")]
    Spawn {
        /// Worker index.
        worker: usize,
        /// The OS error.
        source: std::io::Error,
    },
}

/// With a link rate and several workers, each worker's share of the burst must hold one
/// largest packet: what [`DataplaneBuilder::build`](super::DataplaneBuilder::build) and
/// [`Dataplane::publish_policy`](super::Dataplane::publish_policy) check, for a caller
/// validating a configuration before it starts anything.
pub fn check_burst(policy: &crate::sched::Policy, workers: usize) -> Result<(), BuildError> {
    if let Some(link) = policy.spec().link {
        let max_packet = policy.spec().max_packet_bytes;
        if workers > 1 && link.burst_bytes < workers as u64 * u64::from(max_packet) {
            return Err(BuildError::BurstTooSmall {
                burst: link.burst_bytes,
                workers,
                max_packet,
            });
        }
    }
    Ok(())
}
