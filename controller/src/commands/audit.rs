//! `muster audit log` and `muster audit verify`: read the audit
//! repository in the data dir.

use std::process::ExitCode;

use muster_schemas::types::Duration as SpecDuration;

use super::admin::{format_time, table};
use crate::Error;
use crate::audit::{AuditLog, Filter, RecordKind};
use crate::cli::AuditCommand;
use crate::server::now;

/// A `--since` value: a duration back from now (`24h`, `7d`), a date
/// (`2026-11-29`, midnight UTC) or an RFC 3339 time.
pub fn parse_since(text: &str, now: i64) -> Result<i64, Error> {
    if let Ok(duration) = text.parse::<SpecDuration>() {
        return Ok(now.saturating_sub(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        && let Some(midnight) = date.and_hms_opt(0, 0, 0)
    {
        return Ok(midnight.and_utc().timestamp());
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp());
    }
    Err(Error::Usage(format!(
        "invalid --since `{text}`: give a duration such as 24h or 7d, a date such as 2026-11-29, or an RFC 3339 time"
    )))
}

pub async fn audit(command: AuditCommand) -> Result<ExitCode, Error> {
    match command {
        AuditCommand::Log { since, user, data } => {
            let filter = Filter {
                since: since.map(|text| parse_since(&text, now())).transpose()?,
                user,
            };
            let log = AuditLog::in_data_dir(&data.data_dir);
            let entries = tokio::task::spawn_blocking(move || log.entries(&filter))
                .await
                .map_err(|err| Error::Usage(format!("the reading task failed: {err}")))?
                .map_err(|err| Error::Usage(err.to_string()))?;
            let rows: Vec<Vec<String>> = entries
                .into_iter()
                .map(|entry| {
                    let record = entry.record;
                    let who = match (&record.kind, &record.who.token) {
                        (RecordKind::Outcome, _) => "muster".to_string(),
                        (_, Some(token)) => format!("{} (token {token})", record.who.user),
                        (_, None) if record.who.break_glass => {
                            format!("{} (break-glass)", record.who.user)
                        }
                        (_, None) => record.who.user.clone(),
                    };
                    vec![
                        record.unix_time().map_or(record.time.clone(), format_time),
                        who,
                        record.action.clone(),
                        if record.kind == RecordKind::Outcome {
                            "-".into()
                        } else {
                            record.targets.join(",")
                        },
                        record.summary.clone(),
                        record
                            .request_id
                            .get(..12)
                            .unwrap_or(&record.request_id)
                            .to_string(),
                    ]
                })
                .collect();
            table(
                &["TIME", "WHO", "ACTION", "TARGETS", "SUMMARY", "REQUEST"],
                &rows,
                "no audit records",
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { data } => {
            let log = AuditLog::in_data_dir(&data.data_dir);
            let path = log.path().display().to_string();
            // Every action the store says was audited must have its commit.
            let store = super::serve::open_store(&data).await?;
            let expected = audited_request_ids(&store).await;
            store.close().await;
            let expected = expected?;
            let verification = tokio::task::spawn_blocking(move || log.verify(&expected))
                .await
                .map_err(|err| Error::Usage(format!("the verifying task failed: {err}")))?
                .map_err(|err| Error::Usage(err.to_string()))?;
            for problem in &verification.problems {
                println!("error: {problem}");
            }
            if verification.problems.is_empty() {
                println!(
                    "ok: {path} holds {}; the chain is intact",
                    counted(&[
                        (verification.n_actions, "action"),
                        (verification.n_outcomes, "outcome")
                    ])
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "{} {} in {path}",
                    verification.problems.len(),
                    if verification.problems.len() == 1 {
                        "problem"
                    } else {
                        "problems"
                    }
                );
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// The request ids of the actions in the store that have an audit commit.
async fn audited_request_ids(store: &crate::store::Store) -> Result<Vec<String>, Error> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT request_id FROM actions WHERE audit_commit IS NOT NULL AND request_id IS NOT NULL",
    )
    .fetch_all(store.pool())
    .await
    .map_err(crate::store::StoreError::from)?;
    rows.iter()
        .map(|row| {
            row.try_get::<String, _>("request_id")
                .map_err(|err| Error::Store(crate::store::StoreError::from(err)))
        })
        .collect()
}

/// `3 actions and 1 outcome`.
fn counted(counts: &[(usize, &str)]) -> String {
    counts
        .iter()
        .map(|(n, what)| format!("{n} {what}{}", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(" and ")
}
