//! Human handoff: intents that always go to a person, users the bot failed to understand twice
//! in a row, the expected wait announced in the handoff reply, and the human share per group.
//!
//! Expected wait: `fixed_wait_minutes` when configured, otherwise
//! `(open handoffs of the bot + 1) × minutes_per_handoff`, capped at `max_wait_minutes`. A
//! handoff is open until a human reply is reported in its group (closes the oldest) or until
//! `open_ttl_minutes` pass.
//!
//! Human share per group = (handoffs + human replies) / messages, against `human_share_target`.

use std::collections::{HashMap, HashSet, VecDeque};

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

#[derive(Debug, Default, Clone)]
struct ChatCounts {
    messages: u64,
    handoffs: u64,
    human_replies: u64,
    /// Open handoffs (opened at, ms), oldest first.
    open: VecDeque<i64>,
}

/// Handoff bookkeeping for all bots and chats.
#[derive(Debug, Default)]
pub struct HandoffTracker {
    chats: HashMap<(String, String), ChatCounts>,
    /// Consecutive not-understood messages per (bot, chat, user).
    streaks: HashMap<(String, String, String), u32>,
}

fn ck(bot: &str, chat: &str) -> (String, String) {
    (bot.to_string(), chat.to_string())
}

impl HandoffTracker {
    pub fn note_message(&mut self, bot: &str, chat: &str) {
        self.chats.entry(ck(bot, chat)).or_default().messages += 1;
    }

    fn expire(&mut self, now: i64, ttl_ms: i64) {
        for c in self.chats.values_mut() {
            while c.open.front().is_some_and(|&t| now - t >= ttl_ms) {
                c.open.pop_front();
            }
        }
    }

    /// Open handoffs of a bot across its chats.
    pub fn open_count(&mut self, bot: &str, now: i64, ttl_ms: i64) -> usize {
        self.expire(now, ttl_ms);
        self.chats
            .iter()
            .filter(|((b, _), _)| b == bot)
            .map(|(_, c)| c.open.len())
            .sum()
    }

    /// The wait to announce for a new handoff (computed before it is opened).
    pub fn expected_wait_minutes(&mut self, bot: &str, now: i64, cfg: &HandoffConfig) -> u32 {
        if let Some(f) = cfg.fixed_wait_minutes {
            return f;
        }
        let open = self.open_count(bot, now, cfg.open_ttl_ms) as u32;
        (open.saturating_add(1))
            .saturating_mul(cfg.minutes_per_handoff)
            .clamp(1, cfg.max_wait_minutes.max(1))
    }

    pub fn open(&mut self, bot: &str, chat: &str, now: i64) {
        let c = self.chats.entry(ck(bot, chat)).or_default();
        c.handoffs += 1;
        c.open.push_back(now);
    }

    /// A human answered in the group: counts toward the share and closes the oldest open handoff.
    pub fn record_human_reply(&mut self, bot: &str, chat: &str) {
        let c = self.chats.entry(ck(bot, chat)).or_default();
        c.human_replies += 1;
        c.open.pop_front();
    }

    /// (handoffs + human replies) / messages; 0 when there were no messages.
    pub fn share(&self, bot: &str, chat: &str) -> f64 {
        match self.chats.get(&ck(bot, chat)) {
            Some(c) if c.messages > 0 => (c.handoffs + c.human_replies) as f64 / c.messages as f64,
            _ => 0.0,
        }
    }

    /// Count one not-understood message; returns the streak including it.
    pub fn not_understood(&mut self, bot: &str, chat: &str, user: &str) -> u32 {
        let s = self
            .streaks
            .entry((bot.to_string(), chat.to_string(), user.to_string()))
            .or_default();
        *s += 1;
        *s
    }

    /// The user was understood (or handed off): the streak starts over.
    pub fn reset_streak(&mut self, bot: &str, chat: &str, user: &str) {
        self.streaks
            .remove(&(bot.to_string(), chat.to_string(), user.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_grows_with_open_handoffs_and_shrinks_when_humans_answer() {
        let cfg = HandoffConfig::default();
        let mut t = HandoffTracker::default();
        assert_eq!(t.expected_wait_minutes("b", 0, &cfg), 5);
        t.open("b", "g1", 0);
        t.open("b", "g2", 0);
        t.open("other_bot", "g1", 0);
        assert_eq!(t.expected_wait_minutes("b", 1000, &cfg), 15);
        t.record_human_reply("b", "g1");
        assert_eq!(t.expected_wait_minutes("b", 1000, &cfg), 10);
        // After the TTL the open handoffs no longer count.
        assert_eq!(t.expected_wait_minutes("b", 60 * 60_000, &cfg), 5);
        let fixed = HandoffConfig {
            fixed_wait_minutes: Some(8),
            ..cfg.clone()
        };
        assert_eq!(t.expected_wait_minutes("b", 0, &fixed), 8);
        let capped = HandoffConfig {
            max_wait_minutes: 7,
            ..cfg
        };
        t.open("b", "g1", 2_000);
        t.open("b", "g1", 2_000);
        assert_eq!(t.expected_wait_minutes("b", 3_000, &capped), 7);
    }

    #[test]
    fn human_share() {
        let mut t = HandoffTracker::default();
        assert_eq!(t.share("b", "g"), 0.0);
        for _ in 0..10 {
            t.note_message("b", "g");
        }
        t.open("b", "g", 0);
        t.record_human_reply("b", "g");
        t.record_human_reply("b", "g");
        assert!((t.share("b", "g") - 0.3).abs() < 1e-9);
    }

    #[test]
    fn streaks() {
        let mut t = HandoffTracker::default();
        assert_eq!(t.not_understood("b", "g", "u"), 1);
        assert_eq!(t.not_understood("b", "g", "u"), 2);
        assert_eq!(t.not_understood("b", "g", "v"), 1);
        t.reset_streak("b", "g", "u");
        assert_eq!(t.not_understood("b", "g", "u"), 1);
    }
}
