//! `muster token`, `muster hosts` and `muster commits`: local
//! administration, straight on the controller's database. A running
//! controller notices approvals within seconds.

use std::collections::BTreeMap;
use std::process::ExitCode;

use base64::Engine;
use muster_schemas::protocol::HostState;
use muster_schemas::types::Duration as SpecDuration;

use super::serve::{open_data_dir, open_store};
use crate::Error;
use crate::audit::Parameter;
use crate::cli::{CommitsCommand, DataArgs, HostsCommand, TokenCommand, TokenCreateArgs};
use crate::server::agent_api::token_hash;
use crate::server::now;
use crate::store::{CommitState, HostRecord, Store, TokenRecord};

/// A time as `2026-11-22 09:40 UTC`.
pub fn format_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// A past time relative to now, such as `3m ago`.
pub fn ago(unix: i64, now: i64) -> String {
    let secs = (now - unix).max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// Prints rows as aligned columns, or `empty` when there are none.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>], empty: &str) {
    if rows.is_empty() {
        println!("{empty}");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", text.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Labels as `key=value,key=value`.
fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn random_token() -> Result<(String, String), Error> {
    let mut bytes = [0u8; 30];
    getrandom::fill(&mut bytes)
        .map_err(|err| Error::Usage(format!("no randomness available: {err}")))?;
    let token = format!(
        "mt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..24])
    );
    let id = hex::encode(&bytes[24..]);
    Ok((token, id))
}

/// Labels from `key=value` items, keys checked.
pub(crate) fn parse_labels<S: AsRef<str>>(
    labels: &[S],
) -> Result<BTreeMap<String, String>, String> {
    labels
        .iter()
        .map(|label| {
            let label = label.as_ref();
            let (key, value) = label
                .split_once('=')
                .ok_or_else(|| format!("invalid label `{label}`: write key=value"))?;
            let valid_key = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
            if !valid_key {
                return Err(format!(
                    "invalid label key `{key}`: use letters, digits, `.`, `_`, `-` and `/`"
                ));
            }
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

/// Whether an enrollment token still enrolls hosts, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenState {
    Revoked,
    Expired,
    UsedUp,
    Valid,
}

impl TokenState {
    pub(crate) fn of(token: &TokenRecord, now: i64) -> TokenState {
        if token.revoked_at.is_some() {
            TokenState::Revoked
        } else if token.expires_at <= now {
            TokenState::Expired
        } else if token.uses >= token.max_uses {
            TokenState::UsedUp
        } else {
            TokenState::Valid
        }
    }
}

/// What a new enrollment token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenSpec {
    pub labels: BTreeMap<String, String>,
    pub max_uses: u32,
    pub valid_for_secs: u64,
    pub auto_approve: bool,
}

/// Why an enrollment token was not created or revoked.
#[derive(Debug)]
pub(crate) enum TokenActionError {
    /// The audit commit could not be written: nothing was done.
    Audit(crate::audit::AuditError),
    Store(crate::store::StoreError),
    /// No randomness to make a secret from.
    Randomness(String),
}

impl std::fmt::Display for TokenActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenActionError::Audit(err) => write!(f, "{err}: nothing was done"),
            TokenActionError::Store(err) => write!(f, "{err}"),
            TokenActionError::Randomness(detail) => f.write_str(detail),
        }
    }
}

impl From<TokenActionError> for Error {
    fn from(err: TokenActionError) -> Self {
        match err {
            TokenActionError::Store(err) => Error::Store(err),
            other => Error::Usage(other.to_string()),
        }
    }
}

/// Creates an enrollment token, as `muster token create` and the
/// dashboard both do it: the audit commit first (labels, uses, expiry;
/// never the secret), then the token. Returns its record and its secret,
/// which is shown once and stored only as a hash.
pub(crate) async fn create_enrollment_token(
    store: &Store,
    audit: &crate::audit::AuditLog,
    who: crate::audit::Who,
    source: Option<String>,
    spec: &TokenSpec,
    now: i64,
) -> Result<(TokenRecord, String), TokenActionError> {
    let (token, id) =
        random_token().map_err(|err| TokenActionError::Randomness(err.to_string()))?;
    let record = TokenRecord {
        id: id.clone(),
        max_uses: i64::from(spec.max_uses),
        uses: 0,
        labels: spec.labels.clone(),
        auto_approve: spec.auto_approve,
        created_at: now,
        expires_at: now.saturating_add(i64::try_from(spec.valid_for_secs).unwrap_or(i64::MAX)),
        revoked_at: None,
    };
    let parameters = vec![
        Parameter::new("labels", labels_text(&record.labels)),
        Parameter::new("max_uses", spec.max_uses.to_string()),
        Parameter::new("expires", format_time(record.expires_at)),
        Parameter::new("auto_approve", spec.auto_approve.to_string()),
    ];
    audit
        .record(crate::audit::Action {
            request_id: crate::audit::new_request_id(),
            who,
            action: "tokens.create".into(),
            targets: vec![format!("token {id}")],
            summary: format!("create enrollment token {id}"),
            parameters,
            source,
            time: now,
        })
        .await
        .map_err(TokenActionError::Audit)?;
    store
        .create_token(&record, &token_hash(&token))
        .await
        .map_err(TokenActionError::Store)?;
    Ok((record, token))
}

/// Revokes an enrollment token that is not revoked yet, as `muster token
/// revoke` and the dashboard both do it: the audit commit, then the
/// revocation. False (and nothing recorded) when there is no such token.
pub(crate) async fn revoke_enrollment_token(
    store: &Store,
    audit: &crate::audit::AuditLog,
    who: crate::audit::Who,
    source: Option<String>,
    id: &str,
    now: i64,
) -> Result<bool, TokenActionError> {
    let known = store
        .tokens()
        .await
        .map_err(TokenActionError::Store)?
        .into_iter()
        .any(|token| token.id == id && token.revoked_at.is_none());
    if !known {
        return Ok(false);
    }
    audit
        .record(crate::audit::Action {
            request_id: crate::audit::new_request_id(),
            who,
            action: "tokens.revoke".into(),
            targets: vec![format!("token {id}")],
            summary: format!("revoke enrollment token {id}"),
            parameters: Vec::new(),
            source,
            time: now,
        })
        .await
        .map_err(TokenActionError::Audit)?;
    store
        .revoke_token(id, now)
        .await
        .map_err(TokenActionError::Store)
}

/// The command that enrolls a host with `token`.
pub(crate) fn enroll_command(server: &str, token: &str, public_key: &str) -> String {
    format!("muster-agent enroll --server {server} --token {token} --pubkey {public_key}")
}

pub async fn token(command: TokenCommand) -> Result<ExitCode, Error> {
    match command {
        TokenCommand::Create(args) => create_token(args).await,
        TokenCommand::List(args) => {
            let store = open_store(&args.data).await?;
            let now = now();
            let rows: Vec<Vec<String>> = store
                .tokens()
                .await?
                .into_iter()
                .map(|token| {
                    let state = match TokenState::of(&token, now) {
                        TokenState::Revoked => "revoked",
                        TokenState::Expired => "expired",
                        TokenState::UsedUp => "used up",
                        TokenState::Valid => "valid",
                    };
                    vec![
                        token.id,
                        state.into(),
                        format!("{}/{}", token.uses, token.max_uses),
                        format_time(token.expires_at),
                        if token.auto_approve { "yes" } else { "no" }.into(),
                        labels_text(&token.labels),
                    ]
                })
                .collect();
            table(
                &["ID", "STATE", "USES", "EXPIRES", "AUTO-APPROVE", "LABELS"],
                &rows,
                "no tokens yet: create one with `muster token create`",
            );
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id, data } => {
            let store = open_store(&data).await?;
            let audit = crate::audit::AuditLog::in_data_dir(&data.data_dir);
            let revoked = revoke_enrollment_token(
                &store,
                &audit,
                crate::audit::Who::local(),
                None,
                &id,
                now(),
            )
            .await;
            store.close().await;
            let revoked = revoked?;
            if revoked {
                println!("revoked token {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                Err(Error::Usage(format!(
                    "no valid token with id `{id}` (see `muster token list`)"
                )))
            }
        }
    }
}

async fn create_token(args: TokenCreateArgs) -> Result<ExitCode, Error> {
    if args.uses == 0 {
        return Err(Error::Usage("--uses must be at least 1".into()));
    }
    let ttl = args
        .ttl
        .parse::<SpecDuration>()
        .map_err(|err| Error::Usage(format!("invalid --ttl `{}`: {err}", args.ttl)))?;
    let labels = parse_labels(&args.labels).map_err(Error::Usage)?;
    let (key, _) = open_data_dir(&args.data.data_dir)?;
    let store = open_store(&args.data).await?;
    let server = match args.server {
        Some(server) => server,
        None => store.setting("public_url").await?.ok_or_else(|| {
            Error::Usage(
                "no controller URL known yet: start `muster serve` once, or pass --server URL"
                    .into(),
            )
        })?,
    };
    let spec = TokenSpec {
        labels,
        max_uses: args.uses,
        valid_for_secs: ttl.as_secs(),
        auto_approve: args.auto_approve,
    };
    let audit = crate::audit::AuditLog::in_data_dir(&args.data.data_dir);
    let created = create_enrollment_token(
        &store,
        &audit,
        crate::audit::Who::local(),
        None,
        &spec,
        now(),
    )
    .await;
    store.close().await;
    let (record, token) = created?;
    let id = &record.id;
    println!(
        "token {id}: {} {}, expires {}{}{}",
        args.uses,
        if args.uses == 1 { "use" } else { "uses" },
        format_time(record.expires_at),
        if args.auto_approve {
            ", hosts approved at once"
        } else {
            ", hosts wait for approval"
        },
        if record.labels.is_empty() {
            String::new()
        } else {
            format!(", labels {}", labels_text(&record.labels))
        }
    );
    println!("The token is shown only now. Enroll a host with:");
    println!();
    println!("  {}", enroll_command(&server, &token, &key.public_key()));
    Ok(ExitCode::SUCCESS)
}

async fn find(store: &Store, name: &str) -> Result<HostRecord, Error> {
    store
        .find_host(name)
        .await?
        .ok_or_else(|| Error::Usage(format!("no host named `{name}` (see `muster hosts list`)")))
}

pub async fn hosts(command: HostsCommand) -> Result<ExitCode, Error> {
    match command {
        HostsCommand::List(args) => list_hosts(&args.data).await,
        HostsCommand::Export { output, data } => export_hosts(output.as_deref(), &data).await,
        HostsCommand::Show { name, data } => show_host(&name, &data).await,
        HostsCommand::Approve { names, data } => {
            set_state(&names, &data, HostState::Approved).await
        }
        HostsCommand::Reject { names, data } => set_state(&names, &data, HostState::Rejected).await,
        HostsCommand::Remove { names, data } => {
            let store = open_store(&data).await?;
            for name in &names {
                let host = find(&store, name).await?;
                store.remove_host(&host.id).await?;
                println!("removed {} ({})", host.name, host.id);
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Approves or rejects hosts, each after its audit commit (authored by
/// the local account, `via: cli`); a host whose commit cannot be written
/// is left as it is.
async fn set_state(names: &[String], data: &DataArgs, state: HostState) -> Result<ExitCode, Error> {
    let store = open_store(data).await?;
    let audit = crate::audit::AuditLog::in_data_dir(&data.data_dir);
    let verb = if state == HostState::Approved {
        "approve"
    } else {
        "reject"
    };
    for name in names {
        let host = find(&store, name).await?;
        audit
            .record(crate::audit::Action {
                request_id: crate::audit::new_request_id(),
                who: crate::audit::Who::local(),
                action: format!("hosts.{verb}"),
                targets: vec![host.name.clone()],
                summary: format!("{verb} host {} ({}) on the database", host.name, host.id),
                parameters: Vec::new(),
                source: None,
                time: now(),
            })
            .await
            .map_err(|err| Error::Usage(format!("{err}: {} was left as it is", host.name)))?;
        store.set_host_state(&host.id, state).await?;
        println!("{} is {}", host.name, state.as_str());
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn list_hosts(data: &DataArgs) -> Result<ExitCode, Error> {
    let store = open_store(data).await?;
    let heads = store.bundle_heads().await?;
    let now = now();
    let rows: Vec<Vec<String>> = store
        .hosts()
        .await?
        .into_iter()
        .map(|host| {
            let head = heads.get(&host.id);
            vec![
                host.name,
                host.state.as_str().into(),
                host.run_status.unwrap_or_else(|| "-".into()),
                head.map_or("-".into(), |h| {
                    format!("{} ({})", h.generation, short(&h.commit_id))
                }),
                if host.applied_generation == 0 {
                    "-".into()
                } else {
                    host.applied_generation.to_string()
                },
                host.last_seen_at.map_or("never".into(), |t| ago(t, now)),
                labels_text(&host.labels),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "STATE", "STATUS", "BUNDLE", "APPLIED", "SEEN", "LABELS",
        ],
        &rows,
        "no hosts yet: create a token with `muster token create` and enroll a host",
    );
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Writes the inventory of approved hosts: the compiler's inputs, for
/// `muster plan`.
async fn export_hosts(
    output: Option<&std::path::Path>,
    data: &DataArgs,
) -> Result<ExitCode, Error> {
    let store = open_store(data).await?;
    let mut hosts: Vec<crate::plan::InventoryHost> = store
        .hosts()
        .await?
        .into_iter()
        .filter(|host| host.state == HostState::Approved)
        .map(|host| crate::plan::InventoryHost {
            name: host.name,
            id: host.id,
            labels: host.labels,
            facts: host.facts,
        })
        .collect();
    store.close().await;
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let inventory = crate::plan::Inventory {
        version: crate::plan::FORMAT_VERSION,
        hosts,
    };
    let mut text = serde_json::to_string_pretty(&inventory).unwrap_or_default();
    text.push('\n');
    match output {
        Some(path) => {
            std::fs::write(path, text)
                .map_err(|err| Error::io(format!("cannot write `{}`", path.display()), err))?;
            eprintln!(
                "wrote {} hosts to {}",
                inventory.hosts.len(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn show_host(name: &str, data: &DataArgs) -> Result<ExitCode, Error> {
    let store = open_store(data).await?;
    let host = find(&store, name).await?;
    let now = now();
    println!("name:        {}", host.name);
    println!("id:          {}", host.id);
    println!("state:       {}", host.state.as_str());
    println!(
        "status:      {}",
        host.run_status.as_deref().unwrap_or("no report yet")
    );
    println!("enrolled:    {}", format_time(host.enrolled_at));
    println!(
        "last seen:   {}",
        host.last_seen_at.map_or("never".into(), |t| format!(
            "{} ({})",
            format_time(t),
            ago(t, now)
        ))
    );
    println!(
        "labels:      {}",
        serde_json::to_string(&host.labels).unwrap_or_default()
    );
    println!(
        "facts:       {}",
        serde_json::Value::Object(host.facts.clone())
    );
    match store.bundle(&host.id).await? {
        Some(bundle) => println!(
            "bundle:      generation {} from commit {}, issued {}, expires {}; applied generation {}",
            bundle.generation,
            short(&bundle.commit_id),
            format_time(bundle.issued_at),
            format_time(bundle.expires_at),
            host.applied_generation
        ),
        None => println!("bundle:      none yet"),
    }
    if let Some((received, body)) = store.reports(&host.id, 1).await?.into_iter().next() {
        println!(
            "last report: {} ({})",
            format_time(received),
            ago(received, now)
        );
        if let Ok(report) = serde_json::from_str::<muster_schemas::protocol::Report>(&body) {
            for resource in &report.resources {
                let status = serde_json::to_value(resource.status).unwrap_or_default();
                println!("  {:<10} {}", status.as_str().unwrap_or(""), resource.id);
            }
            for check in &report.checks {
                println!(
                    "  {:<10} check {}/{}",
                    if check.passed { "pass" } else { "FAIL" },
                    check.policy,
                    check.name
                );
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn short(commit: &str) -> &str {
    commit.get(..10).unwrap_or(commit)
}

pub async fn commits(command: CommitsCommand) -> Result<ExitCode, Error> {
    match command {
        CommitsCommand::List { limit, data } => {
            let store = open_store(&data).await?;
            let deployed = store.deployed_commit().await?.map(|c| c.id);
            let rows: Vec<Vec<String>> = store
                .commits(limit)
                .await?
                .into_iter()
                .map(|commit| {
                    let state = match commit.state {
                        CommitState::Deployed
                            if deployed.as_deref() == Some(commit.id.as_str()) =>
                        {
                            "deployed (in force)".to_string()
                        }
                        CommitState::Deployed => "deployed".into(),
                        CommitState::Rejected => {
                            let n = commit.diagnostics.as_array().map_or(0, Vec::len);
                            format!(
                                "rejected ({n} {})",
                                if n == 1 { "problem" } else { "problems" }
                            )
                        }
                    };
                    vec![
                        short(&commit.id).to_string(),
                        state,
                        commit.n_changed.to_string(),
                        format_time(commit.recorded_at),
                        commit.author,
                        commit.summary,
                    ]
                })
                .collect();
            table(
                &["COMMIT", "STATE", "HOSTS", "TRIED", "AUTHOR", "SUMMARY"],
                &rows,
                "no commits tried yet: is `muster serve` running?",
            );
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        CommitsCommand::Show { id, data } => {
            let store = open_store(&data).await?;
            let matches = store.commits_by_prefix(&id).await?;
            store.close().await;
            let commit = match matches.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(Error::Usage(format!(
                        "no commit `{id}` was tried (see `muster commits list`)"
                    )));
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "`{id}` matches several commits: give more of the hash"
                    )));
                }
            };
            println!("commit:   {}", commit.id);
            println!("author:   {}", commit.author);
            println!("summary:  {}", commit.summary);
            println!("state:    {}", commit.state.as_str());
            println!("tried:    {}", format_time(commit.recorded_at));
            if let Some(at) = commit.deployed_at {
                println!(
                    "deployed: {} ({} hosts got a new bundle)",
                    format_time(at),
                    commit.n_changed
                );
            }
            let diagnostics: Vec<muster_schemas::Diagnostic> =
                serde_json::from_value(commit.diagnostics.clone()).unwrap_or_default();
            if !diagnostics.is_empty() {
                println!();
                for diagnostic in &diagnostics {
                    println!("{diagnostic}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
