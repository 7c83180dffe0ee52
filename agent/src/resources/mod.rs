//! The resource engine: brings the host to a bundle's desired state, one
//! resource at a time, and says what it found and did.
//!
//! Every resource kind keeps one contract ([`CheckApply`], after mgmt's
//! `CheckApply` and CFEngine's promises): `check_apply(ctx, false)` only
//! looks and never changes the host; `check_apply(ctx, true)` converges in
//! one call; a second call right after finds nothing to do. A resource
//! composes small sub-checks in a fixed order, state → content → owner →
//! mode for files, so that a report lists differences the same way every
//! time and the most basic one (the thing is missing) comes first.
//!
//! [`converge`] runs a bundle's resources in bundle order: audit-mode
//! resources (and every resource in a dry run) are only checked; a resource
//! whose dependency failed is skipped, not the whole run; a service
//! restarts when a resource in its `restart_on` changed in the same run.
//! Consecutive file writes overlap on a few threads, and each directory is
//! fsynced once at the end of the run (`writes`); every change is durable
//! when `converge` returns.
//!
//! A [`Context`] with a `root` is a sandbox (`--root DIR`): every managed
//! path lives beneath the root, and the kinds that cannot be contained there
//! (package, service, user, group) report `skipped` with the message
//! `sandboxed`.

mod accounts;
mod diff;
mod directory;
mod exec;
mod file;
mod group;
mod package;
pub mod paths;
mod service;
mod symlink;
mod user;
mod writes;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use muster_schemas::bundle::Desired;
use muster_schemas::model::{PolicyMode, Resource};
use muster_schemas::protocol::{ResourceReport, ResourceStatus};

use crate::command::{Command, CommandError};

pub use diff::{DIFF_LIMIT, REDACTED};
pub use directory::DEFAULT_DIRECTORY_MODE;
pub use exec::RUN_AS_SANDBOXED;
pub use file::{DEFAULT_FILE_MODE, DEFAULT_SECRET_MODE};
pub use package::PackageManager;
pub use paths::{HostPath, PathError};
pub use service::Service;

/// The message of a resource that a sandbox cannot contain.
pub const SANDBOXED: &str = "sandboxed";

/// Bytes of a command's stdout and of its stderr quoted in a report message.
pub const MESSAGE_OUTPUT_LIMIT: usize = 4 * 1024;

/// How long a package or service tool may run before it is killed. Package
/// installs can be slow; an agent stuck for ever is worse.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Where resources are applied and how commands are found.
#[derive(Debug)]
pub struct Context {
    /// The sandbox root (`--root DIR`): every managed path lives beneath it,
    /// and package, service, user and group resources are skipped. `None`
    /// manages the real host.
    pub root: Option<PathBuf>,
    /// The `PATH`-style list that commands are looked up on (and given to
    /// them as `PATH`). `None` uses the agent's `PATH` followed by the
    /// standard system directories. Tests put stand-in tools here.
    pub search_path: Option<OsString>,
    /// How long a package or service tool may run.
    pub tool_timeout: Duration,
    accounts: accounts::Cache,
    package_manager: OnceLock<Option<PackageManager>>,
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl Context {
    /// A context that manages the real host.
    pub fn new() -> Context {
        Context {
            root: None,
            search_path: None,
            tool_timeout: DEFAULT_TOOL_TIMEOUT,
            accounts: accounts::Cache::default(),
            package_manager: OnceLock::new(),
        }
    }

    /// Places every managed path beneath `root` (a sandbox).
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Context {
        self.root = Some(root.into());
        self
    }

    /// Looks commands up on this `PATH`-style list only.
    pub fn with_search_path(mut self, search_path: impl Into<OsString>) -> Context {
        self.search_path = Some(search_path.into());
        self.package_manager = OnceLock::new();
        self
    }

    /// Kills package and service tools after this long.
    pub fn with_tool_timeout(mut self, timeout: Duration) -> Context {
        self.tool_timeout = timeout;
        self
    }

    /// Whether this is a sandbox (`--root`).
    pub fn is_sandboxed(&self) -> bool {
        self.root.is_some()
    }

    /// A command that looks its program up on this context's search path
    /// and stops after the tool timeout.
    pub fn command<I, S>(&self, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command::new(argv)
            .search_path(self.search_path.clone())
            .timeout(self.tool_timeout)
    }

    /// The package manager of this host, found by the tools present:
    /// `dpkg-query` and `apt-get`, else `rpm` and `dnf`.
    pub fn package_manager(&self) -> Option<PackageManager> {
        *self
            .package_manager
            .get_or_init(|| PackageManager::detect(self.search_path.as_deref()))
    }
}

/// What one `check_apply` found or did. It becomes a [`ResourceReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// In sync, changed, drifted, failed or skipped.
    pub status: ResourceStatus,
    /// What differed or was done, or why it failed or was skipped.
    pub message: Option<String>,
    /// A unified diff of file content (redacted for secrets, bounded).
    pub diff: Option<String>,
}

impl Outcome {
    /// Already as desired.
    pub fn in_sync() -> Outcome {
        Outcome::with(ResourceStatus::InSync, None)
    }

    /// Was different and has been repaired.
    pub fn changed(message: impl Into<String>) -> Outcome {
        Outcome::with(ResourceStatus::Changed, Some(message.into()))
    }

    /// Differs and was left alone.
    pub fn drifted(message: impl Into<String>) -> Outcome {
        Outcome::with(ResourceStatus::Drifted, Some(message.into()))
    }

    /// Could not be checked or applied.
    pub fn failed(message: impl Into<String>) -> Outcome {
        Outcome::with(ResourceStatus::Failed, Some(message.into()))
    }

    /// Not applied, for the reason given.
    pub fn skipped(message: impl Into<String>) -> Outcome {
        Outcome::with(ResourceStatus::Skipped, Some(message.into()))
    }

    /// `changed` when the difference was applied, `drifted` when only
    /// checked.
    pub fn differs(apply: bool, message: impl Into<String>) -> Outcome {
        if apply {
            Outcome::changed(message)
        } else {
            Outcome::drifted(message)
        }
    }

    /// Adds a diff.
    pub fn with_diff(mut self, diff: Option<String>) -> Outcome {
        self.diff = diff;
        self
    }

    /// Adds a note to the message.
    pub fn with_note(mut self, note: Option<&str>) -> Outcome {
        if let Some(note) = note {
            self.message = Some(match self.message.take() {
                Some(message) => format!("{message}; {note}"),
                None => note.to_string(),
            });
        }
        self
    }

    /// The report line for resource `id`.
    pub fn into_report(self, id: impl Into<String>) -> ResourceReport {
        ResourceReport {
            id: id.into(),
            status: self.status,
            message: self.message,
            diff: self.diff,
        }
    }

    fn with(status: ResourceStatus, message: Option<String>) -> Outcome {
        Outcome {
            status,
            message,
            diff: None,
        }
    }
}

/// The contract of every resource kind.
pub trait CheckApply {
    /// Compares the host with the desired state. With `apply` false it
    /// changes nothing and reports differences as `drifted`; with `apply`
    /// true it converges in this one call and reports `changed`. Either way
    /// a host that already matches is `in_sync`.
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome;
}

impl CheckApply for Resource {
    /// Dispatches to the kind. A service checked this way is never asked to
    /// restart; [`converge`] passes restart triggers through [`Service`].
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome {
        match self {
            Resource::File(spec) => spec.check_apply(ctx, apply),
            Resource::Directory(spec) => spec.check_apply(ctx, apply),
            Resource::Symlink(spec) => spec.check_apply(ctx, apply),
            Resource::Package(spec) => spec.check_apply(ctx, apply),
            Resource::Service(spec) => spec.check_apply(ctx, apply),
            Resource::Exec(spec) => spec.check_apply(ctx, apply),
            Resource::User(spec) => spec.check_apply(ctx, apply),
            Resource::Group(spec) => spec.check_apply(ctx, apply),
        }
    }
}

/// Converges (or, with `dry_run`, only checks) a bundle's resources in
/// bundle order and reports each one.
///
/// - Resources of `audit` policies, and every resource in a dry run, are
///   only checked: differences are `drifted` and nothing changes.
/// - A resource whose `depends_on` names a resource that failed, or that
///   was skipped because of a failure, is `skipped` ("dependency X
///   failed"). Resources skipped because they are sandboxed do not count
///   as failures: a file that depends on a package still gets written in a
///   sandbox.
/// - A service restarts when a resource in its `restart_on` changed earlier
///   in this run. In a dry run, a resource that would change (drifted, in
///   an enforcing policy) counts, so the plan shows the restart.
/// - Every change is durable when this returns: file writes land through
///   [`writes::Writes`], which overlaps their fsyncs but lands all of them
///   before any resource that could see one, so each resource finds the
///   host as if every earlier one had been applied on its own.
pub fn converge(desired: &Desired, ctx: &Context, dry_run: bool) -> Vec<ResourceReport> {
    // The writes' threads live in this scope, so that they can borrow the
    // bundle's content and the context; it ends with the run.
    std::thread::scope(|scope| {
        let mut run = Run::new(desired);
        let mut writes = writes::Writes::new(scope, ctx);
        for item in &desired.resources {
            let apply = !dry_run && item.mode == PolicyMode::Enforce;
            let sees_no_write = match &item.resource {
                Resource::File(spec) => {
                    spec.depends_on.is_empty() && !writes.overlaps(spec.path.as_str())
                }
                _ => false,
            };
            if !writes.is_empty() && !sees_no_write {
                run.fail(writes.land_all());
            }
            let failed_dependency = item
                .resource
                .depends_on()
                .iter()
                .find(|dependency| run.broken.contains(dependency.as_str()));
            let (outcome, write) = match (failed_dependency, &item.resource) {
                (Some(dependency), _) => (
                    Outcome::skipped(format!("dependency {dependency} failed")),
                    None,
                ),
                (None, Resource::Service(spec)) => {
                    let restart_because = spec
                        .restart_on
                        .iter()
                        .filter(|id| match run.seen.get(id.as_str()) {
                            Some((ResourceStatus::Changed, _)) => true,
                            Some((ResourceStatus::Drifted, PolicyMode::Enforce)) => dry_run,
                            _ => false,
                        })
                        .cloned()
                        .collect();
                    let service = Service {
                        spec,
                        restart_because,
                    };
                    (service.check_apply(ctx, apply), None)
                }
                (None, Resource::File(spec)) => file::check_apply_pending(spec, ctx, apply),
                (None, resource) => (resource.check_apply(ctx, apply), None),
            };
            let skipped = failed_dependency.is_some();
            let index = run.record(skipped, outcome);
            if let Some(write) = write {
                run.fail(writes.push(index, write));
            }
        }
        run.fail(writes.finish());
        run.reports
    })
}

/// What a converge run has reported so far.
struct Run<'a> {
    desired: &'a Desired,
    reports: Vec<ResourceReport>,
    /// Resources that failed or were skipped because of a failure.
    broken: HashSet<&'a str>,
    /// The status of every resource so far, with its policy mode.
    seen: HashMap<&'a str, (ResourceStatus, PolicyMode)>,
}

impl<'a> Run<'a> {
    fn new(desired: &'a Desired) -> Run<'a> {
        Run {
            desired,
            reports: Vec::with_capacity(desired.resources.len()),
            broken: HashSet::new(),
            seen: HashMap::new(),
        }
    }

    /// Records the outcome of the next resource; returns its index.
    fn record(&mut self, skipped_for_failure: bool, outcome: Outcome) -> usize {
        let index = self.reports.len();
        let item = &self.desired.resources[index];
        if skipped_for_failure || outcome.status == ResourceStatus::Failed {
            self.broken.insert(&item.id);
        }
        self.seen.insert(&item.id, (outcome.status, item.mode));
        self.reports.push(outcome.into_report(item.id.clone()));
        index
    }

    /// Turns the resources whose writes did not land into failures.
    fn fail(&mut self, failed: Vec<writes::Failed>) {
        for (index, failure) in failed {
            let item = &self.desired.resources[index];
            self.broken.insert(&item.id);
            self.seen
                .insert(&item.id, (ResourceStatus::Failed, item.mode));
            self.reports[index] = Outcome::failed(failure.0).into_report(item.id.clone());
        }
    }
}

/// Why a resource failed: a message for the report, lowercase, saying what
/// to do where there is something to do.
#[derive(Debug)]
pub(crate) struct Failure(String);

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Failure {
        Failure(message.into())
    }

    /// A tool that did not do what was asked: the command as shown, how it
    /// ended, `note` (such as ": is the unit installed?"), and its output,
    /// bounded.
    pub(crate) fn tool(shown: &str, output: &crate::command::Output, note: &str) -> Failure {
        Failure(format!(
            "`{shown}` {}{note}{}",
            output.termination,
            output.summary(MESSAGE_OUTPUT_LIMIT)
        ))
    }

    /// Maps an I/O error to a failure that says what was being done.
    pub(crate) fn io(doing: impl fmt::Display) -> impl FnOnce(io::Error) -> Failure {
        move |err| Failure(format!("{doing}: {err}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<PathError> for Failure {
    fn from(err: PathError) -> Failure {
        Failure(err.to_string())
    }
}

impl From<CommandError> for Failure {
    fn from(err: CommandError) -> Failure {
        Failure(err.to_string())
    }
}

/// Turns a resource's fallible body into an outcome.
pub(crate) fn outcome_of(result: Result<Outcome, Failure>) -> Outcome {
    result.unwrap_or_else(|failure| Outcome::failed(failure.0))
}

/// The differences one check found, in the order the sub-checks ran.
#[derive(Debug, Default)]
pub(crate) struct Differences(Vec<String>);

impl Differences {
    pub(crate) fn push(&mut self, difference: impl Into<String>) {
        self.0.push(difference.into());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn message(&self) -> String {
        self.0.join("; ")
    }
}
