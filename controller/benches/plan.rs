//! Benchmark for the budget "`muster plan` for 1,000 hosts under 2 s in
//! release", and the same plan for 10,000 hosts.
//!
//! It commits `examples/fleet-repo` to a new git repository, then a change
//! to one policy (the nginx template, which reaches the `web` group, a
//! third of the hosts), and times `plan::build` between the two commits for
//! an inventory of 1,000 and of 10,000 hosts (roles web, db and app, three
//! operating systems), plus rendering the plan as text and as markdown.
//!
//! `cargo bench -p muster-controller --bench plan` runs one warm-up and
//! five measured runs per size and prints min / median / max. Without
//! `--bench` (as `cargo test --all-targets` runs it), it makes one plan for
//! 300 hosts as a smoke test, checking it but not timing it.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use git2::{Repository, Signature};
use muster_controller::commands::plan::{render_markdown, render_text};
use muster_controller::plan::{self, Inventory, InventoryHost};
use muster_controller::source::GitSource;

const SIZES: [usize; 2] = [1_000, 10_000];
const N_SMOKE_HOSTS: usize = 300;
const N_WARM_UP_RUNS: usize = 1;
const N_MEASURED_RUNS: usize = 5;
/// The budget for 1,000 hosts.
const BUDGET: Duration = Duration::from_secs(2);

const ROLES: [&str; 3] = ["web", "db", "app"];
const OSES: [(&str, &str); 3] = [("debian", "12"), ("ubuntu", "24.04"), ("rocky", "9")];

/// Writes every file of `dir` into `repo`'s index under its relative path.
fn add_dir(repo: &Repository, index: &mut git2::Index, root: &Path, dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("the example reads") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            add_dir(repo, index, root, &path);
        } else {
            let relative = path.strip_prefix(root).expect("inside the root");
            let bytes = std::fs::read(&path).expect("a file reads");
            add_file(repo, index, &relative.to_string_lossy(), &bytes);
        }
    }
}

fn add_file(repo: &Repository, index: &mut git2::Index, path: &str, bytes: &[u8]) {
    let blob = repo.blob(bytes).expect("a blob");
    let entry = git2::IndexEntry {
        ctime: git2::IndexTime::new(0, 0),
        mtime: git2::IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode: 0o100_644,
        uid: 0,
        gid: 0,
        file_size: 0,
        id: blob,
        flags: 0,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    };
    index.add(&entry).expect("the index takes the file");
}

fn commit(repo: &Repository, index: &mut git2::Index, message: &str) -> String {
    let tree = repo
        .find_tree(index.write_tree_to(repo).expect("a tree"))
        .expect("the tree");
    let signature = Signature::now("Bench", "bench@example.com").expect("a signature");
    let parent = repo.head().ok().and_then(|head| head.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(
        Some("HEAD"),
        &signature,
        &signature,
        message,
        &tree,
        &parents,
    )
    .expect("a commit")
    .to_string()
}

fn inventory(n_hosts: usize) -> Inventory {
    Inventory {
        version: plan::FORMAT_VERSION,
        hosts: (0..n_hosts)
            .map(|i| {
                let role = ROLES[i % ROLES.len()];
                let (os, os_version) = OSES[(i / ROLES.len()) % OSES.len()];
                let name = format!("{role}-{i:05}");
                InventoryHost {
                    id: format!("h-{i:05}"),
                    labels: [("role".to_string(), role.to_string())].into(),
                    facts: serde_json::json!({
                        "os": os, "os_version": os_version, "arch": "x86_64", "hostname": name,
                    })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                    name,
                }
            })
            .collect(),
    }
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let dir = std::env::temp_dir().join(format!("muster-bench-plan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let repo = Repository::init(&dir).expect("a repository");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo");
    let mut index = repo.index().expect("an index");
    add_dir(&repo, &mut index, &example, &example);
    let base = commit(&repo, &mut index, "The example fleet");
    let template = std::fs::read_to_string(example.join("files/nginx/shop.conf.tmpl"))
        .expect("the template reads");
    let changed = template.replacen(
        "    root /var/www/shop;\n",
        "    root /var/www/shop;\n    client_max_body_size 10m;\n",
        1,
    );
    assert_ne!(
        template, changed,
        "the template has the line the bench edits"
    );
    add_file(
        &repo,
        &mut index,
        "files/nginx/shop.conf.tmpl",
        changed.as_bytes(),
    );
    let head = commit(&repo, &mut index, "Raise the upload limit");
    let source = GitSource::open_local(&dir, None).expect("the repository opens");
    let now = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap();

    let sizes: Vec<usize> = if full {
        SIZES.to_vec()
    } else {
        vec![N_SMOKE_HOSTS]
    };
    for n_hosts in sizes {
        let inventory = inventory(n_hosts);
        let n_runs = if full {
            N_WARM_UP_RUNS + N_MEASURED_RUNS
        } else {
            1
        };
        let mut times = Vec::new();
        for run in 0..n_runs {
            let started = Instant::now();
            let plan = plan::build(&source, &base, &head, &inventory, now).expect("a plan");
            let text = render_text(&plan);
            let markdown = render_markdown(&plan);
            let elapsed = started.elapsed();
            if run == 0 {
                let n_web = inventory
                    .hosts
                    .iter()
                    .filter(|h| h.labels["role"] == "web")
                    .count();
                assert_eq!(plan.summary.hosts_total, n_hosts);
                assert_eq!(plan.summary.hosts_affected, n_web, "the web hosts change");
                assert_eq!(plan.summary.resources_changed, 1);
                println!(
                    "{n_hosts} hosts: {} affected in {} groups of hosts; text {:.1} KiB, markdown {:.1} KiB",
                    plan.summary.hosts_affected,
                    plan.host_changes.len(),
                    text.len() as f64 / 1024.0,
                    markdown.len() as f64 / 1024.0,
                );
            }
            if run >= N_WARM_UP_RUNS || !full {
                times.push(elapsed);
            }
        }
        if full {
            times.sort();
            let verdict = if n_hosts <= 1_000 {
                if times[times.len() / 2] < BUDGET {
                    " (within the 2 s budget)"
                } else {
                    " (OVER the 2 s budget)"
                }
            } else {
                ""
            };
            println!(
                "plan for {n_hosts} hosts: min {:.3} s, median {:.3} s, max {:.3} s{verdict}",
                times[0].as_secs_f64(),
                times[times.len() / 2].as_secs_f64(),
                times[times.len() - 1].as_secs_f64(),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
