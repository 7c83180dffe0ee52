//! Diagnostics: one problem in a fleet repo, with where it is and what to do.

use std::fmt;

use serde::Serialize;

use crate::yaml::Location;

/// How bad a problem is. Errors make a commit invalid; warnings do not.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found in a fleet repo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Path of the file, relative to the fleet repo's root, with `/`.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// Where in the document, such as `resources[2].file.mode`; empty for
    /// the document itself or the whole file.
    pub path: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(
        file: &str,
        location: Location,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: file.to_string(),
            line: location.line,
            column: location.column,
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// A problem with a whole file (empty, too big, a link), reported at
    /// its start so that every line keeps the `file:line:col` shape.
    pub fn file_error(file: &str, message: impl Into<String>) -> Self {
        Diagnostic::error(file, Location::new(1, 1), "", message)
    }

    pub fn with_hint(mut self, hint: Option<impl Into<String>>) -> Self {
        self.hint = hint.map(Into::into);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The order diagnostics are printed in: by file, then position.
    pub fn sort_key(&self) -> (&str, u32, u32, &str, &str) {
        (
            &self.file,
            self.line,
            self.column,
            &self.path,
            &self.message,
        )
    }
}

impl fmt::Display for Diagnostic {
    /// Compiler style: `file:line:col: error: path: message`, then the hint
    /// indented on its own line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: ",
            self.file, self.line, self.column, self.severity
        )?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Sorts diagnostics for output and drops exact repeats.
pub fn sort(diagnostics: &mut Vec<Diagnostic>) {
    diagnostics.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    diagnostics.dedup();
}
