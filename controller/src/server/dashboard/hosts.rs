//! The dashboard's hosts pages: `GET /hosts`, the fleet as a table
//! filtered by group, label, state and free text, sorted and paginated;
//! and `GET /hosts/{id}` (id or name), one host in detail.
//!
//! The list loads the light rows of [`fleet::host_rows`] (one query),
//! keeps those in the caller's scope, filters and sorts them in memory
//! and renders one page (the `dashboard` benchmark measures it at 10,000
//! hosts). Group membership is worked out only for the rows on the page,
//! and for every row only when the group or label filter asks for it.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use muster_schemas::model::{FleetModel, Permission};
use muster_schemas::protocol::{Report, ResourceStatus, RunStatus};
use muster_web::Section;
use muster_web::chart::Series;
use muster_web::hosts::{
    self as view, BundleInForce, CheckRow, HostDetail, HostList, HostListRow, HostQuery, JobRow,
    ReportView, ResourceRow, Status,
};
use muster_web::parts::Tone;
use serde::Deserialize;

use super::fleet::{self, HostRow, Presence, Sync};
use super::{PageError, Viewer};
use crate::compile::{self, HostInput};
use crate::server::AppState;
use crate::store::{JobFilter, JobRecord, JobState};

/// Rows per page of the list.
pub const HOSTS_PER_PAGE: usize = 100;
/// Reports the detail page draws its charts from: two hours at the
/// agents' default of one report a minute.
const N_CHARTED_REPORTS: i64 = 120;
/// Jobs the detail page lists, newest first.
const N_LISTED_JOBS: i64 = 20;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/hosts", get(list))
        .route("/hosts/{id}", get(detail))
}

/// The list's query string, taken leniently: a field that makes no sense
/// filters nothing rather than failing the page.
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    #[serde(default)]
    group: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    dir: String,
    #[serde(default)]
    page: String,
}

impl ListParams {
    fn query(&self) -> HostQuery {
        let sort = match self.sort.as_str() {
            "last_seen" | "state" | "sync" => self.sort.clone(),
            _ => String::new(),
        };
        HostQuery {
            group: self.group.trim().to_string(),
            label: self.label.trim().to_string(),
            state: self.state.trim().to_string(),
            q: self.q.trim().to_string(),
            sort,
            descending: self.dir == "desc",
            page: self.page.trim().parse().unwrap_or(1).max(1),
        }
    }
}

pub fn presence_status(presence: Presence) -> Status {
    let tone = match presence {
        Presence::Online => Tone::Good,
        Presence::Offline => Tone::Bad,
        Presence::Stale => Tone::Warn,
        Presence::Pending => Tone::Busy,
        Presence::Rejected => Tone::Neutral,
    };
    Status::new(presence.as_str(), tone)
}

pub fn sync_status(sync: Sync) -> Status {
    let tone = match sync {
        Sync::InSync => Tone::Good,
        Sync::Drifted => Tone::Warn,
        Sync::Failing => Tone::Bad,
        Sync::Behind => Tone::Busy,
        Sync::Unknown => Tone::Neutral,
    };
    Status::new(sync.as_str(), tone)
}

/// Whether a row is in the state the filter names (a presence or a sync
/// state); an unknown name matches nothing.
fn in_state(row: &HostRow, state: &str, now: i64) -> bool {
    match state {
        "online" => row.presence(now) == Presence::Online,
        "offline" => row.presence(now) == Presence::Offline,
        "stale" => row.presence(now) == Presence::Stale,
        "pending" => row.presence(now) == Presence::Pending,
        "rejected" => row.presence(now) == Presence::Rejected,
        "drifted" => row.sync() == Sync::Drifted,
        "failing" => row.sync() == Sync::Failing,
        "behind" => row.sync() == Sync::Behind,
        "in_sync" => row.sync() == Sync::InSync,
        _ => false,
    }
}

/// Whether the free text is part of the host's name, id or one of its
/// label values, ignoring case. `needle` is lowercase already.
fn matches_text(row: &HostRow, needle: &str) -> bool {
    let contains = |text: &str| text.to_lowercase().contains(needle);
    contains(&row.name) || contains(&row.id) || row.labels.values().any(|value| contains(value))
}

/// The labels a host shows: its own (from the enrollment token) and
/// those of its `Host` document in the deployed commit.
fn shown_labels(model: &FleetModel, row: &HostRow) -> Vec<(String, String)> {
    let mut labels = row.labels.clone();
    if let Some(spec) = model.hosts.get(&row.name) {
        labels.extend(spec.labels.clone());
    }
    labels.into_iter().collect()
}

fn groups_of(model: &FleetModel, input: &HostInput) -> Vec<String> {
    model
        .groups
        .keys()
        .filter(|group| compile::in_group(model, group, input))
        .cloned()
        .collect()
}

/// Orders rows by the sort key; ties keep the name order they came in.
fn sort_rows(rows: &mut [&HostRow], sort: &str, descending: bool, now: i64) {
    let by_key = |a: &&HostRow, b: &&HostRow| -> Ordering {
        match sort {
            "last_seen" => a.last_seen_at.cmp(&b.last_seen_at),
            "state" => a.presence(now).cmp(&b.presence(now)),
            "sync" => a.sync().cmp(&b.sync()),
            _ => a.name.cmp(&b.name),
        }
    };
    // The rows arrive sorted by name, and the sort is stable.
    if descending {
        rows.sort_by(|a, b| by_key(a, b).reverse());
    } else if !sort.is_empty() && sort != "name" {
        rows.sort_by(by_key);
    }
}

async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(params): Query<ListParams>,
) -> Result<Response, PageError> {
    viewer.require(&state, Permission::HostsRead)?;
    let chrome = viewer.chrome(&state, Section::Hosts);
    let now = chrome.now;
    let mut query = params.query();
    let rules = state.access.current();
    let model = rules.model();

    let label = query.label.split_once('=').map_or_else(
        || (query.label.clone(), None),
        |(key, value)| (key.trim().to_string(), Some(value.trim().to_string())),
    );
    let caller = viewer.caller();
    let rows = fleet::host_rows(&state.store).await?;
    let visible = fleet::in_scope(&rules, &caller, Permission::HostsRead, &rows);
    let n_hosts = visible.len();

    let needle = query.q.to_lowercase();
    // The cheap filters first: groups and labels need each host's
    // effective labels.
    let mut matching: Vec<&HostRow> = visible
        .into_iter()
        .filter(|row| query.state.is_empty() || in_state(row, &query.state, now))
        .filter(|row| needle.is_empty() || matches_text(row, &needle))
        .filter(|row| {
            if query.group.is_empty() && query.label.is_empty() {
                return true;
            }
            let input = row.input();
            let in_group = query.group.is_empty() || compile::in_group(model, &query.group, &input);
            in_group
                && (query.label.is_empty() || {
                    let labels = compile::effective_labels(model, &input);
                    match &label {
                        (key, Some(value)) => labels.get(key) == Some(value),
                        (key, None) => labels.contains_key(key),
                    }
                })
        })
        .collect();
    let n_matching = matching.len();

    let pages = n_matching.div_ceil(HOSTS_PER_PAGE).max(1);
    query.page = query.page.min(pages);
    sort_rows(&mut matching, &query.sort, query.descending, now);
    let page_hosts: Vec<HostRow> = matching
        .iter()
        .skip((query.page - 1) * HOSTS_PER_PAGE)
        .take(HOSTS_PER_PAGE)
        .map(|row| (*row).clone())
        .collect();
    let page_rows = page_hosts
        .iter()
        .map(|row| HostListRow {
            id: row.id.clone(),
            name: row.name.clone(),
            presence: presence_status(row.presence(now)),
            sync: sync_status(row.sync()),
            groups: groups_of(model, &row.input()),
            labels: shown_labels(model, row),
            applied_generation: row.applied_generation,
            bundle_generation: row.bundle_generation,
            last_seen_at: row.last_seen_at,
        })
        .collect();
    let page = HostList {
        query,
        groups: model.groups.keys().cloned().collect(),
        rows: page_rows,
        per_page: HOSTS_PER_PAGE,
        n_matching,
        n_hosts,
    };
    Ok(viewer.page(view::list(&chrome, &page)))
}

fn resource_status(status: ResourceStatus) -> Status {
    match status {
        ResourceStatus::InSync => Status::new("in sync", Tone::Good),
        ResourceStatus::Changed => Status::new("changed", Tone::Busy),
        ResourceStatus::Drifted => Status::new("drifted", Tone::Warn),
        ResourceStatus::Failed => Status::new("failed", Tone::Bad),
        ResourceStatus::Skipped => Status::new("skipped", Tone::Neutral),
    }
}

fn run_status(status: RunStatus) -> Status {
    match status {
        RunStatus::InSync => Status::new("in sync", Tone::Good),
        RunStatus::Drifted => Status::new("drifted", Tone::Warn),
        RunStatus::Failing => Status::new("failing", Tone::Bad),
        RunStatus::Stale => Status::new("stale", Tone::Warn),
    }
}

pub fn job_status(state: JobState) -> Status {
    let tone = match state {
        JobState::Succeeded => Tone::Good,
        JobState::Failed | JobState::TimedOut | JobState::Refused => Tone::Bad,
        JobState::Pending | JobState::Queued | JobState::Delivered | JobState::Running => {
            Tone::Busy
        }
        JobState::Cancelled | JobState::Expired => Tone::Neutral,
    };
    Status::new(state.as_str().replace('_', " "), tone)
}

fn report_view(received_at: i64, report: &Report) -> ReportView {
    ReportView {
        received_at,
        generation: report.generation,
        commit: report.commit.clone(),
        status: run_status(report.status),
        finished_at: report.finished_at,
        resources: report
            .resources
            .iter()
            .map(|resource| ResourceRow {
                id: resource.id.clone(),
                status: resource_status(resource.status),
                message: resource.message.clone(),
                diff: resource.diff.clone(),
                failed: resource.status == ResourceStatus::Failed,
            })
            .collect(),
        checks: report
            .checks
            .iter()
            .map(|check| CheckRow {
                policy: check.policy.clone(),
                name: check.name.clone(),
                passed: check.passed,
                output: check.output.clone(),
            })
            .collect(),
    }
}

/// CPU, memory, fullest disk and load over `reports`, oldest first, at
/// the time each run finished: metrics are sampled then, and an agent
/// that was cut off sends its queued reports all at once.
fn charts(reports: &[(i64, Report)]) -> Vec<Series> {
    let series = |title: &str, unit: &str, ceiling: Option<f64>, pick: fn(&_) -> f64| {
        let mut points: Vec<(i64, f64)> = reports
            .iter()
            .filter_map(|(_, report)| Some((report.finished_at, pick(report.metrics.as_ref()?))))
            .collect();
        // An agent's clock may step back; the line goes forward in time.
        points.sort_by_key(|(at, _)| *at);
        Series {
            title: title.into(),
            unit: unit.into(),
            ceiling,
            points,
        }
    };
    vec![
        series("CPU", "%", Some(100.0), |m| m.cpu_percent),
        series("Memory", "%", Some(100.0), |m| m.memory_percent),
        series("Disk (fullest)", "%", Some(100.0), |m| m.disk_percent),
        series("Load (1 min)", "", None, |m| m.load1),
    ]
}

async fn detail(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    viewer.require(&state, Permission::HostsRead)?;
    let chrome = viewer.chrome(&state, Section::Hosts);
    let now = chrome.now;
    let store = &state.store;
    let host = store.find_host(&id).await?.ok_or_else(|| {
        PageError::not_found(format!(
            "there is no host `{id}`: it may have been removed; find it in the hosts list"
        ))
    })?;
    let bundle = store.bundle(&host.id).await?;
    let row = HostRow::of_record(&host, bundle.as_ref());
    let input = row.input();
    let rules = state.access.current();
    rules
        .authorize(
            &viewer.caller(),
            Permission::HostsRead,
            std::slice::from_ref(&input),
        )
        .map_err(|denied| PageError::new(StatusCode::FORBIDDEN, denied.to_string()))?;
    let model = rules.model();

    // Newest first from the store; the charts want them oldest first.
    let mut reports: Vec<(i64, Report)> = store
        .reports(&host.id, N_CHARTED_REPORTS)
        .await?
        .into_iter()
        .filter_map(|(at, body)| Some((at, serde_json::from_str::<Report>(&body).ok()?)))
        .collect();
    reports.reverse();
    let bundle = bundle.map(|bundle| BundleInForce {
        applied_at: reports
            .iter()
            .find(|(_, report)| report.generation >= bundle.generation)
            .map(|(_, report)| report.finished_at),
        commit: bundle.commit_id,
        generation: bundle.generation,
        issued_at: bundle.issued_at,
        expires_at: bundle.expires_at,
    });

    let jobs = store
        .jobs(&JobFilter {
            host_id: Some(host.id.clone()),
            limit: N_LISTED_JOBS,
            ..JobFilter::default()
        })
        .await?;
    let mut summaries: BTreeMap<String, String> = BTreeMap::new();
    for job in &jobs {
        if !summaries.contains_key(&job.action_id)
            && let Some(action) = store.action(&job.action_id).await?
        {
            summaries.insert(job.action_id.clone(), action.summary);
        }
    }
    let job_row = |job: &JobRecord| JobRow {
        action_id: job.action_id.clone(),
        summary: summaries
            .get(&job.action_id)
            .cloned()
            .unwrap_or_else(|| job.kind.clone()),
        kind: job.kind.clone(),
        requested_by: job.requested_by.clone(),
        state: job_status(job.state),
        created_at: job.created_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
        exit_code: job.exit_code,
    };

    let page = HostDetail {
        presence: presence_status(row.presence(now)),
        sync: sync_status(row.sync()),
        labels: shown_labels(model, &row),
        groups: groups_of(model, &input),
        id: host.id,
        name: host.name,
        enrolled_at: host.enrolled_at,
        last_seen_at: host.last_seen_at,
        applied_generation: host.applied_generation,
        facts: host.facts,
        charts: charts(&reports),
        bundle,
        report: reports.last().map(|(at, report)| report_view(*at, report)),
        jobs: jobs.iter().map(job_row).collect(),
    };
    Ok(viewer.page(view::detail(&chrome, &page)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, seen: Option<i64>, status: Option<&str>) -> HostRow {
        HostRow {
            id: format!("id-{name}"),
            name: name.into(),
            state: "approved".into(),
            labels: BTreeMap::from([("role".to_string(), "Web".to_string())]),
            label_facts: serde_json::Map::new(),
            enrolled_at: 0,
            last_seen_at: seen,
            applied_generation: 1,
            run_status: status.map(str::to_string),
            bundle_generation: Some(1),
            bundle_commit: Some("c".into()),
        }
    }

    #[test]
    fn sorting_by_a_key_keeps_names_in_order_within_ties() {
        let a = row("a", Some(10), Some("drifted"));
        let b = row("b", Some(30), Some("in_sync"));
        let c = row("c", Some(20), Some("drifted"));
        let names = |rows: &[&HostRow]| {
            rows.iter()
                .map(|row| row.name.clone())
                .collect::<Vec<String>>()
        };
        let mut rows = vec![&a, &b, &c];
        sort_rows(&mut rows, "last_seen", true, 40);
        assert_eq!(names(&rows), ["b", "c", "a"]);
        sort_rows(&mut rows, "sync", false, 40);
        assert_eq!(names(&rows), ["b", "c", "a"], "stable within a tie");
        let mut rows = vec![&a, &b, &c];
        sort_rows(&mut rows, "sync", false, 40);
        assert_eq!(names(&rows), ["b", "a", "c"]);
        sort_rows(&mut rows, "name", true, 40);
        assert_eq!(names(&rows), ["c", "b", "a"]);
    }

    #[test]
    fn free_text_matches_name_id_and_label_values_ignoring_case() {
        let host = row("web-01", None, None);
        assert!(matches_text(&host, "web-0"));
        assert!(matches_text(&host, "id-web"));
        assert!(matches_text(&host, "web"));
        assert!(!matches_text(&host, "role"), "keys are not values");
        assert!(!matches_text(&host, "db"));
    }

    #[test]
    fn states_filter_by_presence_or_sync() {
        let host = row("a", Some(100), Some("drifted"));
        assert!(in_state(&host, "online", 100));
        assert!(in_state(&host, "drifted", 100));
        assert!(!in_state(&host, "in_sync", 100));
        assert!(in_state(
            &host,
            "offline",
            100 + fleet::OFFLINE_AFTER_SECS + 1
        ));
        assert!(!in_state(&host, "nonsense", 100));
    }
}
