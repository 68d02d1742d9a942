//! The subcommands that work on weights: `train`, `merge`, `soup`, `evaluate`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use tributary_model::device::device_for;
use tributary_model::eval::{EvalReport, evaluate};
use tributary_model::expert_train::train_expert;
use tributary_model::merge::{merge, soup};
use tributary_model::objective::TrainOptions;
use tributary_model::router::CALIBRATION_FILE;
use tributary_model::{Checkpoint, FlexOlmo};

use crate::assemble::{
    DEFAULT_TOP_K, ExpertList, anchor_digest, assemble, load_experts, note_if_top_k_exceeds,
    parse_expert_list, parse_top_k,
};
use crate::progress::{eval_bar, on_step, training_bar};
use crate::text;

/// Options shared by commands that run the model.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Compute backend: `flex` (pure-Rust CPU, always available), `cuda` or `tch`
    /// when built with those cargo features.
    #[arg(long, env = "TRIBUTARY_BACKEND", default_value = "flex")]
    pub backend: String,
}

/// Expert-training settings shared by `train` and `experiment`.
#[derive(Args, Debug, Clone)]
pub struct TrainingArgs {
    /// Optimiser steps.
    #[arg(long, default_value_t = TrainOptions::DEFAULT.steps)]
    pub steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = TrainOptions::DEFAULT.batch_size)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long, default_value_t = TrainOptions::DEFAULT.lr)]
    pub lr: f64,
    /// Tokens per training sequence (capped at the anchor's context length).
    #[arg(long, default_value_t = TrainOptions::DEFAULT.seq_len)]
    pub seq_len: usize,
    /// Seed of batch sampling; the same seed, data and settings give the same expert.
    #[arg(long, default_value_t = TrainOptions::DEFAULT.seed)]
    pub seed: u64,
    /// Public text that calibrates the router row, so that the expert is routed
    /// to on text like the contributor's and not on public text once merged with
    /// others (default: the anchor's `router-calibration.txt`).
    #[arg(long, num_args = 1..)]
    pub calibration_text: Vec<PathBuf>,
    /// Weight of the router calibration term in the training objective.
    #[arg(long, default_value_t = TrainOptions::DEFAULT.router_calibration_weight)]
    pub router_calibration: f64,
    /// Learning-rate multiplier of the router row (0 keeps the calibrated row fixed).
    #[arg(long, default_value_t = TrainOptions::DEFAULT.router_lr_scale)]
    pub router_lr_scale: f64,
    /// Logit margin by which public calibration text must prefer the public
    /// expert (0: the decision boundary itself); larger values send fewer
    /// public tokens to this expert, at some cost on the contributor's own text.
    #[arg(long, default_value_t = TrainOptions::DEFAULT.router_margin)]
    pub router_margin: f64,
    /// Start the router row from the Gaussian log-density ratio of own against
    /// public text (public covariance) times this scale, instead of the
    /// logistic fit (0, the default). Pair with `--router-lr-scale 0
    /// --router-calibration 0` to keep that row fixed (EXPERIMENT.md).
    #[arg(long, default_value_t = TrainOptions::DEFAULT.router_gaussian_scale, conflicts_with = "no_router_calibration")]
    pub router_gaussian: f64,
    /// Weight of a language-modelling loss on the public calibration text,
    /// computed through the two-expert model (a quarter batch per step), so
    /// that the expert learns not to harm public text once merged. With
    /// `--public-match 0` as well, 0 trains on own text only, as FlexOlmo
    /// does; at this scale that expert doubles public perplexity wherever it
    /// is routed to (see EXPERIMENT.md).
    #[arg(long, default_value_t = TrainOptions::DEFAULT.public_loss_weight)]
    pub public_loss: f64,
    /// Weight of a term that keeps the expert's FFN output close to the public
    /// FFN's on the public calibration text, layer by layer (relative squared
    /// difference), so that public tokens a merged router sends to this expert
    /// do less harm. At the default, merged models lose much less on public
    /// text for a few per cent on the expert's own domain (EXPERIMENT.md); 0
    /// turns it off. Like `--public-loss`, it needs
    /// the public calibration sample (off with `--no-router-calibration`).
    #[arg(long, default_value_t = TrainOptions::DEFAULT.public_match_weight)]
    pub public_match: f64,
    /// Train without router calibration (the row then starts as the mean router
    /// input of the contributor's data; experts trained so merge badly).
    #[arg(long, conflicts_with = "calibration_text")]
    pub no_router_calibration: bool,
}

impl TrainingArgs {
    /// The model library's options for these settings.
    pub fn to_options(&self, eval_every: u64) -> TrainOptions {
        TrainOptions {
            steps: self.steps,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            lr: self.lr,
            seed: self.seed,
            eval_every,
            router_calibration_weight: self.router_calibration,
            router_lr_scale: self.router_lr_scale,
            router_margin: self.router_margin,
            public_loss_weight: self.public_loss,
            public_match_weight: self.public_match,
            router_gaussian_scale: self.router_gaussian,
            ..TrainOptions::default()
        }
    }

    /// Tokens of the public calibration text, or `None` when calibration is off.
    pub fn calibration_stream(
        &self,
        anchor: &Path,
        tok: &tributary_corpus::TextTokenizer,
    ) -> Result<Option<Vec<u32>>> {
        if self.no_router_calibration {
            return Ok(None);
        }
        let paths = if self.calibration_text.is_empty() {
            let shipped = anchor.join(CALIBRATION_FILE);
            if !shipped.is_file() {
                bail!(
                    "the anchor {} has no {CALIBRATION_FILE}; pass --calibration-text with a \
                     sample of the anchor's public corpus, or --no-router-calibration",
                    anchor.display()
                );
            }
            vec![shipped]
        } else {
            self.calibration_text.clone()
        };
        let docs = text::documents(&paths)?;
        Ok(Some(text::stream(&docs, tok)?))
    }
}

/// `contributor-agent train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The anchor checkpoint directory (a one-expert `flex_olmo` checkpoint).
    #[arg(long)]
    pub anchor: PathBuf,
    /// Training text: `.txt` files, `.jsonl` files with a `text` field, or directories of them.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Held-out text for the loss reported in the manifest. Without it, every
    /// 20th document of `--data` is held out (split by document).
    #[arg(long, num_args = 1..)]
    pub heldout: Vec<PathBuf>,
    /// Directory to write the expert package into (`expert.safetensors`, `manifest.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// Training settings.
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Report held-out loss every this many steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Backend selection.
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// `contributor-agent merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The anchor checkpoint directory.
    #[arg(long)]
    pub anchor: PathBuf,
    /// Expert packages, in the order they take as experts 1..n (expert 0 is the public FFN).
    #[arg(long, num_args = 1..)]
    pub expert: Vec<PathBuf>,
    /// Experts each token is routed to.
    #[arg(long, default_value_t = DEFAULT_TOP_K, value_parser = parse_top_k)]
    pub top_k: usize,
    /// Output checkpoint directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// `contributor-agent soup`.
#[derive(Args, Debug)]
pub struct SoupArgs {
    /// The anchor checkpoint directory.
    #[arg(long)]
    pub anchor: PathBuf,
    /// Expert packages to average with the public FFN.
    #[arg(long, required = true, num_args = 1..)]
    pub expert: Vec<PathBuf>,
    /// Output checkpoint directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// `contributor-agent evaluate`.
#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// A `flex_olmo` checkpoint directory (merged model or anchor).
    #[arg(long)]
    pub model: PathBuf,
    /// Expert packages merged onto `--model` in memory (then `--model` must be the anchor).
    #[arg(long, num_args = 1..)]
    pub expert: Vec<PathBuf>,
    /// Run only these experts, e.g. `0,2` (0 is the public expert).
    #[arg(long, value_parser = parse_expert_list)]
    pub experts: Option<ExpertList>,
    /// Experts per token, 1 or more (default: the checkpoint's setting; capped at the number of experts).
    #[arg(long, value_parser = parse_top_k)]
    pub top_k: Option<usize>,
    /// Text to score: `.txt`, `.jsonl` with a `text` field, or directories.
    #[arg(long, required = true, num_args = 1..)]
    pub text: Vec<PathBuf>,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Backend selection.
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Refuses to write over an existing checkpoint or expert package.
pub fn ensure_fresh_dir(out: &Path) -> Result<()> {
    if out.join("manifest.json").exists() || out.join("model.safetensors").exists() {
        bail!(
            "{} already holds a model or an expert; choose another --out or remove it",
            out.display()
        );
    }
    Ok(())
}

/// Runs `train`.
pub fn train(a: &TrainArgs) -> Result<()> {
    ensure_fresh_dir(&a.out)?;
    let device = device_for(&a.backend.backend)?;
    let anchor = Checkpoint::load(&a.anchor)
        .with_context(|| format!("loading anchor {}", a.anchor.display()))?;
    let digest = anchor_digest(&a.anchor)?;
    let tok = text::tokenizer(&a.anchor)?;
    let docs = text::documents(&a.data)?;
    let (train_docs, held_docs) = if a.heldout.is_empty() {
        text::split_heldout(docs, 20)
    } else {
        (docs, text::documents(&a.heldout)?)
    };
    let train_stream = text::stream(&train_docs, &tok)?;
    let seq_len = a
        .training
        .seq_len
        .min(anchor.config.max_position_embeddings);
    if train_stream.len() <= seq_len {
        bail!(
            "the training text is {} tokens; an expert needs at least {} (one sequence of \
             {seq_len} tokens and the next token): give more text or a smaller --seq-len",
            train_stream.len(),
            seq_len + 1
        );
    }
    let held_stream = if held_docs.is_empty() {
        None
    } else {
        Some(text::stream(&held_docs, &tok)?)
    };
    eprintln!(
        "training an expert on {} documents ({} tokens); {} held-out documents ({} tokens); backend {}{}",
        train_docs.len(),
        train_stream.len(),
        held_docs.len(),
        held_stream.as_ref().map_or(0, Vec::len),
        a.backend.backend,
        if a.backend.backend == "flex" {
            format!(" ({} matrix kernel)", tributary_model::kernel::kernel())
        } else {
            String::new()
        }
    );
    let calibration = a.training.calibration_stream(&a.anchor, &tok)?;
    let opts = a.training.to_options(a.eval_every);
    let bar = training_bar(opts.steps, "expert");
    let mut smooth = None;
    let pkg = train_expert(
        &anchor,
        &digest,
        &train_stream,
        held_stream.as_deref(),
        calibration.as_deref(),
        &opts,
        &device,
        &mut |s| on_step(&bar, s, &mut smooth),
    )?;
    bar.finish();
    pkg.save(&a.out)?;
    let t = &pkg.manifest.training;
    eprintln!("wrote expert {} to {}", pkg.digest(), a.out.display());
    if let (Some(h), Some(base)) = (t.heldout_loss, t.anchor_heldout_loss) {
        eprintln!(
            "held-out perplexity: anchor {:.2} -> with expert {:.2} ({:+.1}%)",
            base.exp(),
            h.exp(),
            100.0 * (h.exp() / base.exp() - 1.0)
        );
    }
    if let (Some(own), Some(public)) = (t.router_own_positive, t.router_public_positive) {
        eprintln!(
            "router: prefers this expert to the public one on {:.1}% of own tokens and {:.1}% of public tokens",
            100.0 * own,
            100.0 * public
        );
    }
    Ok(())
}

/// Runs `merge`.
pub fn merge_cmd(a: &MergeArgs) -> Result<()> {
    ensure_fresh_dir(&a.out)?;
    let anchor = Checkpoint::load(&a.anchor)
        .with_context(|| format!("loading anchor {}", a.anchor.display()))?;
    let digest = anchor_digest(&a.anchor)?;
    let pkgs = load_experts(&a.expert)?;
    let merged = merge(&anchor, &digest, &pkgs, a.top_k)?;
    note_if_top_k_exceeds(a.top_k, merged.config.num_experts);
    merged.save(&a.out, Some(&a.anchor))?;
    eprintln!(
        "wrote {} with {} experts (0 = public{}), top-k {}",
        a.out.display(),
        merged.config.num_experts,
        pkgs.iter()
            .enumerate()
            .map(|(i, p)| format!(", {} = {}", i + 1, &p.digest()[..12]))
            .collect::<String>(),
        merged.config.num_experts_per_tok
    );
    Ok(())
}

/// Runs `soup`.
pub fn soup_cmd(a: &SoupArgs) -> Result<()> {
    ensure_fresh_dir(&a.out)?;
    let anchor = Checkpoint::load(&a.anchor)
        .with_context(|| format!("loading anchor {}", a.anchor.display()))?;
    let digest = anchor_digest(&a.anchor)?;
    let pkgs = load_experts(&a.expert)?;
    soup(&anchor, &digest, &pkgs)?.save(&a.out, Some(&a.anchor))?;
    eprintln!(
        "wrote the {}-way FFN average to {}",
        pkgs.len() + 1,
        a.out.display()
    );
    Ok(())
}

/// How to score text: window length, batch and backend.
#[derive(Clone, Debug)]
pub struct EvalSettings {
    /// Tokens per window (capped at the model's context).
    pub seq_len: usize,
    /// Windows per forward pass.
    pub batch_size: usize,
    /// Compute backend.
    pub backend: String,
}

/// Reads and tokenizes `files` with the tokenizer stored in `tok_dir`.
pub fn load_stream(tok_dir: &Path, files: &[PathBuf]) -> Result<Vec<u32>> {
    let tok = text::tokenizer(tok_dir)?;
    let docs = text::documents(files)?;
    text::stream(&docs, &tok)
}

/// Scores a token stream with a checkpoint; shared by `evaluate` and the experiment.
pub fn score(
    ckpt: &Checkpoint,
    stream: &[u32],
    s: &EvalSettings,
    label: Option<&str>,
) -> Result<EvalReport> {
    let device = device_for(&s.backend)?;
    let model = FlexOlmo::from_tensors(&ckpt.config, &ckpt.tensors, &device)?;
    let seq_len = s.seq_len.min(ckpt.config.max_position_embeddings);
    let bar = label.map_or_else(indicatif::ProgressBar::hidden, eval_bar);
    let report = evaluate(&model, stream, seq_len, s.batch_size, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    Ok(report)
}

#[derive(Serialize)]
struct EvaluateOutput<'a> {
    tokens: u64,
    nll: f64,
    perplexity: f64,
    num_experts: usize,
    top_k: usize,
    /// The model's index of each routing column (the `--experts` list, when given).
    experts: &'a [usize],
    routing: &'a [Vec<f64>],
}

/// Runs `evaluate`.
pub fn evaluate_cmd(a: &EvaluateArgs) -> Result<()> {
    let ckpt = assemble(
        &a.model,
        &a.expert,
        a.experts.as_ref().map(|e| e.0.as_slice()),
        a.top_k,
    )?;
    let stream = load_stream(&a.model, &a.text)?;
    let settings = EvalSettings {
        seq_len: a.seq_len,
        batch_size: a.batch_size,
        backend: a.backend.backend.clone(),
    };
    let r = score(&ckpt, &stream, &settings, (!a.json).then_some("evaluate"))?;
    // Routing columns are labelled with the model's own expert indices, so that
    // `--experts 2,5` reports experts 2 and 5, not 0 and 1.
    let ids: Vec<usize> = match &a.experts {
        Some(list) => list.0.clone(),
        None => (0..ckpt.config.num_experts).collect(),
    };
    if a.json {
        let out = EvaluateOutput {
            tokens: r.tokens,
            nll: r.nll,
            perplexity: r.perplexity,
            num_experts: ckpt.config.num_experts,
            top_k: ckpt.config.num_experts_per_tok,
            experts: &ids,
            routing: &r.routing,
        };
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    println!("tokens      {}", r.tokens);
    println!("nll         {:.5} nats/token", r.nll);
    println!("perplexity  {:.4}", r.perplexity);
    println!(
        "experts     {} (top-k {})",
        ckpt.config.num_experts, ckpt.config.num_experts_per_tok
    );
    println!("routing share per layer (expert 0 = public):");
    for (l, shares) in r.routing.iter().enumerate() {
        let cells: Vec<String> = shares
            .iter()
            .zip(&ids)
            .map(|(s, e)| format!("{e}:{:5.1}%", 100.0 * s))
            .collect();
        println!("  layer {l}: {}", cells.join("  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::TrainingArgs;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        training: TrainingArgs,
    }

    #[test]
    fn router_flags_reach_the_training_options() {
        let parsed = Wrapper::try_parse_from([
            "x",
            "--router-margin",
            "2.5",
            "--router-lr-scale",
            "0",
            "--public-loss",
            "0.5",
            "--router-gaussian",
            "0.75",
            "--public-match",
            "2",
        ])
        .expect("the flags parse");
        let options = parsed.training.to_options(0);
        assert_eq!(options.router_margin, 2.5);
        assert_eq!(options.router_lr_scale, 0.0);
        assert_eq!(options.public_loss_weight, 0.5);
        assert_eq!(options.router_gaussian_scale, 0.75);
        assert_eq!(options.public_match_weight, 2.0);
        let defaults = Wrapper::try_parse_from(["x"]).expect("no flags parse");
        assert_eq!(defaults.training.to_options(0).router_margin, 0.0);
        assert_eq!(defaults.training.to_options(0).public_loss_weight, 1.0);
        assert_eq!(defaults.training.to_options(0).router_gaussian_scale, 0.0);
        assert_eq!(defaults.training.to_options(0).public_match_weight, 4.0);
        // The Gaussian row is fitted against the public sample: without one it cannot be.
        assert!(
            Wrapper::try_parse_from(["x", "--router-gaussian", "1", "--no-router-calibration"])
                .is_err()
        );
    }
}
