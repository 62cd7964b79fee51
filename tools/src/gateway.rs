//! `qosd`, the UDP QoS gateway, as a library: receive threads (one `SO_REUSEPORT`
//! socket per worker and listen address) classify datagrams into streams and hand
//! them to the dataplane; each worker's egress writes what its scheduler releases to
//! the upstreams; the control plane serves the API, metrics, logs, audit, metrics.db
//! and `.hlog` dumps.
//!
//! Accounting: every datagram read is forwarded, or dropped with a counted reason by
//! the gateway ([`GatewayDrop`]) or by the dataplane (its discard reasons), per stream
//! ([`StreamAccount`]) and in total.

pub mod classify;
pub mod counters;
pub mod egress;
pub mod rx;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use qos_control::logs::ControlEvent;
use qos_control::metrics::ExtraMetrics;
use qos_control::plane::{ControlConfig, ControlPlane};
use qos_control::policy::sha256_hex;
use qos_dataplane::runtime::{Dataplane, DrainCut, IdleStrategy, Pinning, RuntimeConfig, StopMode};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{ConfigError, GatewayConfig, IdleConfig, PinningConfig};
use classify::Classifier;
pub use counters::{
    DEFAULT_STREAM_ACCOUNTS, GatewayCounters, GatewayDrop, StreamAccount, StreamCounters,
};
use egress::UdpEgress;
use rx::{Rx, RxSettings};

/// What travels through the dataplane: the datagram, where it goes, and its stream's
/// counters (both by index: the packet is small, and it is moved several times
/// between the receive thread and the egress).
///
/// The datagram is a range of the receive buffer it arrived in, shared (refcounted)
/// by the datagrams of that buffer: the receive thread copies each buffer once
/// instead of each datagram, and the egress sends a run of adjacent datagrams of one
/// buffer without copying them again. A queued datagram keeps its whole receive
/// buffer (at most 64 KiB, the datagrams one GRO receive coalesced) alive.
#[derive(Debug)]
pub struct Packet {
    buf: Arc<Vec<u8>>,
    start: u32,
    end: u32,
    dest: u32,
    stream: u32,
}

impl Packet {
    /// The datagram `buf[range]` to destination `dest`, of the stream `stream`
    /// (indices in the gateway's counters: [`GatewayCounters::dest_index`],
    /// [`StreamCounters::index`]). A range outside `buf` is clamped to it.
    pub fn new(buf: Arc<Vec<u8>>, range: std::ops::Range<usize>, dest: u32, stream: u32) -> Self {
        let end = range.end.min(buf.len());
        let start = range.start.min(end);
        Self {
            // Receive buffers are at most 64 KiB: the conversions cannot saturate.
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end).unwrap_or(u32::MAX),
            buf,
            dest,
            stream,
        }
    }

    /// The datagram as received.
    pub fn data(&self) -> &[u8] {
        self.buf
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    /// Whether it is empty (never, for a packet the gateway forwards).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// The index of its destination ([`GatewayCounters::extend_dests`]).
    pub fn dest(&self) -> u32 {
        self.dest
    }

    /// The index of its stream's counters ([`GatewayCounters::extend_streams`]).
    pub fn stream(&self) -> u32 {
        self.stream
    }

    /// Whether it directly follows `prev` in the same receive buffer.
    fn follows(&self, prev: &Packet) -> bool {
        self.start == prev.end && Arc::ptr_eq(&self.buf, &prev.buf)
    }

    /// The bytes from this packet's start to `last`'s end, when `last` is in the same
    /// buffer at or after it.
    fn span_to(&self, last: &Packet) -> Option<&[u8]> {
        if !Arc::ptr_eq(&self.buf, &last.buf) {
            return None;
        }
        self.buf.get(self.start as usize..last.end as usize)
    }
}

/// Why the gateway could not start, reload or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A socket could not be set up.
    #[error("socket {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration changes something only a restart can change.
    #[error("config: {key} changed ({from} -> {to}); it takes effect only after a restart")]
    NeedsRestart {
        /// The key.
        key: &'static str,
        /// Running value.
        from: String,
        /// File's value.
        to: String,
    },
    /// The dataplane did not start.
    #[error("dataplane: {0}")]
    Dataplane(#[from] qos_dataplane::runtime::BuildError),
    /// The control plane failed.
    #[error("control plane: {0}")]
    Control(#[from] qos_control::plane::ControlError),
    /// The policy in the file was refused.
    #[error("config: policy: {0}")]
    Policy(#[from] qos_control::policy::PolicyRejection),
    /// A key file could not be read.
    #[error("config: control.verifying_key: {0}")]
    Key(#[from] qos_control::policy::signing::KeyError),
    /// A thread could not start.
    #[error("thread: {0}")]
    Thread(std::io::Error),
}

/// A running gateway.
pub struct Gateway {
    plane: Option<ControlPlane<Packet>>,
    stop: Arc<AtomicBool>,
    rx: Vec<JoinHandle<()>>,
    classifier: Arc<ArcSwap<Classifier>>,
    counters: Arc<GatewayCounters>,
    running: Mutex<GatewayConfig>,
    listen: Vec<SocketAddr>,
    api: SocketAddr,
    /// The egress sockets were bound for IPv6 (dual stack) at start: only then can a
    /// reload add an IPv6 upstream.
    egress_v6: bool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.listen)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// The gateway's final accounting (printed by `qosd` on SIGTERM).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct DrainReport {
    /// Datagrams read from the sockets.
    pub received: u64,
    /// Datagrams written to an upstream.
    pub forwarded: u64,
    /// Drops by reason, gateway and dataplane together.
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// `received = forwarded + dropped` exactly.
    pub conserved: bool,
    /// The dataplane's own S11 check (every packet taken sent or discarded).
    pub dataplane_conserved: bool,
    /// A second signal cut the drain short: what was still queued was dropped
    /// (`closed`, or `shutdown` if already scheduled).
    #[serde(default)]
    pub drain_cut: bool,
    /// Per stream.
    pub streams: Vec<StreamAccount>,
}

/// Whether any upstream is IPv6 (the egress sockets are then bound dual stack).
fn upstreams_v6(config: &GatewayConfig) -> bool {
    config.upstreams.iter().any(|u| u.addr.is_ipv6())
}

fn egress_socket(upstreams: &[SocketAddr], buffer: usize) -> Result<UdpSocket, GatewayError> {
    let v6 = upstreams.iter().any(SocketAddr::is_ipv6);
    let addr: SocketAddr = if v6 {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    let err = |source| GatewayError::Socket { addr, source };
    let s =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if v6 {
        s.set_only_v6(false).map_err(err)?;
    }
    let _ = s.set_send_buffer_size(buffer);
    s.bind(&addr.into()).map_err(err)?;
    Ok(s.into())
}

fn control_config(
    config: &GatewayConfig,
    counters: &Arc<GatewayCounters>,
) -> Result<ControlConfig, GatewayError> {
    let c = &config.control;
    let file = |name: &str| c.state_dir.as_ref().map(|d| d.join(name));
    let verifying_key = match &c.verifying_key {
        Some(p) => Some(qos_control::policy::signing::read_verifying_key(p)?),
        None => None,
    };
    let counters = counters.clone();
    Ok(ControlConfig {
        listen: c.listen,
        allow_remote: c.allow_remote,
        bearer_token: c.bearer_token.clone(),
        series_limit: c.series_limit,
        metrics_db: if c.metrics_db {
            file("metrics.db")
        } else {
            None
        },
        metrics_db_period: Duration::from_millis(c.metrics_db_period_ms),
        hlog: file("sojourn.hlog"),
        hlog_period: Duration::from_millis(c.hlog_period_ms),
        audit_log: file("audit.jsonl"),
        audit_anchor: c
            .audit_anchor
            .as_deref()
            .map(crate::config::anchor_head)
            .transpose()?,
        client_timeout: Duration::from_millis(c.client_timeout_ms),
        verifying_key,
        extra_metrics: Some(ExtraMetrics(Arc::new(move || counters.families()))),
        ..ControlConfig::default()
    })
}

impl Gateway {
    /// Binds the sockets, starts the dataplane, the control plane and the receive
    /// threads.
    pub fn start(config: GatewayConfig) -> Result<Self, GatewayError> {
        let g = &config.gateway;
        if let Some(dir) = &config.control.state_dir {
            std::fs::create_dir_all(dir).map_err(|source| ConfigError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let mut sockets = Vec::new();
        let mut listen = Vec::new();
        for &addr in &g.listen {
            let socks = crate::udp::bind_reuseport(addr, g.workers, g.socket_buffer)
                .map_err(|source| GatewayError::Socket { addr, source })?;
            if let Some(first) = socks.first() {
                listen.push(
                    first
                        .local_addr()
                        .map_err(|source| GatewayError::Socket { addr, source })?,
                );
            }
            sockets.extend(socks);
        }
        let upstreams: Vec<SocketAddr> = config.upstreams.iter().map(|u| u.addr).collect();
        let counters = Arc::new(GatewayCounters::new(g.stream_accounts));
        let mut egresses = Vec::with_capacity(g.workers);
        for _ in 0..g.workers {
            let sock = egress_socket(&upstreams, g.socket_buffer)?;
            let addr = sock
                .local_addr()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            egresses.push(Some(
                UdpEgress::new(sock, counters.clone())
                    .map_err(|source| GatewayError::Socket { addr, source })?,
            ));
        }
        let pinning = match g.pinning {
            PinningConfig::Strict => Pinning::Strict,
            PinningConfig::Wrap => Pinning::Wrap,
            PinningConfig::Off => Pinning::Off,
        };
        let (dp, producers) = Dataplane::<Packet>::builder()
            .config(RuntimeConfig {
                stall_budget: Duration::from_millis(g.stall_budget_ms),
                idle: match g.idle {
                    IdleConfig::Park => IdleStrategy::default(),
                    IdleConfig::Spin => IdleStrategy::Spin,
                },
                ..RuntimeConfig::default()
            })
            .workers(g.workers)
            .producers(sockets.len())
            .pinning(pinning)
            .ring_capacity(g.ring_capacity)
            .drain_timeout(Duration::from_millis(g.drain_ms))
            .policy(Arc::new(config.policy.clone()))
            .build(|w| {
                egresses[w]
                    .take()
                    .expect("the builder asks for each worker's egress once")
            })?;
        let plane = ControlPlane::start(dp, control_config(&config, &counters)?)?;
        let api = plane.addr();
        let classifier = Arc::new(ArcSwap::from_pointee(Classifier::new(&config, 1)));
        let stop = Arc::new(AtomicBool::new(false));
        let settings = RxSettings {
            max_datagram: g.max_datagram,
            flow_table: g.flow_table,
            flow_idle_ms: g.flow_idle_ms,
        };
        let mut rx = Vec::new();
        let spawned = (|| {
            for (i, (sock, producer)) in sockets.into_iter().zip(producers).enumerate() {
                let addr = sock
                    .local_addr()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                let r = Rx::new(
                    sock,
                    producer,
                    classifier.clone(),
                    counters.clone(),
                    settings.clone(),
                )
                .map_err(|source| GatewayError::Socket { addr, source })?;
                let stop = stop.clone();
                let t = std::thread::Builder::new()
                    .name(format!("qosd-rx-{i}"))
                    .spawn(move || r.run(&stop))
                    .map_err(GatewayError::Thread)?;
                rx.push(t);
            }
            Ok::<(), GatewayError>(())
        })();
        if let Err(e) = spawned {
            // The receive threads already running stop with the gateway that failed
            // to start (the dataplane and control plane stop when dropped).
            stop.store(true, Relaxed);
            for t in rx.drain(..) {
                let _ = t.join();
            }
            return Err(e);
        }
        tracing::info!(
            target: qos_control::logs::EVENT_TARGET,
            event = "qosd.started",
            listen = ?listen,
            api = %api,
            workers = g.workers,
            policy_version = config.policy.version()
        );
        Ok(Self {
            plane: Some(plane),
            stop,
            rx,
            classifier,
            counters,
            egress_v6: upstreams_v6(&config),
            running: Mutex::new(config),
            listen,
            api,
        })
    }

    /// The bound listen addresses (one per configured address).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// The control API's address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }

    /// The gateway's counters.
    pub fn counters(&self) -> &Arc<GatewayCounters> {
        &self.counters
    }

    /// The control plane.
    pub fn plane(&self) -> Option<&ControlPlane<Packet>> {
        self.plane.as_ref()
    }

    /// Re-reads the configuration file (SIGHUP, `POST /reload`): policy, rules and upstreams change;
    /// a file that fails (or would change what needs a restart) changes nothing. Both
    /// outcomes are logged and audited.
    pub fn reload(&self, path: &Path) -> Result<u64, GatewayError> {
        self.reload_from(path, "sighup")
    }

    /// [`Gateway::reload`], naming what asked for it (`"sighup"`, `"http"` for the
    /// control API's `POST /reload`): the source a changed policy is applied and
    /// audited under.
    pub fn reload_from(&self, path: &Path, source: &str) -> Result<u64, GatewayError> {
        let result = GatewayConfig::load(path)
            .map_err(GatewayError::from)
            .and_then(|(config, bytes)| self.apply(config, source).map(|v| (v, bytes)));
        let event = match &result {
            Ok((version, bytes)) => ControlEvent::ConfigReloaded {
                trigger: source.to_owned(),
                path: path.display().to_string(),
                sha256: sha256_hex(bytes),
                policy_version: *version,
            },
            Err(e) => ControlEvent::ConfigRejected {
                trigger: source.to_owned(),
                path: path.display().to_string(),
                reason: e.to_string(),
            },
        };
        let i = usize::from(result.is_err());
        self.counters.reloads[i].fetch_add(1, Relaxed);
        if let Some(p) = &self.plane {
            p.record_event(&event);
        }
        result.map(|(v, _)| v)
    }

    fn apply(&self, config: GatewayConfig, source: &str) -> Result<u64, GatewayError> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Every `[gateway]` and `[control]` key is read once, at start: a changed one
        // refuses the whole file rather than being reported applied and ignored.
        let before = running
            .gateway
            .keys()
            .into_iter()
            .chain(running.control.keys());
        let after = config
            .gateway
            .keys()
            .into_iter()
            .chain(config.control.keys());
        for ((key, from), (_, to)) in before.zip(after) {
            if from != to {
                // A secret's values never reach the error (logs, API, audit).
                let (from, to) = if key == "control.bearer_token" {
                    ("(not shown)".to_string(), "(not shown)".to_string())
                } else {
                    (from, to)
                };
                return Err(GatewayError::NeedsRestart { key, from, to });
            }
        }
        if upstreams_v6(&config) && !self.egress_v6 {
            return Err(GatewayError::NeedsRestart {
                key: "upstream.addr",
                from: "IPv4 upstreams only".into(),
                to: "an IPv6 upstream".into(),
            });
        }
        let Some(plane) = &self.plane else {
            return Err(GatewayError::Thread(std::io::Error::other(
                "gateway stopped",
            )));
        };
        // The policy only goes through the gate when the file's changed: a policy
        // posted to the API since is not reverted by reloading an unchanged file.
        let version = if config.policy_document == running.policy_document {
            plane.status().policy_version
        } else {
            plane
                .apply_policy(config.policy_text.as_bytes(), None, source)?
                .version
        };
        let generation = self.classifier.load().generation + 1;
        self.classifier
            .store(Arc::new(Classifier::new(&config, generation)));
        *running = config;
        Ok(version)
    }

    /// Stops receiving, drains the queues at the policy's pace (up to
    /// `gateway.drain_ms`), stops the workers and the control plane, and returns the
    /// accounting.
    pub fn stop(mut self) -> Result<DrainReport, GatewayError> {
        self.stop.store(true, Relaxed);
        for t in self.rx.drain(..) {
            let _ = t.join();
        }
        let plane = self
            .plane
            .take()
            .ok_or_else(|| GatewayError::Thread(std::io::Error::other("gateway stopped")))?;
        let (report, _integrity) = plane.shutdown(StopMode::Drain)?;
        let mut account = self.account(report.is_conserved());
        account.drain_cut = report.drain_cut;
        Ok(account)
    }

    /// How long [`Gateway::stop`] drains at most, ms (`gateway.drain_ms`, read once
    /// at start: a reload cannot change it).
    pub fn drain_ms(&self) -> u64 {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .gateway
            .drain_ms
    }

    /// A handle that cuts [`Gateway::stop`]'s drain short from another thread (what
    /// `qosd` does on a second SIGTERM or SIGINT): the rest is dropped, counted.
    pub fn drain_cut(&self) -> Option<DrainCut> {
        self.plane.as_ref()?.with_dataplane(|d| d.drain_cut())
    }

    /// The accounting now (in-flight packets make it inexact until the gateway stops).
    pub fn account(&self, dataplane_conserved: bool) -> DrainReport {
        let streams = self.counters.streams();
        let mut dropped = std::collections::BTreeMap::new();
        for (r, v) in self.counters.drops_by_reason() {
            if v > 0 {
                dropped.insert(r.as_str().to_string(), v);
            }
        }
        for s in &streams {
            for (r, v) in &s.dropped {
                if GatewayDrop::ALL.iter().all(|g| g.as_str() != r) {
                    *dropped.entry(r.clone()).or_insert(0) += v;
                }
            }
        }
        let received = self.counters.received.load(Relaxed);
        let forwarded = streams.iter().map(|s| s.forwarded).sum();
        let total: u64 = dropped.values().sum();
        DrainReport {
            received,
            forwarded,
            conserved: received == forwarded + total,
            dropped,
            dataplane_conserved,
            drain_cut: false,
            streams,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.rx.drain(..) {
            let _ = t.join();
        }
        if let Some(p) = self.plane.take() {
            let _ = p.shutdown(StopMode::Discard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_is_a_range_of_its_buffer_and_knows_its_neighbour() {
        let buf = Arc::new((0u8..48).collect::<Vec<u8>>());
        let a = Packet::new(buf.clone(), 0..16, 0, 0);
        let b = Packet::new(buf.clone(), 16..32, 0, 0);
        let c = Packet::new(buf.clone(), 40..48, 0, 0);
        assert_eq!(a.data(), &buf[0..16]);
        assert_eq!(b.len(), 16);
        assert!(b.follows(&a));
        assert!(!c.follows(&b));
        assert_eq!(a.span_to(&b), Some(&buf[0..32]));
        let other = Packet::new(Arc::new(buf.to_vec()), 16..32, 0, 0);
        assert!(!other.follows(&a));
        assert_eq!(a.span_to(&other), None);
        // A range past the end is clamped, never a panic.
        let d = Packet::new(buf.clone(), 40..100, 0, 0);
        assert_eq!(d.data(), &buf[40..48]);
        let e = Packet::new(buf, 60..100, 0, 0);
        assert!(e.is_empty());
        assert_eq!(std::mem::size_of::<Packet>(), 24);
    }
}
