//! Running the `muster` binary as an operator would: a command with input
//! on stdin, and its output read as text.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// A command for the `muster` binary this test run built.
pub(crate) fn muster_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_muster"))
}

/// Runs `command` with `stdin` as its input (a password, a confirmation)
/// and waits for it, keeping its stdout and stderr.
pub(crate) fn run_with_stdin(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("muster runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("muster reads its stdin");
    child.wait_with_output().expect("muster finishes")
}

/// Stdout, then stderr, for assertion messages.
pub(crate) fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The stdout of a command that must have succeeded.
pub(crate) fn succeeded(output: &Output) -> String {
    assert!(output.status.success(), "{}", output_text(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}
