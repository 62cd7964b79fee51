//! A producer in a second process feeds a worker through a `qos-shm-ring` ring (T2):
//! its packets arrive in order per stream, every one counted, and malformed records
//! are counted and skipped. The binary re-executes itself as the peer (selected by the
//! `QOS_RUNTIME_SHM_CHILD` variable), so it has its own `main` (`harness = false`).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[cfg(not(qos_loom))]
mod two_process {
    use std::collections::HashMap;
    use std::path::Path;
    use std::process::Command;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use qos_dataplane::runtime::shm::{encode_close, encode_open, encode_packet};
    use qos_dataplane::runtime::{Clock, Dataplane, Egress, Outbox, Pinning, StopMode};
    use qos_dataplane::sched::Priority;
    use qos_shm_ring::{PushError, RingConfig, ShmRegion};

    const ROLE: &str = "QOS_RUNTIME_SHM_CHILD";
    const PATH: &str = "QOS_RUNTIME_SHM_PATH";
    const STREAMS: u32 = 4;
    const PER_STREAM: u64 = 5_000;
    const BAD_RECORDS: u64 = 4; // three unknown kinds, one too short

    fn config() -> RingConfig {
        RingConfig::for_records(256, 32)
    }

    pub fn main() {
        if std::env::var(ROLE).as_deref() == Ok("producer") {
            child();
            return;
        }
        println!("\nrunning 1 test");
        parent();
        println!("test t2_shm_ingress_from_a_second_process_in_order_and_counted ... ok");
        println!("\ntest result: ok. 1 passed; 0 failed");
    }

    /// The peer: opens streams, sends packets round robin (payload = sequence), a few
    /// malformed records, closes one stream at the end, then abandons the ring.
    fn child() {
        let path = std::env::var(PATH).unwrap();
        let region = ShmRegion::open(Path::new(&path), Some(config())).unwrap();
        let mut tx = region.into_producer().unwrap();
        let mut buf = [0u8; 32];
        let clock = Clock::start();
        let mut send = |rec: &[u8]| loop {
            match tx.push(rec) {
                Ok(()) => return,
                Err(PushError::Full) => {
                    assert!(clock.now_ns() < 60_000_000_000, "peer timed out");
                    std::thread::yield_now();
                }
                Err(e) => panic!("push: {e}"),
            }
        };
        for s in 0..STREAMS {
            let n = encode_open(&mut buf, s, Priority::new(s as u8 * 2).unwrap(), None);
            send(&buf[..n]);
        }
        for seq in 0..PER_STREAM {
            for s in 0..STREAMS {
                let n = encode_packet(&mut buf, s, 500, &seq.to_le_bytes());
                send(&buf[..n]);
            }
            if seq % 2_000 == 1 {
                send(&[9, 0, 0, 0, 0, 0, 0, 0]); // unknown kind
            }
        }
        send(&[2, 0, 0]); // too short
        let n = encode_close(&mut buf, 0);
        send(&buf[..n]);
    }

    struct Collect(Arc<Mutex<Vec<(u32, u64)>>>);

    impl Egress<u64> for Collect {
        fn send(&mut self, _now: u64, out: &mut Outbox<'_, u64>) {
            let mut log = self.0.lock().unwrap();
            while let Some(d) = out.pop() {
                log.push((d.priority.get() as u32 / 2, d.packet));
            }
        }
    }

    fn parent() {
        let region = ShmRegion::create(config()).unwrap();
        let path = region.proc_path();
        let rx = region.into_consumer().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        // No queue-delay control: this test is about order and counts across
        // processes, and CoDel would drop (counted, but leaving gaps in the order
        // check) whenever a loaded CI machine slows the worker.
        let policy = qos_dataplane::sched::PolicySpec {
            aqm: false,
            ..qos_dataplane::sched::PolicySpec::default()
        };
        let (dp, producers) = Dataplane::<u64>::builder()
            .pinning(Pinning::Off)
            .policy(Arc::new(policy.build().unwrap()))
            .shm_ingress(0, rx, |payload| {
                let mut b = [0u8; 8];
                let n = payload.len().min(8);
                b[..n].copy_from_slice(&payload[..n]);
                u64::from_le_bytes(b)
            })
            .drain_timeout(Duration::from_secs(30))
            .build(move |_| Collect(l.clone()))
            .unwrap();
        drop(producers);
        let exe = std::env::current_exe().unwrap();
        let status = Command::new(exe)
            .env(ROLE, "producer")
            .env(PATH, &path)
            .status()
            .unwrap();
        assert!(status.success(), "peer failed: {status}");
        // The peer is gone: a graceful stop drains everything it committed.
        let report = dp.shutdown(StopMode::Drain).unwrap();
        let w = &report.workers[0];
        assert_eq!(w.shm_rejected, BAD_RECORDS, "malformed records counted");
        assert_eq!(w.taken, u64::from(STREAMS) * PER_STREAM);
        assert_eq!(w.sent + w.discarded, w.taken);
        assert!(report.is_conserved(), "S11 across the shm ring");
        let log = log.lock().unwrap();
        let mut next: HashMap<u32, u64> = HashMap::new();
        for &(s, seq) in log.iter() {
            let want = next.entry(s).or_insert(0);
            assert_eq!(seq, *want, "stream {s} out of order");
            *want += 1;
        }
        // Everything was sent before the close (a close drops only what is queued),
        // and nothing else was dropped.
        assert_eq!(w.sent + w.shard.totals.dropped_total(), w.taken);
        assert_eq!(
            w.shard.totals.dropped_total(),
            w.shard.totals.dropped[qos_dataplane::sched::DropReason::Closed as usize]
        );
        assert_eq!(next.len() as u32, STREAMS);
    }
}

#[cfg(not(qos_loom))]
fn main() {
    two_process::main();
}

/// Loom builds have no shared memory to test.
#[cfg(qos_loom)]
fn main() {}
