//! `muster quickstart` as a newcomer runs it: the real binary, its own
//! controller and real agent processes; a commit to the printed repo
//! converges the matching hosts; a bad commit is rejected with its
//! diagnostics; SIGTERM stops everything; a second run resumes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::TempDir;
use crate::support::agent::agent_binary;

/// A running `muster quickstart` whose output is collected line by line.
struct Quickstart {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Quickstart {
    fn start(dir: &Path) -> Quickstart {
        let mut child = Command::new(env!("CARGO_BIN_EXE_muster"))
            .args([
                "quickstart",
                "--listen",
                "127.0.0.1:0",
                "--web",
                "2",
                "--db",
                "1",
            ])
            .arg("--dir")
            .arg(dir)
            .arg("--agent")
            .arg(agent_binary())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("muster quickstart starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                collected.lock().unwrap().push(line);
            }
        });
        Quickstart { child, lines }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a printed line satisfies `matches`; returns it. On
    /// failure the output so far is shown.
    fn wait_for_line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| matches(l)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "quickstart exited ({status}) while waiting for {what}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; the output so far:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a managed file of a host holds `text`.
    fn wait_for_file(&mut self, dir: &Path, host: &str, path: &str, text: &str) {
        let file = managed(dir, host, path);
        self.wait_for_line(&format!("{host}'s {path} to hold `{text}`"), |_| {
            std::fs::read_to_string(&file).is_ok_and(|content| content.contains(text))
        });
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = wait("quickstart to exit", || self.child.try_wait().unwrap());
        assert!(
            exit.success(),
            "quickstart exited with {exit}:\n{}",
            self.output()
        );
        // The reader thread sees the end of the output once the process is gone.
        wait("the last lines", || {
            self.output().contains("stopped.").then_some(())
        });
        self.output()
    }
}

impl Drop for Quickstart {
    /// A failed test still stops the quickstart with SIGTERM, so that it
    /// stops its agents; SIGKILL only if it does not exit.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How long to wait for anything before the test fails: generous, for
/// busy machines; not a performance assertion.
const WAIT_LIMIT: Duration = Duration::from_secs(90);

/// Polls `check` until it returns `Some`; panics after a generous
/// deadline so that a broken test fails rather than hangs (not a
/// performance assertion).
fn wait<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `muster-agent run` processes whose root lies beneath `dir`, from /proc.
fn agents_running_beneath(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains("muster-agent run") && cmdline.contains(&needle))
        .collect()
}

/// Commits the work tree of `repo` on its current branch, as `git commit -a` would.
fn commit_all(repo: &Path, message: &str) {
    let repo = git2::Repository::open(repo).unwrap();
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let parent = repo.head().unwrap().peel_to_commit().unwrap();
    let signature = git2::Signature::now("Quinn Reviewer", "quinn@example.com").unwrap();
    repo.commit(
        Some("HEAD"),
        &signature,
        &signature,
        message,
        &tree,
        &[&parent],
    )
    .unwrap();
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "`{from}` is not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn managed(dir: &Path, host: &str, path: &str) -> PathBuf {
    dir.join("agents")
        .join(host)
        .join("root")
        .join(path.trim_start_matches('/'))
}

/// Whether a printed line is a report of `host` at `generation`:
/// `HH:MM:SS  web-01   generation 2 (c4c555eb33): …`.
fn is_report(line: &str, host: &str, generation: u64) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.len() > 4
        && words[1] == host
        && words[2] == "generation"
        && words[3] == generation.to_string()
}

const SITE: &str = "/etc/nginx/sites-available/shop.conf";

#[test]
fn quickstart_converges_commits_and_stops_cleanly() {
    let temp = TempDir::new("quickstart");
    let dir = temp.path().join("qs");
    let repo = dir.join("fleet-repo");

    let mut quickstart = Quickstart::start(&dir);
    quickstart.wait_for_line("the ready line", |line| line.starts_with("Ready."));
    let output = quickstart.output();
    assert!(
        output.contains("a new Git repo holding the example fleet"),
        "{output}"
    );
    assert!(
        output.contains("enrolled     web-01, web-02, db-01"),
        "{output}"
    );
    assert!(output.contains("approved"), "{output}");
    for host in ["web-01", "web-02", "db-01"] {
        quickstart.wait_for_line(&format!("{host} applying generation 1"), |line| {
            is_report(line, host, 1) && line.ends_with("→ in_sync")
        });
    }
    let site = std::fs::read_to_string(managed(&dir, "web-01", SITE)).unwrap();
    assert!(site.contains("listen 80;"), "{site}");
    assert!(
        !managed(&dir, "db-01", SITE).exists(),
        "db hosts get no nginx site"
    );
    let db_motd = std::fs::read(managed(&dir, "db-01", "/etc/motd")).unwrap();

    // What the printed instructions say: edit, commit, watch.
    edit(
        &repo.join("policies/nginx.yaml"),
        "listen_port: 80",
        "listen_port: 8080",
    );
    commit_all(&repo, "Move the shop to port 8080");
    quickstart.wait_for_line("the commit deployed", |line| {
        line.contains(
            "deployed: \"Move the shop to port 8080\" by Quinn Reviewer; 2 hosts got a new bundle",
        )
    });
    for host in ["web-01", "web-02"] {
        quickstart.wait_for_file(&dir, host, SITE, "listen 8080;");
        quickstart.wait_for_line(&format!("{host} generation 2"), |line| {
            is_report(line, host, 2) && line.contains(&format!("changed file:{SITE}"))
        });
    }
    assert_eq!(
        std::fs::read(managed(&dir, "db-01", "/etc/motd")).unwrap(),
        db_motd,
        "the db host is untouched"
    );

    // A bad commit is rejected with its diagnostics; the hosts keep theirs.
    edit(
        &repo.join("policies/nginx.yaml"),
        "groups: [web]",
        "groups: [webb]",
    );
    commit_all(&repo, "Target a typo");
    let rejected = quickstart.wait_for_line("the rejection", |line| {
        line.contains("REJECTED: \"Target a typo\"")
    });
    assert!(
        rejected.contains("nothing changed on the hosts"),
        "{rejected}"
    );
    quickstart.wait_for_line("the diagnostic", |line| {
        line.trim_start().starts_with("policies/nginx.yaml:") && line.contains("`webb`")
    });

    let output = quickstart.stop();
    assert!(
        output.contains("stopping the agents and the controller"),
        "{output}"
    );
    assert!(
        agents_running_beneath(&dir).is_empty(),
        "agents left running: {:?}",
        agents_running_beneath(&dir)
    );

    // A quickstart killed with SIGKILL cannot stop its agents; the next
    // run stops the ones it left.
    let mut killed = Quickstart::start(&dir);
    killed.wait_for_line("the ready line", |line| line.starts_with("Ready."));
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    assert_eq!(agents_running_beneath(&dir).len(), 3, "the orphans");

    // A second run resumes with the same repo and hosts. It listens on
    // another port (port 0 again), so the hosts enroll again as new host
    // ids, and their agents must take generation 1 of the new ids though
    // they applied generation 2 of the old ones.
    let mut again = Quickstart::start(&dir);
    again.wait_for_line("the ready line", |line| line.starts_with("Ready."));
    let output = again.output();
    assert!(output.contains("kept from an earlier run"), "{output}");
    assert!(
        output.contains("enrolled     web-01, web-02, db-01"),
        "{output}"
    );
    assert_eq!(
        output
            .matches("left running by an earlier quickstart")
            .count(),
        3,
        "{output}"
    );
    assert_eq!(agents_running_beneath(&dir).len(), 3, "only the new agents");
    edit(
        &repo.join("policies/nginx.yaml"),
        "groups: [webb]",
        "groups: [web]",
    );
    edit(
        &repo.join("policies/nginx.yaml"),
        "listen_port: 8080",
        "listen_port: 8081",
    );
    commit_all(&repo, "Fix the typo, move to 8081");
    for host in ["web-01", "web-02"] {
        again.wait_for_file(&dir, host, SITE, "listen 8081;");
    }
    again.stop();
    assert!(agents_running_beneath(&dir).is_empty());
}
