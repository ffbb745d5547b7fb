use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use intentd::data;
use intentd::model::train::{self, HyperParameters, LabeledText, TrainJob, TrainMode};

/// Fine-tune the encoder + a classification head on labelled data (TSV, JSONL, Rasa YAML, or a
/// folder of them) and write a self-contained model folder.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training data: a file or a folder.
    #[arg(long, default_value = super::DEFAULT_TRAINING_DATA)]
    pub data: PathBuf,
    /// Output model folder (replaced atomically).
    #[arg(long, default_value = super::DEFAULT_MODEL_DIR)]
    pub out: PathBuf,
    /// Dev data for model selection / early stopping; default: 10% carved out of --data.
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// full = fine-tune everything; head = frozen encoder, much faster.
    #[arg(long, value_enum, default_value_t = TrainMode::Full)]
    pub mode: TrainMode,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Encoder learning rate (full mode).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Head learning rate.
    #[arg(long)]
    pub head_lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Epochs without dev improvement before stopping.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Fine-tune the word-embedding table too (slower; can help with many rare entity names).
    #[arg(long)]
    pub train_embeddings: bool,
    /// Keep the carved-out dev set out of the final model: skip the second run on all the data
    /// (full mode), which halves the training time.
    #[arg(long)]
    pub no_refit: bool,
    #[arg(long, default_value = intentd::model::base_models::DEFAULT_BASE_MODEL)]
    pub base: String,
    #[arg(long, default_value = super::MODELS_DIR)]
    pub models_dir: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// The arguments `intentd train` has with no flags, for another data folder and output.
    pub fn defaults(data: PathBuf, out: PathBuf) -> Self {
        Self {
            data,
            out,
            dev: None,
            mode: TrainMode::Full,
            epochs: None,
            batch_size: None,
            lr: None,
            head_lr: None,
            seed: None,
            patience: None,
            train_embeddings: false,
            no_refit: false,
            base: intentd::model::base_models::DEFAULT_BASE_MODEL.into(),
            models_dir: super::MODELS_DIR.into(),
            quiet: false,
        }
    }
}

pub fn load_labeled(path: &std::path::Path) -> Result<(Vec<LabeledText>, String)> {
    let ds = data::load(path)?;
    let ds = report_conflicts(ds);
    if ds.examples.is_empty() {
        bail!("{}: no examples found (empty dataset)", path.display());
    }
    let hash = ds.content_hash();
    Ok((
        ds.examples
            .into_iter()
            .map(|e| LabeledText {
                text: e.text,
                label: e.label,
            })
            .collect(),
        hash,
    ))
}

/// Texts given two different intents cannot both be right: list them (file:line of each
/// label) and leave them out of training rather than teach the model noise.
fn report_conflicts(ds: data::Dataset) -> data::Dataset {
    if ds.conflicts.is_empty() {
        return ds;
    }
    eprintln!(
        "warning: {} texts have conflicting intents and are left out:",
        ds.conflicts.len()
    );
    for c in ds.conflicts.iter().take(20) {
        let labels: Vec<String> = c.labels.iter().map(|(l, o)| format!("{l} ({o})")).collect();
        eprintln!("  {:?}: {}", c.text, labels.join(" vs "));
    }
    if ds.conflicts.len() > 20 {
        eprintln!("  ... and {} more", ds.conflicts.len() - 20);
    }
    ds.without_conflicts()
}

pub fn run(args: TrainArgs) -> Result<()> {
    // First, while this is the only thread.
    train::serial_elementwise_ops();
    let base = super::base_model(&args.base)?;
    let (examples, data_sha256) = load_labeled(&args.data)?;
    let dev = match &args.dev {
        Some(p) => Some(load_labeled(p)?.0),
        None => None,
    };
    let mut hp = HyperParameters::defaults_for(args.mode);
    if let Some(v) = args.epochs {
        hp.epochs = v;
    }
    if let Some(v) = args.batch_size {
        hp.batch_size = v;
    }
    if let Some(v) = args.lr {
        hp.learning_rate = v;
    }
    if let Some(v) = args.head_lr {
        hp.head_learning_rate = v;
    }
    if let Some(v) = args.seed {
        hp.seed = v;
    }
    if let Some(v) = args.patience {
        hp.patience = v;
    }
    if args.train_embeddings {
        hp.freeze_word_embeddings = false;
    }
    if args.no_refit {
        hp.refit = false;
    }
    let base_dir = super::ensure_base_model(base, &args.models_dir)?;
    eprintln!(
        "training {:?} on {} examples from {} ({} intents), base {}",
        args.mode,
        examples.len(),
        args.data.display(),
        examples
            .iter()
            .map(|e| &e.label)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        base.name
    );
    let report = train::train(TrainJob {
        base,
        base_dir,
        train: examples,
        dev,
        hp,
        out: args.out.clone(),
        data_path: args.data.display().to_string(),
        data_sha256,
        progress: !args.quiet,
    })?;
    let c = &report.card;
    if let Some(s) = c.dev_scores {
        eprintln!(
            "dev: accuracy={:.4} macro_f1={:.4} n={}",
            s.accuracy, s.macro_f1, s.n
        );
    }
    if let Some(e) = c.hyper_parameters.get("refit_epochs") {
        eprintln!(
            "refit: the served model was trained again for {e} epochs on all {} examples (dev included; the dev scores above are from the first run)",
            c.train_examples
        );
    }
    eprintln!(
        "trained in {:.0}s ({:.1} examples/s); model {} written to {}",
        c.train_seconds,
        report.examples_per_s,
        c.version,
        args.out.display()
    );
    println!("{}", args.out.display());
    Ok(())
}
