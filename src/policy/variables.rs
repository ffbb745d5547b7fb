//! Template variables users chose (nicknames, group names) are cleaned before they reach a
//! reply, and every variable has a fallback for when it comes out empty.
//!
//! A nickname is whatever a WeChat user typed: control characters (NUL, ESC), line breaks, bidi
//! overrides (U+202E turns the rest of the reply around), zero-width characters or `@所有人`.
//! Rendered verbatim they break or hijack the bot's message in front of the whole group. So
//! each user-chosen value is cleaned: control, bidi and zero-width characters removed, line
//! breaks and odd spaces turned into one space, `@` removed (a reply never mentions anyone by
//! accident), PII redacted, and the length capped (`max_chars`, with an ellipsis).
//!
//! The fallbacks and caps are operator data, in `replies.yml`:
//! ```yaml
//! variables:
//!   nickname:   { fallback: ..., max_chars: 20 }
//!   group_name: { fallback: ..., max_chars: 30 }
//!   greeting:   { fallback: ... }
//! ```
//! A variable without a configured fallback renders empty when it has no value (`{festival}`
//! on ordinary days is meant to).

use std::sync::Arc;

use super::templates::Fallbacks;

/// Default caps when `replies.yml` sets none (WeChat allows longer names than a reply needs).
pub const DEFAULT_NICKNAME_MAX_CHARS: usize = 20;
pub const DEFAULT_GROUP_NAME_MAX_CHARS: usize = 30;
/// The highest cap an operator may set.
pub const MAX_CHARS_LIMIT: usize = 200;

/// The `variables` section of `replies.yml`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct VariableRules {
    pub fallbacks: Arc<Fallbacks>,
    pub nickname_max_chars: usize,
    pub group_name_max_chars: usize,
}

impl Default for VariableRules {
    fn default() -> Self {
        Self {
            fallbacks: Arc::default(),
            nickname_max_chars: DEFAULT_NICKNAME_MAX_CHARS,
            group_name_max_chars: DEFAULT_GROUP_NAME_MAX_CHARS,
        }
    }
}

impl VariableRules {
    pub fn nickname(&self, raw: &str) -> String {
        clean_user_text(raw, self.nickname_max_chars)
    }

    pub fn group_name(&self, raw: &str) -> String {
        clean_user_text(raw, self.group_name_max_chars)
    }
}

/// Characters that change how the text around them is shown without being visible: bidi
/// embeddings, overrides, isolates and marks, zero-width spaces and joiners, the BOM.
pub fn invisible(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Whitespace other than a plain space, including WeChat's mention separator (U+2005) and
/// the line / paragraph separators: shown as one space.
fn spacing(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Cleans one user-chosen value for a reply: see the module comment. Idempotent for values
/// within the cap.
pub fn clean_user_text(raw: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(4 * max_chars + 8));
    let mut pending_space = false;
    for c in raw.chars() {
        if spacing(c) {
            pending_space = !out.is_empty();
            continue;
        }
        if c.is_control() || invisible(c) || c == '@' || c == '\u{FF20}' {
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    // Redact before capping, so a phone number is never cut into a visible half; and after,
    // because cutting a longer digit run can leave a phone-shaped one (found by proptest).
    let redacted = crate::pii::redact_pii(&out);
    crate::pii::redact_pii(&cap_chars(&redacted, max_chars))
}

/// Longest entity value a reply repeats, in characters.
pub const ENTITY_MAX_CHARS: usize = 40;

/// What a reply shows for each entity of the message: the canonical value of lookup and
/// synonym entities (`保温壶` → `保温杯`), the text as written for the others (`周五`, `¥99`,
/// `SO123`); cleaned like a nickname (the message is user text: a phone number shows as
/// `[PHONE]`, `@` and control characters go, at most [`ENTITY_MAX_CHARS`]).
pub fn entity_values(entities: &[crate::types::Entity]) -> Vec<(String, String)> {
    use crate::types::EntitySource;
    entities
        .iter()
        .map(|e| {
            let shown = match e.source {
                EntitySource::Lookup | EntitySource::Synonym => &e.canonical,
                EntitySource::Builtin | EntitySource::Regex => &e.value,
            };
            (e.entity.clone(), clean_user_text(shown, ENTITY_MAX_CHARS))
        })
        .collect()
}

/// At most `max` characters; a longer text keeps `max - 1` and ends with an ellipsis.
fn cap_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.truncate(out.trim_end().len());
    out.push('\u{2026}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::templates::Var;

    // Each of these went into replies verbatim before the cleaning existed (issue #12.4).
    #[test]
    fn control_bidi_and_zero_width_characters_are_removed() {
        assert_eq!(clean_user_text("小\0王\u{1b}[31m", 20), "小王[31m");
        assert_eq!(clean_user_text("abc\u{202E}fed", 20), "abcfed");
        assert_eq!(
            clean_user_text("\u{2066}王\u{2069}\u{200B}\u{FEFF}姐", 20),
            "王姐"
        );
        assert_eq!(clean_user_text("\u{7f}\u{85}x", 20), "x");
    }

    #[test]
    fn line_breaks_and_odd_spaces_become_one_space() {
        assert_eq!(
            clean_user_text("小王\n\r\n系统通知：", 20),
            "小王 系统通知："
        );
        assert_eq!(
            clean_user_text("  a\t\u{2028}b\u{3000}\u{2005}c  ", 20),
            "a b c"
        );
    }

    #[test]
    fn mentions_are_neutralised() {
        assert_eq!(clean_user_text("@所有人 紧急", 20), "所有人 紧急");
        assert_eq!(clean_user_text("＠所有人", 20), "所有人");
        assert!(!clean_user_text("a@b@@c\u{2005}", 20).contains('@'));
    }

    #[test]
    fn pii_is_redacted_before_the_cap() {
        assert_eq!(clean_user_text("王姐13812345678", 20), "王姐[PHONE]");
        // Capping first would have left "王姐1381234…" visible.
        assert_eq!(clean_user_text("王姐13812345678", 6), "王姐[PH\u{2026}");
    }

    #[test]
    fn long_values_are_capped_with_an_ellipsis() {
        let long = "长".repeat(500);
        let c = clean_user_text(&long, 20);
        assert_eq!(c.chars().count(), 20);
        assert!(c.ends_with('\u{2026}'));
        assert_eq!(clean_user_text("abc", 3), "abc");
        assert_eq!(clean_user_text("ab cd", 4), "ab\u{2026}");
    }

    #[test]
    fn cleaning_is_idempotent_and_may_leave_nothing() {
        for s in ["\u{202E}\0@\n", "", "   "] {
            assert_eq!(clean_user_text(s, 20), "", "{s:?}");
        }
        let once = clean_user_text("\u{202E}小王 @大家\n好", 20);
        assert_eq!(clean_user_text(&once, 20), once);
    }

    #[test]
    fn fallbacks_are_per_variable() {
        let mut f = Fallbacks::default();
        f.set(Var::GroupName, "G".into());
        assert_eq!(f.get(Var::GroupName), "G");
        assert_eq!(f.get(Var::Nickname), "");
    }
}
