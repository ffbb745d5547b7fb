//! Seedable randomness for training. candle's CPU random numbers come from an unseeded
//! thread RNG (`Device::set_seed` is not supported on CPU), so dropout masks and the head's
//! initial weights are drawn here instead, from a ChaCha8 stream seeded by `--seed`: the same
//! seed, data and code give the same model.

use std::cell::RefCell;

use candle_core::{Result, Tensor};
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
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
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
