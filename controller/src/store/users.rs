//! Users, their sessions and API tokens, and the login-attempt counters
//! that rate-limit and lock out password guessing.
//!
//! Nothing secret is stored: passwords arrive here already hashed (argon2id
//! PHC strings) and session and API tokens as SHA-256 hashes, so a bearer
//! token is found by the hash of what the caller presents.
//!
//! Transactions that end early are rolled back explicitly: a dropped one
//! keeps its connection's lock until the pool hands that connection out
//! again, and SQLite refuses other writers meanwhile ("database is locked").

use std::fmt;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Backend, Result, Store, StoreError};

/// A user, as stored.
#[derive(Clone, PartialEq)]
pub struct UserRecord {
    pub name: String,
    /// The argon2id PHC string.
    pub password_hash: String,
    /// An admin made with `muster user add --admin`: every use is audited.
    pub break_glass: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// Set when the user was removed.
    pub disabled_at: Option<i64>,
}

impl fmt::Debug for UserRecord {
    // The password hash stays out of logs and panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("break_glass", &self.break_glass)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

/// An API token, without the token itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiTokenRecord {
    /// Short public id, for `muster apitoken revoke`.
    pub id: String,
    /// The name RBAC bindings use (`token: ci`).
    pub name: String,
    /// The user the token acts for.
    pub user: String,
    pub created_at: i64,
    /// `None`: the token does not expire.
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// What a bearer token (a session or an API token) stands for, with what
/// the caller must check before trusting it.
#[derive(Debug, Clone, PartialEq)]
pub struct BearerRecord {
    pub user: String,
    pub break_glass: bool,
    /// The user was removed after the token was issued.
    pub user_disabled: bool,
    /// For API tokens: the token's id and name; `None` for sessions.
    pub api_token: Option<(String, String)>,
    /// `None`: never expires (API tokens only).
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// How many login attempts a subject (a user name, a source address) may
/// make in a window before it is locked, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimit {
    /// Attempts allowed per window; the attempt that reaches it locks.
    pub max_attempts: i64,
    /// Seconds.
    pub window: i64,
    /// Seconds a locked subject stays locked.
    pub lockout: i64,
}

/// Whether a counted login attempt may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptGate {
    pub allowed: bool,
    /// When the subject is locked: until when.
    pub locked_until: Option<i64>,
}

/// The login-failure subject of a user name.
pub fn user_subject(name: &str) -> String {
    format!("user:{name}")
}

/// The login-failure subject of a source address.
pub fn address_subject(address: &str) -> String {
    format!("addr:{address}")
}

/// Last-used times are written at most this often (seconds), so that a busy
/// API token does not turn every request into a write.
const TOUCH_INTERVAL: i64 = 60;

impl Store {
    /// Adds a user. A removed user of that name is enabled again with the
    /// new password; its old sessions and tokens stay revoked.
    pub async fn add_user(
        &self,
        name: &str,
        password_hash: &str,
        break_glass: bool,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let existing = sqlx::query("SELECT disabled_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        match existing {
            Some(row) if row.try_get::<Option<i64>, _>("disabled_at")?.is_none() => {
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "user `{name}` exists already: change its password with `muster user passwd {name}`"
                )));
            }
            Some(_) => {
                sqlx::query(
                    "UPDATE users SET password_hash = $1, break_glass = $2, created_at = $3,
                        updated_at = $3, disabled_at = NULL
                     WHERE name = $4",
                )
                .bind(password_hash)
                .bind(i64::from(break_glass))
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                let inserted = sqlx::query(
                    "INSERT INTO users (name, password_hash, break_glass, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $4)",
                )
                .bind(name)
                .bind(password_hash)
                .bind(i64::from(break_glass))
                .bind(now)
                .execute(&mut *tx)
                .await;
                if let Err(err) = inserted {
                    tx.rollback().await?;
                    return Err(if is_unique_violation(&err) {
                        StoreError::Conflict(format!("user `{name}` exists already"))
                    } else {
                        err.into()
                    });
                }
            }
        }
        sqlx::query("DELETE FROM login_failures WHERE subject = $1")
            .bind(user_subject(name))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A user that has not been removed.
    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE name = $1 AND disabled_at IS NULL")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| user_from_row(&row)).transpose()
    }

    /// Users that have not been removed, by name.
    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query("SELECT * FROM users WHERE disabled_at IS NULL ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Replaces a user's password: its sessions end and a lockout is
    /// lifted; its API tokens stay. False when there is no such user.
    pub async fn set_password(&self, name: &str, password_hash: &str, now: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE users SET password_hash = $1, updated_at = $2
             WHERE name = $3 AND disabled_at IS NULL",
        )
        .bind(password_hash)
        .bind(now)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        revoke_sessions_of(&mut tx, name, now).await?;
        sqlx::query("DELETE FROM login_failures WHERE subject = $1")
            .bind(user_subject(name))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes a user: disables it and revokes its sessions and API
    /// tokens. False when there is no such user.
    pub async fn remove_user(&self, name: &str, now: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE users SET disabled_at = $1, updated_at = $1
             WHERE name = $2 AND disabled_at IS NULL",
        )
        .bind(now)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        revoke_sessions_of(&mut tx, name, now).await?;
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    // Sessions

    pub async fn create_session(
        &self,
        token_hash: &str,
        user: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_name, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(user)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a session; false when it was unknown or ended already.
    pub async fn revoke_session(&self, token_hash: &str, now: i64) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The session with this token hash, with its user.
    pub async fn session_bearer(&self, token_hash: &str) -> Result<Option<BearerRecord>> {
        let row = sqlx::query(
            "SELECT s.user_name, u.break_glass, u.disabled_at, s.expires_at, s.revoked_at, s.last_used_at
             FROM sessions s JOIN users u ON u.name = s.user_name
             WHERE s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| bearer_from_row(&row, None)).transpose()
    }

    /// Notes that a session was used (at most once a minute).
    pub async fn touch_session(&self, token_hash: &str, now: i64) -> Result<()> {
        self.touch(
            "UPDATE sessions SET last_used_at = $1
             WHERE token_hash = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
            token_hash,
            now,
        )
        .await
    }

    // API tokens

    /// Stores a new API token for an existing user. Its name must not be
    /// held by another token that is not revoked.
    pub async fn create_api_token(&self, token: &ApiTokenRecord, token_hash: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let user = sqlx::query("SELECT name FROM users WHERE name = $1 AND disabled_at IS NULL")
            .bind(&token.user)
            .fetch_optional(&mut *tx)
            .await?;
        if user.is_none() {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "no user named `{}`: add one with `muster user add {}`",
                token.user, token.user
            )));
        }
        let name_taken = || {
            StoreError::Conflict(format!(
                "an API token named `{}` exists already: revoke it first (`muster apitoken list` shows its id) or choose another name",
                token.name
            ))
        };
        let taken = sqlx::query("SELECT id FROM api_tokens WHERE name = $1 AND revoked_at IS NULL")
            .bind(&token.name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            tx.rollback().await?;
            return Err(name_taken());
        }
        let inserted = sqlx::query(
            "INSERT INTO api_tokens (id, name, user_name, token_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(&token.user)
        .bind(token_hash)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // A concurrent creation took the name between the check and
            // the insert: the unique index has the last word.
            Err(err) => {
                tx.rollback().await?;
                return Err(if is_unique_violation(&err) {
                    name_taken()
                } else {
                    err.into()
                });
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every API token, newest first.
    pub async fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>> {
        let rows = sqlx::query("SELECT * FROM api_tokens ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(api_token_from_row).collect()
    }

    /// Revokes an API token by id; returns it, or `None` when there is no
    /// such token or it was revoked already.
    pub async fn revoke_api_token(&self, id: &str, now: i64) -> Result<Option<ApiTokenRecord>> {
        let mut tx = self.begin().await?;
        let result = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        let row = sqlx::query("SELECT * FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(api_token_from_row(&row)?))
    }

    /// The API token with this token hash, with its user.
    pub async fn api_token_bearer(&self, token_hash: &str) -> Result<Option<BearerRecord>> {
        let row = sqlx::query(
            "SELECT t.id, t.name, t.user_name, u.break_glass, u.disabled_at, t.expires_at, t.revoked_at, t.last_used_at
             FROM api_tokens t JOIN users u ON u.name = t.user_name
             WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let api_token = (row.try_get("id")?, row.try_get("name")?);
            bearer_from_row(&row, Some(api_token))
        })
        .transpose()
    }

    /// Notes that an API token was used (at most once a minute).
    pub async fn touch_api_token(&self, id: &str, now: i64) -> Result<()> {
        self.touch(
            "UPDATE api_tokens SET last_used_at = $1
             WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
            id,
            now,
        )
        .await
    }

    /// Runs a `touch_*` update: `$1` is now, `$2` the session or token,
    /// `$3` the time before which `last_used_at` is stale enough to move.
    async fn touch(&self, update: &'static str, key: &str, now: i64) -> Result<()> {
        sqlx::query(update)
            .bind(now)
            .bind(key)
            .bind(now - TOUCH_INTERVAL)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // Login attempts

    /// Counts a login attempt against `subject` *before* the password is
    /// checked, so that parallel guesses cannot all slip in while the
    /// first ones are being verified. The attempt that reaches the limit is
    /// still allowed and locks the subject; later ones are refused until
    /// the lockout ends. A successful login gives the attempt back with
    /// [`Store::forgive_login_attempt`] or [`Store::clear_login_failures`].
    pub async fn count_login_attempt(
        &self,
        subject: &str,
        limit: AttemptLimit,
        now: i64,
    ) -> Result<AttemptGate> {
        // Forgotten subjects of the same kind go first, so that guessed
        // names do not pile up. Outside the transaction, and allowed to
        // fail: two sweeps at once may deadlock on PostgreSQL, and the
        // next attempt sweeps again.
        let kind = subject.split_once(':').map_or("", |(kind, _)| kind);
        let swept = sqlx::query(
            "DELETE FROM login_failures
             WHERE subject LIKE $1 AND window_start < $2
                AND (locked_until IS NULL OR locked_until < $3)",
        )
        .bind(format!("{kind}:%"))
        .bind(now - limit.window)
        .bind(now)
        .execute(&self.pool)
        .await;
        if let Err(err) = swept {
            tracing::debug!(error = %err, "cannot sweep old login failures; the next attempt will");
        }
        let mut tx = self.begin().await?;
        // A write first: it takes SQLite's write lock for the whole
        // transaction and makes sure the row exists for PostgreSQL's
        // row lock below, so two attempts never read the same count.
        sqlx::query(
            "INSERT INTO login_failures (subject, failures, window_start) VALUES ($1, 0, $2)
             ON CONFLICT (subject) DO NOTHING",
        )
        .bind(subject)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let select = match self.backend {
            Backend::Postgres => {
                "SELECT failures, window_start, locked_until FROM login_failures WHERE subject = $1 FOR UPDATE"
            }
            Backend::Sqlite => {
                "SELECT failures, window_start, locked_until FROM login_failures WHERE subject = $1"
            }
        };
        let row = sqlx::query(select)
            .bind(subject)
            .fetch_one(&mut *tx)
            .await?;
        let mut failures: i64 = row.try_get("failures")?;
        let mut window_start: i64 = row.try_get("window_start")?;
        let mut locked_until: Option<i64> = row.try_get("locked_until")?;
        let gate = match locked_until {
            Some(until) if until > now => {
                failures += 1;
                AttemptGate {
                    allowed: false,
                    locked_until: Some(until),
                }
            }
            _ => {
                // A lockout that ended, or a window that passed, starts over.
                if locked_until.is_some() || window_start + limit.window <= now {
                    failures = 0;
                    window_start = now;
                    locked_until = None;
                }
                failures += 1;
                if failures >= limit.max_attempts {
                    locked_until = Some(now + limit.lockout);
                }
                AttemptGate {
                    allowed: true,
                    locked_until,
                }
            }
        };
        sqlx::query(
            "UPDATE login_failures SET failures = $1, window_start = $2, locked_until = $3 WHERE subject = $4",
        )
        .bind(failures)
        .bind(window_start)
        .bind(locked_until)
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(gate)
    }

    /// Gives back one counted attempt of `subject` (a login that
    /// succeeded), lifting a lockout it caused.
    pub async fn forgive_login_attempt(&self, subject: &str, limit: AttemptLimit) -> Result<()> {
        sqlx::query(
            "UPDATE login_failures SET failures = failures - 1,
                locked_until = CASE WHEN failures - 1 < $1 THEN NULL ELSE locked_until END
             WHERE subject = $2 AND failures > 0",
        )
        .bind(limit.max_attempts)
        .bind(subject)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets every counted attempt of `subject`.
    pub async fn clear_login_failures(&self, subject: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE subject = $1")
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

async fn revoke_sessions_of(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: &str,
    now: i64,
) -> Result<()> {
    sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(user)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|err| err.is_unique_violation())
}

/// A bearer from a session or API token row joined with its user's
/// `break_glass` and `disabled_at`; sessions always expire, so their
/// `expires_at` is read the same way as a token's.
fn bearer_from_row(row: &AnyRow, api_token: Option<(String, String)>) -> Result<BearerRecord> {
    Ok(BearerRecord {
        user: row.try_get("user_name")?,
        break_glass: row.try_get::<i64, _>("break_glass")? != 0,
        user_disabled: row.try_get::<Option<i64>, _>("disabled_at")?.is_some(),
        api_token,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

fn user_from_row(row: &AnyRow) -> Result<UserRecord> {
    Ok(UserRecord {
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        break_glass: row.try_get::<i64, _>("break_glass")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

fn api_token_from_row(row: &AnyRow) -> Result<ApiTokenRecord> {
    Ok(ApiTokenRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        user: row.try_get("user_name")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}
