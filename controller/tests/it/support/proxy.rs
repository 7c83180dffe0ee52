//! A man in the middle between real agents and a real controller: an HTTP
//! proxy on `127.0.0.1:0` that forwards every request verbatim (method,
//! path and query, headers, body, so that the agent's signature still
//! holds) and can answer bundle requests with a bundle of the test's
//! choosing instead of the controller's, and a job poll with jobs of its
//! choosing.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use muster_schemas::bundle::SignedBundle;
use muster_schemas::job::SignedJob;
use muster_schemas::protocol::JobsResponse;

/// Headers that belong to one connection, not to the message: the proxy
/// sets its own.
const HOP_BY_HOP: [header::HeaderName; 5] = [
    header::HOST,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

struct Shared {
    upstream: String,
    http: reqwest::Client,
    /// The body bundle requests are answered with instead of the
    /// controller's answer.
    bundle: Mutex<Option<Vec<u8>>>,
    /// The body the next job poll is answered with, without asking the
    /// controller.
    jobs: Mutex<Option<Vec<u8>>>,
}

/// The proxy, stopped on drop.
pub(crate) struct TamperingProxy {
    pub(crate) url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl TamperingProxy {
    /// Starts a proxy in front of the controller at `upstream`.
    pub(crate) async fn start(upstream: &str) -> TamperingProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            bundle: Mutex::new(None),
            jobs: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        TamperingProxy {
            url: format!("http://{address}"),
            shared,
            task,
        }
    }

    /// From now on, every bundle request is answered `200` with `signed`,
    /// whatever the controller said (the request still reaches it).
    pub(crate) fn serve_bundle(&self, signed: &SignedBundle) {
        *self.shared.bundle.lock().unwrap() = Some(serde_json::to_vec(signed).unwrap());
    }

    /// The next job poll is answered `200` with `jobs`, at once and
    /// without reaching the controller; later ones pass through.
    pub(crate) fn serve_jobs_once(&self, jobs: Vec<SignedJob>) {
        *self.shared.jobs.lock().unwrap() =
            Some(serde_json::to_vec(&JobsResponse { jobs }).unwrap());
    }

    /// From now on, bundle requests get the controller's answers again.
    pub(crate) fn pass_through(&self) {
        *self.shared.bundle.lock().unwrap() = None;
    }
}

impl Drop for TamperingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_bundle_request(method: &Method, path: &str) -> bool {
    method == Method::GET && path.starts_with("/v1/hosts/") && path.ends_with("/bundle")
}

fn is_jobs_request(method: &Method, path: &str) -> bool {
    method == Method::GET && path.starts_with("/v1/hosts/") && path.ends_with("/jobs")
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if is_jobs_request(&parts.method, parts.uri.path())
        && let Some(jobs) = shared.jobs.lock().unwrap().take()
    {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            jobs,
        )
            .into_response();
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut headers = parts.headers.clone();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let mut upstream = shared
        .http
        .request(
            parts.method.clone(),
            format!("{}{path_and_query}", shared.upstream),
        )
        .headers(headers);
    if !body.is_empty() {
        upstream = upstream.body(body);
    }
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(err) => {
            return (StatusCode::BAD_GATEWAY, format!("proxy: {err}")).into_response();
        }
    };
    let status = answer.status();
    let mut headers: HeaderMap = answer.headers().clone();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let bytes: Bytes = answer.bytes().await.unwrap_or_default();
    let replacement = shared.bundle.lock().unwrap().clone();
    if let Some(replacement) =
        replacement.filter(|_| is_bundle_request(&parts.method, parts.uri.path()))
    {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            replacement,
        )
            .into_response();
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
