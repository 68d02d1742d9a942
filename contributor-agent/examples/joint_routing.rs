//! Upper bound: how good would the merged model be if the router rows were
//! fitted *jointly*, with every contributor's text, instead of each row against
//! public text only?
//!
//! Takes the experts of an experiment run (`experiment --out RUN` writes them to
//! `RUN/experts/<domain>`), merges them, and refits the rows layer by layer on
//! the merged model's own router inputs: row `i` separates domain `i`'s training
//! text from public text and from every other domain's text (the same
//! regularised logistic fit `train` uses). Then it prints held-out perplexity
//! of the merged model with the rows as trained and as refitted. No
//! contributor can run this fit under the current protocol (it needs everyone's
//! text); it measures what routing, rather than the experts, costs.
//!
//! ```sh
//! cargo run --release -p contributor-agent --example joint_routing -- models/anchor data/slices runs/experiment [lda SCALES | lda-pooled SCALES | pooled | exclusive MARGINS [opt-out]]
//! ```
//!
//! With `lda 0.5,1,2` it instead sets every row to what each contributor could
//! compute alone: the Gaussian log-density ratio of its training text against
//! the public calibration sample on the *anchor's* router inputs, with the
//! public covariance ([`fit_gaussian_offsets`], intercept folded into the row),
//! times each scale, and prints the merged model's perplexities for each.
//!
//! With `pooled` the rows are refitted layer by layer as in the joint fit, but
//! as Gaussian log-density ratios against public text with the pooled
//! within-class covariance of all domains and public text
//! ([`fit_gaussian_offsets_with`]): what a coordinator could compute from each
//! contributor's per-layer mean and covariance of its router inputs, without
//! any text. `lda-pooled SCALES` is `lda` with that pooled covariance, all on
//! the anchor's router inputs: statistics a contributor could send with its
//! expert in one round.
//!
//! With `exclusive MARGINS [opt-out]` every row is refitted from statistics
//! measured on each contributor's own 2-expert model
//! ([`fit_exclusive_offset`]): keep the trained score on its own text, sit
//! `margin` below `r_pub` on everyone else's; `opt-out` adds the model without
//! each expert, rows refitted or the row only deleted.

use std::path::PathBuf;

use anyhow::{Context, Result};
use contributor_agent::assemble::{anchor_digest, load_experts};
use contributor_agent::commands::load_stream;
use tributary_model::calibrate::{RouterStats, fit_exclusive_offset};
use tributary_model::eval::evaluate;
use tributary_model::merge::{merge, select_experts};
use tributary_model::router::{
    RouterFeatures, fit_gaussian_offsets, fit_gaussian_offsets_with, fit_offsets, router_features,
};
use tributary_model::weights::HostTensor;
use tributary_model::{Checkpoint, FlexOlmo, names};

const SEQ: usize = 256;
const TOKENS: usize = 16_384;

fn layer_only(f: &RouterFeatures, l: usize) -> RouterFeatures {
    RouterFeatures {
        hidden: f.hidden,
        rows: f.rows,
        layers: vec![f.layers[l].clone()],
    }
}

fn perplexities(
    ckpt: &Checkpoint,
    device: &burn::tensor::Device,
    held: &[(String, Vec<u32>)],
) -> Result<Vec<f64>> {
    let model = FlexOlmo::from_tensors(&ckpt.config, &ckpt.tensors, device)?;
    held.iter()
        .map(|(_, s)| Ok(evaluate(&model, s, SEQ, 8, &mut |_, _| {})?.perplexity))
        .collect()
}

/// A comma-separated list of numbers, `default` when absent.
fn numbers<T: std::str::FromStr>(arg: Option<&String>, default: &str) -> Result<Vec<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(arg
        .map_or(default, String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?)
}

/// Every sample centred on its own mean, stacked: their covariance is the
/// pooled within-class covariance.
fn pooled_spread(public: &RouterFeatures, owns: &[RouterFeatures]) -> RouterFeatures {
    let mut spread = public.centred();
    for own in owns {
        spread.append(&own.centred());
    }
    spread
}

fn main() -> Result<()> {
    let usage = "usage: joint_routing ANCHOR SLICES RUN [lda SCALES | lda-pooled SCALES | pooled | exclusive MARGINS [opt-out]]";
    let args: Vec<String> = std::env::args().collect();
    let anchor_dir = PathBuf::from(args.get(1).context(usage)?);
    let slices = PathBuf::from(args.get(2).context(usage)?);
    let run = PathBuf::from(args.get(3).context(usage)?);
    let device = tributary_model::device::device_for("flex")?;
    let anchor = Checkpoint::load(&anchor_dir)?;
    let digest = anchor_digest(&anchor_dir)?;
    let stream = |p: PathBuf| load_stream(&anchor_dir, &[p]);
    let mut domains = Vec::new();
    for e in std::fs::read_dir(run.join("experts"))? {
        domains.push(e?.file_name().to_string_lossy().into_owned());
    }
    domains.sort();
    let dirs: Vec<PathBuf> = domains
        .iter()
        .map(|d| run.join("experts").join(d))
        .collect();
    let experts = load_experts(&dirs)?;
    let train: Vec<Vec<u32>> = domains
        .iter()
        .map(|d| stream(slices.join(d).join("train.jsonl")))
        .collect::<Result<_>>()?;
    let public = stream(anchor_dir.join("router-calibration.txt"))?;
    let mut held = Vec::new();
    for d in domains.iter().chain(std::iter::once(&"public".to_owned())) {
        held.push((d.clone(), stream(slices.join(d).join("heldout.jsonl"))?));
    }
    let mut merged = merge(&anchor, &digest, &experts, 2)?;
    let before = perplexities(&merged, &device, &held)?;
    let h = anchor.config.hidden_size;
    let header = |held: &[(String, Vec<u32>)]| {
        println!(
            "| merged, top-2 | {} |",
            held.iter()
                .map(|(d, _)| d.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|{}", "---:|".repeat(held.len()));
    };
    let row = |v: &[f64]| {
        v.iter()
            .map(|p| format!("{p:.1}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mode = args.get(4).map_or("joint", String::as_str);
    if mode == "lda" || mode == "lda-pooled" {
        let scales: Vec<f32> = numbers(args.get(5), "1")?;
        let model = FlexOlmo::from_tensors(&anchor.config, &anchor.tensors, &device)?;
        let public_f = router_features(&model, &public, SEQ, TOKENS)?;
        let owns = train
            .iter()
            .map(|s| Ok(router_features(&model, s, SEQ, TOKENS)?))
            .collect::<Result<Vec<_>>>()?;
        let spread = (mode == "lda-pooled").then(|| pooled_spread(&public_f, &owns));
        let fits = owns
            .iter()
            .map(|own| {
                Ok(match &spread {
                    Some(spread) => fit_gaussian_offsets_with(own, &public_f, spread, 1e-2, true)?,
                    None => fit_gaussian_offsets(own, &public_f, 1e-2, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        header(&held);
        println!("| rows as trained | {} |", row(&before));
        for scale in scales {
            for l in 0..anchor.config.num_hidden_layers {
                let r_pub = anchor.tensors.get(&names::router(l))?.data.clone();
                let mut rows = r_pub.clone();
                for fit in &fits {
                    rows.extend(r_pub.iter().zip(&fit[l].offset).map(|(a, b)| a + scale * b));
                }
                merged.tensors.insert(
                    names::router(l),
                    HostTensor::new(vec![domains.len() + 1, h], rows)?,
                );
            }
            let p = perplexities(&merged, &device, &held)?;
            println!("| Gaussian rows ×{scale} | {} |", row(&p));
        }
        return Ok(());
    }
    if mode == "exclusive" {
        let margins: Vec<f64> = numbers(args.get(5), "8")?;
        // Every party's statistics on the stream it would see under ideal
        // routing: public text under the anchor, each domain under its own
        // 2-expert model. One round, no merged model needed.
        let public_s = RouterStats::measure(&anchor, &digest, 0, &public, SEQ, TOKENS, &device)?;
        let own_s = experts
            .iter()
            .zip(&train)
            .enumerate()
            .map(|(i, (e, t))| {
                let two = merge(&anchor, &digest, std::slice::from_ref(e), 2)?;
                let d = two.digest()?;
                Ok(RouterStats::measure(
                    &two,
                    &d,
                    i + 1,
                    t,
                    SEQ,
                    TOKENS,
                    &device,
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        let rows_for = |keep: &[usize], margin: f64| -> Result<Checkpoint> {
            let mut m = select_experts(&merged, keep, 2)?;
            for l in 0..anchor.config.num_hidden_layers {
                let trained = merged.tensors.get(&names::router(l))?.data.clone();
                let r_pub = trained[..h].to_vec();
                let mut rows = r_pub.clone();
                for &k in &keep[1..] {
                    let a: Vec<f32> = trained[k * h..(k + 1) * h]
                        .iter()
                        .zip(&r_pub)
                        .map(|(r, p)| r - p)
                        .collect();
                    let mut others = vec![&public_s.layers[l]];
                    others.extend(
                        keep[1..]
                            .iter()
                            .filter(|&&j| j != k)
                            .map(|&j| &own_s[j - 1].layers[l]),
                    );
                    let w =
                        fit_exclusive_offset(&own_s[k - 1].layers[l], &a, &others, margin, 1e-2)?;
                    rows.extend(r_pub.iter().zip(&w).map(|(p, w)| p + w));
                }
                m.tensors.insert(
                    names::router(l),
                    HostTensor::new(vec![keep.len(), h], rows)?,
                );
            }
            Ok(m)
        };
        header(&held);
        println!("| rows as trained | {} |", row(&before));
        let all: Vec<usize> = (0..=domains.len()).collect();
        for margin in margins {
            let refitted = rows_for(&all, margin)?;
            let p = perplexities(&refitted, &device, &held)?;
            println!("| exclusive rows, margin {margin} | {} |", row(&p));
            if args.get(6).is_some_and(|a| a == "opt-out") {
                for (i, d) in domains.iter().enumerate() {
                    let keep: Vec<usize> = all.iter().copied().filter(|&e| e != i + 1).collect();
                    let p = perplexities(&rows_for(&keep, margin)?, &device, &held)?;
                    println!("| … without {d} (refitted) | {} |", row(&p));
                    let p = perplexities(&select_experts(&refitted, &keep, 2)?, &device, &held)?;
                    println!("| … without {d} (row deleted) | {} |", row(&p));
                }
            }
        }
        return Ok(());
    }
    let pooled_gaussian = mode == "pooled";
    for l in 0..anchor.config.num_hidden_layers {
        let model = FlexOlmo::from_tensors(&merged.config, &merged.tensors, &device)?;
        let own: Vec<RouterFeatures> = train
            .iter()
            .map(|s| Ok(layer_only(&router_features(&model, s, SEQ, TOKENS)?, l)))
            .collect::<Result<_>>()?;
        let public_f = layer_only(&router_features(&model, &public, SEQ, TOKENS)?, l);
        let spread = pooled_gaussian.then(|| pooled_spread(&public_f, &own));
        let r_pub = anchor.tensors.get(&names::router(l))?.data.clone();
        let mut rows = r_pub.clone();
        for (i, f) in own.iter().enumerate() {
            let offset = if let Some(spread) = &spread {
                fit_gaussian_offsets_with(f, &public_f, spread, 1e-2, true)?
                    .swap_remove(0)
                    .offset
            } else {
                let mut negatives = public_f.clone();
                for (j, other) in own.iter().enumerate() {
                    if j != i {
                        negatives.append(other);
                    }
                }
                let fit = fit_offsets(f, &negatives, 1e-2, 0.0, &device)?;
                eprintln!(
                    "layer {l} {}: own {:.1}% positive, others and public {:.1}%",
                    domains[i],
                    100.0 * fit[0].own_positive,
                    100.0 * fit[0].public_positive
                );
                fit[0].offset.clone()
            };
            rows.extend(r_pub.iter().zip(&offset).map(|(a, b)| a + b));
        }
        merged.tensors.insert(
            names::router(l),
            HostTensor::new(vec![domains.len() + 1, h], rows)?,
        );
    }
    let after = perplexities(&merged, &device, &held)?;
    header(&held);
    println!("| rows as trained | {} |", row(&before));
    let label = if pooled_gaussian {
        "Gaussian rows, pooled covariance"
    } else {
        "rows refitted jointly"
    };
    println!("| {label} | {} |", row(&after));
    Ok(())
}
