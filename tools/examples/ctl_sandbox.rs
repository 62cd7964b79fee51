//! A control plane to point `qos-ctl` at, before or without `qosd`: a two-worker
//! dataplane with light traffic on six streams and one greedy stream on a 20 Mbit/s
//! link, its API on 127.0.0.1:9100, its audit log and `.hlog` (1 s intervals) in DIR.
//! Runs for SECONDS (default 60), then shuts down and prints the integrity statement.
//!
//! Run: `cargo run -p qos-tools --example ctl_sandbox -- DIR [SECONDS] [VERIFYING_KEY]`
//! (with a verifying key, only policies signed by its signing key are accepted).
#![allow(clippy::disallowed_methods)] // an example: it paces its traffic by the wall clock

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qos_control::plane::{ControlConfig, ControlPlane};
use qos_control::policy::signing;
use qos_dataplane::runtime::{Dataplane, Egress, EnqueueError, Outbox, Pinning, StopMode};
use qos_dataplane::sched::{LinkRate, PolicySpec, StreamConfig};

/// Sends everything the scheduler releases (the link rate paces it).
struct Wire;
impl Egress<u64> for Wire {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        while out.pop().is_some() {}
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: ctl_sandbox DIR [SECONDS] [VERIFYING_KEY]")?,
    );
    let seconds: u64 = args.next().map_or(Ok(60), |s| s.parse())?;
    let key = args
        .next()
        .map(|k| signing::read_verifying_key(k.as_ref()))
        .transpose()?;
    std::fs::create_dir_all(&dir)?;
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
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            audit_log: Some(dir.join("audit.jsonl")),
            hlog: Some(dir.join("sojourn.hlog")),
            hlog_period: Duration::from_secs(1),
            verifying_key: key,
            series_limit: 4,
            ..ControlConfig::default()
        },
    )?;
    println!(
        "control API on {}, files in {}",
        plane.addr(),
        dir.display()
    );
    let mut tx = producers.pop().ok_or("no producer")?;
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
    while start.elapsed() < Duration::from_secs(seconds) {
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
    }
    drop(tx);
    let (_, integrity) = plane.shutdown(StopMode::Discard)?;
    println!("{}", integrity.statement);
    Ok(())
}
