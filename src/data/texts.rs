//! Plain text lists (benchmark and profiling inputs): a TSV whose first column is `text`, or one
//! text per line.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Texts from a TSV with a `text` header (first column) or from plain lines; blank lines are
/// skipped.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let content = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read texts file {}", path.display()))?;
    let mut lines = content.lines().peekable();
    if lines
        .peek()
        .is_some_and(|l| l.split('\t').next().map(str::trim) == Some("text"))
    {
        lines.next();
    }
    let texts: Vec<String> = lines
        .filter_map(|l| l.split('\t').next())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if texts.is_empty() {
        bail!(
            "{}: no texts (expected a TSV with a `text` header, or one text per line)",
            path.display()
        );
    }
    Ok(texts)
}
