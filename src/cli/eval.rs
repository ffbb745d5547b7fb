use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use intentd::data;
use intentd::engine::entities::score::{self, EntityReport};
use intentd::engine::fusion::FusionConfig;
use intentd::model::classifier::IntentModel;
use intentd::model::dense::{self, Precision};
use intentd::model::{eval, int8};
use intentd::operator::OperatorSnapshot;

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
    /// Operator files: the regex entities (entities.yml) and the bot time zone for dates.
    #[arg(long, default_value = "config/operator")]
    pub operator_dir: PathBuf,
    /// Rasa data with the lookup tables and synonyms the entity extractor uses.
    #[arg(long, default_value = super::DEFAULT_TRAINING_DATA)]
    pub training_data: PathBuf,
    /// "Now" for relative dates (RFC 3339, e.g. 2026-11-28T10:00:00+08:00); default: the
    /// system clock.
    #[arg(long)]
    pub now: Option<String>,
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
        .iter()
        .map(|e| {
            (
                e.text.clone(),
                e.label.clone(),
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
    let entities = entity_report(&args, &ds)?;
    if let Some(dir) = &args.report {
        eval::write_report(dir, &outcome, &model.card.version)?;
        if let Some(e) = &entities {
            std::fs::write(dir.join("entities.json"), serde_json::to_string_pretty(e)?)?;
        }
        println!("report written to {}", dir.display());
    }
    println!("{}", eval::summary_line(r));
    Ok(())
}

/// Entity precision / recall on the data's `[text](type)` annotations (none: nothing printed).
fn entity_report(args: &EvalArgs, ds: &data::Dataset) -> Result<Option<EntityReport>> {
    if ds.examples.iter().all(|e| e.entities.is_empty()) {
        println!("entities: the data annotates none (Rasa `[text](type)`): not scored");
        return Ok(None);
    }
    let rules = OperatorSnapshot::load_dir(
        &args.operator_dir,
        &args.training_data,
        FusionConfig::default(),
    )?;
    let tz = rules.policy.settings("", "").timezone;
    let now = match &args.now {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| anyhow::anyhow!("--now '{t}': not an RFC 3339 time ({e})"))?
            .with_timezone(&tz),
        None => chrono::Utc::now().with_timezone(&tz),
    };
    let predicted: Vec<_> = ds
        .examples
        .iter()
        .map(|e| rules.entities.extract(&e.text, now))
        .collect();
    let gold: Vec<&[data::AnnotatedEntity]> =
        ds.examples.iter().map(|e| e.entities.as_slice()).collect();
    let r = score::score(&gold, &predicted);
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "entity", "precision", "recall", "f1", "support", "predicted"
    );
    for t in r.per_type.iter().chain([&r.overall]) {
        println!(
            "{:<24} {:>9.4} {:>9.4} {:>9.4} {:>8} {:>9}",
            t.entity, t.precision, t.recall, t.f1, t.support, t.predicted
        );
    }
    println!(
        "entities: {} of {} examples annotated; {} predicted entities of types the data does not annotate (not scored)",
        r.annotated_examples, r.examples, r.unscored_predictions
    );
    Ok(Some(r))
}
