//! The job runner on temp state dirs and roots: parameters reach scripts
//! verbatim and harmless, the environment is cleared, timeouts kill the
//! process group, the ledger runs a job once whatever is delivered again
//! and settles a job the agent stopped in, and jobs that fail a check or
//! cannot be contained are refused and never run.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_agent::jobs::{JobRunner, Prepared, STOPPED_WHILE_RUNNING};
use muster_agent::resources::{Context, RUN_AS_SANDBOXED, SANDBOXED};
use muster_schemas::bundle::{Bundle, Desired};
use muster_schemas::job::{Job, JobKind, ScriptJob, ServiceJob, ServiceOperation, SignedJob};
use muster_schemas::protocol::{JobResult, JobResultState};

use crate::support::{StandIns, TempDir, argv, eventually};

const HOST: &str = "host-1";

/// The controller's key, as a test holds it.
struct Key {
    public: minisign::PublicKey,
    secret: minisign::SecretKey,
}

impl Key {
    fn new() -> Key {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        Key {
            public: pair.pk,
            secret: pair.sk,
        }
    }

    fn public(&self) -> String {
        self.public.to_base64()
    }

    fn sign_bytes(&self, bytes: &[u8], comment: &str) -> String {
        minisign::sign(
            Some(&self.public),
            &self.secret,
            std::io::Cursor::new(bytes),
            Some(comment),
            None,
        )
        .unwrap()
        .into_string()
    }

    fn sign(&self, job: &Job) -> SignedJob {
        let text = job.to_canonical_json_string();
        SignedJob {
            signature: self.sign_bytes(text.as_bytes(), &job.trusted_comment().to_string()),
            job: text,
        }
    }
}

fn now() -> i64 {
    muster_agent::client::unix_now()
}

fn script(body: &str, parameters: &[(&str, &str)]) -> ScriptJob {
    ScriptJob {
        name: "test".into(),
        interpreter: "/bin/sh".into(),
        body: body.into(),
        parameters: parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        timeout_secs: 60,
        run_as: None,
    }
}

fn job(id: &str, kind: JobKind) -> Job {
    Job {
        job_id: id.into(),
        host_id: HOST.into(),
        issued_at: now() - 5,
        expires_at: now() + 3_600,
        action: "action-1".into(),
        kind,
    }
}

/// A state dir and a sandbox root side by side, a key, and a runner.
struct Setup {
    dir: TempDir,
    key: Key,
}

impl Setup {
    fn new(label: &str) -> Setup {
        let dir = TempDir::new(label);
        fs::create_dir_all(dir.path().join("root")).unwrap();
        Setup {
            dir,
            key: Key::new(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A runner for a sandboxed agent (`--root`).
    fn runner(&self) -> JobRunner {
        self.runner_in(Context::new().with_root(self.root()))
    }

    fn runner_in(&self, ctx: Context) -> JobRunner {
        JobRunner::new(HOST, &self.key.public(), &self.state(), ctx).unwrap()
    }

    fn read(&self, relative: &str) -> Vec<u8> {
        fs::read(self.root().join(relative)).unwrap()
    }
}

fn run(runner: &JobRunner, signed: &SignedJob) -> JobResult {
    runner.process(signed, now()).expect("a result to report")
}

#[test]
fn parameters_reach_the_script_verbatim_and_harmless() {
    let setup = Setup::new("job-params");
    let hostile = [
        ("semicolon", "; rm -rf /"),
        ("subst", "$(touch pwned)"),
        ("backticks", "`touch pwned`"),
        ("dash", "-rf --no-preserve-root"),
        ("quotes", "it's \"quoted\" \\ back"),
        ("newline", "first\nsecond; touch pwned\n"),
        ("glob", "* ?"),
        ("empty", ""),
        ("unicode", "übel ☃"),
    ];
    let mut body = String::new();
    for (name, _) in hostile {
        let var = format!("MUSTER_PARAM_{}", name.to_uppercase());
        body.push_str(&format!(
            "printf '%s' \"${var}\" > \"$MUSTER_ROOT/{name}\"\n"
        ));
    }
    // What the script sees of its environment and where it runs.
    body.push_str("env > \"$MUSTER_ROOT/env\"\npwd > \"$MUSTER_ROOT/pwd\"\n");
    let signed = setup
        .key
        .sign(&job("params-1", JobKind::Script(script(&body, &hostile))));
    let before_cwd: Vec<_> = fs::read_dir(".").unwrap().collect();
    let result = run(&setup.runner(), &signed);
    assert_eq!(result.state, JobResultState::Succeeded, "{result:#?}");
    assert_eq!(result.exit_code, Some(0));
    for (name, value) in hostile {
        assert_eq!(
            setup.read(name),
            value.as_bytes(),
            "parameter {name} reached the script changed"
        );
    }
    // Nothing was executed from a parameter: no `pwned` anywhere it could
    // have been made.
    for dir in [
        setup.root(),
        setup.state(),
        PathBuf::from("."),
        PathBuf::from("/"),
    ] {
        assert!(!dir.join("pwned").exists(), "{} holds pwned", dir.display());
    }
    assert_eq!(fs::read_dir(".").unwrap().count(), before_cwd.len());
    assert_eq!(
        String::from_utf8(setup.read("pwd")).unwrap().trim(),
        setup.root().to_str().unwrap(),
        "the script runs in the root"
    );

    // The environment is cleared to the documented minimum (the shell adds
    // PWD and friends itself).
    let env = String::from_utf8(setup.read("env")).unwrap();
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .filter(|name| !["PWD", "OLDPWD", "SHLVL", "_"].contains(name))
        .collect();
    names.sort();
    let mut expected = vec!["HOME", "LANG", "MUSTER_JOB_ID", "MUSTER_ROOT", "PATH"];
    let params: Vec<String> = hostile
        .iter()
        .map(|(name, _)| format!("MUSTER_PARAM_{}", name.to_uppercase()))
        .collect();
    expected.extend(params.iter().map(String::as_str));
    expected.sort();
    assert_eq!(names, expected, "{env}");
    assert!(env.contains("MUSTER_JOB_ID=params-1\n"), "{env}");
    assert!(env.contains("LANG=C.UTF-8\n"), "{env}");
    // The script's file is gone.
    assert_eq!(
        fs::read_dir(setup.state().join("jobs").join("scripts"))
            .map(|dir| dir.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn output_exit_codes_and_timeouts_are_reported() {
    let setup = Setup::new("job-outcomes");
    let runner = setup.runner();
    let failing = setup.key.sign(&job(
        "fails",
        JobKind::Script(script("echo out; echo err >&2; exit 3\n", &[])),
    ));
    let result = run(&runner, &failing);
    assert_eq!(
        (result.state, result.exit_code),
        (JobResultState::Failed, Some(3))
    );
    assert_eq!(
        (result.stdout.as_str(), result.stderr.as_str()),
        ("out\n", "err\n")
    );
    assert_eq!(
        result.message.as_deref(),
        Some("the job exited with code 3")
    );

    let loud = setup.key.sign(&job(
        "loud",
        JobKind::Script(script("head -c 200000 /dev/zero | tr '\\0' x\n", &[])),
    ));
    let result = run(&runner, &loud);
    assert_eq!(result.state, JobResultState::Succeeded);
    assert!(result.stdout.starts_with(&"x".repeat(65_536)));
    assert!(
        result.stdout.ends_with("… truncated (200000 bytes in all)"),
        "{}",
        &result.stdout[65_500..]
    );

    // The script starts a background process and hangs: at the timeout the
    // whole process group goes, the background process too.
    let mut hanging = script(
        "sleep 1000 &\necho $! > \"$MUSTER_ROOT/child\"\nsleep 1000\n",
        &[],
    );
    hanging.timeout_secs = 1;
    let result = run(
        &runner,
        &setup.key.sign(&job("hangs", JobKind::Script(hanging))),
    );
    assert_eq!(result.state, JobResultState::TimedOut, "{result:#?}");
    assert_eq!(result.exit_code, None);
    let child = String::from_utf8(setup.read("child")).unwrap();
    let proc = PathBuf::from(format!("/proc/{}", child.trim()));
    assert!(
        eventually(Duration::from_secs(30), || !is_alive(&proc)),
        "the background process survived the timeout"
    );
}

/// Whether a /proc entry is a live (not zombie) process.
fn is_alive(proc: &Path) -> bool {
    fs::read_to_string(proc.join("stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn a_job_delivered_twice_runs_once() {
    let setup = Setup::new("job-twice");
    let body = "echo run >> \"$MUSTER_ROOT/count\"\necho done\n";
    let signed = setup
        .key
        .sign(&job("once-1", JobKind::Script(script(body, &[]))));
    let first = run(&setup.runner(), &signed);
    assert_eq!(first.state, JobResultState::Succeeded);
    // Delivered again, to this runner and to a new one (an agent restart).
    let again = run(&setup.runner(), &signed);
    let once_more = run(&setup.runner(), &signed);
    assert_eq!(setup.read("count"), b"run\n", "the job ran more than once");
    assert_eq!(again, first, "the same result is reported again");
    assert_eq!(once_more, first);
    // Its result waits in the ledger until the controller has it.
    let runner = setup.runner();
    assert_eq!(runner.ledger().unreported().unwrap(), vec![first.clone()]);
    runner.ledger().mark_reported("once-1").unwrap();
    assert!(runner.ledger().unreported().unwrap().is_empty());
    // Delivered again after that: sent again (the controller asked).
    run(&runner, &signed);
    assert_eq!(runner.ledger().unreported().unwrap(), vec![first]);
    assert_eq!(setup.read("count"), b"run\n");
}

#[test]
fn a_job_the_agent_stopped_in_is_reported_failed_and_never_run_again() {
    let setup = Setup::new("job-crash");
    let body = "echo run >> \"$MUSTER_ROOT/count\"\n";
    let signed = setup
        .key
        .sign(&job("crash-1", JobKind::Script(script(body, &[]))));
    // The agent records the job and dies before (or while) it runs.
    let ready = match setup.runner().prepare(&signed, now()) {
        Prepared::Run(ready) => ready,
        other => panic!("expected to run it: {other:?}"),
    };
    drop(ready);

    // A new agent process starts: the job is settled as failed.
    let runner = setup.runner();
    assert_eq!(runner.recover(now()).unwrap(), ["crash-1"]);
    let unreported = runner.ledger().unreported().unwrap();
    assert_eq!(unreported.len(), 1);
    let result = &unreported[0];
    assert_eq!(result.state, JobResultState::Failed);
    assert_eq!(result.message.as_deref(), Some(STOPPED_WHILE_RUNNING));
    // Delivered again: not run, the same result reported.
    assert_eq!(&run(&runner, &signed), result);
    assert!(
        !setup.root().join("count").exists(),
        "the job ran after all"
    );
    assert!(runner.recover(now()).unwrap().is_empty(), "settled once");
}

#[test]
fn jobs_that_fail_a_check_are_refused_and_never_run() {
    let setup = Setup::new("job-refused");
    let runner = setup.runner();
    let body = "echo run >> \"$MUSTER_ROOT/ran\"\n";
    let genuine = job("refuse-1", JobKind::Script(script(body, &[])));
    let signed = setup.key.sign(&genuine);

    let tampered = SignedJob {
        job: signed.job.replace("echo run", "echo pwn"),
        ..signed.clone()
    };
    let other_host = setup.key.sign(&Job {
        host_id: "host-2".into(),
        job_id: "refuse-2".into(),
        ..genuine.clone()
    });
    let expired = setup.key.sign(&Job {
        job_id: "refuse-3".into(),
        issued_at: now() - 7_200,
        expires_at: now() - 3_600,
        ..genuine.clone()
    });
    let foreign = Key::new().sign(&Job {
        job_id: "refuse-4".into(),
        ..genuine.clone()
    });
    // A genuine bundle signature, delivered as a job.
    let desired = Desired::default();
    let bundle = Bundle {
        host_id: HOST.into(),
        host_name: "web-01".into(),
        generation: 1,
        commit: "abc".into(),
        issued_at: now(),
        expires_at: now() + 3_600,
        content_hash: desired.content_hash(),
        desired,
    };
    let bundle_text = bundle.to_canonical_json_string();
    let bundle_as_job = SignedJob {
        signature: setup.key.sign_bytes(
            bundle_text.as_bytes(),
            &bundle.trusted_comment().to_string(),
        ),
        job: bundle_text,
    };

    let cases = [
        (
            "tampered",
            &tampered,
            Some("refuse-1"),
            "job signature does not verify",
        ),
        (
            "another host's",
            &other_host,
            Some("refuse-2"),
            "job is for host `host-2`",
        ),
        ("expired", &expired, Some("refuse-3"), "job expired at"),
        (
            "foreign",
            &foreign,
            Some("refuse-4"),
            "job is signed by another key",
        ),
        (
            "a bundle",
            &bundle_as_job,
            None,
            "job signature's trusted comment is malformed",
        ),
    ];
    for (what, signed, job_id, reason) in cases {
        let result = runner.process(signed, now());
        match (job_id, result) {
            (Some(job_id), Some(result)) => {
                assert_eq!(result.job_id, job_id, "{what}");
                assert_eq!(result.state, JobResultState::Refused, "{what}");
                let message = result.message.unwrap_or_default();
                assert!(
                    message.starts_with(&format!("job refused: {reason}")),
                    "{what}: {message}"
                );
            }
            (None, None) => {}
            (expected, got) => panic!("{what}: expected {expected:?}, got {got:?}"),
        }
        assert!(!setup.root().join("ran").exists(), "{what} ran");
    }
    // Only the expired job, which verified, is in the ledger; the others
    // could have been made up by anyone.
    let recorded: Vec<String> = runner
        .ledger()
        .entries()
        .unwrap()
        .into_iter()
        .map(|entry| entry.job_id)
        .collect();
    assert_eq!(recorded, ["refuse-3"]);

    // The genuine job still runs: a forged copy did not use up its id.
    assert_eq!(run(&runner, &signed).state, JobResultState::Succeeded);
    assert_eq!(setup.read("ran"), b"run\n");
}

#[test]
fn a_sandbox_refuses_what_it_cannot_contain() {
    let setup = Setup::new("job-sandbox");
    let runner = setup.runner();
    let mut as_other = script("echo run >> \"$MUSTER_ROOT/ran\"\n", &[]);
    as_other.run_as = Some("nobody".into());
    let mut as_me = as_other.clone();
    as_me.run_as = Some(current_user());
    let cases = [
        ("reboot", JobKind::Reboot, SANDBOXED),
        (
            "service",
            JobKind::Service(ServiceJob {
                name: "nginx".into(),
                operation: ServiceOperation::Restart,
            }),
            SANDBOXED,
        ),
        ("run-as", JobKind::Script(as_other), RUN_AS_SANDBOXED),
    ];
    for (id, kind, message) in cases {
        let result = run(&runner, &setup.key.sign(&job(id, kind)));
        assert_eq!(result.state, JobResultState::Refused, "{id}");
        assert_eq!(result.message.as_deref(), Some(message), "{id}");
    }
    assert!(!setup.root().join("ran").exists());
    // run_as naming the agent's own user is no switch: it runs.
    let result = run(
        &runner,
        &setup.key.sign(&job("run-as-me", JobKind::Script(as_me))),
    );
    assert_eq!(result.state, JobResultState::Succeeded, "{result:#?}");
    assert_eq!(setup.read("ran"), b"run\n");

    // Names that could be taken for options are refused before anything.
    let bad = [
        (
            "bad-unit",
            JobKind::Service(ServiceJob {
                name: "--now".into(),
                operation: ServiceOperation::Stop,
            }),
        ),
        (
            "bad-param",
            JobKind::Script(script("true\n", &[("A-B", "x")])),
        ),
        (
            "relative",
            JobKind::Script(ScriptJob {
                interpreter: "sh".into(),
                ..script("true\n", &[])
            }),
        ),
    ];
    for (id, kind) in bad {
        let result = run(&runner, &setup.key.sign(&job(id, kind)));
        assert_eq!(result.state, JobResultState::Refused, "{id}: {result:#?}");
    }
}

/// The name of the user the tests run as.
fn current_user() -> String {
    let output = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn service_and_reboot_jobs_drive_systemctl() {
    let setup = Setup::new("job-systemctl");
    let tools = StandIns::new("job-systemctl-tools");
    tools.tool("systemctl", "exit 0");
    let runner = setup.runner_in(tools.context());
    let restart = JobKind::Service(ServiceJob {
        name: "nginx.service".into(),
        operation: ServiceOperation::Restart,
    });
    assert_eq!(
        run(&runner, &setup.key.sign(&job("svc-1", restart))).state,
        JobResultState::Succeeded
    );
    assert_eq!(
        run(&runner, &setup.key.sign(&job("reboot-1", JobKind::Reboot))).state,
        JobResultState::Succeeded
    );
    assert_eq!(
        tools.take_log(),
        [
            argv(&["systemctl", "restart", "nginx.service"]),
            argv(&["systemctl", "reboot"])
        ]
    );
    tools.tool(
        "systemctl",
        "echo 'Unit nginx.service not found.' >&2; exit 5",
    );
    let stop = JobKind::Service(ServiceJob {
        name: "nginx.service".into(),
        operation: ServiceOperation::Stop,
    });
    let result = run(&runner, &setup.key.sign(&job("svc-2", stop)));
    assert_eq!(
        (result.state, result.exit_code),
        (JobResultState::Failed, Some(5))
    );
    assert_eq!(result.stderr, "Unit nginx.service not found.\n");
}

#[test]
fn scripts_run_as_another_user_through_runuser() {
    let setup = Setup::new("job-runas");
    let runner = setup.runner_in(Context::new());
    if current_user() != "root" || muster_agent::command::find_program("runuser", None).is_none() {
        eprintln!("skipped: switching users needs root and runuser");
        return;
    }
    let mut as_nobody = script(
        "id -un\nprintf '%s' \"$MUSTER_PARAM_X\"\n",
        &[("x", "$(id)")],
    );
    as_nobody.run_as = Some("nobody".into());
    let result = run(
        &runner,
        &setup.key.sign(&job("nobody-1", JobKind::Script(as_nobody))),
    );
    assert_eq!(result.state, JobResultState::Succeeded, "{result:#?}");
    assert_eq!(result.stdout, "nobody\n$(id)");
    let mut as_ghost = script("true\n", &[]);
    as_ghost.run_as = Some("muster-no-such-user".into());
    let result = run(
        &runner,
        &setup.key.sign(&job("ghost-1", JobKind::Script(as_ghost))),
    );
    assert_eq!(result.state, JobResultState::Failed);
    assert!(
        result
            .message
            .unwrap_or_default()
            .starts_with("there is no user `muster-no-such-user`")
    );
}
