//! Training kernels with backward passes: layer norm, exact (erf) GELU and softmax over the
//! last dimension, each one pass over contiguous rows.
//!
//! The training BERT used to build these from candle's element-wise ops (a layer norm is ~8
//! ops forward and ~20 backward, GELU's backward ~9), each allocating a tensor and, above 64k
//! elements, dispatching to candle's thread pool, whose barrier spin-waits were the largest
//! item of a fine-tuning profile. candle's GELU also calls scalar libm `erff`. Here each op is
//! one loop per row (LLVM vectorises them; AVX2+FMA when the CPU has it) and the backward is
//! another such op. Same maths, so what training learns changes only by float rounding.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// y = (x - mean) / sqrt(var + eps) * gamma + beta over the last dimension of `x`.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

/// x * (1 + erf(x / sqrt 2)) / 2, element-wise.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// y = x Wᵀ + b for a 2-D `x` (rows, in), `w` (out, in) as Hugging Face stores it, `b` (out).
///
/// Written as `x.matmul(&w.t())` with candle's ops, the backward pass computes W's gradient as
/// (in, out) and then copies it through the transpose into W's (out, in) layout: a strided
/// copy of every weight matrix on every step. Here dW = dyᵀ x comes out in W's layout
/// directly, and b's gradient is one pass of column sums (candle's `broadcast_add` would reduce
/// over the rows with a strided sum, which profiled as 7 % of a fine-tuning step).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Linear)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// The contiguous f32 values a custom op reads (`what` names the op in errors).
pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: f32 only, got {:?}", s.dtype());
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: needs a contiguous input");
    };
    Ok(&v[a..b])
}

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

/// Runs `body` compiled for AVX2+FMA when the CPU has them (the crate's baseline is SSE2),
/// so its loops vectorise 8 wide and `mul_add` is one instruction.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident ( $($arg:ident : $ty:ty),* ) $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just detected.
                    return unsafe { fast($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Sum with 8 independent accumulators, so the loop vectorises without reassociation licence.
#[inline(always)]
fn sum8(xs: &[f32], f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = xs.len() / 8 * 8;
    let mut i = 0;
    while i < n8 {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += f(i + k);
        }
        i += 8;
    }
    let mut tail = 0f32;
    for j in n8..xs.len() {
        tail += f(j);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

// ---------------------------------------------------------------------------------------------
// Layer norm

struct LayerNorm {
    eps: f32,
}

/// Per row: mean and 1/sqrt(var + eps), with var the biased variance of the centred values
/// (as the composite and PyTorch compute it).
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum8(x, |i| x[i]) / n;
    let var = sum8(x, |i| (x[i] - mean) * (x[i] - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

dispatch!(layer_norm_rows(x: &[f32], g: &[f32], b: &[f32], y: &mut [f32], eps: f32) {
    let h = g.len();
    for (xr, yr) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
        let (mean, rstd) = row_stats(xr, eps);
        for i in 0..h {
            yr[i] = (xr[i] - mean) * rstd * g[i] + b[i];
        }
    }
});

dispatch!(
    /// Writes dx into `out[..rows*h]`, dgamma into the next `h`, dbeta into the last `h`.
    layer_norm_bwd_rows(x: &[f32], g: &[f32], dy: &[f32], out: &mut [f32], eps: f32) {
    let h = g.len();
    let rows = x.len() / h;
    let (dx, dgb) = out.split_at_mut(rows * h);
    let (dg, db) = dgb.split_at_mut(h);
    dg.fill(0.0);
    db.fill(0.0);
    let inv_h = 1.0 / h as f32;
    for ((xr, dyr), dxr) in x.chunks_exact(h).zip(dy.chunks_exact(h)).zip(dx.chunks_exact_mut(h)) {
        let (mean, rstd) = row_stats(xr, eps);
        // dxhat = dy * gamma; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
        let s1 = sum8(xr, |i| dyr[i] * g[i]) * inv_h;
        let s2 = sum8(xr, |i| dyr[i] * g[i] * ((xr[i] - mean) * rstd)) * inv_h;
        for i in 0..h {
            let xhat = (xr[i] - mean) * rstd;
            dxr[i] = rstd * (dyr[i] * g[i] - s1 - xhat * s2);
            dg[i] += dyr[i] * xhat;
            db[i] += dyr[i];
        }
    }
});

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "train-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer norm")?;
        let (g, b) = (
            f32_slice(s2, l2, "layer norm")?,
            f32_slice(s3, l3, "layer norm")?,
        );
        let h = last_dim(l1);
        if g.len() != h || b.len() != h {
            candle_core::bail!("layer norm: {} weights for rows of {h}", g.len());
        }
        let mut y = vec![0f32; x.len()];
        layer_norm_rows(x, g, b, &mut y, self.eps);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = gamma.elem_count();
        let rows = x.elem_count() / h.max(1);
        // One op computes all three gradients, packed as (rows + 2, h).
        let packed =
            x.apply_op3_no_bwd(gamma, &dy.contiguous()?, &LayerNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, rows, 1)?.reshape(gamma.shape())?;
        let dbeta = packed.narrow(0, rows + 1, 1)?.reshape(gamma.shape())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "train-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer norm backward")?;
        let g = f32_slice(s2, l2, "layer norm backward")?;
        let dy = f32_slice(s3, l3, "layer norm backward")?;
        let h = g.len();
        if dy.len() != x.len() || x.len() % h != 0 {
            candle_core::bail!("layer norm backward: shapes do not match");
        }
        let rows = x.len() / h;
        let mut out = vec![0f32; x.len() + 2 * h];
        layer_norm_bwd_rows(x, g, dy, &mut out, self.eps);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, h))))
    }
}

// ---------------------------------------------------------------------------------------------
// GELU

/// Coefficients of the rational erf approximation Eigen and XLA use for f32: erf(x) =
/// x P(x²) / Q(x²) on [-4, 4], where f32 erf saturates; absolute error below 5e-7. Shared with
/// the serving kernel (dense.rs) so training and serving compute the same GELU.
pub(super) const ERF_P: [f32; 7] = [
    -1.609_603_3e-2,
    -2.954_6e-3,
    -7.349_906_3e-4,
    -5.692_506_4e-5,
    -2.101_024e-6,
    2.770_681_4e-8,
    -2.726_142_3e-10,
];
pub(super) const ERF_Q: [f32; 5] = [
    -1.426_473_9e-2,
    -7.373_329e-3,
    -1.682_827e-3,
    -2.133_740_6e-4,
    -1.456_607_2e-5,
];

#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ERF_P[6];
    for &a in ERF_P[..6].iter().rev() {
        p = x2.mul_add(p, a);
    }
    let mut q = ERF_Q[4];
    for &b in ERF_Q[..4].iter().rev() {
        q = x2.mul_add(q, b);
    }
    x * p / q
}

/// x * (1 + erf(x / sqrt 2)) / 2, with erf as the rational approximation Eigen and XLA use
/// for f32 (x * P(x²) / Q(x²) on [-4, 4], where f32 erf saturates): absolute error below
/// 5e-7 against the exact erf, so within the encoder's 1e-4 parity with PyTorch.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn gelu_avx512(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(4.0)), _mm512_set1_ps(-4.0));
    let x2 = _mm512_mul_ps(x, x);
    let mut p = _mm512_set1_ps(ERF_P[6]);
    for &a in ERF_P[..6].iter().rev() {
        p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(a));
    }
    p = _mm512_mul_ps(x, p);
    let mut q = _mm512_set1_ps(ERF_Q[4]);
    for &b in ERF_Q[..4].iter().rev() {
        q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(b));
    }
    let erf = _mm512_div_ps(p, q);
    let half = _mm512_set1_ps(0.5);
    _mm512_mul_ps(v, _mm512_fmadd_ps(erf, half, half))
}

/// [`gelu_avx512`] on 8 lanes, for the AVX2 kernel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gelu_avx2(v: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_mul_ps(v, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(4.0)), _mm256_set1_ps(-4.0));
    let x2 = _mm256_mul_ps(x, x);
    let mut p = _mm256_set1_ps(ERF_P[6]);
    for &a in ERF_P[..6].iter().rev() {
        p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(a));
    }
    p = _mm256_mul_ps(x, p);
    let mut q = _mm256_set1_ps(ERF_Q[4]);
    for &b in ERF_Q[..4].iter().rev() {
        q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(b));
    }
    let erf = _mm256_div_ps(p, q);
    let half = _mm256_set1_ps(0.5);
    _mm256_mul_ps(v, _mm256_fmadd_ps(erf, half, half))
}

/// x * (1 + erf(x / sqrt 2)) / 2 for one value, as the training kernel computes it (the int8
/// AVX-VNNI kernel's epilogue uses it).
#[inline(always)]
pub(super) fn gelu_scalar(x: f32) -> f32 {
    (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x
}

/// e^x for x <= 0 (Cephes' expf: range reduction by ln 2, degree-6 polynomial, relative error
/// ~1e-7); 0 below -87 (where f32 underflows anyway), so masked scores give exactly 0.
#[inline(always)]
fn exp_nonpos(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ];
    let xc = x.clamp(-87.0, 0.0);
    let n = (xc * LOG2E + 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let mut p = P[0];
    for &c in &P[1..] {
        p = p.mul_add(r, c);
    }
    let y = (p * r * r + r) + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

dispatch!(gelu_rows(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x;
    }
});

dispatch!(
    /// d gelu / dx = Phi(x) + x phi(x).
    /// (`_n` only to share the backward op's kernel signature with softmax.)
    gelu_bwd_rows(x: &[f32], dy: &[f32], dx: &mut [f32], _n: usize) {
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        let cdf = (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5;
        let pdf = FRAC_1_SQRT_2PI * exp_nonpos(-0.5 * x * x);
        *dx = dy * x.mul_add(pdf, cdf);
    }
});

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "train-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gelu")?;
        let mut y = vec![0f32; x.len()];
        gelu_rows(x, &mut y);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = RowsBwd {
            name: "gelu backward",
            rows: gelu_bwd_rows,
        };
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &op)?))
    }
}

/// dx from (saved tensor, dy), same shape, row by row over the last dimension: the backward
/// op of GELU (saved: x) and of softmax (saved: y).
struct RowsBwd {
    name: &'static str,
    rows: fn(&[f32], &[f32], &mut [f32], usize),
}

impl CustomOp2 for RowsBwd {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let saved = f32_slice(s1, l1, self.name)?;
        let dy = f32_slice(s2, l2, self.name)?;
        if saved.len() != dy.len() {
            candle_core::bail!("{}: shapes do not match", self.name);
        }
        let mut dx = vec![0f32; saved.len()];
        (self.rows)(saved, dy, &mut dx, last_dim(l1));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Linear

struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "train-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = l1.shape().dims2()?;
        let (out_dim, w_in) = l2.shape().dims2()?;
        if w_in != in_dim || l3.dims() != [out_dim] {
            candle_core::bail!(
                "linear: input {:?}, weight {:?}, bias {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        // x (rows, in) @ Wᵀ: W's layout read transposed, no copy.
        let y = s1.matmul(s2, (1, rows, out_dim, in_dim), l1, &l2.transpose(0, 1)?)?;
        let CpuStorage::F32(mut y) = y else {
            candle_core::bail!("linear: f32 only");
        };
        let b = f32_slice(s3, l3, "linear")?;
        add_bias_in_place(&mut y, b);
        Ok((CpuStorage::F32(y), Shape::from((rows, out_dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (x, w) = (x.detach(), w.detach());
        let dx = dy.matmul(&w)?;
        let dw = dy.t()?.matmul(&x)?;
        let db = dy.apply_op1_no_bwd(&ColumnSums { width: w.dim(0)? })?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

dispatch!(add_bias_in_place(y: &mut [f32], b: &[f32]) {
    let h = b.len();
    for yr in y.chunks_exact_mut(h) {
        for i in 0..h {
            yr[i] += b[i];
        }
    }
});

dispatch!(
    /// db[j] = Σ over rows of dy[row, j].
    column_sums(dy: &[f32], db: &mut [f32]) {
    let h = db.len();
    for row in dy.chunks_exact(h) {
        for i in 0..h {
            db[i] += row[i];
        }
    }
});

/// Per-column sums of a (rows, width) gradient: the bias gradient.
struct ColumnSums {
    width: usize,
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "train-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = f32_slice(s, l, "column sums")?;
        if self.width == 0 || dy.len() % self.width != 0 {
            candle_core::bail!("column sums: {} values in rows of {}", dy.len(), self.width);
        }
        let mut db = vec![0f32; self.width];
        column_sums(dy, &mut db);
        Ok((CpuStorage::F32(db), Shape::from(self.width)))
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax

dispatch!(softmax_rows(x: &[f32], y: &mut [f32], n: usize) {
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (y, &x) in yr.iter_mut().zip(xr) {
            *y = exp_nonpos(x - max);
        }
        let inv = 1.0 / sum8(yr, |i| yr[i]);
        for y in yr.iter_mut() {
            *y *= inv;
        }
    }
});

dispatch!(
    /// dx = y * (dy - sum(dy * y)) per row.
    softmax_bwd_rows(y: &[f32], dy: &[f32], dx: &mut [f32], n: usize) {
    for ((yr, dyr), dxr) in y.chunks_exact(n).zip(dy.chunks_exact(n)).zip(dx.chunks_exact_mut(n)) {
        let dot = sum8(yr, |i| yr[i] * dyr[i]);
        for i in 0..n {
            dxr[i] = yr[i] * (dyr[i] - dot);
        }
    }
});

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "train-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax")?;
        let mut y = vec![0f32; x.len()];
        softmax_rows(x, &mut y, last_dim(l));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = RowsBwd {
            name: "softmax backward",
            rows: softmax_bwd_rows,
        };
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &op)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Largest |a - b| / max(1, |b|): relative for large values, absolute near zero.
    fn max_err(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        values(a)
            .iter()
            .zip(values(b))
            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
            .fold(0.0, f32::max)
    }

    /// Runs `f` on fresh variables made from `inputs` and returns the output and the gradient
    /// of sum(output * w) (a random `w`, so every output element matters) for each input.
    fn forward_and_grads(
        inputs: &[Tensor],
        w: &Tensor,
        f: impl Fn(&[Tensor]) -> Tensor,
    ) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let grads = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = ts.iter().map(|t| grads.get(t).unwrap().clone()).collect();
        (y, g)
    }

    fn check(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Tensor,
        composite: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let y_shape = composite(inputs).dims().to_vec();
        let w = random(&mut rng, &y_shape, 1.0);
        let (ya, ga) = forward_and_grads(inputs, &w, fused);
        let (yb, gb) = forward_and_grads(inputs, &w, composite);
        let e = max_err(&ya, &yb);
        assert!(e < tol, "forward differs by {e}");
        for (i, (a, b)) in ga.iter().zip(&gb).enumerate() {
            let e = max_err(a, b);
            assert!(e < tol, "gradient of input {i} differs by {e}");
        }
    }

    fn composite_layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let centered = x.broadcast_sub(&mean).unwrap();
        let var = centered.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = centered
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap();
        normed.broadcast_mul(g).unwrap().broadcast_add(b).unwrap()
    }

    #[test]
    fn layer_norm_matches_composite() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // A width that is not a multiple of 8 exercises the tails; an offset mean and spread
        // like real activations.
        for h in [512, 37] {
            let x = (random(&mut rng, &[3, 5, h], 3.0) + 0.7).unwrap();
            let g = (random(&mut rng, &[h], 0.5) + 1.0).unwrap();
            let b = random(&mut rng, &[h], 0.2);
            check(
                &[x, g, b],
                |t| layer_norm(&t[0], &t[1], &t[2], 1e-12).unwrap(),
                |t| composite_layer_norm(&t[0], &t[1], &t[2], 1e-12),
                1e-5,
            );
        }
    }

    #[test]
    fn layer_norm_takes_non_contiguous_input() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let x = random(&mut rng, &[16, 6], 2.0);
        let g = random(&mut rng, &[16], 1.0);
        let b = random(&mut rng, &[16], 1.0);
        check(
            &[x, g, b],
            |t| layer_norm(&t[0].t().unwrap(), &t[1], &t[2], 1e-5).unwrap(),
            |t| composite_layer_norm(&t[0].t().unwrap(), &t[1], &t[2], 1e-5),
            1e-5,
        );
    }

    #[test]
    fn linear_matches_matmul_and_broadcast_add() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (rows, i, o) in [(45, 64, 96), (7, 37, 19)] {
            let x = random(&mut rng, &[rows, i], 2.0);
            let w = random(&mut rng, &[o, i], 0.3);
            let b = random(&mut rng, &[o], 1.0);
            check(
                &[x, w, b],
                |t| linear(&t[0], &t[1], &t[2]).unwrap(),
                |t| {
                    t[0].matmul(&t[1].t().unwrap())
                        .unwrap()
                        .broadcast_add(&t[2])
                        .unwrap()
                },
                1e-5,
            );
        }
        let x = random(&mut rng, &[3, 8], 1.0);
        let w = random(&mut rng, &[4, 7], 1.0);
        let b = random(&mut rng, &[4], 1.0);
        assert!(linear(&x, &w, &b).is_err());
    }

    #[test]
    fn gelu_matches_composite() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Beyond the erf clamp at |x / sqrt 2| = 4 too.
        let x = random(&mut rng, &[7, 301], 8.0);
        check(
            &[x],
            |t| gelu_erf(&t[0]).unwrap(),
            |t| t[0].gelu_erf().unwrap(),
            1e-5,
        );
    }

    #[test]
    fn erf_and_exp_are_accurate() {
        let mut worst = (0f32, 0f32);
        // Against candle's erf (libm's erff).
        let xs: Vec<f32> = (-100_000..=100_000).map(|i| i as f32 * 1e-4).collect();
        let reference = values(
            &Tensor::new(xs.as_slice(), &Device::Cpu)
                .unwrap()
                .erf()
                .unwrap(),
        );
        for (&x, r) in xs.iter().zip(reference) {
            worst.0 = worst.0.max((erf(x) - r).abs());
        }
        // Down to where f32 e^x leaves the normal range.
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let e = (exp_nonpos(x) - x.exp()).abs() / x.exp().max(f32::MIN_POSITIVE);
            worst.1 = worst.1.max(e);
        }
        assert!(worst.0 < 1e-6 && worst.1 < 1e-6, "{worst:?}");
        assert_eq!(exp_nonpos(-10_000.0), 0.0);
        assert_eq!(exp_nonpos(0.0), 1.0);
    }

    #[test]
    fn softmax_matches_composite() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let x = random(&mut rng, &[2, 3, 9, 13], 4.0);
        check(
            &[x],
            |t| softmax_last_dim(&t[0]).unwrap(),
            |t| candle_nn::ops::softmax(&t[0], D::Minus1).unwrap(),
            1e-5,
        );
    }

    /// Attention-like: scores plus a padding mask of -10000, including a fully padded row.
    #[test]
    fn masked_softmax_matches_composite() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (b, t) = (3, 11);
        let lengths = [11usize, 4, 0];
        let mut bias = vec![0f32; b * t];
        for (row, &l) in lengths.iter().enumerate() {
            bias[row * t + l..(row + 1) * t].fill(-10_000.0);
        }
        let bias = Tensor::from_vec(bias, (b, 1, 1, t), &Device::Cpu).unwrap();
        let scores = random(&mut rng, &[b, 2, t, t], 5.0);
        check(
            &[scores],
            |ts| softmax_last_dim(&ts[0].broadcast_add(&bias).unwrap()).unwrap(),
            |ts| candle_nn::ops::softmax(&ts[0].broadcast_add(&bias).unwrap(), D::Minus1).unwrap(),
            1e-5,
        );
    }
}
