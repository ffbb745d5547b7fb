//! Every mapping between protobuf and the service's plain types, written once: requests in,
//! outcomes out, enums, timings, stats, and service errors to gRPC status codes.

use tonic::Status;

use crate::pb;
use crate::policy::events::EventKind;
use crate::policy::handoff::OpenHandoff;
use crate::policy::operator_desk::HandoffEntry;
use crate::policy::scheduler::{OutboundItem, OutboundKind};
use crate::service::desk::{ReviewEntry, ReviewOutcome};
use crate::service::events::EventOutcome;
use crate::service::labels::{InboxGroup, InboxQuery, Label, DEFAULT_BELOW_CONFIDENCE};
use crate::service::{
    ClassifyOutcome, ClassifyRequest, EventRequest, EventTypeIn, FeedbackRequest,
    HumanReplyRequest, ServiceError,
};
use crate::store::ab_report::AbResult;
use crate::store::stats::{GroupStats, Rates, StatsQuery, StatsReport};
use crate::store::FeedbackKind;
use crate::types::{Action, PolicyDecision, ReplyOut, Source, Timings, UserInfo};

/// The gRPC code of a service error: the one mapping both front doors use (HTTP maps the code
/// to its status in `http::error`).
pub fn code(e: &ServiceError) -> tonic::Code {
    match e {
        ServiceError::Invalid(_) => tonic::Code::InvalidArgument,
        ServiceError::Busy(_) => tonic::Code::ResourceExhausted,
        ServiceError::Unavailable(_) => tonic::Code::Unavailable,
        ServiceError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
        ServiceError::NotFound(_) => tonic::Code::NotFound,
        ServiceError::Internal(_) => tonic::Code::Internal,
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let code = code(&e);
        if code == tonic::Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Requests in

fn user(u: pb::User) -> UserInfo {
    UserInfo {
        id: u.id,
        nickname: u.nickname,
        tags: u.tags,
        city: u.city,
        vip_level: u.vip_level,
    }
}

pub fn classify_request(r: pb::ClassifyRequest) -> ClassifyRequest {
    ClassifyRequest {
        bot_id: r.bot_id,
        chat_id: r.chat_id,
        chat_name: r.chat_name,
        message_id: r.message_id,
        text: r.text,
        sent_at_ms: r.sent_at_ms,
        user: r.user.map(user),
    }
}

pub fn event_kind(v: i32) -> EventTypeIn {
    match pb::EventType::try_from(v) {
        Ok(pb::EventType::Unspecified) => EventTypeIn::Missing,
        Ok(pb::EventType::MemberJoined) => EventTypeIn::Known(EventKind::MemberJoined),
        Ok(pb::EventType::MemberLeft) => EventTypeIn::Known(EventKind::MemberLeft),
        Ok(pb::EventType::LinkClicked) => EventTypeIn::Known(EventKind::LinkClicked),
        Ok(pb::EventType::CardShared) => EventTypeIn::Known(EventKind::CardShared),
        Ok(pb::EventType::Activity) => EventTypeIn::Known(EventKind::Activity),
        Err(_) => EventTypeIn::Unknown(v.to_string()),
    }
}

pub fn event_request(e: pb::Event) -> EventRequest {
    EventRequest {
        kind: event_kind(e.r#type),
        bot_id: e.bot_id,
        chat_id: e.chat_id,
        chat_name: e.chat_name,
        user: e.user.map(user),
        target_id: e.target_id,
        at_ms: e.at_ms,
        event_id: e.event_id,
    }
}

/// UNSPECIFIED and unknown values are None (the service says which values are allowed).
pub fn feedback_kind(v: i32) -> Option<FeedbackKind> {
    match pb::FeedbackKind::try_from(v).ok()? {
        pb::FeedbackKind::Unspecified => None,
        pb::FeedbackKind::Resolved => Some(FeedbackKind::Resolved),
        pb::FeedbackKind::Unresolved => Some(FeedbackKind::Unresolved),
        pb::FeedbackKind::ThumbsUp => Some(FeedbackKind::ThumbsUp),
        pb::FeedbackKind::ThumbsDown => Some(FeedbackKind::ThumbsDown),
        pb::FeedbackKind::Clicked => Some(FeedbackKind::Clicked),
    }
}

pub fn feedback_request(r: pb::FeedbackRequest) -> FeedbackRequest {
    FeedbackRequest {
        kind: feedback_kind(r.kind),
        bot_id: r.bot_id,
        message_id: r.message_id,
        variant_id: r.variant_id,
        at_ms: r.at_ms,
    }
}

pub fn human_reply_request(r: pb::HumanReplyRequest) -> HumanReplyRequest {
    HumanReplyRequest {
        bot_id: r.bot_id,
        chat_id: r.chat_id,
        message_id: r.message_id,
        at_ms: r.at_ms,
        // Handoff ids start at 1, so proto3's default 0 means "not given".
        handoff_id: (r.handoff_id != 0).then_some(r.handoff_id),
    }
}

pub fn stats_query(r: pb::StatsRequest) -> StatsQuery {
    StatsQuery {
        bot_id: r.bot_id,
        chat_id: r.chat_id,
        from_ms: r.from_ms,
        to_ms: r.to_ms,
        experiment: r.experiment,
    }
}

// ---------------------------------------------------------------------------------------------
// Outcomes out

pub fn source(s: Source) -> pb::Source {
    match s {
        Source::Model => pb::Source::Model,
        Source::Keyword => pb::Source::Keyword,
        Source::Regex => pb::Source::Regex,
        Source::Fallback => pb::Source::Fallback,
        Source::Policy => pb::Source::Policy,
    }
}

pub fn action(a: Action) -> pb::Action {
    match a {
        Action::Reply => pb::Action::Reply,
        Action::Clarify => pb::Action::Clarify,
        Action::Handoff => pb::Action::Handoff,
        Action::Block => pb::Action::Block,
        Action::Ignore => pb::Action::Ignore,
    }
}

pub fn reply(r: &ReplyOut) -> pb::Reply {
    pb::Reply {
        text: r.text.clone(),
        variant_id: r.variant_id.clone(),
        style: r.style.clone(),
        experiment: r.experiment.clone(),
    }
}

pub fn timings(t: Timings) -> pb::Timings {
    pb::Timings {
        tokenize_us: t.tokenize_us,
        inference_us: t.inference_us,
        total_us: t.total_us,
        queue_us: t.queue_us,
    }
}

pub fn classify_response(r: ClassifyOutcome) -> pb::ClassifyResponse {
    let c = r.classification;
    pb::ClassifyResponse {
        intent: c.intent,
        confidence: c.confidence,
        ranking: r
            .ranking
            .into_iter()
            .map(|s| pb::IntentScore {
                intent: s.intent,
                confidence: s.confidence,
                display_name: s.display_name,
            })
            .collect(),
        source: source(c.source) as i32,
        matched_terms: c.matched_terms,
        action: action(r.decision.action) as i32,
        reply: r.decision.reply.as_ref().map(reply),
        send_after_ms: r.decision.send_after_ms,
        model_version: r.model_version,
        timings: Some(timings(r.timings)),
        truncated: c.truncated,
        reason: r.decision.reason,
        model_loaded: c.model_loaded,
        message_id: r.message_id,
        notices: r.decision.notices,
        recorded: r.recorded,
        replayed: r.replayed,
        entities: c.entities.into_iter().map(entity).collect(),
    }
}

fn entity(e: crate::types::Entity) -> pb::Entity {
    use crate::types::EntitySource as S;
    pb::Entity {
        entity: e.entity,
        value: e.value,
        canonical: e.canonical,
        // Texts are far below 4 G code points (limits.max_text_chars).
        start: u32::try_from(e.start).unwrap_or(u32::MAX),
        end: u32::try_from(e.end).unwrap_or(u32::MAX),
        source: match e.source {
            S::Builtin => pb::EntitySource::Builtin,
            S::Lookup => pb::EntitySource::Lookup,
            S::Synonym => pb::EntitySource::Synonym,
            S::Regex => pb::EntitySource::Regex,
        } as i32,
    }
}

pub fn event_decision(o: EventOutcome) -> pb::Decision {
    let d = o.event;
    pb::Decision {
        action: action(d.decision.action) as i32,
        reply: d.decision.reply.as_ref().map(reply),
        send_after_ms: d.decision.send_after_ms,
        reason: d.decision.reason,
        merged_user_ids: d.merged_user_ids,
        replayed: o.replayed,
        idempotency_notice: o.idempotency_notice.unwrap_or_default(),
    }
}

/// A message decision on its own (an approved review's answer).
pub fn decision(d: &PolicyDecision) -> pb::Decision {
    pb::Decision {
        action: action(d.action) as i32,
        reply: d.reply.as_ref().map(reply),
        send_after_ms: d.send_after_ms,
        reason: d.reason.clone(),
        merged_user_ids: Vec::new(),
        replayed: false,
        idempotency_notice: String::new(),
    }
}

pub fn review_entry(e: &ReviewEntry) -> pb::ReviewEntry {
    let r = &e.item;
    let v = r.verdict.as_ref();
    pb::ReviewEntry {
        id: e.id,
        at_ms: r.at_ms,
        bot_id: r.bot_id.clone(),
        chat_id: r.chat_id.clone(),
        user_id: r.user_id.clone(),
        message_id: r.message_id.clone(),
        text: r.text.clone(),
        matched: r.matched.clone(),
        reason: r.reason.clone(),
        verdict: match v {
            None => "",
            Some(v) if v.approved => "approved",
            Some(_) => "confirmed",
        }
        .to_string(),
        decided_by: v.map(|v| v.by.clone()).unwrap_or_default(),
        decided_ms: v.map_or(0, |v| v.at_ms),
        allowed_word: v.is_some_and(|v| v.allowed_word),
    }
}

pub fn review_outcome(o: &ReviewOutcome) -> pb::ReviewDecisionResponse {
    pb::ReviewDecisionResponse {
        item: Some(review_entry(&o.entry)),
        answer: o.answer.as_ref().map(decision),
    }
}

pub fn handoff_entry(e: &HandoffEntry) -> pb::HandoffEntry {
    let h = &e.handoff;
    pb::HandoffEntry {
        bot_id: e.bot_id.clone(),
        chat_id: e.chat_id.clone(),
        chat_name: e.chat_name.clone(),
        id: h.id,
        opened_ms: h.opened_ms,
        user_id: h.user_id.clone(),
        message_id: h.message_id.clone(),
        reason: h.reason.clone(),
        wait_minutes: h.wait_minutes,
        state: if h.claimed() { "claimed" } else { "open" }.to_string(),
        claimed_by: h.claimed_by.clone(),
        claimed_ms: h.claimed_ms,
        expires_ms: e.expires_ms.unwrap_or(0),
    }
}

pub fn inbox_query(r: pb::InboxRequest) -> InboxQuery {
    InboxQuery {
        bot_id: r.bot_id,
        from_ms: r.from_ms,
        to_ms: r.to_ms,
        below_confidence: if r.below_confidence == 0.0 {
            DEFAULT_BELOW_CONFIDENCE
        } else {
            r.below_confidence
        },
        include_labelled: r.include_labelled,
    }
}

pub fn inbox(groups: Vec<InboxGroup>) -> pb::InboxResponse {
    pb::InboxResponse {
        groups: groups
            .into_iter()
            .map(|g| pb::InboxGroup {
                likely_intent: g.likely_intent,
                items: g
                    .items
                    .into_iter()
                    .map(|i| pb::InboxItem {
                        conversation_id: i.conversation_id,
                        bot_id: i.bot_id,
                        chat_id: i.chat_id,
                        at_ms: i.at_ms,
                        text: i.text,
                        intent: i.intent,
                        confidence: i.confidence,
                        action: action(i.action) as i32,
                        reason: i.reason,
                        why: i.why.iter().map(|w| w.to_string()).collect(),
                        label: i.label.unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub fn label(l: Label) -> pb::LabelResponse {
    pb::LabelResponse {
        conversation_id: l.conversation_id,
        intent: l.intent,
        text: l.text,
    }
}

/// A handoff after a claim or close, in the list's form.
pub fn handoff_action(bot_id: &str, chat_id: &str, h: OpenHandoff) -> pb::HandoffActionResponse {
    pb::HandoffActionResponse {
        item: Some(handoff_entry(&HandoffEntry {
            bot_id: bot_id.to_string(),
            chat_id: chat_id.to_string(),
            chat_name: String::new(),
            expires_ms: None,
            handoff: h,
        })),
    }
}

pub fn outbound(item: &OutboundItem) -> pb::Outbound {
    pb::Outbound {
        bot_id: item.bot_id.clone(),
        chat_id: item.chat_id.clone(),
        kind: match item.kind {
            OutboundKind::Scheduled => pb::OutboundKind::Scheduled,
            OutboundKind::Countdown => pb::OutboundKind::Countdown,
            OutboundKind::Reactivation => pb::OutboundKind::Reactivation,
            OutboundKind::DelayedReply => pb::OutboundKind::DelayedReply,
            OutboundKind::Welcome => pb::OutboundKind::Welcome,
        } as i32,
        reply: Some(reply(&item.reply)),
        send_at_ms: item.send_at_ms,
        rule_id: item.rule_id.clone(),
        user_ids: item.user_ids.clone(),
    }
}

pub fn rates(r: &Rates) -> pb::Rates {
    let c = &r.counts;
    pb::Rates {
        messages: c.messages,
        triggers: c.triggers,
        auto_replies: c.auto_replies,
        handoffs: c.handoffs,
        human_replies: c.human_replies,
        blocks: c.blocks,
        resolved: c.resolved,
        unresolved: c.unresolved,
        clicks: c.clicks,
        thumbs_up: c.thumbs_up,
        thumbs_down: c.thumbs_down,
        response_rate: r.response_rate,
        resolution_rate: r.resolution_rate,
        conversion_rate: r.conversion_rate,
        satisfaction: r.satisfaction,
        human_share: r.human_share,
        human_share_target: r.human_share_target,
    }
}

fn groups(gs: &[GroupStats]) -> Vec<pb::GroupStats> {
    gs.iter()
        .map(|g| pb::GroupStats {
            key: g.key.clone(),
            rates: Some(rates(&g.rates)),
        })
        .collect()
}

pub fn ab_report(r: &AbResult) -> pb::AbReport {
    pb::AbReport {
        experiment: r.experiment.clone(),
        variants: r
            .variants
            .iter()
            .map(|v| pb::VariantResult {
                variant_id: v.variant_id.clone(),
                exposures: v.exposures,
                conversions: v.conversions,
                rate: v.rate,
            })
            .collect(),
        chi_square: r.chi_square,
        p_value: r.p_value,
        significant: r.significant,
        winner: r.winner.clone().unwrap_or_default(),
        warning: r.warning.clone(),
        min_sample: r.min_sample,
    }
}

pub fn stats_response(r: &StatsReport) -> pb::StatsResponse {
    pb::StatsResponse {
        total: Some(rates(&r.total)),
        by_chat: groups(&r.by_chat),
        by_intent: groups(&r.by_intent),
        by_variant: groups(&r.by_variant),
        experiments: r.experiments.iter().map(ab_report).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_kind_rejects_unspecified_and_unknown() {
        assert_eq!(
            feedback_kind(pb::FeedbackKind::Clicked as i32),
            Some(FeedbackKind::Clicked)
        );
        assert_eq!(feedback_kind(0), None);
        assert_eq!(feedback_kind(99), None);
    }

    #[test]
    fn event_types_map_each_value() {
        assert_eq!(event_kind(0), EventTypeIn::Missing);
        assert_eq!(event_kind(42), EventTypeIn::Unknown("42".into()));
        assert_eq!(
            event_kind(pb::EventType::CardShared as i32),
            EventTypeIn::Known(EventKind::CardShared)
        );
    }

    #[test]
    fn every_action_and_source_has_a_proto_value() {
        for a in Action::ALL {
            assert_ne!(action(a), pb::Action::Unspecified);
        }
        for s in Source::ALL {
            assert_ne!(source(s), pb::Source::Unspecified);
        }
    }

    #[test]
    fn ab_report_without_winner_is_empty_string() {
        let r = AbResult {
            experiment: "zeta".into(),
            variants: vec![],
            chi_square: 0.0,
            degrees_of_freedom: 0,
            p_value: 1.0,
            significant: false,
            winner: None,
            warning: String::new(),
            min_sample: 5000,
        };
        let p = ab_report(&r);
        assert_eq!(
            (p.experiment.as_str(), p.winner.as_str(), p.min_sample),
            ("zeta", "", 5000)
        );
    }
}
