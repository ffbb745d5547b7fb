//! The synonym dictionary: colloquial variants and typos → one canonical term (退钱/退货款 → 退款),
//! so rules only list canonical terms. Entries come from training-data `- synonym:` entries and
//! the optional `synonyms:` section of rules.yml; all terms are normalised like messages are.

use std::collections::HashMap;

use crate::data::{FileError, Origin};

use super::normalize::normalize_for_matching;

#[derive(Debug, Clone, Default)]
pub struct SynonymTable {
    /// Normalised variant → normalised canonical. Canonicals are not keys.
    to_canonical: HashMap<String, String>,
    /// Normalised canonical → where it was defined.
    canonicals: HashMap<String, Origin>,
    variant_origin: HashMap<String, Origin>,
}

impl SynonymTable {
    /// Adds one synonym entry; a variant claimed by two canonicals, or a canonical used as
    /// another's variant, is an error at `origin`.
    pub fn add(
        &mut self,
        canonical: &str,
        variants: &[String],
        origin: &Origin,
    ) -> Result<(), FileError> {
        let err = |msg: String| FileError::at_line(&origin.file, origin.line, msg);
        let canon = normalize_for_matching(canonical);
        if canon.is_empty() {
            return Err(err("synonym canonical term is empty".into()));
        }
        if let Some(other) = self.to_canonical.get(&canon) {
            let at = &self.variant_origin[&canon];
            return Err(err(format!(
                "'{canonical}' is a synonym but is already a variant of '{other}' (at {at})"
            )));
        }
        self.canonicals
            .entry(canon.clone())
            .or_insert_with(|| origin.clone());
        for variant in variants {
            let v = normalize_for_matching(variant);
            if v.is_empty() {
                return Err(err(format!("empty variant of synonym '{canonical}'")));
            }
            if v == canon {
                continue;
            }
            if let Some(at) = self.canonicals.get(&v) {
                return Err(err(format!("'{variant}' is listed as a variant of '{canonical}' but is itself a synonym (at {at})")));
            }
            match self.to_canonical.get(&v) {
                Some(other) if *other != canon => {
                    let at = &self.variant_origin[&v];
                    return Err(err(format!("variant '{variant}' of '{canonical}' already belongs to synonym '{other}' (at {at})")));
                }
                Some(_) => {}
                None => {
                    self.to_canonical.insert(v.clone(), canon.clone());
                    self.variant_origin.insert(v, origin.clone());
                }
            }
        }
        Ok(())
    }

    /// The canonical form of an already-normalised term (the term itself if it is no variant).
    pub fn canonical<'a>(&'a self, term: &'a str) -> &'a str {
        self.to_canonical.get(term).map_or(term, String::as_str)
    }

    /// (variant, canonical) pairs, normalised.
    pub fn variants(&self) -> impl Iterator<Item = (&str, &str)> {
        self.to_canonical
            .iter()
            .map(|(v, c)| (v.as_str(), c.as_str()))
    }

    /// Normalised canonical terms.
    pub fn canonicals(&self) -> impl Iterator<Item = &str> {
        self.canonicals.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.to_canonical.len()
    }

    pub fn is_empty(&self) -> bool {
        self.to_canonical.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn at(line: usize) -> Origin {
        Origin::new(Path::new("s.yml"), line)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn maps_variants_to_canonicals_after_normalising() {
        let mut t = SynonymTable::default();
        t.add("退款", &strings(&["退钱", "退货款", "Refund"]), &at(1))
            .unwrap();
        t.add("会员", &strings(&["ＶＩＰ", "vip"]), &at(5)).unwrap();
        assert_eq!(t.canonical("退钱"), "退款");
        assert_eq!(t.canonical("refund"), "退款");
        assert_eq!(t.canonical("vip"), "会员");
        assert_eq!(t.canonical("退款"), "退款");
        assert_eq!(t.canonical("别的"), "别的");
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn conflicts_are_errors_with_both_places() {
        let mut t = SynonymTable::default();
        t.add("退款", &strings(&["退钱"]), &at(1)).unwrap();
        let e = t.add("退货", &strings(&["退钱"]), &at(9)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.yml:9: variant '退钱' of '退货' already belongs to synonym '退款' (at s.yml:1)"
        );
        let e = t.add("售后", &strings(&["退款"]), &at(12)).unwrap_err();
        assert_eq!(e.to_string(), "s.yml:12: '退款' is listed as a variant of '售后' but is itself a synonym (at s.yml:1)");
        let e = t.add("退钱", &strings(&["返钱"]), &at(15)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.yml:15: '退钱' is a synonym but is already a variant of '退款' (at s.yml:1)"
        );
        // the same pair twice is fine
        t.add("退款", &strings(&["退钱", "退款"]), &at(20)).unwrap();
    }
}
