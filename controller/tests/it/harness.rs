//! A real controller for tests: a Git repo made from `examples/fleet-repo`,
//! a controller on `127.0.0.1:0` with its own data dir and database, and
//! test agents that sign their requests like the real agent.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use muster_controller::cli::DataArgs;
use muster_controller::commands::serve::{self, Config, Running};
use muster_controller::scheduler::{Clock, ManualClock};
use muster_controller::server::agent_api::token_hash;
use muster_controller::signing::SigningKey;
use muster_controller::store::{Store, TokenRecord};
use muster_schemas::bundle::{Bundle, SignedBundle};
use muster_schemas::protocol::{EnrollResponse, Report, auth};
use serde_json::{Value, json};

use crate::db::TestDb;
use crate::support::git::{Change, TestRepo, ssh_signature};

pub(crate) const WEBHOOK_SECRET: &str = "test-webhook-secret";

/// Waits until `check` returns `Some`, polling; panics after a generous
/// deadline so that a broken test fails instead of hanging. The deadline
/// is not a performance assertion.
pub(crate) async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_for(what, Duration::from_secs(60), check).await
}

/// [`eventually`] with more patience, for waits that a production timer
/// can stretch on its own (an agent's backoff may reach a minute), so that
/// the give-up deadline stays well clear of what the code may legitimately
/// take.
pub(crate) async fn eventually_for<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fleet repo a test controller follows: the example fleet on `main`,
/// changed by edits that the next commit records.
pub(crate) struct FleetRepo {
    repo: TestRepo,
    pending: RefCell<Vec<(String, Change)>>,
}

impl FleetRepo {
    pub(crate) fn from_example() -> FleetRepo {
        FleetRepo {
            repo: TestRepo::from_example("harness"),
            pending: RefCell::default(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.repo.path()
    }

    /// A file as the next commit will have it.
    fn read(&self, relative: &str) -> String {
        let pending = self.pending.borrow();
        if let Some((_, Change::File(bytes))) =
            pending.iter().rev().find(|(path, _)| path == relative)
        {
            return String::from_utf8(bytes.clone()).unwrap();
        }
        let git = self.repo.git2();
        let tree = git
            .find_reference("refs/heads/main")
            .unwrap()
            .peel_to_tree()
            .unwrap();
        let entry = tree.get_path(Path::new(relative)).unwrap();
        String::from_utf8(git.find_blob(entry.id()).unwrap().content().to_vec()).unwrap()
    }

    /// Replaces `from` by `to` in a file, for the next commit.
    pub(crate) fn edit(&self, relative: &str, from: &str, to: &str) {
        let content = self.read(relative);
        assert!(content.contains(from), "`{from}` is not in {relative}");
        let changed = content.replacen(from, to, 1);
        self.pending
            .borrow_mut()
            .push((relative.to_string(), Change::file(changed)));
    }

    /// Commits the pending edits on `main`; returns the commit id.
    pub(crate) fn commit_all(&self, message: &str) -> String {
        let changes = self.pending.take();
        self.repo.commit(message, &changes)
    }

    /// Commits the pending edits on `branch`, which starts from `main`'s
    /// tip when it does not exist yet; `main` does not move.
    pub(crate) fn commit_all_on_branch(&self, branch: &str, message: &str) -> String {
        if self.repo.tip(branch).is_none() {
            let main = self.repo.tip("main").expect("main has a commit");
            self.repo.set_branch(branch, &main);
        }
        let changes = self.pending.take();
        self.repo.commit_on(branch, message, &changes)
    }

    /// Commits the pending edits signed with `key`, as git does with
    /// `gpg.format=ssh`.
    pub(crate) fn commit_all_signed(&self, message: &str, key: &ssh_key::PrivateKey) -> String {
        let changes = self.pending.take();
        self.repo
            .commit_signed_on("main", message, &changes, |buffer| {
                ssh_signature(key, "git", buffer)
            })
    }
}

/// A controller running in this process.
pub(crate) struct Harness {
    /// Kept for its `Drop`, which removes the data dir and database.
    _db: TestDb,
    pub(crate) repo: FleetRepo,
    pub(crate) url: String,
    pub(crate) db_url: String,
    pub(crate) public_key: String,
    pub(crate) store: Store,
    pub(crate) http: reqwest::Client,
    /// What the controller was started with; a restart reuses it.
    config: Config,
    /// The scheduler's clock; a restart reuses it.
    clock: Arc<dyn Clock>,
    running: Option<Running>,
}

impl Harness {
    pub(crate) async fn start(db: TestDb) -> Harness {
        Self::start_with(db, |_| {}).await
    }

    /// Starts a controller after `adjust` changed its configuration.
    ///
    /// Its scheduler's clock stands still at the time of the start, so no
    /// scheduled script ever comes due: the example fleet runs
    /// `log-cleanup` daily at 03:30 Europe/Berlin, and a test running
    /// across that minute would otherwise find an action it did not ask
    /// for. Tests of the scheduler move a clock of their own
    /// ([`Harness::start_with_clock`]).
    pub(crate) async fn start_with(db: TestDb, adjust: impl FnOnce(&mut Config)) -> Harness {
        let stopped_clock = ManualClock::new(muster_controller::server::now());
        Self::start_with_clock(db, Arc::new(stopped_clock), adjust).await
    }

    /// [`Harness::start_with`], the scheduler reading `clock`.
    pub(crate) async fn start_with_clock(
        db: TestDb,
        clock: Arc<dyn Clock>,
        adjust: impl FnOnce(&mut Config),
    ) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let repo = FleetRepo::from_example();
        let mut config = Config {
            data: DataArgs {
                data_dir: db.dir.join("data"),
                database_url: Some(db.url.clone()),
            },
            repo: repo.path().display().to_string(),
            branch: "main".into(),
            path: None,
            listen: "127.0.0.1:0".into(),
            public_url: "http://127.0.0.1".into(),
            fetch_interval: Duration::from_millis(200),
            long_poll: Duration::from_secs(30),
            webhook_secret: Some(WEBHOOK_SECRET.into()),
            tls: None,
            audit_remote: None,
            user_auth: Default::default(),
        };
        adjust(&mut config);
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let running = serve::start_with_clock(config.clone(), Arc::clone(&clock))
            .await
            .expect("the controller starts");
        // A restart listens where agents already point.
        config.listen = running.address.to_string();
        let store = Store::open(&db.url).await.unwrap();
        Harness {
            url: format!("{scheme}://{}", running.address),
            public_key: running.public_key.clone(),
            db_url: db.url.clone(),
            _db: db,
            repo,
            store,
            http: reqwest::Client::new(),
            config,
            clock,
            running: Some(running),
        }
    }

    /// The controller's whole HTTP surface on its live state, for
    /// `router.oneshot(request)` tests.
    pub(crate) fn router(&self) -> axum::Router {
        let running = self.running.as_ref().expect("the controller runs");
        muster_controller::server::router(running.state.clone())
    }

    /// What the controller was started with (its address included).
    pub(crate) fn config(&self) -> Config {
        self.config.clone()
    }

    /// The access rules in force, through the cell the controller's
    /// request handlers read.
    pub(crate) fn access(&self) -> muster_controller::rbac::Access {
        self.running
            .as_ref()
            .expect("the controller is running")
            .access
            .clone()
    }

    /// The controller's data dir, where its signing key lives.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.config.data.data_dir
    }

    /// The controller's signing key, loaded from its data dir: for tests
    /// that need bundles only the controller could have signed.
    pub(crate) fn signing_key(&self) -> SigningKey {
        let (key, created) = SigningKey::load_or_create(self.data_dir()).unwrap();
        assert!(!created, "the controller has a signing key already");
        assert_eq!(key.public_key(), self.public_key);
        key
    }

    /// Stops the controller, keeping its data dir, database and repo, so
    /// that [`Harness::restart_controller`] can bring it back.
    pub(crate) async fn stop_controller(&mut self) {
        let running = self.running.take().expect("the controller is running");
        running.stop().await.expect("the controller stops cleanly");
    }

    /// Starts the controller again on the same data dir, database, repo and
    /// address.
    pub(crate) async fn restart_controller(&mut self) {
        assert!(self.running.is_none(), "the controller is still running");
        let running = serve::start_with_clock(self.config.clone(), Arc::clone(&self.clock))
            .await
            .expect("the controller starts again on its address");
        assert_eq!(running.public_key, self.public_key);
        self.running = Some(running);
    }

    pub(crate) async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("the controller stops cleanly");
        }
        self.store.close().await;
    }

    /// Creates an enrollment token directly in the store.
    pub(crate) async fn token(
        &self,
        max_uses: i64,
        auto_approve: bool,
        labels: &[(&str, &str)],
        ttl: i64,
    ) -> String {
        let token = format!("mt_test_{}", rand_hex());
        let now = muster_controller::server::now();
        let record = TokenRecord {
            id: rand_hex()[..8].to_string(),
            max_uses,
            uses: 0,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            auto_approve,
            created_at: now,
            expires_at: now + ttl,
            revoked_at: None,
        };
        self.store
            .create_token(&record, &token_hash(&token))
            .await
            .unwrap();
        token
    }

    /// Enrolls a test agent; panics unless the controller accepts.
    pub(crate) async fn enroll(&self, token: &str, name: &str) -> Agent {
        let response = self.enroll_raw(token, name).await;
        assert_eq!(response.status(), 201, "enrollment of {name} refused");
        let enrolled: EnrollResponse = response.json().await.unwrap();
        Agent {
            url: self.url.clone(),
            http: self.http.clone(),
            host_id: enrolled.host_id,
            key: auth::derive_key(&enrolled.secret).to_vec(),
            name: name.to_string(),
        }
    }

    pub(crate) async fn enroll_raw(&self, token: &str, name: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/enroll", self.url))
            .json(
                &json!({"token": token, "name": name, "facts": {"os": "debian", "arch": "x86_64"}}),
            )
            .send()
            .await
            .unwrap()
    }

    /// The host's bundle as the controller signed and stored it, once its
    /// generation is greater than `newer_than`.
    pub(crate) async fn stored_bundle(&self, host_id: &str, newer_than: u64) -> SignedBundle {
        eventually(
            &format!("a bundle for {host_id} newer than generation {newer_than}"),
            || async {
                let record = self.store.bundle(host_id).await.unwrap()?;
                (record.generation > newer_than).then_some(SignedBundle {
                    bundle: record.bundle,
                    signature: record.signature,
                })
            },
        )
        .await
    }

    /// The reports the controller received from a host, newest first.
    pub(crate) async fn reports(&self, host_id: &str) -> Vec<Report> {
        self.store
            .reports(host_id, i64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|(_, body)| serde_json::from_str(body).unwrap())
            .collect()
    }

    /// Waits until the commit has been tried; returns its state.
    pub(crate) async fn commit_state(
        &self,
        commit: &str,
    ) -> muster_controller::store::CommitRecord {
        eventually(&format!("commit {commit} to be tried"), || async {
            self.store.commit(commit).await.unwrap()
        })
        .await
    }
}

/// The bundle inside a signed bundle, read without verifying anything.
pub(crate) fn bundle_of(signed: &SignedBundle) -> Bundle {
    serde_json::from_str(&signed.bundle).unwrap()
}

fn rand_hex() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

/// A test agent: signs requests as the real agent does.
pub(crate) struct Agent {
    pub(crate) url: String,
    pub(crate) http: reqwest::Client,
    pub(crate) host_id: String,
    pub(crate) key: Vec<u8>,
    pub(crate) name: String,
}

/// How a request is signed; tests change one field to attack.
pub(crate) struct Signing {
    pub(crate) host_id: String,
    pub(crate) key: Vec<u8>,
    pub(crate) timestamp: i64,
    pub(crate) nonce: String,
}

impl Agent {
    pub(crate) fn signing(&self) -> Signing {
        Signing {
            host_id: self.host_id.clone(),
            key: self.key.clone(),
            timestamp: muster_controller::server::now(),
            nonce: format!("nonce-{}", rand_hex()),
        }
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
        signing: &Signing,
    ) -> reqwest::Response {
        let signature = auth::sign(
            &signing.key,
            method,
            path_and_query,
            signing.timestamp,
            &signing.nonce,
            &body,
        );
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.http
            .request(method, format!("{}{path_and_query}", self.url))
            .header(auth::HEADER_HOST, &signing.host_id)
            .header(auth::HEADER_TIMESTAMP, signing.timestamp.to_string())
            .header(auth::HEADER_NONCE, &signing.nonce)
            .header(auth::HEADER_SIGNATURE, signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// `GET` this host's bundle newer than `generation`, waiting up to `wait` s.
    pub(crate) async fn bundle_request(&self, generation: u64, wait: u64) -> reqwest::Response {
        let path = format!(
            "/v1/hosts/{}/bundle?generation={generation}&wait={wait}",
            self.host_id
        );
        self.send("GET", &path, Vec::new(), &self.signing()).await
    }

    /// The bundle newer than `generation`, waiting for it if needed.
    pub(crate) async fn bundle_after(&self, generation: u64) -> SignedBundle {
        eventually(
            &format!("a bundle for {} newer than {generation}", self.name),
            || async {
                let response = self.bundle_request(generation, 5).await;
                match response.status().as_u16() {
                    200 => Some(response.json::<SignedBundle>().await.unwrap()),
                    304 => None,
                    other => panic!(
                        "bundle request answered {other}: {}",
                        response.text().await.unwrap()
                    ),
                }
            },
        )
        .await
    }

    pub(crate) async fn report(&self, body: &Value) -> reqwest::Response {
        let path = format!("/v1/hosts/{}/reports", self.host_id);
        self.send(
            "POST",
            &path,
            serde_json::to_vec(body).unwrap(),
            &self.signing(),
        )
        .await
    }
}
