//! Real `muster-agent` processes for end-to-end tests: each on its own
//! config, state dir and sandbox root in a temp dir, run once at a time or
//! left running; and snapshots of a root, to prove that nothing changed.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::harness::Harness;
use crate::support::TempDir;

/// The `muster-agent` binary of this build. `cargo test --workspace` (the
/// README's test command) builds it beside `muster`.
pub(crate) fn agent_binary() -> PathBuf {
    let agent = Path::new(env!("CARGO_BIN_EXE_muster")).with_file_name("muster-agent");
    assert!(
        agent.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, or `cargo build -p muster-agent` first",
        agent.display()
    );
    agent
}

/// One sandboxed agent: `agent.yaml`, `state/` and `root/` in a temp dir
/// of its own, removed on drop. The state dir lies beside the root, never
/// beneath it, as the agent demands.
pub(crate) struct TestAgent {
    dir: TempDir,
}

impl TestAgent {
    pub(crate) fn new(name: &str) -> TestAgent {
        let dir = TempDir::new(&format!("agent-{name}"));
        fs::create_dir_all(dir.path().join("root")).unwrap();
        TestAgent { dir }
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A managed path (`/etc/motd`) beneath the root.
    pub(crate) fn path(&self, managed: &str) -> PathBuf {
        self.root().join(managed.trim_start_matches('/'))
    }

    /// A managed file's content, if it exists.
    pub(crate) fn file(&self, managed: &str) -> Option<String> {
        fs::read_to_string(self.path(managed)).ok()
    }

    /// A managed file's permission bits.
    pub(crate) fn mode(&self, managed: &str) -> u32 {
        fs::metadata(self.path(managed))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    /// Changes a managed file by hand: new content and mode, as drift.
    pub(crate) fn tamper(&self, managed: &str, content: &str, mode: u32) {
        let path = self.path(managed);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// What the state dir records as applied: the `generation` file's
    /// bytes, then `bundle.json`'s.
    pub(crate) fn applied_state(&self) -> (Vec<u8>, Vec<u8>) {
        let state = self.state_dir();
        (
            fs::read(state.join("generation")).unwrap_or_default(),
            fs::read(state.join("bundle.json")).unwrap_or_default(),
        )
    }

    /// The last applied generation, from the state dir (0 for none).
    pub(crate) fn applied_generation(&self) -> u64 {
        let Ok(text) = fs::read_to_string(self.state_dir().join("generation")) else {
            return 0;
        };
        let applied: serde_json::Value = serde_json::from_str(&text).unwrap();
        applied["generation"].as_u64().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(agent_binary());
        command
            .args(args)
            .args([
                "--config",
                self.dir.path().join("agent.yaml").to_str().unwrap(),
            ])
            .args(["--state-dir", self.state_dir().to_str().unwrap()]);
        command
    }

    /// Runs one `muster-agent` command to its end. It runs on the blocking
    /// pool, so that the controller in this process keeps serving it.
    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        command.env("MUSTER_LOG", "warn");
        tokio::task::spawn_blocking(move || command.output().expect("muster-agent runs"))
            .await
            .unwrap()
    }

    /// Enrolls with the harness's controller.
    pub(crate) async fn enroll(&self, harness: &Harness, token: &str, name: &str) {
        self.enroll_through(&harness.url, harness, token, name)
            .await;
    }

    /// Enrolls with the harness's controller, reached at `server` (a proxy
    /// in front of it), which every later request goes to as well.
    pub(crate) async fn enroll_through(
        &self,
        server: &str,
        harness: &Harness,
        token: &str,
        name: &str,
    ) {
        let output = self
            .run(&[
                "enroll",
                "--server",
                server,
                "--token",
                token,
                "--pubkey",
                &harness.public_key,
                "--name",
                name,
            ])
            .await;
        assert!(output.status.success(), "{}", stderr(&output));
    }

    /// `muster-agent run --once` on the root; the caller judges the outcome.
    pub(crate) async fn run_once(&self) -> Output {
        let root = self.root();
        self.run(&["run", "--once", "--root", root.to_str().unwrap()])
            .await
    }

    /// `muster-agent run --once`, which must succeed.
    pub(crate) async fn converge_once(&self) {
        let output = self.run_once().await;
        assert!(output.status.success(), "{}", stderr(&output));
    }

    /// Starts `muster-agent run` on the root, left running until the
    /// returned handle is dropped. It logs at `info` to a file beside the
    /// root.
    pub(crate) fn spawn(&self) -> RunningAgent {
        let log = self.dir.path().join("agent.log");
        let root = self.root();
        let child = self
            .command(&["run", "--root", root.to_str().unwrap()])
            .env("MUSTER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("muster-agent starts");
        RunningAgent { child, log }
    }
}

/// The agent's log, for assertion messages.
pub(crate) fn stderr(output: &Output) -> String {
    format!(
        "exit {:?}; stderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A long-lived `muster-agent run` process, killed on drop so that a
/// failing test leaves no process behind.
pub(crate) struct RunningAgent {
    child: Child,
    log: PathBuf,
}

impl RunningAgent {
    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What the agent logged so far.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        // Only this child, by its own handle; it may have exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One entry of a [`RootSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File { mode: u32, bytes: Vec<u8> },
    Directory { mode: u32 },
    Symlink { target: PathBuf },
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::File { mode, bytes } => {
                write!(f, "file {mode:04o} {:?}", String::from_utf8_lossy(bytes))
            }
            Entry::Directory { mode } => write!(f, "directory {mode:04o}"),
            Entry::Symlink { target } => write!(f, "symlink to {}", target.display()),
        }
    }
}

/// Every path beneath a root with its kind, mode and bytes (or link
/// target): two snapshots are equal when nothing beneath the root changed,
/// byte for byte and mode for mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RootSnapshot(BTreeMap<PathBuf, Entry>);

impl RootSnapshot {
    pub(crate) fn take(root: &Path) -> RootSnapshot {
        let mut entries = BTreeMap::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let mode = meta.permissions().mode() & 0o7777;
                let found = if meta.file_type().is_symlink() {
                    Entry::Symlink {
                        target: fs::read_link(&path).unwrap(),
                    }
                } else if meta.is_dir() {
                    pending.push(path.clone());
                    Entry::Directory { mode }
                } else {
                    Entry::File {
                        mode,
                        bytes: fs::read(&path).unwrap(),
                    }
                };
                entries.insert(path.strip_prefix(root).unwrap().to_path_buf(), found);
            }
        }
        RootSnapshot(entries)
    }

    /// Panics naming every path that differs from `earlier`.
    pub(crate) fn assert_same_as(&self, earlier: &RootSnapshot, what: &str) {
        let mut differences = Vec::new();
        for (path, before) in &earlier.0 {
            match self.0.get(path) {
                None => differences.push(format!("{}: removed (was {before})", path.display())),
                Some(now) if now != before => {
                    differences.push(format!("{}: was {before}, now {now}", path.display()))
                }
                Some(_) => {}
            }
        }
        for (path, now) in &self.0 {
            if !earlier.0.contains_key(path) {
                differences.push(format!("{}: created ({now})", path.display()));
            }
        }
        assert!(
            differences.is_empty(),
            "{what} changed the root:\n{}",
            differences.join("\n")
        );
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}
