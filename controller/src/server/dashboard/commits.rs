//! The dashboard's commits pages: `GET /commits`, the last commits the
//! controller tried with their state, diagnostics and rollout; and
//! `GET /commits/{id}/plan`, what a commit changes against its parent,
//! planned by the same code as `GET /v1/plan` (which needs a bearer
//! token, so a browser could not follow a link to it).

use axum::Router;
use axum::extract::{OriginalUri, Path, State};
use axum::response::Response;
use axum::routing::get;
use muster_schemas::Diagnostic;
use muster_schemas::model::Permission;
use muster_web::Section;
use muster_web::commits::{self as view, CommitStatus, PlanView, Problem};
use muster_web::overview::Rollout;
use serde_json::Value;

use super::fleet;
use super::{PageError, Viewer};
use crate::server::AppState;
use crate::server::user_api::{PlanAnswer, plan_as};
use crate::store::{CommitRecord, CommitState};

/// Commits the page lists, newest first.
const N_LISTED_COMMITS: i64 = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/commits", get(list))
        .route("/commits/{id}/plan", get(plan))
}

async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, PageError> {
    viewer.require(&state, Permission::CommitsRead)?;
    let rules = state.access.current();
    let rows = fleet::host_rows(&state.store).await?;
    // Rollouts count only the hosts the user may read: the bar must not
    // reveal hosts outside their scope.
    let readable = fleet::in_scope(&rules, &viewer.caller(), Permission::HostsRead, &rows);
    let rollouts = fleet::rollouts(readable);
    let in_force = state.store.deployed_commit().await?.map(|commit| commit.id);
    let commits = state
        .store
        .commits(N_LISTED_COMMITS)
        .await?
        .into_iter()
        .map(|commit| {
            let status = match commit.state {
                CommitState::Rejected => CommitStatus::Rejected,
                CommitState::Deployed if in_force.as_deref() == Some(commit.id.as_str()) => {
                    CommitStatus::InForce
                }
                CommitState::Deployed => CommitStatus::Deployed,
            };
            let rollout = rollouts.get(&commit.id).map(|rollout| Rollout {
                applied: rollout.applied,
                failed: rollout.failed,
                pending: rollout.pending,
            });
            // The commit in force has a rollout even before any host
            // took it (an empty fleet); an older one without hosts has
            // been superseded everywhere.
            let rollout = match status {
                CommitStatus::InForce => Some(rollout.unwrap_or_default()),
                _ => rollout,
            };
            commit_view(commit, status, rollout)
        })
        .collect();
    let chrome = viewer.chrome(&state, Section::Commits);
    let page = view::Commits {
        url: uri.to_string(),
        commits,
    };
    Ok(viewer.page(view::render(&chrome, &page)))
}

fn commit_view(
    commit: CommitRecord,
    status: CommitStatus,
    rollout: Option<Rollout>,
) -> view::Commit {
    view::Commit {
        plan_href: format!("/commits/{}/plan", commit.id),
        problems: problems_of(&commit.diagnostics),
        summary: commit.summary,
        author: commit.author,
        committed_at: commit.committed_at,
        recorded_at: commit.recorded_at,
        deployed_at: commit.deployed_at,
        status,
        n_changed: commit.n_changed,
        rollout,
        id: commit.id,
    }
}

/// A rejected commit's stored diagnostics. A list that is not of
/// diagnostics (written by an older controller) is shown as text rather
/// than hidden.
fn problems_of(diagnostics: &Value) -> Vec<Problem> {
    match serde_json::from_value::<Vec<Diagnostic>>(diagnostics.clone()) {
        Ok(diagnostics) => diagnostics.iter().map(problem).collect(),
        Err(_) => diagnostics
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| Problem {
                place: String::new(),
                message: item
                    .as_str()
                    .map_or_else(|| item.to_string(), str::to_string),
                hint: None,
            })
            .collect(),
    }
}

fn problem(diagnostic: &Diagnostic) -> Problem {
    let message = if diagnostic.path.is_empty() {
        diagnostic.message.clone()
    } else {
        format!("{}: {}", diagnostic.path, diagnostic.message)
    };
    Problem {
        place: format!(
            "{}:{}:{}",
            diagnostic.file, diagnostic.line, diagnostic.column
        ),
        message,
        hint: diagnostic.hint.clone(),
    }
}

/// `GET /commits/{id}/plan`: the plan of a commit the controller tried,
/// against its first parent, as `muster plan --format text` prints it.
async fn plan(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    viewer.require(&state, Permission::CommitsRead)?;
    // Only commits the controller recorded: the page must not become a
    // way to make the controller fetch arbitrary branches.
    let Some(commit) = state.store.commit(&id).await? else {
        return Err(PageError::not_found(format!(
            "unknown commit `{id}`: pick one from the commits page"
        )));
    };
    let parent = format!("{}^", commit.id);
    let view = if !has_parent(&state, &parent).await? {
        PlanView::NoParent
    } else {
        match plan_as(&state, &viewer.caller(), &parent, &commit.id).await? {
            PlanAnswer::Plan(plan) => PlanView::Text(crate::commands::plan::render_text(&plan)),
            PlanAnswer::InvalidHead { diagnostics, .. } => {
                PlanView::Invalid(diagnostics.iter().map(problem).collect())
            }
        }
    };
    let chrome = viewer.chrome(&state, Section::Commits);
    Ok(viewer.page(view::plan(&chrome, &commit.id, &view)))
}

/// Whether `revision` (a commit's parent) resolves in the mirror.
async fn has_parent(state: &AppState, revision: &str) -> Result<bool, PageError> {
    let source = std::sync::Arc::clone(&state.source);
    let revision = revision.to_string();
    tokio::task::spawn_blocking(move || {
        let source = source.lock().unwrap_or_else(|p| p.into_inner());
        source.resolve(&revision).is_ok()
    })
    .await
    .map_err(|err| crate::server::ApiError::internal(err).into())
}
