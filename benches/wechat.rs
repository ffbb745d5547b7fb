//! WeChat callback costs (benches/RESULTS.md, "WeChat callbacks").
//!
//! 1. The adapter's own work per encrypted message, without Classify: check the timestamp and
//!    `msg_signature`, decrypt and parse the callback, turn a decision into the reply text (cut
//!    to 2,048 bytes), render the reply XML, encrypt and sign it. Timed per message (HDR
//!    histogram): p50 / p99 / mean.
//! 2. With `INTENTD_WECHAT_URL` (e.g. `http://127.0.0.1:8080/wechat/demo-oa`, an encrypted
//!    Official Account configured as in examples/wechat/wechat.yml, server on the system clock):
//!    the full round trip over HTTP, encrypted XML in → encrypted XML out, each message new
//!    (own MsgId and user, so every one is decided and none is rate limited).
//!    `INTENTD_WECHAT_N` messages (default 2000) from `INTENTD_WECHAT_CLIENTS` (default 8).
//!
//! `cargo bench --bench wechat`

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use intentd::connectors::wechat::callback::reply_text;
use intentd::connectors::wechat::crypto::CallbackQuery;
use intentd::connectors::wechat::xml::{self, XmlLimits};
use intentd::connectors::wechat::MsgCrypt;
use intentd::types::{Action, PolicyDecision, ReplyOut};
use rand::SeedableRng;

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const TOKEN: &str = "walkthrough-token";
const APPID: &str = "wx2c2769f8efd9abc2";

fn text_msg(user: &str, msg_id: u64, ts: i64, content: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    )
}

/// The platform's side: the request body and its query.
fn request(c: &MsgCrypt, inner: &str, ts: &str, nonce: &str, seed: u8) -> (String, String) {
    let enc = c.encrypt_with(inner.as_bytes(), [seed; 16]);
    let sig = c.signature(ts, nonce, &enc);
    (
        format!("<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"),
        sig,
    )
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: n={} p50={:.1} us p99={:.1} us mean={:.1} us max={:.1} us",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.mean() / 1000.0,
        h.max() as f64 / 1000.0
    );
}

fn adapter_overhead() {
    let c = MsgCrypt::new(TOKEN, KEY, APPID).unwrap();
    let limits = XmlLimits::default();
    let ts = "1795572000";
    let now_ms = 1_795_572_000_000;
    let decision = PolicyDecision {
        action: Action::Reply,
        reply: Some(ReplyOut {
            text: "签收 7 天内支持无理由退货：在订单页点“申请售后”选择退货退款，审核通过后按页面地址寄回即可。".into(),
            ..ReplyOut::default()
        }),
        send_after_ms: 0,
        reason: "faq".into(),
        notices: Vec::new(),
    };
    let reqs: Vec<(String, String)> = (0..256u64)
        .map(|i| {
            request(
                &c,
                &text_msg(
                    &format!("oUser{i}"),
                    6_000_000 + i,
                    1_795_572_000,
                    "我想申请退货退款，怎么操作？",
                ),
                ts,
                "123456",
                i as u8,
            )
        })
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut h = Histogram::<u64>::new(3).unwrap();
    for round in 0..2 {
        h.reset();
        for i in 0..40_000usize {
            let (body, sig) = &reqs[i % reqs.len()];
            let t = Instant::now();
            let q = CallbackQuery {
                msg_signature: sig,
                timestamp: ts,
                nonce: "123456",
            };
            let m = c.open(body, &q, now_ms, 300, &limits).unwrap();
            let _key = m.dedup_key();
            let (text, _) = reply_text(&decision);
            let reply = xml::text_reply(&m.from_user, &m.to_user, 1_795_572_000, &text.unwrap());
            let out = c.seal(&reply, ts, "987654321", &mut rng);
            std::hint::black_box(out);
            h.record(t.elapsed().as_nanos() as u64).unwrap();
        }
        if round == 1 {
            report("adapter overhead (open + reply + seal, no Classify)", &h);
        }
    }
}

async fn round_trip(url: String, n: usize, clients: usize) {
    let c = Arc::new(MsgCrypt::new(TOKEN, KEY, APPID).unwrap());
    let http = reqwest::Client::new();
    let hist = Arc::new(parking_lot::Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let run = std::process::id() as u64 * 1_000_000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (c, http, hist, next, url) = (
            c.clone(),
            http.clone(),
            hist.clone(),
            next.clone(),
            url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let now = chrono::Utc::now().timestamp();
                let ts = now.to_string();
                let inner = text_msg(
                    &format!("oBench{run}x{i}"),
                    run + i as u64,
                    now,
                    "这个多少钱",
                );
                let (body, sig) = request(&c, &inner, &ts, "123456", i as u8);
                let q = format!(
                    "{url}?timestamp={ts}&nonce=123456&encrypt_type=aes&msg_signature={sig}"
                );
                let t = Instant::now();
                let r = http.post(&q).body(body).send().await.expect("POST");
                let status = r.status();
                let text = r.text().await.unwrap();
                let el = t.elapsed();
                assert!(status.is_success(), "{status}: {text}");
                let f = xml::read_fields(&text, &XmlLimits::default()).expect("encrypted reply");
                assert!(xml::field(&f, "Encrypt").is_some(), "{text}");
                hist.lock().record(el.as_nanos() as u64).unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let wall = started.elapsed();
    let h = hist.lock();
    report(&format!("round trip over HTTP ({clients} clients)"), &h);
    println!(
        "throughput: {:.0} messages/s ({} in {:.2} s)",
        n as f64 / wall.as_secs_f64(),
        n,
        wall.as_secs_f64()
    );
}

fn main() {
    adapter_overhead();
    if let Ok(url) = std::env::var("INTENTD_WECHAT_URL") {
        let n = std::env::var("INTENTD_WECHAT_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        let clients = std::env::var("INTENTD_WECHAT_CLIENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8);
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(round_trip(url, n, clients));
    }
}
