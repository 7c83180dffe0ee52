//! `converge` over whole bundles: bundle order, dependants of failures,
//! audit mode next to enforce mode, and sandboxed kinds next to files.

use std::fs;
use std::os::unix::fs::symlink;

use muster_agent::resources::{Context, SANDBOXED, converge};
use muster_schemas::model::{
    DirectorySpec, FileSpec, PackageSpec, PolicyMode, Resource, ServiceSpec, ServiceState,
};
use muster_schemas::protocol::{ResourceReport, ResourceStatus};

use crate::support::{TempDir, bundle};

fn file(path: &str, content: &str, depends_on: &[&str]) -> Resource {
    Resource::File(FileSpec {
        path: path.parse().unwrap(),
        content: Some(content.into()),
        depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
        ..FileSpec::default()
    })
}

fn summary(reports: &[ResourceReport]) -> Vec<(String, ResourceStatus, Option<String>)> {
    reports
        .iter()
        .map(|r| (r.id.clone(), r.status, r.message.clone()))
        .collect()
}

#[test]
fn dependants_of_a_failure_are_skipped_not_the_run() {
    let root = TempDir::new("converge-deps");
    let outside = TempDir::new("converge-deps-outside");
    symlink(outside.path(), root.path().join("etc")).unwrap();
    let ctx = Context::new().with_root(root.path());
    let desired = bundle(vec![
        (file("/etc/broken.conf", "x\n", &[]), PolicyMode::Enforce),
        (
            file("/srv/a.conf", "a\n", &["file:/etc/broken.conf"]),
            PolicyMode::Enforce,
        ),
        (
            file("/srv/b.conf", "b\n", &["file:/srv/a.conf"]),
            PolicyMode::Enforce,
        ),
        (file("/srv/independent", "i\n", &[]), PolicyMode::Enforce),
    ]);
    let reports = converge(&desired, &ctx, false);
    let summary = summary(&reports);
    assert_eq!(summary[0].1, ResourceStatus::Failed);
    assert_eq!(
        summary[1..],
        [
            (
                "file:/srv/a.conf".to_string(),
                ResourceStatus::Skipped,
                Some("dependency file:/etc/broken.conf failed".to_string())
            ),
            (
                "file:/srv/b.conf".to_string(),
                ResourceStatus::Skipped,
                Some("dependency file:/srv/a.conf failed".to_string())
            ),
            (
                "file:/srv/independent".to_string(),
                ResourceStatus::Changed,
                Some("missing (with parent directories `/srv`)".to_string())
            ),
        ]
    );
    assert!(!root.path().join("srv/a.conf").exists());
    assert!(!root.path().join("srv/b.conf").exists());
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
}

#[test]
fn sandboxed_dependencies_are_not_failures() {
    let root = TempDir::new("converge-sandboxed");
    let ctx = Context::new().with_root(root.path());
    let desired = bundle(vec![
        (
            Resource::Package(PackageSpec {
                name: "nginx".into(),
                ..PackageSpec::default()
            }),
            PolicyMode::Enforce,
        ),
        (
            Resource::Directory(DirectorySpec {
                path: "/etc/nginx".parse().unwrap(),
                depends_on: vec!["package:nginx".into()],
                ..DirectorySpec::default()
            }),
            PolicyMode::Enforce,
        ),
        (
            file("/etc/nginx/nginx.conf", "events {}\n", &["package:nginx"]),
            PolicyMode::Enforce,
        ),
        (
            Resource::Service(ServiceSpec {
                name: "nginx".into(),
                state: Some(ServiceState::Running),
                restart_on: vec!["file:/etc/nginx/nginx.conf".into()],
                ..ServiceSpec::default()
            }),
            PolicyMode::Enforce,
        ),
    ]);
    let statuses: Vec<_> = converge(&desired, &ctx, false)
        .into_iter()
        .map(|r| (r.status, r.message))
        .collect();
    assert_eq!(
        statuses,
        [
            (ResourceStatus::Skipped, Some(SANDBOXED.to_string())),
            (
                ResourceStatus::Changed,
                Some("missing (with parent directories `/etc`)".to_string())
            ),
            (ResourceStatus::Changed, Some("missing".to_string())),
            (ResourceStatus::Skipped, Some(SANDBOXED.to_string())),
        ]
    );
}

#[test]
fn audit_resources_are_only_checked_next_to_enforced_ones() {
    let root = TempDir::new("converge-audit");
    let ctx = Context::new().with_root(root.path());
    fs::create_dir(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/audited"), "local edit\n").unwrap();
    let desired = bundle(vec![
        (file("/etc/audited", "desired\n", &[]), PolicyMode::Audit),
        (file("/etc/enforced", "desired\n", &[]), PolicyMode::Enforce),
    ]);
    let reports = converge(&desired, &ctx, false);
    assert_eq!(reports[0].status, ResourceStatus::Drifted);
    assert_eq!(reports[0].message.as_deref(), Some("content differs"));
    assert!(
        reports[0]
            .diff
            .as_deref()
            .unwrap()
            .contains("-local edit\n+desired\n")
    );
    assert_eq!(reports[1].status, ResourceStatus::Changed);
    assert_eq!(
        fs::read_to_string(root.path().join("etc/audited")).unwrap(),
        "local edit\n"
    );
    // A dry run changes nothing at all.
    fs::remove_file(root.path().join("etc/enforced")).unwrap();
    let reports = converge(&desired, &ctx, true);
    assert_eq!(reports[1].status, ResourceStatus::Drifted);
    assert!(!root.path().join("etc/enforced").exists());
}

#[test]
fn a_thousand_files_converge_and_then_are_a_no_op() {
    let root = TempDir::new("converge-many");
    let ctx = Context::new().with_root(root.path());
    let resources = (0..1000)
        .map(|n| {
            (
                file(&format!("/srv/d{}/f{n}", n % 10), &"x".repeat(1024), &[]),
                PolicyMode::Enforce,
            )
        })
        .collect();
    let desired = bundle(resources);
    let first = converge(&desired, &ctx, false);
    assert!(first.iter().all(|r| r.status == ResourceStatus::Changed));
    let second = converge(&desired, &ctx, false);
    assert!(second.iter().all(|r| r.status == ResourceStatus::InSync));
}
