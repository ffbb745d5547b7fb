//! gRPC front door: authenticate, translate protobuf to core calls and back, map errors to
//! status codes. No decisions are made here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Caller};
use crate::core::service::{ClassifyResult, Core, CoreError};
use crate::pb;
use crate::pb::admin_service_server::AdminService;
use crate::pb::intent_service_server::IntentService;
use crate::policy::scheduler::{OutboundItem, OutboundKind};
use crate::types::{Action, ReplyOut, Source};

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Invalid(f) => Status::invalid_argument(f.to_string()),
            CoreError::Busy(m) => Status::resource_exhausted(m),
            CoreError::Unavailable(m) => Status::unavailable(m),
            CoreError::FailedPrecondition(m) => Status::failed_precondition(m),
            CoreError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal(m)
            }
        }
    }
}

pub fn source_pb(s: Source) -> pb::Source {
    match s {
        Source::Model => pb::Source::Model,
        Source::Keyword => pb::Source::Keyword,
        Source::Regex => pb::Source::Regex,
        Source::Fallback => pb::Source::Fallback,
        Source::Policy => pb::Source::Policy,
    }
}

pub fn action_pb(a: Action) -> pb::Action {
    match a {
        Action::Reply => pb::Action::Reply,
        Action::Clarify => pb::Action::Clarify,
        Action::Handoff => pb::Action::Handoff,
        Action::Block => pb::Action::Block,
        Action::Ignore => pb::Action::Ignore,
    }
}

pub fn reply_pb(r: &ReplyOut) -> pb::Reply {
    pb::Reply {
        text: r.text.clone(),
        variant_id: r.variant_id.clone(),
        style: r.style.clone(),
        experiment: r.experiment.clone(),
    }
}

pub struct IntentApi {
    pub core: Arc<Core>,
    pub auth: Arc<Authenticator>,
}

impl IntentApi {
    fn response(&self, r: ClassifyResult) -> pb::ClassifyResponse {
        let top_k = self.core.cfg.fusion.top_k.max(1);
        let c = &r.classification;
        pb::ClassifyResponse {
            intent: c.intent.clone(),
            confidence: c.confidence,
            ranking: c
                .ranking
                .iter()
                .take(top_k)
                .map(|s| pb::IntentScore {
                    intent: s.intent.clone(),
                    confidence: s.confidence,
                    display_name: self.core.display_name(&s.intent),
                })
                .collect(),
            source: source_pb(c.source) as i32,
            matched_terms: c.matched_terms.clone(),
            action: action_pb(r.decision.action) as i32,
            reply: r.decision.reply.as_ref().map(reply_pb),
            send_after_ms: r.decision.send_after_ms,
            model_version: r.model_version,
            timings: Some(pb::Timings {
                tokenize_us: r.timings.tokenize_us,
                inference_us: r.timings.inference_us,
                total_us: r.timings.total_us,
                queue_us: r.timings.queue_us,
            }),
            truncated: c.truncated,
            reason: r.decision.reason.clone(),
            model_loaded: c.model_loaded,
            message_id: r.ctx.message_id.clone(),
            notices: r.decision.notices.clone(),
            recorded: r.recorded,
        }
    }
}

fn caller<T>(auth: &Authenticator, req: &Request<T>) -> Result<Caller, Status> {
    auth.caller(req)
}

type OutboundStream = Pin<Box<dyn Stream<Item = Result<pb::Outbound, Status>> + Send>>;

#[tonic::async_trait]
impl IntentService for IntentApi {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let who = caller(&self.auth, &request)?;
        let req = request.into_inner();
        who.check_bot(&req.bot_id)?;
        let r = self.core.classify(&req).await?;
        Ok(Response::new(self.response(r)))
    }

    async fn classify_batch(
        &self,
        request: Request<pb::ClassifyBatchRequest>,
    ) -> Result<Response<pb::ClassifyBatchResponse>, Status> {
        let who = caller(&self.auth, &request)?;
        let req = request.into_inner();
        for r in &req.requests {
            who.check_bot(&r.bot_id)?;
        }
        let results = self.core.classify_batch(&req.requests).await?;
        Ok(Response::new(pb::ClassifyBatchResponse {
            responses: results.into_iter().map(|r| self.response(r)).collect(),
        }))
    }

    async fn handle_event(
        &self,
        request: Request<pb::Event>,
    ) -> Result<Response<pb::Decision>, Status> {
        let who = caller(&self.auth, &request)?;
        let ev = request.into_inner();
        who.check_bot(&ev.bot_id)?;
        let d = self.core.handle_event(&ev).await?;
        Ok(Response::new(pb::Decision {
            action: action_pb(d.decision.action) as i32,
            reply: d.decision.reply.as_ref().map(reply_pb),
            send_after_ms: d.decision.send_after_ms,
            reason: d.decision.reason.clone(),
            merged_user_ids: d.merged_user_ids.clone(),
        }))
    }

    type SubscribeStream = OutboundStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = caller(&self.auth, &request)?;
        let req = request.into_inner();
        who.check_bot(&req.bot_id)?;
        if !self.core.known_bot(&req.bot_id) {
            return Err(Status::invalid_argument(format!(
                "bot_id: unknown bot '{}'",
                req.bot_id
            )));
        }
        let core = self.core.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::Outbound, Status>>(64);
        tokio::spawn(async move {
            loop {
                // Register interest before checking, so a notify between the check and the wait
                // is not missed.
                let notified = core.outbound_changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let mut items = core
                    .take_outbound(&req.bot_id, &req.chat_ids)
                    .await
                    .into_iter();
                while let Some(item) = items.next() {
                    let msg = outbound_pb(&item);
                    if tx.send(Ok(msg)).await.is_err() {
                        // The subscriber left: keep what it did not receive for the next one.
                        let mut rest = vec![item];
                        rest.extend(items);
                        core.return_outbound(&req.bot_id, rest);
                        tracing::info!(bot = %req.bot_id, "subscriber disconnected");
                        return;
                    }
                }
                // Sleep until the next due item (system clock) or a change; at most 1 s so
                // wall-clock schedules are never late by more than that.
                let wait = core
                    .next_outbound_ms()
                    .await
                    .map(|t| (t - core.now_ms()).clamp(1, 1000) as u64)
                    .unwrap_or(1000);
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let who = caller(&self.auth, &request)?;
        let req = request.into_inner();
        who.check_bot(&req.bot_id)?;
        let recorded = self.core.feedback(&req).await?;
        Ok(Response::new(pb::FeedbackResponse { recorded }))
    }

    async fn report_human_reply(
        &self,
        request: Request<pb::HumanReplyRequest>,
    ) -> Result<Response<pb::HumanReplyResponse>, Status> {
        let who = caller(&self.auth, &request)?;
        let req = request.into_inner();
        who.check_bot(&req.bot_id)?;
        let recorded = self.core.human_reply(&req).await?;
        Ok(Response::new(pb::HumanReplyResponse { recorded }))
    }

    async fn get_stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let who = caller(&self.auth, &request)?;
        let req = request.into_inner();
        who.check_bot(&req.bot_id)?;
        Ok(Response::new(self.core.stats(&req).await?))
    }
}

pub fn outbound_pb(item: &OutboundItem) -> pb::Outbound {
    pb::Outbound {
        bot_id: item.bot_id.clone(),
        chat_id: item.chat_id.clone(),
        kind: match item.kind {
            OutboundKind::Scheduled => pb::OutboundKind::Scheduled,
            OutboundKind::Countdown => pb::OutboundKind::Countdown,
            OutboundKind::Reactivation => pb::OutboundKind::Reactivation,
            OutboundKind::DelayedReply => pb::OutboundKind::DelayedReply,
            OutboundKind::Welcome => pb::OutboundKind::Welcome,
        } as i32,
        reply: Some(reply_pb(&item.reply)),
        send_at_ms: item.send_at_ms,
        rule_id: item.rule_id.clone(),
    }
}

pub struct AdminApi {
    pub core: Arc<Core>,
    pub auth: Arc<Authenticator>,
    pub health: tonic_health::server::HealthReporter,
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn reload(
        &self,
        request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        self.auth.admin(&request)?;
        let req = request.into_inner();
        let (model, operator) = if !req.model && !req.operator {
            (true, true)
        } else {
            (req.model, req.operator)
        };
        let mut messages = Vec::new();
        if operator {
            let hash = self.core.reload_operator("admin-rpc").await?;
            messages.push(format!("operator files {hash}"));
        }
        if model {
            let v = self.core.reload_model("admin-rpc").await?;
            super::run::mark_serving(&self.health).await;
            messages.push(format!("model {v}"));
        }
        Ok(Response::new(pb::ReloadResponse {
            ok: true,
            model_version: self.core.model_version(),
            message: format!("reloaded: {}", messages.join(", ")),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.auth.admin(&request)?;
        Ok(Response::new(pb::StatusResponse {
            model_version: self.core.model_version(),
            model_loaded: self.core.model_loaded(),
            in_flight: self.core.in_flight() as u32,
            served: self.core.served(),
            config_hash: self.core.config_hash(),
        }))
    }

    async fn set_clock(
        &self,
        request: Request<pb::SetClockRequest>,
    ) -> Result<Response<pb::SetClockResponse>, Status> {
        self.auth.admin(&request)?;
        let now_ms = self
            .core
            .set_clock(request.into_inner().now_ms, "admin-rpc")
            .await?;
        Ok(Response::new(pb::SetClockResponse { now_ms }))
    }
}
