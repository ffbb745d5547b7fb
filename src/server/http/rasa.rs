//! Rasa compatibility: `POST /model/parse` answers in the shape Rasa's HTTP API documents
//! (`text`, `intent {name, confidence}`, `intent_ranking`, `entities`), so a front end that calls
//! Rasa switches by changing the URL and the token. intentd's own answer (the action, the reply,
//! the reason, ...) rides along under one extra key, `intentd`.
//!
//! Unlike Rasa's parse, this runs the whole decision and logs it like `POST /v1/classify`.
//! - bot: the token's bot; with the admin token or auth disabled, `bot_id` or the only
//!   configured bot.
//! - chat: `chat_id`, else Rasa's `sender_id`, else [`DEFAULT_CHAT_ID`]; user: `sender_id`,
//!   else [`DEFAULT_USER_ID`].
//! - `message_id`: without one, a fresh id is generated, so such calls are never deduplicated
//!   (a retry is decided again; `intentd.message_id_generated` says so).
//! - token: `Authorization: Bearer <token>` or Rasa's `?token=<token>`.
//!
//! Entities come in Rasa's shape (`entity`, `start`, `end`, `value`, `extractor`,
//! `confidence_entity`), offsets in Unicode code points like Rasa's Python string indices:
//! - lookup-table and operator regex entities: `extractor: RegexEntityExtractor` (the Rasa
//!   component that matches lookup tables and regexes), `value` as written;
//! - a synonym variant: `value` is the canonical term and `processors: [EntitySynonymMapper]`,
//!   as Rasa's synonym mapper does;
//! - built-in entities (order_id, phone, amount, date, time, datetime): `extractor:
//!   IntentdBuiltinExtractor`, `value` the normalised value and `text` as written, the way
//!   Rasa's Duckling extractor reports resolved values.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::json;
use super::{ApiJson, ApiQuery, HttpState};
use crate::server::auth::Caller;
use crate::server::convert;
use crate::service::ClassifyRequest;
use crate::types::UserInfo;

/// The chat of a parse call that names none (no `chat_id`, no `sender_id`).
pub const DEFAULT_CHAT_ID: &str = "rasa-default";
/// The user of a parse call without `sender_id`.
pub const DEFAULT_USER_ID: &str = "rasa-user";

/// Rasa's parse request, plus the fields intentd needs that Rasa has not. Unknown fields are
/// ignored, as Rasa does.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ParseRequest {
    pub text: String,
    /// Recommended: a retry with the same id gets the first answer. Without one, a fresh id is
    /// generated and the call is not deduplicated.
    pub message_id: Option<String>,
    /// The conversation (Rasa's sender); used as the chat when `chat_id` is absent.
    pub sender_id: Option<String>,
    pub chat_id: Option<String>,
    /// Only with the admin token or auth disabled (a bot token names its bot).
    pub bot_id: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// Rasa's query parameters: `token` (instead of the Authorization header) and
/// `emulation_mode` (accepted and ignored: the answer is always Rasa's shape).
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct ParseQuery {
    pub token: Option<String>,
    pub emulation_mode: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RasaIntent {
    pub name: String,
    pub confidence: f32,
}

/// intentd's whole answer, as `POST /v1/classify` gives it, plus the parse call's own facts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IntentdExtra {
    #[serde(flatten)]
    pub answer: json::ClassifyResponse,
    pub bot_id: String,
    pub chat_id: String,
    /// The request had no `message_id`: one was generated and the call is not deduplicated.
    pub message_id_generated: bool,
}

/// One entity as Rasa reports it. Offsets are Unicode code points.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RasaEntity {
    pub entity: String,
    pub start: u32,
    pub end: u32,
    /// The canonical term for a synonym, the normalised value for a built-in entity, else the
    /// text as written.
    pub value: String,
    /// Built-in entities: the text as written (Duckling's `text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub extractor: String,
    pub confidence_entity: f32,
    /// `["EntitySynonymMapper"]` when `value` is a synonym's canonical term.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<String>,
}

impl RasaEntity {
    fn from_answer(e: &json::Entity) -> Self {
        let synonym = e.source == "ENTITY_SOURCE_SYNONYM"
            || (e.source == "ENTITY_SOURCE_REGEX" && e.canonical != e.value);
        let builtin = e.source == "ENTITY_SOURCE_BUILTIN";
        RasaEntity {
            entity: e.entity.clone(),
            start: e.start,
            end: e.end,
            value: if synonym || builtin {
                e.canonical.clone()
            } else {
                e.value.clone()
            },
            text: builtin.then(|| e.value.clone()),
            extractor: if builtin {
                "IntentdBuiltinExtractor"
            } else {
                "RegexEntityExtractor"
            }
            .to_string(),
            confidence_entity: 1.0,
            processors: if synonym {
                vec!["EntitySynonymMapper".to_string()]
            } else {
                Vec::new()
            },
        }
    }
}

/// Rasa's documented parse result.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ParseResponse {
    pub text: String,
    pub intent: RasaIntent,
    pub intent_ranking: Vec<RasaIntent>,
    /// Entities in Rasa's shape (see the module doc).
    pub entities: Vec<RasaEntity>,
    pub intentd: IntentdExtra,
}

#[utoipa::path(
    post, path = "/model/parse", tag = "rasa",
    request_body = ParseRequest,
    params(ParseQuery),
    responses(
        (status = 200, description = "Rasa's parse result, with intentd's answer under `intentd`", body = ParseResponse),
        (status = "4XX", description = "the request is wrong", body = ErrorBody),
        (status = "5XX", description = "503 / 504", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn parse(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ParseQuery>,
    ApiJson(body): ApiJson<ParseRequest>,
) -> Result<Json<ParseResponse>, ApiError> {
    let who = match (
        &q.token,
        headers.contains_key(axum::http::header::AUTHORIZATION),
    ) {
        (Some(t), false) => st
            .auth
            .caller_from(Some(format!("Bearer {t}").as_bytes()))?,
        _ => st.caller(&headers)?,
    };
    let ms = st.budget_ms(&headers, body.timeout_ms)?;
    let bot_id = bot_of(&st, &who, body.bot_id.as_deref())?;
    let sender = body.sender_id.filter(|s| !s.is_empty());
    let chat_id = body
        .chat_id
        .filter(|c| !c.is_empty())
        .or(sender.clone())
        .unwrap_or_else(|| DEFAULT_CHAT_ID.to_string());
    let user = UserInfo {
        id: sender.unwrap_or_else(|| DEFAULT_USER_ID.to_string()),
        ..Default::default()
    };
    let (message_id, generated) = match body.message_id.filter(|m| !m.is_empty()) {
        Some(m) => (m, false),
        None => (format!("rasa-{:016x}", rand::random::<u64>()), true),
    };
    let req = ClassifyRequest {
        bot_id: bot_id.clone(),
        chat_id: chat_id.clone(),
        message_id,
        text: body.text.clone(),
        user: Some(user),
        ..Default::default()
    };
    let r = st.call(ms, st.service.classify(&req)).await?;
    let answer: json::ClassifyResponse = convert::classify_response(r).into();
    Ok(Json(ParseResponse {
        text: body.text,
        intent: RasaIntent {
            name: answer.intent.clone(),
            confidence: answer.confidence,
        },
        intent_ranking: answer
            .ranking
            .iter()
            .map(|s| RasaIntent {
                name: s.intent.clone(),
                confidence: s.confidence,
            })
            .collect(),
        entities: answer
            .entities
            .iter()
            .map(RasaEntity::from_answer)
            .collect(),
        intentd: IntentdExtra {
            answer,
            bot_id,
            chat_id,
            message_id_generated: generated,
        },
    }))
}

/// The bot a parse call acts for (see the module comment).
fn bot_of(st: &HttpState, who: &Caller, asked: Option<&str>) -> Result<String, ApiError> {
    let asked = asked.filter(|b| !b.is_empty());
    if let Caller::Bot(b) = who {
        if let Some(a) = asked {
            who.check_bot(a)?;
        }
        return Ok(b.clone());
    }
    if let Some(a) = asked {
        return Ok(a.to_string());
    }
    match st.service.settings.bots.as_slice() {
        [only] => Ok(only.clone()),
        bots => Err(ApiError::invalid(
            "bot_id",
            format!(
                "bot_id: required when the token does not name a bot and {} bots are configured",
                bots.len()
            ),
        )),
    }
}
