//! The Git source against real repositories: mirroring local paths and
//! `file://` URLs, following new commits and force-pushes, reading trees
//! without a work tree, and checking SSH commit signatures.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use muster_controller::repo;
use muster_controller::source::{GitSource, SignatureCheck, SourceError};
use muster_schemas::load::{self, MAX_FILE_BYTES};
use ssh_key::LineEnding;

use crate::support::TempDir;
use crate::support::git::{
    AUTHOR_EMAIL, AUTHOR_NAME, Change, MAIN, TestRepo, allowed_signer, example_repo,
    public_key_line, signing_key, ssh_signature, write,
};

/// A mirror dir in a fresh temp dir, kept alive by the returned guard.
fn mirror_dir(label: &str) -> (TempDir, PathBuf) {
    let data_dir = TempDir::new(label);
    let mirror = data_dir.path().join("mirror.git");
    (data_dir, mirror)
}

fn open(mirror: &Path, url: &str) -> GitSource {
    GitSource::open(mirror, url, MAIN, None).expect("source opens")
}

fn fetched_id(source: &GitSource) -> String {
    source
        .fetch()
        .expect("fetch succeeds")
        .expect("branch exists")
        .id
}

/// `path` relative to the current directory, through `..` up to the root.
fn relative_to_cwd(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().expect("current dir");
    let mut relative = PathBuf::new();
    for component in cwd.components() {
        if matches!(component, Component::Normal(_)) {
            relative.push("..");
        }
    }
    relative.join(path.strip_prefix("/").expect("temp dirs are absolute"))
}

#[test]
fn git_source_is_send_so_it_can_live_behind_a_mutex() {
    fn assert_send<T: Send>() {}
    assert_send::<GitSource>();
    assert_send::<std::sync::Mutex<GitSource>>();
}

#[test]
fn mirror_of_a_relative_local_path_reads_like_the_directory() {
    let remote = TestRepo::from_example("source-local");
    let (_data, mirror) = mirror_dir("source-local-mirror");
    let relative = relative_to_cwd(remote.path());
    assert!(relative.is_relative());
    let source = open(&mirror, relative.to_str().expect("utf-8 path"));
    assert_eq!(source.url(), remote.path().to_str().expect("utf-8 path"));
    assert!(
        mirror.join("HEAD").is_file(),
        "the mirror is a bare repository"
    );
    assert!(
        source.head().expect("head reads").is_none(),
        "nothing is fetched at open"
    );

    let id = fetched_id(&source);
    assert_eq!(Some(id.clone()), remote.tip(MAIN));

    let from_git = source.snapshot(&id).expect("snapshot reads");
    let from_disk = repo::read_dir(&example_repo()).expect("example repo reads");
    assert_eq!(from_git.repo_files, from_disk.repo_files);
    let mut disk_paths: Vec<_> = from_disk
        .fleet_files
        .iter()
        .map(|f| f.path.clone())
        .collect();
    disk_paths.sort();
    let git_paths: Vec<_> = from_git
        .fleet_files
        .iter()
        .map(|f| f.path.clone())
        .collect();
    assert_eq!(git_paths, disk_paths, "fleet files come in path order");
    let validation = from_git.validate();
    assert_eq!(validation.n_errors(), 0, "{:#?}", validation.diagnostics);
    assert!(validation.model.is_some());
}

#[test]
fn mirror_of_a_file_url_reports_the_commit() {
    let remote = TestRepo::from_example("source-file-url");
    let (_data, mirror) = mirror_dir("source-file-url-mirror");
    let source = open(&mirror, &remote.file_url());
    let commit = source
        .fetch()
        .expect("fetch succeeds")
        .expect("branch exists");
    assert_eq!(Some(commit.id.clone()), remote.tip(MAIN));
    assert_eq!(commit.author, format!("{AUTHOR_NAME} <{AUTHOR_EMAIL}>"));
    assert_eq!(commit.summary, "Add the example fleet repo");
    assert_eq!(commit.time, 1_700_000_000);
    assert_eq!(source.head().expect("head reads"), Some(commit));
}

#[test]
fn reopening_the_mirror_keeps_what_was_fetched() {
    let remote = TestRepo::from_example("source-reopen");
    let (_data, mirror) = mirror_dir("source-reopen-mirror");
    let id = fetched_id(&open(&mirror, &remote.file_url()));
    let reopened = open(&mirror, &remote.file_url());
    assert_eq!(reopened.head().expect("head reads").map(|c| c.id), Some(id));
}

#[test]
fn fetch_picks_up_a_new_commit() {
    let remote = TestRepo::from_example("source-new-commit");
    let (_data, mirror) = mirror_dir("source-new-commit-mirror");
    let source = open(&mirror, &remote.file_url());
    let first = fetched_id(&source);

    let second = remote.commit("Change the motd", &write("files/motd", "hello\n"));
    assert_eq!(
        source.head().expect("head reads").map(|c| c.id),
        Some(first.clone()),
        "head does not fetch"
    );
    let fetched = source
        .fetch()
        .expect("fetch succeeds")
        .expect("branch exists");
    assert_eq!(fetched.id, second);
    assert_eq!(fetched.summary, "Change the motd");
    assert_eq!(
        source.read_file(&second, "files/motd").expect("reads"),
        Some(b"hello\n".to_vec())
    );
    let third = remote.commit(
        "Remove the motd",
        &[("files/motd".to_string(), Change::Removed)],
    );
    assert_eq!(fetched_id(&source), third);
    assert_eq!(source.read_file(&third, "files/motd").expect("reads"), None);
    let old_motd = std::fs::read(example_repo().join("files/motd")).expect("example motd");
    assert_eq!(
        source.read_file(&first, "files/motd").expect("reads"),
        Some(old_motd),
        "older commits stay readable"
    );
}

#[test]
fn force_push_is_followed() {
    let remote = TestRepo::from_example("source-force-push");
    let (_data, mirror) = mirror_dir("source-force-push-mirror");
    let source = open(&mirror, &remote.file_url());
    let base = fetched_id(&source);
    let abandoned = remote.commit("Add a note", &write("NOTES.md", "one\n"));
    assert_eq!(fetched_id(&source), abandoned);

    remote.set_branch(MAIN, &base);
    let rewritten = remote.commit("Add a better note", &write("NOTES.md", "two\n"));
    assert_eq!(fetched_id(&source), rewritten);
    assert_eq!(
        source.read_file(&rewritten, "NOTES.md").expect("reads"),
        Some(b"two\n".to_vec())
    );
}

#[test]
fn unknown_branch_is_none_until_it_is_pushed() {
    let remote = TestRepo::from_example("source-unknown-branch");
    let (_data, mirror) = mirror_dir("source-unknown-branch-mirror");
    let source = GitSource::open(&mirror, &remote.file_url(), "release", None).expect("opens");
    assert_eq!(source.fetch().expect("fetch succeeds"), None);
    assert_eq!(source.head().expect("head reads"), None);

    let tip = remote.tip(MAIN).expect("main exists");
    remote.set_branch("release", &tip);
    assert_eq!(fetched_id(&source), tip);

    remote.delete_branch("release");
    assert_eq!(source.fetch().expect("fetch succeeds"), None);
    assert_eq!(
        source.head().expect("head reads"),
        None,
        "the mirror forgets it too"
    );
}

#[test]
fn empty_repository_has_no_branch_yet() {
    let remote = TestRepo::empty("source-empty");
    let (_data, mirror) = mirror_dir("source-empty-mirror");
    let source = open(&mirror, &remote.file_url());
    assert_eq!(source.fetch().expect("fetch succeeds"), None);
}

#[test]
fn invalid_branch_name_is_refused_at_open() {
    let remote = TestRepo::empty("source-bad-branch");
    let (_data, mirror) = mirror_dir("source-bad-branch-mirror");
    let err = GitSource::open(&mirror, &remote.file_url(), "a..b", None).expect_err("refused");
    assert!(matches!(err, SourceError::InvalidBranch { .. }), "{err:?}");
    assert_eq!(err.metric_label(), "invalid_branch");
}

#[test]
fn missing_local_repository_is_unreachable_with_advice() {
    let missing = TempDir::new("source-missing");
    let url = missing.path().join("no-such-repo");
    let (_data, mirror) = mirror_dir("source-missing-mirror");
    let source = open(&mirror, url.to_str().expect("utf-8"));
    let err = source.fetch().expect_err("nothing to fetch");
    assert!(matches!(err, SourceError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.metric_label(), "unreachable");
    let message = err.to_string();
    assert!(message.contains(url.to_str().expect("utf-8")), "{message}");
    assert!(message.contains("no such directory"), "{message}");
    assert!(message.contains("check the repo url"), "{message}");

    let file_url = format!("file://{}", url.display());
    let err = open(&mirror, &file_url)
        .fetch()
        .expect_err("nothing to fetch");
    assert!(err.to_string().contains("no such directory"), "{err}");

    let not_a_repo = TempDir::new("source-not-a-repo");
    let err = open(&mirror, not_a_repo.path().to_str().expect("utf-8"))
        .fetch()
        .expect_err("not a repository");
    assert_eq!(err.metric_label(), "unreachable", "{err}");
}

#[test]
fn credentials_in_the_url_never_reach_messages() {
    let (_data, mirror) = mirror_dir("source-credentials-mirror");
    // Port 1 refuses connections at once, so no network is needed.
    let url = "https://deploy:s3cret-token@127.0.0.1:1/fleet.git";
    let source = open(&mirror, url);
    assert_eq!(source.url(), "https://127.0.0.1:1/fleet.git");
    assert!(!format!("{source:?}").contains("s3cret"));
    let err = source.fetch().expect_err("nothing listens on port 1");
    assert_eq!(err.metric_label(), "unreachable", "{err}");
    let message = err.to_string();
    assert!(
        !message.contains("s3cret") && !message.contains("deploy:"),
        "{message}"
    );
    assert!(
        message.contains("https://127.0.0.1:1/fleet.git"),
        "{message}"
    );

    let err = GitSource::open(&mirror, "ftp://deploy:s3cret@example.com/x", MAIN, None)
        .expect_err("ftp is not supported");
    assert_eq!(err.metric_label(), "unsupported_url");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// An HTTP server on `127.0.0.1:0` that answers every request with 401,
/// as a git host does for a private repository and wrong credentials.
fn refusing_http_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
    let address = listener.local_addr().expect("address");
    // The thread ends with the test process: it holds no test state.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0; 1024];
            while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"fleet\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    format!("http://{address}")
}

#[test]
fn refused_credentials_are_an_auth_error_without_the_secret() {
    let server = refusing_http_server();
    let (_data, mirror) = mirror_dir("source-auth-mirror");
    let url = server.replace("http://", "http://deploy:s3cret-token@") + "/org/fleet.git";
    let source = open(&mirror, &url);
    let err = source.fetch().expect_err("the server refuses");
    assert!(matches!(err, SourceError::Auth { .. }), "{err:?}");
    assert_eq!(err.metric_label(), "auth");
    let message = err.to_string();
    assert!(!message.contains("s3cret"), "{message}");
    assert!(
        message.contains(&format!("{server}/org/fleet.git")),
        "{message}"
    );
    assert!(message.contains("credential helper"), "{message}");
}

#[cfg(not(feature = "ssh"))]
#[test]
fn ssh_urls_need_the_ssh_feature() {
    let (_data, mirror) = mirror_dir("source-ssh-mirror");
    for url in [
        "git@github.com:org/fleet.git",
        "ssh://git@github.com/org/fleet.git",
    ] {
        let err = GitSource::open(&mirror, url, MAIN, None).expect_err("no ssh support");
        assert_eq!(err.metric_label(), "unsupported_url");
        assert!(err.to_string().contains("--features ssh"), "{err}");
    }
}

#[cfg(feature = "ssh")]
#[test]
fn ssh_urls_are_accepted_with_the_ssh_feature() {
    let (_data, mirror) = mirror_dir("source-ssh-mirror");
    // User info is left out of URLs shown, since hosts take tokens as user
    // names too; scp-like addresses have no room for a password.
    for (url, shown) in [
        (
            "git@github.com:org/fleet.git",
            "git@github.com:org/fleet.git",
        ),
        (
            "ssh://git@github.com/org/fleet.git",
            "ssh://github.com/org/fleet.git",
        ),
    ] {
        let source = GitSource::open(&mirror, url, MAIN, None).expect("ssh is supported");
        assert_eq!(source.url(), shown);
    }
}

#[test]
fn changed_url_repoints_the_mirror_and_forgets_the_old_branch() {
    let first = TestRepo::from_example("source-url-first");
    let second = TestRepo::empty("source-url-second");
    second.commit("Only a readme", &write("README.md", "fleet\n"));
    let (_data, mirror) = mirror_dir("source-url-mirror");
    fetched_id(&open(&mirror, &first.file_url()));

    let source = open(&mirror, &second.file_url());
    assert_eq!(
        source.head().expect("head reads"),
        None,
        "no commit of the old repository is taken for one of the new"
    );
    assert_eq!(Some(fetched_id(&source)), second.tip(MAIN));
    let remote = git2::Repository::open_bare(&mirror).expect("mirror opens");
    let origin = remote.find_remote("origin").expect("origin exists");
    assert_eq!(origin.url(), Ok(second.file_url().as_str()));
}

#[test]
fn mirror_dir_holding_something_else_is_refused() {
    let (data, mirror) = mirror_dir("source-occupied-mirror");
    std::fs::create_dir_all(&mirror).expect("dir");
    std::fs::write(mirror.join("notes.txt"), "mine").expect("file");
    let remote = TestRepo::empty("source-occupied");
    let err = GitSource::open(&mirror, &remote.file_url(), MAIN, None).expect_err("refused");
    assert_eq!(err.metric_label(), "mirror");
    assert!(err.to_string().contains("not a git mirror"), "{err}");

    // A repository muster did not create is not adopted and force-updated.
    let foreign = data.path().join("foreign.git");
    git2::Repository::init_bare(&foreign).expect("bare repo");
    let err = GitSource::open(&foreign, &remote.file_url(), MAIN, None).expect_err("refused");
    assert_eq!(err.metric_label(), "mirror");
    assert!(err.to_string().contains("muster did not create"), "{err}");
}

#[test]
fn subdir_snapshot_sees_only_its_files_with_relative_paths() {
    let remote = TestRepo::from_example_at("source-subdir", "deploy/fleet");
    let tip = remote.commit(
        "Add files outside the fleet repo",
        &[
            ("README.md".to_string(), Change::file("monorepo\n")),
            (
                "deploy/other.yaml".to_string(),
                Change::file("apiVersion: muster.dev/v1\nkind: Nonsense\n"),
            ),
        ],
    );
    let (_data, mirror) = mirror_dir("source-subdir-mirror");
    let source =
        GitSource::open(&mirror, &remote.file_url(), MAIN, Some("./deploy/fleet/")).expect("opens");
    assert_eq!(source.subdir(), Some("deploy/fleet"));
    assert_eq!(fetched_id(&source), tip);

    let snapshot = source.snapshot(&tip).expect("snapshot reads");
    let from_disk = repo::read_dir(&example_repo()).expect("example repo reads");
    assert_eq!(snapshot.repo_files, from_disk.repo_files);
    assert!(snapshot.repo_files.contains("fleet.yaml"));
    assert!(
        !snapshot
            .repo_files
            .iter()
            .any(|path| path.contains("README"))
    );
    assert!(
        snapshot
            .fleet_files
            .iter()
            .all(|file| file.path != "deploy/other.yaml")
    );
    assert_eq!(snapshot.validate().n_errors(), 0);

    assert!(
        source
            .read_file(&tip, "fleet.yaml")
            .expect("reads")
            .is_some()
    );
    assert_eq!(
        source.read_file(&tip, "../../README.md").expect("reads"),
        None
    );
    assert_eq!(source.read_file(&tip, "README.md").expect("reads"), None);
}

#[test]
fn absent_subdir_is_an_error_naming_it() {
    let remote = TestRepo::from_example("source-no-subdir");
    let tip = remote.tip(MAIN).expect("main exists");
    let (_data, mirror) = mirror_dir("source-no-subdir-mirror");
    let source =
        GitSource::open(&mirror, &remote.file_url(), MAIN, Some("deploy/fleet")).expect("opens");
    fetched_id(&source);
    let err = source.snapshot(&tip).expect_err("no such dir");
    assert_eq!(err.metric_label(), "missing_subdir");
    let message = err.to_string();
    assert!(
        message.contains("`deploy/fleet` does not exist"),
        "{message}"
    );
    assert!(message.contains("--path"), "{message}");

    let source =
        GitSource::open(&mirror, &remote.file_url(), MAIN, Some("fleet.yaml")).expect("opens");
    let err = source.read_file(&tip, "x").expect_err("not a dir");
    assert!(
        err.to_string().contains("`fleet.yaml` is not a directory"),
        "{err}"
    );

    let err = GitSource::open(&mirror, &remote.file_url(), MAIN, Some("../elsewhere"))
        .expect_err("leaves the repo");
    assert_eq!(err.metric_label(), "invalid_path");
}

#[test]
fn symlinked_fleet_file_gets_a_diagnostic_and_is_not_followed() {
    let remote = TestRepo::from_example("source-symlink");
    let tip = remote.commit(
        "Add links, a dot-dir and a submodule",
        &[
            (
                "policies/linked.yaml".to_string(),
                Change::Symlink("../fleet.yaml".to_string()),
            ),
            (
                "hosts/passwd.yaml".to_string(),
                Change::Symlink("/etc/passwd".to_string()),
            ),
            (
                "files/linked-motd".to_string(),
                Change::Symlink("motd".to_string()),
            ),
            (
                ".github/workflows/ci.yaml".to_string(),
                Change::file("not: [a fleet file"),
            ),
            (
                "vendor/lib".to_string(),
                Change::Submodule(git2::Oid::from_str(&"ab".repeat(20)).expect("hex")),
            ),
        ],
    );
    let (_data, mirror) = mirror_dir("source-symlink-mirror");
    let source = open(&mirror, &remote.file_url());
    fetched_id(&source);
    let snapshot = source.snapshot(&tip).expect("snapshot reads");

    for path in ["policies/linked.yaml", "hosts/passwd.yaml"] {
        let file = snapshot
            .fleet_files
            .iter()
            .find(|file| file.path == path)
            .unwrap_or_else(|| panic!("{path} is reported"));
        assert!(file.documents.is_empty(), "{path} is not read");
        assert_eq!(file.diagnostics.len(), 1);
        assert!(
            file.diagnostics[0].message.contains("symbolic link"),
            "{:?}",
            file.diagnostics
        );
        assert!(!snapshot.repo_files.contains(path));
    }
    assert!(!snapshot.repo_files.contains("files/linked-motd"));
    assert!(
        !snapshot
            .repo_files
            .iter()
            .any(|path| path.starts_with(".github"))
    );
    assert!(
        !snapshot
            .repo_files
            .iter()
            .any(|path| path.starts_with("vendor"))
    );
    assert_eq!(
        source.read_file(&tip, "files/linked-motd").expect("reads"),
        None
    );
    assert_eq!(source.read_file(&tip, "vendor/lib").expect("reads"), None);
    assert_eq!(
        snapshot.validate().n_errors(),
        2,
        "only the two links are errors"
    );
}

#[test]
fn oversize_fleet_file_is_refused_unread() {
    let remote = TestRepo::from_example("source-oversize");
    let n_bytes = MAX_FILE_BYTES + 1;
    let tip = remote.commit(
        "Add a huge policy and a huge binary",
        &[
            (
                "policies/huge.yaml".to_string(),
                Change::File(vec![b'#'; n_bytes]),
            ),
            ("files/huge.bin".to_string(), Change::File(vec![0; n_bytes])),
        ],
    );
    let (_data, mirror) = mirror_dir("source-oversize-mirror");
    let source = open(&mirror, &remote.file_url());
    fetched_id(&source);
    let snapshot = source.snapshot(&tip).expect("snapshot reads");
    let huge = snapshot
        .fleet_files
        .iter()
        .find(|file| file.path == "policies/huge.yaml")
        .expect("huge file is reported");
    let expected = load::too_large("policies/huge.yaml", n_bytes as u64);
    assert_eq!(huge.diagnostics.len(), 1);
    assert_eq!(huge.diagnostics[0].message, expected.diagnostics[0].message);
    assert!(huge.documents.is_empty());
    assert!(snapshot.repo_files.contains("policies/huge.yaml"));
    assert!(snapshot.repo_files.contains("files/huge.bin"));
}

#[test]
fn read_file_returns_regular_files_only() {
    let remote = TestRepo::from_example("source-read-file");
    let tip = remote.commit(
        "Add a script",
        &[(
            "scripts/run.sh".to_string(),
            Change::Executable(b"#!/bin/sh\n".to_vec()),
        )],
    );
    let (_data, mirror) = mirror_dir("source-read-file-mirror");
    let source = open(&mirror, &remote.file_url());
    fetched_id(&source);

    let motd = std::fs::read(example_repo().join("files/motd")).expect("example motd");
    assert_eq!(
        source.read_file(&tip, "files/motd").expect("reads"),
        Some(motd.clone())
    );
    assert_eq!(
        source.read_file(&tip, "./files//motd").expect("reads"),
        Some(motd)
    );
    assert_eq!(
        source.read_file(&tip, "scripts/run.sh").expect("reads"),
        Some(b"#!/bin/sh\n".to_vec())
    );
    assert_eq!(
        source.read_file(&tip, "files").expect("reads"),
        None,
        "a directory"
    );
    assert_eq!(source.read_file(&tip, "files/absent").expect("reads"), None);
    assert_eq!(source.read_file(&tip, "").expect("reads"), None);

    let short = &tip[..12];
    let err = source
        .read_file(short, "files/motd")
        .expect_err("short ids are refused");
    assert_eq!(err.metric_label(), "unknown_commit");
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let err = source.snapshot(unknown).expect_err("not in the mirror");
    assert!(matches!(err, SourceError::UnknownCommit { .. }), "{err:?}");
    assert!(err.to_string().contains(unknown), "{err}");
}

/// Makes the armored signature of a commit's bytes.
type Sign = Box<dyn FnOnce(&str) -> String>;

/// A mirror of a repo whose `main` is the example plus one commit made by
/// `sign` (`None`: unsigned); returns the source and that commit's id.
fn signed_commit(label: &str, sign: Option<Sign>) -> (TestRepo, TempDir, GitSource, String) {
    let remote = TestRepo::from_example(label);
    let changes = write("files/motd", "signed\n");
    let id = match sign {
        Some(sign) => remote.commit_signed_on(MAIN, "Signed change", &changes, sign),
        None => remote.commit("Unsigned change", &changes),
    };
    let (data, mirror) = mirror_dir(&format!("{label}-mirror"));
    let source = open(&mirror, &remote.file_url());
    assert_eq!(fetched_id(&source), id);
    (remote, data, source, id)
}

#[test]
fn commit_signed_by_an_allowed_key_is_verified() {
    let key = signing_key(1);
    let signer = key.clone();
    let (_remote, _data, source, id) = signed_commit(
        "source-sig-ok",
        Some(Box::new(move |buffer| {
            ssh_signature(&signer, "git", buffer)
        })),
    );
    let other = signing_key(2);
    let allowed = vec![
        muster_schemas::model::AllowedSigner {
            name: "broken".to_string(),
            key: "ssh-ed25519 not-base64".to_string(),
        },
        allowed_signer("bob", &other),
        allowed_signer("alice", &key),
    ];
    assert_eq!(
        source.verify_signature(&id, &allowed).expect("checks"),
        SignatureCheck::Verified {
            signer: "alice".to_string()
        }
    );
    // A key line with a comment, as copied from a `.pub` file.
    let with_comment = muster_schemas::model::AllowedSigner {
        name: "alice laptop".to_string(),
        key: format!("  {} alice@laptop\n", public_key_line(&key)),
    };
    assert_eq!(
        source
            .verify_signature(&id, &[with_comment])
            .expect("checks"),
        SignatureCheck::Verified {
            signer: "alice laptop".to_string()
        }
    );
}

#[test]
fn unsigned_commit_is_unsigned() {
    let (_remote, _data, source, id) = signed_commit("source-sig-none", None);
    let allowed = vec![allowed_signer("alice", &signing_key(1))];
    assert_eq!(
        source.verify_signature(&id, &allowed).expect("checks"),
        SignatureCheck::Unsigned
    );
}

#[test]
fn commit_signed_by_a_key_not_allowed_is_unknown_key() {
    let stranger = signing_key(9);
    let (_remote, _data, source, id) = signed_commit(
        "source-sig-unknown",
        Some(Box::new(move |buffer| {
            ssh_signature(&stranger, "git", buffer)
        })),
    );
    let allowed = vec![allowed_signer("alice", &signing_key(1))];
    assert_eq!(
        source.verify_signature(&id, &allowed).expect("checks"),
        SignatureCheck::UnknownKey
    );
    assert_eq!(
        source.verify_signature(&id, &[]).expect("checks"),
        SignatureCheck::UnknownKey
    );
}

#[test]
fn signature_over_other_data_is_invalid() {
    let key = signing_key(1);
    let signer = key.clone();
    let (_remote, _data, source, id) = signed_commit(
        "source-sig-tampered",
        Some(Box::new(move |buffer| {
            // Signed before the message was changed: the signature is
            // genuine, but not of this commit.
            let original = buffer.replace("Signed change", "Harmless change");
            ssh_signature(&signer, "git", &original)
        })),
    );
    let allowed = vec![allowed_signer("alice", &key)];
    let check = source.verify_signature(&id, &allowed).expect("checks");
    let SignatureCheck::Invalid(reason) = check else {
        panic!("expected invalid, got {check:?}");
    };
    assert!(reason.contains("does not match the commit"), "{reason}");
}

#[test]
fn signature_in_another_namespace_is_invalid() {
    let key = signing_key(1);
    let signer = key.clone();
    let (_remote, _data, source, id) = signed_commit(
        "source-sig-namespace",
        Some(Box::new(move |buffer| {
            ssh_signature(&signer, "file", buffer)
        })),
    );
    let allowed = vec![allowed_signer("alice", &key)];
    let check = source.verify_signature(&id, &allowed).expect("checks");
    let SignatureCheck::Invalid(reason) = check else {
        panic!("expected invalid, got {check:?}");
    };
    assert!(reason.contains("namespace `file`"), "{reason}");
}

#[test]
fn gpg_signature_is_invalid_not_an_ssh_signature() {
    let (_remote, _data, source, id) = signed_commit(
        "source-sig-gpg",
        Some(Box::new(|_| {
            "-----BEGIN PGP SIGNATURE-----\n\niQEzBAABCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----"
                .to_string()
        })),
    );
    let allowed = vec![allowed_signer("alice", &signing_key(1))];
    let check = source.verify_signature(&id, &allowed).expect("checks");
    let SignatureCheck::Invalid(reason) = check else {
        panic!("expected invalid, got {check:?}");
    };
    assert!(reason.contains("not an SSH signature"), "{reason}");
}

#[test]
fn malformed_ssh_signature_is_invalid() {
    let (_remote, _data, source, id) = signed_commit(
        "source-sig-malformed",
        Some(Box::new(|_| {
            "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----".to_string()
        })),
    );
    let allowed = vec![allowed_signer("alice", &signing_key(1))];
    let check = source.verify_signature(&id, &allowed).expect("checks");
    assert!(matches!(check, SignatureCheck::Invalid(_)), "{check:?}");
}

/// Cross-check with git itself, when `git` and `ssh-keygen` are installed:
/// a commit that `git commit -S` signs with `gpg.format=ssh` is verified,
/// and git accepts the commits the test helper signs.
#[test]
fn signatures_agree_with_git() {
    let has = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|output| !output.stdout.is_empty() || !output.stderr.is_empty())
    };
    if !has("git", "--version") || !has("ssh-keygen", "-?") {
        eprintln!("skipped: git or ssh-keygen is not installed");
        return;
    }
    let key = signing_key(3);
    let remote = TestRepo::from_example("source-sig-git");
    let keys = TempDir::new("source-sig-git-keys");
    let key_file = keys.path().join("id_ed25519");
    key.write_openssh_file(&key_file, LineEnding::LF)
        .expect("key file is written");
    let signers_file = keys.path().join("allowed_signers");
    std::fs::write(
        &signers_file,
        format!("{AUTHOR_EMAIL} {}\n", public_key_line(&key)),
    )
    .expect("allowed signers file is written");
    let git = |args: &[&str]| -> String {
        let output = Command::new("git")
            .current_dir(remote.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args([
                "-c",
                "gpg.format=ssh",
                "-c",
                &format!("user.signingkey={}", key_file.display()),
                "-c",
                &format!("gpg.ssh.allowedSignersFile={}", signers_file.display()),
                "-c",
                &format!("user.name={AUTHOR_NAME}"),
                "-c",
                &format!("user.email={AUTHOR_EMAIL}"),
            ])
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };

    let signer = key.clone();
    let ours = remote.commit_signed_on(
        MAIN,
        "Signed by the test helper",
        &write("NOTES.md", "ours\n"),
        move |buffer| ssh_signature(&signer, "git", buffer),
    );
    git(&["verify-commit", &ours]);
    assert_eq!(remote.tip(MAIN), Some(ours.clone()));

    // `commit-tree` needs no index or work tree, which the helper never
    // writes.
    let theirs = git(&[
        "commit-tree",
        "-S",
        "-p",
        "HEAD",
        "-m",
        "Signed by git",
        "HEAD^{tree}",
    ]);
    git(&["update-ref", "refs/heads/main", &theirs]);
    git(&["verify-commit", &theirs]);
    assert_ne!(theirs, ours);
    let (_data, mirror) = mirror_dir("source-sig-git-mirror");
    let source = open(&mirror, &remote.file_url());
    assert_eq!(fetched_id(&source), theirs);
    let allowed = vec![allowed_signer("alice", &key)];
    assert_eq!(
        source.verify_signature(&theirs, &allowed).expect("checks"),
        SignatureCheck::Verified {
            signer: "alice".to_string()
        }
    );
    assert!(
        remote
            .git2()
            .find_commit(git2::Oid::from_str(&theirs).expect("hex"))
            .is_ok()
    );
}
