//! The controller's database: SQLite by default, PostgreSQL for teams that
//! share one database between replicas.
//!
//! One code path serves both through sqlx's `Any` driver with runtime
//! queries: only `BIGINT` and `TEXT` columns, times as Unix seconds, JSON as
//! text, `$n` placeholders. Each backend has its own migration folder,
//! embedded in the binary and applied at start.

mod jobs;
mod migrate;
mod schedules;
mod users;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use muster_schemas::protocol::HostState;
use serde_json::{Map, Value};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

pub use users::{
    ApiTokenRecord, AttemptGate, AttemptLimit, BearerRecord, UserRecord, address_subject,
    user_subject,
};

pub use schedules::{ScheduleRecord, ScheduleSpec};

pub use jobs::{
    ActionRecord, ActionState, CancelOutcome, DELIVERY_LEASE_SECS, EXPIRY_GRACE_SECS, JobFilter,
    JobRecord, JobSource, JobState, MAX_JOBS_PER_POLL, NewAction, NewJob, Release, ResultOutcome,
    StartOutcome,
};

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Errors of the storage boundary.
#[derive(Debug)]
pub enum StoreError {
    /// The database URL is not one Muster supports.
    UnsupportedUrl(String),
    /// A row broke a rule the caller can act on (a name already taken).
    Conflict(String),
    /// Stored data that does not parse: a bug or a hand-edited database.
    Corrupt(String),
    /// The database failed.
    Database(sqlx::Error),
}

impl StoreError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::UnsupportedUrl(_) => "unsupported_url",
            StoreError::Conflict(_) => "conflict",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Database(_) => "database",
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::UnsupportedUrl(url) => write!(
                f,
                "unsupported database URL `{url}`: use sqlite://PATH or postgres://USER@HOST/DB"
            ),
            StoreError::Conflict(message) | StoreError::Corrupt(message) => f.write_str(message),
            StoreError::Database(err) => write!(f, "database error: {err}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Database(err) => Some(err),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::Database(err)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether a commit was deployed or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    Deployed,
    Rejected,
}

impl CommitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Deployed => "deployed",
            CommitState::Rejected => "rejected",
        }
    }
}

/// A commit of the tracked branch that was tried.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitRecord {
    pub id: String,
    pub author: String,
    pub summary: String,
    pub committed_at: i64,
    pub state: CommitState,
    /// The diagnostics of a rejected commit (JSON list).
    pub diagnostics: Value,
    /// Hosts whose bundle changed when it was deployed.
    pub n_changed: i64,
    pub recorded_at: i64,
    pub deployed_at: Option<i64>,
}

/// An enrollment token, without the token itself.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub max_uses: i64,
    pub uses: i64,
    pub labels: BTreeMap<String, String>,
    pub auto_approve: bool,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// An enrolled host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub id: String,
    pub name: String,
    pub state: HostState,
    /// The HMAC key derived from the host's secret, hex.
    pub key: String,
    pub labels: BTreeMap<String, String>,
    pub facts: Map<String, Value>,
    pub token_id: Option<String>,
    pub enrolled_at: i64,
    pub last_seen_at: Option<i64>,
    pub applied_generation: u64,
    pub run_status: Option<String>,
}

/// What the request path needs of a host: its key and whether it may be
/// served.
#[derive(Debug, Clone, PartialEq)]
pub struct HostKey {
    pub id: String,
    /// The HMAC key derived from the host's secret, hex.
    pub key: String,
    pub state: HostState,
}

/// A host's bundle in force.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleRecord {
    pub host_id: String,
    pub generation: u64,
    pub commit_id: String,
    pub content_hash: String,
    pub bundle: String,
    pub signature: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// The facts group selectors match (reported ones, not `null`), as
/// stored beside the full facts (`hosts.selector_facts`) for pages that
/// list every host.
pub fn selector_facts(facts: &Map<String, Value>) -> Map<String, Value> {
    crate::compile::LABEL_FACTS
        .iter()
        .filter_map(|name| match facts.get(*name)? {
            Value::Null => None,
            value => Some((name.to_string(), value.clone())),
        })
        .collect()
}

/// The compliance checks of a report: how many ran and how many passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckCounts {
    pub passed: i64,
    pub total: i64,
}

impl CheckCounts {
    pub fn of(checks: &[muster_schemas::protocol::CheckReport]) -> CheckCounts {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        CheckCounts {
            passed: count(checks.iter().filter(|check| check.passed).count()),
            total: count(checks.len()),
        }
    }
}

/// What the reconciler needs to know of a host's bundle to decide whether
/// it must be replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleHead {
    pub generation: u64,
    pub commit_id: String,
    pub content_hash: String,
    pub expires_at: i64,
}

/// Why an enrollment was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollRefusal {
    /// Unknown, revoked, expired or used-up token: one answer for all, so
    /// that the API tells an attacker nothing about which.
    InvalidToken,
    /// A host of that name is enrolled already.
    NameTaken,
}

/// The controller's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Rows per statement when publishing bundles (8 parameters each, well
/// under the limits of SQLite and PostgreSQL).
const PUBLISH_BATCH: usize = 250;

/// The default database: a SQLite file in the data dir.
pub fn sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("muster.db").display())
}

impl Store {
    /// Connects and applies pending migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers (agents' long polls) proceed while
                        // the reconciler writes; the busy timeout makes the
                        // CLI and the server wait for each other.
                        connection
                            .execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let store = Store { pool, backend };
        migrate::run(&store.pool, backend).await?;
        Ok(store)
    }

    /// A transaction that writes. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`): a deferred transaction that reads, then
    /// writes after another connection committed, fails with "database is
    /// locked" at once, busy timeout or not; an immediate one waits its
    /// turn. PostgreSQL's transactions need nothing of the kind.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // Settings

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("value")).transpose()?)
    }

    // Commits

    pub async fn commit(&self, id: &str) -> Result<Option<CommitRecord>> {
        let row = sqlx::query("SELECT * FROM commits WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| commit_from_row(&row)).transpose()
    }

    /// Commits whose id starts with `prefix` (for abbreviated hashes).
    pub async fn commits_by_prefix(&self, prefix: &str) -> Result<Vec<CommitRecord>> {
        let pattern = format!("{}%", prefix.replace(['%', '_'], ""));
        let rows = sqlx::query(
            "SELECT * FROM commits WHERE id LIKE $1 ORDER BY recorded_at DESC LIMIT 10",
        )
        .bind(pattern)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(commit_from_row).collect()
    }

    /// The newest commits first.
    pub async fn commits(&self, limit: i64) -> Result<Vec<CommitRecord>> {
        let rows = sqlx::query("SELECT * FROM commits ORDER BY recorded_at DESC, id LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(commit_from_row).collect()
    }

    /// The commit in force: the one deployed last.
    pub async fn deployed_commit(&self) -> Result<Option<CommitRecord>> {
        let row = sqlx::query(
            "SELECT * FROM commits WHERE state = 'deployed' ORDER BY deployed_at DESC, recorded_at DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| commit_from_row(&row)).transpose()
    }

    /// Records a commit that was refused; nothing else changes.
    pub async fn record_rejected(&self, commit: &CommitRecord) -> Result<()> {
        upsert_commit(&self.pool, commit).await
    }

    /// Deploys a commit: in one transaction, the new bundles replace the
    /// old ones and the commit is recorded as deployed. A bundle whose
    /// generation is not above the stored one aborts the whole publication
    /// (generations never go backwards, even with two writers).
    pub async fn publish(&self, commit: &CommitRecord, bundles: &[BundleRecord]) -> Result<()> {
        let mut tx = self.begin().await?;
        // Many rows per statement: a publication to thousands of hosts is a
        // few dozen round trips, not thousands.
        for chunk in bundles.chunks(PUBLISH_BATCH) {
            let mut sql = String::from(
                "INSERT INTO bundles (host_id, generation, commit_id, content_hash, bundle, signature, issued_at, expires_at) VALUES ",
            );
            for row in 0..chunk.len() {
                let n = row * 8;
                if row > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6,
                    n + 7,
                    n + 8
                ));
            }
            sql.push_str(
                " ON CONFLICT (host_id) DO UPDATE SET
                    generation = excluded.generation, commit_id = excluded.commit_id,
                    content_hash = excluded.content_hash, bundle = excluded.bundle,
                    signature = excluded.signature, issued_at = excluded.issued_at,
                    expires_at = excluded.expires_at
                 WHERE bundles.generation < excluded.generation",
            );
            let mut query = sqlx::query(&sql);
            for bundle in chunk {
                let generation = i64::try_from(bundle.generation)
                    .map_err(|_| StoreError::Corrupt("generation out of range".into()))?;
                query = query
                    .bind(&bundle.host_id)
                    .bind(generation)
                    .bind(&bundle.commit_id)
                    .bind(&bundle.content_hash)
                    .bind(&bundle.bundle)
                    .bind(&bundle.signature)
                    .bind(bundle.issued_at)
                    .bind(bundle.expires_at);
            }
            let result = query.execute(&mut *tx).await?;
            if result.rows_affected() != chunk.len() as u64 {
                return Err(StoreError::Conflict(
                    "a bundle generation is not newer than the stored one: another writer published; retrying".into(),
                ));
            }
        }
        upsert_commit(&mut *tx, commit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces bundles without recording a commit: for hosts that enrol
    /// after a deploy and for bundles renewed before they expire.
    pub async fn put_bundles(&self, bundles: &[BundleRecord], commit: &CommitRecord) -> Result<()> {
        self.publish(commit, bundles).await
    }

    pub async fn bundle(&self, host_id: &str) -> Result<Option<BundleRecord>> {
        let row = sqlx::query("SELECT * FROM bundles WHERE host_id = $1")
            .bind(host_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(BundleRecord {
                host_id: row.try_get("host_id")?,
                generation: to_u64(row.try_get("generation")?),
                commit_id: row.try_get("commit_id")?,
                content_hash: row.try_get("content_hash")?,
                bundle: row.try_get("bundle")?,
                signature: row.try_get("signature")?,
                issued_at: row.try_get("issued_at")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// The head of every host's bundle, by host id.
    pub async fn bundle_heads(&self) -> Result<HashMap<String, BundleHead>> {
        let rows = sqlx::query(
            "SELECT host_id, generation, commit_id, content_hash, expires_at FROM bundles",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("host_id")?,
                    BundleHead {
                        generation: to_u64(row.try_get("generation")?),
                        commit_id: row.try_get("commit_id")?,
                        content_hash: row.try_get("content_hash")?,
                        expires_at: row.try_get("expires_at")?,
                    },
                ))
            })
            .collect()
    }

    // Enrollment tokens

    pub async fn create_token(&self, token: &TokenRecord, token_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, token_hash, max_uses, uses, labels, auto_approve, created_at, expires_at)
             VALUES ($1, $2, $3, 0, $4, $5, $6, $7)",
        )
        .bind(&token.id)
        .bind(token_hash)
        .bind(token.max_uses)
        .bind(to_json(&token.labels))
        .bind(i64::from(token.auto_approve))
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query("SELECT * FROM enrollment_tokens ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token by id; false when there is no such token.
    pub async fn revoke_token(&self, id: &str, now: i64) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE enrollment_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Enrolls a host with a token, in one transaction: the token's use is
    /// counted only if the host is created.
    pub async fn enroll(
        &self,
        token_hash: &str,
        host: &HostRecord,
        now: i64,
    ) -> Result<std::result::Result<HostRecord, EnrollRefusal>> {
        let mut tx = self.begin().await?;
        // The guarded UPDATE claims one use atomically, also against a
        // concurrent enrollment with the same token.
        let claimed = sqlx::query(
            "UPDATE enrollment_tokens SET uses = uses + 1
             WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2 AND uses < max_uses",
        )
        .bind(token_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() != 1 {
            return Ok(Err(EnrollRefusal::InvalidToken));
        }
        let token = sqlx::query("SELECT * FROM enrollment_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_one(&mut *tx)
            .await?;
        let token = token_from_row(&token)?;
        let taken = sqlx::query("SELECT id FROM hosts WHERE name = $1")
            .bind(&host.name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Ok(Err(EnrollRefusal::NameTaken));
        }
        let mut labels = token.labels.clone();
        labels.extend(host.labels.clone());
        let state = if token.auto_approve {
            HostState::Approved
        } else {
            HostState::Pending
        };
        let host = HostRecord {
            state,
            labels,
            token_id: Some(token.id.clone()),
            enrolled_at: now,
            ..host.clone()
        };
        sqlx::query(
            "INSERT INTO hosts (id, name, state, key, labels, facts, selector_facts, token_id,
                enrolled_at, last_seen_at, applied_generation)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)",
        )
        .bind(&host.id)
        .bind(&host.name)
        .bind(host.state.as_str())
        .bind(&host.key)
        .bind(to_json(&host.labels))
        .bind(Value::Object(host.facts.clone()).to_string())
        .bind(Value::Object(selector_facts(&host.facts)).to_string())
        .bind(&host.token_id)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(host))
    }

    // Hosts

    pub async fn host(&self, id: &str) -> Result<Option<HostRecord>> {
        let row = sqlx::query("SELECT * FROM hosts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| host_from_row(&row)).transpose()
    }

    /// A host by name, or by id.
    pub async fn find_host(&self, name_or_id: &str) -> Result<Option<HostRecord>> {
        let row = sqlx::query(
            "SELECT * FROM hosts WHERE name = $1 OR id = $1 ORDER BY name = $1 DESC LIMIT 1",
        )
        .bind(name_or_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| host_from_row(&row)).transpose()
    }

    /// Every host's id, key and state: a light query that the reconciler's
    /// sweep runs every few seconds, where full records (labels, facts)
    /// would cost a JSON parse per host each time.
    pub async fn host_keys(&self) -> Result<Vec<HostKey>> {
        let rows = sqlx::query("SELECT id, key, state FROM hosts")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(HostKey {
                    id: row.try_get("id")?,
                    key: row.try_get("key")?,
                    state: HostState::parse(&state).ok_or_else(|| {
                        StoreError::Corrupt(format!("unknown host state `{state}`"))
                    })?,
                })
            })
            .collect()
    }

    pub async fn hosts(&self) -> Result<Vec<HostRecord>> {
        let rows = sqlx::query("SELECT * FROM hosts ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(host_from_row).collect()
    }

    /// Sets a host's state; returns the host, or `None` if unknown.
    pub async fn set_host_state(&self, id: &str, state: HostState) -> Result<Option<HostRecord>> {
        sqlx::query("UPDATE hosts SET state = $1 WHERE id = $2")
            .bind(state.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.host(id).await
    }

    /// Removes a host with its bundle and reports.
    pub async fn remove_host(&self, id: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM reports WHERE host_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM bundles WHERE host_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query("DELETE FROM hosts WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed.rows_affected() == 1)
    }

    /// Stores a report and what it says about the host.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_report(
        &self,
        host_id: &str,
        generation: u64,
        run_status: &str,
        checks: CheckCounts,
        facts: Option<&Map<String, Value>>,
        body: &str,
        now: i64,
    ) -> Result<()> {
        let generation = i64::try_from(generation)
            .map_err(|_| StoreError::Corrupt("generation out of range".into()))?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO reports (host_id, generation, received_at, body) VALUES ($1, $2, $3, $4)",
        )
        .bind(host_id)
        .bind(generation)
        .bind(now)
        .bind(body)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE hosts SET last_seen_at = $1, run_status = $2,
                applied_generation = CASE WHEN applied_generation < $3 THEN $3 ELSE applied_generation END,
                checks_passed = $4, checks_total = $5
             WHERE id = $6",
        )
        .bind(now)
        .bind(run_status)
        .bind(generation)
        .bind(checks.passed)
        .bind(checks.total)
        .bind(host_id)
        .execute(&mut *tx)
        .await?;
        if let Some(facts) = facts {
            sqlx::query("UPDATE hosts SET facts = $1, selector_facts = $2 WHERE id = $3")
                .bind(Value::Object(facts.clone()).to_string())
                .bind(Value::Object(selector_facts(facts)).to_string())
                .bind(host_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Notes that a host was heard from.
    pub async fn touch_host(&self, host_id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE hosts SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest reports of a host, newest first, as stored JSON.
    pub async fn reports(&self, host_id: &str, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT received_at, body FROM reports WHERE host_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(host_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("received_at")?, row.try_get("body")?)))
            .collect()
    }
}

async fn upsert_commit<'e, E>(executor: E, commit: &CommitRecord) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO commits (id, author, summary, committed_at, state, diagnostics, n_changed, recorded_at, deployed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET
            state = excluded.state, diagnostics = excluded.diagnostics,
            n_changed = excluded.n_changed, deployed_at = excluded.deployed_at",
    )
    .bind(&commit.id)
    .bind(&commit.author)
    .bind(&commit.summary)
    .bind(commit.committed_at)
    .bind(commit.state.as_str())
    .bind(commit.diagnostics.to_string())
    .bind(commit.n_changed)
    .bind(commit.recorded_at)
    .bind(commit.deployed_at)
    .execute(executor)
    .await?;
    Ok(())
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|err| StoreError::Corrupt(format!("stored {what} do not parse: {err}")))
}

fn commit_from_row(row: &AnyRow) -> Result<CommitRecord> {
    let state: String = row.try_get("state")?;
    Ok(CommitRecord {
        id: row.try_get("id")?,
        author: row.try_get("author")?,
        summary: row.try_get("summary")?,
        committed_at: row.try_get("committed_at")?,
        state: match state.as_str() {
            "deployed" => CommitState::Deployed,
            "rejected" => CommitState::Rejected,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown commit state `{other}`"
                )));
            }
        },
        diagnostics: parse_json(&row.try_get::<String, _>("diagnostics")?, "diagnostics")?,
        n_changed: row.try_get("n_changed")?,
        recorded_at: row.try_get("recorded_at")?,
        deployed_at: row.try_get("deployed_at")?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.try_get("id")?,
        max_uses: row.try_get("max_uses")?,
        uses: row.try_get("uses")?,
        labels: parse_json(&row.try_get::<String, _>("labels")?, "token labels")?,
        auto_approve: row.try_get::<i64, _>("auto_approve")? != 0,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn host_from_row(row: &AnyRow) -> Result<HostRecord> {
    let state: String = row.try_get("state")?;
    Ok(HostRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        state: HostState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown host state `{state}`")))?,
        key: row.try_get("key")?,
        labels: parse_json(&row.try_get::<String, _>("labels")?, "host labels")?,
        facts: parse_json(&row.try_get::<String, _>("facts")?, "host facts")?,
        token_id: row.try_get("token_id")?,
        enrolled_at: row.try_get("enrolled_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        applied_generation: to_u64(row.try_get("applied_generation")?),
        run_status: row.try_get("run_status")?,
    })
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_url, selector_facts};

    #[test]
    fn only_reported_selector_facts_are_kept() {
        let facts = serde_json::json!({
            "os": "debian", "arch": "x86_64", "disks": [{"mount": "/"}],
            "kernel": "6.1", "os_version": null,
        });
        let kept = selector_facts(facts.as_object().unwrap());
        assert_eq!(
            serde_json::Value::Object(kept),
            serde_json::json!({"os": "debian", "arch": "x86_64", "kernel": "6.1"})
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db/muster"),
            "postgres://app:***@db/muster"
        );
        assert_eq!(
            redact_url("postgres://app@db/muster"),
            "postgres://app@db/muster"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/muster/muster.db"),
            "sqlite:///var/lib/muster/muster.db"
        );
    }
}
