//! The playbook facade: one thread-safe object the server calls for every message, event and
//! Subscribe tick. Configuration is swapped atomically on reload; runtime state (spacing,
//! cooldowns, handoffs, pending welcomes, schedule cursors) lives behind one mutex and survives
//! reloads. All times come from the injected clock ("now" is the clock's time, not the
//! message's `at_ms`, so `send_after_ms` is relative to the moment of the decision).
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
//! `notices` (unless the intent is one of `disclosure.answered_by`, whose reply already says it), and a matching personal push may be queued for `due()`.

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use super::attributes::Activity;
use super::compliance::ReviewItem;
use super::config::{OperatorConfig, Settings};
use super::cooldown::Cooldowns;
use super::events::{EventDecision, EventInput, EventKind, JoinOutcome, WelcomeMerger};
use super::handoff::HandoffTracker;
use super::hash::seeded;
use super::hours::local;
use super::scheduler::{Job, JobContent, OutboundItem, OutboundKind, Scheduler};
use super::spacing::{GroupSpacing, Priority, SpacingOutcome};
use super::templates::{Template, Vars};
use crate::clock::SharedClock;
use crate::data::FileError;
use crate::engine::catalog::Catalog;
use crate::types::{Action, Classification, MessageContext, PolicyDecision, ReplyOut, UserInfo};

/// Review entries kept in memory before the oldest are discarded; the server drains them.
const REVIEW_CAP: usize = 100_000;
const DROPPED_CAP: usize = 100_000;
const SWEEP_EVERY_MS: i64 = 10 * 60_000;
const USER_IDLE_MS: i64 = 30 * 24 * 3_600_000;

/// A send that the playbook decided not to make, so it is reported instead of silently lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedSend {
    pub at_ms: i64,
    pub bot_id: String,
    pub chat_id: String,
    pub user_id: String,
    /// Message or event id; for proactive sends the rule id.
    pub source_id: String,
    /// Intent, reply key or rule id.
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Default)]
struct UserState {
    disclosed: bool,
    activity: Activity,
    last_push: HashMap<String, i64>,
    /// The opening time for which this user already got the off-hours reply.
    off_hours_notified_for: Option<i64>,
    last_seen_ms: i64,
}

type ChatKey = (String, String);
type UserKey = (String, String, String);

#[derive(Debug, Default)]
struct State {
    spacing: HashMap<ChatKey, GroupSpacing>,
    cooldowns: Cooldowns,
    handoffs: HandoffTracker,
    welcomes: WelcomeMerger,
    scheduler: Scheduler,
    users: HashMap<UserKey, UserState>,
    review: VecDeque<ReviewItem>,
    reviewed: HashSet<UserKey>,
    dropped: VecDeque<DroppedSend>,
    last_sweep_ms: i64,
}

impl State {
    fn user(&mut self, bot: &str, chat: &str, user: &str) -> &mut UserState {
        self.users
            .entry((bot.to_string(), chat.to_string(), user.to_string()))
            .or_default()
    }

    fn sweep(&mut self, now: i64) {
        if now - self.last_sweep_ms < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep_ms = now;
        self.cooldowns.sweep(now, 2 * 24 * 3_600_000);
        self.users
            .retain(|_, u| now - u.last_seen_ms < USER_IDLE_MS);
        self.scheduler.sweep(now, USER_IDLE_MS);
        if self.reviewed.len() > REVIEW_CAP {
            self.reviewed.clear();
        }
    }

    fn add_review(&mut self, item: ReviewItem) {
        let key = (
            item.bot_id.clone(),
            item.chat_id.clone(),
            item.message_id.clone(),
        );
        if !item.message_id.is_empty() && !self.reviewed.insert(key) {
            return; // precheck already queued this message
        }
        if self.review.len() >= REVIEW_CAP {
            self.review.pop_front();
        }
        self.review.push_back(item);
    }

    fn add_dropped(&mut self, d: DroppedSend) {
        if self.dropped.len() >= DROPPED_CAP {
            self.dropped.pop_front();
        }
        self.dropped.push_back(d);
    }
}

fn decision(action: Action, reply: Option<ReplyOut>, reason: impl Into<String>) -> PolicyDecision {
    PolicyDecision {
        action,
        reply,
        send_after_ms: 0,
        reason: reason.into(),
        notices: Vec::new(),
    }
}

/// Who a decision is for, for spacing, cooldown and reporting.
struct Target<'a> {
    bot: &'a str,
    chat: &'a str,
    user: &'a str,
    source_id: &'a str,
}

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
    clock: SharedClock,
    seed: u64,
    config: Arc<dyn ConfigSource>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Playbook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playbook")
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Playbook {
    /// A playbook on its own config: `playbook.yml`, `replies.yml`, `banned_words.txt` and
    /// `calendar.yml` from `dir`, checked against the `intents.yml` there.
    pub fn load(dir: &Path, clock: SharedClock, seed: u64) -> Result<Playbook, FileError> {
        let catalog = Catalog::load(&dir.join("intents.yml"))?;
        Ok(Self::from_config(
            OperatorConfig::load(dir, &catalog)?,
            clock,
            seed,
        ))
    }

    pub fn from_config(config: OperatorConfig, clock: SharedClock, seed: u64) -> Playbook {
        Self::new(Arc::new(ArcSwap::from_pointee(config)), clock, seed)
    }

    /// A playbook that reads its config from `config` on every call.
    pub fn new(config: Arc<dyn ConfigSource>, clock: SharedClock, seed: u64) -> Playbook {
        let now = clock.now_ms();
        Playbook {
            clock,
            seed,
            config,
            state: Mutex::new(State {
                last_sweep_ms: now,
                ..Default::default()
            }),
        }
    }

    pub fn config(&self) -> Arc<OperatorConfig> {
        self.config.current()
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    // -----------------------------------------------------------------------------------------
    // Messages

    /// Cheap compliance check before the model runs: a banned word → BLOCK (and a review entry).
    /// None means "go on and classify". When this returns a decision, do not call
    /// `decide_message` for the message.
    pub fn precheck(&self, ctx: &MessageContext) -> Option<PolicyDecision> {
        let cfg = self.config();
        let word = cfg.banned.find(&ctx.text)?.to_string();
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        Some(self.block(&mut st, ctx, now, &word, "banned_word"))
    }

    fn block(
        &self,
        st: &mut State,
        ctx: &MessageContext,
        now: i64,
        word: &str,
        reason: &str,
    ) -> PolicyDecision {
        st.handoffs.note_message(&ctx.bot_id, &ctx.chat_id);
        st.scheduler
            .touch(&ctx.bot_id, &ctx.chat_id, &ctx.chat_name, now, false);
        st.add_review(ReviewItem {
            at_ms: now,
            bot_id: ctx.bot_id.clone(),
            chat_id: ctx.chat_id.clone(),
            user_id: ctx.user.id.clone(),
            message_id: ctx.message_id.clone(),
            text: crate::pii::redact_pii(&ctx.text),
            matched: word.to_string(),
            reason: reason.to_string(),
        });
        decision(Action::Block, None, reason)
    }

    /// Decide what to do with a classified message. `display_names` maps an intent id to the
    /// name shown to users (for the clarify candidates).
    pub fn decide_message(
        &self,
        ctx: &MessageContext,
        cls: &Classification,
        display_names: &dyn Fn(&str) -> String,
    ) -> PolicyDecision {
        self.decide_message_with_catalog(ctx, cls, display_names, &|_: &str| false)
    }

    /// [`Self::decide_message`] for a server that also has the intent catalog: an intent that
    /// `always_handoff` says is flagged `handoff: always` in intents.yml goes to a human in every
    /// bot and group, on top of the playbook's own `handoff.intents`.
    pub fn decide_message_with_catalog(
        &self,
        ctx: &MessageContext,
        cls: &Classification,
        display_names: &dyn Fn(&str) -> String,
        always_handoff: &dyn Fn(&str) -> bool,
    ) -> PolicyDecision {
        let catalog_handoff = !cls.intent.is_empty() && always_handoff(&cls.intent);
        let cfg = self.config();
        let s = cfg.settings(&ctx.bot_id, &ctx.chat_id).clone();
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        st.sweep(now);
        let (bot, chat, uid) = (
            ctx.bot_id.as_str(),
            ctx.chat_id.as_str(),
            ctx.user.id.as_str(),
        );

        if let Some(w) = cfg.banned.find(&ctx.text) {
            return self.block(&mut st, ctx, now, w, "banned_word");
        }
        let understood = !cls.needs_clarification && !cls.intent.is_empty();
        if understood && s.block_intents.contains(&cls.intent) {
            return self.block(&mut st, ctx, now, "", &cls.intent);
        }

        st.handoffs.note_message(bot, chat);
        st.scheduler.touch(bot, chat, &ctx.chat_name, now, true);
        let window = s.frequency.window_ms;
        let interactions = {
            let u = st.user(bot, chat, uid);
            u.last_seen_ms = now;
            u.activity.record(now, window);
            u.activity.count(now, window)
        };
        let group_name = if ctx.chat_name.is_empty() {
            st.scheduler.chat_name(bot, chat).to_string()
        } else {
            ctx.chat_name.clone()
        };
        let base_vars = self.vars(&cfg, &s, now, &ctx.user.nickname, &group_name);
        let style = s.style_for(&ctx.user.tags).to_string();
        let t = Target {
            bot,
            chat,
            user: uid,
            source_id: &ctx.message_id,
        };

        let mut d = self.decide_inner(
            &mut st,
            &cfg,
            &s,
            ctx,
            cls,
            display_names,
            &t,
            now,
            &base_vars,
            &style,
            interactions,
            catalog_handoff,
        );

        // First contact: the automation disclosure goes before the first thing we send.
        let sends = d.reply.is_some()
            && matches!(d.action, Action::Reply | Action::Clarify | Action::Handoff);
        if sends && s.disclosure_enabled {
            let first = !st.user(bot, chat, uid).disclosed;
            if first {
                st.user(bot, chat, uid).disclosed = true;
                // Some replies are the disclosure themselves ("yes, I am a bot").
                if !(understood && s.disclosure_answered_by.contains(&cls.intent)) {
                    let pick = seeded(self.seed, &["disclosure", uid]);
                    if let Some(r) = cfg.replies.choose(
                        "disclosure",
                        &style,
                        pick,
                        &cfg.banned,
                        &|tp: &Template| tp.render(&base_vars),
                    ) {
                        d.notices.push(r.text);
                    }
                }
            }
        }
        self.maybe_push(
            &mut st,
            &s,
            bot,
            chat,
            &group_name,
            &ctx.user,
            now,
            interactions,
        );
        d
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_inner(
        &self,
        st: &mut State,
        cfg: &OperatorConfig,
        s: &Settings,
        ctx: &MessageContext,
        cls: &Classification,
        display_names: &dyn Fn(&str) -> String,
        t: &Target<'_>,
        now: i64,
        base_vars: &Vars,
        style: &str,
        interactions: u32,
        catalog_handoff: bool,
    ) -> PolicyDecision {
        let understood = !cls.needs_clarification && !cls.intent.is_empty();
        let intent = cls.intent.as_str();

        if understood && s.silent_intents.contains(intent) {
            st.handoffs.reset_streak(t.bot, t.chat, t.user);
            return decision(Action::Ignore, None, "silent_intent");
        }

        if !s.service_hours.is_open(s.timezone, now) {
            let opens = s.service_hours.next_open_ms(s.timezone, now);
            let u = st.user(t.bot, t.chat, t.user);
            if u.off_hours_notified_for.is_some() && u.off_hours_notified_for == opens {
                return decision(Action::Handoff, None, "off_hours");
            }
            u.off_hours_notified_for = opens;
            let wait = st.handoffs.expected_wait_minutes(t.bot, now, &s.handoff);
            st.handoffs.open(t.bot, t.chat, now);
            let mut vars = base_vars.clone();
            vars.wait_minutes = wait.to_string();
            vars.open_time = opens
                .map(|o| local(s.timezone, o).format("%H:%M").to_string())
                .unwrap_or_default();
            let reply = self.choose(cfg, "off_hours", style, t.user, &vars);
            return self.finish(
                st,
                s,
                t,
                now,
                Action::Handoff,
                reply,
                "off_hours",
                None,
                Priority::High,
            );
        }

        if !understood {
            let streak = st.handoffs.not_understood(t.bot, t.chat, t.user);
            if streak >= s.handoff.not_understood_limit {
                return self.handoff(
                    st,
                    cfg,
                    s,
                    t,
                    now,
                    base_vars,
                    style,
                    "handoff:not_understood",
                );
            }
            let sep = cfg.replies.list_separator.as_str();
            let names: Vec<String> = cls
                .ranking
                .iter()
                .filter(|r| !r.intent.is_empty())
                .take(3)
                .map(|r| display_names(&r.intent))
                .filter(|n| !n.is_empty())
                .collect();
            let (key, vars) = if names.is_empty() {
                ("fallback", base_vars.clone())
            } else {
                let mut v = base_vars.clone();
                v.candidates = names.join(sep);
                ("clarify", v)
            };
            let reply = self.choose(cfg, key, style, t.user, &vars);
            if reply.is_none() {
                return decision(Action::Ignore, None, "banned_word:outbound");
            }
            return self.finish(
                st,
                s,
                t,
                now,
                Action::Clarify,
                reply,
                "clarify",
                None,
                Priority::Normal,
            );
        }
        st.handoffs.reset_streak(t.bot, t.chat, t.user);

        if catalog_handoff || s.handoff.intents.contains(intent) {
            return self.handoff(st, cfg, s, t, now, base_vars, style, "handoff:intent");
        }

        let cd = s.cooldown.for_key(intent);
        if cd > 0
            && st
                .cooldowns
                .remaining(t.bot, t.chat, t.user, intent, now, cd)
                .is_some()
        {
            return decision(Action::Ignore, None, "cooldown");
        }

        let mut chosen: Option<(ReplyOut, String)> = None;
        if let Some(rule) = s
            .rules
            .iter()
            .find(|r| r.applies(intent, &ctx.user, interactions))
        {
            chosen = self
                .choose(cfg, &rule.reply, style, t.user, base_vars)
                .map(|r| (r, format!("rule:{}", rule.id)));
        }
        if chosen.is_none() {
            if let Some(exp) = s.experiment_for(intent) {
                let vid = exp.variant_for(t.user);
                if let Some(v) = cfg.replies.variant(intent, vid) {
                    if let Some(mut r) =
                        cfg.replies
                            .render_variant(intent, v, &cfg.banned, &|tp: &Template| {
                                tp.render(base_vars)
                            })
                    {
                        r.variant_id = format!("{}/{}", exp.id, vid);
                        r.experiment = exp.id.clone();
                        chosen = Some((r, format!("ab:{}", exp.id)));
                    }
                }
            }
        }
        if chosen.is_none() {
            chosen = self
                .choose(cfg, intent, style, t.user, base_vars)
                .map(|r| (r, "faq".to_string()));
        }
        let Some((reply, reason)) = chosen else {
            let why = if cfg.replies.has(intent) {
                "banned_word:outbound"
            } else {
                "no_reply"
            };
            return decision(Action::Ignore, None, why);
        };
        let d = self.finish(
            st,
            s,
            t,
            now,
            Action::Reply,
            Some(reply),
            &reason,
            Some(intent),
            Priority::Normal,
        );
        if d.action == Action::Reply || d.reason == "merged:spacing" {
            st.cooldowns.record(t.bot, t.chat, t.user, intent, now);
        }
        d
    }

    #[allow(clippy::too_many_arguments)]
    fn handoff(
        &self,
        st: &mut State,
        cfg: &OperatorConfig,
        s: &Settings,
        t: &Target<'_>,
        now: i64,
        base_vars: &Vars,
        style: &str,
        reason: &str,
    ) -> PolicyDecision {
        st.handoffs.reset_streak(t.bot, t.chat, t.user);
        let wait = st.handoffs.expected_wait_minutes(t.bot, now, &s.handoff);
        st.handoffs.open(t.bot, t.chat, now);
        let mut vars = base_vars.clone();
        vars.wait_minutes = wait.to_string();
        let reply = self.choose(cfg, "handoff", style, t.user, &vars);
        self.finish(
            st,
            s,
            t,
            now,
            Action::Handoff,
            reply,
            reason,
            None,
            Priority::High,
        )
    }

    /// Apply group spacing to a decision that sends `reply`.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        st: &mut State,
        s: &Settings,
        t: &Target<'_>,
        now: i64,
        action: Action,
        reply: Option<ReplyOut>,
        reason: &str,
        merge_key: Option<&str>,
        priority: Priority,
    ) -> PolicyDecision {
        let Some(reply) = reply else {
            return decision(action, None, reason);
        };
        let roll = seeded(
            self.seed,
            &["jitter", t.bot, t.chat, t.source_id, &now.to_string()],
        );
        let g = st
            .spacing
            .entry((t.bot.to_string(), t.chat.to_string()))
            .or_default();
        match g.plan(now, &s.spacing, merge_key, priority, roll) {
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
                st.add_dropped(DroppedSend {
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

    fn vars(
        &self,
        cfg: &OperatorConfig,
        s: &Settings,
        now: i64,
        nickname: &str,
        group_name: &str,
    ) -> Vars {
        let lt = local(s.timezone, now);
        // Nicknames and group names are user-chosen and often carry a phone number or e-mail
        // ("王姐13812345678"): a reply posted to the whole group must not repeat them.
        Vars {
            nickname: crate::pii::redact_pii(nickname),
            group_name: crate::pii::redact_pii(group_name),
            greeting: cfg.replies.greetings.at(lt.time()).to_string(),
            festival: cfg.calendar.greeting_on(lt.date()).to_string(),
            ..Default::default()
        }
    }

    fn choose(
        &self,
        cfg: &OperatorConfig,
        key: &str,
        style: &str,
        user: &str,
        vars: &Vars,
    ) -> Option<ReplyOut> {
        let pick = seeded(self.seed, &["reply", user, key]);
        cfg.replies
            .choose(key, style, pick, &cfg.banned, &|tp: &Template| {
                tp.render(vars)
            })
    }

    /// Queue at most one personal push for a user who just talked, if a push rule matches and
    /// their frequency tier allows another push.
    #[allow(clippy::too_many_arguments)]
    fn maybe_push(
        &self,
        st: &mut State,
        s: &Settings,
        bot: &str,
        chat: &str,
        chat_name: &str,
        user: &UserInfo,
        now: i64,
        interactions: u32,
    ) {
        let interval = s.frequency.push_interval_ms(interactions);
        let u = st.user(bot, chat, &user.id);
        let Some(rule) = s.pushes.iter().find(|p| {
            p.when.matches(user, interactions)
                && u.last_push
                    .get(&p.id)
                    .is_none_or(|&last| now - last >= interval)
        }) else {
            return;
        };
        u.last_push.insert(rule.id.clone(), now);
        st.scheduler.push(Job {
            bot_id: bot.to_string(),
            chat_id: chat.to_string(),
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
        });
    }

    // -----------------------------------------------------------------------------------------
    // Events

    pub fn handle_event(&self, ev: &EventInput) -> EventDecision {
        let cfg = self.config();
        let s = cfg.settings(&ev.bot_id, &ev.chat_id).clone();
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        st.sweep(now);
        let (bot, chat, uid) = (ev.bot_id.as_str(), ev.chat_id.as_str(), ev.user.id.as_str());
        let activity = ev.kind == EventKind::Activity;
        st.scheduler.touch(bot, chat, &ev.chat_name, now, activity);
        let group_name = if ev.chat_name.is_empty() {
            st.scheduler.chat_name(bot, chat).to_string()
        } else {
            ev.chat_name.clone()
        };
        let style = s.style_for(&ev.user.tags).to_string();
        let t = Target {
            bot,
            chat,
            user: uid,
            source_id: &ev.event_id,
        };
        let plain = |d: PolicyDecision| EventDecision {
            decision: d,
            merged_user_ids: Vec::new(),
        };

        match ev.kind {
            EventKind::MemberJoined => {
                if !s.welcome_enabled {
                    return plain(decision(Action::Ignore, None, "welcome:disabled"));
                }
                if s.welcome_merge_window_ms == 0 {
                    let vars = self.vars(&cfg, &s, now, &ev.user.nickname, &group_name);
                    let reply = self.choose(&cfg, "welcome", &style, uid, &vars);
                    let d = if reply.is_none() {
                        decision(Action::Ignore, None, "banned_word:outbound")
                    } else {
                        self.finish(
                            &mut st,
                            &s,
                            &t,
                            now,
                            Action::Reply,
                            reply,
                            "welcome",
                            None,
                            Priority::High,
                        )
                    };
                    return EventDecision {
                        decision: d,
                        merged_user_ids: vec![uid.to_string()],
                    };
                }
                let send_at = now + s.welcome_merge_window_ms;
                match st.welcomes.join(bot, chat, &group_name, &ev.user, send_at) {
                    JoinOutcome::Opened { send_at_ms } => {
                        let mut d = decision(Action::Reply, None, "welcome:queued");
                        d.send_after_ms = send_at_ms - now;
                        EventDecision {
                            decision: d,
                            merged_user_ids: vec![uid.to_string()],
                        }
                    }
                    JoinOutcome::Merged {
                        send_at_ms,
                        user_ids,
                    } => {
                        let mut d = decision(Action::Ignore, None, "merged_welcome");
                        d.send_after_ms = (send_at_ms - now).max(0);
                        EventDecision {
                            decision: d,
                            merged_user_ids: user_ids,
                        }
                    }
                }
            }
            EventKind::MemberLeft => {
                st.welcomes.leave(bot, chat, uid);
                plain(decision(Action::Ignore, None, "member_left"))
            }
            EventKind::LinkClicked | EventKind::CardShared => {
                let (prefix, fallback, reason) = if ev.kind == EventKind::LinkClicked {
                    ("link:", "link_default", "guidance:link")
                } else {
                    ("card:", "card_default", "guidance:card")
                };
                let mut key = format!("{prefix}{}", ev.target_id);
                if !cfg.replies.has(&key) {
                    if !cfg.replies.has(fallback) {
                        return plain(decision(Action::Ignore, None, "guidance:unknown_target"));
                    }
                    key = fallback.to_string();
                }
                let cd = s.cooldown.default_ms;
                if cd > 0
                    && st
                        .cooldowns
                        .remaining(bot, chat, uid, &key, now, cd)
                        .is_some()
                {
                    return plain(decision(Action::Ignore, None, "cooldown"));
                }
                let vars = self.vars(&cfg, &s, now, &ev.user.nickname, &group_name);
                let Some(reply) = self.choose(&cfg, &key, &style, uid, &vars) else {
                    return plain(decision(Action::Ignore, None, "banned_word:outbound"));
                };
                let d = self.finish(
                    &mut st,
                    &s,
                    &t,
                    now,
                    Action::Reply,
                    Some(reply),
                    reason,
                    Some(&key),
                    Priority::Normal,
                );
                if d.action == Action::Reply {
                    st.cooldowns.record(bot, chat, uid, &key, now);
                }
                plain(d)
            }
            EventKind::Activity => {
                let window = s.frequency.window_ms;
                let interactions = {
                    let u = st.user(bot, chat, uid);
                    u.last_seen_ms = now;
                    u.activity.record(now, window);
                    u.activity.count(now, window)
                };
                if !uid.is_empty() {
                    self.maybe_push(
                        &mut st,
                        &s,
                        bot,
                        chat,
                        &group_name,
                        &ev.user,
                        now,
                        interactions,
                    );
                }
                plain(decision(Action::Ignore, None, "activity"))
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Proactive sends

    /// Proactive messages whose time has come, each returned exactly once across calls, in time
    /// order. A send that would break group spacing is deferred to its slot and returned then.
    pub fn due(&self, now_ms: i64) -> Vec<OutboundItem> {
        let cfg = self.config();
        let settings = |b: &str, c: &str| cfg.settings(b, c).clone();
        let mut st = self.state.lock();
        let mut jobs = st.scheduler.collect(now_ms, &settings);
        for ((bot, chat), w) in st.welcomes.take_due(now_ms) {
            let names: Vec<&str> = w.users.iter().map(|(_, n)| n.as_str()).collect();
            jobs.push(Job {
                bot_id: bot,
                chat_id: chat,
                chat_name: w.chat_name.clone(),
                kind: OutboundKind::Welcome,
                rule_id: "welcome".into(),
                at_ms: w.send_at_ms,
                content: JobContent::Render {
                    key: "welcome".into(),
                    user: None,
                    nickname: Some(names.join(&cfg.replies.list_separator)),
                    days_left: None,
                    event_name: String::new(),
                },
                user_ids: w.users.iter().map(|(id, _)| id.clone()).collect(),
                slot_reserved: false,
            });
        }
        jobs.sort_by(|a, b| {
            (a.at_ms, &a.bot_id, &a.chat_id, &a.rule_id)
                .cmp(&(b.at_ms, &b.bot_id, &b.chat_id, &b.rule_id))
        });

        let mut out = Vec::new();
        for mut job in jobs {
            let s = settings(&job.bot_id, &job.chat_id);
            if !job.slot_reserved {
                let g = st
                    .spacing
                    .entry((job.bot_id.clone(), job.chat_id.clone()))
                    .or_default();
                if g.next_free_ms(now_ms, &s.spacing) > now_ms {
                    // The group had a bot send too recently: take the next slot and come back then.
                    let roll = seeded(
                        self.seed,
                        &["jitter", &job.chat_id, &job.rule_id, &job.at_ms.to_string()],
                    );
                    if let SpacingOutcome::Send { at_ms } =
                        g.plan(now_ms, &s.spacing, None, Priority::High, roll)
                    {
                        job.at_ms = at_ms;
                    }
                    job.slot_reserved = true;
                    st.scheduler.push(job);
                    continue;
                }
                g.plan(now_ms, &s.spacing, None, Priority::High, 0);
            }
            match self.render_job(&cfg, &s, &job, now_ms) {
                Some(reply) => out.push(OutboundItem {
                    bot_id: job.bot_id,
                    chat_id: job.chat_id,
                    kind: job.kind,
                    reply,
                    send_at_ms: job.at_ms,
                    rule_id: job.rule_id,
                    user_ids: job.user_ids,
                }),
                None => st.add_dropped(DroppedSend {
                    at_ms: now_ms,
                    bot_id: job.bot_id,
                    chat_id: job.chat_id,
                    user_id: job.user_ids.join(","),
                    source_id: job.rule_id.clone(),
                    key: job.rule_id,
                    reason: "banned_word:outbound".into(),
                }),
            }
        }
        out
    }

    fn render_job(
        &self,
        cfg: &OperatorConfig,
        s: &Settings,
        job: &Job,
        now: i64,
    ) -> Option<ReplyOut> {
        match &job.content {
            JobContent::Ready(r) => Some(r.clone()),
            JobContent::Render {
                key,
                user,
                nickname,
                days_left,
                event_name,
            } => {
                let nick = nickname
                    .clone()
                    .or_else(|| user.as_ref().map(|u| u.nickname.clone()))
                    .unwrap_or_default();
                let mut vars = self.vars(cfg, s, now, &nick, &job.chat_name);
                vars.days_left = days_left.map(|d| d.to_string()).unwrap_or_default();
                vars.event_name = event_name.clone();
                let style = user
                    .as_ref()
                    .map(|u| s.style_for(&u.tags))
                    .unwrap_or(&s.style);
                let pick = seeded(
                    self.seed,
                    &[
                        "proactive",
                        &job.rule_id,
                        &job.chat_id,
                        &job.at_ms.to_string(),
                    ],
                );
                cfg.replies
                    .choose(key, style, pick, &cfg.banned, &|tp: &Template| {
                        tp.render(&vars)
                    })
            }
        }
    }

    /// When `due()` will next have something (None: nothing planned). A time at or before now
    /// means "call `due()` now". A Subscribe loop can sleep until then, but should also wake
    /// when a message or event arrives (it may queue a welcome or push) and when the clock is
    /// set by hand.
    pub fn next_due_ms(&self) -> Option<i64> {
        let cfg = self.config();
        let now = self.clock.now_ms();
        let st = self.state.lock();
        let a = st
            .scheduler
            .next_due_ms(now, &|b: &str, c: &str| cfg.settings(b, c).clone());
        let b = st.welcomes.next_due_ms();
        match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Human share, review queue, reports

    /// A human agent answered in a group: counts toward the human share, closes the oldest open
    /// handoff there, and counts as activity (the group is not silent).
    pub fn record_human_reply(&self, bot_id: &str, chat_id: &str) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        st.handoffs.record_human_reply(bot_id, chat_id);
        st.scheduler.touch(bot_id, chat_id, "", now, true);
    }

    /// (human share, target) for a group since start: (handoffs + human replies) / messages.
    pub fn human_share(&self, bot_id: &str, chat_id: &str) -> (f64, f64) {
        let target = self
            .config()
            .settings(bot_id, chat_id)
            .handoff
            .human_share_target;
        (self.state.lock().handoffs.share(bot_id, chat_id), target)
    }

    /// Blocked messages waiting for review (PII already redacted), oldest first.
    pub fn review_queue(&self) -> Vec<ReviewItem> {
        self.state.lock().review.iter().cloned().collect()
    }

    /// Take the review entries (for the server to persist).
    pub fn drain_review_queue(&self) -> Vec<ReviewItem> {
        std::mem::take(&mut self.state.lock().review).into()
    }

    /// Sends the playbook decided not to make (spacing queue full, banned word at render).
    pub fn dropped_sends(&self) -> Vec<DroppedSend> {
        self.state.lock().dropped.iter().cloned().collect()
    }

    pub fn drain_dropped_sends(&self) -> Vec<DroppedSend> {
        std::mem::take(&mut self.state.lock().dropped).into()
    }
}

#[cfg(test)]
#[path = "playbook_tests.rs"]
mod tests;
