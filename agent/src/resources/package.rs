//! The `package` resource, through the host's own package tools: apt/dpkg
//! or dnf/rpm, detected by which tools are on the search path.
//!
//! | | apt/dpkg | dnf/rpm |
//! |---|---|---|
//! | check | `dpkg-query -W -f '${Status} ${Version}' NAME` | `rpm -q --qf '%{VERSION}-%{RELEASE}\n' NAME` |
//! | newest (`latest`) | `apt-cache policy NAME` (the candidate) | `dnf -q check-update NAME` (exit 100) |
//! | install, upgrade | `apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold NAME[=VERSION]` | `dnf install -y -q NAME[-VERSION]`, `dnf upgrade -y -q NAME` |
//! | remove | `apt-get remove -y -q NAME` | `dnf remove -y -q NAME` |
//!
//! apt runs with `DEBIAN_FRONTEND=noninteractive` and keeps locally changed
//! configuration files; a pinned version may be a downgrade
//! (`--allow-downgrades`). Package lists are not refreshed (`apt-get
//! update`): that is the host's schedule, not each run's. After a change the
//! package is queried again, and a tool that claimed success without
//! reaching the desired state is a failure. In a sandbox, packages are
//! skipped.

use std::ffi::OsStr;

use muster_schemas::model::{PackageEnsure, PackageSpec};

use crate::command::{Command, find_program};

use super::{CheckApply, Context, Failure, Outcome, SANDBOXED, outcome_of};

/// The package tools in use on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    /// Debian and derivatives: `dpkg-query`, `apt-get`, `apt-cache`.
    Apt,
    /// Fedora, RHEL and derivatives: `rpm`, `dnf`.
    Dnf,
}

impl PackageManager {
    /// The manager whose tools are on the search path (see
    /// [`find_program`]), apt first.
    pub fn detect(search_path: Option<&OsStr>) -> Option<PackageManager> {
        let present = |tool: &str| find_program(tool, search_path).is_some();
        if present("dpkg-query") && present("apt-get") {
            Some(PackageManager::Apt)
        } else if present("rpm") && present("dnf") {
            Some(PackageManager::Dnf)
        } else {
            None
        }
    }
}

impl CheckApply for PackageSpec {
    fn check_apply(&self, ctx: &Context, apply: bool) -> Outcome {
        if ctx.is_sandboxed() {
            return Outcome::skipped(SANDBOXED);
        }
        outcome_of(check_apply(self, ctx, apply))
    }
}

/// What is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Installed {
    No,
    Yes(String),
}

fn check_apply(spec: &PackageSpec, ctx: &Context, apply: bool) -> Result<Outcome, Failure> {
    check_word("package name", &spec.name)?;
    if let Some(version) = &spec.version {
        check_word("package version", version)?;
    }
    let manager = ctx.package_manager().ok_or_else(|| {
        Failure::new("no supported package manager found: packages need apt/dpkg or dnf/rpm")
    })?;
    let Some((difference, action)) = compare(ctx, manager, spec)? else {
        return Ok(Outcome::in_sync());
    };
    if !apply {
        return Ok(Outcome::drifted(difference));
    }
    let command = action.command(ctx, manager, spec);
    let shown = command.display();
    let output = command.run()?;
    if !output.success() {
        return Err(Failure::tool(&shown, &output, ""));
    }
    // Trust, then verify: apt and dnf can succeed without installing what
    // was asked (a held package, a repository without that version).
    if let Some((still, _)) = compare(ctx, manager, spec)? {
        return Err(Failure::new(format!(
            "`{shown}` succeeded but the package is still not as desired: {still}"
        )));
    }
    let now = match query(ctx, manager, &spec.name)? {
        Installed::Yes(version) => format!("; now {version}"),
        Installed::No => String::new(),
    };
    Ok(Outcome::changed(format!("{difference}{now}")))
}

/// What to run to repair a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Install,
    Upgrade,
    Remove,
}

impl Action {
    fn command(self, ctx: &Context, manager: PackageManager, spec: &PackageSpec) -> Command {
        let name = &spec.name;
        let pinned = spec
            .version
            .as_deref()
            .filter(|_| spec.ensure == PackageEnsure::Present);
        match manager {
            PackageManager::Apt => {
                let apt = |args: &[&str]| {
                    ctx.command(["apt-get"])
                        .env("DEBIAN_FRONTEND", "noninteractive")
                        .env("LC_ALL", "C")
                        .args(args.iter().copied())
                };
                let keep_config = [
                    "-o",
                    "Dpkg::Options::=--force-confdef",
                    "-o",
                    "Dpkg::Options::=--force-confold",
                ];
                match (self, pinned) {
                    (Action::Remove, _) => apt(&["remove", "-y", "-q", name]),
                    (_, Some(version)) => {
                        let mut args = vec!["install", "-y", "-q"];
                        args.extend(keep_config);
                        args.push("--allow-downgrades");
                        let spec = format!("{name}={version}");
                        apt(&args).arg(spec)
                    }
                    (Action::Install | Action::Upgrade, None) => {
                        let mut args = vec!["install", "-y", "-q"];
                        args.extend(keep_config);
                        args.push(name);
                        apt(&args)
                    }
                }
            }
            PackageManager::Dnf => {
                let dnf = |args: &[&str]| {
                    ctx.command(["dnf"])
                        .env("LC_ALL", "C")
                        .args(args.iter().copied())
                };
                match (self, pinned) {
                    (Action::Remove, _) => dnf(&["remove", "-y", "-q", name]),
                    (_, Some(version)) => {
                        dnf(&["install", "-y", "-q"]).arg(format!("{name}-{version}"))
                    }
                    (Action::Upgrade, None) => dnf(&["upgrade", "-y", "-q", name]),
                    (Action::Install, None) => dnf(&["install", "-y", "-q", name]),
                }
            }
        }
    }
}

/// What differs, and the action that repairs it; `None` when in sync.
fn compare(
    ctx: &Context,
    manager: PackageManager,
    spec: &PackageSpec,
) -> Result<Option<(String, Action)>, Failure> {
    let installed = query(ctx, manager, &spec.name)?;
    Ok(match (spec.ensure, installed) {
        (PackageEnsure::Absent, Installed::No) => None,
        (PackageEnsure::Absent, Installed::Yes(version)) => Some((
            format!("installed ({version}) and should be absent"),
            Action::Remove,
        )),
        (PackageEnsure::Present | PackageEnsure::Latest, Installed::No) => {
            Some(("not installed".to_string(), Action::Install))
        }
        (PackageEnsure::Present, Installed::Yes(version)) => match &spec.version {
            Some(want) if !version_matches(manager, &version, want) => Some((
                format!("installed at {version}, should be {want}"),
                Action::Install,
            )),
            _ => None,
        },
        (PackageEnsure::Latest, Installed::Yes(version)) => {
            newer_available(ctx, manager, &spec.name, &version)?.map(|newer| {
                (
                    format!("upgrade available: {version} → {newer}"),
                    Action::Upgrade,
                )
            })
        }
    })
}

/// dpkg versions match exactly; an rpm pin may leave out the release
/// (`1.24.0` matches `1.24.0-1.fc40`).
fn version_matches(manager: PackageManager, installed: &str, want: &str) -> bool {
    match manager {
        PackageManager::Apt => installed == want,
        PackageManager::Dnf => {
            installed == want
                || installed
                    .strip_prefix(want)
                    .is_some_and(|release| release.starts_with('-'))
        }
    }
}

fn query(ctx: &Context, manager: PackageManager, name: &str) -> Result<Installed, Failure> {
    let command = match manager {
        PackageManager::Apt => {
            ctx.command(["dpkg-query", "-W", "-f", "${Status} ${Version}", name])
        }
        PackageManager::Dnf => ctx.command(["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}\n", name]),
    }
    .env("LC_ALL", "C");
    let shown = command.display();
    let output = command.run()?;
    match (manager, output.code()) {
        (PackageManager::Apt, Some(0)) => Ok(parse_dpkg_status(&output.stdout)),
        // Exit 1: "no packages found matching NAME", or not installed.
        (_, Some(1)) => Ok(Installed::No),
        (PackageManager::Dnf, Some(0)) => Ok(output
            .stdout
            .lines()
            .next()
            .map_or(Installed::No, |version| {
                Installed::Yes(version.trim().to_string())
            })),
        _ => Err(Failure::tool(&shown, &output, "")),
    }
}

/// Parses `want flag status version` (`install ok installed 9.1-1`): only
/// the status `installed` counts; `config-files` and `half-installed` do
/// not.
fn parse_dpkg_status(text: &str) -> Installed {
    let mut words = text.split_whitespace();
    let status = words.nth(2);
    match (status, words.next()) {
        (Some("installed"), Some(version)) => Installed::Yes(version.to_string()),
        _ => Installed::No,
    }
}

/// The newer version the repositories offer, if any.
fn newer_available(
    ctx: &Context,
    manager: PackageManager,
    name: &str,
    installed: &str,
) -> Result<Option<String>, Failure> {
    match manager {
        PackageManager::Apt => {
            let command = ctx
                .command(["apt-cache", "policy", name])
                .env("LC_ALL", "C");
            let shown = command.display();
            let output = command.run()?;
            if !output.success() {
                return Err(Failure::tool(&shown, &output, ""));
            }
            let candidate = output
                .stdout
                .lines()
                .find_map(|line| line.trim().strip_prefix("Candidate:"))
                .map(str::trim);
            Ok(match candidate {
                Some(candidate) if candidate != "(none)" && candidate != installed => {
                    Some(candidate.to_string())
                }
                _ => None,
            })
        }
        PackageManager::Dnf => {
            let command = ctx
                .command(["dnf", "-q", "check-update", name])
                .env("LC_ALL", "C");
            let shown = command.display();
            let output = command.run()?;
            match output.code() {
                Some(0) => Ok(None),
                // dnf check-update: 100 means an update is available.
                Some(100) => Ok(Some(
                    output
                        .stdout
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("a newer version")
                        .to_string(),
                )),
                _ => Err(Failure::tool(&shown, &output, "")),
            }
        }
    }
}

/// Package names and versions are passed as arguments: refuse anything that
/// a tool could take for an option or that is not a plain word.
fn check_word(what: &str, word: &str) -> Result<(), Failure> {
    let valid = !word.is_empty()
        && !word.starts_with('-')
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+-_:~".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "invalid {what} `{word}`: use letters, digits and `.+-_:~`, not starting with `-`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lines() {
        assert_eq!(
            parse_dpkg_status("install ok installed 9.1-1"),
            Installed::Yes("9.1-1".into())
        );
        assert_eq!(
            parse_dpkg_status("hold ok installed 1:2.0"),
            Installed::Yes("1:2.0".into())
        );
        assert_eq!(
            parse_dpkg_status("deinstall ok config-files 1.0"),
            Installed::No
        );
        assert_eq!(
            parse_dpkg_status("unknown ok not-installed "),
            Installed::No
        );
        assert_eq!(parse_dpkg_status(""), Installed::No);
    }

    #[test]
    fn rpm_pins_may_leave_out_the_release() {
        assert!(version_matches(
            PackageManager::Dnf,
            "1.24.0-1.fc40",
            "1.24.0"
        ));
        assert!(version_matches(
            PackageManager::Dnf,
            "1.24.0-1.fc40",
            "1.24.0-1.fc40"
        ));
        assert!(!version_matches(PackageManager::Dnf, "1.24.01-1", "1.24.0"));
        assert!(!version_matches(PackageManager::Apt, "1.24.0-1", "1.24.0"));
    }

    #[test]
    fn option_like_names_are_refused() {
        assert!(check_word("package name", "nginx-full").is_ok());
        assert!(check_word("package name", "libc6:amd64").is_ok());
        for bad in ["", "-y", "a b", "a;b", "a/b"] {
            assert!(check_word("package name", bad).is_err(), "{bad}");
        }
    }
}
