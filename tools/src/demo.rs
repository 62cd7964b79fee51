//! `qosd demo`: qosd on its embedded default (or `--config`) plus a load-generator
//! scenario on loopback, about 15 s. Every tier is offered more than its share of the
//! link; from 5 s to 10 s the High tier goes idle (Medium and Low share its part,
//! 80:20); then High returns. Every second it prints the tiers' shares of what reached
//! the upstream next to the configured ones, and the P7 latency; at the end, the
//! load generator's table, qosd's accounting, and the `.hlog` files and SVG plot it
//! wrote.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Args;

use crate::config::GatewayConfig;
use crate::gateway::Gateway;
use crate::loadgen::report::Report;
use crate::loadgen::scenario::Scenario;
use crate::loadgen::sender::Sender;
use crate::loadgen::sink::{Sink, SinkConfig, SinkSnapshot};

/// The scenario: 15 s; High idle from 5 s to 10 s. Rates for the default 50 Mbit/s
/// link: High is offered 25 (share 12.5), Medium 50 (30; 40 while High is idle), Low
/// 20 (7.5; 10).
pub const SCENARIO: &str = r#"
duration_ms = 15000
seed = 7
pacing = "sleep"

# High tier: a light P7 stream (the latency probe) and a greedy P6 one; idle 5-10 s.
[[streams]]
id = 1
priority = 7
size = 200
rate = "1mbps"
active = [[0, 5000], [10000, 15000]]

[[streams]]
id = 2
priority = 6
size = 1200
rate = "24mbps"
active = [[0, 5000], [10000, 15000]]

# Medium tier: two greedy streams at different priorities.
[[streams]]
id = 3
priority = 4
size = 1200
rate = "30mbps"

[[streams]]
id = 4
priority = 2
size = 1200
rate = "20mbps"

# Low tier: one greedy stream.
[[streams]]
id = 5
priority = 1
size = 1200
rate = "20mbps"
"#;

/// `qosd demo` options.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the demo writes its files (default: a new directory under the system's
    /// temp dir).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Scale the scenario's duration (0.2..=4; 1 = 15 s).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The gateway did not start (a port in use: another qosd?).
    #[error(
        "qosd: {0} (is another qosd, or something else, using its ports? `--config` can move them)"
    )]
    Gateway(#[from] crate::gateway::GatewayError),
    /// The config is not valid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The load generator failed.
    #[error("loadgen: {0}")]
    Loadgen(#[from] crate::loadgen::LoadgenError),
    /// The scenario is not valid.
    #[error("scenario: {0}")]
    Scenario(#[from] crate::loadgen::scenario::ScenarioError),
    /// Writing the output.
    #[error("{0}")]
    Output(String),
}

/// Tier of each priority, as the policy says, with the tiers' names and shares.
struct Tiers {
    names: Vec<String>,
    shares: Vec<f64>,
    policy: qos_dataplane::sched::Policy,
}

impl Tiers {
    fn of(config: &GatewayConfig) -> Tiers {
        let tiers = config.policy.tiers();
        Tiers {
            names: tiers.iter().map(|t| t.name.clone()).collect(),
            shares: tiers.iter().map(|t| f64::from(t.share_percent)).collect(),
            policy: config.policy.clone(),
        }
    }

    /// Configured shares with the tiers in `idle` lending theirs to the others in
    /// proportion to their shares.
    fn expected(&self, idle: &[bool]) -> Vec<f64> {
        let busy: f64 = self
            .shares
            .iter()
            .zip(idle)
            .filter(|(_, i)| !**i)
            .map(|(s, _)| s)
            .sum();
        self.shares
            .iter()
            .zip(idle)
            .map(|(s, i)| {
                if *i || busy == 0.0 {
                    0.0
                } else {
                    s * 100.0 / busy
                }
            })
            .collect()
    }

    /// Bytes received per tier in a snapshot.
    fn bytes(&self, snap: &SinkSnapshot) -> Vec<u64> {
        let mut b = vec![0; self.names.len()];
        for p in &snap.priorities {
            b[self.policy.tier_of(p.priority)] += p.bytes;
        }
        b
    }
}

/// Runs the demo.
pub fn run(args: &DemoArgs, config_path: Option<&Path>) -> Result<(), DemoError> {
    let mut config = match config_path {
        Some(p) => GatewayConfig::load(p)?.0,
        None => GatewayConfig::embedded()?,
    };
    let scale = args.time_scale.clamp(0.2, 4.0);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("qosd-demo-{}", std::process::id())));
    std::fs::create_dir_all(&out)
        .map_err(|e| DemoError::Output(format!("{}: {e}", out.display())))?;
    let out = out.canonicalize().unwrap_or(out);
    config.control.state_dir = Some(out.join("qosd"));
    let upstream: SocketAddr =
        config.upstreams.first().map(|u| u.addr).ok_or_else(|| {
            DemoError::Output("the config has no [[upstream]] to receive on".into())
        })?;
    let tiers = Tiers::of(&config);
    let link_mbps = config
        .policy
        .spec()
        .link
        .map_or(0.0, |l| l.rate_bps as f64 / 1e6);

    let mut scenario = Scenario::from_toml("demo scenario", SCENARIO)?;
    scenario.duration_ms = (scenario.duration_ms as f64 * scale) as u64;
    for s in &mut scenario.streams {
        if let Some(windows) = s.active.as_mut() {
            for w in windows.iter_mut() {
                w[0] = (w[0] as f64 * scale) as u64;
                w[1] = (w[1] as f64 * scale) as u64;
            }
        }
    }
    let plan = scenario.validate()?;
    let high_windows: Vec<[u64; 2]> = scenario
        .streams
        .iter()
        .find(|s| s.priority >= 6)
        .and_then(|s| s.active.clone())
        .unwrap_or_default();

    // The upstream: the load generator's sink, where qosd forwards to.
    let latency_hlog = out.join("latency.hlog");
    let mut sink_config = SinkConfig::new(upstream, plan.duration + Duration::from_secs(3));
    sink_config.hlog = Some(latency_hlog.clone());
    let sink = Sink::bind(sink_config)?;
    let gateway = Gateway::start(config.clone())?;
    let target = gateway.listen_addrs()[0];
    println!(
        "qosd demo: qosd on {target} -> sink on {upstream}, link {link_mbps} Mbit/s, control API http://{}",
        gateway.api_addr()
    );
    println!(
        "tiers: {}",
        tiers
            .names
            .iter()
            .zip(&tiers.shares)
            .map(|(n, s)| format!("{n} {s}%"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "scenario: {:.0} s, every tier offered more than its share; High idle from {:.1} s to {:.1} s\n",
        plan.duration.as_secs_f64(),
        high_windows.first().map_or(0.0, |w| w[1] as f64 / 1e3),
        high_windows.get(1).map_or(0.0, |w| w[0] as f64 / 1e3),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sink = sink.spawn(stop.clone())?;
    let sender = Sender::new(plan.clone(), target)?.spawn(stop.clone())?;

    let mut header = format!("{:>5}  {:<10}", "t", "phase");
    for n in &tiers.names {
        header.push_str(&format!("  {:>16}", format!("{n} % (want)")));
    }
    header.push_str(&format!("  {:>10}  {:>10}", "Mbit/s", "P7 p99 ms"));
    println!("{header}");

    let step = Duration::from_secs(1);
    let mut prev = tiers.bytes(&sink.snapshot());
    let mut phase_sums: Vec<(String, Vec<u64>)> = Vec::new();
    let mut t = 0u64;
    while !sender.is_finished() {
        std::thread::sleep(step);
        t += 1;
        let snap = sink.snapshot();
        let now = tiers.bytes(&snap);
        let delta: Vec<u64> = now.iter().zip(&prev).map(|(a, b)| a - b).collect();
        prev = now;
        let total: u64 = delta.iter().sum();
        // The phase of this whole second (a second straddling a change is marked).
        let (start_ms, end_ms) = ((t - 1) * 1000, t * 1000);
        let active = |ms: u64| high_windows.iter().any(|w| ms >= w[0] && ms < w[1]);
        let (high_start, high_end) = (active(start_ms), active(end_ms - 1));
        let phase = match (high_start, high_end) {
            (true, true) => "all busy",
            (false, false) => "High idle",
            _ => "change",
        };
        let idle: Vec<bool> = (0..tiers.names.len())
            .map(|i| i == 0 && phase == "High idle")
            .collect();
        let want = tiers.expected(&idle);
        let mut line = format!("{:>4}s  {:<10}", t, phase);
        for (d, w) in delta.iter().zip(&want) {
            let share = if total == 0 {
                0.0
            } else {
                *d as f64 * 100.0 / total as f64
            };
            line.push_str(&format!("  {:>16}", format!("{share:5.1} ({w:.0})")));
        }
        let p7 = snap
            .priorities
            .iter()
            .find(|p| p.priority == 7)
            .and_then(|p| p.last_interval.as_ref())
            .map_or_else(|| "-".to_string(), |l| format!("{:.2}", l.p99_ms));
        line.push_str(&format!("  {:>10.1}  {:>10}", total as f64 * 8.0 / 1e6, p7));
        println!("{line}");
        if phase != "change" && t > 1 {
            match phase_sums.iter_mut().find(|(p, _)| p == phase) {
                Some((_, sum)) => sum.iter_mut().zip(&delta).for_each(|(s, d)| *s += d),
                None => phase_sums.push((phase.to_string(), delta.clone())),
            }
        }
    }
    let sent = sender.join()?;
    let report = gateway.stop()?;
    std::thread::sleep(Duration::from_millis(300));
    let received = sink.finish()?;
    if let Some(e) = &received.hlog_error {
        // The latency plot would draw a log that stopped part way.
        return Err(crate::loadgen::LoadgenError::HlogIncomplete(e.clone()).into());
    }
    let table = Report::new(&received, Some(&sent));

    println!("\nshares by phase (whole seconds, first second left out):");
    for (phase, sum) in &phase_sums {
        let total: u64 = sum.iter().sum();
        let idle: Vec<bool> = (0..tiers.names.len())
            .map(|i| i == 0 && phase == "High idle")
            .collect();
        let want = tiers.expected(&idle);
        let parts: Vec<String> = tiers
            .names
            .iter()
            .zip(sum)
            .zip(&want)
            .map(|((n, b), w)| {
                let got = if total == 0 {
                    0.0
                } else {
                    *b as f64 * 100.0 / total as f64
                };
                format!("{n} {got:.1}% (configured {w:.0}%)")
            })
            .collect();
        println!("  {phase:<10} {}", parts.join(", "));
    }
    println!("\nper stream, at the upstream:\n{}", table.table());
    let dropped: u64 = report.dropped.values().sum();
    println!(
        "qosd: {} datagrams received, {} forwarded, {} dropped {:?}; every datagram accounted for: {}",
        report.received,
        report.forwarded,
        dropped,
        report.dropped,
        report.conserved && report.dataplane_conserved
    );

    let svg = out.join("latency.svg");
    let plotted = crate::ctl::plot::plot_hlog(&latency_hlog, &[], &svg)
        .map_err(|e| DemoError::Output(e.to_string()))?;
    let state = out.join("qosd");
    println!("\nfiles:");
    println!(
        "  {}  one-way latency per priority, HdrHistogram interval log",
        latency_hlog.display()
    );
    println!(
        "  {}  latency percentile curves, one per priority ({})",
        svg.display(),
        plotted
            .curves
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  {}  qosd's queueing delay per priority (.hlog)",
        state.join("sojourn.hlog").display()
    );
    println!(
        "  {}  qosd's audit log",
        state.join("audit.jsonl").display()
    );
    println!(
        "  {}  qosd's metrics (SQLite)",
        state.join("metrics.db").display()
    );
    println!(
        "read them with: cargo run --release -p qos-tools --bin qos-ctl -- hdr print {}",
        latency_hlog.display()
    );
    Ok(())
}
