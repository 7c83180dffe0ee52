//! Actions and their jobs: creation, the rollout (`release`), delivery to
//! agents with leases, results, cancellation and expiry.
//!
//! **A job's life.** Jobs are created `pending`, all of an action's at once
//! and already signed. [`Store::release`] queues them under the action's
//! rollout limits. An agent's poll claims its `queued` jobs
//! ([`Store::jobs_for_host`]), a job with a `not_before` time (scheduled
//! runs: splay, maintenance windows) only from that time on: they become
//! `delivered` with a lease; the
//! agent's `started` notice makes them `running` with a lease as long as
//! the job's timeout; its result makes them `succeeded`, `failed`,
//! `timed_out` or `refused`. A delivered or running job whose lease ran out
//! is delivered again (the agent's ledger makes sure it runs once). Jobs
//! that were never started are `expired` after their signed expiry, and
//! pending or queued ones can be `cancelled`.
//!
//! **The rollout rule** ([`Store::release`]). A job is *in flight* when
//! queued, delivered or running, and a *failure* when failed, timed out or
//! refused (an expired or cancelled job is neither: it did not run). While
//! the action is running, its failures are below its failure threshold
//! (none means never) and fewer than `max_parallel` jobs (none means all)
//! are in flight, the next pending jobs in creation order are queued. Once
//! the failures reach the threshold the action is `stopped`: its pending
//! jobs are `cancelled` and the jobs in flight finish. An action with no
//! pending and no job in flight is `completed`. The rule is applied after
//! every event that can change it: creation, a result, a cancellation, an
//! expiry.
//!
//! **Several writers.** Every read-decide-write runs in a transaction whose
//! first statement writes the row it decides about (`UPDATE … SET state =
//! state`): on PostgreSQL that locks the row until commit, so two replicas
//! (or two results) take turns; on SQLite it takes the database's write
//! lock, which serializes writers anyway. A transaction that ends early is
//! rolled back explicitly: a dropped one would keep its SQLite write lock
//! until the pool hands its connection out again. Claiming jobs for an
//! agent is one `UPDATE … RETURNING` whose subquery, on PostgreSQL, adds
//! `FOR UPDATE SKIP LOCKED`, so two replicas answering the same host never
//! hand out the same job twice.

use std::collections::BTreeMap;

use muster_schemas::job::SignedJob;
use muster_schemas::protocol::{JobResult, JobResultState, auth::MAX_SKEW_SECS};
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Result, Store, StoreError, parse_json};

/// How long a delivered job may go without a `started` notice before it
/// is delivered again; a running job's lease is its timeout plus this.
pub const DELIVERY_LEASE_SECS: i64 = 120;

/// How long after its expiry a delivered or running job is given up as
/// `expired`: an agent whose clock is behind may have started it in time.
pub const EXPIRY_GRACE_SECS: i64 = MAX_SKEW_SECS;

/// Most jobs handed to one agent in one answer; the rest wait for its next
/// poll.
pub const MAX_JOBS_PER_POLL: i64 = 50;

/// Job rows per INSERT statement (14 parameters each).
const INSERT_BATCH: usize = 200;

/// Where a job came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobSource {
    /// A `Script` with a `schedule`.
    Schedule,
    /// An operator, through the API or the CLI.
    AdHoc,
    /// The repair of a failing check.
    Remediation,
}

impl JobSource {
    pub fn as_str(self) -> &'static str {
        match self {
            JobSource::Schedule => "schedule",
            JobSource::AdHoc => "ad_hoc",
            JobSource::Remediation => "remediation",
        }
    }

    pub fn parse(text: &str) -> Option<JobSource> {
        match text {
            "schedule" => Some(JobSource::Schedule),
            "ad_hoc" => Some(JobSource::AdHoc),
            "remediation" => Some(JobSource::Remediation),
            _ => None,
        }
    }
}

/// Where a job is in its life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    Pending,
    Queued,
    Delivered,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Refused,
    Cancelled,
    Expired,
}

impl JobState {
    pub const ALL: [JobState; 10] = [
        JobState::Pending,
        JobState::Queued,
        JobState::Delivered,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::TimedOut,
        JobState::Refused,
        JobState::Cancelled,
        JobState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Queued => "queued",
            JobState::Delivered => "delivered",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::TimedOut => "timed_out",
            JobState::Refused => "refused",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    /// Whether the job will not change any more (short of a late result).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            JobState::Pending | JobState::Queued | JobState::Delivered | JobState::Running
        )
    }

    /// Whether the job counts towards its action's failure threshold.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            JobState::Failed | JobState::TimedOut | JobState::Refused
        )
    }

    /// Whether a host reported how the job ended.
    pub fn has_result(self) -> bool {
        matches!(self, JobState::Succeeded) || self.is_failure()
    }

    /// The state a result puts a job in.
    pub fn of_result(state: JobResultState) -> JobState {
        match state {
            JobResultState::Succeeded => JobState::Succeeded,
            JobResultState::Failed => JobState::Failed,
            JobResultState::TimedOut => JobState::TimedOut,
            JobResultState::Refused => JobState::Refused,
        }
    }
}

/// Where an action's rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionState {
    /// Jobs are pending or in flight.
    Running,
    /// Every job ended.
    Completed,
    /// Failures reached the threshold: no more jobs start.
    Stopped,
    /// An operator cancelled it.
    Cancelled,
}

impl ActionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Running => "running",
            ActionState::Completed => "completed",
            ActionState::Stopped => "stopped",
            ActionState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<ActionState> {
        match text {
            "running" => Some(ActionState::Running),
            "completed" => Some(ActionState::Completed),
            "stopped" => Some(ActionState::Stopped),
            "cancelled" => Some(ActionState::Cancelled),
            _ => None,
        }
    }
}

/// An action to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction {
    pub id: String,
    /// `script`, `reboot` or `service`.
    pub kind: String,
    pub requested_by: String,
    pub request_id: Option<String>,
    pub summary: String,
    /// The targets as asked for (groups, hosts, selector), for people.
    pub targets: Value,
    /// Parameters as asked for, with secret values already redacted.
    pub parameters: Value,
    pub source: JobSource,
    pub max_parallel: Option<u32>,
    pub failure_threshold: Option<u32>,
    pub created_at: i64,
    pub audit_commit: Option<String>,
}

/// A job to create, signed.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: String,
    pub host_id: String,
    /// `script`, `reboot` or `service`.
    pub kind: String,
    /// The canonical job JSON, as signed.
    pub payload: String,
    pub signature: String,
    /// Seconds the job may run (its lease once started is this plus
    /// [`DELIVERY_LEASE_SECS`]).
    pub run_timeout: u64,
    /// As signed.
    pub expires_at: i64,
    /// `script|slot|host` for a scheduled job: unique, so that a slot is
    /// scheduled once however many controllers try.
    pub schedule_key: Option<String>,
    /// The job is not handed to its agent before this time (a scheduled
    /// job's slot plus splay, or the end of a window holding it); at once
    /// when `None`. It may be queued earlier and then counts as in flight.
    pub not_before: Option<i64>,
}

/// A stored action.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    pub id: String,
    pub kind: String,
    pub requested_by: String,
    pub request_id: Option<String>,
    pub summary: String,
    pub targets: Value,
    pub parameters: Value,
    pub source: JobSource,
    pub max_parallel: Option<u32>,
    pub failure_threshold: Option<u32>,
    pub state: ActionState,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub audit_commit: Option<String>,
}

/// A stored job. `payload` holds the parameters as the host gets them,
/// secret values included: show [`ActionRecord::parameters`] to people.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub host_id: String,
    pub action_id: String,
    pub position: i64,
    pub kind: String,
    pub payload: String,
    pub signature: String,
    pub source: JobSource,
    pub requested_by: String,
    pub state: JobState,
    pub attempts: i64,
    pub lease_until: Option<i64>,
    pub run_timeout: i64,
    pub expires_at: i64,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub message: Option<String>,
    pub schedule_key: Option<String>,
    pub not_before: Option<i64>,
}

/// What a [`Store::release`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The action's state afterwards (`None` when there is no such
    /// action).
    pub state: Option<ActionState>,
    /// The hosts that got a job queued now: their agents are to be woken.
    pub queued_hosts: Vec<String>,
    /// Pending jobs cancelled now because the threshold was reached.
    pub n_cancelled: u64,
}

/// What a `started` notice came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// The job is now running.
    Started,
    /// It was already running or has ended: nothing changed.
    Unchanged,
    /// No such job.
    NotFound,
    /// The job belongs to another host.
    OtherHost,
}

/// What a result came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultOutcome {
    /// Stored; the action's rollout may move on.
    Recorded { action_id: String },
    /// The same result was stored before: nothing changed.
    Duplicate,
    /// The job has another result already, or was never delivered.
    Conflict(String),
    /// No such job.
    NotFound,
    /// The job belongs to another host.
    OtherHost,
}

/// What a cancellation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled; the action's rollout may move on.
    Cancelled { action_id: String },
    /// The job was delivered already (or has ended): it cannot be called
    /// back.
    TooLate(JobState),
    /// No such job.
    NotFound,
}

/// Which jobs [`Store::jobs`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub host_id: Option<String>,
    pub action_id: Option<String>,
    pub state: Option<JobState>,
    /// At most this many, newest first; 100 when 0.
    pub limit: i64,
}

/// Jobs that an agent's poll may be given now: queued, not expired and
/// past their `not_before`, or delivered or running with their lease run
/// out. `$N` is the time.
fn ready_condition(now: &str) -> String {
    format!(
        "((state = 'queued' AND expires_at > {now} AND (not_before IS NULL OR not_before <= {now})) OR (state IN ('delivered', 'running') AND lease_until <= {now}))"
    )
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn optional_u32(value: Option<i64>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

impl Store {
    /// Creates an action and its jobs, all `pending`, in one transaction:
    /// either all exist or none. A job's position is its index in `jobs`,
    /// the order the rollout releases them in. A `schedule_key` that
    /// exists already fails the whole creation with
    /// [`StoreError::Conflict`]: that slot was scheduled before.
    pub async fn create_action(&self, action: &NewAction, jobs: &[NewJob]) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO actions (id, kind, requested_by, request_id, summary, targets, parameters, source,
                max_parallel, failure_threshold, state, created_at, audit_commit)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'running', $11, $12)",
        )
        .bind(&action.id)
        .bind(&action.kind)
        .bind(&action.requested_by)
        .bind(&action.request_id)
        .bind(&action.summary)
        .bind(action.targets.to_string())
        .bind(action.parameters.to_string())
        .bind(action.source.as_str())
        .bind(action.max_parallel.map(i64::from))
        .bind(action.failure_threshold.map(i64::from))
        .bind(action.created_at)
        .bind(&action.audit_commit)
        .execute(&mut *tx)
        .await?;
        for (n_chunk, chunk) in jobs.chunks(INSERT_BATCH).enumerate() {
            let mut sql = String::from(
                "INSERT INTO jobs (id, host_id, action_id, position, kind, payload, signature, source,
                    requested_by, state, attempts, run_timeout, expires_at, created_at, schedule_key,
                    not_before) VALUES ",
            );
            for row in 0..chunk.len() {
                let n = row * 14;
                if row > 0 {
                    sql.push_str(", ");
                }
                let p = |i: usize| format!("${}", n + i);
                sql.push_str(&format!(
                    "({}, {}, {}, {}, {}, {}, {}, {}, {}, 'pending', 0, {}, {}, {}, {}, {})",
                    p(1),
                    p(2),
                    p(3),
                    p(4),
                    p(5),
                    p(6),
                    p(7),
                    p(8),
                    p(9),
                    p(10),
                    p(11),
                    p(12),
                    p(13),
                    p(14)
                ));
            }
            let mut query = sqlx::query(&sql);
            for (row, job) in chunk.iter().enumerate() {
                let position = i64::try_from(n_chunk * INSERT_BATCH + row).unwrap_or(i64::MAX);
                query = query
                    .bind(&job.id)
                    .bind(&job.host_id)
                    .bind(&action.id)
                    .bind(position)
                    .bind(&job.kind)
                    .bind(&job.payload)
                    .bind(&job.signature)
                    .bind(action.source.as_str())
                    .bind(&action.requested_by)
                    .bind(to_i64(job.run_timeout))
                    .bind(job.expires_at)
                    .bind(action.created_at)
                    .bind(&job.schedule_key)
                    .bind(job.not_before);
            }
            if let Err(err) = query.execute(&mut *tx).await {
                tx.rollback().await?;
                let unique = err
                    .as_database_error()
                    .is_some_and(|db| db.is_unique_violation());
                if unique {
                    return Err(StoreError::Conflict(format!(
                        "action {} repeats a job id or schedule key that exists already: it was created before",
                        action.id
                    )));
                }
                return Err(err.into());
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies the rollout rule (module docs) to one action: queues the
    /// next pending jobs, or stops the action at its failure threshold, or
    /// marks it completed. Idempotent: calling it again changes nothing
    /// until a job moves on.
    pub async fn release(&self, action_id: &str, now: i64) -> Result<Release> {
        let mut tx = self.begin().await?;
        // The lock: see "Several writers" in the module docs.
        let locked = sqlx::query("UPDATE actions SET state = state WHERE id = $1")
            .bind(action_id)
            .execute(&mut *tx)
            .await?;
        let mut release = Release {
            state: None,
            queued_hosts: Vec::new(),
            n_cancelled: 0,
        };
        if locked.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(release);
        }
        let row =
            sqlx::query("SELECT state, max_parallel, failure_threshold FROM actions WHERE id = $1")
                .bind(action_id)
                .fetch_one(&mut *tx)
                .await?;
        let state = parse_action_state(&row.try_get::<String, _>("state")?)?;
        let max_parallel = optional_u32(row.try_get("max_parallel")?);
        let failure_threshold = optional_u32(row.try_get("failure_threshold")?);
        let counts = count_by_state(&mut tx, action_id).await?;
        let count = |states: &[JobState]| -> i64 {
            states
                .iter()
                .map(|s| counts.get(s).copied().unwrap_or(0))
                .sum()
        };
        let n_pending = count(&[JobState::Pending]);
        let n_in_flight = count(&[JobState::Queued, JobState::Delivered, JobState::Running]);
        let n_failures = count(&[JobState::Failed, JobState::TimedOut, JobState::Refused]);

        let mut new_state = state;
        if state == ActionState::Running {
            let threshold_reached =
                failure_threshold.is_some_and(|threshold| n_failures >= i64::from(threshold));
            if threshold_reached {
                let cancelled = sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', finished_at = $2
                     WHERE action_id = $1 AND state = 'pending'",
                )
                .bind(action_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                release.n_cancelled = cancelled.rows_affected();
                new_state = ActionState::Stopped;
            } else {
                let room = match max_parallel {
                    Some(max) => (i64::from(max) - n_in_flight).max(0),
                    None => n_pending,
                }
                .min(n_pending);
                if room > 0 {
                    let rows = sqlx::query(
                        "UPDATE jobs SET state = 'queued'
                         WHERE id IN (SELECT id FROM jobs WHERE action_id = $1 AND state = 'pending'
                                      ORDER BY position LIMIT $2)
                           AND state = 'pending'
                         RETURNING host_id",
                    )
                    .bind(action_id)
                    .bind(room)
                    .fetch_all(&mut *tx)
                    .await?;
                    for row in &rows {
                        release.queued_hosts.push(row.try_get("host_id")?);
                    }
                }
                let queued = i64::try_from(release.queued_hosts.len()).unwrap_or(0);
                if n_pending - queued == 0 && n_in_flight + queued == 0 {
                    new_state = ActionState::Completed;
                }
            }
        }
        if new_state != state {
            sqlx::query("UPDATE actions SET state = $2, finished_at = $3 WHERE id = $1")
                .bind(action_id)
                .bind(new_state.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        release.queued_hosts.sort();
        release.queued_hosts.dedup();
        release.state = Some(new_state);
        Ok(release)
    }

    /// The jobs to give a host's agent now, oldest first: its queued jobs,
    /// and those delivered or running whose lease ran out (delivered
    /// again). Each is marked delivered (a running one stays running) with
    /// a fresh lease, and its attempts counted.
    pub async fn jobs_for_host(&self, host_id: &str, now: i64) -> Result<Vec<SignedJob>> {
        // A read first: most polls find nothing, and a read takes no write
        // lock (SQLite) and writes no row version (PostgreSQL).
        let any = sqlx::query(&format!(
            "SELECT 1 AS found FROM jobs WHERE host_id = $1 AND {} LIMIT 1",
            ready_condition("$2")
        ))
        .bind(host_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let skip_locked = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let ready = ready_condition("$2");
        let rows = sqlx::query(&format!(
            "UPDATE jobs SET
                state = CASE WHEN state = 'queued' THEN 'delivered' ELSE state END,
                delivered_at = $2,
                lease_until = $2 + $3,
                attempts = attempts + 1
             WHERE id IN (SELECT id FROM jobs WHERE host_id = $1 AND {ready}
                          ORDER BY created_at, position LIMIT $4{skip_locked})
               AND {ready}
             RETURNING id, payload, signature, created_at, position"
        ))
        .bind(host_id)
        .bind(now)
        .bind(DELIVERY_LEASE_SECS)
        .bind(MAX_JOBS_PER_POLL)
        .fetch_all(&self.pool)
        .await?;
        let mut jobs = rows
            .iter()
            .map(|row| {
                Ok((
                    (
                        row.try_get::<i64, _>("created_at")?,
                        row.try_get::<i64, _>("position")?,
                    ),
                    SignedJob {
                        job: row.try_get("payload")?,
                        signature: row.try_get("signature")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        jobs.sort_by_key(|(order, _)| *order);
        Ok(jobs.into_iter().map(|(_, job)| job).collect())
    }

    /// Hosts that have a job to be given now (see
    /// [`jobs_for_host`](Self::jobs_for_host)): the sweep wakes their
    /// agents' long polls.
    pub async fn hosts_with_ready_jobs(&self, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT host_id FROM jobs WHERE {}",
            ready_condition("$1")
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get("host_id")?)).collect()
    }

    /// Records a host's `started` notice: a queued or delivered job of
    /// this host becomes running, leased for its timeout.
    pub async fn record_started(
        &self,
        host_id: &str,
        job_id: &str,
        started_at: i64,
        now: i64,
    ) -> Result<StartOutcome> {
        let started = sqlx::query(
            "UPDATE jobs SET state = 'running', started_at = $3, lease_until = $4 + run_timeout + $5
             WHERE id = $1 AND host_id = $2 AND state IN ('queued', 'delivered')",
        )
        .bind(job_id)
        .bind(host_id)
        .bind(started_at)
        .bind(now)
        .bind(DELIVERY_LEASE_SECS)
        .execute(&self.pool)
        .await?;
        if started.rows_affected() == 1 {
            return Ok(StartOutcome::Started);
        }
        let owner = sqlx::query("SELECT host_id FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match owner {
            None => StartOutcome::NotFound,
            Some(row) if row.try_get::<String, _>("host_id")? != host_id => StartOutcome::OtherHost,
            Some(_) => StartOutcome::Unchanged,
        })
    }

    /// Records how a job of `host_id` ended. Idempotent: the same result
    /// again is a [`ResultOutcome::Duplicate`]; a different one for a job
    /// that has a result is a conflict, and so is one for a job that was
    /// never delivered (pending or cancelled). A result for a job that
    /// expired after its delivery is stored all the same: the host says it
    /// ran.
    /// Output is bounded first ([`JobResult::bounded`]).
    pub async fn record_result(&self, host_id: &str, result: &JobResult) -> Result<ResultOutcome> {
        let result = result.clone().bounded();
        let mut tx = self.begin().await?;
        // The lock: see "Several writers" in the module docs.
        let locked = sqlx::query("UPDATE jobs SET attempts = attempts WHERE id = $1")
            .bind(&result.job_id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(ResultOutcome::NotFound);
        }
        let row = sqlx::query(
            "SELECT host_id, action_id, state, exit_code, stdout, stderr, message FROM jobs WHERE id = $1",
        )
        .bind(&result.job_id)
        .fetch_one(&mut *tx)
        .await?;
        if row.try_get::<String, _>("host_id")? != host_id {
            tx.rollback().await?;
            return Ok(ResultOutcome::OtherHost);
        }
        let action_id: String = row.try_get("action_id")?;
        let state = parse_job_state(&row.try_get::<String, _>("state")?)?;
        let new_state = JobState::of_result(result.state);
        let exit_code = result.exit_code.map(i64::from);
        if state.has_result() {
            let same = state == new_state
                && row.try_get::<Option<i64>, _>("exit_code")? == exit_code
                && row
                    .try_get::<Option<String>, _>("stdout")?
                    .unwrap_or_default()
                    == result.stdout
                && row
                    .try_get::<Option<String>, _>("stderr")?
                    .unwrap_or_default()
                    == result.stderr
                && row.try_get::<Option<String>, _>("message")? == result.message;
            tx.rollback().await?;
            return Ok(if same {
                ResultOutcome::Duplicate
            } else {
                ResultOutcome::Conflict(format!(
                    "job {} has another result already ({})",
                    result.job_id,
                    state.as_str()
                ))
            });
        }
        // Pending and cancelled jobs were never handed to any agent (a
        // delivered job cannot be cancelled): no host can have run them.
        if matches!(state, JobState::Pending | JobState::Cancelled) {
            tx.rollback().await?;
            return Ok(ResultOutcome::Conflict(format!(
                "job {} was never delivered: it has no result to report",
                result.job_id
            )));
        }
        sqlx::query(
            "UPDATE jobs SET state = $2, exit_code = $3, stdout = $4, stderr = $5, message = $6,
                started_at = COALESCE(started_at, $7), finished_at = $8, lease_until = NULL
             WHERE id = $1",
        )
        .bind(&result.job_id)
        .bind(new_state.as_str())
        .bind(exit_code)
        .bind(&result.stdout)
        .bind(&result.stderr)
        .bind(&result.message)
        .bind(result.started_at)
        .bind(result.finished_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ResultOutcome::Recorded { action_id })
    }

    /// Cancels a job that no agent has been given yet (pending or queued).
    /// A delivered job cannot be called back: the agent may be running it.
    pub async fn cancel_job(&self, job_id: &str, now: i64) -> Result<CancelOutcome> {
        let cancelled = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $2
             WHERE id = $1 AND state IN ('pending', 'queued')
             RETURNING action_id",
        )
        .bind(job_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = cancelled {
            return Ok(CancelOutcome::Cancelled {
                action_id: row.try_get("action_id")?,
            });
        }
        Ok(match self.job(job_id).await? {
            None => CancelOutcome::NotFound,
            Some(job) => CancelOutcome::TooLate(job.state),
        })
    }

    /// Cancels an action: its pending and queued jobs are cancelled, the
    /// jobs in flight finish. Returns how many jobs were cancelled, or
    /// `None` when there is no such action.
    pub async fn cancel_action(&self, action_id: &str, now: i64) -> Result<Option<u64>> {
        let mut tx = self.begin().await?;
        let locked = sqlx::query(
            "UPDATE actions SET state = 'cancelled', finished_at = $2
             WHERE id = $1 AND state = 'running'",
        )
        .bind(action_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if locked.rows_affected() == 0 {
            let exists = sqlx::query("SELECT 1 AS found FROM actions WHERE id = $1")
                .bind(action_id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        let cancelled = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $2
             WHERE action_id = $1 AND state IN ('pending', 'queued')",
        )
        .bind(action_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(cancelled.rows_affected()))
    }

    /// Expires jobs that will not start any more: pending and queued ones
    /// past their expiry, and delivered or running ones whose lease ran
    /// out more than [`EXPIRY_GRACE_SECS`] after it. Returns the ids of the
    /// actions they belong to, for [`release`](Self::release).
    pub async fn expire_jobs(&self, now: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'expired', finished_at = $1, lease_until = NULL
             WHERE (state IN ('pending', 'queued') AND expires_at <= $1)
                OR (state IN ('delivered', 'running') AND lease_until <= $1 AND expires_at + $2 <= $1)
             RETURNING action_id",
        )
        .bind(now)
        .bind(EXPIRY_GRACE_SECS)
        .fetch_all(&self.pool)
        .await?;
        let mut actions = rows
            .iter()
            .map(|row| Ok(row.try_get("action_id")?))
            .collect::<Result<Vec<String>>>()?;
        actions.sort();
        actions.dedup();
        Ok(actions)
    }

    /// Records the audit commit of an action.
    pub async fn set_action_audit_commit(&self, action_id: &str, commit: &str) -> Result<bool> {
        let updated = sqlx::query("UPDATE actions SET audit_commit = $2 WHERE id = $1")
            .bind(action_id)
            .bind(commit)
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| job_from_row(&row)).transpose()
    }

    /// Jobs matching `filter`, newest first (an action's in rollout order).
    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        for (column, value) in [
            ("host_id", filter.host_id.clone()),
            ("action_id", filter.action_id.clone()),
            ("state", filter.state.map(|s| s.as_str().to_string())),
        ] {
            if let Some(value) = value {
                values.push(value);
                conditions.push(format!("{column} = ${}", values.len()));
            }
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT * FROM jobs {where_clause} ORDER BY created_at DESC, action_id, position LIMIT ${}",
            values.len() + 1
        );
        let mut query = sqlx::query(&sql);
        for value in &values {
            query = query.bind(value);
        }
        let limit = if filter.limit > 0 { filter.limit } else { 100 };
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    pub async fn action(&self, id: &str) -> Result<Option<ActionRecord>> {
        let row = sqlx::query("SELECT * FROM actions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| action_from_row(&row)).transpose()
    }

    /// The newest actions first.
    pub async fn actions(&self, limit: i64) -> Result<Vec<ActionRecord>> {
        let rows = sqlx::query("SELECT * FROM actions ORDER BY created_at DESC, id LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(action_from_row).collect()
    }

    /// How many of an action's jobs are in each state (states with none
    /// are left out).
    pub async fn action_progress(&self, action_id: &str) -> Result<BTreeMap<JobState, i64>> {
        let mut connection = self.pool.acquire().await?;
        count_by_state(&mut connection, action_id).await
    }
}

async fn count_by_state(
    connection: &mut sqlx::AnyConnection,
    action_id: &str,
) -> Result<BTreeMap<JobState, i64>> {
    let rows =
        sqlx::query("SELECT state, COUNT(*) AS n FROM jobs WHERE action_id = $1 GROUP BY state")
            .bind(action_id)
            .fetch_all(&mut *connection)
            .await?;
    rows.iter()
        .map(|row| {
            Ok((
                parse_job_state(&row.try_get::<String, _>("state")?)?,
                row.try_get::<i64, _>("n")?,
            ))
        })
        .collect()
}

fn parse_job_state(text: &str) -> Result<JobState> {
    JobState::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown job state `{text}`")))
}

fn parse_action_state(text: &str) -> Result<ActionState> {
    ActionState::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown action state `{text}`")))
}

fn parse_source(text: &str) -> Result<JobSource> {
    JobSource::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown job source `{text}`")))
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord> {
    Ok(JobRecord {
        id: row.try_get("id")?,
        host_id: row.try_get("host_id")?,
        action_id: row.try_get("action_id")?,
        position: row.try_get("position")?,
        kind: row.try_get("kind")?,
        payload: row.try_get("payload")?,
        signature: row.try_get("signature")?,
        source: parse_source(&row.try_get::<String, _>("source")?)?,
        requested_by: row.try_get("requested_by")?,
        state: parse_job_state(&row.try_get::<String, _>("state")?)?,
        attempts: row.try_get("attempts")?,
        lease_until: row.try_get("lease_until")?,
        run_timeout: row.try_get("run_timeout")?,
        expires_at: row.try_get("expires_at")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        exit_code: row.try_get("exit_code")?,
        stdout: row.try_get("stdout")?,
        stderr: row.try_get("stderr")?,
        message: row.try_get("message")?,
        schedule_key: row.try_get("schedule_key")?,
        not_before: row.try_get("not_before")?,
    })
}

fn action_from_row(row: &AnyRow) -> Result<ActionRecord> {
    Ok(ActionRecord {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        requested_by: row.try_get("requested_by")?,
        request_id: row.try_get("request_id")?,
        summary: row.try_get("summary")?,
        targets: parse_json(&row.try_get::<String, _>("targets")?, "action targets")?,
        parameters: parse_json(
            &row.try_get::<String, _>("parameters")?,
            "action parameters",
        )?,
        source: parse_source(&row.try_get::<String, _>("source")?)?,
        max_parallel: optional_u32(row.try_get("max_parallel")?),
        failure_threshold: optional_u32(row.try_get("failure_threshold")?),
        state: parse_action_state(&row.try_get::<String, _>("state")?)?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        audit_commit: row.try_get("audit_commit")?,
    })
}
