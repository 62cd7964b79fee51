//! [`DataplaneBuilder`]: configures and starts the workers.

use std::sync::mpsc;
use std::time::Duration;

use super::config::{BuildError, IdleStrategy, Pinning, RuntimeConfig};
use super::counters::Gauge;
use super::producer::Producer;
use super::report::StreamReport;
use super::snapshot::SnapshotCell;
use super::sync::{Arc, AtomicBool, AtomicU64};
use super::worker::{self, Hists, ShmDecode, ShmInbox, WorkerParts};
use super::{Dataplane, Egress, Exchange, PinningReport, Shared, WorkerShared, mailbox};
use crate::sched::{Policy, Scheduler, SchedulerConfig};

/// Builds a [`Dataplane`]: `Dataplane::builder().workers(n)...build(egress_factory)`.
#[derive(Debug)]
pub struct DataplaneBuilder<P> {
    config: RuntimeConfig,
    shm: Vec<(usize, qos_shm_ring::Consumer, ShmDecodeDebug<P>)>,
    policy: std::sync::Arc<Policy>,
    drain_timeout: Duration,
    _packets: std::marker::PhantomData<fn(P)>,
}

impl<P: Send + 'static> DataplaneBuilder<P> {
    pub(crate) fn new() -> Self {
        Self {
            config: RuntimeConfig::default(),
            shm: Vec::new(),
            policy: std::sync::Arc::new(Policy::default()),
            drain_timeout: Duration::from_secs(5),
            _packets: std::marker::PhantomData,
        }
    }

    /// Every runtime setting at once.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Worker threads (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }

    /// Producer handles `build` returns (default 1).
    pub fn producers(mut self, n: usize) -> Self {
        self.config.producers = n;
        self
    }

    /// Pinning policy (default [`Pinning::Wrap`]).
    pub fn pinning(mut self, pinning: Pinning) -> Self {
        self.config.pinning = pinning;
        self
    }

    /// Capacity of each (producer, worker) ring, in messages.
    pub fn ring_capacity(mut self, n: usize) -> Self {
        self.config.ring_capacity = n;
        self
    }

    /// Most messages taken from one ring per iteration, and most packets dequeued per
    /// iteration.
    pub fn batch(mut self, ingress: usize, egress: usize) -> Self {
        self.config.ingress_batch = ingress;
        self.config.egress_batch = egress;
        self
    }

    /// Idle behaviour.
    pub fn idle(mut self, idle: IdleStrategy) -> Self {
        self.config.idle = idle;
        self
    }

    /// Capacities of each worker's scheduler.
    pub fn scheduler(mut self, config: SchedulerConfig) -> Self {
        self.config.scheduler = config;
        self
    }

    /// The first policy (default: the reference policy).
    pub fn policy(mut self, policy: std::sync::Arc<Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// Attaches a shared-memory ring from another process as ingress of worker
    /// `worker` (T2; record format in [`shm`](super::shm)); `decode` turns a packet
    /// record's payload bytes into a packet. The worker owns the ring's streams like
    /// a producer's. A graceful stop waits for the peer to abandon the ring (or the
    /// drain timeout). A decoder that must refuse what a hostile peer wrote should
    /// use [`DataplaneBuilder::shm_ingress_checked`]; a panic in `decode` is caught
    /// and counted as there.
    pub fn shm_ingress(
        self,
        worker: usize,
        consumer: qos_shm_ring::Consumer,
        mut decode: impl FnMut(&[u8]) -> P + Send + 'static,
    ) -> Self {
        self.shm_ingress_checked(worker, consumer, move |payload| Some(decode(payload)))
    }

    /// As [`DataplaneBuilder::shm_ingress`], with a decoder that may refuse a payload
    /// (`None`): the record is skipped and counted in
    /// [`WorkerStats::shm_rejected`](super::WorkerStats), like a malformed record, and
    /// the ring stays open. A panic in `decode` is caught and counted the same way (the
    /// worker and the other rings' packets are not harmed); the panic hook still runs
    /// for it (by default a message on stderr), which costs the worker far more than a
    /// refusal: a decoder facing a hostile peer should refuse, not panic.
    pub fn shm_ingress_checked(
        mut self,
        worker: usize,
        consumer: qos_shm_ring::Consumer,
        decode: impl FnMut(&[u8]) -> Option<P> + Send + 'static,
    ) -> Self {
        self.shm
            .push((worker, consumer, ShmDecodeDebug(Box::new(decode))));
        self
    }

    /// How long a `StopMode::Drain` shutdown may take before discarding (default 5 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Starts the workers; `egress(i)` makes worker `i`'s egress. Returns the control
    /// handle and the producers. Fails on a bad setting, on `Pinning::Strict` with too
    /// few cores, or if a thread cannot start; nothing keeps running after an error.
    pub fn build<E: Egress<P>>(
        self,
        mut egress: impl FnMut(usize) -> E,
    ) -> Result<(Dataplane<P>, Vec<Producer<P>>), BuildError> {
        let config = self.config;
        config.validate()?;
        let n = config.workers;
        check_ring_memory::<P>(&config)?;
        if let Some((worker, ..)) = self.shm.iter().find(|(w, ..)| *w >= n) {
            return Err(BuildError::Config {
                field: "shm_ingress.worker",
                value: *worker as u64,
                expected: "a worker index below `workers`",
            });
        }
        let mut shm: Vec<Vec<ShmInbox<P>>> = (0..n).map(|_| Vec::new()).collect();
        for (w, rx, decode) in self.shm {
            let max = rx.max_record();
            shm[w].push(ShmInbox {
                rx,
                decode: decode.0,
                buf: vec![0; max],
                done: false,
            });
        }
        let mut shm = shm.into_iter();
        super::config::check_burst(&self.policy, n)?;
        let cores = placement(config.pinning, n)?;
        let mut scheds = Vec::with_capacity(n);
        for _ in 0..n {
            let mut sched = Scheduler::<P>::new(config.scheduler, self.policy.clone())?;
            sched.set_sojourn_recording(config.sojourn_histograms);
            scheds.push(sched);
        }
        let shared = Arc::new(Shared {
            instance: super::sync::next_instance(),
            workers: (0..n).map(|_| WorkerShared::new()).collect(),
            clock: super::Clock::start(),
            policy: SnapshotCell::new(self.policy.clone()),
            link: super::link::LinkBoard::new(n),
            stop: AtomicU64::new(super::RUNNING),
            stop_deadline: AtomicU64::new(u64::MAX),
            drain_cut: AtomicBool::new(false),
            shed_tiers: AtomicU64::new(0),
            ring_full: (0..config.producers).map(|_| Gauge::default()).collect(),
            gates: (0..config.producers)
                .map(|_| super::gate::PushGate::new())
                .collect(),
        });
        // rings[p][w]
        let mut tx_rings: Vec<Vec<_>> = (0..config.producers).map(|_| Vec::new()).collect();
        let mut rx_rings: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
        for tx in tx_rings.iter_mut() {
            for rx in rx_rings.iter_mut() {
                let (t, r) = rtrb::RingBuffer::new(config.ring_capacity);
                tx.push(t);
                rx.push(r);
            }
        }
        let mut dataplane = Dataplane {
            shared: shared.clone(),
            threads: Vec::with_capacity(n),
            hists: Vec::with_capacity(n),
            reports: Vec::with_capacity(n),
            events: Vec::with_capacity(n),
            pinning: PinningReport {
                policy: config.pinning,
                cores: cores.iter().map(|c| c.map(|c| c.id)).collect(),
                shared_cores: false,
            },
            config,
            drain_timeout: self.drain_timeout,
            _packets: std::marker::PhantomData,
        };
        let (started_tx, started_rx) = mpsc::channel();
        for (w, (sched, inboxes)) in scheds.into_iter().zip(rx_rings).enumerate() {
            let (to_worker, hist_in) = mailbox::channel::<Hists>();
            let (hist_out, from_worker) = mailbox::channel::<Hists>();
            let (report_to_worker, report_in) = mailbox::channel::<Box<StreamReport>>();
            let (report_out, report_from_worker) = mailbox::channel::<Box<StreamReport>>();
            let (events_tx, events_rx) = rtrb::RingBuffer::new(config.event_capacity);
            let parts = WorkerParts {
                index: w,
                sched,
                inboxes,
                shm: shm.next().unwrap_or_default(),
                egress: egress(w),
                hist_in,
                hist_out,
                report_in,
                report_out,
                events: events_tx,
                shared: shared.clone(),
                config,
                policy: shared.policy.reader(),
                core: cores[w],
                strict: config.pinning == Pinning::Strict,
                started: started_tx.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("qos-worker-{w}"))
                .spawn(move || worker::run(parts))
                .map_err(|source| BuildError::Spawn { worker: w, source })?;
            dataplane.threads.push(Some(thread));
            dataplane.hists.push(Exchange {
                to_worker,
                from_worker,
                requested: false,
            });
            dataplane.reports.push(Exchange {
                to_worker: report_to_worker,
                from_worker: report_from_worker,
                requested: false,
            });
            dataplane.events.push(events_rx);
            // Wait for the worker to pin itself and set its doorbell before any
            // producer can push (so every push can ring it).
            match started_rx.recv() {
                Ok(Ok(pinned)) => {
                    // `Wrap` goes on when pinning fails: report the worker as unpinned.
                    if !pinned {
                        dataplane.pinning.cores[w] = None;
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(BuildError::Spawn {
                        worker: w,
                        source: std::io::Error::other("worker ended during start-up"),
                    });
                }
            }
        }
        // From the cores the workers did pin to (a failed pin shares nothing).
        dataplane.pinning.shared_cores = shares_a_core(&dataplane.pinning.cores);
        let producers = tx_rings
            .into_iter()
            .enumerate()
            .map(|(p, rings)| Producer::new(p, rings, shared.clone()))
            .collect();
        Ok((dataplane, producers))
    }
}

/// The core of each worker under `pinning` (T1).
fn placement(pinning: Pinning, n: usize) -> Result<Vec<Option<core_affinity::CoreId>>, BuildError> {
    if pinning == Pinning::Off {
        return Ok(vec![None; n]);
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    match pinning {
        Pinning::Strict if n > cores.len() => Err(BuildError::NoSuchCore {
            worker: cores.len(),
            core: cores.len(),
            available: cores.len(),
        }),
        _ if cores.is_empty() => Ok(vec![None; n]),
        _ => Ok((0..n).map(|w| Some(cores[w % cores.len()])).collect()),
    }
}

fn shares_a_core(cores: &[Option<usize>]) -> bool {
    let mut ids: Vec<usize> = cores.iter().flatten().copied().collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    ids.len() < n
}

/// A decoder, boxed (with a `Debug` that says so).
struct ShmDecodeDebug<P>(ShmDecode<P>);

impl<P> std::fmt::Debug for ShmDecodeDebug<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShmDecode")
    }
}

/// The rings are allocated whole, and a failed allocation aborts the process: ask the
/// allocator for all of their memory at once first (ingress: `ring_capacity` messages of
/// the packet type for every producer and worker; events: `event_capacity` per worker),
/// and refuse what it cannot give. Not a guard against running out of memory later:
/// with overcommit, pages are only taken as the rings fill.
fn check_ring_memory<P>(config: &RuntimeConfig) -> Result<(), BuildError> {
    let ingress = config
        .ring_capacity
        .checked_mul(std::mem::size_of::<super::producer::Msg<P>>())
        .and_then(|b| b.checked_mul(config.producers))
        .and_then(|b| b.checked_mul(config.workers));
    let events = config
        .event_capacity
        .checked_mul(std::mem::size_of::<worker::EventItem>())
        .and_then(|b| b.checked_mul(config.workers));
    let fits =
        |bytes: Option<usize>| bytes.is_some_and(|b| Vec::<u8>::new().try_reserve_exact(b).is_ok());
    // Both kinds together first: where memory is counted as a whole, each could fit
    // alone and not both.
    if fits(ingress.zip(events).and_then(|(i, e)| i.checked_add(e))) {
        return Ok(());
    }
    if !fits(ingress) {
        return Err(BuildError::Config {
            field: "ring_capacity",
            value: config.ring_capacity as u64,
            expected: "rings this machine can allocate (ring_capacity x the packet message's size x producers x workers bytes)",
        });
    }
    if !fits(events) {
        return Err(BuildError::Config {
            field: "event_capacity",
            value: config.event_capacity as u64,
            expected: "event rings this machine can allocate (event_capacity x the event's size x workers bytes)",
        });
    }
    Err(BuildError::Config {
        field: "ring_capacity",
        value: config.ring_capacity as u64,
        expected: "ingress and event rings this machine can allocate together",
    })
}
