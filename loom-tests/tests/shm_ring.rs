//! loom models of the `shm-ring` protocol (DESIGN T5, STYLE 12), written against the
//! crate's public API. Under `--cfg qos_loom` the ring's atomics are loom's and its slot
//! words are loom `UnsafeCell`s, so loom reports any slot access the index hand-off does
//! not order, as well as any wrong value a weaker ordering would let through.
//!
//! Run: `RUSTFLAGS="--cfg qos_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p qos-loom-tests
//! --release --target-dir target/loom`.
#![cfg(qos_loom)]

use loom::thread;
use qos_shm_ring::{Consumer, PopError, Producer, PushError, RingConfig, pair};

/// Record `i`: `4i + 1` bytes (so records span one or two payload words), byte `j` is
/// `16i + j`.
fn record(i: u8) -> Vec<u8> {
    (0..4 * i + 1).map(|j| i * 16 + j).collect()
}

fn ring(capacity: u32) -> (Producer, Consumer) {
    // Dense 24-byte slots (length word + two payload words): few loom cells per slot.
    let config = RingConfig {
        capacity,
        slot_size: 24,
    };
    pair(config).expect("ring")
}

/// Pops one record, yielding to the other thread while the ring is empty.
fn pop_spin(rx: &mut Consumer, buf: &mut [u8]) -> Result<usize, PopError> {
    loop {
        match rx.pop(buf) {
            Err(PopError::Empty) => thread::yield_now(),
            other => return other,
        }
    }
}

fn push_spin(tx: &mut Producer, rec: &[u8]) -> Result<(), PushError> {
    loop {
        match tx.push(rec) {
            Err(PushError::Full) => thread::yield_now(),
            other => return other,
        }
    }
}

/// T2: four single pushes through two slots: full, empty and two wrap-arounds, in order.
#[test]
fn t5_push_pop_wraps_through_full_and_empty() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(2);
        let producer = thread::spawn(move || {
            for i in 0..4 {
                push_spin(&mut tx, &record(i)).expect("push");
            }
        });
        let mut buf = [0u8; 16];
        for i in 0..4 {
            let n = pop_spin(&mut rx, &mut buf).expect("pop");
            assert_eq!(&buf[..n], &record(i)[..]);
        }
        producer.join().expect("producer");
    });
}

/// T2: a batch of two committed with one index store, then one more record; the
/// consumer reads in batches and releases once per batch.
#[test]
fn t5_batch_commit_and_release() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(2);
        let producer = thread::spawn(move || {
            let mut batch = tx.reserve(2).expect("empty ring has room");
            assert_eq!(batch.reserved(), 2);
            batch.write(&record(0)).expect("reserved");
            batch.write(&record(1)).expect("reserved");
            assert_eq!(batch.commit(), 2);
            push_spin(&mut tx, &record(2)).expect("push");
        });
        let mut buf = [0u8; 16];
        let mut next = 0u8;
        while next < 3 {
            let mut batch = match rx.read(2) {
                Err(PopError::Empty) => {
                    thread::yield_now();
                    continue;
                }
                other => other.expect("read"),
            };
            while let Some(r) = batch.next_into(&mut buf) {
                let n = r.expect("record");
                assert_eq!(&buf[..n], &record(next)[..]);
                next += 1;
            }
            batch.release();
        }
        producer.join().expect("producer");
    });
}

/// T2: an empty batch commit publishes nothing; a reserve on a full ring fails until
/// the consumer's release is seen, and then covers the freed slot.
#[test]
fn t5_reserve_sees_released_slots() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(2);
        tx.push(&record(0)).expect("room");
        tx.push(&record(1)).expect("room");
        let consumer = thread::spawn(move || {
            let mut buf = [0u8; 16];
            for i in 0..3 {
                let n = pop_spin(&mut rx, &mut buf).expect("pop");
                assert_eq!(&buf[..n], &record(i)[..]);
            }
            rx
        });
        assert_eq!(tx.reserve(0).expect("zero").commit(), 0);
        let mut batch = loop {
            match tx.reserve(1) {
                Err(PushError::Full) => thread::yield_now(),
                other => break other.expect("reserve"),
            }
        };
        batch.write(&record(2)).expect("reserved");
        assert_eq!(batch.commit(), 1);
        let rx = consumer.join().expect("consumer");
        assert_eq!(rx.cached_available(), 0);
    });
}

/// T2 abandonment: the producer commits two records and drops; the consumer drains both
/// and then, and only then, sees `Disconnected`.
#[test]
fn t5_abandoned_producer_is_drained() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(2);
        let producer = thread::spawn(move || {
            tx.push(&record(0)).expect("room");
            tx.push(&record(1)).expect("room");
            drop(tx);
        });
        let mut buf = [0u8; 16];
        let mut got = 0u8;
        loop {
            match pop_spin(&mut rx, &mut buf) {
                Ok(n) => {
                    assert_eq!(&buf[..n], &record(got)[..]);
                    got += 1;
                }
                Err(PopError::Disconnected) => break,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(got, 2, "every committed record drained before Disconnected");
        producer.join().expect("producer");
    });
}

/// T2 abandonment, other side: a consumer that drops after one record leaves the
/// producer with `Disconnected` once the ring is full, never blocked forever.
#[test]
fn t5_abandoned_consumer_disconnects_the_producer() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(2);
        let consumer = thread::spawn(move || {
            let mut buf = [0u8; 16];
            let n = pop_spin(&mut rx, &mut buf).expect("pop");
            assert_eq!(&buf[..n], &record(0)[..]);
            drop(rx);
        });
        let mut pushed = 0u8;
        loop {
            match push_spin(&mut tx, &record(pushed)) {
                Ok(()) => pushed += 1,
                Err(PushError::Disconnected) => break,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        // One record was taken, so at most capacity + 1 records fit.
        assert!((2..=3).contains(&pushed), "pushed {pushed}");
        consumer.join().expect("consumer");
    });
}
