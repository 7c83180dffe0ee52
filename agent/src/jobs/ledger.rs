//! The job ledger: one file per job this agent took on, in `jobs/` in the
//! state dir, so that a job delivered again runs once, whatever happened
//! in between.
//!
//! `jobs/<job id>.json` holds the job's id, kind, expiry, when it started,
//! the boot id of the host then, and, once known, its result and whether
//! the controller accepted that result. Every write is atomic and durable
//! (`state::write_atomic`: temp file, fsync, rename, fsync of the
//! directory).
//!
//! **The crash windows**, in the order a job goes through them:
//!
//! 1. Before the entry is written: the job did not run. Delivered again,
//!    it runs.
//! 2. After the entry is written (`started`, no result), before or while
//!    the job runs: the agent cannot know how far the job got, so it never
//!    runs it again. When the agent starts, [`Ledger::recover`] gives every
//!    such entry the result `failed` with the message "the agent stopped
//!    while it ran" (for a reboot job on a host that has booted since:
//!    `succeeded`, "the host rebooted"), which is sent like any result.
//! 3. After the job ended, before its result is written: as 2. The window
//!    is the time between the process's exit and one file write.
//! 4. After the result is written, before the controller accepted it: the
//!    result stays unreported and is sent again until the controller
//!    accepts it; a delivery of the job again re-sends it. The controller
//!    keeps the first result, so a second copy is harmless.
//!
//! Entries are kept for [`KEEP_AFTER_EXPIRY_SECS`] after their job's
//! expiry: by then the controller no longer delivers the job, and an agent
//! would refuse it as expired anyway.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use muster_schemas::job::is_valid_job_id;
use muster_schemas::protocol::{JobResult, JobResultState};
use serde::{Deserialize, Serialize};

use crate::state::write_atomic;

/// The ledger's directory in the state dir.
pub const LEDGER_DIR: &str = "jobs";

/// How long an entry outlives its job's expiry, in seconds: a week, so
/// that a clock that jumps back cannot make an expired job runnable with
/// its entry gone.
pub const KEEP_AFTER_EXPIRY_SECS: i64 = 7 * 86_400;

/// The message of a job the agent stopped while it ran.
pub const STOPPED_WHILE_RUNNING: &str = "the agent stopped while it ran";

/// The message of a reboot job whose host booted since it started.
pub const HOST_REBOOTED: &str = "the host rebooted";

/// What the ledger knows of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub job_id: String,
    /// `script`, `reboot` or `service`.
    pub kind: String,
    /// The job's signed expiry.
    pub expires_at: i64,
    /// When the agent took it on.
    pub started_at: i64,
    /// The host's boot id then, to tell a reboot from a crash.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// How it ended, once known.
    #[serde(default)]
    pub result: Option<JobResult>,
    /// Whether the controller accepted (or refused for good) the result.
    #[serde(default)]
    pub reported: bool,
}

/// The ledger in a state dir.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    /// Opens the ledger in `state_dir`, creating its directory (0700).
    pub fn open(state_dir: &Path) -> io::Result<Ledger> {
        let dir = state_dir.join(LEDGER_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(Ledger { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, job_id: &str) -> io::Result<PathBuf> {
        if !is_valid_job_id(job_id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{job_id}` is not a job id"),
            ));
        }
        Ok(self.dir.join(format!("{job_id}.json")))
    }

    /// The entry of a job, if the agent ever took it on. An entry that
    /// cannot be read is an error: the caller must then not run the job.
    pub fn get(&self, job_id: &str) -> io::Result<Option<Entry>> {
        match fs::read(self.path(job_id)?) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|err| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the ledger entry of job {job_id} is corrupt: {err}"),
                )
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Writes an entry, durably.
    pub fn put(&self, entry: &Entry) -> io::Result<()> {
        let bytes = serde_json::to_vec(entry)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        write_atomic(&self.path(&entry.job_id)?, &bytes, 0o600)
    }

    /// Records a job's result, to be reported.
    pub fn record_result(&self, entry: &Entry, result: JobResult) -> io::Result<Entry> {
        let entry = Entry {
            result: Some(result),
            reported: false,
            ..entry.clone()
        };
        self.put(&entry)?;
        Ok(entry)
    }

    /// Notes that the controller has the job's result.
    pub fn mark_reported(&self, job_id: &str) -> io::Result<()> {
        if let Some(entry) = self.get(job_id)?
            && !entry.reported
        {
            self.put(&Entry {
                reported: true,
                ..entry
            })?;
        }
        Ok(())
    }

    /// Every entry, in job id order. Unreadable entries are skipped with a
    /// warning: they still keep their job from running (see
    /// [`get`](Self::get)).
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".json").map(str::to_string))
            .filter(|id| is_valid_job_id(id))
            .collect();
        names.sort();
        let mut entries = Vec::with_capacity(names.len());
        for job_id in names {
            match self.get(&job_id) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(err) => tracing::warn!(job = %job_id, error = %err, "skipping a ledger entry"),
            }
        }
        Ok(entries)
    }

    /// Results not yet accepted by the controller.
    pub fn unreported(&self) -> io::Result<Vec<JobResult>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|entry| !entry.reported)
            .filter_map(|entry| entry.result)
            .collect())
    }

    /// Gives every job that was started but has no result (the agent
    /// stopped while it ran: crash windows 2 and 3) its result, to be
    /// reported. Call it when the agent starts, before taking on jobs.
    /// Returns the ids of the jobs it settled.
    pub fn recover(&self, boot_id: Option<&str>, now: i64) -> io::Result<Vec<String>> {
        let mut settled = Vec::new();
        for entry in self.entries()? {
            if entry.result.is_some() {
                continue;
            }
            let result = interrupted_result(&entry, boot_id, now);
            self.record_result(&entry, result)?;
            settled.push(entry.job_id);
        }
        Ok(settled)
    }

    /// Removes the entries of reported jobs that expired more than
    /// [`KEEP_AFTER_EXPIRY_SECS`] ago. Returns how many went.
    pub fn prune(&self, now: i64) -> io::Result<usize> {
        let mut removed = 0;
        for entry in self.entries()? {
            if entry.reported && entry.expires_at.saturating_add(KEEP_AFTER_EXPIRY_SECS) < now {
                fs::remove_file(self.path(&entry.job_id)?)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The result of a job whose entry says it started but has no result.
pub fn interrupted_result(entry: &Entry, boot_id: Option<&str>, now: i64) -> JobResult {
    let rebooted = entry.kind == "reboot"
        && matches!((entry.boot_id.as_deref(), boot_id), (Some(then), Some(now)) if then != now);
    let (state, message) = if rebooted {
        (JobResultState::Succeeded, HOST_REBOOTED)
    } else {
        (JobResultState::Failed, STOPPED_WHILE_RUNNING)
    };
    JobResult {
        job_id: entry.job_id.clone(),
        state,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        message: Some(message.to_string()),
        started_at: entry.started_at,
        finished_at: now.max(entry.started_at),
    }
}

/// The host's boot id (`/proc/sys/kernel/random/boot_id`), which changes
/// with every boot; `None` where there is none.
pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}
