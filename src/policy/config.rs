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
//! replace the whole list). Intents named anywhere must be in `intents.yml`. Keys and built-in
//! defaults (all optional):
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
//! | `disclosure.answered_by` | `[]` | intents whose reply is itself the disclosure (no extra notice) |
//! | `reactivation.enabled` | true | remind silent groups |
//! | `reactivation.silence_hours` | 24 (1..=720) | silence before a reminder |
//! | `reactivation.period_hours` | 24 (1..=720) | at most one reminder per this period |
//! | `silent_intents` | `[]` | intents the bot never answers (IGNORE) |
//! | `block_intents` | `[]` | intents blocked like a banned word: BLOCK, reason = the intent, review entry |
//! | `rules` | `[]` | attribute rules `{id, intents, when, reply}` |
//! | `pushes` | `[]` | personal pushes `{id, when, reply, delay_s}` |
//! | `frequency.window_hours` | 168 (1..=2160) | window for counting a user's messages |
//! | `frequency.tiers` | 20→24 h, 5→72 h, 0→168 h | `{min_messages, push_interval_hours}` |
//! | `schedules` | `[]` | `{id, cron, reply}`; cron has 5 (min hour dom mon dow) or 6/7 fields |
//! | `countdowns` | `[]` | `{id, event_name, date, at, days_before}` |
//! | `experiments` | `[]` | `{id, intent \| reply, variants: [{variant, weight}]}`, ≥ 2 variants; `reply`: any reply set (`welcome`, a push's or schedule's named reply, `reactivation`, `countdown`, `link:<id>`) |
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
use super::replies::{ReplyLibrary, CHAT_VARS};
use super::spacing::SpacingConfig;
use super::templates::{parse_hhmm, Calendar, Festival, Var};
use crate::data::yaml::{Seg, YamlFile};
use crate::data::FileError;
use crate::engine::catalog::Catalog;

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
    /// Intents whose reply is itself the automation disclosure (no separate notice).
    pub disclosure_answered_by: HashSet<String>,
    pub reactivation: ReactivationConfig,
    pub silent_intents: HashSet<String>,
    /// Intents blocked like a banned word (BLOCK with the intent as reason, review entry).
    pub block_intents: HashSet<String>,
    pub rules: Vec<AttrRule>,
    pub pushes: Vec<PushRule>,
    pub frequency: FrequencyConfig,
    pub schedules: Vec<CronJob>,
    pub countdowns: Vec<Countdown>,
    pub experiments: Vec<Experiment>,
    pub schedule_grace_ms: i64,
}

impl Settings {
    /// The highest interaction count any condition compares with (frequency tiers, reply rules,
    /// pushes): counting further changes no decision.
    pub fn interactions_counted(&self) -> u32 {
        let tiers = self.frequency.tiers.iter().map(|t| t.min_messages);
        let rules = self.rules.iter().filter_map(|r| r.when.min_messages);
        let pushes = self.pushes.iter().filter_map(|p| p.when.min_messages);
        tiers.chain(rules).chain(pushes).max().unwrap_or(0)
    }

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
            disclosure_answered_by: HashSet::new(),
            reactivation: ReactivationConfig {
                enabled: true,
                silence_ms: 24 * HOUR_MS,
                period_ms: 24 * HOUR_MS,
            },
            silent_intents: HashSet::new(),
            block_intents: HashSet::new(),
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

    /// The experiment on a reply set (library key: an intent id for intent replies).
    pub fn experiment_for(&self, key: &str) -> Option<&Experiment> {
        self.experiments.iter().find(|e| e.key == key)
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
    block_intents: Option<Vec<String>>,
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
    answered_by: Option<Vec<String>>,
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
    #[serde(default)]
    handoff: bool,
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
    #[serde(default)]
    intent: Option<String>,
    #[serde(default)]
    reply: Option<String>,
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
// Validation: each section of a settings block has its own function; `At` carries where the
// block sits in the file, so every error names the line of the offending key.

/// What references are checked against while validating `playbook.yml`.
struct Refs<'a> {
    file: &'a YamlFile,
    catalog: &'a Catalog,
    replies: &'a ReplyLibrary,
    banned: &'a BannedWords,
}

/// A position in `playbook.yml` (a path of keys and list indices) plus the references.
#[derive(Clone)]
struct At<'a> {
    refs: &'a Refs<'a>,
    path: Vec<Seg<'a>>,
}

impl<'a> At<'a> {
    /// The position `tail` below this one.
    fn at(&self, tail: &[Seg<'a>]) -> At<'a> {
        let mut path = self.path.clone();
        path.extend_from_slice(tail);
        At {
            refs: self.refs,
            path,
        }
    }

    fn key(&self, key: &'a str) -> At<'a> {
        self.at(&[Key(key)])
    }

    fn err(&self, tail: &[Seg<'a>], msg: impl Into<String>) -> FileError {
        self.refs.file.error(&self.at(tail).path, msg)
    }

    /// `v` when it lies in `lo..=hi`, else an error naming the key and the range.
    fn range(&self, key: &'a str, v: i64, lo: i64, hi: i64) -> Result<i64, FileError> {
        self.range_at(&[Key(key)], key, v, lo, hi)
    }

    fn range_at(
        &self,
        tail: &[Seg<'a>],
        name: &str,
        v: i64,
        lo: i64,
        hi: i64,
    ) -> Result<i64, FileError> {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(self.err(tail, format!("{name} must be {lo}..={hi}, got {v}")))
        }
    }

    /// An optional ranged value, scaled to the unit the settings keep.
    fn scaled(
        &self,
        key: &'a str,
        v: Option<i64>,
        (lo, hi): (i64, i64),
        unit: i64,
    ) -> Result<Option<i64>, FileError> {
        v.map(|v| self.range(key, v, lo, hi).map(|v| v * unit))
            .transpose()
    }

    fn intent(&self, tail: &[Seg<'a>], name: &str) -> Result<String, FileError> {
        if self.refs.catalog.contains(name) {
            Ok(name.to_string())
        } else {
            Err(self.err(tail, format!("unknown intent '{name}'")))
        }
    }

    /// A list of intents under `key`, each checked against the catalog.
    fn intents(&self, key: &'a str, list: &[String]) -> Result<HashSet<String>, FileError> {
        let list_at = self.key(key);
        list.iter()
            .enumerate()
            .map(|(i, name)| list_at.intent(&[Index(i)], name))
            .collect()
    }

    fn style(&self, tail: &[Seg<'a>], name: &str) -> Result<String, FileError> {
        let styles = &self.refs.replies.styles;
        if styles.iter().any(|s| s == name) {
            Ok(name.to_string())
        } else {
            Err(self.err(
                tail,
                format!(
                    "unknown style '{name}' (styles in replies.yml: {})",
                    styles.join(", ")
                ),
            ))
        }
    }

    /// `{wait_minutes}` is filled only when a rule hands the message to a human.
    fn no_wait_minutes(&self, reply: &str, user: &str) -> Result<(), FileError> {
        if self.refs.replies.vars_of(reply).contains(&Var::WaitMinutes) {
            return Err(self.err(
                &[Key("reply")],
                format!(
                    "reply '{reply}' uses '{{wait_minutes}}', which {user} cannot fill (only a \
                     rule with `handoff: true` opens a handoff and knows the wait)"
                ),
            ));
        }
        Ok(())
    }

    fn named_reply(&self, key: &str) -> Result<String, FileError> {
        if self.refs.replies.has(key) {
            Ok(key.to_string())
        } else {
            Err(self.err(
                &[Key("reply")],
                format!("reply '{key}' is not defined under 'named' in replies.yml"),
            ))
        }
    }

    /// `id` must be a simple id not used by an earlier entry of the same list.
    fn unique_id<'i>(
        &self,
        what: &str,
        id: &str,
        mut earlier: impl Iterator<Item = &'i str>,
    ) -> Result<String, FileError> {
        if simple_id(id) && !earlier.any(|e| e == id) {
            Ok(id.to_string())
        } else {
            Err(self.err(
                &[Key("id")],
                format!("{what} id '{id}' must be a unique simple id"),
            ))
        }
    }

    fn no_banned_word(&self, key: &'a str, text: &str) -> Result<(), FileError> {
        match self.refs.banned.find(text) {
            Some(w) => Err(self.err(&[Key(key)], format!("{key} contains the banned word '{w}'"))),
            None => Ok(()),
        }
    }

    fn condition(&self, c: &RawCondition) -> Result<Condition, FileError> {
        let when = self.key("when");
        let bounded =
            |key: &'static str, v: Option<i64>, hi: i64| -> Result<Option<u32>, FileError> {
                Ok(when.scaled(key, v, (0, hi), 1)?.map(|v| v as u32))
            };
        Ok(Condition {
            tags_any: c.tags_any.clone(),
            cities: c.cities.clone(),
            vip_min: bounded("vip_min", c.vip_min, 100)?,
            min_messages: bounded("min_messages", c.min_messages, 100_000)?,
        })
    }

    /// The entries of a list section, each with its own position.
    fn items<'r, T>(&self, key: &'a str, list: &'r [T]) -> impl Iterator<Item = (At<'a>, &'r T)> {
        let this = self.clone();
        list.iter()
            .enumerate()
            .map(move |(i, item)| (this.at(&[Key(key), Index(i)]), item))
    }
}

use Seg::{Index, Key};

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

/// Which level a settings block sits at: some keys only make sense at one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Defaults,
    Bot,
    Group,
}

/// Apply one raw settings block on top of `s`, section by section.
fn apply(s: &mut Settings, raw: &RawSettings, at: &At<'_>, level: Level) -> Result<(), FileError> {
    if let Some(tz) = &raw.timezone {
        s.timezone = timezone(at, tz, level)?;
    }
    if raw.groups.is_some() && level != Level::Bot {
        return Err(at.err(&[Key("groups")], "groups can only be set under a bot"));
    }
    // Keys whose value replaces the one inherited from the level above.
    replace(&mut s.style, &raw.style, |v| at.style(&[Key("style")], v))?;
    replace(&mut s.user_tag_styles, &raw.user_tag_styles, |v| {
        user_tag_styles(at, v)
    })?;
    replace(&mut s.service_hours, &raw.service_hours, |v| {
        service_hours(at, v)
    })?;
    replace(&mut s.silent_intents, &raw.silent_intents, |v| {
        at.intents("silent_intents", v)
    })?;
    replace(&mut s.block_intents, &raw.block_intents, |v| {
        at.intents("block_intents", v)
    })?;
    replace(&mut s.rules, &raw.rules, |v| attribute_rules(at, v))?;
    replace(&mut s.pushes, &raw.pushes, |v| pushes(at, v))?;
    replace(&mut s.schedules, &raw.schedules, |v| schedules(at, v))?;
    replace(&mut s.countdowns, &raw.countdowns, |v| countdowns(at, v))?;
    replace(&mut s.experiments, &raw.experiments, |v| experiments(at, v))?;
    // Blocks that merge key by key into the inherited ones.
    merge(&raw.spacing, |v| {
        spacing(&mut s.spacing, &at.key("spacing"), v)
    })?;
    merge(&raw.cooldown, |v| {
        cooldown(&mut s.cooldown, &at.key("cooldown"), v)
    })?;
    merge(&raw.handoff, |v| {
        handoff(&mut s.handoff, &at.key("handoff"), v)
    })?;
    merge(&raw.welcome, |v| welcome(s, &at.key("welcome"), v))?;
    merge(&raw.disclosure, |v| disclosure(s, &at.key("disclosure"), v))?;
    let reactivation_at = at.key("reactivation");
    merge(&raw.reactivation, |v| {
        reactivation(&mut s.reactivation, &reactivation_at, v)
    })?;
    merge(&raw.frequency, |v| {
        frequency(&mut s.frequency, &at.key("frequency"), v)
    })?;
    if let Some(v) = at.scaled("schedule_grace_s", raw.schedule_grace_s, (0, 86_400), 1000)? {
        s.schedule_grace_ms = v;
    }
    Ok(())
}

/// `current` becomes `parse(value)` when the block sets the key.
fn replace<R, T>(
    current: &mut T,
    value: &Option<R>,
    parse: impl FnOnce(&R) -> Result<T, FileError>,
) -> Result<(), FileError> {
    if let Some(v) = value {
        *current = parse(v)?;
    }
    Ok(())
}

/// Runs `merge` when the block sets the key.
fn merge<R>(
    value: &Option<R>,
    merge: impl FnOnce(&R) -> Result<(), FileError>,
) -> Result<(), FileError> {
    value.as_ref().map_or(Ok(()), merge)
}

fn timezone(at: &At<'_>, tz: &str, level: Level) -> Result<Tz, FileError> {
    if level == Level::Group {
        return Err(at.err(
            &[Key("timezone")],
            "timezone can only be set for a bot, not a group",
        ));
    }
    tz.parse::<Tz>()
        .map_err(|_| at.err(&[Key("timezone")], format!("unknown time zone '{tz}'")))
}

fn user_tag_styles(
    at: &At<'_>,
    m: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, FileError> {
    m.iter()
        .map(|(tag, st)| {
            let style = at.style(&[Key("user_tag_styles"), Key(tag)], st)?;
            Ok((tag.clone(), style))
        })
        .collect()
}

fn service_hours(at: &At<'_>, hours: &[RawHours]) -> Result<ServiceHours, FileError> {
    let mut windows = Vec::new();
    for (here, h) in at.items("service_hours", hours) {
        if h.days.is_empty() {
            return Err(here.err(&[], "service_hours entry needs at least one day"));
        }
        let mut days = 0u8;
        for d in &h.days {
            let wd = parse_weekday(d).ok_or_else(|| {
                here.err(
                    &[],
                    format!("unknown day '{d}' (use mon, tue, wed, thu, fri, sat, sun)"),
                )
            })?;
            days |= weekday_bit(wd);
        }
        let from = parse_hhmm(&h.from).map_err(|e| here.err(&[], e))?;
        let to = parse_hhmm(&h.to).map_err(|e| here.err(&[], e))?;
        if from >= to {
            return Err(here.err(
                &[],
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
    Ok(ServiceHours { windows })
}

fn spacing(s: &mut SpacingConfig, at: &At<'_>, raw: &RawSpacing) -> Result<(), FileError> {
    if let Some(v) = at.scaled("min_interval_s", raw.min_interval_s, (5, 60), 1000)? {
        s.min_interval_ms = v;
    }
    if let Some(v) = at.scaled("jitter_ms", raw.jitter_ms, (0, 30_000), 1)? {
        s.jitter_ms = v;
    }
    if let Some(v) = at.scaled("queue_limit", raw.queue_limit, (1, 20), 1)? {
        s.queue_limit = v as usize;
    }
    Ok(())
}

fn cooldown(c: &mut CooldownConfig, at: &At<'_>, raw: &RawCooldown) -> Result<(), FileError> {
    if let Some(v) = at.scaled("default_s", raw.default_s, (0, 86_400), 1000)? {
        c.default_ms = v;
    }
    if let Some(m) = &raw.per_intent_s {
        let mut per = HashMap::new();
        for (intent, v) in m {
            let key = [Key("per_intent_s"), Key(intent.as_str())];
            at.intent(&key, intent)?;
            let seconds = at.range_at(&key, "cooldown seconds", *v, 0, 86_400)?;
            per.insert(intent.clone(), seconds * 1000);
        }
        c.per_intent_ms = per;
    }
    Ok(())
}

fn handoff(h: &mut HandoffConfig, at: &At<'_>, raw: &RawHandoff) -> Result<(), FileError> {
    if let Some(list) = &raw.intents {
        h.intents = at.intents("intents", list)?;
    }
    let minutes = |key: &'static str, v: Option<i64>, hi: i64| -> Result<Option<u32>, FileError> {
        Ok(at.scaled(key, v, (1, hi), 1)?.map(|v| v as u32))
    };
    if let Some(v) = minutes("minutes_per_handoff", raw.minutes_per_handoff, 120)? {
        h.minutes_per_handoff = v;
    }
    if let Some(v) = minutes("fixed_wait_minutes", raw.fixed_wait_minutes, 1440)? {
        h.fixed_wait_minutes = Some(v);
    }
    if let Some(v) = minutes("max_wait_minutes", raw.max_wait_minutes, 1440)? {
        h.max_wait_minutes = v;
    }
    if let Some(v) = at.scaled("open_ttl_minutes", raw.open_ttl_minutes, (1, 1440), 60_000)? {
        h.open_ttl_ms = v;
    }
    if let Some(v) = minutes("not_understood_limit", raw.not_understood_limit, 10)? {
        h.not_understood_limit = v;
    }
    if let Some(v) = raw.human_share_target {
        if !(0.0..=1.0).contains(&v) {
            return Err(at.err(
                &[Key("human_share_target")],
                format!("human_share_target must be 0.0..=1.0, got {v}"),
            ));
        }
        h.human_share_target = v;
    }
    Ok(())
}

fn welcome(s: &mut Settings, at: &At<'_>, raw: &RawWelcome) -> Result<(), FileError> {
    if let Some(e) = raw.enabled {
        s.welcome_enabled = e;
    }
    if let Some(v) = at.scaled("merge_window_s", raw.merge_window_s, (0, 600), 1000)? {
        s.welcome_merge_window_ms = v;
    }
    Ok(())
}

fn disclosure(s: &mut Settings, at: &At<'_>, raw: &RawDisclosure) -> Result<(), FileError> {
    if let Some(e) = raw.enabled {
        s.disclosure_enabled = e;
    }
    if let Some(list) = &raw.answered_by {
        s.disclosure_answered_by = at.intents("answered_by", list)?;
    }
    Ok(())
}

fn reactivation(
    r: &mut ReactivationConfig,
    at: &At<'_>,
    raw: &RawReactivation,
) -> Result<(), FileError> {
    if let Some(e) = raw.enabled {
        r.enabled = e;
    }
    if let Some(v) = at.scaled("silence_hours", raw.silence_hours, (1, 720), HOUR_MS)? {
        r.silence_ms = v;
    }
    if let Some(v) = at.scaled("period_hours", raw.period_hours, (1, 720), HOUR_MS)? {
        r.period_ms = v;
    }
    Ok(())
}

/// A list section whose entries have ids: its key, what an entry is called, and the ids.
struct IdList<'a> {
    key: &'a str,
    what: &'a str,
    ids: Vec<&'a str>,
}

impl<'a> IdList<'a> {
    fn new(key: &'a str, what: &'a str, ids: impl Iterator<Item = &'a str>) -> Self {
        IdList {
            key,
            what,
            ids: ids.collect(),
        }
    }
}

/// Every id of `list` must be a simple id, unique in the list. `parse` builds an entry from its
/// raw form, its position and the entries built before it.
fn with_ids<'a, R, T>(
    at: &At<'a>,
    ids: &IdList<'a>,
    list: &[R],
    mut parse: impl FnMut(&At<'a>, &R, String, &[T]) -> Result<T, FileError>,
) -> Result<Vec<T>, FileError> {
    let mut out = Vec::new();
    for (i, (here, r)) in at.items(ids.key, list).enumerate() {
        let earlier = ids.ids[..i].iter().copied();
        let id = here.unique_id(ids.what, ids.ids[i], earlier)?;
        let entry = parse(&here, r, id, &out)?;
        out.push(entry);
    }
    Ok(out)
}

fn attribute_rules(at: &At<'_>, list: &[RawRule]) -> Result<Vec<AttrRule>, FileError> {
    let ids = IdList::new("rules", "rule", list.iter().map(|r| &*r.id));
    with_ids(at, &ids, list, |here, r, id, _| {
        let intents = here.key("intents");
        let intents = (r.intents.iter().enumerate())
            .map(|(j, name)| intents.intent(&[Index(j)], name))
            .collect::<Result<_, _>>()?;
        let reply = here.named_reply(&r.reply)?;
        if !r.handoff {
            here.no_wait_minutes(&reply, "a rule without `handoff: true`")?;
        }
        Ok(AttrRule {
            id,
            intents,
            when: here.condition(&r.when)?,
            reply,
            handoff: r.handoff,
        })
    })
}

fn pushes(at: &At<'_>, list: &[RawPush]) -> Result<Vec<PushRule>, FileError> {
    let ids = IdList::new("pushes", "push", list.iter().map(|r| &*r.id));
    with_ids(at, &ids, list, |here, r, id, _| {
        let when = here.condition(&r.when)?;
        let reply = here.named_reply(&r.reply)?;
        here.no_wait_minutes(&reply, "a push")?;
        let delay = here.range("delay_s", r.delay_s.unwrap_or(60), 0, 86_400)?;
        Ok(PushRule {
            id,
            when,
            reply,
            delay_ms: delay * 1000,
        })
    })
}

fn frequency(f: &mut FrequencyConfig, at: &At<'_>, raw: &RawFrequency) -> Result<(), FileError> {
    if let Some(v) = at.scaled("window_hours", raw.window_hours, (1, 2160), HOUR_MS)? {
        f.window_ms = v;
    }
    let Some(tiers) = &raw.tiers else {
        return Ok(());
    };
    let mut out = Vec::new();
    for (here, t) in at.items("tiers", tiers) {
        let m = here.range_at(&[], "min_messages", t.min_messages, 0, 100_000)? as u32;
        let h = here.range_at(&[], "push_interval_hours", t.push_interval_hours, 1, 8760)?;
        out.push(Tier {
            min_messages: m,
            interval_ms: h * HOUR_MS,
        });
    }
    if out.is_empty() {
        return Err(at.err(&[Key("tiers")], "frequency.tiers needs at least one tier"));
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.min_messages));
    f.tiers = out;
    Ok(())
}

fn schedules(at: &At<'_>, list: &[RawSchedule]) -> Result<Vec<CronJob>, FileError> {
    let ids = IdList::new("schedules", "schedule", list.iter().map(|r| &*r.id));
    with_ids(at, &ids, list, |here, r, id, _| {
        let schedule = parse_cron(&r.cron).map_err(|e| here.err(&[Key("cron")], e))?;
        let reply = here.named_reply(&r.reply)?;
        let vars = here.refs.replies.vars_of(&reply);
        if let Some(v) = vars.into_iter().find(|v| !CHAT_VARS.contains(v)) {
            let why = "which a scheduled message to the whole group cannot fill";
            let msg = format!("reply '{reply}' uses '{{{v}}}', {why}");
            return Err(here.err(&[Key("reply")], msg));
        }
        Ok(CronJob {
            id,
            schedule,
            reply,
        })
    })
}

fn countdowns(at: &At<'_>, list: &[RawCountdown]) -> Result<Vec<Countdown>, FileError> {
    let ids = IdList::new("countdowns", "countdown", list.iter().map(|c| &*c.id));
    with_ids(at, &ids, list, |here, c, id, _| {
        if c.event_name.trim().is_empty() {
            return Err(here.err(&[Key("event_name")], "event_name is empty"));
        }
        here.no_banned_word("event_name", &c.event_name)?;
        let date = parse_date(&c.date).map_err(|e| here.err(&[Key("date")], e))?;
        let at_min = parse_hhmm(&c.at).map_err(|e| here.err(&[Key("at")], e))?;
        if at_min >= 1440 {
            return Err(here.err(&[Key("at")], "at must be before 24:00"));
        }
        if c.days_before.is_empty() {
            let msg = "days_before needs at least one day";
            return Err(here.err(&[Key("days_before")], msg));
        }
        let mut days = Vec::new();
        for (j, d) in c.days_before.iter().enumerate() {
            let tail = [Key("days_before"), Index(j)];
            days.push(here.range_at(&tail, "days_before", *d, 0, 365)? as u32);
        }
        days.sort_unstable();
        days.dedup();
        Ok(Countdown {
            id,
            event_name: c.event_name.clone(),
            date,
            at_min,
            days_before: days,
        })
    })
}

fn experiments(at: &At<'_>, list: &[RawExperiment]) -> Result<Vec<Experiment>, FileError> {
    let ids = IdList::new("experiments", "experiment", list.iter().map(|e| &*e.id));
    with_ids(at, &ids, list, |here, e, id, earlier| {
        // The reply set under test: an intent's replies, or any set of replies.yml.
        let (key, field) = match (&e.intent, &e.reply) {
            (Some(intent), None) => (here.intent(&[Key("intent")], intent)?, "intent"),
            (None, Some(reply)) => {
                if !here.refs.replies.has(reply) {
                    return Err(here.err(
                        &[Key("reply")],
                        format!(
                            "reply '{reply}' is not a reply set of replies.yml (an intent, a \
                             special such as welcome, a named reply, link:<id> or card:<id>)"
                        ),
                    ));
                }
                (reply.clone(), "reply")
            }
            _ => {
                return Err(here.err(
                    &[],
                    "an experiment names exactly one of `intent` (that intent's replies) or \
                     `reply` (a reply set: welcome, a push's or schedule's named reply, ...)"
                        .to_string(),
                ))
            }
        };
        if earlier.iter().any(|o: &Experiment| o.key == key) {
            return Err(here.err(&[Key(field)], format!("'{key}' already has an experiment")));
        }
        if e.variants.len() < 2 {
            return Err(here.err(
                &[Key("variants")],
                format!(
                    "an experiment needs at least 2 variants, got {}",
                    e.variants.len()
                ),
            ));
        }
        let mut variants: Vec<(String, u32)> = Vec::new();
        for (vat, v) in here.items("variants", &e.variants) {
            if here.refs.replies.variant(&key, &v.variant).is_none() {
                let variant = &v.variant;
                let msg = format!("variant '{variant}' is not a variant of '{key}' in replies.yml");
                return Err(vat.err(&[], msg));
            }
            if variants.iter().any(|x| x.0 == v.variant) {
                return Err(vat.err(&[], format!("variant '{}' listed twice", v.variant)));
            }
            let w = vat.range_at(&[], "weight", v.weight, 1, 10_000)? as u32;
            variants.push((v.variant.clone(), w));
        }
        Ok(Experiment { id, key, variants })
    })
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("date must be YYYY-MM-DD, got '{s}'"))
}

/// The policy's part of the operator files (`playbook.yml`, `replies.yml`, `banned_words.txt`,
/// `calendar.yml`), validated against the intent catalog. Immutable once loaded: a reload builds
/// a new one.
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
    /// Loads the policy files in `dir`; intents they name must be in `catalog`; reply
    /// templates may name the built-in entity types (the operator snapshot also allows the
    /// lookup tables and operator regex entities: [`Self::load_with_entities`]).
    pub fn load(dir: &Path, catalog: &Catalog) -> Result<Self, FileError> {
        Self::load_with_entities(dir, catalog, &builtin_entity_types())
    }

    /// Like `load`; reply templates may name the entity types `entities`.
    pub fn load_with_entities(
        dir: &Path,
        catalog: &Catalog,
        entities: &[String],
    ) -> Result<Self, FileError> {
        let banned = BannedWords::load(&dir.join(BANNED_FILE))?;
        let replies = ReplyLibrary::load(&dir.join(REPLIES_FILE), catalog, &banned, entities)?;
        let calendar = load_calendar(&dir.join(CALENDAR_FILE), &banned)?;
        let playbook = YamlFile::load(&dir.join(PLAYBOOK_FILE))?;
        Self::from_parts(&playbook, catalog, replies, banned, calendar)
    }

    pub fn from_parts(
        playbook: &YamlFile,
        catalog: &Catalog,
        replies: ReplyLibrary,
        banned: BannedWords,
        calendar: Calendar,
    ) -> Result<Self, FileError> {
        let raw: RawPlaybook = playbook.deserialize()?;
        let refs = Refs {
            file: playbook,
            catalog,
            replies: &replies,
            banned: &banned,
        };
        let root = At {
            refs: &refs,
            path: Vec::new(),
        };
        let mut defaults = Settings::builtin(&replies.styles[0]);
        apply(
            &mut defaults,
            &raw.defaults,
            &root.key("defaults"),
            Level::Defaults,
        )?;
        let mut bots = HashMap::new();
        let mut groups = HashMap::new();
        for (bot, braw) in &raw.bots {
            let bot_at = root.at(&[Key("bots"), Key(bot)]);
            let mut bs = defaults.clone();
            apply(&mut bs, braw, &bot_at, Level::Bot)?;
            for (chat, graw) in braw.groups.iter().flatten() {
                let mut gs = bs.clone();
                apply(
                    &mut gs,
                    graw,
                    &bot_at.at(&[Key("groups"), Key(chat)]),
                    Level::Group,
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

/// The entity types every snapshot can produce (order_id, phone, amount, date, time, datetime).
pub fn builtin_entity_types() -> Vec<String> {
    crate::engine::entities::BUILTIN_TYPES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

pub fn load_calendar(path: &Path, banned: &BannedWords) -> Result<Calendar, FileError> {
    let file = YamlFile::load(path)?;
    let raw: RawCalendar = file.deserialize()?;
    let mut festivals = Vec::new();
    for (i, f) in raw.festivals.iter().enumerate() {
        let fail = |k: &str, msg: String| file.error(&[Key("festivals"), Index(i), Key(k)], msg);
        if f.name.trim().is_empty() {
            return Err(fail("name", "festival name is empty".into()));
        }
        let date = parse_date(&f.date).map_err(|e| fail("date", e))?;
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
    use crate::policy::replies::tests::{minimal_yaml, parse, shipped_catalog};

    fn lib() -> (ReplyLibrary, BannedWords) {
        let b = BannedWords::new(["微信"]).unwrap();
        let y = minimal_yaml()
            + "named:\n  vip_service:\n    - { id: v1, style: professional, text: \"{nickname}您好，VIP专属客服为您服务\" }\n  daily_tip:\n    - { id: t1, style: playful, text: \"{greeting}！今日小贴士\" }\n    - { id: t2, style: playful, text: \"{greeting}，小贴士来啦\" }\n  vip_agent:\n    - { id: a1, style: professional, text: \"{nickname}，专属客服约{wait_minutes}分钟内联系您\" }\n";
        (parse(&y, &b).unwrap(), b)
    }

    fn load(text: &str) -> Result<OperatorConfig, FileError> {
        let (r, b) = lib();
        let file = YamlFile::parse(Path::new("playbook.yml"), text)?;
        OperatorConfig::from_parts(&file, &shipped_catalog(), r, b, Calendar::default())
    }

    #[test]
    fn interactions_are_counted_up_to_the_highest_threshold() {
        let mut s = Settings::builtin("plain");
        // The built-in tiers: 20, 5, 0.
        assert_eq!(s.interactions_counted(), 20);
        s.rules.push(crate::policy::attributes::AttrRule {
            id: "regulars".into(),
            intents: vec![],
            when: crate::policy::attributes::Condition {
                min_messages: Some(50),
                ..Default::default()
            },
            reply: "r".into(),
            handoff: false,
        });
        assert_eq!(s.interactions_counted(), 50);
        s.rules.clear();
        s.frequency.tiers.clear();
        assert_eq!(s.interactions_counted(), 0);
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

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn only_a_handoff_rule_may_use_a_reply_announcing_the_wait() {
        let ok = load("defaults:\n  rules:\n    - id: r1\n      when: {vip_min: 3}\n      reply: vip_agent\n      handoff: true\n")
            .unwrap();
        assert!(ok.settings("b", "g").rules[0].handoff);
        let e = err(
            "defaults:\n  rules:\n    - id: r1\n      when: {vip_min: 3}\n      reply: vip_agent\n",
        );
        assert!(
            e.starts_with("playbook.yml:5: reply 'vip_agent' uses '{wait_minutes}', which a rule without `handoff: true` cannot fill"),
            "{e}"
        );
        let e = err("defaults:\n  pushes:\n    - id: p1\n      when: {vip_min: 3}\n      reply: vip_agent\n");
        assert!(
            e.starts_with(
                "playbook.yml:5: reply 'vip_agent' uses '{wait_minutes}', which a push cannot fill"
            ),
            "{e}"
        );
    }

    #[test]
    fn experiments_name_an_intent_or_any_reply_set() {
        let exp = |target: &str, variants: &str| {
            format!("defaults:\n  experiments:\n    - id: e1\n      {target}\n      variants:\n{variants}")
        };
        let two = "        - {variant: t1, weight: 3}\n        - {variant: t2, weight: 1}\n";
        let c = load(&exp("reply: daily_tip", two)).unwrap();
        let s = c.settings("b", "g");
        let e = s.experiment_for("daily_tip").unwrap();
        assert_eq!(e.variants, vec![("t1".into(), 3), ("t2".into(), 1)]);
        assert!(s.experiment_for("price").is_none());

        let e = err(&exp("reply: nope", two));
        assert!(
            e.starts_with("playbook.yml:4: reply 'nope' is not a reply set of replies.yml"),
            "{e}"
        );
        let e = err(&exp("reply: welcome", two));
        assert_eq!(
            e,
            "playbook.yml:6: variant 't1' is not a variant of 'welcome' in replies.yml"
        );
        let e = err(&exp("intent: price\n      reply: daily_tip", two));
        assert!(
            e.starts_with("playbook.yml:3: an experiment names exactly one of `intent`"),
            "{e}"
        );
        let e = err("defaults:\n  experiments:\n    - id: e1\n      variants: []\n");
        assert!(e.contains("exactly one of `intent`"), "{e}");
        // One experiment per reply set, whichever way it is named.
        let ab = "        - {variant: a, weight: 1}\n        - {variant: b, weight: 1}\n";
        let twice =
            exp("intent: price", ab) + "    - id: e2\n      reply: price\n      variants:\n" + ab;
        let e = err(&twice);
        assert_eq!(e, "playbook.yml:9: 'price' already has an experiment");
    }

    #[test]
    fn unknown_keys_and_bad_references_are_errors() {
        let e = err("defaults:\n  spacing:\n    min_interval: 10\n");
        assert!(
            e.starts_with("playbook.yml:3: defaults.spacing: unknown field `min_interval`"),
            "{e}"
        );
        let e = err("defaults:\n  handoff:\n    intents: [complaint, refnd]\n");
        assert_eq!(e, "playbook.yml:3: unknown intent 'refnd'");
        let e =
            err("defaults:\n  rules:\n    - id: r1\n      when: {vip_min: 3}\n      reply: nope\n");
        assert_eq!(
            e,
            "playbook.yml:5: reply 'nope' is not defined under 'named' in replies.yml"
        );
        let e = err("defaults:\n  schedules:\n    - id: s1\n      cron: \"61 9 * * *\"\n      reply: daily_tip\n");
        assert!(
            e.starts_with("playbook.yml:4: cron '61 9 * * *' is not valid"),
            "{e}"
        );
        let e = err("defaults:\n  schedules:\n    - id: s1\n      cron: \"0 9 * * *\"\n      reply: vip_service\n");
        assert!(
            e.starts_with("playbook.yml:5: reply 'vip_service' uses '{nickname}'"),
            "{e}"
        );
        let e = err("bots:\n  b1:\n    groups:\n      g1:\n        timezone: Asia/Tokyo\n");
        assert_eq!(
            e,
            "playbook.yml:5: timezone can only be set for a bot, not a group"
        );
        let e = err("defaults:\n  timezone: Mars/Base\n");
        assert_eq!(e, "playbook.yml:2: unknown time zone 'Mars/Base'");
        let e = err("defaults:\n  experiments:\n    - id: e1\n      intent: price\n      variants:\n        - {variant: a, weight: 1}\n        - {variant: zz, weight: 1}\n");
        assert_eq!(
            e,
            "playbook.yml:7: variant 'zz' is not a variant of 'price' in replies.yml"
        );
        let e = err(
            "defaults:\n  service_hours:\n    - {days: [mon], from: \"18:00\", to: \"09:00\"}\n",
        );
        assert_eq!(
            e,
            "playbook.yml:3: service_hours 'to' (09:00) must be after 'from' (18:00)"
        );
        let e = err("defaults:\n  countdowns:\n    - id: c1\n      event_name: 加微信抽奖\n      date: 2027-03-20\n      at: \"10:00\"\n      days_before: [3]\n");
        assert_eq!(
            e,
            "playbook.yml:4: event_name contains the banned word '微信'"
        );
    }

    #[test]
    fn intent_settings_are_checked_against_the_catalog() {
        let text =
            "defaults:\n  block_intents: [spam_ads]\n  disclosure:\n    answered_by: [ask_bot]\n";
        let s = load(text).unwrap().settings("b", "g").clone();
        assert!(s.block_intents.contains("spam_ads"));
        assert!(s.disclosure_answered_by.contains("ask_bot"));
        assert!(Settings::builtin("p").block_intents.is_empty());
        let e = load("defaults:\n  block_intents: [spam_ads, spamm]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "playbook.yml:2: unknown intent 'spamm'");
        let e = load("defaults:\n  disclosure:\n    enabled: true\n    answered_by:\n      - ask_bot\n      - bot\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "playbook.yml:6: unknown intent 'bot'");
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
