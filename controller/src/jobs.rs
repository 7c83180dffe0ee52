//! Actions and their jobs, above the store: creating an action's signed
//! jobs for a set of hosts ([`create_action`], used by ad-hoc actions and
//! the scheduler), moving a rollout on and waking the agents concerned
//! ([`release_and_notify`]), and the sweep that wakes agents for jobs
//! queued elsewhere and expires jobs that will not start ([`run_sweep`]).

use std::fmt;
use std::sync::Weak;
use std::time::Duration;

use muster_schemas::job::{Job, JobKind};
use serde_json::Value;

use crate::server::hub::Hub;
use crate::signing::{SigningError, SigningKey};
use crate::store::{JobSource, NewAction, NewJob, Release, Store, StoreError};

/// How long a reboot or service job may run: as long as the agent lets
/// `systemctl` run for a service resource.
pub const TOOL_JOB_TIMEOUT_SECS: u64 = 15 * 60;

/// How often the sweep looks for jobs queued by someone else.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How many sweeps between two expiry passes.
const SWEEPS_PER_EXPIRY: u32 = 30;

/// What to run, where from and under which limits: everything about an
/// action but its hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRequest {
    /// The same job for every host.
    pub kind: JobKind,
    /// The user name, or `scheduler`.
    pub requested_by: String,
    /// The API request that asked for it, for the audit trail.
    pub request_id: Option<String>,
    /// One line for people: `run cleanup on group web`.
    pub summary: String,
    /// The targets as asked for (groups, hosts, selector), for people.
    pub targets: Value,
    /// The parameters as asked for, secret values already redacted: this
    /// is what the action record shows. The real values travel only in
    /// the signed jobs (`kind`).
    pub parameters: Value,
    pub source: JobSource,
    /// At most this many jobs in flight at once; all when `None`.
    pub max_parallel: Option<u32>,
    /// Stop starting jobs once this many failed; never when `None`.
    pub failure_threshold: Option<u32>,
    /// How long the jobs stay valid: agents do not start them later, and
    /// the controller expires them then. It must cover the whole rollout.
    pub ttl: Duration,
    /// The audit repo commit recording the action, when written first.
    pub audit_commit: Option<String>,
    /// For a scheduled run: makes each job's `schedule_key`
    /// `<script>|<slot>|<host id>`, so that a slot is scheduled once.
    pub schedule: Option<ScheduleSlot>,
}

/// The due time of a scheduled script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSlot {
    pub script: String,
    /// The slot's due time, unix seconds.
    pub slot: i64,
}

/// An action that was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedAction {
    pub action_id: String,
    /// `(host id, job id)` in rollout order.
    pub jobs: Vec<(String, String)>,
    /// What the first release did: the hosts whose agents were woken.
    pub release: Release,
}

/// Why an action could not be created.
#[derive(Debug)]
pub enum JobsError {
    /// No host to run on.
    NoHosts,
    /// The validity is zero or too long to represent.
    InvalidTtl,
    /// A job could not be signed (an id the trusted comment cannot carry).
    Signing(SigningError),
    /// The database refused or failed; a [`StoreError::Conflict`] means
    /// the schedule slot was created before.
    Store(StoreError),
    /// The system's random source failed.
    Random(String),
}

impl JobsError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            JobsError::NoHosts => "no_hosts",
            JobsError::InvalidTtl => "invalid_ttl",
            JobsError::Signing(err) => err.metric_label(),
            JobsError::Store(err) => err.metric_label(),
            JobsError::Random(_) => "random",
        }
    }
}

impl fmt::Display for JobsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobsError::NoHosts => {
                f.write_str("the action has no host to run on: check its targets")
            }
            JobsError::InvalidTtl => {
                f.write_str("the jobs' validity must be between one second and ten years")
            }
            JobsError::Signing(err) => write!(f, "{err}"),
            JobsError::Store(err) => write!(f, "{err}"),
            JobsError::Random(err) => write!(f, "no randomness for an id: {err}"),
        }
    }
}

impl std::error::Error for JobsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JobsError::Signing(err) => Some(err),
            JobsError::Store(err) => Some(err),
            _ => None,
        }
    }
}

impl From<StoreError> for JobsError {
    fn from(err: StoreError) -> Self {
        JobsError::Store(err)
    }
}

/// A new random id: 24 hex characters, like host ids.
pub fn new_id() -> Result<String, JobsError> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|err| JobsError::Random(err.to_string()))?;
    Ok(hex::encode(bytes))
}

/// How long a job of this kind may run.
pub fn run_timeout(kind: &JobKind) -> u64 {
    match kind {
        JobKind::Script(script) => script.timeout_secs,
        JobKind::Reboot | JobKind::Service(_) => TOOL_JOB_TIMEOUT_SECS,
    }
}

/// One host of an action, and when its job may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTarget {
    pub host_id: String,
    /// The job is not handed to the agent before this time (unix seconds);
    /// at once when `None`.
    pub not_before: Option<i64>,
}

/// Creates an action with one signed job per host in `host_ids` (in that
/// order, duplicates dropped), stores them in one transaction, releases
/// the first jobs under the rollout limits and wakes the agents of the
/// hosts that got one. The caller has authorized the action (and written
/// its audit commit) before; the hosts are ids of enrolled hosts.
///
/// Signing runs on the calling task: about 20 µs per job.
pub async fn create_action(
    store: &Store,
    key: &SigningKey,
    hub: &Hub,
    request: &ActionRequest,
    host_ids: &[String],
    now: i64,
) -> Result<CreatedAction, JobsError> {
    let targets: Vec<JobTarget> = host_ids
        .iter()
        .map(|host_id| JobTarget {
            host_id: host_id.clone(),
            not_before: None,
        })
        .collect();
    create_action_for(store, key, hub, request, &targets, now).await
}

/// [`create_action`] with a start time per host (the scheduler's splay and
/// held hosts). The rollout releases jobs in the order of `targets`: give
/// them by start time, so that jobs waiting for theirs do not hold the
/// room of `max_parallel` from jobs that could run.
pub async fn create_action_for(
    store: &Store,
    key: &SigningKey,
    hub: &Hub,
    request: &ActionRequest,
    targets: &[JobTarget],
    now: i64,
) -> Result<CreatedAction, JobsError> {
    let mut hosts: Vec<&JobTarget> = Vec::with_capacity(targets.len());
    for target in targets {
        if !hosts.iter().any(|host| host.host_id == target.host_id) {
            hosts.push(target);
        }
    }
    if hosts.is_empty() {
        return Err(JobsError::NoHosts);
    }
    let ttl = i64::try_from(request.ttl.as_secs())
        .ok()
        .filter(|ttl| (1..=10 * 365 * 86_400).contains(ttl))
        .ok_or(JobsError::InvalidTtl)?;
    let action_id = new_id()?;
    let expires_at = now.saturating_add(ttl);
    let timeout = run_timeout(&request.kind);
    let mut jobs = Vec::with_capacity(hosts.len());
    for target in &hosts {
        let host_id = &target.host_id;
        let job = Job {
            job_id: new_id()?,
            host_id: host_id.to_string(),
            issued_at: now,
            expires_at,
            action: action_id.clone(),
            kind: request.kind.clone(),
        };
        let signed = key.sign_job(&job).map_err(JobsError::Signing)?;
        jobs.push(NewJob {
            id: job.job_id,
            host_id: job.host_id,
            kind: request.kind.label().to_string(),
            payload: signed.job,
            signature: signed.signature,
            run_timeout: timeout,
            expires_at,
            schedule_key: request
                .schedule
                .as_ref()
                .map(|slot| format!("{}|{}|{host_id}", slot.script, slot.slot)),
            not_before: target.not_before,
        });
    }
    let action = NewAction {
        id: action_id.clone(),
        kind: request.kind.label().to_string(),
        requested_by: request.requested_by.clone(),
        request_id: request.request_id.clone(),
        summary: request.summary.clone(),
        targets: request.targets.clone(),
        parameters: request.parameters.clone(),
        source: request.source,
        max_parallel: request.max_parallel,
        failure_threshold: request.failure_threshold,
        created_at: now,
        audit_commit: request.audit_commit.clone(),
    };
    store.create_action(&action, &jobs).await?;
    let release = release_and_notify(store, hub, &action_id, now).await?;
    tracing::info!(
        action = %action_id,
        kind = request.kind.label(),
        requested_by = %request.requested_by,
        n_jobs = jobs.len(),
        n_queued = release.queued_hosts.len(),
        "action created"
    );
    Ok(CreatedAction {
        action_id,
        jobs: jobs.into_iter().map(|job| (job.host_id, job.id)).collect(),
        release,
    })
}

/// Applies the rollout rule to an action ([`Store::release`]), wakes the
/// agents of the hosts that got a job queued, and tells open dashboards.
/// Every change of an action's jobs (created, a result, cancelled,
/// expired) passes here.
pub async fn release_and_notify(
    store: &Store,
    hub: &Hub,
    action_id: &str,
    now: i64,
) -> Result<Release, StoreError> {
    let release = store.release(action_id, now).await?;
    hub.notify_jobs(release.queued_hosts.iter().map(String::as_str));
    hub.ui.notify(crate::server::hub::Topic::Jobs);
    Ok(release)
}

/// Expires jobs that will not start any more and moves their actions on.
pub async fn expire(store: &Store, hub: &Hub, now: i64) -> Result<(), StoreError> {
    for action_id in store.expire_jobs(now).await? {
        release_and_notify(store, hub, &action_id, now).await?;
    }
    Ok(())
}

/// Wakes the agents waiting for jobs whose hosts have one ready in the
/// database, however it got there (another replica, the CLI, a lease that
/// ran out).
pub async fn wake_waiting(store: &Store, hub: &Hub, now: i64) -> Result<(), StoreError> {
    let waiting = hub.waiting_for_jobs();
    if waiting.is_empty() {
        return Ok(());
    }
    let ready = store.hosts_with_ready_jobs(now).await?;
    hub.notify_jobs(
        ready
            .iter()
            .filter(|host| waiting.contains(host))
            .map(String::as_str),
    );
    Ok(())
}

/// The job sweep of one controller: every [`SWEEP_INTERVAL`], wakes
/// waiting agents whose jobs were queued elsewhere; every thirty sweeps,
/// expires jobs. One query per sweep whatever the number of agents; none
/// while no agent waits. Ends when the hub is closed or dropped.
pub async fn run_sweep(store: Store, hub: Weak<Hub>) {
    let mut n_sweeps: u32 = 0;
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        if hub.is_closed() {
            return;
        }
        let now = crate::server::now();
        if n_sweeps.is_multiple_of(SWEEPS_PER_EXPIRY)
            && let Err(err) = expire(&store, &hub, now).await
        {
            tracing::warn!(error = %err, "cannot expire jobs; trying again later");
        }
        n_sweeps = n_sweeps.wrapping_add(1);
        if let Err(err) = wake_waiting(&store, &hub, now).await {
            tracing::warn!(error = %err, "cannot look for queued jobs; trying again later");
        }
    }
}
