//! `qos-ctl`: the operator CLI. Everything it does is `qos_tools::ctl`; see
//! `docs/CTL.md` for each subcommand with an example.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use qos_tools::ctl::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = run(
        cli,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}
