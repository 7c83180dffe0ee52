//! The command layer with real processes: stand-ins found first on the
//! search path, and running as another user.

use muster_agent::command::{Command, Termination};

use crate::support::{StandIns, TempDir, my_ids};

#[test]
fn stand_ins_on_the_search_path_come_first() {
    let tools = StandIns::new("search-path");
    tools.tool("systemctl", "echo stand-in");
    let output = tools
        .context()
        .command(["systemctl", "--version"])
        .run()
        .unwrap();
    assert_eq!(output.stdout, "stand-in\n");
    assert_eq!(
        tools.take_log(),
        vec![vec!["systemctl".to_string(), "--version".to_string()]]
    );
}

#[test]
fn run_as_goes_through_runuser() {
    let dir = TempDir::new("run-as");
    if my_ids(&dir).0 != 0 {
        eprintln!("skipped: runuser needs root");
        return;
    }
    let output = Command::new(["id", "-un"]).run_as("nobody").run().unwrap();
    assert_eq!(output.termination, Termination::Exited(0), "{output:?}");
    assert_eq!(output.stdout, "nobody\n");
}

#[test]
fn run_as_wraps_the_resolved_program_in_runuser() {
    let tools = StandIns::new("runuser");
    tools.tool("runuser", "");
    tools.tool("whoami", "");
    let whoami = tools.dir.path().join("bin/whoami");
    let output = tools
        .context()
        .command(["whoami", "--flag"])
        .run_as("deploy")
        .run()
        .unwrap();
    assert!(output.success());
    assert_eq!(
        tools.take_log(),
        vec![vec![
            "runuser".to_string(),
            "-u".into(),
            "deploy".into(),
            "--".into(),
            whoami.to_string_lossy().into_owned(),
            "--flag".into(),
        ]]
    );
}
