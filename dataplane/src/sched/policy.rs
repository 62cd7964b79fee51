//! Scheduling policy: tiers, shares, budgets, depths, pacing (S1, S2, S5-S10).
//!
//! A [`Policy`] only exists validated: build one from a [`PolicySpec`] (whose fields
//! are plain data a control plane can fill from a file) with [`PolicySpec::build`],
//! which checks the whole policy at once and names the offending field on error (C1).

use thiserror::Error;

/// Number of priorities (0..=7).
pub const PRIORITIES: usize = 8;
/// Most tiers a policy may define (each tier holds at least one priority).
pub const MAX_TIERS: usize = PRIORITIES;
/// Largest packet length the scheduler accepts at all, in bytes.
pub const MAX_PACKET_LIMIT: u32 = 65_535;
/// Smallest DRR quantum a policy may set, in bytes.
pub const MIN_QUANTUM: u32 = 64;
/// Largest DRR quantum a policy may set, in bytes.
pub const MAX_QUANTUM: u32 = 1 << 20;
/// Smallest share the tier holding priority 0 may get (S9), in percent.
pub const MIN_LOW_SHARE_PERCENT: u8 = 5;
/// Most CRITICAL signals a policy may let a stream ignore (S8).
pub const MAX_STRIKES: u8 = 15;
/// Longest CoDel interval a tier may set, in ns (about 69 s).
pub const MAX_AQM_NS: u64 = 1 << 36;
/// Largest link or cap burst, in bytes (keeps token arithmetic inside `u64`).
pub const MAX_BURST_BYTES: u64 = 1 << 30;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// One tier of a policy: a named set of priorities sharing a percentage of the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierSpec {
    /// Human-readable name (`High`, `Medium`, ...); unique inside a policy.
    pub name: String,
    /// Priorities (0..=7) served by this tier.
    pub priorities: Vec<u8>,
    /// Share of the link when every tier is backlogged, in percent (1..=100).
    pub share_percent: u8,
    /// Queue-delay control (S14) of this tier's budgeted priorities: `None` derives
    /// target and interval from each priority's latency budget.
    pub aqm: Option<AqmSpec>,
}

/// CoDel target and interval for a tier, overriding the ones derived from budgets (S14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AqmSpec {
    /// Standing-queue delay CoDel aims at, in ns (> 0, < `interval_ns`).
    pub target_ns: u64,
    /// Time the delay must stay above target before dropping starts, in ns; a packet
    /// older than this at the head is dropped outright (the hard limit).
    pub interval_ns: u64,
}

impl TierSpec {
    /// A tier with the given name, priorities and share.
    pub fn new(name: &str, priorities: &[u8], share_percent: u8) -> Self {
        Self {
            name: name.to_owned(),
            priorities: priorities.to_vec(),
            share_percent,
            aqm: None,
        }
    }
}

/// Link pacing (S5): dequeued bytes never exceed `rate * t + burst` over any interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkRate {
    /// Link rate in bits per second (> 0).
    pub rate_bps: u64,
    /// Bucket depth in bytes; must hold at least one packet of `max_packet_bytes`.
    pub burst_bytes: u64,
}

/// The plain-data form of a policy. `Default` is the reference policy of DESIGN.md S1.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySpec {
    /// Policy version (C2); a control plane rejects stale ones, the scheduler reports it.
    pub version: u64,
    /// Tiers in order; together they must partition priorities 0..=7.
    pub tiers: Vec<TierSpec>,
    /// Latency budget per priority in nanoseconds; `None` is best effort (S10).
    pub latency_budget_ns: [Option<u64>; PRIORITIES],
    /// Window over which the p95 sojourn of each priority is held against its budget.
    pub budget_window_ns: u64,
    /// Maximum packets queued per stream (S7), >= 1.
    pub max_queue_depth: u32,
    /// Depth at which WARNING fires, in percent of `max_queue_depth` (1..=100).
    pub warning_percent: u8,
    /// The backpressure episode ends (WARNING clears, CRITICAL strikes reset) once the
    /// queue is at or below this percent of the depth (0: when it empties).
    pub clear_percent: u8,
    /// CRITICAL signals a stream may ignore before it is disconnected (S8), 1..=15.
    pub critical_strikes: u8,
    /// Whether a stream that ignores `critical_strikes` CRITICALs is disconnected (S8).
    /// A gateway whose senders are remote and cannot be signalled turns this off and
    /// only tail-drops.
    pub disconnect: bool,
    /// Age after which a stream of the tier holding priority 0 is promoted into the
    /// aging lane (S9); a packet of that tier older than this plus one second is
    /// dropped (`expired`) rather than sent. `None` switches aging off; so does a
    /// single-tier policy, which has no other tier to age into.
    pub aging_timeout_ns: Option<u64>,
    /// Queue-delay control (S14): per-stream CoDel on every priority with a latency
    /// budget (target and interval from the budget, or the tier's [`AqmSpec`]).
    pub aqm: bool,
    /// Link pacing; `None` means the scheduler only orders (S5).
    pub link: Option<LinkRate>,
    /// Per-stream cap bucket depth, as a multiple of 10 ms at the cap rate (S6), >= 1.0.
    pub cap_burst_multiplier: f64,
    /// Largest packet accepted, in bytes (1..=65535); larger ones are refused.
    pub max_packet_bytes: u32,
    /// DRR quantum per stream turn at the weight of its tier's lowest priority, in bytes
    /// (64..=2^20). Smaller rounds mean lower latency for backlogged streams; a stream
    /// whose packets are larger than its quantum sits out the rounds its debt needs
    /// (while many do at once, their class doubles its quanta for a while).
    pub quantum_bytes: u32,
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            version: 1,
            tiers: vec![
                TierSpec::new("High", &[6, 7], 25),
                TierSpec::new("Medium", &[2, 3, 4, 5], 60),
                TierSpec::new("Low", &[0, 1], 15),
            ],
            latency_budget_ns: [
                None,
                None,
                Some(100 * MS),
                Some(100 * MS),
                Some(50 * MS),
                Some(50 * MS),
                Some(20 * MS),
                Some(10 * MS),
            ],
            budget_window_ns: SEC,
            max_queue_depth: 10_000,
            warning_percent: 90,
            clear_percent: 50,
            critical_strikes: 3,
            disconnect: true,
            aging_timeout_ns: Some(10 * SEC),
            aqm: true,
            link: None,
            cap_burst_multiplier: 2.0,
            max_packet_bytes: 9_216,
            quantum_bytes: 1_514,
        }
    }
}

impl PolicySpec {
    /// The `classes5` preset: Critical {7} / System {6} / JobExecution {4,5} /
    /// DataTransfer {2,3} / LogsMetrics {0,1} with shares 30/25/25/15/5.
    pub fn classes5() -> Self {
        Self {
            tiers: vec![
                TierSpec::new("Critical", &[7], 30),
                TierSpec::new("System", &[6], 25),
                TierSpec::new("JobExecution", &[4, 5], 25),
                TierSpec::new("DataTransfer", &[2, 3], 15),
                TierSpec::new("LogsMetrics", &[0, 1], 5),
            ],
            ..Self::default()
        }
    }

    /// Validates the whole policy (C1) and freezes it.
    pub fn build(self) -> Result<Policy, PolicyError> {
        let tier_of = self.check_tiers()?;
        self.check_limits()?;
        let low_tier = tier_of[0];
        Ok(Policy {
            spec: self,
            tier_of,
            low_tier,
        })
    }

    fn check_tiers(&self) -> Result<[u8; PRIORITIES], PolicyError> {
        if self.tiers.is_empty() || self.tiers.len() > MAX_TIERS {
            return Err(PolicyError::TierCount {
                count: self.tiers.len(),
            });
        }
        let mut tier_of = [u8::MAX; PRIORITIES];
        let mut sum = 0u32;
        for (index, tier) in self.tiers.iter().enumerate() {
            if tier.name.is_empty() || self.tiers[..index].iter().any(|t| t.name == tier.name) {
                return Err(PolicyError::TierName {
                    index,
                    name: tier.name.clone(),
                });
            }
            if tier.share_percent == 0 || tier.share_percent > 100 {
                return Err(PolicyError::Share {
                    index,
                    value: tier.share_percent,
                });
            }
            sum += u32::from(tier.share_percent);
            if tier.priorities.is_empty() {
                return Err(PolicyError::EmptyTier { index });
            }
            for &p in &tier.priorities {
                let slot = tier_of
                    .get_mut(usize::from(p))
                    .ok_or(PolicyError::Priority { index, value: p })?;
                if *slot != u8::MAX {
                    return Err(PolicyError::PriorityTwice { index, value: p });
                }
                *slot = index as u8;
            }
        }
        if sum != 100 {
            return Err(PolicyError::ShareSum { sum });
        }
        if let Some(p) = tier_of.iter().position(|&t| t == u8::MAX) {
            return Err(PolicyError::PriorityMissing { value: p as u8 });
        }
        let low = &self.tiers[usize::from(tier_of[0])];
        if low.share_percent < MIN_LOW_SHARE_PERCENT {
            return Err(PolicyError::LowShare {
                index: usize::from(tier_of[0]),
                value: low.share_percent,
            });
        }
        Ok(tier_of)
    }

    fn check_limits(&self) -> Result<(), PolicyError> {
        let bad = |field: &'static str, value: String, expected: &'static str| {
            Err(PolicyError::Field {
                field,
                value,
                expected,
            })
        };
        if let Some(p) = self.latency_budget_ns.iter().position(|b| *b == Some(0)) {
            return bad(
                "latency_budget_ns",
                format!("priority {p}: 0"),
                "a budget > 0 ns or none",
            );
        }
        if self.budget_window_ns == 0 {
            return bad("budget_window_ns", "0".into(), "> 0");
        }
        if self.max_queue_depth == 0 {
            return bad("max_queue_depth", "0".into(), ">= 1");
        }
        if !(1..=100).contains(&self.warning_percent) {
            return bad(
                "warning_percent",
                self.warning_percent.to_string(),
                "1..=100",
            );
        }
        if self.clear_percent >= self.warning_percent {
            return bad(
                "clear_percent",
                self.clear_percent.to_string(),
                "< warning_percent",
            );
        }
        if !(1..=MAX_STRIKES).contains(&self.critical_strikes) {
            return bad(
                "critical_strikes",
                self.critical_strikes.to_string(),
                "1..=15",
            );
        }
        if self.aging_timeout_ns == Some(0) {
            return bad("aging_timeout_ns", "0".into(), "> 0 ns or none (off)");
        }
        for (index, tier) in self.tiers.iter().enumerate() {
            if let Some(a) = tier.aqm
                && (a.target_ns == 0 || a.target_ns >= a.interval_ns || a.interval_ns > MAX_AQM_NS)
            {
                return Err(PolicyError::Aqm {
                    index,
                    target_ns: a.target_ns,
                    interval_ns: a.interval_ns,
                });
            }
        }
        if !(1..=MAX_PACKET_LIMIT).contains(&self.max_packet_bytes) {
            return bad(
                "max_packet_bytes",
                self.max_packet_bytes.to_string(),
                "1..=65535",
            );
        }
        if !(MIN_QUANTUM..=MAX_QUANTUM).contains(&self.quantum_bytes) {
            return bad(
                "quantum_bytes",
                self.quantum_bytes.to_string(),
                "64..=1048576",
            );
        }
        if !(self.cap_burst_multiplier >= 1.0 && self.cap_burst_multiplier <= 1000.0) {
            return bad(
                "cap_burst_multiplier",
                self.cap_burst_multiplier.to_string(),
                "1.0..=1000.0",
            );
        }
        if let Some(link) = self.link {
            if link.rate_bps == 0 {
                return bad("link.rate_bps", "0".into(), "> 0");
            }
            let min = u64::from(self.max_packet_bytes);
            if link.burst_bytes < min || link.burst_bytes > MAX_BURST_BYTES {
                return bad(
                    "link.burst_bytes",
                    link.burst_bytes.to_string(),
                    "max_packet_bytes..=2^30",
                );
            }
        }
        Ok(())
    }
}

/// A validated, immutable policy. Build it with [`PolicySpec::build`].
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    spec: PolicySpec,
    tier_of: [u8; PRIORITIES],
    low_tier: u8,
}

impl Default for Policy {
    /// The reference policy: High {6,7} 25%, Medium {2..5} 60%, Low {0,1} 15%.
    fn default() -> Self {
        PolicySpec::default()
            .build()
            .expect("the reference policy is valid")
    }
}

impl Policy {
    /// The `classes5` preset (see [`PolicySpec::classes5`]).
    pub fn classes5() -> Self {
        PolicySpec::classes5()
            .build()
            .expect("the classes5 preset is valid")
    }
    /// The fields this policy was built from (clone and edit to derive a new one).
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }
    /// Policy version (C2).
    pub fn version(&self) -> u64 {
        self.spec.version
    }
    /// The tiers, in order.
    pub fn tiers(&self) -> &[TierSpec] {
        &self.spec.tiers
    }
    /// Index of the tier serving `priority` (0..=7).
    pub fn tier_of(&self, priority: u8) -> usize {
        usize::from(self.tier_of[usize::from(priority & 7)])
    }
    /// Index of the tier holding priority 0: the one aging applies to (S9).
    pub fn low_tier(&self) -> usize {
        usize::from(self.low_tier)
    }
}

/// Why a policy was rejected (C1). Every message names the field, the value and what
/// was expected.
#[derive(Clone, Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum PolicyError {
    /// No tiers, or more than eight.
    #[error("tiers: {count} tiers given, expected 1..=8")]
    TierCount {
        /// How many tiers were given.
        count: usize,
    },
    /// A tier name is empty or used twice.
    #[error("tiers[{index}].name: {name:?} is empty or not unique")]
    TierName {
        /// Index of the tier.
        index: usize,
        /// The offending name.
        name: String,
    },
    /// A tier share outside 1..=100.
    #[error("tiers[{index}].share_percent: {value}, expected 1..=100")]
    Share {
        /// Index of the tier.
        index: usize,
        /// The offending share.
        value: u8,
    },
    /// Shares do not add up to 100.
    #[error("tiers[*].share_percent: shares sum to {sum}, expected 100")]
    ShareSum {
        /// The sum found.
        sum: u32,
    },
    /// A tier with no priorities.
    #[error("tiers[{index}].priorities: empty, expected at least one priority")]
    EmptyTier {
        /// Index of the tier.
        index: usize,
    },
    /// A priority outside 0..=7.
    #[error("tiers[{index}].priorities: {value} is out of range, expected 0..=7")]
    Priority {
        /// Index of the tier.
        index: usize,
        /// The offending priority.
        value: u8,
    },
    /// A priority listed in two tiers (or twice in one).
    #[error("tiers[{index}].priorities: {value} already belongs to a tier")]
    PriorityTwice {
        /// Index of the tier that listed it again.
        index: usize,
        /// The priority.
        value: u8,
    },
    /// A priority no tier serves.
    #[error("tiers[*].priorities: priority {value} is in no tier; tiers must cover 0..=7")]
    PriorityMissing {
        /// The priority left out.
        value: u8,
    },
    /// The tier holding priority 0 gets less than 5% (S9).
    #[error("tiers[{index}].share_percent: {value}, expected >= 5 for the tier holding priority 0")]
    LowShare {
        /// Index of the tier holding priority 0.
        index: usize,
        /// The share it was given.
        value: u8,
    },
    /// A tier's AQM override is out of range.
    #[error(
        "tiers[{index}].aqm: target {target_ns} ns, interval {interval_ns} ns, expected 0 < target < interval <= 2^36 ns"
    )]
    Aqm {
        /// Index of the tier.
        index: usize,
        /// The target given.
        target_ns: u64,
        /// The interval given.
        interval_ns: u64,
    },
    /// A scalar field out of range.
    #[error("{field}: {value}, expected {expected}")]
    Field {
        /// Field name.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}
