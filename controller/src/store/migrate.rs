//! Embedded migrations, one folder per backend, applied in order at start.
//!
//! Each migration runs in its own transaction together with the row that
//! records it, so a crash leaves it either applied and recorded or neither.
//! Migrations are never edited once released; a checksum catches edits.

use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

use super::{Backend, Result, StoreError};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

/// One backend's migrations, from its own directory: both backends have
/// the same versions with the same names, only their SQL differs.
macro_rules! migrations {
    ($backend:literal) => {
        &[
            Migration {
                version: 1,
                name: "initial",
                sql: include_str!(concat!("../../migrations/", $backend, "/0001_initial.sql")),
            },
            Migration {
                version: 2,
                name: "jobs",
                sql: include_str!(concat!("../../migrations/", $backend, "/0002_jobs.sql")),
            },
            Migration {
                version: 3,
                name: "users",
                sql: include_str!(concat!("../../migrations/", $backend, "/0003_users.sql")),
            },
            Migration {
                version: 4,
                name: "schedules",
                sql: include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0004_schedules.sql"
                )),
            },
            Migration {
                version: 5,
                name: "dashboard",
                sql: include_str!(concat!(
                    "../../migrations/",
                    $backend,
                    "/0005_dashboard.sql"
                )),
            },
        ]
    };
}

const SQLITE: &[Migration] = migrations!("sqlite");

const POSTGRES: &[Migration] = migrations!("postgres");

pub(super) async fn run(pool: &AnyPool, backend: Backend) -> Result<()> {
    let migrations = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS muster_migrations (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL
        )",
    )
    .execute(pool)
    .await?;
    if backend == Backend::Postgres {
        // Replicas starting together take turns; the lock ends with the
        // session's transaction.
        let mut tx = pool.begin().await?;
        sqlx::raw_sql("SELECT pg_advisory_xact_lock(7346261)")
            .execute(&mut *tx)
            .await?;
        apply(&mut tx, migrations).await?;
        tx.commit().await?;
    } else {
        let mut tx = pool.begin().await?;
        apply(&mut tx, migrations).await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn apply(tx: &mut sqlx::Transaction<'_, sqlx::Any>, migrations: &[Migration]) -> Result<()> {
    let applied = sqlx::query("SELECT version, checksum FROM muster_migrations")
        .fetch_all(&mut **tx)
        .await?;
    let applied: Vec<(i64, String)> = applied
        .iter()
        .map(|row| Ok((row.try_get("version")?, row.try_get("checksum")?)))
        .collect::<Result<_>>()?;
    let newest_known = migrations.last().map_or(0, |m| m.version);
    if let Some((version, _)) = applied.iter().find(|(version, _)| *version > newest_known) {
        return Err(StoreError::Conflict(format!(
            "the database has migration {version}, newer than this muster knows: upgrade muster"
        )));
    }
    for migration in migrations {
        let checksum = hex::encode(Sha256::digest(migration.sql.as_bytes()));
        match applied
            .iter()
            .find(|(version, _)| *version == migration.version)
        {
            Some((_, stored)) if *stored == checksum => continue,
            Some(_) => {
                return Err(StoreError::Corrupt(format!(
                    "migration {} ({}) differs from the one applied to this database",
                    migration.version, migration.name
                )));
            }
            None => {}
        }
        sqlx::raw_sql(migration.sql).execute(&mut **tx).await?;
        sqlx::query("INSERT INTO muster_migrations (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(migration.version)
            .bind(migration.name)
            .bind(checksum)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
