//! The word-embedding table of a BERT, either plain f32 (m3e-small) or kept in 4-bit blocks
//! (multilingual-e5-small, whose 250,037-row table would take 384 MB as f32).
//!
//! A 4-bit table is read-only: it is frozen during fine-tuning (the trainer refuses to unfreeze
//! it) and a lookup dequantises just the rows of the tokens asked for. The blocks are the base
//! model's own, so the values are exactly those the model was published with.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::Embedding;
use half::f16;

/// Values per block and bytes per block (an f16 scale, then 16 bytes of nibbles).
pub const Q4_BLOCK_VALUES: usize = 32;
pub const Q4_BLOCK_BYTES: usize = 18;
/// The checkpoint's name for a 4-bit table: U8, shape (vocab, hidden / 32 * 18).
pub const Q4_TENSOR: &str = "embeddings.word_embeddings.q4_0";

/// Dequantises 4-bit blocks: each block is an f16 scale then 16 bytes whose low nibbles are
/// values 0-15 and high nibbles values 16-31; value = (nibble - 8) * scale.
pub fn dequantise_q4(blocks: &[u8], out: &mut Vec<f32>) {
    for b in blocks.chunks_exact(Q4_BLOCK_BYTES) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let qs = &b[2..];
        let start = out.len();
        out.resize(start + Q4_BLOCK_VALUES, 0.0);
        let o = &mut out[start..];
        for (j, &q) in qs.iter().enumerate() {
            o[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub enum WordTable {
    Dense(Embedding),
    /// (vocab, row bytes) U8 blocks; shares storage with the builder's variable, so values set
    /// after construction (the trainer loads pretrained weights into its variables) are seen.
    Q4 {
        blocks: Tensor,
        hidden: usize,
    },
}

impl WordTable {
    pub fn q4(blocks: Tensor, hidden: usize) -> Result<Self> {
        let (_, row) = blocks.dims2()?;
        if blocks.dtype() != DType::U8
            || !hidden.is_multiple_of(Q4_BLOCK_VALUES)
            || row != hidden / Q4_BLOCK_VALUES * Q4_BLOCK_BYTES
        {
            candle_core::bail!(
                "4-bit word table must be U8 rows of {} bytes for hidden size {hidden}",
                hidden / Q4_BLOCK_VALUES * Q4_BLOCK_BYTES
            );
        }
        Ok(Self::Q4 { blocks, hidden })
    }

    /// ids of any shape -> ids' shape + (hidden,), f32.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(e) => e.forward(ids),
            Self::Q4 { blocks, hidden } => {
                let flat = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let (vocab, row) = blocks.dims2()?;
                let (storage, layout) = blocks.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*storage else {
                    candle_core::bail!("4-bit word table lives on the CPU");
                };
                let bytes = cpu.as_slice::<u8>()?;
                let bytes = match layout.contiguous_offsets() {
                    Some((a, b)) => &bytes[a..b],
                    None => candle_core::bail!("4-bit word table must be contiguous"),
                };
                let mut out = Vec::with_capacity(flat.len() * hidden);
                for &id in &flat {
                    let id = id as usize;
                    if id >= vocab {
                        candle_core::bail!("token id {id} is outside the vocabulary of {vocab}");
                    }
                    dequantise_q4(&bytes[id * row..(id + 1) * row], &mut out);
                }
                let mut shape = ids.dims().to_vec();
                shape.push(*hidden);
                Tensor::from_vec(out, shape, ids.device())
            }
        }
    }

    /// The dense table, None for a 4-bit one.
    pub fn dense(&self) -> Option<&Embedding> {
        match self {
            Self::Dense(e) => Some(e),
            Self::Q4 { .. } => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    /// Quantises values (whole blocks) the way the image stores them.
    pub(crate) fn quantise(values: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for block in values.chunks(Q4_BLOCK_VALUES) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = if amax == 0.0 { 1.0 } else { amax / 7.0 };
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            let d = f16::from_f32(d).to_f32();
            let q = |v: f32| ((v / d).round().clamp(-8.0, 7.0) as i32 + 8) as u8;
            for j in 0..16 {
                out.push(q(block[j]) | (q(block[j + 16]) << 4));
            }
        }
        out
    }

    #[test]
    fn q4_lookup_dequantises_the_rows_asked_for() {
        let hidden = 64;
        let values: Vec<f32> = (0..3 * hidden)
            .map(|i| ((i % 15) as f32 - 7.0) * 0.25)
            .collect();
        let blocks = quantise(&values);
        let mut expected = Vec::new();
        dequantise_q4(&blocks, &mut expected);
        let row = hidden / 32 * 18;
        let table = WordTable::q4(
            Tensor::from_vec(blocks, (3, row), &Device::Cpu).unwrap(),
            hidden,
        )
        .unwrap();
        let ids = Tensor::new(&[[2u32, 0], [1, 2]], &Device::Cpu).unwrap();
        let got = table.forward(&ids).unwrap();
        assert_eq!(got.dims(), &[2, 2, hidden]);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let row_of = |r: usize| &expected[r * hidden..(r + 1) * hidden];
        assert_eq!(&got[..hidden], row_of(2));
        assert_eq!(&got[hidden..2 * hidden], row_of(0));
        assert_eq!(&got[3 * hidden..], row_of(2));
        let err = table
            .forward(&Tensor::new(&[7u32], &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside the vocabulary of 3"), "{err}");
    }

    #[test]
    fn a_table_of_the_wrong_shape_is_refused() {
        let t = Tensor::zeros((3, 10), DType::U8, &Device::Cpu).unwrap();
        assert!(WordTable::q4(t, 64).is_err());
    }
}
