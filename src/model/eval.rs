//! `intentd eval`: score a trained model on labelled data and write a report folder.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::classifier::{ranked, IntentModel};
use super::scoring::{self, EvalReport};

#[derive(Debug, Clone, Serialize)]
pub struct Misclassified {
    pub text: String,
    pub gold: String,
    pub predicted: String,
    pub confidence: f32,
    /// Where the example came from (`file:line`).
    pub origin: String,
}

pub struct EvalOutcome {
    pub report: EvalReport,
    pub misclassified: Vec<Misclassified>,
}

/// (text, gold label, origin) triples.
pub fn evaluate(
    model: &IntentModel,
    data: &[(String, String, String)],
    batch_size: usize,
) -> Result<EvalOutcome> {
    if data.is_empty() {
        bail!("no examples to evaluate (empty dataset)");
    }
    // A gold label the model has never seen cannot be scored meaningfully: refuse, naming it.
    for (_, gold, origin) in data {
        if !model.labels.iter().any(|l| l == gold) {
            bail!(
                "{origin}: unknown intent '{gold}': the model at {} knows {} intents ({}...)",
                model.dir.display(),
                model.labels.len(),
                model
                    .labels
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let texts: Vec<&str> = data.iter().map(|d| d.0.as_str()).collect();
    let preds = model.predict_texts(&texts, batch_size)?;
    let mut pairs = Vec::with_capacity(data.len());
    let mut misclassified = Vec::new();
    for ((text, gold, origin), pred) in data.iter().zip(&preds) {
        let (best, conf) = ranked(pred)[0];
        let predicted = model.labels[best].clone();
        if &predicted != gold {
            misclassified.push(Misclassified {
                text: text.clone(),
                gold: gold.clone(),
                predicted: predicted.clone(),
                confidence: conf,
                origin: origin.clone(),
            });
        }
        pairs.push((gold.clone(), predicted));
    }
    Ok(EvalOutcome {
        report: scoring::compute(&pairs),
        misclassified,
    })
}

/// metrics.json, per_intent.csv, confusion.csv, confusion.png, misclassified.json.
pub fn write_report(dir: &Path, outcome: &EvalOutcome, model_version: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let r = &outcome.report;
    let summary = serde_json::json!({
        "model_version": model_version,
        "accuracy": r.accuracy,
        "macro_f1": r.macro_f1,
        "n": r.n,
        "per_intent": r.per_intent,
        "top_confusions": r.top_confusions.iter().take(20).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let mut csv = String::from("intent,precision,recall,f1,support\n");
    for m in &r.per_intent {
        csv += &format!(
            "{},{:.4},{:.4},{:.4},{}\n",
            m.intent, m.precision, m.recall, m.f1, m.support
        );
    }
    std::fs::write(dir.join("per_intent.csv"), csv)?;
    let mut cm = format!("gold\\predicted,{}\n", r.labels.join(","));
    for (label, row) in r.labels.iter().zip(&r.matrix) {
        cm += &format!(
            "{label},{}\n",
            row.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    std::fs::write(dir.join("confusion.csv"), cm)?;
    std::fs::write(
        dir.join("misclassified.json"),
        serde_json::to_string_pretty(&outcome.misclassified)?,
    )?;
    super::confusion_png::draw(&dir.join("confusion.png"), &r.labels, &r.matrix)?;
    Ok(())
}

/// The exact last line `eval` prints.
pub fn summary_line(r: &EvalReport) -> String {
    format!(
        "accuracy={:.4} macro_f1={:.4} n={}",
        r.accuracy, r.macro_f1, r.n
    )
}
