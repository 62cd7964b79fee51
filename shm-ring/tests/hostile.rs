//! A hostile or buggy peer (STYLE 10, DESIGN §9): a second mapping of the same region
//! (here: `pwrite` through a second file descriptor, which lands in the same pages)
//! scribbles over the header, the indices and the slots. The survivor must answer with an
//! error or a counted rejection: never a panic, UB or an out-of-bounds access.
#![cfg(not(qos_loom))]

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;
use qos_shm_ring::layout::{
    HEADER_LEN, MAGIC, MAX_CLAIM_INDEX, OFFSET_CAPACITY, OFFSET_CONSUMER, OFFSET_MAGIC,
    OFFSET_PRODUCER, OFFSET_REGION_LEN, OFFSET_SLOT_SIZE, OFFSET_VERSION, SIDE_INDEX, SIDE_PID,
    SIDE_STATE, VERSION,
};
use qos_shm_ring::{
    Consumer, CorruptError, PeerStatus, PopError, Producer, PushError, RecordError, RegionError,
    RingConfig, ShmRegion,
};
use rustix::fs::{MemfdFlags, SealFlags};

/// A ring split in-process plus a second, raw handle on its bytes.
fn ring(capacity: u32, max_record: u32) -> (Producer, Consumer, File) {
    // Dense slots (no cache-line rounding), so the offsets below are easy to compute.
    let config = RingConfig {
        capacity,
        slot_size: max_record + 8,
    };
    let region = ShmRegion::create(config).expect("create");
    let raw = File::options()
        .read(true)
        .write(true)
        .open(region.proc_path())
        .expect("second handle on the region");
    let (tx, rx) = region.split().expect("split");
    (tx, rx, raw)
}

fn poke_u64(raw: &File, offset: usize, value: u64) {
    raw.write_all_at(&value.to_le_bytes(), offset as u64)
        .expect("pwrite");
}

fn poke_u32(raw: &File, offset: usize, value: u32) {
    raw.write_all_at(&value.to_le_bytes(), offset as u64)
        .expect("pwrite");
}

#[test]
fn t2_hostile_tail_beyond_capacity_poisons_the_consumer() {
    let (mut tx, mut rx, raw) = ring(4, 8);
    tx.push(b"ok").expect("room");
    poke_u64(&raw, OFFSET_PRODUCER + SIDE_INDEX, 4 + 1);
    let mut buf = [0u8; 8];
    let expected = PopError::Corrupt(CorruptError::IndexAhead {
        field: "tail",
        now: 5,
        limit: 4,
    });
    assert_eq!(rx.pop(&mut buf), Err(expected));
    assert_eq!(
        rx.pop(&mut buf),
        Err(expected),
        "poisoned: same error again"
    );
    assert!(matches!(rx.read(1), Err(e) if e == expected));
    assert!(rx.poisoned().is_some());
    assert!(
        expected
            .to_string()
            .contains("tail is 5, expected at most 4")
    );
}

#[test]
fn t2_hostile_tail_near_u64_max_does_not_overflow() {
    let (_tx, mut rx, raw) = ring(4, 8);
    poke_u64(&raw, OFFSET_PRODUCER + SIDE_INDEX, u64::MAX);
    let mut buf = [0u8; 8];
    assert!(matches!(
        rx.pop(&mut buf),
        Err(PopError::Corrupt(CorruptError::IndexAhead {
            field: "tail",
            ..
        }))
    ));
}

/// A fresh ring, not yet split, whose two indices a peer has set to `index`, and a raw
/// handle on its bytes.
fn planted(index: u64) -> (ShmRegion, File) {
    let region = ShmRegion::create(RingConfig {
        capacity: 4,
        slot_size: 16,
    })
    .expect("create");
    let raw = File::options()
        .read(true)
        .write(true)
        .open(region.proc_path())
        .expect("second handle on the region");
    poke_u64(&raw, OFFSET_PRODUCER + SIDE_INDEX, index);
    poke_u64(&raw, OFFSET_CONSUMER + SIDE_INDEX, index);
    (region, raw)
}

/// Found by a red-team review: a peer that planted both indices at `u64::MAX` before our
/// producer took its side made its first push overflow `tail + 1` (a panic in a debug
/// build; in release the index wrapped to 0 and four pushes were lost before an error).
#[test]
fn t2_a_producer_refuses_a_planted_index_that_would_overflow() {
    for index in [u64::MAX, u64::MAX - 1, MAX_CLAIM_INDEX + 1] {
        match planted(index).0.into_producer() {
            Err(RegionError::Corrupt(CorruptError::IndexAhead { field, now, limit })) => {
                assert_eq!((field, now, limit), ("tail", index, MAX_CLAIM_INDEX));
            }
            other => panic!("planted {index}: claimed {:?}", other.map(|_| ())),
        }
    }
    // At the limit the ring still works, across a wrap of the slot index.
    let (region, raw) = planted(MAX_CLAIM_INDEX);
    let (mut tx, mut rx) = region.split().expect("an index at the limit is accepted");
    let mut buf = [0u8; 8];
    for i in 0..10u8 {
        tx.push(&[i]).expect("room");
        assert_eq!(rx.pop(&mut buf), Ok(1));
        assert_eq!(buf[0], i);
    }
    let mut word = [0u8; 8];
    raw.read_exact_at(&mut word, (OFFSET_PRODUCER + SIDE_INDEX) as u64)
        .expect("pread");
    assert_eq!(u64::from_le_bytes(word), MAX_CLAIM_INDEX + 10);
}

#[test]
fn t2_hostile_tail_going_backwards_is_detected() {
    let (mut tx, mut rx, raw) = ring(4, 8);
    for r in [b"a", b"b", b"c"] {
        tx.push(r).expect("room");
    }
    let mut buf = [0u8; 8];
    assert_eq!(rx.pop(&mut buf), Ok(1)); // caches tail = 3
    poke_u64(&raw, OFFSET_PRODUCER + SIDE_INDEX, 1);
    // The two records already validated stay readable: they were committed.
    assert_eq!(rx.pop(&mut buf), Ok(1));
    assert_eq!(rx.pop(&mut buf), Ok(1));
    assert_eq!(
        rx.pop(&mut buf),
        Err(PopError::Corrupt(CorruptError::IndexBackwards {
            field: "tail",
            was: 3,
            now: 1
        }))
    );
}

#[test]
fn t2_hostile_head_ahead_of_tail_poisons_the_producer() {
    let (mut tx, _rx, raw) = ring(2, 8);
    tx.push(b"1").expect("room");
    tx.push(b"2").expect("room");
    poke_u64(&raw, OFFSET_CONSUMER + SIDE_INDEX, 7);
    let expected = PushError::Corrupt(CorruptError::IndexAhead {
        field: "head",
        now: 7,
        limit: 2,
    });
    assert_eq!(tx.push(b"3"), Err(expected));
    assert!(matches!(tx.reserve(1), Err(e) if e == expected));
}

#[test]
fn t2_hostile_head_going_backwards_poisons_the_producer() {
    let (mut tx, mut rx, raw) = ring(2, 8);
    let mut buf = [0u8; 8];
    for _ in 0..3 {
        tx.push(b"x").expect("room");
        tx.push(b"y").expect("room");
        rx.pop(&mut buf).expect("record");
        rx.pop(&mut buf).expect("record");
    }
    tx.push(b"1").expect("room");
    tx.push(b"2").expect("room"); // producer cached head = 4 or 6 by now
    poke_u64(&raw, OFFSET_CONSUMER + SIDE_INDEX, 0);
    assert!(matches!(
        tx.push(b"3"),
        Err(PushError::Corrupt(CorruptError::IndexBackwards {
            field: "head",
            now: 0,
            ..
        }))
    ));
}

#[test]
fn t2_hostile_record_length_is_rejected_and_counted() {
    let (mut tx, mut rx, raw) = ring(4, 16);
    tx.push(b"first").expect("room");
    tx.push(b"second").expect("room");
    let slot_size = 8 + 16;
    // Length word of slot 0 claims 2^40 bytes; of slot 1, one byte more than the slot.
    poke_u64(&raw, HEADER_LEN, 1 << 40);
    poke_u64(&raw, HEADER_LEN + slot_size, 17);
    let mut buf = [0u8; 16];
    assert_eq!(
        rx.pop(&mut buf),
        Err(PopError::Record(RecordError::TooLong {
            len: 1 << 40,
            max: 16
        }))
    );
    let mut batch = rx.read(4).expect("one record left");
    assert_eq!(
        batch.next_into(&mut buf),
        Some(Err(RecordError::TooLong { len: 17, max: 16 }))
    );
    assert_eq!(batch.next_into(&mut buf), None);
    assert_eq!(batch.release(), 1);
    assert_eq!(rx.rejected(), 2);
    tx.push(b"third").expect("room");
    assert_eq!(rx.pop(&mut buf), Ok(5), "the ring goes on after rejections");
}

#[test]
fn t2_header_rewritten_after_attach_changes_no_bounds() {
    let (mut tx, mut rx, raw) = ring(4, 8);
    poke_u32(&raw, OFFSET_CAPACITY, 1 << 30);
    poke_u32(&raw, OFFSET_SLOT_SIZE, 8);
    poke_u64(&raw, OFFSET_MAGIC, 0xdead_beef);
    let mut buf = [0u8; 8];
    for round in 0..10u8 {
        for i in 0..4u8 {
            tx.push(&[round, i]).expect("capacity is still 4");
        }
        assert_eq!(tx.push(b"x"), Err(PushError::Full));
        for i in 0..4u8 {
            assert_eq!(rx.pop(&mut buf), Ok(2));
            assert_eq!(&buf[..2], &[round, i]);
        }
    }
    assert!(matches!(
        rx.verify_header(),
        Err(RegionError::BadMagic {
            found: 0xdead_beef,
            ..
        })
    ));
    poke_u64(&raw, OFFSET_MAGIC, MAGIC);
    assert!(matches!(
        tx.verify_header(),
        Err(RegionError::BadCapacity { found: 0x4000_0000 })
    ));
}

#[test]
fn t2_hostile_peer_state_and_pid_are_reported_not_trusted() {
    let (tx, rx, raw) = ring(2, 8);
    poke_u32(&raw, OFFSET_PRODUCER + SIDE_STATE, 77);
    assert_eq!(rx.peer_status(), PeerStatus::Invalid { state: 77 });
    poke_u32(&raw, OFFSET_PRODUCER + SIDE_STATE, 1);
    poke_u32(&raw, OFFSET_PRODUCER + SIDE_PID, u32::MAX);
    assert!(matches!(rx.peer_status(), PeerStatus::Invalid { .. }));
    poke_u32(&raw, OFFSET_CONSUMER + SIDE_PID, 0);
    assert_eq!(
        tx.peer_status(),
        PeerStatus::Alive,
        "pid 0 reads as unknown"
    );
}

// ---- attach-time validation of an untrusted region ----

/// A sealed memfd holding `bytes` (zero-padded to `len`).
fn crafted(bytes: &[u8], len: u64, seal: bool) -> OwnedFd {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let fd = rustix::fs::memfd_create("crafted", flags).expect("memfd");
    rustix::fs::ftruncate(&fd, len).expect("ftruncate");
    let file = File::from(fd);
    file.write_all_at(bytes, 0).expect("pwrite");
    let fd = OwnedFd::from(file);
    if seal {
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).expect("seal");
    }
    fd
}

fn header(magic: u64, version: u32, capacity: u32, slot_size: u32, region_len: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN];
    h[OFFSET_MAGIC..][..8].copy_from_slice(&magic.to_le_bytes());
    h[OFFSET_VERSION..][..4].copy_from_slice(&version.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[OFFSET_CAPACITY..][..4].copy_from_slice(&capacity.to_le_bytes());
    h[OFFSET_SLOT_SIZE..][..4].copy_from_slice(&slot_size.to_le_bytes());
    h[OFFSET_REGION_LEN..][..8].copy_from_slice(&region_len.to_le_bytes());
    h
}

fn attach(bytes: &[u8], len: u64) -> Result<ShmRegion, RegionError> {
    ShmRegion::from_fd(crafted(bytes, len, true), None)
}

#[test]
fn t2_attach_rejects_wrong_magic() {
    let h = header(0x1234, VERSION, 4, 16, 384 + 64);
    let err = attach(&h, 448).expect_err("bad magic");
    assert!(
        matches!(err, RegionError::BadMagic { found: 0x1234, .. }),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("magic is 0x0000000000001234"),
        "{err}"
    );
}

#[test]
fn t2_attach_rejects_wrong_version() {
    let h = header(MAGIC, VERSION + 1, 4, 16, 448);
    let err = attach(&h, 448).expect_err("bad version");
    assert!(matches!(err, RegionError::BadVersion { found, .. } if found == VERSION + 1));
}

#[test]
fn t2_attach_rejects_bad_capacity_and_slot_size() {
    for cap in [0u32, 3, 1 << 21, u32::MAX] {
        let h = header(MAGIC, VERSION, cap, 16, 448);
        let err = attach(&h, 448).expect_err("bad capacity");
        assert!(
            matches!(err, RegionError::BadCapacity { found } if found == cap),
            "{err}"
        );
    }
    for slot in [0u32, 8, 17, 1 << 17] {
        let h = header(MAGIC, VERSION, 4, slot, 448);
        let err = attach(&h, 448).expect_err("bad slot size");
        assert!(
            matches!(err, RegionError::BadSlotSize { found } if found == slot),
            "{err}"
        );
    }
}

#[test]
fn t2_attach_rejects_inconsistent_or_short_regions() {
    let h = header(MAGIC, VERSION, 4, 16, 9999);
    assert!(matches!(
        attach(&h, 448),
        Err(RegionError::BadRegionLen {
            found: 9999,
            expected: 448
        })
    ));
    let h = header(MAGIC, VERSION, 4, 16, 448);
    assert!(matches!(
        attach(&h, 447),
        Err(RegionError::TooSmall {
            len: 447,
            need: 448
        })
    ));
    assert!(matches!(
        attach(&h[..100], 100),
        Err(RegionError::TooSmall {
            len: 100,
            need: 384
        })
    ));
    let fine = attach(&h, 448).expect("a well-formed crafted region attaches");
    assert_eq!(
        fine.config(),
        RingConfig {
            capacity: 4,
            slot_size: 16
        }
    );
}

#[test]
fn t2_attach_rejects_regions_the_peer_could_truncate() {
    let h = header(MAGIC, VERSION, 4, 16, 448);
    let err = ShmRegion::from_fd(crafted(&h, 448, false), None).expect_err("unsealed");
    assert!(matches!(err, RegionError::NotSealed { .. }), "{err}");
    let dir = std::env::temp_dir().join(format!("qos-shm-ring-{}", std::process::id()));
    std::fs::write(&dir, &h).expect("plain file");
    let err = ShmRegion::open(Path::new(&dir), None).expect_err("plain files cannot be sealed");
    std::fs::remove_file(&dir).expect("cleanup");
    assert!(matches!(err, RegionError::NotSealed { found: 0 }), "{err}");
}

#[test]
fn t2_attach_checks_the_expected_shape() {
    let region = ShmRegion::create(RingConfig::for_records(4, 8)).expect("create");
    let want = RingConfig::for_records(8, 8);
    let err = ShmRegion::open(&region.proc_path(), Some(want)).expect_err("other capacity");
    assert!(
        matches!(
            err,
            RegionError::ConfigMismatch {
                field: "capacity",
                found: 4,
                expected: 8
            }
        ),
        "{err}"
    );
}

#[test]
fn t2_claim_time_indices_are_validated() {
    let region = ShmRegion::create(RingConfig::for_records(4, 8)).expect("create");
    let raw = File::options()
        .write(true)
        .open(region.proc_path())
        .expect("open");
    poke_u64(&raw, OFFSET_PRODUCER + SIDE_INDEX, 100);
    assert!(matches!(
        region.into_consumer(),
        Err(RegionError::Corrupt(CorruptError::IndexAhead {
            field: "tail",
            now: 100,
            limit: 4
        }))
    ));
}

// ---- random scribbling ----

#[derive(Debug, Clone)]
enum Step {
    Push(u8),
    Pop,
    Batch(u8),
    Read(u8),
    /// Write `value` at byte `offset` (8-aligned, anywhere in the region).
    Scribble(usize, u64),
}

fn step(region_words: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..40).prop_map(Step::Push),
        Just(Step::Pop),
        (0u8..6).prop_map(Step::Batch),
        (0u8..6).prop_map(Step::Read),
        (
            0..region_words,
            prop_oneof![any::<u64>(), 0u64..70, Just(u64::MAX)]
        )
            .prop_map(|(w, v)| Step::Scribble(w * 8, v)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever the peer writes, anywhere, every call returns (no panic) and every record
    /// handed out fits the slot.
    #[test]
    fn t2_random_scribbles_never_panic(steps in prop::collection::vec(step((384 + 4 * 40) / 8), 1..120)) {
        let (mut tx, mut rx, raw) = ring(4, 32);
        let mut buf = [0u8; 32];
        for s in steps {
            match s {
                Step::Push(n) => { let _ = tx.push(&vec![n; n as usize]); }
                Step::Pop => {
                    if let Ok(n) = rx.pop(&mut buf) { prop_assert!(n <= 32); }
                }
                Step::Batch(n) => if let Ok(mut b) = tx.reserve(n as usize) {
                    while b.write(&[n; 5]).is_ok() {}
                    b.commit();
                },
                Step::Read(n) => if let Ok(mut b) = rx.read(n as usize) {
                    while let Some(r) = b.next_into(&mut buf) {
                        if let Ok(n) = r { prop_assert!(n <= 32); }
                    }
                    b.release();
                },
                Step::Scribble(offset, value) => poke_u64(&raw, offset, value),
            }
            let _ = (rx.peer_status(), tx.peer_status(), rx.verify_header());
        }
    }
}

/// shm red team: a peer that creates the region as a huge-page memfd (`MFD_HUGETLB`,
/// sealed against shrinking) passed `from_fd`'s checks, then could punch a hole in it
/// while it was mapped: our next access took a fresh page from the host's huge-page
/// pool, or would fault with SIGBUS with the pool empty. Such a region is refused
/// before anything is read or mapped.
#[test]
fn a_huge_page_region_is_refused() {
    let fd = match rustix::fs::memfd_create(
        "hostile-huge",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB,
    ) {
        Ok(fd) => fd,
        // No hugetlbfs on this kernel: a peer cannot make such a region either.
        Err(e) => {
            eprintln!("memfd_create(MFD_HUGETLB): {e}; nothing to refuse here");
            return;
        }
    };
    // No size: the file system is checked first (and a huge page's size differs
    // between hosts, which a truncate would have to match).
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    let err = ShmRegion::from_fd(fd, None).unwrap_err();
    assert!(matches!(err, RegionError::HugePages), "{err:?}");
    assert!(err.to_string().contains("huge pages"), "{err}");
}
