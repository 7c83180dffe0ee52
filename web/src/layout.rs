//! The frame around every page: head, navigation, the user and logout,
//! and the live-update connection; plus the login and error pages.

use maud::{DOCTYPE, Markup, html};

use crate::assets;

/// The sections of the dashboard, as the navigation lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Hosts,
    Commits,
    Jobs,
    Enrollment,
    Audit,
}

impl Section {
    pub const ALL: [Section; 6] = [
        Section::Overview,
        Section::Hosts,
        Section::Commits,
        Section::Jobs,
        Section::Enrollment,
        Section::Audit,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Section::Overview => "Overview",
            Section::Hosts => "Hosts",
            Section::Commits => "Commits",
            Section::Jobs => "Jobs",
            Section::Enrollment => "Enrollment",
            Section::Audit => "Audit",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Section::Overview => "/",
            Section::Hosts => "/hosts",
            Section::Commits => "/commits",
            Section::Jobs => "/jobs",
            Section::Enrollment => "/enrollment",
            Section::Audit => "/audit",
        }
    }
}

/// Which sections the user may open: decided by the controller from the
/// RBAC of the deployed commit. A section left out is not linked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nav {
    pub sections: Vec<Section>,
}

/// What every page needs besides its own content.
#[derive(Debug, Clone)]
pub struct Chrome {
    /// The logged-in user.
    pub user: String,
    /// The CSRF token every mutating form carries as `_csrf`.
    pub csrf: String,
    pub nav: Nav,
    /// The section this page belongs to.
    pub section: Section,
    /// Now, in seconds since the epoch: times are shown relative to it.
    pub now: i64,
    /// A one-line notice at the top (the outcome of the last form).
    pub notice: Option<Notice>,
}

/// A message shown once above the page's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: NoticeKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    Success,
    Error,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            // htmx must not evaluate code from attributes nor inject a
            // style element: the content security policy forbids both.
            meta name="htmx-config" content=r#"{"allowEval":false,"includeIndicatorStyles":false,"allowScriptTags":false}"#;
            title { (title) " · Muster" }
            link rel="stylesheet" href=(assets::url("muster.css"));
            script src=(assets::url("htmx.min.js")) defer {}
            script src=(assets::url("htmx-ext-sse.min.js")) defer {}
            script src=(assets::url("muster.js")) defer {}
        }
    }
}

/// A whole page: `title` in the head and as the heading, `content` below.
pub fn page(chrome: &Chrome, title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body hx-ext="sse" sse-connect="/events" {
                header.top {
                    a.brand href="/" { "Muster" }
                    nav {
                        @for section in &chrome.nav.sections {
                            a href=(section.path())
                                aria-current=[(*section == chrome.section).then_some("page")] {
                                (section.title())
                            }
                        }
                    }
                    div.who {
                        span.user title="logged in as" { (chrome.user) }
                        form method="post" action="/logout" {
                            input type="hidden" name="_csrf" value=(chrome.csrf);
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(notice) = &chrome.notice {
                        @let class = match notice.kind {
                            NoticeKind::Success => "notice success",
                            NoticeKind::Error => "notice error",
                        };
                        p class=(class) role="status" { (notice.text) }
                    }
                    (content)
                }
            }
        }
    }
}

/// The login form. `error` is shown above it; `next` is where a
/// successful login goes.
pub fn login(error: Option<&str>, user: &str, next: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body.login {
                main {
                    h1 { "Muster" }
                    form.login method="post" action="/login" {
                        @if let Some(error) = error {
                            p.notice.error role="alert" { (error) }
                        }
                        input type="hidden" name="next" value=(next);
                        label { "User" input type="text" name="user" value=(user) autocomplete="username" required autofocus; }
                        label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                        button type="submit" { "Log in" }
                        p.hint { "Users are created with " code { "muster user add NAME" } "." }
                    }
                }
            }
        }
    }
}

/// An error in place of a page: what went wrong and what to do. With a
/// chrome, the navigation stays so the user can go on elsewhere.
pub fn error(chrome: Option<&Chrome>, status: u16, message: &str) -> Markup {
    let title = match status {
        403 => "Not allowed",
        404 => "Not found",
        400 | 422 => "Cannot do that",
        503 => "Unavailable",
        _ => "Something went wrong",
    };
    let content = html! {
        p.notice.error role="alert" { (message) }
        p { a href="/" { "Back to the overview" } }
    };
    match chrome {
        Some(chrome) => page(chrome, title, content),
        None => html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body.login { main { h1 { (title) } (content) } }
            }
        },
    }
}

/// The frame of a page in unit tests: alice, at time 1,000, with CSRF
/// token `csrf`.
#[cfg(test)]
pub(crate) fn test_chrome(section: Section, csrf: &str) -> Chrome {
    Chrome {
        user: "alice".into(),
        csrf: csrf.into(),
        nav: Nav::default(),
        section,
        now: 1_000,
        notice: None,
    }
}
