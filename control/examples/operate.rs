//! The control plane around a running dataplane, as an operator sees it: a few
//! seconds of traffic with one overloaded stream, a policy change, then the
//! `/metrics` exposition, the audit log and the integrity report are printed, and the
//! `.hlog` and `metrics.db` paths. Everything stays on loopback and in a temp dir.
//!
//! Run: `cargo run --release -p qos-control --example operate`.
#![allow(clippy::disallowed_methods)] // an example: it paces its traffic by the wall clock

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qos_control::plane::{ControlConfig, ControlPlane};
use qos_dataplane::runtime::{Dataplane, Egress, EnqueueError, Outbox, Pinning, StopMode};
use qos_dataplane::sched::{LinkRate, PolicySpec, StreamConfig};

/// Sends everything the scheduler releases (the link rate paces it).
struct Wire;
impl Egress<u64> for Wire {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        while out.pop().is_some() {}
    }
}

fn get(addr: SocketAddr, path: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("qos-operate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    tracing_subscriber_init();
    let policy = PolicySpec {
        link: Some(LinkRate {
            rate_bps: 20_000_000,
            burst_bytes: 64_000,
        }),
        max_queue_depth: 2_000,
        disconnect: false,
        ..PolicySpec::default()
    }
    .build()?;
    let (dp, mut producers) = Dataplane::<u64>::builder()
        .workers(2)
        .pinning(Pinning::Off)
        .policy(Arc::new(policy))
        .build(|_| Wire)?;
    let plane = ControlPlane::start(
        dp,
        ControlConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            audit_log: Some(dir.join("audit.jsonl")),
            hlog: Some(dir.join("sojourn.hlog")),
            hlog_period: Duration::from_secs(1),
            metrics_db: Some(dir.join("metrics.db")),
            metrics_db_period: Duration::from_secs(1),
            series_limit: 4,
            ..ControlConfig::default()
        },
    )?;
    let mut tx = producers.pop().ok_or("no producer")?;
    // Six streams; stream 106 (priority 3) offers far more than the 20 Mbit/s link.
    let streams: Vec<_> = (0..6u64)
        .map(|i| {
            tx.open(
                100 + i,
                StreamConfig::with_priority([7, 6, 4, 2, 1, 0][i as usize]),
            )
        })
        .collect::<Result<_, _>>()?;
    let greedy = tx.open(106, StreamConfig::with_priority(3))?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        if n.is_multiple_of(5) {
            // 1,000 bytes every 5 ms: 1.6 Mbit/s each, inside every tier's share.
            for &h in &streams {
                let _ = tx.enqueue(h, n, 1_000);
            }
        }
        for _ in 0..6 {
            if let Err(EnqueueError::Full(_)) = tx.enqueue(greedy, n, 1_000) {
                break;
            }
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(1));
        if n == 1_500 {
            let doc = b"version = 2\npreset = \"default\"\nmax_queue_depth = 2000\ndisconnect = false\n[link]\nrate_mbps = 20\nburst_bytes = 64000\n";
            let applied = plane.apply_policy(doc, None, "example")?;
            println!("policy applied: {applied:?}");
            let bad = b"version = 3\n[[tiers]]\nname = \"All\"\npriorities = [0, 1, 2, 3, 4, 5, 6, 7]\nshare_percent = 90\n";
            if let Err(e) = plane.apply_policy(bad, None, "example") {
                println!("policy rejected: {e}");
            }
        }
    }
    plane.tick_now();
    std::thread::sleep(Duration::from_millis(300));
    plane.tick_now();
    println!("--- GET /metrics ---\n{}", get(plane.addr(), "/metrics")?);
    println!("--- GET /status ---\n{}", get(plane.addr(), "/status")?);
    drop(tx);
    let (report, integrity) = plane.shutdown(StopMode::Discard)?;
    println!(
        "--- integrity report (after shutdown) ---\n{}",
        serde_json::to_string_pretty(&integrity)?
    );
    println!(
        "--- audit log ---\n{}",
        std::fs::read_to_string(dir.join("audit.jsonl"))?
    );
    println!("conserved: {}", report.is_conserved());
    println!("files: {}", dir.display());
    Ok(())
}

/// JSON logs to stderr, as `qosd` does.
fn tracing_subscriber_init() {
    let _ = qos_control::logs::init_json(std::io::stderr);
}
