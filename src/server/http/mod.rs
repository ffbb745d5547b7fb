//! HTTP/JSON front door: a second thin door over the same `Arc<Service>` as gRPC. It only
//! authenticates (the shared [`Authenticator`]), translates JSON to the protobuf messages and
//! through `convert` to the service (so both doors map alike), bounds the call by its deadline
//! and maps errors to one JSON body ([`error`]). One file per concept: [`json`] bodies, [`v1`]
//! the `/v1` routes, [`admin`] the operators' `/v1/admin` routes (review queue, handoffs),
//! [`inbox`] the labelling inbox, [`sse`] the outbound stream, [`rasa`] Rasa's
//! `/model/parse`, [`openapi`] the generated document, [`wechat`] the WeChat callback URL
//! (handed to `crate::connectors::wechat`). The operator console (`crate::server::console`) is
//! nested under `/console` (HTML, not part of the OpenAPI document).

pub mod admin;
pub mod error;
pub mod inbox;
pub mod json;
pub mod openapi;
pub mod rasa;
pub mod sse;
pub mod v1;
pub mod wechat;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tonic::Code;

use super::auth::{Authenticator, Caller};
use super::console::{self, ConsoleState};
use crate::config::HttpConfig;
use crate::service::{Service, ServiceError};
use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct HttpState {
    pub service: Arc<Service>,
    pub auth: Arc<Authenticator>,
    /// The server's bound for one call (`request_timeout_ms`).
    pub request_timeout_ms: u64,
    pub max_body_bytes: usize,
    /// The WeChat callback adapter (`/wechat/{account}`), when accounts are configured.
    pub wechat: Option<Arc<crate::connectors::wechat::Callbacks>>,
    /// The operator console (`/console`), unless `http.console.enabled: false`.
    pub console: Option<ConsoleState>,
}

/// The deadline header (milliseconds), like gRPC's `grpc-timeout`.
pub const TIMEOUT_HEADER: &str = "x-timeout-ms";

impl HttpState {
    /// Who is calling, from `Authorization: Bearer <token>`.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        Ok(self.auth.caller_from(
            headers
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )?)
    }

    /// The call's time budget: the smaller of `timeout_ms` (body or query) and `X-Timeout-Ms`,
    /// never more than the server's `request_timeout_ms`.
    pub fn budget_ms(&self, headers: &HeaderMap, field: Option<u64>) -> Result<u64, ApiError> {
        let header = match headers.get(TIMEOUT_HEADER) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "X-Timeout-Ms",
                            "X-Timeout-Ms must be a whole number of milliseconds",
                        )
                    })?,
            ),
        };
        let mut ms = self.request_timeout_ms;
        for (name, v) in [("X-Timeout-Ms", header), ("timeout_ms", field)] {
            if let Some(v) = v {
                if v == 0 {
                    return Err(ApiError::invalid(
                        name,
                        format!("{name} must be at least 1"),
                    ));
                }
                ms = ms.min(v);
            }
        }
        Ok(ms)
    }

    /// Runs a service call within `ms`, with its metrics labelled `transport="http"`.
    pub async fn call<T>(
        &self,
        ms: u64,
        fut: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ApiError> {
        let timed = tokio::time::timeout(Duration::from_millis(ms), fut);
        match crate::metrics::with_transport("http", timed).await {
            Ok(r) => r.map_err(ApiError::from),
            Err(_) => Err(ApiError::deadline(ms)),
        }
    }
}

/// `Json` whose rejections (malformed JSON, wrong content type, oversized body, bad field) are
/// the one error body, never axum's plain text.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<HttpState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &HttpState) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(axum::extract::rejection::JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(error::too_large(state.max_body_bytes))
            }
            Err(r) => Err(r.into()),
        }
    }
}

/// `Query` with the same error body.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<HttpState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(ApiError::from)
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::with_status(
        Code::NotFound,
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {} (see GET /openapi.json)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::with_status(
        Code::Unimplemented,
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {} (see GET /openapi.json)",
            req.method(),
            req.uri().path()
        ),
    )
}

/// One debug line per request: method, route, status, milliseconds.
async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        route,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "http request"
    );
    resp
}

/// Counts every answer in `intentd_responses_total{transport="http",rpc,code}`: `rpc` is the
/// matched route (`POST /v1/classify`), `unknown` for paths that match none (a client cannot
/// grow the label set), `code` the gRPC code name the error body carries.
async fn count_response(req: Request, next: Next) -> Response {
    let state = req
        .extensions()
        .get::<Arc<crate::metrics::Metrics>>()
        .cloned();
    let rpc = match req.extensions().get::<MatchedPath>() {
        Some(p) => format!("{} {}", req.method(), p.as_str()),
        None => "unknown".to_string(),
    };
    let resp = next.run(req).await;
    if let Some(metrics) = state {
        let code = resp
            .extensions()
            .get::<Code>()
            .copied()
            .unwrap_or_else(|| error::code_of_status(resp.status()));
        metrics.count_response("http", &rpc, error::code_name(code));
    }
    resp
}

/// Every route of the HTTP front door.
pub fn router(state: HttpState) -> Router {
    let limit = state.max_body_bytes;
    let metrics = state.service.metrics.clone();
    let mut router = Router::new();
    if let Some(c) = state.console.clone() {
        router = router.nest("/console", console::router(c));
    }
    router
        .route("/v1/classify", post(v1::classify))
        .route("/v1/classify:batch", post(v1::classify_batch))
        .route("/v1/events", post(v1::handle_event))
        .route("/v1/feedback", post(v1::feedback))
        .route("/v1/human-replies", post(v1::human_reply))
        .route("/v1/stats", get(v1::stats))
        .route("/v1/outbound", get(sse::outbound))
        .route("/v1/admin/reviews", get(admin::list_reviews))
        .route(
            "/v1/admin/reviews/{id}/approve",
            post(admin::approve_review),
        )
        .route(
            "/v1/admin/reviews/{id}/confirm",
            post(admin::confirm_review),
        )
        .route("/v1/admin/handoffs", get(admin::list_handoffs))
        .route("/v1/admin/handoffs/claim", post(admin::claim_handoff))
        .route("/v1/admin/handoffs/close", post(admin::close_handoff))
        .route("/v1/admin/inbox", get(inbox::list))
        .route(
            "/v1/admin/inbox/{conversation_id}/label",
            post(inbox::label),
        )
        .route("/v1/admin/labels.yml", get(inbox::export))
        .route("/healthz", get(v1::healthz))
        .route("/readyz", get(v1::readyz))
        .route("/model/parse", post(rasa::parse))
        .route("/openapi.json", get(openapi::serve))
        .route(
            "/wechat/{account}",
            get(wechat::verify).post(wechat::message),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(log_request))
        .layer(middleware::from_fn(count_response))
        .layer(axum::Extension(metrics))
        .with_state(state)
}

/// Serves the HTTP front door on `listener` until `shutdown` completes (then finishes open
/// requests; the caller bounds that with its grace period).
pub async fn serve_http(
    cfg: &HttpConfig,
    request_timeout_ms: u64,
    listener: TcpListener,
    service: Arc<Service>,
    auth: Arc<Authenticator>,
    wechat: Option<Arc<crate::connectors::wechat::Callbacks>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = HttpState {
        request_timeout_ms,
        max_body_bytes: cfg.max_body_bytes,
        console: cfg
            .console
            .enabled
            .then(|| ConsoleState::new(service.clone(), auth.clone(), &cfg.console)),
        service,
        auth,
        wechat,
    };
    // TCP_NODELAY for the same reason as gRPC: a small answer must not wait for a delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    // The peer address reaches handlers as `ConnectInfo` (the console's failed-login limit).
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server")
}
