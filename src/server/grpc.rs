//! gRPC front door: authenticate, translate protobuf to service calls and back
//! (`super::convert`), map errors to status codes. No decisions are made here.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Caller};
use super::convert;
use crate::pb;
use crate::pb::intent_service_server::IntentService;
use crate::service::Service;

pub struct IntentApi {
    pub service: Arc<Service>,
    pub auth: Arc<Authenticator>,
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
        let req = convert::classify_request(request.into_inner());
        who.check_bot(&req.bot_id)?;
        let r = self.service.classify(&req).await?;
        Ok(Response::new(convert::classify_response(r)))
    }

    async fn classify_batch(
        &self,
        request: Request<pb::ClassifyBatchRequest>,
    ) -> Result<Response<pb::ClassifyBatchResponse>, Status> {
        let who = caller(&self.auth, &request)?;
        let reqs: Vec<_> = request
            .into_inner()
            .requests
            .into_iter()
            .map(convert::classify_request)
            .collect();
        for r in &reqs {
            who.check_bot(&r.bot_id)?;
        }
        let results = self.service.classify_batch(&reqs).await?;
        Ok(Response::new(pb::ClassifyBatchResponse {
            responses: results
                .into_iter()
                .map(convert::classify_response)
                .collect(),
        }))
    }

    async fn handle_event(
        &self,
        request: Request<pb::Event>,
    ) -> Result<Response<pb::Decision>, Status> {
        let who = caller(&self.auth, &request)?;
        let ev = convert::event_request(request.into_inner());
        who.check_bot(&ev.bot_id)?;
        let d = self.service.handle_event(&ev).await?;
        Ok(Response::new(convert::event_decision(d)))
    }

    type SubscribeStream = OutboundStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = caller(&self.auth, &request)?;
        let req = request.into_inner();
        who.check_bot(&req.bot_id)?;
        let rx = self.service.subscribe(&req.bot_id, req.chat_ids)?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|item| Ok(convert::outbound(&item)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let who = caller(&self.auth, &request)?;
        let req = convert::feedback_request(request.into_inner());
        who.check_bot(&req.bot_id)?;
        let recorded = self.service.feedback(&req).await?;
        Ok(Response::new(pb::FeedbackResponse { recorded }))
    }

    async fn report_human_reply(
        &self,
        request: Request<pb::HumanReplyRequest>,
    ) -> Result<Response<pb::HumanReplyResponse>, Status> {
        let who = caller(&self.auth, &request)?;
        let req = convert::human_reply_request(request.into_inner());
        who.check_bot(&req.bot_id)?;
        let recorded = self.service.human_reply(&req).await?;
        Ok(Response::new(pb::HumanReplyResponse { recorded }))
    }

    async fn get_stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let who = caller(&self.auth, &request)?;
        let req = convert::stats_query(request.into_inner());
        who.check_bot(&req.bot_id)?;
        let report = self.service.stats(&req).await?;
        Ok(Response::new(convert::stats_response(&report)))
    }
}
