//! The run loop (`muster-agent run`): long-poll the controller for a newer
//! bundle, verify it, converge it, record it, report; re-converge the
//! bundle in force on its interval; keep enforcing it while the controller
//! is unreachable.
//!
//! **When the generation is stored.** A verified bundle is converged first;
//! its generation (and the bundle itself) is written durably right after
//! the converge run was attempted, whatever its resources came to. A crash
//! during the converge leaves the old generation on disk, so the controller
//! delivers the same bundle again and the run is retried; writing it before
//! converging would lose that retry. Replaying that same bundle is harmless
//! (it is the one the controller wants applied), and [`StateDir::store_applied`]
//! never writes a smaller generation, so the last applied generation never
//! goes backwards.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster_schemas::bundle::{self, Bundle, SignedBundle};
use muster_schemas::protocol::{CheckReport, Report, ResourceReport, ResourceStatus, RunStatus};

use crate::checks::run_checks;
use tokio::time::{Instant, sleep_until};

use crate::client::{Client, Delivery, LONG_POLL_SECS, Poll, random_duration, unix_now};
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::facts::{MetricsSampler, facts};
use crate::jobs::{JobRunner, run_jobs};
use crate::local::open_state;
use crate::report::{report, run_status};
use crate::resources::{Context, converge};
use crate::state::{Applied, StateDir};

/// The longest wait between retries after errors.
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// The first retry waits up to this long.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// How long a pending host waits between asks (plus up to as much again).
const PENDING_WAIT: Duration = Duration::from_secs(30);
/// The re-converge interval when a bundle says 0.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// What `run` was told.
#[derive(Debug)]
pub struct RunOptions {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub root: Option<PathBuf>,
    pub once: bool,
}

/// Runs the agent until SIGTERM or ctrl-c (or after one round with
/// `once`). Returns whether the last round reached the controller.
pub fn run(options: RunOptions) -> Result<bool, AgentError> {
    let config = AgentConfig::load(&options.config)?;
    let root = crate::local::absolute_root(options.root)?;
    let state = open_state(&options.state_dir, root.as_deref())?;
    let client = Client::new(&config.server, &config.host_id, &config.secret)?;
    let context = || match &root {
        Some(root) => Context::new().with_root(root),
        None => Context::new(),
    };
    let ctx = context();
    // Jobs run beside the bundle loop, with a context of their own.
    let jobs = Arc::new(
        JobRunner::new(&config.host_id, &config.public_key, state.path(), context()).map_err(
            AgentError::io("cannot open the job ledger in the state dir"),
        )?,
    );
    let jobs_client = client.clone();
    // One thread is enough: the agent waits on two long polls, and
    // converging and jobs run on the blocking pool. It keeps the idle RSS
    // small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::io("cannot start the async runtime"))?;
    let mut agent = Agent::new(config, state, client, ctx)?;
    runtime.block_on(async move {
        if options.once {
            let reached = agent.run(true).await;
            run_jobs(jobs, jobs_client, true).await;
            reached
        } else {
            // Dropped with the runtime on shutdown; a job running then
            // finishes first (the blocking pool is waited for).
            tokio::spawn(run_jobs(jobs, jobs_client, false));
            agent.run(false).await
        }
    })
}

/// The exponential backoff with full jitter: the n-th retry waits a random
/// time in `[0, min(cap, base · 2ⁿ)]`, so that a fleet does not come back
/// in lockstep after an outage.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = BACKOFF_BASE
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(BACKOFF_CAP);
        self.attempt = self.attempt.saturating_add(1);
        random_duration(ceiling)
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

struct Agent {
    config: AgentConfig,
    state: StateDir,
    client: Client,
    ctx: Arc<Context>,
    sampler: MetricsSampler,
    applied: Applied,
    /// The bundle being enforced, shared with the converge runs on the
    /// blocking pool rather than copied for each.
    in_force: Option<Arc<Bundle>>,
    /// The last refusal reported, so that a bundle the controller keeps
    /// offering is reported once, not on every poll.
    last_refusal: Option<String>,
}

impl Agent {
    fn new(
        config: AgentConfig,
        state: StateDir,
        client: Client,
        ctx: Context,
    ) -> Result<Agent, AgentError> {
        let mut applied = state
            .applied()
            .map_err(AgentError::io("cannot read the applied generation"))?;
        let in_force = stored_bundle(&config, &state, &applied).map(Arc::new);
        if let Some(bundle) = &in_force {
            // A crash between storing the bundle and the generation leaves
            // the bundle ahead; its run was attempted, so catch up.
            if bundle.generation > applied.generation {
                applied = Applied {
                    generation: bundle.generation,
                    commit: bundle.commit.clone(),
                };
                state
                    .store_applied(&applied)
                    .map_err(AgentError::io("cannot record the applied generation"))?;
            }
        }
        Ok(Agent {
            config,
            state,
            client,
            ctx: Arc::new(ctx),
            sampler: MetricsSampler::new(),
            applied,
            in_force,
            last_refusal: None,
        })
    }

    async fn run(&mut self, once: bool) -> Result<bool, AgentError> {
        tracing::info!(
            host = %self.config.host_id,
            server = %self.config.server,
            generation = self.applied.generation,
            "agent started"
        );
        let mut shutdown = std::pin::pin!(shutdown_signal());
        let mut backoff = Backoff::default();
        let mut next_converge = Instant::now() + self.splay();
        loop {
            self.flush_queue().await;
            let wait = if once { 0 } else { LONG_POLL_SECS };
            let poll = tokio::select! {
                poll = self.client.poll_bundle(self.applied.generation, wait) => Some(poll),
                () = sleep_until(next_converge), if self.in_force.is_some() && !once => None,
                () = &mut shutdown => {
                    tracing::info!("shutting down");
                    return Ok(true);
                }
            };
            let pause = match poll {
                None => {
                    self.reconverge().await;
                    next_converge = Instant::now() + self.interval() + self.splay();
                    continue;
                }
                Some(Ok(Poll::Bundle(signed))) => {
                    backoff.reset();
                    match self.accept(signed).await {
                        Ok(()) => {
                            next_converge = Instant::now() + self.interval() + self.splay();
                            if once {
                                self.flush_queue().await;
                                return Ok(true);
                            }
                            continue;
                        }
                        // The controller would offer the same bundle at
                        // once: wait as after any error.
                        Err(()) if once => return Ok(false),
                        Err(()) => backoff.next(),
                    }
                }
                Some(Ok(Poll::NotModified)) => {
                    backoff.reset();
                    if once {
                        // Nothing new: one run over the bundle in force.
                        self.reconverge().await;
                        self.flush_queue().await;
                        return Ok(true);
                    }
                    continue;
                }
                Some(Ok(Poll::Forbidden(message))) => {
                    tracing::warn!(
                        host = %self.config.host_id,
                        answer = %message,
                        "the controller gives this host no bundle: it is pending approval (run `muster hosts approve {}` on the controller) or was rejected; asking again later",
                        self.config.name
                    );
                    if once {
                        return Ok(false);
                    }
                    PENDING_WAIT + random_duration(PENDING_WAIT)
                }
                Some(Err(err)) => {
                    let pause = backoff.next();
                    tracing::warn!(
                        error = %err,
                        retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        "cannot get a bundle; the bundle in force stays enforced"
                    );
                    if once {
                        // Keep the host in its last good state even now.
                        self.reconverge().await;
                        return Ok(false);
                    }
                    pause
                }
            };
            // Waiting out an error still re-converges on time and stops on
            // a signal.
            let resume = Instant::now() + pause;
            loop {
                tokio::select! {
                    () = sleep_until(resume) => break,
                    () = sleep_until(next_converge), if self.in_force.is_some() => {
                        self.reconverge().await;
                        next_converge = Instant::now() + self.interval() + self.splay();
                    }
                    () = &mut shutdown => {
                        tracing::info!("shutting down");
                        return Ok(true);
                    }
                }
            }
        }
    }

    fn interval(&self) -> Duration {
        match self
            .in_force
            .as_ref()
            .map(|b| b.desired.settings.interval_secs)
        {
            Some(0) | None => DEFAULT_INTERVAL,
            Some(secs) => Duration::from_secs(secs),
        }
    }

    fn splay(&self) -> Duration {
        let splay = self
            .in_force
            .as_ref()
            .map_or(0, |b| b.desired.settings.splay_secs);
        random_duration(Duration::from_secs(splay))
    }

    /// Verifies a bundle from the controller and, when it passes, converges
    /// it, records it and reports. A refused bundle is logged and reported,
    /// and the host is not touched.
    async fn accept(&mut self, signed: SignedBundle) -> Result<(), ()> {
        let verified = bundle::verify(
            &self.config.public_key,
            &signed,
            &self.config.host_id,
            self.applied.generation,
            unix_now(),
        );
        let bundle = match verified {
            Ok(bundle) => bundle,
            Err(err) => {
                tracing::error!(
                    host = %self.config.host_id,
                    check = err.metric_label(),
                    error = %err,
                    "bundle refused; the host was not touched"
                );
                let message = format!("bundle refused: {err}");
                if self.last_refusal.as_deref() != Some(message.as_str()) {
                    self.last_refusal = Some(message.clone());
                    let now = unix_now();
                    let refusal = Report {
                        generation: self.applied.generation,
                        commit: self.applied.commit.clone(),
                        status: RunStatus::Failing,
                        started_at: now,
                        finished_at: now,
                        resources: vec![ResourceReport {
                            id: "bundle".into(),
                            status: ResourceStatus::Failed,
                            message: Some(message),
                            diff: None,
                        }],
                        checks: Vec::new(),
                        facts: None,
                        metrics: None,
                    };
                    self.submit(refusal).await;
                }
                return Err(());
            }
        };
        tracing::info!(
            generation = bundle.generation,
            commit = %bundle.commit,
            "applying a new bundle"
        );
        let started_at = unix_now();
        let bundle = Arc::new(bundle);
        let (resources, checks) = self.converge(&bundle, false).await;
        let finished_at = unix_now();
        // The commit point: see the module docs for why it comes after the
        // converge run. The bundle goes first, so that a crash between the
        // two leaves the bundle ahead, which `Agent::new` catches up with.
        let applied = Applied {
            generation: bundle.generation,
            commit: bundle.commit.clone(),
        };
        if let Err(err) = self
            .state
            .store_bundle(&signed)
            .and_then(|()| self.state.store_applied(&applied))
        {
            tracing::error!(error = %err, "cannot record the applied generation in the state dir");
        }
        // Stored: its JSON is not needed while the report is built and sent.
        drop(signed);
        self.applied = applied;
        self.last_refusal = None;
        let status = run_status(&resources);
        let report = report(&bundle, status, started_at, finished_at, resources, checks);
        self.in_force = Some(bundle);
        self.submit(report).await;
        Ok(())
    }

    /// Re-converges the bundle in force (drift detection). An expired one
    /// is only checked, and the host reports itself stale.
    async fn reconverge(&mut self) {
        let Some(bundle) = self.in_force.clone() else {
            return;
        };
        let started_at = unix_now();
        let expired = started_at >= bundle.expires_at;
        if expired {
            tracing::warn!(
                generation = bundle.generation,
                expires_at = bundle.expires_at,
                "the bundle in force has expired: it is not applied again until the controller issues a fresh one"
            );
        }
        let (resources, checks) = self.converge(&bundle, expired).await;
        let status = if expired {
            RunStatus::Stale
        } else {
            run_status(&resources)
        };
        let report = report(&bundle, status, started_at, unix_now(), resources, checks);
        self.submit(report).await;
    }

    /// Converges on the blocking pool: resources do blocking file and
    /// process I/O, and the runtime must still notice signals.
    /// Then runs the compliance checks, which only look.
    async fn converge(
        &self,
        bundle: &Arc<Bundle>,
        dry_run: bool,
    ) -> (Vec<ResourceReport>, Vec<CheckReport>) {
        let ctx = Arc::clone(&self.ctx);
        let shared = Arc::clone(bundle);
        let outcome = tokio::task::spawn_blocking(move || {
            let desired = &shared.desired;
            let resources = converge(desired, &ctx, dry_run);
            let checks = run_checks(&desired.checks, &ctx);
            (resources, checks)
        })
        .await;
        let (resources, checks) = outcome.unwrap_or_else(|err| {
            let failed = ResourceReport {
                id: "bundle".into(),
                status: ResourceStatus::Failed,
                message: Some(format!("the converge run stopped: {err}")),
                diff: None,
            };
            (vec![failed], Vec::new())
        });
        let count = |status| resources.iter().filter(|r| r.status == status).count();
        tracing::info!(
            generation = bundle.generation,
            dry_run,
            changed = count(ResourceStatus::Changed),
            drifted = count(ResourceStatus::Drifted),
            failed = count(ResourceStatus::Failed),
            checks_failing = checks.iter().filter(|c| !c.passed).count(),
            "converge run done"
        );
        (resources, checks)
    }

    /// Adds facts and metrics, queues the report on disk and sends the
    /// queue.
    async fn submit(&mut self, mut report: Report) {
        report.facts = Some(facts());
        report.metrics = Some(self.sampler.sample());
        match self.state.enqueue(&report) {
            Ok(0) => {}
            Ok(dropped) => {
                tracing::warn!(
                    dropped,
                    "the report queue is full: the oldest reports were dropped"
                )
            }
            Err(err) => tracing::error!(error = %err, "cannot queue a report"),
        }
        self.flush_queue().await;
    }

    /// Sends queued reports, oldest first, until one cannot be sent.
    async fn flush_queue(&self) {
        let queued = match self.state.queued() {
            Ok(queued) => queued,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the report queue");
                return;
            }
        };
        for path in queued {
            let body = match self.state.read_queued(&path) {
                Ok(body) => body,
                Err(err) => {
                    tracing::error!(error = %err, path = %path.display(), "cannot read a queued report");
                    continue;
                }
            };
            match self.client.send_report(body).await {
                Ok(Delivery::Accepted) => {}
                Ok(Delivery::Rejected(why)) => {
                    tracing::error!(reason = %why, "the controller refused a report; it is dropped");
                }
                Err(err) => {
                    tracing::debug!(error = %err, "reports stay queued until the controller answers");
                    return;
                }
            }
            if let Err(err) = self.state.remove_queued(&path) {
                tracing::error!(error = %err, "cannot remove a sent report from the queue");
                return;
            }
        }
    }
}

/// The bundle stored in the state dir, verified again with the pinned key
/// (the state dir is the agent's own, but a bundle is only ever trusted
/// with its signature). Its expiry is not checked here: an expired bundle
/// stays in force, reported stale, and is never applied anew.
fn stored_bundle(config: &AgentConfig, state: &StateDir, applied: &Applied) -> Option<Bundle> {
    let signed = match state.bundle() {
        Ok(signed) => signed?,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the stored bundle; waiting for the controller");
            return None;
        }
    };
    let claimed = serde_json::from_str::<Bundle>(&signed.bundle).ok()?;
    if claimed.generation < applied.generation || claimed.generation == 0 {
        tracing::warn!("the stored bundle is older than the applied generation; ignoring it");
        return None;
    }
    // i64::MIN as "now": the signature, header and host are checked, not
    // the expiry.
    match bundle::verify(
        &config.public_key,
        &signed,
        &config.host_id,
        claimed.generation - 1,
        i64::MIN,
    ) {
        Ok(bundle) => Some(bundle),
        Err(err) => {
            tracing::error!(error = %err, "the stored bundle does not verify; ignoring it");
            None
        }
    }
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
