//! Real agent processes against a real controller: enrollment, converging
//! a sandbox root, and a change reaching only the hosts it targets.

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Harness, eventually};
use crate::support::agent::TestAgent;

backends!(agents_converge_what_the_commit_says, |db: TestDb| {
    async move {
        let harness = Harness::start(db).await;
        let web_token = harness.token(1, true, &[("role", "web")], 3600).await;
        let db_token = harness.token(1, true, &[("role", "db")], 3600).await;
        let web = TestAgent::new("web");
        let database = TestAgent::new("db");
        web.enroll(&harness, &web_token, "web-01").await;
        database.enroll(&harness, &db_token, "db-01").await;
        web.converge_once().await;
        database.converge_once().await;
        let site = web
            .file("/etc/nginx/sites-available/shop.conf")
            .expect("the web host has the site");
        assert!(
            site.contains("listen 80;") && site.contains("server_name shop.example.com;"),
            "{site}"
        );
        assert!(
            database
                .file("/etc/nginx/sites-available/shop.conf")
                .is_none(),
            "the db host has no nginx site"
        );
        assert!(web.file("/etc/motd").unwrap().contains("managed by muster"));
        assert_eq!(database.file("/etc/motd"), web.file("/etc/motd"));

        // A change to the web policy reaches the web host only.
        harness.repo.edit(
            "policies/nginx.yaml",
            "listen_port: 80",
            "listen_port: 8080",
        );
        let change = harness.repo.commit_all("Move the shop to 8080");
        harness.commit_state(&change).await;
        let db_motd_before = std::fs::metadata(database.path("/etc/motd"))
            .unwrap()
            .modified()
            .unwrap();
        web.converge_once().await;
        database.converge_once().await;
        assert!(
            web.file("/etc/nginx/sites-available/shop.conf")
                .unwrap()
                .contains("listen 8080;")
        );
        let db_motd_after = std::fs::metadata(database.path("/etc/motd"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            db_motd_before, db_motd_after,
            "nothing was rewritten on the db host"
        );

        // The controller sees both hosts in sync at the new generation.
        for name in ["web-01", "db-01"] {
            let host = eventually("the report", || async {
                let host = harness.store.find_host(name).await.unwrap().unwrap();
                (host.run_status.as_deref() == Some("in_sync")).then_some(host)
            })
            .await;
            let bundle = harness.store.bundle(&host.id).await.unwrap().unwrap();
            assert_eq!(host.applied_generation, bundle.generation, "{name}");
            // The report carries the compliance checks the host's policies declare.
            let (_, body) = harness.store.reports(&host.id, 1).await.unwrap().remove(0);
            let report: muster_schemas::protocol::Report = serde_json::from_str(&body).unwrap();
            let checks: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
            assert!(checks.contains(&"sshd-no-root-login"), "{name}: {checks:?}");
            assert_eq!(
                checks.contains(&"nginx-config-valid"),
                name == "web-01",
                "{name}: {checks:?}"
            );
        }
        harness.stop().await;
    }
});
