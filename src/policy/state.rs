//! Playbook runtime state behind a trait, so it can live in memory (today), in the embedded
//! store (durable across restarts) or in a database shared by replicas.
//!
//! The state is a set of plain, serde-serialisable rows:
//! - one [`GroupRow`] per (bot, chat): spacing slots, handoff counts and open handoffs, the
//!   pending merged welcome, and the chat's proactive timers (known since, last activity,
//!   schedule and countdown cursors);
//! - one [`UserRow`] per (bot, chat, user): disclosure, activity, push cadence, off-hours
//!   notice, the not-understood streak and the per-intent cooldowns;
//! - append-only queues: delayed proactive jobs, blocked messages for review, dropped sends.
//!
//! A decision runs as a transaction: the store hands the rows of its [`Scope`] to a pure
//! decision function (no lock, no I/O inside), which returns the [`StateChange`]s to apply; the
//! store applies them all or none. Each row carries a version, and every `Put` names the version
//! it was computed from, so a check-and-reserve (a spacing slot in a group, a cooldown per user
//! and intent) is atomic: when two deciders read the same row, only the first commit lands and
//! the other is told [`StateError::Conflict`] and decides again on the fresh row. A store may
//! instead run [`PlaybookState::transact`] under a lock (the in-memory one does) or in one
//! database transaction with row locks; the default implementation is the optimistic loop.
//!
//! Deciding is synchronous and cheap, so a store that retries simply calls the decision again.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use super::attributes::Activity;
use super::compliance::{ReviewError, ReviewItem, ReviewVerdict};
use super::cooldown::UserCooldowns;
use super::events::PendingWelcome;
use super::handoff::GroupHandoffs;
use super::scheduler::{ChatTimers, Job, OutboundItem};
use super::spacing::GroupSpacing;

/// How often an optimistic [`PlaybookState::transact`] re-decides before giving up.
pub const MAX_ATTEMPTS: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    pub bot_id: String,
    pub chat_id: String,
}

impl Scope {
    /// The rows of a decision about `user_id` in a group.
    pub fn user(group: GroupKey, user_id: &str, open_handoffs_after_ms: Option<i64>) -> Scope {
        Scope {
            group,
            user_id: Some(user_id.to_string()),
            open_handoffs_after_ms,
        }
    }

    /// The group's row only.
    pub fn group(group: GroupKey) -> Scope {
        Scope {
            group,
            user_id: None,
            open_handoffs_after_ms: None,
        }
    }
}

impl GroupKey {
    pub fn new(bot_id: &str, chat_id: &str) -> GroupKey {
        GroupKey {
            bot_id: bot_id.to_string(),
            chat_id: chat_id.to_string(),
        }
    }

    pub fn user(&self, user_id: &str) -> UserKey {
        UserKey {
            bot_id: self.bot_id.clone(),
            chat_id: self.chat_id.clone(),
            user_id: user_id.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserKey {
    pub bot_id: String,
    pub chat_id: String,
    pub user_id: String,
}

/// Everything the playbook keeps about one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupRow {
    pub spacing: GroupSpacing,
    pub handoffs: GroupHandoffs,
    /// Proactive timers; None until the group is seen (and again after it went idle).
    pub timers: Option<ChatTimers>,
    pub welcome: Option<PendingWelcome>,
    /// Banned words a reviewer allowed in this group (as written in the list): a false
    /// positive approved in the review queue.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub allowed_words: BTreeSet<String>,
}

/// The part of a user's row that is forgotten after a long idle time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfile {
    /// The automation disclosure was sent to this user in this chat.
    pub disclosed: bool,
    pub activity: Activity,
    /// Push rule id → when it last queued a push for this user.
    pub last_push: BTreeMap<String, i64>,
    /// The opening time for which this user already got the off-hours reply.
    pub off_hours_notified_for: Option<i64>,
    pub last_seen_ms: i64,
}

/// Everything the playbook keeps about one user in one chat of one bot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRow {
    pub profile: UserProfile,
    /// Consecutive not-understood messages.
    pub not_understood_streak: u32,
    pub cooldowns: UserCooldowns,
}

/// A row as read, with the version a write must name (0: no row yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub version: u64,
    pub row: T,
}

/// A send that the playbook decided not to make, so it is reported instead of silently lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedSend {
    pub at_ms: i64,
    pub bot_id: String,
    pub chat_id: String,
    pub user_id: String,
    /// Message or event id; for proactive sends the rule id.
    pub source_id: String,
    /// Intent, reply key or rule id.
    pub key: String,
    pub reason: String,
}

/// A delayed proactive job as stored, with the id that takes it out of the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedJob {
    pub id: u64,
    pub job: Job,
}

/// The rows one message or event decision reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub group: GroupKey,
    /// The user's row too (None: group only).
    pub user_id: Option<String>,
    /// Count the bot's handoffs in its other chats still open and opened after this time
    /// (now − `open_ttl`, Unix ms); None: do not count.
    pub open_handoffs_after_ms: Option<i64>,
}

/// What a [`Scope`] reads.
#[derive(Debug, Clone, PartialEq)]
pub struct StateView {
    pub group: Versioned<GroupRow>,
    /// Present when the scope names a user (a default row at version 0 when new).
    pub user: Option<Versioned<UserRow>>,
    /// Open handoffs of the bot in its other chats (read only: an estimate for the announced
    /// wait, so it is not reserved).
    pub bot_open_handoffs: usize,
}

/// What proactive planning reads: every group, and the delayed jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct DueView {
    /// Every group with a row, in key order.
    pub groups: Vec<(GroupKey, Versioned<GroupRow>)>,
    /// Delayed jobs due by the requested time, in queue order.
    pub jobs: Vec<QueuedJob>,
    /// The earliest delayed job, due or not.
    pub next_job_ms: Option<i64>,
}

/// One write of a decision; a commit applies a list of them atomically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StateChange {
    /// Replace the group's row if it is still at `expected_version`.
    PutGroup {
        key: GroupKey,
        expected_version: u64,
        row: GroupRow,
    },
    /// Replace the user's row if it is still at `expected_version`.
    PutUser {
        key: UserKey,
        expected_version: u64,
        row: UserRow,
    },
    /// Queue a blocked message for review; a message id already queued is skipped.
    AddReview(ReviewItem),
    AddDropped(DroppedSend),
    /// Queue a delayed proactive job.
    Schedule(Job),
    /// Take a delayed job out of the queue (a conflict when it is already gone).
    Unschedule {
        id: u64,
    },
}

/// A review entry after a verdict, and whether this call recorded it (false: a repeat).
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub item: ReviewItem,
    pub changed: bool,
}

/// When the store forgets idle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepLimits {
    /// A user's profile is forgotten after this long without a message or activity.
    pub user_idle_ms: i64,
    /// Cooldown entries older than this are forgotten.
    pub cooldown_max_age_ms: i64,
    /// A chat's timers are forgotten after this long without activity (unless a job is queued).
    pub chat_idle_ms: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// A row changed (or a job was taken) since it was read; decide again.
    #[error("playbook state changed concurrently: {0}")]
    Conflict(String),
    #[error("playbook state is still contended after {0} attempts")]
    Contended(u32),
    #[error("playbook state store: {0}")]
    Backend(String),
}

/// A pure decision over a [`StateView`]: returns the changes to apply. It may run more than once
/// (a retry after a conflict), so it must not have side effects beyond its own captures.
pub type Decide<'a> = dyn FnMut(StateView) -> Vec<StateChange> + Send + 'a;
/// A pure proactive planning step over a [`DueView`].
pub type DecideDue<'a> = dyn FnMut(DueView) -> Vec<StateChange> + Send + 'a;

/// A proactive planning step that also returns the sends it planned.
pub type PlanDue<'a> = dyn FnMut(DueView) -> (Vec<OutboundItem>, Vec<StateChange>) + Send + 'a;

/// What [`PlaybookState::plan_due`] did with the sends it planned.
#[derive(Debug, Clone, PartialEq)]
pub enum PlannedSends {
    /// For the caller to queue (in an outbox committed with the state; see
    /// `Storage::hold_change`).
    ToQueue(Vec<OutboundItem>),
    /// Queued by the store itself, in the same transaction as the state change (an outbox
    /// shared by replicas). `overflow` and `expired` count what that queue's bounds dropped.
    Queued {
        sends: usize,
        overflow: usize,
        expired: usize,
    },
}

/// Where the playbook's runtime state lives (see the module doc).
#[async_trait]
pub trait PlaybookState: Send + Sync + std::fmt::Debug {
    /// Read the rows of one decision.
    async fn load(&self, scope: &Scope) -> Result<StateView, StateError>;

    /// Read every group and the delayed jobs due by `due_by` (None: no jobs, only
    /// `next_job_ms`).
    async fn load_due(&self, due_by: Option<i64>) -> Result<DueView, StateError>;

    /// Apply `changes` all or none: [`StateError::Conflict`] when a `Put` names a version that
    /// is no longer current or an `Unschedule` names a job that is gone.
    async fn commit(&self, changes: Vec<StateChange>) -> Result<(), StateError>;

    /// Run `decide` on the scope's rows and commit its changes atomically, deciding again on
    /// a conflict.
    async fn transact(&self, scope: &Scope, decide: &mut Decide<'_>) -> Result<(), StateError> {
        for _ in 0..MAX_ATTEMPTS {
            let view = self.load(scope).await?;
            match self.commit(decide(view)).await {
                Err(StateError::Conflict(_)) => continue,
                other => return other,
            }
        }
        Err(StateError::Contended(MAX_ATTEMPTS))
    }

    /// [`Self::transact`] for proactive planning over [`Self::load_due`].
    async fn transact_due(
        &self,
        due_by: i64,
        decide: &mut DecideDue<'_>,
    ) -> Result<(), StateError> {
        for _ in 0..MAX_ATTEMPTS {
            let view = self.load_due(Some(due_by)).await?;
            match self.commit(decide(view)).await {
                Err(StateError::Conflict(_)) => continue,
                other => return other,
            }
        }
        Err(StateError::Contended(MAX_ATTEMPTS))
    }

    /// [`Self::transact_due`] for a plan that also makes sends. A store that keeps the outbox
    /// itself queues them in the commit of the state change; the default hands them back.
    async fn plan_due(
        &self,
        due_by: i64,
        plan: &mut PlanDue<'_>,
    ) -> Result<PlannedSends, StateError> {
        let mut sends = Vec::new();
        self.transact_due(due_by, &mut |view| {
            let (items, changes) = plan(view);
            sends = items;
            changes
        })
        .await?;
        Ok(PlannedSends::ToQueue(sends))
    }

    /// Blocked messages waiting for review, oldest first.
    async fn review_queue(&self) -> Result<Vec<ReviewItem>, StateError>;
    /// Take the review entries.
    async fn drain_review_queue(&self) -> Result<Vec<ReviewItem>, StateError>;
    /// The review entries with their ids (stable while an entry is kept), oldest first,
    /// decided ones included.
    async fn reviews(&self) -> Result<Vec<(u64, ReviewItem)>, StateError>;
    /// Records a reviewer's verdict on entry `id`. Deciding an entry the same way again by the
    /// same reviewer (a retried click) changes nothing and answers the entry (`changed` false).
    async fn decide_review(
        &self,
        id: u64,
        verdict: ReviewVerdict,
    ) -> Result<Result<Decided, ReviewError>, StateError>;
    /// Sends the playbook decided not to make, oldest first.
    async fn dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError>;
    /// Take the dropped-send records.
    async fn drain_dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError>;

    /// Forget idle state (see [`SweepLimits`]), and queued records past their age limit.
    async fn sweep(&self, now_ms: i64, limits: &SweepLimits) -> Result<(), StateError>;
}
