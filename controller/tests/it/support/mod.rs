//! Helpers shared by the integration tests: temp dirs, real git repos,
//! real agent processes, a tampering proxy, the `muster` command line and
//! stored hosts.

pub(crate) mod agent;
pub(crate) mod cli;
pub(crate) mod dashboard;
pub(crate) mod git;
pub(crate) mod proxy;
pub(crate) mod webdriver;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use muster_controller::store::HostRecord;
use muster_schemas::protocol::HostState;

/// A host as enrollment stores it: pending, no labels, facts or reports.
pub(crate) fn pending_host(id: &str, name: &str) -> HostRecord {
    HostRecord {
        id: id.into(),
        name: name.into(),
        state: HostState::Pending,
        key: "00".repeat(32),
        labels: BTreeMap::new(),
        facts: serde_json::Map::new(),
        token_id: None,
        enrolled_at: 0,
        last_seen_at: None,
        applied_generation: 0,
        run_status: None,
    }
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("muster-it-{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("temp dir is creatable");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// The path as a command-line argument.
    pub(crate) fn arg(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }

    /// Writes a file, creating its directories.
    pub(crate) fn write(&self, relative: &str, bytes: impl AsRef<[u8]>) {
        let path = self.0.join(relative);
        fs::create_dir_all(path.parent().expect("file has a parent")).expect("parent is creatable");
        fs::write(path, bytes).expect("file is writable");
    }

    /// Replaces `from` by `to` in one file, which must contain it once.
    pub(crate) fn edit(&self, relative: &str, from: &str, to: &str) {
        let path = self.0.join(relative);
        let content = fs::read_to_string(&path).expect("file is readable");
        assert_eq!(
            content.matches(from).count(),
            1,
            "`{from}` must occur once in {relative}"
        );
        fs::write(path, content.replacen(from, to, 1)).expect("file is writable");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
