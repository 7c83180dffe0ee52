//! The fleet-repo model: one type per document kind, and the validated
//! whole ([`FleetModel`]).

pub mod alert;
pub mod fleet;
pub mod policy;
pub mod rbac;
pub mod script;

use std::collections::BTreeMap;
use std::fmt;

pub use alert::*;
pub use fleet::*;
pub use policy::*;
pub use rbac::*;
pub use script::*;

use crate::yaml::Location;

/// The `apiVersion` every document carries.
pub const API_VERSION: &str = "muster/v1";

/// The kinds of document a fleet repo holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    Fleet,
    Host,
    Group,
    Policy,
    Script,
    AlertRule,
    Channel,
    Window,
    Role,
    RoleBinding,
    Team,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Fleet,
        Kind::Host,
        Kind::Group,
        Kind::Policy,
        Kind::Script,
        Kind::AlertRule,
        Kind::Channel,
        Kind::Window,
        Kind::Role,
        Kind::RoleBinding,
        Kind::Team,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Fleet => "Fleet",
            Kind::Host => "Host",
            Kind::Group => "Group",
            Kind::Policy => "Policy",
            Kind::Script => "Script",
            Kind::AlertRule => "AlertRule",
            Kind::Channel => "Channel",
            Kind::Window => "Window",
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
            Kind::Team => "Team",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// What a document of this kind declares, for schema titles.
    pub fn summary(self) -> &'static str {
        match self {
            Kind::Fleet => {
                "Fleet-wide settings: agent timing, bundle expiry, enrollment, commit signatures, rollout defaults."
            }
            Kind::Host => "Static facts about a named host: labels and template variables.",
            Kind::Group => "A named set of hosts: a label selector and/or host names.",
            Kind::Policy => {
                "Desired state for a set of hosts: ordered resources and compliance checks."
            }
            Kind::Script => {
                "A reviewed script with typed parameters, run ad hoc or on a cron schedule."
            }
            Kind::AlertRule => {
                "A condition on hosts that notifies channels when it holds for a while."
            }
            Kind::Channel => "A notification destination: webhook, Slack or email.",
            Kind::Window => "A maintenance window that silences alerts and/or holds rollouts.",
            Kind::Role => "A named set of permissions.",
            Kind::RoleBinding => "Grants a role to users, teams or API tokens on a scope of hosts.",
            Kind::Team => "A named set of users.",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The content of one document, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Fleet(FleetSpec),
    Host(HostSpec),
    Group(GroupSpec),
    Policy(PolicySpec),
    Script(ScriptSpec),
    AlertRule(AlertRuleSpec),
    Channel(ChannelSpec),
    Window(WindowSpec),
    Role(RoleSpec),
    RoleBinding(RoleBindingSpec),
    Team(TeamSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Fleet(_) => Kind::Fleet,
            Spec::Host(_) => Kind::Host,
            Spec::Group(_) => Kind::Group,
            Spec::Policy(_) => Kind::Policy,
            Spec::Script(_) => Kind::Script,
            Spec::AlertRule(_) => Kind::AlertRule,
            Spec::Channel(_) => Kind::Channel,
            Spec::Window(_) => Kind::Window,
            Spec::Role(_) => Kind::Role,
            Spec::RoleBinding(_) => Kind::RoleBinding,
            Spec::Team(_) => Kind::Team,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Spec::Fleet(spec) => &spec.name,
            Spec::Host(spec) => &spec.name,
            Spec::Group(spec) => &spec.name,
            Spec::Policy(spec) => &spec.name,
            Spec::Script(spec) => &spec.name,
            Spec::AlertRule(spec) => &spec.name,
            Spec::Channel(spec) => &spec.name,
            Spec::Window(spec) => &spec.name,
            Spec::Role(spec) => &spec.name,
            Spec::RoleBinding(spec) => &spec.name,
            Spec::Team(spec) => &spec.name,
        }
    }
}

/// Where a document was declared.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Origin {
    pub file: String,
    pub location: Location,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.location)
    }
}

/// A whole fleet repo that passed validation. Maps are keyed by name, so
/// iteration order is deterministic.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetModel {
    pub fleet: FleetSpec,
    pub hosts: BTreeMap<String, HostSpec>,
    pub groups: BTreeMap<String, GroupSpec>,
    pub policies: BTreeMap<String, PolicySpec>,
    pub scripts: BTreeMap<String, ScriptSpec>,
    pub alert_rules: BTreeMap<String, AlertRuleSpec>,
    pub channels: BTreeMap<String, ChannelSpec>,
    pub windows: BTreeMap<String, WindowSpec>,
    pub roles: BTreeMap<String, RoleSpec>,
    pub role_bindings: BTreeMap<String, RoleBindingSpec>,
    pub teams: BTreeMap<String, TeamSpec>,
    /// Where each document was declared, by kind and name.
    pub origins: BTreeMap<(Kind, String), Origin>,
}

impl FleetModel {
    /// Adds a document; the caller has checked that names are unique.
    pub(crate) fn insert(&mut self, spec: Spec, origin: Origin) {
        self.origins
            .insert((spec.kind(), spec.name().to_string()), origin);
        match spec {
            Spec::Fleet(spec) => self.fleet = spec,
            Spec::Host(spec) => {
                self.hosts.insert(spec.name.clone(), spec);
            }
            Spec::Group(spec) => {
                self.groups.insert(spec.name.clone(), spec);
            }
            Spec::Policy(spec) => {
                self.policies.insert(spec.name.clone(), spec);
            }
            Spec::Script(spec) => {
                self.scripts.insert(spec.name.clone(), spec);
            }
            Spec::AlertRule(spec) => {
                self.alert_rules.insert(spec.name.clone(), spec);
            }
            Spec::Channel(spec) => {
                self.channels.insert(spec.name.clone(), spec);
            }
            Spec::Window(spec) => {
                self.windows.insert(spec.name.clone(), spec);
            }
            Spec::Role(spec) => {
                self.roles.insert(spec.name.clone(), spec);
            }
            Spec::RoleBinding(spec) => {
                self.role_bindings.insert(spec.name.clone(), spec);
            }
            Spec::Team(spec) => {
                self.teams.insert(spec.name.clone(), spec);
            }
        }
    }

    /// The number of documents of every kind.
    pub fn n_documents(&self) -> usize {
        self.origins.len()
    }
}
