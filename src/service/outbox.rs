//! Proactive sends (welcomes, scheduled posts, re-activation, pushes) waiting, per bot, for a
//! Subscribe stream of that bot to take them.
//!
//! The playbook hands each due item out once (a collector takes them every second, whether or
//! not a stream is open), so this is where it waits. Two bounds keep it from growing while a bot
//! is not subscribed: each bot's queue holds at most `max_per_bot` items (when full, the oldest
//! goes), and an item that has waited here more than `max_age_ms` is dropped (a welcome that
//! arrives hours late does more harm than none). Whatever is dropped is reported to the caller,
//! which counts and logs it.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::policy::scheduler::OutboundItem;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Items waiting for one bot's Subscribe stream; beyond it the oldest is dropped.
    pub max_per_bot: usize,
    /// How long an item may wait for a stream before it is dropped.
    pub max_age_ms: i64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_per_bot: 1000,
            max_age_ms: 3600 * 1000,
        }
    }
}

impl OutboxConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_per_bot == 0 {
            return Err("outbox.max_per_bot must be at least 1".into());
        }
        if self.max_age_ms <= 0 {
            return Err(format!(
                "outbox.max_age_ms must be positive, got {}",
                self.max_age_ms
            ));
        }
        Ok(())
    }
}

/// Items dropped by one call, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// The bot's queue was full.
    pub overflow: usize,
    /// Waited longer than `max_age_ms`.
    pub expired: usize,
}

impl Dropped {
    pub fn any(&self) -> bool {
        self.overflow + self.expired > 0
    }
}

#[derive(Debug)]
pub struct Outbox {
    cfg: OutboxConfig,
    /// Per bot: (when it was queued, Unix ms; the item), oldest first.
    queues: HashMap<String, VecDeque<(i64, OutboundItem)>>,
}

impl Outbox {
    pub fn new(cfg: OutboxConfig) -> Self {
        Self {
            cfg,
            queues: HashMap::new(),
        }
    }

    /// Queues `item` at the back of its bot's queue.
    pub fn push(&mut self, item: OutboundItem, now_ms: i64) -> Dropped {
        let (max_per_bot, max_age_ms) = (self.cfg.max_per_bot, self.cfg.max_age_ms);
        let queue = self.queues.entry(item.bot_id.clone()).or_default();
        let mut dropped = Dropped {
            expired: expire(queue, now_ms, max_age_ms),
            ..Dropped::default()
        };
        queue.push_back((now_ms, item));
        dropped.overflow = trim_front(queue, max_per_bot);
        dropped
    }

    /// Takes `bot_id`'s waiting items, only those for `chats` when it is not empty (the others
    /// stay for another stream), oldest first.
    pub fn take(
        &mut self,
        bot_id: &str,
        chats: &[String],
        now_ms: i64,
    ) -> (Vec<OutboundItem>, Dropped) {
        let Some(queue) = self.queues.get_mut(bot_id) else {
            return (Vec::new(), Dropped::default());
        };
        let dropped = Dropped {
            expired: expire(queue, now_ms, self.cfg.max_age_ms),
            ..Dropped::default()
        };
        let mine = if chats.is_empty() {
            queue.drain(..).map(|(_, i)| i).collect()
        } else {
            let (mine, rest): (Vec<_>, Vec<_>) = queue
                .drain(..)
                .partition(|(_, i)| chats.contains(&i.chat_id));
            queue.extend(rest);
            mine.into_iter().map(|(_, i)| i).collect()
        };
        if queue.is_empty() {
            self.queues.remove(bot_id);
        }
        (mine, dropped)
    }

    /// Puts items a stream could not send back at the front, in their order, as queued now.
    /// They are the oldest, so if the queue is now over its bound they are the ones dropped.
    pub fn put_back(&mut self, bot_id: &str, items: Vec<OutboundItem>, now_ms: i64) -> Dropped {
        let queue = self.queues.entry(bot_id.to_string()).or_default();
        for item in items.into_iter().rev() {
            queue.push_front((now_ms, item));
        }
        Dropped {
            overflow: trim_front(queue, self.cfg.max_per_bot),
            expired: 0,
        }
    }

    /// Items waiting for `bot_id`.
    pub fn len(&self, bot_id: &str) -> usize {
        self.queues.get(bot_id).map_or(0, VecDeque::len)
    }

    /// Items waiting for any bot.
    pub fn total(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }
}

/// Drops the oldest items until at most `max` are left; returns how many went.
fn trim_front(queue: &mut VecDeque<(i64, OutboundItem)>, max: usize) -> usize {
    let over = queue.len().saturating_sub(max);
    queue.drain(..over);
    over
}

/// Removes the items queued more than `max_age_ms` ago; returns how many.
fn expire(queue: &mut VecDeque<(i64, OutboundItem)>, now_ms: i64, max_age_ms: i64) -> usize {
    let before = queue.len();
    queue.retain(|(queued, _)| now_ms.saturating_sub(*queued) <= max_age_ms);
    before - queue.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::scheduler::OutboundKind;

    fn item(bot: &str, chat: &str, send_at_ms: i64, rule: &str) -> OutboundItem {
        OutboundItem {
            bot_id: bot.into(),
            chat_id: chat.into(),
            kind: OutboundKind::Scheduled,
            reply: Default::default(),
            send_at_ms,
            rule_id: rule.into(),
            user_ids: vec![],
        }
    }

    fn rules(items: &[OutboundItem]) -> Vec<&str> {
        items.iter().map(|i| i.rule_id.as_str()).collect()
    }

    fn outbox(max_per_bot: usize, max_age_ms: i64) -> Outbox {
        Outbox::new(OutboxConfig {
            max_per_bot,
            max_age_ms,
        })
    }

    #[test]
    fn a_full_queue_drops_its_oldest_items_and_says_so() {
        let mut o = outbox(3, 1_000_000);
        for n in 0..3 {
            assert_eq!(
                o.push(item("b", "g", n, &format!("r{n}")), 10),
                Dropped::default()
            );
        }
        let d = o.push(item("b", "g", 3, "r3"), 10);
        assert_eq!(
            d,
            Dropped {
                overflow: 1,
                expired: 0
            }
        );
        assert_eq!(o.len("b"), 3);
        // Other bots have their own bound.
        assert_eq!(o.push(item("c", "g", 0, "c0"), 10), Dropped::default());
        let (got, d) = o.take("b", &[], 10);
        assert!(!d.any());
        assert_eq!(rules(&got), ["r1", "r2", "r3"]);
        assert_eq!(o.len("b"), 0);
        assert_eq!(o.len("c"), 1);
    }

    #[test]
    fn items_that_waited_too_long_are_dropped() {
        let mut o = outbox(10, 1000);
        o.push(item("b", "g", 0, "old"), 0);
        // Its send time is long past, but it has only just been queued.
        o.push(item("b", "g", -50_000, "recent"), 900);
        let (got, d) = o.take("b", &[], 1500);
        assert_eq!(
            d,
            Dropped {
                overflow: 0,
                expired: 1
            }
        );
        assert_eq!(rules(&got), ["recent"]);
        // Expiry also happens when pushing, so a bot that never subscribes stays small.
        o.push(item("x", "g", 0, "a"), 0);
        let d = o.push(item("x", "g", 5000, "b"), 5000);
        assert_eq!(d.expired, 1);
        assert_eq!(o.len("x"), 1);
    }

    #[test]
    fn taking_some_chats_leaves_the_others_in_order() {
        let mut o = outbox(10, 1_000_000);
        for (chat, rule) in [("g1", "a"), ("g2", "b"), ("g1", "c"), ("g3", "d")] {
            o.push(item("b", chat, 0, rule), 0);
        }
        let (got, _) = o.take("b", &["g1".to_string()], 0);
        assert_eq!(rules(&got), ["a", "c"]);
        let (rest, _) = o.take("b", &[], 0);
        assert_eq!(rules(&rest), ["b", "d"]);
        assert_eq!(o.take("nobody", &[], 0).0.len(), 0);
    }

    #[test]
    fn put_back_restores_the_front_and_keeps_the_bound() {
        let mut o = outbox(3, 1_000_000);
        o.push(item("b", "g", 0, "a"), 0);
        o.push(item("b", "g", 0, "b"), 0);
        let (taken, _) = o.take("b", &[], 0);
        o.push(item("b", "g", 0, "c"), 0);
        o.push(item("b", "g", 0, "d"), 0);
        // a, b back in front of c, d: four items for a bound of three, so the oldest goes.
        let d = o.put_back("b", taken, 0);
        assert_eq!(d.overflow, 1);
        assert_eq!(rules(&o.take("b", &[], 0).0), ["b", "c", "d"]);
    }

    #[test]
    fn config_bounds_are_checked() {
        assert!(OutboxConfig::default().validate().is_ok());
        let zero = OutboxConfig {
            max_per_bot: 0,
            ..Default::default()
        };
        assert!(zero.validate().unwrap_err().contains("max_per_bot"));
        let negative = OutboxConfig {
            max_age_ms: -1,
            ..Default::default()
        };
        assert!(negative.validate().unwrap_err().contains("max_age_ms"));
    }
}
