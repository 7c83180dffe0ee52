//! The agent protocol: request and response bodies of the controller's
//! `/v1` API, and the HMAC scheme that authenticates agents.
//!
//! Every request after enrollment carries four headers: the host id, a
//! Unix timestamp, a random nonce and an HMAC-SHA256 over method, path
//! (with query), timestamp, nonce and the SHA-256 of the body, keyed with a
//! key derived from the host's secret. The controller refuses timestamps
//! more than [`auth::MAX_SKEW_SECS`] away from its clock and nonces it has
//! seen within that window.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/enroll`: a new host presents an enrollment token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// The host's name, its hostname unless configured otherwise.
    pub name: String,
    /// Facts about the host: `os`, `os_version`, `arch`, `kernel`, …
    #[serde(default)]
    pub facts: serde_json::Map<String, serde_json::Value>,
}

/// The answer to an enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub host_id: String,
    /// The host's secret: shown once, kept by the agent.
    pub secret: String,
    pub state: HostState,
}

/// Whether a host may receive bundles and jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Enrolled, waiting for an operator's approval.
    Pending,
    /// Receives bundles and jobs.
    Approved,
    /// Refused by an operator.
    Rejected,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Pending => "pending",
            HostState::Approved => "approved",
            HostState::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<HostState> {
        match text {
            "pending" => Some(HostState::Pending),
            "approved" => Some(HostState::Approved),
            "rejected" => Some(HostState::Rejected),
            _ => None,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// What happened to one resource in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceStatus {
    /// Already as desired.
    InSync,
    /// Was different and has been repaired.
    Changed,
    /// Differs and was left alone (audit mode, or a dry run).
    Drifted,
    /// Could not be checked or applied.
    Failed,
    /// Not applied: cannot be managed here (a sandboxed root) or a
    /// resource it depends on failed.
    Skipped,
}

/// One resource's outcome in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceReport {
    pub id: String,
    pub status: ResourceStatus,
    /// Why it failed or was skipped, or what was changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Unified diff of file content (secret content redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// One compliance check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub policy: String,
    pub name: String,
    pub passed: bool,
    /// The command's output, bounded.
    #[serde(default)]
    pub output: String,
}

/// Resource use at report time.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Metrics {
    pub cpu_percent: f64,
    pub memory_percent: f64,
    /// Use of the fullest mounted file system.
    pub disk_percent: f64,
    pub load1: f64,
    /// Use per mount point.
    #[serde(default)]
    pub disks: BTreeMap<String, f64>,
}

/// The state of a host as its agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Everything matches the bundle.
    InSync,
    /// Some resources differ from the bundle.
    Drifted,
    /// Some resources failed.
    Failing,
    /// The bundle in force has expired; nothing new is applied.
    Stale,
}

/// `POST /v1/hosts/{id}/reports`: the outcome of a converge run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The generation of the bundle the run applied.
    pub generation: u64,
    pub commit: String,
    pub status: RunStatus,
    pub started_at: i64,
    pub finished_at: i64,
    #[serde(default)]
    pub resources: Vec<ResourceReport>,
    #[serde(default)]
    pub checks: Vec<CheckReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

/// `GET /v1/hosts/{id}/jobs`: the jobs for the host, each signed
/// ([`crate::job::SignedJob`]), oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsResponse {
    pub jobs: Vec<crate::job::SignedJob>,
}

/// `POST /v1/hosts/{id}/jobs/{job}/started`: the agent is about to run the
/// job. Only informative: the result is what counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobStarted {
    pub job_id: String,
    pub started_at: i64,
}

/// How a job ended on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResultState {
    /// It ran and exited with status 0.
    Succeeded,
    /// It ran and failed: a non-zero exit, a signal, or it could not be
    /// started; or the agent stopped while it ran.
    Failed,
    /// It ran past its timeout and its process group was killed.
    TimedOut,
    /// It was not run: it failed verification (signature, host, expiry),
    /// or cannot run here (`sandboxed`), or is malformed. `message` says
    /// why.
    Refused,
}

impl JobResultState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobResultState::Succeeded => "succeeded",
            JobResultState::Failed => "failed",
            JobResultState::TimedOut => "timed_out",
            JobResultState::Refused => "refused",
        }
    }
}

/// Bytes of stdout, and separately of stderr, a job result carries (the
/// truncation marker comes on top).
pub const JOB_OUTPUT_LIMIT: usize = 64 * 1024;

/// Ends job output that was cut at [`JOB_OUTPUT_LIMIT`].
pub const JOB_OUTPUT_TRUNCATED: &str = "… truncated";

/// `POST /v1/hosts/{id}/jobs/{job}/result`: how a job ended. Sending the
/// same result again is harmless: the controller answers `200` and keeps
/// the first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    pub job_id: String,
    pub state: JobResultState,
    /// The exit code, when the program exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// stdout, bounded to [`JOB_OUTPUT_LIMIT`] bytes plus a truncation
    /// marker.
    #[serde(default)]
    pub stdout: String,
    /// stderr, bounded likewise.
    #[serde(default)]
    pub stderr: String,
    /// Why it was refused or failed without running (unset otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub started_at: i64,
    pub finished_at: i64,
}

impl JobResult {
    /// The result with stdout and stderr cut to [`JOB_OUTPUT_LIMIT`] bytes
    /// each (on a character boundary), marked where cut. Output that the
    /// agent already bounded, marker included, is left as it is.
    pub fn bounded(mut self) -> JobResult {
        self.stdout = bound_output(self.stdout);
        self.stderr = bound_output(self.stderr);
        if let Some(message) = self.message.take() {
            self.message = Some(bound_output(message));
        }
        self
    }
}

/// `text` cut to [`JOB_OUTPUT_LIMIT`] bytes, with a marker, when longer
/// than the limit and room for the marker.
pub fn bound_output(text: String) -> String {
    // The agent's own marker says how many bytes there were in all.
    const MARKER_ROOM: usize = 64;
    if text.len() <= JOB_OUTPUT_LIMIT + MARKER_ROOM {
        return text;
    }
    let mut end = JOB_OUTPUT_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut bounded = text[..end].to_string();
    if !bounded.ends_with('\n') {
        bounded.push('\n');
    }
    bounded.push_str(&format!(
        "{JOB_OUTPUT_TRUNCATED} ({} bytes in all)",
        text.len()
    ));
    bounded
}

/// Request signing shared by the agent and the controller.
pub mod auth {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    pub const HEADER_HOST: &str = "x-muster-host";
    pub const HEADER_TIMESTAMP: &str = "x-muster-timestamp";
    pub const HEADER_NONCE: &str = "x-muster-nonce";
    pub const HEADER_SIGNATURE: &str = "x-muster-signature";

    /// How far a request's timestamp may be from the controller's clock.
    pub const MAX_SKEW_SECS: i64 = 300;

    /// The HMAC key for a host secret. The controller stores this key,
    /// never the secret itself.
    pub fn derive_key(secret: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"muster host key v1\0");
        hasher.update(secret.as_bytes());
        hasher.finalize().into()
    }

    /// The bytes that are signed: one field per line.
    pub fn signing_input(
        method: &str,
        path_and_query: &str,
        timestamp: i64,
        nonce: &str,
        body: &[u8],
    ) -> String {
        let body_hash = hex::encode(Sha256::digest(body));
        format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body_hash}")
    }

    /// The hex signature of a request.
    pub fn sign(
        key: &[u8],
        method: &str,
        path_and_query: &str,
        timestamp: i64,
        nonce: &str,
        body: &[u8],
    ) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(signing_input(method, path_and_query, timestamp, nonce, body).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `signature` (hex) is right, compared in constant time.
    pub fn verify(
        key: &[u8],
        method: &str,
        path_and_query: &str,
        timestamp: i64,
        nonce: &str,
        body: &[u8],
        signature: &str,
    ) -> bool {
        let Ok(signature) = hex::decode(signature) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(signing_input(method, path_and_query, timestamp, nonce, body).as_bytes());
        mac.verify_slice(&signature).is_ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn signatures_cover_every_field() {
            let key = derive_key("s3cret");
            let good = sign(
                &key,
                "GET",
                "/v1/hosts/h1/bundle?generation=3",
                1_700_000_000,
                "n1",
                b"",
            );
            assert!(verify(
                &key,
                "GET",
                "/v1/hosts/h1/bundle?generation=3",
                1_700_000_000,
                "n1",
                b"",
                &good
            ));
            assert!(!verify(
                &key,
                "POST",
                "/v1/hosts/h1/bundle?generation=3",
                1_700_000_000,
                "n1",
                b"",
                &good
            ));
            assert!(!verify(
                &key,
                "GET",
                "/v1/hosts/h2/bundle?generation=3",
                1_700_000_000,
                "n1",
                b"",
                &good
            ));
            assert!(!verify(
                &key,
                "GET",
                "/v1/hosts/h1/bundle?generation=3",
                1_700_000_001,
                "n1",
                b"",
                &good
            ));
            assert!(!verify(
                &key,
                "GET",
                "/v1/hosts/h1/bundle?generation=3",
                1_700_000_000,
                "n2",
                b"",
                &good
            ));
            assert!(!verify(
                &key,
                "GET",
                "/v1/hosts/h1/bundle?generation=3",
                1_700_000_000,
                "n1",
                b"x",
                &good
            ));
            assert!(!verify(
                &derive_key("other"),
                "GET",
                "/v1/hosts/h1/bundle?generation=3",
                1_700_000_000,
                "n1",
                b"",
                &good
            ));
            assert!(!verify(
                &key,
                "GET",
                "/v1/hosts/h1/bundle?generation=3",
                1_700_000_000,
                "n1",
                b"",
                "zz"
            ));
        }
    }
}
