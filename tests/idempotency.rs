//! Issue 13's idempotent retries on the real server over gRPC and a real SQLite file: a retried
//! message or event gets its first answer (byte for byte, flagged `replayed`) and changes
//! nothing, sequentially, concurrently, and after kill -9 and a restart.

mod common;

use std::path::Path;

use common::server::{classify_req, ServerOptions, TestServer, BOT, T0};
use intentd::pb;
use intentd::pb::EventType;
use intentd::store::{Keyring, SqliteStore, Store};
use prost::Message;
use tonic::Code;

fn store_section(data: &Path) -> String {
    format!(
        "store:\n  enabled: true\n  path: {d}/intentd.db\n  key_env: INTENTD_LOG_KEY\n  key_file: {d}/intentd.key\n  create_key_file: true\n",
        d = data.display()
    )
}

async fn start(data: &Path) -> TestServer {
    TestServer::start(ServerOptions {
        manual_clock: Some(T0),
        extra_config: store_section(data),
        data_dir: Some(data.to_path_buf()),
        ..Default::default()
    })
    .await
}

fn conversations(data: &Path) -> u64 {
    let ring = Keyring::from_file(&data.join("intentd.key")).expect("key file");
    SqliteStore::open(&data.join("intentd.db"), std::sync::Arc::new(ring))
        .expect("open database")
        .row_counts()
        .unwrap()
        .conversations
}

/// The answer's bytes as first sent (`replayed` cleared).
fn first_bytes(r: &pb::ClassifyResponse) -> Vec<u8> {
    pb::ClassifyResponse {
        replayed: false,
        ..r.clone()
    }
    .encode_to_vec()
}

fn join(event_id: &str, user: &str) -> pb::Event {
    pb::Event {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        chat_name: "测试群".into(),
        r#type: EventType::MemberJoined as i32,
        user: Some(pb::User {
            id: user.into(),
            nickname: format!("昵称{user}"),
            ..Default::default()
        }),
        event_id: event_id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn retries_get_the_first_answer_and_one_record_even_after_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let mut s = start(data.path()).await;
    let mut c = s.client().await;

    // Three times in a row: one decision. The reply's cooldown would make a second decision
    // differ (no reply), so equal answers show nothing was decided again.
    let req = classify_req("m-seq", "这个多少钱", "u1");
    let first = c.classify(req.clone()).await.unwrap().into_inner();
    assert!(!first.replayed && first.recorded);
    let mut replays = Vec::new();
    for _ in 0..2 {
        let again = c.classify(req.clone()).await.unwrap().into_inner();
        assert!(again.replayed);
        assert_eq!(first_bytes(&again), first_bytes(&first));
        replays.push(again.encode_to_vec());
    }
    assert_eq!(replays[0], replays[1], "replays are byte-identical");

    // Eight at once: one of them decides, the others wait for its answer.
    let racing = classify_req("m-race", "优惠券怎么领", "u2");
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut c = c.clone();
            let r = racing.clone();
            tokio::spawn(async move { c.classify(r).await.unwrap().into_inner() })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1);
    for a in &answers {
        assert_eq!(first_bytes(a), first_bytes(&answers[0]));
    }

    // Other text under a used id is refused, naming the field.
    let e = c
        .classify(classify_req("m-seq", "什么时候发货", "u1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("message_id reused with other text"),
        "{e:?}"
    );

    // An event retried: one decision; without an event id the answer says it is not deduplicated.
    let ev = c
        .handle_event(join("e-1", "u9"))
        .await
        .unwrap()
        .into_inner();
    assert!(!ev.replayed && ev.idempotency_notice.is_empty());
    let ev2 = c
        .handle_event(join("e-1", "u9"))
        .await
        .unwrap()
        .into_inner();
    assert!(ev2.replayed);
    assert_eq!(ev2.reason, ev.reason);
    assert_eq!(ev2.merged_user_ids, ev.merged_user_ids);
    let anon = c.handle_event(join("", "u8")).await.unwrap().into_inner();
    assert!(
        anon.idempotency_notice.contains("not deduplicated"),
        "{anon:?}"
    );

    let rows = conversations(data.path());
    assert_eq!(rows, 4, "two messages and two events: one row each");

    // kill -9, restart on the same data: the answers come from the store.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s2 = start(data.path()).await;
    let mut c2 = s2.client().await;
    let after = c2.classify(req.clone()).await.unwrap().into_inner();
    assert!(after.replayed);
    assert_eq!(after.encode_to_vec(), replays[0]);
    let ev3 = c2
        .handle_event(join("e-1", "u9"))
        .await
        .unwrap()
        .into_inner();
    assert!(ev3.replayed);
    assert_eq!(ev3.encode_to_vec(), ev2.encode_to_vec());
    assert_eq!(conversations(data.path()), rows, "nothing new was logged");
}
