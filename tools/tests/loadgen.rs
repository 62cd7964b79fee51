//! End-to-end tests of `qos-loadgen` on real UDP sockets, 127.0.0.1 only, each bounded
//! to a few seconds and a few thousand datagrams.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use qos_tools::header::{Header, LEN};
use qos_tools::loadgen::cli::{StreamArgs, plan as cli_plan};
use qos_tools::loadgen::{
    self, LossBasis, Pacing, Plan, Report, RunOptions, Scenario, Sender, Sink, SinkConfig,
    SinkHandle, SinkSnapshot,
};

fn plan(toml: &str) -> Plan {
    Scenario::from_toml("test", toml)
        .expect("parses")
        .validate()
        .expect("valid")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

fn no_stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

fn run(plan: &Plan, hlog: Option<PathBuf>) -> loadgen::RunOutcome {
    let mut sink = SinkConfig::new(loopback(), plan.duration);
    sink.interval = Duration::from_millis(200);
    sink.hlog = hlog;
    loadgen::run(plan, RunOptions::new(sink), no_stop()).expect("runs")
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("qos-loadgen-{}-{name}", std::process::id()))
}

/// Polls the sink until `done` holds (at most 3 s).
fn wait_for(sink: &SinkHandle, done: impl Fn(&SinkSnapshot) -> bool) -> SinkSnapshot {
    for _ in 0..300 {
        let snap = sink.snapshot();
        if done(&snap) {
            return snap;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("sink never got there: {:?}", sink.snapshot());
}

fn raw_sender(to: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(loopback()).expect("bind");
    s.connect(to).expect("connect");
    s
}

fn datagram(stream: u64, priority: u8, seq: u64, size: usize) -> Vec<u8> {
    let mut d = vec![0u8; size];
    Header::new(stream, priority, seq, 1)
        .write_to(&mut d)
        .expect("fits");
    d
}

#[test]
fn every_datagram_sent_at_a_low_rate_arrives_once_and_in_order() {
    let plan = plan(
        r#"
        duration_ms = 500
        [[streams]]
        id = 1
        priority = 7
        size = 100
        rate = "200pps"
        [[streams]]
        id = 2
        priority = 0
        size = 300
        rate = "200pps"
        "#,
    );
    let out = run(&plan, None);
    assert_eq!(out.report.loss_basis, LossBasis::SenderCounts);
    assert_eq!(out.report.streams.len(), 2);
    for row in &out.report.streams {
        let sent = row.sent.expect("sender ran here");
        assert!((90..=101).contains(&sent), "stream {} sent {sent}", row.id);
        assert_eq!(row.received, sent, "stream {}", row.id);
        assert_eq!((row.loss, row.reordered, row.duplicates), (0, 0, 0));
        assert_eq!(row.latency.count, sent);
        assert_eq!(row.send_errors, 0);
    }
    // Same packet rate, 100 vs 300 bytes: shares 25 % and 75 % of the bytes.
    let shares: Vec<f64> = out.report.streams.iter().map(|r| r.share_pct).collect();
    let expected = [
        100.0 * 100.0 * out.report.streams[0].received as f64 / out.report.total_bytes as f64,
        100.0 * 300.0 * out.report.streams[1].received as f64 / out.report.total_bytes as f64,
    ];
    assert!((shares[0] - expected[0]).abs() < 1e-9 && (shares[1] - expected[1]).abs() < 1e-9);
    assert!(out.report.malformed.is_empty());
}

#[test]
fn a_constant_8_mbps_stream_measures_within_10_percent_over_2_s() {
    let plan = plan(
        r#"
        duration_ms = 2000
        [[streams]]
        id = 8
        priority = 4
        size = 1000
        rate = "8mbps"
        "#,
    );
    let out = run(&plan, None);
    let row = &out.report.streams[0];
    assert!(
        (7.2..=8.8).contains(&row.throughput_mbps),
        "measured {} Mbit/s ({} of {} datagrams received)",
        row.throughput_mbps,
        row.received,
        row.sent.unwrap_or(0)
    );
}

#[test]
fn a_poisson_streams_count_is_within_4_sigma_of_rate_times_duration() {
    let plan = plan(
        r#"
        duration_ms = 1000
        seed = 7
        [[streams]]
        id = 3
        priority = 2
        size = 64
        rate = "1000pps"
        pattern = "poisson"
        "#,
    );
    let sent = Sender::new(plan, "127.0.0.1:9".parse().expect("addr"))
        .expect("socket")
        .run(&AtomicBool::new(false));
    let n = sent.streams[0].packets + sent.streams[0].error_count();
    let (mean, sigma) = (1000.0, 1000f64.sqrt());
    assert!(
        (n as f64 - mean).abs() <= 4.0 * sigma,
        "{n} datagrams, expected {mean} +- {}",
        4.0 * sigma
    );
}

#[test]
fn on_off_and_windows_send_only_inside_their_active_time() {
    let plan = plan(
        r#"
        duration_ms = 600
        [[streams]]
        id = 1
        priority = 7
        size = 64
        rate = "500pps"
        active = [[0, 150], [400, 550]]
        [[streams]]
        id = 2
        priority = 1
        size = 64
        rate = "500pps"
        pattern = "poisson"
        on_ms = 50
        off_ms = 100
        "#,
    );
    let rx = UdpSocket::bind(loopback()).expect("bind");
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let sender = Sender::new(plan.clone(), rx.local_addr().expect("addr")).expect("socket");
    let handle = sender.spawn(no_stop()).expect("spawn");
    let mut buf = [0u8; 2048];
    let mut headers = Vec::new();
    while let Ok(n) = rx.recv(&mut buf) {
        headers.push(Header::parse(&buf[..n]).expect("a header"));
    }
    let sent = handle.join().expect("joins");
    let total: u64 = sent.streams.iter().map(|s| s.packets).sum();
    assert_eq!(
        headers.len() as u64,
        total,
        "loopback at 1000 pps loses nothing"
    );
    for h in &headers {
        let stream = plan
            .streams
            .iter()
            .find(|s| s.id == h.stream_id)
            .expect("a planned stream");
        let offset = h.send_ns - sent.start_ns;
        assert!(
            stream.active_at(offset),
            "stream {} sent at {} ms, outside its active time",
            h.stream_id,
            offset as f64 / 1e6
        );
    }
    // Both phases of each stream did send.
    let sent_in = |id: u64, from_ms: u64, to_ms: u64| {
        headers.iter().any(|h| {
            let t = (h.send_ns - sent.start_ns) / 1_000_000;
            h.stream_id == id && (from_ms..to_ms).contains(&t)
        })
    };
    assert!(sent_in(1, 0, 150) && sent_in(1, 400, 550));
    assert!(sent_in(2, 0, 50) && sent_in(2, 300, 350));
}

#[test]
fn duplicates_and_reordering_are_counted_exactly() {
    let sink = Sink::bind(SinkConfig::new(loopback(), Duration::from_secs(4)))
        .expect("bind")
        .spawn(no_stop())
        .expect("spawn");
    let tx = raw_sender(sink.local_addr());
    for seq in [0, 1, 1, 3, 2] {
        tx.send(&datagram(5, 3, seq, 64)).expect("send");
    }
    wait_for(&sink, |s| s.streams.first().is_some_and(|s| s.packets == 4));
    let received = sink.finish().expect("report");
    let s = &received.streams[0];
    assert_eq!((s.id, s.priority), (5, 3));
    assert_eq!((s.packets, s.duplicates, s.reordered), (4, 1, 1));
    assert_eq!(s.highest_seq, 3);
    let report = Report::new(&received, None);
    assert_eq!(report.loss_basis, LossBasis::HighestSeq);
    assert_eq!(report.streams[0].sent, None);
    assert_eq!((report.streams[0].loss, report.streams[0].received), (0, 4));
}

#[test]
fn loss_without_the_sender_is_highest_seq_plus_one_minus_received() {
    let sink = Sink::bind(SinkConfig::new(loopback(), Duration::from_secs(4)))
        .expect("bind")
        .spawn(no_stop())
        .expect("spawn");
    let tx = raw_sender(sink.local_addr());
    for seq in [0, 2, 5, 9] {
        tx.send(&datagram(1, 6, seq, 40)).expect("send");
    }
    wait_for(&sink, |s| s.total_bytes() == 160);
    let report = Report::new(&sink.finish().expect("report"), None);
    let row = &report.streams[0];
    assert_eq!((row.received, row.loss), (4, 6));
    assert!((row.loss_pct - 60.0).abs() < 1e-9);
}

#[test]
fn malformed_datagrams_are_counted_by_reason() {
    let sink = Sink::bind(SinkConfig::new(loopback(), Duration::from_secs(4)))
        .expect("bind")
        .spawn(no_stop())
        .expect("spawn");
    let tx = raw_sender(sink.local_addr());
    let mut bad_version = datagram(1, 1, 0, LEN);
    bad_version[4] = 9;
    let mut bad_priority = datagram(1, 1, 0, LEN);
    bad_priority[5] = 8;
    for d in [
        vec![0x51; 10],
        vec![0; 64],
        bad_version,
        bad_priority,
        datagram(1, 1, 0, LEN),
    ] {
        tx.send(&d).expect("send");
    }
    let snap = wait_for(&sink, |s| s.malformed == 4 && s.total_bytes() == LEN as u64);
    assert_eq!(snap.priorities.len(), 1);
    let received = sink.finish().expect("report");
    let reasons: Vec<(&str, u64)> = received
        .malformed
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        reasons,
        [
            ("bad_magic", 1),
            ("bad_priority", 1),
            ("bad_version", 1),
            ("truncated", 1)
        ]
    );
    assert_eq!(received.streams.len(), 1);
    assert!(Report::new(&received, None).table().contains("truncated=1"));
}

#[test]
fn scenario_errors_name_the_field() {
    let base = "duration_ms = 1000\n[[streams]]\nid = 1\nsize = 100\nrate = \"1mbps\"\n";
    let cases = [
        (format!("{base}priority = 9\n"), "streams[0].priority"),
        (
            format!(
                "{base}priority = 1\n[[streams]]\nid = 2\npriority = 1\nsize = 20\nrate = \"1pps\"\n"
            ),
            "streams[1].size",
        ),
        (
            base.replace("1mbps", "quick") + "priority = 1\n",
            "streams[0].rate",
        ),
        (
            format!("{base}priority = 1\nactive = [[0, 500], [200, 900]]\n"),
            "streams[0].active[1]",
        ),
        (
            format!("{base}priority = 1\n").replace("duration_ms = 1000", "duration_ms = 0"),
            "duration_ms",
        ),
        (
            format!(
                "{base}priority = 1\n[[streams]]\nid = 1\npriority = 1\nsize = 50\nrate = \"1pps\"\n"
            ),
            "streams[1].id",
        ),
        // Red team: a target of port 0 "sent" without an error.
        (format!("target = \"127.0.0.1:0\"\n{base}priority = 1\n"), "target"),
        (format!("target = \"[::]:7000\"\n{base}priority = 1\n"), "target"),
        // Red team: 20 entries of 100,000 copies built 2M streams (1.4 GB).
        (
            (0..11)
                .map(|i| {
                    format!(
                        "[[streams]]\nid = {}\npriority = 1\nsize = 32\nrate = \"1pps\"\ncount = 100000\n",
                        i * 100_000
                    )
                })
                .fold("duration_ms = 1\n".to_owned(), |a, b| a + &b),
            "streams",
        ),
    ];
    for (text, field) in cases {
        let err = Scenario::from_toml("t", &text)
            .expect("TOML of the right shape")
            .validate()
            .expect_err(field);
        assert_eq!(err.field(), Some(field), "{err}");
        assert!(err.to_string().starts_with(field), "{err}");
    }
    // Shape errors come from the TOML parser, which names the key.
    for (text, key) in [
        (format!("{base}prio = 1\n"), "prio"),
        (format!("{base}priority = \"high\"\n"), "priority"),
        ("streams = []\n".to_owned(), "duration_ms"),
        (format!("pacing = \"spin\"\n{base}priority = 1\n"), "pacing"),
    ] {
        let err = Scenario::from_toml("t", &text).expect_err(key);
        assert!(err.to_string().contains(key), "{err}");
    }
    // The command line without a file needs --duration.
    let args = StreamArgs {
        scenario: None,
        streams: vec!["id=1,prio=1,size=100,rate=1pps".parse().expect("spec")],
        target: None,
        duration: None,
        seed: None,
        pacing: None,
    };
    assert_eq!(
        cli_plan(&args).expect_err("no duration").field(),
        Some("--duration")
    );
}

/// `pacing = "sleep"` (or `--pacing sleep`): the sender always sleeps, and a sleep
/// overshoots the 50 us gaps of a 20,000 pps stream, so it sends what fell due
/// meanwhile back to back. The count still matches the rate, every datagram is stamped
/// inside the run, and the sender leaves the CPU: a yielding sender stays runnable and
/// uses the whole 500 ms (measured 499 ms; the sleeping one 177 ms, and less with
/// other work on the cores).
#[test]
fn sleep_pacing_keeps_the_count_and_leaves_the_cpu() {
    let text =
        "duration_ms = 500\n[[streams]]\nid = 4\npriority = 3\nsize = 64\nrate = \"20000pps\"\n";
    assert_eq!(plan(text).pacing, Pacing::Yield, "the default");
    let sleepy = plan(&format!("pacing = \"sleep\"\n{text}"));
    assert_eq!(sleepy.pacing, Pacing::Sleep);
    let rx = UdpSocket::bind(loopback()).expect("bind");
    let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(8 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let sender = Sender::new(sleepy, rx.local_addr().expect("addr")).expect("socket");
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 128];
        let mut stamps = Vec::new();
        while let Ok(n) = rx.recv(&mut buf) {
            stamps.push(Header::parse(&buf[..n]).expect("a header").send_ns);
        }
        stamps
    });
    // This thread's CPU time, ns (Linux: the first field of schedstat).
    let cpu_ns = || -> u64 {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
        text.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number")
    };
    let before = cpu_ns();
    let sent = sender.run(&AtomicBool::new(false));
    let cpu_ms = (cpu_ns() - before) / 1_000_000;
    let stamps = receiver.join().expect("receiver");
    let s = &sent.streams[0];
    // Deadlines every 50 us from 0 to 499.95 ms: 10,000. A sender still asleep at the
    // end of the run skips what was due in its last sleep (at most a few hundred us).
    assert!(
        (9_900..=10_000).contains(&(s.packets + s.error_count())),
        "sent {} and {} refused",
        s.packets,
        s.error_count()
    );
    assert_eq!(stamps.len() as u64, s.packets, "loopback lost nothing");
    let end = sent.start_ns + 500_000_000;
    assert!(stamps.iter().all(|&t| (sent.start_ns..end).contains(&t)));
    assert!(
        cpu_ms < 300,
        "the sleeping sender used {cpu_ms} ms of CPU in 500 ms"
    );
    // The command line's --pacing overrides the file.
    let args = StreamArgs {
        scenario: None,
        streams: vec!["id=1,prio=1,size=100,rate=1pps".parse().expect("spec")],
        target: None,
        duration: Some(Duration::from_secs(1)),
        seed: None,
        pacing: Some(Pacing::Sleep),
    };
    assert_eq!(cli_plan(&args).expect("plan").pacing, Pacing::Sleep);
}

#[test]
fn the_json_report_round_trips_with_the_numbers_of_the_table() {
    let plan = plan(
        r#"
        duration_ms = 300
        [[streams]]
        id = 4
        priority = 5
        size = 500
        rate = "1mbps"
        count = 2
        "#,
    );
    let report = run(&plan, None).report;
    let back: Report = serde_json::from_str(&report.to_json()).expect("parses back");
    assert_eq!(back.table(), report.table());
    assert_eq!(back.streams.len(), 2);
    for (a, b) in report.streams.iter().zip(&back.streams) {
        assert_eq!(
            (a.id, a.priority, a.sent, a.received),
            (b.id, b.priority, b.sent, b.received)
        );
        assert_eq!(
            (a.loss, a.reordered, a.duplicates),
            (b.loss, b.reordered, b.duplicates)
        );
        for (x, y) in [
            (a.throughput_mbps, b.throughput_mbps),
            (a.share_pct, b.share_pct),
            (a.latency.p99_ms, b.latency.p99_ms),
        ] {
            assert!((x - y).abs() <= 1e-12 * x.abs().max(1.0), "{x} vs {y}");
        }
        let line = report
            .table()
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&a.id.to_string()))
            .expect("a row per stream")
            .to_owned();
        assert!(
            line.contains(&format!("{:.3}", b.throughput_mbps)),
            "{line}"
        );
        assert!(line.contains(&format!("{:.2}", b.share_pct)), "{line}");
    }
}

#[test]
fn the_hlog_reads_back_with_one_count_per_received_datagram() {
    let plan = plan(
        r#"
        duration_ms = 700
        [[streams]]
        id = 1
        priority = 7
        size = 100
        rate = "300pps"
        [[streams]]
        id = 2
        priority = 1
        size = 100
        rate = "200pps"
        "#,
    );
    let path = temp_path("latency.hlog");
    let out = run(&plan, Some(path.clone()));
    let intervals = qos_control::hlog::read_hlog(&path).expect("reads back");
    let _ = std::fs::remove_file(&path);
    let received: u64 = out.report.streams.iter().map(|r| r.received).sum();
    let logged: u64 = intervals.iter().map(|i| i.hist.len()).sum();
    assert_eq!(logged, received);
    assert!(intervals.len() >= 4, "200 ms intervals over 0.9 s, 2 tags");
    for (tag, priority) in [("p7.latency", 7u8), ("p1.latency", 1)] {
        let count: u64 = intervals
            .iter()
            .filter(|i| i.tag.as_deref() == Some(tag))
            .map(|i| i.hist.len())
            .sum();
        let rows: u64 = out
            .report
            .streams
            .iter()
            .filter(|r| r.priority == priority)
            .map(|r| r.received)
            .sum();
        assert_eq!(count, rows, "{tag}");
    }
}

#[test]
fn send_errors_are_counted_per_stream_and_do_not_end_the_run() {
    // Nothing listens on the discard port of loopback: the connected socket gets
    // ECONNREFUSED back for some sends.
    let plan = plan(
        r#"
        duration_ms = 300
        [[streams]]
        id = 1
        priority = 0
        size = 64
        rate = "200pps"
        "#,
    );
    let closed = UdpSocket::bind(loopback()).expect("bind");
    let target = closed.local_addr().expect("addr");
    drop(closed);
    let sent = loadgen::send(&plan, target, false, no_stop()).expect("runs");
    let s = &sent.streams[0];
    assert!(s.packets + s.error_count() >= 50, "{s:?}");
    assert!(s.errors.contains_key("ConnectionRefused"), "{s:?}");
    assert!(!sent.stopped_early);
}

#[test]
fn the_stop_flag_ends_a_run_early() {
    let plan = plan(
        r#"
        duration_ms = 60000
        [[streams]]
        id = 1
        priority = 0
        size = 64
        rate = "100pps"
        "#,
    );
    let stop = no_stop();
    let flag = Arc::clone(&stop);
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let sink = SinkConfig::new(loopback(), plan.duration);
    let out = loadgen::run(&plan, RunOptions::new(sink), stop).expect("runs");
    stopper.join().expect("joins");
    assert!(out.sent.stopped_early);
    assert!(out.sent.elapsed_ns < 5_000_000_000);
    // The sink stops with the sender: the last datagrams in flight may go unread.
    let row = &out.report.streams[0];
    assert!(
        row.received <= row.sent.unwrap_or(0) && row.received > 0,
        "{row:?}"
    );
}

#[test]
fn the_example_scenario_in_the_docs_is_valid() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/loadgen-scenario.toml");
    let plan = Scenario::from_file(&path)
        .expect("parses")
        .validate()
        .expect("valid");
    assert_eq!(plan.streams.len(), 12);
    let high = &plan.streams[0];
    assert!(high.active_at(1_000_000_000) && !high.active_at(7_000_000_000));
    assert!(high.active_at(12_000_000_000));
}

#[test]
fn snapshots_show_live_counts_and_the_last_intervals_latency() {
    let mut config = SinkConfig::new(loopback(), Duration::from_secs(4));
    config.interval = Duration::from_millis(50);
    let sink = Sink::bind(config)
        .expect("bind")
        .spawn(no_stop())
        .expect("spawn");
    let tx = raw_sender(sink.local_addr());
    for (stream, priority) in [(1, 7), (2, 7), (3, 2)] {
        tx.send(&datagram(stream, priority, 0, 100)).expect("send");
    }
    let snap = wait_for(&sink, |s| {
        s.priorities.len() == 2 && s.priorities.iter().all(|p| p.last_interval.is_some())
    });
    assert_eq!(snap.total_bytes(), 300);
    let p7 = snap
        .priorities
        .iter()
        .find(|p| p.priority == 7)
        .expect("p7");
    assert_eq!((p7.packets, p7.bytes, p7.cumulative.count), (2, 200, 2));
    assert_eq!(
        snap.streams.iter().map(|s| s.id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // Nothing more arrives: the next closed interval is empty.
    let later = wait_for(&sink, |s| {
        s.priorities.iter().all(|p| p.last_interval.is_none())
    });
    assert_eq!(later.priorities[0].cumulative.count, 1);
    sink.finish().expect("report");
}

#[test]
fn the_binary_exits_non_zero_naming_the_bad_field() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qos-loadgen"))
        .args(["run", "--duration", "100ms", "--stream"])
        .arg("id=1,prio=9,size=100,rate=10pps")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("streams[0].priority = 9: expected 0..=7"),
        "{stderr}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qos-loadgen"))
        .args(["run", "--duration", "200ms", "--quiet", "--stream"])
        .arg("id=3,prio=5,size=100,rate=50pps")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("id  prio  sent  recv"), "{stdout}");
}

/// Runs `plan` to a socket nobody reads (datagrams are counted when handed to the socket).
fn send_unread(plan: Plan) -> loadgen::SendReport {
    let rx = UdpSocket::bind(loopback()).expect("bind");
    let sent = Sender::new(plan, rx.local_addr().expect("addr"))
        .expect("socket")
        .run(&AtomicBool::new(false));
    drop(rx);
    sent
}

/// Datagrams handed to the socket (accepted or refused) by the streams `ids`.
fn handed(sent: &loadgen::SendReport, ids: std::ops::Range<u64>) -> u64 {
    sent.streams
        .iter()
        .filter(|s| ids.contains(&s.id))
        .map(|s| s.packets + s.error_count())
        .sum()
}

/// A Poisson stream's gaps are measured in active time: a gap reaching past an "on"
/// phase or a window continues in the next one (memoryless), so the count is the mean
/// rate times the active time. Before, a deadline falling into an off phase was moved to
/// the next "on" start and always sent there: 40 streams of 100/s over 0.5 s of active
/// time sent 2,835 (seed 11, on/off) instead of 2,000.
#[test]
fn poisson_streams_with_on_off_or_windows_send_the_rate_times_the_active_time() {
    let windows: Vec<String> = (0..25)
        .map(|i| format!("[{}, {}]", i * 40, i * 40 + 20))
        .collect();
    let plan = plan(&format!(
        r#"
        duration_ms = 1000
        seed = 11
        [[streams]]
        id = 0
        count = 40
        priority = 3
        size = 64
        rate = "100pps"
        pattern = "poisson"
        on_ms = 20
        off_ms = 20
        [[streams]]
        id = 100
        count = 40
        priority = 3
        size = 64
        rate = "100pps"
        pattern = "poisson"
        active = [{}]
        "#,
        windows.join(", ")
    ));
    assert!(plan.streams.iter().all(|s| s.active_ns() == 500_000_000));
    let sent = send_unread(plan);
    // Each group: 40 streams x 100/s x 0.5 s = 2,000, a Poisson count: sigma = 44.7.
    let (mean, tolerance) = (2000.0, 4.0 * 2000f64.sqrt());
    for (what, ids) in [("on/off", 0..40), ("windows", 100..140)] {
        let n = handed(&sent, ids);
        assert!(
            (n as f64 - mean).abs() <= tolerance,
            "{what}: {n} datagrams, expected {mean} +- {tolerance:.0}"
        );
    }
    // The sender kept up: it sent the deadlines it drew (but for a few, if a loaded
    // machine woke it late at the end of the last active stretch).
    let planned: u64 = sent.streams.iter().map(|s| s.planned).sum();
    let handed_all = handed(&sent, 0..1000);
    assert!(handed_all <= planned && planned - handed_all <= planned / 50);
}

/// A constant stream's gap also runs in active time: 30/s with 50 ms on / 50 ms off over
/// 1 s is 0.5 s active, 15 datagrams (33.3 ms apart in active time). Before, each on
/// phase started afresh and sent at 0 and 33.3 ms: 20.
#[test]
fn a_constant_stream_with_on_off_or_windows_sends_the_rate_times_the_active_time() {
    let windows: Vec<String> = (0..10)
        .map(|i| format!("[{}, {}]", i * 100, i * 100 + 50))
        .collect();
    let plan = plan(&format!(
        r#"
        duration_ms = 1000
        [[streams]]
        id = 1
        priority = 3
        size = 64
        rate = "30pps"
        on_ms = 50
        off_ms = 50
        [[streams]]
        id = 2
        priority = 3
        size = 64
        rate = "30pps"
        active = [{}]
        "#,
        windows.join(", ")
    ));
    let sent = send_unread(plan);
    for s in &sent.streams {
        assert_eq!(
            (s.packets + s.error_count(), s.planned),
            (15, 15),
            "stream {}",
            s.id
        );
    }
}

/// Stopped early, a stream's Mbit/s is over its active time before the stop: stream 200
/// is on 100 ms of every 500 (200 ms before a stop at ~700 ms), stream 300 starts at
/// 300 ms (~400 ms). Both send 8 Mbit/s while active. Before, the whole run's active
/// time capped at the stop (0.7 s) was used: 2.3 and 4.6 Mbit/s.
#[test]
fn stopped_early_a_streams_mbps_is_over_its_active_time_before_the_stop() {
    let plan = plan(
        r#"
        duration_ms = 20000
        [[streams]]
        id = 200
        priority = 0
        size = 1000
        rate = "8mbps"
        on_ms = 100
        off_ms = 400
        [[streams]]
        id = 300
        priority = 1
        size = 1000
        rate = "8mbps"
        start_ms = 300
        "#,
    );
    let stop = no_stop();
    let flag = Arc::clone(&stop);
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let out = loadgen::run(
        &plan,
        RunOptions::new(SinkConfig::new(loopback(), plan.duration)),
        stop,
    )
    .expect("runs");
    stopper.join().expect("joins");
    assert!(out.sent.stopped_early && out.sent.elapsed_ns < 2_000_000_000);
    for (row, stream) in out.report.streams.iter().zip(&plan.streams) {
        let active = stream.active_before(out.sent.elapsed_ns);
        assert_eq!(
            out.sent
                .streams
                .iter()
                .find(|s| s.id == row.id)
                .map(|s| s.active_ns),
            Some(active)
        );
        let expected = row.bytes as f64 * 8.0 / (active as f64 / 1e9) / 1e6;
        assert!((row.throughput_mbps - expected).abs() < 1e-9, "{row:?}");
        assert!(
            (7.2..=8.8).contains(&row.throughput_mbps),
            "stream {}: {} Mbit/s, sent at 8 while active",
            row.id,
            row.throughput_mbps
        );
    }
}

/// The totals line is over the run's length, not up to the last send: a 600 ms run with
/// one stream sending 100 x 1000 B in its first 100 ms is 1.333 Mbit/s over 0.6 s.
/// Before, the sender's elapsed time ended at its last send (0.099 s: 8.08 Mbit/s).
#[test]
fn the_totals_are_over_the_run_length_not_up_to_the_last_send() {
    let plan = plan(
        r#"
        duration_ms = 600
        [[streams]]
        id = 1
        priority = 7
        size = 1000
        rate = "8mbps"
        stop_ms = 100
        "#,
    );
    let out = run(&plan, None);
    assert_eq!(out.sent.elapsed_ns, 600_000_000);
    assert_eq!(out.report.duration_s, 0.6);
    // 100 datagrams are due; a sender woken more than 1 ms late for the last one (a
    // loaded machine) finds the window closed and does not send it.
    let bytes = out.report.total_bytes;
    assert!((95_000..=100_000).contains(&bytes), "{bytes} bytes arrived");
    let mbps = bytes as f64 * 8.0 / 0.6 / 1e6;
    assert!((out.report.total_mbps - mbps).abs() < 1e-9);
    assert!(
        out.report.table().contains(&format!(
            "total: {bytes} bytes in 0.600 s, {mbps:.3} Mbit/s"
        )),
        "{}",
        out.report.table()
    );
    assert!(loadgen::report::send_table(&out.sent).contains("sent for 0.600 s\n"));
}

/// On/off lengths past a day (the longest run) are errors naming the field; before,
/// `on_ms * 1_000_000` or `on_ns + off_ns` overflowed (a panic in debug builds, a wrap
/// in release). Lengths that are not whole ms are errors too (they were truncated).
#[test]
fn on_off_lengths_past_a_day_or_not_whole_ms_are_errors_naming_the_field() {
    let base =
        "duration_ms = 1000\n[[streams]]\nid = 1\npriority = 1\nsize = 100\nrate = \"10pps\"\n";
    for (on, off, field) in [
        (1u64 << 58, 10, "streams[0].on_ms"),
        (18_000_000_000_000, 18_000_000_000_000, "streams[0].on_ms"),
        (10, u64::MAX, "streams[0].off_ms"),
        (86_400_001, 10, "streams[0].on_ms"),
        (0, 10, "streams[0].on_ms"),
    ] {
        let text = format!("{base}on_ms = {on}\noff_ms = {off}\n");
        let err = Scenario::from_toml("t", &text)
            .expect("TOML of the right shape")
            .validate()
            .expect_err(field);
        assert_eq!(err.field(), Some(field), "{err}");
        assert!(
            err.to_string()
                .ends_with("expected a length in 1..=86400000 ms"),
            "{err}"
        );
    }
    let longest = plan(&format!("{base}on_ms = 86400000\noff_ms = 86400000\n"));
    assert_eq!(longest.streams[0].active_ns(), 1_000_000_000);
    // The command-line forms.
    let err = "id=1,prio=1,size=100,rate=1pps,on=1.9ms/off=5ms"
        .parse::<loadgen::StreamSpec>()
        .expect_err("1.9 ms");
    assert!(err.contains("whole number of ms"), "{err}");
    let args = StreamArgs {
        scenario: None,
        streams: vec!["id=1,prio=1,size=100,rate=1pps".parse().expect("spec")],
        target: None,
        duration: Some(Duration::from_micros(1900)),
        seed: None,
        pacing: None,
    };
    assert_eq!(
        cli_plan(&args).expect_err("1.9 ms").field(),
        Some("--duration")
    );
}

/// `run` refuses more streams than its sink tracks: their datagrams would arrive, be
/// dropped as `stream_limit` and show as lost. Before, the run went ahead.
#[test]
fn run_refuses_more_streams_than_its_sink_tracks() {
    let limit = loadgen::sink::MAX_STREAMS as u64;
    let text = format!(
        "duration_ms = 100\n[[streams]]\nid = 0\ncount = {}\npriority = 1\nsize = 32\nrate = \"1pps\"\n",
        limit + 1
    );
    let Err(err) = loadgen::run(
        &plan(&text),
        RunOptions::new(SinkConfig::new(loopback(), Duration::from_millis(100))),
        no_stop(),
    ) else {
        panic!("a run of {} streams went ahead", limit + 1);
    };
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        format!(
            "streams = {} streams: expected at most {limit} streams in `run` (the most its sink tracks; use `send` and several sinks for more)",
            limit + 1
        )
    );
}

/// A sender that cannot keep up says so: 10 million datagrams/s for 200 ms is 2,000,000
/// planned, far more than one thread can send; the report and the send table say how
/// many of them left. Before, nothing did.
#[test]
fn a_sender_that_cannot_keep_up_says_how_far_it_fell_short() {
    let plan = plan(
        r#"
        duration_ms = 200
        [[streams]]
        id = 1
        priority = 7
        size = 32
        rate = "10000kpps"
        "#,
    );
    let out = run(&plan, None);
    let s = &out.sent.streams[0];
    let handed = s.packets + s.error_count();
    // The deadlines before the sender's last clock reading in the run, or at least those
    // more than 10 ms before the end (10 deadlines a microsecond).
    assert!((1_900_000..=2_000_000).contains(&s.planned), "{s:?}");
    assert!(handed < s.planned / 2, "{s:?}");
    assert_eq!(s.missed(), s.planned - handed);
    assert_eq!(out.report.streams[0].planned, Some(s.planned));
    let line = format!(
        "sender fell short: {handed} of {} planned datagrams (the host could not keep up)\n",
        s.planned
    );
    assert!(out.report.table().contains(&line), "{}", out.report.table());
    assert!(loadgen::report::send_table(&out.sent).contains(&line));
    // A sender that keeps up sends what it planned and prints no such line.
    let easy = run(
        &self::plan(
            "duration_ms = 300\n[[streams]]\nid = 1\npriority = 7\nsize = 64\nrate = \"200pps\"\n",
        ),
        None,
    );
    // 60 deadlines; the last two (290 and 295 ms) are cut, not missed, if the sender
    // wakes for them only after the run's end (a loaded machine). A sender starved for
    // longer falls short, and the table then says so: the line appears exactly when
    // fewer were sent than planned.
    let row = &easy.report.streams[0];
    let (planned, sent) = (row.planned.unwrap(), row.sent.unwrap());
    assert!((58..=60).contains(&planned) && sent <= planned, "{row:?}");
    assert_eq!(
        easy.report.table().contains("fell short"),
        sent < planned,
        "{}",
        easy.report.table()
    );
}

/// Refused sends show under the `run` table by kind; before, only the JSON had a count.
#[test]
fn refused_sends_show_by_kind_under_the_run_table() {
    let plan = plan(
        "duration_ms = 300\n[[streams]]\nid = 1\npriority = 0\nsize = 64\nrate = \"200pps\"\n",
    );
    let closed = UdpSocket::bind(loopback()).expect("bind");
    let target = closed.local_addr().expect("addr");
    drop(closed);
    let mut options = RunOptions::new(SinkConfig::new(loopback(), plan.duration));
    options.target = Some(target);
    let out = loadgen::run(&plan, options, no_stop()).expect("runs");
    let s = &out.sent.streams[0];
    let refused = s.errors.get("ConnectionRefused").copied().unwrap_or(0);
    assert!(refused > 0, "{s:?}");
    assert_eq!(out.report.send_errors, s.errors);
    assert!(
        out.report.table().contains(&format!(
            "refused by the sender's socket (not in sent): ConnectionRefused={refused}\n"
        )),
        "{}",
        out.report.table()
    );
    // Refused datagrams were handed to the socket: not a shortfall (60 deadlines, up to
    // two cut at the end: see the test above).
    assert!((58..=60).contains(&s.planned), "{s:?}");
    assert!(s.packets + refused <= s.planned, "{s:?}");
    assert_eq!(
        out.report.table().contains("fell short"),
        s.packets + refused < s.planned
    );
}

/// `sink --duration 0` is refused like `send`/`run`'s, and a `--json` path that cannot be
/// written fails before the run rather than after it (exit 1, naming the file).
#[test]
fn a_zero_sink_duration_and_an_unwritable_json_path_fail_before_the_run() {
    let bin = env!("CARGO_BIN_EXE_qos-loadgen");
    let out = std::process::Command::new(bin)
        .args(["sink", "--sink", "127.0.0.1:0", "--duration", "0"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--duration = 0: expected a run length > 0"),
        "{stderr}"
    );

    let json = temp_path("no-such-dir").join("report.json");
    for args in [
        vec!["sink", "--sink", "127.0.0.1:0", "--duration", "30s"],
        vec![
            "run",
            "--duration",
            "30s",
            "--stream",
            "id=1,prio=1,size=64,rate=1pps",
        ],
        vec![
            "send",
            "--target",
            "127.0.0.1:9",
            "--duration",
            "30s",
            "--stream",
            "id=1,prio=1,size=64,rate=1pps",
        ],
    ] {
        let started = loadgen::clock::Clock::start();
        let out = std::process::Command::new(bin)
            .args(&args)
            .arg("--json")
            .arg(&json)
            .output()
            .expect("runs");
        assert!(started.elapsed_ns() < 10_000_000_000, "{args:?} ran");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{}: cannot write", json.display())),
            "{stderr}"
        );
    }
}

/// An `.hlog` that fails mid-run (a 6 KB file-size limit, SIGXFSZ ignored, so writes
/// past it fail as on a full disk) no longer stops the sink: the report still counts
/// every datagram (no loss), is printed, and the command then exits 1 naming the
/// `.hlog`; the log holds only whole lines. Before, the sink stopped receiving at the
/// failure and the report was lost.
#[test]
fn an_hlog_failing_mid_run_keeps_the_counts_and_the_report() {
    let hlog = temp_path("full.hlog");
    let _ = std::fs::remove_file(&hlog);
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 6; exec \"$@\"")
        .arg("loadgen")
        .arg(env!("CARGO_BIN_EXE_qos-loadgen"))
        .args(["run", "--duration", "2s", "--interval", "20ms", "--quiet"])
        .arg("--hlog")
        .arg(&hlog)
        .args(["--stream", "id=1,prio=7,size=100,rate=200pps"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains(".hlog is incomplete"), "{stderr}");
    // The stream's row: 400 sent (200/s for 2 s, give or take the last), all received.
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .split_whitespace()
        .collect();
    let (sent, recv): (u64, u64) = (row[2].parse().unwrap(), row[3].parse().unwrap());
    assert!((380..=400).contains(&sent), "{stdout}");
    assert_eq!(recv, sent, "{stdout}");
    let size = std::fs::metadata(&hlog).unwrap().len();
    assert!(size <= 6 * 1024, "{size}");
    let intervals = qos_control::hlog::read_hlog(&hlog).expect("whole lines only");
    assert!(!intervals.is_empty());
    let _ = std::fs::remove_file(&hlog);
}

/// `qos-loadgen run` with `--json json` on 127.0.0.1: (exit code, stderr), or a
/// failure if it has not exited within 15 s (it is killed then).
fn loadgen_json(json: &std::path::Path) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qos-loadgen"))
        .args([
            "run",
            "--duration",
            "300ms",
            "--quiet",
            "--sink",
            "127.0.0.1:0",
        ])
        .args(["--stream", "id=1,prio=7,size=100,rate=100pps", "--json"])
        .arg(json)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn qos-loadgen");
    for _ in 0..1_500 {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            return (status.code(), err);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("qos-loadgen did not exit within 15 s");
}

fn mkfifo(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

/// Control-API red team: `--json` naming a FIFO nobody reads hung qos-loadgen in
/// `open` before the run, and SIGTERM or SIGINT could not end it (only SIGKILL). It
/// is refused at once; a FIFO with a reader gets the whole report.
#[test]
fn a_json_report_to_a_fifo_is_refused_without_a_reader_and_written_with_one() {
    let fifo = temp_path("report.fifo");
    mkfifo(&fifo);
    let (code, err) = loadgen_json(&fifo);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nobody reads"), "{err}");
    // With a reader: it must see the report, not the end of its input at the check.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::fs::File::open(&fifo).expect("open for reading"),
                &mut text,
            )
            .expect("read");
            text
        })
    };
    let mut outcome = (None, String::new());
    for _ in 0..100 {
        outcome = loadgen_json(&fifo);
        if outcome.0 == Some(0) {
            break;
        }
        // The reader has not opened its end yet.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(outcome.0, Some(0), "{}", outcome.1);
    let text = reader.join().expect("reader");
    let report: serde_json::Value = serde_json::from_str(&text).expect("a whole JSON report");
    assert!(report.get("streams").is_some(), "{text}");
    let _ = std::fs::remove_file(&fifo);
}
