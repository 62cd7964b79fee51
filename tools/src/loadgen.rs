//! `qos-loadgen`: a UDP load generator and sink for testing the gateway.
//!
//! * [`scenario`]: what to send ([`Scenario`] from TOML or `--stream` flags, validated
//!   into a [`Plan`]);
//! * [`sender`]: one thread pacing every stream by its next deadline;
//! * [`sink`]: receives, counts per stream (loss, reordering, duplicates, one-way latency)
//!   and offers live [`SinkSnapshot`]s;
//! * [`report`]: the per-stream table and JSON;
//! * [`cli`]: the `qos-loadgen` command line (the binary only parses and calls it).
//!
//! Every datagram starts with the [`header`](crate::header) that `qosd` classifies on.
//!
//! Sending straight into a sink in the same process:
//!
//! ```
//! use std::sync::{Arc, atomic::AtomicBool};
//! use qos_tools::loadgen::{self, Scenario, SinkConfig};
//!
//! let scenario = Scenario::from_toml("example", r#"
//!     duration_ms = 200
//!     [[streams]]
//!     id = 1
//!     priority = 7
//!     size = 200
//!     rate = "100pps"
//! "#)?;
//! let plan = scenario.validate()?;
//! let sink = SinkConfig::new("127.0.0.1:0".parse()?, plan.duration);
//! let options = loadgen::RunOptions::new(sink);
//! let outcome = loadgen::run(&plan, options, Arc::new(AtomicBool::new(false)))?;
//! assert_eq!(outcome.report.streams[0].sent, Some(outcome.report.streams[0].received));
//! println!("{}", outcome.report.table());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub mod cli;
pub mod clock;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod sender;
pub mod sink;

pub use report::{LatencySummary, LossBasis, Report, StreamRow};
pub use scenario::{Pacing, Pattern, Plan, Scenario, ScenarioError, StreamPlan, StreamSpec};
pub use sender::{SendReport, Sender, SenderHandle, StreamSent};
pub use sink::{Sink, SinkConfig, SinkHandle, SinkReport, SinkSnapshot};

use progress::Progress;

/// What can go wrong running the load generator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadgenError {
    /// The scenario or a `--stream` flag is not valid.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A socket or thread operation failed.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done, with the address (`bind 127.0.0.1:9000`).
        action: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The `.hlog` could not be created.
    #[error(transparent)]
    Hlog(#[from] qos_control::hlog::HlogError),
    /// The `.hlog` failed during the run: it holds whole lines, the intervals before the
    /// failure (the failing one perhaps in part); the report (printed) is whole.
    #[error("the .hlog is incomplete: {0}")]
    HlogIncomplete(String),
    /// A report file could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A worker thread panicked (a bug).
    #[error("the {0} thread panicked")]
    Thread(&'static str),
}

impl LoadgenError {
    fn io(action: &str, addr: SocketAddr, source: std::io::Error) -> Self {
        Self::Io {
            action: format!("{action} {addr}"),
            source,
        }
    }

    fn spawn(what: &str, source: std::io::Error) -> Self {
        Self::Io {
            action: format!("spawn the {what} thread"),
            source,
        }
    }

    /// 2 for bad input (the scenario, a flag), 1 for a failure while running.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Scenario(_) => 2,
            _ => 1,
        }
    }
}

/// How to run sender and sink together.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The sink; its `duration` is replaced by the plan's plus [`drain`](Self::drain).
    pub sink: SinkConfig,
    /// Where to send (a gateway that forwards to the sink). `None`: the plan's target,
    /// else straight to the sink.
    pub target: Option<SocketAddr>,
    /// How long the sink keeps receiving after the sender ends (datagrams still queued in
    /// a gateway).
    pub drain: Duration,
    /// Show a progress bar (if the run is longer than 3 s and stderr is a terminal).
    pub progress: bool,
}

impl RunOptions {
    /// Defaults: target from the plan or the sink itself, 200 ms drain, no progress bar.
    pub fn new(sink: SinkConfig) -> Self {
        Self {
            sink,
            target: None,
            drain: Duration::from_millis(200),
            progress: false,
        }
    }
}

/// The result of [`run`].
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// Per-stream report (loss from the sender's counts).
    pub report: Report,
    /// The sender's own counts.
    pub sent: SendReport,
    /// The sink's raw counts and histograms.
    pub received: SinkReport,
}

/// How often the progress display and the drain wait look at the clock.
const TICK: Duration = Duration::from_millis(100);

/// Sends `plan` and receives it in this process: binds the sink, starts it, starts the
/// sender towards `options.target` (or the plan's, or the sink's own address), waits for
/// the sender, lets the sink drain, and builds the report. `stop` ends both early.
///
/// # Errors
/// A plan of more streams than the sink tracks ([`sink::MAX_STREAMS`]: their datagrams
/// would arrive and be counted as lost), binding, spawning, or creating the `.hlog`
/// ([`LoadgenError`]). An `.hlog` that fails later does not fail the run: the report's
/// `hlog_error` says why.
pub fn run(
    plan: &Plan,
    options: RunOptions,
    stop: Arc<AtomicBool>,
) -> Result<RunOutcome, LoadgenError> {
    if plan.streams.len() > sink::MAX_STREAMS {
        return Err(ScenarioError::Invalid {
            field: "streams".into(),
            value: format!("{} streams", plan.streams.len()),
            expected: format!(
                "at most {} streams in `run` (the most its sink tracks; use `send` and several sinks for more)",
                sink::MAX_STREAMS
            ),
        }
        .into());
    }
    let mut sink_config = options.sink;
    sink_config.duration = plan.duration + options.drain;
    let sink = Sink::bind(sink_config)?;
    let target = match options.target.or(plan.target) {
        Some(t) => t,
        None => sink.local_addr()?,
    };
    let sender = Sender::new(plan.clone(), target)?;
    let sink = sink.spawn(Arc::clone(&stop))?;
    let sender = match sender.spawn(Arc::clone(&stop)) {
        Ok(s) => s,
        Err(e) => {
            let _ = sink.finish();
            return Err(e);
        }
    };
    let mut progress = Progress::new(plan.duration, options.progress, "received");
    while !sender.is_finished() {
        std::thread::sleep(TICK);
        let snap = sink.snapshot();
        progress.update(snap.elapsed_ns, snap.total_bytes());
    }
    progress.finish();
    let sent = sender.join()?;
    wait(options.drain, &stop);
    let received = sink.finish()?;
    Ok(RunOutcome {
        report: Report::new(&received, Some(&sent)),
        sent,
        received,
    })
}

/// Sends `plan` to `target` on a new thread and waits for it (the plan's duration, or
/// `stop`), with a progress bar if `progress` (see [`RunOptions::progress`]).
///
/// # Errors
/// Binding or connecting the socket, spawning the thread.
pub fn send(
    plan: &Plan,
    target: SocketAddr,
    progress: bool,
    stop: Arc<AtomicBool>,
) -> Result<SendReport, LoadgenError> {
    let sender = Sender::new(plan.clone(), target)?.spawn(stop)?;
    let clock = clock::Clock::start();
    let mut bar = Progress::new(plan.duration, progress, "sent");
    while !sender.is_finished() {
        std::thread::sleep(TICK);
        bar.update(clock.elapsed_ns(), sender.live().bytes());
    }
    bar.finish();
    sender.join()
}

/// Receives on `config.bind` until `config.duration` or `stop`, with a progress bar if
/// `progress`, and reports (loss from sequence numbers: the sender is elsewhere).
///
/// # Errors
/// Binding, spawning, or creating the `.hlog` (a later failure is in the report's
/// `hlog_error`).
pub fn receive(
    config: SinkConfig,
    progress: bool,
    stop: Arc<AtomicBool>,
) -> Result<(Report, SinkReport), LoadgenError> {
    let duration = config.duration;
    let sink = Sink::bind(config)?.spawn(stop)?;
    let mut bar = Progress::new(duration, progress, "received");
    while !sink.is_finished() {
        std::thread::sleep(TICK);
        let snap = sink.snapshot();
        bar.update(snap.elapsed_ns, snap.total_bytes());
    }
    bar.finish();
    let received = sink.join()?;
    Ok((Report::new(&received, None), received))
}

/// Sleeps `total`, in [`TICK`]s, returning early once `stop` is set.
fn wait(total: Duration, stop: &AtomicBool) {
    let mut left = total;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let step = left.min(TICK);
        std::thread::sleep(step);
        left -= step;
    }
}
