//! `qos-loadgen`: UDP load generator and sink. Parses the command line and hands it to
//! [`qos_tools::loadgen::cli::main`]; see `docs/LOADGEN.md`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use qos_tools::loadgen::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qos-loadgen: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
