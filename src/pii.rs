//! PII redaction, applied before anything is stored or logged (the store uses it too).
//!
//! Recognised, in this order (an earlier kind wins where matches overlap):
//! - e-mail addresses → `[EMAIL]`
//! - 18-character mainland ID card numbers (17 digits + digit or `X`, with a plausible
//!   birth date) → `[ID]`
//! - bank card numbers, 16–19 digits, optionally grouped by spaces or dashes, passing the Luhn
//!   check → `[BANK_CARD]`
//! - mainland mobile numbers (`1[3-9]` + 9 digits, optional `+86`, optional separators) →
//!   `[PHONE]`
//!
//! A number is only redacted when it is not part of a longer digit run, so order numbers and
//! the like stay readable.

use regex::Regex;
use std::sync::OnceLock;

struct Patterns {
    email: Regex,
    id: Regex,
    bank: Regex,
    phone: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        email: Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
            .expect("email regex"),
        id: Regex::new(r"[0-9]{17}[0-9Xx]").expect("id regex"),
        bank: Regex::new(r"[0-9](?:[ \-]?[0-9]){15,18}").expect("bank regex"),
        phone: Regex::new(r"(?:\+?86[ \-]?)?1[3-9][0-9](?:[ \-]?[0-9]){8}").expect("phone regex"),
    })
}

fn digit_at(s: &str, i: usize) -> bool {
    s.as_bytes().get(i).is_some_and(|b| b.is_ascii_digit())
}

fn digit_before(s: &str, i: usize) -> bool {
    i > 0 && digit_at(s, i - 1)
}

fn isolated(s: &str, start: usize, end: usize) -> bool {
    !digit_before(s, start) && !digit_at(s, end)
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn plausible_id(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let year = num(6..10);
    let month = num(10..12);
    let day = num(12..14);
    (1900..=2099).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// Replace mobile numbers, ID card numbers, bank card numbers and e-mail addresses.
pub fn redact_pii(text: &str) -> String {
    let p = patterns();
    let mut spans: Vec<(usize, usize, &'static str)> = Vec::new();
    let free = |spans: &[(usize, usize, &str)], s: usize, e: usize| {
        spans.iter().all(|&(a, b, _)| e <= a || s >= b)
    };

    for m in p.email.find_iter(text) {
        spans.push((m.start(), m.end(), "[EMAIL]"));
    }
    for m in p.id.find_iter(text) {
        let (s, e) = (m.start(), m.end());
        if isolated(text, s, e) && plausible_id(m.as_str()) && free(&spans, s, e) {
            spans.push((s, e, "[ID]"));
        }
    }
    for m in p.bank.find_iter(text) {
        // The regex is greedy; try the longest prefix that ends on a digit boundary and passes
        // Luhn (a card number followed by " 100" must still be found).
        let s = m.start();
        if digit_before(text, s) {
            continue;
        }
        let piece = m.as_str();
        let ends: Vec<usize> = piece
            .char_indices()
            .filter(|(_, c)| c.is_ascii_digit())
            .map(|(i, _)| s + i + 1)
            .collect();
        for n in (16..=19).rev() {
            let Some(&e) = ends.get(n - 1) else { continue };
            if digit_at(text, e) {
                continue;
            }
            let digits: Vec<u8> = text[s..e].bytes().filter(|b| b.is_ascii_digit()).collect();
            if luhn(&digits) && free(&spans, s, e) {
                spans.push((s, e, "[BANK_CARD]"));
                break;
            }
        }
    }
    for m in p.phone.find_iter(text) {
        let (s, e) = (m.start(), m.end());
        if isolated(text, s, e) && free(&spans, s, e) {
            spans.push((s, e, "[PHONE]"));
        }
    }

    spans.sort_by_key(|&(s, _, _)| s);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e, tag) in spans {
        out.push_str(&text[at..s]);
        out.push_str(tag);
        at = e;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mobile_numbers() {
        assert_eq!(
            redact_pii("我的电话13812345678，谢谢"),
            "我的电话[PHONE]，谢谢"
        );
        assert_eq!(redact_pii("打 +86 138-1234-5678 找我"), "打 [PHONE] 找我");
        assert_eq!(redact_pii("138 1234 5678"), "[PHONE]");
        // Part of a longer number (an order id): left alone.
        assert_eq!(
            redact_pii("订单号2013812345678999"),
            "订单号2013812345678999"
        );
        // 12 is not a mobile prefix.
        assert_eq!(redact_pii("12812345678"), "12812345678");
    }

    #[test]
    fn id_cards_including_x() {
        assert_eq!(redact_pii("身份证11010519491231002X"), "身份证[ID]");
        assert_eq!(
            redact_pii("身份证 110105194912310021 请核对"),
            "身份证 [ID] 请核对"
        );
    }

    #[test]
    fn bank_cards_need_luhn() {
        // 4111 1111 1111 1111 is the classic Luhn-valid test number.
        assert_eq!(redact_pii("卡号4111111111111111"), "卡号[BANK_CARD]");
        assert_eq!(
            redact_pii("卡号 4111 1111 1111 1111 金额100"),
            "卡号 [BANK_CARD] 金额100"
        );
        assert_eq!(redact_pii("卡号4111-1111-1111-1111"), "卡号[BANK_CARD]");
        assert_eq!(redact_pii("4111111111111111 100"), "[BANK_CARD] 100");
        // Luhn fails: not a card.
        assert_eq!(redact_pii("编号4111111111111112"), "编号4111111111111112");
        // 19-digit card (Luhn-valid).
        assert_eq!(redact_pii("6222021234567890128"), "[BANK_CARD]");
    }

    #[test]
    fn email() {
        assert_eq!(
            redact_pii("邮箱 zhang.san+shop@example.com.cn 收"),
            "邮箱 [EMAIL] 收"
        );
    }

    #[test]
    fn several_kinds_and_plain_text() {
        assert_eq!(
            redact_pii("电话13912345678 邮箱a@b.cn 卡4111111111111111"),
            "电话[PHONE] 邮箱[EMAIL] 卡[BANK_CARD]"
        );
        assert_eq!(redact_pii("这个多少钱？要3件"), "这个多少钱？要3件");
        assert_eq!(redact_pii(""), "");
    }
}
