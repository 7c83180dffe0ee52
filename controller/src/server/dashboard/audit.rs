//! The dashboard's audit page (`GET /audit`, `audit:read`): the audit
//! repository's records, newest first, filtered by user, action and time,
//! fifty to a page.
//!
//! Reading a record means comparing its commit's tree with its parent's,
//! which grows with the records of that day: a few thousand records take
//! seconds. Commits never change, so the records read are kept per
//! repository and a request reads only those written since the last one
//! ([`crate::audit::AuditLog::entries_after`]), on the blocking pool.

use std::collections::HashSet;

use axum::Router;
use axum::extract::{OriginalUri, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use chrono::NaiveDate;
use muster_schemas::model::Permission;
use muster_web::Section;
use muster_web::audit::{self, Audit, Filters, Row};
use serde::Deserialize;

use super::{PageError, Viewer};
use crate::audit::{AuditError, Entry, Filter, RecordKind};
use crate::server::AppState;

/// Records per page.
const PER_PAGE: usize = 50;

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(show))
}

/// The filter form as sent; everything optional and read leniently.
#[derive(Debug, Default, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    user: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    range: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    page: String,
}

/// The filters, checked: times as Unix seconds, `until` exclusive.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    user: Option<String>,
    action: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
}

fn day_start(text: &str, what: &str) -> Result<i64, String> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|time| time.and_utc().timestamp())
        .ok_or_else(|| format!("`{text}` is not a date for {what}: write it as YYYY-MM-DD"))
}

fn wanted(query: &AuditQuery, now: i64) -> Result<Wanted, String> {
    let text = |value: &str| Some(value.trim().to_string()).filter(|value| !value.is_empty());
    let range_since = match query.range.trim() {
        "" => None,
        "24h" => Some(now - 86_400),
        "7d" => Some(now - 7 * 86_400),
        "30d" => Some(now - 30 * 86_400),
        other => {
            return Err(format!("unknown time range `{other}`: pick 24h, 7d or 30d"));
        }
    };
    let date_since = match text(&query.since) {
        Some(since) => Some(day_start(&since, "since")?),
        None => None,
    };
    let until = match text(&query.until) {
        // The whole day named is included.
        Some(until) => Some(day_start(&until, "until")? + 86_400),
        None => None,
    };
    Ok(Wanted {
        user: text(&query.user),
        action: text(&query.action).map(|action| action.to_lowercase()),
        since: range_since.max(date_since),
        until,
    })
}

/// Records of the wanted action (a part of its name) and time; outcomes
/// go with the actions they follow.
fn select(entries: Vec<Entry>, wanted: &Wanted) -> Vec<Entry> {
    let matching_requests: Option<HashSet<String>> = wanted.action.as_ref().map(|action| {
        entries
            .iter()
            .filter(|entry| {
                entry.record.kind == RecordKind::Action
                    && entry.record.action.to_lowercase().contains(action.as_str())
            })
            .map(|entry| entry.record.request_id.clone())
            .collect()
    });
    entries
        .into_iter()
        .filter(|entry| {
            matching_requests
                .as_ref()
                .is_none_or(|requests| requests.contains(&entry.record.request_id))
        })
        .filter(|entry| {
            wanted
                .until
                .is_none_or(|until| entry.record.unix_time().is_none_or(|time| time < until))
        })
        .collect()
}

fn row(entry: Entry) -> Row {
    let record = entry.record;
    Row {
        time: record.unix_time(),
        time_text: record.time.clone(),
        user: record.who.user,
        via: record.who.via,
        token: record.who.token,
        break_glass: record.who.break_glass,
        is_outcome: record.kind == RecordKind::Outcome,
        action: record.action,
        targets: record.targets,
        summary: record.summary,
        parameters: record.parameters.into_iter().collect(),
        source: record.source,
        commit_id: entry.commit_id,
    }
}

async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    OriginalUri(uri): OriginalUri,
    Query(query): Query<AuditQuery>,
) -> Result<Response, PageError> {
    viewer.require(&state, Permission::AuditRead)?;
    let now = state.user_auth.now();
    let filters = Filters {
        user: query.user.trim().to_string(),
        action: query.action.trim().to_string(),
        range: query.range.trim().to_string(),
        since: query.since.trim().to_string(),
        until: query.until.trim().to_string(),
    };
    let (wanted, filter_error) = match wanted(&query, now) {
        Ok(wanted) => (wanted, None),
        Err(message) => (Wanted::default(), Some(message)),
    };
    let log = state.audit.clone();
    let filter = Filter {
        since: wanted.since,
        user: wanted.user.clone(),
    };
    let read = tokio::task::spawn_blocking(move || {
        let all = log.all_entries()?;
        Ok::<_, AuditError>((!all.is_empty(), filter.apply(all.as_ref().clone())))
    })
    .await
    .map_err(|err| PageError::from(crate::server::ApiError::internal(err)))?;
    let (any_records, entries) = read.map_err(|err| {
        tracing::error!(error = %err, "cannot read the audit repository");
        PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the audit repository cannot be read: run `muster audit verify` on the controller and see its log",
        )
    })?;
    let selected = select(entries, &wanted);
    let total = selected.len();
    let pages = total.div_ceil(PER_PAGE).max(1);
    let page = query
        .page
        .trim()
        .parse::<usize>()
        .unwrap_or(1)
        .clamp(1, pages);
    let rows = selected
        .into_iter()
        .skip((page - 1) * PER_PAGE)
        .take(PER_PAGE)
        .map(row)
        .collect();
    let pairs: Vec<(&str, &str)> = [
        ("user", filters.user.as_str()),
        ("action", filters.action.as_str()),
        ("range", filters.range.as_str()),
        ("since", filters.since.as_str()),
        ("until", filters.until.as_str()),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .collect();
    let filter_query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    let chrome = viewer.chrome(&state, Section::Audit);
    let page_view = Audit {
        url: uri.to_string(),
        filters,
        filter_error,
        rows,
        page,
        per_page: PER_PAGE,
        total,
        any_records,
        query: filter_query,
    };
    Ok(viewer.page(audit::render(&chrome, &page_view)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_072_400;

    fn query(range: &str, since: &str, until: &str) -> AuditQuery {
        AuditQuery {
            range: range.into(),
            since: since.into(),
            until: until.into(),
            ..AuditQuery::default()
        }
    }

    #[test]
    fn ranges_and_dates_become_times() {
        assert_eq!(
            wanted(&query("24h", "", ""), NOW).unwrap().since,
            Some(NOW - 86_400)
        );
        let dates = wanted(&query("", "2026-11-01", "2026-11-02"), NOW).unwrap();
        assert_eq!(dates.since, Some(1_793_491_200));
        assert_eq!(dates.until, Some(1_793_491_200 + 2 * 86_400));
        // The later start wins when both are given.
        assert_eq!(
            wanted(&query("7d", "2026-01-01", ""), NOW).unwrap().since,
            Some(NOW - 7 * 86_400)
        );
        assert!(wanted(&query("1y", "", ""), NOW).is_err());
        let error = wanted(&query("", "yesterday", ""), NOW).unwrap_err();
        assert!(error.contains("YYYY-MM-DD"), "{error}");
    }
}
