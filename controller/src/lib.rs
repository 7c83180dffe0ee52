//! Muster's controller and its command line.
//!
//! `main` parses arguments and dispatches to a command; every command
//! returns an [`ExitCode`] or an [`Error`], which `main` prints and maps to
//! exit code 2 (usage or I/O error). Commands print their own results.

pub mod actions;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod compile;
pub mod jobs;
pub mod plan;
pub mod rbac;
pub mod reconcile;
pub mod repo;
pub mod scheduler;
pub mod server;
pub mod signing;
pub mod source;
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
    /// The database failed.
    Store(store::StoreError),
    /// The fleet repo could not be reached or read.
    Source(source::SourceError),
    /// The signing key could not be loaded or created.
    Signing(String),
}

impl From<store::StoreError> for Error {
    fn from(err: store::StoreError) -> Self {
        Error::Store(err)
    }
}

impl From<source::SourceError> for Error {
    fn from(err: source::SourceError) -> Self {
        Error::Source(err)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Usage(message) | Error::Signing(message) => f.write_str(message),
            Error::Store(err) => write!(f, "{err}"),
            Error::Source(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Store(err) => Some(err),
            Error::Source(err) => Some(err),
            Error::Usage(_) | Error::Signing(_) => None,
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
        cli::Command::Plan(args) => commands::plan::run(&args),
        cli::Command::Schema(args) => commands::schema::run(&args),
        cli::Command::Init(args) => runtime()?.block_on(commands::serve::init(&args.data)),
        cli::Command::Serve(args) => runtime()?.block_on(commands::serve::run(*args)),
        cli::Command::Quickstart(args) => runtime()?.block_on(commands::quickstart::run(args)),
        cli::Command::Token { command } => runtime()?.block_on(commands::admin::token(command)),
        cli::Command::Hosts { command } => runtime()?.block_on(commands::admin::hosts(command)),
        cli::Command::Commits { command } => runtime()?.block_on(commands::admin::commits(command)),
        cli::Command::Schedules(args) => runtime()?.block_on(commands::schedules::schedules(args)),
        cli::Command::User { command } => runtime()?.block_on(commands::users::user(command)),
        cli::Command::Apitoken { command } => {
            runtime()?.block_on(commands::users::apitoken(command))
        }
        cli::Command::Login(args) => runtime()?.block_on(commands::users::login(args)),
        cli::Command::Logout => runtime()?.block_on(commands::users::logout()),
        cli::Command::Audit { command } => runtime()?.block_on(commands::audit::audit(command)),
        cli::Command::Run(args) => runtime()?.block_on(commands::actions::run(args)),
        cli::Command::Reboot { targets, wait, api } => {
            runtime()?.block_on(commands::actions::reboot(targets, wait, api))
        }
        cli::Command::Service(args) => runtime()?.block_on(commands::actions::service(args)),
        cli::Command::Jobs { command } => runtime()?.block_on(commands::actions::jobs(command)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::io("cannot start the async runtime", err))
}
