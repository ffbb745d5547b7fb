//! Weight averaging for fine-tuning: a running average of the trainable weights, served instead
//! of the last weights. Two schedules share the code:
//! - EMA: updated after every optimiser step, `avg += (1 - decay) (w - avg)`, with the decay
//!   ramped up over the first steps (`(1 + n) / (10 + n)`) so the early, pretrained-plus-noise
//!   weights do not linger;
//! - uniform (SWA-style): updated once per epoch, `avg += (w - avg) / (n + 1)`, the mean of
//!   the snapshots given.
//!
//! Why: the last weights of a short fine-tune sit at one point of a noisy trajectory; the
//! average of nearby points lies in a flatter region and usually generalises a little better.

use anyhow::Result;
use candle_core::{Tensor, Var};

pub struct WeightAverage {
    /// `None`: uniform mean of the updates; `Some(d)`: exponential moving average.
    decay: Option<f64>,
    updates: usize,
    slots: Vec<(Var, Vec<f32>)>,
}

impl WeightAverage {
    /// Starts empty (no update yet): the average is defined by the first update.
    pub fn new(vars: &[Var], decay: Option<f64>) -> Self {
        Self {
            decay,
            updates: 0,
            slots: vars.iter().map(|v| (v.clone(), Vec::new())).collect(),
        }
    }

    pub fn updates(&self) -> usize {
        self.updates
    }

    /// Folds the variables' current values into the average.
    pub fn update(&mut self) -> Result<()> {
        let n = self.updates as f64;
        // Weight of the new value: 1 for the first update in both schedules.
        let w = match self.decay {
            None => 1.0 / (n + 1.0),
            Some(d) => 1.0 - d.min((1.0 + n) / (10.0 + n)),
        } as f32;
        for (var, avg) in &mut self.slots {
            let now = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            if avg.is_empty() {
                *avg = now;
                continue;
            }
            for (a, x) in avg.iter_mut().zip(&now) {
                *a += w * (x - *a);
            }
        }
        self.updates += 1;
        Ok(())
    }

    /// Writes the average into the variables and returns their values before, for
    /// [`WeightAverage::restore`] (evaluate the average, then go on training the live weights).
    /// Nothing to do before the first update.
    pub fn swap_in(&self) -> Result<Vec<Tensor>> {
        let mut live = Vec::with_capacity(self.slots.len());
        if self.updates == 0 {
            return Ok(live);
        }
        for (var, avg) in &self.slots {
            live.push(var.as_tensor().copy()?);
            var.set(&Tensor::from_slice(avg, var.shape(), var.device())?)?;
        }
        Ok(live)
    }

    /// Puts back the values `swap_in` returned.
    pub fn restore(&self, live: Vec<Tensor>) -> Result<()> {
        for ((var, _), t) in self.slots.iter().zip(live) {
            var.set(&t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(values: &[f32]) -> Var {
        Var::new(values, &Device::Cpu).unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn uniform_average_is_the_mean_of_the_snapshots() {
        let v = var(&[1.0, -2.0]);
        let mut avg = WeightAverage::new(std::slice::from_ref(&v), None);
        for snapshot in [[1f32, -2.0], [3.0, 0.0], [8.0, 5.0]] {
            v.set(&Tensor::new(&snapshot, &Device::Cpu).unwrap())
                .unwrap();
            avg.update().unwrap();
        }
        let live = avg.swap_in().unwrap();
        let got = values(&v);
        assert!(
            (got[0] - 4.0).abs() < 1e-6 && (got[1] - 1.0).abs() < 1e-6,
            "{got:?}"
        );
        avg.restore(live).unwrap();
        assert_eq!(values(&v), vec![8.0, 5.0]);
    }

    #[test]
    fn ema_ramps_up_its_decay_then_follows_slowly() {
        let v = var(&[0.0]);
        let mut avg = WeightAverage::new(std::slice::from_ref(&v), Some(0.99));
        avg.update().unwrap(); // avg = 0
        v.set(&Tensor::new(&[10f32], &Device::Cpu).unwrap())
            .unwrap();
        avg.update().unwrap(); // n = 1: decay min(0.99, 2/11): avg = 10 * 9/11
        let live = avg.swap_in().unwrap();
        assert!((values(&v)[0] - 90.0 / 11.0).abs() < 1e-4);
        avg.restore(live).unwrap();
        // Long after the ramp the decay is the given one.
        for _ in 0..2000 {
            avg.update().unwrap();
        }
        v.set(&Tensor::new(&[20f32], &Device::Cpu).unwrap())
            .unwrap();
        avg.update().unwrap();
        avg.swap_in().unwrap();
        assert!((values(&v)[0] - (10.0 + 0.01 * 10.0)).abs() < 1e-3);
    }

    #[test]
    fn swap_in_before_any_update_changes_nothing() {
        let v = var(&[1.0]);
        let avg = WeightAverage::new(std::slice::from_ref(&v), None);
        let live = avg.swap_in().unwrap();
        assert!(live.is_empty());
        assert_eq!(values(&v), vec![1.0]);
    }
}
