//! `muster-agent check` and `apply` run as a user would, on bundles signed
//! here with a fresh minisign key: in sync / drift exit codes, and every
//! kind of bad bundle refused with the host's files untouched.

use std::fs;
use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Output};

use muster_schemas::bundle::{Bundle, SignedBundle};
use muster_schemas::model::{FileSpec, PolicyMode, Resource};

use crate::support::{AGENT, Signer, TempDir, bundle, unix_now};

/// A bundle for `host` that writes `/etc/motd` with `content`.
fn motd_bundle(host: &str, generation: u64, content: &str, mode: PolicyMode) -> Bundle {
    let desired = bundle(vec![(
        Resource::File(FileSpec {
            path: "/etc/motd".parse().unwrap(),
            content: Some(content.into()),
            mode: Some("0644".parse().unwrap()),
            ..FileSpec::default()
        }),
        mode,
    )]);
    Bundle {
        host_id: host.into(),
        host_name: "web-01".into(),
        generation,
        commit: format!("c0ffee{generation}"),
        issued_at: unix_now(),
        expires_at: unix_now() + 3600,
        content_hash: desired.content_hash(),
        desired,
    }
}

fn write_bundle(dir: &TempDir, name: &str, signed: &SignedBundle) -> String {
    let path = dir.path().join(name);
    fs::write(&path, serde_json::to_string(signed).unwrap()).unwrap();
    path.to_string_lossy().into_owned()
}

fn agent(args: &[&str]) -> Output {
    Command::new(AGENT).args(args).output().unwrap()
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn text(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A sandbox root, a state dir beside it, and a dir for bundle files.
struct Setup {
    root: TempDir,
    state: TempDir,
    files: TempDir,
    signer: Signer,
}

impl Setup {
    fn new(label: &str) -> Setup {
        Setup {
            root: TempDir::new(&format!("{label}-root")),
            state: TempDir::new(&format!("{label}-state")),
            files: TempDir::new(&format!("{label}-files")),
            signer: Signer::new(),
        }
    }

    fn motd(&self) -> std::path::PathBuf {
        self.root.path().join("etc/motd")
    }

    fn apply(&self, bundle_file: &str, key: &str) -> Output {
        agent(&[
            "apply",
            "--bundle",
            bundle_file,
            "--pubkey",
            key,
            "--root",
            &path_str(self.root.path()),
            "--state-dir",
            &path_str(self.state.path()),
        ])
    }

    /// Applies generation 1 with "hello" and checks it took.
    fn apply_first(&self) {
        let signed = self
            .signer
            .sign(&motd_bundle("h1", 1, "hello\n", PolicyMode::Enforce));
        let file = write_bundle(&self.files, "g1.json", &signed);
        let output = self.apply(&file, &self.signer.public_key());
        assert_eq!(code(&output), 0, "{}", text(&output));
        assert_eq!(fs::read_to_string(self.motd()).unwrap(), "hello\n");
    }

    /// Asserts that applying `signed` is refused with `reason` and leaves
    /// the host's file as generation 1 wrote it.
    fn assert_refused(&self, signed: &SignedBundle, key: &str, reason: &str) {
        let file = write_bundle(&self.files, "bad.json", signed);
        let before = fs::metadata(self.motd()).unwrap();
        let output = self.apply(&file, key);
        assert_eq!(code(&output), 2, "{}", text(&output));
        assert!(text(&output).contains(reason), "{}", text(&output));
        assert_eq!(fs::read_to_string(self.motd()).unwrap(), "hello\n");
        let after = fs::metadata(self.motd()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(before.ino(), after.ino(), "the file was replaced");
    }
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[test]
fn check_reports_drift_then_in_sync_after_apply() {
    let setup = Setup::new("check");
    let signed = setup
        .signer
        .sign(&motd_bundle("h1", 1, "hello\n", PolicyMode::Enforce));
    let file = write_bundle(&setup.files, "g1.json", &signed);
    let root = path_str(setup.root.path());
    let key = setup.signer.public_key();

    let output = agent(&[
        "check", "--bundle", &file, "--root", &root, "--pubkey", &key,
    ]);
    assert_eq!(code(&output), 1, "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("drifted  file:/etc/motd"), "{stdout}");
    assert!(stdout.contains("+hello"), "the diff is printed: {stdout}");
    assert!(!setup.motd().exists(), "check changed the host");

    let output = setup.apply(&file, &key);
    assert_eq!(code(&output), 0, "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("changed  file:/etc/motd"));

    let output = agent(&["check", "--bundle", &file, "--root", &root]);
    assert_eq!(code(&output), 0, "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("in_sync  file:/etc/motd"));
}

#[test]
fn check_of_a_bad_file_is_an_error() {
    let files = TempDir::new("check-bad");
    let path = files.path().join("nonsense.json");
    fs::write(&path, "{\"not\": \"a bundle\"}").unwrap();
    let output = agent(&["check", "--bundle", &path_str(&path)]);
    assert_eq!(code(&output), 2, "{}", text(&output));
    assert!(
        text(&output).contains("is not a signed bundle"),
        "{}",
        text(&output)
    );
}

#[test]
fn audit_bundles_leave_drift_and_exit_1() {
    let setup = Setup::new("audit");
    let signed = setup
        .signer
        .sign(&motd_bundle("h1", 1, "hello\n", PolicyMode::Audit));
    let file = write_bundle(&setup.files, "g1.json", &signed);
    let output = setup.apply(&file, &setup.signer.public_key());
    assert_eq!(code(&output), 1, "{}", text(&output));
    assert!(!setup.motd().exists());
}

#[test]
fn tampered_bundle_is_refused() {
    let setup = Setup::new("tampered");
    setup.apply_first();
    let mut signed = setup
        .signer
        .sign(&motd_bundle("h1", 2, "evil\n", PolicyMode::Enforce));
    signed.bundle = signed.bundle.replace("evil", "EVIL");
    setup.assert_refused(&signed, &setup.signer.public_key(), "does not verify");
}

#[test]
fn bundle_signed_with_another_key_is_refused() {
    let setup = Setup::new("wrong-key");
    setup.apply_first();
    let other = Signer::new();
    let signed = other.sign(&motd_bundle("h1", 2, "evil\n", PolicyMode::Enforce));
    setup.assert_refused(&signed, &setup.signer.public_key(), "another key");
}

#[test]
fn expired_bundle_is_refused() {
    let setup = Setup::new("expired");
    setup.apply_first();
    let mut bundle = motd_bundle("h1", 2, "evil\n", PolicyMode::Enforce);
    bundle.expires_at = unix_now() - 10;
    let signed = setup.signer.sign(&bundle);
    setup.assert_refused(&signed, &setup.signer.public_key(), "expired");
}

#[test]
fn replayed_generation_is_refused() {
    let setup = Setup::new("replay");
    setup.apply_first();
    // The same generation again, and an older one, with other content.
    for generation in [1, 0] {
        let signed =
            setup
                .signer
                .sign(&motd_bundle("h1", generation, "old\n", PolicyMode::Enforce));
        setup.assert_refused(&signed, &setup.signer.public_key(), "not newer");
    }
    let stored = fs::read_to_string(setup.state.path().join("generation")).unwrap();
    assert!(stored.contains("\"generation\":1"), "{stored}");

    // A newer generation goes through.
    let signed = setup
        .signer
        .sign(&motd_bundle("h1", 2, "new\n", PolicyMode::Enforce));
    let file = write_bundle(&setup.files, "g2.json", &signed);
    let output = setup.apply(&file, &setup.signer.public_key());
    assert_eq!(code(&output), 0, "{}", text(&output));
    assert_eq!(fs::read_to_string(setup.motd()).unwrap(), "new\n");
    let stored = fs::read_to_string(setup.state.path().join("generation")).unwrap();
    assert!(stored.contains("\"generation\":2"), "{stored}");
}

#[test]
fn header_differing_from_the_trusted_comment_is_refused() {
    let setup = Setup::new("comment");
    setup.apply_first();
    // Signed with a comment claiming generation 9 over a generation-2 body.
    let bundle = motd_bundle("h1", 2, "evil\n", PolicyMode::Enforce);
    let mut claimed = bundle.clone();
    claimed.generation = 9;
    let text = bundle.to_canonical_json_string();
    let signature = minisign::sign(
        Some(&setup.signer.keys.pk),
        &setup.signer.keys.sk,
        Cursor::new(text.as_bytes()),
        Some(&claimed.trusted_comment().to_string()),
        None,
    )
    .unwrap();
    let signed = SignedBundle {
        bundle: text,
        signature: signature.into_string(),
    };
    setup.assert_refused(&signed, &setup.signer.public_key(), "trusted comment");
}

#[test]
fn a_root_containing_the_state_dir_is_refused() {
    let setup = Setup::new("state-in-root");
    let signed = setup
        .signer
        .sign(&motd_bundle("h1", 1, "hello\n", PolicyMode::Enforce));
    let file = write_bundle(&setup.files, "g1.json", &signed);
    let state = setup.root.path().join("var/lib/muster-agent");
    let output = agent(&[
        "apply",
        "--bundle",
        &file,
        "--pubkey",
        &setup.signer.public_key(),
        "--root",
        &path_str(setup.root.path()),
        "--state-dir",
        &path_str(&state),
    ]);
    assert_eq!(code(&output), 2, "{}", text(&output));
    assert!(
        text(&output).contains("lies inside --root"),
        "{}",
        text(&output)
    );
    assert!(!setup.motd().exists());
}

#[test]
fn a_malformed_public_key_is_refused_before_anything_else() {
    let setup = Setup::new("bad-key");
    let signed = setup
        .signer
        .sign(&motd_bundle("h1", 1, "hello\n", PolicyMode::Enforce));
    let file = write_bundle(&setup.files, "g1.json", &signed);
    let output = setup.apply(&file, "not-a-key");
    assert_eq!(code(&output), 2, "{}", text(&output));
    assert!(
        text(&output).contains("is not a minisign public key"),
        "{}",
        text(&output)
    );
    assert!(!setup.motd().exists());
}
