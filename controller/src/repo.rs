//! Reading a fleet repo from a directory on disk.
//!
//! Only regular files are read: symbolic links are never followed, so a
//! link in a pull request cannot make validation read files outside the
//! repo. Directories whose name starts with a dot (`.git`, `.github`) are
//! skipped, and fleet files over the size limit are refused unread.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use muster_schemas::load::{self, MAX_FILE_BYTES};
use muster_schemas::{ParsedFile, Validation};

use crate::Error;

/// A fleet repo read from disk and parsed, not yet validated.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub fleet_files: Vec<ParsedFile>,
    /// Every regular file of the repo, relative to its root, with `/`.
    pub repo_files: BTreeSet<String>,
}

impl Snapshot {
    pub fn validate(self) -> Validation {
        muster_schemas::validate(self.fleet_files, &self.repo_files)
    }
}

/// Reads and parses the fleet repo rooted at `root`.
pub fn read_dir(root: &Path) -> Result<Snapshot, Error> {
    let metadata = fs::metadata(root)
        .map_err(|err| Error::io(format!("cannot read `{}`", root.display()), err))?;
    if !metadata.is_dir() {
        return Err(Error::Usage(format!(
            "`{}` is not a directory: give the fleet repo's directory",
            root.display()
        )));
    }
    let mut snapshot = Snapshot::default();
    let mut pending = vec![String::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        let entries = fs::read_dir(&dir)
            .map_err(|err| Error::io(format!("cannot read `{}`", dir.display()), err))?;
        for entry in entries {
            let entry =
                entry.map_err(|err| Error::io(format!("cannot read `{}`", dir.display()), err))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if relative.is_empty() {
                name.clone()
            } else {
                format!("{relative}/{name}")
            };
            let file_type = entry.file_type().map_err(|err| {
                Error::io(format!("cannot read `{}`", entry.path().display()), err)
            })?;
            if file_type.is_dir() {
                if !name.starts_with('.') {
                    pending.push(path);
                }
            } else if file_type.is_file() {
                if load::is_fleet_file(&path) {
                    snapshot
                        .fleet_files
                        .push(read_fleet_file(&entry.path(), &path)?);
                }
                snapshot.repo_files.insert(path);
            } else if file_type.is_symlink() && load::is_fleet_file(&path) {
                snapshot.fleet_files.push(load::symlinked(&path));
            }
        }
    }
    Ok(snapshot)
}

fn read_fleet_file(full_path: &Path, path: &str) -> Result<ParsedFile, Error> {
    let read_error = |err| Error::io(format!("cannot read `{}`", full_path.display()), err);
    let n_bytes = fs::metadata(full_path).map_err(read_error)?.len();
    if n_bytes > MAX_FILE_BYTES as u64 {
        return Ok(load::too_large(path, n_bytes));
    }
    let bytes = fs::read(full_path).map_err(read_error)?;
    Ok(load::parse_file(path, &bytes))
}
