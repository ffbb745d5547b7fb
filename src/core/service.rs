//! The service core: admission control, validation, tokenisation, batched inference, fusion
//! with the keyword layer, the playbook's decision, and the durable log row. Front doors
//! (gRPC today) only translate to and from this.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::batcher::{Batcher, LoadedModel};
use super::outbox::{Dropped, Outbox};
use super::validate::{self, InvalidField};
use crate::clock::{ManualClock, SharedClock};
use crate::engine::fusion;
use crate::metrics::{DroppedLabels, Metrics};
use crate::model::classifier::{IntentBackend, IntentModel};
use crate::operator::{LiveOperator, OperatorSnapshot};
use crate::pb;
use crate::policy::events::{EventDecision, EventInput, EventKind};
use crate::policy::playbook::Playbook;
use crate::policy::scheduler::OutboundItem;
use crate::server::config::ServerConfig;
use crate::store::{self, ConversationRecord, Record, Storage};
use crate::types::{Action, Classification, IntentScore, MessageContext, PolicyDecision, Source};

/// Why a call failed; the front door maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    Invalid(#[from] InvalidField),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StepTimings {
    pub tokenize_us: u64,
    pub queue_us: u64,
    pub inference_us: u64,
    pub total_us: u64,
}

/// Everything the front door needs to answer a Classify call.
#[derive(Debug, Clone)]
pub struct ClassifyResult {
    pub ctx: MessageContext,
    pub classification: Classification,
    pub decision: PolicyDecision,
    pub timings: StepTimings,
    pub model_version: String,
    /// The log row is durable (false only when the store is off or its queue was full).
    pub recorded: bool,
}

pub struct Core {
    pub cfg: Arc<ServerConfig>,
    pub clock: SharedClock,
    /// Present when the server runs on a manual clock (tests, demos): SetClock moves it.
    pub manual_clock: Option<Arc<ManualClock>>,
    model: Arc<ArcSwapOption<LoadedModel>>,
    batcher: Batcher,
    /// The operator files in service; the playbook reads its part from here too.
    operator: Arc<LiveOperator>,
    playbook: Arc<Playbook>,
    /// Proactive sends taken from the playbook, waiting for a Subscribe stream of their bot.
    outbox: Mutex<Outbox>,
    pub storage: Option<Arc<Storage>>,
    pub metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    served: AtomicU64,
    known_bots: HashSet<String>,
    /// Wakes Subscribe streams: the clock moved or new proactive sends were queued.
    pub outbound_changed: Arc<Notify>,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Core {
    pub fn new(
        cfg: Arc<ServerConfig>,
        clock: SharedClock,
        manual_clock: Option<Arc<ManualClock>>,
        operator: Arc<LiveOperator>,
        playbook: Playbook,
        storage: Option<Arc<Storage>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let model = Arc::new(ArcSwapOption::empty());
        let batcher = Batcher::start(model.clone(), cfg.batching.clone(), cfg.max_in_flight);
        let outbox = Mutex::new(Outbox::new(cfg.outbox.clone()));
        Self {
            known_bots: cfg.bot_ids().into_iter().collect(),
            permits: Arc::new(Semaphore::new(cfg.max_in_flight)),
            cfg,
            clock,
            manual_clock,
            model,
            batcher,
            operator,
            playbook: Arc::new(playbook),
            outbox,
            storage,
            metrics,
            served: AtomicU64::new(0),
            outbound_changed: Arc::new(Notify::new()),
            reload_lock: tokio::sync::Mutex::new(()),
        }
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

    pub fn config_hash(&self) -> String {
        self.operator.load().config_hash.clone()
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.cfg.max_in_flight - self.permits.available_permits()
    }

    pub fn playbook(&self) -> Arc<Playbook> {
        self.playbook.clone()
    }

    pub fn display_name(&self, intent: &str) -> String {
        self.operator.load().display_name(intent)
    }

    pub fn known_bot(&self, bot: &str) -> bool {
        self.known_bots.is_empty() || self.known_bots.contains(bot)
    }

    /// Makes `model` the served model (atomically: requests already in a batch finish on the
    /// old one).
    pub fn install_model(&self, model: Arc<dyn IntentBackend>) {
        let loaded = LoadedModel::new(model);
        self.metrics.set_model_version(&loaded.version);
        self.model.store(Some(Arc::new(loaded)));
    }

    fn admit(&self, n: u32) -> Result<OwnedSemaphorePermit, CoreError> {
        self.permits.clone().try_acquire_many_owned(n).map_err(|_| {
            CoreError::Busy(format!(
                "too many requests in flight (limit {}); retry with backoff",
                self.cfg.max_in_flight
            ))
        })
    }

    pub async fn classify(&self, req: &pb::ClassifyRequest) -> Result<ClassifyResult, CoreError> {
        let _permit = self.admit(1)?;
        let _gauge = self.metrics.in_flight_guard();
        // Tell a batch being gathered that this text is coming.
        let announced = self.batcher.announce();
        let ctx = validate::classify_request(req, &self.cfg.limits, self.now_ms(), |b| {
            self.known_bot(b)
        })?;
        self.classify_valid(ctx, Some(announced)).await
    }

    /// Answers come back in request order; the whole batch is validated before any work.
    pub async fn classify_batch(
        &self,
        reqs: &[pb::ClassifyRequest],
    ) -> Result<Vec<ClassifyResult>, CoreError> {
        let limit = self.cfg.limits.max_batch_requests;
        if reqs.is_empty() {
            return Err(InvalidField {
                field: "requests".into(),
                problem: "is empty".into(),
            }
            .into());
        }
        if reqs.len() > limit {
            return Err(InvalidField {
                field: "requests".into(),
                problem: format!("has {} messages, over the limit of {limit}", reqs.len()),
            }
            .into());
        }
        let _permit = self.admit(reqs.len() as u32)?;
        let _gauge = self.metrics.in_flight_guard();
        let now = self.now_ms();
        let mut ctxs = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            let ctx = validate::classify_request(r, &self.cfg.limits, now, |b| self.known_bot(b))
                .map_err(|e| InvalidField {
                field: format!("requests[{i}].{}", e.field),
                problem: e.problem,
            })?;
            ctxs.push(ctx);
        }
        // All texts go to the batcher together, so they share forward passes: all are announced
        // before the first is queued, so the batch waits for the rest.
        let announced: Vec<_> = ctxs.iter().map(|_| self.batcher.announce()).collect();
        let results = futures_util::future::join_all(
            ctxs.into_iter()
                .zip(announced)
                .map(|(c, a)| self.classify_valid(c, Some(a))),
        )
        .await;
        results.into_iter().collect()
    }

    async fn classify_valid(
        &self,
        ctx: MessageContext,
        announced: Option<super::batcher::Announced>,
    ) -> Result<ClassifyResult, CoreError> {
        let started = Instant::now();
        let playbook = self.playbook.clone();
        let rules = self.operator.load_full();
        let mut timings = StepTimings::default();
        let mut model_version = self.model_version();

        // Compliance first: a banned word is blocked before any model work.
        let (classification, decision) = if let Some(decision) = playbook.precheck(&ctx) {
            drop(announced); // no forward pass for this one
            let cls = Classification {
                intent: String::new(),
                confidence: 1.0,
                ranking: Vec::new(),
                source: Source::Policy,
                matched_terms: Vec::new(),
                needs_clarification: false,
                truncated: false,
                model_loaded: self.model_loaded(),
            };
            (cls, decision)
        } else {
            let mut truncated = false;
            let mut model_scores: Option<Vec<IntentScore>> = None;
            // Queue the forward pass first, then run the keyword layer on this thread while the
            // compute thread works.
            let ticket = match self.batcher.model() {
                Some(m) => {
                    let t0 = Instant::now();
                    let tokens = m
                        .backend
                        .tokenizer()
                        .tokenize(&ctx.text)
                        .map_err(|e| CoreError::Internal(format!("tokenizer: {e:#}")))?;
                    timings.tokenize_us = t0.elapsed().as_micros() as u64;
                    truncated = tokens.truncated;
                    Some(
                        self.batcher
                            .submit(tokens, announced)
                            .await
                            .map_err(CoreError::Internal)?,
                    )
                }
                None => {
                    drop(announced);
                    None
                }
            };
            let kw = rules.keywords.match_text(&ctx.text);
            if let Some(ticket) = ticket {
                match ticket.wait().await {
                    Ok(inf) => {
                        timings.queue_us = inf.queue_us;
                        timings.inference_us = inf.inference_us;
                        model_version = inf.model_version.to_string();
                        let mut scores: Vec<IntentScore> = inf
                            .labels
                            .iter()
                            .zip(&inf.prediction.probs)
                            .map(|(l, &p)| IntentScore {
                                intent: l.clone(),
                                confidence: p,
                            })
                            .collect();
                        scores.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
                        model_scores = Some(scores);
                    }
                    // The model was unloaded between the check and the batch: serve from rules.
                    Err(e) if e.contains("not loaded") => {}
                    Err(e) => return Err(CoreError::Internal(e)),
                }
            }
            let mut cls = fusion::fuse(model_scores.as_deref(), &kw, &rules.fusion);
            cls.truncated = truncated;
            // intents.yml `handoff: always` is honoured next to the playbook's handoff list.
            let always = |i: &str| rules.always_handoff(i);
            let decision = playbook.decide_message_with_catalog(
                &ctx,
                &cls,
                &|i: &str| rules.display_name(i),
                &always,
            );
            (cls, decision)
        };

        timings.total_us = started.elapsed().as_micros() as u64;
        let recorded = self
            .record_decision(&ctx, &classification, &decision, timings, &model_version)
            .await;
        if !decision
            .reply
            .as_ref()
            .map(|r| r.text.is_empty())
            .unwrap_or(true)
            || decision.send_after_ms > 0
        {
            self.outbound_changed.notify_waiters();
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        self.metrics.observe_request(
            "Classify",
            source_name(classification.source),
            action_name(decision.action),
            started.elapsed().as_secs_f64(),
        );
        timings.total_us = started.elapsed().as_micros() as u64;
        Ok(ClassifyResult {
            ctx,
            classification,
            decision,
            timings,
            model_version,
            recorded,
        })
    }

    /// Writes the conversation row (and an audit row for handoffs and blocks) and waits for
    /// the group commit, so an answered request is a durable one.
    async fn record_decision(
        &self,
        ctx: &MessageContext,
        cls: &Classification,
        decision: &PolicyDecision,
        timings: StepTimings,
        model_version: &str,
    ) -> bool {
        let Some(storage) = &self.storage else {
            return false;
        };
        let triggered = !cls.intent.is_empty() && self.playbook.config().replies.has(&cls.intent);
        let rec = ConversationRecord::from_decision(
            ctx,
            cls,
            decision,
            triggered,
            store::Timings {
                tokenize_us: timings.tokenize_us,
                inference_us: timings.inference_us,
                queue_us: timings.queue_us,
                total_us: timings.total_us,
            },
            model_version,
        );
        // Handoffs and blocks get their audit row from the store, in the same transaction.
        let ticket = match storage.submit(Record::Conversation(rec)) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "conversation row not stored");
                return false;
            }
        };
        match tokio::time::timeout(Duration::from_millis(self.cfg.request_timeout_ms), ticket).await
        {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "store commit failed");
                false
            }
            Err(_) => {
                tracing::error!("store commit timed out");
                false
            }
        }
    }

    pub async fn handle_event(&self, ev: &pb::Event) -> Result<EventDecision, CoreError> {
        let _permit = self.admit(1)?;
        let started = Instant::now();
        let (at_ms, user) =
            validate::event(ev, &self.cfg.limits, self.now_ms(), |b| self.known_bot(b))?;
        let kind = match pb::EventType::try_from(ev.r#type) {
            Ok(pb::EventType::MemberJoined) => EventKind::MemberJoined,
            Ok(pb::EventType::MemberLeft) => EventKind::MemberLeft,
            Ok(pb::EventType::LinkClicked) => EventKind::LinkClicked,
            Ok(pb::EventType::CardShared) => EventKind::CardShared,
            Ok(pb::EventType::Activity) => EventKind::Activity,
            _ => unreachable!("validate::event rejects other types"),
        };
        let input = EventInput {
            bot_id: ev.bot_id.clone(),
            chat_id: ev.chat_id.clone(),
            chat_name: ev.chat_name.clone(),
            kind,
            user: user.unwrap_or_default(),
            target_id: ev.target_id.clone(),
            at_ms,
            event_id: ev.event_id.clone(),
        };
        let decision = self.playbook.handle_event(&input);
        // The event's outcome is logged like a message (empty text, message id = event id) so
        // welcomes and link guidance count as exposures.
        if let Some(storage) = &self.storage {
            let ctx = MessageContext {
                bot_id: input.bot_id.clone(),
                chat_id: input.chat_id.clone(),
                chat_name: input.chat_name.clone(),
                message_id: if ev.event_id.is_empty() {
                    format!("event-{}-{}", ev.r#type, at_ms)
                } else {
                    ev.event_id.clone()
                },
                text: String::new(),
                at_ms,
                user: input.user.clone(),
            };
            let cls = Classification {
                intent: String::new(),
                confidence: 1.0,
                ranking: Vec::new(),
                source: Source::Policy,
                matched_terms: Vec::new(),
                needs_clarification: false,
                truncated: false,
                model_loaded: self.model_loaded(),
            };
            let rec = ConversationRecord::from_decision(
                &ctx,
                &cls,
                &decision.decision,
                false,
                store::Timings::default(),
                "",
            );
            match storage.submit(Record::Conversation(rec)) {
                Ok(t) => {
                    if let Err(e) = t.await {
                        tracing::error!(error = %e, "event row not stored");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "event row not stored"),
            }
        }
        self.outbound_changed.notify_waiters();
        self.metrics.observe_request(
            "HandleEvent",
            "policy",
            action_name(decision.decision.action),
            started.elapsed().as_secs_f64(),
        );
        Ok(decision)
    }

    /// Moves everything the playbook has due into the per-bot outbox (each item is handed out
    /// by the playbook exactly once, so one place collects and the streams share it).
    pub fn collect_due(&self) -> usize {
        let now = self.now_ms();
        let items = self.playbook.due(now);
        let n = items.len();
        if n > 0 {
            let mut outbox = self.outbox.lock();
            for item in items {
                let bot = item.bot_id.clone();
                let dropped = outbox.push(item, now);
                self.count_dropped(&bot, dropped);
            }
        }
        n
    }

    /// Takes the waiting proactive sends for `bot_id` (only `chats` when not empty); items for
    /// other chats stay for another stream.
    pub fn take_outbound(&self, bot_id: &str, chats: &[String]) -> Vec<OutboundItem> {
        self.collect_due();
        let (items, dropped) = self.outbox.lock().take(bot_id, chats, self.now_ms());
        self.count_dropped(bot_id, dropped);
        items
    }

    /// Puts items back at the front (a stream closed before it could send them).
    pub fn return_outbound(&self, bot_id: &str, items: Vec<OutboundItem>) {
        let dropped = self.outbox.lock().put_back(bot_id, items, self.now_ms());
        self.count_dropped(bot_id, dropped);
    }

    fn count_dropped(&self, bot_id: &str, dropped: Dropped) {
        if !dropped.any() {
            return;
        }
        for (reason, n) in [("overflow", dropped.overflow), ("expired", dropped.expired)] {
            if n > 0 {
                self.metrics
                    .outbound_dropped
                    .get_or_create(&DroppedLabels {
                        reason: reason.into(),
                    })
                    .inc_by(n as u64);
            }
        }
        tracing::warn!(
            bot_id,
            overflow = dropped.overflow,
            expired = dropped.expired,
            max_per_bot = self.cfg.outbox.max_per_bot,
            max_age_ms = self.cfg.outbox.max_age_ms,
            "proactive sends dropped: no Subscribe stream took them in time"
        );
    }

    pub fn next_outbound_ms(&self) -> Option<i64> {
        self.playbook.next_due_ms()
    }

    pub async fn feedback(&self, req: &pb::FeedbackRequest) -> Result<bool, CoreError> {
        let started = Instant::now();
        let r = self.feedback_inner(req).await;
        self.observe_answered("Feedback", r.is_ok(), started);
        r
    }

    async fn feedback_inner(&self, req: &pb::FeedbackRequest) -> Result<bool, CoreError> {
        let limits = &self.cfg.limits;
        let invalid = |f: &str, p: &str| {
            CoreError::Invalid(InvalidField {
                field: f.into(),
                problem: p.into(),
            })
        };
        if req.bot_id.is_empty() || !self.known_bot(&req.bot_id) {
            return Err(invalid("bot_id", "is empty or not a configured bot"));
        }
        validate::check_id("message_id", &req.message_id, true, limits)?;
        validate::check_id("variant_id", &req.variant_id, false, limits)?;
        if req.at_ms < 0 {
            return Err(invalid("at_ms", "must be Unix milliseconds >= 0 (0 = now)"));
        }
        let kind = store::FeedbackKind::try_from(req.kind).map_err(|_| {
            invalid(
                "kind",
                "must be RESOLVED, UNRESOLVED, THUMBS_UP, THUMBS_DOWN or CLICKED",
            )
        })?;
        let storage = self
            .storage
            .as_ref()
            .ok_or_else(|| CoreError::FailedPrecondition("the store is disabled".into()))?;
        let at_ms = if req.at_ms > 0 {
            req.at_ms
        } else {
            self.now_ms()
        };
        let rec = store::FeedbackRecord {
            bot_id: req.bot_id.clone(),
            message_id: req.message_id.clone(),
            kind,
            variant_id: req.variant_id.clone(),
            at_ms,
        };
        let ticket = storage
            .submit(Record::Feedback(rec))
            .map_err(submit_error)?;
        ticket
            .await
            .map_err(|e| CoreError::Internal(format!("store: {e}")))?;
        Ok(true)
    }

    pub async fn human_reply(&self, req: &pb::HumanReplyRequest) -> Result<bool, CoreError> {
        let started = Instant::now();
        let r = self.human_reply_inner(req).await;
        self.observe_answered("ReportHumanReply", r.is_ok(), started);
        r
    }

    async fn human_reply_inner(&self, req: &pb::HumanReplyRequest) -> Result<bool, CoreError> {
        let invalid = |f: &str, p: &str| {
            CoreError::Invalid(InvalidField {
                field: f.into(),
                problem: p.into(),
            })
        };
        if req.bot_id.is_empty() || !self.known_bot(&req.bot_id) {
            return Err(invalid("bot_id", "is empty or not a configured bot"));
        }
        validate::check_id("chat_id", &req.chat_id, true, &self.cfg.limits)?;
        validate::check_id("message_id", &req.message_id, false, &self.cfg.limits)?;
        if req.at_ms < 0 {
            return Err(invalid("at_ms", "must be Unix milliseconds >= 0 (0 = now)"));
        }
        let at_ms = if req.at_ms > 0 {
            req.at_ms
        } else {
            self.now_ms()
        };
        self.playbook.record_human_reply(&req.bot_id, &req.chat_id);
        let Some(storage) = &self.storage else {
            return Ok(false);
        };
        let rec = store::HumanReplyRecord {
            bot_id: req.bot_id.clone(),
            chat_id: req.chat_id.clone(),
            message_id: req.message_id.clone(),
            at_ms,
        };
        let ticket = storage
            .submit(Record::HumanReply(rec))
            .map_err(submit_error)?;
        ticket
            .await
            .map_err(|e| CoreError::Internal(format!("store: {e}")))?;
        Ok(true)
    }

    /// GetStats. The queries run on the blocking pool: a long window must not stall the
    /// runtime threads that answer Classify.
    pub async fn stats(&self, req: &pb::StatsRequest) -> Result<pb::StatsResponse, CoreError> {
        let started = Instant::now();
        let r = self.stats_inner(req).await;
        self.observe_answered("GetStats", r.is_ok(), started);
        r
    }

    /// Counts an answered Feedback / ReportHumanReply / GetStats call in the request metrics
    /// (no decision source or action: they decide nothing). Refused calls are not counted, as
    /// for Classify.
    fn observe_answered(&self, rpc: &str, ok: bool, started: Instant) {
        if ok {
            self.metrics
                .observe_request(rpc, "", "", started.elapsed().as_secs_f64());
        }
    }

    async fn stats_inner(&self, req: &pb::StatsRequest) -> Result<pb::StatsResponse, CoreError> {
        if req.bot_id.is_empty() || !self.known_bot(&req.bot_id) {
            return Err(InvalidField {
                field: "bot_id".into(),
                problem: "is empty or not a configured bot".into(),
            }
            .into());
        }
        validate::check_id("chat_id", &req.chat_id, false, &self.cfg.limits)?;
        validate::check_id("experiment", &req.experiment, false, &self.cfg.limits)?;
        let storage = self
            .storage
            .clone()
            .ok_or_else(|| CoreError::FailedPrecondition("the store is disabled".into()))?;
        let mut req = req.clone();
        if req.to_ms == 0 {
            req.to_ms = self.now_ms();
        }
        // The human-share target is the playbook's (per bot, per group), the one the handoff
        // policy steers by.
        let operator = self.playbook.config();
        let answer = tokio::task::spawn_blocking(move || {
            let bot = req.bot_id.clone();
            storage.stats(&req, &|chat: &str| {
                operator.settings(&bot, chat).handoff.human_share_target
            })
        })
        .await
        .map_err(|e| CoreError::Internal(format!("stats query crashed: {e}")))?;
        answer.map_err(|e| match e {
            // A bad window (from after to, negative) is the caller's mistake, not ours.
            store::StoreError::Invalid(m) => InvalidField {
                field: "from_ms/to_ms".into(),
                problem: m,
            }
            .into(),
            e => CoreError::Internal(format!("store: {e}")),
        })
    }

    /// Loads the model folder off the runtime threads and swaps it in; a broken folder is
    /// rejected with the reason and the old model keeps serving.
    pub async fn reload_model(&self, actor: &str) -> Result<String, CoreError> {
        let _g = self.reload_lock.lock().await;
        let dir = self.cfg.model_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || IntentModel::load(&dir))
            .await
            .map_err(|e| CoreError::Internal(format!("model loader crashed: {e}")))?;
        match loaded {
            Ok(m) => {
                let version = m.card.version.clone();
                self.install_model(Arc::new(m));
                self.audit(
                    actor,
                    store::AuditAction::ModelChange,
                    &format!("model {version} loaded"),
                );
                Ok(version)
            }
            Err(e) => {
                let msg = format!(
                    "model reload rejected, still serving {}: {e:#}",
                    self.model_version()
                );
                self.audit(actor, store::AuditAction::ModelChange, &msg);
                Err(CoreError::FailedPrecondition(msg))
            }
        }
    }

    /// Reloads every operator file as one unit.
    pub async fn reload_operator(&self, actor: &str) -> Result<String, CoreError> {
        let _g = self.reload_lock.lock().await;
        let cfg = self.cfg.clone();
        // Every file is validated into a new snapshot first; one store then swaps it in for the
        // classifier and the playbook alike (whose live state - spacing, cooldowns, open
        // handoffs - is not part of it and stays). A broken file leaves everything as it was.
        let loaded = tokio::task::spawn_blocking(move || {
            OperatorSnapshot::load_dir(&cfg.operator_dir, &cfg.training_data, cfg.fusion.clone())
        })
        .await
        .map_err(|e| CoreError::Internal(format!("config loader crashed: {e}")))?;
        match loaded {
            Ok(snapshot) => {
                let hash = snapshot.config_hash.clone();
                self.operator.store(Arc::new(snapshot));
                self.audit(
                    actor,
                    store::AuditAction::ConfigChange,
                    &format!("operator files {hash} loaded"),
                );
                self.outbound_changed.notify_waiters();
                Ok(hash)
            }
            Err(e) => {
                let msg = format!(
                    "operator reload rejected, still serving {}: {e:#}",
                    self.config_hash()
                );
                self.audit(actor, store::AuditAction::ConfigChange, &msg);
                Err(CoreError::FailedPrecondition(msg))
            }
        }
    }

    /// Moves the manual clock. Retention is applied at once for the new "now" (what the
    /// hourly purge would do once it ran), so a test or demo jumping months ahead sees the
    /// same database a real server would have. Audited as an admin call.
    pub async fn set_clock(&self, now_ms: i64, actor: &str) -> Result<i64, CoreError> {
        let clock = self.manual_clock.as_ref().ok_or_else(|| {
            CoreError::FailedPrecondition(
                "the server runs on the system clock (start it with --manual-clock)".into(),
            )
        })?;
        if now_ms <= 0 {
            return Err(InvalidField {
                field: "now_ms".into(),
                problem: "must be positive Unix milliseconds".into(),
            }
            .into());
        }
        let before = self.now_ms();
        clock.set_ms(now_ms);
        self.audit(
            actor,
            store::AuditAction::AdminCall,
            &format!("SetClock {before} -> {now_ms}"),
        );
        if let Some(storage) = self.storage.clone() {
            match tokio::task::spawn_blocking(move || storage.purge()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.metrics.store_errors.inc();
                    tracing::error!(error = %e, "retention purge after SetClock failed");
                }
                Err(e) => tracing::error!(error = %e, "retention purge task crashed"),
            }
        }
        self.outbound_changed.notify_waiters();
        Ok(now_ms)
    }

    pub fn audit(&self, actor: &str, action: store::AuditAction, detail: &str) {
        if let Some(s) = &self.storage {
            if let Err(e) = s.audit(actor, action, detail) {
                tracing::warn!(error = %e, "audit row not stored");
            }
        }
    }
}

/// A full store queue is back-pressure (retry later); a closing store is going away.
fn submit_error(e: store::SubmitError) -> CoreError {
    match e {
        store::SubmitError::QueueFull { .. } => CoreError::Busy(e.to_string()),
        store::SubmitError::Closed => CoreError::Unavailable(e.to_string()),
    }
}

pub fn source_name(s: Source) -> &'static str {
    match s {
        Source::Model => "model",
        Source::Keyword => "keyword",
        Source::Regex => "regex",
        Source::Fallback => "fallback",
        Source::Policy => "policy",
    }
}

pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Reply => "reply",
        Action::Clarify => "clarify",
        Action::Handoff => "handoff",
        Action::Block => "block",
        Action::Ignore => "ignore",
    }
}
