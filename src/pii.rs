//! PII redaction: personal identifiers are replaced by a marker before any text is stored.
//!
//! Covers mainland mobile numbers (also written `138 1234 5678` / `138-1234-5678` / `+86…`),
//! 18-digit resident ID numbers, 16–19-digit bank card numbers (Luhn-valid, also in groups of
//! four) and e-mail addresses. Over-redacting an order number that happens to look like a card is
//! acceptable; leaking a real identifier is not, so the rules lean towards redacting.

use regex::Regex;
use std::sync::LazyLock;

pub const PHONE_MARK: &str = "[PHONE]";
pub const ID_CARD_MARK: &str = "[ID_CARD]";
pub const BANK_CARD_MARK: &str = "[BANK_CARD]";
pub const EMAIL_MARK: &str = "[EMAIL]";

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
        .expect("email regex")
});
/// A maximal run of ASCII digits, with the trailing `X` an ID number may end in.
static DIGIT_RUN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[0-9]+[Xx]?").expect("digits"));
/// Numbers people split with spaces or dashes: `138 1234 5678`, `6222 0212 3456 7890 123`.
static GROUPED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+?86[ \-]?)?[0-9]{3,4}(?:[ \-][0-9]{3,4}){2,4}").expect("grouped digits")
});

/// Returns `s` with phone numbers, ID numbers, bank cards and e-mail addresses replaced by
/// `[PHONE]`, `[ID_CARD]`, `[BANK_CARD]` and `[EMAIL]`.
pub fn redact_pii(s: &str) -> String {
    let s = EMAIL.replace_all(s, EMAIL_MARK);
    // Plain digit runs first, so a phone followed by ` 2份` is judged on its own digits.
    let s = replace_checked(&s, &DIGIT_RUN, classify_run);
    replace_checked(&s, &GROUPED, |m| {
        classify_run(&m.replace([' ', '-', '+'], ""))
    })
}

/// Replaces the matches of `re` that are not glued to further digits and that `classify`
/// recognises.
fn replace_checked(s: &str, re: &Regex, classify: impl Fn(&str) -> Option<&'static str>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for m in re.find_iter(s) {
        let before = s[..m.start()].chars().next_back();
        let after = s[m.end()..].chars().next();
        if before.is_some_and(|c| c.is_ascii_digit()) || after.is_some_and(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Some(mark) = classify(m.as_str()) {
            out.push_str(&s[last..m.start()]);
            out.push_str(mark);
            last = m.end();
        }
    }
    out.push_str(&s[last..]);
    out
}

fn classify_run(run: &str) -> Option<&'static str> {
    let digits = run
        .strip_prefix("86")
        .filter(|d| d.len() == 11)
        .unwrap_or(run);
    if is_mobile(digits) {
        return Some(PHONE_MARK);
    }
    if is_id_card(run) {
        return Some(ID_CARD_MARK);
    }
    if (16..=19).contains(&run.len()) && run.bytes().all(|b| b.is_ascii_digit()) && luhn_ok(run) {
        return Some(BANK_CARD_MARK);
    }
    None
}

/// Mainland mobile: 11 digits, `1` then 3–9.
fn is_mobile(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 11
        && b.iter().all(u8::is_ascii_digit)
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
}

/// Resident ID: 6-digit region (first digit 1–8), birth date YYYYMMDD (1900–2099), 3-digit
/// sequence, check character 0–9/X. The check digit is not verified: a mistyped ID is still PII.
fn is_id_card(d: &str) -> bool {
    let b = d.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    if !(b[17].is_ascii_digit() || b[17] == b'X' || b[17] == b'x') || !(b'1'..=b'8').contains(&b[0])
    {
        return false;
    }
    let num = |r: std::ops::Range<usize>| d[r].parse::<u32>().unwrap_or(0);
    let (year, month, day) = (num(6..10), num(10..12), num(12..14));
    (1900..=2099).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// The Luhn checksum every bank card number satisfies.
fn luhn_ok(d: &str) -> bool {
    let sum: u32 = d
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let v = u32::from(b - b'0');
            if i % 2 == 1 {
                let dbl = v * 2;
                if dbl > 9 {
                    dbl - 9
                } else {
                    dbl
                }
            } else {
                v
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mobiles_are_redacted_in_all_common_spellings() {
        assert_eq!(redact_pii("电话13812345678谢谢"), "电话[PHONE]谢谢");
        assert_eq!(redact_pii("打 138 1234 5678 找我"), "打 [PHONE] 找我");
        assert_eq!(redact_pii("138-1234-5678"), "[PHONE]");
        assert_eq!(redact_pii("+86 13812345678"), "+86 [PHONE]");
        assert_eq!(redact_pii("8613812345678"), "[PHONE]");
        assert_eq!(redact_pii("手机13812345678 2份"), "手机[PHONE] 2份");
    }

    #[test]
    fn numbers_that_are_not_phones_stay() {
        // 12 digits, 10 digits, a landline-free price: none of these is a mobile.
        assert_eq!(redact_pii("订单138123456789"), "订单138123456789");
        assert_eq!(redact_pii("价格1299元，库存12件"), "价格1299元，库存12件");
        assert_eq!(redact_pii("12812345678"), "12812345678");
    }

    #[test]
    fn id_cards_are_redacted_with_or_without_x() {
        assert_eq!(
            redact_pii("身份证11010519491231002X。"),
            "身份证[ID_CARD]。"
        );
        assert_eq!(redact_pii("id 110105194912310021"), "id [ID_CARD]");
        // Month 13 is no birth date and the number fails Luhn: left alone.
        assert_eq!(redact_pii("110105194913310021"), "110105194913310021");
    }

    #[test]
    fn bank_cards_need_a_valid_luhn_checksum() {
        assert!(luhn_ok("4111111111111111"));
        assert!(!luhn_ok("4111111111111112"));
        assert_eq!(redact_pii("卡号4111111111111111"), "卡号[BANK_CARD]");
        assert_eq!(redact_pii("卡号4111 1111 1111 1111吗"), "卡号[BANK_CARD]吗");
        assert_eq!(redact_pii("卡号4111111111111112"), "卡号4111111111111112");
        // 19 digits, Luhn-valid.
        assert!(luhn_ok("6212260200000000006"));
        assert_eq!(redact_pii("6212260200000000006"), "[BANK_CARD]");
    }

    #[test]
    fn emails_are_redacted() {
        assert_eq!(
            redact_pii("发到 zhang.san+vip@mail.example.com 吧"),
            "发到 [EMAIL] 吧"
        );
        assert_eq!(redact_pii("no at sign here"), "no at sign here");
    }

    #[test]
    fn several_identifiers_in_one_message() {
        let out = redact_pii("我叫张三，手机13912345678，邮箱a@b.cn，卡4111111111111111");
        assert_eq!(out, "我叫张三，手机[PHONE]，邮箱[EMAIL]，卡[BANK_CARD]");
    }
}
