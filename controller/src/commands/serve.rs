//! `muster init` and `muster serve`: the data dir, the signing key, and
//! the running controller.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use muster_schemas::types::Duration as SpecDuration;
use serde::Deserialize;

use crate::Error;
use crate::audit::AuditLog;
use crate::cli::{DataArgs, ServeArgs};
use crate::reconcile::{Reconciler, Trigger};
use crate::server::{self, AppState};
use crate::signing::SigningKey;
use crate::source::GitSource;
use crate::store::{self, Store};

/// Creates the data dir (readable by its owner only) and loads or creates
/// the signing key in it.
pub fn open_data_dir(dir: &Path) -> Result<(SigningKey, bool), Error> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|err| Error::io(format!("cannot create `{}`", dir.display()), err))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|err| Error::io(format!("cannot restrict `{}`", dir.display()), err))?;
        }
    }
    SigningKey::load_or_create(dir).map_err(|err| Error::Signing(err.to_string()))
}

/// Opens the database: the URL given, or SQLite in the data dir.
pub async fn open_store(data: &DataArgs) -> Result<Store, Error> {
    let url = match &data.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&data.data_dir).map_err(|err| {
                Error::io(format!("cannot create `{}`", data.data_dir.display()), err)
            })?;
            store::sqlite_url(&data.data_dir)
        }
    };
    Ok(Store::open(&url).await?)
}

pub async fn init(data: &DataArgs) -> Result<ExitCode, Error> {
    let (key, created) = open_data_dir(&data.data_dir)?;
    let store = open_store(data).await?;
    store.close().await;
    if created {
        println!(
            "created the data dir {} and a signing key",
            data.data_dir.display()
        );
    } else {
        println!(
            "the data dir {} is ready; its signing key was kept",
            data.data_dir.display()
        );
    }
    println!("public key (agents pin it): {}", key.public_key());
    Ok(ExitCode::SUCCESS)
}

/// Settings a config file may hold; flags and environment variables win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    repo: Option<String>,
    branch: Option<String>,
    path: Option<String>,
    listen: Option<String>,
    public_url: Option<String>,
    fetch_interval: Option<String>,
    long_poll: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    audit_remote: Option<String>,
}

/// The controller's settings, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub data: DataArgs,
    pub repo: String,
    pub branch: String,
    pub path: Option<String>,
    pub listen: String,
    pub public_url: String,
    pub fetch_interval: Duration,
    pub long_poll: Duration,
    pub webhook_secret: Option<String>,
    /// PEM certificate chain and key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Where the audit repository is pushed after each commit.
    pub audit_remote: Option<String>,
    /// Login limits, session lifetime and the clock of user authentication.
    pub user_auth: server::user_auth::Settings,
}

fn duration(text: &str, what: &str) -> Result<Duration, Error> {
    text.parse::<SpecDuration>()
        .map(SpecDuration::get)
        .map_err(|err| Error::Usage(format!("invalid {what} `{text}`: {err}")))
}

/// Whether a repo argument names a local directory rather than a URL.
fn is_local(repo: &str) -> bool {
    !repo.contains("://") && !repo.contains('@')
}

impl Config {
    pub fn resolve(args: ServeArgs) -> Result<Config, Error> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|err| Error::io(format!("cannot read `{}`", path.display()), err))?;
                serde_yaml::from_str(&text).map_err(|err| {
                    Error::Usage(format!("invalid config file `{}`: {err}", path.display()))
                })?
            }
            None => FileConfig::default(),
        };
        let repo = args.repo.or(file.repo).ok_or_else(|| {
            Error::Usage("no fleet repo given: pass --repo URL|PATH (or set MUSTER_REPO)".into())
        })?;
        // A local repo is mirrored by absolute path, so that the mirror
        // keeps working whatever directory the controller runs in.
        let repo = if is_local(&repo) {
            std::fs::canonicalize(&repo)
                .map_err(|err| Error::io(format!("cannot read the fleet repo `{repo}`"), err))?
                .display()
                .to_string()
        } else {
            repo
        };
        let branch = match args.branch.or(file.branch) {
            Some(branch) => branch,
            None if is_local(&repo) => {
                current_branch(Path::new(&repo)).unwrap_or_else(|| "main".into())
            }
            None => "main".into(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7878".into());
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Error::Usage(
                    "give both --tls-cert and --tls-key, or neither".into(),
                ));
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_url = args
            .public_url
            .or(file.public_url)
            .unwrap_or_else(|| format!("{scheme}://{listen}"));
        let fetch_interval = duration(
            args.fetch_interval
                .or(file.fetch_interval)
                .as_deref()
                .unwrap_or("30s"),
            "fetch interval",
        )?;
        let long_poll = duration(
            args.long_poll
                .or(file.long_poll)
                .as_deref()
                .unwrap_or("55s"),
            "long poll",
        )?;
        Ok(Config {
            data: args.data,
            repo,
            branch,
            path: args
                .path
                .or(file.path)
                .filter(|p| !p.is_empty() && p != "."),
            listen,
            public_url: public_url.trim_end_matches('/').to_string(),
            fetch_interval,
            long_poll,
            webhook_secret: std::env::var("MUSTER_WEBHOOK_SECRET")
                .ok()
                .filter(|s| !s.is_empty()),
            tls,
            audit_remote: args
                .audit_remote
                .or(file.audit_remote)
                .filter(|s| !s.is_empty()),
            user_auth: server::user_auth::Settings::default(),
        })
    }
}

fn current_branch(repo: &Path) -> Option<String> {
    let repo = git2::Repository::open(repo).ok()?;
    let head = repo.head().ok()?;
    if !head.is_branch() {
        return None;
    }
    head.shorthand().ok().map(str::to_string)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A running controller, for `muster serve` and for tests.
#[derive(Debug)]
pub struct Running {
    pub address: std::net::SocketAddr,
    pub public_key: String,
    /// The access rules in force, as request handlers see them.
    pub access: crate::rbac::Access,
    /// What the server's handlers share: tests build the router on it and
    /// send requests without a socket.
    pub state: AppState,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Stops the controller and waits for it.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
        self.task
            .await
            .map_err(|err| Error::Usage(format!("the controller task failed: {err}")))?
    }
}

/// Starts a controller: opens everything, binds, and serves until stopped.
pub async fn start(config: Config) -> Result<Running, Error> {
    start_with_clock(config, Arc::new(crate::scheduler::SystemClock)).await
}

/// [`start`] with the scheduler reading `clock`: tests drive scheduled
/// scripts through their slots with a [`crate::scheduler::ManualClock`].
pub async fn start_with_clock(
    config: Config,
    clock: Arc<dyn crate::scheduler::Clock>,
) -> Result<Running, Error> {
    let (key, created) = open_data_dir(&config.data.data_dir)?;
    if created {
        tracing::info!(data_dir = %config.data.data_dir.display(), "created a signing key");
    }
    let store = open_store(&config.data).await?;
    store.set_setting("public_url", &config.public_url).await?;
    let mirror: PathBuf = config.data.data_dir.join("mirror.git");
    let (repo, branch, path) = (
        config.repo.clone(),
        config.branch.clone(),
        config.path.clone(),
    );
    let source = tokio::task::spawn_blocking(move || {
        GitSource::open(&mirror, &repo, &branch, path.as_deref())
    })
    .await
    .map_err(|err| Error::Usage(format!("cannot open the Git mirror: {err}")))??;

    let key = Arc::new(key);
    let hub = Arc::new(server::hub::Hub::default());
    let caches = Arc::new(server::cache::Caches::default());
    let trigger = Trigger::default();
    let public_key: Arc<str> = key.public_key().into();
    let access = crate::rbac::Access::default();
    let audit = match &config.audit_remote {
        Some(remote) => AuditLog::in_data_dir(&config.data.data_dir).with_remote(remote),
        None => AuditLog::in_data_dir(&config.data.data_dir),
    };
    let reconciler = Arc::new(
        Reconciler::new(
            store.clone(),
            source,
            Arc::clone(&key),
            Arc::clone(&hub),
            Arc::clone(&caches),
            config.fetch_interval,
        )
        .with_access(access.clone()),
    );
    let state = AppState {
        store: store.clone(),
        hub: Arc::clone(&hub),
        caches: Arc::clone(&caches),
        nonces: Arc::default(),
        public_key: Arc::clone(&public_key),
        trigger: trigger.clone(),
        webhook_secret: config.webhook_secret.as_deref().map(Arc::from),
        long_poll_limit: config.long_poll,
        access: access.clone(),
        audit: audit.clone(),
        user_auth: Arc::new(server::user_auth::UserAuth::new(
            server::user_auth::Settings {
                secure_cookies: config.tls.is_some(),
                ..config.user_auth.clone()
            },
        )),
        key: Arc::clone(&key),
        outcomes: crate::actions::Outcomes::default(),
        source: reconciler.source(),
    };
    let outcomes = state.outcomes.clone();
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|err| Error::io(format!("cannot listen on {}", config.listen), err))?;
    let address = listener
        .local_addr()
        .map_err(|err| Error::io("cannot read the listening address", err))?;
    // The rules of the commit in force apply from the first request; if
    // they cannot be loaded now, every run of the reconciler tries again.
    if let Err(err) = reconciler.load_deployed().await {
        tracing::warn!(error = %err, "cannot load the deployed commit yet; access rules are empty until it loads");
    }
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    let stopped = |mut watch: tokio::sync::watch::Receiver<bool>| async move {
        let _ = watch.wait_for(|stop| *stop).await;
    };
    let reconciling = tokio::spawn(reconciler.run(trigger, stopped(watch.clone())));
    let scheduler = Arc::new(crate::scheduler::Scheduler::new(
        store.clone(),
        Arc::clone(&key),
        Arc::clone(&hub),
        audit.clone(),
        access.clone(),
        clock,
    ));
    let scheduling = tokio::spawn(scheduler.run(stopped(watch.clone())));
    let _pushing = audit.spawn_pusher(stopped(watch.clone()));
    tokio::spawn(outcomes.run(store.clone(), audit.clone(), stopped(watch.clone())));
    // Handlers see the peer's address: login limits and audit records
    // name it.
    let service =
        server::router(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let hub_for_shutdown = Arc::clone(&hub);
    let serve_shutdown = stopped(watch.clone());
    let tls = match &config.tls {
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|err| {
                    Error::io(
                        format!(
                            "cannot load the TLS certificate `{}` or key `{}`",
                            cert.display(),
                            key.display()
                        ),
                        err,
                    )
                })?;
            Some(tls)
        }
        None => None,
    };
    let task = tokio::spawn(async move {
        let result = match tls {
            None => axum::serve(listener, service)
                .with_graceful_shutdown(async move {
                    serve_shutdown.await;
                    // Waiting long polls end now rather than at their timeout.
                    hub_for_shutdown.close_all();
                })
                .await
                .map_err(|err| Error::io("the HTTP server failed", err)),
            Some(tls) => {
                let handle = axum_server::Handle::new();
                let stopper = handle.clone();
                tokio::spawn(async move {
                    serve_shutdown.await;
                    hub_for_shutdown.close_all();
                    stopper.graceful_shutdown(Some(Duration::from_secs(10)));
                });
                match listener.into_std() {
                    Ok(listener) => match axum_server::from_tcp_rustls(listener, tls) {
                        Ok(server) => server
                            .handle(handle)
                            .serve(service)
                            .await
                            .map_err(|err| Error::io("the HTTPS server failed", err)),
                        Err(err) => Err(Error::io("the HTTPS server failed", err)),
                    },
                    Err(err) => Err(Error::io("the HTTPS server failed", err)),
                }
            }
        };
        let _ = reconciling.await;
        let _ = scheduling.await;
        store.close().await;
        result
    });
    tracing::info!(address = %address, repo = %config.repo, branch = %config.branch, "controller started");
    Ok(Running {
        address,
        public_key: public_key.to_string(),
        access,
        state,
        shutdown,
        task,
    })
}

pub async fn run(args: ServeArgs) -> Result<ExitCode, Error> {
    init_logging();
    let config = Config::resolve(args)?;
    let running = start(config.clone()).await?;
    println!(
        "muster controller on http://{} (public URL {}), following {} branch {}{}",
        running.address,
        config.public_url,
        config.repo,
        config.branch,
        config
            .path
            .as_deref()
            .map(|p| format!(" path {p}"))
            .unwrap_or_default()
    );
    println!("public key: {}", running.public_key);
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on ctrl-c or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
