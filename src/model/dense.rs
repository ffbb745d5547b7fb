//! The serving path's dense layer: `y = act(x Wᵀ + b [+ residual])` in one pass, with the
//! weights laid out once at load time for the kernel that reads them.
//!
//! Why not candle's matmul: a BERT forward pass at serving batch sizes (1-32 short texts, so
//! 10-400 rows) is a stream of skinny matrix products over 50 MB of weights. gemm (candle's CPU
//! matmul) repacks a transposed weight on every call, or, without repacking, walks it twice
//! with strided reads; profiled, that was ~65 % of a batch-1 pass. It also leaves the bias add,
//! the GELU (scalar `erff`, 12 % of a batch-32 pass) and the residual add to separate passes
//! over memory, each with its own allocation. Here the weight is stored once, transposed and cut
//! in column panels (all of `in` for 64 outputs, contiguous; see `pack`), and an AVX-512 kernel
//! streams each panel sequentially, keeping a 6-row x 64-column tile of the output in registers; the bias (and residual) seed the accumulators and the GELU is
//! applied before the single store. Column blocks are shared among the threads of `spin_pool`
//! (sized like gemm's pool, by `RAYON_NUM_THREADS`).
//!
//! Where AVX-512 is missing but AVX2 and FMA are there (AMD EPYC before Zen 4, older Xeons), an
//! AVX2 kernel reads the same packed panels as 16-column strips, 6 rows x 16 columns per
//! register tile (12 of the 16 ymm registers accumulate): measured, candle's gemm made a batch-1
//! pass several times slower there than the fused kernel (benches/RESULTS.md). Without either
//! (checked at run time) the same maths runs through candle: the weight stays `(out, in)` and
//! `y = (W xᵀ)ᵀ`, which lets gemm stream the weight once without repacking. Serving only: no
//! backward pass (training uses candle ops on its variables).

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{Device, Layout, Result, Storage, Tensor};
use serde::{Deserialize, Serialize};

use super::int8::{self, Int8Dense, Isa};

/// What follows the affine map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    /// Exact (erf) GELU, as BERT uses.
    Gelu,
}

/// A dense layer prepared for serving.
pub struct ServingDense {
    imp: Impl,
    in_dim: usize,
    out_dim: usize,
}

enum Impl {
    /// candle's matmul; the weight `(out, in)` contiguous.
    Candle { weight: Tensor, bias: Tensor },
    /// A fused fp32 kernel; the weight in column panels (`pack`).
    Fp32 {
        weight: Tensor,
        bias: Tensor,
        isa: Fp32Isa,
    },
    /// Weights quantized to int8 per output channel (`int8.rs`).
    Int8(Int8Dense),
}

/// Which arithmetic serves the encoder's dense layers: the `serving.precision` setting, the
/// `--precision` flag of `intentd eval`, or `INTENTD_DENSE_KERNEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// int8 where the CPU has VNNI (AVX-512 or AVX), fp32 otherwise.
    #[default]
    Auto,
    Fp32,
    /// int8 where the CPU has VNNI; fp32 (with a warning) where it does not.
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "fp32" => Ok(Precision::Fp32),
            "int8" => Ok(Precision::Int8),
            _ => Err(format!(
                "unknown precision '{s}': expected auto, fp32 or int8"
            )),
        }
    }
}

/// The instruction set of a fused fp32 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp32Isa {
    Avx512,
    /// AVX2 with FMA: 8-lane registers, half as many of them.
    Avx2,
}

impl Fp32Isa {
    pub fn name(self) -> &'static str {
        match self {
            Fp32Isa::Avx512 => "AVX-512",
            Fp32Isa::Avx2 => "AVX2+FMA",
        }
    }

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Fp32Isa::Avx512 => std::is_x86_feature_detected!("avx512f"),
                Fp32Isa::Avx2 => {
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The widest this CPU runs.
    pub fn detect() -> Option<Fp32Isa> {
        [Fp32Isa::Avx512, Fp32Isa::Avx2]
            .into_iter()
            .find(|isa| isa.available())
    }
}

/// What actually serves a layer, after the CPU and the environment have had their say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseKernel {
    /// candle's matmul (neither AVX-512 nor AVX2+FMA, or `INTENTD_DENSE_KERNEL=portable`).
    Portable,
    /// A fused fp32 kernel.
    Fp32(Fp32Isa),
    Int8(Isa),
}

impl DenseKernel {
    pub fn describe(self) -> String {
        match self {
            DenseKernel::Portable => "fp32 (portable, candle matmul)".into(),
            DenseKernel::Fp32(isa) => format!("fp32 ({})", isa.name()),
            DenseKernel::Int8(isa) => format!("int8 ({})", isa.name()),
        }
    }

    pub fn is_int8(self) -> bool {
        matches!(self, DenseKernel::Int8(_))
    }
}

/// The precision asked for by whoever configures the process (`intentd serve` from
/// `serving.precision`); fp32 until set, so library users and tests get fp32 unless they ask.
static PROCESS_PRECISION: AtomicU8 = AtomicU8::new(1);

/// Sets the precision [`ServingDense::new`] (and so every model load without an explicit
/// precision) uses from now on. `INTENTD_DENSE_KERNEL` still wins.
pub fn set_default_precision(p: Precision) {
    PROCESS_PRECISION.store(p as u8, Ordering::Relaxed);
}

/// The precision in force when none is given explicitly: `INTENTD_DENSE_KERNEL` (`auto`,
/// `fp32`, `int8`; `portable` means fp32 through candle), else [`set_default_precision`]'s,
/// else fp32. An unknown value in the variable is an error naming it.
pub fn default_precision() -> Result<Precision> {
    if let Some(p) = env_override()? {
        return Ok(p);
    }
    Ok(match PROCESS_PRECISION.load(Ordering::Relaxed) {
        0 => Precision::Auto,
        2 => Precision::Int8,
        _ => Precision::Fp32,
    })
}

/// The precision `INTENTD_DENSE_KERNEL` asks for, if it is set.
fn env_override() -> Result<Option<Precision>> {
    match std::env::var(KERNEL_ENV) {
        Err(_) => Ok(None),
        Ok(v) if v.eq_ignore_ascii_case("portable") => Ok(Some(Precision::Fp32)),
        Ok(v) => v.parse().map(Some).map_err(|e| {
            candle_core::Error::Msg(format!(
                "{KERNEL_ENV}={v}: {e} (or portable for fp32 through candle)"
            ))
        }),
    }
}

/// The kernel a layer asking for `p` gets on this CPU: int8 needs VNNI, the fp32 kernel
/// AVX-512F or AVX2+FMA, and `INTENTD_DENSE_KERNEL=portable` rules both out.
pub fn kernel_for(p: Precision) -> DenseKernel {
    if portable_forced() {
        return DenseKernel::Portable;
    }
    let fp32 = fp32_kernel().map_or(DenseKernel::Portable, DenseKernel::Fp32);
    match p {
        Precision::Fp32 => fp32,
        Precision::Auto | Precision::Int8 => int8::detect().map(DenseKernel::Int8).unwrap_or(fp32),
    }
}

fn portable_forced() -> bool {
    std::env::var(KERNEL_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("portable"))
}

impl ServingDense {
    /// `weight` is `(out, in)`, as Hugging Face stores it; served at [`default_precision`].
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        Self::with_precision(weight, bias, default_precision()?)
    }

    /// As `new`, at precision `p` (see [`kernel_for`]).
    pub fn with_precision(weight: &Tensor, bias: &Tensor, p: Precision) -> Result<Self> {
        Self::with_kernel_choice(weight, bias, kernel_for(p))
    }

    /// As `new`, choosing between the widest fp32 kernel and candle (tests compare the two);
    /// `kernel` is ignored where the CPU cannot run one.
    pub fn with_kernel(weight: &Tensor, bias: &Tensor, kernel: bool) -> Result<Self> {
        let k = match fp32_kernel() {
            Some(isa) if kernel => DenseKernel::Fp32(isa),
            _ => DenseKernel::Portable,
        };
        Self::with_kernel_choice(weight, bias, k)
    }

    /// Builds the layer for `choice`, stepping down (int8 -> fp32 kernel -> candle) where the
    /// shape, dtype or device does not suit the faster one.
    pub fn with_kernel_choice(weight: &Tensor, bias: &Tensor, choice: DenseKernel) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        if bias.dims1()? != out_dim {
            candle_core::bail!("bias has {} entries for {out_dim} outputs", bias.dims1()?);
        }
        let suits_kernels = out_dim % LANES == 0
            && in_dim > 0
            && weight.dtype() == candle_core::DType::F32
            && bias.dtype() == candle_core::DType::F32
            && matches!(weight.device(), Device::Cpu);
        if let (DenseKernel::Int8(isa), true) = (choice, suits_kernels) {
            let w = weight.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.to_vec1::<f32>()?;
            if let Ok(q) = Int8Dense::new(&w, &b, out_dim, in_dim, isa) {
                return Ok(Self {
                    imp: Impl::Int8(q),
                    in_dim,
                    out_dim,
                });
            }
        }
        // int8 steps down to the widest fp32 kernel; an fp32 ISA the CPU lacks to candle.
        let isa = match choice {
            DenseKernel::Portable => None,
            DenseKernel::Fp32(isa) => Some(isa).filter(|isa| isa.available()),
            DenseKernel::Int8(_) => fp32_kernel(),
        };
        let bias = bias.contiguous()?;
        let imp = match isa {
            Some(isa) if suits_kernels && !portable_forced() => Impl::Fp32 {
                weight: match isa {
                    Fp32Isa::Avx512 => pack(&weight.contiguous()?)?,
                    Fp32Isa::Avx2 => pack_strips(&weight.contiguous()?)?,
                },
                bias,
                isa,
            },
            _ => Impl::Candle {
                weight: weight.contiguous()?,
                bias,
            },
        };
        Ok(Self {
            imp,
            in_dim,
            out_dim,
        })
    }

    /// Whether a fused fp32 kernel serves this layer.
    pub fn uses_kernel(&self) -> bool {
        matches!(self.imp, Impl::Fp32 { .. })
    }

    /// What serves this layer.
    pub fn kernel(&self) -> DenseKernel {
        match &self.imp {
            Impl::Candle { .. } => DenseKernel::Portable,
            Impl::Fp32 { isa, .. } => DenseKernel::Fp32(*isa),
            Impl::Int8(q) => DenseKernel::Int8(q.isa()),
        }
    }

    /// `x`: (..., in) -> (..., out). `residual`, when given, has the output's shape and is added
    /// before the activation (BERT adds it before its layer norm, with no activation).
    pub fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims.last().copied().unwrap_or(0);
        if in_dim != self.in_dim {
            candle_core::bail!(
                "dense layer expects {} inputs, got shape {:?}",
                self.in_dim,
                dims
            );
        }
        let rows = x.elem_count() / in_dim;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = self.out_dim;
        if let Some(r) = residual {
            if r.dims() != out_dims.as_slice() {
                candle_core::bail!(
                    "residual shape {:?} differs from the output's {:?}",
                    r.dims(),
                    out_dims
                );
            }
        }
        if !matches!(self.imp, Impl::Candle { .. })
            && (x.dtype() != candle_core::DType::F32 || !matches!(x.device(), Device::Cpu))
        {
            candle_core::bail!(
                "the fused dense kernels take f32 on the CPU, got {:?}",
                x.dtype()
            );
        }
        let y = match &self.imp {
            Impl::Candle { weight, bias } => {
                self.forward_candle(weight, bias, x, rows, residual, act)?
            }
            Impl::Fp32 { weight, bias, isa } => {
                self.forward_kernel(weight, bias, *isa, x, rows, residual, act)?
            }
            Impl::Int8(q) => {
                let x = x.contiguous()?;
                let residual = residual.map(|r| r.contiguous()).transpose()?;
                let y = {
                    let (xs, xl) = x.storage_and_layout();
                    let xs = f32_slice(&xs, xl, rows * self.in_dim)?;
                    let res_guard = residual.as_ref().map(|r| r.storage_and_layout());
                    let res = match &res_guard {
                        Some((s, l)) => Some(f32_slice(s, l, rows * self.out_dim)?),
                        None => None,
                    };
                    q.forward(xs, rows, res, act == Activation::Gelu)
                };
                Tensor::from_vec(y, (rows, self.out_dim), &Device::Cpu)?
            }
        };
        y.reshape(out_dims)
    }

    fn forward_candle(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        x: &Tensor,
        rows: usize,
        residual: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        let x2 = x.reshape((rows, self.in_dim))?;
        // (out, rows), then a transposed view; the bias add writes it back contiguous.
        let mut y = weight.matmul(&x2.t()?)?.t()?.broadcast_add(bias)?;
        if let Some(r) = residual {
            y = (y + r.reshape((rows, self.out_dim))?)?;
        }
        match act {
            Activation::None => Ok(y),
            Activation::Gelu => y.gelu_erf(),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn forward_kernel(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        isa: Fp32Isa,
        x: &Tensor,
        rows: usize,
        residual: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        let x = x.contiguous()?;
        let residual = residual.map(|r| r.contiguous()).transpose()?;
        let n = self.out_dim;
        let mut y: Vec<f32> = Vec::with_capacity(rows * n);
        {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = weight.storage_and_layout();
            let (bs, bl) = bias.storage_and_layout();
            let res_guard = residual.as_ref().map(|r| r.storage_and_layout());
            let res = match &res_guard {
                Some((s, l)) => Some(f32_slice(s, l, rows * n)?.as_ptr()),
                None => None,
            };
            let job = Job {
                x: f32_slice(&xs, xl, rows * self.in_dim)?.as_ptr(),
                w: f32_slice(&ws, wl, self.in_dim * n)?.as_ptr(),
                bias: f32_slice(&bs, bl, n)?.as_ptr(),
                residual: res,
                y: y.as_mut_ptr(),
                rows,
                k: self.in_dim,
                n,
                gelu: act == Activation::Gelu,
            };
            // SAFETY: a kernel is only chosen when the CPU has its ISA (`Fp32Isa::available`);
            // every pointer covers the extent checked by `f32_slice`; the guards keep the inputs
            // alive and unchanged; `y` has room for rows x n and every element is written
            // exactly once.
            unsafe {
                match isa {
                    Fp32Isa::Avx512 => avx512::run(&job),
                    Fp32Isa::Avx2 => avx2::run(&job),
                }
            };
        }
        // SAFETY: all rows x n elements were written by the kernel above.
        unsafe { y.set_len(rows * n) };
        Tensor::from_vec(y, (rows, n), &Device::Cpu)
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[allow(clippy::too_many_arguments)]
    fn forward_kernel(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        _isa: Fp32Isa,
        x: &Tensor,
        rows: usize,
        residual: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        self.forward_candle(weight, bias, x, rows, residual, act)
    }
}

/// The contiguous f32 data behind a tensor, checked to hold exactly `len` elements.
pub(super) fn f32_slice<'a>(s: &'a Storage, l: &Layout, len: usize) -> Result<&'a [f32]> {
    let Storage::Cpu(cpu) = s else {
        candle_core::bail!("this kernel runs on the CPU only")
    };
    let all = cpu.as_slice::<f32>()?;
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("kernel operand not contiguous".into()))?;
    if end - start != len || end > all.len() {
        candle_core::bail!(
            "kernel operand has {} elements, expected {len}",
            end - start
        );
    }
    Ok(&all[start..end])
}

/// f32 lanes in one AVX-512 register.
const LANES: usize = 16;

/// Lays out an `(out, in)` weight as the kernel reads it: for each block of 64 output columns
/// (then each remaining block of 16), the `in x width` panel of Wᵀ, row after row. The kernel
/// then reads one contiguous run per panel; plain Wᵀ would make it jump `out` floats (6-8 KB,
/// a new page each time, past what the hardware prefetchers follow) per input row. Done with
/// candle's strided copy (a reshape, a transpose, one copy per kind of block), which is fast
/// even in unoptimised test builds.
fn pack(weight: &Tensor) -> Result<Tensor> {
    use super::tiling::{NARROW, WIDE};
    let (out_dim, in_dim) = weight.dims2()?;
    let wide = out_dim / WIDE;
    let narrow = (out_dim % WIDE) / NARROW;
    let mut parts = Vec::with_capacity(2);
    if wide > 0 {
        let w = weight
            .narrow(0, 0, wide * WIDE)?
            .reshape((wide, WIDE, in_dim))?;
        parts.push(w.transpose(1, 2)?.contiguous()?.flatten_all()?);
    }
    if narrow > 0 {
        let w = weight
            .narrow(0, wide * WIDE, narrow * NARROW)?
            .reshape((narrow, NARROW, in_dim))?;
        parts.push(w.transpose(1, 2)?.contiguous()?.flatten_all()?);
    }
    Tensor::cat(&parts, 0)
}

/// Lays out an `(out, in)` weight for the AVX2 kernel: for each block of 16 output columns,
/// the `in x 16` panel of Wᵀ, row after row, so a strip's tiles read one sequential stream (in
/// the 64-column panels of `pack` a strip would take one cache line of every four).
fn pack_strips(weight: &Tensor) -> Result<Tensor> {
    use super::tiling::NARROW;
    let (out_dim, in_dim) = weight.dims2()?;
    weight
        .reshape((out_dim / NARROW, NARROW, in_dim))?
        .transpose(1, 2)?
        .contiguous()?
        .flatten_all()
}

/// Overrides the serving precision for the process (tests, and chasing a numeric difference):
/// `int8`, `fp32` or `auto` as in `serving.precision`; `portable` serves fp32 through candle
/// even where AVX-512 is present, ruling both kernels out.
pub const KERNEL_ENV: &str = "INTENTD_DENSE_KERNEL";

/// The fused fp32 kernel this CPU runs, the widest first (None: none, or
/// `INTENTD_DENSE_KERNEL` says `portable`).
pub fn fp32_kernel() -> Option<Fp32Isa> {
    if portable_forced() {
        return None;
    }
    Fp32Isa::detect()
}

/// One dense layer's operands for a fused fp32 kernel.
#[cfg(target_arch = "x86_64")]
struct Job {
    /// rows x k
    x: *const f32,
    /// k x n, packed in column panels (`pack`)
    w: *const f32,
    /// n
    bias: *const f32,
    /// rows x n, added to the bias
    residual: Option<*const f32>,
    /// rows x n, written
    y: *mut f32,
    rows: usize,
    k: usize,
    n: usize,
    gelu: bool,
}

// SAFETY: threads read the shared inputs and write disjoint (row, column) blocks of `y`.
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for Job {}

/// Rows of x per work item, for both fp32 kernels: about 512 KiB of activations, which stay in
/// L2 next to one weight panel (at most 512 KiB) while the item's tiles reuse both.
#[cfg(target_arch = "x86_64")]
const PANEL_FLOATS: usize = 128 * 1024;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Job, LANES, PANEL_FLOATS};
    use crate::model::tiling::{self, Item, TileFn};

    const _: () = assert!(TILE_REGS * LANES == tiling::WIDE);

    /// Output rows per register tile.
    const TILE_ROWS: usize = 6;
    /// Registers per tile row (64 columns); 6 x 4 accumulators + 4 weights + 1 broadcast fit
    /// in the 32 registers.
    const TILE_REGS: usize = 4;
    /// Weight rows fetched ahead of use. The panel is one sequential stream, but at small
    /// batches the kernel waits on it (memory-bound); an explicit prefetch 16 rows ahead took
    /// 15-25 % off batch-1 and batch-32 passes (measured, benches/RESULTS.md).
    const PF_AHEAD: usize = 16;

    /// Splits the output into (row panel x column block) items and runs them on the spin pool
    /// (`tiling`).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and the pointers must cover the sizes in `job`.
    pub unsafe fn run(job: &Job) {
        let panel_rows = tiling::panel_rows(PANEL_FLOATS, job.k, TILE_ROWS);
        tiling::run_items(job.rows, job.n, panel_rows, &|it: Item| {
            // The block's panel in the packed weight (see `pack`).
            let w = job.w.wrapping_add(it.col0 * job.k);
            // SAFETY: forwarded from `run`'s contract.
            unsafe { tiling::tile_item(job, it, w, &WIDE_TILES, &NARROW_TILES) }
        });
    }

    const WIDE_TILES: [TileFn<Job, f32>; TILE_ROWS] = [
        tile1::<TILE_REGS>,
        tile2::<TILE_REGS>,
        tile3::<TILE_REGS>,
        tile4::<TILE_REGS>,
        tile5::<TILE_REGS>,
        tile6::<TILE_REGS>,
    ];
    const NARROW_TILES: [TileFn<Job, f32>; TILE_ROWS] = [
        tile1::<1>, tile2::<1>, tile3::<1>, tile4::<1>, tile5::<1>, tile6::<1>,
    ];

    /// One tile of the output (the listed rows x 16 C columns), accumulated over all of k in
    /// registers. A macro rather than a `[[__m512; C]; R]` array: LLVM kept such an array on
    /// the stack, storing every accumulator back after each FMA; one named `[__m512; C]` per
    /// row stays in registers.
    macro_rules! tile {
        ($name:ident, $($acc:ident $r:literal),+) => {
            #[target_feature(enable = "avx512f")]
            unsafe fn $name<const C: usize>(job: &Job, row0: usize, col0: usize, panel: *const f32) {
                let (k, n) = (job.k, job.n);
                $( let mut $acc = [_mm512_setzero_ps(); C]; )+
                for c in 0..C {
                    let b = _mm512_loadu_ps(job.bias.add(col0 + c * LANES));
                    $(
                        $acc[c] = match job.residual {
                            Some(res) => _mm512_add_ps(b, _mm512_loadu_ps(res.add((row0 + $r) * n + col0 + c * LANES))),
                            None => b,
                        };
                    )+
                }
                let x = job.x.add(row0 * k);
                let mut w = panel;
                for kk in 0..k {
                    // Past the panel's end this touches the next panel or other memory:
                    // prefetches never fault.
                    for c in 0..C {
                        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(C * LANES * PF_AHEAD + c * LANES) as *const i8);
                    }
                    let mut wv = [_mm512_setzero_ps(); C];
                    for (c, wv_c) in wv.iter_mut().enumerate() {
                        *wv_c = _mm512_loadu_ps(w.add(c * LANES));
                    }
                    $(
                        let xb = _mm512_set1_ps(*x.add($r * k + kk));
                        for c in 0..C {
                            $acc[c] = _mm512_fmadd_ps(xb, wv[c], $acc[c]);
                        }
                    )+
                    w = w.add(C * LANES);
                }
                $(
                    for (c, &v) in $acc.iter().enumerate() {
                        let v = if job.gelu { crate::model::fused_ops::gelu_avx512(v) } else { v };
                        _mm512_storeu_ps(job.y.add((row0 + $r) * n + col0 + c * LANES), v);
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

/// The AVX2+FMA kernel: weights in 16-column panels (`pack_strips`), 6 rows x 16 columns per
/// register tile: 12 accumulators + 2 weights + 1 broadcast of the 16 ymm registers, the shape
/// of gemm's own AVX2 micro-kernel. At serving batch sizes it waits on the weights (memory
/// bound, as the AVX-512 kernel at small batches), so each panel is one sequential stream
/// prefetched ahead.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Job, PANEL_FLOATS};
    use crate::model::tiling::{self, Item, NARROW};

    /// Output rows per register tile.
    const TILE_ROWS: usize = 6;
    /// Columns per tile and per packed panel: two 8-lane registers.
    const STRIP: usize = NARROW;
    /// Weight rows (one 64-byte line each) fetched ahead of use.
    const PF_AHEAD: usize = 16;

    /// Splits the output into (row panel x 16-column block) items and runs them on the spin
    /// pool (`tiling`).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA and the pointers must cover the sizes in `job`.
    pub unsafe fn run(job: &Job) {
        let panel_rows = tiling::panel_rows(PANEL_FLOATS, job.k, TILE_ROWS);
        let blocks: Vec<(usize, usize)> = (0..job.n / STRIP).map(|b| (b * STRIP, STRIP)).collect();
        tiling::run_blocks(job.rows, &blocks, panel_rows, &|it: Item| {
            // The block's panel in the packed weight (see `pack_strips`): k rows of 16 floats.
            let w = job.w.wrapping_add(it.col0 * job.k);
            tiling::row_tiles(it.row0, it.rows, TILE_ROWS, |r, h| {
                // SAFETY: forwarded from `run`'s contract; the tile stays inside the item.
                unsafe { TILES[h - 1](job, r, it.col0, w) }
            });
        });
    }

    type StripFn = unsafe fn(&Job, usize, usize, *const f32);
    const TILES: [StripFn; TILE_ROWS] = [tile1, tile2, tile3, tile4, tile5, tile6];

    /// One tile: the listed rows x 16 columns from `col`, accumulated over all of k in
    /// registers (named per row, as in the AVX-512 kernel, so LLVM keeps them there); `w` is
    /// the block's packed panel.
    macro_rules! tile {
        ($name:ident, $($acc:ident $r:literal),+) => {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $name(job: &Job, row0: usize, col: usize, w: *const f32) {
                let (k, n) = (job.k, job.n);
                let b0 = _mm256_loadu_ps(job.bias.add(col));
                let b1 = _mm256_loadu_ps(job.bias.add(col + 8));
                $(
                    let mut $acc = match job.residual {
                        Some(res) => {
                            let r = res.add((row0 + $r) * n + col);
                            [_mm256_add_ps(b0, _mm256_loadu_ps(r)), _mm256_add_ps(b1, _mm256_loadu_ps(r.add(8)))]
                        }
                        None => [b0, b1],
                    };
                )+
                let x = job.x.add(row0 * k);
                let mut wp = w;
                for kk in 0..k {
                    // Past the panel's end this touches the next panel or other memory:
                    // prefetches never fault.
                    _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(STRIP * PF_AHEAD) as *const i8);
                    let w0 = _mm256_loadu_ps(wp);
                    let w1 = _mm256_loadu_ps(wp.add(8));
                    $(
                        let xb = _mm256_broadcast_ss(&*x.add($r * k + kk));
                        $acc[0] = _mm256_fmadd_ps(xb, w0, $acc[0]);
                        $acc[1] = _mm256_fmadd_ps(xb, w1, $acc[1]);
                    )+
                    wp = wp.add(STRIP);
                }
                $(
                    for (h, &v) in $acc.iter().enumerate() {
                        let v = if job.gelu { crate::model::fused_ops::gelu_avx2(v) } else { v };
                        _mm256_storeu_ps(job.y.add((row0 + $r) * n + col + 8 * h), v);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The textbook definition, in f64.
    fn reference(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: Option<&Tensor>,
        act: Activation,
    ) -> Vec<f64> {
        let x = x.to_vec2::<f32>().unwrap();
        let w = w.to_vec2::<f32>().unwrap();
        let b = b.to_vec1::<f32>().unwrap();
        let res = res.map(|r| r.to_vec2::<f32>().unwrap());
        let mut out = Vec::new();
        for (i, row) in x.iter().enumerate() {
            for (o, wrow) in w.iter().enumerate() {
                let mut s = b[o] as f64
                    + row
                        .iter()
                        .zip(wrow)
                        .map(|(a, c)| *a as f64 * *c as f64)
                        .sum::<f64>();
                if let Some(r) = &res {
                    s += r[i][o] as f64;
                }
                if act == Activation::Gelu {
                    s = 0.5 * s * (1.0 + statrs::function::erf::erf(s / std::f64::consts::SQRT_2));
                }
                out.push(s);
            }
        }
        out
    }

    fn max_diff(a: &Tensor, b: &[f64]) -> f64 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - y).abs())
            .fold(0.0, f64::max)
    }

    /// Every fp32 kernel this CPU runs, and candle; says so (in the test output) for those it
    /// lacks.
    fn fp32_choices() -> Vec<DenseKernel> {
        let mut v = Vec::new();
        for isa in [Fp32Isa::Avx512, Fp32Isa::Avx2] {
            if isa.available() && !portable_forced() {
                v.push(DenseKernel::Fp32(isa));
            } else {
                eprintln!("dense: no {} here: its kernel is NOT tested", isa.name());
            }
        }
        v.push(DenseKernel::Portable);
        v
    }

    #[test]
    fn every_path_matches_the_definition_for_every_tile_shape() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let choices = fp32_choices();
        // Rows cover full 6-row tiles, each remainder, and several panels (k = 700 makes a
        // panel 42 rows); columns cover 64-wide blocks, 16-wide tails, and a width the kernel
        // refuses (40).
        for &(rows, k, n) in &[
            (1, 8, 16),
            (5, 33, 64),
            (7, 64, 80),
            (13, 16, 208),
            (100, 700, 48),
            (3, 12, 40),
        ] {
            let x = random(&mut rng, &[rows, k]);
            let w = random(&mut rng, &[n, k]);
            let b = random(&mut rng, &[n]);
            let res = random(&mut rng, &[rows, n]);
            for &choice in &choices {
                let d = ServingDense::with_kernel_choice(&w, &b, choice).unwrap();
                let kernel = choice != DenseKernel::Portable;
                if kernel && n % 16 == 0 {
                    assert_eq!(d.kernel(), choice);
                }
                for (r, act) in [
                    (None, Activation::None),
                    (Some(&res), Activation::None),
                    (None, Activation::Gelu),
                ] {
                    let y = d.forward(&x, r, act).unwrap();
                    assert_eq!(y.dims(), &[rows, n]);
                    let diff = max_diff(&y, &reference(&x, &w, &b, r, act));
                    // f32 sums of k products of numbers up to 4 in size.
                    assert!(
                        diff < 2e-5 * k as f64,
                        "rows {rows} k {k} n {n} {choice:?} {act:?}: {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn leading_dimensions_are_kept_and_bad_shapes_are_errors() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let w = random(&mut rng, &[32, 8]);
        let b = random(&mut rng, &[32]);
        let d = ServingDense::new(&w, &b).unwrap();
        let x = random(&mut rng, &[2, 3, 8]);
        assert_eq!(
            d.forward(&x, None, Activation::None).unwrap().dims(),
            &[2, 3, 32]
        );
        let err = d
            .forward(&random(&mut rng, &[2, 7]), None, Activation::None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expects 8 inputs"), "{err}");
        let err = d
            .forward(&x, Some(&random(&mut rng, &[6, 32])), Activation::None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("residual shape"), "{err}");
        assert!(ServingDense::new(&w, &random(&mut rng, &[31])).is_err());
    }

    #[test]
    fn a_non_contiguous_input_gives_the_same_answer() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let w = random(&mut rng, &[64, 16]);
        let b = random(&mut rng, &[64]);
        let d = ServingDense::new(&w, &b).unwrap();
        let xt = random(&mut rng, &[16, 5]);
        let x = xt.t().unwrap();
        assert!(!x.is_contiguous());
        let y = d.forward(&x, None, Activation::Gelu).unwrap();
        let expected = reference(&x.contiguous().unwrap(), &w, &b, None, Activation::Gelu);
        assert!(max_diff(&y, &expected) < 1e-4);
    }

    #[test]
    fn int8_precision_serves_through_the_int8_kernel_where_the_cpu_has_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let (rows, k, n) = (9, 100, 80);
        let x = random(&mut rng, &[rows, k]);
        let w = random(&mut rng, &[n, k]);
        let b = random(&mut rng, &[n]);
        let d = ServingDense::with_precision(&w, &b, Precision::Int8).unwrap();
        match int8::detect() {
            Some(isa) if !portable_forced() => assert_eq!(d.kernel(), DenseKernel::Int8(isa)),
            _ => {
                eprintln!(
                    "int8 NOT available here (no VNNI, or {KERNEL_ENV}=portable): {} serves",
                    d.kernel().describe()
                );
                assert!(!d.kernel().is_int8());
            }
        }
        let y = d.forward(&x, None, Activation::Gelu).unwrap();
        let want = reference(&x, &w, &b, None, Activation::Gelu);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        // 8-bit weights and activations: about 1 % of the output's range.
        assert!(
            max_diff(&y, &want) < 0.02 * scale,
            "{}",
            max_diff(&y, &want)
        );
        // A width the kernels cannot take steps down to fp32 instead of failing.
        let w40 = random(&mut rng, &[40, k]);
        let b40 = random(&mut rng, &[40]);
        let d = ServingDense::with_precision(&w40, &b40, Precision::Int8).unwrap();
        assert_eq!(d.kernel(), DenseKernel::Portable);
        assert!(
            max_diff(
                &d.forward(&x, None, Activation::None).unwrap(),
                &reference(&x, &w40, &b40, None, Activation::None)
            ) < 1e-3
        );
    }

    #[test]
    fn precisions_parse_and_bad_ones_are_named() {
        assert_eq!("INT8".parse::<Precision>().unwrap(), Precision::Int8);
        assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::Fp32);
        assert_eq!("auto".parse::<Precision>().unwrap(), Precision::Auto);
        let e = "int4".parse::<Precision>().unwrap_err();
        assert!(e.contains("int4") && e.contains("fp32"), "{e}");
        assert!(!kernel_for(Precision::Fp32).is_int8());
    }
}
