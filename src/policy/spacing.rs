//! Per-group spacing between the bot's own sends, so a busy group is never flooded.
//!
//! Every send in a group reserves a slot: `max(now, previous slot + min_interval) + jitter`,
//! where the jitter is a bounded pseudo-random delay (0..=`jitter_ms`, derived from the seed and
//! the message, so it is reproducible). The decision carries `send_after_ms = slot - now`.
//!
//! Pile-up rule. A send whose slot is still in the future is "queued". For a new reply:
//! 1. if a reply for the same merge key (the intent) is already queued in the group, the new one
//!    is merged into it: IGNORE with reason `merged:spacing` (the queued answer is visible to
//!    the whole group);
//! 2. otherwise, if `queue_limit` sends are already queued, the new reply is the one dropped:
//!    IGNORE with reason `dropped:spacing_queue_full`, recorded in the playbook's dropped-send
//!    report. Queued sends are already in the front end's hands and cannot be recalled, so the
//!    newcomer is always the lowest-priority message;
//! 3. high-priority sends (handoff notices and proactive messages) are never merged or dropped;
//!    they take the next slot after the queue, but never more than [`HIGH_MAX_SLOTS`] slots
//!    ahead: when they come faster than the spacing allows, they go closer together rather than
//!    ever later (a timeline drifting hours ahead, and a queue that never empties).

use serde::{Deserialize, Serialize};

/// How many minimum intervals ahead of now a high-priority send may be placed at most.
pub const HIGH_MAX_SLOTS: i64 = 8;

/// Spacing settings for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpacingConfig {
    pub min_interval_ms: i64,
    pub jitter_ms: i64,
    pub queue_limit: usize,
}

impl Default for SpacingConfig {
    fn default() -> Self {
        Self {
            min_interval_ms: 15_000,
            jitter_ms: 3_000,
            queue_limit: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// An ordinary reply: may be merged or dropped.
    Normal,
    /// Handoff notices and proactive sends: never merged or dropped.
    High,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpacingOutcome {
    /// Send at this time (Unix ms).
    Send { at_ms: i64 },
    /// Merged into the queued send for the same key, which goes at this time.
    Merged { at_ms: i64 },
    /// The queue is full.
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Queued {
    at_ms: i64,
    key: String,
}

/// The send timeline of one group (a state row: see [`super::state`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpacing {
    last_slot_ms: Option<i64>,
    queued: Vec<Queued>,
}

impl GroupSpacing {
    /// Plan one send. `roll` is a pseudo-random number for the jitter.
    pub fn plan(
        &mut self,
        now: i64,
        cfg: &SpacingConfig,
        merge_key: Option<&str>,
        priority: Priority,
        roll: u64,
    ) -> SpacingOutcome {
        self.queued.retain(|q| q.at_ms > now);
        if priority == Priority::Normal {
            if let Some(key) = merge_key {
                if let Some(q) = self.queued.iter().find(|q| q.key == key) {
                    return SpacingOutcome::Merged { at_ms: q.at_ms };
                }
            }
            if self.queued.len() >= cfg.queue_limit {
                return SpacingOutcome::Dropped;
            }
        }
        let earliest = match self.last_slot_ms {
            Some(last) => now.max(last + cfg.min_interval_ms),
            None => now,
        };
        let jitter = if cfg.jitter_ms > 0 {
            (roll % (cfg.jitter_ms as u64 + 1)) as i64
        } else {
            0
        };
        let at = match priority {
            Priority::High => (earliest + jitter).min(now + HIGH_MAX_SLOTS * cfg.min_interval_ms),
            Priority::Normal => earliest + jitter,
        };
        self.last_slot_ms = Some(self.last_slot_ms.map_or(at, |l| l.max(at)));
        if at > now {
            self.queued.push(Queued {
                at_ms: at,
                key: merge_key.unwrap_or("").to_string(),
            });
        }
        SpacingOutcome::Send { at_ms: at }
    }

    /// The earliest time a new send could go without jitter (for proactive items).
    pub fn next_free_ms(&self, now: i64, cfg: &SpacingConfig) -> i64 {
        self.last_slot_ms
            .map_or(now, |l| now.max(l + cfg.min_interval_ms))
    }

    pub fn queued_len(&self, now: i64) -> usize {
        self.queued.iter().filter(|q| q.at_ms > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: SpacingConfig = SpacingConfig {
        min_interval_ms: 15_000,
        jitter_ms: 3_000,
        queue_limit: 2,
    };

    #[test]
    fn first_send_only_jitter_then_min_interval_plus_jitter() {
        let mut g = GroupSpacing::default();
        let now = 1_000_000;
        // roll 10_000 % 3_001 = 997
        assert_eq!(
            g.plan(now, &CFG, Some("price"), Priority::Normal, 10_000),
            SpacingOutcome::Send { at_ms: now + 997 }
        );
        // Next one: previous slot + 15 s + jitter (roll 3_000 → full jitter).
        assert_eq!(
            g.plan(now, &CFG, Some("stock"), Priority::Normal, 3_000),
            SpacingOutcome::Send {
                at_ms: now + 997 + 15_000 + 3_000
            }
        );
    }

    #[test]
    fn jitter_is_bounded() {
        for roll in [0u64, 1, 2_999, 3_000, 3_001, u64::MAX] {
            let mut g = GroupSpacing::default();
            let SpacingOutcome::Send { at_ms } = g.plan(0, &CFG, None, Priority::Normal, 0) else {
                panic!()
            };
            assert_eq!(at_ms, 0);
            let SpacingOutcome::Send { at_ms } = g.plan(0, &CFG, None, Priority::Normal, roll)
            else {
                panic!()
            };
            assert!((15_000..=18_000).contains(&at_ms), "{at_ms}");
        }
    }

    #[test]
    fn same_intent_merges_and_full_queue_drops_but_high_priority_goes() {
        let mut g = GroupSpacing::default();
        let now = 0;
        let a = g.plan(now, &CFG, Some("price"), Priority::Normal, 1);
        assert_eq!(a, SpacingOutcome::Send { at_ms: 1 });
        assert_eq!(
            g.plan(now, &CFG, Some("price"), Priority::Normal, 5),
            SpacingOutcome::Merged { at_ms: 1 }
        );
        assert_eq!(
            g.plan(now, &CFG, Some("stock"), Priority::Normal, 0),
            SpacingOutcome::Send { at_ms: 15_001 }
        );
        assert_eq!(g.queued_len(now), 2);
        assert_eq!(
            g.plan(now, &CFG, Some("refund"), Priority::Normal, 0),
            SpacingOutcome::Dropped
        );
        assert_eq!(
            g.plan(now, &CFG, Some("complaint"), Priority::High, 0),
            SpacingOutcome::Send { at_ms: 30_001 }
        );
        // Once the queued sends have gone out, the queue is free again.
        assert_eq!(
            g.plan(40_000, &CFG, Some("refund"), Priority::Normal, 0),
            SpacingOutcome::Send { at_ms: 45_001 }
        );
    }

    /// Before, each high-priority send took the slot after the last one whatever the rate, so
    /// a steady stream of handoff notices pushed the group's timeline (and its queue) without end.
    #[test]
    fn high_priority_sends_stay_within_a_bounded_horizon() {
        let mut g = GroupSpacing::default();
        let mut now = 0;
        for i in 0..1_000 {
            let SpacingOutcome::Send { at_ms } = g.plan(now, &CFG, None, Priority::High, i) else {
                panic!("a high-priority send is never dropped")
            };
            assert!(at_ms >= now && at_ms <= now + HIGH_MAX_SLOTS * CFG.min_interval_ms);
            now += 1_000; // one a second, 15x faster than the spacing
        }
        assert!(g.queued_len(now) <= (HIGH_MAX_SLOTS * CFG.min_interval_ms / 1_000) as usize + 1);
        assert!(g.next_free_ms(now, &CFG) <= now + (HIGH_MAX_SLOTS + 1) * CFG.min_interval_ms);
    }

    #[test]
    fn idle_group_sends_at_once_without_jitter() {
        let cfg = SpacingConfig {
            jitter_ms: 0,
            ..CFG
        };
        let mut g = GroupSpacing::default();
        assert_eq!(
            g.plan(0, &cfg, None, Priority::Normal, 99),
            SpacingOutcome::Send { at_ms: 0 }
        );
        assert_eq!(
            g.plan(60_000, &cfg, None, Priority::Normal, 99),
            SpacingOutcome::Send { at_ms: 60_000 }
        );
        assert_eq!(g.next_free_ms(61_000, &cfg), 75_000);
    }
}
