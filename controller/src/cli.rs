//! The command line of `muster`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Muster: pull-based GitOps for Linux fleets.
#[derive(Debug, Parser)]
#[command(name = "muster", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a fleet repo and report every problem in it.
    ///
    /// Exits 0 when the repo is valid, 1 when it has errors, 2 when it
    /// cannot be read.
    Validate(ValidateArgs),
    /// Print the JSON Schema of fleet documents, for editors.
    Schema(SchemaArgs),
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The fleet repo's directory (or one fleet file).
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `file:line:col: error: …`, one problem per line, like a compiler.
    Text,
    /// One JSON document, for tools.
    Json,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The kind whose schema to print, such as `Policy` or `role-binding`;
    /// the schema of any document when not given.
    pub kind: Option<String>,
    /// Write every schema file into this directory instead of printing.
    #[arg(long, value_name = "DIR", conflicts_with = "kind")]
    pub write: Option<PathBuf>,
}
