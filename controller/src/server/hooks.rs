//! Webhooks from Git hosting: a verified push makes the controller fetch
//! at once instead of at its next interval.
//!
//! GitHub signs the body (`X-Hub-Signature-256: sha256=<hmac>`); GitLab
//! sends the shared secret (`X-Gitlab-Token`). Both are compared in
//! constant time, bodies are capped, and a request that does not verify
//! gets 401 and changes nothing.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// Push payloads are small; anything larger is not a push.
pub const MAX_HOOK_BODY: usize = 1 << 20;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/hooks/github", post(github))
        .route("/hooks/gitlab", post(gitlab))
        .layer(DefaultBodyLimit::max(MAX_HOOK_BODY))
        .with_state(state)
}

fn secret(state: &AppState) -> Result<&str, ApiError> {
    state.webhook_secret.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "webhooks are off: start the controller with MUSTER_WEBHOOK_SECRET set",
        )
    })
}

async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let secret = secret(&state)?;
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|v| hex::decode(v).ok())
        .ok_or_else(|| ApiError::unauthorized("missing or malformed X-Hub-Signature-256"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(ApiError::internal)?;
    mac.update(&body);
    mac.verify_slice(&signature)
        .map_err(|_| ApiError::unauthorized("webhook signature does not verify"))?;
    if headers.get("x-github-event").and_then(|v| v.to_str().ok()) == Some("ping") {
        return Ok(StatusCode::OK);
    }
    tracing::info!(source = "github", "webhook: fetching now");
    state.trigger.fire();
    Ok(StatusCode::ACCEPTED)
}

async fn gitlab(State(state): State<AppState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let secret = secret(&state)?;
    let token = headers
        .get("x-gitlab-token")
        .map(|v| v.as_bytes())
        .ok_or_else(|| ApiError::unauthorized("missing X-Gitlab-Token"))?;
    if !bool::from(token.ct_eq(secret.as_bytes())) {
        return Err(ApiError::unauthorized("webhook token does not match"));
    }
    tracing::info!(source = "gitlab", "webhook: fetching now");
    state.trigger.fire();
    Ok(StatusCode::ACCEPTED)
}
