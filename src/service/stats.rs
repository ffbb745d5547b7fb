//! GetStats: operator rates and A/B reports over the log, and the same rates per time bucket
//! (the console's charts).

use super::validate::{self, InvalidField};
use super::{Service, ServiceError};
use crate::store::series::SeriesQuery;
use crate::store::stats::{Rates, StatsQuery, StatsReport};
use crate::store::StoreError;

impl Service {
    /// The queries run on the blocking pool: a long window must not stall the runtime threads
    /// that answer Classify.
    pub async fn stats(&self, req: &StatsQuery) -> Result<StatsReport, ServiceError> {
        self.observed("GetStats", self.stats_inner(req)).await
    }

    async fn stats_inner(&self, req: &StatsQuery) -> Result<StatsReport, ServiceError> {
        self.check_bot(&req.bot_id)?;
        validate::check_id("chat_id", &req.chat_id, false, &self.settings.limits)?;
        validate::check_id("experiment", &req.experiment, false, &self.settings.limits)?;
        let storage = self
            .storage
            .clone()
            .ok_or_else(|| ServiceError::FailedPrecondition("the store is disabled".into()))?;
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
        .map_err(|e| ServiceError::Internal(format!("stats query crashed: {e}")))?;
        // A bad window (from after to, negative) is the caller's mistake, not ours.
        answer.map_err(|e| query_error(e, "from_ms/to_ms"))
    }

    /// The rates of each bucket of `req` (one grouped store query, not one per bucket), with
    /// the playbook's human-share target of the bot or group beside each.
    pub async fn stats_series(&self, req: &SeriesQuery) -> Result<Vec<Rates>, ServiceError> {
        self.observed("GetStatsSeries", self.stats_series_inner(req))
            .await
    }

    async fn stats_series_inner(&self, req: &SeriesQuery) -> Result<Vec<Rates>, ServiceError> {
        self.check_bot(&req.bot_id)?;
        validate::check_id("chat_id", &req.chat_id, false, &self.settings.limits)?;
        let storage = self
            .storage
            .clone()
            .ok_or_else(|| ServiceError::FailedPrecondition("the store is disabled".into()))?;
        let target = self
            .playbook
            .config()
            .settings(&req.bot_id, &req.chat_id)
            .handoff
            .human_share_target;
        let req = req.clone();
        let answer = tokio::task::spawn_blocking(move || storage.stats_series(&req, target))
            .await
            .map_err(|e| ServiceError::Internal(format!("stats series query crashed: {e}")))?;
        answer.map_err(|e| query_error(e, "buckets"))
    }
}

/// A store error of a stats query: what the store calls invalid is the caller's `field`.
fn query_error(e: StoreError, field: &str) -> ServiceError {
    match e {
        StoreError::Invalid(problem) => InvalidField {
            field: field.into(),
            problem,
        }
        .into(),
        e => ServiceError::Internal(format!("store: {e}")),
    }
}
