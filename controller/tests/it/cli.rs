//! The `muster` binary as a user runs it: exit codes, output formats, and
//! hostile input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::TempDir;
use crate::support::git::files_of;

fn muster(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(args)
        .output()
        .expect("muster runs")
}

fn example_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A copy of the example fleet repo in a temp dir.
fn example_copy(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    for (path, bytes) in files_of(&example_repo()) {
        dir.write(&path, bytes);
    }
    dir
}

#[test]
fn the_example_repo_is_valid() {
    let output = muster(&["validate", example_repo().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    assert_eq!(text(&output.stdout), "ok: 15 files, 24 documents valid\n");
}

#[test]
fn validate_defaults_to_the_current_directory() {
    let output = Command::new(env!("CARGO_BIN_EXE_muster"))
        .arg("validate")
        .current_dir(example_repo())
        .output()
        .expect("muster runs");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
}

/// Ten different mistakes planted across several files of the example.
fn plant_ten_mistakes(repo: &TempDir) {
    repo.edit(
        "policies/ssh-hardening.yaml",
        "name: ssh-hardening",
        "nmae: ssh-hardening",
    );
    repo.edit("policies/motd.yaml", "mode: \"0644\"", "mode: 0644");
    repo.edit(
        "policies/motd.yaml",
        "source: files/motd",
        "source: files/mtod",
    );
    repo.edit("policies/nginx.yaml", "groups: [web]", "groups: [webb]");
    repo.edit(
        "policies/nginx.yaml",
        "path: /var/www/shop\n",
        "path: var/www/shop\n",
    );
    repo.edit(
        "scripts/log-cleanup.yaml",
        "schedule: \"30 3 * * *\"",
        "schedule: \"0 30 3 * * *\"",
    );
    repo.edit(
        "alerts/maintenance.yaml",
        "timezone: Europe/Berlin",
        "timezone: Europe/Berln",
    );
    repo.edit(
        "alerts/rules.yaml",
        "channels: [ops-slack]",
        "channels: [ops-slak]",
    );
    repo.edit("rbac/teams.yaml", "kind: Team", "kind: Teem");
    repo.edit("rbac/bindings.yaml", "  - user: alice", "  - usr: alice");
}

const TEN_MISTAKES: [(&str, u32, u32, &str); 10] = [
    (
        "alerts/maintenance.yaml",
        8,
        11,
        "unknown time zone `Europe/Berln`",
    ),
    (
        "alerts/rules.yaml",
        36,
        12,
        "channel `ops-slak` does not exist",
    ),
    (
        "policies/motd.yaml",
        11,
        15,
        "file `files/mtod` does not exist in the repo",
    ),
    (
        "policies/motd.yaml",
        12,
        13,
        "expected a string, found an integer `0644`",
    ),
    ("policies/nginx.yaml", 7, 12, "group `webb` does not exist"),
    (
        "policies/nginx.yaml",
        16,
        13,
        "path `var/www/shop` is not absolute",
    ),
    ("policies/ssh-hardening.yaml", 4, 1, "unknown field `nmae`"),
    ("rbac/bindings.yaml", 7, 5, "unknown type `usr`"),
    ("rbac/teams.yaml", 3, 7, "unknown kind `Teem`"),
    (
        "scripts/log-cleanup.yaml",
        15,
        11,
        "`0 30 3 * * *` has 6 fields, expected 5",
    ),
];

#[test]
fn ten_planted_mistakes_give_ten_located_diagnostics_in_one_run() {
    let repo = example_copy("ten");
    plant_ten_mistakes(&repo);

    let output = muster(&["validate", repo.arg()]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains(": error: "))
        .collect();
    assert_eq!(errors.len(), 10, "{stdout}");
    for ((file, line, column, message), printed) in TEN_MISTAKES.iter().zip(&errors) {
        let prefix = format!("{file}:{line}:{column}: error: ");
        assert!(
            printed.starts_with(&prefix),
            "expected `{prefix}…`, got `{printed}`"
        );
        assert!(
            printed.ends_with(message),
            "expected `…{message}`, got `{printed}`"
        );
    }
    assert!(
        stdout.ends_with("error: 10 problems in 8 files (15 files, 24 documents checked)\n"),
        "{stdout}"
    );

    let output = muster(&["validate", "--format", "json", repo.arg()]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).expect("the report is JSON");
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"], 10);
    let diagnostics = report["diagnostics"]
        .as_array()
        .expect("diagnostics is a list");
    assert_eq!(diagnostics.len(), 10);
    for ((file, line, column, message), diagnostic) in TEN_MISTAKES.iter().zip(diagnostics) {
        assert_eq!(diagnostic["file"], *file);
        assert_eq!(diagnostic["line"], *line);
        assert_eq!(diagnostic["column"], *column);
        assert_eq!(diagnostic["message"], *message);
        assert_eq!(diagnostic["severity"], "error");
    }
    assert_eq!(diagnostics[0]["hint"], "did you mean `Europe/Berlin`?");
    assert_eq!(diagnostics[6]["path"], "nmae");
}

#[test]
fn valid_json_report() {
    let output = muster(&[
        "validate",
        "--format",
        "json",
        example_repo().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&output.stdout).expect("the report is JSON");
    assert_eq!(report["valid"], true);
    assert_eq!(report["files"], 15);
    assert_eq!(report["documents"], 24);
    assert_eq!(report["diagnostics"], Value::Array(Vec::new()));
}

#[test]
fn unreadable_input_exits_2() {
    let output = muster(&["validate", "/nonexistent/fleet"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).starts_with("error: cannot read `/nonexistent/fleet`"),
        "{}",
        text(&output.stderr)
    );

    let repo = TempDir::new("file-arg");
    repo.write("fleet.yaml", "apiVersion: muster/v1\n");
    let file = repo.path().join("fleet.yaml");
    let output = muster(&["validate", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("is not a directory"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn usage_errors_exit_2() {
    let output = muster(&["validate", "--format", "xml"]);
    assert_eq!(output.status.code(), Some(2));
    let output = muster(&["schema", "Polcy"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("unknown kind `Polcy`"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn hostile_files_get_clear_errors() {
    let repo = TempDir::new("hostile");
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..12 {
        bomb.push_str(&format!(
            "a{level}: &a{level} [{}]\n",
            vec![format!("*a{}", level - 1); 10].join(", ")
        ));
    }
    repo.write("bomb.yaml", bomb);
    repo.write(
        "latin1.yaml",
        b"apiVersion: muster/v1\nkind: Team\nname: caf\xe9\n",
    );
    repo.write("empty.yaml", "# nothing yet\n");
    repo.write(
        "deep.yaml",
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    );
    let mut huge = String::from("apiVersion: muster/v1\nkind: Team\nname: big\nmembers:\n");
    while huge.len() <= 5 << 20 {
        huge.push_str("  - someone\n");
    }
    repo.write("huge.yaml", huge);
    repo.write("binary.yml", [0u8, 159, 146, 150, 255, 0]);

    let output = muster(&["validate", repo.arg()]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    let expect = [
        "binary.yml:1:2: error: file is not valid UTF-8",
        "bomb.yaml:",
        "deep.yaml:1:",
        "empty.yaml:1:1: error: file holds no documents",
        "huge.yaml:1:1: error: file is ",
        "latin1.yaml:3:10: error: file is not valid UTF-8",
    ];
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains("error: "))
        .collect();
    assert_eq!(errors.len(), expect.len() + 1, "{stdout}");
    for (prefix, line) in expect.iter().zip(&errors) {
        assert!(
            line.starts_with(prefix),
            "expected `{prefix}…`, got `{line}`"
        );
    }
    assert!(errors[1].contains("aliases are expanded"), "{}", errors[1]);
    assert!(
        errors[2].contains("recursion") || errors[2].contains("nesting"),
        "{}",
        errors[2]
    );
    assert!(errors[4].contains("over the 4 MiB limit"), "{}", errors[4]);
}

#[test]
fn symlinked_fleet_files_are_not_followed() {
    let repo = TempDir::new("symlink");
    let outside = TempDir::new("outside");
    outside.write(
        "secret.yaml",
        "apiVersion: muster/v1\nkind: Team\nname: outside\n",
    );
    std::os::unix::fs::symlink(
        outside.path().join("secret.yaml"),
        repo.path().join("team.yaml"),
    )
    .unwrap();
    let output = muster(&["validate", repo.arg()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stdout).starts_with(
            "team.yaml:1:1: error: fleet file is a symbolic link, and links are not followed"
        ),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn dot_directories_are_skipped() {
    let repo = TempDir::new("dotdirs");
    repo.write(
        "team.yaml",
        "apiVersion: muster/v1\nkind: Team\nname: ops\nmembers: [alice]\n",
    );
    repo.write(".github/workflows/ci.yaml", "on: push\njobs: {}\n");
    let output = muster(&["validate", repo.arg()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    assert_eq!(text(&output.stdout), "ok: 1 file, 1 document valid\n");
}

#[test]
fn yaml_files_used_as_sources_are_content_not_documents() {
    let repo = TempDir::new("sources");
    repo.write(
        "groups.yaml",
        "apiVersion: muster/v1\nkind: Group\nname: all\nselector: {}\n",
    );
    repo.write(
        "policy.yaml",
        "apiVersion: muster/v1\nkind: Policy\nname: app\ntargets: {groups: [all]}\nresources:\n  - file:\n      path: /etc/app/config.yaml\n      source: files/config.yaml\n",
    );
    repo.write("files/config.yaml", "listen: 8080\nworkers: 4\n");
    let output = muster(&["validate", repo.arg()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stdout));
    assert_eq!(text(&output.stdout), "ok: 2 files, 2 documents valid\n");
}

#[test]
fn schema_prints_the_schema_of_a_kind() {
    for name in ["Policy", "policy", "role-binding", "RoleBinding"] {
        let output = muster(&["schema", name]);
        assert_eq!(output.status.code(), Some(0));
        let schema: Value = serde_json::from_slice(&output.stdout).expect("the schema is JSON");
        assert!(schema["properties"]["kind"]["const"].is_string(), "{name}");
    }
    let output = muster(&["schema"]);
    let schema: Value = serde_json::from_slice(&output.stdout).expect("the schema is JSON");
    assert_eq!(schema["title"], "Muster fleet document");
}
