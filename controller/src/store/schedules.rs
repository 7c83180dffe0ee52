//! The scheduler's memory: one row per scheduled script with its
//! watermark (the last slot dealt with) and the last slot that ran.
//!
//! The watermark is bookkeeping, not the guarantee: a slot runs once
//! because `jobs.schedule_key` is unique ([`Store::create_action`] fails
//! with a conflict for a slot created before). A watermark that is lost or
//! behind (a crash between creating a slot's jobs and moving it) only makes
//! the scheduler ask again and be told "already scheduled".

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store};

/// A scheduled script as the deployed commit defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    pub script: String,
    /// The crontab expression, as written.
    pub schedule: String,
    /// The IANA time zone name.
    pub timezone: String,
    /// Seconds.
    pub splay: i64,
}

/// A stored schedule row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    pub spec: ScheduleSpec,
    /// The deployed commit the script was last seen in.
    pub commit_id: String,
    /// Whether the deployed commit (as the scheduler last saw it)
    /// schedules the script.
    pub active: bool,
    /// Slots at or before this time are done with.
    pub watermark: i64,
    /// The last slot that got jobs, and its action.
    pub last_slot: Option<i64>,
    pub last_action: Option<String>,
    pub updated_at: i64,
}

impl Store {
    /// Makes the rows say what `commit_id` schedules: its scripts become
    /// active (new ones with the watermark `now`, so that a script starts
    /// with its next slot rather than one before it was deployed); scripts
    /// it no longer schedules become inactive and keep their watermark, in
    /// case they come back.
    pub async fn sync_schedules(
        &self,
        commit_id: &str,
        specs: &[ScheduleSpec],
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE schedules SET active = 0, updated_at = $1 WHERE active = 1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for spec in specs {
            sqlx::query(
                "INSERT INTO schedules (script, schedule, timezone, splay, commit_id, active, watermark, updated_at)
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $6)
                 ON CONFLICT (script) DO UPDATE SET schedule = excluded.schedule,
                    timezone = excluded.timezone, splay = excluded.splay,
                    commit_id = excluded.commit_id, active = 1, updated_at = excluded.updated_at",
            )
            .bind(&spec.script)
            .bind(&spec.schedule)
            .bind(&spec.timezone)
            .bind(spec.splay)
            .bind(commit_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every schedule row, by script name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let rows = sqlx::query("SELECT * FROM schedules ORDER BY script")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    pub async fn schedule(&self, script: &str) -> Result<Option<ScheduleRecord>> {
        let row = sqlx::query("SELECT * FROM schedules WHERE script = $1")
            .bind(script)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| schedule_from_row(&row)).transpose()
    }

    /// Moves a script's watermark forward to `watermark` (never back), and
    /// records `ran` (slot, action id) as its last run when given.
    pub async fn advance_schedule(
        &self,
        script: &str,
        watermark: i64,
        ran: Option<(i64, &str)>,
        now: i64,
    ) -> Result<()> {
        match ran {
            Some((slot, action_id)) => {
                sqlx::query(
                    "UPDATE schedules SET watermark = $2, last_slot = $3, last_action = $4, updated_at = $5
                     WHERE script = $1 AND watermark < $2",
                )
                .bind(script)
                .bind(watermark)
                .bind(slot)
                .bind(action_id)
                .bind(now)
                .execute(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "UPDATE schedules SET watermark = $2, updated_at = $3
                     WHERE script = $1 AND watermark < $2",
                )
                .bind(script)
                .bind(watermark)
                .bind(now)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(())
    }

    /// The action that holds a slot's jobs, when the slot was scheduled:
    /// found by the `script|slot|` prefix of its jobs' schedule keys.
    pub async fn scheduled_action(&self, script: &str, slot: i64) -> Result<Option<String>> {
        let prefix = format!("{script}|{slot}|");
        let row = sqlx::query(
            "SELECT action_id FROM jobs WHERE substr(schedule_key, 1, length($1)) = $1 LIMIT 1",
        )
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.try_get("action_id")).transpose()?)
    }
}

fn schedule_from_row(row: &AnyRow) -> Result<ScheduleRecord> {
    Ok(ScheduleRecord {
        spec: ScheduleSpec {
            script: row.try_get("script")?,
            schedule: row.try_get("schedule")?,
            timezone: row.try_get("timezone")?,
            splay: row.try_get("splay")?,
        },
        commit_id: row.try_get("commit_id")?,
        active: row.try_get::<i64, _>("active")? != 0,
        watermark: row.try_get("watermark")?,
        last_slot: row.try_get("last_slot")?,
        last_action: row.try_get("last_action")?,
        updated_at: row.try_get("updated_at")?,
    })
}
