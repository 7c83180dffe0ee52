//! The scheduler: every `Script` with a `schedule` in the deployed commit
//! becomes one job per target host per due time (*slot*), exactly once.
//!
//! **Exactly once.** A slot's jobs carry the schedule key
//! `<script>|<slot>|<host id>`, unique in the store: creating a slot that
//! exists fails as a whole with a conflict, which means "already
//! scheduled". That is the guarantee, across restarts and replicas. On top
//! of it, one replica schedules at a time: on PostgreSQL the one that holds
//! a session advisory lock ([`LEADER_LOCK`]) on a connection of its own for
//! as long as it leads (the others try again every tick, and take over
//! within a tick or two once the leader's connection ends); on SQLite one
//! controller process is assumed, as for everything else on SQLite.
//!
//! **Due times.** Slots are computed in the script's time zone from its
//! crontab (`muster_schemas::cron`). Across DST changes the `cron` crate
//! decides: a local time that does not exist (02:30 on the night clocks go
//! forward in Europe/Berlin) is no slot that day; a local time that occurs
//! twice (02:30 on the night clocks go back) is one slot, at its first
//! occurrence.
//!
//! **Catch-up.** Each script has a watermark in the store: the last slot
//! dealt with, or the time the scheduler first saw the script (a new
//! schedule starts with its next slot, never one from before its deploy).
//! Each tick runs the *latest* slot after the watermark that is due, and
//! moves the watermark to it: after downtime, the slots missed are not run
//! as a backlog, only the latest of them, once, and only if it is at most
//! [`CATCH_UP_HORIZON`] old; an older one is skipped and the script runs at
//! its next slot.
//!
//! **Splay and windows.** Each host's job becomes deliverable at the slot
//! plus a deterministic offset in `[0, splay)` (a hash of script, slot and
//! host). When a `Window` with `hold_rollouts` covers the host at that
//! time, the job is created all the same, held: deliverable only when the
//! window (and any window following on from it) closes. Nothing is skipped
//! silently. Jobs are released in the order they may start, under the
//! script's `rollout` (or the `Fleet` defaults): `max_parallel` and the
//! failure threshold ([`Store::release`]).
//!
//! **Audit.** Each slot is one commit in the audit repository, authored
//! by `scheduler`, written before its jobs are created: a slot whose
//! commit cannot be written does not run (it is tried again next tick).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::TimeZone as _;
use muster_schemas::cron::CronSchedule;
use muster_schemas::job::JobKind;
use muster_schemas::model::{FleetModel, RolloutSpec, Targets, WindowSpec};
use muster_schemas::protocol::HostState;
use muster_schemas::types::TimeZone;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::actions;
use crate::audit::{self, AuditError, AuditLog, Who};
use crate::compile::{HostInput, targets_match};
use crate::jobs::{ActionRequest, JobTarget, JobsError, ScheduleSlot, create_action_for};
use crate::rbac::Access;
use crate::server::hub::Hub;
use crate::signing::SigningKey;
use crate::store::{Backend, JobSource, ScheduleSpec, Store, StoreError};

/// The oldest a missed slot may be and still run after downtime.
pub const CATCH_UP_HORIZON: i64 = 24 * 3600;

/// How often the scheduler looks at the clock (and a replica that does not
/// lead tries to).
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);

/// The PostgreSQL advisory lock whose holder schedules (migrations use
/// 7346261).
pub const LEADER_LOCK: i64 = 7_346_262;

/// The user scheduled runs are recorded as.
pub const SCHEDULER_USER: &str = "scheduler";

/// Windows following on from each other that a hold looks through.
const MAX_CHAINED_WINDOWS: usize = 64;

/// Where the scheduler reads the time: the system clock, or a test's.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Unix seconds.
    fn now(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        crate::server::now()
    }
}

/// A clock that moves only when told: for tests, which drive the
/// scheduler through slots without waiting for them.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now))
    }

    pub fn set(&self, now: i64) {
        self.0.store(now, Ordering::SeqCst);
    }

    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One scheduled script of the deployed commit, ready to run.
#[derive(Debug, Clone)]
pub struct ScheduledScript {
    pub name: String,
    pub schedule: CronSchedule,
    pub timezone: TimeZone,
    /// Seconds.
    pub splay: i64,
    pub targets: Targets,
    /// The job every host gets: the script with its parameter defaults.
    pub kind: JobKind,
    pub timeout_secs: u64,
    /// The parameters for the audit record (secret ones marked) and for
    /// the action record (secret ones redacted).
    pub audit_parameters: Vec<audit::Parameter>,
    pub parameters: serde_json::Value,
    /// The script's own rollout limits; the `Fleet` defaults when `None`.
    pub rollout: Option<RolloutSpec>,
}

/// The scheduled scripts of one commit, and the model their targets and
/// windows refer to.
#[derive(Debug, Clone, Default)]
pub struct ScheduledScripts {
    commit: Option<String>,
    model: Arc<FleetModel>,
    scripts: Vec<ScheduledScript>,
}

impl ScheduledScripts {
    /// The scheduled scripts of the deployed model at `commit` (script
    /// bodies inlined by the reconciler). Validation makes sure each has
    /// targets and a default for every required parameter; a script that
    /// cannot run all the same (a `source` file that is not UTF-8) is left
    /// out, logged.
    pub fn compile(commit: Option<&str>, model: Arc<FleetModel>) -> ScheduledScripts {
        let mut scripts = Vec::new();
        for script in model.scripts.values() {
            let (Some(schedule), Some(targets)) = (&script.schedule, &script.targets) else {
                continue;
            };
            let job = actions::script_parameters(script, &BTreeMap::new()).and_then(|checked| {
                actions::script_job(script, checked.values.clone()).map(|job| (checked, job))
            });
            let (checked, job) = match job {
                Ok(job) => job,
                Err(problem) => {
                    tracing::warn!(script = %script.name, commit = commit.unwrap_or("-"), problem = %problem, "scheduled script cannot run; it is not scheduled");
                    continue;
                }
            };
            scripts.push(ScheduledScript {
                name: script.name.clone(),
                schedule: schedule.clone(),
                timezone: script.timezone,
                splay: i64::try_from(script.splay.as_secs()).unwrap_or(i64::MAX),
                targets: targets.clone(),
                timeout_secs: job.timeout_secs,
                kind: JobKind::Script(job),
                audit_parameters: checked.audit,
                parameters: checked.redacted,
                rollout: script.rollout.clone(),
            });
        }
        ScheduledScripts {
            commit: commit.map(str::to_string),
            model,
            scripts,
        }
    }

    /// The commit these come from; `None` before the first deploy.
    pub fn commit(&self) -> Option<&str> {
        self.commit.as_deref()
    }

    pub fn scripts(&self) -> &[ScheduledScript] {
        &self.scripts
    }

    pub fn model(&self) -> &FleetModel {
        &self.model
    }

    /// The rows the store keeps for these scripts.
    pub fn specs(&self) -> Vec<ScheduleSpec> {
        self.scripts
            .iter()
            .map(|script| ScheduleSpec {
                script: script.name.clone(),
                schedule: script.schedule.as_str().to_string(),
                timezone: script.timezone.to_string(),
                splay: script.splay,
            })
            .collect()
    }
}

/// The latest slot of `schedule` (in `timezone`) after `watermark` that is
/// due at `now` and at most [`CATCH_UP_HORIZON`] old; `None` when there is
/// none. Older slots are never run: only the latest missed one is.
pub fn due_slot(
    schedule: &CronSchedule,
    timezone: TimeZone,
    watermark: i64,
    now: i64,
) -> Option<i64> {
    let from = watermark.max(now.saturating_sub(CATCH_UP_HORIZON));
    if from >= now {
        return None;
    }
    let start = timezone.tz().timestamp_opt(from, 0).single()?;
    schedule
        .upcoming(&start)
        .map(|slot| slot.timestamp())
        .take_while(|slot| *slot <= now)
        .last()
}

/// The first slot after `slot`.
pub fn next_slot(schedule: &CronSchedule, timezone: TimeZone, slot: i64) -> Option<i64> {
    let start = timezone.tz().timestamp_opt(slot, 0).single()?;
    schedule.next_after(&start).map(|next| next.timestamp())
}

/// A host's splay offset for a slot: deterministic, in `[0, splay)` (0
/// without splay), spread by a hash of script, slot and host.
pub fn splay_offset(script: &str, slot: i64, host_id: &str, splay: i64) -> i64 {
    if splay <= 0 {
        return 0;
    }
    let digest = Sha256::digest(format!("{script}|{slot}|{host_id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let splay = u64::try_from(splay).unwrap_or(u64::MAX);
    i64::try_from(u64::from_be_bytes(first) % splay).unwrap_or(0)
}

/// When a job due at `at` may start on `host`: `at`, or, when windows
/// that hold rollouts cover the host then, the time they close (windows
/// that open before the last one closes extend the hold).
pub fn hold_until(model: &FleetModel, host: &HostInput, at: i64) -> i64 {
    let holding: Vec<&WindowSpec> = model
        .windows
        .values()
        .filter(|window| window.hold_rollouts && targets_match(model, &window.targets, host))
        .collect();
    let mut until = at;
    for _ in 0..MAX_CHAINED_WINDOWS {
        let later = holding
            .iter()
            .filter_map(|window| window_end(window, until))
            .max()
            .filter(|end| *end > until);
        match later {
            Some(end) => until = end,
            None => break,
        }
    }
    until
}

/// The end of the latest opening of `window` that is open at `at`
/// (opened in `(at - duration, at]`).
pub fn window_end(window: &WindowSpec, at: i64) -> Option<i64> {
    let duration = i64::try_from(window.duration.as_secs()).ok()?;
    if duration == 0 {
        return None;
    }
    let start = window
        .timezone
        .tz()
        .timestamp_opt(at.saturating_sub(duration), 0)
        .single()?;
    window
        .schedule
        .upcoming(&start)
        .map(|open| open.timestamp())
        .take_while(|open| *open <= at)
        .last()
        .map(|open| open.saturating_add(duration))
}

/// The audit request id of a slot: the same on every try and replica, so
/// that a slot recorded before a crash is not recorded twice.
pub fn slot_request_id(script: &str, slot: i64) -> String {
    let digest = Sha256::digest(script.as_bytes());
    format!("sched-{slot}-{}", hex::encode(&digest[..8]))
}

/// Why a tick could not finish; the next tick tries again.
#[derive(Debug)]
pub enum SchedulerError {
    Store(StoreError),
    Jobs(JobsError),
    /// The slot's audit commit could not be written: it does not run.
    Audit(AuditError),
}

impl SchedulerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SchedulerError::Store(err) => err.metric_label(),
            SchedulerError::Jobs(err) => err.metric_label(),
            SchedulerError::Audit(err) => err.metric_label(),
        }
    }
}

impl fmt::Display for SchedulerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedulerError::Store(err) => write!(f, "{err}"),
            SchedulerError::Jobs(err) => write!(f, "{err}"),
            SchedulerError::Audit(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for SchedulerError {}

impl From<StoreError> for SchedulerError {
    fn from(err: StoreError) -> Self {
        SchedulerError::Store(err)
    }
}

/// What became of a due slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// Jobs were created: the action, and how many hosts are held by a
    /// window.
    Created {
        action_id: String,
        n_jobs: usize,
        n_held: usize,
    },
    /// Someone created the slot before (another replica, or this one
    /// before a restart).
    AlreadyScheduled,
    /// No approved host is targeted.
    NoHosts,
}

/// A due slot and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRun {
    pub script: String,
    pub slot: i64,
    pub outcome: SlotOutcome,
}

/// The scheduler of one controller.
pub struct Scheduler {
    store: Store,
    key: Arc<SigningKey>,
    hub: Arc<Hub>,
    audit: AuditLog,
    /// The deployed commit's model, as the reconciler keeps it for RBAC:
    /// schedules switch with the deployed commit, atomically, as access
    /// does.
    access: Access,
    clock: Arc<dyn Clock>,
    /// The scheduled scripts of the commit last seen in `access`.
    compiled: Mutex<Arc<ScheduledScripts>>,
    /// The commit whose scripts the store's rows were last made to say.
    synced: Mutex<Option<String>>,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    pub fn new(
        store: Store,
        key: Arc<SigningKey>,
        hub: Arc<Hub>,
        audit: AuditLog,
        access: Access,
        clock: Arc<dyn Clock>,
    ) -> Scheduler {
        Scheduler {
            store,
            key,
            hub,
            audit,
            access,
            clock,
            compiled: Mutex::default(),
            synced: Mutex::new(None),
        }
    }

    /// The scheduled scripts of the deployed commit, compiled once per
    /// commit.
    pub fn scheduled(&self) -> Arc<ScheduledScripts> {
        let rules = self.access.current();
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if compiled.commit() != rules.commit() {
            *compiled = Arc::new(ScheduledScripts::compile(
                rules.commit(),
                Arc::clone(rules.model()),
            ));
        }
        Arc::clone(&compiled)
    }

    /// One pass: brings the store's rows to the deployed commit, then
    /// schedules every script's due slot. Call it only while leading.
    pub async fn tick(&self) -> Result<Vec<SlotRun>, SchedulerError> {
        let scripts = self.scheduled();
        let Some(commit) = scripts.commit() else {
            return Ok(Vec::new());
        };
        let now = self.clock.now();
        let synced = self
            .synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if synced.as_deref() != Some(commit) {
            self.store
                .sync_schedules(commit, &scripts.specs(), now)
                .await?;
            *self.synced.lock().unwrap_or_else(|p| p.into_inner()) = Some(commit.to_string());
        }
        let rows = self.store.schedules().await?;
        let mut runs = Vec::new();
        let mut hosts: Option<Vec<HostInput>> = None;
        for script in scripts.scripts() {
            let Some(row) = rows.iter().find(|row| row.spec.script == script.name) else {
                continue;
            };
            let Some(slot) = due_slot(&script.schedule, script.timezone, row.watermark, now) else {
                continue;
            };
            let hosts = match &hosts {
                Some(hosts) => hosts,
                None => hosts.insert(self.approved_hosts().await?),
            };
            let outcome = self
                .schedule_slot(scripts.model(), script, slot, hosts, now)
                .await?;
            let ran = match &outcome {
                SlotOutcome::Created { action_id, .. } => Some(action_id.clone()),
                SlotOutcome::AlreadyScheduled => {
                    self.store.scheduled_action(&script.name, slot).await?
                }
                SlotOutcome::NoHosts => None,
            };
            self.store
                .advance_schedule(
                    &script.name,
                    slot,
                    ran.as_deref().map(|action| (slot, action)),
                    now,
                )
                .await?;
            runs.push(SlotRun {
                script: script.name.clone(),
                slot,
                outcome,
            });
        }
        Ok(runs)
    }

    async fn approved_hosts(&self) -> Result<Vec<HostInput>, StoreError> {
        Ok(self
            .store
            .hosts()
            .await?
            .iter()
            .filter(|host| host.state == HostState::Approved)
            .map(crate::reconcile::host_input)
            .collect())
    }

    /// Audits and creates one slot of one script.
    async fn schedule_slot(
        &self,
        model: &FleetModel,
        script: &ScheduledScript,
        slot: i64,
        hosts: &[HostInput],
        now: i64,
    ) -> Result<SlotOutcome, SchedulerError> {
        // Asked first, so that a slot another replica created (and this
        // one's audit repo never saw) is not recorded here as well.
        if self
            .store
            .scheduled_action(&script.name, slot)
            .await?
            .is_some()
        {
            return Ok(SlotOutcome::AlreadyScheduled);
        }
        let mut targets: Vec<(JobTarget, &str, bool)> = hosts
            .iter()
            .filter(|host| targets_match(model, &script.targets, host))
            .map(|host| {
                let due =
                    slot.saturating_add(splay_offset(&script.name, slot, &host.id, script.splay));
                let not_before = hold_until(model, host, due);
                (
                    JobTarget {
                        host_id: host.id.clone(),
                        not_before: Some(not_before),
                    },
                    host.name.as_str(),
                    not_before > due,
                )
            })
            .collect();
        if targets.is_empty() {
            tracing::info!(script = %script.name, slot, "scheduled script targets no approved host");
            return Ok(SlotOutcome::NoHosts);
        }
        // Released in the order they may start.
        targets.sort_by(|(a, _, _), (b, _, _)| {
            (a.not_before, &a.host_id).cmp(&(b.not_before, &b.host_id))
        });
        let n_held = targets.iter().filter(|(_, _, held)| *held).count();
        let n_hosts = targets.len();
        let (max_parallel, failure_threshold) =
            actions::rollout(model, script.rollout.as_ref(), n_hosts);
        // Valid from now until the last held or splayed job may start,
        // plus the rollout's run time.
        let latest_start = targets
            .iter()
            .filter_map(|(target, _, _)| target.not_before)
            .max()
            .unwrap_or(slot);
        let ttl = Duration::from_secs(u64::try_from(latest_start.saturating_sub(now)).unwrap_or(0))
            + actions::job_ttl(script.timeout_secs, n_hosts, max_parallel);

        let request_id = slot_request_id(&script.name, slot);
        let local = script
            .timezone
            .tz()
            .timestamp_opt(slot, 0)
            .single()
            .map_or_else(|| slot.to_string(), |t| t.to_rfc3339());
        let summary = if n_held == 0 {
            format!(
                "scheduled run of {} for {local} on {n_hosts} hosts",
                script.name
            )
        } else {
            format!(
                "scheduled run of {} for {local} on {n_hosts} hosts, {n_held} held by maintenance windows",
                script.name
            )
        };
        // People read the targets by name; the rollout goes by start time.
        let mut host_names: Vec<String> = targets
            .iter()
            .map(|(_, name, _)| name.to_string())
            .collect();
        host_names.sort();
        let audited = self
            .audit
            .record(audit::Action {
                request_id: request_id.clone(),
                who: Who {
                    user: SCHEDULER_USER.into(),
                    email: None,
                    via: "controller".into(),
                    token: None,
                    break_glass: false,
                },
                action: "scripts.run".into(),
                targets: host_names,
                summary: summary.clone(),
                parameters: script.audit_parameters.clone(),
                source: None,
                time: slot,
            })
            .await;
        let audit_commit = match audited {
            Ok(committed) => Some(committed.commit_id),
            // Recorded by an earlier try whose jobs were not created.
            Err(AuditError::Duplicate { .. }) => None,
            Err(err) => return Err(SchedulerError::Audit(err)),
        };
        let request = ActionRequest {
            kind: script.kind.clone(),
            requested_by: SCHEDULER_USER.into(),
            request_id: Some(request_id),
            summary,
            targets: serde_json::to_value(&script.targets).unwrap_or_else(|_| json!({})),
            parameters: script.parameters.clone(),
            source: JobSource::Schedule,
            max_parallel,
            failure_threshold,
            ttl,
            audit_commit,
            schedule: Some(ScheduleSlot {
                script: script.name.clone(),
                slot,
            }),
        };
        let job_targets: Vec<JobTarget> =
            targets.into_iter().map(|(target, _, _)| target).collect();
        match create_action_for(
            &self.store,
            &self.key,
            &self.hub,
            &request,
            &job_targets,
            now,
        )
        .await
        {
            Ok(created) => {
                tracing::info!(script = %script.name, slot, action = %created.action_id, n_jobs = n_hosts, n_held, "scheduled slot created");
                Ok(SlotOutcome::Created {
                    action_id: created.action_id,
                    n_jobs: n_hosts,
                    n_held,
                })
            }
            Err(JobsError::Store(StoreError::Conflict(_))) => Ok(SlotOutcome::AlreadyScheduled),
            Err(err) => Err(SchedulerError::Jobs(err)),
        }
    }

    /// Runs until `shutdown` resolves: leads when it can and ticks every
    /// [`TICK_INTERVAL`]. Leading ends with the loop (the lock's
    /// connection is closed).
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut leader = Leadership::new(self.store.clone());
        loop {
            if leader.lead().await
                && let Err(err) = self.tick().await
            {
                tracing::warn!(error = %err, kind = err.metric_label(), "scheduling failed; trying again");
            }
            tokio::select! {
                () = tokio::time::sleep(TICK_INTERVAL) => {}
                () = &mut shutdown => break,
            }
        }
        leader.resign().await;
    }
}

/// Whether this replica schedules: always on SQLite; on PostgreSQL while
/// it holds [`LEADER_LOCK`] on a connection of its own.
struct Leadership {
    store: Store,
    connection: Option<sqlx::AnyConnection>,
    leading: bool,
}

impl Leadership {
    fn new(store: Store) -> Leadership {
        Leadership {
            store,
            connection: None,
            leading: false,
        }
    }

    /// Whether this replica leads now: checks the lock's connection, or
    /// tries to take the lock.
    async fn lead(&mut self) -> bool {
        if self.store.backend() == Backend::Sqlite {
            return true;
        }
        match self.check().await {
            Ok(leading) => {
                if leading != self.leading {
                    if leading {
                        tracing::info!(
                            "this controller schedules now (it holds the scheduler lock)"
                        );
                    }
                    self.leading = leading;
                }
                leading
            }
            Err(err) => {
                if self.leading {
                    tracing::warn!(error = %err, "lost the scheduler lock's connection; another controller may schedule now");
                }
                self.leading = false;
                self.connection = None;
                false
            }
        }
    }

    async fn check(&mut self) -> Result<bool, sqlx::Error> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => {
                let connection = self.store.pool().acquire().await?.detach();
                self.connection.insert(connection)
            }
        };
        if self.leading {
            // The lock lives as long as the session: a live connection is
            // a held lock.
            sqlx::query("SELECT 1 AS alive")
                .fetch_one(&mut *connection)
                .await?;
            return Ok(true);
        }
        let row = sqlx::query(
            "SELECT CASE WHEN pg_try_advisory_lock($1) THEN 1::BIGINT ELSE 0::BIGINT END AS got",
        )
        .bind(LEADER_LOCK)
        .fetch_one(&mut *connection)
        .await?;
        Ok(row.try_get::<i64, _>("got")? == 1)
    }

    /// Lets another replica lead: closing the session frees the lock.
    async fn resign(&mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = sqlx::Connection::close(connection).await;
        }
        self.leading = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp()
    }

    fn cron(text: &str) -> CronSchedule {
        text.parse().unwrap()
    }

    fn tz(name: &str) -> TimeZone {
        name.parse().unwrap()
    }

    #[test]
    fn monday_three_in_the_script_time_zone() {
        // 2026-11-23 is a Monday; 03:00 in Berlin is 02:00 UTC.
        let slot = due_slot(
            &cron("0 3 * * 1"),
            tz("Europe/Berlin"),
            at("2026-11-22T12:00:00Z"),
            at("2026-11-23T02:00:30Z"),
        );
        assert_eq!(slot, Some(at("2026-11-23T02:00:00Z")));
        // Not due yet a second before.
        assert_eq!(
            due_slot(
                &cron("0 3 * * 1"),
                tz("Europe/Berlin"),
                at("2026-11-22T12:00:00Z"),
                at("2026-11-23T01:59:59Z"),
            ),
            None
        );
    }

    #[test]
    fn a_slot_is_due_once_past_the_watermark() {
        let slot = at("2026-11-23T02:00:00Z");
        assert_eq!(
            due_slot(&cron("0 3 * * 1"), tz("Europe/Berlin"), slot, slot + 5),
            None
        );
    }

    #[test]
    fn only_the_latest_missed_slot_runs() {
        // Every five minutes; down for an hour: one slot, the latest.
        let watermark = at("2026-11-23T10:00:00Z");
        let now = at("2026-11-23T11:02:00Z");
        assert_eq!(
            due_slot(&cron("*/5 * * * *"), TimeZone::UTC, watermark, now),
            Some(at("2026-11-23T11:00:00Z"))
        );
    }

    #[test]
    fn a_missed_slot_older_than_the_horizon_is_skipped() {
        // Weekly on Monday 03:00 UTC; down from Sunday to Tuesday noon:
        // Monday's slot is 33 hours old and does not run.
        let watermark = at("2026-11-22T12:00:00Z");
        let now = at("2026-11-24T12:00:00Z");
        assert_eq!(
            due_slot(&cron("0 3 * * 1"), TimeZone::UTC, watermark, now),
            None
        );
        // Back on Monday evening: it runs, late.
        assert_eq!(
            due_slot(
                &cron("0 3 * * 1"),
                TimeZone::UTC,
                watermark,
                at("2026-11-23T20:00:00Z")
            ),
            Some(at("2026-11-23T03:00:00Z"))
        );
    }

    #[test]
    fn dst_skipped_and_repeated_hours() {
        let berlin = tz("Europe/Berlin");
        // 2026-03-29: clocks go from 02:00 to 03:00. 02:30 does not exist
        // that day: no slot between the 28th's and the 30th's.
        let daily = cron("30 2 * * *");
        let after_28th = at("2026-03-28T01:30:00Z");
        assert_eq!(
            next_slot(&daily, berlin, after_28th),
            Some(at("2026-03-30T00:30:00Z"))
        );
        // 2026-10-25: clocks go from 03:00 back to 02:00. 02:30 happens
        // twice; the slot is the first, in summer time, once.
        let before = at("2026-10-24T00:30:00Z");
        let first = next_slot(&daily, berlin, before).unwrap();
        assert_eq!(first, at("2026-10-25T00:30:00Z"));
        assert_eq!(
            next_slot(&daily, berlin, first),
            Some(at("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn splay_offsets_stay_within_the_splay_and_spread() {
        let offsets: Vec<i64> = (0..200)
            .map(|n| splay_offset("cleanup", 1_000, &format!("host-{n}"), 600))
            .collect();
        assert!(offsets.iter().all(|offset| (0..600).contains(offset)));
        let distinct: std::collections::BTreeSet<_> = offsets.iter().collect();
        assert!(distinct.len() > 150, "offsets spread: {}", distinct.len());
        assert_eq!(
            splay_offset("cleanup", 1_000, "host-1", 600),
            splay_offset("cleanup", 1_000, "host-1", 600)
        );
        assert_eq!(splay_offset("cleanup", 1_000, "host-1", 0), 0);
    }

    #[test]
    fn windows_hold_until_they_close() {
        let yaml: &[u8] = b"apiVersion: muster/v1\nkind: Fleet\nname: test\n---\n\
              apiVersion: muster/v1\nkind: Group\nname: db\nselector: {role: db}\n---\n\
              apiVersion: muster/v1\nkind: Window\nname: nightly\nschedule: \"0 2 * * *\"\n\
              duration: 2h\ntargets: {groups: [db]}\nhold_rollouts: true\n---\n\
              apiVersion: muster/v1\nkind: Window\nname: follow-on\nschedule: \"30 3 * * *\"\n\
              duration: 1h\ntargets: {groups: [db]}\nhold_rollouts: true\n---\n\
              apiVersion: muster/v1\nkind: Window\nname: quiet\nschedule: \"0 12 * * *\"\n\
              duration: 1h\ntargets: {groups: [db]}\nhold_rollouts: false\n";
        let validation = muster_schemas::load_repo([("w.yaml", yaml)], &Default::default());
        let model = validation
            .model
            .unwrap_or_else(|| panic!("{:#?}", validation.diagnostics));
        let host = |role: &str| HostInput {
            id: format!("{role}-id"),
            name: format!("{role}-01"),
            labels: [("role".to_string(), role.to_string())].into(),
            facts: Default::default(),
        };
        let db = host("db");
        // 02:10: held until 04:30 (02:00 + 2h, then 03:30 + 1h follows on).
        assert_eq!(
            hold_until(&model, &db, at("2026-11-23T02:10:00Z")),
            at("2026-11-23T04:30:00Z")
        );
        // A web host is not covered; neither is 05:00; a window that does
        // not hold rollouts holds nothing.
        assert_eq!(
            hold_until(&model, &host("web"), at("2026-11-23T02:10:00Z")),
            at("2026-11-23T02:10:00Z")
        );
        assert_eq!(
            hold_until(&model, &db, at("2026-11-23T05:00:00Z")),
            at("2026-11-23T05:00:00Z")
        );
        assert_eq!(
            hold_until(&model, &db, at("2026-11-23T12:10:00Z")),
            at("2026-11-23T12:10:00Z")
        );
        // The window's end is not inside it.
        assert_eq!(
            hold_until(&model, &db, at("2026-11-23T04:30:00Z")),
            at("2026-11-23T04:30:00Z")
        );
    }

    #[test]
    fn request_ids_are_stable_per_slot() {
        assert_eq!(slot_request_id("a", 1), slot_request_id("a", 1));
        assert_ne!(slot_request_id("a", 1), slot_request_id("a", 2));
        assert_ne!(slot_request_id("a", 1), slot_request_id("b", 1));
    }
}
