//! HandleEvent: a group event (join, leave, link click, card share, activity) goes to the
//! playbook; its outcome is logged like a message. An event with an `event_id` is idempotent
//! like a message (see [`super::idempotency`]).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::idempotency::{self, AnswerKey, FirstAnswer};
use super::replay::{KeyedBy, Replayable};
use super::requests::EventRequest;
use super::validate;
use super::{Service, ServiceError};
use crate::policy::events::{EventDecision, EventInput, EventKind};
use crate::store::{AnswerKind, ConversationRecord, FeedbackKind, FeedbackRecord, Record};

/// Everything a front door needs to answer a HandleEvent call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventOutcome {
    pub event: EventDecision,
    /// The stored first answer to this (bot_id, event_id), returned again for a retry.
    pub replayed: bool,
    /// Why this event was not deduplicated (it has no event_id), for the caller to see.
    pub idempotency_notice: Option<String>,
}

/// Said in the answer to an event without an `event_id`.
pub const NOT_DEDUPLICATED: &str =
    "not deduplicated: the event has no event_id, so a retry is decided again";

impl Replayable for EventOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

const BY_EVENT: KeyedBy = KeyedBy {
    what: "event",
    field: "event_id",
    reused: "event_id reused with another event: it was answered before for another type, \
             chat, user or target (within idempotency.window_s); send a new event_id",
};

impl Service {
    pub async fn handle_event(&self, ev: &EventRequest) -> Result<EventOutcome, ServiceError> {
        let _permit = self.admit(1)?;
        let input = validate::event(ev, &self.settings.limits, self.now_ms(), |b| {
            self.known_bot(b)
        })?;
        let credit = self.click_credit(ev, &input)?;
        if !self.idempotency.enabled() {
            return self.decide_event(&input, None, credit).await;
        }
        if input.event_id.is_empty() {
            let mut outcome = self.decide_event(&input, None, credit).await?;
            outcome.idempotency_notice = Some(NOT_DEDUPLICATED.into());
            return Ok(outcome);
        }
        let key = AnswerKey::new(&input.bot_id, AnswerKind::Event, &input.event_id);
        let digest = idempotency::digest(&[
            input.kind.as_str(),
            &input.chat_id,
            &input.user.id,
            &input.target_id,
            &ev.reply_to,
        ]);
        let _turn = self.idempotency.turn(&key).await;
        if let Some(first) = self.first_answer(&key, &digest, &BY_EVENT).await? {
            return Ok(first);
        }
        self.decide_event(&input, Some((key, digest)), credit).await
    }

    /// A LINK_CLICKED / CARD_SHARED naming the message whose reply carried it: the click it
    /// credits (checked before deciding, so a wrong id changes nothing).
    fn click_credit(
        &self,
        ev: &EventRequest,
        input: &EventInput,
    ) -> Result<Option<FeedbackRecord>, ServiceError> {
        if ev.reply_to.is_empty() {
            return Ok(None);
        }
        validate::check_id("reply_to", &ev.reply_to, false, &self.settings.limits)?;
        if !matches!(input.kind, EventKind::LinkClicked | EventKind::CardShared) {
            return Err(validate::InvalidField {
                field: "reply_to".into(),
                problem: format!(
                    "applies to LINK_CLICKED and CARD_SHARED only, not {}",
                    input.kind.as_str()
                ),
            }
            .into());
        }
        let Some(storage) = &self.storage else {
            return Ok(None); // nothing is logged, so there is nothing to credit
        };
        if !storage
            .store()
            .has_message(&input.bot_id, &ev.reply_to)
            .map_err(|e| ServiceError::Unavailable(format!("store: {e}")))?
        {
            return Err(ServiceError::NotFound(format!(
                "reply_to: no logged message {} of bot {} (a message id, or the id of a proactive send)",
                validate::shown(&ev.reply_to),
                input.bot_id
            )));
        }
        Ok(Some(FeedbackRecord {
            bot_id: input.bot_id.clone(),
            message_id: ev.reply_to.clone(),
            kind: FeedbackKind::Clicked,
            variant_id: String::new(),
            at_ms: input.at_ms,
        }))
    }

    /// Decides, logs (with the first answer when the event is keyed) and remembers.
    async fn decide_event(
        &self,
        input: &EventInput,
        keyed: Option<(AnswerKey, String)>,
        credit: Option<FeedbackRecord>,
    ) -> Result<EventOutcome, ServiceError> {
        let started = Instant::now();
        let decision = self.playbook.handle_event(input).await?;
        let outcome = EventOutcome {
            event: decision,
            replayed: false,
            idempotency_notice: None,
        };
        let first = keyed.map(|(key, digest)| {
            let answer = FirstAnswer {
                at_ms: self.now_ms(),
                digest,
                // Plain data: serialising cannot fail.
                body: serde_json::to_string(&outcome).expect("EventOutcome serialises"),
            };
            (key, answer)
        });
        if let Some(storage) = &self.storage {
            let mut rec = ConversationRecord::from_event(input, &outcome.event.decision);
            rec.answer = first.as_ref().map(|(k, a)| a.to_row(k));
            if let Some(click) = credit {
                // Before the event's row, in the same group commit: answered means credited.
                if let Err(e) = storage.submit(Record::Feedback(click)) {
                    tracing::warn!(error = %e, "click credit not stored");
                }
            }
            match storage.submit(Record::Conversation(rec)) {
                Ok(t) => {
                    if let Err(e) = t.await {
                        tracing::error!(error = %e, "event row not stored");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "event row not stored"),
            }
        }
        if let Some((key, answer)) = first {
            self.idempotency.remember(key, answer);
        }
        self.outbound_changed.notify_waiters();
        self.metrics.observe_request(
            "HandleEvent",
            "policy",
            outcome.event.decision.action.as_str(),
            started.elapsed().as_secs_f64(),
        );
        Ok(outcome)
    }
}
