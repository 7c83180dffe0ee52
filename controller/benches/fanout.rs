//! Benchmark for the budgets "merge → 99 % of 10,000 agents holding the new bundle: under 3 s" and "agent request path with HMAC: ≥ 5,000 req/s".
//!
//! It starts a real controller (`serve::start`) on `127.0.0.1:0`, on SQLite
//! in a temporary data dir, and on PostgreSQL too when
//! `MUSTER_BENCH_POSTGRES_URL` is set (the benchmark creates a database of
//! its own there and drops it afterwards). The controller follows a Git
//! repo made from `examples/fleet-repo`. N simulated agents (10,000 by
//! default; `MUSTER_BENCH_HOSTS` changes it) enroll over HTTP with one
//! auto-approving token whose labels put every host in the example's `web`
//! group, and wait until each holds its first bundle. Then:
//!
//! 1. **fan-out**: every host sends a long-poll bundle request with the
//!    generation it holds, each on its own connection. Once all of them are
//!    held by the controller, a commit to the fleet repo changes
//!    `files/motd` (which the `motd` policy gives to every host) and a
//!    signed GitHub push webhook tells the controller to fetch. It reports
//!    the time from the commit until 50 %, 99 % and 100 % of the requests
//!    were answered `200` with a bundle of the new commit, and how many
//!    ended otherwise;
//! 2. **request throughput**: a few hundred connections send signed bundle
//!    requests that are answered at once — the current generation with
//!    `wait=0` (`304`) and generation 0 (`200` with the bundle) — for a few
//!    seconds each, and it reports requests per second.
//!
//! `cargo bench -p muster-controller --bench fanout` runs it in full. Run
//! without `--bench` (as `cargo test --all-targets` does), it goes through
//! the same steps with 20 hosts and short phases, as a smoke test, and
//! prints no verdict.
//!
//! The controller runs in a child process (this program again, see
//! `controller_main`), so that each process holds one socket per waiting
//! request: the open-files limit must be above N plus a few hundred.
//! The benchmark checks it and says so; `ulimit -n 65536` in the shell
//! raises it where that is allowed. The agents share the machine's cores
//! with the controller, so the figures are on the pessimistic side; the
//! benchmark reports the CPU time that the controller, its SQLite threads
//! and the agents used in each phase. `MUSTER_LOG=info` shows the
//! controller's log.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use muster_controller::cli::DataArgs;
use muster_controller::commands::serve::{self, Config, Running};
use muster_controller::server::agent_api::token_hash;
use muster_controller::store::{Store, TokenRecord};
use muster_schemas::bundle::SignedBundle;
use muster_schemas::protocol::{EnrollResponse, auth};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::Executor;

/// The fleet size the budgets speak of.
const DEFAULT_HOSTS: usize = 10_000;
/// The fleet size of a smoke run (without `--bench`).
const SMOKE_HOSTS: usize = 20;
const HOSTS_ENV: &str = "MUSTER_BENCH_HOSTS";
const POSTGRES_ENV: &str = "MUSTER_BENCH_POSTGRES_URL";

/// Budgets from DESIGN.md §10, for the verdict lines.
const FANOUT_BUDGET: Duration = Duration::from_secs(3);
const THROUGHPUT_BUDGET: f64 = 5_000.0;

/// Enrollments and first bundle fetches in flight at once.
const SETUP_CONCURRENCY: usize = 64;
/// The waiting requests are spread over this many HTTP clients, so that no
/// single connection pool holds all of them.
const FANOUT_CLIENTS: usize = 64;
/// Long-poll requests started per batch, and the pause between batches,
/// so that the listener's accept backlog (1,024) does not overflow.
const FANOUT_BATCH: usize = 250;
const FANOUT_BATCH_PAUSE: Duration = Duration::from_millis(25);
/// What the agents ask for: the controller's default limit.
const LONG_POLL_WAIT_SECS: u64 = 55;
/// Connections of the throughput phases, over a few clients.
const THROUGHPUT_CONNECTIONS: usize = 256;
const THROUGHPUT_CLIENTS: usize = 8;
/// Open files per process besides one socket per waiting request: the
/// database, the Git mirror, the runtimes, standard streams.
const SPARE_FILES: u64 = 256;

const WEBHOOK_SECRET: &str = "bench-webhook-secret";

/// How long each phase may take before the benchmark gives up; none of
/// these is a performance assertion.
const ENROLL_DEADLINE: Duration = Duration::from_secs(30 * 60);
const FIRST_BUNDLES_DEADLINE: Duration = Duration::from_secs(10 * 60);
const ALL_WAITING_DEADLINE: Duration = Duration::from_secs(180);
const FANOUT_DEADLINE: Duration = Duration::from_secs(LONG_POLL_WAIT_SECS + 30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How this run is sized.
#[derive(Debug, Clone, Copy)]
struct Settings {
    full: bool,
    n_hosts: usize,
    throughput_phase: Duration,
    throughput_warm_up: Duration,
}

fn main() {
    if let Ok(spec) = std::env::var(CONTROLLER_ENV) {
        controller_main(&spec);
        return;
    }
    let full = std::env::args().any(|arg| arg == "--bench");
    let n_hosts = match std::env::var(HOSTS_ENV) {
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => fail(&format!(
                "{HOSTS_ENV} must be a positive number of hosts, not `{text}`"
            )),
        },
        Err(_) if full => DEFAULT_HOSTS,
        Err(_) => SMOKE_HOSTS,
    };
    let settings = Settings {
        full,
        n_hosts,
        throughput_phase: if full {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(500)
        },
        throughput_warm_up: if full {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        },
    };
    check_open_files(n_hosts);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut results = Vec::new();
    results.push(run_backend(settings, Backend::Sqlite));
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.trim().is_empty() => {
            results.push(run_backend(settings, Backend::Postgres(url)))
        }
        _ => println!(
            "(PostgreSQL skipped: set {POSTGRES_ENV}=postgres://USER@HOST/DB to measure it too)"
        ),
    }
    print_summary(settings, &results);
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2);
}

/// Every waiting request holds a socket in this process and one in the
/// controller's: refuses to start when they cannot all be open.
fn check_open_files(n_hosts: usize) {
    let needed = n_hosts.max(THROUGHPUT_CONNECTIONS) as u64 + SPARE_FILES;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<u64>().ok());
    match soft {
        Some(soft) if soft < needed => fail(&format!(
            "the open-files limit is {soft}, but {n_hosts} waiting requests need about {needed} \
             (one socket per waiting request in each process): run `ulimit -n 65536` in this shell first, \
             or lower {HOSTS_ENV}"
        )),
        Some(_) => {}
        None => println!("(cannot read the open-files limit; {needed} files will be open)"),
    }
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }
}

/// What one backend measured.
#[derive(Debug)]
struct BackendResult {
    backend: &'static str,
    fanout: FanoutResult,
    throughput: Vec<ThroughputResult>,
}

fn run_backend(settings: Settings, backend: Backend) -> BackendResult {
    println!();
    println!("=== {} · {} hosts ===", backend.name(), settings.n_hosts);
    println!("load average before: {}", load_average());
    // The controller runs in a process of its own (see `controller_main`):
    // every waiting request holds a socket at each end, and this way each
    // process needs only one per host under its open-files limit.
    let agents_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-agents")
        .enable_all()
        .build()
        .expect("the agents' runtime starts");
    let result = agents_runtime.block_on(async move {
        // The PostgreSQL database first: when it cannot be created, the
        // benchmark stops and leaves nothing behind.
        let postgres = match &backend {
            Backend::Sqlite => None,
            Backend::Postgres(server_url) => Some(Database::postgres(server_url).await),
        };
        let dir = TempDir::new();
        let database = postgres.unwrap_or_else(|| Database::sqlite(&dir.path));
        let fleet = FleetRepo::from_example(&dir.path);
        let (process, address) = ControllerProcess::start(&ControllerSpec {
            data_dir: dir.path.join("data"),
            database_url: database.url.clone(),
            repo: fleet.path.clone(),
        });
        let controller = Controller {
            base: format!("http://{address}"),
            port: address.port(),
            pid: process.pid(),
            store: Store::open(&database.url)
                .await
                .expect("the database opens"),
        };
        println!(
            "controller on {} ({}, process {})",
            controller.base,
            backend.name(),
            controller.pid
        );

        let mut agents = enroll_all(&controller, settings.n_hosts).await;
        fetch_first_bundles(&controller, &mut agents).await;
        let fanout = fanout(&controller, &fleet, &mut agents).await;
        let throughput = throughput(&controller, &agents, settings).await;

        controller.store.close().await;
        process.stop();
        drop(database);
        drop(dir);
        BackendResult {
            backend: backend.name(),
            fanout,
            throughput,
        }
    });
    agents_runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Set in the controller's process: what it serves, as JSON.
const CONTROLLER_ENV: &str = "MUSTER_BENCH_FANOUT_CONTROLLER";

/// What the controller's process needs to know.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ControllerSpec {
    data_dir: PathBuf,
    database_url: String,
    repo: PathBuf,
}

/// The controller's process: this program again, started with
/// `CONTROLLER_ENV` set. It prints its address on standard output and
/// stops when its standard input closes.
fn controller_main(spec: &str) {
    // `MUSTER_LOG=info` shows what the controller does, with timestamps.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let spec: ControllerSpec = serde_json::from_str(spec).expect("a controller spec");
    let config = Config {
        data: DataArgs {
            data_dir: spec.data_dir,
            database_url: Some(spec.database_url),
        },
        repo: spec.repo.display().to_string(),
        branch: "main".into(),
        path: None,
        listen: "127.0.0.1:0".into(),
        public_url: "http://127.0.0.1".into(),
        fetch_interval: Duration::from_millis(200),
        long_poll: Duration::from_secs(60),
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        tls: None,
        audit_remote: None,
        user_auth: Default::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("muster-srv")
        .enable_all()
        .build()
        .expect("the controller's runtime starts");
    runtime.block_on(async move {
        let running: Running = serve::start(config)
            .await
            .unwrap_or_else(|err| fail(&format!("the controller does not start: {err}")));
        println!("{}", running.address);
        std::io::Write::flush(&mut std::io::stdout()).expect("standard output");
        let _ = tokio::task::spawn_blocking(|| {
            let mut rest = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
        })
        .await;
        running.stop().await.expect("the controller stops cleanly");
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
}

/// The controller's process, stopped when dropped (also when the
/// benchmark panics).
struct ControllerProcess {
    child: std::process::Child,
}

impl ControllerProcess {
    fn start(spec: &ControllerSpec) -> (ControllerProcess, std::net::SocketAddr) {
        let program = std::env::current_exe().expect("the benchmark's own path");
        let mut child = std::process::Command::new(program)
            .env(
                CONTROLLER_ENV,
                serde_json::to_string(spec).expect("a controller spec"),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("the controller's process starts");
        let stdout = child
            .stdout
            .take()
            .expect("the controller's standard output");
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let process = ControllerProcess { child };
        let address = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "the controller's process did not start (it said `{}`)",
                line.trim()
            )
        });
        (process, address)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        // Closing its standard input asks for a graceful stop.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("the controller's process ended with {status}");
                    }
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        eprintln!("the controller's process did not stop within 20 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The controller under test, as the agents see it, plus a direct line to
/// its database for setup and progress.
struct Controller {
    base: String,
    port: u16,
    /// The controller's process, for its CPU time.
    pid: u32,
    store: Store,
}

/// A simulated agent.
#[derive(Debug, Clone)]
struct Agent {
    host_id: String,
    key: [u8; 32],
    /// The generation of the bundle it holds.
    generation: u64,
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(30))
        .timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .expect("an HTTP client")
}

/// Nonces: a random prefix per run and a counter, 32 characters.
struct Nonces {
    prefix: String,
    next: AtomicUsize,
}

impl Nonces {
    fn new() -> Nonces {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("random bytes");
        Nonces {
            prefix: hex::encode(bytes),
            next: AtomicUsize::new(0),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}{:016x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// A signed bundle request, as the agent sends it.
fn bundle_request(
    client: &reqwest::Client,
    base: &str,
    agent: &Agent,
    nonces: &Nonces,
    generation: u64,
    wait: u64,
) -> reqwest::RequestBuilder {
    let path = format!(
        "/v1/hosts/{}/bundle?generation={generation}&wait={wait}",
        agent.host_id
    );
    let timestamp = muster_controller::server::now();
    let nonce = nonces.next();
    let signature = auth::sign(&agent.key, "GET", &path, timestamp, &nonce, b"");
    client
        .get(format!("{base}{path}"))
        .header(auth::HEADER_HOST, &agent.host_id)
        .header(auth::HEADER_TIMESTAMP, timestamp.to_string())
        .header(auth::HEADER_NONCE, nonce)
        .header(auth::HEADER_SIGNATURE, signature)
}

/// Runs `work(i)` for `i` in `0..n` with at most `concurrency` in flight,
/// printing progress every two seconds; returns the results in order.
async fn bounded<T, F, Fut>(
    what: &str,
    n: usize,
    concurrency: usize,
    deadline: Duration,
    work: F,
) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let (work, next, done) = (Arc::clone(&work), Arc::clone(&next), Arc::clone(&done));
        workers.spawn(async move {
            let mut results = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return results;
                }
                results.push((i, work(i).await));
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let progress = {
        let (done, what) = (Arc::clone(&done), what.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let done = done.load(Ordering::Relaxed);
                let rate = done as f64 / started.elapsed().as_secs_f64();
                println!("  {what}: {done}/{n} ({rate:.0}/s)");
            }
        })
    };
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let joined = tokio::time::timeout(deadline, async {
        while let Some(batch) = workers.join_next().await {
            for (i, result) in batch.expect("a setup worker") {
                results[i] = Some(result);
            }
        }
    })
    .await;
    progress.abort();
    if joined.is_err() {
        panic!("gave up: {what} took longer than {deadline:?}");
    }
    println!("  {what}: {n} in {:.1} s", started.elapsed().as_secs_f64());
    results
        .into_iter()
        .map(|result| result.expect("every item was done"))
        .collect()
}

/// Enrolls `n` hosts over HTTP with one multi-use, auto-approving token.
async fn enroll_all(controller: &Controller, n: usize) -> Vec<Agent> {
    let token = format!("mt_bench_{}", Nonces::new().prefix);
    let now = muster_controller::server::now();
    let record = TokenRecord {
        id: Nonces::new().prefix[..8].to_string(),
        max_uses: i64::try_from(n).expect("the host count fits") + 1,
        uses: 0,
        // `role: web` puts every host in the example's `web` group (and
        // `all`), so each gets the nginx site, the motd, SSH hardening and
        // the admin user.
        labels: BTreeMap::from([
            ("role".to_string(), "web".to_string()),
            ("env".to_string(), "bench".to_string()),
        ]),
        auto_approve: true,
        created_at: now,
        expires_at: now + 24 * 3600,
        revoked_at: None,
    };
    controller
        .store
        .create_token(&record, &token_hash(&token))
        .await
        .expect("the token is stored");
    let client = http_client();
    let url: Arc<str> = format!("{}/v1/enroll", controller.base).into();
    let token: Arc<str> = token.into();
    println!("enrolling {n} hosts over HTTP, {SETUP_CONCURRENCY} at a time");
    bounded("enrolled", n, SETUP_CONCURRENCY, ENROLL_DEADLINE, move |i| {
        let (client, url, token) = (client.clone(), Arc::clone(&url), Arc::clone(&token));
        async move {
            let name = format!("bench-{i:06}");
            let body = json!({"token": &*token, "name": name, "facts": {"os": "debian", "arch": "x86_64"}});
            let response = client
                .post(&*url)
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|err| panic!("enrollment of {name} failed: {err}"));
            let status = response.status();
            if status != reqwest::StatusCode::CREATED {
                let text = response.text().await.unwrap_or_default();
                panic!("enrollment of {name} answered {status}: {text}");
            }
            let enrolled: EnrollResponse = response.json().await.expect("an enrollment response");
            Agent {
                host_id: enrolled.host_id,
                key: auth::derive_key(&enrolled.secret),
                generation: 0,
            }
        }
    })
    .await
}

/// Waits until the controller has issued every host its first bundle, then
/// fetches each one over HTTP to learn the generation the host holds.
async fn fetch_first_bundles(controller: &Controller, agents: &mut [Agent]) {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let n_issued = controller
            .store
            .bundle_heads()
            .await
            .expect("bundle heads are readable")
            .len();
        if n_issued >= agents.len() {
            break;
        }
        assert!(
            started.elapsed() < FIRST_BUNDLES_DEADLINE,
            "gave up: only {n_issued} of {} hosts got a bundle in {FIRST_BUNDLES_DEADLINE:?}",
            agents.len()
        );
        if last_report.elapsed() >= Duration::from_secs(2) {
            println!("  first bundles issued: {n_issued}/{}", agents.len());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "  first bundles issued to all {} hosts {:.1} s after the last enrollment",
        agents.len(),
        started.elapsed().as_secs_f64()
    );
    let client = http_client();
    let nonces = Arc::new(Nonces::new());
    let shared = Arc::new(agents.to_vec());
    let base: Arc<str> = controller.base.as_str().into();
    let generations = bounded(
        "first bundles fetched",
        agents.len(),
        SETUP_CONCURRENCY,
        FIRST_BUNDLES_DEADLINE,
        move |i| {
            let (client, nonces, shared, base) = (
                client.clone(),
                Arc::clone(&nonces),
                Arc::clone(&shared),
                Arc::clone(&base),
            );
            async move {
                let agent = &shared[i];
                let response = bundle_request(&client, &base, agent, &nonces, 0, 0)
                    .send()
                    .await
                    .unwrap_or_else(|err| {
                        panic!("bundle request of {} failed: {err}", agent.host_id)
                    });
                let status = response.status();
                if status != reqwest::StatusCode::OK {
                    let text = response.text().await.unwrap_or_default();
                    panic!(
                        "first bundle request of {} answered {status}: {text}",
                        agent.host_id
                    );
                }
                let body = response.bytes().await.expect("a bundle response");
                bundle_generation(&body, &agent.host_id, None).expect("a bundle for this host")
            }
        },
    )
    .await;
    for (agent, generation) in agents.iter_mut().zip(generations) {
        agent.generation = generation;
    }
}

/// The generation of a bundle response, if it is a bundle for `host_id`
/// (and of `commit`, when given).
fn bundle_generation(body: &[u8], host_id: &str, commit: Option<&str>) -> Option<u64> {
    let signed: SignedBundle = serde_json::from_slice(body).ok()?;
    let bundle: Value = serde_json::from_str(&signed.bundle).ok()?;
    if bundle["host_id"].as_str() != Some(host_id) || signed.signature.is_empty() {
        return None;
    }
    if let Some(commit) = commit
        && bundle["commit"].as_str() != Some(commit)
    {
        return None;
    }
    bundle["generation"].as_u64()
}

/// What the fan-out measured.
#[derive(Debug)]
struct FanoutResult {
    n_hosts: usize,
    /// From the first request sent until all were held by the controller.
    all_waiting_after: Duration,
    /// From the commit; `None` when that share of the hosts never got it.
    first: Option<Duration>,
    p50: Option<Duration>,
    p99: Option<Duration>,
    p100: Option<Duration>,
    n_new_bundle: usize,
    n_not_modified: usize,
    /// `200`, but not a bundle of the new commit for this host.
    n_wrong_bundle: usize,
    n_other_status: usize,
    n_errors: usize,
    first_problem: Option<String>,
    /// Average size of the answers with the new bundle.
    mean_body_bytes: usize,
    cpu: Cpu,
}

type Answer = Result<(u16, Instant, axum::body::Bytes), String>;

async fn fanout(controller: &Controller, fleet: &FleetRepo, agents: &mut [Agent]) -> FanoutResult {
    let n = agents.len();
    // The setup clients are gone; wait for their connections to close, so
    // that every connection counted below is a waiting request.
    let baseline = wait_for_sockets(controller.port, Duration::from_secs(10), |sockets| {
        sockets.established == 0
    })
    .await
    .established;
    println!("fan-out: {n} long polls (`wait={LONG_POLL_WAIT_SECS}`), each on its own connection");
    let clients: Vec<reqwest::Client> = (0..FANOUT_CLIENTS).map(|_| http_client()).collect();
    let webhook_client = http_client();
    let nonces = Nonces::new();
    let launched = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, agent) in agents.iter().enumerate() {
        if i > 0 && i % FANOUT_BATCH == 0 {
            tokio::time::sleep(FANOUT_BATCH_PAUSE).await;
        }
        let request = bundle_request(
            &clients[i % FANOUT_CLIENTS],
            &controller.base,
            agent,
            &nonces,
            agent.generation,
            LONG_POLL_WAIT_SECS,
        );
        tasks.push(tokio::spawn(async move {
            let response = request.send().await.map_err(|err| err.to_string())?;
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(|err| err.to_string())?;
            Ok::<_, String>((status, Instant::now(), body))
        }));
    }
    // Held by the controller: the connection is established and the
    // controller has read the request (nothing left in its receive queue)...
    let deadline = Instant::now() + ALL_WAITING_DEADLINE;
    loop {
        let sockets = server_sockets(controller.port);
        let n_answered = tasks.iter().filter(|task| task.is_finished()).count();
        if sockets.established + n_answered >= baseline + n && sockets.unread == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gave up: after {ALL_WAITING_DEADLINE:?}, {} connections are established ({} with an unread request) \
             and {n_answered} answered, of {n}",
            sockets.established,
            sockets.unread
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and done authenticating it: the process has gone quiet.
    wait_until_quiet(controller.pid, Duration::from_secs(60)).await;
    let all_waiting_after = launched.elapsed();
    let n_answered_early = tasks.iter().filter(|task| task.is_finished()).count();
    println!(
        "  all {n} requests held after {:.1} s ({} answered before the commit)",
        all_waiting_after.as_secs_f64(),
        n_answered_early
    );

    let cpu_before = thread_cpu(controller.pid);
    let committed = Instant::now();
    let commit = fleet.change_motd();
    let status = push_webhook(&webhook_client, &controller.base).await;
    assert_eq!(status, 202, "the push webhook is accepted");
    let deadline = tokio::time::Instant::now() + FANOUT_DEADLINE;
    let mut answers: Vec<Answer> = Vec::with_capacity(n);
    for mut task in tasks {
        let answer = match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => Err(format!("the request task failed: {err}")),
            Err(_) => {
                task.abort();
                Err(format!("no answer {FANOUT_DEADLINE:?} after the commit"))
            }
        };
        answers.push(answer);
    }
    let cpu = thread_cpu(controller.pid).since(&cpu_before);
    drop(clients);

    let mut result = FanoutResult {
        n_hosts: n,
        all_waiting_after,
        first: None,
        p50: None,
        p99: None,
        p100: None,
        n_new_bundle: 0,
        n_not_modified: 0,
        n_wrong_bundle: 0,
        n_other_status: 0,
        n_errors: 0,
        first_problem: None,
        mean_body_bytes: 0,
        cpu,
    };
    let mut times = Vec::with_capacity(n);
    let mut body_bytes = 0;
    let mut stale = Vec::new();
    for (i, (agent, answer)) in agents.iter_mut().zip(answers).enumerate() {
        match answer {
            Ok((200, at, body)) => match bundle_generation(&body, &agent.host_id, Some(&commit)) {
                Some(generation) if generation > agent.generation && at >= committed => {
                    times.push(at - committed);
                    body_bytes += body.len();
                    agent.generation = generation;
                }
                _ => {
                    result.n_wrong_bundle += 1;
                    result.first_problem.get_or_insert_with(|| {
                        format!(
                            "200 without a new bundle of commit {commit}: {}",
                            String::from_utf8_lossy(&body)
                        )
                    });
                    stale.push(i);
                }
            },
            Ok((304, ..)) => {
                result.n_not_modified += 1;
                stale.push(i);
            }
            Ok((status, _, body)) => {
                result.n_other_status += 1;
                result
                    .first_problem
                    .get_or_insert_with(|| format!("{status}: {}", String::from_utf8_lossy(&body)));
                stale.push(i);
            }
            Err(err) => {
                result.n_errors += 1;
                result.first_problem.get_or_insert(err);
                stale.push(i);
            }
        }
    }
    times.sort_unstable();
    result.n_new_bundle = times.len();
    result.mean_body_bytes = body_bytes / times.len().max(1);
    result.first = times.first().copied();
    result.p50 = share_answered(&times, n, 0.50);
    result.p99 = share_answered(&times, n, 0.99);
    result.p100 = share_answered(&times, n, 1.0);
    // Hosts that missed the new bundle learn their generation from the
    // database, so that the throughput phase asks with the current one.
    for i in stale {
        let record = controller
            .store
            .bundle(&agents[i].host_id)
            .await
            .expect("a bundle read");
        agents[i].generation = record.map_or(0, |record| record.generation);
    }
    print_fanout(&result);
    result
}

/// The time by which `share` of all `n` requests had the new bundle.
fn share_answered(sorted: &[Duration], n: usize, share: f64) -> Option<Duration> {
    let needed = ((share * n as f64).ceil() as usize).max(1);
    sorted.get(needed - 1).copied()
}

/// A GitHub push webhook, signed as GitHub signs it: the controller
/// fetches at once.
async fn push_webhook(client: &reqwest::Client, base: &str) -> u16 {
    let body = json!({"ref": "refs/heads/main"}).to_string();
    let mut mac =
        Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("HMAC takes any key");
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    client
        .post(format!("{base}/hooks/github"))
        .header("x-github-event", "push")
        .header("x-hub-signature-256", signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the webhook is answered")
        .status()
        .as_u16()
}

fn print_fanout(result: &FanoutResult) {
    let time = |d: Option<Duration>| {
        d.map_or_else(
            || "never".to_string(),
            |d| format!("{:.3} s", d.as_secs_f64()),
        )
    };
    println!("  commit → first new bundle: {}", time(result.first));
    println!(
        "  commit → 50 %: {}   99 %: {}   100 %: {}",
        time(result.p50),
        time(result.p99),
        time(result.p100)
    );
    println!(
        "  answers: {} new bundle, {} not modified (304), {} other bundle, {} other status, {} errors",
        result.n_new_bundle,
        result.n_not_modified,
        result.n_wrong_bundle,
        result.n_other_status,
        result.n_errors
    );
    if let Some(problem) = &result.first_problem {
        println!("  first problem: {}", truncate(problem, 300));
    }
    println!(
        "  answers with the new bundle: {} bytes on average",
        result.mean_body_bytes
    );
    println!("  CPU from commit to last answer: {}", result.cpu);
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Which answer a throughput phase asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// The generation the host holds, `wait=0`: `304` at once.
    Current,
    /// Generation 0, `wait=0`: `200` with the bundle at once.
    Bundle,
}

impl Ask {
    fn expected_status(self) -> u16 {
        match self {
            Ask::Current => 304,
            Ask::Bundle => 200,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Ask::Current => "304 (current generation, wait=0)",
            Ask::Bundle => "200 (generation 0, bundle sent)",
        }
    }
}

/// What one throughput phase measured.
#[derive(Debug)]
struct ThroughputResult {
    ask: Ask,
    n_expected: usize,
    n_other_status: usize,
    n_errors: usize,
    first_problem: Option<String>,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    cpu: Cpu,
}

impl ThroughputResult {
    fn per_second(&self) -> f64 {
        self.n_expected as f64 / self.elapsed.as_secs_f64()
    }
}

/// One connection's share of a phase.
#[derive(Debug, Default)]
struct Tally {
    n_expected: usize,
    n_other_status: usize,
    n_errors: usize,
    first_problem: Option<String>,
    latencies: Vec<Duration>,
}

async fn throughput(
    controller: &Controller,
    agents: &[Agent],
    settings: Settings,
) -> Vec<ThroughputResult> {
    // The fan-out's connections close first, so that the phases start
    // from the same state.
    wait_for_sockets(controller.port, Duration::from_secs(30), |sockets| {
        sockets.established == 0
    })
    .await;
    println!(
        "request throughput: {THROUGHPUT_CONNECTIONS} connections, {:.1} s per phase after a {:.1} s warm-up",
        settings.throughput_phase.as_secs_f64(),
        settings.throughput_warm_up.as_secs_f64()
    );
    let clients: Arc<Vec<reqwest::Client>> =
        Arc::new((0..THROUGHPUT_CLIENTS).map(|_| http_client()).collect());
    let agents: Arc<Vec<Agent>> = Arc::new(agents.to_vec());
    let nonces = Arc::new(Nonces::new());
    let base: Arc<str> = controller.base.as_str().into();
    let phase = |ask: Ask, duration: Duration| {
        run_phase(
            controller.pid,
            Arc::clone(&clients),
            Arc::clone(&base),
            Arc::clone(&agents),
            Arc::clone(&nonces),
            ask,
            duration,
        )
    };
    phase(Ask::Current, settings.throughput_warm_up).await;
    let mut results = Vec::new();
    for ask in [Ask::Current, Ask::Bundle] {
        let result = phase(ask, settings.throughput_phase).await;
        println!(
            "  {}: {:.0} req/s ({} in {:.2} s), latency p50 {:.1} ms, p99 {:.1} ms; {} other status, {} errors",
            ask.describe(),
            result.per_second(),
            result.n_expected,
            result.elapsed.as_secs_f64(),
            result.p50.as_secs_f64() * 1e3,
            result.p99.as_secs_f64() * 1e3,
            result.n_other_status,
            result.n_errors
        );
        if let Some(problem) = &result.first_problem {
            println!("    first problem: {}", truncate(problem, 300));
        }
        let n = result.n_expected.max(1) as f64;
        println!(
            "    CPU: {}; per request: controller {:.0} µs, SQLite threads {:.0} µs, agents {:.0} µs",
            result.cpu,
            result.cpu.controller / n * 1e6,
            result.cpu.sqlite / n * 1e6,
            result.cpu.agents / n * 1e6
        );
        results.push(result);
    }
    results
}

async fn run_phase(
    controller_pid: u32,
    clients: Arc<Vec<reqwest::Client>>,
    base: Arc<str>,
    agents: Arc<Vec<Agent>>,
    nonces: Arc<Nonces>,
    ask: Ask,
    duration: Duration,
) -> ThroughputResult {
    let cpu_before = thread_cpu(controller_pid);
    let started = Instant::now();
    let until = started + duration;
    let mut connections = tokio::task::JoinSet::new();
    for connection in 0..THROUGHPUT_CONNECTIONS {
        let client = clients[connection % clients.len()].clone();
        let (base, agents, nonces) = (Arc::clone(&base), Arc::clone(&agents), Arc::clone(&nonces));
        connections.spawn(async move {
            let mut tally = Tally::default();
            // Each connection walks the hosts with a stride, so that all
            // hosts are asked for in turn.
            let mut i = connection;
            while Instant::now() < until {
                let agent = &agents[i % agents.len()];
                i += THROUGHPUT_CONNECTIONS;
                let generation = match ask {
                    Ask::Current => agent.generation,
                    Ask::Bundle => 0,
                };
                let sent = Instant::now();
                let answered = async {
                    let response = bundle_request(&client, &base, agent, &nonces, generation, 0)
                        .send()
                        .await?;
                    let status = response.status().as_u16();
                    let body = response.bytes().await?;
                    Ok::<_, reqwest::Error>((status, body))
                }
                .await;
                match answered {
                    Ok((status, _)) if status == ask.expected_status() => {
                        tally.n_expected += 1;
                        tally.latencies.push(sent.elapsed());
                    }
                    Ok((status, body)) => {
                        tally.n_other_status += 1;
                        tally.first_problem.get_or_insert_with(|| {
                            format!("{status}: {}", String::from_utf8_lossy(&body))
                        });
                    }
                    Err(err) => {
                        tally.n_errors += 1;
                        tally.first_problem.get_or_insert_with(|| err.to_string());
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    // Each connection stops at `until` after its request in flight, which
    // the client's timeout bounds.
    while let Some(tally) = connections.join_next().await {
        let tally = tally.expect("a throughput connection");
        total.n_expected += tally.n_expected;
        total.n_other_status += tally.n_other_status;
        total.n_errors += tally.n_errors;
        if total.first_problem.is_none() {
            total.first_problem = tally.first_problem;
        }
        total.latencies.extend(tally.latencies);
    }
    let elapsed = started.elapsed();
    let cpu = thread_cpu(controller_pid).since(&cpu_before);
    total.latencies.sort_unstable();
    let quantile = |q: f64| {
        let n = total.latencies.len();
        if n == 0 {
            Duration::ZERO
        } else {
            total.latencies[((q * n as f64).ceil() as usize).clamp(1, n) - 1]
        }
    };
    ThroughputResult {
        ask,
        n_expected: total.n_expected,
        n_other_status: total.n_other_status,
        n_errors: total.n_errors,
        first_problem: total.first_problem,
        elapsed,
        p50: quantile(0.50),
        p99: quantile(0.99),
        cpu,
    }
}

/// The controller's side of its TCP connections, from `/proc/net/tcp`.
#[derive(Debug, Clone, Copy, Default)]
struct Sockets {
    /// Established connections to the listening port (accepted or not).
    established: usize,
    /// Of those, the ones with bytes the controller has not read yet.
    unread: usize,
}

fn server_sockets(port: u16) -> Sockets {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut sockets = Sockets::default();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(queues)) =
            (fields.get(1), fields.get(3), fields.get(4))
        else {
            continue;
        };
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        // State 01 is ESTABLISHED; the queues are `tx:rx` in hex.
        if local_port != Some(port) || *state != "01" {
            continue;
        }
        sockets.established += 1;
        let rx = queues
            .split_once(':')
            .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok());
        if rx.is_some_and(|rx| rx > 0) {
            sockets.unread += 1;
        }
    }
    sockets
}

/// Waits (up to `patience`) until `done` holds for the controller's
/// sockets; returns the last count either way.
async fn wait_for_sockets(
    port: u16,
    patience: Duration,
    done: impl Fn(&Sockets) -> bool,
) -> Sockets {
    let deadline = Instant::now() + patience;
    loop {
        let sockets = server_sockets(port);
        if done(&sockets) || Instant::now() >= deadline {
            return sockets;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the process uses under a tenth of a core over a 300 ms
/// window: every held request has been authenticated and parked. Gives up
/// quietly after `patience` (the controller's periodic sweep may keep it
/// busier than that at large N).
async fn wait_until_quiet(controller_pid: u32, patience: Duration) {
    let deadline = Instant::now() + patience;
    let window = Duration::from_millis(300);
    while Instant::now() < deadline {
        let before = thread_cpu(controller_pid).total();
        tokio::time::sleep(window).await;
        if thread_cpu(controller_pid).total() - before < 0.1 * window.as_secs_f64() {
            return;
        }
    }
    println!("  (the process did not go quiet within {patience:?}; measuring anyway)");
}

/// CPU seconds (user + system) per kind of thread.
#[derive(Debug, Clone, Default)]
struct Cpu {
    /// The controller's process but its SQLite threads: the runtime and
    /// its blocking pool (HTTP, reconciler, compiling, signing).
    controller: f64,
    /// The controller's SQLite threads (sqlx runs each connection on a
    /// thread; PostgreSQL's server is not counted).
    sqlite: f64,
    /// This process: the simulated agents.
    agents: f64,
    other: f64,
    /// Per process and thread id: kind and seconds, to subtract a later snapshot from.
    threads: BTreeMap<(u32, u32), (ThreadKind, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ThreadKind {
    Controller,
    Sqlite,
    Agents,
    Other,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.controller + self.sqlite + self.agents + self.other
    }

    fn add(&mut self, kind: ThreadKind, seconds: f64) {
        match kind {
            ThreadKind::Controller => self.controller += seconds,
            ThreadKind::Sqlite => self.sqlite += seconds,
            ThreadKind::Agents => self.agents += seconds,
            ThreadKind::Other => self.other += seconds,
        }
    }

    /// The time used since `before`, by threads alive now (a thread that
    /// ended in between loses its share, which is small: only idle
    /// blocking threads end).
    fn since(&self, before: &Cpu) -> Cpu {
        let mut delta = Cpu::default();
        for (tid, (kind, seconds)) in &self.threads {
            let earlier = before.threads.get(tid).map_or(0.0, |(_, seconds)| *seconds);
            delta.add(*kind, (seconds - earlier).max(0.0));
        }
        delta
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "controller {:.2} s, SQLite threads {:.2} s, agents {:.2} s, other {:.2} s",
            self.controller, self.sqlite, self.agents, self.other
        )
    }
}

/// Linux reports thread times in clock ticks of 1/100 s.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time of the controller's process (`controller_pid`) and of this
/// one, by thread.
fn thread_cpu(controller_pid: u32) -> Cpu {
    let mut cpu = Cpu::default();
    for (pid, is_controller) in [(controller_pid, true), (std::process::id(), false)] {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|tid| tid.parse::<u32>().ok())
            else {
                continue;
            };
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the command's closing parenthesis start at field
            // 3 (state); utime and stime are fields 14 and 15.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let seconds = (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND;
            let sqlite = comm.starts_with("sqlx-sqlite");
            let kind = match (is_controller, sqlite) {
                (true, true) => ThreadKind::Sqlite,
                (true, false) => ThreadKind::Controller,
                // This process's own database connection (setup only).
                (false, true) => ThreadKind::Other,
                (false, false) => ThreadKind::Agents,
            };
            cpu.add(kind, seconds);
            cpu.threads.insert((pid, tid), (kind, seconds));
        }
    }
    cpu
}

/// A fleet repo on disk with a `main` branch, made from the example.
struct FleetRepo {
    path: PathBuf,
    repo: git2::Repository,
}

impl FleetRepo {
    fn from_example(dir: &Path) -> FleetRepo {
        let path = dir.join("fleet");
        std::fs::create_dir_all(&path).expect("the fleet repo dir");
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo");
        copy_tree(&example, &path);
        let mut options = git2::RepositoryInitOptions::new();
        options.initial_head("main");
        let repo = git2::Repository::init_opts(&path, &options).expect("a Git repo");
        let fleet = FleetRepo { path, repo };
        fleet.commit_all("Initial fleet");
        fleet
    }

    /// Changes the login banner, which every host gets; returns the commit.
    fn change_motd(&self) -> String {
        let path = self.path.join("files/motd");
        let mut text = std::fs::read_to_string(&path).expect("files/motd");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        text.push_str(&format!("Fan-out benchmark change {nanos}.\n"));
        std::fs::write(&path, text).expect("files/motd is writable");
        self.commit_all("Change the login banner")
    }

    fn commit_all(&self, message: &str) -> String {
        let mut index = self.repo.index().expect("the index");
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .expect("files are added");
        index.write().expect("the index is written");
        let tree = self
            .repo
            .find_tree(index.write_tree().expect("a tree"))
            .expect("the tree");
        let signature =
            git2::Signature::now("Bench Admin", "bench@example.com").expect("a signature");
        let parent = self
            .repo
            .head()
            .ok()
            .and_then(|head| head.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        self.repo
            .commit(
                Some("HEAD"),
                &signature,
                &signature,
                message,
                &tree,
                &parents,
            )
            .expect("a commit")
            .to_string()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("the example fleet repo") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            std::fs::create_dir_all(&target).expect("a directory");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("a copied file");
        }
    }
}

/// The benchmark's temporary directory, removed when dropped (also when
/// the benchmark panics).
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "muster-bench-fanout-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("cannot create the benchmark's temporary directory");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The controller's database: a SQLite file in the temporary directory,
/// or a PostgreSQL database of its own, dropped when this is dropped.
struct Database {
    url: String,
    /// The server's URL and the database's name.
    postgres: Option<(String, String)>,
}

impl Database {
    fn sqlite(dir: &Path) -> Database {
        Database {
            url: muster_controller::store::sqlite_url(dir),
            postgres: None,
        }
    }

    async fn postgres(server: &str) -> Database {
        sqlx::any::install_default_drivers();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("muster_bench_fanout_{}_{nanos}", std::process::id());
        let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(server)
            .await
            .unwrap_or_else(|err| fail(&format!("cannot connect to {POSTGRES_ENV}: {err}")));
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|err| {
                fail(&format!(
                    "cannot create a database for the benchmark: {err}"
                ))
            });
        // The same server and options (`?sslmode=…`), another database.
        let (address, options) = server.split_once('?').map_or((server, ""), |(a, o)| (a, o));
        let base = address.rsplit_once('/').map_or(address, |(base, _)| base);
        let options = if options.is_empty() {
            String::new()
        } else {
            format!("?{options}")
        };
        Database {
            url: format!("{base}/{name}{options}"),
            postgres: Some((server.to_string(), name)),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let Some((server, name)) = self.postgres.take() else {
            return;
        };
        // Dropping needs a runtime of its own: this may run while the
        // benchmark's runtime unwinds.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) =
                    <sqlx::AnyConnection as sqlx::Connection>::connect(&server).await
                {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// The machine's load average: other work competes for the cores.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

fn print_summary(settings: Settings, results: &[BackendResult]) {
    println!();
    println!("load average after: {}", load_average());
    println!("=== summary: {} hosts ===", settings.n_hosts);
    let time = |d: Option<Duration>| {
        d.map_or_else(
            || "never".to_string(),
            |d| format!("{:.3} s", d.as_secs_f64()),
        )
    };
    for result in results {
        let fanout = &result.fanout;
        println!(
            "{:<10} fan-out ({} requests held after {:.1} s): commit → 50 % {}, 99 % {}, 100 % {}; \
             {} new bundles, {} × 304, {} other, {} errors",
            result.backend,
            fanout.n_hosts,
            fanout.all_waiting_after.as_secs_f64(),
            time(fanout.p50),
            time(fanout.p99),
            time(fanout.p100),
            fanout.n_new_bundle,
            fanout.n_not_modified,
            fanout.n_wrong_bundle + fanout.n_other_status,
            fanout.n_errors
        );
        for phase in &result.throughput {
            println!(
                "{:<10} requests answered {}: {:.0} req/s (p50 {:.1} ms, p99 {:.1} ms)",
                result.backend,
                phase.ask.describe(),
                phase.per_second(),
                phase.p50.as_secs_f64() * 1e3,
                phase.p99.as_secs_f64() * 1e3
            );
        }
        if !settings.full {
            continue;
        }
        let fanout_verdict = match fanout.p99 {
            Some(p99) if fanout.n_hosts >= DEFAULT_HOSTS && p99 < FANOUT_BUDGET => "within budget",
            Some(p99) if p99 < FANOUT_BUDGET => {
                "within budget (but fewer hosts than the budget's 10,000)"
            }
            _ => "OVER BUDGET",
        };
        println!(
            "{:<10} verdict, merge → 99 % < 3 s: {fanout_verdict}",
            result.backend
        );
        for phase in &result.throughput {
            let verdict = if phase.per_second() >= THROUGHPUT_BUDGET {
                "within budget"
            } else {
                "OVER BUDGET"
            };
            println!(
                "{:<10} verdict, request path ≥ 5,000 req/s ({}): {verdict}",
                result.backend,
                phase.ask.describe()
            );
        }
    }
    if !settings.full {
        println!("ok: smoke run done (run with `cargo bench` to measure)");
    }
}
