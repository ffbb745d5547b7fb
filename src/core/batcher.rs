//! Dynamic batching: concurrent requests are gathered into batches and run on a dedicated
//! compute thread, so the tokio runtime never blocks on inference and a burst of messages costs
//! a few forward passes instead of one each.
//!
//! A batch closes when it reaches `max_batch_size` texts or `max_batch_tokens` padded tokens,
//! or when `max_wait` has passed since its first request. Within what is waiting, requests of
//! similar length are batched together (less padding). The queue is bounded: the front door
//! admits at most `max_in_flight` requests and turns the rest away at once.

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
    /// Threads candle may use for one forward pass (0 = all cores).
    pub compute_threads: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_batch_size: 32, max_batch_tokens: 4096, max_wait_us: 2000, compute_threads: 0 }
    }
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
    reply: oneshot::Sender<Result<Inference, String>>,
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
        Self { backend, labels, version }
    }
}

/// Handle to the batching queue; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    model: Arc<ArcSwapOption<LoadedModel>>,
}

impl Batcher {
    /// `queue_capacity` bounds the jobs waiting for the compute thread.
    pub fn start(model: Arc<ArcSwapOption<LoadedModel>>, cfg: BatchConfig, queue_capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let worker_model = model.clone();
        std::thread::Builder::new()
            .name("intentd-compute".into())
            .spawn(move || compute_loop(rx, worker_model, cfg))
            .expect("spawn compute thread");
        Self { tx, model }
    }

    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        self.model.load_full()
    }

    /// Queues one tokenised text and waits for its prediction. Errors when no model is loaded
    /// or the queue is closed.
    pub async fn infer(&self, tokens: Tokenized) -> Result<Inference, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { tokens, enqueued: Instant::now(), reply })
            .await
            .map_err(|_| "inference queue closed".to_string())?;
        rx.await.map_err(|_| "inference worker stopped".to_string())?
    }
}

fn compute_loop(mut rx: mpsc::Receiver<Job>, model: Arc<ArcSwapOption<LoadedModel>>, cfg: BatchConfig) {
    let max_wait = Duration::from_micros(cfg.max_wait_us);
    let mut pending: Vec<Job> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.blocking_recv() {
                Some(job) => pending.push(job),
                None => return,
            }
        }
        // Gather company for the oldest job until the batch is full or its wait is over.
        let deadline = pending[0].enqueued + max_wait;
        while pending.len() < cfg.max_batch_size {
            match rx.try_recv() {
                Ok(job) => pending.push(job),
                Err(mpsc::error::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    // Short sleeps: a condvar-free wait that costs little at these scales.
                    std::thread::sleep((deadline - now).min(Duration::from_micros(200)));
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        let batch = take_batch(&mut pending, cfg.max_batch_size, cfg.max_batch_tokens);
        run_batch(batch, &model);
    }
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

fn run_batch(batch: Vec<Job>, model: &ArcSwapOption<LoadedModel>) {
    let Some(m) = model.load_full() else {
        for job in batch {
            let _ = job.reply.send(Err("model not loaded".into()));
        }
        return;
    };
    // Callers that gave up (deadline, disconnect) need no forward pass.
    let batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let started = Instant::now();
    let refs: Vec<&Tokenized> = batch.iter().map(|j| &j.tokens).collect();
    // A panic in a kernel must fail this batch, not kill the compute thread (which would turn
    // every later request into an error).
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.backend.predict(&refs)))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the model panicked during the forward pass")));
    let inference_us = started.elapsed().as_micros() as u64;
    let n = batch.len();
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
                let _ = job.reply.send(Err(msg.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(len: usize) -> (Job, oneshot::Receiver<Result<Inference, String>>) {
        let (tx, rx) = oneshot::channel();
        (Job { tokens: Tokenized { ids: vec![1; len], truncated: false }, enqueued: Instant::now(), reply: tx }, rx)
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
        // Anchor 10; closest first: 11 and 9 (distance 1), then 12. Budget 40 padded tokens:
        // 10, 11, 9 pad to 11 x 3 = 33; adding 12 -> 12 x 4 = 48 does not fit; 49 and 50 never.
        let batch = take_batch(&mut pending, 8, 40);
        let mut lens: Vec<usize> = batch.iter().map(|j| j.tokens.ids.len()).collect();
        lens.sort();
        assert_eq!(lens, vec![9, 10, 11]);
        assert_eq!(pending.len(), 3);
    }

    #[test]
    fn the_oldest_job_always_goes_even_if_over_budget() {
        let (j, _rx) = job(500);
        let mut pending = vec![j];
        let batch = take_batch(&mut pending, 8, 100);
        assert_eq!(batch.len(), 1);
        assert!(pending.is_empty());
    }

    #[tokio::test]
    async fn no_model_is_an_error_not_a_hang() {
        let model = Arc::new(ArcSwapOption::empty());
        let b = Batcher::start(model, BatchConfig::default(), 4);
        let err = b.infer(Tokenized { ids: vec![101, 102], truncated: false }).await.unwrap_err();
        assert!(err.contains("not loaded"));
    }
}
