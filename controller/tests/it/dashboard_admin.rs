//! The dashboard's overview, enrollment and audit pages: counts and the
//! compliance rate as each user may see them, approving hosts and making
//! and revoking tokens through the same audited paths as the API and the
//! command line, and the audit log with its filters.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use muster_controller::audit::{AuditLog, Entry, Filter, RecordKind};

use muster_schemas::protocol::HostState;
use serde_json::json;

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Agent, Harness, eventually};
use crate::support::dashboard::{Page, Session, add_user, login, send, store_script_action};

const PASSWORD: &str = "correct horse battery staple";

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

async fn bundle_of(harness: &Harness, agent: &Agent) -> (u64, String) {
    eventually(&format!("a bundle for {}", agent.name), || async {
        let record = harness.store.bundle(&agent.host_id).await.unwrap()?;
        Some((record.generation, record.commit_id))
    })
    .await
}

/// The records of the controller's audit repository, newest first.
fn audit_records(harness: &Harness) -> Vec<Entry> {
    AuditLog::in_data_dir(harness.data_dir())
        .entries(&Filter::default())
        .unwrap()
}

/// Follows a form's 303 the way a browser does: to its location, with the
/// one-time notice cookie it set.
async fn follow(session: &Session, answer: &Page) -> Page {
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    let notice = answer
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("muster_notice="))
        .map(|value| value.split(';').next().unwrap().to_string());
    let cookie = match notice {
        Some(notice) => format!("{}; {notice}", session.cookie),
        None => session.cookie.clone(),
    };
    let request = Request::get(answer.location().expect("a redirect"))
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    send(&session.router, request).await
}

backends!(
    the_overview_counts_hosts_and_checks_each_user_may_read,
    |db: TestDb| {
        async move {
            let harness = start(db).await;

            // A fresh install says how to get the first host.
            let alice = login(&harness, "alice", PASSWORD).await;
            alice.get("/").await.assert_shows(&[
                "No hosts yet",
                "muster token create",
                "muster-agent enroll",
            ]);

            let web = harness.token(10, true, &[("role", "web")], 3_600).await;
            let db_token = harness.token(10, true, &[("role", "db")], 3_600).await;
            let manual = harness.token(10, false, &[("role", "web")], 3_600).await;
            let web_01 = harness.enroll(&web, "web-01").await;
            let web_02 = harness.enroll(&web, "web-02").await;
            let db_01 = harness.enroll(&db_token, "db-01").await;
            harness.enroll(&manual, "web-03").await;

            let now = muster_controller::server::now();
            let (generation, commit) = bundle_of(&harness, &web_01).await;
            // Only the latest report of a host counts: the first one's two
            // failures were fixed since.
            for checks in [
                json!([
                    {"policy": "ssh", "name": "no-root-login", "passed": false, "output": "yes"},
                    {"policy": "ssh", "name": "protocol-2", "passed": false, "output": ""},
                ]),
                json!([
                    {"policy": "ssh", "name": "no-root-login", "passed": true, "output": ""},
                    {"policy": "ssh", "name": "protocol-2", "passed": true, "output": ""},
                    {"policy": "nginx", "name": "config-test", "passed": false, "output": "emerg"},
                ]),
            ] {
                let report = json!({
                    "generation": generation, "commit": commit, "status": "drifted",
                    "started_at": now - 5, "finished_at": now, "checks": checks,
                });
                assert_eq!(web_01.report(&report).await.status(), 202);
            }
            let (generation, commit) = bundle_of(&harness, &db_01).await;
            let report = json!({
                "generation": generation, "commit": commit, "status": "in_sync",
                "started_at": now - 5, "finished_at": now,
                "checks": [{"policy": "pg", "name": "listening", "passed": true, "output": ""}],
            });
            assert_eq!(db_01.report(&report).await.status(), 202);
            // web-02 never reports: it is behind its bundle.
            bundle_of(&harness, &web_02).await;

            store_script_action(
                &harness,
                "run restart-service on db-01",
                &db_01.host_id,
                json!({"service": "postgresql"}),
                "{}",
            )
            .await;

            let deployed = harness.store.deployed_commit().await.unwrap().unwrap();
            let page = alice.get("/").await;
            page.assert_shows(&[
                r#"href="/hosts?state=online">3</a>"#,
                r#"href="/hosts?state=pending">1</a>"#,
                r#"href="/hosts?state=offline">0</a>"#,
                r#"href="/hosts?state=in_sync">1</a>"#,
                r#"href="/hosts?state=drifted">1</a>"#,
                r#"href="/hosts?state=behind">1</a>"#,
                "75 %",
                "3 of 4 checks pass, on 2 hosts",
                &deployed.id[..10],
                "deployed (in force)",
                "2 applied, 0 failed, 1 pending",
                "run restart-service on db-01",
                // One live region over the whole content.
                r#"id="overview""#,
                "sse:hosts, sse:commits, sse:jobs, sse:enrollment",
            ]);
            assert!(!page.body.contains("No hosts yet"), "{}", page.body);
            // Each line links to a page that exists: the commit's row on
            // the commits page, the action's page.
            let commit_link = format!(r#"href="/commits#{}""#, deployed.id);
            assert!(page.body.contains(&commit_link), "{}", page.body);
            assert!(page.body.contains(r#"href="/jobs/a1""#), "{}", page.body);
            alice
                .get("/jobs/a1")
                .await
                .assert_shows(&["run restart-service on db-01"]);
            assert!(
                !page.body.contains(" style="),
                "CSP forbids style attributes"
            );

            // A new report counts from the next page on.
            let (generation, commit) = bundle_of(&harness, &web_01).await;
            let fixed = json!({
                "generation": generation, "commit": commit, "status": "in_sync",
                "started_at": now - 1, "finished_at": now,
                "checks": [
                    {"policy": "ssh", "name": "no-root-login", "passed": true, "output": ""},
                    {"policy": "nginx", "name": "config-test", "passed": true, "output": ""},
                ],
            });
            assert_eq!(web_01.report(&fixed).await.status(), 202);
            alice
                .get("/")
                .await
                .assert_shows(&["100 %", "3 of 3 checks pass, on 2 hosts"]);

            // Without any binding: every card says what it needs, and no
            // count, rate or commit shows.
            let erin = login(&harness, "erin", PASSWORD).await;
            let page = erin.get("/").await;
            page.assert_shows(&[
                "You need <code>hosts:read</code>",
                "You need <code>commits:read</code>",
                "You need <code>jobs:read</code>",
            ]);
            for leak in [
                "/hosts?state=",
                "75 %",
                "checks pass",
                &deployed.id[..10],
                "restart-service",
                "No hosts yet",
            ] {
                assert!(!page.body.contains(leak), "{leak} leaked:\n{}", page.body);
            }
            harness.stop().await;
        }
    }
);

backends!(
    pending_hosts_are_approved_through_the_apis_audited_path,
    |db: TestDb| {
        async move {
            let harness = start(db).await;
            let web = harness.token(10, false, &[("role", "web")], 3_600).await;
            let db_token = harness.token(10, false, &[("role", "db")], 3_600).await;
            let web_04 = harness.enroll(&web, "web-04").await;
            let web_05 = harness.enroll(&web, "web-05").await;
            let db_04 = harness.enroll(&db_token, "db-04").await;

            let alice = login(&harness, "alice", PASSWORD).await;
            let page = alice.get("/enrollment").await;
            page.assert_shows(&[
                "web-04",
                "db-04",
                "debian · x86_64",
                &format!(r#"action="/enrollment/hosts/{}/approve""#, web_04.host_id),
                &format!(r#"action="/enrollment/hosts/{}/reject""#, db_04.host_id),
                r#"id="enrollment""#,
                "sse:enrollment",
            ]);

            // Without the form's token nothing happens.
            let approve = format!("/enrollment/hosts/{}/approve", web_04.host_id);
            let refused = alice.post_without_csrf(&approve, &[]).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
            let host = harness.store.host(&web_04.host_id).await.unwrap().unwrap();
            assert_eq!(host.state, HostState::Pending);

            let answer = alice.post(&approve, &[]).await;
            assert_eq!(answer.location(), Some("/enrollment"));
            let page = follow(&alice, &answer).await;
            page.assert_shows(&["web-04 approved: it gets its bundle on its next poll"]);
            let host = harness.store.host(&web_04.host_id).await.unwrap().unwrap();
            assert_eq!(host.state, HostState::Approved);
            assert!(
                !page
                    .body
                    .contains(&format!("/enrollment/hosts/{}/", web_04.host_id)),
                "an approved host is no longer pending"
            );
            let records = audit_records(&harness);
            let record = &records[0].record;
            assert_eq!(
                (
                    record.action.as_str(),
                    record.who.user.as_str(),
                    record.who.via.as_str()
                ),
                ("hosts.approve", "alice", "session")
            );
            assert_eq!(record.targets, ["web-04"]);
            bundle_of(&harness, &web_04).await;

            // bob operates the web group only.
            let bob = login(&harness, "bob", PASSWORD).await;
            let page = bob.get("/enrollment").await;
            page.assert_shows(&["web-05", "Pending hosts"]);
            assert!(!page.body.contains("db-04"), "{}", page.body);
            assert!(
                !page.body.contains("Enrollment tokens"),
                "bob cannot manage tokens"
            );
            let denied = bob
                .post(&format!("/enrollment/hosts/{}/approve", db_04.host_id), &[])
                .await;
            assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.body);
            let host = harness.store.host(&db_04.host_id).await.unwrap().unwrap();
            assert_eq!(host.state, HostState::Pending);
            let rejected = bob
                .post(&format!("/enrollment/hosts/{}/reject", web_05.host_id), &[])
                .await;
            follow(&bob, &rejected)
                .await
                .assert_shows(&["web-05 rejected"]);
            let host = harness.store.host(&web_05.host_id).await.unwrap().unwrap();
            assert_eq!(host.state, HostState::Rejected);
            assert_eq!(audit_records(&harness)[0].record.action, "hosts.reject");
            let tokens = bob
                .post(
                    "/enrollment/tokens",
                    &[("labels", ""), ("max_uses", "1"), ("valid_for_hours", "1")],
                )
                .await;
            assert_eq!(tokens.status, StatusCode::FORBIDDEN, "{}", tokens.body);

            // carol views; the enrollment page is not hers.
            let carol = login(&harness, "carol", PASSWORD).await;
            let page = carol.get("/enrollment").await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
            assert!(page.body.contains("hosts:approve"), "{}", page.body);
            harness.stop().await;
        }
    }
);

/// The token on the page answering its creation.
fn secret_on(page: &Page) -> String {
    let at = page.body.find("--token ").expect("the enroll command") + "--token ".len();
    page.body[at..].split(' ').next().unwrap().to_string()
}

backends!(
    tokens_are_shown_once_and_creating_and_revoking_them_is_audited,
    |db: TestDb| {
        async move {
            let harness = start(db).await;
            let alice = login(&harness, "alice", PASSWORD).await;
            alice.get("/enrollment").await.assert_shows(&[
                "No enrollment tokens yet",
                "No hosts are waiting for approval",
            ]);

            let refused = alice
                .post(
                    "/enrollment/tokens",
                    &[
                        ("labels", "role web"),
                        ("max_uses", "2"),
                        ("valid_for_hours", "48"),
                    ],
                )
                .await;
            assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                refused.body.contains("invalid label `role web`"),
                "{}",
                refused.body
            );
            assert!(harness.store.tokens().await.unwrap().is_empty());

            let created = alice
                .post(
                    "/enrollment/tokens",
                    &[
                        ("labels", "role=web, site=fra1"),
                        ("max_uses", "2"),
                        ("valid_for_hours", "48"),
                        ("auto_approve", "on"),
                    ],
                )
                .await;
            assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
            assert_eq!(created.headers[header::CACHE_CONTROL], "no-store");
            assert!(created.headers.get(header::SET_COOKIE).is_none());
            let secret = secret_on(&created);
            assert!(secret.starts_with("mt_"), "{secret}");
            let tokens = harness.store.tokens().await.unwrap();
            assert_eq!(tokens.len(), 1);
            let token = &tokens[0];
            assert_eq!((token.max_uses, token.auto_approve), (2, true));
            assert!(token.expires_at - token.created_at == 48 * 3_600);
            // The command `muster token create` prints.
            assert!(
                created.body.contains(&format!(
                    "muster-agent enroll --server http://127.0.0.1 --token {secret} --pubkey {}",
                    harness.public_key
                )),
                "{}",
                created.body
            );

            // Shown once: the list afterwards has the token, not its secret.
            let page = alice.get("/enrollment").await;
            page.assert_shows(&[&token.id, "role=web, site=fra1", "0 / 2", "active"]);
            assert!(!page.body.contains(&secret), "{}", page.body);

            // It enrolls, with its labels, approved at once.
            let web_09 = harness.enroll(&secret, "web-09").await;
            let host = harness.store.host(&web_09.host_id).await.unwrap().unwrap();
            assert_eq!(host.state, HostState::Approved);
            assert_eq!(host.labels["site"], "fra1");

            let revoke = format!("/enrollment/tokens/{}/revoke", token.id);
            let answer = alice.post(&revoke, &[]).await;
            follow(&alice, &answer)
                .await
                .assert_shows(&[&format!("token {} revoked", token.id), "revoked"]);
            let after = harness.enroll_raw(&secret, "web-10").await;
            assert_ne!(after.status(), 201, "a revoked token enrolls no one");
            let again = alice.post(&revoke, &[]).await;
            follow(&alice, &again)
                .await
                .assert_shows(&["unknown or revoked already"]);

            let records = audit_records(&harness);
            let actions: Vec<&str> = records.iter().map(|e| e.record.action.as_str()).collect();
            assert_eq!(actions, ["tokens.revoke", "tokens.create"], "once each");
            let create = &records[1].record;
            assert_eq!(create.who.user, "alice");
            assert_eq!(create.parameters["labels"], "role=web,site=fra1");
            assert_eq!(create.parameters["max_uses"], "2");
            for entry in &records {
                let text = format!("{:?}", entry.record);
                assert!(
                    !text.contains(&secret),
                    "the secret reached the audit log: {text}"
                );
            }

            // When the audit repository cannot be written, no token is made.
            let audit_dir = harness.data_dir().join("audit.git");
            let aside = harness.data_dir().join("audit.git.aside");
            std::fs::rename(&audit_dir, &aside).unwrap();
            std::fs::write(&audit_dir, "not a repository").unwrap();
            let unavailable = alice
                .post(
                    "/enrollment/tokens",
                    &[("labels", ""), ("max_uses", "1"), ("valid_for_hours", "1")],
                )
                .await;
            assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                unavailable.body.contains("nothing was done"),
                "{}",
                unavailable.body
            );
            assert!(
                !unavailable.body.contains("--token"),
                "{}",
                unavailable.body
            );
            assert_eq!(harness.store.tokens().await.unwrap().len(), 1);
            std::fs::remove_file(&audit_dir).unwrap();
            std::fs::rename(&aside, &audit_dir).unwrap();
            harness.stop().await;
        }
    }
);

backends!(the_audit_page_lists_records_with_filters, |db: TestDb| {
    async move {
        let harness = start(db).await;
        let alice = login(&harness, "alice", PASSWORD).await;
        alice.get("/audit").await.assert_shows(&[
            "No audit records yet",
            "Every action taken through the API or this dashboard is recorded here",
            r#"id="audit-log""#,
            "sse:audit",
        ]);

        let created = alice
            .post(
                "/enrollment/tokens",
                &[
                    ("labels", "role=web"),
                    ("max_uses", "1"),
                    ("valid_for_hours", "1"),
                ],
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        let secret = secret_on(&created);
        let pending = harness.enroll(&secret, "web-07").await;
        let bob = login(&harness, "bob", PASSWORD).await;
        let approved = bob
            .post(
                &format!("/enrollment/hosts/{}/approve", pending.host_id),
                &[],
            )
            .await;
        assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.body);
        let records = audit_records(&harness);

        let page = alice.get("/audit").await;
        page.assert_shows(&[
            "tokens.create",
            "hosts.approve",
            "approve host web-07",
            "via session",
            &records[0].commit_id[..10],
            "role=web",
        ]);
        assert!(!page.body.contains(&secret), "{}", page.body);
        assert!(
            page.body.find("hosts.approve").unwrap() < page.body.find("tokens.create").unwrap(),
            "newest first"
        );

        let bobs = alice.get("/audit?user=bob").await;
        bobs.assert_shows(&["hosts.approve", r#"value="bob""#]);
        assert!(!bobs.body.contains("tokens.create"), "{}", bobs.body);
        let tokens = alice.get("/audit?action=tokens").await;
        tokens.assert_shows(&["tokens.create"]);
        assert!(
            !tokens.body.contains("approve host web-07"),
            "{}",
            tokens.body
        );
        let recent = alice.get("/audit?range=24h").await;
        recent.assert_shows(&["tokens.create", "hosts.approve"]);
        let old = alice.get("/audit?until=2020-01-01").await;
        old.assert_shows(&["No records match these filters"]);
        let wrong = alice.get("/audit?since=yesterday").await;
        wrong.assert_shows(&["write it as YYYY-MM-DD"]);

        // carol may view hosts, not the audit log.
        let carol = login(&harness, "carol", PASSWORD).await;
        let denied = carol.get("/audit").await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.body);
        assert!(denied.body.contains("audit:read"), "{}", denied.body);
        assert!(
            records
                .iter()
                .all(|entry| entry.record.kind == RecordKind::Action)
        );
        harness.stop().await;
    }
});

/// `muster token create` and `revoke` share the dashboard's code: they
/// are audited too, as the local account, without the secret.
#[tokio::test]
async fn the_command_lines_tokens_are_audited_like_the_dashboards() {
    use crate::support::cli::{muster_command, succeeded};
    let dir = TestDb::temp_dir("admin-token-audit");
    let muster = |args: &[&str]| {
        muster_command()
            .args(args)
            .env("MUSTER_DATA_DIR", &dir)
            .env("USER", "ops")
            .env_remove("SUDO_USER")
            .env_remove("MUSTER_DATABASE_URL")
            .output()
            .expect("muster runs")
    };
    succeeded(&muster(&["init"]));
    let created = succeeded(&muster(&[
        "token",
        "create",
        "--server",
        "https://muster.example.com",
        "--label",
        "role=db",
    ]));
    let id = created
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':');
    let secret = created
        .split_whitespace()
        .skip_while(|word| *word != "--token")
        .nth(1)
        .unwrap();
    succeeded(&muster(&["token", "revoke", id]));

    let records = AuditLog::in_data_dir(&dir)
        .entries(&Filter::default())
        .unwrap();
    let actions: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|entry| {
            let record = &entry.record;
            (
                record.action.as_str(),
                record.who.user.as_str(),
                record.who.via.as_str(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("tokens.revoke", "ops", "cli"),
            ("tokens.create", "ops", "cli")
        ]
    );
    assert_eq!(records[1].record.parameters["labels"], "role=db");
    assert_eq!(records[0].record.targets, [format!("token {id}")]);
    for entry in &records {
        let text = format!("{:?}", entry.record);
        assert!(
            !text.contains(secret),
            "the secret reached the audit log: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
