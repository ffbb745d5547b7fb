//! `text<TAB>label` lines, with an optional `text<TAB>label` header.

use std::path::Path;

use super::{make_example, Example, FileError};

pub(super) fn parse(path: &Path, text: &str, out: &mut Vec<Example>) -> Result<(), FileError> {
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let first = !seen_content;
        seen_content = true;
        let cols: Vec<&str> = line.split('\t').collect();
        if first && cols.len() == 2 && is_header(cols[0], cols[1]) {
            continue;
        }
        if cols.len() != 2 {
            return Err(FileError::at_line(
                path,
                lineno,
                format!(
                    "expected 2 tab-separated columns (text, label), found {}",
                    cols.len()
                ),
            ));
        }
        out.push(make_example(path, lineno, cols[0], cols[1])?);
    }
    Ok(())
}

fn is_header(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case("text")
        && (b.trim().eq_ignore_ascii_case("label") || b.trim().eq_ignore_ascii_case("intent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(body: &str) -> Result<Vec<Example>, FileError> {
        let mut out = Vec::new();
        parse(Path::new("train.tsv"), body, &mut out).map(|_| out)
    }

    #[test]
    fn reads_rows_with_and_without_header() {
        let rows = parse_str("text\tlabel\n多少钱\tprice\r\n\n 你好 \tgreeting\n").unwrap();
        let got: Vec<(&str, &str, usize)> = rows
            .iter()
            .map(|e| (e.text.as_str(), e.label.as_str(), e.origin.line))
            .collect();
        assert_eq!(got, vec![("多少钱", "price", 2), ("你好", "greeting", 4)]);
        let rows = parse_str("多少钱\tprice\n").unwrap();
        assert_eq!(rows.len(), 1);
        let rows = parse_str("\nTEXT\tintent\n贵吗\tprice\n").unwrap();
        assert_eq!(rows[0].origin.line, 3);
    }

    #[test]
    fn header_only_in_first_line() {
        let rows = parse_str("好\tgreeting\ntext\tlabel\n").unwrap();
        assert_eq!(rows[1].text, "text");
    }

    #[test]
    fn wrong_column_count_names_line_and_count() {
        let e = parse_str("多少钱\tprice\n多少钱 price\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "train.tsv:2: expected 2 tab-separated columns (text, label), found 1"
        );
        let e = parse_str("a\tb\tc\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "train.tsv:1: expected 2 tab-separated columns (text, label), found 3"
        );
    }

    #[test]
    fn empty_text_or_label() {
        assert_eq!(
            parse_str("好\tgreeting\n \tprice\n")
                .unwrap_err()
                .to_string(),
            "train.tsv:2: empty text"
        );
        assert_eq!(
            parse_str("多少钱\t \n").unwrap_err().to_string(),
            "train.tsv:1: empty label"
        );
    }
}
