//! The `group` resource: a local group, through `getent group`, `groupadd`,
//! `groupmod -g` and `groupdel`. Sub-checks: state → gid. The `system`
//! flag only matters when the group is created. In a sandbox, groups are
//! skipped.

use muster_schemas::model::{Presence, UnixGroupSpec};

use super::accounts::{self, run_tool};
use super::{CheckApply, Context, Failure, Outcome, SANDBOXED, outcome_of};

impl CheckApply for UnixGroupSpec {
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome {
        if ctx.is_sandboxed() {
            return Outcome::skipped(SANDBOXED);
        }
        outcome_of(check_apply(self, ctx, apply))
    }
}

fn check_apply(spec: &UnixGroupSpec, ctx: &Context, apply: bool) -> Result<Outcome, Failure> {
    let name = spec.name.as_str();
    let current = accounts::group(ctx, name)?;
    let (message, argv): (String, Vec<String>) = match (spec.ensure, current) {
        (Presence::Absent, None) => return Ok(Outcome::in_sync()),
        (Presence::Absent, Some(_)) => (
            "exists and should be absent".into(),
            vec!["groupdel".into(), name.into()],
        ),
        (Presence::Present, None) => {
            let mut argv = vec!["groupadd".to_string()];
            if spec.system {
                argv.push("-r".into());
            }
            if let Some(gid) = spec.gid {
                argv.extend(["-g".to_string(), gid.to_string()]);
            }
            argv.push(name.into());
            ("missing".into(), argv)
        }
        (Presence::Present, Some(entry)) => match spec.gid {
            Some(gid) if gid != entry.gid => (
                format!("gid {} → {gid}", entry.gid),
                vec!["groupmod".into(), "-g".into(), gid.to_string(), name.into()],
            ),
            _ => return Ok(Outcome::in_sync()),
        },
    };
    if apply {
        run_tool(ctx, argv)?;
    }
    Ok(Outcome::differs(apply, message))
}
