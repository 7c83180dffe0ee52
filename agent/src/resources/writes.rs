//! Landing a converge run's file writes: the fsyncs overlapped on a few
//! threads, the renames in bundle order, each directory fsynced once.
//!
//! Replacing a file atomically needs an fsync of the new content before the
//! rename (else a crash could leave the new name pointing at an incomplete
//! file) and an fsync of the directory after it (else a crash could undo
//! the rename). One file at a time, 1,000 files wait for 2,000 fsyncs, each
//! ending in a flush of the disk's write cache. A converge run instead
//! hands every file it writes here, as a [`PendingWrite`] (the temporary
//! file written, owner and mode set), and:
//!
//! 1. the temporary file is fsynced on one of [`SYNC_THREADS`] threads, so
//!    that several fsyncs are in flight at once and the kernel serves them
//!    with shared journal commits and cache flushes;
//! 2. on the converge thread, in bundle order, each write whose fsync has
//!    finished is renamed into place (never before its fsync finished);
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
//! A write that fails to land (its fsync, the path check before the
//! rename, the rename, or the fsync of its directory) turns its resource's
//! report into `failed`, as if it had failed during its own apply. To keep
//! the rest of the run exactly as when resources ran one at a time,
//! `converge` lands every write in flight before any resource that could
//! observe one: every kind but `file`, a file with `depends_on`, and a file
//! at or beneath a path being written.
//!
//! Before the first write into a directory, the run removes the temporary
//! files that killed agents left there (`paths::remove_stale_temps`).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::paths::{self, PendingWrite, fsync_dir};
use super::{Context, Failure};

/// Threads that run fsyncs. They mostly wait for the disk; more of them
/// mean more fsyncs sharing one flush, up to what the disk absorbs.
pub(crate) const SYNC_THREADS: usize = 8;

/// Writes in flight at most (each holds an open file until its fsync).
/// The converge thread waits for the oldest beyond this.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// A resource whose write did not land: its report's index and why.
pub(crate) type Failed = (usize, Failure);

/// The writes of one converge run that have not fully landed yet.
#[derive(Default)]
pub(crate) struct Writes {
    pool: Option<SyncPool>,
    /// Writes being fsynced, oldest (first in bundle order) first.
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
    synced: Receiver<(PendingWrite, Result<(), Failure>)>,
}

impl Writes {
    pub(crate) fn new() -> Writes {
        Writes::default()
    }

    /// Whether no write is in flight.
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

    /// Starts landing the write of report `report`: its fsync goes to the
    /// pool. When too many are in flight, lands the oldest first; returns
    /// those that failed.
    pub(crate) fn push(
        &mut self,
        ctx: &Context,
        report: usize,
        mut pending: PendingWrite,
    ) -> Vec<Failed> {
        if self.swept.insert(pending.dir().to_path_buf()) {
            sweep(pending.dir());
        }
        let mut failed = Vec::new();
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            failed.extend(self.land_oldest(ctx));
        }
        let (done, synced) = mpsc::sync_channel(1);
        self.in_flight_paths.insert(pending.declared().to_string());
        self.in_flight.push_back(InFlight { report, synced });
        self.pool.get_or_insert_with(SyncPool::start).run(move || {
            let result = pending.sync();
            let _ = done.send((pending, result));
        });
        failed
    }

    /// Lands every write in flight, in bundle order; returns those that
    /// failed.
    pub(crate) fn land_all(&mut self, ctx: &Context) -> Vec<Failed> {
        let mut failed = Vec::new();
        while !self.in_flight.is_empty() {
            failed.extend(self.land_oldest(ctx));
        }
        failed
    }

    /// Ends the run's writes: lands every write in flight, then fsyncs each
    /// directory written into, on the pool. Returns the writes that failed,
    /// including all those in a directory that could not be synced.
    pub(crate) fn finish(mut self, ctx: &Context) -> Vec<Failed> {
        let mut failed = self.land_all(ctx);
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

    /// Waits for the oldest write's fsync and renames it into place.
    fn land_oldest(&mut self, ctx: &Context) -> Option<Failed> {
        let InFlight { report, synced } = self.in_flight.pop_front()?;
        let Ok((pending, synced)) = synced.recv() else {
            // The job was dropped without an answer: its PendingWrite, and
            // with it the temporary file, is gone.
            return Some((
                report,
                Failure::new("the write stopped before it was synced"),
            ));
        };
        self.in_flight_paths.remove(pending.declared());
        let dirty_dirs = pending.dirty_dirs().to_vec();
        match synced.and_then(|()| pending.rename_into_place(ctx)) {
            Ok(()) => {
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

type Job = Box<dyn FnOnce() + Send>;

/// A few threads that run jobs (fsyncs) as they come. Dropping the pool
/// lets them finish what was sent and joins them. If no thread can be
/// started, jobs run on the caller's thread.
struct SyncPool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl SyncPool {
    fn start() -> SyncPool {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..SYNC_THREADS)
            .filter_map(|n| {
                let queue = Arc::clone(&queue);
                std::thread::Builder::new()
                    .name(format!("muster-sync-{n}"))
                    .spawn(move || {
                        loop {
                            // The lock is held only while taking a job.
                            let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => return,
                            }
                        }
                    })
                    .ok()
            })
            .collect();
        SyncPool {
            jobs: Some(jobs),
            threads,
        }
    }

    fn run(&self, job: impl FnOnce() + Send + 'static) {
        match &self.jobs {
            Some(jobs) if !self.threads.is_empty() => {
                if let Err(mpsc::SendError(job)) = jobs.send(Box::new(job)) {
                    job();
                }
            }
            _ => job(),
        }
    }
}

impl Drop for SyncPool {
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;
    use crate::resources::paths::NewFile;

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

    fn stage(ctx: &Context, declared: &str, content: &str) -> PendingWrite {
        let target = ctx.host_path(declared).unwrap();
        let new_file = NewFile {
            mode: 0o640,
            uid: None,
            gid: None,
        };
        PendingWrite::stage(ctx, &target, content.as_bytes(), new_file, Vec::new()).unwrap()
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
        let mut writes = Writes::new();
        for n in 0..(MAX_IN_FLIGHT + 5) {
            let failed = writes.push(&ctx, n, stage(&ctx, &format!("/etc/f{n}"), "new\n"));
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
        assert!(writes.finish(&ctx).is_empty());
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
        let mut writes = Writes::new();
        assert!(
            writes
                .push(&ctx, 7, stage(&ctx, "/etc/motd", "new\n"))
                .is_empty()
        );
        // The parent turns into a symbolic link before the rename: the
        // check right before it refuses.
        fs::rename(scratch.0.join("etc"), scratch.0.join("real-etc")).unwrap();
        symlink(scratch.0.join("real-etc"), scratch.0.join("etc")).unwrap();
        let failed = writes.land_all(&ctx);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 7);
        assert!(
            failed[0].1.to_string().contains("symbolic link"),
            "{}",
            failed[0].1
        );
        assert_eq!(names(&scratch.0.join("real-etc")), ["motd"]);
        assert_eq!(
            fs::read_to_string(scratch.0.join("real-etc/motd")).unwrap(),
            "old\n"
        );
        assert!(writes.finish(&ctx).is_empty());
    }
}
