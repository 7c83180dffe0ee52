//! The dashboard's jobs pages: `GET /jobs`, the last actions (scheduled
//! and ad-hoc) the user may read with their progress, and the form that
//! runs a script; `POST /jobs/run`; `GET /jobs/{id}`, one action with
//! each host's result; `POST /jobs/{id}/cancel`.
//!
//! Running and cancelling go through the very functions `POST
//! /v1/actions` and `POST /v1/actions/{id}/cancel` use (authorize → audit
//! commit → jobs), so the dashboard can do nothing the API would refuse.
//! An action is listed when the user may read the jobs of every host it
//! ran on, as `GET /v1/actions/{id}` requires: every listed action opens.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use muster_schemas::model::{ParameterSpec, ParameterType, Permission, ScriptSpec};
use muster_web::Section;
use muster_web::jobs::{
    self as view, ActionRow, ChosenScript, Counts, Field, FieldKind, JobView, RunForm, ScriptChoice,
};
use serde::Deserialize;
use serde_json::Value;
use sqlx::Row;

use super::{CsrfForm, PageError, Viewer, see_other_with, success};
use crate::actions;
use crate::rbac::{Caller, Need};
use crate::server::AppState;
use crate::server::user_api::{
    ActionBody, ActionWithJobs, TargetsBody, cancel_action_as, create_action_as, hosts_by_id,
    inputs_of, scoped_action,
};
use crate::server::user_auth::ClientAddress;
use crate::store::{ActionState, JobState, StoreError};

/// Actions the list looks at, newest first (those the user may not read
/// are left out, so it may show fewer).
const N_LISTED_ACTIONS: i64 = 50;
/// Jobs an action's page shows at once: each may hold 128 KiB of output.
const JOBS_PER_PAGE: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/run", post(run))
        .route("/jobs/{id}", get(detail))
        .route("/jobs/{id}/cancel", post(cancel))
}

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    /// The script picked in the run form's first step.
    #[serde(default)]
    script: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<ListParams>,
) -> Result<Response, PageError> {
    viewer.require(&state, Permission::JobsRead)?;
    let run = run_form(&state, &viewer.caller()).map(|mut form| {
        if let Some(name) = params.script.as_deref().filter(|name| !name.is_empty()) {
            if form.scripts.iter().any(|script| script.name == name) {
                form.chosen = chosen_script(&state, name, &Submitted::default());
            } else {
                form.unknown_script = Some(name.to_string());
            }
        }
        form
    });
    let page = jobs_page(&state, &viewer, &uri.to_string(), run).await?;
    Ok(viewer.page(page))
}

async fn jobs_page(
    state: &AppState,
    viewer: &Viewer,
    url: &str,
    run: Option<RunForm>,
) -> Result<muster_web::Markup, PageError> {
    let actions = readable_actions(state, &viewer.caller()).await?;
    let chrome = viewer.chrome(state, Section::Jobs);
    Ok(view::render(
        &chrome,
        &view::Jobs {
            url: url.to_string(),
            actions,
            run,
        },
    ))
}

/// The last actions whose every host the caller may read the jobs of,
/// with their jobs counted: one query for the jobs of all of them.
async fn readable_actions(state: &AppState, caller: &Caller) -> Result<Vec<ActionRow>, PageError> {
    let actions = state.store.actions(N_LISTED_ACTIONS).await?;
    if actions.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=actions.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "SELECT action_id, host_id, state FROM jobs WHERE action_id IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for action in &actions {
        query = query.bind(action.id.clone());
    }
    let mut jobs: HashMap<String, Vec<(String, JobState)>> = HashMap::new();
    for row in query
        .fetch_all(state.store.pool())
        .await
        .map_err(StoreError::from)?
    {
        let text: String = row.try_get("state").map_err(StoreError::from)?;
        let job_state = JobState::parse(&text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown job state `{text}`")))?;
        jobs.entry(row.try_get("action_id").map_err(StoreError::from)?)
            .or_default()
            .push((row.try_get("host_id").map_err(StoreError::from)?, job_state));
    }
    let hosts = hosts_by_id(state).await?;
    let rules = state.access.current();
    let mut rows = Vec::new();
    for action in actions {
        let of_action = jobs.remove(&action.id).unwrap_or_default();
        let inputs = inputs_of(&hosts, of_action.iter().map(|(host, _)| host.as_str()));
        if rules
            .authorize(caller, Permission::JobsRead, &inputs)
            .is_err()
        {
            continue;
        }
        rows.push(ActionRow {
            counts: counts(of_action.iter().map(|(_, job_state)| *job_state)),
            id: action.id,
            summary: action.summary,
            requested_by: action.requested_by,
            source: action.source.as_str().into(),
            state: action.state.as_str().into(),
            created_at: action.created_at,
            finished_at: action.finished_at,
        });
    }
    Ok(rows)
}

fn counts(states: impl Iterator<Item = JobState>) -> Counts {
    let mut counts = Counts::default();
    for job_state in states {
        let slot = match job_state {
            JobState::Succeeded => &mut counts.succeeded,
            JobState::Failed | JobState::TimedOut | JobState::Refused | JobState::Expired => {
                &mut counts.failed
            }
            JobState::Delivered | JobState::Running => &mut counts.running,
            JobState::Pending | JobState::Queued => &mut counts.queued,
            JobState::Cancelled => &mut counts.cancelled,
        };
        *slot += 1;
    }
    counts
}

/// The run form's first step, or `None` when the caller may run no
/// script of the deployed commit anywhere.
fn run_form(state: &AppState, caller: &Caller) -> Option<RunForm> {
    let rules = state.access.current();
    let model = rules.model();
    let scripts: Vec<ScriptChoice> = model
        .scripts
        .values()
        .filter(|script| {
            rules
                .authorize(caller, Need::RunScript(script.name.clone()), &[])
                .is_ok()
        })
        .map(|script| ScriptChoice {
            name: script.name.clone(),
            description: script.description.clone(),
        })
        .collect();
    if scripts.is_empty() {
        return None;
    }
    Some(RunForm {
        scripts,
        groups: model.groups.keys().cloned().collect(),
        chosen: None,
        unknown_script: None,
    })
}

/// What the run form sent.
#[derive(Debug, Default)]
struct Submitted {
    script: String,
    group: String,
    hosts: String,
    /// Parameter values by name, as typed.
    params: BTreeMap<String, String>,
}

impl Submitted {
    fn from_fields(fields: Vec<(String, String)>) -> Submitted {
        let mut submitted = Submitted::default();
        for (name, value) in fields {
            match name.as_str() {
                "script" => submitted.script = value,
                "group" => submitted.group = value,
                "hosts" => submitted.hosts = value,
                _ => {
                    if let Some(parameter) = name.strip_prefix("param.") {
                        submitted.params.insert(parameter.to_string(), value);
                    }
                }
            }
        }
        submitted
    }

    /// The targets named: the group, and host names split at commas and
    /// white space.
    fn targets(&self) -> TargetsBody {
        TargetsBody {
            groups: Some(self.group.trim())
                .filter(|group| !group.is_empty())
                .map(str::to_string)
                .into_iter()
                .collect(),
            hosts: self
                .hosts
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    /// The value sent for `spec`, as the API takes it: a checkbox left
    /// unticked is `false`; an empty field is no value (the default, if
    /// any, applies).
    fn value_of(&self, spec: &ParameterSpec) -> Option<Value> {
        let sent = self.params.get(&spec.name).map(String::as_str);
        match spec.kind {
            ParameterType::Boolean => Some(Value::String((sent == Some("true")).to_string())),
            _ => sent
                .filter(|text| !text.is_empty())
                .map(|text| Value::String(text.to_string())),
        }
    }
}

/// The second step of the run form: `name`'s fields, filled with what
/// was sent (or the defaults), each with what is wrong with its value.
fn chosen_script(state: &AppState, name: &str, submitted: &Submitted) -> Option<ChosenScript> {
    let rules = state.access.current();
    let script = rules.model().scripts.get(name)?;
    let first_show = submitted.script.is_empty();
    let fields = script
        .parameters
        .iter()
        .map(|spec| field(script, spec, submitted, first_show))
        .collect();
    Some(ChosenScript {
        name: script.name.clone(),
        description: script.description.clone(),
        fields,
        group: submitted.group.clone(),
        hosts: submitted.hosts.clone(),
        targets_error: None,
    })
}

fn field(
    script: &ScriptSpec,
    spec: &ParameterSpec,
    submitted: &Submitted,
    first_show: bool,
) -> Field {
    let kind = match spec.kind {
        _ if spec.secret => FieldKind::Secret,
        ParameterType::String => FieldKind::Text,
        ParameterType::Integer => FieldKind::Number,
        ParameterType::Boolean => FieldKind::Checkbox,
        ParameterType::Enum => FieldKind::Choice(spec.values.clone()),
    };
    let default_text = spec.default.as_ref().map(|value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    });
    // A secret is never written into a page, not even its default.
    let value = if spec.secret {
        String::new()
    } else if first_show {
        default_text.unwrap_or_default()
    } else {
        match spec.kind {
            ParameterType::Boolean => submitted
                .value_of(spec)
                .and_then(|value| value.as_str().map(str::to_string))
                .unwrap_or_default(),
            _ => submitted
                .params
                .get(&spec.name)
                .cloned()
                .unwrap_or_default(),
        }
    };
    let error = (!first_show)
        .then(|| parameter_problem(script, spec, submitted))
        .flatten();
    Field {
        name: spec.name.clone(),
        kind,
        required: spec.required && spec.default.is_none(),
        description: spec.description.clone(),
        value,
        has_default: spec.default.is_some(),
        error,
    }
}

/// What the API's check says of this one parameter's value: the check is
/// run on the script narrowed to the parameter, so that the message lands
/// next to its field.
fn parameter_problem(
    script: &ScriptSpec,
    spec: &ParameterSpec,
    submitted: &Submitted,
) -> Option<String> {
    let narrowed = ScriptSpec {
        parameters: vec![spec.clone()],
        ..script.clone()
    };
    let given: BTreeMap<String, Value> = submitted
        .value_of(spec)
        .map(|value| (spec.name.clone(), value))
        .into_iter()
        .collect();
    actions::script_parameters(&narrowed, &given).err()
}

/// `POST /jobs/run`: `scripts:run` for the script on every target host,
/// else a 403 page naming the refusal; values that do not fit the
/// parameters show the form again (422) with the error at the field;
/// otherwise the action is created as `POST /v1/actions` does, and the
/// browser goes to its page.
async fn run(
    State(state): State<AppState>,
    address: ClientAddress,
    CsrfForm { viewer, form }: CsrfForm<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let submitted = Submitted::from_fields(form);
    let caller = viewer.caller();
    let rules = state.access.current();
    // Refused before anything else is looked at: a user who may not run
    // the script learns nothing from the form's checks.
    rules
        .authorize(&caller, Need::RunScript(submitted.script.clone()), &[])
        .map_err(|denied| PageError::new(StatusCode::FORBIDDEN, denied.to_string()))?;
    let again = |form: RunForm| async {
        let page = jobs_page(&state, &viewer, "/jobs", Some(form)).await?;
        Ok::<Response, PageError>(
            (StatusCode::UNPROCESSABLE_ENTITY, viewer.page(page)).into_response(),
        )
    };
    let Some(mut form) = run_form(&state, &caller) else {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "you may run no script of the deployed commit",
        ));
    };
    let Some(mut chosen) = chosen_script(&state, &submitted.script, &submitted) else {
        form.unknown_script = Some(submitted.script.clone());
        return again(form).await;
    };
    let targets = submitted.targets();
    if targets.groups.is_empty() && targets.hosts.is_empty() {
        chosen.targets_error = Some("name a group or some hosts to run on".into());
    }
    if chosen.targets_error.is_some() || chosen.fields.iter().any(|field| field.error.is_some()) {
        form.chosen = Some(chosen);
        return again(form).await;
    }
    let script = rules.model().scripts.get(&submitted.script);
    let params = script
        .into_iter()
        .flat_map(|script| &script.parameters)
        .filter_map(|spec| Some((spec.name.clone(), submitted.value_of(spec)?)))
        .collect();
    let body = ActionBody {
        script: Some(submitted.script.clone()),
        params,
        targets,
        ..ActionBody::default()
    };
    match create_action_as(&state, &viewer.principal, &address, &body).await {
        Ok(created) => {
            let n_jobs = created.jobs.len();
            let notice = success(format!(
                "{} started: {n_jobs} {}",
                submitted.script,
                if n_jobs == 1 { "job" } else { "jobs" }
            ));
            Ok(see_other_with(
                &format!("/jobs/{}", created.action_id),
                notice,
            ))
        }
        // The targets or the script's own limits: shown at the targets.
        Err(err) if err.status == StatusCode::BAD_REQUEST => {
            chosen.targets_error = Some(err.message);
            form.chosen = Some(chosen);
            again(form).await
        }
        Err(err) => Err(err.into()),
    }
}

/// `GET /jobs/{id}`: an action and each host's job, as `GET
/// /v1/actions/{id}` scopes it (`jobs:read` on every host of it).
#[derive(Debug, Default, Deserialize)]
struct DetailParams {
    /// The page of jobs, from 1; anything else is the first.
    #[serde(default)]
    page: String,
}

async fn detail(
    State(state): State<AppState>,
    viewer: Viewer,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
    Query(params): Query<DetailParams>,
) -> Result<Response, PageError> {
    let caller = viewer.caller();
    let ActionWithJobs {
        action,
        jobs,
        hosts,
        inputs,
    } = scoped_action(&state, &caller, &id, Permission::JobsRead).await?;
    let may_cancel = action.state == ActionState::Running
        && state
            .access
            .current()
            .authorize(&caller, Permission::JobsCancel, &inputs)
            .is_ok();
    let parameters = action
        .parameters
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            (name.clone(), text)
        })
        .collect();
    let n_jobs = jobs.len();
    let n_pages = n_jobs.div_ceil(JOBS_PER_PAGE).max(1);
    let page = params.page.parse::<usize>().unwrap_or(1).clamp(1, n_pages);
    let detail = view::ActionDetail {
        url: uri.to_string(),
        counts: counts(jobs.iter().map(|job| job.state)),
        page,
        per_page: JOBS_PER_PAGE,
        n_jobs,
        jobs: jobs
            .into_iter()
            .skip((page - 1) * JOBS_PER_PAGE)
            .take(JOBS_PER_PAGE)
            .map(|job| JobView {
                host: hosts
                    .get(&job.host_id)
                    .map_or_else(|| job.host_id.clone(), |host| host.name.clone()),
                id: job.id,
                host_id: job.host_id,
                state: job.state.as_str().into(),
                exit_code: job.exit_code,
                started_at: job.started_at,
                finished_at: job.finished_at,
                stdout: job.stdout.unwrap_or_default(),
                stderr: job.stderr.unwrap_or_default(),
                message: job.message,
            })
            .collect(),
        id: action.id,
        summary: action.summary,
        kind: action.kind,
        state: action.state.as_str().into(),
        source: action.source.as_str().into(),
        requested_by: action.requested_by,
        created_at: action.created_at,
        finished_at: action.finished_at,
        parameters,
        audit_commit: action.audit_commit,
        may_cancel,
    };
    let chrome = viewer.chrome(&state, Section::Jobs);
    Ok(viewer.page(view::detail(&chrome, &detail)))
}

/// `POST /jobs/{id}/cancel`: as `POST /v1/actions/{id}/cancel`.
async fn cancel(
    State(state): State<AppState>,
    address: ClientAddress,
    Path(id): Path<String>,
    CsrfForm { viewer, .. }: CsrfForm<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let to = format!("/jobs/{id}");
    match cancel_action_as(&state, &viewer.principal, &address, &id).await {
        Ok(()) => Ok(see_other_with(
            &to,
            success("cancelled: the jobs not handed out yet will not run"),
        )),
        Err(err) if err.status == StatusCode::CONFLICT => {
            Ok(see_other_with(&to, super::failure(err.message)))
        }
        Err(err) => Err(err.into()),
    }
}
