//! Seedable randomness for training. candle's CPU random numbers come from an unseeded
//! thread RNG (`Device::set_seed` is not supported on CPU), so dropout masks and the head's
//! initial weights are drawn here instead, from a ChaCha8 stream seeded by `--seed`: the same
//! seed, data and code give the same model.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

thread_local! {
    static RNG: RefCell<ChaCha8Rng> = RefCell::new(ChaCha8Rng::seed_from_u64(0));
}

/// Restarts this thread's stream (training runs on one thread).
pub fn seed(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = ChaCha8Rng::seed_from_u64(seed));
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by 1/(1-p).
///
/// One custom op holding its mask: forward and backward are one pass each (x * mask,
/// dy * mask). Written as `x * mask` with candle's ops, the backward pass would also compute
/// the gradient of the mask (dy * x, a full-size product nobody reads) for every dropout.
pub fn dropout(x: &Tensor, p: f32) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    let n = x.elem_count();
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = RNG.with(|r| {
        let mut r = r.borrow_mut();
        (0..n)
            .map(|_| if r.random::<f32>() < p { 0.0 } else { scale })
            .collect()
    });
    if x.dtype() != DType::F32 {
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        return x.mul(&mask);
    }
    x.contiguous()?.apply_op1(Dropout { mask })
}

struct Dropout {
    /// 0 or 1/(1-p) per element.
    mask: Vec<f32>,
}

impl Dropout {
    fn apply(&self, s: &CpuStorage, l: &Layout) -> Result<CpuStorage> {
        let x = super::fused_ops::f32_slice(s, l, "dropout")?;
        if x.len() != self.mask.len() {
            candle_core::bail!(
                "dropout: {} elements for a mask of {}",
                x.len(),
                self.mask.len()
            );
        }
        Ok(CpuStorage::F32(
            x.iter().zip(self.mask.iter()).map(|(x, m)| x * m).collect(),
        ))
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "seeded-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((self.apply(s, l)?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // dy * mask: the same op, not recorded for backprop.
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// Normal(0, std) values of the given shape (for initial weights).
pub fn normal(shape: &[usize], std: f32, device: &candle_core::Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = RNG.with(|r| {
        let mut r = r.borrow_mut();
        (0..n)
            .map(|_| {
                // Box-Muller from two uniforms in (0, 1].
                let u1: f32 = 1.0 - r.random::<f32>();
                let u2: f32 = r.random::<f32>();
                std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect()
    });
    Tensor::from_vec(values, shape, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn same_seed_same_mask_and_expected_rate() {
        let x = Tensor::ones(10_000, candle_core::DType::F32, &Device::Cpu).unwrap();
        seed(7);
        let a = dropout(&x, 0.1).unwrap().to_vec1::<f32>().unwrap();
        seed(7);
        let b = dropout(&x, 0.1).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        let zeros = a.iter().filter(|v| **v == 0.0).count();
        assert!((800..1200).contains(&zeros), "{zeros}");
        // Kept values are scaled so the expectation is unchanged.
        assert!(a.iter().all(|v| *v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
    }

    #[test]
    fn dropout_gradient_is_the_mask() {
        let dev = Device::Cpu;
        let x =
            candle_core::Var::from_tensor(&Tensor::arange(1f32, 2001.0, &dev).unwrap()).unwrap();
        seed(3);
        let y = dropout(x.as_tensor(), 0.3).unwrap();
        let grads = (&y * 2.0).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let (xs, ys) = (
            x.as_tensor().to_vec1::<f32>().unwrap(),
            y.to_vec1::<f32>().unwrap(),
        );
        let mut dropped = 0;
        for ((x, y), g) in xs.iter().zip(&ys).zip(&g) {
            if *y == 0.0 {
                dropped += 1;
                assert_eq!(*g, 0.0);
            } else {
                // Kept: y = x / 0.7 and dy/dx = 2 / 0.7.
                assert!((y - x / 0.7).abs() < 1e-3 * x, "{x} -> {y}");
                assert!((g - 2.0 / 0.7).abs() < 1e-5, "{g}");
            }
        }
        assert!((500..700).contains(&dropped), "{dropped}");
        // The same seed gives the same mask through the op as through the plain product.
        seed(3);
        let again = dropout(x.as_tensor(), 0.3)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(again, ys);
    }

    #[test]
    fn normal_has_the_requested_spread() {
        seed(1);
        let t = normal(&[20_000], 0.02, &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mean = t.iter().sum::<f32>() / t.len() as f32;
        let var = t.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / t.len() as f32;
        assert!(
            mean.abs() < 0.001 && (var.sqrt() - 0.02).abs() < 0.001,
            "{mean} {var}"
        );
    }
}
