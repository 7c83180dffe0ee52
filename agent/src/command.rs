//! The command layer: runs one program, an argument vector or a string of
//! shell script, with a timeout, extra environment, a working directory and
//! optionally as another user, and captures its output up to a bound.
//!
//! Every tool the agent drives (`systemctl`, `dpkg-query`, `apt-get`,
//! `getent`, `useradd`, …) and every `exec` resource goes through
//! [`Command::run`], so the rules hold everywhere:
//!
//! - An argument vector is executed directly, never through a shell; only
//!   [`Command::shell`] runs `/bin/sh -c <script>`.
//! - The program is looked up on the search path given to the command (or
//!   the agent's `PATH` followed by the standard system directories), so
//!   tests can put stand-in scripts first and a missing tool is reported by
//!   name.
//! - The child runs in its own process group with stdin from `/dev/null`.
//!   On timeout the whole group is killed (`kill -s KILL -- -PGID`), so a
//!   shell and everything it started go away together.
//! - stdout and stderr are each kept up to [`OUTPUT_LIMIT`] bytes; the rest
//!   is read and dropped (so the child never blocks on a full pipe) and the
//!   kept text ends with a `… truncated` marker.
//! - Running as another user goes through `runuser -u USER -- …` (util-linux),
//!   which needs root and sets up the user's groups through PAM like `su`;
//!   `setpriv` was not chosen because it leaves the supplementary groups to
//!   the caller.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes of stdout, and separately of stderr, kept from one command.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// Ends captured output that was cut at the limit.
pub const TRUNCATED_MARKER: &str = "… truncated";

/// The timeout of a command that was not given one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Searched after the agent's own `PATH` when no search path is given:
/// agents started by cron or a minimal unit file may lack the `sbin`
/// directories that `useradd` and `runuser` live in.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long to keep reading output after the command exited. A background
/// process it started may hold the pipes open for ever; its output is not
/// worth waiting for.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Where `kill(1)` lives. It is run by absolute path, never looked up on the
/// search path, so a stand-in directory cannot intercept it.
const KILL_PROGRAMS: [&str; 2] = ["/usr/bin/kill", "/bin/kill"];

/// One command to run. Build it with [`Command::new`] or [`Command::shell`]
/// and the setters, then call [`Command::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    argv: Vec<String>,
    shell: bool,
    env: BTreeMap<String, String>,
    clear_env: bool,
    cwd: Option<PathBuf>,
    run_as: Option<String>,
    timeout: Duration,
    search_path: Option<OsString>,
    output_limit: usize,
}

impl Command {
    /// A program and its arguments, executed without a shell.
    pub fn new<I, S>(argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            shell: false,
            env: BTreeMap::new(),
            clear_env: false,
            cwd: None,
            run_as: None,
            timeout: DEFAULT_TIMEOUT,
            search_path: None,
            output_limit: OUTPUT_LIMIT,
        }
    }

    /// One string of shell script, run with `/bin/sh -c`.
    pub fn shell(script: impl Into<String>) -> Command {
        Command {
            shell: true,
            ..Command::new([script.into()])
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Command {
        self.argv.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable on top of the agent's environment.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Command {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets several environment variables.
    pub fn envs(mut self, vars: &BTreeMap<String, String>) -> Command {
        self.env
            .extend(vars.iter().map(|(key, value)| (key.clone(), value.clone())));
        self
    }

    /// Starts the command with only the variables set with
    /// [`env`](Self::env) (and `PATH` from a search path), none of the
    /// agent's.
    pub fn env_clear(mut self) -> Command {
        self.clear_env = true;
        self
    }

    /// Runs the command in this directory (the agent's own otherwise).
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Command {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs the command as this user, through `runuser -u USER --`.
    pub fn run_as(mut self, user: impl Into<String>) -> Command {
        self.run_as = Some(user.into());
        self
    }

    /// Kills the command (and its process group) after this long.
    pub fn timeout(mut self, timeout: Duration) -> Command {
        self.timeout = timeout;
        self
    }

    /// Looks programs up on this search path (a `PATH`-style list) instead of
    /// the agent's, and gives it to the command as its `PATH`.
    pub fn search_path(mut self, search_path: Option<OsString>) -> Command {
        self.search_path = search_path;
        self
    }

    /// Keeps this many bytes of stdout and of stderr.
    pub fn output_limit(mut self, bytes: usize) -> Command {
        self.output_limit = bytes;
        self
    }

    /// The command as a person would type it, for messages.
    pub fn display(&self) -> String {
        if self.shell {
            let script = self.argv.join(" ");
            return format!("sh -c {}", shell_quote(&script));
        }
        let words: Vec<String> = self.argv.iter().map(|word| shell_quote(word)).collect();
        words.join(" ")
    }

    /// Runs the command to completion or until its timeout.
    ///
    /// A command that ran is `Ok` whatever its exit status; `Err` means it
    /// could not be started.
    pub fn run(&self) -> Result<Output, CommandError> {
        let argv = self.resolved_argv()?;
        let (program, args) = argv.split_first().ok_or(CommandError::Empty)?;
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout kills everything the
            // command started, not only the direct child.
            .process_group(0);
        if self.clear_env {
            command.env_clear();
        }
        if let Some(search_path) = &self.search_path {
            command.env("PATH", search_path);
        }
        command.envs(&self.env);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(|source| CommandError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        })?;
        let (done_sender, done) = mpsc::channel();
        let stdout = capture(child.stdout.take(), self.output_limit, done_sender.clone());
        let stderr = capture(child.stderr.take(), self.output_limit, done_sender);
        let termination = match wait_with_deadline(&mut child, started + self.timeout) {
            Ok(Some(status)) => termination_of(status),
            Ok(None) => {
                kill_process_group(&mut child);
                Termination::TimedOut(self.timeout)
            }
            Err(source) => {
                kill_process_group(&mut child);
                return Err(CommandError::Wait(source));
            }
        };
        let grace_end = Instant::now() + EXIT_GRACE;
        for _ in 0..2 {
            let left = grace_end.saturating_duration_since(Instant::now());
            if done.recv_timeout(left).is_err() {
                break;
            }
        }
        Ok(Output {
            termination,
            stdout: render(&stdout),
            stderr: render(&stderr),
            duration: started.elapsed(),
        })
    }

    /// The argv actually executed: the shell or `runuser` wrapped around the
    /// command, the program resolved to a path.
    fn resolved_argv(&self) -> Result<Vec<OsString>, CommandError> {
        let mut argv: Vec<OsString> = if self.shell {
            let [script] = self.argv.as_slice() else {
                return Err(CommandError::ShellArity(self.argv.len()));
            };
            vec!["/bin/sh".into(), "-c".into(), script.into()]
        } else {
            let (program, args) = self.argv.split_first().ok_or(CommandError::Empty)?;
            let mut argv = vec![self.find(program)?.into_os_string()];
            argv.extend(args.iter().map(OsString::from));
            argv
        };
        if let Some(user) = &self.run_as {
            let runuser = self.find("runuser")?;
            let mut wrapped = vec![
                runuser.into_os_string(),
                "-u".into(),
                user.into(),
                "--".into(),
            ];
            wrapped.append(&mut argv);
            argv = wrapped;
        }
        Ok(argv)
    }

    fn find(&self, program: &str) -> Result<PathBuf, CommandError> {
        find_program(program, self.search_path.as_deref()).ok_or_else(|| CommandError::NotFound {
            program: program.to_string(),
        })
    }
}

/// Finds an executable: a name with a `/` is taken as it is; a bare name is
/// looked up on `search_path`, or, when that is `None`, on the agent's
/// `PATH` followed by the standard system directories.
pub fn find_program(program: &str, search_path: Option<&OsStr>) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let search_path = match search_path {
        Some(path) => path.to_os_string(),
        None => {
            let mut path = std::env::var_os("PATH").unwrap_or_default();
            if !path.is_empty() {
                path.push(":");
            }
            path.push(SYSTEM_PATH);
            path
        }
    };
    std::env::split_paths(&search_path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub termination: Termination,
    /// Its stdout (lossily decoded as UTF-8), bounded.
    pub stdout: String,
    /// Its stderr (lossily decoded as UTF-8), bounded.
    pub stderr: String,
    /// How long it ran.
    pub duration: Duration,
}

impl Output {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.termination == Termination::Exited(0)
    }

    /// The exit code, if it exited.
    pub fn code(&self) -> Option<i32> {
        match self.termination {
            Termination::Exited(code) => Some(code),
            _ => None,
        }
    }

    /// stdout and stderr for a message: each labelled, trimmed, and cut to
    /// `limit` bytes (keeping the end, where errors usually are).
    pub fn summary(&self, limit: usize) -> String {
        let mut text = String::new();
        for (label, stream) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let stream = stream.trim_end();
            if stream.is_empty() {
                continue;
            }
            text.push_str(&format!("\n{label}:\n{}", tail(stream, limit)));
        }
        text
    }
}

/// The last `limit` bytes of `text` (on a character boundary), marked when
/// cut.
fn tail(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("{TRUNCATED_MARKER} …\n{}", &text[start..])
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// It exited with this code.
    Exited(i32),
    /// A signal (not ours) ended it.
    Signaled(i32),
    /// It ran past its timeout and its process group was killed.
    TimedOut(Duration),
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Termination::Exited(code) => write!(f, "exited with code {code}"),
            Termination::Signaled(signal) => write!(f, "was killed by signal {signal}"),
            Termination::TimedOut(after) => {
                write!(
                    f,
                    "timed out after {} and was killed",
                    format_duration(*after)
                )
            }
        }
    }
}

fn format_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Why a command could not be started.
#[derive(Debug)]
pub enum CommandError {
    /// The argument vector is empty.
    Empty,
    /// A shell command must be exactly one string of script.
    ShellArity(usize),
    /// The program is not on the search path.
    NotFound { program: String },
    /// The operating system refused to start it.
    Spawn { program: String, source: io::Error },
    /// Waiting for it failed.
    Wait(io::Error),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Empty => f.write_str("the command is empty: give a program to run"),
            CommandError::ShellArity(n) => write!(
                f,
                "a shell command is one string of script, not {n}: join the words into one string"
            ),
            CommandError::NotFound { program } => write!(
                f,
                "command `{program}` not found on the search path: install it or give its full path"
            ),
            CommandError::Spawn { program, source } => {
                write!(f, "could not start `{program}`: {source}")
            }
            CommandError::Wait(source) => write!(f, "could not wait for the command: {source}"),
        }
    }
}

impl std::error::Error for CommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CommandError::Spawn { source, .. } | CommandError::Wait(source) => Some(source),
            _ => None,
        }
    }
}

/// Bytes kept from one stream, and how many there were in all.
#[derive(Debug)]
struct Capture {
    kept: Vec<u8>,
    total: usize,
    limit: usize,
}

impl Capture {
    fn push(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..room.min(bytes.len())]);
        self.total += bytes.len();
    }
}

/// Reads a pipe on its own thread into a bounded buffer. The buffer is
/// shared rather than returned so that the output read so far is available
/// even when a background process keeps the pipe open.
fn capture<R: Read + Send + 'static>(
    pipe: Option<R>,
    limit: usize,
    done: mpsc::Sender<()>,
) -> Arc<Mutex<Capture>> {
    let buffer = Arc::new(Mutex::new(Capture {
        kept: Vec::new(),
        total: 0,
        limit,
    }));
    let Some(mut pipe) = pipe else {
        let _ = done.send(());
        return buffer;
    };
    let shared = Arc::clone(&buffer);
    let spawned = thread::Builder::new()
        .name("command-output".into())
        .spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => shared
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(&chunk[..n]),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = done.send(());
        });
    // Without a reader thread the output is lost, but the command still
    // runs: a full pipe only blocks it until the timeout kills it.
    drop(spawned);
    buffer
}

fn render(capture: &Arc<Mutex<Capture>>) -> String {
    let capture = capture.lock().unwrap_or_else(PoisonError::into_inner);
    let mut text = String::from_utf8_lossy(&capture.kept).into_owned();
    if capture.total > capture.kept.len() {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "{TRUNCATED_MARKER} ({} bytes in all)",
            capture.total
        ));
    }
    text
}

/// Waits for the child until `deadline`; `Ok(None)` when it is still
/// running then. Polls with a growing interval: std offers no wait with a
/// timeout, and a waiter thread would own the child that must be killed.
fn wait_with_deadline(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    let mut interval = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(Duration::from_millis(25));
    }
}

/// Kills the child's whole process group, then the child itself in case
/// `kill(1)` is missing, and reaps it. The child has not been reaped yet, so
/// its pid (which is the group id) cannot have been reused.
fn kill_process_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    if let Some(kill) = KILL_PROGRAMS.iter().find(|path| Path::new(path).is_file()) {
        let _ = std::process::Command::new(kill)
            .args(["-s", "KILL", "--", &group])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn termination_of(status: ExitStatus) -> Termination {
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Exited(code),
        (None, Some(signal)) => Termination::Signaled(signal),
        // Neither a code nor a signal does not happen on Unix; call it a
        // failure rather than a success.
        (None, None) => Termination::Exited(-1),
    }
}

/// Quotes a word for a POSIX shell when it needs quoting, for messages.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_an_argv_without_a_shell() {
        let output = Command::new(["echo", "a;b", "$HOME"]).run().unwrap();
        assert!(output.success());
        assert_eq!(output.stdout, "a;b $HOME\n");
    }

    #[test]
    fn runs_shell_script_only_when_asked() {
        let output = Command::shell("echo one; echo two >&2; exit 3")
            .run()
            .unwrap();
        assert_eq!(output.termination, Termination::Exited(3));
        assert_eq!(output.stdout, "one\n");
        assert_eq!(output.stderr, "two\n");
        assert!(matches!(
            Command::new(["echo", "x"]).output_limit(1).run(),
            Ok(Output { .. })
        ));
        let err = Command::new(["a", "b"]);
        let err = Command { shell: true, ..err }.run().unwrap_err();
        assert!(matches!(err, CommandError::ShellArity(2)), "{err}");
    }

    #[test]
    fn output_is_bounded_with_a_marker() {
        let output = Command::shell("head -c 100000 /dev/zero | tr '\\0' x")
            .output_limit(1000)
            .run()
            .unwrap();
        assert!(output.success());
        assert!(output.stdout.starts_with(&"x".repeat(1000)));
        assert!(
            output
                .stdout
                .ends_with("\n… truncated (100000 bytes in all)"),
            "{}",
            &output.stdout[990..]
        );
    }

    #[test]
    fn env_and_cwd_reach_the_command() {
        let output = Command::shell("echo \"$GREETING\"; pwd")
            .env("GREETING", "hello there")
            .cwd("/")
            .run()
            .unwrap();
        assert_eq!(output.stdout, "hello there\n/\n");
    }

    #[test]
    fn a_cleared_environment_holds_only_what_was_set() {
        let output = Command::new(["/usr/bin/env"])
            .env_clear()
            .env("ONLY", "this")
            .run()
            .unwrap();
        assert_eq!(output.stdout, "ONLY=this\n");
    }

    #[test]
    fn missing_programs_are_named() {
        let err = Command::new(["muster-no-such-program"]).run().unwrap_err();
        assert_eq!(
            err.to_string(),
            "command `muster-no-such-program` not found on the search path: install it or give its full path"
        );
        let err = Command::new(["sh"])
            .search_path(Some("/nonexistent".into()))
            .run()
            .unwrap_err();
        assert!(matches!(err, CommandError::NotFound { .. }));
        assert!(matches!(
            Command::new(Vec::<String>::new()).run(),
            Err(CommandError::Empty)
        ));
    }

    #[test]
    fn display_quotes_words_that_need_it() {
        assert_eq!(
            Command::new(["apt-get", "install", "-y", "a b", "it's"]).display(),
            r"apt-get install -y 'a b' 'it'\''s'"
        );
        assert_eq!(Command::shell("echo hi").display(), "sh -c 'echo hi'");
    }

    #[test]
    fn summary_keeps_the_end() {
        let output = Output {
            termination: Termination::Exited(1),
            stdout: String::new(),
            stderr: "first line\nlast line\n".into(),
            duration: Duration::ZERO,
        };
        assert_eq!(output.summary(9), "\nstderr:\n… truncated …\nlast line");
        assert_eq!(output.summary(100), "\nstderr:\nfirst line\nlast line");
    }
}
