//! RBAC documents: `Role`, `RoleBinding` and `Team`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A permission a role can grant, other than `*` (everything) and
/// `scripts:run:<name>` (one script).
///
/// Most permissions act on hosts, and a binding scoped to groups grants
/// them on the hosts of those groups; the [fleet-wide](Permission::is_fleet_wide)
/// ones act on the controller itself and need a binding with `scope: fleet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    HostsRead,
    HostsApprove,
    HostsRemove,
    CommitsRead,
    JobsRead,
    JobsCancel,
    ScriptsRun,
    ActionsReboot,
    ActionsService,
    AlertsRead,
    AlertsAck,
    AuditRead,
    TokensManage,
}

impl Permission {
    /// Every permission, in the order the reference lists them.
    pub const ALL: [Permission; 13] = [
        Permission::HostsRead,
        Permission::HostsApprove,
        Permission::HostsRemove,
        Permission::CommitsRead,
        Permission::JobsRead,
        Permission::JobsCancel,
        Permission::ScriptsRun,
        Permission::ActionsReboot,
        Permission::ActionsService,
        Permission::AlertsRead,
        Permission::AlertsAck,
        Permission::AuditRead,
        Permission::TokensManage,
    ];

    /// The name roles list it by, such as `hosts:read`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::HostsRead => "hosts:read",
            Permission::HostsApprove => "hosts:approve",
            Permission::HostsRemove => "hosts:remove",
            Permission::CommitsRead => "commits:read",
            Permission::JobsRead => "jobs:read",
            Permission::JobsCancel => "jobs:cancel",
            Permission::ScriptsRun => "scripts:run",
            Permission::ActionsReboot => "actions:reboot",
            Permission::ActionsService => "actions:service",
            Permission::AlertsRead => "alerts:read",
            Permission::AlertsAck => "alerts:ack",
            Permission::AuditRead => "audit:read",
            Permission::TokensManage => "tokens:manage",
        }
    }

    /// What it allows, for the reference.
    pub const fn description(self) -> &'static str {
        match self {
            Permission::HostsRead => "see hosts, their facts, bundles and reports",
            Permission::HostsApprove => "approve or reject enrolling hosts",
            Permission::HostsRemove => "remove hosts",
            Permission::CommitsRead => "see deployed and rejected commits and plans (fleet-wide)",
            Permission::JobsRead => "see jobs and their output",
            Permission::JobsCancel => "cancel queued or running jobs",
            Permission::ScriptsRun => "run any script",
            Permission::ActionsReboot => "reboot hosts",
            Permission::ActionsService => "start, stop and restart services",
            Permission::AlertsRead => "see alerts",
            Permission::AlertsAck => "acknowledge alerts",
            Permission::AuditRead => "read the audit log (fleet-wide)",
            Permission::TokensManage => "create and revoke enrollment and API tokens (fleet-wide)",
        }
    }

    /// Whether it acts on the controller rather than on hosts, so that
    /// only a binding with `scope: fleet` grants it. Commits and the audit
    /// log span every host, and tokens let hosts and users in: none of
    /// them can be cut down to a group.
    pub const fn is_fleet_wide(self) -> bool {
        matches!(
            self,
            Permission::CommitsRead | Permission::AuditRead | Permission::TokensManage
        )
    }

    pub fn parse(text: &str) -> Option<Permission> {
        Permission::ALL
            .into_iter()
            .find(|permission| permission.as_str() == text)
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The permission that grants every other one.
pub const ALL_PERMISSIONS: &str = "*";

/// Permissions a role can grant, with what they allow: `*`, then
/// [`Permission::ALL`]. `scripts:run:<name>` grants running one script.
pub const PERMISSIONS: &[(&str, &str)] = &{
    let mut table = [(ALL_PERMISSIONS, "every permission"); Permission::ALL.len() + 1];
    let mut i = 0;
    while i < Permission::ALL.len() {
        let permission = Permission::ALL[i];
        table[i + 1] = (permission.as_str(), permission.description());
        i += 1;
    }
    table
};

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
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_table_is_star_then_every_permission_in_order() {
        let names: Vec<&str> = PERMISSIONS.iter().map(|(name, _)| *name).collect();
        let mut expected = vec![ALL_PERMISSIONS];
        expected.extend(Permission::ALL.iter().map(|p| p.as_str()));
        assert_eq!(names, expected);
        for permission in Permission::ALL {
            assert_eq!(Permission::parse(permission.as_str()), Some(permission));
            assert_eq!(permission.to_string(), permission.as_str());
        }
        assert_eq!(Permission::parse("*"), None);
        assert_eq!(Permission::parse("scripts:run:x"), None);
        assert_eq!(Permission::parse("Hosts:Read"), None);
    }

    #[test]
    fn fleet_wide_permissions_are_the_ones_that_act_on_the_controller() {
        let fleet_wide: Vec<&str> = Permission::ALL
            .into_iter()
            .filter(|p| p.is_fleet_wide())
            .map(Permission::as_str)
            .collect();
        assert_eq!(fleet_wide, ["commits:read", "audit:read", "tokens:manage"]);
        for permission in Permission::ALL {
            assert_eq!(
                permission.description().ends_with("(fleet-wide)"),
                permission.is_fleet_wide(),
                "{permission}: the reference says whether it is fleet-wide"
            );
        }
    }
}
