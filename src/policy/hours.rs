//! Service hours per bot: weekly opening windows in the bot's time zone. Outside them messages go
//! to the handoff queue with an off-hours reply (reason `off_hours`). No windows = always open.

use chrono::{Datelike, Duration, NaiveDateTime, TimeZone, Timelike, Weekday};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// Minutes of the day, `from < to`, `to` may be 1440 (24:00).
    pub from_min: u32,
    pub to_min: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceHours {
    pub windows: Vec<Window>,
}

pub fn weekday_bit(d: Weekday) -> u8 {
    1 << d.num_days_from_monday()
}

/// `mon`..`sun` → weekday.
pub fn parse_weekday(s: &str) -> Option<Weekday> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

pub(crate) fn local(tz: Tz, ms: i64) -> NaiveDateTime {
    tz.timestamp_millis_opt(ms)
        .single()
        .map(|d| d.naive_local())
        .unwrap_or_default()
}

/// Local wall-clock time → Unix ms (the earlier instant when ambiguous; skipped times move on).
pub(crate) fn to_ms(tz: Tz, t: NaiveDateTime) -> i64 {
    let mut t = t;
    for _ in 0..4 {
        if let Some(d) = tz.from_local_datetime(&t).earliest() {
            return d.timestamp_millis();
        }
        t += Duration::minutes(30);
    }
    t.and_utc().timestamp_millis()
}

impl ServiceHours {
    pub fn always_open(&self) -> bool {
        self.windows.is_empty()
    }

    pub fn is_open(&self, tz: Tz, ms: i64) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let t = local(tz, ms);
        let m = t.hour() * 60 + t.minute();
        let bit = weekday_bit(t.weekday());
        self.windows
            .iter()
            .any(|w| w.days & bit != 0 && w.from_min <= m && m < w.to_min)
    }

    /// The start of the next opening window at or after `ms` (ms itself when open now).
    pub fn next_open_ms(&self, tz: Tz, ms: i64) -> Option<i64> {
        if self.is_open(tz, ms) {
            return Some(ms);
        }
        let now = local(tz, ms);
        let now_min = now.hour() * 60 + now.minute();
        let mut best: Option<NaiveDateTime> = None;
        for day in 0..8i64 {
            let date = now.date() + Duration::days(day);
            let bit = weekday_bit(date.weekday());
            for w in self.windows.iter().filter(|w| w.days & bit != 0) {
                if day == 0 && w.from_min <= now_min {
                    continue;
                }
                let start = date.and_hms_opt(0, 0, 0)? + Duration::minutes(i64::from(w.from_min));
                if best.is_none_or(|b| start < b) {
                    best = Some(start);
                }
            }
            if best.is_some() {
                break;
            }
        }
        best.map(|b| to_ms(tz, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> Tz {
        "Asia/Shanghai".parse().unwrap()
    }

    fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        to_ms(
            sh(),
            chrono::NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, 0)
                .unwrap(),
        )
    }

    fn weekdays_9_to_21() -> ServiceHours {
        ServiceHours {
            windows: vec![
                Window {
                    days: 0b0011111,
                    from_min: 9 * 60,
                    to_min: 21 * 60,
                },
                Window {
                    days: 0b1100000,
                    from_min: 10 * 60,
                    to_min: 18 * 60,
                },
            ],
        }
    }

    #[test]
    fn open_and_closed_in_local_time() {
        let h = weekdays_9_to_21();
        // 2027-03-01 is a Monday.
        assert!(!h.is_open(sh(), ms(2027, 3, 1, 8, 59)));
        assert!(h.is_open(sh(), ms(2027, 3, 1, 9, 0)));
        assert!(h.is_open(sh(), ms(2027, 3, 1, 20, 59)));
        assert!(!h.is_open(sh(), ms(2027, 3, 1, 21, 0)));
        assert!(!h.is_open(sh(), ms(2027, 3, 6, 9, 30))); // Saturday
        assert!(h.is_open(sh(), ms(2027, 3, 6, 10, 30)));
        assert!(ServiceHours::default().is_open(sh(), 0));
    }

    #[test]
    fn next_opening() {
        let h = weekdays_9_to_21();
        assert_eq!(
            h.next_open_ms(sh(), ms(2027, 3, 1, 22, 0)),
            Some(ms(2027, 3, 2, 9, 0))
        );
        assert_eq!(
            h.next_open_ms(sh(), ms(2027, 3, 1, 7, 0)),
            Some(ms(2027, 3, 1, 9, 0))
        );
        // Friday night → Saturday 10:00.
        assert_eq!(
            h.next_open_ms(sh(), ms(2027, 3, 5, 21, 30)),
            Some(ms(2027, 3, 6, 10, 0))
        );
        let t = ms(2027, 3, 1, 12, 0);
        assert_eq!(h.next_open_ms(sh(), t), Some(t));
    }
}
