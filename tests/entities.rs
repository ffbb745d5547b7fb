//! Entities end to end against the real `intentd serve` over its sockets: gRPC and HTTP/JSON
//! answers carry the entities with code-point offsets, the Rasa parse route reports them in
//! Rasa's shape, relative dates resolve on the server's (manual) clock in the bot's zone, and
//! a reply renders `{order_id}` from the message or its fallback when the message has none.

mod common;

use std::time::Duration;

use common::server::{classify_req, ServerOptions, TestServer, BOT, BOT_TOKEN, T0};
use intentd::pb;
use serde_json::{json, Value};

/// T0 is Wednesday 25 November 2026, 10:00 in Shanghai (the shipped bot time zone).
async fn server() -> TestServer {
    TestServer::start(ServerOptions {
        manual_clock: Some(T0),
        ..Default::default()
    })
    .await
}

fn brief(e: &[pb::Entity]) -> Vec<(String, String, String, u32, u32)> {
    e.iter()
        .map(|e| {
            (
                e.entity.clone(),
                e.value.clone(),
                e.canonical.clone(),
                e.start,
                e.end,
            )
        })
        .collect()
}

#[tokio::test]
async fn grpc_answers_carry_entities_and_render_order_id_or_its_fallback() {
    let s = server().await;
    let mut c = s.client().await;
    let text = "😀快递到哪了？订单号2026112512345，明天能到吗";
    let r = c
        .classify(classify_req("e1", text, "u1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.intent, "delivery_tracking", "{r:?}");
    assert_eq!(
        brief(&r.entities),
        vec![
            (
                "order_id".into(),
                "2026112512345".into(),
                "2026112512345".into(),
                10,
                23
            ),
            ("date".into(), "明天".into(), "2026-11-26".into(), 24, 26),
        ]
    );
    // Code points: the emoji before them counts as one.
    let chars: Vec<char> = text.chars().collect();
    for e in &r.entities {
        let span: String = chars[e.start as usize..e.end as usize].iter().collect();
        assert_eq!(span, e.value);
    }
    assert_eq!(r.entities[0].source, pb::EntitySource::Builtin as i32);
    let reply = r.reply.expect("a reply").text;
    assert!(reply.contains("订单号：2026112512345。"), "{reply}");

    // Another user asks without an order number (in another group: one group merges the same
    // answer within its spacing interval): the fallback from replies.yml.
    let mut req = classify_req("e2", "我的快递到哪了", "u2");
    req.chat_id = "g2".into();
    let r = c.classify(req).await.unwrap().into_inner();
    assert_eq!(r.intent, "delivery_tracking", "{r:?}");
    assert!(r.entities.is_empty(), "{:?}", r.entities);
    let reply = r
        .reply
        .clone()
        .unwrap_or_else(|| panic!("no reply: {r:?}"))
        .text;
    assert!(reply.contains("订单号：未提供，请回复订单号。"), "{reply}");

    // A lookup synonym and a phone number: canonical values; the phone shows redacted if a
    // reply repeated it, and the answer itself carries it.
    let r = c
        .classify(classify_req("e3", "保温壶坏了，电话13812345678", "u3"))
        .await
        .unwrap()
        .into_inner();
    let got = brief(&r.entities);
    assert_eq!(
        got,
        vec![
            ("product".into(), "保温壶".into(), "保温杯".into(), 0, 3),
            (
                "phone".into(),
                "13812345678".into(),
                "13812345678".into(),
                8,
                19
            ),
        ]
    );
    assert_eq!(r.entities[0].source, pb::EntitySource::Synonym as i32);
    // A retry gets the stored first answer: what the store keeps has the phone redacted.
    let again = c
        .classify(classify_req("e3", "保温壶坏了，电话13812345678", "u3"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(
        (
            again.entities[1].value.as_str(),
            again.entities[1].canonical.as_str()
        ),
        ("[PHONE]", "[PHONE]")
    );
    assert_eq!(again.entities[0], r.entities[0]);
    // The log holds no phone number in clear.
    let log = s.stderr();
    assert!(!log.contains("13812345678"), "phone number in the log");
}

async fn post(s: &TestServer, path: &str, body: Value) -> Value {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .post(format!("http://{}{path}", s.http_addr))
        .bearer_auth(BOT_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test]
async fn http_v1_and_rasa_parse_report_entities() {
    let s = server().await;
    let r = post(
        &s,
        "/v1/classify",
        json!({
            "bot_id": BOT, "chat_id": "g1", "chat_name": "测试群", "message_id": "h1",
            "text": "下周三晚上8点的活动，¥1,299.5 的保温杯还有吗",
            "user": {"id": "u9", "nickname": "小王"}
        }),
    )
    .await;
    let ents = r["entities"].as_array().unwrap();
    let got: Vec<(&str, &str, &str, u64, u64, &str)> = ents
        .iter()
        .map(|e| {
            (
                e["entity"].as_str().unwrap(),
                e["value"].as_str().unwrap(),
                e["canonical"].as_str().unwrap(),
                e["start"].as_u64().unwrap(),
                e["end"].as_u64().unwrap(),
                e["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "datetime",
                "下周三晚上8点",
                "2026-12-02T20:00:00+08:00",
                0,
                7,
                "ENTITY_SOURCE_BUILTIN"
            ),
            (
                "amount",
                "¥1,299.5",
                "1299.5",
                11,
                19,
                "ENTITY_SOURCE_BUILTIN"
            ),
            (
                "product",
                "保温杯",
                "保温杯",
                21,
                24,
                "ENTITY_SOURCE_LOOKUP"
            ),
        ],
        "{r}"
    );

    // Rasa's shape: built-ins with the normalised value and the text, a synonym with its
    // canonical term and the synonym mapper.
    let r = post(
        &s,
        "/model/parse",
        json!({"text": "明天 保温壶 SF1234567890123 到吗", "message_id": "p1"}),
    )
    .await;
    assert_eq!(
        r["entities"],
        json!([
            {"entity": "date", "start": 0, "end": 2, "value": "2026-11-26", "text": "明天",
             "extractor": "IntentdBuiltinExtractor", "confidence_entity": 1.0},
            {"entity": "product", "start": 3, "end": 6, "value": "保温杯",
             "extractor": "RegexEntityExtractor", "confidence_entity": 1.0,
             "processors": ["EntitySynonymMapper"]},
            {"entity": "tracking_no", "start": 7, "end": 22, "value": "SF1234567890123",
             "extractor": "RegexEntityExtractor", "confidence_entity": 1.0},
        ]),
        "{r}"
    );
}

/// entities.yml is operator data like the rest: a reload picks up a new regex entity, and a
/// broken pattern is refused with file:line while the loaded one keeps serving.
#[tokio::test]
async fn a_reload_reads_entities_yml_and_refuses_a_broken_pattern() {
    let operator = tempfile::tempdir().unwrap();
    let shipped = common::repo_root().join("config/operator");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, operator.path().join(p.file_name().unwrap())).unwrap();
    }
    let s = TestServer::start(ServerOptions {
        manual_clock: Some(T0),
        operator_dir: Some(operator.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let mut c = s.client().await;
    let mut admin = s.admin().await;
    let types = |r: &pb::ClassifyResponse| -> Vec<String> {
        r.entities.iter().map(|e| e.entity.clone()).collect()
    };
    let r = c
        .classify(classify_req("r1", "会员卡号VIP-778899能用吗", "u1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!types(&r).contains(&"member_card".to_string()), "{r:?}");

    let file = operator.path().join("entities.yml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!("{text}  - name: member_card\n    patterns: ['VIP-([0-9]{{6}})']\n"),
    )
    .unwrap();
    let ok = admin
        .reload(pb::ReloadRequest {
            model: false,
            operator: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.ok, "{ok:?}");
    let r = c
        .classify(classify_req("r2", "会员卡号VIP-778899能用吗", "u1"))
        .await
        .unwrap()
        .into_inner();
    let card = r.entities.iter().find(|e| e.entity == "member_card");
    assert_eq!(
        card.map(|e| (e.value.as_str(), e.start, e.end, e.source)),
        Some(("778899", 8, 14, pb::EntitySource::Regex as i32)),
        "{r:?}"
    );

    let lines = text.lines().count();
    std::fs::write(
        &file,
        format!("{text}  - name: member_card\n    patterns: ['VIP-([0-9]{{6}}']\n"),
    )
    .unwrap();
    let err = admin
        .reload(pb::ReloadRequest {
            model: false,
            operator: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let want = format!(
        "entities.yml:{}: in entity 'member_card': invalid regex",
        lines + 2
    );
    assert!(err.message().contains(&want), "{}", err.message());
    // Still serving the files loaded before.
    let r = c
        .classify(classify_req("r3", "会员卡号VIP-778899能用吗", "u2"))
        .await
        .unwrap()
        .into_inner();
    assert!(types(&r).contains(&"member_card".to_string()), "{r:?}");
}
