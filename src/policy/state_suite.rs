//! The behaviour every [`PlaybookState`] must have, as one test suite run against each
//! implementation: the in-memory one in this crate's unit tests, the PostgreSQL one
//! (`store/pg_state.rs`) on a throw-away database in `tests/pg_state.rs`. Test support, not
//! service code (hidden from the docs); it is in the library so both can reach it.
//!
//! A case takes a [`Factory`] that makes a fresh, empty store with the given limits (a case
//! that needs two stores calls it twice: they share nothing). Queue limits are small here so
//! the database runs the cases in seconds; `state_memory.rs` keeps its own regression tests at
//! the default limits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::bounded_queue::{Discarded, QueueLimits, Record};
use super::compliance::{ReviewError, ReviewItem, ReviewVerdict};
use super::handoff::{GroupHandoffs, OpenHandoff};
use super::scheduler::{Job, JobContent, OutboundKind};
use super::spacing::{Priority, SpacingConfig, SpacingOutcome, HIGH_MAX_SLOTS};
use super::state::{
    DroppedSend, GroupKey, GroupRow, PlaybookState, Scope, StateChange, StateError, StateView,
    SweepLimits, UserProfile, UserRow, Versioned,
};
use super::state_memory::{MemoryState, OnDiscard, StateLimits, StateQueue};

/// What the cases read beyond the trait: queue sizes and discard counts.
#[async_trait]
pub trait Inspect: PlaybookState {
    /// What the limits discarded since the store was made.
    fn discarded(&self, queue: StateQueue) -> Discarded;
    /// (entries, estimated bytes) a queue holds.
    async fn queue_size(&self, queue: StateQueue) -> Result<(usize, usize), StateError>;
    /// Message ids remembered for deduplicating review entries.
    async fn reviewed_ids(&self) -> Result<usize, StateError>;
}

#[async_trait]
impl Inspect for MemoryState {
    fn discarded(&self, queue: StateQueue) -> Discarded {
        MemoryState::discarded(self, queue)
    }
    async fn queue_size(&self, queue: StateQueue) -> Result<(usize, usize), StateError> {
        Ok(MemoryState::queue_size(self, queue))
    }
    async fn reviewed_ids(&self) -> Result<usize, StateError> {
        Ok(MemoryState::reviewed_ids(self))
    }
}

/// A fresh store.
pub type Made = Pin<Box<dyn Future<Output = Arc<dyn Inspect>> + Send>>;
/// Makes a fresh, empty store with these limits and discard hook.
pub type Factory<'a> = dyn Fn(StateLimits, Option<OnDiscard>) -> Made + Sync + 'a;

/// The factory of [`MemoryState`]s.
pub fn memory(limits: StateLimits, on_discard: Option<OnDiscard>) -> Made {
    Box::pin(async move { Arc::new(MemoryState::with_limits(limits, on_discard)) as _ })
}

/// Every case, by name, in one call (a backend whose stores are costly to make runs them on one
/// server). Each case prints its name first, so a failure names it.
pub async fn run_all(make: &Factory<'_>) {
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            $(
                eprintln!("playbook state suite: {}", stringify!($case));
                $case(make).await;
            )*
        };
    }
    cases!(
        absent_rows_read_as_defaults_at_version_zero,
        a_stale_version_is_a_conflict_and_nothing_of_the_commit_applies,
        a_job_is_taken_once,
        delayed_jobs_stay_within_entries_bytes_and_age,
        review_entries_are_deduplicated_by_message,
        reviews_are_decided_once,
        review_and_dropped_queues_stay_within_entries_bytes_and_age,
        discards_are_reported_and_the_reviewed_ids_are_bounded,
        open_handoffs_are_counted_over_the_bots_other_chats_within_the_ttl,
        sweep_forgets_idle_profiles_old_cooldowns_and_idle_chats_without_jobs,
        concurrent_commits_of_one_slot_exactly_one_wins,
        concurrent_transactions_get_distinct_slots,
        concurrent_adds_to_a_full_queue_count_every_discard_once,
    );
}

async fn fresh(make: &Factory<'_>) -> Arc<dyn Inspect> {
    make(StateLimits::default(), None).await
}

/// What a discard hook was told: (queue, reason, count) per call.
type Seen = Arc<Mutex<Vec<(StateQueue, &'static str, u64)>>>;

/// A hook that records what it is told, and what it was told.
fn recording_hook() -> (OnDiscard, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook: OnDiscard = {
        let seen = seen.clone();
        Arc::new(move |q, reason, n| seen.lock().push((q, reason, n)))
    };
    (hook, seen)
}

fn g(chat: &str) -> GroupKey {
    GroupKey::new("b", chat)
}

pub const SPACING: SpacingConfig = SpacingConfig {
    min_interval_ms: 15_000,
    jitter_ms: 0,
    queue_limit: 100,
};

/// A decision that reserves the group's next high-priority spacing slot (at or after `now`)
/// and reports it.
pub fn reserve(view: StateView, key: &GroupKey, now: i64) -> (i64, Vec<StateChange>) {
    let mut row = view.group.row.clone();
    let SpacingOutcome::Send { at_ms } = row.spacing.plan(now, &SPACING, None, Priority::High, 0)
    else {
        panic!("high priority is never merged or dropped")
    };
    let put = StateChange::PutGroup {
        key: key.clone(),
        expected_version: view.group.version,
        row,
    };
    (at_ms, vec![put])
}

fn job(at_ms: i64, users: usize) -> Job {
    Job {
        bot_id: "b".into(),
        chat_id: "g".into(),
        chat_name: String::new(),
        kind: OutboundKind::DelayedReply,
        rule_id: format!("push:{at_ms}"),
        at_ms,
        content: JobContent::Ready(Default::default()),
        user_ids: (0..users).map(|u| format!("wxid_user_{u}")).collect(),
        slot_reserved: false,
    }
}

/// A review entry whose text is `text_bytes` long (also for the memory backend's own tests).
pub fn review_item(at_ms: i64, msg: &str, text_bytes: usize) -> ReviewItem {
    ReviewItem {
        at_ms,
        bot_id: "b".into(),
        chat_id: "g".into(),
        user_id: "u".into(),
        message_id: msg.into(),
        text: "x".repeat(text_bytes),
        matched: "w".into(),
        reason: "banned_word".into(),
        verdict: None,
    }
}

/// The `n`th dropped send (also for the memory backend's own tests).
pub fn dropped(at_ms: i64, n: usize) -> DroppedSend {
    DroppedSend {
        at_ms,
        bot_id: "b".into(),
        chat_id: "g".into(),
        user_id: format!("u{n}"),
        source_id: format!("m{n}"),
        key: "price".into(),
        reason: "dropped:spacing_queue_full".into(),
    }
}

const DAY_MS: i64 = 86_400_000;

fn day_sweep() -> SweepLimits {
    SweepLimits {
        user_idle_ms: DAY_MS,
        cooldown_max_age_ms: DAY_MS,
        chat_idle_ms: DAY_MS,
    }
}

pub async fn absent_rows_read_as_defaults_at_version_zero(make: &Factory<'_>) {
    let st = fresh(make).await;
    let v = st.load(&Scope::user(g("g"), "u", None)).await.unwrap();
    assert_eq!(v.group, Versioned::default());
    assert_eq!(v.user, Some(Versioned::default()));
    assert_eq!(v.bot_open_handoffs, 0);
    assert_eq!(st.load(&Scope::group(g("g"))).await.unwrap().user, None);
    let due = st.load_due(Some(i64::MAX)).await.unwrap();
    assert!(due.groups.is_empty() && due.jobs.is_empty());
    assert_eq!(due.next_job_ms, None);
}

pub async fn a_stale_version_is_a_conflict_and_nothing_of_the_commit_applies(make: &Factory<'_>) {
    let st = fresh(make).await;
    let put_group = |v: u64, messages: u64| StateChange::PutGroup {
        key: g("g"),
        expected_version: v,
        row: GroupRow {
            handoffs: GroupHandoffs {
                messages,
                ..Default::default()
            },
            ..Default::default()
        },
    };
    st.commit(vec![put_group(0, 1)]).await.unwrap();
    let v = st.load(&Scope::group(g("g"))).await.unwrap();
    assert_eq!((v.group.version, v.group.row.handoffs.messages), (1, 1));

    let user_row = UserRow {
        not_understood_streak: 1,
        ..Default::default()
    };
    let e = st
        .commit(vec![
            StateChange::PutUser {
                key: g("g").user("u"),
                expected_version: 0,
                row: user_row.clone(),
            },
            StateChange::AddDropped(dropped(0, 1)),
            StateChange::Schedule(job(5, 1)),
            put_group(0, 2),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        e,
        StateError::Conflict("group b/g is at version 1, not 0".into())
    );
    let v = st.load(&Scope::user(g("g"), "u", None)).await.unwrap();
    assert_eq!(v.group.row.handoffs.messages, 1);
    assert_eq!(
        v.user,
        Some(Versioned::default()),
        "the user put was not applied"
    );
    assert!(st.dropped_sends().await.unwrap().is_empty());
    assert_eq!(st.load_due(None).await.unwrap().next_job_ms, None);

    // A stale user version names the user; a current one lands and counts up.
    st.commit(vec![put_group(1, 2)]).await.unwrap();
    let put_user = |v: u64| StateChange::PutUser {
        key: g("g").user("u"),
        expected_version: v,
        row: user_row.clone(),
    };
    st.commit(vec![put_user(0)]).await.unwrap();
    assert_eq!(
        st.commit(vec![put_user(0)]).await.unwrap_err(),
        StateError::Conflict("user b/g/u is at version 1, not 0".into())
    );
    st.commit(vec![put_user(1)]).await.unwrap();
    let v = st.load(&Scope::user(g("g"), "u", None)).await.unwrap();
    assert_eq!(v.group.version, 2);
    assert_eq!(v.user.unwrap().version, 2);
}

pub async fn a_job_is_taken_once(make: &Factory<'_>) {
    let st = fresh(make).await;
    let mut job = job(1_000, 1);
    job.user_ids = vec!["u".into()];
    st.commit(vec![StateChange::Schedule(job.clone())])
        .await
        .unwrap();
    assert!(st.load_due(Some(999)).await.unwrap().jobs.is_empty());
    let due = st.load_due(Some(1_000)).await.unwrap();
    assert_eq!(due.next_job_ms, Some(1_000));
    assert_eq!(due.jobs.len(), 1);
    assert_eq!(due.jobs[0].job, job);
    let take = || vec![StateChange::Unschedule { id: due.jobs[0].id }];
    st.commit(take()).await.unwrap();
    assert!(matches!(
        st.commit(take()).await,
        Err(StateError::Conflict(_))
    ));
    assert_eq!(st.load_due(None).await.unwrap().next_job_ms, None);
}

/// The delayed-job queue keeps to its entries and bytes (the earliest scheduled go) and drops
/// jobs too late to send at the sweep; each discard is counted and reported.
pub async fn delayed_jobs_stay_within_entries_bytes_and_age(make: &Factory<'_>) {
    let (hook, seen) = recording_hook();
    let limits = QueueLimits {
        max_entries: 20,
        max_bytes: 64 << 10,
        max_age_s: 86_400,
    };
    let st = make(
        StateLimits {
            delayed_jobs: limits,
            ..StateLimits::default()
        },
        Some(hook),
    )
    .await;
    for i in 0..40 {
        st.commit(vec![StateChange::Schedule(job(1_000_000 + i, 1))])
            .await
            .unwrap();
    }
    let (n, bytes) = st.queue_size(StateQueue::DelayedJobs).await.unwrap();
    assert_eq!(n, limits.max_entries);
    let due = st.load_due(Some(i64::MAX)).await.unwrap().jobs;
    assert_eq!(due.len(), limits.max_entries);
    assert_eq!(
        due[0].job.at_ms, 1_000_020,
        "the earliest scheduled went first"
    );
    assert_eq!(st.discarded(StateQueue::DelayedJobs).entries, 20);
    // Taking a job frees its bytes.
    st.commit(vec![StateChange::Unschedule { id: due[0].id }])
        .await
        .unwrap();
    let (n2, bytes2) = st.queue_size(StateQueue::DelayedJobs).await.unwrap();
    assert_eq!(n2, n - 1);
    assert!(bytes2 < bytes, "{bytes2} < {bytes}");

    // Jobs addressed to many users: the byte limit binds first.
    for i in 0..40 {
        st.commit(vec![StateChange::Schedule(job(2_000_000 + i, 200))])
            .await
            .unwrap();
    }
    let (n, bytes) = st.queue_size(StateQueue::DelayedJobs).await.unwrap();
    assert!(bytes <= limits.max_bytes, "{bytes}");
    assert!(n < 40, "{n} big jobs kept");
    assert!(st.discarded(StateQueue::DelayedJobs).bytes > 0);

    // A job a day past its time was never taken: the sweep drops it; a later one stays.
    st.commit(vec![StateChange::Schedule(job(10 * DAY_MS, 1))])
        .await
        .unwrap();
    st.sweep(2_000_000 + DAY_MS + 5_000, &day_sweep())
        .await
        .unwrap();
    let left = st.load_due(Some(i64::MAX)).await.unwrap().jobs;
    assert_eq!(left.len(), 1, "only the job not yet due is kept");
    assert_eq!(left[0].job.at_ms, 10 * DAY_MS);
    assert_eq!(
        st.queue_size(StateQueue::DelayedJobs).await.unwrap(),
        (1, left[0].job.bytes())
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
}

pub async fn review_entries_are_deduplicated_by_message(make: &Factory<'_>) {
    let st = fresh(make).await;
    for m in ["m1", "m1", "m2", "", ""] {
        st.commit(vec![StateChange::AddReview(review_item(0, m, 1))])
            .await
            .unwrap();
    }
    // The same message id in another chat is another message.
    let mut elsewhere = review_item(0, "m1", 1);
    elsewhere.chat_id = "other".into();
    st.commit(vec![StateChange::AddReview(elsewhere)])
        .await
        .unwrap();
    assert_eq!(st.review_queue().await.unwrap().len(), 5);
    assert_eq!(st.drain_review_queue().await.unwrap().len(), 5);
    assert!(st.review_queue().await.unwrap().is_empty());
    // Drained, but still remembered: a repeat is not queued again.
    st.commit(vec![StateChange::AddReview(review_item(0, "m1", 1))])
        .await
        .unwrap();
    assert!(st.review_queue().await.unwrap().is_empty());

    for i in 0..3 {
        st.commit(vec![StateChange::AddDropped(dropped(i, i as usize))])
            .await
            .unwrap();
    }
    let d = st.drain_dropped_sends().await.unwrap();
    let users: Vec<&str> = d.iter().map(|d| d.user_id.as_str()).collect();
    assert_eq!(users, ["u0", "u1", "u2"], "oldest first");
    assert!(st.dropped_sends().await.unwrap().is_empty());
}

/// A verdict is recorded once: the same click again changes nothing, another verdict is
/// refused naming the first, an unknown id is not found.
pub async fn reviews_are_decided_once(make: &Factory<'_>) {
    let st = fresh(make).await;
    st.commit(vec![
        StateChange::AddReview(review_item(1, "m1", 1)),
        StateChange::AddReview(review_item(2, "m2", 1)),
    ])
    .await
    .unwrap();
    let reviews = st.reviews().await.unwrap();
    assert_eq!(reviews.len(), 2);
    assert!(reviews[0].0 < reviews[1].0, "ids grow in queue order");
    assert_eq!(reviews[0].1.message_id, "m1");
    let (id, _) = reviews[0];
    let verdict = |approved: bool, by: &str| ReviewVerdict {
        approved,
        allowed_word: false,
        by: by.into(),
        at_ms: 10,
    };
    let first = st
        .decide_review(id, verdict(true, "alice"))
        .await
        .unwrap()
        .unwrap();
    assert!(first.changed);
    assert_eq!(first.item.verdict, Some(verdict(true, "alice")));
    let again = st
        .decide_review(id, verdict(true, "alice"))
        .await
        .unwrap()
        .unwrap();
    assert!(!again.changed);
    assert_eq!(again.item, first.item);
    assert_eq!(
        st.decide_review(id, verdict(false, "bob")).await.unwrap(),
        Err(ReviewError::AlreadyDecided {
            id,
            approved: true,
            by: "alice".into()
        })
    );
    let unknown = reviews[1].0 + 1_000;
    assert_eq!(
        st.decide_review(unknown, verdict(true, "alice"))
            .await
            .unwrap(),
        Err(ReviewError::NotFound(unknown))
    );
    let after = st.reviews().await.unwrap();
    assert_eq!(after[0], (id, first.item));
    assert_eq!(after[1].1.verdict, None, "the other entry is untouched");
}

/// The review and dropped-send queues keep to their entries, bytes and age.
pub async fn review_and_dropped_queues_stay_within_entries_bytes_and_age(make: &Factory<'_>) {
    let queue = QueueLimits {
        max_entries: 50,
        max_bytes: 32 << 10,
        max_age_s: 86_400,
    };
    let limits = StateLimits {
        review_queue: queue,
        dropped_sends: queue,
        ..StateLimits::default()
    };
    let st = make(limits, None).await;
    for i in 0..100 {
        st.commit(vec![
            StateChange::AddReview(review_item(i, &format!("m{i}"), 10)),
            StateChange::AddDropped(dropped(i, i as usize)),
        ])
        .await
        .unwrap();
    }
    let review = st.review_queue().await.unwrap();
    assert_eq!(review.len(), queue.max_entries);
    assert_eq!(review[0].at_ms, 50, "the oldest went first");
    assert_eq!(st.dropped_sends().await.unwrap().len(), queue.max_entries);

    // Long texts: the byte limit binds long before the entry limit.
    for i in 0..40 {
        st.commit(vec![StateChange::AddReview(review_item(
            30_000 + i,
            &format!("long{i}"),
            6_000,
        ))])
        .await
        .unwrap();
    }
    let (n, bytes) = st.queue_size(StateQueue::Review).await.unwrap();
    assert!(bytes <= queue.max_bytes, "{bytes}");
    assert!(n < 40, "{n} long entries kept");

    // An entry older than the age limit goes once a newer one arrives, or on the sweep.
    let later = 2 * DAY_MS;
    st.commit(vec![StateChange::AddReview(review_item(later, "new", 10))])
        .await
        .unwrap();
    assert_eq!(
        st.review_queue().await.unwrap().len(),
        1,
        "everything a day older is gone"
    );
    assert!(!st.dropped_sends().await.unwrap().is_empty());
    st.sweep(later, &day_sweep()).await.unwrap();
    assert!(st.dropped_sends().await.unwrap().is_empty());
}

/// What the limits discard is counted per queue and reason and reported through the hook,
/// and the message ids kept for deduplication stay within the review queue's limits.
pub async fn discards_are_reported_and_the_reviewed_ids_are_bounded(make: &Factory<'_>) {
    let (hook, seen) = recording_hook();
    let limits = StateLimits {
        review_queue: QueueLimits {
            max_entries: 3,
            max_bytes: 1 << 20,
            max_age_s: 10,
        },
        dropped_sends: QueueLimits {
            max_entries: 100,
            max_bytes: 1024,
            max_age_s: 10,
        },
        ..StateLimits::default()
    };
    let st = make(limits, Some(hook)).await;
    for i in 0..5 {
        st.commit(vec![StateChange::AddReview(review_item(
            i,
            &format!("m{i}"),
            1,
        ))])
        .await
        .unwrap();
    }
    assert_eq!(st.reviewed_ids().await.unwrap(), 3);
    // m0 left the window: a repeat is queued again; m4 is still deduplicated.
    for m in ["m0", "m4"] {
        st.commit(vec![StateChange::AddReview(review_item(5, m, 1))])
            .await
            .unwrap();
    }
    let ids: Vec<String> = st
        .review_queue()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    assert_eq!(ids, ["m3", "m4", "m0"]);
    for i in 0..10 {
        st.commit(vec![StateChange::AddDropped(dropped(100, i))])
            .await
            .unwrap();
    }
    st.commit(vec![StateChange::AddDropped(dropped(20_000, 99))])
        .await
        .unwrap();
    let review = st.discarded(StateQueue::Review);
    assert_eq!(review.entries, 3);
    let dropped_gone = st.discarded(StateQueue::Dropped);
    assert!(dropped_gone.bytes > 0, "{dropped_gone:?}");
    assert!(dropped_gone.age > 0, "{dropped_gone:?}");
    assert_eq!(st.dropped_sends().await.unwrap().len(), 1);
    let reported: u64 = seen.lock().iter().map(|&(_, _, n)| n).sum();
    assert_eq!(reported, review.total() + dropped_gone.total());
    assert!(seen
        .lock()
        .iter()
        .any(|&(q, r, _)| q == StateQueue::Dropped && r == "max_age"));
    assert!(st.reviewed_ids().await.unwrap() <= 3);
}

pub async fn open_handoffs_are_counted_over_the_bots_other_chats_within_the_ttl(
    make: &Factory<'_>,
) {
    let st = fresh(make).await;
    let with_open = |times: &[i64]| GroupRow {
        handoffs: GroupHandoffs {
            open: times
                .iter()
                .map(|&t| OpenHandoff {
                    opened_ms: t,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    let put = |key: GroupKey, times: &[i64]| StateChange::PutGroup {
        key,
        expected_version: 0,
        row: with_open(times),
    };
    st.commit(vec![
        put(g("a"), &[100, 500]),
        put(g("me"), &[500]),
        put(g("z"), &[600]),
        put(GroupKey::new("other_bot", "a"), &[500]),
        put(GroupKey::new("c", "a"), &[500]),
    ])
    .await
    .unwrap();
    let st = &st;
    let count = |after| async move {
        st.load(&Scope::user(g("me"), "u", Some(after)))
            .await
            .unwrap()
            .bot_open_handoffs
    };
    // Own chat and other bots excluded; only handoffs opened after the cut-off count.
    assert_eq!(count(0).await, 3);
    assert_eq!(count(100).await, 2);
    assert_eq!(count(550).await, 1);
    assert_eq!(count(600).await, 0);
    // Every group comes back with its ids, in key order.
    let keys: Vec<GroupKey> = st
        .load_due(None)
        .await
        .unwrap()
        .groups
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        [
            g("a"),
            g("me"),
            g("z"),
            GroupKey::new("c", "a"),
            GroupKey::new("other_bot", "a")
        ]
    );
}

pub async fn sweep_forgets_idle_profiles_old_cooldowns_and_idle_chats_without_jobs(
    make: &Factory<'_>,
) {
    let st = fresh(make).await;
    let limits = SweepLimits {
        user_idle_ms: 1_000,
        cooldown_max_age_ms: 500,
        chat_idle_ms: 1_000,
    };
    let mut active = UserRow::default();
    active.profile.last_seen_ms = 900;
    active.profile.disclosed = true;
    active.cooldowns.record("price", 100);
    let mut idle = UserRow::default();
    idle.profile.disclosed = true;
    idle.not_understood_streak = 1;
    let gone = UserRow {
        profile: UserProfile {
            disclosed: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut quiet = GroupRow::default();
    super::scheduler::touch(&mut quiet.timers, "q", 0, true);
    let mut busy = GroupRow::default();
    super::scheduler::touch(&mut busy.timers, "b", 800, true);
    let waiting = quiet.clone();
    let user = |u: &str, row: UserRow| StateChange::PutUser {
        key: g("g").user(u),
        expected_version: 0,
        row,
    };
    let group = |c: &str, row: GroupRow| StateChange::PutGroup {
        key: g(c),
        expected_version: 0,
        row,
    };
    let mut job_for_waiting = job(5_000, 0);
    job_for_waiting.chat_id = "waiting".into();
    job_for_waiting.chat_name = "w".into();
    st.commit(vec![
        user("active", active),
        user("idle", idle),
        user("gone", gone),
        group("quiet", quiet),
        group("busy", busy),
        group("waiting", waiting),
        StateChange::Schedule(job_for_waiting),
    ])
    .await
    .unwrap();
    st.sweep(1_000, &limits).await.unwrap();
    let st = &st;

    let user_at = |u: &'static str| async move {
        st.load(&Scope::user(g("g"), u, None))
            .await
            .unwrap()
            .user
            .unwrap()
    };
    let a = user_at("active").await;
    assert!(a.row.profile.disclosed);
    assert!(
        a.row.cooldowns.is_empty(),
        "the 900 ms old cooldown is gone"
    );
    assert_eq!(a.version, 2);
    let i = user_at("idle").await;
    assert_eq!(i.row.profile, UserProfile::default());
    assert_eq!(i.row.not_understood_streak, 1, "streaks are not forgotten");
    assert_eq!(user_at("gone").await, Versioned::default());

    let group_at =
        |c: &'static str| async move { st.load(&Scope::group(g(c))).await.unwrap().group };
    let q = group_at("quiet").await;
    assert_eq!((q.row.timers, q.version), (None, 2));
    let b = group_at("busy").await;
    assert!(b.row.timers.is_some());
    assert_eq!(b.version, 1, "an active chat is not rewritten");
    assert!(
        group_at("waiting").await.row.timers.is_some(),
        "a job is queued for it"
    );
}

/// Two deciders read the same group row and both plan the same slot: only the first commit
/// lands.
pub async fn concurrent_commits_of_one_slot_exactly_one_wins(make: &Factory<'_>) {
    const N: usize = 8;
    let st = fresh(make).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (st, barrier) = (st.clone(), barrier.clone());
            tokio::spawn(async move {
                let key = g("g");
                let view = st.load(&Scope::group(key.clone())).await.unwrap();
                let (slot, changes) = reserve(view, &key, 1_000);
                barrier.wait().await; // everyone has read version 0
                st.commit(changes).await.map(|()| slot)
            })
        })
        .collect();
    let mut won = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(slot) => won.push(slot),
            Err(StateError::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((won, conflicts), (vec![1_000], N - 1));
}

/// Many concurrent decisions each reserve a slot in one group through `transact`, spread over
/// `stores` (replicas of one database, or one store): every decision gets its own slot, 15 s
/// apart, none is lost, and the group's version counts them.
pub async fn distinct_slots_across(stores: &[Arc<dyn Inspect>]) {
    // As many as fit the high-priority horizon, so every slot is a full interval apart; fewer
    // than MAX_ATTEMPTS, so a decider that only loses to others' commits always gets through.
    const N: i64 = HIGH_MAX_SLOTS + 1;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let st = stores[i as usize % stores.len()].clone();
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
        r.unwrap_or_else(|e| panic!("{e}"));
        slots.push(slot.unwrap());
    }
    slots.sort();
    let expected: Vec<i64> = (0..N).map(|i| 1_000 + i * 15_000).collect();
    assert_eq!(slots, expected);
    for st in stores {
        let v = st.load(&Scope::group(g("g"))).await.unwrap();
        assert_eq!(v.group.version, N as u64);
    }
}

pub async fn concurrent_transactions_get_distinct_slots(make: &Factory<'_>) {
    distinct_slots_across(&[fresh(make).await]).await;
}

/// Commits adding to a full queue at the same moment (several replicas dropping sends) all
/// land; every entry is either kept or counted as discarded, once; the queue may run past its
/// limit by the commits that overlapped (a store without a queue-wide lock), and the next
/// commit trims it back.
pub async fn concurrent_adds_to_a_full_queue_count_every_discard_once(make: &Factory<'_>) {
    const LIMIT: usize = 10;
    const N: usize = 8;
    let queue = QueueLimits {
        max_entries: LIMIT,
        ..QueueLimits::default()
    };
    let limits = StateLimits {
        dropped_sends: queue,
        ..StateLimits::default()
    };
    let st = make(limits, None).await;
    for i in 0..LIMIT {
        st.commit(vec![StateChange::AddDropped(dropped(i as i64, 1))])
            .await
            .unwrap();
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (st, barrier) = (st.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let at = (LIMIT + i) as i64;
                st.commit(vec![StateChange::AddDropped(dropped(at, 1))])
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    let accounted = |st: &Arc<dyn Inspect>| {
        let st = st.clone();
        async move {
            let (n, _) = st.queue_size(StateQueue::Dropped).await.unwrap();
            (n, st.discarded(StateQueue::Dropped).total() as usize)
        }
    };
    let (n, gone) = accounted(&st).await;
    assert!((LIMIT..=LIMIT + N).contains(&n), "{n} entries kept");
    assert_eq!(n + gone, LIMIT + N, "kept {n} + discarded {gone}");
    st.commit(vec![StateChange::AddDropped(dropped(100, 1))])
        .await
        .unwrap();
    let (n, gone) = accounted(&st).await;
    assert_eq!((n, n + gone), (LIMIT, LIMIT + N + 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case against [`MemoryState`], as its own test.
    macro_rules! on_memory {
        ($($case:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(&memory).await
                }
            )*
        };
    }

    on_memory!(
        absent_rows_read_as_defaults_at_version_zero,
        a_stale_version_is_a_conflict_and_nothing_of_the_commit_applies,
        a_job_is_taken_once,
        delayed_jobs_stay_within_entries_bytes_and_age,
        review_entries_are_deduplicated_by_message,
        reviews_are_decided_once,
        review_and_dropped_queues_stay_within_entries_bytes_and_age,
        discards_are_reported_and_the_reviewed_ids_are_bounded,
        open_handoffs_are_counted_over_the_bots_other_chats_within_the_ttl,
        sweep_forgets_idle_profiles_old_cooldowns_and_idle_chats_without_jobs,
        concurrent_commits_of_one_slot_exactly_one_wins,
        concurrent_transactions_get_distinct_slots,
        concurrent_adds_to_a_full_queue_count_every_discard_once,
    );

    /// `run_all` runs every case (the list above and its list agree).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn run_all_on_memory() {
        run_all(&memory).await;
    }
}
