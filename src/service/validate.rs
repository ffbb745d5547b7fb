//! Request validation: every field checked against a stated limit, and every failure names the
//! field and the limit, so a bot developer can fix the call from the message alone.

use serde::{Deserialize, Serialize};

use super::requests::{ClassifyRequest, EventRequest, EventTypeIn};
use crate::policy::events::{EventInput, EventKind};
use crate::types::{MessageContext, UserInfo};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Characters (Unicode scalar values) in a message text.
    pub max_text_chars: usize,
    /// Bytes in an id field (bot_id, chat_id, message_id, user.id).
    pub max_id_bytes: usize,
    pub max_nickname_chars: usize,
    pub max_tags: usize,
    pub max_tag_chars: usize,
    /// Messages in one ClassifyBatch call.
    pub max_batch_requests: usize,
    /// How far in the future `sent_at_ms` / an event's `at_ms` may be (clock skew allowance).
    pub max_future_skew_ms: i64,
    /// How far in the past `sent_at_ms` / an event's `at_ms` may be (a bot catching up on a
    /// backlog). Records are dated by the server's receive time either way.
    pub max_past_skew_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_chars: 2000,
            max_id_bytes: 128,
            max_nickname_chars: 64,
            max_tags: 32,
            max_tag_chars: 32,
            max_batch_requests: 64,
            max_future_skew_ms: 24 * 3600 * 1000,
            max_past_skew_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// A field that failed validation; becomes gRPC INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        problem: problem.into(),
    }
}

/// An id field: required or not, at most `limits.max_id_bytes`, no control characters.
/// How an id the caller sent is shown in an error: at most 64 characters, control characters
/// escaped, with the full length when cut (never the whole of a 10 KB id).
pub fn shown(id: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    for c in id.chars().take(MAX) {
        if c.is_control() || crate::policy::variables::invisible(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    if id.chars().count() > MAX {
        out.push_str(&format!("\u{2026} ({} bytes)", id.len()));
    }
    out
}

pub fn check_id(
    field: &str,
    value: &str,
    required: bool,
    limits: &Limits,
) -> Result<(), InvalidField> {
    if value.trim().is_empty() {
        if required {
            return Err(invalid(field, "is required and must not be empty"));
        }
        return Ok(());
    }
    if value.len() > limits.max_id_bytes {
        return Err(invalid(
            field,
            format!(
                "is {} bytes, over the limit of {}",
                value.len(),
                limits.max_id_bytes
            ),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

pub fn check_text(field: &str, text: &str, limits: &Limits) -> Result<(), InvalidField> {
    // Zero-width spaces, NUL, bidi marks: nothing a person could have written or read.
    if text
        .chars()
        .all(|c| c.is_whitespace() || c.is_control() || crate::policy::variables::invisible(c))
    {
        return Err(invalid(
            field,
            "is empty or only whitespace / invisible characters",
        ));
    }
    let chars = text.chars().count();
    if chars > limits.max_text_chars {
        return Err(invalid(
            field,
            format!(
                "is {chars} characters, over the limit of {}",
                limits.max_text_chars
            ),
        ));
    }
    Ok(())
}

fn check_user(
    prefix: &str,
    user: Option<&UserInfo>,
    limits: &Limits,
) -> Result<UserInfo, InvalidField> {
    let Some(u) = user else {
        return Err(invalid(prefix, "is required (at least user.id)"));
    };
    check_id(&format!("{prefix}.id"), &u.id, true, limits)?;
    let nick_chars = u.nickname.chars().count();
    if nick_chars > limits.max_nickname_chars {
        return Err(invalid(
            format!("{prefix}.nickname"),
            format!(
                "is {nick_chars} characters, over the limit of {}",
                limits.max_nickname_chars
            ),
        ));
    }
    if u.tags.len() > limits.max_tags {
        return Err(invalid(
            format!("{prefix}.tags"),
            format!(
                "has {} tags, over the limit of {}",
                u.tags.len(),
                limits.max_tags
            ),
        ));
    }
    for (i, t) in u.tags.iter().enumerate() {
        if t.trim().is_empty() || t.chars().count() > limits.max_tag_chars {
            return Err(invalid(
                format!("{prefix}.tags[{i}]"),
                format!("must be 1..={} characters", limits.max_tag_chars),
            ));
        }
    }
    if u.city.chars().count() > limits.max_nickname_chars {
        return Err(invalid(
            format!("{prefix}.city"),
            format!(
                "is over the limit of {} characters",
                limits.max_nickname_chars
            ),
        ));
    }
    Ok(u.clone())
}

/// The bot id of a message or event: required, and one the server is configured for.
fn check_bot(
    bot_id: &str,
    limits: &Limits,
    known_bot: impl Fn(&str) -> bool,
) -> Result<(), InvalidField> {
    check_id("bot_id", bot_id, true, limits)?;
    if !known_bot(bot_id) {
        return Err(invalid(
            "bot_id",
            format!(
                "unknown bot '{}' (not in the server configuration)",
                shown(bot_id)
            ),
        ));
    }
    Ok(())
}

/// The caller's own time for a message or event: 0 (not given) or Unix ms within the window
/// around the server's time. It is kept as information only; records are dated by the server.
fn check_time(field: &str, ms: i64, now_ms: i64, limits: &Limits) -> Result<i64, InvalidField> {
    if ms == 0 {
        return Ok(0);
    }
    let window = || {
        format!(
            "the accepted window is {} ms before to {} ms after the server's time ({now_ms}); \
             send 0 to use the server's time",
            limits.max_past_skew_ms, limits.max_future_skew_ms
        )
    };
    if ms < 0 {
        return Err(invalid(
            field,
            "must be Unix milliseconds (>= 0; 0 means now)",
        ));
    }
    if ms > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(invalid(
            field,
            format!("{ms} is too far in the future: {}", window()),
        ));
    }
    if ms < now_ms.saturating_sub(limits.max_past_skew_ms) {
        return Err(invalid(
            field,
            format!("{ms} is too far in the past: {}", window()),
        ));
    }
    Ok(ms)
}

/// Validates a Classify request into the engine's message context. `known_bot` says whether
/// the bot id is configured.
pub fn classify_request(
    req: &ClassifyRequest,
    limits: &Limits,
    now_ms: i64,
    known_bot: impl Fn(&str) -> bool,
) -> Result<MessageContext, InvalidField> {
    check_bot(&req.bot_id, limits, known_bot)?;
    check_id("chat_id", &req.chat_id, true, limits)?;
    check_id("message_id", &req.message_id, true, limits)?;
    check_text("text", &req.text, limits)?;
    if req.chat_name.chars().count() > limits.max_nickname_chars {
        return Err(invalid(
            "chat_name",
            format!(
                "is over the limit of {} characters",
                limits.max_nickname_chars
            ),
        ));
    }
    let user = check_user("user", req.user.as_ref(), limits)?;
    let sent_at_ms = check_time("sent_at_ms", req.sent_at_ms, now_ms, limits)?;
    Ok(MessageContext {
        bot_id: req.bot_id.clone(),
        chat_id: req.chat_id.clone(),
        chat_name: req.chat_name.clone(),
        message_id: req.message_id.clone(),
        text: req.text.clone(),
        at_ms: now_ms,
        sent_at_ms,
        user,
    })
}

/// Validates an event into the playbook's input.
pub fn event(
    ev: &EventRequest,
    limits: &Limits,
    now_ms: i64,
    known_bot: impl Fn(&str) -> bool,
) -> Result<EventInput, InvalidField> {
    check_bot(&ev.bot_id, limits, known_bot)?;
    check_id("chat_id", &ev.chat_id, true, limits)?;
    check_id("target_id", &ev.target_id, false, limits)?;
    check_id("event_id", &ev.event_id, false, limits)?;
    let kind = match &ev.kind {
        EventTypeIn::Known(k) => *k,
        EventTypeIn::Unknown(v) => {
            return Err(invalid("type", format!("unknown event type {v}")));
        }
        EventTypeIn::Missing => {
            return Err(invalid(
                "type",
                "must be set (MEMBER_JOINED, MEMBER_LEFT, LINK_CLICKED, CARD_SHARED or ACTIVITY)",
            ));
        }
    };
    let needs_user = kind != EventKind::Activity;
    let user = if needs_user || ev.user.is_some() {
        check_user("user", ev.user.as_ref(), limits)?
    } else {
        UserInfo::default()
    };
    if matches!(kind, EventKind::LinkClicked | EventKind::CardShared) && ev.target_id.is_empty() {
        return Err(invalid(
            "target_id",
            "is required for LINK_CLICKED and CARD_SHARED",
        ));
    }
    let sent_at_ms = check_time("at_ms", ev.at_ms, now_ms, limits)?;
    Ok(EventInput {
        bot_id: ev.bot_id.clone(),
        chat_id: ev.chat_id.clone(),
        chat_name: ev.chat_name.clone(),
        kind,
        user,
        target_id: ev.target_id.clone(),
        at_ms: now_ms,
        sent_at_ms,
        event_id: ev.event_id.clone(),
    })
}

/// The `at_ms` of a report (Feedback, ReportHumanReply): 0 or within the window around the
/// server's time; the record is dated by the server's time either way.
pub fn report_time(at_ms: i64, now_ms: i64, limits: &Limits) -> Result<i64, InvalidField> {
    check_time("at_ms", at_ms, now_ms, limits)?;
    Ok(now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> ClassifyRequest {
        ClassifyRequest {
            bot_id: "shop".into(),
            chat_id: "g1".into(),
            message_id: "m1".into(),
            text: text.into(),
            user: Some(UserInfo {
                id: "u1".into(),
                nickname: "小王".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(r: &ClassifyRequest) -> Result<MessageContext, InvalidField> {
        classify_request(r, &Limits::default(), 1_000, |b| b == "shop")
    }

    #[test]
    fn a_good_request_passes_and_zero_time_means_now() {
        let ctx = check(&req("怎么退款")).unwrap();
        assert_eq!(ctx.at_ms, 1_000);
        assert_eq!(ctx.user.nickname, "小王");
    }

    #[test]
    fn each_bad_field_is_named_with_its_limit() {
        assert_eq!(check(&req("  \n")).unwrap_err().field, "text");
        let long = "退".repeat(2001);
        let e = check(&req(&long)).unwrap_err();
        assert_eq!(e.field, "text");
        assert!(
            e.problem.contains("2001") && e.problem.contains("2000"),
            "{e}"
        );
        let mut r = req("hi");
        r.bot_id = "other".into();
        assert!(check(&r)
            .unwrap_err()
            .to_string()
            .starts_with("bot_id: unknown bot"));
        let mut r = req("hi");
        r.user = None;
        assert_eq!(check(&r).unwrap_err().field, "user");
        let mut r = req("hi");
        r.message_id = "x".repeat(129);
        assert!(check(&r).unwrap_err().problem.contains("128"));
        let mut r = req("hi");
        r.sent_at_ms = -5;
        assert_eq!(check(&r).unwrap_err().field, "sent_at_ms");
        let mut r = req("hi");
        r.user.as_mut().unwrap().tags = vec!["".into()];
        assert_eq!(check(&r).unwrap_err().field, "user.tags[0]");
    }

    #[test]
    fn records_go_by_the_server_clock_and_the_client_time_stays_in_its_window() {
        // Issue #12.1 (failed on main): sent_at_ms = 1 was accepted and dated the record 1970,
        // so the next purge erased it and its audit row.
        let now = 1_800_000_000_000;
        let limits = Limits::default();
        let check_at = |sent: i64| {
            let mut r = req("hi");
            r.sent_at_ms = sent;
            classify_request(&r, &limits, now, |b| b == "shop")
        };
        let e = check_at(1).unwrap_err();
        assert_eq!(e.field, "sent_at_ms");
        assert!(
            e.problem.starts_with("1 is too far in the past: the accepted window is 604800000 ms before to 86400000 ms after the server's time (1800000000000)"),
            "{e}"
        );
        let e = check_at(now + limits.max_future_skew_ms + 1).unwrap_err();
        assert!(e.problem.contains("too far in the future"), "{e}");
        let sent = now - 3_600_000;
        let ctx = check_at(sent).unwrap();
        assert_eq!((ctx.at_ms, ctx.sent_at_ms), (now, sent));
        let ctx = check_at(0).unwrap();
        assert_eq!((ctx.at_ms, ctx.sent_at_ms), (now, 0));
        assert_eq!(report_time(now - 1, now, &limits), Ok(now));
        assert_eq!(report_time(1, now, &limits).unwrap_err().field, "at_ms");
    }

    #[test]
    fn invisible_only_text_is_refused_like_blank_text() {
        // Issue #12.5 (failed on main): U+200B or NUL alone passed as a message.
        for t in [
            "\u{200B}",
            "\0",
            "\u{200B}\u{FEFF} \u{202E}\u{2060}",
            "\u{200D}\n",
        ] {
            let e = check(&req(t)).unwrap_err();
            assert_eq!(e.field, "text", "{t:?}");
            assert!(e.problem.contains("invisible"), "{e}");
        }
        assert!(check(&req("\u{200B}退款")).is_ok());
    }

    #[test]
    fn ids_in_errors_are_cut_and_escaped() {
        assert_eq!(shown("店铺\u{202E}a"), "店铺\\u{202e}a");
        let s = shown(&"b".repeat(10_000));
        assert!(
            s.starts_with(&"b".repeat(64)) && s.ends_with("(10000 bytes)"),
            "{s}"
        );
        assert!(s.len() < 100);
    }

    #[test]
    fn exactly_at_the_limit_is_accepted() {
        assert!(check(&req(&"退".repeat(2000))).is_ok());
    }
}
