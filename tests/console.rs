//! The operator console (`/console`) over a real socket: login with the admin token, sessions,
//! CSRF on every form, escaping of message text, server-side validation, and the reload error
//! with `file:line`. The server runs from its rules alone (no model needed); the browser test
//! is tests/console_browser.rs.

mod common;

use std::time::Duration;

use common::server::{ServerOptions, TestServer, ADMIN_TOKEN, BOT, BOT_TOKEN};
use regex::Regex;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;

/// A browser-like client that keeps the console cookie by hand and never follows redirects.
struct Console {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

impl Console {
    fn new(s: &TestServer) -> Self {
        Console {
            base: format!("http://{}", s.http_addr),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Answer {
        let req = match &self.cookie {
            Some(c) => req.header(COOKIE, format!("intentd_console={c}")),
            None => req,
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        let set_cookie = resp
            .headers()
            .get(SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_string());
        if let Some(sc) = &set_cookie {
            let value = sc
                .split(';')
                .next()
                .unwrap()
                .trim_start_matches("intentd_console=");
            self.cookie = (!value.is_empty()).then(|| value.to_string());
        }
        let body = resp.text().await.unwrap();
        Answer {
            status,
            location,
            set_cookie,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    /// Logs in with `token`; returns the final answer of the login POST.
    async fn log_in(&mut self, token: &str) -> Answer {
        let page = self.get("/console/login").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let csrf = csrf_of(&page.body);
        self.post("/console/login", &[("csrf", &csrf), ("token", token)])
            .await
    }
}

fn csrf_of(html: &str) -> String {
    Regex::new(r#"name="csrf" value="([0-9a-f]{64})""#)
        .unwrap()
        .captures(html)
        .unwrap_or_else(|| panic!("no CSRF field in {html}"))[1]
        .to_string()
}

async fn logged_in(s: &TestServer) -> (Console, String) {
    let mut c = Console::new(s);
    let r = c.log_in(ADMIN_TOKEN).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let page = c.get("/console/try").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let csrf = csrf_of(&page.body);
    (c, csrf)
}

#[tokio::test]
async fn login_is_required_and_only_the_admin_token_logs_in() {
    let s = TestServer::start(ServerOptions::default()).await;
    let mut c = Console::new(&s);

    // No session: pages redirect to the login form, forms are 401.
    for page in [
        "/console",
        "/console/overview",
        "/console/replies",
        "/console/try",
    ] {
        let r = c.get(page).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{page}");
        let want = if page == "/console" {
            "/console/overview"
        } else {
            "/console/login"
        };
        assert_eq!(r.location.as_deref(), Some(want), "{page}");
    }
    let r = c.post("/console/try", &[("text", "你好")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert!(r.body.contains("Log in"), "{}", r.body);

    // The login page starts an anonymous session: HttpOnly, SameSite=Strict, limited.
    let page = c.get("/console/login").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("<meta charset=\"utf-8\">"),
        "{}",
        page.body
    );
    let cookie = page.set_cookie.unwrap();
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=600",
    ] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    let anonymous = c.cookie.clone().unwrap();
    let csrf = csrf_of(&page.body);
    // An anonymous session sees no page.
    let r = c.get("/console/overview").await;
    assert_eq!(r.location.as_deref(), Some("/console/login"));

    // The login form itself needs its CSRF token.
    let r = c.post("/console/login", &[("token", ADMIN_TOKEN)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(r.body.contains("CSRF"), "{}", r.body);

    // Wrong tokens (a bot's included) are refused and say so.
    for wrong in ["not-the-token", BOT_TOKEN] {
        let r = c
            .post("/console/login", &[("csrf", &csrf), ("token", wrong)])
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        assert!(r.body.contains("Wrong token"), "{}", r.body);
    }
    let r = c
        .post("/console/login", &[("csrf", &csrf), ("token", "")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    // The admin token logs in with a new session id (the login page's id is not reused).
    let r = c
        .post("/console/login", &[("csrf", &csrf), ("token", ADMIN_TOKEN)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some("/console/overview"));
    let cookie = r.set_cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(cookie.contains("Max-Age=43200"), "{cookie}");
    let session = c.cookie.clone().unwrap();
    assert_ne!(session, anonymous);
    let r = c.get("/console/overview").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("Definitions"), "{}", r.body);
    // The old id is dead.
    c.cookie = Some(anonymous);
    let r = c.get("/console/overview").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);

    // Logging out ends the session (with its CSRF token).
    c.cookie = Some(session.clone());
    let csrf = csrf_of(&c.get("/console/overview").await.body);
    let r = c.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(r.set_cookie.unwrap().contains("Max-Age=0"));
    c.cookie = Some(session);
    let r = c.get("/console/overview").await;
    assert_eq!(r.location.as_deref(), Some("/console/login"));

    // The console's HTML is not an API route: unknown console paths get an HTML 404.
    let r = c.get("/console/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("There is no console page"), "{}", r.body);
}

#[tokio::test]
async fn every_form_needs_the_sessions_csrf_token() {
    let s = TestServer::start(ServerOptions::default()).await;
    let (mut c, csrf) = logged_in(&s).await;
    let other = {
        let (_, other_csrf) = logged_in(&s).await;
        other_csrf
    };
    for (path, fields) in [
        ("/console/try", vec![("bot", BOT), ("text", "你好")]),
        ("/console/replies/reload", vec![]),
        (
            "/console/replies/preview",
            vec![("key", "welcome"), ("at", "2026-11-25T10:00")],
        ),
        ("/console/logout", vec![]),
    ] {
        let r = c.post(path, &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
        assert!(r.body.contains("no valid CSRF token"), "{path}: {}", r.body);
        // Another session's token is no better.
        let mut with_other = fields.clone();
        with_other.push(("csrf", &other));
        let r = c.post(path, &with_other).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
    }
    // Nothing was classified: the refused try-it did not reach the service.
    let r = c.get("/console/overview").await;
    assert!(!r.body.contains("console-try-it"), "{}", r.body);
    // With the token the same form works.
    let r = c
        .post(
            "/console/try",
            &[("csrf", &csrf), ("bot", BOT), ("text", "你好")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("Decision"), "{}", r.body);
}

#[tokio::test]
async fn message_text_and_nicknames_are_escaped() {
    let s = TestServer::start(ServerOptions::default()).await;
    let (mut c, csrf) = logged_in(&s).await;
    let text = "<script>alert('x')</script>我要退款";
    let nick = "<img src=x onerror=alert(1)>";
    let r = c
        .post(
            "/console/try",
            &[
                ("csrf", &csrf),
                ("bot", BOT),
                ("chat", "<b>g</b>"),
                ("nickname", nick),
                ("text", text),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("Decision"), "{}", r.body);
    assert!(!r.body.contains("<script"), "{}", r.body);
    assert!(!r.body.contains("<img"), "{}", r.body);
    assert!(!r.body.contains("<b>g</b>"), "{}", r.body);
    assert!(
        r.body
            .contains("&lt;script&gt;alert('x')&lt;/script&gt;我要退款")
            || r.body
                .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;我要退款"),
        "{}",
        r.body
    );
    // The page forbids scripts anyway.
    let resp = reqwest::Client::new()
        .get(format!("http://{}/console/login", s.http_addr))
        .send()
        .await
        .unwrap();
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");

    // A nickname in a reply preview is escaped too, and its banned word is caught.
    let r = c
        .post(
            "/console/replies/preview",
            &[
                ("csrf", &csrf),
                ("key", "welcome"),
                ("nickname", "<i>加微信</i>"),
                ("group_name", "潮鞋交流群"),
                ("at", "2026-11-25T10:00"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(!r.body.contains("<i>"), "{}", r.body);
    assert!(r.body.contains("contains the banned word"), "{}", r.body);
}

#[tokio::test]
async fn forms_are_validated_on_the_server() {
    let s = TestServer::start(ServerOptions::default()).await;
    let (mut c, csrf) = logged_in(&s).await;
    let r = c
        .post(
            "/console/try",
            &[("csrf", &csrf), ("bot", BOT), ("text", "  ")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("enter a text to classify"), "{}", r.body);
    let r = c
        .post(
            "/console/try",
            &[("csrf", &csrf), ("bot", "ghost"), ("text", "你好")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("not a configured bot"), "{}", r.body);
    let long = "长".repeat(3000);
    let r = c
        .post(
            "/console/try",
            &[("csrf", &csrf), ("bot", BOT), ("text", &long)],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("text"), "{}", r.body);
    let r = c
        .post(
            "/console/replies/preview",
            &[("csrf", &csrf), ("key", "welcome"), ("at", "tomorrow")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("is not a date-time"), "{}", r.body);
    let r = c
        .post(
            "/console/replies/preview",
            &[("csrf", &csrf), ("key", "nope"), ("at", "2026-11-25T10:00")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("no reply set"), "{}", r.body);
    let r = c
        .get("/console/overview?from=yesterday&to=2026-01-01&bucket=week&bot=ghost")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for m in [
        "from: &#39;yesterday&#39; is not a date",
        "bucket: &#39;week&#39; is not day or hour",
        "bot: &#39;ghost&#39; is not a configured bot",
    ] {
        let m2 = m.replace("&#39;", "'");
        assert!(
            r.body.contains(m) || r.body.contains(&m2),
            "{m}: {}",
            r.body
        );
    }
    let r = c
        .get("/console/overview?from=2026-01-01&to=2026-12-01&bucket=hour")
        .await;
    assert!(r.body.contains("over 3 for hour buckets"), "{}", r.body);
}

#[tokio::test]
async fn overview_counts_traffic_and_reload_names_the_broken_line() {
    let dir = tempfile::tempdir().unwrap();
    let operator = dir.path().join("operator");
    std::fs::create_dir(&operator).unwrap();
    for e in std::fs::read_dir(common::repo_root().join("config/operator")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), operator.join(e.file_name())).unwrap();
    }
    let s = TestServer::start(ServerOptions {
        operator_dir: Some(operator.clone()),
        ..Default::default()
    })
    .await;
    let (mut c, csrf) = logged_in(&s).await;
    let volume = |html: &str| -> u64 {
        let re =
            Regex::new(r#"<div class="name">Volume</div><div class="value">(\d+)</div>"#).unwrap();
        re.captures(html)
            .unwrap_or_else(|| panic!("no volume in {html}"))[1]
            .parse()
            .unwrap()
    };
    let before = volume(&c.get("/console/overview").await.body);
    let api = reqwest::Client::new();
    for i in 0..3 {
        let r = api
            .post(format!("http://{}/v1/classify", s.http_addr))
            .bearer_auth(BOT_TOKEN)
            .json(
                &json!({"bot_id": BOT, "chat_id": "g-console", "message_id": format!("m{i}"),
                "text": "发票怎么开", "user": {"id": format!("u{i}"), "nickname": "小王"}}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let page = c.get("/console/overview").await.body;
    assert_eq!(volume(&page), before + 3, "{page}");
    assert!(page.contains("g-console"), "{page}");
    let page = c
        .get("/console/overview?chat=g-console&bucket=hour")
        .await
        .body;
    assert_eq!(volume(&page), 3, "{page}");

    // Reload: fine, then a broken replies.yml is named with its line and nothing changes.
    let r = c.post("/console/replies/reload", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("Reloaded"), "{}", r.body);
    let replies = operator.join("replies.yml");
    let good = std::fs::read_to_string(&replies).unwrap();
    std::fs::write(
        &replies,
        good.replacen("  welcome:\n", "  welcome: [oops\n", 1),
    )
    .unwrap();
    let r = c.post("/console/replies/reload", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let re = Regex::new(r"replies\.yml:\d+").unwrap();
    assert!(re.is_match(&r.body), "{}", r.body);
    assert!(r.body.contains("operator reload rejected"), "{}", r.body);
    std::fs::write(&replies, good).unwrap();
    let r = c.post("/console/replies/reload", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn with_auth_disabled_the_console_needs_no_token_but_still_a_session() {
    let s = TestServer::start(ServerOptions {
        extra_config: "auth:\n  disabled: true\n  bots:\n    - id: demo\n".into(),
        ..Default::default()
    })
    .await;
    let mut c = Console::new(&s);
    let r = c.get("/console/overview").await;
    assert_eq!(r.location.as_deref(), Some("/console/login"));
    let page = c.get("/console/login").await;
    assert!(
        page.body.contains("Authentication is disabled"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("type=\"password\""), "{}", page.body);
    let csrf = csrf_of(&page.body);
    let r = c.post("/console/login", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let r = c.get("/console/overview").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // CSRF still applies.
    let r = c.post("/console/replies/reload", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn secure_cookies_and_a_disabled_console_follow_the_config() {
    let s = TestServer::start(ServerOptions {
        extra_config: "http:\n  listen: 127.0.0.1:0\n  console:\n    secure_cookies: true\n".into(),
        ..Default::default()
    })
    .await;
    let mut c = Console::new(&s);
    let r = c.get("/console/login").await;
    assert!(r.set_cookie.unwrap().contains("; Secure"));
    let s = TestServer::start(ServerOptions {
        extra_config: "http:\n  listen: 127.0.0.1:0\n  console:\n    enabled: false\n".into(),
        ..Default::default()
    })
    .await;
    let mut c = Console::new(&s);
    let r = c.get("/console/login").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
