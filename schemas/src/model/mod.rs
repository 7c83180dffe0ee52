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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_file;

    fn spec(text: &str) -> Spec {
        let file = parse_file(
            "doc.yaml",
            format!("apiVersion: muster/v1\n{text}").as_bytes(),
        );
        assert!(file.diagnostics.is_empty(), "{:#?}", file.diagnostics);
        file.documents
            .into_iter()
            .next()
            .and_then(|d| d.spec)
            .expect("a document")
    }

    #[test]
    fn fleet_defaults() {
        let Spec::Fleet(fleet) = spec("kind: Fleet\nname: prod\n") else {
            panic!()
        };
        assert_eq!(fleet.agent.interval.as_secs(), 300);
        assert_eq!(fleet.agent.splay.as_secs(), 30);
        assert_eq!(fleet.agent.offline_after.as_secs(), 900);
        assert_eq!(fleet.bundles.expiry.as_secs(), 7 * 86_400);
        assert_eq!(fleet.enrollment.approval, Approval::Manual);
        assert!(!fleet.commit_signatures.required);
        assert_eq!(fleet.rollout, RolloutSpec::default());
    }

    #[test]
    fn policy_and_resource_defaults() {
        let Spec::Policy(policy) = spec(
            "kind: Policy\nname: p\ntargets: {groups: [all]}\nresources:\n  - file: {path: /etc/motd}\n  - exec: {name: x, command: [\"true\"]}\n  - package: {name: nginx}\n",
        ) else {
            panic!()
        };
        assert_eq!(policy.mode, PolicyMode::Enforce);
        let ids: Vec<String> = policy.resources.iter().map(Resource::id).collect();
        assert_eq!(ids, ["file:/etc/motd", "exec:x", "package:nginx"]);
        let Resource::File(file) = &policy.resources[0] else {
            panic!()
        };
        assert_eq!(file.ensure, Presence::Present);
        assert!(!file.template && !file.secret && file.mode.is_none());
        let Resource::Exec(exec) = &policy.resources[1] else {
            panic!()
        };
        assert_eq!(exec.timeout.as_secs(), 300);
        assert!(!exec.shell);
        let Resource::Package(package) = &policy.resources[2] else {
            panic!()
        };
        assert_eq!(package.ensure, PackageEnsure::Present);
    }

    #[test]
    fn script_defaults() {
        let Spec::Script(script) = spec("kind: Script\nname: s\nbody: echo hi\n") else {
            panic!()
        };
        assert_eq!(script.interpreter.as_str(), "/bin/sh");
        assert_eq!(script.timeout.as_secs(), 600);
        assert_eq!(script.run_as, None, "the agent's own user");
        assert_eq!(script.timezone, crate::types::TimeZone::UTC);
        assert_eq!(script.splay.as_secs(), 0);
        assert!(script.schedule.is_none() && script.targets.is_none());
    }

    #[test]
    fn unit_and_struct_variants() {
        let Spec::AlertRule(rule) =
            spec("kind: AlertRule\nname: a\ncondition: offline\ntargets: {groups: [all]}\n")
        else {
            panic!()
        };
        assert_eq!(rule.condition, Condition::Offline);
        assert_eq!(rule.severity, AlertSeverity::Warning);
        let Spec::AlertRule(rule) = spec(
            "kind: AlertRule\nname: a\ncondition: {cpu: {above: 90}}\nfor: 5m\ntargets: {groups: [all]}\n",
        ) else {
            panic!()
        };
        assert_eq!(rule.condition, Condition::Cpu(Threshold { above: 90.0 }));
        assert_eq!(rule.for_duration.as_secs(), 300);
        let Spec::RoleBinding(binding) = spec(
            "kind: RoleBinding\nname: b\nrole: r\nsubjects: [{user: alice}, {team: ops}]\nscope: {groups: [web]}\n",
        ) else {
            panic!()
        };
        assert_eq!(
            binding.subjects,
            vec![Subject::User("alice".into()), Subject::Team("ops".into())]
        );
        assert_eq!(binding.scope, Scope::Groups(vec!["web".into()]));
    }

    #[test]
    fn selectors_accept_one_value_or_a_list() {
        let Spec::Group(group) =
            spec("kind: Group\nname: g\nselector: {role: web, env: [prod, staging], port: 80}\n")
        else {
            panic!()
        };
        let selector = group.selector.expect("a selector");
        assert_eq!(selector.0["role"], LabelMatch::One("web".into()));
        assert_eq!(
            selector.0["env"],
            LabelMatch::Any(vec!["prod".into(), "staging".into()])
        );
        assert_eq!(selector.0["port"], LabelMatch::One("80".into()));
    }

    #[test]
    fn models_round_trip_through_json() {
        let original = spec(
            "kind: Script\nname: s\nbody: x\nschedule: \"0 3 * * 1\"\ntimezone: Europe/Berlin\nsplay: 90s\ntargets: {groups: [all]}\nrollout: {max_parallel: \"25%\", failure_threshold: 2}\n",
        );
        let Spec::Script(script) = original else {
            panic!()
        };
        let json = serde_json::to_value(&script).unwrap();
        assert_eq!(json["schedule"], "0 3 * * 1");
        assert_eq!(json["splay"], "1m30s");
        assert_eq!(json["rollout"]["max_parallel"], "25%");
        assert_eq!(json["rollout"]["failure_threshold"], 2);
        let back: ScriptSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, script);
    }
}
