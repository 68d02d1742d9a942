//! Training batches and the training objective: next-token cross-entropy plus the
//! router z-loss.

use burn::tensor::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::ModelError;
use crate::model::{FlexOlmo, Trace};

/// Settings shared by anchor pretraining and expert training.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Optimiser steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Decoupled weight decay on matrices.
    pub weight_decay: f64,
    /// Seed of batch sampling (and of initialisation where there is one).
    pub seed: u64,
    /// Weight of the router z-loss.
    pub z_loss_weight: f64,
    /// Evaluate on held-out text every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Held-out tokens scored per evaluation (a prefix of the held-out stream).
    pub eval_tokens: usize,
    /// Expert training: weight of the router calibration term (see [`crate::router`]).
    pub router_calibration_weight: f64,
    /// Expert training: L2 regulariser of the calibrated router offset.
    pub router_l2: f64,
    /// Expert training: tokens of own and of public text sampled for the initial fit.
    pub calibration_tokens: usize,
    /// Expert training: required margin of the public expert's router logit over
    /// the contributor's on public text (0: plain logistic calibration).
    pub router_margin: f64,
    /// Expert training: learning-rate multiplier of the router row `r_i`
    /// (0 keeps the calibrated initial row).
    pub router_lr_scale: f64,
    /// Expert training: weight of a language-modelling loss on the public
    /// calibration text, through the two-expert model (0: the contributor's
    /// text only, as in FlexOlmo). Teaches the expert not to harm public text;
    /// used only when a public calibration sample is given.
    pub public_loss_weight: f64,
    /// Expert training: weight of a term that keeps the expert's FFN output
    /// close to the public FFN's on the public calibration text, layer by layer
    /// ([`crate::model::Trace::expert_gaps`]), so that public tokens a merged
    /// router sends to this expert are treated more as the anchor treats them
    /// (0: off, as in FlexOlmo). Used only when a public calibration sample
    /// is given.
    pub public_match_weight: f64,
    /// Expert training: 0 fits the initial router offset by logistic regression
    /// against public text; a positive value sets it instead to this multiple of
    /// the Gaussian log-density-ratio row with the public covariance
    /// ([`crate::router::fit_gaussian_offsets`]).
    pub router_gaussian_scale: f64,
}

impl TrainOptions {
    /// The defaults, as a constant so that command-line flags can name them.
    pub const DEFAULT: Self = Self {
        steps: 200,
        batch_size: 8,
        seq_len: 256,
        lr: 2e-3,
        warmup: 20,
        weight_decay: 0.0,
        seed: 0,
        z_loss_weight: 1e-3,
        eval_every: 0,
        eval_tokens: 32_768,
        router_calibration_weight: 1.0,
        router_l2: 1e-2,
        calibration_tokens: 16_384,
        router_margin: 0.0,
        router_lr_scale: 1.0,
        public_loss_weight: 1.0,
        public_match_weight: 4.0,
        router_gaussian_scale: 0.0,
    };
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a training loop reports after each step.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// Steps done (1-based).
    pub step: u64,
    /// Steps in the run.
    pub total: u64,
    /// Training loss of this step (cross-entropy, nats/token).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training tokens per second over this step.
    pub tokens_per_s: f64,
    /// Held-out loss, on steps that evaluated.
    pub eval_loss: Option<f64>,
}

/// Fails unless `stream` holds one training window: `seq_len` tokens and the next.
pub fn check_one_window(stream: &[u32], seq_len: usize) -> Result<(), ModelError> {
    if stream.len() <= seq_len {
        return Err(ModelError::Argument(format!(
            "the training text has {} tokens; at least seq_len + 1 = {} are needed",
            stream.len(),
            seq_len + 1
        )));
    }
    Ok(())
}

/// Draws `batch` windows of `seq_len + 1` tokens for `step`; the draw depends only
/// on `(seed, step)`, so a resumed run sees the same batches.
pub fn sample_batch(
    stream: &[u32],
    seq_len: usize,
    batch: usize,
    seed: u64,
    step: u64,
) -> Result<Vec<u32>, ModelError> {
    check_one_window(stream, seq_len)?;
    let mut rng = StdRng::seed_from_u64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = Vec::with_capacity(batch * (seq_len + 1));
    for _ in 0..batch {
        let start = rng.random_range(0..=stream.len() - seq_len - 1);
        out.extend_from_slice(&stream[start..start + seq_len + 1]);
    }
    Ok(out)
}

/// Splits `batch` windows of `seq + 1` tokens into inputs and next-token targets.
pub fn inputs_and_targets(windows: &[u32], batch: usize) -> (Vec<u32>, Vec<u32>) {
    let w = windows.len() / batch;
    let mut inputs = Vec::with_capacity(batch * (w - 1));
    let mut targets = Vec::with_capacity(batch * (w - 1));
    for row in windows.chunks(w) {
        inputs.extend_from_slice(&row[..w - 1]);
        targets.extend_from_slice(&row[1..]);
    }
    (inputs, targets)
}

/// Mean next-token cross-entropy of `model` on `batch` windows, and the summed
/// router z-loss (mean over tokens of `logsumexp(router logits)²`, summed over layers).
pub fn lm_loss(
    model: &FlexOlmo,
    windows: &[u32],
    batch: usize,
    want_z: bool,
) -> Result<(Tensor<1>, Option<Tensor<1>>), ModelError> {
    let mut trace = Trace {
        keep_router_logits: want_z,
        ..Trace::default()
    };
    let ce = lm_loss_traced(model, windows, batch, &mut trace)?;
    let z = if want_z {
        z_loss(std::mem::take(&mut trace.router_logits))
    } else {
        None
    };
    Ok((ce, z))
}

/// Mean next-token cross-entropy of `model` on `batch` windows, recording into `trace`.
pub fn lm_loss_traced(
    model: &FlexOlmo,
    windows: &[u32],
    batch: usize,
    trace: &mut Trace,
) -> Result<Tensor<1>, ModelError> {
    // A window's last token is only a target, so the forward pass never sees it.
    model.check_tokens(windows)?;
    let (inputs, targets) = inputs_and_targets(windows, batch);
    let hidden = model.hidden(&inputs, batch, trace)?;
    Ok(crate::fused::linear_cross_entropy(
        hidden,
        &model.lm_head,
        &targets,
    ))
}

/// The router z-loss of recorded router logits: mean over tokens of
/// `logsumexp(logits)²`, summed over layers; `None` without logits.
pub fn z_loss(router_logits: Vec<Tensor<2>>) -> Option<Tensor<1>> {
    let mut acc: Option<Tensor<1>> = None;
    for logits in router_logits {
        let max = logits.clone().max_dim(1).detach();
        let lse = (logits - max.clone()).exp().sum_dim(1).log() + max;
        let term = lse.square().mean();
        acc = Some(match acc {
            Some(a) => a + term,
            None => term,
        });
    }
    acc
}

/// Mean next-token loss (nats/token) on up to `max_tokens` of `stream`, without gradients.
pub fn heldout_loss(
    model: &FlexOlmo,
    stream: &[u32],
    seq_len: usize,
    batch: usize,
    max_tokens: usize,
) -> Result<f64, ModelError> {
    let stream = &stream[..stream.len().min(max_tokens.max(seq_len + 1))];
    let report = crate::eval::evaluate(model, stream, seq_len, batch, &mut |_, _| {})?;
    Ok(report.nll)
}
