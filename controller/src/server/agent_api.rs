//! The agent API (`/v1`): enrollment, bundle long polling, reports and the
//! public key agents pin.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use muster_schemas::protocol::{EnrollRequest, EnrollResponse, HostState, Report, RunStatus};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use std::sync::Arc;

use super::auth::authenticate;
use super::cache::{CachedBundle, CachedHost};
use super::{ApiError, AppState, now};
use crate::store::{EnrollRefusal, HostRecord};

/// Enrollment requests carry a token, a name and a few facts.
pub const MAX_ENROLL_BODY: usize = 64 << 10;
/// Reports carry per-resource results and diffs.
pub const MAX_REPORT_BODY: usize = 4 << 20;

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
            report.facts.as_ref(),
            &body,
            now,
        )
        .await?;
    Ok(StatusCode::ACCEPTED)
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
