//! The integrity report (O6): conservation counters per worker and per busiest
//! stream (S11), drops by reason, backpressure and degrade intervals and the policy
//! history, as JSON on demand. It says plainly whether S11 holds.
//!
//! While the dataplane runs, the per-worker counters come from each worker's latest
//! stream report, which the worker took at one batch boundary, so the identity is
//! checked exactly on a consistent instant rather than on counters published at two
//! different moments. After shutdown the final counters are used.

use std::collections::BTreeMap;

use qos_dataplane::runtime::WorkerStats;
use qos_dataplane::sched::{DropReason, RefuseReason};
use serde::Serialize;

use crate::metrics::TopStream;

/// One worker's runtime conservation: `taken = sent + discarded + queued + pending +
/// awaiting_reclaim`, and the scheduler's own identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerLedger {
    /// Worker index.
    pub worker: usize,
    /// Packets taken from the ingress rings.
    pub taken: u64,
    /// Packets the egress took.
    pub sent: u64,
    /// Packets handed to the egress's discard, every reason (drops, refusals, shed,
    /// unknown stream, shutdown).
    pub discarded: u64,
    /// Packets queued in the scheduler.
    pub queued: u64,
    /// Packets dequeued and offered to the egress, not yet taken.
    pub pending: u64,
    /// Dropped packets not yet handed to discard.
    pub awaiting_reclaim: u64,
    /// Packets accepted by the scheduler (or tail-dropped).
    pub enqueued: u64,
    /// Whether both identities hold.
    pub conserved: bool,
}

impl WorkerLedger {
    /// The ledger of `s`.
    pub fn of(s: &WorkerStats) -> Self {
        Self {
            worker: s.worker,
            taken: s.taken,
            sent: s.sent,
            discarded: s.discarded,
            queued: s.shard.totals.queued,
            pending: s.pending,
            awaiting_reclaim: s.shard.awaiting_reclaim,
            enqueued: s.shard.totals.enqueued,
            conserved: s.is_conserved(),
        }
    }
}

/// One stream's S11 ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamLedger {
    /// The key it was opened with.
    pub stream_id: String,
    /// Its worker.
    pub worker: usize,
    /// Its priority.
    pub priority: u8,
    /// Packets accepted (or tail-dropped).
    pub enqueued: u64,
    /// Packets handed to the egress.
    pub dequeued: u64,
    /// Drops by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Packets queued.
    pub queued: u64,
    /// Packets shed at ingress (never enqueued).
    pub shed: u64,
    /// `enqueued == dequeued + dropped + queued`.
    pub conserved: bool,
}

/// A closed or open interval of some condition, in Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interval {
    /// What (e.g. `stream 42 backpressure warning`, `DEGRADED`).
    pub what: String,
    /// Detail (hazard, severity).
    pub detail: String,
    /// Start, Unix ms.
    pub start_unix_ms: u64,
    /// End, Unix ms; `None` while it lasts.
    pub end_unix_ms: Option<u64>,
}

/// A policy the control plane applied or rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyRecord {
    /// When, Unix ms.
    pub at_unix_ms: u64,
    /// `applied`, `no-op` or `rejected`.
    pub outcome: String,
    /// Its version, when it had a readable one.
    pub version: Option<u64>,
    /// SHA-256 of the document (applied ones).
    pub sha256: Option<String>,
    /// Where it came from (`startup`, `http`, `file`, ...).
    pub source: String,
    /// Why it was rejected.
    pub reason: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IntegrityReport {
    /// When it was made, Unix ms.
    pub generated_unix_ms: u64,
    /// `true` when every worker ledger and every listed stream ledger balances.
    pub s11_holds: bool,
    /// The same, in words, with the counts behind it.
    pub statement: String,
    /// Whether the counters are final (the dataplane has stopped).
    pub final_counters: bool,
    /// Per worker.
    pub workers: Vec<WorkerLedger>,
    /// Totals over every worker: drops by reason (scheduler drops, plus `shed`).
    pub dropped_by_reason: BTreeMap<String, u64>,
    /// Refusals at the door by reason (never enqueued).
    pub refused_by_reason: BTreeMap<String, u64>,
    /// Runtime discards that are neither drops nor refusals.
    pub discarded_other: BTreeMap<String, u64>,
    /// The busiest streams' ledgers (bounded by the series limit).
    pub streams: Vec<StreamLedger>,
    /// Backpressure episodes (bounded: the latest ones).
    pub backpressure: Vec<Interval>,
    /// Degrade (health) intervals.
    pub degrade: Vec<Interval>,
    /// Policies applied and rejected.
    pub policy_history: Vec<PolicyRecord>,
}

/// Builds the report from worker counters (each from one consistent instant), the
/// busiest streams and the histories the control plane keeps.
pub fn build(
    generated_unix_ms: u64,
    workers: &[WorkerStats],
    final_counters: bool,
    top: &[TopStream],
    backpressure: Vec<Interval>,
    degrade: Vec<Interval>,
    policy_history: Vec<PolicyRecord>,
) -> IntegrityReport {
    let ledgers: Vec<WorkerLedger> = workers.iter().map(WorkerLedger::of).collect();
    let streams: Vec<StreamLedger> = top.iter().map(stream_ledger).collect();
    let mut dropped = BTreeMap::new();
    for (k, r) in DropReason::ALL.iter().enumerate() {
        let v: u64 = workers
            .iter()
            .flat_map(|w| w.priorities.iter().map(move |p| p.dropped[k]))
            .sum();
        dropped.insert(r.as_str().to_string(), v);
    }
    let shed: u64 = workers.iter().flat_map(|w| w.shed).sum();
    dropped.insert("shed".into(), shed);
    let mut refused = BTreeMap::new();
    for (k, r) in RefuseReason::ALL.iter().enumerate() {
        let v: u64 = workers.iter().map(|w| w.shard.refused[k]).sum();
        refused.insert(r.as_str().to_string(), v);
    }
    let mut other = BTreeMap::new();
    other.insert(
        "unknown_stream".into(),
        workers.iter().map(|w| w.unknown_stream).sum(),
    );
    other.insert(
        "shutdown".into(),
        workers.iter().map(|w| w.shutdown_discarded).sum(),
    );
    other.insert(
        "egress_failed".into(),
        workers.iter().map(|w| w.egress_failed).sum(),
    );
    let bad_workers: Vec<usize> = ledgers
        .iter()
        .filter(|l| !l.conserved)
        .map(|l| l.worker)
        .collect();
    let bad_streams: Vec<&str> = streams
        .iter()
        .filter(|s| !s.conserved)
        .map(|s| s.stream_id.as_str())
        .collect();
    let s11_holds = bad_workers.is_empty() && bad_streams.is_empty() && !workers.is_empty();
    let taken: u64 = ledgers.iter().map(|l| l.taken).sum();
    let sent: u64 = ledgers.iter().map(|l| l.sent).sum();
    let discarded: u64 = ledgers.iter().map(|l| l.discarded).sum();
    let held: u64 = ledgers
        .iter()
        .map(|l| l.queued + l.pending + l.awaiting_reclaim)
        .sum();
    let statement = if workers.is_empty() {
        "S11 cannot be checked: no worker counters were available".to_string()
    } else if s11_holds {
        format!(
            "S11 holds: {taken} packets taken = {sent} sent + {discarded} discarded with a reason + {held} still held (queued, pending or awaiting reclaim), on every worker{}; the {} busiest streams (latest per-stream report) balance",
            if final_counters {
                " (final counters)"
            } else {
                ""
            },
            streams.len()
        )
    } else {
        format!(
            "S11 DOES NOT HOLD: workers {bad_workers:?} and streams {bad_streams:?} do not balance ({taken} taken, {sent} sent, {discarded} discarded, {held} held)"
        )
    };
    IntegrityReport {
        generated_unix_ms,
        s11_holds,
        statement,
        final_counters,
        workers: ledgers,
        dropped_by_reason: dropped,
        refused_by_reason: refused,
        discarded_other: other,
        streams,
        backpressure,
        degrade,
        policy_history,
    }
}

fn stream_ledger(t: &TopStream) -> StreamLedger {
    let s = &t.entry.stats;
    let dropped: BTreeMap<String, u64> = [
        (DropReason::QueueFull, s.dropped_queue_full),
        (DropReason::Disconnected, s.dropped_disconnected),
        (DropReason::Closed, s.dropped_closed),
        (DropReason::Aqm, s.dropped_aqm),
        (DropReason::Expired, s.dropped_expired),
    ]
    .into_iter()
    .map(|(r, v)| (r.as_str().to_string(), v))
    .collect();
    StreamLedger {
        stream_id: t.entry.key.to_string(),
        worker: t.worker,
        priority: s.priority.get(),
        enqueued: s.enqueued,
        dequeued: s.dequeued,
        dropped,
        queued: s.queued,
        shed: t.entry.shed,
        conserved: s.is_conserved(),
    }
}
