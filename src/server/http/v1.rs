//! The `/v1` routes and the probes: authenticate, translate, call the service, answer. No
//! decisions are made here (the same as `server::grpc`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::error::{ApiError, ErrorBody};
use super::json;
use super::{ApiJson, ApiQuery, HttpState};
use crate::server::convert;
use crate::service::EventTypeIn;

#[utoipa::path(
    post, path = "/v1/classify", tag = "intent",
    request_body = json::ClassifyRequest,
    params(("X-Timeout-Ms" = Option<u64>, Header, description = "deadline in ms (or `timeout_ms` in the body)")),
    responses(
        (status = 200, description = "the classification and the bot's decision", body = json::ClassifyResponse),
        (status = "4XX", description = "the request is wrong (`error.field` names the field)", body = ErrorBody),
        (status = "5XX", description = "503 going away / 504 deadline exceeded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn classify(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<json::ClassifyRequest>,
) -> Result<Json<json::ClassifyResponse>, ApiError> {
    let who = st.caller(&headers)?;
    let ms = st.budget_ms(&headers, body.timeout_ms)?;
    let req = convert::classify_request(body.into());
    who.check_bot(&req.bot_id)?;
    let r = st.call(ms, st.service.classify(&req)).await?;
    Ok(Json(convert::classify_response(r).into()))
}

#[utoipa::path(
    post, path = "/v1/classify:batch", tag = "intent",
    request_body = json::ClassifyBatchRequest,
    params(("X-Timeout-Ms" = Option<u64>, Header, description = "deadline in ms")),
    responses(
        (status = 200, description = "one answer per request, in order", body = json::ClassifyBatchResponse),
        (status = "4XX", description = "the request is wrong", body = ErrorBody),
        (status = "5XX", description = "503 / 504", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn classify_batch(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<json::ClassifyBatchRequest>,
) -> Result<Json<json::ClassifyBatchResponse>, ApiError> {
    let who = st.caller(&headers)?;
    let ms = st.budget_ms(&headers, body.timeout_ms)?;
    let mut reqs = Vec::with_capacity(body.requests.len());
    for (i, r) in body.requests.into_iter().enumerate() {
        if r.timeout_ms.is_some() {
            return Err(ApiError::invalid(
                &format!("requests[{i}].timeout_ms"),
                format!(
                    "requests[{i}].timeout_ms: set timeout_ms on the batch, not on one request"
                ),
            ));
        }
        let r = convert::classify_request(r.into());
        who.check_bot(&r.bot_id)?;
        reqs.push(r);
    }
    let results = st.call(ms, st.service.classify_batch(&reqs)).await?;
    Ok(Json(json::ClassifyBatchResponse {
        responses: results
            .into_iter()
            .map(|r| convert::classify_response(r).into())
            .collect(),
    }))
}

#[utoipa::path(
    post, path = "/v1/events", tag = "intent",
    request_body = json::Event,
    params(("X-Timeout-Ms" = Option<u64>, Header, description = "deadline in ms")),
    responses(
        (status = 200, description = "the decision on the event", body = json::Decision),
        (status = "4XX", description = "the request is wrong", body = ErrorBody),
        (status = "5XX", description = "503 / 504", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn handle_event(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<json::Event>,
) -> Result<Json<json::Decision>, ApiError> {
    let who = st.caller(&headers)?;
    let ms = st.budget_ms(&headers, body.timeout_ms)?;
    let (pb_event, unknown_type) = body.into_pb();
    let mut ev = convert::event_request(pb_event);
    if let Some(name) = unknown_type {
        ev.kind = EventTypeIn::Unknown(name);
    }
    who.check_bot(&ev.bot_id)?;
    let d = st.call(ms, st.service.handle_event(&ev)).await?;
    Ok(Json(convert::event_decision(d).into()))
}

#[utoipa::path(
    post, path = "/v1/feedback", tag = "intent",
    request_body = json::FeedbackRequest,
    params(("X-Timeout-Ms" = Option<u64>, Header, description = "deadline in ms")),
    responses(
        (status = 200, description = "whether the feedback was stored", body = json::Recorded),
        (status = "4XX", description = "the request is wrong", body = ErrorBody),
        (status = "5XX", description = "503 / 504", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn feedback(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<json::FeedbackRequest>,
) -> Result<Json<json::Recorded>, ApiError> {
    let who = st.caller(&headers)?;
    let ms = st.budget_ms(&headers, body.timeout_ms)?;
    let req = convert::feedback_request(body.into());
    who.check_bot(&req.bot_id)?;
    let recorded = st.call(ms, st.service.feedback(&req)).await?;
    Ok(Json(json::Recorded { recorded }))
}

#[utoipa::path(
    post, path = "/v1/human-replies", tag = "intent",
    request_body = json::HumanReplyRequest,
    params(("X-Timeout-Ms" = Option<u64>, Header, description = "deadline in ms")),
    responses(
        (status = 200, description = "whether the human reply was stored", body = json::Recorded),
        (status = "4XX", description = "the request is wrong", body = ErrorBody),
        (status = "5XX", description = "503 / 504", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn human_reply(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<json::HumanReplyRequest>,
) -> Result<Json<json::Recorded>, ApiError> {
    let who = st.caller(&headers)?;
    let ms = st.budget_ms(&headers, body.timeout_ms)?;
    let req = convert::human_reply_request(body.into());
    who.check_bot(&req.bot_id)?;
    let recorded = st.call(ms, st.service.human_reply(&req)).await?;
    Ok(Json(json::Recorded { recorded }))
}

#[utoipa::path(
    get, path = "/v1/stats", tag = "intent",
    params(json::StatsQuery, ("X-Timeout-Ms" = Option<u64>, Header, description = "deadline in ms")),
    responses(
        (status = 200, description = "counts and rates", body = json::StatsResponse),
        (status = "4XX", description = "the request is wrong", body = ErrorBody),
        (status = "5XX", description = "503 / 504", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stats(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<json::StatsQuery>,
) -> Result<Json<json::StatsResponse>, ApiError> {
    let who = st.caller(&headers)?;
    let ms = st.budget_ms(&headers, q.timeout_ms)?;
    let req = convert::stats_query(q.into());
    who.check_bot(&req.bot_id)?;
    let report = st.call(ms, st.service.stats(&req)).await?;
    Ok(Json(convert::stats_response(&report).into()))
}

fn health(st: &HttpState, not_ready: Option<String>) -> json::Health {
    json::Health {
        status: if not_ready.is_none() {
            "ok"
        } else {
            "not_ready"
        }
        .into(),
        model_loaded: st.service.model_loaded(),
        model_version: st.service.model_version(),
        reason: not_ready.unwrap_or_default(),
    }
}

/// Liveness: the process answers.
#[utoipa::path(
    get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "the process is live", body = json::Health))
)]
pub async fn healthz(State(st): State<HttpState>) -> Json<json::Health> {
    Json(health(&st, None))
}

/// Readiness, the same as the gRPC health check: the model is loaded (before that, only the
/// rules answer), the store's commits succeed and the server is not shutting down.
#[utoipa::path(
    get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "ready to serve", body = json::Health),
        (status = 503, description = "not ready: `reason` says why (no model loaded yet, the store fails every commit, shutting down)", body = json::Health),
    )
)]
pub async fn readyz(State(st): State<HttpState>) -> (StatusCode, Json<json::Health>) {
    let not_ready = st.service.not_ready_reason();
    let status = if not_ready.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health(&st, not_ready)))
}
