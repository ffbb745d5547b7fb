//! The operators' desk (console and admin RPCs): the review queue of blocked messages and the
//! open handoffs. A review is approved (a false positive: the message is answered after all,
//! and its word may be allowed in that group) or confirmed (the block stands); a handoff is
//! claimed by an agent, then closed by them (or by `ReportHumanReply` naming it). Every action
//! is written to the audit trail with who and when.

use super::classify::local_now;
use super::validate;
use super::{Service, ServiceError};
use crate::policy::compliance::{ReviewError, ReviewItem};
use crate::policy::handoff::{HandoffError, OpenHandoff};
use crate::policy::operator_desk::HandoffEntry;
use crate::policy::scheduler::{OutboundItem, OutboundKind};
use crate::store::AuditAction;
use crate::types::{MessageContext, PolicyDecision, Timings, UserInfo};

/// Longest operator name kept in a verdict or a claim.
pub const MAX_AGENT_CHARS: usize = 64;

/// A review entry and its id (for approve / confirm).
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewEntry {
    pub id: u64,
    pub item: ReviewItem,
}

/// What approving or confirming did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewOutcome {
    pub entry: ReviewEntry,
    /// For an approval recorded by this call: the decision the message gets now (its reply,
    /// if any, is queued for the bot's Subscribe stream). None for a confirmation or a repeat.
    pub answer: Option<PolicyDecision>,
}

fn review_error(e: ReviewError) -> ServiceError {
    match e {
        ReviewError::NotFound(_) => ServiceError::NotFound(e.to_string()),
        ReviewError::AlreadyDecided { .. } => ServiceError::FailedPrecondition(e.to_string()),
    }
}

fn handoff_error(e: HandoffError) -> ServiceError {
    match e {
        HandoffError::NotFound { .. } => ServiceError::NotFound(e.to_string()),
        HandoffError::ClaimedByOther { .. } => ServiceError::FailedPrecondition(e.to_string()),
    }
}

/// An operator's name: 1..=64 characters, no control characters.
pub fn check_agent(field: &str, name: &str) -> Result<(), ServiceError> {
    let n = name.chars().count();
    let problem = if name.trim().is_empty() {
        "is empty: say who acts (an operator name)".to_string()
    } else if n > MAX_AGENT_CHARS {
        format!("is {n} characters, more than the limit of {MAX_AGENT_CHARS}")
    } else if name.chars().any(char::is_control) {
        "contains control characters".to_string()
    } else {
        return Ok(());
    };
    Err(validate::InvalidField {
        field: field.to_string(),
        problem,
    }
    .into())
}

impl Service {
    /// An operator's action is answered once it is on disk (a kill -9 right after the answer
    /// must not undo it).
    async fn stored(&self) -> Result<(), ServiceError> {
        self.flush_state()
            .await
            .map_err(|e| ServiceError::Unavailable(format!("the action is not stored yet: {e}")))
    }

    /// Review entries, oldest first (`pending_only`: those waiting for a verdict).
    pub async fn list_reviews(&self, pending_only: bool) -> Result<Vec<ReviewEntry>, ServiceError> {
        let all = self.playbook.reviews(pending_only).await?;
        Ok(all
            .into_iter()
            .map(|(id, item)| ReviewEntry { id, item })
            .collect())
    }

    /// A blocked message was a false positive: it is answered after all (as if compliance had
    /// let it through) and, with `allow_word`, its banned word is allowed in that group from
    /// now on. A repeat by the same operator changes nothing.
    pub async fn approve_review(
        &self,
        id: u64,
        allow_word: bool,
        by: &str,
    ) -> Result<ReviewOutcome, ServiceError> {
        check_agent("by", by)?;
        // The verdict, the answer's state change and its outbox entry commit together.
        let together = match &self.storage {
            Some(s) => Some(s.hold_change().await),
            None => None,
        };
        let decided = self
            .playbook
            .decide_review(id, true, allow_word, by)
            .await?
            .map_err(review_error)?;
        let item = decided.item;
        let answer = if decided.changed {
            self.audit(
                by,
                AuditAction::Review,
                &format!(
                    "review approve id={id} bot={} chat={} allow_word={allow_word} reason={}",
                    item.bot_id, item.chat_id, item.reason
                ),
            );
            Some(self.answer_approved(id, &item).await?)
        } else {
            None
        };
        drop(together);
        self.stored().await?;
        Ok(ReviewOutcome {
            entry: ReviewEntry { id, item },
            answer,
        })
    }

    /// The block of a review entry stands.
    pub async fn confirm_review(&self, id: u64, by: &str) -> Result<ReviewOutcome, ServiceError> {
        check_agent("by", by)?;
        let decided = self
            .playbook
            .decide_review(id, false, false, by)
            .await?
            .map_err(review_error)?;
        if decided.changed {
            let item = &decided.item;
            self.audit(
                by,
                AuditAction::Review,
                &format!(
                    "review confirm id={id} bot={} chat={} reason={}",
                    item.bot_id, item.chat_id, item.reason
                ),
            );
        }
        self.stored().await?;
        Ok(ReviewOutcome {
            entry: ReviewEntry {
                id,
                item: decided.item,
            },
            answer: None,
        })
    }

    /// Decides an approved message as if compliance had let it through, and queues its reply
    /// (at the slot group spacing gave it) for the bot's Subscribe stream, addressed to the
    /// user. The text is the stored, PII-redacted one.
    async fn answer_approved(
        &self,
        id: u64,
        item: &ReviewItem,
    ) -> Result<PolicyDecision, ServiceError> {
        let rules = self.operator.load_full();
        let now = self.now_ms();
        let ctx = MessageContext {
            bot_id: item.bot_id.clone(),
            chat_id: item.chat_id.clone(),
            chat_name: String::new(),
            message_id: item.message_id.clone(),
            text: item.text.clone(),
            at_ms: now,
            sent_at_ms: item.at_ms,
            user: UserInfo {
                id: item.user_id.clone(),
                ..Default::default()
            },
        };
        let mut timings = Timings::default();
        let mut version = self.model_version();
        let mut cls = self
            .classify_text(&ctx.text, &rules, None, &mut timings, &mut version)
            .await?;
        let tz = rules.policy.settings(&ctx.bot_id, &ctx.chat_id).timezone;
        cls.entities = rules.entities.extract(&ctx.text, local_now(tz, now));
        let always = |i: &str| rules.always_handoff(i);
        let decision = self
            .playbook
            .decide_approved_on(
                &rules.policy,
                &ctx,
                &cls,
                &|i: &str| rules.display_name(i),
                &always,
            )
            .await?;
        if let Some(reply) = decision.reply.clone().filter(|r| !r.text.is_empty()) {
            let mut reply = reply;
            // Notices (the automation disclosure on first contact) go first, as with a reply.
            for n in decision.notices.iter().rev() {
                reply.text = format!("{n}\n{}", reply.text);
            }
            let out = OutboundItem {
                bot_id: item.bot_id.clone(),
                chat_id: item.chat_id.clone(),
                kind: OutboundKind::DelayedReply,
                reply,
                send_at_ms: now + decision.send_after_ms,
                rule_id: format!("review:{id}"),
                user_ids: vec![item.user_id.clone()],
                id: String::new(),
            }
            .with_id();
            self.queue_outbound(out).await;
        }
        Ok(decision)
    }

    /// Open and claimed handoffs (of `bot_id` when not empty), oldest first.
    pub async fn list_handoffs(&self, bot_id: &str) -> Result<Vec<HandoffEntry>, ServiceError> {
        let bot = (!bot_id.is_empty()).then_some(bot_id);
        Ok(self.playbook.handoffs(bot).await?)
    }

    /// An agent takes a handoff (claiming one's own again is fine; another agent's is refused).
    pub async fn claim_handoff(
        &self,
        bot_id: &str,
        chat_id: &str,
        id: u64,
        agent: &str,
    ) -> Result<OpenHandoff, ServiceError> {
        self.check_handoff_ids(bot_id, chat_id, agent)?;
        let h = self
            .playbook
            .claim_handoff(bot_id, chat_id, id, agent)
            .await?
            .map_err(handoff_error)?;
        self.audit(
            agent,
            AuditAction::HandoffClaimed,
            &format!("handoff claim id={id} bot={bot_id} chat={chat_id}"),
        );
        self.stored().await?;
        Ok(h)
    }

    /// An agent is done with a handoff.
    pub async fn close_handoff(
        &self,
        bot_id: &str,
        chat_id: &str,
        id: u64,
        agent: &str,
    ) -> Result<OpenHandoff, ServiceError> {
        self.check_handoff_ids(bot_id, chat_id, agent)?;
        let h = self
            .playbook
            .close_handoff(bot_id, chat_id, id, agent)
            .await?
            .map_err(handoff_error)?;
        self.audit(
            agent,
            AuditAction::HandoffClosed,
            &format!(
                "handoff close id={id} bot={bot_id} chat={chat_id} claimed_by={} opened_ms={}",
                h.claimed_by, h.opened_ms
            ),
        );
        self.stored().await?;
        Ok(h)
    }

    fn check_handoff_ids(
        &self,
        bot_id: &str,
        chat_id: &str,
        agent: &str,
    ) -> Result<(), ServiceError> {
        let limits = &self.settings.limits;
        validate::check_id("bot_id", bot_id, true, limits)?;
        validate::check_id("chat_id", chat_id, true, limits)?;
        check_agent("agent", agent)
    }
}
