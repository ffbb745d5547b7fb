//! `/v1/admin/...`: the review queue and the handoff desk over HTTP/JSON, for the admin token
//! only (the same calls as AdminService's ListReviews / ApproveReview / ConfirmReview /
//! ListHandoffs / ClaimHandoff / CloseHandoff, translated through the protobuf messages).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use tonic::Code;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::json::Decision;
use super::{ApiJson, ApiQuery, HttpState};
use crate::pb;
use crate::server::auth::Caller;
use crate::server::convert;

impl HttpState {
    /// The caller holds the admin token (or authentication is off).
    pub(super) fn admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match self.caller(headers)? {
            Caller::Admin | Caller::Anyone => Ok(()),
            Caller::Bot(_) => Err(ApiError::new(
                Code::PermissionDenied,
                "this call needs the admin token",
            )),
        }
    }
}

/// The `{id}` of a review route: a whole number.
fn review_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::invalid(
            "id",
            format!("review id '{raw}' is not a whole number (see GET /v1/admin/reviews)"),
        )
    })
}

/// A blocked message in the review queue (proto `ReviewEntry`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReviewEntry {
    pub id: u64,
    pub at_ms: i64,
    pub bot_id: String,
    pub chat_id: String,
    pub user_id: String,
    pub message_id: String,
    /// PII redacted.
    pub text: String,
    /// The banned word (empty for a blocked intent).
    pub matched: String,
    /// `banned_word` or the blocked intent.
    pub reason: String,
    /// "" (waiting), "approved" or "confirmed".
    pub verdict: String,
    pub decided_by: String,
    pub decided_ms: i64,
    pub allowed_word: bool,
}

impl From<pb::ReviewEntry> for ReviewEntry {
    fn from(e: pb::ReviewEntry) -> Self {
        ReviewEntry {
            id: e.id,
            at_ms: e.at_ms,
            bot_id: e.bot_id,
            chat_id: e.chat_id,
            user_id: e.user_id,
            message_id: e.message_id,
            text: e.text,
            matched: e.matched,
            reason: e.reason,
            verdict: e.verdict,
            decided_by: e.decided_by,
            decided_ms: e.decided_ms,
            allowed_word: e.allowed_word,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewsQuery {
    /// Also list entries that already have a verdict.
    pub include_decided: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReviewList {
    pub items: Vec<ReviewEntry>,
}

/// Body of approve / confirm.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewDecision {
    /// Who decides (1..64 characters); kept with the verdict and audited.
    pub by: String,
    /// Approve only: allow the matched word in the message's group from now on.
    pub allow_word: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReviewDecided {
    pub item: Option<ReviewEntry>,
    /// An approval recorded by this call: the decision the message got (its reply arrives on
    /// the bot's outbound stream).
    pub answer: Option<Decision>,
}

impl From<pb::ReviewDecisionResponse> for ReviewDecided {
    fn from(r: pb::ReviewDecisionResponse) -> Self {
        ReviewDecided {
            item: r.item.map(Into::into),
            answer: r.answer.map(Into::into),
        }
    }
}

/// An open or claimed handoff (proto `HandoffEntry`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HandoffEntry {
    pub bot_id: String,
    pub chat_id: String,
    pub chat_name: String,
    /// Unique within the chat.
    pub id: u64,
    pub opened_ms: i64,
    pub user_id: String,
    pub message_id: String,
    pub reason: String,
    /// The wait announced to the user.
    pub wait_minutes: u32,
    /// "open" or "claimed".
    pub state: String,
    pub claimed_by: String,
    pub claimed_ms: i64,
    /// An open one stops counting then; 0 once claimed.
    pub expires_ms: i64,
}

impl From<pb::HandoffEntry> for HandoffEntry {
    fn from(h: pb::HandoffEntry) -> Self {
        HandoffEntry {
            bot_id: h.bot_id,
            chat_id: h.chat_id,
            chat_name: h.chat_name,
            id: h.id,
            opened_ms: h.opened_ms,
            user_id: h.user_id,
            message_id: h.message_id,
            reason: h.reason,
            wait_minutes: h.wait_minutes,
            state: h.state,
            claimed_by: h.claimed_by,
            claimed_ms: h.claimed_ms,
            expires_ms: h.expires_ms,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
pub struct HandoffsQuery {
    /// Only this bot's handoffs (empty: every bot).
    pub bot_id: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HandoffList {
    pub items: Vec<HandoffEntry>,
}

/// Body of claim / close.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HandoffAction {
    pub bot_id: String,
    pub chat_id: String,
    pub id: u64,
    /// Who acts (1..64 characters).
    pub agent: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HandoffActed {
    /// As it was after the action (a closed one: its last state).
    pub item: Option<HandoffEntry>,
}

#[utoipa::path(
    get, path = "/v1/admin/reviews", tag = "admin",
    params(ReviewsQuery),
    responses(
        (status = 200, description = "the review queue, oldest first", body = ReviewList),
        (status = "4XX", description = "401 / 403 without the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_reviews(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ReviewsQuery>,
) -> Result<Json<ReviewList>, ApiError> {
    st.admin(&headers)?;
    let ms = st.budget_ms(&headers, None)?;
    let items = st
        .call(ms, st.service.list_reviews(!q.include_decided))
        .await?;
    Ok(Json(ReviewList {
        items: items
            .iter()
            .map(|e| convert::review_entry(e).into())
            .collect(),
    }))
}

#[utoipa::path(
    post, path = "/v1/admin/reviews/{id}/approve", tag = "admin",
    params(("id" = u64, Path, description = "the review entry's id")),
    request_body = ReviewDecision,
    responses(
        (status = 200, description = "approved: the message is answered after all", body = ReviewDecided),
        (status = 404, description = "no such entry", body = ErrorBody),
        (status = 409, description = "already decided otherwise", body = ErrorBody),
        (status = "4XX", description = "the request is wrong, or not the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn approve_review(
    State(st): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReviewDecision>,
) -> Result<Json<ReviewDecided>, ApiError> {
    st.admin(&headers)?;
    let id = review_id(&id)?;
    let ms = st.budget_ms(&headers, None)?;
    let o = st
        .call(ms, st.service.approve_review(id, body.allow_word, &body.by))
        .await?;
    Ok(Json(convert::review_outcome(&o).into()))
}

#[utoipa::path(
    post, path = "/v1/admin/reviews/{id}/confirm", tag = "admin",
    params(("id" = u64, Path, description = "the review entry's id")),
    request_body = ReviewDecision,
    responses(
        (status = 200, description = "the block stands", body = ReviewDecided),
        (status = 404, description = "no such entry", body = ErrorBody),
        (status = 409, description = "already decided otherwise", body = ErrorBody),
        (status = "4XX", description = "the request is wrong, or not the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn confirm_review(
    State(st): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReviewDecision>,
) -> Result<Json<ReviewDecided>, ApiError> {
    st.admin(&headers)?;
    let id = review_id(&id)?;
    if body.allow_word {
        return Err(ApiError::invalid(
            "allow_word",
            "allow_word applies to approve only: a confirmed block allows nothing",
        ));
    }
    let ms = st.budget_ms(&headers, None)?;
    let o = st.call(ms, st.service.confirm_review(id, &body.by)).await?;
    Ok(Json(convert::review_outcome(&o).into()))
}

#[utoipa::path(
    get, path = "/v1/admin/handoffs", tag = "admin",
    params(HandoffsQuery),
    responses(
        (status = 200, description = "open and claimed handoffs, oldest first", body = HandoffList),
        (status = "4XX", description = "401 / 403 without the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_handoffs(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<HandoffsQuery>,
) -> Result<Json<HandoffList>, ApiError> {
    st.admin(&headers)?;
    let ms = st.budget_ms(&headers, None)?;
    let items = st.call(ms, st.service.list_handoffs(&q.bot_id)).await?;
    Ok(Json(HandoffList {
        items: items
            .iter()
            .map(|e| convert::handoff_entry(e).into())
            .collect(),
    }))
}

#[utoipa::path(
    post, path = "/v1/admin/handoffs/claim", tag = "admin",
    request_body = HandoffAction,
    responses(
        (status = 200, description = "claimed (or already the agent's)", body = HandoffActed),
        (status = 404, description = "no such open handoff", body = ErrorBody),
        (status = 409, description = "another agent holds it", body = ErrorBody),
        (status = "4XX", description = "the request is wrong, or not the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn claim_handoff(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<HandoffAction>,
) -> Result<Json<HandoffActed>, ApiError> {
    st.admin(&headers)?;
    let ms = st.budget_ms(&headers, None)?;
    let call = st
        .service
        .claim_handoff(&b.bot_id, &b.chat_id, b.id, &b.agent);
    let h = st.call(ms, call).await?;
    let r = convert::handoff_action(&b.bot_id, &b.chat_id, h);
    Ok(Json(HandoffActed {
        item: r.item.map(Into::into),
    }))
}

#[utoipa::path(
    post, path = "/v1/admin/handoffs/close", tag = "admin",
    request_body = HandoffAction,
    responses(
        (status = 200, description = "closed", body = HandoffActed),
        (status = 404, description = "no such open handoff", body = ErrorBody),
        (status = "4XX", description = "the request is wrong, or not the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn close_handoff(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<HandoffAction>,
) -> Result<Json<HandoffActed>, ApiError> {
    st.admin(&headers)?;
    let ms = st.budget_ms(&headers, None)?;
    let call = st
        .service
        .close_handoff(&b.bot_id, &b.chat_id, b.id, &b.agent);
    let h = st.call(ms, call).await?;
    let r = convert::handoff_action(&b.bot_id, &b.chat_id, h);
    Ok(Json(HandoffActed {
        item: r.item.map(Into::into),
    }))
}
