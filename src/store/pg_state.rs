//! The playbook's runtime state decided in PostgreSQL ([`PgState`]), so several replicas on one
//! database answer at the same time: a spacing slot in a group or a cooldown per user and
//! intent is reserved by the commit that lands first, whichever replica made it.
//!
//! Behaviour is that of the in-memory state (`policy/state_memory.rs`), row for row: versioned
//! group and user rows, the delayed-job, review and dropped-send queues kept within
//! [`StateLimits`] (what a limit discards is counted and reported through [`OnDiscard`] once
//! the commit that discarded it has landed), review entries deduplicated by (bot, chat,
//! message id) with the remembered ids bounded like the queue, and the same sweep.
//!
//! Conflicts: a `Put` at version 0 is an `INSERT ... ON CONFLICT DO NOTHING`, at version n an
//! `UPDATE ... WHERE key = $1 AND version = n`, an `Unschedule` a `DELETE` of the job's id; each
//! is checked by its row count and the first miss rolls the whole commit back as
//! [`StateError::Conflict`] naming the row. Under READ COMMITTED a racing writer waits on the
//! row lock, then sees the new version and misses: exactly one of them wins. A deadlock or
//! serialization failure the server reports is a conflict too (the decider tries again).
//! Queues are trimmed by the commit that adds to them, without a queue-wide lock: the trim
//! deletes with `FOR UPDATE SKIP LOCKED`, so a row another commit is already deleting is left
//! to it (each discarded row is counted once) and no commit waits on another. A queue-wide lock
//! held to the commit made every reply that dropped a send wait its turn across all replicas
//! (measured: `pg_advisory_xact_lock` averaged 139 ms, two replicas served at half of one).
//! The price: commits running at the same moment do not see each other's new rows, so a queue
//! may hold up to that many entries past its limit until the next commit or sweep trims it.
//!
//! Privacy: every row body is sealed JSON (the store's [`Keyring`], additional data
//! [`state_aad`] of the table and the row's key), and every key naming a bot, chat, user or
//! message is a keyed pseudonym under the database's one pseudonym secret (made by
//! [`super::PgStore::open`], so the store opens first). The ids a reader needs back (the groups
//! of `load_due`) are inside the sealed body; in clear are only versions, times, byte
//! estimates and the opening times of open handoffs (so counting them is one query).
//!
//! Tables: `playbook_groups`, `playbook_users`, `playbook_jobs`, `playbook_reviews`,
//! `playbook_reviewed`, `playbook_dropped` (migration 2 in `postgres.rs`).
//!
//! Async: the service calls this on its runtime; every query runs on the pool's own runtime
//! through [`Pg::run`] (never [`Pg::block`], which parks the calling thread).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::IsolationLevel;

use super::crypto::{state_aad, Keyring};
use super::pg::{pg_err, Pg, PgSettings};
use super::postgres::{stored_pseudonyms, MIGRATIONS};
use super::pseudonyms::Pseudonyms;
use super::StoreError;
use crate::policy::bounded_queue::{Discarded, QueueLimits, Record};
use crate::policy::compliance::{ReviewError, ReviewItem, ReviewVerdict};
use crate::policy::scheduler::Job;
use crate::policy::state::{
    Decided, DroppedSend, DueView, GroupKey, GroupRow, PlaybookState, QueuedJob, Scope,
    StateChange, StateError, StateView, SweepLimits, UserKey, UserProfile, UserRow, Versioned,
};
use crate::policy::state_memory::{OnDiscard, StateLimits, StateQueue};

const GROUPS: &str = "playbook_groups";
const USERS: &str = "playbook_users";
const JOBS: &str = "playbook_jobs";
const REVIEWS: &str = "playbook_reviews";
const REVIEWED: &str = "playbook_reviewed";
const DROPPED: &str = "playbook_dropped";
/// Pseudonym domain of a bot alone (the `bot` column of groups).
const BOTS: &str = "playbook_bots";

/// What the queue limits discarded in one commit, per queue: reported with
/// [`PgState::report`] once the commit landed (a rolled-back commit discarded nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Discards {
    pub review: Discarded,
    pub dropped: Discarded,
    pub delayed_jobs: Discarded,
}

impl Discards {
    pub fn get(&self, queue: StateQueue) -> Discarded {
        match queue {
            StateQueue::Review => self.review,
            StateQueue::Dropped => self.dropped,
            StateQueue::DelayedJobs => self.delayed_jobs,
        }
    }

    fn slot(&mut self, queue: StateQueue) -> &mut Discarded {
        match queue {
            StateQueue::Review => &mut self.review,
            StateQueue::Dropped => &mut self.dropped,
            StateQueue::DelayedJobs => &mut self.delayed_jobs,
        }
    }

    fn add(&mut self, other: &Discards) {
        for q in QUEUES {
            self.slot(q).add(other.get(q));
        }
    }
}

const QUEUES: [StateQueue; 3] = [
    StateQueue::Review,
    StateQueue::Dropped,
    StateQueue::DelayedJobs,
];

/// A sealed row body: the ids a reader needs back, and the row.
#[derive(Serialize, Deserialize)]
struct Body<K, R> {
    key: K,
    row: R,
}

/// The connection, keys and counters [`PgState`] shares with the futures it runs on the pool's
/// runtime.
struct Inner {
    pg: Arc<Pg>,
    keyring: Arc<Keyring>,
    pseudonyms: Pseudonyms,
    limits: StateLimits,
    on_discard: Option<OnDiscard>,
    /// What the limits discarded since start (this process's commits).
    discarded: Mutex<Discards>,
}

/// See the module doc. Cloning shares the pool and the counters.
#[derive(Clone)]
pub struct PgState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgState")
            .field("pg", &self.inner.pg)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Unique text for a tuple of ids (length-prefixed, so ("ab", "c") and ("a", "bc") differ).
fn name(parts: &[&str]) -> String {
    parts.iter().map(|p| format!("{}:{p}", p.len())).collect()
}

fn to_i64(v: u64, what: &str) -> Result<i64, StateError> {
    i64::try_from(v).map_err(|_| StateError::Backend(format!("{what} {v} is beyond {}", i64::MAX)))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn max_age_ms(limits: &QueueLimits) -> i64 {
    i64::try_from(limits.max_age_s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

impl PgState {
    /// Connects its own pool to `url` (waiting for the server, applying the migrations) and
    /// reads the database's pseudonym secret: [`super::PgStore::open`] must have run on this
    /// database first (it makes the secret; this never makes a second one). Blocking: call it
    /// at start, or from `spawn_blocking`.
    pub fn open(
        url: &str,
        settings: &PgSettings,
        keyring: Arc<Keyring>,
        limits: StateLimits,
        on_discard: Option<OnDiscard>,
    ) -> Result<PgState, StoreError> {
        let pg = Pg::connect(url, settings, MIGRATIONS)?;
        Self::with_pool(Arc::new(pg), keyring, limits, on_discard)
    }

    /// [`Self::open`] over a pool already connected and migrated (e.g. the one the shared
    /// outbox uses, so both can write in one transaction). Blocking, like `open`.
    pub fn with_pool(
        pg: Arc<Pg>,
        keyring: Arc<Keyring>,
        limits: StateLimits,
        on_discard: Option<OnDiscard>,
    ) -> Result<PgState, StoreError> {
        limits.validate().map_err(StoreError::Config)?;
        let pseudonyms = pg.block(stored_pseudonyms(&pg, &keyring))?;
        Ok(PgState {
            inner: Arc::new(Inner {
                pg,
                keyring,
                pseudonyms,
                limits,
                on_discard,
                discarded: Mutex::new(Discards::default()),
            }),
        })
    }

    /// The database's pseudonym secret as read at open (for another reader of this database
    /// on the same pool, e.g. the shared outbox: no second read).
    pub fn pseudonyms(&self) -> &Pseudonyms {
        &self.inner.pseudonyms
    }

    /// The pool: a caller that commits state changes in its own transaction
    /// ([`Self::commit_in`]) takes its connection from here, inside [`Pg::run`].
    pub fn pg(&self) -> &Arc<Pg> {
        &self.inner.pg
    }

    /// Applies `changes` inside the caller's transaction, with the same checks as
    /// [`PlaybookState::commit`]: on `Err` the caller must roll back (drop the transaction),
    /// since part of the changes may be applied. On `Ok`, once the caller's commit lands, it
    /// hands the returned [`Discards`] to [`Self::report`].
    pub async fn commit_in(
        &self,
        tx: &Transaction<'_>,
        changes: Vec<StateChange>,
    ) -> Result<Discards, StateError> {
        self.inner.apply(tx, changes).await
    }

    /// Counts and reports (through the [`OnDiscard`] hook) what a landed commit discarded.
    pub fn report(&self, discards: &Discards) {
        self.inner.report(discards);
    }

    /// What the limits discarded since start, by this process's commits and sweeps.
    pub fn discarded(&self, queue: StateQueue) -> Discarded {
        self.inner.discarded.lock().get(queue)
    }

    /// (entries, estimated bytes) a queue holds now.
    pub async fn queue_size(&self, queue: StateQueue) -> Result<(usize, usize), StateError> {
        let table = match queue {
            StateQueue::Review => REVIEWS,
            StateQueue::Dropped => DROPPED,
            StateQueue::DelayedJobs => JOBS,
        };
        self.on_pool(move |inner| async move {
            let client = inner.client().await?;
            let sql = format!("SELECT COUNT(*), COALESCE(SUM(bytes), 0)::BIGINT FROM {table}");
            let row = client.query_one(&sql, &[]).await.map_err(|e| inner.db(e))?;
            let (n, bytes): (i64, i64) = (row.get(0), row.get(1));
            Ok((to_u64(n) as usize, to_u64(bytes) as usize))
        })
        .await
    }

    /// (bot, chat, message id)s remembered for deduplicating review entries.
    pub async fn reviewed_ids(&self) -> Result<usize, StateError> {
        self.on_pool(|inner| async move {
            let client = inner.client().await?;
            let n: i64 = client
                .query_one("SELECT COUNT(*) FROM playbook_reviewed", &[])
                .await
                .map_err(|e| inner.db(e))?
                .get(0);
            Ok(to_u64(n) as usize)
        })
        .await
    }

    /// Runs `f` on the pool's runtime (see the module doc).
    async fn on_pool<T, F>(&self, f: impl FnOnce(Arc<Inner>) -> F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StateError>> + Send + 'static,
    {
        let fut = f(self.inner.clone());
        self.inner
            .pg
            .run(fut)
            .await
            .map_err(|e| StateError::Backend(e.to_string()))?
    }
}

impl Inner {
    fn backend(&self, what: impl std::fmt::Display) -> StateError {
        StateError::Backend(format!("{}: {what}", self.pg.origin()))
    }

    /// A driver error: a deadlock or serialization failure is a conflict (decide again),
    /// anything else the backend's.
    fn db(&self, e: tokio_postgres::Error) -> StateError {
        match e.code() {
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => {
                StateError::Conflict(format!("the database broke a deadlock: {}", pg_err(&e)))
            }
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => {
                StateError::Conflict(format!("serialization failure: {}", pg_err(&e)))
            }
            _ => self.backend(pg_err(&e)),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StateError> {
        self.pg
            .client()
            .await
            .map_err(|e| StateError::Backend(e.to_string()))
    }

    fn group_key(&self, key: &GroupKey) -> String {
        self.pseudonyms
            .state(GROUPS, &name(&[&key.bot_id, &key.chat_id]))
    }

    fn bot_key(&self, bot_id: &str) -> String {
        self.pseudonyms.state(BOTS, &name(&[bot_id]))
    }

    fn user_key(&self, key: &UserKey) -> String {
        self.pseudonyms
            .state(USERS, &name(&[&key.bot_id, &key.chat_id, &key.user_id]))
    }

    fn reviewed_key(&self, item: &ReviewItem) -> String {
        self.pseudonyms.state(
            REVIEWED,
            &name(&[&item.bot_id, &item.chat_id, &item.message_id]),
        )
    }

    fn seal<T: Serialize>(
        &self,
        table: &str,
        key: &str,
        value: &T,
    ) -> Result<(String, Vec<u8>), StateError> {
        let json = serde_json::to_vec(value)
            .map_err(|e| self.backend(format!("a {table} row does not serialise: {e}")))?;
        let s = self
            .keyring
            .seal(&json, &state_aad(table, key))
            .map_err(|e| self.backend(format!("sealing a {table} row: {e}")))?;
        Ok((s.key_id, s.blob))
    }

    /// A sealed row body, or an error naming the table and the row's (pseudonymous) key.
    fn open<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        key_id: &str,
        sealed: &[u8],
    ) -> Result<T, StateError> {
        let json = self
            .keyring
            .open(key_id, sealed, &state_aad(table, key))
            .map_err(|e| self.backend(format!("{table} row {key} does not open: {e}")))?;
        serde_json::from_slice(&json)
            .map_err(|e| self.backend(format!("{table} row {key} is not a valid row: {e}")))
    }

    /// Counts `d` and reports it through the hook.
    fn report(&self, d: &Discards) {
        self.discarded.lock().add(d);
        if let Some(hook) = &self.on_discard {
            for q in QUEUES {
                for (reason, n) in d.get(q).by_reason() {
                    hook(q, reason, n);
                }
            }
        }
    }

    async fn exec(
        &self,
        tx: &Transaction<'_>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StateError> {
        let stmt = tx.prepare_cached(sql).await.map_err(|e| self.db(e))?;
        tx.execute(&stmt, params).await.map_err(|e| self.db(e))
    }

    async fn query(
        &self,
        tx: &Transaction<'_>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StateError> {
        let stmt = tx.prepare_cached(sql).await.map_err(|e| self.db(e))?;
        tx.query(&stmt, params).await.map_err(|e| self.db(e))
    }

    async fn next_id(&self, tx: &Transaction<'_>, sequence: &str) -> Result<i64, StateError> {
        let rows = self
            .query(tx, &format!("SELECT nextval('{sequence}')"), &[])
            .await?;
        Ok(rows[0].get(0))
    }

    /// The version a row is at now (0: absent), for a conflict's message.
    async fn version_of(
        &self,
        tx: &Transaction<'_>,
        table: &str,
        key: &str,
    ) -> Result<u64, StateError> {
        let sql = format!("SELECT version FROM {table} WHERE key = $1");
        let rows = self.query(tx, &sql, &[&key]).await?;
        Ok(rows.first().map_or(0, |r| to_u64(r.get(0))))
    }

    /// See [`PgState::commit_in`].
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        changes: Vec<StateChange>,
    ) -> Result<Discards, StateError> {
        let mut d = Discards::default();
        for c in changes {
            match c {
                StateChange::PutGroup {
                    key,
                    expected_version,
                    row,
                } => self.put_group(tx, key, expected_version, row).await?,
                StateChange::PutUser {
                    key,
                    expected_version,
                    row,
                } => self.put_user(tx, key, expected_version, row).await?,
                StateChange::AddReview(item) => {
                    d.review.add(self.add_review(tx, item).await?);
                }
                StateChange::AddDropped(item) => {
                    let limits = self.limits.dropped_sends;
                    let (at, bytes) = (item.at_ms, item.bytes());
                    let id = self.next_id(tx, "playbook_dropped_id").await?;
                    let (key_id, sealed) = self.seal(DROPPED, &id.to_string(), &item)?;
                    self.insert_queued(tx, DROPPED, id, at, bytes, &key_id, &sealed)
                        .await?;
                    d.dropped
                        .add(self.trim(tx, DROPPED, &limits, Some(at)).await?);
                }
                StateChange::Schedule(job) => {
                    d.delayed_jobs.add(self.schedule(tx, job).await?);
                }
                StateChange::Unschedule { id } => {
                    let n = self
                        .exec(
                            tx,
                            "DELETE FROM playbook_jobs WHERE id = $1",
                            &[&to_i64(id, "job id")?],
                        )
                        .await?;
                    if n != 1 {
                        return Err(StateError::Conflict(format!("job {id} was already taken")));
                    }
                }
            }
        }
        Ok(d)
    }

    async fn put_group(
        &self,
        tx: &Transaction<'_>,
        key: GroupKey,
        expected: u64,
        row: GroupRow,
    ) -> Result<(), StateError> {
        let k = self.group_key(&key);
        let (key_id, sealed) = self.seal(
            GROUPS,
            &k,
            &Body {
                key: &key,
                row: &row,
            },
        )?;
        let open: Vec<i64> = row.handoffs.open.iter().map(|h| h.opened_ms).collect();
        let active: Option<i64> = row.timers.as_ref().map(|t| t.last_activity_ms);
        let n = if expected == 0 {
            let bot = self.bot_key(&key.bot_id);
            self.exec(
                tx,
                "INSERT INTO playbook_groups (key, bot, version, open_handoffs, active_ms, key_id, sealed)
                 VALUES ($1, $2, 1, $3, $4, $5, $6) ON CONFLICT (key) DO NOTHING",
                &[&k, &bot, &open, &active, &key_id, &sealed],
            )
            .await?
        } else {
            self.exec(
                tx,
                "UPDATE playbook_groups SET version = version + 1, open_handoffs = $3,
                        active_ms = $4, key_id = $5, sealed = $6
                 WHERE key = $1 AND version = $2",
                &[
                    &k,
                    &to_i64(expected, "version")?,
                    &open,
                    &active,
                    &key_id,
                    &sealed,
                ],
            )
            .await?
        };
        if n != 1 {
            let current = self.version_of(tx, GROUPS, &k).await?;
            return Err(StateError::Conflict(format!(
                "group {}/{} is at version {current}, not {expected}",
                key.bot_id, key.chat_id
            )));
        }
        Ok(())
    }

    async fn put_user(
        &self,
        tx: &Transaction<'_>,
        key: UserKey,
        expected: u64,
        row: UserRow,
    ) -> Result<(), StateError> {
        let k = self.user_key(&key);
        let (key_id, sealed) = self.seal(
            USERS,
            &k,
            &Body {
                key: &key,
                row: &row,
            },
        )?;
        let n = if expected == 0 {
            self.exec(
                tx,
                "INSERT INTO playbook_users (key, version, key_id, sealed) VALUES ($1, 1, $2, $3)
                 ON CONFLICT (key) DO NOTHING",
                &[&k, &key_id, &sealed],
            )
            .await?
        } else {
            self.exec(
                tx,
                "UPDATE playbook_users SET version = version + 1, key_id = $3, sealed = $4
                 WHERE key = $1 AND version = $2",
                &[&k, &to_i64(expected, "version")?, &key_id, &sealed],
            )
            .await?
        };
        if n != 1 {
            let current = self.version_of(tx, USERS, &k).await?;
            return Err(StateError::Conflict(format!(
                "user {}/{}/{} is at version {current}, not {expected}",
                key.bot_id, key.chat_id, key.user_id
            )));
        }
        Ok(())
    }

    /// Queues `item` unless its message was already queued (within the remembered ids).
    async fn add_review(
        &self,
        tx: &Transaction<'_>,
        item: ReviewItem,
    ) -> Result<Discarded, StateError> {
        let limits = self.limits.review_queue;
        if !item.message_id.is_empty() {
            let key = self.reviewed_key(&item);
            let n = self
                .exec(
                    tx,
                    "INSERT INTO playbook_reviewed (at_ms, key) VALUES ($1, $2)
                     ON CONFLICT (key) DO NOTHING",
                    &[&item.at_ms, &key],
                )
                .await?;
            if n == 0 {
                return Ok(Discarded::default()); // already queued
            }
            // Remembered within the queue's entries and age (not counted: nothing is lost).
            self.trim(tx, REVIEWED, &limits, Some(item.at_ms)).await?;
        }
        let (at, bytes) = (item.at_ms, item.bytes());
        let id = self.next_id(tx, "playbook_reviews_id").await?;
        let (key_id, sealed) = self.seal(REVIEWS, &id.to_string(), &item)?;
        self.insert_queued(tx, REVIEWS, id, at, bytes, &key_id, &sealed)
            .await?;
        self.trim(tx, REVIEWS, &limits, Some(at)).await
    }

    async fn schedule(&self, tx: &Transaction<'_>, job: Job) -> Result<Discarded, StateError> {
        let id = self.next_id(tx, "playbook_jobs_id").await?;
        let chat = self.group_key(&GroupKey::new(&job.bot_id, &job.chat_id));
        let (key_id, sealed) = self.seal(JOBS, &id.to_string(), &job)?;
        let bytes = i64::try_from(job.bytes()).unwrap_or(i64::MAX);
        self.exec(
            tx,
            "INSERT INTO playbook_jobs (id, at_ms, chat, bytes, key_id, sealed)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&id, &job.at_ms, &chat, &bytes, &key_id, &sealed],
        )
        .await?;
        // Jobs are due in the future: their age is checked at the sweep, not against the newest.
        self.trim(tx, JOBS, &self.limits.delayed_jobs, None).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_queued(
        &self,
        tx: &Transaction<'_>,
        table: &str,
        id: i64,
        at_ms: i64,
        bytes: usize,
        key_id: &str,
        sealed: &[u8],
    ) -> Result<(), StateError> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let sql = format!(
            "INSERT INTO {table} (id, at_ms, bytes, key_id, sealed) VALUES ($1, $2, $3, $4, $5)"
        );
        self.exec(tx, &sql, &[&id, &at_ms, &bytes, &key_id, &sealed])
            .await
            .map(drop)
    }

    /// Discards the oldest entries (lowest ids) of a queue table as `BoundedQueue::push` does:
    /// beyond `max_entries`, then beyond `max_bytes` (the longest newest run within it is
    /// kept; `playbook_reviewed` has no bytes), then from the front while older than
    /// `max_age_s` before `newest_ms` (None: no age check).
    async fn trim(
        &self,
        tx: &Transaction<'_>,
        table: &str,
        limits: &QueueLimits,
        newest_ms: Option<i64>,
    ) -> Result<Discarded, StateError> {
        let mut d = Discarded::default();
        let max_entries = i64::try_from(limits.max_entries).unwrap_or(i64::MAX);
        d.entries = self
            .exec(
                tx,
                &format!(
                    "DELETE FROM {table} WHERE id IN
                     (SELECT id FROM {table} ORDER BY id DESC OFFSET $1 FOR UPDATE SKIP LOCKED)"
                ),
                &[&max_entries],
            )
            .await?;
        if table != REVIEWED {
            let max_bytes = i64::try_from(limits.max_bytes).unwrap_or(i64::MAX);
            d.bytes = self
                .exec(
                    tx,
                    &format!(
                        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE id IN
                         (SELECT id FROM
                          (SELECT id, (SUM(bytes) OVER (ORDER BY id DESC))::BIGINT AS newer FROM {table}) s
                          WHERE newer > $1)
                         FOR UPDATE SKIP LOCKED)"
                    ),
                    &[&max_bytes],
                )
                .await?;
        }
        if let Some(now) = newest_ms {
            d.age = self.expire_front(tx, table, limits, now).await?;
        }
        Ok(d)
    }

    /// Discards the front of a queue table while its entries are older than `max_age_s`
    /// before `now_ms` (an older entry behind a newer one waits, as in memory).
    async fn expire_front(
        &self,
        tx: &Transaction<'_>,
        table: &str,
        limits: &QueueLimits,
        now_ms: i64,
    ) -> Result<u64, StateError> {
        let oldest_kept = now_ms.saturating_sub(max_age_ms(limits));
        self.exec(
            tx,
            &format!(
                "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE id < COALESCE(
                 (SELECT MIN(id) FROM {table} WHERE at_ms >= $1), 9223372036854775807)
                 FOR UPDATE SKIP LOCKED)"
            ),
            &[&oldest_kept],
        )
        .await
    }

    /// Runs `f` in one transaction (READ COMMITTED) and commits it.
    async fn in_tx<T>(
        &self,
        f: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.db(e))?;
        let out = f(&tx).await?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(out)
    }

    /// Runs `f` in a read-only snapshot (REPEATABLE READ): the rows read belong together.
    async fn in_snapshot<T>(
        &self,
        f: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.db(e))?;
        let out = f(&tx).await?;
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(out)
    }

    /// The rows a decision reads, in one statement: one round trip, and one snapshot without
    /// a transaction around it. The bot's open handoffs are counted over its groups that have
    /// any (a partial index holds just those).
    async fn view(&self, scope: &Scope) -> Result<StateView, StateError> {
        const VIEW_SQL: &str =
            "SELECT g.version, g.key_id, g.sealed, u.version, u.key_id, u.sealed,
                CASE WHEN $4::BIGINT IS NULL THEN 0::BIGINT ELSE (
                    SELECT COALESCE(SUM((SELECT COUNT(*) FROM unnest(o.open_handoffs) AS h(ms)
                                         WHERE h.ms > $4)), 0)::BIGINT
                    FROM playbook_groups o
                    WHERE o.bot = $3 AND o.key <> $1 AND cardinality(o.open_handoffs) > 0
                ) END
             FROM (VALUES (1)) AS one(x)
             LEFT JOIN playbook_groups g ON g.key = $1
             LEFT JOIN playbook_users u ON u.key = $2";
        let gk = self.group_key(&scope.group);
        let uk = scope
            .user_id
            .as_ref()
            .map(|u| self.user_key(&scope.group.user(u)));
        let bot = self.bot_key(&scope.group.bot_id);
        let after: Option<i64> = scope.open_handoffs_after_ms;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(VIEW_SQL)
            .await
            .map_err(|e| self.db(e))?;
        let r = client
            .query_one(&stmt, &[&gk, &uk, &bot, &after])
            .await
            .map_err(|e| self.db(e))?;
        let group = self.versioned_at::<GroupRow, GroupKey>(&r, 0, GROUPS, &gk)?;
        let user = match &uk {
            None => None,
            Some(uk) => Some(self.versioned_at::<UserRow, UserKey>(&r, 3, USERS, uk)?),
        };
        Ok(StateView {
            group,
            user,
            bot_open_handoffs: to_u64(r.get(6)) as usize,
        })
    }

    /// A versioned row from columns `at..at + 3` (version, key_id, sealed) of `r`: the default
    /// at version 0 when they are NULL (no such row).
    fn versioned_at<R: DeserializeOwned + Default, K: DeserializeOwned>(
        &self,
        r: &tokio_postgres::Row,
        at: usize,
        table: &str,
        key: &str,
    ) -> Result<Versioned<R>, StateError> {
        let Some(version) = r.get::<_, Option<i64>>(at) else {
            return Ok(Versioned::default());
        };
        let body: Body<K, R> = self.open(table, key, r.get(at + 1), r.get(at + 2))?;
        Ok(Versioned {
            version: to_u64(version),
            row: body.row,
        })
    }

    async fn due_view(&self, due_by: Option<i64>) -> Result<DueView, StateError> {
        self.in_snapshot(async |tx| {
            let rows = self
                .query(
                    tx,
                    "SELECT key, version, key_id, sealed FROM playbook_groups",
                    &[],
                )
                .await?;
            let mut groups = Vec::with_capacity(rows.len());
            for r in rows {
                let key: String = r.get(0);
                let body: Body<GroupKey, GroupRow> =
                    self.open(GROUPS, &key, r.get(2), r.get(3))?;
                let v = Versioned {
                    version: to_u64(r.get(1)),
                    row: body.row,
                };
                groups.push((body.key, v));
            }
            // Key order, as in memory (the stored keys are pseudonyms, in no useful order).
            groups.sort_by(|a, b| a.0.cmp(&b.0));
            let mut jobs = Vec::new();
            if let Some(t) = due_by {
                let rows = self
                    .query(
                        tx,
                        "SELECT id, key_id, sealed FROM playbook_jobs WHERE at_ms <= $1 ORDER BY id",
                        &[&t],
                    )
                    .await?;
                for r in rows {
                    let id: i64 = r.get(0);
                    let job: Job = self.open(JOBS, &id.to_string(), r.get(1), r.get(2))?;
                    jobs.push(QueuedJob {
                        id: to_u64(id),
                        job,
                    });
                }
            }
            let next = self
                .query(tx, "SELECT MIN(at_ms) FROM playbook_jobs", &[])
                .await?;
            Ok(DueView {
                groups,
                jobs,
                next_job_ms: next[0].get(0),
            })
        })
        .await
    }

    /// A queue's entries with their ids, oldest first; `drain` takes them out.
    async fn queued<T: DeserializeOwned>(
        &self,
        table: &'static str,
        drain: bool,
    ) -> Result<Vec<(u64, T)>, StateError> {
        let sql = if drain {
            format!("DELETE FROM {table} RETURNING id, key_id, sealed")
        } else {
            format!("SELECT id, key_id, sealed FROM {table} ORDER BY id")
        };
        let rows = self
            .in_tx(async |tx| self.query(tx, &sql, &[]).await)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.get(0);
            out.push((
                to_u64(id),
                self.open(table, &id.to_string(), r.get(1), r.get(2))?,
            ));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    async fn decide_review(
        &self,
        id: u64,
        verdict: ReviewVerdict,
    ) -> Result<Result<Decided, ReviewError>, StateError> {
        let Ok(sql_id) = i64::try_from(id) else {
            return Ok(Err(ReviewError::NotFound(id)));
        };
        let key = sql_id.to_string();
        self.in_tx(async |tx| {
            let rows = self
                .query(
                    tx,
                    "SELECT key_id, sealed FROM playbook_reviews WHERE id = $1 FOR UPDATE",
                    &[&sql_id],
                )
                .await?;
            let Some(r) = rows.first() else {
                return Ok(Err(ReviewError::NotFound(id)));
            };
            let mut item: ReviewItem = self.open(REVIEWS, &key, r.get(0), r.get(1))?;
            match &item.verdict {
                Some(v) if v.approved == verdict.approved && v.by == verdict.by => {
                    return Ok(Ok(Decided {
                        item,
                        changed: false,
                    }))
                }
                Some(v) => {
                    return Ok(Err(ReviewError::AlreadyDecided {
                        id,
                        approved: v.approved,
                        by: v.by.clone(),
                    }))
                }
                None => item.verdict = Some(verdict),
            }
            let (key_id, sealed) = self.seal(REVIEWS, &key, &item)?;
            self.exec(
                tx,
                "UPDATE playbook_reviews SET key_id = $2, sealed = $3 WHERE id = $1",
                &[&sql_id, &key_id, &sealed],
            )
            .await?;
            Ok(Ok(Decided {
                item,
                changed: true,
            }))
        })
        .await
    }

    /// See [`PlaybookState::sweep`] and `MemoryState`'s: expired jobs and the queues' age
    /// first (skipping rows a commit is deleting now), then idle profiles and old cooldowns, and idle
    /// chats without a queued job (row by row, version-checked: a row a decision changed
    /// meanwhile is left to the next sweep).
    async fn sweep(&self, now: i64, limits: &SweepLimits) -> Result<(), StateError> {
        let d = self
            .in_tx(async |tx| {
                let mut d = Discards::default();
                // Jobs too late to send go first, so their chats' timers may go with them.
                let oldest_job = now.saturating_sub(max_age_ms(&self.limits.delayed_jobs));
                d.delayed_jobs.age = self
                    .exec(
                        tx,
                        "DELETE FROM playbook_jobs WHERE id IN
                         (SELECT id FROM playbook_jobs WHERE at_ms < $1 FOR UPDATE SKIP LOCKED)",
                        &[&oldest_job],
                    )
                    .await?;
                let review = &self.limits.review_queue;
                d.review.age = self.expire_front(tx, REVIEWS, review, now).await?;
                d.dropped.age = self
                    .expire_front(tx, DROPPED, &self.limits.dropped_sends, now)
                    .await?;
                self.trim(tx, REVIEWED, review, Some(now)).await?;
                Ok(d)
            })
            .await?;
        // Landed: reported now, whatever becomes of the rows' part.
        self.report(&d);
        self.in_tx(async |tx| {
            let users = self
                .query(
                    tx,
                    "SELECT key, version, key_id, sealed FROM playbook_users",
                    &[],
                )
                .await?;
            for r in users {
                let key: String = r.get(0);
                let version: i64 = r.get(1);
                let mut body: Body<UserKey, UserRow> =
                    self.open(USERS, &key, r.get(2), r.get(3))?;
                let before = body.row.clone();
                body.row.cooldowns.sweep(now, limits.cooldown_max_age_ms);
                if now - body.row.profile.last_seen_ms >= limits.user_idle_ms {
                    body.row.profile = UserProfile::default();
                }
                if body.row == before {
                    continue;
                }
                if body.row == UserRow::default() {
                    self.exec(
                        tx,
                        "DELETE FROM playbook_users WHERE key = $1 AND version = $2",
                        &[&key, &version],
                    )
                    .await?;
                } else {
                    let (key_id, sealed) = self.seal(USERS, &key, &body)?;
                    self.exec(
                        tx,
                        "UPDATE playbook_users SET version = version + 1, key_id = $3, sealed = $4
                         WHERE key = $1 AND version = $2",
                        &[&key, &version, &key_id, &sealed],
                    )
                    .await?;
                }
            }
            let idle_since = now.saturating_sub(limits.chat_idle_ms);
            let groups = self
                .query(
                    tx,
                    "SELECT key, version, key_id, sealed FROM playbook_groups g
                     WHERE active_ms IS NOT NULL AND active_ms <= $1
                       AND NOT EXISTS (SELECT 1 FROM playbook_jobs j WHERE j.chat = g.key)",
                    &[&idle_since],
                )
                .await?;
            for r in groups {
                let key: String = r.get(0);
                let version: i64 = r.get(1);
                let mut body: Body<GroupKey, GroupRow> =
                    self.open(GROUPS, &key, r.get(2), r.get(3))?;
                body.row.timers = None;
                let (key_id, sealed) = self.seal(GROUPS, &key, &body)?;
                self.exec(
                    tx,
                    "UPDATE playbook_groups SET version = version + 1, active_ms = NULL,
                            key_id = $3, sealed = $4
                     WHERE key = $1 AND version = $2",
                    &[&key, &version, &key_id, &sealed],
                )
                .await?;
            }
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl PlaybookState for PgState {
    async fn load(&self, scope: &Scope) -> Result<StateView, StateError> {
        let scope = scope.clone();
        self.on_pool(|inner| async move { inner.view(&scope).await })
            .await
    }

    async fn load_due(&self, due_by: Option<i64>) -> Result<DueView, StateError> {
        self.on_pool(|inner| async move { inner.due_view(due_by).await })
            .await
    }

    async fn commit(&self, changes: Vec<StateChange>) -> Result<(), StateError> {
        // A decision that changes nothing costs no transaction:
        // BEGIN and COMMIT would be two round trips for an empty write.
        if changes.is_empty() {
            return Ok(());
        }
        let d = self
            .on_pool(
                |inner| async move { inner.in_tx(async |tx| inner.apply(tx, changes).await).await },
            )
            .await?;
        self.report(&d);
        Ok(())
    }

    // `transact` and `transact_due` are the trait's optimistic loop: load, decide, commit the
    // versioned writes, decide again on a conflict. No row lock is held while the decision
    // runs, so a slow decider never holds up another replica, and the versions make it as
    // safe as a locked read would.

    async fn review_queue(&self) -> Result<Vec<ReviewItem>, StateError> {
        Ok(self.reviews().await?.into_iter().map(|(_, r)| r).collect())
    }

    async fn drain_review_queue(&self) -> Result<Vec<ReviewItem>, StateError> {
        let items = self
            .on_pool(|inner| async move { inner.queued::<ReviewItem>(REVIEWS, true).await })
            .await?;
        Ok(items.into_iter().map(|(_, r)| r).collect())
    }

    async fn reviews(&self) -> Result<Vec<(u64, ReviewItem)>, StateError> {
        self.on_pool(|inner| async move { inner.queued(REVIEWS, false).await })
            .await
    }

    async fn decide_review(
        &self,
        id: u64,
        verdict: ReviewVerdict,
    ) -> Result<Result<Decided, ReviewError>, StateError> {
        self.on_pool(|inner| async move { inner.decide_review(id, verdict).await })
            .await
    }

    async fn dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError> {
        let items = self
            .on_pool(|inner| async move { inner.queued::<DroppedSend>(DROPPED, false).await })
            .await?;
        Ok(items.into_iter().map(|(_, d)| d).collect())
    }

    async fn drain_dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError> {
        let items = self
            .on_pool(|inner| async move { inner.queued::<DroppedSend>(DROPPED, true).await })
            .await?;
        Ok(items.into_iter().map(|(_, d)| d).collect())
    }

    async fn sweep(&self, now_ms: i64, limits: &SweepLimits) -> Result<(), StateError> {
        let limits = *limits;
        self.on_pool(|inner| async move { inner.sweep(now_ms, &limits).await })
            .await
    }
}

/// For the shared behaviour suite (`policy/state_suite.rs`, run in `tests/pg_state.rs`).
#[async_trait]
impl crate::policy::state_suite::Inspect for PgState {
    fn discarded(&self, queue: StateQueue) -> Discarded {
        PgState::discarded(self, queue)
    }
    async fn queue_size(&self, queue: StateQueue) -> Result<(usize, usize), StateError> {
        PgState::queue_size(self, queue).await
    }
    async fn reviewed_ids(&self) -> Result<usize, StateError> {
        PgState::reviewed_ids(self).await
    }
}
