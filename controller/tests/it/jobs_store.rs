//! Actions and jobs in the store, on both backends: the rollout rule
//! (`max_parallel`, the failure threshold, completion), delivery with
//! leases and re-delivery, idempotent results, another host's job,
//! cancellation, expiry, schedule keys, and claiming from many tasks at
//! once.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_controller::jobs::{ActionRequest, ScheduleSlot, create_action};
use muster_controller::server::hub::Hub;
use muster_controller::signing::SigningKey;
use muster_controller::store::{
    ActionState, CancelOutcome, DELIVERY_LEASE_SECS, JobFilter, JobSource, JobState, NewAction,
    NewJob, ResultOutcome, StartOutcome, Store, StoreError, TokenRecord,
};
use muster_schemas::job::{JobKind, ScriptJob, verify_job};
use muster_schemas::protocol::{JobResult, JobResultState};
use serde_json::json;

use crate::backends;
use crate::db::TestDb;
use crate::support::pending_host;

const NOW: i64 = 1_790_000_000;

/// Enrolls hosts `h1`…`hN` (ids and names alike).
async fn hosts(store: &Store, n: usize) -> Vec<String> {
    let token = TokenRecord {
        id: "t1".into(),
        max_uses: 1_000,
        uses: 0,
        labels: BTreeMap::new(),
        auto_approve: true,
        created_at: NOW,
        expires_at: NOW + 3_600,
        revoked_at: None,
    };
    store.create_token(&token, "token-hash").await.unwrap();
    let mut ids = Vec::new();
    for i in 1..=n {
        let id = format!("h{i}");
        store
            .enroll("token-hash", &pending_host(&id, &id), NOW)
            .await
            .unwrap()
            .unwrap();
        ids.push(id);
    }
    ids
}

/// A store with hosts `h1`…`hN` and action `a1` with a job on each.
async fn store_with_action(
    db: &TestDb,
    n_hosts: usize,
    max_parallel: Option<u32>,
    failure_threshold: Option<u32>,
) -> (Store, Vec<String>) {
    let store = db.open().await;
    let hosts = hosts(&store, n_hosts).await;
    store
        .create_action(
            &action("a1", max_parallel, failure_threshold),
            &jobs("a1", &hosts),
        )
        .await
        .unwrap();
    (store, hosts)
}

fn action(id: &str, max_parallel: Option<u32>, failure_threshold: Option<u32>) -> NewAction {
    NewAction {
        id: id.into(),
        kind: "script".into(),
        requested_by: "alice".into(),
        request_id: Some("req-1".into()),
        summary: "run cleanup on group web".into(),
        targets: json!({"groups": ["web"]}),
        parameters: json!({"days": "7", "token": "***"}),
        source: JobSource::AdHoc,
        max_parallel,
        failure_threshold,
        created_at: NOW,
        audit_commit: None,
    }
}

/// Jobs `<action>-<host>` for the hosts, in order.
fn jobs(action_id: &str, hosts: &[String]) -> Vec<NewJob> {
    hosts
        .iter()
        .map(|host| NewJob {
            id: format!("{action_id}-{host}"),
            host_id: host.clone(),
            kind: "script".into(),
            payload: format!("{{\"job_id\":\"{action_id}-{host}\"}}"),
            signature: "signature".into(),
            run_timeout: 600,
            expires_at: NOW + 3_600,
            schedule_key: None,
            not_before: None,
        })
        .collect()
}

fn result(job_id: &str, state: JobResultState, exit_code: i32) -> JobResult {
    JobResult {
        job_id: job_id.into(),
        state,
        exit_code: Some(exit_code),
        stdout: format!("output of {job_id}\n"),
        stderr: String::new(),
        message: None,
        started_at: NOW + 1,
        finished_at: NOW + 2,
    }
}

async fn state_of(store: &Store, job_id: &str) -> JobState {
    store.job(job_id).await.unwrap().unwrap().state
}

/// Job ids of a host's delivery, read from the payloads.
fn ids(delivered: &[muster_schemas::job::SignedJob]) -> Vec<String> {
    delivered
        .iter()
        .map(|job| {
            let value: serde_json::Value = serde_json::from_str(&job.job).unwrap();
            value["job_id"].as_str().unwrap().to_string()
        })
        .collect()
}

backends!(
    rollouts_honour_max_parallel_and_stop_at_the_failure_threshold,
    |db: TestDb| {
        async move {
            let (store, hosts) = store_with_action(&db, 5, Some(2), Some(2)).await;
            for host in &hosts {
                assert_eq!(
                    state_of(&store, &format!("a1-{host}")).await,
                    JobState::Pending
                );
            }
            // Nothing reaches an agent before the rollout releases it.
            assert!(store.jobs_for_host("h1", NOW).await.unwrap().is_empty());

            let release = store.release("a1", NOW).await.unwrap();
            assert_eq!(release.queued_hosts, ["h1", "h2"], "two in flight at most");
            assert_eq!(release.state, Some(ActionState::Running));
            // Releasing again changes nothing: the slots are taken.
            assert!(
                store
                    .release("a1", NOW)
                    .await
                    .unwrap()
                    .queued_hosts
                    .is_empty()
            );

            assert_eq!(
                ids(&store.jobs_for_host("h1", NOW).await.unwrap()),
                ["a1-h1"]
            );
            assert_eq!(
                store
                    .record_result("h1", &result("a1-h1", JobResultState::Failed, 1))
                    .await
                    .unwrap(),
                ResultOutcome::Recorded {
                    action_id: "a1".into()
                }
            );
            // One failure, under the threshold: the freed slot goes to h3.
            let release = store.release("a1", NOW).await.unwrap();
            assert_eq!(release.queued_hosts, ["h3"]);

            store.jobs_for_host("h2", NOW).await.unwrap();
            store
                .record_result("h2", &result("a1-h2", JobResultState::TimedOut, 137))
                .await
                .unwrap();
            // The second failure reaches the threshold: the action stops, the
            // pending jobs are cancelled, the one in flight may finish.
            let release = store.release("a1", NOW + 5).await.unwrap();
            assert_eq!(release.state, Some(ActionState::Stopped));
            assert!(release.queued_hosts.is_empty());
            assert_eq!(release.n_cancelled, 2);
            assert_eq!(state_of(&store, "a1-h3").await, JobState::Queued);
            assert_eq!(state_of(&store, "a1-h4").await, JobState::Cancelled);
            assert_eq!(state_of(&store, "a1-h5").await, JobState::Cancelled);
            let stopped = store.action("a1").await.unwrap().unwrap();
            assert_eq!(
                (stopped.state, stopped.finished_at),
                (ActionState::Stopped, Some(NOW + 5))
            );
            assert_eq!(stopped.parameters, json!({"days": "7", "token": "***"}));
            store.jobs_for_host("h3", NOW).await.unwrap();
            store
                .record_result("h3", &result("a1-h3", JobResultState::Succeeded, 0))
                .await
                .unwrap();
            let release = store.release("a1", NOW + 6).await.unwrap();
            assert_eq!(
                release.state,
                Some(ActionState::Stopped),
                "stopped stays stopped"
            );
            let progress = store.action_progress("a1").await.unwrap();
            assert_eq!(
                progress,
                BTreeMap::from([
                    (JobState::Succeeded, 1),
                    (JobState::Failed, 1),
                    (JobState::TimedOut, 1),
                    (JobState::Cancelled, 2),
                ])
            );

            // Without limits, everything is released at once and the action
            // completes with its last job.
            store
                .create_action(&action("a2", None, None), &jobs("a2", &hosts[..3]))
                .await
                .unwrap();
            let release = store.release("a2", NOW).await.unwrap();
            assert_eq!(release.queued_hosts, ["h1", "h2", "h3"]);
            for host in &hosts[..3] {
                store.jobs_for_host(host, NOW).await.unwrap();
                let outcome = if host == "h2" {
                    JobResultState::Refused
                } else {
                    JobResultState::Succeeded
                };
                store
                    .record_result(host, &result(&format!("a2-{host}"), outcome, 0))
                    .await
                    .unwrap();
            }
            let release = store.release("a2", NOW + 9).await.unwrap();
            assert_eq!(release.state, Some(ActionState::Completed));
            let listed = store
                .jobs(&JobFilter {
                    action_id: Some("a2".into()),
                    ..JobFilter::default()
                })
                .await
                .unwrap();
            assert_eq!(
                listed.iter().map(|job| job.id.as_str()).collect::<Vec<_>>(),
                ["a2-h1", "a2-h2", "a2-h3"]
            );
            assert_eq!(listed[1].state, JobState::Refused);
            assert_eq!(listed[0].stdout.as_deref(), Some("output of a2-h1\n"));
            assert_eq!(listed[0].exit_code, Some(0));
            let actions = store.actions(10).await.unwrap();
            assert_eq!(actions.len(), 2);
            assert!(
                store
                    .release("no-such-action", NOW)
                    .await
                    .unwrap()
                    .state
                    .is_none()
            );
            store.close().await;
        }
    }
);

backends!(
    delivered_jobs_come_back_when_their_lease_runs_out,
    |db: TestDb| {
        async move {
            let (store, _) = store_with_action(&db, 2, None, None).await;
            store.release("a1", NOW).await.unwrap();
            assert_eq!(
                ids(&store.jobs_for_host("h1", NOW).await.unwrap()),
                ["a1-h1"]
            );
            let job = store.job("a1-h1").await.unwrap().unwrap();
            assert_eq!(
                (job.state, job.attempts, job.lease_until, job.delivered_at),
                (
                    JobState::Delivered,
                    1,
                    Some(NOW + DELIVERY_LEASE_SECS),
                    Some(NOW)
                )
            );
            // Within the lease, the job is not handed out again.
            assert!(store.jobs_for_host("h1", NOW + 1).await.unwrap().is_empty());
            assert_eq!(store.hosts_with_ready_jobs(NOW + 1).await.unwrap(), ["h2"]);
            // The agent never said it started: delivered again.
            let later = NOW + DELIVERY_LEASE_SECS;
            assert_eq!(
                ids(&store.jobs_for_host("h1", later).await.unwrap()),
                ["a1-h1"]
            );
            assert_eq!(store.job("a1-h1").await.unwrap().unwrap().attempts, 2);

            // Started: running, leased for the job's timeout.
            assert_eq!(
                store
                    .record_started("h1", "a1-h1", later, later)
                    .await
                    .unwrap(),
                StartOutcome::Started
            );
            let job = store.job("a1-h1").await.unwrap().unwrap();
            assert_eq!(job.state, JobState::Running);
            assert_eq!(job.lease_until, Some(later + 600 + DELIVERY_LEASE_SECS));
            assert_eq!(
                store
                    .record_started("h1", "a1-h1", later, later)
                    .await
                    .unwrap(),
                StartOutcome::Unchanged
            );
            assert!(
                store
                    .jobs_for_host("h1", later + 600)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // No result long after the timeout: delivered once more, still
            // running, so that the agent can say what became of it.
            let much_later = later + 600 + DELIVERY_LEASE_SECS;
            assert_eq!(
                ids(&store.jobs_for_host("h1", much_later).await.unwrap()),
                ["a1-h1"]
            );
            let job = store.job("a1-h1").await.unwrap().unwrap();
            assert_eq!((job.state, job.attempts), (JobState::Running, 3));
            store
                .record_result("h1", &result("a1-h1", JobResultState::Succeeded, 0))
                .await
                .unwrap();
            assert!(
                store
                    .jobs_for_host("h1", much_later * 2)
                    .await
                    .unwrap()
                    .is_empty()
            );
            store.close().await;
        }
    }
);

backends!(
    results_are_idempotent_and_only_the_jobs_host_may_report,
    |db: TestDb| {
        async move {
            let (store, _) = store_with_action(&db, 2, None, None).await;
            let done = result("a1-h1", JobResultState::Succeeded, 0);
            // Never delivered: no result can be true yet.
            assert!(matches!(
                store.record_result("h1", &done).await.unwrap(),
                ResultOutcome::Conflict(_)
            ));
            store.release("a1", NOW).await.unwrap();
            store.jobs_for_host("h1", NOW).await.unwrap();

            // h2 reports on h1's job: refused, and nothing changes.
            assert_eq!(
                store.record_result("h2", &done).await.unwrap(),
                ResultOutcome::OtherHost
            );
            assert_eq!(
                store.record_started("h2", "a1-h1", NOW, NOW).await.unwrap(),
                StartOutcome::OtherHost
            );
            assert_eq!(state_of(&store, "a1-h1").await, JobState::Delivered);

            assert_eq!(
                store.record_result("h1", &done).await.unwrap(),
                ResultOutcome::Recorded {
                    action_id: "a1".into()
                }
            );
            // The same result again (an agent retrying): a no-op.
            assert_eq!(
                store.record_result("h1", &done).await.unwrap(),
                ResultOutcome::Duplicate
            );
            // Even with other times: the outcome is what counts.
            let resent = JobResult {
                started_at: NOW + 100,
                finished_at: NOW + 200,
                ..done.clone()
            };
            assert_eq!(
                store.record_result("h1", &resent).await.unwrap(),
                ResultOutcome::Duplicate
            );
            let job = store.job("a1-h1").await.unwrap().unwrap();
            assert_eq!(
                (job.started_at, job.finished_at),
                (Some(NOW + 1), Some(NOW + 2))
            );
            // Another outcome for a job that has one: a conflict, not an overwrite.
            let other = result("a1-h1", JobResultState::Failed, 3);
            assert!(matches!(
                store.record_result("h1", &other).await.unwrap(),
                ResultOutcome::Conflict(_)
            ));
            assert_eq!(state_of(&store, "a1-h1").await, JobState::Succeeded);
            assert_eq!(
                store
                    .record_result("h1", &result("no-such-job", JobResultState::Failed, 1))
                    .await
                    .unwrap(),
                ResultOutcome::NotFound
            );
            assert_eq!(
                store
                    .record_started("h1", "no-such-job", NOW, NOW)
                    .await
                    .unwrap(),
                StartOutcome::NotFound
            );

            // Output beyond the bound is cut, with a marker.
            store.jobs_for_host("h2", NOW).await.unwrap();
            let loud = JobResult {
                stdout: "x".repeat(200_000),
                ..result("a1-h2", JobResultState::Succeeded, 0)
            };
            store.record_result("h2", &loud).await.unwrap();
            let stdout = store.job("a1-h2").await.unwrap().unwrap().stdout.unwrap();
            assert!(stdout.len() < 66_000, "{}", stdout.len());
            assert!(stdout.ends_with("… truncated (200000 bytes in all)"));
            store.close().await;
        }
    }
);

backends!(
    cancelled_and_expired_jobs_move_the_rollout_on,
    |db: TestDb| {
        async move {
            let (store, hosts) = store_with_action(&db, 3, Some(1), None).await;
            assert_eq!(store.release("a1", NOW).await.unwrap().queued_hosts, ["h1"]);
            store.jobs_for_host("h1", NOW).await.unwrap();
            // Delivered: too late to call back.
            assert_eq!(
                store.cancel_job("a1-h1", NOW).await.unwrap(),
                CancelOutcome::TooLate(JobState::Delivered)
            );
            assert_eq!(
                store.cancel_job("a1-h2", NOW).await.unwrap(),
                CancelOutcome::Cancelled {
                    action_id: "a1".into()
                }
            );
            assert_eq!(
                store.cancel_job("nope", NOW).await.unwrap(),
                CancelOutcome::NotFound
            );
            // A cancelled job was never delivered: no host can report on it.
            assert!(matches!(
                store
                    .record_result("h2", &result("a1-h2", JobResultState::Succeeded, 0))
                    .await
                    .unwrap(),
                ResultOutcome::Conflict(_)
            ));
            store
                .record_result("h1", &result("a1-h1", JobResultState::Succeeded, 0))
                .await
                .unwrap();
            assert_eq!(store.release("a1", NOW).await.unwrap().queued_hosts, ["h3"]);
            // h3 never polls: after the expiry its job expires, which is
            // not a failure, and the action completes.
            assert!(store.expire_jobs(NOW + 3_599).await.unwrap().is_empty());
            assert_eq!(store.expire_jobs(NOW + 3_600).await.unwrap(), ["a1"]);
            assert_eq!(state_of(&store, "a1-h3").await, JobState::Expired);
            assert!(
                store
                    .jobs_for_host("h3", NOW + 3_600)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let release = store.release("a1", NOW + 3_600).await.unwrap();
            assert_eq!(release.state, Some(ActionState::Completed));

            // Cancelling a whole action.
            store
                .create_action(&action("a2", Some(1), None), &jobs("a2", &hosts))
                .await
                .unwrap();
            store.release("a2", NOW).await.unwrap();
            store.jobs_for_host("h1", NOW).await.unwrap();
            assert_eq!(store.cancel_action("a2", NOW).await.unwrap(), Some(2));
            assert_eq!(
                store.action("a2").await.unwrap().unwrap().state,
                ActionState::Cancelled
            );
            assert_eq!(state_of(&store, "a2-h1").await, JobState::Delivered);
            assert!(
                store
                    .release("a2", NOW)
                    .await
                    .unwrap()
                    .queued_hosts
                    .is_empty()
            );
            assert_eq!(store.cancel_action("nope", NOW).await.unwrap(), None);
            store.close().await;
        }
    }
);

backends!(a_schedule_slot_is_created_once, |db: TestDb| {
    async move {
        let store = db.open().await;
        let hosts = hosts(&store, 2).await;
        let keyed = |action_id: &str| {
            let mut jobs = jobs(action_id, &hosts);
            for job in &mut jobs {
                job.schedule_key = Some(format!("cleanup|{NOW}|{}", job.host_id));
            }
            jobs
        };
        store
            .create_action(&action("a1", None, None), &keyed("a1"))
            .await
            .unwrap();
        let again = store
            .create_action(&action("a2", None, None), &keyed("a2"))
            .await
            .unwrap_err();
        assert!(matches!(again, StoreError::Conflict(_)), "{again}");
        assert!(
            store.action("a2").await.unwrap().is_none(),
            "all or nothing"
        );
        assert!(store.job("a2-h1").await.unwrap().is_none());
        store.close().await;
    }
});

backends!(
    replicas_claiming_at_once_hand_each_job_out_once,
    |db: TestDb| {
        async move {
            let store = db.open().await;
            let hosts = hosts(&store, 1).await;
            for n in 0..20 {
                let id = format!("a{n}");
                store
                    .create_action(&action(&id, None, None), &jobs(&id, &hosts))
                    .await
                    .unwrap();
                store.release(&id, NOW).await.unwrap();
            }
            let claims: Vec<_> = (0..8)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move { store.jobs_for_host("h1", NOW).await.unwrap() })
                })
                .collect();
            let mut delivered = Vec::new();
            for claim in claims {
                delivered.extend(ids(&claim.await.unwrap()));
            }
            delivered.sort();
            let mut expected: Vec<String> = (0..20).map(|n| format!("a{n}-h1")).collect();
            expected.sort();
            assert_eq!(delivered, expected, "every job once, none twice");
            store.close().await;
        }
    }
);

backends!(
    create_action_signs_one_job_per_host_and_wakes_their_agents,
    |db: TestDb| {
        async move {
            let store = db.open().await;
            let hosts = hosts(&store, 3).await;
            let key = SigningKey::generate().unwrap();
            let hub = Hub::default();
            let mut h1_waits = hub.subscribe_jobs("h1");
            let h3_waits = hub.subscribe_jobs("h3");
            let request = ActionRequest {
                kind: JobKind::Script(ScriptJob {
                    name: "cleanup".into(),
                    interpreter: "/bin/sh".into(),
                    body: "echo hi\n".into(),
                    parameters: BTreeMap::from([("days".to_string(), "7".to_string())]),
                    timeout_secs: 30,
                    run_as: None,
                }),
                requested_by: "alice".into(),
                request_id: None,
                summary: "run cleanup".into(),
                targets: json!({"hosts": ["h1", "h2", "h3"]}),
                parameters: json!({"days": "7"}),
                source: JobSource::Schedule,
                max_parallel: Some(2),
                failure_threshold: None,
                ttl: Duration::from_secs(3_600),
                audit_commit: Some("abc123".into()),
                schedule: Some(ScheduleSlot {
                    script: "cleanup".into(),
                    slot: NOW,
                }),
            };
            let wanted = [
                hosts[0].clone(),
                hosts[1].clone(),
                hosts[2].clone(),
                hosts[0].clone(),
            ];
            let created = create_action(&store, &key, &hub, &request, &wanted, NOW)
                .await
                .unwrap();
            assert_eq!(created.jobs.len(), 3, "duplicates dropped");
            assert_eq!(created.release.queued_hosts, ["h1", "h2"]);
            h1_waits.changed().await.unwrap();
            assert!(!h3_waits.has_changed().unwrap(), "h3 waits for its turn");

            let delivered = store.jobs_for_host("h1", NOW).await.unwrap();
            assert_eq!(delivered.len(), 1);
            let job = verify_job(&key.public_key(), &delivered[0], "h1", NOW).unwrap();
            assert_eq!(job.action, created.action_id);
            assert_eq!(job.expires_at, NOW + 3_600);
            assert_eq!(job.kind, request.kind);
            let record = store.job(&job.job_id).await.unwrap().unwrap();
            assert_eq!(record.schedule_key, Some(format!("cleanup|{NOW}|h1")));
            assert_eq!(record.run_timeout, 30);
            assert_eq!(record.source, JobSource::Schedule);
            let action = store.action(&created.action_id).await.unwrap().unwrap();
            assert_eq!(action.audit_commit.as_deref(), Some("abc123"));
            assert_eq!(action.max_parallel, Some(2));

            // The same slot again: refused, the scheduler knows it ran.
            let again = create_action(&store, &key, &hub, &request, &wanted, NOW)
                .await
                .unwrap_err();
            assert_eq!(again.metric_label(), "conflict");
            let none = create_action(&store, &key, &hub, &request, &[], NOW)
                .await
                .unwrap_err();
            assert_eq!(none.metric_label(), "no_hosts");
            store.close().await;
        }
    }
);
