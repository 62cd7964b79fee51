//! The sender: one thread pacing every stream of a [`Plan`] by its next send time.
//!
//! The streams' next deadlines (ns from the start) sit in a min-heap. The loop takes the
//! earliest: with [`Pacing::Yield`] (the default), more than [`SLEEP_THRESHOLD_NS`] away
//! it sleeps (at most [`MAX_SLEEP`], so the stop flag is seen promptly) and closer it
//! yields; with [`Pacing::Sleep`] it always sleeps. Due, it reads the clock once: if
//! the stream is active at that instant it sends one datagram (header with the stream's
//! next sequence number and that instant as the send time, then zero payload) and
//! schedules the next deadline (previous deadline plus the constant or exponential gap,
//! moved to the next active instant if it falls outside the stream's envelope); if not
//! (the sender ran late past the end of a window), it sends nothing and moves to the next
//! active instant. So every send timestamp lies inside an active window, and a sender
//! that fell behind catches up by sending back-to-back within the window.
//!
//! Each iteration sends at most one datagram. Send errors (`ENOBUFS`, `ECONNREFUSED`
//! when nothing listens on loopback, ...) are counted per stream by kind and never end
//! the run; the run ends at the plan's duration or when the stop flag is set.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Exp};
use serde::{Deserialize, Serialize};

use super::LoadgenError;
use super::clock::Clock;
use super::scenario::{Pacing, Pattern, Plan, StreamPlan};
use crate::header::Header;

/// A deadline further away than this is slept for; a nearer one is yielded for.
pub const SLEEP_THRESHOLD_NS: u64 = 200_000;
/// Longest single sleep, so that the stop flag is checked at least this often.
pub const MAX_SLEEP: Duration = Duration::from_millis(20);

/// What one stream sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSent {
    /// Stream id.
    pub id: u64,
    /// Priority.
    pub priority: u8,
    /// Datagrams handed to the socket (sequence numbers `0..packets`).
    pub packets: u64,
    /// Their bytes (UDP payload).
    pub bytes: u64,
    /// Active time of the stream in the plan, ns (for its offered throughput).
    pub active_ns: u64,
    /// Datagrams the socket refused, by error kind (`ConnectionRefused`, ...). A refused
    /// datagram still used its sequence number, so the sink counts it as lost.
    pub errors: BTreeMap<String, u64>,
}

impl StreamSent {
    /// Total refused datagrams.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// What the sender did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendReport {
    /// Wall-clock start, ns since the Unix epoch (send offsets are relative to it).
    pub start_ns: u64,
    /// How long it ran, ns.
    pub elapsed_ns: u64,
    /// `true` when the stop flag ended it before the duration.
    pub stopped_early: bool,
    /// Per stream, in plan order.
    pub streams: Vec<StreamSent>,
}

/// Live totals, readable while the sender runs.
#[derive(Debug, Default)]
pub struct LiveSent {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl LiveSent {
    /// Datagrams sent so far (all streams).
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    /// Bytes sent so far (all streams).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// A sender bound and connected to its target, not yet started.
#[derive(Debug)]
pub struct Sender {
    socket: UdpSocket,
    plan: Plan,
    live: Arc<LiveSent>,
}

/// A running sender thread.
#[derive(Debug)]
pub struct SenderHandle {
    thread: JoinHandle<SendReport>,
    live: Arc<LiveSent>,
}

impl SenderHandle {
    /// Live totals.
    pub fn live(&self) -> &LiveSent {
        &self.live
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the end of the run (its duration, or the stop flag).
    ///
    /// # Errors
    /// [`LoadgenError::Thread`] if the thread panicked.
    pub fn join(self) -> Result<SendReport, LoadgenError> {
        self.thread
            .join()
            .map_err(|_| LoadgenError::Thread("sender"))
    }
}

impl Sender {
    /// Binds an ephemeral UDP socket of `target`'s family and connects it to `target`.
    ///
    /// # Errors
    /// [`LoadgenError::Io`] when the socket cannot be bound or connected.
    pub fn new(plan: Plan, target: SocketAddr) -> Result<Self, LoadgenError> {
        let bind: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).map_err(|e| LoadgenError::io("bind", bind, e))?;
        socket
            .connect(target)
            .map_err(|e| LoadgenError::io("connect to", target, e))?;
        Ok(Self {
            socket,
            plan,
            live: Arc::default(),
        })
    }

    /// Live totals (the same as the handle's once spawned).
    pub fn live(&self) -> Arc<LiveSent> {
        Arc::clone(&self.live)
    }

    /// Runs the plan on a new thread.
    ///
    /// # Errors
    /// [`LoadgenError::Io`] if the thread cannot be spawned.
    pub fn spawn(self, stop: Arc<AtomicBool>) -> Result<SenderHandle, LoadgenError> {
        let live = Arc::clone(&self.live);
        let thread = std::thread::Builder::new()
            .name("loadgen-send".into())
            .spawn(move || self.run(&stop))
            .map_err(|e| LoadgenError::spawn("sender", e))?;
        Ok(SenderHandle { thread, live })
    }

    /// Runs the plan on this thread until its duration or until `stop` is set.
    pub fn run(self, stop: &AtomicBool) -> SendReport {
        let clock = Clock::start();
        let end_ns = u64::try_from(self.plan.duration.as_nanos()).unwrap_or(u64::MAX);
        let mut streams: Vec<StreamState<'_>> = self
            .plan
            .streams
            .iter()
            .map(|p| StreamState::new(p, self.plan.seed))
            .collect();
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.plan.next_active(0).map(|t| Reverse((t, i))))
            .collect();
        let max_size = streams.iter().map(|s| s.plan.size).max().unwrap_or(0);
        let mut buf = vec![0u8; max_size];
        let mut stopped_early = false;
        while let Some(&Reverse((deadline, i))) = heap.peek() {
            if stop.load(Ordering::Relaxed) {
                stopped_early = true;
                break;
            }
            let now = clock.elapsed_ns();
            if now >= end_ns || deadline >= end_ns {
                break;
            }
            if deadline > now {
                wait_until(deadline - now, self.plan.pacing);
                continue;
            }
            heap.pop();
            let stream = &mut streams[i];
            let next = if stream.plan.active_at(now) {
                stream.send(
                    &self.socket,
                    &mut buf,
                    clock.start_wall_ns() + now,
                    &self.live,
                );
                stream.next_deadline(deadline)
            } else {
                stream.plan.next_active(now)
            };
            if let Some(next) = next.filter(|&t| t < end_ns) {
                heap.push(Reverse((next, i)));
            }
        }
        SendReport {
            start_ns: clock.start_wall_ns(),
            elapsed_ns: clock.elapsed_ns().min(end_ns),
            stopped_early,
            streams: streams.into_iter().map(StreamState::into_sent).collect(),
        }
    }
}

fn wait_until(gap_ns: u64, pacing: Pacing) {
    match pacing {
        Pacing::Yield if gap_ns <= SLEEP_THRESHOLD_NS => std::thread::yield_now(),
        // Wake a little early: sleeps overshoot by tens of microseconds.
        Pacing::Yield => {
            std::thread::sleep(Duration::from_nanos(gap_ns - SLEEP_THRESHOLD_NS / 2).min(MAX_SLEEP))
        }
        Pacing::Sleep => std::thread::sleep(Duration::from_nanos(gap_ns).min(MAX_SLEEP)),
    }
}

struct StreamState<'p> {
    plan: &'p StreamPlan,
    seq: u64,
    bytes: u64,
    errors: BTreeMap<String, u64>,
    rng: SmallRng,
    gaps: Option<Exp<f64>>,
}

impl<'p> StreamState<'p> {
    fn new(plan: &'p StreamPlan, seed: u64) -> Self {
        let gaps = match plan.pattern {
            Pattern::Constant => None,
            // The rate is validated positive and finite, so the distribution exists.
            Pattern::Poisson => Exp::new(plan.pps).ok(),
        };
        Self {
            plan,
            seq: 0,
            bytes: 0,
            errors: BTreeMap::new(),
            rng: SmallRng::seed_from_u64(seed ^ plan.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            gaps,
        }
    }

    fn send(&mut self, socket: &UdpSocket, buf: &mut [u8], send_ns: u64, live: &LiveSent) {
        let size = self.plan.size;
        let header = Header::new(self.plan.id, self.plan.priority, self.seq, send_ns);
        buf[..crate::header::LEN].copy_from_slice(&header.encode());
        self.seq += 1;
        match socket.send(&buf[..size]) {
            Ok(n) => {
                self.bytes += n as u64;
                live.packets.fetch_add(1, Ordering::Relaxed);
                live.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => *self.errors.entry(format!("{:?}", e.kind())).or_default() += 1,
        }
    }

    /// The deadline after `prev`: one gap later, moved into the envelope.
    fn next_deadline(&mut self, prev: u64) -> Option<u64> {
        let gap_s = match &self.gaps {
            Some(exp) => exp.sample(&mut self.rng),
            None => 1.0 / self.plan.pps,
        };
        let gap_ns = (gap_s * 1e9).round().max(1.0);
        let next = prev.saturating_add(gap_ns as u64);
        self.plan.next_active(next)
    }

    fn into_sent(self) -> StreamSent {
        let errors: u64 = self.errors.values().sum();
        StreamSent {
            id: self.plan.id,
            priority: self.plan.priority,
            packets: self.seq - errors,
            bytes: self.bytes,
            active_ns: self.plan.active_ns(),
            errors: self.errors,
        }
    }
}
