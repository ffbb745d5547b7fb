//! `GET`/`POST /wechat/{account}`: the Official Account / WeCom app callback URL. Thin: reads
//! the query and the body (bounded by `wechat.max_body_bytes`) and hands them to the adapter
//! (`crate::connectors::wechat::callback`); refusals are plain text with their status.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::HttpState;
use crate::connectors::wechat::callback::{CallbackError, Query as CallbackQuery};
use crate::connectors::wechat::Callbacks;

fn plain(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn refusal(e: CallbackError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    plain(status, e.message + "\n")
}

fn query(raw: Option<String>) -> Result<CallbackQuery, CallbackError> {
    Query::<CallbackQuery>::try_from_uri(
        &format!("/?{}", raw.unwrap_or_default())
            .parse()
            .map_err(|_| CallbackError {
                status: 400,
                message: "refused: the query string is not valid".into(),
            })?,
    )
    .map(|Query(q)| q)
    .map_err(|e| CallbackError {
        status: 400,
        message: format!("refused: bad query string: {e}"),
    })
}

fn callbacks(state: &HttpState, account: &str) -> Result<Arc<Callbacks>, CallbackError> {
    state
        .wechat
        .clone()
        .ok_or_else(|| CallbackError::unknown_account(account))
}

/// URL verification: answers the (decrypted) `echostr`.
pub async fn verify(
    State(state): State<HttpState>,
    Path(account): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let r = callbacks(&state, &account)
        .and_then(|cb| query(raw).and_then(|q| cb.verify_url(&account, &q)));
    match r {
        Ok(echo) => plain(StatusCode::OK, echo),
        Err(e) => refusal(e),
    }
}

/// A message callback: the passive reply XML, or `success`.
pub async fn message(
    State(state): State<HttpState>,
    Path(account): Path<String>,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Response {
    let cb = match callbacks(&state, &account) {
        Ok(cb) => cb,
        Err(e) => return refusal(e),
    };
    let q = match query(raw) {
        Ok(q) => q,
        Err(e) => return refusal(e),
    };
    let limit = cb.max_body_bytes();
    // Stops reading at the limit: an oversized body is never buffered whole.
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return refusal(cb.oversized(&account)),
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return refusal(CallbackError {
            status: 400,
            message: "refused: broken XML: the body is not UTF-8".into(),
        });
    };
    match cb.handle(&account, &q, text).await {
        Ok(a) => {
            let ct = if a.xml {
                "application/xml; charset=utf-8"
            } else {
                "text/plain; charset=utf-8"
            };
            (StatusCode::OK, [(header::CONTENT_TYPE, ct)], a.body).into_response()
        }
        Err(e) => refusal(e),
    }
}
