//! The dashboard's enrollment page (`/enrollment`): pending hosts to
//! approve or reject (`hosts:approve`, scoped) and enrollment tokens to
//! create and revoke (`tokens:manage`, fleet-wide).
//!
//! Every change goes through the code the API and `muster token` use —
//! RBAC, then the audit commit, then the change — so the dashboard adds
//! no second way to approve a host or make a token.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use muster_schemas::model::Permission;
use muster_schemas::protocol::HostState;
use muster_web::Section;
use muster_web::enrollment::{self, Created, Enrollment, PendingHost, Token, TokenForm};
use muster_web::parts::Tone;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::Row;

use super::{CsrfForm, PageError, Viewer, failure, see_other_with, success};
use crate::commands::admin::{
    self, TokenActionError, TokenSpec, TokenState, create_enrollment_token, revoke_enrollment_token,
};
use crate::compile::HostInput;
use crate::server::hub::Topic;
use crate::server::user_api::{audit_unavailable, change_host_state};
use crate::server::user_auth::ClientAddress;
use crate::server::{ApiError, AppState};
use crate::store::{Store, StoreError, TokenRecord};

const PAGE: &str = "/enrollment";

/// Longest validity the form accepts: a year.
const MAX_VALID_FOR_HOURS: u64 = 24 * 366;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(PAGE, get(show))
        .route("/enrollment/hosts/{id}/approve", post(approve))
        .route("/enrollment/hosts/{id}/reject", post(reject))
        .route("/enrollment/tokens", post(create_token))
        .route("/enrollment/tokens/{id}/revoke", post(revoke_token))
}

/// A form with no fields of its own (the CSRF token aside).
#[derive(Debug, Deserialize)]
struct NoFields {}

/// The token form as posted; numbers arrive as text and are checked here.
#[derive(Debug, Deserialize)]
struct TokenFields {
    #[serde(default)]
    labels: String,
    #[serde(default)]
    max_uses: String,
    #[serde(default)]
    valid_for_hours: String,
    /// Present (`on`) when ticked.
    #[serde(default)]
    auto_approve: Option<String>,
}

/// What the user may do here; neither is a 403.
struct Rights {
    approve: bool,
    tokens: bool,
}

fn rights(viewer: &Viewer, state: &AppState) -> Result<Rights, PageError> {
    let rights = Rights {
        approve: viewer.may(state, Permission::HostsApprove),
        tokens: viewer.may(state, Permission::TokensManage),
    };
    if !rights.approve && !rights.tokens {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the enrollment page needs `{}` or `{}`: ask an admin for a role binding that grants one",
                Permission::HostsApprove.as_str(),
                Permission::TokensManage.as_str()
            ),
        ));
    }
    Ok(rights)
}

async fn show(State(state): State<AppState>, viewer: Viewer) -> Result<Response, PageError> {
    let rights = rights(&viewer, &state)?;
    render(
        &state,
        &viewer,
        &rights,
        None,
        TokenForm::default(),
        StatusCode::OK,
    )
    .await
}

/// The page, with a token just created or a refused form.
async fn render(
    state: &AppState,
    viewer: &Viewer,
    rights: &Rights,
    created: Option<Created>,
    form: TokenForm,
    status: StatusCode,
) -> Result<Response, PageError> {
    let pending = if rights.approve {
        let hosts = pending_hosts(&state.store).await?;
        let rules = state.access.current();
        let inputs: Vec<HostInput> = hosts.iter().map(|(input, _)| input.clone()).collect();
        let in_scope: std::collections::HashSet<&str> = rules
            .hosts_in_scope(&viewer.caller(), Permission::HostsApprove, &inputs)
            .into_iter()
            .map(|input| input.id.as_str())
            .collect();
        Some(
            hosts
                .iter()
                .filter(|(input, _)| in_scope.contains(input.id.as_str()))
                .map(|(_, host)| host.clone())
                .collect(),
        )
    } else {
        None
    };
    let tokens = if rights.tokens {
        let now = state.user_auth.now();
        Some(
            state
                .store
                .tokens()
                .await?
                .iter()
                .map(|token| token_line(token, now))
                .collect(),
        )
    } else {
        None
    };
    let chrome = viewer.chrome(state, Section::Enrollment);
    let page = Enrollment {
        url: PAGE.into(),
        pending,
        tokens,
        created,
        form,
    };
    let mut response = viewer.page(enrollment::render(&chrome, &page));
    *response.status_mut() = status;
    Ok(response)
}

/// Pending hosts, oldest first, each with what RBAC scopes it by. Only
/// pending rows are read: the page stays cheap however large the fleet.
async fn pending_hosts(store: &Store) -> Result<Vec<(HostInput, PendingHost)>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, name, labels, facts, token_id, enrolled_at FROM hosts
         WHERE state = 'pending' ORDER BY enrolled_at, name",
    )
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let labels: String = row.try_get("labels")?;
            let facts: String = row.try_get("facts")?;
            let labels: BTreeMap<String, String> = serde_json::from_str(&labels)
                .map_err(|err| StoreError::Corrupt(format!("host labels: {err}")))?;
            let facts: Map<String, Value> = serde_json::from_str(&facts).unwrap_or_default();
            let text = |name: &str| facts.get(name).and_then(Value::as_str).map(str::to_string);
            let host = PendingHost {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                os: text("os"),
                arch: text("arch"),
                address: first_address(&facts),
                enrolled_at: row.try_get("enrolled_at")?,
                token_id: row.try_get("token_id")?,
            };
            let input = HostInput {
                id: host.id.clone(),
                name: host.name.clone(),
                labels,
                facts,
            };
            Ok((input, host))
        })
        .collect()
}

/// The first address that is not loopback or link-local, of the
/// interfaces the agent reported (`interfaces.NAME.addresses`).
fn first_address(facts: &Map<String, Value>) -> Option<String> {
    facts
        .get("interfaces")?
        .as_object()?
        .values()
        .filter_map(|interface| interface.get("addresses")?.as_array())
        .flatten()
        .filter_map(Value::as_str)
        .find(|address| {
            !(address.starts_with("127.")
                || address.starts_with("::1/")
                || address.starts_with("fe80:"))
        })
        .map(str::to_string)
}

fn token_line(token: &TokenRecord, now: i64) -> Token {
    let (state, tone) = match TokenState::of(token, now) {
        TokenState::Revoked => ("revoked", Tone::Neutral),
        TokenState::Expired => ("expired", Tone::Neutral),
        TokenState::UsedUp => ("used up", Tone::Warn),
        TokenState::Valid => ("active", Tone::Good),
    };
    Token {
        id: token.id.clone(),
        labels: token
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(", "),
        uses: token.uses,
        max_uses: token.max_uses,
        auto_approve: token.auto_approve,
        created_at: token.created_at,
        expires_at: token.expires_at,
        state,
        tone,
    }
}

async fn approve(
    state: State<AppState>,
    path: Path<String>,
    address: ClientAddress,
    form: CsrfForm<NoFields>,
) -> Result<Response, PageError> {
    decide(state, path, address, form, HostState::Approved).await
}

async fn reject(
    state: State<AppState>,
    path: Path<String>,
    address: ClientAddress,
    form: CsrfForm<NoFields>,
) -> Result<Response, PageError> {
    decide(state, path, address, form, HostState::Rejected).await
}

/// Approve or Reject: the API's path (RBAC on the host → audit commit →
/// new state), then back to the page with what happened.
async fn decide(
    State(state): State<AppState>,
    Path(id): Path<String>,
    address: ClientAddress,
    CsrfForm { viewer, .. }: CsrfForm<NoFields>,
    new_state: HostState,
) -> Result<Response, PageError> {
    let host = change_host_state(&state, &viewer.principal, &address, &id, new_state).await?;
    let text = match new_state {
        HostState::Approved => format!(
            "{} approved: it gets its bundle on its next poll",
            host.name
        ),
        _ => format!(
            "{} rejected: the controller refuses its agent from now on",
            host.name
        ),
    };
    Ok(see_other_with(PAGE, success(text)))
}

fn token_error(err: TokenActionError) -> PageError {
    match err {
        TokenActionError::Audit(err) => audit_unavailable(&err).into(),
        TokenActionError::Store(err) => err.into(),
        TokenActionError::Randomness(detail) => ApiError::internal(detail).into(),
    }
}

/// Checks the token form; the message says what to fix.
fn token_spec(fields: &TokenFields) -> Result<TokenSpec, String> {
    let items: Vec<&str> = fields
        .labels
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    let labels = admin::parse_labels(&items)?;
    let max_uses = fields
        .max_uses
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or("max uses is a whole number of at least 1")?;
    let hours = fields
        .valid_for_hours
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_VALID_FOR_HOURS).contains(n))
        .ok_or_else(|| {
            format!("valid for is a whole number of hours from 1 to {MAX_VALID_FOR_HOURS}")
        })?;
    Ok(TokenSpec {
        labels,
        max_uses,
        valid_for_secs: hours * 3_600,
        auto_approve: fields.auto_approve.is_some(),
    })
}

/// Creates a token and answers with the page showing it once (201, not
/// a redirect: the secret never travels in a URL or a cookie, and the
/// frame's `Cache-Control: no-store` keeps it out of caches).
async fn create_token(
    State(state): State<AppState>,
    address: ClientAddress,
    CsrfForm { viewer, form }: CsrfForm<TokenFields>,
) -> Result<Response, PageError> {
    viewer.require(&state, Permission::TokensManage)?;
    let rights = rights(&viewer, &state)?;
    let typed = TokenForm {
        labels: form.labels.clone(),
        max_uses: form.max_uses.clone(),
        valid_for_hours: form.valid_for_hours.clone(),
        auto_approve: form.auto_approve.is_some(),
        error: None,
    };
    let spec = match token_spec(&form) {
        Ok(spec) => spec,
        Err(message) => {
            let refused = TokenForm {
                error: Some(message),
                ..typed
            };
            return render(
                &state,
                &viewer,
                &rights,
                None,
                refused,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
    };
    // Known before anything is made: a token without its command helps
    // no one.
    let server = state.store.setting("public_url").await?.ok_or_else(|| {
        PageError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller has not recorded its public URL: restart `muster serve`, then try again",
        )
    })?;
    let (record, secret) = create_enrollment_token(
        &state.store,
        &state.audit,
        viewer.principal.who(),
        Some(address.text()),
        &spec,
        state.user_auth.now(),
    )
    .await
    .map_err(token_error)?;
    state.hub.ui.notify(Topic::Enrollment);
    state.hub.ui.notify(Topic::Audit);
    tracing::info!(user = %viewer.principal.user, token = %record.id, "enrollment token created");
    let created = Created {
        command: admin::enroll_command(&server, &secret, &state.public_key),
        id: record.id,
        secret,
        max_uses: record.max_uses,
        expires_at: record.expires_at,
    };
    render(
        &state,
        &viewer,
        &rights,
        Some(created),
        TokenForm::default(),
        StatusCode::CREATED,
    )
    .await
}

async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    address: ClientAddress,
    CsrfForm { viewer, .. }: CsrfForm<NoFields>,
) -> Result<Response, PageError> {
    viewer.require(&state, Permission::TokensManage)?;
    let revoked = revoke_enrollment_token(
        &state.store,
        &state.audit,
        viewer.principal.who(),
        Some(address.text()),
        &id,
        state.user_auth.now(),
    )
    .await
    .map_err(token_error)?;
    if !revoked {
        return Ok(see_other_with(
            PAGE,
            failure(format!(
                "token {id} is unknown or revoked already: nothing was done"
            )),
        ));
    }
    state.hub.ui.notify(Topic::Enrollment);
    state.hub.ui.notify(Topic::Audit);
    tracing::info!(user = %viewer.principal.user, token = %id, "enrollment token revoked");
    Ok(see_other_with(
        PAGE,
        success(format!(
            "token {id} revoked: no more hosts can enroll with it"
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(labels: &str, max_uses: &str, hours: &str, auto: bool) -> TokenFields {
        TokenFields {
            labels: labels.into(),
            max_uses: max_uses.into(),
            valid_for_hours: hours.into(),
            auto_approve: auto.then(|| "on".to_string()),
        }
    }

    #[test]
    fn the_token_form_reads_labels_uses_and_hours() {
        let spec = token_spec(&fields(" role=web, site=fra1 ,", "3", "48", true)).unwrap();
        assert_eq!(
            spec,
            TokenSpec {
                labels: BTreeMap::from([
                    ("role".to_string(), "web".to_string()),
                    ("site".to_string(), "fra1".to_string()),
                ]),
                max_uses: 3,
                valid_for_secs: 48 * 3_600,
                auto_approve: true,
            }
        );
        assert!(
            token_spec(&fields("", "1", "1", false))
                .unwrap()
                .labels
                .is_empty()
        );
    }

    #[test]
    fn the_token_form_says_what_to_fix() {
        let error = token_spec(&fields("role", "1", "1", false)).unwrap_err();
        assert!(error.contains("write key=value"), "{error}");
        let error = token_spec(&fields("", "0", "1", false)).unwrap_err();
        assert!(error.contains("at least 1"), "{error}");
        let error = token_spec(&fields("", "1", "100000", false)).unwrap_err();
        assert!(error.contains("hours from 1"), "{error}");
    }

    #[test]
    fn the_address_shown_skips_loopback_and_link_local() {
        let facts: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "interfaces": {
                "eth0": {"addresses": ["fe80::1/64", "10.0.0.4/24"]},
                "lo": {"addresses": ["127.0.0.1/8", "::1/128"]},
            }
        }))
        .unwrap();
        assert_eq!(first_address(&facts).as_deref(), Some("10.0.0.4/24"));
        assert_eq!(first_address(&Map::new()), None);
    }
}
