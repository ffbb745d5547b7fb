//! YAML files with line numbers.
//!
//! serde_yaml_ng parses values but keeps no positions, so validation errors found after parsing
//! ("unknown intent", "bad regex") would have no `file:line`. `Outline` is a small
//! indentation-based scanner for block-style YAML that records the line where each mapping key
//! and list item starts. It never decides values (serde_yaml_ng does, so quoting, escapes and
//! comments are handled by a real parser); it only points at lines. Layouts it does not follow
//! (flow collections, multi-line scalars) degrade to the line of the nearest enclosing node.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use super::error::DataError;

/// One step of a path into a YAML document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// A mapping key or list item and where it starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// 1-based line of the key (for mapping values) or of the `-` (for list items).
    pub line: usize,
    /// Text after `key:` or `- ` on that line, trimmed (e.g. `|` for a literal block).
    pub inline: String,
    children: Children,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Children {
    #[default]
    None,
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
}

impl Node {
    fn child(&self, seg: Seg<'_>) -> Option<&Node> {
        match (&self.children, seg) {
            (Children::Map(entries), Seg::Key(k)) => {
                entries.iter().find(|(key, _)| key == k).map(|(_, n)| n)
            }
            (Children::Seq(items), Seg::Index(i)) => items.get(i),
            _ => None,
        }
    }
}

/// Line positions of the block-style nodes of one YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outline {
    root: Node,
}

#[derive(Debug)]
enum Kind<'a> {
    Dash,
    Key(String, &'a str),
    Scalar(&'a str),
}

#[derive(Debug)]
struct Entry<'a> {
    line: usize,
    indent: usize,
    kind: Kind<'a>,
}

impl Outline {
    pub fn parse(text: &str) -> Outline {
        let entries = scan(text);
        let mut pos = 0;
        let mut root = Node {
            line: entries.first().map_or(1, |e| e.line),
            ..Node::default()
        };
        if let Some(first) = entries.first() {
            root.children = parse_block(&entries, &mut pos, first.indent);
        }
        Outline { root }
    }

    /// The node at `path`, if the scanner found it.
    pub fn node(&self, path: &[Seg<'_>]) -> Option<&Node> {
        path.iter()
            .try_fold(&self.root, |node, seg| node.child(*seg))
    }

    /// The line of the node at `path`, or of its nearest ancestor that was found (line 1 at worst),
    /// so an error always points somewhere sensible.
    pub fn line(&self, path: &[Seg<'_>]) -> usize {
        let mut node = &self.root;
        for seg in path {
            match node.child(*seg) {
                Some(n) => node = n,
                None => break,
            }
        }
        node.line.max(1)
    }
}

/// Splits lines into entries: `- ` prefixes become `Dash` entries (so `- key: v` is a dash plus a
/// key one column deeper), blank lines and comments are dropped.
fn scan(text: &str) -> Vec<Entry<'_>> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim_end();
        let mut indent = raw.len() - raw.trim_start_matches(' ').len();
        let mut s = &raw[indent..];
        if s.is_empty() || s.starts_with('#') {
            continue;
        }
        if indent == 0 && (s == "---" || s.starts_with("--- ") || s == "..." || s.starts_with('%'))
        {
            continue;
        }
        loop {
            if s == "-" || s.starts_with("- ") || s.starts_with("-\t") {
                entries.push(Entry {
                    line,
                    indent,
                    kind: Kind::Dash,
                });
                let after = &s[1..];
                let rest = after.trim_start_matches([' ', '\t']);
                indent += 1 + (after.len() - rest.len());
                s = rest;
                if s.is_empty() || s.starts_with('#') {
                    break;
                }
                continue;
            }
            let kind = match split_key(s) {
                Some((key, rest)) => Kind::Key(key, rest),
                None => Kind::Scalar(s),
            };
            entries.push(Entry { line, indent, kind });
            break;
        }
    }
    entries
}

/// `key: rest` → (key, rest). Handles plain, 'single' and "double" quoted keys; anything that
/// starts like a flow collection, anchor, tag or block scalar is not a key.
fn split_key(s: &str) -> Option<(String, &str)> {
    let (key, after) = if let Some(body) = s.strip_prefix('"') {
        let mut escaped = false;
        let end = body.char_indices().find(|&(_, c)| {
            let close = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            close
        })?;
        (
            body[..end.0].replace("\\\"", "\"").replace("\\\\", "\\"),
            &body[end.0 + 1..],
        )
    } else if let Some(body) = s.strip_prefix('\'') {
        let bytes = body.as_bytes();
        let mut i = 0;
        let end = loop {
            if i >= bytes.len() {
                return None;
            }
            if bytes[i] == b'\'' {
                if bytes.get(i + 1) == Some(&b'\'') {
                    i += 2;
                    continue;
                }
                break i;
            }
            i += 1;
        };
        (body[..end].replace("''", "'"), &body[end + 1..])
    } else {
        if s.starts_with(['[', '{', '&', '*', '!', '|', '>', '%', '@', '`', '?']) {
            return None;
        }
        let bytes = s.as_bytes();
        let mut colon = None;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'#' && i > 0 && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
                return None;
            }
            if b == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ' || bytes[i + 1] == b'\t')
            {
                colon = Some(i);
                break;
            }
        }
        let i = colon?;
        let key = s[..i].trim_end();
        if key.is_empty() {
            return None;
        }
        return Some((key.to_string(), s[i + 1..].trim()));
    };
    let after = after.trim_start_matches([' ', '\t']);
    let rest = after.strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    Some((key, rest.trim()))
}

fn parse_block(entries: &[Entry<'_>], pos: &mut usize, indent: usize) -> Children {
    match entries[*pos].kind {
        Kind::Dash => Children::Seq(parse_seq(entries, pos, indent)),
        Kind::Key(..) => Children::Map(parse_map(entries, pos, indent)),
        Kind::Scalar(_) => {
            *pos += 1;
            Children::None
        }
    }
}

/// Skips everything nested deeper than `indent`: block scalar contents, continuation lines of
/// multi-line scalars, or layouts the scanner does not follow.
fn skip_deeper(entries: &[Entry<'_>], pos: &mut usize, indent: usize) {
    while *pos < entries.len() && entries[*pos].indent > indent {
        *pos += 1;
    }
}

fn parse_map(entries: &[Entry<'_>], pos: &mut usize, indent: usize) -> Vec<(String, Node)> {
    let mut out = Vec::new();
    while let Some(e) = entries.get(*pos) {
        let Kind::Key(key, rest) = &e.kind else { break };
        if e.indent != indent {
            break;
        }
        *pos += 1;
        let mut node = Node {
            line: e.line,
            inline: rest.to_string(),
            children: Children::None,
        };
        let has_inline_value = !(rest.is_empty() || rest.starts_with('#'));
        if !has_inline_value {
            if let Some(next) = entries.get(*pos) {
                if next.indent > indent {
                    node.children = parse_block(entries, pos, next.indent);
                } else if next.indent == indent && matches!(next.kind, Kind::Dash) {
                    // `key:` followed by a list at the same indentation (compact style).
                    node.children = Children::Seq(parse_seq(entries, pos, indent));
                }
            }
        }
        skip_deeper(entries, pos, indent);
        out.push((key.clone(), node));
    }
    out
}

fn parse_seq(entries: &[Entry<'_>], pos: &mut usize, indent: usize) -> Vec<Node> {
    let mut out = Vec::new();
    while let Some(e) = entries.get(*pos) {
        if e.indent != indent || !matches!(e.kind, Kind::Dash) {
            break;
        }
        *pos += 1;
        let mut node = Node {
            line: e.line,
            ..Node::default()
        };
        if let Some(next) = entries.get(*pos) {
            if next.indent > indent {
                if let Kind::Scalar(s) = next.kind {
                    if next.line == e.line {
                        node.inline = s.to_string();
                    }
                }
                node.children = parse_block(entries, pos, next.indent);
            }
        }
        skip_deeper(entries, pos, indent);
        out.push(node);
    }
    out
}

/// A parsed YAML file: serde's value plus the outline for error lines.
#[derive(Debug, Clone)]
pub struct YamlFile {
    pub path: PathBuf,
    pub value: Value,
    pub outline: Outline,
    pub lines: Vec<String>,
}

impl YamlFile {
    /// Reads and parses `path`; syntax errors come back as `file:line: invalid YAML: ...`.
    pub fn load(path: &Path) -> Result<YamlFile, DataError> {
        let text = super::error::read_utf8(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<YamlFile, DataError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_yaml_ng::from_str::<Value>(text).map_err(|e| yaml_syntax_error(path, &e))?
        };
        Ok(YamlFile {
            path: path.to_path_buf(),
            value,
            outline: Outline::parse(text),
            lines: text.lines().map(str::to_string).collect(),
        })
    }

    pub fn line(&self, path: &[Seg<'_>]) -> usize {
        self.outline.line(path)
    }

    /// An error pointing at the node at `path` (or its nearest located ancestor).
    pub fn error(&self, path: &[Seg<'_>], message: impl Into<String>) -> DataError {
        DataError::at_line(&self.path, self.line(path), message)
    }
}

/// A serde_yaml_ng error as `file:line: invalid YAML: problem`, without the `at line X column Y`
/// the library appends (the line moves to the front, the column stays in brackets).
pub fn yaml_syntax_error(path: &Path, err: &serde_yaml_ng::Error) -> DataError {
    let mut message = err.to_string();
    match err.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(i) = message.find(&suffix) {
                message.replace_range(i..i + suffix.len(), &format!(" (column {})", loc.column()));
            }
            // Context marks ("while parsing a flow sequence at line 2 column 4") stay, shorter.
            if let Ok(re) = regex::Regex::new(r" at line (\d+) column \d+") {
                message = re.replace_all(&message, " started on line $1").into_owned();
            }
            DataError::at_line(path, loc.line(), format!("invalid YAML: {message}"))
        }
        None => DataError::in_file(path, format!("invalid YAML: {message}")),
    }
}

/// Short YAML type name for "expected X, found Y" messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A scalar as text: strings as they are, numbers and booleans spelled out (YAML reads `5G` as a
/// string but `100` as a number; both are fine as a term).
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
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

    #[test]
    fn finds_keys_and_items() {
        let o = Outline::parse(DOC);
        assert_eq!(o.line(&[Key("version")]), 2);
        assert_eq!(o.line(&[Key("nlu")]), 3);
        assert_eq!(o.line(&[Key("nlu"), Index(0)]), 4);
        assert_eq!(o.line(&[Key("nlu"), Index(0), Key("intent")]), 4);
        assert_eq!(o.line(&[Key("nlu"), Index(0), Key("examples")]), 5);
        assert_eq!(
            o.node(&[Key("nlu"), Index(0), Key("examples")])
                .unwrap()
                .inline,
            "|"
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
        let o = Outline::parse(DOC);
        assert!(o.node(&[Key("nlu"), Index(0), Key("key")]).is_none());
        assert!(o
            .node(&[Key("nlu"), Index(0), Key("examples"), Index(0)])
            .is_none());
    }

    #[test]
    fn missing_nodes_fall_back_to_the_nearest_ancestor() {
        let o = Outline::parse(DOC);
        // flow list items are not followed: the key line is the best answer
        assert_eq!(
            o.line(&[Key("rules"), Index(0), Key("phrases"), Index(1)]),
            16
        );
        assert_eq!(o.line(&[Key("rules"), Index(7), Key("id")]), 14);
        assert_eq!(o.line(&[Key("nope")]), 2);
    }

    #[test]
    fn indented_list_under_key() {
        let o = Outline::parse("a:\n  - x: 1\n    y: 2\n  - x: 3\nb: 4\n");
        assert_eq!(o.line(&[Key("a"), Index(1), Key("x")]), 4);
        assert_eq!(o.line(&[Key("a"), Index(0), Key("y")]), 3);
        assert_eq!(o.line(&[Key("b")]), 5);
    }

    #[test]
    fn colon_inside_values_and_urls() {
        let o = Outline::parse("- http://x.y/z\n- k: v: w\n- 'a: b'\n");
        assert_eq!(o.line(&[Index(2)]), 3);
        assert!(o.node(&[Index(0), Key("http")]).is_none());
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
    }

    #[test]
    fn empty_file_is_null() {
        let f = YamlFile::parse(Path::new("e.yml"), "# only a comment\n").unwrap();
        assert_eq!(f.value, Value::Null);
        let f = YamlFile::parse(Path::new("e.yml"), "").unwrap();
        assert_eq!(f.value, Value::Null);
    }
}
