//! RBAC documents: `Role`, `RoleBinding` and `Team`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Permissions a role can grant. `scripts:run:<name>` grants running one
/// script; `*` grants everything.
pub const PERMISSIONS: &[(&str, &str)] = &[
    ("*", "every permission"),
    ("hosts:read", "see hosts, their facts, bundles and reports"),
    ("hosts:approve", "approve or reject enrolling hosts"),
    ("hosts:remove", "remove hosts"),
    (
        "commits:read",
        "see deployed and rejected commits and plans",
    ),
    ("jobs:read", "see jobs and their output"),
    ("jobs:cancel", "cancel queued or running jobs"),
    ("scripts:run", "run any script"),
    ("actions:reboot", "reboot hosts"),
    ("actions:service", "start, stop and restart services"),
    ("alerts:read", "see alerts"),
    ("alerts:ack", "acknowledge alerts"),
    ("audit:read", "read the audit log"),
    (
        "tokens:manage",
        "create and revoke enrollment and API tokens",
    ),
];

/// The prefix of per-script run permissions.
pub const SCRIPT_RUN_PREFIX: &str = "scripts:run:";

/// A named set of permissions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// The role's name, used in role bindings.
    pub name: String,
    /// Who the role is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Permissions granted, such as `hosts:read` or `scripts:run:restart-service`.
    pub permissions: Vec<String>,
}

/// Grants a role to subjects, on a scope of hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBindingSpec {
    /// The binding's name.
    pub name: String,
    /// Why the binding exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Name of the `Role` granted.
    pub role: String,
    /// Who gets the role: users, teams and API tokens, by name.
    pub subjects: Vec<Subject>,
    /// Where the role applies: `fleet` for every host, or `{groups: [...]}`.
    pub scope: Scope,
}

/// Someone a role is granted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// A user, by login name.
    User(String),
    /// A `Team` from this repo.
    Team(String),
    /// An API token, by the name it was created with.
    Token(String),
}

/// The hosts a binding applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every host, and fleet-wide actions.
    Fleet,
    /// The hosts of these groups only.
    Groups(Vec<String>),
}

/// A named set of users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    /// The team's name, used in role bindings.
    pub name: String,
    /// What the team does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Login names of the members.
    #[serde(default)]
    pub members: Vec<String>,
}
