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
    /// Open handoffs (opened at, ms), oldest first.
    pub open: VecDeque<i64>,
}

impl GroupHandoffs {
    pub fn note_message(&mut self) {
        self.messages += 1;
    }

    /// Drop the open handoffs older than `ttl_ms`.
    pub fn expire(&mut self, now: i64, ttl_ms: i64) {
        while self.open.front().is_some_and(|&t| now - t >= ttl_ms) {
            self.open.pop_front();
        }
    }

    /// Open handoffs younger than `ttl_ms` (without changing the row).
    pub fn open_count(&self, now: i64, ttl_ms: i64) -> usize {
        self.open.iter().filter(|&&t| now - t < ttl_ms).count()
    }

    pub fn open(&mut self, now: i64) {
        self.handoffs += 1;
        self.open.push_back(now);
    }

    /// A human answered in the group: counts toward the share and closes the oldest open handoff.
    pub fn record_human_reply(&mut self) {
        self.human_replies += 1;
        self.open.pop_front();
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
        g1.open(0);
        g2.open(0);
        assert_eq!(
            expected_wait_minutes(open_in_bot(&[&g1, &g2], 1000, &cfg), &cfg),
            15
        );
        g1.record_human_reply();
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
        g1.open(2_000);
        g1.open(2_000);
        assert_eq!(
            expected_wait_minutes(open_in_bot(&[&g1, &g2], 3_000, &capped), &capped),
            7
        );
    }

    #[test]
    fn human_share() {
        let mut g = GroupHandoffs::default();
        assert_eq!(g.share(), 0.0);
        for _ in 0..10 {
            g.note_message();
        }
        g.open(0);
        g.record_human_reply();
        g.record_human_reply();
        assert!((g.share() - 0.3).abs() < 1e-9);
    }
}
