//! Classify and ClassifyBatch: validation, admission, the forward pass (batched) beside the
//! keyword layer, fusion, the playbook's decision and the durable log row.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::batcher::{Announced, InferenceError};
use super::idempotency::{self, AnswerKey, FirstAnswer};
use super::replay::{KeyedBy, Replayable};
use super::requests::ClassifyRequest;
use super::validate::{self, InvalidField};
use super::{Service, ServiceError};
use crate::engine::fusion;
use crate::operator::OperatorSnapshot;
use crate::store::{AnswerKind, AnswerRow, ConversationRecord, Record};
use crate::types::{Classification, IntentScore, MessageContext, PolicyDecision, Timings};

/// A ranking entry as answered: with the name shown to users, from the same operator
/// snapshot that decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedIntent {
    pub intent: String,
    pub confidence: f32,
    pub display_name: String,
}

/// Everything a front door needs to answer a Classify call. Serialisable: the first answer is
/// stored and returned again for a retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyOutcome {
    pub message_id: String,
    /// Its `ranking` is empty: the answer's ranking is `ranking` below (top k).
    pub classification: Classification,
    /// The top `top_k` of the classification's ranking.
    pub ranking: Vec<RankedIntent>,
    pub decision: PolicyDecision,
    pub timings: Timings,
    pub model_version: String,
    /// The log row is durable (false only when the store is off or its queue was full).
    pub recorded: bool,
    /// The stored first answer to this (bot_id, message_id), returned again for a retry.
    pub replayed: bool,
}

impl Replayable for ClassifyOutcome {
    fn mark_replayed(&mut self) {
        self.replayed = true;
    }
}

const BY_MESSAGE: KeyedBy = KeyedBy {
    what: "message",
    field: "message_id",
    reused: "message_id reused with other text: it was answered before for another text \
             (within idempotency.window_s); send a new message_id",
};

impl Service {
    pub async fn classify(&self, req: &ClassifyRequest) -> Result<ClassifyOutcome, ServiceError> {
        let _permit = self.admit(1)?;
        let _gauge = self.metrics.in_flight_guard();
        // Tell a batch being gathered that this text is coming.
        let announced = self.batcher.announce();
        let ctx = validate::classify_request(req, &self.settings.limits, self.now_ms(), |b| {
            self.known_bot(b)
        })?;
        self.room_for_texts()?;
        self.classify_valid(ctx, Some(announced)).await
    }

    /// Answers come back in request order; the whole batch is validated before any work.
    pub async fn classify_batch(
        &self,
        reqs: &[ClassifyRequest],
    ) -> Result<Vec<ClassifyOutcome>, ServiceError> {
        let limit = self.settings.limits.max_batch_requests;
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
            let ctx =
                validate::classify_request(r, &self.settings.limits, now, |b| self.known_bot(b))
                    .map_err(|e| InvalidField {
                        field: format!("requests[{i}].{}", e.field),
                        problem: e.problem,
                    })?;
            ctxs.push(ctx);
        }
        self.room_for_texts()?;
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

    /// The queue budget, checked at the door (before any tokenising) when a model serves.
    fn room_for_texts(&self) -> Result<(), ServiceError> {
        if !self.model_loaded() {
            return Ok(());
        }
        self.batcher.check_room().map_err(inference_error)
    }

    /// One turn per (bot_id, message_id): a retry gets the stored first answer (and changes
    /// nothing), a new message is decided.
    async fn classify_valid(
        &self,
        ctx: MessageContext,
        announced: Option<Announced>,
    ) -> Result<ClassifyOutcome, ServiceError> {
        if !self.idempotency.enabled() {
            return self.decide_message(ctx, announced, None).await;
        }
        let key = AnswerKey::new(&ctx.bot_id, AnswerKind::Message, &ctx.message_id);
        let digest = idempotency::digest(&[&ctx.text]);
        let _turn = self.idempotency.turn(&key).await;
        if let Some(first) = self.first_answer(&key, &digest, &BY_MESSAGE).await? {
            drop(announced);
            return Ok(first);
        }
        self.decide_message(ctx, announced, Some((key, digest)))
            .await
    }

    async fn decide_message(
        &self,
        ctx: MessageContext,
        announced: Option<Announced>,
        keyed: Option<(AnswerKey, String)>,
    ) -> Result<ClassifyOutcome, ServiceError> {
        let started = Instant::now();
        // One operator snapshot for the whole request: a reload in the middle cannot mix files.
        let rules = self.operator.load_full();
        let mut timings = Timings::default();
        let mut model_version = self.model_version();

        // Compliance first: a banned word is blocked before any model work.
        let (classification, decision) =
            if let Some(decision) = self.playbook.precheck_on(&rules.policy, &ctx).await? {
                drop(announced); // no forward pass for this one
                (Classification::by_policy(self.model_loaded()), decision)
            } else {
                let mut cls = self
                    .classify_text(
                        &ctx.text,
                        &rules,
                        announced,
                        &mut timings,
                        &mut model_version,
                    )
                    .await?;
                // Relative dates resolve against the service clock (the message's arrival)
                // in the bot's time zone.
                let tz = rules.policy.settings(&ctx.bot_id, &ctx.chat_id).timezone;
                cls.entities = rules.entities.extract(&ctx.text, local_now(tz, ctx.at_ms));
                // intents.yml `handoff: always` is honoured next to the playbook's handoff list.
                let always = |i: &str| rules.always_handoff(i);
                let decision = self
                    .playbook
                    .decide_message_on(
                        &rules.policy,
                        &ctx,
                        &cls,
                        &|i: &str| rules.display_name(i),
                        &always,
                    )
                    .await?;
                (cls, decision)
            };

        // The answer's total is taken here, before the log commit: it is stored with the answer
        // and a retry must get the same bytes.
        timings.total_us = started.elapsed().as_micros() as u64;
        let ranking = classification
            .ranking
            .iter()
            .take(self.settings.top_k.max(1))
            .map(|s| RankedIntent {
                intent: s.intent.clone(),
                confidence: s.confidence,
                display_name: rules.display_name(&s.intent),
            })
            .collect();
        // The full ranking has done its work (decision, log row); answers carry the top k
        // above, and a stored first answer stays small.
        let mut classification = classification;
        classification.ranking = Vec::new();
        // The model's own view (the decision trace) is cut like the answered ranking.
        classification
            .model_ranking
            .truncate(self.settings.top_k.max(1));
        let mut outcome = ClassifyOutcome {
            message_id: ctx.message_id.clone(),
            classification,
            ranking,
            decision,
            timings,
            model_version,
            // As stored: the row and the answer commit together, or neither does.
            recorded: self.storage.is_some(),
            replayed: false,
        };
        let first = |o: &ClassifyOutcome, digest: &str| FirstAnswer {
            at_ms: self.now_ms(),
            digest: digest.to_string(),
            body: stored_body(o),
        };
        let stored = keyed.as_ref().map(|(k, d)| {
            let a = first(&outcome, d);
            let row = a.to_row(k);
            (a, row)
        });
        let stored_recorded = outcome.recorded;
        let (answer, row) = match stored {
            Some((a, row)) => (Some(a), Some(row)),
            None => (None, None),
        };
        outcome.recorded = self.record_decision(&rules, &ctx, &outcome, row).await;
        if let (Some((key, digest)), Some(answer)) = (keyed, answer) {
            // A commit that failed answers recorded=false, and a retry must get that answer.
            let remembered = if outcome.recorded == stored_recorded {
                answer
            } else {
                first(&outcome, &digest)
            };
            self.idempotency.remember(key, remembered);
        }
        let (cls, decision) = (&outcome.classification, &outcome.decision);
        if decision.reply.as_ref().is_some_and(|r| !r.text.is_empty()) || decision.send_after_ms > 0
        {
            self.outbound_changed.notify_waiters();
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        self.metrics.observe_request(
            "Classify",
            cls.source.as_str(),
            decision.action.as_str(),
            started.elapsed().as_secs_f64(),
        );
        Ok(outcome)
    }

    /// The engine: the forward pass (queued first) and the keyword layer on this thread while
    /// the compute thread works, then fusion. Without a model, rules alone.
    pub(super) async fn classify_text(
        &self,
        text: &str,
        rules: &Arc<OperatorSnapshot>,
        announced: Option<Announced>,
        timings: &mut Timings,
        model_version: &mut String,
    ) -> Result<Classification, ServiceError> {
        let mut truncated = false;
        let ticket = match self.batcher.model() {
            Some(m) => {
                let t0 = Instant::now();
                let tokens = m
                    .backend
                    .tokenize(text)
                    .map_err(|e| ServiceError::Internal(format!("tokenizer: {e:#}")))?;
                timings.tokenize_us = t0.elapsed().as_micros() as u64;
                truncated = tokens.truncated;
                Some(
                    self.batcher
                        .submit(tokens, announced)
                        .await
                        .map_err(inference_error)?,
                )
            }
            None => {
                drop(announced);
                None
            }
        };
        let kw = rules.keywords.match_text(text);
        let mut model_scores: Option<Vec<IntentScore>> = None;
        if let Some(ticket) = ticket {
            match ticket.wait().await {
                Ok(inf) => {
                    timings.queue_us = inf.queue_us;
                    timings.inference_us = inf.inference_us;
                    self.metrics
                        .observe_inference(inf.queue_us, inf.inference_us, inf.batch_size);
                    *model_version = inf.model_version.to_string();
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
                Err(InferenceError::NotLoaded) => {}
                Err(e) => return Err(inference_error(e)),
            }
        }
        let mut cls = fusion::fuse(model_scores.as_deref(), &kw, &rules.fusion);
        cls.truncated = truncated;
        Ok(cls)
    }

    /// Writes the conversation row (and an audit row for handoffs and blocks) and waits for
    /// the group commit, so an answered request is a durable one.
    async fn record_decision(
        &self,
        rules: &OperatorSnapshot,
        ctx: &MessageContext,
        outcome: &ClassifyOutcome,
        answer: Option<AnswerRow>,
    ) -> bool {
        let Some(storage) = &self.storage else {
            return false;
        };
        let cls = &outcome.classification;
        let triggered = !cls.intent.is_empty() && rules.policy.replies.has(&cls.intent);
        let mut rec = ConversationRecord::from_decision(
            ctx,
            cls,
            &outcome.decision,
            triggered,
            outcome.timings,
            &outcome.model_version,
        );
        rec.answer = answer;
        // Handoffs and blocks get their audit row from the store, in the same transaction.
        let ticket = match storage.submit(Record::Conversation(rec)) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "conversation row not stored");
                return false;
            }
        };
        let wait = Duration::from_millis(self.settings.request_timeout_ms);
        match tokio::time::timeout(wait, ticket).await {
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
}

/// The first answer as stored for retries. Entity values are message text: phone numbers and
/// other PII in them are redacted like everything else the store keeps, so a replayed answer
/// shows `[PHONE]` where the first one showed the number.
fn stored_body(o: &ClassifyOutcome) -> String {
    let json = |o: &ClassifyOutcome| {
        // Plain data: serialising cannot fail.
        serde_json::to_string(o).expect("ClassifyOutcome serialises")
    };
    if o.classification.entities.is_empty() {
        return json(o);
    }
    let mut redacted = o.clone();
    for e in &mut redacted.classification.entities {
        e.value = crate::pii::redact_pii(&e.value);
        e.canonical = crate::pii::redact_pii(&e.canonical);
    }
    json(&redacted)
}

/// `ms` (Unix) in `tz`; a time outside chrono's range (never from a real clock) is the epoch.
pub(crate) fn local_now(tz: chrono_tz::Tz, ms: i64) -> chrono::DateTime<chrono_tz::Tz> {
    use chrono::TimeZone;
    tz.timestamp_millis_opt(ms).single().unwrap_or_else(|| {
        tz.timestamp_millis_opt(0)
            .single()
            .expect("the epoch exists")
    })
}

/// Over the queue budget is back-pressure (retry later); anything else went wrong here.
fn inference_error(e: InferenceError) -> ServiceError {
    match e {
        InferenceError::Overloaded(m) => ServiceError::Busy(m),
        e => ServiceError::Internal(e.to_string()),
    }
}
