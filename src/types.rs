//! Plain data passed between the layers: front doors translate protobuf into these, the engine
//! produces a `Classification`, the policy turns it into a `PolicyDecision`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserInfo {
    pub id: String,
    pub nickname: String,
    pub tags: Vec<String>,
    pub city: String,
    pub vip_level: u32,
}

/// One inbound message with its context, already validated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageContext {
    pub bot_id: String,
    pub chat_id: String,
    pub chat_name: String,
    pub message_id: String,
    pub text: String,
    /// Unix ms when the server received the message: what the log, the audit trail and
    /// retention go by (a client's clock cannot date a record into the purge).
    pub at_ms: i64,
    /// Unix ms when the caller says the message was sent (0 when it did not say); kept as
    /// information, within `limits.max_past_skew_ms` / `max_future_skew_ms` of the server.
    #[serde(default)]
    pub sent_at_ms: i64,
    pub user: UserInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Model,
    Keyword,
    Regex,
    Fallback,
    Policy,
    /// The bot spoke first (welcome, schedule, countdown, re-activation, push): a logged
    /// proactive send, not a message.
    Proactive,
}

impl Source {
    pub const ALL: [Source; 6] = [
        Source::Model,
        Source::Keyword,
        Source::Regex,
        Source::Fallback,
        Source::Policy,
        Source::Proactive,
    ];

    /// The one spelling used in metrics labels, the log and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Model => "model",
            Source::Keyword => "keyword",
            Source::Regex => "regex",
            Source::Fallback => "fallback",
            Source::Policy => "policy",
            Source::Proactive => "proactive",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Reply,
    Clarify,
    Handoff,
    Block,
    Ignore,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Reply,
        Action::Clarify,
        Action::Handoff,
        Action::Block,
        Action::Ignore,
    ];

    /// The one spelling used in metrics labels, the log and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reply => "reply",
            Action::Clarify => "clarify",
            Action::Handoff => "handoff",
            Action::Block => "block",
            Action::Ignore => "ignore",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Per-stage timings of a Classify call, in microseconds: answered to the caller and stored
/// with the log row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    pub tokenize_us: u64,
    pub inference_us: u64,
    pub queue_us: u64,
    pub total_us: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentScore {
    pub intent: String,
    pub confidence: f32,
}

/// What the engine (model + keyword layer + fusion) concluded about a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// Best intent; empty when nothing was recognised (then `source` is `Fallback`).
    pub intent: String,
    pub confidence: f32,
    /// Top-k, best first.
    pub ranking: Vec<IntentScore>,
    pub source: Source,
    /// Keywords / synonyms / regex names that matched.
    pub matched_terms: Vec<String>,
    /// True when the fusion could not decide and the user should be asked to clarify;
    /// `ranking` then holds the candidates to offer.
    pub needs_clarification: bool,
    /// The text was cut to the model's token limit.
    pub truncated: bool,
    pub model_loaded: bool,
    /// Entities found in the text (engine/entities), in text order. Offsets are Unicode code
    /// points. Answers stored before entities existed read back with none.
    #[serde(default)]
    pub entities: Vec<Entity>,
    /// What the model alone said, before fusion with the keyword rules: its top-k
    /// probabilities, best first (the decision trace shows them next to `ranking`). Empty when
    /// no model is loaded or the playbook decided before classification; answers stored before
    /// it existed read back with none.
    #[serde(default)]
    pub model_ranking: Vec<IntentScore>,
}

impl Classification {
    /// The playbook decided before any classification (a banned word): no intent.
    pub fn by_policy(model_loaded: bool) -> Self {
        Self {
            intent: String::new(),
            confidence: 1.0,
            ranking: Vec::new(),
            source: Source::Policy,
            matched_terms: Vec::new(),
            needs_clarification: false,
            truncated: false,
            model_loaded,
            entities: Vec::new(),
            model_ranking: Vec::new(),
        }
    }
}

/// Which extractor found an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntitySource {
    /// A built-in pattern: order numbers, phone numbers, amounts, dates and times.
    Builtin,
    /// An element of a `lookup` table in the training data.
    Lookup,
    /// A `synonym` variant of a lookup element: `canonical` is the synonym's canonical value.
    Synonym,
    /// A regex entity declared by the operator (`config/operator/entities.yml`).
    Regex,
}

impl EntitySource {
    pub const ALL: [EntitySource; 4] = [
        EntitySource::Builtin,
        EntitySource::Lookup,
        EntitySource::Synonym,
        EntitySource::Regex,
    ];

    /// The one spelling used in JSON and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            EntitySource::Builtin => "builtin",
            EntitySource::Lookup => "lookup",
            EntitySource::Synonym => "synonym",
            EntitySource::Regex => "regex",
        }
    }
}

/// One entity in a message. `start..end` is a range of Unicode code points (not bytes, not
/// UTF-16 units), Rasa's convention: `text.chars().skip(start).take(end - start)` is `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// The entity type: `order_id`, `phone`, `amount`, `date`, `time`, `datetime`, a lookup
    /// table's name or an operator regex entity's name.
    pub entity: String,
    /// The text as written.
    pub value: String,
    /// The normalised value: digits of a phone or order number, a decimal amount, an ISO
    /// date / time, a synonym's canonical term; `value` itself when there is nothing to change.
    pub canonical: String,
    pub start: usize,
    pub end: usize,
    pub source: EntitySource,
}

/// A rendered reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplyOut {
    pub text: String,
    /// "<intent>/<variant>" or "<experiment>/<variant>".
    pub variant_id: String,
    pub style: String,
    /// Non-empty when the variant came from an A/B experiment.
    pub experiment: String,
}

/// What the bot should do with a message or event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDecision {
    pub action: Action,
    pub reply: Option<ReplyOut>,
    /// Wait this long (from the decision time) before sending, for group spacing.
    pub send_after_ms: i64,
    /// Machine-readable reason, e.g. "faq", "banned_word", "handoff:intent", "cooldown".
    pub reason: String,
    /// Texts to send before the reply (e.g. the automation disclosure on first contact).
    pub notices: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        for s in Source::ALL {
            assert_eq!(Source::parse(s.as_str()), Some(s));
        }
        assert_eq!(Action::parse("nope"), None);
    }
}
