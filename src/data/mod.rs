//! Labelled training data: loads TSV, JSONL and Rasa-style YAML files (or a folder of them) into
//! one `Dataset`, with every example remembering the `file:line` it came from so training,
//! evaluation and validation messages can point at it.
//!
//! Formats (chosen by extension):
//! - `.tsv`: `text<TAB>label` per line; an optional first line `text<TAB>label` (or
//!   `text<TAB>intent`) is a header. Blank lines are skipped.
//! - `.jsonl`: one JSON object per line with `"text"` and `"intent"` (`"label"` is accepted as
//!   an alias); other fields are ignored. Blank lines are skipped.
//! - `.yml` / `.yaml`: Rasa NLU (`version`, `nlu:` list of `intent` / `synonym` / `regex` /
//!   `lookup` entries, each with an `examples: |` block of `- text` lines). See `rasa.rs`.
//!
//! A folder means every supported file in it, recursively, sorted by path. README* and *.md
//! files and hidden files (`.gitkeep`) are skipped; anything else is an error naming the file.

mod error;
mod jsonl;
pub mod label_check;
mod rasa;
pub mod texts;
mod tsv;
pub mod yaml;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use error::{read_utf8, regex_error_message, FileError, Location};

/// Longest example text accepted, in characters. Training examples are chat messages; anything
/// longer is almost always a broken line (e.g. an unbalanced quote swallowing the file).
pub const MAX_TEXT_CHARS: usize = 1000;
/// Longest label accepted, in characters.
pub const MAX_LABEL_CHARS: usize = 64;

/// Where an item was read from. Displays as `file:line`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl Origin {
    pub fn new(file: &Path, line: usize) -> Self {
        Origin {
            file: file.to_path_buf(),
            line,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Trimmed, with runs of whitespace collapsed to one space; Rasa entity annotations are
    /// stripped to their text (the model trains on this).
    pub text: String,
    pub label: String,
    pub origin: Origin,
    /// Entities annotated in Rasa's `[text](type)` / `[text]{"entity": ..., "value": ...}`
    /// syntax, with code-point offsets into `text` (for `intentd eval`; empty for TSV / JSONL).
    pub entities: Vec<AnnotatedEntity>,
}

/// A gold entity of a training or evaluation example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotatedEntity {
    pub entity: String,
    /// The annotated text.
    pub value: String,
    /// The `value` of a `{"entity": ..., "value": ...}` annotation (or `(type:value)`), else
    /// the annotated text.
    pub canonical: String,
    /// Code points into the example's text.
    pub start: usize,
    pub end: usize,
}

/// `canonical` is what the keyword layer sees whenever one of `variants` appears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synonym {
    pub canonical: String,
    pub variants: Vec<String>,
    pub origin: Origin,
}

/// A named list of regular expressions (all compile; checked on load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegexDef {
    pub name: String,
    pub patterns: Vec<String>,
    pub origin: Origin,
}

/// A named list of terms (e.g. product names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub name: String,
    pub elements: Vec<String>,
    pub origin: Origin,
}

/// The same text labelled differently in different places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub text: String,
    /// Each distinct label with where it was first given, in order of appearance.
    pub labels: Vec<(String, Origin)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dataset {
    /// Unique (text, label) pairs in file order; conflicting pairs are kept here AND listed in
    /// `conflicts` (use `without_conflicts` to drop them).
    pub examples: Vec<Example>,
    pub synonyms: Vec<Synonym>,
    pub regexes: Vec<RegexDef>,
    pub lookups: Vec<Lookup>,
    pub conflicts: Vec<Conflict>,
}

/// Loads a training-data file or folder. An empty result (no examples) is an error.
pub fn load(path: &Path) -> Result<Dataset, FileError> {
    let dataset = load_allow_empty(path)?;
    if dataset.examples.is_empty() {
        return Err(FileError::in_file(
            path,
            "no examples found (empty dataset)",
        ));
    }
    Ok(dataset)
}

/// Like `load`, but a file or folder holding only synonyms / regexes / lookups (or nothing) is
/// fine. The keyword layer uses this for the rule resources of `training-data/nlu`.
pub fn load_allow_empty(path: &Path) -> Result<Dataset, FileError> {
    let meta = std::fs::metadata(path).map_err(|e| FileError::io(path, &e))?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        let mut visited = HashSet::new();
        collect_files(path, &mut files, &mut visited)?;
        files.sort();
        files
    } else {
        if format_of(path).is_none() {
            return Err(unsupported(path));
        }
        vec![path.to_path_buf()]
    };
    let mut raw = Dataset::default();
    for file in &files {
        load_file(file, &mut raw)?;
    }
    finish(raw)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Tsv,
    Jsonl,
    Yaml,
}

fn format_of(path: &Path) -> Option<Format> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "tsv" => Some(Format::Tsv),
        "jsonl" => Some(Format::Jsonl),
        "yml" | "yaml" => Some(Format::Yaml),
        _ => None,
    }
}

fn unsupported(path: &Path) -> FileError {
    FileError::in_file(
        path,
        "unsupported file type (expected .tsv, .jsonl, .yml or .yaml)",
    )
}

/// Files a folder may hold besides data: documentation and hidden files.
fn is_skipped(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with('.')
        || name.to_ascii_lowercase().starts_with("readme")
        || name.to_ascii_lowercase().ends_with(".md")
}

fn collect_files(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), FileError> {
    // Symlinked folders could loop; remember where we have been.
    let real = std::fs::canonicalize(dir).map_err(|e| FileError::io(dir, &e))?;
    if !visited.insert(real) {
        return Ok(());
    }
    let reader = std::fs::read_dir(dir).map_err(|e| FileError::io(dir, &e))?;
    for entry in reader {
        let entry = entry.map_err(|e| FileError::io(dir, &e))?;
        let path = entry.path();
        if is_skipped(&path) {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| FileError::io(&path, &e))?;
        if meta.is_dir() {
            collect_files(&path, out, visited)?;
        } else if format_of(&path).is_some() {
            out.push(path);
        } else {
            return Err(unsupported(&path));
        }
    }
    Ok(())
}

fn load_file(path: &Path, into: &mut Dataset) -> Result<(), FileError> {
    let text = read_utf8(path)?;
    match format_of(path) {
        Some(Format::Tsv) => tsv::parse(path, &text, &mut into.examples),
        Some(Format::Jsonl) => jsonl::parse(path, &text, &mut into.examples),
        Some(Format::Yaml) => rasa::parse(path, &text, into),
        None => Err(unsupported(path)),
    }
}

/// Trims and collapses whitespace runs (including full-width spaces) to one ASCII space, so the
/// same sentence typed twice is recognised as a duplicate.
/// [`normalize_example_text`] and, for each character of `text`, the index of the character
/// it became (a collapsed or trimmed space maps to where the next kept character went).
pub fn normalize_with_map(text: &str) -> (String, Vec<usize>) {
    let out = normalize_example_text(text);
    let mut map = Vec::with_capacity(text.len());
    let mut next = 0; // characters of `out` written so far
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = next > 0;
            map.push(next);
            continue;
        }
        if pending_space {
            next += 1;
            pending_space = false;
        }
        map.push(next);
        next += 1;
    }
    (out, map)
}

pub fn normalize_example_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Checks and normalises one example; `line` is where it was read.
pub(crate) fn make_example(
    file: &Path,
    line: usize,
    text: &str,
    label: &str,
) -> Result<Example, FileError> {
    let text = normalize_example_text(text);
    let label = label.trim();
    if text.is_empty() {
        return Err(FileError::at_line(file, line, "empty text"));
    }
    if label.is_empty() {
        return Err(FileError::at_line(file, line, "empty label"));
    }
    check_label(file, line, label)?;
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(FileError::at_line(
            file,
            line,
            format!("text is {chars} characters long, over the limit of {MAX_TEXT_CHARS}"),
        ));
    }
    Ok(Example {
        text,
        label: label.to_string(),
        origin: Origin::new(file, line),
        entities: Vec::new(),
    })
}

/// Labels are intent ids: one word, no spaces, bounded length.
pub(crate) fn check_label(file: &Path, line: usize, label: &str) -> Result<(), FileError> {
    if label.chars().any(char::is_whitespace) {
        return Err(FileError::at_line(
            file,
            line,
            format!("label '{label}' contains whitespace"),
        ));
    }
    let chars = label.chars().count();
    if chars > MAX_LABEL_CHARS {
        return Err(FileError::at_line(
            file,
            line,
            format!("label is {chars} characters long, over the limit of {MAX_LABEL_CHARS}"),
        ));
    }
    Ok(())
}

/// Deduplicates, collects conflicts and checks the cross-file consistency of the resources.
fn finish(raw: Dataset) -> Result<Dataset, FileError> {
    let mut examples: Vec<Example> = Vec::with_capacity(raw.examples.len());
    let mut by_text: HashMap<String, Vec<usize>> = HashMap::new();
    for ex in raw.examples {
        let same = by_text.entry(ex.text.clone()).or_default();
        if same.iter().any(|&i| examples[i].label == ex.label) {
            continue;
        }
        same.push(examples.len());
        examples.push(ex);
    }
    let mut conflicts = Vec::new();
    let mut reported = HashSet::new();
    for ex in &examples {
        let same = &by_text[&ex.text];
        if same.len() > 1 && reported.insert(ex.text.clone()) {
            conflicts.push(Conflict {
                text: ex.text.clone(),
                labels: same
                    .iter()
                    .map(|&i| (examples[i].label.clone(), examples[i].origin.clone()))
                    .collect(),
            });
        }
    }

    let mut canonical_at: HashMap<&str, &Origin> = HashMap::new();
    for s in &raw.synonyms {
        canonical_at
            .entry(s.canonical.as_str())
            .or_insert(&s.origin);
    }
    let mut variant_of: HashMap<&str, (&str, &Origin)> = HashMap::new();
    for s in &raw.synonyms {
        for v in &s.variants {
            if v == &s.canonical {
                continue;
            }
            if let Some(at) = canonical_at.get(v.as_str()) {
                return Err(origin_error(
                    &s.origin,
                    format!(
                        "'{v}' is listed as a variant of '{}' but is itself a synonym (at {at})",
                        s.canonical
                    ),
                ));
            }
            match variant_of.get(v.as_str()) {
                Some((other, at)) if *other != s.canonical => {
                    return Err(origin_error(
                        &s.origin,
                        format!(
                            "variant '{v}' of '{}' already belongs to synonym '{other}' (at {at})",
                            s.canonical
                        ),
                    ));
                }
                _ => {
                    variant_of.insert(v, (&s.canonical, &s.origin));
                }
            }
        }
    }

    let mut regex_at: HashMap<&str, &Origin> = HashMap::new();
    for r in &raw.regexes {
        if let Some(first) = regex_at.insert(&r.name, &r.origin) {
            return Err(origin_error(
                &r.origin,
                format!("duplicate regex '{}' (first defined at {first})", r.name),
            ));
        }
    }
    let mut lookup_at: HashMap<&str, &Origin> = HashMap::new();
    for l in &raw.lookups {
        if let Some(first) = lookup_at.insert(&l.name, &l.origin) {
            return Err(origin_error(
                &l.origin,
                format!("duplicate lookup '{}' (first defined at {first})", l.name),
            ));
        }
    }

    Ok(Dataset {
        examples,
        synonyms: raw.synonyms,
        regexes: raw.regexes,
        lookups: raw.lookups,
        conflicts,
    })
}

fn origin_error(origin: &Origin, message: String) -> FileError {
    FileError::at_line(&origin.file, origin.line, message)
}

impl Dataset {
    /// Sorted, unique example labels.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self.examples.iter().map(|e| e.label.clone()).collect();
        labels.sort();
        labels.dedup();
        labels
    }

    /// A copy with every example whose text is in a conflict removed (no label is trusted for it).
    pub fn without_conflicts(&self) -> Dataset {
        let bad: HashSet<&str> = self.conflicts.iter().map(|c| c.text.as_str()).collect();
        Dataset {
            examples: self
                .examples
                .iter()
                .filter(|e| !bad.contains(e.text.as_str()))
                .cloned()
                .collect(),
            synonyms: self.synonyms.clone(),
            regexes: self.regexes.clone(),
            lookups: self.lookups.clone(),
            conflicts: Vec::new(),
        }
    }

    /// SHA-256 (hex) of the examples as (label, text) pairs in sorted order: the same data gives
    /// the same hash whichever files or order it came in; origins do not count.
    pub fn content_hash(&self) -> String {
        let mut pairs: Vec<(&str, &str)> = self
            .examples
            .iter()
            .map(|e| (e.label.as_str(), e.text.as_str()))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut h = Sha256::new();
        for (label, text) in pairs {
            h.update(label.as_bytes());
            h.update([0x1f]);
            h.update(text.as_bytes());
            h.update([0x1e]);
        }
        hex::encode(h.finalize())
    }

    /// Number of examples per label, sorted by label.
    pub fn label_counts(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for e in &self.examples {
            *counts.entry(&e.label).or_default() += 1;
        }
        let mut out: Vec<(String, usize)> = counts
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn origin_displays_file_colon_line() {
        assert_eq!(
            Origin::new(Path::new("a/b.tsv"), 3).to_string(),
            "a/b.tsv:3"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let e = load(Path::new("no/such/x.yml")).unwrap_err();
        assert_eq!(e.to_string(), "no/such/x.yml: no such file or directory");
    }

    #[test]
    fn unsupported_single_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "x.csv", "a,b\n");
        let e = load(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: unsupported file type (expected .tsv, .jsonl, .yml or .yaml)",
                p.display()
            )
        );
    }

    #[test]
    fn folder_loads_all_formats_recursively_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.tsv", "text\tlabel\n多少钱\tprice\n");
        write(
            dir.path(),
            "a.jsonl",
            "{\"text\": \"你好\", \"intent\": \"greeting\"}\n",
        );
        write(
            dir.path(),
            "sub/c.yml",
            "version: \"3.1\"\nnlu:\n- intent: thanks\n  examples: |\n    - 谢谢\n",
        );
        write(dir.path(), "README.md", "docs\n");
        write(dir.path(), "sub/notes.md", "docs\n");
        write(dir.path(), ".gitkeep", "");
        let ds = load(dir.path()).unwrap();
        let got: Vec<(&str, &str, usize)> = ds
            .examples
            .iter()
            .map(|e| (e.text.as_str(), e.label.as_str(), e.origin.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("你好", "greeting", 1),
                ("多少钱", "price", 2),
                ("谢谢", "thanks", 5)
            ]
        );
        assert_eq!(ds.examples[2].origin.file, dir.path().join("sub/c.yml"));
        assert_eq!(ds.labels(), vec!["greeting", "price", "thanks"]);
    }

    #[test]
    fn folder_with_other_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.tsv", "多少钱\tprice\n");
        let bad = write(dir.path(), "deep/notes.txt", "x\n");
        let e = load(dir.path()).unwrap_err();
        assert_eq!(e.file(), bad.as_path());
        assert!(e.to_string().contains("unsupported file type"), "{e}");
    }

    #[test]
    fn empty_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "README.md", "nothing here\n");
        let e = load(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: no examples found (empty dataset)",
                dir.path().display()
            )
        );
        // ...but fine for resources-only loading
        assert!(load_allow_empty(dir.path()).unwrap().examples.is_empty());
    }

    #[test]
    fn resources_only_file_needs_allow_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "synonyms.yml",
            "nlu:\n- synonym: 退款\n  examples: |\n    - 退钱\n",
        );
        assert!(load(&p)
            .unwrap_err()
            .to_string()
            .ends_with(": no examples found (empty dataset)"));
        let ds = load_allow_empty(&p).unwrap();
        assert_eq!(ds.synonyms[0].variants, vec!["退钱"]);
    }

    #[test]
    fn identical_duplicates_are_merged_and_conflicts_collected() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.tsv",
            "多少钱\tprice\n多少钱\tprice\n  能退吗 \trefund\n",
        );
        write(
            dir.path(),
            "b.tsv",
            "能退吗\texchange\n多少钱\tprice\n能退吗\trefund\n",
        );
        let ds = load(dir.path()).unwrap();
        assert_eq!(ds.examples.len(), 3);
        assert_eq!(ds.conflicts.len(), 1);
        let c = &ds.conflicts[0];
        assert_eq!(c.text, "能退吗");
        let labels: Vec<String> = c.labels.iter().map(|(l, o)| format!("{l}@{o}")).collect();
        assert_eq!(
            labels,
            vec![
                format!("refund@{}", dir.path().join("a.tsv:3").display()),
                format!("exchange@{}", dir.path().join("b.tsv:1").display()),
            ]
        );
        let clean = ds.without_conflicts();
        assert!(clean.conflicts.is_empty());
        assert_eq!(clean.examples.len(), 1);
        assert_eq!(clean.examples[0].text, "多少钱");
        assert_eq!(clean.labels(), vec!["price"]);
    }

    #[test]
    fn content_hash_ignores_order_and_origin_but_not_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.tsv", "多少钱\tprice\n你好\tgreeting\n");
        let b = write(dir.path(), "b.tsv", "\n你好\tgreeting\n多少钱  \tprice\n");
        let c = write(dir.path(), "c.tsv", "你好\tgreeting\n多少钱\trefund\n");
        let ha = load(&a).unwrap().content_hash();
        assert_eq!(ha.len(), 64);
        assert_eq!(ha, load(&b).unwrap().content_hash());
        assert_ne!(ha, load(&c).unwrap().content_hash());
    }

    #[test]
    fn whitespace_is_normalised() {
        assert_eq!(normalize_example_text("  a \t b\u{3000}c  "), "a b c");
    }

    #[test]
    fn overlong_text_names_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let long = "长".repeat(MAX_TEXT_CHARS + 1);
        let p = write(
            dir.path(),
            "a.tsv",
            &format!("好\tgreeting\n{long}\tprice\n"),
        );
        let e = load(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:2: text is 1001 characters long, over the limit of 1000",
                p.display()
            )
        );
    }

    #[test]
    fn label_with_space_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.tsv", "好\tgreet ing\n");
        assert_eq!(
            load(&p).unwrap_err().to_string(),
            format!("{}:1: label 'greet ing' contains whitespace", p.display())
        );
    }

    #[test]
    fn conflicting_synonym_variants_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.yml",
            "nlu:\n- synonym: 退款\n  examples: |\n    - 退钱\n",
        );
        let b = write(dir.path(), "b.yml", "nlu:\n- intent: refund\n  examples: |\n    - 退\n- synonym: 退货\n  examples: |\n    - 退钱\n");
        let e = load(dir.path()).unwrap_err();
        assert_eq!(e.file(), b.as_path());
        assert_eq!(e.line(), Some(5));
        assert!(
            e.message
                .contains("variant '退钱' of '退货' already belongs to synonym '退款'"),
            "{e}"
        );
    }

    #[test]
    fn synonym_chains_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "s.yml",
            "nlu:\n- synonym: 退款\n  examples: |\n    - 退钱\n- synonym: 售后\n  examples: |\n    - 退款\n",
        );
        let e = load_allow_empty(&p).unwrap_err();
        assert_eq!(e.line(), Some(5), "{e}");
        assert!(
            e.message
                .contains("'退款' is listed as a variant of '售后' but is itself a synonym"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_regex_and_lookup_names_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "r.yml",
            "nlu:\n- regex: phone\n  examples: |\n    - \\d{11}\n- regex: phone\n  examples: |\n    - 1\\d+\n",
        );
        let e = load_allow_empty(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:5: duplicate regex 'phone' (first defined at {}:2)",
                p.display(),
                p.display()
            )
        );
        let p = write(
            dir.path(),
            "l.yml",
            "nlu:\n- lookup: product\n  examples: |\n    - 杯子\n- lookup: product\n  examples: |\n    - 锅\n",
        );
        let e = load_allow_empty(&p).unwrap_err();
        assert_eq!(e.line(), Some(5));
        assert!(e.message.starts_with("duplicate lookup 'product'"));
    }

    #[test]
    fn label_counts_are_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.tsv",
            "多少钱\tprice\n你好\tgreeting\n贵吗\tprice\n",
        );
        assert_eq!(
            load(&p).unwrap().label_counts(),
            vec![("greeting".to_string(), 1), ("price".to_string(), 2)]
        );
    }
}
