//! Random operation sequences against a `VecDeque` model (STYLE 11: rings get random
//! operation sequences). Single-threaded: checks the index, wrap-around and batch
//! arithmetic, not the concurrency (loom and the two-process test do that).
#![cfg(not(qos_loom))]

use std::collections::VecDeque;

use proptest::prelude::*;
use qos_shm_ring::{PopError, PushError, RingConfig, pair};

#[derive(Debug, Clone)]
enum Op {
    Push(Vec<u8>),
    /// Reserve `n`, write the records, then commit (`true`) or drop (`false`).
    Batch(usize, Vec<Vec<u8>>, bool),
    Pop,
    /// Open a read batch of `max`, take `k`, then release (`true`) or drop (`false`).
    Read(usize, usize, bool),
}

fn record(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max + 2)
}

fn op(max: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        record(max).prop_map(Op::Push),
        (
            0..6usize,
            prop::collection::vec(record(max), 0..6),
            any::<bool>()
        )
            .prop_map(|(n, r, c)| Op::Batch(n, r, c)),
        Just(Op::Pop),
        (0..6usize, 0..6usize, any::<bool>()).prop_map(|(m, k, r)| Op::Read(m, k, r)),
    ]
}

fn check(capacity: u32, max_record: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    // Dense slots, so that records just over the limit are generated and refused.
    let config = RingConfig {
        capacity,
        slot_size: max_record.div_ceil(8) * 8 + 8,
    };
    let (mut tx, mut rx) = pair(config).expect("ring");
    let cap = capacity as usize;
    let max = tx.max_record();
    let mut model: VecDeque<Vec<u8>> = VecDeque::new();
    let mut buf = vec![0u8; max];
    for op in ops {
        match op {
            Op::Push(r) => {
                let expected = if r.len() > max {
                    Err(PushError::TooLong { len: r.len(), max })
                } else if model.len() == cap {
                    Err(PushError::Full)
                } else {
                    Ok(())
                };
                prop_assert_eq!(tx.push(&r), expected);
                if expected.is_ok() {
                    model.push_back(r);
                }
            }
            Op::Batch(n, recs, commit) => {
                let free = cap - model.len();
                match tx.reserve(n) {
                    Err(e) => {
                        prop_assert_eq!(e, PushError::Full);
                        prop_assert!(free == 0 && n > 0);
                    }
                    Ok(mut batch) => {
                        prop_assert_eq!(batch.reserved(), n.min(free));
                        let mut written = Vec::new();
                        for r in recs {
                            let res = batch.write(&r);
                            if r.len() > max {
                                let too_long = matches!(res, Err(PushError::TooLong { .. }));
                                prop_assert!(too_long);
                            } else if written.len() == n.min(free) {
                                prop_assert_eq!(res, Err(PushError::Full));
                            } else {
                                prop_assert_eq!(res, Ok(()));
                                written.push(r);
                            }
                        }
                        if commit {
                            prop_assert_eq!(batch.commit(), written.len());
                            model.extend(written);
                        }
                    }
                }
            }
            Op::Pop => match model.pop_front() {
                Some(r) => {
                    prop_assert_eq!(rx.pop(&mut buf), Ok(r.len()));
                    prop_assert_eq!(&buf[..r.len()], &r[..]);
                }
                None => prop_assert_eq!(rx.pop(&mut buf), Err(PopError::Empty)),
            },
            Op::Read(m, k, release) => match rx.read(m) {
                Err(e) => {
                    prop_assert_eq!(e, PopError::Empty);
                    prop_assert!(model.is_empty() && m > 0);
                }
                Ok(mut batch) => {
                    prop_assert_eq!(batch.len(), m.min(model.len()));
                    let mut taken = 0;
                    for expected in model.iter().take(k) {
                        match batch.next_into(&mut buf) {
                            Some(Ok(n)) => prop_assert_eq!(&buf[..n], &expected[..]),
                            other => prop_assert!(other.is_none(), "{:?}", other),
                        }
                        taken = batch.taken();
                    }
                    if release {
                        prop_assert_eq!(batch.release(), taken);
                        model.drain(..taken);
                    }
                }
            },
        }
        prop_assert!(tx.cached_free() <= cap - model.len());
        prop_assert!(rx.cached_available() <= model.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn t2_random_ops_match_a_fifo_model(
        cap_log in 0u32..4,
        max_record in 1u32..40,
        ops in prop::collection::vec(op(40), 1..200),
    ) {
        check(1 << cap_log, max_record, ops)?;
    }
}
