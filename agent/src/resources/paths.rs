//! Managed paths: mapping a bundle's absolute path onto the host (beneath
//! the sandbox root), the rules that refuse dangerous ones, and the
//! filesystem steps every path-based resource shares (atomic replacement,
//! parent creation, directory fsync, removing temporary files a killed run
//! left behind).
//!
//! The rules, checked whenever a path is resolved and again right before
//! anything is written:
//!
//! - The path is absolute and normal: no `..`, no `.`, no empty component,
//!   no NUL byte. `/` itself is never managed.
//! - No parent directory (beneath the root, in a sandbox) is a symbolic
//!   link, so a link planted in a parent cannot redirect a write elsewhere.
//!   On a real host this also means paths must be written in their real
//!   form: `/run/x`, not `/var/run/x`.
//! - The resources refuse a symbolic link at the target path itself (a
//!   file is never written through one).
//!
//! Between a check and the write an attacker who can write to a managed
//! parent directory could still swap it; std offers no `openat` with
//! `O_NOFOLLOW` without `unsafe`. Managed parents must therefore not be
//! writable by untrusted users, which is how a host is set up anyway.

use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Context, Failure};

/// Mode of the parent directories the agent creates, like `mkdir -p`
/// without the umask.
pub const PARENT_MODE: u32 = 0o755;

/// A managed path, mapped onto the host and checked against the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPath {
    /// The path as the bundle wrote it, such as `/etc/motd`.
    pub declared: String,
    /// Where it is on this host: beneath the root in a sandbox.
    pub path: PathBuf,
    /// Parent directories that do not exist yet, outermost first.
    pub missing_parents: Vec<PathBuf>,
}

impl HostPath {
    /// The directory holding the path.
    pub fn parent(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    /// The missing parents as the bundle would name them, for messages.
    pub fn missing_parents_declared(&self) -> Vec<String> {
        // Every `/` but the first ends one ancestor of the declared path;
        // the missing ones are the innermost.
        let ancestors: Vec<&str> = self
            .declared
            .match_indices('/')
            .skip(1)
            .map(|(at, _)| &self.declared[..at])
            .collect();
        let skip = ancestors.len().saturating_sub(self.missing_parents.len());
        ancestors[skip..].iter().map(|a| a.to_string()).collect()
    }
}

/// Why a path is refused.
#[derive(Debug)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute(String),
    /// The path has a `..` component.
    Traversal(String),
    /// The path has an empty or `.` component.
    NotNormal(String),
    /// The path has a NUL byte.
    Nul,
    /// The path is `/`.
    Root,
    /// A parent directory is a symbolic link.
    SymlinkParent {
        path: String,
        parent: String,
        destination: PathBuf,
    },
    /// A parent exists and is not a directory.
    ParentNotDirectory { path: String, parent: String },
    /// A parent could not be inspected.
    Io { path: PathBuf, source: io::Error },
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NotAbsolute(path) => write!(
                f,
                "refusing path `{path}`: it is not absolute; write the full path from `/`"
            ),
            PathError::Traversal(path) => write!(
                f,
                "refusing path `{path}`: it contains `..`; write the path without climbing out of a directory"
            ),
            PathError::NotNormal(path) => write!(
                f,
                "refusing path `{path}`: it has an empty or `.` component; write it without `//`, `/./` or a trailing `/`"
            ),
            PathError::Nul => f.write_str("refusing a path with a NUL byte"),
            PathError::Root => f.write_str("refusing to manage `/` itself"),
            PathError::SymlinkParent {
                path,
                parent,
                destination,
            } => write!(
                f,
                "refusing `{path}`: its parent directory `{parent}` is a symbolic link (to `{}`); manage the real directory instead",
                destination.display()
            ),
            PathError::ParentNotDirectory { path, parent } => write!(
                f,
                "refusing `{path}`: its parent `{parent}` exists and is not a directory"
            ),
            PathError::Io { path, source } => {
                write!(f, "could not inspect `{}`: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for PathError {}

impl Context {
    /// Maps a bundle path onto the host and checks it against the path
    /// rules: beneath the root in a sandbox, as it is otherwise.
    pub fn host_path(&self, declared: &str) -> Result<HostPath, PathError> {
        let components = normal_components(declared)?;
        let Some((last, parents)) = components.split_last() else {
            return Err(PathError::Root);
        };
        let mut current = self.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let mut declared_parent = String::new();
        let mut missing_parents = Vec::new();
        for component in parents {
            current.push(component);
            declared_parent.push('/');
            declared_parent.push_str(component);
            if !missing_parents.is_empty() {
                // Beneath a missing directory everything is missing.
                missing_parents.push(current.clone());
                continue;
            }
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(PathError::SymlinkParent {
                        path: declared.to_string(),
                        parent: declared_parent,
                        destination: fs::read_link(&current).unwrap_or_default(),
                    });
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(PathError::ParentNotDirectory {
                        path: declared.to_string(),
                        parent: declared_parent,
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    missing_parents.push(current.clone());
                }
                Err(source) => {
                    return Err(PathError::Io {
                        path: current,
                        source,
                    });
                }
            }
        }
        current.push(last);
        Ok(HostPath {
            declared: declared.to_string(),
            path: current,
            missing_parents,
        })
    }

    /// Creates the missing parents of `target`, each with mode
    /// [`PARENT_MODE`] and made durable in its own parent, after checking
    /// the path rules again. Returns the path re-resolved.
    pub(crate) fn create_parents(&self, target: &HostPath) -> Result<HostPath, Failure> {
        let (fresh, changed) = self.create_parents_unsynced(target)?;
        for dir in &changed {
            fsync_dir(dir)?;
        }
        Ok(fresh)
    }

    /// Like [`create_parents`](Self::create_parents), but leaves the
    /// directory fsyncs to the caller: returns the path re-resolved and the
    /// directories whose entries changed (the parent of each directory
    /// created), outermost first.
    pub(crate) fn create_parents_unsynced(
        &self,
        target: &HostPath,
    ) -> Result<(HostPath, Vec<PathBuf>), Failure> {
        let fresh = self.host_path(&target.declared)?;
        let mut changed = Vec::new();
        for dir in &fresh.missing_parents {
            match fs::DirBuilder::new().mode(PARENT_MODE).create(dir) {
                Ok(()) => {}
                // Someone made it meanwhile: fine if it is a real directory,
                // which the re-check below confirms.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => {
                    return Err(Failure::io(format!(
                        "could not create parent directory `{}`",
                        dir.display()
                    ))(err));
                }
            }
            // The umask may have narrowed the mode.
            fs::set_permissions(dir, fs::Permissions::from_mode(PARENT_MODE)).map_err(
                Failure::io(format!("could not set the mode of `{}`", dir.display())),
            )?;
            if let Some(parent) = dir.parent() {
                changed.push(parent.to_path_buf());
            }
        }
        let fresh = self.host_path(&target.declared)?;
        if !fresh.missing_parents.is_empty() {
            return Err(Failure::new(format!(
                "parent directories of `{}` vanished while they were created",
                target.declared
            )));
        }
        Ok((fresh, changed))
    }

    /// Checks the path rules again right before a write, and that the
    /// parents exist.
    pub(crate) fn recheck(&self, target: &HostPath) -> Result<HostPath, Failure> {
        let fresh = self.host_path(&target.declared)?;
        if let Some(missing) = fresh.missing_parents.first() {
            return Err(Failure::new(format!(
                "parent directory `{}` of `{}` is missing",
                missing.display(),
                target.declared
            )));
        }
        Ok(fresh)
    }
}

/// The components of an absolute, normal path, or why it is refused.
fn normal_components(declared: &str) -> Result<Vec<&str>, PathError> {
    if declared.contains('\0') {
        return Err(PathError::Nul);
    }
    let Some(rest) = declared.strip_prefix('/') else {
        return Err(PathError::NotAbsolute(declared.to_string()));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let components: Vec<&str> = rest.split('/').collect();
    if components.contains(&"..") {
        return Err(PathError::Traversal(declared.to_string()));
    }
    if components.iter().any(|c| c.is_empty() || *c == ".") {
        return Err(PathError::NotNormal(declared.to_string()));
    }
    Ok(components)
}

/// `lstat`: the metadata of the path itself, `None` when it does not exist.
pub(crate) fn lstat(path: &Path) -> Result<Option<Metadata>, Failure> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Failure::io(format!(
            "could not inspect `{}`",
            path.display()
        ))(err)),
    }
}

/// Opens what `meta` (from [`lstat`]) describes, and makes sure it is the
/// same inode: if the path was swapped (for a symbolic link, say) since the
/// `lstat`, the open would have followed it, and this refuses.
pub(crate) fn open_verified(path: &Path, meta: &Metadata) -> Result<File, Failure> {
    let file =
        File::open(path).map_err(Failure::io(format!("could not open `{}`", path.display())))?;
    let opened = file.metadata().map_err(Failure::io(format!(
        "could not inspect `{}`",
        path.display()
    )))?;
    if opened.dev() != meta.dev() || opened.ino() != meta.ino() {
        return Err(Failure::new(format!(
            "`{}` changed while it was checked; refusing to touch it",
            path.display()
        )));
    }
    Ok(file)
}

/// Makes a directory's entries (a rename, a new or removed name) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), Failure> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(Failure::io(format!(
            "could not sync directory `{}`",
            dir.display()
        )))
}

/// Sets owner and mode on an open file. The owner goes first: `chown`
/// clears set-id bits, which the mode then puts back.
pub(crate) fn set_owner_and_mode(
    file: &File,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u32>,
    what: &str,
) -> Result<(), Failure> {
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(file, uid, gid)
            .map_err(Failure::io(format!("could not set the owner of `{what}`")))?;
    }
    if let Some(mode) = mode {
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(Failure::io(format!("could not set the mode of `{what}`")))?;
    }
    Ok(())
}

/// What a replaced file gets: mode, and owner and group when they should
/// differ from the agent's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NewFile {
    pub(crate) mode: u32,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What marks a temporary name: `.NAME.muster-PID-N.tmp`.
const TEMP_MARK: &str = ".muster-";
const TEMP_SUFFIX: &str = ".tmp";

/// A temporary name next to `path`, unique within this process; callers
/// create it exclusively and retry on a clash with another process.
///
/// The name is `.NAME.muster-PID-N.tmp`: hidden, naming the file it stands
/// in for and the process that made it, so that one left behind by a killed
/// agent is never taken for a managed file, and
/// [`remove_stale_temps`] can tell it from one a live agent is writing.
pub(crate) fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Keep the temporary name under NAME_MAX (255 bytes) whatever the
    // target's name.
    let mut cut = name.len().min(100);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(
        ".{}{TEMP_MARK}{}-{n}{TEMP_SUFFIX}",
        &name[..cut],
        std::process::id()
    ))
}

/// The process id in a name made by [`temp_name`], if it is one.
fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(TEMP_SUFFIX)?;
    let (_, tail) = rest.rsplit_once(TEMP_MARK)?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes the temporary files and links that agents which are no longer
/// running left in `dir` (a run killed between creating a temporary file
/// and renaming it). Temporary names of live processes, this one included,
/// are left alone, and so is everything that is not a file or a link.
/// Returns how many were removed.
pub(crate) fn remove_stale_temps(dir: &Path) -> Result<usize, Failure> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => {
            return Err(Failure::io(format!("could not list `{}`", dir.display()))(
                err,
            ));
        }
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        // /proc/PID exists while the process (or its zombie) does.
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let is_file_or_link = entry
            .file_type()
            .is_ok_and(|kind| kind.is_file() || kind.is_symlink());
        if is_file_or_link && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// New content decided for a managed file, not written yet: the target
/// (checked, its parents created), the bytes, the mode and owner, and the
/// directories whose entries changed for it already (parents created).
/// [`stage`](Self::stage) writes it to a [`PendingWrite`], on any thread.
#[derive(Debug)]
pub(crate) struct FileWrite<'a> {
    pub(crate) target: HostPath,
    pub(crate) content: &'a [u8],
    pub(crate) new_file: NewFile,
    pub(crate) created_in: Vec<PathBuf>,
}

impl FileWrite<'_> {
    /// The path as the bundle wrote it.
    pub(crate) fn declared(&self) -> &str {
        &self.target.declared
    }

    /// The directory the file is written in.
    pub(crate) fn dir(&self) -> &Path {
        self.target.parent()
    }

    /// Writes the temporary file (see [`PendingWrite::stage`]).
    pub(crate) fn stage(self, ctx: &Context) -> Result<PendingWrite, Failure> {
        PendingWrite::stage(
            ctx,
            &self.target,
            self.content,
            self.new_file,
            self.created_in,
        )
    }

    /// Writes and lands it in this call (see [`PendingWrite::land`]).
    pub(crate) fn apply(self, ctx: &Context) -> Result<(), Failure> {
        self.stage(ctx)?.land(ctx)
    }
}

/// New content for a managed file, written to a temporary file next to it
/// with its owner and mode already set, but neither durable nor in place
/// yet. Landing it takes two steps, which [`land`](Self::land) runs one
/// after the other and a converge run overlaps across files (see
/// `resources::writes`): [`sync`](Self::sync) makes the content durable
/// (it may run on any thread), then [`rename_into_place`](Self::rename_into_place)
/// replaces the target. The write is durable once the directories in
/// [`dirty_dirs`](Self::dirty_dirs) are fsynced too.
///
/// A reader, and a crash at any point, sees the old file or the complete
/// new one with its mode: the rename is the only step that changes the
/// target, and it comes after the fsync. Dropped before the rename, it
/// removes its temporary file.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    target: HostPath,
    temp: PathBuf,
    file: Option<File>,
    dirty_dirs: Vec<PathBuf>,
}

impl PendingWrite {
    /// Writes `content` to a new temporary file next to `target` (created
    /// exclusively, mode 0600) and gives it its owner and then its mode,
    /// after checking the path rules again. `dirty_dirs` are directories
    /// whose entries the caller changed for this write (parents it
    /// created); the target's own directory is added.
    pub(crate) fn stage(
        ctx: &Context,
        target: &HostPath,
        content: &[u8],
        new_file: NewFile,
        mut dirty_dirs: Vec<PathBuf>,
    ) -> Result<PendingWrite, Failure> {
        let target = ctx.recheck(target)?;
        let (temp, mut file) = create_temp(&target.path)?;
        dirty_dirs.push(target.parent().to_path_buf());
        let mut pending = PendingWrite {
            target,
            temp,
            file: None,
            dirty_dirs,
        };
        file.write_all(content).map_err(Failure::io(format!(
            "could not write `{}`",
            pending.temp.display()
        )))?;
        set_owner_and_mode(
            &file,
            new_file.uid,
            new_file.gid,
            Some(new_file.mode),
            &pending.target.declared,
        )?;
        pending.file = Some(file);
        Ok(pending)
    }

    /// The directories to fsync, once this write is in place, for it to
    /// survive a crash: its own and those of the parents created for it.
    pub(crate) fn dirty_dirs(&self) -> &[PathBuf] {
        &self.dirty_dirs
    }

    /// fsyncs the temporary file (content, owner and mode) and closes it.
    pub(crate) fn sync(&mut self) -> Result<(), Failure> {
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(Failure::io(format!(
                "could not sync `{}`",
                self.temp.display()
            )))?;
        }
        Ok(())
    }

    /// Renames the (synced) temporary file over the target, after checking
    /// the parents once more: the rename is the step that makes the content
    /// visible.
    pub(crate) fn rename_into_place(mut self, ctx: &Context) -> Result<(), Failure> {
        if self.file.is_some() {
            return Err(Failure::new(format!(
                "`{}` was about to be replaced before its new content was synced",
                self.target.declared
            )));
        }
        ctx.recheck(&self.target)?;
        fs::rename(&self.temp, &self.target.path).map_err(Failure::io(format!(
            "could not move the new content into `{}`",
            self.target.declared
        )))?;
        // In place: nothing left to remove on drop.
        self.temp = PathBuf::new();
        Ok(())
    }
}

impl PendingWrite {
    /// Lands the write in this call: sync, rename into place, then fsync
    /// the dirty directories. A reader sees the old file or the new one,
    /// never a part; after a crash the target is one or the other too.
    pub(crate) fn land(mut self, ctx: &Context) -> Result<(), Failure> {
        self.sync()?;
        let dirty_dirs = std::mem::take(&mut self.dirty_dirs);
        self.rename_into_place(ctx)?;
        for dir in &dirty_dirs {
            fsync_dir(dir)?;
        }
        Ok(())
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

fn create_temp(path: &Path) -> Result<(PathBuf, File), Failure> {
    let mut last_error = None;
    for _ in 0..16 {
        let temp = temp_name(path);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last_error = Some(err),
            Err(err) => {
                return Err(Failure::io(format!(
                    "could not create a temporary file next to `{}`",
                    path.display()
                ))(err));
            }
        }
    }
    Err(Failure::new(format!(
        "could not create a temporary file next to `{}`: {}",
        path.display(),
        last_error.map(|err| err.to_string()).unwrap_or_default()
    )))
}

/// Describes a path that is in the way of a resource, for refusals.
pub(crate) fn describe_kind(path: &Path, meta: &Metadata) -> String {
    let kind = meta.file_type();
    if kind.is_symlink() {
        match fs::read_link(path) {
            Ok(destination) => format!("a symbolic link (to `{}`)", destination.display()),
            Err(_) => "a symbolic link".to_string(),
        }
    } else if kind.is_dir() {
        "a directory".to_string()
    } else if kind.is_file() {
        "a regular file".to_string()
    } else {
        "a special file".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_abnormal_paths() {
        let ctx = Context::new().with_root("/nonexistent-root");
        for (path, expected) in [
            ("etc/motd", "is not absolute"),
            ("/etc/../shadow", "contains `..`"),
            ("/..", "contains `..`"),
            ("/etc/./motd", "empty or `.` component"),
            ("/etc//motd", "empty or `.` component"),
            ("/etc/", "empty or `.` component"),
            ("/", "`/` itself"),
            ("/a\0b", "NUL"),
        ] {
            let err = ctx.host_path(path).unwrap_err().to_string();
            assert!(err.contains(expected), "{path:?}: {err}");
        }
    }

    #[test]
    fn maps_beneath_the_root_and_lists_missing_parents() {
        let ctx = Context::new().with_root("/nonexistent-root");
        let target = ctx.host_path("/etc/ssh/sshd_config").unwrap();
        assert_eq!(
            target.path,
            PathBuf::from("/nonexistent-root/etc/ssh/sshd_config")
        );
        assert_eq!(
            target.missing_parents,
            vec![
                PathBuf::from("/nonexistent-root/etc"),
                PathBuf::from("/nonexistent-root/etc/ssh"),
            ]
        );
        assert_eq!(target.missing_parents_declared(), vec!["/etc", "/etc/ssh"]);
        let host = Context::new().host_path("/etc/hostname").unwrap();
        assert_eq!(host.path, PathBuf::from("/etc/hostname"));
        assert!(host.missing_parents.is_empty());
    }

    #[test]
    fn temp_names_stay_short_and_unique() {
        let long = "x".repeat(250);
        let a = temp_name(&Path::new("/d").join(&long));
        let b = temp_name(&Path::new("/d").join(&long));
        assert_ne!(a, b);
        assert!(a.file_name().unwrap().len() < 255);
        assert!(a.starts_with("/d"));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert_eq!(temp_owner(name), Some(std::process::id()));
    }

    #[test]
    fn only_temp_names_have_an_owner() {
        assert_eq!(temp_owner(".motd.muster-42-7.tmp"), Some(42));
        assert_eq!(temp_owner(".a.muster-b.muster-42-7.tmp"), Some(42));
        for name in [
            "motd",
            ".motd.tmp",
            "motd.muster-42-7.tmp",
            ".motd.muster-42.tmp",
            ".motd.muster-x-7.tmp",
            ".motd.muster-42-7.tmp.bak",
            ".generation.tmp-42",
        ] {
            assert_eq!(temp_owner(name), None, "{name}");
        }
    }
}
