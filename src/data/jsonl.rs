//! One JSON object per line: `{"text": ..., "intent": ...}` (`"label"` is accepted instead of
//! `"intent"`); other fields (ids, sources, timestamps of exported chats) are ignored.

use std::path::Path;

use serde_json::Value;

use super::{make_example, Example, FileError};

pub(super) fn parse(path: &Path, text: &str, out: &mut Vec<Example>) -> Result<(), FileError> {
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let err = |msg: String| FileError::at_line(path, lineno, msg);
        let value: Value = serde_json::from_str(line).map_err(|e| {
            let msg = e.to_string();
            // serde_json says "... at line 1 column 9"; the line is always 1 here.
            let msg = msg
                .split(" at line 1 column ")
                .next()
                .unwrap_or(&msg)
                .to_string();
            err(format!("invalid JSON: {msg} (column {})", e.column()))
        })?;
        let Value::Object(obj) = value else {
            return Err(err(
                "expected a JSON object with \"text\" and \"intent\"".into()
            ));
        };
        let field = |name: &str| -> Result<Option<&str>, FileError> {
            match obj.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(err(format!("field \"{name}\" must be a string"))),
            }
        };
        let text = field("text")?.ok_or_else(|| err("missing field \"text\"".into()))?;
        let label = match (field("intent")?, field("label")?) {
            (Some(a), Some(b)) if a.trim() != b.trim() => {
                return Err(err(format!(
                    "both \"intent\" ('{a}') and \"label\" ('{b}') given; use one"
                )));
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(err("missing field \"intent\"".into())),
        };
        out.push(make_example(path, lineno, text, label)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(body: &str) -> Result<Vec<Example>, FileError> {
        let mut out = Vec::new();
        parse(Path::new("a.jsonl"), body, &mut out).map(|_| out)
    }

    #[test]
    fn reads_intent_and_label_alias() {
        let rows = parse_str(
            "{\"text\": \"多少钱\", \"intent\": \"price\", \"id\": 7}\n\n{\"label\": \"greeting\", \"text\": \"你好\"}\n",
        )
        .unwrap();
        let got: Vec<(&str, &str, usize)> = rows
            .iter()
            .map(|e| (e.text.as_str(), e.label.as_str(), e.origin.line))
            .collect();
        assert_eq!(got, vec![("多少钱", "price", 1), ("你好", "greeting", 3)]);
    }

    #[test]
    fn missing_fields() {
        let e =
            parse_str("{\"text\":\"a\",\"intent\":\"x\"}\n{\"text\":\"a\"}\n{\"text\":\"b\"}\n")
                .unwrap_err();
        assert_eq!(e.to_string(), "a.jsonl:2: missing field \"intent\"");
        let e = parse_str("{\"intent\":\"x\"}\n").unwrap_err();
        assert_eq!(e.to_string(), "a.jsonl:1: missing field \"text\"");
    }

    #[test]
    fn wrong_types_and_bad_json() {
        assert_eq!(
            parse_str("{\"text\": 5, \"intent\": \"x\"}\n")
                .unwrap_err()
                .to_string(),
            "a.jsonl:1: field \"text\" must be a string"
        );
        assert_eq!(
            parse_str("[1, 2]\n").unwrap_err().to_string(),
            "a.jsonl:1: expected a JSON object with \"text\" and \"intent\""
        );
        let e = parse_str("{\"text\":\"a\",\"intent\":\"x\"}\n{\"text\": \"b\",\n").unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert!(e.message.starts_with("invalid JSON: "), "{e}");
        assert!(!e.message.contains("at line"), "{e}");
    }

    #[test]
    fn conflicting_alias_and_empty_values() {
        let e = parse_str("{\"text\":\"a\",\"intent\":\"x\",\"label\":\"y\"}\n").unwrap_err();
        assert_eq!(e.line(), Some(1));
        assert!(e.message.contains("both \"intent\""));
        assert!(parse_str("{\"text\":\"a\",\"intent\":\"x\",\"label\":\"x\"}\n").is_ok());
        assert_eq!(
            parse_str("{\"text\":\"  \",\"intent\":\"x\"}\n")
                .unwrap_err()
                .to_string(),
            "a.jsonl:1: empty text"
        );
        assert_eq!(
            parse_str("{\"text\":\"a\",\"intent\":\"\"}\n")
                .unwrap_err()
                .to_string(),
            "a.jsonl:1: empty label"
        );
    }
}
