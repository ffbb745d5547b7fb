//! YAML helpers for `file:line` errors.
//!
//! serde gives a line only for syntax and shape errors (unknown key, wrong type). Range and
//! cross-reference checks happen after deserialising, so `line_of` finds the line of a value by
//! walking the block-style YAML text by indentation along a path of keys and list indices. It is
//! best effort: when a segment cannot be found, the line of the deepest segment found is used.

use serde::de::DeserializeOwned;
use std::path::Path;

use super::PolicyError;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Idx(usize),
}

struct Line {
    num: usize,
    /// Column of the first token (dash or key).
    start: usize,
    /// Columns of the `- ` sequence markers at the start of the line.
    dashes: Vec<usize>,
    /// Column and name of the mapping key on this line.
    key: Option<(usize, String)>,
}

fn scan(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let mut col = raw.len() - trimmed.len();
        let start = col;
        let mut rest = trimmed;
        let mut dashes = Vec::new();
        while rest == "-" || rest.starts_with("- ") {
            dashes.push(col);
            let after = &rest[1..];
            let t = after.trim_start();
            col += 1 + (after.len() - t.len());
            rest = t;
        }
        let key = key_of(rest).map(|k| (col, k));
        out.push(Line {
            num: i + 1,
            start,
            dashes,
            key,
        });
    }
    out
}

fn key_of(s: &str) -> Option<String> {
    if s.starts_with('{') || s.starts_with('[') || s.is_empty() {
        return None;
    }
    let (k, quoted) = if let Some(r) = s.strip_prefix('"') {
        (r.split('"').next()?, true)
    } else if let Some(r) = s.strip_prefix('\'') {
        (r.split('\'').next()?, true)
    } else {
        let end = s
            .find(": ")
            .or_else(|| s.strip_suffix(':').map(|x| x.len()))?;
        (&s[..end], false)
    };
    if quoted {
        let after = &s[k.len() + 2..];
        if !after.trim_start().starts_with(':') {
            return None;
        }
    }
    Some(k.trim().to_string())
}

/// 1-based line of the value at `path` (best effort, see module doc).
pub(crate) fn line_of(text: &str, path: &[Seg<'_>]) -> usize {
    let lines = scan(text);
    let mut lo = 0usize;
    let mut hi = lines.len();
    let mut parent: isize = -1;
    let mut best = 1usize;
    for seg in path {
        match *seg {
            Seg::Key(k) => {
                let m = lines[lo..hi]
                    .iter()
                    .filter_map(|l| l.key.as_ref().map(|(c, _)| *c))
                    .filter(|c| *c as isize > parent)
                    .min();
                let Some(m) = m else { return best };
                let Some(i) = (lo..hi)
                    .find(|&i| matches!(&lines[i].key, Some((c, name)) if *c == m && name == k))
                else {
                    return best;
                };
                best = lines[i].num;
                let end = (i + 1..hi)
                    .find(|&j| {
                        let l = &lines[j];
                        let first_dash_at_m = l.dashes.first() == Some(&m);
                        l.start < m || (l.start == m && !first_dash_at_m)
                    })
                    .unwrap_or(hi);
                lo = i + 1;
                hi = end;
                parent = m as isize;
            }
            Seg::Idx(n) => {
                let d = lines[lo..hi]
                    .iter()
                    .filter_map(|l| l.dashes.iter().copied().find(|c| *c as isize >= parent))
                    .min();
                let Some(d) = d else { return best };
                let items: Vec<usize> =
                    (lo..hi).filter(|&i| lines[i].dashes.contains(&d)).collect();
                let Some(&i) = items.get(n) else { return best };
                best = lines[i].num;
                hi = items.get(n + 1).copied().unwrap_or(hi);
                lo = i;
                parent = d as isize;
            }
        }
    }
    best
}

/// Deserialise a whole YAML file; shape errors (unknown keys, wrong types) become
/// `file:line: problem`.
pub(crate) fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, PolicyError> {
    if text.trim().is_empty() {
        return Err(PolicyError::config(file, 1, "file is empty"));
    }
    serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(1);
        let mut msg = e.to_string();
        if let Some(p) = msg.rfind(" at line ") {
            msg.truncate(p);
        }
        PolicyError::config(file, line, msg)
    })
}

#[cfg(test)]
mod tests {
    use super::Seg::*;
    use super::*;

    const DOC: &str = "\
defaults:
  spacing:
    min_interval_s: 15
  schedules:
    - id: morning
      cron: \"0 9 * * *\"
    - id: evening
      cron: bad
bots:
  bot_a:
    groups:
      g1:
        spacing:
          min_interval_s: 90
";

    #[test]
    fn finds_nested_keys_and_list_items() {
        assert_eq!(
            line_of(
                DOC,
                &[Key("defaults"), Key("spacing"), Key("min_interval_s")]
            ),
            3
        );
        assert_eq!(
            line_of(
                DOC,
                &[Key("defaults"), Key("schedules"), Idx(1), Key("cron")]
            ),
            8
        );
        assert_eq!(
            line_of(DOC, &[Key("defaults"), Key("schedules"), Idx(0)]),
            5
        );
        assert_eq!(
            line_of(
                DOC,
                &[
                    Key("bots"),
                    Key("bot_a"),
                    Key("groups"),
                    Key("g1"),
                    Key("spacing"),
                    Key("min_interval_s")
                ]
            ),
            14
        );
        // Missing segment: deepest found.
        assert_eq!(line_of(DOC, &[Key("bots"), Key("bot_a"), Key("nope")]), 10);
    }

    #[test]
    fn shape_errors_carry_the_line() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            a: u32,
        }
        let err = parse::<S>(Path::new("x.yml"), "a: 1\nb: 2\n").unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("x.yml:2: unknown field `b`"), "{s}");
    }
}
