//! The hosts pages: the fleet as a filterable, sortable, paginated table,
//! and one host in detail (facts, metric charts, the bundle in force, the
//! resources and checks of its latest report, its jobs).

use maud::{Markup, html};
use serde_json::{Map, Value};

use crate::chart::{self, Series};
use crate::layout::{self, Chrome};
use crate::parts::{self, Tone};

/// A status as a badge shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub label: String,
    pub tone: Tone,
}

impl Status {
    pub fn new(label: impl Into<String>, tone: Tone) -> Status {
        Status {
            label: label.into(),
            tone,
        }
    }

    fn badge(&self) -> Markup {
        parts::badge(self.tone, &self.label)
    }
}

/// The states the list filters by: (query value, label). Presence first,
/// then sync.
pub const STATE_FILTERS: [(&str, &str); 9] = [
    ("online", "online"),
    ("offline", "offline"),
    ("stale", "stale"),
    ("pending", "pending"),
    ("rejected", "rejected"),
    ("drifted", "drifted"),
    ("failing", "failing"),
    ("behind", "behind"),
    ("in_sync", "in sync"),
];

/// The columns the list sorts by: (query value, header).
pub const SORT_KEYS: [(&str, &str); 4] = [
    ("name", "Name"),
    ("last_seen", "Last seen"),
    ("state", "State"),
    ("sync", "Sync"),
];

/// What the list is filtered and sorted by, as the query string has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostQuery {
    /// A group of the deployed commit.
    pub group: String,
    /// `key=value`.
    pub label: String,
    /// One of [`STATE_FILTERS`].
    pub state: String,
    /// Free text: part of the name, id or a label value.
    pub q: String,
    /// One of [`SORT_KEYS`].
    pub sort: String,
    pub descending: bool,
    /// Counted from 1.
    pub page: usize,
}

impl HostQuery {
    pub fn is_filtered(&self) -> bool {
        !(self.group.is_empty()
            && self.label.is_empty()
            && self.state.is_empty()
            && self.q.is_empty())
    }

    /// The list's URL with this query, on `page`: empty fields left out.
    pub fn href(&self, page: usize) -> String {
        self.href_with(&self.sort, self.descending, page)
    }

    fn href_with(&self, sort: &str, descending: bool, page: usize) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for (key, value) in [
            ("group", &self.group),
            ("label", &self.label),
            ("state", &self.state),
            ("q", &self.q),
        ] {
            if !value.is_empty() {
                pairs.push((key, value.clone()));
            }
        }
        if !sort.is_empty() && sort != "name" {
            pairs.push(("sort", sort.to_string()));
        }
        if descending {
            pairs.push(("dir", "desc".into()));
        }
        if page > 1 {
            pairs.push(("page", page.to_string()));
        }
        if pairs.is_empty() {
            return "/hosts".into();
        }
        let query = pairs
            .iter()
            .map(|(key, value)| format!("{key}={}", encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        format!("/hosts?{query}")
    }

    /// The link of a column header: sorts by it, or flips the direction
    /// when the list is sorted by it already. Last seen starts newest
    /// first, the rest A to Z.
    fn sort_href(&self, key: &str) -> String {
        let current = if self.sort.is_empty() {
            "name"
        } else {
            &self.sort
        };
        let descending = if current == key {
            !self.descending
        } else {
            key == "last_seen"
        };
        self.href_with(key, descending, 1)
    }
}

/// Percent-encodes a query value: everything but unreserved characters.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// One host in the list.
#[derive(Debug, Clone, PartialEq)]
pub struct HostListRow {
    pub id: String,
    pub name: String,
    pub presence: Status,
    pub sync: Status,
    /// The deployed commit's groups that hold the host.
    pub groups: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub applied_generation: u64,
    pub bundle_generation: Option<u64>,
    pub last_seen_at: Option<i64>,
}

/// The hosts page.
#[derive(Debug, Clone, PartialEq)]
pub struct HostList {
    pub query: HostQuery,
    /// The deployed commit's groups, for the group filter.
    pub groups: Vec<String>,
    /// The rows of this page.
    pub rows: Vec<HostListRow>,
    pub per_page: usize,
    /// Hosts matching the filter.
    pub n_matching: usize,
    /// Hosts the user may see at all.
    pub n_hosts: usize,
}

/// The hosts page: filters, the summary, the table and the pages.
pub fn list(chrome: &Chrome, list: &HostList) -> Markup {
    let query = &list.query;
    let content = html! {
        (filters(list))
        (parts::live("hosts-table", &["hosts"], &query.href(query.page), html! {
            @if list.n_hosts == 0 {
                (parts::empty(
                    "No hosts yet",
                    html! {
                        "Create an enrollment token with " code { "muster token create" }
                        " and run " code { "muster-agent enroll" } " on a host."
                    },
                ))
            } @else if list.n_matching == 0 {
                (parts::empty(
                    "No host matches these filters.",
                    html! { a href="/hosts" { "Clear the filters" } " to see all " (parts::thousands(list.n_hosts)) " hosts." },
                ))
            } @else {
                p.summary {
                    (parts::thousands(list.n_matching))
                    @if list.n_matching == 1 { " host matches" } @else { " hosts match" }
                    @if query.is_filtered() {
                        " (of " (parts::thousands(list.n_hosts)) ") · " a href="/hosts" { "clear the filters" }
                    }
                }
                (table(chrome.now, list))
                (parts::pagination(query.page, list.per_page, list.n_matching, |page| query.href(page)))
            }
        }))
    };
    layout::page(chrome, "Hosts", content)
}

fn filters(list: &HostList) -> Markup {
    let query = &list.query;
    html! {
        form.filters method="get" action="/hosts" role="search" {
            label {
                "Group"
                select name="group" {
                    option value="" { "any" }
                    @for group in &list.groups {
                        option value=(group) selected[*group == query.group] { (group) }
                    }
                }
            }
            label {
                "Label"
                input type="text" name="label" value=(query.label) placeholder="key=value";
            }
            label {
                "State"
                select name="state" {
                    option value="" { "any" }
                    @for (value, label) in STATE_FILTERS {
                        option value=(value) selected[value == query.state] { (label) }
                    }
                }
            }
            label {
                "Search"
                input type="search" name="q" value=(query.q) placeholder="name, id or label value";
            }
            @if !query.sort.is_empty() && query.sort != "name" {
                input type="hidden" name="sort" value=(query.sort);
            }
            @if query.descending {
                input type="hidden" name="dir" value="desc";
            }
            button type="submit" { "Filter" }
        }
    }
}

fn table(now: i64, list: &HostList) -> Markup {
    let query = &list.query;
    let sorted_by = if query.sort.is_empty() {
        "name"
    } else {
        query.sort.as_str()
    };
    let header = |key: &str, title: &str| {
        let order = if key == sorted_by {
            Some(if query.descending {
                "descending"
            } else {
                "ascending"
            })
        } else {
            None
        };
        let arrow = match order {
            Some("descending") => " ↓",
            Some(_) => " ↑",
            None => "",
        };
        html! {
            th aria-sort=[order] {
                a href=(query.sort_href(key)) { (title) (arrow) }
            }
        }
    };
    html! {
        table.table.hosts {
            thead {
                tr {
                    (header("name", "Name"))
                    (header("state", "State"))
                    (header("sync", "Sync"))
                    th { "Groups" }
                    th { "Labels" }
                    th title="applied generation / generation of the bundle in force" { "Generation" }
                    (header("last_seen", "Last seen"))
                }
            }
            tbody {
                @for row in &list.rows {
                    tr {
                        td { a href=(format!("/hosts/{}", encode(&row.id))) { (row.name) } }
                        td { (row.presence.badge()) }
                        td { (row.sync.badge()) }
                        td {
                            @for group in &row.groups {
                                span.tag { (group) } " "
                            }
                        }
                        td.labels {
                            @for (key, value) in &row.labels {
                                span.tag { (key) "=" (value) } " "
                            }
                        }
                        td.num { (generations(row.applied_generation, row.bundle_generation)) }
                        td { (parts::maybe_time(now, row.last_seen_at, "never")) }
                    }
                }
            }
        }
    }
}

/// `3 / 4`, marked when the host is behind its bundle.
fn generations(applied: u64, bundle: Option<u64>) -> Markup {
    match bundle {
        Some(bundle) if applied < bundle => html! {
            span.behind title="the host has not applied its newest bundle yet" {
                (applied) " / " (bundle) " (behind)"
            }
        },
        Some(bundle) => html! { (applied) " / " (bundle) },
        None => html! { (applied) " / " span.muted { "no bundle" } },
    }
}

/// The bundle in force on a host: what it is, not what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInForce {
    pub commit: String,
    pub generation: u64,
    pub issued_at: i64,
    pub expires_at: i64,
    /// When the host reported having applied it.
    pub applied_at: Option<i64>,
}

/// One resource of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRow {
    /// `kind:name`, such as `file:/etc/motd`.
    pub id: String,
    pub status: Status,
    /// Why it failed or was skipped, or what was changed.
    pub message: Option<String>,
    /// A unified diff.
    pub diff: Option<String>,
    /// Whether `message` is an error.
    pub failed: bool,
}

/// One check of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    pub policy: String,
    pub name: String,
    pub passed: bool,
    pub output: String,
}

/// The host's latest report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportView {
    pub received_at: i64,
    pub generation: u64,
    pub commit: String,
    pub status: Status,
    pub finished_at: i64,
    pub resources: Vec<ResourceRow>,
    pub checks: Vec<CheckRow>,
}

/// One job of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub action_id: String,
    /// What the action does, such as `script restart-service on web-01`.
    pub summary: String,
    /// `script`, `reboot`, `service`.
    pub kind: String,
    pub requested_by: String,
    pub state: Status,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i64>,
}

/// The host detail page.
#[derive(Debug, Clone, PartialEq)]
pub struct HostDetail {
    pub id: String,
    pub name: String,
    pub presence: Status,
    pub sync: Status,
    pub labels: Vec<(String, String)>,
    pub groups: Vec<String>,
    pub enrolled_at: i64,
    pub last_seen_at: Option<i64>,
    pub applied_generation: u64,
    /// The facts the agent reported, as stored.
    pub facts: Map<String, Value>,
    /// CPU, memory, disk and load over the recent reports.
    pub charts: Vec<Series>,
    pub bundle: Option<BundleInForce>,
    pub report: Option<ReportView>,
    pub jobs: Vec<JobRow>,
}

/// The host detail page.
pub fn detail(chrome: &Chrome, host: &HostDetail) -> Markup {
    let url = format!("/hosts/{}", encode(&host.id));
    let now = chrome.now;
    let content = html! {
        (parts::live("host-detail", &["hosts", "jobs"], &url, html! {
            section.panel.host-header {
                p.badges {
                    (host.presence.badge()) " " (host.sync.badge())
                }
                dl.facts {
                    dt { "Id" } dd { code { (host.id) } }
                    dt { "Labels" }
                    dd {
                        @if host.labels.is_empty() { span.muted { "none" } }
                        @for (key, value) in &host.labels { span.tag { (key) "=" (value) } " " }
                    }
                    dt { "Groups" }
                    dd {
                        @if host.groups.is_empty() { span.muted { "none" } }
                        @for group in &host.groups {
                            a.tag href=(format!("/hosts?group={}", encode(group))) { (group) } " "
                        }
                    }
                    dt { "Enrolled" } dd { (parts::time(now, host.enrolled_at)) }
                    dt { "Last seen" } dd { (parts::maybe_time(now, host.last_seen_at, "never")) }
                }
            }
            section.panel {
                h2 { "Metrics" }
                @if host.charts.iter().all(|series| series.points.is_empty()) {
                    (parts::empty(
                        "No metrics yet.",
                        html! { "They arrive with the agent's reports; an agent that runs reports them every minute by default." },
                    ))
                } @else {
                    div.charts {
                        @for series in &host.charts { (chart::line(series)) }
                    }
                }
            }
            section.panel {
                h2 { "Bundle in force" }
                (bundle(now, host))
            }
            section.panel {
                h2 { "Resources" }
                (resources(now, host.report.as_ref()))
            }
            section.panel {
                h2 { "Checks" }
                (checks(host.report.as_ref()))
            }
            section.panel {
                h2 { "Jobs" }
                (jobs(now, &host.jobs))
            }
            section.panel {
                h2 { "Facts and inventory" }
                (facts(&host.facts))
            }
        }))
    };
    layout::page(chrome, &host.name, content)
}

fn bundle(now: i64, host: &HostDetail) -> Markup {
    let Some(bundle) = &host.bundle else {
        return parts::empty(
            "No bundle for this host yet.",
            html! { "The controller compiles one once the host is approved and a commit is deployed." },
        );
    };
    html! {
        dl.facts {
            dt { "Commit" }
            dd { a href=(format!("/commits#{}", bundle.commit)) { code { (parts::short_commit(&bundle.commit)) } } }
            dt { "Generation" }
            dd {
                @if host.applied_generation < bundle.generation {
                    (parts::badge(Tone::Warn, "behind")) " "
                    "applied " (host.applied_generation) " of " (bundle.generation)
                    span.muted { " — the host has not applied its newest bundle yet" }
                } @else {
                    (bundle.generation) " " span.muted { "(applied)" }
                }
            }
            dt { "Issued" } dd { (parts::time(now, bundle.issued_at)) }
            dt { "Expires" } dd { (parts::time(now, bundle.expires_at)) }
            dt { "Applied" } dd { (parts::maybe_time(now, bundle.applied_at, "not yet")) }
        }
    }
}

fn resources(now: i64, report: Option<&ReportView>) -> Markup {
    let Some(report) = report else {
        return parts::empty(
            "No report yet.",
            html! { "The agent reports after its first converge run; check that " code { "muster-agent" } " runs on the host." },
        );
    };
    html! {
        p.hint {
            "Latest report " (parts::time(now, report.received_at)) ": "
            (report.status.badge()) " generation " (report.generation)
            " of commit " code { (parts::short_commit(&report.commit)) }
        }
        @if report.resources.is_empty() {
            p.muted { "The bundle holds no resources." }
        } @else {
            table.table.resources {
                thead { tr { th { "Kind" } th { "Name" } th { "Status" } th { "Details" } } }
                tbody {
                    @for resource in &report.resources {
                        @let (kind, name) = resource.id.split_once(':').unwrap_or(("", resource.id.as_str()));
                        tr {
                            td { (kind) }
                            td { code { (name) } }
                            td { (resource.status.badge()) }
                            td {
                                @if let Some(message) = &resource.message {
                                    @if resource.failed {
                                        p.notice.error role="alert" { (message) }
                                    } @else {
                                        p { (message) }
                                    }
                                }
                                @if let Some(diff) = &resource.diff {
                                    (diff_block(diff))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A unified diff with added, removed and hunk lines marked for colour;
/// the signs stay, so the colour is not the only signal.
pub fn diff_block(diff: &str) -> Markup {
    html! {
        pre.diff {
            @for line in diff.lines() {
                @if line.starts_with("@@") {
                    span.hunk { (line) } "\n"
                } @else if line.starts_with('+') && !line.starts_with("+++") {
                    span.add { (line) } "\n"
                } @else if line.starts_with('-') && !line.starts_with("---") {
                    span.del { (line) } "\n"
                } @else {
                    (line) "\n"
                }
            }
        }
    }
}

fn checks(report: Option<&ReportView>) -> Markup {
    let Some(report) = report.filter(|report| !report.checks.is_empty()) else {
        return html! { p.muted { "No checks reported: the bundle in force has none, or no report arrived yet." } };
    };
    html! {
        table.table.checks {
            thead { tr { th { "Policy" } th { "Check" } th { "Result" } th { "Output" } } }
            tbody {
                @for check in &report.checks {
                    tr {
                        td { (check.policy) }
                        td { (check.name) }
                        td {
                            @if check.passed { (parts::badge(Tone::Good, "pass")) }
                            @else { (parts::badge(Tone::Bad, "fail")) }
                        }
                        td {
                            @if check.output.is_empty() { span.muted { "no output" } }
                            @else { pre.output { (check.output) } }
                        }
                    }
                }
            }
        }
    }
}

fn jobs(now: i64, jobs: &[JobRow]) -> Markup {
    if jobs.is_empty() {
        return parts::empty(
            "No jobs ran on this host yet.",
            html! { "Run a script on it from the " a href="/jobs" { "jobs page" } "." },
        );
    }
    html! {
        table.table.jobs {
            thead {
                tr {
                    th { "Action" } th { "Kind" } th { "State" } th { "Requested by" }
                    th { "Created" } th { "Started" } th { "Finished" } th { "Exit code" }
                }
            }
            tbody {
                @for job in jobs {
                    tr {
                        td { a href=(format!("/jobs/{}", encode(&job.action_id))) { (job.summary) } }
                        td { (job.kind) }
                        td { (job.state.badge()) }
                        td { (job.requested_by) }
                        td { (parts::time(now, job.created_at)) }
                        td { (parts::maybe_time(now, job.started_at, "–")) }
                        td { (parts::maybe_time(now, job.finished_at, "–")) }
                        td.num {
                            @match job.exit_code {
                                Some(code) => (code),
                                None => span.muted { "–" },
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Bytes as people read them: `15.6 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A fact's value as text: strings as they are, the rest as JSON.
fn fact_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

/// The facts the summary lists first, with their titles.
const SUMMARY_FACTS: [(&str, &str); 7] = [
    ("hostname", "Hostname"),
    ("os_name", "OS"),
    ("os", "Distribution"),
    ("os_version", "Version"),
    ("kernel", "Kernel"),
    ("arch", "Architecture"),
    ("cpus", "CPUs"),
];

fn facts(facts: &Map<String, Value>) -> Markup {
    if facts.is_empty() {
        return parts::empty(
            "No facts reported yet.",
            html! { "The agent sends them when it enrolls and with its reports." },
        );
    }
    let shown_apart = ["memory_bytes", "disks", "interfaces"];
    let rest: Vec<(&String, &Value)> = facts
        .iter()
        .filter(|(key, _)| {
            !SUMMARY_FACTS.iter().any(|(name, _)| name == key)
                && !shown_apart.contains(&key.as_str())
        })
        .collect();
    let disks = facts
        .get("disks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let interfaces = facts
        .get("interfaces")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    html! {
        dl.facts {
            @for (key, title) in SUMMARY_FACTS {
                @if let Some(value) = facts.get(key) {
                    dt { (title) } dd { (fact_text(value)) }
                }
            }
            @if let Some(memory) = facts.get("memory_bytes").and_then(Value::as_u64) {
                dt { "Memory" } dd { (bytes(memory)) }
            }
            @for (key, value) in &rest {
                dt { (key) } dd { (fact_text(value)) }
            }
        }
        @if !disks.is_empty() {
            h3 { "Disks" }
            table.table.disks {
                thead { tr { th { "Mount point" } th { "Size" } th { "Available" } th { "Used" } } }
                tbody {
                    @for disk in &disks {
                        @let total = disk.get("total_bytes").and_then(Value::as_u64);
                        @let available = disk.get("available_bytes").and_then(Value::as_u64);
                        tr {
                            td { code { (disk.get("mount_point").map(fact_text).unwrap_or_default()) } }
                            td.num { (total.map(bytes).unwrap_or_else(|| "–".into())) }
                            td.num { (available.map(bytes).unwrap_or_else(|| "–".into())) }
                            td.num {
                                @match (total, available) {
                                    (Some(total), Some(available)) if total > 0 => {
                                        (parts::percent(total.saturating_sub(available) as usize, total as usize))
                                    }
                                    _ => "–",
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !interfaces.is_empty() {
            h3 { "Network interfaces" }
            table.table.interfaces {
                thead { tr { th { "Interface" } th { "MAC" } th { "Addresses" } } }
                tbody {
                    @for (name, interface) in &interfaces {
                        tr {
                            td { code { (name) } }
                            td { (interface.get("mac").map(fact_text).unwrap_or_default()) }
                            td {
                                @for address in interface.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                                    code { (fact_text(address)) } " "
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_keep_the_filters_and_leave_out_defaults() {
        let query = HostQuery {
            group: "web".into(),
            q: "a b&c".into(),
            sort: "last_seen".into(),
            descending: true,
            page: 3,
            ..HostQuery::default()
        };
        assert_eq!(
            query.href(4),
            "/hosts?group=web&q=a%20b%26c&sort=last_seen&dir=desc&page=4"
        );
        assert_eq!(HostQuery::default().href(1), "/hosts");
        // Sorting by the sorted column flips it and goes back to page 1.
        assert_eq!(
            query.sort_href("last_seen"),
            "/hosts?group=web&q=a%20b%26c&sort=last_seen"
        );
        assert_eq!(query.sort_href("name"), "/hosts?group=web&q=a%20b%26c");
    }

    #[test]
    fn diffs_mark_added_removed_and_hunk_lines() {
        let html = diff_block("--- a\n+++ b\n@@ -1 +1 @@\n-old <b>\n+new\n same").into_string();
        assert!(
            html.contains(r#"<span class="hunk">@@ -1 +1 @@</span>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<span class="del">-old &lt;b&gt;</span>"#),
            "{html}"
        );
        assert!(html.contains(r#"<span class="add">+new</span>"#), "{html}");
        assert!(!html.contains(r#"<span class="add">+++"#), "{html}");
    }

    #[test]
    fn bytes_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(16 * 1024 * 1024 * 1024), "16.0 GiB");
    }
}
