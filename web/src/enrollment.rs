//! The enrollment page: hosts waiting for approval with Approve and
//! Reject buttons, and enrollment tokens with a form to create one and a
//! button to revoke each. A new token's secret and enroll command are
//! shown once, on the page that answers its creation.

use maud::{Markup, html};

use crate::layout::{Chrome, page};
use crate::parts::{self, Tone};

/// A host that enrolled with a token that does not approve at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingHost {
    pub id: String,
    pub name: String,
    pub os: Option<String>,
    pub arch: Option<String>,
    /// The first address of its first network interface, if it said.
    pub address: Option<String>,
    pub enrolled_at: i64,
    pub token_id: Option<String>,
}

/// An enrollment token, never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    /// `key=value, key=value`.
    pub labels: String,
    pub uses: i64,
    pub max_uses: i64,
    pub auto_approve: bool,
    pub created_at: i64,
    pub expires_at: i64,
    /// `active`, `used up`, `expired` or `revoked`.
    pub state: &'static str,
    pub tone: Tone,
}

/// A token just created: the one time its secret is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    pub secret: String,
    /// The exact command that enrolls a host with it.
    pub command: String,
    pub max_uses: i64,
    pub expires_at: i64,
}

/// The token form's fields, as typed (kept when the form is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenForm {
    pub labels: String,
    pub max_uses: String,
    pub valid_for_hours: String,
    pub auto_approve: bool,
    /// Why the form was refused, shown above it.
    pub error: Option<String>,
}

impl Default for TokenForm {
    fn default() -> Self {
        TokenForm {
            labels: String::new(),
            max_uses: "1".into(),
            valid_for_hours: "24".into(),
            auto_approve: false,
            error: None,
        }
    }
}

/// The whole page. A section is `None` when the user lacks its
/// permission, and is then left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The page's URL, which its live region re-fetches.
    pub url: String,
    /// Hosts the user may approve (`hosts:approve`).
    pub pending: Option<Vec<PendingHost>>,
    /// Tokens (`tokens:manage`).
    pub tokens: Option<Vec<Token>>,
    pub created: Option<Created>,
    pub form: TokenForm,
}

pub fn render(chrome: &Chrome, enrollment: &Enrollment) -> Markup {
    let live = html! {
        @if let Some(pending) = &enrollment.pending {
            (pending_section(chrome, pending))
        }
        @if let Some(tokens) = &enrollment.tokens {
            (tokens_section(chrome, tokens))
        }
    };
    let content = html! {
        // Outside the live region: an update must not take the secret
        // away before it was copied.
        @if let Some(created) = &enrollment.created {
            (created_panel(chrome.now, created))
        }
        (parts::live("enrollment", &["enrollment"], &enrollment.url, live))
        @if enrollment.tokens.is_some() {
            (token_form(chrome, &enrollment.form))
        }
    };
    page(chrome, "Enrollment", content)
}

fn pending_section(chrome: &Chrome, pending: &[PendingHost]) -> Markup {
    html! {
        section.panel {
            h2 { "Pending hosts" }
            @if pending.is_empty() {
                (parts::empty(
                    "No hosts are waiting for approval",
                    html! {
                        "Hosts enrolled with a token that does not approve at once wait here. Enroll one with "
                        code { "muster-agent enroll" } "."
                    },
                ))
            } @else {
                table.pending {
                    thead { tr { th { "Host" } th { "Facts" } th { "Enrolled" } th { "Token" } th { "Decision" } } }
                    tbody {
                        @for host in pending {
                            tr {
                                td { strong { (host.name) } br; span.muted.mono { (host.id) } }
                                td { (facts_summary(host)) }
                                td { (parts::time(chrome.now, host.enrolled_at)) }
                                td.mono { (host.token_id.as_deref().unwrap_or("–")) }
                                td {
                                    div.actions {
                                        form.inline method="post" action=(format!("/enrollment/hosts/{}/approve", host.id)) {
                                            (parts::csrf_field(&chrome.csrf))
                                            button type="submit" { "Approve" }
                                        }
                                        form.inline method="post" action=(format!("/enrollment/hosts/{}/reject", host.id)) {
                                            (parts::csrf_field(&chrome.csrf))
                                            button.danger type="submit" { "Reject" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn facts_summary(host: &PendingHost) -> Markup {
    let parts: Vec<&str> = [&host.os, &host.arch, &host.address]
        .into_iter()
        .filter_map(|fact| fact.as_deref())
        .collect();
    html! {
        @if parts.is_empty() {
            span.muted { "no facts reported" }
        } @else {
            (parts.join(" · "))
        }
    }
}

fn tokens_section(chrome: &Chrome, tokens: &[Token]) -> Markup {
    html! {
        section.panel {
            h2 { "Enrollment tokens" }
            @if tokens.is_empty() {
                (parts::empty(
                    "No enrollment tokens yet",
                    html! { "Create one below, or with " code { "muster token create" } "." },
                ))
            } @else {
                table.tokens {
                    thead { tr { th { "Token" } th { "State" } th { "Labels" } th.num { "Uses" } th { "Auto-approve" } th { "Expires" } th {} } }
                    tbody {
                        @for token in tokens {
                            tr {
                                td.mono { (token.id) }
                                td { (parts::badge(token.tone, token.state)) }
                                td { @if token.labels.is_empty() { span.muted { "none" } } @else { (token.labels) } }
                                td.num { (token.uses) " / " (token.max_uses) }
                                td { @if token.auto_approve { "yes" } @else { "no" } }
                                td { (parts::time(chrome.now, token.expires_at)) }
                                td {
                                    @if token.state != "revoked" {
                                        form.inline method="post" action=(format!("/enrollment/tokens/{}/revoke", token.id)) {
                                            (parts::csrf_field(&chrome.csrf))
                                            button.secondary type="submit" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn token_form(chrome: &Chrome, form: &TokenForm) -> Markup {
    html! {
        section.panel {
            h2 { "Create a token" }
            form.token-form method="post" action="/enrollment/tokens" {
                @if let Some(error) = &form.error {
                    p.notice.error role="alert" { (error) }
                }
                (parts::csrf_field(&chrome.csrf))
                label { "Labels (key=value, key=value)"
                    input type="text" name="labels" value=(form.labels) placeholder="role=web, site=fra1";
                }
                label { "Max uses"
                    input type="number" name="max_uses" min="1" value=(form.max_uses) required;
                }
                label { "Valid for (hours)"
                    input type="number" name="valid_for_hours" min="1" value=(form.valid_for_hours) required;
                }
                label.checkbox {
                    input type="checkbox" name="auto_approve" value="on" checked[form.auto_approve];
                    "Approve hosts at once"
                }
                button type="submit" { "Create token" }
            }
        }
    }
}

fn created_panel(now: i64, created: &Created) -> Markup {
    html! {
        section.panel.created-token role="status" {
            h2 { "Token " (created.id) " created" }
            p {
                "It allows " (created.max_uses)
                @if created.max_uses == 1 { " enrollment" } @else { " enrollments" }
                " and expires " (parts::time(now, created.expires_at)) ". "
                strong { "The token is shown only now:" }
                " copy it or the command below before you leave this page."
            }
            dl.facts {
                dt { "Token" }
                dd { code.secret { (created.secret) } }
            }
            p { "Enroll a host with:" }
            pre { code { (created.command) } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Section;

    fn chrome() -> Chrome {
        crate::layout::test_chrome(Section::Enrollment, "csrf-1")
    }

    #[test]
    fn sections_the_user_may_not_use_are_left_out() {
        let page = Enrollment {
            url: "/enrollment".into(),
            pending: Some(Vec::new()),
            tokens: None,
            created: None,
            form: TokenForm::default(),
        };
        let html = render(&chrome(), &page).into_string();
        assert!(html.contains("No hosts are waiting for approval"), "{html}");
        assert!(!html.contains("Enrollment tokens"), "{html}");
        assert!(!html.contains("/enrollment/tokens"), "{html}");
    }

    #[test]
    fn pending_hosts_get_approve_and_reject_forms_with_the_csrf_token() {
        let page = Enrollment {
            url: "/enrollment".into(),
            pending: Some(vec![PendingHost {
                id: "h1".into(),
                name: "web-04".into(),
                os: Some("debian".into()),
                arch: Some("x86_64".into()),
                address: Some("10.0.0.4/24".into()),
                enrolled_at: 900,
                token_id: Some("t1".into()),
            }]),
            tokens: None,
            created: None,
            form: TokenForm::default(),
        };
        let html = render(&chrome(), &page).into_string();
        assert!(
            html.contains(r#"action="/enrollment/hosts/h1/approve""#),
            "{html}"
        );
        assert!(
            html.contains(r#"action="/enrollment/hosts/h1/reject""#),
            "{html}"
        );
        assert!(html.contains("debian · x86_64 · 10.0.0.4/24"), "{html}");
        assert_eq!(
            html.matches(r#"name="_csrf" value="csrf-1""#).count(),
            2 + 1
        );
    }

    #[test]
    fn a_created_token_is_shown_outside_the_live_region() {
        let page = Enrollment {
            url: "/enrollment".into(),
            pending: None,
            tokens: Some(Vec::new()),
            created: Some(Created {
                id: "abc".into(),
                secret: "mt_secret".into(),
                command: "muster-agent enroll --server http://c --token mt_secret --pubkey K"
                    .into(),
                max_uses: 2,
                expires_at: 2_000,
            }),
            form: TokenForm::default(),
        };
        let html = render(&chrome(), &page).into_string();
        let secret_at = html.find("mt_secret").unwrap();
        let region_at = html.find(r#"id="enrollment""#).unwrap();
        assert!(secret_at < region_at, "{html}");
        assert!(html.contains("2 enrollments"), "{html}");
    }
}
