use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use intentd::engine::fusion::{self, FusionConfig};
use intentd::model::classifier::IntentModel;
use intentd::operator::OperatorSnapshot;
use intentd::types::IntentScore;

/// Sweep the fusion threshold and ambiguity margin on held-out data and recommend the pair
/// that answers the most messages while keeping the answered ones at least --target accurate.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[arg(long, default_value = super::DEFAULT_MODEL_DIR)]
    pub model: PathBuf,
    #[arg(long, default_value = super::DEFAULT_HELDOUT_DATA)]
    pub data: PathBuf,
    #[arg(long, default_value = "config/operator")]
    pub operator_dir: PathBuf,
    #[arg(long, default_value = super::DEFAULT_TRAINING_DATA)]
    pub training_data: PathBuf,
    /// Required accuracy of the messages the engine answers (not sent to clarification).
    #[arg(long, default_value_t = 0.95)]
    pub target: f64,
}

struct Point {
    threshold: f32,
    margin: f32,
    answered: f64,
    answered_accuracy: f64,
    overall_accuracy: f64,
}

pub fn run(args: CalibrateArgs) -> Result<()> {
    let model = IntentModel::load(&args.model)?;
    let ds = intentd::data::load(&args.data)?;
    if ds.examples.is_empty() {
        bail!("{}: no examples found (empty dataset)", args.data.display());
    }
    let rules = OperatorSnapshot::load_dir(
        &args.operator_dir,
        &args.training_data,
        FusionConfig::default(),
    )?;
    let texts: Vec<&str> = ds.examples.iter().map(|e| e.text.as_str()).collect();
    let preds = model.predict_texts(&texts, 32)?;
    let cases: Vec<(
        Vec<IntentScore>,
        intentd::engine::keywords::KeywordMatch,
        &str,
    )> = ds
        .examples
        .iter()
        .zip(&preds)
        .map(|(e, p)| {
            let mut scores: Vec<IntentScore> = model
                .labels
                .iter()
                .zip(&p.probs)
                .map(|(l, &c)| IntentScore {
                    intent: l.clone(),
                    confidence: c,
                })
                .collect();
            scores.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
            (scores, rules.keywords.match_text(&e.text), e.label.as_str())
        })
        .collect();
    let n = cases.len() as f64;
    let mut points = Vec::new();
    for t in (20..=95).step_by(5) {
        for m in [0.0f32, 0.05, 0.1, 0.15, 0.2, 0.3] {
            let cfg = FusionConfig {
                threshold: t as f32 / 100.0,
                ambiguity_margin: m,
                ..FusionConfig::default()
            };
            let (mut answered, mut right) = (0usize, 0usize);
            for (scores, kw, gold) in &cases {
                let c = fusion::fuse(Some(scores), kw, &cfg);
                if !c.needs_clarification {
                    answered += 1;
                    if c.intent == *gold {
                        right += 1;
                    }
                }
            }
            points.push(Point {
                threshold: cfg.threshold,
                margin: m,
                answered: answered as f64 / n,
                answered_accuracy: if answered > 0 {
                    right as f64 / answered as f64
                } else {
                    0.0
                },
                overall_accuracy: right as f64 / n,
            });
        }
    }
    println!(
        "{:>9} {:>7} {:>9} {:>18} {:>17}",
        "threshold", "margin", "answered", "answered_accuracy", "overall_accuracy"
    );
    for p in &points {
        println!(
            "{:>9.2} {:>7.2} {:>8.1}% {:>17.1}% {:>16.1}%",
            p.threshold,
            p.margin,
            p.answered * 100.0,
            p.answered_accuracy * 100.0,
            p.overall_accuracy * 100.0
        );
    }
    let best = points
        .iter()
        .filter(|p| p.answered_accuracy >= args.target)
        .max_by(|a, b| {
            a.answered
                .total_cmp(&b.answered)
                .then(b.threshold.total_cmp(&a.threshold))
        });
    match best {
        Some(p) => println!(
            "recommended: fusion.threshold={:.2} fusion.ambiguity_margin={:.2} (answers {:.1}% of {} messages, {:.1}% of them right; the rest get a clarifying question)",
            p.threshold,
            p.margin,
            p.answered * 100.0,
            cases.len(),
            p.answered_accuracy * 100.0
        ),
        None => println!("no setting reaches {:.0}% accuracy on answered messages", args.target * 100.0),
    }
    Ok(())
}
