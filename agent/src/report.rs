//! Building reports from converge runs, and printing them for people.

use muster_schemas::bundle::Bundle;
use muster_schemas::protocol::{CheckReport, Report, ResourceReport, ResourceStatus, RunStatus};

/// The status of a run: failing when a resource failed, drifted when one
/// differs and was left alone, else in sync (changed resources were
/// repaired, so the host matches).
pub fn run_status(resources: &[ResourceReport]) -> RunStatus {
    if resources.iter().any(|r| r.status == ResourceStatus::Failed) {
        RunStatus::Failing
    } else if resources
        .iter()
        .any(|r| r.status == ResourceStatus::Drifted)
    {
        RunStatus::Drifted
    } else {
        RunStatus::InSync
    }
}

/// A report of a run over `bundle`, without facts and metrics.
pub fn report(
    bundle: &Bundle,
    status: RunStatus,
    started_at: i64,
    finished_at: i64,
    resources: Vec<ResourceReport>,
    checks: Vec<CheckReport>,
) -> Report {
    Report {
        generation: bundle.generation,
        commit: bundle.commit.clone(),
        status,
        started_at,
        finished_at,
        resources,
        checks,
        facts: None,
        metrics: None,
    }
}

/// The word for a resource status, as the API spells it.
pub fn status_word(status: ResourceStatus) -> &'static str {
    match status {
        ResourceStatus::InSync => "in_sync",
        ResourceStatus::Changed => "changed",
        ResourceStatus::Drifted => "drifted",
        ResourceStatus::Failed => "failed",
        ResourceStatus::Skipped => "skipped",
    }
}

/// One line per resource (status, id, message), each diff indented below
/// it, then a summary line.
pub fn render(resources: &[ResourceReport]) -> String {
    let mut out = String::new();
    for resource in resources {
        out.push_str(&format!(
            "{:<8} {}",
            status_word(resource.status),
            resource.id
        ));
        if let Some(message) = &resource.message {
            out.push_str(": ");
            out.push_str(message);
        }
        out.push('\n');
        if let Some(diff) = &resource.diff {
            for line in diff.lines() {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let count = |status| resources.iter().filter(|r| r.status == status).count();
    out.push_str(&format!(
        "{} resources: {} in sync, {} changed, {} drifted, {} failed, {} skipped\n",
        resources.len(),
        count(ResourceStatus::InSync),
        count(ResourceStatus::Changed),
        count(ResourceStatus::Drifted),
        count(ResourceStatus::Failed),
        count(ResourceStatus::Skipped),
    ));
    out
}
