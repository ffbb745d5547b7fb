//! Issue 14 part 2 on the real `intentd serve` over a socket: the Official Account / WeCom app
//! callback URL `/wechat/{account}`. URL verification, plain and encrypted messages answered in
//! the platform's XML (opened with the crypto), retries and retry storms answered once, every
//! refused input with its status and message, the per-user rate limit, and the 5-second rule:
//! a late answer goes through a local stand-in of the platform's token and send APIs, which
//! checks every request against the documented format and records it.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::server::{scrape_metrics, ServerOptions, TestServer, T0};
use intentd::connectors::wechat::crypto::CallbackQuery;
use intentd::connectors::wechat::xml::{self, XmlLimits};
use intentd::connectors::wechat::{signature, InboundKind, MsgCrypt};
use parking_lot::Mutex;
use serde_json::{json, Value};

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const OA_TOKEN: &str = "tok-oa";
const APPID: &str = "wx2c2769f8efd9abc2";
const OA_SECRET: &str = "oa-secret";
const WC_TOKEN: &str = "tok-wc";
const CORPID: &str = "ww1234567890abcdef";
const WC_SECRET: &str = "wc-secret";
const AGENT: i64 = 1_000_002;
const POLITE: &str = "slow down please (from config)";

fn ts() -> String {
    (T0 / 1000).to_string()
}

// ---------------------------------------------------------------------------------------------
// The platform's API, as a local stand-in.

#[derive(Default)]
struct Platform {
    /// (path, query, JSON body) of every request, in order.
    calls: Vec<(String, HashMap<String, String>, Value)>,
    /// Every deviation from the documented format.
    errors: Vec<String>,
    tokens_issued: u32,
}

type Shared = Arc<Mutex<Platform>>;

fn expect_query(p: &mut Platform, path: &str, q: &HashMap<String, String>, want: &[(&str, &str)]) {
    let mut keys: Vec<&String> = q.keys().collect();
    keys.sort();
    let mut want_keys: Vec<&str> = want.iter().map(|(k, _)| *k).collect();
    want_keys.sort();
    if keys.iter().map(|k| k.as_str()).collect::<Vec<_>>() != want_keys {
        p.errors
            .push(format!("{path}: query keys {keys:?}, want {want_keys:?}"));
    }
    for (k, v) in want {
        if !v.is_empty() && q.get(*k).map(String::as_str) != Some(*v) {
            p.errors
                .push(format!("{path}: {k}={:?}, want {v:?}", q.get(*k)));
        }
    }
}

async fn oa_token(
    State(p): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let mut p = p.lock();
    expect_query(
        &mut p,
        "/cgi-bin/token",
        &q,
        &[
            ("grant_type", "client_credential"),
            ("appid", APPID),
            ("secret", OA_SECRET),
        ],
    );
    p.tokens_issued += 1;
    let t = format!("oa-tok-{}", p.tokens_issued);
    p.calls.push(("/cgi-bin/token".into(), q, Value::Null));
    Json(json!({ "access_token": t, "expires_in": 7200 }))
}

async fn wc_token(
    State(p): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let mut p = p.lock();
    expect_query(
        &mut p,
        "/cgi-bin/gettoken",
        &q,
        &[("corpid", CORPID), ("corpsecret", WC_SECRET)],
    );
    p.tokens_issued += 1;
    let t = format!("wc-tok-{}", p.tokens_issued);
    p.calls.push(("/cgi-bin/gettoken".into(), q, Value::Null));
    Json(json!({ "errcode": 0, "errmsg": "ok", "access_token": t, "expires_in": 7200 }))
}

fn check_send(
    p: &mut Platform,
    path: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: &str,
    wecom: bool,
) -> Value {
    expect_query(p, path, q, &[("access_token", "")]);
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        p.errors.push(format!("{path}: content-type {ct:?}"));
    }
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| {
        p.errors.push(format!("{path}: body is not JSON: {e}"));
        Value::Null
    });
    let mut keys: Vec<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort();
    let want: &[&str] = if wecom {
        &["agentid", "msgtype", "text", "touser"]
    } else {
        &["msgtype", "text", "touser"]
    };
    if keys != want {
        p.errors
            .push(format!("{path}: fields {keys:?}, want {want:?}"));
    }
    if v["msgtype"] != "text" || !v["touser"].is_string() {
        p.errors
            .push(format!("{path}: msgtype / touser wrong: {v}"));
    }
    if v["text"]["content"].as_str().is_none_or(str::is_empty) {
        p.errors.push(format!("{path}: text.content missing: {v}"));
    }
    if wecom && v["agentid"] != json!(AGENT) {
        p.errors
            .push(format!("{path}: agentid {}, want {AGENT}", v["agentid"]));
    }
    v
}

/// The OA customer-service send; the first token ever issued is answered as expired (42001).
async fn oa_send(
    State(p): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Json<Value> {
    let mut p = p.lock();
    let v = check_send(
        &mut p,
        "/cgi-bin/message/custom/send",
        &headers,
        &q,
        &body,
        false,
    );
    let token = q.get("access_token").cloned().unwrap_or_default();
    p.calls.push(("/cgi-bin/message/custom/send".into(), q, v));
    if token == "oa-tok-1" {
        return Json(json!({ "errcode": 42001, "errmsg": "access_token expired" }));
    }
    Json(json!({ "errcode": 0, "errmsg": "ok" }))
}

async fn wc_send(
    State(p): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Json<Value> {
    let mut p = p.lock();
    let v = check_send(&mut p, "/cgi-bin/message/send", &headers, &q, &body, true);
    p.calls.push(("/cgi-bin/message/send".into(), q, v));
    Json(json!({ "errcode": 0, "errmsg": "ok" }))
}

async fn stand_in() -> (String, Shared) {
    let shared: Shared = Arc::default();
    let app = Router::new()
        .route("/cgi-bin/token", get(oa_token))
        .route("/cgi-bin/gettoken", get(wc_token))
        .route("/cgi-bin/message/custom/send", post(oa_send))
        .route("/cgi-bin/message/send", post(wc_send))
        .fallback(|req: axum::extract::Request| async move {
            (
                StatusCode::NOT_FOUND,
                format!("stand-in: no route {} {}", req.method(), req.uri()),
            )
        })
        .with_state(shared.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), shared)
}

// ---------------------------------------------------------------------------------------------
// The server and the platform's side of a callback.

fn wechat_section(api: &str, budget_ms: u64, per_minute: u32) -> String {
    format!(
        r#"wechat:
  reply_budget_ms: {budget_ms}
  timestamp_window_s: 300
  max_body_bytes: 4096
  api_base: {api}
  wecom_api_base: {api}
  rate_limit:
    per_user_per_minute: {per_minute}
    burst: 2
    reply: "{POLITE}"
  accounts:
    - id: oa-plain
      kind: official_account
      bot_id: demo
      token: {OA_TOKEN}
      app_id: {APPID}
      secret: {OA_SECRET}
    - id: oa-aes
      kind: official_account
      bot_id: demo
      token: {OA_TOKEN}
      encoding_aes_key: {KEY}
      app_id: {APPID}
      secret: {OA_SECRET}
      encrypted: true
    - id: wecom
      kind: wecom
      bot_id: demo
      token: {WC_TOKEN}
      encoding_aes_key: {KEY}
      corp_id: {CORPID}
      agent_id: {AGENT}
      secret: {WC_SECRET}
"#
    )
}

async fn server(api: &str, budget_ms: u64, per_minute: u32, model: bool) -> TestServer {
    TestServer::start(ServerOptions {
        model: model.then(common::default_model_dir),
        manual_clock: Some(T0),
        extra_config: wechat_section(api, budget_ms, per_minute),
        ..Default::default()
    })
    .await
}

fn text_msg(to: &str, from: &str, msg_id: u64, content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>",
        ts()
    )
}

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

async fn send(s: &TestServer, method: &str, path_query: &str, body: String) -> Reply {
    let url = format!("http://{}{path_query}", s.http_addr);
    let c = reqwest::Client::new();
    let req = if method == "GET" {
        c.get(&url)
    } else {
        c.post(&url).header("content-type", "text/xml").body(body)
    };
    let r = req.send().await.expect("HTTP request");
    Reply {
        status: r.status().as_u16(),
        content_type: r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body: r.text().await.unwrap(),
    }
}

/// POSTs a plain-mode message, signed with `token` at `timestamp`.
async fn post_plain(
    s: &TestServer,
    account: &str,
    token: &str,
    timestamp: &str,
    body: String,
) -> Reply {
    let nonce = "123456";
    let sig = signature::sign(&[token, timestamp, nonce]);
    send(
        s,
        "POST",
        &format!("/wechat/{account}?signature={sig}&timestamp={timestamp}&nonce={nonce}&openid=x"),
        body,
    )
    .await
}

/// POSTs `inner` encrypted for `crypt` the way the platform does (msg_signature + <Encrypt>).
async fn post_encrypted(
    s: &TestServer,
    account: &str,
    crypt: &MsgCrypt,
    inner: &str,
    seed: u8,
) -> Reply {
    let enc = crypt.encrypt_with(inner.as_bytes(), [seed; 16]);
    let nonce = format!("n{seed}");
    let sig = crypt.signature(&ts(), &nonce, &enc);
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
    );
    let oa_sig = signature::sign(&[crypt.token(), &ts(), &nonce]);
    send(
        s,
        "POST",
        &format!(
            "/wechat/{account}?signature={oa_sig}&timestamp={}&nonce={nonce}&encrypt_type=aes&msg_signature={sig}",
            ts()
        ),
        body,
    )
    .await
}

/// Opens an encrypted reply with the platform's side of the crypto.
fn open_reply(crypt: &MsgCrypt, envelope: &str) -> xml::Inbound {
    let f = xml::read_fields(envelope, &XmlLimits::default()).unwrap();
    let get = |k| {
        xml::field(&f, k)
            .unwrap_or_else(|| panic!("{k} in {envelope}"))
            .to_string()
    };
    let (sig, t, n) = (get("MsgSignature"), get("TimeStamp"), get("Nonce"));
    let q = CallbackQuery {
        msg_signature: &sig,
        timestamp: &t,
        nonce: &n,
    };
    crypt
        .open(envelope, &q, T0, 300, &XmlLimits::default())
        .unwrap_or_else(|e| panic!("reply does not open: {e}: {envelope}"))
}

fn content(m: &xml::Inbound) -> String {
    match &m.kind {
        InboundKind::Text { content, .. } => content.clone(),
        k => panic!("not a text reply: {k:?}"),
    }
}

/// The reply's text, None for `success`.
fn answer_text(body: &str) -> Option<String> {
    (body != "success").then(|| content(&xml::parse_inbound(body, &XmlLimits::default()).unwrap()))
}

/// Sum of a metric's samples whose labels contain every `needle`.
async fn metric(s: &TestServer, name: &str, needles: &[&str]) -> f64 {
    let (_, body) = scrape_metrics(&s.metrics_addr).await;
    body.lines()
        .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn classify_calls(s: &TestServer) -> f64 {
    metric(
        s,
        "intentd_requests_total",
        &["transport=\"wechat\"", "rpc=\"Classify\""],
    )
    .await
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn url_verification_for_official_account_and_wecom() {
    let (api, _) = stand_in().await;
    let s = server(&api, 4500, 20, false).await;
    // Official Account: `signature` over token, timestamp, nonce; echostr answered as sent.
    let sig = signature::sign(&[OA_TOKEN, &ts(), "777"]);
    let r = send(
        &s,
        "GET",
        &format!(
            "/wechat/oa-plain?signature={sig}&timestamp={}&nonce=777&echostr=5837397520665436492",
            ts()
        ),
        String::new(),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "5837397520665436492"));
    // The encrypted Official Account verifies its URL the same way.
    let r = send(
        &s,
        "GET",
        &format!(
            "/wechat/oa-aes?signature={sig}&timestamp={}&nonce=777&echostr=42",
            ts()
        ),
        String::new(),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "42"));
    // WeCom: msg_signature over the encrypted echostr, answered decrypted.
    let wc = MsgCrypt::new(WC_TOKEN, KEY, CORPID).unwrap();
    let echostr = wc.encrypt_with(b"echo-8086375327", [5; 16]);
    let msig = wc.signature(&ts(), "888", &echostr);
    let q = format!(
        "msg_signature={msig}&timestamp={}&nonce=888&echostr={}",
        ts(),
        urlencode(&echostr)
    );
    let r = send(&s, "GET", &format!("/wechat/wecom?{q}"), String::new()).await;
    assert_eq!((r.status, r.body.as_str()), (200, "echo-8086375327"));
    // Refused: a wrong signature, a wrong nonce for WeCom, an unknown account.
    let r = send(
        &s,
        "GET",
        &format!(
            "/wechat/oa-plain?signature={}&timestamp={}&nonce=777&echostr=1",
            "0".repeat(40),
            ts()
        ),
        String::new(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("bad signature"), "{}", r.body);
    let r = send(
        &s,
        "GET",
        &format!("/wechat/wecom?{}", q.replace("nonce=888", "nonce=889")),
        String::new(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = send(
        &s,
        "GET",
        "/wechat/nobody?signature=x&timestamp=1&nonce=1&echostr=1",
        String::new(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(
        r.body.contains("no WeChat account \"nobody\""),
        "{}",
        r.body
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn plain_and_encrypted_messages_get_the_reply_in_platform_xml() {
    let (api, _) = stand_in().await;
    let s = server(&api, 4500, 20, false).await;
    // Plain: the reply XML goes back to the user, from the account.
    let r = post_plain(
        &s,
        "oa-plain",
        OA_TOKEN,
        &ts(),
        text_msg("gh_acc", "oUserPlain", 1001, "这个多少钱"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.content_type.starts_with("application/xml"),
        "{}",
        r.content_type
    );
    let m = xml::parse_inbound(&r.body, &XmlLimits::default()).unwrap();
    assert_eq!(
        (m.to_user.as_str(), m.from_user.as_str()),
        ("oUserPlain", "gh_acc")
    );
    assert_eq!(m.create_time, T0 / 1000);
    let plain_reply = content(&m);
    assert!(!plain_reply.is_empty());

    // Encrypted Official Account: the reply is encrypted and signed for the same AppID.
    let oa = MsgCrypt::new(OA_TOKEN, KEY, APPID).unwrap();
    let r = post_encrypted(
        &s,
        "oa-aes",
        &oa,
        &text_msg("gh_acc", "oUserAes", 1002, "这个多少钱"),
        1,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = open_reply(&oa, &r.body);
    assert_eq!(m.to_user, "oUserAes");
    assert!(!content(&m).is_empty());

    // WeCom app: the same with the CorpID.
    let wc = MsgCrypt::new(WC_TOKEN, KEY, CORPID).unwrap();
    let inner = text_msg(CORPID, "zhangsan", 1003, "这个多少钱")
        .replace("</xml>", "<AgentID>1000002</AgentID></xml>");
    let r = post_encrypted(&s, "wecom", &wc, &inner, 2).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = open_reply(&wc, &r.body);
    assert_eq!(
        (m.to_user.as_str(), m.from_user.as_str()),
        ("zhangsan", CORPID)
    );
    assert!(!content(&m).is_empty());

    // A retry with the same MsgId: the same answer, and still one decision per message.
    let again = post_plain(
        &s,
        "oa-plain",
        OA_TOKEN,
        &ts(),
        text_msg("gh_acc", "oUserPlain", 1001, "这个多少钱"),
    )
    .await;
    assert_eq!(
        again.body,
        post_plain(
            &s,
            "oa-plain",
            OA_TOKEN,
            &ts(),
            text_msg("gh_acc", "oUserPlain", 1001, "这个多少钱")
        )
        .await
        .body
    );
    let first_again = xml::parse_inbound(&again.body, &XmlLimits::default()).unwrap();
    assert_eq!(content(&first_again), plain_reply);
    assert_eq!(classify_calls(&s).await, 3.0);

    // An event: subscribe goes to HandleEvent (MEMBER_JOINED); an image is `success`, counted.
    let sub = format!("<xml><ToUserName>gh_acc</ToUserName><FromUserName>oNewFan</FromUserName><CreateTime>{}</CreateTime><MsgType>event</MsgType><Event>subscribe</Event></xml>", ts());
    let r = post_plain(&s, "oa-plain", OA_TOKEN, &ts(), sub).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        metric(
            &s,
            "intentd_requests_total",
            &["transport=\"wechat\"", "rpc=\"HandleEvent\""]
        )
        .await,
        1.0
    );
    let img = format!("<xml><ToUserName>gh_acc</ToUserName><FromUserName>oU</FromUserName><CreateTime>{}</CreateTime><MsgType>image</MsgType><PicUrl>http://x/y.jpg</PicUrl><MsgId>77</MsgId></xml>", ts());
    let r = post_plain(&s, "oa-plain", OA_TOKEN, &ts(), img).await;
    assert_eq!((r.status, r.body.as_str()), (200, "success"));
    assert_eq!(
        metric(
            &s,
            "intentd_wechat_callbacks_total",
            &["account=\"oa-plain\"", "outcome=\"unsupported\""]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn every_bad_input_is_refused_by_name_and_nothing_is_lost() {
    let (api, _) = stand_in().await;
    let s = server(&api, 4500, 20, false).await;
    let msg = || text_msg("gh_acc", "oBad", 2001, "这个多少钱");
    let oa = MsgCrypt::new(OA_TOKEN, KEY, APPID).unwrap();
    let cases: Vec<(Reply, u16, &[&str])> = vec![
        (
            post_plain(&s, "oa-plain", "not-the-token", &ts(), msg()).await,
            403,
            &["bad signature"],
        ),
        (
            post_plain(
                &s,
                "oa-plain",
                OA_TOKEN,
                &(T0 / 1000 - 301).to_string(),
                msg(),
            )
            .await,
            403,
            &["stale timestamp", "301 s", "±300 s", "timestamp_window_s"],
        ),
        (
            post_encrypted(
                &s,
                "oa-aes",
                &MsgCrypt::new(OA_TOKEN, KEY, "wx_someone_else").unwrap(),
                &msg(),
                3,
            )
            .await,
            403,
            &["wrong appid", "wx_someone_else"],
        ),
        (
            post_plain(
                &s,
                "oa-plain",
                OA_TOKEN,
                &ts(),
                "<xml><ToUserName>gh".into(),
            )
            .await,
            400,
            &["broken XML"],
        ),
        (
            post_plain(
                &s,
                "oa-plain",
                OA_TOKEN,
                &ts(),
                "<!DOCTYPE x [<!ENTITY a 'b'>]><xml/>".into(),
            )
            .await,
            400,
            &["DOCTYPE"],
        ),
        (
            post_plain(
                &s,
                "oa-plain",
                OA_TOKEN,
                &ts(),
                format!("<xml><Content>{}</Content></xml>", "x".repeat(5000)),
            )
            .await,
            413,
            &["oversized body", "4096 bytes", "wechat.max_body_bytes"],
        ),
        (
            post_plain(&s, "oa-aes", OA_TOKEN, &ts(), msg()).await,
            400,
            &["missing msg_signature"],
        ),
    ];
    for (i, (r, status, needles)) in cases.iter().enumerate() {
        assert_eq!(r.status, *status, "case {i}: {}", r.body);
        assert!(r.content_type.starts_with("text/plain"), "case {i}");
        for n in *needles {
            assert!(r.body.contains(n), "case {i}: {n:?} not in {:?}", r.body);
        }
    }
    // Nothing was decided for a refused request, and the real message still gets its answer.
    assert_eq!(classify_calls(&s).await, 0.0);
    assert_eq!(
        metric(
            &s,
            "intentd_wechat_callbacks_total",
            &["outcome=\"refused\""]
        )
        .await,
        cases.len() as f64
    );
    let r = post_encrypted(&s, "oa-aes", &oa, &msg(), 4).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!content(&open_reply(&oa, &r.body)).is_empty());
    assert_eq!(classify_calls(&s).await, 1.0);
}

#[tokio::test]
async fn a_retry_storm_gets_one_decision_and_the_same_answer() {
    let (api, _) = stand_in().await;
    let s = Arc::new(server(&api, 4500, 20, false).await);
    let body = text_msg("gh_acc", "oStorm", 3001, "这个多少钱");
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let s = s.clone();
        let b = body.clone();
        tasks.push(tokio::spawn(async move {
            post_plain(&s, "oa-plain", OA_TOKEN, &ts(), b).await
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        bodies.push(r.body);
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]), "answers differ");
    assert!(!content(&xml::parse_inbound(&bodies[0], &XmlLimits::default()).unwrap()).is_empty());
    assert_eq!(classify_calls(&s).await, 1.0, "one decision");
    // The stored log holds one row for it too.
    assert_eq!(conversations(&s.data_dir), 1);
}

fn conversations(data: &std::path::Path) -> u64 {
    use intentd::store::{Keyring, SqliteStore, Store};
    let ring = Keyring::from_file(&data.join("intentd.key")).expect("key file");
    SqliteStore::open(&data.join("intentd.db"), Arc::new(ring))
        .expect("open database")
        .row_counts()
        .unwrap()
        .conversations
}

#[tokio::test]
async fn the_rate_limit_answers_politely_without_the_model() {
    let (api, _) = stand_in().await;
    let s = server(&api, 4500, 1, false).await;
    let mut answers = Vec::new();
    for i in 0..4u64 {
        let r = post_plain(
            &s,
            "oa-plain",
            OA_TOKEN,
            &ts(),
            text_msg("gh_acc", "oFast", 4000 + i, "这个多少钱"),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        answers.push(answer_text(&r.body));
    }
    // burst 2: two decided (the second may be silenced by the reply's cooldown), then the
    // configured polite text (the clock does not move).
    assert!(
        answers[0].as_deref().is_some_and(|a| a != POLITE),
        "{answers:?}"
    );
    assert_ne!(answers[1].as_deref(), Some(POLITE));
    assert_eq!(
        &answers[2..],
        &[Some(POLITE.to_string()), Some(POLITE.to_string())]
    );
    assert_eq!(classify_calls(&s).await, 2.0);
    assert_eq!(
        metric(
            &s,
            "intentd_wechat_callbacks_total",
            &["outcome=\"rate_limited\""]
        )
        .await,
        2.0
    );
    // Another user is not limited; a retry of a limited message gets the same polite answer.
    let r = post_plain(
        &s,
        "oa-plain",
        OA_TOKEN,
        &ts(),
        text_msg("gh_acc", "oCalm", 4100, "这个多少钱"),
    )
    .await;
    assert!(
        answer_text(&r.body).is_some_and(|a| a != POLITE),
        "{}",
        r.body
    );
    let r = post_plain(
        &s,
        "oa-plain",
        OA_TOKEN,
        &ts(),
        text_msg("gh_acc", "oFast", 4003, "这个多少钱"),
    )
    .await;
    assert_eq!(answer_text(&r.body).as_deref(), Some(POLITE));
}

/// Waits until the stand-in has recorded `n` send calls.
async fn wait_sends(p: &Shared, n: usize) -> Vec<(String, HashMap<String, String>, Value)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sends: Vec<_> = p
            .lock()
            .calls
            .iter()
            .filter(|(path, _, _)| path.contains("/message/"))
            .cloned()
            .collect();
        if sends.len() >= n {
            return sends;
        }
        assert!(
            Instant::now() < deadline,
            "only {} sends: {:?}",
            sends.len(),
            p.lock().calls
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn past_the_budget_success_then_the_send_api_with_a_cached_refreshed_token() {
    let (api, platform) = stand_in().await;
    // 1 ms: no real forward pass of the model answers that fast, so every answer is late (a
    // long text: a short one was seen answered within 1 ms on a fast CPU).
    let slow_text = "这个多少钱".repeat(60);
    let s = server(&api, 1, 20, true).await;
    let oa = MsgCrypt::new(OA_TOKEN, KEY, APPID).unwrap();
    let r = post_encrypted(
        &s,
        "oa-aes",
        &oa,
        &text_msg("gh_acc", "oLate1", 5001, &slow_text),
        6,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "success"));
    let sends = wait_sends(&platform, 2).await;
    // The first token is refused as expired (42001): fetched again once, then sent.
    let calls = format!("{:?}\n{}", platform.lock().calls, s.stderr());
    assert_eq!(sends[0].1["access_token"], "oa-tok-1", "{calls}");
    assert_eq!(sends[1].1["access_token"], "oa-tok-2", "{calls}");
    assert_eq!(sends[1].2["touser"], "oLate1");
    let late_text = sends[1].2["text"]["content"].as_str().unwrap().to_string();

    // A retry after the deferral gets `success` too: the user gets the answer once.
    let r = post_encrypted(
        &s,
        "oa-aes",
        &oa,
        &text_msg("gh_acc", "oLate1", 5001, &slow_text),
        7,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "success"));

    // The next late answer of the account uses the cached token: no new fetch.
    let r = post_encrypted(
        &s,
        "oa-aes",
        &oa,
        &text_msg("gh_acc", "oLate2", 5002, &slow_text),
        9,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "success"));
    let sends = wait_sends(&platform, 3).await;
    assert_eq!(sends[2].1["access_token"], "oa-tok-2");
    assert_eq!(sends[2].2["touser"], "oLate2");
    assert!(!late_text.is_empty());

    // WeCom: gettoken and message/send with the agentid.
    let wc = MsgCrypt::new(WC_TOKEN, KEY, CORPID).unwrap();
    let inner = text_msg(CORPID, "lisi", 5003, &slow_text)
        .replace("</xml>", "<AgentID>1000002</AgentID></xml>");
    let r = post_encrypted(&s, "wecom", &wc, &inner, 8).await;
    assert_eq!((r.status, r.body.as_str()), (200, "success"));
    let sends = wait_sends(&platform, 4).await;
    assert_eq!(sends[3].0, "/cgi-bin/message/send");
    assert_eq!(sends[3].2["touser"], "lisi");

    let (errors, fetches) = {
        let p = platform.lock();
        let fetches: Vec<String> = p
            .calls
            .iter()
            .filter(|(path, _, _)| !path.contains("/message/"))
            .map(|(path, _, _)| path.clone())
            .collect();
        (p.errors.clone(), fetches)
    };
    assert!(
        errors.is_empty(),
        "requests off the documented format: {errors:?}"
    );
    assert_eq!(
        fetches,
        ["/cgi-bin/token", "/cgi-bin/token", "/cgi-bin/gettoken"]
    );
    assert_eq!(classify_calls(&s).await, 3.0, "one decision per message");
    assert_eq!(
        metric(
            &s,
            "intentd_wechat_callbacks_total",
            &["outcome=\"sent_late\""]
        )
        .await,
        3.0
    );
}

/// config/operator with the demo bot's welcome sent at once (no merge window), as the README
/// advises for one-to-one accounts.
fn operator_with_immediate_welcome(dir: &std::path::Path) -> std::path::PathBuf {
    let src = common::repo_root().join("config/operator");
    let dst = dir.join("operator");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    let pb = dst.join("playbook.yml");
    let text = std::fs::read_to_string(&pb).unwrap();
    let anchor = "  demo:\n    spacing: { jitter_ms: 2000 }";
    assert!(
        text.contains(anchor),
        "playbook.yml changed: update this test"
    );
    std::fs::write(
        &pb,
        text.replace(
            anchor,
            "  demo:\n    welcome: { merge_window_s: 0 }\n    spacing: { jitter_ms: 2000 }",
        ),
    )
    .unwrap();
    dst
}

#[tokio::test]
async fn a_subscribe_gets_the_welcome_as_the_passive_reply() {
    let (api, _) = stand_in().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(ServerOptions {
        manual_clock: Some(T0),
        extra_config: wechat_section(&api, 4500, 20),
        operator_dir: Some(operator_with_immediate_welcome(tmp.path())),
        ..Default::default()
    })
    .await;
    let sub = format!("<xml><ToUserName><![CDATA[gh_acc]]></ToUserName><FromUserName><![CDATA[oFan]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[]]></EventKey></xml>", ts());
    let r = post_plain(&s, "oa-plain", OA_TOKEN, &ts(), sub.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let welcome = answer_text(&r.body).expect("the welcome as the passive reply");
    assert!(!welcome.is_empty());
    // The platform's retry of the event (same FromUserName + CreateTime): the same welcome,
    // one HandleEvent.
    let again = post_plain(&s, "oa-plain", OA_TOKEN, &ts(), sub).await;
    assert_eq!(again.body, r.body);
    assert_eq!(
        metric(
            &s,
            "intentd_requests_total",
            &["transport=\"wechat\"", "rpc=\"HandleEvent\""]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_message_the_service_refuses_is_named_and_not_remembered() {
    let (api, _) = stand_in().await;
    let s = TestServer::start(ServerOptions {
        manual_clock: Some(T0),
        extra_config: format!(
            "{}limits:\n  max_text_chars: 10\n",
            wechat_section(&api, 4500, 20)
        ),
        ..Default::default()
    })
    .await;
    let long = "这个多少钱".repeat(4); // 20 characters
    for _ in 0..2 {
        // Each retry is tried again (a refused call is not kept as the message's answer).
        let r = post_plain(
            &s,
            "oa-plain",
            OA_TOKEN,
            &ts(),
            text_msg("gh_acc", "oLong", 7001, &long),
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body.contains("not answered") && r.body.contains("10"),
            "{}",
            r.body
        );
    }
    assert_eq!(
        metric(&s, "intentd_wechat_callbacks_total", &["outcome=\"error\""]).await,
        2.0
    );
}
