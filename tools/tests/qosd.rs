//! qosd end to end on loopback: classification with priority caps, hash-balanced and
//! broadcast routing, malformed datagrams counted, SIGHUP with a good and a bad file,
//! SIGTERM drain accounting per stream, the control API of a running qosd, and GSO
//! batches through the GRO receive and GSO send paths, datagrams copied alone once the
//! receive buffer pool is held. Real UDP sockets, the real binary where signals
//! matter; every load is bounded.
#![allow(clippy::disallowed_methods)] // wall-clock waits and pacing in tests

mod qosd_common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::Duration;

use qos_tools::config::GatewayConfig;
use qos_tools::gateway::Gateway;
use qosd_common::*;

fn start(text: &str) -> Gateway {
    let config = GatewayConfig::from_toml(text).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
    Gateway::start(config).expect("gateway starts")
}

fn sender() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind sender")
}

/// Sends `n` datagrams in bursts of 50 with a pause, so the gateway's sockets never
/// overflow (the tests count every datagram).
fn send_paced(
    tx: &UdpSocket,
    to: std::net::SocketAddr,
    n: u64,
    mut make: impl FnMut(u64) -> Vec<u8>,
) {
    for i in 0..n {
        tx.send_to(&make(i), to).expect("send");
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn capped_source_cannot_claim_priority_7() {
    let sink = Sink::bind();
    let gw = start(&config_text(
        &[sink.addr],
        200,
        "",
        "[[rule]]\nname = \"guests\"\nsource = \"127.0.0.0/8\"\nloadgen = true\nmax_priority = 3\n\
         stream = \"header\"\nroute = { to = \"u0\" }\n",
    ));
    let to = gw.listen_addrs()[0];
    let tx = sender();
    send_paced(&tx, to, 300, |i| datagram(77, 7, i, 200));
    let got = sink.drain(Duration::from_millis(300), Duration::from_secs(10));
    assert_eq!(
        got.get(&77),
        Some(&300),
        "every datagram forwarded: {got:?}"
    );
    let stats = gw
        .plane()
        .and_then(|p| p.with_dataplane(|dp| dp.stats()))
        .expect("running");
    let enq = |p: usize| stats.iter().map(|w| w.priorities[p].enqueued).sum::<u64>();
    assert_eq!(enq(7), 0, "nothing scheduled at the claimed priority 7");
    assert_eq!(enq(3), 300, "scheduled at the cap");
    let acct = gw.account(false);
    assert_eq!(acct.streams.len(), 1);
    assert_eq!(
        (acct.streams[0].stream_id, acct.streams[0].priority),
        (77, 3)
    );
    let report = gw.stop().expect("stop");
    assert!(report.conserved && report.dataplane_conserved, "{report:?}");
}

#[test]
fn hash_balanced_routing_keeps_each_flow_on_one_upstream() {
    let sinks: Vec<Sink> = (0..3).map(|_| Sink::bind()).collect();
    let addrs: Vec<_> = sinks.iter().map(|s| s.addr).collect();
    let gw = start(&config_text(
        &addrs,
        500,
        "",
        "[[rule]]\nname = \"lb\"\nloadgen = true\nstream = \"header\"\n\
         route = { balance = [\"u0\", \"u1\", \"u2\"] }\n",
    ));
    let to = gw.listen_addrs()[0];
    // 40 flows (own source port each), 25 datagrams each, interleaved.
    let txs: Vec<UdpSocket> = (0..40).map(|_| sender()).collect();
    for seq in 0..25u64 {
        for (id, tx) in txs.iter().enumerate() {
            tx.send_to(&datagram(id as u64, 4, seq, 100), to)
                .expect("send");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let handles: Vec<_> = sinks
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || s.drain(Duration::from_millis(400), Duration::from_secs(10)))
        })
        .collect();
    let per_sink: Vec<BTreeMap<u64, u64>> = handles
        .into_iter()
        .map(|h| h.join().expect("sink"))
        .collect();
    for id in 0..40u64 {
        let holders: Vec<(usize, u64)> = per_sink
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.get(&id).map(|&n| (i, n)))
            .collect();
        assert_eq!(
            holders.len(),
            1,
            "flow {id} on exactly one upstream: {holders:?}"
        );
        assert_eq!(holders[0].1, 25, "flow {id} complete there");
    }
    for (i, m) in per_sink.iter().enumerate() {
        assert!(
            m.len() >= 3,
            "upstream {i} got {} of 40 flows: balancing spreads",
            m.len()
        );
    }
    drop(gw);
}

#[test]
fn broadcast_reaches_every_upstream() {
    let sinks: Vec<Sink> = (0..3).map(|_| Sink::bind()).collect();
    let addrs: Vec<_> = sinks.iter().map(|s| s.addr).collect();
    let gw = start(&config_text(
        &addrs,
        500,
        "",
        "[[rule]]\nname = \"copy\"\nroute = { broadcast = [\"u0\", \"u1\", \"u2\"] }\n",
    ));
    let to = gw.listen_addrs()[0];
    let tx = sender();
    send_paced(&tx, to, 200, |i| datagram(5, 6, i, 300));
    let handles: Vec<_> = sinks
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || s.drain(Duration::from_millis(400), Duration::from_secs(10)))
        })
        .collect();
    for h in handles {
        let got = h.join().expect("sink");
        assert_eq!(
            got.get(&5),
            Some(&200),
            "every upstream gets every datagram: {got:?}"
        );
    }
    let report = gw.stop().expect("stop");
    assert_eq!((report.received, report.forwarded), (200, 200));
    assert!(report.conserved, "{report:?}");
}

#[test]
fn s9_malformed_datagrams_are_counted_by_reason_not_fatal() {
    let sink = Sink::bind();
    let gw = start(&config_text(
        &[sink.addr],
        500,
        "max_datagram = 1000",
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n",
    ));
    let to = gw.listen_addrs()[0];
    let tx = sender();
    let good = datagram(1, 5, 0, 100);
    let mut bad_version = good.clone();
    bad_version[4] = 9;
    let mut bad_priority = good.clone();
    bad_priority[5] = 200;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("oversize", datagram(1, 5, 0, 1001)),
        ("truncated", good[..20].to_vec()),
        ("bad_version", bad_version),
        ("bad_priority", bad_priority),
        (
            "unclassified",
            b"plain datagram, no header, no rule for it".to_vec(),
        ),
    ];
    for (_, bytes) in &cases {
        for _ in 0..3 {
            tx.send_to(bytes, to).expect("send");
        }
    }
    send_paced(&tx, to, 10, |i| datagram(1, 5, i, 100));
    let got = sink.drain(Duration::from_millis(300), Duration::from_secs(10));
    assert_eq!(got.get(&1), Some(&10), "good datagrams still flow: {got:?}");
    let report = gw.stop().expect("stop");
    for (reason, _) in &cases {
        assert_eq!(
            report.dropped.get(*reason),
            Some(&3),
            "{reason}: {:?}",
            report.dropped
        );
    }
    assert_eq!(report.received, 3 * cases.len() as u64 + 10);
    assert!(report.conserved, "{report:?}");
}

/// qosd red team: each stream id a sender chose kept its own account for good (RSS 12
/// -> 367 MB for 1,000,000 ids, and a 118 MB drain report). With `stream_accounts`,
/// the ids past the limit share one overflow account: the report stays small, the
/// totals exact.
#[test]
fn s11_sender_chosen_stream_ids_cannot_grow_the_accounts_past_their_limit() {
    let sink = Sink::bind();
    let gw = start(&config_text(
        &[sink.addr],
        500,
        // A flow table that never fills (a full one drops `flow_table_full` before any
        // account: under load that made this test's counts vary).
        "flow_table = 4096\nstream_accounts = 100",
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n",
    ));
    let to = gw.listen_addrs()[0];
    let tx = sender();
    send_paced(&tx, to, 2_000, |i| datagram(1_000 + i, 3, 0, 100));
    let got = sink.drain(Duration::from_millis(300), Duration::from_secs(10));
    let metrics = http(gw.api_addr(), "GET", "/metrics", &[], b"").1;
    let report = gw.stop().expect("stop");
    assert!(report.conserved, "{:?}", report.dropped);
    assert_eq!(report.received, 2_000);
    let overflow: Vec<_> = report.streams.iter().filter(|s| s.overflow).collect();
    assert_eq!(overflow.len(), 1, "one overflow account");
    assert_eq!(report.streams.len(), 101, "100 accounts and the overflow");
    let own: u64 = report
        .streams
        .iter()
        .filter(|s| !s.overflow)
        .map(|s| s.received)
        .sum();
    assert_eq!((own, overflow[0].received), (100, 1_900));
    assert_eq!(
        report
            .streams
            .iter()
            .map(|s| s.forwarded + s.dropped_total)
            .sum::<u64>(),
        2_000
    );
    assert_eq!(got.values().sum::<u64>(), report.forwarded);
    assert_eq!(
        metric(&metrics, "qosd_stream_accounts{}"),
        Some(101.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "qosd_stream_accounts_overflowed_total{}"),
        Some(1_900.0)
    );
}

/// C4: SIGHUP and the control API's `POST /reload` re-read the file; a good one
/// applies, a bad one changes nothing and says why (the API in its answer).
#[test]
fn sighup_and_post_reload_apply_a_good_file_and_a_bad_one_changes_nothing() {
    let dir = tempdir("sighup");
    let (a, b) = (Sink::bind(), Sink::bind());
    let path = dir.join("qosd.toml");
    let state = format!("state_dir = \"{}\"\n", dir.join("state").display());
    let write = |version: u64, upstream: &str, extra: &str| {
        let text = config_text(
            &[a.addr, b.addr],
            100,
            "",
            &format!(
                "[[rule]]\nname = \"all\"\nstream = \"header\"\nloadgen = true\nroute = {{ to = \"{upstream}\" }}\n{extra}"
            ),
        )
        .replace("[control]\n", &format!("[control]\n{state}"))
        .replace("version = 1\n", &format!("version = {version}\n"));
        std::fs::write(&path, text).expect("write config");
    };
    write(1, "u0", "");
    let mut q = Qosd::spawn(&path);
    let tx = sender();
    send_paced(&tx, q.listen, 20, |i| datagram(3, 4, i, 100));
    assert_eq!(
        a.drain(Duration::from_millis(300), Duration::from_secs(5))
            .get(&3),
        Some(&20)
    );

    write(2, "u1", "");
    q.signal("HUP");
    assert!(
        q.wait_line("reloaded", Duration::from_secs(10)).is_some(),
        "good file reloaded"
    );
    send_paced(&tx, q.listen, 20, |i| datagram(3, 4, 100 + i, 100));
    assert_eq!(
        b.drain(Duration::from_millis(300), Duration::from_secs(5))
            .get(&3),
        Some(&20)
    );
    assert!(
        a.drain(Duration::from_millis(100), Duration::from_secs(1))
            .is_empty()
    );
    let (_, status) = http(q.api, "GET", "/status", &[], b"");
    assert_eq!(policy_version(&status), 2, "{status}");

    // Unknown key: refused whole; routing and policy stay.
    write(3, "u0", "bogus_key = 1\n");
    q.signal("HUP");
    let refused = q
        .wait_line("refused", Duration::from_secs(10))
        .expect("bad file refused");
    assert!(
        refused.contains("bogus_key"),
        "the reason names the key: {refused}"
    );
    send_paced(&tx, q.listen, 20, |i| datagram(3, 4, 200 + i, 100));
    assert_eq!(
        b.drain(Duration::from_millis(300), Duration::from_secs(5))
            .get(&3),
        Some(&20)
    );
    let (_, metrics) = http(q.api, "GET", "/metrics", &[], b"");
    assert_eq!(
        metric(&metrics, "qosd_config_reloads_total{outcome=\"applied\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "qosd_config_reloads_total{outcome=\"rejected\"}"),
        Some(1.0)
    );
    let (_, status) = http(q.api, "GET", "/status", &[], b"");
    assert_eq!(policy_version(&status), 2, "{status}");

    // The same through the control API, which answers with the outcome.
    write(4, "u0", "");
    let (code, body) = http(q.api, "POST", "/reload", &[], b"");
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["policy_version"], 4, "{body}");
    send_paced(&tx, q.listen, 20, |i| datagram(3, 4, 300 + i, 100));
    assert_eq!(
        a.drain(Duration::from_millis(300), Duration::from_secs(5))
            .get(&3),
        Some(&20),
        "routed to u0 again"
    );
    write(5, "u1", "bogus_key = 1\n");
    let (code, body) = http(q.api, "POST", "/reload", &[], b"");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("bogus_key"),
        "the answer names the key: {body}"
    );
    let (_, status) = http(q.api, "GET", "/status", &[], b"");
    assert_eq!(policy_version(&status), 4, "{status}");
    let (_, metrics) = http(q.api, "GET", "/metrics", &[], b"");
    assert_eq!(
        metric(&metrics, "qosd_config_reloads_total{outcome=\"applied\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&metrics, "qosd_config_reloads_total{outcome=\"rejected\"}"),
        Some(2.0)
    );

    let (report, exit) = q.terminate();
    assert!(exit.success(), "{exit:?}");
    assert!(report.conserved, "{report:?}");
    let audit = std::fs::read_to_string(dir.join("state/audit.jsonl")).expect("audit log");
    // Each outcome once per trigger, in order: SIGHUP's then the API's.
    let reloads: Vec<(String, String)> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit line is JSON"))
        .filter_map(|v| {
            let event = v["event"].as_str()?;
            event.starts_with("config.").then(|| {
                let trigger = v["trigger"].as_str().unwrap_or("(none)");
                (event.to_owned(), trigger.to_owned())
            })
        })
        .collect();
    let expected = [
        ("config.reloaded", "sighup"),
        ("config.rejected", "sighup"),
        ("config.reloaded", "http"),
        ("config.rejected", "http"),
    ]
    .map(|(e, t)| (e.to_owned(), t.to_owned()));
    assert_eq!(reloads, expected, "{audit}");
    let verdict = qos_control::audit::verify(dir.join("state/audit.jsonl")).expect("verify");
    assert!(verdict.is_ok(), "audit chain intact: {verdict:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_drains_and_accounts_for_every_datagram_per_stream() {
    let dir = tempdir("sigterm");
    let sink = Sink::bind();
    let path = dir.join("qosd.toml");
    // 5 Mbit/s against about 16 offered: the greedy streams overflow their queues (or
    // CoDel trims them); the light P7 one, inside its share, does not.
    std::fs::write(
        &path,
        config_text(
            &[sink.addr],
            5,
            "",
            "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n",
        ),
    )
    .expect("write");
    let q = Qosd::spawn(&path);
    let to = q.listen;
    let sink_thread = std::thread::spawn(move || {
        sink.drain(Duration::from_millis(1500), Duration::from_secs(30))
    });
    let streams: [(u64, u8, usize); 4] =
        [(10, 7, 200), (11, 4, 1200), (12, 4, 1200), (13, 0, 1200)];
    let mut sent: BTreeMap<u64, u64> = BTreeMap::new();
    let txs: Vec<UdpSocket> = streams.iter().map(|_| sender()).collect();
    // 1.5 s at about 3x the link for the greedy streams.
    for _ in 0..150 {
        for ((id, prio, size), tx) in streams.iter().zip(&txs) {
            let n = if *id == 10 { 1 } else { 6 };
            for _ in 0..n {
                let seq = *sent.get(id).unwrap_or(&0);
                tx.send_to(&datagram(*id, *prio, seq, *size), to)
                    .expect("send");
                *sent.entry(*id).or_insert(0) += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (report, exit) = q.terminate();
    assert!(exit.success(), "qosd exits 0 on SIGTERM: {exit:?}");
    let got = sink_thread.join().expect("sink");
    assert!(report.conserved && report.dataplane_conserved, "{report:?}");
    // SIGTERM drains: what was queued went out, nothing was thrown away at the stop
    // (a discarding stop would still balance, with `shutdown` drops).
    assert_eq!(report.dropped.get("shutdown"), None, "{report:?}");
    let mut drops = 0;
    for (id, n) in &sent {
        let acct = report
            .streams
            .iter()
            .find(|s| s.stream_id == *id)
            .unwrap_or_else(|| panic!("stream {id} in the report"));
        let received = got.get(id).copied().unwrap_or(0);
        assert_eq!(
            acct.received, *n,
            "stream {id}: qosd read every datagram sent"
        );
        assert_eq!(
            *n,
            received + acct.dropped_total,
            "stream {id}: sent {n} = received {received} + dropped {:?}",
            acct.dropped
        );
        assert_eq!(acct.forwarded, received, "stream {id}");
        drops += acct.dropped_total;
    }
    assert!(drops > 0, "the overload made counted drops");
    assert_eq!(
        got.get(&10),
        sent.get(&10),
        "the light P7 stream lost nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Operator red team: a reload that moved a flow to another rule at the same
/// priority routed it by the new rule, but its datagrams stayed counted under the old
/// one (1,200 under `default`, none under `bulk`). Each rule's account gets its own.
#[test]
fn s11_a_flow_a_reload_moves_to_another_rule_is_counted_under_it() {
    let dir = tempdir("rehome");
    let (a, b) = (Sink::bind(), Sink::bind());
    let path = dir.join("qosd.toml");
    let write = |version: u64, bulk: bool| {
        let bulk = if bulk {
            "[[rule]]\nname = \"bulk\"\nsource = \"127.0.0.1\"\npriority = 2\nroute = { to = \"u1\" }\n"
        } else {
            ""
        };
        let rules = format!(
            "{bulk}[[rule]]\nname = \"default\"\npriority = 2\nroute = {{ to = \"u0\" }}\n"
        );
        let text = config_text(&[a.addr, b.addr], 100, "", &rules)
            .replace("version = 1\n", &format!("version = {version}\n"));
        std::fs::write(&path, text).expect("write config");
    };
    write(1, false);
    let mut q = Qosd::spawn(&path);
    let tx = sender();
    send_paced(&tx, q.listen, 100, |_| vec![7u8; 64]);
    assert_eq!(
        a.drain(Duration::from_millis(300), Duration::from_secs(5))
            .values()
            .sum::<u64>(),
        100
    );
    write(2, true);
    q.signal("HUP");
    assert!(q.wait_line("reloaded", Duration::from_secs(10)).is_some());
    send_paced(&tx, q.listen, 60, |_| vec![7u8; 64]);
    assert_eq!(
        b.drain(Duration::from_millis(300), Duration::from_secs(5))
            .values()
            .sum::<u64>(),
        60
    );
    let (report, exit) = q.terminate();
    assert!(exit.success() && report.conserved, "{report:?}");
    let by_rule = |rule: &str| -> u64 {
        report
            .streams
            .iter()
            .filter(|s| s.rule == rule)
            .map(|s| s.received)
            .sum()
    };
    assert_eq!(
        (by_rule("default"), by_rule("bulk")),
        (100, 60),
        "{report:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A qosd config on loopback with a state directory (audit log, `.hlog`), no metrics.db.
fn state_config(dir: &std::path::Path, sink: std::net::SocketAddr) -> std::path::PathBuf {
    let path = dir.join("qosd.toml");
    let state = format!(
        "state_dir = \"{}\"\nmetrics_db = false\n",
        dir.join("state").display()
    );
    let rule =
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n";
    let text =
        config_text(&[sink], 10, "", rule).replace("[control]\n", &format!("[control]\n{state}"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Health red team: a torn tail of the audit log, cut and recorded as
/// `audit.torn_tail` when qosd opened the log, never reached its JSON logs.
#[test]
fn o3_a_torn_audit_tail_cut_at_start_is_logged() {
    let dir = tempdir("torn-tail");
    let sink = Sink::bind();
    let path = state_config(&dir, sink.addr);
    let (report, exit) = Qosd::spawn(&path).terminate();
    assert!(exit.success() && report.conserved, "{report:?}");
    let audit = dir.join("state/audit.jsonl");
    let records = std::fs::read_to_string(&audit)
        .expect("audit log")
        .lines()
        .count();
    assert!(records > 0);
    // What a crash in the middle of the next record leaves.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&audit)
        .expect("open");
    std::io::Write::write_all(&mut f, format!("{{\"seq\":{records},\"ts").as_bytes())
        .expect("append");
    drop(f);
    let mut q = Qosd::spawn(&path);
    let line = q
        .wait_line("audit.torn_tail", Duration::from_secs(10))
        .expect("the repair is logged");
    assert!(
        line.contains("\"bytes\":") && line.contains("\"offset\":"),
        "{line}"
    );
    let (_, exit) = q.terminate();
    assert!(exit.success());
    let verdict = qos_control::audit::verify(&audit).expect("verify");
    assert!(verdict.is_ok(), "{verdict:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Health red team: under a file-size limit (`ulimit -f`), the audit append that
/// crossed it raised SIGXFSZ and killed qosd (exit 153, no accounting); the audit
/// log's EFBIG handling never ran. qosd now handles the signal: the append fails,
/// counted and warned, and qosd goes on.
#[test]
fn o5_a_file_size_limit_fails_audit_appends_instead_of_killing_qosd() {
    let dir = tempdir("fsize");
    let sink = Sink::bind();
    let path = state_config(&dir, sink.addr);
    // 64 KiB: the start fits, a few hundred policy records do not.
    let q = Qosd::spawn_under("ulimit -f 64", &path);
    let mut failed = false;
    for version in 2..2_000u64 {
        let doc = format!("version = {version}\npreset = \"default\"\ndisconnect = false\n");
        let (code, body) = http(q.api, "POST", "/policy", &[], doc.as_bytes());
        assert!(
            code == 200,
            "POST /policy v{version}: {code} {body} (0: no answer)"
        );
        let (_, health) = http(q.api, "GET", "/healthz", &[], b"");
        if health.contains("audit") {
            failed = true;
            break;
        }
    }
    assert!(failed, "the audit log reached the limit");
    let mut q = q;
    assert!(
        q.child.try_wait().expect("try_wait").is_none(),
        "qosd runs on"
    );
    let (_, metrics) = http(q.api, "GET", "/metrics", &[], b"");
    assert!(
        metric(&metrics, "qos_audit_records_total{outcome=\"failed\"}").unwrap_or(0.0) >= 1.0,
        "counted"
    );
    let (report, exit) = q.terminate();
    assert!(exit.success(), "{exit:?}");
    assert!(report.conserved, "{report:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Before, a second SIGTERM during the drain did nothing: an operator pressing Ctrl-C
/// twice waited out `drain_ms` (up to 10 minutes). Now it cuts the drain short: the
/// rest is dropped `closed`, the report says `drain_cut` and still balances.
#[test]
fn s11_a_second_sigterm_cuts_the_drain_short_and_accounts_for_the_rest() {
    let dir = tempdir("second-sigterm");
    let sink = Sink::bind();
    let path = dir.join("qosd.toml");
    // 3,000 datagrams of 1,000 bytes behind 1 Mbit/s: a 24 s drain (no CoDel to trim
    // it), under a 120 s drain_ms.
    let text = config_text(
        &[sink.addr],
        1,
        "",
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n",
    )
    .replace("drain_ms = 3000", "drain_ms = 120000")
    .replace("aqm = true", "aqm = false");
    std::fs::write(&path, text).expect("write");
    let mut q = Qosd::spawn(&path);
    let tx = sender();
    for seq in 0..1_500 {
        for id in [21u64, 22] {
            tx.send_to(&datagram(id, 4, seq, 1_000), q.listen)
                .expect("send");
        }
        if seq % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Until qosd has read them all (or gives up reading: the kernel may drop some).
    let mut last = 0.0;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let (_, metrics) = http(q.api, "GET", "/metrics", &[], b"");
        let now = metric(&metrics, "qosd_datagrams_received_total{}").unwrap_or(0.0);
        if now == last && now > 0.0 {
            break;
        }
        last = now;
    }
    assert!(
        last > 2_000.0,
        "qosd read most of the 3,000 datagrams ({last})"
    );
    q.signal("TERM");
    q.wait_line("qosd: stopping: draining", Duration::from_secs(10))
        .expect("qosd says it drains");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        q.child.try_wait().expect("try_wait").is_none(),
        "the drain is under way"
    );
    q.signal("TERM");
    q.wait_line("second signal", Duration::from_secs(10))
        .expect("qosd says the drain is cut");
    let (report, exit) = q.finish(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
    assert!(report.drain_cut, "{report:?}");
    assert!(report.conserved && report.dataplane_conserved, "{report:?}");
    let closed = report.dropped.get("closed").copied().unwrap_or(0);
    // The link's burst and 125 datagrams a second since the first arrived (a second or
    // two on a loaded host) went out before the cut: most were still queued.
    assert!(
        closed as f64 > last / 2.0,
        "{closed} dropped at the cut of {last}: {report:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn control_api_of_a_running_qosd_metrics_healthz_and_a_signed_policy() {
    let dir = tempdir("api");
    let (signing, verifying) = qos_control::policy::generate_keypair().expect("keys");
    let key_path = dir.join("policy.pub");
    qos_control::policy::signing::write_verifying_key(&key_path, &verifying).expect("write key");
    let sink = Sink::bind();
    let text = config_text(
        &[sink.addr],
        100,
        "",
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n",
    )
    .replace(
        "[control]\n",
        &format!("[control]\nverifying_key = \"{}\"\n", key_path.display()),
    );
    let gw = start(&text);
    let api = gw.api_addr();
    let tx = sender();
    send_paced(&tx, gw.listen_addrs()[0], 100, |i| datagram(42, 6, i, 500));
    let _ = sink.drain(Duration::from_millis(300), Duration::from_secs(5));
    if let Some(p) = gw.plane() {
        p.tick_now();
    }

    let (code, metrics) = http(api, "GET", "/metrics", &[], b"");
    assert_eq!(code, 200);
    assert_eq!(
        metric(&metrics, "qosd_datagrams_received_total{}"),
        Some(100.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "qosd_datagrams_forwarded_total{}"),
        Some(100.0)
    );
    assert_eq!(
        metric(&metrics, "qosd_flow_lookups_total{result=\"miss\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "qosd_flow_lookups_total{result=\"hit\"}"),
        Some(99.0)
    );
    // The per-stream families come from the workers' periodic stream reports: wait for
    // one that covers every packet (bounded).
    let enq6 = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("qos_packets_enqueued_total{") && l.contains("priority=\"6\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut metrics = metrics;
    while enq6(&metrics) != 100.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(p) = gw.plane() {
            p.tick_now();
        }
        metrics = http(api, "GET", "/metrics", &[], b"").1;
    }
    assert_eq!(
        enq6(&metrics),
        100.0,
        "the dataplane's families are there too"
    );
    if std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok()
    {
        let f = dir.join("metrics.txt");
        std::fs::write(&f, &metrics).expect("write");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", f.display()))
            .output()
            .expect("promtool");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains("error"), "promtool: {text}");
    }

    let (code, _) = http(api, "GET", "/healthz", &[], b"");
    assert_eq!(code, 200, "healthy while running");

    let doc = b"version = 2\npreset = \"default\"\ndisconnect = false\n[link]\nrate_mbps = 80\nburst_bytes = 64000\n";
    let (code, body) = http(api, "POST", "/policy", &[], doc);
    assert_eq!(code, 403, "unsigned policy refused: {body}");
    let sig = qos_control::policy::sign(doc, &signing);
    let (code, body) = http(
        api,
        "POST",
        "/policy",
        &[("X-Qos-Signature", sig.as_str())],
        doc,
    );
    assert_eq!(code, 200, "signed policy applied: {body}");
    let (_, status) = http(api, "GET", "/status", &[], b"");
    assert_eq!(policy_version(&status), 2, "{status}");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("qosd-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

fn policy_version(status: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(status).expect("status JSON");
    v["policy_version"].as_u64().expect("policy_version")
}

#[test]
fn s9_the_fuzz_corpus_replayed_over_udp_is_counted_and_qosd_keeps_forwarding() {
    // Every corpus file of the three parsers' fuzz targets, as a datagram: headers
    // valid and not, and arbitrary TOML / JSON bytes.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for target in ["header", "config", "policy"] {
        let dir = root.join(target);
        let files: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .filter(|b| b.len() <= 65_507)
            .collect();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        inputs.extend(files);
    }
    inputs.sort();
    assert!(
        inputs.len() >= 100,
        "a corpus to replay: {} files",
        inputs.len()
    );
    let sink = Sink::bind();
    // Every kind of datagram has a rule: header ones by their stream, the rest per flow.
    let gw = start(&config_text(
        &[sink.addr],
        500,
        "max_datagram = 9216",
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n\
         [[rule]]\nname = \"plain\"\nroute = { to = \"u0\" }\n",
    ));
    let to = gw.listen_addrs()[0];
    let tx = sender();
    for (i, bytes) in inputs.iter().enumerate() {
        tx.send_to(bytes, to).expect("send");
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Still alive and forwarding.
    send_paced(&tx, to, 20, |i| datagram(424_242, 5, i, 100));
    let got = sink.drain(Duration::from_millis(400), Duration::from_secs(10));
    assert_eq!(
        got.get(&424_242),
        Some(&20),
        "valid datagrams after the corpus"
    );
    let report = gw.stop().expect("stop");
    assert_eq!(
        report.received,
        inputs.len() as u64 + 20,
        "every datagram read"
    );
    assert!(
        report.conserved,
        "each forwarded or dropped with a reason: {report:?}"
    );
    let forwarded_at_sink: u64 = got.values().sum();
    assert_eq!(report.forwarded, forwarded_at_sink);
}

/// `gateway.max_datagram` above the policy's `max_packet_bytes` (9,216 by default): the
/// datagrams between the two pass the gateway and are refused at the scheduler's door,
/// each counted `invalid_length` (found undocumented by a red-team review); one above
/// `max_datagram` is `oversize`. Nothing is lost uncounted.
#[test]
fn datagrams_longer_than_the_policy_s_max_packet_are_counted_invalid_length() {
    let sink = Sink::bind();
    let gw = start(&config_text(
        &[sink.addr],
        500,
        "max_datagram = 40000",
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n",
    ));
    let to = gw.listen_addrs()[0];
    let tx = sender();
    let _ = socket2::SockRef::from(&tx).set_send_buffer_size(1 << 20);
    let sizes = [9_216, 9_217, 30_000, 40_000, 40_001, 1_000];
    for (i, &size) in sizes.iter().enumerate() {
        tx.send_to(&datagram(7, 5, i as u64, size), to)
            .expect("send");
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = sink.drain(Duration::from_millis(400), Duration::from_secs(10));
    let report = gw.stop().expect("stop");
    assert_eq!(
        got.get(&7),
        Some(&2),
        "the 9,216- and 1,000-byte ones: {got:?}"
    );
    assert_eq!(report.received, sizes.len() as u64);
    assert_eq!(report.forwarded, 2);
    assert_eq!(report.dropped.get("invalid_length"), Some(&3), "{report:?}");
    assert_eq!(report.dropped.get("oversize"), Some(&1), "{report:?}");
    assert_eq!(report.dropped.values().sum::<u64>(), 4, "{report:?}");
    assert!(report.conserved, "{report:?}");
}

/// A reload that changes a key read only at start is refused and names the key
/// (before, only four keys were checked: a rotated bearer token was reported applied
/// and the old one kept working); the token itself never appears in the reason. An
/// IPv6 upstream added to IPv4-only egress sockets is refused too. The same file
/// again applies.
#[test]
fn reload_refuses_every_key_read_only_at_start_and_names_it() {
    let dir = tempdir("reload-keys");
    let path = dir.join("qosd.toml");
    let up = Sink::bind();
    let base = config_text(
        &[up.addr],
        100,
        "max_datagram = 9000",
        "[[rule]]\nname = \"all\"\nroute = { to = \"u0\" }\n",
    )
    .replace(
        "[control]\n",
        "[control]\nbearer_token = \"first-secret\"\n",
    );
    let gw = start(&base);
    std::fs::write(&path, &base).expect("write");
    assert!(gw.reload(&path).is_ok(), "the same file applies");
    for (from, to, key) in [
        (
            "max_datagram = 9000",
            "max_datagram = 1200",
            "gateway.max_datagram",
        ),
        ("first-secret", "second-secret", "control.bearer_token"),
        ("drain_ms = 3000", "drain_ms = 10", "gateway.drain_ms"),
        (
            "[control]\n",
            "[control]\nseries_limit = 7\n",
            "control.series_limit",
        ),
        (
            "route = { to = \"u0\" }",
            "route = { to = \"u1\" }\n[[upstream]]\nname = \"u1\"\naddr = \"[::1]:9\"",
            "upstream.addr",
        ),
    ] {
        let text = base.replacen(from, to, 1);
        assert_ne!(text, base, "{from}");
        std::fs::write(&path, &text).expect("write");
        let e = gw.reload(&path).expect_err(key).to_string();
        assert!(e.contains(key), "{key}: {e}");
        assert!(!e.contains("secret"), "the token leaked: {e}");
    }
    std::fs::write(&path, &base).expect("write");
    assert!(gw.reload(&path).is_ok(), "and the original applies again");
    gw.stop().expect("stop");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A full flow table: new flows beyond it are counted drops `flow_table_full` (no flow
/// is idle long enough to evict), the flows it holds keep flowing, and the accounting
/// stays conserved.
#[test]
fn s9_new_flows_beyond_a_full_flow_table_are_counted_drops() {
    let sink = Sink::bind();
    let gw = start(&config_text(
        &[sink.addr],
        500,
        "workers = 1\nflow_table = 4\nflow_idle_ms = 600000",
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n",
    ).replacen("workers = 2\n", "", 1));
    let to = gw.listen_addrs()[0];
    let senders: Vec<UdpSocket> = (0..8).map(|_| sender()).collect();
    // One at a time, each seen before the next: the first four fill the table.
    for (i, tx) in senders.iter().enumerate() {
        send_paced(tx, to, 1, |_| datagram(i as u64, 4, 0, 100));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The four held flows still flow; the others are refused again.
    for (i, tx) in senders.iter().enumerate() {
        send_paced(tx, to, 5, |k| datagram(i as u64, 4, 1 + k, 100));
    }
    let got = sink.drain(Duration::from_millis(300), Duration::from_secs(10));
    let report = gw.stop().expect("stop");
    assert_eq!(
        report.dropped.get("flow_table_full"),
        Some(&24),
        "{report:?}"
    );
    assert_eq!(got.values().sum::<u64>(), 24, "{got:?}");
    assert!((0..4).all(|i| got.get(&i) == Some(&6)), "{got:?}");
    assert_eq!(report.received, 48);
    assert!(report.conserved, "{report:?}");
}

/// A full flow table whose flows went idle: new flows evict them (counted in
/// `qosd_flow_evictions`) and are forwarded, nothing is refused or lost as
/// `unclassified`, and a flow evicted and then heard from again is classified afresh.
#[test]
fn s9_idle_flows_are_evicted_for_new_ones() {
    let sink = Sink::bind();
    let gw = start(&config_text(
        &[sink.addr],
        500,
        "workers = 1\nflow_table = 4\nflow_idle_ms = 50",
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n",
    ).replacen("workers = 2\n", "", 1));
    let to = gw.listen_addrs()[0];
    let senders: Vec<UdpSocket> = (0..8).map(|_| sender()).collect();
    // Four flows fill the table, then fall idle past flow_idle_ms.
    for (i, tx) in senders.iter().take(4).enumerate() {
        send_paced(tx, to, 1, |_| datagram(i as u64, 4, 0, 100));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Four new flows: each finds the table full of idle flows and takes a place.
    for (i, tx) in senders.iter().enumerate().skip(4) {
        send_paced(tx, to, 5, |k| datagram(i as u64, 4, k, 100));
    }
    // One of the first flows again, after the new ones went idle in their turn.
    std::thread::sleep(Duration::from_millis(300));
    send_paced(&senders[0], to, 3, |k| datagram(0, 4, 1 + k, 100));
    let got = sink.drain(Duration::from_millis(300), Duration::from_secs(10));
    let (_, metrics) = http(gw.api_addr(), "GET", "/metrics", &[], b"");
    let evictions = metric(&metrics, "qosd_flow_evictions_total{}");
    let report = gw.stop().expect("stop");
    assert_eq!(report.received, 4 + 20 + 3);
    assert_eq!(report.forwarded, 27, "{report:?}");
    assert!(report.dropped.is_empty(), "{report:?}");
    assert!(report.conserved, "{report:?}");
    assert_eq!(got.values().sum::<u64>(), 27, "{got:?}");
    assert_eq!(got.get(&0), Some(&4), "{got:?}");
    assert!((4..8).all(|i| got.get(&i) == Some(&5)), "{got:?}");
    // At least the four first flows, then room for flow 0's return.
    assert!(
        evictions.is_some_and(|e| e >= 5.0),
        "evictions {evictions:?}"
    );
}

/// A GSO send of `datagrams` (one `sendmsg`, each datagram `stride` bytes but the last,
/// which may be shorter) from `tx` to `to`.
fn send_gso(
    tx: &UdpSocket,
    state: &quinn_udp::UdpSocketState,
    to: std::net::SocketAddr,
    datagrams: &[Vec<u8>],
) {
    let stride = datagrams[0].len();
    let contents: Vec<u8> = datagrams.concat();
    let t = quinn_udp::Transmit {
        destination: to,
        ecn: None,
        contents: &contents,
        segment_size: Some(stride),
        src_ip: None,
    };
    state
        .try_send(quinn_udp::UdpSockRef::from(tx), &t)
        .expect("GSO send on loopback");
}

/// A load-generator datagram of `size` bytes whose payload repeats `seq`'s low byte, so
/// a datagram cut at the wrong place or glued to its neighbour shows.
fn patterned(seq: u64, size: usize) -> Vec<u8> {
    let mut v = datagram(9, 4, seq, size);
    v[qos_tools::header::LEN..].fill(seq as u8);
    v
}

/// Receives on a GRO socket until `quiet` passes with nothing: every datagram (split
/// at its buffer's stride) and how many buffers held more than one datagram.
fn drain_gro(
    sock: &UdpSocket,
    state: &quinn_udp::UdpSocketState,
    quiet: Duration,
) -> (Vec<Vec<u8>>, usize) {
    let mut batch = qos_tools::udp::BatchRecv::new();
    let (mut got, mut coalesced) = (Vec::new(), 0);
    let mut last = std::time::Instant::now();
    while last.elapsed() < quiet {
        let n = batch.recv(sock, state, 20).expect("receive");
        if n == 0 {
            continue;
        }
        last = std::time::Instant::now();
        for (_, buf, stride) in batch.buffers(n) {
            if buf.len() > stride {
                coalesced += 1;
            }
            for r in qos_tools::udp::segments(buf.len(), stride) {
                got.push(buf[r].to_vec());
            }
        }
    }
    (got, coalesced)
}

/// The GRO receive and GSO send paths end to end: a sender's GSO batches (nine
/// datagrams of 300 bytes and a last one of 120) reach qosd's ingress coalesced, are
/// split into their datagrams, scheduled, and leave in GSO runs that a GRO sink
/// receives coalesced; every datagram arrives once, whole, with its own length and
/// payload, and the drain report accounts for each.
#[test]
fn gso_batches_in_and_gso_runs_out_keep_every_datagram_whole() {
    let tx = sender();
    let tx_state = quinn_udp::UdpSocketState::new((&tx).into()).expect("sender state");
    if tx_state.max_gso_segments() < 10 {
        panic!(
            "this kernel offers {} GSO segments; the GSO path needs 10",
            tx_state.max_gso_segments()
        );
    }
    let batch_of = |b: u64| -> Vec<Vec<u8>> {
        (0..10)
            .map(|i| patterned(b * 10 + i, if i == 9 { 120 } else { 300 }))
            .collect()
    };
    // Loopback GRO delivers a GSO send whole to a socket that asked for GRO, as qosd's
    // ingress sockets do: the probe shows the path below is the coalesced one.
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind probe");
    let probe_state = quinn_udp::UdpSocketState::new((&probe).into()).expect("probe state");
    send_gso(
        &tx,
        &tx_state,
        probe.local_addr().expect("addr"),
        &batch_of(0),
    );
    let (seen, coalesced) = drain_gro(&probe, &probe_state, Duration::from_millis(200));
    assert_eq!(seen, batch_of(0), "the probe splits the batch back");
    assert_eq!(
        coalesced, 1,
        "loopback GRO coalesces a GSO send into one buffer"
    );

    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(4 << 20);
    let sink_state = quinn_udp::UdpSocketState::new((&sink).into()).expect("sink state");
    let gw = start(&config_text(
        &[sink.local_addr().expect("addr")],
        500,
        "",
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n",
    ));
    let to = gw.listen_addrs()[0];
    let batches = 20u64;
    let mut sent = Vec::new();
    for b in 0..batches {
        let batch = batch_of(b);
        send_gso(&tx, &tx_state, to, &batch);
        sent.extend(batch);
        std::thread::sleep(Duration::from_millis(2));
    }
    let (mut got, coalesced) = drain_gro(&sink, &sink_state, Duration::from_millis(400));
    let report = gw.stop().expect("stop");
    assert_eq!(report.received, 10 * batches, "{report:?}");
    assert_eq!(report.forwarded, 10 * batches, "{report:?}");
    assert!(report.dropped.is_empty() && report.conserved, "{report:?}");
    // One stream, so it leaves in order; sorted anyway, the check is on content.
    got.sort_by_key(|d| qos_tools::header::Header::parse(d).expect("header").seq);
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "a datagram changed on its way");
    // Runs of equal size to one upstream leave as one GSO send; loopback hands a GSO
    // send to a GRO socket whole, so coalesced buffers at the sink show qosd's GSO path.
    assert!(coalesced > 0, "no GSO run reached the sink");
}

/// Once every pooled receive buffer of the receive thread is held by queued packets
/// (512 of them), datagrams are copied one by one instead, and counted in
/// `qosd_datagrams_copied_alone_total`. Those copies arrive whole too, and the
/// accounting stays exact.
#[test]
fn datagrams_copied_alone_once_every_pooled_buffer_is_held_arrive_whole() {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(4 << 20);
    let sink_state = quinn_udp::UdpSocketState::new((&sink).into()).expect("sink state");
    // 2 Mbit/s and no queue-delay control: the 1,800 datagrams (540 KB, sent in about
    // 80 ms) queue up and leave over about two seconds.
    let text = config_text(
        &[sink.local_addr().expect("addr")],
        2,
        "",
        "[[rule]]\nname = \"lg\"\nloadgen = true\nstream = \"header\"\nroute = { to = \"u0\" }\n",
    )
    .replace("aqm = true", "aqm = false");
    let gw = start(&text);
    let n = 1_800u64;
    let sent: Vec<Vec<u8>> = (0..n).map(|i| patterned(i, 300)).collect();
    // Separate sends: one receive buffer each, so every queued datagram holds one.
    send_paced(&sender(), gw.listen_addrs()[0], n, |i| {
        sent[i as usize].clone()
    });
    let (mut got, _) = drain_gro(&sink, &sink_state, Duration::from_millis(600));
    let (status, metrics) = http(gw.api_addr(), "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    let copied_alone = metric(&metrics, "qosd_datagrams_copied_alone_total{}")
        .unwrap_or_else(|| panic!("no copied-alone count in\n{metrics}"))
        as u64;
    let report = gw.stop().expect("stop");
    assert_eq!(report.received, n, "{report:?}");
    assert_eq!(report.forwarded, n, "{report:?}");
    assert!(report.dropped.is_empty() && report.conserved, "{report:?}");
    // The link's 64 KB burst lets about 210 go at once and the rest queue, so about
    // 1,800 - 512 - 210 - what 2 Mbit/s sends meanwhile, about 1,050 in all, are copied
    // alone; 300 leaves room for a sender slowed tenfold.
    assert!(
        (300..=n - 512).contains(&copied_alone),
        "{copied_alone} datagrams copied alone"
    );
    got.sort_by_key(|d| qos_tools::header::Header::parse(d).expect("header").seq);
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "a datagram changed on its way");
}

/// O2, metrics.db red team: why the store failed was shown only while it failed
/// (`/status` clears it at the next written batch) and never logged, and a batch lost at
/// shutdown left no trace. Each failure is now logged as `metrics_db.failed` with its
/// error, at run time and at the stop.
#[test]
fn o2_metrics_db_failures_are_logged_with_their_error() {
    let dir = tempdir("db-failed");
    let up = Sink::bind();
    let path = dir.join("qosd.toml");
    let state = dir.join("state");
    // A directory where the database file should be: every batch fails.
    std::fs::create_dir_all(state.join("metrics.db")).expect("state dir");
    let text = config_text(
        &[up.addr],
        100,
        "",
        "[[rule]]\nname = \"all\"\nroute = { to = \"u0\" }\n",
    )
    .replace(
        "[control]\n",
        &format!(
            "[control]\nstate_dir = \"{}\"\nmetrics_db = true\nmetrics_db_period_ms = 1000\n",
            state.display()
        ),
    );
    std::fs::write(&path, text).expect("config");
    let mut q = Qosd::spawn(&path);
    let line = q
        .wait_line("metrics_db.failed", Duration::from_secs(10))
        .expect("a metrics_db.failed line");
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(event["event"], "metrics_db.failed", "{line}");
    assert!(event["batches"].as_u64().is_some_and(|n| n >= 1), "{line}");
    assert!(
        event["error"]
            .as_str()
            .is_some_and(|e| e.contains("metrics.db")),
        "{line}"
    );
    let (_, exit) = q.terminate();
    assert!(exit.success(), "{exit:?}");
}

/// O4 on a full disk: qosd runs with a 24 KB file-size limit (`ulimit -f`, SIGXFSZ
/// ignored, so writes past it fail with EFBIG as on a full disk) and writes an `.hlog`
/// every 250 ms. Once the limit is reached, the failed lines are counted in
/// `qos_hlog_intervals_total{outcome="failed"}` and named in `/status` warnings, and
/// the file holds only whole lines: the strict reader reads every one (a line torn
/// part way used to sit in the middle of the log and make it unreadable).
#[test]
fn o4_hlog_write_failures_are_counted_and_leave_only_whole_lines() {
    let dir = tempdir("hlog-full");
    let up = Sink::bind();
    let path = dir.join("qosd.toml");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let text = config_text(
        &[up.addr],
        100,
        "",
        "[[rule]]\nname = \"all\"\nstream = \"header\"\nloadgen = true\nroute = { to = \"u0\" }\n",
    )
    .replace(
        "[control]\n",
        &format!(
            "[control]\nstate_dir = \"{}\"\nhlog_period_ms = 250\nmetrics_db = false\n",
            state.display()
        ),
    );
    std::fs::write(&path, text).expect("config");
    // `ulimit -f` counts 1 KB blocks.
    let q = Qosd::spawn_under("trap '' XFSZ; ulimit -f 24", &path);
    let tx = sender();
    let hlog = state.join("sojourn.hlog");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut written, mut failed) = (0.0, 0.0);
    while failed == 0.0 && std::time::Instant::now() < deadline {
        send_paced(&tx, q.listen, 20, |i| datagram(1, (i % 8) as u8, i, 200));
        let (_, metrics) = http(q.api, "GET", "/metrics", &[], b"");
        written = metric(&metrics, "qos_hlog_intervals_total{outcome=\"written\"}").unwrap_or(0.0);
        failed = metric(&metrics, "qos_hlog_intervals_total{outcome=\"failed\"}").unwrap_or(0.0);
    }
    assert!(
        written > 0.0 && failed > 0.0,
        "written {written}, failed {failed}"
    );
    let (_, status) = http(q.api, "GET", "/status", &[], b"");
    assert!(status.contains(".hlog failing"), "{status}");
    let size = std::fs::metadata(&hlog).expect("hlog").len();
    assert!(size <= 24 * 1024, "{size}");
    let (report, exit) = q.terminate();
    assert!(exit.success(), "{exit:?}");
    assert!(report.conserved, "{report:?}");
    let intervals = qos_control::hlog::read_hlog(&hlog).expect("every line whole");
    assert!(
        intervals.len() as f64 >= written,
        "{} intervals read, {written} counted written",
        intervals.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// CPU time (user + system) of process `pid` so far, in clock ticks (100 a second).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Control-API red team: out of file descriptors, the API's accept loop retried a
/// failing `accept` at once, for ever: qosd burned a whole core (102 ticks of 100 in a
/// second) while 80 connections were held against `ulimit -n 64`, and logged nothing.
/// It now logs the failure and backs off; once the connections close, the API answers.
#[test]
fn the_api_backs_off_when_out_of_file_descriptors() {
    let dir = tempdir("emfile");
    let up = Sink::bind();
    let path = dir.join("qosd.toml");
    let text = config_text(
        &[up.addr],
        100,
        "",
        "[[rule]]\nname = \"all\"\nstream = \"header\"\nloadgen = true\nroute = { to = \"u0\" }\n",
    );
    std::fs::write(&path, text).expect("config");
    let q = Qosd::spawn_under("ulimit -n 64", &path);
    let pid = q.child.id();
    let held: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(q.api).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let busy = cpu_ticks(pid) - before;
    drop(held);
    assert!(busy < 50, "{busy} ticks of 100 in a second: accept spins");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut logged = false;
    while !logged && std::time::Instant::now() < deadline {
        if let Ok(line) = q.stderr.recv_timeout(Duration::from_millis(100)) {
            logged |= line.contains("control.accept_failed");
        }
    }
    assert!(logged, "the accept failure is logged");
    let (code, _) = http(q.api, "GET", "/healthz", &[], b"");
    assert_eq!(code, 200, "the API answers once the connections are closed");
}
