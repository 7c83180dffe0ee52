//! Real agent processes against a real controller: enrollment, converging
//! a sandbox root, and a change reaching only the hosts it targets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Harness, eventually};

/// The `muster-agent` binary of this build. `cargo test --workspace` (the
/// README's test command) builds it beside `muster`.
fn agent_binary() -> PathBuf {
    let agent = Path::new(env!("CARGO_BIN_EXE_muster")).with_file_name("muster-agent");
    assert!(
        agent.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, or `cargo build -p muster-agent` first",
        agent.display()
    );
    agent
}

/// One sandboxed agent: its config, state dir and root in a temp dir.
struct TestAgent {
    dir: PathBuf,
}

impl TestAgent {
    fn new(base: &Path, name: &str) -> TestAgent {
        let dir = base.join(name);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        TestAgent { dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(agent_binary())
            .args(args)
            .args(["--config", self.dir.join("agent.yaml").to_str().unwrap()])
            .args(["--state-dir", self.dir.join("state").to_str().unwrap()])
            .env("MUSTER_LOG", "warn")
            .output()
            .expect("muster-agent runs")
    }

    fn enroll(&self, harness: &Harness, token: &str, name: &str) {
        let output = self.run(&[
            "enroll",
            "--server",
            &harness.url,
            "--token",
            token,
            "--pubkey",
            &harness.public_key,
            "--name",
            name,
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn converge_once(&self) {
        let root = self.dir.join("root");
        let output = self.run(&["run", "--once", "--root", root.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn file(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join("root").join(path.trim_start_matches('/'))).ok()
    }
}

backends!(agents_converge_what_the_commit_says, |db: TestDb| {
    async move {
        let base = TestDb::temp_dir("agents");
        let harness = Harness::start(db).await;
        let web_token = harness.token(1, true, &[("role", "web")], 3600).await;
        let db_token = harness.token(1, true, &[("role", "db")], 3600).await;
        let web = TestAgent::new(&base, "web");
        let database = TestAgent::new(&base, "db");
        web.enroll(&harness, &web_token, "web-01");
        database.enroll(&harness, &db_token, "db-01");
        web.converge_once();
        database.converge_once();
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
        let db_motd_before = std::fs::metadata(database.dir.join("root/etc/motd"))
            .unwrap()
            .modified()
            .unwrap();
        web.converge_once();
        database.converge_once();
        assert!(
            web.file("/etc/nginx/sites-available/shop.conf")
                .unwrap()
                .contains("listen 8080;")
        );
        let db_motd_after = std::fs::metadata(database.dir.join("root/etc/motd"))
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
        let _ = std::fs::remove_dir_all(&base);
    }
});
