use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use intentd::data;
use intentd::model::classifier::IntentModel;
use intentd::model::dense::{self, Precision};
use intentd::model::{eval, int8};

/// Score a trained model on labelled data: accuracy, macro-F1, per-intent scores, confusions.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long, default_value = super::DEFAULT_MODEL_DIR)]
    pub model: PathBuf,
    #[arg(long, default_value = super::DEFAULT_HELDOUT_DATA)]
    pub data: PathBuf,
    /// Write metrics.json, per_intent.csv, confusion.csv/.png and misclassified.json here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Arithmetic of the encoder's dense layers: auto (int8 where the CPU has VNNI), fp32 or
    /// int8 (an error where the CPU has no VNNI). Default: INTENTD_DENSE_KERNEL, else fp32.
    #[arg(long)]
    pub precision: Option<Precision>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let precision = match args.precision {
        Some(p) => p,
        None => dense::default_precision()?,
    };
    if precision == Precision::Int8 && int8::detect().is_none() {
        anyhow::bail!(
            "--precision int8: this CPU has neither AVX-512 VNNI nor AVX-VNNI, so the int8 \
             kernels cannot run here (use fp32 or auto)"
        );
    }
    let model = IntentModel::load_with(&args.model, precision)?;
    let kernel = model
        .encoder
        .bert
        .dense_kernel()
        .map(|k| k.describe())
        .unwrap_or_else(|| "unknown".into());
    println!("precision: {kernel}");
    let ds = data::load(&args.data)?;
    if ds.examples.is_empty() {
        anyhow::bail!("{}: no examples found (empty dataset)", args.data.display());
    }
    let rows: Vec<(String, String, String)> = ds
        .examples
        .into_iter()
        .map(|e| {
            (
                e.text,
                e.label,
                format!("{}:{}", e.origin.file.display(), e.origin.line),
            )
        })
        .collect();
    let outcome = eval::evaluate(&model, &rows, args.batch_size)?;
    let r = &outcome.report;
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>8}",
        "intent", "precision", "recall", "f1", "support"
    );
    for m in &r.per_intent {
        println!(
            "{:<24} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            m.intent, m.precision, m.recall, m.f1, m.support
        );
    }
    if !r.top_confusions.is_empty() {
        println!("most confused (gold -> predicted: count):");
        for c in r.top_confusions.iter().take(10) {
            println!("  {} -> {}: {}", c.gold, c.predicted, c.count);
        }
    }
    if let Some(dir) = &args.report {
        eval::write_report(dir, &outcome, &model.card.version)?;
        println!("report written to {}", dir.display());
    }
    println!("{}", eval::summary_line(r));
    Ok(())
}
