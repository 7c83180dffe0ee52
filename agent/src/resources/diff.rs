//! Unified diffs of file content for reports: made with `similar`, bounded
//! in size and in the time spent computing them, and redacted for secrets.

use std::time::Duration;

use similar::TextDiff;

/// Largest diff carried in a report, in bytes; a longer one is cut at a
/// line and marked.
pub const DIFF_LIMIT: usize = 16 * 1024;

/// What a secret file's diff says instead of its content.
pub const REDACTED: &str = "(secret content: diff redacted)";

/// Largest file read to make a diff; a larger one is described by size.
pub(crate) const DIFF_READ_LIMIT: u64 = 1024 * 1024;

/// `similar` falls back to a coarser diff after this long, so a
/// pathological file cannot stall a run.
const DIFF_TIMEOUT: Duration = Duration::from_millis(200);

/// One side of a diff.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side<'a> {
    /// The file does not exist (created or removed).
    Missing,
    /// The file's bytes.
    Bytes(&'a [u8]),
    /// The file exists but is larger than [`DIFF_READ_LIMIT`].
    TooLarge(u64),
}

/// The unified diff from `old` to `new` of the file at `path`.
pub(crate) fn content_diff(path: &str, old: Side<'_>, new: Side<'_>, secret: bool) -> String {
    let label = |side: Side<'_>| match side {
        Side::Missing => "/dev/null".to_string(),
        _ => path.to_string(),
    };
    let header = format!("--- {}\n+++ {}\n", label(old), label(new));
    if secret {
        return format!("{header}{REDACTED}\n");
    }
    let as_text = |side: Side<'_>| -> Result<String, String> {
        match side {
            Side::Missing => Ok(String::new()),
            Side::Bytes(bytes) => std::str::from_utf8(bytes)
                .map(str::to_string)
                .map_err(|_| format!("{} bytes of binary content", bytes.len())),
            Side::TooLarge(len) => Err(format!("{len} bytes, too large to diff")),
        }
    };
    match (as_text(old), as_text(new)) {
        (Ok(old_text), Ok(new_text)) => {
            let diff = TextDiff::configure()
                .timeout(DIFF_TIMEOUT)
                .diff_lines(&old_text, &new_text);
            let body = diff
                .unified_diff()
                .context_radius(3)
                .header(&label(old), &label(new))
                .to_string();
            if body.is_empty() {
                // Only a created or removed empty file has no hunks.
                return format!("{header}(empty file)\n");
            }
            bound(body)
        }
        (old_text, new_text) => {
            let describe = |side: Result<String, String>| match side {
                Ok(text) => format!("{} bytes of text", text.len()),
                Err(description) => description,
            };
            format!(
                "{header}(content differs: {} → {})\n",
                describe(old_text),
                describe(new_text)
            )
        }
    }
}

/// Cuts a diff to [`DIFF_LIMIT`] at a line boundary and says so.
fn bound(mut diff: String) -> String {
    if diff.len() <= DIFF_LIMIT {
        // A run's report holds a diff per changed file until it is sent:
        // no room to spare in each.
        diff.shrink_to_fit();
        return diff;
    }
    let mut cut = DIFF_LIMIT;
    while !diff.is_char_boundary(cut) {
        cut -= 1;
    }
    let cut = diff[..cut].rfind('\n').map_or(cut, |newline| newline + 1);
    format!(
        "{}… diff truncated ({} bytes in all)\n",
        &diff[..cut],
        diff.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_diff_with_headers() {
        let diff = content_diff(
            "/etc/motd",
            Side::Bytes(b"hello\nworld\n"),
            Side::Bytes(b"hello\nthere\n"),
            false,
        );
        assert_eq!(
            diff,
            "--- /etc/motd\n+++ /etc/motd\n@@ -1,2 +1,2 @@\n hello\n-world\n+there\n"
        );
        let created = content_diff("/etc/motd", Side::Missing, Side::Bytes(b"hi\n"), false);
        assert_eq!(
            created,
            "--- /dev/null\n+++ /etc/motd\n@@ -0,0 +1 @@\n+hi\n"
        );
        let empty = content_diff("/etc/empty", Side::Missing, Side::Bytes(b""), false);
        assert_eq!(empty, "--- /dev/null\n+++ /etc/empty\n(empty file)\n");
    }

    #[test]
    fn secrets_are_redacted() {
        let diff = content_diff(
            "/etc/secret",
            Side::Bytes(b"old-password\n"),
            Side::Bytes(b"new-password\n"),
            true,
        );
        assert_eq!(
            diff,
            "--- /etc/secret\n+++ /etc/secret\n(secret content: diff redacted)\n"
        );
        assert!(!diff.contains("password"));
    }

    #[test]
    fn binary_and_large_content_is_described() {
        let diff = content_diff("/f", Side::Bytes(&[0xff, 0xfe]), Side::Bytes(b"a\n"), false);
        assert!(
            diff.ends_with("(content differs: 2 bytes of binary content → 2 bytes of text)\n"),
            "{diff}"
        );
        let diff = content_diff("/f", Side::TooLarge(5_000_000), Side::Bytes(b"a\n"), false);
        assert!(diff.contains("5000000 bytes, too large to diff"), "{diff}");
    }

    #[test]
    fn long_diffs_are_cut_at_a_line() {
        let new: String = (0..5000).map(|n| format!("line {n}\n")).collect();
        let diff = content_diff("/f", Side::Missing, Side::Bytes(new.as_bytes()), false);
        assert!(diff.len() < DIFF_LIMIT + 100);
        assert!(
            diff.ends_with(" bytes in all)\n"),
            "{}",
            &diff[diff.len() - 80..]
        );
        let before_marker = diff.rsplit_once("… diff truncated").unwrap().0;
        assert!(before_marker.ends_with('\n'));
    }
}
