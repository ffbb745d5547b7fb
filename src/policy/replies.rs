//! The reply library (`config/operator/replies.yml`): every text the bot can send, as templates
//! with an id and a style, checked at load (known variables only, only variables the context can
//! fill, no banned words).
//!
//! Layout:
//! ```yaml
//! styles: [playful, professional]      # the styles variants may use
//! list_separator: "、"                  # joins candidates / merged welcome nicknames
//! greetings:                           # {greeting}: slot starts, local time
//!   - { from: "05:00", text: ... }
//! intents:                             # every intent of intents.yml, each a list of variants
//!   price:
//!     - { id: p1, style: professional, text: ... }
//! special:                             # clarify, fallback, welcome, handoff, off_hours,
//!   clarify: [...]                     # disclosure, reactivation, countdown (required);
//!                                      # link_default, card_default (optional)
//! links:   { <link id>: [...] }        # LINK_CLICKED guidance
//! cards:   { <card id>: [...] }        # CARD_SHARED guidance
//! named:   { <id>: [...] }             # replies used by playbook rules, pushes and schedules
//! ```
//!
//! Choosing a variant is deterministic: among the variants of the wanted style (all variants when
//! none has it), start at `hash(seed, user, key) % n`; if the rendered text contains a banned word
//! (e.g. through a nickname), try the next one, then the other styles; if none is clean there is
//! no reply.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::compliance::BannedWords;
use super::templates::{parse_hhmm, Fallbacks, Greetings, Template, Var};
use super::variables::{clean_user_text, VariableRules, MAX_CHARS_LIMIT};
use crate::data::yaml::{Seg, YamlFile};
use crate::data::FileError;
use crate::engine::catalog::Catalog;
use crate::types::ReplyOut;

/// Variables available to a reply addressed to a user in a group.
pub const USER_VARS: [Var; 4] = [Var::Nickname, Var::GroupName, Var::Greeting, Var::Festival];
/// Variables available to a message addressed to the whole group (no user).
pub const CHAT_VARS: [Var; 3] = [Var::GroupName, Var::Greeting, Var::Festival];

/// Special keys: (name, required, extra variables beyond the base set, addressed to a user).
const SPECIALS: [(&str, bool, &[Var], bool); 10] = [
    ("clarify", true, &[Var::Candidates], true),
    ("fallback", true, &[], true),
    ("welcome", true, &[], true),
    ("handoff", true, &[Var::WaitMinutes], true),
    ("off_hours", true, &[Var::OpenTime], true),
    ("disclosure", true, &[], true),
    ("reactivation", true, &[], false),
    ("countdown", true, &[Var::DaysLeft, Var::EventName], false),
    ("link_default", false, &[], true),
    ("card_default", false, &[], true),
];

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub id: String,
    pub style: String,
    pub template: Template,
}

#[derive(Debug, Clone, Default)]
pub struct ReplyLibrary {
    sets: HashMap<String, Vec<Variant>>,
    pub styles: Vec<String>,
    pub greetings: Greetings,
    pub list_separator: String,
    /// Cleaning caps and fallbacks of template variables (`variables`).
    pub variables: VariableRules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    styles: Vec<String>,
    #[serde(default)]
    list_separator: Option<String>,
    #[serde(default)]
    greetings: Vec<RawGreeting>,
    intents: BTreeMap<String, Vec<RawVariant>>,
    special: BTreeMap<String, Vec<RawVariant>>,
    #[serde(default)]
    links: BTreeMap<String, Vec<RawVariant>>,
    #[serde(default)]
    cards: BTreeMap<String, Vec<RawVariant>>,
    #[serde(default)]
    named: BTreeMap<String, Vec<RawVariant>>,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    max_chars: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGreeting {
    from: String,
    text: String,
}

/// What the templates of one reply set may name: the variables its context fills and the
/// entity types of the snapshot.
#[derive(Clone, Copy)]
struct Names<'a> {
    vars: &'a [Var],
    entities: &'a [String],
}

/// One reply set as found in the file: (section, name, library key, the variables its context
/// can fill, the variants).
type SetSpec<'r> = (&'r str, &'r str, String, Vec<Var>, &'r [RawVariant]);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    id: String,
    style: String,
    text: String,
}

/// The `variables` section: a fallback per variable (cleaned like a nickname, free of banned
/// words) and caps for the user-chosen ones.
fn variable_rules(
    raw: &BTreeMap<String, RawVariable>,
    banned: &BannedWords,
    entities: &[String],
    err: &dyn Fn(&[Seg<'_>], String) -> FileError,
) -> Result<VariableRules, FileError> {
    let mut rules = VariableRules::default();
    let mut fallbacks = Fallbacks::default();
    for (name, v) in raw {
        let at = |key: &'static str| [Seg::Key("variables"), Seg::Key(name), Seg::Key(key)];
        let var = Var::parse(name);
        if var.is_none() && !entities.contains(name) {
            let known: Vec<&str> = Var::ALL.iter().map(|v| v.name()).collect();
            return Err(err(
                &[Seg::Key("variables"), Seg::Key(name)],
                format!(
                    "unknown template variable '{name}' (known: {}; entity types: {})",
                    known.join(", "),
                    entities.join(", ")
                ),
            ));
        }
        if let Some(max) = v.max_chars {
            let slot = match var {
                Some(Var::Nickname) => &mut rules.nickname_max_chars,
                Some(Var::GroupName) => &mut rules.group_name_max_chars,
                _ => {
                    return Err(err(
                        &at("max_chars"),
                        format!(
                            "max_chars applies to nickname and group_name (the values users \
                             choose), not to '{name}'"
                        ),
                    ))
                }
            };
            if max == 0 || max > MAX_CHARS_LIMIT {
                return Err(err(
                    &at("max_chars"),
                    format!("max_chars must be between 1 and {MAX_CHARS_LIMIT}, got {max}"),
                ));
            }
            *slot = max;
        }
        if let Some(text) = &v.fallback {
            let clean = clean_user_text(text, MAX_CHARS_LIMIT);
            if clean != *text || text.is_empty() {
                return Err(err(
                    &at("fallback"),
                    format!(
                        "fallback for '{name}' must be plain visible text of at most \
                         {MAX_CHARS_LIMIT} characters (no control or bidi characters, line \
                         breaks, '@', phone numbers or e-mails)"
                    ),
                ));
            }
            if let Some(w) = banned.find(text) {
                return Err(err(
                    &at("fallback"),
                    format!("fallback for '{name}' contains the banned word '{w}'"),
                ));
            }
            match var {
                Some(var) => fallbacks.set(var, text.clone()),
                None => fallbacks.set_entity(name, text.clone()),
            }
        }
    }
    rules.fallbacks = std::sync::Arc::new(fallbacks);
    Ok(rules)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl ReplyLibrary {
    /// Load and validate `replies.yml`: every intent of `catalog` needs replies; templates may
    /// name the entity types `entities` (and nothing else beyond the variables).
    pub fn load(
        path: &Path,
        catalog: &Catalog,
        banned: &BannedWords,
        entities: &[String],
    ) -> Result<Self, FileError> {
        Self::from_file(&YamlFile::load(path)?, catalog, banned, entities)
    }

    pub fn from_file(
        file: &YamlFile,
        catalog: &Catalog,
        banned: &BannedWords,
        entities: &[String],
    ) -> Result<Self, FileError> {
        let raw: RawFile = file.deserialize()?;
        let err = |segs: &[Seg<'_>], msg: String| file.error(segs, msg);

        if raw.styles.is_empty() {
            return Err(err(
                &[Seg::Key("styles")],
                "styles must list at least one style".into(),
            ));
        }
        for (i, s) in raw.styles.iter().enumerate() {
            if !valid_id(s) {
                return Err(err(
                    &[Seg::Key("styles"), Seg::Index(i)],
                    format!("style '{s}' must be a simple id"),
                ));
            }
        }
        let mut greet = Vec::new();
        for (i, g) in raw.greetings.iter().enumerate() {
            let at = &[Seg::Key("greetings"), Seg::Index(i)];
            let m = parse_hhmm(&g.from).map_err(|e| err(at, e))?;
            if m >= 1440 {
                return Err(err(at, "greeting 'from' must be before 24:00".into()));
            }
            if let Some(w) = banned.find(&g.text) {
                return Err(err(at, format!("greeting contains the banned word '{w}'")));
            }
            greet.push((m, g.text.clone()));
        }

        let variables = variable_rules(&raw.variables, banned, entities, &err)?;
        let mut lib = ReplyLibrary {
            variables,
            sets: HashMap::new(),
            styles: raw.styles.clone(),
            greetings: Greetings::new(greet),
            list_separator: raw
                .list_separator
                .clone()
                .unwrap_or_else(|| "\u{3001}".to_string()),
        };

        let mut sets: Vec<SetSpec<'_>> = Vec::new();
        for (name, variants) in &raw.intents {
            if !catalog.contains(name) {
                return Err(err(
                    &[Seg::Key("intents"), Seg::Key(name)],
                    format!("unknown intent '{name}'"),
                ));
            }
            sets.push(("intents", name, name.clone(), USER_VARS.to_vec(), variants));
        }
        if let Some(intent) = catalog.ids().find(|i| !raw.intents.contains_key(*i)) {
            return Err(err(
                &[Seg::Key("intents")],
                format!("no replies for intent '{intent}'"),
            ));
        }
        for (name, variants) in &raw.special {
            let Some(&(_, _, extra, to_user)) = SPECIALS.iter().find(|s| s.0 == name) else {
                let known: Vec<&str> = SPECIALS.iter().map(|s| s.0).collect();
                return Err(err(
                    &[Seg::Key("special"), Seg::Key(name)],
                    format!(
                        "unknown special reply '{name}' (known: {})",
                        known.join(", ")
                    ),
                ));
            };
            let base = if to_user {
                &USER_VARS[..]
            } else {
                &CHAT_VARS[..]
            };
            let allowed = [base, extra].concat();
            sets.push(("special", name, name.clone(), allowed, variants));
        }
        if let Some((name, ..)) = SPECIALS
            .iter()
            .find(|(name, required, ..)| *required && !raw.special.contains_key(*name))
        {
            return Err(err(
                &[Seg::Key("special")],
                format!("missing special reply '{name}'"),
            ));
        }
        for (section, map, prefix) in [
            ("links", &raw.links, "link:"),
            ("cards", &raw.cards, "card:"),
        ] {
            for (id, variants) in map {
                sets.push((
                    section,
                    id,
                    format!("{prefix}{id}"),
                    USER_VARS.to_vec(),
                    variants,
                ));
            }
        }
        for (id, variants) in &raw.named {
            if catalog.contains(id) || SPECIALS.iter().any(|s| s.0 == id) || !valid_id(id) {
                return Err(err(
                    &[Seg::Key("named"), Seg::Key(id)],
                    format!("named reply '{id}' must be a simple id that is not an intent or special name"),
                ));
            }
            // `{wait_minutes}`: a dedicated-agent rule (`handoff: true`) fills it; playbook.yml
            // refuses it in replies that nothing fills.
            let mut allowed = USER_VARS.to_vec();
            allowed.push(Var::WaitMinutes);
            sets.push(("named", id, id.clone(), allowed, variants));
        }
        for (section, name, key, allowed, variants) in sets {
            let names = Names {
                vars: &allowed,
                entities,
            };
            lib.add_set(file, banned, &[section, name], key, variants, names)?;
        }
        Ok(lib)
    }

    fn add_set(
        &mut self,
        file: &YamlFile,
        banned: &BannedWords,
        at: &[&str; 2],
        key: String,
        raw: &[RawVariant],
        names: Names<'_>,
    ) -> Result<(), FileError> {
        let (allowed, entities) = (names.vars, names.entities);
        let base = [Seg::Key(at[0]), Seg::Key(at[1])];
        if raw.is_empty() {
            return Err(file.error(&base, format!("'{key}' has no variants")));
        }
        let mut out = Vec::with_capacity(raw.len());
        for (i, v) in raw.iter().enumerate() {
            let fail = |k: &'static str, msg: String| {
                file.error(&[base[0], base[1], Seg::Index(i), Seg::Key(k)], msg)
            };
            if !valid_id(&v.id) {
                return Err(fail(
                    "id",
                    format!("variant id '{}' must be letters, digits, '_' or '-'", v.id),
                ));
            }
            if out.iter().any(|o: &Variant| o.id == v.id) {
                return Err(fail(
                    "id",
                    format!("duplicate variant id '{}' in '{key}'", v.id),
                ));
            }
            if !self.styles.contains(&v.style) {
                return Err(fail(
                    "style",
                    format!(
                        "unknown style '{}' (declared styles: {})",
                        v.style,
                        self.styles.join(", ")
                    ),
                ));
            }
            if v.text.trim().is_empty() {
                return Err(fail("text", "reply text is empty".into()));
            }
            let t =
                Template::parse_with_entities(&v.text, entities).map_err(|e| fail("text", e))?;
            t.check_vars(allowed)
                .map_err(|e| fail("text", format!("in '{key}': {e}")))?;
            for lit in t.literals() {
                if let Some(w) = banned.find(lit) {
                    return Err(fail(
                        "text",
                        format!("reply '{key}/{}' contains the banned word '{w}'", v.id),
                    ));
                }
            }
            out.push(Variant {
                id: v.id.clone(),
                style: v.style.clone(),
                template: t,
            });
        }
        self.sets.insert(key, out);
        Ok(())
    }

    pub fn has(&self, key: &str) -> bool {
        self.sets.contains_key(key)
    }

    /// Every reply set's key (intents, specials, `link:`/`card:`/named sets), sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.sets.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    pub fn variants(&self, key: &str) -> &[Variant] {
        self.sets.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn variant(&self, key: &str, id: &str) -> Option<&Variant> {
        self.variants(key).iter().find(|v| v.id == id)
    }

    /// Variables used by any variant of `key`.
    pub fn vars_of(&self, key: &str) -> Vec<Var> {
        let mut v: Vec<Var> = self
            .variants(key)
            .iter()
            .flat_map(|x| x.template.vars())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Pick and render a variant (see module doc). `pick` is the seeded hash for this
    /// (user, key); `render` fills the variables.
    pub fn choose(
        &self,
        key: &str,
        style: &str,
        pick: u64,
        banned: &BannedWords,
        render: &dyn Fn(&Template) -> String,
    ) -> Option<ReplyOut> {
        let all = self.variants(key);
        let (preferred, others): (Vec<&Variant>, Vec<&Variant>) =
            all.iter().partition(|v| v.style == style);
        let (first, rest) = if preferred.is_empty() {
            (others, Vec::new())
        } else {
            (preferred, others)
        };
        if first.is_empty() {
            return None;
        }
        let start = (pick % first.len() as u64) as usize;
        let order = (0..first.len())
            .map(|i| first[(start + i) % first.len()])
            .chain(rest);
        for v in order {
            if let Some(out) = self.render_variant(key, v, banned, render) {
                return Some(out);
            }
        }
        None
    }

    /// Render one variant; None when the result contains a banned word.
    pub fn render_variant(
        &self,
        key: &str,
        v: &Variant,
        banned: &BannedWords,
        render: &dyn Fn(&Template) -> String,
    ) -> Option<ReplyOut> {
        let text = render(&v.template);
        if banned.find(&text).is_some() {
            return None;
        }
        Some(ReplyOut {
            text,
            variant_id: format!("{key}/{}", v.id),
            style: v.style.clone(),
            experiment: String::new(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::templates::Vars;

    /// The shipped intent catalog (config/operator/intents.yml).
    pub(crate) fn shipped_catalog() -> Catalog {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/operator/intents.yml");
        Catalog::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A minimal valid replies.yml (every intent of the shipped catalog, every required special).
    pub(crate) fn minimal_yaml() -> String {
        let mut s = String::from("styles: [playful, professional]\ngreetings:\n  - { from: \"05:00\", text: 早上好 }\n  - { from: \"18:00\", text: 晚上好 }\nintents:\n");
        for i in shipped_catalog().ids() {
            s.push_str(&format!(
                "  {i}:\n    - id: a\n      style: professional\n      text: \"{{nickname}}，关于{i}请看说明\"\n    - id: b\n      style: playful\n      text: \"{{nickname}}～{i}来啦\"\n"
            ));
        }
        s.push_str(
            "special:
  clarify:
    - { id: c1, style: professional, text: \"您是想问：{candidates}？\" }
  fallback:
    - { id: f1, style: professional, text: \"没太明白，能换个说法吗？\" }
  welcome:
    - { id: w1, style: professional, text: \"欢迎{nickname}加入{group_name}！\" }
  handoff:
    - { id: h1, style: professional, text: \"已转人工，预计等待{wait_minutes}分钟\" }
  off_hours:
    - { id: o1, style: professional, text: \"现在是下班时间，{open_time}后回复您\" }
  disclosure:
    - { id: d1, style: professional, text: \"我是自动助手\" }
  reactivation:
    - { id: r1, style: professional, text: \"{greeting}，今天有福利哦\" }
  countdown:
    - { id: k1, style: professional, text: \"距离{event_name}开始还有 {days_left} 天\" }
",
        );
        s
    }

    /// `yaml` as replies.yml, checked against the shipped catalog.
    pub(crate) fn parse(yaml: &str, banned: &BannedWords) -> Result<ReplyLibrary, FileError> {
        let file = YamlFile::parse(Path::new("replies.yml"), yaml)?;
        let entities = crate::policy::config::builtin_entity_types();
        ReplyLibrary::from_file(&file, &shipped_catalog(), banned, &entities)
    }

    fn banned() -> BannedWords {
        BannedWords::new(["微信"]).unwrap()
    }

    #[test]
    fn minimal_library_loads() {
        let lib = parse(&minimal_yaml(), &banned()).unwrap();
        assert_eq!(lib.variants("price").len(), 2);
        assert!(lib.has("countdown"));
        assert_eq!(lib.vars_of("handoff"), vec![Var::WaitMinutes]);
    }

    fn load_err(yaml: &str) -> String {
        parse(yaml, &banned()).unwrap_err().to_string()
    }

    fn line_of_text(yaml: &str, needle: &str) -> usize {
        yaml.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn errors_name_file_and_line() {
        let y = minimal_yaml().replace("关于refund请看说明", "关于refund请加微信");
        let e = load_err(&y);
        let line = line_of_text(&y, "请加微信");
        assert_eq!(
            e,
            format!("replies.yml:{line}: reply 'refund/a' contains the banned word '微信'")
        );

        let y = minimal_yaml().replace("没太明白", "没太明白{candidates}");
        let e = load_err(&y);
        let line = line_of_text(&y, "没太明白{candidates}");
        assert!(e.starts_with(&format!("replies.yml:{line}: in 'fallback': variable '{{candidates}}' is not available here")), "{e}");

        let y = minimal_yaml().replace("  refund:\n", "  refnd:\n");
        let e = load_err(&y);
        assert_eq!(
            e,
            format!(
                "replies.yml:{}: unknown intent 'refnd'",
                line_of_text(&y, "refnd:")
            )
        );

        let y = minimal_yaml().replace("关于price请看说明", "{nick}");
        assert!(load_err(&y).contains("unknown template variable '{nick}'"));

        let y = minimal_yaml().replace(
            "style: playful\n      text: \"{nickname}～stock",
            "style: cute\n      text: \"{nickname}～stock",
        );
        let e = load_err(&y);
        assert!(e.contains("unknown style 'cute'"), "{e}");

        let y = minimal_yaml().replace("  countdown:\n    - { id: k1, style: professional, text: \"距离{event_name}开始还有 {days_left} 天\" }\n", "");
        assert!(load_err(&y).ends_with("missing special reply 'countdown'"));

        // {nickname} cannot be used in a message to the whole group.
        let y = minimal_yaml().replace("{greeting}，今天有福利哦", "{nickname}，今天有福利哦");
        assert!(load_err(&y).contains("variable '{nickname}' is not available here"));

        let y = minimal_yaml().replace(
            "styles: [playful, professional]\n",
            "styles: [playful, professional]\nbogus: 1\n",
        );
        assert!(
            load_err(&y).starts_with("replies.yml:2: unknown field `bogus`"),
            "{}",
            load_err(&y)
        );
    }

    #[test]
    fn choice_is_deterministic_by_style_and_skips_banned_renderings() {
        let lib = parse(&minimal_yaml(), &banned()).unwrap();
        let b = banned();
        let vars = Vars {
            nickname: "小王".into(),
            ..Default::default()
        };
        let r = |t: &Template| t.render(&vars);
        let a = lib.choose("price", "playful", 12345, &b, &r).unwrap();
        assert_eq!(a.variant_id, "price/b");
        assert_eq!(a.style, "playful");
        assert_eq!(a.text, "小王～price来啦");
        let p = lib.choose("price", "professional", 12345, &b, &r).unwrap();
        assert_eq!(p.variant_id, "price/a");
        // Unknown style: any variant, picked by the hash.
        assert_eq!(
            lib.choose("price", "nope", 0, &b, &r).unwrap().variant_id,
            "price/a"
        );
        assert_eq!(
            lib.choose("price", "nope", 1, &b, &r).unwrap().variant_id,
            "price/b"
        );
        // A nickname carrying a banned word makes every variant unusable.
        let bad = Vars {
            nickname: "加微 信".into(),
            ..Default::default()
        };
        assert_eq!(
            lib.choose("price", "playful", 1, &b, &|t: &Template| t.render(&bad)),
            None
        );
        // Only one variant renders into a banned word: the other one is used.
        let y = minimal_yaml().replace("关于thanks请看说明", "关于thanks请看说明{group_name}");
        let lib = parse(&y, &b).unwrap();
        let vars = Vars {
            nickname: "小王".into(),
            group_name: "微信群".into(),
            ..Default::default()
        };
        let out = lib
            .choose("thanks", "professional", 0, &b, &|t: &Template| {
                t.render(&vars)
            })
            .unwrap();
        assert_eq!(out.variant_id, "thanks/b");
    }

    #[test]
    fn variables_section_sets_fallbacks_and_caps() {
        let y = format!(
            "{}variables:\n  nickname: {{ fallback: 朋友, max_chars: 8 }}\n  group_name: {{ fallback: 本群 }}\n",
            minimal_yaml()
        );
        let lib = parse(&y, &banned()).unwrap();
        assert_eq!(lib.variables.nickname_max_chars, 8);
        assert_eq!(lib.variables.group_name_max_chars, 30);
        // Issue #12.4: an empty chat name rendered "我是的智能助手"; now it is the fallback.
        let t = Template::parse("我是{group_name}的智能助手，{nickname}{festival}").unwrap();
        let vars = Vars {
            fallbacks: lib.variables.fallbacks.clone(),
            ..Default::default()
        };
        assert_eq!(t.render(&vars), "我是本群的智能助手，朋友");
        assert_eq!(
            lib.variables.nickname("\u{202E}@所有人 很长很长很长的名字"),
            "所有人 很长很\u{2026}"
        );
        // Without the section: the defaults, and empty variables stay empty.
        let lib = parse(&minimal_yaml(), &banned()).unwrap();
        assert_eq!(lib.variables.nickname_max_chars, 20);
        assert_eq!(
            t.render(&Vars {
                fallbacks: lib.variables.fallbacks.clone(),
                ..Default::default()
            }),
            "我是的智能助手，"
        );
    }

    #[test]
    fn bad_variables_entries_name_file_and_line() {
        let with = |entry: &str| format!("{}variables:\n  {entry}\n", minimal_yaml());
        let y = with("nick: { fallback: a }");
        let e = load_err(&y);
        assert!(
            e.starts_with(&format!(
                "replies.yml:{}: unknown template variable 'nick'",
                line_of_text(&y, "nick:")
            )),
            "{e}"
        );
        let e = load_err(&with("nickname: { max_chars: 0 }"));
        assert!(
            e.contains("max_chars must be between 1 and 200, got 0"),
            "{e}"
        );
        let e = load_err(&with("nickname: { max_chars: 201 }"));
        assert!(e.contains("got 201"), "{e}");
        let e = load_err(&with("greeting: { max_chars: 5 }"));
        assert!(
            e.contains("max_chars applies to nickname and group_name"),
            "{e}"
        );
        let e = load_err(&with("nickname: { fallback: \"@所有人\" }"));
        assert!(
            e.contains("fallback for 'nickname' must be plain visible text"),
            "{e}"
        );
        let e = load_err(&with("nickname: { fallback: \"\" }"));
        assert!(e.contains("must be plain visible text"), "{e}");
        let e = load_err(&with("nickname: { fallback: 加微信 }"));
        assert!(
            e.contains("fallback for 'nickname' contains the banned word '微信'"),
            "{e}"
        );
        let e = load_err(&with("nickname: { fallbak: x }"));
        assert!(e.contains("fallbak"), "{e}");
    }
}
