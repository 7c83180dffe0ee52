//! The agent's HTTP client for the controller's `/v1` API: enrollment, the
//! long polls for bundles and jobs, report and job result delivery, with
//! every request after enrollment signed with the host key
//! (`docs/agent-protocol.md`).

use std::time::Duration;

use muster_schemas::bundle::SignedBundle;
use muster_schemas::job::SignedJob;
use muster_schemas::protocol::{
    EnrollRequest, EnrollResponse, ErrorBody, JobResult, JobStarted, JobsResponse, auth,
};
use reqwest::{Method, StatusCode};

use crate::error::AgentError;

/// How long the controller may hold a bundle request (`wait=`).
pub const LONG_POLL_SECS: u64 = 55;

/// The request timeout: a bit above the long poll, so that a held request
/// is answered by the controller, not cut by the agent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(LONG_POLL_SECS + 15);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the bundle endpoint answered.
#[derive(Debug)]
pub enum Poll {
    /// A bundle newer than the generation asked with.
    Bundle(SignedBundle),
    /// Nothing newer within the wait.
    NotModified,
    /// The host is pending approval or rejected.
    Forbidden(String),
}

/// What the jobs endpoint answered.
#[derive(Debug)]
pub enum JobPoll {
    /// Jobs to run, oldest first.
    Jobs(Vec<SignedJob>),
    /// None within the wait.
    NoJobs,
    /// The host is pending approval or rejected.
    Forbidden(String),
    /// The controller has no jobs endpoint (an older version).
    Unsupported,
}

/// What a report delivery came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    /// The controller refused the report for good (4xx other than 401):
    /// sending it again would not help.
    Rejected(String),
}

/// Makes the process-wide rustls crypto provider ring. reqwest is built
/// without a provider so that the agent links one crypto library only.
pub fn install_crypto_provider() {
    // Installing twice fails harmlessly: the provider is already ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn http_client() -> Result<reqwest::Client, AgentError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("muster-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| AgentError::Http(format!("cannot set up the HTTP client: {err}")))
}

fn base(server: &str) -> &str {
    server.trim_end_matches('/')
}

/// The message of an error response: the `error` field of the JSON body,
/// or the status line.
async fn error_message(response: reqwest::Response) -> String {
    let status = response.status();
    match response.json::<ErrorBody>().await {
        Ok(body) => format!("{status}: {}", body.error),
        Err(_) => status.to_string(),
    }
}

/// `POST /v1/enroll`.
pub async fn enroll(server: &str, request: &EnrollRequest) -> Result<EnrollResponse, AgentError> {
    let client = http_client()?;
    let response = client
        .post(format!("{}/v1/enroll", base(server)))
        .json(request)
        .send()
        .await
        .map_err(|err| {
            AgentError::Http(format!(
                "cannot reach the controller at {server}: {}",
                with_causes(&err)
            ))
        })?;
    match response.status() {
        StatusCode::CREATED | StatusCode::OK => response
            .json()
            .await
            .map_err(|err| AgentError::Http(format!("invalid enrollment answer: {err}"))),
        StatusCode::UNAUTHORIZED => Err(AgentError::Http(
            "enrollment refused: the token is unknown, revoked, expired or used up; create a new one with `muster token create`".into(),
        )),
        _ => Err(AgentError::Http(format!(
            "enrollment failed: {}",
            error_message(response).await
        ))),
    }
}

/// A client signed as one host. Clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    server: String,
    host_id: String,
    key: [u8; 32],
}

impl Client {
    pub fn new(server: &str, host_id: &str, secret: &str) -> Result<Client, AgentError> {
        Ok(Client {
            http: http_client()?,
            server: base(server).to_string(),
            host_id: host_id.to_string(),
            key: auth::derive_key(secret),
        })
    }

    /// Sends one signed request.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::Response, AgentError> {
        let timestamp = unix_now();
        let nonce = nonce()?;
        let signature = auth::sign(
            &self.key,
            method.as_str(),
            path_and_query,
            timestamp,
            &nonce,
            &body,
        );
        let mut request = self
            .http
            .request(method, format!("{}{path_and_query}", self.server))
            .header(auth::HEADER_HOST, &self.host_id)
            .header(auth::HEADER_TIMESTAMP, timestamp.to_string())
            .header(auth::HEADER_NONCE, nonce)
            .header(auth::HEADER_SIGNATURE, signature);
        if !body.is_empty() {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        request.send().await.map_err(|err| {
            AgentError::Http(format!(
                "cannot reach the controller at {}: {}",
                self.server,
                with_causes(&err)
            ))
        })
    }

    /// Long-polls for a bundle newer than `generation`.
    pub async fn poll_bundle(&self, generation: u64, wait_secs: u64) -> Result<Poll, AgentError> {
        let path = format!(
            "/v1/hosts/{}/bundle?generation={generation}&wait={wait_secs}",
            self.host_id
        );
        let response = self.send(Method::GET, &path, Vec::new()).await?;
        match response.status() {
            StatusCode::OK => response
                .json()
                .await
                .map(Poll::Bundle)
                .map_err(|err| AgentError::Http(format!("invalid bundle answer: {err}"))),
            StatusCode::NOT_MODIFIED => Ok(Poll::NotModified),
            StatusCode::FORBIDDEN => Ok(Poll::Forbidden(error_message(response).await)),
            _ => Err(AgentError::Http(format!(
                "bundle request failed: {}",
                error_message(response).await
            ))),
        }
    }

    /// Sends one report (its JSON bytes).
    pub async fn send_report(&self, body: Vec<u8>) -> Result<Delivery, AgentError> {
        let path = format!("/v1/hosts/{}/reports", self.host_id);
        let response = self.send(Method::POST, &path, body).await?;
        delivery(response, "report").await
    }

    /// Long-polls for the host's jobs.
    pub async fn poll_jobs(&self, wait_secs: u64) -> Result<JobPoll, AgentError> {
        let path = format!("/v1/hosts/{}/jobs?wait={wait_secs}", self.host_id);
        let response = self.send(Method::GET, &path, Vec::new()).await?;
        match response.status() {
            StatusCode::OK => response
                .json::<JobsResponse>()
                .await
                .map(|answer| JobPoll::Jobs(answer.jobs))
                .map_err(|err| AgentError::Http(format!("invalid jobs answer: {err}"))),
            StatusCode::NO_CONTENT => Ok(JobPoll::NoJobs),
            StatusCode::FORBIDDEN => Ok(JobPoll::Forbidden(error_message(response).await)),
            StatusCode::NOT_FOUND => Ok(JobPoll::Unsupported),
            _ => Err(AgentError::Http(format!(
                "jobs request failed: {}",
                error_message(response).await
            ))),
        }
    }

    /// Says that a job is about to run. Only informative: its failure is
    /// not worth a retry.
    pub async fn send_job_started(&self, notice: &JobStarted) -> Result<Delivery, AgentError> {
        let path = format!("/v1/hosts/{}/jobs/{}/started", self.host_id, notice.job_id);
        let body = serde_json::to_vec(notice)
            .map_err(|err| AgentError::Http(format!("cannot encode a started notice: {err}")))?;
        let response = self.send(Method::POST, &path, body).await?;
        delivery(response, "started notice").await
    }

    /// Sends a job's result. The controller keeps the first result of a
    /// job, so sending one again is harmless.
    pub async fn send_job_result(&self, result: &JobResult) -> Result<Delivery, AgentError> {
        let path = format!("/v1/hosts/{}/jobs/{}/result", self.host_id, result.job_id);
        let body = serde_json::to_vec(result)
            .map_err(|err| AgentError::Http(format!("cannot encode a job result: {err}")))?;
        let response = self.send(Method::POST, &path, body).await?;
        delivery(response, "job result").await
    }
}

/// What an answer to a delivery means: accepted, refused for good (a 4xx
/// other than 401 and 429: sending it again would not help), or an error
/// to retry.
async fn delivery(response: reqwest::Response, what: &str) -> Result<Delivery, AgentError> {
    let status = response.status();
    if status.is_success() {
        Ok(Delivery::Accepted)
    } else if status.is_client_error()
        && status != StatusCode::UNAUTHORIZED
        && status != StatusCode::TOO_MANY_REQUESTS
    {
        Ok(Delivery::Rejected(error_message(response).await))
    } else {
        Err(AgentError::Http(format!(
            "{what} delivery failed: {}",
            error_message(response).await
        )))
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

/// A fresh nonce: 32 hex characters from 16 random bytes.
fn nonce() -> Result<String, AgentError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|err| AgentError::Http(format!("no randomness for a request nonce: {err}")))?;
    Ok(hex::encode(bytes))
}

/// A uniformly random duration in `[0, max]`, for full jitter and splay.
pub fn random_duration(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() || max.is_zero() {
        return max / 2;
    }
    let millis = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(u64::from_le_bytes(bytes) % millis.saturating_add(1))
}

/// An error with its chain of causes, `a: b: c`: reqwest's own message
/// ("error sending request") leaves out why (connection refused, a
/// certificate not trusted), which is what an operator needs.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
