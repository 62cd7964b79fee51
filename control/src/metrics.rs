//! The Prometheus exposition (O1), built at scrape time from what the runtime
//! publishes: the workers' counters (read without stopping them), the busiest streams
//! of the latest per-stream report with the counters the workers took at that same
//! instant, the sojourn bucket counts the control thread keeps, and the health state. Nothing here runs on a worker, and no metric library call sits on the packet
//! path: the workers count in plain integers, this module only reads them.
//!
//! Per-stream series are bounded: the `limit` busiest streams (by packets offered, over
//! every worker) keep their own `stream_id` label (the key the stream was opened
//! with); everything else is summed under `stream_id="other"`, computed as the
//! workers' totals minus the listed streams, so the sums over a metric stay exact
//! (closed streams count under `other`, but for the exit report of a discarding stop,
//! which names the streams it closed). A stream entering the busiest set moves its
//! count out of `other`, so `other` is not monotone; every named series is. The
//! per-stream families move when a report completes (every `report_every`), not at
//! every scrape: named streams and the rest always come from the same instant.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use qos_dataplane::runtime::{StreamEntry, StreamReport, WorkerStats};
use qos_dataplane::sched::policy::PRIORITIES;
use qos_dataplane::sched::{DropReason, RefuseReason};

/// Upper bounds of the `qos_scheduling_duration_seconds` buckets, in seconds.
pub const SOJOURN_BUCKETS_S: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// One stream of the merged busiest set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopStream {
    /// The worker that owns it.
    pub worker: usize,
    /// Its report entry.
    pub entry: StreamEntry,
}

/// Merges the workers' reports into the `limit` busiest streams overall, busiest
/// first: by packets offered per second over each report's window (the workers'
/// windows differ in length: a worker may answer late), then by packets offered over
/// the stream's life (ties: lower worker, then lower slot).
pub fn merge_top<'a>(
    reports: impl IntoIterator<Item = &'a StreamReport>,
    limit: usize,
) -> Vec<TopStream> {
    let mut all: Vec<((u128, u64), TopStream)> = reports
        .into_iter()
        .flat_map(|r| {
            let window_ns = u128::from(r.window_ns.max(1));
            r.top.iter().map(move |&entry| {
                let rate = u128::from(entry.window.offered) * 1_000_000_000 / window_ns;
                (
                    (rate, entry.score()),
                    TopStream {
                        worker: r.worker,
                        entry,
                    },
                )
            })
        })
        .collect();
    all.sort_by(|(ra, a), (rb, b)| {
        rb.cmp(ra)
            .then(a.worker.cmp(&b.worker))
            .then(a.entry.id.index().cmp(&b.entry.id.index()))
    });
    all.truncate(limit);
    all.into_iter().map(|(_, t)| t).collect()
}

/// A tier as exported.
#[derive(Clone, Debug, PartialEq)]
pub struct TierGauge {
    /// Tier name (the `priority_tier` label).
    pub name: String,
    /// Configured share, percent.
    pub share_percent: u8,
    /// The tier's allocation of the link, Mbit/s: its share after the shares of
    /// tiers that ask for less were redistributed (the dataplane's link sharing, T6).
    /// Without a link rate in the policy there is nothing to allocate: then it is the
    /// served rate.
    pub allocated_mbps: f64,
    /// Bandwidth the tier was served over the last control tick, Mbit/s.
    pub served_mbps: f64,
}

/// Everything one scrape exports, gathered by the control thread.
#[derive(Debug)]
pub struct MetricsSnapshot {
    /// Every worker's counters, as published now (per-worker families).
    pub workers: Vec<WorkerStats>,
    /// Every worker's counters at the instant its latest per-stream report completed
    /// (the per-stream families: `top` and the `other` rest come from the same
    /// instant, so a packet is never counted under both).
    pub reported: Vec<WorkerStats>,
    /// Heartbeat age per worker, seconds.
    pub heartbeat_age_s: Vec<f64>,
    /// The busiest streams (from the latest complete report).
    pub top: Vec<TopStream>,
    /// Open streams per worker (from the latest report).
    pub open_streams: u64,
    /// Sojourn since start, per priority.
    pub sojourn: Vec<SojournBuckets>,
    /// Tiers of the running policy.
    pub tiers: Vec<TierGauge>,
    /// Health state name (`NORMAL`, `DEGRADED`, `SAFE`, `UNKNOWN`).
    pub health: String,
    /// Per producer: packets handed back on a full ring.
    pub ring_full: Vec<u64>,
    /// Health transitions since start.
    pub health_transitions: u64,
    /// metrics.db: batches written, failed, dropped (queue full).
    pub store: Option<[u64; 3]>,
    /// Audit records written, and append failures.
    pub audit: [u64; 2],
    /// `.hlog` interval lines written and failed, when a log is configured.
    pub hlog: Option<[u64; 2]>,
    /// Policies applied, rejected, and re-applied unchanged (no-op, C2) through the
    /// control plane.
    pub policies: [u64; 3],
    /// The embedder's own families ([`ExtraMetrics`]).
    pub extra: Vec<ExtraFamily>,
}

/// Renders `s` as OpenMetrics text (`GET /metrics` serves it, or its Prometheus 0.0.4
/// form, [`to_prometheus_text`]).
pub fn render(s: MetricsSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(s)));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        // Writing into a String cannot fail; keep the exposition well-formed anyway.
        out.clear();
        let _ = writeln!(out, "# EOF");
    }
    out
}

#[derive(Debug)]
struct Snapshot(MetricsSnapshot);

type Labels = Vec<(&'static str, String)>;

/// One metric family: name, help, type and its labelled values.
fn family<V>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, V)>,
    encode: impl Fn(prometheus_client::encoding::MetricEncoder<'_>, V) -> std::fmt::Result,
    ty: MetricType,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in rows {
        encode(m.encode_family(&labels)?, v)?;
    }
    Ok(())
}

fn counter(m: prometheus_client::encoding::MetricEncoder<'_>, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(m)
}

fn gauge_i(m: prometheus_client::encoding::MetricEncoder<'_>, v: i64) -> std::fmt::Result {
    ConstGauge::new(v).encode(m)
}

fn gauge_f(m: prometheus_client::encoding::MetricEncoder<'_>, v: f64) -> std::fmt::Result {
    ConstGauge::new(v).encode(m)
}

/// The drop reasons of a stream entry (scheduler drops plus degrade shedding).
fn stream_drops(e: &StreamEntry) -> [(&'static str, u64); DropReason::COUNT + 1] {
    let s = &e.stats;
    [
        (DropReason::QueueFull.as_str(), s.dropped_queue_full),
        (DropReason::Disconnected.as_str(), s.dropped_disconnected),
        (DropReason::Closed.as_str(), s.dropped_closed),
        (DropReason::Aqm.as_str(), s.dropped_aqm),
        (DropReason::Expired.as_str(), s.dropped_expired),
        ("shed", e.shed),
    ]
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.0;
        let sum_prio = |f: &dyn Fn(&WorkerStats, usize) -> u64, p: usize| -> u64 {
            s.workers.iter().map(|w| f(w, p)).sum()
        };
        // The per-stream families: named streams and the rest from one instant.
        let sum_reported = |f: &dyn Fn(&WorkerStats, usize) -> u64, p: usize| -> u64 {
            s.reported.iter().map(|w| f(w, p)).sum()
        };
        // Enqueued, per named stream and per priority for the rest.
        let mut rows: Vec<(Labels, u64)> = Vec::new();
        let mut named = [0u64; PRIORITIES];
        for t in &s.top {
            let p = usize::from(t.entry.stats.priority.get());
            named[p] += t.entry.stats.enqueued;
            rows.push((
                vec![
                    ("stream_id", t.entry.key.to_string()),
                    ("priority", p.to_string()),
                ],
                t.entry.stats.enqueued,
            ));
        }
        for (p, named) in named.iter().enumerate() {
            let total = sum_reported(&|w, p| w.priorities[p].enqueued, p);
            rows.push((
                vec![("stream_id", "other".into()), ("priority", p.to_string())],
                total.saturating_sub(*named),
            ));
        }
        family(
            &mut enc,
            "qos_packets_enqueued",
            "Packets accepted by the scheduler (or tail-dropped), per stream; streams beyond the cardinality limit are summed under stream_id=\"other\".",
            rows,
            counter,
            MetricType::Counter,
        )?;

        // Dropped, per named stream and reason; the rest under "other".
        let mut rows: Vec<(Labels, u64)> = Vec::new();
        let mut named = [0u64; DropReason::COUNT + 1];
        for t in &s.top {
            for (k, (reason, v)) in stream_drops(&t.entry).into_iter().enumerate() {
                named[k] += v;
                rows.push((
                    vec![
                        ("stream_id", t.entry.key.to_string()),
                        ("drop_reason", reason.to_string()),
                    ],
                    v,
                ));
            }
        }
        for (k, reason) in DropReason::ALL.iter().enumerate() {
            let total: u64 = (0..PRIORITIES)
                .map(|p| sum_reported(&|w, p| w.priorities[p].dropped[k], p))
                .sum();
            rows.push((
                vec![
                    ("stream_id", "other".into()),
                    ("drop_reason", reason.as_str().to_string()),
                ],
                total.saturating_sub(named[k]),
            ));
        }
        let shed: u64 = s.reported.iter().flat_map(|w| w.shed).sum();
        rows.push((
            vec![
                ("stream_id", "other".into()),
                ("drop_reason", "shed".into()),
            ],
            shed.saturating_sub(named[DropReason::COUNT]),
        ));
        family(
            &mut enc,
            "qos_packets_dropped",
            "Packets dropped after being accepted (tail drop, AQM, expiry, disconnect, close) or shed at ingress by degrade, per stream and reason.",
            rows,
            counter,
            MetricType::Counter,
        )?;

        // Refusals at the door (never enqueued) and runtime discards.
        let mut rows: Vec<(Labels, u64)> = Vec::new();
        for (k, r) in RefuseReason::ALL.iter().enumerate() {
            let v = s.workers.iter().map(|w| w.shard.refused[k]).sum();
            rows.push((vec![("reason", r.as_str().to_string())], v));
        }
        family(
            &mut enc,
            "qos_packets_refused",
            "Packets the scheduler refused at the door (not counted as enqueued), by reason.",
            rows,
            counter,
            MetricType::Counter,
        )?;

        // Queue depth.
        let mut rows: Vec<(Labels, i64)> = Vec::new();
        let mut named_q = 0u64;
        for t in &s.top {
            named_q += t.entry.stats.queued;
            rows.push((
                vec![("stream_id", t.entry.key.to_string())],
                t.entry.stats.queued as i64,
            ));
        }
        let queued: u64 = s.reported.iter().map(|w| w.shard.totals.queued).sum();
        rows.push((
            vec![("stream_id", "other".into())],
            queued.saturating_sub(named_q) as i64,
        ));
        family(
            &mut enc,
            "qos_queue_depth",
            "Packets queued per stream (as of the latest per-stream report for named streams).",
            rows,
            gauge_i,
            MetricType::Gauge,
        )?;

        // Sojourn histograms.
        {
            let mut m = enc.encode_descriptor(
                "qos_scheduling_duration_seconds",
                "Time packets spent in the scheduler (enqueue to dequeue), per priority.",
                None,
                MetricType::Histogram,
            )?;
            for (p, h) in s.sojourn.iter().enumerate() {
                // The encoder accumulates: it takes each bucket's own count.
                let buckets: Vec<(f64, u64)> = SOJOURN_BUCKETS_S
                    .iter()
                    .copied()
                    .chain(std::iter::once(f64::INFINITY))
                    .zip(h.per_bucket)
                    .collect();
                let labels: Labels = vec![("priority", p.to_string())];
                m.encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        h.sum_s, h.count, &buckets, None,
                    )?;
            }
        }

        family(
            &mut enc,
            "qos_bandwidth_allocated_mbps",
            "Each tier's allocation of the link, Mbit/s, after the shares of tiers asking for less were redistributed (the served rate when the policy sets no link rate).",
            s.tiers
                .iter()
                .map(|t| (vec![("priority_tier", t.name.clone())], t.allocated_mbps)),
            gauge_f,
            MetricType::Gauge,
        )?;
        family(
            &mut enc,
            "qos_bandwidth_served_mbps",
            "Bandwidth each tier was served over the last control tick, Mbit/s.",
            s.tiers
                .iter()
                .map(|t| (vec![("priority_tier", t.name.clone())], t.served_mbps)),
            gauge_f,
            MetricType::Gauge,
        )?;
        family(
            &mut enc,
            "qos_tier_share_percent",
            "Configured share of each tier when every tier is backlogged.",
            s.tiers.iter().map(|t| {
                (
                    vec![("priority_tier", t.name.clone())],
                    i64::from(t.share_percent),
                )
            }),
            gauge_i,
            MetricType::Gauge,
        )?;

        let per_worker = |f: &dyn Fn(&WorkerStats) -> u64| -> Vec<(Labels, u64)> {
            s.workers
                .iter()
                .map(|w| (vec![("worker", w.worker.to_string())], f(w)))
                .collect()
        };
        family(
            &mut enc,
            "qos_policy_version",
            "Version of the policy each worker runs.",
            per_worker(&|w| w.policy_version)
                .into_iter()
                .map(|(l, v)| (l, v as i64)),
            gauge_i,
            MetricType::Gauge,
        )?;
        family(
            &mut enc,
            "qos_worker_heartbeat_age_seconds",
            "Time since each worker's latest loop iteration.",
            s.heartbeat_age_s
                .iter()
                .enumerate()
                .map(|(w, &a)| (vec![("worker", w.to_string())], a)),
            gauge_f,
            MetricType::Gauge,
        )?;
        family(
            &mut enc,
            "qos_worker_stalls",
            "Worker loop iterations that took longer than the stall budget.",
            per_worker(&|w| w.stalls),
            counter,
            MetricType::Counter,
        )?;
        family(
            &mut enc,
            "qos_worker_packets_taken",
            "Packets each worker took from its ingress rings.",
            per_worker(&|w| w.taken),
            counter,
            MetricType::Counter,
        )?;
        family(
            &mut enc,
            "qos_worker_packets_sent",
            "Packets each worker handed to its egress.",
            per_worker(&|w| w.sent),
            counter,
            MetricType::Counter,
        )?;
        family(
            &mut enc,
            "qos_worker_packets_discarded",
            "Packets each worker handed to its egress's discard, every reason.",
            per_worker(&|w| w.discarded),
            counter,
            MetricType::Counter,
        )?;
        let descriptors = |f: &dyn Fn(&WorkerStats) -> u32| -> Vec<(Labels, i64)> {
            s.workers
                .iter()
                .map(|w| (vec![("worker", w.worker.to_string())], i64::from(f(w))))
                .collect()
        };
        family(
            &mut enc,
            "qos_descriptors_in_use",
            "Packet descriptors in use per worker.",
            descriptors(&|w| w.shard.descriptors_in_use),
            gauge_i,
            MetricType::Gauge,
        )?;
        family(
            &mut enc,
            "qos_descriptor_capacity",
            "Packet descriptors per worker.",
            descriptors(&|w| w.shard.descriptor_capacity),
            gauge_i,
            MetricType::Gauge,
        )?;
        let sev = |sev: &str, f: &dyn Fn(&WorkerStats, usize) -> u64| -> (Labels, u64) {
            let v = (0..PRIORITIES).map(|p| sum_prio(f, p)).sum();
            (vec![("severity", sev.to_string())], v)
        };
        family(
            &mut enc,
            "qos_backpressure_events",
            "Backpressure signals raised: warning (queue crossed the warning depth) and critical (queue full, tail drop).",
            [
                sev("warning", &|w, p| w.priorities[p].warnings),
                sev("critical", &|w, p| w.priorities[p].criticals),
            ],
            counter,
            MetricType::Counter,
        )?;
        let per_prio = |f: &dyn Fn(&WorkerStats, usize) -> u64| -> Vec<(Labels, u64)> {
            (0..PRIORITIES)
                .map(|p| (vec![("priority", p.to_string())], sum_prio(f, p)))
                .collect()
        };
        family(
            &mut enc,
            "qos_promotions",
            "Streams promoted into the aging lane (starvation guard), per priority.",
            per_prio(&|w, p| w.priorities[p].promotions),
            counter,
            MetricType::Counter,
        )?;
        family(
            &mut enc,
            "qos_budget_violations",
            "Budget windows whose p95 sojourn exceeded the priority's latency budget.",
            per_prio(&|w, p| w.priorities[p].budget_violations),
            counter,
            MetricType::Counter,
        )?;
        family(
            &mut enc,
            "qos_disconnects",
            "Streams disconnected after ignoring critical backpressure, per priority.",
            per_prio(&|w, p| w.priorities[p].disconnects),
            counter,
            MetricType::Counter,
        )?;
        family(
            &mut enc,
            "qos_shed_packets",
            "Packets shed at ingress by degrade, per priority.",
            per_prio(&|w, p| w.shed[p]),
            counter,
            MetricType::Counter,
        )?;
        family(
            &mut enc,
            "qos_ingress_ring_full",
            "Packets handed back to a producer because its ring to a worker was full.",
            s.ring_full
                .iter()
                .enumerate()
                .map(|(p, &v)| (vec![("producer", p.to_string())], v)),
            counter,
            MetricType::Counter,
        )?;
        family(
            &mut enc,
            "qos_streams_open",
            "Streams open over every worker (as of the latest per-stream report).",
            [(Labels::new(), s.open_streams as i64)],
            gauge_i,
            MetricType::Gauge,
        )?;
        family(
            &mut enc,
            "qos_health_state",
            "1 for the current health state, 0 for the others.",
            ["NORMAL", "DEGRADED", "SAFE", "UNKNOWN"]
                .iter()
                .map(|st| (vec![("state", st.to_string())], i64::from(s.health == *st))),
            gauge_i,
            MetricType::Gauge,
        )?;
        family(
            &mut enc,
            "qos_health_transitions",
            "Health state changes since start.",
            [(Labels::new(), s.health_transitions)],
            counter,
            MetricType::Counter,
        )?;
        if let Some([written, failed, dropped]) = s.store {
            family(
                &mut enc,
                "qos_metrics_db_batches",
                "metrics.db batches by outcome (dropped: the store was too slow and its queue full).",
                [
                    (vec![("outcome", "written".into())], written),
                    (vec![("outcome", "failed".into())], failed),
                    (vec![("outcome", "dropped".into())], dropped),
                ],
                counter,
                MetricType::Counter,
            )?;
        }
        if let Some([written, failed]) = s.hlog {
            family(
                &mut enc,
                "qos_hlog_intervals",
                "HDR interval log lines (one per tag and interval) by outcome.",
                [
                    (vec![("outcome", "written".into())], written),
                    (vec![("outcome", "failed".into())], failed),
                ],
                counter,
                MetricType::Counter,
            )?;
        }
        family(
            &mut enc,
            "qos_audit_records",
            "Audit log records by outcome.",
            [
                (vec![("outcome", "written".into())], s.audit[0]),
                (vec![("outcome", "failed".into())], s.audit[1]),
            ],
            counter,
            MetricType::Counter,
        )?;
        family(
            &mut enc,
            "qos_policy_updates",
            "Policies submitted to the control plane, by outcome.",
            [
                (vec![("outcome", "applied".into())], s.policies[0]),
                (vec![("outcome", "rejected".into())], s.policies[1]),
                (vec![("outcome", "noop".into())], s.policies[2]),
            ],
            counter,
            MetricType::Counter,
        )?;
        for f in &s.extra {
            let ty = if f.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut m = enc.encode_descriptor(&f.name, &f.help, None, ty)?;
            for (labels, v) in &f.rows {
                let e = m.encode_family(labels)?;
                if f.counter {
                    counter(e, *v)?;
                } else {
                    gauge_i(e, i64::try_from(*v).unwrap_or(i64::MAX))?;
                }
            }
        }
        Ok(())
    }
}

/// A metric family an embedder adds to the exposition (a daemon's own counters),
/// read at scrape time through [`ExtraMetrics`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraFamily {
    /// Name; a counter's `_total` suffix is added by the encoder.
    pub name: String,
    /// `# HELP` text.
    pub help: String,
    /// Counter (`true`) or gauge.
    pub counter: bool,
    /// Label pairs and value of each series.
    pub rows: Vec<(Vec<(String, String)>, u64)>,
}

/// What an embedder plugs into [`ControlConfig`](crate::plane::ControlConfig) to add
/// its own families to `/metrics`: called on the control thread at every scrape.
#[derive(Clone)]
pub struct ExtraMetrics(pub std::sync::Arc<dyn Fn() -> Vec<ExtraFamily> + Send + Sync>);

impl std::fmt::Debug for ExtraMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtraMetrics(..)")
    }
}

/// Converts the OpenMetrics text [`render`] produces into the Prometheus text format
/// 0.0.4 (what `promtool check metrics` and Prometheus servers without OpenMetrics
/// negotiation read): a counter's `# HELP` / `# TYPE` name the `_total` series, and
/// the `# EOF` marker goes. Samples are unchanged.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The `qos_scheduling_duration_seconds` histogram of one priority, kept by the
/// control thread as histograms arrive from the workers (one pass over each), so a
/// scrape neither copies nor walks an HdrHistogram.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SojournBuckets {
    /// Samples in each bucket of [`SOJOURN_BUCKETS_S`] (value <= bound, above the
    /// previous bound), the last entry above every bound (`+Inf`).
    pub per_bucket: [u64; SOJOURN_BUCKETS_S.len() + 1],
    /// Samples.
    pub count: u64,
    /// Sum of the samples, seconds (HdrHistogram's equivalent values, 3 significant
    /// digits).
    pub sum_s: f64,
}

impl SojournBuckets {
    /// Adds the samples of `h` (ns).
    pub fn add(&mut self, h: &Histogram<u64>) {
        for v in h.iter_recorded() {
            let value = v.value_iterated_to();
            let i = SOJOURN_BUCKETS_S
                .iter()
                .position(|&b| value <= (b * 1e9) as u64)
                .unwrap_or(SOJOURN_BUCKETS_S.len());
            self.per_bucket[i] += v.count_at_value();
        }
        self.count += h.len();
        self.sum_s += h.mean() * h.len() as f64 / 1e9;
    }
}
