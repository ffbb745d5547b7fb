//! Fusion: one decision from the model's probabilities and the keyword layer's match.
//!
//! Order of trust:
//! 1. a `priority: always` rule (explicit requests for a human, unmistakable spam) wins outright;
//! 2. the model, when its top intent is both likely (≥ `threshold`) and clearly ahead of the
//!    runner-up (≥ `ambiguity_margin`);
//! 3. the keyword layer, when its best score reaches `keyword_min_score`; among its matches the
//!    one the model also has among its top candidates is preferred (two signals agreeing);
//! 4. otherwise the user is asked to clarify between the best candidates of both.
//!
//! Without a model only 1, 3 and 4 apply. Thresholds are configuration: they are calibrated on
//! held-out data, not guessed in code.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::types::{Classification, IntentScore, Source};

use super::keywords::KeywordMatch;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    /// Minimum model probability for the model to decide alone.
    pub threshold: f32,
    /// Minimum lead of the model's top intent over the second.
    pub ambiguity_margin: f32,
    /// Minimum keyword-layer score for the rules to decide when the model does not.
    pub keyword_min_score: f32,
    /// How many candidates a clarification offers (and how deep "the model's top candidates"
    /// reach when looking for agreement with the keyword layer).
    pub clarify_candidates: usize,
    /// Length of `ranking` when an intent was decided.
    pub top_k: usize,
    /// Candidates below this (merged) score are not offered for clarification.
    pub candidate_min_score: f32,
}

impl Default for FusionConfig {
    fn default() -> Self {
        FusionConfig {
            threshold: 0.5,
            ambiguity_margin: 0.1,
            // One plain rule scores 0.67, one rule plus a competing one 0.5: the latter is a tie.
            keyword_min_score: 0.55,
            clarify_candidates: 3,
            top_k: 5,
            candidate_min_score: 0.05,
        }
    }
}

impl FusionConfig {
    /// Checks ranges; the message names the field and its limits.
    pub fn validate(&self) -> Result<(), String> {
        let unit = [
            ("threshold", self.threshold),
            ("ambiguity_margin", self.ambiguity_margin),
            ("keyword_min_score", self.keyword_min_score),
            ("candidate_min_score", self.candidate_min_score),
        ];
        for (name, v) in unit {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("fusion.{name} must be between 0 and 1, found {v}"));
            }
        }
        if !(1..=27).contains(&self.clarify_candidates) {
            return Err(format!(
                "fusion.clarify_candidates must be between 1 and 27, found {}",
                self.clarify_candidates
            ));
        }
        if !(1..=100).contains(&self.top_k) {
            return Err(format!(
                "fusion.top_k must be between 1 and 100, found {}",
                self.top_k
            ));
        }
        Ok(())
    }
}

/// Decides the intent of one message. `model` holds softmax probabilities (`None` when no model
/// is loaded); `truncated` is left false for the caller to set.
pub fn fuse(
    model: Option<&[IntentScore]>,
    kw: &KeywordMatch,
    cfg: &FusionConfig,
) -> Classification {
    let model_loaded = model.is_some();
    let model = sanitized(model.unwrap_or(&[]));
    // The model's own view, kept for the decision trace whatever step decides.
    let model_ranking: Vec<IntentScore> = model.iter().take(cfg.top_k).cloned().collect();
    let kw_source = if kw.source == Source::Fallback {
        Source::Keyword
    } else {
        kw.source
    };
    let decided =
        |intent: &str, confidence: f32, ranking: Vec<IntentScore>, source: Source| Classification {
            intent: intent.to_string(),
            confidence,
            ranking,
            source,
            matched_terms: kw.matched_terms.clone(),
            needs_clarification: false,
            truncated: false,
            model_loaded,
            entities: Vec::new(),
            model_ranking: model_ranking.clone(),
        };

    if let Some((intent, _rule)) = &kw.always {
        let ranking = ranking_with_first(intent, 1.0, merged(&model, &kw.scores), cfg.top_k);
        return decided(intent, 1.0, ranking, kw_source);
    }

    if let Some(top) = model.first() {
        let second = model.get(1).map_or(0.0, |s| s.confidence);
        if top.confidence >= cfg.threshold && top.confidence - second >= cfg.ambiguity_margin {
            let ranking = model.iter().take(cfg.top_k).cloned().collect();
            return decided(&top.intent, top.confidence, ranking, Source::Model);
        }
    }

    let merged = merged(&model, &kw.scores);
    let strong: Vec<&IntentScore> = kw
        .scores
        .iter()
        .filter(|s| s.confidence >= cfg.keyword_min_score)
        .collect();
    if let Some(&first) = strong.first() {
        let model_top = &model[..model.len().min(cfg.clarify_candidates)];
        let agrees = |s: &&&IntentScore| {
            model_top
                .iter()
                .any(|m| m.intent == s.intent && m.confidence >= cfg.candidate_min_score)
        };
        let chosen = strong.iter().find(agrees).copied().unwrap_or(first);
        let confidence = merged
            .iter()
            .find(|m| m.intent == chosen.intent)
            .map_or(chosen.confidence, |m| m.confidence);
        let ranking = ranking_with_first(&chosen.intent, confidence, merged, cfg.top_k);
        return decided(&chosen.intent, confidence, ranking, kw_source);
    }

    let ranking: Vec<IntentScore> = merged
        .into_iter()
        .filter(|c| c.confidence >= cfg.candidate_min_score)
        .take(cfg.clarify_candidates)
        .collect();
    Classification {
        intent: String::new(),
        confidence: ranking.first().map_or(0.0, |c| c.confidence),
        ranking,
        source: Source::Fallback,
        matched_terms: kw.matched_terms.clone(),
        needs_clarification: true,
        truncated: false,
        model_loaded,
        entities: Vec::new(),
        model_ranking,
    }
}

/// Model scores with NaN/out-of-range values clamped, best first (the model should already sort;
/// a broken model must not break the decision).
fn sanitized(scores: &[IntentScore]) -> Vec<IntentScore> {
    let mut out: Vec<IntentScore> = scores
        .iter()
        .map(|s| IntentScore {
            intent: s.intent.clone(),
            confidence: if s.confidence.is_nan() {
                0.0
            } else {
                s.confidence.clamp(0.0, 1.0)
            },
        })
        .collect();
    out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    out
}

/// Both signals per intent, combined as independent evidence: 1 − (1 − p_model)(1 − p_keyword).
/// Best first; ties keep the model's order.
fn merged(model: &[IntentScore], kw: &[IntentScore]) -> Vec<IntentScore> {
    let mut out: Vec<IntentScore> = model.to_vec();
    let mut pos: HashMap<&str, usize> = model
        .iter()
        .enumerate()
        .map(|(i, s)| (s.intent.as_str(), i))
        .collect();
    for k in kw {
        let s = if k.confidence.is_nan() {
            0.0
        } else {
            k.confidence.clamp(0.0, 1.0)
        };
        match pos.get(k.intent.as_str()) {
            Some(&i) => out[i].confidence = 1.0 - (1.0 - out[i].confidence) * (1.0 - s),
            None => {
                pos.insert(&k.intent, out.len());
                out.push(IntentScore {
                    intent: k.intent.clone(),
                    confidence: s,
                });
            }
        }
    }
    out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    out
}

fn ranking_with_first(
    intent: &str,
    confidence: f32,
    others: Vec<IntentScore>,
    top_k: usize,
) -> Vec<IntentScore> {
    let mut ranking = Vec::with_capacity(top_k);
    ranking.push(IntentScore {
        intent: intent.to_string(),
        confidence,
    });
    ranking.extend(
        others
            .into_iter()
            .filter(|s| s.intent != intent)
            .take(top_k.saturating_sub(1)),
    );
    ranking
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(v: &[(&str, f32)]) -> Vec<IntentScore> {
        v.iter()
            .map(|&(i, c)| IntentScore {
                intent: i.to_string(),
                confidence: c,
            })
            .collect()
    }

    fn kw(v: &[(&str, f32)], terms: &[&str], source: Source) -> KeywordMatch {
        KeywordMatch {
            scores: scores(v),
            matched_terms: terms.iter().map(|t| t.to_string()).collect(),
            always: None,
            source,
        }
    }

    fn names(r: &[IntentScore]) -> Vec<&str> {
        r.iter().map(|s| s.intent.as_str()).collect()
    }

    fn cfg() -> FusionConfig {
        FusionConfig::default()
    }

    #[test]
    fn confident_model_decides() {
        let m = scores(&[("price", 0.8), ("coupon", 0.1), ("stock", 0.05)]);
        let k = kw(&[("refund", 0.67)], &["退款"], Source::Keyword);
        let c = fuse(Some(&m), &k, &cfg());
        assert_eq!(c.intent, "price");
        assert_eq!(c.confidence, 0.8);
        assert_eq!(c.source, Source::Model);
        assert_eq!(names(&c.ranking), vec!["price", "coupon", "stock"]);
        assert_eq!(c.matched_terms, vec!["退款"]);
        assert!(!c.needs_clarification && c.model_loaded && !c.truncated);
    }

    #[test]
    fn always_rule_overrides_a_confident_model() {
        let m = scores(&[("refund", 0.95), ("complaint", 0.03)]);
        let mut k = kw(
            &[("refund", 0.4), ("ask_human", 0.4)],
            &["转人工", "退款"],
            Source::Keyword,
        );
        k.always = Some(("ask_human".into(), "human_explicit".into()));
        let c = fuse(Some(&m), &k, &cfg());
        assert_eq!(c.intent, "ask_human");
        assert_eq!(c.confidence, 1.0);
        assert_eq!(c.source, Source::Keyword);
        assert_eq!(c.ranking[0].intent, "ask_human");
        assert_eq!(c.ranking[1].intent, "refund");
        assert!(!c.needs_clarification);

        k.source = Source::Regex;
        k.always = Some(("spam_ads".into(), "spam_contact".into()));
        let c = fuse(None, &k, &cfg());
        assert_eq!(
            (c.intent.as_str(), c.source, c.model_loaded),
            ("spam_ads", Source::Regex, false)
        );
    }

    #[test]
    fn ambiguity_without_keywords_asks_to_clarify() {
        // above threshold but within the margin
        let m = scores(&[
            ("refund", 0.52),
            ("exchange", 0.45),
            ("repair", 0.02),
            ("price", 0.01),
        ]);
        let c = fuse(Some(&m), &KeywordMatch::none(), &cfg());
        assert!(c.needs_clarification);
        assert_eq!(c.source, Source::Fallback);
        assert_eq!(c.intent, "");
        assert_eq!(
            names(&c.ranking),
            vec!["refund", "exchange"],
            "tiny candidates are not offered"
        );
        assert_eq!(c.confidence, 0.52);
        // clearly ahead but below the threshold
        let m = scores(&[
            ("refund", 0.40),
            ("exchange", 0.10),
            ("repair", 0.08),
            ("price", 0.07),
        ]);
        let c = fuse(Some(&m), &KeywordMatch::none(), &cfg());
        assert!(c.needs_clarification);
        assert_eq!(
            names(&c.ranking),
            vec!["refund", "exchange", "repair"],
            "at most clarify_candidates"
        );
    }

    #[test]
    fn keyword_agreeing_with_a_model_candidate_is_preferred() {
        let m = scores(&[("refund", 0.48), ("exchange", 0.42), ("repair", 0.05)]);
        let k = kw(
            &[("price", 0.7), ("exchange", 0.6)],
            &["价格", "换货"],
            Source::Keyword,
        );
        let c = fuse(Some(&m), &k, &cfg());
        assert_eq!(c.intent, "exchange");
        assert_eq!(c.source, Source::Keyword);
        let want = 1.0 - (1.0 - 0.42) * (1.0 - 0.6);
        assert!((c.confidence - want).abs() < 1e-6, "{}", c.confidence);
        assert_eq!(c.ranking[0].intent, "exchange");
        assert!(!c.needs_clarification);
    }

    #[test]
    fn strong_keyword_decides_when_model_is_unsure_and_disagrees() {
        let m = scores(&[
            ("chitchat", 0.3),
            ("greeting", 0.25),
            ("thanks", 0.2),
            ("price", 0.01),
        ]);
        let k = kw(
            &[("delivery_tracking", 0.67)],
            &["tracking_no"],
            Source::Regex,
        );
        let c = fuse(Some(&m), &k, &cfg());
        assert_eq!(c.intent, "delivery_tracking");
        assert_eq!(c.source, Source::Regex);
        assert!((c.confidence - 0.67).abs() < 1e-6);
        assert_eq!(
            names(&c.ranking),
            vec![
                "delivery_tracking",
                "chitchat",
                "greeting",
                "thanks",
                "price"
            ]
        );
    }

    #[test]
    fn the_models_own_ranking_is_kept_when_a_rule_overrides_it() {
        // An `always` rule overrides a confident model: the fused ranking starts with the
        // rule's intent, the model's ranking is what the model said, untouched.
        let m = scores(&[("refund", 0.95), ("complaint", 0.03), ("price", 0.02)]);
        let mut k = kw(&[("ask_human", 0.4)], &["转人工"], Source::Keyword);
        k.always = Some(("ask_human".into(), "human_explicit".into()));
        let c = fuse(Some(&m), &k, &cfg());
        assert_eq!(c.intent, "ask_human");
        assert_eq!(names(&c.ranking)[0], "ask_human");
        assert_eq!(c.model_ranking, m);
        assert_ne!(c.model_ranking, c.ranking);

        // A strong rule decides for an unsure model: merged scores differ from the model's.
        let m = scores(&[("chitchat", 0.3), ("refund", 0.2)]);
        let k = kw(&[("refund", 0.67)], &["退款"], Source::Keyword);
        let c = fuse(Some(&m), &k, &cfg());
        assert_eq!((c.intent.as_str(), c.source), ("refund", Source::Keyword));
        assert_eq!(names(&c.model_ranking), vec!["chitchat", "refund"]);
        assert!((c.model_ranking[1].confidence - 0.2).abs() < 1e-6);
        assert!(c.ranking[0].confidence > 0.67, "fused: {:?}", c.ranking);

        // The model's ranking is cut to top_k, sanitised and sorted like the fused one.
        let m = scores(&[("a", 0.1), ("b", f32::NAN), ("c", 0.5), ("d", 0.2)]);
        let small = FusionConfig { top_k: 2, ..cfg() };
        let c = fuse(Some(&m), &KeywordMatch::none(), &small);
        assert_eq!(c.model_ranking, scores(&[("c", 0.5), ("d", 0.2)]));

        // Without a model there is nothing to show.
        let c = fuse(None, &k, &cfg());
        assert!(c.model_ranking.is_empty());
    }

    #[test]
    fn weak_keyword_only_adds_candidates() {
        let m = scores(&[("price", 0.35), ("coupon", 0.3)]);
        let k = kw(&[("payment_methods", 0.5)], &["支付宝"], Source::Keyword);
        let c = fuse(Some(&m), &k, &cfg());
        assert!(c.needs_clarification);
        assert_eq!(
            names(&c.ranking),
            vec!["payment_methods", "price", "coupon"]
        );
        assert_eq!(c.matched_terms, vec!["支付宝"]);
    }

    #[test]
    fn without_a_model_rules_decide_alone() {
        let k = kw(&[("refund", 0.67)], &["退款"], Source::Keyword);
        let c = fuse(None, &k, &cfg());
        assert_eq!(
            (
                c.intent.as_str(),
                c.source,
                c.model_loaded,
                c.needs_clarification
            ),
            ("refund", Source::Keyword, false, false)
        );
        assert_eq!(c.ranking, scores(&[("refund", 0.67)]));

        let c = fuse(None, &KeywordMatch::none(), &cfg());
        assert_eq!(c.intent, "");
        assert_eq!(c.source, Source::Fallback);
        assert!(c.needs_clarification && !c.model_loaded);
        assert!(c.ranking.is_empty());
        assert_eq!(c.confidence, 0.0);

        let k = kw(
            &[("refund", 0.4), ("price", 0.4)],
            &["退款", "价格"],
            Source::Keyword,
        );
        let c = fuse(None, &k, &cfg());
        assert!(c.needs_clarification);
        assert_eq!(names(&c.ranking), vec!["refund", "price"]);
    }

    #[test]
    fn loaded_model_with_no_scores_behaves_like_rules_only_but_says_loaded() {
        let k = kw(&[("refund", 0.67)], &["退款"], Source::Keyword);
        let c = fuse(Some(&[]), &k, &cfg());
        assert_eq!(c.intent, "refund");
        assert!(c.model_loaded);
    }

    #[test]
    fn broken_model_scores_do_not_break_the_decision() {
        let m = scores(&[("price", f32::NAN), ("coupon", 0.9), ("stock", 7.0)]);
        let c = fuse(Some(&m), &KeywordMatch::none(), &cfg());
        // stock clamps to 1.0 and leads coupon by 0.1
        assert_eq!(c.intent, "stock");
        assert_eq!(c.confidence, 1.0);
        assert_eq!(c.ranking.last().unwrap().confidence, 0.0);
    }

    #[test]
    fn thresholds_come_from_config() {
        let m = scores(&[("price", 0.45), ("coupon", 0.2)]);
        let strict = fuse(Some(&m), &KeywordMatch::none(), &cfg());
        assert!(strict.needs_clarification);
        let lenient = FusionConfig {
            threshold: 0.4,
            ..cfg()
        };
        let c = fuse(Some(&m), &KeywordMatch::none(), &lenient);
        assert_eq!((c.intent.as_str(), c.source), ("price", Source::Model));
        let wide = FusionConfig {
            threshold: 0.4,
            ambiguity_margin: 0.3,
            ..cfg()
        };
        assert!(fuse(Some(&m), &KeywordMatch::none(), &wide).needs_clarification);
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: FusionConfig = serde_yaml_ng::from_str("threshold: 0.6\n").unwrap();
        assert_eq!(
            c,
            FusionConfig {
                threshold: 0.6,
                ..FusionConfig::default()
            }
        );
        assert!(serde_yaml_ng::from_str::<FusionConfig>("treshold: 0.6\n").is_err());
        assert!(FusionConfig::default().validate().is_ok());
        assert_eq!(
            FusionConfig {
                threshold: 1.5,
                ..cfg()
            }
            .validate()
            .unwrap_err(),
            "fusion.threshold must be between 0 and 1, found 1.5"
        );
        assert!(FusionConfig {
            clarify_candidates: 0,
            ..cfg()
        }
        .validate()
        .is_err());
    }
}
