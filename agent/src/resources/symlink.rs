//! The `symlink` resource: a symbolic link and what it points to. Links are
//! never followed; a wrong link is replaced atomically (a temporary link in
//! the same directory renamed over it); anything other than a link at the
//! path is refused rather than deleted.
//!
//! In a sandbox an absolute target is mapped beneath the root, so that the
//! link points inside the sandbox as it would on the host; relative targets
//! are kept as written.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use muster_schemas::model::{Presence, SymlinkSpec};

use super::file::missing_message;
use super::paths::{self, HostPath};
use super::{CheckApply, Context, Failure, Outcome, outcome_of};

impl CheckApply for SymlinkSpec {
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome {
        outcome_of(check_apply(self, ctx, apply))
    }
}

fn check_apply(spec: &SymlinkSpec, ctx: &Context, apply: bool) -> Result<Outcome, Failure> {
    let target = ctx.host_path(spec.path.as_str())?;
    let current = paths::lstat(&target.path)?;
    if let Some(meta) = &current
        && !meta.file_type().is_symlink()
    {
        return Err(Failure::new(format!(
            "refusing to manage `{}` as a symbolic link: it is {}; remove it first",
            target.declared,
            paths::describe_kind(&target.path, meta)
        )));
    }
    match spec.ensure {
        Presence::Present => {
            let destination = spec.target.as_deref().ok_or_else(|| {
                Failure::new(format!(
                    "symlink `{}` has no target: say what it points to, or make it absent",
                    target.declared
                ))
            })?;
            present(ctx, apply, &target, current.is_some(), destination)
        }
        Presence::Absent => absent(ctx, apply, &target, current.is_some()),
    }
}

/// What the link should contain on this host.
fn host_destination(ctx: &Context, destination: &str) -> Result<PathBuf, Failure> {
    if destination.is_empty() || destination.contains('\0') {
        return Err(Failure::new(format!(
            "invalid symlink target `{destination}`: give a non-empty path"
        )));
    }
    Ok(match (&ctx.root, destination.strip_prefix('/')) {
        (Some(root), Some(inside)) => root.join(inside),
        _ => PathBuf::from(destination),
    })
}

fn present(
    ctx: &Context,
    apply: bool,
    target: &HostPath,
    exists: bool,
    destination: &str,
) -> Result<Outcome, Failure> {
    let want = host_destination(ctx, destination)?;
    let message = if exists {
        let have = fs::read_link(&target.path).map_err(Failure::io(format!(
            "could not read link `{}`",
            target.declared
        )))?;
        if have == want {
            return Ok(Outcome::in_sync());
        }
        format!(
            "points to `{}`, should point to `{destination}`",
            have.display()
        )
    } else {
        missing_message(target)
    };
    if apply {
        let target = ctx.create_parents(target)?;
        replace_link(ctx, &target, &want)?;
    }
    Ok(Outcome::differs(apply, message))
}

/// Creates a temporary link next to the target and renames it over the
/// target, so the path always holds the old link or the new one.
fn replace_link(ctx: &Context, target: &HostPath, want: &Path) -> Result<(), Failure> {
    let mut last_error: Option<io::Error> = None;
    for _ in 0..16 {
        let temp = paths::temp_name(&target.path);
        match std::os::unix::fs::symlink(want, &temp) {
            Ok(()) => {
                let renamed = ctx.recheck(target).and_then(|target| {
                    fs::rename(&temp, &target.path).map_err(Failure::io(format!(
                        "could not move the new link into `{}`",
                        target.declared
                    )))
                });
                if let Err(failure) = renamed {
                    let _ = fs::remove_file(&temp);
                    return Err(failure);
                }
                return paths::fsync_dir(target.parent());
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last_error = Some(err),
            Err(err) => {
                return Err(Failure::io(format!(
                    "could not create a link next to `{}`",
                    target.declared
                ))(err));
            }
        }
    }
    Err(Failure::new(format!(
        "could not create a link next to `{}`: {}",
        target.declared,
        last_error.map(|err| err.to_string()).unwrap_or_default()
    )))
}

fn absent(ctx: &Context, apply: bool, target: &HostPath, exists: bool) -> Result<Outcome, Failure> {
    if !exists {
        return Ok(Outcome::in_sync());
    }
    let have = fs::read_link(&target.path)
        .map(OsString::from)
        .unwrap_or_default();
    if apply {
        let target = ctx.recheck(target)?;
        fs::remove_file(&target.path).map_err(Failure::io(format!(
            "could not remove `{}`",
            target.declared
        )))?;
        paths::fsync_dir(target.parent())?;
    }
    Ok(Outcome::differs(
        apply,
        format!(
            "link to `{}` exists and should be absent",
            Path::new(&have).display()
        ),
    ))
}
