//! Causal self-attention with rotary position embeddings, as one fused
//! operation with a hand-written backward pass.
//!
//! Composed from tensor operations, attention copies every head into a
//! `[batch, heads, seq, head_dim]` layout and back, builds RoPE from five
//! element-wise passes, and multiplies the full `seq × seq` score matrix
//! although the causal mask discards half of it. Here queries, keys and values
//! stay in the token-major `[tokens, heads·head_dim]` layout the projections
//! produce: each head is a strided view of it (see [`crate::matrix`]), RoPE is
//! one pass, and the products run over blocks of [`BLOCK`] query rows, each
//! against the keys up to its last row only, so about
//! `(1 + BLOCK/seq) / 2` of the full products' work is done (62 % at 256
//! tokens). The backward pass uses the same blocks.
//!
//! On backends other than `flex`, the same maths runs as composed tensor
//! operations ([`composed`]); tests compare both, values and gradients.

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::fused::{
    Host, flex, host, rows_per_task, softmax_row, softmax_row_backward, tensor, values, wrap,
    wrap_plain, zeros,
};
use crate::matrix::{View, ViewMut, product};

/// Query rows per block of the causal products. Smaller blocks skip more of
/// the masked half but make smaller, less efficient matrix products; tests
/// use a block that does not divide their sequence length.
#[cfg(not(test))]
const BLOCK: usize = 64;
#[cfg(test)]
const BLOCK: usize = 3;

/// Rotary position tables, `[positions, head_dim]`, in the rotate-half layout
/// (each frequency appears in both halves of a head).
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Arc<[f32]>,
    sin: Arc<[f32]>,
    positions: usize,
    head_dim: usize,
}

impl Rope {
    /// Tables for positions `0..max_len` of a head of width `head_dim` (even).
    pub fn new(head_dim: usize, max_len: usize, theta: f64) -> Self {
        assert!(head_dim.is_multiple_of(2), "RoPE needs an even head width");
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_len * head_dim);
        let mut sin = Vec::with_capacity(max_len * head_dim);
        // transformers computes inv_freq and the angles in f32; do the same so the
        // tables agree bit for bit at long positions.
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta.powf((2 * i) as f64 / head_dim as f64) as f32))
            .collect();
        for p in 0..max_len {
            for _ in 0..2 {
                for f in &inv {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Self {
            cos: cos.into(),
            sin: sin.into(),
            positions: max_len,
            head_dim,
        }
    }

    /// Positions the tables cover.
    pub fn positions(&self) -> usize {
        self.positions
    }

    fn at(&self, pos: usize) -> (&[f32], &[f32]) {
        let d = self.head_dim;
        (
            &self.cos[pos * d..(pos + 1) * d],
            &self.sin[pos * d..(pos + 1) * d],
        )
    }
}

/// The dimensions of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`; each serves `heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl Shape {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn check(&self, rope: &Rope) {
        assert!(
            self.seq > 0 && self.head_dim > 0,
            "attention: empty sequences or heads ({} tokens, head width {})",
            self.seq,
            self.head_dim
        );
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "attention: {} query heads cannot share {} key/value heads",
            self.heads,
            self.kv_heads
        );
        assert_eq!(rope.head_dim, self.head_dim, "attention: RoPE table width");
        assert!(
            self.seq <= rope.positions,
            "attention: {} positions exceed the RoPE table's {}",
            self.seq,
            rope.positions
        );
    }
}

/// `softmax(rope(q)·rope(k)ᵀ / √head_dim, causal) · v` per head, for token-major
/// `q` (`[batch·seq, heads·head_dim]`), `k` and `v` (`[batch·seq,
/// kv_heads·head_dim]`); returns the heads' outputs token-major, `[batch·seq,
/// heads·head_dim]` (ready for the output projection).
///
/// # Panics
/// If the tensors' dimensions do not match `shape`, the sequence is longer than
/// the RoPE tables, or the head counts do not divide.
pub fn causal_attention(
    q: Tensor<2>,
    k: Tensor<2>,
    v: Tensor<2>,
    shape: Shape,
    rope: &Rope,
) -> Tensor<2> {
    shape.check(rope);
    let n = shape.batch * shape.seq;
    let (qw, kw) = (
        shape.heads * shape.head_dim,
        shape.kv_heads * shape.head_dim,
    );
    assert_eq!(q.dims(), [n, qw], "attention: query dimensions");
    assert_eq!(k.dims(), [n, kw], "attention: key dimensions");
    assert_eq!(v.dims(), [n, kw], "attention: value dimensions");
    match (host(q), host(k), host(v)) {
        (Host::Tracked(q), Host::Tracked(k), Host::Tracked(v)) => {
            let vs = values(v.primitive()).into_owned();
            let f = forward(
                &values(q.primitive()),
                &values(k.primitive()),
                &vs,
                shape,
                rope,
            );
            let out = flex(f.out, &[n, qw]);
            match AttentionBackward
                .prepare::<NoCheckpointing>([q.node(), k.node(), v.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let saved = Saved {
                        q: f.q,
                        k: f.k,
                        v: vs,
                        probs: f.probs,
                        shape,
                        rope: rope.clone(),
                    };
                    wrap(prep.finish(Arc::new(saved), out))
                }
                OpsKind::UnTracked(prep) => wrap(prep.finish(out)),
            }
        }
        (Host::Plain(q), Host::Plain(k), Host::Plain(v)) => {
            let f = forward(&values(&q), &values(&k), &values(&v), shape, rope);
            wrap_plain(flex(f.out, &[n, qw]))
        }
        (q, k, v) => composed(tensor(q), tensor(k), tensor(v), shape, rope),
    }
}

/// [`causal_attention`] as composed tensor operations (other backends, and the
/// reference the tests compare against).
pub fn composed(q: Tensor<2>, k: Tensor<2>, v: Tensor<2>, s: Shape, rope: &Rope) -> Tensor<2> {
    s.check(rope);
    let (b, t, d) = (s.batch, s.seq, s.head_dim);
    let device = q.device();
    let table = |x: &[f32]| {
        Tensor::<2>::from_data(TensorData::new(x[..t * d].to_vec(), [t, d]), &device)
            .reshape([1, 1, t, d])
    };
    let (cos, sin) = (table(&rope.cos), table(&rope.sin));
    let apply = |x: Tensor<4>| {
        let half = d / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone() + rotated * sin.clone()
    };
    let heads = |x: Tensor<2>, n: usize| x.reshape([b, t, n, d]).swap_dims(1, 2);
    let q = apply(heads(q, s.heads));
    let mut k = apply(heads(k, s.kv_heads));
    let mut v = heads(v, s.kv_heads);
    if s.kv_heads != s.heads {
        let (nkv, g, nh) = (s.kv_heads, s.group(), s.heads);
        let widen = |x: Tensor<4>| {
            x.reshape([b, nkv, 1, t, d])
                .expand([b, nkv, g, t, d])
                .reshape([b, nh, t, d])
        };
        k = widen(k);
        v = widen(v);
    }
    let scores = q.matmul(k.swap_dims(2, 3));
    let probs = crate::fused::causal_softmax(scores, 1.0 / (d as f32).sqrt());
    probs
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([b * t, s.heads * d])
}

/// What the forward pass computes: the output and what backward needs.
struct Forward {
    /// `[tokens, heads·d]`.
    out: Vec<f32>,
    /// Rotated queries and keys, token-major.
    q: Vec<f32>,
    k: Vec<f32>,
    /// Attention probabilities `[batch, heads, seq, seq]`, zero above the diagonal.
    probs: Vec<f32>,
}

/// The input rows rotated by their positions (token-major, `heads` heads per row).
fn rotate(x: &[f32], heads: usize, s: Shape, rope: &Rope) -> Vec<f32> {
    let (d, half, w) = (s.head_dim, s.head_dim / 2, heads * s.head_dim);
    let mut out = zeros(x.len());
    let chunk = rows_per_task(w);
    out.par_chunks_mut(w * chunk)
        .zip(x.par_chunks(w * chunk))
        .enumerate()
        .for_each(|(c, (o, x))| {
            for (r, (o, x)) in o.chunks_mut(w).zip(x.chunks(w)).enumerate() {
                let (cos, sin) = rope.at((c * chunk + r) % s.seq);
                for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
                    for i in 0..half {
                        o[i] = x[i] * cos[i] - x[i + half] * sin[i];
                        o[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half];
                    }
                }
            }
        });
    out
}

/// Head-major `[batch, heads, seq, d]` values back to token-major rows, with the
/// inverse rotation (the transpose of [`rotate`]) when `rope` is given.
fn to_tokens(x: &[f32], heads: usize, s: Shape, rope: Option<&Rope>) -> Vec<f32> {
    let (t, d, half, w) = (s.seq, s.head_dim, s.head_dim / 2, heads * s.head_dim);
    let mut out = zeros(x.len());
    out.par_chunks_mut(t * w).enumerate().for_each(|(b, o)| {
        for (r, o) in o.chunks_mut(w).enumerate() {
            for (h, o) in o.chunks_mut(d).enumerate() {
                let src = &x[((b * heads + h) * t + r) * d..][..d];
                match rope {
                    None => o.copy_from_slice(src),
                    Some(rope) => {
                        let (cos, sin) = rope.at(r);
                        for i in 0..half {
                            o[i] = src[i] * cos[i] + src[i + half] * sin[i + half];
                            o[i + half] = src[i + half] * cos[i + half] - src[i] * sin[i];
                        }
                    }
                }
            }
        }
    });
    out
}

/// Query-row blocks `(r0, r1)` of a sequence of `t` tokens.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(BLOCK)
        .map(move |r0| (r0, (r0 + BLOCK).min(t)))
}

fn forward(q: &[f32], k: &[f32], v: &[f32], s: Shape, rope: &Rope) -> Forward {
    let (t, d, g) = (s.seq, s.head_dim, s.group());
    let (qw, kw) = (s.heads * d, s.kv_heads * d);
    let scale = 1.0 / (d as f32).sqrt();
    let qr = rotate(q, s.heads, s, rope);
    let kr = rotate(k, s.kv_heads, s, rope);
    let mut probs = zeros(s.batch * s.heads * t * t);
    let mut heads_out = zeros(s.batch * s.heads * t * d);
    // One task per (sequence, key/value head): its query heads are consecutive.
    probs
        .par_chunks_mut(g * t * t)
        .zip(heads_out.par_chunks_mut(g * t * d))
        .enumerate()
        .for_each(|(task, (p, o))| {
            let (b, kvh) = (task / s.kv_heads, task % s.kv_heads);
            let keys = View::rows(&kr, b * t * kw + kvh * d, t, d, kw);
            let vals = View::rows(v, b * t * kw + kvh * d, t, d, kw);
            let mut live = vec![0f32; t];
            for (i, (p, o)) in p.chunks_mut(t * t).zip(o.chunks_mut(t * d)).enumerate() {
                let h = kvh * g + i;
                let queries = View::rows(&qr, b * t * qw + h * d, t, d, qw);
                let mut p = ViewMut::rows(p, 0, t, t, t);
                let mut o = ViewMut::rows(o, 0, t, d, d);
                for (r0, r1) in blocks(t) {
                    product(
                        p.block(r0, r1, 0, r1),
                        queries.block(r0, r1, 0, d),
                        keys.block(0, r1, 0, d).t(),
                        false,
                    );
                    for r in r0..r1 {
                        let row = p.row(r);
                        let n = r + 1;
                        live[..n].copy_from_slice(&row[..n]);
                        softmax_row(&mut row[..n], &live[..n], scale);
                        row[n..r1].fill(0.0);
                    }
                    product(
                        o.block(r0, r1, 0, d),
                        p.view().block(r0, r1, 0, r1),
                        vals.block(0, r1, 0, d),
                        false,
                    );
                }
            }
        });
    Forward {
        out: to_tokens(&heads_out, s.heads, s, None),
        q: qr,
        k: kr,
        probs,
    }
}

/// What the backward pass reads.
#[derive(Debug)]
struct Saved {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    shape: Shape,
    rope: Rope,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = Arc<Saved>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [pq, pk, pv] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if pq.is_none() && pk.is_none() && pv.is_none() {
            return;
        }
        let saved = ops.state;
        let s = saved.shape;
        let dy = values(&dy);
        let (dq, dk, dv) = backward(&saved, &dy);
        let (n, qw, kw) = (
            s.batch * s.seq,
            s.heads * s.head_dim,
            s.kv_heads * s.head_dim,
        );
        let rope = Some(&saved.rope);
        if let Some(p) = pq {
            grads.register::<Flex>(p.id, flex(to_tokens(&dq, s.heads, s, rope), &[n, qw]));
        }
        if let Some(p) = pk {
            grads.register::<Flex>(p.id, flex(to_tokens(&dk, s.kv_heads, s, rope), &[n, kw]));
        }
        if let Some(p) = pv {
            grads.register::<Flex>(p.id, flex(to_tokens(&dv, s.kv_heads, s, None), &[n, kw]));
        }
    }
}

/// Gradients of the rotated queries, the rotated keys and the values, head-major.
fn backward(saved: &Saved, dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let s = saved.shape;
    let (t, d, g) = (s.seq, s.head_dim, s.group());
    let (qw, kw) = (s.heads * d, s.kv_heads * d);
    let scale = 1.0 / (d as f32).sqrt();
    let mut dq = zeros(s.batch * s.heads * t * d);
    let mut dk = zeros(s.batch * s.kv_heads * t * d);
    let mut dv = zeros(s.batch * s.kv_heads * t * d);
    dq.par_chunks_mut(g * t * d)
        .zip(dk.par_chunks_mut(t * d).zip(dv.par_chunks_mut(t * d)))
        .enumerate()
        .for_each(|(task, (dq, (dk, dv)))| {
            let (b, kvh) = (task / s.kv_heads, task % s.kv_heads);
            let keys = View::rows(&saved.k, b * t * kw + kvh * d, t, d, kw);
            let vals = View::rows(&saved.v, b * t * kw + kvh * d, t, d, kw);
            let mut dk = ViewMut::rows(dk, 0, t, d, d);
            let mut dv = ViewMut::rows(dv, 0, t, d, d);
            // d(scores) of one head, `[t, t]`, zero above the diagonal.
            let mut ds = vec![0f32; t * t];
            // One row of d(probs), read while its row of `ds` is written.
            let mut live = vec![0f32; t];
            for (i, dq) in dq.chunks_mut(t * d).enumerate() {
                let h = kvh * g + i;
                let queries = View::rows(&saved.q, b * t * qw + h * d, t, d, qw);
                let dout = View::rows(dy, b * t * qw + h * d, t, d, qw);
                let p = View::rows(&saved.probs, (b * s.heads + h) * t * t, t, t, t);
                let mut ds = ViewMut::rows(&mut ds, 0, t, t, t);
                let mut dq = ViewMut::rows(dq, 0, t, d, d);
                for (r0, r1) in blocks(t) {
                    // d(probs) = d(out) · vᵀ, then through the softmax and the scale.
                    product(
                        ds.block(r0, r1, 0, r1),
                        dout.block(r0, r1, 0, d),
                        vals.block(0, r1, 0, d).t(),
                        false,
                    );
                    for r in r0..r1 {
                        let n = r + 1;
                        let prow = &saved.probs[(b * s.heads + h) * t * t + r * t..][..n];
                        let row = ds.row(r);
                        live[..n].copy_from_slice(&row[..n]);
                        softmax_row_backward(&mut row[..n], prow, &live[..n], scale);
                        row[n..r1].fill(0.0);
                    }
                    product(
                        dq.block(r0, r1, 0, d),
                        ds.view().block(r0, r1, 0, r1),
                        keys.block(0, r1, 0, d),
                        false,
                    );
                }
                // Keys and values of block c are seen by query rows c0.. only.
                let first = i == 0;
                for (c0, c1) in blocks(t) {
                    product(
                        dv.block(c0, c1, 0, d),
                        p.block(c0, t, c0, c1).t(),
                        dout.block(c0, t, 0, d),
                        !first,
                    );
                    product(
                        dk.block(c0, c1, 0, d),
                        ds.view().block(c0, t, c0, c1).t(),
                        queries.block(c0, t, 0, d),
                        !first,
                    );
                }
            }
        });
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn numbers(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: fused {x}, composed {y}"
            );
        }
    }

    fn host_values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// Values and gradients of the fused kernel against the composed operations,
    /// for a sequence the block does not divide and (second case) grouped keys.
    fn compare(s: Shape) {
        let device = Device::flex();
        let rope = Rope::new(s.head_dim, s.seq + 2, 10_000.0);
        let n = s.batch * s.seq;
        let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        let (qd, kd, vd) = (
            numbers(n * qw, 1, 2.0),
            numbers(n * kw, 2, 2.0),
            numbers(n * kw, 3, 1.0),
        );
        let weights = numbers(n * qw, 4, 1.0);
        let tracked = device.clone().autodiff();
        let leaf = |x: &Vec<f32>, w: usize| {
            Tensor::<2>::from_data(TensorData::new(x.clone(), [n, w]), &tracked).require_grad()
        };
        let run = |fused: bool| {
            let (q, k, v) = (leaf(&qd, qw), leaf(&kd, kw), leaf(&vd, kw));
            let out = if fused {
                causal_attention(q.clone(), k.clone(), v.clone(), s, &rope)
            } else {
                composed(q.clone(), k.clone(), v.clone(), s, &rope)
            };
            let w = Tensor::<2>::from_data(TensorData::new(weights.clone(), [n, qw]), &tracked);
            let grads = (out.clone() * w).sum().backward();
            let g = |x: &Tensor<2>| host_values(x.grad(&grads).unwrap());
            (host_values(out.inner()), g(&q), g(&k), g(&v))
        };
        let (fo, fq, fk, fv) = run(true);
        let (co, cq, ck, cv) = run(false);
        close(&fo, &co, 1e-5, "output");
        close(&fq, &cq, 1e-4, "d query");
        close(&fk, &ck, 1e-4, "d key");
        close(&fv, &cv, 1e-4, "d value");
        // Without autodiff (evaluation) the same output.
        let plain = |x: &Vec<f32>, w: usize| {
            Tensor::<2>::from_data(TensorData::new(x.clone(), [n, w]), &device)
        };
        let out = causal_attention(plain(&qd, qw), plain(&kd, kw), plain(&vd, kw), s, &rope);
        close(&host_values(out), &co, 1e-5, "output without autodiff");
    }

    #[test]
    fn fused_attention_matches_the_composed_operations() {
        compare(Shape {
            batch: 2,
            seq: 7,
            heads: 2,
            kv_heads: 2,
            head_dim: 4,
        });
    }

    #[test]
    fn fused_attention_with_grouped_keys_matches_the_composed_operations() {
        compare(Shape {
            batch: 2,
            seq: 8,
            heads: 4,
            kv_heads: 2,
            head_dim: 6,
        });
    }

    #[test]
    #[should_panic(expected = "exceed the RoPE table")]
    fn a_sequence_longer_than_the_rope_table_is_refused() {
        let device = Device::flex();
        let rope = Rope::new(4, 3, 10_000.0);
        let x = Tensor::<2>::zeros([4, 4], &device);
        let s = Shape {
            batch: 1,
            seq: 4,
            heads: 1,
            kv_heads: 1,
            head_dim: 4,
        };
        let _ = causal_attention(x.clone(), x.clone(), x, s, &rope);
    }
}
