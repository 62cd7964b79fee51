//! P9: qosd against a plain UDP relay with the same batching (`qos_tools::relay`), same
//! offered load, loopback only, bounded in time.
//!
//! First a calibration: the sender alone, straight to the sink, for 2 s; what it
//! manages is the offered load of the throughput phase (or `--offer PPS`). Then
//! `--rounds` rounds, each measuring the relay and qosd (the order swaps every round,
//! so neither always goes first); for each:
//! 1. throughput: `--senders` threads offer 512-byte datagrams at the offered load for
//!    `--secs` seconds (after 0.5 s of warm-up), `--gso N` datagrams a send (one GSO
//!    send of N datagrams with a header each; 1: one `send_to` a datagram, which a
//!    single sender cannot make fast enough to load a forwarder on this machine); the
//!    packets/s reaching the sink, the
//!    rate actually offered, and the CPU time per forwarded packet of the forwarding
//!    threads (`relay-*`; `qosd-rx-*` + `qos-worker-*`, and `qos-control` apart), read
//!    from `/proc/self/task/*/stat` (10 ms ticks) before and after the window;
//! 2. latency: 10,000 datagrams/s for `--lat-secs` seconds; the one-way p50/p99/p99.9 at
//!    the sink from the load-generator header's send timestamp, and the voluntary
//!    context switches (sleeps) of the forwarding threads per packet. The same latency
//!    is measured once without a forwarder (sender straight to the sink), the floor
//!    both add to.
//!
//! qosd runs `--threads` workers (and receive threads) with a link far above the load,
//! no AQM and deep queues, so it never paces or drops: the difference is the dataplane.
//! The relay runs `--threads` threads. `--mode relay|qosd` measures one of them only.
//!
//! Run: `cargo run --release -p qos-tools --example p9 -- [--rounds 5] [--secs 5]
//! [--lat-secs 3] [--threads 1] [--senders 1] [--gso 1] [--offer PPS] [--mode both]
//! [--idle park|spin]` (`--idle`: qosd's `gateway.idle`)
#![allow(clippy::disallowed_methods)] // a benchmark: it reads the wall clock

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use qos_tools::config::GatewayConfig;
use qos_tools::gateway::Gateway;
use qos_tools::header::Header;
use qos_tools::relay::Relay;
use qos_tools::udp::BatchRecv;

const SIZE: usize = 512;

/// The load generator's clock, one for the sender and the sink threads alike.
static CLOCK: std::sync::LazyLock<qos_tools::loadgen::clock::Clock> =
    std::sync::LazyLock::new(qos_tools::loadgen::clock::Clock::start);

/// Wall clock, ns since the Unix epoch (what load-generator headers carry).
fn unix_ns() -> u64 {
    CLOCK.wall_ns()
}
const LAT_PPS: u64 = 10_000;
const FORWARDERS: &[&str] = &["relay-", "qosd-rx", "qos-worker"];

/// Per-thread figures summed over this process's threads whose name starts with one of
/// `prefixes`: CPU ns (utime + stime, 10 ms ticks) and voluntary context switches.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu_ns: u64,
    sleeps: u64,
}

fn usage(prefixes: &[&str]) -> Usage {
    let mut u = Usage::default();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return u;
    };
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !prefixes.iter().any(|p| comm.trim_end().starts_with(p)) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of the command start at field 3 (state); utime is 14,
        // stime 15.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            u.cpu_ns += (tick(11) + tick(12)) * 10_000_000; // CLK_TCK = 100
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        u.sleeps += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    u
}

fn delta(a: Usage, b: Usage) -> Usage {
    Usage {
        cpu_ns: b.cpu_ns.saturating_sub(a.cpu_ns),
        sleeps: b.sleeps.saturating_sub(a.sleeps),
    }
}

/// A sink thread counting datagrams and recording one-way latency (ns), until `stop`.
struct Sink {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: JoinHandle<Histogram<u64>>,
}

impl Sink {
    fn spawn(sock: &UdpSocket) -> Sink {
        let sock = sock.try_clone().expect("clone the sink socket");
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (st, c) = (stop.clone(), count.clone());
        let thread = std::thread::Builder::new()
            .name("p9-sink".into())
            .spawn(move || {
                let state = quinn_udp::UdpSocketState::new((&sock).into()).expect("sink state");
                let mut batch = BatchRecv::new();
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("h");
                while !st.load(Relaxed) {
                    let n = batch.recv(&sock, &state, 20).unwrap_or(0);
                    let now = unix_ns();
                    for (_, d) in batch.datagrams(n) {
                        c.fetch_add(1, Relaxed);
                        if let Ok(hd) = Header::parse(d) {
                            let _ = h.record(now.saturating_sub(hd.send_ns).max(1));
                        }
                    }
                }
                h
            })
            .expect("spawn the sink");
        Sink {
            stop,
            count,
            thread,
        }
    }

    /// Lets in-flight datagrams arrive, stops, returns the latency histogram.
    fn finish(self) -> Histogram<u64> {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Relaxed);
        self.thread.join().expect("sink")
    }
}

/// `n` sender threads, each sending `SIZE`-byte datagrams with a load-generator header
/// to `to` at `pps / n` (0 = as fast as it can) until stopped.
struct Senders {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Senders {
    fn spawn(to: SocketAddr, n: u64, pps: u64, stream: u64, gso: usize) -> Senders {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|i| {
                let (stop, sent) = (stop.clone(), sent.clone());
                let rate = pps / n;
                std::thread::Builder::new()
                    .name(format!("p9-send-{i}"))
                    .spawn(move || blast(to, &stop, &sent, rate, stream + i, gso))
                    .expect("spawn a sender")
            })
            .collect();
        Senders {
            stop,
            sent,
            threads,
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.sent.load(Relaxed)
    }
}

fn blast(to: SocketAddr, stop: &AtomicBool, sent: &AtomicU64, pps: u64, id: u64, gso: usize) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a sender");
    let _ = socket2::SockRef::from(&s).set_send_buffer_size(4 << 20);
    let state = quinn_udp::UdpSocketState::new((&s).into()).expect("sender state");
    // A GSO send of `gso` datagrams, each with its own header (one syscall).
    let gso = gso.clamp(1, state.max_gso_segments().max(1));
    let mut buf = vec![0u8; SIZE * gso];
    let start = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        if pps > 0 {
            let due = start.elapsed().as_nanos() as u64 * pps / 1_000_000_000;
            if seq >= due {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
        }
        let now = unix_ns();
        for (i, seg) in buf.chunks_mut(SIZE).enumerate() {
            let _ = Header::new(id, 4, seq + i as u64, now).write_to(seg);
        }
        let ok = if gso == 1 {
            s.send_to(&buf, to).is_ok()
        } else {
            let t = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents: &buf,
                segment_size: Some(SIZE),
                src_ip: None,
            };
            state.try_send((&s).into(), &t).is_ok()
        };
        if ok {
            sent.fetch_add(gso as u64, Relaxed);
        }
        seq += gso as u64;
    }
}

/// One figure of a round, for the summary.
type Figure = fn(&Round) -> f64;

#[derive(Clone, Copy, Default)]
struct Round {
    pps: f64,
    offered_pps: f64,
    cpu_ns_per_pkt: f64,
    control_ns_per_pkt: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    lat_lost: u64,
    sleeps_per_pkt: f64,
}

struct Opts {
    secs: u64,
    lat_secs: u64,
    senders: u64,
    offer: u64,
    gso: usize,
}

fn measure(to: SocketAddr, sink_sock: &UdpSocket, o: &Opts) -> Round {
    // Throughput.
    let sink = Sink::spawn(sink_sock);
    let tx = Senders::spawn(to, o.senders, o.offer, 1, o.gso);
    std::thread::sleep(Duration::from_millis(500));
    let (c0, s0, u0, k0, t0) = (
        sink.count.load(Relaxed),
        tx.sent.load(Relaxed),
        usage(FORWARDERS),
        usage(&["qos-control"]),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(o.secs));
    let (c1, s1, u1, k1, dt) = (
        sink.count.load(Relaxed),
        tx.sent.load(Relaxed),
        usage(FORWARDERS),
        usage(&["qos-control"]),
        t0.elapsed(),
    );
    tx.stop();
    let _ = sink.finish();
    let pkts = (c1 - c0).max(1);
    let secs = dt.as_secs_f64();
    // Latency at a light load.
    let (h, lost, sleeps) = latency(to, sink_sock, o.lat_secs);
    Round {
        pps: pkts as f64 / secs,
        offered_pps: (s1 - s0) as f64 / secs,
        cpu_ns_per_pkt: delta(u0, u1).cpu_ns as f64 / pkts as f64,
        control_ns_per_pkt: delta(k0, k1).cpu_ns as f64 / pkts as f64,
        p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        p999_us: h.value_at_quantile(0.999) as f64 / 1e3,
        lat_lost: lost,
        sleeps_per_pkt: sleeps,
    }
}

/// `LAT_PPS` one datagram a send to `to` for `secs`: the one-way latency histogram at
/// the sink, the datagrams lost, and the forwarding threads' sleeps per datagram.
fn latency(to: SocketAddr, sink_sock: &UdpSocket, secs: u64) -> (Histogram<u64>, u64, f64) {
    let sink = Sink::spawn(sink_sock);
    let u0 = usage(FORWARDERS);
    let tx = Senders::spawn(to, 1, LAT_PPS, 100, 1);
    std::thread::sleep(Duration::from_secs(secs));
    let sent = tx.stop();
    let got = sink.count.clone();
    let h = sink.finish();
    let u1 = usage(FORWARDERS);
    let got = got.load(Relaxed);
    let sleeps = delta(u0, u1).sleeps as f64 / got.max(1) as f64;
    (h, sent.saturating_sub(got), sleeps)
}

/// Sender alone, straight to the sink: what one load generator manages (packets/s).
fn calibrate(sink_sock: &UdpSocket, senders: u64, gso: usize) -> (f64, f64) {
    let sink = Sink::spawn(sink_sock);
    let to = sink_sock.local_addr().expect("sink address");
    let tx = Senders::spawn(to, senders, 0, 1, gso);
    std::thread::sleep(Duration::from_millis(300));
    let (c0, s0, t0) = (
        sink.count.load(Relaxed),
        tx.sent.load(Relaxed),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (c1, s1, dt) = (
        sink.count.load(Relaxed),
        tx.sent.load(Relaxed),
        t0.elapsed(),
    );
    tx.stop();
    let _ = sink.finish();
    let secs = dt.as_secs_f64();
    ((s1 - s0) as f64 / secs, (c1 - c0) as f64 / secs)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .cloned()
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn print_round(r: usize, what: &str, x: &Round) {
    println!(
        "{r:>5}  {what:<5} {:>7.1} {:>7.1} {:>8.0} {:>8.0} {:>7.1} {:>7.1} {:>8.1} {:>5} {:>7.2}",
        x.offered_pps / 1e3,
        x.pps / 1e3,
        x.cpu_ns_per_pkt,
        x.control_ns_per_pkt,
        x.p50_us,
        x.p99_us,
        x.p999_us,
        x.lat_lost,
        x.sleeps_per_pkt
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds = num("--rounds", 5).clamp(1, 50) as usize;
    let threads = num("--threads", 1).clamp(1, 8) as usize;
    let mode = arg("--mode").unwrap_or_else(|| "both".into());
    let (run_relay, run_qosd) = match mode.as_str() {
        "both" => (true, true),
        "relay" => (true, false),
        "qosd" => (false, true),
        m => return Err(format!("--mode {m}: both, relay or qosd").into()),
    };
    let mut o = Opts {
        secs: num("--secs", 5).clamp(1, 60),
        lat_secs: num("--lat-secs", 3).clamp(1, 60),
        senders: num("--senders", 1).clamp(1, 8),
        offer: num("--offer", 0),
        gso: num("--gso", 1).clamp(1, 64) as usize,
    };
    let sink_sock = UdpSocket::bind("127.0.0.1:0")?;
    let _ = socket2::SockRef::from(&sink_sock).set_recv_buffer_size(8 << 20);
    let up = sink_sock.local_addr()?;
    let (cal_sent, cal_got) = calibrate(&sink_sock, o.senders, o.gso);
    println!(
        "calibration: {} sender(s), {} datagram(s) a send, straight to the sink: \
         {:.1} kpps sent, {:.1} kpps received",
        o.senders,
        o.gso,
        cal_sent / 1e3,
        cal_got / 1e3
    );
    if o.offer == 0 {
        o.offer = cal_sent as u64;
    }
    // The floor both forwarders add to: sender straight to the sink, no forwarder.
    let (h, _, _) = latency(up, &sink_sock, o.lat_secs);
    println!(
        "direct (no forwarder) at {LAT_PPS} pps: one-way p50 {:.1} us, p99 {:.1} us, \
         p99.9 {:.1} us",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3
    );
    println!(
        "offered load: {:.1} kpps of {SIZE}-byte datagrams for {} s; latency at {LAT_PPS} pps \
         for {} s; {threads} forwarding thread(s)",
        o.offer as f64 / 1e3,
        o.secs,
        o.lat_secs
    );
    let burst = 1_000_000.max(threads * 9216);
    let idle = arg("--idle").unwrap_or_else(|| "park".into());
    let config = format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\nworkers = {threads}\npinning = \"off\"\nidle = \"{idle}\"\n\
         [control]\nlisten = \"127.0.0.1:0\"\n\
         [policy]\nversion = 1\npreset = \"default\"\ndisconnect = false\naqm = false\n\
         max_queue_depth = 10000\n[policy.link]\nrate_mbps = 10000\nburst_bytes = {burst}\n\
         [[upstream]]\nname = \"up\"\naddr = \"{up}\"\n\
         [[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = {{ to = \"up\" }}\n"
    );
    let mut relay_r = Vec::new();
    let mut qosd_r = Vec::new();
    println!(
        "\nround  what  offered  fwd    CPU fwd  CPU ctl   p50     p99    p99.9  lost  sleeps\n\
         \x20                kpps    kpps   ns/pkt   ns/pkt    us      us      us   (lat) /pkt"
    );
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for relay_turn in order {
            if relay_turn && run_relay {
                let relay = Relay::start("127.0.0.1:0".parse()?, up, threads)?;
                let a = measure(relay.listen, &sink_sock, &o);
                relay.stop();
                print_round(r, "relay", &a);
                relay_r.push(a);
            } else if !relay_turn && run_qosd {
                let gw = Gateway::start(GatewayConfig::from_toml(&config)?)?;
                let b = measure(gw.listen_addrs()[0], &sink_sock, &o);
                let report = gw.stop()?;
                print_round(r, "qosd", &b);
                if !report.conserved {
                    println!("       qosd accounting NOT conserved: {:?}", report.dropped);
                } else if !report.dropped.is_empty() {
                    println!("       qosd dropped (counted): {:?}", report.dropped);
                }
                qosd_r.push(b);
            }
        }
    }
    let col = |v: &[Round], f: fn(&Round) -> f64| median(v.iter().map(f).collect());
    println!("\nmedian [min-max] over {rounds} rounds");
    let figures: [(&str, Figure); 8] = [
        ("offered kpps", |x| x.offered_pps / 1e3),
        ("forwarded kpps", |x| x.pps / 1e3),
        ("CPU ns/packet", |x| x.cpu_ns_per_pkt),
        ("control ns/pkt", |x| x.control_ns_per_pkt),
        ("p50 us", |x| x.p50_us),
        ("p99 us", |x| x.p99_us),
        ("p99.9 us", |x| x.p999_us),
        ("sleeps/packet", |x| x.sleeps_per_pkt),
    ];
    for (name, f) in figures {
        let mut line = format!("{name:<15}");
        if run_relay {
            let (a, a0, a1) = col(&relay_r, f);
            line += &format!(" relay {a:>8.2} [{a0:.2}-{a1:.2}]");
        }
        if run_qosd {
            let (b, b0, b1) = col(&qosd_r, f);
            line += &format!("  qosd {b:>8.2} [{b0:.2}-{b1:.2}]");
        }
        if run_relay && run_qosd {
            let (a, b) = (col(&relay_r, f).0, col(&qosd_r, f).0);
            line += &format!("  qosd/relay {:.2}", b / a);
        }
        println!("{line}");
    }
    if !(run_relay && run_qosd) {
        return Ok(());
    }
    let per_round = |f: fn(&Round, &Round) -> f64| {
        median(relay_r.iter().zip(&qosd_r).map(|(a, b)| f(a, b)).collect())
    };
    let (m, lo, hi) = per_round(|a, b| b.pps / a.pps);
    println!("packet rate qosd/relay per round: median {m:.2} [{lo:.2}-{hi:.2}] (target >= 0.8)");
    let (m, lo, hi) = per_round(|a, b| b.cpu_ns_per_pkt / a.cpu_ns_per_pkt);
    println!("CPU/packet qosd/relay per round: median {m:.2} [{lo:.2}-{hi:.2}]");
    let (m, lo, hi) = per_round(|a, b| b.p99_us - a.p99_us);
    println!("p99 added by qosd per round: median {m:.1} us [{lo:.1}-{hi:.1}] (target <= 2 us)");
    let (m, lo, hi) = per_round(|a, b| b.p50_us - a.p50_us);
    println!("p50 added by qosd per round: median {m:.1} us [{lo:.1}-{hi:.1}]");
    Ok(())
}
