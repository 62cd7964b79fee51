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
use qos_dataplane::runtime::{ControlError, EnqueueError, Producer, StreamHandle};
use qos_dataplane::sched::StreamConfig;
use quinn_udp::{UdpSockRef, UdpSocketState};

use super::Packet;
use super::classify::{Class, Classifier, Dest, FlowKey, Kind, inspect};
use super::counters::{GatewayCounters, GatewayDrop, StreamCounters};
use crate::clock::monotonic_ms;
use crate::udp::BatchRecv;

/// How long a receive waits for readiness before checking the stop flag.
const POLL_MS: i64 = 20;

/// A flow's cached classification.
#[derive(Debug)]
struct Flow {
    generation: u64,
    stream: usize,
    dest: Dest,
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

/// The receive loop state.
pub struct Rx {
    socket: UdpSocket,
    state: UdpSocketState,
    local_port: u16,
    producer: Producer<Packet>,
    classifier: Arc<ArcSwap<Classifier>>,
    counters: Arc<GatewayCounters>,
    settings: RxSettings,
    flows: HashMap<FlowKey, Flow>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    by_key: HashMap<(u64, u8), usize>,
    generation: u64,
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
            flows: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            generation,
        })
    }

    /// Receives until `stop` is set; then drops the producer (the workers see this
    /// producer is done).
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
            let now_ms = monotonic_ms();
            self.refresh_classifier();
            for (src, datagram) in batch.datagrams(n) {
                self.handle(src, datagram, now_ms);
            }
            self.producer.flush();
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

    fn handle(&mut self, src: std::net::SocketAddr, bytes: &[u8], now_ms: u64) {
        self.counters.received.fetch_add(1, Relaxed);
        self.counters
            .received_bytes
            .fetch_add(bytes.len() as u64, Relaxed);
        let kind = match inspect(bytes, self.settings.max_datagram) {
            Ok(k) => k,
            Err(why) => {
                self.counters.drop_unowned(why);
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
        let (slot, dest) = match self.flows.get_mut(&key) {
            Some(f) if f.generation == self.generation => {
                self.counters.flow_hits.fetch_add(1, Relaxed);
                f.last_seen_ms = now_ms;
                (f.stream, f.dest.clone())
            }
            _ => {
                self.counters.flow_misses.fetch_add(1, Relaxed);
                match self.new_flow(key, &kind, now_ms) {
                    Ok(v) => v,
                    Err(why) => {
                        self.counters.drop_unowned(why);
                        return;
                    }
                }
            }
        };
        let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            self.counters.drop_unowned(GatewayDrop::Unclassified);
            return;
        };
        s.last_seen_ms = now_ms;
        s.counters.received.fetch_add(1, Relaxed);
        let packet = Packet {
            data: bytes.into(),
            dest,
            stream: s.counters.clone(),
        };
        match self
            .producer
            .enqueue_quiet(s.handle, packet, bytes.len() as u32)
        {
            Ok(()) => {
                s.counters.enqueued.fetch_add(1, Relaxed);
            }
            Err(EnqueueError::Full(_)) => s.counters.gateway_drop(GatewayDrop::RingFull),
            Err(EnqueueError::Closed(_)) => s.counters.gateway_drop(GatewayDrop::Closed),
            Err(EnqueueError::StaleHandle(_)) => {
                s.counters.gateway_drop(GatewayDrop::Unclassified);
            }
        }
    }

    /// Classifies a new flow and finds (or opens) its stream.
    fn new_flow(
        &mut self,
        key: FlowKey,
        kind: &Kind,
        now_ms: u64,
    ) -> Result<(usize, Dest), GatewayDrop> {
        let class: Class = self.classifier.load().classify(&key, kind)?;
        if self.flows.len() >= self.settings.flow_table {
            self.evict(now_ms);
            if self.flows.len() >= self.settings.flow_table {
                return Err(GatewayDrop::FlowTableFull);
            }
        }
        let slot = match self.by_key.get(&(class.stream_key, class.priority)) {
            Some(&i) => i,
            None => self.open(&class, now_ms)?,
        };
        let old = self.flows.insert(
            key,
            Flow {
                generation: self.generation,
                stream: slot,
                dest: class.dest.clone(),
                last_seen_ms: now_ms,
            },
        );
        if old.is_none() {
            self.counters.flows.fetch_add(1, Relaxed);
        }
        Ok((slot, class.dest))
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
