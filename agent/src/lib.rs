//! Muster's agent: enrolls with a controller, pulls signed bundles,
//! converges the host and reports.
//!
//! The agent links only `muster-schemas` and its own small set of crates:
//! never git2, sqlx or axum.

pub mod command;
pub mod resources;

use std::process::ExitCode;

use clap::Parser;

/// The Muster agent.
#[derive(Debug, Parser)]
#[command(name = "muster-agent", version, about, long_about = None)]
pub struct Cli {}

/// Runs the command line of this process.
pub fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("error: muster-agent has no commands in this version; it only reports --version");
    ExitCode::from(2)
}
