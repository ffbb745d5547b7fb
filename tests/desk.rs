//! The operators' desk on the real server (issue 16): the review queue of blocked messages and
//! the handoff desk, over AdminService (gRPC) and `/v1/admin` (HTTP), for the admin token only.
//! An approved message is answered on the bot's Subscribe stream and its word is allowed in
//! that group; handoffs go open → claimed → closed; verdicts and claims survive a kill -9.
//!
//! Rules only (no model): the keyword layer decides the shipped FAQ phrases.

mod common;

use std::path::Path;
use std::time::Duration;

use common::bot::*;
use common::server::{ServerOptions, TokenInterceptor, ADMIN_TOKEN, BOT, BOT_TOKEN, T0};
use intentd::pb;
use pb::Action;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn start(data: &Path, now_ms: i64) -> Bot {
    Bot::start_opts(
        ServerOptions {
            data_dir: Some(data.to_path_buf()),
            manual_clock: Some(now_ms),
            ..Default::default()
        },
        None,
    )
    .await
}

async fn http(
    b: &Bot,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("http://{}{path}", b.s.http_addr);
    let mut r = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(body) = body {
        r = r.json(&body);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("{v}"))
}

#[tokio::test]
async fn review_queue_over_http_and_grpc_answers_approved_messages_and_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut b = start(data.path(), T0).await;
    let mut out = b.subscribe(&[]).await;
    let u1 = user("u1", "小王");
    let r = b.say("g1", &u1, "退款怎么弄，加微信说").await;
    assert_eq!(dec(&r), (Action::Block, "banned_word"));
    // <script> in a message is kept as text (escaping is the console's job) and PII redacted.
    let r = b
        .say(
            "g1",
            &user("u2", "<b>x</b>"),
            "<script>alert(1)</script>加微信13812345678",
        )
        .await;
    assert_eq!(act(r.action), Action::Block);

    // Admin only: no token 401, a bot token 403.
    let (st, v) = http(&b, "GET", "/v1/admin/reviews", None, None).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED")
    );
    let (st, v) = http(&b, "GET", "/v1/admin/reviews", Some(BOT_TOKEN), None).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "PERMISSION_DENIED"));
    let mut as_bot = pb::admin_service_client::AdminServiceClient::with_interceptor(
        b.s.channel().await,
        TokenInterceptor::bot(),
    );
    let e = as_bot
        .list_reviews(pb::ListReviewsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    let (st, v) = http(&b, "GET", "/v1/admin/reviews", Some(ADMIN_TOKEN), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{v}");
    assert_eq!(items[0]["matched"], "加微信");
    assert_eq!(items[0]["verdict"], "");
    assert!(items[1]["text"].as_str().unwrap().contains("<script>"));
    assert!(
        !items[1]["text"].as_str().unwrap().contains("13812345678"),
        "the phone number is redacted: {v}"
    );
    let (id1, id2) = (
        items[0]["id"].as_u64().unwrap(),
        items[1]["id"].as_u64().unwrap(),
    );

    // Bad input: the field and the limit are named.
    let path = format!("/v1/admin/reviews/{id1}/approve");
    let (st, v) = http(
        &b,
        "POST",
        &path,
        Some(ADMIN_TOKEN),
        Some(json!({"by": ""})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("by")),
        "{v}"
    );
    let long = "x".repeat(65);
    let (st, v) = http(
        &b,
        "POST",
        &path,
        Some(ADMIN_TOKEN),
        Some(json!({"by": long})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("64"),
        "{v}"
    );
    let (st, v) = http(
        &b,
        "POST",
        "/v1/admin/reviews/abc/approve",
        Some(ADMIN_TOKEN),
        Some(json!({"by": "amy"})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("id")),
        "{v}"
    );
    let (st, v) = http(
        &b,
        "POST",
        "/v1/admin/reviews/999/approve",
        Some(ADMIN_TOKEN),
        Some(json!({"by": "amy"})),
    )
    .await;
    assert_eq!((st, code(&v)), (StatusCode::NOT_FOUND, "NOT_FOUND"), "{v}");
    let (st, v) = http(
        &b,
        "POST",
        &path,
        Some(ADMIN_TOKEN),
        Some(json!({"by": "amy", "nope": 1})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    // Approve: the message is answered after all, on the stream, addressed to its user.
    let body = json!({"by": "amy", "allow_word": true});
    let (st, v) = http(&b, "POST", &path, Some(ADMIN_TOKEN), Some(body.clone())).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["item"]["verdict"], "approved");
    assert_eq!(v["item"]["decided_by"], "amy");
    // Answered as if compliance had let it through (here the rules ask which of two intents).
    let action = v["answer"]["action"].as_str().unwrap();
    assert!(["REPLY", "CLARIFY"].contains(&action), "{v}");
    let o = out.next().await;
    assert_eq!(o.rule_id, format!("review:{id1}"));
    assert_eq!(
        (o.chat_id.as_str(), o.user_ids.clone()),
        ("g1", vec!["u1".to_string()])
    );
    assert!(text(&o.reply).contains(v["answer"]["reply"]["text"].as_str().unwrap()));
    // A retried click answers again without a second send; the other verdict is refused.
    let (st, v) = http(&b, "POST", &path, Some(ADMIN_TOKEN), Some(body)).await;
    assert_eq!((st, v["answer"].is_null()), (StatusCode::OK, true), "{v}");
    out.quiet("after a retried approval").await;
    let confirm = format!("/v1/admin/reviews/{id1}/confirm");
    let (st, v) = http(
        &b,
        "POST",
        &confirm,
        Some(ADMIN_TOKEN),
        Some(json!({"by": "bob"})),
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, "FAILED_PRECONDITION"),
        "{v}"
    );

    // Confirm the other over gRPC.
    let r = b
        .admin
        .confirm_review(pb::ReviewDecisionRequest {
            id: id2,
            by: "bob".into(),
            allow_word: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.item.unwrap().verdict, "confirmed");
    assert!(r.answer.is_none());
    let pending = b
        .admin
        .list_reviews(pb::ListReviewsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(pending.items.is_empty(), "{pending:?}");

    // The word is allowed in g1 now (another user: u1's refund cooldown holds), not in g2.
    b.at(T0 + 600_000).await;
    let r = b
        .say("g1", &user("u3", "小李"), "退款怎么弄，加微信说")
        .await;
    assert_ne!(act(r.action), Action::Block, "{r:?}");
    let r = b
        .say("g2", &user("u3", "小李"), "退款怎么弄，加微信说")
        .await;
    assert_eq!(dec(&r), (Action::Block, "banned_word"));

    // kill -9 and restart: the verdicts and the allowed word are still there.
    let seq = b.seq;
    drop(out);
    b.s.child.kill().unwrap();
    b.s.child.wait().unwrap();
    let mut b = start(data.path(), T0 + 700_000).await;
    b.seq = seq;
    let all = b
        .admin
        .list_reviews(pb::ListReviewsRequest {
            include_decided: true,
        })
        .await
        .unwrap()
        .into_inner();
    let verdicts: Vec<_> = all
        .items
        .iter()
        .filter(|e| e.id == id1 || e.id == id2)
        .map(|e| {
            (
                e.id,
                e.verdict.as_str(),
                e.decided_by.as_str(),
                e.allowed_word,
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            (id1, "approved", "amy", true),
            (id2, "confirmed", "bob", false)
        ]
    );
    let r = b.say("g1", &user("u4", "小赵"), "加微信，多少钱").await;
    assert_ne!(dec(&r), (Action::Block, "banned_word"), "{r:?}");
}

#[tokio::test]
async fn handoffs_go_open_claimed_closed_over_grpc_and_http() {
    let data = tempfile::tempdir().unwrap();
    let mut b = start(data.path(), T0).await;
    let r = b.say("g1", &user("u1", "小王"), "我要投诉你们").await;
    assert_eq!(act(r.action), Action::Handoff, "{r:?}");
    let list = b
        .admin
        .list_handoffs(pb::ListHandoffsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(list.len(), 1, "{list:?}");
    let h = &list[0];
    assert_eq!(
        (
            h.chat_id.as_str(),
            h.user_id.as_str(),
            h.state.as_str(),
            h.chat_name.as_str()
        ),
        ("g1", "u1", "open", GROUP)
    );
    assert!(h.wait_minutes > 0 && h.expires_ms > T0);
    let id = h.id;

    let claim = |agent: &str| pb::HandoffActionRequest {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        id,
        agent: agent.into(),
    };
    let c = b
        .admin
        .claim_handoff(claim("amy"))
        .await
        .unwrap()
        .into_inner();
    let item = c.item.unwrap();
    assert_eq!(
        (item.state.as_str(), item.claimed_by.as_str()),
        ("claimed", "amy")
    );
    let e = b.admin.claim_handoff(claim("bob")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("amy"), "{e:?}");
    let e = b.admin.claim_handoff(claim("")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut wrong = claim("amy");
    wrong.id = 999;
    let e = b.admin.claim_handoff(wrong).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // The claim survives a kill -9, and a claimed handoff outlives the open TTL.
    let seq = b.seq;
    b.s.child.kill().unwrap();
    b.s.child.wait().unwrap();
    let mut b = start(data.path(), T0 + 3 * HOUR).await;
    b.seq = seq;
    let (st, v) = http(&b, "GET", "/v1/admin/handoffs", Some(ADMIN_TOKEN), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(
        (items[0]["state"].as_str(), items[0]["claimed_by"].as_str()),
        (Some("claimed"), Some("amy"))
    );

    let body = json!({"bot_id": BOT, "chat_id": "g1", "id": id, "agent": "amy"});
    let (st, v) = http(
        &b,
        "POST",
        "/v1/admin/handoffs/close",
        Some(BOT_TOKEN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = http(
        &b,
        "POST",
        "/v1/admin/handoffs/close",
        Some(ADMIN_TOKEN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["item"]["id"].as_u64(), Some(id));
    let (st, v) = http(
        &b,
        "POST",
        "/v1/admin/handoffs/close",
        Some(ADMIN_TOKEN),
        Some(body),
    )
    .await;
    assert_eq!((st, code(&v)), (StatusCode::NOT_FOUND, "NOT_FOUND"), "{v}");
    let (_, v) = http(&b, "GET", "/v1/admin/handoffs", Some(ADMIN_TOKEN), None).await;
    assert!(v["items"].as_array().unwrap().is_empty(), "{v}");

    // ReportHumanReply naming a handoff closes that one.
    b.say("g1", &user("u1", "小王"), "我要投诉你们").await;
    b.say("g1", &user("u2", "小李"), "我要投诉").await;
    let ids: Vec<u64> = b
        .admin
        .list_handoffs(pb::ListHandoffsRequest { bot_id: BOT.into() })
        .await
        .unwrap()
        .into_inner()
        .items
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    b.c.report_human_reply(pb::HumanReplyRequest {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        message_id: "agent-1".into(),
        at_ms: 0,
        handoff_id: ids[1],
    })
    .await
    .unwrap();
    let left: Vec<u64> = b
        .admin
        .list_handoffs(pb::ListHandoffsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(left, [ids[0]]);
}

#[tokio::test]
async fn the_labelling_inbox_over_http_exports_yaml_the_trainer_reads_and_keeps_labels() {
    let data = tempfile::tempdir().unwrap();
    let mut b = start(data.path(), T0).await;
    let r = b.say("g1", &user("u1", "小王"), "嗯嗯啊啊哦哦").await;
    assert_eq!(act(r.action), Action::Clarify, "{r:?}");

    let (st, v) = http(&b, "GET", "/v1/admin/inbox", Some(BOT_TOKEN), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = http(
        &b,
        "GET",
        "/v1/admin/inbox?below_confidence=2",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("below_confidence")),
        "{v}"
    );
    let (st, v) = http(&b, "GET", "/v1/admin/inbox", Some(ADMIN_TOKEN), None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let items: Vec<&Value> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["items"].as_array().unwrap())
        .collect();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["text"], "嗯嗯啊啊哦哦");
    assert_eq!(items[0]["action"], "CLARIFY");
    assert!(items[0]["why"]
        .as_array()
        .unwrap()
        .contains(&json!("clarify")));
    let id = items[0]["conversation_id"].as_i64().unwrap();

    let path = format!("/v1/admin/inbox/{id}/label");
    let (st, v) = http(
        &b,
        "POST",
        &path,
        Some(ADMIN_TOKEN),
        Some(json!({"intent": "nope", "by": "amy"})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("intent")),
        "{v}"
    );
    let (st, v) = http(
        &b,
        "POST",
        "/v1/admin/inbox/x/label",
        Some(ADMIN_TOKEN),
        Some(json!({"intent": "greeting", "by": "amy"})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("conversation_id")),
        "{v}"
    );
    let (st, v) = http(
        &b,
        "POST",
        &path,
        Some(ADMIN_TOKEN),
        Some(json!({"intent": "greeting", "by": "amy"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["intent"], "greeting");

    // kill -9 right after the answer: the label is kept; the export is YAML the trainer reads.
    b.s.child.kill().unwrap();
    b.s.child.wait().unwrap();
    let b = start(data.path(), T0 + 60_000).await;
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("http://{}/v1/admin/labels.yml", b.s.http_addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/yaml"));
    let yaml = resp.text().await.unwrap();
    let file = data.path().join("labels.yml");
    std::fs::write(&file, &yaml).unwrap();
    let set = intentd::data::load(&file).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let got: Vec<(&str, &str)> = set
        .examples
        .iter()
        .map(|e| (e.label.as_str(), e.text.as_str()))
        .collect();
    assert_eq!(got, [("greeting", "嗯嗯啊啊哦哦")]);
}
