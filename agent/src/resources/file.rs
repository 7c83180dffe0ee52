//! The `file` resource: a regular file's existence, content, owner, group
//! and mode.
//!
//! Sub-checks run in this order, like mgmt's `FileRes`: state (exists or
//! not, and is a regular file) → content → owner → group → mode. Content
//! changes and creation replace the file atomically, with owner and mode
//! set on the temporary file before the rename; metadata-only changes are
//! made in place on the open file.
//!
//! A replacement is decided here, and written and landed (temporary file,
//! fsync, rename, directory fsync) either right away ([`CheckApply`]) or
//! by a converge run, which overlaps the writes of consecutive files
//! ([`check_apply_pending`], `resources::writes`).

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use muster_schemas::model::{FileSpec, Presence};

use super::accounts::{self, Ownership};
use super::diff::{self, DIFF_READ_LIMIT, Side};
use super::paths::{self, FileWrite, HostPath, NewFile};
use super::{CheckApply, Context, Differences, Failure, Outcome, outcome_of};

/// Mode of a new file when the spec names none.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Mode of a new secret file when the spec names none.
pub const DEFAULT_SECRET_MODE: u32 = 0o600;

impl CheckApply for FileSpec {
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome {
        let (outcome, write) = check_apply_pending(self, ctx, apply);
        match write.map(|write| write.apply(ctx)) {
            None | Some(Ok(())) => outcome,
            Some(Err(failure)) => Outcome::failed(failure.to_string()),
        }
    }
}

/// The file resource's check and apply, except that new content (a created
/// file, or changed content) is returned as a write still to be made. The
/// outcome is the resource's once that write has landed; if it fails, the
/// resource has failed instead. Everything else (parent directories,
/// metadata fixed in place, a removal) is done here.
pub(crate) fn check_apply_pending<'a>(
    spec: &'a FileSpec,
    ctx: &Context,
    apply: bool,
) -> (Outcome, Option<FileWrite<'a>>) {
    match check_apply(spec, ctx, apply) {
        Ok((outcome, write)) => (outcome, write),
        Err(failure) => (outcome_of(Err(failure)), None),
    }
}

/// An outcome, and the write that must land for it to hold.
type Pending<'a> = (Outcome, Option<FileWrite<'a>>);

fn check_apply<'a>(spec: &'a FileSpec, ctx: &Context, apply: bool) -> Result<Pending<'a>, Failure> {
    let target = ctx.host_path(spec.path.as_str())?;
    let current = paths::lstat(&target.path)?;
    if let Some(meta) = &current
        && !meta.file_type().is_file()
    {
        return Err(Failure::new(format!(
            "refusing to manage `{}` as a file: it is {}; remove it first",
            target.declared,
            paths::describe_kind(&target.path, meta)
        )));
    }
    match spec.ensure {
        Presence::Present => present(spec, ctx, apply, &target, current),
        Presence::Absent => Ok((absent(spec, ctx, apply, &target, current)?, None)),
    }
}

fn present<'a>(
    spec: &'a FileSpec,
    ctx: &Context,
    apply: bool,
    target: &HostPath,
    current: Option<std::fs::Metadata>,
) -> Result<Pending<'a>, Failure> {
    let ownership = accounts::ownership(ctx, spec.owner.as_deref(), spec.group.as_deref())?;
    let mut differences = Differences::default();
    let mut diff = None;
    let mut rewrite = false;
    let Some(meta) = current else {
        // State: missing. Everything else follows from the write.
        differences.push(missing_message(target));
        if let Some(content) = &spec.content {
            diff = Some(diff::content_diff(
                &target.declared,
                Side::Missing,
                Side::Bytes(content.as_bytes()),
                spec.secret,
            ));
        }
        if !apply {
            let outcome = Outcome::drifted(differences.message())
                .with_diff(diff)
                .with_note(ownership.note);
            return Ok((outcome, None));
        }
        let new_file = NewFile {
            mode: spec.mode.map(|m| m.bits()).unwrap_or(if spec.secret {
                DEFAULT_SECRET_MODE
            } else {
                DEFAULT_FILE_MODE
            }),
            uid: ownership.uid,
            gid: ownership.gid,
        };
        // The new parents are made durable with the file, when it lands.
        let (target, created_in) = ctx.create_parents_unsynced(target)?;
        let write = FileWrite {
            target,
            content: spec.content.as_deref().unwrap_or_default().as_bytes(),
            new_file,
            created_in,
        };
        let outcome = Outcome::changed(differences.message())
            .with_diff(diff)
            .with_note(ownership.note);
        return Ok((outcome, Some(write)));
    };
    let mut file = paths::open_verified(&target.path, &meta)?;

    // Content.
    if let Some(want) = &spec.content {
        let want = want.as_bytes();
        let same_length = meta.len() == want.len() as u64;
        let old = if same_length || meta.len() <= DIFF_READ_LIMIT {
            let mut old = Vec::with_capacity(meta.len() as usize);
            file.read_to_end(&mut old)
                .map_err(Failure::io(format!("could not read `{}`", target.declared)))?;
            Some(old)
        } else {
            None
        };
        if old.as_deref() != Some(want) {
            differences.push("content differs");
            rewrite = true;
            let old_side = match &old {
                Some(bytes) => Side::Bytes(bytes),
                None => Side::TooLarge(meta.len()),
            };
            diff = Some(diff::content_diff(
                &target.declared,
                old_side,
                Side::Bytes(want),
                spec.secret,
            ));
        }
    }
    // Owner, group, mode.
    let metadata_fix = metadata_differences(&meta, &ownership, spec.mode.map(|m| m.bits()));
    for difference in &metadata_fix.differences {
        differences.push(difference.clone());
    }

    if differences.is_empty() {
        return Ok((Outcome::in_sync().with_note(ownership.note), None));
    }
    if !apply {
        let outcome = Outcome::drifted(differences.message())
            .with_diff(diff)
            .with_note(ownership.note);
        return Ok((outcome, None));
    }
    let mut write = None;
    if rewrite {
        // A replaced file keeps the current mode and owner unless the spec
        // names others: an edit to the content must not widen access. In a
        // sandbox owners are not managed, and an unprivileged agent could
        // not give the file to someone else anyway.
        let keep = |current: u32| (!ctx.is_sandboxed()).then_some(current);
        let new_file = NewFile {
            mode: spec.mode.map(|m| m.bits()).unwrap_or(meta.mode() & 0o7777),
            uid: ownership.uid.or(keep(meta.uid())),
            gid: ownership.gid.or(keep(meta.gid())),
        };
        write = Some(FileWrite {
            target: target.clone(),
            content: spec.content.as_deref().unwrap_or_default().as_bytes(),
            new_file,
            created_in: Vec::new(),
        });
    } else {
        metadata_fix.apply(&file, &target.declared)?;
    }
    let outcome = Outcome::changed(differences.message())
        .with_diff(diff)
        .with_note(ownership.note);
    Ok((outcome, write))
}

fn absent(
    spec: &FileSpec,
    ctx: &Context,
    apply: bool,
    target: &HostPath,
    current: Option<std::fs::Metadata>,
) -> Result<Outcome, Failure> {
    let Some(meta) = current else {
        return Ok(Outcome::in_sync());
    };
    let mut file = paths::open_verified(&target.path, &meta)?;
    let old = if meta.len() <= DIFF_READ_LIMIT {
        let mut old = Vec::new();
        file.read_to_end(&mut old)
            .map_err(Failure::io(format!("could not read `{}`", target.declared)))?;
        Some(old)
    } else {
        None
    };
    let old_side = match &old {
        Some(bytes) => Side::Bytes(bytes),
        None => Side::TooLarge(meta.len()),
    };
    let diff = diff::content_diff(&target.declared, old_side, Side::Missing, spec.secret);
    if apply {
        let target = ctx.recheck(target)?;
        std::fs::remove_file(&target.path).map_err(Failure::io(format!(
            "could not remove `{}`",
            target.declared
        )))?;
        paths::fsync_dir(target.parent())?;
    }
    Ok(Outcome::differs(apply, "file exists and should be absent").with_diff(Some(diff)))
}

/// "file is missing", naming the parent directories that will be created.
pub(crate) fn missing_message(target: &HostPath) -> String {
    let parents = target.missing_parents_declared();
    if parents.is_empty() {
        "missing".to_string()
    } else {
        format!(
            "missing (with parent directories {})",
            parents
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Owner, group and mode differences of an existing file or directory, and
/// the repair to make in place.
#[derive(Debug, Default)]
pub(crate) struct MetadataFix {
    pub(crate) differences: Vec<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
}

/// Compares owner → group → mode.
pub(crate) fn metadata_differences(
    meta: &std::fs::Metadata,
    ownership: &Ownership,
    mode: Option<u32>,
) -> MetadataFix {
    let mut fix = MetadataFix::default();
    if let Some(uid) = ownership.uid
        && meta.uid() != uid
    {
        fix.differences
            .push(format!("owner uid {} → {uid}", meta.uid()));
        fix.uid = Some(uid);
    }
    if let Some(gid) = ownership.gid
        && meta.gid() != gid
    {
        fix.differences
            .push(format!("group gid {} → {gid}", meta.gid()));
        fix.gid = Some(gid);
    }
    let current_mode = meta.mode() & 0o7777;
    if let Some(mode) = mode
        && current_mode != mode
    {
        fix.differences
            .push(format!("mode {current_mode:04o} → {mode:04o}"));
        fix.mode = Some(mode);
    }
    // A change of owner clears set-id bits, so the mode is set again after
    // one whenever the spec names a mode.
    if fix.uid.is_some() || fix.gid.is_some() {
        fix.mode = mode;
    }
    fix
}

impl MetadataFix {
    /// Makes the changes on the open file (or directory), durably: an
    /// fsync follows, so that they hold after a crash like a replaced
    /// file's content does.
    pub(crate) fn apply(&self, file: &std::fs::File, what: &str) -> Result<(), Failure> {
        paths::set_owner_and_mode(file, self.uid, self.gid, self.mode, what)?;
        file.sync_all()
            .map_err(Failure::io(format!("could not sync `{what}`")))
    }
}
