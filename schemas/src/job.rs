//! A job a host runs once: a script, a reboot or a service operation,
//! signed by the controller like a bundle, and the checks an agent makes
//! before it runs one.
//!
//! The controller serializes a [`Job`] with [`Job::to_canonical_json`] and
//! signs the bytes with its minisign key. The signature's trusted comment
//! ([`JobComment`]) repeats the host id, the job id and the expiry under
//! its own tag, `muster-job`, which no bundle signature carries: a bundle
//! signature can never pass as a job's, nor a job's as a bundle's, even
//! though the same key signs both. The agent calls [`verify_job`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::bundle::canonical_json;
use crate::signed::{CommentReader, SignedDocumentError, check_host, verify_signature};

/// One job for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The job's id, unique across the fleet; the agent's ledger keys on it.
    pub job_id: String,
    /// The host that runs it.
    pub host_id: String,
    /// When it was signed, in unix seconds.
    pub issued_at: i64,
    /// After this (unix seconds), agents no longer start it.
    pub expires_at: i64,
    /// The id of the action (an ad-hoc run, a scheduled run) it belongs to.
    pub action: String,
    /// What to run.
    pub kind: JobKind,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JobKind {
    /// Run a script from the fleet repo.
    Script(ScriptJob),
    /// Reboot the host (`systemctl reboot`).
    Reboot,
    /// Start, stop or restart a systemd unit.
    Service(ServiceJob),
}

impl JobKind {
    /// The kind's name, as stored and shown: `script`, `reboot`, `service`.
    pub fn label(&self) -> &'static str {
        match self {
            JobKind::Script(_) => "script",
            JobKind::Reboot => "reboot",
            JobKind::Service(_) => "service",
        }
    }
}

/// A script to run: the agent writes `body` to a file and runs
/// `interpreter FILE`, without a shell, with each parameter in the
/// environment variable `MUSTER_PARAM_<NAME>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptJob {
    /// The `Script` document's name.
    pub name: String,
    /// The absolute path of the program that runs the body.
    pub interpreter: String,
    /// The script.
    pub body: String,
    /// Parameter values by name (lowercase letters, digits and `_`),
    /// sorted by name so that the JSON is canonical.
    pub parameters: BTreeMap<String, String>,
    /// Seconds after which the script's process group is killed.
    pub timeout_secs: u64,
    /// The user it runs as; the agent's own user when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
}

/// A systemd unit operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceJob {
    /// The unit, such as `nginx` or `nginx.service`.
    pub name: String,
    pub operation: ServiceOperation,
}

/// What to do with a unit: `systemctl <operation> <unit>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceOperation {
    Start,
    Stop,
    Restart,
}

impl ServiceOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceOperation::Start => "start",
            ServiceOperation::Stop => "stop",
            ServiceOperation::Restart => "restart",
        }
    }
}

impl Job {
    /// The canonical JSON bytes of the job: what is signed and shipped.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        self.to_canonical_json_string().into_bytes()
    }

    /// [`to_canonical_json`](Self::to_canonical_json) as text.
    pub fn to_canonical_json_string(&self) -> String {
        canonical_json(self)
    }

    /// The trusted comment a signature over this job carries.
    pub fn trusted_comment(&self) -> JobComment {
        JobComment {
            host_id: self.host_id.clone(),
            job_id: self.job_id.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// A job as shipped: the canonical JSON text and the minisign signature
/// over exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedJob {
    /// The job's canonical JSON text.
    pub job: String,
    /// The minisign signature file text.
    pub signature: String,
}

impl SignedJob {
    /// The job id the job claims, read without verifying anything: for
    /// reporting a job that fails verification under the id it was
    /// delivered with. `None` when there is none, or when it is not an id
    /// (see [`is_valid_job_id`]).
    pub fn claimed_job_id(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(&self.job).ok()?;
        let id = value.get("job_id")?.as_str()?;
        is_valid_job_id(id).then(|| id.to_string())
    }
}

/// Whether `id` can be a job or action id: 1 to 64 ASCII letters, digits,
/// `-` and `_`. Ids go into URL paths, file names and the trusted comment,
/// so nothing else is accepted.
pub fn is_valid_job_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The first word of a job signature's trusted comment. It differs from
/// [`TRUSTED_COMMENT_TAG`](crate::bundle::TRUSTED_COMMENT_TAG), so that
/// neither kind of signature passes for the other.
pub const JOB_COMMENT_TAG: &str = "muster-job";

/// The signed header of a job, as carried in the minisign trusted
/// comment: `muster-job host=<id> job=<id> expires=<unix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobComment {
    pub host_id: String,
    pub job_id: String,
    pub expires_at: i64,
}

impl JobComment {
    /// Whether every value can be written into the comment and read back:
    /// not empty, no whitespace, no control characters.
    pub fn is_representable(&self) -> bool {
        let word = |text: &str| {
            !text.is_empty() && text.chars().all(|c| !c.is_whitespace() && !c.is_control())
        };
        word(&self.host_id) && word(&self.job_id)
    }
}

impl fmt::Display for JobComment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{JOB_COMMENT_TAG} host={} job={} expires={}",
            self.host_id, self.job_id, self.expires_at
        )
    }
}

impl FromStr for JobComment {
    type Err = SignedDocumentError;

    /// Parses exactly the form [`Display`](fmt::Display) writes.
    fn from_str(text: &str) -> Result<Self, SignedDocumentError> {
        let mut reader = CommentReader::new(text, JOB_COMMENT_TAG)?;
        let host_id = reader.field("host")?.to_string();
        let job_id = reader.field("job")?.to_string();
        let expires_at = reader.number("expires", "expiry")?;
        reader.finish()?;
        Ok(JobComment {
            host_id,
            job_id,
            expires_at,
        })
    }
}

/// Why an agent refuses a job. Each variant names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// A check that bundles pass too failed: the key, the signature, the
    /// trusted comment (a bundle's, for one), the job's bytes and header,
    /// or its host.
    Signed(SignedDocumentError),
    /// The job's validity has ended.
    Expired { expires_at: i64, now: i64 },
}

impl JobError {
    /// A short, stable name of the failed check, for metrics and reports.
    pub fn metric_label(&self) -> &'static str {
        match self {
            JobError::Signed(err) => err.metric_label(),
            JobError::Expired { .. } => "expired",
        }
    }
}

impl From<SignedDocumentError> for JobError {
    fn from(err: SignedDocumentError) -> Self {
        JobError::Signed(err)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Signed(err) => err.write_message("job", f),
            JobError::Expired { expires_at, now } => write!(
                f,
                "job expired at {expires_at} (now {now}): it is not started after its expiry"
            ),
        }
    }
}

impl std::error::Error for JobError {}

/// Checks a signed job the way an agent must before running it, and
/// returns the job when every check passes. In order: the signature over
/// the job bytes (and the trusted comment) verifies with `public_key`; the
/// comment is a job's; the bytes are a job whose header matches the
/// comment and whose ids are ids; the job is for `expected_host`; it has
/// not expired at `now` (unix seconds; `i64::MIN` skips that check, for a
/// job whose outcome is already known).
pub fn verify_job(
    public_key: &str,
    signed: &SignedJob,
    expected_host: &str,
    now: i64,
) -> Result<Job, JobError> {
    let comment = verify_signature(public_key, signed.job.as_bytes(), &signed.signature)?;
    let comment: JobComment = comment.parse()?;
    let job: Job = serde_json::from_str(&signed.job)
        .map_err(|err| SignedDocumentError::Malformed(err.to_string()))?;
    // The comment is signed too; a job whose header disagrees with it was
    // put together wrongly, and neither half can be trusted on its own.
    let header = job.trusted_comment();
    let mismatch = if header.host_id != comment.host_id {
        Some("host id")
    } else if header.job_id != comment.job_id {
        Some("job id")
    } else if header.expires_at != comment.expires_at {
        Some("expiry")
    } else {
        None
    };
    if let Some(field) = mismatch {
        return Err(SignedDocumentError::CommentMismatch { field }.into());
    }
    if !is_valid_job_id(&job.job_id) || !is_valid_job_id(&job.action) {
        return Err(SignedDocumentError::Malformed(format!(
            "job id `{}` or action id `{}` is not an id (1 to 64 letters, digits, `-`, `_`)",
            job.job_id, job.action
        ))
        .into());
    }
    check_host(&job.host_id, expected_host)?;
    if now >= job.expires_at {
        return Err(JobError::Expired {
            expires_at: job.expires_at,
            now,
        });
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{Bundle, BundleError, Desired, SignedBundle, verify};

    const NOW: i64 = 1_800_000_000;

    struct Key {
        public: minisign::PublicKey,
        secret: minisign::SecretKey,
    }

    impl Key {
        fn new() -> Key {
            let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
            Key {
                public: pair.pk,
                secret: pair.sk,
            }
        }

        fn public(&self) -> String {
            self.public.to_base64()
        }

        fn sign_bytes(&self, bytes: &[u8], comment: &str) -> String {
            minisign::sign(
                Some(&self.public),
                &self.secret,
                std::io::Cursor::new(bytes),
                Some(comment),
                Some("muster job signature"),
            )
            .unwrap()
            .into_string()
        }

        fn sign(&self, job: &Job) -> SignedJob {
            let text = job.to_canonical_json_string();
            SignedJob {
                signature: self.sign_bytes(text.as_bytes(), &job.trusted_comment().to_string()),
                job: text,
            }
        }
    }

    fn script_job() -> Job {
        Job {
            job_id: "j-1".into(),
            host_id: "h-1".into(),
            issued_at: NOW - 60,
            expires_at: NOW + 3_600,
            action: "a-1".into(),
            kind: JobKind::Script(ScriptJob {
                name: "cleanup".into(),
                interpreter: "/bin/sh".into(),
                body: "echo \"$MUSTER_PARAM_DAYS\"\n".into(),
                parameters: BTreeMap::from([
                    ("days".to_string(), "7".to_string()),
                    ("all".to_string(), "; rm -rf /".to_string()),
                ]),
                timeout_secs: 60,
                run_as: None,
            }),
        }
    }

    #[test]
    fn canonical_json_is_stable_and_sorted() {
        let json = script_job().to_canonical_json_string();
        assert_eq!(
            json,
            r#"{"job_id":"j-1","host_id":"h-1","issued_at":1799999940,"expires_at":1800003600,"action":"a-1","kind":{"script":{"name":"cleanup","interpreter":"/bin/sh","body":"echo \"$MUSTER_PARAM_DAYS\"\n","parameters":{"all":"; rm -rf /","days":"7"},"timeout_secs":60}}}"#
        );
        let back: Job = serde_json::from_str(&json).unwrap();
        assert_eq!(back, script_job());
        let reboot = Job {
            kind: JobKind::Reboot,
            ..script_job()
        };
        assert!(
            reboot
                .to_canonical_json_string()
                .ends_with(r#""kind":"reboot"}"#)
        );
        let service = Job {
            kind: JobKind::Service(ServiceJob {
                name: "nginx".into(),
                operation: ServiceOperation::Restart,
            }),
            ..script_job()
        };
        assert!(
            service
                .to_canonical_json_string()
                .ends_with(r#""kind":{"service":{"name":"nginx","operation":"restart"}}}"#)
        );
        assert_eq!(
            (
                script_job().kind.label(),
                reboot.kind.label(),
                service.kind.label()
            ),
            ("script", "reboot", "service")
        );
    }

    #[test]
    fn comments_round_trip_and_refuse_other_forms() {
        let comment = script_job().trusted_comment();
        let text = comment.to_string();
        assert_eq!(text, "muster-job host=h-1 job=j-1 expires=1800003600");
        assert_eq!(text.parse::<JobComment>().unwrap(), comment);
        for bad in [
            "",
            "muster-bundle host=h-1 generation=3 commit=abc expires=1",
            "muster-job host=h-1 job=j-1",
            "muster-job job=j-1 host=h-1 expires=1",
            "muster-job host=h-1 job=j-1 expires=x",
            "muster-job host=h-1 job=j-1 expires=1 extra=2",
        ] {
            let err = bad.parse::<JobComment>().unwrap_err();
            assert_eq!(err.metric_label(), "malformed_comment", "{bad}");
        }
    }

    #[test]
    fn a_genuine_job_verifies() {
        let key = Key::new();
        let signed = key.sign(&script_job());
        assert_eq!(
            verify_job(&key.public(), &signed, "h-1", NOW).unwrap(),
            script_job()
        );
        assert_eq!(signed.claimed_job_id().as_deref(), Some("j-1"));
        // i64::MIN skips the expiry only.
        verify_job(&key.public(), &signed, "h-1", i64::MIN).unwrap();
    }

    #[test]
    fn every_attack_is_refused_with_its_own_error() {
        let key = Key::new();
        let public = key.public();
        let signed = key.sign(&script_job());
        let refused = |signed: &SignedJob, host: &str, now: i64| {
            verify_job(&public, signed, host, now).unwrap_err()
        };

        // Tampered: a parameter changed after signing.
        let tampered = SignedJob {
            job: signed.job.replace(r#""days":"7""#, r#""days":"$(reboot)""#),
            ..signed.clone()
        };
        assert_ne!(tampered.job, signed.job);
        assert_eq!(
            refused(&tampered, "h-1", NOW),
            JobError::Signed(SignedDocumentError::BadSignature)
        );

        // The trusted comment edited to extend the expiry.
        let mut lines: Vec<String> = signed.signature.lines().map(String::from).collect();
        lines[2] = lines[2].replace("expires=1800003600", "expires=1900000000");
        let forged = SignedJob {
            signature: lines.join("\n"),
            ..signed.clone()
        };
        assert_eq!(
            refused(&forged, "h-1", NOW),
            JobError::Signed(SignedDocumentError::BadSignature)
        );

        // Another key.
        let foreign = Key::new().sign(&script_job());
        assert_eq!(
            refused(&foreign, "h-1", NOW),
            JobError::Signed(SignedDocumentError::UnknownKey)
        );

        // Another host.
        assert_eq!(
            refused(&signed, "h-2", NOW),
            JobError::Signed(SignedDocumentError::WrongHost {
                expected: "h-2".into(),
                found: "h-1".into()
            })
        );

        // Expired, at and after the expiry.
        for now in [NOW + 3_600, NOW + 86_400] {
            assert_eq!(
                refused(&signed, "h-1", now),
                JobError::Expired {
                    expires_at: NOW + 3_600,
                    now
                }
            );
        }

        // A validly signed comment that disagrees with the job.
        let text = script_job().to_canonical_json_string();
        let mismatched = SignedJob {
            signature: key.sign_bytes(
                text.as_bytes(),
                "muster-job host=h-1 job=j-2 expires=1800003600",
            ),
            job: text.clone(),
        };
        assert_eq!(
            refused(&mismatched, "h-1", NOW),
            JobError::Signed(SignedDocumentError::CommentMismatch { field: "job id" })
        );

        // Ids that cannot be file names or URL path segments.
        let bad_id = Job {
            job_id: "../../etc".into(),
            ..script_job()
        };
        let signed_bad_id = key.sign(&bad_id);
        assert_eq!(
            refused(&signed_bad_id, "h-1", NOW).metric_label(),
            "malformed"
        );
        assert_eq!(signed_bad_id.claimed_job_id(), None);

        // Garbage.
        assert_eq!(
            verify_job("not a key", &signed, "h-1", NOW).unwrap_err(),
            JobError::Signed(SignedDocumentError::InvalidPublicKey)
        );
        let garbage = SignedJob {
            signature: "not a signature".into(),
            ..signed.clone()
        };
        assert_eq!(
            refused(&garbage, "h-1", NOW),
            JobError::Signed(SignedDocumentError::MalformedSignature)
        );
    }

    #[test]
    fn bundle_and_job_signatures_never_pass_for_each_other() {
        let key = Key::new();
        let public = key.public();
        let desired = Desired::default();
        let bundle = Bundle {
            host_id: "h-1".into(),
            host_name: "web-01".into(),
            generation: 5,
            commit: "0123abc".into(),
            issued_at: NOW - 60,
            expires_at: NOW + 3_600,
            content_hash: desired.content_hash(),
            desired,
        };
        let bundle_text = bundle.to_canonical_json_string();
        let signed_bundle = SignedBundle {
            signature: key.sign_bytes(
                bundle_text.as_bytes(),
                &bundle.trusted_comment().to_string(),
            ),
            bundle: bundle_text,
        };
        verify(&public, &signed_bundle, "h-1", 0, NOW).expect("a genuine bundle");

        // The bundle and its signature, delivered as a job.
        let bundle_as_job = SignedJob {
            job: signed_bundle.bundle.clone(),
            signature: signed_bundle.signature.clone(),
        };
        assert_eq!(
            verify_job(&public, &bundle_as_job, "h-1", NOW)
                .unwrap_err()
                .metric_label(),
            "malformed_comment"
        );

        // A job and its signature, delivered as a bundle.
        let signed_job = key.sign(&script_job());
        let job_as_bundle = SignedBundle {
            bundle: signed_job.job.clone(),
            signature: signed_job.signature.clone(),
        };
        assert!(matches!(
            verify(&public, &job_as_bundle, "h-1", 0, NOW).unwrap_err(),
            BundleError::Signed(SignedDocumentError::MalformedComment(_))
        ));

        // Even a job-tagged comment over bundle bytes is no job.
        let relabelled = SignedJob {
            signature: key.sign_bytes(
                signed_bundle.bundle.as_bytes(),
                "muster-job host=h-1 job=j-1 expires=1800003600",
            ),
            job: signed_bundle.bundle.clone(),
        };
        assert_eq!(
            verify_job(&public, &relabelled, "h-1", NOW)
                .unwrap_err()
                .metric_label(),
            "malformed"
        );
    }

    #[test]
    fn ids() {
        assert!(is_valid_job_id("0123abcdef"));
        assert!(is_valid_job_id("job_1-a"));
        for bad in ["", "a b", "a/b", "..", "a\n", &"x".repeat(65)] {
            assert!(!is_valid_job_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn error_messages_are_lowercase_without_a_period() {
        let errors = [
            JobError::Signed(SignedDocumentError::BadSignature),
            JobError::Expired {
                expires_at: 1,
                now: 2,
            },
        ];
        for error in errors {
            let message = error.to_string();
            assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    #[test]
    fn messages_name_the_document() {
        assert_eq!(
            JobError::Signed(SignedDocumentError::BadSignature).to_string(),
            "job signature does not verify: the job was altered or signed by another key"
        );
        assert_eq!(
            BundleError::Signed(SignedDocumentError::Malformed("eof".into())).to_string(),
            "signed bundle is not a valid bundle: eof"
        );
        assert_eq!(
            JobError::Signed(SignedDocumentError::WrongHost {
                expected: "h-1".into(),
                found: "h-2".into(),
            })
            .to_string(),
            "job is for host `h-2`, not for this host `h-1`"
        );
    }

    #[test]
    fn results_are_bounded_with_a_marker() {
        use crate::protocol::{JOB_OUTPUT_LIMIT, JobResult, JobResultState};
        let result = JobResult {
            job_id: "j-1".into(),
            state: JobResultState::Succeeded,
            exit_code: Some(0),
            stdout: "é".repeat(JOB_OUTPUT_LIMIT),
            stderr: "short".into(),
            message: None,
            started_at: NOW,
            finished_at: NOW,
        }
        .bounded();
        assert!(result.stdout.len() < JOB_OUTPUT_LIMIT + 64);
        assert!(
            result.stdout.ends_with(&format!(
                "\n… truncated ({} bytes in all)",
                2 * JOB_OUTPUT_LIMIT
            )),
            "{}",
            &result.stdout[result.stdout.len() - 80..]
        );
        assert_eq!(result.stderr, "short");
        let json = serde_json::to_string(&result).unwrap();
        assert!(json.contains(r#""state":"succeeded""#));
        assert!(!json.contains("message"));
    }
}
