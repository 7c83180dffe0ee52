//! The state dir: the generation never goes backwards, files are private,
//! and the report queue stays bounded and keeps a count of what it dropped.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use muster_agent::state::{Applied, QUEUE_MAX_REPORTS, StateDir};
use muster_schemas::protocol::{Report, RunStatus};

use crate::support::TempDir;

fn report(generation: u64) -> Report {
    Report {
        generation,
        commit: "abc".into(),
        status: RunStatus::InSync,
        started_at: 1,
        finished_at: 2,
        resources: Vec::new(),
        checks: Vec::new(),
        facts: None,
        metrics: None,
    }
}

#[test]
fn stored_generation_never_goes_backwards() {
    let dir = TempDir::new("state-generation");
    let state = StateDir::open(&dir.path().join("state")).unwrap();
    assert_eq!(state.applied().unwrap().generation, 0);
    let applied = |generation| Applied {
        generation,
        commit: format!("c{generation}"),
    };
    state.store_applied(&applied(5)).unwrap();
    state.store_applied(&applied(3)).unwrap();
    assert_eq!(state.applied().unwrap(), applied(5));
    state.store_applied(&applied(6)).unwrap();
    assert_eq!(state.applied().unwrap(), applied(6));

    let mode = |path: &std::path::Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(state.path()), 0o700);
    assert_eq!(mode(&state.path().join("generation")), 0o600);
    // No temp file is left behind.
    let names: Vec<_> = fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn report_queue_is_bounded_and_counts_drops() {
    let dir = TempDir::new("state-queue");
    let state = StateDir::open(&dir.path().join("state")).unwrap();
    for generation in 0..(QUEUE_MAX_REPORTS as u64 + 7) {
        state.enqueue(&report(generation)).unwrap();
    }
    let queued = state.queued().unwrap();
    assert_eq!(queued.len(), QUEUE_MAX_REPORTS);
    assert_eq!(state.dropped().unwrap(), 7);
    // The oldest were dropped; the rest are in order.
    let first: Report = serde_json::from_slice(&state.read_queued(&queued[0]).unwrap()).unwrap();
    assert_eq!(first.generation, 7);
    state.remove_queued(&queued[0]).unwrap();
    assert_eq!(state.queued().unwrap().len(), QUEUE_MAX_REPORTS - 1);
}
