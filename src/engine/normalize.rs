//! The one text normalisation shared by dictionary terms (at load) and messages (per call), so
//! both sides of every comparison look alike: NFKC (full-width letters, digits and punctuation
//! become ASCII: `ＶＸ` → `VX`), lower case (`VIP` = `vip`), whitespace runs → one space, trimmed.

use unicode_normalization::UnicodeNormalization;

pub fn normalize_for_matching(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.nfkc() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_width_case_and_spaces() {
        assert_eq!(
            normalize_for_matching("  加ＶＸ：Abc\u{3000}\t 好 "),
            "加vx:abc 好"
        );
        assert_eq!(normalize_for_matching("ＶＩＰ会员"), "vip会员");
        assert_eq!(normalize_for_matching(""), "");
        assert_eq!(normalize_for_matching("退款"), "退款");
    }
}
