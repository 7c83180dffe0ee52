//! The dashboard in a real browser: headless Chromium over WebDriver
//! against a real controller with real sandboxed agents. Logging in, hosts
//! converging live, a drifted host's diff, approving a pending host,
//! running a script and watching its result arrive, logging out, and what
//! a read-only user is offered. Each test saves screenshots of the pages
//! it visits under `target/dashboard-screenshots/`.
//!
//! They skip (saying so) where Chromium and chromedriver are missing,
//! unless `MUSTER_TEST_BROWSER` is set, as CI sets it. They run on SQLite
//! only: what they test is the pages in a browser, and the handlers behind
//! them run on both backends in their own tests. They take turns, since a
//! Chromium each at once would crowd a small machine.

use muster_controller::store::CommitState;
use tokio::sync::{Mutex, MutexGuard};

use crate::db::TestDb;
use crate::harness::Harness;
use crate::support::agent::TestAgent;
use crate::support::dashboard::add_user;
use crate::support::webdriver::Browser;

const PASSWORD: &str = "correct horse battery staple";

/// One browser test at a time.
async fn take_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::const_new(());
    TURN.lock().await
}

/// A controller on the example fleet with the user `alice` (an admin in
/// the example's RBAC), and a browser; `None` when the browser tests are
/// skipped.
async fn start(test: &str) -> Option<(Harness, Browser)> {
    let browser = Browser::start(test).await?;
    let harness = Harness::start(TestDb::sqlite().await).await;
    add_user(&harness, "alice", PASSWORD).await;
    Some((harness, browser))
}

/// Fills the login form and sends it.
async fn submit_login(browser: &Browser, user: &str, password: &str) {
    browser.fill("form.login input[name=user]", user).await;
    browser
        .fill("form.login input[name=password]", password)
        .await;
    let button = browser.wait_for("form.login button[type=submit]").await;
    browser.click(&button).await;
}

/// Logs in through the form and waits to be past it.
async fn log_in(harness: &Harness, browser: &Browser, user: &str) {
    browser.goto(&format!("{}/login", harness.url)).await;
    submit_login(browser, user, PASSWORD).await;
    browser
        .wait_for_path("a page past the login form", |path| {
            !path.starts_with("/login")
        })
        .await;
}

/// The row of `host` in the host list.
const HOST_ROWS: &str = "#hosts-table tbody tr";

/// Enrolls a real agent on a token that approves it, with `role`; it has
/// not run yet.
async fn enrolled_agent(harness: &Harness, name: &str, role: &str) -> TestAgent {
    let token = harness.token(1, true, &[("role", role)], 3600).await;
    let agent = TestAgent::new(name);
    agent.enroll(harness, &token, name).await;
    agent
}

/// Waits until the overview counts `n` hosts in `state`, its link to the
/// host list filtered by that state.
async fn wait_for_count(browser: &Browser, state: &str, n: &str) {
    let link = format!("#overview a[href='/hosts?state={state}']");
    let what = format!("the overview to count {n} hosts {state}");
    browser
        .until(&what, || async {
            let shown = browser.try_text(&browser.find(&link).await?).await.ok()?;
            (shown == n).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_then_hosts_converge_live() {
    let _turn = take_turn().await;
    let Some((harness, browser)) = start("converge").await else {
        return;
    };
    let web = enrolled_agent(&harness, "web-01", "web").await;
    let database = enrolled_agent(&harness, "db-01", "db").await;

    // Anyone not logged in lands on the form; a wrong password is refused
    // there, saying so.
    browser.goto(&format!("{}/", harness.url)).await;
    browser
        .wait_for_path("the login form", |path| path.starts_with("/login"))
        .await;
    submit_login(&browser, "alice", "not her password").await;
    let error = browser.wait_for("form.login .notice.error").await;
    assert!(
        browser.text(&error).await.contains("password"),
        "{}",
        browser.page_text().await
    );
    let user = browser.wait_for("form.login input[name=user]").await;
    assert_eq!(
        browser.property(&user, "value").await.as_deref(),
        Some("alice")
    );
    browser.screenshot("login").await;

    submit_login(&browser, "alice", PASSWORD).await;
    let landed = browser
        .wait_for_path("a page past the login form", |path| {
            !path.starts_with("/login")
        })
        .await;
    assert_eq!(landed, "/");
    browser.wait_for_text("main h1", "Overview").await;
    // Both hosts are known, online, and have not reported: behind the
    // deployed commit, none in sync yet.
    wait_for_count(&browser, "online", "2").await;
    wait_for_count(&browser, "behind", "2").await;
    wait_for_count(&browser, "in_sync", "0").await;

    // The agents converge while the overview is open: the counts change
    // in place, without a reload.
    let overview = browser.live_page().await;
    web.converge_once().await;
    database.converge_once().await;
    wait_for_count(&browser, "in_sync", "2").await;
    wait_for_count(&browser, "behind", "0").await;
    browser
        .assert_same_page(&overview, "the overview counting hosts in sync")
        .await;
    browser.screenshot("overview").await;

    // The host list says the same, host by host.
    let hosts_link = browser.wait_for_text("header.top nav a", "Hosts").await;
    browser.click(&hosts_link).await;
    browser
        .wait_for_path("the host list", |path| path.starts_with("/hosts"))
        .await;
    for name in ["web-01", "db-01"] {
        browser
            .wait_for_all(HOST_ROWS, &[name, "online", "in sync"])
            .await;
    }
    browser.screenshot("hosts").await;
    browser.close().await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_shows_a_drifted_host_and_its_diff() {
    let _turn = take_turn().await;
    let Some((harness, browser)) = start("drift").await else {
        return;
    };
    let web = enrolled_agent(&harness, "web-01", "web").await;
    web.converge_once().await;
    // The login banner only audited, not enforced: a hand edit stays, and
    // the agent reports it as drift with its diff instead of repairing it.
    harness.repo.edit(
        "policies/motd.yaml",
        "name: motd\n",
        "name: motd\nmode: audit\n",
    );
    let audit_only = harness.repo.commit_all("Only audit the login banner");
    let commit = harness.commit_state(&audit_only).await;
    assert_eq!(commit.state, CommitState::Deployed, "{commit:?}");
    web.converge_once().await;

    log_in(&harness, &browser, "alice").await;
    browser.goto(&format!("{}/hosts", harness.url)).await;
    browser
        .wait_for_all(HOST_ROWS, &["web-01", "online", "in sync"])
        .await;
    let list = browser.live_page().await;

    web.tamper("/etc/motd", "Edited by hand on the host.\n", 0o644);
    // `run --once` exits 0 once the controller has the report, drift or not.
    web.converge_once().await;
    browser
        .wait_for_all(HOST_ROWS, &["web-01", "drifted"])
        .await;
    browser
        .assert_same_page(&list, "the host list showing the drift")
        .await;
    browser.screenshot("hosts").await;

    // The host's page shows the drifted file with its diff: the line
    // found on the host removed, the repo's lines added.
    browser
        .click_within(HOST_ROWS, &["web-01"], "a[href^='/hosts/']", "web-01")
        .await;
    browser
        .wait_for_path("the host's page", |path| path.starts_with("/hosts/"))
        .await;
    browser.wait_for_text("main h1", "web-01").await;
    browser
        .wait_for_all(
            "#host-detail pre.diff",
            &[
                "-Edited by hand on the host.",
                "+This host is managed by muster.",
            ],
        )
        .await;
    let removed = browser.find_all("#host-detail pre.diff .del").await;
    assert!(!removed.is_empty(), "the removed line is marked");
    browser
        .wait_for_all("#host-detail tr", &["/etc/motd", "drifted"])
        .await;
    browser.screenshot("host-detail").await;

    // The commit that made the banner audit-only is deployed, and reached
    // the host.
    let commits_link = browser.wait_for_text("header.top nav a", "Commits").await;
    browser.click(&commits_link).await;
    browser
        .wait_for_path("the commits page", |path| path.starts_with("/commits"))
        .await;
    browser
        .wait_for_all(
            "#commits-list table.commits tbody tr",
            &["Only audit the login banner", "deployed"],
        )
        .await;
    browser.screenshot("commits").await;
    browser.close().await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_logout_ends_the_session() {
    let _turn = take_turn().await;
    let Some((harness, browser)) = start("logout").await else {
        return;
    };
    log_in(&harness, &browser, "alice").await;
    browser.wait_for_text("main h1", "Overview").await;
    let session = browser
        .cookie("muster_session")
        .await
        .expect("a logged-in browser holds the session cookie");
    let logout = browser.wait_for_text("header.top button", "Log out").await;
    browser.click(&logout).await;
    browser
        .wait_for_path("the login form", |path| path.starts_with("/login"))
        .await;
    browser.wait_for("form.login").await;
    assert_eq!(browser.cookie("muster_session").await, None);

    // The old cookie, kept or stolen, opens nothing any more: in the
    // browser, and sent by anyone else.
    browser.set_cookie("muster_session", &session).await;
    browser.goto(&format!("{}/hosts", harness.url)).await;
    browser
        .wait_for_path("the login form", |path| path.starts_with("/login"))
        .await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = no_redirects
        .get(format!("{}/hosts", harness.url))
        .header("cookie", format!("muster_session={session}"))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_redirection(), "{}", answer.status());
    let location = answer.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("/login"), "{location}");
    browser.close().await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_approves_a_pending_host_which_then_converges() {
    let _turn = take_turn().await;
    let Some((harness, browser)) = start("approve").await else {
        return;
    };
    log_in(&harness, &browser, "alice").await;
    let enrollment_link = browser
        .wait_for_text("header.top nav a", "Enrollment")
        .await;
    browser.click(&enrollment_link).await;
    browser
        .wait_for_path("the enrollment page", |path| path == "/enrollment")
        .await;
    browser
        .wait_for_text("#enrollment", "No hosts are waiting for approval")
        .await;

    // A token made on the page, which does not approve at once (the
    // form's default); its secret is shown once, on the page.
    browser
        .fill("form.token-form input[name=labels]", "role=web")
        .await;
    let auto_approve = browser
        .wait_for("form.token-form input[name=auto_approve]")
        .await;
    assert_eq!(
        browser.property(&auto_approve, "checked").await.as_deref(),
        Some("false")
    );
    let create = browser
        .wait_for_text("form.token-form button", "Create token")
        .await;
    browser.click(&create).await;
    let secret = browser.wait_for(".created-token code.secret").await;
    let secret = browser.text(&secret).await;
    assert!(!secret.is_empty());

    // The agent enrolls with it while the page is open: the host appears
    // among the pending ones in place.
    let page = browser.live_page().await;
    let agent = TestAgent::new("web-07");
    agent.enroll(&harness, &secret, "web-07").await;
    browser
        .wait_for_all("#enrollment table.pending tbody tr", &["web-07"])
        .await;
    browser
        .assert_same_page(&page, "the pending host appearing")
        .await;
    browser.screenshot("enrollment").await;
    // Pending, the agent gets no bundle and changes nothing.
    let refused = agent.run_once().await;
    assert!(!refused.status.success());
    assert_eq!(agent.file("/etc/motd"), None);

    browser
        .click_within(
            "#enrollment table.pending tbody tr",
            &["web-07"],
            "button[type=submit]",
            "Approve",
        )
        .await;
    browser
        .wait_for_text(".notice.success", "web-07 approved")
        .await;
    browser
        .wait_for_text("#enrollment", "No hosts are waiting for approval")
        .await;
    browser.screenshot("enrollment-approved").await;

    // Approved, it converges, and the host list says so.
    agent.converge_once().await;
    assert!(
        agent
            .file("/etc/motd")
            .is_some_and(|motd| motd.contains("managed by muster"))
    );
    browser.goto(&format!("{}/hosts", harness.url)).await;
    browser
        .wait_for_all(HOST_ROWS, &["web-07", "online", "in sync"])
        .await;

    // The audit log records who approved it.
    let audit_link = browser.wait_for_text("header.top nav a", "Audit").await;
    browser.click(&audit_link).await;
    browser
        .wait_for_path("the audit log", |path| path.starts_with("/audit"))
        .await;
    browser
        .wait_for_all(
            "#audit-log table.audit tbody tr",
            &["alice", "hosts.approve"],
        )
        .await;
    browser.screenshot("audit").await;
    browser.close().await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_runs_a_script_and_its_result_arrives_live() {
    let _turn = take_turn().await;
    let Some((harness, browser)) = start("jobs").await else {
        return;
    };
    let web = enrolled_agent(&harness, "web-01", "web").await;
    web.converge_once().await;

    log_in(&harness, &browser, "alice").await;
    let jobs_link = browser.wait_for_text("header.top nav a", "Jobs").await;
    browser.click(&jobs_link).await;
    browser
        .wait_for_path("the jobs page", |path| path.starts_with("/jobs"))
        .await;
    // First the script, then its own form, built from its parameters.
    // `restart-service` runs in a sandboxed agent: it records the restart
    // beneath the agent's root.
    browser
        .choose("#run form.filters select[name=script]", "restart-service")
        .await;
    let choose = browser
        .wait_for_text("#run form.filters button", "Choose")
        .await;
    browser.click(&choose).await;
    browser.fill("form.run #field-service", "nginx").await;
    browser.choose("form.run select[name=group]", "web").await;
    let run = browser
        .wait_for_text("form.run button[type=submit]", "Run restart-service")
        .await;
    browser.screenshot("run-form").await;
    browser.click(&run).await;
    let action_path = browser
        .wait_for_path("the action's page", |path| {
            path.starts_with("/jobs/") && path != "/jobs/run"
        })
        .await;

    // No agent polls yet: the job waits. Then the agent runs, and its
    // result appears on the open page.
    browser
        .wait_for_all("#action-detail section.job", &["web-01", "No output yet."])
        .await;
    let page = browser.live_page().await;
    let running = web.spawn();
    browser
        .wait_for_all(
            "#action-detail section.job",
            &["web-01", "exit code 0", "recorded a restart of nginx"],
        )
        .await;
    let stderr = browser.find_all("#action-detail pre.output.stderr").await;
    assert!(stderr.is_empty(), "the script wrote nothing to stderr");
    browser
        .assert_same_page(&page, "the job's result arriving")
        .await;
    browser
        .wait_for_all("#action-detail dl.facts", &["completed", "nginx"])
        .await;
    assert_eq!(browser.path().await, action_path);
    browser.screenshot("action").await;
    assert_eq!(
        web.file("/var/lib/restart-service/requests").as_deref(),
        Some("nginx\n")
    );
    drop(running);

    // The list shows the action, linked to its page.
    let all_jobs = browser
        .wait_for_text("main a[href='/jobs']", "All jobs")
        .await;
    browser.click(&all_jobs).await;
    browser
        .wait_for_path("the jobs page", |path| path == "/jobs")
        .await;
    browser
        .wait_for_all("#jobs-list tr", &["restart-service", "alice"])
        .await;
    browser.screenshot("jobs").await;
    browser.close().await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_a_viewer_reads_the_fleet_but_gets_no_forms() {
    let _turn = take_turn().await;
    let Some((harness, browser)) = start("viewer").await else {
        return;
    };
    // carol is a fleet-wide viewer in the example's RBAC.
    add_user(&harness, "carol", PASSWORD).await;
    let web = enrolled_agent(&harness, "web-01", "web").await;
    web.converge_once().await;
    log_in(&harness, &browser, "carol").await;
    browser.wait_for_text("main h1", "Overview").await;
    let nav = browser.wait_for("header.top nav").await;
    let sections = browser.text(&nav).await;
    for readable in ["Overview", "Hosts", "Commits", "Jobs"] {
        assert!(sections.contains(readable), "{sections}");
    }
    for hidden in ["Enrollment", "Audit"] {
        assert!(!sections.contains(hidden), "{sections}");
    }

    browser.goto(&format!("{}/hosts", harness.url)).await;
    browser
        .wait_for_all(HOST_ROWS, &["web-01", "online", "in sync"])
        .await;
    browser.goto(&format!("{}/jobs", harness.url)).await;
    browser.wait_for_text("main h1", "Jobs").await;
    assert!(
        browser.find("#run").await.is_none(),
        "a viewer gets no run form:\n{}",
        browser.page_text().await
    );
    browser.screenshot("jobs").await;

    // A page out of reach says so, and what to ask for.
    browser.goto(&format!("{}/enrollment", harness.url)).await;
    browser.wait_for_text("main h1", "Not allowed").await;
    browser
        .wait_for_text("main .notice.error", "hosts:approve")
        .await;
    browser
        .wait_for_text("main a[href='/']", "Back to the overview")
        .await;
    browser.screenshot("enrollment-refused").await;
    browser.close().await;
    harness.stop().await;
}
