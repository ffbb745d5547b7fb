//! What every pure decision shares: the [`Decider`] (operator config, seed and "now": nothing
//! else) and the [`Work`] copy of the state rows a decision reads and changes. A decision
//! function mutates its `Work`; [`Work::into_changes`] turns that into the
//! [`StateChange`]s the state store applies atomically. No lock, clock or I/O in here.

use super::ab::Unit;
use super::compliance::ReviewItem;
use super::config::{OperatorConfig, Settings};
use super::handoff::{expected_wait_minutes, HandoffConfig, HandoffOpening};
use super::hash::seeded;
use super::hours::local;
use super::scheduler::{self, Job, JobContent, OutboundKind};
use super::spacing::{Priority, SpacingOutcome};
use super::state::{
    DroppedSend, GroupKey, GroupRow, Scope, StateChange, StateView, UserKey, UserRow, Versioned,
};
use super::templates::{Template, Vars};
use crate::types::{Action, MessageContext, PolicyDecision, ReplyOut, UserInfo};

pub(crate) fn decision(
    action: Action,
    reply: Option<ReplyOut>,
    reason: impl Into<String>,
) -> PolicyDecision {
    PolicyDecision {
        action,
        reply,
        send_after_ms: 0,
        reason: reason.into(),
        notices: Vec::new(),
    }
}

/// Who a decision is for, for spacing, cooldown and reporting.
pub(crate) struct Target<'a> {
    pub bot: &'a str,
    pub chat: &'a str,
    pub user: &'a str,
    pub source_id: &'a str,
}

/// The rows of one decision, as the decision changes them.
#[derive(Debug, Clone)]
pub struct Work {
    group_key: GroupKey,
    user_key: Option<UserKey>,
    base_group: Versioned<GroupRow>,
    base_user: Option<Versioned<UserRow>>,
    pub group: GroupRow,
    /// The scope's user (a scratch default row when the scope has none).
    pub user: UserRow,
    /// Open handoffs of the bot in its other chats.
    pub bot_open_handoffs: usize,
    appended: Vec<StateChange>,
}

impl Work {
    pub fn new(scope: &Scope, view: StateView) -> Work {
        let user_key = scope.user_id.as_ref().map(|u| scope.group.user(u));
        Work {
            group_key: scope.group.clone(),
            user_key,
            group: view.group.row.clone(),
            user: view
                .user
                .as_ref()
                .map(|u| u.row.clone())
                .unwrap_or_default(),
            base_group: view.group,
            base_user: view.user,
            bot_open_handoffs: view.bot_open_handoffs,
            appended: Vec::new(),
        }
    }

    /// The writes: each changed row (naming the version it was read at), then the appends.
    pub fn into_changes(self) -> Vec<StateChange> {
        let mut out = Vec::new();
        if self.group != self.base_group.row {
            out.push(StateChange::PutGroup {
                key: self.group_key,
                expected_version: self.base_group.version,
                row: self.group,
            });
        }
        if let Some(key) = self.user_key {
            let base = self.base_user.unwrap_or_default();
            if self.user != base.row {
                out.push(StateChange::PutUser {
                    key,
                    expected_version: base.version,
                    row: self.user,
                });
            }
        }
        out.extend(self.appended);
        out
    }

    pub fn add_review(&mut self, item: ReviewItem) {
        self.appended.push(StateChange::AddReview(item));
    }

    pub fn add_dropped(&mut self, d: DroppedSend) {
        self.appended.push(StateChange::AddDropped(d));
    }

    pub fn schedule(&mut self, job: Job) {
        self.appended.push(StateChange::Schedule(job));
    }

    /// Open a handoff in this group; returns the wait to announce (counted before it opens).
    pub fn open_handoff(&mut self, now: i64, cfg: &HandoffConfig, who: HandoffOpening<'_>) -> u32 {
        self.group.handoffs.expire(now, cfg.open_ttl_ms);
        let here = self.group.handoffs.open_count(now, cfg.open_ttl_ms);
        let wait = expected_wait_minutes(self.bot_open_handoffs + here, cfg);
        self.group.handoffs.open(now, who, wait);
        wait
    }

    /// The group's name as last reported.
    pub fn chat_name(&self) -> &str {
        self.group.timers.as_ref().map_or("", |t| t.name.as_str())
    }

    /// The group's display name: the one the caller sent, else the last one seen.
    pub fn group_name(&self, given: &str) -> String {
        if given.is_empty() {
            self.chat_name().to_string()
        } else {
            given.to_string()
        }
    }

    /// Count one interaction of the scope's user; returns their interactions in the window,
    /// counted up to `keep` (the highest threshold a condition compares with).
    pub fn record_activity(&mut self, now: i64, window_ms: i64, keep: u32) -> u32 {
        let u = &mut self.user.profile;
        u.last_seen_ms = now;
        u.activity.record(now, window_ms, keep);
        u.activity.count(now, window_ms)
    }
}

/// The inputs every decision may read besides the state: the operator config, the seed for
/// reproducible randomness, and the time of the decision.
#[derive(Debug, Clone, Copy)]
pub struct Decider<'a> {
    pub cfg: &'a OperatorConfig,
    pub seed: u64,
    pub now: i64,
}

impl Decider<'_> {
    pub(crate) fn vars(&self, s: &Settings, nickname: &str, group_name: &str) -> Vars {
        let lt = local(s.timezone, self.now);
        // Nicknames and group names are user-chosen: cleaned (control / bidi characters,
        // mentions, PII such as "王姐13812345678", length) before a reply posted to the whole
        // group repeats them; empty ones render as the operator's fallback.
        let v = &self.cfg.replies.variables;
        Vars {
            fallbacks: v.fallbacks.clone(),
            nickname: v.nickname(nickname),
            group_name: v.group_name(group_name),
            greeting: self.cfg.replies.greetings.at(lt.time()).to_string(),
            festival: self.cfg.calendar.greeting_on(lt.date()).to_string(),
            ..Default::default()
        }
    }

    /// A reply from set `key` for `unit`. When an experiment covers `key`, the unit's sticky
    /// variant (`variant_id` `<experiment>/<variant>`); else, or when that variant renders into
    /// a banned word, a variant of `style` picked by `pick` (see `ReplyLibrary::choose`).
    pub(crate) fn choose_picked(
        &self,
        s: &Settings,
        key: &str,
        style: &str,
        unit: Unit<'_>,
        pick: u64,
        vars: &Vars,
    ) -> Option<ReplyOut> {
        let (replies, banned) = (&self.cfg.replies, &self.cfg.banned);
        let render = |tp: &Template| tp.render(vars);
        if let Some(exp) = s.experiment_for(key) {
            let vid = exp.variant_for(&unit);
            let rendered = replies
                .variant(key, vid)
                .and_then(|v| replies.render_variant(key, v, banned, &render));
            if let Some(mut r) = rendered {
                r.variant_id = format!("{}/{vid}", exp.id);
                r.experiment = exp.id.clone();
                return Some(r);
            }
        }
        replies.choose(key, style, pick, banned, &render)
    }

    /// [`Self::choose_picked`] for a reply to one user, picked by (seed, user, key).
    pub(crate) fn choose(
        &self,
        s: &Settings,
        key: &str,
        style: &str,
        user: &str,
        vars: &Vars,
    ) -> Option<ReplyOut> {
        let pick = seeded(self.seed, &["reply", user, key]);
        self.choose_picked(s, key, style, Unit::User(user), pick, vars)
    }

    /// Block an inbound message: counts it, keeps the group known, queues it for review.
    pub(crate) fn block(
        &self,
        w: &mut Work,
        ctx: &MessageContext,
        word: &str,
        reason: &str,
    ) -> PolicyDecision {
        w.group.handoffs.note_message();
        scheduler::touch(&mut w.group.timers, &ctx.chat_name, self.now, false);
        w.add_review(ReviewItem {
            at_ms: self.now,
            bot_id: ctx.bot_id.clone(),
            chat_id: ctx.chat_id.clone(),
            user_id: ctx.user.id.clone(),
            message_id: ctx.message_id.clone(),
            text: crate::pii::redact_pii(&ctx.text),
            matched: word.to_string(),
            reason: reason.to_string(),
            verdict: None,
        });
        decision(Action::Block, None, reason)
    }

    /// Apply group spacing to a decision that sends `reply`: reserves the group's next slot.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish(
        &self,
        w: &mut Work,
        s: &Settings,
        t: &Target<'_>,
        action: Action,
        reply: Option<ReplyOut>,
        reason: &str,
        merge_key: Option<&str>,
        priority: Priority,
    ) -> PolicyDecision {
        let now = self.now;
        let Some(reply) = reply else {
            return decision(action, None, reason);
        };
        let roll = seeded(
            self.seed,
            &["jitter", t.bot, t.chat, t.source_id, &now.to_string()],
        );
        match w
            .group
            .spacing
            .plan(now, &s.spacing, merge_key, priority, roll)
        {
            SpacingOutcome::Send { at_ms } => {
                let mut d = decision(action, Some(reply), reason);
                d.send_after_ms = at_ms - now;
                d
            }
            SpacingOutcome::Merged { at_ms } => {
                let mut d = decision(Action::Ignore, None, "merged:spacing");
                d.send_after_ms = at_ms - now;
                d
            }
            SpacingOutcome::Dropped => {
                w.add_dropped(DroppedSend {
                    at_ms: now,
                    bot_id: t.bot.to_string(),
                    chat_id: t.chat.to_string(),
                    user_id: t.user.to_string(),
                    source_id: t.source_id.to_string(),
                    key: merge_key.unwrap_or(reason).to_string(),
                    reason: "dropped:spacing_queue_full".into(),
                });
                decision(Action::Ignore, None, "dropped:spacing_queue_full")
            }
        }
    }

    /// Queue at most one personal push for a user who just talked, if a push rule matches and
    /// their frequency tier allows another push.
    pub(crate) fn maybe_push(
        &self,
        w: &mut Work,
        s: &Settings,
        chat_name: &str,
        user: &UserInfo,
        interactions: u32,
    ) {
        let now = self.now;
        let interval = s.frequency.push_interval_ms(interactions);
        let u = &mut w.user.profile;
        let Some(rule) = s.pushes.iter().find(|p| {
            p.when.matches(user, interactions)
                && u.last_push
                    .get(&p.id)
                    .is_none_or(|&last| now - last >= interval)
        }) else {
            return;
        };
        u.last_push.insert(rule.id.clone(), now);
        let job = Job {
            bot_id: w.group_key.bot_id.clone(),
            chat_id: w.group_key.chat_id.clone(),
            chat_name: chat_name.to_string(),
            kind: OutboundKind::DelayedReply,
            rule_id: format!("push:{}", rule.id),
            at_ms: now + rule.delay_ms,
            content: JobContent::Render {
                key: rule.reply.clone(),
                user: Some(user.clone()),
                nickname: None,
                days_left: None,
                event_name: String::new(),
            },
            user_ids: vec![user.id.clone()],
            slot_reserved: false,
        };
        w.schedule(job);
    }
}
