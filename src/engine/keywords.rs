//! The keyword layer: operator rules matched on every message, next to the model.
//!
//! Everything expensive happens once in `load`: the segmenter gets a user dictionary of all
//! domain words (synonyms, lookup elements, rule keywords), and the phrase, synonym and regex
//! automata are built. Per message `match_text` normalises the text once, segments it once and
//! runs each automaton once.
//!
//! Scores: each matched rule adds its weight to its intent (once per rule). A rule marked
//! `secondary` (greetings, thanks that often accompany a real question) only counts when no
//! other intent's primary rule matched. Confidence of intent i is `w_i / (Σw + NONE_MASS)`: a
//! distribution with some mass kept for "none of these", so one plain rule gives 0.67, two rules
//! for the same intent 0.8, and two intents matched equally share the evidence (0.4 each)
//! instead of both looking certain.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use jieba_rs::Jieba;
use regex::RegexSet;

use crate::data::yaml::YamlFile;
use crate::data::{self, Dataset, FileError};
use crate::types::{IntentScore, Source};

use super::catalog::Catalog;
use super::normalize::normalize_for_matching;
use super::rules::{parse_rules, Matcher, RuleSpec};
use super::synonyms::SynonymTable;

/// Evidence weight kept for "none of the intents" when turning weights into confidences.
pub const NONE_MASS: f32 = 0.5;

/// What the keyword layer found in one message.
#[derive(Debug, Clone, PartialEq)]
pub struct KeywordMatch {
    /// Per intent, 0..1, best first; only intents with evidence.
    pub scores: Vec<IntentScore>,
    /// Canonical keywords, phrases, lookup elements and regex names that matched; the best
    /// intent's first.
    pub matched_terms: Vec<String>,
    /// (intent, rule id) of the first matching `priority: always` rule in file order.
    pub always: Option<(String, String)>,
    /// Which kind of rule decided: `Regex` or `Keyword` (`Fallback` when nothing matched). When
    /// an always-rule matched, the kind of that rule.
    pub source: Source,
}

impl KeywordMatch {
    /// Nothing matched.
    pub fn none() -> Self {
        KeywordMatch {
            scores: Vec::new(),
            matched_terms: Vec::new(),
            always: None,
            source: Source::Fallback,
        }
    }

    pub fn best(&self) -> Option<&IntentScore> {
        self.scores.first()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty() && self.always.is_none()
    }
}

#[derive(Debug)]
struct Rule {
    id: String,
    intent: usize,
    weight: f32,
    always: bool,
    secondary: bool,
    regex: bool,
}

type RuleId = u32;
type TermId = u32;

/// The segmenters in use, with the words each was built from (dead ones are pruned).
static SEGMENTERS: parking_lot::Mutex<Vec<(Vec<String>, Weak<Jieba>)>> =
    parking_lot::Mutex::new(Vec::new());

/// jieba's default dictionary with `words` (sorted longest first, deduplicated) kept whole.
/// Building one takes ~60 MB at its peak, so a reload whose words did not change (the operator
/// edited replies or the playbook) shares the segmenter of the layer still in service instead
/// of building a second one next to it.
fn segmenter_with(words: &[&str]) -> Arc<Jieba> {
    let same = |built_from: &Vec<String>| {
        built_from
            .iter()
            .map(String::as_str)
            .eq(words.iter().copied())
    };
    {
        let mut live = SEGMENTERS.lock();
        live.retain(|(_, w)| w.strong_count() > 0);
        if let Some(shared) = live
            .iter()
            .find(|(b, _)| same(b))
            .and_then(|(_, w)| w.upgrade())
        {
            return shared;
        }
    }
    let mut jieba = Jieba::new();
    for w in words {
        // Known words can still be split when their dictionary frequency is low (有货 →
        // 有/货); `add_word` without a frequency raises it just enough to keep them whole.
        if !w.is_empty() && !w.contains(char::is_whitespace) && jieba.cut(w, false).len() != 1 {
            jieba.add_word(w, None, None);
        }
    }
    let jieba = Arc::new(jieba);
    SEGMENTERS.lock().push((
        words.iter().map(|w| w.to_string()).collect(),
        Arc::downgrade(&jieba),
    ));
    jieba
}

/// Compiled keyword rules. Cheap to share (`Arc`); `match_text` takes `&self`.
pub struct KeywordLayer {
    /// Shared with the previous layer when its words are the same (see [`segmenter_with`]).
    jieba: Arc<Jieba>,
    intents: Vec<String>,
    rules: Vec<Rule>,
    /// Canonical terms, and their ids (used while building).
    terms: Vec<String>,
    term_index: HashMap<String, TermId>,
    /// Normalised token (canonical or variant) → term.
    token_terms: HashMap<String, TermId>,
    /// Variants / canonicals the segmenter cannot keep in one token (`how much`, `加 v`): found
    /// in the text, leftmost-longest.
    text_synonyms: Option<AhoCorasick>,
    text_synonym_terms: Vec<TermId>,
    /// Term → keyword rules listing it.
    term_rules: Vec<Vec<RuleId>>,
    /// Phrases and lookup elements (all overlapping occurrences).
    phrases: Option<AhoCorasick>,
    phrase_texts: Vec<String>,
    phrase_rules: Vec<Vec<RuleId>>,
    regexes: Option<RegexSet>,
    /// Regex pattern → rules, with the name reported as matched term.
    regex_rules: Vec<Vec<(RuleId, String)>>,
}

impl std::fmt::Debug for KeywordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeywordLayer")
            .field("rules", &self.rules.len())
            .field("terms", &self.terms.len())
            .field("phrases", &self.phrase_texts.len())
            .field("regex_patterns", &self.regex_rules.len())
            .finish()
    }
}

/// Short name for configuration errors (same type as data errors: `file:line: problem`).
pub type ConfigError = FileError;

impl KeywordLayer {
    /// Loads rules from `rules_file`, with synonyms / regexes / lookups from the training-data
    /// folder (`training-data/nlu`) when given; rules are validated against `catalog`.
    pub fn load(
        rules_file: &Path,
        nlu_dir: Option<&Path>,
        catalog: &Catalog,
    ) -> Result<KeywordLayer, ConfigError> {
        let resources = match nlu_dir {
            Some(dir) => data::load_allow_empty(dir)?,
            None => Dataset::default(),
        };
        let file = YamlFile::load(rules_file)?;
        Self::build(&file, &resources, catalog)
    }

    /// Builds from rules text (`path` names the file in errors) and already-loaded resources.
    pub fn from_str(
        path: &Path,
        rules_text: &str,
        resources: &Dataset,
        catalog: &Catalog,
    ) -> Result<KeywordLayer, ConfigError> {
        Self::build(&YamlFile::parse(path, rules_text)?, resources, catalog)
    }

    fn build(
        file: &YamlFile,
        resources: &Dataset,
        catalog: &Catalog,
    ) -> Result<KeywordLayer, ConfigError> {
        let parsed = parse_rules(file, resources, catalog)?;

        let mut synonyms = SynonymTable::default();
        for s in &resources.synonyms {
            synonyms.add(&s.canonical, &s.variants, &s.origin)?;
        }
        for (canonical, variants, origin) in &parsed.synonyms {
            synonyms.add(canonical, variants, origin)?;
        }

        let mut words: Vec<&str> = Vec::new();
        words.extend(synonyms.canonicals());
        words.extend(synonyms.variants().map(|(v, _)| v));
        let lookup_elements: Vec<String> = resources
            .lookups
            .iter()
            .flat_map(|l| l.elements.iter())
            .map(|e| normalize_for_matching(e))
            .collect();
        words.extend(lookup_elements.iter().map(String::as_str));
        for rule in &parsed.rules {
            if let Matcher::Keywords(ks) = &rule.matcher {
                words.extend(ks.iter().map(|(k, _)| k.as_str()));
            }
        }
        // Longer words first, so a short word's suggested frequency does not split a longer one.
        words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
        words.dedup();
        let jieba = segmenter_with(&words);

        let mut layer = KeywordLayer {
            jieba,
            intents: catalog.ids().map(str::to_string).collect(),
            rules: Vec::with_capacity(parsed.rules.len()),
            terms: Vec::new(),
            term_index: HashMap::new(),
            token_terms: HashMap::new(),
            text_synonyms: None,
            text_synonym_terms: Vec::new(),
            term_rules: Vec::new(),
            phrases: None,
            phrase_texts: Vec::new(),
            phrase_rules: Vec::new(),
            regexes: None,
            regex_rules: Vec::new(),
        };

        // Synonym terms: tokens when the segmenter keeps them whole, text matches otherwise.
        let mut text_patterns: Vec<String> = Vec::new();
        let mut all_terms: Vec<(&str, &str)> = synonyms.variants().collect();
        all_terms.extend(synonyms.canonicals().map(|c| (c, c)));
        all_terms.sort_unstable();
        for (surface, canonical) in all_terms {
            let term = layer.intern(canonical);
            if layer.is_single_token(surface) {
                layer.token_terms.insert(surface.to_string(), term);
            } else {
                text_patterns.push(surface.to_string());
                layer.text_synonym_terms.push(term);
            }
        }

        let mut phrase_index: HashMap<String, usize> = HashMap::new();
        let mut regex_index: HashMap<String, usize> = HashMap::new();
        let mut regex_patterns: Vec<String> = Vec::new();
        for spec in &parsed.rules {
            let rule_id = layer.rules.len() as RuleId;
            layer.add_matcher(
                spec,
                rule_id,
                &synonyms,
                &mut phrase_index,
                &mut regex_index,
                &mut regex_patterns,
            )?;
            layer.rules.push(Rule {
                id: spec.id.clone(),
                intent: spec.intent,
                weight: spec.weight,
                always: spec.always,
                secondary: spec.secondary,
                regex: spec.matcher.is_regex(),
            });
        }

        let at_file = |msg: String| FileError::in_file(&file.path, msg);
        if !text_patterns.is_empty() {
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&text_patterns)
                .map_err(|e| at_file(format!("cannot build the synonym matcher: {e}")))?;
            layer.text_synonyms = Some(ac);
        }
        if !layer.phrase_texts.is_empty() {
            let ac = AhoCorasick::new(&layer.phrase_texts)
                .map_err(|e| at_file(format!("cannot build the phrase matcher: {e}")))?;
            layer.phrases = Some(ac);
        }
        if !regex_patterns.is_empty() {
            let set = RegexSet::new(&regex_patterns)
                .map_err(|e| at_file(data::regex_error_message("(all rule patterns)", &e)))?;
            layer.regexes = Some(set);
        }
        Ok(layer)
    }

    fn intern(&mut self, term: &str) -> TermId {
        if let Some(&id) = self.term_index.get(term) {
            return id;
        }
        let id = self.terms.len() as TermId;
        self.terms.push(term.to_string());
        self.term_index.insert(term.to_string(), id);
        self.term_rules.push(Vec::new());
        id
    }

    /// Records the keyword rules listing `term`.
    fn on_term<'a>(&'a self, term: TermId, hits: &mut Vec<(RuleId, &'a str)>) {
        for &r in &self.term_rules[term as usize] {
            hits.push((r, self.terms[term as usize].as_str()));
        }
    }

    fn is_single_token(&self, word: &str) -> bool {
        let tokens = self.jieba.cut(word, false);
        tokens.len() == 1 && tokens[0] == word
    }

    fn add_matcher(
        &mut self,
        spec: &RuleSpec,
        rule: RuleId,
        synonyms: &SynonymTable,
        phrase_index: &mut HashMap<String, usize>,
        regex_index: &mut HashMap<String, usize>,
        regex_patterns: &mut Vec<String>,
    ) -> Result<(), FileError> {
        match &spec.matcher {
            Matcher::Keywords(keywords) => {
                for (keyword, line) in keywords {
                    let canonical = synonyms.canonical(keyword).to_string();
                    // A keyword the segmenter splits could never be a token; say so instead of
                    // silently never matching. Terms found in the text (synonym variants with
                    // spaces) are fine.
                    let in_text = self
                        .text_synonym_terms
                        .iter()
                        .any(|&t| self.terms[t as usize] == canonical);
                    if !self.is_single_token(keyword) && !in_text {
                        return Err(FileError::at_line(
                            &spec.origin.file,
                            *line,
                            format!("keyword '{keyword}' is not a single word for the segmenter; list it under phrases instead"),
                        ));
                    }
                    let term = self.intern(&canonical);
                    if self.is_single_token(&canonical) {
                        self.token_terms.entry(canonical.clone()).or_insert(term);
                    }
                    if self.is_single_token(keyword) {
                        self.token_terms.entry(keyword.clone()).or_insert(term);
                    }
                    let rules = &mut self.term_rules[term as usize];
                    if !rules.contains(&rule) {
                        rules.push(rule);
                    }
                }
            }
            Matcher::Phrases(items)
            | Matcher::Lookup {
                elements: items, ..
            } => {
                for p in items {
                    let idx = *phrase_index.entry(p.clone()).or_insert_with(|| {
                        self.phrase_texts.push(p.clone());
                        self.phrase_rules.push(Vec::new());
                        self.phrase_texts.len() - 1
                    });
                    if !self.phrase_rules[idx].contains(&rule) {
                        self.phrase_rules[idx].push(rule);
                    }
                }
            }
            Matcher::Regex { name, patterns } => {
                for p in patterns {
                    let idx = *regex_index.entry(p.clone()).or_insert_with(|| {
                        regex_patterns.push(p.clone());
                        self.regex_rules.push(Vec::new());
                        regex_patterns.len() - 1
                    });
                    self.regex_rules[idx].push((rule, name.clone()));
                }
            }
        }
        Ok(())
    }

    /// Number of rules loaded.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The normalised tokens the rules see for `text` (synonyms not yet applied); for debugging
    /// rules and for tests.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let norm = normalize_for_matching(text);
        self.jieba
            .cut(&norm, false)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Matches one message against every rule.
    pub fn match_text(&self, text: &str) -> KeywordMatch {
        let norm = normalize_for_matching(text);
        // (rule, term) in discovery order; a rule's weight counts once however often it hits.
        let mut hits: Vec<(RuleId, &str)> = Vec::new();
        if let Some(ac) = &self.text_synonyms {
            for m in ac.find_iter(&norm) {
                self.on_term(self.text_synonym_terms[m.pattern().as_usize()], &mut hits);
            }
        }
        for token in self.jieba.cut(&norm, false) {
            if let Some(&term) = self.token_terms.get(token) {
                self.on_term(term, &mut hits);
            }
        }
        if let Some(ac) = &self.phrases {
            for m in ac.find_overlapping_iter(&norm) {
                let p = m.pattern().as_usize();
                for &r in &self.phrase_rules[p] {
                    hits.push((r, self.phrase_texts[p].as_str()));
                }
            }
        }
        if let Some(set) = &self.regexes {
            // Patterns see the message as sent (authors write `(?i)` and full-width variants
            // themselves); only surrounding whitespace is dropped.
            for p in set.matches(text.trim()).iter() {
                for (r, name) in &self.regex_rules[p] {
                    hits.push((*r, name.as_str()));
                }
            }
        }
        if hits.is_empty() {
            return KeywordMatch::none();
        }
        self.score(&hits)
    }

    fn score(&self, hits: &[(RuleId, &str)]) -> KeywordMatch {
        let n = self.intents.len();
        let rule = |r: RuleId| &self.rules[r as usize];
        let primary_intents: Vec<usize> = hits
            .iter()
            .map(|&(r, _)| rule(r))
            .filter(|r| !r.secondary)
            .map(|r| r.intent)
            .collect();
        let mut weight = vec![0f32; n];
        let mut counted = vec![false; self.rules.len()];
        // Per intent: the heaviest rule's kind, for `source`.
        let mut best_rule: Vec<Option<(f32, bool)>> = vec![None; n];
        for &(r, _) in hits {
            let rl = rule(r);
            if counted[r as usize]
                || (rl.secondary && primary_intents.iter().any(|&i| i != rl.intent))
            {
                continue;
            }
            counted[r as usize] = true;
            weight[rl.intent] += rl.weight;
            if best_rule[rl.intent].is_none_or(|(w, _)| rl.weight > w) {
                best_rule[rl.intent] = Some((rl.weight, rl.regex));
            }
        }
        let total: f32 = weight.iter().sum();
        let mut ranked: Vec<usize> = (0..n).filter(|&i| weight[i] > 0.0).collect();
        ranked.sort_by(|&a, &b| weight[b].total_cmp(&weight[a]).then(a.cmp(&b)));
        let scores: Vec<IntentScore> = ranked
            .iter()
            .map(|&i| IntentScore {
                intent: self.intents[i].clone(),
                confidence: weight[i] / (total + NONE_MASS),
            })
            .collect();

        let always = hits
            .iter()
            .map(|&(r, _)| r)
            .filter(|&r| rule(r).always)
            .min();
        let source_regex = match always {
            Some(r) => rule(r).regex,
            None => ranked
                .first()
                .and_then(|&i| best_rule[i])
                .is_some_and(|(_, regex)| regex),
        };
        let source = if always.is_none() && ranked.is_empty() {
            Source::Fallback
        } else if source_regex {
            Source::Regex
        } else {
            Source::Keyword
        };

        // Terms of better-ranked intents first, otherwise in discovery order.
        let rank_of = |intent: usize| {
            ranked
                .iter()
                .position(|&i| i == intent)
                .unwrap_or(usize::MAX)
        };
        let mut ordered: Vec<(usize, &str)> = hits
            .iter()
            .map(|&(r, t)| (rank_of(rule(r).intent), t))
            .collect();
        ordered.sort_by_key(|&(rank, _)| rank);
        let mut matched_terms: Vec<String> = Vec::with_capacity(ordered.len());
        for (_, t) in ordered {
            if !matched_terms.iter().any(|m| m == t) {
                matched_terms.push(t.to_string());
            }
        }
        KeywordMatch {
            scores,
            matched_terms,
            always: always.map(|r| (self.intents[rule(r).intent].clone(), rule(r).id.clone())),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Lookup, Origin, RegexDef, Synonym};

    fn catalog() -> Catalog {
        let ids = [
            "greeting",
            "refund",
            "ask_human",
            "spam_ads",
            "delivery_tracking",
            "payment_methods",
            "price",
            "ask_bot",
        ];
        let mut text = String::from("intents:\n");
        for id in ids {
            text.push_str(&format!("  - id: {id}\n    display_name: {id}\n"));
        }
        Catalog::parse(Path::new("intents.yml"), &text).unwrap()
    }

    fn origin(line: usize) -> Origin {
        Origin::new(Path::new("nlu/x.yml"), line)
    }

    /// Regression (issue 12 item 7): every operator reload built a second segmenter next to the
    /// one in service (~60 MB at the peak of the build); with the same words it is now shared,
    /// with other words built anew, and once no layer uses it, it is gone.
    #[test]
    fn layers_with_the_same_words_share_one_segmenter() {
        let words = ["共享分词甲", "共享分词乙"];
        let a = segmenter_with(&words);
        let b = segmenter_with(&words);
        assert!(Arc::ptr_eq(&a, &b));
        let c = segmenter_with(&["共享分词甲"]);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(a.cut("共享分词乙", false), ["共享分词乙"]);
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "not kept alive by the cache");
    }

    fn resources() -> Dataset {
        let syn = |c: &str, vs: &[&str], line| Synonym {
            canonical: c.into(),
            variants: vs.iter().map(|v| v.to_string()).collect(),
            origin: origin(line),
        };
        Dataset {
            synonyms: vec![
                syn("退款", &["退钱", "退货款", "把钱退了", "money back"], 1),
                syn("人工", &["人工客服", "转人工", "真人"], 10),
                syn("价格", &["多少钱", "how much"], 20),
            ],
            regexes: vec![RegexDef {
                name: "wechat_contact_ad".into(),
                patterns: vec![r"(?i)(?:加|\+)\s*(?:v|vx|微信)\s*[:：]?\s*[a-z0-9_]{5,}".into()],
                origin: origin(30),
            }],
            lookups: vec![Lookup {
                name: "payment_channel".into(),
                elements: vec!["支付宝".into(), "Apple Pay".into()],
                origin: origin(40),
            }],
            ..Dataset::default()
        }
    }

    const RULES: &str = r#"
rules:
  - id: human_explicit
    intent: ask_human
    phrases: [转人工, 人工客服]
    priority: always
  - id: human_kw
    intent: ask_human
    keywords: [人工]
  - id: refund_kw
    intent: refund
    keywords: [退款, 退货]
  - id: spam_contact
    intent: spam_ads
    regex_ref: wechat_contact_ad
    priority: always
  - id: spam_words
    intent: spam_ads
    phrases: [日赚, 兼职刷单]
    weight: 2
  - id: greeting_kw
    intent: greeting
    keywords: [你好, 在吗]
    secondary: true
  - id: tracking_no
    intent: delivery_tracking
    regex: '(?:^|[^0-9])SF[0-9]{10,13}'
  - id: pay_channels
    intent: payment_methods
    lookup: payment_channel
    weight: 0.5
  - id: price_kw
    intent: price
    keywords: [价格]
  - id: bot_kw
    intent: ask_bot
    keywords: [机器人]
"#;

    fn layer() -> KeywordLayer {
        rules_layer(RULES, &resources()).unwrap()
    }

    /// `rules` as rules.yml over `resources`, against the test catalog.
    fn rules_layer(rules: &str, resources: &Dataset) -> Result<KeywordLayer, ConfigError> {
        KeywordLayer::from_str(Path::new("rules.yml"), rules, resources, &catalog())
    }

    fn best(m: &KeywordMatch) -> (&str, f32) {
        let b = m.best().expect("a match");
        (b.intent.as_str(), b.confidence)
    }

    #[test]
    fn synonym_variants_normalise_to_the_canonical_keyword() {
        let l = layer();
        for text in [
            "我要退款",
            "能退钱吗",
            "快点把钱退了",
            "退货款什么时候到",
            "I want my MONEY  BACK",
        ] {
            let m = l.match_text(text);
            assert_eq!(best(&m).0, "refund", "{text}: {m:?}");
            assert_eq!(m.matched_terms, vec!["退款"], "{text}");
            assert_eq!(m.source, Source::Keyword);
            assert!(m.always.is_none());
        }
        // the rule keyword 退货 has no synonyms: matched as itself
        assert_eq!(l.match_text("我想退货").matched_terms, vec!["退货"]);
    }

    #[test]
    fn one_rule_gives_two_thirds_and_a_tie_shares() {
        let l = layer();
        let m = l.match_text("我要退款");
        assert!((best(&m).1 - 1.0 / 1.5).abs() < 1e-6, "{m:?}");
        let m = l.match_text("退款的价格");
        assert_eq!(m.scores.len(), 2);
        assert!((m.scores[0].confidence - 0.4).abs() < 1e-6, "{m:?}");
        assert!((m.scores[1].confidence - 0.4).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn always_rule_is_reported_with_its_id() {
        let l = layer();
        let m = l.match_text("帮我转人工，我要退款");
        assert_eq!(
            m.always,
            Some(("ask_human".to_string(), "human_explicit".to_string()))
        );
        assert_eq!(m.source, Source::Keyword);
        assert!(m.matched_terms.contains(&"转人工".to_string()), "{m:?}");
        assert!(m.matched_terms.contains(&"退款".to_string()), "{m:?}");
        // "真人" is only a synonym of 人工, not an always-phrase: evidence, no override
        let m = l.match_text("有真人吗");
        assert_eq!(m.always, None);
        assert_eq!(best(&m).0, "ask_human");
    }

    #[test]
    fn regex_rules_see_the_raw_text_and_set_source() {
        let l = layer();
        let m = l.match_text("兼职刷单 日赚500 加V: abc12345");
        assert_eq!(
            m.always,
            Some(("spam_ads".to_string(), "spam_contact".to_string()))
        );
        assert_eq!(m.source, Source::Regex);
        assert_eq!(best(&m).0, "spam_ads");
        assert!(m.matched_terms.contains(&"wechat_contact_ad".to_string()));
        assert!(m.matched_terms.contains(&"日赚".to_string()));
        let m = l.match_text("单号SF1234567890到哪了");
        assert_eq!(best(&m).0, "delivery_tracking");
        assert_eq!(m.source, Source::Regex);
        assert_eq!(m.matched_terms, vec!["tracking_no"]);
    }

    #[test]
    fn full_width_and_case_are_folded_for_phrases() {
        let l = layer();
        let m = l.match_text("ＨＯＷ ＭＵＣＨ");
        assert_eq!(best(&m).0, "price", "{m:?}");
        let m = l.match_text("可以用apple  pay吗");
        assert_eq!(best(&m).0, "payment_methods", "{m:?}");
        assert!((best(&m).1 - 0.5).abs() < 1e-6);
        assert_eq!(m.matched_terms, vec!["apple pay"]);
    }

    #[test]
    fn secondary_rules_yield_to_other_intents() {
        let l = layer();
        let m = l.match_text("你好");
        assert_eq!(best(&m).0, "greeting");
        let m = l.match_text("你好，多少钱");
        assert_eq!(m.scores.len(), 1, "{m:?}");
        assert_eq!(best(&m).0, "price");
        assert!((best(&m).1 - 1.0 / 1.5).abs() < 1e-6);
        // the greeting word is still reported as matched
        assert!(m.matched_terms.contains(&"你好".to_string()));
        assert_eq!(m.matched_terms[0], "价格");
    }

    #[test]
    fn no_match_is_empty_fallback() {
        let m = layer().match_text("今天天气不错");
        assert_eq!(m, KeywordMatch::none());
        assert!(m.is_empty());
        assert_eq!(layer().match_text(""), KeywordMatch::none());
    }

    #[test]
    fn compound_words_do_not_trigger_their_parts() {
        let l = layer();
        // 人工智能 is one word for the segmenter: no 人工 keyword hit
        let m = l.match_text("人工智能真厉害");
        assert!(m.scores.iter().all(|s| s.intent != "ask_human"), "{m:?}");
    }

    #[test]
    fn tokens_include_user_dictionary_words() {
        let l = layer();
        assert!(
            l.tokens("快点把钱退了").contains(&"把钱退了".to_string()),
            "{:?}",
            l.tokens("快点把钱退了")
        );
    }

    #[test]
    fn rules_synonyms_section_and_keyword_variants() {
        let rules = "synonyms:\n  发票: [开票, 发漂]\nrules:\n  - id: inv\n    intent: refund\n    keywords: [发漂]\n";
        let l = rules_layer(rules, &Dataset::default()).unwrap();
        // the keyword is a variant: it is mapped to its canonical, so every variant matches
        for text in ["能开票吗", "发票怎么开", "发漂呢"] {
            let m = l.match_text(text);
            assert_eq!(m.matched_terms, vec!["发票"], "{text}: {m:?}");
        }
    }

    #[test]
    fn multi_word_keyword_is_an_error_pointing_at_it() {
        let rules = "rules:\n  - id: a\n    intent: refund\n    keywords:\n      - 退款\n      - money back\n";
        let e = rules_layer(rules, &Dataset::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rules.yml:6: keyword 'money back' is not a single word for the segmenter; list it under phrases instead"
        );
        // ...but fine when it is a known multi-word synonym (found in the text)
        let rules = "synonyms:\n  退款: [money back]\nrules:\n  - id: a\n    intent: refund\n    keywords: [money back]\n";
        let l = rules_layer(rules, &Dataset::default()).unwrap();
        assert_eq!(best(&l.match_text("money back please")).0, "refund");
    }

    #[test]
    fn synonym_conflict_between_rules_and_training_data_is_an_error() {
        let rules = "synonyms:\n  退货: [退钱]\nrules: []\n";
        let e = rules_layer(rules, &resources()).unwrap_err();
        assert_eq!(e.to_string(), "rules.yml:2: variant '退钱' of '退货' already belongs to synonym '退款' (at nlu/x.yml:1)");
    }

    #[test]
    fn load_reads_files_and_nlu_folder() {
        let dir = tempfile::tempdir().unwrap();
        let nlu = dir.path().join("nlu");
        std::fs::create_dir_all(&nlu).unwrap();
        std::fs::write(
            nlu.join("synonyms.yml"),
            "version: \"3.1\"\nnlu:\n- synonym: 退款\n  examples: |\n    - 退钱\n",
        )
        .unwrap();
        std::fs::write(
            nlu.join("regex.yml"),
            "nlu:\n- regex: order_number\n  examples: |\n    - '[0-9]{16}'\n",
        )
        .unwrap();
        std::fs::write(
            nlu.join("refund.yml"),
            "nlu:\n- intent: refund\n  examples: |\n    - 我要退款\n",
        )
        .unwrap();
        let rules = dir.path().join("rules.yml");
        std::fs::write(&rules, "rules:\n  - id: r\n    intent: refund\n    keywords: [退款]\n  - id: o\n    intent: delivery_tracking\n    regex_ref: order_number\n    weight: 0.5\n").unwrap();
        let l = KeywordLayer::load(&rules, Some(&nlu), &catalog()).unwrap();
        assert_eq!(l.rule_count(), 2);
        assert_eq!(best(&l.match_text("退钱")).0, "refund");
        let e = KeywordLayer::load(&rules, None, &catalog()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:7: unknown regex 'order_number' (training-data regexes: none loaded)",
                rules.display()
            )
        );
        let e = KeywordLayer::load(&dir.path().join("missing.yml"), None, &catalog()).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("missing.yml: no such file or directory"),
            "{e}"
        );
    }

    #[test]
    fn layer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<KeywordLayer>();
    }
}
