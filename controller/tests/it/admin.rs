//! `muster init`, `token`, `hosts` and `commits` as an operator runs them.

use std::collections::BTreeMap;
use std::process::Output;

use muster_controller::store::{Store, TokenRecord};
use muster_schemas::protocol::HostState;

use crate::db::TestDb;
use crate::support::cli::{muster_command, succeeded};
use crate::support::pending_host;

fn muster(data_dir: &std::path::Path, args: &[&str]) -> Output {
    muster_command()
        .args(args)
        .env("MUSTER_DATA_DIR", data_dir)
        .env_remove("MUSTER_DATABASE_URL")
        .output()
        .expect("muster runs")
}

#[tokio::test]
async fn tokens_are_created_listed_and_revoked() {
    let dir = TestDb::temp_dir("admin-tokens");
    let init = succeeded(&muster(&dir, &["init"]));
    assert!(init.contains("public key (agents pin it): RW"), "{init}");
    let public_key = init.trim().rsplit(' ').next().unwrap().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the signing key is private: {mode:o}");
    }
    // Without a recorded controller URL, the command says what to do.
    let refused = muster(&dir, &["token", "create"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("pass --server URL"));

    let created = succeeded(&muster(
        &dir,
        &[
            "token",
            "create",
            "--server",
            "https://muster.example.com",
            "--uses",
            "3",
            "--ttl",
            "2h",
            "--label",
            "role=web",
            "--auto-approve",
        ],
    ));
    let enroll = created
        .lines()
        .find(|l| l.trim_start().starts_with("muster-agent enroll"))
        .expect("an enroll line");
    let words: Vec<&str> = enroll.split_whitespace().collect();
    assert_eq!(words[2..4], ["--server", "https://muster.example.com"]);
    assert_eq!(words[4], "--token");
    assert!(words[5].starts_with("mt_"));
    assert_eq!(words[6..8], ["--pubkey", public_key.as_str()]);
    assert!(created.contains("3 uses"), "{created}");

    // The token itself is stored only as a hash.
    let store = Store::open(&muster_controller::store::sqlite_url(&dir))
        .await
        .unwrap();
    let raw: String = sqlx::query_scalar("SELECT token_hash FROM enrollment_tokens")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_ne!(raw, words[5]);
    assert!(!raw.contains(words[5]));
    store.close().await;

    let listed = succeeded(&muster(&dir, &["token", "list"]));
    let id = created
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':');
    assert!(
        listed.contains(id)
            && listed.contains("valid")
            && listed.contains("0/3")
            && listed.contains("role=web"),
        "{listed}"
    );
    assert!(!listed.contains(words[5]), "lists never show tokens");
    succeeded(&muster(&dir, &["token", "revoke", id]));
    assert!(succeeded(&muster(&dir, &["token", "list"])).contains("revoked"));
    assert_eq!(
        muster(&dir, &["token", "revoke", "nope"]).status.code(),
        Some(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn hosts_are_approved_rejected_and_removed() {
    let dir = TestDb::temp_dir("admin-hosts");
    succeeded(&muster(&dir, &["init"]));
    assert!(succeeded(&muster(&dir, &["hosts", "list"])).contains("no hosts yet"));
    let store = Store::open(&muster_controller::store::sqlite_url(&dir))
        .await
        .unwrap();
    let token = TokenRecord {
        id: "t".into(),
        max_uses: 2,
        uses: 0,
        labels: BTreeMap::from([("role".to_string(), "db".to_string())]),
        auto_approve: false,
        created_at: 0,
        expires_at: i64::MAX,
        revoked_at: None,
    };
    store.create_token(&token, "hash").await.unwrap();
    for (id, name) in [("id-1", "db-01"), ("id-2", "db-02")] {
        let host = pending_host(id, name);
        store.enroll("hash", &host, 1).await.unwrap().unwrap();
    }
    let listed = succeeded(&muster(&dir, &["hosts", "list"]));
    assert!(
        listed.contains("db-01") && listed.contains("pending") && listed.contains("role=db"),
        "{listed}"
    );
    assert!(succeeded(&muster(&dir, &["hosts", "approve", "db-01"])).contains("db-01 is approved"));
    assert!(succeeded(&muster(&dir, &["hosts", "reject", "db-02"])).contains("db-02 is rejected"));
    assert_eq!(
        store.find_host("db-01").await.unwrap().unwrap().state,
        HostState::Approved
    );
    assert_eq!(
        store.find_host("db-02").await.unwrap().unwrap().state,
        HostState::Rejected
    );
    let shown = succeeded(&muster(&dir, &["hosts", "show", "db-01"]));
    assert!(
        shown.contains("state:       approved") && shown.contains("bundle:      none yet"),
        "{shown}"
    );
    succeeded(&muster(&dir, &["hosts", "remove", "db-02"]));
    assert!(store.find_host("db-02").await.unwrap().is_none());
    let unknown = muster(&dir, &["hosts", "approve", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no host named `nope`"));
    assert!(succeeded(&muster(&dir, &["commits", "list"])).contains("no commits tried yet"));
    assert_eq!(
        muster(&dir, &["commits", "show", "abc"]).status.code(),
        Some(2)
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
