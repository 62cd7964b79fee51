//! Single-threaded behaviour of the ring (DESIGN T2, S7 "a full ring hands the record
//! back"): empty, full, wrap-around, record sizes, batches, abandonment, attach checks.
#![cfg(not(qos_loom))]

use qos_shm_ring::{
    PeerStatus, PopError, PushError, RecordError, RegionError, RingConfig, Role, ShmRegion, pair,
};

fn ring(capacity: u32, max_record: u32) -> (qos_shm_ring::Producer, qos_shm_ring::Consumer) {
    pair(RingConfig::for_records(capacity, max_record)).expect("create ring")
}

#[test]
fn t2_empty_ring_pops_empty() {
    let (_tx, mut rx) = ring(4, 16);
    let mut buf = [0u8; 16];
    assert_eq!(rx.pop(&mut buf), Err(PopError::Empty));
    assert!(matches!(rx.read(8), Err(PopError::Empty)));
    assert!(matches!(rx.read(0), Ok(b) if b.is_empty()));
    assert_eq!(rx.cached_available(), 0);
}

#[test]
fn s7_full_ring_refuses_and_keeps_nothing() {
    let (mut tx, mut rx) = ring(4, 16);
    for i in 0..4u8 {
        tx.push(&[i; 3]).expect("room");
    }
    assert_eq!(tx.push(b"x"), Err(PushError::Full));
    assert!(matches!(tx.reserve(1), Err(PushError::Full)));
    let mut buf = [0u8; 16];
    for i in 0..4u8 {
        assert_eq!(rx.pop(&mut buf), Ok(3));
        assert_eq!(&buf[..3], &[i; 3]);
    }
    assert_eq!(rx.pop(&mut buf), Err(PopError::Empty));
    tx.push(b"y")
        .expect("room again after the consumer released");
}

#[test]
fn t2_wraps_around_many_times_in_order() {
    let (mut tx, mut rx) = ring(4, 24);
    let mut buf = [0u8; 24];
    let mut next_out = 0u64;
    for i in 0..1000u64 {
        let rec = i.to_le_bytes();
        tx.push(&rec[..(i % 9) as usize]).expect("room");
        if i % 3 == 2 {
            while let Ok(n) = rx.pop(&mut buf) {
                assert_eq!(
                    &buf[..n],
                    &next_out.to_le_bytes()[..(next_out % 9) as usize]
                );
                next_out += 1;
            }
        }
    }
    while let Ok(n) = rx.pop(&mut buf) {
        assert_eq!(n, (next_out % 9) as usize);
        next_out += 1;
    }
    assert_eq!(next_out, 1000);
}

#[test]
fn t2_max_size_records_roundtrip_and_oversize_is_refused() {
    let exact = RingConfig {
        capacity: 2,
        slot_size: 72,
    };
    let (mut tx, mut rx) = pair(exact).expect("ring");
    let max = tx.max_record();
    assert_eq!(max, 64, "slot_size - 8");
    let big: Vec<u8> = (0..max as u32).map(|i| (i * 7 + 1) as u8).collect();
    tx.push(&big).expect("max-size record fits");
    assert_eq!(
        tx.push(&[0u8; 65]),
        Err(PushError::TooLong { len: 65, max: 64 })
    );
    let mut batch = tx.reserve(1).expect("one slot left");
    assert_eq!(
        batch.write(&[0u8; 65]),
        Err(PushError::TooLong { len: 65, max: 64 })
    );
    assert_eq!(batch.commit(), 0);
    let mut buf = vec![0u8; max];
    assert_eq!(rx.pop(&mut buf), Ok(max));
    assert_eq!(buf, big);
    assert_eq!(
        rx.pop(&mut buf),
        Err(PopError::Empty),
        "oversize record never entered"
    );
}

#[test]
fn t2_for_records_rounds_slots_to_cache_lines() {
    assert_eq!(RingConfig::for_records(4, 16).slot_size, 64);
    assert_eq!(RingConfig::for_records(4, 56).slot_size, 64);
    assert_eq!(RingConfig::for_records(4, 57).slot_size, 128);
    assert_eq!(RingConfig::for_records(4, 64).max_record(), 120);
}

#[test]
fn t2_zero_length_records_are_records() {
    let (mut tx, mut rx) = ring(2, 8);
    tx.push(b"").expect("room");
    let mut buf = [0u8; 0];
    assert_eq!(rx.pop(&mut buf), Ok(0));
    assert_eq!(rx.pop(&mut buf), Err(PopError::Empty));
}

#[test]
fn t2_small_buffer_leaves_the_record_in_place() {
    let (mut tx, mut rx) = ring(2, 16);
    tx.push(b"0123456789").expect("room");
    let mut small = [0u8; 4];
    assert_eq!(
        rx.pop(&mut small),
        Err(PopError::Record(RecordError::BufferTooSmall {
            len: 10,
            buf: 4
        }))
    );
    let mut buf = [0u8; 16];
    assert_eq!(rx.pop(&mut buf), Ok(10));
    assert_eq!(&buf[..10], b"0123456789");
}

#[test]
fn t2_batch_commit_of_zero_publishes_nothing() {
    let (mut tx, mut rx) = ring(4, 8);
    let batch = tx.reserve(3).expect("room");
    assert_eq!(batch.reserved(), 3);
    assert_eq!(batch.commit(), 0);
    {
        let mut batch = tx.reserve(2).expect("room");
        batch.write(b"lost").expect("reserved");
    } // dropped without commit: discarded
    let mut buf = [0u8; 8];
    assert_eq!(rx.pop(&mut buf), Err(PopError::Empty));
    assert_eq!(tx.cached_free(), 4);
    assert!(matches!(tx.reserve(0), Ok(b) if b.reserved() == 0));
}

#[test]
fn t2_batch_commit_of_all_fills_the_ring() {
    let (mut tx, mut rx) = ring(4, 8);
    let mut batch = tx.reserve(100).expect("room");
    assert_eq!(batch.reserved(), 4, "reserve caps at the free slots");
    for i in 0..4u8 {
        batch.write(&[i]).expect("reserved");
    }
    assert_eq!(batch.write(b"5"), Err(PushError::Full));
    assert_eq!(batch.commit(), 4);
    assert_eq!(tx.push(b"x"), Err(PushError::Full));

    let mut buf = [0u8; 8];
    let mut batch = rx.read(32).expect("records");
    assert_eq!(batch.len(), 4);
    for i in 0..4u8 {
        assert_eq!(batch.next_into(&mut buf), Some(Ok(1)));
        assert_eq!(buf[0], i);
    }
    assert_eq!(batch.next_into(&mut buf), None);
    assert_eq!(batch.release(), 4);
    assert_eq!(rx.pop(&mut buf), Err(PopError::Empty));
    assert_eq!(tx.reserve(9).expect("room").reserved(), 4);
}

#[test]
fn t2_read_batch_dropped_without_release_rereads() {
    let (mut tx, mut rx) = ring(4, 8);
    tx.push(b"a").expect("room");
    tx.push(b"b").expect("room");
    let mut buf = [0u8; 8];
    {
        let mut batch = rx.read(2).expect("records");
        assert_eq!(batch.next_into(&mut buf), Some(Ok(1)));
    } // dropped without release: nothing freed
    let mut batch = rx.read(1).expect("records");
    assert_eq!(batch.next_into(&mut buf), Some(Ok(1)));
    assert_eq!(buf[0], b'a');
    assert_eq!(batch.release(), 1);
    assert_eq!(rx.pop(&mut buf), Ok(1));
    assert_eq!(buf[0], b'b');
}

#[test]
fn t2_abandoned_producer_is_drained_then_disconnected() {
    let (mut tx, mut rx) = ring(4, 8);
    assert_eq!(rx.peer_status(), PeerStatus::Alive);
    tx.push(b"1").expect("room");
    tx.push(b"2").expect("room");
    drop(tx);
    assert_eq!(rx.peer_status(), PeerStatus::Abandoned);
    let mut buf = [0u8; 8];
    assert_eq!(rx.pop(&mut buf), Ok(1));
    assert_eq!(rx.pop(&mut buf), Ok(1));
    assert_eq!(buf[0], b'2');
    assert_eq!(rx.pop(&mut buf), Err(PopError::Disconnected));
}

#[test]
fn t2_abandoned_consumer_makes_a_full_ring_disconnected() {
    let (mut tx, rx) = ring(2, 8);
    tx.push(b"1").expect("room");
    drop(rx);
    assert_eq!(tx.peer_status(), PeerStatus::Abandoned);
    tx.push(b"2").expect("a free slot is still free");
    assert_eq!(tx.push(b"3"), Err(PushError::Disconnected));
}

#[test]
fn t2_heartbeats_are_seen_by_the_peer() {
    let (mut tx, mut rx) = ring(2, 8);
    assert_eq!(rx.peer_heartbeat(), 0);
    tx.heartbeat();
    tx.heartbeat();
    assert_eq!(rx.peer_heartbeat(), 2);
    rx.heartbeat();
    assert_eq!(tx.peer_heartbeat(), 1);
}

#[test]
fn t2_each_side_is_taken_once() {
    let region = ShmRegion::create(RingConfig::for_records(4, 8)).expect("create");
    let path = region.proc_path();
    let _tx = region.into_producer().expect("producer side free");
    let again = ShmRegion::open(&path, None).expect("attach");
    assert!(matches!(
        again.into_producer(),
        Err(RegionError::RoleTaken {
            role: Role::Producer,
            state: 1
        })
    ));
    let rx = ShmRegion::open(&path, None)
        .expect("attach")
        .into_consumer();
    assert!(rx.is_ok());
}

#[test]
fn t2_attach_by_path_and_by_fd_shares_records() {
    let region = ShmRegion::create(RingConfig::for_records(8, 32)).expect("create");
    let config = region.config();
    let fd = region.as_fd().try_clone_to_owned().expect("dup");
    let rx_region = ShmRegion::from_fd(fd, Some(config)).expect("attach by fd");
    let mut tx = region.into_producer().expect("producer");
    let mut rx = rx_region.into_consumer().expect("consumer");
    tx.push(b"through a second mapping").expect("room");
    let mut buf = [0u8; 32];
    let n = rx.pop(&mut buf).expect("record");
    assert_eq!(&buf[..n], b"through a second mapping");
}

#[test]
fn t2_invalid_configs_are_refused_with_the_field() {
    let bad_cap = RingConfig {
        capacity: 3,
        slot_size: 16,
    };
    assert!(matches!(
        ShmRegion::create(bad_cap),
        Err(RegionError::BadCapacity { found: 3 })
    ));
    let bad_slot = RingConfig {
        capacity: 4,
        slot_size: 20,
    };
    let err = ShmRegion::create(bad_slot).expect_err("slot size not a multiple of 8");
    assert!(err.to_string().contains("slot_size is 20"), "{err}");
    let huge = RingConfig {
        capacity: 1 << 20,
        slot_size: 1 << 16,
    };
    assert!(matches!(
        ShmRegion::create(huge),
        Err(RegionError::RegionTooLarge { .. })
    ));
}
