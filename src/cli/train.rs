use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use intentd::data::{self, label_check};
use intentd::model::base_models::BaseModel;
use intentd::model::classifier::{self, read_json, ModelCard};
use intentd::model::ensemble::EnsembleSpec;
use intentd::model::out_of_fold::score_out_of_fold;
use intentd::model::train::{self, HyperParameters, LabeledText, TrainJob, TrainMode};

/// Fine-tune the encoder + a classification head on labelled data (TSV, JSONL, Rasa YAML, or a
/// folder of them) and write a self-contained model folder.
#[derive(Args, Debug, Clone)]
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
    /// Share of --data carved out as dev set when --dev is not given (0 to 1).
    #[arg(long)]
    pub dev_fraction: Option<f64>,
    /// Serve an exponential moving average of the weights with this decay (full mode; e.g.
    /// 0.99); 0 = off.
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Serve the mean of the weights at the end of the last N epochs (full mode); 0 = off.
    #[arg(long)]
    pub average_epochs: Option<usize>,
    /// Layer-wise learning-rate decay (full mode): each encoder layer learns at this factor of
    /// the one above; 1 = off.
    #[arg(long)]
    pub layer_lr_decay: Option<f64>,
    /// R-Drop (full mode): two dropout passes per batch plus this weight times their symmetric
    /// KL; doubles the training time; 0 = off.
    #[arg(long)]
    pub rdrop: Option<f64>,
    /// Weight of the lexical head (a character n-gram logistic regression) in the served mix
    /// `p ∝ p_encoder^(1-w) · p_lexical^w`, from 0 (no lexical head) to 1; default 0.4.
    #[arg(long)]
    pub lexical_weight: Option<f64>,
    /// The lexical head's inverse L2 strength (larger fits the training texts more closely);
    /// default 30.
    #[arg(long)]
    pub lexical_c: Option<f64>,
    /// The pretrained encoder to fine-tune. Given twice or more, one model is trained from each
    /// into a sub-folder of --out and they are served as one ensemble (more accurate, a second
    /// forward pass for the texts the first member is unsure of). Default: both shipped bases;
    /// `--base m3e-small` alone trains one model (faster to train and serve).
    #[arg(long, default_values_t = default_bases())]
    pub base: Vec<String>,
    /// With several --base: the first member answers alone when its top probability reaches
    /// this, and the others run only for the rest (0 to 1; 1 = every member for every text).
    #[arg(long, default_value_t = DEFAULT_CASCADE)]
    pub cascade: f64,
    #[arg(long, default_value = super::MODELS_DIR)]
    pub models_dir: PathBuf,
    /// Leave out the examples `intentd data check` flags as likely mislabelled (5-fold
    /// out-of-fold predictions in head mode, the margin rule) before training: for labels
    /// exported from real logs, where agents pick the wrong category.
    #[arg(long)]
    pub drop_suspect: bool,
    /// With --drop-suspect: the p(predicted) - p(label) margin at which an example is left out
    /// (0 to 1; `data check` reports at 0.5).
    #[arg(long, default_value_t = label_check::CheckLimits::default().mislabel_margin)]
    pub suspect_margin: f32,
    /// With --drop-suspect: suspects whose margin reaches this are given the intent the check
    /// suggests instead of being left out (keeps the data; for the surest suspects only).
    #[arg(long)]
    pub relabel_margin: Option<f32>,
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
            dev_fraction: None,
            ema_decay: None,
            average_epochs: None,
            layer_lr_decay: None,
            rdrop: None,
            lexical_weight: None,
            lexical_c: None,
            drop_suspect: false,
            suspect_margin: label_check::CheckLimits::default().mislabel_margin,
            relabel_margin: None,
            base: default_bases(),
            cascade: DEFAULT_CASCADE,
            models_dir: super::MODELS_DIR.into(),
            quiet: false,
        }
    }
}

fn default_bases() -> Vec<String> {
    intentd::model::base_models::DEFAULT_TRAIN_BASES
        .iter()
        .map(|b| b.to_string())
        .collect()
}

/// The smallest value at which the cascade gives the full pool's intent for every text of SMP2017's
/// dev.tsv (benches/RESULTS.md, "a cascade for the ensemble").
pub const DEFAULT_CASCADE: f64 = 0.8;

pub fn load_labeled(path: &std::path::Path) -> Result<(Vec<LabeledText>, String)> {
    let (examples, hash) = load_examples(path)?;
    Ok((to_labeled(examples), hash))
}

fn load_examples(path: &std::path::Path) -> Result<(Vec<data::Example>, String)> {
    let ds = data::load(path)?;
    let ds = report_conflicts(ds);
    if ds.examples.is_empty() {
        bail!("{}: no examples found (empty dataset)", path.display());
    }
    let hash = ds.content_hash();
    Ok((ds.examples, hash))
}

fn to_labeled(examples: Vec<data::Example>) -> Vec<LabeledText> {
    examples
        .into_iter()
        .map(|e| LabeledText {
            text: e.text,
            label: e.label,
        })
        .collect()
}

/// Folds of the out-of-fold check `--drop-suspect` runs (as `data check`'s default).
const SUSPECT_FOLDS: usize = 5;

/// `--drop-suspect`: the examples without those flagged as likely mislabelled, and how many
/// were flagged (listed with file:line on stderr).
fn drop_suspects(
    examples: Vec<data::Example>,
    base: &BaseModel,
    base_dir: &std::path::Path,
    seed: u64,
    margin: f32,
    relabel: Option<f32>,
) -> Result<(Vec<data::Example>, usize)> {
    if !(0.0..=1.0).contains(&margin) {
        bail!("--suspect-margin must be between 0 and 1, got {margin}");
    }
    if let Some(r) = relabel.filter(|r| !(margin..=1.0).contains(r)) {
        bail!("--relabel-margin must be between --suspect-margin ({margin}) and 1, got {r}");
    }
    let (labels, given) = label_check::label_indices(&examples);
    let folds = SUSPECT_FOLDS.min(examples.len());
    if labels.len() < 2 || folds < 2 {
        bail!(
            "--drop-suspect needs at least 2 intents and {SUSPECT_FOLDS} examples to check, found {} and {}",
            labels.len(),
            examples.len()
        );
    }
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    eprintln!(
        "--drop-suspect: scoring {} examples out of fold ({folds} folds, head mode)",
        examples.len()
    );
    let (_, probs) = score_out_of_fold(base, base_dir, &texts, &given, labels.len(), folds, seed)?;
    let limits = label_check::CheckLimits::default();
    let suspects =
        label_check::suspect_labels(&probs, &given, labels.len(), limits.min_examples, margin);
    eprintln!(
        "--drop-suspect: {} of {} examples flagged as likely mislabelled (left out unless relabelled)",
        suspects.len(),
        examples.len()
    );
    for m in suspects.iter().take(10) {
        let e = &examples[m.index];
        eprintln!(
            "  {}: {:?} labelled {} (out of fold: {} {:.2} vs {:.2})",
            e.origin, e.text, e.label, labels[m.suggested as usize], m.p_suggested, m.p_given
        );
    }
    if suspects.len() > 10 {
        eprintln!(
            "  ... and {} more (`intentd data check --report DIR` lists them all)",
            suspects.len() - 10
        );
    }
    let relabel_at = relabel.unwrap_or(f32::INFINITY);
    let mut fate: std::collections::HashMap<usize, Option<String>> =
        std::collections::HashMap::new();
    for m in &suspects {
        let new =
            (m.p_suggested - m.p_given >= relabel_at).then(|| labels[m.suggested as usize].clone());
        fate.insert(m.index, new);
    }
    let relabelled = fate.values().filter(|f| f.is_some()).count();
    if relabel.is_some() {
        eprintln!(
            "--relabel-margin: {relabelled} of them are kept with the suggested intent instead"
        );
    }
    let kept = examples
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut e)| match fate.get(&i) {
            None => Some(e),
            Some(Some(label)) => {
                e.label = label.clone();
                Some(e)
            }
            Some(None) => None,
        })
        .collect();
    Ok((kept, suspects.len()))
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
    match args.base.as_slice() {
        [] => bail!("--base: name a base model"),
        [one] => {
            let one = one.clone();
            train_one(args, &one, true)
        }
        _ => train_ensemble(args),
    }
}

/// One model per base, each into a sub-folder named after it, trained with the same flags; the
/// folder is swapped in whole once every member is written, so a failed member leaves the
/// previous model in place.
fn train_ensemble(args: TrainArgs) -> Result<()> {
    let mut names: Vec<String> = Vec::new();
    for b in &args.base {
        let base = super::base_model(b)?;
        if names.iter().any(|n| n == base.name) {
            bail!("--base {b} is given twice; an ensemble needs different bases");
        }
        names.push(base.name.to_string());
    }
    // Before hours of training, not after.
    if !(args.cascade > 0.0 && args.cascade <= 1.0) {
        bail!(
            "--cascade {} is out of range: it is a probability, above 0 and at most 1",
            args.cascade
        );
    }
    // Created by the first member's own save, after its flags and data were checked.
    let staging = train::staging_path(&args.out, "ensemble")?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let result = (|| -> Result<()> {
        let mut cards = Vec::new();
        for (i, b) in names.iter().enumerate() {
            eprintln!("ensemble member {} of {}: {b}", i + 1, names.len());
            let mut member = args.clone();
            member.out = staging.join(b);
            train_one(member, b, false)?;
            let card: ModelCard = read_json(&staging.join(b).join(classifier::CARD_FILE))?;
            cards.push(card);
        }
        let mut spec = EnsembleSpec::equal(&names);
        // 1 means no cascade: every top probability is below it, so nothing is gained by
        // writing it down.
        spec.cascade = (args.cascade < 1.0).then_some(args.cascade);
        spec.write(&staging)?;
        let card = ensemble_card(&spec, &cards);
        std::fs::write(
            staging.join(classifier::CARD_FILE),
            serde_json::to_string_pretty(&card)?,
        )?;
        // Loads it once, as serving will: a member that does not fit the others fails here.
        classifier::IntentModel::load(&staging)?;
        eprintln!(
            "ensemble {} of {} written to {}",
            card.version,
            names.join(" + "),
            args.out.display()
        );
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    train::swap_in(&staging, &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}

/// The ensemble's card: what it is made of (each member's own card stays in its folder).
fn ensemble_card(spec: &EnsembleSpec, cards: &[ModelCard]) -> ModelCard {
    let versions: Vec<&str> = cards.iter().map(|c| c.version.as_str()).collect();
    let join = |f: &dyn Fn(&ModelCard) -> String, sep: &str| {
        cards.iter().map(f).collect::<Vec<_>>().join(sep)
    };
    let first = &cards[0];
    ModelCard {
        version: spec.version(&versions),
        base_model: join(&|c| c.base_model.clone(), "+"),
        base_wheel: join(&|c| c.base_wheel.clone(), " "),
        base_wheel_sha256: join(&|c| c.base_wheel_sha256.clone(), " "),
        licence: join(&|c| format!("{}: {}", c.base_model, c.licence), "; "),
        input_prefix: String::new(),
        data_path: first.data_path.clone(),
        data_sha256: first.data_sha256.clone(),
        train_examples: first.train_examples,
        dev_examples: first.dev_examples,
        labels: first.labels,
        max_tokens: first.max_tokens,
        hyper_parameters: serde_json::json!({
            "ensemble": spec.members.iter().zip(cards).map(|(m, c)| serde_json::json!({
                "dir": m.dir, "weight": m.weight, "version": c.version,
            })).collect::<Vec<_>>(),
            "cascade": spec.cascade,
        }),
        trained_at: cards
            .last()
            .map(|c| c.trained_at.clone())
            .unwrap_or_default(),
        train_seconds: cards.iter().map(|c| c.train_seconds).sum(),
        dev_scores: None,
    }
}

/// `announce`: print the model folder on stdout (the ensemble prints its own instead).
fn train_one(args: TrainArgs, base: &str, announce: bool) -> Result<()> {
    let base = super::base_model(base)?;
    let (examples, data_sha256) = load_examples(&args.data)?;
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
    if let Some(v) = args.dev_fraction {
        if !(0.0..1.0).contains(&v) {
            bail!("--dev-fraction must be at least 0 and below 1, got {v}");
        }
        hp.dev_fraction = v;
    }
    if let Some(v) = args.ema_decay {
        if !(0.0..1.0).contains(&v) {
            bail!("--ema-decay must be at least 0 and below 1, got {v}");
        }
        hp.ema_decay = v;
    }
    if let Some(v) = args.average_epochs {
        hp.average_epochs = v;
    }
    if let Some(v) = args.layer_lr_decay {
        if !(v > 0.0 && v <= 1.0) {
            bail!("--layer-lr-decay must be above 0 and at most 1, got {v}");
        }
        hp.layer_lr_decay = v;
    }
    if let Some(v) = args.rdrop {
        // Written so that NaN is refused too.
        if !v.is_finite() || v < 0.0 {
            bail!("--rdrop must be a number of at least 0, got {v}");
        }
        hp.rdrop_alpha = v;
    }
    if let Some(v) = args.lexical_weight {
        if !(0.0..=1.0).contains(&v) {
            bail!("--lexical-weight must be from 0 to 1, got {v}");
        }
        hp.lexical_weight = v;
    }
    if let Some(v) = args.lexical_c {
        if !(v.is_finite() && v > 0.0) {
            bail!("--lexical-c must be a positive number, got {v}");
        }
        hp.lexical_c = v;
    }
    let base_dir = super::ensure_base_model(base, &args.models_dir)?;
    let (examples, dropped) = if args.drop_suspect {
        drop_suspects(
            examples,
            base,
            &base_dir,
            hp.seed,
            args.suspect_margin,
            args.relabel_margin,
        )?
    } else {
        (examples, 0)
    };
    hp.dropped_suspects = dropped;
    let examples = to_labeled(examples);
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
    if announce {
        println!("{}", args.out.display());
    }
    Ok(())
}
