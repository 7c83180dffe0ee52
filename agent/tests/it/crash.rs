//! Crash safety: the real `muster-agent apply` is killed with SIGKILL at
//! random points while it converges a bundle of 2,000 files, round after
//! round, each round a new generation that changes every file's content
//! and mode. After every kill:
//!
//! - every managed file is missing (only before any run wrote it) or
//!   exactly the content of one generation applied so far, with that
//!   generation's mode: never a part, never empty;
//! - no file goes back to an older generation, and none is older than the
//!   generation recorded in the state dir (the generation is recorded only
//!   after its files are in place);
//! - the recorded generation never goes backwards;
//! - anything else in the managed directories is a temporary file named
//!   `.NAME.muster-PID-N.tmp` for a managed `NAME`, made by an agent that
//!   was killed, and the next run that writes there removes it.
//!
//! A final run to completion leaves every file at the newest generation,
//! the generation recorded, and no temporary file.
//!
//! A kill cannot lose what the page cache holds, so this tests atomicity
//! and the order of steps, not that fsyncs reach the disk.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use muster_schemas::bundle::Bundle;
use muster_schemas::model::{FileSpec, PolicyMode, Resource};

use crate::support::{AGENT, Signer, TempDir, bundle, unix_now};

const N_FILES: usize = 2_000;
const N_DIRECTORIES: usize = 20;
/// Rounds killed at a random point, after one run to completion that
/// tells how long a run takes.
const N_KILLED_ROUNDS: u64 = 20;

fn relative_path(n: usize) -> String {
    format!("srv/crash/d{}/f{n}", n % N_DIRECTORIES)
}

/// The content of file `n` in generation `generation`: about 1 KiB, a
/// different length in consecutive generations, so that a cut-off or
/// mixed file cannot pass for a whole one.
fn content(n: usize, generation: u64) -> String {
    let line = format!("file {n} generation {generation}\n");
    line.repeat(30 + (generation % 7) as usize)
}

/// Odd generations are world-readable, even ones private.
fn mode(generation: u64) -> u32 {
    if generation % 2 == 1 { 0o644 } else { 0o600 }
}

fn crash_bundle(generation: u64) -> Bundle {
    let desired = bundle(
        (0..N_FILES)
            .map(|n| {
                let file = Resource::File(FileSpec {
                    path: format!("/{}", relative_path(n)).parse().unwrap(),
                    content: Some(content(n, generation)),
                    mode: Some(format!("{:04o}", mode(generation)).parse().unwrap()),
                    ..FileSpec::default()
                });
                (file, PolicyMode::Enforce)
            })
            .collect(),
    );
    Bundle {
        host_id: "h_crash".into(),
        host_name: "crash-01".into(),
        generation,
        commit: format!("c0ffee{generation:04}"),
        issued_at: unix_now(),
        expires_at: unix_now() + 3600,
        content_hash: desired.content_hash(),
        desired,
    }
}

/// A uniformly random duration in `[0, max)`.
fn random_delay(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    let fraction = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
    max.mul_f64(fraction)
}

struct Host {
    root: TempDir,
    state: TempDir,
    files: TempDir,
    signer: Signer,
    /// Per file, the generation it was last seen at (`None`: missing).
    seen: Vec<Option<u64>>,
    /// The generation last read from the state dir.
    recorded: u64,
    /// The pids of the agents killed so far.
    killed: BTreeSet<u32>,
}

/// What the host looked like after a round.
#[derive(Debug, Default)]
struct Observed {
    generations: BTreeSet<Option<u64>>,
    temp_files: usize,
}

impl Host {
    fn new() -> Host {
        Host {
            root: TempDir::new("crash-root"),
            state: TempDir::new("crash-state"),
            files: TempDir::new("crash-files"),
            signer: Signer::new(),
            seen: vec![None; N_FILES],
            recorded: 0,
            killed: BTreeSet::new(),
        }
    }

    /// Starts `muster-agent apply` on generation `generation`.
    fn start(&self, generation: u64) -> std::process::Child {
        let signed = self.signer.sign(&crash_bundle(generation));
        let bundle_file = self.files.path().join(format!("g{generation}.json"));
        fs::write(&bundle_file, serde_json::to_vec(&signed).unwrap()).unwrap();
        Command::new(AGENT)
            .arg("apply")
            .arg("--bundle")
            .arg(&bundle_file)
            .arg("--pubkey")
            .arg(self.signer.public_key())
            .arg("--root")
            .arg(self.root.path())
            .arg("--state-dir")
            .arg(self.state.path())
            .env("MUSTER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Checks every invariant after a round that applied `generation`
    /// (whether it finished or was killed) and returns what it saw.
    fn check(&mut self, generation: u64) -> Observed {
        let recorded = self.recorded_generation();
        assert!(
            recorded >= self.recorded,
            "the recorded generation went back from {} to {recorded}",
            self.recorded
        );
        assert!(
            recorded <= generation,
            "generation {recorded} was never applied"
        );
        self.recorded = recorded;

        let mut observed = Observed::default();
        for n in 0..N_FILES {
            let path = self.root.path().join(relative_path(n));
            let now = file_generation(&path, n);
            if let Some(found) = now {
                assert!(
                    found <= generation,
                    "{} holds generation {found}, never applied",
                    path.display()
                );
            }
            assert!(
                now >= self.seen[n],
                "{} went back from generation {:?} to {now:?}",
                path.display(),
                self.seen[n]
            );
            assert!(
                now.unwrap_or(0) >= recorded,
                "{} is at generation {now:?}, older than the recorded generation {recorded}",
                path.display()
            );
            self.seen[n] = now;
            observed.generations.insert(now);
        }
        observed.temp_files = self.check_directory_entries();
        observed
    }

    fn recorded_generation(&self) -> u64 {
        match fs::read(self.state.path().join("generation")) {
            Ok(bytes) => {
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|err| panic!("the generation file is corrupt: {err}"));
                value["generation"].as_u64().unwrap()
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
            Err(err) => panic!("cannot read the generation file: {err}"),
        }
    }

    /// Asserts that the managed directories hold managed files and, besides
    /// them, only temporary files of killed agents; returns how many of
    /// those there are.
    fn check_directory_entries(&self) -> usize {
        let crash_dir = self.root.path().join("srv/crash");
        if !crash_dir.exists() {
            return 0;
        }
        let directories: BTreeSet<String> = (0..N_DIRECTORIES).map(|d| format!("d{d}")).collect();
        let mut temp_files = 0;
        for entry in fs::read_dir(&crash_dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(directories.contains(&name), "unexpected `srv/crash/{name}`");
            let d: usize = name[1..].parse().unwrap();
            for file in fs::read_dir(crash_dir.join(&name)).unwrap() {
                let file_name = file.unwrap().file_name().into_string().unwrap();
                let managed = |stem: &str| {
                    stem.strip_prefix('f')
                        .and_then(|n| n.parse::<usize>().ok())
                        .is_some_and(|n| n < N_FILES && n % N_DIRECTORIES == d)
                };
                if managed(&file_name) {
                    continue;
                }
                let (stem, pid) = temp_file_parts(&file_name)
                    .unwrap_or_else(|| panic!("unexpected file `srv/crash/{name}/{file_name}`"));
                assert!(
                    managed(stem),
                    "temporary file `{file_name}` stands for no managed file"
                );
                assert!(
                    self.killed.contains(&pid),
                    "temporary file `{file_name}` was not left by a killed agent"
                );
                temp_files += 1;
            }
        }
        temp_files
    }
}

/// The managed name and the pid in `.NAME.muster-PID-N.tmp`.
fn temp_file_parts(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (stem, tail) = rest.rsplit_once(".muster-")?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    Some((stem, pid.parse().ok()?))
}

/// The generation whose content and mode file `n` has exactly; `None`
/// when it is missing. Anything else (a part, an empty file, content with
/// the wrong mode) fails the test.
fn file_generation(path: &Path, n: usize) -> Option<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => panic!("cannot inspect {}: {err}", path.display()),
    };
    assert!(meta.is_file(), "{} is not a regular file", path.display());
    let text = fs::read_to_string(path).unwrap();
    let generation = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix(&format!("file {n} generation ")))
        .and_then(|generation| generation.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{} holds no whole version: {text:?}", path.display()));
    assert!(
        text == content(n, generation),
        "{} is not exactly generation {generation}: {} bytes",
        path.display(),
        text.len()
    );
    let file_mode = meta.permissions().mode() & 0o7777;
    assert_eq!(
        file_mode,
        mode(generation),
        "{} has generation {generation}'s content with mode {file_mode:04o}",
        path.display()
    );
    assert_eq!(meta.nlink(), 1, "{} has other names", path.display());
    Some(generation)
}

#[test]
fn kill_9_during_a_large_converge_leaves_every_file_whole_and_the_generation_monotonic() {
    let mut host = Host::new();

    // Generation 1 runs to completion: all files written, and how long a
    // run takes, to place the kills.
    let started = Instant::now();
    let status = host.start(1).wait().unwrap();
    let mut run_time = started.elapsed();
    assert!(status.success(), "the first apply failed: {status}");
    let observed = host.check(1);
    assert_eq!(observed.generations, BTreeSet::from([Some(1)]));
    assert_eq!(host.recorded, 1);

    let mut n_killed = 0;
    let mut n_mixed = 0;
    let mut n_temp_files = 0;
    for generation in 2..2 + N_KILLED_ROUNDS {
        let mut agent = host.start(generation);
        std::thread::sleep(random_delay(run_time));
        let pid = agent.id();
        agent.kill().unwrap();
        let status = agent.wait().unwrap();
        if status.signal() == Some(9) {
            n_killed += 1;
            host.killed.insert(pid);
        } else {
            assert!(status.success(), "generation {generation} failed: {status}");
            // It finished before the kill: aim earlier from now on.
            run_time /= 2;
        }
        let observed = host.check(generation);
        if observed.generations.len() > 1 {
            n_mixed += 1;
        }
        n_temp_files += observed.temp_files;
    }
    eprintln!(
        "{N_KILLED_ROUNDS} rounds: {n_killed} killed before they finished, {n_mixed} with files of several generations after the kill, {n_temp_files} temporary files seen"
    );
    assert!(
        n_killed >= N_KILLED_ROUNDS / 2,
        "only {n_killed} of {N_KILLED_ROUNDS} rounds were killed before they finished"
    );
    assert!(
        n_mixed > 0,
        "no kill landed in the middle of a converge run"
    );

    // A run to completion brings everything to the newest generation and
    // removes what the killed agents left.
    let newest = 2 + N_KILLED_ROUNDS;
    let status = host.start(newest).wait().unwrap();
    assert!(status.success(), "the last apply failed: {status}");
    let observed = host.check(newest);
    assert_eq!(observed.generations, BTreeSet::from([Some(newest)]));
    assert_eq!(observed.temp_files, 0, "temporary files were left behind");
    assert_eq!(host.recorded, newest);
}
