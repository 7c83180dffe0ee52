//! The bundle a host receives: its desired state as canonical JSON, the
//! minisign envelope around it, and the checks an agent makes before it
//! applies one.
//!
//! The controller compiles a [`Desired`] per host, wraps it in a
//! [`Bundle`] (host id, generation, commit, validity), serializes that with
//! [`Bundle::to_canonical_json`] and signs the bytes. The signature's
//! trusted comment repeats the header fields ([`TrustedComment`]), so that
//! they are covered by the signature a second time in a form the agent can
//! read before it parses the bundle. The agent calls [`verify`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{CheckSpec, PolicyMode, Resource};
use crate::signed::{CommentReader, SignedDocumentError, check_host, verify_signature};

/// One host's bundle: who it is for, which generation it is, the commit it
/// was compiled from, how long it may be applied, and the desired state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The host's id, as the controller assigned it at enrollment.
    pub host_id: String,
    /// The host's name, for people reading the bundle.
    pub host_name: String,
    /// Strictly increasing per host: agents refuse a generation that is not
    /// newer than the last one they applied.
    pub generation: u64,
    /// The fleet-repo commit the desired state was compiled from.
    pub commit: String,
    /// When the bundle was signed, in unix seconds.
    pub issued_at: i64,
    /// After this (unix seconds), agents no longer apply the bundle.
    pub expires_at: i64,
    /// [`Desired::content_hash`] of `desired`.
    pub content_hash: String,
    /// The host's desired state.
    pub desired: Desired,
}

/// A host's desired state: agent settings, ordered resources, checks. It
/// depends only on the fleet model and the host, never on the commit id or
/// the time, so that hosts whose desired state did not change keep their
/// [`content_hash`](Desired::content_hash) and are not re-signed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// Agent timing, from the `Fleet` document.
    pub settings: BundleAgentSettings,
    /// Resources in the order they are applied: policies by name, then each
    /// policy's resources in declaration order.
    pub resources: Vec<BundleResource>,
    /// Compliance checks, in the same policy order.
    pub checks: Vec<BundleCheck>,
}

/// Agent timing carried in every bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleAgentSettings {
    /// Seconds between drift checks against the bundle in force.
    pub interval_secs: u64,
    /// Largest random delay, in seconds, added to periodic work.
    pub splay_secs: u64,
    /// Seconds between metric reports.
    pub metrics_interval_secs: u64,
}

/// One resource of a bundle. File resources arrive resolved: `content`
/// holds the rendered template or the inlined repo file, `source` is unset
/// and `template` is false, so the agent never needs the repo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleResource {
    /// The resource's stable id, such as `file:/etc/motd`.
    pub id: String,
    /// The policy that declared it (the first one, when several declared it
    /// identically).
    pub policy: String,
    /// `enforce` repairs drift, `audit` only reports it.
    pub mode: PolicyMode,
    /// The desired state.
    pub resource: Resource,
}

/// One compliance check of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleCheck {
    /// The policy that declared it; check names are unique per policy.
    pub policy: String,
    /// The check.
    pub check: CheckSpec,
}

/// Serializes bundle types to JSON.
///
/// The output is deterministic: struct fields come in declaration order,
/// the model's maps are `BTreeMap`s (sorted by key), and free-form JSON
/// values (check remediation parameters) keep the order they were given in,
/// which the compiler sorts. Numbers are integers, or floats written by
/// `ryu`, which prints each value one way.
pub(crate) fn canonical_json<T: Serialize>(value: &T) -> String {
    // Serializing into memory cannot fail for these types: they write no
    // map with a non-string key and no non-finite float (serde_json values
    // cannot hold one).
    serde_json::to_string(value)
        .unwrap_or_else(|err| unreachable!("bundle types always serialize to JSON: {err}"))
}

impl Desired {
    /// The canonical JSON text of the desired state.
    pub fn to_canonical_json(&self) -> String {
        canonical_json(self)
    }

    /// Hex SHA-256 of [`to_canonical_json`](Self::to_canonical_json): equal
    /// desired states have equal hashes.
    pub fn content_hash(&self) -> String {
        content_hash_of(self.to_canonical_json().as_bytes())
    }
}

/// Hex SHA-256 of bytes, the form of [`Bundle::content_hash`].
pub fn content_hash_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Bundle {
    /// The canonical JSON bytes of the bundle: what is signed and shipped.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        self.to_canonical_json_string().into_bytes()
    }

    /// [`to_canonical_json`](Self::to_canonical_json) as text.
    pub fn to_canonical_json_string(&self) -> String {
        canonical_json(self)
    }

    /// The trusted comment a signature over this bundle carries.
    pub fn trusted_comment(&self) -> TrustedComment {
        TrustedComment {
            host_id: self.host_id.clone(),
            generation: self.generation,
            commit: self.commit.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// A bundle as shipped: the canonical JSON text and the minisign signature
/// over exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedBundle {
    /// The bundle's canonical JSON text.
    pub bundle: String,
    /// The minisign signature file text (four lines: untrusted comment,
    /// signature, trusted comment, global signature).
    pub signature: String,
}

/// The first word of a bundle signature's trusted comment.
pub const TRUSTED_COMMENT_TAG: &str = "muster-bundle";

/// The signed header of a bundle, as carried in the minisign trusted
/// comment: `muster-bundle host=<id> generation=<n> commit=<sha>
/// expires=<unix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedComment {
    pub host_id: String,
    pub generation: u64,
    pub commit: String,
    pub expires_at: i64,
}

impl TrustedComment {
    /// Whether every value can be written into the comment and read back:
    /// not empty, no whitespace (it separates fields), no control
    /// characters.
    pub fn is_representable(&self) -> bool {
        let word = |text: &str| {
            !text.is_empty() && text.chars().all(|c| !c.is_whitespace() && !c.is_control())
        };
        word(&self.host_id) && word(&self.commit)
    }
}

impl fmt::Display for TrustedComment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TRUSTED_COMMENT_TAG} host={} generation={} commit={} expires={}",
            self.host_id, self.generation, self.commit, self.expires_at
        )
    }
}

impl FromStr for TrustedComment {
    type Err = SignedDocumentError;

    /// Parses exactly the form [`Display`](fmt::Display) writes: the tag,
    /// then the four fields in order, separated by single spaces.
    fn from_str(text: &str) -> Result<Self, SignedDocumentError> {
        let mut reader = CommentReader::new(text, TRUSTED_COMMENT_TAG)?;
        let host_id = reader.field("host")?.to_string();
        let generation = reader.number("generation", "generation")?;
        let commit = reader.field("commit")?.to_string();
        let expires_at = reader.number("expires", "expiry")?;
        reader.finish()?;
        Ok(TrustedComment {
            host_id,
            generation,
            commit,
            expires_at,
        })
    }
}

/// Why an agent refuses a bundle. Each variant names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// A check that jobs pass too failed: the key, the signature, the
    /// trusted comment, the bundle's bytes and header, or its host.
    Signed(SignedDocumentError),
    /// The generation is not newer than the one applied last: a replay or a
    /// rollback.
    OldGeneration { generation: u64, last_applied: u64 },
    /// The bundle's validity has ended.
    Expired { expires_at: i64, now: i64 },
}

impl BundleError {
    /// A short, stable name of the failed check, for metrics and reports.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BundleError::Signed(err) => err.metric_label(),
            BundleError::OldGeneration { .. } => "old_generation",
            BundleError::Expired { .. } => "expired",
        }
    }
}

impl From<SignedDocumentError> for BundleError {
    fn from(err: SignedDocumentError) -> Self {
        BundleError::Signed(err)
    }
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::Signed(err) => err.write_message("bundle", f),
            BundleError::OldGeneration {
                generation,
                last_applied,
            } => write!(
                f,
                "bundle generation {generation} is not newer than the last applied generation {last_applied} (replayed or rolled back)"
            ),
            BundleError::Expired { expires_at, now } => write!(
                f,
                "bundle expired at {expires_at} (now {now}): the controller must issue a fresh one"
            ),
        }
    }
}

impl std::error::Error for BundleError {}

/// Checks a signed bundle the way an agent must before applying it, and
/// returns the bundle when every check passes. In order: the signature over
/// the bundle bytes (and the trusted comment) verifies with `public_key`;
/// the bytes are a bundle whose header matches the trusted comment; the
/// bundle is for `expected_host`; its generation is greater than
/// `last_applied_generation`; it has not expired at `now` (unix seconds).
pub fn verify(
    public_key: &str,
    signed: &SignedBundle,
    expected_host: &str,
    last_applied_generation: u64,
    now: i64,
) -> Result<Bundle, BundleError> {
    let comment = verify_signature(public_key, signed.bundle.as_bytes(), &signed.signature)?;
    let comment: TrustedComment = comment.parse()?;
    let bundle: Bundle = serde_json::from_str(&signed.bundle)
        .map_err(|err| SignedDocumentError::Malformed(err.to_string()))?;
    // The comment is signed too; a bundle whose header disagrees with it was
    // put together wrongly, and neither half can be trusted on its own.
    let header = bundle.trusted_comment();
    let mismatch = if header.host_id != comment.host_id {
        Some("host id")
    } else if header.generation != comment.generation {
        Some("generation")
    } else if header.commit != comment.commit {
        Some("commit")
    } else if header.expires_at != comment.expires_at {
        Some("expiry")
    } else {
        None
    };
    if let Some(field) = mismatch {
        return Err(SignedDocumentError::CommentMismatch { field }.into());
    }
    check_host(&bundle.host_id, expected_host)?;
    if bundle.generation <= last_applied_generation {
        return Err(BundleError::OldGeneration {
            generation: bundle.generation,
            last_applied: last_applied_generation,
        });
    }
    if now >= bundle.expires_at {
        return Err(BundleError::Expired {
            expires_at: bundle.expires_at,
            now,
        });
    }
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CheckSpec, FileSpec, PackageSpec};

    fn desired() -> Desired {
        Desired {
            settings: BundleAgentSettings {
                interval_secs: 300,
                splay_secs: 30,
                metrics_interval_secs: 60,
            },
            resources: vec![
                BundleResource {
                    id: "package:nginx".into(),
                    policy: "web".into(),
                    mode: PolicyMode::Enforce,
                    resource: Resource::Package(PackageSpec {
                        name: "nginx".into(),
                        ..PackageSpec::default()
                    }),
                },
                BundleResource {
                    id: "file:/etc/motd".into(),
                    policy: "web".into(),
                    mode: PolicyMode::Audit,
                    resource: Resource::File(FileSpec {
                        path: "/etc/motd".parse().unwrap(),
                        content: Some("hello \"world\"\n".into()),
                        mode: Some("0644".parse().unwrap()),
                        ..FileSpec::default()
                    }),
                },
            ],
            checks: vec![BundleCheck {
                policy: "web".into(),
                check: CheckSpec {
                    name: "nginx-ok".into(),
                    command: vec!["nginx".into(), "-t".into()],
                    timeout: "30s".parse().unwrap(),
                    ..CheckSpec::default()
                },
            }],
        }
    }

    fn bundle() -> Bundle {
        let desired = desired();
        Bundle {
            host_id: "h-1".into(),
            host_name: "web-01".into(),
            generation: 3,
            commit: "0123abc".into(),
            issued_at: 1_700_000_000,
            expires_at: 1_700_600_000,
            content_hash: desired.content_hash(),
            desired,
        }
    }

    #[test]
    fn canonical_json_is_stable_and_round_trips() {
        let bundle = bundle();
        let json = bundle.to_canonical_json_string();
        assert_eq!(json, bundle.clone().to_canonical_json_string());
        assert!(
            json.starts_with(
                r#"{"host_id":"h-1","host_name":"web-01","generation":3,"commit":"0123abc","issued_at":1700000000,"expires_at":1700600000,"content_hash":""#
            ),
            "{json}"
        );
        assert!(json.contains(r#""resource":{"file":{"path":"/etc/motd","ensure":"present","content":"hello \"world\"\n","template":false,"mode":"0644","secret":false,"depends_on":[]}}"#), "{json}");
        let back: Bundle = serde_json::from_str(&json).unwrap();
        assert_eq!(back, bundle);
        assert_eq!(back.to_canonical_json_string(), json);
    }

    #[test]
    fn content_hash_depends_on_desired_state_only() {
        let a = desired();
        let mut b = desired();
        assert_eq!(a.content_hash(), b.content_hash());
        assert_eq!(a.content_hash().len(), 64);
        b.resources[0].mode = PolicyMode::Audit;
        assert_ne!(a.content_hash(), b.content_hash());
    }

    #[test]
    fn trusted_comments_round_trip() {
        let comment = bundle().trusted_comment();
        let text = comment.to_string();
        assert_eq!(
            text,
            "muster-bundle host=h-1 generation=3 commit=0123abc expires=1700600000"
        );
        assert!(comment.is_representable());
        assert_eq!(text.parse::<TrustedComment>().unwrap(), comment);
        for bad in [
            "",
            "timestamp:1700000000",
            "muster-bundle host=h-1 generation=3 commit=0123abc",
            "muster-bundle host=h-1 generation=x commit=0123abc expires=1",
            "muster-bundle host= generation=3 commit=0123abc expires=1",
            "muster-bundle generation=3 host=h-1 commit=0123abc expires=1",
            "muster-bundle host=h-1 generation=3 commit=0123abc expires=1 extra=2",
        ] {
            let err = bad.parse::<TrustedComment>().unwrap_err();
            assert_eq!(err.metric_label(), "malformed_comment", "{bad}");
        }
        let spaced = TrustedComment {
            host_id: "h 1".into(),
            ..comment
        };
        assert!(!spaced.is_representable());
    }

    #[test]
    fn garbage_keys_and_signatures_are_refused() {
        let signed = SignedBundle {
            bundle: bundle().to_canonical_json_string(),
            signature: "not a signature".into(),
        };
        assert_eq!(
            verify("not a key", &signed, "h-1", 0, 0).unwrap_err(),
            BundleError::Signed(SignedDocumentError::InvalidPublicKey)
        );
        let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        assert_eq!(
            verify(key, &signed, "h-1", 0, 0).unwrap_err(),
            BundleError::Signed(SignedDocumentError::MalformedSignature)
        );
    }

    #[test]
    fn error_messages_are_lowercase_without_a_period() {
        let errors = [
            BundleError::Signed(SignedDocumentError::BadSignature),
            BundleError::OldGeneration {
                generation: 1,
                last_applied: 2,
            },
            BundleError::Expired {
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
}
