//! The control plane's files with real components: `metrics.db` (O2) read back with the
//! engine and the `sqlite3` client and held against the runtime's counters, the `.hlog`
//! (O4) read back and held against the packets dequeued, and a failing store that is
//! reported without disturbing the dataplane. Bounded in time; pass on 2 cores.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // tests

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use qos_control::health::HealthConfig;
use qos_control::hlog::{LEGEND, percentile_table, read_hlog};
use qos_control::plane::{ControlConfig, ControlPlane};
use qos_control::store::{QosMetricsRow, read_rows};
use qos_dataplane::runtime::{
    Dataplane, Pinning, Producer, RuntimeConfig, ShutdownReport, StopMode, StreamHandle,
};
use qos_dataplane::sched::{LinkRate, PolicySpec, SchedulerConfig, StreamConfig};

mod plane_common;
mod store_common;
use plane_common::{Switch, Wire, http, push, temp_dir, wait_until};
use store_common::sqlite3_json;

fn start(
    workers: usize,
    policy: PolicySpec,
    config: ControlConfig,
) -> (ControlPlane<u64>, Producer<u64>, Switch) {
    let sw = Switch::default();
    let s = sw.clone();
    let (dp, mut producers) = Dataplane::<u64>::builder()
        // A slow (debug, loaded) build must not stall its way into degrade and shed:
        // these tests count every packet.
        .config(RuntimeConfig {
            stall_budget: Duration::from_secs(1),
            ..RuntimeConfig::default()
        })
        .workers(workers)
        .pinning(Pinning::Off)
        .scheduler(SchedulerConfig {
            max_packets: 65_536,
            ..SchedulerConfig::default()
        })
        .policy(Arc::new(policy.build().unwrap()))
        .build(move |_| Wire(s.clone()))
        .unwrap();
    let plane = ControlPlane::start(
        dp,
        ControlConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tick: Duration::from_millis(50),
            report_every: Duration::from_millis(50),
            // Nor a full ingress ring (the pushes outrun a debug build's workers).
            health: HealthConfig {
                ring_full_ticks: 1_000_000,
                ..HealthConfig::default()
            },
            ..config
        },
    )
    .unwrap();
    (plane, producers.pop().unwrap(), sw)
}

/// Queues of 100 that drop only at their tail, at enqueue: no CoDel drops when held
/// queues drain, no disconnect.
fn tail_drop_at_100() -> PolicySpec {
    PolicySpec {
        max_queue_depth: 100,
        disconnect: false,
        aqm: false,
        ..PolicySpec::default()
    }
}

/// As [`push`], 40 packets at a time, each chunk sent before the next: a stream's
/// queue never grows past 40, so a small `max_queue_depth` drops nothing.
fn push_paced(plane: &ControlPlane<u64>, tx: &mut Producer<u64>, h: StreamHandle, n: u64) {
    let base = live(plane, |w| w.sent);
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(40);
        push(tx, h, chunk);
        done += chunk;
        let limit = Instant::now() + Duration::from_secs(10);
        while live(plane, |w| w.sent) < base + done {
            assert!(Instant::now() < limit, "chunk not sent in 10 s");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Sum over workers of `f(worker stats)`, live.
fn live(plane: &ControlPlane<u64>, f: impl Fn(&qos_dataplane::runtime::WorkerStats) -> u64) -> u64 {
    plane
        .with_dataplane(|dp| dp.stats().iter().map(&f).sum::<u64>())
        .unwrap()
}

fn dropped_at(report: &ShutdownReport, p: usize) -> u64 {
    report
        .workers
        .iter()
        .map(|w| w.priorities[p].dropped_total() + w.shed[p])
        .sum()
}

fn dequeued_at(report: &ShutdownReport, p: usize) -> u64 {
    report
        .workers
        .iter()
        .map(|w| w.priorities[p].dequeued)
        .sum()
}

/// The value of the unlabelled-or-labelled sample `line_prefix` in an exposition.
fn sample(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|rest| rest.trim().parse().ok())
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// metrics.db rows grouped by batch (one timestamp per batch), in time order.
fn by_batch(rows: &[QosMetricsRow]) -> BTreeMap<i64, Vec<&QosMetricsRow>> {
    let mut batches: BTreeMap<i64, Vec<&QosMetricsRow>> = BTreeMap::new();
    for r in rows {
        batches.entry(r.timestamp_ms).or_default().push(r);
    }
    batches
}

/// The value of `metric{stream_id="key",...}` in a scrape.
fn named_counter(text: &str, metric: &str, key: u64) -> Option<u64> {
    let prefix = format!("{metric}{{stream_id=\"{key}\",");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// O2: rows written by the running control plane read back through the engine and
/// the sqlite3 client. Each batch names at most the 3 busiest streams (busiest in the
/// latest report window, then over their life) under their keys and priorities, plus
/// one `other` row per priority. The drops of all rows add up exactly to the runtime's
/// counters, per priority, whichever streams were named when: a stream's row counts
/// its drops while named, `other` the rest. The last batch (at shutdown) holds what
/// was drained after the last tick, with the final (zero) depths. p95 latency is
/// finite where packets were sent and NULL where none ever were.
#[test]
fn o2_metrics_db_rows_read_back_with_the_engine_and_sqlite3() {
    let dir = temp_dir("db");
    let db = dir.join("metrics.db");
    let t0 = unix_ms_now();
    let (plane, mut tx, sw) = start(
        2,
        tail_drop_at_100(),
        ControlConfig {
            series_limit: 3,
            metrics_db: Some(db.clone()),
            metrics_db_period: Duration::from_millis(500),
            ..ControlConfig::default()
        },
    );
    // (key, priority, worker, phase-1 packets, phase-2 packets). Distinct priorities, so
    // the runtime's per-priority counters are per-stream counters.
    let streams: [(u64, u8, usize, u64, u64); 6] = [
        (9001, 7, 0, 3_000, 600),
        (9002, 5, 1, 2_000, 0),
        (9003, 3, 0, 1_000, 50),
        (9004, 1, 1, 300, 600),
        (9005, 6, 0, 200, 0),
        (9006, 0, 1, 100, 400),
    ];
    let mut handles = Vec::new();
    let mut total = 0;
    for &(key, prio, worker, n, _) in &streams {
        let h = tx
            .open_on(worker, key, StreamConfig::with_priority(prio))
            .unwrap();
        push_paced(&plane, &mut tx, h, n);
        total += n;
        assert_eq!(live(&plane, |w| w.sent), total, "phase 1: no drop");
        handles.push(h);
    }
    // Idle now: every window is empty and the ranking falls back to the streams'
    // lives, so /metrics names the three largest with their final counts.
    wait_until("the three largest named in /metrics", 10, || {
        let text = plane.metrics_text();
        streams[..3].iter().all(|&(key, _, _, n, _)| {
            named_counter(&text, "qos_packets_enqueued_total", key) == Some(n)
        })
    });
    // Phase 2: the egress refuses, queues fill to 100 and the rest is tail-dropped.
    sw.hold.store(true, Ordering::Relaxed);
    for (&(_, _, _, _, n), &h) in streams.iter().zip(&handles) {
        push(&mut tx, h, n);
        total += n;
    }
    wait_until("phase 2 taken", 20, || live(&plane, |w| w.taken) == total);
    // At least one batch while the queues are full (depths at 100), after a report
    // has shown them full.
    wait_until("a report showing 9001's full queue", 10, || {
        sample(&plane.metrics_text(), "qos_queue_depth{stream_id=\"9001\"}") == Some(100.0)
    });
    let written = |p: &ControlPlane<u64>| p.status().metrics_db.unwrap().batches_written;
    // A batch written after this point may have been taken before that report: its
    // rows are computed when it is handed to the store, and the count moves when the
    // store has written it (CI saw such a batch without the full depth once). Batches
    // are taken every 500 ms, so the third one written from here on was taken after the
    // report even with one more still queued behind a slow writer.
    let edge = written(&plane);
    wait_until("a batch with full queues", 10, || {
        written(&plane) > edge + 2
    });
    let held = live(&plane, |w| w.sent);
    sw.hold.store(false, Ordering::Relaxed);
    // Part drains before the shutdown, the rest in it, after the last tick: only
    // the final batch can show the end state.
    wait_until("some sent", 20, || live(&plane, |w| w.sent) > held + 10);
    let status = plane.status().metrics_db.unwrap();
    assert_eq!(
        (status.batches_failed, status.batches_dropped),
        (0, 0),
        "{status:?}"
    );
    drop(tx);
    let (report, _) = plane.shutdown(StopMode::Drain).unwrap();
    assert!(report.is_conserved());
    let t1 = unix_ms_now();
    let dropped_total: u64 = (0..8).map(|p| dropped_at(&report, p)).sum();
    assert_eq!(report.sent() + dropped_total, total);
    for &(_, prio, _, _, n) in &streams {
        let d = dropped_at(&report, usize::from(prio));
        assert!(d <= n.saturating_sub(100), "p{prio}: {d} dropped of {n}");
    }
    assert!(dropped_at(&report, 7) >= 300, "9001 was tail-dropped");
    assert!(dropped_at(&report, 1) >= 300, "9004 was tail-dropped");
    assert_eq!(dropped_at(&report, 3), 0, "50 fit in 9003's queue");

    // Through the engine.
    let rows = read_rows(&db).unwrap();
    assert!(!rows.is_empty());
    for r in &rows {
        assert!(
            (t0..=t1).contains(&r.timestamp_ms),
            "timestamp {} outside the run {t0}..={t1}",
            r.timestamp_ms
        );
    }
    assert!(
        rows.windows(2)
            .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms),
        "rows in time order"
    );
    let batches = by_batch(&rows);
    // At least the one with full queues and the final one.
    assert!(batches.len() >= 2, "{} batches", batches.len());
    for (ts, b) in &batches {
        let named: Vec<_> = b.iter().filter(|r| r.stream_id != "other").collect();
        assert!(named.len() <= 3, "batch at {ts}: {named:?}");
        let mut other: Vec<u8> = b
            .iter()
            .filter(|r| r.stream_id == "other")
            .map(|r| r.priority)
            .collect();
        other.sort_unstable();
        assert_eq!(
            other,
            (0..8).collect::<Vec<u8>>(),
            "batch at {ts}: one other per priority"
        );
        for r in &named {
            let s = streams
                .iter()
                .find(|s| s.0.to_string() == r.stream_id)
                .unwrap_or_else(|| panic!("unknown stream {r:?}"));
            assert_eq!(r.priority, s.1, "{r:?}");
        }
    }
    // A batch saw the full queues: 9001's depth at 100.
    assert!(
        rows.iter()
            .any(|r| r.stream_id == "9001" && r.queue_depth == 100),
        "no batch saw 9001's full queue"
    );
    // The final batch: drained, every depth zero; 9001, 9002, 9003 named (the
    // largest, all idle at the end).
    let (_, last) = batches.iter().next_back().unwrap();
    assert!(
        last.iter().all(|r| r.queue_depth == 0),
        "final depths: {last:?}"
    );
    let mut last_named: Vec<&str> = last
        .iter()
        .filter(|r| r.stream_id != "other")
        .map(|r| r.stream_id.as_str())
        .collect();
    last_named.sort_unstable();
    assert_eq!(last_named, ["9001", "9002", "9003"]);
    // Drops: the rows of each priority add up to the runtime's counter exactly.
    let mut by_id_prio: BTreeMap<(String, u8), u64> = BTreeMap::new();
    for r in &rows {
        *by_id_prio
            .entry((r.stream_id.clone(), r.priority))
            .or_default() += r.packets_dropped;
    }
    for p in 0..8u8 {
        let all_p: u64 = by_id_prio
            .iter()
            .filter(|((_, q), _)| *q == p)
            .map(|(_, d)| d)
            .sum();
        assert_eq!(
            all_p,
            dropped_at(&report, usize::from(p)),
            "p{p}: rows {by_id_prio:?}"
        );
    }
    // 9001 is the busiest in every window it dropped in, so named in every walk: all
    // its drops are under its own id.
    assert_eq!(
        by_id_prio.get(&("9001".to_string(), 7)).copied(),
        Some(dropped_at(&report, 7)),
        "{by_id_prio:?}"
    );
    let rows_dropped: u64 = rows.iter().map(|r| r.packets_dropped).sum();
    assert_eq!(rows_dropped, dropped_total);
    // p95: finite where packets were sent in the period, NULL (NaN) where never.
    assert!(
        rows.iter()
            .any(|r| r.priority == 7 && r.latency_p95_ms.is_finite() && r.latency_p95_ms >= 0.0),
        "a finite p95 at priority 7"
    );
    assert!(
        rows.iter()
            .filter(|r| r.priority == 2 || r.priority == 4)
            .all(|r| r.latency_p95_ms.is_nan()),
        "nothing was ever sent at priorities 2 and 4"
    );
    assert!(
        rows.iter()
            .any(|r| r.stream_id == "9001" && r.bandwidth_allocated_mbps > 0.0),
        "9001 was served"
    );
    assert!(rows.iter().all(|r| r.queue_depth <= 200));

    // Through the sqlite3 client: the same rows.
    let n = sqlite3_json(&db, "select count(*) as n from qos_metrics");
    assert_eq!(n[0]["n"].as_u64().unwrap(), rows.len() as u64);
    let cli = sqlite3_json(
        &db,
        "select stream_id, priority, typeof(stream_id) as t, sum(packets_dropped) as d, \
         count(*) as n from qos_metrics group by stream_id, priority order by stream_id, priority",
    );
    assert_eq!(cli.len(), by_id_prio.len());
    for r in &cli {
        assert_eq!(r["t"], "text");
        let key = (
            r["stream_id"].as_str().unwrap().to_string(),
            r["priority"].as_u64().unwrap() as u8,
        );
        assert_eq!(
            r["d"].as_u64().unwrap(),
            by_id_prio[&key],
            "sqlite3 and the engine agree on {key:?}"
        );
    }
    let sum = sqlite3_json(&db, "select sum(packets_dropped) as d from qos_metrics");
    assert_eq!(sum[0]["d"].as_u64().unwrap(), dropped_total);
    let nulls = sqlite3_json(
        &db,
        "select count(*) as n from qos_metrics where priority in (2, 4) and latency_p95_ms is not null",
    );
    assert_eq!(nulls[0]["n"].as_u64().unwrap(), 0);
    let p7 = sqlite3_json(
        &db,
        "select max(latency_p95_ms) as l from qos_metrics where stream_id = '9001'",
    );
    assert!(p7[0]["l"].as_f64().unwrap().is_finite());
    let ts = sqlite3_json(
        &db,
        "select timestamp_ms, timestamp from qos_metrics order by rowid limit 1",
    );
    let ms = ts[0]["timestamp_ms"].as_i64().unwrap();
    let text = ts[0]["timestamp"].as_str().unwrap();
    assert_eq!(text.len(), "2025-10-01T10:30:00.007Z".len(), "{text}");
    assert!(
        text.ends_with(&format!(".{:03}Z", ms % 1000)),
        "{text} vs {ms}"
    );
}

/// O4: the `.hlog` written by the running control plane: a standard header, every
/// interval carries every tag, the counts of each `p{p}.sojourn` sum to the packets
/// dequeued at priority p, and the percentile table equals the merged intervals.
#[test]
fn o4_hlog_counts_equal_the_packets_dequeued_per_priority() {
    let dir = temp_dir("hlog");
    let path = dir.join("run.hlog");
    let (plane, mut tx, _) = start(
        2,
        PolicySpec {
            disconnect: false,
            // No CoDel: a slow (debug) build must not turn queueing into drops.
            aqm: false,
            ..PolicySpec::default()
        },
        ControlConfig {
            hlog: Some(path.clone()),
            hlog_period: Duration::from_millis(200),
            ..ControlConfig::default()
        },
    );
    // (key, priority, packets): several streams per priority, on both workers.
    let plan: [(u64, u8, u64); 7] = [
        (1, 7, 400),
        (2, 7, 300),
        (3, 5, 500),
        (4, 3, 250),
        (5, 3, 50),
        (6, 0, 100),
        (7, 6, 1),
    ];
    let mut want = [0u64; 8];
    let mut total = 0;
    for (i, &(key, prio, n)) in plan.iter().enumerate() {
        let h = tx
            .open_on(i % 2, key, StreamConfig::with_priority(prio))
            .unwrap();
        push(&mut tx, h, n);
        want[usize::from(prio)] += n;
        total += n;
    }
    let gone = |w: &qos_dataplane::runtime::WorkerStats| w.sent + w.discarded;
    wait_until("every packet sent or discarded", 20, || {
        live(&plane, gone) == total
    });
    assert_eq!(
        live(&plane, |w| w.sent),
        total,
        "nothing dropped: {:?}",
        plane.with_dataplane(|dp| dp.stats())
    );
    // Every sojourn sample collected by the control plane before it stops.
    wait_until("every sojourn collected", 10, || {
        let text = plane.metrics_text();
        let count: f64 = text
            .lines()
            .filter(|l| l.starts_with("qos_scheduling_duration_seconds_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        count as u64 == total
    });
    // At least two periodic intervals before the final one.
    wait_until("two intervals", 10, || {
        read_hlog(&path).is_ok_and(|iv| {
            iv.iter()
                .filter(|i| i.tag.as_deref() == Some("p7.sojourn"))
                .count()
                >= 2
        })
    });
    drop(tx);
    let (report, _) = plane.shutdown(StopMode::Drain).unwrap();
    assert!(report.is_conserved());
    assert_eq!(report.sent(), total);

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("#[Logged with "), "{}", lines[0]);
    assert!(lines.contains(&"#[Histogram log format version 1.3]"));
    assert!(lines.iter().any(|l| l.starts_with("#[StartTime: ")));
    assert!(lines.iter().any(|l| l.starts_with("#[BaseTime: ")));
    let legend = lines
        .iter()
        .position(|l| *l == LEGEND)
        .expect("legend line");
    assert!(lines[..legend].iter().all(|l| l.starts_with("#[")));
    assert!(
        lines[legend + 1..]
            .iter()
            .all(|l| l.starts_with("Tag=p") || l.starts_with("Tag=w")),
        "only tagged intervals after the legend"
    );

    let intervals = read_hlog(&path).unwrap();
    let mut tags: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for i in &intervals {
        let e = tags.entry(i.tag.clone().unwrap()).or_default();
        e.0 += 1;
        e.1 += i.hist.len();
    }
    let expected_tags: Vec<String> = (0..8)
        .map(|p| format!("p{p}.sojourn"))
        .chain((0..2).map(|w| format!("w{w}.cost")))
        .collect();
    let mut sorted = expected_tags.clone();
    sorted.sort();
    assert_eq!(tags.keys().cloned().collect::<Vec<_>>(), sorted);
    let per_tag = tags["p0.sojourn"].0;
    assert!(per_tag >= 3, "2 periodic + the final interval: {per_tag}");
    assert!(tags.values().all(|(n, _)| *n == per_tag), "{tags:?}");
    for p in 0..8 {
        let counted = tags[&format!("p{p}.sojourn")].1;
        assert_eq!(
            counted,
            dequeued_at(&report, p),
            "p{p}: hlog counts vs packets dequeued"
        );
        assert_eq!(counted, want[p], "p{p}: hlog counts vs packets pushed");
    }
    let cost: u64 = (0..2).map(|w| tags[&format!("w{w}.cost")].1).sum();
    assert!(cost > 0, "scheduling cost recorded");
    // Interval starts never go backwards; every interval but the last spans about
    // one period.
    let p7: Vec<_> = intervals
        .iter()
        .filter(|i| i.tag.as_deref() == Some("p7.sojourn"))
        .collect();
    assert!(p7.windows(2).all(|w| w[0].start_secs <= w[1].start_secs));
    for i in &p7[..p7.len() - 1] {
        assert!(
            (0.19..5.0).contains(&i.duration_secs),
            "interval of {} s",
            i.duration_secs
        );
    }

    // The percentile table of p7 is the merge of its intervals.
    let table = percentile_table(&intervals, Some("p7")).unwrap();
    assert_eq!(table.len(), 1);
    let row = &table[0];
    assert_eq!(row.tag.as_deref(), Some("p7.sojourn"));
    assert_eq!(row.intervals, p7.len());
    assert_eq!(row.count, 700);
    assert!(row.max > 0);
    let mut merged = Histogram::<u64>::new_from(&p7[0].hist);
    merged.auto(true);
    for i in &p7 {
        merged.add(&i.hist).unwrap();
    }
    assert_eq!(merged.len(), 700);
    assert_eq!(merged.value_at_quantile(0.99), row.p99);
    assert_eq!(merged.value_at_quantile(0.5), row.p50);
    assert_eq!(merged.max(), row.max);
    assert!(row.p50 <= row.p99 && row.p99 <= row.max);
}

/// O2: a store that cannot write (its parent is a regular file, which root cannot get
/// around either) is reported on /status and /metrics; the dataplane sends every packet.
#[test]
fn o2_a_failing_store_is_reported_and_the_dataplane_is_not_disturbed() {
    let dir = temp_dir("failing");
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, b"a regular file").unwrap();
    let db = blocker.join("metrics.db");
    let (plane, mut tx, _) = start(
        2,
        PolicySpec {
            disconnect: false,
            // No CoDel: a slow (debug) build must not turn queueing into drops.
            aqm: false,
            ..PolicySpec::default()
        },
        ControlConfig {
            metrics_db: Some(db.clone()),
            metrics_db_period: Duration::from_millis(100),
            ..ControlConfig::default()
        },
    );
    let mut pushed = 0;
    for key in 0..20u64 {
        let h = tx
            .open(key, StreamConfig::with_priority((key % 8) as u8))
            .unwrap();
        push(&mut tx, h, 1_000);
        pushed += 1_000;
    }
    assert_eq!(pushed, 20_000);
    let gone = |w: &qos_dataplane::runtime::WorkerStats| w.sent + w.discarded;
    wait_until("every packet sent or discarded", 20, || {
        live(&plane, gone) == pushed
    });
    assert_eq!(
        live(&plane, |w| w.sent),
        pushed,
        "nothing dropped: {:?}",
        plane.with_dataplane(|dp| dp.stats())
    );
    wait_until("a failed batch", 10, || {
        plane.status().metrics_db.unwrap().batches_failed >= 1
    });
    let status = plane.status();
    let store = status.metrics_db.clone().unwrap();
    assert_eq!(store.batches_written, 0, "{store:?}");
    let shown = db.display().to_string();
    assert!(
        store
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(&shown)),
        "{store:?}"
    );
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains("metrics.db") && w.contains(&shown)),
        "{:?}",
        status.warnings
    );
    // /healthz names it too, and stays 200: a failing store sheds nothing.
    let (code, body) = http(plane.addr(), "GET", "/healthz", &[], b"");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["state"], "NORMAL", "{body}");
    assert!(
        health["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("metrics.db failing")),
        "{body}"
    );
    let text = plane.metrics_text();
    let failed = sample(&text, "qos_metrics_db_batches_total{outcome=\"failed\"}")
        .expect("the failed outcome is exported");
    assert!(failed >= 1.0, "{failed}");
    assert_eq!(
        sample(&text, "qos_metrics_db_batches_total{outcome=\"written\"}"),
        Some(0.0)
    );
    drop(tx);
    let (report, integrity) = plane.shutdown(StopMode::Drain).unwrap();
    assert!(report.is_conserved());
    assert!(integrity.s11_holds, "{}", integrity.statement);
    assert_eq!(report.sent(), pushed);
    assert_eq!(report.taken(), pushed);
    assert_eq!(report.discarded(), 0);
    assert_eq!(
        std::fs::read(&blocker).unwrap(),
        b"a regular file",
        "the blocking file is untouched"
    );
}

/// Issue-8 bug: what the workers scheduled after the control plane's last tick (a
/// drain at shutdown) never reached the final `.hlog` interval (p7 count 32 of 3,000
/// in the repro). The workers now hand their last histograms back with the shutdown
/// report.
#[test]
fn o4_a_drain_after_the_last_tick_is_in_the_final_hlog_interval() {
    let dir = temp_dir("hlog-drain");
    let path = dir.join("drain.hlog");
    let (plane, mut tx, _) = start(
        1,
        PolicySpec {
            disconnect: false,
            aqm: false,
            // 4 Mbit/s: 1,000 packets of 500 B take about 1 s to drain.
            link: Some(qos_dataplane::sched::LinkRate {
                rate_bps: 4_000_000,
                burst_bytes: 16_000,
            }),
            ..PolicySpec::default()
        },
        ControlConfig {
            hlog: Some(path.clone()),
            // No periodic interval and no tick during the run: everything is in the
            // final one.
            hlog_period: Duration::from_secs(3600),
            tick: Duration::from_secs(3600),
            ..ControlConfig::default()
        },
    );
    let h = tx.open(1, StreamConfig::with_priority(7)).unwrap();
    push(&mut tx, h, 1_000);
    drop(tx);
    let (report, _) = plane.shutdown(StopMode::Drain).unwrap();
    assert!(report.is_conserved());
    let sent = dequeued_at(&report, 7);
    assert!(
        sent > 900,
        "most packets drained after the last tick: {sent}"
    );
    let counted: u64 = read_hlog(&path)
        .unwrap()
        .iter()
        .filter(|i| i.tag.as_deref() == Some("p7.sojourn"))
        .map(|i| i.hist.len())
        .sum();
    assert_eq!(
        counted, sent,
        "every drained packet's sojourn is in the .hlog"
    );
}

/// O2, review finding: metrics.db keeps a stream's windows by its full id. Stream A
/// (priority 7) is named and tail-drops, then closes; stream B (priority 3) opens in
/// the same slot (the freed slot is taken first) and is named in the same period.
/// B's rows carry none of A's drops, and the rows of each priority still add up to the
/// runtime's counters (keyed by slot, A's drops showed up under B at priority 3).
#[test]
fn o2_a_reused_slot_does_not_inherit_the_closed_streams_rows() {
    let dir = temp_dir("reuse");
    let db = dir.join("metrics.db");
    let (plane, mut tx, sw) = start(
        1,
        tail_drop_at_100(),
        ControlConfig {
            series_limit: 1,
            metrics_db: Some(db.clone()),
            metrics_db_period: Duration::from_secs(3),
            ..ControlConfig::default()
        },
    );
    sw.hold.store(true, Ordering::Relaxed);
    let a = tx.open(1, StreamConfig::with_priority(7)).unwrap();
    push(&mut tx, a, 300);
    wait_until("A's drops in a report", 10, || {
        named_counter(&plane.metrics_text(), "qos_packets_enqueued_total", 1) == Some(300)
    });
    tx.close(a).unwrap();
    let b = tx.open(2, StreamConfig::with_priority(3)).unwrap();
    push(&mut tx, b, 10);
    wait_until("B named", 10, || {
        named_counter(&plane.metrics_text(), "qos_packets_enqueued_total", 2) == Some(10)
    });
    sw.hold.store(false, Ordering::Relaxed);
    drop(tx);
    let (report, _) = plane.shutdown(StopMode::Drain).unwrap();
    assert!(report.is_conserved());
    assert!(
        dropped_at(&report, 7) >= 200,
        "A tail-dropped and was closed with a queue"
    );
    assert_eq!(dropped_at(&report, 3), 0, "B dropped nothing");
    let rows = read_rows(&db).unwrap();
    assert!(
        rows.iter()
            .filter(|r| r.stream_id == "2")
            .all(|r| r.packets_dropped == 0 && r.priority == 3),
        "{rows:?}"
    );
    for p in 0..8u8 {
        let sum: u64 = rows
            .iter()
            .filter(|r| r.priority == p)
            .map(|r| r.packets_dropped)
            .sum();
        assert_eq!(sum, dropped_at(&report, usize::from(p)), "p{p}: {rows:?}");
    }
}

/// O2: a row's `bandwidth_allocated_mbps` is the rate the stream was served at. One
/// stream kept backlogged behind a 4 Mbit/s paced link (500-byte packets, 1000 a
/// second): every batch between the first (which holds the link's initial burst) and
/// the last (cut by the discarding stop) names it at 4 Mbit/s within 3% (three runs
/// here: all within 0.25%). The last batch names it too, with the stop's drops.
#[test]
fn o2_metrics_db_bandwidth_is_the_rate_served() {
    let dir = temp_dir("db_rate");
    let db = dir.join("metrics.db");
    let rate_bps = 4_000_000;
    let (plane, mut tx, _sw) = start(
        1,
        PolicySpec {
            max_queue_depth: 5_000,
            link: Some(LinkRate {
                rate_bps,
                burst_bytes: 64_000,
            }),
            ..tail_drop_at_100()
        },
        ControlConfig {
            metrics_db: Some(db.clone()),
            metrics_db_period: Duration::from_millis(400),
            ..ControlConfig::default()
        },
    );
    let h = tx.open_on(0, 7001, StreamConfig::with_priority(4)).unwrap();
    // 3 s of traffic at the link rate, queued at once: backlogged for the whole run.
    push(&mut tx, h, 3_000);
    wait_until("five batches written", 20, || {
        plane.status().metrics_db.unwrap().batches_written >= 5
    });
    drop(tx);
    let (report, _) = plane.shutdown(StopMode::Discard).unwrap();
    assert!(report.is_conserved());
    assert!(dropped_at(&report, 4) > 0, "still backlogged at the stop");

    let rows = read_rows(&db).unwrap();
    let batches = by_batch(&rows);
    let middle: Vec<f64> = batches
        .values()
        .skip(1)
        .take(batches.len().saturating_sub(2))
        .map(|b| {
            b.iter()
                .find(|r| r.stream_id == "7001")
                .unwrap_or_else(|| panic!("7001 named in every batch: {b:?}"))
                .bandwidth_allocated_mbps
        })
        .collect();
    assert!(middle.len() >= 3, "{} middle batches", middle.len());
    // The last batch, cut by the stop, still names 7001, with what the stop dropped of
    // it (every drop of the run: the queue never reached its limit). They used to go
    // under `other`.
    let (_, last) = batches.iter().next_back().unwrap();
    let row = last
        .iter()
        .find(|r| r.stream_id == "7001")
        .unwrap_or_else(|| panic!("7001 named in the last batch: {last:?}"));
    assert_eq!(row.packets_dropped, dropped_at(&report, 4), "{last:?}");
    assert!(
        last.iter()
            .all(|r| r.stream_id == "7001" || r.packets_dropped == 0),
        "{last:?}"
    );
    let want = rate_bps as f64 / 1e6;
    for (i, mbps) in middle.iter().enumerate() {
        assert!(
            (mbps - want).abs() <= 0.03 * want,
            "batch {}: {mbps} Mbit/s, want {want}; all {middle:?}",
            i + 1
        );
    }
}

/// O4: a restart keeps the last run's evidence. Two control planes write the same
/// `.hlog` path in turn (40 then 25 packets of priority 7): the second run's log is at
/// the path and the first's at `<path>.1`, each readable with its own count (the
/// second run truncated the first's log before).
#[test]
fn o4_a_restart_keeps_the_previous_hlog_as_dot_1() {
    let dir = temp_dir("hlog-restart");
    let path = dir.join("run.hlog");
    let p7 = |path: &std::path::Path| -> u64 {
        read_hlog(path)
            .unwrap()
            .iter()
            .filter(|i| i.tag.as_deref() == Some("p7.sojourn"))
            .map(|i| i.hist.len())
            .sum()
    };
    for packets in [40, 25] {
        let (plane, mut tx, _) = start(
            1,
            tail_drop_at_100(),
            ControlConfig {
                hlog: Some(path.clone()),
                hlog_period: Duration::from_secs(3600),
                ..ControlConfig::default()
            },
        );
        let h = tx.open(1, StreamConfig::with_priority(7)).unwrap();
        push(&mut tx, h, packets);
        drop(tx);
        let (report, _) = plane.shutdown(StopMode::Drain).unwrap();
        assert_eq!(dequeued_at(&report, 7), packets);
    }
    let mut previous = path.clone().into_os_string();
    previous.push(".1");
    assert_eq!(p7(&path), 25, "this run");
    assert_eq!(p7(std::path::Path::new(&previous)), 40, "the run before");
    std::fs::remove_dir_all(dir).unwrap();
}

/// O4 (review): a log with only its header (a run that died before its first interval)
/// is not kept over the real one already at `<path>.1`: a restart loop must not push
/// the last real log out.
#[test]
fn o4_a_header_only_hlog_does_not_replace_the_kept_one() {
    let dir = temp_dir("hlog-header-only");
    let path = dir.join("run.hlog");
    let mut previous = path.clone().into_os_string();
    previous.push(".1");
    std::fs::write(&previous, "the last real log").unwrap();
    qos_control::hlog::HlogWriter::create(&path, std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .finish()
        .unwrap();
    let (plane, tx, _) = start(
        1,
        tail_drop_at_100(),
        ControlConfig {
            hlog: Some(path.clone()),
            hlog_period: Duration::from_secs(3600),
            ..ControlConfig::default()
        },
    );
    drop(tx);
    plane.shutdown(StopMode::Drain).unwrap();
    assert_eq!(
        std::fs::read_to_string(&previous).unwrap(),
        "the last real log"
    );
    assert!(!read_hlog(&path).unwrap().is_empty(), "this run's log");
    std::fs::remove_dir_all(dir).unwrap();
}

/// C5 (audit red team): the last record of an audit log is vouched for by no later
/// line, so an edit to it while the daemon was down went unseen, and the restarted
/// control plane continued the chain, vouching for the edit. A head saved earlier
/// (`/status` shows `audit_head`) can now be given at start (`audit_anchor`): the
/// edited log is refused, an intact one continues.
#[test]
fn c5_an_audit_anchor_at_start_refuses_an_edited_end() {
    use qos_control::audit::{AuditHead, VerifyReport, verify};
    let dir = temp_dir("audit-anchor");
    let audit = dir.join("audit.jsonl");
    let try_start = |anchor: Option<AuditHead>| {
        let (dp, producers) = Dataplane::<u64>::builder()
            .pinning(Pinning::Off)
            .build(|_| Wire(Switch::default()))
            .unwrap();
        drop(producers);
        ControlPlane::start(
            dp,
            ControlConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                audit_log: Some(audit.clone()),
                audit_anchor: anchor,
                ..ControlConfig::default()
            },
        )
    };
    let plane = try_start(None).unwrap();
    wait_until("a record", 10, || {
        std::fs::read_to_string(&audit).is_ok_and(|t| !t.is_empty())
    });
    plane.shutdown(StopMode::Discard).unwrap();
    let VerifyReport::Ok { lines, head_hash } = verify(&audit).unwrap() else {
        panic!("a fresh log verifies");
    };
    let head = AuditHead {
        next_seq: lines,
        last_hash: head_hash,
    };
    // An intact log continues under its anchor.
    try_start(Some(head))
        .unwrap()
        .shutdown(StopMode::Discard)
        .unwrap();
    // The head as the operator would save it now: the last record.
    let VerifyReport::Ok { lines, head_hash } = verify(&audit).unwrap() else {
        panic!("the continued log verifies");
    };
    let head = AuditHead {
        next_seq: lines,
        last_hash: head_hash,
    };
    // Edit that last record (one digit of its timestamp): the file alone cannot tell,
    // the anchor can.
    let text = std::fs::read_to_string(&audit).unwrap();
    let mut lines_of: Vec<String> = text.lines().map(str::to_owned).collect();
    let at = usize::try_from(head.next_seq - 1).unwrap();
    let ts = lines_of[at].find("\"ts_unix_ms\":").unwrap() + 13;
    let digit = lines_of[at].as_bytes()[ts];
    let other = if digit == b'1' { "2" } else { "1" };
    lines_of[at].replace_range(ts..=ts, other);
    std::fs::write(&audit, lines_of.join("\n") + "\n").unwrap();
    assert!(
        verify(&audit).unwrap().is_ok(),
        "an edited last line is invisible alone"
    );
    let before = std::fs::read(&audit).unwrap();
    match try_start(Some(head)) {
        Err(e) => assert!(
            e.to_string()
                .contains(&format!("line {}: tampered", at + 1)),
            "{e}"
        ),
        Ok(_) => panic!("an edited anchored record was continued"),
    }
    assert_eq!(
        std::fs::read(&audit).unwrap(),
        before,
        "the log is left as it was"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
