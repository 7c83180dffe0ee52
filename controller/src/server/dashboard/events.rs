//! `GET /events`: the dashboard's live updates, as server-sent events.
//!
//! Each event names a topic (`hosts`, `commits`, `jobs`, `enrollment`,
//! `audit`) and carries no data: a live region that depends on the topic
//! fetches its page again and sees only what its user may see, so the
//! stream itself needs no RBAC. Changes made in this process are
//! announced at once through the hub; a poller notices the changes of
//! other replicas (and of the command line) in the database and the audit
//! repository every two seconds while a dashboard listens. Bursts are
//! coalesced: a topic is sent at most once per half second.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::stream::{self, Stream, StreamExt};
use sqlx::Row;
use tokio::sync::broadcast::error::RecvError;

use super::Viewer;
use crate::server::AppState;
use crate::server::hub::{Hub, Topic};

/// How long changes are gathered before they are sent.
const COALESCE: Duration = Duration::from_millis(500);
/// How often the poller looks for changes made elsewhere.
const POLL_EVERY: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

async fn events(
    State(state): State<AppState>,
    _viewer: Viewer,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    if state.hub.ui.start_polling() {
        tokio::spawn(poll(state.clone()));
    }
    let receiver = state.hub.ui.subscribe();
    let hub = Arc::clone(&state.hub);
    let batches = stream::unfold((receiver, hub), |(mut receiver, hub)| async move {
        let topics = next_batch(&mut receiver, &hub).await?;
        Some((topics, (receiver, hub)))
    });
    let events = batches.flat_map(|topics| {
        stream::iter(
            topics
                .into_iter()
                .map(|topic| Ok(Event::default().event(topic).data("changed"))),
        )
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// The next topics to send: the first change, and whatever else changes
/// within [`COALESCE`] of it. `None` ends the stream (on shutdown).
async fn next_batch(
    receiver: &mut tokio::sync::broadcast::Receiver<Topic>,
    hub: &Hub,
) -> Option<BTreeSet<&'static str>> {
    let mut topics = BTreeSet::new();
    // Wait in slices, so that a shutdown ends the stream: the server's
    // graceful shutdown waits for every open response.
    while topics.is_empty() {
        if hub.is_closed() {
            return None;
        }
        match tokio::time::timeout(Duration::from_secs(1), receiver.recv()).await {
            Ok(Ok(topic)) => {
                topics.insert(topic.name());
            }
            // Fell behind: everything may have changed.
            Ok(Err(RecvError::Lagged(_))) => topics.extend(Topic::ALL.map(Topic::name)),
            Ok(Err(RecvError::Closed)) => return None,
            Err(_) => {}
        }
    }
    let deadline = tokio::time::Instant::now() + COALESCE;
    loop {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Ok(topic)) => {
                topics.insert(topic.name());
            }
            Ok(Err(RecvError::Lagged(_))) => topics.extend(Topic::ALL.map(Topic::name)),
            Ok(Err(RecvError::Closed)) | Err(_) => break,
        }
    }
    Some(topics)
}

/// A cheap summary of what each topic shows; a topic whose summary
/// changed is announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fingerprint {
    hosts: (i64, i64, i64),
    commits: (i64, i64),
    jobs: (i64, i64),
    enrollment: (i64, i64, i64),
    audit: Option<String>,
}

async fn fingerprint(
    state: &AppState,
) -> Result<Fingerprint, Box<dyn std::error::Error + Send + Sync>> {
    let pool = state.store.pool();
    let hosts = sqlx::query(
        "SELECT COUNT(*) AS n,
                COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0) AS pending,
                (SELECT COALESCE(MAX(id), 0) FROM reports) AS last_report
         FROM hosts",
    )
    .fetch_one(pool)
    .await?;
    let commits =
        sqlx::query("SELECT COUNT(*) AS n, COALESCE(MAX(recorded_at), 0) AS last FROM commits")
            .fetch_one(pool)
            .await?;
    let jobs = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM actions) AS actions,
                (SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'delivered', 'running')) AS open",
    )
    .fetch_one(pool)
    .await?;
    let tokens = sqlx::query(
        "SELECT COUNT(*) AS n, COUNT(revoked_at) AS revoked, COALESCE(SUM(uses), 0) AS uses
         FROM enrollment_tokens",
    )
    .fetch_one(pool)
    .await?;
    let audit = state.audit.clone();
    let audit = tokio::task::spawn_blocking(move || audit.head()).await??;
    Ok(Fingerprint {
        hosts: (
            hosts.try_get("n")?,
            hosts.try_get("pending")?,
            hosts.try_get("last_report")?,
        ),
        commits: (commits.try_get("n")?, commits.try_get("last")?),
        jobs: (jobs.try_get("actions")?, jobs.try_get("open")?),
        enrollment: (
            tokens.try_get("n")?,
            tokens.try_get("revoked")?,
            tokens.try_get("uses")?,
        ),
        audit,
    })
}

/// Announces changes made by other replicas or the command line, while
/// some dashboard listens.
async fn poll(state: AppState) {
    let mut last: Option<Fingerprint> = None;
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.hub.is_closed() {
            return;
        }
        if state.hub.ui.n_listeners() == 0 {
            last = None;
            continue;
        }
        let now = match fingerprint(&state).await {
            Ok(now) => now,
            Err(err) => {
                tracing::warn!(error = %err, "cannot look for dashboard changes; trying again");
                continue;
            }
        };
        if let Some(before) = &last {
            let ui = &state.hub.ui;
            if before.hosts != now.hosts {
                ui.notify(Topic::Hosts);
            }
            if before.hosts.1 != now.hosts.1 || before.enrollment != now.enrollment {
                ui.notify(Topic::Enrollment);
            }
            if before.commits != now.commits {
                ui.notify(Topic::Commits);
            }
            if before.jobs != now.jobs {
                ui.notify(Topic::Jobs);
            }
            if before.audit != now.audit {
                ui.notify(Topic::Audit);
            }
        }
        last = Some(now);
    }
}
