//! Transport concerns: TLS when configured, client deadlines.

mod common;

use std::process::Command;
use std::time::Duration;

use common::server::{classify_req, ServerOptions, TestServer, BOT_TOKEN};
use intentd::pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[tokio::test]
async fn tls_serves_encrypted_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    // A throw-away CA and a server certificate for localhost signed by it (rustls rejects a
    // self-signed CA certificate used directly as the server's).
    let ext = dir.path().join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let d = |f: &str| dir.path().join(f).to_string_lossy().to_string();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=intentd-test-ca",
            "-keyout",
            &d("ca.key"),
            "-out",
            &d("ca.pem"),
        ],
        vec![
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &d("key.pem"),
            "-out",
            &d("server.csr"),
        ],
        vec![
            "x509",
            "-req",
            "-in",
            &d("server.csr"),
            "-CA",
            &d("ca.pem"),
            "-CAkey",
            &d("ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &d("cert.pem"),
            "-extfile",
            &d("ext.cnf"),
        ],
    ] {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl is needed to make a test certificate");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = TestServer::start(ServerOptions {
        extra_config: format!(
            "tls:\n  cert: {}\n  key: {}\n",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    })
    .await;
    let port = s.addr.rsplit(':').next().unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connect");
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {BOT_TOKEN}").parse().unwrap();
    let mut c = pb::intent_service_client::IntentServiceClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", token.clone());
            Ok(r)
        },
    );
    let r = c
        .classify(classify_req("t1", "我要转人工", "u"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.intent, "ask_human");

    // A plaintext client gets nowhere.
    let mut plain = s.client().await;
    assert!(plain
        .classify(classify_req("t2", "我要转人工", "u"))
        .await
        .is_err());
}

#[tokio::test]
async fn an_expired_client_deadline_is_reported_and_the_server_keeps_going() {
    let s = TestServer::start(ServerOptions {
        model: Some(common::default_model_dir()),
        ..Default::default()
    })
    .await;
    let mut c = s.client().await;
    let mut req = tonic::Request::new(classify_req(
        "d1",
        &"请问这个退款怎么操作呢".repeat(150),
        "u",
    ));
    req.set_timeout(Duration::from_micros(1));
    let err = c.classify(req).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    let ok = c
        .classify(classify_req("d2", "怎么退款", "u"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.intent, "refund");
}
