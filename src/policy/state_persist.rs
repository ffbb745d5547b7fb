//! The durable copy of [`MemoryState`]: which rows it writes through the store (see
//! `crate::durable`), and how a start reads them back.
//!
//! Kinds and what one row holds (JSON, sealed by the store):
//! - `group`: (GroupKey, Versioned<GroupRow>): spacing slots, handoff counts, timers, pending
//!   welcome; its open handoffs are not in it (entries from before handoffs had ids excepted);
//! - `handoff`: (GroupKey, OpenHandoff): one open or claimed handoff, keyed by group and id, so
//!   a message that rewrites its group's row does not rewrite every open handoff with it;
//! - `user`: (UserKey, Versioned<UserRow>): cooldowns, streak, profile, push cadence;
//! - `job`: (id, Job): a delayed proactive job, keyed by its id;
//! - `review`, `reviewed`, `dropped`: (position, entry) of the review queue, the message ids
//!   that deduplicate it, and the dropped sends; a queue's front is cut by position.
//!
//! Versions are stored with the rows, so a decision made after a restart checks against the
//! same versions as before it.

use super::bounded_queue::{BoundedQueue, Discarded, QueueLimits, Record};
use std::collections::VecDeque;

use super::compliance::ReviewItem;
use super::handoff::OpenHandoff;
use super::scheduler::Job;
use super::state::{DroppedSend, GroupKey, GroupRow, UserKey, UserRow, Versioned};
use super::state_journal::{self as journal, DROPPED, GROUP, HANDOFF, JOB, REVIEW, REVIEWED, USER};
use super::state_memory::{
    MemoryState, OnDiscard, ReviewKey, ReviewedIds, Rows, StateLimits, StateQueue,
};
use crate::durable::{Journal, Journaled, StoredRow};

/// What a start read back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub groups: usize,
    /// Open and claimed handoffs, in all groups.
    pub handoffs: usize,
    pub users: usize,
    pub jobs: usize,
    pub review: usize,
    pub dropped: usize,
}

fn parse<T: serde::de::DeserializeOwned>(row: &StoredRow, i: usize) -> Result<T, String> {
    serde_json::from_slice(&row.json).map_err(|e| {
        format!(
            "stored playbook state: row {i} of kind '{}' is not valid: {e}",
            row.kind
        )
    })
}

/// Entries sorted by position, and the position of the first (`fallback` when none).
fn in_order<T>(mut v: Vec<(u64, T)>, fallback: u64) -> (u64, Vec<T>) {
    v.sort_by_key(|(s, _)| *s);
    let first = v.first().map_or(fallback, |(s, _)| *s);
    (first, v.into_iter().map(|(_, t)| t).collect())
}

/// A queue under today's `limits` holding the stored `entries` at their positions, the position
/// of the first stored one, and what the limits no longer allow (already discarded).
fn refill<T: Record>(
    entries: Vec<(u64, T)>,
    limits: QueueLimits,
    fallback: u64,
) -> (u64, BoundedQueue<T>, Discarded) {
    let (first, items) = in_order(entries, fallback);
    let mut queue = BoundedQueue::starting_at(limits, first);
    let mut gone = Discarded::default();
    for item in items {
        gone.add(queue.push(item));
    }
    (first, queue, gone)
}

impl MemoryState {
    /// A state whose every change is noted for the store (see `crate::durable`).
    pub fn durable(limits: StateLimits, on_discard: Option<OnDiscard>) -> MemoryState {
        let s = MemoryState::with_limits(limits, on_discard);
        s.rows.lock().journal = Some(Journal::default());
        s
    }

    /// Loads the rows a previous run stored (rows of other kinds are skipped). Call before
    /// serving. Today's limits apply: what they no longer allow is discarded and counted.
    pub fn restore(&self, rows: &[StoredRow]) -> Result<Restored, String> {
        let mut r = self.rows.lock();
        let mut n = Restored::default();
        let (mut review, mut reviewed, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
        let mut handoffs: Vec<(GroupKey, OpenHandoff)> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            match row.kind.as_str() {
                GROUP => {
                    let (k, v): (GroupKey, Versioned<GroupRow>) = parse(row, i)?;
                    r.groups.insert(k, v);
                    n.groups += 1;
                }
                HANDOFF => handoffs.push(parse(row, i)?),
                USER => {
                    let (k, v): (UserKey, Versioned<UserRow>) = parse(row, i)?;
                    r.users.insert(k, v);
                    n.users += 1;
                }
                JOB => {
                    let (id, job): (u64, Job) = parse(row, i)?;
                    r.next_job_id = r.next_job_id.max(id);
                    let gone = r.jobs.insert(id, job);
                    r.count(StateQueue::DelayedJobs, gone);
                    n.jobs += 1;
                }
                REVIEW => review.push(parse::<(u64, ReviewItem)>(row, i)?),
                REVIEWED => reviewed.push(parse::<(u64, (i64, ReviewKey))>(row, i)?),
                DROPPED => dropped.push(parse::<(u64, DroppedSend)>(row, i)?),
                _ => {}
            }
        }
        n.handoffs = merge_handoffs(&mut r, handoffs);
        let limits = r.limits;
        n.review = review.len();
        n.dropped = dropped.len();
        let (first, queue, gone) = refill(review, limits.review_queue, r.review.next_seq());
        (r.review, r.synced.review) = (queue, first);
        r.count(StateQueue::Review, gone);
        let (first, queue, gone) = refill(dropped, limits.dropped_sends, r.dropped.next_seq());
        (r.dropped, r.synced.dropped) = (queue, first);
        r.count(StateQueue::Dropped, gone);
        let (first, items) = in_order(reviewed, r.reviewed.next_seq());
        r.reviewed = ReviewedIds::new(limits.review_queue, first);
        r.synced.reviewed = first;
        for (at, key) in items {
            r.reviewed.insert(at, key);
        }
        // Cuts made by today's limits are written back; the rest is already stored.
        r.sync_journal();
        Ok(n)
    }
}

/// Puts the `handoff` rows back into their groups' open lists (oldest first: by id, the
/// id-0 entries kept in their rows ahead in their stored order) and returns how many open
/// handoffs the groups hold. Group rows written before handoffs had rows of their own hold
/// their open list inline: it is written out as rows now, so the next write of such a group's
/// row, which leaves the list out, loses nothing. A handoff row whose group has no row (which
/// one commit never leaves behind) is deleted.
fn merge_handoffs(r: &mut Rows, handoffs: Vec<(GroupKey, OpenHandoff)>) -> usize {
    let inline: Vec<GroupKey> = r
        .groups
        .iter()
        .filter(|(_, g)| g.row.handoffs.open.iter().any(|h| h.id != 0))
        .map(|(k, _)| k.clone())
        .collect();
    let mut orphans = Vec::new();
    for (k, h) in handoffs {
        match r.groups.get_mut(&k) {
            Some(g) => {
                let open = &mut g.row.handoffs.open;
                // Inline and a row at once: the row is the newer copy.
                open.retain(|o| o.id != h.id);
                open.push_back(h);
            }
            None => orphans.push((k, h.id)),
        }
    }
    let mut total = 0;
    for g in r.groups.values_mut() {
        g.row.handoffs.open.make_contiguous().sort_by_key(|h| h.id);
        total += g.row.handoffs.open.len();
    }
    if let Some(j) = &mut r.journal {
        let none = VecDeque::new();
        for k in inline {
            if let Some(g) = r.groups.get_mut(&k) {
                journal::put_group(j, &k, &none, g);
            }
        }
        for (k, id) in orphans {
            journal::delete_handoff(j, &k, id);
        }
    }
    total
}

impl Journaled for MemoryState {
    fn with_journal<R>(&self, f: impl FnOnce(&mut Option<Journal>) -> R) -> R {
        f(&mut self.rows.lock().journal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::RowKey;
    use crate::durable::{DurableRows, RowWrite};
    use crate::policy::state::{PlaybookState, Scope, StateChange, SweepLimits};

    /// Applies writes to a map the way the store does: what a restart would read.
    #[derive(Default)]
    struct Disk(std::collections::BTreeMap<(&'static str, RowKey), Vec<u8>>);

    impl Disk {
        fn apply(&mut self, writes: Vec<RowWrite>) {
            for w in writes {
                match w {
                    RowWrite::Put { kind, key, json } => {
                        self.0.insert((kind, key), json);
                    }
                    RowWrite::Delete { kind, key } => {
                        self.0.remove(&(kind, key));
                    }
                    RowWrite::DeleteBelow { kind, seq } => self.0.retain(|(k, key), _| {
                        !(*k == kind && matches!(key, RowKey::Seq(s) if *s < seq))
                    }),
                }
            }
        }
        fn rows(&self) -> Vec<StoredRow> {
            self.0
                .iter()
                .map(|((k, _), json)| StoredRow {
                    kind: k.to_string(),
                    json: json.clone(),
                })
                .collect()
        }
        fn count(&self, kind: &str) -> usize {
            self.0.keys().filter(|(k, _)| *k == kind).count()
        }
    }

    fn review(id: &str, at_ms: i64) -> ReviewItem {
        ReviewItem {
            bot_id: "b".into(),
            chat_id: "g".into(),
            user_id: "u".into(),
            message_id: id.into(),
            text: "text".into(),
            matched: "w".into(),
            reason: "banned".into(),
            at_ms,
            verdict: None,
        }
    }

    fn dropped(at_ms: i64) -> DroppedSend {
        DroppedSend {
            at_ms,
            bot_id: "b".into(),
            chat_id: "g".into(),
            user_id: "u".into(),
            source_id: "m".into(),
            key: "faq".into(),
            reason: "spacing".into(),
        }
    }

    fn job(at_ms: i64) -> Job {
        Job {
            bot_id: "b".into(),
            chat_id: "g".into(),
            chat_name: String::new(),
            kind: crate::policy::scheduler::OutboundKind::Welcome,
            rule_id: "r".into(),
            at_ms,
            content: crate::policy::scheduler::JobContent::Render {
                key: "welcome".into(),
                user: None,
                nickname: Some("n".into()),
                days_left: None,
                event_name: String::new(),
            },
            user_ids: vec!["u".into()],
            slot_reserved: false,
        }
    }

    async fn everything(st: &MemoryState) -> String {
        let g = GroupKey::new("b", "g");
        let view = st.load(&Scope::user(g, "u", Some(0))).await.unwrap();
        let due = st.load_due(Some(i64::MAX)).await.unwrap();
        format!(
            "{view:?}\n{due:?}\n{:?}\n{:?}\n{}",
            st.review_queue().await.unwrap(),
            st.dropped_sends().await.unwrap(),
            st.reviewed_ids()
        )
    }

    #[tokio::test]
    async fn a_restart_reads_back_every_row_queue_and_version() {
        let st = MemoryState::durable(StateLimits::default(), None);
        let mut disk = Disk::default();
        let g = GroupKey::new("b", "g");
        let mut grow = GroupRow::default();
        let who = crate::policy::handoff::HandoffOpening {
            user_id: "u",
            message_id: "m",
            reason: "handoff:intent",
        };
        grow.handoffs.open(5, who, 5);
        let urow = UserRow {
            not_understood_streak: 2,
            ..UserRow::default()
        };
        for v in 0..3 {
            st.commit(vec![
                StateChange::PutGroup {
                    key: g.clone(),
                    expected_version: v,
                    row: grow.clone(),
                },
                StateChange::PutUser {
                    key: g.user("u"),
                    expected_version: v,
                    row: urow.clone(),
                },
            ])
            .await
            .unwrap();
        }
        st.commit(vec![
            StateChange::AddReview(review("m1", 10)),
            StateChange::AddReview(review("m2", 11)),
            StateChange::AddDropped(dropped(12)),
            StateChange::Schedule(job(100)),
            StateChange::Schedule(job(200)),
        ])
        .await
        .unwrap();
        disk.apply(st.take_writes());
        assert!(!st.has_writes());
        // One job taken, the review queue drained, one more review entry: all written as
        // changes of their own.
        let first = st.load_due(Some(150)).await.unwrap().jobs[0].id;
        st.commit(vec![StateChange::Unschedule { id: first }])
            .await
            .unwrap();
        assert_eq!(st.drain_review_queue().await.unwrap().len(), 2);
        st.commit(vec![
            StateChange::AddReview(review("m3", 13)),
            // Already queued once: deduplicated after the restart as before it.
            StateChange::AddReview(review("m1", 14)),
        ])
        .await
        .unwrap();
        disk.apply(st.take_writes());
        assert_eq!((disk.count(REVIEW), disk.count(JOB)), (1, 1));

        let back = MemoryState::durable(StateLimits::default(), None);
        let n = back.restore(&disk.rows()).unwrap();
        assert_eq!(
            n,
            Restored {
                groups: 1,
                handoffs: 1,
                users: 1,
                jobs: 1,
                review: 1,
                dropped: 1
            }
        );
        assert_eq!(everything(&back).await, everything(&st).await);
        assert!(!back.has_writes(), "nothing to write back after a restore");
        // Versions continue: a decision computed before the restart at version 3 still lands.
        back.commit(vec![StateChange::PutGroup {
            key: g.clone(),
            expected_version: 3,
            row: grow.clone(),
        }])
        .await
        .unwrap();
        // New entries continue the positions, so nothing stored is overwritten.
        back.commit(vec![StateChange::AddReview(review("m4", 15))])
            .await
            .unwrap();
        disk.apply(back.take_writes());
        assert_eq!(disk.count(REVIEW), 2);
        // A reviewer's verdict is written over its entry.
        let id = back.reviews().await.unwrap()[0].0;
        let verdict = crate::policy::compliance::ReviewVerdict {
            approved: true,
            allowed_word: true,
            by: "amy".into(),
            at_ms: 16,
        };
        let d = back
            .decide_review(id, verdict.clone())
            .await
            .unwrap()
            .unwrap();
        assert!(d.changed);
        disk.apply(back.take_writes());
        assert_eq!(disk.count(REVIEW), 2);
        let again = MemoryState::durable(StateLimits::default(), None);
        again.restore(&disk.rows()).unwrap();
        assert_eq!(everything(&again).await, everything(&back).await);
        let kept = again.reviews().await.unwrap();
        assert_eq!(
            (kept[0].0, kept[0].1.verdict.as_ref()),
            (id, Some(&verdict))
        );
    }

    #[tokio::test]
    async fn swept_and_discarded_state_is_deleted_from_the_copy() {
        let limits = StateLimits {
            review_queue: QueueLimits {
                max_entries: 2,
                ..QueueLimits::default()
            },
            ..StateLimits::default()
        };
        let st = MemoryState::durable(limits, None);
        let mut disk = Disk::default();
        let g = GroupKey::new("b", "g");
        let mut urow = UserRow::default();
        urow.profile.last_seen_ms = 0;
        urow.profile.disclosed = true;
        st.commit(vec![StateChange::PutUser {
            key: g.user("u"),
            expected_version: 0,
            row: urow,
        }])
        .await
        .unwrap();
        for (n, id) in ["a", "b", "c"].iter().enumerate() {
            st.commit(vec![StateChange::AddReview(review(id, n as i64))])
                .await
                .unwrap();
        }
        disk.apply(st.take_writes());
        assert_eq!(
            disk.count(REVIEW),
            2,
            "the oldest entry went over max_entries"
        );
        assert_eq!(disk.count(USER), 1);
        st.sweep(
            10 * 86_400_000,
            &SweepLimits {
                user_idle_ms: 1,
                cooldown_max_age_ms: 1,
                chat_idle_ms: 1,
            },
        )
        .await
        .unwrap();
        disk.apply(st.take_writes());
        assert_eq!(
            disk.count(USER),
            0,
            "an idle user's row is forgotten on disk too"
        );
        let back = MemoryState::durable(limits, None);
        back.restore(&disk.rows()).unwrap();
        assert_eq!(everything(&back).await, everything(&st).await);
    }

    fn three_open_handoffs() -> GroupRow {
        let mut row = GroupRow::default();
        for (i, m) in ["m1", "m2", "m3"].iter().enumerate() {
            let who = crate::policy::handoff::HandoffOpening {
                user_id: "u",
                message_id: m,
                reason: "handoff:not_understood",
            };
            row.handoffs.open(10 + i as i64, who, 5);
        }
        row
    }

    fn kinds(writes: &[RowWrite]) -> Vec<(&'static str, bool)> {
        writes
            .iter()
            .map(|w| match w {
                RowWrite::Put { kind, .. } => (*kind, true),
                RowWrite::Delete { kind, .. } => (*kind, false),
                RowWrite::DeleteBelow { kind, .. } => (*kind, false),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_message_rewrites_its_groups_row_without_the_open_handoffs() {
        let st = MemoryState::durable(StateLimits::default(), None);
        let mut disk = Disk::default();
        let g = GroupKey::new("b", "g");
        let mut row = three_open_handoffs();
        let put = |v: u64, row: &GroupRow| StateChange::PutGroup {
            key: g.clone(),
            expected_version: v,
            row: row.clone(),
        };
        st.commit(vec![put(0, &row)]).await.unwrap();
        let w = st.take_writes();
        assert_eq!(
            kinds(&w),
            vec![
                (GROUP, true),
                (HANDOFF, true),
                (HANDOFF, true),
                (HANDOFF, true)
            ]
        );
        disk.apply(w);

        // A message: the counters change, the open handoffs do not.
        row.handoffs.note_message();
        st.commit(vec![put(1, &row)]).await.unwrap();
        let w = st.take_writes();
        assert_eq!(kinds(&w), vec![(GROUP, true)], "only the group's own row");
        let RowWrite::Put { json, .. } = &w[0] else {
            unreachable!()
        };
        let text = String::from_utf8_lossy(json);
        assert!(!text.contains("m1") && !text.contains("m3"), "{text}");
        disk.apply(w);

        // A claim rewrites that handoff alone; an expiry deletes the unclaimed ones.
        row.handoffs.claim("g", 2, "amy", 20).unwrap();
        st.commit(vec![put(2, &row)]).await.unwrap();
        let w = st.take_writes();
        assert_eq!(kinds(&w), vec![(GROUP, true), (HANDOFF, true)]);
        disk.apply(w);
        row.handoffs.expire(1_000, 100);
        st.commit(vec![put(3, &row)]).await.unwrap();
        let w = st.take_writes();
        assert_eq!(
            kinds(&w),
            vec![(GROUP, true), (HANDOFF, false), (HANDOFF, false)]
        );
        disk.apply(w);
        assert_eq!(disk.count(HANDOFF), 1);

        let back = MemoryState::durable(StateLimits::default(), None);
        let n = back.restore(&disk.rows()).unwrap();
        assert_eq!((n.groups, n.handoffs), (1, 1));
        assert_eq!(everything(&back).await, everything(&st).await);
        assert!(!back.has_writes());
    }

    #[tokio::test]
    async fn group_rows_with_inline_handoffs_from_the_previous_release_are_split_on_restore() {
        let g = GroupKey::new("b", "g");
        let mut row = three_open_handoffs();
        // An entry from before handoffs had ids (stored as its opening time only).
        row.handoffs
            .open
            .push_front(crate::policy::handoff::OpenHandoff {
                opened_ms: 3,
                ..Default::default()
            });
        let legacy = Versioned { version: 4, row };
        // What the previous release wrote: the whole row, open list inline.
        let mut disk = Disk::default();
        disk.0.insert(
            (GROUP, journal::group_name(&g)),
            serde_json::to_vec(&(&g, &legacy)).unwrap(),
        );
        let st = MemoryState::durable(StateLimits::default(), None);
        let n = st.restore(&disk.rows()).unwrap();
        assert_eq!((n.groups, n.handoffs), (1, 4));
        let view = st.load(&Scope::group(g.clone())).await.unwrap();
        assert_eq!(view.group, legacy, "read back as written");
        // Written out as rows at once; the id-0 entry stays in the group's row.
        disk.apply(st.take_writes());
        assert_eq!((disk.count(GROUP), disk.count(HANDOFF)), (1, 3));

        // A message after the upgrade leaves the handoffs out of the group's row: none lost.
        let mut next = legacy.row.clone();
        next.handoffs.note_message();
        st.commit(vec![StateChange::PutGroup {
            key: g.clone(),
            expected_version: 4,
            row: next,
        }])
        .await
        .unwrap();
        disk.apply(st.take_writes());
        let back = MemoryState::durable(StateLimits::default(), None);
        let n = back.restore(&disk.rows()).unwrap();
        assert_eq!(n.handoffs, 4);
        assert_eq!(everything(&back).await, everything(&st).await);
        let open = &back
            .load(&Scope::group(g))
            .await
            .unwrap()
            .group
            .row
            .handoffs
            .open;
        assert_eq!(
            open.iter().map(|h| h.id).collect::<Vec<_>>(),
            vec![0, 1, 2, 3],
            "oldest first"
        );
    }

    #[test]
    fn a_damaged_row_is_an_error_naming_its_kind() {
        let st = MemoryState::durable(StateLimits::default(), None);
        let e = st
            .restore(&[StoredRow {
                kind: GROUP.into(),
                json: b"{not json".to_vec(),
            }])
            .unwrap_err();
        assert!(e.contains("kind 'group'"), "{e}");
    }

    #[tokio::test]
    async fn a_memory_only_state_notes_nothing() {
        let st = MemoryState::new();
        st.commit(vec![StateChange::AddDropped(dropped(1))])
            .await
            .unwrap();
        assert!(!st.has_writes());
        assert!(st.take_writes().is_empty());
    }
}
