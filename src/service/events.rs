//! HandleEvent: a group event (join, leave, link click, card share, activity) goes to the
//! playbook; its outcome is logged like a message.

use std::time::Instant;

use super::requests::EventRequest;
use super::validate;
use super::{Service, ServiceError};
use crate::policy::events::EventDecision;
use crate::store::{ConversationRecord, Record};

impl Service {
    pub async fn handle_event(&self, ev: &EventRequest) -> Result<EventDecision, ServiceError> {
        let _permit = self.admit(1)?;
        let started = Instant::now();
        let input = validate::event(ev, &self.settings.limits, self.now_ms(), |b| {
            self.known_bot(b)
        })?;
        let decision = self.playbook.handle_event(&input).await?;
        if let Some(storage) = &self.storage {
            let rec = ConversationRecord::from_event(&input, &decision.decision);
            match storage.submit(Record::Conversation(rec)) {
                Ok(t) => {
                    if let Err(e) = t.await {
                        tracing::error!(error = %e, "event row not stored");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "event row not stored"),
            }
        }
        self.outbound_changed.notify_waiters();
        self.metrics.observe_request(
            "HandleEvent",
            "policy",
            decision.decision.action.as_str(),
            started.elapsed().as_secs_f64(),
        );
        Ok(decision)
    }
}
