//! Pretraining the dense anchor (one expert) on the public corpus, with
//! checkpoint/resume, and computing its public router row `r_pub`.
//!
//! Every tensor but the router is trained (with a single expert the router's
//! softmax is 1 whatever its row, so it gets no gradient). After training,
//! `r_pub` for each layer is set to the mean router input over public text and
//! written into `mlp.gate.weight`.
//!
//! A run may hold the query projection of the first `context_heads` heads of
//! every layer at zero. Such a head scores every earlier position alike, so it
//! attends uniformly over the prefix: its output is a running average of the
//! context, which the residual stream — and with it every router input —
//! then carries. That is what lets a linear router row see which kind of
//! document a token sits in, not only the token itself (EXPERIMENT.md, "Context
//! heads"). The checkpoint stays an ordinary `flex_olmo` one: the heads are
//! just zero rows of `q_proj`.

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::config::FlexOlmoConfig;
use crate::error::ModelError;
use crate::expert_train::mean_router_inputs;
use crate::model::{Attention, Ffn, FlexOlmo, Layer, to_host, to_host_transposed};
use crate::names;
use crate::objective::{StepInfo, TrainOptions, heldout_loss, lm_loss, sample_batch};
use crate::optim::{AdamW, AdamWConfig, Param, schedule};
use crate::weights::{HostTensor, TensorMap, sync_dir, write_durable};

/// Parameters per decoder layer in the flat list.
const PER_LAYER: usize = 8;
/// Embedding, LM head, final norm.
const GLOBAL: usize = 3;

/// A freshly initialised dense checkpoint: matrices ~ N(0, 0.02²), norms 1,
/// router rows 0 (set by [`set_public_router`] after training).
pub fn init_anchor(config: &FlexOlmoConfig, seed: u64) -> Result<Checkpoint, ModelError> {
    if config.num_experts != 1 {
        return Err(ModelError::Argument("an anchor has num_experts = 1".into()));
    }
    config.validate()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = TensorMap::new();
    for (name, shape) in Checkpoint::expected_shapes(config) {
        let n: usize = shape.iter().product();
        let data = if name.ends_with("norm.weight") || name.ends_with("layernorm.weight") {
            vec![1.0; n]
        } else if name.contains(".mlp.gate.") {
            vec![0.0; n]
        } else {
            // Scale output projections down with depth, as is usual for residual nets.
            let std = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                0.02 / (2.0 * config.num_hidden_layers as f64).sqrt()
            } else {
                0.02
            };
            (0..n).map(|_| (gaussian(&mut rng) * std) as f32).collect()
        };
        tensors.insert(name, HostTensor::new(shape, data)?);
    }
    Ok(Checkpoint {
        config: config.clone(),
        tensors,
        source_dir: None,
    })
}

fn gaussian(rng: &mut StdRng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn params_of(model: &FlexOlmo, device: &Device) -> Vec<Param> {
    let row = |t: &Tensor<1>| {
        let n = t.dims()[0];
        t.clone().reshape([1, n])
    };
    let mut ps = vec![
        Param::new(model.embed.clone(), false, device),
        Param::new(model.lm_head.clone(), true, device),
        Param::new(row(&model.norm), false, device),
    ];
    for layer in &model.layers {
        ps.push(Param::new(layer.attn.qkv.clone(), true, device));
        ps.push(Param::new(layer.attn.out.clone(), true, device));
        ps.push(Param::new(row(&layer.attn.q_norm), false, device));
        ps.push(Param::new(row(&layer.attn.k_norm), false, device));
        ps.push(Param::new(row(&layer.post_attention_norm), false, device));
        ps.push(Param::new(row(&layer.post_feedforward_norm), false, device));
        ps.push(Param::new(layer.experts[0].gate_up.clone(), true, device));
        ps.push(Param::new(layer.experts[0].down.clone(), true, device));
    }
    ps
}

/// Zeroes the `q_proj` rows of the first `heads` heads of every layer.
pub fn zero_query_heads(ckpt: &mut Checkpoint, heads: usize) -> Result<(), ModelError> {
    let config = &ckpt.config;
    if heads > config.num_attention_heads {
        return Err(ModelError::Argument(format!(
            "{heads} context heads asked for, but layers have {} heads",
            config.num_attention_heads
        )));
    }
    let width = heads * config.head_dim();
    for l in 0..config.num_hidden_layers {
        let name = names::attn(l, "q_proj");
        let mut q = ckpt.tensors.get(&name)?.clone();
        let [_, cols] = q.dims2()?;
        q.data[..width * cols].fill(0.0);
        ckpt.tensors.insert(name, q);
    }
    Ok(())
}

/// Mask of the fused (transposed) `qkv` matrix: 0 on the query columns of the
/// first `heads` heads, 1 elsewhere; `None` when no head is masked.
fn query_mask(config: &FlexOlmoConfig, heads: usize, device: &Device) -> Option<Tensor<2>> {
    if heads == 0 {
        return None;
    }
    let (nh, nkv, hd) = (
        config.num_attention_heads,
        config.kv_heads(),
        config.head_dim(),
    );
    let cols = (nh + 2 * nkv) * hd;
    let row: Vec<f32> = (0..cols)
        .map(|c| if c < heads * hd { 0.0 } else { 1.0 })
        .collect();
    let data = row.repeat(config.hidden_size);
    Some(Tensor::from_data(
        burn::tensor::TensorData::new(data, [config.hidden_size, cols]),
        device,
    ))
}

fn model_of(template: &FlexOlmo, ps: &[Param], mask: Option<&Tensor<2>>) -> FlexOlmo {
    let vec1 = |p: &Param| {
        let n = p.value.dims()[1];
        p.value.clone().reshape([n])
    };
    let mut m = template.clone();
    m.embed = ps[0].value.clone();
    m.lm_head = ps[1].value.clone();
    m.norm = vec1(&ps[2]);
    for (l, layer) in m.layers.iter_mut().enumerate() {
        let p = &ps[GLOBAL + PER_LAYER * l..GLOBAL + PER_LAYER * (l + 1)];
        *layer = Layer {
            attn: Attention {
                // The mask keeps context heads' queries at zero: their
                // gradient is zero, so AdamW leaves them (and their moments) at 0.
                qkv: match mask {
                    Some(m) => p[0].value.clone() * m.clone(),
                    None => p[0].value.clone(),
                },
                out: p[1].value.clone(),
                q_norm: vec1(&p[2]),
                k_norm: vec1(&p[3]),
            },
            post_attention_norm: vec1(&p[4]),
            post_feedforward_norm: vec1(&p[5]),
            router: layer.router.clone(),
            router_bias: None,
            experts: vec![Ffn {
                gate_up: p[6].value.clone(),
                down: p[7].value.clone(),
            }],
        };
    }
    m
}

/// Converts trained parameters back into transformers-layout tensors.
fn tensors_of(
    config: &FlexOlmoConfig,
    ps: &[Param],
    routers: &TensorMap,
) -> Result<TensorMap, ModelError> {
    let h = |p: &Param| to_host(p.value.clone().inner());
    let ht = |p: &Param| to_host_transposed(p.value.clone().inner());
    let flat = |p: &Param| {
        let t = h(p);
        HostTensor {
            shape: vec![t.data.len()],
            data: t.data,
        }
    };
    let (nh, nkv, hd) = (
        config.num_attention_heads,
        config.kv_heads(),
        config.head_dim(),
    );
    let inter = config.intermediate_size;
    let mut t = TensorMap::new();
    t.insert(names::EMBED, h(&ps[0]));
    t.insert(names::LM_HEAD, ht(&ps[1]));
    t.insert(names::NORM, flat(&ps[2]));
    for l in 0..config.num_hidden_layers {
        let p = &ps[GLOBAL + PER_LAYER * l..GLOBAL + PER_LAYER * (l + 1)];
        let qkv = ht(&p[0]);
        t.insert(names::attn(l, "q_proj"), qkv.rows(0, nh * hd)?);
        t.insert(names::attn(l, "k_proj"), qkv.rows(nh * hd, nkv * hd)?);
        t.insert(
            names::attn(l, "v_proj"),
            qkv.rows((nh + nkv) * hd, nkv * hd)?,
        );
        t.insert(names::attn(l, "o_proj"), ht(&p[1]));
        t.insert(names::q_norm(l), flat(&p[2]));
        t.insert(names::k_norm(l), flat(&p[3]));
        t.insert(names::post_attention_norm(l), flat(&p[4]));
        t.insert(names::post_feedforward_norm(l), flat(&p[5]));
        let gu = ht(&p[6]);
        t.insert(names::expert(l, 0, "gate_proj"), gu.rows(0, inter)?);
        t.insert(names::expert(l, 0, "up_proj"), gu.rows(inter, inter)?);
        t.insert(names::expert(l, 0, "down_proj"), ht(&p[7]));
        t.insert(names::router(l), routers.get(&names::router(l))?.clone());
    }
    Ok(t)
}

/// Progress of a pretraining run, saved beside its resumable checkpoint.
///
/// `trainer_state.json` is written last and atomically, and names the
/// directory that holds the weights and optimiser moments of its step: a run
/// killed while it saves a new state leaves the previous one intact.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    /// Steps completed.
    pub step: u64,
    /// Steps planned.
    pub total_steps: u64,
    /// Seed of the run.
    pub seed: u64,
    /// Last held-out loss measured, if any.
    pub last_eval_loss: Option<f64>,
    /// Subdirectory of `resume/` holding this step's weights and moments;
    /// absent in states saved before it existed (they kept both in `resume/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Wall-clock seconds spent training so far, over every invocation.
    #[serde(default)]
    pub seconds: f64,
    /// The command lines that ran the steps so far, first to last.
    #[serde(default)]
    pub invocations: Vec<String>,
    /// Whatever the caller must find unchanged when the run resumes (data
    /// digests, settings); opaque here, compared by the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
}

/// Where a resumable run keeps its state.
pub const RESUME_DIR: &str = "resume";

/// The first entry of a resumed run's invocations when the state it resumed
/// was saved before invocations were recorded.
pub const UNRECORDED_INVOCATION: &str = "(not recorded: the run was started by an older version)";

/// The state file inside [`RESUME_DIR`].
const STATE_FILE: &str = "trainer_state.json";

/// The subdirectory of [`RESUME_DIR`] that holds step `step`.
fn step_dir(step: u64) -> String {
    format!("step-{step:08}")
}

/// Saves `state` (its `dir` set here, from its step) with its weights and
/// moments in `dir/resume`.
fn save_resume(
    dir: &Path,
    ckpt: &Checkpoint,
    ps: &[Param],
    mut state: TrainerState,
    tokenizer: Option<&Path>,
) -> Result<(), ModelError> {
    let rdir = dir.join(RESUME_DIR);
    let name = step_dir(state.step);
    state.dir = Some(name.clone());
    let sdir = rdir.join(&name);
    // A directory of this name can only be left over from a run killed while
    // it saved this step; it is not the one the state file names.
    if sdir.exists() {
        std::fs::remove_dir_all(&sdir).map_err(|e| ModelError::io(&sdir, e))?;
    }
    ckpt.save(&sdir, tokenizer)?;
    let mut moments = TensorMap::new();
    for (i, p) in ps.iter().enumerate() {
        let (m, v) = p.moments();
        moments.insert(format!("m.{i}"), to_host(m));
        moments.insert(format!("v.{i}"), to_host(v));
    }
    moments.save(&sdir.join("optimizer.safetensors"))?;
    // On disk before the state that names them, so that the commit below
    // holds after a power loss too, not only after a killed process.
    sync_files(&sdir)?;
    sync_dir(&rdir)?;
    let json =
        serde_json::to_string_pretty(&state).map_err(|e| ModelError::Argument(e.to_string()))?;
    // The commit: from here on the state names the new step's directory.
    write_durable(&rdir.join(STATE_FILE), json.as_bytes())?;
    // Earlier steps (and the files of states from before step directories).
    for entry in std::fs::read_dir(&rdir).map_err(|e| ModelError::io(&rdir, e))? {
        let path = entry.map_err(|e| ModelError::io(&rdir, e))?.path();
        let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
        if file == name || file == STATE_FILE {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| ModelError::io(&path, e))?;
    }
    Ok(())
}

/// Flushes every file directly in `dir`, then `dir` itself, to disk.
fn sync_files(dir: &Path) -> Result<(), ModelError> {
    for entry in std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))? {
        let path = entry.map_err(|e| ModelError::io(dir, e))?.path();
        if path.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| ModelError::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

/// Whether `dir` holds the saved state of an unfinished run (without loading it).
pub fn has_saved_state(dir: &Path) -> bool {
    dir.join(RESUME_DIR).join(STATE_FILE).is_file()
}

/// Loads the state saved in `dir/resume`, if any.
pub fn load_resume(
    dir: &Path,
) -> Result<Option<(Checkpoint, TensorMap, TrainerState)>, ModelError> {
    let rdir = dir.join(RESUME_DIR);
    let spath = rdir.join(STATE_FILE);
    if !spath.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&spath).map_err(|e| ModelError::io(&spath, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| ModelError::Argument(format!("{}: {e}", spath.display())))?;
    let sdir = match &state.dir {
        Some(d) => rdir.join(d),
        None => rdir.clone(),
    };
    let ckpt = Checkpoint::load(&sdir)?;
    let moments = TensorMap::load(&sdir.join("optimizer.safetensors"))?;
    Ok(Some((ckpt, moments, state)))
}

/// How a call of [`pretrain`] ended.
#[derive(Debug)]
pub enum Pretrained {
    /// Every step ran: the trained checkpoint (router rows still as they
    /// started) and the final held-out loss, if held-out text was given.
    Finished {
        /// The trained weights.
        checkpoint: Box<Checkpoint>,
        /// Held-out loss at the end.
        heldout_loss: Option<f64>,
        /// The command lines that ran the steps, first to last: the resumed
        /// state's (or [`UNRECORDED_INVOCATION`] for a state that has none)
        /// and then [`PretrainRun::invocation`]; empty when the run records none.
        invocations: Vec<String>,
        /// Training seconds of the invocations before this one.
        earlier_seconds: f64,
    },
    /// The run stopped at [`PretrainRun::pause_at`] after saving its state.
    Paused {
        /// Steps completed.
        step: u64,
    },
}

impl Pretrained {
    /// The checkpoint and loss of a finished run; an error for a paused one.
    pub fn finished(self) -> Result<(Checkpoint, Option<f64>), ModelError> {
        match self {
            Self::Finished {
                checkpoint,
                heldout_loss,
                ..
            } => Ok((*checkpoint, heldout_loss)),
            Self::Paused { step } => Err(ModelError::Argument(format!(
                "the run paused at step {step} instead of finishing"
            ))),
        }
    }
}

/// Everything a pretraining run needs besides its data.
pub struct PretrainRun<'a> {
    /// Starting weights (fresh from [`init_anchor`] or loaded for resume).
    pub start: Checkpoint,
    /// Optimiser moments and state when resuming.
    pub resume: Option<(TensorMap, TrainerState)>,
    /// Training settings.
    pub opts: TrainOptions,
    /// Directory for resumable checkpoints (`dir/resume`), if any.
    pub out_dir: Option<&'a Path>,
    /// Save a resumable checkpoint every this many steps (0: never).
    pub checkpoint_every: u64,
    /// Directory whose tokenizer files the checkpoints carry.
    pub tokenizer_dir: Option<&'a Path>,
    /// Heads per layer (the first ones) whose query projection is held at
    /// zero, so that they average the context uniformly (see the module doc).
    pub context_heads: usize,
    /// Save the state and stop after this step (needs `out_dir`), to continue
    /// later with `resume`.
    pub pause_at: Option<u64>,
    /// This invocation's command line, appended to the saved state's list.
    pub invocation: Option<String>,
    /// Stored in every saved state (see [`TrainerState::settings`]).
    pub settings: Option<serde_json::Value>,
}

/// Pretrains the anchor, from the start or from a saved state, until the last
/// step or [`PretrainRun::pause_at`].
///
/// # Errors
/// A resumed state planned for other steps or another seed, a pause without
/// an output directory, bad data, a diverged loss, I/O.
pub fn pretrain(
    run: PretrainRun<'_>,
    train: &[u32],
    heldout: Option<&[u32]>,
    device: &Device,
    progress: &mut dyn FnMut(&StepInfo),
) -> Result<Pretrained, ModelError> {
    let opts = &run.opts;
    let started = Instant::now();
    if let Some((_, state)) = &run.resume
        && (state.total_steps, state.seed) != (opts.steps, opts.seed)
    {
        return Err(ModelError::Argument(format!(
            "the saved state is of a run of {} steps with seed {}; this one asks for {} steps with seed {}",
            state.total_steps, state.seed, opts.steps, opts.seed
        )));
    }
    if run.pause_at.is_some() && run.out_dir.is_none() {
        return Err(ModelError::Argument(
            "pausing needs a directory to save the state in".into(),
        ));
    }
    let seconds_before = run.resume.as_ref().map_or(0.0, |(_, s)| s.seconds);
    let mut invocations = match (&run.resume, &run.invocation) {
        (Some((_, s)), Some(_)) if s.invocations.is_empty() => {
            vec![UNRECORDED_INVOCATION.to_owned()]
        }
        (Some((_, s)), _) => s.invocations.clone(),
        (None, _) => Vec::new(),
    };
    invocations.extend(run.invocation.clone());
    let ad = device.clone().autodiff();
    let config = run.start.config.clone();
    let mut start = run.start;
    zero_query_heads(&mut start, run.context_heads)?;
    let mask = query_mask(&config, run.context_heads, &ad);
    let template = FlexOlmo::from_tensors(&config, &start.tensors, &ad)?;
    let mut routers = TensorMap::new();
    for l in 0..config.num_hidden_layers {
        routers.insert(
            names::router(l),
            start.tensors.get(&names::router(l))?.clone(),
        );
    }
    let mut ps = params_of(&template, &ad);
    let mut opt = AdamW::new(AdamWConfig {
        lr: opts.lr,
        weight_decay: opts.weight_decay,
        ..AdamWConfig::default()
    });
    let mut first = 0;
    let mut last_eval = None;
    if let Some((moments, state)) = &run.resume {
        for (i, p) in ps.iter_mut().enumerate() {
            let m = moments.get(&format!("m.{i}"))?;
            let v = moments.get(&format!("v.{i}"))?;
            p.set_moments(
                crate::model::to_device(m, &ad),
                crate::model::to_device(v, &ad),
            );
        }
        opt.t = state.step;
        first = state.step;
        last_eval = state.last_eval_loss;
    }
    if let Some(p) = run.pause_at
        && !(first < p && p < opts.steps)
    {
        return Err(ModelError::Argument(format!(
            "cannot pause at step {p}: the run goes from step {first} to {}",
            opts.steps
        )));
    }
    let seq_len = opts.seq_len.min(config.max_position_embeddings);
    for step in first..opts.steps {
        let t0 = Instant::now();
        let lr = schedule(opts.lr, step, opts.warmup, opts.steps);
        // The step's work, on rayon's pool (see `on_pool`).
        let (loss, grad_norm) = crate::device::on_pool(|| -> Result<_, ModelError> {
            let windows = sample_batch(train, seq_len, opts.batch_size, opts.seed, step)?;
            let model = model_of(&template, &ps, mask.as_ref());
            let (ce, _) = lm_loss(&model, &windows, opts.batch_size, false)?;
            let loss = f64::from(ce.clone().into_scalar::<f32>());
            if !loss.is_finite() {
                return Err(ModelError::Diverged(format!(
                    "loss is {loss} at step {step}"
                )));
            }
            let grads = ce.backward();
            let grad_norm = opt.step(&mut ps, &grads, lr)?;
            Ok((loss, grad_norm))
        })?;
        let done = step + 1;
        let eval_loss = match heldout {
            Some(h) if opts.eval_every > 0 && done % opts.eval_every == 0 => {
                let l = heldout_loss(
                    &model_of(&template, &ps, mask.as_ref()),
                    h,
                    seq_len,
                    opts.batch_size,
                    opts.eval_tokens,
                )?;
                last_eval = Some(l);
                Some(l)
            }
            _ => None,
        };
        // Never the last step: `pause_at` was checked to lie inside the run.
        let pause = run.pause_at == Some(done);
        let periodic = run.checkpoint_every > 0 && done % run.checkpoint_every == 0;
        if let Some(dir) = run.out_dir
            && (periodic || pause)
            && done < opts.steps
        {
            let ckpt = Checkpoint {
                config: config.clone(),
                tensors: tensors_of(&config, &ps, &routers)?,
                source_dir: None,
            };
            let state = TrainerState {
                step: done,
                total_steps: opts.steps,
                seed: opts.seed,
                last_eval_loss: last_eval,
                dir: None,
                seconds: seconds_before + started.elapsed().as_secs_f64(),
                invocations: invocations.clone(),
                settings: run.settings.clone(),
            };
            save_resume(dir, &ckpt, &ps, state, run.tokenizer_dir)?;
        }
        progress(&StepInfo {
            step: done,
            total: opts.steps,
            loss,
            lr,
            grad_norm,
            tokens_per_s: (opts.batch_size * seq_len) as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            eval_loss,
        });
        if pause {
            return Ok(Pretrained::Paused { step: done });
        }
    }
    let final_eval = match heldout {
        Some(h) => Some(heldout_loss(
            &model_of(&template, &ps, mask.as_ref()),
            h,
            seq_len,
            opts.batch_size,
            opts.eval_tokens,
        )?),
        None => last_eval,
    };
    let checkpoint = Checkpoint {
        config: config.clone(),
        tensors: tensors_of(&config, &ps, &routers)?,
        source_dir: None,
    };
    Ok(Pretrained::Finished {
        checkpoint: Box::new(checkpoint),
        heldout_loss: final_eval,
        invocations,
        earlier_seconds: seconds_before,
    })
}

/// Sets every layer's router row to the anchor's mean router input over `public`
/// tokens (the public router row `r_pub`).
pub fn set_public_router(
    ckpt: &mut Checkpoint,
    public: &[u32],
    seq_len: usize,
    max_tokens: usize,
    device: &Device,
) -> Result<(), ModelError> {
    let model = FlexOlmo::from_tensors(&ckpt.config, &ckpt.tensors, device)?;
    let rows = mean_router_inputs(&model, public, seq_len, max_tokens)?;
    for (l, r) in rows.into_iter().enumerate() {
        let h = r.len();
        ckpt.tensors
            .insert(names::router(l), HostTensor::new(vec![1, h], r)?);
    }
    Ok(())
}
