//! Running one verified job: what it needs is checked first ([`plan`]),
//! then it runs ([`run`]).
//!
//! A script's body is written to a file of its own (mode 0700) and run as
//! `INTERPRETER FILE`: no shell is involved, and parameters reach the
//! script only as environment variables `MUSTER_PARAM_<NAME>`, never as
//! text of a command. The environment is cleared to `PATH`, `HOME`,
//! `LANG`, `MUSTER_JOB_ID`, the parameters and, under `--root`,
//! `MUSTER_ROOT`; the working directory is `/` (the root under `--root`).
//! The script runs in its own process group, which is killed at the
//! timeout; stdout and stderr are kept up to 64 KiB each.
//!
//! A script for another user (`run_as`) runs through `runuser -u USER --`;
//! its file is then in a private directory of the system temp dir owned by
//! that user, since the state dir is readable by the agent's user only.
//! Under `--root`, switching users cannot be contained, and such a job is
//! refused as `sandboxed`, as are reboot and service jobs: a sandbox never
//! fakes success.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_schemas::job::{Job, JobKind, ScriptJob};
use muster_schemas::protocol::{JobResult, JobResultState};

use crate::command::{Command, Output, Termination};
use crate::resources::{Context, RUN_AS_SANDBOXED, SANDBOXED};

/// The `PATH` a script gets.
pub const SCRIPT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The locale a script gets.
pub const SCRIPT_LANG: &str = "C.UTF-8";

/// The prefix of a parameter's environment variable.
pub const PARAM_PREFIX: &str = "MUSTER_PARAM_";

/// How a checked job is to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A script, as the agent's own user.
    Script,
    /// A script, as another user.
    ScriptAs { user: String, uid: u32, gid: u32 },
    /// A tool (`systemctl …`), argv.
    Tool(Vec<String>),
}

/// Why a job does not run: `refused` (it cannot run here, or is
/// malformed) or `failed` (the host lacks what it needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRun {
    pub state: JobResultState,
    pub message: String,
}

impl NotRun {
    fn refused(message: impl Into<String>) -> NotRun {
        NotRun {
            state: JobResultState::Refused,
            message: message.into(),
        }
    }

    fn failed(message: impl Into<String>) -> NotRun {
        NotRun {
            state: JobResultState::Failed,
            message: message.into(),
        }
    }
}

/// Whether `name` is a parameter name: lowercase letters, digits and `_`,
/// so that `MUSTER_PARAM_<NAME>` is a plain variable name.
pub fn is_valid_parameter_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `name` can be a user name given to `runuser`: it cannot be
/// taken for an option or break the passwd database.
fn is_valid_user_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    !body.is_empty()
        && name.len() <= 32
        && !body.starts_with('-')
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whether `unit` is a systemd unit name that `systemctl` cannot take for
/// an option.
fn is_valid_unit(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

/// The effective uid of this process: the owner of `/proc/self`.
fn own_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|meta| meta.uid())
}

/// A user's uid and gid, through `getent passwd` (so LDAP and SSSD users
/// count); `Ok(None)` when there is no such user.
fn lookup_user(ctx: &Context, user: &str) -> Result<Option<(u32, u32)>, String> {
    let output = ctx
        .command(["getent", "passwd", user])
        .run()
        .map_err(|err| err.to_string())?;
    match output.code() {
        Some(0) => {
            let line = output.stdout.lines().next().unwrap_or_default();
            let fields: Vec<&str> = line.split(':').collect();
            match (
                fields.get(2).and_then(|uid| uid.parse().ok()),
                fields.get(3).and_then(|gid| gid.parse().ok()),
            ) {
                (Some(uid), Some(gid)) => Ok(Some((uid, gid))),
                _ => Err(format!(
                    "`getent passwd {user}` printed an unreadable entry"
                )),
            }
        }
        Some(2) => Ok(None),
        _ => Err(format!(
            "`getent passwd {user}` {}{}",
            output.termination,
            output.summary(1024)
        )),
    }
}

/// Checks that a verified job can run here, and how.
pub fn plan(job: &Job, ctx: &Context) -> Result<Plan, NotRun> {
    match &job.kind {
        JobKind::Script(script) => plan_script(script, ctx),
        JobKind::Reboot => {
            if ctx.is_sandboxed() {
                return Err(NotRun::refused(SANDBOXED));
            }
            Ok(Plan::Tool(vec!["systemctl".into(), "reboot".into()]))
        }
        JobKind::Service(service) => {
            if !is_valid_unit(&service.name) {
                return Err(NotRun::refused(format!(
                    "invalid unit name `{}`: use a systemd unit name such as `nginx` or `nginx.service`",
                    service.name
                )));
            }
            if ctx.is_sandboxed() {
                return Err(NotRun::refused(SANDBOXED));
            }
            Ok(Plan::Tool(vec![
                "systemctl".into(),
                service.operation.as_str().into(),
                service.name.clone(),
            ]))
        }
    }
}

fn plan_script(script: &ScriptJob, ctx: &Context) -> Result<Plan, NotRun> {
    if !script.interpreter.starts_with('/') || script.interpreter.contains('\0') {
        return Err(NotRun::refused(format!(
            "the interpreter `{}` is not an absolute path",
            script.interpreter
        )));
    }
    for (name, value) in &script.parameters {
        if !is_valid_parameter_name(name) {
            return Err(NotRun::refused(format!(
                "invalid parameter name `{name}`: use lowercase letters, digits and `_`"
            )));
        }
        if value.contains('\0') {
            return Err(NotRun::refused(format!(
                "parameter `{name}` holds a NUL byte, which no environment variable can carry"
            )));
        }
    }
    let Some(user) = &script.run_as else {
        return Ok(Plan::Script);
    };
    if !is_valid_user_name(user) {
        return Err(NotRun::refused(format!(
            "invalid user name `{user}` in run_as"
        )));
    }
    match lookup_user(ctx, user) {
        Ok(Some((uid, _))) if Some(uid) == own_uid() => Ok(Plan::Script),
        _ if ctx.is_sandboxed() => Err(NotRun::refused(RUN_AS_SANDBOXED)),
        Ok(Some((uid, gid))) => Ok(Plan::ScriptAs {
            user: user.clone(),
            uid,
            gid,
        }),
        Ok(None) => Err(NotRun::failed(format!(
            "there is no user `{user}` on this host: create it, or change the script's run_as"
        ))),
        Err(err) => Err(NotRun::failed(format!(
            "cannot look up user `{user}`: {err}"
        ))),
    }
}

/// Runs a checked job to its end and says how it went. `scripts_dir` is
/// where a script's file goes (for the agent's own user); `started_at` is
/// when the job was taken on.
pub fn run(
    job: &Job,
    plan: &Plan,
    ctx: &Context,
    scripts_dir: &Path,
    started_at: i64,
) -> JobResult {
    let outcome = match (&job.kind, plan) {
        (JobKind::Script(script), Plan::Script) => run_script(job, script, None, ctx, scripts_dir),
        (JobKind::Script(script), Plan::ScriptAs { user, uid, gid }) => run_script(
            job,
            script,
            Some((user.as_str(), *uid, *gid)),
            ctx,
            scripts_dir,
        ),
        (_, Plan::Tool(argv)) => ctx
            .command(argv.iter().cloned())
            .run()
            .map_err(|err| err.to_string()),
        _ => Err("the job does not match its plan".to_string()),
    };
    let finished_at = crate::client::unix_now().max(started_at);
    let mut result = JobResult {
        job_id: job.job_id.clone(),
        state: JobResultState::Failed,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        message: None,
        started_at,
        finished_at,
    };
    match outcome {
        Ok(output) => {
            result.state = match output.termination {
                Termination::Exited(0) => JobResultState::Succeeded,
                Termination::TimedOut(_) => JobResultState::TimedOut,
                Termination::Exited(_) | Termination::Signaled(_) => JobResultState::Failed,
            };
            result.exit_code = output.code();
            if !output.success() {
                result.message = Some(format!("the job {}", output.termination));
            }
            result.stdout = output.stdout;
            result.stderr = output.stderr;
        }
        Err(message) => result.message = Some(message),
    }
    result.bounded()
}

fn run_script(
    job: &Job,
    script: &ScriptJob,
    run_as: Option<(&str, u32, u32)>,
    ctx: &Context,
    scripts_dir: &Path,
) -> Result<Output, String> {
    let file = match run_as {
        None => ScriptFile::own(scripts_dir, &job.job_id, &script.body),
        Some((_, uid, gid)) => ScriptFile::for_user(&job.job_id, &script.body, uid, gid),
    }
    .map_err(|err| format!("cannot write the script to a file: {err}"))?;
    let home = match run_as {
        // runuser sets the user's own HOME.
        Some(_) => "/".to_string(),
        None => std::env::var("HOME").unwrap_or_else(|_| "/".into()),
    };
    let mut command = Command::new([
        script.interpreter.clone(),
        file.path.to_string_lossy().into_owned(),
    ])
    .env_clear()
    .env("PATH", SCRIPT_PATH)
    .env("HOME", home)
    .env("LANG", SCRIPT_LANG)
    .env("MUSTER_JOB_ID", job.job_id.clone())
    .timeout(Duration::from_secs(script.timeout_secs.max(1)));
    for (name, value) in &script.parameters {
        command = command.env(
            format!("{PARAM_PREFIX}{}", name.to_ascii_uppercase()),
            value.clone(),
        );
    }
    command = match &ctx.root {
        Some(root) => command
            .env("MUSTER_ROOT", root.to_string_lossy())
            .cwd(root.clone()),
        None => command.cwd("/"),
    };
    if let Some((user, _, _)) = run_as {
        command = command.run_as(user);
    }
    let output = command.run().map_err(|err| err.to_string());
    drop(file);
    output
}

/// A script's body in a file of its own, removed on drop.
#[derive(Debug)]
struct ScriptFile {
    path: PathBuf,
    /// The private directory made for another user's script.
    dir: Option<PathBuf>,
}

impl ScriptFile {
    /// `scripts_dir/<job id>`, mode 0700, for the agent's own user.
    fn own(scripts_dir: &Path, job_id: &str, body: &str) -> io::Result<ScriptFile> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(scripts_dir)?;
        let path = scripts_dir.join(job_id);
        // A file left by a run that crashed: that job is never run again,
        // so the file is stale.
        let _ = fs::remove_file(&path);
        write_new(&path, body)?;
        Ok(ScriptFile { path, dir: None })
    }

    /// A new private directory in the system temp dir holding the script,
    /// both owned by `uid:gid`. They are created by the agent (mode 0700,
    /// the file with `O_EXCL`, so nothing planted there is followed) and
    /// handed to the user last.
    fn for_user(job_id: &str, body: &str, uid: u32, gid: u32) -> io::Result<ScriptFile> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|err| io::Error::other(err.to_string()))?;
        let dir = std::env::temp_dir().join(format!("muster-job-{job_id}-{}", hex::encode(nonce)));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let file = ScriptFile {
            path: dir.join("script"),
            dir: Some(dir.clone()),
        };
        write_new(&file.path, body)?;
        std::os::unix::fs::chown(&file.path, Some(uid), Some(gid))?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        Ok(file)
    }
}

fn write_new(path: &Path, body: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o700))?;
    file.write_all(body.as_bytes())?;
    file.sync_all()
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        // Best effort: a file left behind is removed when the agent starts
        // (its own scripts) or by the system's temp cleaning.
        let _ = fs::remove_file(&self.path);
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}
