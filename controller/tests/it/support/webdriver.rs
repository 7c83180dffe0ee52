//! A headless Chromium driven over WebDriver, for the dashboard's browser
//! tests: `chromedriver` started per test on a free loopback port, a
//! fresh profile per session, the few WebDriver commands the tests use,
//! polling waits, and screenshots saved as artifacts under
//! `target/dashboard-screenshots/`.
//!
//! The client is our own, over `reqwest`, rather than a WebDriver crate:
//! the protocol is plain JSON over HTTP to a process on loopback, and
//! fantoccini (even without its TLS features) would add some twenty crates
//! to the build, among them a second copy of the ICU stack, `http` 0.2 and
//! `thiserror` 1.
//!
//! Tests call [`Browser::start`], which answers `None` (after printing why)
//! when Chromium or chromedriver is not installed, unless
//! `MUSTER_TEST_BROWSER` is set: then a missing browser fails the test, so
//! that CI, which installs both, cannot pass by skipping.

use std::fmt;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::support::TempDir;

/// Set (to anything) where the browser tests must run: a missing browser
/// is then a failure instead of a skip.
pub(crate) const REQUIRE_ENV: &str = "MUSTER_TEST_BROWSER";
/// The chromedriver to use, instead of the one on `PATH`.
pub(crate) const CHROMEDRIVER_ENV: &str = "MUSTER_TEST_CHROMEDRIVER";
/// The Chromium to use, instead of the one on `PATH`.
pub(crate) const CHROMIUM_ENV: &str = "MUSTER_TEST_CHROMIUM";

/// How long a wait for something on a page may take before the test
/// fails. Generous: a page on a loaded two-core machine, with agents and
/// a browser competing for it, can be slow, and this is no performance
/// assertion.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// The W3C name of an element reference in WebDriver's JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What a WebDriver command answered instead of success.
#[derive(Debug, Clone)]
pub(crate) struct WebDriverError {
    /// The W3C error code, such as `no such element` or
    /// `stale element reference`.
    pub(crate) error: String,
    pub(crate) message: String,
}

impl fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub(crate) struct Element {
    id: String,
}

/// The element references in a WebDriver answer.
fn elements_of(found: &Value) -> Vec<Element> {
    found
        .as_array()
        .map(|elements| {
            elements
                .iter()
                .filter_map(|element| element[ELEMENT_KEY].as_str())
                .map(|id| Element { id: id.to_string() })
                .collect()
        })
        .unwrap_or_default()
}

/// A running chromedriver with one Chromium session, both ended on drop.
pub(crate) struct Browser {
    /// The chromedriver process, leader of its own process group, which
    /// Chromium's processes join.
    driver: Child,
    /// `http://127.0.0.1:PORT/session/ID`.
    session_url: String,
    http: reqwest::Client,
    /// The test's name: screenshots are `<test>-<page>.png`.
    test: String,
    /// Chromium's profile and chromedriver's log; removed on drop.
    dir: TempDir,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("session_url", &self.session_url)
            .field("test", &self.test)
            .finish()
    }
}

/// An executable from `env` when set (`None` when it names no file),
/// otherwise the first of `names` on `PATH`.
fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The target dir of this build: `CARGO_TARGET_DIR` when set, otherwise
/// the one the `muster` binary under test was built in.
pub(crate) fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the controller crate lies in the workspace")
        .to_path_buf();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => Path::new(env!("CARGO_BIN_EXE_muster"))
            .ancestors()
            .nth(2)
            .map_or_else(|| workspace.join("target"), Path::to_path_buf),
    }
}

/// Where the screenshots go: artifacts for people to look at.
pub(crate) fn screenshot_dir() -> PathBuf {
    target_dir().join("dashboard-screenshots")
}

/// Removes the screenshots an earlier run of `test` left, so that the
/// dir shows this run's pages only (and no stale failure).
fn remove_screenshots(test: &str) {
    let Ok(entries) = fs::read_dir(screenshot_dir()) else {
        return;
    };
    let prefix = format!("{test}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".png") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a loopback port can be bound")
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session for `test`.
    /// `None` when they are not installed and `MUSTER_TEST_BROWSER` is
    /// unset; with it set, a missing browser panics.
    pub(crate) async fn start(test: &str) -> Option<Browser> {
        let chromedriver = find_binary(CHROMEDRIVER_ENV, &["chromedriver"]);
        let chromium = find_binary(
            CHROMIUM_ENV,
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let (Some(chromedriver), Some(chromium)) = (chromedriver, chromium) else {
            let missing = "chromium and chromedriver are not both installed \
                (apt-get install chromium chromium-driver, or set \
                MUSTER_TEST_CHROMIUM and MUSTER_TEST_CHROMEDRIVER)";
            assert!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "{REQUIRE_ENV} is set but {missing}"
            );
            eprintln!("skipped {test}: {missing}; set {REQUIRE_ENV}=1 to make this a failure");
            return None;
        };
        // reqwest is built without a crypto provider of its own: ring,
        // as everywhere in Muster (only plain HTTP is spoken here).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client builds");
        remove_screenshots(test);
        let dir = TempDir::new(&format!("browser-{test}"));
        let profile = dir.path().join("profile");
        fs::create_dir_all(&profile).unwrap();
        let port = free_port();
        let log = fs::File::create(dir.path().join("chromedriver.log")).unwrap();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // A group of its own, so that drop ends Chromium with it even
            // when the session could not be closed.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| panic!("{} does not start: {err}", chromedriver.display()));
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            session_url: String::new(),
            http,
            test: test.to_string(),
            dir,
        };
        browser.wait_for_driver(&base).await;
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "pageLoadStrategy": "normal",
                "timeouts": {"implicit": 0, "pageLoad": 60_000, "script": 30_000},
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless",
                        // Tests run as root, where Chromium's sandbox cannot start.
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--no-first-run",
                        "--window-size=1400,1000",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
            }}
        });
        let created = browser
            .command(
                reqwest::Method::POST,
                &format!("{base}/session"),
                Some(capabilities),
            )
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "chromedriver cannot start Chromium: {err}\n{}",
                    browser.driver_log()
                )
            });
        let session = created["sessionId"]
            .as_str()
            .expect("a new session has an id");
        browser.session_url = format!("{base}/session/{session}");
        Some(browser)
    }

    /// Waits until chromedriver answers `/status` as ready.
    async fn wait_for_driver(&mut self, base: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited ({status}):\n{}", self.driver_log());
            }
            let ready = self
                .command(reqwest::Method::GET, &format!("{base}/status"), None)
                .await
                .is_ok_and(|status| status["ready"].as_bool() == Some(true));
            if ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not become ready:\n{}",
                self.driver_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn driver_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// One WebDriver command: its `value`, or the error it answered.
    async fn command(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| WebDriverError {
            error: "unreachable".into(),
            message: err.to_string(),
        })?;
        let status = response.status();
        let mut answer: Value = response.json().await.map_err(|err| WebDriverError {
            error: "unreadable answer".into(),
            message: err.to_string(),
        })?;
        let value = answer["value"].take();
        if status.is_success() {
            return Ok(value);
        }
        Err(WebDriverError {
            error: value["error"].as_str().unwrap_or("unknown error").into(),
            message: value["message"].as_str().unwrap_or_default().into(),
        })
    }

    async fn session_command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}{path}", self.session_url);
        self.command(method, &url, body).await
    }

    async fn get(&self, path: &str) -> Result<Value, WebDriverError> {
        self.session_command(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, WebDriverError> {
        self.session_command(reqwest::Method::POST, path, Some(body))
            .await
    }

    /// Opens `url` and waits for it to load.
    pub(crate) async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }))
            .await
            .unwrap_or_else(|err| panic!("cannot open {url}: {err}"));
    }

    /// The address of the current page.
    pub(crate) async fn url(&self) -> String {
        let url = self.get("/url").await.expect("the current URL is readable");
        url.as_str().unwrap_or_default().to_string()
    }

    /// The path (and query) of the current page.
    pub(crate) async fn path(&self) -> String {
        let url = self.url().await;
        match url.split_once("://") {
            Some((_, rest)) => rest
                .find('/')
                .map_or_else(|| "/".to_string(), |slash| rest[slash..].to_string()),
            None => url,
        }
    }

    /// The first element matching the CSS selector, if any.
    pub(crate) async fn find(&self, css: &str) -> Option<Element> {
        self.find_all(css).await.into_iter().next()
    }

    /// Every element matching the CSS selector, in document order.
    pub(crate) async fn find_all(&self, css: &str) -> Vec<Element> {
        let found = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await
            .unwrap_or_else(|err| panic!("cannot look for `{css}`: {err}"));
        elements_of(&found)
    }

    /// The element's rendered text (what a user sees), or the error when
    /// it is gone, as after a page load.
    pub(crate) async fn try_text(&self, element: &Element) -> Result<String, WebDriverError> {
        let text = self.get(&format!("/element/{}/text", element.id)).await?;
        Ok(text.as_str().unwrap_or_default().to_string())
    }

    pub(crate) async fn text(&self, element: &Element) -> String {
        self.try_text(element)
            .await
            .unwrap_or_else(|err| panic!("cannot read an element's text: {err}"))
    }

    /// An attribute or property of an element (`value` of an input).
    pub(crate) async fn property(&self, element: &Element, name: &str) -> Option<String> {
        let value = self
            .get(&format!("/element/{}/property/{name}", element.id))
            .await
            .unwrap_or_else(|err| panic!("cannot read `{name}` of an element: {err}"));
        match value {
            Value::Null => None,
            Value::String(text) => Some(text),
            other => Some(other.to_string()),
        }
    }

    /// The whole page's rendered text.
    pub(crate) async fn page_text(&self) -> String {
        match self.find("body").await {
            Some(body) => self.try_text(&body).await.unwrap_or_default(),
            None => String::new(),
        }
    }

    pub(crate) async fn click(&self, element: &Element) {
        self.post(&format!("/element/{}/click", element.id), json!({}))
            .await
            .unwrap_or_else(|err| panic!("cannot click: {err}"));
    }

    /// Types `text` into an input, after clearing it.
    pub(crate) async fn type_into(&self, element: &Element, text: &str) {
        self.post(&format!("/element/{}/clear", element.id), json!({}))
            .await
            .unwrap_or_else(|err| panic!("cannot clear an input: {err}"));
        self.post(
            &format!("/element/{}/value", element.id),
            json!({ "text": text }),
        )
        .await
        .unwrap_or_else(|err| panic!("cannot type into an input: {err}"));
    }

    /// Types into the input matching `css`, which must be on the page.
    pub(crate) async fn fill(&self, css: &str, text: &str) {
        let input = self.wait_for(css).await;
        self.type_into(&input, text).await;
    }

    /// Picks the option whose visible text is `label` in the select
    /// matching `css`, as a user clicks it.
    pub(crate) async fn choose(&self, css: &str, label: &str) {
        let what = format!("the option `{label}` of `{css}`");
        let option = self
            .until(&what, || async {
                for option in self.find_all(&format!("{css} option")).await {
                    if self.try_text(&option).await.ok()?.trim() == label {
                        return Some(option);
                    }
                }
                None
            })
            .await;
        self.click(&option).await;
    }

    /// The session's cookie `name` (HttpOnly ones included).
    pub(crate) async fn cookie(&self, name: &str) -> Option<String> {
        let cookie = self.get(&format!("/cookie/{name}")).await.ok()?;
        cookie["value"].as_str().map(str::to_string)
    }

    /// Sets a cookie for the current page's site, as a stolen or kept one.
    pub(crate) async fn set_cookie(&self, name: &str, value: &str) {
        self.post(
            "/cookie",
            json!({"cookie": {"name": name, "value": value, "path": "/", "httpOnly": true}}),
        )
        .await
        .unwrap_or_else(|err| panic!("cannot set cookie {name}: {err}"));
    }

    /// Waits for `check` to answer `Some`, polling the page; on giving up
    /// saves a screenshot `<test>-failure-<n>.png` and shows the page.
    pub(crate) async fn until<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                let shot = self.screenshot("failure").await;
                panic!(
                    "gave up waiting for {what} on {}; screenshot {}; the page reads:\n{}",
                    self.url().await,
                    shot.display(),
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for an element matching `css`.
    pub(crate) async fn wait_for(&self, css: &str) -> Element {
        self.until(&format!("an element `{css}`"), || self.find(css))
            .await
    }

    /// Waits for an element matching `css` whose text contains `text`.
    pub(crate) async fn wait_for_text(&self, css: &str, text: &str) -> Element {
        self.wait_for_all(css, &[text]).await
    }

    /// Waits for an element matching `css` whose text contains every one
    /// of `texts` (a table row with a host's name and its state, say).
    pub(crate) async fn wait_for_all(&self, css: &str, texts: &[&str]) -> Element {
        self.until(&format!("{texts:?} in an element `{css}`"), || async {
            for element in self.find_all(css).await {
                // An element replaced meanwhile (a live region) is skipped:
                // the next round finds its successor.
                if self
                    .try_text(&element)
                    .await
                    .is_ok_and(|shown| texts.iter().all(|text| shown.contains(text)))
                {
                    return Some(element);
                }
            }
            None
        })
        .await
    }

    /// The elements matching `css` inside `element`, or the error when
    /// the element is gone.
    async fn try_find_within(
        &self,
        element: &Element,
        css: &str,
    ) -> Result<Vec<Element>, WebDriverError> {
        let found = self
            .post(
                &format!("/element/{}/elements", element.id),
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        Ok(elements_of(&found))
    }

    /// Clicks the `target` whose text contains `label` inside an element
    /// matching `css` that shows every one of `texts` (the Approve button
    /// of one table row, say). A live region may replace the row between
    /// finding and clicking: then it tries again with the new one.
    pub(crate) async fn click_within(&self, css: &str, texts: &[&str], target: &str, label: &str) {
        let what = format!("`{target}` labelled `{label}` in an element `{css}` showing {texts:?}");
        self.until(&what, || async {
            for container in self.find_all(css).await {
                let Ok(shown) = self.try_text(&container).await else {
                    continue;
                };
                if !texts.iter().all(|text| shown.contains(text)) {
                    continue;
                }
                let Ok(targets) = self.try_find_within(&container, target).await else {
                    continue;
                };
                for candidate in targets {
                    if !self
                        .try_text(&candidate)
                        .await
                        .is_ok_and(|text| text.contains(label))
                    {
                        continue;
                    }
                    let clicked = self
                        .post(&format!("/element/{}/click", candidate.id), json!({}))
                        .await;
                    match clicked {
                        Ok(_) => return Some(()),
                        Err(err) if err.error == "stale element reference" => {}
                        Err(err) => panic!("cannot click {what}: {err}"),
                    }
                }
            }
            None
        })
        .await;
    }

    /// Waits until the current path satisfies `matches`; returns it.
    pub(crate) async fn wait_for_path(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        self.until(&format!("the browser to be on {what}"), || async {
            let path = self.path().await;
            matches(&path).then_some(path)
        })
        .await
    }

    /// Runs `script` (a function body) in the page; its return value.
    /// WebDriver's scripts are not subject to the page's content security
    /// policy, which forbids the page's own inline scripts.
    pub(crate) async fn execute(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
            .unwrap_or_else(|err| panic!("cannot run a script in the page: {err}"))
    }

    /// Waits until the page listens for live updates, and returns a token
    /// of it: the token goes stale when the browser loads another page (a
    /// reload included), but not when a live region inside the page is
    /// swapped, so [`Browser::assert_same_page`] proves that what changed
    /// came without a reload.
    ///
    /// Listening means htmx's event stream is open: the server subscribed
    /// it to its changes before answering, so no change made after this
    /// returns can be missed by the page.
    pub(crate) async fn live_page(&self) -> Element {
        let token = self.wait_for("header.top").await;
        self.until("the page's live-update stream to open", || async {
            let open = self
                .execute(
                    "const data = document.body && document.body['htmx-internal-data']; \
                     const source = data && data.sseEventSource; \
                     return !!source && source.readyState === 1;",
                )
                .await;
            (open == Value::Bool(true)).then_some(())
        })
        .await;
        token
    }

    /// Panics unless `token` is still of the page loaded now.
    pub(crate) async fn assert_same_page(&self, token: &Element, what: &str) {
        if let Err(err) = self.try_text(token).await {
            panic!("{what}: the page was loaded again instead of updated in place ({err})");
        }
    }

    /// Saves a screenshot of the whole page as
    /// `target/dashboard-screenshots/<test>-<page>.png`; returns its path.
    pub(crate) async fn screenshot(&self, page: &str) -> PathBuf {
        let dir = screenshot_dir();
        fs::create_dir_all(&dir).expect("the screenshot dir is creatable");
        let path = dir.join(format!("{}-{page}.png", self.test));
        let png = match self.full_page_png().await {
            Some(png) => png,
            None => self
                .get("/screenshot")
                .await
                .unwrap_or_else(|err| panic!("cannot take a screenshot: {err}")),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a screenshot is base64");
        fs::write(&path, bytes).expect("the screenshot is writable");
        path
    }

    /// The whole page, beyond the window's height, through Chromium's
    /// DevTools protocol (which chromedriver relays); `None` if that is
    /// not available.
    async fn full_page_png(&self) -> Option<Value> {
        let cdp = |cmd: &str, params: Value| {
            self.post("/goog/cdp/execute", json!({"cmd": cmd, "params": params}))
        };
        let metrics = cdp("Page.getLayoutMetrics", json!({})).await.ok()?;
        let size = &metrics["cssContentSize"];
        let width = size["width"].as_f64()?;
        let height = size["height"].as_f64()?;
        let shot = cdp(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            }),
        )
        .await
        .ok()?;
        Some(shot["data"].clone())
    }

    /// Ends the session, which closes Chromium; drop then stops
    /// chromedriver.
    pub(crate) async fn close(self) {
        let _ = self
            .session_command(reqwest::Method::DELETE, "", None)
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group of the chromedriver this browser started (its id is
        // the group's): Chromium goes with it even if the session was not
        // closed.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
