//! Joint router calibration from statistics.
//!
//! Each contributor's router row is fitted against public text only, on the
//! anchor's router inputs ([`crate::router`]). Once experts are merged, two
//! things change that no contributor sees alone: the rows compete with each
//! other, and every layer after the first receives inputs shaped by the other
//! experts. Rows fitted jointly on the merged model's own router inputs route
//! far better (EXPERIMENT.md), but a joint fit on everyone's text is exactly
//! what FlexOlmo must not need.
//!
//! This module does it from statistics. A contributor runs the published
//! merged model on its own text and returns, per layer, the token count, mean
//! and second moment of the router inputs ([`RouterStats`]); the coordinator
//! measures the same on public text. Row `i` then becomes `r_pub + w_i`, the
//! Gaussian log-density ratio of contributor `i`'s text against public text
//! under the *pooled* within-class covariance of all of them, its intercept
//! folded into the row by least squares on every party's text ([`refit_rows`],
//! [`Fold`]). The scores of all rows are then log-density ratios against one
//! baseline under one covariance: comparable (up to that least-squares fold).
//! Every party weighs the same in the pooled covariance, whatever token count
//! it claims.
//!
//! One round refits every layer on the inputs of the model the statistics were
//! measured on. The first layer's inputs do not depend on routing, so it is
//! exact after one round; layer `l` is exact after `l + 1` rounds (each round
//! measured on the previous round's output), so `num_hidden_layers` rounds
//! equal a layer-by-layer refit. [`recalibrate`] runs the rounds in one process
//! when one party holds all the text (experiments, tests).
//!
//! What a contributor discloses: per layer, a mean and a second-moment matrix
//! of its text's hidden states under the merged model (`hidden × hidden`
//! values) and a token count — aggregate statistics, no token, no document.
//! At least `hidden` tokens are required; the default samples 16 384. The
//! fewer the tokens, the more the statistics say about each of them.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::checkpoint::Checkpoint;
use crate::error::ModelError;
use crate::model::FlexOlmo;
use crate::names;
use crate::router::{add_ridge, cholesky_solve, gaussian_row, mixture, moments, router_features};
use crate::weights::{HostTensor, write_atomic};

/// The `kind` recorded in a statistics file.
pub const STATS_KIND: &str = "tributary-router-stats/1";

/// Tokens each party samples per round by default.
pub const DEFAULT_TOKENS: usize = 16_384;

/// Regulariser of the covariance and second moment (times their mean diagonal).
pub const DEFAULT_RIDGE: f64 = 1e-2;

/// The text on which a refitted row's folded intercept is fitted (the router
/// has no bias, so the Gaussian intercept `c` becomes `δ` with `δ·x ≈ c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    /// The contributor's own text and public text, half each.
    OwnAndPublic,
    /// Every party's text, equally weighted: the texts the rows compete on.
    AllParties,
}

/// How [`recalibrate`] folds intercepts (measured in EXPERIMENT.md).
pub const DEFAULT_FOLD: Fold = Fold::AllParties;

/// One layer's moments of router inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerMoments {
    /// `E[x]`, `hidden` values.
    pub mean: Vec<f64>,
    /// `E[x xᵀ]`, `hidden × hidden`, row-major.
    pub second: Vec<f64>,
}

/// Per-layer moments of one text's router inputs under one model.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterStats {
    /// Residual width.
    pub hidden: usize,
    /// Tokens the moments are taken over.
    pub tokens: u64,
    /// Tokens per window the text was run in (router inputs depend on the
    /// position in the window, so every party must use the same).
    pub seq_len: usize,
    /// SHA-256 of the `model.safetensors` of the checkpoint measured.
    pub model: String,
    /// The expert whose contributor's text this is (0: public text).
    pub expert: usize,
    /// One entry per layer.
    pub layers: Vec<LayerMoments>,
}

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::Argument(format!("router statistics: {}", msg.into()))
}

impl RouterStats {
    /// Runs `ckpt` (whose digest is `model`) over up to `max_tokens` tokens of
    /// `stream`, in windows of `seq_len`, and takes the moments of every layer's
    /// router inputs.
    pub fn measure(
        ckpt: &Checkpoint,
        model: &str,
        expert: usize,
        stream: &[u32],
        seq_len: usize,
        max_tokens: usize,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let net = FlexOlmo::from_tensors(&ckpt.config, &ckpt.tensors, device)?;
        Self::measure_with(&net, model, expert, stream, seq_len, max_tokens)
    }

    fn measure_with(
        net: &FlexOlmo,
        model: &str,
        expert: usize,
        stream: &[u32],
        seq_len: usize,
        max_tokens: usize,
    ) -> Result<Self, ModelError> {
        let seq_len = seq_len.min(net.config.max_position_embeddings);
        let f = router_features(net, stream, seq_len, max_tokens)?;
        let layers = f
            .layers
            .iter()
            .map(|x| {
                let (mean, second) = moments(x, f.hidden);
                LayerMoments { mean, second }
            })
            .collect();
        let stats = Self {
            hidden: f.hidden,
            tokens: f.rows as u64,
            seq_len,
            model: model.to_owned(),
            expert,
            layers,
        };
        stats.check()?;
        Ok(stats)
    }

    /// Checks what any set of moments must satisfy: a SHA-256 digest for the
    /// model, at least `hidden` tokens (fewer give a singular covariance and
    /// reveal more per token), vectors of the stated width, and per layer a
    /// symmetric second moment with `E[x²] ≥ E[x]²` in every coordinate.
    pub fn check(&self) -> Result<(), ModelError> {
        let h = self.hidden;
        let digest = |d: &str| {
            d.len() == 64
                && d.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !digest(&self.model) {
            return Err(bad(
                "`model` is not a SHA-256 digest (64 lowercase hex digits)",
            ));
        }
        if h == 0 || self.layers.is_empty() || self.seq_len == 0 {
            return Err(bad(
                "hidden width, layer count and window length must be positive",
            ));
        }
        if self.tokens < h as u64 {
            return Err(bad(format!(
                "{} tokens for width {h}: at least {h} are needed",
                self.tokens
            )));
        }
        for (l, m) in self.layers.iter().enumerate() {
            if m.mean.len() != h || m.second.len() != h * h {
                return Err(bad(format!("layer {l}: moments are not {h} wide")));
            }
            if m.mean.iter().chain(&m.second).any(|x| !x.is_finite()) {
                return Err(bad(format!("layer {l}: a non-finite value")));
            }
            for i in 0..h {
                let var = m.second[i * h + i];
                if var + 1e-9 * var.abs() < m.mean[i] * m.mean[i] {
                    return Err(bad(format!(
                        "layer {l}: E[x²] below E[x]² in coordinate {i}: not the moments of any sample"
                    )));
                }
                for j in 0..i {
                    let (a, b) = (m.second[i * h + j], m.second[j * h + i]);
                    if (a - b).abs() > 1e-9 * a.abs().max(b.abs()).max(1.0) {
                        return Err(bad(format!("layer {l}: second moment is not symmetric")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Encodes the statistics as safetensors (`F64` tensors
    /// `layers.{l}.mean`, `layers.{l}.second`; the rest in the metadata).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        let h = self.hidden;
        let mut buffers = Vec::with_capacity(2 * self.layers.len());
        for (l, m) in self.layers.iter().enumerate() {
            let le = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            buffers.push((format!("layers.{l}.mean"), vec![h], le(&m.mean)));
            buffers.push((format!("layers.{l}.second"), vec![h, h], le(&m.second)));
        }
        let mut views = Vec::with_capacity(buffers.len());
        for (name, shape, data) in &buffers {
            let view = TensorView::new(Dtype::F64, shape.clone(), data)
                .map_err(|e| ModelError::SafeTensors(format!("{name}: {e}")))?;
            views.push((name.as_str(), view));
        }
        let meta = HashMap::from([
            ("kind".to_owned(), STATS_KIND.to_owned()),
            ("model".to_owned(), self.model.clone()),
            ("expert".to_owned(), self.expert.to_string()),
            ("tokens".to_owned(), self.tokens.to_string()),
            ("seq_len".to_owned(), self.seq_len.to_string()),
            ("hidden".to_owned(), h.to_string()),
            ("layers".to_owned(), self.layers.len().to_string()),
        ]);
        safetensors::serialize(views, Some(meta))
            .map_err(|e| ModelError::SafeTensors(e.to_string()))
    }

    /// Parses statistics written by [`RouterStats::to_bytes`]: every tensor
    /// present as `F64` with its shape, then [`RouterStats::check`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::SafeTensors(e.to_string()))?;
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| ModelError::SafeTensors(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("metadata has no `{k}`")))
        };
        let kind = field("kind")?;
        if kind != STATS_KIND {
            return Err(bad(format!("kind `{kind}`, expected `{STATS_KIND}`")));
        }
        let number = |k: &str| -> Result<usize, ModelError> {
            field(k)?
                .parse()
                .map_err(|_| bad(format!("`{k}` is not a whole number")))
        };
        let (hidden, count) = (number("hidden")?, number("layers")?);
        if st.len() % 2 != 0 || st.len() / 2 != count {
            return Err(bad(format!("{} tensors for {count} layers", st.len())));
        }
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f64>, ModelError> {
            let view = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
            if view.dtype() != Dtype::F64 || view.shape() != shape {
                return Err(bad(format!(
                    "`{name}` is {:?} {:?}, expected F64 {shape:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            Ok(view
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect())
        };
        let mut layers = Vec::with_capacity(count);
        for l in 0..count {
            let mean = read(&format!("layers.{l}.mean"), &[hidden])?;
            let second = read(&format!("layers.{l}.second"), &[hidden, hidden])?;
            layers.push(LayerMoments { mean, second });
        }
        let stats = Self {
            hidden,
            tokens: number("tokens")? as u64,
            seq_len: number("seq_len")?,
            model: field("model")?,
            expert: number("expert")?,
            layers,
        };
        stats.check()?;
        Ok(stats)
    }

    /// Writes the statistics to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads and checks statistics from `path`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            ModelError::Argument(m) | ModelError::SafeTensors(m) => {
                ModelError::Argument(format!("{}: {m}", path.display()))
            }
            other => other,
        })
    }
}

/// The model with the router row of every contributed expert refitted from
/// statistics: row `s.expert` becomes `r_pub + w`, `w` the Gaussian
/// log-density ratio of that contributor's text against `public` under the
/// pooled covariance of all the samples, intercept absorbed. Every statistic
/// must have been measured on `model` (digest `model_digest`), and every
/// contributed expert must have exactly one.
pub fn refit_rows(
    model: &Checkpoint,
    model_digest: &str,
    public: &RouterStats,
    owns: &[RouterStats],
    ridge: f64,
    fold: Fold,
) -> Result<Checkpoint, ModelError> {
    check_statistics(model, model_digest, owns)?;
    check_one(model, model_digest, public)?;
    if public.expert != 0 {
        return Err(bad("the public statistics must be for expert 0"));
    }
    if let Some(s) = owns.iter().find(|s| s.seq_len != public.seq_len) {
        return Err(bad(format!(
            "expert {} was measured in windows of {} tokens, public text in windows of {}: \
             router inputs depend on the position in the window, so both must match",
            s.expert, s.seq_len, public.seq_len
        )));
    }
    let cfg = &model.config;
    let (h, n) = (cfg.hidden_size, cfg.num_experts);
    let mut out = model.clone();
    for l in 0..cfg.num_hidden_layers {
        // Every party weighted equally (a party cannot pull the fit towards
        // its own text by claiming more tokens). The pooled within-class
        // covariance is the mixture's second moment less the mean of the
        // parties' `μ μᵀ`.
        let everyone: Vec<(&[f64], &[f64])> = owns
            .iter()
            .chain([public])
            .map(|s| (s.layers[l].mean.as_slice(), s.layers[l].second.as_slice()))
            .collect();
        let all = mixture(&everyone);
        let mut cov = all.1.clone();
        let wgt = 1.0 / everyone.len() as f64;
        for (mean, _) in &everyone {
            for i in 0..h {
                for j in 0..h {
                    cov[i * h + j] -= wgt * mean[i] * mean[j];
                }
            }
        }
        let router = model.tensors.get(&names::router(l))?;
        let mut rows = router.data.clone();
        let r_pub = router.data[..h].to_vec();
        let p = &public.layers[l];
        for s in owns {
            let m = &s.layers[l];
            let pair;
            let (mean, second) = match fold {
                Fold::OwnAndPublic => {
                    pair = mixture(&[(&m.mean, &m.second), (&p.mean, &p.second)]);
                    (&pair.0, &pair.1)
                }
                Fold::AllParties => (&all.0, &all.1),
            };
            let fit = gaussian_row(
                &m.mean,
                &p.mean,
                cov.clone(),
                h,
                ridge,
                Some((mean, second)),
            )
            .map_err(|e| bad(format!("layer {l}, expert {}: {e}", s.expert)))?;
            let row = &mut rows[s.expert * h..(s.expert + 1) * h];
            for ((r, a), w) in row.iter_mut().zip(&r_pub).zip(&fit.offset) {
                *r = a + w;
            }
        }
        if rows.iter().any(|v| !v.is_finite()) {
            return Err(bad(format!("layer {l}: the refitted rows are not finite")));
        }
        out.tensors
            .insert(names::router(l), HostTensor::new(vec![n, h], rows)?);
    }
    Ok(out)
}

/// One layer's *exclusive* offset `w` for a contributed row: on the
/// contributor's own text it keeps the trained offset `a` (`w·x ≈ a·x`, so the
/// public/own balance the expert was trained with is unchanged), and on every
/// other party's text it sits `margin` below `r_pub` (`w·x ≈ −margin`). Least
/// squares over the moments, own text weighted 1 and the others 1 together:
/// `(M_own + Σ_c M_c/m + ρI) w = M_own a − margin Σ_c μ_c/m`.
pub fn fit_exclusive_offset(
    own: &LayerMoments,
    trained: &[f32],
    others: &[&LayerMoments],
    margin: f64,
    ridge: f64,
) -> Result<Vec<f32>, ModelError> {
    let h = own.mean.len();
    let fits = |m: &LayerMoments| m.mean.len() == h && m.second.len() == h * h;
    if h == 0 || trained.len() != h || !fits(own) || !others.iter().all(|o| fits(o)) {
        return Err(bad("moments and row of different (or zero) widths"));
    }
    let m = others.len().max(1) as f64;
    let mut a: Vec<f64> = own.second.clone();
    let mut b: Vec<f64> = own
        .second
        .chunks(h)
        .map(|row| {
            row.iter()
                .zip(trained)
                .map(|(m, t)| m * f64::from(*t))
                .sum()
        })
        .collect();
    for o in others {
        for (x, y) in a.iter_mut().zip(&o.second) {
            *x += y / m;
        }
        for (x, y) in b.iter_mut().zip(&o.mean) {
            *x -= margin * y / m;
        }
    }
    add_ridge(&mut a, h, ridge);
    cholesky_solve(&mut a, &mut b, h)?;
    Ok(b.iter().map(|&v| v as f32).collect())
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn check_one(model: &Checkpoint, model_digest: &str, s: &RouterStats) -> Result<(), ModelError> {
    s.check()?;
    let cfg = &model.config;
    if s.model != model_digest {
        return Err(bad(format!(
            "statistics for expert {} were measured on model {}, not on this model ({}); \
             each round's statistics must be measured on that round's model",
            s.expert,
            short(&s.model),
            short(model_digest)
        )));
    }
    if s.hidden != cfg.hidden_size || s.layers.len() != cfg.num_hidden_layers {
        return Err(bad(format!(
            "statistics for expert {} have width {} and {} layers; the model has {} and {}",
            s.expert,
            s.hidden,
            s.layers.len(),
            cfg.hidden_size,
            cfg.num_hidden_layers
        )));
    }
    Ok(())
}

/// Checks the contributors' statistics for one round before any work is
/// done: each well formed and measured on `model` (digest `model_digest`),
/// and exactly one per contributed expert.
pub fn check_statistics(
    model: &Checkpoint,
    model_digest: &str,
    owns: &[RouterStats],
) -> Result<(), ModelError> {
    let n = model.config.num_experts;
    if n < 2 {
        return Err(bad("the model has no contributed expert to recalibrate"));
    }
    for s in owns {
        check_one(model, model_digest, s)?;
    }
    let mut seen = vec![false; n];
    for s in owns {
        if s.expert == 0 || s.expert >= n {
            return Err(bad(format!(
                "expert {} is not a contributed expert of this model (1 to {})",
                s.expert,
                n - 1
            )));
        }
        if std::mem::replace(&mut seen[s.expert], true) {
            return Err(bad(format!(
                "two sets of statistics for expert {}",
                s.expert
            )));
        }
    }
    let missing: Vec<String> = (1..n)
        .filter(|&e| !seen[e])
        .map(|e| e.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!(
            "no statistics for expert(s) {}: rows are only comparable when all are refitted together",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Runs `rounds` rounds of joint calibration in one process: each round
/// measures the statistics of `public` and of `owns[i]` (the text of expert
/// `i + 1`) on the current model and refits every row. `on_round` hears the
/// round just finished.
#[allow(clippy::too_many_arguments)]
pub fn recalibrate(
    model: &Checkpoint,
    public: &[u32],
    owns: &[&[u32]],
    rounds: usize,
    seq_len: usize,
    max_tokens: usize,
    device: &Device,
    on_round: &mut dyn FnMut(usize),
) -> Result<Checkpoint, ModelError> {
    if owns.len() + 1 != model.config.num_experts {
        return Err(ModelError::Argument(format!(
            "{} texts for a model with {} contributed experts",
            owns.len(),
            model.config.num_experts - 1
        )));
    }
    let mut current = model.clone();
    for round in 0..rounds {
        let digest = current.digest()?;
        let net = FlexOlmo::from_tensors(&current.config, &current.tensors, device)?;
        let measure = |expert: usize, stream: &[u32]| {
            RouterStats::measure_with(&net, &digest, expert, stream, seq_len, max_tokens)
        };
        let public_stats = measure(0, public)?;
        let own_stats = owns
            .iter()
            .enumerate()
            .map(|(i, s)| measure(i + 1, s))
            .collect::<Result<Vec<_>, _>>()?;
        current = refit_rows(
            &current,
            &digest,
            &public_stats,
            &own_stats,
            DEFAULT_RIDGE,
            DEFAULT_FOLD,
        )?;
        on_round(round + 1);
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(hidden: usize, expert: usize, seed: u64) -> RouterStats {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = 64;
        let x: Vec<f32> = (0..n * hidden)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let (mean, second) = moments(&x, hidden);
        RouterStats {
            hidden,
            tokens: n as u64,
            seq_len: 32,
            model: "ab".repeat(32),
            expert,
            layers: vec![LayerMoments { mean, second }],
        }
    }

    /// Moments of `n` points around `centre` with spread `noise`.
    fn cluster(centre: &[f32], noise: f32, seed: u64) -> LayerMoments {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let h = centre.len();
        let x: Vec<f32> = (0..512)
            .flat_map(|_| centre.to_vec())
            .map(|c| c + noise * rng.random_range(-1.0f32..1.0))
            .collect();
        let (mean, second) = moments(&x, h);
        LayerMoments { mean, second }
    }

    #[test]
    fn an_exclusive_offset_keeps_own_scores_and_pushes_foreign_text_below_the_margin() {
        let h = 6;
        let centre = |k: usize| {
            let mut c = vec![0.2f32; h];
            c[k] += 1.0;
            c
        };
        let own = cluster(&centre(0), 0.05, 1);
        let foreign = [cluster(&centre(1), 0.05, 2), cluster(&centre(2), 0.05, 3)];
        let trained = [0.7f32, 2.0, 1.5, -0.3, 0.1, 0.0];
        let refs: Vec<&LayerMoments> = foreign.iter().collect();
        let w = fit_exclusive_offset(&own, &trained, &refs, 8.0, 1e-6).unwrap();
        let score =
            |v: &[f64], w: &[f32]| v.iter().zip(w).map(|(a, b)| a * f64::from(*b)).sum::<f64>();
        // The trained row liked the foreign clusters more than its own text.
        assert!(score(&foreign[0].mean, &trained) > score(&own.mean, &trained));
        let (kept, wanted) = (score(&own.mean, &w), score(&own.mean, &trained));
        assert!(
            (kept - wanted).abs() < 0.05,
            "own text scores {kept}, trained {wanted}"
        );
        for f in &foreign {
            let s = score(&f.mean, &w);
            assert!((s + 8.0).abs() < 0.1, "foreign text scores {s}, wanted -8");
        }
        assert!(fit_exclusive_offset(&own, &trained[..3], &refs, 8.0, 1e-6).is_err());
    }

    #[test]
    fn statistics_round_trip_and_broken_files_are_refused() {
        let s = stats(8, 2, 1);
        let bytes = s.to_bytes().unwrap();
        assert_eq!(RouterStats::from_bytes(&bytes).unwrap(), s);
        // Truncated.
        assert!(RouterStats::from_bytes(&bytes[..bytes.len() - 9]).is_err());
        // A variance below the squared mean cannot come from any sample.
        let mut broken = s.clone();
        broken.layers[0].second[0] = -1.0;
        let err = RouterStats::from_bytes(&broken.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("E[x²] below E[x]²"), "{err}");
        let mut nan = s.clone();
        nan.layers[0].mean[3] = f64::NAN;
        let err = RouterStats::from_bytes(&nan.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("non-finite"), "{err}");
        let mut skew = s.clone();
        skew.layers[0].second[1] += 0.5;
        let err = RouterStats::from_bytes(&skew.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not symmetric"), "{err}");
        // A model that is not a digest (here with a multi-byte character), too
        // few tokens, a layer count the tensors do not match.
        let mut forged = s.clone();
        forged.model = "a€€€€€€€€€€€".into();
        let err = RouterStats::from_bytes(&forged.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a SHA-256 digest"), "{err}");
        let mut few = s.clone();
        few.tokens = 3;
        let err = RouterStats::from_bytes(&few.to_bytes().unwrap()).unwrap_err();
        assert!(err.to_string().contains("at least 8"), "{err}");
        let key = b"\"layers\":\"1\"";
        let at = bytes
            .windows(key.len())
            .position(|w| w == key)
            .expect("the header names the layer count");
        let mut lying = bytes.clone();
        lying[at + key.len() - 2] = b'9';
        let err = RouterStats::from_bytes(&lying).unwrap_err();
        assert!(err.to_string().contains("2 tensors for 9 layers"), "{err}");
    }
}
