//! `Policy` documents: desired state (resources) and compliance checks.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::fleet::Targets;
use crate::types::{AbsPath, Duration, FileMode};

/// Desired state for a set of hosts: ordered resources and compliance checks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The policy's name, unique among policies.
    pub name: String,
    /// What the policy ensures, for reviewers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `enforce` repairs drift; `audit` only reports it.
    #[serde(default)]
    pub mode: PolicyMode,
    /// The hosts this policy applies to.
    pub targets: Targets,
    /// Template variables for this policy's templates; host variables
    /// (from `Host` documents) override them.
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Resources, applied in this order.
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// Compliance checks, run after the resources.
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
}

/// Whether a policy repairs drift or only reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// Converge the host to the desired state.
    #[default]
    Enforce,
    /// Report differences and change nothing.
    Audit,
}

/// One piece of desired state. Each resource has a stable id, such as
/// `file:/etc/motd` or `package:nginx`, used in `depends_on` and
/// `restart_on` and in reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// A regular file.
    File(FileSpec),
    /// A directory.
    Directory(DirectorySpec),
    /// A symbolic link.
    Symlink(SymlinkSpec),
    /// A system package (apt/dpkg or dnf/rpm).
    Package(PackageSpec),
    /// A systemd service.
    Service(ServiceSpec),
    /// A command, guarded so that it runs only when needed.
    Exec(ExecSpec),
    /// A local user account.
    User(UserSpec),
    /// A local group.
    Group(UnixGroupSpec),
}

/// The type part of a resource id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    File,
    Directory,
    Symlink,
    Package,
    Service,
    Exec,
    User,
    Group,
}

impl ResourceType {
    pub const ALL: [ResourceType; 8] = [
        ResourceType::File,
        ResourceType::Directory,
        ResourceType::Symlink,
        ResourceType::Package,
        ResourceType::Service,
        ResourceType::Exec,
        ResourceType::User,
        ResourceType::Group,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::File => "file",
            ResourceType::Directory => "directory",
            ResourceType::Symlink => "symlink",
            ResourceType::Package => "package",
            ResourceType::Service => "service",
            ResourceType::Exec => "exec",
            ResourceType::User => "user",
            ResourceType::Group => "group",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Resource {
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Resource::File(_) => ResourceType::File,
            Resource::Directory(_) => ResourceType::Directory,
            Resource::Symlink(_) => ResourceType::Symlink,
            Resource::Package(_) => ResourceType::Package,
            Resource::Service(_) => ResourceType::Service,
            Resource::Exec(_) => ResourceType::Exec,
            Resource::User(_) => ResourceType::User,
            Resource::Group(_) => ResourceType::Group,
        }
    }

    /// The part of the id after the type: a path or a name.
    pub fn key(&self) -> &str {
        match self {
            Resource::File(spec) => spec.path.as_str(),
            Resource::Directory(spec) => spec.path.as_str(),
            Resource::Symlink(spec) => spec.path.as_str(),
            Resource::Package(spec) => &spec.name,
            Resource::Service(spec) => &spec.name,
            Resource::Exec(spec) => &spec.name,
            Resource::User(spec) => &spec.name,
            Resource::Group(spec) => &spec.name,
        }
    }

    /// The stable id, `type:key`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.resource_type(), self.key())
    }

    /// Ids of resources that must be applied successfully before this one.
    pub fn depends_on(&self) -> &[String] {
        match self {
            Resource::File(spec) => &spec.depends_on,
            Resource::Directory(spec) => &spec.depends_on,
            Resource::Symlink(spec) => &spec.depends_on,
            Resource::Package(spec) => &spec.depends_on,
            Resource::Service(spec) => &spec.depends_on,
            Resource::Exec(spec) => &spec.depends_on,
            Resource::User(spec) => &spec.depends_on,
            Resource::Group(spec) => &spec.depends_on,
        }
    }
}

/// Whether something should exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// It exists as described.
    #[default]
    Present,
    /// It does not exist.
    Absent,
}

/// A regular file. Give its content inline (`content`) or as a file from
/// the repo (`source`); either may be a template (`template: true`)
/// rendered with the host's facts and variables. With neither, only the
/// file's existence and metadata are managed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path on the host.
    pub path: AbsPath,
    /// Whether the file exists.
    #[serde(default)]
    pub ensure: Presence,
    /// The file's content, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A file in the fleet repo whose content this file gets, as a path
    /// relative to the repo root, such as `files/motd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Render the content as a template (`{{ vars.port }}`, `{{ facts.hostname }}`).
    #[serde(default)]
    pub template: bool,
    /// Permission bits, such as "0644".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<FileMode>,
    /// Owning user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Owning group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The content is secret: it is left out of diffs, reports and plans.
    #[serde(default)]
    pub secret: bool,
    /// Resource ids that must be applied first.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// A directory.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectorySpec {
    /// Absolute path on the host.
    pub path: AbsPath,
    /// Whether the directory exists. An absent directory is removed only
    /// when it is empty.
    #[serde(default)]
    pub ensure: Presence,
    /// Permission bits, such as "0755".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<FileMode>,
    /// Owning user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Owning group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Resource ids that must be applied first.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// A symbolic link.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SymlinkSpec {
    /// Absolute path of the link itself.
    pub path: AbsPath,
    /// What the link points to (absolute or relative to the link);
    /// required unless the link is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether the link exists.
    #[serde(default)]
    pub ensure: Presence,
    /// Resource ids that must be applied first.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// A system package.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    /// Package name, as the package manager knows it.
    pub name: String,
    /// `present`, `absent`, or `latest` (upgrade when a newer one is available).
    #[serde(default)]
    pub ensure: PackageEnsure,
    /// Exact version to hold, when `ensure` is `present`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Resource ids that must be applied first.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// The desired state of a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PackageEnsure {
    /// Installed (any version, or `version` when given).
    #[default]
    Present,
    /// Not installed.
    Absent,
    /// Installed at the newest available version.
    Latest,
}

/// A systemd service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unit name, such as `nginx` or `nginx.service`.
    pub name: String,
    /// Whether the service runs. Left alone when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServiceState>,
    /// Whether the service starts at boot. Left alone when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Restart the service when any of these resources changed in the
    /// same run (for example its configuration file).
    #[serde(default)]
    pub restart_on: Vec<String>,
    /// Resource ids that must be applied first.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// Whether a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Started, and started again if it stops.
    Running,
    /// Not running.
    Stopped,
}

/// A command run on the host. It runs when its guards say so: not when
/// `creates` exists, not when `unless` succeeds, only when `only_if`
/// succeeds. Commands are argument vectors, run without a shell, unless
/// `shell: true`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    /// Name of this command, the key of its id (`exec:<name>`).
    pub name: String,
    /// The program and its arguments, such as `["systemctl",
    /// "daemon-reload"]`. With `shell: true`, a list holding one string of
    /// shell script.
    pub command: Vec<String>,
    /// Run `command` with `/bin/sh -c`.
    #[serde(default)]
    pub shell: bool,
    /// Skip the command when this path exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<AbsPath>,
    /// Skip the command when this command (an argument vector, run
    /// without a shell) succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<Vec<String>>,
    /// Run the command only when this command (an argument vector, run
    /// without a shell) succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_if: Option<Vec<String>>,
    /// Stop the command after this long and report it failed.
    #[serde(default = "ExecSpec::default_timeout")]
    pub timeout: Duration,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<AbsPath>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run as this user instead of the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Resource ids that must be applied first.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

impl ExecSpec {
    fn default_timeout() -> Duration {
        Duration::from_secs(300)
    }
}

/// A local user account.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// Login name.
    pub name: String,
    /// Whether the account exists.
    #[serde(default)]
    pub ensure: Presence,
    /// Numeric user id; chosen by the system when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Primary group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Home directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<AbsPath>,
    /// Login shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<AbsPath>,
    /// Full name or purpose (the GECOS field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// A system account (low uid, no aging).
    #[serde(default)]
    pub system: bool,
    /// OpenSSH public keys written to the user's `authorized_keys`.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// Resource ids that must be applied first.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// A local group.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnixGroupSpec {
    /// Group name.
    pub name: String,
    /// Whether the group exists.
    #[serde(default)]
    pub ensure: Presence,
    /// Numeric group id; chosen by the system when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// A system group.
    #[serde(default)]
    pub system: bool,
    /// Resource ids that must be applied first.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// A compliance check: a command whose result says whether the host
/// complies. It passes when the command exits with `expect_exit_code`
/// and, if set, its output contains `expect_output`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Name of the check, unique within its policy.
    pub name: String,
    /// What the check verifies and why it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The program and its arguments (or, with `shell: true`, a list
    /// holding one string of shell script).
    pub command: Vec<String>,
    /// Run `command` with `/bin/sh -c`.
    #[serde(default)]
    pub shell: bool,
    /// The exit code of a passing check.
    #[serde(default)]
    pub expect_exit_code: i32,
    /// Text that the output of a passing check contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_output: Option<String>,
    /// Fail the check when the command runs longer than this.
    #[serde(default = "CheckSpec::default_timeout")]
    pub timeout: Duration,
    /// How much a failure matters.
    #[serde(default)]
    pub severity: CheckSeverity,
    /// A script to run on hosts where the check fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<Remediation>,
}

impl CheckSpec {
    fn default_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

/// How much a failing check matters.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CheckSeverity {
    /// Worth knowing; no action needed.
    Info,
    /// Fix when convenient.
    Low,
    /// Fix soon (the default).
    #[default]
    Medium,
    /// Fix now: a security or availability risk.
    High,
    /// Fix immediately: the host is exposed or broken.
    Critical,
}

/// A script run to repair a failing check.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Remediation {
    /// Name of a `Script` in this repo.
    pub script: String,
    /// Parameters for the script.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
}
