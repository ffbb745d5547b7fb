//! Dynamic batching: concurrent requests are gathered into batches and run on a dedicated
//! compute thread, so the tokio runtime never blocks on inference and a burst of messages costs
//! a few forward passes instead of one each.
//!
//! A batch closes when it reaches `max_batch_size` texts or `max_batch_tokens` padded tokens,
//! or when `max_wait` has passed since its first request, or as soon as no other request is on
//! its way (announced by the front door but not yet queued): at low load a lone request runs at
//! once instead of waiting `max_wait` for company that is not coming, and under load batches
//! form by themselves from what queued during the previous forward pass. Within what is
//! waiting, requests of similar length are batched together (the serving encoder packs texts
//! without padding, but a model built for training pads). The queue is bounded: the front door
//! admits at most `max_in_flight` requests and turns the rest away.
//!
//! Under overload a queue of `max_in_flight` texts is seconds of work, and every admitted
//! request would wait that long. So the queue is also bounded in time, by `queue_budget_ms`:
//! a text is refused at the door when the work already queued (texts x the measured time per
//! text) would make it wait longer ([`Batcher::check_room`]), and a text that still waited
//! longer (the estimate lags a sudden slowdown) while others queue behind it is answered
//! `Overloaded` instead of computed.
//! Both are RESOURCE_EXHAUSTED for the client, who retries with backoff.
//!
//! Threads: the forward pass runs on the compute thread, its dense layers and attention also on
//! `model::spin_pool`, and the rest inside candle on rayon's pool (gemm) and candle's barrier
//! pool (large element-wise ops); all size themselves from `RAYON_NUM_THREADS`.
//! `compute_threads` sets it for the process ([`apply_thread_settings`], called before any
//! thread starts); see `benches/RESULTS.md` for the measured choice.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::model::classifier::{IntentBackend, Prediction};
use crate::model::encoder::Tokenized;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    /// Padded tokens per batch (batch size x longest sequence).
    pub max_batch_tokens: usize,
    /// How long the first request of a batch may wait for company.
    pub max_wait_us: u64,
    /// Threads one forward pass may use (the dense-layer pool, gemm's rayon pool and candle's
    /// barrier pool);
    /// 0 = candle's default (every core). `RAYON_NUM_THREADS` in the environment wins.
    pub compute_threads: usize,
    /// The longest a text may wait for its forward pass; beyond it the request is refused
    /// (RESOURCE_EXHAUSTED) rather than kept waiting. 0 = no limit (only `max_in_flight`).
    pub queue_budget_ms: u64,
}

/// The largest `queue_budget_ms` accepted: beyond a minute it bounds nothing useful.
pub const MAX_QUEUE_BUDGET_MS: u64 = 60_000;

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 4096,
            max_wait_us: 2000,
            compute_threads: 0,
            queue_budget_ms: 100,
        }
    }
}

/// Makes `compute_threads` the thread count of candle's pools by setting `RAYON_NUM_THREADS`,
/// which rayon's global pool, gemm's parallelism and candle's barrier pool all read (candle
/// offers no other knob). Call it before any other thread starts (setting the environment
/// while another thread reads it is a data race in libc). Returns the count in force, or None
/// for the default.
pub fn apply_thread_settings(cfg: &BatchConfig) -> Option<usize> {
    if let Some(n) = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return Some(n);
    }
    if cfg.compute_threads == 0 {
        return None;
    }
    std::env::set_var("RAYON_NUM_THREADS", cfg.compute_threads.to_string());
    Some(cfg.compute_threads)
}

/// What a caller gets back for one text.
#[derive(Debug, Clone)]
pub struct Inference {
    pub prediction: Prediction,
    /// The backend's labels and version at the time of the forward pass (a reload may swap the
    /// model between submission and answer; the answer is consistent with the model that ran).
    pub labels: Arc<Vec<String>>,
    pub model_version: Arc<str>,
    pub queue_us: u64,
    pub inference_us: u64,
    pub batch_size: usize,
}

struct Job {
    tokens: Tokenized,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Inference, InferenceError>>,
    /// Dropped by the compute thread when it takes the job off the queue: "on its way" then
    /// means exactly "announced and not yet received". (Dropped by the sender after the send,
    /// the count lagged, and the thread slept up to 200 µs for a job it already held.)
    announced: Option<Announced>,
}

/// The model currently served, with its labels cached as shared vectors.
pub struct LoadedModel {
    pub backend: Arc<dyn IntentBackend>,
    pub labels: Arc<Vec<String>>,
    pub version: Arc<str>,
}

impl LoadedModel {
    pub fn new(backend: Arc<dyn IntentBackend>) -> Self {
        let labels = Arc::new(backend.labels().to_vec());
        let version: Arc<str> = backend.version().into();
        Self {
            backend,
            labels,
            version,
        }
    }
}

/// Handle to the batching queue; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    model: Arc<ArcSwapOption<LoadedModel>>,
    /// Requests announced (being validated / tokenised) but not yet queued: worth waiting for.
    on_the_way: Arc<AtomicUsize>,
    load: Arc<QueueLoad>,
}

/// What is waiting for the compute thread, and how fast it works: the inputs of the queue
/// budget. Shared by the callers (who add texts) and the compute thread (which takes them and
/// measures).
#[derive(Debug, Default)]
struct QueueLoad {
    /// Texts submitted and not yet taken into a batch.
    queued: AtomicUsize,
    /// Forward-pass time per text of recent batches, nanoseconds (moving average; 0 = not
    /// measured yet).
    per_text_ns: AtomicU64,
    budget_ms: u64,
}

impl QueueLoad {
    /// Folds one batch into the per-text average (weight 1/4: a few batches follow a change).
    fn observe(&self, batch_ns: u64, texts: usize) {
        let per_text = batch_ns / texts.max(1) as u64;
        let old = self.per_text_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            per_text
        } else {
            (old * 3 + per_text) / 4
        };
        self.per_text_ns.store(new, Ordering::Relaxed);
    }
}

/// The wait, in milliseconds, for a text queued behind `queued` ones at `per_text_ns` each (its
/// own forward pass is not waiting: a lone text is always admitted).
fn expected_wait_ms(queued: usize, per_text_ns: u64) -> u64 {
    queued as u64 * per_text_ns / 1_000_000
}

/// A request that will reach the queue shortly; dropping it (queued, or given up) withdraws
/// the announcement.
pub struct Announced {
    on_the_way: Arc<AtomicUsize>,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.on_the_way.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Batcher {
    /// `queue_capacity` bounds the jobs waiting for the compute thread.
    pub fn start(
        model: Arc<ArcSwapOption<LoadedModel>>,
        cfg: BatchConfig,
        queue_capacity: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let worker_model = model.clone();
        let on_the_way = Arc::new(AtomicUsize::new(0));
        let worker_on_the_way = on_the_way.clone();
        let load = Arc::new(QueueLoad {
            budget_ms: cfg.queue_budget_ms,
            ..QueueLoad::default()
        });
        let worker_load = load.clone();
        std::thread::Builder::new()
            .name("intentd-compute".into())
            .spawn(move || compute_loop(rx, worker_model, worker_on_the_way, worker_load, cfg))
            .expect("spawn compute thread");
        Self {
            tx,
            model,
            on_the_way,
            load,
        }
    }

    /// Refuses a text when the work queued ahead of it would keep it waiting longer than the
    /// queue budget. Cheap: call it before tokenising.
    pub fn check_room(&self) -> Result<(), InferenceError> {
        let budget = self.load.budget_ms;
        if budget == 0 {
            return Ok(());
        }
        let queued = self.load.queued.load(Ordering::Relaxed);
        let wait = expected_wait_ms(queued, self.load.per_text_ns.load(Ordering::Relaxed));
        if wait > budget {
            return Err(InferenceError::Overloaded(format!(
                "the model is busy: {queued} texts are queued, about {wait} ms of work, over \
                 the queue budget of {budget} ms (batching.queue_budget_ms); retry with backoff"
            )));
        }
        Ok(())
    }

    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        self.model.load_full()
    }

    /// Announces a request that is about to be tokenised and queued, so a batch being gathered
    /// waits for it (up to `max_wait`). Pass the guard to [`Batcher::infer`].
    pub fn announce(&self) -> Announced {
        self.on_the_way.fetch_add(1, Ordering::AcqRel);
        Announced {
            on_the_way: self.on_the_way.clone(),
        }
    }

    /// Queues one tokenised text and waits for its prediction. Errors when no model is loaded
    /// or the queue is closed.
    pub async fn infer(
        &self,
        tokens: Tokenized,
        announced: Option<Announced>,
    ) -> Result<Inference, InferenceError> {
        self.submit(tokens, announced).await?.wait().await
    }

    /// Queues one tokenised text; the caller can do other work (the keyword layer) while the
    /// forward pass runs, then [`Ticket::wait`]s.
    pub async fn submit(
        &self,
        tokens: Tokenized,
        announced: Option<Announced>,
    ) -> Result<Ticket, InferenceError> {
        let (reply, rx) = oneshot::channel();
        self.load.queued.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .tx
            .send(Job {
                tokens,
                enqueued: Instant::now(),
                reply,
                announced,
            })
            .await;
        // A failed send drops the job, and its announcement with it.
        sent.map_err(|_| {
            self.load.queued.fetch_sub(1, Ordering::Relaxed);
            InferenceError::Failed("inference queue closed".into())
        })?;
        Ok(Ticket(rx))
    }
}

/// Why a queued text got no prediction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferenceError {
    /// The model was unloaded between the check and the batch: the caller serves from rules.
    #[error("model not loaded")]
    NotLoaded,
    /// Over the queue budget: refused, or waited too long to be worth computing.
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    Failed(String),
}

/// A queued inference; dropping it tells the compute thread the caller has gone.
pub struct Ticket(oneshot::Receiver<Result<Inference, InferenceError>>);

impl Ticket {
    pub async fn wait(self) -> Result<Inference, InferenceError> {
        self.0
            .await
            .map_err(|_| InferenceError::Failed("inference worker stopped".into()))?
    }
}

fn compute_loop(
    mut rx: mpsc::Receiver<Job>,
    model: Arc<ArcSwapOption<LoadedModel>>,
    on_the_way: Arc<AtomicUsize>,
    load: Arc<QueueLoad>,
    cfg: BatchConfig,
) {
    let max_wait = Duration::from_micros(cfg.max_wait_us);
    let mut pending: Vec<Job> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.blocking_recv() {
                Some(job) => pending.push(received(job)),
                None => return,
            }
        }
        // Gather company for the oldest job until the batch is full, its wait is over, or
        // nothing more is on its way.
        let deadline = pending[0].enqueued + max_wait;
        while pending.len() < cfg.max_batch_size {
            match rx.try_recv() {
                Ok(job) => pending.push(received(job)),
                Err(mpsc::error::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= deadline || on_the_way.load(Ordering::Acquire) == 0 {
                        break;
                    }
                    // Short sleeps: a condvar-free wait that costs little at these scales.
                    std::thread::sleep((deadline - now).min(Duration::from_micros(200)));
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        let batch = take_batch(&mut pending, cfg.max_batch_size, cfg.max_batch_tokens);
        load.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        // Late texts are shed only when others wait behind them: computing a late text delays
        // nobody when nothing is queued (a lone request on a starved CPU still gets answered).
        let batch = if pending.is_empty() && rx.is_empty() {
            batch
        } else {
            shed_late(batch, load.budget_ms, Instant::now())
        };
        if let Some((ns, n)) = run_batch(batch, &model) {
            load.observe(ns, n);
        }
        if pending.is_empty() && rx.is_empty() {
            // Nothing queued: the dense workers should not spin while the answers go out.
            crate::model::spin_pool::SpinPool::global().rest();
        }
    }
}

/// A job taken off the queue is no longer on its way.
fn received(mut job: Job) -> Job {
    job.announced = None;
    job
}

/// Picks the jobs for the next batch: the oldest job always goes, then the waiting jobs closest
/// to it in length, while the padded size stays within the limits.
fn take_batch(pending: &mut Vec<Job>, max_size: usize, max_tokens: usize) -> Vec<Job> {
    let anchor_len = pending[0].tokens.ids.len();
    let mut order: Vec<usize> = (1..pending.len()).collect();
    order.sort_by_key(|&i| pending[i].tokens.ids.len().abs_diff(anchor_len));
    let mut chosen = vec![0usize];
    let mut longest = anchor_len;
    for i in order {
        if chosen.len() >= max_size {
            break;
        }
        let l = longest.max(pending[i].tokens.ids.len());
        if l * (chosen.len() + 1) > max_tokens {
            continue;
        }
        longest = l;
        chosen.push(i);
    }
    chosen.sort_unstable();
    let mut batch = Vec::with_capacity(chosen.len());
    for &i in chosen.iter().rev() {
        batch.push(pending.swap_remove(i));
    }
    // swap_remove shuffled the rest; keep arrival order for fairness.
    pending.sort_by_key(|j| j.enqueued);
    batch
}

/// Answers the jobs that waited longer than the budget (0 = none) with `Overloaded` and
/// returns the rest: a forward pass for them would only make everyone behind them late too.
fn shed_late(batch: Vec<Job>, budget_ms: u64, now: Instant) -> Vec<Job> {
    if budget_ms == 0 {
        return batch;
    }
    let budget = Duration::from_millis(budget_ms);
    let (late, keep): (Vec<Job>, Vec<Job>) = batch
        .into_iter()
        .partition(|j| now.saturating_duration_since(j.enqueued) > budget);
    for job in late {
        let waited = now.saturating_duration_since(job.enqueued).as_millis();
        let _ = job.reply.send(Err(InferenceError::Overloaded(format!(
            "the model is busy: this text waited {waited} ms for its forward pass, over the \
             queue budget of {budget_ms} ms (batching.queue_budget_ms); retry with backoff"
        ))));
    }
    keep
}

/// Runs one forward pass and answers its jobs; returns its duration (ns) and text count when
/// it ran.
fn run_batch(batch: Vec<Job>, model: &ArcSwapOption<LoadedModel>) -> Option<(u64, usize)> {
    let Some(m) = model.load_full() else {
        for job in batch {
            let _ = job.reply.send(Err(InferenceError::NotLoaded));
        }
        return None;
    };
    // Callers that gave up (deadline, disconnect) need no forward pass.
    let batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if batch.is_empty() {
        return None;
    }
    let started = Instant::now();
    let pool = crate::model::spin_pool::SpinPool::global();
    pool.wake();
    let refs: Vec<&Tokenized> = batch.iter().map(|j| &j.tokens).collect();
    // A panic in a kernel must fail this batch, not kill the compute thread (which would turn
    // every later request into an error).
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.backend.predict(&refs)))
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "the model panicked during the forward pass"
                ))
            });
    let elapsed = started.elapsed();
    let inference_us = elapsed.as_micros() as u64;
    let n = batch.len();
    let ran = result.is_ok().then_some((elapsed.as_nanos() as u64, n));
    match result {
        Ok(preds) => {
            for (job, prediction) in batch.into_iter().zip(preds) {
                let _ = job.reply.send(Ok(Inference {
                    prediction,
                    labels: m.labels.clone(),
                    model_version: m.version.clone(),
                    queue_us: started.duration_since(job.enqueued).as_micros() as u64,
                    inference_us,
                    batch_size: n,
                }));
            }
        }
        Err(e) => {
            let msg = format!("inference failed: {e:#}");
            tracing::error!(error = %msg, batch = n, "forward pass failed");
            for job in batch {
                let _ = job.reply.send(Err(InferenceError::Failed(msg.clone())));
            }
        }
    }
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(len: usize) -> (Job, oneshot::Receiver<Result<Inference, InferenceError>>) {
        let (tx, rx) = oneshot::channel();
        (
            Job {
                tokens: Tokenized {
                    ids: vec![1; len],
                    truncated: false,
                    lexical: Vec::new(),
                    members: Vec::new(),
                },
                enqueued: Instant::now(),
                reply: tx,
                announced: None,
            },
            rx,
        )
    }

    #[test]
    fn batches_group_similar_lengths_within_token_budget() {
        let mut keep = Vec::new();
        let mut pending = Vec::new();
        for len in [10, 50, 11, 12, 49, 9] {
            let (j, rx) = job(len);
            pending.push(j);
            keep.push(rx);
        }
        // Budget 40 tokens, anchored on the oldest (10): 11 and 9 are equally close (the
        // earlier arrival first), padded to 11 x 3 = 33 they fit; adding 12 -> 12 x 4 = 48
        // does not, and 50 / 49 are far away.
        let batch = take_batch(&mut pending, 8, 40);
        let mut lens: Vec<usize> = batch.iter().map(|j| j.tokens.ids.len()).collect();
        lens.sort();
        assert_eq!(lens, vec![9, 10, 11]);
        let mut left: Vec<usize> = pending.iter().map(|j| j.tokens.ids.len()).collect();
        left.sort();
        assert_eq!(left, vec![12, 49, 50]);
    }

    #[test]
    fn the_oldest_job_always_goes_even_if_over_budget() {
        let (j, _rx) = job(500);
        let mut pending = vec![j];
        let batch = take_batch(&mut pending, 8, 100);
        assert_eq!(batch.len(), 1);
        assert!(pending.is_empty());
    }

    // Issue 12 (overload): before the queue budget, a text that had waited seconds behind an
    // overloaded queue still got its forward pass and a very late answer.
    #[test]
    fn texts_that_waited_past_the_budget_are_refused_not_computed() {
        let now = Instant::now();
        let (mut late, late_rx) = job(5);
        late.enqueued = now - Duration::from_millis(150);
        let (mut fresh, mut fresh_rx) = job(5);
        fresh.enqueued = now - Duration::from_millis(20);
        let kept = shed_late(vec![late, fresh], 100, now);
        assert_eq!(kept.len(), 1);
        let mut late_rx = late_rx;
        match late_rx.try_recv() {
            Ok(Err(InferenceError::Overloaded(m))) => {
                assert!(m.contains("waited 150 ms"), "{m}");
                assert!(m.contains("queue budget of 100 ms"), "{m}");
            }
            other => panic!("expected Overloaded, got {other:?}"),
        }
        // The fresh one is still waiting for its forward pass.
        assert!(fresh_rx.try_recv().is_err());
        // Budget 0: nobody is shed, however long they waited.
        let (mut old, _rx) = job(5);
        old.enqueued = now - Duration::from_secs(10);
        assert_eq!(shed_late(vec![old], 0, now).len(), 1);
    }

    #[test]
    fn the_door_refuses_what_the_queue_cannot_serve_within_budget() {
        let model = Arc::new(ArcSwapOption::empty());
        let cfg = BatchConfig {
            queue_budget_ms: 100,
            ..BatchConfig::default()
        };
        let b = Batcher::start(model, cfg, 4);
        // Nothing measured yet: everything is admitted.
        b.load.queued.store(500, Ordering::Relaxed);
        assert!(b.check_room().is_ok());
        // 2 ms per text: 50 queued = 100 ms fits, 51 = 102 ms does not.
        b.load.per_text_ns.store(2_000_000, Ordering::Relaxed);
        b.load.queued.store(50, Ordering::Relaxed);
        assert!(b.check_room().is_ok());
        b.load.queued.store(51, Ordering::Relaxed);
        let e = b.check_room().unwrap_err();
        assert!(
            matches!(&e, InferenceError::Overloaded(m) if m.contains("51 texts are queued") && m.contains("102 ms") && m.contains("batching.queue_budget_ms")),
            "{e:?}"
        );
        // An empty queue admits a text however slow the model is.
        b.load.per_text_ns.store(10_000_000_000, Ordering::Relaxed);
        b.load.queued.store(0, Ordering::Relaxed);
        assert!(b.check_room().is_ok());
    }

    #[test]
    fn per_text_time_follows_recent_batches() {
        let load = QueueLoad::default();
        load.observe(32_000_000, 32); // 1 ms per text
        assert_eq!(load.per_text_ns.load(Ordering::Relaxed), 1_000_000);
        load.observe(5_000_000, 1); // a lone text: 5 ms
        assert_eq!(load.per_text_ns.load(Ordering::Relaxed), 2_000_000);
        assert_eq!(expected_wait_ms(100, 2_000_000), 200);
    }

    #[tokio::test]
    async fn no_model_is_an_error_not_a_hang() {
        let model = Arc::new(ArcSwapOption::empty());
        let b = Batcher::start(model, BatchConfig::default(), 4);
        let err = b
            .infer(
                Tokenized {
                    ids: vec![101, 102],
                    truncated: false,
                    lexical: Vec::new(),
                    members: Vec::new(),
                },
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(err, InferenceError::NotLoaded);
    }
}
