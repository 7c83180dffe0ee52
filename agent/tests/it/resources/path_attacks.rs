//! Path attacks: `..`, relative paths, symbolic links planted in a parent
//! directory or at the target. Each is refused, and neither the target nor
//! what a link points to is touched.

use std::fs;
use std::os::unix::fs::symlink;

use muster_agent::resources::{CheckApply, Context};
use muster_schemas::bundle::Desired;
use muster_schemas::model::{DirectorySpec, ExecSpec, FileSpec, Presence, Resource, SymlinkSpec};
use muster_schemas::protocol::ResourceStatus;

use crate::support::{TempDir, describe};

fn file(path: &str, content: &str) -> Resource {
    Resource::File(FileSpec {
        path: path.parse().unwrap(),
        content: Some(content.into()),
        ..FileSpec::default()
    })
}

#[test]
fn traversal_and_relative_paths_are_refused() {
    let root = TempDir::new("attack-dotdot");
    let ctx = Context::new().with_root(root.path());
    for (path, expected) in [
        ("/etc/../../outside", "contains `..`"),
        ("/..", "contains `..`"),
        ("etc/motd", "is not absolute"),
        ("/etc/./motd", "empty or `.` component"),
    ] {
        let err = ctx.host_path(path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("refusing path `{path}`")), "{err}");
        assert!(err.contains(expected), "{err}");
    }
    // A bundle cannot even carry such a path: it does not deserialize.
    let json = r#"{"settings":{"interval_secs":1,"splay_secs":0,"metrics_interval_secs":1},
        "resources":[{"id":"file:/etc/../shadow","policy":"p","mode":"enforce",
        "resource":{"file":{"path":"/etc/../shadow","content":"x"}}}],"checks":[]}"#;
    let err = serde_json::from_str::<Desired>(json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("contains `..`"), "{err}");
}

#[test]
fn a_symlinked_parent_directory_is_refused() {
    let root = TempDir::new("attack-parent");
    let outside = TempDir::new("attack-parent-outside");
    fs::write(outside.path().join("motd"), "outside\n").unwrap();
    // /etc inside the root is a link to a directory outside it.
    symlink(outside.path(), root.path().join("etc")).unwrap();
    let ctx = Context::new().with_root(root.path());

    let resources = [
        file("/etc/motd", "pwned\n"),
        file("/etc/new-file", "pwned\n"),
        Resource::File(FileSpec {
            path: "/etc/motd".parse().unwrap(),
            ensure: Presence::Absent,
            ..FileSpec::default()
        }),
        Resource::Directory(DirectorySpec {
            path: "/etc/sub".parse().unwrap(),
            ..DirectorySpec::default()
        }),
        Resource::Symlink(SymlinkSpec {
            path: "/etc/link".parse().unwrap(),
            target: Some("/x".into()),
            ..SymlinkSpec::default()
        }),
        Resource::Exec(ExecSpec {
            name: "in-linked-dir".into(),
            command: vec!["true".into()],
            cwd: Some("/etc/sub".parse().unwrap()),
            ..ExecSpec::default()
        }),
    ];
    for resource in &resources {
        for apply in [false, true] {
            let outcome = resource.check_apply(&ctx, apply);
            assert_eq!(outcome.status, ResourceStatus::Failed, "{resource:?}");
            let message = outcome.message.unwrap();
            assert!(
                message.contains("its parent directory `/etc` is a symbolic link (to `"),
                "{message}"
            );
            assert!(
                message.ends_with("manage the real directory instead"),
                "{message}"
            );
        }
    }
    let entries: Vec<_> = fs::read_dir(outside.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "nothing was created through the link");
    assert_eq!(
        fs::read_to_string(outside.path().join("motd")).unwrap(),
        "outside\n"
    );
    assert_eq!(
        fs::read_link(root.path().join("etc")).unwrap(),
        outside.path()
    );
}

#[test]
fn a_symlinked_grandparent_is_refused_too() {
    let root = TempDir::new("attack-grandparent");
    let outside = TempDir::new("attack-grandparent-outside");
    fs::create_dir(outside.path().join("ssh")).unwrap();
    symlink(outside.path(), root.path().join("etc")).unwrap();
    let ctx = Context::new().with_root(root.path());
    let outcome = file("/etc/ssh/sshd_config", "PermitRootLogin yes\n").check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Failed);
    assert!(!outside.path().join("ssh/sshd_config").exists());
}

#[test]
fn a_symlink_at_the_target_is_never_written_through() {
    let root = TempDir::new("attack-target");
    let outside = TempDir::new("attack-target-outside");
    let secret = outside.path().join("shadow");
    fs::write(&secret, "root:hash\n").unwrap();
    fs::create_dir(root.path().join("etc")).unwrap();
    let link = root.path().join("etc/motd");
    symlink(&secret, &link).unwrap();
    let ctx = Context::new().with_root(root.path());

    let resources = [
        file("/etc/motd", "pwned\n"),
        Resource::File(FileSpec {
            path: "/etc/motd".parse().unwrap(),
            mode: Some("0777".parse().unwrap()),
            ..FileSpec::default()
        }),
        Resource::File(FileSpec {
            path: "/etc/motd".parse().unwrap(),
            ensure: Presence::Absent,
            ..FileSpec::default()
        }),
        Resource::Directory(DirectorySpec {
            path: "/etc/motd".parse().unwrap(),
            mode: Some("0777".parse().unwrap()),
            ..DirectorySpec::default()
        }),
    ];
    let secret_before = describe(&secret);
    for resource in &resources {
        for apply in [false, true] {
            let outcome = resource.check_apply(&ctx, apply);
            assert_eq!(outcome.status, ResourceStatus::Failed, "{resource:?}");
            let message = outcome.message.unwrap();
            assert!(
                message.starts_with("refusing to manage `/etc/motd` as a "),
                "{message}"
            );
            assert!(
                message.contains(&format!(
                    "it is a symbolic link (to `{}`)",
                    secret.display()
                )),
                "{message}"
            );
            assert_eq!(
                outcome.diff, None,
                "the destination is not read into a diff"
            );
        }
    }
    assert_eq!(
        describe(&secret),
        secret_before,
        "the link's destination is untouched"
    );
    assert_eq!(
        fs::read_link(&link).unwrap(),
        secret,
        "the link itself is untouched"
    );
}
