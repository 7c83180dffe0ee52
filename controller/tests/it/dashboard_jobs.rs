//! The dashboard's commits and jobs pages: deployed and rejected commits
//! with their diagnostics and plans; running a script from the form, its
//! result appearing on the action's page; who may see the run form and
//! run what where; CSRF; and secret parameters kept out of every page.

use axum::http::StatusCode;
use muster_controller::store::{CommitState, JobState};
use muster_schemas::protocol::JobsResponse;

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Agent, Harness, eventually};
use crate::support::dashboard::{Page, add_user, login};

const PASSWORD: &str = "correct horse battery staple";

/// A controller on the example fleet, deployed, with the example's users
/// (alice admin, bob web operator and viewer, carol viewer) and erin, who
/// holds no role at all.
async fn start(db: TestDb) -> Harness {
    let harness = Harness::start(db).await;
    for user in ["alice", "bob", "carol", "erin"] {
        add_user(&harness, user, PASSWORD).await;
    }
    eventually("the example to deploy", || async {
        harness.store.deployed_commit().await.unwrap()
    })
    .await;
    harness
}

/// Waits until `commit` is the one in force.
async fn deployed(harness: &Harness, commit: &str) {
    eventually(&format!("commit {commit} to deploy"), || async {
        let in_force = harness.store.deployed_commit().await.unwrap()?;
        (in_force.id == commit).then_some(())
    })
    .await;
}

/// The table row of commit `id` on the commits page.
fn row_of<'p>(page: &'p Page, id: &str) -> &'p str {
    let start = format!(r#"<tr id="{id}""#);
    let row = page
        .body
        .split_once(&start)
        .unwrap_or_else(|| panic!("no row for commit {id}:\n{}", page.body))
        .1;
    row.split_once("</tr>").map_or(row, |(row, _)| row)
}

async fn n_actions(harness: &Harness) -> usize {
    harness.store.actions(1_000).await.unwrap().len()
}

/// The action id a run form's redirect names.
fn action_of(page: &Page) -> String {
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let location = page.location().expect("a redirect has a location");
    location
        .strip_prefix("/jobs/")
        .unwrap_or_else(|| panic!("the run form goes to the action, not {location}"))
        .to_string()
}

/// The fake agent fetches its one job, says it started and posts `stdout`
/// as its successful result; returns the job id.
async fn run_job(harness: &Harness, agent: &Agent, stdout: &str) -> String {
    let path = format!("/v1/hosts/{}/jobs?wait=0", agent.host_id);
    let signed = eventually(&format!("a job for {}", agent.name), || async {
        let answer = agent.send("GET", &path, Vec::new(), &agent.signing()).await;
        if answer.status() != 200 {
            return None;
        }
        let mut body: JobsResponse = answer.json().await.unwrap();
        body.jobs.pop()
    })
    .await;
    let now = muster_controller::server::now();
    let job = muster_schemas::job::verify_job(&harness.public_key, &signed, &agent.host_id, now)
        .expect("the job is signed for this host");
    let post = |what: &str, body: serde_json::Value| {
        let path = format!("/v1/hosts/{}/jobs/{}/{what}", agent.host_id, job.job_id);
        async move {
            agent
                .send(
                    "POST",
                    &path,
                    serde_json::to_vec(&body).unwrap(),
                    &agent.signing(),
                )
                .await
                .status()
        }
    };
    let started = serde_json::json!({"job_id": job.job_id, "started_at": now});
    assert_eq!(post("started", started).await, 200);
    let result = serde_json::json!({
        "job_id": job.job_id, "state": "succeeded", "exit_code": 0,
        "stdout": stdout, "stderr": "", "started_at": now, "finished_at": now,
    });
    assert_eq!(post("result", result).await, 200);
    job.job_id
}

backends!(
    commits_show_what_is_in_force_what_was_rejected_and_the_plan,
    |db: TestDb| {
        async move {
            let harness = start(db).await;
            let example = harness.store.deployed_commit().await.unwrap().unwrap();
            let alice = login(&harness, "alice", PASSWORD).await;
            alice.get("/commits").await.assert_shows(&[
                &format!(r#"id="{}""#, example.id),
                &example.summary,
                "in force",
                "Plan against its parent",
            ]);

            // A change to the login banner deploys; the example is then
            // deployed but no longer in force.
            harness.repo.edit(
                "files/motd",
                "This host is managed by muster.",
                "This host is managed by muster (and watched).",
            );
            let motd = harness.repo.commit_all("motd: say it is watched");
            deployed(&harness, &motd).await;
            let page = alice.get("/commits").await;
            page.assert_shows(&[&format!(r#"id="{motd}""#), "motd: say it is watched"]);
            assert!(
                row_of(&page, &motd).contains("in force"),
                "the new commit is in force:\n{}",
                page.body
            );
            let example_row = row_of(&page, &example.id);
            assert!(
                example_row.contains(">deployed<") && !example_row.contains("in force"),
                "{}",
                page.body
            );

            // The example is the repository's first commit: nothing to
            // plan it against, and the page says so.
            alice
                .get(&format!("/commits/{}/plan", example.id))
                .await
                .assert_shows(&["This commit has no parent", "Back to the commits"]);

            // Its plan against its parent, rendered in the page.
            alice
                .get(&format!("/commits/{motd}/plan"))
                .await
                .assert_shows(&["<pre class=\"plan\">", "plan: ", "motd: say it is watched"]);

            // A commit that does not validate is listed as rejected, each
            // problem at its file:line:col.
            harness.repo.edit(
                "groups.yaml",
                "selector:\n  role: db",
                "selectr:\n  role: db",
            );
            let bad = harness.repo.commit_all("groups: a typo");
            let record = harness.commit_state(&bad).await;
            assert_eq!(record.state, CommitState::Rejected);
            let diagnostic = &record.diagnostics.as_array().unwrap()[0];
            let place = format!(
                "{}:{}:{}",
                diagnostic["file"].as_str().unwrap(),
                diagnostic["line"],
                diagnostic["column"]
            );
            assert!(place.starts_with("groups.yaml:"), "{place}");
            let page = alice.get("/commits").await;
            page.assert_shows(&[&format!(r#"id="{bad}""#), "groups: a typo", &place]);
            let row = row_of(&page, &bad);
            assert!(
                row.contains("rejected") && row.contains("not deployed"),
                "{}",
                page.body
            );
            // The motd commit stays in force.
            assert!(row_of(&page, &motd).contains("in force"), "{}", page.body);
            alice
                .get(&format!("/commits/{bad}/plan"))
                .await
                .assert_shows(&["does not validate or compile", &place]);

            // Without commits:read: refused, the plan too.
            let erin = login(&harness, "erin", PASSWORD).await;
            let refused = erin.get("/commits").await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
            assert!(refused.body.contains("commits:read"), "{}", refused.body);
            let refused = erin.get(&format!("/commits/{motd}/plan")).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
            assert!(!refused.body.contains("plan: "), "{}", refused.body);
            // A commit the controller never tried is not planned.
            let unknown = alice.get("/commits/0123456789abcdef/plan").await;
            assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
            harness.stop().await;
        }
    }
);

backends!(
    a_script_run_from_the_form_shows_its_result_on_the_action_page,
    |db: TestDb| {
        async move {
            let harness = start(db).await;
            let token = harness.token(1, true, &[("role", "web")], 3600).await;
            let web = harness.enroll(&token, "web-01").await;
            let alice = login(&harness, "alice", PASSWORD).await;

            let page = alice.get("/jobs").await;
            page.assert_shows(&[
                "No jobs yet",
                "Run a script",
                "restart-service",
                "log-cleanup",
            ]);
            let form = alice.get("/jobs?script=restart-service").await;
            form.assert_shows(&[
                r#"action="/jobs/run""#,
                r#"name="param.service" value="" required"#,
                "The unit to restart, such as nginx.",
                r#"<option value="web">"#,
            ]);

            let answer = alice
                .post(
                    "/jobs/run",
                    &[
                        ("script", "restart-service"),
                        ("group", "web"),
                        ("hosts", ""),
                        ("param.service", "nginx"),
                    ],
                )
                .await;
            let action_id = action_of(&answer);
            let action_page = format!("/jobs/{action_id}");
            let queued = alice.get(&action_page).await;
            queued.assert_shows(&[
                "run restart-service on group web",
                "web-01",
                &format!(r#"href="/hosts/{}""#, web.host_id),
                "nginx",
            ]);
            let jobs = harness
                .store
                .jobs(&muster_controller::store::JobFilter {
                    action_id: Some(action_id.clone()),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(jobs.len(), 1);
            assert!(
                matches!(jobs[0].state, JobState::Queued | JobState::Pending),
                "{:?}",
                jobs[0].state
            );
            assert!(
                queued
                    .body
                    .contains(&format!(">{}<", jobs[0].state.as_str())),
                "{}",
                queued.body
            );
            assert!(queued.body.contains("No output yet."), "{}", queued.body);

            let job_id = run_job(&harness, &web, "restarted nginx <ok>\n").await;
            assert_eq!(job_id, jobs[0].id);
            let done = alice.get(&action_page).await;
            done.assert_shows(&[
                "restarted nginx &lt;ok&gt;",
                "exit code 0",
                ">succeeded<",
                ">completed<",
            ]);
            assert!(!done.body.contains("No output yet."), "{}", done.body);
            alice.get("/jobs").await.assert_shows(&[
                &format!(r#"href="/jobs/{action_id}""#),
                "run restart-service on group web",
                "1 succeeded",
            ]);
            harness.stop().await;
        }
    }
);

backends!(
    who_may_run_what_where_and_nothing_runs_without_a_good_form,
    |db: TestDb| {
        async move {
            let harness = start(db).await;
            let web_token = harness.token(1, true, &[("role", "web")], 3600).await;
            let db_token = harness.token(1, true, &[("role", "db")], 3600).await;
            harness.enroll(&web_token, "web-01").await;
            harness.enroll(&db_token, "db-01").await;
            let restart_on = |group: &'static str| {
                [
                    ("script", "restart-service"),
                    ("group", group),
                    ("param.service", "nginx"),
                ]
            };

            // carol reads jobs but runs nothing: no form, and a 403.
            let carol = login(&harness, "carol", PASSWORD).await;
            let page = carol.get("/jobs").await;
            page.assert_shows(&["No jobs yet"]);
            assert!(!page.body.contains("/jobs/run"), "{}", page.body);
            assert!(!page.body.contains("Run a script"), "{}", page.body);
            let refused = carol.post("/jobs/run", &restart_on("web")).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
            assert!(
                refused.body.contains("scripts:run:restart-service"),
                "{}",
                refused.body
            );
            assert_eq!(n_actions(&harness).await, 0);

            // bob operates the web group only.
            let bob = login(&harness, "bob", PASSWORD).await;
            bob.get("/jobs").await.assert_shows(&["Run a script"]);
            let refused = bob.post("/jobs/run", &restart_on("db")).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
            assert!(refused.body.contains("db-01"), "{}", refused.body);
            let named = bob
                .post(
                    "/jobs/run",
                    &[
                        ("script", "restart-service"),
                        ("hosts", "web-01, db-01"),
                        ("param.service", "nginx"),
                    ],
                )
                .await;
            assert_eq!(named.status, StatusCode::FORBIDDEN, "{}", named.body);
            assert_eq!(n_actions(&harness).await, 0);
            let action_id = action_of(&bob.post("/jobs/run", &restart_on("web")).await);
            bob.get(&format!("/jobs/{action_id}"))
                .await
                .assert_shows(&["web-01", "Cancel the jobs not started yet"]);
            // carol reads it, without a cancel button.
            let seen = carol.get(&format!("/jobs/{action_id}")).await;
            seen.assert_shows(&["web-01"]);
            assert!(!seen.body.contains("/cancel"), "{}", seen.body);
            let refused = carol.post(&format!("/jobs/{action_id}/cancel"), &[]).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
            // bob cancels it.
            let cancelled = bob.post(&format!("/jobs/{action_id}/cancel"), &[]).await;
            assert_eq!(
                cancelled.status,
                StatusCode::SEE_OTHER,
                "{}",
                cancelled.body
            );
            let action = harness.store.action(&action_id).await.unwrap().unwrap();
            assert_eq!(action.state.as_str(), "cancelled");
            let page = bob.get(&format!("/jobs/{action_id}")).await;
            page.assert_shows(&[">cancelled<"]);
            assert!(!page.body.contains("Cancel the jobs"), "{}", page.body);
            let before = n_actions(&harness).await;

            // Without the CSRF token: refused, nothing created.
            let alice = login(&harness, "alice", PASSWORD).await;
            let forged = alice
                .post_without_csrf("/jobs/run", &restart_on("web"))
                .await;
            assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
            assert_eq!(n_actions(&harness).await, before);

            // Values that do not fit: the form again, the error at its
            // field, nothing created.
            let bad = alice
                .post(
                    "/jobs/run",
                    &[
                        ("script", "log-cleanup"),
                        ("group", "web"),
                        ("param.max_age_days", "fortnight"),
                    ],
                )
                .await;
            assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
            let field = bad
                .body
                .split(r#"id="field-max_age_days""#)
                .nth(1)
                .expect("the form is shown again");
            assert!(
                field.contains("must be a whole number"),
                "the error is at its field:\n{}",
                bad.body
            );
            assert!(
                bad.body.contains(r#"value="fortnight""#),
                "what was typed stays:\n{}",
                bad.body
            );
            let missing = alice
                .post(
                    "/jobs/run",
                    &[("script", "restart-service"), ("group", "web")],
                )
                .await;
            assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                missing.body.contains("missing parameter `service`"),
                "{}",
                missing.body
            );
            let nowhere = alice
                .post(
                    "/jobs/run",
                    &[("script", "restart-service"), ("param.service", "nginx")],
                )
                .await;
            assert_eq!(nowhere.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                nowhere.body.contains("name a group or some hosts"),
                "{}",
                nowhere.body
            );
            let unknown_host = alice
                .post(
                    "/jobs/run",
                    &[
                        ("script", "restart-service"),
                        ("hosts", "web-99"),
                        ("param.service", "nginx"),
                    ],
                )
                .await;
            assert_eq!(unknown_host.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                unknown_host.body.contains("web-99"),
                "{}",
                unknown_host.body
            );
            assert_eq!(n_actions(&harness).await, before);
            harness.stop().await;
        }
    }
);

backends!(secret_parameters_appear_in_no_page, |db: TestDb| {
    async move {
        let harness = start(db).await;
        harness.repo.edit(
            "scripts/restart-service.yaml",
            "    required: true\n",
            "    required: true\n  - name: api_key\n    type: string\n    description: The key of the status API.\n    secret: true\n",
        );
        let commit = harness.repo.commit_all("restart-service: a secret key");
        deployed(&harness, &commit).await;
        let token = harness.token(1, true, &[("role", "web")], 3600).await;
        let web = harness.enroll(&token, "web-01").await;
        let alice = login(&harness, "alice", PASSWORD).await;
        const SECRET: &str = "hunter2-very-secret";

        let form = alice.get("/jobs?script=restart-service").await;
        form.assert_shows(&[r#"type="password" name="param.api_key""#]);
        // Sent with a mistake elsewhere: the form comes back without it.
        let again = alice
            .post(
                "/jobs/run",
                &[
                    ("script", "restart-service"),
                    ("group", "web"),
                    ("param.api_key", SECRET),
                ],
            )
            .await;
        assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!again.body.contains(SECRET), "{}", again.body);

        let action_id = action_of(
            &alice
                .post(
                    "/jobs/run",
                    &[
                        ("script", "restart-service"),
                        ("group", "web"),
                        ("param.service", "nginx"),
                        ("param.api_key", SECRET),
                    ],
                )
                .await,
        );
        run_job(&harness, &web, "ok\n").await;
        let pages = [
            "/jobs".to_string(),
            "/jobs?script=restart-service".to_string(),
            format!("/jobs/{action_id}"),
            "/commits".to_string(),
            "/".to_string(),
            format!("/hosts/{}", web.host_id),
            "/audit".to_string(),
        ];
        for path in &pages {
            let page = alice.get(path).await;
            assert!(
                !page.body.contains(SECRET),
                "{path} shows the secret:\n{}",
                page.body
            );
        }
        alice
            .get(&format!("/jobs/{action_id}"))
            .await
            .assert_shows(&["api_key", "&lt;redacted&gt;", "ok"]);
        harness.stop().await;
    }
});
