//! The fleet as the dashboard shows it: one light row per host (no full
//! facts, no bundle body), how each host is doing, and the rollout of
//! each commit. Loaded fresh per page: at 10,000 hosts this is two
//! queries answered with one row each, and a few milliseconds of parsing.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};
use sqlx::Row;

use muster_schemas::model::Permission;

use crate::compile::HostInput;
use crate::rbac::{AccessRules, Caller, Need, Scope};
use crate::store::{Backend, BundleRecord, HostRecord, Store, StoreError};

/// A host unheard of for longer than this is offline: agents long-poll
/// and report at least every minute by default, so three minutes of
/// silence is more than a slow network.
pub const OFFLINE_AFTER_SECS: i64 = 180;

/// What the dashboard needs of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    pub id: String,
    pub name: String,
    /// `pending`, `approved` or `rejected`.
    pub state: String,
    pub labels: BTreeMap<String, String>,
    /// The facts that selectors can match (`os`, `arch`, …).
    pub label_facts: Map<String, Value>,
    pub enrolled_at: i64,
    pub last_seen_at: Option<i64>,
    pub applied_generation: u64,
    /// As last reported: `in_sync`, `drifted`, `failing` or `stale`.
    pub run_status: Option<String>,
    /// The bundle in force: its generation and commit.
    pub bundle_generation: Option<u64>,
    pub bundle_commit: Option<String>,
}

/// Whether a host is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Presence {
    Online,
    Offline,
    /// Its agent says the bundle in force has expired.
    Stale,
    /// Enrolled, waiting for approval.
    Pending,
    Rejected,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Offline => "offline",
            Presence::Stale => "stale",
            Presence::Pending => "pending",
            Presence::Rejected => "rejected",
        }
    }
}

/// How a host's configuration stands against its bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sync {
    InSync,
    Drifted,
    Failing,
    /// It has not applied its newest bundle yet.
    Behind,
    /// It never reported.
    Unknown,
}

impl Sync {
    pub fn as_str(self) -> &'static str {
        match self {
            Sync::InSync => "in sync",
            Sync::Drifted => "drifted",
            Sync::Failing => "failing",
            Sync::Behind => "behind",
            Sync::Unknown => "no report yet",
        }
    }
}

impl HostRow {
    pub fn presence(&self, now: i64) -> Presence {
        match self.state.as_str() {
            "pending" => Presence::Pending,
            "rejected" => Presence::Rejected,
            _ if self.run_status.as_deref() == Some("stale") => Presence::Stale,
            _ => match self.last_seen_at {
                Some(seen) if now - seen <= OFFLINE_AFTER_SECS => Presence::Online,
                _ => Presence::Offline,
            },
        }
    }

    pub fn sync(&self) -> Sync {
        let behind = self
            .bundle_generation
            .is_some_and(|generation| self.applied_generation < generation);
        match self.run_status.as_deref() {
            Some("failing") => Sync::Failing,
            _ if behind => Sync::Behind,
            Some("drifted") => Sync::Drifted,
            Some("in_sync" | "stale") => Sync::InSync,
            _ => Sync::Unknown,
        }
    }

    /// The row of a full host record and its bundle in force, for pages
    /// about one host.
    pub fn of_record(host: &HostRecord, bundle: Option<&BundleRecord>) -> HostRow {
        HostRow {
            id: host.id.clone(),
            name: host.name.clone(),
            state: host.state.as_str().to_string(),
            labels: host.labels.clone(),
            label_facts: crate::store::selector_facts(&host.facts),
            enrolled_at: host.enrolled_at,
            last_seen_at: host.last_seen_at,
            applied_generation: host.applied_generation,
            run_status: host.run_status.clone(),
            bundle_generation: bundle.map(|bundle| bundle.generation),
            bundle_commit: bundle.map(|bundle| bundle.commit_id.clone()),
        }
    }

    /// The host as the compiler and RBAC see it, for group membership and
    /// scopes.
    pub fn input(&self) -> HostInput {
        HostInput {
            id: self.id.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            facts: self.label_facts.clone(),
        }
    }
}

/// One host as [`host_rows`] reads it: a JSON array in the order of the
/// query's columns.
type RowJson = (
    String,
    String,
    String,
    String,
    Map<String, Value>,
    i64,
    Option<i64>,
    i64,
    Option<String>,
);

/// Every host as one JSON array of rows, built by the database: drivers
/// move a result row by row at a fixed cost each, which at 10,000 hosts
/// cost more than the rest of a page. Only the selector facts kept for
/// this (`hosts.selector_facts`) leave the database, not the inventory.
/// Labels stay text: embedding them as JSON costs the database more than
/// parsing them here.
fn hosts_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "SELECT json_group_array(json_array(id, name, state, labels, json(selector_facts),
                enrolled_at, last_seen_at, applied_generation, run_status))
             FROM hosts"
        }
        Backend::Postgres => {
            "SELECT json_agg(json_build_array(id, name, state, labels, selector_facts::json,
                enrolled_at, last_seen_at, applied_generation, run_status))::text
             FROM hosts"
        }
    }
}

/// The generation and commit of every bundle in force, in one row. A
/// separate query rather than a join: looking each host's bundle up
/// costs more than reading them all once.
fn bundle_heads_sql(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "SELECT json_group_array(json_array(host_id, generation, commit_id)) FROM bundles"
        }
        Backend::Postgres => {
            "SELECT json_agg(json_build_array(host_id, generation, commit_id))::text FROM bundles"
        }
    }
}

/// The one text value of an aggregating query, parsed; PostgreSQL
/// aggregates no rows to NULL, which is an empty list.
pub(crate) async fn aggregate<T: serde::de::DeserializeOwned>(
    store: &Store,
    sql: &str,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    let row = sqlx::query(sql).fetch_one(store.pool()).await?;
    let text: Option<String> = row.try_get(0)?;
    match text {
        None => Ok(Vec::new()),
        Some(text) => {
            serde_json::from_str(&text).map_err(|err| StoreError::Corrupt(format!("{what}: {err}")))
        }
    }
}

/// Every host, by name.
pub async fn host_rows(store: &Store) -> Result<Vec<HostRow>, StoreError> {
    let backend = store.backend();
    let hosts: Vec<RowJson> = aggregate(store, hosts_sql(backend), "host rows").await?;
    let heads: Vec<(String, i64, String)> =
        aggregate(store, bundle_heads_sql(backend), "bundle heads").await?;
    let mut heads: HashMap<String, (i64, String)> = heads
        .into_iter()
        .map(|(host, generation, commit)| (host, (generation, commit)))
        .collect();
    let mut rows: Vec<HostRow> = hosts
        .into_iter()
        .map(
            |(
                id,
                name,
                state,
                labels,
                label_facts,
                enrolled_at,
                last_seen_at,
                applied,
                run_status,
            )| {
                let head = heads.remove(&id);
                let labels = serde_json::from_str(&labels)
                    .map_err(|err| StoreError::Corrupt(format!("host labels: {err}")))?;
                Ok(HostRow {
                    label_facts,
                    applied_generation: u64::try_from(applied).unwrap_or(0),
                    bundle_generation: head
                        .as_ref()
                        .and_then(|(generation, _)| u64::try_from(*generation).ok()),
                    bundle_commit: head.map(|(_, commit)| commit),
                    id,
                    name,
                    state,
                    labels,
                    enrolled_at,
                    last_seen_at,
                    run_status,
                })
            },
        )
        .collect::<Result<_, StoreError>>()?;
    rows.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// Whether `caller` holds `permission` fleet-wide: then every host is in
/// scope, and no host's RBAC input needs building (the common case).
pub fn holds_fleet_wide(rules: &AccessRules, caller: &Caller, permission: Permission) -> bool {
    let need = Need::Permission(permission);
    rules
        .permissions_of(caller)
        .iter()
        .any(|(grant, scope)| *scope == Scope::Fleet && grant.covers(&need))
}

/// The rows on which `caller` holds `permission`, in their order.
pub fn in_scope<'r>(
    rules: &AccessRules,
    caller: &Caller,
    permission: Permission,
    rows: &'r [HostRow],
) -> Vec<&'r HostRow> {
    if holds_fleet_wide(rules, caller, permission) {
        return rows.iter().collect();
    }
    let inputs: Vec<HostInput> = rows.iter().map(HostRow::input).collect();
    let ids: std::collections::HashSet<&str> = rules
        .hosts_in_scope(caller, permission, &inputs)
        .into_iter()
        .map(|input| input.id.as_str())
        .collect();
    rows.iter()
        .filter(|row| ids.contains(row.id.as_str()))
        .collect()
}

/// How far a commit has reached: of the approved hosts whose bundle in
/// force it set, how many applied it, failed, or have yet to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollout {
    pub applied: usize,
    pub failed: usize,
    pub pending: usize,
}

impl Rollout {
    pub fn total(&self) -> usize {
        self.applied + self.failed + self.pending
    }
}

/// The rollout of every commit that is the bundle commit of some host.
pub fn rollouts<'h>(hosts: impl IntoIterator<Item = &'h HostRow>) -> HashMap<String, Rollout> {
    let mut rollouts: HashMap<String, Rollout> = HashMap::new();
    for host in hosts.into_iter().filter(|host| host.state == "approved") {
        let (Some(commit), Some(generation)) = (&host.bundle_commit, host.bundle_generation) else {
            continue;
        };
        let rollout = rollouts.entry(commit.clone()).or_default();
        if host.applied_generation < generation {
            rollout.pending += 1;
        } else if host.run_status.as_deref() == Some("failing") {
            rollout.failed += 1;
        } else {
            rollout.applied += 1;
        }
    }
    rollouts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(
        state: &str,
        seen: Option<i64>,
        applied: u64,
        bundle: Option<u64>,
        status: Option<&str>,
    ) -> HostRow {
        HostRow {
            id: "h".into(),
            name: "web-01".into(),
            state: state.into(),
            labels: BTreeMap::new(),
            label_facts: Map::new(),
            enrolled_at: 0,
            last_seen_at: seen,
            applied_generation: applied,
            run_status: status.map(str::to_string),
            bundle_generation: bundle,
            bundle_commit: bundle.map(|_| "c1".to_string()),
        }
    }

    #[test]
    fn presence_follows_approval_reports_and_silence() {
        assert_eq!(
            host("pending", Some(100), 0, None, None).presence(100),
            Presence::Pending
        );
        assert_eq!(
            host("rejected", None, 0, None, None).presence(100),
            Presence::Rejected
        );
        assert_eq!(
            host("approved", Some(100), 1, Some(1), Some("in_sync")).presence(100),
            Presence::Online
        );
        assert_eq!(
            host("approved", Some(100), 1, Some(1), Some("in_sync"))
                .presence(100 + OFFLINE_AFTER_SECS + 1),
            Presence::Offline
        );
        assert_eq!(
            host("approved", None, 0, Some(1), None).presence(100),
            Presence::Offline
        );
        assert_eq!(
            host("approved", Some(100), 1, Some(1), Some("stale")).presence(100),
            Presence::Stale
        );
    }

    #[test]
    fn sync_puts_failures_first_then_hosts_behind() {
        assert_eq!(
            host("approved", None, 1, Some(2), Some("failing")).sync(),
            Sync::Failing
        );
        assert_eq!(
            host("approved", None, 1, Some(2), Some("drifted")).sync(),
            Sync::Behind
        );
        assert_eq!(
            host("approved", None, 2, Some(2), Some("drifted")).sync(),
            Sync::Drifted
        );
        assert_eq!(
            host("approved", None, 2, Some(2), Some("in_sync")).sync(),
            Sync::InSync
        );
        assert_eq!(
            host("approved", None, 0, Some(1), None).sync(),
            Sync::Behind
        );
        assert_eq!(host("approved", None, 0, None, None).sync(), Sync::Unknown);
    }

    #[test]
    fn rollouts_count_applied_failed_and_pending_hosts_of_each_commit() {
        let hosts = [
            host("approved", None, 2, Some(2), Some("in_sync")),
            host("approved", None, 2, Some(2), Some("failing")),
            host("approved", None, 1, Some(2), Some("in_sync")),
            host("pending", None, 0, Some(2), None),
        ];
        let rollouts = rollouts(&hosts);
        assert_eq!(
            rollouts["c1"],
            Rollout {
                applied: 1,
                failed: 1,
                pending: 1
            }
        );
    }
}
