//! Fresh databases for tests: a SQLite file in a temp dir always, and a
//! PostgreSQL database of its own when `MUSTER_TEST_POSTGRES_URL` is set
//! (CI sets it). `backends!` turns one async test body into a test per
//! backend.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use muster_controller::store::Store;
use sqlx::Executor;

pub(crate) const POSTGRES_ENV: &str = "MUSTER_TEST_POSTGRES_URL";

/// A database that exists for one test and is dropped after it.
pub(crate) struct TestDb {
    pub(crate) url: String,
    pub(crate) dir: PathBuf,
    postgres: Option<(String, String)>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(label: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("muster_{label}_{}_{n}_{nanos}", std::process::id())
}

impl TestDb {
    pub(crate) fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(unique(label));
        std::fs::create_dir_all(&dir).expect("temp dir is creatable");
        dir
    }

    pub(crate) async fn sqlite() -> TestDb {
        let dir = Self::temp_dir("sqlite");
        TestDb {
            url: muster_controller::store::sqlite_url(&dir),
            dir,
            postgres: None,
        }
    }

    /// `None` when no PostgreSQL server is configured for tests.
    pub(crate) async fn postgres() -> Option<TestDb> {
        let server = std::env::var(POSTGRES_ENV).ok()?;
        let name = unique("pg");
        sqlx::any::install_default_drivers();
        let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&server)
            .await
            .expect("the test PostgreSQL server accepts connections");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("a test database can be created");
        let base = server
            .rsplit_once('/')
            .map_or(server.as_str(), |(base, _)| base);
        Some(TestDb {
            url: format!("{base}/{name}"),
            dir: Self::temp_dir("pgdata"),
            postgres: Some((server.clone(), name)),
        })
    }

    pub(crate) async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .expect("the test database opens")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((server, name)) = self.postgres.take() {
            // Dropping needs a runtime of its own: the test's may be gone.
            let _ = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    if let Ok(mut admin) =
                        <sqlx::AnyConnection as sqlx::Connection>::connect(&server).await
                    {
                        let _ = admin
                            .execute(
                                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                            )
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Declares `$name::sqlite` and `$name::postgres`, each running `$body`
/// (a closure taking a `TestDb` and returning a future) on a fresh database.
#[macro_export]
macro_rules! backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::db::TestDb::sqlite().await;
                ($body)(db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::db::TestDb::postgres().await else {
                    eprintln!(
                        "skipped: set {} to run on PostgreSQL",
                        $crate::db::POSTGRES_ENV
                    );
                    return;
                };
                ($body)(db).await;
            }
        }
    };
}
