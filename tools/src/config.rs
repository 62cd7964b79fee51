//! `qosd`'s configuration: a TOML file (`docs/qosd.toml` is the commented example) or
//! the embedded default ([`DEFAULT_TOML`]). [`GatewayConfig::from_toml`] parses and
//! validates the whole file: every rejection names the key, the value and what was
//! expected, and a file that fails changes nothing (SIGHUP keeps the running one).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use qos_control::audit::AuditHead;
use qos_control::policy::PolicyDocument;
use qos_dataplane::sched::Policy;
use serde::Deserialize;

/// The embedded default: listen 127.0.0.1:7000, forward to 127.0.0.1:7001, control API
/// on 127.0.0.1:9100, the reference policy on a 50 Mbit/s link, load-generator
/// datagrams classified by their header (priority as claimed), everything else as one
/// priority-2 stream per flow.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Largest file read (a config is a few KB; this bounds a mistaken path).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A rejected configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not TOML, or a key of the wrong type, or an unknown key.
    #[error("config: {0}")]
    Parse(String),
    /// A value out of range or inconsistent with the rest.
    #[error("config: {key} = {value}: expected {expected}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// The value found.
        value: String,
        /// What it must be.
        expected: String,
    },
    /// The `[policy]` table is not a valid policy document.
    #[error("config: policy: {0}")]
    Policy(#[from] qos_control::policy::PolicyRejection),
}

fn invalid(key: impl Into<String>, value: impl ToString, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// An audit anchor as `NEXT_SEQ:HASH` (the `audit_head` of `/status`), parsed as
/// `qos-ctl audit verify --anchor` parses it and checked as the audit log checks it.
pub(crate) fn anchor_head(text: &str) -> Result<AuditHead, ConfigError> {
    let bad = || {
        invalid(
            "control.audit_anchor",
            text,
            "NEXT_SEQ:HASH as /status shows audit_head (a number, then 64 lowercase hex digits)",
        )
    };
    let head = crate::ctl::parse_anchor(text).map_err(|_| bad())?;
    head.check().map_err(|_| bad())?;
    Ok(head)
}

/// Pinning of the dataplane workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinningConfig {
    /// Each worker on its own core; an error if the machine has fewer.
    Strict,
    /// Each worker on core `i % cores` (the default: works on any machine).
    #[default]
    Wrap,
    /// No pinning.
    Off,
}

/// What an idle dataplane worker does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleConfig {
    /// Spin briefly, yield, then sleep until the receive thread rings (the default:
    /// an idle gateway costs nothing, and a packet after a pause pays one thread
    /// wake-up, tens of us on a busy machine).
    #[default]
    Park,
    /// Never sleep: the lowest added latency, at the price of one core per worker
    /// kept busy all the time. For machines with a core to spare per worker.
    Spin,
}

/// `[gateway]`: sockets, workers, limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Addresses to receive on; each gets one `SO_REUSEPORT` socket per worker.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Dataplane workers (and receive sockets per listen address), 1..=64.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Worker pinning.
    #[serde(default)]
    pub pinning: PinningConfig,
    /// Largest datagram forwarded; longer ones are dropped `oversize` (1..=65507).
    #[serde(default = "default_max_datagram")]
    pub max_datagram: usize,
    /// Flows kept in each receive thread's flow table (1..=16M); a new flow beyond it
    /// evicts the least recently seen idle one, or is dropped `flow_table_full`.
    #[serde(default = "default_flow_table")]
    pub flow_table: usize,
    /// A flow silent this long (ms) may be evicted and its stream closed.
    #[serde(default = "default_flow_idle_ms")]
    pub flow_idle_ms: u64,
    /// Streams (a stream key at a priority) that get their own account (per-stream
    /// counters, 1..=16M); the streams met after that are counted together in one
    /// overflow account, so a sender choosing its stream ids cannot grow qosd's
    /// memory without bound.
    #[serde(default = "default_stream_accounts")]
    pub stream_accounts: usize,
    /// Datagrams per receive / send batch (1..=1024).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Socket receive and send buffer sizes asked of the kernel, bytes.
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer: usize,
    /// Messages per ingress ring (producer -> worker), a power of two.
    #[serde(default = "default_ring")]
    pub ring_capacity: usize,
    /// How long SIGTERM waits for queued packets to drain, ms.
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
    /// A worker-loop iteration longer than this counts as a stall, a health hazard
    /// that degrades qosd (and sheds the lowest tier), ms (1..=10000). The default
    /// leaves room for a worker being preempted on a busy machine.
    #[serde(default = "default_stall_ms")]
    pub stall_budget_ms: u64,
    /// What an idle worker does: `park` or `spin`.
    #[serde(default)]
    pub idle: IdleConfig,
}

impl GatewaySection {
    /// Every key and its value as text: what a reload compares (each takes effect
    /// only at start).
    pub(crate) fn keys(&self) -> Vec<(&'static str, String)> {
        // Destructured without `..`: a new key that is not listed here fails to
        // compile instead of being silently ignored by a reload.
        let Self {
            listen,
            workers,
            pinning,
            max_datagram,
            flow_table,
            flow_idle_ms,
            stream_accounts,
            batch,
            socket_buffer,
            ring_capacity,
            drain_ms,
            stall_budget_ms,
            idle,
        } = self;
        vec![
            ("gateway.listen", format!("{listen:?}")),
            ("gateway.workers", workers.to_string()),
            ("gateway.pinning", format!("{pinning:?}")),
            ("gateway.max_datagram", max_datagram.to_string()),
            ("gateway.flow_table", flow_table.to_string()),
            ("gateway.flow_idle_ms", flow_idle_ms.to_string()),
            ("gateway.stream_accounts", stream_accounts.to_string()),
            ("gateway.batch", batch.to_string()),
            ("gateway.socket_buffer", socket_buffer.to_string()),
            ("gateway.ring_capacity", ring_capacity.to_string()),
            ("gateway.drain_ms", drain_ms.to_string()),
            ("gateway.stall_budget_ms", stall_budget_ms.to_string()),
            ("gateway.idle", format!("{idle:?}")),
        ]
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 7000))]
}
fn default_workers() -> usize {
    2
}
fn default_max_datagram() -> usize {
    9216
}
fn default_flow_table() -> usize {
    65_536
}
fn default_stream_accounts() -> usize {
    crate::gateway::DEFAULT_STREAM_ACCOUNTS
}
fn default_flow_idle_ms() -> u64 {
    30_000
}
fn default_batch() -> usize {
    32
}
fn default_socket_buffer() -> usize {
    4 << 20
}
fn default_ring() -> usize {
    4096
}
fn default_drain_ms() -> u64 {
    2_000
}
fn default_stall_ms() -> u64 {
    100
}

/// `[control]`: the control plane around the dataplane.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// The HTTP API (`/metrics`, `/healthz`, `/status`, `/integrity`, `POST /policy`).
    #[serde(default = "default_api")]
    pub listen: SocketAddr,
    /// Serve a non-loopback address (needs `bearer_token`).
    #[serde(default)]
    pub allow_remote: bool,
    /// Token the API requires when `allow_remote` is set.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// Directory for `audit.jsonl`, `metrics.db` and `sojourn.hlog`; none: no files.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// `.hlog` interval, ms.
    #[serde(default = "default_hlog_ms")]
    pub hlog_period_ms: u64,
    /// metrics.db batch period, ms.
    #[serde(default = "default_db_ms")]
    pub metrics_db_period_ms: u64,
    /// Write metrics.db (in `state_dir`).
    #[serde(default = "default_true")]
    pub metrics_db: bool,
    /// Busiest streams with their own metric series; the rest are `other`.
    #[serde(default = "default_series")]
    pub series_limit: usize,
    /// Path of an ed25519 verifying key: policies posted to the API must be signed.
    #[serde(default)]
    pub verifying_key: Option<PathBuf>,
    /// Time an API client has to send a request's headers (the idle limit of a
    /// kept-alive connection too) and a policy's body, ms.
    #[serde(default = "default_client_timeout_ms")]
    pub client_timeout_ms: u64,
    /// A head of the audit log saved earlier, `NEXT_SEQ:HASH` as `/status` shows
    /// `audit_head`: at start, a log changed or cut at that point is refused.
    #[serde(default)]
    pub audit_anchor: Option<String>,
}

impl ControlSection {
    /// Every key and its value as text, as [`GatewaySection::keys`] (the token too:
    /// the reload compares it and never shows it).
    pub(crate) fn keys(&self) -> Vec<(&'static str, String)> {
        // Destructured without `..`, as in `GatewaySection::keys`.
        let Self {
            listen,
            allow_remote,
            bearer_token,
            state_dir,
            hlog_period_ms,
            metrics_db_period_ms,
            metrics_db,
            series_limit,
            verifying_key,
            client_timeout_ms,
            audit_anchor,
        } = self;
        vec![
            ("control.listen", listen.to_string()),
            ("control.allow_remote", allow_remote.to_string()),
            ("control.bearer_token", format!("{bearer_token:?}")),
            ("control.state_dir", format!("{state_dir:?}")),
            ("control.hlog_period_ms", hlog_period_ms.to_string()),
            (
                "control.metrics_db_period_ms",
                metrics_db_period_ms.to_string(),
            ),
            ("control.metrics_db", metrics_db.to_string()),
            ("control.series_limit", series_limit.to_string()),
            ("control.verifying_key", format!("{verifying_key:?}")),
            ("control.client_timeout_ms", client_timeout_ms.to_string()),
            ("control.audit_anchor", format!("{audit_anchor:?}")),
        ]
    }
}

fn default_api() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}
fn default_hlog_ms() -> u64 {
    1_000
}
fn default_db_ms() -> u64 {
    10_000
}
fn default_true() -> bool {
    true
}
fn default_series() -> usize {
    100
}
fn default_client_timeout_ms() -> u64 {
    10_000
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            listen: default_api(),
            allow_remote: false,
            bearer_token: None,
            state_dir: None,
            hlog_period_ms: default_hlog_ms(),
            metrics_db_period_ms: default_db_ms(),
            metrics_db: true,
            series_limit: default_series(),
            verifying_key: None,
            client_timeout_ms: default_client_timeout_ms(),
            audit_anchor: None,
        }
    }
}

/// `[[upstream]]`: a named destination.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name used by rules.
    pub name: String,
    /// Where datagrams are sent.
    pub addr: SocketAddr,
}

/// How a rule names the scheduler stream of a datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamBy {
    /// One stream per flow (source address and port, listen address); the default.
    #[default]
    Flow,
    /// One stream per load-generator stream id (its `stream_id` key; senders using the
    /// same id share it); datagrams without the header: as `flow`.
    Header,
    /// One stream for everything the rule matches (per receive socket).
    Rule,
}

/// Where a rule's datagrams go.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteConfig {
    /// One upstream.
    To(String),
    /// Hash-balanced over several: a flow always goes to the same one.
    Balance(Vec<String>),
    /// By the tier of the datagram's priority: tier name -> upstream (every tier of
    /// the policy must be named).
    PerClass(BTreeMap<String, String>),
    /// A copy to every one.
    Broadcast(Vec<String>),
}

/// `[[rule]]`: classification, tried in order; the first match decides.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name (in logs and metrics).
    pub name: String,
    /// Matches datagrams received on this local port.
    #[serde(default)]
    pub dst_port: Option<u16>,
    /// Matches sources in this address or prefix (`10.0.0.7`, `10.0.0.0/8`, `::1`).
    #[serde(default)]
    pub source: Option<String>,
    /// `true`: matches datagrams carrying the load-generator header; `false`: only
    /// datagrams without it.
    #[serde(default)]
    pub loadgen: Option<bool>,
    /// Priority given (0..=7); with `loadgen = true`, the priority the header claims
    /// is used instead, capped by `max_priority`.
    #[serde(default)]
    pub priority: Option<u8>,
    /// Highest priority a source matched by this rule may claim (0..=7).
    #[serde(default)]
    pub max_priority: Option<u8>,
    /// How streams are formed.
    #[serde(default)]
    pub stream: StreamBy,
    /// Where to send.
    pub route: RouteConfig,
}

/// The whole file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    gateway: Option<GatewaySection>,
    #[serde(default)]
    control: Option<ControlSection>,
    policy: toml::Value,
    #[serde(default)]
    upstream: Vec<UpstreamConfig>,
    #[serde(default)]
    rule: Vec<RuleConfig>,
}

/// A validated rule: matchers, action, route as upstream indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Name.
    pub name: String,
    /// Local port matched.
    pub dst_port: Option<u16>,
    /// Source prefix matched.
    pub source: Option<IpNet>,
    /// Header presence matched.
    pub loadgen: Option<bool>,
    /// Priority given (or the header's, capped).
    pub priority: u8,
    /// Cap on a claimed priority.
    pub max_priority: u8,
    /// Whether the header's priority is used.
    pub trust_header: bool,
    /// Stream formation.
    pub stream: StreamBy,
    /// Route.
    pub route: Route,
}

/// A validated route, upstreams by index into [`GatewayConfig::upstreams`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// One upstream.
    To(usize),
    /// Hash-balanced.
    Balance(Vec<usize>),
    /// Upstream by priority (each priority's tier, resolved at load).
    PerClass([usize; 8]),
    /// Every one of these.
    Broadcast(Vec<usize>),
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `[gateway]`.
    pub gateway: GatewaySection,
    /// `[control]`.
    pub control: ControlSection,
    /// The policy document (validated into [`GatewayConfig::policy`]).
    pub policy_document: PolicyDocument,
    /// The policy document as TOML text, as the control plane is given it.
    pub policy_text: String,
    /// The validated policy.
    pub policy: Policy,
    /// Upstreams, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Rules, in file order.
    pub rules: Vec<Rule>,
}

impl GatewayConfig {
    /// The embedded default.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::from_toml(DEFAULT_TOML)
    }

    /// Reads and validates a file.
    pub fn load(path: &std::path::Path) -> Result<(Self, Vec<u8>), ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_CONFIG_BYTES as u64 {
            return Err(invalid(
                "file size",
                meta.len(),
                "at most 1 MiB (is this the config file?)",
            ));
        }
        // Read through a bounded reader too: a FIFO or device reports no length.
        let Some(bytes) = qos_control::files::read_limited(path, MAX_CONFIG_BYTES).map_err(io)?
        else {
            return Err(invalid(
                "file size",
                format!("over {MAX_CONFIG_BYTES} bytes"),
                "at most 1 MiB (is this the config file?)",
            ));
        };
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| ConfigError::Parse(format!("not UTF-8: {e}")))?;
        Ok((Self::from_toml(text)?, bytes))
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(invalid("file size", text.len(), "at most 1 MiB"));
        }
        let file: FileConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse(e.to_string().lines().collect::<Vec<_>>().join(" ")))?;
        let gateway = file.gateway.unwrap_or_else(|| {
            toml::from_str::<GatewaySection>("").unwrap_or_else(|_| unreachable_default())
        });
        validate_gateway(&gateway)?;
        let control = file.control.unwrap_or_default();
        if control.hlog_period_ms == 0 {
            return Err(invalid("control.hlog_period_ms", 0, "> 0"));
        }
        if control.metrics_db_period_ms == 0 {
            return Err(invalid("control.metrics_db_period_ms", 0, "> 0"));
        }
        if let Some(anchor) = &control.audit_anchor {
            anchor_head(anchor)?;
        }
        if !(1..=3_600_000).contains(&control.client_timeout_ms) {
            return Err(invalid(
                "control.client_timeout_ms",
                control.client_timeout_ms,
                "1..=3600000",
            ));
        }
        let policy_text = toml::to_string(&file.policy)
            .map_err(|e| ConfigError::Parse(format!("policy: {e}")))?;
        let policy_document = PolicyDocument::from_toml(&policy_text)?;
        let policy = policy_document.validate()?;
        if let Err(e) = qos_dataplane::runtime::check_burst(&policy, gateway.workers) {
            return Err(ConfigError::Parse(e.to_string()));
        }

        let mut names = BTreeMap::new();
        for (i, u) in file.upstream.iter().enumerate() {
            if u.name.is_empty() {
                return Err(invalid(format!("upstream[{i}].name"), "\"\"", "a name"));
            }
            if names.insert(u.name.clone(), i).is_some() {
                return Err(invalid(
                    format!("upstream[{i}].name"),
                    &u.name,
                    "a name not used by another upstream",
                ));
            }
            validate_upstream(i, u.addr, &gateway.listen)?;
        }
        if file.rule.is_empty() {
            return Err(invalid("rule", "[]", "at least one [[rule]]"));
        }
        let rules = file
            .rule
            .iter()
            .enumerate()
            .map(|(i, r)| validate_rule(i, r, &names, &policy))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            gateway,
            control,
            policy_document,
            policy_text,
            policy,
            upstreams: file.upstream,
            rules,
        })
    }
}

/// `GatewaySection` has a default for every key, so "" always parses; this keeps the
/// code total without an `unwrap`.
fn unreachable_default() -> GatewaySection {
    GatewaySection {
        listen: default_listen(),
        workers: default_workers(),
        pinning: PinningConfig::default(),
        max_datagram: default_max_datagram(),
        flow_table: default_flow_table(),
        flow_idle_ms: default_flow_idle_ms(),
        stream_accounts: default_stream_accounts(),
        batch: default_batch(),
        socket_buffer: default_socket_buffer(),
        ring_capacity: default_ring(),
        drain_ms: default_drain_ms(),
        stall_budget_ms: default_stall_ms(),
        idle: IdleConfig::default(),
    }
}

/// An upstream address datagrams can be sent to (a port, a host or multicast
/// address), and not one qosd listens on: each datagram would come back to it,
/// forever.
fn validate_upstream(i: usize, addr: SocketAddr, listen: &[SocketAddr]) -> Result<(), ConfigError> {
    let key = format!("upstream[{i}].addr");
    // An IPv4-mapped IPv6 address is sent as IPv4 (the egress socket is dual stack).
    let ip = addr.ip().to_canonical();
    if addr.port() == 0 {
        return Err(invalid(key, addr, "a port in 1..=65535"));
    }
    if ip.is_unspecified() {
        return Err(invalid(
            key,
            addr,
            "a host or multicast address (not 0.0.0.0 or ::)",
        ));
    }
    if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(invalid(
            key,
            addr,
            "a host or multicast address (qosd does not broadcast)",
        ));
    }
    // A wildcard listen address receives loopback of its own family (IPv6 listen
    // sockets are v6-only).
    let loops = |l: &SocketAddr| {
        let listen = l.ip().to_canonical();
        l.port() == addr.port()
            && (listen == ip
                || (listen.is_unspecified()
                    && ip.is_loopback()
                    && listen.is_ipv4() == ip.is_ipv4()))
    };
    if let Some(l) = listen.iter().find(|l| loops(l)) {
        return Err(invalid(
            key,
            addr,
            &format!(
                "an address qosd does not listen on (gateway.listen has {l}: every datagram \
                 would come back to qosd, forever)"
            ),
        ));
    }
    Ok(())
}

fn validate_gateway(g: &GatewaySection) -> Result<(), ConfigError> {
    if g.listen.is_empty() {
        return Err(invalid("gateway.listen", "[]", "at least one address"));
    }
    for (i, a) in g.listen.iter().enumerate() {
        if g.listen[..i].contains(a) {
            return Err(invalid(
                format!("gateway.listen[{i}]"),
                a,
                "an address not listed twice",
            ));
        }
    }
    if !(g.max_datagram..=1 << 30).contains(&g.socket_buffer) {
        return Err(invalid(
            "gateway.socket_buffer",
            g.socket_buffer,
            &format!(
                "{}..=1073741824 bytes (at least one datagram of gateway.max_datagram)",
                g.max_datagram
            ),
        ));
    }
    if !(1..=64).contains(&g.workers) {
        return Err(invalid("gateway.workers", g.workers, "1..=64"));
    }
    if !(1..=65_507).contains(&g.max_datagram) {
        return Err(invalid("gateway.max_datagram", g.max_datagram, "1..=65507"));
    }
    if !(1..=(1 << 24)).contains(&g.flow_table) {
        return Err(invalid("gateway.flow_table", g.flow_table, "1..=16777216"));
    }
    if g.drain_ms > 600_000 {
        return Err(invalid(
            "gateway.drain_ms",
            g.drain_ms,
            "0..=600000 (SIGTERM waits this long at most; a second signal cuts it short)",
        ));
    }
    if !(1..=(1 << 24)).contains(&g.stream_accounts) {
        return Err(invalid(
            "gateway.stream_accounts",
            g.stream_accounts,
            "1..=16777216",
        ));
    }
    if !(1..=10_000).contains(&g.stall_budget_ms) {
        return Err(invalid(
            "gateway.stall_budget_ms",
            g.stall_budget_ms,
            "1..=10000",
        ));
    }
    if !(1..=1024).contains(&g.batch) {
        return Err(invalid("gateway.batch", g.batch, "1..=1024"));
    }
    if !g.ring_capacity.is_power_of_two() || g.ring_capacity < 64 || g.ring_capacity > 1 << 20 {
        return Err(invalid(
            "gateway.ring_capacity",
            g.ring_capacity,
            "a power of two in 64..=1048576",
        ));
    }
    Ok(())
}

fn upstream_index(
    key: &str,
    name: &str,
    names: &BTreeMap<String, usize>,
) -> Result<usize, ConfigError> {
    names.get(name).copied().ok_or_else(|| {
        invalid(
            key,
            format!("\"{name}\""),
            &format!(
                "the name of an [[upstream]] ({})",
                names.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

fn validate_rule(
    i: usize,
    r: &RuleConfig,
    names: &BTreeMap<String, usize>,
    policy: &Policy,
) -> Result<Rule, ConfigError> {
    let key = |k: &str| format!("rule[{i}].{k}");
    let priority = r.priority.unwrap_or(2);
    if priority > 7 {
        return Err(invalid(key("priority"), priority, "0..=7"));
    }
    let max_priority = r.max_priority.unwrap_or(7);
    if max_priority > 7 {
        return Err(invalid(key("max_priority"), max_priority, "0..=7"));
    }
    if priority > max_priority {
        return Err(invalid(
            key("priority"),
            priority,
            &format!("at most max_priority ({max_priority})"),
        ));
    }
    let source = match &r.source {
        None => None,
        Some(s) => Some(
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    invalid(
                        key("source"),
                        format!("\"{s}\""),
                        "an IP address or prefix (10.0.0.7, 10.0.0.0/8, ::1)",
                    )
                })?,
        ),
    };
    let trust_header = r.loadgen == Some(true);
    let route = match &r.route {
        RouteConfig::To(n) => Route::To(upstream_index(&key("route.to"), n, names)?),
        RouteConfig::Balance(v) | RouteConfig::Broadcast(v) => {
            let kind = if matches!(r.route, RouteConfig::Balance(_)) {
                "balance"
            } else {
                "broadcast"
            };
            if v.is_empty() {
                return Err(invalid(
                    key(&format!("route.{kind}")),
                    "[]",
                    "at least one upstream",
                ));
            }
            let idx = v
                .iter()
                .enumerate()
                .map(|(j, n)| upstream_index(&key(&format!("route.{kind}[{j}]")), n, names))
                .collect::<Result<Vec<_>, _>>()?;
            if kind == "balance" {
                Route::Balance(idx)
            } else {
                Route::Broadcast(idx)
            }
        }
        RouteConfig::PerClass(map) => {
            let mut by_priority = [usize::MAX; 8];
            let tiers = policy.tiers();
            for (tier_name, up) in map {
                let Some(tier) = tiers.iter().find(|t| &t.name == tier_name) else {
                    return Err(invalid(
                        key("route.per_class"),
                        format!("\"{tier_name}\""),
                        &format!(
                            "a tier of the policy ({})",
                            tiers
                                .iter()
                                .map(|t| t.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                };
                let u = upstream_index(&key(&format!("route.per_class.{tier_name}")), up, names)?;
                for &p in &tier.priorities {
                    by_priority[usize::from(p)] = u;
                }
            }
            if let Some(tier) = tiers.iter().find(|t| {
                t.priorities
                    .iter()
                    .any(|&p| by_priority[usize::from(p)] == usize::MAX)
            }) {
                return Err(invalid(
                    key("route.per_class"),
                    format!("no entry for tier \"{}\"", tier.name),
                    "an upstream for every tier of the policy",
                ));
            }
            Route::PerClass(by_priority)
        }
    };
    Ok(Rule {
        name: r.name.clone(),
        dst_port: r.dst_port,
        source,
        loadgen: r.loadgen,
        priority,
        max_priority,
        trust_header,
        stream: r.stream,
        route,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_and_the_documented_example_are_valid() {
        let d = GatewayConfig::embedded().expect("embedded default");
        assert_eq!(
            d.gateway.listen,
            vec![SocketAddr::from(([127, 0, 0, 1], 7000))]
        );
        assert_eq!(
            d.upstreams[0].addr,
            SocketAddr::from(([127, 0, 0, 1], 7001))
        );
        assert_eq!(d.control.listen, SocketAddr::from(([127, 0, 0, 1], 9100)));
        assert!(!d.policy.spec().disconnect, "S8 off for remote senders");
        let doc = include_str!("../../docs/qosd.toml");
        let e = GatewayConfig::from_toml(doc).expect("docs/qosd.toml");
        assert_eq!(e.rules.len(), 4);
        assert_eq!(
            (d.gateway.idle, e.gateway.idle),
            (IdleConfig::Park, IdleConfig::Park)
        );
        let spin = GatewayConfig::from_toml(&DEFAULT_TOML.replacen(
            "workers = 2",
            "workers = 2\nidle = \"spin\"",
            1,
        ))
        .expect("idle = spin");
        assert_eq!(spin.gateway.idle, IdleConfig::Spin);
    }

    #[test]
    fn s9_each_bad_value_is_named() {
        let base = DEFAULT_TOML;
        for (from, to, key) in [
            ("workers = 2", "workers = 0", "gateway.workers"),
            ("workers = 2", "workers = 2\nbogus = 1", "bogus"),
            (
                "name = \"loadgen\"\nloadgen = true",
                "name = \"loadgen\"\nloadgen = true\nmax_priority = 9",
                "rule[0].max_priority",
            ),
            (
                "route = { to = \"main\" }",
                "route = { to = \"nowhere\" }",
                "rule[0].route.to",
            ),
            ("rate_mbps = 50", "rate_mbps = -5", "link"),
            (
                "listen = [\"127.0.0.1:7000\"]",
                "listen = []",
                "gateway.listen",
            ),
            (
                "burst_bytes = 64000",
                "burst_bytes = 10000",
                "policy.link.burst_bytes",
            ),
            (
                "workers = 2",
                "workers = 2\nstall_budget_ms = 0",
                "gateway.stall_budget_ms",
            ),
            (
                "workers = 2",
                "workers = 2\nstream_accounts = 0",
                "gateway.stream_accounts",
            ),
            (
                "workers = 2",
                "workers = 2\ndrain_ms = 600001",
                "gateway.drain_ms",
            ),
            ("workers = 2", "workers = 2\nidle = \"sleep\"", "idle"),
            (
                "listen = \"127.0.0.1:9100\"",
                "listen = \"127.0.0.1:9100\"\naudit_anchor = \"12:not-a-hash\"",
                "control.audit_anchor",
            ),
            (
                "listen = \"127.0.0.1:9100\"",
                "listen = \"127.0.0.1:9100\"\nclient_timeout_ms = 0",
                "control.client_timeout_ms",
            ),
        ] {
            let text = base.replacen(from, to, 1);
            assert_ne!(text, base, "{from}");
            let e = GatewayConfig::from_toml(&text).expect_err(key).to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let good = format!("3:{}", "ab".repeat(32));
        assert_eq!(anchor_head(&good).expect("a good anchor").next_seq, 3);
        let e = GatewayConfig::from_toml("[policy]\nversion = 1\n[[rule]]\nname = \"x\"\nsource = \"10.0.0.0/33\"\nroute = { to = \"a\" }\n")
            .expect_err("bad prefix");
        assert!(
            e.to_string().contains("rule[0].source") || e.to_string().contains("upstream"),
            "{e}"
        );
    }

    /// qosd red team: an upstream equal to a listen address was accepted, and one
    /// datagram came back to qosd 97,000 times a second for as long as it ran; port 0
    /// and the broadcast address passed `--check` and failed every send.
    #[test]
    fn s9_an_upstream_that_loops_or_cannot_be_sent_to_is_refused_naming_it() {
        let base = DEFAULT_TOML;
        let refused = |from: &str, to: &str, key: &str, says: &str| {
            let text = base.replacen(from, to, 1);
            assert_ne!(text, base, "{from}");
            let e = GatewayConfig::from_toml(&text).expect_err(to).to_string();
            assert!(e.contains(key) && e.contains(says), "{to}: {e}");
        };
        let upstream = "addr = \"127.0.0.1:7001\"";
        refused(
            upstream,
            "addr = \"127.0.0.1:7000\"",
            "upstream[0].addr",
            "does not listen on",
        );
        refused(
            upstream,
            "addr = \"127.0.0.1:0\"",
            "upstream[0].addr",
            "a port",
        );
        refused(
            upstream,
            "addr = \"0.0.0.0:7001\"",
            "upstream[0].addr",
            "host or multicast",
        );
        refused(
            upstream,
            "addr = \"[::]:7001\"",
            "upstream[0].addr",
            "host or multicast",
        );
        refused(
            upstream,
            "addr = \"255.255.255.255:7001\"",
            "upstream[0].addr",
            "broadcast",
        );
        // A wildcard listen address receives what is sent to loopback on its port.
        let wild = base.replacen(
            "listen = [\"127.0.0.1:7000\"]",
            "listen = [\"0.0.0.0:7001\"]",
            1,
        );
        let e = GatewayConfig::from_toml(&wild)
            .expect_err("wildcard loop")
            .to_string();
        assert!(
            e.contains("upstream[0].addr") && e.contains("0.0.0.0:7001"),
            "{e}"
        );
        refused(
            "listen = [\"127.0.0.1:7000\"]",
            "listen = [\"127.0.0.1:7000\", \"127.0.0.1:7000\"]",
            "gateway.listen[1]",
            "twice",
        );
        refused(
            "workers = 2",
            "workers = 2\nsocket_buffer = 0",
            "gateway.socket_buffer",
            "max_datagram",
        );
        // IPv4-mapped IPv6 addresses are sent as IPv4: the same checks apply.
        refused(
            upstream,
            "addr = \"[::ffff:127.0.0.1]:7000\"",
            "upstream[0].addr",
            "does not listen on",
        );
        refused(
            upstream,
            "addr = \"[::ffff:0.0.0.0]:7001\"",
            "upstream[0].addr",
            "host or multicast",
        );
        refused(
            upstream,
            "addr = \"[::ffff:255.255.255.255]:7001\"",
            "upstream[0].addr",
            "broadcast",
        );
        // What stays allowed: another port of the same host, a multicast group, IPv6,
        // and loopback of the other family on a wildcard listen's port (IPv6 listen
        // sockets are v6-only).
        let wild6 = base.replacen(
            "listen = [\"127.0.0.1:7000\"]",
            "listen = [\"[::]:7001\"]",
            1,
        );
        GatewayConfig::from_toml(&wild6).unwrap_or_else(|e| panic!("[::] and 127.0.0.1: {e}"));
        for ok in ["127.0.0.1:7002", "239.1.2.3:7001", "[::1]:7000"] {
            let text = base.replacen(upstream, &format!("addr = \"{ok}\""), 1);
            GatewayConfig::from_toml(&text).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }
}
