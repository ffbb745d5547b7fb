//! Entity precision / recall against annotated examples (`intentd eval`).
//!
//! A predicted entity is correct when an annotation has the same type and the same code-point
//! span (exact match, like Rasa's entity evaluation of whole entities). Only the types the data
//! annotates somewhere are scored: data that annotates order numbers but not cities says
//! nothing about cities, so predicted cities are counted apart (`unscored_predictions`), not as
//! errors. Precision with nothing predicted, and recall with nothing annotated, are 0.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::data::AnnotatedEntity;
use crate::types::Entity;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeScore {
    pub entity: String,
    /// Annotated entities of this type.
    pub support: usize,
    pub predicted: usize,
    pub correct: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl TypeScore {
    fn new(entity: &str, support: usize, predicted: usize, correct: usize) -> Self {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (precision, recall) = (ratio(correct, predicted), ratio(correct, support));
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Self {
            entity: entity.to_string(),
            support,
            predicted,
            correct,
            precision,
            recall,
            f1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityReport {
    /// By type, sorted by name.
    pub per_type: Vec<TypeScore>,
    /// Micro-averaged over the scored types (entity = "overall").
    pub overall: TypeScore,
    /// Predicted entities of types the data never annotates.
    pub unscored_predictions: usize,
    /// Examples read, and how many carry at least one annotation.
    pub examples: usize,
    pub annotated_examples: usize,
}

/// Scores `predicted[i]` against `gold[i]` for every example.
pub fn score(gold: &[&[AnnotatedEntity]], predicted: &[Vec<Entity>]) -> EntityReport {
    let scored: std::collections::BTreeSet<&str> = gold
        .iter()
        .flat_map(|g| g.iter().map(|e| e.entity.as_str()))
        .collect();
    // type → (support, predicted, correct)
    let mut counts: BTreeMap<&str, (usize, usize, usize)> =
        scored.iter().map(|t| (*t, (0, 0, 0))).collect();
    let mut unscored = 0;
    for (g, p) in gold.iter().zip(predicted) {
        for e in g.iter() {
            counts.entry(e.entity.as_str()).or_default().0 += 1;
        }
        for e in p {
            let Some(c) = counts.get_mut(e.entity.as_str()) else {
                unscored += 1;
                continue;
            };
            c.1 += 1;
            if g.iter()
                .any(|a| a.entity == e.entity && a.start == e.start && a.end == e.end)
            {
                c.2 += 1;
            }
        }
    }
    let per_type: Vec<TypeScore> = counts
        .iter()
        .map(|(t, &(s, p, c))| TypeScore::new(t, s, p, c))
        .collect();
    let sum = |f: fn(&TypeScore) -> usize| per_type.iter().map(f).sum::<usize>();
    let overall = TypeScore::new(
        "overall",
        sum(|t| t.support),
        sum(|t| t.predicted),
        sum(|t| t.correct),
    );
    EntityReport {
        overall,
        per_type,
        unscored_predictions: unscored,
        examples: gold.len(),
        annotated_examples: gold.iter().filter(|g| !g.is_empty()).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntitySource;

    fn gold(entity: &str, start: usize, end: usize) -> AnnotatedEntity {
        AnnotatedEntity {
            entity: entity.into(),
            value: String::new(),
            canonical: String::new(),
            start,
            end,
        }
    }

    fn pred(entity: &str, start: usize, end: usize) -> Entity {
        Entity {
            entity: entity.into(),
            value: String::new(),
            canonical: String::new(),
            start,
            end,
            source: EntitySource::Builtin,
        }
    }

    #[test]
    fn exact_spans_per_type_and_micro_overall() {
        let g1 = [gold("order_id", 0, 10), gold("date", 12, 14)];
        let g2 = [gold("order_id", 3, 8)];
        let g3: [AnnotatedEntity; 0] = [];
        let p = vec![
            // right order, date one character short, an unscored city
            vec![
                pred("order_id", 0, 10),
                pred("date", 12, 13),
                pred("city", 20, 22),
            ],
            // order missed; a spurious date
            vec![pred("date", 0, 2)],
            vec![pred("order_id", 1, 5)],
        ];
        let r = score(&[&g1, &g2, &g3], &p);
        let t = |name: &str| {
            r.per_type
                .iter()
                .find(|t| t.entity == name)
                .unwrap()
                .clone()
        };
        // order_id: 2 annotated, 2 predicted, 1 right
        assert_eq!(
            (
                t("order_id").support,
                t("order_id").predicted,
                t("order_id").correct
            ),
            (2, 2, 1)
        );
        assert_eq!((t("order_id").precision, t("order_id").recall), (0.5, 0.5));
        // date: 1 annotated, 2 predicted, 0 right
        assert_eq!(
            (t("date").precision, t("date").recall, t("date").f1),
            (0.0, 0.0, 0.0)
        );
        // overall: 1 right of 4 predicted, of 3 annotated
        assert_eq!(r.overall.precision, 0.25);
        assert!((r.overall.recall - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.overall.f1 - 2.0 * 0.25 * (1.0 / 3.0) / (0.25 + 1.0 / 3.0)).abs() < 1e-12);
        assert_eq!(r.unscored_predictions, 1);
        assert_eq!((r.examples, r.annotated_examples), (3, 2));
    }
}
