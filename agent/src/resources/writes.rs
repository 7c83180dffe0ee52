//! Landing a converge run's file writes: the temporary files written and
//! fsynced on a few threads, the renames in bundle order, each directory
//! fsynced once.
//!
//! Replacing a file atomically needs a new file (its inode allocated), an
//! fsync of the new content before the rename (else a crash could leave
//! the new name pointing at an incomplete file) and an fsync of the
//! directory after it (else a crash could undo the rename). One file at a
//! time, 1,000 files wait for 2,000 fsyncs, each ending in a flush of the
//! disk's write cache. A converge run instead hands every file write it
//! decides on here, as a [`FileWrite`], and:
//!
//! 1. one of [`WRITE_THREADS`] threads creates the temporary file, writes
//!    it, gives it its owner and mode and fsyncs it, so that several
//!    fsyncs are in flight at once and the kernel serves them with shared
//!    journal commits and cache flushes;
//! 2. on the converge thread, in bundle order, each write whose temporary
//!    file is synced is renamed into place (never before that);
//! 3. when the run ends ([`Writes::finish`]), every directory that a
//!    rename (or a parent directory created for it) changed is fsynced
//!    once, after every rename into it, before `converge` returns, so
//!    before the agent records the applied generation.
//!
//! So at every moment, and after a crash at any point, each file is its
//! old or its complete new content with its mode, exactly as with one
//! write at a time; what is deferred is only the moment a rename becomes
//! durable, which is before the converge run ends.
//!
//! A write that fails (creating, writing or syncing the temporary file,
//! the path check before the rename, the rename, or the fsync of its
//! directory) turns its resource's report into `failed`, as if it had
//! failed during its own apply. To keep the rest of the run exactly as
//! when resources ran one at a time, `converge` lands every write in
//! flight before any resource that could observe one: every kind but
//! `file`, a file with `depends_on`, and a file at or beneath a path being
//! written.
//!
//! Before the first write into a directory, the run removes the temporary
//! files that killed agents left there (`paths::remove_stale_temps`).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Scope;

use super::paths::{self, FileWrite, PendingWrite, fsync_dir};
use super::{Context, Failure};

/// Threads that write temporary files and fsync them. They mostly wait
/// for the disk; more of them mean more fsyncs sharing one flush, up to
/// what the disk absorbs.
pub(crate) const WRITE_THREADS: usize = 8;

/// Writes in flight at most; the converge thread waits for the oldest
/// beyond this. It bounds the open files and the temporary files a kill
/// can leave behind.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// A resource whose write did not land: its report's index and why.
pub(crate) type Failed = (usize, Failure);

/// The writes of one converge run that have not fully landed yet. Its
/// threads belong to `scope`, which the converge run ends.
pub(crate) struct Writes<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    ctx: &'env Context,
    pool: Option<Pool<'env>>,
    /// Writes under way, oldest (first in bundle order) first.
    in_flight: VecDeque<InFlight>,
    /// Their paths as declared, for [`Writes::overlaps`].
    in_flight_paths: HashSet<String>,
    /// Directories to fsync at the end, each with the reports whose writes
    /// it holds.
    dirty_dirs: BTreeMap<PathBuf, Vec<usize>>,
    /// Directories already rid of stale temporary files in this run.
    swept: HashSet<PathBuf>,
}

struct InFlight {
    report: usize,
    declared: String,
    synced: Receiver<Result<PendingWrite, Failure>>,
}

impl<'scope, 'env> Writes<'scope, 'env> {
    pub(crate) fn new(scope: &'scope Scope<'scope, 'env>, ctx: &'env Context) -> Self {
        Writes {
            scope,
            ctx,
            pool: None,
            in_flight: VecDeque::new(),
            in_flight_paths: HashSet::new(),
            dirty_dirs: BTreeMap::new(),
            swept: HashSet::new(),
        }
    }

    /// Whether no write is under way.
    pub(crate) fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Whether `declared`, or a directory above it, is being written: a
    /// resource for that path must see the write landed first.
    pub(crate) fn overlaps(&self, declared: &str) -> bool {
        let mut path = declared;
        loop {
            if self.in_flight_paths.contains(path) {
                return true;
            }
            match path.rfind('/') {
                Some(at) if at > 0 => path = &path[..at],
                _ => return false,
            }
        }
    }

    /// Starts the write of report `report` on the pool. When too many are
    /// under way, lands the oldest first; returns those that failed.
    pub(crate) fn push(&mut self, report: usize, write: FileWrite<'env>) -> Vec<Failed> {
        if self.swept.insert(write.dir().to_path_buf()) {
            sweep(write.dir());
        }
        let mut failed = Vec::new();
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            failed.extend(self.land_oldest());
        }
        let declared = write.declared().to_string();
        let (done, synced) = mpsc::sync_channel(1);
        let ctx = self.ctx;
        let scope = self.scope;
        self.pool
            .get_or_insert_with(|| Pool::start(scope))
            .run(move || {
                let result = write.stage(ctx).and_then(|mut pending| {
                    pending.sync()?;
                    Ok(pending)
                });
                let _ = done.send(result);
            });
        self.in_flight_paths.insert(declared.clone());
        self.in_flight.push_back(InFlight {
            report,
            declared,
            synced,
        });
        failed
    }

    /// Lands every write under way, in bundle order; returns those that
    /// failed.
    pub(crate) fn land_all(&mut self) -> Vec<Failed> {
        let mut failed = Vec::new();
        while !self.in_flight.is_empty() {
            failed.extend(self.land_oldest());
        }
        failed
    }

    /// Ends the run's writes: lands every write under way, then fsyncs each
    /// directory written into, on the pool. Returns the writes that failed,
    /// including all those in a directory that could not be synced.
    pub(crate) fn finish(mut self) -> Vec<Failed> {
        let mut failed = self.land_all();
        let Some(pool) = &self.pool else {
            return failed;
        };
        let mut syncs = Vec::with_capacity(self.dirty_dirs.len());
        for (dir, reports) in std::mem::take(&mut self.dirty_dirs) {
            let (done, synced) = mpsc::sync_channel(1);
            let to_sync = dir.clone();
            pool.run(move || {
                let _ = done.send(fsync_dir(&to_sync));
            });
            syncs.push((dir, reports, synced));
        }
        for (dir, reports, synced) in syncs {
            let result = synced.recv().unwrap_or_else(|_| Err(stopped(&dir)));
            if let Err(failure) = result {
                for report in reports {
                    failed.push((report, Failure::new(failure.to_string())));
                }
            }
        }
        failed
    }

    /// Waits for the oldest write's temporary file and renames it into
    /// place.
    fn land_oldest(&mut self) -> Option<Failed> {
        let InFlight {
            report,
            declared,
            synced,
        } = self.in_flight.pop_front()?;
        self.in_flight_paths.remove(&declared);
        let landed = synced
            .recv()
            .unwrap_or_else(|_| Err(Failure::new(format!("the write of `{declared}` stopped"))))
            .and_then(|pending| {
                let dirty_dirs = pending.dirty_dirs().to_vec();
                pending.rename_into_place(self.ctx)?;
                Ok(dirty_dirs)
            });
        match landed {
            Ok(dirty_dirs) => {
                for dir in dirty_dirs {
                    self.dirty_dirs.entry(dir).or_default().push(report);
                }
                None
            }
            Err(failure) => Some((report, failure)),
        }
    }
}

fn stopped(dir: &Path) -> Failure {
    Failure::new(format!(
        "could not sync directory `{}`: the sync stopped",
        dir.display()
    ))
}

/// Removes stale temporary files from `dir`; a failure only means they
/// stay, clearly named, until a later run.
fn sweep(dir: &Path) {
    match paths::remove_stale_temps(dir) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(
            dir = %dir.display(),
            removed,
            "removed temporary files that an interrupted run left behind"
        ),
        Err(failure) => tracing::warn!(
            dir = %dir.display(),
            error = %failure,
            "cannot remove temporary files that an interrupted run left behind"
        ),
    }
}

type Job<'env> = Box<dyn FnOnce() + Send + 'env>;

/// A few threads of the run's scope that run jobs as they come; they end
/// when the pool is dropped, once what was sent has run. If no thread can
/// be started, jobs run on the caller's thread.
struct Pool<'env> {
    jobs: Option<Sender<Job<'env>>>,
}

impl<'env> Pool<'env> {
    fn start<'scope>(scope: &'scope Scope<'scope, 'env>) -> Pool<'env> {
        let (jobs, queue) = mpsc::channel::<Job<'env>>();
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for n in 0..WRITE_THREADS {
            let queue = Arc::clone(&queue);
            let worker = std::thread::Builder::new()
                .name(format!("muster-write-{n}"))
                .spawn_scoped(scope, move || {
                    loop {
                        // The lock is held only while taking a job.
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if worker.is_ok() {
                started += 1;
            }
        }
        Pool {
            jobs: (started > 0).then_some(jobs),
        }
    }

    fn run(&self, job: impl FnOnce() + Send + 'env) {
        match &self.jobs {
            Some(jobs) => {
                if let Err(mpsc::SendError(job)) = jobs.send(Box::new(job)) {
                    job();
                }
            }
            None => job(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;
    use crate::resources::paths::{FileWrite, NewFile};

    /// A fresh directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Scratch {
            let base = fs::canonicalize(std::env::temp_dir()).unwrap();
            let dir = base.join(format!("muster-writes-{label}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write<'a>(ctx: &Context, declared: &str, content: &'a str) -> FileWrite<'a> {
        FileWrite {
            target: ctx.host_path(declared).unwrap(),
            content: content.as_bytes(),
            new_file: NewFile {
                mode: 0o640,
                uid: None,
                gid: None,
            },
            created_in: Vec::new(),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_land_in_place_with_their_mode_when_finished() {
        let scratch = Scratch::new("land");
        fs::create_dir(scratch.0.join("etc")).unwrap();
        let ctx = Context::new().with_root(&scratch.0);
        std::thread::scope(|scope| {
            let mut writes = Writes::new(scope, &ctx);
            for n in 0..(MAX_IN_FLIGHT + 5) {
                let failed = writes.push(n, write(&ctx, &format!("/etc/f{n}"), "new\n"));
                assert!(failed.is_empty());
                assert!(writes.in_flight.len() <= MAX_IN_FLIGHT);
            }
            assert!(writes.overlaps("/etc/f68"));
            assert!(writes.overlaps("/etc/f68/beneath"));
            // The oldest have landed to make room; a parent or a name that
            // only starts the same does not overlap.
            assert!(!writes.overlaps("/etc/f0"));
            assert!(!writes.overlaps("/etc"));
            assert!(!writes.overlaps("/etc/f68.d"));
            assert!(writes.finish().is_empty());
        });
        let names = names(&scratch.0.join("etc"));
        assert_eq!(names.len(), MAX_IN_FLIGHT + 5, "{names:?}");
        assert!(names.iter().all(|name| name.starts_with('f')), "{names:?}");
        let meta = fs::metadata(scratch.0.join("etc/f0")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!(
            fs::read_to_string(scratch.0.join("etc/f0")).unwrap(),
            "new\n"
        );
    }

    #[test]
    fn a_write_that_cannot_land_fails_its_resource_and_leaves_no_temp_file() {
        let scratch = Scratch::new("fail");
        fs::create_dir(scratch.0.join("etc")).unwrap();
        fs::write(scratch.0.join("etc/motd"), "old\n").unwrap();
        let ctx = Context::new().with_root(&scratch.0);
        let failed = std::thread::scope(|scope| {
            let mut writes = Writes::new(scope, &ctx);
            assert!(writes.push(7, write(&ctx, "/etc/motd", "new\n")).is_empty());
            // The parent turns into a symbolic link before the rename (or
            // even before the temporary file is written): the check right
            // before either refuses.
            fs::rename(scratch.0.join("etc"), scratch.0.join("real-etc")).unwrap();
            symlink(scratch.0.join("real-etc"), scratch.0.join("etc")).unwrap();
            writes.finish()
        });
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 7);
        // A worker may try to create the temporary file in the instant
        // between the rename and the link: then the parent is missing
        // rather than a link. Either way the write fails.
        let message = failed[0].1.to_string();
        assert!(
            message.contains("symbolic link")
                || message.contains("is missing")
                || message.contains("No such file"),
            "{message}"
        );
        assert_eq!(names(&scratch.0.join("real-etc")), ["motd"]);
        assert_eq!(
            fs::read_to_string(scratch.0.join("real-etc/motd")).unwrap(),
            "old\n"
        );
    }
}
