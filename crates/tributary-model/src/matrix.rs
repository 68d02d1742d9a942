//! Matrix products on strided views of `f32` slices.
//!
//! The fused attention kernel multiplies blocks of per-head matrices that live
//! interleaved in token-major buffers (head `h` of a `[tokens, heads·d]` buffer
//! is a `tokens × d` matrix with row stride `heads·d`), and products with a
//! transposed operand. burn's tensor `matmul` would need a contiguous copy of
//! every such block; the `gemm` crate (the kernel burn's `flex` backend calls)
//! takes strides directly, through [`crate::kernel`], which picks its
//! AVX-512 or AVX2 microkernels for the CPU. The entry point is `unsafe`
//! because it reads raw pointers; [`product`] checks every view against its
//! slice first, so the call can never read or write outside them.

use crate::kernel::{Kernel, kernel};

/// A read-only `rows × cols` matrix inside `data`: element `(r, c)` is
/// `data[offset + r·row_stride + c·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    /// The `rows × cols` row-major matrix starting at `offset` with rows
    /// `row_stride` elements apart.
    pub(crate) fn rows(
        data: &'a [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Self {
        Self::strided(data, offset, (rows, cols), (row_stride, 1))
    }

    /// The `rows × cols` matrix starting at `offset` with rows `row_stride`
    /// and columns `col_stride` elements apart (a transposed or narrowed
    /// tensor's layout).
    pub(crate) fn strided(
        data: &'a [f32],
        offset: usize,
        (rows, cols): (usize, usize),
        (row_stride, col_stride): (usize, usize),
    ) -> Self {
        assert!(
            fits(data.len(), offset, rows, cols, row_stride, col_stride),
            "matrix view outside its buffer"
        );
        Self {
            data,
            offset,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// Number of rows.
    pub(crate) fn row_count(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub(crate) fn col_count(&self) -> usize {
        self.cols
    }

    /// Copies the matrix into a new row-major buffer, rows split over rayon tasks.
    pub(crate) fn to_rows(self) -> Vec<f32> {
        use rayon::prelude::*;
        let mut out = crate::fused::zeros(self.rows * self.cols);
        if self.cols == 0 {
            return out;
        }
        let per_task = crate::fused::rows_per_task(self.cols);
        out.par_chunks_mut(self.cols * per_task)
            .enumerate()
            .for_each(|(i, chunk)| {
                for (j, row) in chunk.chunks_mut(self.cols).enumerate() {
                    let start = self.offset + (i * per_task + j) * self.row_stride;
                    if self.col_stride == 1 {
                        row.copy_from_slice(&self.data[start..start + self.cols]);
                    } else {
                        for (c, o) in row.iter_mut().enumerate() {
                            *o = self.data[start + c * self.col_stride];
                        }
                    }
                }
            });
        out
    }

    /// Rows `r0..r1` and columns `c0..c1`.
    pub(crate) fn block(self, r0: usize, r1: usize, c0: usize, c1: usize) -> Self {
        assert!(r0 <= r1 && r1 <= self.rows && c0 <= c1 && c1 <= self.cols);
        Self {
            offset: self.offset + r0 * self.row_stride + c0 * self.col_stride,
            rows: r1 - r0,
            cols: c1 - c0,
            ..self
        }
    }

    /// The transpose (no copy).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// A writable `rows × cols` matrix inside `data` (same addressing as [`View`]).
#[derive(Debug)]
pub(crate) struct ViewMut<'a> {
    data: &'a mut [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> ViewMut<'a> {
    /// The `rows × cols` row-major matrix starting at `offset`.
    pub(crate) fn rows(
        data: &'a mut [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Self {
        assert!(
            fits(data.len(), offset, rows, cols, row_stride, 1),
            "matrix view outside its buffer"
        );
        Self {
            data,
            offset,
            rows,
            cols,
            row_stride,
        }
    }

    /// Rows `r0..r1` and columns `c0..c1`, borrowing this view.
    pub(crate) fn block(&mut self, r0: usize, r1: usize, c0: usize, c1: usize) -> ViewMut<'_> {
        assert!(r0 <= r1 && r1 <= self.rows && c0 <= c1 && c1 <= self.cols);
        ViewMut {
            offset: self.offset + r0 * self.row_stride + c0,
            rows: r1 - r0,
            cols: c1 - c0,
            row_stride: self.row_stride,
            data: &mut *self.data,
        }
    }

    /// The same matrix, read-only.
    pub(crate) fn view(&self) -> View<'_> {
        View {
            data: &*self.data,
            offset: self.offset,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: 1,
        }
    }

    /// Row `r` as a slice.
    pub(crate) fn row(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.rows);
        let start = self.offset + r * self.row_stride;
        &mut self.data[start..start + self.cols]
    }
}

/// Whether every element of the view lies inside a buffer of `len` elements.
fn fits(len: usize, offset: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return offset <= len;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)))
        .and_then(|a| a.checked_add(offset));
    matches!(last, Some(last) if last < len)
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`; single-threaded
/// (callers run one product per rayon task).
///
/// # Panics
/// If the shapes do not agree.
pub(crate) fn product(dst: ViewMut<'_>, lhs: View<'_>, rhs: View<'_>, accumulate: bool) {
    product_with(dst, lhs, rhs, accumulate, gemm::Parallelism::None, kernel());
}

/// [`product`] spread over the current rayon pool (gemm splits the work).
pub(crate) fn parallel_product(dst: ViewMut<'_>, lhs: View<'_>, rhs: View<'_>, accumulate: bool) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    product_with(dst, lhs, rhs, accumulate, parallelism, kernel());
}

#[allow(unsafe_code)]
fn product_with(
    mut dst: ViewMut<'_>,
    lhs: View<'_>,
    rhs: View<'_>,
    accumulate: bool,
    parallelism: gemm::Parallelism,
    kernel: Kernel,
) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert_eq!(
        lhs.rows, m,
        "product: lhs rows differ from the destination's"
    );
    assert_eq!(
        rhs.cols, n,
        "product: rhs columns differ from the destination's"
    );
    assert_eq!(rhs.rows, k, "product: inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst.row(r).fill(0.0);
            }
        }
        return;
    }
    // Every view was checked against its buffer when it was made (`rows`,
    // `block` and `t` only narrow or permute a checked view), the destination
    // is borrowed mutably and the operands shared, so they cannot overlap.
    debug_assert!(fits(dst.data.len(), dst.offset, m, n, dst.row_stride, 1));
    debug_assert!(fits(
        lhs.data.len(),
        lhs.offset,
        m,
        k,
        lhs.row_stride,
        lhs.col_stride
    ));
    debug_assert!(fits(
        rhs.data.len(),
        rhs.offset,
        k,
        n,
        rhs.row_stride,
        rhs.col_stride
    ));
    let stride = |s: usize| s as isize;
    // SAFETY: the three views lie inside their slices (checked above), the
    // destination does not alias the operands (a `&mut` and two `&` borrows),
    // the kernel is one this CPU runs, and `gemm` touches only the `m × n`,
    // `m × k` and `k × n` elements addressed by the given offsets and strides.
    unsafe {
        crate::kernel::gemm(
            kernel,
            (m, n, k),
            (
                dst.data.as_mut_ptr().add(dst.offset),
                1,
                stride(dst.row_stride),
            ),
            accumulate,
            (
                lhs.data.as_ptr().add(lhs.offset),
                stride(lhs.col_stride),
                stride(lhs.row_stride),
            ),
            (
                rhs.data.as_ptr().add(rhs.offset),
                stride(rhs.col_stride),
                stride(rhs.row_stride),
            ),
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], ar: usize, ac: usize, b: &[f32], bc: usize) -> Vec<f32> {
        let mut out = vec![0f32; ar * bc];
        for i in 0..ar {
            for j in 0..bc {
                out[i * bc + j] = (0..ac).map(|k| a[i * ac + k] * b[k * bc + j]).sum();
            }
        }
        out
    }

    fn numbers(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn strided_blocks_and_transposes_multiply_like_the_dense_product() {
        // A 5 × 7 buffer holding a 3 × 4 block at (1, 2); a 4 × 6 buffer whose
        // transpose's block is the right operand.
        let a = numbers(35, 1);
        let b = numbers(24, 2);
        let lhs = View::rows(&a, 0, 5, 7, 7).block(1, 4, 2, 6);
        let rhs = View::rows(&b, 0, 4, 6, 6).t().block(1, 5, 0, 4); // 4 × 4
        let dense_l: Vec<f32> = (1..4)
            .flat_map(|r| (2..6).map(move |c| (r, c)))
            .map(|(r, c)| a[r * 7 + c])
            .collect();
        let dense_r: Vec<f32> = (1..5)
            .flat_map(|r| (0..4).map(move |c| (r, c)))
            .map(|(r, c)| b[c * 6 + r])
            .collect();
        let want = naive(&dense_l, 3, 4, &dense_r, 4);
        // Written into columns 1..5 of a 3 × 9 buffer; the other columns stay.
        let mut out = vec![7f32; 27];
        product(
            ViewMut::rows(&mut out, 0, 3, 9, 9).block(0, 3, 1, 5),
            lhs,
            rhs,
            false,
        );
        for r in 0..3 {
            for c in 0..9 {
                let got = out[r * 9 + c];
                if (1..5).contains(&c) {
                    assert!(
                        (got - want[r * 4 + c - 1]).abs() < 1e-5,
                        "({r}, {c}): {got}"
                    );
                } else {
                    assert_eq!(got, 7.0);
                }
            }
        }
        // Accumulating adds the product once more.
        product(
            ViewMut::rows(&mut out, 0, 3, 9, 9).block(0, 3, 1, 5),
            lhs,
            rhs,
            true,
        );
        for r in 0..3 {
            let got = out[r * 9 + 2];
            assert!((got - 2.0 * want[r * 4 + 1]).abs() < 1e-5);
        }
    }

    #[test]
    fn an_empty_inner_dimension_writes_zeros_or_leaves_the_destination() {
        let mut out = vec![3f32; 4];
        let empty: [f32; 0] = [];
        let l = View::rows(&empty, 0, 2, 0, 0);
        let r = View::rows(&empty, 0, 0, 2, 2);
        product(ViewMut::rows(&mut out, 0, 2, 2, 2), l, r, true);
        assert_eq!(out, [3.0; 4]);
        product(ViewMut::rows(&mut out, 0, 2, 2, 2), l, r, false);
        assert_eq!(out, [0.0; 4]);
    }

    #[test]
    fn every_kernel_this_cpu_runs_gives_the_dense_product() {
        // Shapes that take each of gemm's paths (k ≤ 2, a single column, a
        // single row, at most 16 × 16, the blocked kernel), on a transposed
        // right operand and accumulating into a destination wider than the
        // product, both single-threaded and over the pool.
        for kernel in crate::kernel::available() {
            for &(m, k, n) in &[
                (5, 1, 7),
                (6, 2, 3),
                (40, 9, 1),
                (1, 30, 20),
                (12, 10, 16),
                (70, 33, 90),
            ] {
                let a = numbers(m * k, 5);
                let bt = numbers(n * k, 6); // the right operand's transpose
                let b: Vec<f32> = (0..k)
                    .flat_map(|r| (0..n).map(move |c| (r, c)))
                    .map(|(r, c)| bt[c * k + r])
                    .collect();
                let want = naive(&a, m, k, &b, n);
                for parallelism in [gemm::Parallelism::None, gemm::Parallelism::Rayon(2)] {
                    let mut out = vec![1f32; m * (n + 1)];
                    product_with(
                        ViewMut::rows(&mut out, 0, m, n + 1, n + 1).block(0, m, 0, n),
                        View::rows(&a, 0, m, k, k),
                        View::rows(&bt, 0, n, k, k).t(),
                        true,
                        parallelism,
                        kernel,
                    );
                    for r in 0..m {
                        for c in 0..n {
                            let got = out[r * (n + 1) + c];
                            let w = 1.0 + want[r * n + c];
                            assert!(
                                (got - w).abs() < 1e-4,
                                "{kernel} {m}×{k}×{n} ({r}, {c}): {got} vs {w}"
                            );
                        }
                        assert_eq!(out[r * (n + 1) + n], 1.0, "{kernel}: column past the block");
                    }
                }
            }
        }
    }

    #[test]
    fn a_strided_view_copies_out_row_by_row() {
        // Column block 1..3 of a 4 × 5 buffer, then its transpose; 70 rows
        // make the copy cross the tests' rayon task size.
        let data: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let v = View::strided(&data, 1, (4, 2), (5, 1));
        assert_eq!(
            v.to_rows(),
            vec![1.0, 2.0, 6.0, 7.0, 11.0, 12.0, 16.0, 17.0]
        );
        assert_eq!(
            v.t().to_rows(),
            vec![1.0, 6.0, 11.0, 16.0, 2.0, 7.0, 12.0, 17.0]
        );
        let tall: Vec<f32> = (0..140).map(|i| i as f32).collect();
        let column = View::strided(&tall, 1, (70, 1), (2, 1)).to_rows();
        assert_eq!(
            column,
            (0..70).map(|i| (2 * i + 1) as f32).collect::<Vec<_>>()
        );
    }

    #[test]
    #[should_panic(expected = "outside its buffer")]
    fn a_strided_view_past_the_end_of_its_buffer_is_refused() {
        let data = vec![0f32; 20];
        let _ = View::strided(&data, 1, (4, 2), (6, 1));
    }

    #[test]
    #[should_panic(expected = "outside its buffer")]
    fn a_view_past_the_end_of_its_buffer_is_refused() {
        let a = vec![0f32; 11];
        let _ = View::rows(&a, 0, 3, 4, 4);
    }
}
