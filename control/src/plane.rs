//! The control plane as one object: it owns the [`Dataplane`]'s control handle, runs
//! on its own thread (`qos-control`, never a worker), and every `tick` drains the
//! workers' events into logs and the audit log, feeds the health machine (and sheds
//! tiers when it degrades), collects histograms and per-stream reports, writes `.hlog`
//! intervals and `metrics.db` batches at their periods, and serves the HTTP control
//! API ([`crate::api`]) on a current-thread tokio runtime.
//!
//! Policies go through [`ControlPlane::apply_policy`] (or `POST /policy`): validated
//! as a whole, version-checked, signature-checked when a key is configured, published
//! to the workers, recorded as running, then audited. A rejected policy changes
//! nothing. A failing audit log does not refuse a policy: the failure is counted and
//! warned (`audit.failed`, `/healthz`), so an operator can still act on a full disk.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use hdrhistogram::Histogram;
use qos_dataplane::runtime::{
    Dataplane, PublishError, RuntimeError, ShutdownReport, StopMode, StreamReport, WindowCounts,
    WorkerHistograms, WorkerState, WorkerStats,
};
use qos_dataplane::sched::policy::PRIORITIES;
use qos_dataplane::sched::{Event, Policy, new_sojourn_histogram};
use serde::Serialize;
use thiserror::Error;

use crate::audit::{AuditError, AuditHead, AuditLog, AuditOptions};
use crate::health::{
    HealthConfig, HealthConfigError, HealthMachine, HealthState, Observation, TierOrder,
    Transition, WorkerObservation,
};
use crate::hlog::{HlogError, HlogWriter, cost_tag, sojourn_tag};
use crate::integrity::{self, IntegrityReport, Interval, PolicyRecord};
use crate::logs::{BackpressureSeverity, ControlEvent, emit, new_trace_id};
use crate::metrics::{MetricsSnapshot, SojournBuckets, TierGauge, TopStream, merge_top};
use crate::policy::{Admitted, PolicyGate, PolicyRejection, sha256_hex};
use crate::store::{QosMetricsRow, StoreError, StoreStatus, StoreWorker, TursoStore};

/// Settings of the control plane. `Default` binds the API to 127.0.0.1:9100 and
/// writes no files.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Address of the HTTP control API (port 0: any free port).
    pub listen: SocketAddr,
    /// Required to bind an address that is not loopback (with `bearer_token`).
    pub allow_remote: bool,
    /// When set, every route but `/healthz` needs `Authorization: Bearer <token>`.
    pub bearer_token: Option<String>,
    /// Control tick: events, health, histograms, allocations.
    pub tick: Duration,
    /// How often per-stream reports are refreshed.
    pub report_every: Duration,
    /// Busiest streams that keep their own series (O1 cardinality bound).
    pub series_limit: usize,
    /// `metrics.db` path (O2); `None` writes none.
    pub metrics_db: Option<PathBuf>,
    /// Period of `metrics.db` batches.
    pub metrics_db_period: Duration,
    /// `.hlog` path (O4); `None` writes none.
    pub hlog: Option<PathBuf>,
    /// Period of `.hlog` intervals.
    pub hlog_period: Duration,
    /// Audit log path (C5); `None` keeps none.
    pub audit_log: Option<PathBuf>,
    /// fsync every audit record.
    pub audit_fsync: bool,
    /// A head of the audit log saved earlier (`/status` shows `audit_head`): at start,
    /// a log whose record at that point is missing or changed is refused instead of
    /// continued (continuing would vouch for an edited last line).
    pub audit_anchor: Option<AuditHead>,
    /// With a key, only policies signed by it are accepted (C3).
    pub verifying_key: Option<VerifyingKey>,
    /// Health thresholds (O5).
    pub health: HealthConfig,
    /// Backpressure and degrade intervals kept for the integrity report.
    pub history_limit: usize,
    /// The embedder's own metric families, appended to `/metrics`.
    pub extra_metrics: Option<crate::metrics::ExtraMetrics>,
    /// Time an API client has to send a request's headers (also how long a kept-alive
    /// connection may sit idle) and a policy's body; a slower client is disconnected
    /// (or answered 408). Default 10 s.
    pub client_timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            allow_remote: false,
            bearer_token: None,
            tick: Duration::from_millis(250),
            report_every: Duration::from_secs(1),
            series_limit: 100,
            metrics_db: None,
            metrics_db_period: Duration::from_secs(10),
            hlog: None,
            hlog_period: Duration::from_secs(10),
            audit_log: None,
            audit_fsync: false,
            audit_anchor: None,
            verifying_key: None,
            health: HealthConfig::default(),
            history_limit: 1000,
            extra_metrics: None,
            client_timeout: crate::api::CLIENT_TIMEOUT,
        }
    }
}

/// What a failed worker's `worker.failed` record says: with a fresh heartbeat it runs
/// on (its egress panicked, caught), with a stale one its thread is gone.
fn failure_reason(stale: bool) -> &'static str {
    if stale {
        "its thread panicked: what it held is lost, its streams get nothing"
    } else {
        "its egress panicked: it discards all it receives (counted egress_failed)"
    }
}

/// The workers of `dp` that failed (a panic in their egress or their thread), by index.
fn panicked_workers<P: Send + 'static>(dp: &Dataplane<P>) -> Vec<usize> {
    dp.worker_states()
        .iter()
        .enumerate()
        .filter(|(_, st)| **st == WorkerState::Panicked)
        .map(|(w, _)| w)
        .collect()
}

/// Why the control plane could not start or stop.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The API address is not loopback and `allow_remote` or `bearer_token` is
    /// missing.
    #[error(
        "listen: {addr} is not a loopback address; expected 127.0.0.1 / ::1, or allow_remote = true with a bearer_token"
    )]
    RemoteNotAllowed {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Binding the API address failed.
    #[error("listen: cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("{field}: {value}, expected {expected}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The health settings are invalid.
    #[error(transparent)]
    Health(#[from] HealthConfigError),
    /// The audit log cannot be opened (or continued).
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// `metrics.db` cannot be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The `.hlog` file cannot be created.
    #[error(transparent)]
    Hlog(#[from] HlogError),
    /// The control thread could not start, or panicked.
    #[error("control thread: {0}")]
    Thread(String),
    /// The dataplane reported a worker panic at shutdown.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The outcome of an accepted policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The version now running.
    pub version: u64,
    /// `false` when it was the running version again (idempotent no-op).
    pub changed: bool,
}

/// `GET /status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Health state.
    pub health: HealthState,
    /// Policy version the control plane runs.
    pub policy_version: u64,
    /// Version each worker reports (C2).
    pub worker_policy_versions: Vec<u64>,
    /// Streams open per worker (latest report).
    pub shard_streams: Vec<u64>,
    /// Packets queued per worker.
    pub shard_queued: Vec<u64>,
    /// Heartbeat age per worker, ms.
    pub heartbeat_age_ms: Vec<f64>,
    /// Tiers being shed.
    pub shed_tiers: Vec<String>,
    /// Audit chain head, to anchor it elsewhere.
    pub audit_head: Option<AuditHead>,
    /// metrics.db state, when configured.
    pub metrics_db: Option<StoreStatusView>,
    /// Problems worth an operator's attention (failing store, audit errors).
    pub warnings: Vec<String>,
}

/// What `/status` shows of the metrics store.
#[derive(Clone, Debug, Serialize)]
pub struct StoreStatusView {
    /// Batches written.
    pub batches_written: u64,
    /// Batches that failed.
    pub batches_failed: u64,
    /// Batches dropped because the store fell behind.
    pub batches_dropped: u64,
    /// Last error, if the latest batch failed.
    pub last_error: Option<String>,
}

/// State the control thread and the HTTP handlers share (one lock, control thread
/// only: never touched by a worker).
pub(crate) struct State<P> {
    pub(crate) dataplane: Option<Dataplane<P>>,
    gate: PolicyGate,
    audit: Option<AuditLog>,
    audit_counts: [u64; 2],
    /// `.hlog` interval lines written and failed.
    hlog_counts: [u64; 2],
    /// The last `.hlog` write error, until a tick writes every line again.
    hlog_error: Option<String>,
    audit_error: Option<String>,
    health: HealthMachine,
    health_transitions: u64,
    /// What `POST /reload` runs, when the embedder set it.
    pub(crate) reload: Option<ReloadHook>,
    /// The degrade level audited so far.
    degrade_level: DegradeLevel,
    store: Option<StoreWorker>,
    hlog: Option<HlogWriter>,
    config: ControlConfig,
    // histograms
    cumulative: Vec<SojournBuckets>,
    hlog_sojourn: Vec<Histogram<u64>>,
    hlog_cost: Vec<Histogram<u64>>,
    db_window: Vec<Histogram<u64>>,
    hlog_started: SystemTime,
    db_started: u64,
    /// Failed metrics.db batches already logged.
    db_failed_logged: u64,
    // reports
    reports: Vec<Option<StreamReport>>,
    next_report_ns: u64,
    top: Vec<TopStream>,
    // allocation
    last_tier_bytes: Vec<u64>,
    last_tick_ns: u64,
    tier_mbps: Vec<f64>,
    /// Per tier, the link's allocation (T6) in Mbit/s; empty without a link rate.
    tier_alloc_mbps: Vec<f64>,
    /// metrics.db period so far, from the report windows (only with a store).
    db_period: DbPeriod,
    // health inputs
    last_stalls: Vec<u64>,
    /// Workers announced as failed (`worker.failed`).
    failed: Vec<bool>,
    last_ring_full: u64,
    // histories
    backpressure: std::collections::VecDeque<Interval>,
    open_backpressure: std::collections::HashMap<(usize, u64), usize>,
    degrade: std::collections::VecDeque<Interval>,
    policy_history: std::collections::VecDeque<PolicyRecord>,
    policy_counts: [u64; 3],
    final_report: Option<IntegrityReport>,
}

/// One stream's report windows summed over the walks in which its worker named it.
#[derive(Clone, Copy, Debug, Default)]
struct NamedPeriod {
    counts: WindowCounts,
    /// The summed window lengths, ns: the time the figures above cover.
    window_ns: u64,
}

/// What the workers' report windows add up to since the last metrics.db batch: per
/// stream (worker, full stream id with its generation, and priority: a reused slot or
/// a changed priority is another entry) for every stream a worker named, and per
/// priority for the rest. A batch
/// names the busiest streams of the latest reports; what other streams did (named in
/// an earlier walk of the period, or never) goes to `other`, so the rows of every
/// batch add up exactly to what the dataplane did in the period.
#[derive(Debug, Default)]
struct DbPeriod {
    named: std::collections::HashMap<(usize, u64, usize), NamedPeriod>,
    rest: [WindowCounts; PRIORITIES],
}

impl DbPeriod {
    fn absorb(&mut self, r: &StreamReport) {
        for e in &r.top {
            let p = usize::from(e.stats.priority.get());
            let n = self.named.entry((r.worker, e.id.to_raw(), p)).or_default();
            n.counts.add(&e.window);
            n.window_ns += r.window_ns;
        }
        for (sum, x) in self.rest.iter_mut().zip(&r.rest) {
            sum.add(x);
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch, for records and rows.
#[allow(clippy::disallowed_methods)] // wall-clock stamps of control records, control thread only
pub(crate) fn wall_now() -> SystemTime {
    SystemTime::now()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<P: Send + 'static> State<P> {
    fn new(dataplane: Dataplane<P>, config: ControlConfig) -> Result<Self, ControlError> {
        if config.tick.is_zero() || config.tick > Duration::from_secs(10) {
            return Err(ControlError::Setting {
                field: "tick",
                value: format!("{:?}", config.tick),
                expected: "1 ns ..= 10 s",
            });
        }
        if config.client_timeout < Duration::from_millis(1)
            || config.client_timeout > Duration::from_secs(3600)
        {
            return Err(ControlError::Setting {
                field: "client_timeout",
                value: format!("{:?}", config.client_timeout),
                expected: "1 ms ..= 1 h",
            });
        }
        for (field, d) in [
            ("metrics_db_period", config.metrics_db_period),
            ("hlog_period", config.hlog_period),
            ("report_every", config.report_every),
        ] {
            if d < config.tick {
                return Err(ControlError::Setting {
                    field,
                    value: format!("{d:?}"),
                    expected: ">= tick",
                });
            }
        }
        let policy = dataplane.policy();
        let health = HealthMachine::new(config.health.clone(), TierOrder::from_policy(&policy))?;
        let mut audit = match &config.audit_log {
            Some(path) => Some(AuditLog::open(
                path,
                AuditOptions {
                    fsync: config.audit_fsync,
                    anchor: config.audit_anchor.clone(),
                },
            )?),
            None => None,
        };
        // A torn tail cut at the open is in the audit log already; the JSON logs get
        // it here (it never reached an operator's log before).
        if let Some(repair) = audit.as_mut().and_then(AuditLog::take_repair) {
            emit(&repair);
        }
        let now = wall_now();
        let hlog = match &config.hlog {
            Some(path) => {
                crate::hlog::keep_previous(path)?;
                Some(HlogWriter::create(path, now)?)
            }
            None => None,
        };
        let store = match &config.metrics_db {
            Some(path) => Some(StoreWorker::spawn(
                Box::new(TursoStore::new(path.clone())?),
                4,
            )?),
            None => None,
        };
        let workers = dataplane.workers();
        let mut state = Self {
            gate: PolicyGate::new(&policy, config.verifying_key),
            audit,
            audit_counts: [0; 2],
            hlog_counts: [0; 2],
            hlog_error: None,
            audit_error: None,
            health,
            health_transitions: 0,
            degrade_level: DegradeLevel::default(),
            reload: None,
            store,
            hlog,
            cumulative: vec![SojournBuckets::default(); PRIORITIES],
            hlog_sojourn: (0..PRIORITIES).map(|_| new_sojourn_histogram()).collect(),
            hlog_cost: (0..workers).map(|_| new_sojourn_histogram()).collect(),
            db_window: (0..PRIORITIES).map(|_| new_sojourn_histogram()).collect(),
            hlog_started: now,
            db_started: dataplane.now_ns(),
            db_failed_logged: 0,
            reports: (0..workers).map(|_| None).collect(),
            next_report_ns: 0,
            top: Vec::new(),
            last_tier_bytes: Vec::new(),
            last_tick_ns: dataplane.now_ns(),
            tier_mbps: Vec::new(),
            tier_alloc_mbps: Vec::new(),
            db_period: DbPeriod::default(),
            last_stalls: vec![0; workers],
            failed: vec![false; workers],
            last_ring_full: 0,
            backpressure: std::collections::VecDeque::new(),
            open_backpressure: std::collections::HashMap::new(),
            degrade: std::collections::VecDeque::new(),
            policy_history: std::collections::VecDeque::new(),
            policy_counts: [0; 3],
            final_report: None,
            config,
            dataplane: Some(dataplane),
        };
        state.record_policy(PolicyRecord {
            at_unix_ms: unix_ms(now),
            outcome: "applied".into(),
            version: Some(policy.version()),
            sha256: None,
            source: "startup".into(),
            reason: None,
        });
        Ok(state)
    }

    /// Logs `event` and appends it to the audit log (if any).
    fn record(&mut self, event: &ControlEvent) {
        emit(event);
        if let Some(audit) = self.audit.as_mut() {
            match audit.append(event) {
                Ok(_) => {
                    self.audit_counts[0] += 1;
                    // Written again: the failure is over (and leaves `/healthz`).
                    self.audit_error = None;
                }
                Err(e) => {
                    self.audit_counts[1] += 1;
                    let msg = e.to_string();
                    if self.audit_error.as_deref() != Some(msg.as_str()) {
                        tracing::error!(target: crate::logs::EVENT_TARGET, event = "audit.failed", error = %msg);
                    }
                    self.audit_error = Some(msg);
                }
            }
        }
    }

    fn record_policy(&mut self, r: PolicyRecord) {
        if self.policy_history.len() >= self.config.history_limit.max(1) {
            self.policy_history.pop_front();
        }
        self.policy_history.push_back(r);
    }

    /// Admits, publishes, audits and commits a policy document (C1-C3).
    pub(crate) fn apply_policy(
        &mut self,
        document: &[u8],
        signature: Option<&str>,
        source: &str,
    ) -> Result<Applied, PolicyRejection> {
        let at = unix_ms(wall_now());
        // What is shed now, by the running policy's tier indices (for the audit).
        let shed_before = self
            .dataplane
            .as_ref()
            .map(|dp| (dp.policy(), dp.shed_tiers()));
        let result = self.gate.admit(document, signature).and_then(|admitted| {
            if let Admitted::Apply { policy, .. } = &admitted
                && let Some(dp) = self.dataplane.as_ref()
            {
                dp.publish_policy(policy.clone()).map_err(|e| match e {
                    // The gate checked the version against what it runs; the dataplane
                    // can only be ahead if someone published around the control plane.
                    PublishError::StaleVersion { offered, current } => PolicyRejection::Stale {
                        version: offered,
                        running: current,
                    },
                    PublishError::VersionConflict { version } => PolicyRejection::Conflict {
                        version,
                        sha256_hex: sha256_hex(document),
                    },
                    e => PolicyRejection::Invalid {
                        field: "link.burst_bytes".into(),
                        value: e.to_string(),
                        expected: "a burst that holds one largest packet per worker".into(),
                    },
                })?;
                // The shed mask names tiers by their index in the running policy: the
                // shed set of the new order goes out at once, before the audit write
                // (until then workers adopting the policy read the old mask).
                self.health.set_tier_order(TierOrder::from_policy(policy));
                set_shed(dp, &self.health.shed_tiers());
            }
            self.gate.commit(&admitted)?;
            Ok(admitted)
        });
        match result {
            Ok(Admitted::Apply {
                policy,
                version,
                sha256_hex,
                signed,
            }) => {
                self.policy_counts[0] += 1;
                self.record(&ControlEvent::PolicyApplied {
                    version,
                    source: source.into(),
                    sha256: sha256_hex.clone(),
                    signed,
                });
                if let Some((previous, before)) = shed_before {
                    self.audit_reshed(&previous, before, &policy);
                }
                self.record_policy(PolicyRecord {
                    at_unix_ms: at,
                    outcome: "applied".into(),
                    version: Some(version),
                    sha256: Some(sha256_hex),
                    source: source.into(),
                    reason: None,
                });
                Ok(Applied {
                    version,
                    changed: true,
                })
            }
            Ok(Admitted::NoOp { version }) => {
                self.policy_counts[2] += 1;
                self.record_policy(PolicyRecord {
                    at_unix_ms: at,
                    outcome: "no-op".into(),
                    version: Some(version),
                    sha256: None,
                    source: source.into(),
                    reason: None,
                });
                Ok(Applied {
                    version,
                    changed: false,
                })
            }
            Err(e) => {
                self.policy_counts[1] += 1;
                let version = crate::policy::PolicyDocument::from_bytes(document)
                    .ok()
                    .map(|d| d.version);
                self.record(&ControlEvent::PolicyRejected {
                    version,
                    source: source.into(),
                    reason: e.to_string(),
                });
                self.record_policy(PolicyRecord {
                    at_unix_ms: at,
                    outcome: "rejected".into(),
                    version,
                    sha256: None,
                    source: source.into(),
                    reason: Some(e.to_string()),
                });
                Err(e)
            }
        }
    }

    /// One control tick.
    pub(crate) fn tick(&mut self) {
        let Some(mut dp) = self.dataplane.take() else {
            return;
        };
        let now_ns = dp.now_ns();
        let wall = wall_now();
        self.drain_events(&mut dp, wall);
        let stats = dp.stats();
        self.tick_health(&dp, &stats, now_ns, wall);
        self.tick_allocation(&dp, &stats, now_ns);
        self.collect_histograms(&mut dp);
        if now_ns >= self.next_report_ns {
            for (w, r) in dp
                .stream_reports(self.config.series_limit, Duration::ZERO)
                .into_iter()
                .enumerate()
            {
                if let Some(r) = r {
                    self.absorb_report(w, *r);
                }
            }
            self.top = merge_top(self.reports.iter().flatten(), self.config.series_limit);
            self.next_report_ns = now_ns.saturating_add(ns(self.config.report_every));
        }
        self.dataplane = Some(dp);
        self.tick_hlog(wall, false);
        self.tick_store(now_ns, wall, false);
    }

    /// A worker's report: its windows go to the metrics.db period, and it becomes the
    /// worker's latest.
    fn absorb_report(&mut self, w: usize, r: StreamReport) {
        if self.store.is_some() {
            self.db_period.absorb(&r);
        }
        if let Some(slot) = self.reports.get_mut(w) {
            *slot = Some(r);
        }
    }

    fn drain_events(&mut self, dp: &mut Dataplane<P>, wall: SystemTime) {
        let mut events = Vec::new();
        dp.drain_keyed_events(|w, e, tag| events.push((w, e, tag)));
        let at = unix_ms(wall);
        for (worker, e, tag) in events {
            let key = tag.map_or(0, |t| t.key);
            let stream_id = key.to_string();
            let priority = tag.and_then(|t| t.priority).map_or(0, |p| p.get());
            match e {
                Event::BackpressureWarning { depth, .. } => {
                    self.open_episode(worker, key, priority, "warning", at);
                    self.record(&ControlEvent::BackpressureTriggered {
                        stream_id,
                        priority,
                        queue_depth: depth,
                        severity: BackpressureSeverity::Warning,
                        trace_id: new_trace_id(),
                        worker,
                    });
                }
                Event::BackpressureCritical {
                    depth, strike: 1, ..
                } => {
                    // One record per episode's first tail drop, not one per packet.
                    self.open_episode(worker, key, priority, "critical", at);
                    self.record(&ControlEvent::BackpressureTriggered {
                        stream_id,
                        priority,
                        queue_depth: depth,
                        severity: BackpressureSeverity::Critical,
                        trace_id: new_trace_id(),
                        worker,
                    });
                }
                Event::BackpressureCleared { depth, .. } => {
                    if let Some(i) = self.open_backpressure.remove(&(worker, key))
                        && let Some(iv) = self.backpressure.get_mut(i)
                    {
                        iv.end_unix_ms = Some(at);
                    }
                    self.record(&ControlEvent::BackpressureCleared {
                        stream_id,
                        priority,
                        queue_depth: depth,
                        worker,
                    });
                }
                Event::Disconnected { dropped, .. } => {
                    self.record(&ControlEvent::StreamDisconnected {
                        stream_id,
                        priority,
                        dropped,
                        worker,
                    });
                }
                Event::Promoted { priority: p, .. } => {
                    // Logged, not audited: promotions are routine under load.
                    emit(&ControlEvent::StreamPromoted {
                        stream_id,
                        priority: p.get(),
                        worker,
                    });
                }
                Event::BudgetViolation {
                    priority: p,
                    samples,
                    over_budget,
                    budget_ns,
                } => {
                    self.record(&ControlEvent::PerfBudgetViolation {
                        priority: p.get(),
                        worker,
                        samples,
                        over_budget,
                        budget_ms: budget_ns as f64 / 1e6,
                    });
                }
                _ => {}
            }
        }
    }

    fn open_episode(&mut self, worker: usize, key: u64, priority: u8, severity: &str, at: u64) {
        if self.open_backpressure.contains_key(&(worker, key)) {
            return;
        }
        if self.backpressure.len() >= self.config.history_limit.max(1) {
            self.backpressure.pop_front();
            // Indexes of open episodes shift by one.
            self.open_backpressure.retain(|_, i| {
                if *i == 0 {
                    false
                } else {
                    *i -= 1;
                    true
                }
            });
        }
        self.backpressure.push_back(Interval {
            what: format!("stream {key} (worker {worker}, priority {priority}) backpressure"),
            detail: severity.into(),
            start_unix_ms: at,
            end_unix_ms: None,
        });
        self.open_backpressure
            .insert((worker, key), self.backpressure.len() - 1);
    }

    fn tick_health(
        &mut self,
        dp: &Dataplane<P>,
        stats: &[WorkerStats],
        now_ns: u64,
        wall: SystemTime,
    ) {
        let ring_full: u64 = dp.ring_full_events().iter().sum();
        let ring_delta = ring_full.saturating_sub(self.last_ring_full);
        self.last_ring_full = ring_full;
        // A worker that failed is announced once (log and audit); it stays failed until
        // a restart, and `/healthz` answers 503 meanwhile. The health machine goes on
        // judging the other workers, so shedding keeps following the load they carry.
        for w in panicked_workers(dp) {
            if !self.failed.get(w).copied().unwrap_or(true) {
                self.failed[w] = true;
                let stale = stats.get(w).is_none_or(|s| {
                    now_ns.saturating_sub(s.heartbeat_ns) >= self.config.health.heartbeat_stale_ns
                });
                self.record(&ControlEvent::WorkerFailed {
                    worker: w,
                    reason: failure_reason(stale).into(),
                });
            }
        }
        let obs = observe(stats, &self.failed, &self.last_stalls, ring_delta, now_ns);
        self.last_stalls = stats.iter().map(|s| s.stalls).collect();
        let transitions = self.health.tick(&Observation {
            now_ns,
            workers: &obs,
        });
        for t in transitions {
            self.apply_transition(dp, &t, wall);
        }
    }

    /// A policy was published while shedding (`apply_policy` applied the shed set of
    /// its tier order at once: without it, a policy listing its tiers in another order
    /// made DEGRADED shed High and pass Low until the next transition). If the names
    /// of the tiers shed changed, that is audited.
    fn audit_reshed(&mut self, previous: &Policy, before: u64, policy: &Policy) {
        let shed = self.health.shed_tiers();
        let mut was: Vec<String> = (0..64)
            .filter(|i| before & (1 << i) != 0)
            .map(|i| tier_name(previous, i))
            .collect();
        let names: Vec<String> = shed.iter().map(|&i| tier_name(policy, i)).collect();
        let mut now = names.clone();
        was.sort();
        now.sort();
        if was != now {
            let state = self.health.state().as_str().to_string();
            self.record(&ControlEvent::PerfDegradeApplied {
                from: state.clone(),
                to: state,
                hazard: "policy_changed".into(),
                shed_tiers: names,
            });
        }
    }

    fn apply_transition(&mut self, dp: &Dataplane<P>, t: &Transition, wall: SystemTime) {
        self.health_transitions += 1;
        set_shed(dp, &t.shed_tiers);
        let policy = dp.policy();
        let names: Vec<String> = t
            .shed_tiers
            .iter()
            .map(|&i| tier_name(&policy, i))
            .collect();
        let at = unix_ms(wall);
        if let Some(last) = self.degrade.back_mut()
            && last.end_unix_ms.is_none()
        {
            last.end_unix_ms = Some(at);
        }
        if t.to != HealthState::Normal {
            if self.degrade.len() >= self.config.history_limit.max(1) {
                self.degrade.pop_front();
            }
            self.degrade.push_back(Interval {
                what: t.to.as_str().into(),
                detail: t.hazard.as_str().into(),
                start_unix_ms: at,
                end_unix_ms: None,
            });
        }
        self.record(&ControlEvent::HealthChanged {
            from: t.from.as_str().into(),
            to: t.to.as_str().into(),
            reason: t.hazard.as_str().into(),
        });
        match self.degrade_level.step(t.to, t.at_ns) {
            Some((std::cmp::Ordering::Greater, _)) => {
                self.record(&ControlEvent::PerfDegradeApplied {
                    from: t.from.as_str().into(),
                    to: t.to.as_str().into(),
                    hazard: t.hazard.as_str().into(),
                    shed_tiers: names,
                });
            }
            Some((std::cmp::Ordering::Less, held_ns)) => {
                self.record(&ControlEvent::PerfDegradeRecovered {
                    from: t.from.as_str().into(),
                    to: t.to.as_str().into(),
                    held_ms: held_ns / 1_000_000,
                });
            }
            _ => {}
        }
    }

    fn tick_allocation(&mut self, dp: &Dataplane<P>, stats: &[WorkerStats], now_ns: u64) {
        let tiers = dp.policy().tiers().len();
        let mut bytes = vec![0u64; tiers];
        for s in stats {
            for (t, b) in bytes.iter_mut().enumerate() {
                *b += s.tier_bytes.get(t).copied().unwrap_or(0);
            }
        }
        let dt = now_ns.saturating_sub(self.last_tick_ns);
        if self.last_tier_bytes.len() == tiers && dt > 0 {
            self.tier_mbps = bytes
                .iter()
                .zip(&self.last_tier_bytes)
                .map(|(b, l)| b.saturating_sub(*l) as f64 * 8.0 * 1e3 / dt as f64)
                .collect();
        } else {
            self.tier_mbps = vec![0.0; tiers];
        }
        // Every worker computes the same allocation from the same demand board; the
        // one pacing the most link computed it most recently (an idle worker stops).
        self.tier_alloc_mbps = stats
            .iter()
            .filter(|s| s.link_rate_bps > 0)
            .max_by_key(|s| s.link_rate_bps)
            .map(|s| {
                s.tier_alloc_bps[..tiers.min(s.tier_alloc_bps.len())]
                    .iter()
                    .map(|&b| b as f64 / 1e6)
                    .collect()
            })
            .unwrap_or_default();
        self.last_tier_bytes = bytes;
        self.last_tick_ns = now_ns;
    }

    fn collect_histograms(&mut self, dp: &mut Dataplane<P>) {
        let hists = dp.take_histograms(Duration::from_millis(5));
        self.absorb_histograms(&hists);
    }

    /// Adds each worker's histograms to the cumulative, `.hlog` and metrics.db windows.
    fn absorb_histograms(&mut self, hists: &[Option<Box<WorkerHistograms>>]) {
        for (w, h) in hists.iter().enumerate() {
            let Some(h) = h else { continue };
            for (p, s) in h.sojourn.iter().enumerate() {
                // Same bounds on both sides: `add` cannot fail.
                self.cumulative[p].add(s);
                let _ = self.hlog_sojourn[p].add(s);
                let _ = self.db_window[p].add(s);
            }
            if let Some(c) = self.hlog_cost.get_mut(w) {
                let _ = c.add(&h.iteration_ns);
            }
        }
    }

    fn tick_hlog(&mut self, wall: SystemTime, force: bool) {
        let Some(writer) = self.hlog.as_mut() else {
            return;
        };
        let elapsed = wall
            .duration_since(self.hlog_started)
            .unwrap_or(Duration::ZERO);
        if !force && elapsed < self.config.hlog_period {
            return;
        }
        let mut failed = None;
        let sojourn = self
            .hlog_sojourn
            .iter_mut()
            .enumerate()
            .map(|(p, h)| (sojourn_tag(p as u8), h));
        let cost = self
            .hlog_cost
            .iter_mut()
            .enumerate()
            .map(|(w, h)| (cost_tag(w), h));
        for (tag, h) in sojourn.chain(cost) {
            let written = writer.write_interval(&tag, self.hlog_started, elapsed, h);
            self.hlog_counts[usize::from(written.is_err())] += 1;
            if let Err(e) = written {
                failed = Some(e.to_string());
            }
            h.reset();
        }
        if let Some(e) = &failed {
            tracing::error!(target: crate::logs::EVENT_TARGET, event = "hlog.failed", error = %e);
        }
        self.hlog_error = failed;
        self.hlog_started = wall;
    }

    fn tick_store(&mut self, now_ns: u64, wall: SystemTime, force: bool) {
        self.log_store_failures();
        if self.store.is_none() {
            return;
        }
        let elapsed = now_ns.saturating_sub(self.db_started);
        if !force && elapsed < ns(self.config.metrics_db_period) {
            return;
        }
        let rows = self.metrics_rows(unix_ms(wall) as i64, elapsed);
        for h in &mut self.db_window {
            h.reset();
        }
        self.db_started = now_ns;
        if let Some(store) = self.store.as_ref()
            && store.submit(rows).is_err()
        {
            tracing::warn!(target: crate::logs::EVENT_TARGET, event = "metrics_db.dropped", reason = "the store is behind; batch dropped");
        }
    }

    /// Logs `metrics_db.failed` for the batches that failed since the last tick, with
    /// the latest error: the error itself leaves `/status` once a batch is written
    /// again, the log keeps it.
    fn log_store_failures(&mut self) {
        if let Some(st) = self.store.as_ref().map(|s| s.status()) {
            self.log_failures_in(&st);
        }
    }

    /// Logs `metrics_db.failed` for the failures `st` counts that are not logged yet.
    fn log_failures_in(&mut self, st: &StoreStatus) {
        if st.batches_failed > self.db_failed_logged {
            let failed = st.batches_failed - self.db_failed_logged;
            self.db_failed_logged = st.batches_failed;
            let error = st.last_error.as_deref().unwrap_or("unknown");
            tracing::error!(target: crate::logs::EVENT_TARGET, event = "metrics_db.failed", batches = failed, error = %error);
        }
    }

    /// QoSMetrics rows: one per busiest stream plus one `other` per priority (O2).
    /// Drops and bandwidth come from the report windows of the period (see
    /// [`DbPeriod`]): a stream's row counts what it did while its worker named it, and
    /// `other` everything else, so the rows add up to the period's totals exactly.
    fn metrics_rows(&mut self, ts: i64, elapsed_ns: u64) -> Vec<QosMetricsRow> {
        // NaN (stored as NULL) when a priority sent nothing in the period.
        let p95: Vec<f64> = self
            .db_window
            .iter()
            .map(|h| {
                if h.is_empty() {
                    f64::NAN
                } else {
                    h.value_at_quantile(0.95) as f64 / 1e6
                }
            })
            .collect();
        let secs = (elapsed_ns as f64 / 1e9).max(1e-9);
        let reported = self.reported();
        // Reports count packets; bandwidth is packets served times the mean packet
        // size served at the priority.
        let mean_bits: [f64; PRIORITIES] = std::array::from_fn(|p| {
            let (bytes, packets) = reported.iter().fold((0u64, 0u64), |(b, n), w| {
                (
                    b + w.priorities[p].dequeued_bytes,
                    n + w.priorities[p].dequeued,
                )
            });
            if packets == 0 {
                0.0
            } else {
                bytes as f64 * 8.0 / packets as f64
            }
        });
        let mut period = std::mem::take(&mut self.db_period);
        let mut rows = Vec::with_capacity(self.top.len() + PRIORITIES);
        let mut named = std::collections::HashSet::new();
        for t in &self.top {
            let s = &t.entry.stats;
            let p = usize::from(s.priority.get());
            let key = (t.worker, t.entry.id.to_raw(), p);
            named.insert(key);
            let n = period.named.remove(&key).unwrap_or_default();
            rows.push(QosMetricsRow {
                timestamp_ms: ts,
                stream_id: t.entry.key.to_string(),
                priority: s.priority.get(),
                queue_depth: s.queued,
                packets_dropped: n.counts.dropped,
                // The rate over the time its worker named it (its windows).
                bandwidth_allocated_mbps: if n.window_ns == 0 {
                    0.0
                } else {
                    n.counts.dequeued as f64 * mean_bits[p] * 1e3 / n.window_ns as f64
                },
                latency_p95_ms: p95[p],
            });
        }
        // Streams named earlier in the period, or by a worker but not overall.
        for (&(_, _, p), n) in &period.named {
            period.rest[p].add(&n.counts);
        }
        // Depth of the rest: as the latest walk of each worker saw it.
        let mut rest_queued = [0u64; PRIORITIES];
        for r in self.reports.iter().flatten() {
            for (q, x) in rest_queued.iter_mut().zip(&r.rest_queued) {
                *q += x;
            }
            for e in &r.top {
                let p = usize::from(e.stats.priority.get());
                if !named.contains(&(r.worker, e.id.to_raw(), p)) {
                    rest_queued[p] += e.stats.queued;
                }
            }
        }
        for p in 0..PRIORITIES {
            rows.push(QosMetricsRow {
                timestamp_ms: ts,
                stream_id: "other".into(),
                priority: p as u8,
                queue_depth: rest_queued[p],
                packets_dropped: period.rest[p].dropped,
                bandwidth_allocated_mbps: period.rest[p].dequeued as f64 * mean_bits[p]
                    / secs
                    / 1e6,
                latency_p95_ms: p95[p],
            });
        }
        rows
    }

    /// Each worker's counters at the instant its latest per-stream report completed.
    fn reported(&self) -> Vec<WorkerStats> {
        self.reports
            .iter()
            .flatten()
            .map(|r| r.stats.clone())
            .collect()
    }

    pub(crate) fn metrics_snapshot(&self) -> MetricsSnapshot {
        let (workers, ages, ring_full, tiers) = match self.dataplane.as_ref() {
            Some(dp) => {
                let stats = dp.stats();
                let now = dp.now_ns();
                let ages = stats
                    .iter()
                    .map(|s| now.saturating_sub(s.heartbeat_ns) as f64 / 1e9)
                    .collect();
                let policy = dp.policy();
                let tiers = policy
                    .tiers()
                    .iter()
                    .enumerate()
                    .map(|(i, t)| TierGauge {
                        name: t.name.clone(),
                        share_percent: t.share_percent,
                        allocated_mbps: self
                            .tier_alloc_mbps
                            .get(i)
                            .or_else(|| self.tier_mbps.get(i))
                            .copied()
                            .unwrap_or(0.0),
                        served_mbps: self.tier_mbps.get(i).copied().unwrap_or(0.0),
                    })
                    .collect();
                (stats, ages, dp.ring_full_events(), tiers)
            }
            None => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        };
        MetricsSnapshot {
            workers,
            heartbeat_age_s: ages,
            top: self.top.clone(),
            open_streams: self.reports.iter().flatten().map(|r| r.open_streams).sum(),
            reported: self.reported(),
            sojourn: self.cumulative.clone(),
            tiers,
            health: self.health.state().as_str().into(),
            ring_full,
            health_transitions: self.health_transitions,
            store: self.store.as_ref().map(|s| {
                let st = s.status();
                [st.batches_written, st.batches_failed, st.batches_dropped]
            }),
            audit: self.audit_counts,
            hlog: self.hlog.as_ref().map(|_| self.hlog_counts),
            policies: self.policy_counts,
            extra: self
                .config
                .extra_metrics
                .as_ref()
                .map(|f| (f.0)())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn health_state(&self) -> HealthState {
        self.health.state()
    }

    /// Workers that failed (a panic in their egress or their thread), by index.
    pub(crate) fn failed_workers(&self) -> Vec<usize> {
        self.dataplane
            .as_ref()
            .map_or_else(Vec::new, panicked_workers)
    }

    /// What fails beside the dataplane's traffic (metrics.db, the audit log, the .hlog),
    /// never a reason to shed traffic, and a worker that failed (`/healthz` then answers
    /// 503): reported by `/status` and `/healthz`.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let store = self.store.as_ref().map(|s| s.status());
        self.warnings_with(store.as_ref().and_then(StoreStatus::failing))
    }

    /// [`State::warnings`] with the metrics.db error already read.
    fn warnings_with(&self, store_error: Option<&str>) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(e) = store_error {
            warnings.push(format!("metrics.db failing: {e}"));
        }
        if let Some(e) = &self.audit_error {
            warnings.push(format!("audit log failing: {e}"));
        }
        if let Some(e) = &self.hlog_error {
            warnings.push(format!(".hlog failing: {e}"));
        }
        for w in self.failed_workers() {
            warnings.push(format!(
                "worker {w} failed: a panic in its egress (it discards all it receives, \
                 counted egress_failed) or in its thread (what it held is lost); restart to \
                 recover"
            ));
        }
        warnings
    }

    pub(crate) fn status(&self) -> Status {
        let (versions, queued, ages, shed) = match self.dataplane.as_ref() {
            Some(dp) => {
                let stats = dp.stats();
                let now = dp.now_ns();
                let policy = dp.policy();
                let mask = dp.shed_tiers();
                let shed = (0..policy.tiers().len())
                    .filter(|&t| t < 64 && mask & (1 << t) != 0)
                    .map(|t| tier_name(&policy, t))
                    .collect();
                (
                    stats.iter().map(|s| s.policy_version).collect(),
                    stats.iter().map(|s| s.shard.totals.queued).collect(),
                    stats
                        .iter()
                        .map(|s| now.saturating_sub(s.heartbeat_ns) as f64 / 1e6)
                        .collect(),
                    shed,
                )
            }
            None => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        };
        let store = self.store.as_ref().map(|s| {
            let st = s.status();
            StoreStatusView {
                batches_written: st.batches_written,
                batches_failed: st.batches_failed,
                batches_dropped: st.batches_dropped,
                last_error: st.failing().map(str::to_string),
            }
        });
        let warnings = self.warnings_with(store.as_ref().and_then(|v| v.last_error.as_deref()));
        Status {
            health: self.health.state(),
            policy_version: self.gate.running_version(),
            worker_policy_versions: versions,
            shard_streams: self
                .reports
                .iter()
                .map(|r| r.as_ref().map_or(0, |r| r.open_streams))
                .collect(),
            shard_queued: queued,
            heartbeat_age_ms: ages,
            shed_tiers: shed,
            audit_head: self.audit.as_ref().map(AuditLog::head),
            metrics_db: store,
            warnings,
        }
    }

    pub(crate) fn integrity(&self) -> IntegrityReport {
        if let Some(r) = &self.final_report {
            return r.clone();
        }
        // Per-worker counters from each worker's latest report: one consistent
        // instant per worker.
        self.integrity_from(&self.reported(), false)
    }

    fn integrity_from(&self, workers: &[WorkerStats], final_counters: bool) -> IntegrityReport {
        integrity::build(
            unix_ms(wall_now()),
            workers,
            final_counters,
            &self.top,
            self.backpressure.iter().cloned().collect(),
            self.degrade.iter().cloned().collect(),
            self.policy_history.iter().cloned().collect(),
        )
    }

    /// Final tick, flush, dataplane shutdown.
    pub(crate) fn shutdown(&mut self, mode: StopMode) -> Result<ShutdownReport, ControlError> {
        self.tick();
        let Some(dp) = self.dataplane.take() else {
            return Err(ControlError::Thread("dataplane already stopped".into()));
        };
        let before_ns = dp.now_ns();
        let result = dp.shutdown(mode);
        let wall = wall_now();
        let report = match &result {
            Ok(r) => Some(r),
            Err(RuntimeError::WorkerPanicked { report, .. }) => Some(&**report),
            #[allow(unreachable_patterns)]
            Err(_) => None,
        };
        // The end of the last period on the dataplane's own clock: the workers' last
        // heartbeat (their final counters are published at exit).
        let end_ns = report
            .and_then(|r| r.workers.iter().map(|w| w.heartbeat_ns).max())
            .unwrap_or(before_ns)
            .max(before_ns);
        // What the workers recorded after the last tick goes into the last `.hlog`
        // interval and metrics.db batch.
        if let Some(r) = report {
            self.absorb_histograms(&r.histograms);
            // The reports the workers handed back at exit: the last windows, and the
            // busiest streams at the end (after a discarding stop, the streams it
            // closed, with what it dropped of each).
            for (w, late) in r.reports.iter().enumerate() {
                for x in late {
                    self.absorb_report(w, x.clone());
                }
            }
            self.top = merge_top(self.reports.iter().flatten(), self.config.series_limit);
            self.final_report = Some(self.integrity_from(&r.workers, true));
        }
        self.tick_hlog(wall, true);
        self.tick_store(end_ns, wall, true);
        if let Some(store) = self.store.take() {
            let stop = store.stop(Duration::from_secs(5));
            // The last batches' failures, and batches the store never finished.
            self.log_failures_in(&stop.status);
            if !stop.completed || stop.pending_batches > 0 {
                tracing::error!(target: crate::logs::EVENT_TARGET, event = "metrics_db.failed", batches = stop.pending_batches, error = "the store did not finish within 5 s at shutdown; these batches are lost");
            }
        }
        Ok(result?)
    }
}

/// The degrade level audited so far: the last health state other than UNKNOWN. UNKNOWN
/// only freezes the shed set, so it is skipped over: NORMAL, UNKNOWN, DEGRADED is an
/// escalation (it went unaudited while UNKNOWN ranked above SAFE), DEGRADED, UNKNOWN,
/// DEGRADED nothing.
#[derive(Clone, Copy, Debug)]
struct DegradeLevel {
    level: HealthState,
    /// When `level` was entered, ns on the health machine's clock.
    since_ns: u64,
}

impl Default for DegradeLevel {
    fn default() -> Self {
        Self {
            level: HealthState::Normal,
            since_ns: 0,
        }
    }
}

impl DegradeLevel {
    /// Records a transition to `to` at `at_ns`; returns `Greater` when it escalates
    /// the degrade (`perf.degrade.applied`), `Less` when it eases it
    /// (`perf.degrade.recovered`), with how long the level left was held, in ns;
    /// `None` otherwise (UNKNOWN, or the same level).
    fn step(&mut self, to: HealthState, at_ns: u64) -> Option<(std::cmp::Ordering, u64)> {
        if to == HealthState::Unknown {
            return None;
        }
        // Neither side is UNKNOWN here: the level holds only known states.
        let order = to.rank().cmp(&self.level.rank());
        if order.is_eq() {
            return None;
        }
        let held = at_ns.saturating_sub(self.since_ns);
        self.level = to;
        self.since_ns = at_ns;
        Some((order, held))
    }
}

/// One tick's observation of every worker for the health machine. A failed worker
/// carries no load and is seen as idle: a thread that panicked has a heartbeat that
/// only ages, and judging it kept the machine UNKNOWN, its shedding frozen, until a
/// restart. Its failure is reported apart (`worker.failed`, `/healthz` 503). The ring
/// full events (all producers together) go to the first worker still running.
fn observe(
    stats: &[WorkerStats],
    failed: &[bool],
    last_stalls: &[u64],
    ring_delta: u64,
    now_ns: u64,
) -> Vec<WorkerObservation> {
    let is_failed = |w: usize| failed.get(w).copied().unwrap_or(false);
    let ring_worker = (0..stats.len()).find(|&w| !is_failed(w)).unwrap_or(0);
    stats
        .iter()
        .enumerate()
        .map(|(w, s)| {
            let ring_full_events = if w == ring_worker { ring_delta } else { 0 };
            if is_failed(w) {
                return WorkerObservation {
                    heartbeat_age_ns: 0,
                    stalled: false,
                    pool_queued: 0,
                    pool_capacity: 0,
                    ring_full_events,
                };
            }
            WorkerObservation {
                heartbeat_age_ns: now_ns.saturating_sub(s.heartbeat_ns),
                stalled: s.stalls > last_stalls.get(w).copied().unwrap_or(0),
                pool_queued: u64::from(s.shard.descriptors_in_use),
                pool_capacity: u64::from(s.shard.descriptor_capacity),
                ring_full_events,
            }
        })
        .collect()
}

/// Sheds `tiers` (indices in the running policy) at the dataplane's ingress, if that
/// is not what it sheds already.
fn set_shed<P: Send + 'static>(dp: &Dataplane<P>, tiers: &[usize]) {
    let mask = tiers
        .iter()
        .filter(|&&i| i < 64)
        .fold(0u64, |m, &i| m | (1 << i));
    if mask != dp.shed_tiers() {
        dp.set_shed_tiers(mask);
    }
}

fn tier_name(policy: &Policy, i: usize) -> String {
    policy
        .tiers()
        .get(i)
        .map_or_else(|| format!("tier{i}"), |t| t.name.clone())
}

/// What `POST /reload` runs: `Ok(policy version now running)` or why it refused.
pub type ReloadHook = Arc<dyn Fn() -> Result<u64, String> + Send + Sync>;

/// A running control plane (see the module docs).
pub struct ControlPlane<P: Send + 'static> {
    state: Arc<Mutex<State<P>>>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<P: Send + 'static> std::fmt::Debug for ControlPlane<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("addr", &self.addr)
            .finish()
    }
}

pub(crate) fn lock<P>(state: &Mutex<State<P>>) -> MutexGuard<'_, State<P>> {
    // A panic while holding the lock leaves consistent data (each step completes or
    // is abandoned whole); keep serving.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<P: Send + 'static> ControlPlane<P> {
    /// Takes over `dataplane`'s control handle and starts the control thread and
    /// its HTTP API.
    pub fn start(dataplane: Dataplane<P>, config: ControlConfig) -> Result<Self, ControlError> {
        let addr = config.listen;
        if !(addr.ip().is_loopback() || config.allow_remote && config.bearer_token.is_some()) {
            return Err(ControlError::RemoteNotAllowed { addr });
        }
        let listener =
            TcpListener::bind(addr).map_err(|source| ControlError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ControlError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ControlError::Bind { addr, source })?;
        let limits = crate::api::Limits {
            tick: config.tick,
            token: config.bearer_token.clone(),
            client_timeout: config.client_timeout,
        };
        let state = Arc::new(Mutex::new(State::new(dataplane, config)?));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("qos-control".into())
            .spawn(move || crate::api::run(shared, listener, limits, stop_rx))
            .map_err(|e| ControlError::Thread(e.to_string()))?;
        Ok(Self {
            state,
            addr: local,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The API's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Validates, publishes and audits a policy document (what `POST /policy` does).
    pub fn apply_policy(
        &self,
        document: &[u8],
        signature: Option<&str>,
        source: &str,
    ) -> Result<Applied, PolicyRejection> {
        lock(&self.state).apply_policy(document, signature, source)
    }

    /// Sets what `POST /reload` runs (C4): a daemon re-reading its configuration file
    /// returns the policy version it runs, or why the file was refused. The hook runs
    /// on a blocking thread, without the plane's lock, so it may call the plane (as
    /// [`ControlPlane::apply_policy`] and [`ControlPlane::record_event`] do). Without a
    /// hook, `POST /reload` answers 409: nothing to reload.
    pub fn set_reload_hook(&self, hook: ReloadHook) {
        lock(&self.state).reload = Some(hook);
    }

    /// Logs `event` as a JSON line and appends it to the audit log (if one is
    /// configured): for what an embedder decides around the plane, such as a daemon's
    /// configuration reload.
    pub fn record_event(&self, event: &ControlEvent) {
        lock(&self.state).record(event);
    }

    /// Runs one control tick now (the thread also runs them every `tick`).
    pub fn tick_now(&self) {
        lock(&self.state).tick();
    }

    /// `GET /status`.
    pub fn status(&self) -> Status {
        lock(&self.state).status()
    }

    /// The health state.
    pub fn health(&self) -> HealthState {
        lock(&self.state).health_state()
    }

    /// `GET /integrity`.
    pub fn integrity(&self) -> IntegrityReport {
        lock(&self.state).integrity()
    }

    /// The Prometheus exposition (`GET /metrics`).
    pub fn metrics_text(&self) -> String {
        let snapshot = lock(&self.state).metrics_snapshot();
        crate::metrics::render(snapshot)
    }

    /// Runs `f` on the dataplane's control handle (while it runs).
    pub fn with_dataplane<R>(&self, f: impl FnOnce(&mut Dataplane<P>) -> R) -> Option<R> {
        lock(&self.state).dataplane.as_mut().map(f)
    }

    /// Stops the API thread, runs a last tick, stops the dataplane (`mode`), writes
    /// the last `.hlog` interval and `metrics.db` batch, and returns the dataplane's
    /// report with the final integrity report.
    pub fn shutdown(
        mut self,
        mode: StopMode,
    ) -> Result<(ShutdownReport, IntegrityReport), ControlError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            return Err(ControlError::Thread("the control thread panicked".into()));
        }
        let mut state = lock(&self.state);
        let report = state.shutdown(mode)?;
        let integrity = state.integrity();
        Ok((report, integrity))
    }
}

impl<P: Send + 'static> Drop for ControlPlane<P> {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering::{Greater, Less};

    use qos_dataplane::runtime::WorkerStats;

    use super::{DegradeLevel, observe};
    use crate::health::HealthState::{self, Degraded, Normal, Safe, Unknown};
    use crate::health::{HealthConfig, HealthMachine, Observation, TierOrder};

    const MS: u64 = 1_000_000;

    /// The degrade events `apply_transition` records for a sequence of states.
    fn events(states: &[HealthState]) -> Vec<Option<std::cmp::Ordering>> {
        let mut level = DegradeLevel::default();
        states
            .iter()
            .map(|&to| level.step(to, 0).map(|(o, _)| o))
            .collect()
    }

    /// Found by a red-team review: a stall longer than the heartbeat threshold goes
    /// NORMAL, UNKNOWN, DEGRADED (shedding Low), NORMAL; the shedding was never audited
    /// as `perf.degrade.applied` (UNKNOWN ranked above DEGRADED), though its end was
    /// audited as `perf.degrade.recovered`. Sequences the machine produces: it starts
    /// UNKNOWN; out of UNKNOWN it goes to NORMAL or to the level the hazards give.
    #[test]
    fn o5_shedding_that_starts_or_ends_beside_unknown_is_audited() {
        assert_eq!(events(&[Unknown, Normal]), [None, None]);
        assert_eq!(
            events(&[Normal, Unknown, Degraded, Normal]),
            [None, None, Some(Greater), Some(Less)]
        );
        assert_eq!(
            events(&[Normal, Unknown, Safe, Degraded, Normal]),
            [None, None, Some(Greater), Some(Less), Some(Less)]
        );
        assert_eq!(
            events(&[Degraded, Unknown, Degraded, Normal]),
            [Some(Greater), None, None, Some(Less)]
        );
        assert_eq!(
            events(&[Degraded, Unknown, Safe]),
            [Some(Greater), None, Some(Greater)]
        );
    }

    /// Health red team: `perf.degrade.recovered.held_ms`, documented as how long the
    /// state it left was held, was the configured recovery hold (300 where DEGRADED
    /// had lasted 2,400 ms). It is the time since that level was entered; UNKNOWN in
    /// between does not restart it.
    #[test]
    fn o5_recovered_held_ms_is_how_long_the_level_was_held() {
        let mut level = DegradeLevel::default();
        assert!(level.step(Degraded, 1_000 * MS).is_some());
        assert_eq!(level.step(Unknown, 1_500 * MS), None);
        assert_eq!(level.step(Degraded, 2_000 * MS), None);
        let (_, held) = level.step(Safe, 3_400 * MS).unwrap();
        assert_eq!(held, 2_400 * MS, "DEGRADED from 1,000 to 3,400 ms");
        let (_, held) = level.step(Normal, 3_900 * MS).unwrap();
        assert_eq!(held, 500 * MS);
    }

    fn worker(heartbeat_ns: u64, pool_pct: u32) -> WorkerStats {
        let mut s = WorkerStats {
            heartbeat_ns,
            ..WorkerStats::default()
        };
        s.shard.descriptor_capacity = 1_000;
        s.shard.descriptors_in_use = pool_pct * 10;
        s
    }

    /// Health red team: a worker whose thread panicked has a heartbeat that only ages.
    /// Judged like the others, it kept the machine UNKNOWN, and the Low tier shed,
    /// for as long as the process ran (an hour of ticks in the red team's run).
    /// Failed workers are seen idle; the others' load decides.
    #[test]
    fn o5_a_dead_worker_does_not_freeze_shedding() {
        let mut m = HealthMachine::new(
            HealthConfig::default(),
            TierOrder::new(vec![2, 1, 0]).unwrap(),
        )
        .unwrap();
        let failed = [false, true];
        let tick = |m: &mut HealthMachine, now: u64, stats: &[WorkerStats], failed: &[bool]| {
            let obs = observe(stats, failed, &[0, 0], 0, now);
            m.tick(&Observation {
                now_ns: now,
                workers: &obs,
            });
        };
        // Worker 1's pool at 85% while it ran: DEGRADED, Low shed.
        tick(&mut m, 0, &[worker(0, 0), worker(0, 85)], &[false, false]);
        assert_eq!(m.state(), Degraded);
        // Its thread dies (heartbeat frozen at 0); worker 0 stays calm.
        let mut now = 0;
        for _ in 0..400 {
            now += 250 * MS;
            tick(&mut m, now, &[worker(now, 0), worker(0, 85)], &failed);
        }
        assert_eq!(m.state(), Normal);
        assert!(m.shed_tiers().is_empty());
        // Judged as running, the same worker holds the machine UNKNOWN.
        tick(
            &mut m,
            now + 250 * MS,
            &[worker(now, 0), worker(0, 0)],
            &[false, false],
        );
        assert_eq!(m.state(), Unknown);
    }

    /// The producers' ring-full count goes to a worker still running.
    #[test]
    fn o5_ring_full_events_are_seen_on_a_running_worker() {
        let stats = [worker(0, 0), worker(0, 0)];
        let obs = observe(&stats, &[true, false], &[0, 0], 7, 0);
        assert_eq!((obs[0].ring_full_events, obs[1].ring_full_events), (0, 7));
        assert_eq!(observe(&stats, &[], &[], 7, 0)[0].ring_full_events, 7);
    }
}
