//! The service layer: what every front door (gRPC, HTTP, connectors) shares. It takes plain
//! requests (no protobuf), validates them, admits them, runs the engine and the playbook and
//! writes the durable log, and answers with plain outcomes. One file per use case:
//! [`classify`], [`events`], [`feedback`] (and human replies), [`stats`], [`reload`] (and the
//! manual clock), [`outbound`] (proactive sends for Subscribe streams).
//!
//! It reads no configuration file: the wiring (`crate::app`) hands it [`ServiceSettings`].

pub mod batcher;
pub mod classify;
pub mod console_sessions;
pub mod desk;
pub mod error;
pub mod events;
pub mod feedback;
pub mod idempotency;
pub mod labels;
pub mod outbound;
pub mod outbox;
pub mod reload;
pub mod replay;
pub mod requests;
pub mod retire;
pub mod stats;
pub mod validate;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::clock::{ManualClock, SharedClock};
use crate::engine::fusion::FusionConfig;
use crate::metrics::Metrics;
use crate::model::classifier::IntentBackend;
use crate::operator::{LiveOperator, OperatorSnapshot};
use crate::policy::playbook::Playbook;
use crate::store::pg_outbox::PgOutbox;
use crate::store::{self, Storage};
use batcher::{BatchConfig, Batcher, LoadedModel};
use idempotency::{Idempotency, IdempotencyConfig};
use outbox::{Outbox, OutboxConfig};
use validate::{InvalidField, Limits};

pub use classify::{ClassifyOutcome, RankedIntent};
pub use error::ServiceError;
pub use events::EventOutcome;
pub use requests::{
    ClassifyRequest, EventRequest, EventTypeIn, FeedbackRequest, HumanReplyRequest,
};

/// What the service needs from the process configuration.
#[derive(Debug, Clone, Default)]
pub struct ServiceSettings {
    pub limits: Limits,
    pub batching: BatchConfig,
    pub outbox: OutboxConfig,
    /// Requests processed at once; beyond it `Busy` at once.
    pub max_in_flight: usize,
    /// How long an answer waits for its log commit.
    pub request_timeout_ms: u64,
    /// Ranking entries returned with a classification (at least 1).
    pub top_k: usize,
    pub fusion: FusionConfig,
    pub model_dir: PathBuf,
    pub operator_dir: PathBuf,
    pub training_data: PathBuf,
    /// Configured bot ids; empty means any bot (authentication off).
    pub bots: Vec<String>,
    pub idempotency: IdempotencyConfig,
}

/// The shared service object; front doors hold an `Arc<Service>`.
pub struct Service {
    pub settings: ServiceSettings,
    pub clock: SharedClock,
    /// Present when the server runs on a manual clock (tests, demos): SetClock moves it.
    manual_clock: Option<Arc<ManualClock>>,
    model: Arc<ArcSwapOption<LoadedModel>>,
    batcher: Batcher,
    /// The operator files in service; the playbook reads its part from here too.
    operator: Arc<LiveOperator>,
    playbook: Arc<Playbook>,
    /// Proactive sends taken from the playbook, waiting for a Subscribe stream of their bot.
    outbox: Arc<Mutex<Outbox>>,
    /// Replicas that all serve share their outbox in the database instead (None: `outbox`).
    shared_outbox: Option<Arc<PgOutbox>>,
    /// Held while this process plans proactive sends into the shared outbox: a second planner
    /// (a stream waking while the collector runs) would only conflict with the first.
    planning: tokio::sync::Mutex<()>,
    /// This process plans the proactive sends and serves the operators' console and labels:
    /// always when it is the only one; among replicas that all serve, while it holds the
    /// leader lease.
    leads: AtomicBool,
    /// Operators' labels of logged messages (the labelling inbox).
    labels: Arc<Mutex<labels::LabelBook>>,
    /// The console's logged-in sessions, written through the store.
    console_sessions: Arc<console_sessions::ConsoleSessions>,
    pub storage: Option<Arc<Storage>>,
    pub metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    served: AtomicU64,
    known_bots: HashSet<String>,
    /// Wakes Subscribe streams: the clock moved or new proactive sends were queued.
    outbound_changed: Arc<Notify>,
    reload_lock: tokio::sync::Mutex<()>,
    /// First answers, so retries get them again and change nothing.
    idempotency: Idempotency,
    /// Set once shutdown starts: never ready again, whatever reloads after.
    shutting_down: AtomicBool,
}

impl Service {
    pub fn new(
        settings: ServiceSettings,
        clock: SharedClock,
        manual_clock: Option<Arc<ManualClock>>,
        operator: Arc<LiveOperator>,
        playbook: Playbook,
        storage: Option<Arc<Storage>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let model = Arc::new(ArcSwapOption::empty());
        let idempotency = Idempotency::new(
            settings.idempotency.clone(),
            storage.as_ref(),
            clock.now_ms(),
        );
        let batcher = Batcher::start(
            model.clone(),
            settings.batching.clone(),
            settings.max_in_flight,
        );
        // With a store, waiting proactive sends are durable rows too (see outbox.rs).
        let outbox = Arc::new(Mutex::new(match &storage {
            Some(_) => Outbox::durable(settings.outbox.clone()),
            None => Outbox::new(settings.outbox.clone()),
        }));
        let labels = Arc::new(Mutex::new(labels::LabelBook::new(storage.is_some())));
        let console_sessions = Arc::new(console_sessions::ConsoleSessions::new(storage.is_some()));
        if let Some(s) = &storage {
            s.hold_durable(outbox.clone());
            s.hold_durable(labels.clone());
            s.hold_durable(console_sessions.clone());
        }
        Self {
            known_bots: settings.bots.iter().cloned().collect(),
            permits: Arc::new(Semaphore::new(settings.max_in_flight)),
            outbox,
            shared_outbox: None,
            planning: tokio::sync::Mutex::new(()),
            leads: AtomicBool::new(true),
            labels,
            console_sessions,
            settings,
            clock,
            manual_clock,
            model,
            batcher,
            operator,
            playbook: Arc::new(playbook),
            storage,
            metrics,
            served: AtomicU64::new(0),
            outbound_changed: Arc::new(Notify::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            idempotency,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Proactive sends go to the outbox replicas share (`leader.followers: serve`), and
    /// idempotent retries always look in the store for the first answer (it may have been
    /// given by another replica). Call before serving.
    pub fn share_with_replicas(mut self, outbox: Arc<PgOutbox>) -> Self {
        self.shared_outbox = Some(outbox);
        self.idempotency.always_ask_store();
        self
    }

    /// See the `leads` field.
    pub fn leads(&self) -> bool {
        self.leads.load(Ordering::Acquire)
    }

    pub fn set_leads(&self, leads: bool) {
        self.leads.store(leads, Ordering::Release);
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn model_loaded(&self) -> bool {
        self.model.load().is_some()
    }

    pub fn model_version(&self) -> String {
        self.model
            .load()
            .as_ref()
            .map(|m| m.version.to_string())
            .unwrap_or_default()
    }

    /// Why this server should get no traffic now, or None when it is ready: shutting down, no
    /// model loaded (rules alone answer), or the store failing every commit.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Some("shutting down".into());
        }
        if !self.model_loaded() {
            return Some("no model loaded: only the rules answer".into());
        }
        if let Some(storage) = &self.storage {
            let health = storage.health();
            if !health.is_healthy() {
                return Some(format!(
                    "the store fails every commit ({} in a row; last: {})",
                    health.failed_in_a_row(),
                    health.last_error()
                ));
            }
        }
        None
    }

    /// Shutdown has started: readiness stays NOT_SERVING from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn config_hash(&self) -> String {
        self.operator.load().config_hash.clone()
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.settings.max_in_flight - self.permits.available_permits()
    }

    pub fn playbook(&self) -> Arc<Playbook> {
        self.playbook.clone()
    }

    /// The operator snapshot in service now.
    pub fn operator(&self) -> Arc<OperatorSnapshot> {
        self.operator.load_full()
    }

    pub fn known_bot(&self, bot: &str) -> bool {
        self.known_bots.is_empty() || self.known_bots.contains(bot)
    }

    /// Makes `model` the served model (atomically: requests already in a batch finish on the
    /// old one) and returns the model it replaced. See [`Self::replace_model`] to free that.
    pub fn install_model(&self, model: Arc<dyn IntentBackend>) -> Option<Arc<LoadedModel>> {
        let loaded = LoadedModel::new(model);
        self.metrics.set_model_version(&loaded.version);
        self.model.swap(Some(Arc::new(loaded)))
    }

    /// Installs `model`, then waits until the requests still using the replaced one have
    /// finished and frees it, returning its memory to the system ([`retire`]). So a reload
    /// holds two models only while it runs, and back-to-back reloads never stack up copies.
    pub async fn replace_model(&self, model: Arc<dyn IntentBackend>) -> Option<retire::Retired> {
        let old = self.install_model(model)?;
        let what = format!("model {}", old.version);
        Some(retire::retire(old, what, self.retire_patience()).await)
    }

    /// How long a reload waits for the last request on what it replaced: every request ends
    /// within its deadline (at most `request_timeout_ms` without one).
    fn retire_patience(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.settings.request_timeout_ms.max(1_000) * 2)
    }

    fn admit(&self, n: u32) -> Result<OwnedSemaphorePermit, ServiceError> {
        self.permits.clone().try_acquire_many_owned(n).map_err(|_| {
            ServiceError::Busy(format!(
                "too many requests in flight (limit {}); retry with backoff",
                self.settings.max_in_flight
            ))
        })
    }

    /// The bot id of a report or query (Feedback, ReportHumanReply, GetStats): required and
    /// configured.
    fn check_bot(&self, bot_id: &str) -> Result<(), ServiceError> {
        if bot_id.is_empty() || !self.known_bot(bot_id) {
            return Err(InvalidField {
                field: "bot_id".into(),
                problem: "is empty or not a configured bot".into(),
            }
            .into());
        }
        Ok(())
    }

    /// Writes an audit row (best effort: a failure is logged, the action already happened).
    pub fn audit(&self, actor: &str, action: store::AuditAction, detail: &str) {
        if let Some(s) = &self.storage {
            if let Err(e) = s.audit(actor, action, detail) {
                tracing::warn!(error = %e, "audit row not stored");
            }
        }
    }

    /// Runs a call that decides nothing (Feedback, ReportHumanReply, GetStats) and counts it
    /// in the request metrics when answered; refused calls are not counted, as for Classify.
    async fn observed<T>(
        &self,
        rpc: &str,
        call: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let started = std::time::Instant::now();
        let r = call.await;
        if r.is_ok() {
            self.metrics
                .observe_request(rpc, "", "", started.elapsed().as_secs_f64());
        }
        r
    }
}

#[cfg(test)]
mod tests;
