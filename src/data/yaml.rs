//! YAML files whose every node keeps its line.
//!
//! All operator files and the Rasa-style training data are read through [`YamlFile`]: the
//! `marked-yaml` parser builds a tree in which each mapping key, list item and scalar knows where
//! it starts, so checks made after parsing ("unknown intent", "bad regex", "must be 5..=60") can
//! name `file:line`. Typed files deserialise the same tree with serde ([`YamlFile::deserialize`]),
//! so shape errors (unknown key, wrong type) carry the line too.

use std::path::{Path, PathBuf};

use marked_yaml::{LoadError, LoaderOptions, Node};
use serde::de::DeserializeOwned;

use super::error::FileError;

/// One step of a path into a YAML document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// A parsed YAML file: the node tree plus the source lines.
#[derive(Debug, Clone)]
pub struct YamlFile {
    pub path: PathBuf,
    /// The document; `None` for a file with no content (only blanks and comments).
    pub root: Option<Node>,
    pub lines: Vec<String>,
}

impl YamlFile {
    /// Reads and parses `path`; syntax errors come back as `file:line: invalid YAML: ...`.
    pub fn load(path: &Path) -> Result<YamlFile, FileError> {
        let text = super::error::read_utf8(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<YamlFile, FileError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let root = marked_yaml::parse_yaml_with_options(0, text, options())
            .map_err(|e| syntax_error(path, &e))?;
        // The loader reads an empty document as an empty mapping that spans nothing.
        let empty = matches!(&root, Node::Mapping(m) if m.is_empty()
            && m.span().start().map(|s| s.character()) == m.span().end().map(|e| e.character()));
        Ok(YamlFile {
            path: path.to_path_buf(),
            root: (!empty).then_some(root),
            lines: text.lines().map(str::to_string).collect(),
        })
    }

    /// The node at `path`, if there is one.
    pub fn node(&self, path: &[Seg<'_>]) -> Option<&Node> {
        path.iter().try_fold(self.root.as_ref()?, |node, seg| {
            child(node, *seg).map(|(n, _)| n)
        })
    }

    /// The line of the node at `path` (for a mapping value: the line of its key), or of its
    /// nearest ancestor that exists (line 1 at worst), so an error always points somewhere.
    pub fn line(&self, path: &[Seg<'_>]) -> usize {
        let Some(mut node) = self.root.as_ref() else {
            return 1;
        };
        let mut line = start_line(node).unwrap_or(1);
        for seg in path {
            match child(node, *seg) {
                Some((n, at)) => {
                    node = n;
                    line = at.unwrap_or(line);
                }
                None => break,
            }
        }
        line.max(1)
    }

    /// An error pointing at the node at `path` (or its nearest ancestor).
    pub fn error(&self, path: &[Seg<'_>], message: impl Into<String>) -> FileError {
        FileError::at_line(&self.path, self.line(path), message)
    }

    /// The text after `key:` on the line of the key at `path` (e.g. `|` for a literal block),
    /// trimmed; the parser drops block-scalar headers, the source line still has them.
    pub fn after_key(&self, path: &[Seg<'_>]) -> Option<&str> {
        let (parent, last) = path.split_last().map(|(l, p)| (p, l))?;
        let Seg::Key(name) = *last else { return None };
        let Node::Mapping(map) = self.node(parent)? else {
            return None;
        };
        let (key, _) = map.iter().find(|(k, _)| k.as_str() == name)?;
        let start = key.span().start()?;
        let line = self.lines.get(start.line() - 1)?;
        let from_key: String = line.chars().skip(start.column() - 1).collect();
        let rest = from_key
            .strip_prefix(name)?
            .trim_start()
            .strip_prefix(':')?;
        let offset = line.len() - rest.len();
        Some(line[offset..].trim())
    }

    /// The whole document as `T`; shape errors become `file:line: path: problem` (the path is
    /// left out at the top level). A file with no content is an error.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, FileError> {
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| self.error(&[], "file is empty"))?;
        marked_yaml::from_node(root).map_err(|e| shape_error(&self.path, &e))
    }
}

/// Duplicate keys are errors; only plain scalars may be read as numbers, booleans or null
/// (`"5"` stays a text).
fn options() -> LoaderOptions {
    LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true)
}

/// `item` read as one YAML scalar, e.g. `"a \"quoted\" text"` → `a "quoted" text`.
pub fn parse_scalar(item: &str) -> Option<String> {
    let options = options().toplevel_sequence();
    match marked_yaml::parse_yaml_with_options(0, format!("- {item}"), options).ok()? {
        Node::Sequence(s) if s.len() == 1 => scalar_text(&s[0]),
        _ => None,
    }
}

/// The child at `seg` and the line it is reported at (a mapping value: its key's line).
fn child<'n>(node: &'n Node, seg: Seg<'_>) -> Option<(&'n Node, Option<usize>)> {
    match (node, seg) {
        (Node::Mapping(m), Seg::Key(k)) => m
            .iter()
            .find(|(key, _)| key.as_str() == k)
            .map(|(key, v)| (v, key.span().start().map(|s| s.line()))),
        (Node::Sequence(s), Seg::Index(i)) => s.get(i).map(|n| (n, start_line(n))),
        _ => None,
    }
}

fn start_line(node: &Node) -> Option<usize> {
    node.span().start().map(|s| s.line())
}

fn syntax_error(path: &Path, err: &LoadError) -> FileError {
    let (line, message) = match err {
        LoadError::ScanError(mark, scan) => (mark.line(), scan_message(scan.info())),
        LoadError::TopLevelMustBeMapping(mark) => {
            (mark.line(), "the top level must be a mapping".into())
        }
        LoadError::TopLevelMustBeSequence(mark) => {
            (mark.line(), "the top level must be a list".into())
        }
        LoadError::UnexpectedAnchor(mark) => {
            (mark.line(), "anchors (&name) are not supported".into())
        }
        LoadError::MappingKeyMustBeScalar(mark) => {
            (mark.line(), "mapping keys must be texts".into())
        }
        LoadError::UnexpectedTag(mark) => (mark.line(), "tags (!name) are not supported".into()),
        LoadError::DuplicateKey(inner) => {
            let first = inner.prev_key.span().start().map_or(0, |s| s.line());
            let line = inner.key.span().start().map_or(first, |s| s.line());
            let key = inner.key.as_str();
            (
                line,
                format!("duplicate key '{key}' (first at line {first})"),
            )
        }
        #[allow(unreachable_patterns)]
        other => (1, other.to_string()),
    };
    FileError::at_line(path, line.max(1), format!("invalid YAML: {message}"))
}

/// The parser words a missing token as "while parsing a flow sequence, expected ',' or ']'";
/// put the problem first, in the words the libyaml-based parser used before (and operators
/// know): "did not find expected ',' or ']' (while parsing a flow sequence)".
fn scan_message(info: &str) -> String {
    match info.split_once(", expected ") {
        Some((context, token)) if context.starts_with("while parsing") => {
            format!("did not find expected {token} ({context})")
        }
        _ => info.to_string(),
    }
}

/// A serde error as `path: problem`, worded like serde's own messages.
fn shape_error(file: &Path, err: &marked_yaml::FromNodeError) -> FileError {
    use marked_yaml::Error;
    let path = err.path().filter(|p| !p.is_empty() && *p != ".");
    let line = err.start_mark().map_or(1, |m| m.line());
    let (path, problem) = match &**err {
        // The path names the unknown key itself; report it at its parent, as serde does.
        Error::UnknownFieldError(field, expected, _) => {
            let parent = path.and_then(|p| p.strip_suffix(field.as_str()));
            let parent = parent
                .map(|p| p.trim_end_matches('.'))
                .filter(|p| !p.is_empty());
            (parent, unknown_field(field, expected))
        }
        Error::NotBoolean(_) => (path, "expected true or false".to_string()),
        Error::IntegerParseFailure(e, _) => (path, format!("expected a whole number ({e})")),
        Error::FloatParseFailure(e, _) => (path, format!("expected a number ({e})")),
        other => (path, other.to_string()),
    };
    let message = match path {
        Some(p) => format!("{p}: {problem}"),
        None => problem,
    };
    FileError::at_line(file, line.max(1), message)
}

fn unknown_field(field: &str, expected: &[&str]) -> String {
    let quoted: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
    match quoted.as_slice() {
        [] => format!("unknown field `{field}`, there are no fields"),
        [one] => format!("unknown field `{field}`, expected {one}"),
        [a, b] => format!("unknown field `{field}`, expected {a} or {b}"),
        many => format!(
            "unknown field `{field}`, expected one of {}",
            many.join(", ")
        ),
    }
}

/// Whether a scalar is YAML's null (`~`, `null` or nothing).
fn is_null_text(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// Whether `node` is null: an empty value (`key:`), `~` or `null`.
pub fn is_null(node: &Node) -> bool {
    matches!(node, Node::Scalar(s) if s.may_coerce() && is_null_text(s.as_str()))
}

/// A plain scalar read as a number (`5`, `0.5`, `1e3`).
pub fn as_number(node: &Node) -> Option<f64> {
    let Node::Scalar(s) = node else { return None };
    if !s.may_coerce() {
        return None;
    }
    s.as_i64().map(|i| i as f64).or_else(|| s.as_f64())
}

/// A plain scalar read as a boolean (`true` / `false`).
pub fn as_bool(node: &Node) -> Option<bool> {
    match node {
        Node::Scalar(s) if s.may_coerce() => s.as_bool(),
        _ => None,
    }
}

/// Short YAML type name for "expected X, found Y" messages.
pub fn type_name(node: &Node) -> &'static str {
    match node {
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
        Node::Scalar(s) if !s.may_coerce() => "a string",
        Node::Scalar(s) if is_null_text(s.as_str()) => "nothing",
        Node::Scalar(_) if as_bool(node).is_some() => "a boolean",
        Node::Scalar(_) if as_number(node).is_some() => "a number",
        Node::Scalar(_) => "a string",
    }
}

/// A scalar as text (YAML reads `5G` as a string and `100` as a number; both are fine as a
/// term). Null and collections are not text.
pub fn scalar_text(node: &Node) -> Option<String> {
    match node {
        Node::Scalar(_) if is_null(node) => None,
        Node::Scalar(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A text value: a non-null scalar that is not a number or boolean.
pub fn as_text(node: &Node) -> Option<&str> {
    match node {
        Node::Scalar(s) if type_name(node) == "a string" => Some(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Seg::{Index, Key};

    const DOC: &str = r#"# comment
version: "3.1"
nlu:
- intent: price   # trailing comment
  examples: |
    - 多少钱
    - key: not a key
- synonym: 退款

  examples: |
    - 退钱
"quoted key": 1
'single ''q''': 2
rules:
  - id: a
    phrases: [x, y]
    nested:
      - - deep
  -   id: b
      weight: 2
"#;

    fn yaml(text: &str) -> YamlFile {
        YamlFile::parse(Path::new("d.yml"), text).unwrap()
    }

    fn doc() -> YamlFile {
        yaml(DOC)
    }

    #[test]
    fn finds_keys_and_items() {
        let o = doc();
        assert_eq!(o.line(&[Key("version")]), 2);
        assert_eq!(o.line(&[Key("nlu")]), 3);
        assert_eq!(o.line(&[Key("nlu"), Index(0)]), 4);
        assert_eq!(o.line(&[Key("nlu"), Index(0), Key("intent")]), 4);
        assert_eq!(o.line(&[Key("nlu"), Index(0), Key("examples")]), 5);
        assert_eq!(
            o.after_key(&[Key("nlu"), Index(0), Key("examples")]),
            Some("|")
        );
        assert_eq!(o.line(&[Key("nlu"), Index(1)]), 8);
        assert_eq!(o.line(&[Key("nlu"), Index(1), Key("examples")]), 10);
        assert!(o.node(&[Key("nlu"), Index(2)]).is_none());
        assert_eq!(o.line(&[Key("quoted key")]), 12);
        assert_eq!(o.line(&[Key("single 'q'")]), 13);
        assert_eq!(o.line(&[Key("rules"), Index(0), Key("phrases")]), 16);
        assert_eq!(
            o.line(&[Key("rules"), Index(0), Key("nested"), Index(0), Index(0)]),
            18
        );
        assert_eq!(o.line(&[Key("rules"), Index(1), Key("id")]), 19);
        assert_eq!(o.line(&[Key("rules"), Index(1), Key("weight")]), 20);
    }

    #[test]
    fn block_scalar_contents_are_not_keys() {
        let o = doc();
        assert!(o.node(&[Key("nlu"), Index(0), Key("key")]).is_none());
        assert!(o
            .node(&[Key("nlu"), Index(0), Key("examples"), Index(0)])
            .is_none());
    }

    #[test]
    fn missing_nodes_fall_back_to_the_nearest_ancestor() {
        let o = doc();
        // flow list items are found too
        assert_eq!(
            o.line(&[Key("rules"), Index(0), Key("phrases"), Index(1)]),
            16
        );
        assert_eq!(o.line(&[Key("rules"), Index(7), Key("id")]), 14);
        assert_eq!(o.line(&[Key("nope")]), 2);
    }

    #[test]
    fn indented_list_under_key() {
        let o = yaml("a:\n  - x: 1\n    y: 2\n  - x: 3\nb: 4\n");
        assert_eq!(o.line(&[Key("a"), Index(1), Key("x")]), 4);
        assert_eq!(o.line(&[Key("a"), Index(0), Key("y")]), 3);
        assert_eq!(o.line(&[Key("b")]), 5);
    }

    #[test]
    fn colon_inside_values_and_urls() {
        let o = yaml("l:\n- http://x.y/z\n- k: v w\n- 'a: b'\n");
        assert_eq!(o.line(&[Key("l"), Index(2)]), 4);
        assert_eq!(
            scalar_text(o.node(&[Key("l"), Index(0)]).unwrap()).as_deref(),
            Some("http://x.y/z")
        );
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let e = YamlFile::parse(Path::new("x.yml"), "a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert_eq!(e.file(), Path::new("x.yml"));
        assert!(e.line().is_some());
        assert!(e.message.starts_with("invalid YAML: "), "{}", e.message);
        assert!(!e.message.contains(" at line "), "{}", e.message);
        let e = YamlFile::parse(Path::new("x.yml"), "a: 1\n  b: 2\n").unwrap_err();
        assert_eq!(e.line(), Some(2), "{e}");
        let e = YamlFile::parse(Path::new("x.yml"), "a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.yml:3: invalid YAML: duplicate key 'a' (first at line 1)"
        );
    }

    #[test]
    fn empty_file_has_no_root() {
        let f = YamlFile::parse(Path::new("e.yml"), "# only a comment\n").unwrap();
        assert!(f.root.is_none());
        let f = YamlFile::parse(Path::new("e.yml"), "").unwrap();
        assert!(f.root.is_none());
        let f = YamlFile::parse(Path::new("e.yml"), "{}").unwrap();
        assert!(f.root.is_some());
    }

    #[test]
    fn scalar_types() {
        let f = YamlFile::parse(
            Path::new("t.yml"),
            "n: 5\nf: 0.5\nb: true\ns: 5G\nq: \"5\"\nz:\nt: ~\n",
        )
        .unwrap();
        let ty = |k| type_name(f.node(&[Key(k)]).unwrap());
        assert_eq!(
            ["n", "f", "b", "s", "q", "z", "t"].map(ty),
            [
                "a number",
                "a number",
                "a boolean",
                "a string",
                "a string",
                "nothing",
                "nothing"
            ]
        );
        assert_eq!(as_number(f.node(&[Key("f")]).unwrap()), Some(0.5));
        assert_eq!(
            scalar_text(f.node(&[Key("n")]).unwrap()).as_deref(),
            Some("5")
        );
        assert!(scalar_text(f.node(&[Key("z")]).unwrap()).is_none());
    }

    #[test]
    fn shape_errors_carry_the_line_and_path() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            a: Option<u32>,
            inner: Option<Box<S>>,
        }
        let de = |t: &str| {
            YamlFile::parse(Path::new("x.yml"), t)
                .unwrap()
                .deserialize::<S>()
        };
        let err = |t: &str| de(t).unwrap_err().to_string();
        assert!(err("a: 1\nb: 2\n").starts_with("x.yml:2: unknown field `b`"));
        assert_eq!(
            err("a: 1\ninner:\n  y: 2\n"),
            "x.yml:3: inner: unknown field `y`, expected `a` or `inner`"
        );
        assert!(err("inner:\n  a: many\n").starts_with("x.yml:2: inner.a: expected a whole number"));
        assert_eq!(err("# nothing\n"), "x.yml:1: file is empty");
    }
}
