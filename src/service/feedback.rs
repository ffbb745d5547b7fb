//! Feedback (an outcome reported for a decision) and ReportHumanReply (a human agent answered
//! in a group): both are validated, recorded and committed before the answer.

use super::requests::{FeedbackRequest, HumanReplyRequest};
use super::validate::{self, InvalidField};
use super::{Service, ServiceError};
use crate::store::{self, Record};

impl Service {
    /// Records feedback; true once it is committed.
    pub async fn feedback(&self, req: &FeedbackRequest) -> Result<bool, ServiceError> {
        self.observed("Feedback", self.feedback_inner(req)).await
    }

    async fn feedback_inner(&self, req: &FeedbackRequest) -> Result<bool, ServiceError> {
        let limits = &self.settings.limits;
        self.check_bot(&req.bot_id)?;
        validate::check_id("message_id", &req.message_id, true, limits)?;
        validate::check_id("variant_id", &req.variant_id, false, limits)?;
        let at_ms = validate::report_time(req.at_ms, self.now_ms(), limits)?;
        let kind = req.kind.ok_or_else(|| InvalidField {
            field: "kind".into(),
            problem: "must be RESOLVED, UNRESOLVED, THUMBS_UP, THUMBS_DOWN or CLICKED".into(),
        })?;
        let storage = self
            .storage
            .as_ref()
            .ok_or_else(|| ServiceError::FailedPrecondition("the store is disabled".into()))?;
        // Feedback counts toward resolution and A/B results: it must name a logged decision.
        let known = storage
            .store()
            .has_message(&req.bot_id, &req.message_id)
            .map_err(|e| {
                ServiceError::Unavailable(format!("cannot look the message up ({e}); retry"))
            })?;
        if !known {
            return Err(ServiceError::NotFound(format!(
                "message_id: no decision for message '{}' of bot '{}' is in the log (never \
                 classified here, or purged by retention)",
                validate::shown(&req.message_id),
                req.bot_id
            )));
        }
        let rec = store::FeedbackRecord {
            bot_id: req.bot_id.clone(),
            message_id: req.message_id.clone(),
            kind,
            variant_id: req.variant_id.clone(),
            at_ms,
        };
        commit(storage, Record::Feedback(rec)).await?;
        Ok(true)
    }

    /// Tells the playbook a human answered (handoff bookkeeping) and records it; true once it
    /// is committed, false when the store is off.
    pub async fn human_reply(&self, req: &HumanReplyRequest) -> Result<bool, ServiceError> {
        self.observed("ReportHumanReply", self.human_reply_inner(req))
            .await
    }

    async fn human_reply_inner(&self, req: &HumanReplyRequest) -> Result<bool, ServiceError> {
        let limits = &self.settings.limits;
        self.check_bot(&req.bot_id)?;
        validate::check_id("chat_id", &req.chat_id, true, limits)?;
        validate::check_id("message_id", &req.message_id, false, limits)?;
        let at_ms = validate::report_time(req.at_ms, self.now_ms(), limits)?;
        let closed = self
            .playbook
            .record_human_reply(&req.bot_id, &req.chat_id, req.handoff_id)
            .await?;
        if let Some(h) = closed {
            self.audit(
                "human_reply",
                store::AuditAction::HandoffClosed,
                &format!(
                    "handoff close id={} bot={} chat={} claimed_by={} opened_ms={}",
                    h.id, req.bot_id, req.chat_id, h.claimed_by, h.opened_ms
                ),
            );
        }
        let Some(storage) = &self.storage else {
            return Ok(false);
        };
        let rec = store::HumanReplyRecord {
            bot_id: req.bot_id.clone(),
            chat_id: req.chat_id.clone(),
            message_id: req.message_id.clone(),
            at_ms,
        };
        commit(storage, Record::HumanReply(rec)).await?;
        Ok(true)
    }
}

/// Submits one record and waits for its group commit.
async fn commit(storage: &store::Storage, rec: Record) -> Result<(), ServiceError> {
    storage
        .submit(rec)?
        .await
        .map_err(|e| ServiceError::Internal(format!("store: {e}")))
}
