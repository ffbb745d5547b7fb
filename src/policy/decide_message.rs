//! The pure decision for one classified message (the order of the checks is in
//! [`super::playbook`]'s module doc): a function of the operator config, the seed, the time and
//! the rows of the group and user in [`Work`]; the rows it changes are written back by the
//! state store.

use super::ab::Unit;
use super::config::Settings;
use super::decision::{decision, Decider, Target, Work};
use super::handoff::HandoffOpening;
use super::hash::seeded;
use super::hours::local;
use super::scheduler;
use super::spacing::Priority;
use super::templates::Vars;
use crate::types::{Action, Classification, MessageContext, PolicyDecision, ReplyOut};

/// A banned word in the text → BLOCK (and a review entry); None: go on and classify.
pub fn precheck(d: &Decider<'_>, w: &mut Work, ctx: &MessageContext) -> Option<PolicyDecision> {
    let allowed = &w.group.allowed_words;
    let word = d.cfg.banned.find_allowing(&ctx.text, allowed)?.to_string();
    Some(d.block(w, ctx, &word, "banned_word"))
}

/// Decide what to do with a classified message. `display_names` maps an intent id to the name
/// shown to users (for the clarify candidates); `catalog_handoff` says intents.yml flags the
/// intent `handoff: always`.
pub fn decide_message(
    d: &Decider<'_>,
    w: &mut Work,
    ctx: &MessageContext,
    cls: &Classification,
    display_names: &dyn Fn(&str) -> String,
    catalog_handoff: bool,
) -> PolicyDecision {
    let cfg = d.cfg;
    if let Some(word) = cfg.banned.find_allowing(&ctx.text, &w.group.allowed_words) {
        return d.block(w, ctx, word, "banned_word");
    }
    let understood = !cls.needs_clarification && !cls.intent.is_empty();
    let blocked_intent = cfg
        .settings(&ctx.bot_id, &ctx.chat_id)
        .block_intents
        .contains(&cls.intent);
    if understood && blocked_intent {
        return d.block(w, ctx, "", &cls.intent);
    }
    decide_cleared(d, w, ctx, cls, display_names, catalog_handoff)
}

/// [`decide_message`] for a message compliance let through, or that a reviewer approved after
/// it was blocked (a false positive): everything after the banned-word and blocked-intent checks.
pub fn decide_cleared(
    d: &Decider<'_>,
    w: &mut Work,
    ctx: &MessageContext,
    cls: &Classification,
    display_names: &dyn Fn(&str) -> String,
    catalog_handoff: bool,
) -> PolicyDecision {
    let cfg = d.cfg;
    let s = cfg.settings(&ctx.bot_id, &ctx.chat_id).clone();
    let now = d.now;
    let uid = ctx.user.id.as_str();
    let understood = !cls.needs_clarification && !cls.intent.is_empty();

    w.group.handoffs.note_message();
    scheduler::touch(&mut w.group.timers, &ctx.chat_name, now, true);
    let interactions = w.record_activity(now, s.frequency.window_ms, s.interactions_counted());
    let group_name = w.group_name(&ctx.chat_name);
    let mut base_vars = d.vars(&s, &ctx.user.nickname, &group_name);
    base_vars.entities = super::variables::entity_values(&cls.entities);
    let style = s.style_for(&ctx.user.tags).to_string();
    let t = Target {
        bot: &ctx.bot_id,
        chat: &ctx.chat_id,
        user: uid,
        source_id: &ctx.message_id,
    };
    let input = Input {
        ctx,
        cls,
        display_names,
        interactions,
        catalog_handoff,
        base_vars: &base_vars,
        style: &style,
    };
    let mut out = decide_inner(d, w, &s, &t, &input);

    // First contact: the automation disclosure goes before the first thing we send.
    let sends = out.reply.is_some()
        && matches!(
            out.action,
            Action::Reply | Action::Clarify | Action::Handoff
        );
    if sends && s.disclosure_enabled && !w.user.profile.disclosed {
        w.user.profile.disclosed = true;
        // Some replies are the disclosure themselves ("yes, I am a bot").
        if !(understood && s.disclosure_answered_by.contains(&cls.intent)) {
            let pick = seeded(d.seed, &["disclosure", uid]);
            let unit = Unit::User(uid);
            if let Some(r) = d.choose_picked(&s, "disclosure", &style, unit, pick, &base_vars) {
                out.notices.push(r.text);
            }
        }
    }
    d.maybe_push(w, &s, &group_name, &ctx.user, interactions);
    out
}

/// The message and what was derived from it before the checks.
struct Input<'a> {
    ctx: &'a MessageContext,
    cls: &'a Classification,
    display_names: &'a dyn Fn(&str) -> String,
    interactions: u32,
    catalog_handoff: bool,
    base_vars: &'a Vars,
    style: &'a str,
}

fn decide_inner(
    d: &Decider<'_>,
    w: &mut Work,
    s: &Settings,
    t: &Target<'_>,
    i: &Input<'_>,
) -> PolicyDecision {
    let (cfg, now, cls) = (d.cfg, d.now, i.cls);
    let understood = !cls.needs_clarification && !cls.intent.is_empty();
    let intent = cls.intent.as_str();

    if understood && s.silent_intents.contains(intent) {
        w.user.not_understood_streak = 0;
        return decision(Action::Ignore, None, "silent_intent");
    }

    if !understood {
        w.user.not_understood_streak = w.user.not_understood_streak.saturating_add(1);
        if w.user.not_understood_streak >= s.handoff.not_understood_limit {
            return handoff(d, w, s, t, i, "handoff", "handoff:not_understood");
        }
        let sep = cfg.replies.list_separator.as_str();
        let names: Vec<String> = cls
            .ranking
            .iter()
            .filter(|r| !r.intent.is_empty())
            .take(3)
            .map(|r| (i.display_names)(&r.intent))
            .filter(|n| !n.is_empty())
            .collect();
        let (key, vars) = if names.is_empty() {
            ("fallback", i.base_vars.clone())
        } else {
            let mut v = i.base_vars.clone();
            v.candidates = names.join(sep);
            ("clarify", v)
        };
        let reply = d.choose(s, key, i.style, t.user, &vars);
        if reply.is_none() {
            return decision(Action::Ignore, None, "banned_word:outbound");
        }
        return d.finish(
            w,
            s,
            t,
            Action::Clarify,
            reply,
            "clarify",
            None,
            Priority::Normal,
        );
    }
    w.user.not_understood_streak = 0;

    if i.catalog_handoff || s.handoff.intents.contains(intent) {
        return handoff(d, w, s, t, i, "handoff", "handoff:intent");
    }

    let rule = s
        .rules
        .iter()
        .find(|r| r.applies(intent, &i.ctx.user, i.interactions));
    // A dedicated-agent rule (VIP service): the message goes to a human, whatever the cooldown.
    if let Some(rule) = rule.filter(|r| r.handoff) {
        let reason = format!("handoff:rule:{}", rule.id);
        return handoff(d, w, s, t, i, &rule.reply, &reason);
    }

    let cd = s.cooldown.for_key(intent);
    if cd > 0 && w.user.cooldowns.remaining(intent, now, cd).is_some() {
        return decision(Action::Ignore, None, "cooldown");
    }

    let mut chosen: Option<(ReplyOut, String)> = None;
    if let Some(rule) = rule {
        chosen = d
            .choose(s, &rule.reply, i.style, t.user, i.base_vars)
            .map(|r| (r, format!("rule:{}", rule.id)));
    }
    if chosen.is_none() {
        chosen = d.choose(s, intent, i.style, t.user, i.base_vars).map(|r| {
            let reason = if r.experiment.is_empty() {
                "faq".to_string()
            } else {
                format!("ab:{}", r.experiment)
            };
            (r, reason)
        });
    }
    let Some((reply, reason)) = chosen else {
        let why = if cfg.replies.has(intent) {
            "banned_word:outbound"
        } else {
            "no_reply"
        };
        return decision(Action::Ignore, None, why);
    };
    let out = d.finish(
        w,
        s,
        t,
        Action::Reply,
        Some(reply),
        &reason,
        Some(intent),
        Priority::Normal,
    );
    if out.action == Action::Reply || out.reason == "merged:spacing" {
        w.user.cooldowns.record(intent, now);
    }
    out
}

/// Hands the message to a human: opens a handoff and sends `reply_key` announcing the wait
/// (`{wait_minutes}`). Outside service hours what needs a human waits for the next opening
/// instead (what the bot can answer was answered above, hours or not): the `off_hours` reply
/// with the opening time, once per user per closed period, then silent handoffs that open none.
fn handoff(
    d: &Decider<'_>,
    w: &mut Work,
    s: &Settings,
    t: &Target<'_>,
    i: &Input<'_>,
    reply_key: &str,
    reason: &str,
) -> PolicyDecision {
    w.user.not_understood_streak = 0;
    let mut vars = i.base_vars.clone();
    let (key, reason) = if s.service_hours.is_open(s.timezone, d.now) {
        (reply_key, reason)
    } else {
        let opens = s.service_hours.next_open_ms(s.timezone, d.now);
        let u = &mut w.user.profile;
        if u.off_hours_notified_for.is_some() && u.off_hours_notified_for == opens {
            return decision(Action::Handoff, None, "off_hours");
        }
        u.off_hours_notified_for = opens;
        vars.open_time = opens
            .map(|o| local(s.timezone, o).format("%H:%M").to_string())
            .unwrap_or_default();
        ("off_hours", "off_hours")
    };
    let who = HandoffOpening {
        user_id: t.user,
        message_id: t.source_id,
        reason,
    };
    vars.wait_minutes = w.open_handoff(d.now, &s.handoff, who).to_string();
    let reply = d.choose(s, key, i.style, t.user, &vars);
    d.finish(
        w,
        s,
        t,
        Action::Handoff,
        reply,
        reason,
        None,
        Priority::High,
    )
}
