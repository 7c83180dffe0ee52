//! Muster's controller and its command line.
//!
//! `main` parses arguments and dispatches to a command; every command
//! returns an [`ExitCode`] or an [`Error`], which `main` prints and maps to
//! exit code 2 (usage or I/O error). Commands print their own results.

pub mod cli;
pub mod commands;
pub mod repo;
pub mod store;

use std::process::ExitCode;

use clap::Parser;

pub use cli::Cli;

/// Errors that stop a command before it has a result to report.
#[derive(Debug)]
pub enum Error {
    /// Reading or writing a file failed.
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The command was given something it cannot use.
    Usage(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Usage(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Usage(_) => None,
        }
    }
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Exit code for usage and I/O errors, as `git diff` and compilers use it.
pub const EXIT_ERROR: u8 = 2;

/// Runs the command line of this process.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        cli::Command::Validate(args) => commands::validate::run(&args),
        cli::Command::Schema(args) => commands::schema::run(&args),
    }
}
