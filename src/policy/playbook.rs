//! The playbook facade: one thread-safe object the server calls for every message, event and
//! Subscribe tick. Configuration is swapped atomically on reload; runtime state (spacing,
//! cooldowns, handoffs, pending welcomes, schedule cursors) lives in a [`PlaybookState`] store
//! and survives reloads. Each call reads the rows it needs, runs a pure decision
//! ([`super::decide_message`], [`super::decide_event`], [`super::decide_due`]) and has the
//! store apply the changes atomically. All times come from the injected clock ("now" is the
//! clock's time, not the message's `at_ms`, so `send_after_ms` is relative to the moment of the
//! decision).
//!
//! Message flow in [`Playbook::decide_message`], first match wins:
//! 1. banned word in the text → BLOCK `banned_word` (+ review entry); an intent of
//!    `block_intents` (the shipped playbook: `spam_ads`) → BLOCK with the intent as reason;
//! 2. silent intent → IGNORE `silent_intent`;
//! 3. outside service hours → HANDOFF `off_hours` (off-hours reply once per user per closed period);
//! 4. not understood (`needs_clarification` or no intent) → CLARIFY, or HANDOFF
//!    `handoff:not_understood` when it is the `not_understood_limit`-th time in a row;
//! 5. handoff intent (playbook `handoff.intents`, or `handoff: always` in intents.yml when the
//!    caller passes the catalog) → HANDOFF `handoff:intent` with the expected wait;
//! 6. same user + intent inside the cooldown → IGNORE `cooldown`;
//! 7. reply: attribute rule (`rule:<id>`), else A/B experiment (`ab:<id>`), else `faq`;
//! 8. group spacing: `send_after_ms`, or merged / dropped (see [`super::spacing`]).
//!
//! Then: the first sending decision for a user in a chat carries the automation disclosure in
//! `notices` (unless the intent is one of `disclosure.answered_by`, whose reply already says
//! it), and a matching personal push may be queued for `due()`.

use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::compliance::ReviewItem;
use super::config::OperatorConfig;
use super::decide_due::{next_due, plan_due};
use super::decide_event::decide_event;
use super::decide_message::{decide_cleared, decide_message, precheck};
use super::decision::{Decider, Work};
use super::events::{EventDecision, EventInput};
use super::handoff::OpenHandoff;
use super::scheduler::OutboundItem;
use super::state::{
    GroupKey, PlannedSends, PlaybookState, Scope, StateChange, StateError, StateView, SweepLimits,
};
use super::state_memory::MemoryState;
use crate::clock::SharedClock;
use crate::data::FileError;
use crate::engine::catalog::Catalog;
use crate::types::{Classification, MessageContext, PolicyDecision};

pub use super::state::DroppedSend;

const SWEEP_EVERY_MS: i64 = 10 * 60_000;
const SWEEP_LIMITS: SweepLimits = SweepLimits {
    user_idle_ms: 30 * 24 * 3_600_000,
    cooldown_max_age_ms: 2 * 24 * 3_600_000,
    chat_idle_ms: 30 * 24 * 3_600_000,
};

/// Where the playbook reads its operator config on every call: the service's live operator
/// snapshot (so one swap there changes what every decision sees), or a config of its own.
pub trait ConfigSource: Send + Sync {
    fn current(&self) -> Arc<OperatorConfig>;
}

impl ConfigSource for ArcSwap<OperatorConfig> {
    fn current(&self) -> Arc<OperatorConfig> {
        self.load_full()
    }
}

/// The operator playbook (see module doc).
pub struct Playbook {
    pub(super) clock: SharedClock,
    pub(super) seed: u64,
    config: Arc<dyn ConfigSource>,
    pub(super) state: Arc<dyn PlaybookState>,
    last_sweep_ms: AtomicI64,
}

impl std::fmt::Debug for Playbook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playbook")
            .field("seed", &self.seed)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Run a decision in a store transaction and return what the decision said. `decide` may run
/// more than once (a store that retries on conflict); the last run's answer is the one kept.
pub(super) async fn transact<T: Send>(
    state: &dyn PlaybookState,
    scope: &Scope,
    mut decide: impl FnMut(StateView) -> (T, Vec<StateChange>) + Send,
) -> Result<T, StateError> {
    let mut out = None;
    state
        .transact(scope, &mut |view| {
            let (answer, changes) = decide(view);
            out = Some(answer);
            changes
        })
        .await?;
    out.ok_or_else(|| {
        StateError::Backend("the store committed without running the decision".into())
    })
}

impl Playbook {
    /// A playbook on its own config: `playbook.yml`, `replies.yml`, `banned_words.txt` and
    /// `calendar.yml` from `dir`, checked against the `intents.yml` there; state in memory.
    pub fn load(dir: &Path, clock: SharedClock, seed: u64) -> Result<Playbook, FileError> {
        let catalog = Catalog::load(&dir.join("intents.yml"))?;
        Ok(Self::from_config(
            OperatorConfig::load(dir, &catalog)?,
            clock,
            seed,
        ))
    }

    /// A playbook with its own config and in-memory state.
    pub fn from_config(config: OperatorConfig, clock: SharedClock, seed: u64) -> Playbook {
        Self::new(Arc::new(ArcSwap::from_pointee(config)), clock, seed)
    }

    /// A playbook that reads its config from `config` on every call; state in memory.
    pub fn new(config: Arc<dyn ConfigSource>, clock: SharedClock, seed: u64) -> Playbook {
        Self::with_state(config, clock, seed, Arc::new(MemoryState::new()))
    }

    /// A playbook whose runtime state lives in `state`.
    pub fn with_state(
        config: Arc<dyn ConfigSource>,
        clock: SharedClock,
        seed: u64,
        state: Arc<dyn PlaybookState>,
    ) -> Playbook {
        let now = clock.now_ms();
        Playbook {
            clock,
            seed,
            config,
            state,
            last_sweep_ms: AtomicI64::new(now),
        }
    }

    pub fn config(&self) -> Arc<OperatorConfig> {
        self.config.current()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The store the runtime state lives in.
    pub fn state(&self) -> &Arc<dyn PlaybookState> {
        &self.state
    }

    /// Forget idle users and chats, at most every ten minutes.
    async fn maybe_sweep(&self, now: i64) -> Result<(), StateError> {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now - last < SWEEP_EVERY_MS {
            return Ok(());
        }
        // One caller sweeps; the others go on.
        if self
            .last_sweep_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return Ok(());
        }
        self.state.sweep(now, &SWEEP_LIMITS).await
    }

    // -----------------------------------------------------------------------------------------
    // Messages

    /// Cheap compliance check before the model runs: a banned word → BLOCK (and a review entry).
    /// None means "go on and classify". When this returns a decision, do not call
    /// `decide_message` for the message.
    pub async fn precheck(
        &self,
        ctx: &MessageContext,
    ) -> Result<Option<PolicyDecision>, StateError> {
        self.precheck_on(&self.config(), ctx).await
    }

    /// [`Self::precheck`] on the given config: a caller that already holds an operator
    /// snapshot decides the whole request on it.
    pub async fn precheck_on(
        &self,
        cfg: &OperatorConfig,
        ctx: &MessageContext,
    ) -> Result<Option<PolicyDecision>, StateError> {
        if cfg.banned.find(&ctx.text).is_none() {
            return Ok(None);
        }
        let d = Decider {
            cfg,
            seed: self.seed,
            now: self.clock.now_ms(),
        };
        let scope = Scope::group(GroupKey::new(&ctx.bot_id, &ctx.chat_id));
        transact(&*self.state, &scope, |view| {
            let mut w = Work::new(&scope, view);
            let out = precheck(&d, &mut w, ctx);
            (out, w.into_changes())
        })
        .await
    }

    /// Decide what to do with a classified message. `display_names` maps an intent id to the
    /// name shown to users (for the clarify candidates).
    pub async fn decide_message(
        &self,
        ctx: &MessageContext,
        cls: &Classification,
        display_names: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<PolicyDecision, StateError> {
        self.decide_message_with_catalog(ctx, cls, display_names, &|_: &str| false)
            .await
    }

    /// [`Self::decide_message`] for a server that also has the intent catalog: an intent that
    /// `always_handoff` says is flagged `handoff: always` in intents.yml goes to a human in every
    /// bot and group, on top of the playbook's own `handoff.intents`.
    pub async fn decide_message_with_catalog(
        &self,
        ctx: &MessageContext,
        cls: &Classification,
        display_names: &(dyn Fn(&str) -> String + Sync),
        always_handoff: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<PolicyDecision, StateError> {
        self.decide_message_on(&self.config(), ctx, cls, display_names, always_handoff)
            .await
    }

    /// [`Self::decide_message_with_catalog`] on the given config (see [`Self::precheck_on`]).
    pub async fn decide_message_on(
        &self,
        cfg: &OperatorConfig,
        ctx: &MessageContext,
        cls: &Classification,
        display_names: &(dyn Fn(&str) -> String + Sync),
        always_handoff: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<PolicyDecision, StateError> {
        self.decide_on(cfg, ctx, cls, display_names, always_handoff, false)
            .await
    }

    /// [`Self::decide_message_on`] for a blocked message a reviewer approved: decided as if
    /// compliance had let it through.
    pub async fn decide_approved_on(
        &self,
        cfg: &OperatorConfig,
        ctx: &MessageContext,
        cls: &Classification,
        display_names: &(dyn Fn(&str) -> String + Sync),
        always_handoff: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<PolicyDecision, StateError> {
        self.decide_on(cfg, ctx, cls, display_names, always_handoff, true)
            .await
    }

    async fn decide_on(
        &self,
        cfg: &OperatorConfig,
        ctx: &MessageContext,
        cls: &Classification,
        display_names: &(dyn Fn(&str) -> String + Sync),
        always_handoff: &(dyn Fn(&str) -> bool + Sync),
        approved: bool,
    ) -> Result<PolicyDecision, StateError> {
        let catalog_handoff = !cls.intent.is_empty() && always_handoff(&cls.intent);
        let now = self.clock.now_ms();
        self.maybe_sweep(now).await?;
        let d = Decider {
            cfg,
            seed: self.seed,
            now,
        };
        let ttl = cfg.settings(&ctx.bot_id, &ctx.chat_id).handoff.open_ttl_ms;
        let scope = Scope::user(
            GroupKey::new(&ctx.bot_id, &ctx.chat_id),
            &ctx.user.id,
            Some(now.saturating_sub(ttl)),
        );
        transact(&*self.state, &scope, |view| {
            let mut w = Work::new(&scope, view);
            let out = if approved {
                decide_cleared(&d, &mut w, ctx, cls, display_names, catalog_handoff)
            } else {
                decide_message(&d, &mut w, ctx, cls, display_names, catalog_handoff)
            };
            (out, w.into_changes())
        })
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Events

    pub async fn handle_event(&self, ev: &EventInput) -> Result<EventDecision, StateError> {
        let cfg = self.config();
        let now = self.clock.now_ms();
        self.maybe_sweep(now).await?;
        let d = Decider {
            cfg: &cfg,
            seed: self.seed,
            now,
        };
        let scope = Scope::user(GroupKey::new(&ev.bot_id, &ev.chat_id), &ev.user.id, None);
        transact(&*self.state, &scope, |view| {
            let mut w = Work::new(&scope, view);
            let out = decide_event(&d, &mut w, ev);
            (out, w.into_changes())
        })
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Proactive sends

    /// Proactive messages whose time has come, each returned exactly once across calls, in time
    /// order. A send that would break group spacing is deferred to its slot and returned then.
    pub async fn due(&self, now_ms: i64) -> Result<Vec<OutboundItem>, StateError> {
        match self.plan_due(now_ms).await? {
            PlannedSends::ToQueue(items) => Ok(items),
            PlannedSends::Queued { .. } => Err(StateError::Backend(
                "this store queues its proactive sends itself: call plan_due".into(),
            )),
        }
    }

    /// Plans what is due by `now_ms`: the sends come back for the caller's outbox, or the
    /// store queued them itself with the state change (see [`PlaybookState::plan_due`]).
    pub async fn plan_due(&self, now_ms: i64) -> Result<PlannedSends, StateError> {
        let cfg = self.config();
        let d = Decider {
            cfg: &cfg,
            seed: self.seed,
            now: now_ms,
        };
        let mut planned = false;
        let out = self
            .state
            .plan_due(now_ms, &mut |view| {
                planned = true;
                plan_due(&d, view)
            })
            .await?;
        if !planned {
            return Err(StateError::Backend(
                "the store committed without running the plan".into(),
            ));
        }
        Ok(out)
    }

    /// When `due()` will next have something (None: nothing planned). A time at or before now
    /// means "call `due()` now". A Subscribe loop can sleep until then, but should also wake
    /// when a message or event arrives (it may queue a welcome or push) and when the clock is
    /// set by hand.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, StateError> {
        let cfg = self.config();
        let d = Decider {
            cfg: &cfg,
            seed: self.seed,
            now: self.clock.now_ms(),
        };
        let view = self.state.load_due(None).await?;
        Ok(next_due(&d, &view))
    }

    // -----------------------------------------------------------------------------------------
    // Human share, review queue, reports

    /// A human agent answered in a group: counts toward the human share, closes handoff
    /// `handoff_id` (None: the oldest open one) there, and counts as activity (the group is not
    /// silent). Returns the handoff it closed.
    pub async fn record_human_reply(
        &self,
        bot_id: &str,
        chat_id: &str,
        handoff_id: Option<u64>,
    ) -> Result<Option<OpenHandoff>, StateError> {
        let now = self.clock.now_ms();
        let ttl = self.config().settings(bot_id, chat_id).handoff.open_ttl_ms;
        let scope = Scope::group(GroupKey::new(bot_id, chat_id));
        transact(&*self.state, &scope, |view| {
            let mut w = Work::new(&scope, view);
            // The reply closes the oldest handoff still open, not one that already expired.
            w.group.handoffs.expire(now, ttl);
            let closed = w.group.handoffs.record_human_reply(handoff_id);
            super::scheduler::touch(&mut w.group.timers, "", now, true);
            (closed, w.into_changes())
        })
        .await
    }

    /// (human share, target) for a group since start: (handoffs + human replies) / messages.
    pub async fn human_share(&self, bot_id: &str, chat_id: &str) -> Result<(f64, f64), StateError> {
        let target = self
            .config()
            .settings(bot_id, chat_id)
            .handoff
            .human_share_target;
        let view = self
            .state
            .load(&Scope::group(GroupKey::new(bot_id, chat_id)))
            .await?;
        Ok((view.group.row.handoffs.share(), target))
    }

    /// Blocked messages waiting for review (PII already redacted), oldest first.
    pub async fn review_queue(&self) -> Result<Vec<ReviewItem>, StateError> {
        self.state.review_queue().await
    }

    /// Take the review entries (for the server to persist).
    pub async fn drain_review_queue(&self) -> Result<Vec<ReviewItem>, StateError> {
        self.state.drain_review_queue().await
    }

    /// Sends the playbook decided not to make (spacing queue full, banned word at render).
    pub async fn dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError> {
        self.state.dropped_sends().await
    }

    pub async fn drain_dropped_sends(&self) -> Result<Vec<DroppedSend>, StateError> {
        self.state.drain_dropped_sends().await
    }
}

#[cfg(test)]
#[path = "playbook_tests.rs"]
mod tests;
