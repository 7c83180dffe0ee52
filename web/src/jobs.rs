//! The jobs pages: the list of actions (scheduled and ad-hoc runs) with
//! their progress, the form that runs a script of the deployed commit on
//! a group or hosts, and one action in detail with each host's result.
//!
//! The run form works without JavaScript in two steps: a GET form picks
//! the script (`/jobs?script=NAME`), and the page then shows that
//! script's own fields, built from its parameter schema, in a POST form.

use maud::{Markup, html};

use crate::layout::{Chrome, page};
use crate::parts::{self, Tone};

/// An action's jobs counted by where they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub succeeded: usize,
    /// Failed, timed out, refused or expired.
    pub failed: usize,
    /// Handed to the agent or running.
    pub running: usize,
    /// Waiting for their turn or for the agent to fetch them.
    pub queued: usize,
    pub cancelled: usize,
}

impl Counts {
    fn render(&self) -> Markup {
        html! {
            span.counts {
                (self.succeeded) " succeeded · " (self.failed) " failed · "
                (self.running) " running · " (self.queued) " queued"
                @if self.cancelled > 0 { " · " (self.cancelled) " cancelled" }
            }
        }
    }
}

/// An action as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRow {
    pub id: String,
    pub summary: String,
    pub requested_by: String,
    /// `schedule`, `ad_hoc` or `remediation`.
    pub source: String,
    /// `running`, `completed`, `stopped` or `cancelled`.
    pub state: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub counts: Counts,
}

/// How a parameter is entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    /// A whole number.
    Number,
    /// `true` when ticked.
    Checkbox,
    /// One of these values.
    Choice(Vec<String>),
    /// Text never shown back: not prefilled, not echoed after an error.
    Secret,
}

/// One input of the run form: a script parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub kind: FieldKind,
    /// The run is refused without a value (there is no default).
    pub required: bool,
    /// What the parameter means.
    pub description: Option<String>,
    /// The value shown: the default, or what was sent; `true` ticks a
    /// checkbox. Always empty for a secret.
    pub value: String,
    /// A secret with a default: left empty, the default is used.
    pub has_default: bool,
    /// What is wrong with what was sent.
    pub error: Option<String>,
}

/// The form field name of parameter `name`.
pub fn field_name(name: &str) -> String {
    format!("param.{name}")
}

/// The script picked in the run form, with its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenScript {
    pub name: String,
    pub description: Option<String>,
    pub fields: Vec<Field>,
    /// The group chosen (empty: none).
    pub group: String,
    /// Host names, separated by commas or spaces.
    pub hosts: String,
    /// What is wrong with the targets (or the run as a whole).
    pub targets_error: Option<String>,
}

/// A script the user may run somewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptChoice {
    pub name: String,
    pub description: Option<String>,
}

/// The run form, for users who may run some script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunForm {
    pub scripts: Vec<ScriptChoice>,
    /// The groups of the deployed commit.
    pub groups: Vec<String>,
    pub chosen: Option<ChosenScript>,
    /// A `?script=` that is not a script the user may run.
    pub unknown_script: Option<String>,
}

/// The jobs page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jobs {
    /// This page's URL, which its live region re-fetches.
    pub url: String,
    pub actions: Vec<ActionRow>,
    /// `None` when the user may run no script: no form at all.
    pub run: Option<RunForm>,
}

fn action_badge(state: &str, counts: &Counts) -> Markup {
    let tone = match state {
        "running" => Tone::Busy,
        "completed" if counts.failed > 0 => Tone::Warn,
        "completed" => Tone::Good,
        "stopped" => Tone::Bad,
        _ => Tone::Neutral,
    };
    parts::badge(tone, state)
}

fn job_badge(state: &str) -> Markup {
    let tone = match state {
        "succeeded" => Tone::Good,
        "failed" | "timed_out" | "refused" => Tone::Bad,
        "delivered" | "running" => Tone::Busy,
        "expired" => Tone::Warn,
        _ => Tone::Neutral,
    };
    parts::badge(tone, &state.replace('_', " "))
}

fn source_text(source: &str) -> &str {
    match source {
        "schedule" => "scheduled",
        "ad_hoc" => "ad hoc",
        other => other,
    }
}

/// The list of actions (a live region) and the run form below it.
pub fn render(chrome: &Chrome, jobs: &Jobs) -> Markup {
    let list = if jobs.actions.is_empty() {
        parts::empty(
            "No jobs yet",
            html! {
                @if jobs.run.is_some() { "Run a script below, or schedule one in the fleet repo." }
                @else { "Schedule a script in the fleet repo, or ask for " code { "scripts:run" } " to run one here." }
            },
        )
    } else {
        html! {
            table.jobs {
                thead {
                    tr {
                        th { "Action" }
                        th { "State" }
                        th { "Jobs" }
                        th { "By" }
                        th { "Started" }
                    }
                }
                tbody {
                    @for action in &jobs.actions {
                        tr {
                            td {
                                a href=(format!("/jobs/{}", action.id)) { (action.summary) }
                                div.hint { (source_text(&action.source)) }
                            }
                            td { (action_badge(&action.state, &action.counts)) }
                            td { (action.counts.render()) }
                            td { (action.requested_by) }
                            td {
                                (parts::time(chrome.now, action.created_at))
                                @if let Some(finished) = action.finished_at {
                                    div.hint { "ended " (parts::time(chrome.now, finished)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let content = html! {
        (parts::live("jobs-list", &["jobs"], &jobs.url, list))
        @if let Some(run) = &jobs.run {
            (run_form(chrome, run))
        }
    };
    page(chrome, "Jobs", content)
}

fn run_form(chrome: &Chrome, run: &RunForm) -> Markup {
    let chosen_name = run.chosen.as_ref().map(|chosen| chosen.name.as_str());
    html! {
        section.panel.run id="run" {
            h2 { "Run a script" }
            form.filters method="get" action="/jobs#run" {
                label {
                    "Script"
                    select name="script" required {
                        option value="" { "— pick a script —" }
                        @for script in &run.scripts {
                            option value=(script.name) selected[chosen_name == Some(script.name.as_str())] {
                                (script.name)
                            }
                        }
                    }
                }
                button.secondary type="submit" { "Choose" }
            }
            @if let Some(name) = &run.unknown_script {
                p.notice.error role="alert" {
                    "There is no script `" (name) "` you may run in the deployed commit: pick one from the list."
                }
            }
            @if let Some(chosen) = &run.chosen {
                (chosen_form(chrome, run, chosen))
            }
        }
    }
}

fn chosen_form(chrome: &Chrome, run: &RunForm, chosen: &ChosenScript) -> Markup {
    html! {
        form.run method="post" action="/jobs/run" {
            (parts::csrf_field(&chrome.csrf))
            input type="hidden" name="script" value=(chosen.name);
            h3 { code { (chosen.name) } }
            @if let Some(description) = &chosen.description {
                p.hint { (description) }
            }
            fieldset {
                legend { "Targets" }
                @if let Some(error) = &chosen.targets_error {
                    p.notice.error role="alert" { (error) }
                }
                label {
                    "Group"
                    select name="group" {
                        option value="" { "— no group —" }
                        @for group in &run.groups {
                            option value=(group) selected[*group == chosen.group] { (group) }
                        }
                    }
                }
                label {
                    "Hosts"
                    input type="text" name="hosts" value=(chosen.hosts) placeholder="web-01, web-02";
                    span.hint { "Host names, separated by commas; with a group, both are run on." }
                }
            }
            @if !chosen.fields.is_empty() {
                fieldset {
                    legend { "Parameters" }
                    @for field in &chosen.fields {
                        (field_input(field))
                    }
                }
            }
            div.actions {
                button type="submit" { "Run " (chosen.name) }
            }
        }
    }
}

fn field_input(field: &Field) -> Markup {
    let name = field_name(&field.name);
    let id = format!("field-{}", field.name);
    let invalid = field.error.is_some().then_some("true");
    let control = match &field.kind {
        FieldKind::Text => html! {
            input id=(id) type="text" name=(name) value=(field.value) required[field.required]
                aria-invalid=[invalid];
        },
        FieldKind::Number => html! {
            input id=(id) type="number" step="1" name=(name) value=(field.value)
                required[field.required] aria-invalid=[invalid];
        },
        FieldKind::Checkbox => html! {
            input id=(id) type="checkbox" name=(name) value="true" checked[field.value == "true"]
                aria-invalid=[invalid];
        },
        FieldKind::Choice(values) => html! {
            select id=(id) name=(name) required[field.required] aria-invalid=[invalid] {
                @if !field.required {
                    option value="" selected[field.value.is_empty()] { "— default —" }
                }
                @for value in values {
                    option value=(value) selected[*value == field.value] { (value) }
                }
            }
        },
        FieldKind::Secret => html! {
            input id=(id) type="password" name=(name) autocomplete="off"
                required[field.required] aria-invalid=[invalid];
        },
    };
    html! {
        div.field {
            label for=(id) {
                code { (field.name) }
                @if field.required { " (required)" }
            }
            (control)
            @if let Some(description) = &field.description {
                span.hint { (description) }
            }
            @if field.kind == FieldKind::Secret && field.has_default {
                span.hint { "Secret: leave empty to use the default from the fleet repo." }
            } @else if field.kind == FieldKind::Secret {
                span.hint { "Secret: never shown again, and redacted in the audit log." }
            }
            @if let Some(error) = &field.error {
                p.field-error role="alert" { (error) }
            }
        }
    }
}

/// One host's job of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub id: String,
    pub host: String,
    pub host_id: String,
    pub state: String,
    pub exit_code: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Bounded by the agent and the store.
    pub stdout: String,
    pub stderr: String,
    /// Why it was refused or failed without running.
    pub message: Option<String>,
}

/// One action in detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionDetail {
    /// This page's URL, which its live region re-fetches.
    pub url: String,
    pub id: String,
    pub summary: String,
    pub kind: String,
    pub state: String,
    pub source: String,
    pub requested_by: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The parameters, secret ones already redacted.
    pub parameters: Vec<(String, String)>,
    pub audit_commit: Option<String>,
    pub counts: Counts,
    /// Whether to offer the cancel button (`jobs:cancel`, still running).
    pub may_cancel: bool,
    /// The jobs of this page, in rollout order.
    pub jobs: Vec<JobView>,
    /// Which page of the jobs this is (from 1), how many a page holds,
    /// and how many there are in all.
    pub page: usize,
    pub per_page: usize,
    pub n_jobs: usize,
}

/// The action page: facts, the cancel button, and each host's result, all
/// in one live region so that results appear as hosts report.
pub fn detail(chrome: &Chrome, action: &ActionDetail) -> Markup {
    // An action on thousands of hosts is shown a page of jobs at a time.
    let pages = (action.n_jobs > action.per_page).then(|| {
        parts::pagination(action.page, action.per_page, action.n_jobs, |page| {
            format!("/jobs/{}?page={page}", action.id)
        })
    });
    let content = html! {
        section.panel {
            dl.facts {
                dt { "State" } dd { (action_badge(&action.state, &action.counts)) }
                dt { "Jobs" } dd { (action.counts.render()) }
                dt { "Kind" } dd { (action.kind) " · " (source_text(&action.source)) }
                dt { "Requested by" } dd { (action.requested_by) }
                dt { "Created" } dd { (parts::time(chrome.now, action.created_at)) }
                @if let Some(finished) = action.finished_at {
                    dt { "Ended" } dd { (parts::time(chrome.now, finished)) }
                }
                @for (name, value) in &action.parameters {
                    dt { "Parameter " code { (name) } } dd { code { (value) } }
                }
                @if let Some(commit) = &action.audit_commit {
                    dt { "Audit commit" } dd.mono { (parts::short_commit(commit)) }
                }
            }
            @if action.may_cancel {
                form.inline method="post" action=(format!("/jobs/{}/cancel", action.id)) {
                    (parts::csrf_field(&chrome.csrf))
                    button.danger type="submit" { "Cancel the jobs not started yet" }
                }
            }
        }
        @if action.n_jobs == 0 {
            (parts::empty("This action has no jobs", html! { "Its targets matched no approved host." }))
        }
        @if let Some(pages) = &pages {
            (pages)
        }
        @for job in &action.jobs {
            section.panel.job id=(format!("job-{}", job.id)) {
                h3 {
                    a href=(format!("/hosts/{}", job.host_id)) { (job.host) }
                    " " (job_badge(&job.state))
                    @if let Some(code) = job.exit_code {
                        " " span.exit-code { "exit code " (code) }
                    }
                }
                p.hint {
                    "started " (parts::maybe_time(chrome.now, job.started_at, "not yet"))
                    " · finished " (parts::maybe_time(chrome.now, job.finished_at, "not yet"))
                }
                @if let Some(message) = &job.message {
                    p.notice.error { (message) }
                }
                @if !job.stdout.is_empty() {
                    h4 { "stdout" }
                    pre.output { (job.stdout) }
                }
                @if !job.stderr.is_empty() {
                    h4 { "stderr" }
                    pre.output.stderr { (job.stderr) }
                }
                @if job.stdout.is_empty() && job.stderr.is_empty() && job.message.is_none() {
                    p.muted { "No output yet." }
                }
            }
        }
        @if let Some(pages) = &pages {
            (pages)
        }
    };
    page(
        chrome,
        &action.summary,
        html! {
            p { a href="/jobs" { "← All jobs" } }
            (parts::live("action-detail", &["jobs"], &action.url, content))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Section;

    fn chrome() -> Chrome {
        crate::layout::test_chrome(Section::Jobs, "csrf-token")
    }

    fn field(name: &str, kind: FieldKind) -> Field {
        Field {
            name: name.into(),
            kind,
            required: false,
            description: None,
            value: String::new(),
            has_default: false,
            error: None,
        }
    }

    #[test]
    fn without_run_permission_there_is_no_form() {
        let html = render(
            &chrome(),
            &Jobs {
                url: "/jobs".into(),
                actions: Vec::new(),
                run: None,
            },
        )
        .into_string();
        assert!(!html.contains("/jobs/run"), "{html}");
        assert!(html.contains("No jobs yet"), "{html}");
    }

    #[test]
    fn fields_follow_the_parameter_types() {
        let mut service = field("service", FieldKind::Text);
        service.required = true;
        service.description = Some("The unit to restart".into());
        service.error = Some("missing parameter `service`".into());
        let mut token = field("token", FieldKind::Secret);
        token.value = "must-not-show".into();
        let mut level = field(
            "level",
            FieldKind::Choice(vec!["low".into(), "high".into()]),
        );
        level.value = "high".into();
        let mut dry = field("dry_run", FieldKind::Checkbox);
        dry.value = "true".into();
        let run = RunForm {
            scripts: vec![ScriptChoice {
                name: "restart-service".into(),
                description: None,
            }],
            groups: vec!["web".into(), "db".into()],
            chosen: Some(ChosenScript {
                name: "restart-service".into(),
                description: Some("Restart one service".into()),
                fields: vec![service, field("days", FieldKind::Number), token, level, dry],
                group: "web".into(),
                hosts: String::new(),
                targets_error: None,
            }),
            unknown_script: None,
        };
        let html = render(
            &chrome(),
            &Jobs {
                url: "/jobs?script=restart-service".into(),
                actions: Vec::new(),
                run: Some(run),
            },
        )
        .into_string();
        assert!(html.contains(r#"action="/jobs/run""#), "{html}");
        assert!(
            html.contains(r#"name="_csrf" value="csrf-token""#),
            "{html}"
        );
        assert!(
            html.contains(r#"type="text" name="param.service" value="" required"#),
            "{html}"
        );
        assert!(
            html.contains(r#"type="number" step="1" name="param.days""#),
            "{html}"
        );
        assert!(
            html.contains(r#"type="password" name="param.token""#),
            "{html}"
        );
        assert!(!html.contains("must-not-show"), "{html}");
        assert!(html.contains(r#"<option value="high" selected>"#), "{html}");
        assert!(html.contains(r#"value="true" checked"#), "{html}");
        assert!(html.contains(r#"<option value="web" selected>"#), "{html}");
        assert!(html.contains("missing parameter `service`"), "{html}");
        assert!(html.contains("The unit to restart"), "{html}");
    }

    #[test]
    fn an_action_shows_each_hosts_output_and_cancel_only_when_allowed() {
        let mut action = ActionDetail {
            url: "/jobs/a1".into(),
            id: "a1".into(),
            summary: "run restart-service on group web".into(),
            kind: "script".into(),
            state: "running".into(),
            source: "ad_hoc".into(),
            requested_by: "alice".into(),
            created_at: 900,
            finished_at: None,
            parameters: vec![("service".into(), "nginx".into())],
            audit_commit: None,
            counts: Counts {
                succeeded: 1,
                ..Counts::default()
            },
            may_cancel: false,
            jobs: vec![JobView {
                id: "j1".into(),
                host: "web-01".into(),
                host_id: "h1".into(),
                state: "succeeded".into(),
                exit_code: Some(0),
                started_at: Some(950),
                finished_at: Some(960),
                stdout: "restarted <nginx>\n".into(),
                stderr: String::new(),
                message: None,
            }],
            page: 1,
            per_page: 100,
            n_jobs: 1,
        };
        let html = detail(&chrome(), &action).into_string();
        assert!(!html.contains("pagination"), "{html}");
        assert!(html.contains(r#"href="/hosts/h1""#), "{html}");
        assert!(html.contains("exit code 0"), "{html}");
        assert!(html.contains("restarted &lt;nginx&gt;"), "{html}");
        assert!(html.contains(r#"hx-trigger="sse:jobs""#), "{html}");
        assert!(!html.contains("/cancel"), "{html}");
        action.may_cancel = true;
        let html = detail(&chrome(), &action).into_string();
        assert!(html.contains(r#"action="/jobs/a1/cancel""#), "{html}");
        action.n_jobs = 250;
        let html = detail(&chrome(), &action).into_string();
        assert!(html.contains(r#"href="/jobs/a1?page=2""#), "{html}");
        assert!(html.contains("1–100 of 250"), "{html}");
    }
}
