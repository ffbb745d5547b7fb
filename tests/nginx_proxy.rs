//! intentd behind nginx with the shipped example config (examples/nginx/intentd.conf, only its
//! addresses changed): gRPC unary calls, gRPC error codes, the health check, the long-lived
//! Subscribe stream, and the HTTP/JSON door all pass through the proxy.
//!
//! Needs Debian's nginx (`nginx-light` is enough; `.ci/run` installs it). Without it the test
//! fails when CI=true and is skipped otherwise.

mod common;

use std::time::Duration;

use common::nginx::{free_port, nginx_or_skip, Nginx};
use common::server::{ServerOptions, TestServer, ADMIN_TOKEN, BOT, BOT_TOKEN, T0};
use intentd::pb;
use pb::{Action, EventType, OutboundKind};
use tonic::transport::Channel;
use tonic::Code;

type Authed =
    tonic::service::interceptor::InterceptedService<Channel, common::server::TokenInterceptor>;

fn with_token(ch: &Channel, token: &str) -> Authed {
    tonic::service::interceptor::InterceptedService::new(
        ch.clone(),
        common::server::TokenInterceptor::bearer(token),
    )
}

fn user(id: &str, nick: &str) -> pb::User {
    pb::User {
        id: id.into(),
        nickname: nick.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_nginx_config_proxies_grpc_streams_errors_health_and_http() {
    let Some(bin) = nginx_or_skip("nginx_proxy") else {
        return;
    };
    let s = TestServer::start(ServerOptions {
        model: Some(common::default_model_dir()),
        manual_clock: Some(T0),
        ..ServerOptions::default()
    })
    .await;
    let (grpc_port, http_port) = (free_port(), free_port());
    let example =
        std::fs::read_to_string(common::repo_root().join("examples/nginx/intentd.conf")).unwrap();
    // Only the addresses change: what is tested is the file operators copy.
    let site = example
        .replace("127.0.0.1:50051", &s.addr)
        .replace("127.0.0.1:8080", &s.http_addr)
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{grpc_port}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{http_port}"));
    assert_ne!(site, example);
    let mut nginx = Nginx::start(&bin, &site);
    nginx.wait_listening(grpc_port);
    nginx.wait_listening(http_port);

    let ch = Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to nginx");

    // Readiness through the proxy: the gRPC health check.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("health through nginx: {e:?}\n{}", nginx.log()))
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A unary call answered by the model.
    let mut c = pb::intent_service_client::IntentServiceClient::new(with_token(&ch, BOT_TOKEN));
    let req = |id: &str, text: &str| pb::ClassifyRequest {
        bot_id: BOT.into(),
        chat_id: "g-nginx".into(),
        chat_name: "nginx".into(),
        message_id: id.into(),
        text: text.into(),
        user: Some(user("u1", "小王")),
        ..Default::default()
    };
    let r = c
        .classify(req("m1", "买的鞋子不合适，想退货退款"))
        .await
        .unwrap_or_else(|e| panic!("classify through nginx: {e:?}\n{}", nginx.log()))
        .into_inner();
    assert_eq!(
        (r.intent.as_str(), r.action),
        ("refund", Action::Reply as i32)
    );
    assert!(r.recorded);
    // A retry through the proxy is answered from the first decision.
    let again = c
        .classify(req("m1", "买的鞋子不合适，想退货退款"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);

    // Errors keep their gRPC codes and messages.
    let mut anon = pb::intent_service_client::IntentServiceClient::new(ch.clone());
    let e = anon.classify(req("m2", "你好")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = c.classify(req("m3", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("text"), "{}", e.message());

    // The Subscribe stream stays open through the proxy and delivers a welcome.
    let mut sub = c
        .subscribe(pb::SubscribeRequest {
            bot_id: BOT.into(),
            chat_ids: vec!["g-nginx".into()],
        })
        .await
        .expect("subscribe through nginx")
        .into_inner();
    let d = c
        .handle_event(pb::Event {
            bot_id: BOT.into(),
            chat_id: "g-nginx".into(),
            r#type: EventType::MemberJoined as i32,
            user: Some(user("u2", "小李")),
            chat_name: "nginx".into(),
            event_id: "join-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.reason, "welcome:queued");
    let mut admin = pb::admin_service_client::AdminServiceClient::new(with_token(&ch, ADMIN_TOKEN));
    admin
        .set_clock(pb::SetClockRequest {
            now_ms: T0 + 120_000,
        })
        .await
        .unwrap();
    let o = tokio::time::timeout(Duration::from_secs(20), sub.message())
        .await
        .expect("a welcome through nginx within 20 s")
        .expect("the stream is healthy")
        .expect("the stream is open");
    assert_eq!(o.kind, OutboundKind::Welcome as i32);
    assert_eq!(o.user_ids, vec!["u2"]);

    // The HTTP/JSON door through the second server block.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http_port}");
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let r = http
        .post(format!("{base}/v1/classify"))
        .bearer_auth(BOT_TOKEN)
        .json(&serde_json::json!({
            "bot_id": BOT, "chat_id": "g-nginx", "message_id": "h1",
            "text": "怎么申请退款", "user": {"id": "u3", "nickname": "小张"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["intent"], "refund", "{body}");
    let e = http
        .post(format!("{base}/v1/classify"))
        .json(&serde_json::json!({"bot_id": BOT}))
        .send()
        .await
        .unwrap();
    assert_eq!(e.status(), reqwest::StatusCode::UNAUTHORIZED);
}
