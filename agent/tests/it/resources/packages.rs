//! The package resource through stand-in `dpkg-query`, `apt-get` and
//! `apt-cache` that record their argv, plus real `dpkg-query` lookups on
//! this machine (read only: nothing is ever installed here).

use std::fs;

use muster_agent::resources::{CheckApply, Context, PackageManager, SANDBOXED};
use muster_schemas::model::{PackageEnsure, PackageSpec, Resource};
use muster_schemas::protocol::ResourceStatus;

use crate::support::{StandIns, TempDir, argv, assert_timeline};

/// apt tools over a state directory holding one file per installed
/// package (its version) and optional `candidate-NAME` files.
fn apt_stand_ins() -> StandIns {
    let tools = StandIns::new("apt");
    tools.tool(
        "dpkg-query",
        r#"for name; do :; done
if [ -f "$STATE/pkg-$name" ]; then printf 'install ok installed %s' "$(cat "$STATE/pkg-$name")"; exit 0; fi
echo "dpkg-query: no packages found matching $name" >&2
exit 1"#,
    );
    tools.tool(
        "apt-get",
        r#"[ "$DEBIAN_FRONTEND" = noninteractive ] || { echo "interactive!" >&2; exit 100; }
for last; do :; done
case "$1" in
  install)
    name=${last%%=*}
    case "$last" in
      *=*) version=${last#*=} ;;
      *) version=$(cat "$STATE/candidate-$name" 2>/dev/null || echo 1.0) ;;
    esac
    printf '%s' "$version" > "$STATE/pkg-$name" ;;
  remove) rm -f "$STATE/pkg-$last" ;;
  *) exit 100 ;;
esac"#,
    );
    tools.tool(
        "apt-cache",
        r#"printf '%s:\n  Installed: %s\n  Candidate: %s\n' "$2" "$(cat "$STATE/pkg-$2" 2>/dev/null || echo '(none)')" "$(cat "$STATE/candidate-$2" 2>/dev/null || echo 1.0)""#,
    );
    tools
}

const INSTALL: &[&str] = &[
    "apt-get",
    "install",
    "-y",
    "-q",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
];

fn install(tail: &[&str]) -> Vec<String> {
    let mut words = INSTALL.to_vec();
    words.extend(tail);
    argv(&words)
}

fn package(name: &str, ensure: PackageEnsure, version: Option<&str>) -> PackageSpec {
    PackageSpec {
        name: name.into(),
        ensure,
        version: version.map(str::to_string),
        ..PackageSpec::default()
    }
}

#[test]
fn package_timeline_through_apt() {
    let tools = apt_stand_ins();
    let ctx = tools.context();
    assert_eq!(ctx.package_manager(), Some(PackageManager::Apt));
    let installed = tools.state().join("pkg-nginx");
    let resource = Resource::Package(package("nginx", PackageEnsure::Present, None));
    let timeline = assert_timeline(
        &ctx,
        &resource,
        &|| {
            tools.take_log();
            fs::remove_file(&installed).unwrap();
        },
        &|| fs::read_to_string(&installed).unwrap_or_else(|_| "absent".into()),
    );
    assert_eq!(
        timeline.first.message.as_deref(),
        Some("not installed; now 1.0")
    );
    assert_eq!(timeline.drifted.message.as_deref(), Some("not installed"));
    // After tampering: dry run and audit only queried; the repair installed.
    let log = tools.take_log();
    let query = argv(&["dpkg-query", "-W", "-f", "${Status} ${Version}", "nginx"]);
    assert_eq!(
        log,
        vec![
            query.clone(), // dry run
            query.clone(), // audit
            query.clone(), // repair: check
            install(&["nginx"]),
            query.clone(), // repair: verify
            query.clone(), // repair: the version now
            query.clone(), // the in-sync run
        ]
    );
}

#[test]
fn pinned_latest_and_absent_packages() {
    let tools = apt_stand_ins();
    let ctx = tools.context();
    fs::write(tools.state().join("pkg-nginx"), "1.0").unwrap();

    let pinned = package("nginx", PackageEnsure::Present, Some("2.0"));
    let outcome = pinned.check_apply(&ctx, false);
    assert_eq!(outcome.status, ResourceStatus::Drifted);
    assert_eq!(
        outcome.message.as_deref(),
        Some("installed at 1.0, should be 2.0")
    );
    let outcome = pinned.check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Changed, "{outcome:?}");
    assert_eq!(
        tools.take_changes(&[]),
        vec![install(&["--allow-downgrades", "nginx=2.0"])]
    );
    assert_eq!(
        pinned.check_apply(&ctx, true).status,
        ResourceStatus::InSync
    );

    fs::write(tools.state().join("candidate-nginx"), "3.0").unwrap();
    let latest = package("nginx", PackageEnsure::Latest, None);
    let outcome = latest.check_apply(&ctx, false);
    assert_eq!(
        outcome.message.as_deref(),
        Some("upgrade available: 2.0 → 3.0")
    );
    let outcome = latest.check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Changed, "{outcome:?}");
    assert_eq!(tools.take_changes(&[]), vec![install(&["nginx"])]);
    assert_eq!(
        latest.check_apply(&ctx, true).status,
        ResourceStatus::InSync
    );

    let absent = package("nginx", PackageEnsure::Absent, None);
    let outcome = absent.check_apply(&ctx, true);
    assert_eq!(
        outcome.message.as_deref(),
        Some("installed (3.0) and should be absent")
    );
    assert_eq!(
        tools.take_changes(&[]),
        vec![argv(&["apt-get", "remove", "-y", "-q", "nginx"])]
    );
    assert_eq!(
        absent.check_apply(&ctx, true).status,
        ResourceStatus::InSync
    );
}

#[test]
fn a_tool_that_does_not_deliver_is_a_failure() {
    let tools = apt_stand_ins();
    // apt-get that claims success and installs nothing.
    tools.tool("apt-get", "exit 0");
    let ctx = tools.context();
    let outcome = package("nginx", PackageEnsure::Present, None).check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Failed);
    assert!(
        outcome
            .message
            .as_deref()
            .unwrap()
            .ends_with("succeeded but the package is still not as desired: not installed"),
        "{outcome:?}"
    );
}

#[test]
fn option_like_package_names_never_reach_the_tools() {
    let tools = apt_stand_ins();
    let ctx = tools.context();
    let outcome =
        package("-oAPT::Get::Foo=1", PackageEnsure::Present, None).check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Failed);
    assert!(tools.take_log().is_empty());
}

#[test]
fn packages_are_skipped_in_a_sandbox() {
    let tools = apt_stand_ins();
    let root = TempDir::new("package-sandbox");
    let ctx = tools.context().with_root(root.path());
    for apply in [false, true] {
        let outcome = package("nginx", PackageEnsure::Present, None).check_apply(&ctx, apply);
        assert_eq!(outcome.status, ResourceStatus::Skipped);
        assert_eq!(outcome.message.as_deref(), Some(SANDBOXED));
    }
    assert!(
        tools.take_log().is_empty(),
        "a sandbox runs no package tool"
    );
}

#[test]
fn no_package_manager_is_a_failure() {
    let tools = StandIns::new("no-package-manager");
    let outcome =
        package("nginx", PackageEnsure::Present, None).check_apply(&tools.context(), false);
    assert_eq!(outcome.status, ResourceStatus::Failed);
    assert_eq!(
        outcome.message.as_deref(),
        Some("no supported package manager found: packages need apt/dpkg or dnf/rpm")
    );
}

/// The real `dpkg-query` of this Debian machine, read only: checks and dry
/// runs never install anything.
#[test]
fn real_dpkg_query_lookups() {
    let ctx = Context::new();
    if ctx.package_manager() != Some(PackageManager::Apt) {
        eprintln!("skipped: this machine has no dpkg-query and apt-get");
        return;
    }
    let coreutils = package("coreutils", PackageEnsure::Present, None);
    let outcome = coreutils.check_apply(&ctx, false);
    assert_eq!(outcome.status, ResourceStatus::InSync, "{outcome:?}");

    let missing = package("muster-no-such-package-4711", PackageEnsure::Present, None);
    let outcome = missing.check_apply(&ctx, false);
    assert_eq!(outcome.status, ResourceStatus::Drifted, "{outcome:?}");
    assert_eq!(outcome.message.as_deref(), Some("not installed"));

    let absent = package("muster-no-such-package-4711", PackageEnsure::Absent, None);
    assert_eq!(
        absent.check_apply(&ctx, false).status,
        ResourceStatus::InSync
    );

    let wrong_pin = package("coreutils", PackageEnsure::Present, Some("0.0-muster"));
    let outcome = wrong_pin.check_apply(&ctx, false);
    assert_eq!(outcome.status, ResourceStatus::Drifted, "{outcome:?}");
    assert!(
        outcome
            .message
            .as_deref()
            .unwrap()
            .ends_with(", should be 0.0-muster"),
        "{outcome:?}"
    );
}
