//! The controller's bundle signing key: a minisign (Ed25519) key pair kept
//! in the data dir, created on first start, used to sign every bundle.
//!
//! The secret key file is unencrypted (the controller starts unattended),
//! so its protection is its file mode: it is created 0600 and refused when
//! anyone but its owner can read it. The secret never reaches `Debug`,
//! `Display`, logs or errors.
//!
//! Keys and key files are minisign's, and signatures are minisign
//! signatures (prehashed `ED`: Ed25519 over the BLAKE2b-512 of the bundle,
//! and a global signature over it and the trusted comment), but they are
//! computed with `ed25519-dalek`: minisign's bundled Ed25519 takes about
//! 150 µs per signature, ten times more, which alone would spend the whole
//! budget of compiling and signing 10,000 hosts (DESIGN.md §10).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use blake2::{Blake2b512, Digest as _};
use ed25519_dalek::Signer as _;
use muster_schemas::bundle::{Bundle, SignedBundle};
use muster_schemas::job::{Job, SignedJob};

/// The secret key's file name in the data dir.
pub const SECRET_KEY_FILE: &str = "signing.key";

/// The public key's file name in the data dir (minisign `.pub` format).
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

/// The untrusted comment of every bundle signature. It is not signed, so
/// it says nothing agents rely on.
const UNTRUSTED_COMMENT: &str = "muster bundle signature";

/// The untrusted comment of every job signature; not signed either.
const JOB_UNTRUSTED_COMMENT: &str = "muster job signature";

/// The untrusted comment of the secret key file, for people who find it.
const SECRET_KEY_COMMENT: &str =
    "muster controller bundle signing key (unencrypted; keep it mode 0600)";

/// Below this many bundles, one thread signs them all.
const MIN_BUNDLES_PER_THREAD: usize = 64;

/// minisign's algorithm tag of prehashed signatures.
const PREHASHED_ALGORITHM: [u8; 2] = *b"ED";

/// Where the parts of an Ed25519 minisign secret key are in
/// `SecretKey::to_bytes()`: algorithm, KDF and checksum tags (2 bytes
/// each), KDF salt (32), KDF limits (8 + 8), key id (8), then the Ed25519
/// secret (its 32-byte seed, then the public key) and a checksum.
const SECRET_KEY_ID: std::ops::Range<usize> = 54..62;
const SECRET_SEED: std::ops::Range<usize> = 62..94;

/// The controller's signing key.
pub struct SigningKey {
    /// Signs; zeroed when dropped.
    signer: ed25519_dalek::SigningKey,
    /// minisign's key id, which every signature names.
    key_id: [u8; 8],
    public: minisign::PublicKey,
}

impl fmt::Debug for SigningKey {
    /// Shows the public key only: minisign's own `Debug` of a secret key
    /// prints the key bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// Why the signing key could not be loaded, created or used.
#[derive(Debug)]
pub enum SigningError {
    /// Reading or writing a key file failed.
    Io { what: String, source: io::Error },
    /// The secret key file can be read by others than its owner.
    InsecureKeyFile { path: PathBuf, mode: u32 },
    /// The secret key file is not an unencrypted minisign secret key.
    InvalidKey { path: PathBuf, reason: String },
    /// The bundle's host id or commit cannot be written into the trusted
    /// comment (empty, or holding whitespace or control characters).
    Unsignable { host_id: String, commit: String },
    /// The job's host id or job id cannot be written into the trusted
    /// comment.
    UnsignableJob { host_id: String, job_id: String },
    /// Key generation failed (the system's random source), or a key is
    /// inconsistent.
    Crypto(String),
}

impl SigningError {
    /// A short, stable name of the failure, for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SigningError::Io { .. } => "io",
            SigningError::InsecureKeyFile { .. } => "insecure_key_file",
            SigningError::InvalidKey { .. } => "invalid_key",
            SigningError::Unsignable { .. } | SigningError::UnsignableJob { .. } => "unsignable",
            SigningError::Crypto(_) => "crypto",
        }
    }

    fn io(what: impl Into<String>, source: io::Error) -> Self {
        SigningError::Io {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for SigningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningError::Io { what, source } => write!(f, "{what}: {source}"),
            SigningError::InsecureKeyFile { path, mode } => write!(
                f,
                "signing key {} has mode {mode:04o} and can be read by others: run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
            SigningError::InvalidKey { path, reason } => write!(
                f,
                "signing key {} is not an unencrypted minisign secret key ({reason}): restore it from a backup, or move it away to create a new key (agents must then be enrolled again)",
                path.display()
            ),
            SigningError::Unsignable { host_id, commit } => write!(
                f,
                "cannot sign a bundle for host id `{host_id}` at commit `{commit}`: ids must be non-empty and free of whitespace and control characters"
            ),
            SigningError::UnsignableJob { host_id, job_id } => write!(
                f,
                "cannot sign job `{job_id}` for host id `{host_id}`: ids must be non-empty and free of whitespace and control characters"
            ),
            SigningError::Crypto(reason) => write!(f, "cannot make a signing key: {reason}"),
        }
    }
}

impl std::error::Error for SigningError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SigningError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl SigningKey {
    /// A new key pair, in memory only.
    pub fn generate() -> Result<Self, SigningError> {
        Self::generate_with_secret().map(|(key, _)| key)
    }

    /// A new key pair, and minisign's secret key for writing the key file.
    fn generate_with_secret() -> Result<(Self, minisign::SecretKey), SigningError> {
        let pair = minisign::KeyPair::generate_unencrypted_keypair()
            .map_err(|err| SigningError::Crypto(err.to_string()))?;
        let key = Self::from_minisign(&pair.sk).map_err(SigningError::Crypto)?;
        Ok((key, pair.sk))
    }

    /// Takes the Ed25519 seed and key id out of a minisign secret key, and
    /// checks them against its public key.
    fn from_minisign(secret: &minisign::SecretKey) -> Result<Self, String> {
        let public = minisign::PublicKey::from_secret_key(secret).map_err(|err| err.to_string())?;
        let bytes = secret.to_bytes();
        let part =
            |range: std::ops::Range<usize>| bytes.get(range).ok_or("the secret key is too short");
        let seed: [u8; 32] = part(SECRET_SEED)?
            .try_into()
            .map_err(|_| "the secret key is too short")?;
        let key_id: [u8; 8] = part(SECRET_KEY_ID)?
            .try_into()
            .map_err(|_| "the secret key is too short")?;
        let signer = ed25519_dalek::SigningKey::from_bytes(&seed);
        // minisign's public key bytes: algorithm (2), key id (8), key (32).
        let public_bytes = public.to_bytes();
        if public_bytes.get(2..10) != Some(&key_id[..])
            || public_bytes.get(10..42) != Some(&signer.verifying_key().as_bytes()[..])
        {
            return Err("the secret key does not match its own public key".into());
        }
        Ok(SigningKey {
            signer,
            key_id,
            public,
        })
    }

    /// Loads the key pair from `data_dir`, or creates it there when there is
    /// none; the flag says whether it was created. The public key file is
    /// derived from the secret key and rewritten when missing or different.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, bool), SigningError> {
        fs::create_dir_all(data_dir).map_err(|err| {
            SigningError::io(format!("cannot create {}", data_dir.display()), err)
        })?;
        let secret_path = data_dir.join(SECRET_KEY_FILE);
        let (key, created) = match File::open(&secret_path) {
            Ok(file) => (Self::read_secret(file, &secret_path)?, false),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let (key, secret) = Self::generate_with_secret()?;
                let text = secret
                    .to_box(Some(SECRET_KEY_COMMENT))
                    .map_err(|err| SigningError::Crypto(err.to_string()))?
                    .into_string();
                write_atomically(&secret_path, text.as_bytes(), 0o600)?;
                (key, true)
            }
            Err(err) => {
                return Err(SigningError::io(
                    format!("cannot open {}", secret_path.display()),
                    err,
                ));
            }
        };
        let public_path = data_dir.join(PUBLIC_KEY_FILE);
        let public_text = key.public_key_file();
        if fs::read_to_string(&public_path).ok().as_deref() != Some(public_text.as_str()) {
            write_atomically(&public_path, public_text.as_bytes(), 0o644)?;
        }
        Ok((key, created))
    }

    /// Reads a secret key from an open file, checking the mode of the very
    /// file that is read.
    fn read_secret(mut file: File, path: &Path) -> Result<Self, SigningError> {
        let metadata = file
            .metadata()
            .map_err(|err| SigningError::io(format!("cannot stat {}", path.display()), err))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(SigningError::InsecureKeyFile {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = metadata;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|err| SigningError::io(format!("cannot read {}", path.display()), err))?;
        let invalid = |reason: String| SigningError::InvalidKey {
            path: path.to_path_buf(),
            reason,
        };
        let secret = minisign::SecretKeyBox::from_string(&text)
            .and_then(minisign::SecretKeyBox::into_unencrypted_secret_key)
            .map_err(|err| invalid(err.to_string()))?;
        Self::from_minisign(&secret).map_err(invalid)
    }

    /// The public key as one base64 line: what agents pin at enrollment and
    /// pass to [`muster_schemas::bundle::verify`].
    pub fn public_key(&self) -> String {
        self.public.to_base64()
    }

    /// The public key as the text of a minisign `.pub` file.
    pub fn public_key_file(&self) -> String {
        format!(
            "untrusted comment: muster controller public key\n{}\n",
            self.public_key()
        )
    }

    /// Signs a bundle's canonical JSON. The trusted comment carries the
    /// host id, generation, commit and expiry, so agents can check them
    /// against the bundle.
    ///
    /// Host ids and commits must be words (see
    /// [`TrustedComment::is_representable`](muster_schemas::bundle::TrustedComment::is_representable)),
    /// as the controller's own ids and Git commit ids are; a bundle with
    /// other ids is signed anyway, and agents refuse it.
    /// [`try_sign`](Self::try_sign) refuses it instead.
    pub fn sign(&self, bundle: &Bundle) -> SignedBundle {
        let text = bundle.to_canonical_json_string();
        let signature = self.sign_bytes(text.as_bytes(), &bundle.trusted_comment().to_string());
        SignedBundle {
            bundle: text,
            signature,
        }
    }

    /// [`sign`](Self::sign), refusing ids that the trusted comment cannot
    /// carry.
    pub fn try_sign(&self, bundle: &Bundle) -> Result<SignedBundle, SigningError> {
        if !bundle.trusted_comment().is_representable() {
            return Err(SigningError::Unsignable {
                host_id: bundle.host_id.clone(),
                commit: bundle.commit.clone(),
            });
        }
        Ok(self.sign(bundle))
    }

    /// [`sign`](Self::sign)s many bundles on all cores, in order.
    pub fn sign_all(&self, bundles: &[Bundle]) -> Vec<SignedBundle> {
        let n_threads = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(bundles.len().div_ceil(MIN_BUNDLES_PER_THREAD))
            .max(1);
        let chunk_size = bundles.len().div_ceil(n_threads).max(1);
        std::thread::scope(|scope| {
            let workers: Vec<_> = bundles
                .chunks(chunk_size)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|bundle| self.sign(bundle))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut signed = Vec::with_capacity(bundles.len());
            for worker in workers {
                match worker.join() {
                    Ok(chunk) => signed.extend(chunk),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            signed
        })
    }

    /// Signs a job's canonical JSON. The trusted comment carries the host
    /// id, the job id and the expiry under the `muster-job` tag, which no
    /// bundle signature has, so that a job signature never passes for a
    /// bundle's or the other way round. Ids that the comment cannot carry
    /// are refused.
    pub fn sign_job(&self, job: &Job) -> Result<SignedJob, SigningError> {
        let comment = job.trusted_comment();
        if !comment.is_representable() {
            return Err(SigningError::UnsignableJob {
                host_id: job.host_id.clone(),
                job_id: job.job_id.clone(),
            });
        }
        let text = job.to_canonical_json_string();
        let signature =
            self.sign_bytes_with(text.as_bytes(), &comment.to_string(), JOB_UNTRUSTED_COMMENT);
        Ok(SignedJob {
            job: text,
            signature,
        })
    }

    /// A minisign signature file over `bytes`: Ed25519 over their
    /// BLAKE2b-512, then a global signature over that signature and the
    /// trusted comment, which is how the comment gets signed.
    fn sign_bytes(&self, bytes: &[u8], trusted_comment: &str) -> String {
        self.sign_bytes_with(bytes, trusted_comment, UNTRUSTED_COMMENT)
    }

    fn sign_bytes_with(
        &self,
        bytes: &[u8],
        trusted_comment: &str,
        untrusted_comment: &str,
    ) -> String {
        let signature = self.signer.sign(&Blake2b512::digest(bytes)).to_bytes();
        let mut signed_comment = Vec::with_capacity(signature.len() + trusted_comment.len());
        signed_comment.extend_from_slice(&signature);
        signed_comment.extend_from_slice(trusted_comment.as_bytes());
        let global = self.signer.sign(&signed_comment).to_bytes();
        let mut line = Vec::with_capacity(2 + 8 + 64);
        line.extend_from_slice(&PREHASHED_ALGORITHM);
        line.extend_from_slice(&self.key_id);
        line.extend_from_slice(&signature);
        format!(
            "untrusted comment: {untrusted_comment}\n{}\ntrusted comment: {trusted_comment}\n{}\n",
            BASE64.encode(line),
            BASE64.encode(global)
        )
    }
}

/// Writes a file so that it appears whole or not at all: a temp file in the
/// same directory, created with `mode`, synced, renamed over `path`, then
/// the directory synced so that the rename survives a crash.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), SigningError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "key".into(), |name| name.to_string_lossy());
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|err| SigningError::Crypto(err.to_string()))?;
    let temp = dir.join(format!(".{name}.{}.tmp", hex::encode(nonce)));
    let failed = |what: &str, err: io::Error| {
        SigningError::io(format!("cannot {what} {}", temp.display()), err)
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut file = options.open(&temp).map_err(|err| failed("create", err))?;
    let written = set_mode(&file, mode)
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all());
    drop(file);
    let renamed = written.map_err(|err| failed("write", err)).and_then(|()| {
        fs::rename(&temp, path).map_err(|err| {
            SigningError::io(
                format!("cannot rename {} to {}", temp.display(), path.display()),
                err,
            )
        })
    });
    if renamed.is_err() {
        // Best effort: the temp file is ours and useless now; the error that
        // matters is the one above.
        let _ = fs::remove_file(&temp);
    }
    renamed?;
    sync_dir(dir).map_err(|err| SigningError::io(format!("cannot sync {}", dir.display()), err))
}

/// Sets a file's mode exactly: the mode given at creation is reduced by the
/// umask, which must not turn the public key file 0600 or, worse, leave
/// other bits than asked.
#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use muster_schemas::bundle::{BundleError, Desired, verify};
    use muster_schemas::signed::SignedDocumentError;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let mut nonce = [0u8; 8];
            getrandom::fill(&mut nonce).expect("random");
            let path = std::env::temp_dir().join(format!("muster-signing-{}", hex::encode(nonce)));
            fs::create_dir(&path).expect("temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn bundle(host_id: &str, generation: u64) -> Bundle {
        let desired = Desired::default();
        Bundle {
            host_id: host_id.into(),
            host_name: "web-01".into(),
            generation,
            commit: "0123456789abcdef".into(),
            issued_at: NOW - 60,
            expires_at: NOW + 3_600,
            content_hash: desired.content_hash(),
            desired,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn signed_bundles_verify_with_the_public_key_line_and_file() {
        let key = SigningKey::generate().expect("a key");
        let signed = key.sign(&bundle("h-1", 5));
        assert_eq!(
            key.try_sign(&bundle("h-1", 5)).expect("signed").bundle,
            signed.bundle
        );
        let verified = verify(&key.public_key(), &signed, "h-1", 4, NOW).expect("verifies");
        assert_eq!(verified, bundle("h-1", 5));
        verify(&key.public_key_file(), &signed, "h-1", 4, NOW).expect("verifies with the file");
        let comment = signed
            .signature
            .lines()
            .nth(2)
            .expect("trusted comment line");
        assert_eq!(
            comment,
            "trusted comment: muster-bundle host=h-1 generation=5 commit=0123456789abcdef expires=1800003600"
        );
        let many = key.sign_all(&(1..=200).map(|g| bundle("h-1", g)).collect::<Vec<_>>());
        assert_eq!(many.len(), 200);
        for (generation, signed) in (1..=200).zip(&many) {
            let verified = verify(&key.public_key(), signed, "h-1", 0, NOW).expect("verifies");
            assert_eq!(verified.generation, generation);
        }
    }

    #[test]
    fn signatures_are_minisign_signatures_of_keys_minisign_wrote() {
        let dir = TempDir::new();
        let pair = minisign::KeyPair::generate_unencrypted_keypair().expect("a key pair");
        let secret_text = pair.sk.to_box(None).expect("a box").into_string();
        write_atomically(&dir.0.join(SECRET_KEY_FILE), secret_text.as_bytes(), 0o600)
            .expect("written");
        let (key, created) = SigningKey::load_or_create(&dir.0).expect("loaded");
        assert!(!created);
        assert_eq!(key.public_key(), pair.pk.to_base64());
        let signed = key.sign(&bundle("h-1", 1));
        let signature = minisign::SignatureBox::from_string(&signed.signature).expect("parses");
        minisign::verify(
            &pair.pk,
            &signature,
            std::io::Cursor::new(signed.bundle.as_bytes()),
            true,
            false,
            false,
        )
        .expect("the reference implementation accepts it");
        assert!(
            signed
                .signature
                .starts_with("untrusted comment: muster bundle signature\n")
        );
    }

    #[test]
    fn every_broken_promise_is_refused_with_its_own_error() {
        let key = SigningKey::generate().expect("a key");
        let public = key.public_key();
        let signed = key.sign(&bundle("h-1", 5));
        let refused = |signed: &SignedBundle, host: &str, last: u64, now: i64| {
            verify(&public, signed, host, last, now).expect_err("refused")
        };

        let tampered = SignedBundle {
            bundle: signed.bundle.replace("web-01", "web-02"),
            ..signed.clone()
        };
        assert_eq!(
            refused(&tampered, "h-1", 4, NOW),
            BundleError::Signed(SignedDocumentError::BadSignature)
        );

        let mut signature: Vec<String> = signed.signature.lines().map(String::from).collect();
        signature[2] = signature[2].replace("generation=5", "generation=6");
        let forged_comment = SignedBundle {
            signature: signature.join("\n"),
            ..signed.clone()
        };
        assert_eq!(
            refused(&forged_comment, "h-1", 4, NOW),
            BundleError::Signed(SignedDocumentError::BadSignature)
        );

        let other = SigningKey::generate().expect("a key");
        let foreign = other.sign(&bundle("h-1", 5));
        assert_eq!(
            refused(&foreign, "h-1", 4, NOW),
            BundleError::Signed(SignedDocumentError::UnknownKey)
        );

        assert_eq!(
            refused(&signed, "h-2", 4, NOW),
            BundleError::Signed(SignedDocumentError::WrongHost {
                expected: "h-2".into(),
                found: "h-1".into()
            })
        );
        for last in [5, 6] {
            assert_eq!(
                refused(&signed, "h-1", last, NOW),
                BundleError::OldGeneration {
                    generation: 5,
                    last_applied: last
                }
            );
        }
        for now in [NOW + 3_600, NOW + 86_400] {
            assert_eq!(
                refused(&signed, "h-1", 4, now),
                BundleError::Expired {
                    expires_at: NOW + 3_600,
                    now
                }
            );
        }

        // A signature whose (validly signed) comment disagrees with the
        // bundle: only a broken signer makes one.
        let text = bundle("h-1", 5).to_canonical_json_string();
        let mismatched = SignedBundle {
            signature: key.sign_bytes(
                text.as_bytes(),
                "muster-bundle host=h-1 generation=9 commit=0123456789abcdef expires=1800003600",
            ),
            bundle: text,
        };
        assert_eq!(
            refused(&mismatched, "h-1", 4, NOW),
            BundleError::Signed(SignedDocumentError::CommentMismatch {
                field: "generation"
            })
        );
        let not_a_bundle = SignedBundle {
            signature: key.sign_bytes(
                b"{}",
                "muster-bundle host=h-1 generation=9 commit=c expires=1",
            ),
            bundle: "{}".into(),
        };
        assert_eq!(
            refused(&not_a_bundle, "h-1", 4, NOW).metric_label(),
            "malformed"
        );
        let plain_comment = SignedBundle {
            signature: key.sign_bytes(b"{}", "timestamp:1"),
            bundle: "{}".into(),
        };
        assert_eq!(
            refused(&plain_comment, "h-1", 4, NOW).metric_label(),
            "malformed_comment"
        );
    }

    #[test]
    fn jobs_are_signed_with_their_own_comment_and_verify() {
        use muster_schemas::job::{JobKind, verify_job};
        let key = SigningKey::generate().expect("a key");
        let job = Job {
            job_id: "j-1".into(),
            host_id: "h-1".into(),
            issued_at: NOW - 60,
            expires_at: NOW + 600,
            action: "a-1".into(),
            kind: JobKind::Reboot,
        };
        let signed = key.sign_job(&job).expect("signed");
        assert_eq!(
            verify_job(&key.public_key(), &signed, "h-1", NOW).expect("verifies"),
            job
        );
        let lines: Vec<&str> = signed.signature.lines().collect();
        assert_eq!(lines[0], "untrusted comment: muster job signature");
        assert_eq!(
            lines[2],
            "trusted comment: muster-job host=h-1 job=j-1 expires=1800000600"
        );
        // The reference implementation accepts it too.
        let public = minisign::PublicKey::from_base64(&key.public_key()).expect("a key");
        let signature = minisign::SignatureBox::from_string(&signed.signature).expect("parses");
        minisign::verify(
            &public,
            &signature,
            std::io::Cursor::new(signed.job.as_bytes()),
            true,
            false,
            false,
        )
        .expect("minisign accepts it");
        for (host_id, job_id) in [("h 1", "j-1"), ("h-1", ""), ("h-1", "j\n1")] {
            let bad = Job {
                host_id: host_id.into(),
                job_id: job_id.into(),
                ..job.clone()
            };
            let error = key.sign_job(&bad).expect_err("refused");
            assert_eq!(error.metric_label(), "unsignable");
        }
    }

    #[test]
    fn ids_that_would_break_the_trusted_comment_are_not_signed() {
        let key = SigningKey::generate().expect("a key");
        for host_id in ["", "h 1", "h\t1", "h\n1"] {
            let error = key.try_sign(&bundle(host_id, 1)).expect_err("refused");
            assert_eq!(error.metric_label(), "unsignable", "{host_id:?}");
        }
        // `sign` signs anyway, and agents refuse what they cannot read back.
        for host_id in ["", "h 1", "h\n1"] {
            let signed = key.sign(&bundle(host_id, 1));
            let error = verify(&key.public_key(), &signed, host_id, 0, NOW).expect_err("refused");
            assert!(
                matches!(
                    error.metric_label(),
                    "malformed_comment" | "malformed_signature"
                ),
                "{host_id:?}: {error}"
            );
        }
    }

    #[test]
    fn keys_are_created_once_with_mode_0600_and_loaded_again() {
        let dir = TempDir::new();
        let data_dir = dir.0.join("data");
        let (created, was_created) = SigningKey::load_or_create(&data_dir).expect("created");
        assert!(was_created);
        let secret_path = data_dir.join(SECRET_KEY_FILE);
        let public_path = data_dir.join(PUBLIC_KEY_FILE);
        assert_eq!(mode(&secret_path), 0o600);
        assert_eq!(mode(&public_path), 0o644);
        assert_eq!(
            fs::read_to_string(&public_path).expect("pub"),
            created.public_key_file()
        );
        let leftovers: Vec<_> = fs::read_dir(&data_dir)
            .expect("dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "no temp files left: {leftovers:?}");

        let (loaded, was_created) = SigningKey::load_or_create(&data_dir).expect("loaded");
        assert!(!was_created);
        assert_eq!(loaded.public_key(), created.public_key());
        let signed = loaded.sign(&bundle("h-1", 1));
        verify(&created.public_key(), &signed, "h-1", 0, NOW).expect("same key");

        // A lost public key file is derived again from the secret.
        fs::remove_file(&public_path).expect("removed");
        let (again, _) = SigningKey::load_or_create(&data_dir).expect("loaded");
        assert_eq!(again.public_key(), created.public_key());
        assert!(public_path.exists());
    }

    #[test]
    fn readable_key_files_are_refused_with_a_fix() {
        let dir = TempDir::new();
        SigningKey::load_or_create(&dir.0).expect("created");
        let secret_path = dir.0.join(SECRET_KEY_FILE);
        fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let error = SigningKey::load_or_create(&dir.0).expect_err("refused");
        assert_eq!(error.metric_label(), "insecure_key_file");
        assert!(
            error
                .to_string()
                .ends_with(&format!("run `chmod 600 {}`", secret_path.display())),
            "{error}"
        );
        fs::write(&secret_path, "not a key\n").expect("written");
        fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let error = SigningKey::load_or_create(&dir.0).expect_err("refused");
        assert_eq!(error.metric_label(), "invalid_key");
    }

    #[test]
    fn the_secret_never_shows() {
        let dir = TempDir::new();
        let (key, _) = SigningKey::load_or_create(&dir.0).expect("created");
        let secret_text = fs::read_to_string(dir.0.join(SECRET_KEY_FILE)).expect("secret");
        let secret_line = secret_text.lines().nth(1).expect("key line");
        let debug = format!("{key:?}");
        assert!(debug.contains(&key.public_key()), "{debug}");
        assert!(!debug.contains(secret_line));
        let seed = hex::encode(key.signer.to_bytes());
        assert!(!debug.to_lowercase().contains(&seed), "{debug}");
    }
}
