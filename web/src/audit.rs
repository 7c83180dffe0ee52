//! The audit page: the records of the audit repository, newest first —
//! who did what to which targets, from where, and the commit that holds
//! it — filtered by user, action and time, fifty to a page.

use maud::{Markup, html};

use crate::layout::{Chrome, page};
use crate::parts::{self, Tone};

/// One record: an action a user took, or the outcome of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub time: Option<i64>,
    /// RFC 3339 as recorded, shown when it does not parse.
    pub time_text: String,
    pub user: String,
    /// `session`, `api-token`, `cli` or `controller`.
    pub via: String,
    /// The API token's name, when acted through one.
    pub token: Option<String>,
    pub break_glass: bool,
    pub is_outcome: bool,
    pub action: String,
    pub targets: Vec<String>,
    pub summary: String,
    /// As recorded: secret values are `<redacted>` already.
    pub parameters: Vec<(String, String)>,
    pub source: Option<String>,
    pub commit_id: String,
}

/// The filters as typed, to fill the form again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub user: String,
    pub action: String,
    /// `24h`, `7d`, `30d` or empty (any time).
    pub range: String,
    /// `YYYY-MM-DD`.
    pub since: String,
    pub until: String,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.user.is_empty()
            && self.action.is_empty()
            && self.range.is_empty()
            && self.since.is_empty()
            && self.until.is_empty()
    }
}

/// The whole page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// This page's URL, which its live region re-fetches.
    pub url: String,
    pub filters: Filters,
    /// A filter that could not be read, shown by the form.
    pub filter_error: Option<String>,
    pub rows: Vec<Row>,
    /// Counted from 1.
    pub page: usize,
    pub per_page: usize,
    /// Records matching the filters.
    pub total: usize,
    /// Records in the repository at all.
    pub any_records: bool,
    /// The filters as a query string without `page`, for page links.
    pub query: String,
}

pub fn render(chrome: &Chrome, audit: &Audit) -> Markup {
    let href = |page: usize| {
        if audit.query.is_empty() {
            format!("/audit?page={page}")
        } else {
            format!("/audit?{}&page={page}", audit.query)
        }
    };
    let list = html! {
        @if !audit.any_records {
            (parts::empty(
                "No audit records yet",
                html! { "Every action taken through the API or this dashboard is recorded here." },
            ))
        } @else if audit.rows.is_empty() {
            (parts::empty(
                "No records match these filters",
                html! { a href="/audit" { "Show every record" } " or widen the time range." },
            ))
        } @else {
            (parts::pagination(audit.page, audit.per_page, audit.total, href))
            (table(chrome.now, &audit.rows))
            (parts::pagination(audit.page, audit.per_page, audit.total, href))
        }
    };
    let content = html! {
        (filters_form(&audit.filters, audit.filter_error.as_deref()))
        (parts::live("audit-log", &["audit"], &audit.url, list))
    };
    page(chrome, "Audit log", content)
}

fn filters_form(filters: &Filters, error: Option<&str>) -> Markup {
    let ranges = [
        ("", "any time"),
        ("24h", "last 24 h"),
        ("7d", "last 7 d"),
        ("30d", "last 30 d"),
    ];
    html! {
        @if let Some(error) = error {
            p.notice.error role="alert" { (error) }
        }
        form.filters method="get" action="/audit" {
            label { "User" input type="text" name="user" value=(filters.user) placeholder="alice"; }
            label { "Action" input type="text" name="action" value=(filters.action) placeholder="hosts.approve"; }
            label { "Time"
                select name="range" {
                    @for (value, text) in ranges {
                        option value=(value) selected[filters.range == value] { (text) }
                    }
                }
            }
            label { "Since" input type="date" name="since" value=(filters.since); }
            label { "Until" input type="date" name="until" value=(filters.until); }
            button type="submit" { "Filter" }
            @if !filters.is_empty() {
                a href="/audit" { "Clear" }
            }
        }
    }
}

fn who(row: &Row) -> Markup {
    html! {
        strong { (row.user) }
        @if row.break_glass {
            " " (parts::badge(Tone::Bad, "break-glass"))
        }
        br;
        span.muted {
            "via " (row.via)
            @if let Some(token) = &row.token { " (token " code { (token) } ")" }
        }
    }
}

fn table(now: i64, rows: &[Row]) -> Markup {
    html! {
        table.audit {
            thead {
                tr {
                    th { "Time" } th { "User" } th { "Action" } th { "Targets" } th { "Summary" }
                    th { "Parameters" } th { "Source" } th { "Commit" }
                }
            }
            tbody {
                @for row in rows {
                    tr {
                        td { @match row.time { Some(time) => (parts::time(now, time)), None => (row.time_text) } }
                        td { (who(row)) }
                        td {
                            @if row.is_outcome { (parts::badge(Tone::Neutral, "outcome")) }
                            @else { code { (row.action) } }
                        }
                        td { (row.targets.join(", ")) }
                        td { (row.summary) }
                        td {
                            @if !row.parameters.is_empty() {
                                dl.facts.parameters {
                                    @for (name, value) in &row.parameters {
                                        dt { (name) }
                                        dd.mono { (value) }
                                    }
                                }
                            }
                        }
                        td { (row.source.as_deref().unwrap_or("–")) }
                        td.mono { span title=(row.commit_id) { (parts::short_commit(&row.commit_id)) } }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Section;

    fn chrome() -> Chrome {
        crate::layout::test_chrome(Section::Audit, "t")
    }

    fn audit(rows: Vec<Row>, any_records: bool) -> Audit {
        Audit {
            url: "/audit".into(),
            filters: Filters::default(),
            filter_error: None,
            total: rows.len(),
            rows,
            page: 1,
            per_page: 50,
            any_records,
            query: String::new(),
        }
    }

    #[test]
    fn an_empty_log_says_what_will_appear() {
        let html = render(&chrome(), &audit(Vec::new(), false)).into_string();
        assert!(html.contains("No audit records yet"), "{html}");
        assert!(html.contains(r#"hx-trigger="sse:audit""#), "{html}");
    }

    #[test]
    fn rows_show_who_how_and_the_short_commit() {
        let row = Row {
            time: Some(900),
            time_text: String::new(),
            user: "bob".into(),
            via: "api-token".into(),
            token: Some("ci".into()),
            break_glass: true,
            is_outcome: false,
            action: "scripts.run".into(),
            targets: vec!["web-01".into(), "web-02".into()],
            summary: "run cleanup".into(),
            parameters: vec![("password".into(), "<redacted>".into())],
            source: Some("10.0.0.9".into()),
            commit_id: "0123456789abcdef".into(),
        };
        let html = render(&chrome(), &audit(vec![row], true)).into_string();
        for text in [
            "break-glass",
            "via api-token",
            "<code>ci</code>",
            "web-01, web-02",
            "&lt;redacted&gt;",
            ">0123456789<",
        ] {
            assert!(html.contains(text), "{text} in {html}");
        }
    }
}
