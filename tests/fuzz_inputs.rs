//! Property tests (proptest) for what untrusted input reaches: request validation, reply
//! templates and the cleaning of user-chosen names. Each property runs a bounded number of
//! generated cases (see `CASES`), so `cargo test` stays bounded in time; a failure prints the
//! smallest input that breaks it.

use intentd::policy::templates::{Template, Var, Vars};
use intentd::policy::variables::{clean_user_text, invisible};
use intentd::service::requests::ClassifyRequest;
use intentd::service::validate::{classify_request, Limits};
use intentd::types::UserInfo;
use proptest::prelude::*;

const CASES: u32 = 10_000;
const NOW: i64 = 1_795_572_000_000;

/// Text that is hostile on purpose: controls, bidi and zero-width characters, mentions, braces,
/// digits that look like phone numbers, CJK, surrogate-free random Unicode.
fn nasty_text(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\u{202E}".to_string()),
        Just("\u{200B}".to_string()),
        Just("\0".to_string()),
        Just("\u{1b}[2J".to_string()),
        Just("@所有人".to_string()),
        Just("＠".to_string()),
        Just("{nickname}".to_string()),
        Just("{{".to_string()),
        Just("}".to_string()),
        Just("\n".to_string()),
        Just("13812345678".to_string()),
        Just("退款".to_string()),
        "[\\u{4e00}-\\u{4e20}]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..max).prop_map(|v| v.concat())
}

fn request() -> impl Strategy<Value = ClassifyRequest> {
    (
        prop_oneof![Just("shop".to_string()), nasty_text(4)],
        nasty_text(6),
        nasty_text(6),
        prop_oneof![nasty_text(30), "[\\u{4e00}-\\u{4e20}]{2000,2002}"],
        prop_oneof![
            Just(0i64),
            any::<i64>(),
            (NOW - 10_000_000_000..NOW + 10_000_000_000)
        ],
        proptest::option::of((
            nasty_text(6),
            nasty_text(6),
            prop::collection::vec(nasty_text(3), 0..40),
        )),
        nasty_text(8),
    )
        .prop_map(
            |(bot_id, chat_id, message_id, text, sent_at_ms, user, chat_name)| ClassifyRequest {
                bot_id,
                chat_id,
                chat_name,
                message_id,
                text,
                sent_at_ms,
                user: user.map(|(id, nickname, tags)| UserInfo {
                    id,
                    nickname,
                    tags,
                    ..Default::default()
                }),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    /// Validation never panics, and what it accepts is within every limit.
    #[test]
    fn validation_accepts_only_what_fits_the_limits(req in request()) {
        let limits = Limits::default();
        match classify_request(&req, &limits, NOW, |b| b == "shop") {
            Ok(ctx) => {
                prop_assert_eq!(ctx.bot_id.as_str(), "shop");
                prop_assert!(ctx.text.chars().count() <= limits.max_text_chars);
                prop_assert!(ctx.text.chars().any(|c| !c.is_whitespace() && !c.is_control() && !invisible(c)));
                for id in [&ctx.chat_id, &ctx.message_id, &ctx.user.id] {
                    prop_assert!(!id.trim().is_empty() && id.len() <= limits.max_id_bytes);
                    prop_assert!(!id.chars().any(char::is_control));
                }
                prop_assert_eq!(ctx.at_ms, NOW);
                prop_assert!(ctx.sent_at_ms == 0
                    || (NOW - limits.max_past_skew_ms..=NOW + limits.max_future_skew_ms).contains(&ctx.sent_at_ms));
            }
            Err(e) => {
                prop_assert!(!e.field.is_empty());
                prop_assert!(!e.problem.is_empty());
                // Errors never echo a huge value back.
                prop_assert!(e.to_string().len() < 400, "{}", e);
            }
        }
    }

    /// Cleaning removes what could break or hijack a reply, respects the cap, and is stable.
    #[test]
    fn cleaned_names_are_safe_capped_and_stable(raw in nasty_text(40), max in 1usize..40) {
        let clean = clean_user_text(&raw, max);
        prop_assert!(clean.chars().count() <= max);
        prop_assert!(!clean.chars().any(|c| c.is_control() || invisible(c) || c == '@' || c == '＠'));
        prop_assert_eq!(clean.trim(), clean.as_str());
        prop_assert_eq!(clean_user_text(&clean, max), clean.clone());
    }

    /// Parsing any operator text never panics; a template renders whatever the values are, and
    /// a text without braces renders as itself.
    #[test]
    fn templates_parse_and_render_anything(src in nasty_text(20), nick in nasty_text(10), group in nasty_text(10)) {
        if let Ok(t) = Template::parse(&src) {
            let vars = Vars {
                nickname: clean_user_text(&nick, 20),
                group_name: clean_user_text(&group, 30),
                ..Default::default()
            };
            let out = t.render(&vars);
            if !src.contains('{') && !src.contains('}') {
                prop_assert_eq!(out, src.clone());
            }
            for v in t.vars() {
                prop_assert!(Var::ALL.contains(&v));
            }
        }
    }
}
