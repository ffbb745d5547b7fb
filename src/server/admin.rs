//! AdminService, for the admin token only: reload, status and the manual clock; the review
//! queue and the handoff desk (`service::desk`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::convert;
use super::health;
use crate::pb;
use crate::pb::admin_service_server::AdminService;
use crate::service::Service;

pub struct AdminApi {
    pub service: Arc<Service>,
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
            let hash = self.service.reload_operator("admin-rpc").await?;
            messages.push(format!("operator files {hash}"));
        }
        if model {
            let v = self.service.reload_model("admin-rpc").await?;
            health::sync(&self.health, &self.service).await;
            messages.push(format!("model {v}"));
        }
        Ok(Response::new(pb::ReloadResponse {
            ok: true,
            model_version: self.service.model_version(),
            message: format!("reloaded: {}", messages.join(", ")),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.auth.admin(&request)?;
        Ok(Response::new(pb::StatusResponse {
            model_version: self.service.model_version(),
            model_loaded: self.service.model_loaded(),
            in_flight: self.service.in_flight() as u32,
            served: self.service.served(),
            config_hash: self.service.config_hash(),
        }))
    }

    async fn set_clock(
        &self,
        request: Request<pb::SetClockRequest>,
    ) -> Result<Response<pb::SetClockResponse>, Status> {
        self.auth.admin(&request)?;
        let now_ms = self
            .service
            .set_clock(request.into_inner().now_ms, "admin-rpc")
            .await?;
        Ok(Response::new(pb::SetClockResponse { now_ms }))
    }

    async fn list_reviews(
        &self,
        request: Request<pb::ListReviewsRequest>,
    ) -> Result<Response<pb::ListReviewsResponse>, Status> {
        self.auth.admin(&request)?;
        let req = request.into_inner();
        let items = self.service.list_reviews(!req.include_decided).await?;
        Ok(Response::new(pb::ListReviewsResponse {
            items: items.iter().map(convert::review_entry).collect(),
        }))
    }

    async fn approve_review(
        &self,
        request: Request<pb::ReviewDecisionRequest>,
    ) -> Result<Response<pb::ReviewDecisionResponse>, Status> {
        self.auth.admin(&request)?;
        let req = request.into_inner();
        let o = self
            .service
            .approve_review(req.id, req.allow_word, &req.by)
            .await?;
        Ok(Response::new(convert::review_outcome(&o)))
    }

    async fn confirm_review(
        &self,
        request: Request<pb::ReviewDecisionRequest>,
    ) -> Result<Response<pb::ReviewDecisionResponse>, Status> {
        self.auth.admin(&request)?;
        let req = request.into_inner();
        let o = self.service.confirm_review(req.id, &req.by).await?;
        Ok(Response::new(convert::review_outcome(&o)))
    }

    async fn list_handoffs(
        &self,
        request: Request<pb::ListHandoffsRequest>,
    ) -> Result<Response<pb::ListHandoffsResponse>, Status> {
        self.auth.admin(&request)?;
        let items = self
            .service
            .list_handoffs(&request.into_inner().bot_id)
            .await?;
        Ok(Response::new(pb::ListHandoffsResponse {
            items: items.iter().map(convert::handoff_entry).collect(),
        }))
    }

    async fn claim_handoff(
        &self,
        request: Request<pb::HandoffActionRequest>,
    ) -> Result<Response<pb::HandoffActionResponse>, Status> {
        self.auth.admin(&request)?;
        let r = request.into_inner();
        let h = self
            .service
            .claim_handoff(&r.bot_id, &r.chat_id, r.id, &r.agent)
            .await?;
        Ok(Response::new(convert::handoff_action(
            &r.bot_id, &r.chat_id, h,
        )))
    }

    async fn close_handoff(
        &self,
        request: Request<pb::HandoffActionRequest>,
    ) -> Result<Response<pb::HandoffActionResponse>, Status> {
        self.auth.admin(&request)?;
        let r = request.into_inner();
        let h = self
            .service
            .close_handoff(&r.bot_id, &r.chat_id, r.id, &r.agent)
            .await?;
        Ok(Response::new(convert::handoff_action(
            &r.bot_id, &r.chat_id, h,
        )))
    }

    async fn list_inbox(
        &self,
        request: Request<pb::InboxRequest>,
    ) -> Result<Response<pb::InboxResponse>, Status> {
        self.auth.admin(&request)?;
        let q = convert::inbox_query(request.into_inner());
        let groups = self.service.label_inbox(&q).await?;
        Ok(Response::new(convert::inbox(groups)))
    }

    async fn label_message(
        &self,
        request: Request<pb::LabelRequest>,
    ) -> Result<Response<pb::LabelResponse>, Status> {
        self.auth.admin(&request)?;
        let r = request.into_inner();
        let l = self
            .service
            .assign_label(r.conversation_id, &r.intent, &r.by)
            .await?;
        Ok(Response::new(convert::label(l)))
    }

    async fn export_labels(
        &self,
        request: Request<pb::ExportLabelsRequest>,
    ) -> Result<Response<pb::ExportLabelsResponse>, Status> {
        self.auth.admin(&request)?;
        self.service.labels_here()?;
        let (yaml, n) = self.service.export_labels(&request.into_inner().bot_id);
        Ok(Response::new(pb::ExportLabelsResponse {
            yaml,
            examples: u32::try_from(n).unwrap_or(u32::MAX),
        }))
    }
}
