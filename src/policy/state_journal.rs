//! How the in-memory playbook state (`MemoryState`) notes its changes for the store: the kinds of its
//! durable rows, their keys, and what one row holds (see `state_persist.rs` for the list and
//! for reading them back).

use serde::Serialize;

use super::state::{GroupKey, GroupRow, UserKey, UserRow, Versioned};
use crate::durable::{Journal, RowKey};

pub const GROUP: &str = "group";
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

pub(super) fn put_group(j: &mut Journal, key: &GroupKey, v: &Versioned<GroupRow>) {
    j.put(GROUP, name(&[&key.bot_id, &key.chat_id]), &(key, v));
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
