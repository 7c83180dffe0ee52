//! Real git repositories for tests, built with git2 straight into the object
//! database (no work tree, no `git` binary): a fleet repo made from
//! `examples/fleet-repo`, commits that change a few files, force-pushes, and
//! commits signed the way `git commit -S` signs them with `gpg.format=ssh`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

use git2::{ObjectType, Oid, Repository, RepositoryInitOptions, Signature, Time, Tree};
use muster_schemas::model::AllowedSigner;
use ssh_key::private::Ed25519Keypair;
use ssh_key::{HashAlg, LineEnding, PrivateKey};

use super::TempDir;

/// The branch test repos are made on.
pub(crate) const MAIN: &str = "main";

/// Author and committer of every test commit.
pub(crate) const AUTHOR_NAME: &str = "Muster Test";
pub(crate) const AUTHOR_EMAIL: &str = "test@example.com";

/// Commit time of the first commit; each later commit is a minute later,
/// so that ids are reproducible and commits of equal trees still differ.
const FIRST_COMMIT_TIME: i64 = 1_700_000_000;

/// The directory of the example fleet repo.
pub(crate) fn example_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-repo")
}

/// What a commit does to one path.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// A regular file with these bytes.
    File(Vec<u8>),
    /// An executable file with these bytes.
    Executable(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A submodule at this commit of another repository.
    Submodule(Oid),
    /// The path is removed.
    Removed,
}

impl Change {
    pub(crate) fn file(text: impl AsRef<[u8]>) -> Change {
        Change::File(text.as_ref().to_vec())
    }
}

/// A non-bare repository in a temp dir whose commits are written with git2.
pub(crate) struct TestRepo {
    repo: Repository,
    dir: TempDir,
    clock: AtomicI64,
}

impl std::fmt::Debug for TestRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRepo").field("dir", &self.dir).finish()
    }
}

impl TestRepo {
    /// A repository with no commits; `HEAD` names `main`.
    pub(crate) fn empty(label: &str) -> TestRepo {
        let dir = TempDir::new(label);
        let repo =
            Repository::init_opts(dir.path(), RepositoryInitOptions::new().initial_head(MAIN))
                .expect("test repo initializes");
        TestRepo {
            repo,
            dir,
            clock: AtomicI64::new(FIRST_COMMIT_TIME),
        }
    }

    /// A repository whose `main` has one commit with the example fleet repo
    /// at its root.
    pub(crate) fn from_example(label: &str) -> TestRepo {
        TestRepo::from_example_at(label, "")
    }

    /// A repository whose `main` has one commit with the example fleet repo
    /// under `prefix` (`""` for the root).
    pub(crate) fn from_example_at(label: &str, prefix: &str) -> TestRepo {
        let test_repo = TestRepo::empty(label);
        let changes: Vec<(String, Change)> = files_of(&example_repo())
            .into_iter()
            .map(|(path, bytes)| {
                let path = if prefix.is_empty() {
                    path
                } else {
                    format!("{prefix}/{path}")
                };
                (path, Change::File(bytes))
            })
            .collect();
        test_repo.commit("Add the example fleet repo", &changes);
        test_repo
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The repository as a `file://` URL.
    pub(crate) fn file_url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    pub(crate) fn git2(&self) -> &Repository {
        &self.repo
    }

    /// The tip of `branch`, if it exists.
    pub(crate) fn tip(&self, branch: &str) -> Option<String> {
        self.repo
            .find_reference(&format!("refs/heads/{branch}"))
            .ok()
            .and_then(|reference| reference.target())
            .map(|oid| oid.to_string())
    }

    /// Commits `changes` on top of `main` and moves `main` to it.
    pub(crate) fn commit(&self, message: &str, changes: &[(String, Change)]) -> String {
        self.commit_on(MAIN, message, changes)
    }

    /// Commits `changes` on top of `branch` (or as a root commit when it
    /// does not exist) and moves `branch` to it.
    pub(crate) fn commit_on(
        &self,
        branch: &str,
        message: &str,
        changes: &[(String, Change)],
    ) -> String {
        let buffer = self.commit_buffer(branch, message, changes);
        let oid = self
            .repo
            .odb()
            .expect("object database opens")
            .write(ObjectType::Commit, buffer.as_bytes())
            .expect("commit is written");
        self.set_branch(branch, &oid.to_string());
        oid.to_string()
    }

    /// Commits `changes` on top of `branch` with the signature `sign`
    /// returns for the commit's bytes, and moves `branch` to it. Use
    /// [`ssh_signature`] for a signature as git makes it.
    pub(crate) fn commit_signed_on(
        &self,
        branch: &str,
        message: &str,
        changes: &[(String, Change)],
        sign: impl FnOnce(&str) -> String,
    ) -> String {
        let buffer = self.commit_buffer(branch, message, changes);
        let signature = sign(&buffer);
        let oid = self
            .repo
            .commit_signed(&buffer, &signature, None)
            .expect("signed commit is written");
        self.set_branch(branch, &oid.to_string());
        oid.to_string()
    }

    /// Points `branch` at `commit`, whatever it pointed at: a force-push.
    pub(crate) fn set_branch(&self, branch: &str, commit: &str) {
        let oid = Oid::from_str(commit).expect("commit id is hex");
        self.repo
            .reference(
                &format!("refs/heads/{branch}"),
                oid,
                true,
                "test: set branch",
            )
            .expect("branch is set");
    }

    /// Deletes `branch`.
    pub(crate) fn delete_branch(&self, branch: &str) {
        self.repo
            .find_reference(&format!("refs/heads/{branch}"))
            .expect("branch exists")
            .delete()
            .expect("branch is deleted");
    }

    /// The unsigned commit object that `changes` on top of `branch` make.
    fn commit_buffer(&self, branch: &str, message: &str, changes: &[(String, Change)]) -> String {
        let parent = self.tip(branch).map(|id| {
            self.repo
                .find_commit(Oid::from_str(&id).expect("hex"))
                .expect("parent")
        });
        let base = parent.as_ref().map(|commit| commit.tree().expect("tree"));
        let mut tree_id = base.as_ref().map(Tree::id);
        for (path, change) in changes {
            let parts: Vec<&str> = path.split('/').collect();
            let base = tree_id.map(|id| self.repo.find_tree(id).expect("tree"));
            tree_id = Some(self.edit_tree(base.as_ref(), &parts, change));
        }
        let tree_id = match tree_id {
            Some(id) => id,
            None => self
                .repo
                .treebuilder(None)
                .expect("tree")
                .write()
                .expect("tree"),
        };
        let tree = self.repo.find_tree(tree_id).expect("tree");
        let seconds = self.clock.fetch_add(60, Ordering::Relaxed);
        let person =
            Signature::new(AUTHOR_NAME, AUTHOR_EMAIL, &Time::new(seconds, 0)).expect("signature");
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let buffer = self
            .repo
            .commit_create_buffer(&person, &person, message, &tree, &parents)
            .expect("commit buffer");
        buffer.as_str().expect("commit buffer is UTF-8").to_string()
    }

    /// Writes a copy of `base` with `change` at `path`, returning its id.
    fn edit_tree(&self, base: Option<&Tree<'_>>, path: &[&str], change: &Change) -> Oid {
        let mut builder = self.repo.treebuilder(base).expect("tree builder");
        let (name, rest) = path.split_first().expect("path is not empty");
        if rest.is_empty() {
            let entry = match change {
                Change::File(bytes) => Some((self.repo.blob(bytes).expect("blob"), 0o100_644)),
                Change::Executable(bytes) => {
                    Some((self.repo.blob(bytes).expect("blob"), 0o100_755))
                }
                Change::Symlink(target) => {
                    Some((self.repo.blob(target.as_bytes()).expect("blob"), 0o120_000))
                }
                Change::Submodule(commit) => Some((*commit, 0o160_000)),
                Change::Removed => None,
            };
            match entry {
                Some((oid, mode)) => {
                    builder.insert(name, oid, mode).expect("entry is inserted");
                }
                None => {
                    let _ = builder.remove(name);
                }
            }
        } else {
            let subtree = base
                .and_then(|tree| tree.get_name(name))
                .filter(|entry| entry.kind() == Some(ObjectType::Tree))
                .map(|entry| self.repo.find_tree(entry.id()).expect("subtree"));
            let oid = self.edit_tree(subtree.as_ref(), rest, change);
            builder
                .insert(name, oid, 0o040_000)
                .expect("subtree is inserted");
        }
        builder.write().expect("tree is written")
    }
}

/// Every regular file under `root`, relative to it with `/`, sorted.
pub(crate) fn files_of(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(relative) = pending.pop() {
        for entry in fs::read_dir(root.join(&relative)).expect("readable dir") {
            let entry = entry.expect("readable entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            let file_type = entry.file_type().expect("file type");
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file() {
                files.push((path, fs::read(entry.path()).expect("readable file")));
            }
        }
    }
    files.sort();
    files
}

/// One change, for the common case of a commit that writes one file.
pub(crate) fn write(path: &str, text: impl AsRef<[u8]>) -> Vec<(String, Change)> {
    vec![(path.to_string(), Change::file(text))]
}

/// A deterministic Ed25519 key: the same `seed` always gives the same key.
pub(crate) fn signing_key(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

/// The key's public half as an OpenSSH line, as in `id_ed25519.pub`.
pub(crate) fn public_key_line(key: &PrivateKey) -> String {
    key.public_key().to_openssh().expect("public key encodes")
}

/// An allowed signer named `name` holding `key`.
pub(crate) fn allowed_signer(name: &str, key: &PrivateKey) -> AllowedSigner {
    AllowedSigner {
        name: name.to_string(),
        key: public_key_line(key),
    }
}

/// The armored SSH signature of `data` in `namespace`, as `ssh-keygen -Y
/// sign` makes it (git signs commits in the `git` namespace).
pub(crate) fn ssh_signature(key: &PrivateKey, namespace: &str, data: &str) -> String {
    key.sign(namespace, HashAlg::Sha512, data.as_bytes())
        .expect("data is signed")
        .to_pem(LineEnding::LF)
        .expect("signature is armored")
}
