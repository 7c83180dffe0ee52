//! Users, sessions, API tokens and logins: the store on both backends, the
//! user API of a real controller, and the `muster user`, `apitoken`,
//! `login` and `logout` commands run as an operator runs them.

use std::path::Path;
use std::process::Output;

use muster_controller::audit::{AuditLog, Filter};
use muster_controller::server::user_auth::{
    Clock, LoginResponse, Settings, WhoAmI, hash_password, secret_hash, verify_password,
};
use muster_controller::store::{
    ApiTokenRecord, AttemptLimit, Store, StoreError, address_subject, user_subject,
};
use muster_schemas::protocol::ErrorBody;
use serde_json::json;

use crate::backends;
use crate::db::TestDb;
use crate::harness::Harness;
use crate::support::cli::{muster_command, run_with_stdin, succeeded};

const NOW: i64 = 1_790_000_000;

const ALICE_PASSWORD: &str = "correct horse battery staple";

fn api_token(id: &str, name: &str, user: &str, expires_at: Option<i64>) -> ApiTokenRecord {
    ApiTokenRecord {
        id: id.into(),
        name: name.into(),
        user: user.into(),
        created_at: NOW,
        expires_at,
        revoked_at: None,
        last_used_at: None,
    }
}

async fn add_user(store: &Store, name: &str, password: &str, break_glass: bool) {
    let hash = hash_password(password).unwrap();
    store
        .add_user(name, &hash, break_glass, muster_controller::server::now())
        .await
        .unwrap();
}

backends!(users_are_added_changed_and_removed, |db: TestDb| {
    async move {
        let store = db.open().await;
        let first = hash_password(ALICE_PASSWORD).unwrap();
        store.add_user("alice", &first, false, NOW).await.unwrap();
        let again = store.add_user("alice", &first, true, NOW).await;
        assert!(
            matches!(&again, Err(StoreError::Conflict(m)) if m.contains("muster user passwd alice")),
            "{again:?}"
        );
        let alice = store.user("alice").await.unwrap().unwrap();
        assert!(!alice.break_glass);
        assert!(verify_password(ALICE_PASSWORD, &alice.password_hash));
        assert!(
            !format!("{alice:?}").contains(&alice.password_hash),
            "the hash stays out of debug output"
        );
        store
            .create_session("session-1", "alice", NOW, NOW + 3600)
            .await
            .unwrap();
        store
            .create_api_token(&api_token("t1", "ci", "alice", None), "token-1")
            .await
            .unwrap();

        // A new password ends sessions, not API tokens.
        let second = hash_password("another long password").unwrap();
        assert!(
            store
                .set_password("alice", &second, NOW + 10)
                .await
                .unwrap()
        );
        let session = store.session_bearer("session-1").await.unwrap().unwrap();
        assert_eq!(session.revoked_at, Some(NOW + 10));
        let token = store.api_token_bearer("token-1").await.unwrap().unwrap();
        assert_eq!(token.revoked_at, None);
        assert!(!store.set_password("nobody", &second, NOW).await.unwrap());

        // Removal disables the user and revokes everything it holds.
        assert!(store.remove_user("alice", NOW + 20).await.unwrap());
        assert!(!store.remove_user("alice", NOW + 21).await.unwrap());
        assert!(store.user("alice").await.unwrap().is_none());
        assert!(store.users().await.unwrap().is_empty());
        let token = store.api_token_bearer("token-1").await.unwrap().unwrap();
        assert_eq!(token.revoked_at, Some(NOW + 20));
        assert!(token.user_disabled);

        // The name can be added again; what the old user held stays revoked.
        store
            .add_user("alice", &first, false, NOW + 30)
            .await
            .unwrap();
        let alice = store.user("alice").await.unwrap().unwrap();
        assert_eq!(alice.created_at, NOW + 30);
        assert_eq!(alice.disabled_at, None);
        let token = store.api_token_bearer("token-1").await.unwrap().unwrap();
        assert_eq!(token.revoked_at, Some(NOW + 20));
        assert_eq!(
            store
                .users()
                .await
                .unwrap()
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>(),
            ["alice"]
        );
    }
});

backends!(api_token_names_belong_to_one_live_token, |db: TestDb| {
    async move {
        let store = db.open().await;
        add_user(&store, "alice", ALICE_PASSWORD, false).await;
        add_user(&store, "bob", ALICE_PASSWORD, false).await;
        store
            .create_api_token(&api_token("t1", "ci", "alice", Some(NOW + 60)), "hash-1")
            .await
            .unwrap();
        // RBAC names tokens without their user: one `ci` at a time.
        let taken = store
            .create_api_token(&api_token("t2", "ci", "bob", None), "hash-2")
            .await;
        assert!(
            matches!(&taken, Err(StoreError::Conflict(m)) if m.contains("`ci` exists already")),
            "{taken:?}"
        );
        let nobody = store
            .create_api_token(&api_token("t3", "deploy", "carol", None), "hash-3")
            .await;
        assert!(
            matches!(&nobody, Err(StoreError::Conflict(m)) if m.contains("no user named `carol`")),
            "{nobody:?}"
        );
        let bearer = store.api_token_bearer("hash-1").await.unwrap().unwrap();
        assert_eq!(bearer.user, "alice");
        assert_eq!(bearer.api_token, Some(("t1".into(), "ci".into())));
        assert_eq!(bearer.expires_at, Some(NOW + 60));

        let revoked = store
            .revoke_api_token("t1", NOW + 5)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(revoked.name, "ci");
        assert_eq!(revoked.revoked_at, Some(NOW + 5));
        assert!(
            store
                .revoke_api_token("t1", NOW + 6)
                .await
                .unwrap()
                .is_none()
        );
        // Once revoked, the name is free again.
        store
            .create_api_token(&api_token("t2", "ci", "bob", None), "hash-2")
            .await
            .unwrap();
        let tokens = store.api_tokens().await.unwrap();
        assert_eq!(tokens.len(), 2);

        store.touch_api_token("t2", NOW + 100).await.unwrap();
        store.touch_api_token("t2", NOW + 110).await.unwrap();
        let bearer = store.api_token_bearer("hash-2").await.unwrap().unwrap();
        assert_eq!(
            bearer.last_used_at,
            Some(NOW + 100),
            "last use is written at most once a minute"
        );
    }
});

const LIMIT: AttemptLimit = AttemptLimit {
    max_attempts: 3,
    window: 900,
    lockout: 600,
};

backends!(login_attempts_lock_then_unlock, |db: TestDb| {
    async move {
        let store = db.open().await;
        let subject = user_subject("alice");
        for n in 1..=3 {
            let gate = store
                .count_login_attempt(&subject, LIMIT, NOW + n)
                .await
                .unwrap();
            assert!(gate.allowed, "attempt {n} is within the limit");
            assert_eq!(gate.locked_until.is_some(), n == 3, "attempt {n}");
        }
        let refused = store
            .count_login_attempt(&subject, LIMIT, NOW + 10)
            .await
            .unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.locked_until, Some(NOW + 3 + 600));
        // Other subjects are not affected.
        let other = store
            .count_login_attempt(&address_subject("127.0.0.1"), LIMIT, NOW + 10)
            .await
            .unwrap();
        assert!(other.allowed);
        // After the lockout, counting starts over.
        let later = store
            .count_login_attempt(&subject, LIMIT, NOW + 3 + 600)
            .await
            .unwrap();
        assert!(later.allowed);
        assert_eq!(later.locked_until, None);
        // A window that passed starts over too.
        let much_later = NOW + 5000;
        for _ in 0..2 {
            store
                .count_login_attempt(&subject, LIMIT, much_later)
                .await
                .unwrap();
        }
        store.forgive_login_attempt(&subject, LIMIT).await.unwrap();
        let gate = store
            .count_login_attempt(&subject, LIMIT, much_later)
            .await
            .unwrap();
        assert_eq!(gate.locked_until, None, "a forgiven attempt does not count");
        store.clear_login_failures(&subject).await.unwrap();
    }
});

backends!(parallel_guesses_cannot_slip_past_the_limit, |db: TestDb| {
    async move {
        let store = db.open().await;
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .count_login_attempt(&user_subject("alice"), LIMIT, NOW)
                    .await
                    .unwrap()
                    .allowed
            }));
        }
        let mut allowed = 0;
        for task in tasks {
            allowed += usize::from(task.await.unwrap());
        }
        assert_eq!(allowed, 3, "exactly the limit gets through");
    }
});

/// User-auth settings with a small per-user limit and a clock tests move.
fn settings(clock: &Clock) -> Settings {
    Settings {
        per_user: LIMIT,
        per_address: AttemptLimit {
            max_attempts: 1000,
            window: 900,
            lockout: 600,
        },
        session_ttl: 3600,
        clock: clock.clone(),
        secure_cookies: false,
    }
}

async fn start(db: TestDb, settings: Settings) -> Harness {
    Harness::start_with(db, move |config| config.user_auth = settings).await
}

async fn login(h: &Harness, user: &str, password: &str) -> reqwest::Response {
    h.http
        .post(format!("{}/v1/login", h.url))
        .json(&json!({"user": user, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn whoami(h: &Harness, token: &str) -> reqwest::Response {
    h.http
        .get(format!("{}/v1/whoami", h.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: ErrorBody = response.json().await.unwrap();
    (status, body.error)
}

async fn session(h: &Harness, user: &str, password: &str) -> LoginResponse {
    let response = login(h, user, password).await;
    assert_eq!(response.status(), 200, "login of {user}");
    response.json().await.unwrap()
}

backends!(logins_fail_alike_and_lock_out, |db: TestDb| {
    async move {
        let clock = Clock::default();
        let h = start(db, settings(&clock)).await;
        add_user(&h.store, "alice", ALICE_PASSWORD, false).await;

        let good = session(&h, "alice", ALICE_PASSWORD).await;
        assert_eq!(good.user, "alice");
        assert!(good.token.starts_with("mus_"));
        let me: WhoAmI = whoami(&h, &good.token).await.json().await.unwrap();
        assert_eq!(
            me,
            WhoAmI {
                user: "alice".into(),
                via: "session".into(),
                token: None,
                break_glass: false
            }
        );

        // A wrong password and an unknown user get the same answer.
        let wrong = error_of(login(&h, "alice", "not the password").await).await;
        let unknown = error_of(login(&h, "mallory", "not the password").await).await;
        assert_eq!(wrong, (401, "wrong user name or password".to_string()));
        assert_eq!(unknown, wrong);
        let malformed = error_of(
            h.http
                .post(format!("{}/v1/login", h.url))
                .body(r#"{"user": "alice", "password": 12345678901234}"#)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(malformed.0, 400);
        assert!(!malformed.1.contains("12345678901234"), "{}", malformed.1);

        // The third failure in the window reaches the limit: alice is
        // locked, even with the right password, and so is a name that
        // does not exist, with the same answer.
        let _ = login(&h, "alice", "not the password either").await;
        let _ = login(&h, "alice", "nor this one").await;
        let _ = login(&h, "mallory", "guess 2").await;
        let _ = login(&h, "mallory", "guess 3").await;
        let locked = login(&h, "alice", ALICE_PASSWORD).await;
        assert_eq!(locked.status(), 429);
        // 600 s from the failure that locked, a second ago at most.
        let retry_after: i64 = locked.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((598..=600).contains(&retry_after), "{retry_after}");
        let locked = error_of(locked).await;
        assert_eq!(locked.1, "too many failed logins: try again in 10 minutes");
        let locked_unknown = error_of(login(&h, "mallory", "guess 4").await).await;
        assert_eq!(locked_unknown, locked);
        // A session from before the lockout still works.
        assert_eq!(whoami(&h, &good.token).await.status(), 200);

        // Once the lockout has passed, the right password works again.
        clock.advance(601);
        let after = session(&h, "alice", ALICE_PASSWORD).await;

        // Logging out ends that session only.
        let out = h
            .http
            .post(format!("{}/v1/logout", h.url))
            .bearer_auth(&after.token)
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), 204);
        let (status, message) = error_of(whoami(&h, &after.token).await).await;
        assert_eq!(status, 401);
        assert!(message.contains("session was revoked"), "{message}");
        assert_eq!(whoami(&h, &good.token).await.status(), 200);

        // Sessions expire.
        clock.advance(3600);
        let (status, message) = error_of(whoami(&h, &good.token).await).await;
        assert_eq!(status, 401);
        assert!(message.contains("session has expired"), "{message}");
        h.stop().await;
    }
});

backends!(bearer_tokens_are_checked, |db: TestDb| {
    async move {
        let clock = Clock::default();
        let h = start(db, settings(&clock)).await;
        add_user(&h.store, "alice", ALICE_PASSWORD, false).await;
        let now = clock.now();
        let tokens = [
            ("t-ci", "ci", Some(now + 60)),
            ("t-old", "old", None),
            ("t-forever", "forever", None),
        ];
        for (id, name, expires_at) in tokens {
            let token = format!("mua_{name}-secret-for-the-test");
            store_token(&h.store, id, name, expires_at, &token).await;
        }
        let ci = "mua_ci-secret-for-the-test";
        let me: WhoAmI = whoami(&h, ci).await.json().await.unwrap();
        assert_eq!(me.user, "alice");
        assert_eq!(me.via, "api-token");
        assert_eq!(me.token.as_deref(), Some("ci"));

        h.store.revoke_api_token("t-old", now).await.unwrap();
        let (status, message) = error_of(whoami(&h, "mua_old-secret-for-the-test").await).await;
        assert_eq!(status, 401);
        assert!(message.contains("API token was revoked"), "{message}");

        clock.advance(61);
        let (status, message) = error_of(whoami(&h, ci).await).await;
        assert_eq!(status, 401);
        assert!(message.contains("API token has expired"), "{message}");
        assert_eq!(
            whoami(&h, "mua_forever-secret-for-the-test").await.status(),
            200
        );

        for (header, expected) in [
            (None, "missing `Authorization: Bearer` header"),
            (
                Some("Basic YWxpY2U6cGFzcw=="),
                "missing `Authorization: Bearer` header",
            ),
            (Some("Bearer mua_unknown"), "unknown API token"),
            (Some("Bearer mus_unknown"), "unknown session"),
            (
                Some("Bearer something-else"),
                "not a muster session or API token",
            ),
        ] {
            let mut request = h.http.get(format!("{}/v1/whoami", h.url));
            if let Some(header) = header {
                request = request.header("authorization", header);
            }
            let (status, message) = error_of(request.send().await.unwrap()).await;
            assert_eq!(status, 401, "{header:?}");
            assert!(message.contains(expected), "{header:?}: {message}");
        }

        // An API token does not log out.
        let out = h
            .http
            .post(format!("{}/v1/logout", h.url))
            .bearer_auth("mua_forever-secret-for-the-test")
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), 400);

        // A removed user's tokens stop working.
        h.store.remove_user("alice", clock.now()).await.unwrap();
        assert_eq!(
            whoami(&h, "mua_forever-secret-for-the-test").await.status(),
            401
        );
        h.stop().await;
    }
});

async fn store_token(store: &Store, id: &str, name: &str, expires_at: Option<i64>, token: &str) {
    store
        .create_api_token(
            &ApiTokenRecord {
                created_at: muster_controller::server::now(),
                ..api_token(id, name, "alice", expires_at)
            },
            &secret_hash(token),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_address_is_limited_across_user_names() {
    let clock = Clock::default();
    let mut settings = settings(&clock);
    settings.per_address = AttemptLimit {
        max_attempts: 4,
        window: 900,
        lockout: 300,
    };
    let h = start(TestDb::sqlite().await, settings).await;
    add_user(&h.store, "alice", ALICE_PASSWORD, false).await;
    // A good login gives its attempt back: it does not use up the address.
    for _ in 0..5 {
        session(&h, "alice", ALICE_PASSWORD).await;
    }
    for name in ["u1", "u2", "u3", "u4"] {
        assert_eq!(login(&h, name, "guess").await.status(), 401);
    }
    let refused = login(&h, "alice", ALICE_PASSWORD).await;
    assert_eq!(
        refused.status(),
        429,
        "the address is locked for every name"
    );
    clock.advance(301);
    session(&h, "alice", ALICE_PASSWORD).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_logins_and_requests_are_audited_or_refused() {
    let h = start(TestDb::sqlite().await, Settings::default()).await;
    add_user(&h.store, "root", "break glass in emergency", true).await;
    let audit = AuditLog::in_data_dir(h.data_dir());

    let admin = session(&h, "root", "break glass in emergency").await;
    let me: WhoAmI = whoami(&h, &admin.token).await.json().await.unwrap();
    assert!(me.break_glass);
    let entries = audit.entries(&Filter::default()).unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e.record.action.as_str(), e.record.summary.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("break-glass.use", "GET /v1/whoami"),
            ("login", "break-glass admin logged in")
        ]
    );
    for entry in &entries {
        assert_eq!(entry.record.who.user, "root");
        assert!(entry.record.who.break_glass);
        assert_eq!(entry.record.source.as_deref(), Some("127.0.0.1"));
    }

    // With the audit repository unwritable, break-glass access stops.
    std::fs::remove_dir_all(audit.path()).unwrap();
    std::fs::write(audit.path(), "not a repository").unwrap();
    let (status, message) = error_of(whoami(&h, &admin.token).await).await;
    assert_eq!(status, 503);
    assert!(
        message.contains("break-glass access is refused"),
        "{message}"
    );
    let (status, _) = error_of(login(&h, "root", "break glass in emergency").await).await;
    assert_eq!(status, 503);
    h.stop().await;
}

// The command line.

fn muster(data: &Path, database_url: Option<&str>, args: &[&str], stdin: &str) -> Output {
    muster_with_env(data, database_url, args, stdin, &[])
}

fn muster_with_env(
    data: &Path,
    database_url: Option<&str>,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &Path)],
) -> Output {
    let mut command = muster_command();
    command
        .args(args)
        .env("MUSTER_DATA_DIR", data)
        .env("USER", "operator")
        .env_remove("SUDO_USER")
        .env_remove("MUSTER_DATABASE_URL");
    if let Some(url) = database_url {
        command.env("MUSTER_DATABASE_URL", url);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    run_with_stdin(&mut command, stdin)
}

fn failure(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The token `muster apitoken create` printed.
pub(crate) fn printed_token(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("mua_"))
        .map(|rest| format!("mua_{rest}"))
        .expect("the token is printed")
}

#[tokio::test]
async fn operators_manage_users_and_tokens_from_the_command_line() {
    let dir = TestDb::temp_dir("users-cli");
    let run = |args: &[&str], stdin: &str| muster(&dir, None, args, stdin);

    let added = succeeded(&run(
        &["user", "add", "alice"],
        &format!("{ALICE_PASSWORD}\n"),
    ));
    assert!(added.contains("added user alice"), "{added}");
    let admin = succeeded(&run(
        &["user", "add", "root", "--admin"],
        "break glass in emergency\n",
    ));
    assert!(admin.contains("added break-glass admin root"), "{admin}");
    assert!(
        failure(&run(&["user", "add", "alice"], "whatever whatever\n"))
            .contains("user `alice` exists already")
    );
    assert!(failure(&run(&["user", "add", "bob"], "short\n")).contains("too short"));
    assert!(
        failure(&run(&["user", "add", "Bob"], "long enough password\n"))
            .contains("invalid user name `Bob`")
    );
    assert!(failure(&run(&["user", "add", "bob"], "")).contains("no password given"));

    let list = succeeded(&run(&["user", "list"], ""));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("NAME"), "{list}");
    assert!(
        lines[1].starts_with("alice") && lines[1].contains("user"),
        "{list}"
    );
    assert!(
        lines[2].starts_with("root") && lines[2].contains("break-glass admin"),
        "{list}"
    );

    succeeded(&run(&["user", "passwd", "alice"], "a brand new password\n"));
    let store = Store::open(&muster_controller::store::sqlite_url(&dir))
        .await
        .unwrap();
    let alice = store.user("alice").await.unwrap().unwrap();
    assert!(verify_password(
        "a brand new password",
        &alice.password_hash
    ));

    let created = succeeded(&run(
        &[
            "apitoken", "create", "--user", "alice", "--name", "ci", "--ttl", "30d",
        ],
        "",
    ));
    let token = printed_token(&created);
    assert!(created.contains("`ci` for alice, expires"), "{created}");
    let bearer = store
        .api_token_bearer(&secret_hash(&token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bearer.api_token.as_ref().unwrap().1, "ci");
    let days = (bearer.expires_at.unwrap() - muster_controller::server::now()) / 86_400;
    assert!((29..=30).contains(&days), "{days}");
    assert!(
        failure(&run(
            &["apitoken", "create", "--user", "alice", "--name", "ci"],
            ""
        ))
        .contains("`ci` exists already")
    );
    assert!(
        failure(&run(
            &["apitoken", "create", "--user", "nobody", "--name", "x"],
            ""
        ))
        .contains("no user named `nobody`")
    );
    let id = bearer.api_token.unwrap().0;
    let list = succeeded(&run(&["apitoken", "list"], ""));
    assert!(list.contains(&id) && list.contains("valid"), "{list}");
    assert!(!list.contains(&token), "{list}");
    succeeded(&run(&["apitoken", "revoke", &id], ""));
    assert!(succeeded(&run(&["apitoken", "list"], "")).contains("revoked"));
    assert!(failure(&run(&["apitoken", "revoke", &id], "")).contains("no valid API token"));

    succeeded(&run(&["user", "remove", "alice"], ""));
    assert!(failure(&run(&["user", "remove", "alice"], "")).contains("no user named `alice`"));
    store.close().await;

    // Every change is in the audit repository, authored by the operator.
    let log = succeeded(&run(&["audit", "log"], ""));
    let actions: Vec<&str> = log
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().nth(4).unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "user.remove",
            "apitoken.revoke",
            "apitoken.create",
            "user.passwd",
            "user.add",
            "user.add"
        ],
        "{log}"
    );
    assert!(
        log.lines().skip(1).all(|line| line.contains("operator")),
        "{log}"
    );
    assert!(
        succeeded(&run(&["audit", "log", "--user", "someone-else"], ""))
            .contains("no audit records")
    );
    assert_eq!(
        succeeded(&run(&["audit", "log", "--since", "1h"], ""))
            .lines()
            .count(),
        7
    );
    assert!(
        failure(&run(&["audit", "log", "--since", "yesterday"], "")).contains("invalid --since")
    );
    let verified = succeeded(&run(&["audit", "verify"], ""));
    assert!(verified.starts_with("ok: "), "{verified}");
    assert!(verified.contains("6 actions and 0 outcomes"), "{verified}");

    // The passwords and the token never reach the audit repository.
    assert_no_secret_in_repo(
        &dir.join("audit.git"),
        &[
            ALICE_PASSWORD,
            "break glass in emergency",
            "a brand new password",
            &token,
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every object of a Git repository, decompressed, for greps.
pub(crate) fn repo_objects(path: &Path) -> Vec<Vec<u8>> {
    let repo = git2::Repository::open_bare(path).unwrap();
    let odb = repo.odb().unwrap();
    let mut ids = Vec::new();
    odb.foreach(|id| {
        ids.push(*id);
        true
    })
    .unwrap();
    ids.iter()
        .map(|id| odb.read(*id).unwrap().data().to_vec())
        .collect()
}

pub(crate) fn assert_no_secret_in_repo(path: &Path, secrets: &[&str]) {
    let objects = repo_objects(path);
    assert!(!objects.is_empty());
    let mut redacted = false;
    for object in &objects {
        let text = String::from_utf8_lossy(object);
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "a secret is in the audit repository: {text}"
            );
        }
        redacted |= text.contains("<redacted>");
    }
    assert!(redacted, "secret parameters are recorded as <redacted>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_logout_keep_a_private_session_file() {
    let h = start(TestDb::sqlite().await, Settings::default()).await;
    add_user(&h.store, "alice", ALICE_PASSWORD, false).await;
    let config = TestDb::temp_dir("users-login-config");
    let env: [(&str, &Path); 1] = [("XDG_CONFIG_HOME", &config)];
    let data = h.data_dir().to_path_buf();
    let db_url = Some(h.db_url.clone());
    let run =
        |args: &[&str], stdin: &str| muster_with_env(&data, db_url.as_deref(), args, stdin, &env);
    let login_args = ["login", "--server", h.url.as_str(), "--user", "alice"];

    let refused = failure(&run(&login_args, "wrong password\n"));
    assert!(
        refused.contains("login refused: 401 Unauthorized: wrong user name or password"),
        "{refused}"
    );
    assert!(!config.join("muster/session.json").exists());

    let out = succeeded(&run(&login_args, &format!("{ALICE_PASSWORD}\n")));
    assert!(out.contains("logged in to"), "{out}");
    let path = config.join("muster/session.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved["user"], "alice");
    assert_eq!(saved["server"], h.url.as_str());
    let token = saved["token"].as_str().unwrap().to_string();
    assert_eq!(whoami(&h, &token).await.status(), 200);
    let leftovers: Vec<_> = std::fs::read_dir(config.join("muster"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["session.json"], "no temp file is left behind");

    let out = succeeded(&run(&["logout"], ""));
    assert!(out.contains("logged out of"), "{out}");
    assert!(!path.exists());
    assert_eq!(whoami(&h, &token).await.status(), 401);
    assert!(succeeded(&run(&["logout"], "")).contains("not logged in"));
    let _ = std::fs::remove_dir_all(&config);
    h.stop().await;
}

// `muster user add` works on PostgreSQL too, with the audit repository
// still in the data dir.
backends!(user_commands_work_on_every_backend, |db: TestDb| {
    async move {
        let data = db.dir.join("data");
        let url = Some(db.url.as_str());
        succeeded(&muster(
            &data,
            url,
            &["user", "add", "carol"],
            "carol's long password\n",
        ));
        let store = db.open().await;
        assert!(store.user("carol").await.unwrap().is_some());
        let entries = AuditLog::in_data_dir(&data)
            .entries(&Filter {
                since: None,
                user: Some("operator".into()),
            })
            .unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].record.targets, ["carol"]);
    }
});
