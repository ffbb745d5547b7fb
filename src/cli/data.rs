use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use intentd::data::{self, label_check};
use intentd::model::out_of_fold::score_out_of_fold;
use intentd::model::train;

/// Checks on labelled training data.
#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    Check(CheckArgs),
}

/// Find suspect labels: likely mislabelled examples (k-fold, head mode, confident learning),
/// duplicates with conflicting labels, intents too small or too confusable. Finding suspects is
/// not an error (exit 0).
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Labelled data: a TSV, JSONL or Rasa YAML file, or a folder of them.
    #[arg(long, default_value = super::DEFAULT_TRAINING_DATA)]
    pub data: PathBuf,
    /// Also write suspects.csv, predictions.csv and summary.txt into this folder (created if
    /// missing).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Number of folds (2 to the number of examples).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Seeds the folds and each fold's head.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Suspects of each kind listed in the summary.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    #[arg(long, default_value = intentd::model::base_models::DEFAULT_BASE_MODEL)]
    pub base: String,
    #[arg(long, default_value = super::MODELS_DIR)]
    pub models_dir: PathBuf,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Check(a) => check(a),
    }
}

fn check(args: CheckArgs) -> Result<()> {
    // First, while this is the only thread.
    train::serial_elementwise_ops();
    let started = Instant::now();
    let ds = data::load(&args.data)?;
    let (labels, given) = label_check::label_indices(&ds.examples);
    let n = ds.examples.len();
    if labels.len() < 2 {
        bail!(
            "{}: need at least 2 intents to check labels, found {}",
            args.data.display(),
            labels.len()
        );
    }
    if args.folds < 2 {
        bail!("--folds must be at least 2, got {}", args.folds);
    }
    if args.folds > n {
        bail!(
            "--folds {} is more than the {n} examples in {} (at most {n})",
            args.folds,
            args.data.display()
        );
    }
    let base = super::base_model(&args.base)?;
    let base_dir = super::ensure_base_model(base, &args.models_dir)?;
    eprintln!(
        "embedding {n} examples ({} intents) from {} with {}",
        labels.len(),
        args.data.display(),
        base.name
    );
    let texts: Vec<&str> = ds.examples.iter().map(|e| e.text.as_str()).collect();
    let (vectors, probs) = score_out_of_fold(
        base,
        &base_dir,
        &texts,
        &given,
        labels.len(),
        args.folds,
        args.seed,
    )?;
    let vectors: Vec<Vec<f32>> = vectors.to_vec2()?;
    let report = label_check::check(
        &ds.examples,
        labels,
        given,
        probs,
        &vectors,
        args.folds,
        label_check::CheckLimits::default(),
    );
    let summary = report.summary(&ds.examples, args.top);
    print!("{summary}");
    if let Some(dir) = &args.report {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the report folder", dir.display()))?;
        let csv = dir.join("suspects.csv");
        std::fs::write(&csv, report.to_csv(&ds.examples))
            .with_context(|| format!("{}: cannot write", csv.display()))?;
        let all = dir.join("predictions.csv");
        std::fs::write(&all, report.predictions_csv(&ds.examples))
            .with_context(|| format!("{}: cannot write", all.display()))?;
        let txt = dir.join("summary.txt");
        std::fs::write(&txt, &summary)
            .with_context(|| format!("{}: cannot write", txt.display()))?;
        eprintln!(
            "wrote {}, {} and {}",
            csv.display(),
            all.display(),
            txt.display()
        );
    }
    eprintln!("checked in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}
