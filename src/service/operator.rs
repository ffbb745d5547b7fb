//! The operator's files, loaded and validated together as one unit so a reload swaps all of
//! them atomically or none: intent catalog, keyword rules (+ training-data synonyms / regex /
//! lookups), and the fusion settings.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::engine::catalog::Catalog;
use crate::engine::fusion::FusionConfig;
use crate::engine::keywords::KeywordLayer;

pub struct OperatorRules {
    pub catalog: Catalog,
    pub keywords: KeywordLayer,
    pub fusion: FusionConfig,
    /// Hash over the files' bytes: tells operators which version is live.
    pub config_hash: String,
}

impl OperatorRules {
    pub fn load(operator_dir: &Path, training_data: &Path, fusion: FusionConfig) -> Result<Self> {
        let catalog =
            Catalog::load(&operator_dir.join("intents.yml")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let nlu = training_data.is_dir().then_some(training_data);
        let keywords = KeywordLayer::load(&operator_dir.join("rules.yml"), nlu, &catalog)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let config_hash = hash_files(operator_dir, training_data)?;
        Ok(Self {
            catalog,
            keywords,
            fusion,
            config_hash,
        })
    }

    pub fn display_name(&self, intent: &str) -> String {
        self.catalog
            .display_name(intent)
            .unwrap_or(intent)
            .to_string()
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if dir.is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = entry?.path();
        if p.is_dir() {
            files_under(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Short hash of every operator and rule file, in path order.
pub fn hash_files(operator_dir: &Path, training_data: &Path) -> Result<String> {
    let mut files = Vec::new();
    files_under(operator_dir, &mut files)?;
    files_under(training_data, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?);
    }
    Ok(hex::encode(h.finalize())[..12].to_string())
}
