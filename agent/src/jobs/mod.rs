//! The job runner: long-polls the controller for the host's jobs, verifies
//! each with the pinned key, runs it once (the ledger), and reports how it
//! ended until the controller has the result.
//!
//! For each delivered job, in order:
//!
//! 1. **Verify** the signature, the trusted comment, the host id
//!    ([`verify_job`]). A job that fails is reported `refused` under the id
//!    it claims, once, and nothing else happens: it is not recorded, since
//!    anyone could have made it up.
//! 2. **The ledger** ([`ledger`]): a job the agent took on before is never
//!    run again; its result is sent again instead.
//! 3. **Expiry and plan**: an expired job, and one that cannot run here
//!    ([`execute::plan`]: `sandboxed`, a malformed name), is recorded with
//!    the result `refused` (or `failed`, when the host lacks a user) and
//!    reported.
//! 4. **Record, then run**: the ledger entry is written durably *before*
//!    the job runs, then the `started` notice goes out and the job runs
//!    ([`execute::run`]). Its result is written to the ledger and sent;
//!    results the controller has not accepted are sent again before every
//!    poll.
//!
//! Jobs run one at a time, on the blocking pool, while the bundle loop
//! goes on beside them on the agent's single-threaded runtime.

pub mod execute;
pub mod ledger;

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use muster_schemas::job::{Job, JobError, SignedJob, verify_job};
use muster_schemas::protocol::{JobResult, JobResultState, JobStarted};
use tokio::time::sleep;

use crate::client::{Client, Delivery, JobPoll, LONG_POLL_SECS, random_duration, unix_now};
use crate::resources::Context;

pub use execute::{NotRun, Plan};
pub use ledger::{Entry, Ledger, STOPPED_WHILE_RUNNING};

/// The scripts' directory in the ledger's.
const SCRIPTS_DIR: &str = "scripts";

/// How long a pending host waits between asks (plus up to as much again).
const PENDING_WAIT: Duration = Duration::from_secs(30);

/// How long to wait before asking a controller without a jobs endpoint
/// again.
const UNSUPPORTED_WAIT: Duration = Duration::from_secs(600);

/// The longest wait between retries after errors.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// How often a running agent forgets old ledger entries.
const PRUNE_INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// A job checked and recorded as started: ready to run.
#[derive(Debug)]
pub struct Ready {
    job: Job,
    plan: Plan,
    entry: Entry,
}

impl Ready {
    pub fn job(&self) -> &Job {
        &self.job
    }
}

/// What to do with a delivered job.
#[derive(Debug)]
pub enum Prepared {
    /// Run it: it is recorded as started.
    Run(Box<Ready>),
    /// Its result is in the ledger (now, or from before): send what is
    /// unreported.
    Known(JobResult),
    /// It failed verification: report this once, record nothing. `None`
    /// when it does not even claim an id.
    Unverified(Option<JobResult>, JobError),
    /// The ledger cannot be read or written: the job is not run, and this
    /// is reported once.
    LedgerFailed(JobResult),
}

/// The part of the runner that decides and runs, without the network.
#[derive(Debug)]
pub struct JobRunner {
    host_id: String,
    public_key: String,
    ledger: Ledger,
    ctx: Context,
    scripts_dir: PathBuf,
    boot_id: Option<String>,
}

fn outcome(job_id: &str, state: JobResultState, message: String, now: i64) -> JobResult {
    JobResult {
        job_id: job_id.to_string(),
        state,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        message: Some(message),
        started_at: now,
        finished_at: now,
    }
}

impl JobRunner {
    /// A runner for the host `host_id` that trusts `public_key`, keeping
    /// its ledger in `state_dir` and running jobs in `ctx` (a sandbox when
    /// it has a root). Scripts left behind by a crash are removed.
    pub fn new(
        host_id: &str,
        public_key: &str,
        state_dir: &Path,
        ctx: Context,
    ) -> io::Result<JobRunner> {
        let ledger = Ledger::open(state_dir)?;
        let scripts_dir = ledger.dir().join(SCRIPTS_DIR);
        match std::fs::remove_dir_all(&scripts_dir) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        Ok(JobRunner {
            host_id: host_id.to_string(),
            public_key: public_key.to_string(),
            ledger,
            ctx,
            scripts_dir,
            boot_id: ledger::boot_id(),
        })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Settles the jobs a previous run of the agent left started (see
    /// [`Ledger::recover`]) and forgets old entries. Call it once, before
    /// taking on jobs.
    pub fn recover(&self, now: i64) -> io::Result<Vec<String>> {
        let settled = self.ledger.recover(self.boot_id.as_deref(), now)?;
        for job_id in &settled {
            tracing::warn!(job = %job_id, "the agent stopped while this job ran; it is reported failed and not run again");
        }
        self.ledger.prune(now)?;
        Ok(settled)
    }

    /// Decides what to do with a delivered job (steps 1–3 of the module
    /// docs) and, when it is to run, records it as started.
    pub fn prepare(&self, signed: &SignedJob, now: i64) -> Prepared {
        // The expiry is checked after the ledger: a job that ran has a
        // result to send again, expired or not.
        let job = match verify_job(&self.public_key, signed, &self.host_id, i64::MIN) {
            Ok(job) => job,
            Err(err) => {
                let result = signed.claimed_job_id().map(|job_id| {
                    outcome(
                        &job_id,
                        JobResultState::Refused,
                        format!("job refused: {err}"),
                        now,
                    )
                });
                return Prepared::Unverified(result, err);
            }
        };
        let ledger_failed = |err: io::Error| {
            Prepared::LedgerFailed(outcome(
                &job.job_id,
                JobResultState::Failed,
                format!("not run: the agent's job ledger failed: {err}"),
                now,
            ))
        };
        match self.ledger.get(&job.job_id) {
            Err(err) => return ledger_failed(err),
            Ok(Some(entry)) => {
                let (entry, result) = match entry.result.clone() {
                    Some(result) => (entry, result),
                    // Started by an earlier run of the agent and not
                    // settled by `recover`: the same rule applies.
                    None => {
                        let result =
                            ledger::interrupted_result(&entry, self.boot_id.as_deref(), now);
                        (entry, result)
                    }
                };
                // Delivered again: the controller may not have the
                // result, so it is sent again.
                if let Err(err) = self.ledger.record_result(&entry, result.clone()) {
                    return ledger_failed(err);
                }
                tracing::info!(job = %job.job_id, "job delivered again: it ran before; sending its result again");
                return Prepared::Known(result);
            }
            Ok(None) => {}
        }
        let entry = Entry {
            job_id: job.job_id.clone(),
            kind: job.kind.label().to_string(),
            expires_at: job.expires_at,
            started_at: now,
            boot_id: self.boot_id.clone(),
            result: None,
            reported: false,
        };
        let not_run = if now >= job.expires_at {
            NotRun {
                state: JobResultState::Refused,
                message: format!(
                    "job refused: {}",
                    JobError::Expired {
                        expires_at: job.expires_at,
                        now
                    }
                ),
            }
        } else {
            match execute::plan(&job, &self.ctx) {
                Ok(plan) => {
                    // The commit point: once this is on disk, the job never
                    // runs again (crash window 2 in `ledger`).
                    if let Err(err) = self.ledger.put(&entry) {
                        return ledger_failed(err);
                    }
                    return Prepared::Run(Box::new(Ready { job, plan, entry }));
                }
                Err(not_run) => not_run,
            }
        };
        let result = outcome(&job.job_id, not_run.state, not_run.message, now);
        match self.ledger.record_result(&entry, result.clone()) {
            Ok(_) => Prepared::Known(result),
            Err(err) => ledger_failed(err),
        }
    }

    /// Runs a prepared job and records its result in the ledger.
    pub fn execute(&self, ready: Box<Ready>) -> JobResult {
        let Ready { job, plan, entry } = *ready;
        let result = execute::run(&job, &plan, &self.ctx, &self.scripts_dir, entry.started_at);
        if let Err(err) = self.ledger.record_result(&entry, result.clone()) {
            // The entry says started: after a restart the job is reported
            // failed, and never run again.
            tracing::error!(job = %job.job_id, error = %err, "cannot record a job's result in the ledger");
        }
        result
    }

    /// [`prepare`](Self::prepare) and, when it says so,
    /// [`execute`](Self::execute): the result to report, if any.
    pub fn process(&self, signed: &SignedJob, now: i64) -> Option<JobResult> {
        match self.prepare(signed, now) {
            Prepared::Run(ready) => Some(self.execute(ready)),
            Prepared::Known(result) | Prepared::LedgerFailed(result) => Some(result),
            Prepared::Unverified(result, _) => result,
        }
    }
}

/// Runs the job loop until the task is dropped (or, with `once`, after one
/// poll that does not wait and the jobs it brought).
pub async fn run_jobs(runner: Arc<JobRunner>, client: Client, once: bool) {
    let recovering = Arc::clone(&runner);
    match tokio::task::spawn_blocking(move || recovering.recover(unix_now())).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => tracing::error!(error = %err, "cannot read the job ledger"),
        Err(err) => tracing::error!(error = %err, "the job ledger check stopped"),
    }
    let mut jobs = JobLoop {
        runner,
        client,
        refusals_sent: HashSet::new(),
    };
    let mut attempt: u32 = 0;
    let mut next_prune = tokio::time::Instant::now() + PRUNE_INTERVAL;
    loop {
        if tokio::time::Instant::now() >= next_prune {
            next_prune += PRUNE_INTERVAL;
            let ledger = jobs.runner.ledger.clone();
            if let Ok(Err(err)) =
                tokio::task::spawn_blocking(move || ledger.prune(unix_now())).await
            {
                tracing::warn!(error = %err, "cannot forget old job ledger entries");
            }
        }
        jobs.flush().await;
        let wait = if once { 0 } else { LONG_POLL_SECS };
        let pause = match jobs.client.poll_jobs(wait).await {
            Ok(JobPoll::Jobs(delivered)) => {
                attempt = 0;
                for signed in delivered {
                    jobs.handle(signed).await;
                }
                continue;
            }
            Ok(JobPoll::NoJobs) => {
                attempt = 0;
                if once {
                    break;
                }
                continue;
            }
            Ok(JobPoll::Forbidden(_)) => PENDING_WAIT + random_duration(PENDING_WAIT),
            Ok(JobPoll::Unsupported) => {
                tracing::debug!("the controller has no jobs endpoint; asking again later");
                UNSUPPORTED_WAIT
            }
            Err(err) => {
                attempt = attempt.saturating_add(1);
                let ceiling = Duration::from_secs(1)
                    .saturating_mul(1u32 << attempt.min(16))
                    .min(BACKOFF_CAP);
                let pause = random_duration(ceiling);
                tracing::debug!(error = %err, "cannot poll for jobs; retrying");
                pause
            }
        };
        if once {
            break;
        }
        sleep(pause).await;
    }
    jobs.flush().await;
}

struct JobLoop {
    runner: Arc<JobRunner>,
    client: Client,
    /// Refusals of unverified jobs sent by this process, so that a job the
    /// controller keeps offering is reported once.
    refusals_sent: HashSet<(String, String)>,
}

impl JobLoop {
    async fn handle(&mut self, signed: SignedJob) {
        let runner = Arc::clone(&self.runner);
        let prepared =
            match tokio::task::spawn_blocking(move || runner.prepare(&signed, unix_now())).await {
                Ok(prepared) => prepared,
                Err(err) => {
                    tracing::error!(error = %err, "checking a job stopped");
                    return;
                }
            };
        match prepared {
            Prepared::Run(ready) => {
                let job_id = ready.job().job_id.clone();
                tracing::info!(job = %job_id, action = %ready.job().action, kind = ready.job().kind.label(), "running a job");
                let notice = JobStarted {
                    job_id: job_id.clone(),
                    started_at: ready.entry.started_at,
                };
                let client = self.client.clone();
                tokio::spawn(async move {
                    if let Err(err) = client.send_job_started(&notice).await {
                        tracing::debug!(error = %err, "cannot send a started notice");
                    }
                });
                let runner = Arc::clone(&self.runner);
                match tokio::task::spawn_blocking(move || runner.execute(ready)).await {
                    Ok(result) => tracing::info!(
                        job = %job_id,
                        state = result.state.as_str(),
                        exit_code = ?result.exit_code,
                        "job done"
                    ),
                    Err(err) => tracing::error!(job = %job_id, error = %err, "a job stopped"),
                }
                self.flush().await;
            }
            Prepared::Known(result) => {
                if result.state == JobResultState::Refused {
                    tracing::warn!(job = %result.job_id, reason = result.message.as_deref().unwrap_or_default(), "job refused");
                }
                self.flush().await;
            }
            Prepared::Unverified(result, err) => {
                tracing::error!(
                    job = result.as_ref().map_or("?", |r| r.job_id.as_str()),
                    check = err.metric_label(),
                    error = %err,
                    "job refused; it was not run"
                );
                if let Some(result) = result {
                    self.send_once(result).await;
                }
            }
            Prepared::LedgerFailed(result) => {
                tracing::error!(job = %result.job_id, reason = result.message.as_deref().unwrap_or_default(), "job not run");
                self.send_once(result).await;
            }
        }
    }

    /// Sends a result that is not in the ledger, once per process.
    async fn send_once(&mut self, result: JobResult) {
        let key = (
            result.job_id.clone(),
            result.message.clone().unwrap_or_default(),
        );
        if !self.refusals_sent.insert(key) {
            return;
        }
        if let Err(err) = self.client.send_job_result(&result).await {
            tracing::debug!(error = %err, "cannot report a refused job");
        }
    }

    /// Sends the results the controller does not have yet, oldest job id
    /// first, until one cannot be sent.
    async fn flush(&self) {
        let runner = Arc::clone(&self.runner);
        let unreported = match tokio::task::spawn_blocking(move || runner.ledger.unreported()).await
        {
            Ok(Ok(results)) => results,
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot read the job ledger");
                return;
            }
            Err(_) => return,
        };
        for result in unreported {
            match self.client.send_job_result(&result).await {
                Ok(Delivery::Accepted) => {}
                Ok(Delivery::Rejected(why)) => {
                    tracing::warn!(job = %result.job_id, reason = %why, "the controller refused a job result; it is not sent again");
                }
                Err(err) => {
                    tracing::debug!(error = %err, "job results stay in the ledger until the controller answers");
                    return;
                }
            }
            if let Err(err) = self.runner.ledger.mark_reported(&result.job_id) {
                tracing::error!(error = %err, "cannot record a job result as reported");
                return;
            }
        }
    }
}
