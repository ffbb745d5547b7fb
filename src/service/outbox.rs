//! Proactive sends (welcomes, scheduled posts, re-activation, pushes) waiting, per bot, for a
//! Subscribe stream of that bot to take them.
//!
//! The playbook hands each due item out once (a collector takes them every second, whether or
//! not a stream is open), so this is where it waits. Two bounds keep it from growing while a bot
//! is not subscribed: each bot's queue holds at most `max_per_bot` items (when full, the oldest
//! goes), and an item that has waited here more than `max_age_ms` is dropped (a welcome that
//! arrives hours late does more harm than none). Whatever is dropped is reported to the caller,
//! which counts and logs it.
//!
//! With a store, every item is also a durable row (kind `outbox`, keyed by its id; see
//! `crate::durable`): queued items survive a restart, and an item taken for a stream is deleted
//! (and that committed) before the stream sends it, so a restart never sends it twice.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::durable::{Journal, Journaled, RowKey, StoredRow};
use crate::policy::scheduler::OutboundItem;

/// The durable rows' kind.
pub const KIND: &str = "outbox";

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

/// One waiting item: (id, when it was queued, Unix ms; the item).
type Entry = (u64, i64, OutboundItem);

#[derive(Debug)]
pub struct Outbox {
    cfg: OutboxConfig,
    /// Per bot, oldest first.
    queues: HashMap<String, VecDeque<Entry>>,
    /// The last id given out.
    last_id: u64,
    /// Changes for the store (None: memory only).
    journal: Option<Journal>,
}

impl Outbox {
    pub fn new(cfg: OutboxConfig) -> Self {
        Self {
            cfg,
            queues: HashMap::new(),
            last_id: 0,
            journal: None,
        }
    }

    /// An outbox whose every change is noted for the store.
    pub fn durable(cfg: OutboxConfig) -> Self {
        Self {
            journal: Some(Journal::default()),
            ..Self::new(cfg)
        }
    }

    /// Loads the items a previous run left waiting (rows of other kinds are skipped); returns
    /// how many. The bounds apply at the next push or take.
    pub fn restore(&mut self, rows: &[StoredRow]) -> Result<usize, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if row.kind == KIND {
                entries.push(
                    serde_json::from_slice(&row.json)
                        .map_err(|e| format!("stored outbox: row {i} is not a valid item: {e}"))?,
                );
            }
        }
        entries.sort_by_key(|e| e.0);
        let n = entries.len();
        for mut e in entries {
            if e.2.id.is_empty() {
                e.2.id = e.2.stable_id();
            }
            self.last_id = self.last_id.max(e.0);
            self.queues
                .entry(e.2.bot_id.clone())
                .or_default()
                .push_back(e);
        }
        Ok(n)
    }

    fn enqueue(&mut self, front: bool, item: OutboundItem, now_ms: i64) {
        self.last_id += 1;
        let entry = (self.last_id, now_ms, item);
        if let Some(j) = &mut self.journal {
            j.put(KIND, RowKey::Seq(entry.0), &entry);
        }
        let queue = self.queues.entry(entry.2.bot_id.clone()).or_default();
        match front {
            true => queue.push_front(entry),
            false => queue.push_back(entry),
        }
    }

    /// Notes entries that left the outbox; returns how many.
    fn gone(&mut self, entries: impl IntoIterator<Item = Entry>) -> usize {
        let mut n = 0;
        for (id, _, _) in entries {
            if let Some(j) = &mut self.journal {
                j.delete(KIND, RowKey::Seq(id));
            }
            n += 1;
        }
        n
    }

    /// Queues `item` at the back of its bot's queue.
    pub fn push(&mut self, item: OutboundItem, now_ms: i64) -> Dropped {
        let bot = item.bot_id.clone();
        let expired = self.expire(&bot, now_ms);
        self.enqueue(false, item, now_ms);
        Dropped {
            expired,
            overflow: self.trim_front(&bot),
        }
    }

    /// Takes `bot_id`'s waiting items, only those for `chats` when it is not empty (the others
    /// stay for another stream), oldest first.
    pub fn take(
        &mut self,
        bot_id: &str,
        chats: &[String],
        now_ms: i64,
    ) -> (Vec<OutboundItem>, Dropped) {
        let dropped = Dropped {
            expired: self.expire(bot_id, now_ms),
            ..Dropped::default()
        };
        let Some(queue) = self.queues.get_mut(bot_id) else {
            return (Vec::new(), dropped);
        };
        let mine: Vec<Entry> = if chats.is_empty() {
            queue.drain(..).collect()
        } else {
            let (mine, rest): (Vec<_>, Vec<_>) = queue
                .drain(..)
                .partition(|(_, _, i)| chats.contains(&i.chat_id));
            queue.extend(rest);
            mine
        };
        if queue.is_empty() {
            self.queues.remove(bot_id);
        }
        let items = mine.iter().map(|(_, _, i)| i.clone()).collect();
        self.gone(mine);
        (items, dropped)
    }

    /// Puts items a stream could not send back at the front, in their order, as queued now.
    /// They are the oldest, so if the queue is now over its bound they are the ones dropped.
    pub fn put_back(&mut self, bot_id: &str, items: Vec<OutboundItem>, now_ms: i64) -> Dropped {
        for mut item in items.into_iter().rev() {
            item.bot_id = bot_id.to_string();
            self.enqueue(true, item, now_ms);
        }
        Dropped {
            overflow: self.trim_front(bot_id),
            expired: 0,
        }
    }

    /// Drops `bot_id`'s oldest items until at most `max_per_bot` are left; returns how many.
    fn trim_front(&mut self, bot_id: &str) -> usize {
        let max = self.cfg.max_per_bot;
        let Some(queue) = self.queues.get_mut(bot_id) else {
            return 0;
        };
        let over = queue.len().saturating_sub(max);
        let gone: Vec<Entry> = queue.drain(..over).collect();
        self.gone(gone)
    }

    /// Removes `bot_id`'s items queued more than `max_age_ms` ago; returns how many.
    fn expire(&mut self, bot_id: &str, now_ms: i64) -> usize {
        let max_age_ms = self.cfg.max_age_ms;
        let Some(queue) = self.queues.get_mut(bot_id) else {
            return 0;
        };
        let (keep, gone): (VecDeque<Entry>, VecDeque<Entry>) = queue
            .drain(..)
            .partition(|(_, queued, _)| now_ms.saturating_sub(*queued) <= max_age_ms);
        *queue = keep;
        self.gone(gone)
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

impl Journaled for Mutex<Outbox> {
    fn with_journal<R>(&self, f: impl FnOnce(&mut Option<Journal>) -> R) -> R {
        f(&mut self.lock().journal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::{DurableRows, RowWrite};
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
            id: String::new(),
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

    /// Applies writes the way the store does; what a restart reads.
    fn apply(disk: &mut std::collections::BTreeMap<u64, Vec<u8>>, writes: Vec<RowWrite>) {
        for w in writes {
            match w {
                RowWrite::Put {
                    key: RowKey::Seq(id),
                    json,
                    ..
                } => {
                    disk.insert(id, json);
                }
                RowWrite::Delete {
                    key: RowKey::Seq(id),
                    ..
                } => {
                    disk.remove(&id);
                }
                other => panic!("unexpected write {other:?}"),
            }
        }
    }

    fn rows(disk: &std::collections::BTreeMap<u64, Vec<u8>>) -> Vec<StoredRow> {
        disk.values()
            .map(|json| StoredRow {
                kind: KIND.into(),
                json: json.clone(),
            })
            .collect()
    }

    #[test]
    fn a_durable_outbox_restores_what_waits_and_not_what_was_taken_or_dropped() {
        let shared = Mutex::new(Outbox::durable(OutboxConfig {
            max_per_bot: 2,
            max_age_ms: 1_000_000,
        }));
        let mut disk = std::collections::BTreeMap::new();
        {
            let mut o = shared.lock();
            for (chat, rule) in [("g1", "a"), ("g2", "b"), ("g1", "c")] {
                o.push(item("b", chat, 0, rule), 0); // a goes over max_per_bot
            }
            o.push(item("x", "g", 0, "x1"), 0);
        }
        apply(&mut disk, shared.take_writes());
        assert_eq!(disk.len(), 3);
        let (taken, _) = shared.lock().take("b", &["g1".to_string()], 0);
        assert_eq!(rules(&taken), ["c"]);
        apply(&mut disk, shared.take_writes());
        assert!(!shared.has_writes());

        let mut back = Outbox::durable(OutboxConfig {
            max_per_bot: 2,
            max_age_ms: 1_000_000,
        });
        assert_eq!(back.restore(&rows(&disk)).unwrap(), 2);
        assert_eq!(rules(&back.take("b", &[], 0).0), ["b"]);
        assert_eq!(rules(&back.take("x", &[], 0).0), ["x1"]);
        // New ids continue after the restored ones, so nothing stored is overwritten.
        back.push(item("b", "g", 0, "d"), 0);
        let writes = back.journal.as_mut().unwrap().take();
        assert!(
            writes
                .iter()
                .any(|w| matches!(w, RowWrite::Put { key: RowKey::Seq(id), .. } if *id > 4)),
            "{writes:?}"
        );
        let bad = StoredRow {
            kind: KIND.into(),
            json: b"[1, 2]".to_vec(),
        };
        let e = Outbox::new(OutboxConfig::default())
            .restore(&[bad])
            .unwrap_err();
        assert!(e.contains("stored outbox: row 0"), "{e}");
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
