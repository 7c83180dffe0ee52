//! Users and groups as the system's name service sees them, read through
//! `getent` (so LDAP or SSSD accounts count too, and no `unsafe` call into
//! libc is needed), with a per-run cache of name → id lookups.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::{Context, Failure};

/// One `passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) gecos: String,
    pub(crate) home: String,
    pub(crate) shell: String,
}

/// One `group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub(crate) name: String,
    pub(crate) gid: u32,
    pub(crate) members: Vec<String>,
}

/// Name → id lookups made in this run. Only hits are kept: an account that
/// a later resource creates must be found then. User and group resources
/// clear it when they change an account.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    users: Mutex<HashMap<String, u32>>,
    groups: Mutex<HashMap<String, u32>>,
}

impl Cache {
    pub(crate) fn forget(&self) {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Whether `name` is a safe user or group name: it cannot be taken for an
/// option (`-x`) or break the colon-separated databases.
pub(crate) fn is_valid_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    !body.is_empty()
        && name.len() <= 32
        && !body.starts_with('-')
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), Failure> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "invalid {kind} name `{name}`: use letters, digits, `.`, `_` and `-`, not starting with `-`"
        )))
    }
}

/// Runs `getent DATABASE NAME`: `Ok(None)` when there is no such entry.
fn getent(ctx: &Context, database: &str, name: &str) -> Result<Option<Vec<String>>, Failure> {
    let output = ctx.command(["getent", database, name]).run()?;
    match output.code() {
        Some(0) => {
            let line = output.stdout.lines().next().unwrap_or_default();
            Ok(Some(line.split(':').map(str::to_string).collect()))
        }
        // getent: 2 means "not found".
        Some(2) => Ok(None),
        _ => Err(Failure::tool(
            &format!("getent {database} {name}"),
            &output,
            "",
        )),
    }
}

fn parse_id(field: Option<&String>, what: &str) -> Result<u32, Failure> {
    field
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| Failure::new(format!("`getent` printed a malformed {what}")))
}

pub(crate) fn passwd(ctx: &Context, name: &str) -> Result<Option<PasswdEntry>, Failure> {
    check_name("user", name)?;
    let Some(fields) = getent(ctx, "passwd", name)? else {
        return Ok(None);
    };
    let field = |n: usize| fields.get(n).cloned().unwrap_or_default();
    Ok(Some(PasswdEntry {
        name: field(0),
        uid: parse_id(fields.get(2), "uid")?,
        gid: parse_id(fields.get(3), "gid")?,
        gecos: field(4),
        home: field(5),
        shell: field(6),
    }))
}

pub(crate) fn group(ctx: &Context, name: &str) -> Result<Option<GroupEntry>, Failure> {
    check_name("group", name)?;
    let Some(fields) = getent(ctx, "group", name)? else {
        return Ok(None);
    };
    let members = fields
        .get(3)
        .map(|list| {
            list.split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(GroupEntry {
        name: fields.first().cloned().unwrap_or_default(),
        gid: parse_id(fields.get(2), "gid")?,
        members,
    }))
}

/// The uid of a user name (or of a number given as the name).
pub(crate) fn uid_of(ctx: &Context, name: &str) -> Result<u32, Failure> {
    if let Ok(uid) = name.parse() {
        return Ok(uid);
    }
    if let Some(uid) = ctx
        .accounts
        .users
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
    {
        return Ok(*uid);
    }
    let entry = passwd(ctx, name)?.ok_or_else(|| {
        Failure::new(format!(
            "unknown user `{name}`: create it with a `user` resource first, or fix the name"
        ))
    })?;
    ctx.accounts
        .users
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.to_string(), entry.uid);
    Ok(entry.uid)
}

/// The gid of a group name (or of a number given as the name).
pub(crate) fn gid_of(ctx: &Context, name: &str) -> Result<u32, Failure> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    if let Some(gid) = ctx
        .accounts
        .groups
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
    {
        return Ok(*gid);
    }
    let entry = group(ctx, name)?.ok_or_else(|| {
        Failure::new(format!(
            "unknown group `{name}`: create it with a `group` resource first, or fix the name"
        ))
    })?;
    ctx.accounts
        .groups
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(name.to_string(), entry.gid);
    Ok(entry.gid)
}

/// The owner and group a file or directory should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ownership {
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    /// Set in a sandbox when the spec names an owner or group: they are
    /// left alone there, and the report says so.
    pub(crate) note: Option<&'static str>,
}

/// Note added to reports of sandboxed files and directories that name an
/// owner or group.
pub(crate) const OWNERSHIP_SANDBOXED: &str = "owner and group are not managed in a sandbox";

/// Resolves a spec's `owner` and `group`. In a sandbox they are left
/// alone: they name accounts of the real host, which a sandbox does not
/// manage (user and group resources are skipped there), and an agent
/// sandboxed for tests or the quickstart runs unprivileged.
pub(crate) fn ownership(
    ctx: &Context,
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<Ownership, Failure> {
    if ctx.is_sandboxed() {
        let note = (owner.is_some() || group.is_some()).then_some(OWNERSHIP_SANDBOXED);
        return Ok(Ownership {
            note,
            ..Ownership::default()
        });
    }
    Ok(Ownership {
        uid: owner.map(|name| uid_of(ctx, name)).transpose()?,
        gid: group.map(|name| gid_of(ctx, name)).transpose()?,
        note: None,
    })
}

/// Runs an account tool (`useradd`, `groupdel`, …) and forgets cached ids,
/// which the tool may have changed.
pub(crate) fn run_tool(ctx: &Context, argv: Vec<String>) -> Result<(), Failure> {
    let command = ctx.command(argv);
    let shown = command.display();
    let output = command.run()?;
    ctx.accounts.forget();
    if output.success() {
        Ok(())
    } else {
        Err(Failure::tool(&shown, &output, ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_be_options_are_invalid() {
        for good in ["root", "www-data", "svc.app", "_apt", "host$"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "-r", "a b", "a:b", "a/b", "$", "a\nb", &"x".repeat(33)] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn real_lookups() {
        let ctx = Context::new();
        assert_eq!(uid_of(&ctx, "root").unwrap(), 0);
        assert_eq!(gid_of(&ctx, "root").unwrap(), 0);
        assert_eq!(uid_of(&ctx, "1234").unwrap(), 1234);
        let err = uid_of(&ctx, "muster-no-such-user").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown user `muster-no-such-user`: create it with a `user` resource first, or fix the name"
        );
        let root = passwd(&ctx, "root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid, root.name.as_str()), (0, 0, "root"));
    }
}
