//! The control plane's scrape at a million open streams (issue 8, O1), each case against
//! the same at 1,000 streams, measured in the same run:
//! * `o1_scrape`: `ControlPlane::metrics_text` (what `GET /metrics` renders: the
//!   workers' counters, the cached busiest-100 report and the histograms), with
//!   `series_limit` 100. Bounded cardinality means the same cost and size at 1M as at
//!   1K; the exposition's size and its distinct `stream_id` values are printed (and
//!   the bound asserted) before the timing, and so is an interleaved comparison
//!   (2,000 scrapes of each, alternating; medians and their ratio), which load on
//!   the machine skews less than two consecutive criterion runs.
//! * `o1_report_walk`: `Dataplane::stream_reports(100, ..)` through
//!   `ControlPlane::with_dataplane`, from the request until the worker's complete
//!   report is back (polled with a 1 ms timeout). The worker walks its table 1,024
//!   slots per loop iteration, so this grows with the stream count; it runs on the
//!   control thread, not in the scrape.
//!
//! Each setup: a real `Dataplane<u64>` (1 worker, pinning off, default idle strategy,
//! `max_streams` 2^20) with N streams opened through a `Producer` (keys 0..N), then 1
//! to 5 packets on 1,000 streams spread evenly over the table (so the busiest 100 are
//! a real selection), all sent by a counting egress before the control plane starts.
//! The active streams get the same priorities (rank % 8) and packet counts at both
//! sizes, so the two expositions differ only in the stream keys and the open count.
//! The control plane runs its own thread (tick 250 ms, reports every 1 s) during the
//! measurements, as in production.
//!
//! Run: `cargo bench -p qos-benches --bench scrape`.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use qos_benches::CountingEgress;
use qos_control::plane::{ControlConfig, ControlPlane};
use qos_dataplane::runtime::{
    ControlError, Dataplane, EnqueueError, Pinning, Producer, RuntimeConfig, StopMode, StreamHandle,
};
use qos_dataplane::sched::{SchedulerConfig, StreamConfig};

/// The clock, for `iter_custom` timing and setup deadlines only.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

const SERIES_LIMIT: usize = 100;
/// Streams that get packets (1 to 5 each), spread evenly over the table.
const ACTIVE: u64 = 1_000;

/// A control plane over a dataplane with `streams` open streams.
struct Setup {
    streams: u64,
    plane: Option<ControlPlane<u64>>,
    tx: Option<Producer<u64>>,
}

fn wait(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(now() < deadline, "setup: timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Setup {
    fn new(streams: u64) -> Self {
        let started = now();
        let deadline = started + Duration::from_secs(120);
        let sent = Arc::new(AtomicU64::new(0));
        let s = sent.clone();
        let config = RuntimeConfig {
            workers: 1,
            pinning: Pinning::Off,
            ring_capacity: 1 << 16,
            scheduler: SchedulerConfig {
                max_streams: 1 << 20,
                ..SchedulerConfig::default()
            },
            ..RuntimeConfig::default()
        };
        let (dp, mut producers) = Dataplane::<u64>::builder()
            .config(config)
            .build(move |_| CountingEgress(s.clone()))
            .expect("dataplane");
        let mut tx = producers.pop().expect("producer");
        // The active streams are every `stride`-th; priority (key / stride) % 8 gives
        // them the same priorities at every table size (the sojourn histograms, 8 of
        // them in every scrape, cost more when more of them hold samples).
        let stride = (streams / ACTIVE).max(1);
        let mut handles: Vec<StreamHandle> = Vec::with_capacity(streams as usize);
        for key in 0..streams {
            let config = StreamConfig::with_priority((key / stride % 8) as u8);
            loop {
                match tx.open(key, config) {
                    Ok(h) => {
                        handles.push(h);
                        break;
                    }
                    Err(ControlError::Full) => std::thread::yield_now(),
                    Err(e) => panic!("open {key}: {e}"),
                }
            }
        }
        // Packets after every open on the same ring: once the egress has them all,
        // the worker has processed every open.
        let mut pushed = 0u64;
        for (i, h) in handles.iter().step_by(stride as usize).enumerate() {
            for _ in 0..1 + i % 5 {
                loop {
                    match tx.enqueue(*h, pushed, 1000) {
                        Ok(()) => break,
                        Err(EnqueueError::Full(_)) => std::thread::yield_now(),
                        Err(e) => panic!("enqueue: {e}"),
                    }
                }
                pushed += 1;
            }
        }
        tx.flush();
        wait("the egress", deadline, || {
            sent.load(Ordering::Acquire) >= pushed
        });
        let plane = ControlPlane::start(
            dp,
            ControlConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                series_limit: SERIES_LIMIT,
                ..ControlConfig::default()
            },
        )
        .expect("control plane");
        // The plane's first complete report (its tick requests one every second).
        wait("the first complete report", deadline, || {
            plane.status().shard_streams.iter().sum::<u64>() == streams
        });
        eprintln!(
            "setup: {streams} streams open, {pushed} packets sent, report in, in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Self {
            streams,
            plane: Some(plane),
            tx: Some(tx),
        }
    }

    fn plane(&self) -> &ControlPlane<u64> {
        self.plane.as_ref().expect("plane")
    }

    fn name(&self) -> String {
        match self.streams {
            n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("streams_{}m", n / 1_000_000),
            n if n >= 1_000 && n % 1_000 == 0 => format!("streams_{}k", n / 1_000),
            n => format!("streams_{n}"),
        }
    }

    /// Prints the exposition's size and checks its cardinality bound.
    fn describe_exposition(&self) {
        let text = self.plane().metrics_text();
        let ids: BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split("stream_id=\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        // The sojourn histograms dominate the scrape's cost (walked per bucket bound),
        // and their contents differ from run to run: print them with the timing.
        let total = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let (count, sum) = (
            total("qos_scheduling_duration_seconds_count"),
            total("qos_scheduling_duration_seconds_sum"),
        );
        eprintln!(
            "exposition at {} streams: {} bytes, {} lines, {series} samples, {} distinct stream_id values (\"other\" included: {}); sojourn histograms: {count} packets, mean {:.0} us",
            self.streams,
            text.len(),
            text.lines().count(),
            ids.len(),
            ids.contains("other"),
            sum / count.max(1.0) * 1e6,
        );
        assert!(
            ids.len() <= SERIES_LIMIT + 1,
            "cardinality not bounded: {} stream_id values",
            ids.len()
        );
        assert!(
            text.contains(&format!("{}", self.streams)),
            "the open stream count is exported"
        );
    }

    /// One complete report walk: request, then poll until the worker hands it back.
    fn report_walk(&self) -> Duration {
        self.plane()
            .with_dataplane(|dp| {
                // Collect a walk the control thread may have requested, so the timed
                // one starts from slot 0.
                let t0 = now();
                while dp.stream_reports(SERIES_LIMIT, Duration::from_secs(1))[0].is_none() {
                    assert!(t0.elapsed() < Duration::from_secs(30), "report stuck");
                }
                let start = now();
                let report = loop {
                    if let Some(r) = dp
                        .stream_reports(SERIES_LIMIT, Duration::from_millis(1))
                        .pop()
                        .flatten()
                    {
                        break r;
                    }
                    assert!(start.elapsed() < Duration::from_secs(30), "report stuck");
                };
                let took = start.elapsed();
                assert_eq!(report.open_streams, self.streams);
                assert_eq!(report.top.len(), SERIES_LIMIT.min(self.streams as usize));
                black_box(report);
                took
            })
            .expect("dataplane running")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        drop(self.tx.take()); // shutdown waits for producers to be dropped
        if let Some(plane) = self.plane.take() {
            let _ = plane.shutdown(StopMode::Discard);
        }
    }
}

/// Scrapes the two setups alternately, `rounds` times each, and prints each one's
/// median and their ratio: machine noise (other load on the cores) then hits both
/// alike, which consecutive criterion groups cannot promise.
fn interleaved_scrapes(a: &Setup, b: &Setup, rounds: usize) {
    let mut ta = Vec::with_capacity(rounds);
    let mut tb = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        for (s, t) in [(a, &mut ta), (b, &mut tb)] {
            let start = now();
            black_box(s.plane().metrics_text());
            t.push(start.elapsed());
        }
    }
    ta.sort_unstable();
    tb.sort_unstable();
    let (ma, mb) = (ta[rounds / 2], tb[rounds / 2]);
    eprintln!(
        "interleaved scrapes ({rounds} each): median {:.1} us at {} streams, {:.1} us at {} streams, ratio {:.2}",
        ma.as_secs_f64() * 1e6,
        a.streams,
        mb.as_secs_f64() * 1e6,
        b.streams,
        mb.as_secs_f64() / ma.as_secs_f64(),
    );
}

fn o1(c: &mut Criterion) {
    // Baseline first, then the million (both stay up until the end: same process).
    let setups = [Setup::new(1_000), Setup::new(1_000_000)];
    for s in &setups {
        s.describe_exposition();
    }
    interleaved_scrapes(&setups[0], &setups[1], 2_000);

    let mut g = c.benchmark_group("o1_scrape");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for s in &setups {
        g.bench_function(s.name(), |b| {
            b.iter_custom(|iters| {
                let start = now();
                for _ in 0..iters {
                    black_box(s.plane().metrics_text());
                }
                start.elapsed()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("o1_report_walk");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    g.warm_up_time(Duration::from_secs(1));
    for s in &setups {
        g.bench_function(s.name(), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| s.report_walk()).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, o1);
criterion_main!(benches);
