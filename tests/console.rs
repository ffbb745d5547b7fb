//! The operator console (`/console`) over a real socket: login with the admin token, sessions,
//! CSRF on every form, escaping of message text, server-side validation, and the reload error
//! with `file:line`. The server runs from its rules alone (no model needed); the browser test
//! is tests/console_browser.rs.

mod common;

use std::time::Duration;

use common::server::{ServerOptions, TestServer, ADMIN_TOKEN, BOT, BOT_TOKEN};
use regex::Regex;
use reqwest::header::{COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
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
    retry_after: Option<String>,
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
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
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
            retry_after,
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
        self.log_in_as(token, "amy").await
    }

    /// Logs in with `token` as operator `name`.
    async fn log_in_as(&mut self, token: &str, name: &str) -> Answer {
        let page = self.get("/console/login").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let csrf = csrf_of(&page.body);
        self.post(
            "/console/login",
            &[("csrf", &csrf), ("token", token), ("name", name)],
        )
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
    // The operator name is required (1..=64 characters): the desk records actions under it.
    for bad in ["", " ", &"x".repeat(65)] {
        let r = c
            .post(
                "/console/login",
                &[("csrf", &csrf), ("token", ADMIN_TOKEN), ("name", bad)],
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert!(r.body.contains("Operator name"), "{}", r.body);
    }

    // The admin token logs in with a new session id (the login page's id is not reused).
    let r = c
        .post(
            "/console/login",
            &[("csrf", &csrf), ("token", ADMIN_TOKEN), ("name", "amy")],
        )
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
    assert!(r.body.contains("over 7 for hour buckets"), "{}", r.body);
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
    // The charts still draw numbers (all points from one grouped query): a bar per hour of
    // today holding the three messages, and a point per hour on each rate line.
    let bars = Regex::new(r"<title>(\d\d-\d\d \d\d:00): (\d+)</title>").unwrap();
    let per_hour: Vec<u64> = bars
        .captures_iter(&page)
        .map(|c| c[2].parse().unwrap())
        .collect();
    assert_eq!(per_hour.len(), 24, "{page}");
    assert_eq!(per_hour.iter().sum::<u64>(), 3, "{page}");
    let response = Regex::new(r"<title>response \d\d-\d\d \d\d:00: (\d+)%</title>").unwrap();
    let rates: Vec<u64> = response
        .captures_iter(&page)
        .map(|c| c[1].parse().unwrap())
        .collect();
    assert_eq!(rates.len(), 24, "{page}");
    assert!(rates.iter().all(|r| *r <= 100), "{rates:?}");
    // Per day over the default week: seven bars, today's with the three.
    let page = c.get("/console/overview?chat=g-console").await.body;
    let days = Regex::new(r"<title>(\d\d-\d\d): (\d+)</title>").unwrap();
    let per_day: Vec<u64> = days
        .captures_iter(&page)
        .map(|c| c[2].parse().unwrap())
        .collect();
    assert_eq!(per_day.len(), 7, "{page}");
    assert_eq!(per_day.last(), Some(&3), "{page}");
    assert_eq!(per_day.iter().sum::<u64>(), 3, "{page}");

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
    let r = c
        .post("/console/login", &[("csrf", &csrf), ("name", "amy")])
        .await;
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

// ---- The operators' desk: review, handoffs, inbox ----

/// The first `name="<field>" value="..."` after `anchor` in `html`.
fn field_after(html: &str, anchor: &str, field: &str) -> String {
    let at = html
        .find(anchor)
        .unwrap_or_else(|| panic!("no {anchor} in {html}"));
    let re = Regex::new(&format!(r#"name="{field}" value="([^"]*)""#)).unwrap();
    re.captures(&html[at..])
        .unwrap_or_else(|| panic!("no {field} after {anchor} in {html}"))[1]
        .to_string()
}

/// Follows a POST-redirect-GET: the form answers 303 to `to`, whose page shows the outcome.
async fn outcome(c: &mut Console, r: Answer, to: &str) -> String {
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some(to));
    let page = c.get(to).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.body
}

#[tokio::test]
async fn the_desk_pages_review_handoffs_and_label_with_csrf_and_escaping() {
    use common::bot::{act, user, Bot};
    use intentd::pb::Action;

    let mut b = Bot::start_opts(ServerOptions::default(), None).await;
    // A blocked message with markup, a plain blocked one, a handoff in a group whose name is
    // markup, and a message the bot did not understand.
    let r = b
        .say(
            "g1",
            &user("u2", "<b>x</b>"),
            "<script>alert(1)</script>加微信13812345678",
        )
        .await;
    assert_eq!(act(r.action), Action::Block);
    let r = b
        .say("g1", &user("u1", "小王"), "退款怎么弄，加微信说")
        .await;
    assert_eq!(act(r.action), Action::Block);
    let mut req = b.req("g2", &user("u3", "<i>nick</i>"), "我要投诉你们");
    req.chat_name = "<script>group</script>".into();
    let r = b.c.classify(req).await.unwrap().into_inner();
    assert_eq!(act(r.action), Action::Handoff, "{r:?}");
    let r = b.say("g1", &user("u4", "小李"), "嗯嗯啊啊哦哦").await;
    assert_eq!(act(r.action), Action::Clarify, "{r:?}");

    // Pages need a login; the operator name (here with markup) is escaped on every page.
    let mut c = Console::new(&b.s);
    for page in [
        "/console/review",
        "/console/handoffs",
        "/console/inbox",
        "/console/labels.yml",
    ] {
        let r = c.get(page).await;
        assert_eq!(r.location.as_deref(), Some("/console/login"), "{page}");
    }
    let r = c.log_in_as(ADMIN_TOKEN, "<script>op</script>").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    for page in [
        "/console/review",
        "/console/handoffs",
        "/console/inbox",
        "/console/overview",
    ] {
        let r = c.get(page).await;
        assert_eq!(r.status, StatusCode::OK, "{page}: {}", r.body);
        assert!(!r.body.contains("<script"), "{page}: {}", r.body);
        assert!(r.body.contains("&lt;script&gt;op&lt;/script&gt;"), "{page}");
        for nav in ["/console/review", "/console/handoffs", "/console/inbox"] {
            assert!(
                r.body.contains(&format!("href=\"{nav}\"")),
                "{page} links {nav}"
            );
        }
    }

    // Review: both blocked messages, escaped, with the matched word and reason.
    let page = c.get("/console/review").await.body;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("13812345678"), "PII stays redacted: {page}");
    assert!(
        page.contains("加微信") && page.contains("banned_word"),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let id = field_after(&page, "退款怎么弄", "id");
    // Without the CSRF token: 403 and nothing decided.
    let r = c
        .post(
            "/console/review/approve",
            &[("id", &id), ("allow_word", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = c
        .post(
            "/console/review/approve",
            &[("csrf", "0".repeat(64).as_str()), ("id", &id)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(c.get("/console/review").await.body.contains("退款怎么弄"));
    // A bad id is named on the page.
    let r = c
        .post(
            "/console/review/approve",
            &[("csrf", &csrf), ("id", "x<b>")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("is not a review number"), "{}", r.body);
    assert!(!r.body.contains("x<b>"), "{}", r.body);
    // Approve with the word allowed: the answer is shown once, after the redirect.
    let r = c
        .post(
            "/console/review/approve",
            &[("csrf", &csrf), ("id", &id), ("allow_word", "1")],
        )
        .await;
    let body = outcome(&mut c, r, "/console/review").await;
    assert!(body.contains(&format!("Approved review #{id}")), "{body}");
    assert!(body.contains("allowed in group g1"), "{body}");
    assert!(!body.contains("退款怎么弄"), "no longer pending: {body}");
    let again = c.get("/console/review").await.body;
    assert!(!again.contains("Approved review"), "the outcome shows once");
    let all = c.get("/console/review?all=1").await.body;
    assert!(
        all.contains("退款怎么弄") && all.contains("approved"),
        "{all}"
    );
    // Another operator cannot decide it again.
    let mut bob = Console::new(&b.s);
    bob.log_in_as(ADMIN_TOKEN, "bob").await;
    let bob_csrf = csrf_of(&bob.get("/console/review").await.body);
    let r = bob
        .post(
            "/console/review/confirm",
            &[("csrf", &bob_csrf), ("id", &id)],
        )
        .await;
    let body = outcome(&mut bob, r, "/console/review").await;
    assert!(body.contains("already approved by"), "{body}");
    // Confirm the other one.
    let other = field_after(&c.get("/console/review").await.body, "alert(1)", "id");
    let r = c
        .post(
            "/console/review/confirm",
            &[("csrf", &csrf), ("id", &other)],
        )
        .await;
    let body = outcome(&mut c, r, "/console/review").await;
    assert!(body.contains("the block stands"), "{body}");
    assert!(body.contains("Nothing to review"), "{body}");

    // Handoffs: the group's name is escaped; claim, then close.
    let page = c.get("/console/handoffs").await.body;
    assert!(
        page.contains("&lt;script&gt;group&lt;/script&gt;"),
        "{page}"
    );
    assert!(page.contains("open") && page.contains("u3"), "{page}");
    let hid = field_after(&page, "action=\"/console/handoffs/claim\"", "id");
    let r = c
        .post(
            "/console/handoffs/claim",
            &[("bot", BOT), ("chat", "g2"), ("id", hid.as_str())],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "no CSRF: {}", r.body);
    let r = c
        .post(
            "/console/handoffs/claim",
            &[
                ("csrf", &csrf),
                ("bot", BOT),
                ("chat", "g2"),
                ("id", hid.as_str()),
            ],
        )
        .await;
    let body = outcome(&mut c, r, "/console/handoffs").await;
    assert!(
        body.contains(&format!("Handoff #{hid} in group g2 (user u3) claimed")),
        "{body}"
    );
    assert!(body.contains("claimed</span> by"), "{body}");
    // Bob cannot claim it.
    let r = bob
        .post(
            "/console/handoffs/claim",
            &[
                ("csrf", &bob_csrf),
                ("bot", BOT),
                ("chat", "g2"),
                ("id", hid.as_str()),
            ],
        )
        .await;
    let body = outcome(&mut bob, r, "/console/handoffs").await;
    assert!(body.contains("not claimed"), "{body}");
    assert!(body.contains("taken by another agent"), "{body}");
    let r = c
        .post(
            "/console/handoffs/close",
            &[
                ("csrf", &csrf),
                ("bot", BOT),
                ("chat", "g2"),
                ("id", hid.as_str()),
            ],
        )
        .await;
    let body = outcome(&mut c, r, "/console/handoffs").await;
    assert!(body.contains("closed by"), "{body}");
    assert!(body.contains("No open handoffs"), "{body}");
    let r = c
        .post(
            "/console/handoffs/close",
            &[("csrf", &csrf), ("bot", BOT), ("chat", "g2"), ("id", "abc")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("is not a handoff number"), "{}", r.body);

    // Inbox: the clarify message, labelled; the export has it.
    let page = c.get("/console/inbox").await.body;
    assert!(
        page.contains("嗯嗯啊啊哦哦") && page.contains("clarify"),
        "{page}"
    );
    let cid = field_after(&page, "嗯嗯啊啊哦哦", "conversation_id");
    let intent = Regex::new(r#"name="intent"[^>]*><option value="([a-z_]+)""#)
        .unwrap()
        .captures(&page)
        .unwrap()[1]
        .to_string();
    let r = c
        .post(
            "/console/inbox/label",
            &[
                ("csrf", &csrf),
                ("conversation_id", &cid),
                ("intent", "no_such_intent"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("is not an intent"), "{}", r.body);
    let r = c
        .post(
            "/console/inbox/label",
            &[("conversation_id", &cid), ("intent", &intent)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = c
        .post(
            "/console/inbox/label",
            &[
                ("csrf", &csrf),
                ("conversation_id", &cid),
                ("intent", &intent),
            ],
        )
        .await;
    let body = outcome(&mut c, r, "/console/inbox").await;
    assert!(body.contains(&format!("as {intent}")), "{body}");
    assert!(
        !body.contains(&format!("id=\"inbox-{cid}\"")),
        "labelled ones are hidden: {body}"
    );
    let all = c.get("/console/inbox?all=1").await.body;
    assert!(
        all.contains("嗯嗯啊啊哦哦") && all.contains("Relabel"),
        "{all}"
    );
    let resp = c
        .http
        .get(format!("{}/console/labels.yml", c.base))
        .header(
            COOKIE,
            format!("intentd_console={}", c.cookie.clone().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/yaml"));
    let yaml = resp.text().await.unwrap();
    assert!(yaml.contains(&format!("- intent: {intent}")), "{yaml}");
    assert!(yaml.contains("嗯嗯啊啊哦哦"), "{yaml}");
}

/// The part of a page from `id="{id}"` to the end of its element's closing `</{tag}>`.
fn element<'a>(html: &'a str, id: &str, tag: &str) -> &'a str {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let end = html[at..]
        .find(&format!("</{tag}>"))
        .unwrap_or_else(|| panic!("#{id} is not closed"));
    &html[at..at + end]
}

#[tokio::test]
async fn try_it_shows_the_models_own_scores_before_fusion() {
    // Rules only: the section is there and says why it is empty.
    let s = TestServer::start(ServerOptions::default()).await;
    let (mut c, csrf) = logged_in(&s).await;
    let r = c
        .post(
            "/console/try",
            &[("csrf", &csrf), ("bot", BOT), ("text", "怎么退款")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("Model alone (before fusion)"), "{}", r.body);
    assert!(
        element(&r.body, "model-ranking", "p").contains("No model loaded"),
        "{}",
        r.body
    );
    drop(s);

    // With the model: an explicit request for a human is decided by a `priority: always`
    // rule (fused ranking: ask_human at 100 %), while the model's own probabilities are shown
    // as it gave them.
    let s = TestServer::start(ServerOptions {
        model: Some(common::default_model_dir()),
        ..ServerOptions::default()
    })
    .await;
    let (mut c, csrf) = logged_in(&s).await;
    let r = c
        .post(
            "/console/try",
            &[
                ("csrf", &csrf),
                ("bot", BOT),
                ("text", "这个多少钱，我要人工"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("human_explicit") || r.body.contains("ask_human"));
    let table = element(&r.body, "model-ranking", "table");
    let rows = Regex::new(
        r#"<tr><td>(\d+)</td><td><code>([a-z_]+)</code></td><td class="num">([0-9.]+) ?%</td>"#,
    )
    .unwrap();
    let model: Vec<(String, f64)> = rows
        .captures_iter(table)
        .map(|m| (m[2].to_string(), m[3].parse().unwrap()))
        .collect();
    assert!(model.len() >= 2, "{table}");
    assert!(
        model.windows(2).all(|w| w[0].1 >= w[1].1),
        "best first: {model:?}"
    );
    // Softmax probabilities: the top k sum to at most 100 % (rounding aside).
    let sum: f64 = model.iter().map(|(_, p)| p).sum();
    assert!(sum <= 100.5, "probabilities: {model:?}");
    assert!(!r.body.contains("No model loaded"), "{}", r.body);
}

#[tokio::test]
async fn six_wrong_tokens_lock_the_login_with_retry_after() {
    let s = TestServer::start(ServerOptions::default()).await;
    let mut c = Console::new(&s);
    let page = c.get("/console/login").await;
    let csrf = csrf_of(&page.body);
    let wrong = [("csrf", csrf.as_str()), ("token", "guess"), ("name", "eve")];
    for i in 0..5 {
        let r = c.post("/console/login", &wrong).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "attempt {i}: {}",
            r.body
        );
        assert_eq!(r.retry_after, None);
    }
    // The 6th within 5 minutes: locked, with when to retry.
    let r = c.post("/console/login", &wrong).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let wait: u64 = r
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((240..=300).contains(&wait), "Retry-After {wait}");
    assert!(r.body.contains("Too many wrong tokens"), "{}", r.body);
    assert!(r.body.contains("Try again in"), "{}", r.body);
    // The right token does not get through the lock either (a guesser learns nothing).
    let r = c
        .post(
            "/console/login",
            &[("csrf", &csrf), ("token", ADMIN_TOKEN), ("name", "amy")],
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.retry_after.is_some());
    assert_eq!(r.set_cookie, None, "no session while locked");
}

#[tokio::test]
async fn console_sessions_survive_a_restart_and_logout_ends_them_for_good() {
    let data = tempfile::tempdir().unwrap();
    let opts = || ServerOptions {
        data_dir: Some(data.path().to_path_buf()),
        ..ServerOptions::default()
    };
    let mut s = TestServer::start(opts()).await;
    let (c, csrf) = logged_in(&s).await;
    let session = c.cookie.clone().unwrap();

    // kill -9 right after the login answered: the session was stored with it.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let mut s = TestServer::start(opts()).await;
    let mut c = Console {
        cookie: Some(session.clone()),
        ..Console::new(&s)
    };
    let r = c.get("/console/overview").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "still logged in: {:?}",
        r.location
    );
    assert!(r.body.contains("amy"), "the operator name came back");
    // A form of a page loaded before the restart still passes its CSRF check.
    let r = c
        .post(
            "/console/try",
            &[("csrf", &csrf), ("bot", BOT), ("text", "怎么退款")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The database holds no session id (only its digest, sealed with the rows).
    for e in std::fs::read_dir(data.path()).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(
            !bytes
                .windows(session.len())
                .any(|w| w == session.as_bytes()),
            "a file of the data folder holds the session id"
        );
    }

    // Logout deletes the row: after another restart the cookie is dead.
    let r = c.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = TestServer::start(opts()).await;
    let mut c = Console {
        cookie: Some(session),
        ..Console::new(&s)
    };
    let r = c.get("/console/overview").await;
    assert_eq!(r.location.as_deref(), Some("/console/login"));
}

#[tokio::test]
async fn the_inbox_filters_by_bot_and_window_and_so_does_the_export() {
    let s = TestServer::start(ServerOptions {
        extra_config: "auth:\n  disabled: false\n  admin_token: dev-admin-token\n  bots:\n    - id: demo\n      token: dev-demo-token\n    - id: shop\n      token: dev-shop-token\n".into(),
        ..ServerOptions::default()
    })
    .await;
    let api = reqwest::Client::new();
    // A message each bot does not understand: both land in the inbox.
    for (bot, token, text) in [
        (BOT, BOT_TOKEN, "嗯嗯啊啊哦哦"),
        ("shop", "dev-shop-token", "咿咿呀呀噢噢"),
    ] {
        let r = api
            .post(format!("http://{}/v1/classify", s.http_addr))
            .bearer_auth(token)
            .json(
                &json!({"bot_id": bot, "chat_id": "g1", "message_id": format!("{bot}-1"),
                "text": text, "user": {"id": "u1", "nickname": "小王"}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    let (mut c, csrf) = logged_in(&s).await;
    let every = c.get("/console/inbox").await;
    assert_eq!(every.status, StatusCode::OK, "{}", every.body);
    assert!(
        every.body.contains("嗯嗯啊啊哦哦") && every.body.contains("咿咿呀呀噢噢"),
        "{}",
        every.body
    );
    assert!(every.body.contains("every bot"), "{}", every.body);

    let shop = c.get("/console/inbox?bot=shop").await;
    assert_eq!(shop.status, StatusCode::OK, "{}", shop.body);
    assert!(shop.body.contains("咿咿呀呀噢噢"), "{}", shop.body);
    assert!(!shop.body.contains("嗯嗯啊啊哦哦"), "{}", shop.body);
    assert!(
        shop.body
            .contains(r#"<option value="shop" selected>shop</option>"#),
        "{}",
        shop.body
    );

    // Label the shop's message from the filtered page: back to the same filter.
    let cid = field_after(&shop.body, "咿咿呀呀噢噢", "conversation_id");
    let from = field_after(&shop.body, "咿咿呀呀噢噢", "from");
    let to = field_after(&shop.body, "咿咿呀呀噢噢", "to");
    let r = c
        .post(
            "/console/inbox/label",
            &[
                ("csrf", &csrf),
                ("conversation_id", &cid),
                ("intent", "greeting"),
                ("bot", "shop"),
                ("from", &from),
                ("to", &to),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let back = format!("/console/inbox?bot=shop&from={from}&to={to}");
    assert_eq!(r.location.as_deref(), Some(back.as_str()));

    // The export honours the same filter: the shop's label, none for demo, none in a window
    // before the messages.
    let export = |q: &str| {
        let req = c
            .http
            .get(format!("{}/console/labels.yml{q}", c.base))
            .header(
                COOKIE,
                format!("intentd_console={}", c.cookie.clone().unwrap()),
            );
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let (st, yaml) = export("?bot=shop").await;
    assert_eq!(st, StatusCode::OK);
    assert!(yaml.contains("咿咿呀呀噢噢"), "{yaml}");
    let (_, yaml) = export("?bot=demo").await;
    assert!(!yaml.contains("咿咿呀呀噢噢"), "{yaml}");
    let (_, yaml) = export("?bot=shop&from=2020-01-01&to=2020-01-31").await;
    assert!(!yaml.contains("咿咿呀呀噢噢"), "{yaml}");
    let (st, yaml) = export("?bot=shop&from=soon").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{yaml}");
    assert!(yaml.contains("is not a date like"), "{yaml}");

    // Bad filters are named, and the page still shows (the defaults).
    let r = c
        .get("/console/inbox?bot=ghost&from=yesterday&to=2026-01-01")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    for m in [
        "bot: 'ghost' is not a configured bot",
        "from: 'yesterday' is not a date like 2026-12-01",
    ] {
        let escaped = m.replace('\'', "&#39;");
        assert!(
            r.body.contains(m) || r.body.contains(&escaped),
            "{m}: {}",
            r.body
        );
    }
    let r = c.get("/console/inbox?from=2026-01-01&to=2026-12-01").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("over 62"), "{}", r.body);
    let r = c.get("/console/inbox?from=2026-12-01&to=2026-11-01").await;
    assert!(r.body.contains("is after to"), "{}", r.body);
}
