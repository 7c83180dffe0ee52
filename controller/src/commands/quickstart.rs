//! `muster quickstart`: the whole loop on one machine, in one directory.
//!
//! It makes (or resumes) a directory holding a fleet repo started from the
//! example fleet, the controller's data (SQLite), and one sandbox per local
//! host; starts the controller in this process; enrolls and approves the
//! hosts with real `muster-agent` processes (their own roots, labels that
//! put them in `web` and `db`); then prints what happens — commits tried,
//! hosts converging — until ctrl-c or SIGTERM, which stop the agents and
//! the controller cleanly.
//!
//! On a fresh start it adds the users the example repo's RBAC names (alice,
//! an admin; bob, an operator of the web hosts) with random passwords in
//! `DIR/passwords/NAME` (mode 0600), so that the banner's `muster login`,
//! `muster run` and `muster jobs show` work as written. The agents run as
//! the invoking user, and so do scripts without `run_as`.
//!
//! Nothing outside the directory is touched: the agents run with `--root`,
//! so the resources that cannot be sandboxed (packages, services, users)
//! are reported `skipped`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use muster_schemas::protocol::{HostState, Report, ResourceStatus};

use super::admin::{random_token, short};
use super::serve::{self, Config, open_data_dir, open_store};
use crate::Error;
use crate::cli::{DataArgs, QuickstartArgs};
use crate::server::agent_api::token_hash;
use crate::server::now;
use crate::store::{CommitState, Store, TokenRecord};

include!(concat!(env!("OUT_DIR"), "/example_fleet.rs"));

/// How often the quickstart's controller looks at the repo: a commit shows
/// up within a second, with no webhook to set up.
const FETCH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the quickstart looks at the database for news to print.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How long stopping agents may take before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The most resource ids printed for one report.
const MAX_LISTED: usize = 6;

/// One local host of the quickstart.
#[derive(Debug)]
struct LocalHost {
    name: String,
    role: &'static str,
    dir: PathBuf,
}

impl LocalHost {
    fn config(&self) -> PathBuf {
        self.dir.join("agent.yaml")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Where the pid of the host's running agent is kept, so that agents
    /// left behind by a quickstart that was killed can be found.
    fn pid_file(&self) -> PathBuf {
        self.dir.join("agent.pid")
    }

    /// Stops the agent an earlier quickstart left running, if any: one
    /// killed with SIGKILL had no chance to stop its agents.
    fn stop_leftover(&self) {
        let Some(pid) = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
        else {
            return;
        };
        let is_ours = |pid: u32| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains("muster-agent")
                    && cmdline.contains(&*self.config().to_string_lossy())
            })
        };
        if is_ours(pid) {
            println!(
                "  stopping    {}'s agent (pid {pid}), left running by an earlier quickstart",
                self.name
            );
            terminate(pid);
            let deadline = std::time::Instant::now() + STOP_GRACE;
            while is_ours(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_file(self.pid_file());
    }
}

/// Sends SIGTERM, which lets an agent finish its step; std can only send
/// SIGKILL, and the workspace forbids the unsafe code a direct call needs.
fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub async fn run(args: QuickstartArgs) -> Result<ExitCode, Error> {
    if args.web == 0 && args.db == 0 {
        return Err(Error::Usage(
            "no hosts to start: give --web or --db at least 1".into(),
        ));
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|err| Error::io(format!("cannot create `{}`", args.dir.display()), err))?;
    let dir = std::fs::canonicalize(&args.dir)
        .map_err(|err| Error::io(format!("cannot resolve `{}`", args.dir.display()), err))?;
    let agent = agent_binary(args.agent)?;
    init_logging(&dir.join("controller.log"))?;

    println!("Muster quickstart in {}", dir.display());
    let repo_dir = dir.join("fleet-repo");
    if repo_dir.join(".git").exists() {
        println!(
            "  fleet repo   {} (kept from an earlier run)",
            repo_dir.display()
        );
    } else {
        create_fleet_repo(&repo_dir)?;
        println!(
            "  fleet repo   {} (a new Git repo holding the example fleet)",
            repo_dir.display()
        );
    }

    let data = DataArgs {
        data_dir: dir.join("data"),
        database_url: None,
    };
    let (key, _) = open_data_dir(&data.data_dir)?;
    let config = Config {
        data: data.clone(),
        repo: repo_dir.display().to_string(),
        branch: "main".into(),
        path: None,
        listen: args.listen.clone(),
        public_url: format!("http://{}", args.listen),
        fetch_interval: FETCH_INTERVAL,
        long_poll: Duration::from_secs(55),
        webhook_secret: None,
        tls: None,
        audit_remote: None,
        user_auth: Default::default(),
    };
    let running = serve::start(config).await.map_err(|err| match err {
        Error::Io { what, source } if source.kind() == std::io::ErrorKind::AddrInUse => {
            Error::Usage(format!(
                "{what}: {source} (is another quickstart or controller running? stop it, or pass --listen 127.0.0.1:PORT)"
            ))
        }
        other => other,
    })?;
    let url = format!("http://{}", running.address);
    let store = open_store(&data).await?;
    store.set_setting("public_url", &url).await?;
    println!(
        "  controller   {url} (SQLite in {}, log in {})",
        data.data_dir.display(),
        dir.join("controller.log").display()
    );

    let mut watch = Watch::default();
    let deployed = wait_for_first_commit(&store, &mut watch).await?;
    if deployed.is_none() {
        println!(
            "  the fleet repo has no deployable commit yet: fix what is listed above and commit; hosts get bundles once a commit deploys"
        );
    }

    let passwords = create_users(&store, &data, &dir).await?;
    watch.skip_earlier_reports(&store).await?;
    let hosts = local_hosts(&dir, args.web, args.db);
    for host in &hosts {
        host.stop_leftover();
    }
    let mut agents = Agents::default();
    let started = async {
        enroll(&store, &agent, &url, &key.public_key(), &hosts).await?;
        for host in &hosts {
            agents.spawn(&agent, host)?;
        }
        Ok::<(), Error>(())
    }
    .await;
    if let Err(err) = started {
        agents.stop();
        let _ = running.stop().await;
        return Err(err);
    }
    print_ready(&dir, &repo_dir, &data, &hosts);
    print_actions(&url, &data, &passwords);

    let mut shutdown = std::pin::pin!(serve::shutdown_signal());
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(err) = watch.print_news(&store).await {
                    tracing::warn!(error = %err, "cannot read the database for the quickstart's output");
                }
                agents.check_exited();
            }
            () = &mut shutdown => break,
        }
    }
    println!();
    println!("stopping the agents and the controller…");
    agents.stop();
    store.close().await;
    running.stop().await?;
    println!(
        "stopped. Run the same command again to resume; delete {} to start over.",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The users of the example repo's RBAC (`rbac/`): alice is bound to the
/// `admin` role fleet-wide, bob (in `web-team`) to `operator` on group
/// `web`.
pub const QUICKSTART_USERS: [&str; 2] = ["alice", "bob"];

/// Where the quickstart keeps its users' passwords: one file per user,
/// readable by the invoking user only, in a directory only it can enter.
pub fn passwords_dir(dir: &Path) -> PathBuf {
    dir.join("passwords")
}

/// Creates the example users that do not exist yet, each with a random
/// password written to `DIR/passwords/NAME` (mode 0600) and audited like
/// `muster user add`. Users that exist are left alone (their password
/// file, if any, is kept). Returns the password files.
async fn create_users(store: &Store, data: &DataArgs, dir: &Path) -> Result<PathBuf, Error> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let passwords = passwords_dir(dir);
    if !passwords.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&passwords)
            .map_err(|err| Error::io(format!("cannot create `{}`", passwords.display()), err))?;
    }
    let audit = crate::audit::AuditLog::in_data_dir(&data.data_dir);
    for name in QUICKSTART_USERS {
        if store.user(name).await?.is_some() {
            continue;
        }
        let password = crate::server::user_auth::new_secret("").map_err(Error::Usage)?;
        let hash = {
            let password = password.clone();
            tokio::task::spawn_blocking(move || crate::server::user_auth::hash_password(&password))
                .await
                .map_err(|err| Error::Usage(format!("the hashing task failed: {err}")))?
                .map_err(Error::Usage)?
        };
        audit
            .record(crate::audit::Action {
                request_id: crate::audit::new_request_id(),
                who: crate::audit::Who::local(),
                action: "user.add".into(),
                targets: vec![name.into()],
                summary: format!("quickstart added user {name}"),
                parameters: Vec::new(),
                source: None,
                time: now(),
            })
            .await
            .map_err(|err| Error::Usage(format!("{err}: the quickstart users were not added")))?;
        let file = passwords.join(name);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)
            .map_err(|err| Error::io(format!("cannot write `{}`", file.display()), err))?;
        writeln!(out, "{password}")
            .and_then(|()| out.sync_all())
            .map_err(|err| Error::io(format!("cannot write `{}`", file.display()), err))?;
        store.add_user(name, &hash, false, now()).await?;
        println!("  user         {name} (password in {})", file.display());
    }
    Ok(passwords)
}

/// The run-a-script part of the banner.
fn print_actions(url: &str, data: &DataArgs, passwords: &Path) {
    let muster = std::env::current_exe()
        .ok()
        .map(|exe| shorter(&exe))
        .unwrap_or_else(|| "muster".into());
    println!("Open the dashboard in a browser:");
    println!();
    println!("  {url}/");
    println!(
        "  log in as alice (admin) or bob (operator of the web hosts); passwords in {}/NAME",
        passwords.display()
    );
    println!();
    println!("Run a reviewed script as an operator (bob may operate the web hosts only):");
    println!();
    println!(
        "  {muster} login --server {url} --user bob < {}/bob",
        passwords.display()
    );
    println!("  {muster} run restart-service --group web --param service=nginx --wait");
    println!("  {muster} jobs list");
    println!("  {muster} jobs show JOB   # a job id from `run`");
    println!(
        "  {muster} run restart-service --host db-01 --param service=postgresql   # refused: db is not bob's"
    );
    println!(
        "  git -C {}/audit.git log --format='%an: %s'   # every action, authored by its user",
        data.data_dir.display()
    );
    println!();
    println!("What happens is printed below. Ctrl-C stops the agents and the controller.");
    println!();
}

/// The `muster-agent` binary to run.
fn agent_binary(explicit: Option<PathBuf>) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Usage(format!(
                "--agent `{}` is not a file",
                path.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|err| Error::io("cannot find the running `muster` binary", err))?;
    let beside = exe.with_file_name("muster-agent");
    // `cargo run -p muster-controller` builds only `muster`: build the
    // agent of the same checkout and profile too, so that the two match.
    if let Some(cargo) = std::env::var_os("CARGO")
        && let Some(manifest_dir) = std::env::var_os("CARGO_MANIFEST_DIR")
        && let Some(profile_dir) = exe.parent()
        && let Some(target_dir) = profile_dir.parent()
    {
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(name) => name,
            None => "dev",
        };
        println!("building muster-agent (cargo build --profile {profile} -p muster-agent)…");
        let status = Command::new(cargo)
            .args([
                "build",
                "--profile",
                profile,
                "-p",
                "muster-agent",
                "--target-dir",
            ])
            .arg(target_dir)
            .current_dir(manifest_dir)
            .stdin(Stdio::null())
            .status()
            .map_err(|err| Error::io("cannot run cargo to build muster-agent", err))?;
        if !status.success() {
            return Err(Error::Usage(format!(
                "building muster-agent failed ({status}): see cargo's output above"
            )));
        }
    }
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(on_path) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("muster-agent"))
            .find(|candidate| candidate.is_file())
    }) {
        return Ok(on_path);
    }
    Err(Error::Usage(format!(
        "cannot find `muster-agent` beside {} or on PATH: build it with `cargo build --release -p muster-agent`, or pass --agent PATH",
        exe.display()
    )))
}

/// Sends the controller's log to a file: the terminal is for the
/// quickstart's own account of what happens.
fn init_logging(path: &Path) -> Result<(), Error> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| Error::io(format!("cannot open the log `{}`", path.display()), err))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// Writes the example fleet into a new Git repo at `dir` and commits it
/// on `main`.
fn create_fleet_repo(dir: &Path) -> Result<(), Error> {
    let git_error = |what: &str, err: git2::Error| {
        Error::Usage(format!(
            "cannot {what} in `{}`: {}",
            dir.display(),
            err.message()
        ))
    };
    for (relative, content) in EXAMPLE_FLEET {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|err| Error::io(format!("cannot create `{}`", parent.display()), err))?;
        }
        std::fs::write(&path, content)
            .map_err(|err| Error::io(format!("cannot write `{}`", path.display()), err))?;
    }
    let mut options = git2::RepositoryInitOptions::new();
    options.initial_head("main");
    let repo = git2::Repository::init_opts(dir, &options)
        .map_err(|err| git_error("create a Git repo", err))?;
    // Commits need an identity; give the repo one of its own when this
    // machine's Git has none, so that `git commit` works there at once.
    let signature = match repo.signature() {
        Ok(signature) => signature,
        Err(_) => {
            let mut config = repo
                .config()
                .map_err(|err| git_error("read the Git config", err))?;
            config
                .set_str("user.name", "Muster Quickstart")
                .and_then(|()| config.set_str("user.email", "quickstart@muster.invalid"))
                .map_err(|err| git_error("set a commit identity", err))?;
            repo.signature()
                .map_err(|err| git_error("make a commit signature", err))?
        }
    };
    let mut index = repo
        .index()
        .map_err(|err| git_error("open the index", err))?;
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .and_then(|()| index.write())
        .map_err(|err| git_error("add the files", err))?;
    let tree_id = index
        .write_tree()
        .map_err(|err| git_error("write the tree", err))?;
    let tree = repo
        .find_tree(tree_id)
        .map_err(|err| git_error("read the tree", err))?;
    repo.commit(
        Some("HEAD"),
        &signature,
        &signature,
        "Start from the example fleet\n\nCreated by `muster quickstart` from examples/fleet-repo.",
        &tree,
        &[],
    )
    .map_err(|err| git_error("commit", err))?;
    Ok(())
}

/// The local hosts: `web-01`… with role=web, then `db-01`… with role=db.
fn local_hosts(dir: &Path, web: u32, db: u32) -> Vec<LocalHost> {
    let numbered = |role: &'static str, count: u32| {
        (1..=count).map(move |n| {
            let name = format!("{role}-{n:02}");
            LocalHost {
                dir: dir.join("agents").join(&name),
                name,
                role,
            }
        })
    };
    numbered("web", web).chain(numbered("db", db)).collect()
}

/// Waits until the controller has tried the repo's tip, printing it.
/// Returns the deployed commit, if any is.
async fn wait_for_first_commit(store: &Store, watch: &mut Watch) -> Result<Option<String>, Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        watch.print_commits(store).await?;
        if let Some(deployed) = store.deployed_commit().await? {
            return Ok(Some(deployed.id));
        }
        if !store.commits(1).await?.is_empty() {
            return Ok(None);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Usage(
                "the controller has not tried the fleet repo after a minute: see controller.log"
                    .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Enrolls the hosts that are not enrolled yet (with `muster-agent enroll`,
/// as an operator would) and approves every pending one.
async fn enroll(
    store: &Store,
    agent: &Path,
    url: &str,
    public_key: &str,
    hosts: &[LocalHost],
) -> Result<(), Error> {
    let mut tokens: HashMap<&str, String> = HashMap::new();
    let mut enrolled = Vec::new();
    for host in hosts {
        let known = store.find_host(&host.name).await?;
        if known.is_some() && enrolled_server(&host.config()).as_deref() == Some(url) {
            continue;
        }
        if let Some(stale) = known {
            // Its agent's config is gone, or points at another address
            // (the controller listens elsewhere this time): enroll afresh.
            store.remove_host(&stale.id).await?;
        }
        let token = match tokens.get(host.role) {
            Some(token) => token.clone(),
            None => {
                let token = create_token(store, host.role, hosts).await?;
                tokens.insert(host.role, token.clone());
                token
            }
        };
        std::fs::create_dir_all(host.root())
            .map_err(|err| Error::io(format!("cannot create `{}`", host.root().display()), err))?;
        let output = Command::new(agent)
            .arg("enroll")
            .args(["--server", url, "--token", &token, "--pubkey", public_key])
            .args([
                "--name",
                &host.name,
                "--label",
                &format!("role={}", host.role),
            ])
            .arg("--config")
            .arg(host.config())
            .arg("--state-dir")
            .arg(host.state_dir())
            .arg("--force")
            .env("MUSTER_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .map_err(|err| Error::io(format!("cannot run `{}`", agent.display()), err))?;
        if !output.status.success() {
            return Err(Error::Usage(format!(
                "enrolling {} failed: {}",
                host.name,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        enrolled.push(host.name.as_str());
    }
    let mut approved = Vec::new();
    for host in store.hosts().await? {
        if host.state == HostState::Pending && hosts.iter().any(|h| h.name == host.name) {
            store.set_host_state(&host.id, HostState::Approved).await?;
            approved.push(host.name);
        }
    }
    if !enrolled.is_empty() {
        println!(
            "  enrolled     {} (muster-agent enroll, with a token per role)",
            enrolled.join(", ")
        );
    }
    if !approved.is_empty() {
        println!("  approved     {}", approved.join(", "));
    }
    Ok(())
}

/// The controller URL in an agent's config, if it has one.
fn enrolled_server(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let value: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    value.get("server")?.as_str().map(str::to_string)
}

/// A short-lived token for the hosts of one role, labelled with it.
async fn create_token(store: &Store, role: &str, hosts: &[LocalHost]) -> Result<String, Error> {
    let (token, id) = random_token()?;
    let now = now();
    let uses = hosts.iter().filter(|h| h.role == role).count();
    let record = TokenRecord {
        id,
        max_uses: i64::try_from(uses).unwrap_or(i64::MAX),
        uses: 0,
        labels: BTreeMap::from([("role".to_string(), role.to_string())]),
        auto_approve: false,
        created_at: now,
        expires_at: now + 600,
        revoked_at: None,
    };
    store.create_token(&record, &token_hash(&token)).await?;
    Ok(token)
}

fn print_ready(dir: &Path, repo_dir: &Path, data: &DataArgs, hosts: &[LocalHost]) {
    let muster = std::env::current_exe()
        .ok()
        .map(|exe| shorter(&exe))
        .unwrap_or_else(|| "muster".into());
    let mut by_role: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for host in hosts {
        by_role.entry(host.role).or_default().push(&host.name);
    }
    let roles: Vec<String> = by_role
        .iter()
        .rev()
        .map(|(role, names)| format!("{} (role={role})", names.join(", ")))
        .collect();
    let agents = dir.join("agents");
    let data_dir = shorter(&data.data_dir);
    println!("  agents       {}", roles.join("; "));
    println!(
        "               each manages files beneath {}/NAME/root; logs in {}/NAME/agent.log",
        agents.display(),
        agents.display()
    );
    println!();
    println!("Ready. Things to try, in another terminal:");
    println!();
    println!("  cd {}", repo_dir.display());
    println!(
        "  sed -i 's/listen_port: 80/listen_port: 8080/' policies/nginx.yaml   # the web hosts' nginx site"
    );
    println!("  git commit -am 'Move the shop to port 8080'");
    println!(
        "      → within seconds the web hosts converge; see {}/web-01/root/etc/nginx/sites-available/shop.conf",
        agents.display()
    );
    println!("  echo tampered > {}/db-01/root/etc/motd", agents.display());
    println!(
        "      → the agent repairs the drift on its next run (every minute, `agent.interval` in fleet.yaml)"
    );
    println!("  {muster} hosts list --data-dir {data_dir}");
    println!("  {muster} commits list --data-dir {data_dir}");
    println!("  {muster} validate .   # before committing: every problem at once");
    println!();
}

/// A path relative to the working directory when it lies beneath it.
fn shorter(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|relative| !relative.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// The running agent processes.
#[derive(Debug, Default)]
struct Agents {
    /// Name, directory and process of each agent.
    running: Vec<(String, PathBuf, Child)>,
}

impl Agents {
    fn spawn(&mut self, agent: &Path, host: &LocalHost) -> Result<(), Error> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(host.log())
            .map_err(|err| Error::io(format!("cannot open `{}`", host.log().display()), err))?;
        let log_err = log
            .try_clone()
            .map_err(|err| Error::io("cannot share an agent's log", err))?;
        let child = Command::new(agent)
            .arg("run")
            .arg("--config")
            .arg(host.config())
            .arg("--state-dir")
            .arg(host.state_dir())
            .arg("--root")
            .arg(host.root())
            .env(
                "MUSTER_LOG",
                std::env::var("MUSTER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|err| Error::io(format!("cannot start `{}`", agent.display()), err))?;
        std::fs::write(host.pid_file(), format!("{}\n", child.id())).map_err(|err| {
            Error::io(format!("cannot write `{}`", host.pid_file().display()), err)
        })?;
        self.running
            .push((host.name.clone(), host.dir.clone(), child));
        Ok(())
    }

    /// Reports agents that stopped on their own, once.
    fn check_exited(&mut self) {
        self.running
            .retain_mut(|(name, log, child)| match child.try_wait() {
                Ok(Some(status)) => {
                    println!(
                        "{}  {name}: the agent stopped ({status}); see {}",
                        clock(),
                        log.display()
                    );
                    false
                }
                _ => true,
            });
    }

    /// Asks every agent to stop (SIGTERM), waits a little, then kills the
    /// ones still running.
    fn stop(&mut self) {
        for (_, _, child) in &self.running {
            terminate(child.id());
        }
        let deadline = std::time::Instant::now() + STOP_GRACE;
        for (name, dir, child) in &mut self.running {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        println!("{name}: the agent did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
            let _ = std::fs::remove_file(dir.join("agent.pid"));
        }
        self.running.clear();
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        if !self.running.is_empty() {
            self.stop();
        }
    }
}

/// What has been printed already, so that only news is.
#[derive(Debug, Default)]
struct Watch {
    commits: HashSet<String>,
    /// Per host id: the time of the last report looked at.
    reports: HashMap<String, i64>,
    /// Per host id: the last run status printed.
    statuses: HashMap<String, String>,
    /// Per host id: the failing checks last printed.
    failing_checks: HashMap<String, Vec<String>>,
}

impl Watch {
    async fn print_news(&mut self, store: &Store) -> Result<(), Error> {
        self.print_commits(store).await?;
        self.print_reports(store).await
    }

    async fn print_commits(&mut self, store: &Store) -> Result<(), Error> {
        let mut commits = store.commits(20).await?;
        commits.reverse();
        for commit in commits {
            if !self.commits.insert(commit.id.clone()) {
                continue;
            }
            match commit.state {
                CommitState::Deployed => println!(
                    "{}  commit {} deployed: \"{}\" by {}; {} {} got a new bundle",
                    clock(),
                    short(&commit.id),
                    commit.summary,
                    author_name(&commit.author),
                    commit.n_changed,
                    if commit.n_changed == 1 {
                        "host"
                    } else {
                        "hosts"
                    }
                ),
                CommitState::Rejected => {
                    let diagnostics: Vec<muster_schemas::Diagnostic> =
                        serde_json::from_value(commit.diagnostics.clone()).unwrap_or_default();
                    println!(
                        "{}  commit {} REJECTED: \"{}\" by {}; nothing changed on the hosts. Fix it with a new commit:",
                        clock(),
                        short(&commit.id),
                        commit.summary,
                        author_name(&commit.author)
                    );
                    for diagnostic in &diagnostics {
                        for line in diagnostic.to_string().lines() {
                            println!("      {line}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes in the reports of an earlier run without printing them, so
    /// that a resumed quickstart prints only what happens from now on.
    async fn skip_earlier_reports(&mut self, store: &Store) -> Result<(), Error> {
        self.each_new_report(store, |_, _, _| {}).await
    }

    /// Prints every new report that changed something, found drift or
    /// failures, or moved the host to another status or other failing
    /// checks.
    async fn print_reports(&mut self, store: &Store) -> Result<(), Error> {
        self.each_new_report(store, |name, report, summary| {
            println!(
                "{}  {name:<8} generation {} ({}): {summary}",
                clock(),
                report.generation,
                short(&report.commit),
            );
        })
        .await
    }

    /// Calls `show` with each host's newest report not seen yet that is
    /// worth a line, and that line's summary.
    async fn each_new_report(
        &mut self,
        store: &Store,
        mut show: impl FnMut(&str, &Report, String),
    ) -> Result<(), Error> {
        for host in store.hosts().await? {
            let Some((received, body)) = store.reports(&host.id, 1).await?.into_iter().next()
            else {
                continue;
            };
            if self.reports.insert(host.id.clone(), received) == Some(received) {
                continue;
            }
            let Ok(report) = serde_json::from_str::<Report>(&body) else {
                continue;
            };
            let status = serde_json::to_value(report.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let mut by_status: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for resource in &report.resources {
                let label = match resource.status {
                    ResourceStatus::Changed => "changed",
                    ResourceStatus::Drifted => "drifted",
                    ResourceStatus::Failed => "failed",
                    ResourceStatus::InSync | ResourceStatus::Skipped => continue,
                };
                by_status.entry(label).or_default().push(&resource.id);
            }
            let failing_checks: Vec<String> = report
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name.clone())
                .collect();
            let status_moved =
                self.statuses.insert(host.id.clone(), status.clone()) != Some(status.clone());
            // Checks that keep failing are said once, not on every run.
            let checks_moved = self
                .failing_checks
                .insert(host.id.clone(), failing_checks.clone())
                != Some(failing_checks.clone());
            if by_status.is_empty() && !status_moved && !checks_moved {
                continue;
            }
            let mut parts = Vec::new();
            for (label, ids) in &by_status {
                let listed: Vec<&str> = ids.iter().take(MAX_LISTED).copied().collect();
                let more = ids.len().saturating_sub(MAX_LISTED);
                parts.push(if more > 0 {
                    format!("{label} {} and {more} more", listed.join(", "))
                } else {
                    format!("{label} {}", listed.join(", "))
                });
            }
            if checks_moved {
                parts.push(if failing_checks.is_empty() {
                    "all checks pass".to_string()
                } else {
                    format!("checks failing: {}", failing_checks.join(", "))
                });
            }
            let summary = if parts.is_empty() {
                format!("nothing to do → {status}")
            } else {
                format!("{} → {status}", parts.join("; "))
            };
            show(&host.name, &report, summary);
        }
        Ok(())
    }
}

/// `Name <email>` without the email: the terminal has little room.
fn author_name(author: &str) -> &str {
    author.split_once(" <").map_or(author, |(name, _)| name)
}

/// The local time of day, for the lines printed.
fn clock() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}
