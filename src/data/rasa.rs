//! Rasa-style NLU YAML:
//!
//! ```yaml
//! version: "3.1"
//! nlu:
//! - intent: price
//!   examples: |
//!     - 多少钱
//!     - "带引号的: 也可以"
//! - synonym: 退款          # variants are mapped to the canonical term
//!   examples: |
//!     - 退钱
//! - regex: order_no        # patterns are used verbatim (no unquoting)
//!   examples: |
//!     - \d{12,20}
//! - lookup: product
//!   examples: |
//!     - 保温杯
//! ```
//!
//! Values and their lines come from the YAML parser ([`super::yaml`]); an `examples: |` literal
//! block maps its n-th content line to the n-th line after the header, so every example gets the
//! real line of its `- text` line. Inside a block, lines
//! starting with `#` are comments; `- "quoted"` / `- 'quoted'` items are unquoted with YAML rules;
//! Rasa entity annotations `[text](entity)` / `[text]{...}` in intent examples keep only `text`.

use std::path::Path;

use marked_yaml::Node;

use super::yaml::{is_null, parse_scalar, scalar_text, type_name, Seg, YamlFile};
use super::{
    check_label, make_example, normalize_with_map, regex_error_message, AnnotatedEntity, Dataset,
    FileError, Lookup, Origin, RegexDef, Synonym,
};

const KINDS: [&str; 4] = ["intent", "synonym", "regex", "lookup"];

pub(super) fn parse(path: &Path, text: &str, into: &mut Dataset) -> Result<(), FileError> {
    let file = YamlFile::parse(path, text)?;
    let top = match &file.root {
        None => return Ok(()),
        Some(Node::Mapping(m)) => m,
        Some(other) => {
            return Err(file.error(
                &[],
                format!(
                    "expected a mapping with \"version\" and \"nlu\", found {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut nlu = None;
    for (k, v) in top.iter() {
        match k.as_str() {
            "version" => {}
            "nlu" => nlu = Some(v),
            key => {
                return Err(file.error(
                    &[Seg::Key(key)],
                    format!("unknown key '{key}' (expected version, nlu)"),
                ));
            }
        }
    }
    let entries = match nlu {
        None => return Err(file.error(&[], "missing key \"nlu\"")),
        Some(v) if is_null(v) => return Ok(()),
        Some(Node::Sequence(s)) => s,
        Some(other) => {
            return Err(file.error(
                &[Seg::Key("nlu")],
                format!(
                    "\"nlu\" must be a list of entries, found {}",
                    type_name(other)
                ),
            ));
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        parse_entry(&file, i, entry, into)?;
    }
    Ok(())
}

fn parse_entry(
    file: &YamlFile,
    i: usize,
    entry: &Node,
    into: &mut Dataset,
) -> Result<(), FileError> {
    let at = [Seg::Key("nlu"), Seg::Index(i)];
    let Node::Mapping(map) = entry else {
        return Err(file.error(&at, format!("nlu entry must be a mapping (intent, synonym, regex or lookup, with examples), found {}", type_name(entry))));
    };
    let mut kind: Option<(&'static str, &Node)> = None;
    let mut examples = None;
    for (k, v) in map.iter() {
        let key = k.as_str();
        let key_at = [at[0], at[1], Seg::Key(key)];
        if key == "examples" {
            examples = Some(v);
        } else if let Some(&kname) = KINDS.iter().find(|&&n| n == key) {
            if let Some((other, _)) = kind {
                return Err(file.error(
                    &key_at,
                    format!("entry has both '{other}' and '{kname}'; use one per entry"),
                ));
            }
            kind = Some((kname, v));
        } else {
            return Err(file.error(
                &key_at,
                format!("unknown key '{key}' in nlu entry (expected intent, synonym, regex or lookup, and examples)"),
            ));
        }
    }
    let Some((kind, name_value)) = kind else {
        return Err(file.error(&at, "nlu entry needs one of intent, synonym, regex, lookup"));
    };
    let name_at = [at[0], at[1], Seg::Key(kind)];
    let name = scalar_text(name_value)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(file.error(&name_at, format!("{kind} name must be a non-empty text")));
    }
    let entry_line = file.line(&at);
    if kind == "intent" {
        check_label(&file.path, file.line(&name_at), &name)?;
    }
    let Some(examples) = examples else {
        return Err(file.error(&at, format!("{kind} '{name}' has no \"examples\"")));
    };
    let items = block_items(file, i, examples)?;
    if items.is_empty() {
        return Err(file.error(
            &[at[0], at[1], Seg::Key("examples")],
            format!("{kind} '{name}' has no examples"),
        ));
    }
    let origin = Origin::new(&file.path, entry_line);
    match kind {
        "intent" => {
            for (line, raw) in items {
                let (text, spans) = strip_entity_annotations(&unquote(&file.path, line, raw)?);
                let mut example = make_example(&file.path, line, &text, &name)?;
                example.entities = annotated_entities(&text, spans);
                into.examples.push(example);
            }
        }
        "synonym" => {
            let mut variants = Vec::with_capacity(items.len());
            for (line, raw) in items {
                variants.push(unquote(&file.path, line, raw)?);
            }
            into.synonyms.push(Synonym {
                canonical: name,
                variants,
                origin,
            });
        }
        "regex" => {
            let mut patterns = Vec::with_capacity(items.len());
            for (line, raw) in items {
                if let Err(e) = regex::Regex::new(raw) {
                    return Err(FileError::at_line(
                        &file.path,
                        line,
                        format!("in regex '{name}': {}", regex_error_message(raw, &e)),
                    ));
                }
                patterns.push(raw.to_string());
            }
            into.regexes.push(RegexDef {
                name,
                patterns,
                origin,
            });
        }
        _ => {
            let mut elements = Vec::with_capacity(items.len());
            for (line, raw) in items {
                elements.push(unquote(&file.path, line, raw)?);
            }
            into.lookups.push(Lookup {
                name,
                elements,
                origin,
            });
        }
    }
    Ok(())
}

/// The `- text` items of an `examples: |` block with the real line of each.
fn block_items<'a>(
    file: &YamlFile,
    i: usize,
    examples: &'a Node,
) -> Result<Vec<(usize, &'a str)>, FileError> {
    let at = [Seg::Key("nlu"), Seg::Index(i), Seg::Key("examples")];
    let not_a_block = || file.error(&at, "examples must be a block of \"- text\" lines");
    let Node::Scalar(block) = examples else {
        return Err(not_a_block());
    };
    if !file.after_key(&at).is_some_and(is_literal_block_header) {
        return Err(not_a_block());
    }
    let header = file.line(&at);
    let mut items = Vec::new();
    for (k, content) in block.split('\n').enumerate() {
        let line = header + 1 + k;
        let content = content.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        // A literal block keeps one value line per source line; check we are where we think.
        let raw = file.lines.get(line - 1).map(|l| l.trim());
        if raw != Some(content) {
            return Err(FileError::at_line(
                &file.path,
                header,
                "could not match the examples block to its lines (write it as an indented `|` block)",
            ));
        }
        let text = if content == "-" {
            ""
        } else if let Some(rest) = content
            .strip_prefix("- ")
            .or_else(|| content.strip_prefix("-\t"))
        {
            rest.trim()
        } else {
            return Err(FileError::at_line(
                &file.path,
                line,
                "examples must be a block of \"- text\" lines",
            ));
        };
        if text.is_empty() {
            return Err(FileError::at_line(&file.path, line, "empty text"));
        }
        items.push((line, text));
    }
    Ok(items)
}

/// `|`, `|-`, `|+`, `|2`, `|-2`... optionally followed by a comment.
fn is_literal_block_header(inline: &str) -> bool {
    let Some(rest) = inline.strip_prefix('|') else {
        return false;
    };
    let indicators =
        rest.trim_start_matches(['+', '-', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
    let tail = indicators.trim_start();
    tail.is_empty() || (tail.starts_with('#') && indicators.len() != tail.len())
}

/// `"quoted"` and `'quoted'` items are read as YAML scalars (escapes, `''`); an item that only
/// looks quoted (`"好"的"`) stays as written.
fn unquote(path: &Path, line: usize, item: &str) -> Result<String, FileError> {
    let quoted = item.len() >= 2
        && ((item.starts_with('"') && item.ends_with('"'))
            || (item.starts_with('\'') && item.ends_with('\'')));
    let text = if quoted {
        parse_scalar(item).unwrap_or_else(|| item.to_string())
    } else {
        item.to_string()
    };
    if text.trim().is_empty() {
        return Err(FileError::at_line(path, line, "empty text"));
    }
    Ok(text.trim().to_string())
}

/// An annotation as found: the entity type, the canonical value if the annotation gave one,
/// and the code-point range of its text in the stripped text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    entity: String,
    canonical: Option<String>,
    start: usize,
    end: usize,
}

/// `[保温杯](product)多少钱` → `保温杯多少钱` and where `保温杯` is. Also
/// `[保温壶]{"entity": "product", "value": "保温杯"}` and Rasa 1's `[保温壶](product:保温杯)`.
/// Other brackets (WeChat emoji codes like `[微笑]`) are left alone; an annotation whose type
/// cannot be read (`[a](b c)`, bad JSON) is stripped but records no entity.
fn strip_entity_annotations(text: &str) -> (String, Vec<Span>) {
    let mut out = String::with_capacity(text.len());
    let mut spans = Vec::new();
    let mut chars_out = 0;
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after_open = &rest[open + 1..];
        let Some(close) = after_open.find(']') else {
            break;
        };
        let inner = &after_open[..close];
        let tail = &after_open[close + 1..];
        let closing = match tail.chars().next() {
            Some('(') => Some(')'),
            Some('{') => Some('}'),
            _ => None,
        };
        let end = closing.and_then(|c| tail.find(c));
        match end {
            Some(end) if !inner.is_empty() && !inner.contains('[') => {
                let before = &rest[..open];
                out.push_str(before);
                chars_out += before.chars().count();
                // Spaces just inside the brackets belong to the text, not the entity.
                let lead = inner.len() - inner.trim_start().len();
                let start = chars_out + inner[..lead].chars().count();
                let value_chars = inner.trim().chars().count();
                if let Some((entity, canonical)) = annotation(&tail[1..end], tail.starts_with('{'))
                {
                    if value_chars > 0 {
                        spans.push(Span {
                            entity,
                            canonical,
                            start,
                            end: start + value_chars,
                        });
                    }
                }
                out.push_str(inner);
                chars_out += inner.chars().count();
                rest = &tail[end + 1..];
            }
            _ => {
                let kept = &rest[..open + 1];
                out.push_str(kept);
                chars_out += kept.chars().count();
                rest = after_open;
            }
        }
    }
    out.push_str(rest);
    (out, spans)
}

/// The (type, canonical) of `(type)`, `(type:value)` or `{"entity": type, "value": value}`.
fn annotation(body: &str, json: bool) -> Option<(String, Option<String>)> {
    let (entity, value) = if json {
        let v: serde_json::Value = serde_json::from_str(&format!("{{{body}}}")).ok()?;
        let entity = v.get("entity")?.as_str()?.trim().to_string();
        let value = v.get("value").and_then(|x| x.as_str()).map(str::to_string);
        (entity, value)
    } else {
        match body.split_once(':') {
            Some((e, v)) => (e.trim().to_string(), Some(v.trim().to_string())),
            None => (body.trim().to_string(), None),
        }
    };
    let valid = !entity.is_empty() && !entity.chars().any(char::is_whitespace);
    valid.then(|| (entity, value.filter(|v| !v.is_empty())))
}

/// The annotations as entities of the normalised example text (`make_example` trims and
/// collapses spaces, which can move them).
fn annotated_entities(stripped: &str, spans: Vec<Span>) -> Vec<AnnotatedEntity> {
    if spans.is_empty() {
        return Vec::new();
    }
    let (text, map) = normalize_with_map(stripped);
    let chars: Vec<char> = text.chars().collect();
    spans
        .into_iter()
        .filter_map(|s| {
            let start = *map.get(s.start)?;
            let end = *map.get(s.end.checked_sub(1)?)? + 1;
            let value: String = chars.get(start..end)?.iter().collect();
            Some(AnnotatedEntity {
                canonical: s.canonical.unwrap_or_else(|| value.clone()),
                entity: s.entity,
                value,
                start,
                end,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(body: &str) -> Result<Dataset, FileError> {
        let mut ds = Dataset::default();
        parse(Path::new("nlu.yml"), body, &mut ds).map(|_| ds)
    }

    const GOOD: &str = r#"version: "3.1"
# price questions
nlu:
- intent: price
  examples: |
    - 多少钱
    # - commented out
    - "带引号的: 也可以"

    - '单引号''s'
    - [保温杯](product)多少钱
    - 谢谢[微笑]
    - 活动#2 怎么报名
- synonym: 退款
  examples: |-
    - 退钱
    - 退货款
- regex: order_no  # a comment
  examples: |
    - \d{12,20}
    - "quoted"
- lookup: product
  examples: |
    - 保温杯
    - "空气 炸锅"
"#;

    #[test]
    fn reads_all_entry_kinds_with_real_lines() {
        let ds = parse_str(GOOD).unwrap();
        let got: Vec<(&str, usize)> = ds
            .examples
            .iter()
            .map(|e| (e.text.as_str(), e.origin.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("多少钱", 6),
                ("带引号的: 也可以", 8),
                ("单引号's", 10),
                ("保温杯多少钱", 11),
                ("谢谢[微笑]", 12),
                ("活动#2 怎么报名", 13),
            ]
        );
        assert!(ds.examples.iter().all(|e| e.label == "price"));
        assert_eq!(ds.synonyms.len(), 1);
        assert_eq!(ds.synonyms[0].canonical, "退款");
        assert_eq!(ds.synonyms[0].variants, vec!["退钱", "退货款"]);
        assert_eq!(ds.synonyms[0].origin.line, 14);
        assert_eq!(ds.regexes[0].name, "order_no");
        assert_eq!(ds.regexes[0].patterns, vec![r"\d{12,20}", "\"quoted\""]);
        assert_eq!(ds.regexes[0].origin.line, 18);
        assert_eq!(ds.lookups[0].elements, vec!["保温杯", "空气 炸锅"]);
        assert_eq!(ds.lookups[0].origin.to_string(), "nlu.yml:22");
    }

    #[test]
    fn indented_list_and_crlf() {
        let body = "version: \"3.1\"\r\nnlu:\r\n  - intent: greeting\r\n    examples: |\r\n      - 你好\r\n      - 在吗\r\n";
        let ds = parse_str(body).unwrap();
        let lines: Vec<usize> = ds.examples.iter().map(|e| e.origin.line).collect();
        assert_eq!(lines, vec![5, 6]);
    }

    #[test]
    fn examples_as_yaml_list_is_an_error() {
        let e = parse_str("nlu:\n- intent: price\n  examples:\n  - 多少钱\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:3: examples must be a block of \"- text\" lines"
        );
        let e = parse_str("nlu:\n- intent: price\n  examples: \"- 多少钱\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:3: examples must be a block of \"- text\" lines"
        );
        let e = parse_str("nlu:\n- intent: price\n  examples: >\n    - 多少钱\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:3: examples must be a block of \"- text\" lines"
        );
    }

    #[test]
    fn line_without_dash_is_an_error_at_that_line() {
        let e = parse_str("nlu:\n- intent: price\n  examples: |\n    - 多少钱\n    贵吗\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:5: examples must be a block of \"- text\" lines"
        );
    }

    #[test]
    fn empty_items_are_errors() {
        let e =
            parse_str("nlu:\n- intent: price\n  examples: |\n    - 多少钱\n    -\n").unwrap_err();
        assert_eq!(e.to_string(), "nlu.yml:5: empty text");
        let e = parse_str("nlu:\n- intent: price\n  examples: |\n    - \"\"\n").unwrap_err();
        assert_eq!(e.to_string(), "nlu.yml:4: empty text");
        let e = parse_str("nlu:\n- intent: price\n  examples: |\n    # nothing yet\n").unwrap_err();
        assert_eq!(e.to_string(), "nlu.yml:3: intent 'price' has no examples");
    }

    #[test]
    fn structural_errors_point_at_the_key() {
        let e = parse_str("version: \"3.1\"\nnlu:\n- intent: price\n  exampels: |\n    - a\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:4: unknown key 'exampels' in nlu entry (expected intent, synonym, regex or lookup, and examples)"
        );
        let e = parse_str("nlu:\n- intent: price\n- intent: refund\n  examples: |\n    - a\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:2: intent 'price' has no \"examples\""
        );
        let e = parse_str("version: \"3.1\"\nstories:\n- story: x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:2: unknown key 'stories' (expected version, nlu)"
        );
        let e = parse_str("version: \"3.1\"\n").unwrap_err();
        assert_eq!(e.to_string(), "nlu.yml:1: missing key \"nlu\"");
        let e = parse_str("nlu:\n- examples: |\n    - a\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:2: nlu entry needs one of intent, synonym, regex, lookup"
        );
        let e =
            parse_str("nlu:\n- intent: price\n  synonym: x\n  examples: |\n    - a\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:3: entry has both 'intent' and 'synonym'; use one per entry"
        );
        let e = parse_str("nlu:\n- intent:\n  examples: |\n    - a\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:2: intent name must be a non-empty text"
        );
        let e = parse_str("nlu: 5\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "nlu.yml:1: \"nlu\" must be a list of entries, found a number"
        );
        let e = parse_str("nlu:\n- just text\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("nlu.yml:2: nlu entry must be a mapping"),
            "{e}"
        );
    }

    #[test]
    fn yaml_syntax_error_has_line() {
        let e =
            parse_str("nlu:\n- intent: price\n  examples: |\n    - a\n  bad: [1\n").unwrap_err();
        assert!(e.to_string().starts_with("nlu.yml:"), "{e}");
        assert!(e.message.starts_with("invalid YAML"), "{e}");
    }

    #[test]
    fn bad_regex_names_line_and_problem() {
        let e =
            parse_str("nlu:\n- regex: order\n  examples: |\n    - \\d+\n    - (abc\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("nlu.yml:5: in regex 'order': invalid regex '(abc': "),
            "{e}"
        );
    }

    #[test]
    fn empty_document_contributes_nothing() {
        let ds = parse_str("# nothing yet\n").unwrap();
        assert_eq!(ds, Dataset::default());
        assert_eq!(parse_str("nlu:\n").unwrap(), Dataset::default());
    }

    #[test]
    fn entity_annotations() {
        let strip = |t: &str| strip_entity_annotations(t).0;
        assert_eq!(strip("[保温杯](product)多少钱"), "保温杯多少钱");
        assert_eq!(strip("买[两个]{\"entity\": \"n\"}[杯子](p)"), "买两个杯子");
        assert_eq!(strip("[微笑][呲牙]好"), "[微笑][呲牙]好");
        assert_eq!(strip("[a](b"), "[a](b");
        assert_eq!(strip("[]()x"), "[]()x");
    }

    #[test]
    fn annotations_record_code_point_spans() {
        let (text, spans) = strip_entity_annotations(
            "😀[订单](x y)号[SO123](order_id)和[保温壶]{\"entity\": \"product\", \"value\": \"保温杯\"}[杯子](product:水杯)",
        );
        assert_eq!(text, "😀订单号SO123和保温壶杯子");
        let got: Vec<(&str, Option<&str>, usize, usize)> = spans
            .iter()
            .map(|s| (s.entity.as_str(), s.canonical.as_deref(), s.start, s.end))
            .collect();
        // `(x y)` is no entity type: stripped, not recorded.
        assert_eq!(
            got,
            vec![
                ("order_id", None, 4, 9),
                ("product", Some("保温杯"), 10, 13),
                ("product", Some("水杯"), 13, 15)
            ]
        );
    }

    #[test]
    fn examples_carry_entities_after_space_normalisation() {
        let ds = parse_str(
            "nlu:\n- intent: delivery_tracking\n  examples: |\n    - 订单   [ 2026112812345 ](order_id)   到哪了\n    - 查[保温杯](product)\n",
        )
        .unwrap();
        let e = &ds.examples[0];
        assert_eq!(e.text, "订单 2026112812345 到哪了");
        assert_eq!(
            e.entities,
            vec![AnnotatedEntity {
                entity: "order_id".into(),
                value: "2026112812345".into(),
                canonical: "2026112812345".into(),
                start: 3,
                end: 16,
            }]
        );
        let p = &ds.examples[1].entities[0];
        assert_eq!((p.start, p.end), (1, 4));
    }

    #[test]
    fn block_header_forms() {
        for ok in ["|", "|-", "|+", "|2", "|-2", "| # c", "|- # c"] {
            assert!(is_literal_block_header(ok), "{ok}");
        }
        for bad in [">", "\"- a\"", "", "|x", "|#c"] {
            assert!(!is_literal_block_header(bad), "{bad}");
        }
    }
}
