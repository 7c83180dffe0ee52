//! `muster user`, `muster apitoken`, `muster login` and `muster logout`.
//!
//! `user` and `apitoken` work straight on the controller's database, like
//! `muster token`: whoever can read the data dir administers users. Each
//! change is written to the audit repository *before* it is made, and is
//! not made when the audit commit cannot be written.
//!
//! Passwords are read without echo when stdin is a terminal (asked twice
//! for a new one); otherwise the first line of stdin is the password, for
//! scripts: `printf '%s\n' "$PASSWORD" | muster user add alice`.
//!
//! `login` stores the session for later commands in
//! `$XDG_CONFIG_HOME/muster/session.json` (else `~/.config/muster/`),
//! readable by its owner only, written atomically.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use muster_schemas::protocol::ErrorBody;
use muster_schemas::types::Duration as SpecDuration;
use serde::{Deserialize, Serialize};

use super::admin::{format_time, table};
use super::serve::open_store;
use crate::Error;
use crate::audit::{self, AuditLog, Parameter, Who};
use crate::cli::{ApiTokenCommand, DataArgs, LoginArgs, UserCommand};
use crate::server::now;
use crate::server::user_auth::{
    API_TOKEN_PREFIX, LoginRequest, LoginResponse, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS,
    hash_password, new_secret, secret_hash, valid_name,
};
use crate::store::ApiTokenRecord;

fn check_name(name: &str, what: &str) -> Result<(), Error> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid {what} name `{name}`: use lowercase letters, digits, `.`, `_` and `-`, starting with a letter or digit (at most 64)"
        )))
    }
}

/// Reads a password: without echo from the terminal, else the first line
/// of stdin.
fn read_password(prompt: &str) -> Result<String, Error> {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|err| Error::io("cannot read the password from the terminal", err))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|err| Error::io("cannot read the password from stdin", err))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        return Err(Error::Usage(
            "no password given: type one, or pipe it on stdin".into(),
        ));
    }
    Ok(password)
}

/// Reads a new password (twice from a terminal) and checks its length.
fn read_new_password(user: &str) -> Result<String, Error> {
    let password = read_password(&format!("new password for {user}: "))?;
    if std::io::stdin().is_terminal() {
        let again = read_password("the same again: ")?;
        if again != password {
            return Err(Error::Usage("the two passwords differ: try again".into()));
        }
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::Usage(format!(
            "the password is too short: use at least {MIN_PASSWORD_CHARS} characters (a few words make a good one)"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::Usage(format!(
            "the password is too long: use at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(password)
}

async fn hash(password: String) -> Result<String, Error> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|err| Error::Usage(format!("the hashing task failed: {err}")))?
        .map_err(Error::Usage)
}

/// Writes the audit commit of a change about to be made; the change is not
/// made if it cannot be written.
async fn audit_first(
    data: &DataArgs,
    action: &str,
    target: &str,
    summary: String,
    parameters: Vec<Parameter>,
) -> Result<String, Error> {
    let request_id = audit::new_request_id();
    AuditLog::in_data_dir(&data.data_dir)
        .record(audit::Action {
            request_id: request_id.clone(),
            who: Who::local(),
            action: action.into(),
            targets: vec![target.into()],
            summary,
            parameters,
            source: None,
            time: now(),
        })
        .await
        .map_err(|err| Error::Usage(format!("{err}: nothing was changed")))?;
    Ok(request_id)
}

/// Records that an audited change failed after its audit commit.
async fn audit_failure(data: &DataArgs, request_id: String, err: &Error) {
    let outcome = audit::Outcome {
        request_id,
        summary: format!("failed: {err}"),
        details: Default::default(),
        time: now(),
    };
    if let Err(audit_err) = AuditLog::in_data_dir(&data.data_dir)
        .record_outcome(outcome)
        .await
    {
        eprintln!("warning: cannot record the failure in the audit repository: {audit_err}");
    }
}

/// Runs `change` after its audit commit; a failure is recorded as the
/// action's outcome.
async fn audited<T>(
    data: &DataArgs,
    request_id: String,
    change: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match change.await {
        Ok(value) => Ok(value),
        Err(err) => {
            audit_failure(data, request_id, &err).await;
            Err(err)
        }
    }
}

pub async fn user(command: UserCommand) -> Result<ExitCode, Error> {
    match command {
        UserCommand::Add { name, admin, data } => {
            check_name(&name, "user")?;
            let store = open_store(&data).await?;
            if store.user(&name).await?.is_some() {
                return Err(Error::Usage(format!(
                    "user `{name}` exists already: change its password with `muster user passwd {name}`"
                )));
            }
            let password = read_new_password(&name)?;
            let password_hash = hash(password.clone()).await?;
            let what = if admin { "break-glass admin" } else { "user" };
            let request_id = audit_first(
                &data,
                "user.add",
                &name,
                format!("added {what} {name}"),
                vec![
                    Parameter::new("admin", admin.to_string()),
                    Parameter::secret("password", password),
                ],
            )
            .await?;
            audited(&data, request_id, async {
                Ok(store.add_user(&name, &password_hash, admin, now()).await?)
            })
            .await?;
            store.close().await;
            if admin {
                println!(
                    "added break-glass admin {name}: every login and request of it is written to the audit repository"
                );
            } else {
                println!("added user {name}; RoleBindings in the fleet repo say what it may do");
            }
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Passwd { name, data } => {
            let store = open_store(&data).await?;
            if store.user(&name).await?.is_none() {
                return Err(Error::Usage(format!(
                    "no user named `{name}` (see `muster user list`)"
                )));
            }
            let password = read_new_password(&name)?;
            let password_hash = hash(password.clone()).await?;
            let request_id = audit_first(
                &data,
                "user.passwd",
                &name,
                format!("changed the password of {name}"),
                vec![Parameter::secret("password", password)],
            )
            .await?;
            let changed = audited(&data, request_id, async {
                Ok(store.set_password(&name, &password_hash, now()).await?)
            })
            .await?;
            store.close().await;
            if !changed {
                return Err(Error::Usage(format!("user `{name}` was removed meanwhile")));
            }
            println!("changed the password of {name}; its sessions have ended");
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Remove { name, data } => {
            let store = open_store(&data).await?;
            if store.user(&name).await?.is_none() {
                return Err(Error::Usage(format!(
                    "no user named `{name}` (see `muster user list`)"
                )));
            }
            let request_id = audit_first(
                &data,
                "user.remove",
                &name,
                format!("removed user {name}"),
                Vec::new(),
            )
            .await?;
            audited(&data, request_id, async {
                Ok(store.remove_user(&name, now()).await?)
            })
            .await?;
            store.close().await;
            println!("removed user {name}; its sessions and API tokens are revoked");
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List(args) => {
            let store = open_store(&args.data).await?;
            let rows: Vec<Vec<String>> = store
                .users()
                .await?
                .into_iter()
                .map(|user| {
                    vec![
                        user.name,
                        if user.break_glass {
                            "break-glass admin"
                        } else {
                            "user"
                        }
                        .into(),
                        format_time(user.created_at),
                        format_time(user.updated_at),
                    ]
                })
                .collect();
            table(
                &["NAME", "KIND", "CREATED", "CHANGED"],
                &rows,
                "no users yet: add one with `muster user add NAME`",
            );
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn token_state(token: &ApiTokenRecord, now: i64) -> &'static str {
    if token.revoked_at.is_some() {
        "revoked"
    } else if token.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "valid"
    }
}

pub async fn apitoken(command: ApiTokenCommand) -> Result<ExitCode, Error> {
    match command {
        ApiTokenCommand::Create {
            user,
            name,
            ttl,
            data,
        } => {
            check_name(&name, "token")?;
            let ttl = ttl
                .map(|text| {
                    text.parse::<SpecDuration>()
                        .map_err(|err| Error::Usage(format!("invalid --ttl `{text}`: {err}")))
                })
                .transpose()?;
            let store = open_store(&data).await?;
            if store.user(&user).await?.is_none() {
                return Err(Error::Usage(format!(
                    "no user named `{user}`: add one with `muster user add {user}`"
                )));
            }
            let now = now();
            let taken = store
                .api_tokens()
                .await?
                .into_iter()
                .find(|token| token.name == name && token.revoked_at.is_none());
            if let Some(taken) = taken {
                return Err(Error::Usage(format!(
                    "an API token named `{name}` exists already (id {}): revoke it first or choose another name",
                    taken.id
                )));
            }
            let token = new_secret(API_TOKEN_PREFIX).map_err(Error::Usage)?;
            let mut id = [0u8; 6];
            getrandom::fill(&mut id)
                .map_err(|err| Error::Usage(format!("no randomness available: {err}")))?;
            let record = ApiTokenRecord {
                id: hex::encode(id),
                name: name.clone(),
                user: user.clone(),
                created_at: now,
                expires_at: ttl.map(|ttl| {
                    now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
                }),
                revoked_at: None,
                last_used_at: None,
            };
            let expiry = record.expires_at.map_or_else(
                || "never expires".to_string(),
                |at| format!("expires {}", format_time(at)),
            );
            let request_id = audit_first(
                &data,
                "apitoken.create",
                &name,
                format!("created API token {name} for {user}, {expiry}"),
                vec![
                    Parameter::new("id", record.id.clone()),
                    Parameter::new("user", user.clone()),
                    Parameter::new(
                        "expires_at",
                        record
                            .expires_at
                            .map_or_else(|| "never".to_string(), |at| at.to_string()),
                    ),
                    Parameter::secret("token", token.clone()),
                ],
            )
            .await?;
            audited(&data, request_id, async {
                Ok(store
                    .create_api_token(&record, &secret_hash(&token))
                    .await?)
            })
            .await?;
            store.close().await;
            println!(
                "API token {} `{name}` for {user}, {expiry}. RoleBindings name it `token: {name}`.",
                record.id
            );
            println!("The token is shown only now:");
            println!();
            println!("  {token}");
            Ok(ExitCode::SUCCESS)
        }
        ApiTokenCommand::List(args) => {
            let store = open_store(&args.data).await?;
            let now = now();
            let rows: Vec<Vec<String>> = store
                .api_tokens()
                .await?
                .into_iter()
                .map(|token| {
                    vec![
                        token.id.clone(),
                        token.name.clone(),
                        token.user.clone(),
                        token_state(&token, now).into(),
                        format_time(token.created_at),
                        token.expires_at.map_or("never".into(), format_time),
                        token.last_used_at.map_or("never".into(), format_time),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "NAME",
                    "USER",
                    "STATE",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                ],
                &rows,
                "no API tokens yet: create one with `muster apitoken create --user NAME --name NAME`",
            );
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        ApiTokenCommand::Revoke { id, data } => {
            let store = open_store(&data).await?;
            let token = store
                .api_tokens()
                .await?
                .into_iter()
                .find(|token| token.id == id && token.revoked_at.is_none())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "no valid API token with id `{id}` (see `muster apitoken list`)"
                    ))
                })?;
            let request_id = audit_first(
                &data,
                "apitoken.revoke",
                &token.name,
                format!("revoked API token {} of {}", token.name, token.user),
                vec![Parameter::new("id", id.clone())],
            )
            .await?;
            audited(&data, request_id, async {
                Ok(store.revoke_api_token(&id, now()).await?)
            })
            .await?;
            store.close().await;
            println!("revoked API token {id} `{}`", token.name);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The session `muster login` stored, for commands that call the API.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedSession {
    pub server: String,
    pub user: String,
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for SavedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedSession")
            .field("server", &self.server)
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Where `muster login` keeps the session.
pub fn session_path() -> Result<PathBuf, Error> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|dir| !dir.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })
        .ok_or_else(|| Error::Usage("neither XDG_CONFIG_HOME nor HOME is set: set one".into()))?;
    Ok(config.join("muster").join("session.json"))
}

/// The stored session, if there is one.
pub fn load_session() -> Result<Option<SavedSession>, Error> {
    let path = session_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Error::io(format!("cannot read `{}`", path.display()), err)),
    };
    serde_json::from_str(&text).map(Some).map_err(|_| {
        Error::Usage(format!(
            "`{}` is not a muster session: log in again with `muster login`",
            path.display()
        ))
    })
}

/// Writes the session readable by its owner only, atomically: a new file
/// beside it, synced, then renamed over it.
fn save_session(session: &SavedSession) -> Result<PathBuf, Error> {
    let path = session_path()?;
    let dir = path.parent().expect("the session path has a parent");
    std::fs::create_dir_all(dir)
        .map_err(|err| Error::io(format!("cannot create `{}`", dir.display()), err))?;
    let temp = dir.join(format!(".session.json.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        let mut file = options.open(&temp)?;
        file.write_all(&serde_json::to_vec_pretty(session).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|err| {
        let _ = std::fs::remove_file(&temp);
        Error::io(format!("cannot write `{}`", path.display()), err)
    })?;
    Ok(path)
}

pub(crate) fn http_client() -> Result<reqwest::Client, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .user_agent(concat!("muster/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| Error::Usage(format!("cannot set up the HTTP client: {err}")))
}

/// The message of an error answer: its `error` field, or the status.
pub(crate) async fn error_message(response: reqwest::Response) -> String {
    let status = response.status();
    match response.json::<ErrorBody>().await {
        Ok(body) => format!("{status}: {}", body.error),
        Err(_) => status.to_string(),
    }
}

pub async fn login(args: LoginArgs) -> Result<ExitCode, Error> {
    let server = args.server.trim_end_matches('/').to_string();
    let password = read_password(&format!("password for {} at {server}: ", args.user))?;
    let request = LoginRequest {
        user: args.user.clone(),
        password,
    };
    let response = http_client()?
        .post(format!("{server}/v1/login"))
        .json(&request)
        .send()
        .await
        .map_err(|err| Error::Usage(format!("cannot reach {server}: {err}")))?;
    if !response.status().is_success() {
        return Err(Error::Usage(format!(
            "login refused: {}",
            error_message(response).await
        )));
    }
    let answer: LoginResponse = response
        .json()
        .await
        .map_err(|_| Error::Usage(format!("{server} did not answer like a muster controller")))?;
    let session = SavedSession {
        server: server.clone(),
        user: answer.user,
        token: answer.token,
        expires_at: answer.expires_at,
    };
    let path = save_session(&session)?;
    println!(
        "logged in to {server} as {}; the session lasts until {} and is kept in {}",
        session.user,
        format_time(session.expires_at),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn logout() -> Result<ExitCode, Error> {
    let Some(session) = load_session()? else {
        println!("not logged in");
        return Ok(ExitCode::SUCCESS);
    };
    // The local session goes whatever the server says: a server that
    // cannot be reached ends it at its expiry.
    let ended = match http_client()?
        .post(format!("{}/v1/logout", session.server))
        .bearer_auth(&session.token)
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(error_message(response).await),
        Err(err) => Err(err.to_string()),
    };
    let path = session_path()?;
    std::fs::remove_file(&path)
        .map_err(|err| Error::io(format!("cannot remove `{}`", path.display()), err))?;
    match ended {
        Ok(()) => println!("logged out of {}", session.server),
        Err(reason) => println!(
            "removed the local session; {} could not end it ({reason}), so it lasts until {}",
            session.server,
            format_time(session.expires_at)
        ),
    }
    Ok(ExitCode::SUCCESS)
}
