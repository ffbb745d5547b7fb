//! `config/operator/rules.yml`: the keyword layer's rules, validated against the intent catalog
//! and the training-data resources (regexes, lookups). The file's header comment documents every
//! key; this module turns it into `RuleSpec`s with the line of everything it might complain
//! about later (the keyword layer checks keywords against the segmenter).

use std::collections::HashMap;
use std::path::Path;

use marked_yaml::Node;

use crate::data::yaml::{
    as_bool, as_number, as_text, is_null, scalar_text, type_name, Seg, YamlFile,
};
use crate::data::{regex_error_message, Dataset, FileError, Origin};

use super::catalog::Catalog;
use super::normalize::normalize_for_matching;

/// Largest accepted rule weight: weights are relative evidence, and one rule drowning all others
/// is better expressed with `priority: always`.
pub const MAX_WEIGHT: f32 = 10.0;

#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// Normalised terms with their lines; matched on the synonym-normalised token stream.
    Keywords(Vec<(String, usize)>),
    /// Normalised substrings.
    Phrases(Vec<String>),
    /// Patterns matched on the message as sent; `name` is reported as the matched term.
    Regex { name: String, patterns: Vec<String> },
    /// Normalised lookup elements matched as substrings; the element is the matched term.
    Lookup { name: String, elements: Vec<String> },
}

impl Matcher {
    pub fn is_regex(&self) -> bool {
        matches!(self, Matcher::Regex { .. })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub id: String,
    /// Index into the catalog's intents.
    pub intent: usize,
    pub matcher: Matcher,
    pub weight: f32,
    /// `priority: always`: overrides the model.
    pub always: bool,
    /// Evidence that only counts when no other intent's (non-secondary) rule matched.
    pub secondary: bool,
    pub origin: Origin,
}

/// Synonyms declared in rules.yml: (canonical, variants, where).
pub type RuleSynonym = (String, Vec<String>, Origin);

#[derive(Debug, Clone, Default)]
pub struct RulesFile {
    pub rules: Vec<RuleSpec>,
    pub synonyms: Vec<RuleSynonym>,
}

const RULE_KEYS: &str =
    "id, intent, keywords, phrases, regex, regex_ref, lookup, weight, priority, secondary, note";
const MATCHERS: [&str; 5] = ["keywords", "phrases", "regex", "regex_ref", "lookup"];

pub fn parse_rules(
    file: &YamlFile,
    resources: &Dataset,
    catalog: &Catalog,
) -> Result<RulesFile, FileError> {
    let Some(Node::Mapping(top)) = &file.root else {
        return Err(file.error(&[], "expected a mapping with \"rules\", found nothing"));
    };
    let mut out = RulesFile::default();
    let mut rules_value = None;
    for (k, v) in top.iter() {
        let key = k.as_str();
        match key {
            "version" => {}
            "rules" => rules_value = Some(v),
            "synonyms" => out.synonyms = parse_synonyms(file, v)?,
            _ => {
                return Err(file.error(
                    &[Seg::Key(key)],
                    format!("unknown key '{key}' (expected rules, synonyms)"),
                ))
            }
        }
    }
    let Some(rules_value) = rules_value else {
        return Err(file.error(&[], "missing key \"rules\""));
    };
    let items = match rules_value {
        Node::Sequence(items) => items.as_slice(),
        v if is_null(v) => &[],
        other => {
            return Err(file.error(
                &[Seg::Key("rules")],
                format!("\"rules\" must be a list, found {}", type_name(other)),
            ))
        }
    };
    let regexes: HashMap<&str, &[String]> = resources
        .regexes
        .iter()
        .map(|r| (r.name.as_str(), r.patterns.as_slice()))
        .collect();
    let lookups: HashMap<&str, &[String]> = resources
        .lookups
        .iter()
        .map(|l| (l.name.as_str(), l.elements.as_slice()))
        .collect();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let rule = parse_rule(file, i, item, catalog, &regexes, &lookups)?;
        if let Some(first) = ids.insert(rule.id.clone(), rule.origin.line) {
            let at = [Seg::Key("rules"), Seg::Index(i), Seg::Key("id")];
            return Err(file.error(
                &at,
                format!(
                    "duplicate rule id '{}' (first defined at line {first})",
                    rule.id
                ),
            ));
        }
        out.rules.push(rule);
    }
    Ok(out)
}

fn parse_synonyms(file: &YamlFile, v: &Node) -> Result<Vec<RuleSynonym>, FileError> {
    let at = [Seg::Key("synonyms")];
    let map = match v {
        v if is_null(v) => return Ok(Vec::new()),
        Node::Mapping(m) => m,
        other => {
            return Err(file.error(
                &at,
                format!(
                    "\"synonyms\" must map a canonical term to a list of variants, found {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut out = Vec::new();
    for (k, vs) in map.iter() {
        let canonical = k.as_str().to_string();
        let here = [Seg::Key("synonyms"), Seg::Key(&canonical)];
        let origin = Origin::new(&file.path, file.line(&here));
        let variants = string_list(file, &here, vs, "variants")?;
        out.push((
            canonical,
            variants.into_iter().map(|(s, _)| s).collect(),
            origin,
        ));
    }
    Ok(out)
}

/// A non-empty list of non-empty texts, each with its line (the list's line for flow lists).
fn string_list(
    file: &YamlFile,
    at: &[Seg<'_>],
    v: &Node,
    what: &str,
) -> Result<Vec<(String, usize)>, FileError> {
    let Node::Sequence(items) = v else {
        return Err(file.error(at, format!("{what} must be a list, found {}", type_name(v))));
    };
    if items.is_empty() {
        return Err(file.error(at, format!("{what} list is empty")));
    }
    let mut out = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let mut path = at.to_vec();
        path.push(Seg::Index(j));
        let text = scalar_text(item)
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if text.is_empty() {
            return Err(file.error(
                &path,
                format!("{what} must be non-empty texts, found {}", type_name(item)),
            ));
        }
        out.push((text, file.line(&path)));
    }
    Ok(out)
}

fn parse_rule(
    file: &YamlFile,
    i: usize,
    item: &Node,
    catalog: &Catalog,
    regexes: &HashMap<&str, &[String]>,
    lookups: &HashMap<&str, &[String]>,
) -> Result<RuleSpec, FileError> {
    let at = [Seg::Key("rules"), Seg::Index(i)];
    let Node::Mapping(m) = item else {
        return Err(file.error(
            &at,
            format!(
                "rule must be a mapping ({RULE_KEYS}), found {}",
                type_name(item)
            ),
        ));
    };
    for (k, _) in m.iter() {
        let key = k.as_str();
        if !RULE_KEYS.split(", ").any(|known| known == key) {
            return Err(file.error(
                &[at[0], at[1], Seg::Key(key)],
                format!("unknown key '{key}' (expected {RULE_KEYS})"),
            ));
        }
    }
    let get = |key: &str| m.get_node(key);
    let text_of = |key: &str| get(key).and_then(scalar_text).map(|s| s.trim().to_string());
    let key_at = |key: &'static str| [at[0], at[1], Seg::Key(key)];

    let id = text_of("id").unwrap_or_default();
    if id.is_empty() {
        return Err(file.error(&at, "rule is missing id"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(file.error(
            &key_at("id"),
            format!("rule id '{id}' must be ASCII letters, digits, _ - or ."),
        ));
    }
    let intent_name = text_of("intent").unwrap_or_default();
    if intent_name.is_empty() {
        return Err(file.error(&at, format!("rule '{id}' is missing intent")));
    }
    let Some(intent) = catalog.index_of(&intent_name) else {
        return Err(file.error(
            &key_at("intent"),
            format!(
                "unknown intent '{intent_name}' (not in {})",
                catalog.path().display()
            ),
        ));
    };

    let present: Vec<(&str, &Node)> = MATCHERS
        .iter()
        .filter_map(|k| get(k).map(|v| (*k, v)))
        .collect();
    let (kind, value) = match present.as_slice() {
        [one] => *one,
        [] => {
            return Err(file.error(
                &at,
                format!("rule '{id}' needs one of keywords, phrases, regex, regex_ref, lookup"),
            ))
        }
        [(a, _), (b, _), ..] => {
            return Err(file.error(
                &at,
                format!("rule '{id}' has both {a} and {b}; use one matcher per rule"),
            ));
        }
    };
    let kind_at = match kind {
        "keywords" => key_at("keywords"),
        "phrases" => key_at("phrases"),
        "regex" => key_at("regex"),
        "regex_ref" => key_at("regex_ref"),
        _ => key_at("lookup"),
    };
    let matcher = match kind {
        "keywords" | "phrases" => {
            let mut items = Vec::new();
            for (text, line) in string_list(file, &kind_at, value, kind)? {
                let norm = normalize_for_matching(&text);
                items.push((norm, line));
            }
            if kind == "keywords" {
                Matcher::Keywords(items)
            } else {
                Matcher::Phrases(items.into_iter().map(|(s, _)| s).collect())
            }
        }
        "regex" => {
            let pattern = match as_text(value) {
                Some(s) if !s.trim().is_empty() => s.to_string(),
                _ => {
                    return Err(file.error(
                        &kind_at,
                        format!("regex must be a pattern text, found {}", type_name(value)),
                    ))
                }
            };
            if let Err(e) = regex::Regex::new(&pattern) {
                return Err(file.error(&kind_at, regex_error_message(&pattern, &e)));
            }
            Matcher::Regex {
                name: id.clone(),
                patterns: vec![pattern],
            }
        }
        "regex_ref" => {
            let (name, patterns) = resource(file, &kind_at, value, regexes, "regex", "regexes")?;
            Matcher::Regex {
                name,
                patterns: patterns.to_vec(),
            }
        }
        _ => {
            let (name, elements) = resource(file, &kind_at, value, lookups, "lookup", "lookups")?;
            let elements = elements
                .iter()
                .map(|e| normalize_for_matching(e))
                .filter(|e| !e.is_empty())
                .collect();
            Matcher::Lookup { name, elements }
        }
    };

    let weight = match get("weight").map(|v| (v, as_number(v))) {
        None => 1.0,
        Some((_, Some(n))) => n as f32,
        Some((other, None)) => {
            return Err(file.error(
                &key_at("weight"),
                format!("weight must be a number, found {}", type_name(other)),
            ))
        }
    };
    if !(weight > 0.0 && weight <= MAX_WEIGHT) {
        return Err(file.error(
            &key_at("weight"),
            format!("weight must be above 0 and at most {MAX_WEIGHT}, found {weight}"),
        ));
    }
    let always = match text_of("priority").as_deref() {
        None | Some("normal") => false,
        Some("always") => true,
        Some(other) => {
            return Err(file.error(
                &key_at("priority"),
                format!("priority must be always or normal, found '{other}'"),
            ))
        }
    };
    let secondary = match get("secondary").map(|v| (v, as_bool(v))) {
        None => false,
        Some((_, Some(b))) => b,
        Some((other, None)) => {
            return Err(file.error(
                &key_at("secondary"),
                format!(
                    "secondary must be true or false, found {}",
                    type_name(other)
                ),
            ))
        }
    };
    if always && secondary {
        return Err(file.error(
            &key_at("secondary"),
            format!("rule '{id}' cannot be both priority: always and secondary"),
        ));
    }
    Ok(RuleSpec {
        id,
        intent,
        matcher,
        weight,
        always,
        secondary,
        origin: Origin::new(&file.path, file.line(&at)),
    })
}

/// The training-data regex or lookup a rule names, with its entries.
fn resource<'r>(
    file: &YamlFile,
    at: &[Seg<'_>],
    value: &Node,
    known: &HashMap<&str, &'r [String]>,
    what: &str,
    plural: &str,
) -> Result<(String, &'r [String]), FileError> {
    let name = scalar_text(value)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match known.get(name.as_str()) {
        Some(entries) => Ok((name, entries)),
        None => {
            let mut names: Vec<&str> = known.keys().copied().collect();
            names.sort_unstable();
            let names = if names.is_empty() {
                "none loaded".to_string()
            } else {
                names.join(", ")
            };
            Err(file.error(
                at,
                format!("unknown {what} '{name}' (training-data {plural}: {names})"),
            ))
        }
    }
}

/// Parses rules text; `path` only names the file in errors.
pub fn parse_rules_str(
    path: &Path,
    text: &str,
    resources: &Dataset,
    catalog: &Catalog,
) -> Result<RulesFile, FileError> {
    parse_rules(&YamlFile::parse(path, text)?, resources, catalog)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Lookup, RegexDef};

    pub(crate) fn catalog() -> Catalog {
        Catalog::parse(
            Path::new("intents.yml"),
            "intents:\n  - id: refund\n    display_name: 退款\n  - id: ask_human\n    display_name: 转人工\n  - id: spam_ads\n    display_name: 广告\n",
        )
        .unwrap()
    }

    fn resources() -> Dataset {
        Dataset {
            regexes: vec![RegexDef {
                name: "wechat".into(),
                patterns: vec![r"加\s*v".into()],
                origin: Origin::new(Path::new("regex.yml"), 2),
            }],
            lookups: vec![Lookup {
                name: "pay".into(),
                elements: vec!["支付宝".into(), "ＶＩＳＡ".into()],
                origin: Origin::new(Path::new("lookup.yml"), 2),
            }],
            ..Dataset::default()
        }
    }

    fn parse(text: &str) -> Result<RulesFile, FileError> {
        parse_rules_str(Path::new("rules.yml"), text, &resources(), &catalog())
    }

    #[test]
    fn parses_every_matcher_kind() {
        let f = parse(
            r#"
synonyms:
  退款: [退钱, 退货款]
rules:
  - id: refund_kw
    intent: refund
    keywords: [退款, Refund]
    weight: 1.5
  - id: human
    intent: ask_human
    phrases:
      - 转人工
    priority: always
  - id: spam_re
    intent: spam_ads
    regex: '日赚\d+'
  - id: spam_ref
    intent: spam_ads
    regex_ref: wechat
    secondary: true
    note: free text for operators
  - id: pay
    intent: refund
    lookup: pay
"#,
        )
        .unwrap();
        assert_eq!(f.synonyms.len(), 1);
        assert_eq!(f.synonyms[0].0, "退款");
        assert_eq!(f.synonyms[0].1, vec!["退钱", "退货款"]);
        assert_eq!(f.synonyms[0].2.line, 3);
        let r = &f.rules;
        assert_eq!(r.len(), 5);
        assert_eq!(
            r[0].matcher,
            Matcher::Keywords(vec![("退款".into(), 7), ("refund".into(), 7)])
        );
        assert_eq!(r[0].weight, 1.5);
        assert_eq!(r[0].intent, 0);
        assert_eq!(r[0].origin.line, 5);
        assert!(r[1].always);
        assert_eq!(r[1].matcher, Matcher::Phrases(vec!["转人工".into()]));
        assert_eq!(
            r[2].matcher,
            Matcher::Regex {
                name: "spam_re".into(),
                patterns: vec![r"日赚\d+".into()]
            }
        );
        assert_eq!(
            r[3].matcher,
            Matcher::Regex {
                name: "wechat".into(),
                patterns: vec![r"加\s*v".into()]
            }
        );
        assert!(r[3].secondary);
        assert_eq!(
            r[4].matcher,
            Matcher::Lookup {
                name: "pay".into(),
                elements: vec!["支付宝".into(), "visa".into()]
            }
        );
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let cases = [
            ("rules:\n  - id: a\n    intent: refnd\n    keywords: [退款]\n", "rules.yml:3: unknown intent 'refnd' (not in intents.yml)"),
            ("rules:\n  - id: a\n    intent: refund\n    regex: '退(款'\n", "rules.yml:4: invalid regex '退(款': unclosed group"),
            ("rules:\n  - id: a\n    intent: refund\n    keywords: []\n", "rules.yml:4: keywords list is empty"),
            ("rules:\n  - id: a\n    intent: refund\n    keywords:\n      - 退款\n      - ''\n", "rules.yml:6: keywords must be non-empty texts"),
            ("rules:\n  - id: a\n    intent: refund\n", "rules.yml:2: rule 'a' needs one of keywords, phrases, regex, regex_ref, lookup"),
            ("rules:\n  - id: a\n    intent: refund\n    keywords: [x]\n    phrases: [y]\n", "rules.yml:2: rule 'a' has both keywords and phrases; use one matcher per rule"),
            ("rules:\n  - id: a\n    intent: refund\n    keyword: [x]\n", "rules.yml:4: unknown key 'keyword' (expected id, intent,"),
            ("rules:\n  - id: a\n    intent: refund\n    regex_ref: phone\n", "rules.yml:4: unknown regex 'phone' (training-data regexes: wechat)"),
            ("rules:\n  - id: a\n    intent: refund\n    lookup: city\n", "rules.yml:4: unknown lookup 'city' (training-data lookups: pay)"),
            ("rules:\n  - id: a\n    intent: refund\n    keywords: [x]\n    weight: 0\n", "rules.yml:5: weight must be above 0 and at most 10, found 0"),
            ("rules:\n  - id: a\n    intent: refund\n    keywords: [x]\n    weight: high\n", "rules.yml:5: weight must be a number, found a string"),
            ("rules:\n  - id: a\n    intent: refund\n    keywords: [x]\n    priority: urgent\n", "rules.yml:5: priority must be always or normal, found 'urgent'"),
            ("rules:\n  - id: a\n    intent: refund\n    keywords: [x]\n    priority: always\n    secondary: true\n", "rules.yml:6: rule 'a' cannot be both priority: always and secondary"),
            ("rules:\n  - id: a\n    intent: refund\n    keywords: [x]\n  - id: a\n    intent: refund\n    keywords: [y]\n", "rules.yml:5: duplicate rule id 'a' (first defined at line 2)"),
            ("rules:\n  - intent: refund\n    keywords: [x]\n", "rules.yml:2: rule is missing id"),
            ("rules:\n  - id: a b\n    intent: refund\n    keywords: [x]\n", "rules.yml:2: rule id 'a b' must be ASCII letters"),
            ("rules:\n  - id: a\n    keywords: [x]\n", "rules.yml:2: rule 'a' is missing intent"),
            ("rulez: []\n", "rules.yml:1: unknown key 'rulez' (expected rules, synonyms)"),
            ("synonyms: {}\n", "rules.yml:1: missing key \"rules\""),
            ("rules:\n  - id: a\n    intent: refund\n    keywords: 退款\n", "rules.yml:4: keywords must be a list, found a string"),
            ("synonyms:\n  退款: 退钱\nrules: []\n", "rules.yml:2: variants must be a list, found a string"),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_err().to_string();
            assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
        }
    }

    #[test]
    fn regex_ref_without_training_data_says_none_loaded() {
        let e = parse_rules_str(
            Path::new("rules.yml"),
            "rules:\n  - id: a\n    intent: refund\n    regex_ref: wechat\n",
            &Dataset::default(),
            &catalog(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "rules.yml:4: unknown regex 'wechat' (training-data regexes: none loaded)"
        );
    }
}
