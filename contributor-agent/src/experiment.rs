//! The FlexOlmo comparison at small scale: train one expert per domain against the
//! anchor, then measure held-out perplexity per domain for the anchor, each
//! expert's 2-expert model, the merged model, the merged model with each expert
//! removed, and the model soup; plus routing shares. Writes `results.json` and
//! `results.md` and checks the targets of the model issue.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use tributary_model::calibrate::{DEFAULT_TOKENS, recalibrate};
use tributary_model::expert_train::train_expert;
use tributary_model::merge::{merge, select_experts, soup};
use tributary_model::{Checkpoint, ExpertPackage};

use crate::assemble::{DEFAULT_TOP_K, anchor_digest, parse_top_k};
use crate::commands::{EvalSettings, TrainingArgs, load_stream, score};
use crate::progress::{on_step, training_bar};
use crate::text;

/// `contributor-agent experiment`.
#[derive(Args, Debug)]
pub struct ExperimentArgs {
    /// The anchor checkpoint directory.
    #[arg(long, default_value = "models/anchor")]
    pub anchor: PathBuf,
    /// Directory of corpora, one sub-directory per domain holding `train.jsonl` and `heldout.jsonl`.
    #[arg(long, default_value = "data/slices")]
    pub slices: PathBuf,
    /// Domains to train experts on (default: every sub-directory but `public`).
    #[arg(long = "domain")]
    pub domains: Vec<String>,
    /// The public corpus's sub-directory (held-out text for the public check).
    #[arg(long, default_value = "public")]
    pub public: String,
    /// Output directory: experts, `results.json`, `results.md`.
    #[arg(long, default_value = "runs/experiment")]
    pub out: PathBuf,
    /// Reuse experts already trained in `--out` instead of training them again.
    #[arg(long)]
    pub reuse: bool,
    /// Training settings of every expert.
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Experts per token in the merged model.
    #[arg(long, default_value_t = DEFAULT_TOP_K, value_parser = parse_top_k)]
    pub top_k: usize,
    /// Also evaluate the merged model (all experts) with these numbers of
    /// experts per token, e.g. `1,3,6`; rows `merged-top-k:K` of the tables.
    #[arg(long, value_delimiter = ',', value_parser = parse_top_k)]
    pub sweep_top_k: Vec<usize>,
    /// Rounds of joint router calibration from statistics (`recalibrate`) for
    /// the rows `merged-joint` and `merged-joint-without:D` (opt-out then means
    /// recalibrating without D); default: one per layer, the exact
    /// layer-by-layer fit; 0 skips them.
    #[arg(long)]
    pub joint_rounds: Option<usize>,
    /// Compute backend.
    #[arg(long, default_value = "flex")]
    pub backend: String,
}

/// Everything the experiment measured.
#[derive(Debug, Serialize)]
pub struct ExperimentResults {
    /// Domains with experts, in expert order (expert i+1 = domains\[i\]).
    pub domains: Vec<String>,
    /// Evaluation sets: the domains, then the public corpus.
    pub eval_sets: Vec<String>,
    /// Experts per token in merged models.
    pub top_k: usize,
    /// Other numbers of experts per token the merged model was evaluated with.
    pub sweep_top_k: Vec<usize>,
    /// Held-out perplexity: model name → evaluation set → perplexity.
    pub perplexity: BTreeMap<String, BTreeMap<String, f64>>,
    /// Merged model: evaluation set → share of routing slots per expert (averaged over layers).
    pub routing: BTreeMap<String, Vec<f64>>,
    /// Each target of the issue, with its figure and whether it holds.
    pub targets: Vec<Target>,
    /// Expert digests, by domain.
    pub experts: BTreeMap<String, String>,
    /// Router calibration of each expert, by domain: share of sampled own tokens
    /// and of public tokens on which its row beats `r_pub` (from its manifest).
    pub calibration: BTreeMap<String, [Option<f64>; 2]>,
}

/// One checked target.
#[derive(Debug, Serialize)]
pub struct Target {
    /// What is checked.
    pub name: String,
    /// The measured figure, as text.
    pub figure: String,
    /// Whether it holds.
    pub ok: bool,
}

fn heldout(slices: &Path, set: &str) -> PathBuf {
    slices.join(set).join("heldout.jsonl")
}

/// Runs the experiment.
pub fn run(a: &ExperimentArgs) -> Result<()> {
    let domains = if a.domains.is_empty() {
        list_domains(&a.slices, &a.public)?
    } else {
        a.domains.clone()
    };
    if domains.is_empty() {
        bail!("no domains under {}", a.slices.display());
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let anchor = Checkpoint::load(&a.anchor)
        .with_context(|| format!("loading anchor {}", a.anchor.display()))?;
    let digest = anchor_digest(&a.anchor)?;
    let device = tributary_model::device::device_for(&a.backend)?;
    let tok = text::tokenizer(&a.anchor)?;

    let calibration = a.training.calibration_stream(&a.anchor, &tok)?;
    if a.joint_rounds.is_some_and(|r| r > 0) && calibration.is_none() {
        bail!(
            "--joint-rounds contrasts every row with public text: it needs the calibration \
             sample that --no-router-calibration turns off"
        );
    }

    // 1. One expert per domain.
    let mut experts: Vec<ExpertPackage> = Vec::new();
    let mut train_streams = Vec::new();
    for d in &domains {
        let dir = a.out.join("experts").join(d);
        let train_docs = text::documents(&[a.slices.join(d).join("train.jsonl")])?;
        let train = text::stream(&train_docs, &tok)?;
        if a.reuse && dir.join("manifest.json").is_file() {
            experts.push(ExpertPackage::load(&dir)?);
            train_streams.push(train);
            eprintln!("reusing expert for {d}");
            continue;
        }
        let held_docs = text::documents(&[heldout(&a.slices, d)])?;
        let held = text::stream(&held_docs, &tok)?;
        let opts = a.training.to_options(0);
        let bar = training_bar(opts.steps, d);
        let mut smooth = None;
        let pkg = train_expert(
            &anchor,
            &digest,
            &train,
            Some(&held),
            calibration.as_deref(),
            &opts,
            &device,
            &mut |s| on_step(&bar, s, &mut smooth),
        )?;
        bar.finish();
        pkg.save(&dir)?;
        experts.push(pkg);
        train_streams.push(train);
    }

    // 2. Models to compare.
    let eval_sets: Vec<String> = domains.iter().cloned().chain([a.public.clone()]).collect();
    let merged = merge(&anchor, &digest, &experts, a.top_k)?;
    let mut ppl: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let mut routing = BTreeMap::new();
    let settings = EvalSettings {
        seq_len: a.training.seq_len,
        batch_size: a.training.batch_size,
        backend: a.backend.clone(),
    };
    let mut streams = BTreeMap::new();
    for set in &eval_sets {
        streams.insert(
            set.clone(),
            load_stream(&a.anchor, &[heldout(&a.slices, set)])?,
        );
    }
    let mut eval =
        |name: &str, ckpt: &Checkpoint, sets: &[String]| -> Result<BTreeMap<String, Vec<f64>>> {
            let mut shares = BTreeMap::new();
            for set in sets {
                let r = score(
                    ckpt,
                    &streams[set],
                    &settings,
                    Some(&format!("{name} on {set}")),
                )?;
                eprintln!("{name:>24} on {set:<12} perplexity {:.3}", r.perplexity);
                ppl.entry(name.to_owned())
                    .or_default()
                    .insert(set.clone(), r.perplexity);
                let n = r.routing.first().map_or(0, Vec::len);
                let mean: Vec<f64> = (0..n)
                    .map(|e| r.routing.iter().map(|l| l[e]).sum::<f64>() / r.routing.len() as f64)
                    .collect();
                shares.insert(set.clone(), mean);
            }
            Ok(shares)
        };
    eval("anchor", &anchor, &eval_sets)?;
    for (i, d) in domains.iter().enumerate() {
        let two = merge(&anchor, &digest, std::slice::from_ref(&experts[i]), 2)?;
        eval(&format!("expert:{d}"), &two, std::slice::from_ref(d))?;
    }
    routing.extend(eval("merged", &merged, &eval_sets)?);
    let sweep: Vec<usize> = a
        .sweep_top_k
        .iter()
        .copied()
        .filter(|&k| k != a.top_k)
        .collect();
    let all: Vec<usize> = (0..=domains.len()).collect();
    for &k in &sweep {
        let m = select_experts(&merged, &all, k)?;
        eval(&format!("merged-top-k:{k}"), &m, &eval_sets)?;
    }
    for (i, d) in domains.iter().enumerate() {
        let keep: Vec<usize> = (0..=domains.len()).filter(|&e| e != i + 1).collect();
        let without = select_experts(&merged, &keep, a.top_k)?;
        eval(&format!("merged-without:{d}"), &without, &eval_sets)?;
    }
    eval("soup", &soup(&anchor, &digest, &experts)?, &eval_sets)?;
    let rounds = a.joint_rounds.unwrap_or(anchor.config.num_hidden_layers);
    let joint = rounds > 0 && calibration.is_some();
    if let (true, Some(public)) = (joint, calibration.as_deref()) {
        let joint_model = |keep: &[usize]| -> Result<Checkpoint> {
            let model = select_experts(&merged, keep, a.top_k)?;
            let owns: Vec<&[u32]> = keep[1..]
                .iter()
                .map(|&e| train_streams[e - 1].as_slice())
                .collect();
            let seq = a.training.seq_len;
            Ok(recalibrate(
                &model,
                public,
                &owns,
                rounds,
                seq,
                DEFAULT_TOKENS,
                &device,
                &mut |r| {
                    eprintln!("joint calibration: round {r} of {rounds}");
                },
            )?)
        };
        eval("merged-joint", &joint_model(&all)?, &eval_sets)?;
        for (i, d) in domains.iter().enumerate() {
            let keep: Vec<usize> = (0..=domains.len()).filter(|&e| e != i + 1).collect();
            eval(
                &format!("merged-joint-without:{d}"),
                &joint_model(&keep)?,
                &eval_sets,
            )?;
        }
    }

    // 3. Targets.
    let mut targets = check_targets(&domains, &a.public, &ppl, "merged");
    if joint {
        targets.extend(check_targets(&domains, &a.public, &ppl, "merged-joint"));
    }
    let results = ExperimentResults {
        domains: domains.clone(),
        eval_sets,
        top_k: a.top_k,
        sweep_top_k: sweep,
        perplexity: ppl,
        routing,
        targets,
        experts: domains
            .iter()
            .cloned()
            .zip(experts.iter().map(|e| e.digest().to_owned()))
            .collect(),
        calibration: domains
            .iter()
            .cloned()
            .zip(experts.iter().map(|e| {
                let t = &e.manifest.training;
                [t.router_own_positive, t.router_public_positive]
            }))
            .collect(),
    };
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(a.out.join("results.json"), json)?;
    let md = markdown(&results);
    std::fs::write(a.out.join("results.md"), &md)?;
    println!("{md}");
    Ok(())
}

/// The domains of a slices directory: sub-directories holding `train.jsonl`,
/// except the public corpus's, sorted.
pub fn list_domains(slices: &Path, public: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(slices).with_context(|| format!("listing {}", slices.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().join("train.jsonl").is_file() && name != public {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn get(ppl: &BTreeMap<String, BTreeMap<String, f64>>, model: &str, set: &str) -> f64 {
    ppl.get(model)
        .and_then(|m| m.get(set))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Checks the model issue's targets against the measured perplexities.
pub fn check_targets(
    domains: &[String],
    public: &str,
    ppl: &BTreeMap<String, BTreeMap<String, f64>>,
    merged_name: &str,
) -> Vec<Target> {
    let mut t = Vec::new();
    let tag = if merged_name == "merged" {
        String::new()
    } else {
        format!("[{merged_name}] ")
    };
    let pct = |x: f64| format!("{:+.1}%", 100.0 * x);
    for d in domains {
        let base = get(ppl, "anchor", d);
        let exp = get(ppl, &format!("expert:{d}"), d);
        let gain = 1.0 - exp / base;
        if tag.is_empty() {
            t.push(Target {
                name: format!("expert {d} lowers {d} perplexity by >= 20%"),
                figure: pct(-gain),
                ok: gain >= 0.20,
            });
        }
        let merged = get(ppl, merged_name, d);
        let rel = merged / exp - 1.0;
        t.push(Target {
            name: format!("{tag}merged within 5% of expert {d} on {d}"),
            figure: pct(rel),
            ok: rel.abs() <= 0.05 || merged <= exp,
        });
        let without = get(ppl, &format!("{merged_name}-without:{d}"), d);
        let back = without / base - 1.0;
        t.push(Target {
            name: format!("{tag}removing {d} returns {d} to within 10% of the anchor"),
            figure: pct(back),
            ok: back.abs() <= 0.10,
        });
        let mut worst: f64 = 0.0;
        for o in domains
            .iter()
            .filter(|o| *o != d)
            .chain(std::iter::once(&public.to_owned()))
        {
            let moved =
                get(ppl, &format!("{merged_name}-without:{d}"), o) / get(ppl, merged_name, o) - 1.0;
            if moved.abs() > worst.abs() || moved.is_nan() {
                worst = moved;
            }
        }
        t.push(Target {
            name: format!("{tag}removing {d} moves every other set by <= 2%"),
            figure: pct(worst),
            ok: worst.abs() <= 0.02,
        });
    }
    let pub_rel = get(ppl, merged_name, public) / get(ppl, "anchor", public) - 1.0;
    t.push(Target {
        name: format!("{tag}merged within 2% of the anchor on public text"),
        figure: pct(pub_rel),
        ok: pub_rel.abs() <= 0.02 || pub_rel < 0.0,
    });
    let avg = |m: &str| domains.iter().map(|d| get(ppl, m, d)).sum::<f64>() / domains.len() as f64;
    let (m, s) = (avg(merged_name), avg("soup"));
    t.push(Target {
        name: format!("{tag}merged beats the soup on average domain perplexity"),
        figure: format!("{m:.2} vs {s:.2}"),
        ok: m < s,
    });
    t
}

/// The results as a markdown table.
pub fn markdown(r: &ExperimentResults) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Held-out perplexity (top-k = {} for merged models; lower is better)\n\n",
        r.top_k
    ));
    s.push_str("| model |");
    for set in &r.eval_sets {
        s.push_str(&format!(" {set} |"));
    }
    s.push_str("\n|---|");
    for _ in &r.eval_sets {
        s.push_str("---:|");
    }
    s.push('\n');
    let mut order = vec!["anchor".to_owned()];
    order.extend(r.domains.iter().map(|d| format!("expert:{d}")));
    order.push("merged".into());
    order.extend(r.sweep_top_k.iter().map(|k| format!("merged-top-k:{k}")));
    order.extend(r.domains.iter().map(|d| format!("merged-without:{d}")));
    order.push("soup".into());
    order.push("merged-joint".into());
    order.extend(
        r.domains
            .iter()
            .map(|d| format!("merged-joint-without:{d}")),
    );
    for model in order.into_iter().filter(|m| r.perplexity.contains_key(m)) {
        s.push_str(&format!("| {model} |"));
        for set in &r.eval_sets {
            match r.perplexity.get(&model).and_then(|m| m.get(set)) {
                Some(v) => s.push_str(&format!(" {v:.2} |")),
                None => s.push_str(" |"),
            }
        }
        s.push('\n');
    }
    s.push_str(
        "\nRouting share of the merged model (mean over layers; expert 0 = public)\n\n| text |",
    );
    s.push_str(" public |");
    for d in &r.domains {
        s.push_str(&format!(" {d} |"));
    }
    s.push_str("\n|---|");
    for _ in 0..=r.domains.len() {
        s.push_str("---:|");
    }
    s.push('\n');
    for set in &r.eval_sets {
        if let Some(shares) = r.routing.get(set) {
            s.push_str(&format!("| {set} |"));
            for v in shares {
                s.push_str(&format!(" {:.1}% |", 100.0 * v));
            }
            s.push('\n');
        }
    }
    if r.calibration.values().any(|c| c[0].is_some()) {
        s.push_str(
            "\nRouter calibration (tokens on which the expert's row beats `r_pub`, anchor features)\n\n\
             | expert | own text | public text |\n|---|---:|---:|\n",
        );
        let cell = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{:.1}%", 100.0 * v));
        for (d, [own, public]) in &r.calibration {
            s.push_str(&format!("| {d} | {} | {} |\n", cell(*own), cell(*public)));
        }
    }
    s.push_str("\nTargets\n\n| target | figure | holds |\n|---|---:|:---:|\n");
    for t in &r.targets {
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            t.name,
            t.figure,
            if t.ok { "yes" } else { "**no**" }
        ));
    }
    s
}
