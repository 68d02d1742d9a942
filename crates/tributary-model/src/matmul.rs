//! Matrix products of 2-D tensors, forward and backward, without copies.
//!
//! burn's `flex` matmul allocates every result twice (a zero-filled byte
//! vector, then an aligned copy of it) on the calling thread, and its backward
//! step copies each transposed operand into a contiguous buffer before
//! multiplying. In a training step those single-threaded copies and page
//! faults stood beside the parallel products and left one of the two cores
//! idle for about a fifth of the step (BENCHMARKS.md, "Expert training",
//! change 8). Here a product reads both operands in whatever strided layout
//! they have (a transposed weight, a column block of the fused q/k/v
//! projection), writes its result once into a buffer the tensor then owns, and
//! the backward step multiplies by transposed views of the saved operands:
//! `dA = dC · Bᵀ`, `dB = Aᵀ · dC`, only for the operands that need a gradient.
//! Other backends take burn's `matmul`.

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::tensor::Tensor;

use std::borrow::Cow;

use crate::fused::{Host, flex, host, tensor, wrap, wrap_plain};
use crate::matrix::{View, ViewMut, parallel_product};

/// `a · b` for `[m, k]` and `[k, n]` tensors.
///
/// # Panics
/// If the inner dimensions differ.
pub fn matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let [m, k] = a.dims();
    let [kb, n] = b.dims();
    assert_eq!(k, kb, "matmul: inner dimensions differ ({k} and {kb})");
    match (host(a), host(b)) {
        (Host::Tracked(a), Host::Tracked(b)) => {
            let out = flex(product(a.primitive(), b.primitive(), false, false), &[m, n]);
            match MatmulBackward
                .prepare::<NoCheckpointing>([a.node(), b.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    // Keep an operand only for the other one's gradient.
                    let state = (
                        b.is_tracked().then(|| a.primitive().clone()),
                        a.is_tracked().then(|| b.primitive().clone()),
                        [m, k, n],
                    );
                    wrap(prep.finish(state, out))
                }
                OpsKind::UnTracked(prep) => wrap(prep.finish(out)),
            }
        }
        (Host::Plain(a), Host::Plain(b)) => {
            wrap_plain(flex(product(&a, &b, false, false), &[m, n]))
        }
        (a, b) => tensor(a).matmul(tensor(b)),
    }
}

/// A 2-D `f32` flex tensor as a strided view of its buffer; `None` for layouts
/// a view cannot express (negative strides).
pub(crate) fn view(t: &FlexTensor) -> Option<View<'_>> {
    let layout = t.layout();
    let shape = layout.shape().to_vec();
    let strides = layout.strides();
    if shape.len() != 2 || strides.iter().any(|&s| s < 0) {
        return None;
    }
    Some(View::strided(
        t.storage::<f32>(),
        layout.start_offset(),
        (shape[0], shape[1]),
        (strides[0].unsigned_abs(), strides[1].unsigned_abs()),
    ))
}

/// `t` itself when [`view`] can address it, otherwise a contiguous copy.
pub(crate) fn viewable(t: &FlexTensor) -> Cow<'_, FlexTensor> {
    if view(t).is_some() {
        Cow::Borrowed(t)
    } else {
        Cow::Owned(t.to_contiguous())
    }
}

/// The view of a tensor returned by [`viewable`].
pub(crate) fn view_of(t: &FlexTensor) -> View<'_> {
    view(t).unwrap_or_else(|| unreachable!("a contiguous 2-D tensor is a view"))
}

/// `op(a) · op(b)` into a new row-major buffer, where `op` transposes when
/// the flag says so.
fn product(a: &FlexTensor, b: &FlexTensor, ta: bool, tb: bool) -> Vec<f32> {
    let (a, b) = (viewable(a), viewable(b));
    let (a, b) = (view_of(&a), view_of(&b));
    let a = if ta { a.t() } else { a };
    let b = if tb { b.t() } else { b };
    let (m, n) = (a.row_count(), b.col_count());
    let mut out = crate::fused::zeros(m * n);
    parallel_product(ViewMut::rows(&mut out, 0, m, n, n), a, b, false);
    out
}

#[derive(Debug)]
struct MatmulBackward;

impl Backward<Flex, 2> for MatmulBackward {
    /// The left operand when the right one needs a gradient, the right one
    /// when the left one does, and `[m, k, n]`.
    type State = (Option<FlexTensor>, Option<FlexTensor>, [usize; 3]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [pa, pb] = ops.parents;
        let dc = grads.consume::<Flex>(&ops.node);
        let (a, b, [m, k, n]) = ops.state;
        if let (Some(pa), Some(b)) = (pa, b) {
            grads.register::<Flex>(pa.id, flex(product(&dc, &b, false, true), &[m, k]));
        }
        if let (Some(pb), Some(a)) = (pb, a) {
            grads.register::<Flex>(pb.id, flex(product(&a, &dc, true, false), &[k, n]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn numbers(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn tensor_of(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    fn values_of(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{what}[{i}]: ours {x}, burn {y}"
            );
        }
    }

    /// Values and both gradients equal burn's own matmul, for contiguous,
    /// transposed and column-narrowed operands, with and without autodiff.
    #[test]
    fn products_and_gradients_match_burn_matmul() {
        let plain = Device::flex();
        let tracked = Device::flex().autodiff();
        for (m, k, n) in [(7, 5, 3), (33, 17, 9), (1, 4, 1)] {
            let a = numbers(m * k, 1);
            let bt = numbers(n * (k + 2) + 2 * k, 2);
            for layout in 0..3 {
                let make = |device: &Device| {
                    let a = tensor_of(a.clone(), [m, k], device);
                    // The right operand: contiguous, a transpose, or a column block.
                    let b = match layout {
                        0 => tensor_of(bt[..k * n].to_vec(), [k, n], device),
                        1 => tensor_of(bt[..n * k].to_vec(), [n, k], device).transpose(),
                        _ => tensor_of(bt[..k * (n + 2)].to_vec(), [k, n + 2], device)
                            .narrow(1, 1, n),
                    };
                    (a, b)
                };
                let what = format!("{m}x{k}x{n}, layout {layout}");
                let (a1, b1) = make(&tracked);
                let (a1, b1) = (a1.require_grad(), b1.require_grad());
                let (a2, b2) = make(&tracked);
                let (a2, b2) = (a2.require_grad(), b2.require_grad());
                let ours = matmul(a1.clone(), b1.clone());
                let theirs = a2.clone().matmul(b2.clone());
                close(
                    &values_of(ours.clone().inner()),
                    &values_of(theirs.clone().inner()),
                    &what,
                );
                // A weighted sum, so every output element has its own gradient.
                let w = tensor_of(numbers(m * n, 3), [m, n], &tracked);
                let g1 = (ours * w.clone()).sum().backward();
                let g2 = (theirs * w).sum().backward();
                let grad = |t: &Tensor<2>, g| values_of(t.grad(g).unwrap());
                close(&grad(&a1, &g1), &grad(&a2, &g2), &format!("dA {what}"));
                close(&grad(&b1, &g1), &grad(&b2, &g2), &format!("dB {what}"));
                let (pa, pb) = make(&plain);
                close(
                    &values_of(matmul(pa.clone(), pb.clone())),
                    &values_of(pa.matmul(pb)),
                    &format!("plain {what}"),
                );
            }
        }
    }

    /// A frozen operand gets no gradient.
    #[test]
    fn only_operands_that_require_a_gradient_get_one() {
        let device = Device::flex().autodiff();
        let a = tensor_of(numbers(12, 4), [4, 3], &device).require_grad();
        let b = tensor_of(numbers(6, 5), [3, 2], &device);
        let g = matmul(a.clone(), b.clone()).sum().backward();
        assert!(a.grad(&g).is_some());
        assert!(b.grad(&g).is_none());
    }

    #[test]
    #[should_panic(expected = "inner dimensions differ")]
    fn mismatched_inner_dimensions_are_refused() {
        let device = Device::flex();
        let _ = matmul(
            tensor_of(numbers(6, 1), [2, 3], &device),
            tensor_of(numbers(8, 1), [4, 2], &device),
        );
    }
}
