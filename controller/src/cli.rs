//! The command line of `muster`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Muster: pull-based GitOps for Linux fleets.
#[derive(Debug, Parser)]
#[command(name = "muster", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a fleet repo and report every problem in it.
    ///
    /// Exits 0 when the repo is valid, 1 when it has errors, 2 when it
    /// cannot be read.
    Validate(ValidateArgs),
    /// Preview what a change to the fleet repo does, host by host.
    ///
    /// Compiles the base and head revisions for every host of an inventory
    /// (from `muster hosts export`) with the controller's compiler and
    /// prints the difference. With `--exit-code`: 0 no change, 1 changes;
    /// 2 on any error, and always when the head is invalid.
    Plan(PlanArgs),
    /// Print the JSON Schema of fleet documents, for editors.
    Schema(SchemaArgs),
    /// Create the data directory and the bundle signing key.
    Init(InitArgs),
    /// Run the controller: follow the fleet repo and serve agents.
    Serve(Box<ServeArgs>),
    /// Try Muster on this machine: a fleet repo, a controller and sandboxed agents.
    ///
    /// Starts the example fleet repo as a new Git repo in DIR, a controller on
    /// SQLite, and local `muster-agent` processes that manage files beneath
    /// their own directories (nothing on this machine outside DIR changes).
    /// Commit to the repo and watch the hosts converge. Run it again to resume.
    Quickstart(QuickstartArgs),
    /// Create, list and revoke enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List, approve, reject and remove hosts.
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// Show deployed and rejected commits.
    Commits {
        #[command(subcommand)]
        command: CommitsCommand,
    },
    /// Show the scheduled scripts of the deployed commit: their next runs,
    /// in each script's time zone, and the last slot that ran.
    Schedules(DataOnly),
    /// Add, remove and list users, and change their passwords.
    ///
    /// Works on the controller's database. Passwords are asked without
    /// echo on a terminal; otherwise the first line of stdin is the password.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Create, list and revoke API tokens for the user API.
    Apitoken {
        #[command(subcommand)]
        command: ApiTokenCommand,
    },
    /// Log in to a controller and keep the session for later commands.
    ///
    /// The session goes to $XDG_CONFIG_HOME/muster/session.json (else
    /// ~/.config/muster/session.json), readable by you only. The password is
    /// asked without echo on a terminal; otherwise the first line of stdin.
    Login(LoginArgs),
    /// End the session `muster login` stored.
    Logout,
    /// Read and check the audit repository.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run a script of the deployed commit on hosts.
    ///
    /// Parameters are checked against the script's typed parameters and
    /// reach it verbatim as `MUSTER_PARAM_<NAME>`. Uses the session of
    /// `muster login`, or an API token in MUSTER_TOKEN.
    Run(RunArgs),
    /// Reboot hosts (`systemctl reboot`), under the rollout limits.
    Reboot {
        #[command(flatten)]
        targets: TargetArgs,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Start, stop or restart a systemd unit on hosts.
    Service(ServiceArgs),
    /// List, show and cancel jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
}

/// Which controller the user API commands call.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The controller's URL [default: the one `muster login` saved]. With
    /// an API token in MUSTER_TOKEN, this is the server it is sent to.
    #[arg(long, env = "MUSTER_SERVER")]
    pub server: Option<String>,
}

/// The hosts an action runs on: the union of the groups and hosts named.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// A group of the deployed commit (repeatable).
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// An approved host, by name or id (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Wait for the action to finish and print each host's result; exits
    /// 1 unless every job succeeded.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The `Script` document's name.
    pub script: String,
    #[command(flatten)]
    pub targets: TargetArgs,
    /// A parameter, `NAME=VALUE` (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    pub operation: ServiceOperationArg,
    /// The systemd unit, such as `nginx`.
    pub unit: String,
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceOperationArg {
    Start,
    Stop,
    Restart,
}

impl From<ServiceOperationArg> for muster_schemas::job::ServiceOperation {
    fn from(operation: ServiceOperationArg) -> Self {
        match operation {
            ServiceOperationArg::Start => muster_schemas::job::ServiceOperation::Start,
            ServiceOperationArg::Stop => muster_schemas::job::ServiceOperation::Stop,
            ServiceOperationArg::Restart => muster_schemas::job::ServiceOperation::Restart,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs in your scope, newest first.
    List {
        /// Only the jobs of this action.
        #[arg(long)]
        action: Option<String>,
        /// Only the jobs of this host (name or id).
        #[arg(long)]
        host: Option<String>,
        /// Only jobs in this state (queued, running, succeeded, failed, …).
        #[arg(long)]
        state: Option<String>,
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one job: state, host, exit code, timings, stdout and stderr.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a job that no agent has been given yet.
    Cancel {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the controller keeps its state.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Directory for the signing key, the Git mirror and the SQLite database.
    #[arg(long, env = "MUSTER_DATA_DIR", default_value = "muster-data")]
    pub data_dir: PathBuf,
    /// Database URL (`postgres://…`); SQLite in the data dir when not set.
    #[arg(long, env = "MUSTER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// A YAML file with any of: repo, branch, path, listen, public_url,
    /// fetch_interval, long_poll. Flags and environment variables win.
    #[arg(long, env = "MUSTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The fleet repo: an https or ssh URL, a file:// URL or a local path.
    #[arg(long, env = "MUSTER_REPO")]
    pub repo: Option<String>,
    /// The branch to follow [default: the local repo's current branch, else main].
    #[arg(long, env = "MUSTER_BRANCH")]
    pub branch: Option<String>,
    /// The fleet repo's directory inside the Git repo, for monorepos.
    #[arg(long, env = "MUSTER_PATH")]
    pub path: Option<String>,
    /// Address to listen on [default: 127.0.0.1:7878].
    #[arg(long, env = "MUSTER_LISTEN")]
    pub listen: Option<String>,
    /// URL agents reach this controller at, printed in enroll commands
    /// [default: http://<listen>].
    #[arg(long, env = "MUSTER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How often to fetch the repo, besides webhooks [default: 30s].
    #[arg(long, env = "MUSTER_FETCH_INTERVAL")]
    pub fetch_interval: Option<String>,
    /// Longest time a bundle request is held open [default: 55s].
    #[arg(long, env = "MUSTER_LONG_POLL")]
    pub long_poll: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "MUSTER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "MUSTER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Push the audit repository to this Git remote after each commit
    /// (failures are logged and retried, never blocking an action).
    #[arg(long, env = "MUSTER_AUDIT_REMOTE", hide_env_values = true)]
    pub audit_remote: Option<String>,
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Where the fleet repo, the controller's data and the agents live.
    #[arg(long, default_value = "muster-quickstart")]
    pub dir: PathBuf,
    /// Address the controller listens on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: String,
    /// How many hosts with the label role=web.
    #[arg(long, default_value_t = 3)]
    pub web: u32,
    /// How many hosts with the label role=db.
    #[arg(long, default_value_t = 2)]
    pub db: u32,
    /// The `muster-agent` binary [default: the one beside `muster`, built
    /// first when run through `cargo run`, else the one on PATH].
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print the command that enrolls a host with it.
    Create(TokenCreateArgs),
    /// List tokens (never the tokens themselves).
    List(DataOnly),
    /// Revoke a token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Debug, Args)]
pub struct DataOnly {
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// How many hosts may enroll with it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// How long it stays valid, such as 24h or 7d.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// A label given to the hosts that enroll with it (`key=value`, repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Approve hosts enrolled with it at once.
    #[arg(long)]
    pub auto_approve: bool,
    /// The controller URL for the enroll command [default: the URL `muster serve` recorded].
    #[arg(long)]
    pub server: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// List hosts with their state and bundle.
    List(DataOnly),
    /// Write the inventory of approved hosts (names, ids, labels, facts)
    /// as JSON, for `muster plan --inventory`.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Show one host: facts, labels, bundle, last report.
    Show {
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Approve pending hosts: they get bundles within seconds.
    Approve {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Reject hosts: they get no bundle and no job.
    Reject {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Remove hosts with their bundles and reports.
    Remove {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum CommitsCommand {
    /// List the commits tried, newest first.
    List {
        /// How many to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Show one commit with its diagnostics.
    Show {
        /// A commit hash or a prefix of one.
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The fleet repo's directory (or one fleet file).
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The Git repository (a clone; bare or not).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The fleet repo's directory inside the repository.
    #[arg(long, value_name = "SUBDIR")]
    pub path: Option<String>,
    /// The revision the change starts from, such as `origin/main`.
    #[arg(long)]
    pub base: String,
    /// The revision to preview, such as `HEAD`.
    #[arg(long)]
    pub head: String,
    /// The hosts to compile for: a file written by `muster hosts export`.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "controller",
        conflicts_with = "controller"
    )]
    pub inventory: Option<PathBuf>,
    /// Fetch the inventory from this controller instead (the approved hosts
    /// the token holds `hosts:read` on).
    #[arg(long, value_name = "URL")]
    pub controller: Option<String>,
    /// The API token for `--controller` [default: the saved login session].
    #[arg(long, env = "MUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// Exit 1 when the plan has changes, 0 when it has none.
    #[arg(long)]
    pub exit_code: bool,
    /// The time next runs of schedules are counted from (RFC 3339), for
    /// reproducible output; now when not given.
    #[arg(long, hide = true)]
    pub now: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// Readable in a terminal.
    Text,
    /// For a pull-request comment.
    Markdown,
    /// One JSON document, for tools (see docs/plan.md).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `file:line:col: error: …`, one problem per line, like a compiler.
    Text,
    /// One JSON document, for tools.
    Json,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The kind whose schema to print, such as `Policy` or `role-binding`;
    /// the schema of any document when not given.
    pub kind: Option<String>,
    /// Write every schema file into this directory instead of printing.
    #[arg(long, value_name = "DIR", conflicts_with = "kind")]
    pub write: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; it may do what RoleBindings in the fleet repo grant it.
    Add {
        name: String,
        /// Make a break-glass admin: may do everything, and its every
        /// login and request is written to the audit repository.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Change a user's password; its sessions end.
    Passwd {
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Remove a user; its sessions and API tokens are revoked.
    Remove {
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List users (never their passwords).
    List(DataOnly),
}

#[derive(Debug, Subcommand)]
pub enum ApiTokenCommand {
    /// Create an API token acting for a user; it is printed only once.
    Create {
        /// The user the token acts for.
        #[arg(long)]
        user: String,
        /// The token's name, unique among tokens not revoked; RoleBindings
        /// grant roles to it as `token: NAME`.
        #[arg(long)]
        name: String,
        /// How long it stays valid, such as 30d [default: until revoked].
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List API tokens (never the tokens themselves).
    List(DataOnly),
    /// Revoke an API token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The controller's URL.
    #[arg(long, env = "MUSTER_SERVER")]
    pub server: String,
    /// Your user name.
    #[arg(long, env = "MUSTER_USER")]
    pub user: String,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show audit records, newest first.
    Log {
        /// Only records since then: a duration such as 24h or 7d, a date
        /// such as 2026-11-29, or an RFC 3339 time.
        #[arg(long, value_name = "DURATION|DATE")]
        since: Option<String>,
        /// Only actions of this user (with their outcomes).
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Check that the audit repository's chain is intact: every commit
    /// parses, and its record matches its message and author.
    ///
    /// Exits 0 when it is, 1 when it has problems.
    Verify {
        #[command(flatten)]
        data: DataArgs,
    },
}
