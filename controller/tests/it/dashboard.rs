//! The dashboard's frame: login and logout through the form, session
//! cookies, CSRF on every form, security headers, assets and the live
//! event stream.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures_util::StreamExt;

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Harness, eventually};
use crate::support::dashboard::{add_user, get_anonymous, login, post_form, send};

const PASSWORD: &str = "correct horse battery staple";

/// Starts a controller on the example fleet, with alice (admin) able to
/// log in, once the example commit is deployed.
async fn start(db: TestDb) -> Harness {
    let harness = Harness::start(db).await;
    add_user(&harness, "alice", PASSWORD).await;
    eventually("the example to deploy", || async {
        harness.store.deployed_commit().await.unwrap()
    })
    .await;
    harness
}

backends!(pages_need_a_session_and_login_opens_one, |db: TestDb| {
    async move {
        let harness = start(db).await;
        let router = harness.router();

        let anonymous = get_anonymous(&router, "/hosts?q=web").await;
        assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
        assert_eq!(anonymous.location(), Some("/login?next=%2Fhosts%3Fq%3Dweb"));

        let form = get_anonymous(&router, "/login?next=%2Fhosts").await;
        form.assert_shows(&[r#"name="password""#, r#"name="next" value="/hosts""#]);

        let wrong = post_form(
            &router,
            "/login",
            None,
            &[("user", "alice"), ("password", "wrong"), ("next", "/hosts")],
        )
        .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(
            wrong.body.contains("wrong user name or password"),
            "{}",
            wrong.body
        );
        assert!(wrong.headers.get(header::SET_COOKIE).is_none());

        let right = post_form(
            &router,
            "/login",
            None,
            &[
                ("user", "alice"),
                ("password", PASSWORD),
                ("next", "/hosts"),
            ],
        )
        .await;
        assert_eq!(right.status, StatusCode::SEE_OTHER, "{}", right.body);
        assert_eq!(right.location(), Some("/hosts"));
        let cookie = right
            .headers
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(cookie.starts_with("muster_session=mus_"), "{cookie}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
            assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
        }
        assert!(
            !cookie.contains("Secure"),
            "plain HTTP cannot keep Secure cookies"
        );

        // Somewhere else than this server is never where a login goes.
        for next in [
            "//evil.example/x",
            "https://evil.example/",
            "/\\evil.example",
        ] {
            let answer = post_form(
                &router,
                "/login",
                None,
                &[("user", "alice"), ("password", PASSWORD), ("next", next)],
            )
            .await;
            assert_eq!(answer.location(), Some("/"), "next={next}");
        }

        // A logged-in user on the login page goes where they meant to.
        let session = login(&harness, "alice", PASSWORD).await;
        let again = session.get("/login?next=%2Fcommits").await;
        assert_eq!(again.status, StatusCode::SEE_OTHER);
        assert_eq!(again.location(), Some("/commits"));
        harness.stop().await;
    }
});

backends!(every_page_carries_the_security_headers, |db: TestDb| {
    async move {
        let harness = start(db).await;
        let session = login(&harness, "alice", PASSWORD).await;
        for path in ["/", "/login", "/no-such-page-of-ours/x"] {
            let page = session.get(path).await;
            let csp = page.headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
            assert!(
                !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
                "{csp}"
            );
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
            assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        let overview = session.get("/").await;
        overview.assert_shows(&["Log out", "alice"]);
        assert_eq!(overview.headers[header::CACHE_CONTROL], "no-store");
        // No inline script anywhere: every script element has a source.
        let scripts = overview.body.matches("<script").count();
        assert!(scripts >= 1);
        assert_eq!(
            overview.body.matches("<script src=").count(),
            scripts,
            "{}",
            overview.body
        );
        assert!(
            !overview.body.contains(" style="),
            "CSP forbids style attributes"
        );
        harness.stop().await;
    }
});

backends!(
    forms_without_the_sessions_csrf_token_are_refused,
    |db: TestDb| {
        async move {
            let harness = start(db).await;
            let session = login(&harness, "alice", PASSWORD).await;
            let other = login(&harness, "alice", PASSWORD).await;
            assert_ne!(session.csrf, other.csrf, "each session has its own token");

            let missing = session.post_without_csrf("/logout", &[]).await;
            assert_eq!(missing.status, StatusCode::FORBIDDEN);
            assert!(missing.body.contains("security token"), "{}", missing.body);
            let foreign = session
                .post_without_csrf("/logout", &[("_csrf", other.csrf.as_str())])
                .await;
            assert_eq!(foreign.status, StatusCode::FORBIDDEN);

            // The right token from another site: the browser's Origin gives
            // it away.
            let request = Request::post("/logout")
                .header(header::COOKIE, &session.cookie)
                .header(header::HOST, "muster.example")
                .header(header::ORIGIN, "https://evil.example")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("_csrf={}", session.csrf)))
                .unwrap();
            let cross_site = send(&session.router, request).await;
            assert_eq!(cross_site.status, StatusCode::FORBIDDEN);

            // None of those logged out.
            session.get("/").await.assert_shows(&["Log out"]);

            let out = session.post("/logout", &[]).await;
            assert_eq!(out.status, StatusCode::SEE_OTHER);
            assert_eq!(out.location(), Some("/login"));
            let cleared = out.headers[header::SET_COOKIE].to_str().unwrap();
            assert!(cleared.starts_with("muster_session=;") && cleared.contains("Max-Age=0"));
            // The session is revoked on the server, not only forgotten by
            // the browser.
            let after = session.get("/").await;
            assert_eq!(after.status, StatusCode::SEE_OTHER);
            other.get("/").await.assert_shows(&["Log out"]);
            harness.stop().await;
        }
    }
);

backends!(assets_are_served_by_content_hash, |db: TestDb| {
    async move {
        let harness = start(db).await;
        let router = harness.router();
        for name in [
            "muster.css",
            "htmx.min.js",
            "htmx-ext-sse.min.js",
            "muster.js",
        ] {
            let url = muster_web::assets::url(name);
            let asset = get_anonymous(&router, &url).await;
            assert_eq!(asset.status, StatusCode::OK, "{url}");
            assert!(
                asset.headers[header::CACHE_CONTROL]
                    .to_str()
                    .unwrap()
                    .contains("immutable")
            );
            assert!(!asset.body.is_empty());
        }
        let stale = get_anonymous(&router, "/assets/muster.0123456789abcdef.css").await;
        assert_eq!(stale.status, StatusCode::NOT_FOUND);
        harness.stop().await;
    }
});

backends!(the_event_stream_names_what_changed, |db: TestDb| {
    async move {
        let harness = start(db).await;
        let router = harness.router();
        let anonymous = get_anonymous(&router, "/events").await;
        assert_eq!(anonymous.status, StatusCode::SEE_OTHER);

        let session = login(&harness, "alice", PASSWORD).await;
        let request = Request::get("/events")
            .header(header::COOKIE, &session.cookie)
            .body(Body::empty())
            .unwrap();
        let response = tower::ServiceExt::oneshot(router.clone(), request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut stream = response.into_body().into_data_stream();

        // An enrollment through the agent API is announced to the page.
        let token = harness.token(1, false, &[("role", "web")], 3600).await;
        harness.enroll(&token, "web-09").await;
        let mut seen = String::new();
        while !(seen.contains("event: hosts") && seen.contains("event: enrollment")) {
            let chunk = stream.next().await.expect("the stream stays open").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(seen.contains("data: changed"), "{seen}");
        harness.stop().await;
    }
});

backends!(error_pages_keep_the_navigation, |db: TestDb| {
    async move {
        let harness = start(db).await;
        add_user(&harness, "carol", PASSWORD).await;
        let carol = login(&harness, "carol", PASSWORD).await;
        // A viewer may not read the audit log: the page says so, and
        // still offers the sections she may open, without the others.
        let refused = carol.get("/audit").await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(refused.body.contains("audit:read"), "{}", refused.body);
        assert!(
            refused.body.contains(r#"href="/hosts""#),
            "{}",
            refused.body
        );
        assert!(
            !refused.body.contains(r#"href="/audit""#),
            "{}",
            refused.body
        );
        assert!(refused.body.contains("Log out"));
        let missing = carol.get("/hosts/no-such-host").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert!(missing.body.contains("Log out"), "{}", missing.body);
        // Without a session an error page shows nothing of the dashboard.
        let anonymous = post_form(&harness.router(), "/logout", None, &[]).await;
        assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
        harness.stop().await;
    }
});
