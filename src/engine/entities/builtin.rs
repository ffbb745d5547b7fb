//! Built-in patterns: order numbers, phone numbers and amounts of money.
//!
//! - `order_id`: 8–24 digits (optionally after 1–4 letters) following 订单 / 订单号 / 单号 /
//!   订单编号, or a bare run of 16–24 digits; canonical: the characters with full-width digits
//!   made ASCII.
//! - `phone`: mainland mobiles (`1[3-9]` + 9 digits, optional `+86`, spaces or dashes),
//!   landlines (`010-12345678`) and `400` numbers; canonical: the digits only (no `+86`).
//!   Phone values are personal data: the service redacts them in what it stores and logs
//!   (see `crate::pii`).
//! - `amount`: `¥1,299.5`, `99元`, `99块钱`, `1.5万元`, `三百块`, `RMB 20`; canonical: a
//!   decimal number without grouping or trailing zeros (`1299.5`, `15000`, `300`). More than
//!   [`MAX_AMOUNT_DIGITS`] integer digits is not an amount.
//!
//! A digit run is only a number when the characters around it are not digits too, so a
//! phone number is never read out of the middle of a longer number.

use std::sync::OnceLock;

use regex::Regex;

use super::{ascii_digits, char_after, char_before, chinese_numbers, is_digit, rank, Candidate};
use crate::types::EntitySource;

pub const BUILTIN_TYPES: [&str; 6] = ["order_id", "phone", "amount", "date", "time", "datetime"];

/// Amounts with more integer digits than this are not amounts (nobody pays 10^15 yuan; a longer
/// run is an id or noise).
pub const MAX_AMOUNT_DIGITS: usize = 15;

struct Patterns {
    order_after_word: Regex,
    long_digits: Regex,
    mobile: Regex,
    landline: Regex,
    hotline: Regex,
    amount_prefix: Regex,
    amount_suffix: Regex,
    amount_chinese: Regex,
}

const D: &str = "[0-9０-９]";

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |p: &str| Regex::new(&p.replace("{D}", D)).expect("built-in entity pattern");
        let num = r"(?:{D}{1,3}(?:[,，]{D}{3})+|{D}+)(?:[.．]{D}+)?";
        let cn = super::chinese_numbers::NUMERAL_CHARS;
        Patterns {
            order_after_word: re(
                r"(?:订单|单号)(?:号|编号)?(?:是|为)?\s*[:：]?\s*([A-Za-z]{0,4}{D}{8,24})",
            ),
            long_digits: re(r"{D}{16,24}"),
            mobile: re(r"(?:\+?86[ \-]?)?[1１][3-9３-９]{D}(?:[ \-]?{D}){8}"),
            landline: re(r"0[1-9]{D}{1,2}-{D}{7,8}"),
            hotline: re(r"400-?{D}{3}-?{D}{4}"),
            amount_prefix: re(&format!(
                r"(?:[¥￥]|(?i:rmb)|人民币)\s*({num})(?:\s*([万千]))?(?:元|块)?"
            )),
            amount_suffix: re(&format!(
                r"({num})\s*([万千])?\s*(?:元|块钱|块|圆|(?i:rmb)|人民币)"
            )),
            amount_chinese: Regex::new(&format!(r"([{cn}]+)\s*(?:元|块钱|块|圆)"))
                .expect("built-in entity pattern"),
        }
    })
}

pub(super) fn find(text: &str, out: &mut Vec<Candidate>) {
    let p = patterns();
    let push = |out: &mut Vec<Candidate>,
                entity: &str,
                s: usize,
                e: usize,
                canonical: String,
                rank: u8| {
        out.push(Candidate {
            entity: entity.to_string(),
            start: s,
            end: e,
            canonical,
            source: EntitySource::Builtin,
            rank,
        })
    };

    for c in p.order_after_word.captures_iter(text) {
        let m = c.get(1).expect("group 1");
        if digit_bounded(text, m.start(), m.end()) {
            push(
                out,
                "order_id",
                m.start(),
                m.end(),
                ascii_digits(m.as_str()),
                rank::ORDER,
            );
        }
    }
    for m in p.long_digits.find_iter(text) {
        // `9999999999999999元` is a (too large) amount, not an order number.
        let unit_after = char_after(text, m.end()).is_some_and(|c| "元块万千".contains(c));
        if digit_bounded(text, m.start(), m.end()) && !letter_before(text, m.start()) && !unit_after
        {
            push(
                out,
                "order_id",
                m.start(),
                m.end(),
                ascii_digits(m.as_str()),
                rank::ORDER,
            );
        }
    }

    for re in [&p.mobile, &p.landline, &p.hotline] {
        for m in re.find_iter(text) {
            if digit_bounded(text, m.start(), m.end()) {
                let digits: String = ascii_digits(m.as_str())
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect();
                let digits = match digits.strip_prefix("86") {
                    Some(rest) if rest.len() == 11 && rest.starts_with('1') => rest.to_string(),
                    _ => digits,
                };
                push(out, "phone", m.start(), m.end(), digits, rank::PHONE);
            }
        }
    }

    for re in [&p.amount_prefix, &p.amount_suffix] {
        for c in re.captures_iter(text) {
            let whole = c.get(0).expect("group 0");
            let num = c.get(1).expect("group 1");
            if digit_before_is(text, num.start()) {
                continue;
            }
            let scale = match c.get(2).map(|m| m.as_str()) {
                Some("万") => 4,
                Some("千") => 3,
                _ => 0,
            };
            if let Some(v) = decimal(&ascii_digits(num.as_str()), scale) {
                push(out, "amount", whole.start(), whole.end(), v, rank::AMOUNT);
            }
        }
    }
    for c in p.amount_chinese.captures_iter(text) {
        let whole = c.get(0).expect("group 0");
        let num = c.get(1).expect("group 1");
        // 一块儿 is "together", not one yuan.
        if char_after(text, whole.end()) == Some('儿') {
            continue;
        }
        if let Some(v) = chinese_numbers::parse(num.as_str()) {
            push(
                out,
                "amount",
                whole.start(),
                whole.end(),
                v.to_string(),
                rank::AMOUNT,
            );
        }
    }
}

fn digit_before_is(text: &str, i: usize) -> bool {
    char_before(text, i).is_some_and(is_digit)
}

fn digit_bounded(text: &str, start: usize, end: usize) -> bool {
    !digit_before_is(text, start) && !char_after(text, end).is_some_and(is_digit)
}

fn letter_before(text: &str, i: usize) -> bool {
    char_before(text, i).is_some_and(|c| c.is_ascii_alphabetic())
}

/// `1,299.50` × 10^`scale` as a plain decimal (`1299.5`); None past [`MAX_AMOUNT_DIGITS`].
fn decimal(num: &str, scale: usize) -> Option<String> {
    let num: String = num.chars().filter(|&c| c != ',').collect();
    let (int, frac) = num.split_once('.').unwrap_or((&num, ""));
    let mut digits = format!("{int}{frac}");
    let mut point = int.len() + scale;
    while digits.len() < point {
        digits.push('0');
    }
    let (int, frac) = digits.split_at(point);
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    point = int.len();
    if point > MAX_AMOUNT_DIGITS {
        return None;
    }
    let int = if int.is_empty() { "0" } else { int };
    Some(if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        find(text, &mut out);
        let mut kept = super::super::resolve_overlaps(out);
        kept.sort_by_key(|c| c.start);
        kept.into_iter()
            .map(|c| (c.entity, text[c.start..c.end].to_string(), c.canonical))
            .collect()
    }

    fn one(entity: &str, value: &str, canonical: &str) -> Vec<(String, String, String)> {
        vec![(entity.into(), value.into(), canonical.into())]
    }

    #[test]
    fn order_numbers_after_a_word_or_long_runs() {
        assert_eq!(
            found("订单号：202612011234 还没到"),
            one("order_id", "202612011234", "202612011234")
        );
        assert_eq!(
            found("我的订单是 SO12345678"),
            one("order_id", "SO12345678", "SO12345678")
        );
        assert_eq!(
            found("查一下3672849182736451923"),
            one("order_id", "3672849182736451923", "3672849182736451923")
        );
        // 订单号 + 11 digits starting with 1: the order reading is longer? same span, so the
        // order rank wins over the phone one.
        assert_eq!(
            found("订单号13812345678"),
            one("order_id", "13812345678", "13812345678")
        );
        assert_eq!(found("订单很多"), vec![]);
        // A 30-digit run is neither an order number nor a phone number.
        assert_eq!(found(&"1".repeat(30)), vec![]);
    }

    #[test]
    fn phones_mobile_landline_hotline() {
        assert_eq!(
            found("电话13812345678"),
            one("phone", "13812345678", "13812345678")
        );
        assert_eq!(
            found("打 +86 138-1234-5678 找我"),
            one("phone", "+86 138-1234-5678", "13812345678")
        );
        assert_eq!(
            found("座机010-87654321"),
            one("phone", "010-87654321", "01087654321")
        );
        assert_eq!(
            found("客服400-123-4567"),
            one("phone", "400-123-4567", "4001234567")
        );
        assert_eq!(
            found("全角１３８１２３４５６７８"),
            one("phone", "１３８１２３４５６７８", "13812345678")
        );
        // Part of a longer number: not a phone.
        assert_eq!(found("1381234567890").len(), 0);
    }

    #[test]
    fn amounts_arabic_chinese_and_scaled() {
        assert_eq!(found("99元"), one("amount", "99元", "99"));
        assert_eq!(found("¥1,299.5"), one("amount", "¥1,299.5", "1299.5"));
        assert_eq!(found("￥ 12.50 包邮吗"), one("amount", "￥ 12.50", "12.5"));
        assert_eq!(found("三百块能买吗"), one("amount", "三百块", "300"));
        assert_eq!(found("预算1.5万元"), one("amount", "1.5万元", "15000"));
        assert_eq!(found("才20块钱"), one("amount", "20块钱", "20"));
        assert_eq!(found("RMB 88"), one("amount", "RMB 88", "88"));
        assert_eq!(found("0.5元"), one("amount", "0.5元", "0.5"));
    }

    #[test]
    fn huge_amounts_are_not_amounts() {
        assert_eq!(found(&format!("{}元", "9".repeat(16))), vec![]);
        assert_eq!(
            found(&format!("{}元", "9".repeat(15))),
            one("amount", &format!("{}元", "9".repeat(15)), &"9".repeat(15))
        );
        assert_eq!(found(&format!("{}元", "9".repeat(5000))), vec![]);
        assert_eq!(found("一亿亿亿亿亿亿块"), vec![]);
    }

    #[test]
    fn decimal_normalises() {
        assert_eq!(decimal("1,299.50", 0).as_deref(), Some("1299.5"));
        assert_eq!(decimal("007", 0).as_deref(), Some("7"));
        assert_eq!(decimal("0.0", 0).as_deref(), Some("0"));
        assert_eq!(decimal("1.25", 4).as_deref(), Some("12500"));
        assert_eq!(decimal("3", 3).as_deref(), Some("3000"));
    }
}
