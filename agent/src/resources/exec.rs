//! The `exec` resource: a command that runs when its guards say the host
//! needs it. Guards are checked in this order, and the first that says "no
//! need" makes the resource in sync: `creates` (the path exists), `unless`
//! (the command succeeds), `only_if` (the command fails).
//!
//! Guard commands run during checks and dry runs too, so they must only
//! look, never change anything, as in Puppet. They run like the command
//! itself: same user, environment, working directory and timeout, without a
//! shell.
//!
//! Under a sandbox root, `creates` and `cwd` are mapped beneath the root
//! and follow the path rules, the working directory defaults to the root,
//! and the command gets `MUSTER_ROOT` set to the root. The program itself
//! runs on the host: a sandbox contains paths, not commands. A command with
//! `run_as` is skipped in a sandbox, as switching users is not contained.

use std::path::PathBuf;

use muster_schemas::model::ExecSpec;

use crate::command::{Command, Output, Termination};

use super::paths;
use super::{CheckApply, Context, Failure, MESSAGE_OUTPUT_LIMIT, Outcome, outcome_of};

/// The message of a sandboxed exec resource that asks for another user.
pub const RUN_AS_SANDBOXED: &str = "sandboxed: run_as cannot be contained under --root";

impl CheckApply for ExecSpec {
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome {
        outcome_of(check_apply(self, ctx, apply))
    }
}

fn check_apply(spec: &ExecSpec, ctx: &Context, apply: bool) -> Result<Outcome, Failure> {
    if ctx.is_sandboxed() && spec.run_as.is_some() {
        return Ok(Outcome::skipped(RUN_AS_SANDBOXED));
    }
    if let Some(user) = &spec.run_as {
        super::accounts::check_name("user", user)?;
    }
    let cwd = match (&spec.cwd, &ctx.root) {
        (Some(cwd), _) => {
            let dir = ctx.host_path(cwd.as_str())?;
            match paths::lstat(&dir.path)? {
                Some(meta) if meta.is_dir() => dir.path,
                Some(meta) => {
                    return Err(Failure::new(format!(
                        "refusing working directory `{cwd}`: it is {}",
                        paths::describe_kind(&dir.path, &meta)
                    )));
                }
                None => {
                    return Err(Failure::new(format!(
                        "working directory `{cwd}` does not exist: create it with a `directory` resource first"
                    )));
                }
            }
        }
        (None, Some(root)) => root.clone(),
        (None, None) => PathBuf::from("/"),
    };

    // Guards, in order.
    if let Some(creates) = &spec.creates {
        let path = ctx.host_path(creates.as_str())?;
        if paths::lstat(&path.path)?.is_some() {
            return Ok(Outcome::in_sync());
        }
    }
    if let Some(unless) = &spec.unless {
        let output = run(
            ctx,
            spec,
            Command::new(unless.iter().cloned()),
            &cwd,
            "unless",
        )?;
        if output.success() {
            return Ok(Outcome::in_sync());
        }
    }
    if let Some(only_if) = &spec.only_if {
        let output = run(
            ctx,
            spec,
            Command::new(only_if.iter().cloned()),
            &cwd,
            "only_if",
        )?;
        if !output.success() {
            return Ok(Outcome::in_sync());
        }
    }

    let command = if spec.shell {
        match spec.command.as_slice() {
            [script] => Command::shell(script.clone()),
            _ => {
                return Err(Failure::new(
                    "a shell command is one string of script: join the command into one string",
                ));
            }
        }
    } else {
        Command::new(spec.command.iter().cloned())
    };
    let shown = command.display();
    if !apply {
        return Ok(Outcome::drifted(format!("would run `{shown}`")));
    }
    let output = run(ctx, spec, command, &cwd, "command")?;
    let summary = output.summary(MESSAGE_OUTPUT_LIMIT);
    if output.success() {
        Ok(Outcome::changed(format!("ran `{shown}`{summary}")))
    } else {
        Ok(Outcome::failed(format!(
            "`{shown}` {}{summary}",
            output.termination
        )))
    }
}

/// Runs the command or a guard with the resource's user, environment,
/// working directory and timeout.
fn run(
    ctx: &Context,
    spec: &ExecSpec,
    command: Command,
    cwd: &std::path::Path,
    role: &str,
) -> Result<Output, Failure> {
    let mut command = command
        .search_path(ctx.search_path.clone())
        .envs(&spec.env)
        .cwd(cwd)
        .timeout(spec.timeout.get());
    if let Some(root) = &ctx.root {
        command = command.env("MUSTER_ROOT", root.to_string_lossy());
    }
    if let Some(user) = &spec.run_as {
        command = command.run_as(user.clone());
    }
    let shown = command.display();
    let guard = role != "command";
    let output = command.run().map_err(|err| {
        if guard {
            Failure::new(format!("`{role}` guard: {err}"))
        } else {
            Failure::from(err)
        }
    })?;
    // A guard that ran out of time says nothing about the host: fail rather
    // than guess.
    if guard && matches!(output.termination, Termination::TimedOut(_)) {
        return Err(Failure::new(format!(
            "`{role}` guard `{shown}` {}",
            output.termination
        )));
    }
    Ok(output)
}
