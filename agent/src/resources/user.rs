//! The `user` resource: a local account, through `getent passwd`,
//! `useradd`, `usermod` and `userdel`, and its SSH `authorized_keys`.
//!
//! Sub-checks: state → uid → primary group → supplementary groups → home →
//! shell → comment → authorized keys. Supplementary groups are a minimum:
//! the user is added to the listed groups (`usermod -a -G`) and keeps
//! others, which packages and people add (`docker`, `adm`). A changed home
//! is recorded (`usermod -d`) but nothing is moved. A removed user keeps
//! its home (`userdel` without `-r`). New accounts get a home (`useradd
//! -m`) unless they are system accounts without keys.
//!
//! Authorized keys, when listed, are the whole of `HOME/.ssh/authorized_keys`:
//! one key a line, mode 0600, owned by the user, written atomically like a
//! `file`. A missing `~/.ssh` is created with mode 0700; a missing home is
//! a failure, not something to invent. In a sandbox, users are skipped.

use std::fs;
use std::os::unix::fs::DirBuilderExt;

use muster_schemas::model::{FileSpec, Presence, UserSpec};
use muster_schemas::protocol::ResourceStatus;
use muster_schemas::types::FileMode;

use super::accounts::{self, PasswdEntry, check_name, run_tool};
use super::paths;
use super::{CheckApply, Context, Differences, Failure, Outcome, SANDBOXED, outcome_of};

impl CheckApply for UserSpec {
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome {
        if ctx.is_sandboxed() {
            return Outcome::skipped(SANDBOXED);
        }
        outcome_of(check_apply(self, ctx, apply))
    }
}

fn check_apply(spec: &UserSpec, ctx: &Context, apply: bool) -> Result<Outcome, Failure> {
    let name = spec.name.as_str();
    check_name("user", name)?;
    for group in spec.group.iter().chain(&spec.groups) {
        check_name("group", group)?;
    }
    if let Some(comment) = &spec.comment
        && comment.contains([':', '\n', '\r'])
    {
        return Err(Failure::new(
            "a user's comment cannot hold `:` or line breaks: they would break /etc/passwd",
        ));
    }
    let current = accounts::passwd(ctx, name)?;
    let mut differences = Differences::default();
    match (spec.ensure, current) {
        (Presence::Absent, None) => Ok(Outcome::in_sync()),
        (Presence::Absent, Some(_)) => {
            if apply {
                run_tool(ctx, vec!["userdel".into(), name.into()])?;
            }
            Ok(Outcome::differs(apply, "exists and should be absent"))
        }
        (Presence::Present, None) => {
            differences.push("missing");
            if !apply {
                return Ok(Outcome::drifted(differences.message()));
            }
            run_tool(ctx, useradd_argv(spec))?;
            let entry = accounts::passwd(ctx, name)?.ok_or_else(|| {
                Failure::new(format!(
                    "`useradd` succeeded but user `{name}` does not exist"
                ))
            })?;
            let diff = authorized_keys(spec, ctx, apply, &entry, &mut differences)?;
            Ok(Outcome::changed(differences.message()).with_diff(diff))
        }
        (Presence::Present, Some(mut entry)) => {
            let usermod = usermod_argv(spec, ctx, &entry, &mut differences)?;
            if apply && let Some(argv) = usermod {
                run_tool(ctx, argv)?;
                entry = accounts::passwd(ctx, name)?.ok_or_else(|| {
                    Failure::new(format!("user `{name}` vanished during `usermod`"))
                })?;
            }
            let diff = authorized_keys(spec, ctx, apply, &entry, &mut differences)?;
            if differences.is_empty() {
                Ok(Outcome::in_sync())
            } else {
                Ok(Outcome::differs(apply, differences.message()).with_diff(diff))
            }
        }
    }
}

fn useradd_argv(spec: &UserSpec) -> Vec<String> {
    let mut argv = vec!["useradd".to_string()];
    if spec.system {
        argv.push("-r".into());
    }
    if !spec.system || !spec.authorized_keys.is_empty() {
        argv.push("-m".into());
    }
    if let Some(uid) = spec.uid {
        argv.extend(["-u".to_string(), uid.to_string()]);
    }
    if let Some(group) = &spec.group {
        argv.extend(["-g".to_string(), group.clone()]);
    }
    if !spec.groups.is_empty() {
        argv.extend(["-G".to_string(), spec.groups.join(",")]);
    }
    if let Some(home) = &spec.home {
        argv.extend(["-d".to_string(), home.to_string()]);
    }
    if let Some(shell) = &spec.shell {
        argv.extend(["-s".to_string(), shell.to_string()]);
    }
    if let Some(comment) = &spec.comment {
        argv.extend(["-c".to_string(), comment.clone()]);
    }
    argv.push(spec.name.clone());
    argv
}

/// Compares an existing account with the spec; returns the `usermod` argv
/// that repairs it, if anything differs.
fn usermod_argv(
    spec: &UserSpec,
    ctx: &Context,
    entry: &PasswdEntry,
    differences: &mut Differences,
) -> Result<Option<Vec<String>>, Failure> {
    let mut args: Vec<String> = Vec::new();
    if let Some(uid) = spec.uid
        && uid != entry.uid
    {
        differences.push(format!("uid {} → {uid}", entry.uid));
        args.extend(["-u".to_string(), uid.to_string()]);
    }
    if let Some(group) = &spec.group {
        let same = match accounts::group(ctx, group)? {
            Some(found) => found.gid == entry.gid,
            None => false,
        };
        if !same {
            differences.push(format!("primary group gid {} → `{group}`", entry.gid));
            args.extend(["-g".to_string(), group.clone()]);
        }
    }
    let mut missing_groups = Vec::new();
    for group in &spec.groups {
        let member = match accounts::group(ctx, group)? {
            Some(found) => found.gid == entry.gid || found.members.contains(&entry.name),
            None => false,
        };
        if !member {
            missing_groups.push(group.clone());
        }
    }
    if !missing_groups.is_empty() {
        differences.push(format!(
            "not in group{} {}",
            if missing_groups.len() == 1 { "" } else { "s" },
            missing_groups
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        args.extend(["-a".to_string(), "-G".to_string(), missing_groups.join(",")]);
    }
    for (flag, label, want, have) in [
        (
            "-d",
            "home",
            spec.home.as_ref().map(|h| h.to_string()),
            &entry.home,
        ),
        (
            "-s",
            "shell",
            spec.shell.as_ref().map(|s| s.to_string()),
            &entry.shell,
        ),
        ("-c", "comment", spec.comment.clone(), &entry.gecos),
    ] {
        if let Some(want) = want
            && &want != have
        {
            differences.push(format!("{label} `{have}` → `{want}`"));
            args.extend([flag.to_string(), want]);
        }
    }
    if args.is_empty() {
        return Ok(None);
    }
    let mut argv = vec!["usermod".to_string()];
    argv.append(&mut args);
    argv.push(spec.name.clone());
    Ok(Some(argv))
}

/// Checks (and with `apply`, writes) `~/.ssh/authorized_keys`; adds what
/// differs to `differences` and returns the diff.
fn authorized_keys(
    spec: &UserSpec,
    ctx: &Context,
    apply: bool,
    entry: &PasswdEntry,
    differences: &mut Differences,
) -> Result<Option<String>, Failure> {
    if spec.authorized_keys.is_empty() {
        return Ok(None);
    }
    if let Some(key) = spec
        .authorized_keys
        .iter()
        .find(|key| key.contains(['\n', '\r']))
    {
        return Err(Failure::new(format!(
            "an authorized key holds a line break: give one key per entry (`{}`…)",
            key.chars().take(20).collect::<String>()
        )));
    }
    let home = entry.home.trim_end_matches('/');
    let ssh_dir = ctx.host_path(&format!("{home}/.ssh"))?;
    if !ssh_dir.missing_parents.is_empty()
        || !paths::lstat(ssh_dir.parent())?.is_some_and(|meta| meta.is_dir())
    {
        return Err(Failure::new(format!(
            "home directory `{home}` of user `{}` does not exist: create it (a `directory` resource) before adding keys",
            entry.name
        )));
    }
    match paths::lstat(&ssh_dir.path)? {
        Some(meta) if meta.file_type().is_dir() => {}
        Some(meta) => {
            return Err(Failure::new(format!(
                "refusing `{home}/.ssh`: it is {}",
                paths::describe_kind(&ssh_dir.path, &meta)
            )));
        }
        None if !apply => {
            differences.push("authorized_keys missing (with `~/.ssh`)");
            return Ok(None);
        }
        None => {
            let ssh_dir = ctx.recheck(&ssh_dir)?;
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&ssh_dir.path)
                .map_err(Failure::io(format!("could not create `{home}/.ssh`")))?;
            let created = paths::lstat(&ssh_dir.path)?
                .ok_or_else(|| Failure::new(format!("`{home}/.ssh` vanished")))?;
            let handle = paths::open_verified(&ssh_dir.path, &created)?;
            paths::set_owner_and_mode(
                &handle,
                Some(entry.uid),
                Some(entry.gid),
                Some(0o700),
                &ssh_dir.declared,
            )?;
            paths::fsync_dir(ssh_dir.parent())?;
        }
    }
    let mut content = spec.authorized_keys.join("\n");
    content.push('\n');
    let path = format!("{home}/.ssh/authorized_keys")
        .parse()
        .map_err(|err| {
            Failure::new(format!(
                "home directory `{home}` is not a usable path: {err}"
            ))
        })?;
    let keys_file = FileSpec {
        path,
        content: Some(content),
        mode: FileMode::new(0o600),
        owner: Some(entry.uid.to_string()),
        group: Some(entry.gid.to_string()),
        ..FileSpec::default()
    };
    let outcome = keys_file.check_apply(ctx, apply);
    match outcome.status {
        ResourceStatus::InSync => Ok(None),
        ResourceStatus::Changed | ResourceStatus::Drifted => {
            differences.push(format!(
                "authorized_keys {}",
                outcome.message.unwrap_or_default()
            ));
            Ok(outcome.diff)
        }
        ResourceStatus::Failed | ResourceStatus::Skipped => Err(Failure::new(format!(
            "authorized_keys: {}",
            outcome.message.unwrap_or_default()
        ))),
    }
}
