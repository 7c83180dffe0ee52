//! The audit repository: a bare Git repository in the data dir
//! (`audit.git`) with one commit per action a user took.
//!
//! Each commit adds one YAML record (who, what, targets, parameters with
//! secret ones redacted, request id, time, source address) at
//! `actions/YYYY/MM/DD/<request-id>.yaml`, is authored by the acting user
//! and committed by `muster`, with the message `<action> <targets>:
//! <summary>`. The outcome of an action (a job result summary) follows as a
//! commit of its own at `outcomes/YYYY/MM/DD/<request-id>.yaml`, authored by
//! `muster`, in the repository that holds the action's record: replicas
//! of a controller each keep their own ([`AuditLog::has_action`]).
//!
//! Writing is the contract the rest of Muster builds on: [`AuditLog::record`]
//! returns only once the commit is on disk (its objects are fsynced before
//! the branch moves, the branch after), and returns an error when it cannot
//! be written, so that callers fail closed. Commits are written one at a
//! time: a mutex serializes the writers of one process, and the branch is
//! moved with a compare-and-swap so that another process (a `muster user`
//! command beside `muster serve`) never loses a commit either.
//!
//! Optionally the branch is pushed to a remote after each commit, in the
//! background: a push that fails is logged and retried, and never delays
//! or blocks an action.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use git2::build::TreeUpdateBuilder;
use git2::{
    Commit, CredentialType, Delta, ErrorCode, FileMode, ObjectType, Oid, PushOptions,
    RemoteCallbacks, Repository, RepositoryInitOptions, Signature, Time,
};
use serde::{Deserialize, Serialize};

/// The audit repository's directory inside the data dir.
pub const AUDIT_DIR: &str = "audit.git";

/// What secret parameters are replaced with.
pub const REDACTED: &str = "<redacted>";

/// The one branch of the audit repository.
const BRANCH_REF: &str = "refs/heads/main";

/// Set in the config of repositories this module creates, so that it never
/// writes into a repository it did not make.
const MARKER: &str = "muster.audit";

/// The committer of every commit, and the author of outcomes.
const COMMITTER: &str = "muster";

/// Attempts to move the branch when another process keeps moving it.
const MAX_ATTEMPTS: usize = 20;

/// Why the audit repository could not do what it was asked.
#[derive(Debug)]
pub enum AuditError {
    /// The repository cannot be created or opened.
    Open { path: PathBuf, detail: String },
    /// The caller described an action that cannot be recorded as given.
    Invalid(String),
    /// An action with this request id was recorded already.
    Duplicate { request_id: String },
    /// Git failed to write or read the repository.
    Git { what: &'static str, detail: String },
}

impl AuditError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            AuditError::Open { .. } => "open",
            AuditError::Invalid(_) => "invalid",
            AuditError::Duplicate { .. } => "duplicate",
            AuditError::Git { .. } => "git",
        }
    }

    fn git(what: &'static str, err: &git2::Error) -> Self {
        AuditError::Git {
            what,
            detail: crate::source::redact_credentials(err.message()),
        }
    }
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditError::Open { path, detail } => write!(
                f,
                "cannot open the audit repository `{}`: {detail}",
                path.display()
            ),
            AuditError::Invalid(message) => f.write_str(message),
            AuditError::Duplicate { request_id } => {
                write!(f, "request `{request_id}` was recorded already")
            }
            AuditError::Git { what, detail } => {
                write!(f, "cannot {what} in the audit repository: {detail}")
            }
        }
    }
}

impl std::error::Error for AuditError {}

pub type Result<T, E = AuditError> = std::result::Result<T, E>;

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Who {
    /// The user's login name (for the command line: the local account).
    pub user: String,
    /// The author email of the commit, when one is known; else
    /// `<user>@muster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// How the user acted: `session`, `api-token`, `cli` or `controller`.
    pub via: String,
    /// The API token's name, when acting through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A break-glass admin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

impl Who {
    /// Someone running `muster` on the controller's machine, straight on
    /// its database: the local account from `$SUDO_USER`, `$USER` or
    /// `$LOGNAME`.
    pub fn local() -> Who {
        let user = ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .filter_map(|name| std::env::var(name).ok())
            .find(|name| valid_ident(name) && !name.trim().is_empty())
            .unwrap_or_else(|| "local".into());
        Who {
            user,
            email: None,
            via: "cli".into(),
            token: None,
            break_glass: false,
        }
    }

    fn email(&self) -> String {
        self.email
            .clone()
            .unwrap_or_else(|| format!("{}@muster", self.user))
    }
}

/// A parameter of an action. Secret ones are recorded as `<redacted>`;
/// their value never reaches the repository, nor this type's `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Parameter {
    pub name: String,
    pub value: String,
    pub secret: bool,
}

impl Parameter {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Parameter {
        Parameter {
            name: name.into(),
            value: value.into(),
            secret: false,
        }
    }

    pub fn secret(name: impl Into<String>, value: impl Into<String>) -> Parameter {
        Parameter {
            name: name.into(),
            value: value.into(),
            secret: true,
        }
    }

    fn recorded_value(&self) -> &str {
        if self.secret { REDACTED } else { &self.value }
    }
}

impl fmt::Debug for Parameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parameter")
            .field("name", &self.name)
            .field("value", &self.recorded_value())
            .field("secret", &self.secret)
            .finish()
    }
}

/// An action to record, as its caller describes it.
#[derive(Debug, Clone)]
pub struct Action {
    /// Unique per action ([`new_request_id`]): the record's file name.
    pub request_id: String,
    pub who: Who,
    /// What was done, such as `user.add` or `scripts.run`: lowercase
    /// letters, digits, `.`, `-` and `_`.
    pub action: String,
    /// What it was done to: host, user or token names.
    pub targets: Vec<String>,
    /// One line for people.
    pub summary: String,
    pub parameters: Vec<Parameter>,
    /// The caller's address, or `None` (the command line).
    pub source: Option<String>,
    /// Unix seconds.
    pub time: i64,
}

/// The outcome of an earlier action.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The request id of the action.
    pub request_id: String,
    /// One line, such as `3 succeeded, 1 failed`.
    pub summary: String,
    /// Details, such as counts per result; no secrets.
    pub details: BTreeMap<String, String>,
    /// Unix seconds.
    pub time: i64,
}

/// Whether a record is an action or the outcome of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Action,
    Outcome,
}

/// A record file, as stored in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub kind: RecordKind,
    /// The action's request id (for outcomes: the action they follow).
    pub request_id: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub who: Who,
    /// The action (`outcome` for outcomes).
    pub action: String,
    /// For outcomes: the action's request id.
    pub targets: Vec<String>,
    pub summary: String,
    /// Secret values are `<redacted>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Record {
    /// The commit message this record is committed with.
    pub fn message(&self) -> String {
        format!(
            "{} {}: {}",
            self.action,
            targets_text(&self.targets),
            self.summary
        )
    }

    /// The record's time, in Unix seconds.
    pub fn unix_time(&self) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(&self.time)
            .ok()
            .map(|t| t.timestamp())
    }
}

/// Where an action was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub commit_id: String,
    /// The record's path in the repository.
    pub path: String,
}

/// A record read back from the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub commit_id: String,
    pub path: String,
    pub record: Record,
}

/// Which records `entries` returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only records at or after this time (Unix seconds).
    pub since: Option<i64>,
    /// Only actions of this user (outcomes of their actions included).
    pub user: Option<String>,
}

impl Filter {
    /// The records of `entries` (newest first) this filter keeps, in the
    /// same order.
    pub fn apply(&self, mut entries: Vec<Entry>) -> Vec<Entry> {
        let mut kept = Vec::new();
        let mut users_requests: HashSet<String> = HashSet::new();
        // Outcomes come after their actions: walking from the oldest lets
        // the user filter follow an action to its outcomes.
        entries.reverse();
        for entry in entries {
            let record = &entry.record;
            if let Some(user) = &self.user {
                match record.kind {
                    RecordKind::Action if record.who.user == *user => {
                        users_requests.insert(record.request_id.clone());
                    }
                    RecordKind::Outcome if users_requests.contains(&record.request_id) => {}
                    _ => continue,
                }
            }
            if let Some(since) = self.since
                && record.unix_time().is_some_and(|t| t < since)
            {
                continue;
            }
            kept.push(entry);
        }
        kept.reverse();
        kept
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    pub n_actions: usize,
    pub n_outcomes: usize,
    /// Every problem, one sentence each; empty when the chain is intact.
    pub problems: Vec<String>,
}

/// A new request id: 128 random bits, hex.
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Ids need to be unique, not secret: time and a counter do then.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("{nanos:x}{n:08x}{:08x}", std::process::id());
    }
    hex::encode(bytes)
}

/// The audit repository. Cheap to clone: clones share one writer lock.
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// Serializes the writers of this process.
    write: Mutex<()>,
    remote: Option<RemoteSync>,
    /// The records read so far, newest first: commits never change, so
    /// [`AuditLog::all_entries`] reads only the ones written since.
    read: Mutex<Option<Arc<Vec<Entry>>>>,
}

/// Pushing to a remote after commits.
struct RemoteSync {
    /// May hold credentials: never shown.
    url: String,
    display_url: String,
    wake: tokio::sync::Notify,
    /// First delay after a failed push; it doubles up to `max_retry`.
    first_retry: Duration,
    max_retry: Duration,
}

impl fmt::Debug for RemoteSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteSync")
            .field("url", &self.display_url)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// The audit repository at `path`, created on first write.
    pub fn open(path: impl Into<PathBuf>) -> AuditLog {
        AuditLog {
            inner: Arc::new(Inner {
                path: path.into(),
                write: Mutex::new(()),
                remote: None,
                read: Mutex::new(None),
            }),
        }
    }

    /// The audit repository of a data dir.
    pub fn in_data_dir(data_dir: &Path) -> AuditLog {
        Self::open(data_dir.join(AUDIT_DIR))
    }

    /// The same repository, pushed to `url` after each commit by
    /// [`AuditLog::spawn_pusher`].
    pub fn with_remote(self, url: &str) -> AuditLog {
        self.with_remote_retry(url, Duration::from_secs(5), Duration::from_secs(300))
    }

    /// [`AuditLog::with_remote`] with the retry delays given (tests).
    pub fn with_remote_retry(self, url: &str, first: Duration, max: Duration) -> AuditLog {
        AuditLog {
            inner: Arc::new(Inner {
                path: self.inner.path.clone(),
                write: Mutex::new(()),
                remote: Some(RemoteSync {
                    url: url.to_string(),
                    display_url: crate::source::redact_credentials(url),
                    wake: tokio::sync::Notify::new(),
                    first_retry: first,
                    max_retry: max,
                }),
                read: Mutex::new(None),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records an action: returns once its commit is durably written, or
    /// an error if it could not be (the action must then not happen).
    pub async fn record(&self, action: Action) -> Result<Committed> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.record_blocking(&action))
            .await
            .map_err(|err| AuditError::Git {
                what: "write a commit",
                detail: format!("the writer task failed: {err}"),
            })?
    }

    /// [`AuditLog::record`] for callers without a runtime.
    pub fn record_blocking(&self, action: &Action) -> Result<Committed> {
        let record = action_record(action)?;
        let day = day_path(action.time)?;
        let path = format!("actions/{day}/{}.yaml", action.request_id);
        let committed = self.commit(&record, |tree| {
            if tree.get_path(Path::new(&path)).is_ok() {
                return Err(AuditError::Duplicate {
                    request_id: action.request_id.clone(),
                });
            }
            Ok(path.clone())
        })?;
        self.pushed_later();
        Ok(committed)
    }

    /// Records the outcome of an earlier action.
    pub async fn record_outcome(&self, outcome: Outcome) -> Result<Committed> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.record_outcome_blocking(&outcome))
            .await
            .map_err(|err| AuditError::Git {
                what: "write a commit",
                detail: format!("the writer task failed: {err}"),
            })?
    }

    /// Records the final outcome of an action once: at the path of the
    /// day of `outcome.time`, and not at all (`Ok(None)`) when that path
    /// holds one already. The check and the write happen under the
    /// writer lock and the branch's compare-and-swap, so that outcomes
    /// recorded again (after a retry, by another replica) are never
    /// written twice.
    pub async fn record_outcome_once(&self, outcome: Outcome) -> Result<Option<Committed>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let record = outcome_record(&outcome)?;
            let day = day_path(outcome.time)?;
            let path = format!("outcomes/{day}/{}.yaml", outcome.request_id);
            let committed = this.commit(&record, |tree| {
                if tree.get_path(Path::new(&path)).is_ok() {
                    return Err(AuditError::Duplicate {
                        request_id: outcome.request_id.clone(),
                    });
                }
                Ok(path.clone())
            });
            match committed {
                Ok(committed) => {
                    this.pushed_later();
                    Ok(Some(committed))
                }
                Err(AuditError::Duplicate { .. }) => Ok(None),
                Err(err) => Err(err),
            }
        })
        .await
        .map_err(|err| AuditError::Git {
            what: "write a commit",
            detail: format!("the writer task failed: {err}"),
        })?
    }

    /// Whether the outcome of `request_id` for the day of `time` is
    /// recorded (see [`AuditLog::record_outcome_once`]).
    pub fn has_outcome(&self, request_id: &str, time: i64) -> Result<bool> {
        let Some(repo) = self.open_existing()? else {
            return Ok(false);
        };
        let Some(head) = head_commit(&repo)? else {
            return Ok(false);
        };
        let tree = head
            .tree()
            .map_err(|err| AuditError::git("read the tree", &err))?;
        let path = format!("outcomes/{}/{request_id}.yaml", day_path(time)?);
        Ok(tree.get_path(Path::new(&path)).is_ok())
    }

    /// Whether this repository holds the record of the action that
    /// `audit_commit` wrote for `request_id`. Every replica of a
    /// controller keeps its own audit repository, and an outcome belongs
    /// in the one that holds its action: `verify` refuses an outcome
    /// without an earlier action. The record's path comes from the
    /// commit's author time, which is the record's time; a commit this
    /// repository does not have means another replica wrote it.
    pub fn has_action(&self, request_id: &str, audit_commit: &str) -> Result<bool> {
        let Some(repo) = self.open_existing()? else {
            return Ok(false);
        };
        let Ok(commit_id) = Oid::from_str(audit_commit) else {
            return Ok(false);
        };
        let commit = match repo.find_commit(commit_id) {
            Ok(commit) => commit,
            Err(err) if err.code() == ErrorCode::NotFound => return Ok(false),
            Err(err) => return Err(AuditError::git("read a commit", &err)),
        };
        let Some(head) = head_commit(&repo)? else {
            return Ok(false);
        };
        let tree = head
            .tree()
            .map_err(|err| AuditError::git("read the tree", &err))?;
        let day = day_path(commit.author().when().seconds())?;
        let path = format!("actions/{day}/{request_id}.yaml");
        Ok(tree.get_path(Path::new(&path)).is_ok())
    }

    /// [`AuditLog::record_outcome`] for callers without a runtime.
    pub fn record_outcome_blocking(&self, outcome: &Outcome) -> Result<Committed> {
        let record = outcome_record(outcome)?;
        let day = day_path(outcome.time)?;
        let request_id = outcome.request_id.clone();
        let committed = self.commit(&record, |tree| {
            // Several outcomes of one action on one day get numbered files.
            let mut n = 1;
            loop {
                let path = if n == 1 {
                    format!("outcomes/{day}/{request_id}.yaml")
                } else {
                    format!("outcomes/{day}/{request_id}-{n}.yaml")
                };
                if tree.get_path(Path::new(&path)).is_err() {
                    return Ok(path);
                }
                n += 1;
            }
        })?;
        self.pushed_later();
        Ok(committed)
    }

    /// Writes one commit adding `record` at the path `choose_path` picks
    /// in the current tree, retrying when another process moved the branch.
    fn commit(
        &self,
        record: &Record,
        choose_path: impl Fn(&git2::Tree<'_>) -> Result<String>,
    ) -> Result<Committed> {
        let _guard = self
            .inner
            .write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let repo = self.open_or_create()?;
        let yaml = serde_yaml::to_string(record)
            .map_err(|err| AuditError::Invalid(format!("the record does not serialize: {err}")))?;
        let blob = repo
            .blob(yaml.as_bytes())
            .map_err(|err| AuditError::git("write a record", &err))?;
        let author = signature(&record.who.user, &record.who.email(), record.unix_time())?;
        let committer = signature(
            COMMITTER,
            &format!("{COMMITTER}@muster"),
            record.unix_time(),
        )?;
        let message = record.message();
        for _ in 0..MAX_ATTEMPTS {
            let parent = head_commit(&repo)?;
            let base = match &parent {
                Some(commit) => commit
                    .tree()
                    .map_err(|err| AuditError::git("read the tree", &err))?,
                None => {
                    let empty = repo
                        .treebuilder(None)
                        .and_then(|builder| builder.write())
                        .map_err(|err| AuditError::git("write an empty tree", &err))?;
                    repo.find_tree(empty)
                        .map_err(|err| AuditError::git("read the tree", &err))?
                }
            };
            let path = choose_path(&base)?;
            let tree_id = TreeUpdateBuilder::new()
                .upsert(path.as_str(), blob, FileMode::Blob)
                .create_updated(&repo, &base)
                .map_err(|err| AuditError::git("write the tree", &err))?;
            let tree = repo
                .find_tree(tree_id)
                .map_err(|err| AuditError::git("read the tree", &err))?;
            let parents: Vec<&Commit<'_>> = parent.iter().collect();
            let commit_id = repo
                .commit(None, &author, &committer, &message, &tree, &parents)
                .map_err(|err| AuditError::git("write a commit", &err))?;
            // The objects reach the disk before the branch names them.
            let mut objects = vec![blob, commit_id];
            objects.extend(tree_ids(&tree, &path));
            sync_objects(repo.path(), &objects)?;
            // Compare and swap: the branch moves only from the parent read
            // above, so a commit of another process is never overwritten.
            let moved = match &parent {
                Some(parent) => repo.reference_matching(
                    BRANCH_REF,
                    commit_id,
                    true,
                    parent.id(),
                    "audit record",
                ),
                None => repo.reference(BRANCH_REF, commit_id, false, "audit record"),
            };
            match moved {
                Ok(_) => {
                    sync_branch(repo.path())?;
                    return Ok(Committed {
                        commit_id: commit_id.to_string(),
                        path,
                    });
                }
                Err(err)
                    if matches!(
                        err.code(),
                        ErrorCode::Modified | ErrorCode::Exists | ErrorCode::Locked
                    ) =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => return Err(AuditError::git("move the branch", &err)),
            }
        }
        Err(AuditError::Git {
            what: "move the branch",
            detail: "another writer kept moving it".into(),
        })
    }

    /// Opens the repository, creating it on first use.
    fn open_or_create(&self) -> Result<Repository> {
        let path = &self.inner.path;
        let open_error = |detail: String| AuditError::Open {
            path: path.clone(),
            detail,
        };
        if !path.exists() {
            create(path).map_err(open_error)?;
        }
        let repo = Repository::open_bare(path).map_err(|err| open_error(err.message().into()))?;
        let marked = repo
            .config()
            .and_then(|config| config.get_bool(MARKER))
            .unwrap_or(false);
        if !marked {
            return Err(open_error(
                "it is not an audit repository made by muster: move it away".into(),
            ));
        }
        Ok(repo)
    }

    /// Opens the repository for reading; `None` when it does not exist yet.
    fn open_existing(&self) -> Result<Option<Repository>> {
        if !self.inner.path.exists() {
            return Ok(None);
        }
        Repository::open_bare(&self.inner.path)
            .map(Some)
            .map_err(|err| AuditError::Open {
                path: self.inner.path.clone(),
                detail: err.message().into(),
            })
    }

    /// The newest record's commit, if there is one: it changes exactly
    /// when a record is written, so the dashboard polls it.
    pub fn head(&self) -> Result<Option<String>> {
        let Some(repo) = self.open_existing()? else {
            return Ok(None);
        };
        Ok(repo
            .head()
            .ok()
            .and_then(|head| head.target())
            .map(|oid| oid.to_string()))
    }

    /// Records, newest first.
    pub fn entries(&self, filter: &Filter) -> Result<Vec<Entry>> {
        let (walked, _) = self.entries_after(None)?;
        Ok(filter.apply(walked))
    }

    /// Every record, newest first: those read by an earlier call, and
    /// those written since (blocking Git work). For readers that ask
    /// often, like the dashboard's audit page.
    pub fn all_entries(&self) -> Result<Arc<Vec<Entry>>> {
        let lock = |read: &Mutex<Option<Arc<Vec<Entry>>>>| {
            read.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
        };
        let read = lock(&self.inner.read);
        let known = read
            .as_ref()
            .and_then(|entries| entries.first())
            .map(|entry| entry.commit_id.clone());
        let (mut fresh, met) = self.entries_after(known.as_deref())?;
        let entries = match read {
            Some(read) if met && fresh.is_empty() => return Ok(read),
            Some(read) if met => {
                fresh.extend(read.iter().cloned());
                Arc::new(fresh)
            }
            // A history without the newest record read was replaced: what
            // was read before is no longer the log.
            _ => Arc::new(fresh),
        };
        *self
            .inner
            .read
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::clone(&entries));
        Ok(entries)
    }

    /// The records written after the commit `known`, newest first, and
    /// whether `known` was met on the way. Commits never change, so a
    /// reader that keeps the records it read (the dashboard) reads only
    /// the new ones; when `known` is not met (`None`, or a history that
    /// no longer holds it) these are all the records.
    pub fn entries_after(&self, known: Option<&str>) -> Result<(Vec<Entry>, bool)> {
        let Some(repo) = self.open_existing()? else {
            return Ok((Vec::new(), false));
        };
        let mut entries = Vec::new();
        for commit in history(&repo)? {
            let commit = commit.map_err(|detail| AuditError::Git {
                what: "read the history",
                detail,
            })?;
            let commit_id = commit.id().to_string();
            if known == Some(commit_id.as_str()) {
                return Ok((entries, true));
            }
            let (path, record) = match read_record(&repo, &commit) {
                Ok(found) => found,
                Err(problem) => {
                    return Err(AuditError::Invalid(format!(
                        "commit {commit_id} is not a valid audit record: {problem} (run `muster audit verify`)"
                    )));
                }
            };
            entries.push(Entry {
                commit_id,
                path,
                record,
            });
        }
        Ok((entries, false))
    }

    /// Checks the chain: every commit has one parent (but the first), adds
    /// exactly one record at the path its content implies, the record
    /// parses and matches the commit's message and author, request ids are
    /// unique and every outcome follows its action. Every request id in
    /// `expected` must have its action commit.
    pub fn verify(&self, expected: &[String]) -> Result<Verification> {
        let mut verification = Verification::default();
        let Some(repo) = self.open_existing()? else {
            for request_id in expected {
                verification
                    .problems
                    .push(format!("no audit commit for request {request_id}"));
            }
            return Ok(verification);
        };
        let mut commits = Vec::new();
        for commit in history(&repo)? {
            match commit {
                Ok(commit) => commits.push(commit),
                Err(err) => {
                    verification
                        .problems
                        .push(format!("the history cannot be read: {err}"));
                    return Ok(verification);
                }
            }
        }
        commits.reverse();
        let mut actions: HashSet<String> = HashSet::new();
        for (index, commit) in commits.iter().enumerate() {
            let short = commit.id().to_string()[..10].to_string();
            let expected_parents = usize::from(index > 0);
            if commit.parent_count() != expected_parents {
                verification.problems.push(format!(
                    "commit {short} has {} parents where the chain needs {expected_parents}",
                    commit.parent_count()
                ));
            }
            let (path, record) = match read_record(&repo, commit) {
                Ok(found) => found,
                Err(problem) => {
                    verification
                        .problems
                        .push(format!("commit {short}: {problem}"));
                    continue;
                }
            };
            match record.kind {
                RecordKind::Action => verification.n_actions += 1,
                RecordKind::Outcome => verification.n_outcomes += 1,
            }
            for problem in check_record(commit, &path, &record, &mut actions) {
                verification
                    .problems
                    .push(format!("commit {short} ({path}): {problem}"));
            }
        }
        for request_id in expected {
            if !actions.contains(request_id) {
                verification
                    .problems
                    .push(format!("no audit commit for request {request_id}"));
            }
        }
        Ok(verification)
    }

    /// Wakes the pusher, if there is one.
    fn pushed_later(&self) {
        if let Some(remote) = &self.inner.remote {
            remote.wake.notify_one();
        }
    }

    /// Starts pushing to the remote: after each commit, at least once a
    /// minute when behind, and again after a failure with a growing delay.
    /// `None` without a remote. Ends when `stop` resolves.
    pub fn spawn_pusher(
        &self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let remote = self.inner.remote.as_ref()?;
        let (first_retry, max_retry) = (remote.first_retry, remote.max_retry);
        let this = self.clone();
        Some(tokio::spawn(async move {
            tokio::pin!(stop);
            let mut pushed: Option<Oid> = None;
            let mut wait = Duration::ZERO;
            let mut delay = first_retry;
            loop {
                let remote = this.inner.remote.as_ref().expect("the pusher has a remote");
                tokio::select! {
                    () = &mut stop => return,
                    () = remote.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                let attempt = this.clone();
                let result = tokio::task::spawn_blocking(move || attempt.push_blocking(pushed))
                    .await
                    .unwrap_or_else(|err| Err(format!("the push task failed: {err}")));
                match result {
                    Ok(head) => {
                        if head != pushed
                            && let Some(head) = head
                        {
                            tracing::debug!(remote = %remote.display_url, commit = %head, "pushed the audit repository");
                        }
                        pushed = head;
                        delay = first_retry;
                        wait = Duration::from_secs(60);
                    }
                    Err(err) => {
                        tracing::warn!(remote = %remote.display_url, error = %err, retry_in = ?delay, "cannot push the audit repository; retrying");
                        wait = delay;
                        delay = (delay * 2).min(max_retry);
                    }
                }
            }
        }))
    }

    /// Pushes the branch unless its head is `pushed` already; returns the
    /// head that the remote now has.
    fn push_blocking(&self, pushed: Option<Oid>) -> std::result::Result<Option<Oid>, String> {
        let Some(remote_sync) = &self.inner.remote else {
            return Ok(pushed);
        };
        let Some(repo) = self.open_existing().map_err(|err| err.to_string())? else {
            return Ok(pushed);
        };
        let head = match repo.refname_to_id(BRANCH_REF) {
            Ok(head) => head,
            Err(err) if err.code() == ErrorCode::NotFound => return Ok(pushed),
            Err(err) => return Err(err.message().to_string()),
        };
        if Some(head) == pushed {
            return Ok(pushed);
        }
        let redact = |text: &str| {
            crate::source::redact_credentials(text)
                .replace(&remote_sync.url, &remote_sync.display_url)
        };
        let mut remote = repo
            .remote_anonymous(&remote_sync.url)
            .map_err(|err| redact(err.message()))?;
        let config = repo.config().ok();
        let mut tried = CredentialType::empty();
        let rejected: Arc<Mutex<Option<String>>> = Arc::default();
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(move |url, username, allowed| {
            crate::source::credentials(config.as_ref(), &mut tried, url, username, allowed)
        });
        let rejection = Arc::clone(&rejected);
        callbacks.push_update_reference(move |reference, status| {
            if let Some(status) = status {
                *rejection.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("the remote refused {reference}: {status}"));
            }
            Ok(())
        });
        let mut options = PushOptions::new();
        options.remote_callbacks(callbacks);
        remote
            .push(&[format!("{BRANCH_REF}:{BRANCH_REF}")], Some(&mut options))
            .map_err(|err| redact(err.message()))?;
        if let Some(reason) = rejected.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(redact(&reason));
        }
        Ok(Some(head))
    }
}

/// The record of an outcome: authored by `muster`, its details as
/// parameters.
fn outcome_record(outcome: &Outcome) -> Result<Record> {
    check_request_id(&outcome.request_id)?;
    Ok(Record {
        kind: RecordKind::Outcome,
        request_id: outcome.request_id.clone(),
        time: rfc3339(outcome.time)?,
        who: Who {
            user: COMMITTER.into(),
            email: None,
            via: "controller".into(),
            token: None,
            break_glass: false,
        },
        action: "outcome".into(),
        targets: vec![outcome.request_id.clone()],
        summary: one_line(&outcome.summary),
        parameters: outcome.details.clone(),
        source: None,
    })
}

/// The commits of the branch, newest first.
fn history(repo: &Repository) -> Result<Vec<std::result::Result<Commit<'_>, String>>> {
    let head = match repo.refname_to_id(BRANCH_REF) {
        Ok(head) => head,
        Err(err) if err.code() == ErrorCode::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(AuditError::git("read the branch", &err)),
    };
    // Following first parents by hand (rather than a revwalk) keeps a
    // broken object from ending the walk silently.
    let mut commits = Vec::new();
    let mut next = Some(head);
    while let Some(id) = next {
        match repo.find_commit(id) {
            Ok(commit) => {
                next = commit.parent_id(0).ok();
                commits.push(Ok(commit));
            }
            Err(err) => {
                commits.push(Err(format!("commit {id}: {}", err.message())));
                next = None;
            }
        }
    }
    Ok(commits)
}

/// What is wrong with one record commit, given the actions before it.
fn check_record(
    commit: &Commit<'_>,
    path: &str,
    record: &Record,
    actions: &mut HashSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let message = commit.message().unwrap_or_default();
    if message != record.message() {
        problems.push(format!(
            "the message `{}` does not match the record (`{}`)",
            message.trim_end(),
            record.message()
        ));
    }
    let author = commit.author();
    let (author_name, author_email) = match record.kind {
        RecordKind::Action => (record.who.user.clone(), record.who.email()),
        RecordKind::Outcome => (COMMITTER.to_string(), format!("{COMMITTER}@muster")),
    };
    if author.name().ok() != Some(author_name.as_str())
        || author.email().ok() != Some(author_email.as_str())
    {
        problems.push(format!(
            "authored by `{} <{}>`, but the record says `{author_name} <{author_email}>`",
            author.name().unwrap_or("?"),
            author.email().unwrap_or("?")
        ));
    }
    let Some(time) = record.unix_time() else {
        problems.push(format!("the time `{}` is not RFC 3339", record.time));
        return problems;
    };
    let day = day_path(time).unwrap_or_default();
    match record.kind {
        RecordKind::Action => {
            if path != format!("actions/{day}/{}.yaml", record.request_id) {
                problems.push("the path does not match the record's time and request id".into());
            }
            if !actions.insert(record.request_id.clone()) {
                problems.push(format!(
                    "request {} is recorded more than once",
                    record.request_id
                ));
            }
        }
        RecordKind::Outcome => {
            let prefix = format!("outcomes/{day}/{}", record.request_id);
            let numbered = path
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".yaml"))
                .is_some_and(|n| {
                    n.is_empty()
                        || n.strip_prefix('-')
                            .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 2))
                });
            if !numbered {
                problems.push("the path does not match the record's time and request id".into());
            }
            if record.targets != [record.request_id.clone()] {
                problems.push("an outcome's target must be its request id".into());
            }
            if !actions.contains(&record.request_id) {
                problems.push(format!(
                    "outcome of request {}, which has no earlier action",
                    record.request_id
                ));
            }
        }
    }
    problems
}

fn head_commit(repo: &Repository) -> Result<Option<Commit<'_>>> {
    match repo.refname_to_id(BRANCH_REF) {
        Ok(id) => repo
            .find_commit(id)
            .map(Some)
            .map_err(|err| AuditError::git("read the branch", &err)),
        Err(err) if err.code() == ErrorCode::NotFound => Ok(None),
        Err(err) => Err(AuditError::git("read the branch", &err)),
    }
}

/// The one file a commit adds, parsed; the text says what is wrong.
fn read_record(
    repo: &Repository,
    commit: &Commit<'_>,
) -> std::result::Result<(String, Record), String> {
    let tree = commit
        .tree()
        .map_err(|err| format!("its tree cannot be read: {}", err.message()))?;
    let parent_tree = match commit.parent(0) {
        Ok(parent) => Some(
            parent
                .tree()
                .map_err(|err| format!("its parent's tree cannot be read: {}", err.message()))?,
        ),
        Err(_) => None,
    };
    let diff = repo
        .diff_tree_to_tree(parent_tree.as_ref(), Some(&tree), None)
        .map_err(|err| format!("it cannot be compared with its parent: {}", err.message()))?;
    let deltas: Vec<_> = diff.deltas().collect();
    let [delta] = deltas.as_slice() else {
        return Err(format!(
            "it changes {} files where a record commit adds one",
            deltas.len()
        ));
    };
    let path = delta
        .new_file()
        .path()
        .and_then(Path::to_str)
        .unwrap_or_default()
        .to_string();
    if delta.status() != Delta::Added {
        return Err(format!(
            "it changes `{path}` where a record commit only adds"
        ));
    }
    let blob = repo
        .find_object(delta.new_file().id(), Some(ObjectType::Blob))
        .and_then(|object| object.peel_to_blob())
        .map_err(|err| format!("`{path}` cannot be read: {}", err.message()))?;
    let text = std::str::from_utf8(blob.content()).map_err(|_| format!("`{path}` is not UTF-8"))?;
    let record: Record =
        serde_yaml::from_str(text).map_err(|err| format!("`{path}` is not a record: {err}"))?;
    Ok((path, record))
}

fn action_record(action: &Action) -> Result<Record> {
    check_request_id(&action.request_id)?;
    let valid_action = !action.action.is_empty()
        && action.action.len() <= 64
        && action.action.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if !valid_action || action.action == "outcome" {
        return Err(AuditError::Invalid(format!(
            "invalid action name `{}`: use lowercase letters, digits, `.`, `-` and `_`",
            action.action
        )));
    }
    if action.who.user.trim().is_empty() || !valid_ident(&action.who.user) {
        return Err(AuditError::Invalid(
            "the acting user's name cannot be used as a commit author".into(),
        ));
    }
    if action.who.email.as_deref().is_some_and(|e| !valid_ident(e)) {
        return Err(AuditError::Invalid(
            "the acting user's email cannot be used as a commit author".into(),
        ));
    }
    let mut parameters = BTreeMap::new();
    for parameter in &action.parameters {
        if parameter.name.is_empty() {
            return Err(AuditError::Invalid("a parameter has no name".into()));
        }
        if parameters
            .insert(
                parameter.name.clone(),
                parameter.recorded_value().to_string(),
            )
            .is_some()
        {
            return Err(AuditError::Invalid(format!(
                "parameter `{}` is given twice",
                parameter.name
            )));
        }
    }
    Ok(Record {
        kind: RecordKind::Action,
        request_id: action.request_id.clone(),
        time: rfc3339(action.time)?,
        who: action.who.clone(),
        action: action.action.clone(),
        targets: action.targets.iter().map(|t| one_line(t)).collect(),
        summary: one_line(&action.summary),
        parameters,
        source: action.source.clone(),
    })
}

fn check_request_id(request_id: &str) -> Result<()> {
    let valid = (8..=128).contains(&request_id.len())
        && request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if valid {
        Ok(())
    } else {
        Err(AuditError::Invalid(format!(
            "invalid request id `{}`: use 8 to 128 letters, digits, `-` and `_`",
            one_line(request_id)
        )))
    }
}

/// Whether text can be a Git author name or email.
fn valid_ident(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 256
        && !text
            .chars()
            .any(|c| c.is_control() || matches!(c, '<' | '>'))
}

/// Text on one line, without control characters.
fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.trim().to_string()
}

fn targets_text(targets: &[String]) -> String {
    const SHOWN: usize = 5;
    match targets.len() {
        0 => "-".into(),
        n if n <= SHOWN => targets.join(","),
        n => format!("{} and {} more", targets[..SHOWN].join(","), n - SHOWN),
    }
}

fn datetime(time: i64) -> Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(time, 0)
        .ok_or_else(|| AuditError::Invalid(format!("time {time} is out of range")))
}

fn rfc3339(time: i64) -> Result<String> {
    Ok(datetime(time)?.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn day_path(time: i64) -> Result<String> {
    Ok(datetime(time)?.format("%Y/%m/%d").to_string())
}

fn signature(name: &str, email: &str, time: Option<i64>) -> Result<Signature<'static>> {
    Signature::new(name, email, &Time::new(time.unwrap_or(0), 0))
        .map_err(|err| AuditError::git("make a commit signature", &err))
}

/// The trees along `path` in `root`, root included: the ones an added
/// file made new.
fn tree_ids(root: &git2::Tree<'_>, path: &str) -> Vec<Oid> {
    let mut ids = vec![root.id()];
    let mut prefix = PathBuf::new();
    let mut components: Vec<&str> = path.split('/').collect();
    components.pop();
    for component in components {
        prefix.push(component);
        if let Ok(entry) = root.get_path(&prefix) {
            ids.push(entry.id());
        }
    }
    ids
}

/// Fsyncs loose objects and their directories. libgit2 does not by
/// default, and its switch for it (`core.fsyncObjectFiles`) makes git
/// itself warn on every command run in the repository.
fn sync_objects(git_dir: &Path, ids: &[Oid]) -> Result<()> {
    let objects = git_dir.join("objects");
    let mut dirs: Vec<PathBuf> = Vec::new();
    for id in ids {
        let hex = id.to_string();
        let dir = objects.join(&hex[..2]);
        let file = dir.join(&hex[2..]);
        // An object found in a pack (none are made here) is durable already.
        if file.exists() {
            fsync(&file)?;
        }
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.push(objects);
    for dir in dirs.iter().filter(|dir| dir.exists()) {
        fsync(dir)?;
    }
    Ok(())
}

/// Fsyncs the branch and the directory holding it.
fn sync_branch(git_dir: &Path) -> Result<()> {
    let branch = git_dir.join(BRANCH_REF);
    fsync(&branch)?;
    fsync(branch.parent().expect("the branch has a directory"))
}

fn fsync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|err| AuditError::Git {
            what: "sync to disk",
            detail: format!("{}: {err}", path.display()),
        })
}

/// Creates the repository whole or not at all: it is made beside its
/// place and renamed into it, so that another process creating it at the
/// same moment never opens a half-made one (the loser of the rename opens
/// the winner's).
fn create(path: &Path) -> std::result::Result<(), String> {
    let parent = path
        .parent()
        .ok_or_else(|| "the path has no parent directory".to_string())?;
    std::fs::create_dir_all(parent).map_err(|err| err.to_string())?;
    let name = path.file_name().map_or_else(
        || "audit".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let temp = parent.join(format!(".{name}.new-{}", new_request_id()));
    let made = (|| -> std::result::Result<(), String> {
        let repo = Repository::init_opts(
            &temp,
            RepositoryInitOptions::new()
                .bare(true)
                .initial_head("main")
                .mkpath(false),
        )
        .map_err(|err| err.message().to_string())?;
        let mut config = repo.config().map_err(|err| err.message().to_string())?;
        config
            .set_bool(MARKER, true)
            .map_err(|err| err.message().to_string())?;
        restrict(&temp).map_err(|err| err.to_string())
    })();
    let renamed = made.and_then(|()| match std::fs::rename(&temp, path) {
        Ok(()) => Ok(()),
        // Another process made it first: use theirs.
        Err(_) if path.is_dir() => Ok(()),
        Err(err) => Err(err.to_string()),
    });
    if temp.exists() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    renamed
}

/// Makes the repository readable by its owner only: records name users,
/// hosts and addresses.
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_action_targets_and_summary() {
        let record = |targets: &[&str]| Record {
            kind: RecordKind::Action,
            request_id: "r".repeat(8),
            time: "2026-11-29T10:00:00Z".into(),
            who: Who::local(),
            action: "scripts.run".into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            summary: "ran it".into(),
            parameters: BTreeMap::new(),
            source: None,
        };
        assert_eq!(record(&[]).message(), "scripts.run -: ran it");
        assert_eq!(
            record(&["web-1", "web-2"]).message(),
            "scripts.run web-1,web-2: ran it"
        );
        assert_eq!(
            record(&["a", "b", "c", "d", "e", "f", "g"]).message(),
            "scripts.run a,b,c,d,e and 2 more: ran it"
        );
    }

    #[test]
    fn secret_parameters_are_redacted_even_in_debug_output() {
        let parameter = Parameter::secret("password", "hunter2hunter2");
        assert!(!format!("{parameter:?}").contains("hunter2"));
        assert_eq!(parameter.recorded_value(), REDACTED);
    }

    #[test]
    fn summaries_stay_on_one_line() {
        assert_eq!(one_line(" a\nb\tc \r"), "a b c");
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(check_request_id(&new_request_id()).is_ok());
        assert!(check_request_id("../../etc").is_err());
        assert!(check_request_id("short").is_err());
    }
}
