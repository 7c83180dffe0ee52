//! The diagnostics corpus: every directory under `tests/corpus/` is a small
//! fleet repo with mistakes, and its `expected.txt` holds the exact report
//! of `muster validate`. Run with `UPDATE_EXPECT=1` to rewrite the expected
//! files after an intended change, then review the diff.

use std::fs;
use std::path::{Path, PathBuf};

use muster_controller::commands::validate::render_text;
use muster_controller::repo;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(corpus_dir())
        .expect("tests/corpus exists")
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_case_reports_exactly_its_expected_diagnostics() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let validation = repo::read_dir(&case).expect("case is readable").validate();
        let actual = render_text(&validation);
        let expected_path = case.join("expected.txt");
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if validation.model.is_some() {
            failures.push(format!(
                "{}: the case is valid, but corpus cases must have errors",
                case.display()
            ));
        }
        if actual != expected {
            if update {
                fs::write(&expected_path, &actual).expect("expected.txt is writable");
            } else {
                failures.push(format!(
                    "{}:\n--- expected\n{expected}--- actual\n{actual}",
                    case.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus case(s) differ (run with UPDATE_EXPECT=1 to accept):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_corpus_has_at_least_thirty_cases() {
    let n_cases = cases().len();
    assert!(n_cases >= 30, "only {n_cases} corpus cases");
}
