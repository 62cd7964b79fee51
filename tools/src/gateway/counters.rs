//! The gateway's own counters: datagrams it dropped before the dataplane saw them
//! (by reason), flow-table lookups, and per stream what was received, forwarded and
//! dropped where. Plain atomics written by the thread that owns the event and read by
//! the control thread at scrape time and by the final accounting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use qos_control::metrics::ExtraFamily;
use qos_dataplane::runtime::DiscardReason;

use super::classify::Dest;
use serde::Serialize;

/// Why the gateway dropped a datagram. Every datagram read from a socket is either
/// handed to the dataplane or counted under one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GatewayDrop {
    /// Zero-length datagram.
    Empty,
    /// Longer than `gateway.max_datagram`.
    Oversize,
    /// Starts with the load-generator magic but is shorter than its header.
    Truncated,
    /// Load-generator header of an unknown version.
    BadVersion,
    /// Load-generator header claiming a priority above 7.
    BadPriority,
    /// No rule matched.
    Unclassified,
    /// The flow table is full of active flows.
    FlowTableFull,
    /// The owning worker's ingress ring was full (backpressure).
    RingFull,
    /// The dataplane is stopping.
    Closed,
    /// The send to the upstream failed (after the scheduler released it).
    EgressError,
}

impl GatewayDrop {
    /// Every reason, in counter order.
    pub const ALL: [GatewayDrop; 10] = [
        Self::Empty,
        Self::Oversize,
        Self::Truncated,
        Self::BadVersion,
        Self::BadPriority,
        Self::Unclassified,
        Self::FlowTableFull,
        Self::RingFull,
        Self::Closed,
        Self::EgressError,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Oversize => "oversize",
            Self::Truncated => "truncated",
            Self::BadVersion => "bad_version",
            Self::BadPriority => "bad_priority",
            Self::Unclassified => "unclassified",
            Self::FlowTableFull => "flow_table_full",
            Self::RingFull => "ring_full",
            Self::Closed => "stopping",
            Self::EgressError => "egress_error",
        }
    }

    /// Its position in [`GatewayDrop::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

pub(crate) const N_DROPS: usize = GatewayDrop::ALL.len();

/// One stream's counters (shared by the receive thread that opened it, the worker
/// that sends its packets, and the readers).
#[derive(Debug)]
pub struct StreamCounters {
    /// The stream key (`stream_id` label).
    pub key: u64,
    /// Its index in [`GatewayCounters`] (what a [`Packet`](super::Packet) carries
    /// instead of a reference: indices are never reused).
    pub index: u32,
    /// Priority it was opened with.
    pub priority: u8,
    /// Rule that formed it.
    pub rule: String,
    /// The account of every stream met once the registry was full
    /// (`gateway.stream_accounts`): their datagrams are counted here together.
    pub overflow: bool,
    /// Datagrams of this stream read from the sockets.
    pub received: AtomicU64,
    /// Handed to the dataplane.
    pub enqueued: AtomicU64,
    /// Datagrams written to an upstream socket (a broadcast copy counts once per
    /// datagram, when every copy was written).
    pub forwarded: AtomicU64,
    /// Dropped by the gateway, by [`GatewayDrop`].
    pub gateway_dropped: [AtomicU64; N_DROPS],
    /// Dropped by the dataplane, by [`DiscardReason::NAMES`].
    pub dataplane_dropped: [AtomicU64; DiscardReason::NAMES.len()],
}

impl StreamCounters {
    fn new(key: u64, index: u32, priority: u8, rule: String) -> Self {
        Self {
            key,
            index,
            priority,
            rule,
            overflow: false,
            received: AtomicU64::new(0),
            enqueued: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            gateway_dropped: std::array::from_fn(|_| AtomicU64::new(0)),
            dataplane_dropped: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts `n` gateway drops of this stream's datagrams.
    pub fn gateway_drops(&self, why: GatewayDrop, n: u64) {
        self.gateway_dropped[why.index()].fetch_add(n, Relaxed);
    }

    /// A plain copy.
    pub fn snapshot(&self) -> StreamAccount {
        let mut dropped = std::collections::BTreeMap::new();
        for r in GatewayDrop::ALL {
            let v = self.gateway_dropped[r.index()].load(Relaxed);
            if v > 0 {
                dropped.insert(r.as_str().to_string(), v);
            }
        }
        for (i, r) in DiscardReason::NAMES.iter().enumerate() {
            let v = self.dataplane_dropped[i].load(Relaxed);
            if v > 0 {
                *dropped.entry((*r).to_string()).or_insert(0) += v;
            }
        }
        StreamAccount {
            stream_id: self.key,
            priority: self.priority,
            rule: self.rule.clone(),
            overflow: self.overflow,
            received: self.received.load(Relaxed),
            enqueued: self.enqueued.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            dropped_total: dropped.values().sum(),
            dropped,
        }
    }
}

/// One stream's accounting: `received = forwarded + dropped_total + in flight`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StreamAccount {
    /// Stream key.
    pub stream_id: u64,
    /// Priority.
    pub priority: u8,
    /// Rule that formed it.
    pub rule: String,
    /// The streams met once the registry was full, counted together (their
    /// `stream_id`, `priority` and `rule` are those of the first one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overflow: bool,
    /// Datagrams read.
    pub received: u64,
    /// Handed to the dataplane.
    pub enqueued: u64,
    /// Written to an upstream.
    pub forwarded: u64,
    /// Dropped, all reasons.
    pub dropped_total: u64,
    /// Dropped, by reason (gateway and dataplane reasons).
    pub dropped: std::collections::BTreeMap<String, u64>,
}

/// All of the gateway's counters.
#[derive(Debug)]
pub struct GatewayCounters {
    /// Datagrams read from the sockets.
    pub received: AtomicU64,
    /// Bytes read.
    pub received_bytes: AtomicU64,
    /// Dropped before a stream was known, by reason.
    pub dropped: [AtomicU64; N_DROPS],
    /// Flow-table hits.
    pub flow_hits: AtomicU64,
    /// Flow-table misses (a classification ran).
    pub flow_misses: AtomicU64,
    /// Flows evicted after being idle.
    pub flow_evictions: AtomicU64,
    /// Flows currently cached, all receive threads.
    pub flows: AtomicU64,
    /// Datagrams copied on their own because every pooled receive buffer of their
    /// receive thread was still held by queued packets.
    pub copied_alone: AtomicU64,
    /// Configuration reloads applied and rejected.
    pub reloads: [AtomicU64; 2],
    /// Streams opened (or opened again) once the registry was full, counted in its
    /// overflow account.
    pub accounts_overflowed: AtomicU64,
    streams: Mutex<Registry>,
    dests: Mutex<Vec<Dest>>,
}

/// Every stream's counters: by key, priority and rule (a receive thread opens one
/// stream for each key and priority; a header's stream id may come at several
/// priorities, and a reload may move a flow to another rule), and in creation
/// order (the index a packet carries). Entries are never removed, so an index stays
/// valid; at most `limit` streams get their own account, the streams met after that
/// share one overflow account (a sender choosing stream ids must not grow qosd's
/// memory without bound).
#[derive(Debug)]
struct Registry {
    by_key: HashMap<(u64, u8, u64), u32>,
    list: Vec<Arc<StreamCounters>>,
    limit: usize,
    overflow: Option<Arc<StreamCounters>>,
}

/// Accounts kept by default (`gateway.stream_accounts`).
pub const DEFAULT_STREAM_ACCOUNTS: usize = 131_072;

impl Default for GatewayCounters {
    fn default() -> Self {
        Self::new(DEFAULT_STREAM_ACCOUNTS)
    }
}

impl GatewayCounters {
    /// Counters keeping their own account for at most `stream_accounts` stream keys
    /// (at least 1).
    pub fn new(stream_accounts: usize) -> Self {
        Self {
            received: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            dropped: std::array::from_fn(|_| AtomicU64::new(0)),
            flow_hits: AtomicU64::new(0),
            flow_misses: AtomicU64::new(0),
            flow_evictions: AtomicU64::new(0),
            flows: AtomicU64::new(0),
            copied_alone: AtomicU64::new(0),
            reloads: [AtomicU64::new(0), AtomicU64::new(0)],
            accounts_overflowed: AtomicU64::new(0),
            streams: Mutex::new(Registry {
                by_key: HashMap::new(),
                list: Vec::new(),
                limit: stream_accounts.max(1),
                overflow: None,
            }),
            dests: Mutex::new(Vec::new()),
        }
    }

    /// Counts `n` drops of datagrams no stream owns.
    pub fn drops_unowned(&self, why: GatewayDrop, n: u64) {
        self.dropped[why.index()].fetch_add(n, Relaxed);
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The counters of stream `key` at `priority` under `rule`, created on first use
    /// (called on flow misses only). A flow a reload moves to another rule gets an
    /// account of that rule (it stayed counted under the old one).
    pub fn stream(&self, key: u64, priority: u8, rule: &str) -> Arc<StreamCounters> {
        let rule_key = super::classify::stable_hash(rule);
        let mut reg = self.registry();
        if let Some(&i) = reg.by_key.get(&(key, priority, rule_key))
            && let Some(s) = reg.list.get(i as usize)
        {
            return s.clone();
        }
        // The registry keeps every stream key it gave an account (a key seen again
        // reuses its counters) up to its limit; later keys share the overflow account.
        // The list's length stays below the limit + 1, so the index fits a u32.
        let index = u32::try_from(reg.list.len()).unwrap_or(u32::MAX);
        if reg.by_key.len() >= reg.limit {
            self.accounts_overflowed.fetch_add(1, Relaxed);
            if let Some(o) = &reg.overflow {
                return o.clone();
            }
            let mut o = StreamCounters::new(key, index, priority, rule.to_string());
            o.overflow = true;
            let o = Arc::new(o);
            reg.list.push(o.clone());
            reg.overflow = Some(o.clone());
            return o;
        }
        let s = Arc::new(StreamCounters::new(key, index, priority, rule.to_string()));
        reg.list.push(s.clone());
        reg.by_key.insert((key, priority, rule_key), index);
        s
    }

    /// Appends to `cache` the counters of the streams created since it was last
    /// extended (`cache[i]` is the stream of index `i`).
    pub fn extend_streams(&self, cache: &mut Vec<Arc<StreamCounters>>) {
        let reg = self.registry();
        if let Some(new) = reg.list.get(cache.len()..) {
            cache.extend(new.iter().cloned());
        }
    }

    /// The index of destination `dest` (what a [`Packet`](super::Packet) carries
    /// instead of the address), added on first use (called on flow misses only).
    /// Entries are never removed: a configuration has a handful of destinations,
    /// and a reload adds only those it changes.
    pub fn dest_index(&self, dest: &Dest) -> u32 {
        let mut dests = self
            .dests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = match dests.iter().position(|d| d == dest) {
            Some(i) => i,
            None => {
                dests.push(dest.clone());
                dests.len() - 1
            }
        };
        u32::try_from(i).unwrap_or(u32::MAX)
    }

    /// Appends to `cache` the destinations added since it was last extended
    /// (`cache[i]` is destination `i`).
    pub fn extend_dests(&self, cache: &mut Vec<Dest>) {
        let dests = self
            .dests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(new) = dests.get(cache.len()..) {
            cache.extend(new.iter().cloned());
        }
    }

    /// Every stream's counters, cloned under the lock and read outside it: a worker
    /// meeting a new stream (`extend_streams`) never waits behind a scrape's walk.
    fn list(&self) -> Vec<Arc<StreamCounters>> {
        self.registry().list.clone()
    }

    /// Every stream's accounting, by stream id.
    pub fn streams(&self) -> Vec<StreamAccount> {
        let mut v: Vec<_> = self.list().iter().map(|s| s.snapshot()).collect();
        v.sort_by_key(|a| (a.stream_id, a.priority));
        v
    }

    /// Drops by reason: those of no stream plus every stream's gateway drops.
    pub fn drops_by_reason(&self) -> Vec<(GatewayDrop, u64)> {
        let list = self.list();
        GatewayDrop::ALL
            .iter()
            .map(|&r| {
                let own = self.dropped[r.index()].load(Relaxed);
                let streams: u64 = list
                    .iter()
                    .map(|s| s.gateway_dropped[r.index()].load(Relaxed))
                    .sum();
                (r, own + streams)
            })
            .collect()
    }

    /// The families `qosd` adds to `/metrics`.
    pub fn families(&self) -> Vec<ExtraFamily> {
        let row = |labels: &[(&str, &str)], v: u64| {
            (
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
                v,
            )
        };
        let forwarded: u64 = self.list().iter().map(|s| s.forwarded.load(Relaxed)).sum();
        vec![
            ExtraFamily {
                name: "qosd_datagrams_received".into(),
                help: "Datagrams read from the gateway's sockets.".into(),
                counter: true,
                rows: vec![row(&[], self.received.load(Relaxed))],
            },
            ExtraFamily {
                name: "qosd_datagrams_forwarded".into(),
                help: "Datagrams written to an upstream.".into(),
                counter: true,
                rows: vec![row(&[], forwarded)],
            },
            ExtraFamily {
                name: "qosd_datagrams_dropped".into(),
                help: "Datagrams the gateway dropped (before or after the scheduler), by reason."
                    .into(),
                counter: true,
                rows: self
                    .drops_by_reason()
                    .into_iter()
                    .map(|(r, v)| row(&[("reason", r.as_str())], v))
                    .collect(),
            },
            ExtraFamily {
                name: "qosd_flow_lookups".into(),
                help: "Flow-table lookups, by result (a miss runs the classifier).".into(),
                counter: true,
                rows: vec![
                    row(&[("result", "hit")], self.flow_hits.load(Relaxed)),
                    row(&[("result", "miss")], self.flow_misses.load(Relaxed)),
                ],
            },
            ExtraFamily {
                name: "qosd_flow_evictions".into(),
                help: "Idle flows evicted from the flow table.".into(),
                counter: true,
                rows: vec![row(&[], self.flow_evictions.load(Relaxed))],
            },
            ExtraFamily {
                name: "qosd_flows".into(),
                help: "Flows in the flow tables.".into(),
                counter: false,
                rows: vec![row(&[], self.flows.load(Relaxed))],
            },
            ExtraFamily {
                name: "qosd_datagrams_copied_alone".into(),
                help: "Datagrams copied on their own because every pooled receive buffer (512 per receive thread) was held by queued packets.".into(),
                counter: true,
                rows: vec![row(&[], self.copied_alone.load(Relaxed))],
            },
            ExtraFamily {
                name: "qosd_stream_accounts".into(),
                help: "Per-stream accounts held (at most gateway.stream_accounts, plus the overflow account).".into(),
                counter: false,
                rows: vec![row(&[], self.registry().list.len() as u64)],
            },
            ExtraFamily {
                name: "qosd_stream_accounts_overflowed".into(),
                help: "Streams opened (or opened again after their flows were evicted) once the per-stream accounts were full: counted together in the overflow account.".into(),
                counter: true,
                rows: vec![row(&[], self.accounts_overflowed.load(Relaxed))],
            },
            ExtraFamily {
                name: "qosd_config_reloads".into(),
                help: "Configuration reloads (SIGHUP or POST /reload), by outcome.".into(),
                counter: true,
                rows: vec![
                    row(&[("outcome", "applied")], self.reloads[0].load(Relaxed)),
                    row(&[("outcome", "rejected")], self.reloads[1].load(Relaxed)),
                ],
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// qosd red team: every distinct stream key kept an account for good (about 355
    /// bytes each: 1,000,000 header stream ids took qosd from 12 to 367 MB). Past the
    /// limit, new keys share one overflow account; the totals stay exact.
    #[test]
    fn accounts_past_the_limit_share_the_overflow_account() {
        let c = GatewayCounters::new(2);
        let a = c.stream(10, 3, "r");
        let b = c.stream(11, 3, "r");
        let o1 = c.stream(12, 4, "r");
        let o2 = c.stream(13, 5, "r");
        assert!(Arc::ptr_eq(&o1, &o2), "one overflow account");
        assert!(o1.overflow && !a.overflow && !b.overflow);
        assert!(
            Arc::ptr_eq(&a, &c.stream(10, 3, "r")),
            "a known key keeps its account"
        );
        for (s, n) in [(&a, 1), (&b, 2), (&o1, 3), (&o2, 4)] {
            s.received.fetch_add(n, Relaxed);
            s.forwarded.fetch_add(n, Relaxed);
        }
        let accounts = c.streams();
        assert_eq!(accounts.len(), 3);
        assert_eq!(accounts.iter().map(|s| s.forwarded).sum::<u64>(), 10);
        let o = accounts
            .iter()
            .find(|s| s.overflow)
            .expect("overflow account");
        assert_eq!((o.stream_id, o.received), (12, 7));
        assert_eq!(c.accounts_overflowed.load(Relaxed), 2);
        // The index a packet carries finds the account in a worker's cache.
        let mut cache = Vec::new();
        c.extend_streams(&mut cache);
        assert!(Arc::ptr_eq(&cache[o1.index as usize], &o1));
        // Many more keys: the registry does not grow.
        for k in 100..10_100 {
            c.stream(k, 0, "r");
        }
        assert_eq!(c.streams().len(), 3);
        let text = serde_json::to_string(&accounts).expect("json");
        assert_eq!(text.matches("\"overflow\":true").count(), 1, "{text}");
        assert!(
            !text.contains("\"overflow\":false"),
            "absent when false: {text}"
        );
    }

    /// qosd red team: the accounts were keyed by stream id only, while a receive thread
    /// opens one stream per (id, priority): a header stream id sent at priorities 2 to
    /// 6 was reported as one account at priority 2. Each priority has its own now.
    #[test]
    fn one_stream_id_at_two_priorities_has_two_accounts() {
        let c = GatewayCounters::new(10);
        let low = c.stream(7, 2, "r");
        let high = c.stream(7, 6, "r");
        assert!(!Arc::ptr_eq(&low, &high));
        assert!(Arc::ptr_eq(&high, &c.stream(7, 6, "r")));
        low.received.fetch_add(1, Relaxed);
        high.received.fetch_add(2, Relaxed);
        let accounts = c.streams();
        let seen: Vec<_> = accounts
            .iter()
            .map(|a| (a.stream_id, a.priority, a.received))
            .collect();
        assert_eq!(seen, [(7, 2, 1), (7, 6, 2)]);
    }

    /// Operator red team: a flow a reload moved to another rule at the same priority
    /// stayed counted under its old rule (1,200 datagrams under `default`, none under
    /// `bulk`, though 619 went out by bulk's route). Accounts are per rule too.
    #[test]
    fn one_stream_under_two_rules_has_two_accounts() {
        let c = GatewayCounters::new(10);
        let before = c.stream(7, 2, "default");
        let after = c.stream(7, 2, "bulk");
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(Arc::ptr_eq(&after, &c.stream(7, 2, "bulk")));
        assert_eq!((&*before.rule, &*after.rule), ("default", "bulk"));
    }
}
