//! The `directory` resource: a directory's existence, owner, group and
//! mode. Sub-checks: state → owner → group → mode. An absent directory is
//! removed only when it is empty; a non-empty one fails, so a typo in a
//! path can never delete a tree.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;

use muster_schemas::model::{DirectorySpec, Presence};

use super::accounts;
use super::file::{metadata_differences, missing_message};
use super::paths::{self, HostPath};
use super::{CheckApply, Context, Failure, Outcome, outcome_of};

/// Mode of a new directory when the spec names none.
pub const DEFAULT_DIRECTORY_MODE: u32 = 0o755;

impl CheckApply for DirectorySpec {
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome {
        outcome_of(check_apply(self, ctx, apply))
    }
}

fn check_apply(spec: &DirectorySpec, ctx: &Context, apply: bool) -> Result<Outcome, Failure> {
    let target = ctx.host_path(spec.path.as_str())?;
    let current = paths::lstat(&target.path)?;
    if let Some(meta) = &current
        && !meta.file_type().is_dir()
    {
        return Err(Failure::new(format!(
            "refusing to manage `{}` as a directory: it is {}; remove it first",
            target.declared,
            paths::describe_kind(&target.path, meta)
        )));
    }
    match spec.ensure {
        Presence::Present => present(spec, ctx, apply, &target, current),
        Presence::Absent => absent(ctx, apply, &target, current),
    }
}

fn present(
    spec: &DirectorySpec,
    ctx: &Context,
    apply: bool,
    target: &HostPath,
    current: Option<fs::Metadata>,
) -> Result<Outcome, Failure> {
    let ownership = accounts::ownership(ctx, spec.owner.as_deref(), spec.group.as_deref())?;
    let mode = spec.mode.map(|m| m.bits());
    let Some(meta) = current else {
        let message = missing_message(target);
        if !apply {
            return Ok(Outcome::drifted(message).with_note(ownership.note));
        }
        let target = ctx.create_parents(target)?;
        // Created closed (0700) and opened up only after the owner is set,
        // so it is never briefly reachable with the wrong owner.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&target.path)
            .map_err(Failure::io(format!(
                "could not create `{}`",
                target.declared
            )))?;
        let created = paths::lstat(&target.path)?
            .ok_or_else(|| Failure::new(format!("`{}` vanished", target.declared)))?;
        let handle = paths::open_verified(&target.path, &created)?;
        paths::set_owner_and_mode(
            &handle,
            ownership.uid,
            ownership.gid,
            Some(mode.unwrap_or(DEFAULT_DIRECTORY_MODE)),
            &target.declared,
        )?;
        // Its owner and mode, then its name in the parent.
        handle
            .sync_all()
            .map_err(Failure::io(format!("could not sync `{}`", target.declared)))?;
        paths::fsync_dir(target.parent())?;
        return Ok(Outcome::changed(message).with_note(ownership.note));
    };
    let fix = metadata_differences(&meta, &ownership, mode);
    if fix.differences.is_empty() {
        return Ok(Outcome::in_sync().with_note(ownership.note));
    }
    if apply {
        let handle = paths::open_verified(&target.path, &meta)?;
        fix.apply(&handle, &target.declared)?;
    }
    Ok(Outcome::differs(apply, fix.differences.join("; ")).with_note(ownership.note))
}

fn absent(
    ctx: &Context,
    apply: bool,
    target: &HostPath,
    current: Option<fs::Metadata>,
) -> Result<Outcome, Failure> {
    if current.is_none() {
        return Ok(Outcome::in_sync());
    }
    let not_empty = || {
        Failure::new(format!(
            "directory `{}` is not empty: it is removed only when empty; remove or manage its contents first",
            target.declared
        ))
    };
    let mut entries = fs::read_dir(&target.path)
        .map_err(Failure::io(format!("could not list `{}`", target.declared)))?;
    // Predicted in a check too: applying would fail.
    if entries.next().is_some() {
        return Err(not_empty());
    }
    if apply {
        let target = ctx.recheck(target)?;
        match fs::remove_dir(&target.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::DirectoryNotEmpty => return Err(not_empty()),
            Err(err) => {
                return Err(Failure::io(format!(
                    "could not remove `{}`",
                    target.declared
                ))(err));
            }
        }
        paths::fsync_dir(target.parent())?;
    }
    Ok(Outcome::differs(
        apply,
        "directory exists and should be absent",
    ))
}
