//! A receive thread: one `SO_REUSEPORT` socket, batched receive (recvmmsg, with GRO
//! where the kernel has it), inspection, the flow table, and the enqueue into the
//! dataplane through this thread's producer. Each iteration is bounded: one receive
//! batch, then a flush of the doorbells.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use qos_dataplane::runtime::{Clock, ControlError, EnqueueError, Producer, StreamHandle};
use qos_dataplane::sched::StreamConfig;
use quinn_udp::{UdpSockRef, UdpSocketState};

use super::Packet;
use super::classify::{Class, Classifier, FlowKey, Kind, inspect};
use super::counters::{GatewayCounters, GatewayDrop, N_DROPS, StreamCounters};
use crate::udp::{BatchRecv, segments};

/// How long a receive waits for readiness before checking the stop flag.
const POLL_MS: i64 = 20;

/// A flow's cached classification.
#[derive(Debug)]
struct Flow {
    stream: usize,
    /// Index of its destination ([`GatewayCounters::dest_index`]).
    dest: u32,
    last_seen_ms: u64,
}

/// A stream this thread opened.
#[derive(Debug)]
struct Slot {
    key: u64,
    priority: u8,
    handle: StreamHandle,
    counters: Arc<StreamCounters>,
    last_seen_ms: u64,
    /// The batch whose tally `tally` is (a stale batch number: none yet).
    tally_batch: u64,
    tally: usize,
}

/// A stream's counts in the current batch, added to its counters at the batch's
/// phase ends.
#[derive(Debug)]
struct Tally {
    counters: Arc<StreamCounters>,
    received: u64,
    enqueued: u64,
    dropped: [u64; N_DROPS],
}

/// The gateway-wide counts of the current batch.
#[derive(Debug, Default)]
struct Totals {
    received: u64,
    received_bytes: u64,
    flow_hits: u64,
    flow_misses: u64,
    copied_alone: u64,
    dropped: [u64; N_DROPS],
}

/// A datagram classified and waiting for its enqueue.
#[derive(Debug)]
struct Staged {
    handle: StreamHandle,
    tally: usize,
    packet: Packet,
}

/// The last flow looked up in this batch: one sender's GRO buffer is one flow, so
/// most datagrams of a batch skip the hash.
#[derive(Debug)]
struct LastFlow {
    key: FlowKey,
    slot: usize,
    dest: u32,
}

/// Copies of receive buffers, recycled once no packet refers to them any more: the
/// memory stays warm and is neither freed by the worker nor handed back to the OS
/// and faulted in again (a fresh allocation per buffer cost more than the copy).
#[derive(Debug, Default)]
struct BufPool {
    bufs: std::collections::VecDeque<Arc<Vec<u8>>>,
}

/// Most buffers the pool keeps (each at most 64 KiB). When every one is held by
/// queued packets, datagrams are copied one by one instead: a queued datagram keeps its
/// whole receive buffer alive, so this bounds what sharing can add to the memory of
/// the queues (32 MiB per receive thread), whatever the queues hold.
const POOL_MAX: usize = 512;
/// Pooled buffers looked at per copy before allocating.
const POOL_TRIES: usize = 4;

impl BufPool {
    /// A shared copy of `data`, or `None` when every pooled buffer is still held and
    /// the pool is full.
    fn copy(&mut self, data: &[u8]) -> Option<Arc<Vec<u8>>> {
        for _ in 0..POOL_TRIES.min(self.bufs.len()) {
            if let Some(front) = self.bufs.front_mut()
                && let Some(v) = Arc::get_mut(front)
            {
                v.clear();
                v.extend_from_slice(data);
                let shared = front.clone();
                self.bufs.rotate_left(1);
                return Some(shared);
            }
            // Still in use (buffers are mostly released in the order they were
            // filled): look at the next one.
            self.bufs.rotate_left(1);
        }
        if self.bufs.len() >= POOL_MAX {
            return None;
        }
        let shared = Arc::new(data.to_vec());
        self.bufs.push_back(shared.clone());
        Some(shared)
    }
}

/// How the datagrams of one receive buffer hold their bytes.
#[derive(Debug)]
enum Share {
    /// Not decided yet (no datagram of the buffer kept so far).
    Unset,
    /// Ranges of one pooled copy of the buffer.
    Pooled(Arc<Vec<u8>>),
    /// A copy each (the pool is exhausted).
    Own,
}

/// Settings of a receive thread.
#[derive(Debug, Clone)]
pub struct RxSettings {
    /// Longest datagram forwarded.
    pub max_datagram: usize,
    /// Flow table capacity.
    pub flow_table: usize,
    /// Idle time after which a flow may be evicted.
    pub flow_idle_ms: u64,
}

/// The flow table's hasher: fast and randomly seeded (flow keys come from remote
/// senders; a fixed hash would let them pick colliding keys).
type FlowHasher = foldhash::fast::RandomState;

/// The receive loop state.
pub struct Rx {
    socket: UdpSocket,
    state: UdpSocketState,
    local_port: u16,
    producer: Producer<Packet>,
    classifier: Arc<ArcSwap<Classifier>>,
    counters: Arc<GatewayCounters>,
    settings: RxSettings,
    flows: HashMap<FlowKey, Flow, FlowHasher>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_key: HashMap<(u64, u8), usize>,
    generation: u64,
    /// When the flow table was last swept for idle flows.
    swept_at_ms: Option<u64>,
    /// Monotonic time for flow idleness.
    clock: Clock,
    /// Batch number (starts at 1; 0 is no batch).
    batch: u64,
    last: Option<LastFlow>,
    tallies: Vec<Tally>,
    totals: Totals,
    staged: Vec<Staged>,
    pool: BufPool,
}

impl std::fmt::Debug for Rx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rx")
            .field("local_port", &self.local_port)
            .field("flows", &self.flows.len())
            .finish_non_exhaustive()
    }
}

impl Rx {
    /// A receive loop over `socket` feeding `producer`.
    pub fn new(
        socket: UdpSocket,
        producer: Producer<Packet>,
        classifier: Arc<ArcSwap<Classifier>>,
        counters: Arc<GatewayCounters>,
        settings: RxSettings,
    ) -> std::io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let local_port = socket.local_addr()?.port();
        let generation = classifier.load().generation;
        Ok(Self {
            socket,
            state,
            local_port,
            producer,
            classifier,
            counters,
            settings,
            flows: HashMap::with_hasher(FlowHasher::default()),
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            generation,
            swept_at_ms: None,
            clock: Clock::start(),
            batch: 0,
            last: None,
            tallies: Vec::new(),
            totals: Totals::default(),
            staged: Vec::new(),
            pool: BufPool::default(),
        })
    }

    /// Receives until `stop` is set; then drops the producer (the workers see this
    /// producer is done).
    ///
    /// A batch goes in two phases: every datagram is inspected, classified and
    /// counted as received (the counts added once per batch and stream), then the
    /// classified ones are enqueued (and those counts added). So a datagram is counted
    /// received before a worker can forward it, as when each was counted on its own,
    /// and every count is added before the next receive and before the thread ends.
    pub fn run(mut self, stop: &AtomicBool) {
        let mut batch = BatchRecv::new();
        while !stop.load(Relaxed) {
            let n = match batch.recv(&self.socket, &self.state, POLL_MS) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "qosd: receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let now_ms = self.clock.now_ns() / 1_000_000;
            self.refresh_classifier();
            self.batch += 1;
            self.last = None;
            for (src, buf, stride) in batch.buffers(n) {
                // The buffer's one copy, shared by its datagrams, made when the first
                // of them is kept.
                let mut shared = Share::Unset;
                for range in segments(buf.len(), stride) {
                    self.handle(src, buf, range, &mut shared, now_ms);
                }
            }
            self.enqueue_staged();
            self.producer.flush();
            self.tallies.clear();
        }
    }

    fn refresh_classifier(&mut self) {
        let generation = self.classifier.load().generation;
        if generation != self.generation {
            // A reload: every flow is classified again on its next datagram.
            self.generation = generation;
            let n = self.flows.len() as u64;
            self.flows.clear();
            self.counters.flows.fetch_sub(n, Relaxed);
        }
    }

    /// Phase one for one datagram, `buf[range]`: inspect, classify, count as
    /// received, stage.
    fn handle(
        &mut self,
        src: std::net::SocketAddr,
        buf: &[u8],
        range: std::ops::Range<usize>,
        shared: &mut Share,
        now_ms: u64,
    ) {
        let bytes = buf.get(range.clone()).unwrap_or_default();
        self.totals.received += 1;
        self.totals.received_bytes += bytes.len() as u64;
        let kind = match inspect(bytes, self.settings.max_datagram) {
            Ok(k) => k,
            Err(why) => {
                self.totals.dropped[why.index()] += 1;
                return;
            }
        };
        let key = FlowKey {
            src,
            local_port: self.local_port,
            header_stream: match kind {
                Kind::Loadgen(h) => Some(h.stream_id),
                Kind::Plain => None,
            },
        };
        let (slot, dest) = match &self.last {
            Some(l) if l.key == key => {
                self.totals.flow_hits += 1;
                (l.slot, l.dest)
            }
            _ => match self.flows.get_mut(&key) {
                Some(f) => {
                    self.totals.flow_hits += 1;
                    f.last_seen_ms = now_ms;
                    let (slot, dest) = (f.stream, f.dest);
                    self.last = Some(LastFlow { key, slot, dest });
                    (slot, dest)
                }
                _ => {
                    self.totals.flow_misses += 1;
                    match self.new_flow(key, &kind, now_ms) {
                        Ok(v) => v,
                        Err(why) => {
                            self.totals.dropped[why.index()] += 1;
                            return;
                        }
                    }
                }
            },
        };
        let batch = self.batch;
        let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            self.totals.dropped[GatewayDrop::Unclassified.index()] += 1;
            return;
        };
        s.last_seen_ms = now_ms;
        if s.tally_batch != batch {
            s.tally_batch = batch;
            s.tally = self.tallies.len();
            self.tallies.push(Tally {
                counters: s.counters.clone(),
                received: 0,
                enqueued: 0,
                dropped: [0; N_DROPS],
            });
        }
        let tally = s.tally;
        let handle = s.handle;
        let index = s.counters.index;
        if let Some(t) = self.tallies.get_mut(tally) {
            t.received += 1;
        }
        if matches!(shared, Share::Unset) {
            *shared = self.pool.copy(buf).map_or(Share::Own, Share::Pooled);
        }
        let packet = match shared {
            Share::Pooled(b) => Packet::new(b.clone(), range, dest, index),
            _ => {
                self.totals.copied_alone += 1;
                Packet::new(Arc::new(bytes.to_vec()), 0..bytes.len(), dest, index)
            }
        };
        self.staged.push(Staged {
            handle,
            tally,
            packet,
        });
    }

    /// Adds the batch's counts so far to the shared counters.
    fn flush_counts(&mut self) {
        let t = std::mem::take(&mut self.totals);
        let c = &self.counters;
        let add = |a: &std::sync::atomic::AtomicU64, v: u64| {
            if v > 0 {
                a.fetch_add(v, Relaxed);
            }
        };
        add(&c.received, t.received);
        add(&c.received_bytes, t.received_bytes);
        add(&c.flow_hits, t.flow_hits);
        add(&c.flow_misses, t.flow_misses);
        add(&c.copied_alone, t.copied_alone);
        for (why, n) in GatewayDrop::ALL.iter().zip(t.dropped) {
            if n > 0 {
                c.drops_unowned(*why, n);
            }
        }
        for tally in &mut self.tallies {
            let s = &tally.counters;
            add(&s.received, std::mem::take(&mut tally.received));
            add(&s.enqueued, std::mem::take(&mut tally.enqueued));
            for (why, n) in GatewayDrop::ALL.iter().zip(&mut tally.dropped) {
                let n = std::mem::take(n);
                if n > 0 {
                    s.gateway_drops(*why, n);
                }
            }
        }
    }

    /// Phase two: counts what was received so far, then enqueues the staged
    /// datagrams and counts the outcomes.
    fn enqueue_staged(&mut self) {
        self.flush_counts();
        let mut staged = std::mem::take(&mut self.staged);
        for st in staged.drain(..) {
            let len = st.packet.len() as u32;
            let outcome = match self.producer.enqueue_quiet(st.handle, st.packet, len) {
                Ok(()) => None,
                Err(EnqueueError::Full(_)) => Some(GatewayDrop::RingFull),
                Err(EnqueueError::Closed(_)) => Some(GatewayDrop::Closed),
                Err(EnqueueError::StaleHandle(_)) => Some(GatewayDrop::Unclassified),
            };
            if let Some(t) = self.tallies.get_mut(st.tally) {
                match outcome {
                    None => t.enqueued += 1,
                    Some(why) => t.dropped[why.index()] += 1,
                }
            }
        }
        // The vector's allocation is kept for the next batch.
        self.staged = staged;
        self.flush_counts();
    }

    /// Classifies a new flow and finds (or opens) its stream.
    fn new_flow(
        &mut self,
        key: FlowKey,
        kind: &Kind,
        now_ms: u64,
    ) -> Result<(usize, u32), GatewayDrop> {
        let class: Class = self.classifier.load().classify(&key, kind)?;
        if self.flows.len() >= self.settings.flow_table {
            // At most one sweep a millisecond: another in the same millisecond finds
            // nothing newly idle, and a flood of new flows must not cost a walk of the
            // whole table each.
            if self.swept_at_ms != Some(now_ms) {
                self.swept_at_ms = Some(now_ms);
                // Eviction may close streams: what is staged goes first, in order.
                // It may also remove the cached last flow. (An insert never changes
                // an existing flow, so only eviction clears the cache.)
                self.enqueue_staged();
                self.last = None;
                self.evict(now_ms);
            }
            if self.flows.len() >= self.settings.flow_table {
                return Err(GatewayDrop::FlowTableFull);
            }
        }
        let slot = match self.by_key.get(&(class.stream_key, class.priority)) {
            Some(&i) => {
                self.rehome(i, &class);
                i
            }
            None => self.open(&class, now_ms)?,
        };
        let dest = self.counters.dest_index(&class.dest);
        let old = self.flows.insert(
            key,
            Flow {
                stream: slot,
                dest,
                last_seen_ms: now_ms,
            },
        );
        if old.is_none() {
            self.counters.flows.fetch_add(1, Relaxed);
        }
        Ok((slot, dest))
    }

    /// A reload moved the stream of slot `i` (same key and priority) to another rule:
    /// its datagrams from now on count in an account of that rule (they stayed under
    /// the old rule's). Packets already queued keep the account they carry; the next
    /// datagram starts a tally of the new account.
    fn rehome(&mut self, i: usize, class: &Class) {
        if let Some(s) = self.slots.get_mut(i).and_then(Option::as_mut)
            && *s.counters.rule != *class.rule_name
        {
            s.counters = self
                .counters
                .stream(class.stream_key, class.priority, &class.rule_name);
            s.tally_batch = 0;
        }
    }

    fn open(&mut self, class: &Class, now_ms: u64) -> Result<usize, GatewayDrop> {
        let handle = match self.producer.open(
            class.stream_key,
            StreamConfig::with_priority(class.priority),
        ) {
            Ok(h) => h,
            Err(ControlError::Closed) => return Err(GatewayDrop::Closed),
            Err(_) => return Err(GatewayDrop::RingFull),
        };
        let counters = self
            .counters
            .stream(class.stream_key, class.priority, &class.rule_name);
        let slot = Slot {
            key: class.stream_key,
            priority: class.priority,
            handle,
            counters,
            last_seen_ms: now_ms,
            tally_batch: 0,
            tally: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.by_key.insert((class.stream_key, class.priority), i);
        Ok(i)
    }

    /// Evicts flows idle longer than `flow_idle_ms`, and closes streams no flow uses
    /// that are idle as long (their queued packets were sent or are dropped `closed`).
    fn evict(&mut self, now_ms: u64) {
        let idle = self.settings.flow_idle_ms;
        let before = self.flows.len();
        self.flows
            .retain(|_, f| now_ms.saturating_sub(f.last_seen_ms) < idle);
        let evicted = (before - self.flows.len()) as u64;
        self.counters.flow_evictions.fetch_add(evicted, Relaxed);
        self.counters.flows.fetch_sub(evicted, Relaxed);
        let mut used = vec![false; self.slots.len()];
        for f in self.flows.values() {
            used[f.stream] = true;
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let close = slot
                .as_ref()
                .is_some_and(|s| !used[i] && now_ms.saturating_sub(s.last_seen_ms) >= idle);
            if close && let Some(s) = slot.take() {
                let _ = self.producer.close(s.handle);
                self.by_key.remove(&(s.key, s.priority));
                self.free.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;
    use qos_dataplane::runtime::{Dataplane, Egress, Outbox, Pinning, StopMode};
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicU64;

    /// Takes every packet offered, counting them.
    struct Sink(Arc<AtomicU64>);

    impl Egress<Packet> for Sink {
        fn send(&mut self, _now_ns: u64, out: &mut Outbox<'_, Packet>) {
            while out.pop().is_some() {
                self.0.fetch_add(1, Relaxed);
            }
        }
    }

    /// A full flow table sweeps idle flows and may close their streams. Datagrams
    /// already staged in the same batch hold those streams' handles, so they are
    /// enqueued before the sweep: with `flow_idle_ms = 0` (every flow counts as idle)
    /// a datagram whose flow the same batch then evicts still reaches the dataplane,
    /// which sends it or counts it `closed` (S11), rather than being dropped at the
    /// gateway as `unclassified` against a handle closed under it.
    #[test]
    fn s11_a_datagram_staged_before_an_eviction_reaches_the_dataplane() {
        let config = GatewayConfig::embedded().expect("the embedded default is valid");
        let sent = Arc::new(AtomicU64::new(0));
        let (dp, mut producers) = Dataplane::<Packet>::builder()
            .workers(1)
            .producers(1)
            .pinning(Pinning::Off)
            .policy(Arc::new(config.policy.clone()))
            .build(|_| Sink(sent.clone()))
            .expect("a one-worker dataplane");
        let producer = producers.pop().expect("one producer");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
        let counters = Arc::new(GatewayCounters::default());
        let classifier = Arc::new(ArcSwap::from_pointee(Classifier::new(&config, 1)));
        let settings = RxSettings {
            max_datagram: 65_507,
            flow_table: 1,
            flow_idle_ms: 0,
        };
        let mut rx = Rx::new(socket, producer, classifier, counters.clone(), settings)
            .expect("an Rx on loopback");
        let a: SocketAddr = "127.0.0.1:40001".parse().expect("address");
        let b: SocketAddr = "127.0.0.1:40002".parse().expect("address");
        let payload = b"not a load-generator datagram";
        // One batch, as `run` makes it (one `now_ms`): A's datagram is staged, then
        // B's finds the one-flow table full and sweeps, evicting A's flow and closing
        // its stream.
        let now_ms = 5_000;
        rx.batch = 1;
        rx.handle(a, payload, 0..payload.len(), &mut Share::Unset, now_ms);
        rx.handle(b, payload, 0..payload.len(), &mut Share::Unset, now_ms);
        rx.enqueue_staged();
        assert_eq!(
            counters.flow_evictions.load(Relaxed),
            1,
            "A's flow was evicted"
        );
        let streams = counters.streams();
        assert_eq!(streams.len(), 2, "one stream per source: {streams:?}");
        for s in &streams {
            assert_eq!(
                (s.received, s.enqueued, s.dropped_total),
                (1, 1, 0),
                "both datagrams enqueued, none dropped at the gateway: {streams:?}"
            );
        }
        drop(rx);
        let report = dp.shutdown(StopMode::Drain).expect("a clean drain");
        let counts = (report.taken(), report.sent(), report.discarded());
        assert!(report.is_conserved(), "taken, sent, discarded: {counts:?}");
        // B's datagram is sent; A's is sent or, closed with its stream, discarded
        // with a counted reason.
        assert_eq!(report.taken(), 2, "taken, sent, discarded: {counts:?}");
        assert_eq!(report.sent() + report.discarded(), 2, "{counts:?}");
        assert!(report.sent() >= 1, "taken, sent, discarded: {counts:?}");
        assert_eq!(sent.load(Relaxed), report.sent());
    }

    #[test]
    fn the_pool_reuses_a_buffer_once_no_packet_holds_it() {
        let mut pool = BufPool::default();
        let a = pool.copy(b"first").expect("room");
        let ptr = Arc::as_ptr(&a);
        // Still held: a second copy gets another buffer.
        let b = pool.copy(b"second").expect("room");
        assert_ne!(Arc::as_ptr(&b), ptr);
        assert_eq!(&a[..], b"first");
        drop(a);
        drop(b);
        // Free again: reused, with the new contents.
        let c = pool.copy(b"third!").expect("room");
        assert_eq!(Arc::as_ptr(&c), ptr, "the first free buffer is reused");
        assert_eq!(&c[..], b"third!");
        assert_eq!(pool.bufs.len(), 2, "no third buffer was made");
    }

    /// The memory sharing can pin is bounded: with every pooled buffer held (by queued
    /// packets), no new shared buffer is made; once one is released it is reused.
    #[test]
    fn a_full_pool_of_held_buffers_makes_no_more_shared_copies() {
        let mut pool = BufPool::default();
        let big = vec![7u8; 60_000];
        let held: Vec<_> = (0..POOL_MAX)
            .map(|_| pool.copy(&big).expect("room"))
            .collect();
        assert!(pool.copy(&big).is_none(), "pool full and every buffer held");
        // Exactly POOL_MAX buffers of one datagram's size each: nothing else is pinned.
        assert_eq!(pool.bufs.len(), POOL_MAX);
        let pinned: usize = pool.bufs.iter().map(|b| b.capacity()).sum();
        assert_eq!(pinned, POOL_MAX * big.len());
        drop(held);
        assert!(pool.copy(b"again").is_some(), "a released buffer is reused");
        assert_eq!(pool.bufs.len(), POOL_MAX);
    }
}
