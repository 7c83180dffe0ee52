//! `AlertRule`, `Channel` and `Window` documents.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::fleet::Targets;
use crate::cron::CronSchedule;
use crate::types::{AbsPath, Duration, TimeZone};

/// A condition on hosts that raises an alert when it holds for `for`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleSpec {
    /// The rule's name.
    pub name: String,
    /// What the alert means and what to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What is watched.
    pub condition: Condition,
    /// How long the condition must hold before the alert fires.
    #[serde(rename = "for", default)]
    pub for_duration: Duration,
    /// How urgent the alert is.
    #[serde(default)]
    pub severity: AlertSeverity,
    /// Hosts the rule watches.
    pub targets: Targets,
    /// Names of the `Channel`s notified when the alert fires and resolves.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Notify again after this long while the alert still fires; once
    /// when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_every: Option<Duration>,
}

/// What an alert rule watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// CPU use in percent of all cores.
    Cpu(Threshold),
    /// Memory use in percent.
    Memory(Threshold),
    /// Disk use in percent, of one mount point or of the fullest one.
    Disk(DiskThreshold),
    /// One-minute load average per core.
    Load(Threshold),
    /// The host has not reported for the fleet's `agent.offline_after`.
    Offline,
    /// The host differs from its bundle.
    Drift,
    /// A compliance check fails.
    CheckFailing(CheckFailing),
    /// A job failed.
    JobFailed(JobFailed),
}

impl Condition {
    pub fn name(&self) -> &'static str {
        match self {
            Condition::Cpu(_) => "cpu",
            Condition::Memory(_) => "memory",
            Condition::Disk(_) => "disk",
            Condition::Load(_) => "load",
            Condition::Offline => "offline",
            Condition::Drift => "drift",
            Condition::CheckFailing(_) => "check_failing",
            Condition::JobFailed(_) => "job_failed",
        }
    }
}

/// A metric threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Fire when the value is above this.
    pub above: f64,
}

/// A disk use threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskThreshold {
    /// Fire when use in percent is above this.
    pub above: f64,
    /// The mount point watched; the fullest one when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<AbsPath>,
}

/// Which failing checks raise the alert.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckFailing {
    /// Only this check (by name); any check when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

/// Which failed jobs raise the alert.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFailed {
    /// Only runs of this script; any job when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
}

/// How urgent an alert is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    /// For the record; nobody needs to act.
    Info,
    /// Someone should look during working hours (the default).
    #[default]
    Warning,
    /// Someone should act now.
    Critical,
}

/// Where notifications go. Set exactly one of `webhook`, `slack` and
/// `email`. Secrets are named by environment variable on the controller,
/// never written here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// The channel's name, used in alert rules.
    pub name: String,
    /// Who is reached through this channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// POST a JSON document to a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookChannel>,
    /// Post to a Slack incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackChannel>,
    /// Send mail over SMTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailChannel>,
}

/// A generic webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookChannel {
    /// The URL to POST to, when it holds no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Environment variable holding the URL, when the URL is a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// Environment variable holding a key; each request then carries an
    /// `X-Muster-Signature-256` HMAC of its body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Extra HTTP headers (no secrets: use `secret_env`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A Slack incoming webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackChannel {
    /// Environment variable holding the incoming-webhook URL (a secret).
    pub webhook_url_env: String,
    /// Channel to post to, when the webhook allows overriding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// Mail over SMTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailChannel {
    /// Recipients.
    pub to: Vec<String>,
    /// Sender address.
    pub from: String,
    /// SMTP server host name.
    pub smtp_host: String,
    /// SMTP port (STARTTLS on 587 by default).
    #[serde(default = "EmailChannel::default_port")]
    pub smtp_port: u16,
    /// Environment variable holding the SMTP user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_env: Option<String>,
    /// Environment variable holding the SMTP password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

impl EmailChannel {
    fn default_port() -> u16 {
        587
    }
}

/// A maintenance window: from each `schedule` start, for `duration`, on
/// the hosts of `targets`, alerts are silenced and/or rollouts are held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// The window's name.
    pub name: String,
    /// Why the window exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When the window opens: a crontab expression in `timezone`.
    pub schedule: CronSchedule,
    /// How long the window stays open.
    pub duration: Duration,
    /// Time zone of `schedule`.
    #[serde(default)]
    pub timezone: TimeZone,
    /// The hosts the window covers.
    pub targets: Targets,
    /// Silence alerts on these hosts while the window is open.
    #[serde(default = "default_true")]
    pub silence_alerts: bool,
    /// Start no scheduled or ad-hoc rollouts on these hosts while the
    /// window is open.
    #[serde(default)]
    pub hold_rollouts: bool,
}

fn default_true() -> bool {
    true
}
