//! The dashboard's hosts pages: the list with its badges, filters, sorting
//! and pages; the host detail with facts, charts, the bundle in force,
//! drift diffs, checks and jobs; and who may see which host.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use muster_controller::server::agent_api::token_hash;
use muster_controller::store::HostRecord;
use muster_schemas::protocol::HostState;
use serde_json::{Map, Value, json};

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Agent, Harness, eventually};
use crate::support::dashboard::{
    Page, Session, add_user, get_anonymous, login, store_script_action,
};

const PASSWORD: &str = "correct horse battery staple";

/// The drift of the nginx site, as the agent reports it.
const NGINX_DIFF: &str = "--- /etc/nginx/sites-enabled/shop.conf\n+++ desired\n@@ -1,2 +1,2 @@\n-server_name old.example.com;\n+server_name shop.example.com;\n listen 80;\n";

async fn start(db: TestDb) -> Harness {
    let harness = Harness::start(db).await;
    for user in ["alice", "bob", "carol", "mallory", "erin"] {
        add_user(&harness, user, PASSWORD).await;
    }
    eventually("the example to deploy", || async {
        harness.store.deployed_commit().await.unwrap()
    })
    .await;
    harness
}

/// The fleet of these tests: web-01 (drifted, with metrics, a failing
/// check and a job), web-02 (approved, never reported: behind), db-01
/// (in sync) and pending-01 (waiting for approval).
struct Fleet {
    web_01: Agent,
    web_02: Agent,
    db_01: Agent,
    pending_01: Agent,
}

async fn bundle_of(harness: &Harness, agent: &Agent) -> (u64, String) {
    eventually(&format!("a bundle for {}", agent.name), || async {
        let record = harness.store.bundle(&agent.host_id).await.unwrap()?;
        Some((record.generation, record.commit_id))
    })
    .await
}

fn facts() -> Value {
    json!({
        "hostname": "web-01",
        "os": "debian",
        "os_name": "Debian GNU/Linux",
        "os_version": "12",
        "arch": "x86_64",
        "kernel": "6.1.0-28-amd64",
        "cpus": 4,
        "memory_bytes": 8_589_934_592_u64,
        "disks": [{"mount_point": "/", "total_bytes": 53_687_091_200_u64, "available_bytes": 16_106_127_360_u64}],
        "interfaces": {"eth0": {"mac": "52:54:00:12:34:56", "addresses": ["10.0.0.5/24"]}},
    })
}

async fn fleet(harness: &Harness) -> Fleet {
    let web = harness
        .token(10, true, &[("role", "web"), ("env", "prod")], 3_600)
        .await;
    let db = harness.token(10, true, &[("role", "db")], 3_600).await;
    let manual = harness.token(10, false, &[("role", "web")], 3_600).await;
    let fleet = Fleet {
        web_01: harness.enroll(&web, "web-01").await,
        web_02: harness.enroll(&web, "web-02").await,
        db_01: harness.enroll(&db, "db-01").await,
        pending_01: harness.enroll(&manual, "pending-01").await,
    };

    let (generation, commit) = bundle_of(harness, &fleet.web_01).await;
    let now = muster_controller::server::now();
    for (i, cpu) in [12.5, 55.0, 33.0].into_iter().enumerate() {
        let report = json!({
            "generation": generation,
            "commit": commit,
            "status": "drifted",
            "started_at": now - 60 + i as i64 * 20,
            "finished_at": now - 55 + i as i64 * 20,
            "resources": [
                {"id": "file:/etc/motd", "status": "in_sync"},
                {"id": "file:/etc/nginx/sites-enabled/shop.conf", "status": "drifted", "diff": NGINX_DIFF},
                {"id": "package:nginx", "status": "failed", "message": "apt-get install nginx failed: exit status 100"},
            ],
            "checks": [
                {"policy": "ssh-hardening", "name": "no-root-login", "passed": false, "output": "PermitRootLogin yes"},
                {"policy": "ssh-hardening", "name": "protocol-2", "passed": true, "output": ""},
            ],
            "facts": facts(),
            "metrics": {"cpu_percent": cpu, "memory_percent": 40.0, "disk_percent": 70.0, "load1": 0.42},
        });
        assert_eq!(fleet.web_01.report(&report).await.status(), 202);
    }
    let (generation, commit) = bundle_of(harness, &fleet.db_01).await;
    let report = json!({
        "generation": generation, "commit": commit, "status": "in_sync",
        "started_at": now - 5, "finished_at": now,
    });
    assert_eq!(fleet.db_01.report(&report).await.status(), 202);
    bundle_of(harness, &fleet.web_02).await;

    store_script_action(
        harness,
        "run restart-service on web-01",
        &fleet.web_01.host_id,
        json!({"service": "nginx"}),
        r#"{"secret":"do-not-show-this-payload"}"#,
    )
    .await;
    fleet
}

/// The names of the hosts in the table, in order.
fn listed(page: &Page) -> Vec<String> {
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.body
        .split(r#"<a href="/hosts/"#)
        .skip(1)
        .filter_map(|rest| {
            let name = rest.split_once('>')?.1.split_once("</a>")?.0;
            Some(name.to_string())
        })
        .collect()
}

backends!(
    the_list_shows_hosts_with_badges_filters_and_sorts,
    |db: TestDb| {
        async move {
            let harness = start(db).await;
            let fleet_ = fleet(&harness).await;
            let alice = login(&harness, "alice", PASSWORD).await;

            let all = alice.get("/hosts").await;
            all.assert_shows(&[
                "4 hosts match",
                r#"<span class="badge warn">drifted</span>"#,
                r#"<span class="badge good">in sync</span>"#,
                r#"<span class="badge busy">behind</span>"#,
                r#"<span class="badge busy">pending</span>"#,
                r#"<span class="badge good">online</span>"#,
                // Group membership as the deployed commit decides it.
                r#"<span class="tag">web</span>"#,
                r#"<span class="tag">db</span>"#,
                // The Host document's labels join the token's.
                "tier=storefront",
                "role=web",
                r#"id="hosts-table""#,
                r#"hx-get="/hosts""#,
                r#"hx-trigger="sse:hosts""#,
                // The filters are a plain form with the model's groups.
                r#"<form class="filters" method="get" action="/hosts""#,
                r#"<option value="db">db</option>"#,
            ]);
            assert_eq!(listed(&all), ["db-01", "pending-01", "web-01", "web-02"]);
            let (generation, _) = bundle_of(&harness, &fleet_.web_02).await;
            assert!(
                all.body.contains(&format!("0 / {generation} (behind)")),
                "web-02 never applied its bundle: {}",
                all.body
            );

            assert_eq!(
                listed(&alice.get("/hosts?group=web").await),
                ["pending-01", "web-01", "web-02"]
            );
            assert_eq!(listed(&alice.get("/hosts?group=db").await), ["db-01"]);
            assert_eq!(listed(&alice.get("/hosts?state=drifted").await), ["web-01"]);
            assert_eq!(
                listed(&alice.get("/hosts?state=pending").await),
                ["pending-01"]
            );
            assert_eq!(listed(&alice.get("/hosts?state=behind").await), ["web-02"]);
            assert_eq!(listed(&alice.get("/hosts?state=in_sync").await), ["db-01"]);
            assert_eq!(listed(&alice.get("/hosts?q=DB-0").await), ["db-01"]);
            assert_eq!(
                listed(&alice.get("/hosts?q=prod").await),
                ["web-01", "web-02"],
                "label values match"
            );
            assert_eq!(
                listed(&alice.get("/hosts?label=tier%3Dstorefront").await),
                ["web-01"]
            );
            assert_eq!(
                listed(&alice.get("/hosts?label=role%3Dweb&state=online").await),
                ["web-01", "web-02"]
            );

            let filtered = alice.get("/hosts?group=web&state=behind").await;
            filtered.assert_shows(&[
                "1 host match",
                r#"<option value="web" selected>web</option>"#,
                r#"<option value="behind" selected>behind</option>"#,
                // The live region re-fetches the same filtered list.
                r#"hx-get="/hosts?group=web&amp;state=behind""#,
                // Sorting keeps the filters.
                r#"href="/hosts?group=web&amp;state=behind&amp;sort=last_seen&amp;dir=desc""#,
            ]);

            let nothing = alice.get("/hosts?q=no-such-host").await;
            nothing.assert_shows(&[
                "No host matches these filters.",
                r#"<a href="/hosts">Clear the filters</a>"#,
            ]);
            assert!(listed(&nothing).is_empty());

            assert_eq!(
                listed(&alice.get("/hosts?dir=desc").await),
                ["web-02", "web-01", "pending-01", "db-01"]
            );
            // By sync: in sync, drifted, behind, no report yet; names within.
            assert_eq!(
                listed(&alice.get("/hosts?sort=sync").await),
                ["db-01", "web-01", "web-02", "pending-01"]
            );
            // By state: online before pending.
            let by_state = listed(&alice.get("/hosts?sort=state&dir=desc").await);
            assert_eq!(
                by_state.first().map(String::as_str),
                Some("pending-01"),
                "{by_state:?}"
            );
            // Newest report first: web-01 and db-01 reported after enrolling.
            let by_last_seen = listed(&alice.get("/hosts?sort=last_seen&dir=desc").await);
            assert_eq!(by_last_seen.len(), 4);
            let sorted = alice.get("/hosts?sort=last_seen&dir=desc").await;
            assert!(
                sorted.body.contains(r#"aria-sort="descending""#),
                "{}",
                sorted.body
            );
            harness.stop().await;
        }
    }
);

backends!(
    the_detail_shows_facts_charts_bundle_drift_checks_and_jobs,
    |db: TestDb| {
        async move {
            let harness = start(db).await;
            let fleet = fleet(&harness).await;
            let alice = login(&harness, "alice", PASSWORD).await;
            let (generation, commit) = bundle_of(&harness, &fleet.web_01).await;

            let by_name = alice.get("/hosts/web-01").await;
            let by_id = alice.get(&format!("/hosts/{}", fleet.web_01.host_id)).await;
            assert_eq!(by_name.status, StatusCode::OK, "{}", by_name.body);
            for page in [&by_name, &by_id] {
                page.assert_shows(&[
                    "<h1>web-01</h1>",
                    &fleet.web_01.host_id,
                    r#"<span class="badge good">online</span>"#,
                    r#"<span class="badge warn">drifted</span>"#,
                    "tier=storefront",
                    r#"href="/hosts?group=web""#,
                    // Facts and inventory.
                    "Debian GNU/Linux",
                    "6.1.0-28-amd64",
                    "8.0 GiB",
                    "50.0 GiB",
                    "70 %",
                    "52:54:00:12:34:56",
                    "10.0.0.5/24",
                    // Charts: an SVG per metric, the last value as text.
                    "<svg",
                    "CPU",
                    "33 %",
                    "Load (1 min)",
                    "3 samples",
                    // The bundle in force.
                    &format!(r#"href="/commits#{commit}""#),
                    &commit[..10],
                    &format!("{generation} <span class=\"muted\">(applied)</span>"),
                    // Resources, with the drift's diff and the failure's message.
                    "/etc/nginx/sites-enabled/shop.conf",
                    r#"<span class="del">-server_name old.example.com;</span>"#,
                    r#"<span class="add">+server_name shop.example.com;</span>"#,
                    r#"<span class="hunk">@@ -1,2 +1,2 @@</span>"#,
                    r#"<span class="badge bad">failed</span>"#,
                    "apt-get install nginx failed: exit status 100",
                    // Checks with their output.
                    "no-root-login",
                    r#"<span class="badge bad">fail</span>"#,
                    r#"<span class="badge good">pass</span>"#,
                    r#"<pre class="output">PermitRootLogin yes</pre>"#,
                    // Jobs, linked to the jobs page.
                    r#"<a href="/jobs/a1">run restart-service on web-01</a>"#,
                    r#"<span class="badge busy">pending</span>"#,
                    // Live on hosts and jobs.
                    r#"id="host-detail""#,
                    r#"hx-trigger="sse:hosts, sse:jobs""#,
                ]);
                assert!(
                    !page.body.contains("do-not-show-this-payload"),
                    "job payloads hold secrets"
                );
                assert!(
                    !page.body.contains("style="),
                    "the CSP refuses style attributes"
                );
            }

            // A host that never reported: behind, with empty states.
            let web_02 = alice.get("/hosts/web-02").await;
            web_02.assert_shows(&[
                r#"<span class="badge busy">behind</span>"#,
                "applied 0 of",
                "No metrics yet.",
                "No report yet.",
                "No jobs ran on this host yet.",
            ]);
            assert!(!web_02.body.contains("<svg"), "{}", web_02.body);

            let pending = alice.get("/hosts/pending-01").await;
            pending.assert_shows(&[
                r#"<span class="badge busy">pending</span>"#,
                "No bundle for this host yet.",
            ]);

            let unknown = alice.get("/hosts/no-such-host").await;
            assert_eq!(unknown.status, StatusCode::NOT_FOUND);
            assert!(
                unknown.body.contains("there is no host `no-such-host`"),
                "{}",
                unknown.body
            );
            let _ = (&fleet.db_01, &fleet.web_02, &fleet.pending_01);
            harness.stop().await;
        }
    }
);

backends!(users_see_the_hosts_their_rbac_allows, |db: TestDb| {
    async move {
        let harness = start(db).await;
        let fleet = fleet(&harness).await;
        // erin may read the db group only.
        harness.repo.edit(
            "rbac/bindings.yaml",
            "  - token: ci\nscope: fleet\n",
            "  - token: ci\nscope: fleet\n---\napiVersion: muster/v1\nkind: RoleBinding\nname: db-operators\nrole: operator\nsubjects:\n  - user: erin\nscope:\n  groups: [db]\n",
        );
        // A group chosen by a fact, which the list works out for the
        // hosts of the page only.
        harness.repo.edit(
            "groups.yaml",
            "  role: db",
            "  role: db\n---\napiVersion: muster/v1\nkind: Group\nname: debian\ndescription: Hosts running Debian.\nselector:\n  os: debian",
        );
        let commit = harness.repo.commit_all("erin operates the databases");
        let access = harness.access();
        eventually("erin's binding to be in force", || async {
            (access.current().commit() == Some(commit.as_str())).then_some(())
        })
        .await;

        let alice = login(&harness, "alice", PASSWORD).await;
        let all = alice.get("/hosts").await;
        assert_eq!(
            all.body
                .matches(r#"<span class="tag">debian</span>"#)
                .count(),
            4,
            "{}",
            all.body
        );
        assert_eq!(listed(&alice.get("/hosts?group=debian").await).len(), 4);
        assert_eq!(
            listed(&alice.get("/hosts?label=os%3Ddebian").await).len(),
            4
        );
        assert!(listed(&alice.get("/hosts?label=os%3Drocky").await).is_empty());

        // bob operates web and views the fleet; carol views the fleet.
        for user in ["bob", "carol"] {
            let session = login(&harness, user, PASSWORD).await;
            assert_eq!(
                listed(&session.get("/hosts").await),
                ["db-01", "pending-01", "web-01", "web-02"],
                "{user}"
            );
            session
                .get("/hosts/db-01")
                .await
                .assert_shows(&["<h1>db-01</h1>"]);
        }

        let erin = login(&harness, "erin", PASSWORD).await;
        let erins = erin.get("/hosts").await;
        assert_eq!(listed(&erins), ["db-01"]);
        assert!(erins.body.contains("1 host match"), "{}", erins.body);
        erin.get("/hosts/db-01")
            .await
            .assert_shows(&["<h1>db-01</h1>"]);
        let refused = erin.get(&format!("/hosts/{}", fleet.web_01.host_id)).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
        assert!(!refused.body.contains("10.0.0.5/24"), "{}", refused.body);

        // No binding at all: no hosts page, no host.
        let mallory: Session = login(&harness, "mallory", PASSWORD).await;
        for path in [
            "/hosts".to_string(),
            "/hosts/web-01".to_string(),
            "/hosts/no-such-host".to_string(),
        ] {
            let page = mallory.get(&path).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}: {}", page.body);
            assert!(page.body.contains("Not allowed"), "{}", page.body);
        }

        let router = harness.router();
        let anonymous = get_anonymous(&router, "/hosts/web-01").await;
        assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
        assert_eq!(anonymous.location(), Some("/login?next=%2Fhosts%2Fweb-01"));
        let anonymous = get_anonymous(&router, "/hosts?state=drifted").await;
        assert_eq!(
            anonymous.location(),
            Some("/login?next=%2Fhosts%3Fstate%3Ddrifted")
        );
        let _ = (&fleet.web_02, &fleet.db_01, &fleet.pending_01);
        harness.stop().await;
    }
});

backends!(
    an_empty_fleet_says_how_to_enroll_and_big_ones_are_paged,
    |db: TestDb| {
        async move {
            let harness = start(db).await;
            let alice = login(&harness, "alice", PASSWORD).await;
            alice.get("/hosts").await.assert_shows(&[
                "No hosts yet",
                "<code>muster token create</code>",
                "<code>muster-agent enroll</code>",
            ]);

            // 150 pending hosts, straight into the store: enrolling each over
            // HTTP would only make the test slow.
            let token = harness
                .token(1_000, false, &[("role", "batch")], 3_600)
                .await;
            let now = muster_controller::server::now();
            for i in 0..150 {
                let host = HostRecord {
                    id: format!("id-bulk-{i:03}"),
                    name: format!("bulk-{i:03}"),
                    state: HostState::Pending,
                    key: "00".repeat(32),
                    labels: BTreeMap::new(),
                    facts: Map::new(),
                    token_id: None,
                    enrolled_at: now,
                    last_seen_at: Some(now),
                    applied_generation: 0,
                    run_status: None,
                };
                harness
                    .store
                    .enroll(&token_hash(&token), &host, now)
                    .await
                    .unwrap()
                    .unwrap();
            }

            let first = alice.get("/hosts").await;
            first.assert_shows(&[
                "150 hosts match",
                "1–100 of 150",
                r#"rel="next" href="/hosts?page=2""#,
            ]);
            let names = listed(&first);
            assert_eq!(names.len(), 100);
            assert_eq!(names.first().map(String::as_str), Some("bulk-000"));
            assert_eq!(names.last().map(String::as_str), Some("bulk-099"));

            let second = alice.get("/hosts?page=2").await;
            second.assert_shows(&["101–150 of 150", r#"rel="prev" href="/hosts""#]);
            let names = listed(&second);
            assert_eq!(names.len(), 50);
            assert_eq!(names.first().map(String::as_str), Some("bulk-100"));

            // The pages keep the filter and the order.
            let filtered = alice.get("/hosts?q=bulk-1&dir=desc").await;
            filtered.assert_shows(&["50 hosts match"]);
            let descending = alice.get("/hosts?q=bulk&dir=desc&page=2").await;
            descending.assert_shows(&[r#"rel="prev" href="/hosts?q=bulk&amp;dir=desc""#]);
            assert_eq!(
                listed(&descending).first().map(String::as_str),
                Some("bulk-049")
            );
            // A page past the end shows the last one.
            assert_eq!(listed(&alice.get("/hosts?page=99").await).len(), 50);
            harness.stop().await;
        }
    }
);
