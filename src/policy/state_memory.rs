//! The in-memory [`PlaybookState`]: every row in maps behind one mutex. A transaction holds the
//! mutex while the (synchronous, pure) decision runs, so it never conflicts; `load` + `commit`
//! still check versions, for callers that decide outside the lock.
//!
//! Built with [`MemoryState::durable`] (the server does when the store is on), every change is
//! also noted for the store, which writes it with its next group commit, and a start reads the
//! rows back (`state_persist.rs`). Nothing is shared between processes: several replicas need a
//! shared implementation of the trait.
//!
//! Memory: user and group rows are forgotten by [`PlaybookState::sweep`] once idle; the review
//! and dropped-send queues (and the message ids that deduplicate review entries) and the delayed
//! proactive jobs are kept within [`StateLimits`] as they grow, and what a limit discards is
//! counted and reported through the [`OnDiscard`] hook (the server counts it in
//! `intentd_state_discarded_total`).

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::bounded_queue::{BoundedQueue, Discarded, QueueLimits, Record};
use super::compliance::{ReviewError, ReviewItem, ReviewVerdict};
use super::scheduler::{Job, JobContent};
use super::state::{
    Decide, DecideDue, Decided, DroppedSend, DueView, GroupKey, GroupRow, PlaybookState, QueuedJob,
    Scope, StateChange, StateError, StateView, SweepLimits, UserKey, UserProfile, UserRow,
    Versioned,
};
use super::state_journal::{self as persist, Synced};
use crate::durable::{Journal, RowKey};

/// `playbook_state:` in the server configuration: how much the in-memory queues keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateLimits {
    /// Blocked messages kept for review (every block is also in the store's audit log). The
    /// message ids that keep a message from being queued twice are kept within the same
    /// entries and age.
    pub review_queue: QueueLimits,
    /// Sends the playbook decided not to make (spacing queue full, banned word at render).
    pub dropped_sends: QueueLimits,
    /// Delayed proactive jobs (welcomes, pushes, deferred sends) waiting for their time. Beyond
    /// `max_entries` or `max_bytes` the earliest scheduled go; a job past its due time by more
    /// than `max_age_s` (never taken: too late to send) goes at the sweep.
    pub delayed_jobs: QueueLimits,
}

impl StateLimits {
    pub fn validate(&self) -> Result<(), String> {
        self.review_queue.validate("playbook_state.review_queue")?;
        self.dropped_sends
            .validate("playbook_state.dropped_sends")?;
        self.delayed_jobs.validate("playbook_state.delayed_jobs")
    }
}

/// Which in-memory queue discarded entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateQueue {
    Review,
    Dropped,
    DelayedJobs,
}

impl StateQueue {
    pub fn as_str(self) -> &'static str {
        match self {
            StateQueue::Review => "review_queue",
            StateQueue::Dropped => "dropped_sends",
            StateQueue::DelayedJobs => "delayed_jobs",
        }
    }

    fn index(self) -> usize {
        match self {
            StateQueue::Review => 0,
            StateQueue::Dropped => 1,
            StateQueue::DelayedJobs => 2,
        }
    }
}

/// Called with (queue, reason, count) whenever a limit discards entries; the reason is
/// `max_entries`, `max_bytes` or `max_age`. Runs under the state's lock: keep it cheap.
pub type OnDiscard = Arc<dyn Fn(StateQueue, &'static str, u64) + Send + Sync>;

impl Record for ReviewItem {
    fn at_ms(&self) -> i64 {
        self.at_ms
    }
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.bot_id.len()
            + self.chat_id.len()
            + self.user_id.len()
            + self.message_id.len()
            + self.text.len()
            + self.matched.len()
            + self.reason.len()
    }
}

impl Record for DroppedSend {
    fn at_ms(&self) -> i64 {
        self.at_ms
    }
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.bot_id.len()
            + self.chat_id.len()
            + self.user_id.len()
            + self.source_id.len()
            + self.key.len()
            + self.reason.len()
    }
}

impl Record for Job {
    /// Its due time: a job's age is how late it is.
    fn at_ms(&self) -> i64 {
        self.at_ms
    }
    fn bytes(&self) -> usize {
        let string = std::mem::size_of::<String>();
        let content = match &self.content {
            JobContent::Render {
                key,
                user,
                nickname,
                event_name,
                ..
            } => {
                key.len()
                    + event_name.len()
                    + nickname.as_ref().map_or(0, String::len)
                    + user.as_ref().map_or(0, |u| {
                        std::mem::size_of::<crate::types::UserInfo>()
                            + u.id.len()
                            + u.nickname.len()
                            + u.city.len()
                            + u.tags.iter().map(|t| string + t.len()).sum::<usize>()
                    })
            }
            JobContent::Ready(r) => {
                r.text.len() + r.variant_id.len() + r.style.len() + r.experiment.len()
            }
        };
        std::mem::size_of::<Self>()
            + self.bot_id.len()
            + self.chat_id.len()
            + self.chat_name.len()
            + self.rule_id.len()
            + self
                .user_ids
                .iter()
                .map(|u| string + u.len())
                .sum::<usize>()
            + content
    }
}

/// Delayed jobs by id (ids grow, so this is queue order), within their [`QueueLimits`]. Not a
/// [`BoundedQueue`]: jobs are taken out by id, in any order, and are due in the future, so
/// their age is checked against the clock (at the sweep), never against the newest job.
#[derive(Debug)]
pub(super) struct Jobs {
    /// id → (estimated bytes, job).
    map: BTreeMap<u64, (usize, Job)>,
    bytes: usize,
    limits: QueueLimits,
    /// Ids taken out since the journal last looked (a durable copy deletes them).
    gone: Vec<u64>,
}

impl Jobs {
    /// Queues `job`, then discards the earliest scheduled while over `max_entries` or
    /// `max_bytes` (the job itself when it alone is over `max_bytes`).
    pub(super) fn insert(&mut self, id: u64, job: Job) -> Discarded {
        let size = job.bytes();
        self.map.insert(id, (size, job));
        self.bytes += size;
        let mut d = Discarded::default();
        while self.map.len() > self.limits.max_entries {
            self.pop_first();
            d.entries += 1;
        }
        while self.bytes > self.limits.max_bytes {
            self.pop_first();
            d.bytes += 1;
        }
        d
    }

    fn pop_first(&mut self) {
        if let Some((id, (size, _))) = self.map.pop_first() {
            self.bytes -= size;
            self.gone.push(id);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some((size, _)) = self.map.remove(&id) {
            self.bytes -= size;
            self.gone.push(id);
        }
    }

    /// The ids taken out since the last call.
    pub(super) fn take_gone(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.gone)
    }

    /// Discards the jobs due more than `max_age_s` before `now_ms`.
    fn expire(&mut self, now_ms: i64) -> Discarded {
        let max_age_ms =
            i64::try_from(self.limits.max_age_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let oldest_kept = now_ms.saturating_sub(max_age_ms);
        let before = self.map.len();
        let mut freed = 0;
        let gone = &mut self.gone;
        self.map.retain(|id, (size, job)| {
            let keep = job.at_ms >= oldest_kept;
            if !keep {
                freed += *size;
                gone.push(*id);
            }
            keep
        });
        self.bytes -= freed;
        Discarded {
            age: (before - self.map.len()) as u64,
            ..Discarded::default()
        }
    }

    fn contains_key(&self, id: &u64) -> bool {
        self.map.contains_key(id)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&u64, &Job)> {
        self.map.iter().map(|(id, (_, job))| (id, job))
    }

    fn values(&self) -> impl Iterator<Item = &Job> {
        self.map.values().map(|(_, job)| job)
    }
}

/// (bot, chat, message id) of a review entry.
pub(super) type ReviewKey = (String, String, String);

/// The message ids already queued for review, oldest first, within the review queue's entries
/// and age (a repeat after that is queued again, which a reviewer can tell from its id).
#[derive(Debug)]
pub(super) struct ReviewedIds {
    set: HashSet<ReviewKey>,
    order: VecDeque<(i64, ReviewKey)>,
    limits: QueueLimits,
    /// Position of the front of `order` (see [`BoundedQueue::first_seq`]).
    pub(super) first_seq: u64,
}

impl ReviewedIds {
    pub(super) fn new(limits: QueueLimits, first_seq: u64) -> Self {
        ReviewedIds {
            set: HashSet::new(),
            order: VecDeque::new(),
            limits,
            first_seq,
        }
    }

    pub(super) fn next_seq(&self) -> u64 {
        self.first_seq + self.order.len() as u64
    }

    /// The newest entry and its position.
    pub(super) fn last(&self) -> Option<(u64, &(i64, ReviewKey))> {
        self.order.back().map(|e| (self.next_seq() - 1, e))
    }

    /// False when `key` was already queued.
    pub(super) fn insert(&mut self, at_ms: i64, key: ReviewKey) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back((at_ms, key));
        self.expire(at_ms);
        true
    }

    fn expire(&mut self, now_ms: i64) {
        let oldest_kept =
            now_ms.saturating_sub(i64::try_from(self.limits.max_age_s * 1000).unwrap_or(i64::MAX));
        while let Some((at, _)) = self.order.front() {
            if self.order.len() <= self.limits.max_entries && *at >= oldest_kept {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.set.remove(&k);
                self.first_seq += 1;
            }
        }
    }
}

pub(super) struct Rows {
    pub(super) groups: BTreeMap<GroupKey, Versioned<GroupRow>>,
    pub(super) users: HashMap<UserKey, Versioned<UserRow>>,
    pub(super) jobs: Jobs,
    pub(super) next_job_id: u64,
    pub(super) review: BoundedQueue<ReviewItem>,
    pub(super) reviewed: ReviewedIds,
    pub(super) dropped: BoundedQueue<DroppedSend>,
    /// What the limits discarded since start, by [`StateQueue::index`].
    discarded: [Discarded; 3],
    on_discard: Option<OnDiscard>,
    pub(super) limits: StateLimits,
    /// Changes for the store to persist (None: memory only). See `state_persist.rs`.
    pub(super) journal: Option<Journal>,
    /// The queue fronts the journal has recorded.
    pub(super) synced: Synced,
}

/// See the module doc.
pub struct MemoryState {
    pub(super) rows: Mutex<Rows>,
}

impl std::fmt::Debug for MemoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = self.rows.lock();
        f.debug_struct("MemoryState")
            .field("groups", &rows.groups.len())
            .field("users", &rows.users.len())
            .field("jobs", &rows.jobs.len())
            .field("review", &rows.review.len())
            .field("dropped", &rows.dropped.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryState {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryState {
    /// Default [`StateLimits`], discards counted but not reported.
    pub fn new() -> MemoryState {
        Self::with_limits(StateLimits::default(), None)
    }

    pub fn with_limits(limits: StateLimits, on_discard: Option<OnDiscard>) -> MemoryState {
        MemoryState {
            rows: Mutex::new(Rows {
                groups: BTreeMap::new(),
                users: HashMap::new(),
                jobs: Jobs {
                    map: BTreeMap::new(),
                    bytes: 0,
                    limits: limits.delayed_jobs,
                    gone: Vec::new(),
                },
                next_job_id: 0,
                review: BoundedQueue::new(limits.review_queue),
                reviewed: ReviewedIds::new(limits.review_queue, 0),
                dropped: BoundedQueue::new(limits.dropped_sends),
                discarded: Default::default(),
                on_discard,
                limits,
                journal: None,
                synced: Synced::default(),
            }),
        }
    }

    /// What the limits discarded since start, per queue.
    pub fn discarded(&self, queue: StateQueue) -> Discarded {
        self.rows.lock().discarded[queue.index()]
    }

    /// (entries, estimated bytes) held by a queue now.
    pub fn queue_size(&self, queue: StateQueue) -> (usize, usize) {
        let rows = self.rows.lock();
        match queue {
            StateQueue::Review => (rows.review.len(), rows.review.bytes()),
            StateQueue::Dropped => (rows.dropped.len(), rows.dropped.bytes()),
            StateQueue::DelayedJobs => (rows.jobs.len(), rows.jobs.bytes),
        }
    }

    /// Message ids remembered for deduplicating review entries.
    pub fn reviewed_ids(&self) -> usize {
        self.rows.lock().reviewed.set.len()
    }
}

impl Rows {
    fn view(&self, scope: &Scope) -> StateView {
        let group = self.groups.get(&scope.group).cloned().unwrap_or_default();
        let user = scope.user_id.as_ref().map(|u| {
            self.users
                .get(&scope.group.user(u))
                .cloned()
                .unwrap_or_default()
        });
        let bot_open_handoffs = match scope.open_handoffs_after_ms {
            None => 0,
            // Rows are in (bot, chat) order, so the bot's chats are one range.
            Some(after) => self
                .groups
                .range(GroupKey::new(&scope.group.bot_id, "")..)
                .take_while(|(k, _)| k.bot_id == scope.group.bot_id)
                .filter(|(k, _)| k.chat_id != scope.group.chat_id)
                .map(|(_, g)| {
                    let open = g.row.handoffs.open.iter();
                    open.filter(|h| h.opened_ms > after).count()
                })
                .sum(),
        };
        StateView {
            group,
            user,
            bot_open_handoffs,
        }
    }

    fn due_view(&self, due_by: Option<i64>) -> DueView {
        DueView {
            groups: self
                .groups
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            jobs: match due_by {
                None => Vec::new(),
                Some(t) => self
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.at_ms <= t)
                    .map(|(&id, j)| QueuedJob { id, job: j.clone() })
                    .collect(),
            },
            next_job_ms: self.jobs.values().map(|j| j.at_ms).min(),
        }
    }

    /// Check every precondition first, then apply: all or nothing.
    fn commit(&mut self, changes: Vec<StateChange>) -> Result<(), StateError> {
        for c in &changes {
            match c {
                StateChange::PutGroup {
                    key,
                    expected_version,
                    ..
                } => {
                    let current = self.groups.get(key).map_or(0, |v| v.version);
                    if current != *expected_version {
                        return Err(StateError::Conflict(format!(
                            "group {}/{} is at version {current}, not {expected_version}",
                            key.bot_id, key.chat_id
                        )));
                    }
                }
                StateChange::PutUser {
                    key,
                    expected_version,
                    ..
                } => {
                    let current = self.users.get(key).map_or(0, |v| v.version);
                    if current != *expected_version {
                        return Err(StateError::Conflict(format!(
                            "user {}/{}/{} is at version {current}, not {expected_version}",
                            key.bot_id, key.chat_id, key.user_id
                        )));
                    }
                }
                StateChange::Unschedule { id } => {
                    if !self.jobs.contains_key(id) {
                        return Err(StateError::Conflict(format!("job {id} was already taken")));
                    }
                }
                StateChange::AddReview(_)
                | StateChange::AddDropped(_)
                | StateChange::Schedule(_) => {}
            }
        }
        for c in changes {
            match c {
                StateChange::PutGroup {
                    key,
                    expected_version,
                    row,
                } => {
                    let mut v = Versioned {
                        version: expected_version + 1,
                        row,
                    };
                    if let Some(j) = &mut self.journal {
                        let none = VecDeque::new();
                        let old = self
                            .groups
                            .get(&key)
                            .map_or(&none, |g| &g.row.handoffs.open);
                        persist::put_group(j, &key, old, &mut v);
                    }
                    self.groups.insert(key, v);
                }
                StateChange::PutUser {
                    key,
                    expected_version,
                    row,
                } => {
                    let v = Versioned {
                        version: expected_version + 1,
                        row,
                    };
                    if let Some(j) = &mut self.journal {
                        persist::put_user(j, &key, &v);
                    }
                    self.users.insert(key, v);
                }
                StateChange::AddReview(item) => self.add_review(item),
                StateChange::AddDropped(d) => {
                    let seq = self.dropped.next_seq();
                    let gone = self.dropped.push(d);
                    if let Some(j) = &mut self.journal {
                        persist::put_pushed(j, persist::DROPPED, seq, self.dropped.last());
                    }
                    self.count(StateQueue::Dropped, gone);
                }
                StateChange::Schedule(job) => {
                    self.next_job_id += 1;
                    if let Some(j) = &mut self.journal {
                        j.put(
                            persist::JOB,
                            RowKey::Seq(self.next_job_id),
                            &(self.next_job_id, &job),
                        );
                    }
                    let gone = self.jobs.insert(self.next_job_id, job);
                    self.count(StateQueue::DelayedJobs, gone);
                }
                StateChange::Unschedule { id } => {
                    self.jobs.remove(id);
                }
            }
        }
        self.sync_journal();
        Ok(())
    }

    /// Notes what left the job table and the queue fronts since the last call.
    pub(super) fn sync_journal(&mut self) {
        let gone = self.jobs.take_gone();
        let Some(j) = &mut self.journal else {
            return;
        };
        for id in gone {
            j.delete(persist::JOB, RowKey::Seq(id));
        }
        let fronts = [
            (
                persist::REVIEW,
                self.review.first_seq(),
                &mut self.synced.review,
            ),
            (
                persist::REVIEWED,
                self.reviewed.first_seq,
                &mut self.synced.reviewed,
            ),
            (
                persist::DROPPED,
                self.dropped.first_seq(),
                &mut self.synced.dropped,
            ),
        ];
        for (kind, first, synced) in fronts {
            if first > *synced {
                j.delete_below(kind, first);
                *synced = first;
            }
        }
    }

    fn add_review(&mut self, item: ReviewItem) {
        let key = (
            item.bot_id.clone(),
            item.chat_id.clone(),
            item.message_id.clone(),
        );
        if !item.message_id.is_empty() {
            let seq = self.reviewed.next_seq();
            if !self.reviewed.insert(item.at_ms, key) {
                return; // precheck already queued this message
            }
            if let Some(j) = &mut self.journal {
                persist::put_pushed(j, persist::REVIEWED, seq, self.reviewed.last());
            }
        }
        let seq = self.review.next_seq();
        let gone = self.review.push(item);
        if let Some(j) = &mut self.journal {
            persist::put_pushed(j, persist::REVIEW, seq, self.review.last());
        }
        self.count(StateQueue::Review, gone);
    }

    fn decide_review(&mut self, id: u64, verdict: ReviewVerdict) -> Result<Decided, ReviewError> {
        let item = self.review.get_mut(id).ok_or(ReviewError::NotFound(id))?;
        match &item.verdict {
            Some(v) if v.approved == verdict.approved && v.by == verdict.by => {
                return Ok(Decided {
                    item: item.clone(),
                    changed: false,
                })
            }
            Some(v) => {
                return Err(ReviewError::AlreadyDecided {
                    id,
                    approved: v.approved,
                    by: v.by.clone(),
                })
            }
            None => item.verdict = Some(verdict),
        }
        let item = item.clone();
        if let Some(j) = &mut self.journal {
            j.put(persist::REVIEW, RowKey::Seq(id), &(id, &item));
        }
        Ok(Decided {
            item,
            changed: true,
        })
    }

    pub(super) fn count(&mut self, queue: StateQueue, gone: Discarded) {
        if gone.total() == 0 {
            return;
        }
        self.discarded[queue.index()].add(gone);
        if let Some(report) = &self.on_discard {
            for (reason, n) in gone.by_reason() {
                report(queue, reason, n);
            }
        }
    }

    fn sweep(&mut self, now: i64, limits: &SweepLimits) {
        let journal = &mut self.journal;
        self.users.retain(|k, u| {
            let before = u.row.clone();
            u.row.cooldowns.sweep(now, limits.cooldown_max_age_ms);
            if now - u.row.profile.last_seen_ms >= limits.user_idle_ms {
                u.row.profile = UserProfile::default();
            }
            if u.row == before {
                return true;
            }
            u.version += 1;
            let keep = u.row != UserRow::default();
            if let Some(j) = journal {
                match keep {
                    true => persist::put_user(j, k, u),
                    false => persist::delete_user(j, k),
                }
            }
            keep
        });
        // Jobs too late to send go first, so their chats' timers may go with them.
        let gone = self.jobs.expire(now);
        self.count(StateQueue::DelayedJobs, gone);
        let jobs = &self.jobs;
        for (k, g) in self.groups.iter_mut() {
            let idle = g
                .row
                .timers
                .as_ref()
                .is_some_and(|t| now - t.last_activity_ms >= limits.chat_idle_ms);
            let queued = || {
                jobs.values()
                    .any(|j| j.bot_id == k.bot_id && j.chat_id == k.chat_id)
            };
            if idle && !queued() {
                g.row.timers = None;
                g.version += 1;
                if let Some(j) = &mut self.journal {
                    // Only the timers changed: the handoff rows stand.
                    persist::put_group_row(j, k, g);
                }
            }
        }
        let gone = self.review.expire(now);
        self.count(StateQueue::Review, gone);
        let gone = self.dropped.expire(now);
        self.count(StateQueue::Dropped, gone);
        self.reviewed.expire(now);
        self.sync_journal();
    }
}

#[async_trait]
impl PlaybookState for MemoryState {
    async fn load(&self, scope: &Scope) -> Result<StateView, StateError> {
        Ok(self.rows.lock().view(scope))
    }

    async fn load_due(&self, due_by: Option<i64>) -> Result<DueView, StateError> {
        Ok(self.rows.lock().due_view(due_by))
    }

    async fn commit(&self, changes: Vec<StateChange>) -> Result<(), StateError> {
        self.rows.lock().commit(changes)
    }

    async fn transact(&self, scope: &Scope, decide: &mut Decide<'_>) -> Result<(), StateError> {
        let mut rows = self.rows.lock();
        let view = rows.view(scope);
        rows.commit(decide(view))
    }

    async fn transact_due(
        &self,
        due_by: i64,
        decide: &mut DecideDue<'_>,
    ) -> Result<(), StateError> {
        let mut rows = self.rows.lock();
        let view = rows.due_view(Some(due_by));
        rows.commit(decide(view))
    }

    async fn review_queue(&self) -> Result<Vec<ReviewItem>, StateError> {
        Ok(self.rows.lock().review.iter().cloned().collect())
    }

    async fn drain_review_queue(&self) -> Result<Vec<ReviewItem>, StateError> {
        let mut rows = self.rows.lock();
        let items = rows.review.drain();
        rows.sync_journal();
        Ok(items)
    }

    async fn reviews(&self) -> Result<Vec<(u64, ReviewItem)>, StateError> {
        let rows = self.rows.lock();
        Ok(rows
            .review
            .iter_seq()
            .map(|(i, r)| (i, r.clone()))
            .collect())
    }

    async fn decide_review(
        &self,
        id: u64,
        verdict: ReviewVerdict,
    ) -> Result<Result<Decided, ReviewError>, StateError> {
        Ok(self.rows.lock().decide_review(id, verdict))
    }

    async fn dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError> {
        Ok(self.rows.lock().dropped.iter().cloned().collect())
    }

    async fn drain_dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError> {
        let mut rows = self.rows.lock();
        let items = rows.dropped.drain();
        rows.sync_journal();
        Ok(items)
    }

    async fn sweep(&self, now_ms: i64, limits: &SweepLimits) -> Result<(), StateError> {
        self.rows.lock().sweep(now_ms, limits);
        Ok(())
    }
}

#[cfg(test)]
/// Only `load` and `commit`: the trait's default optimistic `transact`, as a database
/// store without row locks would run it. Yields between read and write so concurrent
/// deciders really interleave.
#[derive(Debug, Default)]
pub(crate) struct Optimistic(MemoryState);

#[cfg(test)]
#[async_trait]
impl PlaybookState for Optimistic {
    async fn load(&self, scope: &Scope) -> Result<StateView, StateError> {
        let v = self.0.load(scope).await;
        tokio::task::yield_now().await;
        v
    }
    async fn load_due(&self, due_by: Option<i64>) -> Result<DueView, StateError> {
        self.0.load_due(due_by).await
    }
    async fn commit(&self, changes: Vec<StateChange>) -> Result<(), StateError> {
        self.0.commit(changes).await
    }
    async fn review_queue(&self) -> Result<Vec<ReviewItem>, StateError> {
        self.0.review_queue().await
    }
    async fn drain_review_queue(&self) -> Result<Vec<ReviewItem>, StateError> {
        self.0.drain_review_queue().await
    }
    async fn reviews(&self) -> Result<Vec<(u64, ReviewItem)>, StateError> {
        self.0.reviews().await
    }
    async fn decide_review(
        &self,
        id: u64,
        verdict: ReviewVerdict,
    ) -> Result<Result<Decided, ReviewError>, StateError> {
        self.0.decide_review(id, verdict).await
    }
    async fn dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError> {
        self.0.dropped_sends().await
    }
    async fn drain_dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError> {
        self.0.drain_dropped_sends().await
    }
    async fn sweep(&self, now_ms: i64, limits: &SweepLimits) -> Result<(), StateError> {
        self.0.sweep(now_ms, limits).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::state_suite::{dropped, reserve, review_item};
    use std::sync::Arc;

    // The behaviour every store shares is tested in `state_suite.rs` (against this one and
    // PostgreSQL); here are this store's own: its default limits and the optimistic loop.

    fn g(chat: &str) -> GroupKey {
        GroupKey::new("b", chat)
    }

    fn job(at_ms: i64, users: usize) -> Job {
        Job {
            bot_id: "b".into(),
            chat_id: "g".into(),
            chat_name: String::new(),
            kind: crate::policy::OutboundKind::DelayedReply,
            rule_id: format!("push:{at_ms}"),
            at_ms,
            content: crate::policy::scheduler::JobContent::Ready(Default::default()),
            user_ids: (0..users).map(|u| format!("wxid_user_{u}")).collect(),
            slot_reserved: false,
        }
    }

    /// Regression (issue 12 item 7): the delayed-job queue had no limit at all (the old code
    /// kept all 20,000 jobs, and a job never taken stayed forever). Now it keeps to its entries
    /// and bytes (the earliest scheduled go) and drops jobs too late to send at the sweep; each
    /// discard is counted and reported like the other queues'.
    #[tokio::test]
    async fn delayed_jobs_stay_within_entries_bytes_and_age_by_default() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook: OnDiscard = {
            let seen = seen.clone();
            Arc::new(move |q, reason, n| seen.lock().push((q, reason, n)))
        };
        let st = MemoryState::with_limits(StateLimits::default(), Some(hook));
        let limits = StateLimits::default().delayed_jobs;
        for i in 0..20_000 {
            st.commit(vec![StateChange::Schedule(job(1_000_000 + i, 1))])
                .await
                .unwrap();
        }
        let (n, bytes) = st.queue_size(StateQueue::DelayedJobs);
        assert_eq!(n, limits.max_entries);
        let due = st.load_due(Some(i64::MAX)).await.unwrap().jobs;
        assert_eq!(due.len(), limits.max_entries);
        assert_eq!(
            due[0].job.at_ms, 1_010_000,
            "the earliest scheduled went first"
        );
        assert_eq!(st.discarded(StateQueue::DelayedJobs).entries, 10_000);
        // Taking a job frees its bytes.
        st.commit(vec![StateChange::Unschedule { id: due[0].id }])
            .await
            .unwrap();
        let (n2, bytes2) = st.queue_size(StateQueue::DelayedJobs);
        assert_eq!(n2, n - 1);
        assert!(bytes2 < bytes, "{bytes2} < {bytes}");

        // Jobs addressed to many users: the byte limit binds first.
        for i in 0..2_000 {
            st.commit(vec![StateChange::Schedule(job(2_000_000 + i, 200))])
                .await
                .unwrap();
        }
        let (n, bytes) = st.queue_size(StateQueue::DelayedJobs);
        assert!(bytes <= limits.max_bytes, "{bytes}");
        assert!(n < 2_000, "{n} big jobs kept");
        assert!(st.discarded(StateQueue::DelayedJobs).bytes > 0);

        // A job a day past its time was never taken: the sweep drops it; a later one stays.
        let day_ms = 86_400_000;
        st.commit(vec![StateChange::Schedule(job(10 * day_ms, 1))])
            .await
            .unwrap();
        let sweep = SweepLimits {
            user_idle_ms: day_ms,
            cooldown_max_age_ms: day_ms,
            chat_idle_ms: day_ms,
        };
        st.sweep(2_000_000 + day_ms + 5_000, &sweep).await.unwrap();
        let left = st.load_due(Some(i64::MAX)).await.unwrap().jobs;
        assert_eq!(left.len(), 1, "only the job not yet due is kept");
        assert_eq!(left[0].job.at_ms, 10 * day_ms);
        assert_eq!(
            st.queue_size(StateQueue::DelayedJobs).1,
            left[0].job.bytes()
        );
        let gone = st.discarded(StateQueue::DelayedJobs);
        assert!(gone.age > 0, "{gone:?}");
        let reported: u64 = seen
            .lock()
            .iter()
            .filter(|&&(q, _, _)| q == StateQueue::DelayedJobs)
            .map(|&(_, _, n)| n)
            .sum();
        assert_eq!(reported, gone.total());
        assert_eq!(StateQueue::DelayedJobs.as_str(), "delayed_jobs");
    }

    /// Regression (issue 12 item 7): on the old code both queues kept 100,000 entries of any
    /// size and any age (nothing drains them while serving), so RSS grew with traffic; this
    /// test failed there (20,000 entries kept, a two-day-old entry kept).
    #[tokio::test]
    async fn review_and_dropped_queues_stay_within_entries_bytes_and_age_by_default() {
        let st = MemoryState::new();
        let limits = StateLimits::default();
        for i in 0..20_000 {
            st.commit(vec![
                StateChange::AddReview(review_item(i, &format!("m{i}"), 10)),
                StateChange::AddDropped(dropped(i, i as usize)),
            ])
            .await
            .unwrap();
        }
        let review = st.review_queue().await.unwrap();
        assert_eq!(review.len(), limits.review_queue.max_entries);
        assert_eq!(review[0].at_ms, 10_000, "the oldest went first");
        assert_eq!(
            st.dropped_sends().await.unwrap().len(),
            limits.dropped_sends.max_entries
        );

        // Long texts: the byte limit binds long before the entry limit.
        for i in 0..2_000 {
            st.commit(vec![StateChange::AddReview(review_item(
                30_000 + i,
                &format!("long{i}"),
                6_000,
            ))])
            .await
            .unwrap();
        }
        let (n, bytes) = st.queue_size(StateQueue::Review);
        assert!(bytes <= limits.review_queue.max_bytes, "{bytes}");
        assert!(n < 2_000, "{n} long entries kept");

        // An entry older than the age limit goes once a newer one arrives, or on the sweep.
        let day_ms = 86_400_000;
        let later = 2 * day_ms;
        st.commit(vec![StateChange::AddReview(review_item(later, "new", 10))])
            .await
            .unwrap();
        let review = st.review_queue().await.unwrap();
        assert_eq!(review.len(), 1, "everything a day older is gone");
        assert!(!st.dropped_sends().await.unwrap().is_empty());
        let sweep = SweepLimits {
            user_idle_ms: day_ms,
            cooldown_max_age_ms: day_ms,
            chat_idle_ms: day_ms,
        };
        st.sweep(later, &sweep).await.unwrap();
        assert!(st.dropped_sends().await.unwrap().is_empty());
    }

    /// Many concurrent decisions each reserve a slot in one group, through the locked
    /// `transact` and through the optimistic default (load, decide, commit, retry on conflict):
    /// every decision gets its own slot, 15 s apart, none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_transactions_get_distinct_slots() {
        // As many as fit the high-priority horizon, so every slot is a full interval apart.
        const N: i64 = crate::policy::spacing::HIGH_MAX_SLOTS + 1;
        let stores: [Arc<dyn PlaybookState>; 2] = [
            Arc::new(MemoryState::new()),
            Arc::new(Optimistic::default()),
        ];
        for st in stores {
            let tasks: Vec<_> = (0..N)
                .map(|_| {
                    let st = st.clone();
                    tokio::spawn(async move {
                        let key = g("g");
                        let scope = Scope::group(key.clone());
                        let mut slot = None;
                        let r = st
                            .transact(&scope, &mut |view| {
                                let (s, changes) = reserve(view, &key, 1_000);
                                slot = Some(s);
                                changes
                            })
                            .await;
                        (r, slot)
                    })
                })
                .collect();
            let mut slots = Vec::new();
            for t in tasks {
                let (r, slot) = t.await.unwrap();
                // A decider only loses to another's commit, so with fewer deciders than
                // MAX_ATTEMPTS every one of them gets through.
                r.unwrap_or_else(|e| panic!("{st:?}: {e}"));
                slots.push(slot.unwrap());
            }
            slots.sort();
            let expected: Vec<i64> = (0..N).map(|i| 1_000 + i * 15_000).collect();
            assert_eq!(slots, expected, "{st:?}");
            let v = st.load(&Scope::group(g("g"))).await.unwrap();
            assert_eq!(v.group.version, N as u64);
        }
    }
}
