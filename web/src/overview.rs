//! The overview page: how the fleet is doing at a glance — hosts by
//! presence and by sync, the compliance rate, the last commits with their
//! rollout, and the last actions. Each card holds only what the user may
//! read; the others say which permission they need.

use maud::{Markup, html};

use crate::layout::{Chrome, page};
use crate::parts::{self, Tone};

/// A card's content, or the permission it needs when the user lacks it.
#[derive(Debug, Clone, PartialEq)]
pub enum Card<T> {
    Shown(T),
    /// The permission (`hosts:read`) the card needs.
    NeedsPermission(&'static str),
}

/// One count of hosts, linked to the host list filtered to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    /// `online`, `in sync`, …
    pub label: &'static str,
    pub tone: Tone,
    pub n: usize,
    /// The host list showing these hosts, when it can filter by this.
    pub href: Option<String>,
}

/// The hosts the user may read, counted two ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    pub n_hosts: usize,
    /// Online, offline, stale, pending.
    pub by_presence: Vec<Count>,
    /// In sync, drifted, failing, behind, no report yet (approved hosts).
    pub by_sync: Vec<Count>,
}

/// The share of passed checks in the latest report of each host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compliance {
    pub n_passed: usize,
    pub n_checks: usize,
    /// Hosts whose latest report holds checks.
    pub n_hosts: usize,
}

/// How far a commit reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rollout {
    pub applied: usize,
    pub failed: usize,
    pub pending: usize,
}

/// A commit of the tracked branch, as the overview lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub id: String,
    pub summary: String,
    pub author: String,
    /// `deployed (in force)`, `deployed`, `rejected`.
    pub state: &'static str,
    pub tone: Tone,
    pub recorded_at: i64,
    /// The hosts in the user's scope whose bundle in force it set.
    pub rollout: Rollout,
}

/// A recent action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub id: String,
    pub summary: String,
    pub requested_by: String,
    /// `running`, `completed`, `stopped`, `cancelled`.
    pub state: &'static str,
    pub tone: Tone,
    pub created_at: i64,
    /// Its jobs per state, such as `3 succeeded, 1 failed`.
    pub progress: String,
}

/// The whole overview.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// This page's URL, which its live region re-fetches.
    pub url: String,
    pub hosts: Card<Hosts>,
    pub compliance: Card<Compliance>,
    pub commits: Card<Vec<Commit>>,
    pub actions: Card<Vec<Action>>,
    /// No host has enrolled at all (not merely none in the user's scope):
    /// the page says how to enroll the first.
    pub fresh_install: bool,
}

/// The overview's content: one live region over every card.
pub fn render(chrome: &Chrome, overview: &Overview) -> Markup {
    let content = html! {
        @if matches!(overview.hosts, Card::Shown(_)) && overview.fresh_install {
            (parts::empty(
                "No hosts yet",
                html! {
                    "Create an enrollment token with " code { "muster token create" }
                    " (or on the " a href="/enrollment" { "Enrollment" } " page) and run "
                    code { "muster-agent enroll" } " on a host."
                },
            ))
        }
        div.cards {
            (hosts_card("Hosts by presence", &overview.hosts, |hosts| &hosts.by_presence))
            (hosts_card("Hosts by sync", &overview.hosts, |hosts| &hosts.by_sync))
            (compliance_card(&overview.compliance))
        }
        (commits_panel(chrome.now, &overview.commits))
        (actions_panel(chrome.now, &overview.actions))
    };
    page(
        chrome,
        "Overview",
        parts::live(
            "overview",
            &["hosts", "commits", "jobs", "enrollment"],
            &overview.url,
            content,
        ),
    )
}

fn needs(permission: &str) -> Markup {
    html! {
        p.muted.needs { "You need " code { (permission) } " to see this." }
    }
}

fn hosts_card(title: &str, hosts: &Card<Hosts>, counts: fn(&Hosts) -> &Vec<Count>) -> Markup {
    html! {
        section.card {
            h2 { (title) }
            @match hosts {
                Card::Shown(hosts) => {
                    dl {
                        @for count in counts(hosts) {
                            dt { (parts::badge(count.tone, count.label)) }
                            dd {
                                @match &count.href {
                                    Some(href) => a href=(href) { (parts::thousands(count.n)) },
                                    None => (parts::thousands(count.n)),
                                }
                            }
                        }
                    }
                }
                Card::NeedsPermission(permission) => (needs(permission)),
            }
        }
    }
}

fn compliance_card(compliance: &Card<Compliance>) -> Markup {
    html! {
        section.card {
            h2 { "Compliance" }
            @match compliance {
                Card::Shown(compliance) if compliance.n_checks == 0 => {
                    p.big { "–" }
                    p.hint { "No checks reported yet: policies' checks appear once agents report them." }
                }
                Card::Shown(compliance) => {
                    p.big { (parts::percent(compliance.n_passed, compliance.n_checks)) }
                    p.hint {
                        (parts::thousands(compliance.n_passed)) " of "
                        (parts::thousands(compliance.n_checks)) " checks pass, on "
                        (parts::thousands(compliance.n_hosts))
                        @if compliance.n_hosts == 1 { " host" } @else { " hosts" }
                    }
                }
                Card::NeedsPermission(permission) => (needs(permission)),
            }
        }
    }
}

/// A rollout as a bar (an SVG: the content security policy forbids style
/// attributes) and its counts in words.
pub fn rollout_bar(rollout: &Rollout) -> Markup {
    let total = rollout.applied + rollout.failed + rollout.pending;
    if total == 0 {
        return html! { span.muted { "no hosts" } };
    }
    let width = |n: usize| n as f64 * 100.0 / total as f64;
    let applied = width(rollout.applied);
    let failed = width(rollout.failed);
    let text = format!(
        "{} applied, {} failed, {} pending",
        rollout.applied, rollout.failed, rollout.pending
    );
    html! {
        span.rollout {
            svg.rollout-bar viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label=(text) {
                rect.track x="0" y="0" width="100" height="6" {}
                rect.applied x="0" y="0" width=(format!("{applied:.2}")) height="6" {}
                rect.failed x=(format!("{applied:.2}")) y="0" width=(format!("{failed:.2}")) height="6" {}
            }
            span.rollout-text { (text) }
        }
    }
}

fn commits_panel(now: i64, commits: &Card<Vec<Commit>>) -> Markup {
    html! {
        section.panel {
            h2 { a href="/commits" { "Last commits" } }
            @match commits {
                Card::Shown(commits) if commits.is_empty() => {
                    (parts::empty(
                        "No commits tried yet",
                        html! { "Push a commit to the fleet repo's tracked branch: the controller deploys it within seconds." },
                    ))
                }
                Card::Shown(commits) => {
                    table {
                        thead { tr { th { "Commit" } th { "State" } th { "Summary" } th { "Author" } th { "Tried" } th { "Rollout" } } }
                        tbody {
                            @for commit in commits {
                                tr {
                                    td.mono { a href=(format!("/commits#{}", commit.id)) { (parts::short_commit(&commit.id)) } }
                                    td { (parts::badge(commit.tone, commit.state)) }
                                    td { (commit.summary) }
                                    td { (commit.author) }
                                    td { (parts::time(now, commit.recorded_at)) }
                                    td { (rollout_bar(&commit.rollout)) }
                                }
                            }
                        }
                    }
                }
                Card::NeedsPermission(permission) => (needs(permission)),
            }
        }
    }
}

fn actions_panel(now: i64, actions: &Card<Vec<Action>>) -> Markup {
    html! {
        section.panel {
            h2 { a href="/jobs" { "Recent jobs" } }
            @match actions {
                Card::Shown(actions) if actions.is_empty() => {
                    (parts::empty(
                        "No jobs yet",
                        html! { "Run a script on a group from the " a href="/jobs" { "Jobs" } " page, or with " code { "muster run" } "." },
                    ))
                }
                Card::Shown(actions) => {
                    table {
                        thead { tr { th { "Action" } th { "State" } th { "By" } th { "Started" } th { "Jobs" } } }
                        tbody {
                            @for action in actions {
                                tr {
                                    td { a href=(format!("/jobs/{}", action.id)) { (action.summary) } }
                                    td { (parts::badge(action.tone, action.state)) }
                                    td { (action.requested_by) }
                                    td { (parts::time(now, action.created_at)) }
                                    td { (action.progress) }
                                }
                            }
                        }
                    }
                }
                Card::NeedsPermission(permission) => (needs(permission)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Section;

    fn chrome() -> Chrome {
        crate::layout::test_chrome(Section::Overview, "t")
    }

    #[test]
    fn a_card_without_its_permission_names_it_and_shows_no_data() {
        let overview = Overview {
            url: "/".into(),
            hosts: Card::NeedsPermission("hosts:read"),
            compliance: Card::NeedsPermission("hosts:read"),
            commits: Card::NeedsPermission("commits:read"),
            actions: Card::NeedsPermission("jobs:read"),
            fresh_install: true,
        };
        let html = render(&chrome(), &overview).into_string();
        assert!(html.contains("You need <code>hosts:read</code>"), "{html}");
        assert!(html.contains("<code>commits:read</code>"), "{html}");
        assert!(html.contains("<code>jobs:read</code>"), "{html}");
        assert!(!html.contains("No hosts yet"), "{html}");
        assert!(html.contains(r#"hx-trigger="sse:hosts, sse:commits, sse:jobs, sse:enrollment""#));
    }

    #[test]
    fn the_compliance_rate_reads_as_a_share_and_counts() {
        let html = compliance_card(&Card::Shown(Compliance {
            n_passed: 140,
            n_checks: 150,
            n_hosts: 3,
        }))
        .into_string();
        assert!(html.contains("93 %"), "{html}");
        assert!(html.contains("140 of 150 checks pass"), "{html}");
    }

    #[test]
    fn rollout_bars_are_svg_with_widths_as_attributes() {
        let html = rollout_bar(&Rollout {
            applied: 3,
            failed: 1,
            pending: 0,
        })
        .into_string();
        assert!(html.contains(r#"width="75.00""#), "{html}");
        assert!(html.contains("3 applied, 1 failed, 0 pending"), "{html}");
        assert!(!html.contains("style="), "{html}");
    }
}
