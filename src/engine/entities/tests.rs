//! The extractors together: overlaps, code-point offsets, bad input.

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use std::path::Path;

use super::*;
use crate::data::{Lookup, Origin, Synonym};

fn now() -> DateTime<Tz> {
    chrono_tz::Asia::Shanghai
        .with_ymd_and_hms(2026, 11, 28, 10, 0, 0)
        .unwrap()
}

fn extractor() -> EntityExtractor {
    let o = Origin::new(Path::new("nlu.yml"), 1);
    let nlu = Dataset {
        lookups: vec![Lookup {
            name: "product".into(),
            elements: vec!["保温杯".into(), "蓝牙耳机".into()],
            origin: o.clone(),
        }],
        synonyms: vec![Synonym {
            canonical: "保温杯".into(),
            variants: vec!["保温壶".into(), "VIP88".into()],
            origin: o,
        }],
        ..Dataset::default()
    };
    let operator = OperatorEntities::parse(
        Path::new("entities.yml"),
        "entities:\n  - name: coupon_code\n    patterns: ['QUAN[0-9]{6}', 'VIP[0-9]{2}']\n",
        &["product"],
    )
    .unwrap();
    EntityExtractor::from_parts(&nlu, operator)
}

fn brief(text: &str) -> Vec<(String, String, String, usize, usize)> {
    extractor()
        .extract(text, now())
        .into_iter()
        .map(|e| (e.entity, e.value, e.canonical, e.start, e.end))
        .collect()
}

#[test]
fn offsets_are_code_points_in_mixed_text() {
    let text = "Hi😀，订单号 2026112812345 的保温杯明天到吗？电话13812345678";
    let got = extractor().extract(text, now());
    let chars: Vec<char> = text.chars().collect();
    for e in &got {
        let slice: String = chars[e.start..e.end].iter().collect();
        assert_eq!(slice, e.value, "{e:?}");
    }
    let kinds: Vec<(&str, usize, usize)> = got
        .iter()
        .map(|e| (e.entity.as_str(), e.start, e.end))
        .collect();
    // "Hi😀，" is 4 code points (the emoji is one, though 4 bytes in UTF-8 and 2 in UTF-16).
    assert_eq!(
        kinds,
        vec![
            ("order_id", 8, 21),
            ("product", 23, 26),
            ("date", 26, 28),
            ("phone", 33, 44)
        ]
    );
}

#[test]
fn longest_then_most_specific_wins() {
    // The order reading (after 订单号) and the phone reading cover the same digits: order wins.
    assert_eq!(
        brief("订单号13812345678"),
        vec![(
            "order_id".into(),
            "13812345678".into(),
            "13812345678".into(),
            3,
            14
        )]
    );
    // The datetime is longer than the date and the time inside it.
    assert_eq!(brief("周五晚上8点").len(), 1);
    // An operator regex beats a lookup synonym of the same span...
    assert_eq!(
        brief("VIP88"),
        vec![("coupon_code".into(), "VIP88".into(), "保温杯".into(), 0, 5)]
    );
    // ...and a longer lookup term beats nothing shorter inside it.
    assert_eq!(brief("蓝牙耳机").len(), 1);
}

#[test]
fn synonyms_give_the_canonical_value() {
    let got = extractor().extract("保温壶漏水", now());
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0].value.as_str(),
            got[0].canonical.as_str(),
            got[0].source
        ),
        ("保温壶", "保温杯", EntitySource::Synonym)
    );
}

#[test]
fn types_lists_builtin_lookup_and_operator() {
    let t = extractor().types();
    for want in [
        "order_id",
        "phone",
        "amount",
        "date",
        "time",
        "datetime",
        "product",
        "coupon_code",
    ] {
        assert!(t.iter().any(|x| x == want), "{want} in {t:?}");
    }
}

#[test]
fn bad_input_never_panics() {
    let x = extractor();
    let long = "订单号12345678901234 明天 ¥99 保温杯 😀 ".repeat(2_000);
    let got = x.extract(&long, now());
    assert_eq!(got.len(), 2_000 * 4);
    assert_eq!(got.last().unwrap().end, long.chars().count() - 3);
    for text in [
        "",
        "😀😀😀",
        "\u{202E}\0\u{FEFF}",
        "ﾃｽﾄ١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧元",
        "2月30日",
        &"9".repeat(100_000),
        &"号".repeat(10_000),
        &"周".repeat(10_000),
        "𝟏𝟑𝟖𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖",
        "Русский текст 3月5日 عربى",
    ] {
        let got = x.extract(text, now());
        for e in &got {
            assert!(
                e.start < e.end && e.end <= text.chars().count(),
                "{text:?}: {e:?}"
            );
        }
    }
    assert!(x.extract("2月30日", now()).is_empty());
    assert!(x.extract(&"9".repeat(100_000), now()).is_empty());
}

#[test]
fn the_same_input_gives_the_same_entities() {
    let x = extractor();
    let text = "下周三下午3点前把保温壶寄到，¥1,299.5，订单号SO20261128";
    assert_eq!(x.extract(text, now()), x.extract(text, now()));
}
