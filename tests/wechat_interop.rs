//! intentd's WeChat callback crypto (`intentd::connectors::wechat`) against an implementation
//! nobody here wrote: wechatpy. wechatpy builds, encrypts and signs messages that intentd must
//! verify, decrypt and parse; intentd's signed, encrypted replies must open in wechatpy. Both
//! the Official Account (AppID) and WeCom (CorpID) variants, and the refusals (wrong id, bad
//! signature) on both sides.
//!
//! wechatpy (tests/wechat_interop/requirements.txt) is installed into a venv under the cargo
//! target dir on first run and reused while the requirements and Python stay the same. Without
//! python3 or the package index the test fails when CI=true and is skipped with a message
//! otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use intentd::connectors::wechat::crypto::CallbackQuery;
use intentd::connectors::wechat::text_limit::{cut, PASSIVE_TEXT_MAX_BYTES};
use intentd::connectors::wechat::xml::{self, XmlLimits};
use intentd::connectors::wechat::{signature, InboundKind, MsgCrypt, WechatError};
use rand::SeedableRng;
use serde_json::{json, Value};

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const TOKEN: &str = "intentd-token";
const APPID: &str = "wx2c2769f8efd9abc2";
const CORPID: &str = "ww1234567890abcdef";
const TS: &str = "1795572000";
const NOW_MS: i64 = 1_795_572_000_000;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn unavailable(why: String) -> Option<PathBuf> {
    assert!(!in_ci(), "CI=true: {why}");
    eprintln!("SKIPPED wechat_interop: {why}");
    None
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The venv's python with wechatpy installed, or None (skip) outside CI.
fn peer_python() -> Option<&'static Path> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        let py = std::env::var("INTENTD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let version = match Command::new(&py).arg("--version").output() {
            Ok(o) if o.status.success() => text(&o.stdout) + &text(&o.stderr),
            _ => return unavailable(format!("the wechatpy interop test needs {py} on PATH")),
        };
        let dir = common::repo_root().join("tests/wechat_interop");
        let requirements = std::fs::read_to_string(dir.join("requirements.txt")).unwrap();
        let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wechatpy-venv");
        let stamp_file = venv.join("intentd.installed");
        let stamp = format!("{}\n{requirements}", version.trim());
        let venv_py = venv.join("bin/python");
        if std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
            return Some(venv_py);
        }
        let _ = std::fs::remove_dir_all(&venv);
        let out = Command::new(&py).args(["-m", "venv"]).arg(&venv).output().unwrap();
        if !out.status.success() {
            return unavailable(format!(
                "`{py} -m venv` failed (Debian: apt-get install python3-venv): {}",
                text(&out.stderr)
            ));
        }
        let out = Command::new(&venv_py)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "-r"])
            .arg(dir.join("requirements.txt"))
            .output()
            .unwrap();
        if !out.status.success() {
            return unavailable(format!(
                "pip install -r tests/wechat_interop/requirements.txt failed (needs the package index):\n{}\n{}",
                text(&out.stdout),
                text(&out.stderr)
            ));
        }
        std::fs::write(&stamp_file, stamp).unwrap();
        Some(venv_py)
    })
    .as_deref()
}

/// Runs wechatpy on a batch of operations (see tests/wechat_interop/peer.py).
fn peer(py: &Path, ops: Value) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(py)
        .arg(common::repo_root().join("tests/wechat_interop/peer.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run peer.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ops.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "peer.py failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("peer.py prints JSON")
}

fn ok(v: &Value) -> &Value {
    v.get("ok")
        .unwrap_or_else(|| panic!("wechatpy failed: {v}"))
}

fn ok_str(v: &Value) -> &str {
    ok(v)
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
}

/// Query parameters taken from an envelope wechatpy produced (as the platform sends them).
fn query_of(envelope: &str) -> (String, String, String) {
    let f = xml::read_fields(envelope, &XmlLimits::default()).unwrap();
    let get = |k| xml::field(&f, k).unwrap().to_string();
    (get("MsgSignature"), get("TimeStamp"), get("Nonce"))
}

fn open(c: &MsgCrypt, envelope: &str) -> Result<xml::Inbound, WechatError> {
    let (sig, ts, nonce) = query_of(envelope);
    let q = CallbackQuery {
        msg_signature: &sig,
        timestamp: &ts,
        nonce: &nonce,
    };
    c.open(
        envelope,
        &q,
        NOW_MS,
        signature::DEFAULT_TIMESTAMP_WINDOW_S,
        &XmlLimits::default(),
    )
}

#[test]
fn wechatpy_encrypts_and_intentd_opens_for_both_account_kinds() {
    let Some(py) = peer_python() else { return };
    // wechatpy builds the message: a user's text as the platform would send it.
    let built = peer(
        py,
        json!([{ "op": "text_reply", "source": "oUser_1", "target": "gh_account", "content": "我想申请退货退款，怎么操作？", "time": 1_795_572_000 }]),
    );
    let message = ok_str(&built[0]).to_string();
    let enc = |op: &str, id: &str| json!({ "op": op, "token": TOKEN, "key": KEY, "id": id, "xml": message, "nonce": "n-42", "timestamp": TS });
    let out = peer(
        py,
        json!([
            enc("mp_encrypt", APPID),
            enc("work_encrypt", CORPID),
            enc("mp_encrypt", "wx_someone_else")
        ]),
    );

    for (env, id) in [(ok_str(&out[0]), APPID), (ok_str(&out[1]), CORPID)] {
        let c = MsgCrypt::new(TOKEN, KEY, id).unwrap();
        let m = open(&c, env).unwrap();
        assert_eq!(m.from_user, "oUser_1");
        assert_eq!(m.to_user, "gh_account");
        assert_eq!(m.create_time, 1_795_572_000);
        assert_eq!(
            m.kind,
            InboundKind::Text {
                content: "我想申请退货退款，怎么操作？".into(),
                msg_id: None
            }
        );
    }

    // Refusals: another account's message, a forged signature, a replayed timestamp.
    let c = MsgCrypt::new(TOKEN, KEY, APPID).unwrap();
    assert_eq!(
        open(&c, ok_str(&out[2])).unwrap_err(),
        WechatError::WrongReceiver {
            expected: APPID.into(),
            found: "wx_someone_else".into()
        }
    );
    let env = ok_str(&out[0]);
    let (_, ts, nonce) = query_of(env);
    let forged = CallbackQuery {
        msg_signature: "0123456789abcdef0123456789abcdef01234567",
        timestamp: &ts,
        nonce: &nonce,
    };
    assert!(matches!(
        c.open(env, &forged, NOW_MS, 300, &XmlLimits::default()),
        Err(WechatError::BadSignature { .. })
    ));
    let (sig, _, _) = query_of(env);
    let q = CallbackQuery {
        msg_signature: &sig,
        timestamp: &ts,
        nonce: &nonce,
    };
    assert!(matches!(
        c.open(env, &q, NOW_MS + 600_000, 300, &XmlLimits::default()),
        Err(WechatError::StaleTimestamp { skew_s: -600, .. })
    ));
}

#[test]
fn intentd_seals_and_wechatpy_opens_for_both_account_kinds() {
    let Some(py) = peer_python() else { return };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let long = "签收 7 天内支持无理由退货：在订单页点“申请售后”选择退货退款。".repeat(60);
    let content = cut(&long, PASSIVE_TEXT_MAX_BYTES, "…");
    let reply = xml::text_reply("oUser_1", "gh_account", 1_795_572_001, &content);
    let mp = MsgCrypt::new(TOKEN, KEY, APPID).unwrap();
    let wc = MsgCrypt::new(TOKEN, KEY, CORPID).unwrap();
    let mp_env = mp.seal(&reply, TS, "nonce-mp", &mut rng);
    let wc_env = wc.seal(&reply, TS, "nonce-wc", &mut rng);
    let echo = "8086375327061948374";
    let echostr = wc.encrypt(echo.as_bytes(), &mut rng);
    let echo_sig = wc.signature(TS, "nonce-url", &echostr);
    let plain_sig = signature::sign(&[TOKEN, TS, "nonce-plain"]);
    let dec = |op: &str, id: &str, env: &str| {
        let (sig, ts, nonce) = query_of(env);
        json!({ "op": op, "token": TOKEN, "key": KEY, "id": id, "xml": env, "signature": sig, "timestamp": ts, "nonce": nonce })
    };
    let mut tampered = dec("mp_decrypt", APPID, &mp_env);
    tampered["signature"] = json!(signature::sign(&[TOKEN, TS, "other", "x"]));
    let out = peer(
        py,
        json!([
            dec("mp_decrypt", APPID, &mp_env),
            dec("work_decrypt", CORPID, &wc_env),
            { "op": "work_check_url", "token": TOKEN, "key": KEY, "id": CORPID, "signature": echo_sig, "timestamp": TS, "nonce": "nonce-url", "echostr": echostr },
            { "op": "plain_check", "token": TOKEN, "signature": plain_sig, "timestamp": TS, "nonce": "nonce-plain" },
            dec("mp_decrypt", "wx_someone_else", &mp_env),
            tampered,
            { "op": "plain_check", "token": TOKEN, "signature": plain_sig, "timestamp": TS, "nonce": "nonce-other" },
            { "op": "parse", "xml": reply },
        ]),
    );
    assert_eq!(ok_str(&out[0]), reply);
    assert_eq!(ok_str(&out[1]), reply);
    assert_eq!(ok_str(&out[2]), echo);
    assert_eq!(ok(&out[3]), &json!(true));
    assert_eq!(out[4]["error"], "InvalidAppIdException");
    assert_eq!(out[5]["error"], "InvalidSignatureException");
    assert_eq!(out[6]["error"], "InvalidSignatureException");
    // wechatpy reads intentd's reply XML as the same text message, cut within the limit.
    let parsed = ok(&out[7]);
    assert_eq!(parsed["type"], "text");
    assert_eq!(parsed["source"], "gh_account");
    assert_eq!(parsed["target"], "oUser_1");
    let got = parsed["content"].as_str().unwrap();
    assert!(
        got.len() <= PASSIVE_TEXT_MAX_BYTES && got.ends_with('…'),
        "{} bytes",
        got.len()
    );
    assert!(long.starts_with(got.trim_end_matches('…')));
}

/// The real `intentd serve` with the walk-through's account (examples/wechat/wechat.yml).
async fn walkthrough_server() -> common::server::TestServer {
    let section =
        std::fs::read_to_string(common::repo_root().join("examples/wechat/wechat.yml")).unwrap();
    common::server::TestServer::start(common::server::ServerOptions {
        manual_clock: Some(NOW_MS),
        extra_config: section,
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn wechatpy_posts_to_the_real_server_and_opens_its_encrypted_reply() {
    let Some(py) = peer_python() else { return };
    let s = walkthrough_server().await;
    let (token, appid) = ("walkthrough-token", APPID);
    let built = peer(
        py,
        json!([{ "op": "text_reply", "source": "oUser_wx", "target": "gh_account", "content": "这个多少钱", "time": 1_795_572_000 }]),
    );
    let message = ok_str(&built[0]).replace("</xml>", "<MsgId>98765</MsgId></xml>");
    let env = peer(
        py,
        json!([{ "op": "mp_encrypt", "token": token, "key": KEY, "id": appid, "xml": message, "nonce": "n-77", "timestamp": TS }]),
    );
    let envelope = ok_str(&env[0]).to_string();
    let (sig, ts, nonce) = query_of(&envelope);
    let url = format!(
        "http://{}/wechat/demo-oa?timestamp={ts}&nonce={nonce}&encrypt_type=aes&msg_signature={sig}",
        s.http_addr
    );
    let post = |body: String| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(&url)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, reply) = post(envelope.clone()).await;
    assert_eq!(status, 200, "{reply}");
    let (rsig, rts, rnonce) = query_of(&reply);
    let out = peer(
        py,
        json!([
            { "op": "mp_decrypt", "token": token, "key": KEY, "id": appid, "xml": reply, "signature": rsig, "timestamp": rts, "nonce": rnonce },
            { "op": "mp_decrypt", "token": token, "key": KEY, "id": "wx_someone_else", "xml": reply, "signature": rsig, "timestamp": rts, "nonce": rnonce },
        ]),
    );
    let inner = ok_str(&out[0]).to_string();
    assert_eq!(out[1]["error"], "InvalidAppIdException");
    let parsed = peer(py, json!([{ "op": "parse", "xml": inner }]));
    let p = ok(&parsed[0]);
    assert_eq!(p["type"], "text");
    assert_eq!(p["target"], "oUser_wx");
    assert_eq!(p["source"], "gh_account");
    let content = p["content"].as_str().unwrap().to_string();
    assert!(!content.is_empty());
    // The platform's retry (same MsgId): wechatpy opens the same answer again.
    let (_, again) = post(envelope.clone()).await;
    let (asig, ats, anonce) = query_of(&again);
    let out = peer(
        py,
        json!([{ "op": "mp_decrypt", "token": token, "key": KEY, "id": appid, "xml": again, "signature": asig, "timestamp": ats, "nonce": anonce }]),
    );
    assert_eq!(ok_str(&out[0]), inner);
    // A tampered envelope is refused by the server with its reason.
    let (status, body) =
        post(envelope.replacen("<Encrypt><![CDATA[", "<Encrypt><![CDATA[A", 1)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("bad signature"), "{body}");
}

/// The README walk-through's script (examples/wechat/post_message.py) against the real server.
#[tokio::test]
async fn the_walkthrough_script_gets_a_reply() {
    let Some(py) = peer_python() else { return };
    let s = walkthrough_server().await;
    let out = Command::new(py)
        .arg(common::repo_root().join("examples/wechat/post_message.py"))
        .args(["--url", &format!("http://{}/wechat/demo-oa", s.http_addr)])
        .args(["--timestamp", TS, "--msg-id", "4242", "这个多少钱"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).trim().is_empty());
    // Refused input is reported, not hidden: a timestamp an hour off.
    let out = Command::new(py)
        .arg(common::repo_root().join("examples/wechat/post_message.py"))
        .args(["--url", &format!("http://{}/wechat/demo-oa", s.http_addr)])
        .args(["--timestamp", "1795568400", "这个多少钱"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("stale timestamp"),
        "{}",
        text(&out.stderr)
    );
}
