//! Regex entities declared by the operator in `config/operator/entities.yml`:
//!
//! ```yaml
//! entities:
//!   - name: coupon_code          # the entity type (and the `{coupon_code}` reply variable)
//!     patterns:
//!       - 'QUAN[0-9]{6}'
//!       - '券码\s*[:：]?\s*([A-Z0-9]{8})'   # with a group: group 1 is the value
//! ```
//!
//! Rust `regex` syntax (linear time: no look-around, no backreferences, so no catastrophic
//! backtracking). Checked on load, each problem as `file:line`: a name that is not
//! `[a-z][a-z0-9_]*` (at most 32 characters), is a built-in type or is declared twice; a pattern
//! that does not compile, is longer than [`MAX_PATTERN_CHARS`] characters, compiles to more
//! than [`MAX_COMPILED_BYTES`] bytes, or matches empty text. A missing file declares nothing.

use std::path::Path;

use marked_yaml::Node;
use regex::{Regex, RegexBuilder};

use super::{rank, Candidate, BUILTIN_TYPES};
use crate::data::yaml::{scalar_text, type_name, Seg, YamlFile};
use crate::data::{regex_error_message, FileError};
use crate::types::EntitySource;

pub const ENTITIES_FILE: &str = "entities.yml";
/// Longest pattern accepted, in characters.
pub const MAX_PATTERN_CHARS: usize = 500;
/// Largest compiled program accepted per pattern (the `regex` crate's size limit).
pub const MAX_COMPILED_BYTES: usize = 1 << 20;
/// Most regex entities in the file, and most patterns per entity.
pub const MAX_ENTITIES: usize = 100;
pub const MAX_PATTERNS: usize = 50;
const MAX_NAME_CHARS: usize = 32;

#[derive(Debug, Clone)]
struct Declared {
    name: String,
    patterns: Vec<Regex>,
}

/// The operator's regex entities, validated.
#[derive(Debug, Clone, Default)]
pub struct OperatorEntities {
    declared: Vec<Declared>,
}

impl OperatorEntities {
    /// Reads `path`; a file that does not exist declares nothing. `reserved` are other entity
    /// types (the training data's lookup tables) a declaration may not reuse.
    pub fn load(path: &Path, reserved: &[&str]) -> Result<Self, FileError> {
        if !path.exists() {
            return Ok(Self::default());
        }
        Self::from_file(&YamlFile::load(path)?, reserved)
    }

    /// Parses file text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str, reserved: &[&str]) -> Result<Self, FileError> {
        Self::from_file(&YamlFile::parse(path, text)?, reserved)
    }

    fn from_file(file: &YamlFile, reserved: &[&str]) -> Result<Self, FileError> {
        let top = match &file.root {
            None => return Ok(Self::default()),
            Some(Node::Mapping(m)) => m,
            Some(other) => {
                return Err(file.error(
                    &[],
                    format!(
                        "expected a mapping with \"entities\", found {}",
                        type_name(other)
                    ),
                ))
            }
        };
        let mut list = None;
        for (k, v) in top.iter() {
            match k.as_str() {
                "entities" => list = Some(v),
                key => {
                    return Err(file.error(
                        &[Seg::Key(key)],
                        format!("unknown key '{key}' (expected entities)"),
                    ))
                }
            }
        }
        let items = match list {
            None => return Err(file.error(&[], "missing key \"entities\"")),
            Some(Node::Sequence(s)) => s,
            Some(other) => {
                return Err(file.error(
                    &[Seg::Key("entities")],
                    format!("\"entities\" must be a list, found {}", type_name(other)),
                ))
            }
        };
        if items.len() > MAX_ENTITIES {
            return Err(file.error(
                &[Seg::Key("entities"), Seg::Index(MAX_ENTITIES)],
                format!(
                    "{} regex entities, over the limit of {MAX_ENTITIES}",
                    items.len()
                ),
            ));
        }
        let mut declared: Vec<Declared> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = [Seg::Key("entities"), Seg::Index(i)];
            let Node::Mapping(m) = item else {
                return Err(file.error(
                    &at,
                    format!(
                        "entity must be a mapping with name and patterns, found {}",
                        type_name(item)
                    ),
                ));
            };
            let mut name = None;
            let mut patterns = None;
            for (k, v) in m.iter() {
                match k.as_str() {
                    "name" => name = Some(scalar_text(v).unwrap_or_default()),
                    "patterns" => patterns = Some(v),
                    key => {
                        return Err(file.error(
                            &[at[0], at[1], Seg::Key(key)],
                            format!("unknown key '{key}' (expected name, patterns)"),
                        ))
                    }
                }
            }
            let name_at = [at[0], at[1], Seg::Key("name")];
            let Some(name) = name.map(|n| n.trim().to_string()) else {
                return Err(file.error(&at, "entity is missing name"));
            };
            if !valid_name(&name) {
                return Err(file.error(
                    &name_at,
                    format!("entity name '{name}' must be a-z, 0-9 and '_', starting with a letter, at most {MAX_NAME_CHARS} characters"),
                ));
            }
            if BUILTIN_TYPES.contains(&name.as_str()) {
                return Err(file.error(
                    &name_at,
                    format!(
                        "entity name '{name}' is a built-in type ({})",
                        BUILTIN_TYPES.join(", ")
                    ),
                ));
            }
            if reserved.contains(&name.as_str()) {
                return Err(file.error(
                    &name_at,
                    format!("entity name '{name}' is a lookup table of the training data"),
                ));
            }
            if declared.iter().any(|d| d.name == name) {
                return Err(file.error(&name_at, format!("entity '{name}' is declared twice")));
            }
            let pat_at = [at[0], at[1], Seg::Key("patterns")];
            let list = match patterns {
                Some(Node::Sequence(s)) if !s.is_empty() => s,
                _ => {
                    return Err(file.error(
                        &pat_at,
                        format!("entity '{name}' needs \"patterns\": a non-empty list of regexes"),
                    ))
                }
            };
            if list.len() > MAX_PATTERNS {
                return Err(file.error(
                    &[at[0], at[1], Seg::Key("patterns"), Seg::Index(MAX_PATTERNS)],
                    format!(
                        "entity '{name}' has {} patterns, over the limit of {MAX_PATTERNS}",
                        list.len()
                    ),
                ));
            }
            let mut compiled = Vec::with_capacity(list.len());
            for (j, p) in list.iter().enumerate() {
                let here = [at[0], at[1], Seg::Key("patterns"), Seg::Index(j)];
                let Some(pattern) = scalar_text(p).filter(|s| !s.is_empty()) else {
                    return Err(file.error(&here, "pattern must be a non-empty text"));
                };
                compiled.push(
                    compile(&pattern)
                        .map_err(|e| file.error(&here, format!("in entity '{name}': {e}")))?,
                );
            }
            declared.push(Declared {
                name,
                patterns: compiled,
            });
        }
        Ok(Self { declared })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.declared.iter().map(|d| d.name.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.declared.is_empty()
    }

    pub(super) fn find(&self, text: &str, out: &mut Vec<Candidate>) {
        for d in &self.declared {
            for re in &d.patterns {
                for c in re.captures_iter(text) {
                    let Some(m) = c.get(1).or_else(|| c.get(0)) else {
                        continue;
                    };
                    out.push(Candidate {
                        entity: d.name.clone(),
                        start: m.start(),
                        end: m.end(),
                        canonical: m.as_str().to_string(),
                        source: EntitySource::Regex,
                        rank: rank::OPERATOR,
                    });
                }
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().count() <= MAX_NAME_CHARS
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// One pattern, within the limits (see the module doc).
fn compile(pattern: &str) -> Result<Regex, String> {
    let chars = pattern.chars().count();
    if chars > MAX_PATTERN_CHARS {
        return Err(format!(
            "pattern is {chars} characters long, over the limit of {MAX_PATTERN_CHARS}"
        ));
    }
    let re = RegexBuilder::new(pattern)
        .size_limit(MAX_COMPILED_BYTES)
        .dfa_size_limit(MAX_COMPILED_BYTES)
        .build()
        .map_err(|e| regex_error_message(pattern, &e))?;
    if re.is_match("") {
        return Err(format!("pattern '{pattern}' matches empty text"));
    }
    Ok(re)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OperatorEntities, String> {
        OperatorEntities::parse(Path::new("entities.yml"), text, &["product"])
            .map_err(|e| e.to_string())
    }

    #[test]
    fn declared_patterns_find_values() {
        let e = parse(
            "entities:\n  - name: coupon_code\n    patterns:\n      - 'QUAN[0-9]{6}'\n      - '券码\\s*([A-Z0-9]{8})'\n",
        )
        .unwrap();
        assert_eq!(e.names().collect::<Vec<_>>(), vec!["coupon_code"]);
        let text = "用QUAN123456还是券码 AB12CD34";
        let mut out = Vec::new();
        e.find(text, &mut out);
        let got: Vec<&str> = out.iter().map(|c| &text[c.start..c.end]).collect();
        assert_eq!(got, vec!["QUAN123456", "AB12CD34"]);
        assert!(out.iter().all(|c| c.source == EntitySource::Regex));
    }

    #[test]
    fn empty_or_missing_file_declares_nothing() {
        assert!(parse("# nothing yet\n").unwrap().is_empty());
        let missing = OperatorEntities::load(Path::new("/nonexistent/entities.yml"), &[]).unwrap();
        assert!(missing.is_empty());
    }

    #[test]
    fn problems_name_file_line_and_limit() {
        let cases = [
            (
                "entities:\n  - name: code\n    patterns:\n      - '(abc'\n",
                "entities.yml:4: in entity 'code': invalid regex '(abc'",
            ),
            (
                "entities:\n  - name: Code\n    patterns: ['a']\n",
                "entities.yml:2: entity name 'Code' must be a-z",
            ),
            (
                "entities:\n  - name: phone\n    patterns: ['a']\n",
                "entities.yml:2: entity name 'phone' is a built-in type",
            ),
            (
                "entities:\n  - name: product\n    patterns: ['a']\n",
                "entities.yml:2: entity name 'product' is a lookup table",
            ),
            (
                "entities:\n  - name: a\n    patterns: ['x']\n  - name: a\n    patterns: ['y']\n",
                "entities.yml:4: entity 'a' is declared twice",
            ),
            (
                "entities:\n  - name: a\n    patterns: []\n",
                "entities.yml:3: entity 'a' needs \"patterns\"",
            ),
            (
                "entities:\n  - name: a\n    patterns:\n      - 'x'\n      - 'y*'\n",
                "entities.yml:5: in entity 'a': pattern 'y*' matches empty text",
            ),
            (
                "entities:\n  - name: a\n    pattern: ['x']\n",
                "entities.yml:3: unknown key 'pattern' (expected name, patterns)",
            ),
            (
                "rules: []\n",
                "entities.yml:1: unknown key 'rules' (expected entities)",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(want), "got {e}, want {want}");
        }
    }

    #[test]
    fn too_long_or_too_big_patterns_name_the_limit() {
        let long = "a".repeat(MAX_PATTERN_CHARS + 1);
        let e = parse(&format!(
            "entities:\n  - name: a\n    patterns:\n      - '{long}'\n"
        ))
        .unwrap_err();
        assert_eq!(
            e,
            format!("entities.yml:4: in entity 'a': pattern is 501 characters long, over the limit of {MAX_PATTERN_CHARS}")
        );
        // Short to write, huge once compiled: nested counted repetitions.
        let e = parse("entities:\n  - name: a\n    patterns:\n      - '(\\w{100}){100}'\n")
            .unwrap_err();
        assert!(
            e.starts_with("entities.yml:4: in entity 'a': invalid regex")
                && e.contains(&format!(
                    "exceeds the size limit of {MAX_COMPILED_BYTES} bytes"
                )),
            "{e}"
        );
    }
}
