//! The filter every report page starts with: bot, group, a window of days in the bot's time
//! zone, and the chart's bucket (day or hour). Read from the query string and validated here;
//! an invalid value is named and replaced by its default, so the page still renders.

use chrono::{DateTime, Days, NaiveDate, TimeZone};
use chrono_tz::Tz;
use maud::{html, Markup};
use serde::Deserialize;

use super::state::ConsoleState;

/// Longest window for daily buckets, and for hourly ones: one chart point per bucket, so the
/// chart stays readable (all points come from one grouped query, see `store::series`).
pub const MAX_DAYS: u64 = 62;
pub const MAX_HOURLY_DAYS: u64 = 7;

#[derive(Debug, Deserialize, Default)]
pub struct FilterQuery {
    #[serde(default)]
    pub bot: String,
    #[serde(default)]
    pub chat: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub bucket: String,
    #[serde(default)]
    pub experiment: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Day,
    Hour,
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Day => "day",
            Bucket::Hour => "hour",
        }
    }
}

/// A validated filter.
#[derive(Debug, Clone)]
pub struct Window {
    pub bot: String,
    pub chat: String,
    pub experiment: String,
    /// First and last day, inclusive, in `tz`.
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub bucket: Bucket,
    pub tz: Tz,
}

/// Unix ms of `day` 00:00 in `tz` (the first valid instant of that day).
fn start_of(day: NaiveDate, tz: Tz) -> i64 {
    let naive = day.and_hms_opt(0, 0, 0).expect("midnight exists");
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.timestamp_millis()
        }
        // A day that starts in a DST gap: its first hour is missing.
        chrono::LocalResult::None => tz
            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
            .map_or(0, |t| t.timestamp_millis()),
    }
}

impl Window {
    /// `[from_ms, to_ms]` of the whole window, inclusive.
    pub fn span_ms(&self) -> (i64, i64) {
        let end = self.to.checked_add_days(Days::new(1)).unwrap_or(self.to);
        (start_of(self.from, self.tz), start_of(end, self.tz) - 1)
    }

    /// The chart's buckets: (label, from_ms, to_ms inclusive).
    pub fn buckets(&self) -> Vec<(String, i64, i64)> {
        let (from, to) = self.span_ms();
        let mut out = Vec::new();
        match self.bucket {
            Bucket::Day => {
                let mut d = self.from;
                while d <= self.to {
                    let next = d.checked_add_days(Days::new(1)).unwrap_or(d);
                    out.push((
                        d.format("%m-%d").to_string(),
                        start_of(d, self.tz),
                        start_of(next, self.tz) - 1,
                    ));
                    if next == d {
                        break;
                    }
                    d = next;
                }
            }
            Bucket::Hour => {
                let mut t = from;
                while t <= to {
                    let label = DateTime::from_timestamp_millis(t)
                        .map(|u| u.with_timezone(&self.tz).format("%m-%d %H:00").to_string())
                        .unwrap_or_default();
                    let end = (t + 3_600_000 - 1).min(to);
                    out.push((label, t, end));
                    t += 3_600_000;
                }
            }
        }
        out
    }
}

fn parse_day(field: &str, s: &str, errors: &mut Vec<String>) -> Option<NaiveDate> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(d) => Some(d),
        Err(_) => {
            errors.push(format!(
                "{field}: '{}' is not a date like 2026-12-01",
                crate::service::validate::shown(s)
            ));
            None
        }
    }
}

/// Reads and checks the filter; problems are listed and the defaults used instead: the first
/// configured bot, the bot's whole traffic (no group), the last 7 days to today, daily buckets.
pub fn read(state: &ConsoleState, q: &FilterQuery) -> (Window, Vec<String>) {
    let mut errors = Vec::new();
    let bots = state.bots();
    let bot = q.bot.trim();
    let bot = if bot.is_empty() {
        bots.first().cloned().unwrap_or_default()
    } else if bots.is_empty() || bots.iter().any(|b| b == bot) {
        bot.to_string()
    } else {
        errors.push(format!(
            "bot: '{}' is not a configured bot",
            crate::service::validate::shown(bot)
        ));
        bots[0].clone()
    };
    let chat = q.chat.trim();
    let limits = &state.service.settings.limits;
    let chat = match crate::service::validate::check_id("chat", chat, false, limits) {
        Ok(()) => chat.to_string(),
        Err(e) => {
            errors.push(e.to_string());
            String::new()
        }
    };
    let experiment = q.experiment.trim();
    let experiment =
        match crate::service::validate::check_id("experiment", experiment, false, limits) {
            Ok(()) => experiment.to_string(),
            Err(e) => {
                errors.push(e.to_string());
                String::new()
            }
        };
    let tz = state
        .service
        .operator()
        .policy
        .settings(&bot, &chat)
        .timezone;
    let today = DateTime::from_timestamp_millis(state.service.now_ms())
        .map(|t| t.with_timezone(&tz).date_naive())
        .unwrap_or_default();
    let bucket = match q.bucket.trim() {
        "" | "day" => Bucket::Day,
        "hour" => Bucket::Hour,
        other => {
            errors.push(format!(
                "bucket: '{}' is not day or hour",
                crate::service::validate::shown(other)
            ));
            Bucket::Day
        }
    };
    let to = parse_day("to", &q.to, &mut errors).unwrap_or(today);
    let default_days = if bucket == Bucket::Hour { 1 } else { 7 };
    let from = parse_day("from", &q.from, &mut errors).unwrap_or_else(|| {
        to.checked_sub_days(Days::new(default_days - 1))
            .unwrap_or(to)
    });
    let mut w = Window {
        bot,
        chat,
        experiment,
        from,
        to,
        bucket,
        tz,
    };
    if w.from > w.to {
        errors.push(format!(
            "from ({}) is after to ({}): showing the 7 days to {}",
            w.from, w.to, w.to
        ));
        w.from = w.to.checked_sub_days(Days::new(6)).unwrap_or(w.to);
    }
    let days = (w.to - w.from).num_days() as u64 + 1;
    let max = match w.bucket {
        Bucket::Day => MAX_DAYS,
        Bucket::Hour => MAX_HOURLY_DAYS,
    };
    if days > max {
        errors.push(format!(
            "the window has {days} days, over {max} for {} buckets: showing the last {max}",
            w.bucket.as_str()
        ));
        w.from = w.to.checked_sub_days(Days::new(max - 1)).unwrap_or(w.to);
    }
    (w, errors)
}

/// A bot or every bot, and a window of whole days (the labelling inbox's filter).
#[derive(Debug, Clone, PartialEq)]
pub struct DayWindow {
    /// Empty: every bot.
    pub bot: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// The bot's time zone (the default one for every bot).
    pub tz: Tz,
}

impl DayWindow {
    /// `[from_ms, to_ms]` of the window, inclusive.
    pub fn span_ms(&self) -> (i64, i64) {
        let end = self.to.checked_add_days(Days::new(1)).unwrap_or(self.to);
        (start_of(self.from, self.tz), start_of(end, self.tz) - 1)
    }

    /// The query string that shows this window again (`?bot=..&from=..&to=..`).
    pub fn query(&self) -> String {
        let pairs = [
            ("bot", self.bot.clone()),
            ("from", self.from.to_string()),
            ("to", self.to.to_string()),
        ];
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

/// Reads and checks a bot-or-every-bot filter over whole days: an empty bot is every bot, the
/// window defaults to the `default_days` to today and may span at most `max_days`. Problems
/// are listed and the defaults used instead, as for [`read`].
pub fn read_days(
    state: &ConsoleState,
    q: &FilterQuery,
    default_days: u64,
    max_days: u64,
) -> (DayWindow, Vec<String>) {
    let mut errors = Vec::new();
    let bots = state.bots();
    let bot = q.bot.trim();
    let limits = &state.service.settings.limits;
    let bot = if let Err(e) = crate::service::validate::check_id("bot", bot, false, limits) {
        errors.push(format!("{e}: showing every bot"));
        String::new()
    } else if bot.is_empty() || bots.is_empty() || bots.iter().any(|b| b == bot) {
        bot.to_string()
    } else {
        errors.push(format!(
            "bot: '{}' is not a configured bot: showing every bot",
            crate::service::validate::shown(bot)
        ));
        String::new()
    };
    let tz = state.service.operator().policy.settings(&bot, "").timezone;
    let today = DateTime::from_timestamp_millis(state.service.now_ms())
        .map(|t| t.with_timezone(&tz).date_naive())
        .unwrap_or_default();
    let back = |to: NaiveDate, days: u64| to.checked_sub_days(Days::new(days - 1)).unwrap_or(to);
    let to = parse_day("to", &q.to, &mut errors).unwrap_or(today);
    let mut from =
        parse_day("from", &q.from, &mut errors).unwrap_or_else(|| back(to, default_days));
    if from > to {
        errors.push(format!(
            "from ({from}) is after to ({to}): showing the {default_days} days to {to}"
        ));
        from = back(to, default_days);
    }
    let days = (to - from).num_days() as u64 + 1;
    if days > max_days {
        errors.push(format!(
            "the window has {days} days, over {max_days}: showing the last {max_days}"
        ));
        from = back(to, max_days);
    }
    (DayWindow { bot, from, to, tz }, errors)
}

/// The form of [`read_days`] (GET): a bot (or every bot) and the days.
pub fn days_form(
    state: &ConsoleState,
    action: &str,
    w: &DayWindow,
    hidden: &[(&str, &str)],
) -> Markup {
    let bots = state.bots();
    html! {
        form.filters #filters method="get" action=(action) {
            @for (k, v) in hidden { input type="hidden" name=(k) value=(v); }
            label {
                "Bot "
                @if bots.is_empty() {
                    input type="text" name="bot" value=(w.bot) placeholder="every bot";
                } @else {
                    select name="bot" {
                        option value="" selected[w.bot.is_empty()] { "every bot" }
                        @for b in bots {
                            option value=(b) selected[*b == w.bot] { (b) }
                        }
                    }
                }
            }
            label { "From " input type="date" name="from" value=(w.from.to_string()); }
            label { "To " input type="date" name="to" value=(w.to.to_string()); }
            button type="submit" { "Show" }
            p.hint { "Days are in the bot's time zone (" (w.tz.name()) "), both ends included." }
        }
    }
}

/// The filter form (GET, so a view can be bookmarked). `chats` are the bot's groups seen in
/// the window; `with_bucket` / `with_experiment` add those fields.
pub fn form(
    state: &ConsoleState,
    action: &str,
    w: &Window,
    chats: &[String],
    with_bucket: bool,
    with_experiment: bool,
) -> Markup {
    let bots = state.bots();
    html! {
        form.filters method="get" action=(action) {
            label {
                "Bot "
                @if bots.is_empty() {
                    input type="text" name="bot" value=(w.bot) required;
                } @else {
                    select name="bot" {
                        @for b in bots {
                            option value=(b) selected[*b == w.bot] { (b) }
                        }
                    }
                }
            }
            label {
                "Group "
                select name="chat" {
                    option value="" selected[w.chat.is_empty()] { "all groups" }
                    @for c in chats {
                        option value=(c) selected[*c == w.chat] { (c) }
                    }
                    @if !w.chat.is_empty() && !chats.contains(&w.chat) {
                        option value=(w.chat) selected { (w.chat) }
                    }
                }
            }
            @if with_experiment {
                label { "Experiment " input type="text" name="experiment" value=(w.experiment) placeholder="all"; }
            }
            label { "From " input type="date" name="from" value=(w.from.to_string()); }
            label { "To " input type="date" name="to" value=(w.to.to_string()); }
            @if with_bucket {
                label {
                    "Per "
                    select name="bucket" {
                        option value="day" selected[w.bucket == Bucket::Day] { "day" }
                        option value="hour" selected[w.bucket == Bucket::Hour] { "hour" }
                    }
                }
            }
            button type="submit" { "Show" }
            p.hint { "Days are in the bot's time zone (" (w.tz.name()) "), both ends included." }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(from: &str, to: &str, bucket: Bucket) -> Window {
        Window {
            bot: "b".into(),
            chat: String::new(),
            experiment: String::new(),
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
            bucket,
            tz: chrono_tz::Asia::Shanghai,
        }
    }

    #[test]
    fn days_and_hours_cover_the_window_in_the_bots_time_zone() {
        let w = window("2026-11-24", "2026-11-25", Bucket::Day);
        let (from, to) = w.span_ms();
        // 2026-11-24 00:00 +08:00 = 2026-11-23 16:00 UTC.
        assert_eq!(from, 1_795_449_600_000);
        assert_eq!(to, from + 2 * 86_400_000 - 1);
        let b = w.buckets();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].0, "11-24");
        assert_eq!((b[0].1, b[1].2), (from, to));
        assert_eq!(b[0].2 + 1, b[1].1);
        let w = window("2026-11-24", "2026-11-24", Bucket::Hour);
        let b = w.buckets();
        assert_eq!(b.len(), 24);
        assert_eq!(b[0].0, "11-24 00:00");
        assert_eq!(b[23].2, w.span_ms().1);
    }
}
