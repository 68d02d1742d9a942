//! Router calibration: making independently trained router rows comparable.
//!
//! A contributor trains its router row `r_i` only against the frozen public row
//! `r_pub`, and only on its own text. Nothing in that objective fixes what the
//! logit difference `d_i(x) = (r_i − r_pub) · x` is on text the contributor never
//! saw, so once experts are merged, a row that grew along the direction every
//! hidden state shares wins on all text, public text included, and removing an
//! expert no longer restores the anchor.
//!
//! Calibration gives `d_i` one meaning for every contributor: positive on the
//! contributor's own text, negative on public text. The public corpus is public,
//! so every contributor can hold a sample of it (the anchor directory ships one,
//! [`CALIBRATION_FILE`]). The offset `w = r_i − r_pub` of each layer is fitted
//! as an L2-regularised logistic regression without intercept (the router has no
//! bias at merge time) on the frozen anchor's router inputs — own tokens are
//! positives, public tokens negatives — by Newton's method ([`fit_offsets`]);
//! the same term, [`CalibrationSet::loss`], then stays in the training objective
//! so that the language-model loss cannot undo it.
//!
//! The fit works on features divided by their root-mean-square coordinate `s`,
//! so the regulariser `λ/2 ‖w·s‖²` means the same whatever the scale of the
//! anchor's residual stream.

use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::ModelError;
use crate::model::{FlexOlmo, Trace};

/// Name of the public text sample shipped in an anchor directory, used as the
/// negatives of router calibration.
pub const CALIBRATION_FILE: &str = "router-calibration.txt";

/// Router inputs of every layer of a model over a sample of tokens.
#[derive(Clone, Debug)]
pub struct RouterFeatures {
    /// Residual width.
    pub hidden: usize,
    /// Tokens sampled.
    pub rows: usize,
    /// Per layer, `rows × hidden` values, row-major.
    pub layers: Vec<Vec<f32>>,
}

impl RouterFeatures {
    /// Appends the tokens of `other` (features of the same model's layers).
    pub fn append(&mut self, other: &RouterFeatures) {
        for (mine, theirs) in self.layers.iter_mut().zip(&other.layers) {
            mine.extend_from_slice(theirs);
        }
        self.rows += other.rows;
    }

    /// The same rows with each layer's mean subtracted.
    pub fn centred(&self) -> RouterFeatures {
        let h = self.hidden.max(1);
        let layers = self
            .layers
            .iter()
            .map(|x| {
                let n = (x.len() / h).max(1) as f64;
                let mut mean = vec![0f64; h];
                for row in x.chunks(h) {
                    for (m, &v) in mean.iter_mut().zip(row) {
                        *m += f64::from(v) / n;
                    }
                }
                x.chunks(h)
                    .flat_map(|row| {
                        row.iter()
                            .zip(&mean)
                            .map(|(&v, m)| (f64::from(v) - m) as f32)
                    })
                    .collect()
            })
            .collect();
        RouterFeatures {
            hidden: self.hidden,
            rows: self.rows,
            layers,
        }
    }
}

/// Router inputs of `model` over up to `max_tokens` tokens of `stream`, taken as
/// whole windows of `seq_len` spread evenly over the stream (deterministic).
pub fn router_features(
    model: &FlexOlmo,
    stream: &[u32],
    seq_len: usize,
    max_tokens: usize,
) -> Result<RouterFeatures, ModelError> {
    if seq_len == 0 {
        return Err(ModelError::Argument(
            "windows of 0 tokens: the sequence length must be at least 1".into(),
        ));
    }
    let available = stream.len() / seq_len;
    let wanted = (max_tokens / seq_len).max(1);
    let windows = available.min(wanted);
    if windows == 0 {
        return Err(ModelError::Argument(format!(
            "need at least {seq_len} tokens to calibrate the router, got {}",
            stream.len()
        )));
    }
    let stride = available / windows;
    let mut tokens = Vec::with_capacity(windows * seq_len);
    for w in 0..windows {
        let start = w * stride * seq_len;
        tokens.extend_from_slice(&stream[start..start + seq_len]);
    }
    let mut trace = Trace {
        router_inputs: Some(Vec::new()),
        ..Trace::default()
    };
    for chunk in tokens.chunks(seq_len * 8) {
        model.hidden(chunk, chunk.len() / seq_len, &mut trace)?;
    }
    Ok(RouterFeatures {
        hidden: model.config.hidden_size,
        rows: tokens.len(),
        layers: trace.router_inputs.unwrap_or_default(),
    })
}

/// Refuses two samples that do not come from the same model's layers.
fn same_model(own: &RouterFeatures, public: &RouterFeatures) -> Result<(), ModelError> {
    if own.hidden != public.hidden || own.layers.len() != public.layers.len() {
        return Err(ModelError::Argument(
            "calibration samples come from different models".into(),
        ));
    }
    Ok(())
}

/// Root-mean-square coordinate of a layer's features.
fn feature_scale(pos: &[f32], neg: &[f32]) -> f64 {
    let n = (pos.len() + neg.len()).max(1) as f64;
    let ss: f64 = pos
        .iter()
        .chain(neg)
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    (ss / n).sqrt().max(1e-12)
}

/// The fitted offset of one layer and how well it separates the two samples.
#[derive(Clone, Debug)]
pub struct LayerFit {
    /// `w = r_i − r_pub`.
    pub offset: Vec<f32>,
    /// Share of own tokens with `d > 0`.
    pub own_positive: f64,
    /// Share of public tokens with `d > 0` (should be small).
    pub public_positive: f64,
}

/// Share of rows of `x` (`n × h`) with `x · w > 0`.
pub fn positive_share(x: &[f32], h: usize, w: &[f32]) -> f64 {
    let n = x.len() / h.max(1);
    if n == 0 {
        return 0.0;
    }
    let pos = x
        .chunks(h)
        .filter(|row| row.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() > 0.0)
        .count();
    pos as f64 / n as f64
}

/// Fits `w` per layer by Newton's method on the class-balanced, L2-regularised
/// logistic loss `½ mean_own softplus(−x·w) + ½ mean_pub softplus(x·w + m) + λ/2 ‖w s‖²`,
/// where the margin `m` asks public text to prefer the public expert clearly.
pub fn fit_offsets(
    own: &RouterFeatures,
    public: &RouterFeatures,
    l2: f64,
    margin: f64,
    device: &Device,
) -> Result<Vec<LayerFit>, ModelError> {
    same_model(own, public)?;
    let h = own.hidden;
    let mut fits = Vec::with_capacity(own.layers.len());
    for (pos, neg) in own.layers.iter().zip(&public.layers) {
        let s = feature_scale(pos, neg);
        let (np, nn) = (pos.len() / h, neg.len() / h);
        let mut data: Vec<f32> = Vec::with_capacity(pos.len() + neg.len());
        data.extend(pos.iter().map(|&v| (f64::from(v) / s) as f32));
        data.extend(neg.iter().map(|&v| (f64::from(v) / s) as f32));
        let x = Tensor::<2>::from_data(TensorData::new(data, [np + nn, h]), device);
        // Signed labels (+1 own, −1 public) and class-balancing weights.
        let mut sign = vec![1f32; np];
        sign.extend(std::iter::repeat_n(-1f32, nn));
        let mut shift = vec![0f32; np];
        shift.extend(std::iter::repeat_n(margin as f32, nn));
        let shift = Tensor::<2>::from_data(TensorData::new(shift, [np + nn, 1]), device);
        let mut weight = vec![0.5 / np as f32; np];
        weight.extend(std::iter::repeat_n(0.5 / nn as f32, nn));
        let sign = Tensor::<2>::from_data(TensorData::new(sign, [np + nn, 1]), device);
        let weight = Tensor::<2>::from_data(TensorData::new(weight, [np + nn, 1]), device);
        let to_device = |w: &[f64]| {
            Tensor::<2>::from_data(
                TensorData::new(w.iter().map(|&v| v as f32).collect::<Vec<_>>(), [h, 1]),
                device,
            )
        };
        // z = sign · (x·w) − shift; loss softplus(−z).
        let margins = |w: &[f64]| x.clone().matmul(to_device(w)) * sign.clone() - shift.clone();
        let objective = |w: &[f64]| -> f64 {
            let z = margins(w).neg();
            let sp = relu(z.clone()) + z.abs().neg().exp().log1p();
            let data: f32 = (sp * weight.clone()).sum().into_scalar::<f32>();
            f64::from(data) + 0.5 * l2 * w.iter().map(|v| v * v).sum::<f64>()
        };
        let mut w = vec![0f64; h];
        let mut current = objective(&w);
        for _ in 0..30 {
            // dloss/dz = −σ(−z); d²loss/dz² = σ(−z)(1 − σ(−z)).
            let q = burn::tensor::activation::sigmoid(margins(&w).neg());
            let gcoef = (q.clone() * sign.clone() * weight.clone()).neg();
            let grad = x.clone().transpose().matmul(gcoef);
            let hcoef = (q.clone() * (q.neg().add_scalar(1.0)) * weight.clone()).sqrt();
            let xs = x.clone() * hcoef;
            let hess = xs.clone().transpose().matmul(xs);
            let grad = host_f64(grad)?;
            let mut hess = host_f64(hess)?;
            let mut g: Vec<f64> = grad.iter().zip(&w).map(|(g, w)| g + l2 * w).collect();
            for i in 0..h {
                hess[i * h + i] += l2;
            }
            cholesky_solve(&mut hess, &mut g, h)?;
            // Damped Newton: halve the step until the objective does not rise
            // (a full step overshoots when the start is far from the optimum).
            let mut t = 1.0;
            let mut next: Vec<f64>;
            let mut value;
            loop {
                next = w.iter().zip(&g).map(|(wi, d)| wi - t * d).collect();
                value = objective(&next);
                if value <= current || t < 1e-6 {
                    break;
                }
                t *= 0.5;
            }
            let step = t * g.iter().map(|v| v * v).sum::<f64>().sqrt();
            w = next;
            current = value;
            let norm: f64 = w.iter().map(|v| v * v).sum::<f64>().sqrt();
            if step <= 1e-6 * norm.max(1.0) {
                break;
            }
        }
        let offset: Vec<f32> = w.iter().map(|&v| (v / s) as f32).collect();
        fits.push(LayerFit {
            own_positive: positive_share(pos, h, &offset),
            public_positive: positive_share(neg, h, &offset),
            offset,
        });
    }
    Ok(fits)
}

/// Mean and second moment (`E[x]`, `E[x xᵀ]`, row-major `h × h`) of `n × h` rows.
pub(crate) fn moments(x: &[f32], h: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / h.max(1)).max(1) as f64;
    let mut mean = vec![0f64; h];
    let mut second = vec![0f64; h * h];
    for row in x.chunks(h) {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        for i in 0..h {
            mean[i] += row[i];
            let ri = row[i];
            let out = &mut second[i * h..i * h + i + 1];
            for (o, rj) in out.iter_mut().zip(&row) {
                *o += ri * rj;
            }
        }
    }
    for i in 0..h {
        mean[i] /= n;
        for j in 0..=i {
            let v = second[i * h + j] / n;
            second[i * h + j] = v;
            second[j * h + i] = v;
        }
    }
    (mean, second)
}

/// Adds `ridge` times the mean diagonal entry to the diagonal of the `h × h` matrix `m`.
pub(crate) fn add_ridge(m: &mut [f64], h: usize, ridge: f64) {
    let mean_diag = (0..h).map(|i| m[i * h + i]).sum::<f64>() / h.max(1) as f64;
    for i in 0..h {
        m[i * h + i] += ridge * mean_diag.max(1e-12);
    }
}

/// One layer's Gaussian router offset: `w · x + c` is the log-density ratio of
/// own text against public text under Gaussians sharing the public covariance.
#[derive(Clone, Debug)]
pub struct GaussianFit {
    /// `w = (Σ_pub + εI)⁻¹ (μ_own − μ_pub)` (plus the absorbed intercept, if asked).
    pub offset: Vec<f32>,
    /// The intercept `c = −½ w·(μ_own + μ_pub)` (0 once absorbed into `offset`).
    pub intercept: f32,
}

/// Fits, per layer, the linear discriminant of own against public text with the
/// *public* covariance: every contributor can compute it alone, and because all
/// of them use the same covariance and the same reference, their scores are
/// log-density ratios against one common baseline, comparable at merge time.
/// `ridge` scales the regulariser `ε = ridge · tr(Σ)/h`. With `absorb`, the
/// intercept (the router has no bias) is folded into the row by least squares:
/// `δ = c (M + ρI)⁻¹ m` with `M`, `m` the balanced second moment and mean of the
/// two samples, so that `δ · x ≈ c` on such text.
pub fn fit_gaussian_offsets(
    own: &RouterFeatures,
    public: &RouterFeatures,
    ridge: f64,
    absorb: bool,
) -> Result<Vec<GaussianFit>, ModelError> {
    fit_gaussian_offsets_with(own, public, public, ridge, absorb)
}

/// As [`fit_gaussian_offsets`], with the covariance of `spread` instead of the
/// public sample's: for instance every class's rows centred on their own mean
/// ([`RouterFeatures::centred`]), the pooled within-class covariance that a
/// coordinator could assemble from statistics the contributors share.
pub fn fit_gaussian_offsets_with(
    own: &RouterFeatures,
    public: &RouterFeatures,
    spread: &RouterFeatures,
    ridge: f64,
    absorb: bool,
) -> Result<Vec<GaussianFit>, ModelError> {
    same_model(own, public)?;
    same_model(own, spread)?;
    let h = own.hidden;
    let mut fits = Vec::with_capacity(own.layers.len());
    for ((pos, neg), wide) in own.layers.iter().zip(&public.layers).zip(&spread.layers) {
        let (mu_own, second_own) = moments(pos, h);
        let (mu_pub, second_pub) = moments(neg, h);
        // The default spread is the public sample itself: its moments are known.
        let (mu_wide, mut cov) = if std::ptr::eq(spread, public) {
            (mu_pub.clone(), second_pub.clone())
        } else {
            moments(wide, h)
        };
        for i in 0..h {
            for j in 0..h {
                cov[i * h + j] -= mu_wide[i] * mu_wide[j];
            }
        }
        // Fold the intercept in on the balanced mix of the two samples.
        let mix = absorb.then(|| mixture(&[(&mu_own, &second_own), (&mu_pub, &second_pub)]));
        let on = mix.as_ref().map(|(m, s)| (m.as_slice(), s.as_slice()));
        fits.push(gaussian_row(&mu_own, &mu_pub, cov, h, ridge, on)?);
    }
    Ok(fits)
}

/// The Gaussian log-density-ratio offset of one layer from the moments
/// (`E[x]`, `E[x xᵀ]`) of own and public router inputs and the covariance
/// `cov` both classes are assumed to share (`h × h`, row-major, unregularised).
/// With `absorb` = the moments of some text, the intercept is folded into the
/// row by least squares so that the added part scores `≈ c` on that text.
pub(crate) fn gaussian_row(
    mu_own: &[f64],
    mu_pub: &[f64],
    mut cov: Vec<f64>,
    h: usize,
    ridge: f64,
    absorb: Option<(&[f64], &[f64])>,
) -> Result<GaussianFit, ModelError> {
    add_ridge(&mut cov, h, ridge);
    let mut w: Vec<f64> = mu_own.iter().zip(mu_pub).map(|(a, b)| a - b).collect();
    cholesky_solve(&mut cov, &mut w, h)?;
    let c = -0.5
        * w.iter()
            .zip(mu_own.iter().zip(mu_pub))
            .map(|(wi, (a, b))| wi * (a + b))
            .sum::<f64>();
    let mut intercept = c;
    if let Some((mean, second)) = absorb {
        let mut m2 = second.to_vec();
        add_ridge(&mut m2, h, ridge);
        let mut delta: Vec<f64> = mean.iter().map(|m| m * c).collect();
        cholesky_solve(&mut m2, &mut delta, h)?;
        for (wi, d) in w.iter_mut().zip(&delta) {
            *wi += d;
        }
        intercept = 0.0;
    }
    Ok(GaussianFit {
        offset: w.iter().map(|&v| v as f32).collect(),
        intercept: intercept as f32,
    })
}

/// The equal-weight mixture of moments: its mean and second moment.
pub(crate) fn mixture(parts: &[(&[f64], &[f64])]) -> (Vec<f64>, Vec<f64>) {
    let k = parts.len().max(1) as f64;
    let mut mean = vec![0f64; parts.first().map_or(0, |p| p.0.len())];
    let mut second = vec![0f64; parts.first().map_or(0, |p| p.1.len())];
    for (m, s) in parts {
        for (a, b) in mean.iter_mut().zip(*m) {
            *a += b / k;
        }
        for (a, b) in second.iter_mut().zip(*s) {
            *a += b / k;
        }
    }
    (mean, second)
}

fn host_f64(t: Tensor<2>) -> Result<Vec<f64>, ModelError> {
    let v: Vec<f32> = t
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Argument(format!("reading a tensor back: {e:?}")))?;
    Ok(v.into_iter().map(f64::from).collect())
}

/// Solves `a x = b` in place for a symmetric positive-definite `n × n` matrix `a`.
pub(crate) fn cholesky_solve(a: &mut [f64], b: &mut [f64], n: usize) -> Result<(), ModelError> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return Err(ModelError::Argument(
                "router calibration: the Hessian is not positive definite".into(),
            ));
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut v = a[i * n + j];
            for k in 0..j {
                v -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = v / d;
        }
    }
    for i in 0..n {
        let mut v = b[i];
        for k in 0..i {
            v -= a[i * n + k] * b[k];
        }
        b[i] = v / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut v = b[i];
        for k in i + 1..n {
            v -= a[k * n + i] * b[k];
        }
        b[i] = v / a[i * n + i];
    }
    Ok(())
}

/// The calibration term kept in the training objective: per layer, samples of
/// the anchor's router inputs on own and on public text (scaled), as device
/// tensors.
///
/// The term is evaluated on the anchor's features, not on those of the model
/// being trained. Evaluating it on the training model's own router inputs was
/// tried and merged worse (EXPERIMENT.md): each expert then calibrates against
/// the residual stream its own FFN produces, which no merged model reproduces.
pub struct CalibrationSet {
    layers: Vec<(Tensor<2>, Tensor<2>, f64)>,
    l2: f64,
    margin: f64,
    device: Device,
}

impl CalibrationSet {
    /// Uploads up to `max_rows` rows of each sample per layer to `device`.
    pub fn new(
        own: &RouterFeatures,
        public: &RouterFeatures,
        max_rows: usize,
        l2: f64,
        margin: f64,
        device: &Device,
    ) -> Self {
        let h = own.hidden;
        let take = |f: &[f32], s: f64| -> Tensor<2> {
            let n = (f.len() / h).min(max_rows).max(1);
            let stride = (f.len() / h / n).max(1);
            let mut out = Vec::with_capacity(n * h);
            for r in 0..n {
                let row = &f[r * stride * h..r * stride * h + h];
                out.extend(row.iter().map(|&v| (f64::from(v) / s) as f32));
            }
            Tensor::from_data(TensorData::new(out, [n, h]), device)
        };
        let layers = own
            .layers
            .iter()
            .zip(&public.layers)
            .map(|(p, n)| {
                let s = feature_scale(p, n);
                (take(p, s), take(n, s), s)
            })
            .collect();
        Self {
            layers,
            l2,
            margin,
            device: device.clone(),
        }
    }

    /// Mean over layers of `½ mean softplus(−own·w) + ½ mean softplus(public·w + m)
    /// + λ/2 ‖w s‖²` with `offsets[l] = w = r_i − r_pub` (`[hidden, 1]` each).
    pub fn loss(&self, offsets: &[Tensor<2>]) -> Tensor<1> {
        let softplus = |t: Tensor<2>| relu(t.clone()) + t.abs().neg().exp().log1p();
        let mut acc: Option<Tensor<1>> = None;
        for ((own, public, s), w) in self.layers.iter().zip(offsets) {
            let ws = w.clone().mul_scalar(*s);
            let mut pub_logits = public.clone().matmul(ws.clone());
            if self.margin != 0.0 {
                pub_logits = pub_logits.add_scalar(self.margin);
            }
            let term = softplus(own.clone().matmul(ws.clone()).neg())
                .mean()
                .mul_scalar(0.5)
                + softplus(pub_logits).mean().mul_scalar(0.5)
                + ws.square().sum().mul_scalar(0.5 * self.l2);
            acc = Some(match acc {
                Some(a) => a + term,
                None => term,
            });
        }
        let n = self.layers.len().max(1) as f64;
        acc.map_or_else(|| Tensor::zeros([1], &self.device), |a| a.div_scalar(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Rows sharing a large common component, told apart only by a small one.
    fn cluster(n: usize, h: usize, side: f32, rng: &mut StdRng) -> Vec<f32> {
        let mut out = Vec::with_capacity(n * h);
        for _ in 0..n {
            for j in 0..h {
                let common = if j == 0 { 20.0 } else { 0.0 };
                let signal = if j == 1 { side } else { 0.0 };
                out.push(common + signal + rng.random_range(-1.0..1.0));
            }
        }
        out
    }

    /// `n` rows around `mean` with uniform noise and a large shared coordinate 0.
    fn around(n: usize, mean: &[f32], rng: &mut StdRng) -> RouterFeatures {
        let h = mean.len() + 1;
        let mut layer = Vec::with_capacity(n * h);
        for _ in 0..n {
            layer.push(20.0 + rng.random_range(-1.0..1.0));
            layer.extend(mean.iter().map(|m| m + rng.random_range(-1.0..1.0)));
        }
        RouterFeatures {
            hidden: h,
            rows: n,
            layers: vec![layer],
        }
    }

    #[test]
    fn gaussian_rows_of_independent_contributors_rank_each_others_text() {
        // Domain `b` lies further from public text than `a`, along `a`'s own
        // direction too: a row fitted only to tell `a` from public would claim
        // `b`'s text. Log-density ratios against one shared public baseline
        // do not: each contributor's row wins on its own text.
        let mut rng = StdRng::seed_from_u64(11);
        let n = 2000;
        let public = around(n, &[0.0, 0.0, 0.0, 0.0], &mut rng);
        let a = around(n, &[1.5, 0.0, 0.0, 0.0], &mut rng);
        let b = around(n, &[1.5, 3.0, 0.0, 0.0], &mut rng);
        let fit = |own: &RouterFeatures| fit_gaussian_offsets(own, &public, 1e-3, true).unwrap();
        let (wa, wb) = (fit(&a)[0].offset.clone(), fit(&b)[0].offset.clone());
        let unfolded = fit_gaussian_offsets(&a, &public, 1e-3, false).unwrap();
        assert!(unfolded[0].intercept < 0.0, "{}", unfolded[0].intercept);
        assert_eq!(fit(&a)[0].intercept, 0.0);
        let h = a.hidden;
        // Share of rows whose highest score among [public 0, a, b] is `want`.
        let wins = |x: &RouterFeatures, want: usize| -> f64 {
            let dot = |r: &[f32], w: &[f32]| r.iter().zip(w).map(|(p, q)| p * q).sum::<f32>();
            let won = x.layers[0]
                .chunks(h)
                .filter(|r| {
                    let s = [0.0, dot(r, &wa), dot(r, &wb)];
                    let best = (0..3).max_by(|&i, &j| s[i].total_cmp(&s[j])).unwrap();
                    best == want
                })
                .count();
            won as f64 / x.rows as f64
        };
        assert!(wins(&public, 0) > 0.85, "public {}", wins(&public, 0));
        assert!(wins(&a, 1) > 0.7, "a {}", wins(&a, 1));
        assert!(wins(&b, 2) > 0.95, "b {}", wins(&b, 2));
        // The logistic fit of `a` against public alone scores `b` above `a`.
        let device = crate::device::device_for("flex").unwrap();
        let wl = &fit_offsets(&a, &public, 1e-3, 0.0, &device).unwrap()[0].offset;
        let mean_score = |x: &RouterFeatures, w: &[f32]| -> f32 {
            x.layers[0]
                .chunks(h)
                .map(|r| r.iter().zip(w).map(|(p, q)| p * q).sum::<f32>())
                .sum::<f32>()
                / x.rows as f32
        };
        assert!(mean_score(&b, wl) >= mean_score(&a, wl) * 0.9);
        assert!(mean_score(&b, &wa) < mean_score(&b, &wb));

        // Centred rows have mean zero; a pooled within-class covariance (all
        // three samples centred) gives a row that still ranks `a` first.
        let centred = a.centred();
        for j in 0..h {
            let m: f64 = centred.layers[0]
                .chunks(h)
                .map(|r| f64::from(r[j]))
                .sum::<f64>()
                / n as f64;
            assert!(m.abs() < 1e-4, "coordinate {j}: mean {m}");
        }
        let mut spread = public.centred();
        spread.append(&centred);
        spread.append(&b.centred());
        let pooled = fit_gaussian_offsets_with(&a, &public, &spread, 1e-3, true).unwrap();
        assert!(mean_score(&a, &pooled[0].offset) > mean_score(&public, &pooled[0].offset));
        let same = fit_gaussian_offsets_with(&a, &public, &public, 1e-3, true).unwrap();
        assert_eq!(same[0].offset, fit(&a)[0].offset);
    }

    #[test]
    fn fitted_offset_separates_own_from_public_rows_despite_a_shared_direction() {
        let (h, n) = (8, 400);
        let mut rng = StdRng::seed_from_u64(5);
        let own = RouterFeatures {
            hidden: h,
            rows: n,
            layers: vec![cluster(n, h, 1.5, &mut rng)],
        };
        let public = RouterFeatures {
            hidden: h,
            rows: n,
            layers: vec![cluster(n, h, -1.5, &mut rng)],
        };
        let device = crate::device::device_for("flex").unwrap();
        let fit = &fit_offsets(&own, &public, 1e-3, 0.0, &device).unwrap()[0];
        assert!(fit.own_positive > 0.97, "own {}", fit.own_positive);
        assert!(fit.public_positive < 0.03, "public {}", fit.public_positive);
        // The shared direction carries no information, so it gets little weight.
        assert!(
            fit.offset[0].abs() < fit.offset[1].abs() / 4.0,
            "{:?}",
            fit.offset
        );

        // A margin pushes public logits further below the public expert's.
        let strict = &fit_offsets(&own, &public, 1e-3, 4.0, &device).unwrap()[0];
        let mean_logit = |w: &[f32]| -> f32 {
            public.layers[0]
                .chunks(h)
                .map(|row| row.iter().zip(w).map(|(a, b)| a * b).sum::<f32>())
                .sum::<f32>()
                / n as f32
        };
        assert!(
            mean_logit(&strict.offset) < mean_logit(&fit.offset),
            "{} vs {}",
            mean_logit(&strict.offset),
            mean_logit(&fit.offset)
        );

        // The training term is lower at the fitted offset than at zero.
        let set = CalibrationSet::new(&own, &public, 256, 1e-3, 0.0, &device);
        let at = |w: Vec<f32>| -> f32 {
            let t = Tensor::<2>::from_data(TensorData::new(w, [h, 1]), &device);
            set.loss(&[t]).into_scalar::<f32>()
        };
        assert!(at(fit.offset.clone()) < at(vec![0.0; h]) - 0.3);
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let mut b = vec![2.0, 1.0];
        cholesky_solve(&mut a, &mut b, 2).unwrap();
        assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12, "{b:?}");
        let mut singular = vec![1.0, 1.0, 1.0, 1.0];
        assert!(cholesky_solve(&mut singular, &mut [1.0, 1.0], 2).is_err());
    }
}
