//! Reads the operator files in dependency order: the catalog first (everything else names its
//! intents), then the keyword rules with the training-data resources, then the policy files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::snapshot::OperatorSnapshot;
use super::OperatorError;
use crate::data::FileError;
use crate::engine::catalog::Catalog;
use crate::engine::entities::{EntityExtractor, OperatorEntities, ENTITIES_FILE};
use crate::engine::fusion::FusionConfig;
use crate::engine::keywords::KeywordLayer;
use crate::policy::config::OperatorConfig;

pub const INTENTS_FILE: &str = "intents.yml";
pub const RULES_FILE: &str = "rules.yml";

/// Where the operator files are, and the settings that come with them.
#[derive(Debug, Clone)]
pub struct OperatorSources {
    /// `config/operator/`.
    pub operator_dir: PathBuf,
    /// `training-data/nlu/` (synonyms, regexes, lookups); a missing folder means none.
    pub training_data: PathBuf,
    pub fusion: FusionConfig,
}

pub(super) fn load(sources: &OperatorSources) -> Result<OperatorSnapshot, OperatorError> {
    let dir = &sources.operator_dir;
    let catalog = Catalog::load(&dir.join(INTENTS_FILE))?;
    let nlu = sources
        .training_data
        .is_dir()
        .then_some(sources.training_data.as_path());
    let keywords = KeywordLayer::load(&dir.join(RULES_FILE), nlu, &catalog)?;
    let entities = load_entities(dir, nlu)?;
    let policy = OperatorConfig::load_with_entities(dir, &catalog, &entities.types())?;
    let config_hash = hash_files(dir, &sources.training_data)?;
    Ok(OperatorSnapshot {
        catalog,
        keywords,
        entities,
        fusion: sources.fusion.clone(),
        policy: Arc::new(policy),
        config_hash,
    })
}

/// The entity extractors: lookup tables and synonyms of the training data, the operator's
/// regex entities (`entities.yml`, optional), whose names may not reuse a lookup table's.
fn load_entities(dir: &Path, nlu: Option<&Path>) -> Result<EntityExtractor, OperatorError> {
    let data = match nlu {
        Some(path) => crate::data::load_allow_empty(path)?,
        None => crate::data::Dataset::default(),
    };
    let tables: Vec<&str> = data.lookups.iter().map(|l| l.name.as_str()).collect();
    let operator = OperatorEntities::load(&dir.join(ENTITIES_FILE), &tables)?;
    Ok(EntityExtractor::from_parts(&data, operator))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), FileError> {
    if dir.is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    if !dir.is_dir() {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| FileError::io(dir, &e))?;
    for entry in entries {
        let p = entry.map_err(|e| FileError::io(dir, &e))?.path();
        if p.is_dir() {
            files_under(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Short hash of every operator and rule file, in path order.
pub fn hash_files(operator_dir: &Path, training_data: &Path) -> Result<String, FileError> {
    let mut files = Vec::new();
    files_under(operator_dir, &mut files)?;
    files_under(training_data, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).map_err(|e| FileError::io(&f, &e))?);
    }
    Ok(hex::encode(h.finalize())[..12].to_string())
}

impl OperatorSnapshot {
    /// Loads and validates every operator file; the first problem is returned as
    /// `file:line: problem`.
    pub fn load(sources: &OperatorSources) -> Result<OperatorSnapshot, OperatorError> {
        load(sources)
    }

    /// The snapshot of `operator_dir` with the training data of `training_data` (a folder that
    /// does not exist means no synonyms / regexes / lookups) and the given fusion settings.
    pub fn load_dir(
        operator_dir: &Path,
        training_data: &Path,
        fusion: FusionConfig,
    ) -> Result<OperatorSnapshot, OperatorError> {
        Self::load(&OperatorSources {
            operator_dir: operator_dir.to_path_buf(),
            training_data: training_data.to_path_buf(),
            fusion,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// A copy of the shipped operator folder, with `file` edited (`from` → `to`).
    fn operator_copy(file: &str, from: &str, to: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(repo().join("config/operator")).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap();
            let mut text = std::fs::read_to_string(&p).unwrap();
            if name == file {
                assert!(text.contains(from), "{from} not in {file}");
                text = text.replacen(from, to, 1);
            }
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn load(dir: &Path) -> Result<OperatorSnapshot, OperatorError> {
        OperatorSnapshot::load_dir(
            dir,
            &repo().join("training-data/nlu"),
            FusionConfig::default(),
        )
    }

    #[test]
    fn shipped_files_load_as_one_snapshot() {
        let s = load(&repo().join("config/operator")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.catalog.len(), 27);
        assert_eq!(s.display_name("refund"), "退货退款");
        assert!(s.always_handoff("complaint") && !s.always_handoff("price"));
        assert!(s.banned_words().find("加我微信").is_some());
        assert!(!s.calendar().festivals.is_empty());
        let defaults = s.policy.settings("any", "any");
        assert!(defaults.block_intents.contains("spam_ads"));
        assert!(defaults.disclosure_answered_by.contains("ask_bot"));
        assert_eq!(s.config_hash.len(), 12);
        assert!(!s.keywords.match_text("我要退款").is_empty());
    }

    #[test]
    fn a_problem_in_any_file_names_file_and_line() {
        let cases = [
            (
                "intents.yml",
                "  - id: thanks\n",
                "  - id: Thanks\n",
                "intents.yml:19: intent id 'Thanks'",
            ),
            (
                "playbook.yml",
                "block_intents: [spam_ads]",
                "block_intents: [spam]",
                "playbook.yml:68: unknown intent 'spam'",
            ),
            (
                "playbook.yml",
                "  style: professional\n",
                "  style: professional\n  style: playful\n",
                "playbook.yml:14: invalid YAML: duplicate key 'style' (first at line 13)",
            ),
            (
                "calendar.yml",
                "festivals:",
                "festivalz:",
                "calendar.yml:4: unknown field `festivalz`",
            ),
            (
                "banned_words.txt",
                "加微信\n",
                "加微信\n加 微 信\n",
                "banned_words.txt:10: banned word '加 微 信' duplicates line 9",
            ),
            (
                "entities.yml",
                "'(?:券码|优惠码|兑换码)",
                "'((?:券码|优惠码|兑换码)",
                "entities.yml:16: in entity 'coupon_code': invalid regex",
            ),
            (
                "replies.yml",
                "订单号：{order_id}。请在",
                "订单号：{order_no}。请在",
                "replies.yml:112: unknown template variable '{order_no}'",
            ),
        ];
        for (file, from, to, want) in cases {
            let dir = operator_copy(file, from, to);
            let e = load(dir.path()).unwrap_err().to_string();
            let at = e.find(file).map(|i| &e[i..]).unwrap_or(&e);
            assert!(at.starts_with(want), "{file}: got {e}, want {want}");
        }
    }

    #[test]
    fn replies_may_name_lookup_tables_and_operator_entities() {
        // {product} is a lookup table of the training data, {coupon_code} an entities.yml
        // regex entity: both declared, so both load.
        let dir = operator_copy(
            "replies.yml",
            "订单号：{order_id}。请在",
            "订单号：{order_id}，{product}，{coupon_code}。请在",
        );
        let s = load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let t = s.entities.types();
        assert!(t.contains(&"product".to_string()) && t.contains(&"coupon_code".to_string()));
        // The policy files alone know only the built-in types: {product} is refused there,
        // with file:line.
        let catalog = Catalog::load(&dir.path().join(INTENTS_FILE)).unwrap();
        let e = OperatorConfig::load(dir.path(), &catalog)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("replies.yml:112: unknown template variable '{product}'"),
            "{e}"
        );
    }

    #[test]
    fn an_intent_without_replies_is_refused() {
        // A new intent in the catalog needs replies before the files load.
        let dir = operator_copy(
            "intents.yml",
            "intents:\n",
            "intents:\n  - id: warranty\n    display_name: 保修\n",
        );
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("replies.yml:") && e.ends_with("no replies for intent 'warranty'"),
            "{e}"
        );
    }

    #[test]
    fn the_hash_follows_the_bytes() {
        let a = operator_copy("calendar.yml", "festivals:", "festivals:");
        let b = operator_copy("calendar.yml", "festivals:", "# changed\nfestivals:");
        let nlu = repo().join("training-data/nlu");
        let (ha, hb) = (
            hash_files(a.path(), &nlu).unwrap(),
            hash_files(b.path(), &nlu).unwrap(),
        );
        assert_ne!(ha, hb);
        assert_eq!(ha, hash_files(a.path(), &nlu).unwrap());
    }
}
