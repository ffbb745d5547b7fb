//! Chinese numerals as written in chat: `三百`, `一千二百五十`, `两万`, `十二`, `二十五`,
//! `一百零八`. Checked arithmetic: a numeral too large for u64 is not a number.

/// The value of a numeral made only of 零〇一二两三四五六七八九十百千万亿, or None when it is
/// not well formed (`百三`, empty) or too large.
pub(crate) fn parse(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0; // finished 亿 / 万 groups
    let mut section: u64 = 0; // below 万
    let mut digit: Option<u64> = None;
    let mut last_unit = u64::MAX;
    for c in s.chars() {
        if let Some(d) = digit_value(c) {
            if digit.is_some_and(|x| x != 0) {
                // "三五" is not a numeral we read (ambiguous: 3-5).
                return None;
            }
            digit = Some(d);
            continue;
        }
        let unit = unit_value(c)?;
        match unit {
            10 | 100 | 1000 => {
                if unit >= last_unit && last_unit < 10_000 {
                    return None; // 百三百, 十百
                }
                // "十二" = 12: a leading 十 means one ten.
                let d = digit.take().unwrap_or(1);
                section = section.checked_add(d.checked_mul(unit)?)?;
                last_unit = unit;
            }
            _ => {
                // 万 / 亿 close a group.
                let group = section.checked_add(digit.take().unwrap_or(0))?;
                if group == 0 && total == 0 {
                    return None;
                }
                total = if unit == 100_000_000 {
                    total.checked_add(group)?.checked_mul(unit)?
                } else {
                    total.checked_add(group.checked_mul(unit)?)?
                };
                section = 0;
                last_unit = u64::MAX;
            }
        }
    }
    total.checked_add(section)?.checked_add(digit.unwrap_or(0))
}

fn digit_value(c: char) -> Option<u64> {
    Some(match c {
        '零' | '〇' => 0,
        '一' => 1,
        '二' | '两' => 2,
        '三' => 3,
        '四' => 4,
        '五' => 5,
        '六' => 6,
        '七' => 7,
        '八' => 8,
        '九' => 9,
        _ => return None,
    })
}

fn unit_value(c: char) -> Option<u64> {
    Some(match c {
        '十' => 10,
        '百' => 100,
        '千' => 1000,
        '万' => 10_000,
        '亿' => 100_000_000,
        _ => return None,
    })
}

/// The characters `parse` reads, for building patterns.
pub(crate) const NUMERAL_CHARS: &str = "零〇一二两三四五六七八九十百千万亿";

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_common_numerals() {
        for (s, v) in [
            ("三", 3),
            ("十", 10),
            ("十二", 12),
            ("二十五", 25),
            ("三百", 300),
            ("一百零八", 108),
            ("两千", 2000),
            ("一千二百五十", 1250),
            ("两万", 20_000),
            ("三万五千", 35_000),
            ("一亿", 100_000_000),
            ("十万", 100_000),
            ("零", 0),
        ] {
            assert_eq!(parse(s), Some(v), "{s}");
        }
    }

    #[test]
    fn refuses_malformed_and_huge() {
        for s in ["", "百三百", "三五", "十百", "万", "块", "一亿亿亿亿亿亿"] {
            assert_eq!(parse(s), None, "{s}");
        }
        assert_eq!(parse("九"), Some(9));
    }
}
