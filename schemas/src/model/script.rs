//! `Script` documents: reviewed scripts run ad hoc or on a cron schedule.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::fleet::{RolloutSpec, Targets};
use crate::cron::CronSchedule;
use crate::types::{AbsPath, Duration, TimeZone};

/// A script that operators can run on hosts, and that can run on a
/// schedule. Parameters reach the script as environment variables
/// (`MUSTER_PARAM_<NAME>`), never spliced into its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptSpec {
    /// The script's name, used by `muster run` and in RBAC
    /// (`scripts:run:<name>`).
    pub name: String,
    /// What the script does, shown where operators run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The program that runs the body, such as `/bin/bash` or
    /// `/usr/bin/python3`.
    #[serde(default = "ScriptSpec::default_interpreter")]
    pub interpreter: AbsPath,
    /// The script, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// A file in the fleet repo holding the script, relative to the repo
    /// root, such as `scripts/cleanup.sh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Typed parameters, checked before a run is accepted.
    #[serde(default)]
    pub parameters: Vec<ParameterSpec>,
    /// Stop the script after this long and report it timed out.
    #[serde(default = "ScriptSpec::default_timeout")]
    pub timeout: Duration,
    /// The user the script runs as, such as `root` or `postgres`; the
    /// agent's own user when not set (`root` for an agent installed as a
    /// system service). An agent sandboxed with `--root` refuses a script
    /// for another user than its own, rather than pretend to switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Run on a schedule: a standard crontab expression (`0 3 * * 1` is
    /// Mondays at 03:00) in `timezone`, on every host of `targets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<CronSchedule>,
    /// Time zone of `schedule`.
    #[serde(default)]
    pub timezone: TimeZone,
    /// Spread scheduled runs over this long after the due time, so that
    /// hosts do not all start at once.
    #[serde(default)]
    pub splay: Duration,
    /// Hosts the script may run on. Scheduled runs go to all of them;
    /// ad-hoc runs to those the operator picks among them. Any host when
    /// not set (ad-hoc scripts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Targets>,
    /// Rollout limits; the `Fleet` defaults apply when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

impl ScriptSpec {
    fn default_interpreter() -> AbsPath {
        "/bin/sh".parse().unwrap_or_default()
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(600)
    }
}

/// A typed script parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParameterSpec {
    /// Parameter name: lowercase letters, digits and `_`. The script reads
    /// it from the environment variable `MUSTER_PARAM_<NAME>`.
    pub name: String,
    /// What the parameter means, shown in forms and `--help`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The parameter's type.
    #[serde(rename = "type")]
    pub kind: ParameterType,
    /// A run must give this parameter (unless it has a default).
    #[serde(default)]
    pub required: bool,
    /// The value used when a run does not give one; of the parameter's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// The allowed values of an `enum` parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(default)]
    pub values: Vec<String>,
    /// The value is secret: it is redacted in logs, the audit log and the
    /// dashboard.
    #[serde(default)]
    pub secret: bool,
}

/// The type of a script parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParameterType {
    /// Any text (one line).
    String,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// One of `values`.
    Enum,
}

impl ParameterType {
    /// Whether `value` is of this type (and, for enums, one of `values`).
    pub fn accepts(self, value: &serde_json::Value, values: &[String]) -> bool {
        match self {
            ParameterType::String => value.as_str().is_some_and(|s| !s.contains(['\n', '\0'])),
            ParameterType::Integer => value.is_i64() || value.is_u64(),
            ParameterType::Boolean => value.is_boolean(),
            ParameterType::Enum => value
                .as_str()
                .is_some_and(|s| values.iter().any(|v| v == s)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParameterType::String => "string",
            ParameterType::Integer => "integer",
            ParameterType::Boolean => "boolean",
            ParameterType::Enum => "enum",
        }
    }
}
