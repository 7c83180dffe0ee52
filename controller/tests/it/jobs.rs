//! Jobs end to end: a real controller, real `muster-agent run --root`
//! processes. Jobs created for two hosts run on both and their results are
//! stored; a job delivered again runs once; a job signed for one host and
//! served to another by a man in the middle is refused and not run; an
//! agent killed while a job runs reports it failed after its restart and
//! never runs it again; the job routes answer as `docs/agent-protocol.md`
//! says.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use muster_controller::jobs::{ActionRequest, CreatedAction, create_action};
use muster_controller::server::hub::Hub;
use muster_controller::store::{ActionState, JobFilter, JobRecord, JobSource, JobState};
use muster_schemas::job::{JobKind, ScriptJob, SignedJob};

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Agent, Harness, eventually};
use crate::support::agent::{TestAgent, stderr};
use crate::support::proxy::TamperingProxy;

fn script(body: &str, parameters: &[(&str, &str)]) -> JobKind {
    JobKind::Script(ScriptJob {
        name: "test-script".into(),
        interpreter: "/bin/sh".into(),
        body: body.into(),
        parameters: parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        timeout_secs: 600,
        run_as: None,
    })
}

/// Creates an action with the library function, as ad-hoc runs and the
/// scheduler do. The hub is the test's own: the controller's job sweep
/// finds the jobs in the database and wakes its agents.
async fn run_on(harness: &Harness, kind: JobKind, hosts: &[String]) -> CreatedAction {
    let request = ActionRequest {
        kind,
        requested_by: "alice".into(),
        request_id: Some("req-test".into()),
        summary: "run test-script".into(),
        targets: serde_json::json!({ "hosts": hosts }),
        parameters: serde_json::json!({}),
        source: JobSource::AdHoc,
        max_parallel: None,
        failure_threshold: None,
        ttl: Duration::from_secs(3_600),
        audit_commit: None,
        schedule: None,
    };
    create_action(
        &harness.store,
        &harness.signing_key(),
        &Hub::default(),
        &request,
        hosts,
        muster_controller::server::now(),
    )
    .await
    .unwrap()
}

async fn job(harness: &Harness, job_id: &str) -> JobRecord {
    harness.store.job(job_id).await.unwrap().unwrap()
}

/// Waits until the job is in `state`.
async fn job_in(harness: &Harness, job_id: &str, state: JobState) -> JobRecord {
    eventually(
        &format!("job {job_id} to be {}", state.as_str()),
        || async {
            let job = job(harness, job_id).await;
            (job.state == state).then_some(job)
        },
    )
    .await
}

async fn host_id(harness: &Harness, name: &str) -> String {
    harness.store.find_host(name).await.unwrap().unwrap().id
}

backends!(
    jobs_run_once_on_real_agents_and_results_are_stored,
    |db: TestDb| {
        async move {
            let harness = Harness::start(db).await;
            let token = harness.token(2, true, &[("role", "web")], 3600).await;
            let agents = [TestAgent::new("job-web-01"), TestAgent::new("job-web-02")];
            let mut hosts = Vec::new();
            for (agent, name) in agents.iter().zip(["web-01", "web-02"]) {
                agent.enroll(&harness, &token, name).await;
                hosts.push(host_id(&harness, name).await);
            }
            let running: Vec<_> = agents.iter().map(TestAgent::spawn).collect();

            let hostile = "$(touch pwned); rm -rf / `touch pwned`";
            let body = "echo run >> \"$MUSTER_ROOT/count\"\n\
                    printf '%s' \"$MUSTER_PARAM_GREETING\" > \"$MUSTER_ROOT/greeting\"\n\
                    echo \"hello from $MUSTER_JOB_ID\"\n";
            let created = run_on(&harness, script(body, &[("greeting", hostile)]), &hosts).await;
            assert_eq!(created.jobs.len(), 2);
            for ((host, job_id), agent) in created.jobs.iter().zip(&agents) {
                let done = job_in(&harness, job_id, JobState::Succeeded).await;
                assert_eq!(&done.host_id, host);
                assert_eq!(done.exit_code, Some(0));
                assert_eq!(
                    done.stdout.as_deref(),
                    Some(format!("hello from {job_id}\n").as_str())
                );
                assert!(done.started_at.is_some() && done.finished_at.is_some());
                assert_eq!(agent.file("/greeting").as_deref(), Some(hostile));
                assert_eq!(agent.file("/count").as_deref(), Some("run\n"));
                assert!(!agent.path("/pwned").exists());
            }
            let action = eventually("the action to complete", || async {
                let action = harness.store.action(&created.action_id).await.unwrap()?;
                (action.state == ActionState::Completed).then_some(action)
            })
            .await;
            assert_eq!(action.requested_by, "alice");

            // The controller hands the first job out again (its result lost, say):
            // the agent's ledger sends the result again and does not run it.
            let (_, first_job) = &created.jobs[0];
            let attempts = job(&harness, first_job).await.attempts;
            sqlx::query(
            "UPDATE jobs SET state = 'queued', exit_code = NULL, stdout = NULL, finished_at = NULL WHERE id = $1",
        )
        .bind(first_job)
        .execute(harness.store.pool())
        .await
        .unwrap();
            let again = eventually("the job to be delivered again and reported", || async {
                let job = job(&harness, first_job).await;
                (job.state == JobState::Succeeded && job.attempts > attempts).then_some(job)
            })
            .await;
            assert_eq!(
                again.stdout.as_deref(),
                Some(format!("hello from {first_job}\n").as_str())
            );
            assert_eq!(
                agents[0].file("/count").as_deref(),
                Some("run\n"),
                "ran once"
            );
            drop(running);
            harness.stop().await;
        }
    }
);

backends!(
    a_job_for_one_host_served_to_another_is_refused_and_not_run,
    |db: TestDb| {
        async move {
            let harness = Harness::start(db).await;
            let proxy = TamperingProxy::start(&harness.url).await;
            let token = harness.token(2, true, &[("role", "web")], 3600).await;
            let victim = TestAgent::new("job-victim");
            let owner = TestAgent::new("job-owner");
            owner.enroll(&harness, &token, "web-01").await;
            victim
                .enroll_through(&proxy.url, &harness, &token, "web-02")
                .await;
            let owner_id = host_id(&harness, "web-01").await;
            let created = run_on(
                &harness,
                script("echo run >> \"$MUSTER_ROOT/ran\"\n", &[]),
                std::slice::from_ref(&owner_id),
            )
            .await;
            let (_, job_id) = &created.jobs[0];
            let record = job(&harness, job_id).await;
            let genuine = SignedJob {
                job: record.payload.clone(),
                signature: record.signature.clone(),
            };

            // The man in the middle hands the owner's genuine job to the victim.
            proxy.serve_jobs_once(vec![genuine]);
            let output = victim.run_once().await;
            let log = stderr(&output);
            assert!(
                log.contains(&format!("job is for host `{owner_id}`")),
                "the victim says why it refused: {log}"
            );
            assert!(
                !victim.path("/ran").exists(),
                "the victim ran another host's job"
            );
            // The victim's refusal cannot touch the owner's job.
            assert_eq!(job(&harness, job_id).await.state, JobState::Queued);
            let jobs = harness
                .store
                .jobs(&JobFilter {
                    host_id: Some(host_id(&harness, "web-02").await),
                    ..JobFilter::default()
                })
                .await
                .unwrap();
            assert!(jobs.is_empty());

            // The owner runs it.
            owner.converge_once().await;
            let done = job_in(&harness, job_id, JobState::Succeeded).await;
            assert_eq!(done.attempts, 1);
            assert_eq!(owner.file("/ran").as_deref(), Some("run\n"));
            harness.stop().await;
        }
    }
);

backends!(
    an_agent_killed_while_a_job_runs_never_runs_it_again,
    |db: TestDb| {
        async move {
            let harness = Harness::start(db).await;
            let token = harness.token(1, true, &[("role", "web")], 3600).await;
            let agent = TestAgent::new("job-crash");
            agent.enroll(&harness, &token, "web-01").await;
            let host = host_id(&harness, "web-01").await;
            let running = agent.spawn();
            let body = "echo run >> \"$MUSTER_ROOT/count\"\n\
                    echo $$ > \"$MUSTER_ROOT/pid\"\n\
                    exec sleep 1000\n";
            let created = run_on(&harness, script(body, &[]), std::slice::from_ref(&host)).await;
            let (_, job_id) = &created.jobs[0];
            job_in(&harness, job_id, JobState::Running).await;
            let pid = eventually("the script to write its pid", || async {
                agent.file("/pid").filter(|pid| pid.ends_with('\n'))
            })
            .await;

            // kill -9 the agent while the job runs, then the job itself, which
            // lives on in its own process group.
            drop(running);
            let killed = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", pid.trim())])
                .status()
                .unwrap();
            assert!(killed.success());

            let restarted = agent.spawn();
            let failed = job_in(&harness, job_id, JobState::Failed).await;
            assert_eq!(
                failed.message.as_deref(),
                Some("the agent stopped while it ran")
            );
            assert_eq!(failed.exit_code, None);

            // Delivered once more (the controller lost the result, say): the
            // ledger answers, the job does not run.
            let attempts = failed.attempts;
            sqlx::query(
                "UPDATE jobs SET state = 'running', lease_until = 0, message = NULL WHERE id = $1",
            )
            .bind(job_id)
            .execute(harness.store.pool())
            .await
            .unwrap();
            let again = eventually("the job to be delivered again and reported", || async {
                let job = job(&harness, job_id).await;
                (job.state == JobState::Failed && job.attempts > attempts).then_some(job)
            })
            .await;
            assert_eq!(
                again.message.as_deref(),
                Some("the agent stopped while it ran")
            );
            assert_eq!(
                agent.file("/count").as_deref(),
                Some("run\n"),
                "the job ran again"
            );
            let log = restarted.log();
            assert!(
                log.contains("the agent stopped while this job ran"),
                "{log}"
            );
            drop(restarted);
            let _ = fs::remove_file(agent.path("/pid"));
            harness.stop().await;
        }
    }
);

/// `GET /v1/hosts/{host}/jobs?wait=…` signed as `agent`.
async fn poll(agent: &Agent, host: &str, wait: u64) -> reqwest::Response {
    let path = format!("/v1/hosts/{host}/jobs?wait={wait}");
    agent.send("GET", &path, Vec::new(), &agent.signing()).await
}

/// `POST /v1/hosts/{host}/jobs/{job}/{what}` signed as `agent`: the status.
async fn post(agent: &Agent, host: &str, job_id: &str, what: &str, body: serde_json::Value) -> u16 {
    let path = format!("/v1/hosts/{host}/jobs/{job_id}/{what}");
    let body = serde_json::to_vec(&body).unwrap();
    agent
        .send("POST", &path, body, &agent.signing())
        .await
        .status()
        .as_u16()
}

backends!(the_job_routes_answer_as_documented, |db: TestDb| {
    async move {
        let harness = Harness::start(db).await;
        let token = harness.token(2, true, &[("role", "web")], 3600).await;
        let owner = harness.enroll(&token, "web-01").await;
        let other = harness.enroll(&token, "web-02").await;
        assert_eq!(poll(&owner, &owner.host_id, 0).await.status(), 204);
        assert_eq!(
            poll(&other, &owner.host_id, 0).await.status(),
            403,
            "another host's jobs"
        );

        // A held poll is answered when a job is queued for the host.
        let waiting = poll(&owner, &owner.host_id, 25);
        let creating = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            run_on(
                &harness,
                script("true\n", &[]),
                std::slice::from_ref(&owner.host_id),
            )
            .await
        };
        let (answer, created) = tokio::join!(waiting, creating);
        assert_eq!(answer.status(), 200);
        let body: muster_schemas::protocol::JobsResponse = answer.json().await.unwrap();
        let (_, job_id) = &created.jobs[0];
        assert_eq!(body.jobs.len(), 1);
        let verified = muster_schemas::job::verify_job(
            &harness.public_key,
            &body.jobs[0],
            &owner.host_id,
            muster_controller::server::now(),
        )
        .unwrap();
        assert_eq!(&verified.job_id, job_id);
        assert_eq!(job(&harness, job_id).await.state, JobState::Delivered);

        let now = muster_controller::server::now();
        let started = serde_json::json!({"job_id": job_id, "started_at": now});
        let result = serde_json::json!({
            "job_id": job_id, "state": "succeeded", "exit_code": 0,
            "stdout": "ok\n", "stderr": "", "started_at": now, "finished_at": now,
        });
        // Another host, on its own path or the owner's: refused.
        assert_eq!(
            post(&other, &other.host_id, job_id, "started", started.clone()).await,
            403
        );
        assert_eq!(
            post(&other, &owner.host_id, job_id, "result", result.clone()).await,
            403
        );
        assert_eq!(
            post(&other, &other.host_id, job_id, "result", result.clone()).await,
            403
        );
        assert_eq!(job(&harness, job_id).await.state, JobState::Delivered);

        assert_eq!(
            post(&owner, &owner.host_id, job_id, "started", started).await,
            200
        );
        assert_eq!(job(&harness, job_id).await.state, JobState::Running);
        assert_eq!(
            post(&owner, &owner.host_id, job_id, "result", result.clone()).await,
            200
        );
        assert_eq!(
            post(&owner, &owner.host_id, job_id, "result", result.clone()).await,
            200,
            "the same result again"
        );
        let mut changed = result.clone();
        changed["state"] = "failed".into();
        changed["exit_code"] = 1.into();
        assert_eq!(
            post(&owner, &owner.host_id, job_id, "result", changed).await,
            409
        );
        let mut mismatched = result.clone();
        mismatched["job_id"] = "another-job".into();
        assert_eq!(
            post(&owner, &owner.host_id, job_id, "result", mismatched).await,
            400
        );
        let done = job(&harness, job_id).await;
        assert_eq!(
            (done.state, done.stdout.as_deref()),
            (JobState::Succeeded, Some("ok\n"))
        );
        let unknown = format!("/v1/hosts/{}/jobs/no-such-job/result", owner.host_id);
        let mut body = result.clone();
        body["job_id"] = "no-such-job".into();
        let answer = owner
            .send(
                "POST",
                &unknown,
                serde_json::to_vec(&body).unwrap(),
                &owner.signing(),
            )
            .await;
        assert_eq!(answer.status(), 404);
        let action = harness
            .store
            .action(&created.action_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(action.state, ActionState::Completed);
        harness.stop().await;
    }
});
