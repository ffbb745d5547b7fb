//! `intentd data check`: suspect labels in training data, found from out-of-fold probabilities
//! (each example scored by a model that never saw it) and the examples' sentence vectors.
//!
//! Four kinds of finding, each pointing at `file:line`:
//! - **likely mislabelled**: the out-of-fold model prefers another intent, and by a wide margin:
//!   p(predicted) - p(label) >= `mislabel_margin` (0.5). Measured on SMP2017 with 20 % of the
//!   labels flipped (`benches/noise.sh`, benches/RESULTS.md), this margin rule found the flips
//!   with precision 0.83 at recall 0.69, where confident learning (Northcutt et al. 2021:
//!   per-intent self-confidence thresholds) reached precision 0.61: with many flipped labels an
//!   intent's self-confidence drops, its threshold with it, and clean examples start to count
//!   as "confidently" another intent. Small intents (below) are never suggested: a head that
//!   barely saw the intent gives it stray probability (one planted example of a new intent once
//!   made a third of a test set "suspect").
//! - **conflicting duplicates**: the same text (after NFKC, which folds full-width forms, plus
//!   whitespace collapsing and lower-casing) with different labels, and near duplicates whose
//!   sentence vectors have a cosine of at least `near_duplicate_cosine` (0.97: rewordings that
//!   differ only in particles or punctuation) with different labels. Sentence vectors rather
//!   than character n-grams because they are already computed and catch "您好" / "你好".
//! - **small intents**: fewer than `min_examples` (5) examples: too few to learn or to check.
//! - **confusable intent pairs**: of the examples labelled with either intent, the share the
//!   out-of-fold model gives to the other one reaches `confusable_share` (0.10).
//!
//! Everything here is pure: probabilities, vectors and labels in, findings out.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use unicode_normalization::UnicodeNormalization;

use super::Example;

/// The limits a check applies (documented in the module comment and the README).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckLimits {
    pub min_examples: usize,
    /// p(predicted) - p(label) at which a disagreement is a suspect label.
    pub mislabel_margin: f32,
    pub near_duplicate_cosine: f32,
    pub confusable_share: f64,
}

impl Default for CheckLimits {
    fn default() -> Self {
        Self {
            min_examples: 5,
            mislabel_margin: 0.5,
            near_duplicate_cosine: 0.97,
            confusable_share: 0.10,
        }
    }
}

/// The sorted intent names of `examples` and each example's index among them: the form every
/// check works on.
pub fn label_indices(examples: &[Example]) -> (Vec<String>, Vec<u32>) {
    let mut labels: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let given = examples
        .iter()
        .map(|e| labels.binary_search(&e.label).expect("label listed") as u32)
        .collect();
    (labels, given)
}

/// Fold (0..k) of each example: within each label the examples are shuffled (seeded) and dealt
/// round-robin, continuing where the previous label stopped, so every fold gets its share of
/// every intent and the folds differ in size by at most one.
pub fn stratified_folds(given: &[u32], k: usize, seed: u64) -> Vec<usize> {
    let mut by_label: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &y) in given.iter().enumerate() {
        by_label.entry(y).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut folds = vec![0; given.len()];
    let mut next = 0;
    for (_, mut members) in by_label {
        members.shuffle(&mut rng);
        for i in members {
            folds[i] = next % k.max(1);
            next += 1;
        }
    }
    folds
}

/// An example the out-of-fold model confidently gives another intent.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelIssue {
    pub index: usize,
    pub suggested: u32,
    pub p_given: f32,
    pub p_suggested: f32,
}

/// The examples flagged as likely mislabelled (what `data check` lists and `train
/// --drop-suspect` leaves out): the out-of-fold prediction is another intent, not a small one
/// (fewer than `min_examples`), with p(predicted) - p(label) >= `margin`. Widest margin first.
pub fn suspect_labels(
    probs: &[Vec<f32>],
    given: &[u32],
    n_labels: usize,
    min_examples: usize,
    margin: f32,
) -> Vec<LabelIssue> {
    let small: Vec<u32> = small_intents(given, n_labels, min_examples)
        .into_iter()
        .map(|(y, _)| y)
        .collect();
    let mut issues: Vec<LabelIssue> = probs
        .iter()
        .zip(given)
        .enumerate()
        .filter_map(|(index, (p, &y))| {
            let suggested = argmax(p);
            let (p_given, p_suggested) = (p[y as usize], p[suggested as usize]);
            (suggested != y && !small.contains(&suggested) && p_suggested - p_given >= margin)
                .then_some(LabelIssue {
                    index,
                    suggested,
                    p_given,
                    p_suggested,
                })
        })
        .collect();
    issues.sort_by(|a, b| {
        (b.p_suggested - b.p_given)
            .total_cmp(&(a.p_suggested - a.p_given))
            .then(a.index.cmp(&b.index))
    });
    issues
}

/// The form two texts must share to count as exact duplicates: NFKC (full-width letters, digits
/// and punctuation become their ordinary forms), whitespace runs collapsed, lower case.
pub fn duplicate_key(text: &str) -> String {
    let folded: String = text.nfkc().collect::<String>().to_lowercase();
    super::normalize_example_text(&folded)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicateKind {
    Exact,
    Near,
}

/// Two examples with (nearly) the same text and different labels; `a < b`.
#[derive(Debug, Clone, PartialEq)]
pub struct DuplicatePair {
    pub kind: DuplicateKind,
    pub a: usize,
    pub b: usize,
    pub cosine: f32,
}

/// Conflicting exact duplicates (same `duplicate_key`) and near duplicates (cosine of the
/// sentence vectors at least `min_cosine`, keys different), each pair once, in index order.
pub fn conflicting_duplicates(
    texts: &[&str],
    given: &[u32],
    vectors: &[Vec<f32>],
    min_cosine: f32,
) -> Vec<DuplicatePair> {
    let keys: Vec<String> = texts.iter().map(|t| duplicate_key(t)).collect();
    let mut pairs = Vec::new();
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        by_key.entry(k).or_default().push(i);
    }
    for members in by_key.values() {
        for (x, &a) in members.iter().enumerate() {
            for &b in &members[x + 1..] {
                if given[a] != given[b] {
                    pairs.push(DuplicatePair {
                        kind: DuplicateKind::Exact,
                        a,
                        b,
                        cosine: 1.0,
                    });
                }
            }
        }
    }
    let unit: Vec<Vec<f32>> = vectors.iter().map(|v| normalized(v)).collect();
    for a in 0..unit.len() {
        for b in a + 1..unit.len() {
            if given[a] == given[b] || keys[a] == keys[b] {
                continue;
            }
            let cosine: f32 = unit[a].iter().zip(&unit[b]).map(|(x, y)| x * y).sum();
            if cosine >= min_cosine {
                pairs.push(DuplicatePair {
                    kind: DuplicateKind::Near,
                    a,
                    b,
                    cosine,
                });
            }
        }
    }
    pairs.sort_by_key(|p| (p.kind == DuplicateKind::Near, p.a, p.b));
    pairs
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

/// Intents with fewer than `min` examples: (label index, count), by label index.
pub fn small_intents(given: &[u32], n_labels: usize, min: usize) -> Vec<(u32, usize)> {
    let mut count = vec![0usize; n_labels];
    for &y in given {
        count[y as usize] += 1;
    }
    (0..n_labels as u32)
        .zip(count)
        .filter(|&(_, c)| c < min)
        .collect()
}

/// Two intents the out-of-fold model mixes up.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusablePair {
    pub a: u32,
    pub b: u32,
    /// Examples labelled `a` predicted `b`, and the other way round.
    pub a_as_b: usize,
    pub b_as_a: usize,
    /// Examples labelled `a` or `b`.
    pub examples: usize,
    /// (a_as_b + b_as_a) / examples.
    pub share: f64,
}

/// Index of the largest probability.
pub fn argmax(p: &[f32]) -> u32 {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |x| x.0 as u32)
}

/// Pairs whose share of confusions reaches `min_share`, most confused first.
pub fn confusable_pairs(
    probs: &[Vec<f32>],
    given: &[u32],
    n_labels: usize,
    min_share: f64,
) -> Vec<ConfusablePair> {
    let mut count = vec![0usize; n_labels];
    let mut confused: HashMap<(u32, u32), usize> = HashMap::new();
    for (p, &y) in probs.iter().zip(given) {
        count[y as usize] += 1;
        let pred = argmax(p);
        if pred != y {
            *confused.entry((y, pred)).or_default() += 1;
        }
    }
    let mut pairs: Vec<ConfusablePair> = Vec::new();
    for a in 0..n_labels as u32 {
        for b in a + 1..n_labels as u32 {
            let a_as_b = confused.get(&(a, b)).copied().unwrap_or(0);
            let b_as_a = confused.get(&(b, a)).copied().unwrap_or(0);
            let examples = count[a as usize] + count[b as usize];
            if examples == 0 || a_as_b + b_as_a == 0 {
                continue;
            }
            let share = (a_as_b + b_as_a) as f64 / examples as f64;
            if share >= min_share {
                pairs.push(ConfusablePair {
                    a,
                    b,
                    a_as_b,
                    b_as_a,
                    examples,
                    share,
                });
            }
        }
    }
    pairs.sort_by(|x, y| {
        y.share
            .total_cmp(&x.share)
            .then((x.a, x.b).cmp(&(y.a, y.b)))
    });
    pairs
}

/// Everything `intentd data check` found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub labels: Vec<String>,
    pub given: Vec<u32>,
    pub probs: Vec<Vec<f32>>,
    pub folds: usize,
    pub limits: CheckLimits,
    pub mislabelled: Vec<LabelIssue>,
    pub duplicates: Vec<DuplicatePair>,
    pub small: Vec<(u32, usize)>,
    pub confusable: Vec<ConfusablePair>,
}

/// Runs every check. `labels` are the sorted intent names, `given[i]` the index of example i's
/// label, `probs[i]` its out-of-fold probabilities and `vectors[i]` its sentence vector.
pub fn check(
    examples: &[Example],
    labels: Vec<String>,
    given: Vec<u32>,
    probs: Vec<Vec<f32>>,
    vectors: &[Vec<f32>],
    folds: usize,
    limits: CheckLimits,
) -> CheckReport {
    let n = labels.len();
    let small = small_intents(&given, n, limits.min_examples);
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    CheckReport {
        mislabelled: suspect_labels(
            &probs,
            &given,
            n,
            limits.min_examples,
            limits.mislabel_margin,
        ),
        duplicates: conflicting_duplicates(&texts, &given, vectors, limits.near_duplicate_cosine),
        small,
        confusable: confusable_pairs(&probs, &given, n, limits.confusable_share),
        labels,
        given,
        probs,
        folds,
        limits,
    }
}

impl CheckReport {
    /// Share of examples whose out-of-fold prediction is their label.
    pub fn out_of_fold_accuracy(&self) -> f64 {
        let right = self
            .probs
            .iter()
            .zip(&self.given)
            .filter(|(p, &y)| argmax(p) == y)
            .count();
        right as f64 / self.given.len().max(1) as f64
    }

    /// `suspects.csv`: one row per finding about an example (a duplicate pair gives a row for
    /// each side, `other` naming the twin; a small intent or confusable pair gives no row of its
    /// own, see the summary). Columns: kind, file, line, text, label, suggested, p_label,
    /// p_suggested, other.
    pub fn to_csv(&self, examples: &[Example]) -> String {
        let mut out =
            String::from("kind,file,line,text,label,suggested,p_label,p_suggested,other\n");
        let mut row = |kind: &str, i: usize, suggested: u32, other: &str| {
            let e = &examples[i];
            let p = &self.probs[i];
            let _ = writeln!(
                out,
                "{kind},{},{},{},{},{},{:.4},{:.4},{}",
                csv_field(&e.origin.file.display().to_string()),
                e.origin.line,
                csv_field(&e.text),
                csv_field(&e.label),
                csv_field(&self.labels[suggested as usize]),
                p[self.given[i] as usize],
                p[suggested as usize],
                csv_field(other),
            );
        };
        for m in &self.mislabelled {
            row("mislabelled", m.index, m.suggested, "");
        }
        for d in &self.duplicates {
            let kind = match d.kind {
                DuplicateKind::Exact => "exact_duplicate",
                DuplicateKind::Near => "near_duplicate",
            };
            let (a, b) = (d.a, d.b);
            row(kind, a, self.given[b], &examples[b].origin.to_string());
            row(kind, b, self.given[a], &examples[a].origin.to_string());
        }
        out
    }

    /// `predictions.csv`: every example's out-of-fold prediction (file, line, label, predicted,
    /// p_label, p_predicted), for looking past the suspects.
    pub fn predictions_csv(&self, examples: &[Example]) -> String {
        let mut out = String::from("file,line,label,predicted,p_label,p_predicted\n");
        for (i, e) in examples.iter().enumerate() {
            let p = &self.probs[i];
            let pred = argmax(p);
            let _ = writeln!(
                out,
                "{},{},{},{},{:.4},{:.4}",
                csv_field(&e.origin.file.display().to_string()),
                e.origin.line,
                csv_field(&e.label),
                csv_field(&self.labels[pred as usize]),
                p[self.given[i] as usize],
                p[pred as usize],
            );
        }
        out
    }

    /// The one-screen summary: counts per kind, then the top suspects of each kind.
    pub fn summary(&self, examples: &[Example], top: usize) -> String {
        let mut s = String::new();
        let exact = self
            .duplicates
            .iter()
            .filter(|d| d.kind == DuplicateKind::Exact)
            .count();
        let near = self.duplicates.len() - exact;
        let l = &self.limits;
        let _ = writeln!(
            s,
            "checked {} examples in {} intents; {}-fold out-of-fold accuracy {:.4}",
            examples.len(),
            self.labels.len(),
            self.folds,
            self.out_of_fold_accuracy()
        );
        let _ = writeln!(s, "likely mislabelled:         {}", self.mislabelled.len());
        let _ = writeln!(
            s,
            "conflicting duplicates:     {exact} exact, {near} near (cosine >= {})",
            l.near_duplicate_cosine
        );
        let _ = writeln!(
            s,
            "small intents:              {} (fewer than {} examples)",
            self.small.len(),
            l.min_examples
        );
        let _ = writeln!(
            s,
            "confusable intent pairs:    {} (>= {:.0}% of their examples confused)",
            self.confusable.len(),
            l.confusable_share * 100.0
        );
        let name = |i: u32| self.labels[i as usize].as_str();
        if !self.mislabelled.is_empty() {
            let _ = writeln!(s, "top likely mislabelled (label -> suggested):");
            for m in self.mislabelled.iter().take(top) {
                let e = &examples[m.index];
                let _ = writeln!(
                    s,
                    "  {} {} {} -> {} ({:.2} vs {:.2})",
                    e.origin,
                    quoted(&e.text),
                    e.label,
                    name(m.suggested),
                    m.p_given,
                    m.p_suggested
                );
            }
        }
        if !self.duplicates.is_empty() {
            let _ = writeln!(s, "conflicting duplicates:");
            for d in self.duplicates.iter().take(top.div_ceil(2)) {
                let (a, b) = (&examples[d.a], &examples[d.b]);
                let _ = writeln!(
                    s,
                    "  {} {} {} / {} {} {}{}",
                    a.origin,
                    quoted(&a.text),
                    a.label,
                    b.origin,
                    quoted(&b.text),
                    b.label,
                    match d.kind {
                        DuplicateKind::Exact => String::new(),
                        DuplicateKind::Near => format!(" (cosine {:.3})", d.cosine),
                    }
                );
            }
        }
        for &(y, c) in self.small.iter().take(top.div_ceil(2)) {
            let noun = if c == 1 { "example" } else { "examples" };
            let _ = writeln!(s, "small intent: {} has {c} {noun}", name(y));
        }
        for p in self.confusable.iter().take(top.div_ceil(2)) {
            let _ = writeln!(
                s,
                "confusable: {} / {}: {:.0}% ({} {} as {}, {} the other way, of {})",
                name(p.a),
                name(p.b),
                p.share * 100.0,
                p.a_as_b,
                name(p.a),
                name(p.b),
                p.b_as_a,
                p.examples
            );
        }
        s
    }
}

/// A text for the summary: quoted, cut to 30 characters so a line stays on one screen line.
fn quoted(text: &str) -> String {
    let cut: String = text.chars().take(30).collect();
    if cut.len() < text.len() {
        format!("\"{cut}...\"")
    } else {
        format!("\"{cut}\"")
    }
}

/// RFC 4180 quoting when the field needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wide_disagreement_is_flagged_widest_first() {
        let probs = vec![
            vec![0.9, 0.1, 0.0],
            vec![0.2, 0.7, 0.1],   // labelled 0, margin 0.5: flagged
            vec![0.3, 0.65, 0.05], // labelled 0, margin 0.35: kept
            vec![0.05, 0.95, 0.0], // labelled 0, margin 0.9: flagged first
            vec![0.1, 0.1, 0.8],   // labelled 2, agrees: kept
            vec![0.0, 0.9, 0.1],   // labelled 1
        ];
        let given = vec![0, 0, 0, 0, 2, 1];
        let issues = suspect_labels(&probs, &given, 3, 0, 0.5);
        let found: Vec<(usize, u32)> = issues.iter().map(|i| (i.index, i.suggested)).collect();
        assert_eq!(found, vec![(3, 1), (1, 1)]);
        assert_eq!((issues[1].p_given, issues[1].p_suggested), (0.2, 0.7));
        assert!(suspect_labels(&probs, &given, 3, 0, 0.95).is_empty());
    }

    #[test]
    fn a_small_intent_is_never_suggested() {
        // Intent 2 has one example: a head that barely saw it gives it stray probability.
        let mut probs = vec![vec![0.9, 0.08, 0.02]; 5];
        probs.extend(vec![vec![0.6, 0.38, 0.02]; 3]);
        probs.extend(vec![vec![0.08, 0.9, 0.02]; 5]);
        probs.push(vec![0.5, 0.49, 0.01]);
        probs.push(vec![0.05, 0.94, 0.01]); // labelled 0, confidently 1: still found
        let mut given = vec![0; 8];
        given.extend([1; 5]);
        given.extend([2, 0]);
        let ex = |i: usize| Example {
            entities: Vec::new(),
            text: format!("t{i}"),
            label: String::new(),
            origin: super::super::Origin::new(std::path::Path::new("a.tsv"), i + 1),
        };
        let examples: Vec<Example> = (0..given.len()).map(ex).collect();
        let vectors: Vec<Vec<f32>> = (0..given.len()).map(|i| vec![i as f32, 1.0]).collect();
        let labels = vec!["a".to_string(), "b".into(), "c".into()];
        // A disagreement in favour of the small intent is not a suspect, however wide; it
        // would be if intent 2 were not small.
        let mut p2 = probs.clone();
        p2.push(vec![0.1, 0.1, 0.8]);
        let mut g2 = given.clone();
        g2.push(0);
        assert!(suspect_labels(&p2, &g2, 3, 5, 0.5)
            .iter()
            .all(|m| m.suggested != 2));
        let unguarded = suspect_labels(&p2, &g2, 3, 0, 0.5);
        assert_eq!(unguarded.iter().filter(|m| m.suggested == 2).count(), 1);
        let report = check(
            &examples,
            labels,
            given,
            probs,
            &vectors,
            2,
            CheckLimits::default(),
        );
        assert_eq!(report.small, vec![(2, 1)]);
        let flagged: Vec<(usize, u32)> = report
            .mislabelled
            .iter()
            .map(|m| (m.index, m.suggested))
            .collect();
        assert_eq!(flagged, vec![(14, 1)]);
        assert!(report
            .summary(&examples, 10)
            .contains("small intent: c has 1 example\n"));
    }

    #[test]
    fn folds_are_stratified_seeded_and_balanced() {
        let given: Vec<u32> = (0..50).map(|i| (i % 3 == 0) as u32).collect();
        let folds = stratified_folds(&given, 5, 7);
        assert_eq!(folds, stratified_folds(&given, 5, 7));
        assert_ne!(folds, stratified_folds(&given, 5, 8));
        for f in 0..5 {
            let in_fold: Vec<usize> = (0..50).filter(|&i| folds[i] == f).collect();
            assert_eq!(in_fold.len(), 10);
            let ones = in_fold.iter().filter(|&&i| given[i] == 1).count();
            assert!((3..=4).contains(&ones), "fold {f}: {ones} of label 1");
        }
    }

    #[test]
    fn duplicate_key_folds_width_space_and_case() {
        assert_eq!(duplicate_key("  ＡＢＣ\u{3000}１２３ "), "abc 123");
        assert_eq!(duplicate_key("能退吗？"), duplicate_key("能退吗?"));
        assert_ne!(duplicate_key("能退吗"), duplicate_key("能退嘛"));
    }

    #[test]
    fn duplicates_need_different_labels() {
        let texts = [
            "能退吗？",
            "能退吗?",
            " 能退吗？ ",
            "多少钱",
            "多少钱呀",
            "你好",
        ];
        let given = vec![0, 1, 0, 2, 3, 3];
        let vectors = vec![
            vec![1.0, 0.0, 0.0],
            vec![1.0, 0.0, 0.0],
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.99, 0.1], // cosine 0.995 with "多少钱": near duplicate, other label
            vec![0.0, 1.0, 0.0],  // near "多少钱呀" with the same label: only 3/5 is reported
        ];
        let pairs = conflicting_duplicates(&texts, &given, &vectors, 0.97);
        let got: Vec<(DuplicateKind, usize, usize)> =
            pairs.iter().map(|p| (p.kind, p.a, p.b)).collect();
        assert_eq!(
            got,
            vec![
                (DuplicateKind::Exact, 0, 1),
                (DuplicateKind::Exact, 1, 2),
                (DuplicateKind::Near, 3, 4),
                (DuplicateKind::Near, 3, 5),
            ]
        );
    }

    #[test]
    fn small_intents_and_confusable_pairs() {
        let given = vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2];
        assert_eq!(small_intents(&given, 3, 5), vec![(2, 2)]);
        let p = |y: usize| {
            let mut v = vec![0.0; 3];
            v[y] = 1.0;
            v
        };
        // Two of intent 0 predicted 1, one of intent 1 predicted 0: 3 of 10 (30 %).
        let probs: Vec<Vec<f32>> = [0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 2, 0]
            .iter()
            .map(|&y| p(y))
            .collect();
        // And one of intent 2 predicted 0: 1 of 7 (14 %).
        let pairs = confusable_pairs(&probs, &given, 3, 0.10);
        let got: Vec<(u32, u32, usize, usize, usize)> = pairs
            .iter()
            .map(|c| (c.a, c.b, c.a_as_b, c.b_as_a, c.examples))
            .collect();
        assert_eq!(got, vec![(0, 1, 2, 1, 10), (0, 2, 0, 1, 7)]);
        assert!((pairs[0].share - 0.3).abs() < 1e-9);
        assert_eq!(confusable_pairs(&probs, &given, 3, 0.20).len(), 1);
        assert!(confusable_pairs(&probs, &given, 3, 0.35).is_empty());
    }

    #[test]
    fn csv_quotes_and_lists_both_sides_of_a_duplicate() {
        use std::path::Path;
        let ex = |text: &str, label: &str, line| Example {
            entities: Vec::new(),
            text: text.into(),
            label: label.into(),
            origin: super::super::Origin::new(Path::new("a,b.tsv"), line),
        };
        let examples = vec![
            ex("退, \"款\"", "refund", 1),
            ex("退, \"款\"", "exchange", 2),
        ];
        let report = check(
            &examples,
            vec!["exchange".into(), "refund".into()],
            vec![1, 0],
            vec![vec![0.4, 0.6], vec![0.7, 0.3]],
            &[vec![1.0], vec![1.0]],
            2,
            CheckLimits::default(),
        );
        let csv = report.to_csv(&examples);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines,
            vec![
                "kind,file,line,text,label,suggested,p_label,p_suggested,other",
                "exact_duplicate,\"a,b.tsv\",1,\"退, \"\"款\"\"\",refund,exchange,0.6000,0.4000,\"a,b.tsv:2\"",
                "exact_duplicate,\"a,b.tsv\",2,\"退, \"\"款\"\"\",exchange,refund,0.7000,0.3000,\"a,b.tsv:1\"",
            ]
        );
        assert_eq!(
            report.predictions_csv(&examples),
            "file,line,label,predicted,p_label,p_predicted\n\
             \"a,b.tsv\",1,refund,refund,0.6000,0.6000\n\
             \"a,b.tsv\",2,exchange,exchange,0.7000,0.7000\n"
        );
        let summary = report.summary(&examples, 10);
        assert!(summary.contains("1 exact, 0 near"), "{summary}");
        assert!(
            summary.contains("small intents:              2"),
            "{summary}"
        );
    }
}
