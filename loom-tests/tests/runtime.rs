//! loom models of the dataplane runtime's protocols (DESIGN T3-T5, STYLE 12), written
//! against `qos_dataplane::runtime`. Under `--cfg qos_loom` the runtime's `sync` facade
//! hands out loom's atomics, fences, `Arc`, thread handles and park, and the mailbox slot
//! is a loom `UnsafeCell`: loom explores the interleavings of the real protocol code,
//! reports a slot access the hand-off does not order, and reports a worker parked with
//! nobody left to wake it as a deadlock (loom has no timed park, so the models prove the
//! wake-up protocol without the timeout's help).
//!
//! Run: `RUSTFLAGS="--cfg qos_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p qos-loom-tests
//! --release --target-dir target/loom`.
#![cfg(qos_loom)]

use std::time::Duration;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::thread;
use qos_dataplane::runtime::loom_access::{Counters, PushGate, RateLedger};
use qos_dataplane::runtime::mailbox::{self, MailboxReceiver, MailboxSender};
use qos_dataplane::runtime::{Doorbell, SnapshotCell, WorkerStats};

/// Ignored under loom (its park is untimed); any value would do.
const PARK: Duration = Duration::from_millis(1);

/// The worker's idle loop: consume the work items published on `ring` (a stand-in for
/// its SPSC rings), sleeping on `bell` while there are none, until `total` were seen.
fn worker_until(bell: &Doorbell, ring: &AtomicU64, total: u64) {
    let mut seen = 0;
    while seen < total {
        // Acquire: partner of the producer's Release publication.
        let now = ring.load(Ordering::Acquire);
        if now > seen {
            seen = now;
            continue;
        }
        bell.sleep_unless(PARK, || ring.load(Ordering::Acquire) > seen);
    }
}

/// A producer: publish one work item (Release, as a ring push), then ring the bell.
fn spawn_waker(bell: &Arc<Doorbell>, ring: &Arc<AtomicU64>) -> thread::JoinHandle<()> {
    let (bell, ring) = (bell.clone(), ring.clone());
    thread::spawn(move || {
        ring.fetch_add(1, Ordering::Release);
        bell.ring();
    })
}

/// T5 (doorbell): a worker that finds no work and parks is always woken by the producer
/// that publishes work and rings: no interleaving leaves it parked (a loom deadlock).
#[test]
fn t5_doorbell_no_lost_wakeup() {
    loom::model(|| {
        let bell = Arc::new(Doorbell::for_current());
        let ring = Arc::new(AtomicU64::new(0));
        let producer = spawn_waker(&bell, &ring);
        worker_until(&bell, &ring, 1);
        producer.join().expect("producer");
    });
}

/// T5 (doorbell): two wakers race; only one of them unparks (the swap), yet the worker
/// sees both items, and a stale unpark only costs a spurious wake-up.
#[test]
fn t5_doorbell_no_lost_wakeup_two_wakers() {
    loom::model(|| {
        let bell = Arc::new(Doorbell::for_current());
        let ring = Arc::new(AtomicU64::new(0));
        let a = spawn_waker(&bell, &ring);
        let b = spawn_waker(&bell, &ring);
        worker_until(&bell, &ring, 2);
        a.join().expect("waker a");
        b.join().expect("waker b");
    });
}

fn take_spin<T: Send>(rx: &mut MailboxReceiver<T>) -> T {
    loop {
        match rx.take() {
            Some(v) => return v,
            None => thread::yield_now(),
        }
    }
}

fn put_spin<T: Send>(tx: &mut MailboxSender<T>, mut value: T) {
    loop {
        match tx.put(value) {
            Ok(()) => return,
            Err(back) => {
                value = back;
                thread::yield_now();
            }
        }
    }
}

/// T4/T5 (mailbox): the histogram exchange. The reader sends an empty set, the worker
/// swaps it for the full one it recorded and sends that back, then records into the
/// empty one and offers it too; that second put is refused while the first waits and
/// hands the value back intact. Every value ends in exactly one place, and loom checks
/// that each slot access is ordered by the `full` hand-off.
#[test]
fn t5_mailbox_histogram_exchange_round_trip() {
    loom::model(|| {
        let (mut to_worker, mut from_reader) = mailbox::channel::<Vec<u64>>();
        let (mut to_reader, mut from_worker) = mailbox::channel::<Vec<u64>>();
        let worker = thread::spawn(move || {
            let mut recording = vec![1, 2, 3];
            let empty = take_spin(&mut from_reader);
            assert!(empty.is_empty(), "the reader sends an empty set");
            let full = std::mem::replace(&mut recording, empty);
            to_reader
                .put(full)
                .expect("the reader's mailbox starts empty");
            recording.push(4);
            // Refused while the reader has not taken the first one; then it comes back.
            to_reader.put(recording).err()
        });
        to_worker.put(Vec::new()).expect("a new mailbox is empty");
        assert_eq!(take_spin(&mut from_worker), [1, 2, 3]);
        let kept = worker.join().expect("worker");
        let delivered = from_worker.take();
        match (kept, delivered) {
            (Some(v), None) | (None, Some(v)) => assert_eq!(v, [4]),
            (kept, delivered) => panic!("lost or duplicated: {kept:?} / {delivered:?}"),
        }
        assert!(!to_worker.is_full(), "the worker took the empty set");
        assert!(!from_worker.is_waiting());
    });
}

/// T4/T5 (mailbox): a put while the slot is full is refused and gives the value back;
/// once the receiver takes, the sender's retry goes through, in order, nothing doubled.
#[test]
fn t5_mailbox_refuses_second_put_until_taken() {
    loom::model(|| {
        let (mut tx, mut rx) = mailbox::channel::<Box<u64>>();
        tx.put(Box::new(1)).expect("a new mailbox is empty");
        assert!(tx.is_full());
        assert_eq!(tx.put(Box::new(2)), Err(Box::new(2)));
        let receiver = thread::spawn(move || {
            assert_eq!(*take_spin(&mut rx), 1);
            assert_eq!(*take_spin(&mut rx), 2);
            assert_eq!(rx.take(), None);
        });
        put_spin(&mut tx, Box::new(2));
        receiver.join().expect("receiver");
        assert!(!tx.is_full());
    });
}

/// A policy stand-in whose fields must agree (a torn or half-published snapshot shows).
#[derive(Debug)]
struct Version {
    version: u64,
    body: [u64; 3],
}

fn version(v: u64) -> std::sync::Arc<Version> {
    std::sync::Arc::new(Version {
        version: v,
        body: [v * 10, v * 10 + 1, v * 10 + 2],
    })
}

/// T3/T5 (snapshot adoption): the control side publishes versions 2 then 3 while a
/// worker loads once per batch: it adopts whole versions only, never goes back, and
/// once the publication is done (joined) its next load is the newest.
#[test]
fn t5_snapshot_adoption_monotone_and_newest_after_publish() {
    loom::model(|| {
        let cell = Arc::new(SnapshotCell::new(version(1)));
        let mut reader = cell.reader();
        let control = {
            let cell = cell.clone();
            thread::spawn(move || {
                cell.publish(version(2));
                cell.publish(version(3));
            })
        };
        let mut last = 1;
        for _ in 0..2 {
            let s = reader.load();
            assert_eq!(s.body, version(s.version).body, "a whole snapshot");
            assert!((last..=3).contains(&s.version), "{last} then {}", s.version);
            last = s.version;
        }
        control.join().expect("control");
        assert_eq!(
            reader.load().version,
            3,
            "the newest version after the join"
        );
        assert_eq!(
            cell.current().version,
            3,
            "the cell holds the last publication"
        );
    });
}

/// Iteration `k`'s hot counters: distinct, increasing functions of `k`.
fn hot(k: u64) -> WorkerStats {
    WorkerStats {
        iterations: k,
        heartbeat_ns: 1000 * k,
        taken: 10 * k,
        sent: 7 * k,
        sent_bytes: 1200 * k,
        ..WorkerStats::default()
    }
}

fn hot_words(s: &WorkerStats) -> [u64; 5] {
    [s.iterations, s.heartbeat_ns, s.taken, s.sent, s.sent_bytes]
}

/// T4/T5 (counters): the worker publishes increasing counters with Relaxed stores
/// while a reader reads them: each word the reader sees was published (no torn or
/// invented value), and successive reads never go back (per-word coherence); words
/// need not come from the same iteration. After the join the reader sees the last.
#[test]
fn t5_counters_single_writer_monotone_per_word() {
    // `read` loads every word of the block (some 170): more branches than loom's default.
    let mut model = loom::model::Builder::new();
    model.max_branches = 20_000;
    model.check(|| {
        let counters = Arc::new(Counters::new());
        let worker = {
            let counters = counters.clone();
            thread::spawn(move || {
                for k in 1..=2 {
                    counters.publish_hot(&hot(k));
                }
            })
        };
        let mut last = hot_words(&hot(0));
        for _ in 0..2 {
            let seen = hot_words(&counters.read(0));
            for (i, (&now, before)) in seen.iter().zip(last).enumerate() {
                let published = (0..=2).any(|k| hot_words(&hot(k))[i] == now);
                assert!(published, "word {i}: {now} was never published");
                assert!(now >= before, "word {i} went back: {before} then {now}");
            }
            last = seen;
        }
        worker.join().expect("worker");
        let last = hot_words(&counters.read(0));
        assert_eq!(
            last,
            hot_words(&hot(2)),
            "the last publication after the join"
        );
    });
}

/// The link rate of the ledger models, bit/s (any value would do).
const LINK: u64 = 100;

/// A worker's side of the ledger protocol (`worker.rs`, `move_rate`): `held` is what it
/// holds in the ledger, `applied` the rate its scheduler paces at (an atomic only so
/// the model can read another worker's; the real one is the worker's own state).
struct Pacer {
    held: u64,
    applied: Arc<AtomicU64>,
}

impl Pacer {
    /// Lower: apply the new rate first, then give the difference back.
    fn lower(&mut self, ledger: &RateLedger, to: u64) {
        let give = self.held - to;
        self.held = to;
        self.applied.store(to, Ordering::Relaxed);
        ledger.release(give);
    }

    /// Raise: claim first, then apply what was granted. Returns what was claimed.
    fn raise(&mut self, ledger: &RateLedger, to: u64) -> u64 {
        let got = ledger.claim(to - self.held, LINK);
        self.held += got;
        self.applied.store(self.held, Ordering::Relaxed);
        got
    }
}

/// The rates in effect, as seen by the thread that reads them: every other worker's
/// latest applied rate it can see, plus its own.
fn in_effect(all: &[Arc<AtomicU64>]) -> u64 {
    all.iter().map(|a| a.load(Ordering::Relaxed)).sum()
}

/// T6/T5 (rate ledger): worker 0 lowers its rate and gives it back while worker 1
/// claims more. Whenever worker 1's claim succeeds, the lowering it was granted from
/// is visible to it: the rates in effect never exceed the link, and the ledger ends
/// holding exactly the rates applied. (With `claim` or `release` Relaxed, loom finds
/// worker 1 raising while it still sees worker 0's old rate.)
#[test]
fn t6_ledger_a_raise_never_overtakes_the_lowering_it_claims() {
    loom::model(|| {
        let ledger = Arc::new(RateLedger::new());
        let applied: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
        // Start full: worker 0 holds 70, worker 1 holds 30.
        let mut pacers: Vec<Pacer> = [70, 30]
            .iter()
            .zip(&applied)
            .map(|(&held, a)| {
                assert_eq!(ledger.claim(held, LINK), held);
                a.store(held, Ordering::Relaxed);
                Pacer {
                    held,
                    applied: a.clone(),
                }
            })
            .collect();
        let mut p1 = pacers.pop().expect("two pacers");
        let mut p0 = pacers.pop().expect("two pacers");
        let lowering = {
            let ledger = ledger.clone();
            thread::spawn(move || {
                p0.lower(&ledger, 40);
                p0.lower(&ledger, 10);
                p0
            })
        };
        let mut claimed = 0;
        for to in [60, 90] {
            if p1.held < to && p1.raise(&ledger, to) > 0 {
                claimed += 1;
                let seen = in_effect(&applied);
                assert!(seen <= LINK, "rates in effect {seen} > link {LINK}");
            }
        }
        let p0 = lowering.join().expect("lowering worker");
        assert!(claimed <= 2);
        assert_eq!(
            ledger.granted(),
            p0.held + p1.held,
            "the ledger holds what is applied"
        );
        assert!(ledger.granted() <= LINK);
    });
}

/// T6/T5 (rate ledger): two workers race to claim the same freed rate after a third
/// gave it back: together they never claim more than was freed, whatever the
/// interleaving of their compare-and-swaps.
#[test]
fn t6_ledger_racing_claims_never_pass_the_link() {
    loom::model(|| {
        let ledger = Arc::new(RateLedger::new());
        assert_eq!(ledger.claim(LINK, LINK), LINK);
        let claimers: Vec<_> = (0..2)
            .map(|_| {
                let ledger = ledger.clone();
                thread::spawn(move || ledger.claim(LINK, LINK))
            })
            .collect();
        ledger.release(30);
        let got: u64 = claimers
            .into_iter()
            .map(|c| c.join().expect("claimer"))
            .sum();
        assert!(got <= 30, "claimed {got} of the 30 freed");
        assert_eq!(ledger.granted(), LINK - 30 + got);
    });
}

/// A producer's bursts of `enqueue_quiet`s: each checks `closed` and pushes (a Release
/// store of the ring's tail, as `rtrb` does) inside the gate, then the flush leaves
/// it. Returns how many pushes it made ("accepted").
fn spawn_burst(
    gate: &Arc<PushGate>,
    closed: &Arc<AtomicBool>,
    tail: &Arc<AtomicU64>,
) -> thread::JoinHandle<u64> {
    let (gate, closed, tail) = (gate.clone(), closed.clone(), tail.clone());
    thread::spawn(move || {
        let mut accepted = 0;
        // Two bursts, of two pushes and of one: the worker may sample the entry count
        // in either, or between them.
        for pushes in [2, 1] {
            gate.enter();
            for _ in 0..pushes {
                // Relaxed, as `Shared::is_closed`'s stop load: the gate's fence orders
                // it.
                if closed.load(Ordering::Relaxed) {
                    break;
                }
                accepted += 1;
                tail.store(accepted, Ordering::Release);
            }
            gate.leave();
        }
        accepted
    })
}

/// S11 / T5 (push gate): the worker closes itself (as after its egress panicked), waits
/// at the gate, and makes its last read: it sees every push the producer counted as
/// accepted. Fails with either fence of the gate removed.
#[test]
fn t5_gate_a_last_read_sees_every_accepted_push() {
    loom::model(|| {
        let gate = Arc::new(PushGate::new());
        let closed = Arc::new(AtomicBool::new(false));
        let tail = Arc::new(AtomicU64::new(0));
        let producer = spawn_burst(&gate, &closed, &tail);
        closed.store(true, Ordering::Release);
        assert!(gate.wait_idle(|| false));
        // Acquire: the last read of the ring (rtrb's consumer loads the tail so).
        let read = tail.load(Ordering::Acquire);
        let accepted = producer.join().expect("producer");
        assert_eq!(read, accepted, "an accepted push missed the last read");
    });
}

/// S11 / T5 (push gate): the stop comes from a third thread (`shutdown`); the worker
/// acts once it observes it, as `Worker::stopped` does.
#[test]
fn t5_gate_a_stop_from_another_thread_strands_no_push() {
    loom::model(|| {
        let gate = Arc::new(PushGate::new());
        let closed = Arc::new(AtomicBool::new(false));
        let tail = Arc::new(AtomicU64::new(0));
        let producer = spawn_burst(&gate, &closed, &tail);
        let stopper = {
            let closed = closed.clone();
            thread::spawn(move || closed.store(true, Ordering::Release))
        };
        // Acquire: partner of the stopper's Release store (`Shared::stop_mode`).
        while !closed.load(Ordering::Acquire) {
            thread::yield_now();
        }
        assert!(gate.wait_idle(|| false));
        let read = tail.load(Ordering::Acquire);
        let accepted = producer.join().expect("producer");
        stopper.join().expect("stopper");
        assert_eq!(read, accepted, "an accepted push missed the last read");
    });
}
