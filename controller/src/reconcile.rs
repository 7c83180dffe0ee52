//! The reconciler: follows the tracked branch and keeps every approved
//! host's bundle equal to what the deployed commit says.
//!
//! It is level-triggered: each run fetches (when due), tries the branch's
//! tip if it has not been tried yet, and then makes sure every approved
//! host holds a current, unexpired bundle. It never needs to know why it
//! ran — an interval, a webhook, an enrollment or an approval by the CLI
//! all lead to the same run. A commit is deployed all or nothing: if it
//! does not load, validate, pass the signature policy or compile for every
//! host, it is recorded as rejected with its diagnostics and the last good
//! commit stays in force. The access rules (RBAC) switch with the deployed
//! commit, in the step that records it, and never for a rejected one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_schemas::bundle::{Bundle, Desired};
use muster_schemas::model::{FleetModel, Resource};
use muster_schemas::protocol::HostState;
use muster_schemas::{Diagnostic, Severity};
use tokio::sync::Notify;

use crate::compile::{self, HostInput, SourceFiles};
use crate::rbac::{Access, AccessRules};
use crate::server::cache::Caches;
use crate::server::hub::{Hub, Topic};
use crate::server::now;
use crate::signing::SigningKey;
use crate::source::{CommitInfo, GitSource, SignatureCheck, SourceError};
use crate::store::{BundleRecord, CommitRecord, CommitState, HostRecord, Store, StoreError};

/// Wakes the reconciler: a webhook, an enrollment, an approval.
#[derive(Debug, Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    pub fn fire(&self) {
        self.0.notify_one();
    }

    async fn fired(&self) {
        self.0.notified().await;
    }
}

/// What a run asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    pub requeue_after: Duration,
}

/// Errors of a reconciler run; the next run tries again.
#[derive(Debug)]
pub enum ReconcileError {
    Source(SourceError),
    Store(StoreError),
    /// A blocking task panicked or was cancelled.
    Task(String),
    /// The deployed commit can no longer be loaded (the mirror lost it).
    Deployed(String),
}

impl ReconcileError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Source(err) => err.metric_label(),
            ReconcileError::Store(err) => err.metric_label(),
            ReconcileError::Task(_) => "task",
            ReconcileError::Deployed(_) => "deployed_commit",
        }
    }
}

impl fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReconcileError::Source(err) => write!(f, "{err}"),
            ReconcileError::Store(err) => write!(f, "{err}"),
            ReconcileError::Task(message) | ReconcileError::Deployed(message) => {
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for ReconcileError {}

impl From<SourceError> for ReconcileError {
    fn from(err: SourceError) -> Self {
        ReconcileError::Source(err)
    }
}

impl From<StoreError> for ReconcileError {
    fn from(err: StoreError) -> Self {
        ReconcileError::Store(err)
    }
}

/// Repo files that bundles inline, read once per commit so that compiling
/// (on several threads) does not touch Git.
#[derive(Debug, Default)]
pub struct SourceMap(HashMap<String, Vec<u8>>);

impl SourceFiles for SourceMap {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.0.get(path).cloned()
    }
}

/// The commit in force, with its model.
#[derive(Debug, Clone)]
struct Deployed {
    commit: CommitRecord,
    model: Arc<FleetModel>,
    sources: Arc<SourceMap>,
}

/// How often hosts are checked for missing or expiring bundles, and for
/// approvals made by the CLI in another process.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

pub struct Reconciler {
    store: Store,
    source: Arc<Mutex<GitSource>>,
    key: Arc<SigningKey>,
    hub: Arc<Hub>,
    caches: Arc<Caches>,
    fetch_interval: Duration,
    deployed: tokio::sync::Mutex<Option<Deployed>>,
    /// The access rules of the deployed commit, which request handlers
    /// read; replaced whenever `deployed` is.
    access: Access,
    last_fetch: Mutex<Option<tokio::time::Instant>>,
}

impl fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconciler")
            .field("fetch_interval", &self.fetch_interval)
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    pub fn new(
        store: Store,
        source: GitSource,
        key: Arc<SigningKey>,
        hub: Arc<Hub>,
        caches: Arc<Caches>,
        fetch_interval: Duration,
    ) -> Self {
        Reconciler {
            store,
            source: Arc::new(Mutex::new(source)),
            key,
            hub,
            caches,
            fetch_interval,
            deployed: tokio::sync::Mutex::new(None),
            access: Access::default(),
            last_fetch: Mutex::new(None),
        }
    }

    /// The Git mirror, shared: `GET /v1/plan` reads commits from it.
    pub fn source(&self) -> Arc<Mutex<GitSource>> {
        Arc::clone(&self.source)
    }

    /// Keeps the access rules of the deployed commit in `access`, the cell
    /// that request handlers read.
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Loads the commit in force from Git (after a restart), so that its
    /// access rules apply before the first request is served rather than
    /// after the first run. Without a deployed commit, there is nothing to
    /// load and the rules stay empty.
    pub async fn load_deployed(&self) -> Result<(), ReconcileError> {
        self.deployed_state().await.map(|_| ())
    }

    /// Runs until `shutdown` resolves: a run, then a wait for the trigger or
    /// the requeue time.
    pub async fn run(
        self: Arc<Self>,
        trigger: Trigger,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut force_fetch = true;
        loop {
            let action = match self.reconcile(force_fetch).await {
                Ok(action) => action,
                Err(err) => self.error_policy(&err),
            };
            force_fetch = tokio::select! {
                () = tokio::time::sleep(action.requeue_after) => false,
                () = trigger.fired() => true,
                () = &mut shutdown => return,
            };
        }
    }

    fn error_policy(&self, err: &ReconcileError) -> Action {
        tracing::warn!(error = %err, kind = err.metric_label(), "reconcile failed; retrying");
        Action {
            requeue_after: Duration::from_secs(5),
        }
    }

    /// One run. `force_fetch` fetches even if the interval has not passed.
    pub async fn reconcile(&self, force_fetch: bool) -> Result<Action, ReconcileError> {
        let due = {
            let last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
            force_fetch || last.is_none_or(|at| at.elapsed() >= self.fetch_interval)
        };
        if due {
            let head = self.blocking(|source| source.fetch()).await??;
            *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(tokio::time::Instant::now());
            if let Some(head) = head
                && self.store.commit(&head.id).await?.is_none()
            {
                self.try_commit(head).await?;
            }
        }
        self.converge_hosts().await?;
        Ok(Action {
            requeue_after: SWEEP_INTERVAL,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&GitSource) -> T + Send + 'static,
    ) -> Result<T, ReconcileError> {
        let source = Arc::clone(&self.source);
        tokio::task::spawn_blocking(move || {
            let source = source.lock().unwrap_or_else(|p| p.into_inner());
            work(&source)
        })
        .await
        .map_err(|err| ReconcileError::Task(err.to_string()))
    }

    /// Loads a commit's model and the files its bundles inline.
    async fn load(&self, commit: &str) -> Result<Loaded, ReconcileError> {
        let commit = commit.to_string();
        self.blocking(move |source| load_commit(source, &commit))
            .await?
            .map_err(ReconcileError::from)
    }

    async fn try_commit(&self, head: CommitInfo) -> Result<(), ReconcileError> {
        tracing::info!(commit = %head.id, summary = %head.summary, "trying commit");
        let (loaded, diagnostics) = self.load(&head.id).await?;
        let Some((model, sources)) = loaded else {
            return self.reject(&head, diagnostics).await;
        };
        // The signers allowed by the commit in force decide, so that a
        // commit cannot make itself trusted; the very first deploy has no
        // predecessor and is judged by its own settings.
        let previous = self.deployed_state().await?;
        let policy = previous
            .as_ref()
            .map_or(&model.fleet.commit_signatures, |d| {
                &d.model.fleet.commit_signatures
            })
            .clone();
        if policy.required {
            let id = head.id.clone();
            let allowed = policy.allowed_signers.clone();
            let check = self
                .blocking(move |source| source.verify_signature(&id, &allowed))
                .await??;
            let problem = match check {
                SignatureCheck::Verified { signer } => {
                    tracing::info!(commit = %head.id, signer = %signer, "commit signature verified");
                    None
                }
                SignatureCheck::Unsigned => {
                    Some("commit is not signed, and the fleet requires signed commits".to_string())
                }
                SignatureCheck::UnknownKey => Some(
                    "commit is signed by a key that is not in `commit_signatures.allowed_signers`"
                        .to_string(),
                ),
                SignatureCheck::Invalid(why) => {
                    Some(format!("commit signature does not verify: {why}"))
                }
            };
            if let Some(message) = problem {
                let origin = model
                    .origins
                    .iter()
                    .find(|((kind, _), _)| *kind == muster_schemas::Kind::Fleet);
                let (file, line, column) = origin.map_or((String::new(), 1, 1), |(_, o)| {
                    (o.file.clone(), o.location.line, o.location.column)
                });
                let diagnostic = Diagnostic {
                    severity: Severity::Error,
                    file,
                    line,
                    column,
                    path: "commit_signatures".into(),
                    message,
                    hint: Some(
                        "sign the commit with an allowed SSH key (git config gpg.format ssh)"
                            .into(),
                    ),
                };
                return self.reject(&head, vec![diagnostic]).await;
            }
        }
        let hosts = self.approved_hosts().await?;
        let model = Arc::new(model);
        let sources = Arc::new(sources);
        let access = AccessRules::compile(&head.id, Arc::clone(&model));
        let compiled = self.compile(&model, &sources, hosts.clone()).await?;
        let desired = match compiled {
            Ok(desired) => desired,
            Err(diagnostics) => return self.reject(&head, diagnostics).await,
        };
        let now = now();
        // The deploy time, in whole seconds, is what makes a commit the one
        // in force (`Store::deployed_commit`), at start and for other
        // replicas: a commit deployed within the second of the previous one
        // is stamped a second later, so that the newest deploy always wins.
        let deployed_at = previous
            .as_ref()
            .and_then(|d| d.commit.deployed_at)
            .map_or(now, |last| now.max(last.saturating_add(1)));
        let mut commit = CommitRecord {
            id: head.id.clone(),
            author: head.author.clone(),
            summary: head.summary.clone(),
            committed_at: head.time,
            state: CommitState::Deployed,
            diagnostics: serde_json::to_value(&diagnostics).unwrap_or_default(),
            n_changed: 0,
            recorded_at: now,
            deployed_at: Some(deployed_at),
        };
        let changed = self
            .publish(&mut commit, &model, &hosts, desired, true)
            .await?;
        tracing::info!(commit = %head.id, hosts_changed = changed, "commit deployed");
        // The commit is recorded as deployed: its access rules are the ones
        // in force from now on. A rejected commit never gets here.
        let mut deployed = self.deployed.lock().await;
        self.access.replace(access);
        *deployed = Some(Deployed {
            commit,
            model,
            sources,
        });
        Ok(())
    }

    async fn reject(
        &self,
        head: &CommitInfo,
        diagnostics: Vec<Diagnostic>,
    ) -> Result<(), ReconcileError> {
        tracing::warn!(commit = %head.id, problems = diagnostics.len(), "commit rejected; the last good commit stays in force");
        let now = now();
        let record = CommitRecord {
            id: head.id.clone(),
            author: head.author.clone(),
            summary: head.summary.clone(),
            committed_at: head.time,
            state: CommitState::Rejected,
            diagnostics: serde_json::to_value(&diagnostics).unwrap_or_default(),
            n_changed: 0,
            recorded_at: now,
            deployed_at: None,
        };
        self.store.record_rejected(&record).await?;
        self.hub.ui.notify(Topic::Commits);
        Ok(())
    }

    async fn approved_hosts(&self) -> Result<Vec<HostRecord>, ReconcileError> {
        Ok(self
            .store
            .hosts()
            .await?
            .into_iter()
            .filter(|host| host.state == HostState::Approved)
            .collect())
    }

    async fn compile(
        &self,
        model: &Arc<FleetModel>,
        sources: &Arc<SourceMap>,
        hosts: Vec<HostRecord>,
    ) -> Result<Result<BTreeMap<String, Desired>, Vec<Diagnostic>>, ReconcileError> {
        let (model, sources) = (Arc::clone(model), Arc::clone(sources));
        tokio::task::spawn_blocking(move || {
            let inputs: Vec<HostInput> = hosts.iter().map(host_input).collect();
            compile::compile_all(&model, sources.as_ref(), &inputs)
        })
        .await
        .map_err(|err| ReconcileError::Task(err.to_string()))
    }

    /// Signs and stores the bundles whose content changed (or that are
    /// missing or near expiry). Returns how many hosts got a new bundle.
    async fn publish(
        &self,
        commit: &mut CommitRecord,
        model: &FleetModel,
        hosts: &[HostRecord],
        desired: BTreeMap<String, Desired>,
        record_commit: bool,
    ) -> Result<usize, ReconcileError> {
        let heads = self.store.bundle_heads().await?;
        let now = now();
        let expiry = i64::try_from(model.fleet.bundles.expiry.as_secs()).unwrap_or(i64::MAX);
        let names: HashMap<String, String> = hosts
            .iter()
            .map(|h| (h.id.clone(), h.name.clone()))
            .collect();
        let key = Arc::clone(&self.key);
        let commit_id = commit.id.clone();
        // Hashing and signing thousands of bundles is CPU work: it runs off
        // the async workers, signing on every core.
        let records = tokio::task::spawn_blocking(move || {
            let mut bundles = Vec::new();
            for (host_id, desired) in desired {
                let content_hash = desired.content_hash();
                let head = heads.get(&host_id);
                // Unchanged and far from expiry: the host keeps its bundle.
                if head.is_some_and(|h| {
                    h.content_hash == content_hash && h.expires_at - now > expiry / 2
                }) {
                    continue;
                }
                bundles.push(Bundle {
                    host_name: names.get(&host_id).cloned().unwrap_or_default(),
                    host_id,
                    generation: head.map_or(1, |h| h.generation + 1),
                    commit: commit_id.clone(),
                    issued_at: now,
                    expires_at: now.saturating_add(expiry),
                    content_hash,
                    desired,
                });
            }
            let signed = key.sign_all(&bundles);
            bundles
                .into_iter()
                .zip(signed)
                .map(|(bundle, signed)| BundleRecord {
                    host_id: bundle.host_id,
                    generation: bundle.generation,
                    commit_id: bundle.commit,
                    content_hash: bundle.content_hash,
                    bundle: signed.bundle,
                    signature: signed.signature,
                    issued_at: bundle.issued_at,
                    expires_at: bundle.expires_at,
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|err| ReconcileError::Task(err.to_string()))?;
        if record_commit {
            commit.n_changed = i64::try_from(records.len()).unwrap_or(i64::MAX);
        }
        if records.is_empty() && !record_commit {
            return Ok(0);
        }
        self.store.publish(commit, &records).await?;
        // Cache first, then wake: woken long polls answer from the cache.
        self.caches.put_bundles(&records);
        self.hub
            .publish(records.iter().map(|r| (r.host_id.as_str(), r.generation)));
        self.hub.ui.notify(Topic::Commits);
        self.hub.ui.notify(Topic::Hosts);
        Ok(records.len())
    }

    /// The commit in force and its model, rebuilt from Git after a restart.
    async fn deployed_state(&self) -> Result<Option<Deployed>, ReconcileError> {
        let Some(commit) = self.store.deployed_commit().await? else {
            return Ok(None);
        };
        let mut cached = self.deployed.lock().await;
        if let Some(deployed) = cached.as_ref()
            && deployed.commit.id == commit.id
        {
            return Ok(Some(deployed.clone()));
        }
        let (loaded, _) = self.load(&commit.id).await?;
        let (model, sources) = loaded.ok_or_else(|| {
            ReconcileError::Deployed(format!("deployed commit {} no longer validates", commit.id))
        })?;
        let model = Arc::new(model);
        // At start, or when another replica deployed a commit: the rules
        // follow the commit in force, whoever deployed it.
        self.access
            .replace(AccessRules::compile(&commit.id, Arc::clone(&model)));
        let deployed = Deployed {
            commit,
            model,
            sources: Arc::new(sources),
        };
        *cached = Some(deployed.clone());
        Ok(Some(deployed))
    }

    /// Gives approved hosts without a bundle (just approved, or enrolled
    /// after the deploy) and hosts whose bundle nears expiry a fresh one
    /// from the commit in force.
    async fn converge_hosts(&self) -> Result<(), ReconcileError> {
        // The sweep also refreshes the request path's caches, so that
        // approvals, rejections and removals made by the CLI, and bundles
        // published by another replica, reach them within a sweep.
        let keys = self.store.host_keys().await?;
        let heads = self.store.bundle_heads().await?;
        self.caches.replace_hosts(&keys);
        self.caches.retain_current_bundles(&heads);
        let Some(deployed) = self.deployed_state().await? else {
            return Ok(());
        };
        let now = now();
        let expiry =
            i64::try_from(deployed.model.fleet.bundles.expiry.as_secs()).unwrap_or(i64::MAX);
        let due_ids: HashSet<&str> = keys
            .iter()
            .filter(|host| host.state == HostState::Approved)
            .filter(|host| {
                heads
                    .get(&host.id)
                    .is_none_or(|h| h.expires_at - now <= expiry / 2)
            })
            .map(|host| host.id.as_str())
            .collect();
        if due_ids.is_empty() {
            return Ok(());
        }
        // Full records (labels, facts) only when some host needs a bundle.
        let due: Vec<HostRecord> = self
            .store
            .hosts()
            .await?
            .into_iter()
            .filter(|host| host.state == HostState::Approved && due_ids.contains(host.id.as_str()))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let desired = match self
            .compile(&deployed.model, &deployed.sources, due.clone())
            .await?
        {
            Ok(desired) => desired,
            Err(diagnostics) => {
                for diagnostic in &diagnostics {
                    tracing::warn!(problem = %diagnostic, "cannot compile the deployed commit for a new host");
                }
                return Ok(());
            }
        };
        let mut commit = deployed.commit.clone();
        let n = self
            .publish(&mut commit, &deployed.model, &due, desired, false)
            .await?;
        if n > 0 {
            tracing::info!(hosts = n, commit = %commit.id, "bundles issued to new or expiring hosts");
        }
        Ok(())
    }
}

/// A loaded commit: its model, when it validates, and the files its bundles inline.
pub type Loaded = (Option<(FleetModel, SourceMap)>, Vec<Diagnostic>);

/// Loads a commit's model and the files its bundles inline: what the
/// reconciler deploys and what `muster plan` compiles, so that both agree.
pub fn load_commit(source: &GitSource, commit: &str) -> Result<Loaded, SourceError> {
    let validation = source.snapshot(commit)?.validate();
    let Some(mut model) = validation.model else {
        return Ok((None, validation.diagnostics));
    };
    let mut sources = SourceMap::default();
    for path in referenced_files(&model) {
        if let Some(bytes) = source.read_file(commit, &path)? {
            sources.0.insert(path, bytes);
        }
    }
    // Scripts run from the deployed model (ad-hoc runs, the scheduler):
    // their `source` files are read at the same commit and inlined as their
    // bodies. Validation found each file; one that is not UTF-8 leaves the
    // script without a body, which a run then refuses.
    for script in model.scripts.values_mut() {
        if script.body.is_none()
            && let Some(path) = &script.source
            && let Some(bytes) = source.read_file(commit, path)?
        {
            script.body = String::from_utf8(bytes).ok();
        }
    }
    Ok((Some((model, sources)), validation.diagnostics))
}

/// The compiler's view of a host.
pub fn host_input(host: &HostRecord) -> HostInput {
    HostInput {
        id: host.id.clone(),
        name: host.name.clone(),
        labels: host.labels.clone(),
        facts: host.facts.clone(),
    }
}

/// Repo files that a model inlines: file sources.
fn referenced_files(model: &FleetModel) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for policy in model.policies.values() {
        for resource in &policy.resources {
            if let Resource::File(file) = resource
                && let Some(source) = &file.source
            {
                files.insert(source.clone());
            }
        }
    }
    files
}
