//! State that must outlive the process: the playbook's rows, its queues and the outbox of
//! proactive sends, written through the store.
//!
//! A holder of such state keeps it in memory (deciding stays a lock and a map lookup) and notes
//! every change in a [`Journal`]: the latest value of each row it touched, or that the row is
//! gone. The store's single writer thread takes the journals of all holders ([`DurableRows`])
//! into each group commit, after the records of that batch, so a state change made before a
//! record was submitted is on disk when that record's commit ticket resolves: an answered
//! request's state change is as durable as its log row. A commit that fails gives the writes
//! back ([`DurableRows::retake`]) unless a newer value of the same row is already waiting.
//!
//! Rows are plain JSON here; the store seals them like the log (the database never sees them
//! in clear) and hides `Name` keys behind keyed pseudonyms. `Seq` keys are queue positions
//! (no personal data), kept in order so a queue's front can be cut with one range delete.
//!
//! This file imports nothing from the rest of the crate: both the policy and service layers
//! (holders) and the store (writer) use it.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde::Serialize;

/// Which row of a kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowKey {
    /// A row named by ids (bot, chat, user): stored as a keyed pseudonym.
    Name(String),
    /// A queue position: stored in order, so [`RowWrite::DeleteBelow`] can cut a queue's front.
    Seq(u64),
}

/// One change to the stored rows.
#[derive(Debug, Clone, PartialEq)]
pub enum RowWrite {
    Put {
        kind: &'static str,
        key: RowKey,
        json: Vec<u8>,
    },
    Delete {
        kind: &'static str,
        key: RowKey,
    },
    /// Every `Seq` row of `kind` below `seq` goes (a queue's front was discarded or drained).
    DeleteBelow {
        kind: &'static str,
        seq: u64,
    },
}

/// A row as read back at start.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub kind: String,
    pub json: Vec<u8>,
}

impl RowWrite {
    /// The row a `Put` leaves in the store, as a start reads it back: tests replay a holder's
    /// writes into a fresh one without a store.
    #[cfg(test)]
    pub(crate) fn into_stored(self) -> Option<StoredRow> {
        match self {
            RowWrite::Put { kind, json, .. } => Some(StoredRow {
                kind: kind.to_string(),
                json,
            }),
            _ => None,
        }
    }
}

/// A holder of durable state, as the store's writer sees it.
pub trait DurableRows: Send + Sync {
    /// Takes the changes noted since the last take (the latest value of each row).
    fn take_writes(&self) -> Vec<RowWrite>;
    /// Gives back writes whose commit failed, so the next commit carries them; a row changed
    /// again since keeps its newer value.
    fn retake(&self, writes: Vec<RowWrite>);
    /// True when changes wait for a commit.
    fn has_writes(&self) -> bool;
}

/// A holder whose journal (None: not durable) sits behind its own lock: [`DurableRows`] comes
/// with it.
pub trait Journaled: Send + Sync {
    /// Runs `f` on the journal, under the holder's lock.
    fn with_journal<R>(&self, f: impl FnOnce(&mut Option<Journal>) -> R) -> R;
}

impl<T: Journaled> DurableRows for T {
    fn take_writes(&self) -> Vec<RowWrite> {
        self.with_journal(|j| j.as_mut().map(Journal::take).unwrap_or_default())
    }

    fn retake(&self, writes: Vec<RowWrite>) {
        self.with_journal(|j| {
            if let Some(j) = j.as_mut() {
                j.retake(writes);
            }
        })
    }

    fn has_writes(&self) -> bool {
        self.with_journal(|j| j.as_ref().is_some_and(|j| !j.is_empty()))
    }
}

/// The changes a holder made since the writer last took them (see the module doc).
#[derive(Debug, Default)]
pub struct Journal {
    /// (kind, key) → the row's latest JSON, or None: delete it.
    rows: BTreeMap<(&'static str, RowKey), Option<Vec<u8>>>,
    /// kind → every `Seq` row below this goes.
    below: BTreeMap<&'static str, u64>,
}

impl Journal {
    /// Notes `value` as the row's latest. Serialising plain data cannot fail; if it ever did,
    /// the row is kept as it was on disk and the failure is logged rather than panicking.
    pub fn put<T: Serialize + ?Sized>(&mut self, kind: &'static str, key: RowKey, value: &T) {
        match serde_json::to_vec(value) {
            Ok(json) => {
                self.rows.insert((kind, key), Some(json));
            }
            Err(e) => tracing::error!(kind, error = %e, "durable row not serialisable; not stored"),
        }
    }

    pub fn delete(&mut self, kind: &'static str, key: RowKey) {
        self.rows.insert((kind, key), None);
    }

    /// Every `Seq` row of `kind` below `seq` goes, including any waiting here.
    pub fn delete_below(&mut self, kind: &'static str, seq: u64) {
        let mark = self.below.entry(kind).or_insert(0);
        if seq <= *mark {
            return;
        }
        *mark = seq;
        self.rows
            .retain(|(k, key), _| !(*k == kind && matches!(key, RowKey::Seq(s) if *s < seq)));
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.below.is_empty()
    }

    /// The writes, range deletes first (the rows noted after them are above their marks).
    pub fn take(&mut self) -> Vec<RowWrite> {
        let below = std::mem::take(&mut self.below);
        let rows = std::mem::take(&mut self.rows);
        let mut out: Vec<RowWrite> = below
            .into_iter()
            .map(|(kind, seq)| RowWrite::DeleteBelow { kind, seq })
            .collect();
        out.extend(rows.into_iter().map(|((kind, key), v)| match v {
            Some(json) => RowWrite::Put { kind, key, json },
            None => RowWrite::Delete { kind, key },
        }));
        out
    }

    /// See [`DurableRows::retake`].
    pub fn retake(&mut self, writes: Vec<RowWrite>) {
        for w in writes {
            match w {
                RowWrite::DeleteBelow { kind, seq } => {
                    let mark = self.below.entry(kind).or_insert(0);
                    *mark = (*mark).max(seq);
                }
                RowWrite::Put { kind, key, json } => {
                    if !self.cut(kind, &key) {
                        self.rows.entry((kind, key)).or_insert(Some(json));
                    }
                }
                RowWrite::Delete { kind, key } => {
                    self.rows.entry((kind, key)).or_insert(None);
                }
            }
        }
    }

    /// A queue row already cut by a newer range delete.
    fn cut(&self, kind: &'static str, key: &RowKey) -> bool {
        matches!((key, self.below.get(kind)), (RowKey::Seq(s), Some(mark)) if s < mark)
    }
}

/// Durable holders that are not one of the store's own, registered with the writer.
#[derive(Default)]
pub struct Holders {
    list: Mutex<Vec<std::sync::Arc<dyn DurableRows>>>,
    /// Shared by a change that spans holders (the playbook hands out a due send and the outbox
    /// queues it); the writer takes it exclusively, so it never commits half of such a change.
    gate: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for Holders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Holders")
            .field("count", &self.list.lock().len())
            .finish()
    }
}

impl Holders {
    pub fn register(&self, holder: std::sync::Arc<dyn DurableRows>) {
        self.list.lock().push(holder);
    }

    /// Held across a change that spans holders (see `gate`).
    pub async fn hold(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Every holder's writes, each holder's in its own order. Blocks while a change spanning
    /// holders is under way: call it from the writer thread, never from async code.
    pub fn take(&self) -> Vec<(usize, Vec<RowWrite>)> {
        let _whole = self.gate.blocking_write();
        let taken = self
            .list
            .lock()
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.take_writes()))
            .filter(|(_, w)| !w.is_empty())
            .collect();
        // The build that measures what the durable state costs (`benches/state_cost.sh`)
        // commits none of it: the log alone, as before the state was made durable.
        if cfg!(feature = "bench-no-state") {
            return Vec::new();
        }
        taken
    }

    pub fn retake(&self, taken: Vec<(usize, Vec<RowWrite>)>) {
        let list = self.list.lock();
        for (i, writes) in taken {
            if let Some(h) = list.get(i) {
                h.retake(writes);
            }
        }
    }

    pub fn has_writes(&self) -> bool {
        self.list.lock().iter().any(|h| h.has_writes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puts(w: &[RowWrite]) -> Vec<(&'static str, RowKey, String)> {
        w.iter()
            .filter_map(|w| match w {
                RowWrite::Put { kind, key, json } => {
                    Some((*kind, key.clone(), String::from_utf8(json.clone()).unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_latest_value_of_a_row_wins_and_a_take_empties_the_journal() {
        let mut j = Journal::default();
        j.put("group", RowKey::Name("a".into()), &1);
        j.put("group", RowKey::Name("a".into()), &2);
        j.put("user", RowKey::Name("a".into()), &3);
        j.delete("group", RowKey::Name("b".into()));
        let w = j.take();
        assert!(j.is_empty());
        assert_eq!(
            puts(&w),
            vec![
                ("group", RowKey::Name("a".into()), "2".to_string()),
                ("user", RowKey::Name("a".into()), "3".to_string())
            ]
        );
        assert!(w.contains(&RowWrite::Delete {
            kind: "group",
            key: RowKey::Name("b".into())
        }));
    }

    #[test]
    fn a_range_delete_drops_waiting_queue_rows_below_it_and_comes_first() {
        let mut j = Journal::default();
        for s in 0..5u64 {
            j.put("review", RowKey::Seq(s), &s);
        }
        j.put("dropped", RowKey::Seq(1), &"x");
        j.delete_below("review", 3);
        j.delete_below("review", 2); // lower: no change
        let w = j.take();
        assert_eq!(
            w[0],
            RowWrite::DeleteBelow {
                kind: "review",
                seq: 3
            }
        );
        let kept: Vec<_> = puts(&w).into_iter().map(|(k, key, _)| (k, key)).collect();
        assert_eq!(
            kept,
            vec![
                ("dropped", RowKey::Seq(1)),
                ("review", RowKey::Seq(3)),
                ("review", RowKey::Seq(4))
            ]
        );
    }

    #[test]
    fn retaken_writes_never_overwrite_newer_ones_or_revive_cut_rows() {
        let mut j = Journal::default();
        j.put("group", RowKey::Name("a".into()), &1);
        j.put("group", RowKey::Name("b".into()), &1);
        j.put("review", RowKey::Seq(7), &"old");
        j.delete_below("review", 2);
        let failed = j.take();
        // Meanwhile: a newer value of a, and the review queue's front moved past 7.
        j.put("group", RowKey::Name("a".into()), &2);
        j.delete_below("review", 8);
        j.retake(failed);
        let w = j.take();
        assert_eq!(
            w[0],
            RowWrite::DeleteBelow {
                kind: "review",
                seq: 8
            }
        );
        assert_eq!(
            puts(&w),
            vec![
                ("group", RowKey::Name("a".into()), "2".to_string()),
                ("group", RowKey::Name("b".into()), "1".to_string())
            ]
        );
    }
}
