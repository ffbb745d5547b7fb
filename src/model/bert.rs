//! A BERT encoder that can both serve and train.
//!
//! candle-transformers ships a BERT, but its layer norm and softmax use fused kernels that have
//! no backward pass, so it cannot be fine-tuned (TEI keeps its own `bert.rs` for similar
//! reasons). This one takes a `Mode`: `Infer` uses the fused kernels, `Train` uses differentiable
//! compositions of the same maths plus dropout. Weight names match Hugging Face's `BertModel`, so
//! `pytorch_model.bin` loads without renaming.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use super::dense::{Activation, DenseKernel, Precision, ServingDense};
use super::word_table::{WordTable, Q4_BLOCK_BYTES, Q4_BLOCK_VALUES};

/// What a model is built for: fine-tuning (weights stay the builder's variables) or serving at
/// a precision (weights laid out once for the serving kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Train,
    Serve(Precision),
}

impl Build {
    fn trainable(self) -> bool {
        self == Build::Train
    }
}

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
    /// How the word-embedding table is stored (intentd's own key; absent in Hugging Face
    /// configs, which means f32).
    #[serde(default)]
    pub word_embeddings: WordEmbeddingFormat,
}

/// Storage of the word-embedding table: f32 `embeddings.word_embeddings.weight`, or 4-bit
/// blocks in `embeddings.word_embeddings.q4_0` (see [`super::word_table`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WordEmbeddingFormat {
    #[default]
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "q4_0")]
    Q4_0,
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

/// Whether training builds layer norm, GELU and softmax from candle's element-wise ops (the
/// reference the fused kernels in `fused_ops` are tested against) instead of those kernels.
#[cfg(not(test))]
fn composite_ops() -> bool {
    false
}

#[cfg(test)]
thread_local! {
    static COMPOSITE_OPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn composite_ops() -> bool {
    COMPOSITE_OPS.with(|c| c.get())
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
        if !composite_ops() {
            return super::fused_ops::layer_norm(x, &self.weight, &self.bias, self.eps);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

fn dropout(x: &Tensor, p: f32, mode: Mode) -> Result<Tensor> {
    if mode == Mode::Train && p > 0.0 {
        super::seeded::dropout(x, p)
    } else {
        Ok(x.clone())
    }
}

/// y = act(x Wᵀ + b [+ residual]) over the last dimension of `x`.
enum Dense {
    /// Serving: weights laid out once at load for the fused kernel (see `dense.rs`).
    Serving(ServingDense),
    /// Training: the `(out, in)` variables the optimiser updates in place, through
    /// differentiable candle ops.
    Train { weight: Tensor, bias: Tensor },
}

impl Dense {
    fn load(in_dim: usize, out_dim: usize, vb: VarBuilder, build: Build) -> Result<Self> {
        Self::new(
            vb.get((out_dim, in_dim), "weight")?,
            vb.get(out_dim, "bias")?,
            build,
        )
    }

    /// `weight` is `(out, in)`, as Hugging Face stores it.
    fn new(weight: Tensor, bias: Tensor, build: Build) -> Result<Self> {
        match build {
            Build::Train => Ok(Dense::Train { weight, bias }),
            Build::Serve(p) => Ok(Dense::Serving(ServingDense::with_precision(
                &weight, &bias, p,
            )?)),
        }
    }

    fn kernel(&self) -> Option<DenseKernel> {
        match self {
            Dense::Serving(d) => Some(d.kernel()),
            Dense::Train { .. } => None,
        }
    }

    fn forward(&self, x: &Tensor, residual: Option<&Tensor>, act: Activation) -> Result<Tensor> {
        match self {
            Dense::Serving(d) => d.forward(x, residual, act),
            Dense::Train { weight, bias } => {
                let dims = x.dims();
                let in_dim = dims[dims.len() - 1];
                let rows = x.elem_count() / in_dim.max(1);
                // One 2-D matmul over all rows: the batched path would broadcast the weight and
                // run gemm once per leading index.
                let x = x.reshape((rows, in_dim))?;
                let y = if composite_ops() {
                    x.matmul(&weight.t()?)?.broadcast_add(bias)?
                } else {
                    super::fused_ops::linear(&x, weight, bias)?
                };
                let mut out_dims = dims.to_vec();
                *out_dims.last_mut().expect("non-scalar input") = weight.dim(0)?;
                let mut y = y.reshape(out_dims)?;
                if let Some(r) = residual {
                    y = (y + r)?;
                }
                match act {
                    Activation::None => Ok(y),
                    Activation::Gelu if composite_ops() => y.gelu_erf(),
                    Activation::Gelu => super::fused_ops::gelu_erf(&y),
                }
            }
        }
    }

    /// `dropout(x Wᵀ + b) + residual`; without dropout the residual rides along in the fused
    /// kernel.
    fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        p: f32,
        mode: Mode,
    ) -> Result<Tensor> {
        if mode == Mode::Train && p > 0.0 {
            dropout(&self.forward(x, None, Activation::None)?, p, mode)? + residual
        } else {
            self.forward(x, Some(residual), Activation::None)
        }
    }
}

struct Embeddings {
    word: WordTable,
    /// (max_positions, hidden)
    position: Tensor,
    /// (type_vocab, hidden)
    token_type: Tensor,
    /// Serving: position + token type 0, summed once at load. A single text is all segment 0,
    /// so this saves two lookups and an add per forward pass.
    position_type0: Option<Tensor>,
    norm: LayerNorm,
    dropout: f32,
}

impl Embeddings {
    fn load(cfg: &BertConfig, vb: VarBuilder, build: Build) -> Result<Self> {
        let h = cfg.hidden_size;
        let position = vb
            .pp("position_embeddings")
            .get((cfg.max_position_embeddings, h), "weight")?;
        let token_type = vb
            .pp("token_type_embeddings")
            .get((cfg.type_vocab_size, h), "weight")?;
        let position_type0 = if build.trainable() {
            None
        } else {
            Some(position.broadcast_add(&token_type.narrow(0, 0, 1)?)?)
        };
        Ok(Self {
            word: match cfg.word_embeddings {
                WordEmbeddingFormat::F32 => WordTable::Dense(candle_nn::embedding(
                    cfg.vocab_size,
                    h,
                    vb.pp("word_embeddings"),
                )?),
                WordEmbeddingFormat::Q4_0 => {
                    let row = h / Q4_BLOCK_VALUES * Q4_BLOCK_BYTES;
                    let blocks = vb.pp("word_embeddings").get_with_hints_dtype(
                        (cfg.vocab_size, row),
                        "q4_0",
                        candle_nn::Init::Const(0.),
                        DType::U8,
                    )?;
                    WordTable::q4(blocks, h)?
                }
            },
            position,
            token_type,
            position_type0,
            norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// Serving build only: the batch's real tokens packed one after another, `positions` each
    /// token's place in its text. (N,) -> (N, hidden).
    fn forward_packed(&self, ids: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let Some(pt) = &self.position_type0 else {
            candle_core::bail!("packed forward needs a serving build");
        };
        let x = self
            .word
            .forward(ids)?
            .add(&pt.index_select(positions, 0)?)?;
        self.norm.forward(&x, Mode::Infer)
    }

    /// `type_ids`: None means every token is segment 0.
    fn forward(&self, input_ids: &Tensor, type_ids: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let (_b, t) = input_ids.dims2()?;
        let max = self.position.dim(0)?;
        if t > max {
            candle_core::bail!("sequence of {t} tokens is longer than the model's {max} positions");
        }
        let x = self.word.forward(input_ids)?;
        let x = match (type_ids, &self.position_type0) {
            (None, Some(pt)) => x.broadcast_add(&pt.narrow(0, 0, t)?)?,
            (None, None) => x.broadcast_add(
                &self
                    .position
                    .narrow(0, 0, t)?
                    .broadcast_add(&self.token_type.narrow(0, 0, 1)?)?,
            )?,
            (Some(tt), _) => {
                let types = Embedding::new(self.token_type.clone(), self.token_type.dim(1)?);
                x.add(&types.forward(tt)?)?
                    .broadcast_add(&self.position.narrow(0, 0, t)?)?
            }
        };
        dropout(&self.norm.forward(&x, mode)?, self.dropout, mode)
    }
}

struct SelfAttention {
    qkv: Qkv,
    out: Dense,
    norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    dropout: f32,
}

/// Query, key and value projections applied as one matmul: one pass over the activations
/// instead of three.
enum Qkv {
    /// Serving: the weights are concatenated once at load time, and the query rows are
    /// pre-multiplied by 1/sqrt(head_dim), so the attention scores need no scaling pass.
    Fused(Dense),
    /// Training: the three projections stay separate variables (the optimiser updates them in
    /// place), so they are concatenated on every forward pass and gradients flow back to each.
    Separate {
        weights: [Tensor; 3],
        biases: [Tensor; 3],
    },
}

impl Qkv {
    fn load(cfg: &BertConfig, vb: &VarBuilder, build: Build) -> Result<Self> {
        let h = cfg.hidden_size;
        let get = |name: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                vb.pp(name).get((h, h), "weight")?,
                vb.pp(name).get(h, "bias")?,
            ))
        };
        let (qw, qb) = get("query")?;
        let (kw, kb) = get("key")?;
        let (vw, vbias) = get("value")?;
        if build.trainable() {
            Ok(Qkv::Separate {
                weights: [qw, kw, vw],
                biases: [qb, kb, vbias],
            })
        } else {
            let scale = attention_scale(h / cfg.num_attention_heads);
            let (qw, qb) = ((qw * scale)?, (qb * scale)?);
            let w = Tensor::cat(&[&qw, &kw, &vw], 0)?;
            let b = Tensor::cat(&[&qb, &kb, &vbias], 0)?;
            Ok(Qkv::Fused(Dense::new(w, b, build)?))
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Qkv::Fused(dense) => dense.forward(x, None, Activation::None),
            Qkv::Separate { weights, biases } => {
                let w = Tensor::cat(weights, 0)?;
                let b = Tensor::cat(biases, 0)?;
                Dense::new(w, b, Build::Train)?.forward(x, None, Activation::None)
            }
        }
    }

    fn prescaled(&self) -> bool {
        matches!(self, Qkv::Fused(_))
    }
}

fn attention_scale(head_dim: usize) -> f64 {
    1.0 / (head_dim as f64).sqrt()
}

impl SelfAttention {
    fn load(cfg: &BertConfig, vb: VarBuilder, build: Build) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: Qkv::load(cfg, &vb.pp("self"), build)?,
            out: Dense::load(h, h, vb.pp("output").pp("dense"), build)?,
            norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            dropout: cfg.attention_probs_dropout_prob,
        })
    }

    /// Serving build only: `x` (N, hidden) is the batch's real tokens packed (see
    /// `packed_attention`).
    fn forward_packed(&self, x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        if !self.qkv.prescaled() {
            candle_core::bail!("packed forward needs a serving build");
        }
        let qkv = self.qkv.forward(x)?;
        let ctx = super::packed_attention::attend(&qkv, lengths, self.heads)?;
        let out = self.out.forward(&ctx, Some(x), Activation::None)?;
        self.norm.forward(&out, Mode::Infer)
    }

    /// `mask_bias`: (batch, 1, 1, seq), 0 for real tokens and a large negative for padding;
    /// None when nothing is padded.
    fn forward(&self, x: &Tensor, mask_bias: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let qkv = self.qkv.forward(x)?; // (b, t, 3h)
                                        // One copy into (3, b, heads, t, head_dim); q, k and v are then contiguous views.
        let qkv = qkv
            .reshape((b, t, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let mut scores = q.matmul(&k.t()?)?;
        if !self.qkv.prescaled() {
            scores = (scores * attention_scale(self.head_dim))?;
        }
        if let Some(m) = mask_bias {
            scores = scores.broadcast_add(m)?;
        }
        let probs = match mode {
            Mode::Infer => candle_nn::ops::softmax_last_dim(&scores)?,
            Mode::Train | Mode::TrainNoDropout if composite_ops() => {
                candle_nn::ops::softmax(&scores, D::Minus1)?
            }
            Mode::Train | Mode::TrainNoDropout => super::fused_ops::softmax_last_dim(&scores)?,
        };
        let probs = dropout(&probs, self.dropout, mode)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let out = self.out.forward_residual(&ctx, x, self.dropout, mode)?;
        self.norm.forward(&out, mode)
    }
}

struct Layer {
    attention: SelfAttention,
    intermediate: Dense,
    output: Dense,
    norm: LayerNorm,
    dropout: f32,
}

impl Layer {
    fn load(cfg: &BertConfig, vb: VarBuilder, build: Build) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: SelfAttention::load(cfg, vb.pp("attention"), build)?,
            intermediate: Dense::load(h, i, vb.pp("intermediate").pp("dense"), build)?,
            output: Dense::load(i, h, vb.pp("output").pp("dense"), build)?,
            norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward_packed(&self, x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let a = self.attention.forward_packed(x, lengths)?;
        let i = self.intermediate.forward(&a, None, Activation::Gelu)?;
        let o = self.output.forward(&i, Some(&a), Activation::None)?;
        self.norm.forward(&o, Mode::Infer)
    }

    fn forward(&self, x: &Tensor, mask_bias: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let a = self.attention.forward(x, mask_bias, mode)?;
        let i = self.intermediate.forward(&a, None, Activation::Gelu)?;
        let o = self.output.forward_residual(&i, &a, self.dropout, mode)?;
        self.norm.forward(&o, mode)
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
    /// `trainable`: build for fine-tuning (weights stay the builder's variables, in their
    /// Hugging Face layout) rather than for serving (weights pre-transposed, pre-fused and
    /// pre-scaled once for speed, at [`super::dense::default_precision`]). Either build runs
    /// in either `Mode`.
    pub fn load(vb: VarBuilder, config: &BertConfig, trainable: bool) -> Result<Self> {
        let build = if trainable {
            Build::Train
        } else {
            Build::Serve(super::dense::default_precision()?)
        };
        Self::load_for(vb, config, build)
    }

    /// As `load`, saying exactly what to build (a serving precision from a CLI flag).
    pub fn load_for(vb: VarBuilder, config: &BertConfig, build: Build) -> Result<Self> {
        if config.hidden_act != "gelu" {
            candle_core::bail!("unsupported hidden_act '{}' (only gelu)", config.hidden_act);
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            candle_core::bail!("hidden_size must be a multiple of num_attention_heads");
        }
        let embeddings = Embeddings::load(config, vb.pp("embeddings"), build)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(config, vb.pp("encoder").pp("layer").pp(i), build))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            layers,
            config: config.clone(),
        })
    }

    /// Stops gradients at the word-embedding table. Fine-tuning on a few thousand short
    /// messages gains nothing from moving 21k x 512 embeddings (most rows are never seen) and
    /// pays for their gradient and optimiser state on every step.
    /// (A 4-bit table is always frozen: nothing to do.)
    pub fn freeze_word_embeddings(&mut self) {
        if let Some(e) = self.embeddings.word.dense() {
            let w = e.embeddings().detach();
            let h = self.config.hidden_size;
            self.embeddings.word = WordTable::Dense(Embedding::new(w, h));
        }
    }

    /// What serves the dense layers of a serving build: the kernel of the first layer's
    /// projections, or None for a training build. (All layers share one precision; a layer
    /// whose shape the faster kernel cannot take would step down alone, which BERT's shapes,
    /// all multiples of 16, never do.)
    pub fn dense_kernel(&self) -> Option<DenseKernel> {
        let l = self.layers.first()?;
        match &l.attention.qkv {
            Qkv::Fused(d) => d.kernel(),
            Qkv::Separate { .. } => None,
        }
    }

    /// Whether this is a serving build (see `load`), which can run [`Bert::embed_packed`].
    pub fn is_serving_build(&self) -> bool {
        self.embeddings.position_type0.is_some()
            && self.layers.iter().all(|l| l.attention.qkv.prescaled())
    }

    /// Serving: mean-pooled sentence vectors for texts given as their token ids packed one
    /// after another (`lengths` tokens each), with no padding anywhere: every dense layer runs
    /// on real tokens only. (texts, hidden).
    pub fn embed_packed(&self, ids: &[u32], lengths: &[usize]) -> Result<Tensor> {
        if lengths.iter().sum::<usize>() != ids.len() {
            candle_core::bail!(
                "{} token ids for lengths summing to {}",
                ids.len(),
                lengths.iter().sum::<usize>()
            );
        }
        let max = self.embeddings.position.dim(0)?;
        if let Some(&t) = lengths.iter().find(|&&t| t > max) {
            candle_core::bail!("sequence of {t} tokens is longer than the model's {max} positions");
        }
        let device = self.embeddings.position.device();
        let positions: Vec<u32> = lengths.iter().flat_map(|&l| 0..l as u32).collect();
        let n = ids.len();
        let mut x = self.embeddings.forward_packed(
            &Tensor::from_slice(ids, n, device)?,
            &Tensor::from_vec(positions, n, device)?,
        )?;
        for layer in &self.layers {
            x = layer.forward_packed(&x, lengths)?;
        }
        super::packed_attention::mean_pool(&x, lengths)
    }

    /// input_ids: (batch, seq) u32; type_ids: (batch, seq) u32, None for all segment 0;
    /// mask_bias: (batch, 1, 1, seq) f32 from [`mask_bias`], None when no row is padded.
    /// Returns (batch, seq, hidden).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        type_ids: Option<&Tensor>,
        mask_bias: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let mut x = self.embeddings.forward(input_ids, type_ids, mode)?;
        for layer in &self.layers {
            x = layer.forward(&x, mask_bias, mode)?;
        }
        Ok(x)
    }
}

/// The additive attention bias for texts of these lengths padded to `t` tokens:
/// (batch, 1, 1, t), 0 for real tokens and -10000 for padding (as in the original BERT: large
/// enough to zero the softmax, finite so a fully padded row cannot produce NaN). None when no
/// text is padded, so the forward pass skips the add.
pub fn mask_bias(lengths: &[usize], t: usize, device: &Device) -> Result<Option<Tensor>> {
    if lengths.iter().all(|&l| l >= t) {
        return Ok(None);
    }
    let mut bias = vec![0f32; lengths.len() * t];
    for (row, &l) in lengths.iter().enumerate() {
        bias[row * t + l.min(t)..(row + 1) * t].fill(-10_000.0);
    }
    Ok(Some(Tensor::from_vec(
        bias,
        (lengths.len(), 1, 1, t),
        device,
    )?))
}

/// Weights that make mean pooling one batched matmul: (batch, t), 1/len over each text's
/// real tokens and 0 on padding.
pub fn pool_weights(lengths: &[usize], t: usize, device: &Device) -> Result<Tensor> {
    let mut w = vec![0f32; lengths.len() * t];
    for (row, &l) in lengths.iter().enumerate() {
        let l = l.min(t);
        if l > 0 {
            w[row * t..row * t + l].fill(1.0 / l as f32);
        }
    }
    Tensor::from_vec(w, (lengths.len(), t), device)
}

/// Mean over the real (unmasked) tokens: hidden (b, t, h), weights (b, t) from
/// [`pool_weights`] -> (b, h).
pub fn mean_pool(hidden: &Tensor, pool_weights: &Tensor) -> Result<Tensor> {
    pool_weights.unsqueeze(1)?.matmul(hidden)?.squeeze(1)
}

/// The device everything runs on. CPU only: the service targets small CPU machines.
pub fn device() -> Device {
    Device::Cpu
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};
    use candle_nn::VarMap;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A small random BERT, one masked batch and a loss over both the pooled vectors and every
    /// token (so padded positions count too).
    struct Tiny {
        bert: Bert,
        /// Variable names, sorted, and the variables in that order.
        names: Vec<String>,
        vars: Vec<Var>,
        ids: Tensor,
        lengths: [usize; 3],
        mask: Option<Tensor>,
        w: Tensor,
    }

    fn tiny() -> Tiny {
        let cfg = BertConfig {
            vocab_size: 40,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            hidden_act: "gelu".into(),
            pad_token_id: 0,
            word_embeddings: WordEmbeddingFormat::F32,
        };
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let bert = Bert::load(
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            &cfg,
            true,
        )
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        let vars: Vec<_> = names
            .iter()
            .map(|n| varmap.data().lock().unwrap()[n].clone())
            .collect();
        for (name, var) in names.iter().zip(&vars) {
            let n = var.elem_count();
            let base = if name.ends_with("LayerNorm.weight") {
                1.0
            } else {
                0.0
            };
            let v: Vec<f32> = (0..n)
                .map(|_| base + rng.random_range(-0.3f32..0.3))
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap())
                .unwrap();
        }
        let (b, t) = (3, 9);
        let ids: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..40u32)).collect();
        let ids = Tensor::from_vec(ids, (b, t), &dev).unwrap();
        let lengths = [9, 5, 2];
        let mask = mask_bias(&lengths, t, &dev).unwrap();
        let w: Vec<f32> = (0..b * t * 32)
            .map(|_| rng.random_range(-1f32..1.0))
            .collect();
        let w = Tensor::from_vec(w, (b, t, 32), &dev).unwrap();
        Tiny {
            bert,
            names,
            vars,
            ids,
            lengths,
            mask,
            w,
        }
    }

    impl Tiny {
        fn loss(&self) -> Tensor {
            let t = self.ids.dim(1).unwrap();
            let out = self
                .bert
                .forward(&self.ids, None, self.mask.as_ref(), Mode::TrainNoDropout)
                .unwrap();
            let pooled =
                mean_pool(&out, &pool_weights(&self.lengths, t, &Device::Cpu).unwrap()).unwrap();
            (pooled.sqr().unwrap().sum_all().unwrap()
                + (&out * &self.w).unwrap().sum_all().unwrap())
            .unwrap()
        }
    }

    /// Loss and gradients of the tiny model, built from candle's element-wise ops
    /// (`composite`) or from the fused training kernels.
    fn loss_and_grads(composite: bool) -> (f32, Vec<(String, Vec<f32>)>) {
        let m = tiny();
        COMPOSITE_OPS.with(|c| c.set(composite));
        let loss = m.loss();
        COMPOSITE_OPS.with(|c| c.set(false));
        let grads = loss.backward().unwrap();
        let grads = m
            .names
            .iter()
            .zip(&m.vars)
            .map(|(n, v)| {
                let g = grads
                    .get(v.as_tensor())
                    .expect("every weight gets a gradient");
                (
                    n.clone(),
                    g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
            .collect();
        (loss.to_scalar::<f32>().unwrap(), grads)
    }

    /// The training path's gradients (fused kernels, linear op, candle's backward pass as
    /// patched in vendor/) against central finite differences of the loss: a check that does
    /// not go through any backward code at all.
    #[test]
    fn gradients_match_finite_differences() {
        let m = tiny();
        let grads = m.loss().backward().unwrap();
        let h = 1e-2f32;
        let mut checked = 0;
        for (name, var) in m.names.iter().zip(&m.vars) {
            let g = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let orig = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            // The three entries with the largest gradient, and the first one.
            let mut idx: Vec<usize> = (0..g.len()).collect();
            idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
            idx.truncate(3);
            idx.push(0);
            for i in idx {
                let at = |delta: f32| {
                    let mut v = orig.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    m.loss().to_scalar::<f32>().unwrap() as f64
                };
                let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let got = g[i] as f64;
                // f32 losses of magnitude ~10 differenced over 2e-2: about 1e-3 absolute noise,
                // plus the O(h²) truncation term.
                assert!(
                    (fd - got).abs() <= 0.02 * got.abs().max(fd.abs()) + 5e-3,
                    "{name}[{i}]: backward {got}, finite difference {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 4 * 20, "{checked} entries checked");
    }

    #[test]
    fn fused_training_ops_match_the_composite_ones_on_a_whole_model() {
        let (loss_a, grads_a) = loss_and_grads(true);
        let (loss_b, grads_b) = loss_and_grads(false);
        assert!(
            (loss_a - loss_b).abs() <= 1e-5 * loss_a.abs().max(1.0),
            "{loss_a} vs {loss_b}"
        );
        let norm = |g: &[f32]| g.iter().map(|v| v * v).sum::<f32>().sqrt();
        // The key bias's gradient is zero in exact arithmetic (softmax ignores a per-row
        // constant), so what both paths give there is rounding: compare against a floor set
        // by the largest gradient.
        let floor = 1e-6 * grads_a.iter().map(|(_, g)| norm(g)).fold(0f32, f32::max);
        for ((name, a), (_, b)) in grads_a.iter().zip(&grads_b) {
            let (na, nb) = (norm(a), norm(b));
            assert!(
                (na - nb).abs() <= 1e-4 * na + floor,
                "{name}: gradient norm {na} vs {nb}"
            );
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            let scale = a.iter().map(|v| v.abs()).fold(0f32, f32::max);
            assert!(
                diff <= 1e-4 * scale + floor,
                "{name}: gradients differ by {diff} (largest {scale})"
            );
            if !name.contains("key.bias") {
                assert!(na > 1e3 * floor, "{name}: no real gradient ({na})");
            }
        }
    }
}
