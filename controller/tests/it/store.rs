//! The store on both backends: enrollment, publication, reports.

use std::collections::BTreeMap;

use muster_controller::store::{
    BundleRecord, CheckCounts, CommitRecord, CommitState, EnrollRefusal, HostRecord, StoreError,
    TokenRecord,
};
use muster_schemas::protocol::HostState;
use serde_json::json;

use crate::backends;
use crate::db::TestDb;
use crate::support::pending_host;

const NOW: i64 = 1_790_000_000;

fn token(id: &str, max_uses: i64, auto_approve: bool) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        max_uses,
        uses: 0,
        labels: BTreeMap::from([("role".to_string(), "web".to_string())]),
        auto_approve,
        created_at: NOW,
        expires_at: NOW + 3600,
        revoked_at: None,
    }
}

fn host(id: &str, name: &str) -> HostRecord {
    HostRecord {
        facts: serde_json::Map::from_iter([("os".to_string(), json!("debian"))]),
        ..pending_host(id, name)
    }
}

fn commit(id: &str, state: CommitState) -> CommitRecord {
    CommitRecord {
        id: id.into(),
        author: "Alice <alice@example.com>".into(),
        summary: "change things".into(),
        committed_at: NOW,
        state,
        diagnostics: json!([]),
        n_changed: 0,
        recorded_at: NOW,
        deployed_at: (state == CommitState::Deployed).then_some(NOW),
    }
}

fn bundle(host_id: &str, generation: u64, commit_id: &str) -> BundleRecord {
    BundleRecord {
        host_id: host_id.into(),
        generation,
        commit_id: commit_id.into(),
        content_hash: format!("hash-{generation}"),
        bundle: "{}".into(),
        signature: "sig".into(),
        issued_at: NOW,
        expires_at: NOW + 86_400,
    }
}

backends!(tokens_limit_and_expire, |db: TestDb| {
    async move {
        let store = db.open().await;
        store
            .create_token(&token("t1", 2, false), "hash1")
            .await
            .unwrap();
        let first = store
            .enroll("hash1", &host("h1", "web-01"), NOW)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.state, HostState::Pending);
        assert_eq!(first.labels["role"], "web", "token labels reach the host");
        assert_eq!(first.token_id.as_deref(), Some("t1"));
        // A name already taken refuses, and does not use up the token.
        let taken = store
            .enroll("hash1", &host("h2", "web-01"), NOW)
            .await
            .unwrap();
        assert_eq!(taken, Err(EnrollRefusal::NameTaken));
        store
            .enroll("hash1", &host("h3", "web-02"), NOW)
            .await
            .unwrap()
            .unwrap();
        // Used up.
        let used_up = store
            .enroll("hash1", &host("h4", "web-03"), NOW)
            .await
            .unwrap();
        assert_eq!(used_up, Err(EnrollRefusal::InvalidToken));
        // Expired and revoked tokens, and unknown ones, all refuse alike.
        store
            .create_token(&token("t2", 5, true), "hash2")
            .await
            .unwrap();
        let expired = store
            .enroll("hash2", &host("h5", "db-01"), NOW + 7200)
            .await
            .unwrap();
        assert_eq!(expired, Err(EnrollRefusal::InvalidToken));
        let approved = store
            .enroll("hash2", &host("h5", "db-01"), NOW)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            approved.state,
            HostState::Approved,
            "auto-approve tokens approve"
        );
        assert!(store.revoke_token("t2", NOW).await.unwrap());
        let revoked = store
            .enroll("hash2", &host("h6", "db-02"), NOW)
            .await
            .unwrap();
        assert_eq!(revoked, Err(EnrollRefusal::InvalidToken));
        let unknown = store
            .enroll("nope", &host("h7", "db-03"), NOW)
            .await
            .unwrap();
        assert_eq!(unknown, Err(EnrollRefusal::InvalidToken));
        let tokens = store.tokens().await.unwrap();
        let t1 = tokens.iter().find(|t| t.id == "t1").unwrap();
        assert_eq!(t1.uses, 2);
        store.close().await;
    }
});

backends!(
    publication_is_atomic_and_generations_only_grow,
    |db: TestDb| {
        async move {
            let store = db.open().await;
            store
                .create_token(&token("t", 10, true), "h")
                .await
                .unwrap();
            for (id, name) in [("a", "host-a"), ("b", "host-b")] {
                store
                    .enroll("h", &host(id, name), NOW)
                    .await
                    .unwrap()
                    .unwrap();
            }
            let c1 = commit("c1", CommitState::Deployed);
            store
                .publish(&c1, &[bundle("a", 1, "c1"), bundle("b", 1, "c1")])
                .await
                .unwrap();
            assert_eq!(store.deployed_commit().await.unwrap().unwrap().id, "c1");
            // A publication with one stale generation changes nothing at all.
            let c2 = commit("c2", CommitState::Deployed);
            let err = store
                .publish(&c2, &[bundle("a", 2, "c2"), bundle("b", 1, "c2")])
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Conflict(_)), "{err}");
            assert_eq!(store.bundle("a").await.unwrap().unwrap().generation, 1);
            assert_eq!(store.deployed_commit().await.unwrap().unwrap().id, "c1");
            assert!(store.commit("c2").await.unwrap().is_none());
            // A rejected commit is recorded and changes no bundle.
            let mut rejected = commit("c3", CommitState::Rejected);
            rejected.diagnostics = json!([{"message": "bad"}]);
            store.record_rejected(&rejected).await.unwrap();
            assert_eq!(store.deployed_commit().await.unwrap().unwrap().id, "c1");
            assert_eq!(
                store.commit("c3").await.unwrap().unwrap().diagnostics,
                json!([{"message": "bad"}])
            );
            let heads = store.bundle_heads().await.unwrap();
            assert_eq!(heads["a"].generation, 1);
            assert_eq!(heads["b"].commit_id, "c1");
            store.close().await;
        }
    }
);

backends!(reports_update_the_host, |db: TestDb| {
    async move {
        let store = db.open().await;
        store.create_token(&token("t", 1, true), "h").await.unwrap();
        store
            .enroll("h", &host("a", "host-a"), NOW)
            .await
            .unwrap()
            .unwrap();
        let facts = serde_json::Map::from_iter([("kernel".to_string(), json!("6.1"))]);
        store
            .record_report(
                "a",
                3,
                "in_sync",
                CheckCounts {
                    passed: 1,
                    total: 2,
                },
                Some(&facts),
                "{\"r\":1}",
                NOW + 5,
            )
            .await
            .unwrap();
        store
            .record_report(
                "a",
                2,
                "drifted",
                CheckCounts::default(),
                None,
                "{\"r\":2}",
                NOW + 6,
            )
            .await
            .unwrap();
        let host = store.host("a").await.unwrap().unwrap();
        assert_eq!(
            host.applied_generation, 3,
            "an older report never lowers the applied generation"
        );
        assert_eq!(host.run_status.as_deref(), Some("drifted"));
        assert_eq!(host.last_seen_at, Some(NOW + 6));
        assert_eq!(host.facts["kernel"], "6.1");
        let reports = store.reports("a", 10).await.unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].1, "{\"r\":2}");
        assert!(store.remove_host("a").await.unwrap());
        assert!(store.host("a").await.unwrap().is_none());
        store.close().await;
    }
});
