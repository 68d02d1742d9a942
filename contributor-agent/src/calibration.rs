//! `router-stats` and `recalibrate`: one round of joint router calibration of a
//! merged model from statistics ([`tributary_model::calibrate`]).
//!
//! Each contributor runs `router-stats` on the merged model with its own text
//! and hands over the statistics file (per layer a mean and a second-moment
//! matrix of router inputs, and a token count; never text). Whoever holds the
//! merged model and a public text sample runs `recalibrate` with every
//! contributor's file. Repeating the round on the output, `num_hidden_layers`
//! rounds in all, gives the exact layer-by-layer fit.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use tributary_model::calibrate::{
    DEFAULT_FOLD, DEFAULT_RIDGE, DEFAULT_TOKENS, RouterStats, check_statistics, refit_rows,
};
use tributary_model::device::device_for;
use tributary_model::names::{self, FFN_PROJS};
use tributary_model::{Checkpoint, ExpertPackage};

use crate::commands::{BackendArgs, ensure_fresh_dir, load_stream};

/// `contributor-agent router-stats`.
#[derive(Args, Debug)]
pub struct RouterStatsArgs {
    /// The merged checkpoint directory the round is about (as published).
    #[arg(long)]
    pub model: PathBuf,
    /// Your expert package: tells which of the model's experts is yours.
    #[arg(long)]
    pub own: PathBuf,
    /// Your text: `.txt`, `.jsonl` with a `text` field, or directories of them.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Where to write the statistics (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// How the text is sampled and run.
    #[command(flatten)]
    pub sample: SampleArgs,
}

/// How `router-stats` and `recalibrate` sample text and run the model.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Tokens to sample from the text, in whole windows spread over it.
    #[arg(long, default_value_t = DEFAULT_TOKENS)]
    pub tokens: usize,
    /// Tokens per window (capped at the model's context); every party of a
    /// round must use the same, `recalibrate` refuses a mix.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Backend selection.
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// `contributor-agent recalibrate`.
#[derive(Args, Debug)]
pub struct RecalibrateArgs {
    /// The merged checkpoint directory every statistics file was measured on.
    #[arg(long)]
    pub model: PathBuf,
    /// One statistics file per contributed expert (from `router-stats`).
    #[arg(long, required = true, num_args = 1..)]
    pub stats: Vec<PathBuf>,
    /// Public text the rows are contrasted with (a sample of the anchor's
    /// public corpus, such as the anchor's `router-calibration.txt`).
    #[arg(long, required = true, num_args = 1..)]
    pub public_text: Vec<PathBuf>,
    /// Output checkpoint directory (must not already hold a model).
    #[arg(long)]
    pub out: PathBuf,
    /// Regulariser of the covariances, relative to their mean diagonal.
    #[arg(long, default_value_t = DEFAULT_RIDGE)]
    pub ridge: f64,
    /// How the public text is sampled and run.
    #[command(flatten)]
    pub sample: SampleArgs,
}

/// Which of `model`'s experts holds the FFN of `own` (1-based; 0 is public).
pub fn find_slot(model: &Checkpoint, own: &ExpertPackage) -> Result<usize> {
    let cfg = &model.config;
    'slot: for e in 1..cfg.num_experts {
        for l in 0..cfg.num_hidden_layers {
            for proj in FFN_PROJS {
                let theirs = model.tensors.get(&names::expert(l, e, proj))?;
                if own.tensors.get(&names::package_ffn(l, proj))? != theirs {
                    continue 'slot;
                }
            }
        }
        return Ok(e);
    }
    bail!(
        "expert {} is not one of this model's {} contributed experts",
        own.digest(),
        cfg.num_experts.saturating_sub(1)
    )
}

/// Runs `router-stats`.
pub fn router_stats(a: &RouterStatsArgs) -> Result<()> {
    let model = Checkpoint::load(&a.model)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let own = ExpertPackage::load(&a.own)
        .with_context(|| format!("loading expert package {}", a.own.display()))?;
    let slot = find_slot(&model, &own)?;
    let digest = model.digest()?;
    let stream = load_stream(&a.model, &a.data)?;
    let (seq, tokens) = (a.sample.seq_len, a.sample.tokens);
    let device = device_for(&a.sample.backend.backend)?;
    let stats = RouterStats::measure(&model, &digest, slot, &stream, seq, tokens, &device)?;
    stats.save(&a.out)?;
    eprintln!(
        "wrote the router statistics of {} tokens for expert {slot} of model {} to {}",
        stats.tokens,
        &digest[..12],
        a.out.display()
    );
    eprintln!(
        "it holds, per layer ({}), the mean and second moment of your text's {}-wide router \
         inputs: aggregate statistics, no text",
        stats.layers.len(),
        stats.hidden
    );
    Ok(())
}

/// Runs `recalibrate`.
pub fn recalibrate_cmd(a: &RecalibrateArgs) -> Result<()> {
    ensure_fresh_dir(&a.out)?;
    let model = Checkpoint::load(&a.model)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let owns = a
        .stats
        .iter()
        .map(|p| Ok(RouterStats::load(p)?))
        .collect::<Result<Vec<_>>>()?;
    let digest = model.digest()?;
    check_statistics(&model, &digest, &owns)?;
    let public = load_stream(&a.model, &a.public_text)?;
    let (seq, tokens) = (a.sample.seq_len, a.sample.tokens);
    let device = device_for(&a.sample.backend.backend)?;
    let public_stats = RouterStats::measure(&model, &digest, 0, &public, seq, tokens, &device)?;
    let out = refit_rows(&model, &digest, &public_stats, &owns, a.ridge, DEFAULT_FOLD)?;
    out.save(&a.out, Some(&a.model))?;
    eprintln!(
        "wrote {} with the router rows of experts 1..{} refitted jointly (model {})",
        a.out.display(),
        model.config.num_experts - 1,
        &out.digest()?[..12]
    );
    eprintln!(
        "each round makes one more layer exact: run {} rounds in all for the layer-by-layer \
         fit, each with every contributor's router-stats measured on the previous round's output",
        model.config.num_hidden_layers
    );
    Ok(())
}
