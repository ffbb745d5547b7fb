//! The plain requests the service takes, as a front door received them (not yet validated:
//! [`super::validate`] checks every field against its limit).

use crate::policy::events::EventKind;
use crate::store::FeedbackKind;
use crate::types::UserInfo;

/// One message to classify, as a front door received it (not yet validated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassifyRequest {
    pub bot_id: String,
    pub chat_id: String,
    pub chat_name: String,
    pub message_id: String,
    pub text: String,
    /// Unix ms; 0 means now.
    pub sent_at_ms: i64,
    pub user: Option<UserInfo>,
}

/// The event type as the caller sent it: front doors map their own enum spelling here, and
/// validation turns anything but `Known` into a clear error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EventTypeIn {
    #[default]
    Missing,
    /// A value this server does not know (shown in the error as received).
    Unknown(String),
    Known(EventKind),
}

/// One group event, as a front door received it (not yet validated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventRequest {
    pub bot_id: String,
    pub chat_id: String,
    pub chat_name: String,
    pub kind: EventTypeIn,
    pub user: Option<UserInfo>,
    /// Link or card id for LINK_CLICKED / CARD_SHARED.
    pub target_id: String,
    /// Unix ms; 0 means now.
    pub at_ms: i64,
    pub event_id: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedbackRequest {
    pub bot_id: String,
    pub message_id: String,
    /// None: the caller sent no kind, or one this server does not know.
    pub kind: Option<FeedbackKind>,
    pub variant_id: String,
    /// Unix ms; 0 means now.
    pub at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HumanReplyRequest {
    pub bot_id: String,
    pub chat_id: String,
    pub message_id: String,
    /// Unix ms; 0 means now.
    pub at_ms: i64,
    /// The handoff this reply answers (from the handoff list); None: the oldest open one.
    pub handoff_id: Option<u64>,
}
