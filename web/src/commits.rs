//! The commits page: every commit of the tracked branch the controller
//! tried, deployed or rejected, with its diagnostics (`file:line:col`)
//! when rejected and its rollout when deployed; and the plan page of one
//! commit against its parent.

use maud::{Markup, html};

use crate::layout::{Chrome, page};
use crate::overview::{Rollout, rollout_bar};
use crate::parts::{self, Tone};

/// Where a commit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStatus {
    /// Deployed, and the last one deployed: its bundles are in force.
    InForce,
    /// Deployed once, since followed by another.
    Deployed,
    /// Refused: it did not validate or compile; nothing changed.
    Rejected,
}

impl CommitStatus {
    fn badge(self) -> Markup {
        match self {
            CommitStatus::InForce => parts::badge(Tone::Good, "in force"),
            CommitStatus::Deployed => parts::badge(Tone::Neutral, "deployed"),
            CommitStatus::Rejected => parts::badge(Tone::Bad, "rejected"),
        }
    }
}

/// One problem of a rejected commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line:col`, or empty when the problem has no place.
    pub place: String,
    pub message: String,
    pub hint: Option<String>,
}

/// A commit as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub id: String,
    pub summary: String,
    pub author: String,
    pub committed_at: i64,
    /// When the controller tried it.
    pub recorded_at: i64,
    pub deployed_at: Option<i64>,
    pub status: CommitStatus,
    /// Hosts whose bundle changed when it was deployed.
    pub n_changed: i64,
    /// A rejected commit's problems.
    pub problems: Vec<Problem>,
    /// A deployed commit's rollout over the hosts the user may read:
    /// `None` when no such host has its bundle in force any more.
    pub rollout: Option<Rollout>,
    /// Where its plan against its parent is.
    pub plan_href: String,
}

/// The commits page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commits {
    /// This page's URL, which its live region re-fetches.
    pub url: String,
    pub commits: Vec<Commit>,
}

/// The list of commits, newest first, in one live region.
pub fn render(chrome: &Chrome, commits: &Commits) -> Markup {
    let content = if commits.commits.is_empty() {
        parts::empty(
            "No commits yet — the controller deploys the tracked branch of the fleet repo",
            html! {
                "Push a commit, or check " code { "muster serve" } "'s log for fetch errors."
            },
        )
    } else {
        html! {
            table.commits {
                thead {
                    tr {
                        th { "Commit" }
                        th { "State" }
                        th { "Author" }
                        th { "Tried" }
                        th { "Rollout" }
                    }
                }
                tbody {
                    @for commit in &commits.commits {
                        (commit_row(chrome.now, commit))
                    }
                }
            }
        }
    };
    page(
        chrome,
        "Commits",
        parts::live("commits-list", &["commits", "hosts"], &commits.url, content),
    )
}

fn commit_row(now: i64, commit: &Commit) -> Markup {
    html! {
        tr id=(commit.id) {
            td {
                a.mono href=(format!("#{}", commit.id)) title=(commit.id) { (parts::short_commit(&commit.id)) }
                " " (commit.summary)
                div.hint {
                    a href=(commit.plan_href) { "Plan against its parent" }
                }
                @if !commit.problems.is_empty() {
                    (problem_list(&commit.problems))
                }
            }
            td { (commit.status.badge()) }
            td { (commit.author) div.hint { "committed " (parts::time(now, commit.committed_at)) } }
            td {
                (parts::time(now, commit.recorded_at))
                @if let Some(deployed_at) = commit.deployed_at {
                    div.hint { "deployed " (parts::time(now, deployed_at)) }
                }
            }
            td {
                @match (commit.status, &commit.rollout) {
                    (CommitStatus::Rejected, _) => span.muted { "not deployed" },
                    (_, Some(rollout)) => {
                        (rollout_bar(rollout))
                        div.hint {
                            (commit.n_changed)
                            @if commit.n_changed == 1 { " host changed" } @else { " hosts changed" }
                        }
                    }
                    (_, None) => span.muted { "superseded on all hosts" },
                }
            }
        }
    }
}

/// Diagnostics compiler style: `file:line:col: message`, the hint below.
fn problem_list(problems: &[Problem]) -> Markup {
    html! {
        ul.diagnostics {
            @for problem in problems {
                li {
                    @if !problem.place.is_empty() {
                        code { (problem.place) } ": "
                    }
                    (problem.message)
                    @if let Some(hint) = &problem.hint {
                        div.hint { "hint: " (hint) }
                    }
                }
            }
        }
    }
}

/// What the plan page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanView {
    /// The plan as `muster plan --format text` prints it.
    Text(String),
    /// The commit cannot be planned: it does not validate or compile.
    Invalid(Vec<Problem>),
    /// The commit has no parent in the tracked repository (the first
    /// commit, or history rewritten since).
    NoParent,
}

/// The plan of commit `id` against its parent.
pub fn plan(chrome: &Chrome, id: &str, view: &PlanView) -> Markup {
    let title = format!("Plan of {}", parts::short_commit(id));
    let content = html! {
        p {
            "What commit " code { (id) } " changes against its parent, for the hosts you may read. "
            a href=(format!("/commits#{id}")) { "Back to the commits" }
        }
        @match view {
            PlanView::Text(text) => pre.plan { (text) },
            PlanView::NoParent => {
                (parts::empty(
                    "This commit has no parent in the tracked repository",
                    html! { "It is the first commit (or its history was rewritten since): there is nothing to plan it against. Later commits have their plans." },
                ))
            }
            PlanView::Invalid(problems) => {
                p.notice.error role="alert" { "This commit does not validate or compile, so there is no plan:" }
                (problem_list(problems))
            }
        }
    };
    page(chrome, &title, content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Section;

    fn chrome() -> Chrome {
        crate::layout::test_chrome(Section::Commits, "token")
    }

    fn commit(status: CommitStatus) -> Commit {
        Commit {
            id: "0123456789abcdef".into(),
            summary: "nginx: more workers".into(),
            author: "Alice".into(),
            committed_at: 900,
            recorded_at: 950,
            deployed_at: None,
            status,
            n_changed: 3,
            problems: Vec::new(),
            rollout: None,
            plan_href: "/commits/0123456789abcdef/plan".into(),
        }
    }

    #[test]
    fn rejected_commits_list_their_problems_where_they_are() {
        let mut rejected = commit(CommitStatus::Rejected);
        rejected.problems.push(Problem {
            place: "policies/nginx.yaml:4:7".into(),
            message: "unknown field `mdoe`".into(),
            hint: Some("did you mean `mode`?".into()),
        });
        let html = render(
            &chrome(),
            &Commits {
                url: "/commits".into(),
                commits: vec![rejected],
            },
        )
        .into_string();
        assert!(html.contains(r#"id="0123456789abcdef""#), "{html}");
        assert!(html.contains("policies/nginx.yaml:4:7"), "{html}");
        assert!(html.contains("did you mean `mode`?"), "{html}");
        assert!(html.contains("rejected"), "{html}");
        assert!(html.contains("not deployed"), "{html}");
    }

    #[test]
    fn deployed_commits_show_their_rollout_or_that_they_were_superseded() {
        let mut in_force = commit(CommitStatus::InForce);
        in_force.rollout = Some(Rollout {
            applied: 12,
            failed: 1,
            pending: 3,
        });
        let superseded = commit(CommitStatus::Deployed);
        let html = render(
            &chrome(),
            &Commits {
                url: "/commits".into(),
                commits: vec![in_force, superseded],
            },
        )
        .into_string();
        assert!(html.contains("in force"), "{html}");
        assert!(html.contains("12 applied"), "{html}");
        assert!(html.contains("superseded on all hosts"), "{html}");
        assert!(
            html.contains(r#"hx-trigger="sse:commits, sse:hosts""#),
            "{html}"
        );
    }

    #[test]
    fn no_commits_says_what_to_do() {
        let html = render(
            &chrome(),
            &Commits {
                url: "/commits".into(),
                commits: Vec::new(),
            },
        )
        .into_string();
        assert!(html.contains("No commits yet"), "{html}");
        assert!(html.contains("muster serve"), "{html}");
    }
}
