//! `muster plan`: print what a change to the fleet repo does, as text for
//! a terminal, markdown for a pull-request comment, or JSON for tools.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::{PlanArgs, PlanFormat};
use crate::plan::{self, ChangeKind, Inventory, ItemChange, Plan, PlanError};
use crate::source::GitSource;
use crate::{EXIT_ERROR, Error};

/// Markdown longer than this is cut: GitHub refuses comments over 65,536
/// characters, and a reviewer does not read more.
const MARKDOWN_LIMIT: usize = 60_000;

/// Host names listed per group of hosts in markdown before "N more hosts".
const MARKDOWN_HOSTS: usize = 20;

/// Lines of one diff shown in markdown, so that one large file does not
/// fill the comment.
const MARKDOWN_DIFF_LINES: usize = 150;

/// Host names listed per group of hosts and per policy in text.
const TEXT_HOSTS: usize = 50;

pub fn run(args: &PlanArgs) -> Result<ExitCode, Error> {
    let inventory = match (&args.inventory, &args.controller) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|err| {
                Error::io(
                    format!("cannot read the inventory `{}`", path.display()),
                    err,
                )
            })?;
            Inventory::from_json(&text).map_err(Error::Usage)?
        }
        (None, Some(server)) => crate::runtime()?.block_on(
            crate::commands::actions::fetch_inventory(server, args.token.as_deref()),
        )?,
        (None, None) => {
            return Err(Error::Usage(
                "give the hosts: --inventory FILE (from `muster hosts export`) or --controller URL"
                    .into(),
            ));
        }
    };
    let now = match &args.now {
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|err| Error::Usage(format!("`--now` is not an RFC 3339 time: {err}")))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let source = GitSource::open_local(&args.repo, args.path.as_deref())?;
    let (output, code) = match plan::build(&source, &args.base, &args.head, &inventory, now) {
        Ok(plan) => {
            let output = match args.format {
                PlanFormat::Text => render_text(&plan),
                PlanFormat::Markdown => render_markdown(&plan),
                PlanFormat::Json => render_json(&plan),
            };
            let code = match (args.exit_code, plan.has_changes()) {
                (true, true) => ExitCode::FAILURE,
                _ => ExitCode::SUCCESS,
            };
            (output, code)
        }
        Err(PlanError::Source(err)) => return Err(Error::Source(err)),
        Err(err) => (render_error(&err, args.format), ExitCode::from(EXIT_ERROR)),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|err| Error::io("cannot write the plan", err))?;
    Ok(code)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn hosts_word(n: usize) -> &'static str {
    if n == 1 { "host" } else { "hosts" }
}

fn name_list(names: &[String], limit: usize) -> String {
    let mut text = names
        .iter()
        .take(limit)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > limit {
        let more = names.len() - limit;
        let _ = write!(text, " and {more} more {}", hosts_word(more));
    }
    text
}

fn field_text(value: Option<&String>) -> &str {
    value.map_or("(unset)", String::as_str)
}

/// The plan for a terminal.
pub fn render_text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan: {} ({}) -> {} ({})",
        short(&plan.base.id),
        plan.base.summary,
        short(&plan.head.id),
        plan.head.summary
    );
    for note in &plan.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out.push('\n');
    if !plan.has_changes() {
        let _ = writeln!(
            out,
            "no changes: {} {} compiled, none affected",
            plan.summary.hosts_total,
            hosts_word(plan.summary.hosts_total)
        );
        return out;
    }
    let summary = &plan.summary;
    let _ = writeln!(
        out,
        "blast radius: {} of {} {} affected",
        summary.hosts_affected,
        summary.hosts_total,
        hosts_word(summary.hosts_total)
    );
    for group in &summary.groups {
        let _ = writeln!(
            out,
            "  group {}: {} of {} affected",
            group.group, group.hosts_affected, group.hosts_total
        );
    }
    let _ = writeln!(
        out,
        "  resources: {} added, {} changed, {} removed",
        summary.resources_added, summary.resources_changed, summary.resources_removed
    );
    for targeting in &summary.targeting {
        if !targeting.newly_targeted.is_empty() {
            let _ = writeln!(
                out,
                "  policy {} newly applies to {}",
                targeting.policy,
                name_list(&targeting.newly_targeted, TEXT_HOSTS)
            );
        }
        if !targeting.no_longer_targeted.is_empty() {
            let _ = writeln!(
                out,
                "  policy {} no longer applies to {}",
                targeting.policy,
                name_list(&targeting.no_longer_targeted, TEXT_HOSTS)
            );
        }
    }
    for group in &plan.host_changes {
        let _ = writeln!(
            out,
            "\non {} {}: {}",
            group.hosts.len(),
            hosts_word(group.hosts.len()),
            name_list(&group.hosts, TEXT_HOSTS)
        );
        if let Some(host) = &group.context_from {
            let _ = writeln!(
                out,
                "  (the same changed lines on each; diff context from {host})"
            );
        }
        for change in &group.changes {
            text_change(&mut out, change);
        }
    }
    if !plan.fleet_changes.is_empty() {
        out.push_str("\nfleet:\n");
        for change in &plan.fleet_changes {
            text_change(&mut out, change);
        }
    }
    if !plan.rbac.is_empty() {
        out.push_str("\naccess (RBAC):\n");
        for change in &plan.rbac {
            let _ = writeln!(out, "  {}", change.text);
        }
    }
    out
}

fn text_change(out: &mut String, change: &ItemChange) {
    let _ = writeln!(out, "  {} {}", change.kind.sign(), change.id);
    for line in field_lines(change) {
        let _ = writeln!(out, "      {line}");
    }
    if let Some(runs) = &change.next_runs {
        let _ = writeln!(out, "      next runs before: {}", runs_text(&runs.before));
        let _ = writeln!(out, "      next runs after:  {}", runs_text(&runs.after));
    }
    if let Some(diff) = &change.diff {
        for line in diff.lines() {
            let _ = writeln!(out, "      {line}");
        }
    }
}

/// The fields of a change as people read them: `before -> after` for a
/// change; the set fields of an added item (empty and false ones left
/// out); nothing for a removed one, whose id says it all.
fn field_lines(change: &ItemChange) -> Vec<String> {
    match change.kind {
        ChangeKind::Changed => change
            .fields
            .iter()
            .map(|field| {
                format!(
                    "{}: {} -> {}",
                    field.field,
                    field_text(field.before.as_ref()),
                    field_text(field.after.as_ref())
                )
            })
            .collect(),
        ChangeKind::Added => change
            .fields
            .iter()
            .filter_map(|field| {
                let value = field.after.as_deref()?;
                (!matches!(value, "[]" | "{}" | "false" | "\"\""))
                    .then(|| format!("{}: {value}", field.field))
            })
            .collect(),
        ChangeKind::Removed => Vec::new(),
    }
}

fn runs_text(runs: &[String]) -> String {
    if runs.is_empty() {
        "(none)".to_string()
    } else {
        runs.join(", ")
    }
}

/// The plan for a pull-request comment: a summary table, then one
/// collapsible section per group of hosts, cut at [`MARKDOWN_LIMIT`].
pub fn render_markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### muster plan: `{}` → `{}`\n",
        short(&plan.base.id),
        short(&plan.head.id)
    );
    for note in &plan.notes {
        let _ = writeln!(out, "> {}\n", note.replace('\n', " "));
    }
    if !plan.has_changes() {
        let _ = writeln!(
            out,
            "**No changes**: {} {} compiled, none affected.",
            plan.summary.hosts_total,
            hosts_word(plan.summary.hosts_total)
        );
        return out;
    }
    let summary = &plan.summary;
    let _ = writeln!(
        out,
        "**{} of {} {} affected** · resources: {} added, {} changed, {} removed\n",
        summary.hosts_affected,
        summary.hosts_total,
        hosts_word(summary.hosts_total),
        summary.resources_added,
        summary.resources_changed,
        summary.resources_removed
    );
    if !summary.groups.is_empty() {
        out.push_str("| Group | Affected | Hosts |\n|---|---:|---:|\n");
        for group in &summary.groups {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                group.group, group.hosts_affected, group.hosts_total
            );
        }
        out.push('\n');
    }
    for targeting in &summary.targeting {
        if !targeting.newly_targeted.is_empty() {
            let _ = writeln!(
                out,
                "- policy `{}` newly applies to {}",
                targeting.policy,
                name_list(&targeting.newly_targeted, MARKDOWN_HOSTS)
            );
        }
        if !targeting.no_longer_targeted.is_empty() {
            let _ = writeln!(
                out,
                "- policy `{}` no longer applies to {}",
                targeting.policy,
                name_list(&targeting.no_longer_targeted, MARKDOWN_HOSTS)
            );
        }
    }
    if !summary.targeting.is_empty() {
        out.push('\n');
    }
    // The access and fleet sections come before the per-host ones so that
    // the size cap never hides what a security reviewer must see.
    if !plan.rbac.is_empty() {
        out.push_str("#### Access (RBAC)\n\n");
        for change in &plan.rbac {
            // The text's `+ `/`- ` sign would start a nested list.
            let text = change.text.get(2..).unwrap_or(&change.text);
            let _ = writeln!(out, "- {text}");
        }
        out.push('\n');
    }
    if !plan.fleet_changes.is_empty() {
        out.push_str("#### Fleet\n\n");
        for change in &plan.fleet_changes {
            markdown_change(&mut out, change);
        }
        out.push('\n');
    }
    if !plan.host_changes.is_empty() {
        out.push_str("#### Changes per host\n\n");
    }
    for (index, group) in plan.host_changes.iter().enumerate() {
        let mut section = String::new();
        let _ = writeln!(
            section,
            "<details><summary><b>{} {}</b>: {}</summary>\n",
            group.hosts.len(),
            hosts_word(group.hosts.len()),
            name_list(&group.hosts, MARKDOWN_HOSTS)
        );
        if let Some(host) = &group.context_from {
            let _ = writeln!(
                section,
                "_The same changed lines on each host; diff context from {host}._\n"
            );
        }
        for change in &group.changes {
            markdown_change(&mut section, change);
        }
        // A blank line ends the list, so that the tag closes the section.
        if !section.ends_with("\n\n") {
            section.push('\n');
        }
        section.push_str("</details>\n\n");
        if out.len() + section.len() > MARKDOWN_LIMIT {
            let rest = &plan.host_changes[index..];
            let n_hosts: usize = rest.iter().map(|g| g.hosts.len()).sum();
            let _ = writeln!(
                out,
                "_{} more {} with other changes are not shown: run `muster plan` for the full plan._",
                n_hosts,
                hosts_word(n_hosts)
            );
            break;
        }
        out.push_str(&section);
    }
    out
}

fn markdown_change(out: &mut String, change: &ItemChange) {
    let _ = writeln!(out, "- `{} {}`", change.kind.sign(), change.id);
    for line in field_lines(change) {
        let _ = writeln!(out, "  - `{}`", line.replace('`', "'"));
    }
    if let Some(runs) = &change.next_runs {
        let _ = writeln!(out, "  - next runs before: {}", runs_text(&runs.before));
        let _ = writeln!(out, "  - next runs after: {}", runs_text(&runs.after));
    }
    if let Some(diff) = &change.diff {
        // A fence longer than any backtick run in the diff.
        let mut fence = "```".to_string();
        while diff.contains(fence.as_str()) {
            fence.push('`');
        }
        let _ = write!(out, "\n  {fence}diff\n");
        let n_lines = diff.lines().count();
        for line in diff.lines().take(MARKDOWN_DIFF_LINES) {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(out, "  {fence}");
        if n_lines > MARKDOWN_DIFF_LINES {
            let _ = writeln!(
                out,
                "  _{} more lines of this diff: run `muster plan` for all of it._",
                n_lines - MARKDOWN_DIFF_LINES
            );
        }
        out.push('\n');
    }
}

/// The JSON plan: [`Plan`] as documented in docs/plan.md.
pub fn render_json(plan: &Plan) -> String {
    let mut text = serde_json::to_string_pretty(plan).unwrap_or_default();
    text.push('\n');
    text
}

#[derive(Serialize)]
struct ErrorReport<'a> {
    version: u32,
    error: &'a str,
    diagnostics: &'a [muster_schemas::Diagnostic],
}

fn render_error(err: &PlanError, format: PlanFormat) -> String {
    let (kind, diagnostics) = match err {
        PlanError::InvalidHead(diagnostics) => ("invalid_head", diagnostics.as_slice()),
        PlanError::HeadDoesNotCompile(diagnostics) => {
            ("head_does_not_compile", diagnostics.as_slice())
        }
        PlanError::Source(_) => ("source", &[][..]),
    };
    match format {
        PlanFormat::Text => format!("{err}\n"),
        PlanFormat::Markdown => format!("### muster plan: error\n\n```\n{err}\n```\n"),
        PlanFormat::Json => {
            let report = ErrorReport {
                version: plan::FORMAT_VERSION,
                error: kind,
                diagnostics,
            };
            let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
            text.push('\n');
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ChangeKind, HostChangeGroup, Revision, Summary};

    fn plan_with(n_groups: usize, hosts_per_group: usize) -> Plan {
        let diff = format!(
            "--- /etc/app.conf\n+++ /etc/app.conf\n{}",
            "+x\n".repeat(200)
        );
        Plan {
            version: 1,
            base: Revision {
                id: "a".repeat(40),
                summary: "base".into(),
            },
            head: Revision {
                id: "b".repeat(40),
                summary: "head".into(),
            },
            notes: Vec::new(),
            summary: Summary {
                hosts_total: n_groups * hosts_per_group,
                hosts_affected: n_groups * hosts_per_group,
                ..Summary::default()
            },
            host_changes: (0..n_groups)
                .map(|group| HostChangeGroup {
                    hosts: (0..hosts_per_group)
                        .map(|host| format!("host-{group:04}-{host:04}"))
                        .collect(),
                    changes: vec![ItemChange {
                        id: "file:/etc/app.conf".into(),
                        kind: ChangeKind::Changed,
                        fields: Vec::new(),
                        diff: Some(format!("{diff}+{group}\n")),
                        next_runs: None,
                    }],
                    context_from: None,
                })
                .collect(),
            fleet_changes: Vec::new(),
            rbac: Vec::new(),
        }
    }

    #[test]
    fn markdown_is_cut_below_the_comment_limit_and_says_how_many_hosts_are_left() {
        let markdown = render_markdown(&plan_with(500, 3));
        assert!(markdown.len() <= MARKDOWN_LIMIT, "{}", markdown.len());
        let shown = markdown.matches("<details>").count();
        assert!(shown > 10 && shown < 500, "{shown} sections");
        let left = (500 - shown) * 3;
        assert!(
            markdown.contains(&format!(
                "_{left} more hosts with other changes are not shown"
            )),
            "{}",
            &markdown[markdown.len() - 300..]
        );
        // Every section that is shown is closed.
        assert_eq!(markdown.matches("</details>").count(), shown);
    }

    #[test]
    fn long_host_lists_end_with_how_many_more() {
        let markdown = render_markdown(&plan_with(1, 400));
        assert!(
            markdown.contains("host-0000-0019 and 380 more hosts</summary>"),
            "{markdown}"
        );
        let text = render_text(&plan_with(1, 400));
        assert!(
            text.contains("host-0000-0049 and 350 more hosts\n"),
            "{text}"
        );
    }

    #[test]
    fn a_long_diff_is_cut_in_markdown() {
        let markdown = render_markdown(&plan_with(1, 1));
        assert!(
            markdown.contains("_53 more lines of this diff: run `muster plan` for all of it._"),
            "{markdown}"
        );
        assert!(render_text(&plan_with(1, 1)).contains("+0\n"));
    }

    #[test]
    fn a_diff_holding_a_fence_gets_a_longer_fence() {
        let mut plan = plan_with(1, 1);
        plan.host_changes[0].changes[0].diff = Some("--- a\n+++ a\n+```\n".into());
        let markdown = render_markdown(&plan);
        assert!(markdown.contains("````diff\n"), "{markdown}");
    }
}
