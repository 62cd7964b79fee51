//! `qosd`: the UDP QoS gateway (see `qos_tools::daemon`).
use clap::Parser;

fn main() -> std::process::ExitCode {
    qos_tools::daemon::run(qos_tools::daemon::QosdArgs::parse())
}
