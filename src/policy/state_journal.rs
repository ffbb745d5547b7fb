//! How the in-memory playbook state (`MemoryState`) notes its changes for the store: the kinds of its
//! durable rows, their keys, and what one row holds (see `state_persist.rs` for the list and
//! for reading them back).

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::handoff::OpenHandoff;
use super::state::{GroupKey, GroupRow, UserKey, UserRow, Versioned};
use crate::durable::{Journal, RowKey};

pub const GROUP: &str = "group";
/// One open (or claimed) handoff of a group, apart from the group's row: see [`put_group`].
pub const HANDOFF: &str = "handoff";
pub const USER: &str = "user";
pub const JOB: &str = "job";
pub const REVIEW: &str = "review";
pub const REVIEWED: &str = "reviewed";
pub const DROPPED: &str = "dropped";

/// The queue fronts the journal has already recorded (so a cut is written once).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Synced {
    pub(super) review: u64,
    pub(super) reviewed: u64,
    pub(super) dropped: u64,
}

/// Length-prefixed, so ("ab", "c") and ("a", "bc") name different rows.
fn name(parts: &[&str]) -> RowKey {
    RowKey::Name(parts.iter().map(|p| format!("{}:{p}", p.len())).collect())
}

pub(super) fn group_name(key: &GroupKey) -> RowKey {
    name(&[&key.bot_id, &key.chat_id])
}

/// The group's own row, without its open handoffs that have ids (those are rows of their own;
/// entries from before handoffs had ids, id 0, stay in the group's row). `v` is lent mutably
/// only to lift the list out while serialising; it is as it was on return.
pub(super) fn put_group_row(j: &mut Journal, key: &GroupKey, v: &mut Versioned<GroupRow>) {
    let open = std::mem::take(&mut v.row.handoffs.open);
    v.row.handoffs.open = open.iter().filter(|h| h.id == 0).cloned().collect();
    j.put(GROUP, group_name(key), &(key, &*v));
    v.row.handoffs.open = open;
}

fn handoff_name(key: &GroupKey, id: u64) -> RowKey {
    name(&[&key.bot_id, &key.chat_id, &id.to_string()])
}

pub(super) fn delete_handoff(j: &mut Journal, key: &GroupKey, id: u64) {
    j.delete(HANDOFF, handoff_name(key, id));
}

/// A group's row and the handoff rows that changed since `old_open` (the open list as last
/// noted; empty for a new group). Every message rewrites its group's row (counters, last
/// activity) while open handoffs pile up until they expire (up to
/// `handoff::MAX_OPEN_PER_GROUP`): kept inside the row they made each message rewrite ~10 KB.
pub(super) fn put_group(
    j: &mut Journal,
    key: &GroupKey,
    old_open: &VecDeque<OpenHandoff>,
    v: &mut Versioned<GroupRow>,
) {
    put_group_row(j, key, v);
    let mut before: BTreeMap<u64, &OpenHandoff> = old_open
        .iter()
        .filter(|h| h.id != 0)
        .map(|h| (h.id, h))
        .collect();
    for h in v.row.handoffs.open.iter().filter(|h| h.id != 0) {
        if before.remove(&h.id) != Some(h) {
            j.put(HANDOFF, handoff_name(key, h.id), &(key, h));
        }
    }
    for id in before.into_keys() {
        delete_handoff(j, key, id);
    }
}

fn user_name(key: &UserKey) -> RowKey {
    name(&[&key.bot_id, &key.chat_id, &key.user_id])
}

pub(super) fn put_user(j: &mut Journal, key: &UserKey, v: &Versioned<UserRow>) {
    j.put(USER, user_name(key), &(key, v));
}

pub(super) fn delete_user(j: &mut Journal, key: &UserKey) {
    j.delete(USER, user_name(key));
}

/// After a push that would have given position `seq`: notes the entry if the queue kept it.
pub(super) fn put_pushed<T: Serialize>(
    j: &mut Journal,
    kind: &'static str,
    seq: u64,
    last: Option<(u64, &T)>,
) {
    if let Some((s, item)) = last {
        if s == seq {
            j.put(kind, RowKey::Seq(s), &(s, item));
        }
    }
}
