//! Real two-process tests (STYLE 11): this binary re-executes itself as the peer, selected
//! by the `QOS_SHM_CHILD` environment variable, and the two processes share one ring
//! through `/proc/<pid>/fd/<fd>`. Every wait is bounded by a deadline, and every spin
//! backs off with `yield_now`/`sleep`, so the tests pass on 2 loaded cores.
//!
//! Runs with its own tiny harness (`harness = false`); an optional argument filters the
//! tests by name, as libtest does.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use qos_shm_ring::layout::{HEADER_LEN, OFFSET_PRODUCER, SIDE_INDEX};
use qos_shm_ring::{
    CorruptError, PeerStatus, PopError, PushError, RecordError, RingConfig, ShmRegion,
};

const CHILD_ROLE: &str = "QOS_SHM_CHILD";
const CHILD_PATH: &str = "QOS_SHM_PATH";
const CHILD_COUNT: &str = "QOS_SHM_COUNT";
const DEADLINE: Duration = Duration::from_secs(120);
const MILLION: u64 = 1_000_000;
const HEARTBEAT_EVERY: u64 = 65_536;

fn config() -> RingConfig {
    RingConfig::for_records(1024, 64)
}

type TestResult = Result<(), String>;
type Test = (&'static str, fn() -> TestResult);

/// The clock, for test deadlines and the throughput print only (the workspace bans
/// `Instant::now` outside the runtime's clock module; a test harness is such a place).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

pub(crate) fn main() {
    match std::env::var(CHILD_ROLE).as_deref() {
        Ok("producer") => std::process::exit(exit_code(child_producer())),
        Ok("crash") => std::process::exit(exit_code(child_crash())),
        Ok("hostile") => std::process::exit(exit_code(child_hostile())),
        _ => run_tests(),
    }
}

fn run_tests() {
    let tests: [Test; 3] = [
        (
            "t2_two_process_million_records_no_loss_no_dup",
            t2_two_process_million_records,
        ),
        (
            "t2_two_process_killed_producer_is_gone_and_drained",
            t2_killed_producer,
        ),
        (
            "t2_two_process_hostile_producer_is_rejected_and_poisons",
            t2_hostile_producer,
        ),
    ];
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let selected: Vec<_> = tests
        .iter()
        .filter(|(n, _)| filter.as_deref().is_none_or(|f| n.contains(f)))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in &selected {
        let outcome = std::panic::catch_unwind(test).unwrap_or_else(|_| Err("panicked".into()));
        match outcome {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                println!("test {name} ... FAILED: {e}");
                failed.push(*name);
            }
        }
    }
    let (passed, n_failed) = (selected.len() - failed.len(), failed.len());
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {n_failed} failed; 0 ignored; 0 measured; {} filtered out\n",
        tests.len() - selected.len()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

fn exit_code(r: TestResult) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child failed: {e}");
            3
        }
    }
}

// ---- records: sequence number, seq-derived payload, checksum ----

fn record_len(seq: u64) -> usize {
    16 + (seq % 49) as usize // 16..=64 bytes
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn make_record(seq: u64, buf: &mut [u8; 64]) -> &[u8] {
    let len = record_len(seq);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    for (j, b) in buf[8..len - 4].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(j as u8);
    }
    let sum = fnv1a(&buf[..len - 4]);
    buf[len - 4..len].copy_from_slice(&sum.to_le_bytes());
    &buf[..len]
}

/// Checks a received record is exactly record `expected`.
fn check_record(rec: &[u8], expected: u64) -> TestResult {
    let len = rec.len();
    if len < 16 {
        return Err(format!("record {expected}: length {len} < 16"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&rec[..8]);
    let seq = u64::from_le_bytes(seq);
    if seq != expected {
        return Err(format!(
            "sequence {seq}, expected {expected} (loss, duplication or reorder)"
        ));
    }
    let mut sum = [0u8; 4];
    sum.copy_from_slice(&rec[len - 4..]);
    if len != record_len(seq) || u32::from_le_bytes(sum) != fnv1a(&rec[..len - 4]) {
        return Err(format!("record {seq}: bad length {len} or checksum"));
    }
    Ok(())
}

// ---- bounded waiting ----

struct Backoff {
    spins: u32,
}

impl Backoff {
    fn new() -> Self {
        Self { spins: 0 }
    }

    fn reset(&mut self) {
        self.spins = 0;
    }

    /// Yields the core first (the peer may need it: 2 cores, other load), then sleeps.
    fn snooze(&mut self, deadline: Instant, what: &str) -> TestResult {
        if now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        if self.spins < 100 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
        self.spins += 1;
        Ok(())
    }
}

fn spawn_child(role: &str, region: &ShmRegion, count: u64) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    Command::new(exe)
        .env(CHILD_ROLE, role)
        .env(CHILD_PATH, region.proc_path())
        .env(CHILD_COUNT, count.to_string())
        .spawn()
        .map_err(|e| format!("spawn child: {e}"))
}

fn wait_child(child: &mut Child, deadline: Instant) -> Result<ExitStatus, String> {
    let mut backoff = Backoff::new();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {
                if let Err(e) = backoff.snooze(deadline, "the child to exit") {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

fn child_env() -> Result<(String, u64), String> {
    let path = std::env::var(CHILD_PATH).map_err(|e| format!("{CHILD_PATH}: {e}"))?;
    let count = std::env::var(CHILD_COUNT).map_err(|e| format!("{CHILD_COUNT}: {e}"))?;
    let count = count
        .parse()
        .map_err(|e| format!("{CHILD_COUNT}={count}: {e}"))?;
    Ok((path, count))
}

// ---- test 1: a million records, mixed single pushes and batches ----

fn child_producer() -> TestResult {
    let (path, count) = child_env()?;
    let region = ShmRegion::open(Path::new(&path), Some(config())).map_err(|e| e.to_string())?;
    let mut tx = region.into_producer().map_err(|e| e.to_string())?;
    let deadline = now() + DEADLINE;
    let mut backoff = Backoff::new();
    let mut buf = [0u8; 64];
    let (mut seq, mut next_beat) = (0u64, 0u64);
    while seq < count {
        if seq >= next_beat {
            tx.heartbeat();
            next_beat += HEARTBEAT_EVERY;
        }
        // Alternate: runs of single pushes and batches of 1..=32.
        let want = if (seq / 1000) % 2 == 0 {
            0
        } else {
            1 + (seq % 32) as usize
        };
        let sent = if want == 0 {
            match tx.push(make_record(seq, &mut buf)) {
                Ok(()) => 1,
                Err(PushError::Full) => 0,
                Err(e) => return Err(format!("push {seq}: {e}")),
            }
        } else {
            match tx.reserve(want.min((count - seq) as usize)) {
                Ok(mut batch) => {
                    let mut s = seq;
                    while batch.remaining() > 0 {
                        batch
                            .write(make_record(s, &mut buf))
                            .map_err(|e| e.to_string())?;
                        s += 1;
                    }
                    batch.commit() as u64
                }
                Err(PushError::Full) => 0,
                Err(e) => return Err(format!("reserve at {seq}: {e}")),
            }
        };
        if sent == 0 {
            backoff.snooze(deadline, "free slots")?;
        } else {
            backoff.reset();
            seq += sent;
        }
    }
    Ok(()) // dropping `tx` marks the producer abandoned
}

fn t2_two_process_million_records() -> TestResult {
    let region = ShmRegion::create(config()).map_err(|e| e.to_string())?;
    let mut child = spawn_child("producer", &region, MILLION)?;
    let mut rx = region.into_consumer().map_err(|e| e.to_string())?;
    let start = now();
    let deadline = start + DEADLINE;
    let mut backoff = Backoff::new();
    let mut buf = [0u8; 64];
    let mut expected = 0u64;
    let outcome = loop {
        match rx.read(64) {
            Ok(mut batch) => {
                backoff.reset();
                while let Some(r) = batch.next_into(&mut buf) {
                    let n = r.map_err(|e| format!("record {expected}: {e}"))?;
                    check_record(&buf[..n], expected)?;
                    expected += 1;
                }
                batch.release();
            }
            Err(PopError::Empty) => {
                if let PeerStatus::Gone { pid } = rx.peer_status() {
                    break Err(format!("producer {pid} died at record {expected}"));
                }
                if let Err(e) = backoff.snooze(deadline, "records") {
                    break Err(e);
                }
            }
            Err(PopError::Disconnected) => break Ok(()),
            Err(e) => break Err(format!("after {expected} records: {e}")),
        }
    };
    let elapsed = start.elapsed();
    let status = wait_child(&mut child, deadline)?;
    outcome?;
    if !status.success() {
        return Err(format!("producer child exited with {status}"));
    }
    if expected != MILLION {
        return Err(format!("received {expected} records, expected {MILLION}"));
    }
    let beats = rx.peer_heartbeat();
    if beats != MILLION.div_ceil(HEARTBEAT_EVERY) {
        return Err(format!(
            "peer heartbeat is {beats}, expected {}",
            MILLION.div_ceil(HEARTBEAT_EVERY)
        ));
    }
    eprintln!(
        "two-process: {expected} records in {:.3} s ({:.2} M records/s)",
        elapsed.as_secs_f64(),
        expected as f64 / elapsed.as_secs_f64() / 1e6
    );
    Ok(())
}

// ---- test 2: a producer killed with SIGKILL ----

fn child_crash() -> TestResult {
    let (path, count) = child_env()?;
    let region = ShmRegion::open(Path::new(&path), Some(config())).map_err(|e| e.to_string())?;
    let mut tx = region.into_producer().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    for seq in 0..count {
        tx.push(make_record(seq, &mut buf))
            .map_err(|e| format!("push {seq}: {e}"))?;
    }
    // Wait to be killed; never drop `tx` (so the abandon flag is never set).
    std::thread::sleep(DEADLINE);
    std::mem::forget(tx);
    Err("was not killed".into())
}

fn t2_killed_producer() -> TestResult {
    const COUNT: u64 = 1000;
    let region = ShmRegion::create(config()).map_err(|e| e.to_string())?;
    let mut child = spawn_child("crash", &region, COUNT)?;
    let rx = region.into_consumer().map_err(|e| e.to_string())?;
    let deadline = now() + DEADLINE;
    let mut backoff = Backoff::new();
    let mut rx = rx;
    // Wait (bounded) until all records are committed, without consuming them.
    while rx.read(COUNT as usize).map(|b| b.len()).unwrap_or(0) < COUNT as usize {
        backoff.snooze(deadline, "the child's records")?;
    }
    let pid = child.id();
    if rx.peer_status() != PeerStatus::Alive {
        return Err(format!("live child reported as {:?}", rx.peer_status()));
    }
    child.kill().map_err(|e| format!("kill: {e}"))?;
    child.wait().map_err(|e| format!("wait: {e}"))?; // reaped: the pid no longer exists
    if rx.peer_status() != (PeerStatus::Gone { pid }) {
        return Err(format!("killed child reported as {:?}", rx.peer_status()));
    }
    let mut buf = [0u8; 64];
    for expected in 0..COUNT {
        let n = rx
            .pop(&mut buf)
            .map_err(|e| format!("drain {expected}: {e}"))?;
        check_record(&buf[..n], expected)?;
    }
    // No abandon flag was ever set: the ring reads as empty, and liveness says why.
    match rx.pop(&mut buf) {
        Err(PopError::Empty) => Ok(()),
        other => Err(format!("after draining: {other:?}, expected Empty")),
    }
}

// ---- test 3: a hostile producer process ----

const HOSTILE_RECORDS: u64 = 10_000;
const HOSTILE_EVERY: u64 = 100;

fn child_hostile() -> TestResult {
    let (path, count) = child_env()?;
    let raw = File::options()
        .write(true)
        .open(&path)
        .map_err(|e| format!("open: {e}"))?;
    let region = ShmRegion::open(Path::new(&path), Some(config())).map_err(|e| e.to_string())?;
    let mut tx = region.into_producer().map_err(|e| e.to_string())?;
    let cfg = config();
    let deadline = now() + DEADLINE;
    let mut backoff = Backoff::new();
    let mut buf = [0u8; 64];
    let mut seq = 0u64;
    while seq < count {
        let Ok(mut batch) = tx.reserve(1) else {
            backoff.snooze(deadline, "free slots")?;
            continue;
        };
        backoff.reset();
        batch
            .write(make_record(seq, &mut buf))
            .map_err(|e| e.to_string())?;
        if seq % HOSTILE_EVERY == HOSTILE_EVERY - 1 {
            // Lie about the length of this record before committing it.
            let slot =
                HEADER_LEN as u64 + (seq % u64::from(cfg.capacity)) * u64::from(cfg.slot_size);
            raw.write_all_at(&(1u64 << 33).to_le_bytes(), slot)
                .map_err(|e| e.to_string())?;
        }
        batch.commit();
        seq += 1;
    }
    // Once the consumer has drained everything (all slots free again), publish a tail
    // far beyond the capacity.
    while tx.reserve(cfg.capacity as usize).map(|b| b.reserved()) != Ok(cfg.capacity as usize) {
        backoff.snooze(deadline, "the consumer to drain")?;
    }
    let bogus = count + 5 * u64::from(cfg.capacity);
    raw.write_all_at(&bogus.to_le_bytes(), (OFFSET_PRODUCER + SIDE_INDEX) as u64)
        .map_err(|e| e.to_string())?;
    std::mem::forget(tx); // a hostile peer never says goodbye
    Ok(())
}

fn t2_hostile_producer() -> TestResult {
    let region = ShmRegion::create(config()).map_err(|e| e.to_string())?;
    let mut child = spawn_child("hostile", &region, HOSTILE_RECORDS)?;
    let mut rx = region.into_consumer().map_err(|e| e.to_string())?;
    let deadline = now() + DEADLINE;
    let mut backoff = Backoff::new();
    let mut buf = [0u8; 64];
    let (mut next, mut good) = (0u64, 0u64);
    let end = loop {
        match rx.pop(&mut buf) {
            Ok(n) => {
                check_record(&buf[..n], next)?;
                next += 1;
                good += 1;
                backoff.reset();
            }
            Err(PopError::Record(RecordError::TooLong { len, .. })) if len == 1 << 33 => next += 1,
            Err(PopError::Empty) => backoff.snooze(deadline, "hostile records")?,
            Err(e) => break e,
        }
    };
    let status = wait_child(&mut child, deadline)?;
    if !status.success() {
        return Err(format!("hostile child exited with {status}"));
    }
    let rejected = HOSTILE_RECORDS / HOSTILE_EVERY;
    if rx.rejected() != rejected || good != HOSTILE_RECORDS - rejected {
        return Err(format!(
            "rejected {} and accepted {good}, expected {rejected} and {}",
            rx.rejected(),
            HOSTILE_RECORDS - rejected
        ));
    }
    match end {
        PopError::Corrupt(CorruptError::IndexAhead { field: "tail", .. }) => {}
        other => {
            return Err(format!(
                "ended with {other}, expected a tail beyond capacity"
            ));
        }
    }
    // Poisoned for good.
    match rx.pop(&mut buf) {
        Err(PopError::Corrupt(_)) => Ok(()),
        other => Err(format!("after poisoning: {other:?}")),
    }
}
