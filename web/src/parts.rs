//! Small pieces every page uses: times, status badges, empty states,
//! live regions and pagination links.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

/// An exact time as shown on hover: `2026-11-29 21:19:15 UTC`.
pub fn exact_time(seconds: i64) -> String {
    DateTime::<Utc>::from_timestamp(seconds, 0).map_or_else(
        || seconds.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// How long ago `then` was, relative to `now`: `just now`, `42 s ago`,
/// `3 min ago`, `5 h ago`, `2 d ago`; future times read `in 3 min`.
pub fn relative(now: i64, then: i64) -> String {
    let delta = now - then;
    let magnitude = delta.unsigned_abs();
    let amount = match magnitude {
        0..=4 => return "just now".into(),
        5..=59 => format!("{magnitude} s"),
        60..=3_599 => format!("{} min", magnitude / 60),
        3_600..=86_399 => format!("{} h", magnitude / 3_600),
        _ => format!("{} d", magnitude / 86_400),
    };
    if delta >= 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// A time shown relative to now, with the exact time on hover; a script
/// keeps the relative text fresh between updates.
pub fn time(now: i64, then: i64) -> Markup {
    let iso = DateTime::<Utc>::from_timestamp(then, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    html! {
        time datetime=(iso) title=(exact_time(then)) data-relative { (relative(now, then)) }
    }
}

/// An optional time; `never` (or `text`) when there is none.
pub fn maybe_time(now: i64, then: Option<i64>, text: &str) -> Markup {
    match then {
        Some(then) => time(now, then),
        None => html! { span.muted { (text) } },
    }
}

/// The tone of a status: the colour of its badge. Every badge also
/// carries its text, so colour is never the only signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
    Neutral,
    Busy,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Good => "badge good",
            Tone::Warn => "badge warn",
            Tone::Bad => "badge bad",
            Tone::Neutral => "badge neutral",
            Tone::Busy => "badge busy",
        }
    }
}

/// A status badge: a coloured pill with its label.
pub fn badge(tone: Tone, label: &str) -> Markup {
    html! { span class=(tone.class()) { (label) } }
}

/// What an empty list says: why it is empty and what to do next.
pub fn empty(message: &str, next_step: Markup) -> Markup {
    html! {
        div.empty {
            p { (message) }
            p.hint { (next_step) }
        }
    }
}

/// The first 10 hex digits of a commit id.
pub fn short_commit(id: &str) -> &str {
    id.get(..10).unwrap_or(id)
}

/// A region that re-renders itself when the event stream names one of
/// `topics`: htmx fetches `url` (the page it is on, with its query) and
/// swaps in the element with the same `id` from the answer. Without
/// JavaScript it is a plain `div`.
pub fn live(id: &str, topics: &[&str], url: &str, content: Markup) -> Markup {
    let trigger = topics
        .iter()
        .map(|topic| format!("sse:{topic}"))
        .collect::<Vec<_>>()
        .join(", ");
    html! {
        div id=(id) hx-get=(url) hx-trigger=(trigger) hx-select=(format!("#{id}"))
            hx-swap="outerHTML" {
            (content)
        }
    }
}

/// Previous / next links and where the page is: `101–200 of 10,000`.
/// `href(page)` makes the link of a page (counted from 1).
pub fn pagination(
    page: usize,
    per_page: usize,
    total: usize,
    href: impl Fn(usize) -> String,
) -> Markup {
    let pages = total.div_ceil(per_page).max(1);
    let first = if total == 0 {
        0
    } else {
        (page - 1) * per_page + 1
    };
    let last = (page * per_page).min(total);
    html! {
        nav.pagination aria-label="pages" {
            @if page > 1 {
                a rel="prev" href=(href(page - 1)) { "← Previous" }
            }
            span { (thousands(first)) "–" (thousands(last)) " of " (thousands(total)) }
            @if page < pages {
                a rel="next" href=(href(page + 1)) { "Next →" }
            }
        }
    }
}

/// `10000` as `10,000`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A percentage of `part` in `whole`, `–` when there is no whole.
pub fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        "–".into()
    } else {
        format!("{:.0} %", part as f64 * 100.0 / whole as f64)
    }
}

/// The hidden CSRF field of a mutating form.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="_csrf" value=(token); }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(100, 100), "just now");
        assert_eq!(relative(100, 58), "42 s ago");
        assert_eq!(relative(1_000, 800), "3 min ago");
        assert_eq!(relative(20_000, 0), "5 h ago");
        assert_eq!(relative(200_000, 0), "2 d ago");
        assert_eq!(relative(0, 180), "in 3 min");
    }

    #[test]
    fn exact_times_are_utc() {
        assert_eq!(exact_time(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn big_numbers_get_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn pagination_says_where_the_page_is() {
        let html = pagination(2, 100, 250, |page| format!("/hosts?page={page}")).into_string();
        assert!(html.contains("101–200 of 250"), "{html}");
        assert!(html.contains(r#"href="/hosts?page=1""#));
        assert!(html.contains(r#"href="/hosts?page=3""#));
        let html = pagination(1, 100, 0, |page| format!("?page={page}")).into_string();
        assert!(
            html.contains("0–0 of 0") && !html.contains("href"),
            "{html}"
        );
    }

    #[test]
    fn live_regions_name_their_topics_and_select_themselves() {
        let html = live(
            "hosts-table",
            &["hosts", "reports"],
            "/hosts?q=web",
            html! { "x" },
        )
        .into_string();
        assert!(
            html.contains(r#"hx-trigger="sse:hosts, sse:reports""#),
            "{html}"
        );
        assert!(html.contains(r##"hx-select="#hosts-table""##), "{html}");
        assert!(html.contains(r#"hx-get="/hosts?q=web""#), "{html}");
    }
}
