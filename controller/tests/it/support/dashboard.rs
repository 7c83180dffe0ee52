//! Talking to the dashboard without a browser: `router.oneshot` requests
//! on a live controller's state, with a session cookie and CSRF token
//! taken from a real login through the login form.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use tower::ServiceExt;

use crate::harness::Harness;

/// A page's answer.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Page {
    /// Where a redirect goes.
    pub(crate) fn location(&self) -> Option<&str> {
        self.headers
            .get(header::LOCATION)
            .and_then(|value| value.to_str().ok())
    }

    /// Asserts that the page is a 200 and contains every one of `texts`.
    #[track_caller]
    pub(crate) fn assert_shows(&self, texts: &[&str]) {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        for text in texts {
            assert!(
                self.body.contains(text),
                "the page lacks `{text}`:\n{}",
                self.body
            );
        }
    }
}

/// A logged-in browser, as far as the server can tell.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) router: Router,
    /// `muster_session=…`.
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

/// Adds a user with a password (a break-glass admin when `admin`).
pub(crate) async fn add_user(harness: &Harness, name: &str, password: &str) {
    let hash = muster_controller::server::user_auth::hash_password(password).unwrap();
    harness
        .store
        .add_user(name, &hash, false, muster_controller::server::now())
        .await
        .unwrap();
}

pub(crate) async fn send(router: &Router, request: Request<Body>) -> Page {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body is readable");
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// A GET with no session.
pub(crate) async fn get_anonymous(router: &Router, path: &str) -> Page {
    send(router, Request::get(path).body(Body::empty()).unwrap()).await
}

/// A form POST, fields URL-encoded, with `cookie` when given.
pub(crate) async fn post_form(
    router: &Router,
    path: &str,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> Page {
    let mut request =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let body = serde_urlencoded::to_string(fields).unwrap();
    send(router, request.body(Body::from(body)).unwrap()).await
}

/// Logs in through the form and reads the CSRF token off the overview.
pub(crate) async fn login(harness: &Harness, user: &str, password: &str) -> Session {
    let router = harness.router();
    let answer = post_form(
        &router,
        "/login",
        None,
        &[("user", user), ("password", password), ("next", "/")],
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::SEE_OTHER,
        "login failed: {}",
        answer.body
    );
    let set_cookie = answer
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("muster_session="))
        .expect("the login sets the session cookie")
        .to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let mut session = Session {
        router,
        cookie,
        csrf: String::new(),
    };
    let overview = session.get("/").await;
    session.csrf = csrf_of(&overview.body).expect("the page carries a CSRF token");
    session
}

/// The CSRF token in a page's forms.
pub(crate) fn csrf_of(body: &str) -> Option<String> {
    let at = body.find(r#"name="_csrf" value=""#)? + r#"name="_csrf" value=""#.len();
    Some(body[at..].split('"').next()?.to_string())
}

impl Session {
    pub(crate) async fn get(&self, path: &str) -> Page {
        let request = Request::get(path)
            .header(header::COOKIE, &self.cookie)
            .body(Body::empty())
            .unwrap();
        send(&self.router, request).await
    }

    /// A form POST with this session's cookie and CSRF token.
    pub(crate) async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut fields = fields.to_vec();
        fields.push(("_csrf", &self.csrf));
        post_form(&self.router, path, Some(&self.cookie), &fields).await
    }

    /// A form POST with this session's cookie and no CSRF token.
    pub(crate) async fn post_without_csrf(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        post_form(&self.router, path, Some(&self.cookie), fields).await
    }
}

/// Stores a running ad-hoc script action `a1` by alice with one job,
/// `a1-<host>`, as if made through the API: pages that list jobs have one
/// to show without an agent running it.
pub(crate) async fn store_script_action(
    harness: &Harness,
    summary: &str,
    host_id: &str,
    parameters: serde_json::Value,
    payload: &str,
) {
    use muster_controller::store::{JobSource, NewAction, NewJob};
    let now = muster_controller::server::now();
    harness
        .store
        .create_action(
            &NewAction {
                id: "a1".into(),
                kind: "script".into(),
                requested_by: "alice".into(),
                request_id: None,
                summary: summary.into(),
                targets: serde_json::json!({"hosts": [host_id]}),
                parameters,
                source: JobSource::AdHoc,
                max_parallel: None,
                failure_threshold: None,
                created_at: now,
                audit_commit: None,
            },
            &[NewJob {
                id: format!("a1-{host_id}"),
                host_id: host_id.into(),
                kind: "script".into(),
                payload: payload.into(),
                signature: "signature".into(),
                run_timeout: 600,
                expires_at: now + 3_600,
                schedule_key: None,
                not_before: None,
            }],
        )
        .await
        .unwrap();
}
