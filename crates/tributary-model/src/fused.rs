//! Fused CPU kernels, with hand-written backward passes, for the element-wise
//! chains that dominate a training step on the `flex` backend.
//!
//! Composed from burn's tensor operations, a cross-entropy over the vocabulary,
//! a causal softmax over attention scores, a SwiGLU activation or an RMSNorm is
//! five to ten separate passes over memory forward and as many backward, each
//! into a freshly allocated buffer. Each function here computes its result in
//! one or two passes over rows that stay in cache, records one backward step
//! with the autodiff graph, and computes its gradient in one pass as well.
//!
//! Every function takes and returns ordinary [`Tensor`]s. When the input lives
//! on the `flex` backend (with or without autodiff) the fused kernel runs;
//! on any other backend (`cuda`, `tch`) the same maths runs as composed tensor
//! operations, so results agree everywhere up to rounding. Tests compare both
//! paths, values and gradients.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::vmath;

pub(crate) type Ad = Autodiff<Flex, NoCheckpointing>;
pub(crate) type AdTensor = <Ad as burn::backend::BackendTypes>::FloatTensorPrimitive;

/// Elements handed to one rayon task: enough work to amortise scheduling.
/// Tests use small tasks so that their inputs cross task boundaries.
#[cfg(not(test))]
const TASK_ELEMENTS: usize = 16_384;
#[cfg(test)]
const TASK_ELEMENTS: usize = 64;

/// Rows handed to one rayon task.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (TASK_ELEMENTS / row_len.max(1)).max(1)
}

/// A buffer of `n` zeros. Large ones are written by the rayon pool: zeroing a
/// fresh allocation (and faulting its pages in) on the calling thread alone
/// would leave the other threads idle meanwhile (the allocator's zeroed
/// memory, `vec![0.0; n]`, trained 5 % slower).
///
/// The one `unsafe` line is the price of a memset per task: collecting
/// `rayon::iter::repeat_n(0.0, n)`, the safe way to fill a `Vec` in
/// parallel, wrote one bounds-checked element at a time and trained 6 %
/// slower (BENCHMARKS.md, change 11).
#[allow(unsafe_code)]
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    if n < TASK_ELEMENTS * 4 {
        return vec![0f32; n];
    }
    let mut v = Vec::<f32>::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(TASK_ELEMENTS)
        .for_each(|chunk| chunk.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: the capacity is at least `n` and the loop above initialised
    // every one of the first `n` elements.
    unsafe { v.set_len(n) };
    v
}

/// Where a float tensor lives, as far as the fused kernels care.
pub(crate) enum Host<const D: usize> {
    /// On `flex` under autodiff.
    Tracked(AdTensor),
    /// On `flex` without autodiff.
    Plain(FlexTensor),
    /// Elsewhere: use the composed fallback.
    Other(Tensor<D>),
}

pub(crate) fn host<const D: usize>(t: Tensor<D>) -> Host<D> {
    // The kernels read and write `f32`; other precisions take the composed path.
    if t.dtype() != DType::F32 {
        return Host::Other(t);
    }
    if let Ok(p) = t.clone().try_into_primitive::<Ad>() {
        return Host::Tracked(p);
    }
    if let Ok(p) = t.clone().try_into_primitive::<Flex>() {
        return Host::Plain(p);
    }
    Host::Other(t)
}

/// The tensor behind a [`Host`].
pub(crate) fn tensor<const D: usize>(h: Host<D>) -> Tensor<D> {
    match h {
        Host::Tracked(t) => wrap(t),
        Host::Plain(t) => wrap_plain(t),
        Host::Other(t) => t,
    }
}

/// The contiguous `f32` values of a flex tensor (copying only when its layout needs it).
pub(crate) fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => match crate::matmul::view(t) {
            // A transposed or narrowed matrix: one parallel gather.
            Some(v) => std::borrow::Cow::Owned(v.to_rows()),
            None => match t.to_contiguous().as_slice::<f32>() {
                Some(s) => std::borrow::Cow::Owned(s.to_vec()),
                // `host` sends only `f32` tensors here, and a contiguous copy is a slice.
                None => unreachable!("fused kernels only receive f32 tensors"),
            },
        },
    }
}

pub(crate) fn flex(data: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape.to_vec()))
}

pub(crate) fn wrap<const D: usize>(t: AdTensor) -> Tensor<D> {
    Tensor::from_primitive::<Ad>(t)
}

pub(crate) fn wrap_plain<const D: usize>(t: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(t)
}

// ---------------------------------------------------------------------------
// Cross-entropy over the vocabulary
// ---------------------------------------------------------------------------

/// Mean next-token cross-entropy of `logits` (`[n, vocab]`) against `targets`
/// (`n` ids below `vocab`), as a one-element tensor.
///
/// The fused kernel computes, per row, the log-sum-exp and the loss, and (when
/// gradients are tracked) the gradient `(softmax - onehot) / n` in the same pass,
/// so the backward step only scales it.
///
/// # Panics
/// If `targets.len()` differs from the number of rows or a target is out of range
/// (callers check token ids when they build the batch).
pub fn cross_entropy(logits: Tensor<2>, targets: &[u32]) -> Tensor<1> {
    let [n, v] = logits.dims();
    check_targets(n, v, targets);
    scalar_loss(
        logits,
        |x| cross_entropy_with_gradient(x, v, targets),
        |x| mean_nll(x, v, targets),
        |t| composed_cross_entropy(t, targets),
    )
}

/// A scalar loss of the `[n, w]` rows of `input`: on `flex`, with gradients
/// tracked, `with_gradient` gives the loss and the input's gradient (the
/// backward step only scales it), otherwise `loss` gives the loss; on other
/// backends `composed` computes it from tensor operations.
fn scalar_loss(
    input: Tensor<2>,
    with_gradient: impl FnOnce(&[f32]) -> (f32, Vec<f32>),
    loss: impl FnOnce(&[f32]) -> f32,
    composed: impl FnOnce(Tensor<2>) -> Tensor<1>,
) -> Tensor<1> {
    let shape = input.dims();
    match host(input) {
        Host::Tracked(ad) => {
            let x = values(ad.primitive());
            match ScaledGradientBackward
                .prepare::<NoCheckpointing>([ad.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (loss, grad) = with_gradient(&x);
                    wrap(prep.finish(flex(grad, &shape), flex(vec![loss], &[1])))
                }
                OpsKind::UnTracked(prep) => wrap(prep.finish(flex(vec![loss(&x)], &[1]))),
            }
        }
        Host::Plain(p) => wrap_plain(flex(vec![loss(&values(&p))], &[1])),
        Host::Other(t) => composed(t),
    }
}

/// The checks [`cross_entropy`] and [`target_log_probs`] make of their arguments.
fn check_targets(n: usize, v: usize, targets: &[u32]) {
    assert_eq!(n, targets.len(), "one target per logit row");
    assert!(n > 0 && v > 0, "no logits to score");
    assert!(
        targets.iter().all(|&t| (t as usize) < v),
        "target outside the vocabulary of {v}"
    );
}

/// [`cross_entropy`] as composed tensor operations.
fn composed_cross_entropy(logits: Tensor<2>, targets: &[u32]) -> Tensor<1> {
    composed_target_log_probs(logits, targets).mean().neg()
}

/// [`target_log_probs`] as composed tensor operations, as an `[n, 1]` tensor.
fn composed_target_log_probs(logits: Tensor<2>, targets: &[u32]) -> Tensor<2> {
    let ids: Vec<i64> = targets.iter().map(|&x| i64::from(x)).collect();
    let idx =
        Tensor::<2, Int>::from_data(TensorData::new(ids, [targets.len(), 1]), &logits.device());
    log_softmax(logits, 1).gather(1, idx)
}

/// Mean loss over rows and its gradient `(softmax - onehot) / n`.
fn cross_entropy_with_gradient(x: &[f32], v: usize, targets: &[u32]) -> (f32, Vec<f32>) {
    let n = targets.len();
    let mut grad = zeros(n * v);
    let loss = losses_and_gradient(x, v, targets, 1.0 / n as f32, &mut grad);
    ((loss / n as f64) as f32, grad)
}

/// Writes each row's `(softmax - onehot) · inv_n` into `grad` and returns
/// the sum of the rows' losses, added in chunk order so that it does not
/// depend on thread scheduling.
fn losses_and_gradient(x: &[f32], v: usize, targets: &[u32], inv_n: f32, grad: &mut [f32]) -> f64 {
    let chunk = rows_per_task(v);
    let partial: Vec<f64> = grad
        .par_chunks_mut(v * chunk)
        .zip(x.par_chunks(v * chunk))
        .zip(targets.par_chunks(chunk))
        .map(|((g, rows), ts)| {
            let mut loss = 0f64;
            for ((g, row), &t) in g.chunks_mut(v).zip(rows.chunks(v)).zip(ts) {
                let t = t as usize;
                let max = vmath::max(row);
                let sum = vmath::exp_into(g, row, 1.0, max);
                let scale = inv_n / sum;
                for o in g.iter_mut() {
                    *o *= scale;
                }
                g[t] -= inv_n;
                loss += f64::from(sum.ln() + max - row[t]);
            }
            loss
        })
        .collect();
    partial.iter().sum()
}

/// Mean of [`row_nlls`], summed in row order.
fn mean_nll(x: &[f32], v: usize, targets: &[u32]) -> f32 {
    let nll = row_nlls(x, v, targets);
    (nll.iter().copied().map(f64::from).sum::<f64>() / nll.len() as f64) as f32
}

/// Each row's negative log-likelihood of its target.
fn row_nlls(x: &[f32], v: usize, targets: &[u32]) -> Vec<f32> {
    let mut out = vec![0f32; targets.len()];
    let chunk = rows_per_task(v);
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(v * chunk))
        .zip(targets.par_chunks(chunk))
        .for_each(|((o, rows), ts)| {
            for ((o, row), &t) in o.iter_mut().zip(rows.chunks(v)).zip(ts) {
                *o = row_nll(row, t as usize);
            }
        });
    out
}

/// `logsumexp(row) - row[t]`: one row's negative log-likelihood of target `t`.
fn row_nll(row: &[f32], t: usize) -> f32 {
    let max = vmath::max(row);
    vmath::sum_exp(row, max).ln() + max - row[t]
}

/// Log-probability of each row's target under `softmax(logits)` (`[n, vocab]`
/// logits, `n` targets below `vocab`): what evaluation scores, without a
/// gradient. On `flex` one pass per row; elsewhere log-softmax and gather.
///
/// # Panics
/// As [`cross_entropy`].
pub fn target_log_probs(logits: Tensor<2>, targets: &[u32]) -> Vec<f32> {
    let [n, v] = logits.dims();
    check_targets(n, v, targets);
    let log_probs =
        |x: &[f32]| -> Vec<f32> { row_nlls(x, v, targets).into_iter().map(|l| -l).collect() };
    match host(logits) {
        Host::Tracked(ad) => log_probs(&values(ad.primitive())),
        Host::Plain(p) => log_probs(&values(&p)),
        Host::Other(t) => composed_target_log_probs(t, targets)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap_or_else(|e| panic!("reading log-probabilities back: {e:?}")),
    }
}

/// The backward step of a scalar loss whose gradient with respect to its
/// input was computed in the forward pass ([`cross_entropy`]: `(softmax -
/// onehot) / n`; [`linear_cross_entropy`]: that times the LM head): it only
/// scales it by the loss's upstream gradient.
#[derive(Debug)]
struct ScaledGradientBackward;

impl Backward<Flex, 1> for ScaledGradientBackward {
    /// The input's gradient for an upstream gradient of 1.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let scale = values(&g).first().copied().unwrap_or(1.0);
        let mut grad = ops.state;
        if scale != 1.0 {
            for x in grad.storage_mut::<f32>() {
                *x *= scale;
            }
        }
        grads.register::<Flex>(parent.id, grad);
    }
}

// ---------------------------------------------------------------------------
// LM head and cross-entropy, over chunks of rows
// ---------------------------------------------------------------------------

/// Rows whose logits [`linear_cross_entropy`] holds at once: 256 rows of a
/// 4096-token vocabulary are 4 MiB, where a step's 2048 rows are 32 MiB.
#[cfg(not(test))]
const LOGIT_ROWS: usize = 256;
#[cfg(test)]
const LOGIT_ROWS: usize = 5;

/// [`cross_entropy`] of `hidden · weight` (`[n, h]` hidden states, `[h, vocab]`
/// LM head): the training loss, computed so that the `[n, vocab]` logits and
/// their gradient never exist whole.
///
/// With a frozen `weight` (expert training) on `flex`, the logits of
/// [`LOGIT_ROWS`] rows at a time are computed, turned into the loss and the
/// gradient `(softmax - onehot) / n` and multiplied back through the head,
/// so the forward pass leaves only the hidden states' gradient `[n, h]` for
/// the backward step to scale. A weight that is trained (anchor
/// pretraining), or another backend, takes the plain product and
/// [`cross_entropy`].
///
/// # Panics
/// As [`cross_entropy`], and if the inner dimensions differ.
pub fn linear_cross_entropy(hidden: Tensor<2>, weight: &Tensor<2>, targets: &[u32]) -> Tensor<1> {
    let [n, h] = hidden.dims();
    let [wh, v] = weight.dims();
    assert_eq!(h, wh, "hidden width differs from the LM head's");
    check_targets(n, v, targets);
    if weight.is_require_grad() {
        return cross_entropy(hidden.matmul(weight.clone()), targets);
    }
    let head = match host(weight.clone()) {
        Host::Tracked(ad) => ad.primitive().clone(),
        Host::Plain(p) => p,
        Host::Other(w) => return cross_entropy(hidden.matmul(w), targets),
    };
    scalar_loss(
        hidden,
        |x| {
            let (loss, dx) = head_losses(x, h, &head, targets, true);
            (loss, dx.unwrap_or_default())
        },
        |x| head_losses(x, h, &head, targets, false).0,
        |x| cross_entropy(x.matmul(weight.clone()), targets),
    )
}

/// Mean loss of `x · head` (`x`: `[n, h]` rows, `head`: `[h, v]`) over
/// `targets`, [`LOGIT_ROWS`] rows at a time; with `gradient`, also the
/// gradient with respect to `x`, `((softmax - onehot) / n) · headᵀ`.
fn head_losses(
    x: &[f32],
    h: usize,
    head: &FlexTensor,
    targets: &[u32],
    gradient: bool,
) -> (f32, Option<Vec<f32>>) {
    use crate::matrix::{View, ViewMut, parallel_product};
    let n = targets.len();
    let head = crate::matmul::viewable(head);
    let head = crate::matmul::view_of(&head);
    let v = head.col_count();
    let inv_n = 1.0 / n as f32;
    let mut loss = 0f64;
    // One logits buffer and one gradient buffer for every chunk.
    let rows = LOGIT_ROWS.min(n);
    let mut logits = zeros(rows * v);
    let mut grad = if gradient {
        zeros(rows * v)
    } else {
        Vec::new()
    };
    let mut dx = gradient.then(|| zeros(n * h));
    for (i, ts) in targets.chunks(LOGIT_ROWS).enumerate() {
        let (r0, c) = (i * LOGIT_ROWS, ts.len());
        let logits = &mut logits[..c * v];
        parallel_product(
            ViewMut::rows(logits, 0, c, v, v),
            View::rows(x, r0 * h, c, h, h),
            head,
            false,
        );
        match dx.as_mut() {
            Some(dx) => {
                let grad = &mut grad[..c * v];
                loss += losses_and_gradient(logits, v, ts, inv_n, grad);
                parallel_product(
                    ViewMut::rows(dx, r0 * h, c, h, h),
                    View::rows(grad, 0, c, v, v),
                    head.t(),
                    false,
                );
            }
            None => {
                loss += row_nlls(logits, v, ts)
                    .iter()
                    .copied()
                    .map(f64::from)
                    .sum::<f64>();
            }
        }
    }
    ((loss / n as f64) as f32, dx)
}

// ---------------------------------------------------------------------------
// Causal softmax of attention scores
// ---------------------------------------------------------------------------

/// `softmax(scale · scores)` over the last dimension of `[batch, heads, t, t]`
/// scores, with every key after the query masked out (probability 0).
pub fn causal_softmax(scores: Tensor<4>, scale: f32) -> Tensor<4> {
    let dims = scores.dims();
    let t = dims[3];
    assert_eq!(dims[2], t, "causal softmax needs square score matrices");
    assert!(t > 0, "causal softmax of an empty sequence");
    // The kernels scale the row maximum, which is the scaled maximum only for scale > 0.
    assert!(scale > 0.0, "causal softmax needs a positive scale");
    match host(scores) {
        Host::Tracked(ad) => {
            let p = flex(
                causal_softmax_rows(&values(ad.primitive()), t, scale),
                &dims,
            );
            match CausalSoftmaxBackward
                .prepare::<NoCheckpointing>([ad.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => wrap(prep.finish((p.clone(), scale), p)),
                OpsKind::UnTracked(prep) => wrap(prep.finish(p)),
            }
        }
        Host::Plain(p) => wrap_plain(flex(causal_softmax_rows(&values(&p), t, scale), &dims)),
        Host::Other(s) => composed_causal_softmax(s, scale),
    }
}

/// [`causal_softmax`] as composed tensor operations.
fn composed_causal_softmax(scores: Tensor<4>, scale: f32) -> Tensor<4> {
    let dims = scores.dims();
    let t = dims[3];
    // `tril_mask` is true outside the lower triangle (diagonal included):
    // exactly the future keys, k > q.
    let future = Tensor::<2, Bool>::tril_mask([t, t], 0, &scores.device())
        .reshape([1, 1, t, t])
        .expand(dims);
    softmax(
        scores
            .mul_scalar(scale)
            .mask_fill(future, f32::NEG_INFINITY),
        3,
    )
}

fn causal_softmax_rows(x: &[f32], t: usize, scale: f32) -> Vec<f32> {
    let mut out = zeros(x.len());
    let chunk = rows_per_task(t);
    out.par_chunks_mut(t * chunk)
        .zip(x.par_chunks(t * chunk))
        .enumerate()
        .for_each(|(c, (o, rows))| {
            for (r, (o, row)) in o.chunks_mut(t).zip(rows.chunks(t)).enumerate() {
                let q = (c * chunk + r) % t;
                softmax_row(&mut o[..=q], &row[..=q], scale);
            }
        });
    out
}

/// `out = softmax(x · scale)` for one row (`scale > 0`).
pub(crate) fn softmax_row(out: &mut [f32], x: &[f32], scale: f32) {
    let max = vmath::max(x) * scale;
    let inv = 1.0 / vmath::exp_into(out, x, scale, max);
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// The gradient of [`softmax_row`]'s input: `dx = scale · p ∘ (dy − p·dy)`,
/// for probabilities `p` and the gradient `dy` of the output.
pub(crate) fn softmax_row_backward(dx: &mut [f32], p: &[f32], dy: &[f32], scale: f32) {
    let dot: f32 = p.iter().zip(dy).map(|(a, b)| a * b).sum();
    for ((o, &a), &b) in dx.iter_mut().zip(p).zip(dy) {
        *o = scale * a * (b - dot);
    }
}

#[derive(Debug)]
struct CausalSoftmaxBackward;

impl Backward<Flex, 1> for CausalSoftmaxBackward {
    /// The probabilities and the scale.
    type State = (FlexTensor, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let (p, scale) = ops.state;
        let shape = p.layout().shape().to_vec();
        let t = shape[3];
        let p = values(&p);
        let dy = values(&dy);
        let mut dx = zeros(p.len());
        let chunk = rows_per_task(t);
        dx.par_chunks_mut(t * chunk)
            .zip(p.par_chunks(t * chunk).zip(dy.par_chunks(t * chunk)))
            .enumerate()
            .for_each(|(c, (dx, (p, dy)))| {
                for (r, ((dx, p), dy)) in dx
                    .chunks_mut(t)
                    .zip(p.chunks(t))
                    .zip(dy.chunks(t))
                    .enumerate()
                {
                    let q = (c * chunk + r) % t;
                    softmax_row_backward(&mut dx[..=q], &p[..=q], &dy[..=q], scale);
                }
            });
        grads.register::<Flex>(parent.id, flex(dx, &shape));
    }
}

// ---------------------------------------------------------------------------
// SwiGLU activation
// ---------------------------------------------------------------------------

/// `silu(gate) · up` of fused gate/up projections `[n, 2·inter]` (gate columns
/// first), as `[n, inter]`.
pub fn swiglu(gate_up: Tensor<2>) -> Tensor<2> {
    let [n, two] = gate_up.dims();
    assert!(
        two > 0 && two % 2 == 0,
        "gate/up width {two} is not two equal halves"
    );
    let inter = two / 2;
    match host(gate_up) {
        Host::Tracked(ad) => {
            let y = flex(swiglu_rows(&values(ad.primitive()), inter), &[n, inter]);
            match SwigluBackward
                .prepare::<NoCheckpointing>([ad.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => wrap(prep.finish(ad.primitive().clone(), y)),
                OpsKind::UnTracked(prep) => wrap(prep.finish(y)),
            }
        }
        Host::Plain(p) => wrap_plain(flex(swiglu_rows(&values(&p), inter), &[n, inter])),
        Host::Other(gu) => composed_swiglu(gu),
    }
}

/// [`swiglu`] as composed tensor operations.
fn composed_swiglu(gate_up: Tensor<2>) -> Tensor<2> {
    let inter = gate_up.dims()[1] / 2;
    let gate = gate_up.clone().narrow(1, 0, inter);
    let up = gate_up.narrow(1, inter, inter);
    silu(gate) * up
}

fn swiglu_rows(x: &[f32], inter: usize) -> Vec<f32> {
    let mut out = zeros(x.len() / 2);
    let chunk = rows_per_task(2 * inter);
    out.par_chunks_mut(inter * chunk)
        .zip(x.par_chunks(2 * inter * chunk))
        .for_each(|(o, rows)| {
            for (o, row) in o.chunks_mut(inter).zip(rows.chunks(2 * inter)) {
                let (g, u) = row.split_at(inter);
                vmath::swiglu(o, g, u);
            }
        });
    out
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 1> for SwigluBackward {
    /// The gate/up input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let shape = ops.state.layout().shape().to_vec();
        let inter = shape[1] / 2;
        let x = values(&ops.state);
        let dy = values(&dy);
        let mut dx = zeros(x.len());
        let chunk = rows_per_task(2 * inter);
        dx.par_chunks_mut(2 * inter * chunk)
            .zip(
                x.par_chunks(2 * inter * chunk)
                    .zip(dy.par_chunks(inter * chunk)),
            )
            .for_each(|(dx, (x, dy))| {
                for ((dx, x), dy) in dx
                    .chunks_mut(2 * inter)
                    .zip(x.chunks(2 * inter))
                    .zip(dy.chunks(inter))
                {
                    let (dg, du) = dx.split_at_mut(inter);
                    let (g, u) = x.split_at(inter);
                    vmath::swiglu_backward(dg, du, g, u, dy);
                }
            });
        grads.register::<Flex>(parent.id, flex(dx, &shape));
    }
}

// ---------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------

/// RMSNorm over the last dimension of `[n, d]` rows: `x / sqrt(mean(x²) + eps) · weight`.
pub fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    let [n, d] = x.dims();
    assert!(d > 0, "RMSNorm over empty rows");
    assert_eq!(
        weight.dims()[0],
        d,
        "RMSNorm weight length differs from the row width"
    );
    let eps = eps as f32;
    match (host(x), host(weight.clone())) {
        (Host::Tracked(x), Host::Tracked(w)) => {
            let (y, inv) = rms_norm_rows(&values(x.primitive()), &values(w.primitive()), eps);
            let y = flex(y, &[n, d]);
            match RmsNormBackward
                .prepare::<NoCheckpointing>([x.node(), w.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let state = (x.primitive().clone(), w.primitive().clone(), inv);
                    wrap(prep.finish(state, y))
                }
                OpsKind::UnTracked(prep) => wrap(prep.finish(y)),
            }
        }
        (Host::Plain(x), Host::Plain(w)) => {
            let (y, _) = rms_norm_rows(&values(&x), &values(&w), eps);
            wrap_plain(flex(y, &[n, d]))
        }
        (x, _) => {
            let x = match x {
                Host::Tracked(t) => wrap(t),
                Host::Plain(t) => wrap_plain(t),
                Host::Other(t) => t,
            };
            composed_rms_norm(x, weight, eps)
        }
    }
}

/// [`rms_norm`] as composed tensor operations.
fn composed_rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f32) -> Tensor<2> {
    let d = weight.dims()[0];
    let inv = x
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    x * inv * weight.clone().reshape([1, d])
}

/// Normalised rows and each row's `1 / rms`.
fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let n = x.len() / d;
    let mut y = zeros(x.len());
    let mut inv = vec![0f32; n];
    let chunk = rows_per_task(d);
    y.par_chunks_mut(d * chunk)
        .zip(inv.par_chunks_mut(chunk))
        .zip(x.par_chunks(d * chunk))
        .for_each(|((y, inv), x)| {
            for ((y, r), x) in y.chunks_mut(d).zip(inv.iter_mut()).zip(x.chunks(d)) {
                let ms = x.iter().map(|a| a * a).sum::<f32>() / d as f32;
                *r = 1.0 / (ms + eps).sqrt();
                for ((y, &a), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = a * *r * w;
                }
            }
        });
    (y, inv)
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    /// Input rows, weight, and each row's `1 / rms`.
    type State = (FlexTensor, FlexTensor, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [px, pw] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (xs, ws, inv) = ops.state;
        let shape = xs.layout().shape().to_vec();
        let d = shape[1];
        let x = values(&xs);
        let w = values(&ws);
        let dy = values(&dy);
        let chunk = rows_per_task(d);
        if let Some(px) = px {
            let mut dx = zeros(x.len());
            dx.par_chunks_mut(d * chunk)
                .zip(x.par_chunks(d * chunk).zip(dy.par_chunks(d * chunk)))
                .zip(inv.par_chunks(chunk))
                .for_each(|((dx, (x, dy)), inv)| {
                    for (((dx, x), dy), &r) in
                        dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)).zip(inv)
                    {
                        // dx = r·w·dy − x·r³·mean(x·w·dy)
                        let m = x
                            .iter()
                            .zip(dy)
                            .zip(w.iter())
                            .map(|((a, g), w)| a * w * g)
                            .sum::<f32>()
                            / d as f32;
                        let r3m = r * r * r * m;
                        for (((o, &a), &g), &w) in dx.iter_mut().zip(x).zip(dy).zip(w.iter()) {
                            *o = r * w * g - a * r3m;
                        }
                    }
                });
            grads.register::<Flex>(px.id, flex(dx, &shape));
        }
        if let Some(pw) = pw {
            let dw = x
                .par_chunks(d * chunk)
                .zip(dy.par_chunks(d * chunk))
                .zip(inv.par_chunks(chunk))
                .map(|((x, dy), inv)| {
                    let mut acc = vec![0f32; d];
                    for ((x, dy), &r) in x.chunks(d).zip(dy.chunks(d)).zip(inv) {
                        for ((o, &a), &g) in acc.iter_mut().zip(x).zip(dy) {
                            *o += a * r * g;
                        }
                    }
                    acc
                })
                .collect::<Vec<_>>()
                .into_iter()
                // Summed in chunk order, so the gradient does not depend on thread scheduling.
                .fold(vec![0f32; d], |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                    a
                });
            grads.register::<Flex>(pw.id, flex(dw, &[d]));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use burn::tensor::Device;

    #[test]
    fn zeros_are_zeros_at_every_size_and_in_reused_memory() {
        // Below, at and past the parallel threshold, with a partial last task.
        for n in [
            0,
            1,
            TASK_ELEMENTS * 4 - 1,
            TASK_ELEMENTS * 4,
            TASK_ELEMENTS * 9 + 3,
        ] {
            // Dirty memory of the same size first, so that a reused block
            // that was not cleared would show.
            drop(std::hint::black_box(vec![7.5f32; n]));
            let z = zeros(n);
            assert_eq!(z.len(), n);
            assert!(z.iter().all(|&v| v.to_bits() == 0), "n = {n}");
        }
    }

    /// Deterministic values in about [-scale, scale].
    fn numbers(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn leaf<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        let device = Device::flex().autodiff();
        Tensor::<D>::from_data(TensorData::new(values, shape), &device).require_grad()
    }

    fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * scale,
                "{what}: element {i}: fused {x} composed {y} (scale {scale})"
            );
        }
    }

    /// Value and input gradient of `f` under a random weighting of its output,
    /// so the upstream gradient is not uniform.
    fn value_and_grad<const D: usize, const E: usize>(
        f: impl Fn(Tensor<D>) -> Tensor<E>,
        input: &[f32],
        shape: [usize; D],
        out_weights: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let x = leaf(input.to_vec(), shape);
        let y = f(x.clone());
        let w =
            Tensor::<E>::from_data(TensorData::new(out_weights.to_vec(), y.dims()), &y.device());
        let grads = (y.clone() * w).sum().backward();
        (host_values(y.inner()), host_values(x.grad(&grads).unwrap()))
    }

    #[test]
    fn flex_autodiff_tensors_take_the_fused_path() {
        let t = leaf(vec![1.0, 2.0], [1, 2]);
        assert!(matches!(host(t), Host::Tracked(_)));
        let plain =
            Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2]), &Device::flex());
        assert!(matches!(host(plain), Host::Plain(_)));
    }

    #[test]
    fn cross_entropy_matches_the_composed_loss_and_gradient() {
        let (n, v) = (37, 301);
        let logits = numbers(n * v, 1, 6.0);
        let targets: Vec<u32> = (0..n).map(|i| ((i * 97 + 5) % v) as u32).collect();
        for upstream in [1.0f32, -0.37] {
            let fused =
                value_and_grad(|x| cross_entropy(x, &targets), &logits, [n, v], &[upstream]);
            let composed = value_and_grad(
                |x| composed_cross_entropy(x, &targets),
                &logits,
                [n, v],
                &[upstream],
            );
            assert_close("loss", &fused.0, &composed.0, 1e-5);
            assert_close("gradient", &fused.1, &composed.1, 1e-5);
        }
        // Without autodiff the fused forward gives the same loss.
        let plain =
            Tensor::<2>::from_data(TensorData::new(logits.clone(), [n, v]), &Device::flex());
        let fused = host_values(cross_entropy(plain.clone(), &targets));
        let composed = host_values(composed_cross_entropy(plain, &targets));
        assert_close("plain loss", &fused, &composed, 1e-5);
    }

    #[test]
    fn linear_cross_entropy_matches_the_product_then_the_loss() {
        // 23 rows: four full chunks of LOGIT_ROWS (5 in tests) and a short one.
        let (n, h, v) = (23, 7, 31);
        let x = numbers(n * h, 21, 2.0);
        let w = numbers(h * v, 22, 1.5);
        let targets: Vec<u32> = (0..n).map(|i| ((i * 13 + 4) % v) as u32).collect();
        let device = Device::flex().autodiff();
        // A frozen head on the autodiff device (expert training): the chunked path.
        let frozen = Tensor::<2>::from_data(TensorData::new(w.clone(), [h, v]), &device);
        for upstream in [1.0f32, -0.37] {
            let fused = value_and_grad(
                |x| linear_cross_entropy(x, &frozen, &targets),
                &x,
                [n, h],
                &[upstream],
            );
            let composed = value_and_grad(
                |x| composed_cross_entropy(x.matmul(frozen.clone()), &targets),
                &x,
                [n, h],
                &[upstream],
            );
            assert_close("loss", &fused.0, &composed.0, 1e-5);
            assert_close("hidden gradient", &fused.1, &composed.1, 1e-5);
        }
        // A trained head (anchor pretraining) gets its gradient too.
        let trained = leaf(w.clone(), [h, v]);
        let hidden = leaf(x.clone(), [n, h]);
        let grads = linear_cross_entropy(hidden.clone(), &trained, &targets).backward();
        let (trained_c, hidden_c) = (leaf(w.clone(), [h, v]), leaf(x.clone(), [n, h]));
        let grads_c =
            composed_cross_entropy(hidden_c.clone().matmul(trained_c.clone()), &targets).backward();
        for (what, a, b) in [
            (
                "head gradient",
                trained.grad(&grads),
                trained_c.grad(&grads_c),
            ),
            (
                "hidden gradient",
                hidden.grad(&grads),
                hidden_c.grad(&grads_c),
            ),
        ] {
            assert_close(
                what,
                &host_values(a.unwrap()),
                &host_values(b.unwrap()),
                1e-5,
            );
        }
        // Without autodiff, the same loss.
        let plain = |values: &[f32], shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(values.to_vec(), shape), &Device::flex())
        };
        let (px, pw) = (plain(&x, [n, h]), plain(&w, [h, v]));
        let fused = host_values(linear_cross_entropy(px.clone(), &pw, &targets));
        let composed = host_values(composed_cross_entropy(px.matmul(pw), &targets));
        assert_close("plain loss", &fused, &composed, 1e-5);
    }

    #[test]
    fn target_log_probs_match_log_softmax_and_the_loss() {
        let (n, v) = (29, 263);
        let logits = numbers(n * v, 7, 8.0);
        let targets: Vec<u32> = (0..n).map(|i| ((i * 31 + 2) % v) as u32).collect();
        let plain =
            Tensor::<2>::from_data(TensorData::new(logits.clone(), [n, v]), &Device::flex());
        let fused = target_log_probs(plain.clone(), &targets);
        let ids: Vec<i64> = targets.iter().map(|&x| i64::from(x)).collect();
        let idx = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, 1]), &Device::flex());
        let composed = host_values(log_softmax(plain.clone(), 1).gather(1, idx));
        assert_close("log-probabilities", &fused, &composed, 1e-5);
        assert!(fused.iter().all(|&p| p < 0.0));
        // Their negated mean is the cross-entropy.
        let mean = -fused.iter().map(|&p| f64::from(p)).sum::<f64>() / n as f64;
        let loss = host_values(cross_entropy(plain, &targets));
        assert_close("mean", &[mean as f32], &loss, 1e-5);
    }

    #[test]
    fn causal_softmax_matches_the_composed_softmax_and_gradient() {
        let shape = [2, 3, 9, 9];
        let n: usize = shape.iter().product();
        let scores = numbers(n, 2, 4.0);
        let weights = numbers(n, 3, 1.0);
        let scale = 0.35;
        let fused = value_and_grad(|x| causal_softmax(x, scale), &scores, shape, &weights);
        let composed = value_and_grad(
            |x| composed_causal_softmax(x, scale),
            &scores,
            shape,
            &weights,
        );
        assert_close("probabilities", &fused.0, &composed.0, 1e-5);
        assert_close("gradient", &fused.1, &composed.1, 1e-5);
        // Future keys get exactly zero probability and gradient.
        for (i, (p, g)) in fused.0.iter().zip(&fused.1).enumerate() {
            let (q, k) = ((i / 9) % 9, i % 9);
            if k > q {
                assert_eq!((*p, *g), (0.0, 0.0), "query {q} key {k}");
            }
        }
    }

    #[test]
    fn strided_views_give_the_same_values_and_gradients() {
        // Transposed and narrowed inputs are not contiguous; the kernels copy them.
        let (n, inter) = (9, 7);
        let x = numbers(n * 2 * inter, 11, 4.0);
        let w = numbers(n * inter, 12, 1.0);
        let fused = value_and_grad(|x| swiglu(x.transpose()), &x, [2 * inter, n], &w);
        let composed = value_and_grad(|x| composed_swiglu(x.transpose()), &x, [2 * inter, n], &w);
        assert_close("swiglu", &fused.0, &composed.0, 1e-5);
        assert_close("swiglu gradient", &fused.1, &composed.1, 1e-5);

        let shape = [1, 2, 8, 8];
        let scores = numbers(128, 13, 3.0);
        let w = numbers(128, 14, 1.0);
        let fused = value_and_grad(
            |x| causal_softmax(x.swap_dims(2, 3), 0.5),
            &scores,
            shape,
            &w,
        );
        let composed = value_and_grad(
            |x| composed_causal_softmax(x.swap_dims(2, 3), 0.5),
            &scores,
            shape,
            &w,
        );
        assert_close("causal softmax", &fused.0, &composed.0, 1e-5);
        assert_close("causal softmax gradient", &fused.1, &composed.1, 1e-5);

        let (n, v) = (6, 40);
        let logits = numbers(n * (v + 3), 15, 5.0);
        let targets: Vec<u32> = (0..n).map(|i| (i * 7 % v) as u32).collect();
        let fused = value_and_grad(
            |x| cross_entropy(x.narrow(1, 2, v), &targets),
            &logits,
            [n, v + 3],
            &[1.0],
        );
        let composed = value_and_grad(
            |x| composed_cross_entropy(x.narrow(1, 2, v), &targets),
            &logits,
            [n, v + 3],
            &[1.0],
        );
        assert_close("cross-entropy", &fused.0, &composed.0, 1e-5);
        assert_close("cross-entropy gradient", &fused.1, &composed.1, 1e-5);

        let (n, d) = (5, 12);
        let x = numbers(n * (d + 4), 16, 2.0);
        // A frozen weight on the autodiff device: the fused path with one tracked parent.
        let weight = Tensor::<1>::from_data(
            TensorData::new(numbers(d, 17, 1.0), [d]),
            &Device::flex().autodiff(),
        );
        let w = numbers(n * d, 18, 1.0);
        let fused = value_and_grad(
            |x| rms_norm(x.narrow(1, 4, d), &weight, 1e-6),
            &x,
            [n, d + 4],
            &w,
        );
        let composed = value_and_grad(
            |x| composed_rms_norm(x.narrow(1, 4, d), &weight, 1e-6),
            &x,
            [n, d + 4],
            &w,
        );
        assert_close("rms norm", &fused.0, &composed.0, 1e-5);
        assert_close("rms norm gradient", &fused.1, &composed.1, 1e-5);
    }

    #[test]
    fn swiglu_matches_the_composed_activation_and_gradient() {
        let (n, inter) = (13, 11);
        let x = numbers(n * 2 * inter, 4, 5.0);
        let weights = numbers(n * inter, 5, 1.0);
        let fused = value_and_grad(swiglu, &x, [n, 2 * inter], &weights);
        let composed = value_and_grad(composed_swiglu, &x, [n, 2 * inter], &weights);
        assert_close("activation", &fused.0, &composed.0, 1e-5);
        assert_close("gradient", &fused.1, &composed.1, 1e-5);
    }

    #[test]
    fn rms_norm_matches_the_composed_norm_and_both_gradients() {
        let (n, d) = (17, 24);
        let x = numbers(n * d, 6, 3.0);
        let w = numbers(d, 7, 1.5);
        let weights = numbers(n * d, 8, 1.0);
        let run = |fused: bool| {
            let xt = leaf(x.clone(), [n, d]);
            let wt = leaf(w.clone(), [d]);
            let y = if fused {
                rms_norm(xt.clone(), &wt, 1e-6)
            } else {
                composed_rms_norm(xt.clone(), &wt, 1e-6)
            };
            let r = Tensor::<2>::from_data(TensorData::new(weights.clone(), [n, d]), &y.device());
            let grads = (y.clone() * r).sum().backward();
            (
                host_values(y.inner()),
                host_values(xt.grad(&grads).unwrap()),
                host_values(wt.grad(&grads).unwrap()),
            )
        };
        let (fused, composed) = (run(true), run(false));
        assert_close("output", &fused.0, &composed.0, 1e-5);
        assert_close("input gradient", &fused.1, &composed.1, 1e-5);
        assert_close("weight gradient", &fused.2, &composed.2, 1e-5);
        // A frozen weight (no gradient wanted) still gives the input gradient.
        let xt = leaf(x.clone(), [n, d]);
        let frozen = Tensor::<1>::from_data(TensorData::new(w.clone(), [d]), &xt.device());
        let r = Tensor::<2>::from_data(TensorData::new(weights.clone(), [n, d]), &xt.device());
        let grads = (rms_norm(xt.clone(), &frozen, 1e-6) * r).sum().backward();
        assert_close(
            "frozen-weight input gradient",
            &host_values(xt.grad(&grads).unwrap()),
            &fused.1,
            1e-6,
        );
    }
}
