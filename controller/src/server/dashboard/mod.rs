//! The dashboard: HTML pages for people, next to the JSON API.
//!
//! Handlers here load data, decide what the user may see and do (RBAC of
//! the deployed commit, asked on every request like the API does) and
//! hand view models to `muster_web`, which renders them. Each page area
//! has its own module and `router()`; this module holds what they share:
//! the session cookie and the [`Viewer`] extractor, CSRF checks on every
//! form, the security headers, errors as pages, login and logout, and the
//! embedded assets.
//!
//! Sessions are the API's sessions (`POST /v1/login` and the login form
//! open the same kind), carried in an `HttpOnly; SameSite=Strict` cookie.
//! The CSRF token of a session is a hash of its secret token: the server
//! recomputes it from the cookie, so it needs no storage and works on
//! every replica, and a page that shows it reveals nothing of the session.

pub mod audit;
pub mod commits;
pub mod enrollment;
pub mod events;
pub mod fleet;
pub mod hosts;
pub mod jobs;
pub mod overview;

use axum::Router;
use axum::extract::{
    FromRequest, FromRequestParts, OptionalFromRequestParts, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine;
use muster_schemas::model::Permission;
use muster_web::layout::{Notice, NoticeKind};
use muster_web::{Chrome, Markup, Nav, Section};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::user_auth::{
    self, ClientAddress, LoginRefused, Principal, SESSION_PREFIX, audit_break_glass_use,
    authenticate_bearer, secret_hash,
};
use super::{ApiError, AppState};
use crate::rbac::{Caller, Need};

/// The session cookie.
pub const SESSION_COOKIE: &str = "muster_session";
/// A one-time notice for the next page (the outcome of a form).
const NOTICE_COOKIE: &str = "muster_notice";
/// Form bodies hold a few fields.
const MAX_FORM_BODY: usize = 64 << 10;

/// The content security policy of every page: scripts and styles only
/// from our own origin (no inline script, no eval), no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Every page of the dashboard, with the security headers on each answer.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/assets/{file}", get(asset))
        .merge(overview::router())
        .merge(hosts::router())
        .merge(commits::router())
        .merge(jobs::router())
        .merge(enrollment::router())
        .merge(audit::router())
        .merge(events::router())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            navigable_errors,
        ))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// An error page's message, left on the response for [`navigable_errors`].
#[derive(Debug, Clone)]
struct ErrorMessage(String);

/// Gives an error page the navigation of a logged-in user, so that a 403
/// or 404 is not a dead end. The handler that failed may not have known
/// who asked (an extractor can fail first), so the session is read again
/// here; this reads no data and writes no audit record.
async fn navigable_errors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let Some(ErrorMessage(message)) = response.extensions().get::<ErrorMessage>().cloned() else {
        return response;
    };
    let Some(token) = cookie(&headers, SESSION_COOKIE).filter(|t| t.starts_with(SESSION_PREFIX))
    else {
        return response;
    };
    let Ok(principal) = authenticate_bearer(&state, token).await else {
        return response;
    };
    let viewer = Viewer {
        principal,
        csrf: csrf_token(token),
        notice: None,
    };
    let section = Section::ALL
        .into_iter()
        .rev()
        .find(|section| path.starts_with(section.path()))
        .unwrap_or(Section::Overview);
    let chrome = viewer.chrome(&state, section);
    let status = response.status();
    let page = muster_web::layout::error(Some(&chrome), status.as_u16(), &message);
    (status, axum::response::Html(page.into_string())).into_response()
}

/// What an unknown path answers: an HTML page for people, a JSON error
/// under the API's `/v1/`.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/v1/") {
        return ApiError::new(StatusCode::NOT_FOUND, format!("no route {}", uri.path()))
            .into_response();
    }
    let response =
        PageError::not_found("there is no such page: pick one from the overview").into_response();
    security_headers_on(response)
}

async fn security_headers(request: Request, next: Next) -> Response {
    security_headers_on(next.run(request).await)
}

fn security_headers_on(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "same-origin");
    // Pages hold what one user may see: never kept by shared caches.
    set(headers, header::CACHE_CONTROL, "no-store");
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    match muster_web::assets::get(&file) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                // The URL carries the content hash: it never changes.
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            asset.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// The logged-in user of a page: take it as an extractor argument and the
/// page redirects anyone else to the login form.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub principal: Principal,
    /// The CSRF token every form of this session must carry.
    pub csrf: String,
    /// The notice left by the last form, shown once.
    pub notice: Option<Notice>,
}

impl Viewer {
    pub fn caller(&self) -> Caller {
        Caller::from(&self.principal)
    }

    /// Whether the user holds `permission` anywhere (on some hosts, or
    /// fleet-wide for a fleet-wide one).
    pub fn may(&self, state: &AppState, permission: Permission) -> bool {
        self.require(state, permission).is_ok()
    }

    /// Refuses with a 403 page unless the user holds `permission`
    /// somewhere; the message names what is missing.
    pub fn require(&self, state: &AppState, permission: Permission) -> Result<(), PageError> {
        state
            .access
            .current()
            .authorize(&self.caller(), Need::Permission(permission), &[])
            .map_err(|denied| PageError::new(StatusCode::FORBIDDEN, denied.to_string()))
    }

    /// The frame of a page in `section`, with the sections this user may
    /// open.
    pub fn chrome(&self, state: &AppState, section: Section) -> Chrome {
        let sections = Section::ALL
            .into_iter()
            .filter(|section| match section {
                Section::Overview => true,
                Section::Hosts => self.may(state, Permission::HostsRead),
                Section::Commits => self.may(state, Permission::CommitsRead),
                Section::Jobs => self.may(state, Permission::JobsRead),
                Section::Enrollment => {
                    self.may(state, Permission::HostsApprove)
                        || self.may(state, Permission::TokensManage)
                }
                Section::Audit => self.may(state, Permission::AuditRead),
            })
            .collect();
        Chrome {
            user: self.principal.user.clone(),
            csrf: self.csrf.clone(),
            nav: Nav { sections },
            section,
            now: state.user_auth.now(),
            notice: self.notice.clone(),
        }
    }

    /// The answer with a page: the HTML, and the shown notice cleared.
    pub fn page(&self, markup: Markup) -> Response {
        let mut response = axum::response::Html(markup.into_string()).into_response();
        if self.notice.is_some() {
            response.headers_mut().append(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "muster_notice=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict",
                ),
            );
        }
        response
    }
}

/// The CSRF token of a session token.
pub fn csrf_token(session_token: &str) -> String {
    let digest = Sha256::digest(format!("muster-csrf\0{session_token}").as_bytes());
    hex::encode(&digest[..16])
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        let next = parts
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_string();
        let token = cookie(&parts.headers, SESSION_COOKIE)
            .filter(|token| token.starts_with(SESSION_PREFIX))
            .ok_or_else(|| PageError::Login { next: next.clone() })?
            .to_string();
        let principal = match authenticate_bearer(state, &token).await {
            Ok(principal) => principal,
            Err(err) if err.status == StatusCode::UNAUTHORIZED => {
                return Err(PageError::Login { next });
            }
            Err(err) => return Err(err.into()),
        };
        audit_break_glass_use(state, &principal, parts).await?;
        let notice = cookie(&parts.headers, NOTICE_COOKIE).and_then(decode_notice);
        Ok(Viewer {
            principal,
            csrf: csrf_token(&token),
            notice,
        })
    }
}

impl OptionalFromRequestParts<AppState> for Viewer {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, PageError> {
        match <Viewer as FromRequestParts<AppState>>::from_request_parts(parts, state).await {
            Ok(viewer) => Ok(Some(viewer)),
            Err(PageError::Login { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

fn encode_notice(notice: &Notice) -> String {
    let kind = match notice.kind {
        NoticeKind::Success => 's',
        NoticeKind::Error => 'e',
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}{}", notice.text))
}

fn decode_notice(value: &str) -> Option<Notice> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut chars = text.chars();
    let kind = match chars.next()? {
        's' => NoticeKind::Success,
        'e' => NoticeKind::Error,
        _ => return None,
    };
    Some(Notice {
        kind,
        text: chars.as_str().chars().take(500).collect(),
    })
}

/// After a form: go to `to` (a path of ours) and show `notice` there once.
pub fn see_other_with(to: &str, notice: Notice) -> Response {
    let mut response = Redirect::to(local_path(to)).into_response();
    let cookie = format!(
        "{NOTICE_COOKIE}={}; Path=/; Max-Age=60; HttpOnly; SameSite=Strict",
        encode_notice(&notice)
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

pub fn success(text: impl Into<String>) -> Notice {
    Notice {
        kind: NoticeKind::Success,
        text: text.into(),
    }
}

pub fn failure(text: impl Into<String>) -> Notice {
    Notice {
        kind: NoticeKind::Error,
        text: text.into(),
    }
}

/// `to` if it is a path on this server, `/` otherwise: a login link must
/// not send anyone elsewhere.
pub fn local_path(to: &str) -> &str {
    let local = to.starts_with('/') && !to.starts_with("//") && !to.starts_with("/\\");
    if local && !to.chars().any(char::is_control) {
        to
    } else {
        "/"
    }
}

/// A form body from a logged-in user, checked against CSRF: the session's
/// token in `_csrf`, and, when the browser says where the form came from,
/// our own origin. Anything else is a 403 and nothing happens.
#[derive(Debug)]
pub struct CsrfForm<T> {
    pub viewer: Viewer,
    pub form: T,
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(rename = "_csrf", default)]
    csrf: String,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for CsrfForm<T> {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, PageError> {
        let (mut parts, body) = request.into_parts();
        let viewer =
            <Viewer as FromRequestParts<AppState>>::from_request_parts(&mut parts, state).await?;
        check_origin(&parts.headers)?;
        let bytes = axum::body::to_bytes(body, MAX_FORM_BODY)
            .await
            .map_err(|_| PageError::new(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large"))?;
        let field: CsrfField = serde_urlencoded::from_bytes(&bytes).map_err(|_| csrf_refused())?;
        let expected = viewer.csrf.as_bytes();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            field.csrf.as_bytes(),
            expected,
        )) {
            tracing::warn!(user = %viewer.principal.user, path = %parts.uri.path(), "form refused: bad CSRF token");
            return Err(csrf_refused());
        }
        let form = serde_urlencoded::from_bytes(&bytes).map_err(|err| {
            PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the form is incomplete: {err}"),
            )
        })?;
        Ok(CsrfForm { viewer, form })
    }
}

fn csrf_refused() -> PageError {
    PageError::new(
        StatusCode::FORBIDDEN,
        "the form's security token is missing or stale: reload the page and try again",
    )
}

/// Refuses a request whose `Origin` (sent by browsers on every form post)
/// is not the host it was sent to.
fn check_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, host)| host);
    if host.is_some() && origin_host == host {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "this form was sent from another site: open the dashboard itself and try again",
        ))
    }
}

/// What a page answers instead of itself.
#[derive(Debug)]
pub enum PageError {
    /// Not logged in (or the session ended): to the login form, and back
    /// to `next` after.
    Login { next: String },
    /// An error page: status and what to do.
    Page { status: StatusCode, message: String },
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> PageError {
        PageError::Page {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<ApiError> for PageError {
    fn from(err: ApiError) -> Self {
        PageError::new(err.status, err.message)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(err: crate::store::StoreError) -> Self {
        ApiError::internal(err).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Login { next } => {
                let query =
                    serde_urlencoded::to_string([("next", local_path(&next))]).unwrap_or_default();
                Redirect::to(&format!("/login?{query}")).into_response()
            }
            PageError::Page { status, message } => {
                let page = muster_web::layout::error(None, status.as_u16(), &message);
                let mut response =
                    (status, axum::response::Html(page.into_string())).into_response();
                response.extensions_mut().insert(ErrorMessage(message));
                response
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

async fn login_form(viewer: Option<Viewer>, Query(query): Query<LoginQuery>) -> Response {
    let next = query.next.as_deref().map_or("/", local_path);
    if viewer.is_some() {
        return Redirect::to(next).into_response();
    }
    axum::response::Html(muster_web::layout::login(None, "", next).into_string()).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    address: ClientAddress,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, PageError> {
    // Logging in has no session to tie a token to: the origin check and
    // the lack of any cookie to ride on keep other sites out.
    check_origin(&headers)?;
    let form: LoginForm = serde_urlencoded::from_bytes(&body).map_err(|_| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            "the login form needs a user and a password",
        )
    })?;
    let next = form.next.as_deref().map_or("/", local_path).to_string();
    let refused = |status: StatusCode, message: &str, user: &str| {
        (
            status,
            axum::response::Html(
                muster_web::layout::login(Some(message), user, &next).into_string(),
            ),
        )
            .into_response()
    };
    match user_auth::password_login(&state, &address, &form.user, form.password).await? {
        Ok(session) => {
            let secure = if state.user_auth.settings.secure_cookies {
                "; Secure"
            } else {
                ""
            };
            let ttl = (session.expires_at - state.user_auth.now()).max(0);
            let cookie = format!(
                "{SESSION_COOKIE}={}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Strict{secure}",
                session.token
            );
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().append(
                header::SET_COOKIE,
                HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
            );
            Ok(response)
        }
        Err(refusal @ LoginRefused::Locked { .. }) => Ok(refused(
            StatusCode::TOO_MANY_REQUESTS,
            refusal.message(),
            &form.user,
        )),
        Err(refusal) => Ok(refused(
            StatusCode::UNAUTHORIZED,
            refusal.message(),
            &form.user,
        )),
    }
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    CsrfForm { viewer, .. }: CsrfForm<std::collections::HashMap<String, String>>,
) -> Result<Response, PageError> {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        state
            .store
            .revoke_session(&secret_hash(token), state.user_auth.now())
            .await?;
    }
    tracing::info!(user = %viewer.principal.user, "logged out of the dashboard");
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("muster_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
    );
    Ok(response)
}
