//! `muster run`, `muster reboot`, `muster service` and `muster jobs`: the
//! user API from the command line.
//!
//! They act as the user of the session `muster login` saved, or with an
//! API token from `MUSTER_TOKEN` (and the server from `--server` or
//! `MUSTER_SERVER`). What a command may do is what the RBAC of the
//! deployed commit grants that user or token: a refusal prints the
//! server's message.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::admin::{format_time, table};
use super::users::{error_message, http_client, load_session};
use crate::Error;
use crate::cli::{ApiArgs, JobsCommand, RunArgs, ServiceArgs, TargetArgs, WaitArgs};
use crate::server::user_api::{
    ActionBody, ActionCreated, ActionDetail, JobDetail, JobSummary, TargetsBody,
};

/// The environment variable holding an API token for these commands.
pub const TOKEN_ENV: &str = "MUSTER_TOKEN";

/// The inventory of the hosts `token` (or, without one, `MUSTER_TOKEN` or
/// the saved session) may read, from the controller at `server`: for
/// `muster plan --controller`.
pub async fn fetch_inventory(
    server: &str,
    token: Option<&str>,
) -> Result<crate::plan::Inventory, Error> {
    let api = match token.map(str::trim).filter(|token| !token.is_empty()) {
        Some(token) => Api {
            server: server.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: http_client()?,
        },
        None => Api::connect(&ApiArgs {
            server: Some(server.to_string()),
        })?,
    };
    let inventory: crate::plan::Inventory = api.get("/v1/hosts/export").await?;
    if inventory.version != crate::plan::FORMAT_VERSION {
        return Err(Error::Usage(format!(
            "{server} sent an inventory of version {}: use a muster of the same version as the controller",
            inventory.version
        )));
    }
    Ok(inventory)
}

/// How often `--wait` asks how an action is doing.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// A controller and the bearer token to call it with.
struct Api {
    server: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// The API token in `MUSTER_TOKEN` if set, else the saved session.
    fn connect(args: &ApiArgs) -> Result<Api, Error> {
        let not_logged_in = || {
            Error::Usage(
                "not logged in: run `muster login --server URL --user NAME`, or set MUSTER_TOKEN to an API token and MUSTER_SERVER to the controller's URL".into(),
            )
        };
        let server_flag = args
            .server
            .as_deref()
            .map(|server| server.trim_end_matches('/').to_string());
        let token = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|token| !token.trim().is_empty());
        let (server, token) = match token {
            Some(token) => {
                let server = match server_flag {
                    Some(server) => server,
                    None => load_session()?
                        .map(|session| session.server)
                        .ok_or_else(|| {
                            Error::Usage(format!(
                                "{TOKEN_ENV} is set but no server is: pass --server URL or set MUSTER_SERVER"
                            ))
                        })?,
                };
                (server, token.trim().to_string())
            }
            None => {
                let session = load_session()?.ok_or_else(not_logged_in)?;
                if let Some(server) = &server_flag
                    && server != &session.server
                {
                    return Err(Error::Usage(format!(
                        "the saved session is for {}, not {server}: run `muster login --server {server} --user NAME`",
                        session.server
                    )));
                }
                if session.expires_at <= crate::server::now() {
                    return Err(Error::Usage(format!(
                        "the session for {} has expired: run `muster login --server {} --user {}`",
                        session.server, session.server, session.user
                    )));
                }
                (session.server, session.token)
            }
        };
        Ok(Api {
            server,
            token,
            http: http_client()?,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, Error> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|err| Error::Usage(format!("cannot reach {}: {err}", self.server)))?;
        if !response.status().is_success() {
            let unauthorized = response.status() == reqwest::StatusCode::UNAUTHORIZED;
            let message = error_message(response).await;
            return Err(Error::Usage(if unauthorized {
                format!(
                    "{message} (run `muster login --server {} --user NAME`)",
                    self.server
                )
            } else {
                message
            }));
        }
        response.json().await.map_err(|_| {
            Error::Usage(format!(
                "{} did not answer like a muster controller",
                self.server
            ))
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(reqwest::Method::GET, path, None::<&()>).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, Error> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

fn targets(args: TargetArgs) -> Result<TargetsBody, Error> {
    if args.groups.is_empty() && args.hosts.is_empty() {
        return Err(Error::Usage(
            "no targets: give --group GROUP or --host HOST (repeatable)".into(),
        ));
    }
    Ok(TargetsBody {
        groups: args.groups,
        hosts: args.hosts,
    })
}

/// `--param key=value`, repeatable; values are sent as text, verbatim.
fn parameters(pairs: &[String]) -> Result<BTreeMap<String, Value>, Error> {
    let mut parameters = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Error::Usage(format!(
                "`--param {pair}` is not KEY=VALUE: write it as `--param name=value`"
            )));
        };
        if parameters
            .insert(key.to_string(), Value::String(value.to_string()))
            .is_some()
        {
            return Err(Error::Usage(format!("parameter `{key}` is given twice")));
        }
    }
    Ok(parameters)
}

/// `muster run SCRIPT …`.
pub async fn run(args: RunArgs) -> Result<ExitCode, Error> {
    let api = Api::connect(&args.api)?;
    let body = ActionBody {
        script: Some(args.script),
        params: parameters(&args.params)?,
        targets: targets(args.targets)?,
        ..ActionBody::default()
    };
    act(&api, &body, args.wait).await
}

/// `muster reboot …`.
pub async fn reboot(
    targets_args: TargetArgs,
    wait: WaitArgs,
    api: ApiArgs,
) -> Result<ExitCode, Error> {
    let api = Api::connect(&api)?;
    let body = ActionBody {
        reboot: true,
        targets: targets(targets_args)?,
        ..ActionBody::default()
    };
    act(&api, &body, wait).await
}

/// `muster service OPERATION UNIT …`.
pub async fn service(args: ServiceArgs) -> Result<ExitCode, Error> {
    let api = Api::connect(&args.api)?;
    let body = ActionBody {
        service: Some(muster_schemas::job::ServiceJob {
            name: args.unit,
            operation: args.operation.into(),
        }),
        targets: targets(args.targets)?,
        ..ActionBody::default()
    };
    act(&api, &body, args.wait).await
}

async fn act(api: &Api, body: &ActionBody, wait: WaitArgs) -> Result<ExitCode, Error> {
    let created: ActionCreated = api.post("/v1/actions", body).await?;
    println!(
        "action {} (request {}, audit commit {})",
        created.action_id,
        created.request_id,
        short(&created.audit_commit)
    );
    let rows: Vec<Vec<String>> = created
        .jobs
        .iter()
        .map(|job| vec![job.host.clone(), job.job_id.clone()])
        .collect();
    table(&["HOST", "JOB"], &rows, "no jobs");
    if !wait.wait {
        println!(
            "follow it with `muster jobs list --action {}`, or `muster jobs show JOB`",
            created.action_id
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("waiting for the action to finish…");
    let action = loop {
        let action: ActionDetail = api
            .get(&format!("/v1/actions/{}", created.action_id))
            .await?;
        let ended = action.state != "running"
            && action
                .jobs
                .iter()
                .all(|job| !matches!(job.state.as_str(), "queued" | "delivered" | "running"));
        if ended {
            break action;
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    println!("action {} {}", action.id, action.state);
    let mut all_succeeded = true;
    for job in &action.jobs {
        let detail: JobDetail = api.get(&format!("/v1/jobs/{}", job.id)).await?;
        all_succeeded &= detail.job.state == "succeeded";
        print_result(&detail);
    }
    Ok(if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One host's result, as `--wait` prints it.
fn print_result(detail: &JobDetail) {
    let job = &detail.job;
    let exit = job
        .exit_code
        .map_or_else(String::new, |code| format!(" (exit {code})"));
    println!("{}: {}{exit}, job {}", job.host, job.state, job.id);
    if let Some(message) = &detail.message {
        println!("  {message}");
    }
    for line in detail.stdout.lines() {
        println!("  | {line}");
    }
    for line in detail.stderr.lines() {
        println!("  ! {line}");
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn time(unix: Option<i64>) -> String {
    unix.map_or_else(|| "-".into(), format_time)
}

/// `muster jobs …`.
pub async fn jobs(command: JobsCommand) -> Result<ExitCode, Error> {
    match command {
        JobsCommand::List {
            action,
            host,
            state,
            limit,
            api,
        } => {
            let api = Api::connect(&api)?;
            let mut query = vec![format!("limit={limit}")];
            for (key, value) in [("action", action), ("host", host), ("state", state)] {
                if let Some(value) = value {
                    query.push(format!("{key}={}", urlencode(&value)));
                }
            }
            let jobs: Vec<JobSummary> = api.get(&format!("/v1/jobs?{}", query.join("&"))).await?;
            let rows: Vec<Vec<String>> = jobs
                .into_iter()
                .map(|job| {
                    vec![
                        job.id,
                        job.host,
                        job.kind,
                        job.state,
                        job.exit_code
                            .map_or_else(|| "-".into(), |code| code.to_string()),
                        job.requested_by,
                        format_time(job.created_at),
                        job.action_id,
                    ]
                })
                .collect();
            table(
                &[
                    "JOB", "HOST", "KIND", "STATE", "EXIT", "BY", "CREATED", "ACTION",
                ],
                &rows,
                "no jobs (in your scope)",
            );
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { id, api } => {
            let api = Api::connect(&api)?;
            let detail: JobDetail = api.get(&format!("/v1/jobs/{}", urlencode(&id))).await?;
            let job = &detail.job;
            println!("job        {}", job.id);
            println!("action     {} ({})", job.action_id, detail.summary);
            println!("host       {} ({})", job.host, job.host_id);
            println!("kind       {}", job.kind);
            if detail.parameters.as_object().is_some_and(|p| !p.is_empty()) {
                println!("parameters {}", detail.parameters);
            }
            println!("state      {}", job.state);
            println!(
                "exit code  {}",
                job.exit_code
                    .map_or_else(|| "-".into(), |code| code.to_string())
            );
            println!(
                "requested  {} by {}",
                format_time(job.created_at),
                job.requested_by
            );
            println!(
                "delivered  {} (attempts: {})",
                time(detail.delivered_at),
                detail.attempts
            );
            println!("started    {}", time(job.started_at));
            println!("finished   {}", time(job.finished_at));
            if let (Some(start), Some(end)) = (job.started_at, job.finished_at) {
                println!("took       {}s", (end - start).max(0));
            }
            if let Some(message) = &detail.message {
                println!("message    {message}");
            }
            println!("stdout:");
            for line in detail.stdout.lines() {
                println!("  {line}");
            }
            println!("stderr:");
            for line in detail.stderr.lines() {
                println!("  {line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Cancel { id, api } => {
            let api = Api::connect(&api)?;
            let job: JobSummary = api
                .post(
                    &format!("/v1/jobs/{}/cancel", urlencode(&id)),
                    &serde_json::json!({}),
                )
                .await?;
            println!("job {} on {} is {}", job.id, job.host, job.state);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Percent-encodes a query or path value.
fn urlencode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
