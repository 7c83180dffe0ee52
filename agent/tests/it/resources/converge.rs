//! `converge` over whole bundles: bundle order, dependants of failures,
//! audit mode next to enforce mode, sandboxed kinds next to files, and file
//! writes whose fsyncs overlap yet look to every resource as if they had
//! been applied one at a time.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use muster_agent::resources::{Context, SANDBOXED, converge};
use muster_schemas::model::{
    DirectorySpec, ExecSpec, FileSpec, PackageSpec, PolicyMode, Resource, ServiceSpec, ServiceState,
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
    // Every file is in place with its mode, and no temporary file is left.
    for d in 0..10 {
        let mut names = entries(&root.path().join(format!("srv/d{d}")));
        names.sort();
        let mut expected: Vec<String> = (0..1000)
            .filter(|n| n % 10 == d)
            .map(|n| format!("f{n}"))
            .collect();
        expected.sort();
        assert_eq!(names, expected);
    }
    let meta = fs::metadata(root.path().join("srv/d3/f13")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    let second = converge(&desired, &ctx, false);
    assert!(second.iter().all(|r| r.status == ResourceStatus::InSync));
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn a_file_beneath_a_file_written_just_before_sees_it_in_place() {
    let root = TempDir::new("converge-nested");
    let ctx = Context::new().with_root(root.path());
    let desired = bundle(vec![
        (file("/srv/app", "a file\n", &[]), PolicyMode::Enforce),
        (
            file("/srv/app/conf", "beneath it\n", &[]),
            PolicyMode::Enforce,
        ),
    ]);
    let reports = converge(&desired, &ctx, false);
    assert_eq!(reports[0].status, ResourceStatus::Changed);
    assert_eq!(reports[1].status, ResourceStatus::Failed, "{reports:#?}");
    assert!(
        reports[1]
            .message
            .as_deref()
            .unwrap()
            .contains("its parent `/srv/app` exists and is not a directory"),
        "{reports:#?}"
    );
    assert_eq!(
        fs::read_to_string(root.path().join("srv/app")).unwrap(),
        "a file\n"
    );
}

#[test]
fn the_same_file_twice_is_written_in_bundle_order() {
    let root = TempDir::new("converge-twice");
    let ctx = Context::new().with_root(root.path());
    let desired = bundle(vec![
        (file("/srv/motd", "first\n", &[]), PolicyMode::Enforce),
        (file("/srv/motd", "second\n", &[]), PolicyMode::Enforce),
    ]);
    let reports = converge(&desired, &ctx, false);
    assert_eq!(
        summary(&reports),
        [
            (
                "file:/srv/motd".to_string(),
                ResourceStatus::Changed,
                Some("missing (with parent directories `/srv`)".to_string())
            ),
            (
                "file:/srv/motd".to_string(),
                ResourceStatus::Changed,
                Some("content differs".to_string())
            ),
        ]
    );
    assert_eq!(
        fs::read_to_string(root.path().join("srv/motd")).unwrap(),
        "second\n"
    );
}

#[test]
fn a_command_after_files_sees_them_written() {
    let root = TempDir::new("converge-exec-sees");
    let ctx = Context::new().with_root(root.path());
    let mut resources: Vec<(Resource, PolicyMode)> = (0..50)
        .map(|n| {
            (
                file(&format!("/etc/app/part{n}"), &format!("{n}\n"), &[]),
                PolicyMode::Enforce,
            )
        })
        .collect();
    resources.push((
        Resource::Exec(ExecSpec {
            name: "assemble".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "cat etc/app/part* | wc -l > etc/app/count".into(),
            ],
            creates: Some("/etc/app/count".parse().unwrap()),
            timeout: "10s".parse().unwrap(),
            ..ExecSpec::default()
        }),
        PolicyMode::Enforce,
    ));
    let reports = converge(&bundle(resources), &ctx, false);
    assert!(
        reports.iter().all(|r| r.status == ResourceStatus::Changed),
        "{reports:#?}"
    );
    assert_eq!(
        fs::read_to_string(root.path().join("etc/app/count"))
            .unwrap()
            .trim(),
        "50"
    );
}

#[test]
fn temporary_files_of_agents_that_died_are_removed_by_the_next_write() {
    let root = TempDir::new("converge-stale");
    let ctx = Context::new().with_root(root.path());
    let dir = root.path().join("etc");
    fs::create_dir(&dir).unwrap();
    // A process that has exited: its pid names no process any more.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!(".motd.muster-{dead}-3.tmp");
    let live = format!(".motd.muster-{}-999999.tmp", std::process::id());
    let lookalike = "motd.muster-1-1.tmp";
    for name in [stale.as_str(), live.as_str(), lookalike] {
        fs::write(dir.join(name), "partial").unwrap();
    }
    // A check, or a run that writes nothing there, leaves them alone.
    let desired = bundle(vec![(
        file("/etc/motd", "hello\n", &[]),
        PolicyMode::Enforce,
    )]);
    converge(&desired, &ctx, true);
    assert_eq!(entries(&dir).len(), 3);

    let reports = converge(&desired, &ctx, false);
    assert_eq!(reports[0].status, ResourceStatus::Changed);
    let mut names = entries(&dir);
    names.sort();
    let mut expected = vec![live.clone(), lookalike.to_string(), "motd".to_string()];
    expected.sort();
    assert_eq!(names, expected);
}
