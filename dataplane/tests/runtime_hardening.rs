//! Findings of the runtime review, each as a regression test: many workers with a link,
//! a republished burst too small for the workers, several producers against a small
//! descriptor pool, and a hostile or live shared-memory peer.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use qos_dataplane::runtime::shm::{encode_open, encode_packet};
use qos_dataplane::runtime::{
    Clock, Dataplane, DiscardReason, Discarded, Egress, EnqueueError, IdleStrategy, Outbox,
    Pinning, PublishError, StopMode, WorkerState,
};
use qos_dataplane::sched::{
    DropReason, LinkRate, Policy, PolicySpec, Priority, SchedulerConfig, StreamConfig,
};
use qos_shm_ring::{RingConfig, pair};

/// Sends everything; records discard reasons.
#[derive(Default)]
struct Sink(Arc<Mutex<Vec<DiscardReason>>>);

impl Egress<u64> for Sink {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        while out.pop().is_some() {}
    }
    fn discard(&mut self, d: Discarded<u64>) {
        self.0.lock().unwrap().push(d.reason);
    }
}

fn linked(rate_bps: u64, burst_bytes: u64) -> Arc<Policy> {
    let spec = PolicySpec {
        link: Some(LinkRate {
            rate_bps,
            burst_bytes,
        }),
        disconnect: false,
        ..PolicySpec::default()
    };
    Arc::new(spec.build().unwrap())
}

#[test]
fn t6_sixty_five_workers_with_a_link_run_and_stop() {
    // The allocation once had a fixed 64-entry scratch: every worker panicked.
    let (dp, producers) = Dataplane::<u64>::builder()
        .workers(65)
        .pinning(Pinning::Off)
        .policy(linked(1_000_000_000, 1 << 30))
        .build(|_| Sink::default())
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    assert!(
        dp.worker_states()
            .iter()
            .all(|s| *s == WorkerState::Running)
    );
    assert!(dp.link_granted_bps() <= 1_000_000_000);
    drop(producers);
    dp.shutdown(StopMode::Drain).unwrap();
}

#[test]
fn t6_a_burst_too_small_for_the_workers_is_refused_at_publish() {
    let (dp, producers) = Dataplane::<u64>::builder()
        .workers(2)
        .pinning(Pinning::Off)
        .policy(linked(8_000_000, 20_000))
        .build(|_| Sink::default())
        .unwrap();
    // 9,216 bytes of burst for two workers and 9,216-byte packets: each bucket would
    // hold half a packet and pass full packets above its rate.
    let spec = PolicySpec {
        version: 2,
        ..linked(8_000_000, 9_216).spec().clone()
    };
    let err = dp
        .publish_policy(Arc::new(spec.build().unwrap()))
        .unwrap_err();
    assert!(matches!(err, PublishError::BurstTooSmall { .. }), "{err}");
    assert!(
        err.to_string().starts_with("policy.link.burst_bytes"),
        "{err}"
    );
    assert_eq!(dp.policy().version(), 1, "the running policy stays");
    drop(producers);
    dp.shutdown(StopMode::Drain).unwrap();
}

#[test]
fn t2_several_producers_against_a_small_pool_get_backpressure_not_drops() {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let r = reasons.clone();
    let (dp, mut producers) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .producers(4)
        .policy(linked(1_000_000, 16_000))
        .scheduler(SchedulerConfig {
            max_packets: 200,
            ..SchedulerConfig::default()
        })
        .idle(IdleStrategy::Backoff {
            park_timeout: Duration::from_millis(200),
        })
        .drain_timeout(Duration::from_millis(10))
        .build(move |_| Sink(r.clone()))
        .unwrap();
    let hs: Vec<_> = producers
        .iter_mut()
        .map(|tx| tx.open_on(0, 0, StreamConfig::with_priority(0)).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(50)); // let the worker park
    // Fill every ring quietly (4 x 100 > the pool of 200), then wake the worker once.
    for (tx, h) in producers.iter_mut().zip(&hs) {
        for i in 0..100 {
            match tx.enqueue_quiet(*h, i, 1000) {
                Ok(()) | Err(EnqueueError::Full(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    for tx in producers.iter_mut() {
        tx.flush();
    }
    thread::sleep(Duration::from_millis(100));
    let pool_drops = reasons
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.as_str() == "pool_exhausted")
        .count();
    assert_eq!(pool_drops, 0, "a full pool must push back, not drop");
    assert!(
        dp.stats()[0].taken <= 200 + 32,
        "took {}",
        dp.stats()[0].taken
    );
    drop(producers);
    assert!(dp.shutdown(StopMode::Discard).unwrap().is_conserved());
}

fn shm_dataplane(
    drain: Duration,
) -> (
    Dataplane<u64>,
    qos_shm_ring::Producer,
    Arc<Mutex<Vec<DiscardReason>>>,
) {
    let (tx, rx) = pair(RingConfig::for_records(1024, 64)).unwrap();
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let r = reasons.clone();
    let (dp, producers) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .policy(linked(1_000_000, 64_000))
        .scheduler(SchedulerConfig {
            max_streams: 1024,
            ..SchedulerConfig::default()
        })
        .shm_ingress(0, rx, |_| 0)
        .drain_timeout(drain)
        .build(move |_| Sink(r.clone()))
        .unwrap();
    drop(producers);
    (dp, tx, reasons)
}

#[test]
fn t2_shm_reopening_an_open_number_closes_the_old_stream() {
    let (dp, mut tx, _) = shm_dataplane(Duration::from_millis(200));
    let mut b = [0u8; 64];
    let n = encode_open(&mut b, 0, Priority::new(2).unwrap(), None);
    tx.push(&b[..n]).unwrap();
    for _ in 0..200 {
        let n = encode_packet(&mut b, 0, 1000, &[]);
        tx.push(&b[..n]).unwrap();
    }
    let n = encode_open(&mut b, 0, Priority::new(2).unwrap(), None);
    tx.push(&b[..n]).unwrap();
    thread::sleep(Duration::from_millis(50));
    drop(tx);
    let report = dp.shutdown(StopMode::Discard).unwrap();
    let w = &report.workers[0];
    assert_eq!(w.taken, 200);
    assert_eq!(
        w.sent + w.discarded,
        200,
        "the old stream's queue is not orphaned"
    );
    assert!(report.is_conserved());
}

#[test]
fn t2_shm_local_numbers_beyond_the_table_are_rejected() {
    let (dp, mut tx, _) = shm_dataplane(Duration::from_millis(100));
    let mut b = [0u8; 64];
    // u32::MAX would once resize the worker's table to 48 GiB.
    for local in [u32::MAX, 1024] {
        let n = encode_open(&mut b, local, Priority::new(2).unwrap(), None);
        tx.push(&b[..n]).unwrap();
        let n = encode_packet(&mut b, local, 100, &[]);
        tx.push(&b[..n]).unwrap();
    }
    thread::sleep(Duration::from_millis(50));
    drop(tx);
    let report = dp.shutdown(StopMode::Drain).unwrap();
    assert_eq!(report.workers[0].shm_rejected, 4);
    assert_eq!(report.workers[0].taken, 0);
    assert!(report.is_conserved());
}

#[test]
fn t2_a_live_shm_peer_cannot_hold_shutdown_past_its_deadline() {
    let (dp, mut tx, _) = shm_dataplane(Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let peer = thread::spawn(move || {
        let mut b = [0u8; 64];
        let n = encode_packet(&mut b, 7, 1000, &[]); // a stream never opened
        while !s.load(Ordering::Relaxed) {
            if tx.push(&b[..n]).is_err() {
                thread::yield_now();
            }
        }
    });
    thread::sleep(Duration::from_millis(20));
    let clock = Clock::start();
    let report = dp.shutdown(StopMode::Drain).unwrap();
    let took = clock.now_ns();
    stop.store(true, Ordering::Relaxed);
    peer.join().unwrap();
    assert!(
        took < 2_000_000_000,
        "shutdown took {took} ns with a 100 ms drain"
    );
    assert!(report.is_conserved());
    assert_eq!(report.workers[0].unknown_stream, report.workers[0].taken);
}

/// Counts what the egress sends.
#[derive(Clone, Default)]
struct Counted(Arc<std::sync::atomic::AtomicU64>);

impl Egress<u64> for Counted {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        while out.pop().is_some() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Embedding-API red team: a handle of one dataplane used on another's producer was
/// accepted (producer index, slot and generation all start at 0 in every dataplane)
/// and its packet went to B's own stream. It is refused, handed back.
#[test]
fn t2_a_handle_of_another_dataplane_is_refused() {
    let (sent_a, sent_b) = (Counted::default(), Counted::default());
    let (a, b) = (sent_a.clone(), sent_b.clone());
    let (dpa, mut pa) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .build(move |_| a.clone())
        .unwrap();
    let (dpb, mut pb) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .build(move |_| b.clone())
        .unwrap();
    let (mut ta, mut tb) = (pa.pop().unwrap(), pb.pop().unwrap());
    let ha = ta.open(1, StreamConfig::with_priority(7)).unwrap();
    let hb = tb.open(2, StreamConfig::with_priority(0)).unwrap();
    assert!(matches!(
        tb.enqueue(ha, 777, 100),
        Err(EnqueueError::StaleHandle(777))
    ));
    assert!(matches!(
        ta.enqueue(hb, 778, 100),
        Err(EnqueueError::StaleHandle(778))
    ));
    assert!(tb.close(ha).is_err());
    // Each handle still works with its own producer.
    ta.enqueue(ha, 1, 100).unwrap();
    tb.enqueue(hb, 2, 100).unwrap();
    drop((ta, tb));
    let (ra, rb) = (
        dpa.shutdown(StopMode::Drain).unwrap(),
        dpb.shutdown(StopMode::Drain).unwrap(),
    );
    assert!(ra.is_conserved() && rb.is_conserved());
    assert_eq!((ra.sent(), rb.sent()), (1, 1));
    assert_eq!(
        (
            sent_a.0.load(Ordering::Relaxed),
            sent_b.0.load(Ordering::Relaxed)
        ),
        (1, 1)
    );
}

/// Embedding-API red team: a drain timeout of 2^55 s was cast to u64 ns and wrapped to
/// under a millisecond: Drain discarded 90 of 100 packets an 80 ms drain would have
/// sent. A huge timeout now means "drain it all".
#[test]
fn t1_a_huge_drain_timeout_drains_rather_than_wraps() {
    let sent = Counted::default();
    let s = sent.clone();
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .policy(linked(10_000_000, 10_000))
        .drain_timeout(Duration::from_secs(1 << 55))
        .build(move |_| s.clone())
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let h = tx.open(1, StreamConfig::with_priority(3)).unwrap();
    // 100 x 1000 B at 10 Mbit/s: an 80 ms drain.
    for i in 0..100 {
        while tx.enqueue(h, i, 1000).is_err() {
            thread::yield_now();
        }
    }
    drop(tx);
    let r = dp.shutdown(StopMode::Drain).unwrap();
    assert!(r.is_conserved());
    assert_eq!((r.sent(), r.discarded()), (100, 0));
    assert_eq!(sent.0.load(Ordering::Relaxed), 100);
}

/// An egress whose first call tells the test it started, then waits to be released;
/// it counts its calls.
struct Held {
    started: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
    calls: Arc<std::sync::atomic::AtomicU64>,
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl Egress<u64> for Held {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        if self.calls.fetch_add(1, Ordering::Relaxed) == 0 {
            let _ = self.started.send(());
            let _ = self.release.recv();
        }
        while out.pop().is_some() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Embedding-API red team: the drain deadline was compared with the time the loop
/// iteration started, so a slow egress got one more call past the timeout (a 50 ms
/// timeout with an egress blocking 300 ms a call stopped after 2 calls, 601 ms). Here
/// the first call is held until well past the timeout: when it returns, the stop
/// discards the rest, and there is no second call.
#[test]
fn t1_the_drain_deadline_is_checked_after_a_slow_egress_returns() {
    let (started_tx, started) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let egress = Mutex::new(Some(Held {
        started: started_tx,
        release: release_rx,
        calls: calls.clone(),
        sent: sent.clone(),
    }));
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .drain_timeout(Duration::from_millis(50))
        .build(move |_| egress.lock().unwrap().take().unwrap())
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let h = tx.open(1, StreamConfig::with_priority(3)).unwrap();
    for i in 0..200 {
        while tx.enqueue(h, i, 100).is_err() {
            thread::yield_now();
        }
    }
    drop(tx);
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("first egress call");
    let stopping = thread::spawn(move || dp.shutdown(StopMode::Drain).unwrap());
    thread::sleep(Duration::from_millis(200));
    release.send(()).unwrap();
    let r = stopping.join().unwrap();
    assert!(r.is_conserved());
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "one call, none past the deadline"
    );
    // What the held call took was sent; everything else was discarded.
    let first = sent.load(Ordering::Relaxed);
    assert!(first >= 1);
    assert_eq!((r.sent(), r.discarded()), (first, 200 - first));
}

/// Embedding-API red team: `event_capacity` had no upper bound, and `usize::MAX` panicked
/// inside `build` (the ring's allocation); rings too big to allocate (2^24 messages of
/// an 8 KiB packet type: 128 GiB) aborted the process. Both are errors naming the field.
#[test]
fn t1_rings_too_big_to_allocate_are_build_errors_naming_the_field() {
    let config = qos_dataplane::runtime::RuntimeConfig {
        event_capacity: usize::MAX,
        pinning: Pinning::Off,
        ..Default::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.starts_with("event_capacity:"), "{err}");
    let err = Dataplane::<u64>::builder()
        .config(config)
        .build(|_| Sink::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("event_capacity:"), "{err}");

    // 2^24 messages of a 1 MiB packet type for 1,024 producers and 1,024 workers: 2^64
    // bytes, refused on any machine (before, 2^24 of 8 KiB for one producer and worker,
    // 128 GiB, aborted the process here).
    struct Big;
    impl Egress<[u8; 1 << 20]> for Big {
        fn send(&mut self, _now: u64, out: &mut Outbox<'_, [u8; 1 << 20]>) {
            while out.pop().is_some() {}
        }
    }
    let config = qos_dataplane::runtime::RuntimeConfig {
        ring_capacity: 1 << 24,
        producers: 1024,
        workers: 1024,
        pinning: Pinning::Off,
        ..Default::default()
    };
    let err = Dataplane::<[u8; 1 << 20]>::builder()
        .config(config)
        .build(|_| Big)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("ring_capacity: 16777216, expected rings this machine can allocate"),
        "{err}"
    );
}

/// Worker 1's egress: panics in `send` once it has taken `panic_at` packets (after
/// taking that one), or in `discard` on its first call when `panic_at` is 0. Its
/// first `send` waits for the gate, if any. Records every discard reason it is handed.
struct Brittle {
    worker: usize,
    panic_at: u64,
    taken: u64,
    gate: Option<std::sync::mpsc::Receiver<()>>,
    discards: Arc<Mutex<Vec<(usize, DiscardReason)>>>,
}

impl Egress<u64> for Brittle {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv_timeout(Duration::from_secs(20));
        }
        while out.pop().is_some() {
            self.taken += 1;
            if self.worker == 1 && self.panic_at > 0 && self.taken == self.panic_at {
                panic!("egress of worker 1 failed at packet {}", self.taken);
            }
        }
    }
    fn discard(&mut self, d: Discarded<u64>) {
        self.discards.lock().unwrap().push((self.worker, d.reason));
        if self.worker == 1 && self.panic_at == 0 {
            panic!("discard of worker 1 failed");
        }
    }
}

/// Pushes `n` packets round robin over `handles`, retrying a full ring; stops at the
/// first `Closed`. Returns how many were accepted.
fn push_until_closed(
    tx: &mut qos_dataplane::runtime::Producer<u64>,
    handles: &[qos_dataplane::runtime::StreamHandle],
    n: u64,
    len: u32,
) -> u64 {
    let mut accepted = 0;
    for i in 0..n {
        let h = handles[(i as usize) % handles.len()];
        loop {
            match tx.enqueue(h, i, len) {
                Ok(()) => {
                    accepted += 1;
                    break;
                }
                Err(EnqueueError::Full(_)) => thread::yield_now(),
                Err(EnqueueError::Closed(_)) => return accepted,
                Err(e) => panic!("{e}"),
            }
        }
    }
    accepted
}

/// Waits (at most 20 s) until worker `w` shows as panicked.
fn wait_panicked(dp: &Dataplane<u64>, w: usize) {
    let clock = Clock::start();
    while dp.worker_states()[w] != WorkerState::Panicked {
        assert!(clock.now_ns() < 20_000_000_000, "the panic is reported");
        thread::sleep(Duration::from_millis(1));
    }
}

/// The worker's own discards add up: every packet handed to `discard` (or dropped in
/// its place) has exactly one reason among the counted ones.
fn discards_add_up(w: &qos_dataplane::runtime::WorkerStats) -> bool {
    let dropped: u64 = w.shard.totals.dropped.iter().sum();
    let refused: u64 = w.shard.refused.iter().sum();
    let shed: u64 = w.shed.iter().sum();
    w.discarded
        == dropped + refused + shed + w.unknown_stream + w.shutdown_discarded + w.egress_failed
}

/// S11, embedding-API red team: an egress that panicked at its 500th packet took the
/// worker's thread down with what it held: 2,520 of 3,000 accepted packets went
/// uncounted and the report did not balance. The panic is now caught: the worker stops
/// calling the egress, discards what it holds and what still reaches it (counted), and
/// the report balances exactly, the panic still returned as an error.
#[test]
fn s11_an_egress_panic_leaves_the_report_balanced() {
    let discards = Arc::new(Mutex::new(Vec::new()));
    let d = discards.clone();
    // Worker 1's first send waits until all 3,000 packets are in: a backlog is held
    // (in the ring, the queues and the batch on offer) when its egress fails.
    let (open_gate, gate) = std::sync::mpsc::channel();
    let gate = Mutex::new(Some(gate));
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .workers(2)
        .pinning(Pinning::Off)
        .drain_timeout(Duration::from_secs(30))
        .build(move |worker| Brittle {
            worker,
            panic_at: 500,
            taken: 0,
            gate: if worker == 1 {
                gate.lock().unwrap().take()
            } else {
                None
            },
            discards: d.clone(),
        })
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let on = |tx: &mut qos_dataplane::runtime::Producer<u64>, w: usize| -> Vec<_> {
        (0..20)
            .map(|k| {
                tx.open_on(
                    w,
                    (w * 100 + k) as u64,
                    StreamConfig::with_priority(k as u8 % 8),
                )
                .unwrap()
            })
            .collect()
    };
    let (h0, h1) = (on(&mut tx, 0), on(&mut tx, 1));
    assert_eq!(push_until_closed(&mut tx, &h1, 3_000, 500), 3_000);
    open_gate.send(()).unwrap();
    wait_panicked(&dp, 1);
    // Worker 1 refuses new packets; worker 0 goes on.
    assert!(matches!(
        tx.enqueue(h1[0], 9, 500),
        Err(EnqueueError::Closed(9))
    ));
    let accepted0 = push_until_closed(&mut tx, &h0, 1_000, 500);
    assert_eq!(accepted0, 1_000);
    drop(tx);
    let report = match dp.shutdown(StopMode::Drain) {
        Err(qos_dataplane::runtime::RuntimeError::WorkerPanicked {
            worker,
            message,
            report,
        }) => {
            assert_eq!(worker, 1);
            assert!(message.contains("failed at packet 500"), "{message}");
            report
        }
        other => panic!("expected the panic as an error, got {other:?}"),
    };
    let w1 = &report.workers[1];
    assert_eq!(w1.taken, 3_000, "every accepted packet was taken");
    assert_eq!(w1.sent, 500, "the egress took 500, the last as it panicked");
    assert_eq!(
        w1.discarded, 2_500,
        "the rest discarded, nothing left anywhere"
    );
    assert!(report.is_conserved(), "{:?}", report.workers);
    assert!(discards_add_up(w1), "{w1:?}");
    // The backlog went as at a discarding stop: the queues dropped `closed`.
    let closed = w1.shard.totals.dropped[DropReason::Closed as usize];
    assert!(closed > 0, "{w1:?}");
    // Worker 0 went on (its queues' own drops aside: 1,000 packets in a burst).
    let w0 = &report.workers[0];
    assert_eq!((w0.taken, w0.sent + w0.discarded), (1_000, 1_000));
    assert!(w0.sent > 500 && w0.egress_failed == 0, "{w0:?}");
    // Its histograms and counters survive: every packet it sent was recorded.
    assert!(report.histograms[1].is_some(), "worker 1's histograms");
    drop(discards);
}

/// S11: a panic inside `Egress::discard` is caught the same way: the packet it was
/// handed stays counted, later ones are dropped by the worker, counted.
#[test]
fn s11_a_panic_in_discard_is_caught_and_counted() {
    let discards = Arc::new(Mutex::new(Vec::new()));
    let d = discards.clone();
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .workers(2)
        .pinning(Pinning::Off)
        .build(move |worker| Brittle {
            worker,
            panic_at: 0,
            taken: 0,
            gate: None,
            discards: d.clone(),
        })
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let h1 = tx.open_on(1, 1, StreamConfig::with_priority(3)).unwrap();
    for i in 0..10 {
        tx.enqueue(h1, i, 100).unwrap();
    }
    // A zero-length packet is refused at the door and handed to `discard`: it panics.
    tx.enqueue(h1, 99, 0).unwrap();
    wait_panicked(&dp, 1);
    drop(tx);
    let report = match dp.shutdown(StopMode::Drain) {
        Err(qos_dataplane::runtime::RuntimeError::WorkerPanicked { worker, report, .. }) => {
            assert_eq!(worker, 1);
            report
        }
        other => panic!("expected the panic as an error, got {other:?}"),
    };
    let w1 = &report.workers[1];
    assert_eq!(w1.taken, 11);
    assert_eq!(w1.sent + w1.discarded, 11);
    assert!(w1.discarded >= 1, "the refused packet is counted");
    assert!(report.is_conserved());
    assert!(discards_add_up(w1), "{w1:?}");
    assert_eq!(
        discards.lock().unwrap().as_slice(),
        &[(
            1,
            DiscardReason::Refused(qos_dataplane::sched::RefuseReason::InvalidLength)
        )],
        "one call, the one that panicked"
    );
}

/// S11, embedding-API red team: a producer that passed its "stopping?" check, was
/// preempted, and pushed after its worker's last read left an accepted packet in the
/// ring, uncounted (40 lost in about 180 runs with a zero drain timeout). Producers
/// here keep pushing through `shutdown`: every packet `enqueue` accepted must be in
/// the report.
#[test]
fn s11_producers_pushing_through_a_zero_drain_timeout_lose_nothing() {
    let mut lost_runs = Vec::new();
    for run in 0..150 {
        let (dp, ps) = Dataplane::<u64>::builder()
            .workers(2)
            .pinning(Pinning::Off)
            .drain_timeout(Duration::ZERO)
            .build(|_| Sink::default())
            .unwrap();
        let go = Arc::new(std::sync::Barrier::new(ps.len() + 1));
        let pushers: Vec<_> = ps
            .into_iter()
            .map(|mut tx| {
                let go = go.clone();
                thread::spawn(move || {
                    let hs: Vec<_> = (0..2)
                        .map(|w| {
                            tx.open_on(w, w as u64, StreamConfig::with_priority(3))
                                .unwrap()
                        })
                        .collect();
                    go.wait();
                    let mut accepted = 0u64;
                    let mut i = 0u64;
                    loop {
                        i += 1;
                        match tx.enqueue(hs[(i % 2) as usize], i, 100) {
                            Ok(()) => accepted += 1,
                            Err(EnqueueError::Full(_)) => thread::yield_now(),
                            // The stop closes every worker to producers at once.
                            Err(_) => break,
                        }
                        if i > 4_000_000 {
                            break; // bounded, whatever happens
                        }
                    }
                    accepted
                })
            })
            .collect();
        go.wait();
        thread::sleep(Duration::from_micros(200 + (run % 7) * 150));
        let report = dp.shutdown(StopMode::Discard).unwrap();
        let accepted: u64 = pushers.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(report.is_conserved());
        if report.taken() != accepted {
            lost_runs.push((run, accepted - report.taken()));
        }
    }
    assert!(
        lost_runs.is_empty(),
        "(run, accepted packets not taken): {lost_runs:?}"
    );
}

/// Embedding-API red team: a stream config the scheduler refuses (weight 0) was
/// accepted by `open`, which handed back a handle; the worker then counted the open as
/// failed and the stream's packets as `unknown_stream`. `open` and `update` now check
/// the config first and refuse it, naming the field; nothing reaches the worker.
#[test]
fn t2_an_invalid_stream_config_is_refused_at_the_producer_naming_the_field() {
    use qos_dataplane::runtime::ControlError;
    use qos_dataplane::sched::RateCap;
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .build(|_| Sink::default())
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let cap = |rate_bps, burst_bytes| StreamConfig {
        cap: Some(RateCap {
            rate_bps,
            burst_bytes,
        }),
        ..StreamConfig::with_priority(3)
    };
    let bad = [
        (
            StreamConfig {
                weight: Some(0),
                ..StreamConfig::with_priority(3)
            },
            "weight: 0",
        ),
        (cap(0, None), "cap.rate_bps: 0"),
        (
            cap(1_000_000, Some((1 << 30) + 1)),
            "cap.burst_bytes: 1073741825",
        ),
    ];
    for (config, says) in &bad {
        let e = tx.open(7, *config).unwrap_err();
        assert!(matches!(e, ControlError::InvalidConfig { .. }), "{e:?}");
        assert!(e.to_string().starts_with(says), "{e} / {says}");
    }
    let h = tx.open(7, StreamConfig::with_priority(3)).unwrap();
    for (config, says) in &bad {
        let e = tx.update(h, *config).unwrap_err();
        assert!(e.to_string().starts_with(says), "{e} / {says}");
    }
    // The edges are accepted: weight 1, a 1 bit/s cap, a 2^30-byte burst.
    for ok in [
        StreamConfig {
            weight: Some(1),
            ..StreamConfig::with_priority(3)
        },
        cap(1, None),
        cap(1_000_000, Some(1 << 30)),
    ] {
        tx.update(h, ok).unwrap();
    }
    // The handle still works; the worker saw no failed open or update.
    tx.enqueue(h, 1, 100).unwrap();
    drop(tx);
    let r = dp.shutdown(StopMode::Drain).unwrap();
    assert_eq!((r.sent(), r.discarded()), (1, 0));
    let w = &r.workers[0];
    assert_eq!((w.open_failed, w.control_failed), (0, 0), "{w:?}");
}

/// Records the packets handed to `discard`, in the order they come.
#[derive(Default)]
struct DiscardOrder(Arc<Mutex<Vec<u64>>>);

impl Egress<u64> for DiscardOrder {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        while out.pop().is_some() {}
    }
    fn discard(&mut self, d: Discarded<u64>) {
        self.0.lock().unwrap().push(d.packet);
    }
}

/// Embedding-API red team: the refusals of one ingress burst reached `Egress::discard`
/// in reverse order. An embedder recycling buffers or logging refusals sees them in the
/// order they were pushed.
#[test]
fn s11_refusals_reach_discard_in_the_order_they_were_pushed() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .build(move |_| DiscardOrder(s.clone()))
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let h = tx.open(1, StreamConfig::with_priority(3)).unwrap();
    // Zero-length packets are refused at the door (`invalid_length`); pushed quietly,
    // several of them reach the worker in one burst.
    for round in 0..20u64 {
        for i in 0..50 {
            tx.enqueue_quiet(h, round * 50 + i, 0).unwrap();
        }
        tx.flush();
    }
    drop(tx);
    let r = dp.shutdown(StopMode::Drain).unwrap();
    assert_eq!(r.discarded(), 1_000);
    let seen = seen.lock().unwrap();
    assert_eq!(*seen, (0..1_000).collect::<Vec<u64>>());
}

/// Takes one packet, then panics (every worker).
struct FailsAtOnce;

impl Egress<u64> for FailsAtOnce {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        let _ = out.pop();
        panic!("egress failed");
    }
}

/// S11: after its egress panicked, a worker still reads its shared-memory rings (a peer
/// process cannot see the worker close) and counts what comes as `egress_failed`.
#[test]
fn s11_after_an_egress_panic_shm_records_are_still_taken_and_counted() {
    let (mut tx, rx) = pair(RingConfig::for_records(1024, 64)).unwrap();
    let (dp, producers) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .shm_ingress(0, rx, |_| 0)
        .build(|_| FailsAtOnce)
        .unwrap();
    drop(producers);
    let mut b = [0u8; 64];
    let n = encode_open(&mut b, 0, Priority::new(2).unwrap(), None);
    tx.push(&b[..n]).unwrap();
    for _ in 0..10 {
        let n = encode_packet(&mut b, 0, 100, &[]);
        tx.push(&b[..n]).unwrap();
    }
    wait_panicked(&dp, 0);
    for _ in 0..20 {
        let n = encode_packet(&mut b, 0, 100, &[]);
        tx.push(&b[..n]).unwrap();
    }
    let clock = Clock::start();
    while dp.stats()[0].taken < 30 {
        assert!(clock.now_ns() < 20_000_000_000, "{:?}", dp.stats()[0]);
        thread::sleep(Duration::from_millis(1));
    }
    drop(tx);
    let report = match dp.shutdown(StopMode::Discard) {
        Err(qos_dataplane::runtime::RuntimeError::WorkerPanicked { report, .. }) => report,
        other => panic!("expected the panic as an error, got {other:?}"),
    };
    let w = &report.workers[0];
    assert_eq!((w.taken, w.sent, w.discarded), (30, 1, 29), "{w:?}");
    assert!(w.egress_failed >= 20, "the late records: {w:?}");
    assert!(discards_add_up(w), "{w:?}");
    assert!(report.is_conserved());
}

/// Sends everything on worker 0; worker 1's egress panics on its first packet.
struct FailsOnWorker1(usize);

impl Egress<u64> for FailsOnWorker1 {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        assert!(self.0 != 1 || out.is_empty(), "egress of worker 1 failed");
        while out.pop().is_some() {}
    }
}

/// T6: the link's slack (what no worker asks for) was split between all workers,
/// including one whose egress had failed, which kept pacing at its part (44.5 Mbit/s)
/// while sending nothing: the survivor, offering 24 of 100 Mbit/s, paced at 55 Mbit/s,
/// and a burst above its measured demand could not use the rest of the link. A failed
/// worker now gives its part back and the slack goes to the workers still running.
#[test]
fn t6_a_failed_worker_leaves_the_link_to_the_others() {
    let link = 100_000_000;
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .workers(2)
        .pinning(Pinning::Off)
        .policy(linked(link, 200_000))
        .build(FailsOnWorker1)
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let h0 = tx.open_on(0, 0, StreamConfig::with_priority(3)).unwrap();
    let h1 = tx.open_on(1, 1, StreamConfig::with_priority(3)).unwrap();
    tx.enqueue(h1, 0, 1000).unwrap();
    wait_panicked(&dp, 1);
    // About 24 Mbit/s on worker 0 (3 packets of 1,000 bytes a millisecond), 400 ms.
    let clock = Clock::start();
    let mut rates = Vec::new();
    while clock.now_ns() < 400_000_000 {
        for i in 0..3 {
            let _ = tx.enqueue(h0, i, 1000);
        }
        thread::sleep(Duration::from_millis(1));
        if clock.now_ns() > 200_000_000 {
            rates.push(dp.stats()[0].link_rate_bps);
        }
    }
    rates.sort_unstable();
    let median = rates[rates.len() / 2];
    // A policy published after the failure is adopted by the failed worker too; it
    // must not take a part of the link back with it.
    dp.publish_policy({
        let mut spec = (*linked(link, 200_000)).spec().clone();
        spec.version = 2;
        Arc::new(spec.build().unwrap())
    })
    .unwrap();
    let clock = Clock::start();
    while dp.policy_versions() != vec![2, 2] {
        assert!(
            clock.now_ns() < 10_000_000_000,
            "{:?}",
            dp.policy_versions()
        );
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(20));
    let stats = dp.stats();
    assert_eq!(stats[1].link_rate_bps, 0, "the failed worker paces nothing");
    assert!(
        median >= link * 9 / 10,
        "worker 0 paced at {median} bit/s (median of the last 200 ms); the link is {link}"
    );
    assert!(dp.link_granted_bps() <= link);
    drop(tx);
    assert!(dp.shutdown(StopMode::Discard).is_err(), "worker 1 panicked");
}

/// A dataplane of one worker fed by `rings` shared-memory rings (the peers' producers
/// returned), with a pool of `max_packets` descriptors and a 1 Mbit/s link, stopping
/// without a drain; its egress records the discard reasons in `reasons`.
fn shm_pool_rings(
    max_packets: u32,
    rings: usize,
    reasons: Arc<Mutex<Vec<DiscardReason>>>,
) -> (Dataplane<u64>, Vec<qos_shm_ring::Producer>) {
    let mut builder = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .policy(linked(1_000_000, 64_000))
        .scheduler(SchedulerConfig {
            max_packets,
            ..SchedulerConfig::default()
        })
        .drain_timeout(Duration::ZERO);
    let mut peers = Vec::new();
    for _ in 0..rings {
        let (tx, rx) = pair(RingConfig::for_records(1024, 64)).unwrap();
        builder = builder.shm_ingress(0, rx, |_| 0);
        peers.push(tx);
    }
    let (dp, producers) = builder.build(move |_| Sink(reasons.clone())).unwrap();
    drop(producers);
    (dp, peers)
}

/// S11: the stop's last pass over a shared-memory ring was skipped when the descriptor
/// pool was nearly full (the ingress backpressure check), so records the peer had
/// written, accepted by its ring, were never read nor counted. The last pass now reads
/// them regardless; what cannot be queued is refused, counted.
#[test]
fn s11_the_last_shm_pass_reads_the_ring_even_with_a_full_pool() {
    // 64 descriptors and a 1 Mbit/s link: the pool fills and stays full.
    let (dp, mut peers) = shm_pool_rings(64, 1, Arc::default());
    let mut tx = peers.pop().unwrap();
    let mut b = [0u8; 64];
    let n = encode_open(&mut b, 0, Priority::new(2).unwrap(), None);
    tx.push(&b[..n]).unwrap();
    for _ in 0..300 {
        let n = encode_packet(&mut b, 0, 1000, &[]);
        tx.push(&b[..n]).unwrap();
    }
    // The worker takes what its pool holds, then leaves the rest in the ring.
    let clock = Clock::start();
    while dp.stats()[0].shard.descriptors_in_use < 60 {
        assert!(clock.now_ns() < 20_000_000_000, "{:?}", dp.stats()[0]);
        thread::sleep(Duration::from_millis(1));
    }
    let report = dp.shutdown(StopMode::Discard).unwrap();
    let w = &report.workers[0];
    assert_eq!(w.taken, 300, "every record the peer wrote is read: {w:?}");
    assert!(report.is_conserved());
    drop(tx);
}

/// S11 (the stop handshake's bound): a producer that leaves a burst open
/// (`enqueue_quiet` without `flush`) while the dataplane stops holds its worker's last
/// read for at most a second; the worker then reads on and counts the give-up. The
/// packet pushed before the stop is still taken.
#[test]
fn s11_a_burst_left_open_at_the_stop_is_waited_for_a_second_and_counted() {
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .drain_timeout(Duration::ZERO)
        .build(|_| Sink::default())
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let h = tx.open(1, StreamConfig::with_priority(3)).unwrap();
    tx.enqueue_quiet(h, 1, 100).unwrap(); // no flush: the burst stays open
    let clock = Clock::start();
    let stopping = thread::spawn(move || dp.shutdown(StopMode::Discard).unwrap());
    let report = stopping.join().unwrap();
    let took = clock.now_ns();
    assert!(
        took >= 900_000_000,
        "the last read waited for the burst: {took} ns"
    );
    let w = &report.workers[0];
    assert_eq!(w.gate_timeouts, 1, "{w:?}");
    assert_eq!(w.taken, 1, "{w:?}");
    assert!(report.is_conserved());
    drop(tx);
}

/// Counts what it sends and what it is asked to discard.
#[derive(Default, Clone)]
struct Tally {
    sent: Arc<std::sync::atomic::AtomicU64>,
    discarded: Arc<std::sync::atomic::AtomicU64>,
}

impl Egress<u64> for Tally {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        while out.pop().is_some() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn discard(&mut self, _d: Discarded<u64>) {
        self.discarded.fetch_add(1, Ordering::Relaxed);
    }
}

/// qosd red team: a drain whose last batch dropped packets (AQM in qosd's runs; here
/// the Low tier's expiry, which empties a queue paced behind a slow link in one
/// decision) ended with those drops in the scheduler's reclaim list, never handed to
/// `Egress::discard`: the gateway's own accounts came up short by 3-21 datagrams, while
/// the shutdown report counted them as awaiting reclaim and called itself conserved.
#[test]
fn s11_drops_of_a_drain_s_last_batch_reach_the_egress() {
    let tally = Tally::default();
    // 1 Mbit/s: 400 packets of 1,000 bytes would take 3.2 s. Low-tier packets older
    // than 1 ms + the 1 s grace expire, so about 1 s in the rest expire at once.
    let policy = PolicySpec {
        link: Some(LinkRate {
            rate_bps: 1_000_000,
            burst_bytes: 10_000,
        }),
        aging_timeout_ns: Some(1_000_000),
        disconnect: false,
        ..PolicySpec::default()
    };
    let egress = tally.clone();
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .policy(Arc::new(policy.build().unwrap()))
        .drain_timeout(Duration::from_secs(20))
        .build(move |_| egress.clone())
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let h = tx.open(1, StreamConfig::with_priority(0)).unwrap();
    for i in 0..400 {
        while tx.enqueue(h, i, 1_000).is_err() {
            thread::yield_now();
        }
    }
    drop(tx);
    // The drain is under way when the queue expires.
    thread::sleep(Duration::from_millis(300));
    let r = dp.shutdown(StopMode::Drain).unwrap();
    let (sent, discarded) = (
        tally.sent.load(Ordering::Relaxed),
        tally.discarded.load(Ordering::Relaxed),
    );
    let expired = r.workers[0].priorities[0].dropped[DropReason::Expired as usize];
    assert!(
        expired > 100,
        "the standing queue expired ({expired} drops)"
    );
    assert_eq!(
        (sent, discarded),
        (r.sent(), r.discarded()),
        "the egress saw every packet the report counts"
    );
    assert_eq!(sent + discarded, 400);
    assert!(r.is_conserved());
}

/// Pushes `rec`, waiting while the ring is full (at most 10 s).
fn push_waiting(tx: &mut qos_shm_ring::Producer, rec: &[u8]) {
    let clock = Clock::start();
    while let Err(e) = tx.push(rec) {
        assert!(
            matches!(e, qos_shm_ring::PushError::Full) && clock.now_ns() < 10_000_000_000,
            "push: {e}"
        );
        thread::yield_now();
    }
}

/// shm red team: the shared-memory rings were read only when the descriptor pool had a
/// whole `ingress_batch` free, so with a pool smaller than a batch (32 < 64) the ring
/// was never read while running: nothing was sent, and a drain waited out its whole
/// timeout before discarding everything.
#[test]
fn t2_a_pool_smaller_than_a_batch_still_reads_the_shm_ring() {
    let (mut tx, rx) = pair(RingConfig::for_records(1024, 64)).unwrap();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let egress = Counted(sent.clone());
    let (dp, producers) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .scheduler(SchedulerConfig {
            max_packets: 32,
            ..SchedulerConfig::default()
        })
        .shm_ingress(0, rx, |_| 0)
        .drain_timeout(Duration::from_secs(20))
        .build(move |_| Counted(egress.0.clone()))
        .unwrap();
    drop(producers);
    let mut b = [0u8; 64];
    let n = encode_open(&mut b, 0, Priority::new(2).unwrap(), None);
    push_waiting(&mut tx, &b[..n]);
    for _ in 0..100 {
        let n = encode_packet(&mut b, 0, 100, &[]);
        push_waiting(&mut tx, &b[..n]);
    }
    let clock = Clock::start();
    while sent.load(Ordering::Relaxed) < 100 {
        assert!(clock.now_ns() < 10_000_000_000, "{:?}", dp.stats()[0]);
        thread::sleep(Duration::from_millis(1));
    }
    // The peer leaves: the drain ends at once, not at its 20 s timeout.
    drop(tx);
    let stop = Clock::start();
    let report = dp.shutdown(StopMode::Drain).unwrap();
    assert!(stop.now_ns() < 5_000_000_000, "{} ns", stop.now_ns());
    assert_eq!((report.sent(), report.discarded()), (100, 0));
    assert!(report.is_conserved());
}

/// shm red team: the pool's room was checked once for all shared-memory rings, and
/// each ring then read a whole batch: two peers overran a pool of 100 and 63-90 of
/// their packets were refused `pool_exhausted` while running, where backpressure
/// (a full ring) was due. The room also left out the descriptors of dropped packets
/// awaiting reclaim (AQM drops here), which made it 374 once the first fix was in.
#[test]
fn t2_several_shm_rings_cannot_overrun_the_pool() {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let (dp, mut peers) = shm_pool_rings(100, 2, reasons.clone());
    let mut b = [0u8; 64];
    for tx in &mut peers {
        let n = encode_open(&mut b, 0, Priority::new(2).unwrap(), None);
        push_waiting(tx, &b[..n]);
        for _ in 0..600 {
            let n = encode_packet(&mut b, 0, 1000, &[]);
            // A full ring is the backpressure this test wants: stop there.
            if tx.push(&b[..n]).is_err() {
                break;
            }
        }
    }
    thread::sleep(Duration::from_millis(500));
    let refused = reasons
        .lock()
        .unwrap()
        .iter()
        .filter(|r| matches!(r, DiscardReason::Refused(_)))
        .count();
    assert!(dp.stats()[0].taken > 100, "{:?}", dp.stats()[0]);
    assert_eq!(refused, 0, "no refusal while running");
    let report = dp.shutdown(StopMode::Discard).unwrap();
    assert!(report.is_conserved());
    drop(peers);
}

/// Review finding: once the shm rings read up to the pool's room, the first ring read
/// took a scarce room every iteration: under overload (a full pool, the link freeing a
/// descriptor at a time) a second peer's ring was never read, its stream never even
/// opened. The first ring read now changes each iteration.
#[test]
fn t2_a_busy_shm_peer_does_not_shut_out_another() {
    let (dp, mut peers) = shm_pool_rings(16, 2, Arc::default());
    let mut b = [0u8; 64];
    // Peer 1 at priority 3, peer 2 at priority 4 (both Medium): each fills its ring.
    for (tx, p) in peers.iter_mut().zip([3, 4]) {
        let n = encode_open(&mut b, 0, Priority::new(p).unwrap(), None);
        push_waiting(tx, &b[..n]);
        loop {
            let n = encode_packet(&mut b, 0, 1000, &[]);
            if tx.push(&b[..n]).is_err() {
                break;
            }
        }
    }
    // 1 Mbit/s: about 125 packets a second leave; each frees one descriptor.
    thread::sleep(Duration::from_millis(800));
    let report = dp.shutdown(StopMode::Discard).unwrap();
    let w = &report.workers[0];
    let (p3, p4) = (w.priorities[3].dequeued, w.priorities[4].dequeued);
    assert!(p3 + p4 > 50, "{p3} + {p4}");
    assert!(p3 >= 15 && p4 >= 15, "both peers are served: {p3} and {p4}");
    assert!(report.is_conserved());
    drop(peers);
}

/// Stops `dp` draining on another thread; the report, or a failure after `limit`.
fn shutdown_within(
    dp: Dataplane<u64>,
    limit: Duration,
) -> (
    std::sync::mpsc::Receiver<qos_dataplane::runtime::ShutdownReport>,
    Duration,
) {
    let (done, report) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(dp.shutdown(StopMode::Drain).unwrap());
    });
    (report, limit)
}

/// Fills four P3 streams behind a 1 Mbit/s link with 4,000 packets of 1,000 bytes: a
/// 32 s drain (no AQM: CoDel would drop most of it in the first 300 ms). Returns the
/// dataplane (producers dropped) and the discard reasons.
fn long_drain() -> (Dataplane<u64>, Arc<Mutex<Vec<DiscardReason>>>) {
    let spec = PolicySpec {
        link: Some(LinkRate {
            rate_bps: 1_000_000,
            burst_bytes: 20_000,
        }),
        aqm: false,
        disconnect: false,
        ..PolicySpec::default()
    };
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let r = reasons.clone();
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .workers(2)
        .pinning(Pinning::Off)
        .policy(Arc::new(spec.build().unwrap()))
        .drain_timeout(Duration::from_secs(600))
        .build(move |_| Sink(r.clone()))
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let streams: Vec<_> = (0..4)
        .map(|k| tx.open(k, StreamConfig::with_priority(3)).unwrap())
        .collect();
    for i in 0..4_000u64 {
        while tx.enqueue(streams[(i % 4) as usize], i, 1_000).is_err() {
            thread::yield_now();
        }
    }
    drop((tx, ps));
    (dp, reasons)
}

/// A daemon's second SIGTERM: before, a drain ran its whole course (up to
/// `drain_timeout`, 10 minutes in qosd) whatever the operator did. `DrainCut::cut`
/// from another thread ends it: what is left is discarded, counted as `closed`, and
/// the report says the drain was cut.
#[test]
fn s11_a_drain_cut_short_discards_the_rest_counted() {
    let (dp, reasons) = long_drain();
    let cut = dp.drain_cut();
    assert!(!cut.is_cut());
    let (report, limit) = shutdown_within(dp, Duration::from_secs(10));
    // The drain is under way (32 s of packets at the link's pace).
    assert!(
        report.recv_timeout(Duration::from_millis(300)).is_err(),
        "the drain ended before the cut"
    );
    cut.cut();
    let r = report
        .recv_timeout(limit)
        .expect("the cut drain ended within 10 s (uncut: 32 s)");
    assert!(r.drain_cut && cut.is_cut());
    assert!(r.is_conserved());
    assert_eq!(r.taken(), 4_000);
    assert_eq!(r.sent() + r.discarded(), 4_000);
    let reasons = reasons.lock().unwrap();
    assert_eq!(
        reasons.len() as u64,
        r.discarded(),
        "every discard reached the egress"
    );
    let closed = reasons
        .iter()
        .filter(|d| **d == DiscardReason::Dropped(DropReason::Closed))
        .count();
    // At most ~0.3 s of the link's 125 packets a second (and its 20-packet burst) went
    // out: most of the 4,000 were still queued at the cut.
    assert!(closed > 3_000, "{closed} discarded as closed at the cut");
}

/// A cut before the stop makes the coming drain discard at once.
#[test]
fn s11_a_drain_cut_before_the_stop_discards_at_once() {
    let (dp, _reasons) = long_drain();
    dp.drain_cut().cut();
    let (report, limit) = shutdown_within(dp, Duration::from_secs(10));
    let r = report
        .recv_timeout(limit)
        .expect("the pre-cut drain ended within 10 s (uncut: 32 s)");
    assert!(r.drain_cut && r.is_conserved());
    assert_eq!(r.sent() + r.discarded(), 4_000);
    assert!(r.discarded() > 3_000, "{} discarded", r.discarded());
}

/// A cut before a discarding stop cut no drain: the report says so.
#[test]
fn s11_a_cut_of_a_discarding_stop_is_no_drain_cut() {
    let (dp, _reasons) = long_drain();
    dp.drain_cut().cut();
    let r = dp.shutdown(StopMode::Discard).unwrap();
    assert!(r.is_conserved() && r.discarded() > 3_000);
    assert!(!r.drain_cut);
}

/// A stop nobody cuts says so.
#[test]
fn s11_an_uncut_drain_reports_no_cut() {
    let (dp, mut ps) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .build(|_| Sink::default())
        .unwrap();
    let mut tx = ps.pop().unwrap();
    let h = tx.open(1, StreamConfig::with_priority(3)).unwrap();
    tx.enqueue(h, 1, 100).unwrap();
    drop((tx, ps));
    let r = dp.shutdown(StopMode::Drain).unwrap();
    assert!(!r.drain_cut && r.is_conserved());
    assert_eq!((r.sent(), r.discarded()), (1, 0));
}

/// Counts what the egress sends and discards.
#[derive(Clone, Default)]
struct Both(
    Arc<std::sync::atomic::AtomicU64>,
    Arc<std::sync::atomic::AtomicU64>,
);

impl Egress<u64> for Both {
    fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
        while out.pop().is_some() {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn discard(&mut self, _d: Discarded<u64>) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
}

/// Feeds a shm ring an open, a payload the decoder rejects (first byte 0xff) and a
/// good one, beside 500 in-process packets paced behind a slow link; returns the
/// report, the egress's (sent, discarded) and the in-process packets accepted.
fn shm_decoder_run(checked: bool) -> (qos_dataplane::runtime::ShutdownReport, u64, u64, u64) {
    let (mut shm_tx, shm_rx) = pair(RingConfig::for_records(1024, 64)).unwrap();
    let egress = Both::default();
    let e = egress.clone();
    let builder = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .policy(linked(1_000_000, 64_000))
        .drain_timeout(Duration::from_millis(200));
    let builder = if checked {
        builder.shm_ingress_checked(0, shm_rx, |p: &[u8]| {
            (p.first() != Some(&0xff)).then_some(7)
        })
    } else {
        builder.shm_ingress(0, shm_rx, |p: &[u8]| {
            assert!(p.first() != Some(&0xff), "decoder: malformed payload");
            7
        })
    };
    let (dp, mut ps) = builder.build(move |_| e.clone()).unwrap();
    let mut tx = ps.pop().unwrap();
    let h = tx.open(1, StreamConfig::with_priority(3)).unwrap();
    let mut accepted = 0;
    for i in 0..500 {
        if tx.enqueue(h, i, 1000).is_ok() {
            accepted += 1;
        }
    }
    let mut b = [0u8; 64];
    let n = encode_open(&mut b, 0, Priority::new(6).unwrap(), None);
    push_waiting(&mut shm_tx, &b[..n]);
    let n = encode_packet(&mut b, 0, 100, &[0xff]);
    push_waiting(&mut shm_tx, &b[..n]);
    let n = encode_packet(&mut b, 0, 100, &[0x01]);
    push_waiting(&mut shm_tx, &b[..n]);
    // Until the worker has read the ring (the good record is taken).
    for _ in 0..200 {
        if dp.stats()[0].taken > accepted {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(dp.worker_states(), [WorkerState::Running]);
    drop((tx, ps, shm_tx));
    let report = dp.shutdown(StopMode::Discard).unwrap();
    (
        report,
        egress.0.load(Ordering::Relaxed),
        egress.1.load(Ordering::Relaxed),
        accepted,
    )
}

/// Embedding-API red team: a shm decoder that panicked on a hostile payload unwound
/// the worker: 434 of 500 in-process packets it held were neither sent nor discarded,
/// and the report was not conserved. The decoder is embedder code run on the worker,
/// like the egress: its panic is caught, the record counted rejected.
#[test]
fn s11_a_panicking_shm_decoder_rejects_the_record_and_loses_nothing() {
    one_shm_record_rejected(false);
}

/// A decoder that refuses a payload (`shm_ingress_checked`) gets it counted rejected;
/// the ring stays open.
#[test]
fn t2_a_shm_payload_the_decoder_refuses_is_counted_rejected() {
    one_shm_record_rejected(true);
}

/// [`shm_decoder_run`]: the bad record counted rejected, everything else taken and
/// sent or discarded (the 500 in-process packets and the peer's good one).
fn one_shm_record_rejected(checked: bool) {
    let (r, sent, discarded, accepted) = shm_decoder_run(checked);
    assert!(r.is_conserved());
    assert_eq!(r.workers[0].shm_rejected, 1);
    assert_eq!(r.taken(), accepted + 1);
    assert_eq!(sent + discarded, accepted + 1);
    assert_eq!(r.workers[0].priorities[6].enqueued, 1);
}

/// Embedding-API red team: `stream_reports(usize::MAX, ..)`, "all streams", panicked
/// with a capacity overflow, and 2^40 aborted the process (the memory is reserved up
/// front). The limit is clamped to the streams the worker holds.
#[test]
fn o6_stream_reports_with_a_huge_limit_name_every_stream() {
    let (mut dp, mut ps) = Dataplane::<u64>::builder()
        .pinning(Pinning::Off)
        .scheduler(SchedulerConfig {
            max_streams: 1 << 20,
            ..SchedulerConfig::default()
        })
        .build(|_| Sink::default())
        .unwrap();
    let mut tx = ps.pop().unwrap();
    for k in 0..3 {
        let h = tx.open(k, StreamConfig::with_priority(2)).unwrap();
        tx.enqueue(h, k, 100).unwrap();
    }
    for limit in [usize::MAX, 1 << 40] {
        let (mut named, mut reserved) = (0, 0);
        for _ in 0..100 {
            let reports = dp.stream_reports(limit, Duration::from_secs(1));
            named = reports.iter().flatten().map(|r| r.top.len()).sum::<usize>();
            reserved = reports.iter().flatten().map(|r| r.top.capacity()).sum();
            if named == 3 {
                break;
            }
        }
        assert_eq!(named, 3, "limit {limit}");
        // Reserved for the streams the worker holds (3, plus 1,024 opened meanwhile),
        // not for its table of 2^20 (a review: 2^31 slots would ask for 250 GB).
        assert!(reserved <= 3 + 1_024, "{reserved} entries reserved");
    }
    drop((tx, ps));
    assert!(dp.shutdown(StopMode::Drain).unwrap().is_conserved());
}
