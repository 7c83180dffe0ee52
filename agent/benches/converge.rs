//! Benchmark for the agent budgets (DESIGN.md §10, issue 4): converging 100
//! and 1,000 files of 1 KiB in 10 directories, mode 0644, in a temp root —
//! first apply, no-op re-run, and repair after 10 files drifted — and the
//! resident memory of a real `muster-agent run` process that has applied a
//! 1,000-file bundle and waits on its long poll.
//!
//! The converge runs call `resources::converge` as the agent does, with
//! fsync'd atomic writes, each run in a fresh root. The memory is measured
//! on the real binary against a minimal fake controller in this process: it
//! answers the first bundle request with a signed 1,000-file bundle, accepts
//! reports, and holds the next long poll (and the jobs long poll); once the
//! agent is waiting on it,
//! the benchmark reads `VmRSS` (and the peak, `VmHWM`) from
//! `/proc/PID/status`.
//!
//! `cargo bench -p muster-agent --bench converge` runs one warm-up and nine
//! measured runs per size and prints min / median / max and the verdicts.
//! Run without `--bench` (as `cargo test --all-targets` does), it converges
//! 100 files once and measures the agent on a 100-file bundle, as a smoke
//! test of the benchmark itself.

use std::fs;
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use muster_agent::resources::{Context, converge};
use muster_schemas::bundle::{Bundle, BundleAgentSettings, BundleResource, Desired, SignedBundle};
use muster_schemas::model::{FileSpec, PolicyMode, Resource};
use muster_schemas::protocol::ResourceStatus;

const AGENT: &str = env!("CARGO_BIN_EXE_muster-agent");

/// The sizes the budget speaks of.
const N_FILES: [usize; 2] = [100, 1_000];
const N_DIRECTORIES: usize = 10;
const FILE_SIZE: usize = 1024;
const N_DRIFTED: usize = 10;

/// fsyncs timed to tell how fast the disk is at the time of the runs.
const N_FSYNC_PROBES: usize = 200;

const N_WARM_UP_RUNS: usize = 1;
const N_MEASURED_RUNS: usize = 9;

/// The budgets from issue 4 (DESIGN.md §10 allows 100 ms for the no-op),
/// for 1,000 files.
const BUDGET_FIRST_APPLY: Duration = Duration::from_millis(300);
const BUDGET_NO_OP: Duration = Duration::from_millis(50);
const BUDGET_REPAIR: Duration = Duration::from_millis(60);
const BUDGET_IDLE_RSS_KIB: u64 = 15 * 1024;

/// How long the agent is left waiting on its long poll before its memory
/// is read, so that what the converge run freed has been given back.
const SETTLE: Duration = Duration::from_secs(2);

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let scratch = Scratch::create();
    let (sizes, n_runs): (&[usize], usize) = if full {
        (&N_FILES, N_WARM_UP_RUNS + N_MEASURED_RUNS)
    } else {
        (&N_FILES[..1], 1)
    };

    // The disk's own speed, which this VM shares with others: it moves
    // the first apply more than anything in the agent does.
    let fsync_before = fsync_latency(&scratch.path().join("fsync-before"));
    let mut rows = Vec::new();
    for &n_files in sizes {
        let desired = desired(n_files);
        let mut runs = Vec::new();
        for run in 0..n_runs {
            // Roots are removed only at the end: removing thousands of files
            // right before a run would make the run pay for it (ext4 skips
            // recently freed inodes when it allocates new ones).
            let root = scratch.path().join(format!("converge-{n_files}-{run}"));
            fs::create_dir(&root).unwrap();
            runs.push(converge_once(&desired, &root, n_files));
        }
        let measured = &runs[n_runs - n_runs.min(N_MEASURED_RUNS)..];
        for (phase, pick) in [
            ("first apply", 0),
            ("no-op re-run", 1),
            ("repair 10 drifted", 2),
        ] {
            let times: Vec<Duration> = measured.iter().map(|run| run[pick]).collect();
            rows.push((n_files, phase, Stats::of(times)));
        }
    }

    let fsync_after = fsync_latency(&scratch.path().join("fsync-after"));
    let agent_files = *sizes.last().unwrap();
    let agent = measure_agent(&scratch, agent_files);

    println!(
        "agent converge: files of {FILE_SIZE} bytes in {N_DIRECTORIES} directories, mode 0644, fsync'd atomic writes; {} measured run(s) per size{}",
        n_runs.min(N_MEASURED_RUNS),
        if full { ", after one warm-up" } else { "" }
    );
    println!(
        "disk: one fsync'd write of a new {FILE_SIZE}-byte file, one after the other, median {} before the runs and {} after",
        ms(fsync_before.median),
        ms(fsync_after.median)
    );
    println!();
    println!("| files | phase | min | median | max |");
    println!("|---:|---|---:|---:|---:|");
    for (n_files, phase, stats) in &rows {
        println!(
            "| {n_files} | {phase} | {} | {} | {} |",
            ms(stats.min),
            ms(stats.median),
            ms(stats.max)
        );
    }
    println!();
    println!(
        "`muster-agent run` against a fake controller, {agent_files} files: process start → waiting on its next long poll in {} (fetch, verify, converge, record, report)",
        ms(agent.applied_after)
    );
    println!(
        "idle RSS, waiting on the long poll: {:.1} MiB ({:.1} MiB anonymous, {:.1} MiB of mapped files); peak during the run: {:.1} MiB",
        mib(agent.rss_kib),
        mib(agent.anon_kib),
        mib(agent.file_kib),
        mib(agent.peak_kib)
    );
    if full {
        println!();
        let median = |files, phase| {
            rows.iter()
                .find(|row| row.0 == files && row.1 == phase)
                .map(|row| row.2.median)
                .unwrap()
        };
        verdict(
            "first apply of 1,000 files",
            median(1_000, "first apply") <= BUDGET_FIRST_APPLY,
            BUDGET_FIRST_APPLY,
        );
        verdict(
            "no-op of 1,000 files",
            median(1_000, "no-op re-run") <= BUDGET_NO_OP,
            BUDGET_NO_OP,
        );
        verdict(
            "repair of 10 of 1,000 files",
            median(1_000, "repair 10 drifted") <= BUDGET_REPAIR,
            BUDGET_REPAIR,
        );
        println!(
            "idle RSS: {} (budget {} MiB)",
            if agent.rss_kib <= BUDGET_IDLE_RSS_KIB {
                "within budget"
            } else {
                "OVER BUDGET"
            },
            BUDGET_IDLE_RSS_KIB / 1024
        );
    }
}

fn verdict(what: &str, within: bool, budget: Duration) {
    println!(
        "{what}: {} (median; budget {})",
        if within {
            "within budget"
        } else {
            "OVER BUDGET"
        },
        ms(budget)
    );
}

/// One timeline in a fresh root: first apply, no-op, repair after drift.
fn converge_once(desired: &Desired, root: &Path, n_files: usize) -> [Duration; 3] {
    let ctx = Context::new().with_root(root);

    let started = Instant::now();
    let reports = converge(desired, &ctx, false);
    let first = started.elapsed();
    assert!(
        reports.iter().all(|r| r.status == ResourceStatus::Changed),
        "the first apply did not write every file: {:?}",
        reports.iter().find(|r| r.status != ResourceStatus::Changed)
    );

    let started = Instant::now();
    let reports = converge(desired, &ctx, false);
    let no_op = started.elapsed();
    assert!(reports.iter().all(|r| r.status == ResourceStatus::InSync));

    for n in (0..n_files).step_by(n_files / N_DRIFTED) {
        fs::write(root.join(relative_path(n)), "drifted\n").unwrap();
    }
    let started = Instant::now();
    let reports = converge(desired, &ctx, false);
    let repair = started.elapsed();
    let changed = reports
        .iter()
        .filter(|r| r.status == ResourceStatus::Changed)
        .count();
    assert_eq!(changed, N_DRIFTED);
    assert!(reports.iter().all(|r| r.status != ResourceStatus::Failed));

    [first, no_op, repair]
}

/// How long creating, writing and fsyncing one new file of [`FILE_SIZE`]
/// bytes in `dir` takes, one file after the other (no rename, no directory
/// fsync).
fn fsync_latency(dir: &Path) -> Stats {
    fs::create_dir(dir).unwrap();
    let content = content(0);
    let times = (0..N_FSYNC_PROBES)
        .map(|n| {
            let started = Instant::now();
            let mut file = fs::File::create_new(dir.join(n.to_string())).unwrap();
            file.write_all(content.as_bytes()).unwrap();
            file.sync_all().unwrap();
            started.elapsed()
        })
        .collect();
    Stats::of(times)
}

fn relative_path(n: usize) -> String {
    format!("srv/app/d{}/f{n}.conf", n % N_DIRECTORIES)
}

/// `n_files` file resources of [`FILE_SIZE`] bytes, mode 0644, spread over
/// [`N_DIRECTORIES`] directories.
fn desired(n_files: usize) -> Desired {
    let resources = (0..n_files)
        .map(|n| {
            let resource = Resource::File(FileSpec {
                path: format!("/{}", relative_path(n)).parse().unwrap(),
                content: Some(content(n)),
                mode: Some("0644".parse().unwrap()),
                ..FileSpec::default()
            });
            BundleResource {
                id: resource.id(),
                policy: "bench".into(),
                mode: PolicyMode::Enforce,
                resource,
            }
        })
        .collect();
    Desired {
        settings: BundleAgentSettings {
            // No re-converge while the memory is measured.
            interval_secs: 3_600,
            splay_secs: 0,
            metrics_interval_secs: 60,
        },
        resources,
        checks: Vec::new(),
    }
}

/// Text like a configuration file's, exactly [`FILE_SIZE`] bytes.
fn content(n: usize) -> String {
    let line = format!("setting_{n} = value of file {n}\n");
    let mut text = line.repeat(FILE_SIZE / line.len() + 1);
    text.truncate(FILE_SIZE);
    text
}

#[derive(Debug)]
struct Stats {
    min: Duration,
    median: Duration,
    max: Duration,
}

impl Stats {
    fn of(mut times: Vec<Duration>) -> Stats {
        times.sort();
        Stats {
            min: times[0],
            median: times[times.len() / 2],
            max: times[times.len() - 1],
        }
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What the real agent process came to.
struct AgentMeasurement {
    applied_after: Duration,
    rss_kib: u64,
    /// Of which anonymous memory (heap, stacks) and the mapped binary.
    anon_kib: u64,
    file_kib: u64,
    peak_kib: u64,
}

/// Runs `muster-agent run` against a fake controller that serves one
/// signed bundle of `n_files` files, and reads the agent's memory once it
/// waits on its next long poll.
fn measure_agent(scratch: &Scratch, n_files: usize) -> AgentMeasurement {
    let keys = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let host_id = "h_bench";
    let now = unix_now();
    let desired = desired(n_files);
    let bundle = Bundle {
        host_id: host_id.into(),
        host_name: "bench-01".into(),
        generation: 1,
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        issued_at: now,
        expires_at: now + 3_600,
        content_hash: desired.content_hash(),
        desired,
    };
    let text = bundle.to_canonical_json_string();
    let signature = minisign::sign(
        Some(&keys.pk),
        &keys.sk,
        Cursor::new(text.as_bytes()),
        Some(&bundle.trusted_comment().to_string()),
        Some("muster bundle signature"),
    )
    .unwrap();
    let signed = SignedBundle {
        bundle: text,
        signature: signature.into_string(),
    };
    let controller = FakeController::start(serde_json::to_vec(&signed).unwrap());

    let dir = scratch.path().join("agent");
    let root = dir.join("root");
    fs::create_dir_all(&root).unwrap();
    let config = dir.join("agent.yaml");
    let config_json = serde_json::json!({
        "server": format!("http://{}", controller.address),
        "host_id": host_id,
        "secret": "bench-secret-bench-secret-bench-secret",
        "public_key": keys.pk.to_base64(),
        "name": "bench-01",
    });
    fs::write(&config, config_json.to_string()).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let log = dir.join("agent.log");

    let started = Instant::now();
    let mut agent = KillOnDrop(
        Command::new(AGENT)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--root")
            .arg(&root)
            .env("MUSTER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    controller.wait_for_held_poll(&mut agent.0, &log);
    let applied_after = started.elapsed();
    let written = fs::read_dir(root.join("srv/app/d0")).unwrap().count();
    assert_eq!(
        written,
        n_files / N_DIRECTORIES,
        "the agent did not converge"
    );
    std::thread::sleep(SETTLE);
    let status = fs::read_to_string(format!("/proc/{}/status", agent.0.id())).unwrap();
    AgentMeasurement {
        applied_after,
        rss_kib: status_kib(&status, "VmRSS:"),
        anon_kib: status_kib(&status, "RssAnon:"),
        file_kib: status_kib(&status, "RssFile:"),
        peak_kib: status_kib(&status, "VmHWM:"),
    }
}

/// A `kB` field of `/proc/PID/status`.
fn status_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Just enough of the controller's `/v1` API for one agent: the first
/// bundle request gets the bundle, reports are accepted, and later bundle
/// requests and every jobs request are held open (as a long poll with
/// nothing new is) until the agent goes away. Request signatures are not
/// checked.
struct FakeController {
    address: std::net::SocketAddr,
    held_polls: Arc<(Mutex<usize>, Condvar)>,
}

impl FakeController {
    fn start(bundle_json: Vec<u8>) -> FakeController {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let held_polls = Arc::new((Mutex::new(0), Condvar::new()));
        let bundle_json = Arc::new(bundle_json);
        let held = Arc::clone(&held_polls);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let bundle_json = Arc::clone(&bundle_json);
                let held = Arc::clone(&held);
                std::thread::spawn(move || serve(stream, &bundle_json, &held));
            }
        });
        FakeController {
            address,
            held_polls,
        }
    }

    /// Waits until the agent holds a long poll, failing if it exits.
    fn wait_for_held_poll(&self, agent: &mut Child, log: &Path) {
        let (count, changed) = &*self.held_polls;
        let mut held = count.lock().unwrap();
        while *held == 0 {
            held = changed
                .wait_timeout(held, Duration::from_millis(100))
                .unwrap()
                .0;
            if let Some(status) = agent.try_wait().unwrap() {
                panic!(
                    "the agent exited ({status}) before waiting on its long poll:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }
}

/// Serves one keep-alive connection.
fn serve(stream: TcpStream, bundle_json: &[u8], held: &(Mutex<usize>, Condvar)) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("");
        let response: Vec<u8> = if target.contains("/bundle?generation=0&") {
            let mut response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                bundle_json.len()
            )
            .into_bytes();
            response.extend_from_slice(bundle_json);
            response
        } else if target.contains("/bundle?") || target.contains("/jobs?") {
            if target.contains("/bundle?") {
                let (count, changed) = held;
                *count.lock().unwrap() += 1;
                changed.notify_all();
            }
            // Nothing new: hold the request until the agent closes the
            // connection.
            let _ = reader.read(&mut [0; 1]);
            return;
        } else if target.ends_with("/reports") {
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec()
        };
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A fresh directory under the system temp dir (canonical, so that no
/// parent is a symbolic link, which the agent refuses), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Scratch {
        let base = fs::canonicalize(std::env::temp_dir()).unwrap();
        let dir = base.join(format!("muster-bench-agent-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
