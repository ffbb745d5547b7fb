//! What replicas that all serve (`leader.followers: serve`) share in PostgreSQL: the
//! playbook's state ([`PgState`]: versioned rows, so a spacing slot or a cooldown is reserved
//! by exactly one of two replicas deciding at the same moment) and the outbox of proactive
//! sends ([`PgOutbox`]), on one pool.
//!
//! Proactive planning commits its state change and queues the sends it planned in one
//! transaction, so a send is neither lost nor planned twice whichever replica plans (only the
//! lease holder does, to avoid contention, but correctness does not rest on that).

use std::sync::Arc;

use async_trait::async_trait;

use super::crypto::Keyring;
use super::pg::{store_err, Pg, PgSettings};
use super::pg_outbox::{OutboxBounds, PgOutbox};
use super::pg_state::PgState;
use super::postgres::MIGRATIONS;
use super::StoreError;
use crate::policy::compliance::{ReviewError, ReviewItem, ReviewVerdict};
use crate::policy::state::{
    Decide, DecideDue, Decided, DroppedSend, DueView, PlanDue, PlannedSends, PlaybookState, Scope,
    StateChange, StateError, StateView, SweepLimits, MAX_ATTEMPTS,
};
use crate::policy::state_memory::{OnDiscard, StateLimits};

/// See the module doc.
#[derive(Debug)]
pub struct SharedState {
    state: PgState,
    outbox: Arc<PgOutbox>,
}

fn backend(e: StoreError) -> StateError {
    StateError::Backend(e.to_string())
}

impl SharedState {
    /// Connects one pool (waiting for the server, applying the migrations) for the state and
    /// the outbox. The store (`PgStore::open`) must have opened this database first: it makes
    /// the pseudonym secret. Blocking: call at start.
    pub fn open(
        url: &str,
        settings: &PgSettings,
        keyring: Arc<Keyring>,
        limits: StateLimits,
        on_discard: Option<OnDiscard>,
        bounds: OutboxBounds,
    ) -> Result<SharedState, StoreError> {
        let pg = Arc::new(Pg::connect(url, settings, MIGRATIONS)?);
        let state = PgState::with_pool(pg.clone(), keyring.clone(), limits, on_discard)?;
        let pseudonyms = state.pseudonyms().clone();
        let outbox = Arc::new(PgOutbox::new(pg, keyring, pseudonyms, bounds));
        Ok(SharedState { state, outbox })
    }

    pub fn outbox(&self) -> Arc<PgOutbox> {
        self.outbox.clone()
    }

    /// One attempt: the state change and the sends in one transaction.
    async fn commit_with_sends(
        &self,
        changes: Vec<StateChange>,
        sends: Vec<crate::policy::scheduler::OutboundItem>,
        now_ms: i64,
    ) -> Result<PlannedSends, StateError> {
        let (state, outbox) = (self.state.clone(), self.outbox.clone());
        let pg = self.state.pg().clone();
        let (discards, drops, n) = self
            .state
            .pg()
            .run(async move {
                let mut client = pg.client().await.map_err(backend)?;
                let tx = client
                    .transaction()
                    .await
                    .map_err(|e| backend(store_err(e)))?;
                // On an error the transaction is dropped, which rolls it back.
                let discards = state.commit_in(&tx, changes).await?;
                let drops = outbox.push_in(&tx, &sends, now_ms).await.map_err(backend)?;
                tx.commit().await.map_err(|e| backend(store_err(e)))?;
                Ok::<_, StateError>((discards, drops, sends.len()))
            })
            .await
            .map_err(backend)??;
        self.state.report(&discards);
        Ok(PlannedSends::Queued {
            sends: n,
            overflow: drops.overflow,
            expired: drops.expired,
        })
    }
}

#[async_trait]
impl PlaybookState for SharedState {
    async fn load(&self, scope: &Scope) -> Result<StateView, StateError> {
        self.state.load(scope).await
    }

    async fn load_due(&self, due_by: Option<i64>) -> Result<DueView, StateError> {
        self.state.load_due(due_by).await
    }

    async fn commit(&self, changes: Vec<StateChange>) -> Result<(), StateError> {
        self.state.commit(changes).await
    }

    async fn transact(&self, scope: &Scope, decide: &mut Decide<'_>) -> Result<(), StateError> {
        self.state.transact(scope, decide).await
    }

    async fn transact_due(
        &self,
        due_by: i64,
        decide: &mut DecideDue<'_>,
    ) -> Result<(), StateError> {
        self.state.transact_due(due_by, decide).await
    }

    /// The optimistic loop of `transact_due`, with the planned sends queued in each attempt's
    /// transaction: a conflict rolls back both.
    async fn plan_due(
        &self,
        due_by: i64,
        plan: &mut PlanDue<'_>,
    ) -> Result<PlannedSends, StateError> {
        for _ in 0..MAX_ATTEMPTS {
            let view = self.state.load_due(Some(due_by)).await?;
            let (sends, changes) = plan(view);
            if sends.is_empty() && changes.is_empty() {
                return Ok(PlannedSends::Queued {
                    sends: 0,
                    overflow: 0,
                    expired: 0,
                });
            }
            match self.commit_with_sends(changes, sends, due_by).await {
                Err(StateError::Conflict(_)) => continue,
                other => return other,
            }
        }
        Err(StateError::Contended(MAX_ATTEMPTS))
    }

    async fn review_queue(&self) -> Result<Vec<ReviewItem>, StateError> {
        self.state.review_queue().await
    }

    async fn drain_review_queue(&self) -> Result<Vec<ReviewItem>, StateError> {
        self.state.drain_review_queue().await
    }

    async fn reviews(&self) -> Result<Vec<(u64, ReviewItem)>, StateError> {
        self.state.reviews().await
    }

    async fn decide_review(
        &self,
        id: u64,
        verdict: ReviewVerdict,
    ) -> Result<Result<Decided, ReviewError>, StateError> {
        self.state.decide_review(id, verdict).await
    }

    async fn dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError> {
        self.state.dropped_sends().await
    }

    async fn drain_dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError> {
        self.state.drain_dropped_sends().await
    }

    async fn sweep(&self, now_ms: i64, limits: &SweepLimits) -> Result<(), StateError> {
        self.state.sweep(now_ms, limits).await
    }
}
