//! `/v1/admin/inbox` and `/v1/admin/labels.yml`: the labelling inbox over HTTP/JSON, for the
//! admin token only (AdminService's ListInbox / LabelMessage / ExportLabels, translated
//! through the protobuf messages).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::{ApiJson, ApiQuery, HttpState};
use crate::pb;
use crate::server::convert;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
pub struct InboxQuery {
    /// Only this bot (empty: every bot).
    pub bot_id: String,
    /// Unix ms; 0: the beginning of the log.
    pub from_ms: i64,
    /// Unix ms; 0: now.
    pub to_ms: i64,
    /// Answered below this confidence is "low confidence" (0 < x <= 1; 0 or absent: 0.6).
    pub below_confidence: f32,
    /// Also list messages that already have a label.
    pub include_labelled: bool,
}

/// One logged message in the inbox (proto `InboxItem`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InboxItem {
    /// What `POST /v1/admin/inbox/{conversation_id}/label` names.
    pub conversation_id: i64,
    pub bot_id: String,
    pub chat_id: String,
    pub at_ms: i64,
    /// PII redacted.
    pub text: String,
    /// The engine's intent ("" when none).
    pub intent: String,
    pub confidence: f32,
    pub action: String,
    pub reason: String,
    /// low_confidence, clarify, not_understood, unhelpful.
    pub why: Vec<String>,
    /// The intent an operator assigned ("" when none).
    pub label: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InboxGroup {
    /// "" when the engine recognised nothing.
    pub likely_intent: String,
    pub items: Vec<InboxItem>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Inbox {
    /// The largest group first.
    pub groups: Vec<InboxGroup>,
}

impl From<pb::InboxResponse> for Inbox {
    fn from(r: pb::InboxResponse) -> Self {
        let action = |v: i32| {
            pb::Action::try_from(v)
                .map(|a| a.as_str_name().to_string())
                .unwrap_or_default()
        };
        Inbox {
            groups: r
                .groups
                .into_iter()
                .map(|g| InboxGroup {
                    likely_intent: g.likely_intent,
                    items: g
                        .items
                        .into_iter()
                        .map(|i| InboxItem {
                            conversation_id: i.conversation_id,
                            bot_id: i.bot_id,
                            chat_id: i.chat_id,
                            at_ms: i.at_ms,
                            text: i.text,
                            intent: i.intent,
                            confidence: i.confidence,
                            action: action(i.action),
                            reason: i.reason,
                            why: i.why,
                            label: i.label,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Body of a label.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LabelBody {
    /// One of intents.yml.
    pub intent: String,
    /// Who labels (1..64 characters).
    pub by: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Labelled {
    pub conversation_id: i64,
    pub intent: String,
    pub text: String,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
pub struct ExportQuery {
    /// Only this bot's labels (empty: every bot).
    pub bot_id: String,
}

#[utoipa::path(
    get, path = "/v1/admin/inbox", tag = "admin",
    params(InboxQuery),
    responses(
        (status = 200, description = "what the bot did not understand well, by likely intent", body = Inbox),
        (status = "4XX", description = "the query is wrong, or not the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<InboxQuery>,
) -> Result<Json<Inbox>, ApiError> {
    st.admin(&headers)?;
    let ms = st.budget_ms(&headers, None)?;
    let q = convert::inbox_query(pb::InboxRequest {
        bot_id: q.bot_id,
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        below_confidence: q.below_confidence,
        include_labelled: q.include_labelled,
    });
    let groups = st.call(ms, st.service.label_inbox(&q)).await?;
    Ok(Json(convert::inbox(groups).into()))
}

#[utoipa::path(
    post, path = "/v1/admin/inbox/{conversation_id}/label", tag = "admin",
    params(("conversation_id" = i64, Path, description = "the inbox item's conversation_id")),
    request_body = LabelBody,
    responses(
        (status = 200, description = "labelled (again: the label is replaced)", body = Labelled),
        (status = 404, description = "no such logged message", body = ErrorBody),
        (status = "4XX", description = "the request is wrong (an unknown intent names the known ones), or not the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn label(
    State(st): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<LabelBody>,
) -> Result<Json<Labelled>, ApiError> {
    st.admin(&headers)?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::invalid(
            "conversation_id",
            format!("conversation_id '{id}' is not a whole number (see GET /v1/admin/inbox)"),
        )
    })?;
    let ms = st.budget_ms(&headers, None)?;
    let l = st
        .call(ms, st.service.assign_label(id, &body.intent, &body.by))
        .await?;
    let r = convert::label(l);
    Ok(Json(Labelled {
        conversation_id: r.conversation_id,
        intent: r.intent,
        text: r.text,
    }))
}

#[utoipa::path(
    get, path = "/v1/admin/labels.yml", tag = "admin",
    params(ExportQuery),
    responses(
        (status = 200, description = "the labels as Rasa NLU YAML (`intentd train` reads it)", body = String, content_type = "application/yaml"),
        (status = "4XX", description = "not the admin token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<impl IntoResponse, ApiError> {
    st.admin(&headers)?;
    st.service.labels_here()?;
    let (yaml, _) = st.service.export_labels(&q.bot_id);
    Ok((
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        yaml,
    ))
}
