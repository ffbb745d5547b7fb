//! The pure decision for one group event (welcomes, leavers, link / card guidance, activity):
//! a function of the operator config, the seed, the time and the group and user rows in
//! [`Work`]. See [`super::events`] for the welcome-merging rules.

use super::decision::{decision, Decider, Target, Work};
use super::events::{
    welcome_join, welcome_leave, EventDecision, EventInput, EventKind, JoinOutcome,
};
use super::scheduler;
use super::spacing::Priority;
use crate::types::{Action, PolicyDecision};

pub fn decide_event(d: &Decider<'_>, w: &mut Work, ev: &EventInput) -> EventDecision {
    let cfg = d.cfg;
    let s = cfg.settings(&ev.bot_id, &ev.chat_id).clone();
    let now = d.now;
    let uid = ev.user.id.as_str();
    let activity = ev.kind == EventKind::Activity;
    scheduler::touch(&mut w.group.timers, &ev.chat_name, now, activity);
    let group_name = w.group_name(&ev.chat_name);
    let style = s.style_for(&ev.user.tags).to_string();
    let t = Target {
        bot: &ev.bot_id,
        chat: &ev.chat_id,
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
                let vars = d.vars(&s, &ev.user.nickname, &group_name);
                let reply = d.choose(&s, "welcome", &style, uid, &vars);
                let out = if reply.is_none() {
                    decision(Action::Ignore, None, "banned_word:outbound")
                } else {
                    d.finish(
                        w,
                        &s,
                        &t,
                        Action::Reply,
                        reply,
                        "welcome",
                        None,
                        Priority::High,
                    )
                };
                return EventDecision {
                    decision: out,
                    merged_user_ids: vec![uid.to_string()],
                };
            }
            let send_at = now + s.welcome_merge_window_ms;
            match welcome_join(&mut w.group.welcome, &group_name, &ev.user, send_at) {
                JoinOutcome::Opened { send_at_ms } => {
                    let mut out = decision(Action::Reply, None, "welcome:queued");
                    out.send_after_ms = send_at_ms - now;
                    EventDecision {
                        decision: out,
                        merged_user_ids: vec![uid.to_string()],
                    }
                }
                JoinOutcome::Merged {
                    send_at_ms,
                    user_ids,
                } => {
                    let mut out = decision(Action::Ignore, None, "merged_welcome");
                    out.send_after_ms = (send_at_ms - now).max(0);
                    EventDecision {
                        decision: out,
                        merged_user_ids: user_ids,
                    }
                }
            }
        }
        EventKind::MemberLeft => {
            welcome_leave(&mut w.group.welcome, uid);
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
            if cd > 0 && w.user.cooldowns.remaining(&key, now, cd).is_some() {
                return plain(decision(Action::Ignore, None, "cooldown"));
            }
            let vars = d.vars(&s, &ev.user.nickname, &group_name);
            let Some(reply) = d.choose(&s, &key, &style, uid, &vars) else {
                return plain(decision(Action::Ignore, None, "banned_word:outbound"));
            };
            let out = d.finish(
                w,
                &s,
                &t,
                Action::Reply,
                Some(reply),
                reason,
                Some(&key),
                Priority::Normal,
            );
            if out.action == Action::Reply {
                w.user.cooldowns.record(&key, now);
            }
            plain(out)
        }
        EventKind::Activity => {
            let interactions =
                w.record_activity(now, s.frequency.window_ms, s.interactions_counted());
            if !uid.is_empty() {
                d.maybe_push(w, &s, &group_name, &ev.user, interactions);
            }
            plain(decision(Action::Ignore, None, "activity"))
        }
    }
}
