//! The controller end to end, on both databases: commits become signed
//! bundles for the hosts they target, all or nothing; agents fetch them
//! over the authenticated API; and the protocol refuses attacks.

use std::time::Duration;

use muster_controller::store::CommitState;
use muster_schemas::bundle::{self, Bundle};
use serde_json::json;

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Harness, WEBHOOK_SECRET, eventually};

fn verify(
    harness: &Harness,
    agent_host: &str,
    signed: &muster_schemas::bundle::SignedBundle,
    last: u64,
) -> Bundle {
    bundle::verify(
        &harness.public_key,
        signed,
        agent_host,
        last,
        muster_controller::server::now(),
    )
    .expect("the bundle verifies")
}

fn resource_ids(bundle: &Bundle) -> Vec<String> {
    bundle
        .desired
        .resources
        .iter()
        .map(|r| r.id.clone())
        .collect()
}

backends!(commits_become_bundles_for_matching_hosts, |db: TestDb| {
    async move {
        let harness = Harness::start(db).await;
        let token = harness.token(5, true, &[("role", "web")], 3600).await;
        let web = harness.enroll(&token, "web-01").await;
        let db_token = harness.token(5, true, &[("role", "db")], 3600).await;
        let db_host = harness.enroll(&db_token, "db-01").await;

        let web_bundle = verify(&harness, &web.host_id, &web.bundle_after(0).await, 0);
        let db_bundle = verify(
            &harness,
            &db_host.host_id,
            &db_host.bundle_after(0).await,
            0,
        );
        let web_ids = resource_ids(&web_bundle);
        let db_ids = resource_ids(&db_bundle);
        assert!(
            web_ids.contains(&"package:nginx".to_string()),
            "{web_ids:?}"
        );
        assert!(!db_ids.contains(&"package:nginx".to_string()), "{db_ids:?}");
        assert!(db_ids.contains(&"file:/etc/motd".to_string()), "{db_ids:?}");
        // Templates are rendered with the Host document's vars for web-01.
        let site = web_bundle
            .desired
            .resources
            .iter()
            .find(|r| r.id == "file:/etc/nginx/sites-available/shop.conf")
            .expect("the nginx site");
        let rendered = serde_json::to_value(&site.resource).unwrap();
        let content = rendered["file"]["content"].as_str().unwrap();
        assert!(
            content.contains("server_name shop.example.com;"),
            "{content}"
        );
        assert!(content.contains("for web-01."), "{content}");
        assert_eq!(web_bundle.generation, 1);
        harness.stop().await;
    }
});

backends!(
    a_bad_commit_is_rejected_and_the_old_bundles_stay,
    |db: TestDb| {
        async move {
            let harness = Harness::start(db).await;
            let token = harness.token(1, true, &[("role", "web")], 3600).await;
            let web = harness.enroll(&token, "web-01").await;
            let first = web.bundle_after(0).await;
            let first = verify(&harness, &web.host_id, &first, 0);

            harness
                .repo
                .edit("policies/nginx.yaml", "groups: [web]", "groups: [webb]");
            let bad = harness
                .repo
                .commit_all("Target a group that does not exist");
            let record = harness.commit_state(&bad).await;
            assert_eq!(record.state, CommitState::Rejected);
            let diagnostics = record.diagnostics.as_array().unwrap();
            assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
            assert_eq!(diagnostics[0]["file"], "policies/nginx.yaml");
            assert_eq!(diagnostics[0]["message"], "group `webb` does not exist");
            // `muster commits` shows it as an operator sees it.
            let muster = |args: &[&str]| {
                let output = std::process::Command::new(env!("CARGO_BIN_EXE_muster"))
                    .args(args)
                    .args(["--database-url", &harness.db_url])
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                String::from_utf8_lossy(&output.stdout).into_owned()
            };
            let listed = muster(&["commits", "list"]);
            assert!(
                listed.contains(&format!("{}  rejected (1 problem)", &bad[..10])),
                "{listed}"
            );
            assert!(listed.contains("deployed (in force)"), "{listed}");
            let shown = muster(&["commits", "show", &bad[..12]]);
            assert!(shown.contains("policies/nginx.yaml:7:12: error: targets.groups[0]: group `webb` does not exist"), "{shown}");
            // The last good commit stays in force: same bundle, same generation.
            let deployed = harness.store.deployed_commit().await.unwrap().unwrap();
            assert_eq!(deployed.id, first.commit);
            let response = web.bundle_request(0, 0).await;
            assert_eq!(response.status(), 200);
            let again = verify(&harness, &web.host_id, &response.json().await.unwrap(), 0);
            assert_eq!(again.generation, first.generation);

            // The fix is deployed, and the host gets a newer generation.
            harness
                .repo
                .edit("policies/nginx.yaml", "groups: [webb]", "groups: [web]");
            harness.repo.edit(
                "files/motd",
                "managed by muster",
                "managed by muster (fixed)",
            );
            let fix = harness.repo.commit_all("Fix the group, reword the motd");
            assert_eq!(
                harness.commit_state(&fix).await.state,
                CommitState::Deployed
            );
            let fixed = verify(
                &harness,
                &web.host_id,
                &web.bundle_after(first.generation).await,
                first.generation,
            );
            assert_eq!(fixed.commit, fix);
            assert_eq!(fixed.generation, first.generation + 1);
            harness.stop().await;
        }
    }
);

backends!(
    a_policy_change_bumps_only_the_hosts_it_affects,
    |db: TestDb| {
        async move {
            let harness = Harness::start(db).await;
            let web_token = harness.token(1, true, &[("role", "web")], 3600).await;
            let db_token = harness.token(1, true, &[("role", "db")], 3600).await;
            let web = harness.enroll(&web_token, "web-01").await;
            let db_host = harness.enroll(&db_token, "db-01").await;
            let web_first = verify(&harness, &web.host_id, &web.bundle_after(0).await, 0);
            let db_first = verify(
                &harness,
                &db_host.host_id,
                &db_host.bundle_after(0).await,
                0,
            );

            harness.repo.edit(
                "policies/nginx.yaml",
                "listen_port: 80",
                "listen_port: 8080",
            );
            let change = harness.repo.commit_all("Move the shop to port 8080");
            let record = harness.commit_state(&change).await;
            assert_eq!(record.state, CommitState::Deployed);
            assert_eq!(record.n_changed, 1, "only the web host's bundle changes");
            let web_second = verify(
                &harness,
                &web.host_id,
                &web.bundle_after(web_first.generation).await,
                web_first.generation,
            );
            assert_eq!(web_second.generation, web_first.generation + 1);
            let db_now = harness
                .store
                .bundle(&db_host.host_id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                db_now.generation, db_first.generation,
                "the db host keeps its bundle"
            );
            harness.stop().await;
        }
    }
);

backends!(
    long_polls_answer_when_a_bundle_is_published,
    |db: TestDb| {
        async move {
            let harness = Harness::start(db).await;
            let token = harness.token(1, true, &[("role", "web")], 3600).await;
            let web = harness.enroll(&token, "web-01").await;
            let first = verify(&harness, &web.host_id, &web.bundle_after(0).await, 0);
            // Nothing newer: a short wait ends with 304.
            assert_eq!(web.bundle_request(first.generation, 1).await.status(), 304);

            let request = async {
                let started = tokio::time::Instant::now();
                let response = web.bundle_request(first.generation, 30).await;
                (response.status().as_u16(), started.elapsed())
            };
            let publish = async {
                // Let the request reach the controller and start waiting.
                tokio::time::sleep(Duration::from_millis(300)).await;
                harness.repo.edit(
                    "files/motd",
                    "managed by muster",
                    "managed by muster, now with news",
                );
                harness.repo.commit_all("News in the motd");
            };
            let ((status, elapsed), ()) = tokio::join!(request, publish);
            assert_eq!(status, 200, "the waiting request got the new bundle");
            // It was answered by the publication, not by its 30 s timeout.
            assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
            harness.stop().await;
        }
    }
);

backends!(pending_hosts_get_nothing_until_approved, |db: TestDb| {
    async move {
        let harness = Harness::start(db).await;
        let token = harness.token(1, false, &[("role", "db")], 3600).await;
        let host = harness.enroll(&token, "db-01").await;
        let response = host.bundle_request(0, 0).await;
        assert_eq!(response.status(), 403);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("pending approval"),
            "{body}"
        );
        // Approval, as `muster hosts approve` does it, from outside the server.
        harness
            .store
            .set_host_state(&host.host_id, muster_schemas::protocol::HostState::Approved)
            .await
            .unwrap();
        // The controller notices within a sweep; until then the host is
        // still refused, never served something it may not have.
        let signed = eventually("the approved host to get its bundle", || async {
            let response = host.bundle_request(0, 1).await;
            match response.status().as_u16() {
                200 => Some(response.json().await.unwrap()),
                403 | 304 => None,
                other => panic!("unexpected {other}"),
            }
        })
        .await;
        let bundle = verify(&harness, &host.host_id, &signed, 0);
        assert_eq!(bundle.host_id, host.host_id);
        harness.stop().await;
    }
});

backends!(the_agent_protocol_refuses_attacks, |db: TestDb| {
    async move {
        let harness = Harness::start(db).await;
        let token = harness.token(2, true, &[("role", "web")], 3600).await;
        let a = harness.enroll(&token, "web-01").await;
        let b = harness.enroll(&token, "web-02").await;
        let signed = a.bundle_after(0).await;
        verify(&harness, &a.host_id, &signed, 0);

        // Used-up token: the third enrollment is refused.
        assert_eq!(harness.enroll_raw(&token, "web-03").await.status(), 401);
        // Expired token.
        let expired = harness.token(1, true, &[], -1).await;
        assert_eq!(harness.enroll_raw(&expired, "web-04").await.status(), 401);
        // Unknown token.
        assert_eq!(harness.enroll_raw("mt_guess", "web-05").await.status(), 401);

        // Host A asks for host B's bundle with its own, valid credentials.
        let path = format!("/v1/hosts/{}/bundle?generation=0&wait=0", b.host_id);
        assert_eq!(
            a.send("GET", &path, Vec::new(), &a.signing())
                .await
                .status(),
            403
        );
        // Host A claims to be host B without B's key.
        let mut impostor = a.signing();
        impostor.host_id = b.host_id.clone();
        assert_eq!(
            a.send("GET", &path, Vec::new(), &impostor).await.status(),
            401
        );
        // A wrong key.
        let own = format!("/v1/hosts/{}/bundle?generation=0&wait=0", a.host_id);
        let mut wrong_key = a.signing();
        wrong_key.key = muster_schemas::protocol::auth::derive_key("not the secret").to_vec();
        assert_eq!(
            a.send("GET", &own, Vec::new(), &wrong_key).await.status(),
            401
        );
        // A stale timestamp.
        let mut stale = a.signing();
        stale.timestamp -= 301;
        assert_eq!(a.send("GET", &own, Vec::new(), &stale).await.status(), 401);
        // A reused nonce: the first request passes, its replay does not.
        let once = a.signing();
        assert_eq!(a.send("GET", &own, Vec::new(), &once).await.status(), 200);
        assert_eq!(a.send("GET", &own, Vec::new(), &once).await.status(), 401);
        // A signature over another path does not authorize this one.
        let report_path = format!("/v1/hosts/{}/reports", a.host_id);
        let body = serde_json::to_vec(&json!({"generation": 1, "commit": "x", "status": "in_sync", "started_at": 0, "finished_at": 0})).unwrap();
        let signing = a.signing();
        let signature = muster_schemas::protocol::auth::sign(
            &signing.key,
            "POST",
            &own,
            signing.timestamp,
            &signing.nonce,
            &body,
        );
        let response = harness
            .http
            .post(format!("{}{report_path}", harness.url))
            .header("x-muster-host", &a.host_id)
            .header("x-muster-timestamp", signing.timestamp.to_string())
            .header("x-muster-nonce", &signing.nonce)
            .header("x-muster-signature", signature)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);

        // Tampered bundle bytes and a wrong pinned key fail verification.
        let mut tampered = signed.clone();
        tampered.bundle = tampered.bundle.replacen("motd", "motD", 1);
        let now = muster_controller::server::now();
        assert!(bundle::verify(&harness.public_key, &tampered, &a.host_id, 0, now).is_err());
        let other_key = minisign::KeyPair::generate_unencrypted_keypair()
            .unwrap()
            .pk
            .to_base64();
        assert!(bundle::verify(&other_key, &signed, &a.host_id, 0, now).is_err());
        // A bundle for host A is refused by host B.
        assert!(bundle::verify(&harness.public_key, &signed, &b.host_id, 0, now).is_err());

        // Oversized bodies are refused before they are read whole. The
        // controller may close the connection while the client is still
        // sending; either way nothing is stored and it keeps serving.
        let too_large = |result: reqwest::Result<reqwest::Response>| match result {
            Ok(response) => response.status() == 413,
            Err(err) => err.is_request() || err.is_body(),
        };
        let report_signing = a.signing();
        let huge = vec![b' '; (4 << 20) + 1];
        let signature = muster_schemas::protocol::auth::sign(
            &report_signing.key,
            "POST",
            &report_path,
            report_signing.timestamp,
            &report_signing.nonce,
            &huge,
        );
        let huge_report = harness
            .http
            .post(format!("{}{report_path}", harness.url))
            .header("x-muster-host", &a.host_id)
            .header("x-muster-timestamp", report_signing.timestamp.to_string())
            .header("x-muster-nonce", &report_signing.nonce)
            .header("x-muster-signature", signature)
            .body(huge)
            .send()
            .await;
        assert!(too_large(huge_report), "an oversized report is refused");
        let huge_enroll = harness
            .http
            .post(format!("{}/v1/enroll", harness.url))
            .body(vec![b' '; (64 << 10) + 1])
            .send()
            .await;
        assert!(too_large(huge_enroll), "an oversized enrollment is refused");
        let health = harness
            .http
            .get(format!("{}/healthz", harness.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);

        // A valid report is accepted and stored.
        assert_eq!(a.report(&json!({"generation": 1, "commit": "x", "status": "in_sync", "started_at": 0, "finished_at": 1})).await.status(), 202);
        let host = harness.store.host(&a.host_id).await.unwrap().unwrap();
        assert_eq!(host.run_status.as_deref(), Some("in_sync"));
        harness.stop().await;
    }
});

backends!(webhooks_need_a_valid_signature, |db: TestDb| {
    async move {
        let harness = Harness::start(db).await;
        let body = br#"{"ref":"refs/heads/main"}"#.to_vec();
        let hook = |signature: String, body: Vec<u8>| {
            harness
                .http
                .post(format!("{}/hooks/github", harness.url))
                .header("x-hub-signature-256", signature)
                .header("x-github-event", "push")
                .body(body)
                .send()
        };
        use hmac::Mac;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
        mac.update(&body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            hook(good.clone(), body.clone()).await.unwrap().status(),
            202
        );
        assert_eq!(
            hook(format!("sha256={}", "0".repeat(64)), body.clone())
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            hook(good, b"{\"ref\":\"refs/heads/evil\"}".to_vec())
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            hook("sha256=zz".into(), body.clone())
                .await
                .unwrap()
                .status(),
            401
        );
        // Too large: refused with 413, or the connection closed mid-send.
        let big = vec![b' '; (1 << 20) + 1];
        match hook("sha256=00".into(), big).await {
            Ok(response) => assert_eq!(response.status(), 413),
            Err(err) => assert!(err.is_request() || err.is_body(), "{err}"),
        }
        let gitlab = |token: &'static str| {
            harness
                .http
                .post(format!("{}/hooks/gitlab", harness.url))
                .header("x-gitlab-token", token)
                .body("{}")
                .send()
        };
        assert_eq!(gitlab(WEBHOOK_SECRET).await.unwrap().status(), 202);
        assert_eq!(gitlab("wrong").await.unwrap().status(), 401);
        harness.stop().await;
    }
});

#[tokio::test]
async fn the_public_key_and_health_are_served() {
    let harness = Harness::start(TestDb::sqlite().await).await;
    let key = harness
        .http
        .get(format!("{}/v1/pubkey", harness.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(key.trim(), harness.public_key);
    let health = harness
        .http
        .get(format!("{}/healthz", harness.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = harness
        .http
        .get(format!("{}/readyz", harness.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    eventually("the first commit to deploy", || async {
        harness.store.deployed_commit().await.unwrap()
    })
    .await;
    harness.stop().await;
}

#[tokio::test]
async fn tls_is_served_with_the_given_certificate() {
    let db = TestDb::sqlite().await;
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert_path = db.dir.join("cert.pem");
    let key_path = db.dir.join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let harness = Harness::start_with(db, |config| config.tls = Some((cert_path, key_path))).await;
    assert!(harness.url.starts_with("https://"), "{}", harness.url);
    let root = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([root])
        .build()
        .unwrap();
    let health = client
        .get(format!("{}/healthz", harness.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Plain HTTP on the TLS port gets no answer.
    let plain = harness.url.replacen("https://", "http://", 1);
    assert!(
        harness
            .http
            .get(format!("{plain}/healthz"))
            .send()
            .await
            .is_err()
    );
    harness.stop().await;
}

backends!(
    commit_signatures_are_enforced_by_the_commit_in_force,
    |db: TestDb| {
        async move {
            use crate::support::git::{public_key_line, signing_key};
            let trusted = signing_key(1);
            let intruder = signing_key(2);
            let harness = Harness::start(db).await;
            let initial = eventually("the example to deploy", || async {
                harness.store.deployed_commit().await.unwrap()
            })
            .await;

            // Turning the policy on is itself signed by the key it trusts.
            let policy = format!(
                "commit_signatures:\n  required: true\n  allowed_signers:\n    - name: alice\n      key: {}\n",
                public_key_line(&trusted)
            );
            harness.repo.edit(
                "fleet.yaml",
                "commit_signatures:\n  required: false\n",
                &policy,
            );
            let signed = harness
                .repo
                .commit_all_signed("Require signed commits", &trusted);
            let record = harness.commit_state(&signed).await;
            assert_eq!(
                record.state,
                CommitState::Deployed,
                "{:?}",
                record.diagnostics
            );
            assert_ne!(record.id, initial.id);

            let rejected_with = |record: muster_controller::store::CommitRecord| {
                assert_eq!(record.state, CommitState::Rejected);
                record.diagnostics[0]["message"]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            harness
                .repo
                .edit("files/motd", "managed by muster", "managed by nobody");
            let unsigned = harness.repo.commit_all("Unsigned change");
            assert!(rejected_with(harness.commit_state(&unsigned).await).contains("not signed"));

            harness
                .repo
                .edit("files/motd", "managed by nobody", "managed by mallory");
            let foreign = harness
                .repo
                .commit_all_signed("Signed by an unknown key", &intruder);
            assert!(
                rejected_with(harness.commit_state(&foreign).await)
                    .contains("not in `commit_signatures.allowed_signers`")
            );

            // A commit cannot make itself trusted by adding its own key.
            let self_trust = format!(
                "{policy}    - name: mallory\n      key: {}\n",
                public_key_line(&intruder)
            );
            harness.repo.edit("fleet.yaml", &policy, &self_trust);
            let sneaky = harness.repo.commit_all_signed("Trust me", &intruder);
            assert!(
                rejected_with(harness.commit_state(&sneaky).await)
                    .contains("not in `commit_signatures.allowed_signers`")
            );
            assert_eq!(
                harness.store.deployed_commit().await.unwrap().unwrap().id,
                signed
            );

            // The trusted key still deploys.
            harness.repo.edit(
                "files/motd",
                "managed by mallory",
                "managed by muster, signed",
            );
            let good = harness.repo.commit_all_signed("A signed change", &trusted);
            assert_eq!(
                harness.commit_state(&good).await.state,
                CommitState::Deployed
            );
            harness.stop().await;
        }
    }
);

backends!(
    removed_and_rejected_hosts_lose_access_within_a_sweep,
    |db: TestDb| {
        async move {
            let harness = Harness::start(db).await;
            let token = harness.token(2, true, &[("role", "web")], 3600).await;
            let kept = harness.enroll(&token, "web-01").await;
            let removed = harness.enroll(&token, "web-02").await;
            kept.bundle_after(0).await;
            removed.bundle_after(0).await;
            // As `muster hosts reject` and `muster hosts remove` do it, from
            // another process: the controller's caches catch up by themselves.
            harness
                .store
                .set_host_state(&kept.host_id, muster_schemas::protocol::HostState::Rejected)
                .await
                .unwrap();
            assert!(harness.store.remove_host(&removed.host_id).await.unwrap());
            eventually("the rejected host to be refused", || async {
                (kept.bundle_request(0, 0).await.status() == 403).then_some(())
            })
            .await;
            eventually("the removed host to be unknown", || async {
                (removed.bundle_request(0, 0).await.status() == 401).then_some(())
            })
            .await;
            harness.stop().await;
        }
    }
);
