//! The agent's error type at the command boundary: every failure of a
//! command, with a message that says what to do, and a `metric_label()`.

use std::io;

use muster_schemas::bundle::BundleError;

/// Why an agent command failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The command line or a given value is wrong.
    #[error("{0}")]
    Usage(String),
    /// The config file is invalid or already exists.
    #[error("{0}")]
    Config(String),
    /// A file or directory could not be read or written.
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// The controller could not be reached, or answered with an error.
    #[error("{0}")]
    Http(String),
    /// A bundle was refused.
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleError),
}

impl AgentError {
    /// A short, stable name of the failure, for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AgentError::Usage(_) => "usage",
            AgentError::Config(_) => "config",
            AgentError::Io { .. } => "io",
            AgentError::Http(_) => "http",
            AgentError::Bundle(err) => err.metric_label(),
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> AgentError {
        let what = what.into();
        move |source| AgentError::Io { what, source }
    }
}
