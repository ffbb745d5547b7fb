//! Front doors: the gRPC server, the HTTP/JSON server ([`http`]), the operator console on the
//! same listener ([`console`]) (and the Prometheus endpoint from `metrics`). They only translate: protobuf lives here and nowhere below (`convert` holds every mapping).

pub mod admin;
pub mod auth;
pub mod console;
pub mod convert;
pub mod decode_errors;
pub mod grpc;
pub mod health;
pub mod http;
pub mod response_count;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

use crate::config::ServerConfig;
use crate::pb;
use crate::service::Service;
use admin::AdminApi;
use auth::Authenticator;
use grpc::IntentApi;

/// Serves health, reflection, IntentService and AdminService on `listener` until `shutdown`
/// completes (then finishes in-flight calls; the caller bounds that with its grace period).
pub async fn serve_grpc(
    cfg: &ServerConfig,
    listener: TcpListener,
    service: Arc<Service>,
    auth: Arc<Authenticator>,
    reporter: HealthReporter,
    health_service: HealthServer<impl Health>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // Reflection in both protocol versions: v1 for current tools, v1alpha for the many clients
    // that only speak it (grpcurl before 1.9, older Postman / evans / grpcui).
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("reflection service")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("reflection service (v1alpha)")?;

    let mut builder = Server::builder()
        .timeout(Duration::from_millis(cfg.request_timeout_ms))
        .http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(tls) = &cfg.tls {
        let cert =
            std::fs::read(&tls.cert).with_context(|| format!("tls.cert {}", tls.cert.display()))?;
        let key =
            std::fs::read(&tls.key).with_context(|| format!("tls.key {}", tls.key.display()))?;
        builder =
            builder.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))?;
    }
    let intent = IntentApi {
        service: service.clone(),
        auth: auth.clone(),
    };
    let count_responses = response_count::CountResponsesLayer::new(service.metrics.clone());
    let admin = AdminApi {
        service,
        auth,
        health: reporter,
    };
    builder
        // Outermost: counts the code the client finally gets (after the remapping below).
        .layer(count_responses)
        // Undecodable requests are the client's fault, not INTERNAL / OUT_OF_RANGE.
        .layer(tower::util::MapResponseLayer::new(
            decode_errors::remap::<tonic::body::Body>,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(pb::intent_service_server::IntentServiceServer::new(intent))
        .add_service(pb::admin_service_server::AdminServiceServer::new(admin))
        // TCP_NODELAY: a small response must not wait for the client's delayed ACK (Nagle);
        // without it a unary call at low load took ~40 ms longer (measured with
        // `intentd bench --concurrency 1`).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .context("gRPC server")
}
