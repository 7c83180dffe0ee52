//! The agent's state dir: the last applied generation, the last good bundle
//! and the queue of reports not yet delivered, all written atomically.
//!
//! Files in the state dir:
//!
//! - `generation`: `{"generation": N, "commit": "…"}` of the last bundle whose
//!   converge run was attempted. It only ever grows: [`StateDir::store_applied`]
//!   refuses to write a smaller number.
//! - `bundle.json`: that bundle as it was received (the `SignedBundle` JSON,
//!   signature included), so that the agent keeps enforcing it while the
//!   controller is unreachable, and re-verifies it with the pinned key when
//!   it starts.
//! - `reports/NNNNNNNNNNNNNNNNNNNN.json`: reports waiting to be sent, oldest
//!   first, and `reports/dropped`: how many were dropped to keep the queue
//!   bounded.
//!
//! Every write is a temp file in the same directory, fsynced, renamed over
//! the target, and the directory fsynced: after a crash a file is the old
//! one or the new one, never a part.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use muster_schemas::bundle::SignedBundle;
use muster_schemas::protocol::Report;
use serde::{Deserialize, Serialize};

/// The default state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/muster-agent";

/// At most this many reports wait in the queue; older ones are dropped.
pub const QUEUE_MAX_REPORTS: usize = 100;

/// At most this many bytes of reports wait in the queue.
pub const QUEUE_MAX_BYTES: u64 = 4 * 1024 * 1024;

const GENERATION_FILE: &str = "generation";
const BUNDLE_FILE: &str = "bundle.json";
const QUEUE_DIR: &str = "reports";
const DROPPED_FILE: &str = "dropped";

/// The last applied generation and its commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    pub generation: u64,
    pub commit: String,
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens the state dir, creating it (mode 0700) when missing. The path
    /// is made absolute, so that it can be compared with a `--root`.
    pub fn open(dir: &Path) -> io::Result<StateDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let dir = fs::canonicalize(dir)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join(QUEUE_DIR))?;
        Ok(StateDir { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether the state dir lies beneath `root` (or is `root`): a bundle
    /// applied with that root could then overwrite the generation and undo
    /// the replay protection, so such roots are refused.
    pub fn is_beneath(&self, root: &Path) -> bool {
        match fs::canonicalize(root) {
            Ok(root) => self.dir.starts_with(root),
            // A root that does not exist yet cannot contain the state dir.
            Err(_) => false,
        }
    }

    /// The last applied generation; 0 when none was ever applied.
    pub fn applied(&self) -> io::Result<Applied> {
        match fs::read(self.dir.join(GENERATION_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is corrupt ({err}): restore it or remove it to accept any generation",
                        self.dir.join(GENERATION_FILE).display()
                    ),
                )
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Applied::default()),
            Err(err) => Err(err),
        }
    }

    /// Records `applied` as the last applied generation, durably. A
    /// generation not greater than the stored one is not written, so the
    /// stored value never goes backwards.
    pub fn store_applied(&self, applied: &Applied) -> io::Result<()> {
        if applied.generation <= self.applied()?.generation {
            return Ok(());
        }
        write_json_atomic(&self.dir.join(GENERATION_FILE), applied)
    }

    /// The last good bundle, if one was stored.
    pub fn bundle(&self) -> io::Result<Option<SignedBundle>> {
        match fs::read(self.dir.join(BUNDLE_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Stores the bundle in force, durably.
    pub fn store_bundle(&self, signed: &SignedBundle) -> io::Result<()> {
        write_json_atomic(&self.dir.join(BUNDLE_FILE), signed)
    }

    /// Appends a report to the queue, dropping the oldest ones beyond the
    /// bounds. Returns how many were dropped now.
    pub fn enqueue(&self, report: &Report) -> io::Result<usize> {
        let queue = self.dir.join(QUEUE_DIR);
        let entries = self.queued()?;
        let next = entries
            .last()
            .and_then(|path| sequence_of(path))
            .map_or(1, |n| n + 1);
        write_json_atomic(&queue.join(format!("{next:020}.json")), report)?;

        let mut entries = self.queued()?;
        let mut total: u64 = entries
            .iter()
            .filter_map(|path| fs::metadata(path).ok())
            .map(|meta| meta.len())
            .sum();
        let mut dropped = 0;
        // The newest report always stays, even when it alone is over the
        // byte bound: the controller's 4 MiB cap decides about it.
        while entries.len() > 1 && (entries.len() > QUEUE_MAX_REPORTS || total > QUEUE_MAX_BYTES) {
            let oldest = entries.remove(0);
            total = total.saturating_sub(fs::metadata(&oldest).map_or(0, |meta| meta.len()));
            fs::remove_file(&oldest)?;
            dropped += 1;
        }
        if dropped > 0 {
            let count = self.dropped()? + dropped as u64;
            write_atomic(
                &queue.join(DROPPED_FILE),
                count.to_string().as_bytes(),
                0o600,
            )?;
        }
        Ok(dropped)
    }

    /// The queued reports' files, oldest first.
    pub fn queued(&self) -> io::Result<Vec<PathBuf>> {
        let mut entries: Vec<PathBuf> = fs::read_dir(self.dir.join(QUEUE_DIR))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| sequence_of(path).is_some())
            .collect();
        entries.sort();
        Ok(entries)
    }

    /// Reads one queued report.
    pub fn read_queued(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    /// Removes a delivered (or undeliverable) report from the queue.
    pub fn remove_queued(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)?;
        sync_dir(&self.dir.join(QUEUE_DIR))
    }

    /// How many reports were dropped from the queue so far.
    pub fn dropped(&self) -> io::Result<u64> {
        match fs::read_to_string(self.dir.join(QUEUE_DIR).join(DROPPED_FILE)) {
            Ok(text) => Ok(text.trim().parse().unwrap_or(0)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(err) => Err(err),
        }
    }

    /// Forgets everything of the host identity that used this state dir:
    /// the applied generation, the bundle and the queued reports. Called
    /// when the host enrolls anew, as a new host id whose generations
    /// start again at 1: keeping the old number would refuse the new
    /// host's bundles, and the old host's bundles are refused anyway by
    /// their host id.
    pub fn forget_host(&self) -> io::Result<()> {
        for file in [GENERATION_FILE, BUNDLE_FILE] {
            match fs::remove_file(self.dir.join(file)) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        let queue = self.dir.join(QUEUE_DIR);
        match fs::remove_dir_all(&queue) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        fs::DirBuilder::new().mode(0o700).create(&queue)?;
        sync_dir(&self.dir)
    }
}

/// The sequence number of a queued report's file name.
fn sequence_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// Writes `value` as JSON, mode 0600, like [`write_atomic`]. The JSON is
/// streamed into the file rather than built in memory first: a bundle or a
/// report of a thousand files is megabytes, which the allocator would keep
/// resident long after.
fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    write_atomic_with(path, 0o600, |file| {
        let mut writer = io::BufWriter::new(file);
        serde_json::to_writer(&mut writer, value)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        writer.flush()
    })
}

/// Replaces `path` with `bytes` atomically and durably: a temp file in the
/// same directory, created exclusively with `mode`, fsynced, renamed over
/// `path`, then the directory fsynced so that the rename itself survives a
/// crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, |mut file| file.write_all(bytes))
}

/// [`write_atomic`] with the content written by `write`.
fn write_atomic_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A temp file left by a crashed run of this pid is stale.
    let _ = fs::remove_file(&temp);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        write(&file)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
