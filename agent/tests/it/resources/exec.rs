//! The exec resource: its timeline through a `creates` guard, the other
//! guards, sandbox mapping, failures with bounded output, and timeouts.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use muster_agent::resources::{CheckApply, Context, RUN_AS_SANDBOXED};
use muster_schemas::model::{ExecSpec, Resource};
use muster_schemas::protocol::ResourceStatus;

use crate::support::{TempDir, assert_timeline, describe, eventually};

fn words(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[test]
fn exec_timeline_with_creates() {
    let root = TempDir::new("exec-timeline");
    fs::create_dir_all(root.path().join("opt/app")).unwrap();
    let ctx = Context::new().with_root(root.path());
    let marker = root.path().join("opt/app/initialized");
    let resource = Resource::Exec(ExecSpec {
        name: "init-app".into(),
        // Relative to the working directory, which defaults to the root.
        command: words(&["sh", "-c", "echo \"$GREETING\" > opt/app/initialized"]),
        creates: Some("/opt/app/initialized".parse().unwrap()),
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        timeout: "10s".parse().unwrap(),
        ..ExecSpec::default()
    });
    let timeline = assert_timeline(
        &ctx,
        &resource,
        &|| fs::remove_file(&marker).unwrap(),
        &|| {
            describe(&marker)
                .split(' ')
                .next_back()
                .unwrap()
                .to_string()
        },
    );
    assert_eq!(fs::read_to_string(&marker).unwrap(), "hello\n");
    assert_eq!(
        timeline.drifted.message.as_deref(),
        Some("would run `sh -c 'echo \"$GREETING\" > opt/app/initialized'`")
    );
    assert_eq!(
        timeline.first.message.as_deref(),
        Some("ran `sh -c 'echo \"$GREETING\" > opt/app/initialized'`")
    );
}

#[test]
fn unless_and_only_if_guards() {
    let root = TempDir::new("exec-guards");
    let ctx = Context::new().with_root(root.path());
    let ran = root.path().join("ran");
    let spec = |unless: Option<&[&str]>, only_if: Option<&[&str]>| ExecSpec {
        name: "guarded".into(),
        command: words(&["touch", "ran"]),
        unless: unless.map(words),
        only_if: only_if.map(words),
        timeout: "10s".parse().unwrap(),
        ..ExecSpec::default()
    };
    // `unless` succeeds → in sync, nothing runs.
    let outcome = spec(Some(&["true"]), None).check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::InSync);
    // `only_if` fails → in sync, nothing runs.
    let outcome = spec(None, Some(&["false"])).check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::InSync);
    assert!(!ran.exists());
    // Both say run → it runs.
    let outcome = spec(Some(&["false"]), Some(&["true"])).check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Changed, "{outcome:?}");
    assert!(ran.exists());
    // The guards see the same environment as the command: MUSTER_ROOT.
    let outcome =
        spec(Some(&["sh", "-c", "test -e \"$MUSTER_ROOT/ran\""]), None).check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::InSync);
}

#[test]
fn a_failing_command_fails_with_bounded_output() {
    let root = TempDir::new("exec-fail");
    let ctx = Context::new().with_root(root.path());
    let spec = ExecSpec {
        name: "noisy".into(),
        command: words(&["head -c 200000 /dev/zero | tr '\\0' e >&2; echo done; exit 7"]),
        shell: true,
        timeout: "10s".parse().unwrap(),
        ..ExecSpec::default()
    };
    let outcome = spec.check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Failed);
    let message = outcome.message.unwrap();
    assert!(
        message.starts_with("`sh -c 'head -c 200000 /dev/zero | tr '\\''\\0'\\'' e >&2; echo done; exit 7'` exited with code 7\nstdout:\ndone\nstderr:\n… truncated …\n"),
        "{}",
        &message[..200]
    );
    assert!(
        message.len() < 10_000,
        "the message is bounded: {}",
        message.len()
    );
    assert!(
        message.ends_with("… truncated (200000 bytes in all)"),
        "{}",
        &message[message.len() - 100..]
    );
}

#[test]
fn a_timeout_fails_promptly_and_leaves_no_process() {
    let root = TempDir::new("exec-timeout");
    let ctx = Context::new().with_root(root.path());
    // A unique argument, to find leftovers in /proc; the shell also starts
    // a background sleep that must die with the process group.
    let marker = format!("5.{}1", std::process::id());
    let spec = ExecSpec {
        name: "slow".into(),
        command: vec![format!("sleep {marker} & sleep {marker}; echo never")],
        shell: true,
        timeout: "1s".parse().unwrap(),
        ..ExecSpec::default()
    };
    let started = Instant::now();
    let outcome = spec.check_apply(&ctx, true);
    let elapsed = started.elapsed();
    assert_eq!(outcome.status, ResourceStatus::Failed);
    assert!(
        outcome
            .message
            .as_deref()
            .unwrap()
            .ends_with("timed out after 1s and was killed"),
        "{outcome:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let leftovers = || {
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| fs::read(entry.ok()?.path().join("cmdline")).ok())
            .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(&marker))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(2), || leftovers() == 0),
        "{} processes survived the timeout",
        leftovers()
    );
}

#[test]
fn run_as_is_skipped_in_a_sandbox() {
    let root = TempDir::new("exec-run-as");
    let ctx = Context::new().with_root(root.path());
    let spec = ExecSpec {
        name: "as-nobody".into(),
        command: words(&["touch", "x"]),
        run_as: Some("nobody".into()),
        ..ExecSpec::default()
    };
    let outcome = spec.check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Skipped);
    assert_eq!(outcome.message.as_deref(), Some(RUN_AS_SANDBOXED));
    assert!(!root.path().join("x").exists());
}

#[test]
fn a_missing_program_fails_by_name() {
    let root = TempDir::new("exec-missing");
    let ctx = Context::new().with_root(root.path());
    let spec = ExecSpec {
        name: "missing".into(),
        command: words(&["muster-no-such-program", "--flag"]),
        ..ExecSpec::default()
    };
    // A dry run does not run the command, so it cannot know.
    assert_eq!(
        spec.check_apply(&ctx, false).status,
        ResourceStatus::Drifted
    );
    let outcome = spec.check_apply(&ctx, true);
    assert_eq!(outcome.status, ResourceStatus::Failed);
    assert_eq!(
        outcome.message.as_deref(),
        Some(
            "command `muster-no-such-program` not found on the search path: install it or give its full path"
        )
    );
}
