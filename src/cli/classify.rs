use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use intentd::model::classifier::{ranked, IntentModel};

/// Classify texts with a trained model; prints one JSON object per text.
#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[arg(long, default_value = super::DEFAULT_MODEL_DIR)]
    pub model: PathBuf,
    /// How many ranked intents to show.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Texts to classify.
    #[arg(required = true)]
    pub texts: Vec<String>,
}

pub fn run(args: ClassifyArgs) -> Result<()> {
    if let Some(i) = args.texts.iter().position(|t| t.trim().is_empty()) {
        bail!("text #{} is empty", i + 1);
    }
    let model = IntentModel::load(&args.model)?;
    let preds = model.predict_texts(&args.texts, 32)?;
    for (text, pred) in args.texts.iter().zip(&preds) {
        let r = ranked(pred);
        let top: Vec<_> = r
            .iter()
            .take(args.top.max(1))
            .map(|&(i, p)| serde_json::json!({"intent": model.labels[i], "confidence": p}))
            .collect();
        let out = serde_json::json!({
            "text": text,
            "intent": model.labels[r[0].0],
            "confidence": r[0].1,
            "ranking": top,
            "model_version": model.card.version,
        });
        println!("{}", serde_json::to_string(&out)?);
    }
    Ok(())
}
