//! Loading and validating the operator files in `config/operator/`:
//! `playbook.yml`, `replies.yml` ([`super::replies`]), `banned_words.txt`
//! ([`super::compliance`]) and `calendar.yml`. Every problem is reported as `file:line: problem`.
//!
//! # playbook.yml
//! ```yaml
//! defaults:            # applies to every bot (and to bots not listed under `bots`)
//!   <settings>
//! bots:
//!   <bot id>:
//!     <settings>       # overrides `defaults` for this bot
//!     groups:
//!       <chat id>:
//!         <settings>   # overrides the bot's settings in this group (not `timezone`/`groups`)
//! ```
//! Settings merge key by key (a nested block such as `spacing` merges field by field; lists
//! replace the whole list). Keys and built-in defaults (all optional):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `timezone` | `Asia/Shanghai` | IANA zone for greetings, service hours, schedules (bot level only) |
//! | `style` | first style in replies.yml | reply style for the group/bot |
//! | `user_tag_styles` | `{}` | user tag → style; wins over `style` |
//! | `service_hours` | `[]` (always open) | list of `{days: [mon..sun], from: "HH:MM", to: "HH:MM"}` |
//! | `spacing.min_interval_s` | 15 (5..=60) | minimum gap between bot sends in a group |
//! | `spacing.jitter_ms` | 3000 (0..=30000) | random extra delay added to each send |
//! | `spacing.queue_limit` | 3 (1..=20) | queued sends per group before new replies are dropped |
//! | `cooldown.default_s` | 300 (0..=86400) | same user + same intent answered at most once per this |
//! | `cooldown.per_intent_s` | `{}` | intent → seconds (0..=86400) |
//! | `handoff.intents` | `[complaint, ask_human]` | always handed to a human |
//! | `handoff.minutes_per_handoff` | 5 (1..=120) | wait estimate per open handoff |
//! | `handoff.fixed_wait_minutes` | unset (1..=1440) | announce this wait instead of the estimate |
//! | `handoff.max_wait_minutes` | 120 (1..=1440) | cap of the estimate |
//! | `handoff.open_ttl_minutes` | 60 (1..=1440) | a handoff stops counting as open after this |
//! | `handoff.not_understood_limit` | 2 (1..=10) | consecutive not-understood messages → handoff |
//! | `handoff.human_share_target` | 0.30 (0.0..=1.0) | target human share per group |
//! | `welcome.enabled` | true | welcome new members |
//! | `welcome.merge_window_s` | 60 (0..=600) | joins within this window get one welcome |
//! | `disclosure.enabled` | true | first-contact automation notice |
//! | `reactivation.enabled` | true | remind silent groups |
//! | `reactivation.silence_hours` | 24 (1..=720) | silence before a reminder |
//! | `reactivation.period_hours` | 24 (1..=720) | at most one reminder per this period |
//! | `silent_intents` | `[]` | intents the bot never answers (IGNORE) |
//! | `rules` | `[]` | attribute rules `{id, intents, when, reply}` |
//! | `pushes` | `[]` | personal pushes `{id, when, reply, delay_s}` |
//! | `frequency.window_hours` | 168 (1..=2160) | window for counting a user's messages |
//! | `frequency.tiers` | 20→24 h, 5→72 h, 0→168 h | `{min_messages, push_interval_hours}` |
//! | `schedules` | `[]` | `{id, cron, reply}`; cron has 5 (min hour dom mon dow) or 6/7 fields |
//! | `countdowns` | `[]` | `{id, event_name, date, at, days_before}` |
//! | `experiments` | `[]` | `{id, intent, variants: [{variant, weight}]}`, ≥ 2 variants |
//! | `schedule_grace_s` | 600 (0..=86400) | a scheduled send later than this is skipped |
//!
//! `when` (rules, pushes): `{tags_any: [..], cities: [..], vip_min: N, min_messages: N}`.
//!
//! # calendar.yml
//! `festivals: [{name, date: YYYY-MM-DD, days: 1..=30 (default 1), greeting}]`.

use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use super::ab::Experiment;
use super::attributes::{AttrRule, Condition, FrequencyConfig, PushRule, Tier};
use super::compliance::BannedWords;
use super::cooldown::CooldownConfig;
use super::handoff::HandoffConfig;
use super::hours::{parse_weekday, weekday_bit, ServiceHours, Window};
use super::replies::{is_intent, ReplyLibrary, CHAT_VARS};
use super::spacing::SpacingConfig;
use super::templates::{parse_hhmm, Calendar, Festival};
use super::yaml::{self, line_of, Seg};
use super::PolicyError;

pub const PLAYBOOK_FILE: &str = "playbook.yml";
pub const REPLIES_FILE: &str = "replies.yml";
pub const BANNED_FILE: &str = "banned_words.txt";
pub const CALENDAR_FILE: &str = "calendar.yml";

const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, PartialEq)]
pub struct ReactivationConfig {
    pub enabled: bool,
    pub silence_ms: i64,
    pub period_ms: i64,
}

#[derive(Debug, Clone)]
pub struct CronJob {
    pub id: String,
    pub schedule: cron::Schedule,
    /// Key of a `named` reply (group-wide: no `{nickname}`).
    pub reply: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Countdown {
    pub id: String,
    pub event_name: String,
    pub date: NaiveDate,
    /// Local minute of day the reminder goes.
    pub at_min: u32,
    pub days_before: Vec<u32>,
}

/// The effective settings for one (bot, group).
#[derive(Debug, Clone)]
pub struct Settings {
    pub timezone: Tz,
    pub style: String,
    pub user_tag_styles: Vec<(String, String)>,
    pub service_hours: ServiceHours,
    pub spacing: SpacingConfig,
    pub cooldown: CooldownConfig,
    pub handoff: HandoffConfig,
    pub welcome_enabled: bool,
    pub welcome_merge_window_ms: i64,
    pub disclosure_enabled: bool,
    pub reactivation: ReactivationConfig,
    pub silent_intents: HashSet<String>,
    pub rules: Vec<AttrRule>,
    pub pushes: Vec<PushRule>,
    pub frequency: FrequencyConfig,
    pub schedules: Vec<CronJob>,
    pub countdowns: Vec<Countdown>,
    pub experiments: Vec<Experiment>,
    pub schedule_grace_ms: i64,
}

impl Settings {
    fn builtin(default_style: &str) -> Self {
        Settings {
            timezone: chrono_tz::Asia::Shanghai,
            style: default_style.to_string(),
            user_tag_styles: Vec::new(),
            service_hours: ServiceHours::default(),
            spacing: SpacingConfig::default(),
            cooldown: CooldownConfig {
                default_ms: 300_000,
                per_intent_ms: HashMap::new(),
            },
            handoff: HandoffConfig::default(),
            welcome_enabled: true,
            welcome_merge_window_ms: 60_000,
            disclosure_enabled: true,
            reactivation: ReactivationConfig {
                enabled: true,
                silence_ms: 24 * HOUR_MS,
                period_ms: 24 * HOUR_MS,
            },
            silent_intents: HashSet::new(),
            rules: Vec::new(),
            pushes: Vec::new(),
            frequency: FrequencyConfig::default(),
            schedules: Vec::new(),
            countdowns: Vec::new(),
            experiments: Vec::new(),
            schedule_grace_ms: 600_000,
        }
    }

    /// The style for this user: the first of their tags with a configured style, else `style`.
    pub fn style_for(&self, tags: &[String]) -> &str {
        self.user_tag_styles
            .iter()
            .find(|(tag, _)| tags.contains(tag))
            .map(|(_, s)| s.as_str())
            .unwrap_or(&self.style)
    }

    pub fn experiment_for(&self, intent: &str) -> Option<&Experiment> {
        self.experiments.iter().find(|e| e.intent == intent)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw YAML shapes (unknown keys are errors).

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlaybook {
    #[serde(default)]
    defaults: RawSettings,
    #[serde(default)]
    bots: BTreeMap<String, RawSettings>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    timezone: Option<String>,
    style: Option<String>,
    user_tag_styles: Option<BTreeMap<String, String>>,
    service_hours: Option<Vec<RawHours>>,
    spacing: Option<RawSpacing>,
    cooldown: Option<RawCooldown>,
    handoff: Option<RawHandoff>,
    welcome: Option<RawWelcome>,
    disclosure: Option<RawDisclosure>,
    reactivation: Option<RawReactivation>,
    silent_intents: Option<Vec<String>>,
    rules: Option<Vec<RawRule>>,
    pushes: Option<Vec<RawPush>>,
    frequency: Option<RawFrequency>,
    schedules: Option<Vec<RawSchedule>>,
    countdowns: Option<Vec<RawCountdown>>,
    experiments: Option<Vec<RawExperiment>>,
    schedule_grace_s: Option<i64>,
    groups: Option<BTreeMap<String, RawSettings>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHours {
    days: Vec<String>,
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpacing {
    min_interval_s: Option<i64>,
    jitter_ms: Option<i64>,
    queue_limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCooldown {
    default_s: Option<i64>,
    per_intent_s: Option<BTreeMap<String, i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandoff {
    intents: Option<Vec<String>>,
    minutes_per_handoff: Option<i64>,
    fixed_wait_minutes: Option<i64>,
    max_wait_minutes: Option<i64>,
    open_ttl_minutes: Option<i64>,
    not_understood_limit: Option<i64>,
    human_share_target: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWelcome {
    enabled: Option<bool>,
    merge_window_s: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisclosure {
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReactivation {
    enabled: Option<bool>,
    silence_hours: Option<i64>,
    period_hours: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    #[serde(default)]
    tags_any: Vec<String>,
    #[serde(default)]
    cities: Vec<String>,
    vip_min: Option<i64>,
    min_messages: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    #[serde(default)]
    intents: Vec<String>,
    #[serde(default)]
    when: RawCondition,
    reply: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPush {
    id: String,
    #[serde(default)]
    when: RawCondition,
    reply: String,
    #[serde(default)]
    delay_s: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrequency {
    window_hours: Option<i64>,
    tiers: Option<Vec<RawTier>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    min_messages: i64,
    push_interval_hours: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    id: String,
    cron: String,
    reply: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCountdown {
    id: String,
    event_name: String,
    date: String,
    at: String,
    days_before: Vec<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    id: String,
    intent: String,
    variants: Vec<RawExpVariant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpVariant {
    variant: String,
    weight: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendar {
    #[serde(default)]
    festivals: Vec<RawFestival>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFestival {
    name: String,
    date: String,
    #[serde(default)]
    days: Option<i64>,
    greeting: String,
}

// ---------------------------------------------------------------------------------------------

/// Validation context: where the text came from, plus what references are checked against.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    replies: &'a ReplyLibrary,
    banned: &'a BannedWords,
}

impl Ctx<'_> {
    fn err(&self, prefix: &[Seg<'_>], tail: &[Seg<'_>], msg: impl Into<String>) -> PolicyError {
        let mut p: Vec<Seg<'_>> = prefix.to_vec();
        p.extend_from_slice(tail);
        PolicyError::config(self.file, line_of(self.text, &p), msg)
    }

    fn range(
        &self,
        prefix: &[Seg<'_>],
        tail: &[Seg<'_>],
        name: &str,
        v: i64,
        lo: i64,
        hi: i64,
    ) -> Result<i64, PolicyError> {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(self.err(prefix, tail, format!("{name} must be {lo}..={hi}, got {v}")))
        }
    }

    fn intent(
        &self,
        prefix: &[Seg<'_>],
        tail: &[Seg<'_>],
        name: &str,
    ) -> Result<String, PolicyError> {
        if is_intent(name) {
            Ok(name.to_string())
        } else {
            Err(self.err(prefix, tail, format!("unknown intent '{name}'")))
        }
    }

    fn style(
        &self,
        prefix: &[Seg<'_>],
        tail: &[Seg<'_>],
        name: &str,
    ) -> Result<String, PolicyError> {
        if self.replies.styles.iter().any(|s| s == name) {
            Ok(name.to_string())
        } else {
            Err(self.err(
                prefix,
                tail,
                format!(
                    "unknown style '{name}' (styles in replies.yml: {})",
                    self.replies.styles.join(", ")
                ),
            ))
        }
    }

    fn named_reply(
        &self,
        prefix: &[Seg<'_>],
        tail: &[Seg<'_>],
        key: &str,
    ) -> Result<String, PolicyError> {
        if self.replies.has(key) {
            Ok(key.to_string())
        } else {
            Err(self.err(
                prefix,
                tail,
                format!("reply '{key}' is not defined under 'named' in replies.yml"),
            ))
        }
    }

    fn condition(&self, prefix: &[Seg<'_>], c: &RawCondition) -> Result<Condition, PolicyError> {
        let vip_min = match c.vip_min {
            Some(v) => Some(self.range(
                prefix,
                &[Seg::Key("when"), Seg::Key("vip_min")],
                "vip_min",
                v,
                0,
                100,
            )? as u32),
            None => None,
        };
        let min_messages = match c.min_messages {
            Some(v) => Some(self.range(
                prefix,
                &[Seg::Key("when"), Seg::Key("min_messages")],
                "min_messages",
                v,
                0,
                100_000,
            )? as u32),
            None => None,
        };
        Ok(Condition {
            tags_any: c.tags_any.clone(),
            cities: c.cities.clone(),
            vip_min,
            min_messages,
        })
    }
}

fn simple_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parse a cron expression; 5 fields (minute hour day month weekday) get a leading "0" seconds.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {expr}"),
        6 | 7 => expr.to_string(),
        n => return Err(format!("cron '{expr}' must have 5, 6 or 7 fields, got {n}")),
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("cron '{expr}' is not valid: {e}"))
}

/// Apply one raw settings block on top of `s`. `level` is "defaults", "bot" or "group".
fn apply(
    s: &mut Settings,
    raw: &RawSettings,
    cx: &Ctx<'_>,
    pre: &[Seg<'_>],
    level: &str,
) -> Result<(), PolicyError> {
    use Seg::{Idx, Key};
    if let Some(tz) = &raw.timezone {
        if level == "group" {
            return Err(cx.err(
                pre,
                &[Key("timezone")],
                "timezone can only be set for a bot, not a group",
            ));
        }
        s.timezone = tz
            .parse::<Tz>()
            .map_err(|_| cx.err(pre, &[Key("timezone")], format!("unknown time zone '{tz}'")))?;
    }
    if raw.groups.is_some() && level != "bot" {
        return Err(cx.err(pre, &[Key("groups")], "groups can only be set under a bot"));
    }
    if let Some(st) = &raw.style {
        s.style = cx.style(pre, &[Key("style")], st)?;
    }
    if let Some(m) = &raw.user_tag_styles {
        let mut v = Vec::new();
        for (tag, st) in m {
            v.push((
                tag.clone(),
                cx.style(pre, &[Key("user_tag_styles"), Key(tag)], st)?,
            ));
        }
        s.user_tag_styles = v;
    }
    if let Some(hours) = &raw.service_hours {
        let mut windows = Vec::new();
        for (i, h) in hours.iter().enumerate() {
            let at = [Key("service_hours"), Idx(i)];
            let mut days = 0u8;
            if h.days.is_empty() {
                return Err(cx.err(pre, &at, "service_hours entry needs at least one day"));
            }
            for d in &h.days {
                let wd = parse_weekday(d).ok_or_else(|| {
                    cx.err(
                        pre,
                        &at,
                        format!("unknown day '{d}' (use mon, tue, wed, thu, fri, sat, sun)"),
                    )
                })?;
                days |= weekday_bit(wd);
            }
            let from = parse_hhmm(&h.from).map_err(|e| cx.err(pre, &at, e))?;
            let to = parse_hhmm(&h.to).map_err(|e| cx.err(pre, &at, e))?;
            if from >= to {
                return Err(cx.err(
                    pre,
                    &at,
                    format!(
                        "service_hours 'to' ({}) must be after 'from' ({})",
                        h.to, h.from
                    ),
                ));
            }
            windows.push(Window {
                days,
                from_min: from,
                to_min: to,
            });
        }
        s.service_hours = ServiceHours { windows };
    }
    if let Some(sp) = &raw.spacing {
        let p = [Key("spacing")];
        if let Some(v) = sp.min_interval_s {
            s.spacing.min_interval_ms = cx.range(
                pre,
                &[p[0], Key("min_interval_s")],
                "min_interval_s",
                v,
                5,
                60,
            )? * 1000;
        }
        if let Some(v) = sp.jitter_ms {
            s.spacing.jitter_ms =
                cx.range(pre, &[p[0], Key("jitter_ms")], "jitter_ms", v, 0, 30_000)?;
        }
        if let Some(v) = sp.queue_limit {
            s.spacing.queue_limit =
                cx.range(pre, &[p[0], Key("queue_limit")], "queue_limit", v, 1, 20)? as usize;
        }
    }
    if let Some(c) = &raw.cooldown {
        if let Some(v) = c.default_s {
            s.cooldown.default_ms = cx.range(
                pre,
                &[Key("cooldown"), Key("default_s")],
                "default_s",
                v,
                0,
                86_400,
            )? * 1000;
        }
        if let Some(m) = &c.per_intent_s {
            let mut per = HashMap::new();
            for (intent, v) in m {
                let at = [Key("cooldown"), Key("per_intent_s"), Key(intent)];
                cx.intent(pre, &at, intent)?;
                per.insert(
                    intent.clone(),
                    cx.range(pre, &at, "cooldown seconds", *v, 0, 86_400)? * 1000,
                );
            }
            s.cooldown.per_intent_ms = per;
        }
    }
    if let Some(h) = &raw.handoff {
        let k = |name| [Key("handoff"), Key(name)];
        if let Some(list) = &h.intents {
            let mut set = HashSet::new();
            for (i, name) in list.iter().enumerate() {
                set.insert(cx.intent(pre, &[Key("handoff"), Key("intents"), Idx(i)], name)?);
            }
            s.handoff.intents = set;
        }
        if let Some(v) = h.minutes_per_handoff {
            s.handoff.minutes_per_handoff = cx.range(
                pre,
                &k("minutes_per_handoff"),
                "minutes_per_handoff",
                v,
                1,
                120,
            )? as u32;
        }
        if let Some(v) = h.fixed_wait_minutes {
            s.handoff.fixed_wait_minutes = Some(cx.range(
                pre,
                &k("fixed_wait_minutes"),
                "fixed_wait_minutes",
                v,
                1,
                1440,
            )? as u32);
        }
        if let Some(v) = h.max_wait_minutes {
            s.handoff.max_wait_minutes =
                cx.range(pre, &k("max_wait_minutes"), "max_wait_minutes", v, 1, 1440)? as u32;
        }
        if let Some(v) = h.open_ttl_minutes {
            s.handoff.open_ttl_ms =
                cx.range(pre, &k("open_ttl_minutes"), "open_ttl_minutes", v, 1, 1440)? * 60_000;
        }
        if let Some(v) = h.not_understood_limit {
            s.handoff.not_understood_limit = cx.range(
                pre,
                &k("not_understood_limit"),
                "not_understood_limit",
                v,
                1,
                10,
            )? as u32;
        }
        if let Some(v) = h.human_share_target {
            if !(0.0..=1.0).contains(&v) {
                return Err(cx.err(
                    pre,
                    &k("human_share_target"),
                    format!("human_share_target must be 0.0..=1.0, got {v}"),
                ));
            }
            s.handoff.human_share_target = v;
        }
    }
    if let Some(w) = &raw.welcome {
        if let Some(e) = w.enabled {
            s.welcome_enabled = e;
        }
        if let Some(v) = w.merge_window_s {
            s.welcome_merge_window_ms = cx.range(
                pre,
                &[Key("welcome"), Key("merge_window_s")],
                "merge_window_s",
                v,
                0,
                600,
            )? * 1000;
        }
    }
    if let Some(d) = &raw.disclosure {
        if let Some(e) = d.enabled {
            s.disclosure_enabled = e;
        }
    }
    if let Some(r) = &raw.reactivation {
        if let Some(e) = r.enabled {
            s.reactivation.enabled = e;
        }
        if let Some(v) = r.silence_hours {
            s.reactivation.silence_ms = cx.range(
                pre,
                &[Key("reactivation"), Key("silence_hours")],
                "silence_hours",
                v,
                1,
                720,
            )? * HOUR_MS;
        }
        if let Some(v) = r.period_hours {
            s.reactivation.period_ms = cx.range(
                pre,
                &[Key("reactivation"), Key("period_hours")],
                "period_hours",
                v,
                1,
                720,
            )? * HOUR_MS;
        }
    }
    if let Some(list) = &raw.silent_intents {
        let mut set = HashSet::new();
        for (i, name) in list.iter().enumerate() {
            set.insert(cx.intent(pre, &[Key("silent_intents"), Idx(i)], name)?);
        }
        s.silent_intents = set;
    }
    if let Some(rules) = &raw.rules {
        let mut out: Vec<AttrRule> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let p: Vec<Seg<'_>> = pre.iter().copied().chain([Key("rules"), Idx(i)]).collect();
            if !simple_id(&r.id) || out.iter().any(|o| o.id == r.id) {
                return Err(cx.err(
                    &p,
                    &[Key("id")],
                    format!("rule id '{}' must be a unique simple id", r.id),
                ));
            }
            let mut intents = Vec::new();
            for (j, name) in r.intents.iter().enumerate() {
                intents.push(cx.intent(&p, &[Key("intents"), Idx(j)], name)?);
            }
            let when = cx.condition(&p, &r.when)?;
            let reply = cx.named_reply(&p, &[Key("reply")], &r.reply)?;
            out.push(AttrRule {
                id: r.id.clone(),
                intents,
                when,
                reply,
            });
        }
        s.rules = out;
    }
    if let Some(pushes) = &raw.pushes {
        let mut out: Vec<PushRule> = Vec::new();
        for (i, r) in pushes.iter().enumerate() {
            let p: Vec<Seg<'_>> = pre.iter().copied().chain([Key("pushes"), Idx(i)]).collect();
            if !simple_id(&r.id) || out.iter().any(|o| o.id == r.id) {
                return Err(cx.err(
                    &p,
                    &[Key("id")],
                    format!("push id '{}' must be a unique simple id", r.id),
                ));
            }
            let when = cx.condition(&p, &r.when)?;
            let reply = cx.named_reply(&p, &[Key("reply")], &r.reply)?;
            let delay = cx.range(
                &p,
                &[Key("delay_s")],
                "delay_s",
                r.delay_s.unwrap_or(60),
                0,
                86_400,
            )?;
            out.push(PushRule {
                id: r.id.clone(),
                when,
                reply,
                delay_ms: delay * 1000,
            });
        }
        s.pushes = out;
    }
    if let Some(f) = &raw.frequency {
        if let Some(v) = f.window_hours {
            s.frequency.window_ms = cx.range(
                pre,
                &[Key("frequency"), Key("window_hours")],
                "window_hours",
                v,
                1,
                2160,
            )? * HOUR_MS;
        }
        if let Some(tiers) = &f.tiers {
            let mut out = Vec::new();
            for (i, t) in tiers.iter().enumerate() {
                let at = [Key("frequency"), Key("tiers"), Idx(i)];
                let m = cx.range(pre, &at, "min_messages", t.min_messages, 0, 100_000)? as u32;
                let h = cx.range(
                    pre,
                    &at,
                    "push_interval_hours",
                    t.push_interval_hours,
                    1,
                    8760,
                )?;
                out.push(Tier {
                    min_messages: m,
                    interval_ms: h * HOUR_MS,
                });
            }
            if out.is_empty() {
                return Err(cx.err(
                    pre,
                    &[Key("frequency"), Key("tiers")],
                    "frequency.tiers needs at least one tier",
                ));
            }
            out.sort_by_key(|t| std::cmp::Reverse(t.min_messages));
            s.frequency.tiers = out;
        }
    }
    if let Some(list) = &raw.schedules {
        let mut out: Vec<CronJob> = Vec::new();
        for (i, r) in list.iter().enumerate() {
            let p: Vec<Seg<'_>> = pre
                .iter()
                .copied()
                .chain([Key("schedules"), Idx(i)])
                .collect();
            if !simple_id(&r.id) || out.iter().any(|o| o.id == r.id) {
                return Err(cx.err(
                    &p,
                    &[Key("id")],
                    format!("schedule id '{}' must be a unique simple id", r.id),
                ));
            }
            let schedule = parse_cron(&r.cron).map_err(|e| cx.err(&p, &[Key("cron")], e))?;
            let reply = cx.named_reply(&p, &[Key("reply")], &r.reply)?;
            if let Some(v) = cx
                .replies
                .vars_of(&reply)
                .into_iter()
                .find(|v| !CHAT_VARS.contains(v))
            {
                return Err(cx.err(
                    &p,
                    &[Key("reply")],
                    format!("reply '{reply}' uses '{{{v}}}', which a scheduled message to the whole group cannot fill"),
                ));
            }
            out.push(CronJob {
                id: r.id.clone(),
                schedule,
                reply,
            });
        }
        s.schedules = out;
    }
    if let Some(list) = &raw.countdowns {
        let mut out: Vec<Countdown> = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let p: Vec<Seg<'_>> = pre
                .iter()
                .copied()
                .chain([Key("countdowns"), Idx(i)])
                .collect();
            if !simple_id(&c.id) || out.iter().any(|o| o.id == c.id) {
                return Err(cx.err(
                    &p,
                    &[Key("id")],
                    format!("countdown id '{}' must be a unique simple id", c.id),
                ));
            }
            if c.event_name.trim().is_empty() {
                return Err(cx.err(&p, &[Key("event_name")], "event_name is empty"));
            }
            if let Some(w) = cx.banned.find(&c.event_name) {
                return Err(cx.err(
                    &p,
                    &[Key("event_name")],
                    format!("event_name contains the banned word '{w}'"),
                ));
            }
            let date = NaiveDate::parse_from_str(&c.date, "%Y-%m-%d").map_err(|_| {
                cx.err(
                    &p,
                    &[Key("date")],
                    format!("date must be YYYY-MM-DD, got '{}'", c.date),
                )
            })?;
            let at_min = parse_hhmm(&c.at).map_err(|e| cx.err(&p, &[Key("at")], e))?;
            if at_min >= 1440 {
                return Err(cx.err(&p, &[Key("at")], "at must be before 24:00"));
            }
            if c.days_before.is_empty() {
                return Err(cx.err(
                    &p,
                    &[Key("days_before")],
                    "days_before needs at least one day",
                ));
            }
            let mut days = Vec::new();
            for (j, d) in c.days_before.iter().enumerate() {
                days.push(
                    cx.range(&p, &[Key("days_before"), Idx(j)], "days_before", *d, 0, 365)? as u32,
                );
            }
            days.sort_unstable();
            days.dedup();
            out.push(Countdown {
                id: c.id.clone(),
                event_name: c.event_name.clone(),
                date,
                at_min,
                days_before: days,
            });
        }
        s.countdowns = out;
    }
    if let Some(list) = &raw.experiments {
        let mut out: Vec<Experiment> = Vec::new();
        for (i, e) in list.iter().enumerate() {
            let p: Vec<Seg<'_>> = pre
                .iter()
                .copied()
                .chain([Key("experiments"), Idx(i)])
                .collect();
            if !simple_id(&e.id) || out.iter().any(|o| o.id == e.id) {
                return Err(cx.err(
                    &p,
                    &[Key("id")],
                    format!("experiment id '{}' must be a unique simple id", e.id),
                ));
            }
            let intent = cx.intent(&p, &[Key("intent")], &e.intent)?;
            if out.iter().any(|o| o.intent == intent) {
                return Err(cx.err(
                    &p,
                    &[Key("intent")],
                    format!("intent '{intent}' already has an experiment"),
                ));
            }
            if e.variants.len() < 2 {
                return Err(cx.err(
                    &p,
                    &[Key("variants")],
                    format!(
                        "an experiment needs at least 2 variants, got {}",
                        e.variants.len()
                    ),
                ));
            }
            let mut variants: Vec<(String, u32)> = Vec::new();
            for (j, v) in e.variants.iter().enumerate() {
                let at = [Key("variants"), Idx(j)];
                if cx.replies.variant(&intent, &v.variant).is_none() {
                    return Err(cx.err(&p, &at, format!("variant '{}' is not a reply variant of intent '{intent}' in replies.yml", v.variant)));
                }
                if variants.iter().any(|x| x.0 == v.variant) {
                    return Err(cx.err(&p, &at, format!("variant '{}' listed twice", v.variant)));
                }
                let w = cx.range(&p, &at, "weight", v.weight, 1, 10_000)? as u32;
                variants.push((v.variant.clone(), w));
            }
            out.push(Experiment {
                id: e.id.clone(),
                intent,
                variants,
            });
        }
        s.experiments = out;
    }
    if let Some(v) = raw.schedule_grace_s {
        s.schedule_grace_ms = cx.range(
            pre,
            &[Key("schedule_grace_s")],
            "schedule_grace_s",
            v,
            0,
            86_400,
        )? * 1000;
    }
    Ok(())
}

/// Everything loaded from `config/operator/`, validated.
#[derive(Debug)]
pub struct OperatorConfig {
    pub replies: ReplyLibrary,
    pub banned: BannedWords,
    pub calendar: Calendar,
    defaults: Arc<Settings>,
    bots: HashMap<String, Arc<Settings>>,
    groups: HashMap<(String, String), Arc<Settings>>,
}

impl OperatorConfig {
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let banned = BannedWords::load(&dir.join(BANNED_FILE))?;
        let replies = ReplyLibrary::load(&dir.join(REPLIES_FILE), &banned)?;
        let calendar = load_calendar(&dir.join(CALENDAR_FILE), &banned)?;
        let path = dir.join(PLAYBOOK_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
            file: path.display().to_string(),
            source,
        })?;
        Self::from_parts(&path, &text, replies, banned, calendar)
    }

    pub fn from_parts(
        path: &Path,
        text: &str,
        replies: ReplyLibrary,
        banned: BannedWords,
        calendar: Calendar,
    ) -> Result<Self, PolicyError> {
        use Seg::Key;
        let raw: RawPlaybook = yaml::parse(path, text)?;
        let cx = Ctx {
            file: path,
            text,
            replies: &replies,
            banned: &banned,
        };
        let base = Settings::builtin(&replies.styles[0]);
        let mut defaults = base.clone();
        apply(
            &mut defaults,
            &raw.defaults,
            &cx,
            &[Key("defaults")],
            "defaults",
        )?;
        let mut bots = HashMap::new();
        let mut groups = HashMap::new();
        for (bot, braw) in &raw.bots {
            let mut bs = defaults.clone();
            apply(&mut bs, braw, &cx, &[Key("bots"), Key(bot)], "bot")?;
            for (chat, graw) in braw.groups.iter().flatten() {
                let mut gs = bs.clone();
                apply(
                    &mut gs,
                    graw,
                    &cx,
                    &[Key("bots"), Key(bot), Key("groups"), Key(chat)],
                    "group",
                )?;
                groups.insert((bot.clone(), chat.clone()), Arc::new(gs));
            }
            bots.insert(bot.clone(), Arc::new(bs));
        }
        Ok(Self {
            replies,
            banned,
            calendar,
            defaults: Arc::new(defaults),
            bots,
            groups,
        })
    }

    /// Effective settings for a (bot, chat): group override, else bot, else defaults.
    pub fn settings(&self, bot: &str, chat: &str) -> &Arc<Settings> {
        self.groups
            .get(&(bot.to_string(), chat.to_string()))
            .or_else(|| self.bots.get(bot))
            .unwrap_or(&self.defaults)
    }

    /// Bot ids listed under `bots:`.
    pub fn configured_bots(&self) -> impl Iterator<Item = &str> {
        self.bots.keys().map(String::as_str)
    }
}

pub fn load_calendar(path: &Path, banned: &BannedWords) -> Result<Calendar, PolicyError> {
    use Seg::{Idx, Key};
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        file: path.display().to_string(),
        source,
    })?;
    let raw: RawCalendar = yaml::parse(path, &text)?;
    let mut festivals = Vec::new();
    for (i, f) in raw.festivals.iter().enumerate() {
        let at = |k| {
            PolicyError::config(
                path,
                line_of(&text, &[Key("festivals"), Idx(i), Key(k)]),
                "",
            )
        };
        let fail = |k: &'static str, msg: String| match at(k) {
            PolicyError::Config { file, line, .. } => PolicyError::Config { file, line, msg },
            e => e,
        };
        if f.name.trim().is_empty() {
            return Err(fail("name", "festival name is empty".into()));
        }
        let date = NaiveDate::parse_from_str(&f.date, "%Y-%m-%d")
            .map_err(|_| fail("date", format!("date must be YYYY-MM-DD, got '{}'", f.date)))?;
        let days = f.days.unwrap_or(1);
        if !(1..=30).contains(&days) {
            return Err(fail("days", format!("days must be 1..=30, got {days}")));
        }
        if f.greeting.trim().is_empty() {
            return Err(fail("greeting", "greeting is empty".into()));
        }
        if let Some(w) = banned.find(&f.greeting) {
            return Err(fail(
                "greeting",
                format!("greeting contains the banned word '{w}'"),
            ));
        }
        festivals.push(Festival {
            name: f.name.clone(),
            date,
            days: days as u32,
            greeting: f.greeting.clone(),
        });
    }
    Ok(Calendar { festivals })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::replies::tests::minimal_yaml;

    fn lib() -> (ReplyLibrary, BannedWords) {
        let b = BannedWords::new(["微信"]).unwrap();
        let y = minimal_yaml()
            + "named:\n  vip_service:\n    - { id: v1, style: professional, text: \"{nickname}您好，VIP专属客服为您服务\" }\n  daily_tip:\n    - { id: t1, style: playful, text: \"{greeting}！今日小贴士\" }\n";
        (
            ReplyLibrary::parse(Path::new("replies.yml"), &y, &b).unwrap(),
            b,
        )
    }

    fn load(text: &str) -> Result<OperatorConfig, PolicyError> {
        let (r, b) = lib();
        OperatorConfig::from_parts(Path::new("playbook.yml"), text, r, b, Calendar::default())
    }

    #[test]
    fn empty_playbook_gives_builtin_defaults() {
        let c = load("defaults: {}\n").unwrap();
        let s = c.settings("any_bot", "any_chat");
        assert_eq!(
            s.spacing,
            SpacingConfig {
                min_interval_ms: 15_000,
                jitter_ms: 3_000,
                queue_limit: 3
            }
        );
        assert_eq!(s.cooldown.default_ms, 300_000);
        assert_eq!(s.welcome_merge_window_ms, 60_000);
        assert_eq!(s.handoff.human_share_target, 0.30);
        assert!(s.handoff.intents.contains("complaint"));
        assert_eq!(s.style, "playful");
        assert_eq!(s.timezone, chrono_tz::Asia::Shanghai);
    }

    #[test]
    fn bot_and_group_overrides_merge_key_by_key() {
        let c = load(
            "defaults:\n  spacing:\n    min_interval_s: 20\n  style: professional\nbots:\n  b1:\n    spacing:\n      jitter_ms: 0\n    groups:\n      g1:\n        welcome:\n          enabled: false\n        style: playful\n",
        )
        .unwrap();
        let g = c.settings("b1", "g1");
        assert_eq!(g.spacing.min_interval_ms, 20_000);
        assert_eq!(g.spacing.jitter_ms, 0);
        assert!(!g.welcome_enabled);
        assert_eq!(g.style, "playful");
        let b = c.settings("b1", "other");
        assert!(b.welcome_enabled);
        assert_eq!(b.style, "professional");
        assert_eq!(c.settings("b2", "x").spacing.jitter_ms, 3_000);
    }

    #[test]
    fn range_errors_name_line_and_range() {
        let text = "defaults:\n  style: professional\nbots:\n  b1:\n    groups:\n      g1:\n        spacing:\n          min_interval_s: 90\n";
        let e = load(text).unwrap_err().to_string();
        assert_eq!(e, "playbook.yml:8: min_interval_s must be 5..=60, got 90");
    }

    #[test]
    fn unknown_keys_and_bad_references_are_errors() {
        let e = load("defaults:\n  spacing:\n    min_interval: 10\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("playbook.yml:3: defaults.spacing: unknown field `min_interval`"),
            "{e}"
        );
        let e = load("defaults:\n  handoff:\n    intents: [complaint, refnd]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "playbook.yml:3: unknown intent 'refnd'");
        let e = load(
            "defaults:\n  rules:\n    - id: r1\n      when: {vip_min: 3}\n      reply: nope\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "playbook.yml:5: reply 'nope' is not defined under 'named' in replies.yml"
        );
        let e = load("defaults:\n  schedules:\n    - id: s1\n      cron: \"61 9 * * *\"\n      reply: daily_tip\n").unwrap_err().to_string();
        assert!(
            e.starts_with("playbook.yml:4: cron '61 9 * * *' is not valid"),
            "{e}"
        );
        let e = load("defaults:\n  schedules:\n    - id: s1\n      cron: \"0 9 * * *\"\n      reply: vip_service\n").unwrap_err().to_string();
        assert!(
            e.starts_with("playbook.yml:5: reply 'vip_service' uses '{nickname}'"),
            "{e}"
        );
        let e = load("bots:\n  b1:\n    groups:\n      g1:\n        timezone: Asia/Tokyo\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "playbook.yml:5: timezone can only be set for a bot, not a group"
        );
        let e = load("defaults:\n  timezone: Mars/Base\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "playbook.yml:2: unknown time zone 'Mars/Base'");
        let e = load("defaults:\n  experiments:\n    - id: e1\n      intent: price\n      variants:\n        - {variant: a, weight: 1}\n        - {variant: zz, weight: 1}\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "playbook.yml:7: variant 'zz' is not a reply variant of intent 'price' in replies.yml"
        );
        let e = load(
            "defaults:\n  service_hours:\n    - {days: [mon], from: \"18:00\", to: \"09:00\"}\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "playbook.yml:3: service_hours 'to' (09:00) must be after 'from' (18:00)"
        );
        let e = load("defaults:\n  countdowns:\n    - id: c1\n      event_name: 加微信抽奖\n      date: 2027-03-20\n      at: \"10:00\"\n      days_before: [3]\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "playbook.yml:4: event_name contains the banned word '微信'"
        );
    }

    #[test]
    fn cron_accepts_five_fields() {
        assert!(parse_cron("0 9 * * *").is_ok());
        assert!(parse_cron("0 0 9 * * Mon-Fri").is_ok());
        assert!(parse_cron("9 * *").is_err());
    }

    #[test]
    fn calendar_loads_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("calendar.yml");
        let b = BannedWords::new(["微信"]).unwrap();
        std::fs::write(&p, "festivals:\n  - name: 春节\n    date: 2027-02-06\n    days: 3\n    greeting: 新春快乐！\n").unwrap();
        let cal = load_calendar(&p, &b).unwrap();
        assert_eq!(
            cal.greeting_on(NaiveDate::from_ymd_opt(2027, 2, 7).unwrap()),
            "新春快乐！"
        );
        std::fs::write(
            &p,
            "festivals:\n  - name: 春节\n    date: 2027-02-30\n    greeting: 新春快乐！\n",
        )
        .unwrap();
        let e = load_calendar(&p, &b).unwrap_err().to_string();
        assert!(
            e.ends_with("calendar.yml:3: date must be YYYY-MM-DD, got '2027-02-30'"),
            "{e}"
        );
    }
}
