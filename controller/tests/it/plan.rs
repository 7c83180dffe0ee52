//! `muster plan`, data-driven: real git commits made from
//! `examples/fleet-repo` plus an edit, the fixed inventory in
//! `tests/plan/inventory.json`, and the exact output of the real binary,
//! compared with the snapshots in `tests/plan/`. Run with
//! `UPDATE_SNAPSHOTS=1` to rewrite the snapshots, then read the diff.

use std::path::{Path, PathBuf};

use muster_controller::plan::{self, Inventory};
use muster_controller::source::GitSource;
use muster_controller::store::CommitState;
use muster_schemas::bundle::SignedBundle;

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Harness, bundle_of};
use muster_controller::server::user_auth::{LoginResponse, hash_password};

use crate::support::TempDir;
use crate::support::cli::{muster_command, output_text, succeeded};
use crate::support::git::{Change, TestRepo, example_repo};

/// Schedules' next runs are counted from this time, so that snapshots hold.
const NOW: &str = "2026-11-29T12:00:00Z";

fn plan_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan")
}

/// A text edit of one example file: replace `from` (which must occur) by `to`.
struct Edit {
    path: &'static str,
    from: &'static str,
    to: &'static str,
}

struct Case {
    name: &'static str,
    edits: &'static [Edit],
    /// Also snapshot the markdown format.
    markdown: bool,
}

const CASES: &[Case] = &[
    // The nginx template only reaches the web group.
    Case {
        name: "template_change",
        edits: &[Edit {
            path: "files/nginx/shop.conf.tmpl",
            from: "    root /var/www/shop;\n",
            to: "    root /var/www/shop;\n    client_max_body_size 10m;\n",
        }],
        markdown: true,
    },
    // nginx-site moves from the web group to the Debian hosts: web-03
    // (Ubuntu) leaves it, db-01 joins it.
    Case {
        name: "selector_change",
        edits: &[Edit {
            path: "policies/nginx.yaml",
            from: "targets:\n  groups: [web]\n",
            to: "targets:\n  selector:\n    os: debian\n",
        }],
        markdown: false,
    },
    Case {
        name: "resource_removed",
        edits: &[Edit {
            path: "policies/nginx.yaml",
            from: "  - file:\n      path: /var/www/shop/index.html\n      mode: \"0644\"\n      content: |\n        <!doctype html>\n        <title>Shop</title>\n        <p>Served by muster.</p>\n      depends_on: [\"directory:/var/www/shop\"]\n",
            to: "",
        }],
        markdown: false,
    },
    // Two policies declare /etc/motd differently on the web hosts: the
    // controller would reject the commit, and so does the plan.
    Case {
        name: "conflict",
        edits: &[Edit {
            path: "policies/nginx.yaml",
            from: "resources:\n  - package:\n      name: nginx\n",
            to: "resources:\n  - package:\n      name: nginx\n  - file:\n      path: /etc/motd\n      content: \"web\\n\"\n",
        }],
        markdown: false,
    },
    Case {
        name: "schedule_change",
        edits: &[Edit {
            path: "scripts/log-cleanup.yaml",
            from: "schedule: \"30 3 * * *\"     # every day at 03:30\ntimezone: Europe/Berlin\n",
            to: "schedule: \"0 4 * * 1\"     # Mondays at 04:00\ntimezone: America/New_York\n",
        }],
        markdown: false,
    },
    // The web team may now operate the db hosts too.
    Case {
        name: "rbac_grant",
        edits: &[Edit {
            path: "rbac/bindings.yaml",
            from: "scope:\n  groups: [web]\n",
            to: "scope:\n  groups: [web, db]\n",
        }],
        markdown: true,
    },
    // A secret's content never reaches the plan.
    Case {
        name: "secret_added",
        edits: &[Edit {
            path: "policies/motd.yaml",
            from: "      mode: \"0644\"\n",
            to: "      mode: \"0644\"\n  - file:\n      path: /etc/app/api.key\n      content: \"hunter2\\n\"\n      secret: true\n",
        }],
        markdown: false,
    },
    // Comments and blank lines only: nothing to deploy.
    Case {
        name: "noop",
        edits: &[
            Edit {
                path: "policies/nginx.yaml",
                from: "resources:\n",
                to: "\n# What every web host gets.\nresources:\n",
            },
            Edit {
                path: "groups.yaml",
                from: "name: db\n",
                to: "name: db   \n",
            },
        ],
        markdown: false,
    },
];

/// The base and head commits of a case, in a new repository.
fn commits(case: &Case) -> (TestRepo, String, String) {
    let repo = TestRepo::from_example(&format!("plan-{}", case.name));
    let base = repo.tip("main").expect("the example is committed");
    let mut changes = Vec::new();
    for edit in case.edits {
        let path = example_repo().join(edit.path);
        let text = changes
            .iter()
            .rev()
            .find_map(|(p, c): &(String, Change)| match c {
                Change::File(bytes) if p == edit.path => {
                    Some(String::from_utf8(bytes.clone()).expect("utf-8"))
                }
                _ => None,
            })
            .unwrap_or_else(|| std::fs::read_to_string(&path).expect("example file reads"));
        assert!(
            text.contains(edit.from),
            "{}: `{}` has no {:?}",
            case.name,
            edit.path,
            edit.from
        );
        changes.push((
            edit.path.to_string(),
            Change::file(text.replacen(edit.from, edit.to, 1)),
        ));
    }
    let head = repo.commit(&format!("plan case {}", case.name), &changes);
    (repo, base, head)
}

/// Runs `muster plan --exit-code` and returns its exit code and stdout,
/// with the commit ids replaced by `BASE` and `HEAD` so that snapshots
/// do not change with the example repo.
fn plan(repo: &Path, base: &str, head: &str, format: &str) -> (i32, String) {
    let output = muster_command()
        .arg("plan")
        .arg("--repo")
        .arg(repo)
        .args(["--base", base, "--head", head, "--format", format])
        .arg("--inventory")
        .arg(plan_dir().join("inventory.json"))
        .args(["--now", NOW, "--exit-code"])
        .output()
        .expect("muster runs");
    let stdout = String::from_utf8_lossy(&output.stdout)
        .replace(base, "BASE")
        .replace(&base[..12], "BASE")
        .replace(head, "HEAD")
        .replace(&head[..12], "HEAD");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "muster plan wrote to stderr: {stderr}");
    (output.status.code().expect("muster exits"), stdout)
}

/// Compares `actual` with the snapshot `name`, or rewrites it when
/// `UPDATE_SNAPSHOTS` is set. Returns a message when they differ.
fn check_snapshot(name: &str, actual: &str) -> Option<String> {
    let path = plan_dir().join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("snapshot writes");
        return None;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    (expected != actual).then(|| {
        format!(
            "{name} differs from its snapshot (UPDATE_SNAPSHOTS=1 rewrites it)\n--- expected\n{expected}\n--- actual\n{actual}"
        )
    })
}

#[test]
fn plans_match_their_snapshots() {
    let mut failures = Vec::new();
    for case in CASES {
        let (repo, base, head) = commits(case);
        let (code, text) = plan(repo.path(), &base, &head, "text");
        assert!(!text.contains("hunter2"), "a secret leaked: {text}");
        failures.extend(check_snapshot(
            &format!("{}.txt", case.name),
            &format!("exit: {code}\n{text}"),
        ));
        if case.markdown {
            let (code, markdown) = plan(repo.path(), &base, &head, "markdown");
            failures.extend(check_snapshot(
                &format!("{}.md", case.name),
                &format!("<!-- exit: {code} -->\n{markdown}"),
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn exit_codes_follow_git_diff() {
    let expected = [
        ("template_change", 1),
        ("selector_change", 1),
        ("resource_removed", 1),
        ("conflict", 2),
        ("schedule_change", 1),
        ("rbac_grant", 1),
        ("noop", 0),
    ];
    for (name, code) in expected {
        let case = CASES.iter().find(|c| c.name == name).expect("case exists");
        let (repo, base, head) = commits(case);
        assert_eq!(plan(repo.path(), &base, &head, "text").0, code, "{name}");
    }
}

#[test]
fn json_plan_is_versioned_and_lists_grouped_hosts() {
    let case = &CASES[0];
    let (repo, base, head) = commits(case);
    let (code, text) = plan(repo.path(), &base, &head, "json");
    assert_eq!(code, 1);
    let plan: serde_json::Value = serde_json::from_str(&text).expect("the plan is JSON");
    assert_eq!(plan["version"], 1);
    assert_eq!(plan["summary"]["hosts_total"], 5);
    assert_eq!(plan["summary"]["hosts_affected"], 3);
    let groups = plan["host_changes"].as_array().expect("host_changes");
    // web-01 has its own server name, which is context of the diff: the
    // changed line is the same, so the three web hosts are one group, shown
    // with web-01's context.
    assert_eq!(groups.len(), 1, "{text}");
    assert_eq!(
        groups[0]["hosts"],
        serde_json::json!(["web-01", "web-02", "web-03"])
    );
    assert_eq!(groups[0]["context_from"], "web-01");
}

#[test]
fn hosts_whose_changed_lines_differ_are_not_grouped() {
    // The added line names the server, which web-01's `Host` document sets
    // apart: web-01 gets another change than web-02 and web-03.
    let repo = TestRepo::from_example("plan-own-lines");
    let base = repo.tip("main").expect("committed");
    let template = std::fs::read_to_string(
        crate::support::git::example_repo().join("files/nginx/shop.conf.tmpl"),
    )
    .unwrap();
    let head = repo.commit(
        "name the server in a header",
        &[(
            "files/nginx/shop.conf.tmpl".to_string(),
            Change::file(template.replace(
                "    root /var/www/shop;\n",
                "    root /var/www/shop;\n    add_header X-Served-By {{ vars.server_name }};\n",
            )),
        )],
    );
    let (code, text) = plan(repo.path(), &base, &head, "json");
    assert_eq!(code, 1, "{text}");
    let plan: serde_json::Value = serde_json::from_str(&text).expect("the plan is JSON");
    let groups = plan["host_changes"].as_array().expect("host_changes");
    assert_eq!(groups.len(), 2, "{text}");
    assert_eq!(groups[0]["hosts"], serde_json::json!(["web-02", "web-03"]));
    assert!(groups[0].get("context_from").is_none(), "{text}");
    assert_eq!(groups[1]["hosts"], serde_json::json!(["web-01"]));
    assert!(
        groups[1]["changes"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("+    add_header X-Served-By shop.example.com;"),
        "{text}"
    );
}

#[test]
fn an_invalid_head_prints_every_diagnostic_and_exits_2() {
    let repo = TestRepo::from_example("plan-invalid");
    let base = repo.tip("main").expect("committed");
    let head = repo.commit(
        "break two documents",
        &[
            (
                "groups.yaml".to_string(),
                Change::file("apiVersion: muster/v1\nkind: Group\nname: web\nselecter: {}\n"),
            ),
            (
                "policies/motd.yaml".to_string(),
                Change::file("apiVersion: muster/v1\nkind: Policy\nname: motd\ntargets: 3\n"),
            ),
        ],
    );
    let (code, text) = plan(repo.path(), &base, &head, "text");
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("groups.yaml:"), "{text}");
    assert!(text.contains("policies/motd.yaml:"), "{text}");
    assert!(text.contains("the head does not validate"), "{text}");
}

// Plan and controller agree: a real controller follows a real repo, and
// after each commit the desired state it signed for every host equals the
// plan's compiled head for that host, byte for byte in canonical JSON. The
// inventory comes from `muster hosts export` on the controller's database.
backends!(plan_and_controller_agree_byte_for_byte, |db: TestDb| {
    async move {
        let harness = Harness::start(db).await;
        let web_token = harness.token(5, true, &[("role", "web")], 3600).await;
        let db_token = harness.token(5, true, &[("role", "db")], 3600).await;
        let hosts = vec![
            harness.enroll(&web_token, "web-01").await,
            harness.enroll(&web_token, "web-02").await,
            harness.enroll(&db_token, "db-01").await,
        ];
        for host in &hosts {
            harness.stored_bundle(&host.host_id, 0).await;
        }
        let export = muster_command()
            .args(["hosts", "export"])
            .env("MUSTER_DATA_DIR", harness.data_dir())
            .env("MUSTER_DATABASE_URL", &harness.db_url)
            .output()
            .expect("muster runs");
        let inventory = Inventory::from_json(&succeeded(&export)).expect("the export reads");
        assert_eq!(inventory.hosts.len(), 3);
        assert_eq!(inventory.hosts[0].name, "db-01", "sorted by name");
        assert_eq!(inventory.hosts[0].labels["role"], "db");
        assert_eq!(inventory.hosts[0].facts["os"], "debian");

        let edits: [&[(&str, &str, &str)]; 3] = [
            &[(
                "files/nginx/shop.conf.tmpl",
                "    root /var/www/shop;\n",
                "    root /var/www/shop;\n    gzip on;\n",
            )],
            &[("policies/nginx.yaml", "groups: [web]", "groups: [db]")],
            &[
                (
                    "policies/motd.yaml",
                    "mode: \"0644\"",
                    "mode: \"0640\"\n      owner: root",
                ),
                ("hosts/web-01.yaml", "shop.example.com", "www.example.com"),
            ],
        ];
        for (index, edit) in edits.iter().enumerate() {
            for (path, from, to) in *edit {
                harness.repo.edit(path, from, to);
            }
            let commit = harness.repo.commit_all(&format!("agreement {index}"));
            let record = harness.commit_state(&commit).await;
            assert_eq!(record.state, CommitState::Deployed, "{record:?}");
            let source = GitSource::open_local(harness.repo.path(), None).unwrap();
            let planned = plan::compile_revision(&source, &commit, &inventory).unwrap();
            for host in &hosts {
                let stored = harness.store.bundle(&host.host_id).await.unwrap().unwrap();
                let deployed = bundle_of(&SignedBundle {
                    bundle: stored.bundle,
                    signature: stored.signature,
                });
                assert_eq!(
                    deployed.desired.to_canonical_json(),
                    planned.desired[&host.host_id].to_canonical_json(),
                    "commit {index}, host {}",
                    host.name
                );
            }
        }

        // The same plan with the inventory fetched from the controller by a
        // user holding `hosts:read` (carol is a fleet-wide viewer); a user
        // without it is refused.
        let now = muster_controller::server::now();
        let hash = hash_password(PASSWORD).unwrap();
        for user in ["carol", "mallory"] {
            harness
                .store
                .add_user(user, &hash, false, now)
                .await
                .unwrap();
        }
        let inventory_file = TempDir::new("plan-inventory");
        inventory_file.write("inventory.json", &export.stdout);
        let repo_path = harness.repo.path().to_path_buf();
        let run = |extra: Vec<String>| {
            let repo_path = repo_path.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    muster_command()
                        .arg("plan")
                        .arg("--repo")
                        .arg(&repo_path)
                        .args(["--base", "HEAD~2", "--head", "HEAD", "--format", "json"])
                        .args(extra)
                        .env_remove("MUSTER_TOKEN")
                        .output()
                        .expect("muster runs")
                })
                .await
                .unwrap()
            }
        };
        let from_file = run(vec![
            "--inventory".into(),
            inventory_file
                .path()
                .join("inventory.json")
                .display()
                .to_string(),
        ])
        .await;
        let carol = login(&harness, "carol").await;
        let from_controller = run(vec![
            "--controller".into(),
            harness.url.clone(),
            "--token".into(),
            carol,
        ])
        .await;
        assert_eq!(succeeded(&from_controller), succeeded(&from_file));
        let mallory = login(&harness, "mallory").await;
        let refused = run(vec![
            "--controller".into(),
            harness.url.clone(),
            "--token".into(),
            mallory,
        ])
        .await;
        assert_eq!(refused.status.code(), Some(2), "{}", output_text(&refused));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("hosts:read"),
            "{}",
            output_text(&refused)
        );
        harness.stop().await;
    }
});

const PASSWORD: &str = "correct horse battery staple";

async fn login(harness: &Harness, user: &str) -> String {
    let response = harness
        .http
        .post(format!("{}/v1/login", harness.url))
        .json(&serde_json::json!({"user": user, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "login of {user}");
    response.json::<LoginResponse>().await.unwrap().token
}

// The pull request that adds the fleet repo under a sub-directory: the base
// has no fleet yet and is compared as an empty fleet.
#[test]
fn a_base_without_the_fleet_repo_is_an_empty_fleet() {
    let repo = TestRepo::empty("plan-new-subdir");
    let base = repo.commit(
        "A readme",
        &[("README".to_string(), Change::file("hello\n"))],
    );
    let changes: Vec<(String, Change)> = crate::support::git::files_of(&example_repo())
        .into_iter()
        .map(|(path, bytes)| (format!("fleet/{path}"), Change::File(bytes)))
        .collect();
    let head = repo.commit("Add the fleet repo", &changes);
    let output = muster_command()
        .arg("plan")
        .arg("--repo")
        .arg(repo.path())
        .args([
            "--path",
            "fleet",
            "--base",
            &base,
            "--head",
            &head,
            "--exit-code",
        ])
        .arg("--inventory")
        .arg(plan_dir().join("inventory.json"))
        .args(["--now", NOW])
        .output()
        .expect("muster runs");
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "note: the base has no fleet repo at the path: it is compared as an empty fleet"
        ),
        "{text}"
    );
    assert!(
        text.contains("blast radius: 5 of 5 hosts affected"),
        "{text}"
    );
}

// `GET /v1/plan` on a running controller gives the plan `muster plan`
// prints for the same commits and hosts; it needs `commits:read`, names
// unknown commits, and answers an invalid head with its diagnostics.
backends!(the_controller_serves_the_same_plan, |db: TestDb| {
    async move {
        let harness = Harness::start(db).await;
        let web_token = harness.token(5, true, &[("role", "web")], 3600).await;
        let db_token = harness.token(5, true, &[("role", "db")], 3600).await;
        for (token, name) in [
            (&web_token, "web-01"),
            (&web_token, "web-02"),
            (&db_token, "db-01"),
        ] {
            let host = harness.enroll(token, name).await;
            harness.stored_bundle(&host.host_id, 0).await;
        }
        let local = GitSource::open_local(harness.repo.path(), None).unwrap();
        let base = local.resolve("HEAD").unwrap().id;
        harness.repo.edit(
            "files/nginx/shop.conf.tmpl",
            "    root /var/www/shop;\n",
            "    root /var/www/shop;\n    gzip on;\n",
        );
        let head = harness.repo.commit_all("gzip");
        assert_eq!(
            harness.commit_state(&head).await.state,
            CommitState::Deployed
        );

        let now = muster_controller::server::now();
        let hash = hash_password(PASSWORD).unwrap();
        for user in ["carol", "mallory"] {
            harness
                .store
                .add_user(user, &hash, false, now)
                .await
                .unwrap();
        }
        let carol = login(&harness, "carol").await;
        let get = |token: String, query: String| {
            let http = harness.http.clone();
            let url = format!("{}/v1/plan?{query}", harness.url);
            async move {
                let response = http.get(url).bearer_auth(token).send().await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            }
        };
        let (status, served) = get(
            carol.clone(),
            format!("base={base}&head={head}&format=text"),
        )
        .await;
        assert_eq!(status, 200, "{served}");

        let export = muster_command()
            .args(["hosts", "export"])
            .env("MUSTER_DATA_DIR", harness.data_dir())
            .env("MUSTER_DATABASE_URL", &harness.db_url)
            .output()
            .expect("muster runs");
        let inventory_file = TempDir::new("plan-route-inventory");
        inventory_file.write("inventory.json", succeeded(&export));
        let printed = muster_command()
            .arg("plan")
            .arg("--repo")
            .arg(harness.repo.path())
            .args(["--base", &base, "--head", &head])
            .arg("--inventory")
            .arg(inventory_file.path().join("inventory.json"))
            .output()
            .expect("muster runs");
        assert_eq!(served, succeeded(&printed));
        assert!(
            served.contains("blast radius: 2 of 3 hosts affected"),
            "{served}"
        );

        let (status, json) = get(carol.clone(), format!("base={base}&head={head}")).await;
        assert_eq!(status, 200);
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["summary"]["hosts_affected"], 2);

        let mallory = login(&harness, "mallory").await;
        let (status, body) = get(mallory, format!("base={base}&head={head}")).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("commits:read"), "{body}");

        let unknown = "0".repeat(40);
        let (status, body) = get(carol.clone(), format!("base={base}&head={unknown}")).await;
        assert_eq!(status, 404, "{body}");

        // A pull request's branch, which the controller does not track, is
        // fetched for the plan; main does not move and nothing deploys.
        harness.repo.edit(
            "files/nginx/shop.conf.tmpl",
            "    gzip on;\n",
            "    gzip on;\n    gzip_comp_level 5;\n",
        );
        let feature = harness
            .repo
            .commit_all_on_branch("feature/gzip-level", "gzip level");
        let (status, served) = get(
            carol.clone(),
            "base=main&head=feature/gzip-level&format=text".to_string(),
        )
        .await;
        assert_eq!(status, 200, "{served}");
        let printed = muster_command()
            .arg("plan")
            .arg("--repo")
            .arg(harness.repo.path())
            .args(["--base", &head, "--head", &feature])
            .arg("--inventory")
            .arg(inventory_file.path().join("inventory.json"))
            .output()
            .expect("muster runs");
        assert_eq!(served, succeeded(&printed));
        assert!(served.contains("+    gzip_comp_level 5;"), "{served}");
        assert!(
            harness.store.commit(&feature).await.unwrap().is_none(),
            "a branch fetched for a plan is never deployed"
        );
        let (status, body) = get(carol.clone(), "base=main&head=no-such-branch".to_string()).await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("`no-such-branch`"), "{body}");

        harness
            .repo
            .edit("policies/nginx.yaml", "groups: [web]", "groups: [webb]");
        let bad = harness.repo.commit_all("a group that does not exist");
        assert_eq!(
            harness.commit_state(&bad).await.state,
            CommitState::Rejected
        );
        let (status, body) = get(carol, format!("base={head}&head={bad}")).await;
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("group `webb` does not exist"), "{body}");
        assert!(body.contains("\"error\":\"invalid_head\""), "{body}");
        harness.stop().await;
    }
});
