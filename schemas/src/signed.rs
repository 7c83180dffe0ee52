//! What bundles and jobs share: the minisign check of a signed document,
//! and the errors of the checks an agent makes on both, worded with the
//! document's noun.
//!
//! Bundles ([`crate::bundle`]) and jobs ([`crate::job`]) are signed with
//! the same key and verified in the same order: the key, the signature,
//! the trusted comment, the bytes, the header against the comment, the
//! host. Only what follows (a bundle's generation, each one's expiry)
//! differs, so [`BundleError`](crate::bundle::BundleError) and
//! [`JobError`](crate::job::JobError) wrap one [`SignedDocumentError`] for
//! the shared part and add their own checks beside it.

use std::fmt;

/// Why an agent refuses a signed bundle or job at a check both kinds pass.
/// Each variant names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedDocumentError {
    /// The pinned public key is not a minisign public key.
    InvalidPublicKey,
    /// The signature text is not a minisign signature.
    MalformedSignature,
    /// The signature was made with another key than the pinned one.
    UnknownKey,
    /// The signature does not verify over the document's bytes.
    BadSignature,
    /// The trusted comment is not in the document kind's form (a bundle's
    /// signature offered for a job, for one).
    MalformedComment(String),
    /// The signed bytes are not a document of the expected kind.
    Malformed(String),
    /// A header field of the document differs from the signed trusted
    /// comment.
    CommentMismatch { field: &'static str },
    /// The document is for another host.
    WrongHost { expected: String, found: String },
}

impl SignedDocumentError {
    /// A short, stable name of the failed check, for metrics and reports.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SignedDocumentError::InvalidPublicKey => "invalid_public_key",
            SignedDocumentError::MalformedSignature => "malformed_signature",
            SignedDocumentError::UnknownKey => "unknown_key",
            SignedDocumentError::BadSignature => "bad_signature",
            SignedDocumentError::MalformedComment(_) => "malformed_comment",
            SignedDocumentError::Malformed(_) => "malformed",
            SignedDocumentError::CommentMismatch { .. } => "comment_mismatch",
            SignedDocumentError::WrongHost { .. } => "wrong_host",
        }
    }

    /// Writes the message a user sees, naming the document as `noun`
    /// (`bundle`, `job`): the error alone does not know which it was.
    pub(crate) fn write_message(&self, noun: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignedDocumentError::InvalidPublicKey => f.write_str(
                "the pinned controller key is not a minisign public key: enroll the host again",
            ),
            SignedDocumentError::MalformedSignature => {
                write!(f, "{noun} signature is not a minisign signature")
            }
            SignedDocumentError::UnknownKey => {
                write!(
                    f,
                    "{noun} is signed by another key than the pinned controller key"
                )
            }
            SignedDocumentError::BadSignature => write!(
                f,
                "{noun} signature does not verify: the {noun} was altered or signed by another key",
            ),
            SignedDocumentError::MalformedComment(why) => {
                write!(f, "{noun} signature's trusted comment is malformed: {why}")
            }
            SignedDocumentError::Malformed(why) => {
                write!(f, "signed {noun} is not a valid {noun}: {why}")
            }
            SignedDocumentError::CommentMismatch { field } => {
                write!(f, "{noun} {field} differs from the signed trusted comment")
            }
            SignedDocumentError::WrongHost { expected, found } => write!(
                f,
                "{noun} is for host `{found}`, not for this host `{expected}`"
            ),
        }
    }
}

/// Parses a pinned public key: the base64 line agents pin, or the whole
/// text of a minisign `.pub` file (untrusted comment, then the key).
fn parse_public_key(text: &str) -> Option<minisign_verify::PublicKey> {
    let text = text.trim();
    let key = if text.contains('\n') {
        minisign_verify::PublicKey::decode(text)
    } else {
        minisign_verify::PublicKey::from_base64(text)
    };
    key.ok()
}

/// Verifies a minisign signature over `bytes` with the pinned key, and
/// returns the signature's trusted comment, which the global signature
/// covers. Legacy (non-prehashed) signatures are refused: the controller
/// never makes them, so one can only come from somewhere else.
pub(crate) fn verify_signature(
    public_key: &str,
    bytes: &[u8],
    signature: &str,
) -> Result<String, SignedDocumentError> {
    let key = parse_public_key(public_key).ok_or(SignedDocumentError::InvalidPublicKey)?;
    let signature = minisign_verify::Signature::decode(signature)
        .map_err(|_| SignedDocumentError::MalformedSignature)?;
    key.verify(bytes, &signature, false)
        .map_err(|err| match err {
            minisign_verify::Error::UnexpectedKeyId => SignedDocumentError::UnknownKey,
            _ => SignedDocumentError::BadSignature,
        })?;
    Ok(signature.trusted_comment().to_string())
}

/// Checks that a document is for the host verifying it.
pub(crate) fn check_host(found: &str, expected_host: &str) -> Result<(), SignedDocumentError> {
    if found == expected_host {
        return Ok(());
    }
    Err(SignedDocumentError::WrongHost {
        expected: expected_host.to_string(),
        found: found.to_string(),
    })
}
