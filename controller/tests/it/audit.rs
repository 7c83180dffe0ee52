//! The audit repository: commits authored by the acting user with their
//! record, serial writers, failing closed, verification, pushing to a
//! remote, outcomes written only by the replica holding their action —
//! and no secret anywhere, checked against a real controller's logs.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_controller::actions::record_outcomes;
use muster_controller::audit::{
    Action, AuditError, AuditLog, Filter, Outcome, Parameter, Record, RecordKind, Who,
    new_request_id,
};
use muster_controller::store::{JobSource, NewAction};
use serde_json::json;

use crate::backends;
use crate::db::TestDb;
use crate::harness::eventually;
use crate::support::TempDir;
use crate::support::cli::{muster_command, run_with_stdin};
use crate::support::git::TestRepo;
use crate::users::{assert_no_secret_in_repo, printed_token, repo_objects};

/// 2026-11-29 10:00:00 UTC.
const TIME: i64 = 1_795_946_400;

fn alice() -> Who {
    Who {
        user: "alice".into(),
        email: None,
        via: "session".into(),
        token: None,
        break_glass: false,
    }
}

fn action(request_id: &str, who: Who) -> Action {
    Action {
        request_id: request_id.into(),
        who,
        action: "scripts.run".into(),
        targets: vec!["web-1".into(), "web-2".into()],
        summary: "ran restart-service\non two hosts".into(),
        parameters: vec![
            Parameter::new("service", "nginx"),
            Parameter::secret("api_key", "sk-very-secret-value"),
        ],
        source: Some("192.0.2.7".into()),
        time: TIME,
    }
}

#[tokio::test]
async fn an_action_is_a_commit_by_its_user_adding_its_record() {
    let dir = TempDir::new("audit-record");
    let audit = AuditLog::in_data_dir(dir.path());
    assert!(audit.entries(&Filter::default()).unwrap().is_empty());
    let committed = audit.record(action("req-00000001", alice())).await.unwrap();
    assert_eq!(committed.path, "actions/2026/11/29/req-00000001.yaml");

    let repo = git2::Repository::open_bare(dir.path().join("audit.git")).unwrap();
    assert!(repo.is_bare());
    let commit = repo
        .find_reference("refs/heads/main")
        .unwrap()
        .peel_to_commit()
        .unwrap();
    assert_eq!(commit.id().to_string(), committed.commit_id);
    assert_eq!(commit.author().name().unwrap(), "alice");
    assert_eq!(commit.author().email().unwrap(), "alice@muster");
    assert_eq!(commit.author().when().seconds(), TIME);
    assert_eq!(commit.committer().name().unwrap(), "muster");
    assert_eq!(
        commit.message().unwrap(),
        "scripts.run web-1,web-2: ran restart-service on two hosts"
    );
    let entry = commit
        .tree()
        .unwrap()
        .get_path(Path::new(&committed.path))
        .unwrap();
    let blob = repo.find_blob(entry.id()).unwrap();
    let text = std::str::from_utf8(blob.content()).unwrap();
    let record: Record = serde_yaml::from_str(text).unwrap();
    assert_eq!(
        record,
        Record {
            kind: RecordKind::Action,
            request_id: "req-00000001".into(),
            time: "2026-11-29T10:00:00Z".into(),
            who: alice(),
            action: "scripts.run".into(),
            targets: vec!["web-1".into(), "web-2".into()],
            summary: "ran restart-service on two hosts".into(),
            parameters: BTreeMap::from([
                ("api_key".to_string(), "<redacted>".to_string()),
                ("service".to_string(), "nginx".to_string()),
            ]),
            source: Some("192.0.2.7".into()),
        }
    );
    assert!(!text.contains("sk-very-secret-value"));

    // An email, when known, is the author's.
    let known = Who {
        email: Some("bob@example.com".into()),
        user: "bob".into(),
        ..alice()
    };
    audit.record(action("req-00000002", known)).await.unwrap();
    let outcome = audit
        .record_outcome(Outcome {
            request_id: "req-00000001".into(),
            summary: "2 succeeded".into(),
            details: BTreeMap::from([("succeeded".to_string(), "2".to_string())]),
            time: TIME + 86_400,
        })
        .await
        .unwrap();
    assert_eq!(outcome.path, "outcomes/2026/11/30/req-00000001.yaml");
    let second = audit
        .record_outcome(Outcome {
            request_id: "req-00000001".into(),
            summary: "a late host answered".into(),
            details: BTreeMap::new(),
            time: TIME + 86_400,
        })
        .await
        .unwrap();
    assert_eq!(second.path, "outcomes/2026/11/30/req-00000001-2.yaml");

    let entries = audit.entries(&Filter::default()).unwrap();
    let messages: Vec<String> = entries.iter().map(|e| e.record.message()).collect();
    assert_eq!(
        messages,
        [
            "outcome req-00000001: a late host answered",
            "outcome req-00000001: 2 succeeded",
            "scripts.run web-1,web-2: ran restart-service on two hosts",
            "scripts.run web-1,web-2: ran restart-service on two hosts",
        ]
    );
    let bob = repo
        .find_commit(git2::Oid::from_str(&entries[2].commit_id).unwrap())
        .unwrap();
    assert_eq!(bob.author().email().unwrap(), "bob@example.com");
    // A user's log holds their actions and those actions' outcomes.
    let alices = audit
        .entries(&Filter {
            since: None,
            user: Some("alice".into()),
        })
        .unwrap();
    assert_eq!(alices.len(), 3);
    let recent = audit
        .entries(&Filter {
            since: Some(TIME + 3600),
            user: None,
        })
        .unwrap();
    assert_eq!(recent.len(), 2);

    let verified = audit
        .verify(&["req-00000001".into(), "req-00000002".into()])
        .unwrap();
    assert_eq!(verified.problems, Vec::<String>::new());
    assert_eq!((verified.n_actions, verified.n_outcomes), (2, 2));
    let missing = audit.verify(&["req-missing1".into()]).unwrap();
    assert_eq!(
        missing.problems,
        ["no audit commit for request req-missing1"]
    );

    // A request id is recorded once.
    let again = audit.record(action("req-00000001", alice())).await;
    assert!(
        matches!(again, Err(AuditError::Duplicate { .. })),
        "{again:?}"
    );
    // Ids and names that would escape their place are refused.
    let escape = audit.record(action("../../../../etc", alice())).await;
    assert!(matches!(escape, Err(AuditError::Invalid(_))), "{escape:?}");
    let forged = Who {
        user: "mallory <m@evil>".into(),
        ..alice()
    };
    let forged = audit.record(action("req-00000003", forged)).await;
    assert!(matches!(forged, Err(AuditError::Invalid(_))), "{forged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_lose_a_commit() {
    let dir = TempDir::new("audit-concurrent");
    // Two logs on one repository stand for two processes (a `muster user`
    // command beside `muster serve`): only the branch's compare-and-swap
    // keeps them apart.
    let first = AuditLog::in_data_dir(dir.path());
    let second = AuditLog::in_data_dir(dir.path());
    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    for n in 0..24 {
        let audit = if n % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let id = new_request_id();
        ids.push(id.clone());
        tasks.push(tokio::spawn(async move {
            audit.record(action(&id, alice())).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let entries = first.entries(&Filter::default()).unwrap();
    assert_eq!(entries.len(), 24);
    let verified = first.verify(&ids).unwrap();
    assert_eq!(verified.problems, Vec::<String>::new());
    assert_eq!(verified.n_actions, 24);
}

#[tokio::test]
async fn an_unwritable_audit_repo_fails_the_record() {
    let dir = TempDir::new("audit-unwritable");
    // A regular file where the repository should be, and a path beneath a
    // regular file: both fail for root as for anyone.
    dir.write("audit.git", "not a repository");
    let on_file = AuditLog::in_data_dir(dir.path())
        .record(action("req-00000001", alice()))
        .await;
    assert!(
        matches!(on_file, Err(AuditError::Open { .. })),
        "{on_file:?}"
    );
    dir.write("plain-file", "x");
    let beneath = AuditLog::open(dir.path().join("plain-file/audit.git"))
        .record(action("req-00000001", alice()))
        .await;
    assert!(
        matches!(beneath, Err(AuditError::Open { .. })),
        "{beneath:?}"
    );
    let message = beneath.unwrap_err().to_string();
    assert!(
        message.starts_with("cannot open the audit repository"),
        "{message}"
    );

    // A repository muster did not make is not written into.
    let foreign = dir.path().join("foreign.git");
    git2::Repository::init_bare(&foreign).unwrap();
    let refused = AuditLog::open(&foreign)
        .record(action("req-00000001", alice()))
        .await;
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains("not an audit repository made by muster"),
        "{message}"
    );
}

#[tokio::test]
async fn verify_finds_records_that_do_not_match_their_commit() {
    let dir = TempDir::new("audit-tamper");
    let audit = AuditLog::in_data_dir(dir.path());
    audit.record(action("req-00000001", alice())).await.unwrap();
    assert!(audit.verify(&[]).unwrap().problems.is_empty());

    // Someone commits by hand: a record whose message and author lie.
    let repo = git2::Repository::open_bare(audit.path()).unwrap();
    let parent = repo
        .find_reference("refs/heads/main")
        .unwrap()
        .peel_to_commit()
        .unwrap();
    let record = audit.entries(&Filter::default()).unwrap()[0].record.clone();
    let forged = Record {
        request_id: "req-forged01".into(),
        ..record
    };
    let blob = repo
        .blob(serde_yaml::to_string(&forged).unwrap().as_bytes())
        .unwrap();
    let tree = git2::build::TreeUpdateBuilder::new()
        .upsert(
            "actions/2026/11/29/req-forged01.yaml",
            blob,
            git2::FileMode::Blob,
        )
        .create_updated(&repo, &parent.tree().unwrap())
        .unwrap();
    let someone = git2::Signature::now("mallory", "mallory@muster").unwrap();
    repo.commit(
        Some("refs/heads/main"),
        &someone,
        &someone,
        "scripts.run -: nothing to see",
        &repo.find_tree(tree).unwrap(),
        &[&parent],
    )
    .unwrap();
    let verified = audit.verify(&[]).unwrap();
    assert_eq!(verified.problems.len(), 2, "{:?}", verified.problems);
    assert!(verified.problems[0].contains("does not match the record"));
    assert!(verified.problems[1].contains("authored by `mallory <mallory@muster>`"));

    // An outcome of nothing is found too.
    audit
        .record_outcome(Outcome {
            request_id: "req-unknown1".into(),
            summary: "done".into(),
            details: BTreeMap::new(),
            time: TIME,
        })
        .await
        .unwrap();
    let verified = audit.verify(&[]).unwrap();
    assert!(
        verified.problems[2].contains("which has no earlier action"),
        "{:?}",
        verified.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_pushed_to_the_remote_and_retried_when_it_fails() {
    let dir = TempDir::new("audit-push");
    let remote = dir.path().join("remote.git");
    let audit = AuditLog::in_data_dir(&dir.path().join("data")).with_remote_retry(
        remote.to_str().unwrap(),
        Duration::from_millis(50),
        Duration::from_millis(200),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let pusher = audit
        .spawn_pusher(async move {
            let _ = stopped.await;
        })
        .expect("a pusher runs with a remote");
    // The remote does not exist yet: recording does not wait for it.
    let committed = audit.record(action("req-00000001", alice())).await.unwrap();
    git2::Repository::init_bare(&remote).unwrap();
    let pushed = eventually("the audit commit to reach the remote", || async {
        let remote = git2::Repository::open_bare(&remote).ok()?;
        let tip = remote.refname_to_id("refs/heads/main").ok()?;
        Some(tip.to_string())
    })
    .await;
    assert_eq!(pushed, committed.commit_id);
    let next = audit.record(action("req-00000002", alice())).await.unwrap();
    eventually("the next commit to reach the remote", || async {
        let remote = git2::Repository::open_bare(&remote).ok()?;
        let tip = remote.refname_to_id("refs/heads/main").ok()?;
        (tip.to_string() == next.commit_id).then_some(())
    })
    .await;
    stop.send(()).unwrap();
    pusher.await.unwrap();
}

/// A `muster serve` process whose output is kept.
struct Controller {
    child: Child,
    url: String,
    stdout: Arc<Mutex<String>>,
    stderr: std::path::PathBuf,
}

impl Controller {
    fn start(data: &Path, repo: &Path, log: &Path) -> Controller {
        let mut child = Command::new(env!("CARGO_BIN_EXE_muster"))
            .args(["serve", "--listen", "127.0.0.1:0", "--repo"])
            .arg(repo)
            .env("MUSTER_DATA_DIR", data)
            .env("MUSTER_LOG", "debug")
            .env_remove("MUSTER_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("muster serve runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        lines.read_line(&mut first).unwrap();
        let url = first
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in `{first}`"))
            .to_string();
        let stdout = Arc::new(Mutex::new(first));
        let sink = Arc::clone(&stdout);
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = lines.read_to_string(&mut rest);
            sink.lock().unwrap().push_str(&rest);
        });
        Controller {
            child,
            url,
            stdout,
            stderr: log.to_path_buf(),
        }
    }

    /// Stops the controller; returns everything it printed.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        let mut output = self.stdout.lock().unwrap().clone();
        output.push_str(&std::fs::read_to_string(&self.stderr).unwrap());
        output
    }
}

/// Runs `muster` with `stdin`; returns its stdout and stderr.
fn muster(data: &Path, config: &Path, args: &[&str], stdin: &str) -> (String, String) {
    let output = run_with_stdin(
        muster_command()
            .args(args)
            .env("MUSTER_DATA_DIR", data)
            .env("XDG_CONFIG_HOME", config)
            .env("MUSTER_LOG", "debug")
            .env_remove("MUSTER_DATABASE_URL"),
        stdin,
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_errors_the_database_or_the_audit_repo() {
    let dir = TempDir::new("audit-secrets");
    let data = dir.path().join("data");
    let config = dir.path().join("config");
    let fleet = TestRepo::from_example("audit-secrets-fleet");
    let controller = Controller::start(&data, fleet.path(), &dir.path().join("serve.log"));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    // Everything the commands and the API said, but the one line that
    // shows the API token once.
    let printed = RefCell::new(String::new());
    let run = |args: &[&str], stdin: &str| {
        let (stdout, stderr) = muster(&data, &config, args, stdin);
        printed.borrow_mut().push_str(&stderr);
        stdout
    };
    let print = |text: &str| printed.borrow_mut().push_str(text);

    let alice_first = "alice first password 1";
    let alice_second = "alice second password 2";
    let root_password = "root break-glass password 3";
    run(&["user", "add", "alice"], &format!("{alice_first}\n"));
    run(
        &["user", "add", "root", "--admin"],
        &format!("{root_password}\n"),
    );
    run(&["user", "passwd", "alice"], &format!("{alice_second}\n"));
    // Mistakes whose messages must not quote what was typed.
    print(&run(&["user", "passwd", "alice"], "too short\n"));
    print(&run(&["user", "add", "alice"], &format!("{alice_first}\n")));
    let created = run(
        &["apitoken", "create", "--user", "alice", "--name", "ci"],
        "",
    );
    let api_token = printed_token(&created);
    print(&created.replace(&api_token, "<the token, printed once>"));

    let login = |user: &str, password: &str| {
        http.post(format!("{}/v1/login", controller.url))
            .json(&json!({"user": user, "password": password}))
            .send()
    };
    let alice_session: serde_json::Value = login("alice", alice_second)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alice_session = alice_session["token"].as_str().unwrap().to_string();
    let root_session: serde_json::Value = login("root", root_password)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let root_session = root_session["token"].as_str().unwrap().to_string();
    // A wrong password, and a password typed into the user field.
    for (user, password) in [("alice", alice_first), (alice_second, "whatever")] {
        let answer = login(user, password).await.unwrap();
        assert_eq!(answer.status(), 401);
        print(&answer.text().await.unwrap());
    }
    for token in [&alice_session, &root_session, &api_token] {
        let answer = http
            .get(format!("{}/v1/whoami", controller.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    print(&run(
        &["login", "--server", &controller.url, "--user", "alice"],
        &format!("{alice_second}\n"),
    ));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config.join("muster/session.json")).unwrap())
            .unwrap();
    let cli_session = saved["token"].as_str().unwrap().to_string();
    print(&run(&["logout"], ""));
    let revoked = http
        .get(format!("{}/v1/whoami", controller.url))
        .bearer_auth(&cli_session)
        .send()
        .await
        .unwrap();
    print(&revoked.text().await.unwrap());
    let list = run(&["apitoken", "list"], "");
    let id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    print(&run(&["apitoken", "revoke", id], ""));
    print(&run(&["audit", "log"], ""));
    let logs = controller.stop();
    assert!(logs.contains("logged in"), "the controller logged: {logs}");
    assert!(
        logs.contains("login failed"),
        "the controller logged: {logs}"
    );

    let secrets = [
        alice_first,
        alice_second,
        root_password,
        &api_token,
        &alice_session,
        &root_session,
        &cli_session,
    ];
    for secret in secrets {
        assert!(
            !logs.contains(secret),
            "a secret is in the controller's log"
        );
        let printed = printed.borrow();
        assert!(
            !printed.contains(secret),
            "a secret is in the output: {printed}"
        );
    }
    assert_no_secret_in_repo(&data.join("audit.git"), &secrets);
    // Nor in the database: only hashes are stored.
    for file in ["muster.db", "muster.db-wal"] {
        let mut bytes = Vec::new();
        if let Ok(mut db) = std::fs::File::open(data.join(file)) {
            db.read_to_end(&mut bytes).unwrap();
        }
        let text = String::from_utf8_lossy(&bytes);
        for secret in secrets {
            assert!(!text.contains(secret), "a secret is in {file}");
        }
    }
    // The break-glass login is in the audit repository.
    let logins: Vec<_> = AuditLog::in_data_dir(&data)
        .entries(&Filter::default())
        .unwrap()
        .into_iter()
        .filter(|entry| entry.record.action == "login")
        .collect();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].record.who.user, "root");
    assert!(!repo_objects(&data.join("audit.git")).is_empty());
}

backends!(
    outcomes_are_written_only_by_the_replica_holding_the_action,
    |db: TestDb| {
        async move {
            // Two replicas share one database; each keeps its own audit
            // repository, and replica A took the action.
            let store = db.open().await;
            let replica_a = TempDir::new("audit-replica-a");
            let replica_b = TempDir::new("audit-replica-b");
            let audit_a = AuditLog::in_data_dir(replica_a.path());
            let audit_b = AuditLog::in_data_dir(replica_b.path());
            // Replica B has a repository with a history of its own.
            audit_b
                .record(Action {
                    time: muster_controller::server::now(),
                    ..action("req-b-00000001", alice())
                })
                .await
                .unwrap();

            let now = muster_controller::server::now();
            let request_id = new_request_id();
            let committed = audit_a
                .record(Action {
                    time: now,
                    ..action(&request_id, alice())
                })
                .await
                .unwrap();
            let new_action = NewAction {
                id: "a-replica".into(),
                kind: "script".into(),
                requested_by: "alice".into(),
                request_id: Some(request_id.clone()),
                summary: "run cleanup on group web".into(),
                targets: json!({"groups": ["web"]}),
                parameters: json!({}),
                source: JobSource::AdHoc,
                max_parallel: None,
                failure_threshold: None,
                created_at: now,
                audit_commit: Some(committed.commit_id.clone()),
            };
            store.create_action(&new_action, &[]).await.unwrap();
            store.cancel_action("a-replica", now).await.unwrap();

            // Replica B's sweep leaves the outcome to replica A.
            let done_b = Mutex::new(BTreeSet::new());
            assert_eq!(record_outcomes(&store, &audit_b, &done_b).await.unwrap(), 0);
            assert!(!audit_b.has_outcome(&request_id, now).unwrap());
            let verified_b = audit_b.verify(&[]).unwrap();
            assert!(verified_b.problems.is_empty(), "{:?}", verified_b.problems);
            assert_eq!((verified_b.n_actions, verified_b.n_outcomes), (1, 0));

            // Replica A's sweep writes it, once.
            let done_a = Mutex::new(BTreeSet::new());
            assert_eq!(record_outcomes(&store, &audit_a, &done_a).await.unwrap(), 1);
            assert!(audit_a.has_outcome(&request_id, now).unwrap());
            let fresh = Mutex::new(BTreeSet::new());
            assert_eq!(record_outcomes(&store, &audit_a, &fresh).await.unwrap(), 0);
            let verified_a = audit_a.verify(std::slice::from_ref(&request_id)).unwrap();
            assert!(verified_a.problems.is_empty(), "{:?}", verified_a.problems);
            assert_eq!((verified_a.n_actions, verified_a.n_outcomes), (1, 1));
        }
    }
);
