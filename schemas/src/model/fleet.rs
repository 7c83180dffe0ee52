//! `Fleet` settings, `Host` and `Group` documents, and target selection.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::de::leaf;
use crate::types::{Duration, LeafError};

/// Fleet-wide settings. At most one `Fleet` document exists in a repo;
/// without one, every setting has its default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Name of the fleet, shown in the dashboard.
    pub name: String,
    /// What this fleet is, for people reading the repo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How agents run.
    #[serde(default)]
    pub agent: AgentSettings,
    /// How long signed bundles stay valid.
    #[serde(default)]
    pub bundles: BundleSettings,
    /// How new hosts join.
    #[serde(default)]
    pub enrollment: EnrollmentSettings,
    /// Whether commits must carry a trusted SSH signature to be deployed.
    #[serde(default)]
    pub commit_signatures: CommitSignatureSettings,
    /// Rollout limits used by scripts that set none of their own.
    #[serde(default)]
    pub rollout: RolloutSpec,
}

/// Agent timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// How often agents re-check their host against the bundle in force
    /// (drift detection). New bundles are applied at once regardless.
    #[serde(default = "AgentSettings::default_interval")]
    pub interval: Duration,
    /// Random delay added to periodic work so that hosts do not act in step.
    #[serde(default = "AgentSettings::default_splay")]
    pub splay: Duration,
    /// How often agents send metrics.
    #[serde(default = "AgentSettings::default_metrics_interval")]
    pub metrics_interval: Duration,
    /// A host that has not been heard from for this long is `offline`.
    #[serde(default = "AgentSettings::default_offline_after")]
    pub offline_after: Duration,
}

impl AgentSettings {
    fn default_interval() -> Duration {
        Duration::from_secs(300)
    }
    fn default_splay() -> Duration {
        Duration::from_secs(30)
    }
    fn default_metrics_interval() -> Duration {
        Duration::from_secs(60)
    }
    fn default_offline_after() -> Duration {
        Duration::from_secs(900)
    }
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            interval: Self::default_interval(),
            splay: Self::default_splay(),
            metrics_interval: Self::default_metrics_interval(),
            offline_after: Self::default_offline_after(),
        }
    }
}

/// Bundle validity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleSettings {
    /// How long a signed bundle may be applied after it was issued. Agents
    /// refuse expired bundles and report themselves `stale`, so a bundle
    /// captured today cannot be replayed next month.
    #[serde(default = "BundleSettings::default_expiry")]
    pub expiry: Duration,
}

impl BundleSettings {
    fn default_expiry() -> Duration {
        Duration::from_secs(7 * 86_400)
    }
}

impl Default for BundleSettings {
    fn default() -> Self {
        BundleSettings {
            expiry: Self::default_expiry(),
        }
    }
}

/// Enrollment of new hosts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentSettings {
    /// Whether hosts enrolled with a token are `pending` until an operator
    /// approves them (`manual`), or approved at once (`auto`). A token
    /// created with `--auto-approve` approves its hosts either way.
    #[serde(default)]
    pub approval: Approval,
}

/// How enrolled hosts are approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// Hosts wait in `pending` until approved.
    #[default]
    Manual,
    /// Hosts are approved when they enroll.
    Auto,
}

/// Commit signature policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitSignatureSettings {
    /// Deploy only commits whose SSH signature verifies against one of
    /// `allowed_signers`. The signers of the last deployed commit decide, so
    /// a commit cannot make itself trusted.
    #[serde(default)]
    pub required: bool,
    /// Keys allowed to sign commits.
    #[serde(default)]
    pub allowed_signers: Vec<AllowedSigner>,
}

/// A key allowed to sign commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowedSigner {
    /// Who holds the key, for people reading the repo and the audit log.
    pub name: String,
    /// The OpenSSH public key, as in `~/.ssh/id_ed25519.pub`.
    pub key: String,
}

/// Rollout limits for scripts and actions that reach many hosts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// How many hosts run at once: a count (`10`) or a share of the
    /// targets (`"25%"`). Unlimited when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<Amount>,
    /// Stop starting new hosts once this many have failed: a count or a
    /// share of the targets. Never stops when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<Amount>,
}

/// A count of hosts, or a percentage of the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u8),
}

impl Amount {
    /// The count this amount means for `n_targets` hosts; a percentage
    /// rounds up so that it never means zero for a non-zero share.
    pub fn of(self, n_targets: usize) -> usize {
        match self {
            Amount::Count(count) => count as usize,
            Amount::Percent(percent) => (n_targets * usize::from(percent)).div_ceil(100),
        }
    }

    fn parse(text: &str) -> Result<Self, LeafError> {
        let invalid = || {
            LeafError::new(format!("invalid amount `{text}`"))
                .with_hint("write a count such as 10, or a percentage such as \"25%\"")
        };
        match text.strip_suffix('%') {
            Some(number) => {
                let percent: u8 = number.trim().parse().map_err(|_| invalid())?;
                if percent == 0 || percent > 100 {
                    return Err(LeafError::new(format!(
                        "percentage `{text}` is out of range 1%-100%"
                    )));
                }
                Ok(Amount::Percent(percent))
            }
            None => text.parse().map(Amount::Count).map_err(|_| invalid()),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(count) => write!(f, "{count}"),
            Amount::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(count) => serializer.serialize_u32(*count),
            Amount::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AmountVisitor;

        impl<'de> Visitor<'de> for AmountVisitor {
            type Value = Amount;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count or a percentage")
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Amount, E> {
                self.visit_str(&value.to_string())
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Amount, E> {
                self.visit_str(&value.to_string())
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Amount, E> {
                Amount::parse(value).or_else(|err| {
                    if leaf::report(err.message.clone(), err.hint.clone()) {
                        Ok(Amount::Count(0))
                    } else {
                        Err(E::custom(err))
                    }
                })
            }
        }

        deserializer.deserialize_any(AmountVisitor)
    }
}

impl JsonSchema for Amount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Amount".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A count of hosts (10) or a percentage of the targets (\"25%\").",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+%?$" }
            ]
        })
    }
}

/// Static facts about one named host: labels and template variables.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// The host's name, as the agent reports it (its hostname by default).
    pub name: String,
    /// What this host is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Labels added to the ones the agent reports (`hostname`, `os`,
    /// `os_version`, `arch`, `kernel`, and those of its enrollment token);
    /// these win on conflict.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Template variables for this host; they override policy variables.
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
}

/// A named set of hosts: those matching `selector`, plus those in `hosts`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The group's name, used in targets and RBAC scopes.
    pub name: String,
    /// What the hosts in this group have in common.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Hosts whose labels match. `{}` matches every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Hosts named explicitly; each needs a `Host` document.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Which hosts something applies to: the union of `groups`, `hosts` and
/// `selector`, minus `exclude`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Groups whose hosts are targeted.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Hosts targeted by name; each needs a `Host` document.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Hosts whose labels match are targeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Hosts taken out again, even when matched above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Exclusion>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.hosts.is_empty() && self.selector.is_none()
    }
}

/// Hosts to leave out of a target set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    /// Groups whose hosts are left out.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Hosts left out by name.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Hosts whose labels match are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
}

/// A label selector: every key must match. A value matches a label equal
/// to it; `*` and `?` are wildcards; a list matches any of its values.
/// Example: `{role: web, env: [prod, staging], hostname: "web-*"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Selector(pub BTreeMap<String, LabelMatch>);

impl Selector {
    /// Whether hosts with `labels` match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(key, wanted)| {
            labels.get(key).is_some_and(|value| {
                wanted
                    .patterns()
                    .iter()
                    .any(|pattern| glob_match(pattern, value))
            })
        })
    }
}

/// The accepted values of one label: one pattern, or a list of them.
/// Numbers and booleans are read as their text (`tier: 1` matches "1").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelMatch {
    One(String),
    Any(Vec<String>),
}

impl JsonSchema for LabelMatch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LabelMatch".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A label value (wildcards `*` and `?` allowed), or a list of values of which any may match.",
            "anyOf": [
                { "type": ["string", "number", "boolean"] },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

impl LabelMatch {
    pub fn patterns(&self) -> &[String] {
        match self {
            LabelMatch::One(one) => std::slice::from_ref(one),
            LabelMatch::Any(any) => any,
        }
    }
}

impl Serialize for LabelMatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LabelMatch::One(one) => serializer.serialize_str(one),
            LabelMatch::Any(any) => any.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for LabelMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelMatchVisitor;

        impl<'de> Visitor<'de> for LabelMatchVisitor {
            type Value = LabelMatch;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a label value or a list of label values")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<LabelMatch, E> {
                Ok(LabelMatch::One(value.to_string()))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<LabelMatch, E> {
                Ok(LabelMatch::One(value.to_string()))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<LabelMatch, E> {
                Ok(LabelMatch::One(value.to_string()))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<LabelMatch, E> {
                Ok(LabelMatch::One(value.to_string()))
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<LabelMatch, E> {
                Ok(LabelMatch::One(value.to_string()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LabelMatch, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element::<String>()? {
                    values.push(value);
                }
                Ok(LabelMatch::Any(values))
            }
        }

        deserializer.deserialize_any(LabelMatchVisitor)
    }
}

/// Shell-style wildcard match with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("web-*", "web-01"));
        assert!(glob_match("*", ""));
        assert!(glob_match("db-??", "db-01"));
        assert!(!glob_match("db-??", "db-001"));
        assert!(glob_match("*-prod-*", "eu-prod-7"));
        assert!(!glob_match("web", "web-01"));
    }

    #[test]
    fn selectors_and_every_key() {
        let labels: BTreeMap<String, String> = [("role", "web"), ("env", "prod")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let selector = |pairs: &[(&str, LabelMatch)]| {
            Selector(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            )
        };
        let one = |s: &str| LabelMatch::One(s.into());
        assert!(selector(&[]).matches(&labels));
        assert!(selector(&[("role", one("web"))]).matches(&labels));
        assert!(!selector(&[("role", one("web")), ("env", one("dev"))]).matches(&labels));
        assert!(
            selector(&[("env", LabelMatch::Any(vec!["dev".into(), "prod".into()]))])
                .matches(&labels)
        );
        assert!(!selector(&[("missing", one("*"))]).matches(&labels));
    }

    #[test]
    fn amounts() {
        assert_eq!(Amount::parse("25%").unwrap().of(10), 3);
        assert_eq!(Amount::parse("5").unwrap().of(100), 5);
        assert!(Amount::parse("0%").is_err());
        assert!(Amount::parse("150%").is_err());
        assert!(Amount::parse("many").is_err());
    }
}
