//! `intentd train`: fine-tune the pretrained encoder plus a linear head on labelled texts, in
//! candle on CPU, and write a self-contained model folder.
//!
//! Two modes: `full` updates every weight (best accuracy); `head` freezes the encoder, embeds
//! every text once and trains only the head (seconds instead of minutes). Both use AdamW with
//! linear warm-up and decay, label smoothing and gradient clipping, keep the epoch with the best
//! dev macro-F1, and stop early when it stops improving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::adamw::FusedAdamW;
use super::base_models::BaseModel;
use super::bert::{Bert, BertConfig, Mode, WordEmbeddingFormat};
use super::classifier::{self, ModelCard, Scores};
use super::encoder::{SentenceEncoder, TextTokenizer, Tokenized};
use super::lexical::{LexicalHead, LexicalSettings};
use super::scoring;
use super::weight_average::WeightAverage;

/// One labelled training text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledText {
    pub text: String,
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrainMode {
    /// Fine-tune the whole encoder and the head.
    Full,
    /// Freeze the encoder; train only the head on cached sentence vectors.
    Head,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HyperParameters {
    pub mode: TrainMode,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub head_learning_rate: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    pub max_grad_norm: f64,
    pub dropout: f32,
    /// Keep the word-embedding table fixed (full mode): faster, and no worse on small data.
    pub freeze_word_embeddings: bool,
    pub patience: usize,
    pub seed: u64,
    pub max_tokens: usize,
    /// Fraction of the training data carved out as dev set when none is given.
    pub dev_fraction: f64,
    /// Full mode with a carved-out dev set: once the dev set has chosen the number of epochs,
    /// train again from the pretrained weights on all the data (dev included) for that many
    /// epochs, so the served model has seen every example. Doubles the training time.
    #[serde(default)]
    pub refit: bool,
    /// Examples `--drop-suspect` left out before training (recorded in the model card).
    #[serde(default)]
    pub dropped_suspects: usize,
    /// Full mode: serve an exponential moving average of the weights (updated every step) with
    /// this decay instead of the last weights; 0 = off. The dev set judges the average too.
    #[serde(default)]
    pub ema_decay: f64,
    /// Full mode: serve the mean of the weights at the end of each of the schedule's last
    /// this-many epochs (SWA-style); 0 = off. Ignored when `ema_decay` is set.
    #[serde(default)]
    pub average_epochs: usize,
    /// Full mode: each encoder layer below the top learns at this factor of the one above
    /// (embeddings lowest); 1 = one learning rate for the whole encoder.
    #[serde(default = "no_layer_decay")]
    pub layer_lr_decay: f64,
    /// Full mode: R-Drop weight: two dropout passes per batch, plus this times their
    /// symmetric KL divergence; 0 = off (one pass, half the cost).
    #[serde(default)]
    pub rdrop_alpha: f64,
    /// Exponent of the lexical head (character n-gram logistic regression) in the served mix,
    /// `p ∝ p_encoder^(1-w) · p_lexical^w`; 0 = no lexical head (and none in older cards).
    #[serde(default)]
    pub lexical_weight: f64,
    /// The lexical head's inverse L2 strength (scikit-learn's `C`).
    #[serde(default = "default_lexical_c")]
    pub lexical_c: f64,
}

fn default_lexical_c() -> f64 {
    30.0
}

/// Chosen on SMP2017's dev.tsv (benches/RESULTS.md, "lexical head"), not on a test set.
pub const DEFAULT_LEXICAL_WEIGHT: f64 = 0.4;

fn no_layer_decay() -> f64 {
    1.0
}

impl HyperParameters {
    pub fn defaults_for(mode: TrainMode) -> Self {
        match mode {
            TrainMode::Full => Self {
                mode,
                epochs: 6,
                batch_size: 32,
                // Chosen on dev data: for this 4-layer encoder 2e-4 gave a higher dev accuracy
                // than 1e-4 on the default training data (0.871 vs 0.861; see README).
                learning_rate: 2e-4,
                head_learning_rate: 2e-3,
                warmup_ratio: 0.1,
                weight_decay: 0.01,
                label_smoothing: 0.1,
                max_grad_norm: 1.0,
                dropout: 0.1,
                freeze_word_embeddings: true,
                patience: 3,
                seed: 42,
                max_tokens: 64,
                dev_fraction: 0.1,
                refit: true,
                dropped_suspects: 0,
                ema_decay: 0.0,
                average_epochs: 0,
                layer_lr_decay: 1.0,
                rdrop_alpha: 0.0,
                lexical_weight: DEFAULT_LEXICAL_WEIGHT,
                lexical_c: default_lexical_c(),
            },
            TrainMode::Head => Self {
                mode,
                epochs: 60,
                batch_size: 32,
                learning_rate: 0.0,
                head_learning_rate: 5e-3,
                warmup_ratio: 0.05,
                weight_decay: 0.01,
                label_smoothing: 0.1,
                max_grad_norm: 5.0,
                dropout: 0.1,
                freeze_word_embeddings: true,
                patience: 10,
                seed: 42,
                max_tokens: 64,
                dev_fraction: 0.1,
                refit: false,
                dropped_suspects: 0,
                ema_decay: 0.0,
                average_epochs: 0,
                layer_lr_decay: 1.0,
                rdrop_alpha: 0.0,
                lexical_weight: DEFAULT_LEXICAL_WEIGHT,
                lexical_c: default_lexical_c(),
            },
        }
    }
}

pub struct TrainJob<'a> {
    pub base: &'a BaseModel,
    /// Folder written by `fetch-model`.
    pub base_dir: PathBuf,
    pub train: Vec<LabeledText>,
    /// Explicit dev set; when `None`, `dev_fraction` of `train` is carved out (stratified).
    pub dev: Option<Vec<LabeledText>>,
    pub hp: HyperParameters,
    pub out: PathBuf,
    /// Recorded in the model card.
    pub data_path: String,
    pub data_sha256: String,
    /// Show a progress bar (off in tests).
    pub progress: bool,
}

#[derive(Debug, Clone)]
pub struct TrainReport {
    pub card: ModelCard,
    pub examples_per_s: f64,
}

struct Encoded {
    tokens: Vec<Tokenized>,
    labels: Vec<u32>,
}

/// Makes candle run its element-wise ops on the calling thread in this process, unless
/// `CANDLE_NUM_THREADS` is already set; matmuls keep gemm's threads (`RAYON_NUM_THREADS`).
/// Why: candle splits element-wise ops of 64k+ elements over its barrier pool and the caller
/// spin-waits for the pool's worker, which during training is often not running (gemm's
/// threads, or another process, hold the cores). Profiled on 2 cores, that wait was 36 % of
/// all samples against ~11 % for the element-wise work itself. Call it before any candle op
/// and before other threads start (it sets the environment).
pub fn serial_elementwise_ops() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

pub fn train(job: TrainJob) -> Result<TrainReport> {
    let started = Instant::now();
    let hp = job.hp.clone();
    if job.train.is_empty() {
        bail!("no training examples (empty dataset)");
    }
    if hp.batch_size == 0 || hp.epochs == 0 {
        bail!("batch_size and epochs must be at least 1");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(hp.seed);
    super::seeded::seed(hp.seed);
    let (train_set, dev_set) = match &job.dev {
        Some(dev) => (job.train.clone(), dev.clone()),
        None => carve_dev(&job.train, hp.dev_fraction, &mut rng),
    };
    let labels = sorted_labels(&train_set);
    if labels.len() < 2 {
        bail!(
            "need at least 2 intents to train a classifier, found {}",
            labels.len()
        );
    }
    let label_index: HashMap<&str, u32> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i as u32))
        .collect();
    // Dev examples whose label never occurs in training cannot be predicted; keep them (they
    // count as errors) but say so.
    let unknown_dev = dev_set
        .iter()
        .filter(|e| !label_index.contains_key(e.label.as_str()))
        .count();
    if unknown_dev > 0 {
        eprintln!("warning: {unknown_dev} dev examples have intents absent from training");
    }

    let tokenizer = TextTokenizer::from_file(&job.base_dir.join("tokenizer.json"), hp.max_tokens)?
        .with_prefix(job.base.input_prefix);
    let config: BertConfig = classifier::read_json(&job.base_dir.join("config.json"))?;
    let encode = |set: &[LabeledText]| -> Result<Encoded> {
        Ok(Encoded {
            tokens: tokenizer
                .tokenize_all(&set.iter().map(|e| e.text.as_str()).collect::<Vec<_>>())?,
            labels: set
                .iter()
                .map(|e| {
                    label_index
                        .get(e.label.as_str())
                        .copied()
                        .unwrap_or(u32::MAX)
                })
                .collect(),
        })
    };
    let train_enc = encode(&train_set)?;
    let dev_enc = encode(&dev_set)?;
    let (train_enc_labels, dev_labels) = (train_enc.labels.clone(), dev_enc.labels.clone());

    let fresh = || -> Result<FreshModel> {
        FreshModel::new(
            &config,
            &job.base_dir.join(job.base.weights),
            labels.len(),
            hp.freeze_word_embeddings,
        )
    };
    let mut model = fresh()?;
    let (mut best, mut examples_per_s) = match hp.mode {
        TrainMode::Full => train_full(
            &model,
            &tokenizer,
            &train_enc,
            &dev_enc,
            &labels,
            &hp,
            hp.epochs,
            &mut rng,
            job.progress,
        )?,
        TrainMode::Head => train_head(
            &model.encoder,
            &model.head,
            &model.head_vars,
            &tokenizer,
            &train_enc,
            &dev_enc,
            &labels,
            &hp,
            &mut rng,
            job.progress,
        )?,
    };
    // Restore the best epoch's weights before saving.
    model.restore(&best.weights)?;
    // Fitted on the training split to score the served mix on dev; it is the served head too
    // unless a refit below trains on the dev set as well.
    let mut lexical = None;
    if hp.lexical_weight > 0.0 && best.scores.is_some() && !dev_set.is_empty() {
        let head = fit_lexical(train_set.iter().zip(&train_enc_labels), labels.len(), &hp)?;
        let dev_texts: Vec<&str> = dev_set.iter().map(|e| e.text.as_str()).collect();
        let probs = predict_encoded(
            &model.encoder,
            &model.head,
            &tokenizer,
            &dev_enc,
            hp.batch_size,
        )?
        .iter()
        .zip(&dev_texts)
        .map(|(p, t)| head.mix(p, &head.ngrams.features(t)))
        .collect::<Vec<_>>();
        let mixed = score_probs(&probs, &dev_enc.labels, &labels);
        if job.progress {
            let enc = best.scores.expect("checked above");
            eprintln!(
                "dev with the lexical head (weight {}): accuracy={:.4} macro_f1={:.4} (encoder alone {:.4})",
                hp.lexical_weight, mixed.accuracy, mixed.macro_f1, enc.accuracy
            );
        }
        best.scores = Some(mixed);
        lexical = Some(head);
    }

    let refit = hp.mode == TrainMode::Full
        && hp.refit
        && job.dev.is_none()
        && !dev_set.is_empty()
        && best.scores.is_some();
    let mut trained_on = train_set.len();
    let mut refit_epochs = None;
    if refit {
        // The dev set has done its job (choosing the epoch count); fold it back in and train
        // again from the pretrained weights with the same schedule, stopping at that epoch.
        let epochs = best.epoch;
        if job.progress {
            eprintln!(
                "refit: {epochs} epochs on all {} examples (dev included)",
                train_set.len() + dev_set.len()
            );
        }
        drop(model);
        super::seeded::seed(hp.seed);
        let mut rng = ChaCha8Rng::seed_from_u64(hp.seed);
        let mut all = train_enc;
        all.tokens.extend(dev_enc.tokens.iter().cloned());
        all.labels.extend(dev_enc.labels.iter().copied());
        let none = Encoded {
            tokens: Vec::new(),
            labels: Vec::new(),
        };
        model = fresh()?;
        // No dev set: the weights after the last epoch are the model (nothing to restore).
        let (_, speed) = train_full(
            &model,
            &tokenizer,
            &all,
            &none,
            &labels,
            &hp,
            epochs,
            &mut rng,
            job.progress,
        )?;
        examples_per_s = speed;
        trained_on = all.tokens.len();
        refit_epochs = Some(epochs);
    }
    // The lexical head sees every example the served encoder saw.
    if hp.lexical_weight > 0.0 && (lexical.is_none() || refit_epochs.is_some()) {
        let dev = if refit_epochs.is_some() {
            &dev_set[..]
        } else {
            &[]
        };
        let examples = train_set
            .iter()
            .zip(&train_enc_labels)
            .chain(dev.iter().zip(&dev_labels));
        lexical = Some(fit_lexical(examples, labels.len(), &hp)?);
    }
    let mut hyper_parameters = serde_json::to_value(&hp)?;
    if let Some(e) = refit_epochs {
        hyper_parameters["refit_epochs"] = e.into();
    }
    let varmap = &model.varmap;
    let card = ModelCard {
        version: String::new(),
        base_model: job.base.name.into(),
        base_wheel: job.base.requirements(),
        base_wheel_sha256: job.base.sha256s(),
        licence: job.base.licence.into(),
        input_prefix: job.base.input_prefix.into(),
        data_path: job.data_path.clone(),
        data_sha256: job.data_sha256.clone(),
        train_examples: trained_on,
        dev_examples: dev_set.len(),
        labels: labels.len(),
        max_tokens: job.base.max_tokens,
        hyper_parameters,
        trained_at: chrono::Utc::now().to_rfc3339(),
        train_seconds: started.elapsed().as_secs_f64(),
        dev_scores: best.scores,
    };
    let card = save_model_dir(
        &job.out,
        varmap,
        &config,
        &job.base_dir,
        &labels,
        lexical.as_ref(),
        card,
    )?;
    Ok(TrainReport {
        card,
        examples_per_s,
    })
}

/// Head mode for callers that fit many heads on the same texts (`intentd data check` fits one
/// per fold): the pretrained encoder, frozen, embeds every text once; rows follow `texts`.
pub fn embed_frozen(
    base: &BaseModel,
    base_dir: &Path,
    texts: &[&str],
    max_tokens: usize,
) -> Result<Tensor> {
    let tokenizer = TextTokenizer::from_file(&base_dir.join("tokenizer.json"), max_tokens)?
        .with_prefix(base.input_prefix);
    let config: BertConfig = classifier::read_json(&base_dir.join("config.json"))?;
    let model = FreshModel::new(&config, &base_dir.join(base.weights), 2, true)?;
    let tokens = tokenizer.tokenize_all(texts)?;
    embed_tokens(&model.encoder, &tokenizer, &tokens)?.context("no texts to embed")
}

/// Head mode on vectors already embedded: trains a fresh head seeded by `hp.seed` for all
/// `hp.epochs` epochs (no dev set, so no early stopping) on the rows of `train_x` labelled
/// `train_y` (indexes below `n_labels`), and returns the softmax probabilities of each row of
/// `predict_x`.
pub fn fit_head_and_predict(
    train_x: &Tensor,
    train_y: &[u32],
    n_labels: usize,
    predict_x: &Tensor,
    hp: &HyperParameters,
) -> Result<Vec<Vec<f32>>> {
    if n_labels < 2 {
        bail!("need at least 2 intents to train a classifier, found {n_labels}");
    }
    if hp.batch_size == 0 || hp.epochs == 0 {
        bail!("batch_size and epochs must be at least 1");
    }
    let (rows, hidden) = train_x.dims2()?;
    if rows != train_y.len() || rows == 0 {
        bail!(
            "{rows} training vectors for {} labels (need as many, at least one)",
            train_y.len()
        );
    }
    if let Some(bad) = train_y.iter().find(|&&y| y as usize >= n_labels) {
        bail!("label index {bad} is out of range for {n_labels} intents");
    }
    super::seeded::seed(hp.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(hp.seed);
    let varmap = VarMap::new();
    let (head, head_vars) = new_head(&varmap, hidden, n_labels, train_x.device())?;
    let names: Vec<String> = (0..n_labels).map(|i| i.to_string()).collect();
    // Without a dev set every epoch is "best": the head's current weights are the last epoch's.
    fit_head(
        &head, &head_vars, train_x, train_y, None, &names, hp, &mut rng, false,
    )?;
    Ok(candle_nn::ops::softmax_last_dim(&head.forward(predict_x)?)?.to_vec2::<f32>()?)
}

struct Best {
    scores: Option<Scores>,
    /// 1-based epoch the weights are from (0: before training).
    epoch: usize,
    /// Weights to restore; empty when they are the model's current weights.
    weights: HashMap<String, Tensor>,
}

/// The pretrained encoder plus a freshly initialised (seeded) head, ready to fine-tune.
struct FreshModel {
    varmap: VarMap,
    encoder: SentenceEncoder,
    head: Linear,
    head_vars: Vec<Var>,
}

impl FreshModel {
    fn new(config: &BertConfig, weights: &Path, labels: usize, freeze_words: bool) -> Result<Self> {
        if !freeze_words && config.word_embeddings == WordEmbeddingFormat::Q4_0 {
            bail!(
                "this base model keeps its word embeddings in 4-bit blocks, which stay frozen; \
                 train with frozen word embeddings (the default)"
            );
        }
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let mut bert = Bert::load(vb.clone(), config, true)?;
        load_pretrained(&varmap, weights)?;
        if freeze_words {
            // After loading: the frozen view shares the variable's storage, so it holds the
            // pretrained values; the variable itself is left out of the optimiser.
            bert.freeze_word_embeddings();
        }
        let encoder = SentenceEncoder::new(bert, device.clone());
        let (head, head_vars) = new_head(&varmap, config.hidden_size, labels, &device)?;
        Ok(Self {
            varmap,
            encoder,
            head,
            head_vars,
        })
    }

    fn restore(&mut self, weights: &HashMap<String, Tensor>) -> Result<()> {
        let data = self.varmap.data().lock().expect("varmap lock");
        for (name, t) in weights {
            data[name].set(t)?;
        }
        Ok(())
    }
}

/// A fresh linear head `classifier.*` in `varmap`: seeded normal weights (BERT's
/// initializer_range 0.02) and zero bias instead of candle's unseeded default.
fn new_head(
    varmap: &VarMap,
    hidden: usize,
    labels: usize,
    device: &Device,
) -> Result<(Linear, Vec<Var>)> {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
    let head = candle_nn::linear(hidden, labels, vb.pp("classifier"))?;
    let head_vars: Vec<Var> = {
        let data = varmap.data().lock().expect("varmap lock");
        ["classifier.weight", "classifier.bias"]
            .iter()
            .map(|k| data[*k].clone())
            .collect()
    };
    head_vars[0].set(&super::seeded::normal(&[labels, hidden], 0.02, device)?)?;
    head_vars[1].set(&Tensor::zeros(labels, DType::F32, device)?)?;
    Ok((head, head_vars))
}

fn snapshot(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

fn snapshot_vars(names: &[&str], vars: &[Var]) -> Result<HashMap<String, Tensor>> {
    names
        .iter()
        .zip(vars)
        .map(|(k, v)| Ok((k.to_string(), v.as_tensor().copy()?)))
        .collect()
}

/// The encoder's trainable variables grouped by depth for layer-wise learning-rate decay, each
/// group with its learning-rate factor: `decay^(layers - depth)`, where the embeddings are depth
/// 0, `encoder.layer.i` depth i + 1 and anything else (a pooler) the top. Why: the lower layers
/// hold the general language knowledge, which a few thousand labelled texts should move least.
/// With decay 1 there is one group (one learning rate).
fn layer_groups(varmap: &VarMap, vars: Vec<Var>, decay: f64) -> Vec<(Vec<Var>, f64)> {
    if decay == 1.0 {
        return vec![(vars, 1.0)];
    }
    let names: HashMap<candle_core::TensorId, String> = {
        let data = varmap.data().lock().expect("varmap lock");
        data.iter().map(|(k, v)| (v.id(), k.clone())).collect()
    };
    let layer_of = |name: &str| -> Option<usize> {
        name.strip_prefix("encoder.layer.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    };
    let depth = |v: &Var| -> Option<usize> {
        let name = names.get(&v.id())?;
        if name.starts_with("embeddings.") {
            Some(0)
        } else {
            layer_of(name).map(|i| i + 1)
        }
    };
    let layers = vars.iter().filter_map(depth).max().unwrap_or(0);
    let mut groups: std::collections::BTreeMap<usize, Vec<Var>> = Default::default();
    for v in vars {
        let d = depth(&v).unwrap_or(layers);
        groups.entry(d).or_default().push(v);
    }
    groups
        .into_iter()
        .map(|(d, vars)| (vars, decay.powi((layers - d) as i32)))
        .collect()
}

/// Model selection on a small dev set: an epoch whose dev accuracy is within one standard error
/// (at least one example) of the best so far is as good as the best, and the later of such epochs
/// wins. Why: with a schedule that decays to zero the later epochs are the settled ones, and a
/// dev set of a few hundred texts cannot tell apart differences smaller than that (picking an
/// early, noisy peak cost SMP2017 about 0.01 in test accuracy).
fn within_dev_noise(accuracy: f64, best: f64, n: usize) -> bool {
    let n = n.max(1) as f64;
    let standard_error = (best * (1.0 - best) / n).sqrt().max(1.0 / n);
    accuracy >= best - standard_error - 1e-12
}

/// Fine-tunes for `run_epochs` epochs (at most `hp.epochs`) on the schedule of `hp.epochs`:
/// a refit stops where the dev run's best epoch was, with the same learning rates up to there.
#[allow(clippy::too_many_arguments)]
fn train_full(
    model: &FreshModel,
    tokenizer: &TextTokenizer,
    train: &Encoded,
    dev: &Encoded,
    labels: &[String],
    hp: &HyperParameters,
    run_epochs: usize,
    rng: &mut ChaCha8Rng,
    progress: bool,
) -> Result<(Best, f64)> {
    let FreshModel {
        varmap,
        encoder,
        head,
        head_vars,
    } = model;
    let device = encoder.device.clone();
    let head_ids: Vec<_> = head_vars.iter().map(|v| v.id()).collect();
    let frozen: Option<candle_core::TensorId> = if hp.freeze_word_embeddings {
        let data = varmap.data().lock().expect("varmap lock");
        data.get("embeddings.word_embeddings.weight")
            .map(|v| v.id())
    } else {
        None
    };
    let body_vars: Vec<Var> = varmap
        .all_vars()
        .into_iter()
        // A 4-bit word table is a U8 variable: never trained.
        .filter(|v| !head_ids.contains(&v.id()) && Some(v.id()) != frozen && v.dtype().is_float())
        .collect();
    let trainable: Vec<Var> = body_vars.iter().chain(head_vars).cloned().collect();
    // One optimiser per encoder depth, each with its own peak learning rate.
    let mut opt_body: Vec<(FusedAdamW, f64)> = layer_groups(varmap, body_vars, hp.layer_lr_decay)
        .into_iter()
        .map(|(vars, factor)| {
            let lr = hp.learning_rate * factor;
            Ok((FusedAdamW::new(vars, adamw(lr, hp.weight_decay))?, lr))
        })
        .collect::<Result<_>>()?;
    let mut opt_head = FusedAdamW::new(
        head_vars.to_vec(),
        adamw(hp.head_learning_rate, hp.weight_decay),
    )?;
    let steps_per_epoch = train.tokens.len().div_ceil(hp.batch_size);
    let total_steps = steps_per_epoch * hp.epochs;
    let run_epochs = run_epochs.min(hp.epochs);
    let mut average = if hp.ema_decay > 0.0 {
        Some(WeightAverage::new(&trainable, Some(hp.ema_decay)))
    } else if hp.average_epochs > 0 {
        Some(WeightAverage::new(&trainable, None))
    } else {
        None
    };
    // Uniform averaging covers the last `average_epochs` epochs of the schedule (a refit that
    // stops earlier averages those of them it reaches).
    let first_averaged_epoch = hp.epochs.saturating_sub(hp.average_epochs) + 1;
    let bar = Progress::new(progress, (steps_per_epoch * run_epochs) as u64);
    // No copy: the first epoch evaluated always becomes the best (it is within noise of itself),
    // and without a dev set the last epoch is the model as it stands.
    let mut best = Best {
        scores: None,
        epoch: 0,
        weights: HashMap::new(),
    };
    let mut since_best = 0;
    let mut best_accuracy = 0f64;
    let mut step = 0usize;
    let mut seen = 0usize;
    // Time in training steps only (forward, backward, clipping, optimiser): examples/s is the
    // speed of fine-tuning itself, comparable with other frameworks, not of dev evaluation.
    let mut train_secs = 0f64;
    for epoch in 1..=run_epochs {
        for batch in length_bucketed_batches(&train.tokens, hp.batch_size, rng) {
            let t_step = Instant::now();
            let toks: Vec<&Tokenized> = batch.iter().map(|&i| &train.tokens[i]).collect();
            let ys: Vec<u32> = batch.iter().map(|&i| train.labels[i]).collect();
            let padded = tokenizer.pad(&toks, &device)?;
            let logits_of = |padded: &super::encoder::PaddedBatch| -> Result<Tensor> {
                let pooled = encoder.embed(padded, Mode::Train)?;
                let pooled = super::seeded::dropout(&pooled, hp.dropout)?;
                Ok(head.forward(&pooled)?)
            };
            let logits = logits_of(&padded)?;
            let loss = smoothed_cross_entropy(&logits, &ys, hp.label_smoothing)?;
            let loss = if hp.rdrop_alpha > 0.0 {
                // A second pass draws other dropout masks; the KL term pulls the two
                // predictions together (R-Drop).
                let again = logits_of(&padded)?;
                let both =
                    ((loss + smoothed_cross_entropy(&again, &ys, hp.label_smoothing)?)? * 0.5)?;
                (both + (symmetric_kl(&logits, &again)? * (hp.rdrop_alpha * 0.5))?)?
            } else {
                loss
            };
            let grads = loss.backward()?;
            let clip = clip_scale(&grads, &trainable, hp.max_grad_norm)?;
            let scale = lr_scale(step, total_steps, hp.warmup_ratio);
            for (opt, lr) in &mut opt_body {
                opt.set_grad_scale(clip);
                opt.set_learning_rate(*lr * scale);
                opt.step(&grads)?;
            }
            opt_head.set_grad_scale(clip);
            opt_head.set_learning_rate(hp.head_learning_rate * scale);
            opt_head.step(&grads)?;
            if let (Some(avg), true) = (&mut average, hp.ema_decay > 0.0) {
                avg.update()?;
            }
            step += 1;
            seen += batch.len();
            let loss_v = loss.to_scalar::<f32>()?;
            train_secs += t_step.elapsed().as_secs_f64();
            bar.step(|| {
                format!(
                    "epoch {epoch}/{run_epochs} loss {loss_v:.4} {:.1} ex/s",
                    seen as f64 / train_secs
                )
            });
        }
        if let (Some(avg), true) = (&mut average, hp.ema_decay <= 0.0) {
            if epoch >= first_averaged_epoch {
                avg.update()?;
            }
        }
        if dev.tokens.is_empty() {
            // Nothing to select on: the last epoch is the model.
            best.epoch = epoch;
            continue;
        }
        // The dev set judges what would be served: the average once there is one.
        let live = match &average {
            Some(avg) => avg.swap_in()?,
            None => Vec::new(),
        };
        let scores = evaluate_encoded(encoder, head, tokenizer, dev, labels, hp.batch_size)?;
        bar.println(format!(
            "epoch {epoch}: dev accuracy={:.4} macro_f1={:.4} n={}{}",
            scores.accuracy,
            scores.macro_f1,
            scores.n,
            if live.is_empty() {
                ""
            } else {
                " (averaged weights)"
            }
        ));
        best_accuracy = best_accuracy.max(scores.accuracy);
        let improved = within_dev_noise(scores.accuracy, best_accuracy, scores.n);
        let weights = if improved {
            snapshot(varmap)?
        } else {
            HashMap::new()
        };
        if let Some(avg) = &average {
            avg.restore(live)?;
        }
        if improved {
            best = Best {
                scores: Some(scores),
                epoch,
                weights,
            };
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= hp.patience && epoch < run_epochs {
                bar.println(format!(
                    "early stop: no dev improvement for {} epochs",
                    hp.patience
                ));
                break;
            }
        }
    }
    if let (Some(avg), true) = (&average, dev.tokens.is_empty()) {
        // No dev set: the model is the average as it stands (the live weights are dropped).
        avg.swap_in()?;
    }
    if let Some(s) = best.scores {
        bar.println(format!(
            "chosen: epoch {} (dev accuracy={:.4}; best {best_accuracy:.4})",
            best.epoch, s.accuracy
        ));
    }
    bar.finish();
    Ok((best, seen as f64 / train_secs.max(1e-9)))
}

#[allow(clippy::too_many_arguments)]
fn train_head(
    encoder: &SentenceEncoder,
    head: &Linear,
    head_vars: &[Var],
    tokenizer: &TextTokenizer,
    train: &Encoded,
    dev: &Encoded,
    labels: &[String],
    hp: &HyperParameters,
    rng: &mut ChaCha8Rng,
    progress: bool,
) -> Result<(Best, f64)> {
    // The encoder is frozen: embed every text once.
    let train_x = embed_tokens(encoder, tokenizer, &train.tokens)?.expect("non-empty training set");
    let dev_x = embed_tokens(encoder, tokenizer, &dev.tokens)?;
    fit_head(
        head,
        head_vars,
        &train_x,
        &train.labels,
        dev_x.as_ref().map(|x| (x, dev.labels.as_slice())),
        labels,
        hp,
        rng,
        progress,
    )
}

/// Sentence vectors (n, hidden) of tokenised texts from the frozen encoder; None for no texts.
fn embed_tokens(
    encoder: &SentenceEncoder,
    tokenizer: &TextTokenizer,
    tokens: &[Tokenized],
) -> Result<Option<Tensor>> {
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut parts = Vec::new();
    for chunk in tokens.chunks(64) {
        let refs: Vec<&Tokenized> = chunk.iter().collect();
        parts.push(
            encoder
                .embed(&tokenizer.pad(&refs, &encoder.device)?, Mode::Infer)?
                .detach(),
        );
    }
    Ok(Some(Tensor::cat(&parts, 0)?))
}

/// Head-mode training on vectors already embedded: `train_y[i]` is row i's label index. With a
/// dev set, the epoch with the best dev macro-F1 wins and patience stops early; without one, the
/// last epoch is the model.
#[allow(clippy::too_many_arguments)]
fn fit_head(
    head: &Linear,
    head_vars: &[Var],
    train_x: &Tensor,
    train_y: &[u32],
    dev: Option<(&Tensor, &[u32])>,
    labels: &[String],
    hp: &HyperParameters,
    rng: &mut ChaCha8Rng,
    progress: bool,
) -> Result<(Best, f64)> {
    let device = train_x.device().clone();
    let dev_x = dev.map(|d| d.0);
    let mut opt = FusedAdamW::new(
        head_vars.to_vec(),
        adamw(hp.head_learning_rate, hp.weight_decay),
    )?;
    let n = train_y.len();
    let steps_per_epoch = n.div_ceil(hp.batch_size);
    let total_steps = steps_per_epoch * hp.epochs;
    let bar = Progress::new(progress, total_steps as u64);
    let names = ["classifier.weight", "classifier.bias"];
    let mut best = Best {
        scores: None,
        epoch: 0,
        weights: snapshot_vars(&names, head_vars)?,
    };
    let mut since_best = 0;
    let mut step = 0;
    let mut seen = 0usize;
    let t0 = Instant::now();
    let mut order: Vec<usize> = (0..n).collect();
    for epoch in 1..=hp.epochs {
        order.shuffle(rng);
        for batch in order.chunks(hp.batch_size) {
            let idx = Tensor::from_vec(
                batch.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                batch.len(),
                &device,
            )?;
            let x = super::seeded::dropout(&train_x.index_select(&idx, 0)?, hp.dropout)?;
            let ys: Vec<u32> = batch.iter().map(|&i| train_y[i]).collect();
            let loss = smoothed_cross_entropy(&head.forward(&x)?, &ys, hp.label_smoothing)?;
            let grads = loss.backward()?;
            opt.set_grad_scale(clip_scale(&grads, head_vars, hp.max_grad_norm)?);
            opt.set_learning_rate(
                hp.head_learning_rate * lr_scale(step, total_steps, hp.warmup_ratio),
            );
            opt.step(&grads)?;
            step += 1;
            seen += batch.len();
            let loss_v = loss.to_scalar::<f32>()?;
            bar.step(|| format!("epoch {epoch}/{} loss {loss_v:.4}", hp.epochs));
        }
        let scores = match dev {
            Some((dx, dy)) => {
                let probs =
                    candle_nn::ops::softmax_last_dim(&head.forward(dx)?)?.to_vec2::<f32>()?;
                score_probs(&probs, dy, labels)
            }
            None => Scores::default(),
        };
        if best.scores.is_none_or(|b| scores.macro_f1 > b.macro_f1) || dev_x.is_none() {
            best = Best {
                scores: Some(scores),
                epoch,
                weights: snapshot_vars(&names, head_vars)?,
            };
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= hp.patience {
                break;
            }
        }
    }
    bar.finish();
    if let (Some(s), Some(_)) = (best.scores, dev) {
        eprintln!(
            "best dev accuracy={:.4} macro_f1={:.4} n={}",
            s.accuracy, s.macro_f1, s.n
        );
    }
    Ok((best, seen as f64 / t0.elapsed().as_secs_f64()))
}

fn adamw(lr: f64, weight_decay: f64) -> ParamsAdamW {
    ParamsAdamW {
        lr,
        weight_decay,
        ..Default::default()
    }
}

/// Progress for people: a live bar on a terminal; in logs (CI, files) the bar is hidden and
/// `Progress::log` prints plain lines instead.
struct Progress {
    bar: ProgressBar,
    plain: bool,
    every: u64,
}

impl Progress {
    fn new(show: bool, len: u64) -> Self {
        use std::io::IsTerminal;
        let tty = std::io::stderr().is_terminal();
        let bar = if show && tty {
            progress_bar(true, len)
        } else {
            ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::hidden())
        };
        Self {
            bar,
            plain: show && !tty,
            every: (len / 10).max(1),
        }
    }

    /// One finished step; `msg` is built only when it will be shown.
    fn step(&self, msg: impl FnOnce() -> String) {
        self.bar.inc(1);
        let pos = self.bar.position();
        if self.plain && (pos.is_multiple_of(self.every) || pos == self.bar.length().unwrap_or(0)) {
            let len = self.bar.length().unwrap_or(0);
            eprintln!(
                "step {pos}/{len} {} [{:.0}s, ETA {:.0}s]",
                msg(),
                self.bar.elapsed().as_secs_f64(),
                self.bar.eta().as_secs_f64()
            );
        } else if !self.bar.is_hidden() {
            self.bar.set_message(msg());
        }
    }

    fn println(&self, line: String) {
        if self.plain {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn progress_bar(show: bool, len: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}, ETA {eta}]",
        )
        .expect("static template"),
    )
}

/// Linear warm-up to 1, then linear decay to 0.
pub fn lr_scale(step: usize, total: usize, warmup_ratio: f64) -> f64 {
    let warmup = ((total as f64) * warmup_ratio).ceil().max(1.0);
    let s = step as f64;
    if s < warmup {
        (s + 1.0) / warmup
    } else {
        ((total as f64 - s) / (total as f64 - warmup).max(1.0)).clamp(0.0, 1.0)
    }
}

/// Cross-entropy against (1 - eps) one-hot + eps / classes.
pub fn smoothed_cross_entropy(logits: &Tensor, targets: &[u32], eps: f64) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    let mut q = vec![(eps / c as f64) as f32; b * c];
    for (row, &y) in targets.iter().enumerate() {
        q[row * c + y as usize] += (1.0 - eps) as f32;
    }
    let q = Tensor::from_vec(q, (b, c), logits.device())?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok((q * logp)?.sum(D::Minus1)?.neg()?.mean_all()?)
}

/// R-Drop's term: KL(p1 || p2) + KL(p2 || p1) between the softmaxes of two logit batches,
/// summed over classes and averaged over the batch.
pub fn symmetric_kl(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let la = candle_nn::ops::log_softmax(a, D::Minus1)?;
    let lb = candle_nn::ops::log_softmax(b, D::Minus1)?;
    let diff = (&la - &lb)?;
    let kl = ((la.exp()? - lb.exp()?)? * diff)?;
    Ok(kl.sum(D::Minus1)?.mean_all()?)
}

/// The factor that brings the gradients' global L2 norm down to at most `max_norm` (1 when it
/// already is, or when the norm is not finite). The optimisers apply it as they read each
/// gradient (`FusedAdamW::set_grad_scale`): scaling here would write every gradient once more.
fn clip_scale(grads: &GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += sum_of_squares(g)?;
        }
    }
    let norm = total.sqrt();
    Ok(if norm.is_finite() && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    })
}

/// Σ x² of an f32 tensor, read in place (no squared copy), in f32 blocks summed in f64.
fn sum_of_squares(t: &Tensor) -> Result<f64> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let xs = super::dense::f32_slice(&storage, layout, t.elem_count())?;
    Ok(xs
        .chunks(4096)
        .map(|c| {
            let mut acc = [0f32; 8];
            let mut it = c.chunks_exact(8);
            for lane in &mut it {
                for (a, x) in acc.iter_mut().zip(lane) {
                    *a += x * x;
                }
            }
            let tail: f32 = it.remainder().iter().map(|x| x * x).sum();
            (acc.iter().sum::<f32>() + tail) as f64
        })
        .sum())
}

/// Batches of similar length (less padding), in random order.
fn length_bucketed_batches(
    tokens: &[Tokenized],
    batch: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.shuffle(rng);
    let mut batches = Vec::new();
    for pool in order.chunks(batch * 20) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| tokens[i].ids.len());
        batches.extend(pool.chunks(batch).map(|c| c.to_vec()));
    }
    batches.shuffle(rng);
    batches
}

/// Stratified split: about `fraction` of each intent (at least one when it has 3+) goes to dev.
fn carve_dev(
    all: &[LabeledText],
    fraction: f64,
    rng: &mut ChaCha8Rng,
) -> (Vec<LabeledText>, Vec<LabeledText>) {
    let mut by_label: std::collections::BTreeMap<&str, Vec<&LabeledText>> = Default::default();
    for e in all {
        by_label.entry(&e.label).or_default().push(e);
    }
    let (mut train, mut dev) = (Vec::new(), Vec::new());
    for (_, mut group) in by_label {
        group.shuffle(rng);
        let k = if group.len() >= 3 {
            ((group.len() as f64 * fraction).round() as usize).max(1)
        } else {
            0
        };
        for (i, e) in group.into_iter().enumerate() {
            if i < k {
                dev.push(e.clone())
            } else {
                train.push(e.clone())
            }
        }
    }
    (train, dev)
}

fn sorted_labels(set: &[LabeledText]) -> Vec<String> {
    let mut l: Vec<String> = set.iter().map(|e| e.label.clone()).collect();
    l.sort();
    l.dedup();
    l
}

fn evaluate_encoded(
    encoder: &SentenceEncoder,
    head: &Linear,
    tokenizer: &TextTokenizer,
    set: &Encoded,
    labels: &[String],
    batch: usize,
) -> Result<Scores> {
    let probs = predict_encoded(encoder, head, tokenizer, set, batch)?;
    Ok(score_probs(&probs, &set.labels, labels))
}

/// The encoder and head's probabilities for every text of `set`, in order.
fn predict_encoded(
    encoder: &SentenceEncoder,
    head: &Linear,
    tokenizer: &TextTokenizer,
    set: &Encoded,
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut probs = Vec::with_capacity(set.tokens.len());
    for chunk in set.tokens.chunks(batch.max(1)) {
        let refs: Vec<&Tokenized> = chunk.iter().collect();
        let pooled = encoder.embed(&tokenizer.pad(&refs, &encoder.device)?, Mode::Infer)?;
        probs.extend(candle_nn::ops::softmax_last_dim(&head.forward(&pooled)?)?.to_vec2::<f32>()?);
    }
    Ok(probs)
}

/// Fits the lexical head on (example, label index) pairs; examples with an intent unknown to
/// training (`u32::MAX`) are left out.
fn fit_lexical<'a>(
    examples: impl Iterator<Item = (&'a LabeledText, &'a u32)>,
    labels: usize,
    hp: &HyperParameters,
) -> Result<LexicalHead> {
    let (texts, gold): (Vec<&str>, Vec<u32>) = examples
        .filter(|(_, &g)| g != u32::MAX)
        .map(|(e, &g)| (e.text.as_str(), g))
        .unzip();
    LexicalHead::fit(
        &texts,
        &gold,
        labels,
        LexicalSettings {
            weight: hp.lexical_weight,
            c: hp.lexical_c,
        },
    )
}

fn score_probs(probs: &[Vec<f32>], gold: &[u32], labels: &[String]) -> Scores {
    let name = |i: u32| {
        labels
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| "<unknown>".into())
    };
    let pairs: Vec<(String, String)> = probs
        .iter()
        .zip(gold)
        .map(|(p, &g)| {
            let pred = p
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|x| x.0)
                .unwrap_or(0);
            (name(g), name(pred as u32))
        })
        .collect();
    let r = scoring::compute(&pairs);
    Scores {
        accuracy: r.accuracy,
        macro_f1: r.macro_f1,
        n: r.n,
    }
}

/// Copies the pretrained weights (a PyTorch pickle, or safetensors) into the variables created
/// by `Bert::load`.
fn load_pretrained(varmap: &VarMap, weights: &Path) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = if weights.extension().is_some_and(|e| e == "safetensors")
    {
        candle_core::safetensors::load(weights, &Device::Cpu)
            .with_context(|| format!("cannot read {}", weights.display()))?
            .into_iter()
            .collect()
    } else {
        candle_core::pickle::read_all(weights)
            .with_context(|| format!("cannot read {}", weights.display()))?
    };
    let data = varmap.data().lock().expect("varmap lock");
    let mut set = 0;
    for (name, t) in tensors {
        if let Some(var) = data.get(&name) {
            var.set(&t.to_dtype(var.dtype())?)
                .with_context(|| format!("{name}: shape mismatch"))?;
            set += 1;
        }
    }
    let expected = data
        .keys()
        .filter(|k| !k.starts_with("classifier."))
        .count();
    if set != expected {
        bail!(
            "{}: only {set} of {expected} encoder weights found",
            weights.display()
        );
    }
    Ok(())
}

/// Writes the model folder atomically (a temp folder renamed over the target) and returns the
/// card with its version filled in.
fn save_model_dir(
    out: &Path,
    varmap: &VarMap,
    config: &BertConfig,
    base_dir: &Path,
    labels: &[String],
    lexical: Option<&LexicalHead>,
    mut card: ModelCard,
) -> Result<ModelCard> {
    let staging = fresh_staging(out, "tmp")?;
    let tensors: HashMap<String, Tensor> = {
        let data = varmap.data().lock().expect("varmap lock");
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    };
    let weights = staging.join(classifier::WEIGHTS_FILE);
    candle_core::safetensors::save(&tensors, &weights)?;
    if let Some(l) = lexical {
        l.save(&staging)?;
    }
    // The version names the weights, the lexical head's included.
    let digest = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(std::fs::read(&weights)?);
        if lexical.is_some() {
            h.update(std::fs::read(staging.join(super::lexical::WEIGHTS_FILE))?);
            h.update(std::fs::read(staging.join(super::lexical::SETTINGS_FILE))?);
        }
        hex::encode(h.finalize())
    };
    card.version = format!("{}-{}", card.base_model, &digest[..12]);
    std::fs::write(
        staging.join(classifier::CONFIG_FILE),
        serde_json::to_string_pretty(config)?,
    )?;
    std::fs::copy(
        base_dir.join("tokenizer.json"),
        staging.join(classifier::TOKENIZER_FILE),
    )?;
    std::fs::write(
        staging.join(classifier::LABELS_FILE),
        serde_json::to_string_pretty(labels)?,
    )?;
    std::fs::write(
        staging.join(classifier::CARD_FILE),
        serde_json::to_string_pretty(&card)?,
    )?;
    swap_in(&staging, out)?;
    Ok(card)
}

/// An empty hidden folder beside `out` (`.<name>.<tag>-<pid>`) to write a model into before
/// `swap_in`: a sibling, so the final rename stays on one file system.
pub fn fresh_staging(out: &Path, tag: &str) -> Result<PathBuf> {
    let staging = staging_path(out, tag)?;
    let parent = staging.parent().expect("a sibling of --out");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    Ok(staging)
}

/// Where `fresh_staging` puts the hidden sibling of `out`, without creating anything (an
/// ensemble's members create it when the first is written, so bad flags leave no trace).
pub fn staging_path(out: &Path, tag: &str) -> Result<PathBuf> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .context("--out must name a folder")?
        .to_string_lossy();
    Ok(parent.join(format!(".{name}.{tag}-{}", std::process::id())))
}

/// Puts a fully written `staging` folder (a sibling of `out`) in the place of `out`: two
/// renames, so a reader sees the old folder or the new one, never a half-written one.
pub fn swap_in(staging: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let name = out.file_name().context("--out must name a folder")?;
        let old = out.with_file_name(format!(
            ".{}.old-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::rename(out, &old)?;
        std::fs::rename(staging, out)?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(staging, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_schedule_warms_up_then_decays_to_zero() {
        let total = 100;
        assert!(lr_scale(0, total, 0.1) < 0.2);
        assert!((lr_scale(9, total, 0.1) - 1.0).abs() < 1e-9);
        assert!(lr_scale(50, total, 0.1) < 1.0 && lr_scale(50, total, 0.1) > 0.4);
        assert!(lr_scale(99, total, 0.1) < 0.02);
    }

    #[test]
    fn clip_scale_brings_the_global_norm_to_the_limit() {
        let dev = Device::Cpu;
        // Gradients of sum(a * [3, 0]) + sum(b * 4): [3, 0] and [4], a global norm of 5.
        let a = Var::new(&[1f32, 2.0], &dev).unwrap();
        let b = Var::new(&[5f32], &dev).unwrap();
        let loss = (a.as_tensor() * Tensor::new(&[3f32, 0.0], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .add(&(b.as_tensor() * 4.0).unwrap().sum_all().unwrap())
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars = [a.clone(), b.clone()];
        assert!((clip_scale(&grads, &vars, 1.0).unwrap() - 1.0 / (5.0 + 1e-6)).abs() < 1e-9);
        assert_eq!(clip_scale(&grads, &vars, 5.0).unwrap(), 1.0);
        assert_eq!(clip_scale(&grads, &vars, 10.0).unwrap(), 1.0);

        // Past one 4096-value block and not a multiple of 8: the blocked sum and its tails.
        let big: Vec<f32> = (1..=10_001).map(|i| i as f32 / 1000.0).collect();
        let expected: f64 = big.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let t = Tensor::from_vec(big, 10_001, &dev).unwrap();
        let got = sum_of_squares(&t).unwrap();
        assert!(
            (got - expected).abs() < 1e-5 * expected,
            "{got} vs {expected}"
        );
    }

    #[test]
    fn smoothed_loss_matches_hand_computation() {
        // logits [0, 0] -> p = [0.5, 0.5]; any target: loss = ln 2 whatever the smoothing.
        let logits = Tensor::new(&[[0f32, 0.0]], &Device::Cpu).unwrap();
        let l = smoothed_cross_entropy(&logits, &[1], 0.1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((l - std::f32::consts::LN_2).abs() < 1e-6);
        // logits [ln 3, 0] -> p = [0.75, 0.25]; target 0, eps 0.2: q = [0.9, 0.1].
        let logits = Tensor::new(&[[3f32.ln(), 0.0]], &Device::Cpu).unwrap();
        let l = smoothed_cross_entropy(&logits, &[0], 0.2)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let expected = -(0.9 * 0.75f32.ln() + 0.1 * 0.25f32.ln());
        assert!((l - expected).abs() < 1e-5, "{l} vs {expected}");
    }

    #[test]
    fn dev_selection_treats_differences_within_noise_as_ties() {
        // n = 227, best 0.9251: one standard error is 0.0175.
        assert!(within_dev_noise(0.9251, 0.9251, 227));
        assert!(within_dev_noise(0.9207, 0.9251, 227));
        assert!(!within_dev_noise(0.9031, 0.9251, 227));
        // A perfect dev score still tolerates one example.
        assert!(within_dev_noise(0.99, 1.0, 100));
        assert!(!within_dev_noise(0.98, 1.0, 100));
    }

    #[test]
    fn symmetric_kl_is_zero_for_equal_predictions_and_matches_hand_computation() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.0, 3.0]], &dev).unwrap();
        let kl = |x: &Tensor, y: &Tensor| symmetric_kl(x, y).unwrap().to_scalar::<f32>().unwrap();
        assert!(kl(&a, &a).abs() < 1e-7);
        // p = [0.75, 0.25], q = [0.5, 0.5]: KL(p||q) + KL(q||p) = (0.75 - 0.5) ln 3.
        let p = Tensor::new(&[[3f32.ln(), 0.0]], &dev).unwrap();
        let q = Tensor::new(&[[0f32, 0.0]], &dev).unwrap();
        assert!((kl(&p, &q) - 0.25 * 3f32.ln()).abs() < 1e-6);
        assert!((kl(&p, &q) - kl(&q, &p)).abs() < 1e-7);
    }

    #[test]
    fn layer_groups_decay_the_learning_rate_downwards() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        for name in [
            "embeddings.LayerNorm.weight",
            "encoder.layer.0.output.dense.weight",
            "encoder.layer.1.output.dense.weight",
            "encoder.layer.1.attention.self.query.bias",
            "pooler.dense.weight",
        ] {
            vb.get_with_hints(2, name, candle_nn::Init::Const(0.0))
                .unwrap();
        }
        let vars = varmap.all_vars();
        let groups = layer_groups(&varmap, vars.clone(), 0.5);
        let mut sizes: Vec<(usize, f64)> = groups.iter().map(|(v, f)| (v.len(), *f)).collect();
        sizes.sort_by(|a, b| a.1.total_cmp(&b.1));
        // Embeddings 0.25, layer 0 0.5, layer 1 and the pooler (the top) 1.
        assert_eq!(sizes, vec![(1, 0.25), (1, 0.5), (3, 1.0)]);
        let one = layer_groups(&varmap, vars, 1.0);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0.len(), 5);
    }

    #[test]
    fn old_model_cards_load_with_the_new_options_off() {
        let mut v = serde_json::to_value(HyperParameters::defaults_for(TrainMode::Full)).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in [
            "ema_decay",
            "average_epochs",
            "layer_lr_decay",
            "rdrop_alpha",
        ] {
            o.remove(k);
        }
        let hp: HyperParameters = serde_json::from_value(v).unwrap();
        assert_eq!(
            (
                hp.ema_decay,
                hp.average_epochs,
                hp.layer_lr_decay,
                hp.rdrop_alpha
            ),
            (0.0, 0, 1.0, 0.0)
        );
    }

    #[test]
    fn carve_dev_is_stratified_and_disjoint() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let all: Vec<LabeledText> = (0..40)
            .map(|i| LabeledText {
                text: format!("t{i}"),
                label: if i % 2 == 0 { "a".into() } else { "b".into() },
            })
            .collect();
        let (train, dev) = carve_dev(&all, 0.1, &mut rng);
        assert_eq!(train.len() + dev.len(), 40);
        assert_eq!(dev.iter().filter(|e| e.label == "a").count(), 2);
        assert_eq!(dev.iter().filter(|e| e.label == "b").count(), 2);
        assert!(dev.iter().all(|d| !train.contains(d)));
    }
}
