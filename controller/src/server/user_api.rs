//! The user API (`/v1`): ad-hoc actions (a script, a reboot, a service
//! operation), jobs and their results, cancellation, hosts and their
//! approval, and the token list.
//!
//! Every route takes a [`Principal`] (401 without one) and asks the RBAC of
//! the deployed commit before it does anything (403 with the refusal's
//! message otherwise): no route is open to everyone who is logged in.
//! Reads are scoped: a list shows the hosts the caller holds the
//! permission on. Actions are all or nothing: a target outside the
//! caller's scope refuses the whole request, naming it.
//!
//! Every mutating route keeps one order: authorize → write the audit
//! commit → act. When the audit commit cannot be written the route answers
//! 503 and nothing happens. Secret script parameters are redacted in the
//! audit record, in the action record and in every answer here; their
//! values travel only inside the signed jobs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_schemas::job::{JobKind, ServiceJob, is_valid_job_id};
use muster_schemas::model::Permission;
use muster_schemas::protocol::HostState;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::user_auth::{ClientAddress, Principal};
use super::{ApiError, AppState};
use crate::actions;
use crate::audit::{self, Parameter};
use crate::compile::HostInput;
use crate::jobs::{ActionRequest, JobsError, TOOL_JOB_TIMEOUT_SECS, create_action};
use crate::rbac::{AccessRules, Caller, Denied, Need};
use crate::reconcile::host_input;
use crate::store::{
    ActionRecord, ActionState, CancelOutcome, HostRecord, JobFilter, JobRecord, JobSource, JobState,
};

/// Action bodies hold names and parameters.
const MAX_ACTION_BODY: usize = 64 << 10;

/// Most jobs a list answers with.
const MAX_LISTED_JOBS: i64 = 1_000;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/actions",
            post(create).layer(DefaultBodyLimit::max(MAX_ACTION_BODY)),
        )
        .route("/v1/actions/{id}", get(show_action))
        .route("/v1/actions/{id}/cancel", post(cancel_action))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/hosts", get(list_hosts))
        .route("/v1/hosts/export", get(export_hosts))
        .route("/v1/plan", get(plan_route))
        .route("/v1/hosts/{id}/approve", post(approve_host))
        .route("/v1/hosts/{id}/reject", post(reject_host))
        .route("/v1/tokens", get(list_tokens))
        .with_state(state)
}

// Bodies and answers, shared with the command line.

/// `POST /v1/actions`: one of `script`, `reboot` or `service`, and the
/// targets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Run this `Script` of the deployed commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The script's parameters by name: strings (numbers and booleans as
    /// JSON values or as text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, Value>,
    /// Reboot the hosts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reboot: bool,
    /// Start, stop or restart a systemd unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceJob>,
    pub targets: TargetsBody,
}

/// Groups (of the deployed commit) and hosts (by name or id): the union
/// of their approved hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsBody {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// The answer to a created action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionCreated {
    pub action_id: String,
    pub request_id: String,
    /// The audit repository commit that records the action.
    pub audit_commit: String,
    /// One job per host, in rollout order.
    pub jobs: Vec<JobRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub host: String,
    pub host_id: String,
    pub job_id: String,
}

/// A job as lists show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: String,
    pub action_id: String,
    pub host: String,
    pub host_id: String,
    /// `script`, `reboot` or `service`.
    pub kind: String,
    pub state: String,
    pub source: String,
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
}

/// One job with its result: `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobSummary,
    /// The action's one-line summary.
    pub summary: String,
    /// The action's parameters, secret values `<redacted>`.
    pub parameters: Value,
    pub attempts: i64,
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<i64>,
    /// Bounded to 64 KiB by the agent and the store.
    pub stdout: String,
    pub stderr: String,
    /// Why it was refused or failed without running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An action with its progress: `GET /v1/actions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDetail {
    pub id: String,
    pub kind: String,
    /// `running`, `completed`, `stopped` or `cancelled`.
    pub state: String,
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub summary: String,
    pub targets: Value,
    /// Secret values `<redacted>`.
    pub parameters: Value,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_commit: Option<String>,
    /// Jobs per state.
    pub progress: BTreeMap<String, i64>,
    pub jobs: Vec<JobSummary>,
}

/// A host as `GET /v1/hosts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    pub id: String,
    pub name: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
    pub enrolled_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<i64>,
    pub applied_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_status: Option<String>,
}

/// `GET /v1/tokens`: enrollment tokens and API tokens, never the secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub enrollment: Vec<EnrollmentTokenSummary>,
    pub api: Vec<ApiTokenSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentTokenSummary {
    pub id: String,
    pub uses: i64,
    pub max_uses: i64,
    pub labels: BTreeMap<String, String>,
    pub auto_approve: bool,
    pub expires_at: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenSummary {
    pub id: String,
    pub name: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub revoked: bool,
}

// Helpers.

fn denied(denied: Denied) -> ApiError {
    tracing::info!(caller = %denied.caller, need = %denied.need, "request refused by RBAC");
    ApiError::forbidden(denied.to_string())
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("unknown {what} `{id}`"))
}

pub(crate) fn audit_unavailable(err: &audit::AuditError) -> ApiError {
    tracing::error!(error = %err, "cannot write the audit commit; the action is refused");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the audit repository cannot be written, so nothing was done: see the controller's log, then try again",
    )
}

/// The rules in force, or 503 before the first deploy: without a commit
/// there are no groups or scripts to act on (break-glass admins may still
/// read and approve hosts).
fn deployed_rules(state: &AppState) -> Result<Arc<AccessRules>, ApiError> {
    let rules = state.access.current();
    if rules.commit().is_none() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no commit of the fleet repo is deployed yet: fix the repo (see `muster commits list`) and try again",
        ));
    }
    Ok(rules)
}

pub(crate) async fn hosts_by_id(state: &AppState) -> Result<HashMap<String, HostRecord>, ApiError> {
    Ok(state
        .store
        .hosts()
        .await?
        .into_iter()
        .map(|host| (host.id.clone(), host))
        .collect())
}

/// The host inputs of the hosts with these ids (hosts removed since are
/// skipped: nothing of theirs is left to act on).
pub(crate) fn inputs_of<'a>(
    hosts: &HashMap<String, HostRecord>,
    ids: impl IntoIterator<Item = &'a str>,
) -> Vec<HostInput> {
    let mut inputs: Vec<HostInput> = ids
        .into_iter()
        .filter_map(|id| hosts.get(id))
        .map(host_input)
        .collect();
    inputs.sort_by(|a, b| a.id.cmp(&b.id));
    inputs.dedup_by(|a, b| a.id == b.id);
    inputs
}

fn job_summary(job: &JobRecord, hosts: &HashMap<String, HostRecord>) -> JobSummary {
    JobSummary {
        id: job.id.clone(),
        action_id: job.action_id.clone(),
        host: hosts
            .get(&job.host_id)
            .map_or_else(|| job.host_id.clone(), |host| host.name.clone()),
        host_id: job.host_id.clone(),
        kind: job.kind.clone(),
        state: job.state.as_str().into(),
        source: job.source.as_str().into(),
        requested_by: job.requested_by.clone(),
        exit_code: job.exit_code,
        created_at: job.created_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
    }
}

fn host_summary(host: &HostRecord) -> HostSummary {
    HostSummary {
        id: host.id.clone(),
        name: host.name.clone(),
        state: host.state.as_str().into(),
        labels: host.labels.clone(),
        enrolled_at: host.enrolled_at,
        last_seen_at: host.last_seen_at,
        applied_generation: host.applied_generation,
        run_status: host.run_status.clone(),
    }
}

fn check_id(id: &str, what: &str) -> Result<(), ApiError> {
    if is_valid_job_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("invalid {what} id `{id}`")))
    }
}

// Actions.

/// What an action body asks for, checked.
struct Planned {
    /// The job every target host gets.
    kind: JobKind,
    /// What the caller was authorized for, for the log.
    need: Need,
    /// The audit record's action: `scripts.run`, `actions.reboot`, …
    audit_action: &'static str,
    /// What it does, the start of the summary: `run cleanup`, `reboot`.
    what: String,
    /// The parameters for the audit record, secret ones marked so.
    parameters: Vec<Parameter>,
    /// The parameters as the action record shows them, secrets redacted.
    redacted: Value,
    /// `max_parallel` and `failure_threshold`.
    rollout: (Option<u32>, Option<u32>),
    timeout_secs: u64,
}

/// `POST /v1/actions`: authorize → audit commit → jobs.
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    address: ClientAddress,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The parser's message could quote a parameter's value.
    let body: ActionBody = serde_json::from_slice(&body).map_err(|err| {
        let hint = r#"{"script": "NAME", "params": {"key": "value"}, "targets": {"groups": ["web"], "hosts": []}}, or {"reboot": true, "targets": …}, or {"service": {"name": "nginx", "operation": "restart"}, "targets": …}"#;
        if err.is_data() && err.to_string().starts_with("unknown field") {
            let field = err.to_string();
            let field = field.split(',').next().unwrap_or_default().to_string();
            ApiError::bad_request(format!("{field}: the body is {hint}"))
        } else {
            ApiError::bad_request(format!("the body is not an action: send {hint}"))
        }
    })?;
    let answer = create_action_as(&state, &principal, &address, &body).await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// Creates the action `body` asks for on behalf of `principal`, in the
/// one order every mutating route keeps: authorize → audit commit → jobs.
/// The API and the dashboard's run form both come here.
pub(crate) async fn create_action_as(
    state: &AppState,
    principal: &Principal,
    address: &ClientAddress,
    body: &ActionBody,
) -> Result<ActionCreated, ApiError> {
    let caller = Caller::from(principal);
    let rules = deployed_rules(state)?;
    let model = Arc::clone(rules.model());
    let n_kinds = usize::from(body.script.is_some())
        + usize::from(body.reboot)
        + usize::from(body.service.is_some());
    if n_kinds != 1 {
        return Err(ApiError::bad_request(
            "name exactly one of `script`, `reboot` or `service`",
        ));
    }
    if body.script.is_none() && !body.params.is_empty() {
        return Err(ApiError::bad_request(
            "`params` go with a `script`: reboots and service operations take none",
        ));
    }
    let stored = state.store.hosts().await?;
    let hosts =
        actions::resolve_targets(&model, &stored, &body.targets.groups, &body.targets.hosts)
            .map_err(ApiError::bad_request)?;
    let target_text = target_text(&body.targets);

    let planned = if let Some(name) = &body.script {
        let Some(script) = model.scripts.get(name) else {
            return Err(ApiError::bad_request(format!(
                "unknown script `{name}`: the deployed commit has {}",
                actions::names(&model.scripts.keys().map(String::as_str).collect::<Vec<_>>())
            )));
        };
        let need = Need::RunScript(name.clone());
        rules
            .authorize(&caller, need.clone(), &hosts)
            .map_err(denied)?;
        actions::check_script_targets(&model, script, &hosts).map_err(ApiError::bad_request)?;
        let checked =
            actions::script_parameters(script, &body.params).map_err(ApiError::bad_request)?;
        let job = actions::script_job(script, checked.values).map_err(ApiError::bad_request)?;
        Planned {
            timeout_secs: job.timeout_secs,
            kind: JobKind::Script(job),
            need,
            audit_action: "scripts.run",
            what: format!("run {name}"),
            parameters: checked.audit,
            redacted: checked.redacted,
            rollout: actions::rollout(&model, script.rollout.as_ref(), hosts.len()),
        }
    } else if let Some(service) = &body.service {
        let need = Need::Permission(Permission::ActionsService);
        rules
            .authorize(&caller, need.clone(), &hosts)
            .map_err(denied)?;
        if !valid_unit(&service.name) {
            return Err(ApiError::bad_request(format!(
                "invalid unit name `{}`: use a systemd unit name such as `nginx` or `nginx.service`",
                service.name
            )));
        }
        Planned {
            kind: JobKind::Service(service.clone()),
            need,
            audit_action: "actions.service",
            what: format!("{} {}", service.operation.as_str(), service.name),
            parameters: vec![
                Parameter::new("unit", &service.name),
                Parameter::new("operation", service.operation.as_str()),
            ],
            redacted: serde_json::json!({"unit": service.name, "operation": service.operation.as_str()}),
            rollout: actions::rollout(&model, None, hosts.len()),
            timeout_secs: TOOL_JOB_TIMEOUT_SECS,
        }
    } else {
        let need = Need::Permission(Permission::ActionsReboot);
        rules
            .authorize(&caller, need.clone(), &hosts)
            .map_err(denied)?;
        Planned {
            kind: JobKind::Reboot,
            need,
            audit_action: "actions.reboot",
            what: "reboot".into(),
            parameters: Vec::new(),
            redacted: serde_json::json!({}),
            rollout: actions::rollout(&model, None, hosts.len()),
            timeout_secs: TOOL_JOB_TIMEOUT_SECS,
        }
    };

    let summary = format!("{} on {target_text}", planned.what);
    let request_id = audit::new_request_id();
    let now = state.user_auth.now();
    let committed = state
        .audit
        .record(audit::Action {
            request_id: request_id.clone(),
            who: principal.who(),
            action: planned.audit_action.into(),
            targets: actions::host_names(&hosts),
            summary: summary.clone(),
            parameters: planned.parameters,
            source: Some(address.text()),
            time: now,
        })
        .await
        .map_err(|err| audit_unavailable(&err))?;

    let (max_parallel, failure_threshold) = planned.rollout;
    let request = ActionRequest {
        kind: planned.kind,
        requested_by: principal.user.clone(),
        request_id: Some(request_id.clone()),
        summary: summary.clone(),
        targets: serde_json::to_value(&body.targets).unwrap_or(Value::Null),
        parameters: planned.redacted,
        source: JobSource::AdHoc,
        max_parallel,
        failure_threshold,
        ttl: actions::job_ttl(planned.timeout_secs, hosts.len(), max_parallel),
        audit_commit: Some(committed.commit_id.clone()),
        schedule: None,
    };
    let host_ids: Vec<String> = hosts.iter().map(|host| host.id.clone()).collect();
    let created = match create_action(
        &state.store,
        &state.key,
        &state.hub,
        &request,
        &host_ids,
        now,
    )
    .await
    {
        Ok(created) => created,
        Err(err) => return Err(action_not_created(state, &request_id, now, &err).await),
    };
    tracing::info!(
        user = %principal.user,
        need = %planned.need,
        action = %created.action_id,
        request = %request_id,
        n_hosts = hosts.len(),
        "ad-hoc action accepted"
    );
    let names: HashMap<&str, &str> = hosts
        .iter()
        .map(|host| (host.id.as_str(), host.name.as_str()))
        .collect();
    let answer = ActionCreated {
        action_id: created.action_id,
        request_id,
        audit_commit: committed.commit_id,
        jobs: created
            .jobs
            .into_iter()
            .map(|(host_id, job_id)| JobRef {
                host: names
                    .get(host_id.as_str())
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
                host_id,
                job_id,
            })
            .collect(),
    };
    Ok(answer)
}

/// The audit commit is written but the jobs could not be created: the
/// failure follows as the action's outcome, and the caller gets a 500.
async fn action_not_created(
    state: &AppState,
    request_id: &str,
    now: i64,
    err: &JobsError,
) -> ApiError {
    let outcome = audit::Outcome {
        request_id: request_id.to_string(),
        summary: format!(
            "not done: the jobs could not be created ({})",
            err.metric_label()
        ),
        details: BTreeMap::new(),
        time: now,
    };
    if let Err(audit_err) = state.audit.record_outcome(outcome).await {
        tracing::error!(error = %audit_err, request = %request_id, "cannot record that an action failed");
    }
    ApiError::internal(err)
}

/// `group web and host db-01` for summaries.
fn target_text(targets: &TargetsBody) -> String {
    let named = |singular: &str, names: &[String]| {
        let noun = if names.len() == 1 {
            singular.to_string()
        } else {
            format!("{singular}s")
        };
        format!("{noun} {}", names.join(", "))
    };
    let mut parts = Vec::new();
    if !targets.groups.is_empty() {
        parts.push(named("group", &targets.groups));
    }
    if !targets.hosts.is_empty() {
        parts.push(named("host", &targets.hosts));
    }
    parts.join(" and ")
}

/// A systemd unit name, as the agent checks it too.
fn valid_unit(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && !name.starts_with('-')
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':' | b'\\')
        })
}

/// An action with its jobs, in release order, and the hosts they run on.
pub(crate) struct ActionWithJobs {
    pub(crate) action: ActionRecord,
    pub(crate) jobs: Vec<JobRecord>,
    pub(crate) hosts: HashMap<String, HostRecord>,
    /// The inputs of the action's hosts that are still enrolled.
    pub(crate) inputs: Vec<HostInput>,
}

/// The action `id`, once the caller may `need` on every host of it.
pub(crate) async fn scoped_action(
    state: &AppState,
    caller: &Caller,
    id: &str,
    need: Permission,
) -> Result<ActionWithJobs, ApiError> {
    check_id(id, "action")?;
    let rules = state.access.current();
    rules.authorize(caller, need, &[]).map_err(denied)?;
    let scoped = action_with_jobs(state, id).await?;
    rules
        .authorize(caller, need, &scoped.inputs)
        .map_err(denied)?;
    Ok(scoped)
}

/// The action `id` as stored, without asking the RBAC.
async fn action_with_jobs(state: &AppState, id: &str) -> Result<ActionWithJobs, ApiError> {
    let action = state
        .store
        .action(id)
        .await?
        .ok_or_else(|| not_found("action", id))?;
    let mut jobs = state
        .store
        .jobs(&JobFilter {
            action_id: Some(id.to_string()),
            limit: i64::MAX,
            ..JobFilter::default()
        })
        .await?;
    jobs.sort_by_key(|job| job.position);
    let hosts = hosts_by_id(state).await?;
    let inputs = inputs_of(&hosts, jobs.iter().map(|job| job.host_id.as_str()));
    Ok(ActionWithJobs {
        action,
        jobs,
        hosts,
        inputs,
    })
}

/// `GET /v1/actions/{id}`: needs `jobs:read` on every host of the action.
async fn show_action(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ActionDetail>, ApiError> {
    let caller = Caller::from(&principal);
    let scoped = scoped_action(&state, &caller, &id, Permission::JobsRead).await?;
    Ok(Json(action_detail(&state, scoped).await?))
}

/// What `GET /v1/actions/{id}` answers: the action, its jobs and how many
/// are in each state.
async fn action_detail(state: &AppState, scoped: ActionWithJobs) -> Result<ActionDetail, ApiError> {
    let ActionWithJobs {
        action,
        jobs,
        hosts,
        inputs: _,
    } = scoped;
    let progress = state
        .store
        .action_progress(&action.id)
        .await?
        .into_iter()
        .map(|(job_state, n)| (job_state.as_str().to_string(), n))
        .collect();
    Ok(ActionDetail {
        id: action.id.clone(),
        kind: action.kind.clone(),
        state: action.state.as_str().into(),
        requested_by: action.requested_by.clone(),
        request_id: action.request_id.clone(),
        summary: action.summary.clone(),
        targets: action.targets.clone(),
        parameters: action.parameters.clone(),
        source: action.source.as_str().into(),
        max_parallel: action.max_parallel,
        failure_threshold: action.failure_threshold,
        created_at: action.created_at,
        finished_at: action.finished_at,
        audit_commit: action.audit_commit.clone(),
        progress,
        jobs: jobs.iter().map(|job| job_summary(job, &hosts)).collect(),
    })
}

/// `POST /v1/actions/{id}/cancel`: needs `jobs:cancel` on every host of
/// the action; its jobs not yet handed out are cancelled.
async fn cancel_action(
    State(state): State<AppState>,
    principal: Principal,
    address: ClientAddress,
    Path(id): Path<String>,
) -> Result<Json<ActionDetail>, ApiError> {
    cancel_action_as(&state, &principal, &address, &id).await?;
    let cancelled = action_with_jobs(&state, &id).await?;
    Ok(Json(action_detail(&state, cancelled).await?))
}

/// Cancels the jobs of action `id` not yet handed out, on behalf of
/// `principal` (`jobs:cancel` on every host of it), audited first. The
/// API and the dashboard's cancel button both come here.
pub(crate) async fn cancel_action_as(
    state: &AppState,
    principal: &Principal,
    address: &ClientAddress,
    id: &str,
) -> Result<(), ApiError> {
    let caller = Caller::from(principal);
    let ActionWithJobs { action, inputs, .. } =
        scoped_action(state, &caller, id, Permission::JobsCancel).await?;
    if action.state != ActionState::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "action `{id}` is {} already: nothing to cancel",
                action.state.as_str()
            ),
        ));
    }
    let now = state.user_auth.now();
    state
        .audit
        .record(audit::Action {
            request_id: audit::new_request_id(),
            who: principal.who(),
            action: "actions.cancel".into(),
            targets: inputs.iter().map(|host| host.name.clone()).collect(),
            summary: format!("cancel action {id} ({})", action.summary),
            parameters: vec![Parameter::new("action", id)],
            source: Some(address.text()),
            time: now,
        })
        .await
        .map_err(|err| audit_unavailable(&err))?;
    state
        .store
        .cancel_action(id, now)
        .await?
        .ok_or_else(|| not_found("action", id))?;
    crate::jobs::release_and_notify(&state.store, &state.hub, id, now).await?;
    state.outcomes.poke();
    tracing::info!(user = %principal.user, action = %id, "action cancelled");
    Ok(())
}

/// `GET /v1/jobs?action=&host=&state=&limit=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    action: Option<String>,
    /// A host name or id.
    host: Option<String>,
    state: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/jobs`: `jobs:read`; only jobs of hosts in the caller's scope.
async fn list_jobs(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<JobsQuery>,
) -> Result<Json<Vec<JobSummary>>, ApiError> {
    let caller = Caller::from(&principal);
    let rules = state.access.current();
    rules
        .authorize(&caller, Permission::JobsRead, &[])
        .map_err(denied)?;
    let hosts = hosts_by_id(&state).await?;
    let job_state = match &query.state {
        None => None,
        Some(text) => Some(JobState::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown job state `{text}`: use one of {}",
                JobState::ALL.map(JobState::as_str).join(", ")
            ))
        })?),
    };
    let host_id = match &query.host {
        None => None,
        Some(name) => {
            let host = hosts
                .values()
                .find(|host| &host.name == name || &host.id == name)
                .ok_or_else(|| not_found("host", name))?;
            rules
                .authorize(&caller, Permission::JobsRead, &[host_input(host)])
                .map_err(denied)?;
            Some(host.id.clone())
        }
    };
    if let Some(action) = &query.action {
        check_id(action, "action")?;
    }
    let jobs = state
        .store
        .jobs(&JobFilter {
            host_id,
            action_id: query.action.clone(),
            state: job_state,
            limit: query.limit.unwrap_or(100).clamp(1, MAX_LISTED_JOBS),
        })
        .await?;
    let inputs: Vec<HostInput> = hosts.values().map(host_input).collect();
    let in_scope: std::collections::HashSet<&str> = rules
        .hosts_in_scope(&caller, Permission::JobsRead, &inputs)
        .into_iter()
        .map(|host| host.id.as_str())
        .collect();
    Ok(Json(
        jobs.iter()
            .filter(|job| in_scope.contains(job.host_id.as_str()))
            .map(|job| job_summary(job, &hosts))
            .collect(),
    ))
}

/// The job and its host's input, once the caller may `need` on it.
async fn scoped_job(
    state: &AppState,
    caller: &Caller,
    id: &str,
    need: Permission,
) -> Result<(JobRecord, HashMap<String, HostRecord>), ApiError> {
    check_id(id, "job")?;
    let rules = state.access.current();
    rules.authorize(caller, need, &[]).map_err(denied)?;
    let job = state
        .store
        .job(id)
        .await?
        .ok_or_else(|| not_found("job", id))?;
    let hosts = hosts_by_id(state).await?;
    let inputs = inputs_of(&hosts, [job.host_id.as_str()]);
    rules.authorize(caller, need, &inputs).map_err(denied)?;
    Ok((job, hosts))
}

/// `GET /v1/jobs/{id}`: the job with its result.
async fn show_job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<JobDetail>, ApiError> {
    let caller = Caller::from(&principal);
    let (job, hosts) = scoped_job(&state, &caller, &id, Permission::JobsRead).await?;
    let action = state.store.action(&job.action_id).await?;
    Ok(Json(JobDetail {
        job: job_summary(&job, &hosts),
        summary: action
            .as_ref()
            .map(|action| action.summary.clone())
            .unwrap_or_default(),
        parameters: action.map_or(Value::Null, |action| action.parameters),
        attempts: job.attempts,
        expires_at: job.expires_at,
        delivered_at: job.delivered_at,
        stdout: job.stdout.clone().unwrap_or_default(),
        stderr: job.stderr.clone().unwrap_or_default(),
        message: job.message.clone(),
    }))
}

/// `POST /v1/jobs/{id}/cancel`: a job no agent has been given yet.
async fn cancel_job(
    State(state): State<AppState>,
    principal: Principal,
    address: ClientAddress,
    Path(id): Path<String>,
) -> Result<Json<JobSummary>, ApiError> {
    let caller = Caller::from(&principal);
    let (job, hosts) = scoped_job(&state, &caller, &id, Permission::JobsCancel).await?;
    let too_late = |job_state: JobState| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job `{id}` is {}: only pending and queued jobs can be cancelled (a delivered job may be running)",
                job_state.as_str()
            ),
        )
    };
    if !matches!(job.state, JobState::Pending | JobState::Queued) {
        return Err(too_late(job.state));
    }
    let now = state.user_auth.now();
    let host = job_summary(&job, &hosts).host;
    let request_id = audit::new_request_id();
    state
        .audit
        .record(audit::Action {
            request_id: request_id.clone(),
            who: principal.who(),
            action: "jobs.cancel".into(),
            targets: vec![host],
            summary: format!("cancel job {id}"),
            parameters: vec![Parameter::new("job", &id)],
            source: Some(address.text()),
            time: now,
        })
        .await
        .map_err(|err| audit_unavailable(&err))?;
    match state.store.cancel_job(&id, now).await? {
        CancelOutcome::Cancelled { action_id } => {
            crate::jobs::release_and_notify(&state.store, &state.hub, &action_id, now).await?;
            state.outcomes.poke();
        }
        CancelOutcome::TooLate(job_state) => {
            let outcome = audit::Outcome {
                request_id,
                summary: format!("not done: the job became {} first", job_state.as_str()),
                details: BTreeMap::new(),
                time: now,
            };
            if let Err(err) = state.audit.record_outcome(outcome).await {
                tracing::error!(error = %err, "cannot record that a cancellation came too late");
            }
            return Err(too_late(job_state));
        }
        CancelOutcome::NotFound => return Err(not_found("job", &id)),
    }
    tracing::info!(user = %principal.user, job = %id, "job cancelled");
    let job = state
        .store
        .job(&id)
        .await?
        .ok_or_else(|| not_found("job", &id))?;
    Ok(Json(job_summary(&job, &hosts)))
}

// Hosts.

/// `GET /v1/hosts`: the hosts (any state) in the caller's `hosts:read`
/// scope, by name.
async fn list_hosts(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<HostSummary>>, ApiError> {
    let caller = Caller::from(&principal);
    let rules = state.access.current();
    rules
        .authorize(&caller, Permission::HostsRead, &[])
        .map_err(denied)?;
    let hosts = hosts_by_id(&state).await?;
    let inputs: Vec<HostInput> = hosts.values().map(host_input).collect();
    let mut shown: Vec<HostSummary> = rules
        .hosts_in_scope(&caller, Permission::HostsRead, &inputs)
        .into_iter()
        .filter_map(|input| hosts.get(&input.id))
        .map(host_summary)
        .collect();
    shown.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(shown))
}

/// `GET /v1/hosts/export`: the inventory `muster plan` compiles for (as
/// `muster hosts export` writes it): the approved hosts the caller holds
/// `hosts:read` on, with their labels and facts.
async fn export_hosts(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<crate::plan::Inventory>, ApiError> {
    let caller = Caller::from(&principal);
    let rules = state.access.current();
    rules
        .authorize(&caller, Permission::HostsRead, &[])
        .map_err(denied)?;
    let hosts = hosts_by_id(&state).await?;
    let inputs: Vec<HostInput> = hosts
        .values()
        .filter(|host| host.state == HostState::Approved)
        .map(host_input)
        .collect();
    let mut shown: Vec<crate::plan::InventoryHost> = rules
        .hosts_in_scope(&caller, Permission::HostsRead, &inputs)
        .into_iter()
        .map(|input| crate::plan::InventoryHost {
            name: input.name.clone(),
            id: input.id.clone(),
            labels: input.labels.clone(),
            facts: input.facts.clone(),
        })
        .collect();
    shown.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(crate::plan::Inventory {
        version: crate::plan::FORMAT_VERSION,
        hosts: shown,
    }))
}

/// What `GET /v1/plan` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanQuery {
    /// Revisions of the tracked repository: commit ids, or branch names
    /// (any branch: one other than the tracked branch is fetched first).
    pub base: String,
    pub head: String,
    /// `json` (the default), `text` or `markdown`.
    #[serde(default)]
    pub format: Option<String>,
}

/// `GET /v1/plan?base=REV&head=REV[&format=json|text|markdown]`: the plan
/// `muster plan` makes, between two commits or branches of the tracked
/// repository (a branch is fetched when named), for the approved
/// hosts the caller holds `hosts:read` on; `commits:read` is needed. An
/// invalid head answers 422 with its diagnostics.
async fn plan_route(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<PlanQuery>,
) -> Result<Response, ApiError> {
    let caller = Caller::from(&principal);
    // Refused callers learn nothing, not even that the format is wrong.
    state
        .access
        .current()
        .authorize(&caller, Permission::CommitsRead, &[])
        .map_err(denied)?;
    let format = query.format.clone().unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "text" | "markdown") {
        return Err(ApiError::bad_request(
            "`format` is one of json, text and markdown",
        ));
    }
    let plan = match plan_as(&state, &caller, &query.base, &query.head).await? {
        PlanAnswer::Plan(plan) => plan,
        PlanAnswer::InvalidHead { error, diagnostics } => {
            return Ok(invalid_head(error, &diagnostics));
        }
    };
    Ok(match format.as_str() {
        "text" => crate::commands::plan::render_text(&plan).into_response(),
        "markdown" => crate::commands::plan::render_markdown(&plan).into_response(),
        _ => Json(plan).into_response(),
    })
}

/// A plan, or why its head cannot be planned.
pub(crate) enum PlanAnswer {
    Plan(Box<crate::plan::Plan>),
    /// The head does not validate (`invalid_head`) or does not compile
    /// (`head_does_not_compile`): every diagnostic.
    InvalidHead {
        error: &'static str,
        diagnostics: Vec<muster_schemas::Diagnostic>,
    },
}

/// The plan from `base` to `head` (revisions of the tracked repository; a
/// branch is fetched when named) for the approved hosts `caller` holds
/// `hosts:read` on; `commits:read` is needed. `GET /v1/plan` and the
/// dashboard's plan page both come here.
pub(crate) async fn plan_as(
    state: &AppState,
    caller: &Caller,
    base: &str,
    head: &str,
) -> Result<PlanAnswer, ApiError> {
    let rules = state.access.current();
    rules
        .authorize(caller, Permission::CommitsRead, &[])
        .map_err(denied)?;
    let hosts = hosts_by_id(state).await?;
    let inputs: Vec<HostInput> = hosts
        .values()
        .filter(|host| host.state == HostState::Approved)
        .map(host_input)
        .collect();
    let inventory = crate::plan::Inventory {
        version: crate::plan::FORMAT_VERSION,
        hosts: rules
            .hosts_in_scope(caller, Permission::HostsRead, &inputs)
            .into_iter()
            .map(|input| crate::plan::InventoryHost {
                name: input.name.clone(),
                id: input.id.clone(),
                labels: input.labels.clone(),
                facts: input.facts.clone(),
            })
            .collect(),
    };
    let source = Arc::clone(&state.source);
    let now = chrono::Utc::now();
    let (base, head) = (base.to_string(), head.to_string());
    let built = tokio::task::spawn_blocking(move || {
        let source = source.lock().unwrap_or_else(|p| p.into_inner());
        let base = plan_revision(&source, &base)?;
        let head = plan_revision(&source, &head)?;
        crate::plan::build(&source, &base, &head, &inventory, now)
    })
    .await
    .map_err(ApiError::internal)?;
    match built {
        Ok(plan) => Ok(PlanAnswer::Plan(Box::new(plan))),
        Err(crate::plan::PlanError::Source(crate::source::SourceError::UnknownCommit {
            commit,
        })) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no commit or branch `{commit}` in the tracked repository: push it, or give a commit id"
            ),
        )),
        Err(crate::plan::PlanError::Source(err)) => Err(ApiError::internal(err)),
        Err(crate::plan::PlanError::InvalidHead(diagnostics)) => Ok(PlanAnswer::InvalidHead {
            error: "invalid_head",
            diagnostics,
        }),
        Err(crate::plan::PlanError::HeadDoesNotCompile(diagnostics)) => {
            Ok(PlanAnswer::InvalidHead {
                error: "head_does_not_compile",
                diagnostics,
            })
        }
    }
}

/// The revision to plan for what a caller named: a commit or a revision
/// the mirror resolves as it is, or else a branch of the tracked
/// repository, fetched now (a pull request's branch). A name that is
/// neither is left as it is, and resolving it answers 404.
fn plan_revision(
    source: &crate::source::GitSource,
    revision: &str,
) -> Result<String, crate::plan::PlanError> {
    if source.resolve(revision).is_ok() {
        return Ok(revision.to_string());
    }
    Ok(source
        .fetch_for_plan(revision)?
        .unwrap_or_else(|| revision.to_string()))
}

/// 422 with the head's diagnostics, in the form of `muster plan --format json`.
fn invalid_head(error: &str, diagnostics: &[muster_schemas::Diagnostic]) -> Response {
    let body = serde_json::json!({
        "version": crate::plan::FORMAT_VERSION,
        "error": error,
        "diagnostics": diagnostics,
    });
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

async fn approve_host(
    state: State<AppState>,
    principal: Principal,
    address: ClientAddress,
    id: Path<String>,
) -> Result<Json<HostSummary>, ApiError> {
    set_host_state(state, principal, address, id, HostState::Approved).await
}

async fn reject_host(
    state: State<AppState>,
    principal: Principal,
    address: ClientAddress,
    id: Path<String>,
) -> Result<Json<HostSummary>, ApiError> {
    set_host_state(state, principal, address, id, HostState::Rejected).await
}

/// `POST /v1/hosts/{name or id}/approve|reject`: `hosts:approve` on the
/// host (its labels decide its groups), audited.
async fn set_host_state(
    State(state): State<AppState>,
    principal: Principal,
    address: ClientAddress,
    Path(id): Path<String>,
    new_state: HostState,
) -> Result<Json<HostSummary>, ApiError> {
    let updated = change_host_state(&state, &principal, &address, &id, new_state).await?;
    Ok(Json(host_summary(&updated)))
}

/// Approves or rejects a host (by name or id) for `principal`, as the API
/// and the dashboard both do it: `hosts:approve` on the host → the audit
/// commit → the new state. Returns the host as it is now.
pub(crate) async fn change_host_state(
    state: &AppState,
    principal: &Principal,
    address: &ClientAddress,
    id: &str,
    new_state: HostState,
) -> Result<HostRecord, ApiError> {
    let caller = Caller::from(principal);
    let rules = state.access.current();
    rules
        .authorize(&caller, Permission::HostsApprove, &[])
        .map_err(denied)?;
    let host = state
        .store
        .find_host(id)
        .await?
        .ok_or_else(|| not_found("host", id))?;
    rules
        .authorize(&caller, Permission::HostsApprove, &[host_input(&host)])
        .map_err(denied)?;
    let verb = match new_state {
        HostState::Approved => "approve",
        HostState::Rejected => "reject",
        HostState::Pending => "reset",
    };
    state
        .audit
        .record(audit::Action {
            request_id: audit::new_request_id(),
            who: principal.who(),
            action: format!("hosts.{verb}"),
            targets: vec![host.name.clone()],
            summary: format!("{verb} host {} ({})", host.name, host.id),
            parameters: Vec::new(),
            source: Some(address.text()),
            time: state.user_auth.now(),
        })
        .await
        .map_err(|err| audit_unavailable(&err))?;
    let updated = state
        .store
        .set_host_state(&host.id, new_state)
        .await?
        .ok_or_else(|| not_found("host", id))?;
    // An approved host gets its bundle on the reconciler's next run.
    state.trigger.fire();
    state.hub.ui.notify(super::hub::Topic::Hosts);
    state.hub.ui.notify(super::hub::Topic::Enrollment);
    tracing::info!(user = %principal.user, host = %host.name, state = new_state.as_str(), "host state set");
    Ok(updated)
}

// Tokens.

/// `GET /v1/tokens`: `tokens:manage` (fleet-wide). The API creates no
/// tokens: enrollment tokens come from `muster token create` or the
/// dashboard's enrollment page (one audited path,
/// `commands::admin::create_enrollment_token`), API tokens from `muster
/// apitoken create`.
async fn list_tokens(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<TokenList>, ApiError> {
    let caller = Caller::from(&principal);
    state
        .access
        .authorize(&caller, Permission::TokensManage, &[])
        .map_err(denied)?;
    let enrollment = state
        .store
        .tokens()
        .await?
        .into_iter()
        .map(|token| EnrollmentTokenSummary {
            id: token.id,
            uses: token.uses,
            max_uses: token.max_uses,
            labels: token.labels,
            auto_approve: token.auto_approve,
            expires_at: token.expires_at,
            revoked: token.revoked_at.is_some(),
        })
        .collect();
    let api = state
        .store
        .api_tokens()
        .await?
        .into_iter()
        .map(|token| ApiTokenSummary {
            id: token.id,
            name: token.name,
            user: token.user,
            expires_at: token.expires_at,
            revoked: token.revoked_at.is_some(),
        })
        .collect();
    Ok(Json(TokenList { enrollment, api }))
}
