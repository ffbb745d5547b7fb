//! TEMPORARY (replaced by the data branch): TSV-only loader with the final API shape.
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Origin { pub file: PathBuf, pub line: usize }
#[derive(Debug, Clone)]
pub struct Example { pub text: String, pub label: String, pub origin: Origin }
#[derive(Debug, Clone, Default)]
pub struct Dataset { pub examples: Vec<Example> }

pub fn load(path: &Path) -> anyhow::Result<Dataset> {
    let text = std::fs::read_to_string(path)?;
    let mut examples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i == 0 && line == "text\tlabel" { continue; }
        let mut parts = line.split('\t');
        let (Some(t), Some(l)) = (parts.next(), parts.next()) else { anyhow::bail!("{}:{}: bad line", path.display(), i + 1) };
        examples.push(Example { text: t.into(), label: l.into(), origin: Origin { file: path.into(), line: i + 1 } });
    }
    Ok(Dataset { examples })
}
impl Dataset {
    pub fn labels(&self) -> Vec<String> { let mut l: Vec<String> = self.examples.iter().map(|e| e.label.clone()).collect(); l.sort(); l.dedup(); l }
    pub fn content_hash(&self) -> String { use sha2::Digest; let mut h = sha2::Sha256::new(); for e in &self.examples { h.update(e.text.as_bytes()); h.update(b"\t"); h.update(e.label.as_bytes()); h.update(b"\n"); } hex::encode(h.finalize()) }
}
