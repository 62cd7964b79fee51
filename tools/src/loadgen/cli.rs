//! The `qos-loadgen` command line: `send`, `sink` and `run` (see `docs/LOADGEN.md`).
//! The binary parses [`Cli`] and calls [`main`]; everything else is here.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::report::{self, Report};
use super::scenario::{
    Pacing, Plan, Scenario, ScenarioError, StreamSpec, parse_duration, whole_ms,
};
use super::sink::SinkConfig;
use super::{LoadgenError, RunOptions};

/// UDP load generator and sink for the QoS gateway.
#[derive(Debug, Parser)]
#[command(name = "qos-loadgen", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send the streams to a target (a gateway, or a sink in another process).
    Send(SendArgs),
    /// Receive streams and report on them (loss from sequence numbers).
    Sink(SinkArgs),
    /// Send and receive in one process: to a gateway that forwards to `--sink`, or
    /// straight to the sink.
    Run(RunArgs),
}

/// What to send.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// A TOML scenario file (see docs/loadgen-scenario.toml).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// A stream, added after the file's:
    /// `id=1,prio=7,size=1000,rate=2mbps[,poisson][,on=100ms/off=200ms][,start=1s][,stop=5s][,active=0s-5s/10s-15s][,count=10]`.
    #[arg(long = "stream", value_name = "SPEC")]
    pub streams: Vec<StreamSpec>,
    /// Where to send (overrides the file's `target`).
    #[arg(long, value_name = "ADDR")]
    pub target: Option<SocketAddr>,
    /// Length of the run, e.g. `10s` (overrides the file's `duration_ms`).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Seed of the Poisson gaps (overrides the file's `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How the sender waits between datagrams (overrides the file's `pacing`): `yield`
    /// keeps sends within a few µs of their time; `sleep` leaves the CPU to a gateway
    /// sharing the machine, at the cost of small bursts.
    #[arg(long, value_enum)]
    pub pacing: Option<Pacing>,
}

/// Arguments of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The streams.
    #[command(flatten)]
    pub streams: StreamArgs,
    /// Also write the sender's counts as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Report outputs shared by `sink` and `run`.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write per-priority one-way latency intervals to this `.hlog`.
    #[arg(long, value_name = "PATH")]
    pub hlog: Option<PathBuf>,
    /// Length of an `.hlog` interval.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Arguments of `sink`.
#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Address to receive on.
    #[arg(long, alias = "listen", value_name = "ADDR")]
    pub sink: SocketAddr,
    /// How long to receive (Ctrl-C ends it earlier), e.g. `30s`.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
    /// Outputs.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The streams; `--target` is the gateway (default: straight to the sink).
    #[command(flatten)]
    pub streams: StreamArgs,
    /// Address the sink binds (where the gateway forwards).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub sink: SocketAddr,
    /// How long the sink keeps receiving after the sender ends.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    pub drain: Duration,
    /// Outputs.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs a parsed command line: prints the report table on stdout and writes the files
/// asked for. SIGINT and SIGTERM end the run early (the report still comes out).
///
/// # Errors
/// Bad input ([`LoadgenError::Scenario`]) or a failure while running; see
/// [`LoadgenError::exit_code`].
pub fn main(cli: Cli) -> Result<(), LoadgenError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Without the handler Ctrl-C still ends the process, just without a report.
        let _ = signal_hook::flag::register(signal, Arc::clone(&stop));
    }
    match cli.command {
        Command::Send(args) => {
            let plan = plan(&args.streams)?;
            let json = JsonOut::check(args.json.as_deref())?;
            let target = plan.target.ok_or_else(|| ScenarioError::Missing {
                field: "--target".into(),
                expected: "an address to send to (or `target` in the scenario file)".into(),
            })?;
            let sent = super::send(&plan, target, !args.quiet, stop)?;
            print!("{}", report::send_table(&sent));
            if let Some(out) = json {
                out.write(&serde_json::to_string_pretty(&sent).unwrap_or_default())?;
            }
            Ok(())
        }
        Command::Sink(args) => {
            if args.duration.is_zero() {
                return Err(ScenarioError::Invalid {
                    field: "--duration".into(),
                    value: "0".into(),
                    expected: "a run length > 0, such as 30s".into(),
                }
                .into());
            }
            let json = JsonOut::check(args.output.json.as_deref())?;
            let config = sink_config(args.sink, args.duration, &args.output);
            let (report, _) = super::receive(config, !args.output.quiet, stop)?;
            output(&report, json)
        }
        Command::Run(args) => {
            let plan = plan(&args.streams)?;
            let json = JsonOut::check(args.output.json.as_deref())?;
            let mut options = RunOptions::new(sink_config(args.sink, plan.duration, &args.output));
            options.drain = args.drain;
            options.progress = !args.output.quiet;
            let outcome = super::run(&plan, options, stop)?;
            output(&outcome.report, json)
        }
    }
}

fn sink_config(bind: SocketAddr, duration: Duration, output: &OutputArgs) -> SinkConfig {
    let mut config = SinkConfig::new(bind, duration);
    config.interval = output.interval.max(Duration::from_millis(1));
    config.hlog.clone_from(&output.hlog);
    config
}

/// Where the JSON report goes, checked before the run.
struct JsonOut {
    path: PathBuf,
    /// A FIFO is opened at the check and kept: opening it waits for a reader (for
    /// good, signals or not, if nobody reads), and a check that opened and closed it
    /// would end the reader's input before the report.
    fifo: Option<std::fs::File>,
}

impl JsonOut {
    /// Fails now, before the run, if `path` cannot be written (a file the run would
    /// create is removed again; a FIFO nobody reads is refused at once).
    fn check(path: Option<&Path>) -> Result<Option<Self>, LoadgenError> {
        let Some(path) = path else { return Ok(None) };
        let error = |source| LoadgenError::Write {
            path: path.to_path_buf(),
            source,
        };
        if qos_control::files::is_fifo(path) {
            let file = qos_control::files::create_write(path).map_err(error)?;
            return Ok(Some(Self {
                path: path.to_path_buf(),
                fifo: Some(file),
            }));
        }
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(error)?;
        if !existed {
            let _ = std::fs::remove_file(path);
        }
        Ok(Some(Self {
            path: path.to_path_buf(),
            fifo: None,
        }))
    }

    fn write(self, text: &str) -> Result<(), LoadgenError> {
        match self.fifo {
            Some(mut file) => {
                std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|source| {
                    LoadgenError::Write {
                        path: self.path,
                        source,
                    }
                })
            }
            None => report::write_file(&self.path, text),
        }
    }
}

/// Prints the table and writes the JSON; then a failed `.hlog` makes the command fail
/// (exit 1), after the report is out.
fn output(report: &Report, json: Option<JsonOut>) -> Result<(), LoadgenError> {
    print!("{}", report.table());
    if let Some(out) = json {
        out.write(&report.to_json())?;
    }
    match &report.hlog_error {
        Some(e) => Err(LoadgenError::HlogIncomplete(e.clone())),
        None => Ok(()),
    }
}

/// The plan of a command line: the scenario file (if any), then the `--stream` flags
/// appended, `--target`, `--duration` and `--seed` overriding the file.
///
/// # Errors
/// The file's errors, a missing `--duration` without a file, or any invalid field.
pub fn plan(args: &StreamArgs) -> Result<Plan, ScenarioError> {
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::from_file(path)?,
        None => {
            if args.duration.is_none() {
                return Err(ScenarioError::Missing {
                    field: "--duration".into(),
                    expected: "a run length such as 10s (or a --scenario file)".into(),
                });
            }
            Scenario {
                target: None,
                duration_ms: 0,
                seed: 0,
                pacing: Pacing::default(),
                streams: Vec::new(),
            }
        }
    };
    scenario.streams.extend(args.streams.iter().cloned());
    if let Some(target) = args.target {
        scenario.target = Some(target);
    }
    if let Some(d) = args.duration {
        scenario.duration_ms = whole_ms(d).ok_or_else(|| ScenarioError::Invalid {
            field: "--duration".into(),
            value: format!("{d:?}"),
            expected: "a whole number of ms".into(),
        })?;
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(pacing) = args.pacing {
        scenario.pacing = pacing;
    }
    scenario.validate()
}
