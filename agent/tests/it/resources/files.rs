//! Timelines of the path resources (file, directory, symlink) in a sandbox
//! root, and the file details: atomic replacement, diffs, modes, owners.

use std::fs;
use std::os::unix::fs::MetadataExt;

use muster_agent::resources::{CheckApply, Context, DEFAULT_SECRET_MODE, REDACTED};
use muster_schemas::model::{DirectorySpec, FileSpec, Presence, Resource, SymlinkSpec};
use muster_schemas::protocol::ResourceStatus;

use crate::support::{TempDir, assert_timeline, describe, my_ids, set_mode};

fn file(path: &str, content: &str, mode: &str) -> FileSpec {
    FileSpec {
        path: path.parse().unwrap(),
        content: Some(content.into()),
        mode: Some(mode.parse().unwrap()),
        ..FileSpec::default()
    }
}

#[test]
fn file_timeline_content_and_mode() {
    let root = TempDir::new("file-timeline");
    let ctx = Context::new().with_root(root.path());
    let host = root.path().join("etc/motd");
    let resource = Resource::File(file("/etc/motd", "hello\nworld\n", "0640"));
    let timeline = assert_timeline(
        &ctx,
        &resource,
        &|| {
            fs::write(&host, "hello\nthere\n").unwrap();
            set_mode(&host, 0o666);
        },
        &|| describe(&host),
    );
    let converged = describe(&host);
    assert!(
        converged.starts_with("file 0640 ") && converged.ends_with("\"hello\\nworld\\n\""),
        "{converged}"
    );
    // The parents were created, and the first report says so.
    assert_eq!(
        timeline.first.message.as_deref(),
        Some("missing (with parent directories `/etc`)")
    );
    assert_eq!(
        timeline.first.diff.as_deref(),
        Some("--- /dev/null\n+++ /etc/motd\n@@ -0,0 +1,2 @@\n+hello\n+world\n")
    );
    assert_eq!(
        describe(&root.path().join("etc")),
        "dir 0755",
        "parents are created 0755"
    );
    // Drift is described in check order: content, then mode, with a diff.
    assert_eq!(
        timeline.drifted.message.as_deref(),
        Some("content differs; mode 0666 → 0640")
    );
    let diff = "--- /etc/motd\n+++ /etc/motd\n@@ -1,2 +1,2 @@\n hello\n-there\n+world\n";
    assert_eq!(timeline.drifted.diff.as_deref(), Some(diff));
    assert_eq!(timeline.audited.diff.as_deref(), Some(diff));
    assert_eq!(timeline.repaired.diff.as_deref(), Some(diff));
    // Nothing is left behind by the atomic writes.
    let names: Vec<_> = fs::read_dir(root.path().join("etc"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["motd"]);
}

#[test]
fn file_mode_only_drift_is_repaired_in_place() {
    let root = TempDir::new("file-mode");
    let ctx = Context::new().with_root(root.path());
    let host = root.path().join("etc/app.conf");
    let resource = Resource::File(file("/etc/app.conf", "x=1\n", "0600"));
    let timeline = assert_timeline(&ctx, &resource, &|| set_mode(&host, 0o644), &|| {
        describe(&host)
    });
    assert_eq!(
        timeline.drifted.message.as_deref(),
        Some("mode 0644 → 0600")
    );
    assert_eq!(timeline.drifted.diff, None);
}

#[test]
fn replacement_is_a_new_inode_and_keeps_unmanaged_mode() {
    let root = TempDir::new("file-inode");
    fs::create_dir(root.path().join("etc")).unwrap();
    let host = root.path().join("etc/hosts");
    fs::write(&host, "old\n").unwrap();
    set_mode(&host, 0o604);
    let before = fs::metadata(&host).unwrap().ino();
    let ctx = Context::new().with_root(root.path());
    let spec = FileSpec {
        path: "/etc/hosts".parse().unwrap(),
        content: Some("new\n".into()),
        ..FileSpec::default()
    };
    assert_eq!(spec.check_apply(&ctx, true).status, ResourceStatus::Changed);
    let after = fs::metadata(&host).unwrap();
    assert_ne!(
        after.ino(),
        before,
        "content is replaced by rename, not rewritten"
    );
    assert_eq!(after.mode() & 0o7777, 0o604, "an unmanaged mode is kept");
    assert_eq!(fs::read_to_string(&host).unwrap(), "new\n");
}

#[test]
fn file_without_content_manages_existence_only() {
    let root = TempDir::new("file-empty");
    let ctx = Context::new().with_root(root.path());
    let host = root.path().join("var/lib/app/ready");
    let resource = Resource::File(FileSpec {
        path: "/var/lib/app/ready".parse().unwrap(),
        ..FileSpec::default()
    });
    assert_timeline(
        &ctx,
        &resource,
        &|| fs::remove_file(&host).unwrap(),
        &|| describe(&host),
    );
    assert_eq!(describe(&host).split(' ').nth(1), Some("0644"));
    fs::write(&host, "anything").unwrap();
    assert_eq!(
        resource.check_apply(&ctx, false).status,
        ResourceStatus::InSync
    );
}

#[test]
fn absent_file_timeline() {
    let root = TempDir::new("file-absent");
    fs::create_dir(root.path().join("etc")).unwrap();
    let host = root.path().join("etc/old.conf");
    fs::write(&host, "legacy\n").unwrap();
    let ctx = Context::new().with_root(root.path());
    let resource = Resource::File(FileSpec {
        path: "/etc/old.conf".parse().unwrap(),
        ensure: Presence::Absent,
        ..FileSpec::default()
    });
    let timeline = assert_timeline(
        &ctx,
        &resource,
        &|| fs::write(&host, "back\n").unwrap(),
        &|| describe(&host),
    );
    assert_eq!(
        timeline.first.diff.as_deref(),
        Some("--- /etc/old.conf\n+++ /dev/null\n@@ -1 +0,0 @@\n-legacy\n")
    );
}

#[test]
fn secret_content_never_reaches_reports() {
    let root = TempDir::new("file-secret");
    let ctx = Context::new().with_root(root.path());
    let host = root.path().join("etc/app/token");
    let resource = Resource::File(FileSpec {
        path: "/etc/app/token".parse().unwrap(),
        content: Some("hunter2\n".into()),
        secret: true,
        ..FileSpec::default()
    });
    let timeline = assert_timeline(
        &ctx,
        &resource,
        &|| fs::write(&host, "leaked-old-value\n").unwrap(),
        &|| describe(&host),
    );
    for report in [
        &timeline.first,
        &timeline.drifted,
        &timeline.audited,
        &timeline.repaired,
    ] {
        let text = format!("{report:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("leaked-old-value"), "{text}");
        assert!(report.diff.as_deref().unwrap().contains(REDACTED), "{text}");
    }
    let mode = fs::metadata(&host).unwrap().mode() & 0o7777;
    assert_eq!(
        mode, DEFAULT_SECRET_MODE,
        "a new secret file is private by default"
    );
}

#[test]
fn owner_and_group_are_managed_on_a_real_path() {
    let dir = TempDir::new("file-owner");
    let (uid, _) = my_ids(&dir);
    if uid != 0 {
        eprintln!("skipped: changing owners needs root");
        return;
    }
    // Not sandboxed: owners name real accounts. The path is a real temp path.
    let ctx = Context::new();
    let path = dir.join("owned.conf");
    let host = dir.path().join("owned.conf");
    let resource = Resource::File(FileSpec {
        path: path.parse().unwrap(),
        content: Some("x\n".into()),
        mode: Some("0640".parse().unwrap()),
        owner: Some("nobody".into()),
        group: Some("0".into()),
        ..FileSpec::default()
    });
    let nobody = {
        let output = std::process::Command::new("id")
            .args(["-u", "nobody"])
            .output()
            .unwrap();
        String::from_utf8(output.stdout)
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let timeline = assert_timeline(
        &ctx,
        &resource,
        &|| std::os::unix::fs::chown(&host, Some(0), Some(0)).unwrap(),
        &|| describe(&host),
    );
    assert_eq!(
        timeline.drifted.message,
        Some(format!("owner uid 0 → {nobody}"))
    );
    assert_eq!(fs::metadata(&host).unwrap().uid(), nobody);
    // An unknown owner fails with advice, and touches nothing.
    let unknown = Resource::File(FileSpec {
        owner: Some("muster-no-such-user".into()),
        ..match resource {
            Resource::File(spec) => spec,
            _ => unreachable!(),
        }
    });
    let outcome = unknown.check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Failed);
    assert_eq!(
        outcome.message.as_deref(),
        Some(
            "unknown user `muster-no-such-user`: create it with a `user` resource first, or fix the name"
        )
    );
}

#[test]
fn owners_are_left_alone_in_a_sandbox_and_the_report_says_so() {
    let root = TempDir::new("file-sandbox-owner");
    let ctx = Context::new().with_root(root.path());
    let spec = FileSpec {
        path: "/etc/x".parse().unwrap(),
        content: Some("x\n".into()),
        owner: Some("muster-no-such-user".into()),
        ..FileSpec::default()
    };
    let first = spec.check_apply(&ctx, true);
    assert_eq!(first.status, ResourceStatus::Changed, "{first:?}");
    let second = spec.check_apply(&ctx, true);
    assert_eq!(second.status, ResourceStatus::InSync);
    assert_eq!(
        second.message.as_deref(),
        Some("owner and group are not managed in a sandbox")
    );
}

#[test]
fn directory_timeline() {
    let root = TempDir::new("dir-timeline");
    let ctx = Context::new().with_root(root.path());
    let host = root.path().join("var/www/shop");
    let resource = Resource::Directory(DirectorySpec {
        path: "/var/www/shop".parse().unwrap(),
        mode: Some("0750".parse().unwrap()),
        ..DirectorySpec::default()
    });
    let timeline = assert_timeline(&ctx, &resource, &|| set_mode(&host, 0o777), &|| {
        describe(&host)
    });
    assert_eq!(describe(&host), "dir 0750");
    assert_eq!(
        timeline.drifted.message.as_deref(),
        Some("mode 0777 → 0750")
    );
    // Removed again (tampering) and recreated.
    fs::remove_dir(&host).unwrap();
    assert_eq!(
        resource.check_apply(&ctx, true).status,
        ResourceStatus::Changed
    );
    assert_eq!(describe(&host), "dir 0750");
}

#[test]
fn absent_directory_is_removed_only_when_empty() {
    let root = TempDir::new("dir-absent");
    let host = root.path().join("srv/old");
    fs::create_dir_all(&host).unwrap();
    let ctx = Context::new().with_root(root.path());
    let resource = Resource::Directory(DirectorySpec {
        path: "/srv/old".parse().unwrap(),
        ensure: Presence::Absent,
        ..DirectorySpec::default()
    });
    assert_timeline(&ctx, &resource, &|| fs::create_dir(&host).unwrap(), &|| {
        describe(&host)
    });
    fs::create_dir(&host).unwrap();
    fs::write(host.join("keep"), "data").unwrap();
    for apply in [false, true] {
        let outcome = resource.check_apply(&ctx, apply);
        assert_eq!(outcome.status, ResourceStatus::Failed);
        assert_eq!(
            outcome.message.as_deref(),
            Some(
                "directory `/srv/old` is not empty: it is removed only when empty; remove or manage its contents first"
            )
        );
    }
    assert_eq!(fs::read_to_string(host.join("keep")).unwrap(), "data");
}

#[test]
fn symlink_timeline() {
    let root = TempDir::new("symlink-timeline");
    let ctx = Context::new().with_root(root.path());
    let host = root.path().join("etc/nginx/sites-enabled/shop.conf");
    let resource = Resource::Symlink(SymlinkSpec {
        path: "/etc/nginx/sites-enabled/shop.conf".parse().unwrap(),
        target: Some("../sites-available/shop.conf".into()),
        ..SymlinkSpec::default()
    });
    let timeline = assert_timeline(
        &ctx,
        &resource,
        &|| {
            fs::remove_file(&host).unwrap();
            std::os::unix::fs::symlink("/elsewhere", &host).unwrap();
        },
        &|| describe(&host),
    );
    assert_eq!(describe(&host), "link to ../sites-available/shop.conf");
    assert_eq!(
        timeline.drifted.message.as_deref(),
        Some("points to `/elsewhere`, should point to `../sites-available/shop.conf`")
    );
}

#[test]
fn absolute_symlink_targets_stay_inside_the_sandbox() {
    let root = TempDir::new("symlink-absolute");
    let ctx = Context::new().with_root(root.path());
    let spec = SymlinkSpec {
        path: "/etc/localtime".parse().unwrap(),
        target: Some("/usr/share/zoneinfo/UTC".into()),
        ..SymlinkSpec::default()
    };
    assert_eq!(spec.check_apply(&ctx, true).status, ResourceStatus::Changed);
    assert_eq!(
        fs::read_link(root.path().join("etc/localtime")).unwrap(),
        root.path().join("usr/share/zoneinfo/UTC")
    );
    assert_eq!(spec.check_apply(&ctx, true).status, ResourceStatus::InSync);
}

#[test]
fn symlinks_do_not_replace_files() {
    let root = TempDir::new("symlink-file");
    fs::create_dir(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/real"), "data").unwrap();
    let ctx = Context::new().with_root(root.path());
    let spec = SymlinkSpec {
        path: "/etc/real".parse().unwrap(),
        target: Some("/x".into()),
        ..SymlinkSpec::default()
    };
    let outcome = spec.check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Failed);
    assert_eq!(
        outcome.message.as_deref(),
        Some(
            "refusing to manage `/etc/real` as a symbolic link: it is a regular file; remove it first"
        )
    );
    assert_eq!(
        fs::read_to_string(root.path().join("etc/real")).unwrap(),
        "data"
    );
}
