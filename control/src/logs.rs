//! The control plane's event vocabulary and its JSON-lines logs (O3).
//!
//! [`ControlEvent`] is the one definition of what the control plane reports: the JSON
//! logs ([`emit`]) and the audit log ([`crate::audit`]) both carry it, under the same
//! dotted names (`backpressure.triggered`, `perf.degrade.applied`, ...) and field names.
//!
//! # Log lines
//!
//! [`json_subscriber`] builds a `tracing` subscriber that writes one JSON object a line.
//! The event's fields are flattened to the top level next to what the formatter adds:
//!
//! ```json
//! {"timestamp":"2025-10-01T10:30:00.123456Z","level":"WARN","event":"backpressure.triggered",
//!  "stream_id":"3","priority":7,"queue_depth":9500,"severity":"warning",
//!  "trace_id":"5f0c…","worker":1,"target":"qos_control::event"}
//! ```
//!
//! (one line in the file; wrapped here). Every field of the event appears under its
//! serde name with the same value as in the audit log, with two exceptions imposed by
//! `tracing`'s value model: an optional field that is `None` is left out rather than
//! written as `null` (`policy.rejected`'s `version`), and a list is written as the JSON
//! text of the list inside a string (`perf.degrade.applied`'s `shed_tiers` is
//! `"[\"Low\",\"Medium\"]"`), so tier names containing commas stay unambiguous.
//!
//! # Where events are emitted
//!
//! Never on a worker thread: formatting and writing a line allocates and may block on
//! the writer. Workers queue their events (the dataplane's bounded event queues); the
//! control thread drains them, turns them into [`ControlEvent`]s and calls [`emit`]
//! (and appends them to the audit log).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tracing_subscriber::fmt::MakeWriter;

/// The `tracing` target of every event [`emit`] writes, so a filter can select them.
pub const EVENT_TARGET: &str = "qos_control::event";

/// How serious an event is; maps onto the `tracing` level of its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventLevel {
    /// Routine: a policy applied, a queue drained, a recovery.
    Info,
    /// Something an operator should look at: a rejection, backpressure, a budget missed.
    Warn,
    /// The system is shedding or refusing work: a CRITICAL backpressure signal.
    Error,
}

impl EventLevel {
    /// The `tracing` level a log line of this severity carries.
    pub fn as_tracing(self) -> tracing::Level {
        match self {
            EventLevel::Info => tracing::Level::INFO,
            EventLevel::Warn => tracing::Level::WARN,
            EventLevel::Error => tracing::Level::ERROR,
        }
    }
}

/// Which backpressure signal fired (S7): crossing the warning watermark, or a full
/// queue that tail-dropped a packet. Serialized lowercase (`"warning"`, `"critical"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackpressureSeverity {
    /// The queue crossed its warning watermark (90% of `max_queue_depth` by default),
    /// or was found full outside an episode after a policy lowered its depth (then
    /// just before the first `Critical`).
    Warning,
    /// The queue was full and the arriving packet was tail-dropped.
    Critical,
}

impl BackpressureSeverity {
    /// `"warning"` or `"critical"`, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            BackpressureSeverity::Warning => "warning",
            BackpressureSeverity::Critical => "critical",
        }
    }
}

/// Everything the control plane logs and audits, tagged by `event` with a dotted name.
///
/// Serialized with serde as a flat object: `{"event":"policy.applied","version":3,...}`.
/// The audit log writes exactly this object (after its own `seq`, `ts_unix_ms` and
/// `prev`); the JSON logs write the same fields (see the [module docs](self) for the two
/// representation differences).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum ControlEvent {
    /// A policy was validated and published (C1, C2).
    #[serde(rename = "policy.applied")]
    PolicyApplied {
        /// The policy's version.
        version: u64,
        /// Where it came from: `"http"`, `"file"`, `"startup"`, `"sighup"`.
        source: String,
        /// Lowercase hex SHA-256 of the policy document as received.
        sha256: String,
        /// Whether its ed25519 signature was checked (C3).
        signed: bool,
    },
    /// A policy was refused; the running policy stays (C1-C4).
    #[serde(rename = "policy.rejected")]
    PolicyRejected {
        /// Its version, when the document got far enough to have one.
        version: Option<u64>,
        /// Where it came from, as for `policy.applied`.
        source: String,
        /// The validation error, naming the field.
        reason: String,
    },
    /// A stream's queue raised a backpressure signal (S7).
    #[serde(rename = "backpressure.triggered")]
    BackpressureTriggered {
        /// The stream.
        stream_id: String,
        /// Its priority, 0..=7.
        priority: u8,
        /// Packets queued when it fired.
        queue_depth: u32,
        /// Warning watermark or full queue.
        severity: BackpressureSeverity,
        /// Correlates this episode's log lines and audit records ([`new_trace_id`]).
        trace_id: String,
        /// The worker owning the stream.
        worker: usize,
    },
    /// A stream's queue fell below the lower watermark: the episode is over (S7).
    #[serde(rename = "backpressure.cleared")]
    BackpressureCleared {
        /// The stream.
        stream_id: String,
        /// Its priority, 0..=7.
        priority: u8,
        /// Packets queued when it cleared.
        queue_depth: u32,
        /// The worker owning the stream.
        worker: usize,
    },
    /// A stream ignored backpressure and was disconnected (S8).
    #[serde(rename = "stream.disconnected")]
    StreamDisconnected {
        /// The stream.
        stream_id: String,
        /// Its priority, 0..=7.
        priority: u8,
        /// Packets dropped with reason `disconnected`.
        dropped: u32,
        /// The worker owning the stream.
        worker: usize,
    },
    /// Over a budget window, a priority's p95 sojourn exceeded its budget (S10).
    #[serde(rename = "perf.budget.violation")]
    PerfBudgetViolation {
        /// The priority, 0..=7.
        priority: u8,
        /// The worker that measured it.
        worker: usize,
        /// Packets dequeued at this priority in the window.
        samples: u64,
        /// Of those, how many waited longer than the budget.
        over_budget: u64,
        /// The budget, in milliseconds.
        budget_ms: f64,
    },
    /// The degrade state machine moved toward SAFE and shed tiers (O5).
    #[serde(rename = "perf.degrade.applied")]
    PerfDegradeApplied {
        /// The state it left (`"NORMAL"`, `"DEGRADED"`, ...).
        from: String,
        /// The state it entered.
        to: String,
        /// The capacity hazard that caused it (`"pool_near_full"`, ...).
        hazard: String,
        /// Names of the tiers now shed, lowest first.
        shed_tiers: Vec<String>,
    },
    /// The degrade state machine moved back toward NORMAL (O5).
    #[serde(rename = "perf.degrade.recovered")]
    PerfDegradeRecovered {
        /// The state it left.
        from: String,
        /// The state it entered.
        to: String,
        /// How long the state it left was held, in milliseconds.
        held_ms: u64,
    },
    /// The reported health changed (O5).
    #[serde(rename = "health.changed")]
    HealthChanged {
        /// The previous health (`"NORMAL"`, `"DEGRADED"`, `"SAFE"`, `"UNKNOWN"`).
        from: String,
        /// The new health.
        to: String,
        /// Why, e.g. which worker's heartbeat went stale.
        reason: String,
    },
    /// A low-tier stream had a packet older than the aging timeout and was promoted (S9).
    #[serde(rename = "stream.promoted")]
    StreamPromoted {
        /// The stream.
        stream_id: String,
        /// Its own priority, 0..=7.
        priority: u8,
        /// The worker owning the stream.
        worker: usize,
    },
    /// The audit log was reopened after a crash tore its last line: the torn bytes were
    /// cut off, and this record keeps the evidence ([`crate::audit`]).
    #[serde(rename = "audit.torn_tail")]
    AuditTornTail {
        /// Byte offset in the file where the torn line began (and where it was cut).
        offset: u64,
        /// Length of the torn bytes.
        bytes: u64,
        /// Lowercase hex SHA-256 of the torn bytes.
        sha256: String,
    },
    /// The daemon re-read its configuration file and runs it now.
    #[serde(rename = "config.reloaded")]
    ConfigReloaded {
        /// What asked for the reload: `sighup`, or `http` for the control API's
        /// `POST /reload`.
        trigger: String,
        /// The file read.
        path: String,
        /// Lowercase hex SHA-256 of the file as read.
        sha256: String,
        /// The policy version running after the reload.
        policy_version: u64,
    },
    /// A worker failed: a panic in its egress (caught; the worker discards all it
    /// receives) or in its thread. It stays failed until the process restarts.
    #[serde(rename = "worker.failed")]
    WorkerFailed {
        /// The worker.
        worker: usize,
        /// What became of it.
        reason: String,
    },
    /// A configuration file was refused; the running configuration stays.
    #[serde(rename = "config.rejected")]
    ConfigRejected {
        /// What asked for the reload (as in `config.reloaded`).
        trigger: String,
        /// The file read.
        path: String,
        /// What is wrong, naming the key.
        reason: String,
    },
}

impl ControlEvent {
    /// The dotted event name, as serialized in the `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            ControlEvent::PolicyApplied { .. } => "policy.applied",
            ControlEvent::PolicyRejected { .. } => "policy.rejected",
            ControlEvent::BackpressureTriggered { .. } => "backpressure.triggered",
            ControlEvent::BackpressureCleared { .. } => "backpressure.cleared",
            ControlEvent::StreamDisconnected { .. } => "stream.disconnected",
            ControlEvent::PerfBudgetViolation { .. } => "perf.budget.violation",
            ControlEvent::PerfDegradeApplied { .. } => "perf.degrade.applied",
            ControlEvent::PerfDegradeRecovered { .. } => "perf.degrade.recovered",
            ControlEvent::HealthChanged { .. } => "health.changed",
            ControlEvent::StreamPromoted { .. } => "stream.promoted",
            ControlEvent::AuditTornTail { .. } => "audit.torn_tail",
            ControlEvent::ConfigReloaded { .. } => "config.reloaded",
            ControlEvent::ConfigRejected { .. } => "config.rejected",
            ControlEvent::WorkerFailed { .. } => "worker.failed",
        }
    }

    /// How serious it is. `backpressure.triggered` is `Warn` for a warning and `Error`
    /// for a critical signal; `health.changed` is `Info` when it enters `NORMAL`
    /// (case-insensitive) and `Warn` otherwise; the rest have a fixed level.
    pub fn level(&self) -> EventLevel {
        match self {
            ControlEvent::PolicyApplied { .. }
            | ControlEvent::BackpressureCleared { .. }
            | ControlEvent::PerfDegradeRecovered { .. }
            | ControlEvent::StreamPromoted { .. }
            | ControlEvent::ConfigReloaded { .. } => EventLevel::Info,
            ControlEvent::BackpressureTriggered { severity, .. } => match severity {
                BackpressureSeverity::Warning => EventLevel::Warn,
                BackpressureSeverity::Critical => EventLevel::Error,
            },
            ControlEvent::WorkerFailed { .. } => EventLevel::Error,
            ControlEvent::HealthChanged { to, .. } if to.eq_ignore_ascii_case("normal") => {
                EventLevel::Info
            }
            ControlEvent::PolicyRejected { .. }
            | ControlEvent::StreamDisconnected { .. }
            | ControlEvent::PerfBudgetViolation { .. }
            | ControlEvent::PerfDegradeApplied { .. }
            | ControlEvent::HealthChanged { .. }
            | ControlEvent::AuditTornTail { .. }
            | ControlEvent::ConfigRejected { .. } => EventLevel::Warn,
        }
    }
}

/// A fresh trace id: 16 random bytes from the OS as 32 lowercase hex digits.
///
/// If the OS has no randomness to give, falls back to a process-wide counter mixed with
/// the process id through std's randomly keyed hasher (unique within the process, not
/// unpredictable). Never fails, never panics.
pub fn new_trace_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = fallback_trace_bytes();
    }
    hex(&bytes)
}

fn fallback_trace_bytes() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Relaxed: the counter only has to hand out distinct values; nothing is published
    // through it.
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = RandomState::new().hash_one((count, std::process::id()));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&mixed.to_be_bytes());
    bytes[8..].copy_from_slice(&count.to_be_bytes());
    bytes
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// A `tracing` subscriber writing one flattened JSON object a line to `make_writer`
/// (see the [module docs](self) for the line format), at level INFO and above, without
/// span context.
///
/// Use it with `tracing::subscriber::with_default` to capture lines (tests), or install
/// it for the process with [`init_json`].
pub fn json_subscriber<W>(make_writer: W) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(make_writer)
        .finish()
}

/// Why [`init_json`] could not install the subscriber.
#[derive(Debug, thiserror::Error)]
#[error("JSON logs: a global tracing subscriber is already installed, the JSON one was not")]
pub struct LogsInitError(#[from] tracing::subscriber::SetGlobalDefaultError);

/// Installs [`json_subscriber`] over `make_writer` (for example `std::io::stderr`) as
/// the process-wide subscriber.
///
/// # Errors
///
/// [`LogsInitError`] if a global subscriber is already set (it can be set only once).
pub fn init_json<W>(make_writer: W) -> Result<(), LogsInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing::subscriber::set_global_default(json_subscriber(make_writer))?;
    Ok(())
}

/// Emits one `tracing` event at `$level` ([`EventLevel`]) with the given fields.
macro_rules! emit_at {
    ($level:expr, $($fields:tt)*) => {
        match $level {
            EventLevel::Info => tracing::info!(target: EVENT_TARGET, $($fields)*),
            EventLevel::Warn => tracing::warn!(target: EVENT_TARGET, $($fields)*),
            EventLevel::Error => tracing::error!(target: EVENT_TARGET, $($fields)*),
        }
    };
}

/// Writes `event` as one `tracing` event at its [`level`](ControlEvent::level), target
/// [`EVENT_TARGET`], with an `event` field holding its [`name`](ControlEvent::name) and
/// one field per event field.
///
/// Control thread only (see the [module docs](self)). With no subscriber installed it
/// does nothing.
pub fn emit(event: &ControlEvent) {
    let level = event.level();
    let name = event.name();
    match event {
        ControlEvent::PolicyApplied {
            version,
            source,
            sha256,
            signed,
        } => emit_at!(
            level,
            event = name,
            version = *version,
            source = source.as_str(),
            sha256 = sha256.as_str(),
            signed = *signed
        ),
        ControlEvent::PolicyRejected {
            version,
            source,
            reason,
        } => emit_at!(
            level,
            event = name,
            version = *version,
            source = source.as_str(),
            reason = reason.as_str()
        ),
        ControlEvent::BackpressureTriggered {
            stream_id,
            priority,
            queue_depth,
            severity,
            trace_id,
            worker,
        } => emit_at!(
            level,
            event = name,
            stream_id = stream_id.as_str(),
            priority = *priority,
            queue_depth = *queue_depth,
            severity = severity.as_str(),
            trace_id = trace_id.as_str(),
            worker = *worker
        ),
        ControlEvent::BackpressureCleared {
            stream_id,
            priority,
            queue_depth,
            worker,
        } => emit_at!(
            level,
            event = name,
            stream_id = stream_id.as_str(),
            priority = *priority,
            queue_depth = *queue_depth,
            worker = *worker
        ),
        ControlEvent::StreamDisconnected {
            stream_id,
            priority,
            dropped,
            worker,
        } => emit_at!(
            level,
            event = name,
            stream_id = stream_id.as_str(),
            priority = *priority,
            dropped = *dropped,
            worker = *worker
        ),
        ControlEvent::PerfBudgetViolation {
            priority,
            worker,
            samples,
            over_budget,
            budget_ms,
        } => {
            emit_at!(
                level,
                event = name,
                priority = *priority,
                worker = *worker,
                samples = *samples,
                over_budget = *over_budget,
                budget_ms = *budget_ms
            )
        }
        ControlEvent::PerfDegradeApplied {
            from,
            to,
            hazard,
            shed_tiers,
        } => {
            let shed_tiers = list_as_json(shed_tiers);
            emit_at!(
                level,
                event = name,
                from = from.as_str(),
                to = to.as_str(),
                hazard = hazard.as_str(),
                shed_tiers = shed_tiers.as_str()
            )
        }
        ControlEvent::PerfDegradeRecovered { from, to, held_ms } => emit_at!(
            level,
            event = name,
            from = from.as_str(),
            to = to.as_str(),
            held_ms = *held_ms
        ),
        ControlEvent::HealthChanged { from, to, reason } => emit_at!(
            level,
            event = name,
            from = from.as_str(),
            to = to.as_str(),
            reason = reason.as_str()
        ),
        ControlEvent::StreamPromoted {
            stream_id,
            priority,
            worker,
        } => emit_at!(
            level,
            event = name,
            stream_id = stream_id.as_str(),
            priority = *priority,
            worker = *worker
        ),
        ControlEvent::AuditTornTail {
            offset,
            bytes,
            sha256,
        } => emit_at!(
            level,
            event = name,
            offset = *offset,
            bytes = *bytes,
            sha256 = sha256.as_str()
        ),
        ControlEvent::ConfigReloaded {
            trigger,
            path,
            sha256,
            policy_version,
        } => emit_at!(
            level,
            event = name,
            trigger = trigger.as_str(),
            path = path.as_str(),
            sha256 = sha256.as_str(),
            policy_version = *policy_version
        ),
        ControlEvent::ConfigRejected {
            trigger,
            path,
            reason,
        } => emit_at!(
            level,
            event = name,
            trigger = trigger.as_str(),
            path = path.as_str(),
            reason = reason.as_str()
        ),
        ControlEvent::WorkerFailed { worker, reason } => emit_at!(
            level,
            event = name,
            worker = *worker,
            reason = reason.as_str()
        ),
    }
}

/// The JSON text of a list of strings (`["Low","Medium"]`).
fn list_as_json(items: &[String]) -> String {
    // Serializing a slice of strings cannot fail; the fallback only keeps this total.
    serde_json::to_string(items).unwrap_or_else(|_| String::from("[]"))
}
