//! `coordinator anchor pretrain`: the operator pretrains the dense public anchor.
//!
//! The run is seeded, shows a progress bar (tokens/s, loss, ETA), evaluates on
//! held-out public text periodically, saves a resumable state every
//! `--checkpoint-every` steps, computes the public router row `r_pub` per
//! layer at the end, and writes `recipe.json` beside the weights: the exact
//! command, the data and tokenizer digests, the steps and the final loss.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tributary_corpus::{
    TextTokenizer, document_files, read_documents, spread_sample, token_stream,
};
use tributary_model::FlexOlmoConfig;
use tributary_model::checkpoint::{copy_tokenizer, file_sha256};
use tributary_model::device::device_for;
use tributary_model::objective::TrainOptions;
use tributary_model::pretrain::{
    PretrainRun, Pretrained, RESUME_DIR, has_saved_state, init_anchor, load_resume, pretrain,
    set_public_router,
};
use tributary_model::router::CALIBRATION_FILE;

/// Arguments of `coordinator anchor pretrain`.
#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Public training text (`.txt`, `.jsonl` with `text`, or directories).
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Public held-out text, evaluated periodically and at the end.
    #[arg(long, num_args = 1..)]
    pub heldout: Vec<PathBuf>,
    /// Directory holding `tokenizer.json` (and its config files).
    #[arg(long, default_value = "data/tokenizer")]
    pub tokenizer: PathBuf,
    /// Output checkpoint directory (also holds the resumable state under `resume/`).
    #[arg(long)]
    pub out: PathBuf,
    /// Residual width.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// SwiGLU width of the FFN.
    #[arg(long, default_value_t = 344)]
    pub intermediate: usize,
    /// Context length (max_position_embeddings) and training sequence length.
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// RoPE base.
    #[arg(long, default_value_t = 10_000.0)]
    pub rope_theta: f64,
    /// Heads per layer whose query projection is held at zero, so that they
    /// attend uniformly to every earlier position: the residual stream then
    /// carries a running average of the context, which router rows use to
    /// tell one kind of text from another.
    #[arg(long, default_value_t = 0)]
    pub context_heads: usize,
    /// Optimiser steps.
    #[arg(long, default_value_t = 3000)]
    pub steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Decoupled weight decay on matrices.
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Seed of initialisation and batch sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate on held-out text every this many steps.
    #[arg(long, default_value_t = 250)]
    pub eval_every: u64,
    /// Save a resumable state every this many steps (0: never).
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: u64,
    /// Continue from the state saved in `--out/resume`, with the same
    /// settings and data as the run that saved it (checked).
    #[arg(long)]
    pub resume: bool,
    /// Save the state after this step and stop; continue later with the same
    /// command plus `--resume` (to split a long run over several sessions).
    #[arg(long, value_name = "STEP")]
    pub pause_at: Option<u64>,
    /// Compute backend.
    #[arg(long, env = "TRIBUTARY_BACKEND", default_value = "flex")]
    pub backend: String,
}

#[derive(Serialize)]
struct Recipe {
    /// The command that started the run.
    command: String,
    /// The commands that resumed it, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resumed_by: Vec<String>,
    config: FlexOlmoConfig,
    data: Vec<FileDigest>,
    heldout: Vec<FileDigest>,
    tokenizer_sha256: String,
    train_tokens: usize,
    heldout_tokens: usize,
    steps: u64,
    batch_size: usize,
    seq_len: usize,
    context_heads: usize,
    lr: f64,
    warmup: u64,
    weight_decay: f64,
    seed: u64,
    final_heldout_loss: Option<f64>,
    final_heldout_perplexity: Option<f64>,
    model_sha256: String,
    /// Training time over every invocation, and this invocation's time
    /// since it started (reading data, `r_pub`, writing files included).
    seconds: f64,
}

#[derive(Serialize)]
struct FileDigest {
    path: String,
    sha256: String,
}

/// Every file read for `paths` (directories expanded as `read_documents`
/// walks them) with its digest.
fn digests(paths: &[PathBuf]) -> Result<Vec<FileDigest>> {
    document_files(paths)
        .context("listing text files")?
        .into_iter()
        .map(|f| {
            Ok(FileDigest {
                sha256: file_sha256(&f)?,
                path: f.display().to_string(),
            })
        })
        .collect()
}

/// What a resumed run must find unchanged: everything that decides the
/// steps it has yet to take, except `--steps`/`--seed` (checked separately)
/// and how often it evaluates or saves. Text is compared by content (the
/// digests of the files in reading order), not by how its paths are spelt.
#[derive(Serialize)]
struct ResumeSettings<'a> {
    config: &'a FlexOlmoConfig,
    data: Vec<&'a str>,
    heldout: Vec<&'a str>,
    tokenizer_sha256: &'a str,
    batch_size: usize,
    lr: f64,
    warmup: u64,
    weight_decay: f64,
    context_heads: usize,
}

/// The settings of `saved` that differ from `now`, one line each: `name:
/// saved → now`, or for a list of file digests which file changed (named by
/// its path in `files`, this run's files under the same key).
fn changed_settings(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    files: &[(&str, &[FileDigest])],
) -> Vec<String> {
    let (Some(saved), Some(now)) = (saved.as_object(), now.as_object()) else {
        return vec![format!("{saved} → {now}")];
    };
    let show = |v: Option<&serde_json::Value>| {
        let text = v.map_or_else(|| "(none)".to_owned(), ToString::to_string);
        if text.len() > 120 {
            format!("{}…", &text[..text.floor_char_boundary(120)])
        } else {
            text
        }
    };
    let mut keys: Vec<&String> = saved.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let (was, is) = (saved.get(k), now.get(k));
        if was == is {
            continue;
        }
        let listed = files
            .iter()
            .find(|(name, _)| *name == k.as_str())
            .map(|(_, f)| *f);
        match (
            listed,
            was.and_then(|v| v.as_array()),
            is.and_then(|v| v.as_array()),
        ) {
            (Some(paths), Some(was), Some(is)) if was.len() == is.len() => {
                for (i, _) in was.iter().zip(is).enumerate().filter(|(_, (a, b))| a != b) {
                    let path = paths.get(i).map_or("?", |f| f.path.as_str());
                    out.push(format!(
                        "{k}: file {} of {} ({path}) has other contents",
                        i + 1,
                        is.len()
                    ));
                }
            }
            (Some(_), Some(was), Some(is)) => {
                out.push(format!("{k}: {} files → {} files", was.len(), is.len()));
            }
            _ => out.push(format!("{k}: {} → {}", show(was), show(is))),
        }
    }
    out
}

fn tokens(paths: &[PathBuf], tok: &TextTokenizer) -> Result<Vec<u32>> {
    let docs = read_documents(paths).context("reading text")?;
    token_stream(&docs, tok).context("tokenizing")
}

/// The digests of `files`, in order: what a resume compares.
fn contents(files: &[FileDigest]) -> Vec<&str> {
    files.iter().map(|f| f.sha256.as_str()).collect()
}

/// Size of the public text sample written beside the anchor for contributors'
/// router calibration.
pub const CALIBRATION_BYTES: usize = 192 * 1024;

/// Runs `coordinator anchor pretrain`.
pub fn pretrain_cmd(a: &PretrainArgs) -> Result<()> {
    let started = std::time::Instant::now();
    if let Some(p) = a.pause_at
        && p >= a.steps
    {
        bail!(
            "--pause-at {p} is not before the last step (--steps {})",
            a.steps
        );
    }
    let device = device_for(&a.backend)?;
    let tok = TextTokenizer::load(&a.tokenizer)
        .with_context(|| format!("loading tokenizer {}", a.tokenizer.display()))?;
    let train = tokens(&a.data, &tok)?;
    let held = if a.heldout.is_empty() {
        Vec::new()
    } else {
        tokens(&a.heldout, &tok)?
    };
    eprintln!(
        "public text: {} training tokens, {} held-out tokens",
        train.len(),
        held.len()
    );

    let mut config = FlexOlmoConfig::new(
        tok.vocab_size(),
        a.hidden,
        a.intermediate,
        a.layers,
        a.heads,
        1,
        1,
        a.context,
    );
    config.set_rope_theta(a.rope_theta);
    config.eos_token_id = Some(tok.eos_id());
    config.pad_token_id = Some(tok.eos_id());
    let opts = TrainOptions {
        steps: a.steps,
        batch_size: a.batch_size,
        seq_len: a.context,
        lr: a.lr,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        seed: a.seed,
        z_loss_weight: 0.0,
        eval_every: a.eval_every,
        eval_tokens: 65_536,
        ..TrainOptions::default()
    };
    let invocation = std::iter::once("coordinator".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let data_digests = digests(&a.data)?;
    let heldout_digests = digests(&a.heldout)?;
    let tokenizer_sha256 = file_sha256(&a.tokenizer.join("tokenizer.json"))?;
    // Through text, as the saved copy went, so that floats compare bit for bit.
    let settings: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&ResumeSettings {
            config: &config,
            data: contents(&data_digests),
            heldout: contents(&heldout_digests),
            tokenizer_sha256: &tokenizer_sha256,
            batch_size: a.batch_size,
            lr: a.lr,
            warmup: a.warmup,
            weight_decay: a.weight_decay,
            context_heads: a.context_heads,
        })?)?;
    let (start, resume) = if a.resume {
        match load_resume(&a.out)? {
            Some((ckpt, moments, state)) => {
                if ckpt.config != config {
                    bail!(
                        "the saved state in {} was made with another model configuration",
                        a.out.display()
                    );
                }
                if (state.total_steps, state.seed) != (a.steps, a.seed) {
                    bail!(
                        "the saved state in {} is of a run of {} steps with seed {}; resume it with --steps {} --seed {}",
                        a.out.display(),
                        state.total_steps,
                        state.seed,
                        state.total_steps,
                        state.seed
                    );
                }
                // States saved before settings were recorded cannot be checked.
                if let Some(saved) = &state.settings {
                    let files = [
                        ("data", data_digests.as_slice()),
                        ("heldout", heldout_digests.as_slice()),
                    ];
                    let changed = changed_settings(saved, &settings, &files);
                    if !changed.is_empty() {
                        bail!(
                            "the saved state in {} was made with other settings or data; resume with those of the run that saved it (the same command plus --resume):\n  {}",
                            a.out.display(),
                            changed.join("\n  ")
                        );
                    }
                }
                eprintln!("resuming at step {} of {}", state.step, state.total_steps);
                (ckpt, Some((moments, state)))
            }
            None => bail!(
                "--resume given but {} holds no saved state",
                a.out.join(RESUME_DIR).display()
            ),
        }
    } else {
        // Checked first: a run that stopped while it wrote its final files
        // has both, and can still be finished with --resume.
        if has_saved_state(&a.out) {
            bail!(
                "{} holds the saved state of an unfinished run; pass --resume to continue it, or choose another --out",
                a.out.display()
            );
        }
        if a.out.join("model.safetensors").exists() {
            bail!(
                "{} already holds a model; choose another --out",
                a.out.display()
            );
        }
        (init_anchor(&config, a.seed)?, None)
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let bar = ProgressBar::new(a.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "anchor [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if let Some((_, s)) = &resume {
        bar.set_position(s.step);
    }
    let mut smooth: Option<f64> = None;
    let run = PretrainRun {
        start,
        resume,
        opts: opts.clone(),
        out_dir: Some(&a.out),
        checkpoint_every: a.checkpoint_every,
        tokenizer_dir: Some(&a.tokenizer),
        context_heads: a.context_heads,
        pause_at: a.pause_at,
        invocation: Some(invocation),
        settings: Some(settings),
    };
    let held_ref = (!held.is_empty()).then_some(held.as_slice());
    let outcome = pretrain(run, &train, held_ref, &device, &mut |s| {
        let v = smooth.map_or(s.loss, |p| 0.95 * p + 0.05 * s.loss);
        smooth = Some(v);
        bar.set_position(s.step);
        let msg = format!("loss {v:.3}  {:.0} tok/s", s.tokens_per_s);
        if bar.is_hidden() && (s.step % (s.total / 20).max(1) == 0 || s.step == s.total) {
            eprintln!("step {}/{}: {msg}", s.step, s.total);
        }
        bar.set_message(msg);
        if let Some(e) = s.eval_loss {
            let line = format!(
                "step {}: held-out loss {e:.4} (perplexity {:.2})",
                s.step,
                e.exp()
            );
            if bar.is_hidden() {
                eprintln!("{line}");
            }
            bar.println(line);
        }
    })?;
    bar.finish();
    let (mut ckpt, final_loss, invocations, earlier_seconds) = match outcome {
        Pretrained::Finished {
            checkpoint,
            heldout_loss,
            invocations,
            earlier_seconds,
        } => (*checkpoint, heldout_loss, invocations, earlier_seconds),
        Pretrained::Paused { step } => {
            eprintln!(
                "paused after step {step} of {}: the state is in {}; run the same command with --resume (and without --pause-at, or a later one) to continue",
                a.steps,
                a.out.join(RESUME_DIR).display()
            );
            return Ok(());
        }
    };
    eprintln!("computing the public router row r_pub");
    set_public_router(&mut ckpt, &train, a.context, 262_144, &device)?;
    ckpt.save(&a.out, Some(&a.tokenizer))?;
    copy_tokenizer(&a.tokenizer, &a.out)?;
    let docs = read_documents(&a.data).context("reading text")?;
    let sample = a.out.join(CALIBRATION_FILE);
    std::fs::write(&sample, spread_sample(&docs, CALIBRATION_BYTES))
        .with_context(|| format!("writing {}", sample.display()))?;
    let mut invocations = invocations.into_iter();
    let recipe = Recipe {
        command: invocations.next().unwrap_or_default(),
        resumed_by: invocations.collect(),
        config: ckpt.config.clone(),
        data: data_digests,
        heldout: heldout_digests,
        tokenizer_sha256,
        train_tokens: train.len(),
        heldout_tokens: held.len(),
        steps: a.steps,
        batch_size: a.batch_size,
        seq_len: a.context,
        context_heads: a.context_heads,
        lr: a.lr,
        warmup: a.warmup,
        weight_decay: a.weight_decay,
        seed: a.seed,
        final_heldout_loss: final_loss,
        final_heldout_perplexity: final_loss.map(f64::exp),
        model_sha256: file_sha256(&a.out.join("model.safetensors"))?,
        seconds: earlier_seconds + started.elapsed().as_secs_f64(),
    };
    write_json(&a.out.join("recipe.json"), &recipe)?;
    // Last: until every file above is written, --resume can finish the run.
    let resume_dir = a.out.join(RESUME_DIR);
    if resume_dir.exists() {
        std::fs::remove_dir_all(&resume_dir)
            .with_context(|| format!("removing {}", resume_dir.display()))?;
    }
    match final_loss {
        Some(l) => eprintln!(
            "wrote anchor to {} (held-out loss {l:.4}, perplexity {:.2})",
            a.out.display(),
            l.exp()
        ),
        None => eprintln!("wrote anchor to {}", a.out.display()),
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
