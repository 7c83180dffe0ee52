//! Helpers shared by the integration tests: temp directories removed on
//! drop, one-resource bundles, bundles signed like the controller signs
//! them, the timeline every resource kind must keep, stand-in system tools
//! that record their argv, and `eventually`.

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muster_agent::resources::{Context, converge};
use muster_schemas::bundle::{Bundle, BundleResource, Desired, SignedBundle};
use muster_schemas::model::{PolicyMode, Resource};
use muster_schemas::protocol::{ResourceReport, ResourceStatus};

/// The agent binary under test.
pub(crate) const AGENT: &str = env!("CARGO_BIN_EXE_muster-agent");

/// A directory under the system temp dir, removed with everything in it on
/// drop. Its path is canonical, so that no parent is a symbolic link (the
/// agent refuses those) even where the temp dir is reached through one.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = fs::canonicalize(std::env::temp_dir()).unwrap();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("muster-it-{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// The absolute path of `relative` inside, as a string for specs.
    pub(crate) fn join(&self, relative: &str) -> String {
        self.0.join(relative).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A bundle of resources, each with its policy mode.
pub(crate) fn bundle(resources: Vec<(Resource, PolicyMode)>) -> Desired {
    Desired {
        resources: resources
            .into_iter()
            .map(|(resource, mode)| BundleResource {
                id: resource.id(),
                policy: "test".into(),
                mode,
                resource,
            })
            .collect(),
        ..Desired::default()
    }
}

/// A signing key pair and its public key in base64.
pub(crate) struct Signer {
    pub(crate) keys: minisign::KeyPair,
}

impl Signer {
    pub(crate) fn new() -> Signer {
        Signer {
            keys: minisign::KeyPair::generate_unencrypted_keypair().unwrap(),
        }
    }

    pub(crate) fn public_key(&self) -> String {
        self.keys.pk.to_base64()
    }

    /// Signs a bundle the way the controller does: the canonical JSON,
    /// prehashed, with the header in the trusted comment.
    pub(crate) fn sign(&self, bundle: &Bundle) -> SignedBundle {
        let text = bundle.to_canonical_json_string();
        let signature = minisign::sign(
            Some(&self.keys.pk),
            &self.keys.sk,
            Cursor::new(text.as_bytes()),
            Some(&bundle.trusted_comment().to_string()),
            Some("muster bundle signature"),
        )
        .unwrap();
        SignedBundle {
            bundle: text,
            signature: signature.into_string(),
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Converges a one-resource bundle and returns its report.
pub(crate) fn run(
    ctx: &Context,
    resource: &Resource,
    mode: PolicyMode,
    dry_run: bool,
) -> ResourceReport {
    let mut reports = converge(&bundle(vec![(resource.clone(), mode)]), ctx, dry_run);
    assert_eq!(reports.len(), 1);
    reports.remove(0)
}

pub(crate) fn assert_status(report: &ResourceReport, status: ResourceStatus) {
    assert_eq!(report.status, status, "{report:#?}");
}

/// The reports of one timeline, by step.
#[derive(Debug)]
pub(crate) struct Timeline {
    pub(crate) first: ResourceReport,
    pub(crate) drifted: ResourceReport,
    pub(crate) audited: ResourceReport,
    pub(crate) repaired: ResourceReport,
}

/// The timeline every resource kind keeps (STYLE.md, "Agent resources"):
/// the first run changes the host, the second finds it in sync; after
/// `tamper`, a dry run and an audit-mode run report drift and leave the
/// host as it is (per `observe`), an enforcing run repairs it, and the run
/// after that is in sync again.
pub(crate) fn assert_timeline(
    ctx: &Context,
    resource: &Resource,
    tamper: &dyn Fn(),
    observe: &dyn Fn() -> String,
) -> Timeline {
    let first = run(ctx, resource, PolicyMode::Enforce, false);
    assert_status(&first, ResourceStatus::Changed);
    let converged = observe();
    let second = run(ctx, resource, PolicyMode::Enforce, false);
    assert_status(&second, ResourceStatus::InSync);
    assert_eq!(observe(), converged, "an in-sync run changed the host");

    tamper();
    let tampered = observe();
    assert_ne!(tampered, converged, "tampering changed nothing");
    let drifted = run(ctx, resource, PolicyMode::Enforce, true);
    assert_status(&drifted, ResourceStatus::Drifted);
    assert_eq!(observe(), tampered, "a dry run changed the host");
    let audited = run(ctx, resource, PolicyMode::Audit, false);
    assert_status(&audited, ResourceStatus::Drifted);
    assert_eq!(observe(), tampered, "an audit-mode run changed the host");

    let repaired = run(ctx, resource, PolicyMode::Enforce, false);
    assert_status(&repaired, ResourceStatus::Changed);
    assert_eq!(observe(), converged, "the repair did not restore the state");
    let again = run(ctx, resource, PolicyMode::Enforce, false);
    assert_status(&again, ResourceStatus::InSync);
    Timeline {
        first,
        drifted,
        audited,
        repaired,
    }
}

/// Content and mode of a path (or that it is missing, or where a link
/// points), for `observe`.
pub(crate) fn describe(path: &Path) -> String {
    match fs::symlink_metadata(path) {
        Err(_) => "missing".into(),
        Ok(meta) if meta.file_type().is_symlink() => {
            format!("link to {}", fs::read_link(path).unwrap().display())
        }
        Ok(meta) if meta.is_dir() => format!("dir {:04o}", meta.mode() & 0o7777),
        Ok(meta) => format!(
            "file {:04o} {}:{} {:?}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid(),
            fs::read_to_string(path).unwrap_or_default()
        ),
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The effective uid and gid of this process (those of a file it creates).
pub(crate) fn my_ids(dir: &TempDir) -> (u32, u32) {
    let probe = dir.path().join(".ids");
    fs::write(&probe, "").unwrap();
    let meta = fs::metadata(&probe).unwrap();
    fs::remove_file(&probe).unwrap();
    (meta.uid(), meta.gid())
}

/// Polls `condition` until it holds or `within` passes.
pub(crate) fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory of stand-in system tools. Each one is a shell script that
/// appends its argv (tab-separated) to a log and keeps its state in files
/// under `state`, so the engine can be driven through a whole timeline
/// without touching the real host. A context built with
/// [`StandIns::context`] finds only these tools.
#[derive(Debug)]
pub(crate) struct StandIns {
    pub(crate) dir: TempDir,
}

impl StandIns {
    pub(crate) fn new(label: &str) -> StandIns {
        let dir = TempDir::new(label);
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        fs::create_dir_all(dir.path().join("state")).unwrap();
        fs::write(dir.path().join("log"), "").unwrap();
        StandIns { dir }
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A context whose search path holds the stand-ins and nothing else, so
    /// a real `apt-get` or `systemctl` can never be reached.
    pub(crate) fn context(&self) -> Context {
        Context::new().with_search_path(self.dir.path().join("bin"))
    }

    /// Installs a stand-in `name` running `body` after it logged its argv.
    /// `$STATE` is the state directory in `body`.
    pub(crate) fn tool(&self, name: &str, body: &str) {
        let path = self.dir.path().join("bin").join(name);
        let script = format!(
            "#!/bin/sh\n\
             PATH=/usr/bin:/bin\n\
             STATE='{state}'\n\
             {{ printf '%s' '{name}'; for arg in \"$@\"; do printf '\\t%s' \"$arg\"; done; printf '\\n'; }} >> '{log}'\n\
             {body}\n",
            state = self.state().display(),
            log = self.dir.path().join("log").display(),
        );
        fs::write(&path, script).unwrap();
        set_mode(&path, 0o755);
    }

    /// The argv of every stand-in call so far, and clears the log.
    pub(crate) fn take_log(&self) -> Vec<Vec<String>> {
        let path = self.dir.path().join("log");
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, "").unwrap();
        text.lines()
            .map(|line| line.split('\t').map(str::to_string).collect())
            .collect()
    }

    /// Like [`take_log`](Self::take_log), without calls whose first
    /// argument is one of `queries` (such as `is-active`).
    pub(crate) fn take_changes(&self, queries: &[&str]) -> Vec<Vec<String>> {
        self.take_log()
            .into_iter()
            .filter(|argv| {
                let tool = argv[0].as_str();
                let read_only = matches!(tool, "dpkg-query" | "apt-cache" | "getent")
                    || argv
                        .get(1)
                        .is_some_and(|arg| queries.contains(&arg.as_str()));
                !read_only
            })
            .collect()
    }
}

/// An argv literal for comparisons.
pub(crate) fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| word.to_string()).collect()
}
