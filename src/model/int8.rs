//! The int8 serving path for the encoder's dense layers: `y = act(x Wᵀ + b [+ residual])` with
//! W and x in 8 bits and the products summed exactly in i32.
//!
//! Why: at serving batch sizes the fp32 kernel (`dense.rs`) streams 4 bytes of weight per
//! multiply-add and does 16 of them per instruction; VNNI's `vpdpbusd` takes 1 byte per weight
//! and does 64 (four u8 x s8 products summed into each i32 lane). ONNX Runtime's dynamically
//! quantized model is what the service is measured against (issue 18).
//!
//! The maths:
//! - Weights, once at load, symmetric per output channel: `W[o,k] ≈ sw[o] · q[o,k]`, q in
//!   [-127, 127], `sw[o] = max_k |W[o,k]| / 127`.
//! - Activations, per row on every call, asymmetric u8: `x[k] ≈ sx · (u[k] - zp)`, u in
//!   [0, 255], with the row's range widened to include 0 so that 0 is exact (padding and the
//!   GELU's flat left side stay exact).
//! - `Σ_k x[k] W[o,k] ≈ sx · sw[o] · (Σ_k u[k] q[o,k] - zp · Σ_k q[o,k])`. The first sum is
//!   what `vpdpbusd` computes (u8 times s8, no saturation, i32 lanes); the second is a constant
//!   per output channel, so the accumulator starts at `-zp · colsum[o]` and nothing is
//!   subtracted at the end. |sum| ≤ 255 · 127 · k, which fits i32 for k < 66,000.
//! - Then, in registers, as the fp32 kernel does: i32 -> f32, times `sx · sw[o]`, plus bias
//!   (and residual), GELU, one store.
//!
//! Per-row and per-channel scales are finer than ONNX Runtime's dynamic quantization (one scale
//! per activation tensor), which is how the accuracy guard (`intentd eval --precision int8`,
//! tests/int8.rs) stays well within 0.5 points of fp32.
//!
//! Kernels: AVX-512 VNNI (`vpdpbusd` on zmm, 6 rows x 64 columns per register tile) and
//! AVX-VNNI (the VEX-encoded ymm form on CPUs that have only that, 4 rows x 16 columns), chosen
//! at run time by [`detect`]. Where neither exists the caller serves fp32 (`dense.rs`).

use candle_core::Result;

use super::spin_pool::SpinPool;
use super::tiling::{self, Item};

/// The integer dot-product instructions a CPU offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/BW + VNNI: 512-bit `vpdpbusd`.
    Avx512Vnni,
    /// AVX2 + AVX-VNNI: 256-bit `vpdpbusd` (e.g. client cores without AVX-512).
    AvxVnni,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "AVX-512 VNNI",
            Isa::AvxVnni => "AVX-VNNI",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512Vnni => {
                    std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                        && std::is_x86_feature_detected!("avx512vnni")
                }
                Isa::AvxVnni => {
                    std::is_x86_feature_detected!("avx2")
                        && std::is_x86_feature_detected!("fma")
                        && std::is_x86_feature_detected!("avxvnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// The best int8 instruction set of this CPU, if any.
pub fn detect() -> Option<Isa> {
    [Isa::Avx512Vnni, Isa::AvxVnni]
        .into_iter()
        .find(|i| i.available())
}

/// Largest weight magnitude after quantization (symmetric: -128 is never used, so negating a
/// weight cannot overflow).
const QMAX: f32 = 127.0;
/// Output columns per wide block: 4 zmm registers of 16 i32 lanes.
/// Output columns per narrow block (and the granularity the layer must have).
const LANES: usize = 16;
/// k is padded to a multiple of this: `vpdpbusd` takes 4 bytes per lane.
const GROUP: usize = 4;

/// Symmetric per-output-channel quantization of an `(n, k)` row-major weight: the int8 values
/// (same layout) and one scale per row. A row of zeros gets scale 1 (all its q are 0).
pub fn quantize_weights(w: &[f32], n: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), n * k, "weight is not n x k");
    let mut q = vec![0i8; n * k];
    let mut scales = vec![1f32; n];
    for (o, (row, qrow)) in w
        .chunks_exact(k.max(1))
        .zip(q.chunks_exact_mut(k.max(1)))
        .enumerate()
    {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        if !(max > 0.0 && max.is_finite()) {
            continue;
        }
        let s = max / QMAX;
        scales[o] = s;
        for (d, &v) in qrow.iter_mut().zip(row) {
            *d = (v / s).round_ties_even().clamp(-QMAX, QMAX) as i8;
        }
    }
    (q, scales)
}

/// Scale, its inverse and zero point for a row whose values lie in `[lo, hi]` (lo ≤ 0 ≤ hi).
/// Shared by the scalar and vector quantizers so both give the same bytes.
#[inline]
fn row_params(lo: f32, hi: f32) -> (f32, f32, i32) {
    let range = hi - lo;
    if !(range > 0.0 && range.is_finite()) {
        return (1.0, 1.0, 0);
    }
    let scale = range / 255.0;
    let inv = 1.0 / scale;
    let zp = (-lo * inv).round_ties_even().clamp(0.0, 255.0) as i32;
    (scale, inv, zp)
}

/// Asymmetric u8 quantization of one activation row: writes `x.len()` bytes to `out` and
/// returns (scale, zero point), so that `x[i] ≈ scale · (out[i] - zp)`. The scalar reference the
/// vector quantizer is tested against (and the path for tiny rows).
pub fn quantize_row(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    let (mut lo, mut hi) = (0f32, 0f32);
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (scale, inv, zp) = row_params(lo, hi);
    for (d, &v) in out.iter_mut().zip(x) {
        *d = ((v * inv).round_ties_even() as i32 + zp).clamp(0, 255) as u8;
    }
    (scale, zp)
}

/// A dense layer's weights quantized and laid out for the int8 kernels.
pub struct Int8Dense {
    /// For each block of 64 output columns (then each remaining block of 16), the block's
    /// weights k-group by k-group: `[k / 4][width][4]` bytes, so one 64-byte load holds 4
    /// consecutive k of 16 columns, exactly what `vpdpbusd` multiplies by a broadcast of 4
    /// activation bytes. k is zero-padded to a multiple of 4.
    packed: Vec<i8>,
    /// Per output column.
    scale: Vec<f32>,
    /// `-Σ_k q[o,k]` per output column: times the row's zero point, the accumulator's start.
    neg_colsum: Vec<i32>,
    bias: Vec<f32>,
    k: usize,
    /// k rounded up to a multiple of 4.
    kp: usize,
    n: usize,
    isa: Isa,
}

impl Int8Dense {
    /// `weight`: `(n, k)` row-major f32 (Hugging Face's layout), `bias`: n. Fails when the
    /// shape does not suit the kernels (n not a multiple of 16, k = 0 or too large for i32
    /// sums) or the CPU lacks `isa`; the caller then serves fp32.
    pub fn new(weight: &[f32], bias: &[f32], n: usize, k: usize, isa: Isa) -> Result<Self> {
        if !isa.available() {
            candle_core::bail!("this CPU has no {}", isa.name());
        }
        if n == 0 || !n.is_multiple_of(LANES) || k == 0 || k > 60_000 {
            candle_core::bail!(
                "int8 dense needs n a multiple of {LANES} and 0 < k <= 60000, got n {n} k {k}"
            );
        }
        if weight.len() != n * k || bias.len() != n {
            candle_core::bail!(
                "int8 dense: weight has {} values and bias {} for n {n} x k {k}",
                weight.len(),
                bias.len()
            );
        }
        let (q, scale) = quantize_weights(weight, n, k);
        let kp = k.div_ceil(GROUP) * GROUP;
        let neg_colsum = q
            .chunks_exact(k)
            .map(|row| -row.iter().map(|&v| v as i32).sum::<i32>())
            .collect();
        let mut packed = vec![0i8; n * kp];
        let mut at = 0;
        for (col0, width) in tiling::column_blocks(n) {
            for g in 0..kp / GROUP {
                for c in 0..width {
                    let row = &q[(col0 + c) * k..(col0 + c + 1) * k];
                    for j in 0..GROUP {
                        let kk = g * GROUP + j;
                        packed[at] = if kk < k { row[kk] } else { 0 };
                        at += 1;
                    }
                }
            }
        }
        debug_assert_eq!(at, packed.len());
        Ok(Self {
            packed,
            scale,
            neg_colsum,
            bias: bias.to_vec(),
            k,
            kp,
            n,
            isa,
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn in_dim(&self) -> usize {
        self.k
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// Bytes held (weights, scales, sums, bias).
    pub fn size_bytes(&self) -> usize {
        self.packed.len() + 4 * (self.scale.len() + self.neg_colsum.len() + self.bias.len())
    }

    /// `x`: rows x k, `residual`: rows x n (added before the activation). Returns rows x n.
    pub fn forward(
        &self,
        x: &[f32],
        rows: usize,
        residual: Option<&[f32]>,
        gelu: bool,
    ) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.k, "input is not rows x k");
        if let Some(r) = residual {
            assert_eq!(r.len(), rows * self.n, "residual is not rows x n");
        }
        let q = self.quantize(x, rows);
        let mut y: Vec<f32> = Vec::with_capacity(rows * self.n);
        let job = Job {
            xq: q.bytes.as_ptr(),
            sx: q.scales.as_ptr(),
            zp: q.zps.as_ptr(),
            w: self.packed.as_ptr(),
            scale: self.scale.as_ptr(),
            neg_colsum: self.neg_colsum.as_ptr(),
            bias: self.bias.as_ptr(),
            residual: residual.map(|r| r.as_ptr()),
            y: y.as_mut_ptr(),
            rows,
            kp: self.kp,
            n: self.n,
            gelu,
        };
        // SAFETY: `isa` was checked available in `new`; every pointer covers the extent the
        // job names (asserted above, or built here); `y` has room for rows x n and the kernels
        // write each element exactly once.
        unsafe {
            run(&job, self.isa);
            y.set_len(rows * self.n);
        }
        y
    }

    /// Every row quantized to u8 (k padded with zeros to kp), with its scale and zero point.
    fn quantize(&self, x: &[f32], rows: usize) -> QuantizedRows {
        let (k, kp) = (self.k, self.kp);
        let mut q = QuantizedRows {
            bytes: vec![0u8; rows * kp],
            scales: vec![0f32; rows],
            zps: vec![0i32; rows],
        };
        // Rows per pool item: enough work (~32k values) to be worth a hand-off.
        let per_item = (32 * 1024 / k).max(1);
        let items = rows.div_ceil(per_item);
        let out = SendPtr(q.bytes.as_mut_ptr());
        let sc = SendPtr(q.scales.as_mut_ptr());
        let zp = SendPtr(q.zps.as_mut_ptr());
        let isa = self.isa;
        let item = |i: usize| {
            for r in i * per_item..((i + 1) * per_item).min(rows) {
                let src = &x[r * k..(r + 1) * k];
                // SAFETY: item i writes rows [i * per_item, ...) only, each within the
                // buffers allocated above, which outlive the pool run.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(r * kp), k) };
                let (s, z) = quantize_row_fast(src, dst, isa);
                unsafe {
                    *sc.get().add(r) = s;
                    *zp.get().add(r) = z;
                }
            }
        };
        if items > 1 {
            SpinPool::global().run(items, &item);
        } else {
            (0..items).for_each(item);
        }
        q
    }
}

struct QuantizedRows {
    bytes: Vec<u8>,
    scales: Vec<f32>,
    zps: Vec<i32>,
}

/// `quantize_row` with the CPU's vector instructions (the same bytes).
fn quantize_row_fast(x: &[f32], out: &mut [u8], isa: Isa) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        // SAFETY: `isa` is only ever a set the CPU has (checked in `Int8Dense::new`).
        return unsafe { avx512::quantize_row(x, out) };
    }
    let _ = isa;
    quantize_row(x, out)
}

/// A raw pointer shared by pool items that write disjoint parts.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: see each use: items write disjoint ranges.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

struct Job {
    /// rows x kp quantized activations
    xq: *const u8,
    /// rows: scale and zero point of each row
    sx: *const f32,
    zp: *const i32,
    /// n x kp packed weights (`Int8Dense::packed`)
    w: *const i8,
    /// n each
    scale: *const f32,
    neg_colsum: *const i32,
    bias: *const f32,
    residual: Option<*const f32>,
    /// rows x n, written
    y: *mut f32,
    rows: usize,
    kp: usize,
    n: usize,
    gelu: bool,
}

// SAFETY: threads read the shared inputs and write disjoint (row, column) blocks of `y`.
unsafe impl Sync for Job {}

/// Rows of activations per work item: ~256 KiB of u8, which stays in L2 next to one weight
/// block (at most 64 x kp bytes, 128 KiB at k = 2048) while the item's tiles reuse both.
const PANEL_BYTES: usize = 256 * 1024;

/// Splits the output into (row panel x column block) items and runs them on the spin pool
/// (`tiling`).
///
/// # Safety
/// The CPU must have `isa`; the pointers must cover the sizes in `job`.
unsafe fn run(job: &Job, isa: Isa) {
    // Whole tiles of both kernels (6 and 4 rows).
    let panel_rows = tiling::panel_rows(PANEL_BYTES, job.kp, 12);
    tiling::run_items(job.rows, job.n, panel_rows, &|it: Item| {
        // The block's weights start at col0 x kp.
        let w = job.w.wrapping_add(it.col0 * job.kp);
        // SAFETY: forwarded from `run`'s contract.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni => {
                    tiling::tile_item(job, it, w, &avx512::WIDE_TILES, &avx512::NARROW_TILES)
                }
                #[cfg(target_arch = "x86_64")]
                Isa::AvxVnni => avx2::rows_block(job, it, w),
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!("no int8 kernels off x86_64"),
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Job, GROUP, LANES};
    use crate::model::tiling::TileFn;

    /// Output rows per register tile: 6 x 4 accumulators + 4 weights + 1 broadcast of the 32
    /// zmm registers (the fp32 kernel's shape).
    const TILE_ROWS: usize = 6;
    /// k-groups of weights fetched ahead of use (as the fp32 kernel; the stream is 4x thinner).
    const PF_AHEAD: usize = 8;

    /// # Safety
    /// AVX-512 F/BW/VNNI must be present; `out` at least as long as `x`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn quantize_row(x: &[f32], out: &mut [u8]) -> (f32, i32) {
        let k = x.len();
        debug_assert!(out.len() >= k);
        let p = x.as_ptr();
        let mut lo = _mm512_setzero_ps();
        let mut hi = _mm512_setzero_ps();
        let mut i = 0;
        while i + LANES <= k {
            let v = _mm512_loadu_ps(p.add(i));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            i += LANES;
        }
        let tail: __mmask16 = ((1u32 << (k - i)) - 1) as __mmask16;
        if i < k {
            // Masked-off lanes load 0, which the range includes anyway.
            let v = _mm512_maskz_loadu_ps(tail, p.add(i));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        let (scale, inv, zp) =
            super::row_params(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        let invv = _mm512_set1_ps(inv);
        let zpv = _mm512_set1_epi32(zp);
        let o = out.as_mut_ptr() as *mut i8;
        let mut i = 0;
        while i + LANES <= k {
            let q = quantize16(_mm512_loadu_ps(p.add(i)), invv, zpv);
            _mm512_mask_cvtusepi32_storeu_epi8(o.add(i), 0xffff, q);
            i += LANES;
        }
        if i < k {
            let q = quantize16(_mm512_maskz_loadu_ps(tail, p.add(i)), invv, zpv);
            _mm512_mask_cvtusepi32_storeu_epi8(o.add(i), tail, q);
        }
        (scale, zp)
    }

    /// Round to nearest even (the MXCSR default, as `round_ties_even`), shift by the zero
    /// point, clamp at 0 here and at 255 by the saturating narrowing store.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quantize16(v: __m512, inv: __m512, zp: __m512i) -> __m512i {
        let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), zp);
        _mm512_max_epi32(q, _mm512_setzero_si512())
    }

    /// Tile functions by height: 64-column blocks, then 16-column ones (`tiling::tile_item`).
    pub const WIDE_TILES: [TileFn<Job, i8>; TILE_ROWS] = [
        tile1::<4>, tile2::<4>, tile3::<4>, tile4::<4>, tile5::<4>, tile6::<4>,
    ];
    pub const NARROW_TILES: [TileFn<Job, i8>; TILE_ROWS] = [
        tile1::<1>, tile2::<1>, tile3::<1>, tile4::<1>, tile5::<1>, tile6::<1>,
    ];

    /// One tile (the listed rows x 16 C columns) over all of k in registers; a macro with one
    /// named accumulator array per row, for the reason given in dense.rs (arrays of arrays
    /// were kept on the stack).
    macro_rules! tile {
        ($name:ident, $($acc:ident $r:literal),+) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
            unsafe fn $name<const C: usize>(job: &Job, row0: usize, col0: usize, panel: *const i8) {
                let (kp, n) = (job.kp, job.n);
                $(
                    let zp = _mm512_set1_epi32(*job.zp.add(row0 + $r));
                    let mut $acc = [_mm512_setzero_si512(); C];
                    for c in 0..C {
                        let cs = _mm512_loadu_si512(job.neg_colsum.add(col0 + c * LANES) as *const _);
                        $acc[c] = _mm512_mullo_epi32(zp, cs);
                    }
                )+
                let x = job.xq.add(row0 * kp);
                let mut w = panel;
                for g in 0..kp / GROUP {
                    for c in 0..C {
                        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(C * 64 * PF_AHEAD + c * 64));
                    }
                    let mut wv = [_mm512_setzero_si512(); C];
                    for (c, wv_c) in wv.iter_mut().enumerate() {
                        *wv_c = _mm512_loadu_si512(w.add(c * 64) as *const _);
                    }
                    $(
                        let xb = _mm512_set1_epi32((x.add($r * kp + g * GROUP) as *const i32).read_unaligned());
                        for c in 0..C {
                            $acc[c] = _mm512_dpbusd_epi32($acc[c], xb, wv[c]);
                        }
                    )+
                    w = w.add(C * 64);
                }
                $(
                    let sx = _mm512_set1_ps(*job.sx.add(row0 + $r));
                    for (c, &v) in $acc.iter().enumerate() {
                        let col = col0 + c * LANES;
                        let mut b = _mm512_loadu_ps(job.bias.add(col));
                        if let Some(res) = job.residual {
                            b = _mm512_add_ps(b, _mm512_loadu_ps(res.add((row0 + $r) * n + col)));
                        }
                        let s = _mm512_mul_ps(sx, _mm512_loadu_ps(job.scale.add(col)));
                        let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), s, b);
                        let v = if job.gelu { crate::model::fused_ops::gelu_avx512(v) } else { v };
                        _mm512_storeu_ps(job.y.add((row0 + $r) * n + col), v);
                    }
                )+
            }
        };
    }
    tile!(tile1, a0 0);
    tile!(tile2, a0 0, a1 1);
    tile!(tile3, a0 0, a1 1, a2 2);
    tile!(tile4, a0 0, a1 1, a2 2, a3 3);
    tile!(tile5, a0 0, a1 1, a2 2, a3 3, a4 4);
    tile!(tile6, a0 0, a1 1, a2 2, a3 3, a4 4, a5 5);
}

/// The AVX-VNNI kernel: the same packed weights, read as 16-column strips (two ymm registers
/// of 8 i32 lanes), 4 rows per tile: 8 accumulators + 2 weights + 1 broadcast of the 16 ymm
/// registers. The epilogue (scale, bias, residual, GELU) runs in scalar code: it touches each
/// output once, while the dot products touch each weight byte per row.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Job, GROUP, LANES};
    use crate::model::tiling::{self, Item};

    const TILE_ROWS: usize = 4;

    /// # Safety
    /// As `super::run`; `w` is the block's packed weights.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub unsafe fn rows_block(job: &Job, it: Item, w: *const i8) {
        // Within a block, strip s's 16 columns sit at byte 64 s of every k-group.
        for s in 0..it.width / LANES {
            let col = it.col0 + s * LANES;
            // SAFETY: forwarded from `run`'s contract; every tile stays inside the item.
            tiling::row_tiles(it.row0, it.rows, TILE_ROWS, |r, t| unsafe {
                strip(job, r, t, col, w.add(s * 64), it.width * GROUP)
            });
        }
    }

    #[target_feature(enable = "avx2,fma,avxvnni")]
    unsafe fn strip(job: &Job, row0: usize, t: usize, col: usize, w: *const i8, stride: usize) {
        let kp = job.kp;
        let mut acc = [[_mm256_setzero_si256(); 2]; TILE_ROWS];
        for (r, a) in acc.iter_mut().enumerate().take(t) {
            let zp = _mm256_set1_epi32(*job.zp.add(row0 + r));
            for (h, a_h) in a.iter_mut().enumerate() {
                let cs = _mm256_loadu_si256(job.neg_colsum.add(col + 8 * h) as *const __m256i);
                *a_h = _mm256_mullo_epi32(zp, cs);
            }
        }
        let x = job.xq.add(row0 * kp);
        let mut wp = w;
        for g in 0..kp / GROUP {
            let w0 = _mm256_loadu_si256(wp as *const __m256i);
            let w1 = _mm256_loadu_si256(wp.add(32) as *const __m256i);
            // Fixed trip count per tile height, so the accumulators stay in registers.
            macro_rules! row {
                ($r:literal) => {
                    if $r < t {
                        let xb = _mm256_set1_epi32(
                            (x.add($r * kp + g * GROUP) as *const i32).read_unaligned(),
                        );
                        acc[$r][0] = _mm256_dpbusd_avx_epi32(acc[$r][0], xb, w0);
                        acc[$r][1] = _mm256_dpbusd_avx_epi32(acc[$r][1], xb, w1);
                    }
                };
            }
            row!(0);
            row!(1);
            row!(2);
            row!(3);
            wp = wp.add(stride);
        }
        let n = job.n;
        for (r, a) in acc.iter().enumerate().take(t) {
            let row = row0 + r;
            let sx = *job.sx.add(row);
            let mut sums = [0i32; LANES];
            _mm256_storeu_si256(sums.as_mut_ptr() as *mut __m256i, a[0]);
            _mm256_storeu_si256(sums.as_mut_ptr().add(8) as *mut __m256i, a[1]);
            for (j, &s) in sums.iter().enumerate() {
                let o = col + j;
                let mut b = *job.bias.add(o);
                if let Some(res) = job.residual {
                    b += *res.add(row * n + o);
                }
                let v = (s as f32).mul_add(sx * *job.scale.add(o), b);
                *job.y.add(row * n + o) = if job.gelu {
                    super::super::fused_ops::gelu_scalar(v)
                } else {
                    v
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    }

    fn gelu64(s: f64) -> f64 {
        0.5 * s * (1.0 + statrs::function::erf::erf(s / std::f64::consts::SQRT_2))
    }

    /// Every ISA this CPU has; says so (in the test output) for those it lacks.
    fn isas() -> Vec<Isa> {
        let mut v = Vec::new();
        for isa in [Isa::Avx512Vnni, Isa::AvxVnni] {
            if isa.available() {
                v.push(isa);
            } else {
                eprintln!(
                    "int8: this CPU has no {}: its kernel is NOT tested here",
                    isa.name()
                );
            }
        }
        v
    }

    #[test]
    fn weight_round_trip_is_within_half_a_step_per_channel() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (n, k) = (37, 53);
        let mut w = random(&mut rng, n * k, -1.0, 1.0);
        // A channel of zeros and one with a large outlier.
        w[..k].fill(0.0);
        w[k + 3] = 40.0;
        let (q, s) = quantize_weights(&w, n, k);
        assert_eq!(s[0], 1.0);
        assert!(q[..k].iter().all(|&v| v == 0));
        for o in 0..n {
            let row = &w[o * k..(o + 1) * k];
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            if max > 0.0 {
                assert!((s[o] - max / 127.0).abs() <= 1e-6 * max, "channel {o}");
                assert!(q[o * k..(o + 1) * k].iter().any(|v| v.abs() == 127));
            }
            for (kk, &v) in row.iter().enumerate() {
                let back = q[o * k + kk] as f32 * s[o];
                assert!(
                    (back - v).abs() <= 0.5 * s[o] * (1.0 + 1e-5),
                    "w[{o},{kk}] {v} -> {back}"
                );
            }
        }
    }

    #[test]
    fn activation_round_trip_is_within_half_a_step_and_zero_is_exact() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for (len, lo, hi) in [
            (1, -1.0, 1.0),
            (17, 0.0, 3.0),
            (100, -5.0, -0.5),
            (513, -0.2, 9.0),
        ] {
            let mut x = random(&mut rng, len, lo, hi);
            if len > 3 {
                x[2] = 0.0;
            }
            let mut q = vec![0u8; len];
            let (s, zp) = quantize_row(&x, &mut q);
            assert!((0..=255).contains(&zp));
            let range =
                x.iter().fold(0f32, |m, v| m.max(*v)) - x.iter().fold(0f32, |m, v| m.min(*v));
            assert!((s - range / 255.0).abs() <= 1e-6 * range.max(1.0));
            for (&v, &b) in x.iter().zip(&q) {
                let back = s * (b as i32 - zp) as f32;
                assert!(
                    (back - v).abs() <= 0.5 * s + 1e-6 * range,
                    "{v} -> {back} (len {len})"
                );
                if v == 0.0 {
                    assert_eq!(back, 0.0);
                }
            }
        }
        // All zeros: any scale, every byte the zero point.
        let mut q = vec![9u8; 5];
        let (_, zp) = quantize_row(&[0.0; 5], &mut q);
        assert!(q.iter().all(|&b| b as i32 == zp));
    }

    #[test]
    fn the_vector_quantizer_gives_the_scalar_bytes() {
        let Some(isa) = detect() else {
            eprintln!("int8: no VNNI on this CPU: the vector quantizer is NOT tested here");
            return;
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for len in [1usize, 3, 15, 16, 17, 31, 64, 100, 513, 2048] {
            let x = random(&mut rng, len, -3.0, 7.0);
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            let ra = quantize_row(&x, &mut a);
            let rb = quantize_row_fast(&x, &mut b, isa);
            assert_eq!(ra, rb, "len {len}");
            assert_eq!(a, b, "len {len}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// The kernel's exact maths done slowly: quantize the same way, sum in i64, scale in f64.
    fn scalar_reference(
        w: &[f32],
        b: &[f32],
        x: &[f32],
        rows: usize,
        n: usize,
        k: usize,
        res: Option<&[f32]>,
        gelu: bool,
    ) -> Vec<f64> {
        let (q, sw) = quantize_weights(w, n, k);
        let mut out = Vec::with_capacity(rows * n);
        for r in 0..rows {
            let mut u = vec![0u8; k];
            let (sx, zp) = quantize_row(&x[r * k..(r + 1) * k], &mut u);
            for o in 0..n {
                let dot: i64 = (0..k)
                    .map(|kk| (u[kk] as i64 - zp as i64) * q[o * k + kk] as i64)
                    .sum();
                let mut v = dot as f64 * sx as f64 * sw[o] as f64 + b[o] as f64;
                if let Some(res) = res {
                    v += res[r * n + o] as f64;
                }
                out.push(if gelu { gelu64(v) } else { v });
            }
        }
        out
    }

    fn exact(w: &[f32], b: &[f32], x: &[f32], rows: usize, n: usize, k: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(rows * n);
        for r in 0..rows {
            for o in 0..n {
                let s: f64 = (0..k)
                    .map(|kk| x[r * k + kk] as f64 * w[o * k + kk] as f64)
                    .sum();
                out.push(s + b[o] as f64);
            }
        }
        out
    }

    #[test]
    fn kernels_match_the_scalar_reference_on_odd_sizes() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        // Rows: every tile remainder for both kernels, and several row panels (k = 700: 372
        // rows a panel); k: not a multiple of 4 or 16; n: 64-wide blocks and 16-wide tails.
        let shapes = [
            (1, 1, 16),
            (2, 3, 16),
            (5, 33, 64),
            (7, 64, 80),
            (13, 130, 208),
            (6, 7, 144),
            (400, 700, 48),
        ];
        for isa in isas() {
            for &(rows, k, n) in &shapes {
                let x = random(&mut rng, rows * k, -2.0, 2.0);
                let w = random(&mut rng, n * k, -1.0, 1.0);
                let b = random(&mut rng, n, -1.0, 1.0);
                let res = random(&mut rng, rows * n, -1.0, 1.0);
                let d = Int8Dense::new(&w, &b, n, k, isa).unwrap();
                for (r, gelu) in [
                    (None, false),
                    (Some(res.as_slice()), false),
                    (None, true),
                    (Some(res.as_slice()), true),
                ] {
                    let got = d.forward(&x, rows, r, gelu);
                    let want = scalar_reference(&w, &b, &x, rows, n, k, r, gelu);
                    let diff = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (*a as f64 - b).abs())
                        .fold(0.0, f64::max);
                    // Only f32 rounding of the epilogue differs (the sums are exact).
                    assert!(
                        diff < 1e-4,
                        "{isa:?} rows {rows} k {k} n {n} gelu {gelu}: {diff}"
                    );
                }
                // And the quantization error against the real product is bounded: each of k
                // terms is off by at most ~(|x| sw + |w| sx) / 2.
                let got = d.forward(&x, rows, None, false);
                let want = exact(&w, &b, &x, rows, n, k);
                let bound = k as f64 * (2.0 / 127.0 + 1.0 * 4.0 / 255.0) * 0.5 + 1e-4;
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (*a as f64 - b).abs())
                    .fold(0.0, f64::max);
                assert!(
                    diff <= bound,
                    "{isa:?} rows {rows} k {k} n {n}: {diff} > {bound}"
                );
            }
        }
    }

    #[test]
    fn shapes_the_kernels_cannot_take_are_errors() {
        let Some(isa) = detect() else {
            eprintln!("int8: no VNNI on this CPU: construction checks NOT run");
            return;
        };
        assert!(Int8Dense::new(&[0.0; 40 * 2], &[0.0; 40], 40, 2, isa).is_err());
        assert!(Int8Dense::new(&[0.0; 16 * 2], &[0.0; 15], 16, 2, isa).is_err());
        assert!(Int8Dense::new(&[], &[0.0; 16], 16, 0, isa).is_err());
        let d = Int8Dense::new(&[0.5; 16 * 2], &[0.0; 16], 16, 2, isa).unwrap();
        assert_eq!((d.in_dim(), d.out_dim()), (2, 16));
        // Zero rows: nothing to compute.
        assert!(d.forward(&[], 0, None, false).is_empty());
    }
}
