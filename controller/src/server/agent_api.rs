//! The agent API (`/v1`): enrollment, bundle long polling, reports, job
//! long polling and job results, and the public key agents pin.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use muster_schemas::job::is_valid_job_id;
use muster_schemas::protocol::{
    EnrollRequest, EnrollResponse, HostState, JobResult, JobStarted, JobsResponse, Report,
    RunStatus,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use std::sync::Arc;

use super::auth::authenticate;
use super::cache::{CachedBundle, CachedHost};
use super::hub::Topic;
use super::{ApiError, AppState, now};
use crate::store::{EnrollRefusal, HostRecord, ResultOutcome, StartOutcome};

/// Enrollment requests carry a token, a name and a few facts.
pub const MAX_ENROLL_BODY: usize = 64 << 10;
/// Reports carry per-resource results and diffs.
pub const MAX_REPORT_BODY: usize = 4 << 20;
/// A `started` notice is a job id and a time.
pub const MAX_JOB_NOTICE_BODY: usize = 4 << 10;
/// A job result carries up to 64 KiB each of stdout and stderr, which JSON
/// escaping can make up to six times longer.
pub const MAX_JOB_RESULT_BODY: usize = 1 << 20;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/pubkey", get(pubkey))
        .route(
            "/v1/enroll",
            post(enroll).layer(DefaultBodyLimit::max(MAX_ENROLL_BODY)),
        )
        .route("/v1/hosts/{id}/bundle", get(bundle))
        .route(
            "/v1/hosts/{id}/reports",
            post(report).layer(DefaultBodyLimit::max(MAX_REPORT_BODY)),
        )
        .route("/v1/hosts/{id}/jobs", get(jobs))
        .route(
            "/v1/hosts/{id}/jobs/{job}/started",
            post(job_started).layer(DefaultBodyLimit::max(MAX_JOB_NOTICE_BODY)),
        )
        .route(
            "/v1/hosts/{id}/jobs/{job}/result",
            post(job_result).layer(DefaultBodyLimit::max(MAX_JOB_RESULT_BODY)),
        )
        .with_state(state)
}

async fn pubkey(State(state): State<AppState>) -> String {
    format!("{}\n", state.public_key)
}

/// A host name: a hostname, possibly fully qualified.
fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(ApiError::internal)?;
    Ok(bytes)
}

/// Hash under which an enrollment token is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

async fn enroll(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let request: EnrollRequest = serde_json::from_slice(&body)
        .map_err(|err| ApiError::bad_request(format!("invalid enrollment request: {err}")))?;
    if !valid_host_name(&request.name) {
        return Err(ApiError::bad_request(
            "invalid host name: use letters, digits, `.`, `-` and `_`, starting with a letter or digit",
        ));
    }
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let key = muster_schemas::protocol::auth::derive_key(&secret);
    let candidate = HostRecord {
        id: hex::encode(random_bytes::<12>()?),
        name: request.name.clone(),
        state: HostState::Pending,
        key: hex::encode(key),
        labels: Default::default(),
        facts: request.facts,
        token_id: None,
        enrolled_at: 0,
        last_seen_at: None,
        applied_generation: 0,
        run_status: None,
    };
    let now = now();
    match state
        .store
        .enroll(&token_hash(&request.token), &candidate, now)
        .await?
    {
        Ok(host) => {
            tracing::info!(host = %host.name, id = %host.id, state = host.state.as_str(), "host enrolled");
            state.hub.ui.notify(Topic::Hosts);
            state.hub.ui.notify(Topic::Enrollment);
            if host.state == HostState::Approved {
                state.trigger.fire();
            }
            let response = EnrollResponse {
                host_id: host.id,
                secret,
                state: host.state,
            };
            Ok((StatusCode::CREATED, axum::Json(response)).into_response())
        }
        Err(EnrollRefusal::InvalidToken) => Err(ApiError::unauthorized(
            "enrollment token is invalid, expired, revoked or used up: ask for a new one (`muster token create`)",
        )),
        Err(EnrollRefusal::NameTaken) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "a host named `{}` is enrolled already: remove it first (`muster hosts remove {}`) or enroll under another name",
                request.name, request.name
            ),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct BundleQuery {
    /// The generation the agent holds; 0 for none.
    #[serde(default)]
    generation: u64,
    /// Seconds to hold the request when nothing newer exists.
    #[serde(default)]
    wait: u64,
}

/// Refuses requests for another host's data, and hosts that may not get any.
fn own_and_approved(host: &CachedHost, id: &str) -> Result<(), ApiError> {
    if host.id != id {
        return Err(ApiError::forbidden("a host can only read its own data"));
    }
    match host.state {
        HostState::Approved => Ok(()),
        HostState::Pending => Err(ApiError::forbidden(
            "host is pending approval: an operator runs `muster hosts approve`",
        )),
        HostState::Rejected => Err(ApiError::forbidden("host was rejected by an operator")),
    }
}

async fn bundle(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<BundleQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let host = authenticate(&state, &method, &uri, &headers, &body, now()).await?;
    own_and_approved(&host, &id)?;
    // Subscribe before reading, so that a publication in between wakes us.
    let mut published = state.hub.subscribe(&host.id);
    if let Some(signed) = newer_bundle(&state, &host.id, query.generation).await? {
        return Ok(bundle_response(&signed));
    }
    let wait = Duration::from_secs(query.wait).min(state.long_poll_limit);
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::timeout_at(deadline, published.changed())
        .await
        .is_ok_and(|r| r.is_ok())
    {
        if let Some(signed) = newer_bundle(&state, &host.id, query.generation).await? {
            return Ok(bundle_response(&signed));
        }
    }
    Ok(StatusCode::NOT_MODIFIED.into_response())
}

/// The host's bundle when it is newer than `have`: from the cache, or
/// read once from the database and cached.
async fn newer_bundle(
    state: &AppState,
    host_id: &str,
    have: u64,
) -> Result<Option<Arc<CachedBundle>>, ApiError> {
    let cached = match state.caches.bundle(host_id) {
        Some(cached) => cached,
        None => match state.store.bundle(host_id).await? {
            Some(record) => {
                state.caches.put_bundles([&record]);
                Arc::new(CachedBundle::from_record(&record))
            }
            None => return Ok(None),
        },
    };
    Ok((cached.generation > have).then_some(cached))
}

fn bundle_response(bundle: &CachedBundle) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bundle.body.clone(),
    )
        .into_response()
}

async fn report(
    State(state): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let now = now();
    let host = authenticate(&state, &method, &uri, &headers, &body, now).await?;
    if host.id != id {
        return Err(ApiError::forbidden("a host can only report for itself"));
    }
    let report: Report = serde_json::from_slice(&body)
        .map_err(|err| ApiError::bad_request(format!("invalid report: {err}")))?;
    let run_status = match report.status {
        RunStatus::InSync => "in_sync",
        RunStatus::Drifted => "drifted",
        RunStatus::Failing => "failing",
        RunStatus::Stale => "stale",
    };
    let body = String::from_utf8_lossy(&body);
    state
        .store
        .record_report(
            &host.id,
            report.generation,
            run_status,
            crate::store::CheckCounts::of(&report.checks),
            report.facts.as_ref(),
            &body,
            now,
        )
        .await?;
    state.hub.ui.notify(Topic::Hosts);
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    /// Seconds to hold the request when the host has no job.
    #[serde(default)]
    wait: u64,
}

/// `GET /v1/hosts/{id}/jobs?wait=S`: the host's jobs, claimed for it
/// (`Store::jobs_for_host`), at once when it has some; otherwise held
/// until one is queued for it or `S` seconds (capped like bundle polls)
/// passed, then `204`.
async fn jobs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<JobsQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let host = authenticate(&state, &method, &uri, &headers, &body, now()).await?;
    own_and_approved(&host, &id)?;
    ensure_job_sweep(&state);
    // Subscribe before reading, so that a job queued in between wakes us.
    let mut queued = state.hub.subscribe_jobs(&host.id);
    let found = state.store.jobs_for_host(&host.id, now()).await?;
    if !found.is_empty() {
        return Ok(jobs_response(found));
    }
    let wait = Duration::from_secs(query.wait).min(state.long_poll_limit);
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::timeout_at(deadline, queued.changed())
        .await
        .is_ok_and(|r| r.is_ok())
    {
        let found = state.store.jobs_for_host(&host.id, now()).await?;
        if !found.is_empty() {
            return Ok(jobs_response(found));
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn jobs_response(jobs: Vec<muster_schemas::job::SignedJob>) -> Response {
    axum::Json(JobsResponse { jobs }).into_response()
}

/// Starts this server's job sweep (`jobs::run_sweep`) with the first job
/// poll: it wakes long polls for jobs queued by others and expires jobs.
fn ensure_job_sweep(state: &AppState) {
    if state.hub.start_job_sweep() {
        tokio::spawn(crate::jobs::run_sweep(
            state.store.clone(),
            Arc::downgrade(&state.hub),
        ));
    }
}

/// The body of a host's notice about one of its jobs: `started` or
/// `result`.
trait JobNotice: serde::de::DeserializeOwned {
    /// What the body is, for the error when it does not parse.
    const WHAT: &'static str;
    /// The job it is about, which must be the one in the path.
    fn job_id(&self) -> &str;
}

impl JobNotice for JobStarted {
    const WHAT: &'static str = "started notice";
    fn job_id(&self) -> &str {
        &self.job_id
    }
}

impl JobNotice for JobResult {
    const WHAT: &'static str = "job result";
    fn job_id(&self) -> &str {
        &self.job_id
    }
}

/// What a job notice's HMAC signature covers: the method, the path and
/// query, the headers and the body, kept together until the host is
/// authenticated.
struct SignedRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for SignedRequest {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let method = request.method().clone();
        let uri = request.uri().clone();
        let headers = request.headers().clone();
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(SignedRequest {
            method,
            uri,
            headers,
            body,
        })
    }
}

/// Authenticates a notice from host `id` about job `job_id` and parses it.
/// Refused: a notice about another host's path, a job id that is not an
/// id, a body that does not parse or is about another job than the path's.
async fn job_notice<T: JobNotice>(
    state: &AppState,
    (id, job_id): (&str, &str),
    request: &SignedRequest,
    now: i64,
) -> Result<(Arc<CachedHost>, T), ApiError> {
    let SignedRequest {
        method,
        uri,
        headers,
        body,
    } = request;
    let host = authenticate(state, method, uri, headers, body, now).await?;
    if host.id != id {
        return Err(ApiError::forbidden(
            "a host can only report on its own jobs",
        ));
    }
    if !is_valid_job_id(job_id) {
        return Err(ApiError::bad_request("invalid job id"));
    }
    let notice: T = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("invalid {}: {err}", T::WHAT)))?;
    if notice.job_id() != job_id {
        return Err(ApiError::bad_request(format!(
            "the body is about another job than `{job_id}` in the path"
        )));
    }
    Ok((host, notice))
}

fn unknown_job(job_id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("unknown job `{job_id}`"))
}

fn other_hosts_job(job_id: &str) -> ApiError {
    ApiError::forbidden(format!("job `{job_id}` belongs to another host"))
}

/// `POST /v1/hosts/{id}/jobs/{job}/started`.
async fn job_started(
    State(state): State<AppState>,
    Path((id, job_id)): Path<(String, String)>,
    request: SignedRequest,
) -> Result<StatusCode, ApiError> {
    let now = now();
    let (host, notice): (_, JobStarted) = job_notice(&state, (&id, &job_id), &request, now).await?;
    match state
        .store
        .record_started(&host.id, &job_id, notice.started_at, now)
        .await?
    {
        StartOutcome::Started => {
            state.hub.ui.notify(Topic::Jobs);
            Ok(StatusCode::OK)
        }
        StartOutcome::Unchanged => Ok(StatusCode::OK),
        StartOutcome::NotFound => Err(unknown_job(&job_id)),
        StartOutcome::OtherHost => Err(other_hosts_job(&job_id)),
    }
}

/// `POST /v1/hosts/{id}/jobs/{job}/result`: stores the result (the same
/// one again is a no-op `200`) and moves the job's action on.
async fn job_result(
    State(state): State<AppState>,
    Path((id, job_id)): Path<(String, String)>,
    request: SignedRequest,
) -> Result<StatusCode, ApiError> {
    let now = now();
    let (host, result): (_, JobResult) = job_notice(&state, (&id, &job_id), &request, now).await?;
    match state.store.record_result(&host.id, &result).await? {
        ResultOutcome::Recorded { action_id } => {
            tracing::info!(
                host = %host.id,
                job = %job_id,
                action = %action_id,
                state = result.state.as_str(),
                "job result"
            );
            let release =
                crate::jobs::release_and_notify(&state.store, &state.hub, &action_id, now).await?;
            // An action that ended gets its outcome in the audit repository.
            if release.state != Some(crate::store::ActionState::Running) {
                state.outcomes.poke();
            }
            Ok(StatusCode::OK)
        }
        // The first copy may have been stored by a request that failed
        // before the rollout moved on: moving it on again is harmless.
        ResultOutcome::Duplicate => {
            if let Some(action_id) = state.store.job(&job_id).await?.map(|job| job.action_id) {
                crate::jobs::release_and_notify(&state.store, &state.hub, &action_id, now).await?;
            }
            Ok(StatusCode::OK)
        }
        ResultOutcome::Conflict(message) => Err(ApiError::new(StatusCode::CONFLICT, message)),
        ResultOutcome::NotFound => Err(unknown_job(&job_id)),
        ResultOutcome::OtherHost => Err(other_hosts_job(&job_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert!(valid_host_name("web-01.example.com"));
        assert!(!valid_host_name(""));
        assert!(!valid_host_name("-web"));
        assert!(!valid_host_name("web 01"));
        assert!(!valid_host_name("../etc"));
    }
}
