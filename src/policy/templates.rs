//! Reply templates: literal text with `{variable}` placeholders, parsed once at load so an
//! unknown or misplaced variable is a load-time error, never a broken message in a group.
//!
//! Variables: `{nickname}`, `{group_name}`, `{greeting}` (time of day, in the bot's time zone),
//! `{festival}` (festival greeting from `calendar.yml` for today, empty on ordinary days),
//! `{candidates}` (clarify only), `{wait_minutes}` (handoff / off-hours), `{open_time}`
//! (off-hours: next opening as HH:MM), `{days_left}` and `{event_name}` (countdowns).
//! `{{` and `}}` write literal braces.
//!
//! Entities found in the message are variables too, by type (`{order_id}`, `{product}`): a
//! template may name the entity types the operator snapshot can produce (built-in types,
//! lookup tables, operator regex entities); an entity missing from the message renders as its
//! fallback from `replies.yml` `variables` (or as empty text when there is none).

use chrono::{NaiveDate, NaiveTime, Timelike};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Var {
    Nickname,
    GroupName,
    Greeting,
    Festival,
    Candidates,
    WaitMinutes,
    OpenTime,
    DaysLeft,
    EventName,
}

impl Var {
    pub const ALL: [Var; 9] = [
        Var::Nickname,
        Var::GroupName,
        Var::Greeting,
        Var::Festival,
        Var::Candidates,
        Var::WaitMinutes,
        Var::OpenTime,
        Var::DaysLeft,
        Var::EventName,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Var::Nickname => "nickname",
            Var::GroupName => "group_name",
            Var::Greeting => "greeting",
            Var::Festival => "festival",
            Var::Candidates => "candidates",
            Var::WaitMinutes => "wait_minutes",
            Var::OpenTime => "open_time",
            Var::DaysLeft => "days_left",
            Var::EventName => "event_name",
        }
    }

    pub fn parse(s: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.name() == s)
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Var(Var),
    /// An entity type of the message.
    Entity(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parse `{var}` placeholders; an unknown name or an unbalanced brace is an error.
    pub fn parse(source: &str) -> Result<Template, String> {
        Self::parse_with_entities(source, &[])
    }

    /// Like `parse`, and `{name}` may also name one of the entity types `entities`.
    pub fn parse_with_entities(source: &str, entities: &[String]) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err(format!("unclosed '{{{name}' in template")),
                        }
                    }
                    let key = name.trim();
                    let part = match Var::parse(key) {
                        Some(var) => Part::Var(var),
                        None if entities.iter().any(|e| e == key) => Part::Entity(key.into()),
                        None => {
                            let known: Vec<&str> = Var::ALL.iter().map(|v| v.name()).collect();
                            let ents = if entities.is_empty() {
                                "none".to_string()
                            } else {
                                entities.join(", ")
                            };
                            return Err(format!(
                                "unknown template variable '{{{name}}}' (known: {}; entity types: {ents})",
                                known.join(", ")
                            ));
                        }
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(part);
                }
                '}' => {
                    return Err("unmatched '}' in template (write '}}' for a literal brace)".into())
                }
                _ => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(*v),
            _ => None,
        })
    }

    /// The entity types the template names.
    pub fn entities(&self) -> impl Iterator<Item = &str> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Entity(e) => Some(e.as_str()),
            _ => None,
        })
    }

    /// The literal pieces (what the operator wrote around the variables).
    pub fn literals(&self) -> impl Iterator<Item = &str> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Lit(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// Check the template only uses variables from `allowed`.
    pub fn check_vars(&self, allowed: &[Var]) -> Result<(), String> {
        for v in self.vars() {
            if !allowed.contains(&v) {
                let names: Vec<&str> = allowed.iter().map(|v| v.name()).collect();
                return Err(format!(
                    "variable '{{{v}}}' is not available here (available: {})",
                    names.join(", ")
                ));
            }
        }
        Ok(())
    }

    pub fn render(&self, vars: &Vars) -> String {
        let mut out = String::with_capacity(self.source.len() + 16);
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => out.push_str(vars.get(*v)),
                Part::Entity(e) => out.push_str(vars.entity(e)),
            }
        }
        out
    }
}

/// What replaces an empty variable, by variable, and a missing entity, by type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fallbacks {
    by_var: [String; Var::ALL.len()],
    by_entity: std::collections::BTreeMap<String, String>,
}

impl Fallbacks {
    pub fn set(&mut self, v: Var, text: String) {
        self.by_var[index(v)] = text;
    }

    pub fn get(&self, v: Var) -> &str {
        &self.by_var[index(v)]
    }

    pub fn set_entity(&mut self, entity: &str, text: String) {
        self.by_entity.insert(entity.to_string(), text);
    }

    pub fn entity(&self, entity: &str) -> &str {
        self.by_entity.get(entity).map_or("", String::as_str)
    }
}

fn index(v: Var) -> usize {
    Var::ALL
        .iter()
        .position(|&x| x == v)
        .expect("Var::ALL lists every variable")
}

/// Values for one rendering. An empty value renders as its fallback from `replies.yml`
/// (`variables`), or as empty text when there is none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vars {
    pub fallbacks: std::sync::Arc<Fallbacks>,
    pub nickname: String,
    pub group_name: String,
    pub greeting: String,
    pub festival: String,
    pub candidates: String,
    pub wait_minutes: String,
    pub open_time: String,
    pub days_left: String,
    pub event_name: String,
    /// (entity type, text to show) of the message's entities, in text order; the first of a
    /// type is used. Already cleaned for a reply (see `policy::variables::entity_values`).
    pub entities: Vec<(String, String)>,
}

impl Vars {
    /// The first entity of type `entity`, or its fallback.
    pub fn entity(&self, entity: &str) -> &str {
        match self
            .entities
            .iter()
            .find(|(t, v)| t == entity && !v.is_empty())
        {
            Some((_, v)) => v,
            None => self.fallbacks.entity(entity),
        }
    }

    pub fn get(&self, v: Var) -> &str {
        let value = self.value(v);
        if value.is_empty() {
            self.fallbacks.get(v)
        } else {
            value
        }
    }

    fn value(&self, v: Var) -> &str {
        match v {
            Var::Nickname => &self.nickname,
            Var::GroupName => &self.group_name,
            Var::Greeting => &self.greeting,
            Var::Festival => &self.festival,
            Var::Candidates => &self.candidates,
            Var::WaitMinutes => &self.wait_minutes,
            Var::OpenTime => &self.open_time,
            Var::DaysLeft => &self.days_left,
            Var::EventName => &self.event_name,
        }
    }
}

/// Time-of-day greetings: each slot starts at `from` and lasts until the next slot's start
/// (the last one wraps past midnight to the first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Greetings {
    /// (minute of day, text), sorted by minute.
    slots: Vec<(u32, String)>,
}

impl Greetings {
    pub fn new(mut slots: Vec<(u32, String)>) -> Self {
        slots.sort_by_key(|s| s.0);
        Self { slots }
    }

    pub fn at(&self, t: NaiveTime) -> &str {
        let m = t.hour() * 60 + t.minute();
        self.slots
            .iter()
            .rev()
            .find(|(from, _)| *from <= m)
            .or_else(|| self.slots.last())
            .map(|(_, s)| s.as_str())
            .unwrap_or("")
    }
}

/// One festival from `calendar.yml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Festival {
    pub name: String,
    pub date: NaiveDate,
    /// How many days, from `date`, the greeting is used.
    pub days: u32,
    pub greeting: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calendar {
    pub festivals: Vec<Festival>,
}

impl Calendar {
    /// The festival greeting for a local date, or "".
    pub fn greeting_on(&self, day: NaiveDate) -> &str {
        self.festivals
            .iter()
            .find(|f| {
                let offset = (day - f.date).num_days();
                offset >= 0 && offset < i64::from(f.days)
            })
            .map(|f| f.greeting.as_str())
            .unwrap_or("")
    }
}

/// "HH:MM" → minute of day (24:00 allowed as the end of a day).
pub fn parse_hhmm(s: &str) -> Result<u32, String> {
    let bad = || format!("time must be HH:MM (00:00..=24:00), got '{s}'");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_render() {
        let t = Template::parse("{greeting}，{nickname}！欢迎来到{group_name} {{群}}").unwrap();
        let vars = Vars {
            greeting: "早上好".into(),
            nickname: "小王".into(),
            group_name: "粉丝群".into(),
            ..Default::default()
        };
        assert_eq!(t.render(&vars), "早上好，小王！欢迎来到粉丝群 {群}");
        assert_eq!(
            t.vars().collect::<Vec<_>>(),
            vec![Var::Greeting, Var::Nickname, Var::GroupName]
        );
    }

    #[test]
    fn entity_placeholders_render_or_fall_back() {
        let types = vec!["order_id".to_string(), "product".to_string()];
        let t = Template::parse_with_entities("订单 {order_id} 的{product}已发货", &types).unwrap();
        assert_eq!(
            t.entities().collect::<Vec<_>>(),
            vec!["order_id", "product"]
        );
        let mut fallbacks = Fallbacks::default();
        fallbacks.set_entity("order_id", "您的订单".into());
        let mut vars = Vars {
            fallbacks: std::sync::Arc::new(fallbacks),
            entities: vec![
                ("order_id".into(), "2026112812345".into()),
                ("order_id".into(), "999".into()),
            ],
            ..Default::default()
        };
        assert_eq!(t.render(&vars), "订单 2026112812345 的已发货");
        vars.entities.clear();
        assert_eq!(t.render(&vars), "订单 您的订单 的已发货");
        // Without the entity types, `{order_id}` is an unknown variable.
        let e = Template::parse("订单{order_id}").unwrap_err();
        assert!(e.contains("entity types: none"), "{e}");
        let e = Template::parse_with_entities("{coupon}", &types).unwrap_err();
        assert!(e.ends_with("entity types: order_id, product)"), "{e}");
    }

    #[test]
    fn unknown_and_unbalanced_are_errors() {
        let e = Template::parse("你好{nick}").unwrap_err();
        assert!(e.starts_with("unknown template variable '{nick}'"), "{e}");
        assert!(Template::parse("你好{nickname")
            .unwrap_err()
            .starts_with("unclosed"));
        assert!(Template::parse("你好}")
            .unwrap_err()
            .starts_with("unmatched"));
    }

    #[test]
    fn vars_must_be_available_in_context() {
        let t = Template::parse("请稍等{wait_minutes}分钟").unwrap();
        assert!(t.check_vars(&[Var::WaitMinutes, Var::Nickname]).is_ok());
        let e = t.check_vars(&[Var::Nickname]).unwrap_err();
        assert!(
            e.starts_with("variable '{wait_minutes}' is not available here"),
            "{e}"
        );
    }

    #[test]
    fn greeting_slots_wrap_midnight() {
        let g = Greetings::new(vec![
            (5 * 60, "早上好".into()),
            (11 * 60, "中午好".into()),
            (13 * 60, "下午好".into()),
            (18 * 60, "晚上好".into()),
        ]);
        let at = |h, m| NaiveTime::from_hms_opt(h, m, 0).unwrap();
        assert_eq!(g.at(at(8, 0)), "早上好");
        assert_eq!(g.at(at(12, 59)), "中午好");
        assert_eq!(g.at(at(13, 0)), "下午好");
        assert_eq!(g.at(at(23, 0)), "晚上好");
        assert_eq!(g.at(at(2, 0)), "晚上好");
        assert_eq!(Greetings::default().at(at(2, 0)), "");
    }

    #[test]
    fn festival_by_date() {
        let cal = Calendar {
            festivals: vec![Festival {
                name: "春节".into(),
                date: NaiveDate::from_ymd_opt(2027, 2, 6).unwrap(),
                days: 3,
                greeting: "新春快乐！".into(),
            }],
        };
        let d = |m, day| NaiveDate::from_ymd_opt(2027, m, day).unwrap();
        assert_eq!(cal.greeting_on(d(2, 5)), "");
        assert_eq!(cal.greeting_on(d(2, 6)), "新春快乐！");
        assert_eq!(cal.greeting_on(d(2, 8)), "新春快乐！");
        assert_eq!(cal.greeting_on(d(2, 9)), "");
    }

    #[test]
    fn hhmm() {
        assert_eq!(parse_hhmm("09:30"), Ok(570));
        assert_eq!(parse_hhmm("24:00"), Ok(1440));
        assert!(parse_hhmm("9:30").is_err());
        assert!(parse_hhmm("24:01").is_err());
        assert!(parse_hhmm("12:60").is_err());
    }
}
