//! A host without its controller: a real agent keeps enforcing its last
//! good bundle while the controller is down and catches up when it is back;
//! and once that bundle has expired, it only checks it and reports itself
//! stale.

use std::time::Duration;

use muster_controller::store::CommitState;
use muster_schemas::bundle::Bundle;
use muster_schemas::protocol::{ResourceStatus, RunStatus};

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Harness, bundle_of, eventually, eventually_for};
use crate::support::agent::{RootSnapshot, TestAgent, stderr};
use crate::support::proxy::TamperingProxy;

/// How long a reconnecting agent may take: its backoff after errors is
/// capped at 60 s, plus a converge run.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(180);

backends!(
    agents_keep_enforcing_while_the_controller_is_down_and_reconnect,
    |db: TestDb| {
        async move {
            let mut harness = Harness::start(db).await;
            // The shortest timing the fleet schema allows, so that the agent
            // re-converges every ten seconds.
            harness
                .repo
                .edit("fleet.yaml", "interval: 60s", "interval: 10s");
            harness.repo.edit("fleet.yaml", "splay: 10s", "splay: 0s");
            let timing = harness.repo.commit_all("Check hosts every ten seconds");
            assert_eq!(
                harness.commit_state(&timing).await.state,
                CommitState::Deployed
            );
            let token = harness.token(1, true, &[("role", "web")], 3600).await;
            let agent = TestAgent::new("web");
            agent.enroll(&harness, &token, "web-01").await;
            let host_id = harness.store.find_host("web-01").await.unwrap().unwrap().id;
            let first = bundle_of(&harness.stored_bundle(&host_id, 0).await);
            assert_eq!(
                (
                    first.desired.settings.interval_secs,
                    first.desired.settings.splay_secs
                ),
                (10, 0)
            );

            let mut running = agent.spawn();
            let motd = eventually("the agent to converge its first bundle", || async {
                (agent.applied_generation() == first.generation)
                    .then(|| agent.file("/etc/motd"))
                    .flatten()
            })
            .await;
            assert!(motd.contains("managed by muster"), "{motd}");

            // The controller goes away; the host drifts; the agent repairs it
            // from its last good bundle.
            harness.stop_controller().await;
            let stopped_at = muster_controller::server::now();
            agent.tamper(
                "/etc/motd",
                "edited by hand while the controller is down\n",
                0o666,
            );
            eventually("the agent to repair the file on its own", || async {
                (agent.file("/etc/motd").as_deref() == Some(motd.as_str())
                    && agent.mode("/etc/motd") == 0o644)
                    .then_some(())
            })
            .await;
            eventually("the agent to find the controller unreachable", || async {
                running
                    .log()
                    .contains("cannot get a bundle; the bundle in force stays enforced")
                    .then_some(())
            })
            .await;
            assert!(running.is_running(), "{}", running.log());
            assert_eq!(agent.applied_generation(), first.generation);

            // The controller comes back on its address; the agent reconnects
            // after its backoff and converges the next commit.
            harness.restart_controller().await;
            harness.repo.edit(
                "files/motd",
                "managed by muster",
                "managed by muster, after the outage",
            );
            let change = harness.repo.commit_all("Reword the motd after the outage");
            assert_eq!(
                harness.commit_state(&change).await.state,
                CommitState::Deployed
            );
            let second = bundle_of(&harness.stored_bundle(&host_id, first.generation).await);
            eventually_for(
                "the agent to reconnect and converge the new commit",
                RECONNECT_PATIENCE,
                || async {
                    (agent.applied_generation() == second.generation
                        && agent
                            .file("/etc/motd")
                            .is_some_and(|motd| motd.contains("after the outage")))
                    .then_some(())
                },
            )
            .await;
            assert!(running.is_running(), "{}", running.log());

            // The report of the repair made while the controller was down was
            // queued and delivered later.
            let reports = eventually("the queued reports to arrive", || async {
                let reports = harness.reports(&host_id).await;
                reports
                    .iter()
                    .any(|report| report.generation == second.generation)
                    .then_some(reports)
            })
            .await;
            let repaired_offline = reports.iter().any(|report| {
                report.generation == first.generation
                    && report.started_at >= stopped_at
                    && report.resources.iter().any(|resource| {
                        resource.id == "file:/etc/motd"
                            && resource.status == ResourceStatus::Changed
                    })
            });
            assert!(
                repaired_offline,
                "no report of the offline repair: {reports:#?}"
            );
            drop(running);
            harness.stop().await;
        }
    }
);

backends!(
    an_expired_bundle_in_force_is_only_checked_and_the_host_reports_stale,
    |db: TestDb| {
        async move {
            let harness = Harness::start(db).await;
            let proxy = TamperingProxy::start(&harness.url).await;
            let token = harness.token(1, true, &[("role", "web")], 3600).await;
            let agent = TestAgent::new("web");
            agent
                .enroll_through(&proxy.url, &harness, &token, "web-01")
                .await;
            let host_id = harness.store.find_host("web-01").await.unwrap().unwrap().id;
            agent.converge_once().await;
            let genuine = bundle_of(&harness.stored_bundle(&host_id, 0).await);

            // A bundle the controller's key signed with a validity of seconds:
            // what a host holds once its controller has been gone for longer
            // than the fleet's bundle expiry. The agent must get it before it
            // expires; on a machine too slow for that, it is refused as
            // expired and signed again with a longer validity.
            let key = harness.signing_key();
            let reworded: Bundle =
                serde_json::from_str(&genuine.to_canonical_json_string().replacen(
                    "managed by muster",
                    "managed by muster, short-lived",
                    1,
                ))
                .unwrap();
            let mut validity = 2;
            let short_lived = loop {
                let now = muster_controller::server::now();
                let mut bundle = Bundle {
                    generation: genuine.generation + 1,
                    issued_at: now,
                    expires_at: now + validity,
                    ..reworded.clone()
                };
                bundle.content_hash = bundle.desired.content_hash();
                proxy.serve_bundle(&key.sign(&bundle));
                let output = agent.run_once().await;
                if output.status.success() {
                    break bundle;
                }
                let refusal = harness.reports(&host_id).await.remove(0);
                let message = refusal.resources[0].message.clone().unwrap_or_default();
                assert!(
                    message.starts_with("bundle refused: bundle expired at"),
                    "{message}; {}",
                    stderr(&output)
                );
                validity *= 2;
            };
            proxy.pass_through();
            assert_eq!(agent.applied_generation(), short_lived.generation);
            assert!(agent.file("/etc/motd").unwrap().contains("short-lived"));
            eventually("the bundle in force to expire", || async {
                (muster_controller::server::now() >= short_lived.expires_at).then_some(())
            })
            .await;

            // The controller has nothing newer to give: one run over the
            // expired bundle in force, which only looks.
            agent.tamper("/etc/motd", "edited by hand\n", 0o600);
            let before = RootSnapshot::take(&agent.root());
            let applied_before = agent.applied_state();
            let output = agent.run_once().await;
            assert!(output.status.success(), "{}", stderr(&output));
            RootSnapshot::take(&agent.root())
                .assert_same_as(&before, "a run over an expired bundle");
            assert!(
                agent.applied_state() == applied_before,
                "a run over an expired bundle changed the state dir's generation or bundle"
            );
            let report = harness.reports(&host_id).await.remove(0);
            assert_eq!(
                (report.generation, report.status),
                (short_lived.generation, RunStatus::Stale)
            );
            let motd = report
                .resources
                .iter()
                .find(|resource| resource.id == "file:/etc/motd")
                .expect("the motd is reported");
            assert_eq!(motd.status, ResourceStatus::Drifted, "{motd:?}");
            let host = harness.store.find_host(&host_id).await.unwrap().unwrap();
            assert_eq!(host.run_status.as_deref(), Some("stale"));
            harness.stop().await;
        }
    }
);
