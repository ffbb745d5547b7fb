//! The served intent model: sentence encoder + linear head, loaded from a self-contained folder
//! that `intentd train` writes:
//!
//! ```text
//! model.safetensors   encoder weights (Hugging Face names) + classifier.weight / classifier.bias
//! config.json         BERT architecture
//! tokenizer.json      the tokenizer the model was trained with
//! labels.json         intent ids, in head-row order
//! model.json          the model card (base model, wheel hash, data hash, hyper-parameters, scores)
//! lexical.json, lexical.safetensors   the lexical head (optional; see `lexical`)
//! ```
//!
//! A folder with an `ensemble.json` instead holds several such folders, served as one
//! (`ensemble`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::bert::{Bert, BertConfig, Build, Mode};
use super::dense::{self, Precision};
use super::encoder::{SentenceEncoder, TextTokenizer, Tokenized};
use super::ensemble::{self, EnsembleSpec};
use super::lexical::LexicalHead;
use super::tensor_file::TensorFile;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const LABELS_FILE: &str = "labels.json";
pub const CARD_FILE: &str = "model.json";

/// Everything needed to know what a trained model is and how it was made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelCard {
    /// Short stable id: `<base>-<first 12 hex of the weights hash>`.
    pub version: String,
    pub base_model: String,
    pub base_wheel: String,
    pub base_wheel_sha256: String,
    pub licence: String,
    /// Put before every text (the E5 models' `query: `); absent in older cards.
    #[serde(default)]
    pub input_prefix: String,
    pub data_path: String,
    pub data_sha256: String,
    pub train_examples: usize,
    pub dev_examples: usize,
    pub labels: usize,
    pub max_tokens: usize,
    pub hyper_parameters: serde_json::Value,
    pub trained_at: String,
    pub train_seconds: f64,
    pub dev_scores: Option<Scores>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub n: usize,
}

/// Intent probabilities for one text.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Softmax over `labels`, in label order.
    pub probs: Vec<f32>,
}

/// Anything that turns token sequences into intent probabilities. The service core only sees
/// this trait, so the backend (candle today) can change without touching batching or fusion.
pub trait IntentBackend: Send + Sync {
    fn labels(&self) -> &[String];
    fn version(&self) -> &str;
    /// The text as `predict` takes it (token ids, n-gram features, each member's tokens).
    fn tokenize(&self, text: &str) -> Result<Tokenized>;
    /// One forward pass over a batch of already tokenised texts.
    fn predict(&self, batch: &[&Tokenized]) -> Result<Vec<Prediction>>;
}

pub struct IntentModel {
    pub tokenizer: TextTokenizer,
    pub encoder: SentenceEncoder,
    pub head: Linear,
    pub labels: Vec<String>,
    pub card: ModelCard,
    pub dir: PathBuf,
    /// Mixed into the encoder's probabilities when the model folder has one.
    pub lexical: Option<LexicalHead>,
    /// When the folder is an ensemble: this model is its first member (with the ensemble's
    /// card and folder), pooled with the others.
    pub ensemble: Option<Companions>,
}

/// The other members of an ensemble and the weights of the pool.
pub struct Companions {
    /// The first member's weight; weights sum to 1.
    pub lead_weight: f32,
    pub others: Vec<(IntentModel, f32)>,
    /// The first member's top probability from which it answers alone (`ensemble.json`).
    pub cascade: Option<f32>,
}

impl IntentModel {
    /// Loads a trained model folder; every missing or inconsistent file is a clear error. The
    /// encoder's dense layers run at [`dense::default_precision`].
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, dense::default_precision()?)
    }

    /// As `load`, at an explicit precision (`intentd eval --precision`).
    pub fn load_with(dir: &Path, precision: Precision) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "model directory {} does not exist (train one with `intentd train`)",
                dir.display()
            );
        }
        if let Some(spec) = EnsembleSpec::read(dir)? {
            return Self::load_ensemble(dir, &spec, precision);
        }
        for f in [
            WEIGHTS_FILE,
            CONFIG_FILE,
            TOKENIZER_FILE,
            LABELS_FILE,
            CARD_FILE,
        ] {
            if !dir.join(f).is_file() {
                bail!(
                    "{}: missing {f}; is this a folder written by `intentd train`?",
                    dir.display()
                );
            }
        }
        let config: BertConfig = read_json(&dir.join(CONFIG_FILE))?;
        let labels: Vec<String> = read_json(&dir.join(LABELS_FILE))?;
        let card: ModelCard = read_json(&dir.join(CARD_FILE))?;
        if labels.is_empty() {
            bail!("{}: no labels", dir.join(LABELS_FILE).display());
        }
        let max_tokens = if card.max_tokens > 0 {
            card.max_tokens
        } else {
            128
        };
        let mut tokenizer = TextTokenizer::from_file(&dir.join(TOKENIZER_FILE), max_tokens)?
            .with_prefix(&card.input_prefix);
        let lexical = LexicalHead::load(dir, labels.len())?;
        if let Some(l) = &lexical {
            tokenizer = tokenizer.with_ngrams(l.ngrams.clone());
        }
        let device = super::bert::device();
        // Tensor by tensor, not memory-mapped: a mapping keeps every page it was read from
        // resident until the load ends, which doubled a reload's peak (see `tensor_file`).
        let weights = TensorFile::open(&dir.join(WEIGHTS_FILE)).with_context(|| {
            format!("{}: cannot read weights", dir.join(WEIGHTS_FILE).display())
        })?;
        let vb = VarBuilder::from_backend(Box::new(weights), DType::F32, device.clone());
        let bert = Bert::load_for(vb.clone(), &config, Build::Serve(precision))
            .with_context(|| format!("{}: weights do not match config.json", dir.display()))?;
        log_kernel(&bert, precision);
        let head = candle_nn::linear(config.hidden_size, labels.len(), vb.pp("classifier"))
            .with_context(|| {
                format!(
                    "{}: classifier head does not match {} labels",
                    dir.display(),
                    labels.len()
                )
            })?;
        Ok(Self {
            tokenizer,
            encoder: SentenceEncoder::new(bert, device),
            head,
            labels,
            card,
            dir: dir.to_path_buf(),
            lexical,
            ensemble: None,
        })
    }

    /// An ensemble folder: every member loaded (each must be a complete model folder with the
    /// same intents in the same order), the first carrying the others.
    fn load_ensemble(dir: &Path, spec: &EnsembleSpec, precision: Precision) -> Result<Self> {
        let spec_path = dir.join(ensemble::ENSEMBLE_FILE);
        let card_path = dir.join(CARD_FILE);
        if !card_path.is_file() {
            bail!(
                "{}: missing {CARD_FILE}; is this a folder written by `intentd train`?",
                dir.display()
            );
        }
        let card: ModelCard = read_json(&card_path)?;
        let weights = spec.normalised_weights();
        let mut members = Vec::with_capacity(spec.members.len());
        for m in &spec.members {
            let model = Self::load_with(&dir.join(&m.dir), precision)
                .with_context(|| format!("{}: member {:?}", spec_path.display(), m.dir))?;
            if model.ensemble.is_some() {
                bail!(
                    "{}: member {:?} is itself an ensemble (not supported)",
                    spec_path.display(),
                    m.dir
                );
            }
            members.push(model);
        }
        let first = &spec.members[0].dir;
        for (m, model) in spec.members.iter().zip(&members).skip(1) {
            if model.labels != members[0].labels {
                bail!(
                    "{}: members {first:?} and {:?} have different intents ({} vs {}); train every member on the same data",
                    spec_path.display(),
                    m.dir,
                    members[0].labels.join(","),
                    model.labels.join(",")
                );
            }
        }
        let mut members = members.into_iter().zip(weights);
        let (mut lead, lead_weight) = members.next().expect("validated: at least 2 members");
        lead.card = card;
        lead.dir = dir.to_path_buf();
        lead.ensemble = Some(Companions {
            lead_weight,
            others: members.collect(),
            cascade: spec.cascade.map(|c| c as f32),
        });
        Ok(lead)
    }

    /// The text as `predict` takes it; for an ensemble, with every other member's tokens.
    pub fn tokenize(&self, text: &str) -> Result<Tokenized> {
        let mut t = self.tokenizer.tokenize(text)?;
        if let Some(e) = &self.ensemble {
            for (m, _) in &e.others {
                let o = m.tokenizer.tokenize(text)?;
                t.truncated |= o.truncated;
                t.members.push(o);
            }
        }
        Ok(t)
    }

    /// This folder's own encoder, head and lexical head (for an ensemble: the first member's).
    fn predict_alone(&self, batch: &[&Tokenized]) -> Result<Vec<Prediction>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let padded = self.tokenizer.pad(batch, &self.encoder.device)?;
        let pooled = self.encoder.embed(&padded, Mode::Infer)?;
        let logits = self.head.forward(&pooled)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        Ok(probs
            .into_iter()
            .zip(batch)
            .map(|(probs, t)| match &self.lexical {
                Some(l) => Prediction {
                    probs: l.mix(&probs, &t.lexical),
                },
                None => Prediction { probs },
            })
            .collect())
    }

    /// Convenience for the CLI and tests: tokenise and predict in batches of `batch_size`.
    pub fn predict_texts(
        &self,
        texts: &[impl AsRef<str>],
        batch_size: usize,
    ) -> Result<Vec<Prediction>> {
        let toks = texts
            .iter()
            .map(|t| self.tokenize(t.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(toks.len());
        for chunk in toks.chunks(batch_size.max(1)) {
            let refs: Vec<&Tokenized> = chunk.iter().collect();
            out.extend(self.predict(&refs)?);
        }
        Ok(out)
    }
}

impl IntentBackend for IntentModel {
    fn labels(&self) -> &[String] {
        &self.labels
    }
    fn version(&self) -> &str {
        &self.card.version
    }
    fn tokenize(&self, text: &str) -> Result<Tokenized> {
        IntentModel::tokenize(self, text)
    }
    fn predict(&self, batch: &[&Tokenized]) -> Result<Vec<Prediction>> {
        let mut own = self.predict_alone(batch)?;
        let Some(e) = &self.ensemble else {
            return Ok(own);
        };
        // With a cascade, only the texts the first member is unsure of go to the others (a
        // smaller batch, padded to its own longest text).
        let unsure: Vec<usize> = (0..batch.len())
            .filter(|&r| EnsembleSpec::needs_others(e.cascade, &own[r].probs))
            .collect();
        if unsure.is_empty() {
            return Ok(own);
        }
        let mut theirs = Vec::with_capacity(e.others.len());
        for (i, (m, w)) in e.others.iter().enumerate() {
            let toks: Vec<&Tokenized> = unsure
                .iter()
                .map(|&r| {
                    batch[r]
                        .members
                        .get(i)
                        .context("text was tokenised without the ensemble's members")
                })
                .collect::<Result<_>>()?;
            theirs.push((m.predict_alone(&toks)?, *w));
        }
        for (k, &r) in unsure.iter().enumerate() {
            let mut rows: Vec<(&[f32], f32)> = vec![(own[r].probs.as_slice(), e.lead_weight)];
            rows.extend(theirs.iter().map(|(p, w)| (p[k].probs.as_slice(), *w)));
            let pooled = ensemble::mix(&rows);
            own[r].probs = pooled;
        }
        Ok(own)
    }
}

/// Ranks a prediction: (label index, probability), best first.
pub fn ranked(pred: &Prediction) -> Vec<(usize, f32)> {
    let mut r: Vec<(usize, f32)> = pred.probs.iter().copied().enumerate().collect();
    r.sort_by(|a, b| b.1.total_cmp(&a.1));
    r
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// Says which kernel serves the encoder, and warns when int8 was asked for but this CPU cannot
/// run it (fp32 serves instead).
fn log_kernel(bert: &Bert, asked: Precision) {
    let Some(k) = bert.dense_kernel() else { return };
    if asked == Precision::Int8 && !k.is_int8() {
        tracing::warn!(
            kernel = %k.describe(),
            "int8 serving asked for, but this CPU has no VNNI (AVX-512 or AVX): serving fp32"
        );
    } else {
        tracing::info!(kernel = %k.describe(), ?asked, "encoder dense layers");
    }
}

/// Loads the pretrained encoder from a `fetch-model` folder (for parity checks and frozen
/// features), at [`dense::default_precision`].
pub fn load_base_encoder(
    dir: &Path,
    max_tokens: usize,
) -> Result<(TextTokenizer, SentenceEncoder)> {
    load_base_encoder_with(dir, max_tokens, dense::default_precision()?)
}

/// As `load_base_encoder`, at an explicit precision.
pub fn load_base_encoder_with(
    dir: &Path,
    max_tokens: usize,
    precision: Precision,
) -> Result<(TextTokenizer, SentenceEncoder)> {
    let base = super::base_models::find(super::base_models::DEFAULT_BASE_MODEL).expect("listed");
    load_base_encoder_for(base, dir, max_tokens, precision)
}

/// The pretrained encoder `base` from its `fetch-model` folder, serving at `precision`, with
/// its tokenizer (input prefix included).
pub fn load_base_encoder_for(
    base: &super::base_models::BaseModel,
    dir: &Path,
    max_tokens: usize,
    precision: Precision,
) -> Result<(TextTokenizer, SentenceEncoder)> {
    let weights = dir.join(base.weights);
    if !weights.is_file() {
        bail!(
            "{} has no {}: run `intentd fetch-model --base {}` first",
            dir.display(),
            base.weights,
            base.name
        );
    }
    let config: BertConfig = read_json(&dir.join("config.json"))?;
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), max_tokens)?
        .with_prefix(base.input_prefix);
    let device = Device::Cpu;
    let vb = if weights.extension().is_some_and(|e| e == "safetensors") {
        let file = TensorFile::open(&weights)
            .with_context(|| format!("{}: cannot read weights", weights.display()))?;
        VarBuilder::from_backend(Box::new(file), DType::F32, device.clone())
    } else {
        VarBuilder::from_pth(&weights, DType::F32, &device)?
    };
    let bert = Bert::load_for(vb, &config, Build::Serve(precision))?;
    log_kernel(&bert, precision);
    Ok((tokenizer, SentenceEncoder::new(bert, device)))
}

/// Sanity check used after loading: logits must be finite.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}
