//! A BERT encoder that can both serve and train.
//!
//! candle-transformers ships a BERT, but its layer norm and softmax use fused kernels that have
//! no backward pass, so it cannot be fine-tuned (TEI keeps its own `bert.rs` for similar
//! reasons). This one takes a `Mode`: `Infer` uses the fused kernels, `Train` uses differentiable
//! compositions of the same maths plus dropout. Weight names match Hugging Face's `BertModel`, so
//! `pytorch_model.bin` loads without renaming.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// The subset of Hugging Face's `config.json` that the architecture needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub pad_token_id: u32,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f32 {
    0.1
}
fn default_act() -> String {
    "gelu".into()
}

/// Whether a forward pass is for serving (fast kernels, no dropout) or training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Infer,
    Train,
    /// Training kernels without dropout: checks that both paths compute the same function.
    TrainNoDropout,
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Infer && x.is_contiguous() {
            return candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

fn dropout(x: &Tensor, p: f32, mode: Mode) -> Result<Tensor> {
    if mode == Mode::Train && p > 0.0 {
        super::seeded::dropout(x, p)
    } else {
        Ok(x.clone())
    }
}

struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    dropout: f32,
}

impl Embeddings {
    fn load(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            word: candle_nn::embedding(cfg.vocab_size, h, vb.pp("word_embeddings"))?,
            position: candle_nn::embedding(cfg.max_position_embeddings, h, vb.pp("position_embeddings"))?,
            token_type: candle_nn::embedding(cfg.type_vocab_size, h, vb.pp("token_type_embeddings"))?,
            norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(&self, input_ids: &Tensor, type_ids: &Tensor, mode: Mode) -> Result<Tensor> {
        let (_b, t) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, input_ids.device())?;
        let x = self
            .word
            .forward(input_ids)?
            .add(&self.token_type.forward(type_ids)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        dropout(&self.norm.forward(&x, mode)?, self.dropout, mode)
    }
}

struct SelfAttention {
    qkv: Qkv,
    out: Linear,
    norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    dropout: f32,
}

/// Query, key and value projections applied as one matmul: one pass over the activations
/// instead of three.
enum Qkv {
    /// Serving: the weights are concatenated once at load time.
    Fused(Linear),
    /// Training: the three projections stay separate variables (the optimiser updates them in
    /// place), so they are concatenated on every forward pass and gradients flow back to each.
    Separate { weights: [Tensor; 3], biases: [Tensor; 3] },
}

impl Qkv {
    fn load(cfg: &BertConfig, vb: &VarBuilder, trainable: bool) -> Result<Self> {
        let h = cfg.hidden_size;
        let get = |name: &str| -> Result<(Tensor, Tensor)> {
            Ok((vb.pp(name).get((h, h), "weight")?, vb.pp(name).get(h, "bias")?))
        };
        let (qw, qb) = get("query")?;
        let (kw, kb) = get("key")?;
        let (vw, vbias) = get("value")?;
        if trainable {
            Ok(Qkv::Separate { weights: [qw, kw, vw], biases: [qb, kb, vbias] })
        } else {
            let w = Tensor::cat(&[&qw, &kw, &vw], 0)?;
            let b = Tensor::cat(&[&qb, &kb, &vbias], 0)?;
            Ok(Qkv::Fused(Linear::new(w, Some(b))))
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Qkv::Fused(linear) => linear.forward(x),
            Qkv::Separate { weights, biases } => {
                let w = Tensor::cat(weights, 0)?;
                let b = Tensor::cat(biases, 0)?;
                Linear::new(w, Some(b)).forward(x)
            }
        }
    }
}

impl SelfAttention {
    fn load(cfg: &BertConfig, vb: VarBuilder, trainable: bool) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: Qkv::load(cfg, &vb.pp("self"), trainable)?,
            out: candle_nn::linear(h, h, vb.pp("output").pp("dense"))?,
            norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            dropout: cfg.attention_probs_dropout_prob,
        })
    }

    /// `mask_bias`: (batch, 1, 1, seq), 0 for real tokens and a large negative for padding.
    fn forward(&self, x: &Tensor, mask_bias: &Tensor, mode: Mode) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let qkv = self.qkv.forward(x)?; // (b, t, 3h)
        let qkv = qkv.reshape((b, t, 3, self.heads, self.head_dim))?.permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask_bias)?;
        let probs = match mode {
            Mode::Infer => candle_nn::ops::softmax_last_dim(&scores)?,
            Mode::Train | Mode::TrainNoDropout => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let probs = dropout(&probs, self.dropout, mode)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let out = dropout(&self.out.forward(&ctx)?, self.dropout, mode)?;
        self.norm.forward(&(out + x)?, mode)
    }
}

struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    dropout: f32,
}

impl Layer {
    fn load(cfg: &BertConfig, vb: VarBuilder, trainable: bool) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: SelfAttention::load(cfg, vb.pp("attention"), trainable)?,
            intermediate: candle_nn::linear(h, i, vb.pp("intermediate").pp("dense"))?,
            output: candle_nn::linear(i, h, vb.pp("output").pp("dense"))?,
            norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(&self, x: &Tensor, mask_bias: &Tensor, mode: Mode) -> Result<Tensor> {
        let a = self.attention.forward(x, mask_bias, mode)?;
        let i = self.intermediate.forward(&a)?.gelu_erf()?;
        let o = dropout(&self.output.forward(&i)?, self.dropout, mode)?;
        self.norm.forward(&(o + a)?, mode)
    }
}

/// BERT without the pooler: token embeddings in, contextual token vectors out.
pub struct Bert {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pub config: BertConfig,
}

impl Bert {
    /// `vb` is rooted where Hugging Face's `BertModel` keys start (`embeddings.`, `encoder.`).
    /// `trainable`: build for fine-tuning (weights stay the builder's variables) rather than
    /// for serving (weights pre-fused for speed).
    pub fn load(vb: VarBuilder, config: &BertConfig, trainable: bool) -> Result<Self> {
        if config.hidden_act != "gelu" {
            candle_core::bail!("unsupported hidden_act '{}' (only gelu)", config.hidden_act);
        }
        if !config.hidden_size.is_multiple_of(config.num_attention_heads) {
            candle_core::bail!("hidden_size must be a multiple of num_attention_heads");
        }
        let embeddings = Embeddings::load(config, vb.pp("embeddings"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(config, vb.pp("encoder").pp("layer").pp(i), trainable))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, layers, config: config.clone() })
    }

    /// Stops gradients at the word-embedding table. Fine-tuning on a few thousand short
    /// messages gains nothing from moving 21k x 512 embeddings (most rows are never seen) and
    /// pays for their gradient and optimiser state on every step.
    pub fn freeze_word_embeddings(&mut self) {
        let w = self.embeddings.word.embeddings().detach();
        let h = self.config.hidden_size;
        self.embeddings.word = Embedding::new(w, h);
    }

    /// input_ids, type_ids, attention_mask: (batch, seq) u32. Returns (batch, seq, hidden).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        type_ids: &Tensor,
        attention_mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let mask_bias = mask_bias(attention_mask)?;
        let mut x = self.embeddings.forward(input_ids, type_ids, mode)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask_bias, mode)?;
        }
        Ok(x)
    }
}

/// (batch, seq) of 1/0 into an additive (batch, 1, 1, seq) bias.
fn mask_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let m = mask.to_dtype(DType::F32)?;
    // (1 - m) * -10000, as in the original BERT: large enough to zero the softmax, finite so
    // a fully padded row cannot produce NaN.
    let bias = ((m.ones_like()? - m)? * -10_000.0)?;
    bias.reshape((b, 1, 1, t))
}

/// Mean over the real (unmasked) tokens: hidden (b, t, h), mask (b, t) -> (b, h).
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let m = attention_mask.to_dtype(hidden.dtype())?.unsqueeze(2)?; // (b, t, 1)
    let summed = hidden.broadcast_mul(&m)?.sum(1)?; // (b, h)
    let counts = m.sum(1)?.clamp(1.0, f64::MAX)?; // (b, 1)
    summed.broadcast_div(&counts)
}

/// The device everything runs on. CPU only: the service targets small CPU machines.
pub fn device() -> Device {
    Device::Cpu
}
