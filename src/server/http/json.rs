//! The JSON bodies of the HTTP front door. They mirror the protobuf messages field for field
//! (snake_case names, enums as their proto value names such as "REPLY" or "MEMBER_JOINED"), and
//! convert to and from them, so `super::super::convert` stays the one mapping to the service.
//! Every request field is optional like in proto3 (missing = empty); the service says which
//! ones are required. Unknown fields are errors (a typo must not be silently ignored).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::pb;

// ---------------------------------------------------------------------------------------------
// Enums, as they appear in the schema (requests carry them as strings so an unknown value gets
// the service's error naming the field and the allowed values).

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Reply,
    Clarify,
    Handoff,
    Block,
    Ignore,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Source {
    Model,
    Keyword,
    Regex,
    Fallback,
    Policy,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntitySource {
    EntitySourceBuiltin,
    EntitySourceLookup,
    EntitySourceSynonym,
    EntitySourceRegex,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    MemberJoined,
    MemberLeft,
    LinkClicked,
    CardShared,
    Activity,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FeedbackKind {
    Resolved,
    Unresolved,
    ThumbsUp,
    ThumbsDown,
    Clicked,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundKind {
    Scheduled,
    Countdown,
    Reactivation,
    DelayedReply,
    Welcome,
}

/// A proto enum value by name; "" and unknown names are the UNSPECIFIED value 0 with the name
/// kept, so the service can say what was received.
fn enum_in(name: &str, parse: impl Fn(&str) -> Option<i32>) -> Result<i32, String> {
    if name.is_empty() {
        return Ok(0);
    }
    parse(name)
        .filter(|v| *v != 0)
        .ok_or_else(|| name.to_string())
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct User {
    pub id: String,
    pub nickname: String,
    pub tags: Vec<String>,
    pub city: String,
    pub vip_level: u32,
}

impl From<User> for pb::User {
    fn from(u: User) -> Self {
        pb::User {
            id: u.id,
            nickname: u.nickname,
            tags: u.tags,
            city: u.city,
            vip_level: u.vip_level,
        }
    }
}

/// One message to classify (proto `ClassifyRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyRequest {
    pub bot_id: String,
    /// The group (or a private chat).
    pub chat_id: String,
    /// Group display name, for {group_name} in replies.
    pub chat_name: String,
    /// The platform's message id: a retry with the same id gets the first answer (`replayed`).
    pub message_id: String,
    pub text: String,
    /// Unix milliseconds; 0 means now.
    pub sent_at_ms: i64,
    pub user: Option<User>,
    /// Deadline for this call in ms (also `X-Timeout-Ms`), bounded by the server's
    /// `request_timeout_ms`.
    pub timeout_ms: Option<u64>,
}

impl From<ClassifyRequest> for pb::ClassifyRequest {
    fn from(r: ClassifyRequest) -> Self {
        pb::ClassifyRequest {
            bot_id: r.bot_id,
            chat_id: r.chat_id,
            message_id: r.message_id,
            text: r.text,
            sent_at_ms: r.sent_at_ms,
            user: r.user.map(Into::into),
            chat_name: r.chat_name,
        }
    }
}

/// Several messages at once (proto `ClassifyBatchRequest`); answered in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifyBatchRequest {
    pub requests: Vec<ClassifyRequest>,
    pub timeout_ms: Option<u64>,
}

/// A group event (proto `Event`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Event {
    pub bot_id: String,
    pub chat_id: String,
    pub chat_name: String,
    #[serde(rename = "type")]
    #[schema(value_type = EventType)]
    pub kind: String,
    pub user: Option<User>,
    /// Link or card id for LINK_CLICKED / CARD_SHARED.
    pub target_id: String,
    /// Unix milliseconds; 0 means now.
    pub at_ms: i64,
    /// The platform's event id: a retry with the same id gets the first answer.
    pub event_id: String,
    pub timeout_ms: Option<u64>,
}

impl Event {
    /// The proto event, and the type name when it is not a known value.
    pub fn into_pb(self) -> (pb::Event, Option<String>) {
        let (kind, unknown) = match enum_in(&self.kind, |n| {
            pb::EventType::from_str_name(n).map(|v| v as i32)
        }) {
            Ok(v) => (v, None),
            Err(name) => (0, Some(name)),
        };
        (
            pb::Event {
                bot_id: self.bot_id,
                chat_id: self.chat_id,
                r#type: kind,
                user: self.user.map(Into::into),
                target_id: self.target_id,
                at_ms: self.at_ms,
                chat_name: self.chat_name,
                event_id: self.event_id,
            },
            unknown,
        )
    }
}

/// Outcome of an answered message (proto `FeedbackRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackRequest {
    pub bot_id: String,
    pub message_id: String,
    #[schema(value_type = FeedbackKind)]
    pub kind: String,
    pub variant_id: String,
    pub at_ms: i64,
    pub timeout_ms: Option<u64>,
}

impl From<FeedbackRequest> for pb::FeedbackRequest {
    fn from(r: FeedbackRequest) -> Self {
        pb::FeedbackRequest {
            bot_id: r.bot_id,
            message_id: r.message_id,
            // Unknown names become UNSPECIFIED: the service names the field and the values.
            kind: enum_in(&r.kind, |n| {
                pb::FeedbackKind::from_str_name(n).map(|v| v as i32)
            })
            .unwrap_or(0),
            variant_id: r.variant_id,
            at_ms: r.at_ms,
        }
    }
}

/// A human answered in the chat (proto `HumanReplyRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HumanReplyRequest {
    pub bot_id: String,
    pub chat_id: String,
    pub message_id: String,
    pub at_ms: i64,
    /// The handoff this reply answers (`GET /v1/admin/handoffs`); 0 or absent: the oldest open
    /// one in the chat.
    pub handoff_id: u64,
    pub timeout_ms: Option<u64>,
}

impl From<HumanReplyRequest> for pb::HumanReplyRequest {
    fn from(r: HumanReplyRequest) -> Self {
        pb::HumanReplyRequest {
            bot_id: r.bot_id,
            chat_id: r.chat_id,
            message_id: r.message_id,
            at_ms: r.at_ms,
            handoff_id: r.handoff_id,
        }
    }
}

/// `GET /v1/stats` query parameters (proto `StatsRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    pub bot_id: String,
    /// Empty: all groups of the bot.
    pub chat_id: String,
    /// Unix ms; 0: the beginning.
    pub from_ms: i64,
    /// Unix ms; 0: now.
    pub to_ms: i64,
    /// Empty: every experiment.
    pub experiment: String,
    pub timeout_ms: Option<u64>,
}

impl From<StatsQuery> for pb::StatsRequest {
    fn from(r: StatsQuery) -> Self {
        pb::StatsRequest {
            bot_id: r.bot_id,
            chat_id: r.chat_id,
            from_ms: r.from_ms,
            to_ms: r.to_ms,
            experiment: r.experiment,
        }
    }
}

/// `GET /v1/outbound` query parameters (proto `SubscribeRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutboundQuery {
    pub bot_id: String,
    /// Comma-separated chat ids; empty: every chat of the bot.
    pub chat_ids: String,
}

impl OutboundQuery {
    pub fn chat_ids(&self) -> Vec<String> {
        self.chat_ids
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

fn name<E>(
    v: i32,
    parse: impl Fn(i32) -> Result<E, prost::UnknownEnumValue>,
    str_name: impl Fn(&E) -> &'static str,
) -> String {
    parse(v)
        .map(|e| str_name(&e).to_string())
        .unwrap_or_else(|_| v.to_string())
}

fn action_name(v: i32) -> String {
    name(v, pb::Action::try_from, |a| a.as_str_name())
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IntentScore {
    pub intent: String,
    pub confidence: f32,
    pub display_name: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reply {
    pub text: String,
    /// "<intent>/<variant>" or "<experiment>/<variant>".
    pub variant_id: String,
    pub style: String,
    /// Non-empty when the variant came from an A/B experiment.
    pub experiment: String,
}

impl From<pb::Reply> for Reply {
    fn from(r: pb::Reply) -> Self {
        Reply {
            text: r.text,
            variant_id: r.variant_id,
            style: r.style,
            experiment: r.experiment,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Timings {
    pub tokenize_us: u64,
    pub inference_us: u64,
    pub total_us: u64,
    pub queue_us: u64,
}

/// The classification and the bot's decision (proto `ClassifyResponse`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClassifyResponse {
    pub intent: String,
    pub confidence: f32,
    pub ranking: Vec<IntentScore>,
    #[schema(value_type = Source)]
    pub source: String,
    pub matched_terms: Vec<String>,
    #[schema(value_type = Action)]
    pub action: String,
    /// Null when the action sends nothing.
    pub reply: Option<Reply>,
    pub send_after_ms: i64,
    pub model_version: String,
    pub timings: Timings,
    /// The text was longer than the model's token limit.
    pub truncated: bool,
    /// Why this action (e.g. "banned_word", "cooldown", "handoff:intent").
    pub reason: String,
    /// False: served from rules only.
    pub model_loaded: bool,
    pub message_id: String,
    /// Extra texts to send before the reply (e.g. the automation disclosure).
    pub notices: Vec<String>,
    /// The decision is durably logged (false: store off or its queue full).
    pub recorded: bool,
    /// The stored first answer to this (bot_id, message_id), returned again for a retry.
    pub replayed: bool,
    /// Entities in the text, in text order (overlaps resolved: longest, then most specific).
    pub entities: Vec<Entity>,
}

/// One entity in the message (proto `Entity`). Offsets are Unicode code points (not bytes,
/// not UTF-16 code units): the characters `[start, end)` of the request text are `value`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Entity {
    /// order_id, phone, amount, date, time, datetime, a lookup table name or an operator
    /// regex entity name.
    pub entity: String,
    /// The text as written.
    pub value: String,
    /// Normalised: digits, a decimal amount, an ISO date / time in the bot's time zone, a
    /// synonym's canonical term; else the value.
    pub canonical: String,
    /// First code point.
    pub start: u32,
    /// One past the last code point.
    pub end: u32,
    #[schema(value_type = EntitySource)]
    pub source: String,
}

impl From<pb::ClassifyResponse> for ClassifyResponse {
    fn from(r: pb::ClassifyResponse) -> Self {
        ClassifyResponse {
            intent: r.intent,
            confidence: r.confidence,
            ranking: r
                .ranking
                .into_iter()
                .map(|s| IntentScore {
                    intent: s.intent,
                    confidence: s.confidence,
                    display_name: s.display_name,
                })
                .collect(),
            source: name(r.source, pb::Source::try_from, |s| s.as_str_name()),
            matched_terms: r.matched_terms,
            action: action_name(r.action),
            reply: r.reply.map(Into::into),
            send_after_ms: r.send_after_ms,
            model_version: r.model_version,
            timings: r
                .timings
                .map(|t| Timings {
                    tokenize_us: t.tokenize_us,
                    inference_us: t.inference_us,
                    total_us: t.total_us,
                    queue_us: t.queue_us,
                })
                .unwrap_or_default(),
            truncated: r.truncated,
            reason: r.reason,
            model_loaded: r.model_loaded,
            message_id: r.message_id,
            notices: r.notices,
            recorded: r.recorded,
            replayed: r.replayed,
            entities: r
                .entities
                .into_iter()
                .map(|e| Entity {
                    entity: e.entity,
                    value: e.value,
                    canonical: e.canonical,
                    start: e.start,
                    end: e.end,
                    source: name(e.source, pb::EntitySource::try_from, |s| s.as_str_name()),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClassifyBatchResponse {
    pub responses: Vec<ClassifyResponse>,
}

/// The decision on an event (proto `Decision`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Decision {
    #[schema(value_type = Action)]
    pub action: String,
    pub reply: Option<Reply>,
    pub send_after_ms: i64,
    pub reason: String,
    /// Welcomes merged into this one.
    pub merged_user_ids: Vec<String>,
    pub replayed: bool,
    /// Why this event was not deduplicated (empty when it was).
    pub idempotency_notice: String,
}

impl From<pb::Decision> for Decision {
    fn from(d: pb::Decision) -> Self {
        Decision {
            action: action_name(d.action),
            reply: d.reply.map(Into::into),
            send_after_ms: d.send_after_ms,
            reason: d.reason,
            merged_user_ids: d.merged_user_ids,
            replayed: d.replayed,
            idempotency_notice: d.idempotency_notice,
        }
    }
}

/// A proactive send (proto `Outbound`): the `data` of each `outbound` SSE event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Outbound {
    pub bot_id: String,
    pub chat_id: String,
    #[schema(value_type = OutboundKind)]
    pub kind: String,
    pub reply: Option<Reply>,
    pub send_at_ms: i64,
    pub rule_id: String,
    /// Users the send addresses, for @-mentions (empty for group-wide sends).
    pub user_ids: Vec<String>,
}

impl From<pb::Outbound> for Outbound {
    fn from(o: pb::Outbound) -> Self {
        Outbound {
            bot_id: o.bot_id,
            chat_id: o.chat_id,
            kind: name(o.kind, pb::OutboundKind::try_from, |k| k.as_str_name()),
            reply: o.reply.map(Into::into),
            send_at_ms: o.send_at_ms,
            rule_id: o.rule_id,
            user_ids: o.user_ids,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Recorded {
    pub recorded: bool,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Rates {
    pub messages: u64,
    /// Messages with an intent that has a reply.
    pub triggers: u64,
    pub auto_replies: u64,
    pub handoffs: u64,
    pub human_replies: u64,
    pub blocks: u64,
    pub resolved: u64,
    pub unresolved: u64,
    pub clicks: u64,
    pub thumbs_up: u64,
    pub thumbs_down: u64,
    pub response_rate: f64,
    pub resolution_rate: f64,
    pub conversion_rate: f64,
    pub satisfaction: f64,
    pub human_share: f64,
    pub human_share_target: f64,
}

impl From<pb::Rates> for Rates {
    fn from(r: pb::Rates) -> Self {
        Rates {
            messages: r.messages,
            triggers: r.triggers,
            auto_replies: r.auto_replies,
            handoffs: r.handoffs,
            human_replies: r.human_replies,
            blocks: r.blocks,
            resolved: r.resolved,
            unresolved: r.unresolved,
            clicks: r.clicks,
            thumbs_up: r.thumbs_up,
            thumbs_down: r.thumbs_down,
            response_rate: r.response_rate,
            resolution_rate: r.resolution_rate,
            conversion_rate: r.conversion_rate,
            satisfaction: r.satisfaction,
            human_share: r.human_share,
            human_share_target: r.human_share_target,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GroupStats {
    /// Chat id, intent or variant id.
    pub key: String,
    pub rates: Rates,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VariantResult {
    pub variant_id: String,
    pub exposures: u64,
    pub conversions: u64,
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AbReport {
    pub experiment: String,
    pub variants: Vec<VariantResult>,
    pub chi_square: f64,
    pub p_value: f64,
    pub significant: bool,
    /// Empty unless significant and above the minimum sample.
    pub winner: String,
    pub warning: String,
    pub min_sample: u64,
}

/// Counts and rates (proto `StatsResponse`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatsResponse {
    pub total: Rates,
    pub by_chat: Vec<GroupStats>,
    pub by_intent: Vec<GroupStats>,
    pub by_variant: Vec<GroupStats>,
    pub experiments: Vec<AbReport>,
}

fn groups(gs: Vec<pb::GroupStats>) -> Vec<GroupStats> {
    gs.into_iter()
        .map(|g| GroupStats {
            key: g.key,
            rates: g.rates.map(Into::into).unwrap_or_default(),
        })
        .collect()
}

impl From<pb::StatsResponse> for StatsResponse {
    fn from(r: pb::StatsResponse) -> Self {
        StatsResponse {
            total: r.total.map(Into::into).unwrap_or_default(),
            by_chat: groups(r.by_chat),
            by_intent: groups(r.by_intent),
            by_variant: groups(r.by_variant),
            experiments: r
                .experiments
                .into_iter()
                .map(|e| AbReport {
                    experiment: e.experiment,
                    variants: e
                        .variants
                        .into_iter()
                        .map(|v| VariantResult {
                            variant_id: v.variant_id,
                            exposures: v.exposures,
                            conversions: v.conversions,
                            rate: v.rate,
                        })
                        .collect(),
                    chi_square: e.chi_square,
                    p_value: e.p_value,
                    significant: e.significant,
                    winner: e.winner,
                    warning: e.warning,
                    min_sample: e.min_sample,
                })
                .collect(),
        }
    }
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// "ok" (live / ready) or "not_ready" (see `reason`).
    pub status: String,
    pub model_loaded: bool,
    pub model_version: String,
    /// Why not ready (no model loaded yet: rules only; the store fails every commit; shutting
    /// down); empty when ready.
    pub reason: String,
}
