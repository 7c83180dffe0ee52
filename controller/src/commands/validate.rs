//! `muster validate`: check a fleet repo and report every problem.

use std::io::Write;
use std::process::ExitCode;

use muster_schemas::{Severity, Validation};
use serde::Serialize;

use crate::Error;
use crate::cli::{Format, ValidateArgs};
use crate::repo;

pub fn run(args: &ValidateArgs) -> Result<ExitCode, Error> {
    let validation = repo::read_dir(&args.path)?.validate();
    let output = match args.format {
        Format::Text => render_text(&validation),
        Format::Json => render_json(&validation),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|err| Error::io("cannot write the report", err))?;
    Ok(if validation.model.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Compiler-style text: one problem per line (hints indented below), then
/// a summary line.
pub fn render_text(validation: &Validation) -> String {
    let mut text = String::new();
    for diagnostic in &validation.diagnostics {
        text.push_str(&diagnostic.to_string());
        text.push('\n');
    }
    let n_errors = validation.n_errors();
    let n_warnings = validation.diagnostics.len() - n_errors;
    let checked = format!(
        "{} {}, {} {}",
        validation.n_files,
        plural(validation.n_files, "file", "files"),
        validation.n_documents,
        plural(validation.n_documents, "document", "documents"),
    );
    if n_errors == 0 {
        text.push_str(&format!("ok: {checked} valid"));
    } else {
        let n_files_with_errors = validation
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.file.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        text.push_str(&format!(
            "error: {n_errors} {} in {n_files_with_errors} {} ({checked} checked)",
            plural(n_errors, "problem", "problems"),
            plural(n_files_with_errors, "file", "files"),
        ));
    }
    if n_warnings > 0 {
        text.push_str(&format!(
            ", {n_warnings} {}",
            plural(n_warnings, "warning", "warnings")
        ));
    }
    text.push('\n');
    text
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// The JSON report of `--format json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    valid: bool,
    files: usize,
    documents: usize,
    errors: usize,
    warnings: usize,
    diagnostics: &'a [muster_schemas::Diagnostic],
}

pub fn render_json(validation: &Validation) -> String {
    let errors = validation.n_errors();
    let report = Report {
        valid: validation.model.is_some(),
        files: validation.n_files,
        documents: validation.n_documents,
        errors,
        warnings: validation
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count(),
        diagnostics: &validation.diagnostics,
    };
    let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
    text.push('\n');
    text
}
