//! The dashboard's overview page (`GET /`): hosts by presence and by
//! sync, the compliance rate, the last commits with their rollout and the
//! last actions, each card only with the permission it needs.

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};

use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::response::Response;
use axum::routing::get;
use muster_schemas::model::Permission;
use muster_web::Section;
use muster_web::overview::{self, Card, Count, Overview};
use muster_web::parts::Tone;

use super::fleet::{self, HostRow, Presence, Sync};
use super::{PageError, Viewer};
use crate::compile::HostInput;
use crate::rbac::{AccessRules, Caller};
use crate::server::AppState;
use crate::store::{ActionRecord, ActionState, Backend, CommitState, JobFilter, Store, StoreError};

/// Commits and actions the overview lists.
const N_LISTED: usize = 5;

/// Actions looked at to find the last few in a scoped user's reach.
const N_ACTIONS_SCANNED: i64 = 50;

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(show))
}

async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, PageError> {
    let rules = state.access.current();
    let caller = viewer.caller();
    let now = state.user_auth.now();
    let rows = fleet::host_rows(&state.store).await?;
    let inputs = OnceCell::new();

    let readable: Option<Vec<&HostRow>> = viewer.may(&state, Permission::HostsRead).then(|| {
        match held_on(&rules, &caller, Permission::HostsRead, &rows, &inputs) {
            None => rows.iter().collect(),
            Some(ids) => rows
                .iter()
                .filter(|row| ids.contains(row.id.as_str()))
                .collect(),
        }
    });
    let (hosts, compliance) = match &readable {
        Some(readable) => (
            Card::Shown(host_counts(readable, now)),
            Card::Shown(compliance(&state, readable).await?),
        ),
        None => (
            Card::NeedsPermission(Permission::HostsRead.as_str()),
            Card::NeedsPermission(Permission::HostsRead.as_str()),
        ),
    };

    let commits = if viewer.may(&state, Permission::CommitsRead) {
        // The rollout counts only hosts the user may read: the bar must
        // not reveal hosts outside their scope. Most users read every
        // host, and then the rows need no copy.
        let rollouts = match &readable {
            Some(readable) => fleet::rollouts(readable.iter().copied()),
            None => HashMap::new(),
        };
        Card::Shown(last_commits(&state.store, &rollouts).await?)
    } else {
        Card::NeedsPermission(Permission::CommitsRead.as_str())
    };

    let actions = if viewer.may(&state, Permission::JobsRead) {
        let job_scope = held_on(&rules, &caller, Permission::JobsRead, &rows, &inputs);
        Card::Shown(last_actions(&state.store, job_scope.as_ref()).await?)
    } else {
        Card::NeedsPermission(Permission::JobsRead.as_str())
    };

    let chrome = viewer.chrome(&state, Section::Overview);
    let overview = Overview {
        url: uri.to_string(),
        hosts,
        compliance,
        commits,
        actions,
        fresh_install: rows.is_empty(),
    };
    Ok(viewer.page(overview::render(&chrome, &overview)))
}

/// The ids of the hosts `caller` holds `permission` on, or `None` for
/// every host: a fleet-wide grant (the common case) needs no host's RBAC
/// input, which are built once (`inputs`) only when a scope needs them.
fn held_on(
    rules: &AccessRules,
    caller: &Caller,
    permission: Permission,
    rows: &[HostRow],
    inputs: &OnceCell<Vec<HostInput>>,
) -> Option<HashSet<String>> {
    if fleet::holds_fleet_wide(rules, caller, permission) {
        return None;
    }
    let inputs = inputs.get_or_init(|| rows.iter().map(HostRow::input).collect());
    Some(
        rules
            .hosts_in_scope(caller, permission, inputs)
            .into_iter()
            .map(|input| input.id.clone())
            .collect(),
    )
}

/// The value of `/hosts?state=` that lists the hosts of a presence.
fn presence_filter(presence: Presence) -> &'static str {
    presence.as_str()
}

/// The value of `/hosts?state=` that lists the hosts of a sync state;
/// the host list has no filter for hosts that never reported.
fn sync_filter(sync: Sync) -> Option<&'static str> {
    match sync {
        Sync::InSync => Some("in_sync"),
        Sync::Drifted => Some("drifted"),
        Sync::Failing => Some("failing"),
        Sync::Behind => Some("behind"),
        Sync::Unknown => None,
    }
}

fn host_counts(rows: &[&HostRow], now: i64) -> overview::Hosts {
    let mut presence: HashMap<Presence, usize> = HashMap::new();
    let mut sync: HashMap<Sync, usize> = HashMap::new();
    for row in rows {
        *presence.entry(row.presence(now)).or_default() += 1;
        // Only approved hosts have a bundle to be in sync with.
        if row.state == "approved" {
            *sync.entry(row.sync()).or_default() += 1;
        }
    }
    let count = |label: &'static str, tone: Tone, n: usize, filter: Option<&str>| Count {
        label,
        tone,
        n,
        href: filter.map(|filter| format!("/hosts?state={filter}")),
    };
    let by_presence = [
        (Presence::Online, Tone::Good),
        (Presence::Offline, Tone::Bad),
        (Presence::Stale, Tone::Warn),
        (Presence::Pending, Tone::Busy),
    ]
    .into_iter()
    .map(|(p, tone)| {
        count(
            p.as_str(),
            tone,
            presence.get(&p).copied().unwrap_or(0),
            Some(presence_filter(p)),
        )
    })
    .collect();
    let by_sync = [
        (Sync::InSync, Tone::Good),
        (Sync::Drifted, Tone::Warn),
        (Sync::Failing, Tone::Bad),
        (Sync::Behind, Tone::Busy),
        (Sync::Unknown, Tone::Neutral),
    ]
    .into_iter()
    .map(|(s, tone)| {
        count(
            s.as_str(),
            tone,
            sync.get(&s).copied().unwrap_or(0),
            sync_filter(s),
        )
    })
    .collect();
    overview::Hosts {
        n_hosts: rows.len(),
        by_presence,
        by_sync,
    }
}

/// Each approved host's check counts (of its latest report, stored with
/// it), as `[host id, passed, total]` rows in one JSON array built by the
/// database: a driver moving 10,000 rows one by one costs more than the
/// rest of the page.
fn check_counts_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "SELECT json_group_array(json_array(id, checks_passed, checks_total))
             FROM hosts WHERE state = 'approved' AND checks_total > 0"
        }
        Backend::Postgres => {
            "SELECT json_agg(json_build_array(id, checks_passed, checks_total))::text
             FROM hosts WHERE state = 'approved' AND checks_total > 0"
        }
    }
}

/// Passed checks over all checks in the latest report of each host
/// shown.
async fn compliance(
    state: &AppState,
    hosts: &[&HostRow],
) -> Result<overview::Compliance, StoreError> {
    let counts: Vec<(String, u64, u64)> = fleet::aggregate(
        &state.store,
        check_counts_sql(state.store.backend()),
        "check counts",
    )
    .await?;
    let shown: HashSet<&str> = hosts.iter().map(|host| host.id.as_str()).collect();
    let mut result = overview::Compliance {
        n_passed: 0,
        n_checks: 0,
        n_hosts: 0,
    };
    for (_, passed, total) in counts.iter().filter(|(id, ..)| shown.contains(id.as_str())) {
        result.n_hosts += 1;
        result.n_checks += usize::try_from(*total).unwrap_or(usize::MAX);
        result.n_passed += usize::try_from(*passed).unwrap_or(usize::MAX);
    }
    Ok(result)
}

async fn last_commits(
    store: &Store,
    rollouts: &HashMap<String, fleet::Rollout>,
) -> Result<Vec<overview::Commit>, StoreError> {
    let deployed = store.deployed_commit().await?.map(|commit| commit.id);
    Ok(store
        .commits(N_LISTED as i64)
        .await?
        .into_iter()
        .map(|commit| {
            let (state, tone) = match commit.state {
                CommitState::Deployed if deployed.as_deref() == Some(commit.id.as_str()) => {
                    ("deployed (in force)", Tone::Good)
                }
                CommitState::Deployed => ("deployed", Tone::Neutral),
                CommitState::Rejected => ("rejected", Tone::Bad),
            };
            let rollout = rollouts.get(&commit.id).copied().unwrap_or_default();
            overview::Commit {
                summary: commit.summary,
                author: commit.author,
                state,
                tone,
                recorded_at: commit.recorded_at,
                rollout: overview::Rollout {
                    applied: rollout.applied,
                    failed: rollout.failed,
                    pending: rollout.pending,
                },
                id: commit.id,
            }
        })
        .collect())
}

/// The last actions with a job on a host the user may read jobs of
/// (`job_scope`; every host when `None`).
async fn last_actions(
    store: &Store,
    job_scope: Option<&HashSet<String>>,
) -> Result<Vec<overview::Action>, StoreError> {
    let mut shown = Vec::new();
    for action in store.actions(N_ACTIONS_SCANNED).await? {
        if shown.len() == N_LISTED {
            break;
        }
        if let Some(job_scope) = job_scope {
            let jobs = store
                .jobs(&JobFilter {
                    action_id: Some(action.id.clone()),
                    limit: i64::MAX,
                    ..JobFilter::default()
                })
                .await?;
            if !jobs
                .iter()
                .any(|job| job_scope.contains(job.host_id.as_str()))
            {
                continue;
            }
        }
        let progress = store.action_progress(&action.id).await?;
        shown.push(action_line(action, &progress));
    }
    Ok(shown)
}

fn action_line(
    action: ActionRecord,
    progress: &std::collections::BTreeMap<crate::store::JobState, i64>,
) -> overview::Action {
    let (state, tone) = match action.state {
        ActionState::Running => ("running", Tone::Busy),
        ActionState::Completed if progress.keys().any(|state| state.is_failure()) => {
            ("completed", Tone::Warn)
        }
        ActionState::Completed => ("completed", Tone::Good),
        ActionState::Stopped => ("stopped", Tone::Bad),
        ActionState::Cancelled => ("cancelled", Tone::Neutral),
    };
    let progress = if progress.is_empty() {
        "no jobs".to_string()
    } else {
        progress
            .iter()
            .map(|(state, n)| format!("{n} {}", state.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    overview::Action {
        id: action.id,
        summary: action.summary,
        requested_by: action.requested_by,
        state,
        tone,
        created_at: action.created_at,
        progress,
    }
}
