//! Lookup tables and synonyms from the Rasa-style training data (`lookup:` and `synonym:`
//! entries, `training-data/nlu/`).
//!
//! Every element of a lookup table is an entity of the table's type (`lookup: product` →
//! `product`), canonical value the element itself. A `synonym` whose canonical term is an
//! element of a table adds its variants to that table: `保温壶` is a `product` with canonical
//! value `保温杯` (source `synonym`). Matching is verbatim with ASCII case ignored, longest term
//! first; an ASCII term only matches as a whole word (`VIP` is not found inside `VIPS`).

use std::collections::{HashMap, HashSet};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::{char_after, char_before, rank, Candidate};
use crate::data::Dataset;
use crate::types::EntitySource;

#[derive(Debug, Default)]
pub struct LookupTable {
    matcher: Option<AhoCorasick>,
    /// By pattern id: (entity type, canonical, source).
    terms: Vec<(String, String, EntitySource)>,
    names: Vec<String>,
    /// Lower-cased synonym variant → canonical term (for values other extractors found).
    synonyms: HashMap<String, String>,
}

impl LookupTable {
    pub fn from_dataset(nlu: &Dataset) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        let mut terms = Vec::new();
        let mut seen = HashSet::new();
        let mut table_of: HashMap<&str, &str> = HashMap::new();
        let mut names = Vec::new();
        for l in &nlu.lookups {
            if !names.contains(&l.name) {
                names.push(l.name.clone());
            }
            for e in &l.elements {
                table_of.entry(e.as_str()).or_insert(l.name.as_str());
                // The first table to list a term keeps it.
                if seen.insert(e.to_lowercase()) {
                    patterns.push(e.clone());
                    terms.push((l.name.clone(), e.clone(), EntitySource::Lookup));
                }
            }
        }
        let mut synonyms = HashMap::new();
        for s in &nlu.synonyms {
            for v in &s.variants {
                synonyms
                    .entry(v.to_lowercase())
                    .or_insert_with(|| s.canonical.clone());
            }
            let Some(table) = table_of.get(s.canonical.as_str()) else {
                continue;
            };
            for v in &s.variants {
                if seen.insert(v.to_lowercase()) {
                    patterns.push(v.clone());
                    terms.push((
                        table.to_string(),
                        s.canonical.clone(),
                        EntitySource::Synonym,
                    ));
                }
            }
        }
        let matcher = (!patterns.is_empty()).then(|| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .ascii_case_insensitive(true)
                .build(&patterns)
                .expect("lookup terms build an automaton")
        });
        Self {
            matcher,
            terms,
            names,
            synonyms,
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The canonical term of a synonym variant (ASCII case ignored).
    pub fn synonym_of(&self, value: &str) -> Option<&str> {
        self.synonyms.get(&value.to_lowercase()).map(String::as_str)
    }

    pub(super) fn find(&self, text: &str, out: &mut Vec<Candidate>) {
        let Some(ac) = &self.matcher else {
            return;
        };
        for m in ac.find_iter(text) {
            let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
            let term = &text[m.start()..m.end()];
            let ascii_start = word(term.chars().next());
            let ascii_end = word(term.chars().next_back());
            if (ascii_start && word(char_before(text, m.start())))
                || (ascii_end && word(char_after(text, m.end())))
            {
                continue;
            }
            let (entity, canonical, source) = &self.terms[m.pattern().as_usize()];
            out.push(Candidate {
                entity: entity.clone(),
                start: m.start(),
                end: m.end(),
                canonical: canonical.clone(),
                source: *source,
                rank: rank::LOOKUP,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Lookup, Origin, Synonym};
    use std::path::Path;

    pub(crate) fn table() -> LookupTable {
        let o = Origin::new(Path::new("nlu.yml"), 1);
        LookupTable::from_dataset(&Dataset {
            lookups: vec![
                Lookup {
                    name: "product".into(),
                    elements: vec![
                        "保温杯".into(),
                        "蓝牙耳机".into(),
                        "耳机".into(),
                        "AirPods".into(),
                    ],
                    origin: o.clone(),
                },
                Lookup {
                    name: "city".into(),
                    elements: vec!["北京".into(), "上海".into()],
                    origin: o.clone(),
                },
            ],
            synonyms: vec![
                Synonym {
                    canonical: "保温杯".into(),
                    variants: vec!["保温壶".into(), "水杯".into()],
                    origin: o.clone(),
                },
                Synonym {
                    canonical: "退款".into(),
                    variants: vec!["退钱".into()],
                    origin: o,
                },
            ],
            ..Dataset::default()
        })
    }

    fn found(text: &str) -> Vec<(String, String, String, EntitySource)> {
        let mut out = Vec::new();
        table().find(text, &mut out);
        out.into_iter()
            .map(|c| {
                (
                    c.entity,
                    text[c.start..c.end].to_string(),
                    c.canonical,
                    c.source,
                )
            })
            .collect()
    }

    #[test]
    fn elements_and_synonym_variants() {
        assert_eq!(
            found("北京能买保温壶吗"),
            vec![
                (
                    "city".into(),
                    "北京".into(),
                    "北京".into(),
                    EntitySource::Lookup
                ),
                (
                    "product".into(),
                    "保温壶".into(),
                    "保温杯".into(),
                    EntitySource::Synonym
                ),
            ]
        );
        // The longest term wins: 蓝牙耳机, not 耳机.
        assert_eq!(
            found("蓝牙耳机坏了"),
            vec![(
                "product".into(),
                "蓝牙耳机".into(),
                "蓝牙耳机".into(),
                EntitySource::Lookup
            )]
        );
        // A synonym of something that is not in a table is no entity here.
        assert_eq!(found("退钱"), vec![]);
        assert_eq!(table().synonym_of("退钱"), Some("退款"));
    }

    #[test]
    fn ascii_terms_match_whole_words_ignoring_case() {
        assert_eq!(found("我的airpods").len(), 1);
        assert_eq!(found("myairpodsx").len(), 0);
        assert_eq!(found("AIRPODS没声音")[0].2, "AirPods");
    }

    #[test]
    fn names_in_file_order() {
        assert_eq!(table().names().collect::<Vec<_>>(), vec!["product", "city"]);
    }
}
