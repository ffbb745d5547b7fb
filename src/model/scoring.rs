//! Classification scores from (gold, predicted) label pairs: accuracy, macro-F1 over the gold
//! labels present, per-intent precision / recall / F1 / support, confusion matrix.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IntentMetrics {
    pub intent: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Confusion {
    pub gold: String,
    pub predicted: String,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub accuracy: f64,
    /// Mean F1 over the gold labels present in the data (a label that is only ever predicted
    /// does not dilute the mean, but its false positives lower the precision of nothing else).
    pub macro_f1: f64,
    pub n: usize,
    pub per_intent: Vec<IntentMetrics>,
    /// Row/column order of `matrix`: every label seen as gold or prediction, sorted.
    pub labels: Vec<String>,
    /// matrix[gold][predicted] counts.
    pub matrix: Vec<Vec<usize>>,
    /// Off-diagonal cells, most frequent first.
    pub top_confusions: Vec<Confusion>,
}

pub fn compute(pairs: &[(String, String)]) -> EvalReport {
    let n = pairs.len();
    let labels: Vec<String> = pairs
        .iter()
        .flat_map(|(g, p)| [g.clone(), p.clone()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut matrix = vec![vec![0usize; labels.len()]; labels.len()];
    for (g, p) in pairs {
        matrix[index[g.as_str()]][index[p.as_str()]] += 1;
    }
    let correct: usize = (0..labels.len()).map(|i| matrix[i][i]).sum();
    let gold_present: BTreeSet<&str> = pairs.iter().map(|(g, _)| g.as_str()).collect();
    let mut per_intent = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        if !gold_present.contains(label.as_str()) {
            continue;
        }
        let tp = matrix[i][i] as f64;
        let support: usize = matrix[i].iter().sum();
        let predicted: usize = matrix.iter().map(|row| row[i]).sum();
        let precision = if predicted > 0 {
            tp / predicted as f64
        } else {
            0.0
        };
        let recall = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        per_intent.push(IntentMetrics {
            intent: label.clone(),
            precision,
            recall,
            f1,
            support,
        });
    }
    let macro_f1 = if per_intent.is_empty() {
        0.0
    } else {
        per_intent.iter().map(|m| m.f1).sum::<f64>() / per_intent.len() as f64
    };
    let mut top_confusions: Vec<Confusion> = Vec::new();
    for (gi, row) in matrix.iter().enumerate() {
        for (pi, &count) in row.iter().enumerate() {
            if gi != pi && count > 0 {
                top_confusions.push(Confusion {
                    gold: labels[gi].clone(),
                    predicted: labels[pi].clone(),
                    count,
                });
            }
        }
    }
    top_confusions.sort_by(|a, b| b.count.cmp(&a.count).then(a.gold.cmp(&b.gold)));
    EvalReport {
        accuracy: if n > 0 {
            correct as f64 / n as f64
        } else {
            0.0
        },
        macro_f1,
        n,
        per_intent,
        labels,
        matrix,
        top_confusions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(g: &str, q: &str) -> (String, String) {
        (g.into(), q.into())
    }

    #[test]
    fn hand_computed_example() {
        // gold a a a b b c ; pred a a b b c c
        let r = compute(&[
            p("a", "a"),
            p("a", "a"),
            p("a", "b"),
            p("b", "b"),
            p("b", "c"),
            p("c", "c"),
        ]);
        assert_eq!(r.n, 6);
        assert!((r.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // a: P=2/2 R=2/3 F1=0.8 ; b: P=1/2 R=1/2 F1=0.5 ; c: P=1/2 R=1/1 F1=2/3
        let f: Vec<f64> = r.per_intent.iter().map(|m| m.f1).collect();
        assert!(
            (f[0] - 0.8).abs() < 1e-12
                && (f[1] - 0.5).abs() < 1e-12
                && (f[2] - 2.0 / 3.0).abs() < 1e-12
        );
        assert!((r.macro_f1 - (0.8 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert_eq!(r.matrix[0], vec![2, 1, 0]);
        assert_eq!(r.top_confusions.len(), 2);
    }

    #[test]
    fn labels_only_predicted_do_not_enter_the_macro_mean() {
        let r = compute(&[p("a", "a"), p("a", "z")]);
        assert_eq!(r.per_intent.len(), 1);
        assert!((r.macro_f1 - 2.0 / 3.0).abs() < 1e-12); // a: P=1, R=0.5
    }
}
