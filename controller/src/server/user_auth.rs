//! Authentication of users on the API: password login (`POST /v1/login`)
//! with rate limiting and lockout, sessions, API tokens, and the
//! [`Principal`] extractor that every user route takes.
//!
//! Passwords are hashed with argon2id (the `argon2` crate's defaults) on a
//! blocking thread. Session and API tokens are 32 random bytes, shown once
//! and stored as SHA-256 hashes; a presented token is found by its hash.
//!
//! A login always runs one password verification, against a stand-in hash
//! when the user does not exist or is locked, so that neither the answer
//! nor its timing tells whether a user exists. Attempts are counted per
//! user name and per source address before the password is checked; a
//! subject that reaches its limit is locked for a while.
//!
//! This module says *who* calls; what they may do is the RBAC's business.
//! A break-glass admin's every authenticated request is written to the
//! audit repository first, and refused when it cannot be.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use muster_schemas::protocol::ErrorBody;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::audit::{self, Who};
use crate::store::{AttemptGate, AttemptLimit, BearerRecord, address_subject, user_subject};

/// Login bodies hold a name and a password.
const MAX_LOGIN_BODY: usize = 16 << 10;

/// Prefix of session tokens.
pub const SESSION_PREFIX: &str = "mus_";
/// Prefix of API tokens.
pub const API_TOKEN_PREFIX: &str = "mua_";

/// The longest password accepted, in bytes: hashing cost must not grow
/// with what a caller sends.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The shortest password `muster user add` and `passwd` accept.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Seconds since the Unix epoch, shifted by an offset that tests advance
/// to see lockouts and sessions expire without waiting.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> i64 {
        super::now() + self.offset.load(Ordering::Relaxed)
    }

    /// Moves this clock (and its clones) forward.
    pub fn advance(&self, seconds: i64) {
        self.offset.fetch_add(seconds, Ordering::Relaxed);
    }
}

/// How logins are limited and sessions last.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Attempts per user name (existing or not).
    pub per_user: AttemptLimit,
    /// Attempts per source address, across user names.
    pub per_address: AttemptLimit,
    /// How long a session lasts, in seconds.
    pub session_ttl: i64,
    pub clock: Clock,
    /// Mark the dashboard's cookies `Secure`: set when the controller
    /// serves TLS itself.
    pub secure_cookies: bool,
}

impl Default for Settings {
    fn default() -> Self {
        const FIFTEEN_MINUTES: i64 = 15 * 60;
        Settings {
            per_user: AttemptLimit {
                max_attempts: 5,
                window: FIFTEEN_MINUTES,
                lockout: FIFTEEN_MINUTES,
            },
            per_address: AttemptLimit {
                max_attempts: 30,
                window: FIFTEEN_MINUTES,
                lockout: FIFTEEN_MINUTES,
            },
            session_ttl: 12 * 3600,
            clock: Clock::default(),
            secure_cookies: false,
        }
    }
}

/// User authentication's share of the server state.
#[derive(Debug, Default)]
pub struct UserAuth {
    pub settings: Settings,
    /// The hash verified when there is no real one, computed once.
    stand_in_hash: OnceLock<String>,
}

impl UserAuth {
    pub fn new(settings: Settings) -> UserAuth {
        UserAuth {
            settings,
            stand_in_hash: OnceLock::new(),
        }
    }

    pub fn now(&self) -> i64 {
        self.settings.clock.now()
    }

    fn stand_in_hash(&self) -> Result<String, ApiError> {
        if let Some(hash) = self.stand_in_hash.get() {
            return Ok(hash.clone());
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(ApiError::internal)?;
        let hash = hash_password(&hex::encode(bytes)).map_err(ApiError::internal)?;
        Ok(self.stand_in_hash.get_or_init(|| hash).clone())
    }
}

/// How a principal authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A session from `POST /v1/login`.
    Session,
    /// An API token, by its name (what RBAC bindings name).
    ApiToken { name: String },
}

/// The authenticated caller of a user route: take it as an extractor
/// argument and the route answers 401 to anyone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub via: Via,
    /// A break-glass admin (`muster user add --admin`).
    pub break_glass: bool,
}

impl Principal {
    /// Who acted, for an audit record.
    pub fn who(&self) -> Who {
        let (via, token) = match &self.via {
            Via::Session => ("session", None),
            Via::ApiToken { name } => ("api-token", Some(name.clone())),
        };
        Who {
            user: self.user.clone(),
            email: None,
            via: via.into(),
            token,
            break_glass: self.break_glass,
        }
    }
}

/// The address a request came from, when the server knows it (it does
/// for real connections; `oneshot` tests have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub Option<IpAddr>);

impl ClientAddress {
    /// The address as audit records and login counters name it.
    pub fn text(&self) -> String {
        self.0.map_or_else(|| "unknown".into(), |ip| ip.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?;
        let principal = authenticate_bearer(state, token).await?;
        audit_break_glass_use(state, &principal, parts).await?;
        Ok(principal)
    }
}

/// Writes the audit record of a break-glass admin's request, or refuses
/// the request; nothing for anyone else.
pub async fn audit_break_glass_use(
    state: &AppState,
    principal: &Principal,
    parts: &mut Parts,
) -> Result<(), ApiError> {
    if !principal.break_glass {
        return Ok(());
    }
    let address = ClientAddress::from_request_parts(parts, state)
        .await
        .unwrap_or(ClientAddress(None));
    let action = audit::Action {
        request_id: audit::new_request_id(),
        who: principal.who(),
        action: "break-glass.use".into(),
        targets: vec![principal.user.clone()],
        summary: format!("{} {}", parts.method, parts.uri.path()),
        parameters: Vec::new(),
        source: Some(address.text()),
        time: state.user_auth.now(),
    };
    audit_break_glass(state, action).await
}

/// Writes a break-glass audit record, or refuses the request.
async fn audit_break_glass(state: &AppState, action: audit::Action) -> Result<(), ApiError> {
    match state.audit.record(action).await {
        Ok(_) => Ok(()),
        Err(err) => {
            tracing::error!(error = %err, "cannot audit a break-glass admin; refusing the request");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit repository cannot be written, so break-glass access is refused: see the controller's log",
            ))
        }
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::unauthorized(
            "missing `Authorization: Bearer` header: log in with `muster login`, or use an API token",
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    Ok(token.trim())
}

/// The principal a session or API token stands for.
pub async fn authenticate_bearer(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let now = state.user_auth.now();
    let hash = secret_hash(token);
    let (found, what) = if token.starts_with(SESSION_PREFIX) {
        (state.store.session_bearer(&hash).await?, "session")
    } else if token.starts_with(API_TOKEN_PREFIX) {
        (state.store.api_token_bearer(&hash).await?, "API token")
    } else {
        return Err(ApiError::unauthorized(
            "the bearer token is not a muster session or API token",
        ));
    };
    let bearer: BearerRecord = found.ok_or_else(|| {
        ApiError::unauthorized(format!(
            "unknown {what}: log in again with `muster login`, or use a valid API token"
        ))
    })?;
    if bearer.revoked_at.is_some() || bearer.user_disabled {
        return Err(ApiError::unauthorized(format!(
            "this {what} was revoked: log in again with `muster login`, or use a valid API token"
        )));
    }
    if bearer.expires_at.is_some_and(|expires| expires <= now) {
        return Err(ApiError::unauthorized(format!(
            "this {what} has expired: log in again with `muster login`, or create a new API token"
        )));
    }
    let via = match &bearer.api_token {
        None => {
            state.store.touch_session(&hash, now).await?;
            Via::Session
        }
        Some((id, name)) => {
            state.store.touch_api_token(id, now).await?;
            Via::ApiToken { name: name.clone() }
        }
    };
    Ok(Principal {
        user: bearer.user,
        via,
        break_glass: bearer.break_glass,
    })
}

/// `POST /v1/login`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The answer to a login: the session token, shown this once.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct LoginResponse {
    pub token: String,
    pub user: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// `GET /v1/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct WhoAmI {
    pub user: String,
    /// `session` or `api-token`.
    pub via: String,
    /// The API token's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub break_glass: bool,
}

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/login",
            post(login).layer(DefaultBodyLimit::max(MAX_LOGIN_BODY)),
        )
        .route("/v1/logout", post(logout))
        .route("/v1/whoami", get(whoami))
        .with_state(state)
}

/// The one answer to a wrong user name or password.
const WRONG_CREDENTIALS: &str = "wrong user name or password";

async fn login(
    State(state): State<AppState>,
    address: ClientAddress,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The parser's message could quote the body, password and all.
    let request: LoginRequest = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request(r#"the login body must be JSON: {"user": "NAME", "password": "…"}"#)
    })?;
    match password_login(&state, &address, &request.user, request.password).await? {
        Ok(session) => Ok(Json(LoginResponse {
            token: session.token,
            user: session.user,
            expires_at: session.expires_at,
        })
        .into_response()),
        Err(LoginRefused::Locked {
            retry_after,
            message,
        }) => Ok((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after.to_string())],
            Json(ErrorBody { error: message }),
        )
            .into_response()),
        Err(LoginRefused::WrongCredentials) => Err(ApiError::unauthorized(WRONG_CREDENTIALS)),
    }
}

/// A new session of a user who logged in.
#[derive(Debug)]
pub struct NewSession {
    pub token: String,
    pub user: String,
    pub expires_at: i64,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRefused {
    /// Too many failures: the user name or the address is locked for
    /// `retry_after` seconds; `message` says so to the user.
    Locked { retry_after: i64, message: String },
    /// The one answer to a wrong user name or password.
    WrongCredentials,
}

impl LoginRefused {
    /// What to show the user.
    pub fn message(&self) -> &str {
        match self {
            LoginRefused::Locked { message, .. } => message,
            LoginRefused::WrongCredentials => WRONG_CREDENTIALS,
        }
    }
}

/// Checks a user name and password, counting attempts and locking out,
/// and opens a session: the one login path of the API and the dashboard.
pub async fn password_login(
    state: &AppState,
    address: &ClientAddress,
    user_name: &str,
    password: String,
) -> Result<Result<NewSession, LoginRefused>, ApiError> {
    let settings = &state.user_auth.settings;
    let now = state.user_auth.now();
    // Names that cannot exist are not counted per user: they can never
    // succeed, and need no row each.
    let user_gate = if valid_name(user_name) {
        state
            .store
            .count_login_attempt(&user_subject(user_name), settings.per_user, now)
            .await?
    } else {
        AttemptGate {
            allowed: true,
            locked_until: None,
        }
    };
    let address_gate = state
        .store
        .count_login_attempt(&address_subject(&address.text()), settings.per_address, now)
        .await?;
    let user = if valid_name(user_name) {
        state.store.user(user_name).await?
    } else {
        None
    };
    // One verification whatever happens next: the time taken says nothing
    // about whether the user exists or is locked.
    // The stand-in hash is made on first use, on the blocking thread too.
    let stored = user.as_ref().map(|user| user.password_hash.clone());
    let user_auth = Arc::clone(&state.user_auth);
    let verified = tokio::task::spawn_blocking(move || {
        let hash = match stored {
            Some(hash) => hash,
            None => user_auth.stand_in_hash()?,
        };
        Ok::<_, ApiError>(verify_password(&password, &hash))
    })
    .await
    .map_err(ApiError::internal)??;
    let known = user
        .as_ref()
        .map_or_else(|| "<unknown>".to_string(), |user| user.name.clone());
    if !user_gate.allowed || !address_gate.allowed {
        let until = [user_gate, address_gate]
            .iter()
            .filter(|gate| !gate.allowed)
            .filter_map(|gate| gate.locked_until)
            .max()
            .unwrap_or(now);
        tracing::warn!(user = %known, source = %address.text(), "login refused: too many failed attempts");
        let retry_after = (until - now).max(1);
        let minutes = (retry_after + 59) / 60;
        return Ok(Err(LoginRefused::Locked {
            retry_after,
            message: format!(
                "too many failed logins: try again in {minutes} {}",
                if minutes == 1 { "minute" } else { "minutes" }
            ),
        }));
    }
    let Some(user) = user.filter(|_| verified) else {
        // Unknown names are not logged: they are often passwords typed
        // into the wrong field.
        tracing::warn!(user = %known, source = %address.text(), "login failed");
        return Ok(Err(LoginRefused::WrongCredentials));
    };
    state
        .store
        .clear_login_failures(&user_subject(&user.name))
        .await?;
    state
        .store
        .forgive_login_attempt(&address_subject(&address.text()), settings.per_address)
        .await?;
    if user.break_glass {
        let action = audit::Action {
            request_id: audit::new_request_id(),
            who: Who {
                user: user.name.clone(),
                email: None,
                via: "session".into(),
                token: None,
                break_glass: true,
            },
            action: "login".into(),
            targets: vec![user.name.clone()],
            summary: "break-glass admin logged in".into(),
            parameters: Vec::new(),
            source: Some(address.text()),
            time: now,
        };
        audit_break_glass(state, action).await?;
    }
    let token = new_secret(SESSION_PREFIX).map_err(ApiError::internal)?;
    let expires_at = now + settings.session_ttl;
    state
        .store
        .create_session(&secret_hash(&token), &user.name, now, expires_at)
        .await?;
    tracing::info!(user = %user.name, source = %address.text(), break_glass = user.break_glass, "logged in");
    Ok(Ok(NewSession {
        token,
        user: user.name,
        expires_at,
    }))
}

async fn logout(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    if principal.via != Via::Session {
        return Err(ApiError::bad_request(
            "API tokens do not log out: revoke one with `muster apitoken revoke ID`",
        ));
    }
    let token = bearer_token(&headers)?;
    state
        .store
        .revoke_session(&secret_hash(token), state.user_auth.now())
        .await?;
    tracing::info!(user = %principal.user, "logged out");
    Ok(StatusCode::NO_CONTENT)
}

async fn whoami(principal: Principal) -> Json<WhoAmI> {
    let who = principal.who();
    Json(WhoAmI {
        user: who.user,
        via: who.via,
        token: who.token,
        break_glass: who.break_glass,
    })
}

/// Whether a user or API token name is acceptable: lowercase letters,
/// digits, `.`, `_` and `-`, starting with a letter or digit, at most 64.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Hashes a password with argon2id and a random salt, as a PHC string.
/// Slow on purpose: call it from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|err| format!("no randomness available: {err}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|err| err.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| format!("cannot hash the password: {err}"))
}

/// Whether `password` matches a PHC hash; the crate compares in constant
/// time. A hash that does not parse matches nothing. Slow on purpose.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new session or API token: the prefix and 32 random bytes.
pub fn new_secret(prefix: &str) -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| format!("no randomness available: {err}"))?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The hash under which a session or API token is stored.
pub fn secret_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("correct horse battery", "not a hash"));
        let again = hash_password("correct horse battery").unwrap();
        assert_ne!(hash, again, "every hash has its own salt");
    }

    #[test]
    fn names_are_plain() {
        assert!(valid_name("alice"));
        assert!(valid_name("ci-deploy.2"));
        assert!(!valid_name("Alice"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(65)));
    }

    #[test]
    fn secrets_are_random_and_prefixed() {
        let one = new_secret(API_TOKEN_PREFIX).unwrap();
        let two = new_secret(API_TOKEN_PREFIX).unwrap();
        assert!(one.starts_with(API_TOKEN_PREFIX));
        assert_ne!(one, two);
        assert_eq!(one.len(), API_TOKEN_PREFIX.len() + 43);
        assert_eq!(secret_hash(&one).len(), 64);
    }
}
