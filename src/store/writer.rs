//! The write queue: callers never touch SQLite on their own thread.
//!
//! `submit` puts a record on a bounded channel and returns at once with a [`CommitTicket`]; ONE
//! dedicated thread drains the channel, commits whatever has accumulated (up to `batch_max`) in
//! one transaction (group commit: one fsync-free WAL append for many records), then resolves
//! the tickets. A caller that awaits its ticket before acknowledging knows the record survives
//! a kill -9. A full queue is refused immediately (`QueueFull`), counted and logged, so a slow
//! disk turns into back-pressure the server can see instead of unbounded memory.
//!
//! Each batch also carries the state holders' pending writes (`crate::durable`), taken after
//! the batch's records were received: a decision notes its state change before it submits its
//! record, so that change is in the same commit or an earlier one. Holders that change with no
//! record behind them (a sweep, a drained queue) are written within [`IDLE_FLUSH`], and at
//! shutdown after the last record.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;

use super::health::StoreHealth;
use super::{Record, Store, StoreError};
use crate::durable::{Holders, RowWrite};
use crate::metrics::Metrics;

/// How soon state changed without a record (and without a flush) is committed.
pub const IDLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(250);

/// Why a record was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("store write queue is full ({capacity} records waiting); the record was not stored")]
    QueueFull { capacity: usize },
    #[error("store is shutting down; the record was not stored")]
    Closed,
}

/// Resolves once the record's transaction has committed (or failed). Await it in async code,
/// or call [`CommitTicket::wait`] from a plain thread.
#[derive(Debug)]
pub struct CommitTicket {
    rx: oneshot::Receiver<Result<(), StoreError>>,
}

impl CommitTicket {
    /// Blocks the current thread until the commit. Must not be called on an async runtime
    /// thread (tokio panics there); use `.await` instead.
    pub fn wait(self) -> Result<(), StoreError> {
        self.rx
            .blocking_recv()
            .unwrap_or(Err(StoreError::WriterGone))
    }
}

impl Future for CommitTicket {
    type Output = Result<(), StoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::WriterGone)))
    }
}

struct Job {
    record: Record,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Bounded queue + the single writer thread.
pub struct WriteQueue {
    tx: RwLock<Option<SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue")
            .field("capacity", &self.capacity)
            .field("depth", &self.depth())
            .finish()
    }
}

impl WriteQueue {
    /// Starts the writer thread. `capacity` and `batch_max` are at least 1.
    pub fn start(
        store: Arc<dyn Store>,
        capacity: usize,
        batch_max: usize,
        metrics: Arc<Metrics>,
        health: Arc<StoreHealth>,
        holders: Arc<Holders>,
    ) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = sync_channel(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let thread = {
            let depth = depth.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("intentd-store-writer".into())
                .spawn(move || {
                    writer_loop(store, rx, batch_max.max(1), depth, metrics, health, holders)
                })
                .expect("spawn store writer thread")
        };
        Self {
            tx: RwLock::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            depth,
            capacity,
            metrics,
        }
    }

    /// Queues a record without blocking.
    pub fn submit(&self, record: Record) -> Result<CommitTicket, SubmitError> {
        let guard = self.tx.read();
        let tx = guard.as_ref().ok_or(SubmitError::Closed)?;
        let (done, rx) = oneshot::channel();
        // Count before sending so the writer's decrement can never run first and underflow.
        // The gauge moves by increments too: a `set` from here could land after the writer's
        // and leave a stale depth on an idle queue.
        self.depth.fetch_add(1, Ordering::SeqCst);
        self.metrics.write_queue_depth.inc();
        match tx.try_send(Job { record, done }) {
            Ok(()) => Ok(CommitTicket { rx }),
            Err(TrySendError::Full(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                self.metrics.write_queue_depth.dec();
                self.metrics.write_queue_full.inc();
                tracing::warn!(
                    capacity = self.capacity,
                    "store write queue full; record refused"
                );
                Err(SubmitError::QueueFull {
                    capacity: self.capacity,
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                self.metrics.write_queue_depth.dec();
                Err(SubmitError::Closed)
            }
        }
    }

    /// Records queued and not yet taken by the writer.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Refuses new records, lets the writer commit everything already queued, joins it.
    /// Idempotent.
    pub fn shutdown(&self) {
        drop(self.tx.write().take());
        if let Some(handle) = self.thread.lock().take() {
            if handle.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

impl Drop for WriteQueue {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn writer_loop(
    store: Arc<dyn Store>,
    rx: Receiver<Job>,
    batch_max: usize,
    depth: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    health: Arc<StoreHealth>,
    holders: Arc<Holders>,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(batch_max);
    loop {
        // Disconnected only when every sender is gone AND the channel is empty: a full drain.
        let first = match rx.recv_timeout(IDLE_FLUSH) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                if holders.has_writes() {
                    commit_state(&*store, &holders, &metrics, &health);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                commit_state(&*store, &holders, &metrics, &health);
                return;
            }
        };
        jobs.push(first);
        while jobs.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        depth.fetch_sub(jobs.len(), Ordering::SeqCst);
        metrics.write_queue_depth.dec_by(jobs.len() as i64);

        let mut records: Vec<Record> = jobs.iter().map(|j| j.record.clone()).collect();
        // After the records were received: see the module doc.
        let state = holders.take();
        records.extend(state_records(&state));
        match timed_write(&*store, &records, jobs.len(), &state, &metrics) {
            Ok(()) => {
                health.commit_succeeded();
                if let Some(bytes) = store.memory_bytes() {
                    metrics.store_memory.set(bytes);
                }
                for job in jobs.drain(..) {
                    let _ = job.done.send(Ok(()));
                }
            }
            Err(e) => {
                stop_if_fenced(&e);
                // One bad record must not sink its neighbours: retry one by one.
                metrics.store_errors.inc();
                tracing::error!(error = %e, batch = jobs.len(), "store batch commit failed; retrying records singly");
                let mut any_ok = false;
                // The last failure that was the store's, not a record's (`Invalid`).
                let mut store_fault = None;
                let mut results = Vec::with_capacity(jobs.len());
                for job in jobs.drain(..) {
                    let result = store.write_batch(std::slice::from_ref(&job.record));
                    match &result {
                        Ok(()) => any_ok = true,
                        Err(e) => {
                            metrics.store_errors.inc();
                            tracing::error!(error = %e, "store record commit failed");
                            if !matches!(e, StoreError::Invalid(_)) {
                                store_fault = Some(e.to_string());
                            }
                        }
                    }
                    results.push((job, result));
                }
                // The state goes alone; if even that fails it waits for the next commit.
                let mut state_failed = false;
                for rec in state_records(&state) {
                    if let Err(e) = store.write_batch(std::slice::from_ref(&rec)) {
                        metrics.store_errors.inc();
                        tracing::error!(error = %e, "playbook state commit failed; kept for the next commit");
                        store_fault = Some(e.to_string());
                        state_failed = true;
                    }
                }
                if state_failed {
                    holders.retake(state);
                }
                // A bad record among good ones is that record's problem, not the store's.
                // (Health first: a caller woken by its ticket sees the health of its commit.)
                match (any_ok, store_fault) {
                    (true, _) => health.commit_succeeded(),
                    (false, Some(fault)) => health.commit_failed(&fault),
                    (false, None) => {}
                }
                for (job, result) in results {
                    let _ = job.done.send(result);
                }
            }
        }
    }
}

/// One group commit (`logged` log records, then the holders' `state` as records), counted in
/// the commit metrics.
fn timed_write(
    store: &dyn Store,
    records: &[Record],
    logged: usize,
    state: &[(usize, Vec<RowWrite>)],
    metrics: &Metrics,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let committed = store.write_batch(records);
    metrics
        .store_commit
        .observe(started.elapsed().as_secs_f64());
    let state_rows: usize = state.iter().map(|(_, w)| w.len()).sum();
    metrics
        .store_commit_records
        .observe((logged + state_rows) as f64);
    committed
}

/// The holders' writes as records (one per holder, each applied in its order).
fn state_records(state: &[(usize, Vec<RowWrite>)]) -> Vec<Record> {
    state
        .iter()
        .map(|(_, writes)| Record::State(writes.clone()))
        .collect()
}

/// Commits the holders' pending writes with no record behind them (idle or shutdown).
/// Another process took the leader lease (store/pg_lease.rs): this one must not answer
/// anything more, not even unrecorded, so it exits before the waiting requests hear back
/// (their clients retry on the new leader).
fn stop_if_fenced(e: &StoreError) {
    if let StoreError::Fenced(why) = e {
        tracing::error!(reason = %why, "fenced by a new leader; exiting");
        eprintln!("intentd: fenced by a new leader ({why}); exiting");
        std::process::exit(super::pg_lease::LEASE_LOST_EXIT);
    }
}

fn commit_state(store: &dyn Store, holders: &Holders, metrics: &Metrics, health: &StoreHealth) {
    let state = holders.take();
    if state.is_empty() {
        return;
    }
    match timed_write(store, &state_records(&state), 0, &state, metrics) {
        Ok(()) => health.commit_succeeded(),
        Err(e) => {
            stop_if_fenced(&e);
            metrics.store_errors.inc();
            tracing::error!(error = %e, "playbook state commit failed; kept for the next commit");
            health.commit_failed(&e.to_string());
            holders.retake(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::audit::{PurgeCutoffs, PurgeReport};
    use super::super::test_support::*;
    use super::super::{
        AuditRecord, Counts, FeedbackKind, GroupBy, RowCounts, SqliteStore, StatsFilter,
        StoredConversation, VariantCounts,
    };
    use super::*;
    use std::sync::mpsc;

    /// Wraps the real SQLite store: records batch sizes and can hold the writer inside a
    /// commit until the test releases it, to make batching deterministic.
    struct Gated {
        inner: SqliteStore,
        sizes: Mutex<Vec<usize>>,
        entered: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
        gate_first: bool,
        fail_message: Option<String>,
        /// Every commit fails while set (a broken disk).
        fail_all: std::sync::atomic::AtomicBool,
    }

    impl Store for Gated {
        fn write_batch(&self, records: &[Record]) -> Result<(), StoreError> {
            let first = { self.sizes.lock().is_empty() };
            self.sizes.lock().push(records.len());
            if first && self.gate_first {
                self.entered.lock().send(()).unwrap();
                self.release.lock().recv().unwrap();
            }
            if self.fail_all.load(Ordering::SeqCst) {
                return Err(StoreError::Db("disk I/O error".into()));
            }
            if let Some(bad) = &self.fail_message {
                if records
                    .iter()
                    .any(|r| matches!(r, Record::Feedback(f) if &f.message_id == bad))
                {
                    return Err(StoreError::Invalid(format!("refusing {bad}")));
                }
            }
            self.inner.write_batch(records)
        }
        fn counts(
            &self,
            f: &StatsFilter,
            by: GroupBy,
        ) -> Result<Vec<(String, Counts)>, StoreError> {
            self.inner.counts(f, by)
        }
        fn counts_by_step(
            &self,
            f: &StatsFilter,
            step_ms: i64,
        ) -> Result<Vec<(u64, Counts)>, StoreError> {
            self.inner.counts_by_step(f, step_ms)
        }
        fn variant_counts(
            &self,
            f: &StatsFilter,
            e: &str,
        ) -> Result<Vec<VariantCounts>, StoreError> {
            self.inner.variant_counts(f, e)
        }
        fn conversations(
            &self,
            a: i64,
            b: i64,
            c: i64,
            d: usize,
        ) -> Result<Vec<StoredConversation>, StoreError> {
            self.inner.conversations(a, b, c, d)
        }
        fn audit_rows(&self, a: i64, b: i64) -> Result<Vec<AuditRecord>, StoreError> {
            self.inner.audit_rows(a, b)
        }
        fn purge(&self, c: &PurgeCutoffs) -> Result<PurgeReport, StoreError> {
            self.inner.purge(c)
        }
        fn row_counts(&self) -> Result<RowCounts, StoreError> {
            self.inner.row_counts()
        }
        #[allow(clippy::type_complexity)]
        fn answer_keys(
            &self,
            since_ms: i64,
            limit: usize,
        ) -> Result<(Vec<(String, crate::store::AnswerKind, String, i64)>, bool), StoreError>
        {
            self.inner.answer_keys(since_ms, limit)
        }
        fn answer(
            &self,
            bot_id: &str,
            kind: crate::store::AnswerKind,
            key: &str,
        ) -> Result<Option<crate::store::AnswerRow>, StoreError> {
            self.inner.answer(bot_id, kind, key)
        }
        fn has_message(&self, bot_id: &str, message_id: &str) -> Result<bool, StoreError> {
            self.inner.has_message(bot_id, message_id)
        }
        fn unhelpful(
            &self,
            from_ms: i64,
            to_ms: i64,
            limit: usize,
        ) -> Result<Vec<(String, String)>, StoreError> {
            self.inner.unhelpful(from_ms, to_ms, limit)
        }
        fn state_rows(&self) -> Result<Vec<crate::durable::StoredRow>, StoreError> {
            self.inner.state_rows()
        }
        fn stored_message_id(&self, bot_id: &str, message_id: &str) -> String {
            self.inner.stored_message_id(bot_id, message_id)
        }
    }

    struct Harness {
        store: Arc<Gated>,
        entered: mpsc::Receiver<()>,
        release: mpsc::Sender<()>,
        _dir: tempfile::TempDir,
    }

    fn harness(gate_first: bool, fail_message: Option<&str>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let store = Arc::new(Gated {
            inner: SqliteStore::open(&dir.path().join("w.db"), keyring(&key_b64(5))).unwrap(),
            sizes: Mutex::new(Vec::new()),
            entered: Mutex::new(entered_tx),
            release: Mutex::new(release_rx),
            gate_first,
            fail_message: fail_message.map(String::from),
            fail_all: std::sync::atomic::AtomicBool::new(false),
        });
        Harness {
            store,
            entered,
            release,
            _dir: dir,
        }
    }

    fn start_queue(
        store: Arc<Gated>,
        capacity: usize,
        batch_max: usize,
        metrics: Arc<Metrics>,
    ) -> WriteQueue {
        let health = Arc::new(StoreHealth::new(3, metrics.clone()));
        WriteQueue::start(
            store,
            capacity,
            batch_max,
            metrics,
            health,
            Default::default(),
        )
    }

    // Issue 12.3 (failed on main: nothing noticed sustained failures; the server stayed
    // SERVING answering recorded=false forever).
    #[test]
    fn failing_commits_in_a_row_make_the_store_unhealthy_until_one_succeeds() {
        let h = harness(false, Some("bad"));
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(StoreHealth::new(3, metrics.clone()));
        let q = WriteQueue::start(
            h.store.clone(),
            100,
            512,
            metrics.clone(),
            health.clone(),
            Default::default(),
        );
        // One bad record fails alone and says nothing about the store.
        for _ in 0..5 {
            let bad = Record::Feedback(feedback("b", "bad", FeedbackKind::Clicked, 1));
            assert!(q.submit(bad).unwrap().wait().is_err());
        }
        assert!(health.is_healthy());
        h.store.fail_all.store(true, Ordering::SeqCst);
        for i in 0..2 {
            assert!(q.submit(conv(i)).unwrap().wait().is_err());
        }
        assert!(health.is_healthy(), "two failures are not yet sustained");
        assert!(q.submit(conv(2)).unwrap().wait().is_err());
        assert!(!health.is_healthy());
        assert_eq!(metrics.store_healthy.get(), 0);
        assert!(health.last_error().contains("disk I/O error"));
        h.store.fail_all.store(false, Ordering::SeqCst);
        q.submit(conv(3)).unwrap().wait().unwrap();
        assert!(health.is_healthy());
        assert_eq!(metrics.store_healthy.get(), 1);
        q.shutdown();
    }

    fn conv(i: usize) -> Record {
        Record::Conversation(conversation("b", "g", &format!("m{i}"), i as i64))
    }

    #[test]
    fn records_arriving_during_a_commit_share_the_next_transaction() {
        let h = harness(true, None);
        let q = start_queue(h.store.clone(), 1_000, 30, Arc::new(Metrics::new()));
        let t0 = q.submit(conv(0)).unwrap();
        h.entered.recv().unwrap(); // the writer is inside the first commit
        let tickets: Vec<_> = (1..=100).map(|i| q.submit(conv(i)).unwrap()).collect();
        assert_eq!(q.depth(), 100);
        h.release.send(()).unwrap();
        t0.wait().unwrap();
        for t in tickets {
            t.wait().unwrap();
        }
        assert_eq!(*h.store.sizes.lock(), vec![1, 30, 30, 30, 10]);
        assert_eq!(q.depth(), 0);
        assert_eq!(h.store.row_counts().unwrap().conversations, 101);
    }

    #[test]
    fn full_queue_refuses_at_once_counts_it_and_loses_nothing_acknowledged() {
        let h = harness(true, None);
        let metrics = Arc::new(Metrics::new());
        let q = start_queue(h.store.clone(), 4, 512, metrics.clone());
        let t0 = q.submit(conv(0)).unwrap();
        h.entered.recv().unwrap();
        let queued: Vec<_> = (1..=4).map(|i| q.submit(conv(i)).unwrap()).collect();
        assert_eq!(
            q.submit(conv(5)).unwrap_err(),
            SubmitError::QueueFull { capacity: 4 }
        );
        assert_eq!(
            q.submit(conv(6)).unwrap_err(),
            SubmitError::QueueFull { capacity: 4 }
        );
        assert_eq!(metrics.write_queue_full.get(), 2);
        assert_eq!(metrics.write_queue_depth.get(), 4);
        assert_eq!(q.depth(), 4);
        h.release.send(()).unwrap();
        t0.wait().unwrap();
        for t in queued {
            t.wait().unwrap();
        }
        assert_eq!(h.store.row_counts().unwrap().conversations, 5);
        assert_eq!(metrics.write_queue_depth.get(), 0);
        // Room again.
        q.submit(conv(7)).unwrap().wait().unwrap();
    }

    #[test]
    fn shutdown_drains_everything_then_refuses() {
        let h = harness(true, None);
        let q = start_queue(h.store.clone(), 1_000, 512, Arc::new(Metrics::new()));
        let t0 = q.submit(conv(0)).unwrap();
        h.entered.recv().unwrap();
        let tickets: Vec<_> = (1..50).map(|i| q.submit(conv(i)).unwrap()).collect();
        let releaser = {
            let release = h.release.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                release.send(()).unwrap();
            })
        };
        q.shutdown(); // blocks until the writer has committed all 50
        releaser.join().unwrap();
        assert_eq!(h.store.row_counts().unwrap().conversations, 50);
        t0.wait().unwrap();
        for t in tickets {
            t.wait().unwrap();
        }
        assert_eq!(q.submit(conv(99)).unwrap_err(), SubmitError::Closed);
        q.shutdown();
    }

    #[test]
    fn one_bad_record_fails_alone() {
        let h = harness(false, Some("bad"));
        let metrics = Arc::new(Metrics::new());
        let q = start_queue(h.store.clone(), 100, 512, metrics.clone());
        // Whether the three land in one batch or not, only the bad one may fail.
        let good1 = q.submit(conv(1)).unwrap();
        let bad = q
            .submit(Record::Feedback(feedback(
                "b",
                "bad",
                FeedbackKind::Clicked,
                1,
            )))
            .unwrap();
        let good2 = q.submit(conv(2)).unwrap();
        good1.wait().unwrap();
        assert!(matches!(bad.wait(), Err(StoreError::Invalid(m)) if m.contains("bad")));
        good2.wait().unwrap();
        assert_eq!(h.store.row_counts().unwrap().conversations, 2);
        assert!(metrics.store_errors.get() >= 1);
    }

    #[tokio::test]
    async fn tickets_are_awaitable() {
        let h = harness(false, None);
        let q = start_queue(h.store.clone(), 10, 10, Arc::new(Metrics::new()));
        q.submit(conv(1)).unwrap().await.unwrap();
        assert_eq!(h.store.row_counts().unwrap().conversations, 1);
        // The writer shutdown joins a thread: do it off the runtime.
        tokio::task::spawn_blocking(move || q.shutdown())
            .await
            .unwrap();
    }
}
