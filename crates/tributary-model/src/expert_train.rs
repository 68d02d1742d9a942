//! Training an expert against a frozen anchor (FlexOlmo §3.3, "training experts
//! to coordinate").
//!
//! The contributor's model has two experts per layer: the anchor's public FFN
//! (frozen) and its own FFN (trainable, initialised as a copy of the public one),
//! routed by `[r_pub (frozen), r_i (trainable)]` with both experts always active.
//! A learned scalar `b_i` per layer is added as `min(b_i, 0)` to the own expert's
//! router logit during training and dropped at merge. Only the own FFN, `r_i`
//! and `b_i` receive updates: embeddings, attention, norms and the LM head are
//! the anchor's tensors, never written.
//!
//! Router initialisation is domain-informed. With a public calibration sample
//! (the normal case, see [`crate::router`]), `r_i = r_pub + w` where `w` is
//! fitted to separate the anchor's router inputs on the contributor's text from
//! those on public text, and that separation stays a term of the objective.
//! Without one, `r_i` starts as the mean router input of the anchor over the
//! contributor's data, which trains a good 2-expert model but a row that is not
//! comparable with other contributors' rows after merging.

use std::time::Instant;

use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::checkpoint::Checkpoint;
use crate::error::ModelError;
use crate::expert::{ExpertPackage, TrainingMetadata, TrainingRecipe};
use crate::model::{Ffn, FlexOlmo, Trace, to_host, to_host_transposed};
use crate::names;
use crate::objective::{
    StepInfo, TrainOptions, heldout_loss, inputs_and_targets, lm_loss_traced, sample_batch, z_loss,
};
use crate::optim::{AdamW, AdamWConfig, Param, schedule};
use crate::router::{
    CalibrationSet, fit_gaussian_offsets, fit_offsets, positive_share, router_features,
};
use crate::weights::{HostTensor, TensorMap};

/// Mixed into the seed of the public-text batches, so they are sampled apart
/// from the contributor's.
const PUBLIC_SEED: u64 = 0x7075_626c_6963;

/// Mean router input of every layer of `model` over up to `max_tokens` of `stream`.
pub fn mean_router_inputs(
    model: &FlexOlmo,
    stream: &[u32],
    seq_len: usize,
    max_tokens: usize,
) -> Result<Vec<Vec<f32>>, ModelError> {
    let take = stream.len().min(max_tokens);
    let rows = take / seq_len;
    if rows == 0 {
        return Err(ModelError::Argument(format!(
            "need at least {seq_len} tokens to initialise the router, got {take}"
        )));
    }
    let mut trace = Trace {
        router_input_sums: Some(Vec::new()),
        ..Trace::default()
    };
    for chunk in stream[..rows * seq_len].chunks(seq_len * 8) {
        let b = chunk.len() / seq_len;
        model.hidden(chunk, b, &mut trace)?;
    }
    let n = (rows * seq_len) as f64;
    Ok(trace
        .router_input_sums
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.into_iter().map(|v| (v / n) as f32).collect())
        .collect())
}

struct ExpertParams {
    /// Per layer: own gate_up, own down, r_i `[hidden, 1]`, b_i `[1, 1]`.
    params: Vec<Param>,
}

impl ExpertParams {
    fn layer(&self, l: usize) -> [&Param; 4] {
        let p = &self.params[4 * l..4 * l + 4];
        [&p[0], &p[1], &p[2], &p[3]]
    }
}

/// Builds the 2-expert training model from the frozen anchor and the current parameters.
fn two_expert_model(base: &FlexOlmo, ps: &ExpertParams, detach: bool) -> FlexOlmo {
    let mut model = base.clone();
    let device = base.device();
    let v = |p: &Param| {
        if detach {
            p.value.clone().detach()
        } else {
            p.value.clone()
        }
    };
    for (l, layer) in model.layers.iter_mut().enumerate() {
        let [gu, down, r, b] = ps.layer(l);
        let public = layer.experts[0].clone();
        layer.experts = vec![
            public,
            Ffn {
                gate_up: v(gu),
                down: v(down),
            },
        ];
        layer.router = Tensor::cat(vec![layer.router.clone(), v(r)], 1);
        let b = v(b);
        let neg = (b.clone() - relu(b)).reshape([1]);
        layer.router_bias = Some(Tensor::cat(vec![Tensor::zeros([1], &device), neg], 0));
    }
    model.config.num_experts = 2;
    model.config.num_experts_per_tok = 2;
    model.top_k = 2;
    model
}

/// Trains an expert for `anchor` on `train` tokens; `heldout` tokens, when given,
/// are scored by the anchor and by the final 2-expert model; `public` tokens,
/// when given, calibrate the router row against public text.
#[allow(clippy::too_many_arguments)]
pub fn train_expert(
    anchor: &Checkpoint,
    anchor_digest: &str,
    train: &[u32],
    heldout: Option<&[u32]>,
    public: Option<&[u32]>,
    opts: &TrainOptions,
    device: &Device,
    progress: &mut dyn FnMut(&StepInfo),
) -> Result<ExpertPackage, ModelError> {
    if anchor.config.num_experts != 1 {
        return Err(ModelError::Argument(format!(
            "experts are trained against a one-expert anchor; this checkpoint has {} experts",
            anchor.config.num_experts
        )));
    }
    let started = Instant::now();
    let ad = device.clone().autodiff();
    let base = FlexOlmo::from_tensors(&anchor.config, &anchor.tensors, &ad)?;
    let seq_len = opts.seq_len.min(anchor.config.max_position_embeddings);
    crate::objective::check_one_window(train, seq_len)?;
    let anchor_heldout = match heldout {
        Some(h) => Some(heldout_loss(
            &base,
            h,
            seq_len,
            opts.batch_size,
            opts.eval_tokens,
        )?),
        None => None,
    };
    let h = anchor.config.hidden_size;
    let r_pub: Vec<Vec<f32>> = base
        .layers
        .iter()
        .map(|layer| to_host(layer.router.clone().inner()).data)
        .collect();
    let mut calibration = None;
    let router_init = RouterInit::of(opts, public.is_some());
    let r_init = match public {
        Some(public) => {
            let plain = FlexOlmo::from_tensors(&anchor.config, &anchor.tensors, device)?;
            let own = router_features(&plain, train, seq_len, opts.calibration_tokens)?;
            let public = router_features(&plain, public, seq_len, opts.calibration_tokens)?;
            let offsets: Vec<Vec<f32>> = if router_init == RouterInit::Gaussian {
                let scale = opts.router_gaussian_scale as f32;
                fit_gaussian_offsets(&own, &public, opts.router_l2, true)?
                    .into_iter()
                    .map(|f| f.offset.iter().map(|v| v * scale).collect())
                    .collect()
            } else {
                fit_offsets(&own, &public, opts.router_l2, opts.router_margin, device)?
                    .into_iter()
                    .map(|f| f.offset)
                    .collect()
            };
            let rows = offsets
                .iter()
                .zip(&r_pub)
                .map(|(w, r)| r.iter().zip(w).map(|(a, b)| a + b).collect())
                .collect();
            calibration = Some((
                CalibrationSet::new(&own, &public, 2048, opts.router_l2, opts.router_margin, &ad),
                own,
                public,
            ));
            rows
        }
        None => mean_router_inputs(&base, train, seq_len, 65_536)?,
    };
    let r_pub_dev: Vec<Tensor<2>> = r_pub
        .iter()
        .map(|r| Tensor::from_data(burn::tensor::TensorData::new(r.clone(), [h, 1]), &ad))
        .collect();
    let mut params = Vec::with_capacity(4 * base.layers.len());
    for (l, layer) in base.layers.iter().enumerate() {
        let public = &layer.experts[0];
        params.push(Param::new(public.gate_up.clone(), true, &ad));
        params.push(Param::new(public.down.clone(), true, &ad));
        let r = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(r_init[l].clone(), [h, 1]),
            &ad,
        );
        params.push(Param::new(r, false, &ad).with_lr_scale(opts.router_lr_scale));
        params.push(Param::new(Tensor::zeros([1, 1], &ad), false, &ad));
    }
    let mut ps = ExpertParams { params };
    let mut opt = AdamW::new(AdamWConfig {
        lr: opts.lr,
        weight_decay: opts.weight_decay,
        ..AdamWConfig::default()
    });
    let calibrating =
        calibration.is_some() && opts.router_calibration_weight > 0.0 && opts.router_lr_scale > 0.0;
    let mut recent = Vec::new();
    for step in 0..opts.steps {
        let t0 = Instant::now();
        let lr = schedule(opts.lr, step, opts.warmup, opts.steps);
        // The step's work, on rayon's pool (see `on_pool`).
        let (loss_value, grad_norm) = crate::device::on_pool(|| -> Result<_, ModelError> {
            let windows = sample_batch(train, seq_len, opts.batch_size, opts.seed, step)?;
            let model = two_expert_model(&base, &ps, false);
            let mut trace = Trace {
                keep_router_logits: opts.z_loss_weight > 0.0,
                ..Trace::default()
            };
            let ce = lm_loss_traced(&model, &windows, opts.batch_size, &mut trace)?;
            let loss_value = f64::from(ce.clone().into_scalar::<f32>());
            if !loss_value.is_finite() {
                return Err(ModelError::Diverged(format!(
                    "loss is {loss_value} at step {step}"
                )));
            }
            let mut total = match z_loss(std::mem::take(&mut trace.router_logits)) {
                Some(z) => ce + z.mul_scalar(opts.z_loss_weight),
                None => ce,
            };
            if (opts.public_loss_weight > 0.0 || opts.public_match_weight > 0.0)
                && let Some(public) = public
            {
                // A quarter batch of public text, from its own sample stream.
                let rows = (opts.batch_size / 4).max(1);
                let windows = sample_batch(public, seq_len, rows, opts.seed ^ PUBLIC_SEED, step)?;
                let mut trace = Trace {
                    expert_gaps: (opts.public_match_weight > 0.0).then(Vec::new),
                    ..Trace::default()
                };
                if opts.public_loss_weight > 0.0 {
                    let public_ce = lm_loss_traced(&model, &windows, rows, &mut trace)?;
                    total = total + public_ce.mul_scalar(opts.public_loss_weight);
                } else {
                    // Only the layers' expert gaps are wanted: no LM head.
                    let (inputs, _) = inputs_and_targets(&windows, rows);
                    model.hidden(&inputs, rows, &mut trace)?;
                }
                let gaps = trace.expert_gaps.unwrap_or_default();
                let layers = gaps.len().max(1) as f64;
                for gap in gaps {
                    total = total + gap.mul_scalar(opts.public_match_weight / layers);
                }
            }
            if calibrating && let Some((set, _, _)) = &calibration {
                let offsets: Vec<Tensor<2>> = (0..base.layers.len())
                    .map(|l| ps.layer(l)[2].value.clone() - r_pub_dev[l].clone())
                    .collect();
                total = total
                    + set
                        .loss(&offsets)
                        .mul_scalar(opts.router_calibration_weight);
            }
            let grads = total.backward();
            let grad_norm = opt.step(&mut ps.params, &grads, lr)?;
            Ok((loss_value, grad_norm))
        })?;
        recent.push(loss_value);
        if recent.len() > 20 {
            recent.remove(0);
        }
        let is_last = step + 1 == opts.steps;
        let eval_loss = match heldout {
            Some(h) if opts.eval_every > 0 && (step + 1) % opts.eval_every == 0 && !is_last => {
                Some(heldout_loss(
                    &two_expert_model(&base, &ps, true),
                    h,
                    seq_len,
                    opts.batch_size,
                    opts.eval_tokens,
                )?)
            }
            _ => None,
        };
        let secs = t0.elapsed().as_secs_f64();
        progress(&StepInfo {
            step: step + 1,
            total: opts.steps,
            loss: loss_value,
            lr,
            grad_norm,
            tokens_per_s: (opts.batch_size * seq_len) as f64 / secs.max(1e-9),
            eval_loss,
        });
    }
    let final_model = two_expert_model(&base, &ps, true);
    let heldout_final = match heldout {
        Some(h) => Some(heldout_loss(
            &final_model,
            h,
            seq_len,
            opts.batch_size,
            opts.eval_tokens,
        )?),
        None => None,
    };
    let (mut router_own_positive, mut router_public_positive) = (None, None);
    if let Some((_, own, public)) = &calibration {
        let (mut o, mut p) = (0.0, 0.0);
        for (l, r_pub) in r_pub.iter().enumerate() {
            let r = to_host(ps.layer(l)[2].value.clone().inner()).data;
            let w: Vec<f32> = r.iter().zip(r_pub).map(|(a, b)| a - b).collect();
            o += positive_share(&own.layers[l], h, &w);
            p += positive_share(&public.layers[l], h, &w);
        }
        let n = base.layers.len().max(1) as f64;
        router_own_positive = Some(o / n);
        router_public_positive = Some(p / n);
    }
    let router_bias = (0..base.layers.len())
        .map(|l| {
            let b = to_host(ps.layer(l)[3].value.clone().inner()).data;
            b.first().map_or(0.0, |&v| f64::from(v))
        })
        .collect();
    let mut tensors = TensorMap::new();
    let inter = anchor.config.intermediate_size;
    for l in 0..base.layers.len() {
        let [gu, down, r, _] = ps.layer(l);
        let gu = to_host_transposed(gu.value.clone().inner());
        tensors.insert(names::package_ffn(l, "gate_proj"), gu.rows(0, inter)?);
        tensors.insert(names::package_ffn(l, "up_proj"), gu.rows(inter, inter)?);
        tensors.insert(
            names::package_ffn(l, "down_proj"),
            to_host_transposed(down.value.clone().inner()),
        );
        let r = to_host(r.value.clone().inner());
        tensors.insert(
            names::package_router(l),
            HostTensor::new(vec![r.data.len()], r.data)?,
        );
    }
    let training = TrainingMetadata {
        tokens: opts.steps * (opts.batch_size * seq_len) as u64,
        steps: opts.steps,
        batch_size: opts.batch_size,
        seq_len,
        learning_rate: opts.lr,
        seed: opts.seed,
        final_train_loss: recent.iter().sum::<f64>() / recent.len().max(1) as f64,
        heldout_loss: heldout_final,
        anchor_heldout_loss: anchor_heldout,
        data_tokens: train.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        router_own_positive,
        router_public_positive,
        router_bias: Some(router_bias),
        recipe: Some(recipe(opts, public, router_init, calibrating)),
    };
    ExpertPackage::new(&anchor.config, anchor_digest.to_owned(), tensors, training)
}

/// How [`train_expert`] starts the router row `r_i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouterInit {
    /// FlexOlmo: the mean router input over the contributor's text (no public sample).
    MeanInput,
    /// Logistic regression of own against public router inputs.
    Logistic,
    /// A multiple of the Gaussian log-density-ratio row (`router_gaussian_scale > 0`).
    Gaussian,
}

impl RouterInit {
    fn of(opts: &TrainOptions, has_public: bool) -> Self {
        match (has_public, opts.router_gaussian_scale > 0.0) {
            (false, _) => Self::MeanInput,
            (true, true) => Self::Gaussian,
            (true, false) => Self::Logistic,
        }
    }

    /// The name the manifest records.
    fn name(self) -> &'static str {
        match self {
            Self::MeanInput => "mean-router-input",
            Self::Logistic => "logistic",
            Self::Gaussian => "gaussian",
        }
    }
}

/// The objective's settings as they took effect in [`train_expert`].
fn recipe(
    opts: &TrainOptions,
    public: Option<&[u32]>,
    router_init: RouterInit,
    calibrating: bool,
) -> TrainingRecipe {
    use sha2::{Digest, Sha256};
    let calibration_sha256 = public.map(|p| {
        let mut h = Sha256::new();
        for t in p {
            h.update(t.to_le_bytes());
        }
        hex::encode(h.finalize())
    });
    TrainingRecipe {
        warmup: opts.warmup,
        weight_decay: opts.weight_decay,
        z_loss_weight: opts.z_loss_weight,
        router_init: router_init.name().to_owned(),
        router_lr_scale: opts.router_lr_scale,
        router_calibration_weight: if calibrating {
            opts.router_calibration_weight
        } else {
            0.0
        },
        router_l2: opts.router_l2,
        router_margin: opts.router_margin,
        router_gaussian_scale: opts.router_gaussian_scale,
        public_loss_weight: if public.is_some() {
            opts.public_loss_weight
        } else {
            0.0
        },
        public_match_weight: if public.is_some() {
            opts.public_match_weight
        } else {
            0.0
        },
        calibration_tokens: public.map(|p| p.len() as u64),
        calibration_sha256,
    }
}
