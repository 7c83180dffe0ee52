//! User and group resources through stand-in `getent`, `useradd`,
//! `usermod`, `userdel`, `groupadd`, `groupmod` and `groupdel` over a fake
//! passwd and group database (no real accounts are touched), and the
//! sandbox.

use std::fs;

use muster_agent::resources::{CheckApply, SANDBOXED};
use muster_schemas::model::{Presence, Resource, UnixGroupSpec, UserSpec};
use muster_schemas::protocol::ResourceStatus;

use crate::support::{StandIns, TempDir, argv, assert_timeline, describe, my_ids};

/// Account tools over `$STATE/passwd` and `$STATE/group`. New users get
/// `uid`/`gid` (this process's own, so that files can be given to them
/// without root) unless told otherwise.
fn account_stand_ins(uid: u32, gid: u32) -> StandIns {
    let tools = StandIns::new("accounts");
    fs::write(
        tools.state().join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\n",
    )
    .unwrap();
    fs::write(tools.state().join("group"), "root:x:0:\nsudo:x:27:\n").unwrap();
    tools.tool(
        "getent",
        r#"line=$(grep "^$2:" "$STATE/$1" | head -n 1)
[ -n "$line" ] || exit 2
echo "$line""#,
    );
    let helpers = r#"
set_field() { awk -F: -v OFS=: -v n="$1" -v f="$2" -v v="$3" '$1==n { $f=v } { print }' "$STATE/$4" > "$STATE/$4.new" && mv "$STATE/$4.new" "$STATE/$4"; }
add_member() { awk -F: -v OFS=: -v g="$1" -v u="$2" '$1==g { if ($4 == "") $4=u; else $4=$4","u } { print }' "$STATE/group" > "$STATE/group.new" && mv "$STATE/group.new" "$STATE/group"; }
gid_of() { grep "^$1:" "$STATE/group" | cut -d: -f3; }
for name; do :; done
"#;
    tools.tool(
        "useradd",
        &format!(
            r#"{helpers}
uid={uid}; gid={gid}; groups=""; home=""; shell=/bin/sh; comment=""; mkhome=""
while [ $# -gt 1 ]; do
  case "$1" in
    -r) shift ;;
    -m) mkhome=1; shift ;;
    -u) uid=$2; shift 2 ;;
    -g) gid=$(gid_of "$2"); shift 2 ;;
    -G) groups=$2; shift 2 ;;
    -d) home=$2; shift 2 ;;
    -s) shell=$2; shift 2 ;;
    -c) comment=$2; shift 2 ;;
    *) echo "useradd: bad option $1" >&2; exit 2 ;;
  esac
done
[ -n "$home" ] || home=/home/$name
echo "$name:x:$uid:$gid:$comment:$home:$shell" >> "$STATE/passwd"
[ -z "$mkhome" ] || mkdir -p "$home"
for g in $(echo "$groups" | tr , ' '); do add_member "$g" "$name"; done"#
        ),
    );
    tools.tool(
        "usermod",
        &format!(
            r#"{helpers}
while [ $# -gt 1 ]; do
  case "$1" in
    -a) shift ;;
    -u) set_field "$name" 3 "$2" passwd; shift 2 ;;
    -g) set_field "$name" 4 "$(gid_of "$2")" passwd; shift 2 ;;
    -G) for g in $(echo "$2" | tr , ' '); do add_member "$g" "$name"; done; shift 2 ;;
    -c) set_field "$name" 5 "$2" passwd; shift 2 ;;
    -d) set_field "$name" 6 "$2" passwd; shift 2 ;;
    -s) set_field "$name" 7 "$2" passwd; shift 2 ;;
    *) echo "usermod: bad option $1" >&2; exit 2 ;;
  esac
done"#
        ),
    );
    tools.tool(
        "userdel",
        r#"grep -v "^$1:" "$STATE/passwd" > "$STATE/passwd.new"; mv "$STATE/passwd.new" "$STATE/passwd""#,
    );
    tools.tool(
        "groupadd",
        &format!(
            r#"{helpers}
gid=$(( 2000 + $(wc -l < "$STATE/group") ))
while [ $# -gt 1 ]; do
  case "$1" in
    -r) shift ;;
    -g) gid=$2; shift 2 ;;
    *) echo "groupadd: bad option $1" >&2; exit 2 ;;
  esac
done
echo "$name:x:$gid:" >> "$STATE/group""#
        ),
    );
    tools.tool(
        "groupmod",
        &format!(
            r#"{helpers}
set_field "$name" 3 "$2" group"#
        ),
    );
    tools.tool(
        "groupdel",
        r#"grep -v "^$1:" "$STATE/group" > "$STATE/group.new"; mv "$STATE/group.new" "$STATE/group""#,
    );
    tools
}

fn read(tools: &StandIns, database: &str) -> String {
    fs::read_to_string(tools.state().join(database)).unwrap()
}

fn replace_in(tools: &StandIns, database: &str, from: &str, to: &str) {
    let text = read(tools, database);
    assert!(text.contains(from), "{text}");
    fs::write(tools.state().join(database), text.replace(from, to)).unwrap();
}

#[test]
fn group_timeline() {
    let tools = account_stand_ins(0, 0);
    let ctx = tools.context();
    let resource = Resource::Group(UnixGroupSpec {
        name: "ops".into(),
        gid: Some(2345),
        system: true,
        ..UnixGroupSpec::default()
    });
    let timeline = assert_timeline(
        &ctx,
        &resource,
        &|| {
            tools.take_log();
            replace_in(&tools, "group", "ops:x:2345:", "ops:x:999:");
        },
        &|| read(&tools, "group"),
    );
    assert_eq!(timeline.first.message.as_deref(), Some("missing"));
    assert_eq!(timeline.drifted.message.as_deref(), Some("gid 999 → 2345"));
    assert_eq!(
        tools.take_changes(&[]),
        vec![argv(&["groupmod", "-g", "2345", "ops"])]
    );
    assert!(read(&tools, "group").contains("ops:x:2345:"));

    let absent = UnixGroupSpec {
        name: "ops".into(),
        ensure: Presence::Absent,
        ..UnixGroupSpec::default()
    };
    assert_eq!(
        absent.check_apply(&ctx, true).status,
        ResourceStatus::Changed
    );
    assert_eq!(tools.take_changes(&[]), vec![argv(&["groupdel", "ops"])]);
    assert_eq!(
        absent.check_apply(&ctx, true).status,
        ResourceStatus::InSync
    );
}

#[test]
fn user_timeline_with_groups_and_authorized_keys() {
    let homes = TempDir::new("user-homes");
    let (uid, gid) = my_ids(&homes);
    let tools = account_stand_ins(uid, gid);
    // The user's primary group exists with this process's gid, so the keys
    // file can be given to it without root.
    fs::write(
        tools.state().join("group"),
        format!("root:x:0:\nsudo:x:27:\nops:x:{gid}:\n"),
    )
    .unwrap();
    let ctx = tools.context();
    let home = homes.join("ops");
    let keys_path = homes.path().join("ops/.ssh/authorized_keys");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbVDaVpqc/lwvbqPE5uHQZLF2wG5GnaXv2ur1HmDtuI ops@example.com";
    let resource = Resource::User(UserSpec {
        name: "ops".into(),
        group: Some("ops".into()),
        groups: vec!["sudo".into()],
        home: Some(home.parse().unwrap()),
        shell: Some("/bin/bash".parse().unwrap()),
        comment: Some("Operations".into()),
        authorized_keys: vec![key.into()],
        ..UserSpec::default()
    });
    let observe = || {
        format!(
            "{}{}{}",
            read(&tools, "passwd"),
            read(&tools, "group"),
            describe(&keys_path)
        )
    };
    let timeline = assert_timeline(
        &ctx,
        &resource,
        &|| {
            tools.take_log();
            replace_in(
                &tools,
                "passwd",
                &format!("{home}:/bin/bash"),
                &format!("{home}:/bin/sh"),
            );
            replace_in(&tools, "group", "sudo:x:27:ops", "sudo:x:27:");
            fs::write(&keys_path, "ssh-rsa AAAA intruder\n").unwrap();
        },
        &observe,
    );
    assert_eq!(
        timeline.first.message.as_deref(),
        Some("missing; authorized_keys missing")
    );
    assert_eq!(
        timeline.drifted.message.as_deref(),
        Some("not in group `sudo`; shell `/bin/sh` → `/bin/bash`; authorized_keys content differs")
    );
    assert_eq!(
        timeline.drifted.diff,
        Some(format!(
            "--- {home}/.ssh/authorized_keys\n+++ {home}/.ssh/authorized_keys\n@@ -1 +1 @@\n-ssh-rsa AAAA intruder\n+{key}\n"
        ))
    );
    assert_eq!(
        tools.take_changes(&[]),
        vec![argv(&[
            "usermod",
            "-a",
            "-G",
            "sudo",
            "-s",
            "/bin/bash",
            "ops"
        ])]
    );
    assert_eq!(
        describe(&keys_path),
        format!("file 0600 {uid}:{gid} {:?}", format!("{key}\n"))
    );
    assert_eq!(describe(&homes.path().join("ops/.ssh")), "dir 0700");

    // The account as useradd made it, from the first run.
    assert!(
        read(&tools, "passwd").contains(&format!("ops:x:{uid}:{gid}:Operations:{home}:/bin/bash")),
        "{}",
        read(&tools, "passwd")
    );

    let absent = UserSpec {
        name: "ops".into(),
        ensure: Presence::Absent,
        ..UserSpec::default()
    };
    assert_eq!(
        absent.check_apply(&ctx, false).status,
        ResourceStatus::Drifted
    );
    assert_eq!(
        absent.check_apply(&ctx, true).status,
        ResourceStatus::Changed
    );
    assert_eq!(tools.take_changes(&[]), vec![argv(&["userdel", "ops"])]);
    assert_eq!(
        absent.check_apply(&ctx, true).status,
        ResourceStatus::InSync
    );
    assert!(keys_path.exists(), "userdel keeps the home");
}

#[test]
fn useradd_gets_the_whole_account() {
    let homes = TempDir::new("useradd-argv");
    let (uid, gid) = my_ids(&homes);
    let tools = account_stand_ins(uid, gid);
    let spec = UserSpec {
        name: "deploy".into(),
        uid: Some(uid),
        system: true,
        groups: vec!["sudo".into(), "root".into()],
        home: Some(homes.join("deploy").parse().unwrap()),
        ..UserSpec::default()
    };
    let ctx = tools.context();
    assert_eq!(
        spec.check_apply(&ctx, false).status,
        ResourceStatus::Drifted
    );
    assert!(tools.take_changes(&[]).is_empty());
    assert_eq!(spec.check_apply(&ctx, true).status, ResourceStatus::Changed);
    assert_eq!(
        tools.take_changes(&[]),
        vec![argv(&[
            "useradd",
            "-r",
            "-u",
            &uid.to_string(),
            "-G",
            "sudo,root",
            "-d",
            &homes.join("deploy"),
            "deploy",
        ])]
    );
    assert_eq!(spec.check_apply(&ctx, true).status, ResourceStatus::InSync);
}

#[test]
fn accounts_are_skipped_in_a_sandbox() {
    let tools = account_stand_ins(0, 0);
    let root = TempDir::new("accounts-sandbox");
    let ctx = tools.context().with_root(root.path());
    let user = UserSpec {
        name: "ops".into(),
        ..UserSpec::default()
    };
    let group = UnixGroupSpec {
        name: "ops".into(),
        ..UnixGroupSpec::default()
    };
    for apply in [false, true] {
        for outcome in [
            user.check_apply(&ctx, apply),
            group.check_apply(&ctx, apply),
        ] {
            assert_eq!(outcome.status, ResourceStatus::Skipped);
            assert_eq!(outcome.message.as_deref(), Some(SANDBOXED));
        }
    }
    assert!(tools.take_log().is_empty());
}

#[test]
fn option_like_account_names_are_refused() {
    let tools = account_stand_ins(0, 0);
    let spec = UserSpec {
        name: "-o".into(),
        ..UserSpec::default()
    };
    let outcome = spec.check_apply(&tools.context(), true);
    assert_eq!(outcome.status, ResourceStatus::Failed);
    assert!(tools.take_log().is_empty());
}
