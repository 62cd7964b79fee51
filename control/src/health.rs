//! Health states and the degrade state machine (O5).
//!
//! [`HealthMachine`] is a pure state machine: no thread, no clock, no I/O. The control
//! thread calls [`HealthMachine::tick`] once per control tick with an [`Observation`] of
//! every worker (heartbeat age, stall, descriptor pool fill, ingress ring-full events) and
//! the current time in ns; it returns the [`Transition`]s that tick caused, which the
//! caller logs, audits (`perf.degrade.applied` / `perf.degrade.recovered`, C5), exports,
//! and applies (shedding the tiers in [`Transition::shed_tiers`]).
//!
//! # States
//!
//! | state | meaning | [`is_healthy`](HealthState::is_healthy) | `/healthz` |
//! | --- | --- | --- | --- |
//! | `NORMAL` | no hazard | yes | 200 |
//! | `DEGRADED` | a moderate hazard: the lowest tier is shed | yes (still serving; the body names the state) | 200 |
//! | `SAFE` | a severe hazard: every tier but the highest is shed | no | 503 |
//! | `UNKNOWN` | a worker's heartbeat is stale (or no worker is observed): nothing can be vouched for | no, never | 503 |
//!
//! # Rules
//!
//! * **Hazards** (per tick, from the observation):
//!   a worker's pool at or above [`HealthConfig::pool_safe`] is severe (`SAFE`);
//!   a pool at or above [`HealthConfig::pool_degraded`], ingress ring-full events in
//!   [`HealthConfig::ring_full_ticks`] consecutive ticks (on any worker: producers are
//!   being pushed back), or a worker stalled since the previous tick are moderate
//!   (`DEGRADED`). One tick of ring-full events is not a hazard.
//! * **Escalation is immediate**: the state moves straight to the level the hazards give
//!   (`NORMAL` to `SAFE` in one transition when the pool jumps).
//! * **Recovery is slow**: once the hazards give a lower level than the current one, the
//!   state steps back *one* level after [`HealthConfig::recovery_hold_ns`] without the
//!   hazard, and the hold starts again for the next step (`SAFE`, hold, `DEGRADED`, hold,
//!   `NORMAL`). A hazard of the current level during the hold restarts it.
//! * **Stale heartbeats override everything**: any worker whose heartbeat is at least
//!   [`HealthConfig::heartbeat_stale_ns`] old (or an observation with no worker) makes the
//!   state `UNKNOWN`. While `UNKNOWN` the machine freezes: the observation is incomplete,
//!   so the shedding decided on the last complete one stays, and hold times and ring-full
//!   streaks restart. When every heartbeat is fresh again the state becomes what the
//!   hazards give: the level held before, or a higher one the current hazards call for
//!   (then recovering with hold times as usual).
//! * **Shedding** starts with the lowest tier and never touches the highest
//!   ([`TierOrder`]): `DEGRADED` sheds the lowest tier, `SAFE` every tier but the highest.
//!   With a single tier nothing can be shed while protecting it: `DEGRADED` and `SAFE`
//!   are still entered, reported and audited (and `SAFE` is still unhealthy), but their
//!   shed sets are empty.
//! * The machine starts `UNKNOWN`: nothing is healthy before the first observation.
//!
//! Latency budgets (S10) are not an input: the dataplane detects budget windows itself
//! and reports them as `Event::BudgetViolation` (`perf.budget.violation`).
//!
//! # Example
//!
//! ```
//! use qos_control::health::{
//!     HealthConfig, HealthMachine, HealthState, Observation, TierOrder, WorkerObservation,
//! };
//! const S: u64 = 1_000_000_000;
//! let mut m = HealthMachine::new(HealthConfig::default(), TierOrder::highest_first(3)).unwrap();
//! let fresh = WorkerObservation { pool_capacity: 100, ..WorkerObservation::default() };
//! m.tick(&Observation { now_ns: 0, workers: &[fresh] });
//! assert_eq!(m.state(), HealthState::Normal);
//!
//! let full = WorkerObservation { pool_queued: 85, ..fresh };
//! let t = m.tick(&Observation { now_ns: S, workers: &[full] });
//! assert_eq!(t[0].to, HealthState::Degraded);
//! assert_eq!(t[0].hazard.to_string(), "pool_near_full");
//! assert_eq!(t[0].shed_tiers, [2]); // the reference policy's Low tier
//! ```

use std::fmt;

use qos_dataplane::sched::Policy;
use serde::{Deserialize, Serialize};

/// Health of the dataplane as `/healthz` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthState {
    /// No hazard.
    Normal,
    /// A moderate hazard: the lowest tier is shed. Still serving.
    Degraded,
    /// A severe hazard: every tier but the highest is shed.
    Safe,
    /// A worker's heartbeat is stale: nothing can be vouched for.
    Unknown,
}

impl HealthState {
    /// `"NORMAL"`, `"DEGRADED"`, `"SAFE"` or `"UNKNOWN"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Degraded => "DEGRADED",
            Self::Safe => "SAFE",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// `true` for `NORMAL` and `DEGRADED` (serving, possibly without the lowest tier);
    /// `false` for `SAFE` and, always, `UNKNOWN`.
    pub fn is_healthy(self) -> bool {
        matches!(self, Self::Normal | Self::Degraded)
    }

    /// The `/healthz` status code: 200 when [`is_healthy`](Self::is_healthy), else 503.
    pub fn http_status(self) -> u16 {
        if self.is_healthy() { 200 } else { 503 }
    }

    /// Severity of a capacity level (`Unknown` has none).
    pub(crate) fn rank(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::Degraded => 1,
            Self::Safe | Self::Unknown => 2,
        }
    }

    /// The capacity level one step less severe.
    fn step_down(self) -> Self {
        match self {
            Self::Safe => Self::Degraded,
            _ => Self::Normal,
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hazard {
    /// A worker's descriptor pool is at or above a threshold.
    PoolNearFull,
    /// Producers hit full ingress rings in `ring_full_ticks` consecutive ticks.
    IngressRingsFull,
    /// A worker loop stalled since the previous tick.
    WorkerStalled,
    /// A worker's heartbeat is stale (or no worker was observed).
    HeartbeatStale,
    /// The hazard is gone: a step back toward `NORMAL`, or fresh heartbeats again.
    Recovered,
}

impl Hazard {
    /// `"pool_near_full"`, `"ingress_rings_full"`, `"worker_stalled"`,
    /// `"heartbeat_stale"` or `"recovered"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PoolNearFull => "pool_near_full",
            Self::IngressRingsFull => "ingress_rings_full",
            Self::WorkerStalled => "worker_stalled",
            Self::HeartbeatStale => "heartbeat_stale",
            Self::Recovered => "recovered",
        }
    }
}

impl fmt::Display for Hazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one worker looked like at this tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerObservation {
    /// Time since the worker's last heartbeat, in ns.
    pub heartbeat_age_ns: u64,
    /// The worker's stall counter increased since the previous tick.
    pub stalled: bool,
    /// Descriptors queued in the worker's pool.
    pub pool_queued: u64,
    /// Capacity of the worker's pool; 0 means no pool, hence no pool hazard.
    pub pool_capacity: u64,
    /// Times producers found one of this worker's ingress rings full since the
    /// previous tick.
    pub ring_full_events: u64,
}

/// One control tick's input.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// Current time, in ns, from any monotonic origin (the same for every tick).
    pub now_ns: u64,
    /// Every worker, by index. An empty slice makes the state `UNKNOWN`.
    pub workers: &'a [WorkerObservation],
}

/// Thresholds of the machine. Build one with `..Default::default()` and let
/// [`HealthMachine::new`] validate it; it also reads from a config file (serde, unknown
/// fields refused, missing fields default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// A heartbeat this old or older is stale, in ns (> 0). Default 1 s.
    pub heartbeat_stale_ns: u64,
    /// Pool fill (queued / capacity) at or above which the pool is a moderate hazard,
    /// in (0, 1]. Default 0.80.
    pub pool_degraded: f64,
    /// Pool fill at or above which the pool is a severe hazard, in
    /// [`pool_degraded`](Self::pool_degraded), 1]. Default 0.95.
    pub pool_safe: f64,
    /// Consecutive ticks with ring-full events that make a hazard (>= 1). Default 3.
    pub ring_full_ticks: u32,
    /// Time without the hazard before stepping back one level, in ns (> 0). Default 5 s.
    pub recovery_hold_ns: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            heartbeat_stale_ns: 1_000_000_000,
            pool_degraded: 0.80,
            pool_safe: 0.95,
            ring_full_ticks: 3,
            recovery_hold_ns: 5_000_000_000,
        }
    }
}

/// An invalid [`HealthConfig`] or [`TierOrder`]: names the field, the value and what was
/// expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("health.{field}: {value}, expected {expected}")]
pub struct HealthConfigError {
    /// The field (`pool_safe`, `tier_order`, ...).
    pub field: &'static str,
    /// The offending value, as written.
    pub value: String,
    /// What was expected.
    pub expected: String,
}

fn invalid(
    field: &'static str,
    value: impl fmt::Display,
    expected: impl Into<String>,
) -> HealthConfigError {
    HealthConfigError {
        field,
        value: value.to_string(),
        expected: expected.into(),
    }
}

impl HealthConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// The first invalid field, in declaration order.
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        if self.heartbeat_stale_ns == 0 {
            return Err(invalid("heartbeat_stale_ns", 0, "> 0 ns"));
        }
        let fraction = |field, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(invalid(field, v, "a fraction in (0, 1]"))
            }
        };
        fraction("pool_degraded", self.pool_degraded)?;
        fraction("pool_safe", self.pool_safe)?;
        if self.pool_safe < self.pool_degraded {
            return Err(invalid(
                "pool_safe",
                self.pool_safe,
                format!(">= pool_degraded ({})", self.pool_degraded),
            ));
        }
        if self.ring_full_ticks == 0 {
            return Err(invalid("ring_full_ticks", 0, ">= 1 tick"));
        }
        if self.recovery_hold_ns == 0 {
            return Err(invalid("recovery_hold_ns", 0, "> 0 ns"));
        }
        Ok(())
    }
}

/// The policy's tiers from the lowest to the highest, as indices into the policy's tier
/// list. Shedding takes tiers from the front and never the last one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierOrder(Vec<usize>);

impl TierOrder {
    /// The tiers `0..n` given lowest first; `lowest_first` must be a permutation of
    /// `0..n` with 1 <= n <= 8 (a policy has 1 to 8 tiers).
    ///
    /// # Errors
    /// Field `tier_order` when it is empty, longer than 8, or not a permutation.
    pub fn new(lowest_first: Vec<usize>) -> Result<Self, HealthConfigError> {
        let n = lowest_first.len();
        if !(1..=8).contains(&n) {
            return Err(invalid(
                "tier_order",
                format!("{lowest_first:?}"),
                "1 to 8 tiers",
            ));
        }
        let mut seen = [false; 8];
        for &t in &lowest_first {
            if t >= n || std::mem::replace(&mut seen[t], true) {
                return Err(invalid(
                    "tier_order",
                    format!("{lowest_first:?}"),
                    format!("each tier index 0..{n} exactly once"),
                ));
            }
        }
        Ok(Self(lowest_first))
    }

    /// `n` tiers listed highest first, as the policies of S1 list them (the reference
    /// policy High, Medium, Low; `classes5` Critical ... LogsMetrics): lowest first is
    /// `n-1, ..., 0`. `n` is clamped to 1..=8.
    pub fn highest_first(n: usize) -> Self {
        Self((0..n.clamp(1, 8)).rev().collect())
    }

    /// The order of `policy`'s tiers: by the highest priority each holds, so the tier
    /// holding priority 7 is protected and, for the usual contiguous tiers, the one
    /// holding priority 0 is shed first.
    pub fn from_policy(policy: &Policy) -> Self {
        let top = |t: usize| {
            policy.tiers()[t]
                .priorities
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
        };
        let mut order: Vec<usize> = (0..policy.tiers().len().min(8)).collect();
        order.sort_by_key(|&t| (top(t), t));
        if order.is_empty() {
            order.push(0);
        }
        Self(order)
    }

    /// Tier indices, lowest first.
    pub fn lowest_first(&self) -> &[usize] {
        &self.0
    }

    /// Number of tiers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: there is at least one tier.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tiers shed in `state` (a capacity level; `Unknown` sheds as `Safe` would, but
    /// the machine never asks for it).
    fn shed(&self, state: HealthState) -> Vec<usize> {
        let protected = self.0.len().saturating_sub(1);
        let count = match state {
            HealthState::Normal => 0,
            HealthState::Degraded => 1,
            HealthState::Safe | HealthState::Unknown => protected,
        };
        self.0[..count.min(protected)].to_vec()
    }
}

/// One change of state, for the log, the audit chain and the metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// State before.
    pub from: HealthState,
    /// State after.
    pub to: HealthState,
    /// Why: the most severe hazard seen (pool, then rings, then stall), or `Recovered`.
    pub hazard: Hazard,
    /// The worker whose observation caused it, when one did.
    pub worker: Option<usize>,
    /// Tiers to shed from now on (policy indices, lowest first); empty means none.
    pub shed_tiers: Vec<usize>,
    /// The tick's time, in ns.
    pub at_ns: u64,
}

/// The degrade state machine. Call order: [`new`](Self::new), then
/// [`tick`](Self::tick) once per control tick with nondecreasing times; read
/// [`state`](Self::state) and [`shed_tiers`](Self::shed_tiers) at any time.
#[derive(Clone, Debug)]
pub struct HealthMachine {
    config: HealthConfig,
    tiers: TierOrder,
    /// Capacity level: `Normal`, `Degraded` or `Safe` (what is shed).
    level: HealthState,
    /// A heartbeat is stale: the reported state is `Unknown`.
    unknown: bool,
    /// Since when the hazards have given a level below `level`.
    calm_since: Option<u64>,
    /// Consecutive ticks with ring-full events.
    ring_full_streak: u32,
    /// The latest tick's time: an earlier one is read as this.
    latest_ns: u64,
}

impl HealthMachine {
    /// A machine in state `UNKNOWN` (no observation yet), level `NORMAL`.
    ///
    /// # Errors
    /// The first invalid field of `config` (see [`HealthConfig::validate`]).
    pub fn new(config: HealthConfig, tiers: TierOrder) -> Result<Self, HealthConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            tiers,
            level: HealthState::Normal,
            unknown: true,
            calm_since: None,
            ring_full_streak: 0,
            latest_ns: 0,
        })
    }

    /// The state `/healthz` reports.
    pub fn state(&self) -> HealthState {
        if self.unknown {
            HealthState::Unknown
        } else {
            self.level
        }
    }

    /// The tiers shed now (policy indices, lowest first).
    pub fn shed_tiers(&self) -> Vec<usize> {
        self.tiers.shed(self.level)
    }

    /// The configuration.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Adopts the tier order of a new policy. The state does not change; the shed set
    /// for it is [`shed_tiers`](Self::shed_tiers), which the caller re-applies.
    pub fn set_tier_order(&mut self, tiers: TierOrder) {
        self.tiers = tiers;
    }

    /// Feeds one tick's observation; returns the transitions it caused (at most one).
    /// A time earlier than a previous tick's is read as that tick's: a clock stepped
    /// back neither shortens nor restarts the recovery hold (it once restarted the
    /// calm period at the earlier time, so a tick back at the old time ended a 5 s
    /// hold after 250 ms).
    pub fn tick(&mut self, obs: &Observation<'_>) -> Vec<Transition> {
        let now = obs.now_ns.max(self.latest_ns);
        self.latest_ns = now;
        let from = self.state();
        if let Some(worker) = self.stale_worker(obs) {
            self.unknown = true;
            self.calm_since = None;
            self.ring_full_streak = 0;
            return self.report(from, Hazard::HeartbeatStale, worker, now);
        }
        let (observed, hazard, worker) = self.assess(obs);
        if self.unknown {
            self.unknown = false;
            let (hazard, worker) = if observed.rank() > self.level.rank() {
                self.level = observed;
                (hazard, worker)
            } else {
                (Hazard::Recovered, None)
            };
            self.calm_since = (observed.rank() < self.level.rank()).then_some(now);
            return self.report(from, hazard, worker, now);
        }
        if observed.rank() > self.level.rank() {
            self.level = observed;
            self.calm_since = None;
            return self.report(from, hazard, worker, now);
        }
        if observed.rank() == self.level.rank() {
            self.calm_since = None;
            return Vec::new();
        }
        let since = *self.calm_since.get_or_insert(now);
        if now.saturating_sub(since) < self.config.recovery_hold_ns {
            return Vec::new();
        }
        self.level = self.level.step_down();
        self.calm_since = (observed.rank() < self.level.rank()).then_some(now);
        self.report(from, Hazard::Recovered, None, now)
    }

    /// `Some(worker)` when a heartbeat is stale (`Some(None)`: no worker observed).
    fn stale_worker(&self, obs: &Observation<'_>) -> Option<Option<usize>> {
        if obs.workers.is_empty() {
            return Some(None);
        }
        obs.workers
            .iter()
            .position(|w| w.heartbeat_age_ns >= self.config.heartbeat_stale_ns)
            .map(Some)
    }

    /// The level the hazards of this tick give, the hazard and the worker behind it.
    fn assess(&mut self, obs: &Observation<'_>) -> (HealthState, Hazard, Option<usize>) {
        let any_full = obs.workers.iter().any(|w| w.ring_full_events > 0);
        self.ring_full_streak = if any_full {
            self.ring_full_streak.saturating_add(1)
        } else {
            0
        };
        // Division, not `fraction * capacity`: `80 / 100` rounds to the same double as the
        // literal `0.8`, so a fill exactly at a threshold is at it.
        let at_least = |w: &WorkerObservation, fraction: f64| {
            w.pool_capacity > 0 && w.pool_queued as f64 / w.pool_capacity as f64 >= fraction
        };
        let find = |pred: &dyn Fn(&WorkerObservation) -> bool| obs.workers.iter().position(pred);
        if let Some(i) = find(&|w| at_least(w, self.config.pool_safe)) {
            return (HealthState::Safe, Hazard::PoolNearFull, Some(i));
        }
        if let Some(i) = find(&|w| at_least(w, self.config.pool_degraded)) {
            return (HealthState::Degraded, Hazard::PoolNearFull, Some(i));
        }
        if self.ring_full_streak >= self.config.ring_full_ticks {
            return (HealthState::Degraded, Hazard::IngressRingsFull, None);
        }
        if let Some(i) = find(&|w| w.stalled) {
            return (HealthState::Degraded, Hazard::WorkerStalled, Some(i));
        }
        (HealthState::Normal, Hazard::Recovered, None)
    }

    /// The transition from `from` to the current state, if they differ.
    fn report(
        &self,
        from: HealthState,
        hazard: Hazard,
        worker: Option<usize>,
        at_ns: u64,
    ) -> Vec<Transition> {
        let to = self.state();
        if to == from {
            return Vec::new();
        }
        vec![Transition {
            from,
            to,
            hazard,
            worker,
            shed_tiers: self.shed_tiers(),
            at_ns,
        }]
    }
}
