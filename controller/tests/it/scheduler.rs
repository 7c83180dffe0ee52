//! Scheduled scripts: a real controller whose scheduler reads a test clock,
//! so that slots come when the test says, without waiting for them.
//!
//! A slot runs once per host across a restart, even when the watermark was
//! lost (the store's unique key decides); after downtime only the latest
//! missed slot runs; two controllers sharing PostgreSQL schedule each slot
//! once, and the second carries on when the first stops; splay spreads
//! start times within the bound and a window holding rollouts holds its
//! hosts' jobs until it closes; a rollout of a failing script on real
//! agents stops at its failure threshold. Every slot is one audit commit
//! by `scheduler`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use muster_controller::audit::{AuditLog, Filter, RecordKind};
use muster_controller::commands::serve;
use muster_controller::scheduler::{ManualClock, slot_request_id, splay_offset};
use muster_controller::store::{ActionState, JobFilter, JobRecord, JobSource, JobState, Store};

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Harness, eventually, eventually_for};
use crate::support::agent::TestAgent;

const SCRIPT: &str = "log-cleanup";
const SCRIPT_FILE: &str = "scripts/log-cleanup.yaml";

/// The test clock's start: the middle of a minute, half an hour ago, so
/// that the slots the tests reach are past for the agents' (real) clocks
/// and the jobs deliverable.
fn start_time() -> i64 {
    let now = muster_controller::server::now();
    now - now % 60 - 30 * 60 + 30
}

/// The first slot of `* * * * *` after `t`.
fn next_minute(t: i64) -> i64 {
    t - t % 60 + 60
}

async fn start(db: TestDb, clock: &Arc<ManualClock>) -> Harness {
    Harness::start_with_clock(db, Arc::clone(clock) as _, |_| {}).await
}

/// Makes `log-cleanup` run every minute with `splay` and `rollout` (YAML
/// lines), as the harness's agents can (no `run_as`), and deploys it.
async fn schedule_every_minute(harness: &Harness, splay: &str, rollout: &str) {
    let repo = &harness.repo;
    repo.edit(
        SCRIPT_FILE,
        "schedule: \"30 3 * * *\"     # every day at 03:30",
        "schedule: \"* * * * *\"",
    );
    repo.edit(SCRIPT_FILE, "splay: 10m", &format!("splay: {splay}"));
    repo.edit(SCRIPT_FILE, "run_as: root\n", "");
    repo.edit(
        SCRIPT_FILE,
        "rollout:\n  max_parallel: \"50%\"\n  failure_threshold: \"10%\"",
        rollout,
    );
    deploy(harness, "schedule log-cleanup every minute").await;
}

/// Commits the pending edits and waits until the scheduler follows the
/// commit.
async fn deploy(harness: &Harness, message: &str) -> String {
    let commit = harness.repo.commit_all(message);
    let record = harness.commit_state(&commit).await;
    assert_eq!(
        record.state,
        muster_controller::store::CommitState::Deployed,
        "{:#?}",
        record.diagnostics
    );
    eventually("the scheduler to follow the commit", || async {
        let row = harness.store.schedule(SCRIPT).await.unwrap()?;
        (row.commit_id == commit).then_some(())
    })
    .await;
    commit
}

/// Approved test hosts with `role`.
async fn hosts(harness: &Harness, role: &str, names: &[&str]) -> Vec<String> {
    let token = harness
        .token(names.len() as i64, true, &[("role", role)], 3600)
        .await;
    let mut ids = Vec::new();
    for name in names {
        ids.push(harness.enroll(&token, name).await.host_id);
    }
    ids
}

/// Waits until the scheduler has dealt with `slot`.
async fn slot_done(store: &Store, slot: i64) {
    eventually_for(
        &format!("the scheduler to deal with slot {slot}"),
        Duration::from_secs(90),
        || async {
            let row = store.schedule(SCRIPT).await.unwrap()?;
            (row.watermark >= slot).then_some(())
        },
    )
    .await;
}

/// The scheduled jobs by slot, and the actions holding them.
async fn scheduled(store: &Store) -> BTreeMap<i64, (BTreeSet<String>, Vec<JobRecord>)> {
    let jobs = store
        .jobs(&JobFilter {
            limit: 10_000,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    let mut slots: BTreeMap<i64, (BTreeSet<String>, Vec<JobRecord>)> = BTreeMap::new();
    for job in jobs {
        let Some(key) = &job.schedule_key else {
            continue;
        };
        let mut parts = key.split('|');
        assert_eq!(parts.next(), Some(SCRIPT));
        let slot: i64 = parts.next().unwrap().parse().unwrap();
        assert_eq!(parts.next(), Some(job.host_id.as_str()));
        let entry = slots.entry(slot).or_default();
        entry.0.insert(job.action_id.clone());
        entry.1.push(job);
    }
    slots
}

/// Asserts that each slot in `expected` has one action with one job per
/// host of `host_ids`, and that no other slot ran.
async fn assert_once_each(store: &Store, expected: &[i64], host_ids: &[String]) {
    let slots = scheduled(store).await;
    assert_eq!(
        slots.keys().copied().collect::<Vec<_>>(),
        expected,
        "the slots that ran"
    );
    let wanted: BTreeSet<&String> = host_ids.iter().collect();
    for (slot, (actions, jobs)) in &slots {
        assert_eq!(actions.len(), 1, "slot {slot} has one action: {actions:?}");
        let hosts: Vec<&String> = jobs.iter().map(|job| &job.host_id).collect();
        assert_eq!(hosts.len(), wanted.len(), "slot {slot}: one job per host");
        assert_eq!(hosts.into_iter().collect::<BTreeSet<_>>(), wanted);
        for job in jobs {
            assert_eq!(job.source, JobSource::Schedule);
            assert_eq!(job.requested_by, "scheduler");
        }
    }
}

/// The scheduler's action records in an audit repository, by request id.
fn audited(data_dir: &std::path::Path) -> BTreeMap<String, muster_controller::audit::Record> {
    AuditLog::in_data_dir(data_dir)
        .entries(&Filter::default())
        .unwrap()
        .into_iter()
        .map(|entry| entry.record)
        .filter(|record| record.kind == RecordKind::Action && record.who.user == "scheduler")
        .map(|record| (record.request_id.clone(), record))
        .collect()
}

/// `muster schedules` on the harness's database.
async fn muster_schedules(harness: &Harness) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_muster"));
    command
        .arg("schedules")
        .arg("--data-dir")
        .arg(harness.data_dir())
        .args(["--database-url", &harness.db_url]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

backends!(
    a_slot_runs_once_across_restarts_and_only_the_latest_missed_slot_runs,
    |db: TestDb| {
        async move {
            let t0 = start_time();
            let clock = Arc::new(ManualClock::new(t0));
            let mut harness = start(db, &clock).await;
            let host_ids = hosts(&harness, "web", &["web-01", "web-02"]).await;
            schedule_every_minute(&harness, "0s", "rollout:\n  max_parallel: 10").await;
            let store = harness.store.clone();
            // Deploying ran nothing: a new schedule starts with its next slot.
            assert!(scheduled(&store).await.is_empty());

            let first = next_minute(t0);
            clock.set(first + 1);
            slot_done(&store, first).await;
            assert_once_each(&store, &[first], &host_ids).await;
            let slots = scheduled(&store).await;
            let (actions, jobs) = &slots[&first];
            for job in jobs {
                assert_eq!(job.not_before, Some(first), "no splay: due at the slot");
            }
            let action = store
                .action(actions.first().unwrap())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(action.requested_by, "scheduler");
            assert_eq!(action.source, JobSource::Schedule);
            assert_eq!(
                action.request_id.as_deref(),
                Some(slot_request_id(SCRIPT, first).as_str())
            );
            assert!(action.audit_commit.is_some());
            let records = audited(harness.data_dir());
            assert_eq!(records.len(), 1, "one audit commit per slot, not per host");
            let record = &records[&slot_request_id(SCRIPT, first)];
            assert_eq!(record.action, "scripts.run");
            assert_eq!(record.targets, ["web-01", "web-02"]);
            assert_eq!(
                record.parameters.get("max_age_days").map(String::as_str),
                Some("14")
            );

            // A crash after the slot's jobs were created and before the
            // watermark moved: the restarted scheduler asks again and the
            // store says the slot exists.
            harness.stop_controller().await;
            sqlx::query("UPDATE schedules SET watermark = $1 WHERE script = $2")
                .bind(first - 1)
                .bind(SCRIPT)
                .execute(store.pool())
                .await
                .unwrap();
            harness.restart_controller().await;
            slot_done(&store, first).await;
            assert_once_each(&store, &[first], &host_ids).await;
            assert_eq!(audited(harness.data_dir()).len(), 1);

            let second = first + 60;
            clock.set(second + 1);
            slot_done(&store, second).await;
            assert_once_each(&store, &[first, second], &host_ids).await;

            // Down for ten minutes: ten slots missed, the latest runs once.
            harness.stop_controller().await;
            let latest = second + 10 * 60;
            clock.set(latest + 5);
            harness.restart_controller().await;
            slot_done(&store, latest).await;
            assert_once_each(&store, &[first, second, latest], &host_ids).await;
            let row = store.schedule(SCRIPT).await.unwrap().unwrap();
            assert_eq!(row.last_slot, Some(latest));
            assert_eq!(audited(harness.data_dir()).len(), 3);

            // `muster schedules` lists it with its next runs in its time
            // zone and the last slot that ran.
            let output = muster_schedules(&harness).await;
            let berlin = "Europe/Berlin"
                .parse::<muster_schemas::types::TimeZone>()
                .unwrap()
                .tz();
            let last = chrono::DateTime::from_timestamp(latest, 0)
                .unwrap()
                .with_timezone(&berlin)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string();
            let line = output
                .lines()
                .find(|line| line.starts_with(SCRIPT))
                .unwrap_or_else(|| panic!("{output}"));
            assert!(
                line.contains("* * * * *") && line.contains("Europe/Berlin"),
                "{line}"
            );
            assert!(line.contains(&format!("{last} (")), "{line}");
            assert_eq!(line.matches(", ").count(), 2, "three next runs: {line}");
            harness.stop().await;
        }
    }
);

/// Two controllers on one PostgreSQL database, each with its own data dir
/// and leader connection, the same clock: every slot runs once, and when
/// the first stops the other schedules the next slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controllers_on_postgres_schedule_each_slot_once() {
    let Some(db) = TestDb::postgres().await else {
        eprintln!(
            "skipped: set {} to run on PostgreSQL",
            crate::db::POSTGRES_ENV
        );
        return;
    };
    let t0 = start_time();
    let clock = Arc::new(ManualClock::new(t0));
    let mut first_controller = start(db, &clock).await;
    let host_ids = hosts(&first_controller, "web", &["web-01", "web-02", "web-03"]).await;
    schedule_every_minute(&first_controller, "0s", "rollout:\n  max_parallel: 10").await;
    let mut config = first_controller.config();
    config.data.data_dir = first_controller.data_dir().with_file_name("data-second");
    config.listen = "127.0.0.1:0".into();
    let second_controller = serve::start_with_clock(config.clone(), Arc::clone(&clock) as _)
        .await
        .expect("the second controller starts");
    let store = first_controller.store.clone();

    let first = next_minute(t0);
    let mut expected = Vec::new();
    for n in 0..3 {
        let slot = first + 60 * n;
        clock.set(slot + 1);
        slot_done(&store, slot).await;
        expected.push(slot);
        assert_once_each(&store, &expected, &host_ids).await;
    }

    first_controller.stop_controller().await;
    let slot = first + 180;
    clock.set(slot + 1);
    slot_done(&store, slot).await;
    expected.push(slot);
    assert_once_each(&store, &expected, &host_ids).await;

    // One audit commit per slot, in the repository of the replica that
    // scheduled it.
    let mut records = audited(first_controller.data_dir());
    let second_records = audited(&config.data.data_dir);
    let n_records = records.len() + second_records.len();
    records.extend(second_records);
    assert_eq!(n_records, 4, "{records:#?}");
    let wanted: BTreeSet<String> = expected
        .iter()
        .map(|slot| slot_request_id(SCRIPT, *slot))
        .collect();
    assert_eq!(records.keys().cloned().collect::<BTreeSet<_>>(), wanted);

    second_controller.stop().await.unwrap();
    first_controller.stop().await;
}

backends!(
    splay_spreads_start_times_and_windows_hold_their_hosts,
    |db: TestDb| {
        async move {
            let t0 = start_time();
            let first = next_minute(t0);
            let clock = Arc::new(ManualClock::new(t0));
            let harness = start(db, &clock).await;
            let web = hosts(&harness, "web", &["web-01", "web-02", "web-03"]).await;
            let db_hosts = hosts(&harness, "db", &["db-01"]).await;
            // The example's window on the db group opens at the slot, for 2h.
            let opens = chrono::DateTime::from_timestamp(first, 0).unwrap();
            harness.repo.edit(
                "alerts/maintenance.yaml",
                "schedule: \"0 2 * * 0\"      # Sundays at 02:00",
                &format!("schedule: \"{}\"", opens.format("%M %H * * *")),
            );
            harness.repo.edit(
                "alerts/maintenance.yaml",
                "timezone: Europe/Berlin",
                "timezone: UTC",
            );
            schedule_every_minute(&harness, "10m", "rollout:\n  max_parallel: 10").await;
            let store = harness.store.clone();

            clock.set(first + 1);
            slot_done(&store, first).await;
            let all: Vec<String> = web.iter().chain(&db_hosts).cloned().collect();
            assert_once_each(&store, &[first], &all).await;
            let slots = scheduled(&store).await;
            let jobs: BTreeMap<&str, &JobRecord> = slots[&first]
                .1
                .iter()
                .map(|job| (job.host_id.as_str(), job))
                .collect();

            let mut offsets = BTreeSet::new();
            for host in &web {
                let not_before = jobs[host.as_str()].not_before.unwrap();
                let offset = not_before - first;
                assert!(
                    (0..600).contains(&offset),
                    "offset {offset} within the splay"
                );
                assert_eq!(offset, splay_offset(SCRIPT, first, host, 600));
                offsets.insert(offset);
                // Not handed out a second early; handed out at its time.
                assert!(
                    store
                        .jobs_for_host(host, not_before - 1)
                        .await
                        .unwrap()
                        .is_empty()
                );
                assert_eq!(
                    store.jobs_for_host(host, not_before).await.unwrap().len(),
                    1
                );
            }
            assert!(offsets.len() > 1, "splay spreads the hosts: {offsets:?}");

            // The db host is in the window: its job waits until it closes.
            let held = jobs[db_hosts[0].as_str()];
            assert_eq!(held.not_before, Some(first + 2 * 3600));
            assert_eq!(held.state, JobState::Queued, "created and released, held");
            assert!(held.expires_at > first + 2 * 3600, "valid beyond the hold");
            let db_host = &db_hosts[0];
            assert!(
                store
                    .jobs_for_host(db_host, first + 2 * 3600 - 1)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert!(
                !store
                    .hosts_with_ready_jobs(first + 3600)
                    .await
                    .unwrap()
                    .contains(db_host)
            );
            assert_eq!(
                store
                    .jobs_for_host(db_host, first + 2 * 3600)
                    .await
                    .unwrap()
                    .len(),
                1
            );
            let records = audited(harness.data_dir());
            let record = &records[&slot_request_id(SCRIPT, first)];
            assert!(
                record.summary.contains("1 held by maintenance windows"),
                "{}",
                record.summary
            );
            harness.stop().await;
        }
    }
);

backends!(
    a_failing_scheduled_rollout_stops_at_its_threshold_on_real_agents,
    |db: TestDb| {
        async move {
            let t0 = start_time();
            let clock = Arc::new(ManualClock::new(t0));
            let harness = start(db, &clock).await;
            let token = harness.token(3, true, &[("role", "web")], 3600).await;
            let names = ["sched-web-01", "sched-web-02", "sched-web-03"];
            let agents: Vec<TestAgent> = names.iter().map(|name| TestAgent::new(name)).collect();
            for (agent, name) in agents.iter().zip(names) {
                agent.enroll(&harness, &token, name).await;
            }
            let _running: Vec<_> = agents.iter().map(TestAgent::spawn).collect();
            harness.repo.edit(
                "scripts/log-cleanup.sh",
                "set -eu\n",
                "echo \"failing on purpose\"\nexit 1\n",
            );
            schedule_every_minute(
                &harness,
                "0s",
                "rollout:\n  max_parallel: 1\n  failure_threshold: 2",
            )
            .await;
            let store = harness.store.clone();

            let first = next_minute(t0);
            clock.set(first + 1);
            slot_done(&store, first).await;
            let action_id = scheduled(&store).await[&first].0.first().unwrap().clone();
            let action = eventually("the rollout to stop", || async {
                let action = store.action(&action_id).await.unwrap()?;
                (action.state != ActionState::Running).then_some(action)
            })
            .await;
            assert_eq!(action.state, ActionState::Stopped);
            assert_eq!(
                (action.max_parallel, action.failure_threshold),
                (Some(1), Some(2))
            );
            let mut jobs = store
                .jobs(&JobFilter {
                    action_id: Some(action_id.clone()),
                    ..JobFilter::default()
                })
                .await
                .unwrap();
            jobs.sort_by_key(|job| job.position);
            let states: Vec<JobState> = jobs.iter().map(|job| job.state).collect();
            assert_eq!(
                states,
                [JobState::Failed, JobState::Failed, JobState::Cancelled],
                "two failures stop the rollout; the third host never runs it"
            );
            for job in &jobs[..2] {
                assert_eq!(job.exit_code, Some(1));
                assert_eq!(job.stdout.as_deref(), Some("failing on purpose\n"));
            }
            // One at a time: the second was handed out after the first ended.
            assert!(jobs[1].delivered_at.unwrap() >= jobs[0].finished_at.unwrap());
            harness.stop().await;
        }
    }
);

/// A real `muster serve` process, killed on drop.
struct ServeProcess {
    child: std::process::Child,
    data_dir: std::path::PathBuf,
}

impl ServeProcess {
    fn start(harness: &Harness, data_dir: std::path::PathBuf) -> ServeProcess {
        std::fs::create_dir_all(&data_dir).unwrap();
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_muster"))
            .arg("serve")
            .arg("--repo")
            .arg(harness.repo.path())
            .args(["--branch", "main", "--listen", "127.0.0.1:0"])
            .args(["--fetch-interval", "1s"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--database-url", &harness.db_url])
            .env("MUSTER_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("muster serve starts");
        ServeProcess { child, data_dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two real `muster serve` processes on one PostgreSQL database, on the
/// real clock, with a script due every minute: each slot runs once, and
/// when the leader is killed with SIGKILL (its advisory lock dies with its
/// connection) the other process schedules the next slots, still once.
/// Waits for real minute boundaries, so it takes two to three minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_postgres_schedule_each_slot_once_across_a_kill() {
    let Some(db) = TestDb::postgres().await else {
        eprintln!(
            "skipped: set {} to run on PostgreSQL",
            crate::db::POSTGRES_ENV
        );
        return;
    };
    // The in-process controller sets up the repo, database and hosts; its
    // scheduler's clock stands still, and it is stopped before the real
    // processes start, so that it never leads.
    let clock = Arc::new(ManualClock::new(start_time()));
    let mut harness = start(db, &clock).await;
    let host_ids = hosts(&harness, "web", &["web-01", "web-02"]).await;
    schedule_every_minute(&harness, "0s", "rollout:\n  max_parallel: 10").await;
    harness.stop_controller().await;
    let store = harness.store.clone();

    let base = harness.data_dir().to_path_buf();
    let mut replicas = vec![
        ServeProcess::start(&harness, base.with_file_name("replica-a")),
        ServeProcess::start(&harness, base.with_file_name("replica-b")),
    ];
    let first = eventually_for(
        "a real process to schedule a slot",
        Duration::from_secs(180),
        || async { scheduled(&store).await.keys().next().copied() },
    )
    .await;
    let slots: Vec<i64> = scheduled(&store).await.keys().copied().collect();
    assert_once_each(&store, &slots, &host_ids).await;

    // The leader is the replica whose audit repository holds the slot.
    let leader = replicas
        .iter()
        .position(|replica| {
            audited(&replica.data_dir).contains_key(&slot_request_id(SCRIPT, first))
        })
        .unwrap_or_else(|| {
            panic!(
                "no replica audited slot {first}:\n{}\n{}",
                replicas[0].log(),
                replicas[1].log()
            )
        });
    let mut killed = replicas.remove(leader);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let survivor = &replicas[0];

    let last_before_kill = *slots.last().unwrap();
    let after = eventually_for(
        "the surviving process to schedule the next slot",
        Duration::from_secs(180),
        || async {
            scheduled(&store)
                .await
                .keys()
                .copied()
                .find(|slot| *slot > last_before_kill)
        },
    )
    .await;
    let slots: Vec<i64> = scheduled(&store).await.keys().copied().collect();
    assert_once_each(&store, &slots, &host_ids).await;
    assert!(
        audited(&survivor.data_dir).contains_key(&slot_request_id(SCRIPT, after)),
        "the survivor audited slot {after}:\n{}",
        survivor.log()
    );
    // Across both repositories, every slot is audited exactly once.
    let mut n_records = 0;
    let mut request_ids = BTreeSet::new();
    for dir in [&killed.data_dir, &survivor.data_dir] {
        let records = audited(dir);
        n_records += records.len();
        request_ids.extend(records.into_keys());
    }
    assert_eq!(n_records, request_ids.len(), "a slot audited twice");
    let wanted: BTreeSet<String> = slots
        .iter()
        .map(|slot| slot_request_id(SCRIPT, *slot))
        .collect();
    assert_eq!(request_ids, wanted);
    drop(replicas);
    drop(killed);
    harness.stop().await;
}
