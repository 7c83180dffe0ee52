//! Ad-hoc actions, between the user API and the jobs: which hosts a
//! request targets ([`resolve_targets`]), a script's typed parameters
//! checked and turned into the strings the agent passes on
//! ([`script_parameters`]), the signed job's script ([`script_job`]), the
//! rollout limits ([`rollout`]) and, once an action has ended, the outcome
//! commit in the audit repository ([`record_outcomes`]).
//!
//! Everything but the outcomes is pure: the caller hands in the deployed
//! commit's model and the stored hosts, so that a request is resolved
//! against the same commit its caller is authorized by.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use muster_schemas::job::ScriptJob;
use muster_schemas::model::{FleetModel, ParameterType, RolloutSpec, ScriptSpec};
use serde_json::Value;

use crate::audit::{self, AuditLog, Parameter};
use crate::compile::{self, HostInput};
use crate::reconcile::host_input;
use crate::store::{ActionState, HostRecord, JobFilter, JobState, Store, StoreError};

/// How many names a message lists before it counts the rest.
const N_NAMED: usize = 10;

/// How often the outcome sweep looks for ended actions whose outcome is
/// not recorded (an expiry, a replica that stopped half-way).
pub const OUTCOME_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The hosts a request names: the union of the approved hosts of `groups`
/// (as the deployed commit defines them) and the approved hosts named in
/// `hosts` (by name or id), in name order. A group the commit does not
/// define, or a host that is not enrolled and approved, is an error naming
/// it; so is a request that comes to no host at all.
pub fn resolve_targets(
    model: &FleetModel,
    stored: &[HostRecord],
    groups: &[String],
    hosts: &[String],
) -> Result<Vec<HostInput>, String> {
    if groups.is_empty() && hosts.is_empty() {
        return Err("no targets: name at least one group or host".into());
    }
    let unknown_groups: Vec<&str> = groups
        .iter()
        .filter(|group| !model.groups.contains_key(group.as_str()))
        .map(String::as_str)
        .collect();
    if !unknown_groups.is_empty() {
        return Err(format!(
            "unknown {} {}: the deployed commit defines {}",
            plural(unknown_groups.len(), "group", "groups"),
            names(&unknown_groups),
            names(&model.groups.keys().map(String::as_str).collect::<Vec<_>>())
        ));
    }
    let approved: Vec<&HostRecord> = stored
        .iter()
        .filter(|host| host.state == muster_schemas::protocol::HostState::Approved)
        .collect();
    let mut chosen: BTreeMap<String, HostInput> = BTreeMap::new();
    let mut unknown_hosts = Vec::new();
    for name in hosts {
        match approved
            .iter()
            .find(|host| &host.name == name || &host.id == name)
        {
            Some(host) => {
                chosen.insert(host.name.clone(), host_input(host));
            }
            None => unknown_hosts.push(name.as_str()),
        }
    }
    if !unknown_hosts.is_empty() {
        return Err(format!(
            "unknown {} {}: name enrolled, approved hosts (see `GET /v1/hosts`)",
            plural(unknown_hosts.len(), "host", "hosts"),
            names(&unknown_hosts)
        ));
    }
    if !groups.is_empty() {
        let targets = muster_schemas::model::Targets {
            groups: groups.to_vec(),
            ..Default::default()
        };
        for host in &approved {
            let input = host_input(host);
            if compile::targets_match(model, &targets, &input) {
                chosen.insert(host.name.clone(), input);
            }
        }
    }
    if chosen.is_empty() {
        return Err(format!(
            "{} {} no approved host: nothing to run on",
            names(&groups.iter().map(String::as_str).collect::<Vec<_>>()),
            if groups.len() == 1 { "has" } else { "have" }
        ));
    }
    Ok(chosen.into_values().collect())
}

/// Refuses hosts outside a script's own `targets` (a script without
/// `targets` may run anywhere): they are named, never dropped.
pub fn check_script_targets(
    model: &FleetModel,
    script: &ScriptSpec,
    hosts: &[HostInput],
) -> Result<(), String> {
    let Some(targets) = &script.targets else {
        return Ok(());
    };
    let outside: Vec<&str> = hosts
        .iter()
        .filter(|host| !compile::targets_match(model, targets, host))
        .map(|host| host.name.as_str())
        .collect();
    if outside.is_empty() {
        return Ok(());
    }
    Err(format!(
        "script `{}` may not run on {}: it is limited to its `targets` in the fleet repo",
        script.name,
        names(&outside)
    ))
}

/// The values of a script run, checked against its typed parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedParameters {
    /// What the agent gets, by name: the values as given (text of numbers
    /// and booleans), defaults filled in.
    pub values: BTreeMap<String, String>,
    /// The same for the audit record: secret ones marked.
    pub audit: Vec<Parameter>,
    /// What the action record and the API show: secrets `<redacted>`.
    pub redacted: Value,
}

/// Checks `given` against the script's parameters: unknown names are
/// refused, required ones must be there (or have a default), every value
/// must be of its type (a string holds no newline; an integer or boolean
/// may come as text, as `--param` sends it). Values are passed on
/// verbatim, never interpreted.
pub fn script_parameters(
    script: &ScriptSpec,
    given: &BTreeMap<String, Value>,
) -> Result<CheckedParameters, String> {
    let mut problems = Vec::new();
    for name in given.keys() {
        if !script.parameters.iter().any(|p| &p.name == name) {
            let known: Vec<&str> = script.parameters.iter().map(|p| p.name.as_str()).collect();
            problems.push(if known.is_empty() {
                format!(
                    "unknown parameter `{name}`: script `{}` takes none",
                    script.name
                )
            } else {
                format!(
                    "unknown parameter `{name}`: script `{}` takes {}",
                    script.name,
                    names(&known)
                )
            });
        }
    }
    let mut checked = CheckedParameters {
        values: BTreeMap::new(),
        audit: Vec::new(),
        redacted: Value::Object(serde_json::Map::new()),
    };
    for spec in &script.parameters {
        let value = match given.get(&spec.name).or(spec.default.as_ref()) {
            Some(value) => value,
            None if spec.required => {
                problems.push(format!(
                    "missing parameter `{}` ({}): script `{}` requires it",
                    spec.name,
                    spec.kind.as_str(),
                    script.name
                ));
                continue;
            }
            None => continue,
        };
        let Some(text) = parameter_text(spec.kind, value, &spec.values) else {
            // A secret's value stays out of the message.
            let shown = if spec.secret {
                String::new()
            } else {
                format!(" {}", one_line(&value.to_string()))
            };
            let expected = match spec.kind {
                ParameterType::String => "one line of text (no newline or NUL)".to_string(),
                ParameterType::Integer => "a whole number".to_string(),
                ParameterType::Boolean => "`true` or `false`".to_string(),
                ParameterType::Enum => format!(
                    "one of {}",
                    names(&spec.values.iter().map(String::as_str).collect::<Vec<_>>())
                ),
            };
            problems.push(format!(
                "parameter `{}` must be {expected}; got{shown}",
                spec.name
            ));
            continue;
        };
        checked.audit.push(if spec.secret {
            Parameter::secret(&spec.name, &text)
        } else {
            Parameter::new(&spec.name, &text)
        });
        if let Value::Object(map) = &mut checked.redacted {
            let shown = if spec.secret {
                audit::REDACTED.to_string()
            } else {
                text.clone()
            };
            map.insert(spec.name.clone(), Value::String(shown));
        }
        checked.values.insert(spec.name.clone(), text);
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems.join("; "))
    }
}

/// A value as the agent gets it, when it is of the type.
fn parameter_text(kind: ParameterType, value: &Value, values: &[String]) -> Option<String> {
    match (kind, value) {
        (ParameterType::Integer, Value::String(text)) => {
            text.parse::<i64>().ok().map(|_| text.clone())
        }
        (ParameterType::Integer, Value::Number(number)) if kind.accepts(value, values) => {
            Some(number.to_string())
        }
        (ParameterType::Boolean, Value::String(text)) => {
            matches!(text.as_str(), "true" | "false").then(|| text.clone())
        }
        (ParameterType::Boolean, Value::Bool(flag)) => Some(flag.to_string()),
        (ParameterType::String | ParameterType::Enum, Value::String(text))
            if kind.accepts(value, values) =>
        {
            Some(text.clone())
        }
        _ => None,
    }
}

/// The script a job runs: the deployed commit's body (its `source` file
/// inlined by the reconciler), interpreter, timeout and user.
pub fn script_job(
    script: &ScriptSpec,
    values: BTreeMap<String, String>,
) -> Result<ScriptJob, String> {
    let body = script.body.clone().ok_or_else(|| {
        format!(
            "script `{}` has no body in the deployed commit (its source file is not UTF-8 text): fix it in the fleet repo",
            script.name
        )
    })?;
    Ok(ScriptJob {
        name: script.name.clone(),
        interpreter: script.interpreter.as_str().to_string(),
        body,
        parameters: values,
        timeout_secs: script.timeout.as_secs().max(1),
        run_as: script.run_as.clone(),
    })
}

/// The rollout limits for `n_targets` hosts: the script's own, else the
/// `Fleet` defaults; a percentage is of the targets, at least one.
pub fn rollout(
    model: &FleetModel,
    own: Option<&RolloutSpec>,
    n_targets: usize,
) -> (Option<u32>, Option<u32>) {
    let spec = own.unwrap_or(&model.fleet.rollout);
    let count = |amount: muster_schemas::model::Amount| {
        u32::try_from(amount.of(n_targets).max(1)).unwrap_or(u32::MAX)
    };
    (
        spec.max_parallel.map(count),
        spec.failure_threshold.map(count),
    )
}

/// How long an action's jobs stay valid: an hour, plus each wave of the
/// rollout's run time, so that a slow rollout does not expire half-way.
pub fn job_ttl(timeout_secs: u64, n_targets: usize, max_parallel: Option<u32>) -> Duration {
    let per_wave = usize::try_from(max_parallel.unwrap_or(u32::MAX))
        .unwrap_or(usize::MAX)
        .max(1);
    let waves = u64::try_from(n_targets.div_ceil(per_wave)).unwrap_or(u64::MAX);
    let seconds = 3_600u64.saturating_add(waves.saturating_mul(timeout_secs));
    Duration::from_secs(seconds.min(30 * 86_400))
}

/// `a`, `b` and `c`: names in backticks, the first few, then a count.
pub fn names(items: &[&str]) -> String {
    let mut shown: Vec<String> = items
        .iter()
        .take(N_NAMED)
        .map(|name| format!("`{name}`"))
        .collect();
    if items.len() > N_NAMED {
        shown.push(format!("{} more", items.len() - N_NAMED));
    }
    shown.join(", ")
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

fn one_line(text: &str) -> String {
    let line: String = text.chars().take(80).collect();
    line.replace(['\n', '\r'], " ")
}

/// How far back the outcome sweep looks for ended actions.
const OUTCOME_LOOKBACK_SECS: i64 = 7 * 86_400;

/// Records the outcome of every action that ended (completed, stopped or
/// cancelled) in the last week and whose audit record this controller's
/// repository holds: the jobs' results in counts and per host. Replicas
/// share the database but each writes its own audit repository, so an
/// action another replica recorded is left to that replica; its outcome
/// here would be an outcome without an action. Idempotent: an outcome is
/// written at a path fixed by the action (its request id and end day) and
/// only when that path is free ([`AuditLog::record_outcome_once`]), so
/// retries never write one twice. `done` remembers the actions this
/// process has settled (recorded, or another replica's), so that a sweep
/// reads only what is new. Returns how many outcomes were written.
pub async fn record_outcomes(
    store: &Store,
    audit: &AuditLog,
    done: &std::sync::Mutex<BTreeSet<String>>,
) -> Result<usize, String> {
    let since = crate::server::now() - OUTCOME_LOOKBACK_SECS;
    let rows = sqlx::query(
        "SELECT id, request_id, finished_at, audit_commit FROM actions
         WHERE state <> 'running' AND audit_commit IS NOT NULL AND request_id IS NOT NULL
           AND finished_at >= $1
         ORDER BY finished_at",
    )
    .bind(since)
    .fetch_all(store.pool())
    .await
    .map_err(|err| StoreError::from(err).to_string())?;
    let mut written = 0;
    for row in &rows {
        use sqlx::Row;
        let read = || -> Result<(String, String, i64, String), sqlx::Error> {
            Ok((
                row.try_get("id")?,
                row.try_get("request_id")?,
                row.try_get("finished_at")?,
                row.try_get("audit_commit")?,
            ))
        };
        let (action_id, request_id, finished_at, audit_commit) =
            read().map_err(|err| StoreError::from(err).to_string())?;
        if done
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&action_id)
        {
            continue;
        }
        let (holds_action, has_outcome) = {
            let audit = audit.clone();
            let request_id = request_id.clone();
            tokio::task::spawn_blocking(move || -> Result<(bool, bool), audit::AuditError> {
                if !audit.has_action(&request_id, &audit_commit)? {
                    return Ok((false, false));
                }
                Ok((true, audit.has_outcome(&request_id, finished_at)?))
            })
            .await
            .map_err(|err| err.to_string())?
            .map_err(|err| err.to_string())?
        };
        if !holds_action {
            tracing::debug!(
                action = %action_id,
                request = %request_id,
                "action recorded by another replica; its outcome is left to it"
            );
        } else if !has_outcome {
            let Some(outcome) = outcome_of(store, &action_id)
                .await
                .map_err(|err| err.to_string())?
            else {
                continue;
            };
            if audit
                .record_outcome_once(outcome)
                .await
                .map_err(|err| err.to_string())?
                .is_some()
            {
                tracing::info!(action = %action_id, request = %request_id, "action outcome recorded");
                written += 1;
            }
        }
        done.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(action_id);
    }
    Ok(written)
}

/// The outcome record of an ended action.
async fn outcome_of(store: &Store, action_id: &str) -> Result<Option<audit::Outcome>, StoreError> {
    let Some(action) = store.action(action_id).await? else {
        return Ok(None);
    };
    let Some(request_id) = action.request_id.clone() else {
        return Ok(None);
    };
    let jobs = store
        .jobs(&JobFilter {
            action_id: Some(action_id.to_string()),
            limit: i64::MAX,
            ..JobFilter::default()
        })
        .await?;
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut details = BTreeMap::new();
    let host_names: BTreeMap<String, String> = store
        .hosts()
        .await?
        .into_iter()
        .map(|host| (host.id, host.name))
        .collect();
    for job in &jobs {
        *counts.entry(job.state.as_str()).or_default() += 1;
        let host = host_names
            .get(&job.host_id)
            .cloned()
            .unwrap_or_else(|| job.host_id.clone());
        let result = match job.exit_code {
            Some(code) => format!("{} (exit {code}), job {}", job.state.as_str(), job.id),
            None => format!("{}, job {}", job.state.as_str(), job.id),
        };
        details.insert(format!("host {host}"), result);
    }
    for (state, n) in &counts {
        details.insert(format!("n_{state}"), n.to_string());
    }
    let counted: Vec<String> = JobState::ALL
        .iter()
        .filter_map(|state| {
            counts
                .get(state.as_str())
                .map(|n| format!("{n} {}", state.as_str().replace('_', " ")))
        })
        .collect();
    let ended = match action.state {
        ActionState::Running => return Ok(None),
        ActionState::Completed => "completed",
        ActionState::Stopped => "stopped at its failure threshold",
        ActionState::Cancelled => "cancelled",
    };
    Ok(Some(audit::Outcome {
        request_id,
        summary: format!("{} {ended}: {}", action.summary, counted.join(", ")),
        details,
        time: action.finished_at.unwrap_or_else(crate::server::now),
    }))
}

/// Records the outcomes of ended actions, in the background of one
/// controller: at once when told an action may have ended
/// ([`Outcomes::poke`]: a result, a cancellation), and every
/// [`OUTCOME_SWEEP_INTERVAL`] for the rest (expiries, earlier failures).
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    wake: std::sync::Arc<tokio::sync::Notify>,
}

impl Outcomes {
    /// Asks for a sweep now.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Sweeps until `stop` resolves.
    pub async fn run(
        self,
        store: Store,
        audit: AuditLog,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let done = std::sync::Mutex::new(BTreeSet::new());
        loop {
            tokio::select! {
                () = tokio::time::sleep(OUTCOME_SWEEP_INTERVAL) => {}
                () = self.wake.notified() => {}
                () = &mut stop => return,
            }
            if let Err(err) = record_outcomes(&store, &audit, &done).await {
                tracing::warn!(error = %err, "cannot record action outcomes; trying again later");
            }
        }
    }
}

/// The distinct names among `hosts`, for an audit record's targets.
pub fn host_names(hosts: &[HostInput]) -> Vec<String> {
    hosts
        .iter()
        .map(|host| host.name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::model::ParameterSpec;

    fn script(parameters: Vec<ParameterSpec>) -> ScriptSpec {
        let mut script: ScriptSpec =
            serde_json::from_value(serde_json::json!({"name": "s", "body": "echo hi"})).unwrap();
        script.parameters = parameters;
        script
    }

    fn parameter(name: &str, kind: ParameterType) -> ParameterSpec {
        ParameterSpec {
            name: name.into(),
            description: None,
            kind,
            required: false,
            default: None,
            values: Vec::new(),
            secret: false,
        }
    }

    fn given(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn parameters_are_typed_and_passed_verbatim() {
        let mut service = parameter("service", ParameterType::String);
        service.required = true;
        let mut days = parameter("days", ParameterType::Integer);
        days.default = Some(serde_json::json!(14));
        let mut mode = parameter("mode", ParameterType::Enum);
        mode.values = vec!["fast".into(), "slow".into()];
        let mut password = parameter("password", ParameterType::String);
        password.secret = true;
        let script = script(vec![service, days, mode, password]);

        let hostile = "; rm -rf / $(touch x) `id` -rf";
        let checked = script_parameters(
            &script,
            &given(&[
                ("service", Value::String(hostile.into())),
                ("password", Value::String("hunter2 hunter2".into())),
            ]),
        )
        .unwrap();
        assert_eq!(checked.values["service"], hostile);
        assert_eq!(checked.values["days"], "14");
        assert!(!checked.values.contains_key("mode"));
        assert_eq!(checked.redacted["password"], audit::REDACTED);
        assert!(!checked.redacted.to_string().contains("hunter2"));
        assert!(
            checked
                .audit
                .iter()
                .any(|p| p.secret && p.name == "password")
        );

        let problems = script_parameters(
            &script,
            &given(&[
                ("service", Value::String("a\nb".into())),
                ("days", Value::String("ten".into())),
                ("mode", Value::String("medium".into())),
                ("password", Value::String("line\nbreak secret".into())),
                ("extra", Value::String("x".into())),
            ]),
        )
        .unwrap_err();
        assert!(problems.contains("unknown parameter `extra`"), "{problems}");
        assert!(
            problems.contains("`service` must be one line"),
            "{problems}"
        );
        assert!(
            problems.contains("`days` must be a whole number"),
            "{problems}"
        );
        assert!(problems.contains("one of `fast`, `slow`"), "{problems}");
        assert!(!problems.contains("break secret"), "{problems}");

        let missing = script_parameters(&script, &BTreeMap::new()).unwrap_err();
        assert!(missing.contains("missing parameter `service`"), "{missing}");
    }

    #[test]
    fn ttl_covers_every_wave() {
        assert_eq!(job_ttl(60, 10, None), Duration::from_secs(3_660));
        assert_eq!(job_ttl(60, 10, Some(2)), Duration::from_secs(3_900));
    }
}
