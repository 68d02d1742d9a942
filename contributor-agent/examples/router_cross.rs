//! Diagnostic: how router rows fitted independently by each contributor compete
//! once they are merged, measured on the anchor's router inputs (exact for
//! layer 0, where no expert has acted yet).
//!
//! For every domain of a slices directory it fits `w_i = r_i − r_pub` the way
//! `train` initialises it, then routes each domain's held-out tokens top-2 over
//! `[0 (public), w_1·x, …, w_n·x]` and prints, per domain, the share of tokens
//! whose top-2 holds their own expert, and the share routed exactly to
//! `{own, public}` (the pair each expert was trained in).
//!
//! ```sh
//! cargo run --release -p contributor-agent --example router_cross -- models/anchor data/slices [extra-negatives]
//! ```
//!
//! `extra-negatives` adds synthetic negatives to the public sample: `random`
//! (uniformly random token windows), `shuffled` (the contributor's own tokens
//! in random order) or `none` (the default); `margin` is `train --router-margin`;
//! `l2` the regulariser of the fit (default 1e-2).
//!
//! Instead of negatives, `lda` fits each row as the Gaussian log-density ratio of
//! own against public text with the public covariance
//! ([`fit_gaussian_offsets`], the intercept folded into the row), and
//! `lda-bias` keeps the intercept as a router bias (which `flex_olmo` does not
//! have: the ideal the folded row approximates); `l2` is then the ridge.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use contributor_agent::commands::load_stream;
use contributor_agent::experiment::list_domains;
use tributary_model::router::{RouterFeatures, fit_gaussian_offsets, fit_offsets, router_features};
use tributary_model::{Checkpoint, FlexOlmo};

const SEQ: usize = 256;
const TOKENS: usize = 16_384;

fn main() -> Result<()> {
    let usage =
        "usage: router_cross ANCHOR SLICES [random|shuffled|none|lda|lda-bias] [margin] [l2]";
    let args: Vec<String> = std::env::args().collect();
    let anchor = PathBuf::from(args.get(1).context(usage)?);
    let slices = PathBuf::from(args.get(2).context(usage)?);
    let extra = args.get(3).map_or("none", String::as_str);
    let margin: f64 = args.get(4).map_or(Ok(0.0), |m| m.parse())?;
    let l2: f64 = args.get(5).map_or(Ok(1e-2), |m| m.parse())?;
    let device = tributary_model::device::device_for("flex")?;
    let ckpt = Checkpoint::load(&anchor)?;
    let model = FlexOlmo::from_tensors(&ckpt.config, &ckpt.tensors, &device)?;
    let features = |p: PathBuf| -> Result<RouterFeatures> {
        Ok(router_features(
            &model,
            &load_stream(&anchor, &[p])?,
            SEQ,
            TOKENS,
        )?)
    };
    let public = features(anchor.join("router-calibration.txt"))?;
    let vocab = ckpt.config.vocab_size as u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let random: Vec<u32> = (0..TOKENS).map(|_| (next() % vocab) as u32).collect();
    let random = router_features(&model, &random, SEQ, TOKENS)?;
    let domains = list_domains(&slices, "public")?;
    let mut offsets = BTreeMap::new();
    for d in &domains {
        let stream = load_stream(&anchor, &[slices.join(d).join("train.jsonl")])?;
        let own = router_features(&model, &stream, SEQ, TOKENS)?;
        let mut negatives = public.clone();
        match extra {
            "random" => negatives.append(&random),
            "shuffled" => {
                let mut shuffled = stream[..stream.len().min(TOKENS)].to_vec();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, (next() % (i as u64 + 1)) as usize);
                }
                negatives.append(&router_features(&model, &shuffled, SEQ, TOKENS)?);
            }
            _ => {}
        }
        let rows: Vec<(Vec<f32>, f32)> = match extra {
            "lda" | "lda-bias" => fit_gaussian_offsets(&own, &public, l2, extra == "lda")?
                .into_iter()
                .map(|f| (f.offset, f.intercept))
                .collect(),
            _ => fit_offsets(&own, &negatives, l2, margin, &device)?
                .into_iter()
                .map(|f| (f.offset, 0.0))
                .collect(),
        };
        offsets.insert(d.clone(), rows);
    }
    let h = ckpt.config.hidden_size;
    let mut sets = domains.clone();
    sets.push("public".into());
    println!("negatives: public + {extra}, margin {margin}, l2 {l2}");
    println!("| text | layer | own in top-2 | top-2 = own+public | public in top-2 |");
    println!("|---|---:|---:|---:|---:|");
    for set in &sets {
        let held = features(slices.join(set).join("heldout.jsonl"))?;
        for (l, x) in held.layers.iter().enumerate() {
            let (mut own_in, mut pair, mut pub_in) = (0usize, 0usize, 0usize);
            let n = x.len() / h;
            for row in x.chunks(h) {
                let mut scores: Vec<(f32, &str)> = vec![(0.0, "public")];
                for (d, fits) in &offsets {
                    let (w, c) = &fits[l];
                    let s = row.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + c;
                    scores.push((s, d.as_str()));
                }
                scores.sort_by(|a, b| b.0.total_cmp(&a.0));
                let top = [scores[0].1, scores[1].1];
                let has_own = top.contains(&set.as_str());
                let has_pub = top.contains(&"public");
                own_in += usize::from(has_own);
                pub_in += usize::from(has_pub);
                pair += usize::from(has_own && has_pub);
            }
            let pct = |v: usize| 100.0 * v as f64 / n.max(1) as f64;
            println!(
                "| {set} | {l} | {:.1}% | {:.1}% | {:.1}% |",
                pct(own_in),
                pct(pair),
                pct(pub_in)
            );
        }
    }
    Ok(())
}
