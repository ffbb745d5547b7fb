//! The gRPC service end to end: the real binary on an ephemeral port, the real default model,
//! driven by a tonic client.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::server::{classify_req, ServerOptions, TestServer, T0};
use intentd::pb;
use tonic::Code;

async fn model_server() -> TestServer {
    let model = common::default_model_dir();
    TestServer::start(ServerOptions {
        model: Some(model),
        // Inside the playbook's service hours whenever the tests run (off hours, every message
        // would be handed to a human).
        manual_clock: Some(T0),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn refund_question_gets_the_refund_intent_and_a_reply() {
    let s = model_server().await;
    let mut c = s.client().await;
    let r = c
        .classify(classify_req(
            "m1",
            "我买的衣服不合适，想退货退款，钱多久能退回来？",
            "u1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.intent, "refund", "{r:?}");
    assert_eq!(r.action, pb::Action::Reply as i32, "{r:?}");
    let reply = r.reply.expect("a reply");
    assert!(!reply.text.is_empty());
    assert!(
        reply.variant_id.starts_with("refund/") || !reply.experiment.is_empty(),
        "{reply:?}"
    );
    assert!(!r.model_version.is_empty());
    assert!(r.model_loaded);
    assert!(r.recorded, "the decision is durably logged");
    let t = r.timings.unwrap();
    assert!(t.total_us >= t.inference_us && t.inference_us > 0, "{t:?}");
    assert!(r.ranking.len() >= 2 && r.ranking[0].intent == "refund");
    assert_eq!(r.ranking[0].display_name, "退货退款");
}

#[tokio::test]
async fn a_priority_always_rule_overrides_the_model() {
    let s = model_server().await;
    let mut c = s.client().await;
    // "转人工" is an always-rule for ask_human in config/operator/rules.yml.
    let r = c
        .classify(classify_req("m2", "这个券怎么用啊 转人工", "u2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.intent, "ask_human", "{r:?}");
    assert!(
        r.source == pb::Source::Keyword as i32 || r.source == pb::Source::Regex as i32,
        "{r:?}"
    );
    assert!(!r.matched_terms.is_empty());
    assert_eq!(
        r.action,
        pb::Action::Handoff as i32,
        "ask_human hands off: {r:?}"
    );
}

#[tokio::test]
async fn nonsense_gets_a_clarifying_question_with_candidates() {
    let s = model_server().await;
    let mut c = s.client().await;
    let r = c
        .classify(classify_req("m3", "嗯嗯那个就是那个吧", "u3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.action, pb::Action::Clarify as i32, "{r:?}");
    assert_eq!(r.source, pb::Source::Fallback as i32);
    assert!(r.ranking.len() >= 2, "candidates offered: {r:?}");
    let text = r.reply.expect("clarifying question").text;
    // The question lists the candidates by display name.
    assert!(
        r.ranking
            .iter()
            .take(2)
            .all(|c| text.contains(&c.display_name)),
        "{text} vs {:?}",
        r.ranking
    );
}

#[tokio::test]
async fn every_bad_input_gets_invalid_argument_naming_the_field() {
    let s = model_server().await;
    let mut c = s.client().await;
    let cases: Vec<(pb::ClassifyRequest, &str)> = vec![
        (classify_req("b1", "", "u"), "text"),
        (classify_req("b2", "  \n\t ", "u"), "text"),
        (classify_req("b3", &"退".repeat(2001), "u"), "2000"),
        (
            {
                let mut r = classify_req("b4", "你好", "u");
                r.bot_id = "ghost".into();
                r
            },
            "bot_id",
        ),
        (
            {
                let mut r = classify_req("b5", "你好", "u");
                r.user = None;
                r
            },
            "user",
        ),
        (
            {
                let mut r = classify_req("b6", "你好", "u");
                r.message_id = String::new();
                r
            },
            "message_id",
        ),
        (
            {
                let mut r = classify_req("b7", "你好", "u");
                r.chat_id = "x".repeat(500);
                r
            },
            "chat_id",
        ),
        (
            {
                let mut r = classify_req("b8", "你好", "u");
                r.sent_at_ms = -1;
                r
            },
            "sent_at_ms",
        ),
    ];
    // Issue #12 regressions (each passed on main): text of invisible characters only, a
    // client time that would date the record into the purge.
    let mut more: Vec<(pb::ClassifyRequest, &str)> = vec![
        (classify_req("b9", "\u{200B}\u{FEFF}\0", "u"), "invisible"),
        (
            {
                let mut r = classify_req("b10", "你好", "u");
                r.sent_at_ms = 1;
                r
            },
            "accepted window",
        ),
    ];
    let mut cases = cases;
    cases.append(&mut more);
    for (req, needle) in cases {
        let err = c.classify(req.clone()).await.expect_err("must be rejected");
        // An unknown bot with a valid token for another bot is refused before validation.
        if req.bot_id == "ghost" {
            assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
            continue;
        }
        assert_eq!(err.code(), Code::InvalidArgument, "{needle}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{needle}: {}",
            err.message()
        );
    }
    // A missing bot_id is the request's fault, not a permission problem (issue #12.5), and
    // a huge one is not echoed whole.
    let mut r = classify_req("b11", "你好", "u");
    r.bot_id = String::new();
    let err = c.classify(r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("bot_id:"), "{}", err.message());
    let mut r = classify_req("b12", "你好", "u");
    r.bot_id = "g".repeat(10_000);
    let err = c.classify(r).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().len() < 300, "{}", err.message());
    // The server is still fine afterwards.
    c.classify(classify_req("ok", "你好", "u")).await.unwrap();
}

/// Sends raw bytes as a gRPC message: what a buggy or hostile client can put on the wire.
mod raw {
    use prost::bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Default, Clone)]
    pub struct RawCodec;
    pub struct Raw;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
            Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
        }
    }
}

#[tokio::test]
async fn undecodable_requests_are_client_errors_naming_the_problem() {
    // Issue #12.5 (failed on main): invalid UTF-8 and malformed protobuf answered INTERNAL,
    // a message over 4 MB OUT_OF_RANGE.
    use prost::Message;
    let s = TestServer::start(ServerOptions::default()).await;
    let call = |body: Vec<u8>| {
        let channel = s.channel();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel.await);
            grpc.ready().await.unwrap();
            let mut req = tonic::Request::new(body);
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", common::server::BOT_TOKEN)
                    .parse()
                    .unwrap(),
            );
            grpc.unary::<Vec<u8>, Vec<u8>, _>(
                req,
                "/intentd.v1.IntentService/Classify".parse().unwrap(),
                raw::RawCodec,
            )
            .await
            .expect_err("must be refused")
        }
    };
    let mut bad_utf8 = classify_req("u1", "AAAA", "u").encode_to_vec();
    let at = bad_utf8.windows(4).position(|w| w == b"AAAA").unwrap();
    bad_utf8[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xff, 0xfe]);
    let e = call(bad_utf8).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("UTF-8"), "{}", e.message());

    let e = call(vec![0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("not a valid protobuf message"),
        "{}",
        e.message()
    );

    let huge = classify_req("u2", &"退".repeat(2_000_000), "u").encode_to_vec();
    let e = call(huge.clone()).await;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains(&format!(
            "is {} bytes, over the limit of 4194304 bytes",
            huge.len()
        )),
        "{}",
        e.message()
    );
    // Still serving.
    let mut c = s.client().await;
    c.classify(classify_req("ok", "你好", "u")).await.unwrap();
}

#[tokio::test]
async fn long_texts_are_truncated_and_say_so() {
    let s = model_server().await;
    let mut c = s.client().await;
    let r = c
        .classify(classify_req("long", &"我想退货".repeat(400), "u"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.truncated);
    let r = c
        .classify(classify_req("short", "我想退货", "u"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.truncated);
}

#[tokio::test]
async fn tokens_are_required_and_scoped_to_their_bot() {
    let s = model_server().await;
    let mut anon = s.client_with_token(None).await;
    let err = anon
        .classify(classify_req("a1", "你好", "u"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = s.client_with_token(Some("not-a-real-token")).await;
    assert_eq!(
        wrong
            .classify(classify_req("a2", "你好", "u"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // A valid token for bot "demo" cannot act for another bot.
    let mut c = s.client().await;
    let mut other = classify_req("a3", "你好", "u");
    other.bot_id = "other-bot".into();
    assert_eq!(
        c.classify(other).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn batch_answers_in_order() {
    let s = model_server().await;
    let mut c = s.client().await;
    let reqs = vec![
        classify_req("x1", "怎么退款", "u1"),
        classify_req("x2", "谢谢你啊", "u2"),
        classify_req("x3", "转人工", "u3"),
    ];
    let r = c
        .classify_batch(pb::ClassifyBatchRequest { requests: reqs })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = r.responses.iter().map(|x| x.message_id.as_str()).collect();
    assert_eq!(ids, ["x1", "x2", "x3"]);
    assert_eq!(r.responses[0].intent, "refund");
    assert_eq!(r.responses[1].intent, "thanks");
    assert_eq!(r.responses[2].intent, "ask_human");
    // One bad message rejects the batch, naming its index.
    let bad = vec![classify_req("y1", "你好", "u"), classify_req("y2", "", "u")];
    let err = c
        .classify_batch(pb::ClassifyBatchRequest { requests: bad })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("requests[1].text"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn without_a_model_health_is_not_serving_and_rules_answer() {
    let s = TestServer::start(ServerOptions::default()).await;
    // Wait until the model load has been tried and failed, so the status below is the one the
    // server settled on, not the one it starts with.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !s.stderr().contains("model not loaded") {
        assert!(std::time::Instant::now() < deadline, "{}", s.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.health_status("").await,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    let mut c = s.client().await;
    let r = c
        .classify(classify_req("r1", "我要转人工", "u"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.model_loaded);
    assert_eq!(r.intent, "ask_human");
    assert_ne!(r.source, pb::Source::Model as i32);
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let s = model_server().await;
    let mut r = ServerReflectionClient::new(s.channel().await);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = r
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "intentd.v1.IntentService",
        "intentd.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

/// Sends `n` long texts at once; returns how many were answered and the refusals, after
/// checking each refusal is RESOURCE_EXHAUSTED saying `why`.
async fn burst_of_long_texts(s: &TestServer, n: usize, why: &str) -> (usize, usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = s.client().await;
        tasks.push(tokio::spawn(async move {
            c.classify(classify_req(
                &format!("burst{i}"),
                &"我想退货退款".repeat(30),
                "u",
            ))
            .await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains(why), "{}", e.message());
                busy += 1;
            }
        }
    }
    (ok, busy)
}

#[tokio::test]
async fn beyond_max_in_flight_requests_are_refused_at_once() {
    let model = common::default_model_dir();
    let s = TestServer::start(ServerOptions {
        model: Some(model),
        // No queue budget: this test is about the in-flight limit alone.
        extra_config: "max_in_flight: 2\nbatching:\n  max_batch_size: 1\n  max_wait_us: 0\n  queue_budget_ms: 0\n".into(),
        ..Default::default()
    })
    .await;
    let (ok, busy) = burst_of_long_texts(&s, 40, "limit 2").await;
    assert!(ok >= 2);
    assert!(busy >= 1, "40 concurrent requests against a limit of 2");
}

// Issue 12.6 (failed on main: admitted requests queued for seconds under overload). With a
// queue budget of 1 ms, texts that would wait longer for the model are refused at once with
// RESOURCE_EXHAUSTED naming the budget, and never get a late answer; every answer is counted
// by its code in /metrics.
#[tokio::test]
async fn texts_over_the_queue_budget_are_refused_and_every_answer_is_counted() {
    let model = common::default_model_dir();
    let s = TestServer::start(ServerOptions {
        model: Some(model),
        extra_config: "max_in_flight: 64\nbatching:\n  max_batch_size: 1\n  max_wait_us: 0\n  queue_budget_ms: 1\n".into(),
        ..Default::default()
    })
    .await;
    let (ok, busy) =
        burst_of_long_texts(&s, 40, "queue budget of 1 ms (batching.queue_budget_ms)").await;
    assert!(ok >= 1, "the first text always fits");
    assert!(
        busy >= 1,
        "40 long texts at once cannot all wait under 1 ms"
    );
    // Refusals are not errors of the service: a bad request and a missing token too.
    let mut c = s.client().await;
    let e = c.classify(classify_req("", "你好", "u")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut anon = s.client_with_token(None).await;
    let e = anon
        .classify(classify_req("a", "你好", "u"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let (_, metrics) = common::server::scrape_metrics(&s.metrics_addr).await;
    for (code, n) in [
        ("OK", ok),
        ("RESOURCE_EXHAUSTED", busy),
        ("INVALID_ARGUMENT", 1),
        ("UNAUTHENTICATED", 1),
    ] {
        let series = format!(
            r#"intentd_responses_total{{transport="grpc",rpc="Classify",code="{code}"}} {n}"#
        );
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
}

#[tokio::test]
async fn reload_under_concurrent_load_has_zero_failures() {
    let s = model_server().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let mut c = s.client().await;
        let (stop, done) = (stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let r = c
                    .classify(classify_req(
                        &format!("w{w}-{i}"),
                        "发票怎么开",
                        &format!("user{w}"),
                    ))
                    .await;
                let r = r.unwrap_or_else(|e| panic!("request failed during reload: {e:?}"));
                assert_eq!(r.into_inner().intent, "invoice");
                done.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    let mut admin = s.admin().await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = admin
            .reload(pb::ReloadRequest {
                model: true,
                operator: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.ok, "{r:?}");
    }
    // SIGHUP reloads too; the load keeps running until the reload has finished.
    s.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !s.stderr().contains("model reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP reload never finished: {}",
            s.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert!(done.load(Ordering::SeqCst) > 8, "load actually ran");
}

#[tokio::test]
async fn a_broken_model_is_rejected_and_the_old_one_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let model_copy = tmp.path().join("model");
    copy_dir(&common::default_single_model_dir(), &model_copy);
    let s = TestServer::start(ServerOptions {
        model: Some(model_copy.clone()),
        ..Default::default()
    })
    .await;
    let mut admin = s.admin().await;
    let before = admin
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .model_version;
    std::fs::write(model_copy.join("model.safetensors"), b"not weights").unwrap();
    let err = admin
        .reload(pb::ReloadRequest {
            model: true,
            operator: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("still serving"), "{}", err.message());
    let mut c = s.client().await;
    let r = c
        .classify(classify_req("after", "怎么退款", "u"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.model_version, before);
    assert_eq!(r.intent, "refund");
}

#[tokio::test]
async fn admin_rpcs_need_the_admin_token() {
    // The real clock: SetClock must be refused on it.
    let s = TestServer::start(ServerOptions {
        model: Some(common::default_model_dir()),
        ..Default::default()
    })
    .await;
    let mut as_bot = pb::admin_service_client::AdminServiceClient::with_interceptor(
        s.channel().await,
        common::server::TokenInterceptor::bot(),
    );
    let err = as_bot.status(pb::StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let st = s
        .admin()
        .await
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.model_loaded);
    // SetClock only works on a manual clock.
    let err = s
        .admin()
        .await
        .set_clock(pb::SetClockRequest { now_ms: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // No queue budget: 16 long texts at once on a busy CI machine may exceed it, and this test
    // is about draining what was admitted.
    let mut s = rt.block_on(TestServer::start(ServerOptions {
        model: Some(common::default_model_dir()),
        manual_clock: Some(T0),
        extra_config: "batching:\n  queue_budget_ms: 0\n".into(),
        ..Default::default()
    }));
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..16 {
            let mut c = s.client().await;
            tasks.push(tokio::spawn(async move {
                c.classify(classify_req(
                    &format!("d{i}"),
                    &"请问这个怎么退货呢".repeat(20),
                    "u",
                ))
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.signal("TERM");
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    // Requests that reached the server before SIGTERM complete; none fail with an error other
    // than a refused connection for ones that arrived after the listener closed.
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e.code(), Code::Unavailable),
                "in-flight request failed: {e:?}"
            );
        }
    }
    assert!(results.iter().filter(|r| r.is_ok()).count() >= 1);
    assert_eq!(
        s.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        s.stderr()
    );
    assert!(s.stderr().contains("graceful") || s.stderr().contains("stopped"));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test]
async fn reflection_v1alpha_is_served_for_older_tools() {
    // grpcurl before 1.9 and other older tools only speak the v1alpha reflection protocol.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let s = TestServer::start(ServerOptions::default()).await;
    let mut r = ServerReflectionClient::new(s.channel().await);
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = r
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "intentd.v1.IntentService"),
        "{names:?}"
    );
}

/// A copy of a model folder of the default model with `damage` applied to it.
fn damaged_model(damage: impl FnOnce(&std::path::Path)) -> tempfile::TempDir {
    let src = common::default_single_model_dir();
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    damage(dir.path());
    dir
}

#[tokio::test]
async fn a_damaged_model_stops_the_server_unless_rules_only_is_allowed() {
    // Issue #12.3 (failed on main: it served from rules indefinitely after one log line).
    let truncated = damaged_model(|d| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("model.safetensors"))
            .unwrap();
        f.set_len(1_000_000).unwrap();
    });
    let no_tokenizer = damaged_model(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    for (dir, what) in [(&truncated, "safetensors"), (&no_tokenizer, "tokenizer")] {
        let mut s = TestServer::start(ServerOptions {
            model: Some(dir.path().to_path_buf()),
            no_wait_serving: true,
            ..Default::default()
        })
        .await;
        let code = s.wait_exit(Duration::from_secs(60));
        assert_eq!(code, Some(1), "{what}: exit code; stderr:\n{}", s.stderr());
        let err = s.stderr();
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
        assert!(
            last.starts_with("error: model: ") && last.contains("model.required: false"),
            "{what}: the last line says why: {last}"
        );
    }
    // Allowed: it keeps serving from rules, NOT_SERVING.
    let s = TestServer::start(ServerOptions {
        model: Some(truncated.path().to_path_buf()),
        extra_config: "model:\n  required: false\n".into(),
        no_wait_serving: true,
        ..Default::default()
    })
    .await;
    let mut c = s.client().await;
    let r = c
        .classify(classify_req("r1", "你好", "u"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.source, pb::Source::Model as i32);
    assert_eq!(
        s.health_status("intentd.v1.IntentService").await,
        2,
        "NOT_SERVING"
    );
}
