//! The controller's HTTP server: the agent API, the user API, webhooks
//! and health.
//!
//! Each area has a `router(state)`; they are merged here. Handlers return
//! `ApiError` for anything that is not a success: bad input becomes a 4xx
//! with a message the caller can act on, internal failures a 500 that
//! says nothing more and is logged once, here.

pub mod agent_api;
pub mod auth;
pub mod cache;
pub mod dashboard;
pub mod hooks;
pub mod hub;
pub mod user_api;
pub mod user_auth;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use muster_schemas::protocol::ErrorBody;

use crate::reconcile::Trigger;
use crate::store::{Store, StoreError};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub hub: Arc<hub::Hub>,
    /// Hosts' keys and bundles, so that most agent requests need no query.
    pub caches: Arc<cache::Caches>,
    pub nonces: Arc<auth::NonceCache>,
    /// The minisign public key agents pin.
    pub public_key: Arc<str>,
    /// Asks the reconciler to run now.
    pub trigger: Trigger,
    /// Shared secret of the GitHub and GitLab webhooks; webhooks are off
    /// without one.
    pub webhook_secret: Option<Arc<str>>,
    /// Longest a bundle request is held open.
    pub long_poll_limit: std::time::Duration,
    /// The access rules (RBAC) of the deployed commit: call
    /// `state.access.authorize(..)` on every user request, never cache the
    /// answer, so a binding removed in Git stops working on the next deploy.
    pub access: crate::rbac::Access,
    /// The audit repository: user actions are committed here before they
    /// happen (`audit.record(..)`, failing closed).
    pub audit: crate::audit::AuditLog,
    /// Login limits, sessions and the clock of user authentication.
    pub user_auth: Arc<user_auth::UserAuth>,
    /// The controller's signing key: ad-hoc actions sign their jobs.
    pub key: Arc<crate::signing::SigningKey>,
    /// Wakes the recording of ended actions' outcomes in the audit
    /// repository.
    pub outcomes: crate::actions::Outcomes,
    /// The reconciler's Git mirror, for `GET /v1/plan`.
    pub source: Arc<std::sync::Mutex<crate::source::GitSource>>,
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(agent_api::router(state.clone()))
        .merge(hooks::router(state.clone()))
        .merge(user_auth::router(state.clone()))
        .merge(user_api::router(state.clone()))
        .merge(dashboard::router(state.clone()))
        .fallback(dashboard::not_found)
        .with_state(state)
}

async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<&'static str, ApiError> {
    sqlx::query("SELECT 1")
        .execute(state.store.pool())
        .await
        .map_err(StoreError::from)?;
    Ok("ready\n")
}

/// An error answer: status and a message for the caller.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// A failure of ours: logged with its detail, answered without it.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        ApiError::internal(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
