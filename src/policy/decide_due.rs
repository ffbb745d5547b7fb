//! The pure planning of proactive sends: which schedules, countdowns, re-activations, merged
//! welcomes and delayed jobs are due, rendered, and spaced within their group. A function of
//! the operator config, the seed, the time and a [`DueView`]; returns the items to send and the
//! state changes (cursors moved, jobs taken, deferred jobs queued again, slots reserved).

use std::collections::BTreeMap;

use super::ab::Unit;
use super::config::Settings;
use super::decision::Decider;
use super::events::welcome_take_due;
use super::hash::seeded;
use super::scheduler::{collect_chat, next_due_chat, Job, JobContent, OutboundItem, OutboundKind};
use super::spacing::{Priority, SpacingOutcome};
use super::state::{DroppedSend, DueView, GroupKey, GroupRow, StateChange, Versioned};
use crate::types::ReplyOut;

fn by_time(a: &Job, b: &Job) -> std::cmp::Ordering {
    (a.at_ms, &a.bot_id, &a.chat_id, &a.rule_id).cmp(&(b.at_ms, &b.bot_id, &b.chat_id, &b.rule_id))
}

/// Proactive messages due at `d.now`, in time order, and the changes that make each go exactly
/// once. A send that would break group spacing is queued again for its slot.
pub fn plan_due(d: &Decider<'_>, view: DueView) -> (Vec<OutboundItem>, Vec<StateChange>) {
    let now = d.now;
    let cfg = d.cfg;
    let mut changes = Vec::new();
    // (version read, row as read, row as changed)
    let mut groups: BTreeMap<GroupKey, (Versioned<GroupRow>, GroupRow)> = view
        .groups
        .into_iter()
        .map(|(k, v)| {
            let row = v.row.clone();
            (k, (v, row))
        })
        .collect();

    let mut jobs = Vec::new();
    for (k, (_, row)) in groups.iter_mut() {
        if let Some(t) = row.timers.as_mut() {
            let s = cfg.settings(&k.bot_id, &k.chat_id);
            jobs.extend(collect_chat(&k.bot_id, &k.chat_id, t, s, now));
        }
    }
    for q in view.jobs {
        changes.push(StateChange::Unschedule { id: q.id });
        jobs.push(q.job);
    }
    jobs.sort_by(by_time);
    for (k, (_, row)) in groups.iter_mut() {
        let Some(w) = welcome_take_due(&mut row.welcome, now) else {
            continue;
        };
        // Each name cleaned on its own (the cap is per name); render_job keeps the list as is.
        let names: Vec<String> = w
            .users
            .iter()
            .map(|(_, n)| cfg.replies.variables.nickname(n))
            .filter(|n| !n.is_empty())
            .collect();
        jobs.push(Job {
            bot_id: k.bot_id.clone(),
            chat_id: k.chat_id.clone(),
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
    jobs.sort_by(by_time);

    let mut out = Vec::new();
    for mut job in jobs {
        let s = cfg.settings(&job.bot_id, &job.chat_id);
        if !job.slot_reserved {
            let key = GroupKey::new(&job.bot_id, &job.chat_id);
            let g = &mut groups.entry(key).or_default().1.spacing;
            if g.next_free_ms(now, &s.spacing) > now {
                // The group had a bot send too recently: take the next slot and come back then.
                let roll = seeded(
                    d.seed,
                    &["jitter", &job.chat_id, &job.rule_id, &job.at_ms.to_string()],
                );
                if let SpacingOutcome::Send { at_ms } =
                    g.plan(now, &s.spacing, None, Priority::High, roll)
                {
                    job.at_ms = at_ms;
                }
                job.slot_reserved = true;
                changes.push(StateChange::Schedule(job));
                continue;
            }
            g.plan(now, &s.spacing, None, Priority::High, 0);
        }
        match render_job(d, s, &job) {
            Some(reply) => out.push(
                OutboundItem {
                    bot_id: job.bot_id,
                    chat_id: job.chat_id,
                    kind: job.kind,
                    reply,
                    send_at_ms: job.at_ms,
                    rule_id: job.rule_id,
                    user_ids: job.user_ids,
                    id: String::new(),
                }
                .with_id(),
            ),
            None => changes.push(StateChange::AddDropped(DroppedSend {
                at_ms: now,
                bot_id: job.bot_id,
                chat_id: job.chat_id,
                user_id: job.user_ids.join(","),
                source_id: job.rule_id.clone(),
                key: job.rule_id,
                reason: "banned_word:outbound".into(),
            })),
        }
    }
    for (key, (base, row)) in groups {
        if row != base.row {
            changes.push(StateChange::PutGroup {
                key,
                expected_version: base.version,
                row,
            });
        }
    }
    (out, changes)
}

/// When [`plan_due`] will next have something (None: nothing planned), from a view read
/// without jobs (`load_due(None)`).
pub fn next_due(d: &Decider<'_>, view: &DueView) -> Option<i64> {
    let mut best = view.next_job_ms;
    let mut consider = |t: i64| best = Some(best.map_or(t, |b| b.min(t)));
    for (k, g) in &view.groups {
        if let Some(t) = &g.row.timers {
            let s = d.cfg.settings(&k.bot_id, &k.chat_id);
            if let Some(at) = next_due_chat(t, s, d.now) {
                consider(at);
            }
        }
        if let Some(w) = &g.row.welcome {
            consider(w.send_at_ms);
        }
    }
    best
}

fn render_job(d: &Decider<'_>, s: &Settings, job: &Job) -> Option<ReplyOut> {
    match &job.content {
        JobContent::Ready(r) => Some(r.clone()),
        JobContent::Render {
            key,
            user,
            nickname,
            days_left,
            event_name,
        } => {
            let user_nick = user.as_ref().map(|u| u.nickname.as_str()).unwrap_or("");
            let mut vars = d.vars(s, user_nick, &job.chat_name);
            // A merged welcome's list of names, each already cleaned.
            if let Some(list) = nickname {
                vars.nickname = list.clone();
            }
            vars.days_left = days_left.map(|n| n.to_string()).unwrap_or_default();
            vars.event_name = event_name.clone();
            let style = user
                .as_ref()
                .map(|u| s.style_for(&u.tags))
                .unwrap_or(&s.style);
            let pick = seeded(
                d.seed,
                &[
                    "proactive",
                    &job.rule_id,
                    &job.chat_id,
                    &job.at_ms.to_string(),
                ],
            );
            // One addressee (a push, a welcome): their bucket; else the whole group's.
            let unit = match job.user_ids.as_slice() {
                [one] => Unit::User(one),
                _ => Unit::Group(&job.chat_id),
            };
            d.choose_picked(s, key, style, unit, pick, &vars)
        }
    }
}
