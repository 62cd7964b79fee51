//! The sender: one thread pacing every stream of a [`Plan`] by its next send time.
//!
//! A stream's deadlines are spaced in its *active* time (constant gaps of `1 / pps`, or
//! exponential ones for Poisson) and mapped to wall time with
//! [`StreamPlan::at_active`]: a gap that reaches past the end of an "on" phase or a
//! window continues in the next one. So a stream sends its rate times its active time,
//! and a Poisson stream stays a Poisson process of its rate inside its envelope.
//!
//! The streams' next deadlines (ns from the start) sit in a min-heap. The loop takes the
//! earliest: with [`Pacing::Yield`] (the default), more than [`SLEEP_THRESHOLD_NS`] away
//! it sleeps (at most [`MAX_SLEEP`], so the stop flag is seen promptly) and closer it
//! yields; with [`Pacing::Sleep`] it always sleeps. Due, it reads the clock once: if
//! the stream is active at that instant it sends one datagram (header with the stream's
//! next sequence number and that instant as the send time, then zero payload) and
//! schedules the next deadline; if not (the sender ran late past the end of an active
//! stretch), it sends nothing and the datagram due leaves at the next active instant.
//! So every send timestamp lies inside an active window, and a sender that fell behind
//! catches up by sending back-to-back while active.
//!
//! Each iteration sends at most one datagram. Send errors (`ENOBUFS`, `ECONNREFUSED`
//! when nothing listens on loopback, ...) are counted per stream by kind and never end
//! the run; the run lasts the plan's duration (also after the last stream ended) or
//! until the stop flag is set. At the end each stream reports what the plan asked of it
//! ([`StreamSent::planned`]), so a sender that could not keep up shows as a shortfall.

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
use super::scenario::{ActiveCursor, Pacing, Pattern, Plan, StreamPlan};
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
    /// Active time of the stream during the run, ns (for its offered throughput): the
    /// plan's, or the part before the stop when the run was stopped early.
    pub active_ns: u64,
    /// Datagrams the plan asked for in that active time: its deadlines (for a Poisson
    /// stream, the ones drawn with this seed). More than `packets` plus the refused ones
    /// when the sender could not keep up.
    #[serde(default)]
    pub planned: u64,
    /// Datagrams the socket refused, by error kind (`ConnectionRefused`, ...). A refused
    /// datagram still used its sequence number, so the sink counts it as lost.
    pub errors: BTreeMap<String, u64>,
}

impl StreamSent {
    /// Total refused datagrams.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Planned datagrams the sender never handed to the socket (it fell behind).
    pub fn missed(&self) -> u64 {
        self.planned
            .saturating_sub(self.packets + self.error_count())
    }
}

/// What the sender did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendReport {
    /// Wall-clock start, ns since the Unix epoch (send offsets are relative to it).
    pub start_ns: u64,
    /// How long it ran, ns: the plan's duration (the sender waits out the run after its
    /// streams end), or, stopped early, up to the last moment it saw no stop flag.
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

    /// Runs the plan on this thread until its duration or until `stop` is set. The run
    /// lasts the whole duration even when every stream has ended before it.
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
            .filter_map(|(i, s)| s.deadline.map(|t| Reverse((t, i))))
            .collect();
        let max_size = streams.iter().map(|s| s.plan.size).max().unwrap_or(0);
        let mut buf = vec![0u8; max_size];
        let mut stopped_early = false;
        // The sender's last clock reading inside the run. Deadlines after it were not
        // missed, just cut: by a stop, or by the end of the run while the sender slept
        // towards them (a sleep overshoots by tens of microseconds).
        let mut last_now = 0;
        loop {
            // The clock first: the flag still clear after it means `now` was in the run.
            let now = clock.elapsed_ns();
            if stop.load(Ordering::Relaxed) {
                stopped_early = true;
                break;
            }
            if now >= end_ns {
                break;
            }
            last_now = now;
            // Nothing left to send: wait out the run.
            let deadline = heap.peek().map_or(end_ns, |&Reverse((t, _))| t.min(end_ns));
            if deadline > now {
                wait_until(deadline - now, self.plan.pacing);
                continue;
            }
            let Some(Reverse((_, i))) = heap.pop() else {
                continue;
            };
            let stream = &mut streams[i];
            let next = if stream.plan.active_at(now) {
                stream.send(
                    &self.socket,
                    &mut buf,
                    clock.start_wall_ns() + now,
                    &self.live,
                );
                stream.advance()
            } else {
                // Late past the end of an active stretch: the datagram due keeps its
                // place and leaves at the next active instant.
                stream.plan.next_active(now)
            };
            if let Some(next) = next.filter(|&t| t < end_ns) {
                heap.push(Reverse((next, i)));
            }
        }
        let elapsed_ns = if stopped_early { last_now } else { end_ns };
        // Deadlines after the last reading were cut, not missed, but only within
        // `CUT_SLACK_NS` of the end: a sender starved for longer fell short, and says so.
        let on_time = if stopped_early {
            last_now
        } else {
            last_now.max(end_ns.saturating_sub(CUT_SLACK_NS))
        };
        // One budget of Poisson draws for the whole run (see `MAX_MISSED_DRAWS`).
        let mut draws = MAX_MISSED_DRAWS;
        SendReport {
            start_ns: clock.start_wall_ns(),
            elapsed_ns,
            stopped_early,
            streams: streams
                .into_iter()
                .map(|s| s.into_sent(elapsed_ns, on_time, &mut draws))
                .collect(),
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

/// How long before the end of a run a deadline may fall while the sender sleeps
/// towards it and still count as cut by the end rather than missed (a sleep overshoots
/// by tens of microseconds; a loaded machine wakes a thread milliseconds late).
const CUT_SLACK_NS: u64 = 10_000_000;

/// Most Poisson gaps drawn at the end of a run, all streams together, to count the
/// deadlines a sender that fell behind did not reach; past it each stream's rest is the
/// expected number (so the count takes at most a fraction of a second).
const MAX_MISSED_DRAWS: u64 = 10_000_000;

/// One stream's schedule. Its deadlines are spaced in *active* time (see
/// [`StreamPlan::at_active`]): a gap that reaches past the end of an "on" phase or a
/// window continues in the next one, so the count follows the rate times the active time.
struct StreamState<'p> {
    plan: &'p StreamPlan,
    seq: u64,
    bytes: u64,
    errors: BTreeMap<String, u64>,
    rng: SmallRng,
    gaps: Option<Exp<f64>>,
    /// Active time of the next datagram, ns (fractional: constant gaps are rarely whole
    /// ns, and rounding each one would drift).
    next_active: f64,
    /// Its wall deadline, ns from the start; `None` once past the stream's active time.
    deadline: Option<u64>,
    cursor: ActiveCursor,
}

impl<'p> StreamState<'p> {
    fn new(plan: &'p StreamPlan, seed: u64) -> Self {
        let gaps = match plan.pattern {
            Pattern::Constant => None,
            // The rate is validated positive and finite, so the distribution exists.
            Pattern::Poisson => Exp::new(plan.pps).ok(),
        };
        let mut state = Self {
            plan,
            seq: 0,
            bytes: 0,
            errors: BTreeMap::new(),
            rng: SmallRng::seed_from_u64(seed ^ plan.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            gaps,
            next_active: 0.0,
            deadline: None,
            cursor: ActiveCursor::default(),
        };
        // A constant stream sends at the start of its active time; a Poisson stream's
        // first arrival is one exponential gap in, as every later one.
        if state.gaps.is_some() {
            state.next_active = state.gap_ns();
        }
        state.deadline = state.wall_deadline();
        state
    }

    /// One gap, ns of active time.
    fn gap_ns(&mut self) -> f64 {
        match &self.gaps {
            Some(exp) => exp.sample(&mut self.rng) * 1e9,
            None => 1e9 / self.plan.pps,
        }
    }

    /// The `k`-th deadline of a constant stream, ns of active time (from `k`, not by
    /// adding gaps, so that no rounding accumulates).
    fn constant_at(&self, k: u64) -> f64 {
        k as f64 * 1e9 / self.plan.pps
    }

    fn wall_deadline(&mut self) -> Option<u64> {
        let active = self.next_active.ceil();
        if active >= u64::MAX as f64 {
            return None;
        }
        self.plan.at_active_from(active as u64, &mut self.cursor)
    }

    /// Moves to the next datagram after one was sent; its wall deadline.
    fn advance(&mut self) -> Option<u64> {
        self.next_active = match self.gaps {
            Some(_) => self.next_active + self.gap_ns(),
            None => self.constant_at(self.seq),
        };
        self.deadline = self.wall_deadline();
        self.deadline
    }

    /// Deadlines within the first `active` ns of active time not yet sent; Poisson gaps
    /// are drawn while `draws` lasts, then the rest is the expected number.
    fn unsent_before(&mut self, active: u64, draws: &mut u64) -> u64 {
        let active = active as f64;
        match self.gaps {
            None => {
                // The k with ceil(k / pps) < active, from an estimate corrected both ways.
                let mut n = (active * self.plan.pps / 1e9).ceil().max(0.0) as u64;
                while n > 0 && self.constant_at(n - 1).ceil() >= active {
                    n -= 1;
                }
                while self.constant_at(n).ceil() < active {
                    n += 1;
                }
                n.saturating_sub(self.seq)
            }
            Some(_) => {
                let mut n = 0;
                let mut at = self.next_active;
                while at.ceil() < active {
                    n += 1;
                    if *draws == 0 {
                        let rest = (active - at) * self.plan.pps / 1e9;
                        return n + rest.round() as u64;
                    }
                    *draws -= 1;
                    at += self.gap_ns();
                }
                n
            }
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

    /// The stream's counts for a run that ended at `cut` ns from the start, whose
    /// sender last read the clock in the run at `on_time`: the deadlines up to then are
    /// what was planned (later ones were cut, not missed).
    fn into_sent(mut self, cut: u64, on_time: u64, draws: &mut u64) -> StreamSent {
        let errors: u64 = self.errors.values().sum();
        let active_ns = self.plan.active_before(cut);
        let planned = self.seq + self.unsent_before(self.plan.active_before(on_time), draws);
        StreamSent {
            id: self.plan.id,
            priority: self.plan.priority,
            packets: self.seq - errors,
            bytes: self.bytes,
            active_ns,
            planned,
            errors: self.errors,
        }
    }
}
