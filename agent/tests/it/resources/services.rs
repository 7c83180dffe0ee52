//! The service resource through a stand-in `systemctl` that records its
//! argv and keeps unit state in files (no systemd here): the timeline,
//! restarts on `restart_on`, and the sandbox.

use std::fs;

use muster_agent::resources::{CheckApply, SANDBOXED, converge};
use muster_schemas::model::{FileSpec, PolicyMode, Resource, ServiceSpec, ServiceState};
use muster_schemas::protocol::ResourceStatus;

use crate::support::{StandIns, TempDir, argv, assert_timeline, bundle};

/// `systemctl` over `$STATE/UNIT.active` and `$STATE/UNIT.enabled`.
fn systemctl() -> StandIns {
    let tools = StandIns::new("systemctl");
    tools.tool(
        "systemctl",
        r#"unit=$2
case "$1" in
  is-active) if [ -e "$STATE/$unit.active" ]; then echo active; else echo inactive; exit 3; fi ;;
  is-enabled) if [ -e "$STATE/$unit.enabled" ]; then echo enabled; else echo disabled; exit 1; fi ;;
  start|restart) touch "$STATE/$unit.active"; echo "$1" >> "$STATE/$unit.history" ;;
  stop) rm -f "$STATE/$unit.active" ;;
  enable) touch "$STATE/$unit.enabled" ;;
  disable) rm -f "$STATE/$unit.enabled" ;;
  *) echo "unknown command $1" >&2; exit 1 ;;
esac"#,
    );
    tools
}

fn nginx(restart_on: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: "nginx".into(),
        state: Some(ServiceState::Running),
        enabled: Some(true),
        restart_on: restart_on.iter().map(|id| id.to_string()).collect(),
        ..ServiceSpec::default()
    }
}

#[test]
fn service_timeline() {
    let tools = systemctl();
    let ctx = tools.context();
    let state = tools.state();
    let resource = Resource::Service(nginx(&[]));
    let observe = || {
        format!(
            "active={} enabled={}",
            state.join("nginx.active").exists(),
            state.join("nginx.enabled").exists()
        )
    };
    let timeline = assert_timeline(
        &ctx,
        &resource,
        &|| {
            tools.take_log();
            fs::remove_file(state.join("nginx.active")).unwrap();
        },
        &observe,
    );
    assert_eq!(
        timeline.first.message.as_deref(),
        Some("not running; not enabled")
    );
    assert_eq!(timeline.drifted.message.as_deref(), Some("not running"));
    let is_active = argv(&["systemctl", "is-active", "nginx"]);
    let is_enabled = argv(&["systemctl", "is-enabled", "nginx"]);
    assert_eq!(
        tools.take_log(),
        vec![
            is_active.clone(), // dry run
            is_enabled.clone(),
            is_active.clone(), // audit
            is_enabled.clone(),
            is_active.clone(), // repair
            is_enabled.clone(),
            argv(&["systemctl", "start", "nginx"]),
            is_active.clone(), // in sync
            is_enabled.clone(),
        ]
    );
}

#[test]
fn stopped_and_disabled() {
    let tools = systemctl();
    let ctx = tools.context();
    fs::write(tools.state().join("cups.active"), "").unwrap();
    fs::write(tools.state().join("cups.enabled"), "").unwrap();
    let spec = ServiceSpec {
        name: "cups".into(),
        state: Some(ServiceState::Stopped),
        enabled: Some(false),
        ..ServiceSpec::default()
    };
    let outcome = spec.check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Changed);
    assert_eq!(
        tools.take_changes(&["is-active", "is-enabled"]),
        vec![
            argv(&["systemctl", "stop", "cups"]),
            argv(&["systemctl", "disable", "cups"]),
        ]
    );
    assert_eq!(spec.check_apply(&ctx, true).status, ResourceStatus::InSync);
}

#[test]
fn restart_when_a_named_resource_changed() {
    let tools = systemctl();
    let ctx = tools.context();
    let dir = TempDir::new("service-restart");
    let conf = dir.join("nginx.conf");
    let file = |content: &str| {
        Resource::File(FileSpec {
            path: conf.parse().unwrap(),
            content: Some(content.into()),
            ..FileSpec::default()
        })
    };
    let conf_id = format!("file:{conf}");
    let service = Resource::Service(nginx(&[&conf_id]));
    let desired = |content: &str, mode| {
        bundle(vec![
            (file(content), mode),
            (service.clone(), PolicyMode::Enforce),
        ])
    };
    let statuses = |reports: &[muster_schemas::protocol::ResourceReport]| {
        reports.iter().map(|r| r.status).collect::<Vec<_>>()
    };

    // First run: the file is created and the service started; a unit that
    // was just started is not restarted as well.
    let reports = converge(&desired("v1\n", PolicyMode::Enforce), &ctx, false);
    assert_eq!(
        statuses(&reports),
        [ResourceStatus::Changed, ResourceStatus::Changed]
    );
    assert_eq!(
        tools.take_changes(&["is-active", "is-enabled"]),
        vec![
            argv(&["systemctl", "start", "nginx"]),
            argv(&["systemctl", "enable", "nginx"]),
        ]
    );
    // Nothing changed: no restart.
    let reports = converge(&desired("v1\n", PolicyMode::Enforce), &ctx, false);
    assert_eq!(
        statuses(&reports),
        [ResourceStatus::InSync, ResourceStatus::InSync]
    );
    assert!(tools.take_changes(&["is-active", "is-enabled"]).is_empty());

    // A dry run with a new configuration shows the restart it would make.
    let reports = converge(&desired("v2\n", PolicyMode::Enforce), &ctx, true);
    assert_eq!(
        statuses(&reports),
        [ResourceStatus::Drifted, ResourceStatus::Drifted]
    );
    assert_eq!(
        reports[1].message,
        Some(format!("restart because {conf_id} changed"))
    );
    assert!(tools.take_changes(&["is-active", "is-enabled"]).is_empty());

    // An audited configuration change does not change the file, so the
    // service has no reason to restart.
    let reports = converge(&desired("v2\n", PolicyMode::Audit), &ctx, false);
    assert_eq!(
        statuses(&reports),
        [ResourceStatus::Drifted, ResourceStatus::InSync]
    );
    assert!(tools.take_changes(&["is-active", "is-enabled"]).is_empty());

    // Applied: the file changes and the service restarts, once.
    let reports = converge(&desired("v2\n", PolicyMode::Enforce), &ctx, false);
    assert_eq!(
        statuses(&reports),
        [ResourceStatus::Changed, ResourceStatus::Changed]
    );
    assert_eq!(
        tools.take_changes(&["is-active", "is-enabled"]),
        vec![argv(&["systemctl", "restart", "nginx"])]
    );
    let reports = converge(&desired("v2\n", PolicyMode::Enforce), &ctx, false);
    assert_eq!(
        statuses(&reports),
        [ResourceStatus::InSync, ResourceStatus::InSync]
    );
    assert_eq!(
        fs::read_to_string(tools.state().join("nginx.history")).unwrap(),
        "start\nrestart\n"
    );
}

#[test]
fn services_are_skipped_in_a_sandbox() {
    let tools = systemctl();
    let root = TempDir::new("service-sandbox");
    let ctx = tools.context().with_root(root.path());
    for apply in [false, true] {
        let outcome = nginx(&[]).check_apply(&ctx, apply);
        assert_eq!(outcome.status, ResourceStatus::Skipped);
        assert_eq!(outcome.message.as_deref(), Some(SANDBOXED));
    }
    assert!(tools.take_log().is_empty());
}

#[test]
fn an_unknown_unit_fails_with_the_tool_output() {
    let tools = StandIns::new("systemctl-unknown");
    tools.tool(
        "systemctl",
        r#"echo "Failed to get unit file state for $2.service: No such file or directory" >&2; exit 1"#,
    );
    let spec = ServiceSpec {
        name: "nosuch".into(),
        enabled: Some(true),
        ..ServiceSpec::default()
    };
    let outcome = spec.check_apply(&tools.context(), false);
    assert_eq!(outcome.status, ResourceStatus::Failed);
    assert_eq!(
        outcome.message.as_deref(),
        Some(
            "`systemctl is-enabled nosuch` exited with code 1: is the unit installed?\nstderr:\nFailed to get unit file state for nosuch.service: No such file or directory"
        )
    );
}
