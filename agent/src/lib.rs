//! Muster's agent: enrolls with a controller, pulls signed bundles,
//! converges the host and reports; runs signed jobs once each.
//!
//! The agent links only `muster-schemas` and its own small set of crates:
//! never git2, sqlx or axum.

pub mod agent;
pub mod checks;
pub mod client;
pub mod command;
pub mod config;
pub mod error;
pub mod facts;
pub mod jobs;
pub mod local;
pub mod report;
pub mod resources;
pub mod state;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use muster_schemas::protocol::{EnrollRequest, HostState};
use serde_json::Value;

use crate::config::{AgentConfig, DEFAULT_CONFIG, read_public_key};
use crate::error::AgentError;
use crate::state::{DEFAULT_STATE_DIR, StateDir};

/// The Muster agent: pulls the host's signed bundle from the controller,
/// converges the host to it and reports.
#[derive(Debug, Parser)]
#[command(name = "muster-agent", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Enroll this host with a controller (the line `muster token create` prints).
    Enroll(EnrollArgs),
    /// Pull bundles, converge and report until stopped (SIGTERM, ctrl-c).
    Run(RunArgs),
    /// Print what a bundle file would change, changing nothing. Exit 0 in sync, 1 drift, 2 error.
    Check(CheckArgs),
    /// Verify a bundle file and converge the host to it. Exit 0 in sync, 1 drift left (audit), 2 error.
    ///
    /// The bundle is verified like the run loop does (signature with the key, trusted comment,
    /// a generation greater than the last one applied from the state dir, not expired), except
    /// that its host id is not compared with an enrolled one: the bundle's own host id is
    /// accepted, so that a bundle fetched for another host can be applied here on purpose.
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The controller's URL, e.g. https://muster.example.com:8443.
    #[arg(long)]
    pub server: String,
    /// The enrollment token.
    #[arg(long)]
    pub token: String,
    /// The controller's minisign public key (base64, or the path of its .pub file); it is pinned.
    #[arg(long)]
    pub pubkey: String,
    /// The host's name in the fleet [default: the hostname].
    #[arg(long)]
    pub name: Option<String>,
    /// A label the host reports about itself (`k=v`, repeatable). It is sent as the fact
    /// `labels`, for information: the labels that select policies come from the token and
    /// the repository, never from the host.
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Where to write the agent config.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The agent's state dir.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Enroll again even though a config exists (it is replaced).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent config written by `enroll`.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The agent's state dir (must lie outside --root).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Manage paths beneath DIR instead of the real host (a sandbox).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// One fetch, converge and report, then exit (0 when the controller answered).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The signed bundle: the JSON that GET /v1/hosts/ID/bundle returns.
    #[arg(long, value_name = "FILE")]
    pub bundle: PathBuf,
    /// Check paths beneath DIR instead of the real host.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Verify the signature with this minisign public key first (base64 or .pub file).
    #[arg(long, value_name = "KEY")]
    pub pubkey: Option<String>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The signed bundle: the JSON that GET /v1/hosts/ID/bundle returns.
    #[arg(long, value_name = "FILE")]
    pub bundle: PathBuf,
    /// The controller's minisign public key (base64, or the path of its .pub file).
    #[arg(long, value_name = "KEY")]
    pub pubkey: String,
    /// Manage paths beneath DIR instead of the real host.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Where the last applied generation is kept (replayed bundles are refused); must lie
    /// outside --root.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// Runs the command line of this process.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(local::EXIT_ERROR)
        }
    }
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, AgentError> {
    match cli.command {
        Commands::Enroll(args) => enroll(&args),
        Commands::Run(args) => {
            let reached = agent::run(agent::RunOptions {
                config: args.config,
                state_dir: args.state_dir,
                root: args.root,
                once: args.once,
            })?;
            Ok(if reached {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(local::EXIT_ERROR)
            })
        }
        Commands::Check(args) => {
            let root = local::absolute_root(args.root)?;
            local::check(&args.bundle, root.as_deref(), args.pubkey.as_deref())
        }
        Commands::Apply(args) => {
            let root = local::absolute_root(args.root)?;
            local::apply(&args.bundle, &args.pubkey, root.as_deref(), &args.state_dir)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `muster-agent enroll`.
fn enroll(args: &EnrollArgs) -> Result<ExitCode, AgentError> {
    if args.config.exists() && !args.force {
        return Err(AgentError::Config(format!(
            "this host is enrolled already ({} exists): pass --force to enroll it again",
            args.config.display()
        )));
    }
    let public_key = read_public_key(&args.pubkey)?;
    let mut facts = facts::facts();
    let name = match &args.name {
        Some(name) => name.clone(),
        None => facts
            .get("hostname")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                AgentError::Usage("cannot read the hostname: pass --name".to_string())
            })?,
    };
    if !args.labels.is_empty() {
        let mut labels = serde_json::Map::new();
        for label in &args.labels {
            let (key, value) = label.split_once('=').ok_or_else(|| {
                AgentError::Usage(format!("label `{label}` is not of the form k=v"))
            })?;
            labels.insert(key.to_string(), Value::String(value.to_string()));
        }
        facts.insert("labels".into(), Value::Object(labels));
    }
    let request = EnrollRequest {
        token: args.token.clone(),
        name: name.clone(),
        facts,
    };
    // The state dir is created first: a failure there should not leave a
    // config behind that makes the next try need --force.
    let state = StateDir::open(&args.state_dir).map_err(AgentError::io(format!(
        "cannot create the state dir {} (pass --state-dir)",
        args.state_dir.display()
    )))?;
    client::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::io("cannot start the async runtime"))?;
    let response = runtime.block_on(client::enroll(&args.server, &request))?;
    let config = AgentConfig {
        server: args.server.clone(),
        host_id: response.host_id.clone(),
        secret: response.secret,
        public_key,
        name: name.clone(),
    };
    config.save(&args.config)?;
    // A new host id: the generations of the old one mean nothing to it.
    // Forgotten only now that the new identity is saved, so that a failed
    // enrollment leaves the old identity whole, replay protection included.
    state.forget_host().map_err(AgentError::io(format!(
        "enrolled, but cannot clear the previous enrollment's state in {}: remove its files and run the agent",
        args.state_dir.display()
    )))?;
    println!(
        "enrolled {name} as host {} ({}); config written to {}",
        response.host_id,
        response.state.as_str(),
        args.config.display()
    );
    if response.state == HostState::Pending {
        println!(
            "the host is pending: approve it on the controller with `muster hosts approve {name}`"
        );
    }
    Ok(ExitCode::SUCCESS)
}
