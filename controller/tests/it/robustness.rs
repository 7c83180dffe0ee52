//! Bad input never panics: thousands of mutated copies of the example
//! repo's files go through parsing and validation.

use std::collections::BTreeSet;
use std::path::Path;

use muster_controller::repo;

/// A small deterministic generator, so that a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SIGNIFICANT: &[u8] = b":-[]{}&*!|>'\"#\n\t ,?%@`0~";

fn mutate(bytes: &[u8], rng: &mut Lcg) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if at < out.len() => {
                out.remove(at);
            }
            1 => out.insert(at.min(out.len()), SIGNIFICANT[rng.below(SIGNIFICANT.len())]),
            2 => {
                let end = (at + rng.below(40)).min(out.len());
                let chunk = out[at.min(end)..end].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, chunk);
            }
            3 if at < out.len() => out[at] = rng.next() as u8,
            _ => out.truncate(at),
        }
    }
    out
}

#[test]
fn mutated_fleet_files_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo");
    let snapshot = repo::read_dir(&root).expect("the example repo is readable");
    let repo_files: BTreeSet<String> = snapshot.repo_files.clone();
    let originals: Vec<(String, Vec<u8>)> = repo_files
        .iter()
        .filter(|path| muster_schemas::is_fleet_file(path))
        .map(|path| {
            (
                path.clone(),
                std::fs::read(root.join(path)).expect("readable"),
            )
        })
        .collect();
    let parsed: Vec<_> = originals
        .iter()
        .map(|(path, bytes)| muster_schemas::parse_file(path, bytes))
        .collect();
    let mut rng = Lcg(0x5eed);
    let mut n_invalid = 0;
    for round in 0..3_000 {
        let which = round % originals.len();
        let (path, bytes) = &originals[which];
        let mut files = parsed.clone();
        files[which] = muster_schemas::parse_file(path, &mutate(bytes, &mut rng));
        let validation = muster_schemas::validate(files, &repo_files);
        if validation.model.is_none() {
            n_invalid += 1;
            assert!(
                validation.diagnostics.iter().any(|d| d.is_error()),
                "round {round}: invalid without an error"
            );
        }
    }
    // The mutations must actually break files, or this test proves nothing.
    assert!(
        n_invalid > 1_000,
        "only {n_invalid} of 3000 mutations were invalid"
    );
}
