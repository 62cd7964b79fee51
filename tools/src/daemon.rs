//! The `qosd` command: run the gateway on a config file or the embedded default
//! until SIGTERM (or SIGINT), reloading the file on SIGHUP; `qosd demo` runs the
//! one-command demonstration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{DEFAULT_TOML, GatewayConfig};
use crate::gateway::Gateway;

/// qosd: a UDP QoS gateway (weighted fair queueing in three tiers, per-stream
/// fairness, queue-delay control) with a control API, Prometheus metrics, audit log,
/// metrics.db and HDR histogram dumps.
#[derive(Debug, Parser)]
#[command(name = "qosd", version)]
pub struct QosdArgs {
    /// Configuration file (TOML); without it, the embedded default
    /// (`qosd --print-default-config` shows it).
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// What to run (default: the gateway).
    #[command(subcommand)]
    pub command: Option<QosdCommand>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum QosdCommand {
    /// The demo: qosd on its embedded default plus a load-generator scenario on
    /// loopback for about 15 s; live tier shares and P7 latency; a summary table, a
    /// `.hlog` and an SVG plot at the end.
    Demo(crate::demo::DemoArgs),
}

/// Runs `qosd` with parsed arguments.
pub fn run(args: QosdArgs) -> ExitCode {
    if args.print_default_config {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    if let Some(QosdCommand::Demo(demo)) = &args.command {
        // The demo's own output is the show: qosd's JSON logs stay quiet unless asked.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = qos_control::logs::init_json(std::io::stderr);
        }
        return match crate::demo::run(demo, args.config.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("qosd demo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let _ = qos_control::logs::init_json(std::io::stderr);
    let config = match &args.config {
        Some(path) => GatewayConfig::load(path).map(|(c, _)| c),
        None => GatewayConfig::embedded(),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qosd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!(
            "config OK: {} listen address(es), {} workers, {} rule(s), {} upstream(s), policy version {}",
            config.gateway.listen.len(),
            config.gateway.workers,
            config.rules.len(),
            config.upstreams.len(),
            config.policy.version()
        );
        return ExitCode::SUCCESS;
    }
    match serve(config, args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qosd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the gateway until SIGTERM / SIGINT; SIGHUP reloads `path`. On stop, prints the
/// drain report (JSON, one line) on stdout.
pub fn serve(
    config: GatewayConfig,
    path: Option<PathBuf>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Register before starting, so a signal sent as soon as we are up is not lost.
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let gateway = Gateway::start(config)?;
    eprintln!(
        "qosd: listening on {:?}, control API on http://{}",
        gateway.listen_addrs(),
        gateway.api_addr()
    );
    for sig in signals.forever() {
        match sig {
            SIGHUP => match &path {
                Some(p) => match gateway.reload(p) {
                    Ok(v) => eprintln!("qosd: reloaded {} (policy version {v})", p.display()),
                    Err(e) => eprintln!("qosd: reload of {} refused: {e}", p.display()),
                },
                None => eprintln!(
                    "qosd: SIGHUP ignored: running the embedded default, no file to reload"
                ),
            },
            _ => break,
        }
    }
    let report = gateway.stop()?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!(
        "qosd: stopped: {} received, {} forwarded, {} dropped {:?}; conserved: {}",
        report.received,
        report.forwarded,
        report.dropped.values().sum::<u64>(),
        report.dropped,
        report.conserved && report.dataplane_conserved
    );
    Ok(())
}
