//! Issue 5's acceptance on the real server binary and a real SQLite file: restart keeps stats,
//! kill -9 loses no acknowledged record, no clear text at rest, export / keygen / key rotation,
//! retention with the 180-day audit floor, the A/B report by hand, the /metrics scrape, and
//! back-pressure when the store queue is full.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::{classify_req, AuthedChannel, ServerOptions, TestServer, BOT, T0};
use intentd::pb;
use intentd::pb::intent_service_client::IntentServiceClient;
use intentd::store::audit::DAY_MS;
use intentd::store::{
    AuditAction, AuditRecord, ConversationRecord, FeedbackKind, FeedbackRecord, Keyring, Record,
    SqliteStore, Store, Timings,
};
use intentd::types::{Action, Source};
use tonic::Code;

type Client = IntentServiceClient<AuthedChannel>;

// ---------------------------------------------------------------------------------------------
// Helpers

/// The whole `store:` section (the harness replaces top-level sections as a unit), pointing at
/// `data`, plus `extra` lines (two-space indented keys).
fn store_section(data: &Path, extra: &str) -> String {
    let mut s = format!(
        "store:\n  enabled: true\n  path: {d}/intentd.db\n  key_env: INTENTD_LOG_KEY\n  key_file: {d}/intentd.key\n  create_key_file: true\n",
        d = data.display()
    );
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("  ");
        s.push_str(line.trim());
        s.push('\n');
    }
    s
}

async fn start(data: &Path, clock: Option<i64>, store_extra: &str) -> TestServer {
    TestServer::start(ServerOptions {
        manual_clock: clock,
        extra_config: store_section(data, store_extra),
        data_dir: Some(data.to_path_buf()),
        ..Default::default()
    })
    .await
}

/// SIGTERM and a clean exit (the store queue is drained before exit 0). Waits without
/// blocking the runtime: the test's clients must be able to answer the server's GOAWAY.
async fn stop(s: &mut TestServer) {
    s.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "no exit 30 s after SIGTERM: {}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "no clean exit: {}", s.stderr());
    let log = s.stderr();
    assert!(
        log.contains("stopped") && !log.contains("grace period over"),
        "{log}"
    );
}

/// Opens the server's database beside it (or after it) through the store API.
fn open_db(data: &Path) -> SqliteStore {
    let ring = Keyring::from_file(&data.join("intentd.key")).expect("key file");
    SqliteStore::open(&data.join("intentd.db"), Arc::new(ring)).expect("open database")
}

fn req_in(chat: &str, id: &str, text: &str, user: &str) -> pb::ClassifyRequest {
    let mut r = classify_req(id, text, user);
    r.chat_id = chat.into();
    r
}

fn feedback_req(message_id: &str, kind: pb::FeedbackKind) -> pb::FeedbackRequest {
    pb::FeedbackRequest {
        bot_id: BOT.into(),
        message_id: message_id.into(),
        kind: kind as i32,
        ..Default::default()
    }
}

async fn feedback(c: &mut Client, message_id: &str, kind: pb::FeedbackKind) {
    let r = c
        .feedback(feedback_req(message_id, kind))
        .await
        .unwrap()
        .into_inner();
    assert!(r.recorded);
}

fn stats_req(to_ms: i64, experiment: &str) -> pb::StatsRequest {
    pb::StatsRequest {
        bot_id: BOT.into(),
        to_ms,
        experiment: experiment.into(),
        ..Default::default()
    }
}

/// Runs the real CLI from the repository root, with no key in the environment.
fn intentd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::intentd_bin());
    cmd.args(args)
        .current_dir(common::repo_root())
        .env_remove("INTENTD_LOG_KEY")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run intentd")
}

fn text_of(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn write_key_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn audit_of(data: &Path) -> Vec<AuditRecord> {
    open_db(data).audit_rows(0, i64::MAX).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

// ---------------------------------------------------------------------------------------------
// Restart keeps stats

#[tokio::test]
async fn restart_keeps_stats_and_the_cli_agrees() {
    let data = tempfile::tempdir().unwrap();
    let mut s = start(data.path(), Some(T0), "").await;
    let mut c = s.client().await;
    let msgs = [
        ("g1", "m1", "优惠券怎么领？", "u1"),
        ("g1", "m2", "这个多少钱", "u2"),
        ("g2", "m3", "什么时候发货", "u3"),
        ("g2", "m4", "转人工", "u4"),
        ("g1", "m5", "我要投诉你们，太差了", "u5"),
        ("g2", "m6", "你好", "u6"),
        ("g1", "m7", "嗯嗯那个就是那个吧", "u7"),
        ("g2", "m8", "退货退款怎么弄", "u8"),
    ];
    let mut handoffs = 0;
    let mut auto_replies = 0;
    for (chat, id, text, user) in msgs {
        let r = c
            .classify(req_in(chat, id, text, user))
            .await
            .unwrap()
            .into_inner();
        assert!(r.recorded, "{id}: {r:?}");
        if r.action == pb::Action::Handoff as i32 {
            handoffs += 1;
        }
        let replied = r.reply.as_ref().is_some_and(|x| !x.text.is_empty());
        if replied
            && (r.action == pb::Action::Reply as i32 || r.action == pb::Action::Clarify as i32)
        {
            auto_replies += 1;
        }
    }
    assert!(handoffs >= 1, "转人工 hands off");
    use pb::FeedbackKind::*;
    for (m, k) in [
        ("m1", Resolved),
        ("m2", Resolved),
        ("m3", Unresolved),
        ("m1", ThumbsUp),
        ("m2", ThumbsUp),
        ("m3", ThumbsDown),
        ("m1", Clicked),
        ("m6", Clicked),
        // A retried feedback does not count twice.
        ("m1", Clicked),
    ] {
        feedback(&mut c, m, k).await;
    }
    let hr = c
        .report_human_reply(pb::HumanReplyRequest {
            bot_id: BOT.into(),
            chat_id: "g1".into(),
            message_id: "m5".into(),
            at_ms: 0,
            handoff_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hr.recorded);

    let req = stats_req(0, "");
    let before = c.get_stats(req.clone()).await.unwrap().into_inner();
    let t = before.total.unwrap();
    assert_eq!(t.messages, 8);
    assert_eq!(t.handoffs, handoffs);
    assert_eq!(t.auto_replies, auto_replies);
    assert_eq!((t.resolved, t.unresolved), (2, 1));
    assert_eq!((t.thumbs_up, t.thumbs_down), (2, 1));
    assert_eq!(t.clicks, 2);
    assert_eq!(t.human_replies, 1);
    assert!(close(t.resolution_rate, 2.0 / 3.0), "{t:?}");
    assert!(close(t.satisfaction, (2.0 - 1.0) / 3.0), "{t:?}");
    assert!(close(t.human_share, (handoffs + 1) as f64 / 8.0), "{t:?}");
    assert!(close(t.human_share_target, 0.30));
    let chats: Vec<_> = before
        .by_chat
        .iter()
        .map(|g| (g.key.as_str(), g.rates.as_ref().unwrap().messages))
        .collect();
    assert_eq!(chats, vec![("g1", 4), ("g2", 4)]);
    assert!(
        before.by_intent.iter().any(|g| g.key == "ask_human"),
        "{:?}",
        before.by_intent
    );
    stop(&mut s).await;

    let mut s2 = start(data.path(), Some(T0), "").await;
    let after = s2.client().await.get_stats(req).await.unwrap().into_inner();
    assert_eq!(before, after, "stats changed across a restart");

    // The CLI reads the same file (beside the running server) and prints the same numbers.
    let out = intentd(
        &[
            "stats",
            "--config",
            s2.config_path.to_str().unwrap(),
            "--json",
            "--bot",
            BOT,
            "--from",
            "0",
            "--to",
            &T0.to_string(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text_of(&out.stderr));
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats --json is JSON");
    assert_eq!(cli, serde_json::to_value(&before).unwrap());
    stop(&mut s2).await;

    // Both runs left their audit trail: start-ups, shutdowns and one row per handoff.
    let audit = audit_of(data.path());
    let count = |a: AuditAction| audit.iter().filter(|r| r.action == a).count();
    assert_eq!(count(AuditAction::Startup), 2);
    assert_eq!(count(AuditAction::Shutdown), 2);
    assert_eq!(count(AuditAction::Handoff) as u64, handoffs);
}

// ---------------------------------------------------------------------------------------------
// kill -9

#[tokio::test]
async fn kill_9_during_a_stream_loses_no_acknowledged_record() {
    let data = tempfile::tempdir().unwrap();
    let mut s = start(data.path(), None, "").await;
    let killed = Arc::new(AtomicBool::new(false));
    let acked_conv = Arc::new(AtomicU64::new(0));
    let acked_fb = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..6 {
        let mut c = s.client().await;
        let (killed, acked_conv, acked_fb) = (killed.clone(), acked_conv.clone(), acked_fb.clone());
        tasks.push(tokio::spawn(async move {
            let texts = [
                "这个多少钱",
                "什么时候发货",
                "优惠券怎么领",
                "你好",
                "退货退款怎么弄",
            ];
            for i in 0.. {
                let id = format!("k{k}-{i}");
                match c
                    .classify(classify_req(&id, texts[i % texts.len()], &format!("u{k}")))
                    .await
                {
                    Ok(r) => {
                        if r.into_inner().recorded {
                            acked_conv.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(e) if killed.load(Ordering::SeqCst) => return e,
                    Err(e) => panic!("call failed before the kill: {e}"),
                }
                let kind = if i % 2 == 0 {
                    pb::FeedbackKind::Clicked
                } else {
                    pb::FeedbackKind::Resolved
                };
                match c.feedback(feedback_req(&id, kind)).await {
                    Ok(r) => {
                        assert!(r.into_inner().recorded);
                        acked_fb.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if killed.load(Ordering::SeqCst) => return e,
                    Err(e) => panic!("call failed before the kill: {e}"),
                }
            }
            unreachable!()
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_conv.load(Ordering::SeqCst) < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Mid-stream: the flag first, so clients treat the errors that follow as expected.
    killed.store(true, Ordering::SeqCst);
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("client hung after the kill")
            .unwrap();
    }
    let (conv, fb) = (
        acked_conv.load(Ordering::SeqCst),
        acked_fb.load(Ordering::SeqCst),
    );
    assert!(
        conv >= 300 && fb > 0,
        "too little traffic before the kill: {conv} / {fb}"
    );

    let rows = open_db(data.path()).row_counts().unwrap();
    assert!(
        rows.conversations >= conv,
        "lost conversations: {} rows < {conv} acknowledged",
        rows.conversations
    );
    assert!(
        rows.feedback >= fb,
        "lost feedback: {} rows < {fb} acknowledged",
        rows.feedback
    );

    // And the server comes back on the same file and counts them.
    let s2 = start(data.path(), None, "").await;
    let t = s2
        .client()
        .await
        .get_stats(stats_req(0, ""))
        .await
        .unwrap()
        .into_inner()
        .total
        .unwrap();
    assert!(t.messages >= conv, "{} < {conv}", t.messages);
}

// ---------------------------------------------------------------------------------------------
// No clear text at rest

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn raw_db_bytes(data: &Path) -> Vec<(String, Vec<u8>)> {
    ["intentd.db", "intentd.db-wal", "intentd.db-shm"]
        .iter()
        .filter_map(|f| std::fs::read(data.join(f)).ok().map(|b| (f.to_string(), b)))
        .collect()
}

#[tokio::test]
async fn the_database_file_holds_no_message_text_in_clear() {
    let data = tempfile::tempdir().unwrap();
    let mut s = start(data.path(), Some(T0), "").await;
    let mut c = s.client().await;
    let texts = [
        (
            "secret-m1",
            "我的手机号是13912345678，麒麟瓜子礼盒什么时候发货",
        ),
        ("secret-m2", "转人工！我要投诉，电话18612345678，琉璃盏碎了"),
        ("secret-m3", "加我微信领翡翠手镯优惠"),
        (
            "secret-m4",
            "优惠券怎么领？邮箱 zhangsan.secret@example.com",
        ),
    ];
    let mut replies = Vec::new();
    for (i, (id, text)) in texts.iter().enumerate() {
        let r = c
            .classify(req_in(
                "g-secret",
                id,
                text,
                &format!("wxid_secret_user_{i}"),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(r.recorded);
        if let Some(reply) = r.reply.filter(|r| r.text.chars().count() >= 8) {
            replies.push(reply.text);
        }
        feedback(&mut c, id, pb::FeedbackKind::Resolved).await;
    }
    // Issue 12.8 (failed on main: message ids were stored in clear, in conversations, feedback,
    // the idempotent answers and the audit row of a handoff). Feedback by the id still finds
    // the message; an id never classified is still NOT_FOUND.
    let r = c
        .classify(req_in("g-secret", "msg-secret-123", "这个多少钱", "u-x"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.recorded);
    feedback(&mut c, "msg-secret-123", pb::FeedbackKind::Clicked).await;
    let e = c
        .feedback(feedback_req("msg-secret-999", pb::FeedbackKind::Clicked))
        .await
        .expect_err("unknown message");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let needles: Vec<String> = texts
        .iter()
        .map(|t| t.1.to_string())
        .chain(
            [
                "13912345678",
                "18612345678",
                "麒麟瓜子礼盒",
                "琉璃盏",
                "翡翠手镯",
                "我的手机号",
                "zhangsan.secret",
                "什么时候发货",
                // Issue 12.8 (failed on main): user ids were stored in clear, also in the
                // audit row of a handoff; so were message ids.
                "wxid_secret_user",
                "secret-m",
                "msg-secret-123",
            ]
            .map(String::from),
        )
        .chain(replies.iter().cloned())
        .collect();
    let check = |when: &str| {
        let files = raw_db_bytes(data.path());
        assert!(files.iter().any(|(f, _)| f == "intentd.db"));
        // Positive control: chat ids are stored in clear, so the scan does see the rows.
        assert!(
            files.iter().any(|(_, b)| find(b, b"g-secret")),
            "{when}: the rows are not in the files at all"
        );
        for (f, bytes) in &files {
            for n in &needles {
                assert!(
                    !find(bytes, n.as_bytes()),
                    "{when}: {f} contains '{n}' in clear"
                );
            }
        }
    };
    check("while serving");
    stop(&mut s).await;
    check("after shutdown");

    // The rows are there, sealed: the key opens them, with the PII redacted even inside.
    let db = open_db(data.path());
    let rows = db.conversations(0, i64::MAX, 0, 100).unwrap();
    let stored = |id: &str| db.stored_message_id(BOT, id);
    assert!(stored("secret-m1").starts_with("m~"));
    let m1 = rows
        .iter()
        .find(|r| r.record.message_id == stored("secret-m1"))
        .expect("row m1");
    assert_eq!(
        m1.record.text,
        "我的手机号是[PHONE]，麒麟瓜子礼盒什么时候发货"
    );
    let m4 = rows
        .iter()
        .find(|r| r.record.message_id == stored("secret-m4"))
        .expect("row m4");
    assert!(m4.record.text.contains("[EMAIL]"), "{}", m4.record.text);
    assert!(rows.iter().any(|r| !r.record.reply_text.is_empty()));
    // Users are keyed pseudonyms, one per user.
    let users: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r.record.message_id != stored("msg-secret-123"))
        .map(|r| r.record.user_id.as_str())
        .collect();
    assert_eq!(users.len(), 4, "{users:?}");
    assert!(db.has_message(BOT, "msg-secret-123").unwrap());
    assert!(
        users.iter().all(|u| u.starts_with("u~") && u.len() == 34),
        "{users:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// export, keygen, rotation

fn export(config: &Path, from: i64, to: i64, out: &Path, env: &[(&str, &str)]) -> Output {
    intentd(
        &[
            "export",
            "--config",
            config.to_str().unwrap(),
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
            "--out",
            out.to_str().unwrap(),
            "--actor",
            "ops-test",
        ],
        env,
    )
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn export_decrypts_a_range_audits_it_and_survives_key_rotation() {
    let data = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let key_path = data.path().join("intentd.key");
    let mut s1 = start(data.path(), Some(T0), "").await;
    let mut c = s1.client().await;
    for (i, text) in ["我的手机13812345678，什么时候发货", "这个多少钱", "你好"]
        .iter()
        .enumerate()
    {
        assert!(
            c.classify(classify_req(&format!("old-{i}"), text, "u1"))
                .await
                .unwrap()
                .into_inner()
                .recorded
        );
    }
    stop(&mut s1).await;
    // The server created a bare key (id = its fingerprint) on first start.
    let old_key = std::fs::read_to_string(&key_path)
        .unwrap()
        .trim()
        .to_string();
    let old_id = Keyring::parse(&old_key, "old")
        .unwrap()
        .current_id()
        .to_string();
    assert!(old_id.starts_with("fp-"));

    // `intentd keygen` prints a usable key; rotate: new key first, the old one second.
    let out = intentd(&["keygen", "--id", "k2"], &[]);
    assert!(out.status.success());
    let new_key = text_of(&out.stdout).trim().to_string();
    assert!(new_key.starts_with("k2:"), "{new_key}");
    assert_eq!(
        Keyring::parse(&new_key, "keygen").unwrap().current_id(),
        "k2"
    );
    write_key_file(&key_path, &format!("{new_key}\n{old_key}\n"));

    let t1 = T0 + 60_000;
    let mut s2 = start(data.path(), Some(t1), "").await;
    let mut c = s2.client().await;
    for i in 0..2 {
        assert!(
            c.classify(classify_req(&format!("new-{i}"), "什么时候发货", "u2"))
                .await
                .unwrap()
                .into_inner()
                .recorded
        );
    }
    stop(&mut s2).await;
    let config = s2.config_path.clone();

    // Everything, old and new rows, through the rotated key file.
    let all = out_dir.path().join("all.jsonl");
    let o = export(&config, T0, t1, &all, &[]);
    assert!(o.status.success(), "{}", text_of(&o.stderr));
    assert!(
        text_of(&o.stderr).contains("exported 5 conversations"),
        "{}",
        text_of(&o.stderr)
    );
    let rows = jsonl(&all);
    assert_eq!(rows.len(), 5);
    let ids: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["message_id"].as_str().unwrap(),
                r["key_id"].as_str().unwrap(),
            )
        })
        .collect();
    // Message ids are exported as stored: their pseudonyms.
    let stored: Vec<String> = {
        let db = open_db(data.path());
        ["old-0", "old-1", "old-2", "new-0", "new-1"]
            .map(|m| db.stored_message_id(BOT, m))
            .into()
    };
    assert_eq!(
        ids,
        vec![
            (stored[0].as_str(), old_id.as_str()),
            (stored[1].as_str(), old_id.as_str()),
            (stored[2].as_str(), old_id.as_str()),
            (stored[3].as_str(), "k2"),
            (stored[4].as_str(), "k2")
        ]
    );
    assert_eq!(rows[0]["text"], "我的手机[PHONE]，什么时候发货");
    assert_eq!(rows[3]["bot_id"], BOT);
    assert!(rows
        .iter()
        .all(|r| r["at_ms"].as_i64().unwrap() >= T0 && r["intent"].is_string()));

    // A narrower range; the same keys from the environment variable instead of the file.
    let first = out_dir.path().join("first.jsonl");
    std::fs::rename(&key_path, data.path().join("moved.key")).unwrap();
    let spec = format!("{new_key},{old_key}");
    let o = export(&config, T0, T0, &first, &[("INTENTD_LOG_KEY", &spec)]);
    assert!(o.status.success(), "{}", text_of(&o.stderr));
    assert_eq!(jsonl(&first).len(), 3);

    // No key anywhere: a clear refusal, and no new key minted behind the operator's back.
    let o = export(&config, T0, t1, &out_dir.path().join("none.jsonl"), &[]);
    assert!(!o.status.success());
    let err = text_of(&o.stderr);
    assert!(
        err.contains("intentd.key") && err.contains("intentd keygen"),
        "{err}"
    );
    assert!(!key_path.exists(), "export must not create a key file");

    // Only the new key: the old rows cannot be read, and the error names the missing key.
    // Since issue #12.3 the store refuses to open at all (key check), so the refusal is at
    // the start and writes no audit row.
    write_key_file(&key_path, &format!("{new_key}\n"));
    let o = export(&config, T0, t1, &out_dir.path().join("half.jsonl"), &[]);
    assert!(!o.status.success());
    let err = text_of(&o.stderr);
    assert!(
        err.contains(&format!("'{old_id}'")) && err.contains("not in the key ring"),
        "{err}"
    );

    // Each export that opened the log left an audit row naming the operator and the range.
    write_key_file(&key_path, &format!("{new_key}\n{old_key}\n"));
    let audit = audit_of(data.path());
    let exports: Vec<_> = audit
        .iter()
        .filter(|r| r.action == AuditAction::Export)
        .collect();
    assert_eq!(exports.len(), 2, "{exports:?}");
    assert!(exports.iter().all(|r| r.actor == "ops-test"));
    assert!(
        exports[0]
            .detail
            .contains(&format!("from_ms={T0} to_ms={t1} rows=5")),
        "{}",
        exports[0].detail
    );
    assert!(
        exports[1].detail.contains("rows=3"),
        "{}",
        exports[1].detail
    );
}

// ---------------------------------------------------------------------------------------------
// Retention

#[tokio::test]
async fn audit_retention_below_the_floor_is_refused_at_start_up() {
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), None, "").await;
    let text = std::fs::read_to_string(&s.config_path).unwrap().replace(
        "store:\n  enabled: true\n",
        "store:\n  enabled: true\n  audit_retention_days: 90\n",
    );
    assert!(text.contains("audit_retention_days: 90"));
    let bad = data.path().join("bad.yml");
    std::fs::write(&bad, text).unwrap();
    let mut child = Command::new(common::intentd_bin())
        .args([
            "serve",
            "--config",
            bad.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .current_dir(common::repo_root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("a config with audit_retention_days: 90 was accepted");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("audit_retention_days = 90") && err.contains("180"),
        "{err}"
    );
}

#[tokio::test]
async fn retention_purges_old_conversations_and_keeps_the_audit_floor() {
    let data = tempfile::tempdir().unwrap();
    let mut s = start(data.path(), Some(T0), "conversation_retention_days: 30").await;
    let mut c = s.client().await;
    let mut admin = s.admin().await;
    let set_clock = |t: i64| pb::SetClockRequest { now_ms: t };
    // Day 0: two messages (one handoff: audited at T0), feedback and a human reply.
    assert!(
        c.classify(classify_req("d0-a", "这个多少钱", "u1"))
            .await
            .unwrap()
            .into_inner()
            .recorded
    );
    let r = c
        .classify(classify_req("d0-b", "转人工", "u2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.action, pb::Action::Handoff as i32);
    feedback(&mut c, "d0-a", pb::FeedbackKind::Clicked).await;
    c.report_human_reply(pb::HumanReplyRequest {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        message_id: "d0-b".into(),
        at_ms: 0,
        handoff_id: 0,
    })
    .await
    .unwrap();
    let counts = || open_db(data.path()).row_counts().unwrap();
    let audit_at_t0 = || {
        audit_of(data.path())
            .iter()
            .filter(|r| r.at_ms == T0)
            .count()
    };
    // The start-up purge (audited at T0 too) runs beside the first requests: let it finish.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !audit_of(data.path())
        .iter()
        .any(|r| r.action == AuditAction::Purge && r.at_ms == T0)
    {
        assert!(Instant::now() < deadline, "no start-up purge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_t0 = audit_at_t0();
    assert!(at_t0 >= 2, "start-up + handoff at T0");

    // Day 20: nothing is old enough yet.
    admin.set_clock(set_clock(T0 + 20 * DAY_MS)).await.unwrap();
    assert!(
        c.classify(classify_req("d20", "什么时候发货", "u3"))
            .await
            .unwrap()
            .into_inner()
            .recorded
    );
    let rc = counts();
    assert_eq!((rc.conversations, rc.feedback, rc.human_replies), (3, 1, 1));

    // Day 31: day-0 rows are past the 30-day retention; day 20 stays.
    admin.set_clock(set_clock(T0 + 31 * DAY_MS)).await.unwrap();
    let rc = counts();
    assert_eq!((rc.conversations, rc.feedback, rc.human_replies), (1, 0, 0));
    let t = c
        .get_stats(stats_req(0, ""))
        .await
        .unwrap()
        .into_inner()
        .total
        .unwrap();
    assert_eq!((t.messages, t.clicks, t.human_replies), (1, 0, 0));
    let audit = audit_of(data.path());
    let purge = audit
        .iter()
        .find(|r| r.action == AuditAction::Purge && r.detail.contains("conversations=2"))
        .expect("the purge is audited");
    assert_eq!(purge.at_ms, T0 + 31 * DAY_MS);
    assert!(
        purge.detail.contains("feedback=1") && purge.detail.contains("human_replies=1"),
        "{}",
        purge.detail
    );
    assert!(audit
        .iter()
        .any(|r| r.action == AuditAction::AdminCall && r.detail.contains("SetClock")));
    // Audit rows are not conversation data: all of day 0's are still there.
    assert_eq!(audit_at_t0(), at_t0);

    // Day 179.9: still inside the 180-day floor.
    admin
        .set_clock(set_clock(T0 + 180 * DAY_MS - 60_000))
        .await
        .unwrap();
    assert_eq!(audit_at_t0(), at_t0);
    // Day 180 + 1 min: day 0's audit rows go; day 20's stay; the purge says how many.
    admin
        .set_clock(set_clock(T0 + 180 * DAY_MS + 60_000))
        .await
        .unwrap();
    assert_eq!(audit_at_t0(), 0);
    let audit = audit_of(data.path());
    assert!(
        audit.iter().any(|r| r.at_ms == T0 + 20 * DAY_MS),
        "younger audit rows are kept"
    );
    assert!(audit.iter().any(|r| r.action == AuditAction::Purge && r.detail.contains(&format!("audit={at_t0}"))), "{audit:?}");
    assert_eq!(counts().conversations, 0, "day 20 is 160 days old now");
    stop(&mut s).await;

    // Retention also runs at start-up: rows written at T0 + 200 days are purged by a server
    // starting 31 days later.
    let t200 = T0 + 200 * DAY_MS;
    let mut s = start(data.path(), Some(t200), "conversation_retention_days: 30").await;
    assert!(
        s.client()
            .await
            .classify(classify_req("d200", "你好", "u4"))
            .await
            .unwrap()
            .into_inner()
            .recorded
    );
    stop(&mut s).await;
    assert_eq!(counts().conversations, 1);
    let _s = start(
        data.path(),
        Some(t200 + 31 * DAY_MS),
        "conversation_retention_days: 30",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while counts().conversations != 0 {
        assert!(Instant::now() < deadline, "start-up purge did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A/B report

fn exposure(experiment: &str, variant: &str, n: usize, at_ms: i64) -> Record {
    Record::Conversation(ConversationRecord {
        bot_id: BOT.into(),
        chat_id: "ab".into(),
        user_id: format!("{variant}-user{n}"),
        message_id: format!("{variant}-{n}"),
        at_ms,
        sent_at_ms: 0,
        text: "优惠券怎么领".into(),
        intent: "coupon".into(),
        confidence: 0.9,
        source: Source::Model,
        action: Action::Reply,
        triggered: true,
        reply_text: "reply".into(),
        variant_id: variant.into(),
        experiment: experiment.into(),
        timings: Timings::default(),
        model_version: "seeded".into(),
        reason: "faq".into(),
        answer: None,
    })
}

/// `exposures` rows for the variant, the first `clicks` of them clicked.
fn seed_variant(
    out: &mut Vec<Record>,
    experiment: &str,
    variant: &str,
    exposures: usize,
    clicks: usize,
    at_ms: i64,
) {
    for n in 0..exposures {
        out.push(exposure(experiment, variant, n, at_ms));
        if n < clicks {
            out.push(Record::Feedback(FeedbackRecord {
                bot_id: BOT.into(),
                message_id: format!("{variant}-{n}"),
                kind: FeedbackKind::Clicked,
                variant_id: variant.into(),
                at_ms: at_ms + 1,
            }));
        }
    }
}

#[tokio::test]
async fn the_ab_report_matches_a_hand_computed_example() {
    // Seed the log through the store API before the server starts (same file, same key).
    let data = tempfile::tempdir().unwrap();
    write_key_file(
        &data.path().join("intentd.key"),
        &format!("{}\n", intentd::store::crypto::generate_key()),
    );
    let mut recs = Vec::new();
    seed_variant(
        &mut recs,
        "welcome_copy",
        "welcome_copy/a",
        200,
        40,
        T0 - 3_600_000,
    );
    seed_variant(
        &mut recs,
        "welcome_copy",
        "welcome_copy/b",
        200,
        20,
        T0 - 3_600_000,
    );
    seed_variant(
        &mut recs,
        "tiny_copy",
        "tiny_copy/a",
        100,
        20,
        T0 - 3_600_000,
    );
    seed_variant(
        &mut recs,
        "tiny_copy",
        "tiny_copy/b",
        100,
        10,
        T0 - 3_600_000,
    );
    open_db(data.path()).write_batch(&recs).unwrap();

    let s = start(data.path(), Some(T0), "ab_min_sample: 150").await;
    let mut c = s.client().await;

    // welcome_copy, by hand. Table (converted, not converted):
    //   a: 40, 160   (rate 0.20)        b: 20, 180   (rate 0.10)
    //   column totals 60 / 340 of 400, so every row expects 200·60/400 = 30 and 200·340/400 = 170.
    //   χ² = (40−30)²/30 + (160−170)²/170 + (20−30)²/30 + (180−170)²/170
    //      = 2·(100/30) + 2·(100/170) = 6.666667 + 1.176471 = 7.843137, 1 degree of freedom.
    //   p = P(χ²₁ > 7.843137) = erfc(√(7.843137 / 2)) = 0.0051014 < α = 0.05: significant,
    //   both variants have ≥ 150 exposures, so a (0.20 > 0.10) wins.
    let r = c
        .get_stats(stats_req(0, "welcome_copy"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.experiments.len(), 1, "{:?}", r.experiments);
    let e = &r.experiments[0];
    assert_eq!(e.experiment, "welcome_copy");
    let v: Vec<_> = e
        .variants
        .iter()
        .map(|v| (v.variant_id.as_str(), v.exposures, v.conversions))
        .collect();
    assert_eq!(
        v,
        vec![("welcome_copy/a", 200, 40), ("welcome_copy/b", 200, 20)]
    );
    assert!(close(e.variants[0].rate, 0.20) && close(e.variants[1].rate, 0.10));
    assert!(
        (e.chi_square - 7.843_137_254_901_961).abs() < 1e-9,
        "{}",
        e.chi_square
    );
    assert!(
        (e.p_value - 0.005_101_399_646).abs() < 1e-9,
        "{}",
        e.p_value
    );
    assert!(e.significant);
    assert_eq!(e.winner, "welcome_copy/a");
    assert_eq!(e.warning, "");
    assert_eq!(e.min_sample, 150);
    // Per-variant rates agree: conversion = clicked exposures / exposures.
    let by_variant: HashMap<_, _> = r
        .by_variant
        .iter()
        .map(|g| (g.key.as_str(), g.rates.unwrap()))
        .collect();
    assert!(close(by_variant["welcome_copy/a"].conversion_rate, 0.20));
    assert_eq!(by_variant["welcome_copy/b"].auto_replies, 200);

    // tiny_copy: a 20/80, b 10/90 → expected 15 / 85 per row;
    //   χ² = 2·(25/15) + 2·(25/85) = 3.333333 + 0.588235 = 3.921569,
    //   p = erfc(√(3.921569 / 2)) = 0.0476704 < 0.05: significant, but 100 < 150 exposures per
    //   variant, so no winner and a warning naming the minimum.
    let r = c
        .get_stats(stats_req(0, "tiny_copy"))
        .await
        .unwrap()
        .into_inner();
    let e = &r.experiments[0];
    assert!(
        (e.chi_square - 3.921_568_627_450_981).abs() < 1e-9,
        "{}",
        e.chi_square
    );
    assert!(
        (e.p_value - 0.047_670_380_656).abs() < 1e-9,
        "{}",
        e.p_value
    );
    assert!(e.significant);
    assert_eq!(e.winner, "");
    assert!(
        e.warning.contains("150") && e.warning.contains("tiny_copy/a has 100 exposures"),
        "{}",
        e.warning
    );

    // A live exposure: the shipped coupon experiment answers a coupon question with one of its
    // variants; a CLICKED feedback converts it.
    let live = c
        .classify(req_in("ab-live", "live-1", "优惠券怎么领？", "live-user"))
        .await
        .unwrap()
        .into_inner();
    let reply = live.reply.clone().expect("a coupon reply");
    assert_eq!(reply.experiment, "coupon_copy_2027q1", "{live:?}");
    c.feedback(pb::FeedbackRequest {
        variant_id: reply.variant_id.clone(),
        ..feedback_req(&live.message_id, pb::FeedbackKind::Clicked)
    })
    .await
    .unwrap();
    let r = c
        .get_stats(stats_req(0, "coupon_copy_2027q1"))
        .await
        .unwrap()
        .into_inner();
    let e = &r.experiments[0];
    let v: Vec<_> = e
        .variants
        .iter()
        .map(|v| (v.variant_id.as_str(), v.exposures, v.conversions))
        .collect();
    assert_eq!(v, vec![(reply.variant_id.as_str(), 1, 1)]);
    assert!(e.warning.contains("at least two variants"), "{}", e.warning);
    // All experiments at once when none is named.
    let names: Vec<_> = c
        .get_stats(stats_req(0, ""))
        .await
        .unwrap()
        .into_inner()
        .experiments
        .into_iter()
        .map(|e| e.experiment)
        .collect();
    assert_eq!(
        names,
        vec!["coupon_copy_2027q1", "tiny_copy", "welcome_copy"]
    );
}

// ---------------------------------------------------------------------------------------------
// /metrics

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `k="v",k="v"` with `\\`, `\"` and `\n` escapes; None when malformed.
fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        if !is_metric_name(key) || key.contains(':') || out.contains_key(key) {
            return None;
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    _ => return None,
                },
                (i, '"') => break i,
                (_, '\n') => return None,
                (_, c) => value.push(c),
            }
        };
        out.insert(key.to_string(), value);
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict OpenMetrics text check: every line is a descriptor, a sample of the current family
/// with a suffix its type allows, or the final `# EOF`; no blank lines, no duplicate series,
/// histograms cumulative with `+Inf` = `_count`. Panics naming the offending line.
fn parse_openmetrics(text: &str) -> Vec<Sample> {
    assert!(text.ends_with("# EOF\n"), "must end with '# EOF\\n'");
    let mut samples = Vec::new();
    let mut types: HashMap<String, String> = HashMap::new();
    // Descriptors (HELP / TYPE / UNIT, any order) open a family; its samples follow them.
    let mut family: Option<String> = None;
    let mut families_seen = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            assert_eq!(i, lines.len() - 1, "# EOF must be the last line");
            continue;
        }
        assert!(!line.is_empty(), "blank line {i}");
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, arg) = (
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
                parts.next(),
            );
            assert!(is_metric_name(name), "bad name: {line}");
            if family.as_deref() != Some(name) {
                assert!(
                    families_seen.insert(name.to_string()),
                    "family {name} appears twice: {line}"
                );
                family = Some(name.to_string());
            }
            match kind {
                "TYPE" => {
                    let t = arg.unwrap_or("");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "summary",
                            "unknown",
                            "stateset",
                            "gaugehistogram"
                        ]
                        .contains(&t),
                        "bad type: {line}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "TYPE given twice: {line}"
                    );
                }
                "HELP" => assert!(arg.is_some_and(|a| !a.is_empty()), "empty HELP: {line}"),
                "UNIT" => {
                    let unit = arg.unwrap_or("");
                    assert!(
                        !unit.is_empty() && name.ends_with(&format!("_{unit}")),
                        "unit must suffix the name: {line}"
                    );
                }
                _ => panic!("unknown descriptor: {line}"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "bad comment: {line}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                parse_labels(
                    l.strip_suffix('}')
                        .unwrap_or_else(|| panic!("no closing brace: {line}")),
                )
                .unwrap_or_else(|| panic!("bad labels: {line}")),
            ),
            None => (series, BTreeMap::new()),
        };
        assert!(is_metric_name(name), "bad sample name: {line}");
        let fam = family
            .as_ref()
            .unwrap_or_else(|| panic!("sample before any descriptor: {line}"));
        let ty = types.get(fam).map(String::as_str).unwrap_or("unknown");
        let suffix = name
            .strip_prefix(fam.as_str())
            .unwrap_or_else(|| panic!("{name} outside family {fam}"));
        let allowed: &[&str] = match ty {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(
            allowed.contains(&suffix),
            "suffix '{suffix}' not allowed for a {ty}: {line}"
        );
        if suffix == "_bucket" {
            assert!(labels.contains_key("le"), "bucket without le: {line}");
        }
        if ty == "counter" || suffix == "_count" || suffix == "_bucket" {
            assert!(
                value >= 0.0 && value.fract() == 0.0,
                "count must be a non-negative integer: {line}"
            );
        }
        assert!(seen.insert(series.to_string()), "duplicate series: {line}");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histograms: per series (labels without le), buckets cumulative, +Inf bucket = _count.
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    let key = |s: &Sample, base: &str| {
        let mut l = s.labels.clone();
        l.remove("le");
        format!("{base}{l:?}")
    };
    for s in &samples {
        if let Some(base) = s.name.strip_suffix("_bucket") {
            let le = match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad le {v}")),
            };
            buckets.entry(key(s, base)).or_default().push((le, s.value));
        } else if let Some(base) = s.name.strip_suffix("_count") {
            if types.get(base).is_some_and(|t| t == "histogram") {
                counts.insert(key(s, base), s.value);
            }
        }
    }
    for (k, b) in &buckets {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "buckets of {k} not cumulative: {b:?}"
        );
        let last = b.last().unwrap();
        assert!(last.0.is_infinite(), "{k} has no +Inf bucket");
        assert_eq!(Some(&last.1), counts.get(k), "{k}: +Inf bucket != _count");
    }
    samples
}

fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
async fn a_metrics_scrape_parses_strictly_and_shows_the_traffic() {
    let data = tempfile::tempdir().unwrap();
    let s = TestServer::start(ServerOptions {
        model: Some(common::default_model_dir()),
        extra_config: store_section(data.path(), ""),
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let version = s
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .model_version;
    assert!(!version.is_empty());
    let mut c = s.client().await;
    let texts = [
        "我买的衣服不合适，想退货退款",
        "转人工",
        "嗯嗯那个就是那个吧",
        "这个多少钱",
        "你们几点上班",
        "加我微信聊",
    ];
    let mut by_pair: HashMap<(i32, i32), u64> = HashMap::new();
    for (i, t) in texts.iter().enumerate() {
        let r = c
            .classify(req_in(
                &format!("mg{i}"),
                &format!("mm{i}"),
                t,
                &format!("mu{i}"),
            ))
            .await
            .unwrap()
            .into_inner();
        *by_pair.entry((r.source, r.action)).or_default() += 1;
    }
    feedback(&mut c, "mm0", pb::FeedbackKind::Resolved).await;
    assert!(
        by_pair.len() >= 3,
        "several source/action pairs: {by_pair:?}"
    );

    let (content_type, body) = common::server::scrape_metrics(&s.metrics_addr).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let m = parse_openmetrics(&body);
    let classify = [("rpc", "Classify")];
    assert_eq!(
        sum(&m, "intentd_requests_total", &classify),
        texts.len() as f64,
        "{body}"
    );
    // Each (source, action) pair the clients saw is a series with that count.
    let source_name = |v: i32| format!("{:?}", pb::Source::try_from(v).unwrap()).to_lowercase();
    let action_name = |v: i32| format!("{:?}", pb::Action::try_from(v).unwrap()).to_lowercase();
    for ((src, act), n) in &by_pair {
        let (src, act) = (source_name(*src), action_name(*act));
        let got = sum(
            &m,
            "intentd_requests_total",
            &[("rpc", "Classify"), ("source", &src), ("action", &act)],
        );
        assert_eq!(
            got, *n as f64,
            "requests_total{{source={src},action={act}}} in\n{body}"
        );
    }
    assert!(
        sum(&m, "intentd_requests_total", &[("source", "model")]) >= 1.0,
        "the model answered something"
    );
    // Feedback is counted under its own RPC, with no source or action.
    assert_eq!(
        sum(
            &m,
            "intentd_requests_total",
            &[("rpc", "Feedback"), ("source", ""), ("action", "")]
        ),
        1.0,
        "{body}"
    );
    // Latency histogram: one observation per request, buckets checked by the parser.
    assert_eq!(
        sum(&m, "intentd_request_duration_seconds_count", &classify),
        texts.len() as f64
    );
    assert!(sum(&m, "intentd_request_duration_seconds_sum", &classify) > 0.0);
    assert!(m
        .iter()
        .any(|x| x.name == "intentd_request_duration_seconds_bucket" && x.labels["le"] == "+Inf"));
    // Where model answers' time went: one queue / forward-pass / batch-size observation per
    // text the model answered (those the playbook blocked first never reached it).
    let model_answers = sum(&m, "intentd_requests_total", &[("source", "model")]);
    for h in [
        "intentd_inference_queue_seconds_count",
        "intentd_forward_pass_seconds_count",
        "intentd_batch_texts_count",
    ] {
        let n = sum(&m, h, &[]);
        assert!(
            n >= model_answers && n <= texts.len() as f64,
            "{h} = {n}: one per text through the model (>= {model_answers})\n{body}"
        );
    }
    assert!(sum(&m, "intentd_forward_pass_seconds_sum", &[]) > 0.0);
    assert!(sum(&m, "intentd_batch_texts_sum", &[]) >= sum(&m, "intentd_batch_texts_count", &[]));
    // Model info carries the served version.
    let info: Vec<_> = m
        .iter()
        .filter(|x| x.name == "intentd_model_info")
        .collect();
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].labels["version"], version);
    assert_eq!(info[0].value, 1.0);
    // The model that was loaded at start-up is in the audit trail too.
    assert!(
        audit_of(data.path())
            .iter()
            .any(|r| r.action == AuditAction::ModelChange && r.detail.contains(&version)),
        "no model_change audit row for {version}"
    );
    // Gauges: nothing in flight once the answers are back; the write queue drains.
    assert_eq!(sum(&m, "intentd_in_flight", &[]), 0.0);
    assert!(m.iter().any(|x| x.name == "intentd_write_queue_depth"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = parse_openmetrics(&common::server::scrape_metrics(&s.metrics_addr).await.1);
        if sum(&m, "intentd_write_queue_depth", &[]) == 0.0 {
            // Every answered text's row went through a timed commit, and each commit held at
            // least one record.
            let commits = sum(&m, "intentd_store_commit_seconds_count", &[]);
            assert!(commits >= 1.0, "no store commit observed");
            assert!(sum(&m, "intentd_store_commit_seconds_sum", &[]) > 0.0);
            assert_eq!(sum(&m, "intentd_store_commit_records_count", &[]), commits);
            assert!(
                sum(&m, "intentd_store_commit_records_sum", &[]) >= texts.len() as f64,
                "fewer records committed than texts answered"
            );
            assert_eq!(sum(&m, "intentd_write_queue_full_total", &[]), 0.0);
            assert_eq!(sum(&m, "intentd_store_errors_total", &[]), 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "write queue depth never went back to 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Bad feedback, queue overflow

#[tokio::test]
async fn bad_feedback_is_invalid_argument_naming_the_field() {
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), None, "").await;
    let mut c = s.client().await;
    c.classify(classify_req("m1", "这个多少钱", "u1"))
        .await
        .unwrap();
    let ok = feedback_req("m1", pb::FeedbackKind::Resolved);
    let cases: Vec<(pb::FeedbackRequest, &str)> = vec![
        (
            pb::FeedbackRequest {
                kind: 0,
                ..ok.clone()
            },
            "kind",
        ),
        (
            pb::FeedbackRequest {
                kind: 99,
                ..ok.clone()
            },
            "kind",
        ),
        (
            pb::FeedbackRequest {
                message_id: String::new(),
                ..ok.clone()
            },
            "message_id",
        ),
        (
            pb::FeedbackRequest {
                message_id: "  ".into(),
                ..ok.clone()
            },
            "message_id",
        ),
        (
            pb::FeedbackRequest {
                message_id: "x".repeat(500),
                ..ok.clone()
            },
            "message_id",
        ),
        (
            pb::FeedbackRequest {
                variant_id: "v".repeat(500),
                ..ok.clone()
            },
            "variant_id",
        ),
        (
            pb::FeedbackRequest {
                at_ms: -5,
                ..ok.clone()
            },
            "at_ms",
        ),
    ];
    for (req, field) in cases {
        let e = c.feedback(req.clone()).await.expect_err("must be refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    // Issue #12.5 (failed on main: recorded=true): feedback must name a logged decision.
    let e = c
        .feedback(feedback_req("never-classified", pb::FeedbackKind::Resolved))
        .await
        .expect_err("unknown message");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(
        e.message()
            .starts_with("message_id: no decision for message 'never-classified'"),
        "{e}"
    );
    assert!(c.feedback(ok).await.unwrap().into_inner().recorded);
    assert_eq!(
        open_db(data.path()).row_counts().unwrap().feedback,
        1,
        "refused feedback is not stored"
    );
    let e = c
        .get_stats(pb::StatsRequest {
            from_ms: 10,
            to_ms: 5,
            ..stats_req(0, "")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("from_ms (10) is after to_ms (5)"),
        "{e}"
    );
}

#[tokio::test]
async fn a_full_store_queue_is_back_pressure_not_a_hang() {
    let data = tempfile::tempdir().unwrap();
    let s = start(data.path(), None, "queue_capacity: 1\nbatch_max: 1").await;
    let not_recorded = Arc::new(AtomicU64::new(0));
    let exhausted = Arc::new(AtomicU64::new(0));
    let acked_conv = Arc::new(AtomicU64::new(0));
    let acked_fb = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while not_recorded.load(Ordering::SeqCst) + exhausted.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the queue of 1 never overflowed");
        let mut tasks = Vec::new();
        for k in 0..48 {
            let mut c = s.client().await;
            let counters = (
                not_recorded.clone(),
                exhausted.clone(),
                acked_conv.clone(),
                acked_fb.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let (not_recorded, exhausted, acked_conv, acked_fb) = counters;
                for i in 0..20 {
                    let id = format!("q{round}-{k}-{i}");
                    let call = c.classify(classify_req(&id, "这个多少钱", &format!("u{k}")));
                    let r = tokio::time::timeout(Duration::from_secs(15), call)
                        .await
                        .expect("Classify hung")
                        .expect("Classify still answers");
                    if r.into_inner().recorded {
                        acked_conv.fetch_add(1, Ordering::SeqCst);
                    } else {
                        // Not in the log: feedback for it would be NOT_FOUND.
                        not_recorded.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let call = c.feedback(feedback_req(&id, pb::FeedbackKind::Clicked));
                    match tokio::time::timeout(Duration::from_secs(15), call)
                        .await
                        .expect("Feedback hung")
                    {
                        Ok(r) => {
                            assert!(r.into_inner().recorded);
                            acked_fb.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
                            assert!(e.message().contains("queue is full"), "{e}");
                            exhausted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        round += 1;
    }
    let overflows = not_recorded.load(Ordering::SeqCst) + exhausted.load(Ordering::SeqCst);
    // Every refusal the clients saw was counted (start-up audit rows may add to it).
    let m = parse_openmetrics(&common::server::scrape_metrics(&s.metrics_addr).await.1);
    let full = sum(&m, "intentd_write_queue_full_total", &[]);
    assert!(
        full >= overflows as f64,
        "metrics counted {full} overflows, clients saw {overflows}"
    );
    // What was acknowledged is stored.
    let rows = open_db(data.path()).row_counts().unwrap();
    assert!(rows.conversations >= acked_conv.load(Ordering::SeqCst));
    assert!(rows.feedback >= acked_fb.load(Ordering::SeqCst));
    assert!(
        s.stderr().contains("store write queue full"),
        "the overflow is logged"
    );
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[tokio::test]
async fn sigterm_with_an_open_stream_still_drains_the_store_within_the_grace_period() {
    let data = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(ServerOptions {
        extra_config: format!("shutdown_grace_ms: 500\n{}", store_section(data.path(), "")),
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let mut c = s.client().await;
    // A bot's Subscribe stream never ends by itself: graceful shutdown alone would wait forever.
    let stream = c
        .subscribe(pb::SubscribeRequest {
            bot_id: BOT.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        c.classify(classify_req("s1", "这个多少钱", "u1"))
            .await
            .unwrap()
            .into_inner()
            .recorded
    );
    let t = Instant::now();
    s.signal("TERM");
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "SIGTERM hung on an open stream: {}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", s.stderr());
    assert!(s.stderr().contains("grace period over"), "{}", s.stderr());
    drop(stream);
    // The store was still drained and closed properly: the shutdown is audited.
    assert_eq!(open_db(data.path()).row_counts().unwrap().conversations, 1);
    assert!(audit_of(data.path())
        .iter()
        .any(|r| r.action == AuditAction::Shutdown));
}

// Issue 12.3 (failed on main: with every commit failing the server stayed SERVING, answering
// recorded=false forever, with one log line per failure). The server's files may not grow past
// 1 MiB, like a disk that fills up while it runs: after a few failed commits in a row the gRPC
// health check and /readyz say NOT_SERVING with the reason, /metrics shows it, answers go on
// (recorded=false), and the log says why once.
#[tokio::test]
async fn a_store_failing_every_commit_turns_readiness_not_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let s = TestServer::start(ServerOptions {
        model: Some(common::default_model_dir()),
        manual_clock: Some(T0),
        file_size_limit: Some(1 << 20),
        ..Default::default()
    })
    .await;
    assert_eq!(s.health_status("").await, ServingStatus::Serving as i32);
    let mut c = s.client().await;
    let text = "我想退货退款请问怎么操作".repeat(150);
    let mut unrecorded = 0;
    let mut sent = 0;
    while s.health_status("").await == ServingStatus::Serving as i32 {
        assert!(
            sent < 3000,
            "3000 large records and the store still counts as healthy"
        );
        let r = c
            .classify(classify_req(&format!("fill{sent}"), &text, "u"))
            .await
            .expect("answers go on while the store fails")
            .into_inner();
        sent += 1;
        if !r.recorded {
            unrecorded += 1;
        }
    }
    assert!(
        unrecorded >= 3,
        "NOT_SERVING after {unrecorded} unrecorded answers"
    );
    // (No more writes from here: a small record may still fit, and one success rightly turns
    // the store healthy again.)
    assert_eq!(
        s.health_status("intentd.v1.IntentService").await,
        ServingStatus::NotServing as i32
    );
    let (_, metrics) = common::server::scrape_metrics(&s.metrics_addr).await;
    assert!(metrics.contains("intentd_store_healthy 0"), "{metrics}");
    let ready = reqwest::get(format!("http://{}/readyz", s.http_addr))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("the store fails every commit"),
        "{body}"
    );
    let log = std::fs::read_to_string(&s.stderr_log).unwrap();
    assert!(log.contains("every commit fails"), "{log}");
}
