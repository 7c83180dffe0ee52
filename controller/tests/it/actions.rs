//! Ad-hoc actions end to end: a real controller, real `muster-agent run
//! --root` processes and the real `muster` command line.
//!
//! An operator (bob, in `web-team`, which the example repo binds to the
//! `operator` role on group `web`) logs in with `muster login`, runs
//! `restart-service` on `web` with `muster run --wait`, and reads the
//! results with `muster jobs show`; the same operator is refused on a `db`
//! host (403 naming it, no jobs, no audit commit), cannot reach any route
//! that changes RBAC and cannot read tokens; an unwritable audit repository
//! blocks an action (503, no jobs); hostile parameter values reach a script
//! byte for byte while a newline is refused by type; a secret parameter's
//! value shows in no log line, API or CLI answer or audit object; every
//! action has its audit commit authored by its user, outcomes follow, and
//! `muster audit verify` passes with the store's request ids; a binding
//! removed in Git revokes the operator's access on the next deploy, for
//! the session it already has.

use std::io::Write;
use std::path::Path;
use std::process::Output;
use std::sync::Mutex;

use muster_controller::server::user_api::{ActionCreated, JobDetail};
use muster_controller::server::user_auth::{LoginResponse, hash_password};
use muster_controller::store::{CommitState, JobFilter, JobSource, JobState};
use serde_json::{Value, json};

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Harness, eventually};
use crate::support::TempDir;
use crate::support::agent::TestAgent;
use crate::support::cli::{muster_command, output_text, run_with_stdin, succeeded};
use crate::users::assert_no_secret_in_repo;

const PASSWORD: &str = "correct horse battery staple";
const SECRET: &str = "s3cr3t-Sesame-7f41c2";

/// Every log line of this test binary, at debug for the controller.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,muster_controller=debug",
        ))
        .with_writer(|| Capture)
        .with_ansi(false)
        .try_init();
}

fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Scripts this test adds to the example repo: one that writes its
/// parameter's bytes to a file, one with a secret parameter.
const TEST_SCRIPTS: &str = r#"timeout: 2m
targets:
  groups: [all]
---
apiVersion: muster/v1
kind: Script
name: echo-param
interpreter: /bin/sh
body: |
  printf '%s' "$MUSTER_PARAM_X" > "$MUSTER_ROOT/param"
parameters:
  - name: x
    type: string
    required: true
---
apiVersion: muster/v1
kind: Script
name: use-secret
interpreter: /bin/sh
body: |
  printf '%s' "$MUSTER_PARAM_PASSWORD" > "$MUSTER_ROOT/secret"
  echo "used the password"
parameters:
  - name: password
    type: string
    required: true
    secret: true
"#;

/// Runs the `muster` binary with its own config dir (for the session).
async fn muster(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut command = muster_command();
    command
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("USER", "operator")
        .env_remove("MUSTER_TOKEN")
        .env_remove("MUSTER_SERVER")
        .env_remove("SUDO_USER");
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || run_with_stdin(&mut command, &stdin))
        .await
        .unwrap()
}

async fn login(h: &Harness, user: &str) -> String {
    let response = h
        .http
        .post(format!("{}/v1/login", h.url))
        .json(&json!({"user": user, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "login of {user}");
    response.json::<LoginResponse>().await.unwrap().token
}

async fn post(h: &Harness, token: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = h
        .http
        .post(format!("{}{path}", h.url))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(h: &Harness, token: &str, path: &str) -> (u16, String) {
    let response = h
        .http
        .get(format!("{}{path}", h.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Runs a script on one host through the API and waits for its job to end.
async fn run_script(h: &Harness, token: &str, body: Value) -> (ActionCreated, JobDetail) {
    let (status, answer) = post(h, token, "/v1/actions", &body).await;
    assert_eq!(status, 201, "{answer}");
    let created: ActionCreated = serde_json::from_value(answer).unwrap();
    let job_id = created.jobs[0].job_id.clone();
    let detail = eventually(&format!("job {job_id} to end"), || async {
        let (_, body) = get(h, token, &format!("/v1/jobs/{job_id}")).await;
        let detail: JobDetail = serde_json::from_str(&body).ok()?;
        matches!(
            detail.job.state.as_str(),
            "succeeded" | "failed" | "refused" | "timed_out"
        )
        .then_some(detail)
    })
    .await;
    (created, detail)
}

/// The audit repository's commits: (author name, message), newest first.
fn audit_commits(data: &Path) -> Vec<(String, String)> {
    let Ok(repo) = git2::Repository::open_bare(data.join("audit.git")) else {
        return Vec::new();
    };
    let Ok(mut walk) = repo.revwalk() else {
        return Vec::new();
    };
    if walk.push_ref("refs/heads/main").is_err() {
        return Vec::new();
    }
    walk.map(|id| {
        let commit = repo.find_commit(id.unwrap()).unwrap();
        (
            commit.author().name().unwrap_or_default().to_string(),
            commit.message().unwrap_or_default().to_string(),
        )
    })
    .collect()
}

/// An audit commit's author and the files it adds.
fn audit_commit(data: &Path, id: &str) -> (String, Vec<String>) {
    let repo = git2::Repository::open_bare(data.join("audit.git")).unwrap();
    let commit = repo.find_commit(git2::Oid::from_str(id).unwrap()).unwrap();
    let parent = commit.parent(0).ok().map(|parent| parent.tree().unwrap());
    let diff = repo
        .diff_tree_to_tree(parent.as_ref(), Some(&commit.tree().unwrap()), None)
        .unwrap();
    let files = diff
        .deltas()
        .filter_map(|delta| {
            delta
                .new_file()
                .path()
                .map(|path| path.display().to_string())
        })
        .collect();
    (
        commit.author().name().unwrap_or_default().to_string(),
        files,
    )
}

/// The ad-hoc actions (a scheduled script may get due during the test).
async fn ad_hoc_actions(h: &Harness) -> Vec<muster_controller::store::ActionRecord> {
    let mut actions = h.store.actions(1_000).await.unwrap();
    actions.retain(|action| action.source == JobSource::AdHoc);
    actions
}

async fn n_actions(h: &Harness) -> usize {
    ad_hoc_actions(h).await.len()
}

backends!(
    operators_run_scoped_audited_actions_end_to_end,
    |db: TestDb| {
        async move {
            capture_logs();
            let h = Harness::start(db).await;
            // The test's scripts, on top of the example repo.
            h.repo.edit(
                "scripts/restart-service.yaml",
                "timeout: 2m\ntargets:\n  groups: [all]\n",
                TEST_SCRIPTS,
            );
            let commit = h.repo.commit_all("Scripts for the actions test");
            assert_eq!(h.commit_state(&commit).await.state, CommitState::Deployed);
            eventually("the test commit's rules to be in force", || async {
                (h.access().current().commit() == Some(commit.as_str())).then_some(())
            })
            .await;

            let hash = hash_password(PASSWORD).unwrap();
            let now = muster_controller::server::now();
            for user in ["alice", "bob"] {
                h.store.add_user(user, &hash, false, now).await.unwrap();
            }
            let alice = login(&h, "alice").await;

            let web_token = h.token(2, true, &[("role", "web")], 3600).await;
            let db_token = h.token(1, true, &[("role", "db")], 3600).await;
            let agents = [
                TestAgent::new("act-web-01"),
                TestAgent::new("act-web-02"),
                TestAgent::new("act-db-01"),
            ];
            for (agent, (name, token)) in agents.iter().zip([
                ("web-01", &web_token),
                ("web-02", &web_token),
                ("db-01", &db_token),
            ]) {
                agent.enroll(&h, token, name).await;
            }
            let running: Vec<_> = agents.iter().map(TestAgent::spawn).collect();

            // bob logs in with the real command line; the session is his.
            let config = TempDir::new("actions-cli-config");
            let logged_in = muster(
                config.path(),
                &["login", "--server", &h.url, "--user", "bob"],
                &format!("{PASSWORD}\n"),
            )
            .await;
            assert!(succeeded(&logged_in).contains("logged in"));
            let session: Value = serde_json::from_str(
                &std::fs::read_to_string(config.path().join("muster/session.json")).unwrap(),
            )
            .unwrap();
            let bob = session["token"].as_str().unwrap().to_string();

            // An audit repository that cannot be written blocks the action.
            let audit_repo = h.data_dir().join("audit.git");
            assert!(!audit_repo.exists(), "no action was audited yet");
            std::fs::write(&audit_repo, "not a repository").unwrap();
            let restart_web = json!({
                "script": "restart-service",
                "params": {"service": "nginx"},
                "targets": {"groups": ["web"]},
            });
            let (status, answer) = post(&h, &bob, "/v1/actions", &restart_web).await;
            assert_eq!(status, 503, "{answer}");
            assert!(
                answer["error"]
                    .as_str()
                    .unwrap()
                    .contains("audit repository"),
                "{answer}"
            );
            assert_eq!(n_actions(&h).await, 0, "no action without its audit commit");
            assert!(
                h.store
                    .jobs(&JobFilter::default())
                    .await
                    .unwrap()
                    .is_empty()
            );
            std::fs::remove_file(&audit_repo).unwrap();

            // bob runs restart-service on web from the command line and waits.
            let ran = muster(
                config.path(),
                &[
                    "run",
                    "restart-service",
                    "--group",
                    "web",
                    "--param",
                    "service=nginx",
                    "--wait",
                ],
                "",
            )
            .await;
            let out = succeeded(&ran);
            assert!(out.contains("web-01") && out.contains("web-02"), "{out}");
            assert!(!out.contains("db-01"), "{out}");
            assert!(out.contains("succeeded (exit 0)"), "{out}");
            let actions = ad_hoc_actions(&h).await;
            assert_eq!(actions.len(), 1);
            let action = &actions[0];
            assert_eq!(action.requested_by, "bob");
            assert_eq!(action.parameters, json!({"service": "nginx"}));
            let jobs = h
                .store
                .jobs(&JobFilter {
                    action_id: Some(action.id.clone()),
                    ..JobFilter::default()
                })
                .await
                .unwrap();
            assert_eq!(jobs.len(), 2);
            assert!(jobs.iter().all(|job| job.state == JobState::Succeeded));
            for agent in &agents[..2] {
                assert_eq!(
                    agent.file("/var/lib/restart-service/requests").as_deref(),
                    Some("nginx\n")
                );
            }
            assert!(
                agents[2]
                    .file("/var/lib/restart-service/requests")
                    .is_none()
            );

            // `muster jobs show` prints the result; `jobs list` lists both.
            let shown = succeeded(&muster(config.path(), &["jobs", "show", &jobs[0].id], "").await);
            for expected in [
                "state      succeeded",
                "exit code  0",
                "recorded a restart of nginx",
                "requested",
                "finished",
            ] {
                assert!(shown.contains(expected), "`{expected}` in:\n{shown}");
            }
            let listed = succeeded(
                &muster(config.path(), &["jobs", "list", "--action", &action.id], "").await,
            );
            assert_eq!(listed.matches("succeeded").count(), 2, "{listed}");

            // A db host is outside bob's scope: refused whole, named, nothing
            // created, nothing audited.
            let commits_before = audit_commits(h.data_dir()).len();
            for targets in [
                json!({"hosts": ["db-01"]}),
                json!({"groups": ["web"], "hosts": ["db-01"]}),
            ] {
                let (status, answer) = post(
                &h,
                &bob,
                "/v1/actions",
                &json!({"script": "restart-service", "params": {"service": "nginx"}, "targets": targets}),
            )
            .await;
                assert_eq!(status, 403, "{answer}");
                let message = answer["error"].as_str().unwrap();
                assert!(
                    message.contains("db-01") && !message.contains("web-01"),
                    "{message}"
                );
            }
            let refused = muster(
                config.path(),
                &[
                    "run",
                    "restart-service",
                    "--host",
                    "db-01",
                    "--param",
                    "service=nginx",
                ],
                "",
            )
            .await;
            assert_eq!(refused.status.code(), Some(2));
            assert!(
                output_text(&refused).contains("403") && output_text(&refused).contains("db-01"),
                "{}",
                output_text(&refused)
            );
            assert_eq!(n_actions(&h).await, 1);
            assert_eq!(audit_commits(h.data_dir()).len(), commits_before);
            // Reboots are not the operator's at all.
            let (status, _) = post(
                &h,
                &bob,
                "/v1/actions",
                &json!({"reboot": true, "targets": {"groups": ["web"]}}),
            )
            .await;
            assert_eq!(status, 403);

            // No route changes RBAC: it lives in Git. Tokens need tokens:manage.
            for path in [
                "/v1/roles",
                "/v1/rolebindings",
                "/v1/bindings",
                "/v1/teams",
                "/v1/users/bob/roles",
            ] {
                let (status, _) = post(
                    &h,
                    &bob,
                    path,
                    &json!({"role": "admin", "subjects": [{"user": "bob"}]}),
                )
                .await;
                assert!(status == 404 || status == 405, "{path} answered {status}");
            }
            let (status, body) = get(&h, &bob, "/v1/tokens").await;
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("tokens:manage"), "{body}");
            let (status, _) = post(&h, &bob, "/v1/tokens", &json!({"uses": 1})).await;
            assert!(
                status == 404 || status == 405,
                "no route creates tokens: {status}"
            );
            assert_eq!(get(&h, &alice, "/v1/tokens").await.0, 200);
            // bob's host list is his scope (web) and the viewers' (fleet).
            let (status, hosts) = get(&h, &bob, "/v1/hosts").await;
            assert_eq!(status, 200);
            assert!(hosts.contains("db-01"), "viewer is fleet-wide: {hosts}");

            // Hostile parameter values reach the script byte for byte.
            for hostile in [
                "; rm -rf /",
                "$(touch pwned)",
                "`touch pwned`",
                "-rf --no-preserve-root",
                "a'b\"c \\ $HOME * ?",
            ] {
                let (_, detail) = run_script(
                &h,
                &alice,
                json!({"script": "echo-param", "params": {"x": hostile}, "targets": {"hosts": ["web-01"]}}),
            )
            .await;
                assert_eq!(detail.job.state, "succeeded", "{detail:?}");
                assert_eq!(
                    std::fs::read(agents[0].path("/param")).unwrap(),
                    hostile.as_bytes()
                );
                assert!(!agents[0].path("/pwned").exists());
            }
            let (status, answer) = post(
            &h,
            &alice,
            "/v1/actions",
            &json!({"script": "echo-param", "params": {"x": "one\ntwo"}, "targets": {"hosts": ["web-01"]}}),
        )
        .await;
            assert_eq!(status, 400, "{answer}");
            assert!(
                answer["error"].as_str().unwrap().contains("one line"),
                "{answer}"
            );
            let (status, answer) = post(
            &h,
            &alice,
            "/v1/actions",
            &json!({"script": "echo-param", "params": {"x": "a", "y": "b"}, "targets": {"hosts": ["web-01"]}}),
        )
        .await;
            assert_eq!(status, 400, "{answer}");
            assert!(
                answer["error"]
                    .as_str()
                    .unwrap()
                    .contains("unknown parameter `y`")
            );

            // A secret parameter reaches the script and nothing else.
            let (created, detail) = run_script(
            &h,
            &alice,
            json!({"script": "use-secret", "params": {"password": SECRET}, "targets": {"hosts": ["web-02"]}}),
        )
        .await;
            assert_eq!(detail.job.state, "succeeded", "{detail:?}");
            assert_eq!(agents[1].file("/secret").as_deref(), Some(SECRET));
            let mut answers = vec![
                get(&h, &alice, &format!("/v1/actions/{}", created.action_id))
                    .await
                    .1,
                get(&h, &alice, &format!("/v1/jobs/{}", created.jobs[0].job_id))
                    .await
                    .1,
                get(&h, &alice, "/v1/jobs?limit=1000").await.1,
            ];
            answers.push(output_text(
                &muster(
                    config.path(),
                    &["jobs", "show", &created.jobs[0].job_id],
                    "",
                )
                .await,
            ));
            for answer in &answers {
                assert!(
                    !answer.contains(SECRET),
                    "the secret is in an answer: {answer}"
                );
            }
            assert!(answers[0].contains("<redacted>"), "{}", answers[0]);

            // Every action has its audit commit, authored by its user; the
            // outcomes follow; `muster audit verify` passes.
            let actions = ad_hoc_actions(&h).await;
            assert_eq!(actions.len(), 7);
            for action in &actions {
                let request_id = action.request_id.as_deref().unwrap();
                let commit = action
                    .audit_commit
                    .as_deref()
                    .expect("every action has its audit commit");
                let (author, files) = audit_commit(h.data_dir(), commit);
                assert_eq!(author, action.requested_by, "the author of {commit}");
                assert!(
                    files.iter().any(|file| file.starts_with("actions/")
                        && file.ends_with(&format!("/{request_id}.yaml"))),
                    "{commit} records {request_id}: {files:?}"
                );
                eventually(&format!("the outcome of {request_id}"), || async {
                    audit_commits(h.data_dir())
                        .iter()
                        .any(|(author, message)| {
                            author == "muster"
                                && message.starts_with(&format!("outcome {request_id}"))
                        })
                        .then_some(())
                })
                .await;
            }
            let data = h.data_dir().display().to_string();

            // Host approval: scoped on the API, audited on both paths.
            let (status, answer) = post(&h, &bob, "/v1/hosts/db-01/reject", &json!({})).await;
            assert_eq!(status, 403, "bob approves web hosts only: {answer}");
            let rejected = muster(
                config.path(),
                &[
                    "hosts",
                    "reject",
                    "db-01",
                    "--data-dir",
                    &data,
                    "--database-url",
                    &h.db_url,
                ],
                "",
            )
            .await;
            assert!(succeeded(&rejected).contains("db-01 is rejected"));
            let (author, message) = audit_commits(h.data_dir()).remove(0);
            assert_eq!(
                (author.as_str(), message.starts_with("hosts.reject db-01")),
                ("operator", true)
            );
            let (status, answer) = post(&h, &alice, "/v1/hosts/db-01/approve", &json!({})).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["state"], "approved");
            let (author, message) = audit_commits(h.data_dir()).remove(0);
            assert_eq!(
                (author.as_str(), message.starts_with("hosts.approve db-01")),
                ("alice", true)
            );
            let verified = muster(
                config.path(),
                &[
                    "audit",
                    "verify",
                    "--data-dir",
                    &data,
                    "--database-url",
                    &h.db_url,
                ],
                "",
            )
            .await;
            assert!(
                succeeded(&verified).starts_with("ok:"),
                "{}",
                output_text(&verified)
            );
            assert_no_secret_in_repo(&h.data_dir().join("audit.git"), &[SECRET]);
            let logs = captured_logs();
            assert!(
                logs.contains("ad-hoc action accepted"),
                "the controller's logs are captured"
            );
            assert!(
                !logs.contains(SECRET),
                "the secret is in the controller's log"
            );
            for agent in &running {
                assert!(
                    !agent.log().contains(SECRET),
                    "the secret is in an agent's log"
                );
            }

            // A binding removed in Git revokes bob's access on the next deploy,
            // for the session he has.
            h.repo.edit(
                "rbac/bindings.yaml",
                "  - team: web-team\nscope:\n  groups: [web]",
                "  - user: dave\nscope:\n  groups: [web]",
            );
            let revoked = h.repo.commit_all("web-team no longer operates web");
            assert_eq!(h.commit_state(&revoked).await.state, CommitState::Deployed);
            eventually("the revoking commit's rules to be in force", || async {
                (h.access().current().commit() == Some(revoked.as_str())).then_some(())
            })
            .await;
            let (status, answer) = post(&h, &bob, "/v1/actions", &restart_web).await;
            assert_eq!(status, 403, "{answer}");
            assert!(
                answer["error"].as_str().unwrap().contains("does not have"),
                "{answer}"
            );

            drop(running);
            h.stop().await;
        }
    }
);
