//! The platform's size limit for a passive text reply: 2,048 bytes of UTF-8 `Content`. A
//! longer reply is either cut (one message, ending in an ellipsis) or split into several
//! messages (the first as the passive reply, the rest through the send-message API). Both cut
//! at a character boundary, so no character is ever broken; splitting prefers a line break or
//! a sentence end in the second half of a piece.

use std::borrow::Cow;

/// Largest passive text reply `Content`, in bytes.
pub const PASSIVE_TEXT_MAX_BYTES: usize = 2048;

/// The longest UTF-8 character; limits below it are raised to it so progress is always made.
const MIN_LIMIT: usize = 4;

/// The largest char boundary of `s` at or below `max`.
fn floor_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// `text` if it fits in `max_bytes`, otherwise its longest prefix that fits together with
/// `ellipsis` (e.g. "…"), followed by it.
pub fn cut<'a>(text: &'a str, max_bytes: usize, ellipsis: &str) -> Cow<'a, str> {
    let max_bytes = max_bytes.max(MIN_LIMIT);
    if text.len() <= max_bytes {
        return Cow::Borrowed(text);
    }
    if ellipsis.len() >= max_bytes {
        return Cow::Borrowed(&text[..floor_boundary(text, max_bytes)]);
    }
    let end = floor_boundary(text, max_bytes - ellipsis.len());
    Cow::Owned(format!("{}{ellipsis}", text[..end].trim_end()))
}

/// `text` in pieces of at most `max_bytes` each, in order; concatenated they give `text` back.
pub fn split(text: &str, max_bytes: usize) -> Vec<&str> {
    let max_bytes = max_bytes.max(MIN_LIMIT);
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max_bytes {
        let hard = floor_boundary(rest, max_bytes);
        // A natural break in the second half of the piece, if there is one.
        let soft = rest[..hard]
            .char_indices()
            .rev()
            .take_while(|&(i, _)| i >= hard / 2)
            .find(|&(_, c)| matches!(c, '\n' | '。' | '！' | '？' | '；' | '!' | '?' | '.'))
            .map(|(i, c)| i + c.len_utf8());
        let at = soft.unwrap_or(hard);
        out.push(&rest[..at]);
        rest = &rest[at..];
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched() {
        assert!(matches!(cut("你好", 2048, "…"), Cow::Borrowed("你好")));
        assert_eq!(split("你好", 2048), vec!["你好"]);
        assert_eq!(split("", 2048), vec![""]);
    }

    #[test]
    fn cut_stays_within_the_limit_at_a_char_boundary() {
        let text = "退".repeat(1000); // 3,000 bytes
        let c = cut(&text, PASSIVE_TEXT_MAX_BYTES, "…");
        assert!(c.len() <= PASSIVE_TEXT_MAX_BYTES, "{}", c.len());
        assert!(c.ends_with('…'));
        // 2,048 - 3 (the ellipsis) = 2,045 -> 681 whole characters (2,043 bytes).
        assert_eq!(c.chars().count(), 682);
        // Mixed widths: never a broken character, whatever the limit.
        let mixed = "a好😀".repeat(300);
        for max in [1, 4, 5, 6, 7, 100, 2047, 2048] {
            let c = cut(&mixed, max, "…");
            assert!(c.len() <= max.max(4), "max {max}: {}", c.len());
        }
    }

    #[test]
    fn split_pieces_fit_rejoin_and_prefer_sentence_ends() {
        let sentence = "签收七天内支持无理由退货。";
        let text = sentence.repeat(200); // 39 bytes each, 7,800 bytes
        let parts = split(&text, PASSIVE_TEXT_MAX_BYTES);
        assert!(parts.len() >= 4);
        assert!(parts.iter().all(|p| p.len() <= PASSIVE_TEXT_MAX_BYTES));
        assert_eq!(parts.concat(), text);
        assert!(
            parts[..parts.len() - 1].iter().all(|p| p.ends_with('。')),
            "{parts:?}"
        );
        // No break in sight: a hard cut at a char boundary.
        let emoji = "😀".repeat(1000);
        let parts = split(&emoji, 2048);
        assert!(parts.iter().all(|p| p.len() <= 2048 && !p.is_empty()));
        assert_eq!(parts.concat(), emoji);
        // Degenerate limits still make progress.
        assert_eq!(split("😀😀", 1).concat(), "😀😀");
    }
}
