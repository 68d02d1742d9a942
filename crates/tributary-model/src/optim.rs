//! AdamW over a flat list of trainable tensors, with global-norm clipping and a
//! warm-up + cosine learning-rate schedule.
//!
//! Parameters are autodiff leaves; the optimiser reads their gradients, updates
//! plain (non-autodiff) copies and hands back fresh leaves, so nothing of the
//! previous step's graph survives the update.

use burn::tensor::{Device, Tensor};

use crate::error::ModelError;

/// Hyper-parameters of AdamW.
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay, applied to parameters flagged for it.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0 disables).
    pub grad_clip: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
        }
    }
}

/// Learning rate at `step` (0-based) of `total`: linear warm-up, then cosine decay to 10 %.
pub fn schedule(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// One trainable tensor and its optimiser state.
#[derive(Clone, Debug)]
pub struct Param {
    /// The current value, an autodiff leaf that requires gradients.
    pub value: Tensor<2>,
    /// Whether weight decay applies.
    pub decay: bool,
    /// Multiplier of the learning rate for this parameter (0 freezes it).
    pub lr_scale: f64,
    m: Tensor<2>,
    v: Tensor<2>,
}

impl Param {
    /// A new trainable parameter on the (autodiff) `device`.
    pub fn new(value: Tensor<2>, decay: bool, device: &Device) -> Self {
        let dims = value.dims();
        let plain = value.detach().inner();
        Self {
            value: plain.autodiff().require_grad(),
            decay,
            lr_scale: 1.0,
            m: Tensor::zeros(dims, device).inner(),
            v: Tensor::zeros(dims, device).inner(),
        }
    }

    /// The same parameter with its learning rate multiplied by `scale`.
    pub fn with_lr_scale(mut self, scale: f64) -> Self {
        self.lr_scale = scale;
        self
    }

    /// First and second moments, for checkpointing.
    pub fn moments(&self) -> (Tensor<2>, Tensor<2>) {
        (self.m.clone(), self.v.clone())
    }

    /// Restores moments saved by [`Param::moments`].
    pub fn set_moments(&mut self, m: Tensor<2>, v: Tensor<2>) {
        self.m = m.inner();
        self.v = v.inner();
    }
}

/// AdamW state over a list of parameters.
#[derive(Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Steps taken.
    pub t: u64,
}

impl AdamW {
    /// A fresh optimiser.
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, t: 0 }
    }

    /// Applies one update with learning rate `lr` from the gradients in `grads`;
    /// returns the global gradient norm before clipping.
    pub fn step(
        &mut self,
        params: &mut [Param],
        grads: &burn::tensor::Gradients,
        lr: f64,
    ) -> Result<f64, ModelError> {
        let c = self.config;
        let mut gs = Vec::with_capacity(params.len());
        let mut sq = 0f64;
        for p in params.iter() {
            let g = p
                .value
                .grad(grads)
                .unwrap_or_else(|| p.value.clone().inner().zeros_like());
            sq += f64::from(g.clone().square().sum().into_scalar::<f32>());
            gs.push(g);
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(ModelError::Diverged(format!("gradient norm is {norm}")));
        }
        let scale = if c.grad_clip > 0.0 && norm > c.grad_clip {
            c.grad_clip / norm
        } else {
            1.0
        };
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (p, g) in params.iter_mut().zip(gs) {
            if p.lr_scale == 0.0 {
                continue;
            }
            let lr = lr * p.lr_scale;
            let g = g.mul_scalar(scale);
            p.m = p.m.clone().mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
            p.v = p.v.clone().mul_scalar(c.beta2) + g.square().mul_scalar(1.0 - c.beta2);
            let update =
                p.m.clone().div_scalar(bc1) / p.v.clone().div_scalar(bc2).sqrt().add_scalar(c.eps);
            let mut w = p.value.clone().detach().inner();
            if p.decay && c.weight_decay > 0.0 {
                w = w.mul_scalar(1.0 - lr * c.weight_decay);
            }
            w = w - update.mul_scalar(lr);
            p.value = w.autodiff().require_grad();
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_a_tenth() {
        assert!((schedule(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((schedule(1.0, 9, 10, 100) - 1.0).abs() < 1e-12);
        assert!((schedule(1.0, 10, 10, 100) - 1.0).abs() < 1e-12);
        assert!((schedule(1.0, 100, 10, 100) - 0.1).abs() < 1e-12);
        assert!(schedule(1.0, 55, 10, 100) < 1.0);
    }

    #[test]
    fn adamw_minimises_a_quadratic() {
        let device = Device::flex().autodiff();
        let target = Tensor::<2>::from_floats([[1.0, -2.0, 3.0]], &device).inner();
        let mut params = vec![Param::new(Tensor::zeros([1, 3], &device), false, &device)];
        let mut opt = AdamW::new(AdamWConfig {
            lr: 0.1,
            ..AdamWConfig::default()
        });
        for _ in 0..300 {
            let loss = (params[0].value.clone() - target.clone().autodiff())
                .square()
                .sum();
            let grads = loss.backward();
            opt.step(&mut params, &grads, 0.05).unwrap();
        }
        let got = params[0]
            .value
            .clone()
            .inner()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        for (g, t) in got.iter().zip([1.0, -2.0, 3.0]) {
            assert!((g - t).abs() < 0.05, "{got:?}");
        }
    }
}
