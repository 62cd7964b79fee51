//! The sink: receives load-generator datagrams on one UDP socket and keeps, per stream,
//! what arrived, in what order, and how late.
//!
//! One thread receives one datagram per loop iteration (a read timeout of
//! [`POLL_INTERVAL`] bounds each wait), so the deadline, the stop flag and the interval
//! rotation are checked at least that often. Datagrams are parsed with
//! [`Header::parse`], the parser `qosd` uses; those that are not headers are counted by
//! [`HeaderError::reason`](crate::header::HeaderError::reason) and otherwise ignored.
//!
//! Per stream:
//!
//! * **received**: datagrams with a sequence number not seen before (unique), and their
//!   bytes;
//! * **duplicates**: a sequence number seen before;
//! * **reordered**: a sequence number below the highest seen that is not a duplicate;
//! * **latency**: receive wall clock minus the header's send time, in ns, of unique
//!   datagrams only (so a histogram's count is the stream's received count). A negative
//!   difference (clocks of different hosts, or of two processes that read the wall clock
//!   at different instants) is recorded as 0 and counted in `negative_latency`.
//!
//! Duplicates are found with a sliding bitmap of the last [`SEQ_WINDOW`] sequence
//! numbers below the highest (8 KiB per stream): a datagram older than that is counted
//! as reordered and unique, since it can no longer be told from a duplicate.
//!
//! Every [`SinkConfig::interval`] (1 s by default) the sink closes a latency interval per
//! priority: it writes it to the `.hlog` if one was asked for (tag `p{priority}.latency`,
//! values in ns, only priorities that received something in the interval) and keeps its
//! percentiles for [`SinkHandle::snapshot`].

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use qos_control::hlog::HlogWriter;
use serde::{Deserialize, Serialize};

use super::LoadgenError;
use super::clock::Clock;
use super::report::LatencySummary;
use crate::header::Header;

/// Longest wait in one receive call.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Sequence numbers below the highest that duplicate detection remembers, per stream.
pub const SEQ_WINDOW: u64 = 65_536;
/// Receive buffer asked of the kernel (it may grant less: `net.core.rmem_max`).
pub const RECV_BUFFER_BYTES: usize = 8 << 20;
/// Most streams one sink tracks (each costs about 8 KiB of sequence window plus its
/// histogram); datagrams of further streams are counted under the reason
/// `stream_limit`.
pub const MAX_STREAMS: usize = 10_000;
/// The reason datagrams of streams past [`MAX_STREAMS`] are counted under.
pub const STREAM_LIMIT: &str = "stream_limit";

/// The tag of priority `priority`'s latency intervals in the `.hlog`: `p{priority}.latency`.
pub fn latency_tag(priority: u8) -> String {
    format!("p{priority}.latency")
}

/// How to run a sink.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Address to bind (port 0 picks one: see [`Sink::local_addr`]).
    pub bind: SocketAddr,
    /// Stop receiving this long after the start (always bounded).
    pub duration: Duration,
    /// Length of a latency interval (snapshot and `.hlog`).
    pub interval: Duration,
    /// Write per-priority latency intervals to this `.hlog`.
    pub hlog: Option<PathBuf>,
}

impl SinkConfig {
    /// A sink on `bind` for `duration`, 1 s intervals, no `.hlog`.
    pub fn new(bind: SocketAddr, duration: Duration) -> Self {
        Self {
            bind,
            duration,
            interval: Duration::from_secs(1),
            hlog: None,
        }
    }
}

/// A bound sink, not yet receiving.
#[derive(Debug)]
pub struct Sink {
    socket: UdpSocket,
    config: SinkConfig,
}

impl Sink {
    /// Binds the socket (with a large receive buffer where allowed).
    ///
    /// # Errors
    /// [`LoadgenError::Io`] when the address cannot be bound.
    pub fn bind(config: SinkConfig) -> Result<Self, LoadgenError> {
        let addr = config.bind;
        let err = |action| move |e| LoadgenError::io(action, addr, e);
        let domain = socket2::Domain::for_address(addr);
        let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, None)
            .map_err(err("create a socket for"))?;
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = socket.set_recv_buffer_size(RECV_BUFFER_BYTES);
        socket.bind(&addr.into()).map_err(err("bind"))?;
        let socket: UdpSocket = socket.into();
        socket
            .set_read_timeout(Some(POLL_INTERVAL))
            .map_err(err("set a read timeout on"))?;
        Ok(Self { socket, config })
    }

    /// The bound address.
    ///
    /// # Errors
    /// [`LoadgenError::Io`] if the socket cannot say.
    pub fn local_addr(&self) -> Result<SocketAddr, LoadgenError> {
        self.socket
            .local_addr()
            .map_err(|e| LoadgenError::io("read the address of", self.config.bind, e))
    }

    /// Starts receiving on a new thread, until the configured duration or `stop`.
    ///
    /// # Errors
    /// [`LoadgenError::Hlog`] if the `.hlog` cannot be created, [`LoadgenError::Io`] if
    /// the thread cannot be spawned.
    pub fn spawn(self, stop: Arc<AtomicBool>) -> Result<SinkHandle, LoadgenError> {
        let clock = Clock::start();
        let local_addr = self.local_addr()?;
        let hlog = match &self.config.hlog {
            Some(path) => Some(HlogWriter::create(path, clock.start_system_time())?),
            None => None,
        };
        let shared = Arc::new(Mutex::new(State::new(clock.start_wall_ns())));
        let mut worker = Worker {
            socket: self.socket,
            config: self.config,
            clock,
            shared: Arc::clone(&shared),
            hlog,
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name("loadgen-sink".into())
            .spawn(move || worker.run())
            .map_err(|e| LoadgenError::spawn("sink", e))?;
        Ok(SinkHandle {
            thread,
            shared,
            stop,
            clock,
            local_addr,
        })
    }
}

/// A running sink.
pub struct SinkHandle {
    thread: JoinHandle<Result<(), LoadgenError>>,
    shared: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    clock: Clock,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHandle")
            .field("local_addr", &self.local_addr)
            .field("finished", &self.thread.is_finished())
            .finish_non_exhaustive()
    }
}

/// One stream's counts so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamSnapshot {
    /// Stream id.
    pub id: u64,
    /// Priority of its first datagram.
    pub priority: u8,
    /// Unique datagrams received.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One priority's counts and latency so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrioritySnapshot {
    /// Priority, 0..=7.
    pub priority: u8,
    /// Unique datagrams received at this priority.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Latency since the start.
    pub cumulative: LatencySummary,
    /// Latency over the last closed interval (`None` before the first closes, or if
    /// nothing arrived in it).
    pub last_interval: Option<LatencySummary>,
}

/// What the sink has seen so far (see [`SinkHandle::snapshot`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SinkSnapshot {
    /// Time since the sink started, ns.
    pub elapsed_ns: u64,
    /// Per stream, by id.
    pub streams: Vec<StreamSnapshot>,
    /// Per priority that received something, ascending.
    pub priorities: Vec<PrioritySnapshot>,
    /// Datagrams that were not load-generator headers.
    pub malformed: u64,
}

impl SinkSnapshot {
    /// Unique bytes received, all streams.
    pub fn total_bytes(&self) -> u64 {
        self.streams.iter().map(|s| s.bytes).sum()
    }
}

/// One stream's final counts.
#[derive(Clone, Debug)]
pub struct StreamReceived {
    /// Stream id.
    pub id: u64,
    /// Priority of its first datagram.
    pub priority: u8,
    /// Unique datagrams.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Highest sequence number seen.
    pub highest_seq: u64,
    /// Datagrams whose sequence number was seen before.
    pub duplicates: u64,
    /// Unique datagrams below the highest sequence number seen at their arrival.
    pub reordered: u64,
    /// Receive wall clock of the first and the last unique datagram, ns since the epoch.
    pub first_recv_ns: u64,
    /// See `first_recv_ns`.
    pub last_recv_ns: u64,
    /// One-way latency of unique datagrams, ns.
    pub latency: Histogram<u64>,
}

/// What the sink saw, at its end.
#[derive(Clone, Debug)]
pub struct SinkReport {
    /// Wall-clock start, ns since the Unix epoch.
    pub start_ns: u64,
    /// How long it received, ns.
    pub elapsed_ns: u64,
    /// Per stream, by id.
    pub streams: Vec<StreamReceived>,
    /// Latency per priority 0..=7, ns (all streams of that priority).
    pub per_priority: Vec<Histogram<u64>>,
    /// Datagrams that were not headers, by [`HeaderError::reason`](crate::header::HeaderError::reason).
    pub malformed: BTreeMap<String, u64>,
    /// Latencies that came out negative and were recorded as 0.
    pub negative_latency: u64,
    /// Why the `.hlog` stopped being written, if it did. The sink keeps receiving and
    /// counting after such an error; the log holds the intervals before it.
    pub hlog_error: Option<String>,
}

impl SinkHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counts and latency percentiles so far. Takes the sink's lock for as long as it
    /// copies the per-stream counters and reads 16 histograms.
    pub fn snapshot(&self) -> SinkSnapshot {
        let elapsed_ns = self.clock.elapsed_ns();
        lock(&self.shared).snapshot(elapsed_ns)
    }

    /// Whether the sink has stopped (deadline, stop flag or error).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Asks the sink to stop at its next poll (within [`POLL_INTERVAL`]).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits until the sink ends by itself (duration or stop flag) and returns its report.
    ///
    /// # Errors
    /// [`LoadgenError::Io`] if the socket failed, [`LoadgenError::Thread`] if the thread
    /// panicked. An `.hlog` that failed is not an error here: the report's `hlog_error`
    /// says why.
    pub fn join(self) -> Result<SinkReport, LoadgenError> {
        self.thread
            .join()
            .map_err(|_| LoadgenError::Thread("sink"))??;
        let state = std::mem::replace(&mut *lock(&self.shared), State::new(0));
        Ok(state.into_report())
    }

    /// Stops the sink now and returns its report (as [`join`](Self::join)).
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn finish(self) -> Result<SinkReport, LoadgenError> {
        self.stop();
        self.join()
    }
}

/// The lock is only poisoned if the sink thread panicked while holding it; the counts are
/// still the best there is.
fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An auto-resizing histogram (memory follows the largest latency seen) with `digits`
/// significant digits: 3 per priority, 2 (1 %) per stream, which there may be thousands of.
fn new_hist(digits: u8) -> Histogram<u64> {
    let mut h = Histogram::new(digits).expect("2 and 3 significant digits are in range 0..=5");
    h.auto(true);
    h
}

/// Records `ns`, growing the histogram as needed (`saturating_record` would clamp to its
/// current top instead of growing it).
fn record(hist: &mut Histogram<u64>, ns: u64) {
    if hist.record(ns).is_err() {
        hist.saturating_record(ns);
    }
}

struct Worker {
    socket: UdpSocket,
    config: SinkConfig,
    clock: Clock,
    shared: Arc<Mutex<State>>,
    hlog: Option<HlogWriter>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(&mut self) -> Result<(), LoadgenError> {
        let end_ns = u64::try_from(self.config.duration.as_nanos()).unwrap_or(u64::MAX);
        let interval_ns = u64::try_from(self.config.interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut interval_start = 0;
        let mut buf = vec![0u8; 65_536];
        let result = loop {
            let now = self.clock.elapsed_ns();
            if now >= interval_start + interval_ns {
                self.close_interval(interval_start, now);
                interval_start = now;
            }
            if now >= end_ns || self.stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let recv_ns = self.clock.wall_ns();
                    lock(&self.shared).record(&buf[..n], recv_ns);
                }
                Err(e) if is_timeout(&e) => {}
                // ICMP errors reported on the socket (e.g. a refused earlier send): not
                // the sink's concern.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => break Err(LoadgenError::io("receive on", self.config.bind, e)),
            }
        };
        let now = self.clock.elapsed_ns();
        self.close_interval(interval_start, now);
        let mut state = lock(&self.shared);
        state.elapsed_ns = now.min(end_ns);
        if let Some(Err(e)) = self.hlog.take().map(HlogWriter::finish) {
            state.hlog_error.get_or_insert_with(|| e.to_string());
        }
        result
    }

    /// Ends the latency interval `[start, now)`: writes it to the `.hlog`, keeps its
    /// summary for snapshots, resets it. A failed write ends the `.hlog` (the report
    /// says why) but not the sink: the counts go on.
    fn close_interval(&mut self, start: u64, now: u64) {
        let mut state = lock(&self.shared);
        for p in 0..8u8 {
            let hist = &mut state.interval[usize::from(p)];
            let summary = (!hist.is_empty()).then(|| LatencySummary::of(hist));
            if let (Some(w), Some(_)) = (self.hlog.as_mut(), &summary) {
                let (offset, length) = (
                    Duration::from_nanos(start),
                    Duration::from_nanos(now - start),
                );
                if let Err(e) = w.write_interval_at(&latency_tag(p), offset, length, hist) {
                    state.hlog_error = Some(e.to_string());
                    self.hlog = None;
                }
            }
            let hist = &mut state.interval[usize::from(p)];
            hist.reset();
            state.last_interval[usize::from(p)] = summary;
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Which sequence numbers below the highest have been seen: a ring of [`SEQ_WINDOW`]
/// bits indexed by `seq % SEQ_WINDOW`, holding `highest - SEQ_WINDOW + 1 ..= highest`.
struct SeqWindow {
    bits: Vec<u64>,
    highest: Option<u64>,
}

/// What a sequence number was, relative to the ones before it.
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    InOrder,
    Reordered,
    Duplicate,
}

impl SeqWindow {
    fn new() -> Self {
        Self {
            bits: vec![0; (SEQ_WINDOW / 64) as usize],
            highest: None,
        }
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % SEQ_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Clears ring positions `from..to` (`from <= to <= SEQ_WINDOW`).
    fn clear(&mut self, from: u64, to: u64) {
        let mut i = from;
        while i < to {
            let (word, offset) = ((i / 64) as usize, i % 64);
            let n = (64 - offset).min(to - i);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << offset
            };
            self.bits[word] &= !mask;
            i += n;
        }
    }

    fn set(&mut self, seq: u64) {
        let (w, b) = Self::slot(seq);
        self.bits[w] |= b;
    }

    fn observe(&mut self, seq: u64) -> Arrival {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.set(seq);
            return Arrival::InOrder;
        };
        if seq > highest {
            if seq - highest >= SEQ_WINDOW {
                self.bits.fill(0);
            } else {
                // The skipped numbers, a word at a time: bit by bit, a sender choosing
                // gaps of 65,535 cost the sink 65,535 steps a datagram (it received 41%
                // of 40,000 a second, the rest lost in the kernel, uncounted).
                let start = (highest + 1) % SEQ_WINDOW;
                let end = start + (seq - highest - 1);
                if end <= SEQ_WINDOW {
                    self.clear(start, end);
                } else {
                    self.clear(start, SEQ_WINDOW);
                    self.clear(0, end - SEQ_WINDOW);
                }
            }
            self.highest = Some(seq);
            self.set(seq);
            return Arrival::InOrder;
        }
        if highest - seq >= SEQ_WINDOW {
            return Arrival::Reordered;
        }
        let (w, b) = Self::slot(seq);
        if self.bits[w] & b != 0 {
            return Arrival::Duplicate;
        }
        self.bits[w] |= b;
        Arrival::Reordered
    }
}

struct StreamRx {
    priority: u8,
    packets: u64,
    bytes: u64,
    duplicates: u64,
    reordered: u64,
    first_recv_ns: u64,
    last_recv_ns: u64,
    window: SeqWindow,
    latency: Histogram<u64>,
}

struct State {
    start_ns: u64,
    elapsed_ns: u64,
    streams: HashMap<u64, StreamRx>,
    per_priority: Vec<Histogram<u64>>,
    prio_counts: [(u64, u64); 8],
    interval: Vec<Histogram<u64>>,
    last_interval: [Option<LatencySummary>; 8],
    malformed: BTreeMap<String, u64>,
    negative_latency: u64,
    hlog_error: Option<String>,
}

impl State {
    fn new(start_ns: u64) -> Self {
        Self {
            start_ns,
            elapsed_ns: 0,
            streams: HashMap::new(),
            per_priority: (0..8).map(|_| new_hist(3)).collect(),
            prio_counts: [(0, 0); 8],
            interval: (0..8).map(|_| new_hist(3)).collect(),
            last_interval: Default::default(),
            malformed: BTreeMap::new(),
            negative_latency: 0,
            hlog_error: None,
        }
    }

    fn record(&mut self, datagram: &[u8], recv_ns: u64) {
        let header = match Header::parse(datagram) {
            Ok(h) => h,
            Err(e) => {
                *self.malformed.entry(e.reason().to_owned()).or_default() += 1;
                return;
            }
        };
        if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&header.stream_id) {
            *self.malformed.entry(STREAM_LIMIT.to_owned()).or_default() += 1;
            return;
        }
        let rx = self
            .streams
            .entry(header.stream_id)
            .or_insert_with(|| StreamRx {
                priority: header.priority,
                packets: 0,
                bytes: 0,
                duplicates: 0,
                reordered: 0,
                first_recv_ns: recv_ns,
                last_recv_ns: recv_ns,
                window: SeqWindow::new(),
                latency: new_hist(2),
            });
        match rx.window.observe(header.seq) {
            Arrival::Duplicate => {
                rx.duplicates += 1;
                return;
            }
            Arrival::Reordered => rx.reordered += 1,
            Arrival::InOrder => {}
        }
        let len = datagram.len() as u64;
        rx.packets += 1;
        rx.bytes += len;
        rx.last_recv_ns = recv_ns;
        let latency = recv_ns.checked_sub(header.send_ns).unwrap_or_else(|| {
            self.negative_latency += 1;
            0
        });
        record(&mut rx.latency, latency);
        let p = usize::from(header.priority);
        record(&mut self.per_priority[p], latency);
        record(&mut self.interval[p], latency);
        self.prio_counts[p].0 += 1;
        self.prio_counts[p].1 += len;
    }

    fn snapshot(&self, elapsed_ns: u64) -> SinkSnapshot {
        let mut streams: Vec<StreamSnapshot> = self
            .streams
            .iter()
            .map(|(&id, rx)| StreamSnapshot {
                id,
                priority: rx.priority,
                packets: rx.packets,
                bytes: rx.bytes,
            })
            .collect();
        streams.sort_by_key(|s| s.id);
        let priorities = (0..8u8)
            .filter(|&p| self.prio_counts[usize::from(p)].0 > 0)
            .map(|p| {
                let i = usize::from(p);
                PrioritySnapshot {
                    priority: p,
                    packets: self.prio_counts[i].0,
                    bytes: self.prio_counts[i].1,
                    cumulative: LatencySummary::of(&self.per_priority[i]),
                    last_interval: self.last_interval[i].clone(),
                }
            })
            .collect();
        SinkSnapshot {
            elapsed_ns,
            streams,
            priorities,
            malformed: self.malformed.values().sum(),
        }
    }

    fn into_report(self) -> SinkReport {
        let mut streams: Vec<StreamReceived> = self
            .streams
            .into_iter()
            .map(|(id, rx)| StreamReceived {
                id,
                priority: rx.priority,
                packets: rx.packets,
                bytes: rx.bytes,
                highest_seq: rx.window.highest.unwrap_or(0),
                duplicates: rx.duplicates,
                reordered: rx.reordered,
                first_recv_ns: rx.first_recv_ns,
                last_recv_ns: rx.last_recv_ns,
                latency: rx.latency,
            })
            .collect();
        streams.sort_by_key(|s| s.id);
        SinkReport {
            start_ns: self.start_ns,
            elapsed_ns: self.elapsed_ns,
            streams,
            per_priority: self.per_priority,
            malformed: self.malformed,
            negative_latency: self.negative_latency,
            hlog_error: self.hlog_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_window_tells_duplicates_from_reordering() {
        let mut w = SeqWindow::new();
        let got: Vec<Arrival> = [0, 1, 1, 3, 2, 2, 0]
            .iter()
            .map(|&s| w.observe(s))
            .collect();
        use Arrival::*;
        assert_eq!(
            got,
            [
                InOrder, InOrder, Duplicate, InOrder, Reordered, Duplicate, Duplicate
            ]
        );
    }

    #[test]
    fn seq_window_forgets_beyond_its_bound_and_survives_jumps() {
        let mut w = SeqWindow::new();
        assert_eq!(w.observe(5), Arrival::InOrder);
        assert_eq!(w.observe(5 + SEQ_WINDOW), Arrival::InOrder);
        // 5 is now SEQ_WINDOW behind: unknown, counted as reordered (not duplicate).
        assert_eq!(w.observe(5), Arrival::Reordered);
        assert_eq!(w.observe(u64::MAX), Arrival::InOrder);
        assert_eq!(w.observe(u64::MAX), Arrival::Duplicate);
        assert_eq!(w.observe(u64::MAX - 1), Arrival::Reordered);
        // A slot reused by the ring after the highest moved on is clear again.
        let mut w = SeqWindow::new();
        w.observe(1);
        w.observe(SEQ_WINDOW + 2);
        assert_eq!(w.observe(SEQ_WINDOW + 1), Arrival::Reordered);
    }

    /// The word-at-a-time clearing of skipped numbers against the bit-by-bit one it
    /// replaced, on pseudo-random gaps (across the ring's end, up to the window and
    /// beyond), reorderings and duplicates: the same arrivals.
    #[test]
    fn seq_window_word_clearing_matches_clearing_bit_by_bit() {
        struct Plain(SeqWindow);
        impl Plain {
            fn observe(&mut self, seq: u64) -> Arrival {
                let w = &mut self.0;
                match w.highest {
                    Some(h) if seq > h && seq - h < SEQ_WINDOW => {
                        for s in h + 1..seq {
                            let (i, b) = SeqWindow::slot(s);
                            w.bits[i] &= !b;
                        }
                        w.highest = Some(seq);
                        w.set(seq);
                        Arrival::InOrder
                    }
                    _ => w.observe(seq),
                }
            }
        }
        let (mut fast, mut plain) = (SeqWindow::new(), Plain(SeqWindow::new()));
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut seq = SEQ_WINDOW - 70;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let next = match x % 10 {
                0..=3 => seq + 1,
                4 => seq + 1 + x % 64,
                5 => seq + 1 + (x >> 8) % SEQ_WINDOW,
                6 => seq.saturating_sub(x % 200),
                7 => seq.saturating_sub((x >> 8) % (2 * SEQ_WINDOW)),
                8 => seq,
                _ => seq + 60 + x % 10,
            };
            assert_eq!(
                fast.observe(next),
                plain.observe(next),
                "step {step} seq {next}"
            );
            assert!(fast.bits == plain.0.bits, "step {step} seq {next}");
            seq = seq.max(next);
        }
        // A gap across the ring's end clears the slots it wraps onto, the first and
        // the last of a word included.
        let mut w = SeqWindow::new();
        let base = 3 * SEQ_WINDOW;
        for s in [base - 64, base - 1, base, base + 63, base + 64, base + 100] {
            assert_eq!(w.observe(s), Arrival::InOrder);
        }
        // Skips base + 101 ..= base + SEQ_WINDOW + 98: every slot but 99 and 100.
        assert_eq!(w.observe(base + SEQ_WINDOW + 99), Arrival::InOrder);
        for s in [base - 64, base - 1, base, base + 63, base + 64] {
            assert_eq!(w.observe(s + SEQ_WINDOW), Arrival::Reordered, "{s}");
        }
    }
}
