//! P9: qosd against a plain UDP relay with the same batching (`qos_tools::relay`), same
//! offered load, loopback only. Alternates relay / qosd for `--rounds` rounds; each
//! round measures (1) throughput: blasting 512-byte datagrams for `--secs` seconds, the
//! packets/s reaching the sink and the CPU time per forwarded packet of the forwarding
//! threads (`relay-*`; `qosd-rx-*` + `qos-worker-*`, from /proc/self/task); (2)
//! latency: a paced 10,000 datagrams/s for 2 s, the one-way p50/p99 at the sink from
//! the load-generator timestamps. qosd runs one worker with a link far above the load
//! (it never paces or drops), so the difference is the dataplane's cost.
//!
//! Run: `cargo run --release -p qos-tools --example p9 -- [--rounds 5] [--secs 3]`
#![allow(clippy::disallowed_methods)] // a benchmark: it reads the wall clock

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use qos_tools::clock::unix_ns;
use qos_tools::config::GatewayConfig;
use qos_tools::gateway::Gateway;
use qos_tools::header::Header;
use qos_tools::relay::Relay;
use qos_tools::udp::BatchRecv;

const SIZE: usize = 512;

/// CPU time (ns) of this process's threads whose name starts with one of `prefixes`.
fn cpu_ns(prefixes: &[&str]) -> u64 {
    let mut ticks = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !prefixes.iter().any(|p| comm.trim_end().starts_with(p)) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of the command: state is field 3; utime 14, stime 15.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
            let s: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
            ticks += u + s;
        }
    }
    ticks * 10_000_000 // CLK_TCK = 100
}

/// A sink counting datagrams and recording one-way latency, until `stop`.
fn sink(sock: UdpSocket, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) -> Histogram<u64> {
    let state = quinn_udp::UdpSocketState::new((&sock).into()).expect("sink state");
    let mut batch = BatchRecv::new();
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    while !stop.load(Relaxed) {
        let n = batch.recv(&sock, &state, 20).unwrap_or(0);
        let now = unix_ns();
        for (_, d) in batch.datagrams(n) {
            count.fetch_add(1, Relaxed);
            if let Ok(hd) = Header::parse(d) {
                let _ = h.record(now.saturating_sub(hd.send_ns).max(1));
            }
        }
    }
    h
}

/// Sends `SIZE`-byte datagrams to `to` until `stop`; `pps` 0 = as fast as possible.
fn blast(to: SocketAddr, stop: &AtomicBool, pps: u64, id: u64) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut buf = vec![0u8; SIZE];
    let start = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        if pps > 0 {
            let due = start.elapsed().as_nanos() as u64 * pps / 1_000_000_000;
            if seq >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        let _ = Header::new(id, 4, seq, unix_ns()).write_to(&mut buf);
        let _ = s.send_to(&buf, to);
        seq += 1;
    }
    seq
}

struct Round {
    pps: f64,
    cpu_ns_per_pkt: f64,
    p50_us: f64,
    p99_us: f64,
}

fn measure(to: SocketAddr, sink_sock: &UdpSocket, threads: &[&str], secs: u64) -> Round {
    // Throughput.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (st, c, sk) = (
        stop.clone(),
        count.clone(),
        sink_sock.try_clone().expect("clone"),
    );
    let rx = std::thread::spawn(move || sink(sk, st, c));
    let bstop = Arc::new(AtomicBool::new(false));
    let b = bstop.clone();
    let tx = std::thread::spawn(move || blast(to, &b, 0, 1));
    std::thread::sleep(Duration::from_millis(500));
    let (c0, cpu0, t0) = (count.load(Relaxed), cpu_ns(threads), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, cpu1, dt) = (count.load(Relaxed), cpu_ns(threads), t0.elapsed());
    bstop.store(true, Relaxed);
    let _ = tx.join();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Relaxed);
    let _ = rx.join();
    let pkts = (c1 - c0).max(1);
    // Latency at a light load.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (st, c, sk) = (
        stop.clone(),
        count.clone(),
        sink_sock.try_clone().expect("clone"),
    );
    let rx = std::thread::spawn(move || sink(sk, st, c));
    let bstop = Arc::new(AtomicBool::new(false));
    let b = bstop.clone();
    let tx = std::thread::spawn(move || blast(to, &b, 10_000, 2));
    std::thread::sleep(Duration::from_secs(2));
    bstop.store(true, Relaxed);
    let _ = tx.join();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Relaxed);
    let h = rx.join().expect("sink");
    Round {
        pps: pkts as f64 / dt.as_secs_f64(),
        cpu_ns_per_pkt: cpu1.saturating_sub(cpu0) as f64 / pkts as f64,
        p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn arg(name: &str, default: u64) -> u64 {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds = arg("--rounds", 5).max(1);
    let secs = arg("--secs", 3).max(1);
    let sink_sock = UdpSocket::bind("127.0.0.1:0")?;
    let _ = socket2::SockRef::from(&sink_sock).set_recv_buffer_size(4 << 20);
    let up = sink_sock.local_addr()?;
    let config = format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\npinning = \"off\"\n\
         [control]\nlisten = \"127.0.0.1:0\"\n\
         [policy]\nversion = 1\npreset = \"default\"\ndisconnect = false\naqm = false\n\
         max_queue_depth = 10000\n[policy.link]\nrate_mbps = 10000\nburst_bytes = 1000000\n\
         [[upstream]]\nname = \"up\"\naddr = \"{up}\"\n\
         [[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = {{ to = \"up\" }}\n"
    );
    let mut relay_r = Vec::new();
    let mut qosd_r = Vec::new();
    println!("round  what   Mpps    CPU ns/pkt   p50 us   p99 us");
    for r in 0..rounds {
        let relay = Relay::start("127.0.0.1:0".parse()?, up, 1)?;
        let a = measure(relay.listen, &sink_sock, &["relay-"], secs);
        relay.stop();
        let gw = Gateway::start(GatewayConfig::from_toml(&config)?)?;
        let b = measure(
            gw.listen_addrs()[0],
            &sink_sock,
            &["qosd-rx", "qos-worker"],
            secs,
        );
        let report = gw.stop()?;
        for (what, x) in [("relay", &a), ("qosd", &b)] {
            println!(
                "{r:>5}  {what:<5} {:>6.3}  {:>11.0}  {:>7.1}  {:>7.1}",
                x.pps / 1e6,
                x.cpu_ns_per_pkt,
                x.p50_us,
                x.p99_us
            );
        }
        if !report.conserved {
            println!("       qosd accounting NOT conserved: {:?}", report.dropped);
        } else if !report.dropped.is_empty() {
            println!("       qosd dropped (counted): {:?}", report.dropped);
        }
        relay_r.push(a);
        qosd_r.push(b);
    }
    let col = |v: &[Round], f: fn(&Round) -> f64| median(v.iter().map(f).collect());
    println!("\nmedian [min-max] over {rounds} rounds");
    for (name, f) in [
        ("packets/s", (|x: &Round| x.pps) as fn(&Round) -> f64),
        ("CPU ns/packet", |x: &Round| x.cpu_ns_per_pkt),
        ("p50 us", |x: &Round| x.p50_us),
        ("p99 us", |x: &Round| x.p99_us),
    ] {
        let (a, a0, a1) = col(&relay_r, f);
        let (b, b0, b1) = col(&qosd_r, f);
        println!(
            "{name:<14} relay {a:>10.1} [{a0:.1}-{a1:.1}]  qosd {b:>10.1} [{b0:.1}-{b1:.1}]  qosd/relay {:.2}",
            b / a
        );
    }
    let ratios: Vec<f64> = relay_r
        .iter()
        .zip(&qosd_r)
        .map(|(a, b)| b.pps / a.pps)
        .collect();
    let (m, lo, hi) = median(ratios);
    println!(
        "packet-rate ratio per round (qosd/relay): median {m:.2} [{lo:.2}-{hi:.2}] (target >= 0.8)"
    );
    let added: Vec<f64> = relay_r
        .iter()
        .zip(&qosd_r)
        .map(|(a, b)| b.p99_us - a.p99_us)
        .collect();
    let (m, lo, hi) = median(added);
    println!("p99 added by qosd per round: median {m:.1} us [{lo:.1}-{hi:.1}] (target <= 2 us)");
    Ok(())
}
