//! Dates and times, absolute and relative, resolved against "now" in the bot's time zone.
//!
//! Dates: `2026年3月5日`, `2026-03-05`, `2026/3/5`, `3月5日`, `三月五号`, `12号`, `今天` /
//! `明天` / `后天` / `大后天` / `昨天` / `前天` (and `今晚`, `明早`...), weekdays `周五` /
//! `星期五` / `礼拜天`, with `这` / `本` / `下` / `下下` / `上` / `上上` before them.
//! Times: `8点`, `8点半`, `八点一刻`, `20:30`, with `早上` / `上午` / `中午` / `下午` /
//! `晚上` / `凌晨` before them.
//!
//! Resolution (documented, deterministic):
//! - a bare weekday (`周五`) is the next such day on or after today; `这周五` is the Friday of
//!   this week, `下周三` the Wednesday of next week (weeks start on Monday);
//! - a month and day without a year (`3月5日`) is in the current year; a day alone (`12号`)
//!   is in the current month;
//! - a date that does not exist (`2月30日`, `31号` in November) is not an entity;
//! - a date followed by a time is one `datetime` (`周五晚上8点`); canonical
//!   `YYYY-MM-DDTHH:MM:SS+hh:mm` in the bot's zone. A date alone is a `date` (`YYYY-MM-DD`), a
//!   time alone a `time` (`HH:MM`);
//! - a time in Chinese numerals needs a date or a part of the day before it (`一点` alone is
//!   "a little", not 01:00); `晚上12点` is midnight, the start of the next day.

use std::sync::OnceLock;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;
use regex::{Captures, Regex};

use super::{char_after, char_before, chinese_numbers, is_digit, rank, Candidate};
use crate::types::EntitySource;

struct Patterns {
    date: Regex,
    time: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        date: Regex::new(
            r"(?x)
            (?P<full>(?P<y>(?:19|20)[0-9]{2})\s*[-/.年]\s*(?P<fm>[0-9]{1,2})\s*[-/.月]\s*(?P<fd>[0-9]{1,2})\s*[日号]?)
            |(?P<md>(?P<mm>[0-9]{1,2}|十[一二]?|[一二三四五六七八九])\s*月\s*(?P<mdd>[0-9]{1,2}|[一二三四五六七八九十]{1,3})\s*[日号])
            |(?P<rel>大后天|后天|明天|明日|明晚|明早|今天|今日|今晚|今早|昨天|昨日|昨晚|大前天|前天)
            |(?P<wk>(?P<wkp>上上|下下|上|下|这|本)?个?(?:周|星期|礼拜)(?P<wd>[一二三四五六日天1-7]))
            |(?P<dom>(?P<domd>[0-9]{1,2})\s*号)",
        )
        .expect("date pattern"),
        time: Regex::new(
            r"(?x)
            (?P<ap>早上|早晨|清晨|上午|中午|下午|傍晚|晚上|夜里|夜间|半夜|凌晨|早|晚)?\s*
            (?:
              (?P<h>[0-9]{1,2}|[零一二两三四五六七八九十]{1,3})\s*[点时]
              (?:(?P<half>半)|(?P<q1>一刻)|(?P<q3>三刻)|(?P<mi>[0-9]{1,2}|[零一二三四五六七八九十]{1,3})\s*分?)?
             |(?P<hh>[0-9]{1,2})[:：](?P<mm>[0-9]{2})
            )",
        )
        .expect("time pattern"),
    })
}

/// Characters after `N号` that make it a place or a thing, not a day (`3号楼`, `1号线`).
const NOT_A_DAY_AFTER: &str = "楼线床门口店位房桌窗机车链码选包台柜仓馆厅球键";

/// Part of the day a relative-day word or `晚上` implies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DayPart {
    None,
    Morning,
    Noon,
    Evening,
    EarlyMorning,
}

fn day_part(s: &str) -> DayPart {
    match s {
        "早上" | "早晨" | "清晨" | "上午" | "早" | "今早" | "明早" => DayPart::Morning,
        "中午" => DayPart::Noon,
        "下午" | "傍晚" | "晚上" | "晚" | "夜里" | "夜间" | "半夜" | "今晚" | "明晚" | "昨晚" => {
            DayPart::Evening
        }
        "凌晨" => DayPart::EarlyMorning,
        _ => DayPart::None,
    }
}

struct FoundDate {
    start: usize,
    end: usize,
    date: NaiveDate,
    part: DayPart,
}

struct FoundTime {
    start: usize,
    end: usize,
    hour: u32,
    minute: u32,
    part: DayPart,
    chinese_hour: bool,
}

pub(super) fn find(text: &str, now: DateTime<Tz>, out: &mut Vec<Candidate>) {
    let p = patterns();
    let today = now.date_naive();
    let dates: Vec<FoundDate> = p
        .date
        .captures_iter(text)
        .filter_map(|c| date_of(text, &c, today))
        .collect();
    let mut times: Vec<Option<FoundTime>> = p
        .time
        .captures_iter(text)
        .map(|c| time_of(text, &c))
        .collect();
    let tz = now.timezone();
    for d in &dates {
        // A time right after the date (spaces or 的 between): one datetime.
        let rest = &text[d.end..];
        let gap = rest.len() - rest.trim_start_matches([' ', '\u{3000}', '的']).len();
        let joined = times
            .iter_mut()
            // `今晚8点`: the time (`晚8点`) may also start inside the date.
            .find(|t| {
                t.as_ref().is_some_and(|t| {
                    t.start == d.end + gap
                        || (t.start > d.start && t.start < d.end && t.end > d.end)
                })
            })
            .and_then(Option::take);
        match joined {
            Some(t) => {
                let part = if t.part == DayPart::None {
                    d.part
                } else {
                    t.part
                };
                let Some((hour, minute, next_day)) = clock(t.hour, t.minute, part) else {
                    continue;
                };
                let date = if next_day {
                    d.date + Duration::days(1)
                } else {
                    d.date
                };
                let naive = date.and_time(NaiveTime::from_hms_opt(hour, minute, 0).expect("valid"));
                let canonical = match tz.from_local_datetime(&naive).earliest() {
                    Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                    // A local time skipped by a DST change: say it without an offset.
                    None => naive.format("%Y-%m-%dT%H:%M:%S").to_string(),
                };
                out.push(candidate("datetime", d.start, t.end, canonical));
            }
            None => out.push(candidate(
                "date",
                d.start,
                d.end,
                d.date.format("%Y-%m-%d").to_string(),
            )),
        }
    }
    for t in times.into_iter().flatten() {
        // 一点 / 两点 alone mean "a little" / "two points" more often than a time.
        if t.chinese_hour && t.part == DayPart::None {
            continue;
        }
        if let Some((hour, minute, _)) = clock(t.hour, t.minute, t.part) {
            out.push(candidate(
                "time",
                t.start,
                t.end,
                format!("{hour:02}:{minute:02}"),
            ));
        }
    }
}

fn candidate(entity: &str, start: usize, end: usize, canonical: String) -> Candidate {
    Candidate {
        entity: entity.to_string(),
        start,
        end,
        canonical,
        source: EntitySource::Builtin,
        rank: rank::DATETIME,
    }
}

fn number(s: &str) -> Option<u32> {
    match s.parse::<u32>() {
        Ok(v) => Some(v),
        Err(_) => chinese_numbers::parse(s).and_then(|v| u32::try_from(v).ok()),
    }
}

fn date_of(text: &str, c: &Captures<'_>, today: NaiveDate) -> Option<FoundDate> {
    let whole = c.get(0)?;
    let (start, end) = (whole.start(), whole.end());
    let found = |date: NaiveDate, part: DayPart| {
        Some(FoundDate {
            start,
            end,
            date,
            part,
        })
    };
    let digit_before = char_before(text, start).is_some_and(is_digit);
    if c.name("full").is_some() {
        if digit_before {
            return None;
        }
        let y = c.name("y")?.as_str().parse().ok()?;
        let date = NaiveDate::from_ymd_opt(y, number(&c["fm"])?, number(&c["fd"])?)?;
        return found(date, DayPart::None);
    }
    if c.name("md").is_some() {
        if digit_before {
            return None;
        }
        let date = NaiveDate::from_ymd_opt(today.year(), number(&c["mm"])?, number(&c["mdd"])?)?;
        return found(date, DayPart::None);
    }
    if let Some(rel) = c.name("rel") {
        let rel = rel.as_str();
        let days = match rel {
            "大后天" => 3,
            "后天" => 2,
            "明天" | "明日" | "明晚" | "明早" => 1,
            "今天" | "今日" | "今晚" | "今早" => 0,
            "昨天" | "昨日" | "昨晚" => -1,
            "前天" => -2,
            _ => -3, // 大前天
        };
        return found(today + Duration::days(days), day_part(rel));
    }
    if c.name("wk").is_some() {
        // 一周一次 is "once a week", 两周三次 "three times in two weeks".
        let counted =
            char_before(text, start).is_some_and(|ch| "一二两三四五六七八九十几".contains(ch));
        if c.name("wkp").is_none() && counted {
            return None;
        }
        let target = match &c["wd"] {
            "一" | "1" => 0,
            "二" | "2" => 1,
            "三" | "3" => 2,
            "四" | "4" => 3,
            "五" | "5" => 4,
            "六" | "6" => 5,
            _ => 6, // 日 / 天 / 7
        };
        let today_wd = i64::from(today.weekday().num_days_from_monday());
        let monday = today - Duration::days(today_wd);
        let date = match c.name("wkp").map(|m| m.as_str()) {
            None => today + Duration::days((target - today_wd).rem_euclid(7)),
            Some("这" | "本") => monday + Duration::days(target),
            Some("下") => monday + Duration::days(7 + target),
            Some("下下") => monday + Duration::days(14 + target),
            Some("上") => monday + Duration::days(target - 7),
            Some(_) => monday + Duration::days(target - 14), // 上上
        };
        return found(date, DayPart::None);
    }
    // N号: the day of the current month, unless it names a place or thing.
    let letter_before = char_before(text, start).is_some_and(|ch| ch.is_ascii_alphanumeric());
    let after = char_after(text, end);
    if digit_before || letter_before || after.is_some_and(|ch| NOT_A_DAY_AFTER.contains(ch)) {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(today.year(), today.month(), number(&c["domd"])?)?;
    found(date, DayPart::None)
}

fn time_of(text: &str, c: &Captures<'_>) -> Option<FoundTime> {
    let whole = c.get(0)?;
    // Skip what the optional spaces at the front took.
    let lead = whole.as_str().len() - whole.as_str().trim_start().len();
    let (start, end) = (whole.start() + lead, whole.end());
    if char_before(text, start).is_some_and(is_digit) || char_after(text, end).is_some_and(is_digit)
    {
        return None;
    }
    let part = c.name("ap").map_or(DayPart::None, |m| day_part(m.as_str()));
    let (hour, minute, chinese_hour) = if let Some(h) = c.name("h") {
        let minute = if c.name("half").is_some() {
            30
        } else if c.name("q1").is_some() {
            15
        } else if c.name("q3").is_some() {
            45
        } else if let Some(m) = c.name("mi") {
            number(m.as_str())?
        } else {
            0
        };
        let chinese = !h.as_str().starts_with(|ch: char| ch.is_ascii_digit());
        (number(h.as_str())?, minute, chinese)
    } else {
        (number(&c["hh"])?, number(&c["mm"])?, false)
    };
    Some(FoundTime {
        start,
        end,
        hour,
        minute,
        part,
        chinese_hour,
    })
}

/// (hour, minute, next day) on a 24-hour clock, or None for an impossible time.
fn clock(hour: u32, minute: u32, part: DayPart) -> Option<(u32, u32, bool)> {
    if hour > 23 || minute > 59 {
        return None;
    }
    Some(match part {
        DayPart::Evening if hour == 12 => (0, minute, true),
        DayPart::Evening if hour < 12 => (hour + 12, minute, false),
        DayPart::Noon if hour <= 3 => (hour + 12, minute, false),
        DayPart::EarlyMorning if hour == 12 => (0, minute, false),
        _ => (hour, minute, false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saturday 28 November 2026, 10:00 in Shanghai: the next week starts on Monday the 30th,
    /// December starts on Tuesday.
    fn saturday() -> DateTime<Tz> {
        chrono_tz::Asia::Shanghai
            .with_ymd_and_hms(2026, 11, 28, 10, 0, 0)
            .unwrap()
    }

    fn found_at(text: &str, now: DateTime<Tz>) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        find(text, now, &mut out);
        super::super::resolve_overlaps(out)
            .into_iter()
            .map(|c| (c.entity, text[c.start..c.end].to_string(), c.canonical))
            .collect()
    }

    fn found(text: &str) -> Vec<(String, String, String)> {
        found_at(text, saturday())
    }

    fn one(entity: &str, value: &str, canonical: &str) -> Vec<(String, String, String)> {
        vec![(entity.into(), value.into(), canonical.into())]
    }

    #[test]
    fn relative_days_cross_the_month_end() {
        assert_eq!(found("今天发货吗"), one("date", "今天", "2026-11-28"));
        assert_eq!(found("明天到"), one("date", "明天", "2026-11-29"));
        assert_eq!(found("后天"), one("date", "后天", "2026-11-30"));
        assert_eq!(found("大后天"), one("date", "大后天", "2026-12-01"));
        assert_eq!(found("昨天下的单"), one("date", "昨天", "2026-11-27"));
        assert_eq!(found("前天"), one("date", "前天", "2026-11-26"));
        // New Year's Eve: tomorrow is next year.
        let eve = chrono_tz::Asia::Shanghai
            .with_ymd_and_hms(2026, 12, 31, 23, 30, 0)
            .unwrap();
        assert_eq!(found_at("明天", eve), one("date", "明天", "2027-01-01"));
    }

    #[test]
    fn weekdays_across_the_week_boundary() {
        // Today is Saturday: a bare Friday is the next one, this week's Friday was yesterday.
        assert_eq!(found("周五"), one("date", "周五", "2026-12-04"));
        assert_eq!(found("星期六"), one("date", "星期六", "2026-11-28"));
        assert_eq!(found("礼拜天"), one("date", "礼拜天", "2026-11-29"));
        assert_eq!(found("这周五"), one("date", "这周五", "2026-11-27"));
        assert_eq!(found("本周日"), one("date", "本周日", "2026-11-29"));
        assert_eq!(found("下周三"), one("date", "下周三", "2026-12-02"));
        assert_eq!(found("下下周一"), one("date", "下下周一", "2026-12-07"));
        assert_eq!(found("上周一"), one("date", "上周一", "2026-11-16"));
        assert_eq!(found("下个星期一"), one("date", "下个星期一", "2026-11-30"));
        assert_eq!(found("每周三"), one("date", "周三", "2026-12-02"));
        assert_eq!(found("一周一次"), vec![]);
    }

    #[test]
    fn date_and_time_make_one_datetime() {
        assert_eq!(
            found("周五晚上8点来"),
            one("datetime", "周五晚上8点", "2026-12-04T20:00:00+08:00")
        );
        assert_eq!(
            found("明晚八点半"),
            one("datetime", "明晚八点半", "2026-11-29T20:30:00+08:00")
        );
        assert_eq!(
            found("下周三 下午3点一刻"),
            one(
                "datetime",
                "下周三 下午3点一刻",
                "2026-12-02T15:15:00+08:00"
            )
        );
        assert_eq!(
            found("3月5日的14:30"),
            one("datetime", "3月5日的14:30", "2026-03-05T14:30:00+08:00")
        );
        // The time may start inside the date word that says the part of the day.
        assert_eq!(
            found("今晚8点开抢"),
            one("datetime", "今晚8点", "2026-11-28T20:00:00+08:00")
        );
        // 晚上12点 is midnight: the next day starts.
        assert_eq!(
            found("今天晚上12点"),
            one("datetime", "今天晚上12点", "2026-11-29T00:00:00+08:00")
        );
    }

    #[test]
    fn absolute_dates_and_days_of_month() {
        assert_eq!(found("3月5日"), one("date", "3月5日", "2026-03-05"));
        assert_eq!(found("三月五号"), one("date", "三月五号", "2026-03-05"));
        assert_eq!(found("十二月31日"), one("date", "十二月31日", "2026-12-31"));
        assert_eq!(
            found("2027年1月2日"),
            one("date", "2027年1月2日", "2027-01-02")
        );
        assert_eq!(found("2027-01-02"), one("date", "2027-01-02", "2027-01-02"));
        assert_eq!(found("12号能到吗"), one("date", "12号", "2026-11-12"));
        // Places and things numbered with 号 are not days.
        assert_eq!(found("3号楼"), vec![]);
        assert_eq!(found("地铁1号线"), vec![]);
    }

    #[test]
    fn impossible_dates_are_not_entities() {
        assert_eq!(found("2月30日"), vec![]);
        assert_eq!(found("13月1日"), vec![]);
        assert_eq!(found("2026年2月29日"), vec![]);
        assert_eq!(found("31号"), vec![]); // November has 30 days
        assert_eq!(found("99号"), vec![]);
        assert_eq!(found("25点"), vec![]);
        assert_eq!(found("8点99分"), vec![]);
    }

    #[test]
    fn times_alone() {
        assert_eq!(found("8点半"), one("time", "8点半", "08:30"));
        assert_eq!(found("下午两点"), one("time", "下午两点", "14:00"));
        assert_eq!(found("中午1点"), one("time", "中午1点", "13:00"));
        assert_eq!(found("20:30"), one("time", "20:30", "20:30"));
        assert_eq!(found("秒杀是每晚8点吗"), one("time", "晚8点", "20:00"));
        // "a little" / "two points", not a time of day
        assert_eq!(found("便宜一点"), vec![]);
        assert_eq!(found("有两点建议"), vec![]);
    }

    #[test]
    fn time_zone_of_the_bot_decides_today() {
        // 2026-11-28 20:00 UTC is already the 29th in Shanghai.
        let utc_evening = chrono_tz::UTC
            .with_ymd_and_hms(2026, 11, 28, 20, 0, 0)
            .unwrap();
        let shanghai = utc_evening.with_timezone(&chrono_tz::Asia::Shanghai);
        assert_eq!(
            found_at("今天", utc_evening),
            one("date", "今天", "2026-11-28")
        );
        assert_eq!(
            found_at("今天", shanghai),
            one("date", "今天", "2026-11-29")
        );
        let ny = utc_evening.with_timezone(&chrono_tz::America::New_York);
        assert_eq!(
            found_at("明天9点", ny),
            one("datetime", "明天9点", "2026-11-29T09:00:00-05:00")
        );
    }
}
