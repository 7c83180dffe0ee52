//! Bundles that fail one of the agent's checks, delivered over the wire to
//! a real agent by a proxy in front of a real controller: each is refused,
//! reported to the controller with the check that failed, and leaves the
//! host's files and its applied generation exactly as they were.

use muster_schemas::bundle::{Bundle, SignedBundle};
use muster_schemas::protocol::{ResourceStatus, RunStatus};

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Harness, bundle_of};
use crate::support::agent::{RootSnapshot, TestAgent, stderr};
use crate::support::proxy::TamperingProxy;

backends!(
    bundles_failing_a_check_are_refused_over_the_wire_and_the_host_is_untouched,
    |db: TestDb| {
        async move {
            let harness = Harness::start(db).await;
            let proxy = TamperingProxy::start(&harness.url).await;
            let web_token = harness.token(1, true, &[("role", "web")], 3600).await;
            let agent = TestAgent::new("web");
            agent
                .enroll_through(&proxy.url, &harness, &web_token, "web-01")
                .await;
            let host_id = harness.store.find_host("web-01").await.unwrap().unwrap().id;
            agent.converge_once().await;
            let first = harness.stored_bundle(&host_id, 0).await;
            let first_generation = bundle_of(&first).generation;
            assert_eq!(agent.applied_generation(), first_generation);

            // The host moves on to a newer generation: the first bundle, genuine
            // as it is, becomes a replay.
            harness.repo.edit(
                "policies/nginx.yaml",
                "listen_port: 80",
                "listen_port: 8080",
            );
            let second = harness.repo.commit_all("Move the shop to 8080");
            harness.commit_state(&second).await;
            let applied =
                bundle_of(&harness.stored_bundle(&host_id, first_generation).await).generation;
            agent.converge_once().await;
            assert_eq!(agent.applied_generation(), applied);

            // A third commit that the agent has not fetched: tampered with, this
            // bundle fails its signature and nothing else.
            harness.repo.edit(
                "files/motd",
                "managed by muster",
                "managed by muster, third edition",
            );
            let third_commit = harness.repo.commit_all("Reword the motd");
            harness.commit_state(&third_commit).await;
            let third = harness.stored_bundle(&host_id, applied).await;
            let tampered = SignedBundle {
                bundle: third.bundle.replacen("third edition", "third editiom", 1),
                ..third.clone()
            };
            assert_ne!(tampered.bundle, third.bundle);

            // Another host's genuine bundle.
            let db_token = harness.token(1, true, &[("role", "db")], 3600).await;
            let other = harness.enroll(&db_token, "db-01").await;
            let foreign = other.bundle_after(0).await;

            // Signed with the controller's own key, newer than anything, but
            // out of date.
            let now = muster_controller::server::now();
            let expired_bundle = Bundle {
                generation: bundle_of(&third).generation + 10,
                issued_at: now - 7200,
                expires_at: now - 3600,
                ..bundle_of(&third)
            };
            let expired = harness.signing_key().sign(&expired_bundle);

            // Drift on the host: converging anything at all, the refused bundle
            // or the one in force, would change the root.
            agent.tamper("/etc/motd", "edited by hand\n", 0o600);
            let before = RootSnapshot::take(&agent.root());
            assert!(before.len() > 5, "the root holds the converged files");
            let applied_before = agent.applied_state();

            let cases = [
                (
                    "a tampered bundle",
                    tampered,
                    "bundle signature does not verify".to_string(),
                ),
                (
                    "a replayed older generation",
                    first,
                    format!(
                        "bundle generation {first_generation} is not newer than the last applied generation {applied}"
                    ),
                ),
                (
                    "another host's bundle",
                    foreign,
                    format!(
                        "bundle is for host `{}`, not for this host `{host_id}`",
                        other.host_id
                    ),
                ),
                (
                    "an expired bundle",
                    expired,
                    format!("bundle expired at {}", expired_bundle.expires_at),
                ),
            ];
            for (what, signed, refusal) in cases {
                let n_reports = harness.reports(&host_id).await.len();
                proxy.serve_bundle(&signed);
                let output = agent.run_once().await;
                assert_eq!(
                    output.status.code(),
                    Some(2),
                    "{what} is refused: {}",
                    stderr(&output)
                );
                RootSnapshot::take(&agent.root()).assert_same_as(&before, what);
                assert!(
                    agent.applied_state() == applied_before,
                    "{what} changed the applied generation or bundle in the state dir"
                );
                // `--once` delivers its report before it exits.
                let reports = harness.reports(&host_id).await;
                assert_eq!(reports.len(), n_reports + 1, "{what}: one report");
                let report = &reports[0];
                assert_eq!(
                    (report.generation, report.status),
                    (applied, RunStatus::Failing),
                    "{what}"
                );
                assert_eq!(report.resources.len(), 1, "{what}: {report:?}");
                let entry = &report.resources[0];
                assert_eq!(
                    (entry.id.as_str(), entry.status),
                    ("bundle", ResourceStatus::Failed),
                    "{what}"
                );
                let message = entry.message.as_deref().unwrap_or_default();
                assert!(
                    message.starts_with(&format!("bundle refused: {refusal}")),
                    "{what}: {message}"
                );
            }

            // The genuine bundle, let through: applied, and the drift repaired.
            proxy.pass_through();
            agent.converge_once().await;
            assert_eq!(agent.applied_generation(), bundle_of(&third).generation);
            assert!(
                agent
                    .file("/etc/motd")
                    .unwrap()
                    .contains("managed by muster, third edition")
            );
            assert_eq!(agent.mode("/etc/motd"), 0o644);
            harness.stop().await;
        }
    }
);
