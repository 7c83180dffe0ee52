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

/// Reads a trusted comment of the form `<tag> key=value …`: exactly the
/// tag, then the expected keys in order, separated by single spaces, and
/// nothing after the last. Every problem is a
/// [`SignedDocumentError::MalformedComment`] quoting the comment.
pub(crate) struct CommentReader<'a> {
    text: &'a str,
    words: std::str::Split<'a, char>,
    /// The key read last, for the error about text after it.
    last_key: &'static str,
}

impl<'a> CommentReader<'a> {
    /// Starts reading `text`, which must begin with `tag`.
    pub(crate) fn new(text: &'a str, tag: &str) -> Result<Self, SignedDocumentError> {
        let mut reader = CommentReader {
            text,
            words: text.split(' '),
            last_key: "",
        };
        if reader.words.next() != Some(tag) {
            return Err(reader.malformed(&format!("missing the `{tag}` tag")));
        }
        Ok(reader)
    }

    /// The value of the next word, which must be `key=<value>` with a value.
    pub(crate) fn field(&mut self, key: &'static str) -> Result<&'a str, SignedDocumentError> {
        self.last_key = key;
        self.words
            .next()
            .and_then(|word| word.strip_prefix(key))
            .and_then(|rest| rest.strip_prefix('='))
            .filter(|value| !value.is_empty())
            .ok_or_else(|| self.malformed(&format!("missing `{key}=`")))
    }

    /// The next field parsed as a number; `what` names it in the error.
    pub(crate) fn number<T: std::str::FromStr>(
        &mut self,
        key: &'static str,
        what: &str,
    ) -> Result<T, SignedDocumentError> {
        self.field(key)?
            .parse()
            .map_err(|_| self.malformed(&format!("invalid {what}")))
    }

    /// Ends reading: nothing may follow the last field.
    pub(crate) fn finish(mut self) -> Result<(), SignedDocumentError> {
        if self.words.next().is_some() {
            let last_key = self.last_key;
            return Err(self.malformed(&format!("unexpected text after `{last_key}=`")));
        }
        Ok(())
    }

    fn malformed(&self, why: &str) -> SignedDocumentError {
        SignedDocumentError::MalformedComment(format!("{why} in `{}`", self.text))
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

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    /// The message of `error` about a `noun`.
    struct Message<'a>(&'a SignedDocumentError, &'a str);

    impl fmt::Display for Message<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.write_message(self.1, f)
        }
    }

    #[test]
    fn messages_are_lowercase_without_a_period_for_every_document() {
        let errors = [
            SignedDocumentError::InvalidPublicKey,
            SignedDocumentError::MalformedSignature,
            SignedDocumentError::UnknownKey,
            SignedDocumentError::BadSignature,
            SignedDocumentError::MalformedComment("x".into()),
            SignedDocumentError::Malformed("x".into()),
            SignedDocumentError::CommentMismatch { field: "host id" },
            SignedDocumentError::WrongHost {
                expected: "a".into(),
                found: "b".into(),
            },
        ];
        for noun in ["bundle", "job"] {
            for error in &errors {
                let message = Message(error, noun).to_string();
                assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
                assert!(!message.ends_with('.'), "{message}");
            }
        }
    }

    #[test]
    fn comments_are_read_exactly() {
        let mut reader = CommentReader::new("tag a=1 b=x", "tag").unwrap();
        assert_eq!(reader.number::<u64>("a", "a number").unwrap(), 1);
        assert_eq!(reader.field("b").unwrap(), "x");
        reader.finish().unwrap();

        let malformed = |result: Result<(), SignedDocumentError>| match result {
            Err(SignedDocumentError::MalformedComment(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            malformed(CommentReader::new("other a=1", "tag").map(drop)),
            "missing the `tag` tag in `other a=1`"
        );
        let mut reader = CommentReader::new("tag a=1 b=2 c=3", "tag").unwrap();
        reader.field("a").unwrap();
        reader.field("b").unwrap();
        assert_eq!(
            malformed(reader.finish()),
            "unexpected text after `b=` in `tag a=1 b=2 c=3`"
        );
        let mut reader = CommentReader::new("tag a=x", "tag").unwrap();
        assert_eq!(
            malformed(reader.number::<i64>("a", "expiry").map(drop)),
            "invalid expiry in `tag a=x`"
        );
    }
}
