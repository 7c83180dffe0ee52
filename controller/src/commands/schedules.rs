//! `muster schedules`: the scheduled scripts of the deployed commit, their
//! next runs in their own time zones and the last slot that ran, read from
//! the database the scheduler keeps them in.

use std::process::ExitCode;

use chrono::TimeZone as _;
use muster_schemas::cron::{CronSchedule, next_runs};
use muster_schemas::types::TimeZone;

use super::admin::{short, table};
use super::serve::open_store;
use crate::Error;
use crate::cli::DataOnly;
use crate::server::now;
use crate::store::ScheduleRecord;

/// How many upcoming runs a script shows.
const N_NEXT: usize = 3;

pub async fn schedules(args: DataOnly) -> Result<ExitCode, Error> {
    let store = open_store(&args.data).await?;
    let deployed = store.deployed_commit().await?;
    let rows = store.schedules().await?;
    let mut actions = Vec::new();
    for row in &rows {
        let state = match &row.last_action {
            Some(id) => store.action(id).await?.map(|action| action.state),
            None => None,
        };
        actions.push(state);
    }
    store.close().await;
    let Some(deployed) = deployed else {
        println!("no commit deployed yet: is `muster serve` running?");
        return Ok(ExitCode::SUCCESS);
    };
    let active: Vec<(&ScheduleRecord, Option<&str>)> = rows
        .iter()
        .zip(&actions)
        .filter(|(row, _)| row.active)
        .map(|(row, state)| (row, state.map(|s| s.as_str())))
        .collect();
    println!("deployed commit {}", short(&deployed.id));
    if active.iter().any(|(row, _)| row.commit_id != deployed.id) {
        println!(
            "note: the scheduler has not caught up with this commit yet; the list is of commit {}",
            short(&active[0].0.commit_id)
        );
    }
    let now = now();
    let lines: Vec<Vec<String>> = active
        .iter()
        .map(|(row, state)| render(row, *state, now))
        .collect();
    table(
        &[
            "SCRIPT",
            "SCHEDULE",
            "TIME ZONE",
            "SPLAY",
            "NEXT RUNS",
            "LAST RUN",
        ],
        &lines,
        "no scheduled scripts in the deployed commit",
    );
    Ok(ExitCode::SUCCESS)
}

/// One line of the table. A schedule or time zone that no longer parses
/// (a row written by another version) is shown as stored.
fn render(row: &ScheduleRecord, state: Option<&str>, now: i64) -> Vec<String> {
    let spec = &row.spec;
    let parsed = spec
        .schedule
        .parse::<CronSchedule>()
        .ok()
        .zip(spec.timezone.parse::<TimeZone>().ok());
    let format = |tz: &TimeZone, unix: i64| {
        tz.tz().timestamp_opt(unix, 0).single().map_or_else(
            || unix.to_string(),
            |t| t.format("%Y-%m-%d %H:%M %Z").to_string(),
        )
    };
    let next = match &parsed {
        Some((schedule, tz)) => chrono::DateTime::from_timestamp(now, 0)
            .map(|after| {
                next_runs(schedule, tz.tz(), after, N_NEXT)
                    .iter()
                    .map(|run| format(tz, run.timestamp()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        None => "-".into(),
    };
    let last = match (row.last_slot, &parsed) {
        (Some(slot), Some((_, tz))) => match state {
            Some(state) => format!("{} ({state})", format(tz, slot)),
            None => format(tz, slot),
        },
        (Some(slot), None) => slot.to_string(),
        (None, _) => "never".into(),
    };
    vec![
        spec.script.clone(),
        spec.schedule.clone(),
        spec.timezone.clone(),
        muster_schemas::types::Duration::from_secs(u64::try_from(spec.splay).unwrap_or(0))
            .to_string(),
        next,
        last,
    ]
}
