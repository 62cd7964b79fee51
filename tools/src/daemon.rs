//! The `qosd` command: run the gateway on a config file or the embedded default
//! until SIGTERM (or SIGINT), reloading the file on SIGHUP; `qosd demo` runs the
//! one-command demonstration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

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

/// Runs the gateway until SIGTERM / SIGINT; SIGHUP and the control API's
/// `POST /reload` reload `path` (C4). On stop, prints the drain report (JSON, one line)
/// on stdout.
pub fn serve(
    config: GatewayConfig,
    path: Option<PathBuf>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Register before starting, so a signal sent as soon as we are up is not lost.
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    // Past a file-size limit (RLIMIT_FSIZE) a write raises SIGXFSZ, which by default
    // kills the process: with a handler the write fails with EFBIG instead, and the
    // audit log, `.hlog` and metrics.db count and report it (`audit.failed`, the
    // warnings of `/healthz`) while qosd goes on forwarding.
    signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )?;
    let gateway = Gateway::start(config)?;
    eprintln!(
        "qosd: listening on {:?}, control API on http://{}",
        gateway.listen_addrs(),
        gateway.api_addr()
    );
    // The API's reloads run here, one at a time beside SIGHUP's: the hook hands this
    // loop a reply channel and waits for the outcome.
    let (requests, reloads) = mpsc::channel::<mpsc::SyncSender<Result<u64, String>>>();
    if path.is_some()
        && let Some(plane) = gateway.plane()
    {
        plane.set_reload_hook(std::sync::Arc::new(move || {
            let (reply, outcome) = mpsc::sync_channel(1);
            requests
                .send(reply)
                .map_err(|_| "qosd is stopping".to_string())?;
            outcome.recv().map_err(|_| "qosd is stopping".to_string())?
        }));
    }
    let reload = |how: &str, source: &str| match &path {
        Some(p) => match gateway.reload_from(p, source) {
            Ok(v) => {
                eprintln!(
                    "qosd: reloaded {} on {how} (policy version {v})",
                    p.display()
                );
                Ok(v)
            }
            Err(e) => {
                eprintln!("qosd: reload of {} on {how} refused: {e}", p.display());
                Err(e.to_string())
            }
        },
        None => {
            eprintln!("qosd: {how} ignored: running the embedded default, no file to reload");
            Err("nothing to reload: running the embedded default".to_string())
        }
    };
    'serving: loop {
        for sig in signals.pending() {
            match sig {
                SIGHUP => {
                    let _ = reload("SIGHUP", "sighup");
                }
                _ => break 'serving,
            }
        }
        if let Ok(reply) = reloads.recv_timeout(Duration::from_millis(20)) {
            let _ = reply.send(reload("POST /reload", "http"));
        }
    }
    // No reload runs from here on: a request still waiting gets "qosd is stopping" now,
    // before the control plane's runtime is shut down (it waits for its handlers).
    drop(reloads);
    eprintln!(
        "qosd: stopping: draining the queues for up to {} ms (a second SIGTERM or SIGINT cuts it short)",
        gateway.drain_ms()
    );
    // The drain runs at the policy's pace for up to `drain_ms`; a second SIGTERM or
    // SIGINT cuts it short (what is left is dropped, counted), as operators expect of
    // a second Ctrl-C.
    let closer = signals.handle();
    let cut = gateway.drain_cut();
    let watcher = std::thread::Builder::new()
        .name("qosd-signals".into())
        .spawn(move || {
            let mut cut_made = false;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    eprintln!("qosd: SIGHUP ignored: stopping");
                    continue;
                }
                if cut_made {
                    // The stop itself is stuck (an upstream send, a full disk): the
                    // operator asked three times.
                    eprintln!("qosd: third signal: exiting now, without the drain report");
                    std::process::exit(130);
                }
                eprintln!(
                    "qosd: second signal: the drain is cut short, the rest is dropped \
                     (a third signal exits at once, without the drain report)"
                );
                if let Some(cut) = &cut {
                    cut.cut();
                }
                cut_made = true;
            }
        })?;
    let stopped = gateway.stop();
    closer.close();
    let _ = watcher.join();
    let report = stopped?;
    // Not `println!`, which panics when stdout cannot be written (a full disk, a
    // file-size limit): the error ends qosd with a message instead.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&report)?)
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing the drain report to stdout: {e}"))?;
    }
    eprintln!(
        "qosd: stopped{}: {} received, {} forwarded, {} dropped {:?}; conserved: {}",
        if report.drain_cut {
            " (drain cut short)"
        } else {
            ""
        },
        report.received,
        report.forwarded,
        report.dropped.values().sum::<u64>(),
        report.dropped,
        report.conserved && report.dataplane_conserved
    );
    Ok(())
}
