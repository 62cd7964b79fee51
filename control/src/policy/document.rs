//! The serde-facing policy document ([`PolicyDocument`]) and its conversion, in
//! operator units, to the dataplane's [`PolicySpec`].

use std::fmt;

use qos_dataplane::sched::policy::PRIORITIES;
use qos_dataplane::sched::{AqmSpec, LinkRate, Policy, PolicySpec, TierSpec};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::error::{DocumentNames, Format, PolicyRejection, from_policy_error};

/// Largest policy document accepted, in bytes (a complete eight-tier policy with
/// comments is under 4 KiB).
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

const NS_PER_MS: u64 = 1_000_000;
const BPS_PER_MBPS: u64 = 1_000_000;
const BUDGET_KEYS: &[&str] = &["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"];

/// The policy a document starts from: every field the document leaves out takes the
/// preset's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// `"default"`: the reference policy, High {6,7} 25% / Medium {2..5} 60% /
    /// Low {0,1} 15% ([`PolicySpec::default`]).
    #[default]
    Default,
    /// `"classes5"`: Critical / System / JobExecution / DataTransfer / LogsMetrics,
    /// 30/25/25/15/5 ([`PolicySpec::classes5`]).
    Classes5,
}

impl Preset {
    /// The preset called `name` (`"default"` or `"classes5"`).
    pub fn from_name(name: &str) -> Result<Self, PolicyRejection> {
        match name {
            "default" => Ok(Self::Default),
            "classes5" => Ok(Self::Classes5),
            other => Err(PolicyRejection::invalid(
                "preset",
                format!("{other:?}"),
                "\"default\" or \"classes5\"",
            )),
        }
    }

    /// The name a document uses for this preset.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Classes5 => "classes5",
        }
    }

    /// The dataplane policy this preset stands for (version 1).
    pub fn spec(self) -> PolicySpec {
        match self {
            Self::Default => PolicySpec::default(),
            Self::Classes5 => PolicySpec::classes5(),
        }
    }
}

/// A non-negative number in a field's unit (ms, Mbit/s): an integer, or a decimal
/// for fractions (`0.5` ms). The form written is kept, so documents round-trip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    /// An integer.
    Int(u64),
    /// A finite, non-negative decimal.
    Float(f64),
}

impl Number {
    /// The value times `factor` (ms -> ns, Mbit/s -> bit/s), rounded to the nearest
    /// integer; an error naming `field` when that does not fit in `u64`.
    fn scaled(self, factor: u64, field: &str, unit: &str) -> Result<u64, PolicyRejection> {
        let scaled = match self {
            Self::Int(v) => v.checked_mul(factor),
            // 2^64 as f64 is exact; anything below it rounds to a value that fits.
            Self::Float(v) => {
                let x = (v * factor as f64).round();
                (x < 18_446_744_073_709_551_616.0).then_some(x as u64)
            }
        };
        scaled.ok_or_else(|| {
            PolicyRejection::invalid(
                field,
                self,
                format!(
                    "at most {} {unit} (the value in base units must fit in 64 bits)",
                    u64::MAX / factor
                ),
            )
        })
    }

    /// `value` base units (ns, bit/s) expressed in units of `factor`: an integer when
    /// it divides evenly, else a decimal (exact back to the base unit below 2^51).
    fn from_scaled(value: u64, factor: u64) -> Self {
        if value.is_multiple_of(factor) {
            Self::Int(value / factor)
        } else {
            Self::Float(value as f64 / factor as f64)
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(v) => write!(f, "{v}"),
            Self::Float(v) => write!(f, "{v}"),
        }
    }
}

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Self::Int(v) => s.serialize_u64(v),
            Self::Float(v) => s.serialize_f64(v),
        }
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

impl<'de> Visitor<'de> for NumberVisitor {
    type Value = Number;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative number")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        Ok(Number::Int(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        u64::try_from(v)
            .map(Number::Int)
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        if v.is_finite() && v >= 0.0 {
            Ok(Number::Float(v.abs()))
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

/// A duration in ms, or `"none"` (also read: `"off"`): best effort for a latency
/// budget, no aging for `aging_timeout_ms`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptionalMs {
    /// `"none"`.
    Off,
    /// A duration in milliseconds.
    Ms(Number),
}

impl OptionalMs {
    fn from_ns(ns: Option<u64>) -> Self {
        ns.map_or(Self::Off, |ns| Self::Ms(Number::from_scaled(ns, NS_PER_MS)))
    }
}

impl Serialize for OptionalMs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_str("none"),
            Self::Ms(n) => n.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for OptionalMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OptionalMsVisitor)
    }
}

struct OptionalMsVisitor;

impl<'de> Visitor<'de> for OptionalMsVisitor {
    type Value = OptionalMs;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative number of ms or \"none\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<OptionalMs, E> {
        match v {
            "none" | "off" => Ok(OptionalMs::Off),
            _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<OptionalMs, E> {
        NumberVisitor.visit_u64(v).map(OptionalMs::Ms)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<OptionalMs, E> {
        NumberVisitor.visit_i64(v).map(OptionalMs::Ms)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<OptionalMs, E> {
        NumberVisitor.visit_f64(v).map(OptionalMs::Ms)
    }
}

/// Latency budgets per priority. Written as a table keyed `p0`..`p7`
/// (`{ p7 = 10, p6 = 20 }`: a priority left out keeps the preset's budget) or as an
/// array of eight budgets, `p0` first. Element `i` is priority `i`'s entry, `None`
/// when the document leaves it out.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyBudgets(pub [Option<OptionalMs>; PRIORITIES]);

impl LatencyBudgets {
    fn apply(&self, budgets: &mut [Option<u64>; PRIORITIES]) -> Result<(), PolicyRejection> {
        for (p, (entry, budget)) in self.0.iter().zip(budgets.iter_mut()).enumerate() {
            match entry {
                None => {}
                Some(OptionalMs::Off) => *budget = None,
                Some(OptionalMs::Ms(n)) => {
                    let field = format!("latency_budget_ms.p{p}");
                    let expected =
                        "a budget > 0 ms (at least 0.000001, one ns), or \"none\" for best effort";
                    *budget = Some(positive_ns(*n, &field, expected)?);
                }
            }
        }
        Ok(())
    }
}

impl Serialize for LatencyBudgets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let given = self.0.iter().flatten().count();
        let mut map = s.serialize_map(Some(given))?;
        for (key, entry) in BUDGET_KEYS.iter().zip(&self.0) {
            if let Some(entry) = entry {
                map.serialize_entry(key, entry)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for LatencyBudgets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BudgetsVisitor)
    }
}

struct BudgetsVisitor;

impl<'de> Visitor<'de> for BudgetsVisitor {
    type Value = LatencyBudgets;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a table of budgets in ms keyed p0..p7, or an array of eight budgets (p0 first)",
        )
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LatencyBudgets, A::Error> {
        let mut out = [None; PRIORITIES];
        while let Some(key) = map.next_key::<String>()? {
            let slot = BUDGET_KEYS
                .iter()
                .position(|k| *k == key)
                .ok_or_else(|| de::Error::unknown_field(&key, BUDGET_KEYS))?;
            if out[slot].is_some() {
                return Err(de::Error::duplicate_field(BUDGET_KEYS[slot]));
            }
            out[slot] = Some(map.next_value()?);
        }
        Ok(LatencyBudgets(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LatencyBudgets, A::Error> {
        const EIGHT: &str = "eight budgets, p0 first";
        let mut out = [None; PRIORITIES];
        for (i, slot) in out.iter_mut().enumerate() {
            let entry = seq.next_element()?;
            *slot = Some(entry.ok_or_else(|| de::Error::invalid_length(i, &EIGHT))?);
        }
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(PRIORITIES + 1, &EIGHT));
        }
        Ok(LatencyBudgets(out))
    }
}

/// Link pacing (S5): `rate_mbps` or `rate_bps` (exactly one) and `burst_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkDocument {
    /// Link rate in Mbit/s (10^6 bit/s; fractions allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbps: Option<Number>,
    /// Link rate in bit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<u64>,
    /// Bucket depth in bytes: at least `max_packet_bytes`, at most 2^30.
    pub burst_bytes: u64,
}

impl LinkDocument {
    fn from_spec(link: &LinkRate) -> Self {
        let exact_mbps = link.rate_bps.is_multiple_of(BPS_PER_MBPS);
        Self {
            rate_mbps: exact_mbps.then_some(Number::Int(link.rate_bps / BPS_PER_MBPS)),
            rate_bps: (!exact_mbps).then_some(link.rate_bps),
            burst_bytes: link.burst_bytes,
        }
    }

    fn rate_field(&self) -> &'static str {
        if self.rate_bps.is_some() && self.rate_mbps.is_none() {
            "link.rate_bps"
        } else {
            "link.rate_mbps"
        }
    }

    fn to_spec(self) -> Result<LinkRate, PolicyRejection> {
        let rate_bps = match (self.rate_mbps, self.rate_bps) {
            (Some(mbps), None) => mbps.scaled(BPS_PER_MBPS, "link.rate_mbps", "Mbit/s")?,
            (None, Some(bps)) => bps,
            (Some(_), Some(_)) => {
                return Err(PolicyRejection::invalid(
                    "link",
                    "both rate_mbps and rate_bps",
                    "exactly one of link.rate_mbps and link.rate_bps",
                ));
            }
            (None, None) => {
                return Err(PolicyRejection::invalid(
                    "link.rate_mbps",
                    "missing",
                    "link.rate_mbps or link.rate_bps",
                ));
            }
        };
        Ok(LinkRate {
            rate_bps,
            burst_bytes: self.burst_bytes,
        })
    }
}

/// CoDel override for one tier (S14), in ms.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AqmDocument {
    /// Standing-queue delay aimed at, in ms (> 0, < `interval_ms`).
    pub target_ms: Number,
    /// Time above target before dropping starts, in ms (<= 68719.476736, 2^36 ns).
    pub interval_ms: Number,
}

/// One tier: a named set of priorities and its share of the link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierDocument {
    /// Name, unique in the policy.
    pub name: String,
    /// Priorities (0..=7) this tier serves.
    pub priorities: Vec<u64>,
    /// Share of the link when every tier is backlogged, in percent (1..=100).
    pub share_percent: u64,
    /// CoDel override; left out, target and interval derive from the budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aqm: Option<AqmDocument>,
}

impl TierDocument {
    fn from_spec(tier: &TierSpec) -> Self {
        Self {
            name: tier.name.clone(),
            priorities: tier.priorities.iter().map(|&p| u64::from(p)).collect(),
            share_percent: u64::from(tier.share_percent),
            aqm: tier.aqm.map(|a| AqmDocument {
                target_ms: Number::from_scaled(a.target_ns, NS_PER_MS),
                interval_ms: Number::from_scaled(a.interval_ns, NS_PER_MS),
            }),
        }
    }

    fn to_spec(&self, index: usize) -> Result<TierSpec, PolicyRejection> {
        let field = |key: &str| format!("tiers[{index}].{key}");
        let priorities = self
            .priorities
            .iter()
            .map(|&p| {
                u8::try_from(p).map_err(|_| {
                    let value = format!("{p} is out of range");
                    PolicyRejection::invalid(field("priorities"), value, "priorities in 0..=7")
                })
            })
            .collect::<Result<_, _>>()?;
        let aqm = match self.aqm {
            None => None,
            Some(a) => Some(AqmSpec {
                target_ns: a
                    .target_ms
                    .scaled(NS_PER_MS, &field("aqm.target_ms"), "ms")?,
                interval_ns: a
                    .interval_ms
                    .scaled(NS_PER_MS, &field("aqm.interval_ms"), "ms")?,
            }),
        };
        Ok(TierSpec {
            name: self.name.clone(),
            priorities,
            share_percent: narrow(self.share_percent, &field("share_percent"), "1..=100")?,
            aqm,
        })
    }
}

/// A policy as an operator writes it, in TOML or JSON (C1).
///
/// Every field but `version` is optional: a field left out takes the value of the
/// [`Preset`] named by `preset` (`"default"` when that is left out too). `tiers`, when
/// given, replaces the preset's tiers as a whole; `latency_budget_ms` overrides the
/// priorities it names. Unknown fields are rejected. Units: durations in ms (integer
/// or decimal, converted to ns), rates in Mbit/s or bit/s, sizes in bytes.
///
/// A document is only data; [`PolicyDocument::validate`] converts the units (with
/// overflow checks) and validates the whole policy through the dataplane's
/// [`PolicySpec::build`]. See the [module documentation](super) for a complete example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Policy version (C2): higher replaces the running policy, the running one with
    /// the same content is a no-op, lower is stale.
    pub version: u64,
    /// The policy the fields left out are taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Window over which the p95 sojourn of each priority is held against its budget,
    /// in ms (> 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_window_ms: Option<Number>,
    /// Age after which a stream of the tier holding priority 0 is promoted (S9), in ms
    /// (> 0), or `"none"`: no aging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aging_timeout_ms: Option<OptionalMs>,
    /// Maximum packets queued per stream (S7), >= 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_depth: Option<u64>,
    /// WARNING depth in percent of `max_queue_depth` (1..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_percent: Option<u64>,
    /// Depth, in percent, at or below which a backpressure episode ends
    /// (< `warning_percent`; 0: when the queue empties).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_percent: Option<u64>,
    /// CRITICAL signals a stream may ignore before it is disconnected (S8), 1..=15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_strikes: Option<u64>,
    /// Whether a stream ignoring `critical_strikes` CRITICALs is disconnected (S8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<bool>,
    /// Per-stream CoDel on priorities with a budget (S14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aqm: Option<bool>,
    /// Per-stream cap bucket depth in multiples of 10 ms at the cap rate (1.0..=1000.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_burst_multiplier: Option<f64>,
    /// Largest packet accepted, in bytes (1..=65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_packet_bytes: Option<u64>,
    /// DRR quantum in bytes (64..=1048576).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantum_bytes: Option<u64>,
    /// Link pacing (S5); left out, the preset's (none in both presets: order only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkDocument>,
    /// Latency budgets per priority, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget_ms: Option<LatencyBudgets>,
    /// The tiers, in order; they must partition priorities 0..=7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<TierDocument>>,
}

impl PolicyDocument {
    /// Reads a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, PolicyRejection> {
        check_size(text.len(), Format::Toml)?;
        let de = toml::Deserializer::parse(text).map_err(|e| parse_error(Format::Toml, None, e))?;
        serde_path_to_error::deserialize(de).map_err(|e| path_error(Format::Toml, e))
    }

    /// Reads a JSON document (one object; nothing but whitespace after it).
    pub fn from_json(text: &str) -> Result<Self, PolicyRejection> {
        check_size(text.len(), Format::Json)?;
        let mut de = serde_json::Deserializer::from_str(text);
        let doc =
            serde_path_to_error::deserialize(&mut de).map_err(|e| path_error(Format::Json, e))?;
        de.end().map_err(|e| parse_error(Format::Json, None, e))?;
        Ok(doc)
    }

    /// Reads a document in `format` from raw bytes (UTF-8; a leading byte-order mark
    /// is skipped).
    pub fn parse(bytes: &[u8], format: Format) -> Result<Self, PolicyRejection> {
        check_size(bytes.len(), format)?;
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let text = std::str::from_utf8(bytes).map_err(|e| {
            parse_error(
                format,
                None,
                format!("not UTF-8 ({e}), expected UTF-8 text"),
            )
        })?;
        match format {
            Format::Toml => Self::from_toml(text),
            Format::Json => Self::from_json(text),
        }
    }

    /// Reads a document whose format is guessed by [`Format::detect`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PolicyRejection> {
        Self::parse(bytes, Format::detect(bytes))
    }

    /// The document as TOML; reads back as an equal document (integers above
    /// `i64::MAX`, such as a `u64` version, are written as they are: this crate reads
    /// them back, strict TOML 1.0 readers may not).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    /// The document as pretty-printed JSON; reads back as an equal document.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// The preset called `name` (`"default"`, `"classes5"`) written out in full with
    /// version 1: a template to edit.
    pub fn preset(name: &str) -> Result<Self, PolicyRejection> {
        let preset = Preset::from_name(name)?;
        Ok(Self {
            preset: Some(preset),
            ..Self::from_spec(&preset.spec())
        })
    }

    /// `spec` written out in full (no field left to a preset), e.g. to show the
    /// running policy. Durations that are not whole ms are written as decimals,
    /// exact below 2^51 ns (26 days).
    pub fn from_spec(spec: &PolicySpec) -> Self {
        let budgets = spec.latency_budget_ns.map(|b| Some(OptionalMs::from_ns(b)));
        Self {
            version: spec.version,
            preset: None,
            budget_window_ms: Some(Number::from_scaled(spec.budget_window_ns, NS_PER_MS)),
            aging_timeout_ms: Some(OptionalMs::from_ns(spec.aging_timeout_ns)),
            max_queue_depth: Some(u64::from(spec.max_queue_depth)),
            warning_percent: Some(u64::from(spec.warning_percent)),
            clear_percent: Some(u64::from(spec.clear_percent)),
            critical_strikes: Some(u64::from(spec.critical_strikes)),
            disconnect: Some(spec.disconnect),
            aqm: Some(spec.aqm),
            cap_burst_multiplier: Some(spec.cap_burst_multiplier),
            max_packet_bytes: Some(u64::from(spec.max_packet_bytes)),
            quantum_bytes: Some(u64::from(spec.quantum_bytes)),
            link: spec.link.as_ref().map(LinkDocument::from_spec),
            latency_budget_ms: Some(LatencyBudgets(budgets)),
            tiers: Some(spec.tiers.iter().map(TierDocument::from_spec).collect()),
        }
    }

    /// The dataplane spec this document stands for: the preset overlaid with the
    /// fields given, converted to base units (ns, bit/s). Fails on a unit overflow or
    /// a value too large for its field; does not validate the policy as a whole.
    pub fn to_spec(&self) -> Result<PolicySpec, PolicyRejection> {
        let mut spec = self.preset.unwrap_or_default().spec();
        spec.version = self.version;
        if let Some(tiers) = &self.tiers {
            let tiers = tiers.iter().enumerate().map(|(i, t)| t.to_spec(i));
            spec.tiers = tiers.collect::<Result<_, _>>()?;
        }
        if let Some(budgets) = &self.latency_budget_ms {
            budgets.apply(&mut spec.latency_budget_ns)?;
        }
        if let Some(window) = self.budget_window_ms {
            spec.budget_window_ns = positive_ns(
                window,
                "budget_window_ms",
                "> 0 ms (at least 0.000001, one ns)",
            )?;
        }
        match self.aging_timeout_ms {
            None => {}
            Some(OptionalMs::Off) => spec.aging_timeout_ns = None,
            Some(OptionalMs::Ms(n)) => {
                let expected =
                    "> 0 ms (at least 0.000001, one ns), or \"none\" to switch aging off";
                spec.aging_timeout_ns = Some(positive_ns(n, "aging_timeout_ms", expected)?);
            }
        }
        self.scalars_into(&mut spec)?;
        if let Some(link) = self.link {
            spec.link = Some(link.to_spec()?);
        }
        Ok(spec)
    }

    fn scalars_into(&self, spec: &mut PolicySpec) -> Result<(), PolicyRejection> {
        set(
            &mut spec.max_queue_depth,
            self.max_queue_depth,
            "max_queue_depth",
            "1..=4294967295",
        )?;
        set(
            &mut spec.warning_percent,
            self.warning_percent,
            "warning_percent",
            "1..=100",
        )?;
        set(
            &mut spec.clear_percent,
            self.clear_percent,
            "clear_percent",
            "< warning_percent",
        )?;
        set(
            &mut spec.critical_strikes,
            self.critical_strikes,
            "critical_strikes",
            "1..=15",
        )?;
        set(
            &mut spec.max_packet_bytes,
            self.max_packet_bytes,
            "max_packet_bytes",
            "1..=65535",
        )?;
        set(
            &mut spec.quantum_bytes,
            self.quantum_bytes,
            "quantum_bytes",
            "64..=1048576",
        )?;
        spec.disconnect = self.disconnect.unwrap_or(spec.disconnect);
        spec.aqm = self.aqm.unwrap_or(spec.aqm);
        spec.cap_burst_multiplier = self
            .cap_burst_multiplier
            .unwrap_or(spec.cap_burst_multiplier);
        Ok(())
    }

    /// Converts the document ([`to_spec`](Self::to_spec)) and validates the whole
    /// policy (C1): the first problem found is returned, naming its field in the
    /// document's terms.
    pub fn validate(&self) -> Result<Policy, PolicyRejection> {
        let spec = self.to_spec()?;
        let budgets = spec.latency_budget_ns;
        spec.build()
            .map_err(|e| from_policy_error(e, &self.names(&budgets)))
    }

    fn names(&self, budgets: &[Option<u64>; PRIORITIES]) -> DocumentNames {
        let tier_aqm = self.tiers.iter().flatten().map(|t| match t.aqm {
            Some(a) => format!(
                "target_ms = {}, interval_ms = {}",
                a.target_ms, a.interval_ms
            ),
            None => "none".to_owned(),
        });
        DocumentNames {
            link_rate: self.link.map_or("link.rate_mbps", |l| l.rate_field()),
            zero_budget: budgets.iter().position(|b| *b == Some(0)),
            tier_aqm: tier_aqm.collect(),
        }
    }
}

/// `n` ms in ns, which must not be 0.
fn positive_ns(n: Number, field: &str, expected: &str) -> Result<u64, PolicyRejection> {
    match n.scaled(NS_PER_MS, field, "ms")? {
        0 => Err(PolicyRejection::invalid(field, n, expected)),
        ns => Ok(ns),
    }
}

/// A document integer narrowed to its spec field's type.
fn narrow<T: TryFrom<u64>>(value: u64, field: &str, expected: &str) -> Result<T, PolicyRejection> {
    T::try_from(value).map_err(|_| PolicyRejection::invalid(field, value, expected))
}

fn set<T: TryFrom<u64>>(
    slot: &mut T,
    value: Option<u64>,
    field: &str,
    expected: &str,
) -> Result<(), PolicyRejection> {
    if let Some(value) = value {
        *slot = narrow(value, field, expected)?;
    }
    Ok(())
}

fn check_size(len: usize, format: Format) -> Result<(), PolicyRejection> {
    if len > MAX_DOCUMENT_BYTES {
        let message = format!("{len} bytes, expected at most {MAX_DOCUMENT_BYTES}");
        return Err(parse_error(format, None, message));
    }
    Ok(())
}

fn parse_error(format: Format, path: Option<String>, error: impl fmt::Display) -> PolicyRejection {
    PolicyRejection::Parse {
        format,
        path,
        message: clip(error.to_string().trim_end()),
    }
}

/// `message` cut in the middle when long: a TOML error quotes the whole offending
/// line, which a hostile document can make 64 KiB long. The start (where) and the end
/// (what) are kept.
fn clip(message: &str) -> String {
    const KEEP: usize = 400;
    let chars = message.chars().count();
    if chars <= 3 * KEEP {
        return message.to_owned();
    }
    let head: String = message.chars().take(KEEP).collect();
    let tail: String = message.chars().skip(chars - KEEP).collect();
    format!(
        "{head} [... {} characters cut ...] {tail}",
        chars - 2 * KEEP
    )
}

fn path_error<E: fmt::Display>(
    format: Format,
    error: serde_path_to_error::Error<E>,
) -> PolicyRejection {
    // A path of unknown segments only (a syntax error before any key) names nothing.
    let path = error.path();
    let known = path
        .iter()
        .any(|s| !matches!(s, serde_path_to_error::Segment::Unknown));
    let path = known.then(|| path.to_string());
    parse_error(format, path, error.inner())
}
