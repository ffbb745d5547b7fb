//! Text in, sentence vectors out: the tokenizer, padding into batches, the BERT forward pass and
//! mean pooling that ignores padding.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use super::bert::{mask_bias, mean_pool, pool_weights, Bert, BertConfig, Mode};
use super::lexical::{CharNgrams, Features};

/// One text after tokenisation, before batching.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    /// The text had more tokens than the model's limit and was cut (keeping [CLS] ... [SEP]).
    pub truncated: bool,
    /// The text's character n-gram features for the model's lexical head (empty without one).
    pub lexical: Features,
    /// The same text as each further member of an ensemble sees it (`ensemble`), in member
    /// order; empty for a single model.
    pub members: Vec<Tokenized>,
}

/// Token ids padded into rectangular tensors for one forward pass. Everything derived from the
/// lengths (attention bias, pooling weights) is built here on the host, in one allocation each,
/// instead of as a chain of small tensor ops per forward pass.
pub struct PaddedBatch {
    /// (batch, seq) u32.
    pub input_ids: Tensor,
    /// (batch, 1, 1, seq) additive attention bias; None when no text is padded (always so for
    /// a single text).
    pub mask_bias: Option<Tensor>,
    /// (batch, seq) f32 mean-pooling weights: 1/len on real tokens, 0 on padding.
    pub pool_weights: Tensor,
    /// Real tokens per text.
    pub lengths: Vec<usize>,
    /// The same ids without padding, one text after another (the serving path's input).
    pub packed_ids: Vec<u32>,
}

/// Tokenizer wrapper that enforces the model's sequence limit itself, so the caller learns
/// whether a text was truncated.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_tokens: usize,
    sep_id: u32,
    pad_id: u32,
    /// Put before every text (see `BaseModel::input_prefix`).
    prefix: String,
    /// The lexical head's vocabulary, when the model has one.
    ngrams: Option<Arc<CharNgrams>>,
}

impl TextTokenizer {
    pub fn from_file(path: &Path, max_tokens: usize) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        Self::from_tokenizer(inner, max_tokens).with_context(|| path.display().to_string())
    }

    /// Wraps an already built tokenizer (a test backend builds its own).
    pub fn from_tokenizer(mut inner: Tokenizer, max_tokens: usize) -> Result<Self> {
        // Padding and truncation are done here, per batch, not by the tokenizer.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
        // BERT vocabularies end a text with [SEP]; XLM-R's (multilingual-e5) with </s>.
        let sep_id = inner
            .token_to_id("[SEP]")
            .or_else(|| inner.token_to_id("</s>"))
            .context("tokenizer has no end-of-text token ([SEP] or </s>)")?;
        let pad_id = inner
            .token_to_id("[PAD]")
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        if max_tokens < 2 {
            anyhow::bail!("max_tokens must be at least 2, got {max_tokens}");
        }
        Ok(Self {
            inner,
            max_tokens,
            sep_id,
            pad_id,
            prefix: String::new(),
            ngrams: None,
        })
    }

    /// Puts `prefix` before every text from now on.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Computes the lexical head's features of every text from now on (of the text itself,
    /// without the prefix).
    pub fn with_ngrams(mut self, ngrams: Arc<CharNgrams>) -> Self {
        self.ngrams = Some(ngrams);
        self
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn tokenize(&self, text: &str) -> Result<Tokenized> {
        let lexical = match &self.ngrams {
            Some(n) => n.features(text),
            None => Vec::new(),
        };
        let prefixed;
        let text = if self.prefix.is_empty() {
            text
        } else {
            prefixed = format!("{}{text}", self.prefix);
            prefixed.as_str()
        };
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizer failed: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        let truncated = ids.len() > self.max_tokens;
        if truncated {
            ids.truncate(self.max_tokens - 1);
            ids.push(self.sep_id);
        }
        Ok(Tokenized {
            ids,
            truncated,
            lexical,
            members: Vec::new(),
        })
    }

    pub fn tokenize_all(&self, texts: &[impl AsRef<str>]) -> Result<Vec<Tokenized>> {
        texts.iter().map(|t| self.tokenize(t.as_ref())).collect()
    }

    /// Pads to the longest sequence in the batch.
    pub fn pad(&self, batch: &[&Tokenized], device: &Device) -> Result<PaddedBatch> {
        let b = batch.len();
        let t = batch.iter().map(|x| x.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![self.pad_id; b * t];
        for (row, x) in batch.iter().enumerate() {
            ids[row * t..row * t + x.ids.len()].copy_from_slice(&x.ids);
        }
        let lengths: Vec<usize> = batch.iter().map(|x| x.ids.len()).collect();
        let packed_ids: Vec<u32> = batch.iter().flat_map(|x| x.ids.iter().copied()).collect();
        Ok(PaddedBatch {
            packed_ids,
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            mask_bias: mask_bias(&lengths, t, device)?,
            pool_weights: pool_weights(&lengths, t, device)?,
            lengths,
        })
    }
}

/// The sentence encoder: BERT + mean pooling.
pub struct SentenceEncoder {
    pub bert: Bert,
    pub device: Device,
}

impl SentenceEncoder {
    pub fn new(bert: Bert, device: Device) -> Self {
        Self { bert, device }
    }

    pub fn config(&self) -> &BertConfig {
        &self.bert.config
    }

    /// (batch, hidden) mean-pooled sentence vectors. A serving build in `Infer` mode skips the
    /// padding (`Bert::embed_packed`); otherwise the padded batch runs with its mask.
    pub fn embed(&self, batch: &PaddedBatch, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Infer
            && self.bert.is_serving_build()
            && batch.lengths.iter().all(|&l| l > 0)
        {
            return Ok(self.bert.embed_packed(&batch.packed_ids, &batch.lengths)?);
        }
        let hidden = self
            .bert
            .forward(&batch.input_ids, None, batch.mask_bias.as_ref(), mode)?;
        Ok(mean_pool(&hidden, &batch.pool_weights)?)
    }
}
