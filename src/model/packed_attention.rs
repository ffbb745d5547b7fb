//! Self-attention over a batch of texts packed one after another, with no padding.
//!
//! Why: a padded batch runs every dense layer on `texts x longest` rows. Chat messages vary in
//! length, so in a batch of 32 SMP2017 texts in arrival order 44 % of the rows are padding
//! (12,032 padded rows for 6,770 real tokens over the test set). Dense layers work row by row,
//! so the serving path keeps only the real tokens (`N x hidden`) and attention, the one step
//! that mixes rows, runs per text here: each (text, head) is a small `len x len` problem.

use candle_core::{Device, Result, Tensor};

use super::dense::f32_slice;
use super::spin_pool::SpinPool;

/// `qkv`: (N, 3 x hidden) rows `[q | k | v]`, heads side by side within each, queries already
/// scaled by 1/sqrt(head_dim); `lengths`: tokens per text, summing to N. Returns the attention
/// context (N, hidden).
pub fn attend(qkv: &Tensor, lengths: &[usize], heads: usize) -> Result<Tensor> {
    let (n, three_h) = qkv.dims2()?;
    let h = three_h / 3;
    if three_h != 3 * h || heads == 0 || !h.is_multiple_of(heads) {
        candle_core::bail!("packed attention: bad shape {n} x {three_h} for {heads} heads");
    }
    if lengths.iter().sum::<usize>() != n {
        candle_core::bail!(
            "packed attention: lengths sum to {}, rows {n}",
            lengths.iter().sum::<usize>()
        );
    }
    let d = h / heads;
    // Read in place (the dense layer's output is contiguous): no copy of the activations.
    let qkv = qkv.contiguous()?;
    let (storage, layout) = qkv.storage_and_layout();
    let qkv = f32_slice(&storage, layout, n * three_h)?;
    let mut offsets = Vec::with_capacity(lengths.len());
    let mut off = 0;
    for &l in lengths {
        offsets.push(off);
        off += l;
    }
    let mut out = vec![0f32; n * h];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let item = |i: usize| {
        let (text, head) = (i / heads, i % heads);
        let (start, len) = (offsets[text], lengths[text]);
        let mut scores = vec![0f32; longest];
        let mut ctx = vec![0f32; d];
        let row = |r: usize, part: usize| -> &[f32] {
            let base = (start + r) * three_h + part * h + head * d;
            &qkv[base..base + d]
        };
        for qi in 0..len {
            let q = row(qi, 0);
            let mut max = f32::NEG_INFINITY;
            for (kj, s) in scores[..len].iter_mut().enumerate() {
                *s = dot(q, row(kj, 1));
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in &mut scores[..len] {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            ctx.fill(0.0);
            for (kj, &p) in scores[..len].iter().enumerate() {
                let p = p * inv;
                for (c, &v) in ctx.iter_mut().zip(row(kj, 2)) {
                    *c += p * v;
                }
            }
            // SAFETY: item (text, head) writes only its own rows' `head` columns; `out` outlives
            // the pool run.
            unsafe {
                let dst = out_ptr.get().add((start + qi) * h + head * d);
                std::ptr::copy_nonoverlapping(ctx.as_ptr(), dst, d);
            }
        }
    };
    SpinPool::global().run(lengths.len() * heads, &item);
    Tensor::from_vec(out, (n, h), &Device::Cpu)
}

/// Mean of each text's rows: `x` (N, hidden) packed as in [`attend`] -> (texts, hidden).
pub fn mean_pool(x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (n, h) = x.dims2()?;
    if lengths.iter().sum::<usize>() != n {
        candle_core::bail!(
            "packed pooling: lengths sum to {}, rows {n}",
            lengths.iter().sum::<usize>()
        );
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let x = f32_slice(&storage, layout, n * h)?;
    let mut out = vec![0f32; lengths.len() * h];
    let mut start = 0;
    for (t, &l) in lengths.iter().enumerate() {
        let acc = &mut out[t * h..(t + 1) * h];
        for r in start..start + l {
            for (a, &v) in acc.iter_mut().zip(&x[r * h..(r + 1) * h]) {
                *a += v;
            }
        }
        if l > 0 {
            let inv = 1.0 / l as f32;
            acc.iter_mut().for_each(|a| *a *= inv);
        }
        start += l;
    }
    Tensor::from_vec(out, (lengths.len(), h), &Device::Cpu)
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: lets the compiler vectorise without reassociating one long chain.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// A raw output pointer shared by the pool's items, each writing a disjoint part.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: see the write in `attend`: items write disjoint ranges.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Padded candle attention, one text at a time, as the reference.
    fn reference(qkv: &Tensor, lengths: &[usize], heads: usize) -> Vec<f32> {
        let h = qkv.dim(1).unwrap() / 3;
        let d = h / heads;
        let mut out = Vec::new();
        let mut start = 0;
        for &l in lengths {
            let x = qkv
                .narrow(0, start, l)
                .unwrap()
                .reshape((l, 3, heads, d))
                .unwrap();
            let x = x.permute((1, 2, 0, 3)).unwrap().contiguous().unwrap();
            let (q, k, v) = (x.get(0).unwrap(), x.get(1).unwrap(), x.get(2).unwrap());
            let p = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t().unwrap()).unwrap()).unwrap();
            let ctx = p
                .matmul(&v)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .reshape((l, h))
                .unwrap();
            out.extend(ctx.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            start += l;
        }
        out
    }

    #[test]
    fn matches_per_text_attention_for_mixed_lengths() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (lengths, heads, h) in [
            (vec![1usize], 2usize, 16usize),
            (vec![3, 9, 1, 17], 4, 64),
            (vec![40, 2], 8, 512),
        ] {
            let n: usize = lengths.iter().sum();
            let v: Vec<f32> = (0..n * 3 * h)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let qkv = Tensor::from_vec(v, (n, 3 * h), &Device::Cpu).unwrap();
            let got = attend(&qkv, &lengths, heads)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let want = reference(&qkv, &lengths, heads);
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "{lengths:?}: {diff}");
        }
    }

    #[test]
    fn pooling_averages_each_texts_rows() {
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (3, 2), &Device::Cpu).unwrap();
        let p = mean_pool(&x, &[1, 2]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(p, vec![vec![1., 2.], vec![4., 5.]]);
        assert!(mean_pool(&x, &[1, 1]).is_err());
        assert!(attend(
            &Tensor::zeros((3, 6), candle_core::DType::F32, &Device::Cpu).unwrap(),
            &[2],
            2
        )
        .is_err());
    }
}
