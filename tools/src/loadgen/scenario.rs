//! What to send: a [`Scenario`] (serde-facing, from a TOML file or `--stream` flags) and
//! the validated [`Plan`] the sender runs ("parse, don't validate": a `Plan` exists only
//! if every field was checked).
//!
//! A stream's sending times are the product of two things:
//!
//! * a **process**: constant spacing (`1 / pps`) or Poisson (exponential gaps with mean
//!   `1 / pps`), and
//! * an **envelope**: the stream is active only inside its windows (`active`, or
//!   `start_ms`/`stop_ms`; the whole run by default) and, with `on_ms`/`off_ms`, only in
//!   the "on" part of a cycle that starts at the run's start (t = 0 begins an "on" phase).
//!
//! Rates count whole UDP payloads (the 32-byte header included, IP and UDP headers not):
//! `2mbps` of 1000-byte datagrams is 250 datagrams per second.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::header::LEN;

/// Largest datagram (the UDP payload limit over IPv4).
pub const MAX_SIZE: usize = 65_507;
/// Largest `count` of copies of one stream entry.
pub const MAX_COUNT: u64 = 100_000;
/// Most streams of a scenario, all entries and their copies together (each costs
/// about a kilobyte of state and report).
pub const MAX_STREAMS: u64 = 1_000_000;
/// Largest packet rate of one stream, datagrams per second.
pub const MAX_PPS: f64 = 10_000_000.0;
/// Longest run: one day.
pub const MAX_DURATION_MS: u64 = 86_400_000;
/// Largest scenario file read (a scenario is a few kilobytes).
pub const MAX_SCENARIO_BYTES: usize = 4 << 20;

/// How the sender waits for its next deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    /// Sleep when the next deadline is more than 200 µs away, yield the CPU (and keep
    /// running) when it is nearer: datagrams leave within a few µs of their time, and at
    /// high rates the sender keeps one core busy.
    #[default]
    Yield,
    /// Always sleep until the next deadline. A sleep overshoots by tens of µs (the
    /// kernel's timer slack), so datagrams due meanwhile leave back to back as soon as it
    /// wakes, each stamped when it is sent. Use it when the sender shares a few cores
    /// with the system it measures: a yielding sender stays runnable and takes CPU
    /// time from the gateway's threads.
    Sleep,
}

/// A scenario as written in a TOML file (see `docs/loadgen-scenario.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Where to send. Optional in the file: `--target` overrides it, and `qos-loadgen run`
    /// without a gateway sends straight to its own sink.
    #[serde(default)]
    pub target: Option<SocketAddr>,
    /// Length of the run in ms (1..=[`MAX_DURATION_MS`]); every stream stops by then.
    pub duration_ms: u64,
    /// Seed of the Poisson gaps (stream `id` is mixed in); same seed, same gaps.
    #[serde(default)]
    pub seed: u64,
    /// How the sender waits between datagrams (`"yield"`, the default, or `"sleep"`).
    #[serde(default)]
    pub pacing: Pacing,
    /// The streams.
    #[serde(default)]
    pub streams: Vec<StreamSpec>,
}

/// One `[[streams]]` entry (or one `--stream` flag).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Stream id written in every header; with `count = n`, ids `id..id+n`.
    pub id: u64,
    /// Priority written in every header, 0..=7.
    pub priority: u8,
    /// Datagram size in bytes, header included: [`LEN`]..=[`MAX_SIZE`].
    pub size: usize,
    /// Rate while active: a number and a unit, `pps`, `kpps`, `bps`, `kbps`, `mbps` or
    /// `gbps` (e.g. `"2mbps"`, `"500pps"`); the mean rate for `pattern = "poisson"`.
    pub rate: String,
    /// Constant spacing (default) or Poisson arrivals.
    #[serde(default)]
    pub pattern: Pattern,
    /// Length of the "on" phase of an on/off cycle, ms (with `off_ms`).
    #[serde(default)]
    pub on_ms: Option<u64>,
    /// Length of the "off" phase of an on/off cycle, ms (with `on_ms`).
    #[serde(default)]
    pub off_ms: Option<u64>,
    /// Start of the single active window, ms from the run's start (default 0).
    #[serde(default)]
    pub start_ms: Option<u64>,
    /// End of the single active window, ms from the run's start (default: the duration).
    #[serde(default)]
    pub stop_ms: Option<u64>,
    /// Several active windows `[[start_ms, end_ms], ...]`, sorted and disjoint (not with
    /// `start_ms`/`stop_ms`).
    #[serde(default)]
    pub active: Option<Vec<[u64; 2]>>,
    /// Copies of this entry (1..=[`MAX_COUNT`], default 1), with consecutive ids.
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

/// The arrival process of a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Evenly spaced datagrams.
    #[default]
    Constant,
    /// Exponentially distributed gaps (a Poisson process).
    Poisson,
}

/// Why a scenario is not valid. Every message names the field, the value and what was
/// expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The scenario file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not TOML of the scenario's shape (an unknown field, a wrong type).
    /// The message is the TOML parser's: it names the line, the key and what it expected.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A field has a value outside what it accepts.
    #[error("{field} = {value}: expected {expected}")]
    Invalid {
        /// The field, e.g. `streams[2].priority`.
        field: String,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A required field is absent.
    #[error("{field} is missing: {expected}")]
    Missing {
        /// The field.
        field: String,
        /// What to give.
        expected: String,
    },
}

impl ScenarioError {
    /// The field the error is about (`None` for read and TOML errors, whose message names
    /// it).
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::Missing { field, .. } => Some(field),
            Self::Read { .. } | Self::Toml { .. } => None,
        }
    }
}

fn invalid(field: String, value: impl fmt::Display, expected: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field,
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// An active window `[start_ns, end_ns)`, ns from the run's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// First active instant.
    pub start_ns: u64,
    /// First instant after the window.
    pub end_ns: u64,
}

/// An on/off cycle: active for `on_ns`, then idle for `off_ns`, from the run's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnOff {
    /// Length of the "on" phase, ns (> 0).
    pub on_ns: u64,
    /// Length of the "off" phase, ns (> 0).
    pub off_ns: u64,
}

impl OnOff {
    /// Saturating: a validated cycle is at most two days, but the fields are public.
    fn period(self) -> u64 {
        self.on_ns.saturating_add(self.off_ns).max(1)
    }

    /// "On" time within `[0, t)`.
    fn on_time_before(self, t: u64) -> u64 {
        let on = self.on_ns.min(self.period());
        (t / self.period()) * on + (t % self.period()).min(on)
    }

    /// The first "on" instant at which the "on" time since 0 reaches `on_time` (the
    /// inverse of [`on_time_before`](Self::on_time_before)).
    fn at_on_time(self, on_time: u64) -> u64 {
        let on = self.on_ns.min(self.period()).max(1);
        (on_time / on).saturating_mul(self.period()) + on_time % on
    }
}

/// Where [`StreamPlan::at_active_from`] left off: the window it reached and the active
/// time before that window. Active times asked of one cursor must not decrease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveCursor {
    window: usize,
    before: u64,
}

/// One validated stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamPlan {
    /// Stream id.
    pub id: u64,
    /// Priority, 0..=7.
    pub priority: u8,
    /// Datagram size, [`LEN`]..=[`MAX_SIZE`] bytes.
    pub size: usize,
    /// Datagrams per second while active (mean for Poisson), in (0, [`MAX_PPS`]].
    pub pps: f64,
    /// Arrival process.
    pub pattern: Pattern,
    /// Optional on/off cycle.
    pub on_off: Option<OnOff>,
    /// Active windows: non-empty, sorted, disjoint, inside the run.
    pub windows: Vec<Window>,
}

impl StreamPlan {
    /// Whether the stream may send at `t` ns from the start.
    pub fn active_at(&self, t: u64) -> bool {
        let in_window = self.windows.iter().any(|w| w.start_ns <= t && t < w.end_ns);
        in_window && self.on_off.is_none_or(|c| t % c.period() < c.on_ns)
    }

    /// The first instant at or after `t` when the stream is active, or `None` if it never
    /// is again.
    pub fn next_active(&self, t: u64) -> Option<u64> {
        for w in self.windows.iter().filter(|w| w.end_ns > t) {
            let cand = t.max(w.start_ns);
            let Some(c) = self.on_off else {
                return Some(cand);
            };
            let phase = cand % c.period();
            let cand = if phase < c.on_ns {
                cand
            } else {
                cand - phase + c.period()
            };
            if cand < w.end_ns {
                return Some(cand);
            }
        }
        None
    }

    /// Total active time, ns: the windows, less the "off" phases inside them.
    pub fn active_ns(&self) -> u64 {
        self.windows
            .iter()
            .map(|w| self.active_between(w.start_ns, w.end_ns))
            .sum()
    }

    /// Active time within `[0, t)`, ns: the parts of the windows before `t`, less the
    /// "off" phases inside them. What a stream stopped at `t` was active for.
    pub fn active_before(&self, t: u64) -> u64 {
        self.windows
            .iter()
            .filter(|w| w.start_ns < t)
            .map(|w| self.active_between(w.start_ns, w.end_ns.min(t)))
            .sum()
    }

    /// The instant at which the stream has been active for `active` ns (the first
    /// active instant `t` with `active_before(t) == active`), or `None` if its whole
    /// active time is shorter. The sender's deadlines are spaced in this active time, so
    /// a gap that reaches past the end of an "on" phase or a window continues in the
    /// next one.
    pub fn at_active(&self, active: u64) -> Option<u64> {
        self.at_active_from(active, &mut ActiveCursor::default())
    }

    /// [`at_active`](Self::at_active), starting the search where `cursor` left off (the
    /// sender asks for increasing active times, so it walks the windows once).
    pub fn at_active_from(&self, active: u64, cursor: &mut ActiveCursor) -> Option<u64> {
        while let Some(w) = self.windows.get(cursor.window) {
            let inside = self.active_between(w.start_ns, w.end_ns);
            if let Some(rest) = active.checked_sub(cursor.before)
                && rest < inside
            {
                return Some(match self.on_off {
                    None => w.start_ns + rest,
                    Some(c) => c.at_on_time(c.on_time_before(w.start_ns) + rest),
                });
            }
            cursor.before += inside;
            cursor.window += 1;
        }
        None
    }

    /// Active time within `[a, b)` (`a <= b`), ns, ignoring the windows.
    fn active_between(&self, a: u64, b: u64) -> u64 {
        match self.on_off {
            None => b - a,
            Some(c) => c.on_time_before(b) - c.on_time_before(a),
        }
    }

    /// Mean gap between datagrams while active, ns.
    pub fn mean_gap_ns(&self) -> f64 {
        1e9 / self.pps
    }
}

/// A validated scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Where to send, if the scenario or the command line said.
    pub target: Option<SocketAddr>,
    /// Length of the run.
    pub duration: Duration,
    /// Seed of the Poisson gaps.
    pub seed: u64,
    /// How the sender waits between datagrams.
    pub pacing: Pacing,
    /// Every stream, copies expanded, ids unique.
    pub streams: Vec<StreamPlan>,
}

impl Scenario {
    /// Reads and parses a TOML scenario file (not yet validated: see
    /// [`validate`](Self::validate)).
    ///
    /// # Errors
    /// [`ScenarioError::Read`] or [`ScenarioError::Toml`], naming the file.
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let read = |source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        };
        let Some(bytes) =
            qos_control::files::read_limited(path, MAX_SCENARIO_BYTES).map_err(read)?
        else {
            return Err(read(std::io::Error::other(format!(
                "larger than {MAX_SCENARIO_BYTES} bytes (is this a scenario file?)"
            ))));
        };
        let text = String::from_utf8(bytes)
            .map_err(|e| read(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        Self::from_toml(&path.display().to_string(), &text)
    }

    /// Parses TOML text; `origin` names it in errors.
    ///
    /// # Errors
    /// [`ScenarioError::Toml`] for text that is not a scenario.
    pub fn from_toml(origin: &str, text: &str) -> Result<Self, ScenarioError> {
        toml::from_str(text).map_err(|e| ScenarioError::Toml {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Checks every field and expands copies.
    ///
    /// # Errors
    /// [`ScenarioError::Invalid`] naming the first bad field (`duration_ms`,
    /// `streams[i].priority`, ...), or [`ScenarioError::Missing`] for a scenario without
    /// streams.
    pub fn validate(&self) -> Result<Plan, ScenarioError> {
        if self.duration_ms == 0 || self.duration_ms > MAX_DURATION_MS {
            return Err(invalid(
                "duration_ms".into(),
                self.duration_ms,
                format!("1..={MAX_DURATION_MS} ms"),
            ));
        }
        if self.streams.is_empty() {
            return Err(ScenarioError::Missing {
                field: "streams".into(),
                expected: "at least one [[streams]] entry or --stream flag".into(),
            });
        }
        // Port 0 and 0.0.0.0 / :: name no receiver (the kernel sent to port 0 without
        // an error: "sent 1, errors 0").
        if let Some(t) = self.target
            && (t.port() == 0 || t.ip().to_canonical().is_unspecified())
        {
            return Err(invalid(
                "target".into(),
                t,
                "a host address and a port in 1..=65535",
            ));
        }
        // Before any copy is made: 20 entries of 100,000 took 1.4 GB, and nothing
        // bounded the number of entries.
        let total = self
            .streams
            .iter()
            .fold(0u64, |n, s| n.saturating_add(s.count));
        if total > MAX_STREAMS {
            return Err(invalid(
                "streams".into(),
                total,
                format!("at most {MAX_STREAMS} streams, all entries' counts together"),
            ));
        }
        let duration_ns = self.duration_ms * 1_000_000;
        let mut streams: Vec<StreamPlan> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, spec) in self.streams.iter().enumerate() {
            let field = |name: &str| format!("streams[{i}].{name}");
            let template = spec.validate(&field, duration_ns)?;
            for copy in 0..spec.count {
                let id = spec
                    .id
                    .checked_add(copy)
                    .ok_or_else(|| invalid(field("id"), spec.id, "id + count <= 2^64 - 1"))?;
                if !seen.insert(id) {
                    return Err(invalid(
                        field("id"),
                        spec.id,
                        format!("ids unique across streams (id {id} is used twice)"),
                    ));
                }
                streams.push(StreamPlan {
                    id,
                    ..template.clone()
                });
            }
        }
        Ok(Plan {
            target: self.target,
            duration: Duration::from_millis(self.duration_ms),
            seed: self.seed,
            pacing: self.pacing,
            streams,
        })
    }
}

impl StreamSpec {
    /// Checks this entry; `field` names a field of it, `duration_ns` is the run's length.
    fn validate(
        &self,
        field: &dyn Fn(&str) -> String,
        duration_ns: u64,
    ) -> Result<StreamPlan, ScenarioError> {
        if self.priority > 7 {
            return Err(invalid(field("priority"), self.priority, "0..=7"));
        }
        if !(LEN..=MAX_SIZE).contains(&self.size) {
            return Err(invalid(
                field("size"),
                self.size,
                format!("{LEN}..={MAX_SIZE} bytes (the header is {LEN})"),
            ));
        }
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(invalid(
                field("count"),
                self.count,
                format!("1..={MAX_COUNT}"),
            ));
        }
        let pps = parse_rate(&self.rate, self.size)
            .map_err(|expected| invalid(field("rate"), format!("{:?}", self.rate), expected))?;
        let on_off = match (self.on_ms, self.off_ms) {
            (None, None) => None,
            (Some(on), Some(off)) => {
                for (name, ms) in [("on_ms", on), ("off_ms", off)] {
                    if ms == 0 || ms > MAX_DURATION_MS {
                        return Err(invalid(
                            field(name),
                            ms,
                            format!("a length in 1..={MAX_DURATION_MS} ms"),
                        ));
                    }
                }
                Some(OnOff {
                    on_ns: on * 1_000_000,
                    off_ns: off * 1_000_000,
                })
            }
            (Some(_), None) => return Err(missing_pair(field("off_ms"), "on_ms")),
            (None, Some(_)) => return Err(missing_pair(field("on_ms"), "off_ms")),
        };
        let windows = self.windows(field, duration_ns)?;
        Ok(StreamPlan {
            id: self.id,
            priority: self.priority,
            size: self.size,
            pps,
            pattern: self.pattern,
            on_off,
            windows,
        })
    }

    fn windows(
        &self,
        field: &dyn Fn(&str) -> String,
        duration_ns: u64,
    ) -> Result<Vec<Window>, ScenarioError> {
        let duration_ms = duration_ns / 1_000_000;
        let raw: Vec<(String, [u64; 2])> = match (&self.active, self.start_ms, self.stop_ms) {
            (Some(_), Some(_), _) => {
                return Err(invalid(
                    field("start_ms"),
                    "set with active",
                    "either `active` or `start_ms`/`stop_ms`, not both",
                ));
            }
            (Some(_), _, Some(_)) => {
                return Err(invalid(
                    field("stop_ms"),
                    "set with active",
                    "either `active` or `start_ms`/`stop_ms`, not both",
                ));
            }
            (Some(list), None, None) if list.is_empty() => {
                return Err(invalid(field("active"), "[]", "at least one window"));
            }
            (Some(list), None, None) => list
                .iter()
                .enumerate()
                .map(|(j, w)| (field(&format!("active[{j}]")), *w))
                .collect(),
            (None, start, stop) => vec![(
                field(if stop.is_some() {
                    "stop_ms"
                } else {
                    "start_ms"
                }),
                [start.unwrap_or(0), stop.unwrap_or(duration_ms)],
            )],
        };
        let mut windows: Vec<Window> = Vec::with_capacity(raw.len());
        for (name, [start, end]) in raw {
            let shown = format!("[{start}, {end}]");
            if start >= end {
                return Err(invalid(
                    name,
                    shown,
                    "a window [start_ms, end_ms] with start < end",
                ));
            }
            if end > duration_ms {
                return Err(invalid(
                    name,
                    shown,
                    format!("a window ending by duration_ms ({duration_ms})"),
                ));
            }
            if windows.last().is_some_and(|w| w.end_ns > start * 1_000_000) {
                return Err(invalid(name, shown, "windows sorted and not overlapping"));
            }
            windows.push(Window {
                start_ns: start * 1_000_000,
                end_ns: end * 1_000_000,
            });
        }
        Ok(windows)
    }
}

fn missing_pair(field: String, other: &str) -> ScenarioError {
    ScenarioError::Missing {
        field,
        expected: format!("on/off needs both on_ms and off_ms ({other} is set)"),
    }
}

/// Datagrams per second for `rate` (see [`StreamSpec::rate`]) of `size`-byte datagrams;
/// `Err` says what was expected.
pub fn parse_rate(rate: &str, size: usize) -> Result<f64, String> {
    let expected = || {
        format!(
            "a rate in (0, {MAX_PPS}] datagrams/s, as a number and pps, kpps, bps, kbps, mbps or gbps (e.g. 2mbps)"
        )
    };
    let text = rate.trim().to_ascii_lowercase();
    // The unit is the suffix (longest first), so a number such as `1e7` keeps its `e`.
    let (number, unit) = ["kpps", "kbps", "mbps", "gbps", "pps", "bps"]
        .iter()
        .find_map(|u| text.strip_suffix(u).map(|n| (n, *u)))
        .ok_or_else(expected)?;
    let number = number.trim();
    if number.is_empty() || number.ends_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(expected());
    }
    let value: f64 = number.parse().map_err(|_| expected())?;
    let bits_per_datagram = (size * 8) as f64;
    let pps = match unit {
        "pps" => value,
        "kpps" => value * 1e3,
        "bps" => value / bits_per_datagram,
        "kbps" => value * 1e3 / bits_per_datagram,
        "mbps" => value * 1e6 / bits_per_datagram,
        "gbps" => value * 1e9 / bits_per_datagram,
        _ => return Err(expected()),
    };
    if pps.is_finite() && pps > 0.0 && pps <= MAX_PPS {
        Ok(pps)
    } else {
        Err(expected())
    }
}

/// Parses a duration: a number and `ms`, `s` or `m` (`500ms`, `2s`, `1.5m`); a bare
/// number is milliseconds. `Err` says what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("{text:?}: expected a duration such as 500ms, 10s or 2m");
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.trim().parse().map_err(|_| expected())?;
    let ms = match unit {
        "" | "ms" => value,
        "s" => value * 1e3,
        "m" => value * 60e3,
        _ => return Err(expected()),
    };
    if ms.is_finite() && ms >= 0.0 && ms <= MAX_DURATION_MS as f64 {
        Ok(Duration::from_micros((ms * 1e3).round() as u64))
    } else {
        Err(expected())
    }
}

/// [`parse_duration`] in whole milliseconds (`1.5ms` is an error, not 1 ms).
fn duration_ms(key: &str, text: &str) -> Result<u64, String> {
    let d = parse_duration(text).map_err(|e| format!("{key}: {e}"))?;
    whole_ms(d).ok_or_else(|| format!("{key}: {text:?}: expected a whole number of ms"))
}

/// `d` in milliseconds if it is a whole number of them.
pub fn whole_ms(d: Duration) -> Option<u64> {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        u64::try_from(d.as_millis()).ok()
    } else {
        None
    }
}

/// The `--stream` form: comma-separated `key=value` items and flags:
///
/// `id=1,prio=7,size=1000,rate=2mbps[,poisson][,on=100ms/off=200ms][,start=1s][,stop=5s]`
/// `[,active=0s-5s/10s-15s][,count=10]`
///
/// Keys: `id`, `prio` (or `priority`), `size`, `rate` (as in the file), `poisson` (a
/// flag), `on=..ms/off=..ms`, `start`, `stop`, `active` (windows `a-b` separated by `/`),
/// `count`. Times take `ms`, `s` or `m`. `id`, `prio`, `size` and `rate` are required.
impl FromStr for StreamSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut spec = StreamSpec {
            id: u64::MAX,
            priority: u8::MAX,
            size: 0,
            rate: String::new(),
            pattern: Pattern::Constant,
            on_ms: None,
            off_ms: None,
            start_ms: None,
            stop_ms: None,
            active: None,
            count: 1,
        };
        let (mut id, mut prio, mut size, mut rate) = (false, false, false, false);
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{key}={v}: expected a non-negative integer"))
            };
            match key {
                "id" => (spec.id, id) = (num(value)?, true),
                "prio" | "priority" => {
                    let p = num(value)?;
                    spec.priority =
                        u8::try_from(p).map_err(|_| format!("{key}={value}: expected 0..=7"))?;
                    prio = true;
                }
                "size" => {
                    spec.size = usize::try_from(num(value)?)
                        .map_err(|_| format!("size={value}: too large"))?;
                    size = true;
                }
                "rate" => (spec.rate, rate) = (value.to_owned(), true),
                "poisson" if value.is_empty() => spec.pattern = Pattern::Poisson,
                "constant" if value.is_empty() => spec.pattern = Pattern::Constant,
                "on" => {
                    let (on, off) = value
                        .split_once("/off=")
                        .ok_or_else(|| format!("{item}: expected on=<time>/off=<time>"))?;
                    spec.on_ms = Some(duration_ms("on", on)?);
                    spec.off_ms = Some(duration_ms("off", off)?);
                }
                "start" => spec.start_ms = Some(duration_ms(key, value)?),
                "stop" => spec.stop_ms = Some(duration_ms(key, value)?),
                "active" => spec.active = Some(parse_windows(value)?),
                "count" => spec.count = num(value)?,
                _ => {
                    return Err(format!(
                        "{item:?}: unknown key, expected id, prio, size, rate, poisson, on=../off=.., start, stop, active or count"
                    ));
                }
            }
        }
        for (given, key) in [(id, "id"), (prio, "prio"), (size, "size"), (rate, "rate")] {
            if !given {
                return Err(format!("{text:?}: `{key}=` is required"));
            }
        }
        Ok(spec)
    }
}

fn parse_windows(value: &str) -> Result<Vec<[u64; 2]>, String> {
    value
        .split('/')
        .map(|w| {
            let (a, b) = w
                .split_once('-')
                .ok_or_else(|| format!("active={value}: expected windows like 0s-5s/10s-15s"))?;
            Ok([duration_ms("active", a)?, duration_ms("active", b)?])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(active: Option<Vec<[u64; 2]>>, on_off: Option<(u64, u64)>) -> StreamSpec {
        StreamSpec {
            id: 1,
            priority: 3,
            size: 100,
            rate: "1000pps".into(),
            pattern: Pattern::Constant,
            on_ms: on_off.map(|p| p.0),
            off_ms: on_off.map(|p| p.1),
            start_ms: None,
            stop_ms: None,
            active,
            count: 1,
        }
    }

    fn plan_of(spec: StreamSpec) -> StreamPlan {
        let s = Scenario {
            target: None,
            duration_ms: 1000,
            seed: 0,
            pacing: Pacing::Yield,
            streams: vec![spec],
        };
        s.validate().expect("valid").streams.remove(0)
    }

    #[test]
    fn rates_convert_to_datagrams_per_second() {
        assert_eq!(parse_rate("2mbps", 1000), Ok(250.0));
        assert_eq!(parse_rate("8 Mbps", 1000), Ok(1000.0));
        assert_eq!(parse_rate("1.5kpps", 64), Ok(1500.0));
        assert_eq!(parse_rate("800bps", 100), Ok(1.0));
        // Red team: the unit was split at the first letter, so `1e7pps` was refused.
        assert_eq!(parse_rate("1e3pps", 100), Ok(1000.0));
        assert_eq!(parse_rate("2.5E6bps", 1000), Ok(312.5));
        assert_eq!(parse_rate("1e7pps", 100), Ok(1e7));
        for bad in [
            "",
            "2",
            "mbps",
            "-1pps",
            "0pps",
            "2 furlongs",
            "nanpps",
            "infpps",
            "1e9pps",
            "1mpps",
            "1epps",
        ] {
            assert!(parse_rate(bad, 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_and_on_off_compose() {
        let p = plan_of(stream(Some(vec![[100, 300], [600, 900]]), Some((50, 50))));
        assert!(!p.active_at(99_999_999));
        assert!(p.active_at(100_000_000));
        assert!(!p.active_at(150_000_000), "off phase");
        assert!(!p.active_at(300_000_000), "window end is exclusive");
        assert_eq!(p.next_active(150_000_000), Some(200_000_000));
        assert_eq!(p.next_active(260_000_000), Some(600_000_000));
        assert_eq!(p.next_active(900_000_000), None);
        // 2 x 100 ms on in [100, 300), 3 x 50 ms... [600, 900): 600-650, 700-750, 800-850.
        assert_eq!(p.active_ns(), 100_000_000 + 150_000_000);
    }

    #[test]
    fn active_time_maps_to_instants_across_off_phases_and_windows() {
        let p = plan_of(stream(Some(vec![[100, 300], [600, 900]]), Some((50, 50))));
        let ms = 1_000_000;
        // On in [100, 150), [200, 250), [600, 650), [700, 750), [800, 850).
        for (t, active) in [
            (0, 0),
            (100, 0),
            (125, 25),
            (150, 50),
            (199, 50),
            (250, 100),
            (650, 150),
            (900, 250),
        ] {
            assert_eq!(p.active_before(t * ms), active * ms, "before {t} ms");
        }
        for (active, t) in [
            (0, 100),
            (25, 125),
            (50, 200),
            (99, 249),
            (100, 600),
            (200, 800),
        ] {
            assert_eq!(p.at_active(active * ms), Some(t * ms), "active {active} ms");
        }
        assert_eq!(p.at_active(250 * ms - 1), Some(850 * ms - 1));
        assert_eq!(p.at_active(250 * ms), None);
        // The inverse of active_before, at every active instant.
        let mut cursor = ActiveCursor::default();
        for t in (0..1000 * ms).step_by(ms as usize / 2) {
            if p.active_at(t) {
                assert_eq!(p.at_active_from(p.active_before(t), &mut cursor), Some(t));
            }
        }
        assert_eq!(p.active_before(u64::MAX), p.active_ns());
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(StreamSpec, &str)> = vec![
            (
                StreamSpec {
                    priority: 8,
                    ..stream(None, None)
                },
                "streams[0].priority",
            ),
            (
                StreamSpec {
                    size: 31,
                    ..stream(None, None)
                },
                "streams[0].size",
            ),
            (
                StreamSpec {
                    size: 65_508,
                    ..stream(None, None)
                },
                "streams[0].size",
            ),
            (
                StreamSpec {
                    rate: "fast".into(),
                    ..stream(None, None)
                },
                "streams[0].rate",
            ),
            (
                StreamSpec {
                    count: 0,
                    ..stream(None, None)
                },
                "streams[0].count",
            ),
            (stream(Some(vec![[0, 2000]]), None), "streams[0].active[0]"),
            (
                stream(Some(vec![[0, 500], [400, 600]]), None),
                "streams[0].active[1]",
            ),
            (stream(None, Some((0, 10))), "streams[0].on_ms"),
            (
                StreamSpec {
                    off_ms: None,
                    ..stream(None, Some((5, 10)))
                },
                "streams[0].off_ms",
            ),
            (
                StreamSpec {
                    stop_ms: Some(5000),
                    ..stream(None, None)
                },
                "streams[0].stop_ms",
            ),
        ];
        for (spec, field) in cases {
            let s = Scenario {
                target: None,
                duration_ms: 1000,
                seed: 0,
                pacing: Pacing::Yield,
                streams: vec![spec],
            };
            let err = s.validate().expect_err(field);
            assert_eq!(err.field(), Some(field), "{err}");
        }
    }

    #[test]
    fn the_command_line_form_parses() {
        let s: StreamSpec =
            "id=4,prio=7,size=1000,rate=2mbps,poisson,on=100ms/off=0.2s,count=3,active=0s-1s/2s-3s"
                .parse()
                .expect("parses");
        assert_eq!((s.id, s.priority, s.size, s.count), (4, 7, 1000, 3));
        assert_eq!(s.pattern, Pattern::Poisson);
        assert_eq!((s.on_ms, s.off_ms), (Some(100), Some(200)));
        assert_eq!(s.active, Some(vec![[0, 1000], [2000, 3000]]));
        assert!(
            "id=1,prio=1,size=100".parse::<StreamSpec>().is_err(),
            "rate missing"
        );
        assert!(
            "id=1,prio=1,size=100,rate=1pps,colour=red"
                .parse::<StreamSpec>()
                .is_err()
        );
        assert!(
            "id=x,prio=1,size=100,rate=1pps"
                .parse::<StreamSpec>()
                .is_err()
        );
        assert!(
            "id=1,prio=300,size=100,rate=1pps"
                .parse::<StreamSpec>()
                .is_err()
        );
    }
}
