//! Compliance checks: each check's command runs, and passes when it exits
//! with the expected code and, if asked, its output contains the expected
//! text. Checks only look; they never change the host.
//!
//! Under a sandbox root a check runs like an `exec` resource does: with
//! `MUSTER_ROOT` set and the root as working directory. A check that needs
//! the real host (`sshd -T`) fails there, which is reported as it is.

use muster_schemas::bundle::BundleCheck;
use muster_schemas::protocol::CheckReport;

use crate::command::{Command, Termination};
use crate::resources::Context;

/// How much of a check's output a report carries.
pub const CHECK_OUTPUT_LIMIT: usize = 4096;

/// Runs every check, in bundle order.
pub fn run_checks(checks: &[BundleCheck], ctx: &Context) -> Vec<CheckReport> {
    checks.iter().map(|check| run_check(check, ctx)).collect()
}

fn run_check(item: &BundleCheck, ctx: &Context) -> CheckReport {
    let check = &item.check;
    let (passed, output) = match judge(item, ctx) {
        Ok(result) => result,
        Err(message) => (false, message),
    };
    CheckReport {
        policy: item.policy.clone(),
        name: check.name.clone(),
        passed,
        output,
    }
}

fn judge(item: &BundleCheck, ctx: &Context) -> Result<(bool, String), String> {
    let check = &item.check;
    let mut command = if check.shell {
        let script = check.command.first().ok_or("the check has no command")?;
        Command::shell(script.clone())
    } else {
        Command::new(check.command.clone())
    };
    command = command
        .search_path(ctx.search_path.clone())
        .timeout(check.timeout.get());
    if let Some(root) = &ctx.root {
        command = command.env("MUSTER_ROOT", root.to_string_lossy()).cwd(root);
    }
    let output = command
        .run()
        .map_err(|err| format!("cannot run `{}`: {err}", command.display()))?;
    let summary = output.summary(CHECK_OUTPUT_LIMIT).trim_start().to_string();
    let exit_ok = output.termination == Termination::Exited(check.expect_exit_code);
    let text_ok = check
        .expect_output
        .as_ref()
        .is_none_or(|wanted| output.stdout.contains(wanted.as_str()));
    let passed = exit_ok && text_ok;
    let verdict = match (&output.termination, exit_ok, text_ok) {
        (Termination::TimedOut(_), _, _) => format!("timed out after {}", check.timeout),
        (_, false, _) => format!(
            "exited with {}, expected {}",
            output
                .code()
                .map_or_else(|| "a signal".to_string(), |code| code.to_string()),
            check.expect_exit_code
        ),
        (_, true, false) => format!(
            "output does not contain `{}`",
            check.expect_output.as_deref().unwrap_or_default()
        ),
        (_, true, true) => "passed".to_string(),
    };
    let output = if summary.is_empty() {
        verdict
    } else {
        format!("{verdict}\n{summary}")
    };
    Ok((passed, output))
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::model::CheckSpec;

    fn check(command: &[&str], shell: bool, expect_output: Option<&str>) -> BundleCheck {
        BundleCheck {
            policy: "p".into(),
            check: CheckSpec {
                name: "c".into(),
                command: command.iter().map(|s| s.to_string()).collect(),
                shell,
                expect_output: expect_output.map(str::to_string),
                timeout: "5s".parse().unwrap(),
                ..CheckSpec::default()
            },
        }
    }

    #[test]
    fn checks_pass_and_fail_by_exit_code_and_output() {
        let ctx = Context::new();
        let reports = run_checks(
            &[
                check(&["true"], false, None),
                check(&["false"], false, None),
                check(
                    &["echo", "permitrootlogin no"],
                    false,
                    Some("permitrootlogin no"),
                ),
                check(
                    &["echo", "permitrootlogin yes"],
                    false,
                    Some("permitrootlogin no"),
                ),
                check(&["echo $((6 * 7))"], true, Some("42")),
                check(&["/nonexistent/program"], false, None),
            ],
            &ctx,
        );
        let passed: Vec<bool> = reports.iter().map(|r| r.passed).collect();
        assert_eq!(passed, [true, false, true, false, true, false]);
        assert!(
            reports[1].output.starts_with("exited with 1, expected 0"),
            "{}",
            reports[1].output
        );
        assert!(
            reports[3].output.starts_with("output does not contain"),
            "{}",
            reports[3].output
        );
        assert!(
            reports[5].output.starts_with("cannot run"),
            "{}",
            reports[5].output
        );
    }

    #[test]
    fn check_output_is_bounded_and_timeouts_fail() {
        let ctx = Context::new();
        let mut slow = check(&["sleep 5"], true, None);
        slow.check.timeout = "1s".parse().unwrap();
        let loud = check(&["head -c 100000 /dev/zero | tr '\\0' x"], true, None);
        let reports = run_checks(&[slow, loud], &ctx);
        assert!(!reports[0].passed);
        assert!(
            reports[0].output.starts_with("timed out"),
            "{}",
            reports[0].output
        );
        assert!(reports[1].passed);
        assert!(
            reports[1].output.len() < CHECK_OUTPUT_LIMIT + 200,
            "{}",
            reports[1].output.len()
        );
    }
}
