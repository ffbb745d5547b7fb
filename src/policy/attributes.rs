//! Attribute triggers: rules conditioned on who the user is — tags, city, VIP level and how often
//! they talk — that pick a dedicated reply (e.g. VIP ≥ 3 gets the dedicated-service reply, users
//! in 上海 asking about events get the local event), and the interaction-frequency tiers that set
//! how often a user may receive a personal push.

use serde::{Deserialize, Serialize};

use crate::types::UserInfo;

/// A condition on the user; every set field must hold (an empty condition always matches).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Condition {
    /// At least one of these tags.
    pub tags_any: Vec<String>,
    /// One of these cities.
    pub cities: Vec<String>,
    pub vip_min: Option<u32>,
    /// At least this many messages/activity signals in the frequency window.
    pub min_messages: Option<u32>,
}

impl Condition {
    pub fn matches(&self, user: &UserInfo, interactions: u32) -> bool {
        (self.tags_any.is_empty() || self.tags_any.iter().any(|t| user.tags.contains(t)))
            && (self.cities.is_empty() || self.cities.iter().any(|c| c == &user.city))
            && self.vip_min.is_none_or(|v| user.vip_level >= v)
            && self.min_messages.is_none_or(|m| interactions >= m)
    }
}

/// A reply rule: when the condition holds and the intent is listed (empty = any intent with a
/// reply), answer with the named reply instead of the intent's own.
#[derive(Debug, Clone, PartialEq)]
pub struct AttrRule {
    pub id: String,
    pub intents: Vec<String>,
    pub when: Condition,
    /// Key into `replies.yml` `named:`.
    pub reply: String,
    /// A dedicated-agent rule: the message goes to a human (a real handoff) and the reply
    /// announces the wait (`{wait_minutes}`).
    pub handoff: bool,
}

impl AttrRule {
    pub fn applies(&self, intent: &str, user: &UserInfo, interactions: u32) -> bool {
        (self.intents.is_empty() || self.intents.iter().any(|i| i == intent))
            && self.when.matches(user, interactions)
    }
}

/// A personal push: after a matching user talks, a delayed message (DELAYED_REPLY) mentioning
/// them is queued, at most once per their frequency tier's interval.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRule {
    pub id: String,
    pub when: Condition,
    pub reply: String,
    pub delay_ms: i64,
}

/// One tier: users with at least `min_messages` in the window may be pushed every `interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub min_messages: u32,
    pub interval_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FrequencyConfig {
    pub window_ms: i64,
    /// Sorted by `min_messages`, highest first.
    pub tiers: Vec<Tier>,
}

impl Default for FrequencyConfig {
    fn default() -> Self {
        const H: i64 = 3_600_000;
        Self {
            window_ms: 168 * H,
            tiers: vec![
                Tier {
                    min_messages: 20,
                    interval_ms: 24 * H,
                },
                Tier {
                    min_messages: 5,
                    interval_ms: 72 * H,
                },
                Tier {
                    min_messages: 0,
                    interval_ms: 168 * H,
                },
            ],
        }
    }
}

impl FrequencyConfig {
    /// How long between pushes for a user with this many interactions in the window.
    pub fn push_interval_ms(&self, interactions: u32) -> i64 {
        self.tiers
            .iter()
            .find(|t| interactions >= t.min_messages)
            .map(|t| t.interval_ms)
            .unwrap_or(i64::MAX)
    }
}

/// Interaction timestamps of one user, trimmed to the window and to the most recent `keep`:
/// every condition compares the count with a threshold, so a count that stops at the highest
/// threshold in the operator files decides exactly as the full count would, and a chatty user
/// costs `keep` timestamps, not one per message of the window (measured: per-user queues of up
/// to 10,000 grew the soak's heap by 0.17 MB/min).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    times: std::collections::VecDeque<i64>,
}

impl Activity {
    pub fn record(&mut self, now: i64, window_ms: i64, keep: u32) {
        self.times.push_back(now);
        self.trim(now, window_ms);
        // At least one: `last` must know the latest interaction.
        let keep = (keep as usize).max(1);
        while self.times.len() > keep {
            self.times.pop_front();
        }
        // Rows from before the cap (or a lowered threshold) give back their excess once.
        if self.times.capacity() > 2 * keep.max(16) {
            self.times.shrink_to(keep);
        }
    }

    pub fn count(&mut self, now: i64, window_ms: i64) -> u32 {
        self.trim(now, window_ms);
        self.times.len() as u32
    }

    fn trim(&mut self, now: i64, window_ms: i64) {
        while self.times.front().is_some_and(|&t| now - t >= window_ms) {
            self.times.pop_front();
        }
    }

    pub fn last(&self) -> Option<i64> {
        self.times.back().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(tags: &[&str], city: &str, vip: u32) -> UserInfo {
        UserInfo {
            id: "u".into(),
            nickname: "n".into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            city: city.into(),
            vip_level: vip,
        }
    }

    #[test]
    fn conditions() {
        let vip = Condition {
            vip_min: Some(3),
            ..Default::default()
        };
        assert!(vip.matches(&user(&[], "", 3), 0));
        assert!(!vip.matches(&user(&[], "", 2), 0));
        let sh = Condition {
            cities: vec!["上海".into()],
            tags_any: vec!["宝妈".into(), "学生".into()],
            ..Default::default()
        };
        assert!(sh.matches(&user(&["学生"], "上海", 0), 0));
        assert!(!sh.matches(&user(&["学生"], "北京", 0), 0));
        assert!(!sh.matches(&user(&["白领"], "上海", 0), 0));
        let active = Condition {
            min_messages: Some(5),
            ..Default::default()
        };
        assert!(!active.matches(&user(&[], "", 0), 4));
        assert!(active.matches(&user(&[], "", 0), 5));
        assert!(Condition::default().matches(&user(&[], "", 0), 0));
    }

    #[test]
    fn rule_intent_filter() {
        let r = AttrRule {
            id: "vip".into(),
            intents: vec!["price".into()],
            when: Condition {
                vip_min: Some(3),
                ..Default::default()
            },
            reply: "vip_service".into(),
            handoff: false,
        };
        assert!(r.applies("price", &user(&[], "", 5), 0));
        assert!(!r.applies("stock", &user(&[], "", 5), 0));
    }

    #[test]
    fn frequency_tiers_and_window() {
        let f = FrequencyConfig::default();
        assert_eq!(f.push_interval_ms(25), 24 * 3_600_000);
        assert_eq!(f.push_interval_ms(5), 72 * 3_600_000);
        assert_eq!(f.push_interval_ms(0), 168 * 3_600_000);
        let mut a = Activity::default();
        a.record(0, 1000, 20);
        a.record(500, 1000, 20);
        assert_eq!(a.count(900, 1000), 2);
        assert_eq!(a.count(1000, 1000), 1);
        assert_eq!(a.count(2000, 1000), 0);
    }

    /// The count stops at `keep` (the highest threshold any condition uses), so a chatty user
    /// holds `keep` timestamps; before, up to 10,000 per user for the whole window.
    #[test]
    fn activity_keeps_only_what_the_thresholds_need() {
        let mut a = Activity::default();
        for t in 0..5_000 {
            a.record(t, 1_000_000, 20);
        }
        assert_eq!(a.count(5_000, 1_000_000), 20);
        assert!(a.times.capacity() < 128, "capacity {}", a.times.capacity());
        assert_eq!(a.last(), Some(4_999));
        // keep 0 (no thresholds) still remembers the latest interaction.
        let mut b = Activity::default();
        b.record(7, 1_000, 0);
        assert_eq!(b.last(), Some(7));
    }
}
