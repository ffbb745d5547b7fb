//! What the operators' console does to the playbook's state: the review queue of blocked
//! messages (approve a false positive, optionally allowing its word in that group; confirm a
//! block) and the handoff desk (list, claim, close). Bookkeeping on the state rows only; the
//! service answers approved messages and writes the audit trail.

use super::compliance::{ReviewError, ReviewItem, ReviewVerdict};
use super::decision::Work;
use super::handoff::{GroupHandoffs, HandoffError, OpenHandoff};
use super::playbook::{transact, Playbook};
use super::state::{Decided, GroupKey, Scope, StateError};

/// An open or claimed handoff with the group it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffEntry {
    pub bot_id: String,
    pub chat_id: String,
    /// The group's name as last reported (may be empty).
    pub chat_name: String,
    pub handoff: OpenHandoff,
    /// When an unclaimed handoff stops counting (opened + `open_ttl_minutes`); None once
    /// claimed: it waits for its agent.
    pub expires_ms: Option<i64>,
}

impl Playbook {
    /// Review entries with their ids, oldest first; `pending_only` leaves out decided ones.
    pub async fn reviews(&self, pending_only: bool) -> Result<Vec<(u64, ReviewItem)>, StateError> {
        let mut all = self.state.reviews().await?;
        if pending_only {
            all.retain(|(_, r)| r.verdict.is_none());
        }
        Ok(all)
    }

    /// Records a reviewer's verdict. Approving with `allow_word` also allows the matched word
    /// in the message's group from now on (a blocked intent has no word to allow).
    pub async fn decide_review(
        &self,
        id: u64,
        approved: bool,
        allow_word: bool,
        by: &str,
    ) -> Result<Result<Decided, ReviewError>, StateError> {
        let verdict = ReviewVerdict {
            approved,
            allowed_word: approved && allow_word,
            by: by.to_string(),
            at_ms: self.clock.now_ms(),
        };
        let decided = match self.state.decide_review(id, verdict).await? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let item = &decided.item;
        let allows = item.verdict.as_ref().is_some_and(|v| v.allowed_word);
        if decided.changed && allows && !item.matched.is_empty() {
            let scope = Scope::group(GroupKey::new(&item.bot_id, &item.chat_id));
            transact(&*self.state, &scope, |view| {
                let mut w = Work::new(&scope, view);
                w.group.allowed_words.insert(item.matched.clone());
                ((), w.into_changes())
            })
            .await?;
        }
        Ok(Ok(decided))
    }

    /// Open and claimed handoffs of every group (of `bot_id` when given), oldest first.
    /// Unclaimed ones past their TTL are left out: they no longer count.
    pub async fn handoffs(&self, bot_id: Option<&str>) -> Result<Vec<HandoffEntry>, StateError> {
        let cfg = self.config();
        let now = self.clock.now_ms();
        let view = self.state.load_due(None).await?;
        let mut out = Vec::new();
        for (key, group) in view.groups {
            if bot_id.is_some_and(|b| b != key.bot_id) {
                continue;
            }
            let ttl = cfg.settings(&key.bot_id, &key.chat_id).handoff.open_ttl_ms;
            let name = group.row.timers.as_ref().map(|t| t.name.clone());
            for h in &group.row.handoffs.open {
                let expires = h.opened_ms.saturating_add(ttl);
                if !h.claimed() && expires <= now {
                    continue;
                }
                out.push(HandoffEntry {
                    bot_id: key.bot_id.clone(),
                    chat_id: key.chat_id.clone(),
                    chat_name: name.clone().unwrap_or_default(),
                    expires_ms: (!h.claimed()).then_some(expires),
                    handoff: h.clone(),
                });
            }
        }
        out.sort_by_key(|e| e.handoff.opened_ms);
        Ok(out)
    }

    /// An agent takes handoff `id` of a group.
    pub async fn claim_handoff(
        &self,
        bot_id: &str,
        chat_id: &str,
        id: u64,
        agent: &str,
    ) -> Result<Result<OpenHandoff, HandoffError>, StateError> {
        let now = self.clock.now_ms();
        self.act_on_handoff(bot_id, chat_id, |h| h.claim(chat_id, id, agent, now))
            .await
    }

    /// Closes handoff `id` of a group (its agent is done; one claimed by another agent is
    /// refused); returns it.
    pub async fn close_handoff(
        &self,
        bot_id: &str,
        chat_id: &str,
        id: u64,
        agent: &str,
    ) -> Result<Result<OpenHandoff, HandoffError>, StateError> {
        self.act_on_handoff(bot_id, chat_id, |h| h.close(chat_id, id, agent))
            .await
    }

    /// Runs `act` on the group's handoffs in one transaction, after expiring the unclaimed
    /// ones past their TTL (an expired handoff cannot be claimed or closed); a refused action
    /// writes nothing.
    async fn act_on_handoff(
        &self,
        bot_id: &str,
        chat_id: &str,
        act: impl Fn(&mut GroupHandoffs) -> Result<OpenHandoff, HandoffError> + Send + Sync,
    ) -> Result<Result<OpenHandoff, HandoffError>, StateError> {
        let now = self.clock.now_ms();
        let ttl = self.config().settings(bot_id, chat_id).handoff.open_ttl_ms;
        let scope = Scope::group(GroupKey::new(bot_id, chat_id));
        transact(&*self.state, &scope, |view| {
            let mut w = Work::new(&scope, view);
            w.group.handoffs.expire(now, ttl);
            let out = act(&mut w.group.handoffs);
            let changes = if out.is_ok() {
                w.into_changes()
            } else {
                Vec::new()
            };
            (out, changes)
        })
        .await
    }
}
