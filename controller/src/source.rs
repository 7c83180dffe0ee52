//! The controller's Git source: a bare mirror of one branch of the fleet repo.
//!
//! The mirror lives in the data dir and is only ever fetched into, never
//! checked out: commits are read straight from the object database, so a
//! fleet repo cannot plant files in the data dir through a work tree, and
//! symbolic links in it are never followed. A fleet repo may be a
//! sub-directory of the tracked repo (`--path`, for monorepos); paths given
//! to and returned by this module are relative to that sub-directory.
//!
//! Commit signatures are git's SSH signatures (`gpg.format=ssh`): an
//! `SSHSIG` armored block in the commit's `gpgsig` header, over the commit
//! without that header, in the `git` namespace.
//!
//! `git2` objects are not `Sync`: callers keep a [`GitSource`] behind a
//! mutex and call it from a blocking task.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use git2::{
    AutotagOption, ConfigLevel, Cred, CredentialType, ErrorClass, ErrorCode, FetchOptions,
    ObjectType, Oid, RemoteCallbacks, Repository, Tree,
};
use muster_schemas::load::{self, MAX_FILE_BYTES};
use muster_schemas::model::AllowedSigner;
use ssh_key::{PublicKey, SshSig};

use crate::repo::Snapshot;

/// Name of the one remote of the mirror.
const REMOTE: &str = "origin";
/// Where branches fetched for plans live in the mirror, apart from the
/// tracked branch.
const PLAN_REFS: &str = "refs/plan/";

/// Set in the config of mirrors this module creates, so that it never
/// adopts (and force-updates) a repository it did not make.
const MIRROR_MARKER: &str = "muster.mirror";

/// The namespace git signs commits in (`ssh-keygen -Y sign -n git`).
const SIGNATURE_NAMESPACE: &str = "git";

/// Tree entry modes, as git stores them.
const MODE_TREE: i32 = 0o040_000;
const MODE_FILE: i32 = 0o100_644;
const MODE_EXECUTABLE: i32 = 0o100_755;
const MODE_SYMLINK: i32 = 0o120_000;

/// A bare mirror tracking one branch of a remote repository.
pub struct GitSource {
    repo: Repository,
    /// The URL as libgit2 is given it (local paths made absolute); it may
    /// hold credentials, so it is never shown.
    fetch_url: String,
    /// The URL without credentials, for messages and logs.
    display_url: String,
    branch: String,
    /// The fleet repo's directory inside the repository, normalized
    /// (`a/b`, no leading or trailing `/`); `None` for the root.
    subdir: Option<String>,
    /// Whether the absence of the branch was logged since it was last seen.
    reported_missing_branch: AtomicBool,
}

impl fmt::Debug for GitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitSource")
            .field("mirror", &self.repo.path())
            .field("url", &self.display_url)
            .field("branch", &self.branch)
            .field("subdir", &self.subdir)
            .finish()
    }
}

/// A commit, as the controller records and shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The full commit id, in hex.
    pub id: String,
    /// `Name <email>` of the author.
    pub author: String,
    /// The first paragraph of the message, on one line.
    pub summary: String,
    /// Commit time, in seconds since the Unix epoch.
    pub time: i64,
}

/// The outcome of checking a commit's signature against allowed signers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Signed by the key of the allowed signer `signer` (its name).
    Verified { signer: String },
    /// The commit carries no signature.
    Unsigned,
    /// Signed by a key that is not one of the allowed signers; the
    /// signature itself is not checked then, since nothing would trust it.
    UnknownKey,
    /// A signature that does not verify, or is not an SSH signature; the
    /// text says why.
    Invalid(String),
}

/// Why the Git source could not do what it was asked.
#[derive(Debug)]
pub enum SourceError {
    /// The mirror directory cannot be created or opened.
    Mirror { path: PathBuf, detail: String },
    /// The repository URL is not one the controller can fetch from.
    UnsupportedUrl { url: String, reason: String },
    /// The remote refused the credentials, or none were available.
    Auth { url: String, detail: String },
    /// The remote could not be reached or read.
    Unreachable { url: String, detail: String },
    /// The commit id is malformed or the commit is not in the mirror.
    UnknownCommit { commit: String },
    /// The configured sub-directory is absent from a commit, or is not a
    /// directory there.
    MissingSubdir {
        subdir: String,
        commit: String,
        reason: &'static str,
    },
    /// The branch name is not one git allows.
    InvalidBranch { branch: String },
    /// A repo path given to the source cannot name a path in a repository.
    InvalidPath { path: String, reason: &'static str },
    /// Any other failure of git.
    Git { action: String, detail: String },
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Mirror { path, detail } => write!(
                f,
                "cannot open the git mirror `{}`: {detail}: check that the data dir is writable, \
                 or remove the mirror to have it fetched again",
                path.display()
            ),
            SourceError::UnsupportedUrl { url, reason } => {
                write!(f, "cannot fetch from `{url}`: {reason}")
            }
            SourceError::Auth { url, detail } => write!(
                f,
                "authentication to `{url}` failed ({detail}): for https, give a token in the url \
                 (https://user:TOKEN@host/…) or configure a git credential helper; for ssh, load \
                 the key into ssh-agent"
            ),
            SourceError::Unreachable { url, detail } => write!(
                f,
                "cannot fetch from `{url}`: {detail}: check the repo url and that the repository \
                 is reachable from the controller"
            ),
            SourceError::UnknownCommit { commit } => write!(
                f,
                "commit `{commit}` is not in the mirror: give a full commit id of the tracked \
                 branch, and fetch first"
            ),
            SourceError::MissingSubdir {
                subdir,
                commit,
                reason,
            } => write!(
                f,
                "the fleet repo path `{subdir}` {reason} in commit {}: check the repo path \
                 setting (`--path`), which is relative to the repository's root",
                short_id(commit)
            ),
            SourceError::InvalidBranch { branch } => write!(
                f,
                "`{branch}` is not a valid branch name: give a branch name like `main`"
            ),
            SourceError::InvalidPath { path, reason } => write!(
                f,
                "invalid repo path `{path}`: {reason}: give a path relative to the repository's \
                 root, like `fleet` or `deploy/fleet`"
            ),
            SourceError::Git { action, detail } => write!(f, "cannot {action}: {detail}"),
        }
    }
}

impl std::error::Error for SourceError {}

impl SourceError {
    /// A short, stable name of the kind of failure, for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SourceError::Mirror { .. } => "mirror",
            SourceError::UnsupportedUrl { .. } => "unsupported_url",
            SourceError::Auth { .. } => "auth",
            SourceError::Unreachable { .. } => "unreachable",
            SourceError::UnknownCommit { .. } => "unknown_commit",
            SourceError::MissingSubdir { .. } => "missing_subdir",
            SourceError::InvalidBranch { .. } => "invalid_branch",
            SourceError::InvalidPath { .. } => "invalid_path",
            SourceError::Git { .. } => "git",
        }
    }

    fn git(action: impl Into<String>, err: &git2::Error) -> Self {
        SourceError::Git {
            action: action.into(),
            detail: redact_credentials(err.message()),
        }
    }
}

impl GitSource {
    /// Opens the bare mirror at `mirror_dir`, creating it if it does not
    /// exist, to track `branch` of `url`, optionally only the sub-directory
    /// `subdir` of it. Nothing is fetched yet.
    ///
    /// `url` is an https URL, an ssh URL (when built with the `ssh`
    /// feature), a `file://` URL or a local path; a relative path is taken
    /// relative to the current directory, now. When the mirror was made for
    /// another URL, its remote is pointed at the new one and the branch it
    /// fetched before is forgotten, so that no commit of the old repository
    /// is taken for one of the new.
    pub fn open(
        mirror_dir: &Path,
        url: &str,
        branch: &str,
        subdir: Option<&str>,
    ) -> Result<GitSource, SourceError> {
        let fetch_url = resolve_url(url)?;
        let display_url = redact_credentials(&fetch_url);
        let branch = branch.trim();
        if branch.is_empty() || !git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
            return Err(SourceError::InvalidBranch {
                branch: branch.to_string(),
            });
        }
        let subdir = match subdir {
            Some(subdir) => normalize_subdir(subdir)?,
            None => None,
        };
        let repo = open_mirror(mirror_dir)?;
        let source = GitSource {
            repo,
            fetch_url,
            display_url,
            branch: branch.to_string(),
            subdir,
            reported_missing_branch: AtomicBool::new(false),
        };
        source.configure_remote()?;
        Ok(source)
    }

    /// Opens an existing repository (a clone, bare or not) to read commits
    /// from, as `muster plan` does: nothing is fetched or written, and
    /// `fetch` must not be called on it. `subdir` is the fleet repo's
    /// directory inside it, as for [`open`](Self::open).
    pub fn open_local(path: &Path, subdir: Option<&str>) -> Result<GitSource, SourceError> {
        let repo = Repository::open(path).map_err(|err| SourceError::Mirror {
            path: path.to_path_buf(),
            detail: format!("not a git repository: {}", err.message()),
        })?;
        let subdir = match subdir {
            Some(subdir) => normalize_subdir(subdir)?,
            None => None,
        };
        let url = path.display().to_string();
        Ok(GitSource {
            repo,
            fetch_url: url.clone(),
            display_url: url,
            branch: "HEAD".to_string(),
            subdir,
            reported_missing_branch: AtomicBool::new(false),
        })
    }

    /// The commit a revision names (`HEAD~1`, a branch, a tag, an id or an
    /// abbreviation of one), as `git rev-parse` resolves it.
    pub fn resolve(&self, revision: &str) -> Result<CommitInfo, SourceError> {
        let unknown = || SourceError::UnknownCommit {
            commit: revision.to_string(),
        };
        let object = self.repo.revparse_single(revision).map_err(|_| unknown())?;
        let commit = object.peel_to_commit().map_err(|_| unknown())?;
        Ok(commit_info(&commit))
    }

    /// The tracked URL, without credentials.
    pub fn url(&self) -> &str {
        &self.display_url
    }

    /// The tracked branch.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The fleet repo's directory inside the repository, if not its root.
    pub fn subdir(&self) -> Option<&str> {
        self.subdir.as_deref()
    }

    /// Fetches the tracked branch, following force-pushes, and returns its
    /// tip; `None` when the remote has no such branch (yet), in which case
    /// the mirror forgets the branch too.
    pub fn fetch(&self) -> Result<Option<CommitInfo>, SourceError> {
        // `+` force-updates the mirror's branch, so a rewritten history
        // replaces the old one instead of failing as a non-fast-forward.
        let branches = self.fetch_refspec(&format!("+{0}:{0}", self.branch_ref()))?;
        if !branches.contains(&self.branch) {
            // Once per absence, not at every poll of the interval.
            if !self.reported_missing_branch.swap(true, Ordering::Relaxed) {
                let shown = branches.len().min(10);
                tracing::warn!(
                    url = %self.display_url,
                    branch = %self.branch,
                    available = %branches[..shown].join(", "),
                    "the tracked branch does not exist in the repository: push it, or track one \
                     of the available branches"
                );
            }
            self.forget_branch()?;
            return Ok(None);
        }
        self.reported_missing_branch.store(false, Ordering::Relaxed);
        self.head()
    }

    /// Fetches another branch of the tracked repository for a plan (a pull
    /// request's branch), into the mirror's `refs/plan/` namespace, which
    /// the reconciler never reads. Returns the revision naming it there, or
    /// `None` when `branch` is not a branch name or the repository has no
    /// such branch.
    pub fn fetch_for_plan(&self, branch: &str) -> Result<Option<String>, SourceError> {
        if !git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
            return Ok(None);
        }
        let target = format!("{PLAN_REFS}{branch}");
        let branches = self.fetch_refspec(&format!("+refs/heads/{branch}:{target}"))?;
        if branches.iter().any(|name| name == branch) {
            Ok(Some(target))
        } else {
            // A branch deleted since an earlier plan: forget its copy too.
            if let Ok(mut stale) = self.repo.find_reference(&target) {
                let _ = stale.delete();
            }
            Ok(None)
        }
    }

    /// Fetches one refspec from the tracked repository; returns the names
    /// of the branches it advertised.
    fn fetch_refspec(&self, refspec: &str) -> Result<Vec<String>, SourceError> {
        // libgit2 takes a path that does not exist for a URL and reports an
        // unsupported protocol, which would send people looking elsewhere.
        if let Some(path) = local_path(&self.fetch_url)
            && !path.exists()
        {
            return Err(SourceError::Unreachable {
                url: self.display_url.clone(),
                detail: "no such directory".to_string(),
            });
        }
        let mut remote = self
            .repo
            .find_remote(REMOTE)
            .map_err(|err| SourceError::git("read the mirror's remote", &err))?;
        let config = self.repo.config().ok();
        let mut tried = CredentialType::empty();
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(move |url, username_from_url, allowed| {
            credentials(config.as_ref(), &mut tried, url, username_from_url, allowed)
        });
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(callbacks)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        remote
            .fetch(&[refspec], Some(&mut options), None)
            .map_err(|err| self.fetch_error(&err))?;
        // The advertised refs stay readable after the fetch disconnects; a
        // refspec naming an absent branch fetches nothing without an error.
        let branches = remote
            .list()
            .map_err(|err| SourceError::git("list the remote's branches", &err))?
            .iter()
            .filter_map(|head| head.name().strip_prefix("refs/heads/"))
            .map(str::to_string)
            .collect();
        Ok(branches)
    }

    /// The tip of the tracked branch as last fetched, without fetching.
    pub fn head(&self) -> Result<Option<CommitInfo>, SourceError> {
        let reference = match self.repo.find_reference(&self.branch_ref()) {
            Ok(reference) => reference,
            Err(err) if err.code() == ErrorCode::NotFound => return Ok(None),
            Err(err) => return Err(SourceError::git("read the tracked branch", &err)),
        };
        let commit = reference
            .peel_to_commit()
            .map_err(|err| SourceError::git("read the tracked branch's commit", &err))?;
        Ok(Some(commit_info(&commit)))
    }

    /// Reads and parses the fleet repo at `commit` (a full hex id), from the
    /// object database. Paths are relative to the sub-directory, if any.
    pub fn snapshot(&self, commit: &str) -> Result<Snapshot, SourceError> {
        let root = self.fleet_tree(commit)?;
        let odb = self
            .repo
            .odb()
            .map_err(|err| SourceError::git("open the mirror's object database", &err))?;
        let mut snapshot = Snapshot::default();
        // An explicit stack rather than recursion: a hostile repository can
        // nest trees deeper than the thread's stack.
        let mut pending = vec![(root.id(), String::new())];
        while let Some((tree_id, relative)) = pending.pop() {
            let tree = self
                .repo
                .find_tree(tree_id)
                .map_err(|err| SourceError::git(format!("read tree {tree_id}"), &err))?;
            for entry in tree.iter() {
                let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
                let path = if relative.is_empty() {
                    name.clone()
                } else {
                    format!("{relative}/{name}")
                };
                match entry.filemode() {
                    MODE_TREE if !name.starts_with('.') => pending.push((entry.id(), path)),
                    MODE_FILE | MODE_EXECUTABLE => {
                        if load::is_fleet_file(&path) {
                            // The header gives the size without inflating the
                            // object, so an oversized file is refused unread.
                            let (n_bytes, _) = odb
                                .read_header(entry.id())
                                .map_err(|err| SourceError::git(format!("read `{path}`"), &err))?;
                            let file = if n_bytes > MAX_FILE_BYTES {
                                load::too_large(&path, n_bytes as u64)
                            } else {
                                let blob = self.repo.find_blob(entry.id()).map_err(|err| {
                                    SourceError::git(format!("read `{path}`"), &err)
                                })?;
                                load::parse_file(&path, blob.content())
                            };
                            snapshot.fleet_files.push(file);
                        }
                        snapshot.repo_files.insert(path);
                    }
                    MODE_SYMLINK if load::is_fleet_file(&path) => {
                        snapshot.fleet_files.push(load::symlinked(&path));
                    }
                    // Left out: dot-directories, links that are not fleet
                    // files, and submodules (0o160000), which name commits
                    // of other repositories that the mirror does not have.
                    _ => {}
                }
            }
        }
        // Tree order mixed with stack order is deterministic but hard to
        // read; path order is what people expect in reports.
        snapshot
            .fleet_files
            .sort_by(|left, right| left.path.cmp(&right.path));
        Ok(snapshot)
    }

    /// The bytes of the regular file at `path` (relative to the
    /// sub-directory) in `commit`; `None` when there is no such file, or it
    /// is a directory, a symbolic link or a submodule.
    pub fn read_file(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        let root = self.fleet_tree(commit)?;
        let Some(path) = normalize_file_path(path) else {
            return Ok(None);
        };
        let entry = match root.get_path(Path::new(&path)) {
            Ok(entry) => entry,
            Err(err) if err.code() == ErrorCode::NotFound => return Ok(None),
            Err(err) => return Err(SourceError::git(format!("read `{path}`"), &err)),
        };
        if !matches!(entry.filemode(), MODE_FILE | MODE_EXECUTABLE) {
            return Ok(None);
        }
        let blob = self
            .repo
            .find_blob(entry.id())
            .map_err(|err| SourceError::git(format!("read `{path}`"), &err))?;
        Ok(Some(blob.content().to_vec()))
    }

    /// Checks the SSH signature of `commit` against `allowed`. Keys in
    /// `allowed` that do not parse are skipped: validation reports them.
    pub fn verify_signature(
        &self,
        commit: &str,
        allowed: &[AllowedSigner],
    ) -> Result<SignatureCheck, SourceError> {
        let oid = self.find_commit(commit)?.id();
        let (signature, signed_data) = match self.repo.extract_signature(&oid, None) {
            Ok(parts) => parts,
            // The commit exists (looked up above), so not found means no
            // signature header.
            Err(err) if err.code() == ErrorCode::NotFound => return Ok(SignatureCheck::Unsigned),
            Err(err) => {
                return Err(SourceError::git(
                    format!("read the signature of commit {}", short_id(commit)),
                    &err,
                ));
            }
        };
        Ok(check_signature(&signature, &signed_data, allowed))
    }

    fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// Points the mirror's remote at the configured URL.
    fn configure_remote(&self) -> Result<(), SourceError> {
        match self.repo.find_remote(REMOTE) {
            Ok(remote) => {
                if remote.url_bytes() != self.fetch_url.as_bytes() {
                    self.repo
                        .remote_set_url(REMOTE, &self.fetch_url)
                        .map_err(|err| SourceError::git("update the mirror's remote url", &err))?;
                    self.forget_branch()?;
                }
                Ok(())
            }
            Err(err) if err.code() == ErrorCode::NotFound => {
                // The refspec is only a default for people poking at the
                // mirror with git: `fetch` passes its own.
                self.repo
                    .remote_with_fetch(
                        REMOTE,
                        &self.fetch_url,
                        &format!("+{0}:{0}", self.branch_ref()),
                    )
                    .map_err(|err| SourceError::git("add the mirror's remote", &err))?;
                Ok(())
            }
            Err(err) => Err(SourceError::git("read the mirror's remote", &err)),
        }
    }

    /// Deletes the mirror's copy of the tracked branch, if any.
    fn forget_branch(&self) -> Result<(), SourceError> {
        match self.repo.find_reference(&self.branch_ref()) {
            Ok(mut reference) => reference
                .delete()
                .map_err(|err| SourceError::git("forget the tracked branch", &err)),
            Err(err) if err.code() == ErrorCode::NotFound => Ok(()),
            Err(err) => Err(SourceError::git("read the tracked branch", &err)),
        }
    }

    fn fetch_error(&self, err: &git2::Error) -> SourceError {
        let detail = redact_credentials(err.message()).replace(&self.fetch_url, &self.display_url);
        let message = err.message().to_ascii_lowercase();
        let is_auth = err.code() == ErrorCode::Auth
            || (matches!(err.class(), ErrorClass::Http | ErrorClass::Ssh)
                && (message.contains("auth") || message.contains("credential")));
        if is_auth {
            SourceError::Auth {
                url: self.display_url.clone(),
                detail,
            }
        } else {
            SourceError::Unreachable {
                url: self.display_url.clone(),
                detail,
            }
        }
    }

    fn find_commit(&self, commit: &str) -> Result<git2::Commit<'_>, SourceError> {
        let unknown = || SourceError::UnknownCommit {
            commit: commit.to_string(),
        };
        // `Oid::from_str` pads short hex with zeros: insist on a full id so
        // that an abbreviation never names some other commit.
        let is_full_hex =
            matches!(commit.len(), 40 | 64) && commit.bytes().all(|byte| byte.is_ascii_hexdigit());
        if !is_full_hex {
            return Err(unknown());
        }
        let oid = Oid::from_str(commit).map_err(|_| unknown())?;
        match self.repo.find_commit(oid) {
            Ok(found) => Ok(found),
            Err(err) if err.code() == ErrorCode::NotFound => Err(unknown()),
            Err(err) => Err(SourceError::git(
                format!("read commit {}", short_id(commit)),
                &err,
            )),
        }
    }

    /// The tree of the fleet repo in `commit`: its root, or the sub-directory.
    fn fleet_tree(&self, commit: &str) -> Result<Tree<'_>, SourceError> {
        let found = self.find_commit(commit)?;
        let root = found.tree().map_err(|err| {
            SourceError::git(
                format!("read the tree of commit {}", short_id(commit)),
                &err,
            )
        })?;
        let Some(subdir) = &self.subdir else {
            return Ok(root);
        };
        let missing = |reason| SourceError::MissingSubdir {
            subdir: subdir.clone(),
            commit: commit.to_string(),
            reason,
        };
        let entry = match root.get_path(Path::new(subdir)) {
            Ok(entry) => entry,
            Err(err) if err.code() == ErrorCode::NotFound => return Err(missing("does not exist")),
            Err(err) => return Err(SourceError::git(format!("read `{subdir}`"), &err)),
        };
        // A symbolic link to a directory is a blob, so it is refused here
        // rather than followed.
        if entry.kind() != Some(ObjectType::Tree) {
            return Err(missing("is not a directory"));
        }
        self.repo
            .find_tree(entry.id())
            .map_err(|err| SourceError::git(format!("read `{subdir}`"), &err))
    }
}

fn open_mirror(mirror_dir: &Path) -> Result<Repository, SourceError> {
    let mirror_error = |detail: String| SourceError::Mirror {
        path: mirror_dir.to_path_buf(),
        detail,
    };
    match Repository::open_bare(mirror_dir) {
        Ok(repo) => {
            // Fetching force-moves a branch: a repository someone pointed
            // the data dir at by mistake must not be rewritten.
            let is_ours = repo
                .config()
                .and_then(|config| config.open_level(ConfigLevel::Local))
                .and_then(|config| config.get_bool(MIRROR_MARKER))
                .unwrap_or(false);
            if !is_ours {
                return Err(mirror_error(
                    "the directory is a git repository that muster did not create".to_string(),
                ));
            }
            return Ok(repo);
        }
        Err(err) if err.code() == ErrorCode::NotFound => {}
        Err(err) => return Err(mirror_error(err.message().to_string())),
    }
    // Initialize only a missing or empty directory: anything else there is
    // not ours to take over.
    match std::fs::read_dir(mirror_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(mirror_error(
                    "the directory exists and is not a git mirror".to_string(),
                ));
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(mirror_dir).map_err(|err| mirror_error(err.to_string()))?;
        }
        Err(err) => return Err(mirror_error(err.to_string())),
    }
    let repo =
        Repository::init_bare(mirror_dir).map_err(|err| mirror_error(err.message().to_string()))?;
    repo.config()
        .and_then(|mut config| config.set_bool(MIRROR_MARKER, true))
        .map_err(|err| mirror_error(err.message().to_string()))?;
    Ok(repo)
}

/// Checks an extracted signature over `signed_data` against `allowed`.
fn check_signature(
    signature: &[u8],
    signed_data: &[u8],
    allowed: &[AllowedSigner],
) -> SignatureCheck {
    let armor = String::from_utf8_lossy(signature);
    let armor = armor.trim();
    if !armor.starts_with("-----BEGIN SSH SIGNATURE-----") {
        let kind = if armor.starts_with("-----BEGIN PGP SIGNATURE-----") {
            "a GPG signature"
        } else if armor.starts_with("-----BEGIN SIGNED MESSAGE-----") {
            "an X.509 signature"
        } else {
            "an unrecognized signature"
        };
        return SignatureCheck::Invalid(format!(
            "the commit carries {kind}, not an SSH signature: sign commits with an SSH key \
             (git config gpg.format ssh)"
        ));
    }
    let sig = match SshSig::from_pem(armor) {
        Ok(sig) => sig,
        Err(err) => return SignatureCheck::Invalid(format!("malformed SSH signature: {err}")),
    };
    if sig.namespace() != SIGNATURE_NAMESPACE {
        return SignatureCheck::Invalid(format!(
            "the signature is for namespace `{}`, not `{SIGNATURE_NAMESPACE}`: sign commits with \
             git, not ssh-keygen -Y sign",
            sig.namespace()
        ));
    }
    let signer = allowed.iter().find_map(|signer| {
        let key = PublicKey::from_openssh(signer.key.trim()).ok()?;
        (key.key_data() == sig.public_key()).then_some((signer, key))
    });
    let Some((signer, key)) = signer else {
        return SignatureCheck::UnknownKey;
    };
    match key.verify(SIGNATURE_NAMESPACE, signed_data, &sig) {
        Ok(()) => SignatureCheck::Verified {
            signer: signer.name.clone(),
        },
        Err(err) => SignatureCheck::Invalid(format!(
            "the signature of {} does not match the commit: {err}",
            signer.name
        )),
    }
}

/// Answers libgit2's requests for credentials: each kind is offered once,
/// since libgit2 asks again after a refusal and would otherwise loop.
pub(crate) fn credentials(
    config: Option<&git2::Config>,
    tried: &mut CredentialType,
    url: &str,
    username_from_url: Option<&str>,
    allowed: CredentialType,
) -> Result<Cred, git2::Error> {
    let give_up = || {
        git2::Error::new(
            ErrorCode::Auth,
            ErrorClass::Callback,
            "no credentials were accepted",
        )
    };
    if allowed.contains(CredentialType::USERNAME) && !tried.contains(CredentialType::USERNAME) {
        tried.insert(CredentialType::USERNAME);
        return Cred::username(username_from_url.unwrap_or("git"));
    }
    if allowed.contains(CredentialType::SSH_KEY) && !tried.contains(CredentialType::SSH_KEY) {
        tried.insert(CredentialType::SSH_KEY);
        return Cred::ssh_key_from_agent(username_from_url.unwrap_or("git"));
    }
    if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
        && !tried.contains(CredentialType::USER_PASS_PLAINTEXT)
    {
        tried.insert(CredentialType::USER_PASS_PLAINTEXT);
        // Credentials in the URL are presented by libgit2 itself before it
        // asks; this is for git credential helpers configured on the host.
        if let Some(config) = config {
            return Cred::credential_helper(config, url, username_from_url).map_err(|_| give_up());
        }
    }
    Err(give_up())
}

/// Checks the URL scheme and makes a local path absolute.
fn resolve_url(url: &str) -> Result<String, SourceError> {
    let url = url.trim();
    let unsupported = |reason: &str| SourceError::UnsupportedUrl {
        url: redact_credentials(url),
        reason: reason.to_string(),
    };
    if url.is_empty() {
        return Err(unsupported(
            "the repo url is empty: give an https url or a local path",
        ));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return match scheme.to_ascii_lowercase().as_str() {
            "https" | "http" | "file" => Ok(url.to_string()),
            "ssh" | "git+ssh" | "ssh+git" => ssh_url(url),
            _ => Err(unsupported(
                "unsupported url scheme: use https://, ssh://, file:// or a local path",
            )),
        };
    }
    // git's rule for scp-like addresses (`git@host:org/repo.git`): a colon
    // before any slash. A single letter before it is a Windows drive.
    if let Some((before, _)) = url.split_once(':')
        && !before.contains('/')
        && before.len() > 1
    {
        return ssh_url(url);
    }
    let absolute = std::path::absolute(url).map_err(|err| {
        unsupported(&format!(
            "cannot resolve the local path ({err}): give an absolute path"
        ))
    })?;
    // Lexically, as a shell's `cd` does: `..` undoes the component before
    // it, so the URL shown and stored is the one a person would write.
    let mut normalized = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normalized.pop();
            }
            other => normalized.push(other),
        }
    }
    normalized
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| unsupported("the local path is not valid UTF-8: move the repository"))
}

/// The directory a local URL (a path or `file://`) names.
fn local_path(url: &str) -> Option<&Path> {
    if let Some(path) = url.strip_prefix("file://") {
        // Percent-encoded paths are left to libgit2, which decodes them.
        return (!path.contains('%')).then(|| Path::new(path));
    }
    Path::new(url).is_absolute().then(|| Path::new(url))
}

#[cfg(feature = "ssh")]
fn ssh_url(url: &str) -> Result<String, SourceError> {
    Ok(url.to_string())
}

#[cfg(not(feature = "ssh"))]
fn ssh_url(url: &str) -> Result<String, SourceError> {
    Err(SourceError::UnsupportedUrl {
        url: redact_credentials(url),
        reason: "this controller was built without ssh support: use an https url, or rebuild \
                 with `--features ssh`"
            .to_string(),
    })
}

/// Removes the user info (`user:password@`) from every URL in `text`: the
/// user name goes too, since hosts take tokens as user names
/// (`https://TOKEN@host/…`).
pub(crate) fn redact_credentials(text: &str) -> String {
    let mut redacted = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        redacted.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let authority_len = rest
            .find(|c: char| matches!(c, '/' | '?' | '#' | '\'' | '"' | '`') || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(user_end) = rest[..authority_len].rfind('@') {
            rest = &rest[user_end + 1..];
        }
    }
    redacted.push_str(rest);
    redacted
}

/// Normalizes the fleet repo's directory: `None` for the root.
fn normalize_subdir(subdir: &str) -> Result<Option<String>, SourceError> {
    let invalid = |reason| SourceError::InvalidPath {
        path: subdir.to_string(),
        reason,
    };
    if subdir.starts_with('/') {
        return Err(invalid("it is absolute"));
    }
    let mut parts = Vec::new();
    for part in subdir.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("it leaves the repository with `..`")),
            part if part.contains('\\') || part.contains('\0') => {
                return Err(invalid("it contains a backslash or a NUL byte"));
            }
            part => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Normalizes a file path inside the fleet repo: `None` when it cannot name
/// a file of a tree.
fn normalize_file_path(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part if part.contains('\0') => return None,
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn commit_info(commit: &git2::Commit<'_>) -> CommitInfo {
    let author = commit.author();
    CommitInfo {
        id: commit.id().to_string(),
        author: format!(
            "{} <{}>",
            String::from_utf8_lossy(author.name_bytes()),
            String::from_utf8_lossy(author.email_bytes())
        ),
        summary: commit
            .summary_bytes()
            .map(|summary| String::from_utf8_lossy(summary).into_owned())
            .unwrap_or_default(),
        time: commit.time().seconds(),
    }
}

fn short_id(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
