//! Proactive sends: cron schedules, countdowns to dated events, silence re-activation, and
//! delayed items (merged welcomes, personal pushes, sends deferred by group spacing).
//!
//! Exactly-once: each chat keeps a cursor per schedule and per countdown; a call to
//! `collect(now)` fires the occurrences in `(cursor, now]` and moves the cursor to `now`, so
//! calling again returns nothing new. Occurrences older than `schedule_grace_s` (e.g. after the
//! service was down, or a test clock jumped far ahead) are skipped rather than sent late; only
//! the latest missed occurrence of a schedule is sent.
//!
//! Schedules and countdowns apply to the chats the playbook has seen (through messages or
//! events), each with that chat's effective settings, evaluated in the bot's time zone.
//!
//! Re-activation: a chat whose last message / ACTIVITY is `silence_hours` old gets the
//! `reactivation` reply, at most once per `period_hours`, and only within service hours.

use chrono::{Duration, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::config::{Countdown, Settings};
use super::hours::{to_ms, ServiceHours};
use crate::types::{ReplyOut, UserInfo};

/// Mirrors `intentd.v1.OutboundKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundKind {
    Scheduled,
    Countdown,
    Reactivation,
    DelayedReply,
    Welcome,
}

/// A proactive message whose send time has come (mirrors `intentd.v1.Outbound`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundItem {
    pub bot_id: String,
    pub chat_id: String,
    pub kind: OutboundKind,
    pub reply: ReplyOut,
    /// When it is meant to go (Unix ms); may be slightly before the `due()` call.
    pub send_at_ms: i64,
    /// `schedule:<id>`, `countdown:<id>:<days_left>`, `reactivation`, `welcome`, `push:<id>`.
    pub rule_id: String,
    /// Users addressed (the merged welcome lists everyone welcomed; a push its user).
    pub user_ids: Vec<String>,
    /// Names this send in Feedback (`message_id`) and in the log: [`OutboundItem::stable_id`].
    /// Items stored before sends had ids read back with none and get it when restored.
    #[serde(default)]
    pub id: String,
}

impl OutboundItem {
    /// The send's id, the same whenever it is computed (a send delivered again after a crash
    /// keeps its id, so a front end can drop the repeat): `o-` and 20 hex digits of a SHA-256
    /// over what makes a send unique (bot, chat, rule, time, users).
    pub fn stable_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [&self.bot_id, &self.chat_id, &self.rule_id] {
            h.update(part.len().to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(self.send_at_ms.to_le_bytes());
        for u in &self.user_ids {
            h.update(u.len().to_le_bytes());
            h.update(u.as_bytes());
        }
        let hex = hex::encode(h.finalize());
        format!("o-{}", &hex[..20])
    }

    /// Sets [`Self::id`] from [`Self::stable_id`].
    pub fn with_id(mut self) -> Self {
        self.id = self.stable_id();
        self
    }
}

/// What a job will say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobContent {
    /// Render this reply key at send time (greeting and festival reflect the send time).
    Render {
        key: String,
        /// The addressed user, for `{nickname}` and the reply style.
        user: Option<UserInfo>,
        /// Overrides `{nickname}` (merged welcomes list several).
        nickname: Option<String>,
        days_left: Option<u32>,
        event_name: String,
    },
    /// Already rendered (a send that group spacing deferred).
    Ready(ReplyOut),
}

/// A proactive send, before rendering and spacing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub bot_id: String,
    pub chat_id: String,
    pub chat_name: String,
    pub kind: OutboundKind,
    pub rule_id: String,
    pub at_ms: i64,
    pub content: JobContent,
    pub user_ids: Vec<String>,
    /// True once group spacing reserved this job's slot (so it is not spaced twice).
    pub slot_reserved: bool,
}

/// The proactive timing state of one known chat (part of its state row): its name, when it was
/// first seen and last active, and a cursor per schedule and countdown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTimers {
    pub name: String,
    pub known_since_ms: i64,
    pub last_activity_ms: i64,
    pub last_reactivation_ms: Option<i64>,
    pub cron_cursor: BTreeMap<String, i64>,
    pub countdown_cursor: BTreeMap<String, i64>,
}

/// Latest occurrence of `schedule` in `(lower, now]`.
pub fn latest_cron_in(schedule: &cron::Schedule, tz: Tz, lower: i64, now: i64) -> Option<i64> {
    let start = tz.timestamp_millis_opt(lower).single()?;
    schedule
        .after(&start)
        .map(|d| d.timestamp_millis())
        .take_while(|&t| t <= now)
        .last()
}

pub fn next_cron_after(schedule: &cron::Schedule, tz: Tz, after: i64) -> Option<i64> {
    let start = tz.timestamp_millis_opt(after).single()?;
    schedule.after(&start).next().map(|d| d.timestamp_millis())
}

/// (fire time, days left) for each reminder of a countdown.
pub fn countdown_fires(c: &Countdown, tz: Tz) -> Vec<(i64, u32)> {
    c.days_before
        .iter()
        .filter_map(|&d| {
            let day = c.date - Duration::days(i64::from(d));
            let t = day.and_hms_opt(0, 0, 0)? + Duration::minutes(i64::from(c.at_min));
            Some((to_ms(tz, t), d))
        })
        .collect()
}

/// When the next re-activation reminder may go for a chat: after the silence, after the period
/// since the last reminder, not before `floor` (now), and within service hours.
fn reactivation_at(t: &ChatTimers, s: &Settings, hours: &ServiceHours, floor: i64) -> Option<i64> {
    if !s.reactivation.enabled {
        return None;
    }
    let mut at = t.last_activity_ms + s.reactivation.silence_ms;
    if let Some(r) = t.last_reactivation_ms {
        at = at.max(r + s.reactivation.period_ms);
    }
    hours.next_open_ms(s.timezone, at.max(floor))
}

/// Note a chat (first sight starts its schedule cursors) and, for messages / ACTIVITY, its last
/// activity.
pub fn touch(timers: &mut Option<ChatTimers>, chat_name: &str, now: i64, activity: bool) {
    let t = timers.get_or_insert_with(|| ChatTimers {
        known_since_ms: now,
        last_activity_ms: now,
        ..Default::default()
    });
    if !chat_name.is_empty() {
        t.name = chat_name.to_string();
    }
    if activity {
        t.last_activity_ms = t.last_activity_ms.max(now);
    }
}

/// The chat's jobs due at `now` (schedules, countdowns, re-activation), each returned once: the
/// cursors move to `now`.
pub fn collect_chat(bot: &str, chat: &str, t: &mut ChatTimers, s: &Settings, now: i64) -> Vec<Job> {
    let mut out = Vec::new();
    let tz = s.timezone;
    let floor = now - s.schedule_grace_ms - 1;
    let name = t.name.clone();
    // Every proactive job here goes to the whole chat, rendered from a reply key when sent.
    let job = |kind, rule_id: String, at_ms, key: &str, days_left, event_name: &str| Job {
        bot_id: bot.to_string(),
        chat_id: chat.to_string(),
        chat_name: name.clone(),
        kind,
        rule_id,
        at_ms,
        content: JobContent::Render {
            key: key.to_string(),
            user: None,
            nickname: None,
            days_left,
            event_name: event_name.to_string(),
        },
        user_ids: Vec::new(),
        slot_reserved: false,
    };
    for sched in &s.schedules {
        let Some(cursor) = advance(&mut t.cron_cursor, &sched.id, t.known_since_ms, now) else {
            continue;
        };
        if let Some(at) = latest_cron_in(&sched.schedule, tz, cursor.max(floor), now) {
            let rule = format!("schedule:{}", sched.id);
            out.push(job(
                OutboundKind::Scheduled,
                rule,
                at,
                &sched.reply,
                None,
                "",
            ));
        }
    }
    for c in &s.countdowns {
        let Some(cursor) = advance(&mut t.countdown_cursor, &c.id, t.known_since_ms, now) else {
            continue;
        };
        let lower = cursor.max(floor);
        for (at, days_left) in countdown_fires(c, tz) {
            if at > lower && at <= now {
                let rule = format!("countdown:{}:{days_left}", c.id);
                let kind = OutboundKind::Countdown;
                out.push(job(
                    kind,
                    rule,
                    at,
                    "countdown",
                    Some(days_left),
                    &c.event_name,
                ));
            }
        }
    }
    if let Some(at) = reactivation_at(t, s, &s.service_hours, now) {
        if at <= now {
            t.last_reactivation_ms = Some(now);
            let kind = OutboundKind::Reactivation;
            out.push(job(
                kind,
                "reactivation".into(),
                at,
                "reactivation",
                None,
                "",
            ));
        }
    }
    out
}

/// The cursor of rule `id` (a rule first seen starts where the chat became known) when it is
/// before `now`, moving it to `now`; None when the rule already ran up to `now`.
fn advance(
    cursors: &mut BTreeMap<String, i64>,
    id: &str,
    known_since_ms: i64,
    now: i64,
) -> Option<i64> {
    let cursor = *cursors.entry(id.to_string()).or_insert(known_since_ms);
    if cursor >= now {
        return None;
    }
    cursors.insert(id.to_string(), now);
    Some(cursor)
}

/// The earliest time [`collect_chat`] will return something for this chat (None: nothing
/// planned). Never earlier than `now` for re-activation, so a caller sleeping until then cannot
/// spin.
pub fn next_due_chat(t: &ChatTimers, s: &Settings, now: i64) -> Option<i64> {
    let mut best: Option<i64> = None;
    let mut consider = |at: i64| best = Some(best.map_or(at, |b| b.min(at)));
    let tz = s.timezone;
    for job in &s.schedules {
        let cursor = t
            .cron_cursor
            .get(&job.id)
            .copied()
            .unwrap_or(t.known_since_ms);
        if let Some(at) = next_cron_after(&job.schedule, tz, cursor) {
            consider(at);
        }
    }
    for c in &s.countdowns {
        let cursor = t
            .countdown_cursor
            .get(&c.id)
            .copied()
            .unwrap_or(t.known_since_ms);
        if let Some(at) = countdown_fires(c, tz)
            .into_iter()
            .map(|f| f.0)
            .filter(|&a| a > cursor)
            .min()
        {
            consider(at);
        }
    }
    if let Some(at) = reactivation_at(t, s, &s.service_hours, now) {
        consider(at);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn sh() -> Tz {
        chrono_tz::Asia::Shanghai
    }

    fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        to_ms(
            sh(),
            NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, s)
                .unwrap(),
        )
    }

    #[test]
    fn cron_occurrences_in_shanghai_time() {
        let s = crate::policy::config::parse_cron("0 9 * * *").unwrap();
        // 09:00 Shanghai = 01:00 UTC.
        let fire = latest_cron_in(&s, sh(), ms(2027, 3, 1, 8, 0, 0), ms(2027, 3, 1, 9, 0, 0));
        assert_eq!(fire, Some(ms(2027, 3, 1, 9, 0, 0)));
        assert_eq!(fire.unwrap() % 86_400_000, 3_600_000);
        assert_eq!(
            latest_cron_in(&s, sh(), ms(2027, 3, 1, 8, 0, 0), ms(2027, 3, 1, 8, 59, 59)),
            None
        );
        assert_eq!(
            next_cron_after(&s, sh(), ms(2027, 3, 1, 9, 0, 0)),
            Some(ms(2027, 3, 2, 9, 0, 0))
        );
    }

    #[test]
    fn countdown_fire_times() {
        let c = Countdown {
            id: "launch".into(),
            event_name: "新品发布会".into(),
            date: NaiveDate::from_ymd_opt(2027, 3, 20).unwrap(),
            at_min: 10 * 60,
            days_before: vec![0, 1, 3],
        };
        let f = countdown_fires(&c, sh());
        assert_eq!(
            f,
            vec![
                (ms(2027, 3, 20, 10, 0, 0), 0),
                (ms(2027, 3, 19, 10, 0, 0), 1),
                (ms(2027, 3, 17, 10, 0, 0), 3)
            ]
        );
    }
}
