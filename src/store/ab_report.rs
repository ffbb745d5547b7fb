//! A/B report: per experiment, exposures and conversions per variant and a chi-square test of
//! independence on the k × 2 table (variant × converted / not converted).
//!
//! A winner is named only when the test is significant (p < alpha) AND every variant has at
//! least the configured minimum sample: stopping early on a lucky streak is the classic way to
//! pick the wrong reply.

use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::VariantCounts;

/// One variant's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantResult {
    pub variant_id: String,
    pub exposures: u64,
    pub conversions: u64,
    pub rate: f64,
}

/// The test outcome for one experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct AbResult {
    pub experiment: String,
    pub variants: Vec<VariantResult>,
    pub chi_square: f64,
    pub degrees_of_freedom: usize,
    pub p_value: f64,
    pub significant: bool,
    pub winner: Option<String>,
    /// Why the result is not (yet) trustworthy; empty when it is.
    pub warning: String,
    pub min_sample: u64,
}

/// Pearson's chi-square statistic for a k × 2 table of (conversions, non-conversions) per row,
/// and its degrees of freedom (k − 1). `None` when the test is undefined: fewer than two
/// non-empty rows, or nobody / everybody converted (an expected count of zero).
pub fn chi_square_k_by_2(rows: &[(u64, u64)]) -> Option<(f64, usize)> {
    let rows: Vec<(f64, f64)> = rows
        .iter()
        .filter(|(c, n)| c + n > 0)
        .map(|&(c, n)| (c as f64, n as f64))
        .collect();
    if rows.len() < 2 {
        return None;
    }
    let conv: f64 = rows.iter().map(|r| r.0).sum();
    let non: f64 = rows.iter().map(|r| r.1).sum();
    let total = conv + non;
    if conv == 0.0 || non == 0.0 {
        return None;
    }
    let chi: f64 = rows
        .iter()
        .map(|&(c, n)| {
            let row = c + n;
            let (ec, en) = (row * conv / total, row * non / total);
            (c - ec).powi(2) / ec + (n - en).powi(2) / en
        })
        .sum();
    Some((chi, rows.len() - 1))
}

/// Analyses one experiment's variants.
pub fn analyze(
    experiment: &str,
    variants: &[VariantCounts],
    min_sample: u64,
    alpha: f64,
) -> AbResult {
    let results: Vec<VariantResult> = variants
        .iter()
        .map(|v| VariantResult {
            variant_id: v.variant_id.clone(),
            exposures: v.exposures,
            conversions: v.conversions.min(v.exposures),
            rate: if v.exposures == 0 {
                0.0
            } else {
                v.conversions.min(v.exposures) as f64 / v.exposures as f64
            },
        })
        .collect();
    let table: Vec<(u64, u64)> = results
        .iter()
        .map(|v| (v.conversions, v.exposures - v.conversions))
        .collect();
    let mut warnings = Vec::new();
    let (chi_square, dof, p_value) = match chi_square_k_by_2(&table) {
        Some((chi, dof)) => {
            let p = ChiSquared::new(dof as f64)
                .map(|d| d.sf(chi))
                .unwrap_or(1.0);
            (chi, dof, p)
        }
        None => {
            if results.len() < 2 {
                warnings.push("needs at least two variants with exposures to compare".to_string());
            } else {
                warnings.push(
                    "test undefined: no variant has both converted and unconverted exposures"
                        .to_string(),
                );
            }
            (0.0, results.len().saturating_sub(1), 1.0)
        }
    };
    let significant = p_value < alpha;
    let small: Vec<String> = results
        .iter()
        .filter(|v| v.exposures < min_sample)
        .map(|v| format!("{} has {} exposures", v.variant_id, v.exposures))
        .collect();
    if !small.is_empty() {
        warnings.push(format!(
            "below the minimum sample of {min_sample} per variant: {}",
            small.join(", ")
        ));
    }
    let mut winner = None;
    if significant && small.is_empty() {
        let best = results
            .iter()
            .map(|v| v.rate)
            .fold(f64::NEG_INFINITY, f64::max);
        let top: Vec<&VariantResult> = results.iter().filter(|v| v.rate == best).collect();
        if top.len() == 1 {
            winner = Some(top[0].variant_id.clone());
        } else {
            warnings
                .push("significant, but the best rate is shared by several variants".to_string());
        }
    }
    AbResult {
        experiment: experiment.to_string(),
        variants: results,
        chi_square,
        degrees_of_freedom: dof,
        p_value,
        significant,
        winner,
        warning: warnings.join("; "),
        min_sample,
    }
}

/// One report per experiment in `counts` (which the store returns sorted by experiment).
pub fn reports(counts: &[VariantCounts], min_sample: u64, alpha: f64) -> Vec<AbResult> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < counts.len() {
        let exp = &counts[start].experiment;
        let end = start
            + counts[start..]
                .iter()
                .take_while(|v| &v.experiment == exp)
                .count();
        out.push(analyze(exp, &counts[start..end], min_sample, alpha));
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{FeedbackKind, Record, SqliteStore, StatsFilter, Store};
    use super::*;

    fn vc(variant: &str, exposures: u64, conversions: u64) -> VariantCounts {
        VariantCounts {
            experiment: "welcome".into(),
            variant_id: variant.into(),
            exposures,
            conversions,
        }
    }

    /// Hand computation, two variants:
    ///   A: 5000 exposures, 500 conversions (10%)   B: 5000 exposures, 600 conversions (12%)
    ///   totals: N = 10000, converted = 1100, not = 8900
    ///   expected per row: converted 5000·1100/10000 = 550, not 5000·8900/10000 = 4450
    ///   χ² = (500−550)²/550 + (4500−4450)²/4450 + (600−550)²/550 + (4400−4450)²/4450
    ///      = 2·2500/550 + 2·2500/4450 = 100/11 + 100/89 = 9.090909… + 1.123596… = 10.214505
    ///   df = (2−1)(2−1) = 1; p = P(χ²₁ > 10.2145) = erfc(√(10.2145/2)) = 0.0013934
    ///   p < 0.05 and both variants have 5000 ≥ 5000 exposures → winner B.
    #[test]
    fn two_variants_match_the_hand_computed_example() {
        let r = analyze(
            "welcome",
            &[vc("welcome/a", 5000, 500), vc("welcome/b", 5000, 600)],
            5000,
            0.05,
        );
        assert!(
            (r.chi_square - (100.0 / 11.0 + 100.0 / 89.0)).abs() < 1e-9,
            "{}",
            r.chi_square
        );
        assert!((r.chi_square - 10.214505).abs() < 1e-6);
        assert_eq!(r.degrees_of_freedom, 1);
        assert!((r.p_value - 0.0013934).abs() < 1e-6, "{}", r.p_value);
        assert!(r.significant);
        assert_eq!(r.winner.as_deref(), Some("welcome/b"));
        assert_eq!(r.warning, "");
        assert!((r.variants[1].rate - 0.12).abs() < 1e-12);
    }

    /// Same rates, a tenth of the traffic:
    ///   expected 55 / 445 per row; χ² = 2·25/55 + 2·25/445 = 10/11 + 10/89 = 1.0214505
    ///   p = erfc(√(1.0214505/2)) = 0.31215 → not significant, and below the minimum sample.
    #[test]
    fn small_samples_warn_and_name_no_winner() {
        let r = analyze(
            "welcome",
            &[vc("welcome/a", 500, 50), vc("welcome/b", 500, 60)],
            5000,
            0.05,
        );
        assert!((r.chi_square - (10.0 / 11.0 + 10.0 / 89.0)).abs() < 1e-9);
        assert!((r.p_value - 0.31215).abs() < 1e-4, "{}", r.p_value);
        assert!(!r.significant);
        assert_eq!(r.winner, None);
        assert!(
            r.warning.contains("minimum sample of 5000"),
            "{}",
            r.warning
        );
        assert!(
            r.warning.contains("welcome/a has 500 exposures"),
            "{}",
            r.warning
        );
    }

    /// Three variants, df = 2, where the χ² survival function is exactly e^(−x/2):
    ///   A 2000/200, B 2000/240, C 2000/260; N = 6000, converted 700, not 5300
    ///   expected per row: 2000·700/6000 = 233.33…, 2000·5300/6000 = 1766.66…
    ///   deviations: A −100/3, B +20/3, C +80/3 (and the opposite in the "not" column)
    ///   χ² = (100² + 20² + 80²)/9 · (3/700 + 3/5300) = 16800/9 · (3/700 + 3/5300)
    ///      = 168/21 + 168/159 = 8 + 1.0566038 = 9.0566038
    ///   p = e^(−9.0566038/2) = 0.0107990 → significant; 2000 < 5000 → no winner yet,
    ///   but with a minimum sample of 1000 the winner is C.
    #[test]
    fn three_variants_match_the_closed_form() {
        let rows = [vc("a", 2000, 200), vc("b", 2000, 240), vc("c", 2000, 260)];
        let r = analyze("welcome", &rows, 5000, 0.05);
        assert!((r.chi_square - (8.0 + 168.0 / 159.0)).abs() < 1e-9);
        assert_eq!(r.degrees_of_freedom, 2);
        assert!((r.p_value - (-r.chi_square / 2.0).exp()).abs() < 1e-9);
        assert!((r.p_value - 0.0107990).abs() < 1e-6);
        assert!(r.significant);
        assert_eq!(r.winner, None);
        assert!(!r.warning.is_empty());
        let r = analyze("welcome", &rows, 1000, 0.05);
        assert_eq!(r.winner.as_deref(), Some("c"));
    }

    #[test]
    fn degenerate_tables_are_not_significant() {
        let r = analyze("x", &[vc("a", 6000, 0), vc("b", 6000, 0)], 5000, 0.05);
        assert!(!r.significant && r.winner.is_none() && r.warning.contains("undefined"));
        let r = analyze("x", &[vc("a", 6000, 10)], 5000, 0.05);
        assert!(!r.significant && r.warning.contains("two variants"));
        assert_eq!(chi_square_k_by_2(&[(0, 0), (5, 5)]), None);
    }

    #[test]
    fn reports_split_by_experiment() {
        let mut counts = vec![vc("a", 10, 1), vc("b", 10, 2)];
        counts.push(VariantCounts {
            experiment: "zeta".into(),
            variant_id: "z1".into(),
            exposures: 3,
            conversions: 1,
        });
        let rs = reports(&counts, 5000, 0.05);
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].variants.len(), 2);
        let r = &rs[1];
        assert_eq!(
            (r.experiment.as_str(), r.variants[0].exposures, r.min_sample),
            ("zeta", 3, 5000)
        );
        assert_eq!(r.winner, None);
    }

    #[test]
    fn exposures_and_conversions_come_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ab.db"), keyring(&key_b64(4))).unwrap();
        let mut recs = Vec::new();
        for i in 0..10 {
            let mut c = conversation("bot", "g", &format!("m{i}"), i);
            c.experiment = "welcome".into();
            c.variant_id = if i % 2 == 0 {
                "welcome/a".into()
            } else {
                "welcome/b".into()
            };
            recs.push(Record::Conversation(c));
        }
        for msg in ["m0", "m1", "m3", "m3"] {
            recs.push(Record::Feedback(feedback(
                "bot",
                msg,
                FeedbackKind::Clicked,
                50,
            )));
        }
        store.write_batch(&recs).unwrap();
        let f = StatsFilter {
            bot_id: "bot".into(),
            chat_id: String::new(),
            from_ms: 0,
            to_ms: 100,
        };
        let v = store.variant_counts(&f, "").unwrap();
        assert_eq!(v, vec![vc("welcome/a", 5, 1), vc("welcome/b", 5, 2)]);
        assert!(store.variant_counts(&f, "other").unwrap().is_empty());
    }
}
