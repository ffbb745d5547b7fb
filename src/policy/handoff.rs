//! Human handoff: intents that always go to a person, users the bot failed to understand twice
//! in a row, the expected wait announced in the handoff reply, and the human share per group.
//!
//! Expected wait: `fixed_wait_minutes` when configured, otherwise
//! `(open handoffs of the bot + 1) × minutes_per_handoff`, capped at `max_wait_minutes`. A
//! handoff is open until a human reply is reported in its group (closes the oldest) or until
//! `open_ttl_minutes` pass.
//!
//! Human share per group = (handoffs + human replies) / messages, against `human_share_target`.

use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};

#[derive(Debug, Clone, PartialEq)]
pub struct HandoffConfig {
    pub intents: HashSet<String>,
    pub minutes_per_handoff: u32,
    pub fixed_wait_minutes: Option<u32>,
    pub max_wait_minutes: u32,
    pub open_ttl_ms: i64,
    /// Consecutive not-understood messages that trigger a handoff.
    pub not_understood_limit: u32,
    pub human_share_target: f64,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        Self {
            intents: ["complaint", "ask_human"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            minutes_per_handoff: 5,
            fixed_wait_minutes: None,
            max_wait_minutes: 120,
            open_ttl_ms: 60 * 60_000,
            not_understood_limit: 2,
            human_share_target: 0.30,
        }
    }
}

/// Handoff bookkeeping of one group (part of its state row, [`super::state::GroupRow`]).
/// The not-understood streak is per user and lives in [`super::state::UserRow`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHandoffs {
    pub messages: u64,
    pub handoffs: u64,
    pub human_replies: u64,
    /// Open and claimed handoffs, oldest first.
    #[serde(deserialize_with = "open_entries")]
    pub open: VecDeque<OpenHandoff>,
}

/// Most open and claimed handoffs one group keeps: a claimed handoff does not expire, so an
/// agent who never closes theirs must not grow the row without end (the oldest goes first).
pub const MAX_OPEN_PER_GROUP: usize = 200;

/// One handoff waiting for (or taken by) a human agent: open → claimed → closed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenHandoff {
    /// Unique within the group: the group's handoff count when it opened (0 for handoffs
    /// stored before handoffs had ids).
    pub id: u64,
    pub opened_ms: i64,
    pub user_id: String,
    /// The message that was handed off.
    pub message_id: String,
    /// Why: `handoff:intent`, `handoff:not_understood`, `handoff:rule:<id>`, `off_hours`.
    pub reason: String,
    /// The wait announced to the user.
    pub wait_minutes: u32,
    /// The agent who took it; empty while open.
    #[serde(default)]
    pub claimed_by: String,
    #[serde(default)]
    pub claimed_ms: i64,
}

impl OpenHandoff {
    pub fn claimed(&self) -> bool {
        !self.claimed_by.is_empty()
    }
}

/// Who and why a new handoff opens.
#[derive(Debug, Clone, Copy)]
pub struct HandoffOpening<'a> {
    pub user_id: &'a str,
    pub message_id: &'a str,
    pub reason: &'a str,
}

/// Rows written before handoffs had ids hold only the opening time.
fn open_entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<VecDeque<OpenHandoff>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        OpenedAt(i64),
        Full(OpenHandoff),
    }
    let entries = Vec::<Entry>::deserialize(d)?;
    Ok(entries
        .into_iter()
        .map(|e| match e {
            Entry::OpenedAt(t) => OpenHandoff {
                opened_ms: t,
                ..Default::default()
            },
            Entry::Full(h) => h,
        })
        .collect())
}

/// Why a claim or close was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    #[error("no open handoff {id} in chat {chat_id} (closed, expired or never opened)")]
    NotFound { chat_id: String, id: u64 },
    #[error("handoff {id} is already claimed by {by}")]
    ClaimedByOther { id: u64, by: String },
}

impl GroupHandoffs {
    pub fn note_message(&mut self) {
        self.messages += 1;
    }

    /// Drop the open (unclaimed) handoffs older than `ttl_ms`: nobody took them in time. A
    /// claimed one stays until it is closed.
    pub fn expire(&mut self, now: i64, ttl_ms: i64) {
        self.open
            .retain(|h| h.claimed() || now - h.opened_ms < ttl_ms);
    }

    /// Handoffs opened less than `ttl_ms` ago (without changing the row).
    pub fn open_count(&self, now: i64, ttl_ms: i64) -> usize {
        self.open
            .iter()
            .filter(|h| now - h.opened_ms < ttl_ms)
            .count()
    }

    /// Opens a handoff; returns its id.
    pub fn open(&mut self, now: i64, who: HandoffOpening<'_>, wait_minutes: u32) -> u64 {
        self.handoffs += 1;
        if self.open.len() >= MAX_OPEN_PER_GROUP {
            self.open.pop_front();
        }
        self.open.push_back(OpenHandoff {
            id: self.handoffs,
            opened_ms: now,
            user_id: who.user_id.to_string(),
            message_id: who.message_id.to_string(),
            reason: who.reason.to_string(),
            wait_minutes,
            claimed_by: String::new(),
            claimed_ms: 0,
        });
        self.handoffs
    }

    fn position(&self, chat_id: &str, id: u64) -> Result<usize, HandoffError> {
        self.open
            .iter()
            .position(|h| h.id == id)
            .ok_or_else(|| HandoffError::NotFound {
                chat_id: chat_id.to_string(),
                id,
            })
    }

    /// An agent takes a handoff. Claiming one's own again changes nothing (a retried click).
    pub fn claim(
        &mut self,
        chat_id: &str,
        id: u64,
        agent: &str,
        now: i64,
    ) -> Result<OpenHandoff, HandoffError> {
        let i = self.position(chat_id, id)?;
        let h = &mut self.open[i];
        if h.claimed() && h.claimed_by != agent {
            return Err(HandoffError::ClaimedByOther {
                id,
                by: h.claimed_by.clone(),
            });
        }
        if !h.claimed() {
            h.claimed_by = agent.to_string();
            h.claimed_ms = now;
        }
        Ok(h.clone())
    }

    /// Closes a handoff (an agent finished it); returns it. One claimed by another agent is
    /// theirs to close.
    pub fn close(
        &mut self,
        chat_id: &str,
        id: u64,
        agent: &str,
    ) -> Result<OpenHandoff, HandoffError> {
        let i = self.position(chat_id, id)?;
        let h = &self.open[i];
        if h.claimed() && h.claimed_by != agent {
            return Err(HandoffError::ClaimedByOther {
                id,
                by: h.claimed_by.clone(),
            });
        }
        Ok(self.open.remove(i).expect("position is in range"))
    }

    /// A human answered in the group: counts toward the share and closes handoff `id`, or the
    /// oldest open one when `id` is None. Returns the one it closed.
    pub fn record_human_reply(&mut self, id: Option<u64>) -> Option<OpenHandoff> {
        self.human_replies += 1;
        match id {
            None => self.open.pop_front(),
            Some(id) => {
                let i = self.open.iter().position(|h| h.id == id)?;
                self.open.remove(i)
            }
        }
    }

    /// (handoffs + human replies) / messages; 0 when there were no messages.
    pub fn share(&self) -> f64 {
        if self.messages == 0 {
            return 0.0;
        }
        (self.handoffs + self.human_replies) as f64 / self.messages as f64
    }
}

/// The wait to announce for a new handoff, given the bot's open handoffs across its chats
/// (counted before this one is opened).
pub fn expected_wait_minutes(open_in_bot: usize, cfg: &HandoffConfig) -> u32 {
    if let Some(f) = cfg.fixed_wait_minutes {
        return f;
    }
    let open = u32::try_from(open_in_bot).unwrap_or(u32::MAX);
    (open.saturating_add(1))
        .saturating_mul(cfg.minutes_per_handoff)
        .clamp(1, cfg.max_wait_minutes.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> HandoffOpening<'static> {
        HandoffOpening {
            user_id: "u",
            message_id: "m",
            reason: "handoff:intent",
        }
    }

    /// The bot-wide count the state store computes: open handoffs of every chat of the bot.
    fn open_in_bot(chats: &[&GroupHandoffs], now: i64, cfg: &HandoffConfig) -> usize {
        chats
            .iter()
            .map(|c| c.open_count(now, cfg.open_ttl_ms))
            .sum()
    }

    #[test]
    fn wait_grows_with_open_handoffs_and_shrinks_when_humans_answer() {
        let cfg = HandoffConfig::default();
        let (mut g1, mut g2) = (GroupHandoffs::default(), GroupHandoffs::default());
        assert_eq!(
            expected_wait_minutes(open_in_bot(&[&g1, &g2], 0, &cfg), &cfg),
            5
        );
        g1.open(0, who(), 5);
        g2.open(0, who(), 5);
        assert_eq!(
            expected_wait_minutes(open_in_bot(&[&g1, &g2], 1000, &cfg), &cfg),
            15
        );
        g1.record_human_reply(None);
        assert_eq!(
            expected_wait_minutes(open_in_bot(&[&g1, &g2], 1000, &cfg), &cfg),
            10
        );
        // After the TTL the open handoffs no longer count.
        assert_eq!(
            expected_wait_minutes(open_in_bot(&[&g1, &g2], 60 * 60_000, &cfg), &cfg),
            5
        );
        g2.expire(60 * 60_000, cfg.open_ttl_ms);
        assert!(g2.open.is_empty());
        let fixed = HandoffConfig {
            fixed_wait_minutes: Some(8),
            ..cfg.clone()
        };
        assert_eq!(expected_wait_minutes(3, &fixed), 8);
        let capped = HandoffConfig {
            max_wait_minutes: 7,
            ..cfg
        };
        g1.open(2_000, who(), 5);
        g1.open(2_000, who(), 5);
        assert_eq!(
            expected_wait_minutes(open_in_bot(&[&g1, &g2], 3_000, &capped), &capped),
            7
        );
    }

    #[test]
    fn claim_close_and_expiry() {
        let mut g = GroupHandoffs::default();
        let a = g.open(0, who(), 5);
        let b = g.open(10, who(), 5);
        assert_eq!((a, b), (1, 2));
        assert_eq!(g.claim("c", b, "amy", 20).unwrap().claimed_by, "amy");
        // A retried claim by the same agent is fine; another agent is refused.
        assert_eq!(g.claim("c", b, "amy", 30).unwrap().claimed_ms, 20);
        assert_eq!(
            g.claim("c", b, "bob", 30),
            Err(HandoffError::ClaimedByOther {
                id: b,
                by: "amy".into()
            })
        );
        assert!(matches!(
            g.claim("c", 9, "bob", 30),
            Err(HandoffError::NotFound { id: 9, .. })
        ));
        // After the TTL the unclaimed one expires; the claimed one waits for its agent.
        g.expire(100, 50);
        assert_eq!(g.open.iter().map(|h| h.id).collect::<Vec<_>>(), [b]);
        assert!(matches!(
            g.close("c", b, "bob"),
            Err(HandoffError::ClaimedByOther { .. })
        ));
        assert_eq!(g.close("c", b, "amy").unwrap().id, b);
        assert!(g.open.is_empty());
        assert!(matches!(
            g.close("c", b, "amy"),
            Err(HandoffError::NotFound { .. })
        ));
        // A human reply naming a handoff closes that one.
        let c = g.open(200, who(), 5);
        let d = g.open(201, who(), 5);
        assert_eq!(g.record_human_reply(Some(d)).unwrap().id, d);
        assert_eq!(g.open.iter().map(|h| h.id).collect::<Vec<_>>(), [c]);
    }

    #[test]
    fn rows_from_before_handoff_ids_still_load() {
        let old = r#"{"messages":3,"handoffs":2,"human_replies":0,"open":[5,7]}"#;
        let g: GroupHandoffs = serde_json::from_str(old).unwrap();
        assert_eq!(
            g.open
                .iter()
                .map(|h| (h.id, h.opened_ms))
                .collect::<Vec<_>>(),
            [(0, 5), (0, 7)]
        );
        let back: GroupHandoffs =
            serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(back, g);
    }

    #[test]
    fn human_share() {
        let mut g = GroupHandoffs::default();
        assert_eq!(g.share(), 0.0);
        for _ in 0..10 {
            g.note_message();
        }
        g.open(0, who(), 5);
        g.record_human_reply(None);
        g.record_human_reply(None);
        assert!((g.share() - 0.3).abs() < 1e-9);
    }
}
