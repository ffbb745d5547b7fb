//! Reply preview for operators: render the variants of one reply set with a sample user, group
//! and local date-time, exactly as the playbook renders them (the same variable cleaning,
//! greeting slots, festival calendar and fallbacks), and run the banned-word check on each
//! result. Variables a real send fills from its context (candidates, wait minutes, opening
//! time, countdown) get fixed sample values.

use chrono::NaiveDateTime;

use super::config::OperatorConfig;
use super::templates::Vars;

/// The sample context of a preview.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub nickname: String,
    pub group_name: String,
    /// Local date and time of the send (greeting slot and festival).
    pub at: NaiveDateTime,
}

/// One rendered variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// `<key>/<id>`, as in answers and A/B reports.
    pub variant_id: String,
    pub style: String,
    pub template: String,
    pub text: String,
    /// The banned word the rendered text contains: the playbook would not send it.
    pub banned: Option<String>,
}

/// Sample values of the variables that come from the send's context.
pub const SAMPLE_CANDIDATES: [&str; 2] = ["退货", "换货"];
pub const SAMPLE_WAIT_MINUTES: &str = "10";
pub const SAMPLE_OPEN_TIME: &str = "09:00";
pub const SAMPLE_DAYS_LEFT: &str = "3";
pub const SAMPLE_EVENT_NAME: &str = "双十一";

/// The variables as the playbook would fill them for `sample`.
pub fn sample_vars(cfg: &OperatorConfig, sample: &Sample) -> Vars {
    let lib = &cfg.replies;
    let v = &lib.variables;
    Vars {
        fallbacks: v.fallbacks.clone(),
        nickname: v.nickname(&sample.nickname),
        group_name: v.group_name(&sample.group_name),
        greeting: lib.greetings.at(sample.at.time()).to_string(),
        festival: cfg.calendar.greeting_on(sample.at.date()).to_string(),
        candidates: SAMPLE_CANDIDATES.join(&lib.list_separator),
        wait_minutes: SAMPLE_WAIT_MINUTES.into(),
        open_time: SAMPLE_OPEN_TIME.into(),
        days_left: SAMPLE_DAYS_LEFT.into(),
        event_name: SAMPLE_EVENT_NAME.into(),
        entities: Vec::new(),
    }
}

/// Renders the variants of `key` (only `variant` when given; only those of `style` when it is
/// not empty). Err names what does not exist.
pub fn preview(
    cfg: &OperatorConfig,
    key: &str,
    variant: &str,
    style: &str,
    sample: &Sample,
) -> Result<Vec<Rendered>, String> {
    let lib = &cfg.replies;
    if !lib.has(key) {
        return Err(format!("there is no reply set '{key}' in replies.yml"));
    }
    if !style.is_empty() && !lib.styles.iter().any(|s| s == style) {
        return Err(format!(
            "style '{style}' is not one of replies.yml's styles ({})",
            lib.styles.join(", ")
        ));
    }
    let vars = sample_vars(cfg, sample);
    let chosen: Vec<_> = lib
        .variants(key)
        .iter()
        .filter(|v| variant.is_empty() || v.id == variant)
        .filter(|v| style.is_empty() || v.style == style)
        .collect();
    if chosen.is_empty() {
        return Err(if variant.is_empty() {
            format!("reply set '{key}' has no variant of style '{style}'")
        } else {
            format!("reply set '{key}' has no variant '{variant}' of that style")
        });
    }
    Ok(chosen
        .into_iter()
        .map(|v| {
            let text = v.template.render(&vars);
            Rendered {
                variant_id: format!("{key}/{}", v.id),
                style: v.style.clone(),
                template: v.template.source().to_string(),
                banned: cfg.banned.find(&text).map(str::to_string),
                text,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn shipped() -> OperatorConfig {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let catalog =
            crate::engine::catalog::Catalog::load(&root.join("config/operator/intents.yml"))
                .unwrap();
        OperatorConfig::load(&root.join("config/operator"), &catalog).unwrap()
    }

    fn sample(nickname: &str) -> Sample {
        Sample {
            nickname: nickname.into(),
            group_name: "潮鞋交流群".into(),
            at: "2026-11-25T10:00:00".parse().unwrap(),
        }
    }

    #[test]
    fn renders_like_the_playbook_and_flags_banned_words() {
        let cfg = shipped();
        let out = preview(&cfg, "welcome", "", "", &sample("小王")).unwrap();
        assert!(!out.is_empty());
        assert!(out.iter().all(|r| r.variant_id.starts_with("welcome/")));
        assert!(out.iter().any(|r| r.text.contains("小王")), "{out:?}");
        assert!(out.iter().all(|r| r.banned.is_none()), "{out:?}");
        assert!(out.iter().all(|r| !r.text.contains('{')), "{out:?}");
        // A banned word arriving through the nickname is caught on the rendered text.
        let word = cfg.banned.find("加微信").map(str::to_string);
        if let Some(word) = word {
            let out = preview(&cfg, "welcome", "", "", &sample(&word)).unwrap();
            assert!(
                out.iter()
                    .filter(|r| r.template.contains("{nickname}"))
                    .all(|r| r.banned.is_some()),
                "{out:?}"
            );
        }
    }

    #[test]
    fn unknown_sets_styles_and_variants_are_named() {
        let cfg = shipped();
        let s = sample("小王");
        assert!(preview(&cfg, "nope", "", "", &s)
            .unwrap_err()
            .contains("'nope'"));
        assert!(preview(&cfg, "welcome", "", "loud", &s)
            .unwrap_err()
            .contains("style 'loud'"));
        assert!(preview(&cfg, "welcome", "zz", "", &s)
            .unwrap_err()
            .contains("no variant 'zz'"));
    }
}
