//! Vectorisable row kernels for the fused CPU kernels ([`crate::fused`]):
//! `exp` of a row and its sum, a row's maximum, SwiGLU forward and backward.
//!
//! `f32::exp` is a call into libm per element, which no loop around it can
//! vectorise; in an expert-training step it was 8.6 % of the profile (the
//! vocabulary softmax, the attention softmax and SiLU). [`exp`] here is
//! branch-free arithmetic (Cody–Waite range reduction, a degree-5
//! polynomial, the power of two built from the exponent bits), so the
//! compiler turns these loops into SIMD. Sums and maxima keep eight partial
//! accumulators for the same reason (a single running sum is a chain the
//! compiler may not reorder). On x86-64 each kernel also has a copy compiled
//! for AVX2, chosen at run time when the CPU has it; both copies compute the
//! same thing lane by lane.

/// ln 2 split so that `n · LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5 · 2²³: adding it rounds an `f32` below 2²² in magnitude to an integer.
const ROUND: f32 = 12_582_912.0;
/// Below this `exp` is under the smallest normal `f32`: the result is 0.
const LO: f32 = -87.336_55;
/// Above this `exp` overflows: the result is infinite.
const HI: f32 = 88.376_26;

/// `e^x` to within a few units in the last place of `f32::exp`, for every
/// `x`: 0 below −87.3 (where `f32::exp` is subnormal), infinity above 88.4,
/// NaN for NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let c = x.clamp(LO, HI);
    let t = c * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (c - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // `t`'s low mantissa bits hold `n` (|n| ≤ 127 after the clamp).
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let out = y * scale;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        out
    }
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Sum of `xs` with eight partial sums.
#[inline(always)]
fn sum_lanes(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for chunk in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    let mut total =
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &x in chunks.remainder() {
        total += x;
    }
    total
}

/// Generates a public kernel from a body that the compiler vectorises: the
/// body is compiled once for the baseline target and, on x86-64, once more
/// with AVX2 enabled, which is called when the CPU has it.
macro_rules! kernel {
    ($(#[$doc:meta])* pub(crate) fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn wide($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: `wide` needs AVX2, which the CPU was just
                    // found to have; it is otherwise safe code.
                    #[allow(unsafe_code)]
                    let result = unsafe { wide($($arg),*) };
                    return result;
                }
            }
            portable($($arg),*)
        }
    };
}

kernel! {
    /// The largest element of `xs` (−∞ for an empty slice; NaNs are passed
    /// over, as by `f32::max`).
    pub(crate) fn max(xs: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; 8];
        let mut chunks = xs.chunks_exact(8);
        for chunk in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(chunk) {
                *a = a.max(x);
            }
        }
        let mut best = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for &x in chunks.remainder() {
            best = best.max(x);
        }
        best
    }
}

kernel! {
    /// `out[i] = e^(xs[i]·scale − shift)`; returns the sum of `out`.
    pub(crate) fn exp_into(out: &mut [f32], xs: &[f32], scale: f32, shift: f32) -> f32 {
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = exp(x * scale - shift);
        }
        sum_lanes(&out[..xs.len().min(out.len())])
    }
}

kernel! {
    /// `Σ e^(xs[i] − shift)`, in blocks of a fixed-size buffer.
    pub(crate) fn sum_exp(xs: &[f32], shift: f32) -> f32 {
        let mut buffer = [0f32; 256];
        let mut total = 0f32;
        for block in xs.chunks(buffer.len()) {
            let out = &mut buffer[..block.len()];
            for (o, &x) in out.iter_mut().zip(block) {
                *o = exp(x - shift);
            }
            total += sum_lanes(out);
        }
        total
    }
}

kernel! {
    /// SwiGLU of one row: `out[i] = silu(gate[i]) · up[i]`.
    pub(crate) fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

kernel! {
    /// The gradients of one row of [`swiglu`] for the output gradient `dy`.
    pub(crate) fn swiglu_backward(
        d_gate: &mut [f32],
        d_up: &mut [f32],
        gate: &[f32],
        up: &[f32],
        dy: &[f32],
    ) {
        let n = d_gate.len();
        let (d_up, gate, up, dy) = (&mut d_up[..n], &gate[..n], &up[..n], &dy[..n]);
        for i in 0..n {
            let s = sigmoid(gate[i]);
            d_up[i] = dy[i] * gate[i] * s;
            d_gate[i] = dy[i] * up[i] * s * (1.0 + gate[i] * (1.0 - s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_a_few_ulps_of_libm_everywhere_it_is_normal() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            for y in [x, x + 1e-3, x - 3.3e-4] {
                let (got, want) = (exp(y), y.exp());
                worst = worst.max(ulps(got, want));
            }
            x += 0.0137;
        }
        for y in [0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 1.0, -1.0] {
            worst = worst.max(ulps(exp(y), y.exp()));
        }
        assert!(worst <= 3, "{worst} ulps");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_saturates_like_the_real_function_and_keeps_nan() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
    }

    /// A deterministic row of `n` values spread over `[-span, span]`.
    fn row(n: usize, span: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.618_034).fract() * 2.0 - 1.0) * span)
            .collect()
    }

    #[test]
    fn row_kernels_agree_with_their_scalar_definitions_at_every_length() {
        for n in 0..70 {
            let xs = row(n, 9.0);
            let ys = row(n, 3.0);
            let dy: Vec<f32> = row(n, 1.0).iter().rev().copied().collect();
            let want_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), want_max);

            let mut out = vec![0f32; n];
            let sum = exp_into(&mut out, &xs, 0.5, 1.25);
            let mut want_sum = 0f64;
            for (&o, &x) in out.iter().zip(&xs) {
                let want = (x * 0.5 - 1.25).exp();
                assert!(ulps(o, want) <= 3, "{o} vs {want}");
                want_sum += f64::from(want);
            }
            assert!((f64::from(sum) - want_sum).abs() <= 1e-6 * want_sum.max(1.0));
            let total = sum_exp(&xs, 2.0);
            let want: f64 = xs.iter().map(|&x| f64::from((x - 2.0).exp())).sum();
            assert!((f64::from(total) - want).abs() <= 1e-6 * want.max(1.0));

            let mut act = vec![0f32; n];
            swiglu(&mut act, &xs, &ys);
            let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
            swiglu_backward(&mut dg, &mut du, &xs, &ys, &dy);
            for i in 0..n {
                let (g, u) = (f64::from(xs[i]), f64::from(ys[i]));
                let s = 1.0 / (1.0 + (-g).exp());
                let close = |a: f32, b: f64| (f64::from(a) - b).abs() <= 1e-5 * b.abs().max(1.0);
                assert!(close(act[i], g * s * u));
                assert!(close(du[i], f64::from(dy[i]) * g * s));
                assert!(close(
                    dg[i],
                    f64::from(dy[i]) * u * s * (1.0 + g * (1.0 - s))
                ));
            }
        }
        // A longer row crosses `sum_exp`'s buffer boundary.
        let xs = row(1000, 5.0);
        let want: f64 = xs.iter().map(|&x| f64::from(x.exp())).sum();
        assert!((f64::from(sum_exp(&xs, 0.0)) - want).abs() <= 1e-6 * want);
    }
}
