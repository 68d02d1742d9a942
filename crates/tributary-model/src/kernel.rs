//! Which SIMD microkernels run the model's matrix products.
//!
//! The products go to the `gemm` crate's kernels, which exist for AVX2/FMA and
//! for AVX-512. Which is faster depends on the CPU, not only on what it
//! supports: on CPUs that execute 512-bit instructions at full width (Intel
//! Xeons, AMD Zen 5) the AVX-512 kernel trained 15–30 % faster, while AMD's
//! Zen 4 splits each 512-bit instruction into two 256-bit halves and so gains
//! nothing from it: on a Zen 4 (family 19h model 11h) eight alternated pairs
//! of the training bench averaged −1.8 % with AVX-512, within noise, and
//! earlier AVX-512 builds measured slower on one AMD EPYC and no different
//! on another, of unrecorded families (BENCHMARKS.md, "Expert training").
//! `gemm` itself takes the widest kernel a CPU has, so this module makes the
//! choice and calls the chosen kernel directly:
//!
//! - AVX-512 where the CPU has it, except on AMD family 19h (Zen 3 and Zen 4);
//! - AVX2/FMA on every other x86-64 CPU that has it;
//! - otherwise (other architectures, old CPUs) whatever `gemm` picks.
//!
//! The environment variable `TRIBUTARY_MATMUL_KERNEL` (`avx512`, `avx2` or
//! `auto`) overrides the choice; asking for a kernel this CPU cannot run is an
//! error reported by [`crate::device::device_for`].

use std::sync::OnceLock;

/// The environment variable that overrides the choice of kernel.
pub const KERNEL_ENV: &str = "TRIBUTARY_MATMUL_KERNEL";

/// A family of matrix-product microkernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 512-bit AVX-512F kernels.
    Avx512,
    /// 256-bit AVX2/FMA kernels.
    Avx2,
    /// The `gemm` crate's own choice (non-x86 CPUs, x86 CPUs without FMA).
    Portable,
}

impl Kernel {
    /// The name used in the environment variable and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the choice depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cpu {
    avx512: bool,
    avx2: bool,
    /// AMD family 19h (Zen 3, Zen 4): 512-bit instructions run as two halves.
    split_512: bool,
}

/// The kernel this CPU runs best, or the one `TRIBUTARY_MATMUL_KERNEL` asks
/// for; an error if that variable names an unknown kernel or one this CPU
/// lacks.
pub fn configured() -> Result<Kernel, String> {
    choose(std::env::var(KERNEL_ENV).ok().as_deref(), cpu())
}

/// The kernel the products use: [`configured`], or the automatic choice
/// when the variable is invalid (commands report that error at start-up,
/// through [`crate::device::device_for`]). Decided once per process.
pub fn kernel() -> Kernel {
    static CHOSEN: OnceLock<Kernel> = OnceLock::new();
    *CHOSEN.get_or_init(|| configured().unwrap_or_else(|_| automatic(cpu())))
}

/// The kernels this CPU can run, the portable one last.
#[cfg(test)]
pub(crate) fn available() -> Vec<Kernel> {
    let here = cpu();
    let mut kernels = Vec::new();
    if here.avx512 {
        kernels.push(Kernel::Avx512);
    }
    if here.avx2 {
        kernels.push(Kernel::Avx2);
    }
    kernels.push(Kernel::Portable);
    kernels
}

fn choose(requested: Option<&str>, cpu: Cpu) -> Result<Kernel, String> {
    let wanted = match requested.map(str::trim) {
        None | Some("" | "auto") => return Ok(automatic(cpu)),
        Some("avx512") => (Kernel::Avx512, cpu.avx512),
        Some("avx2") => (Kernel::Avx2, cpu.avx2),
        Some(other) => {
            return Err(format!(
                "{KERNEL_ENV}={other:?} is not a kernel (use avx512, avx2 or auto)"
            ));
        }
    };
    match wanted {
        (kernel, true) => Ok(kernel),
        (kernel, false) => Err(format!(
            "{KERNEL_ENV}={kernel}: this CPU cannot run the {kernel} kernel (unset the variable to choose automatically)"
        )),
    }
}

fn automatic(cpu: Cpu) -> Kernel {
    if cpu.avx512 && !cpu.split_512 {
        Kernel::Avx512
    } else if cpu.avx2 {
        Kernel::Avx2
    } else {
        Kernel::Portable
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu() -> Cpu {
    use std::arch::x86_64::__cpuid;
    let vendor = __cpuid(0);
    let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    let signature = __cpuid(1).eax;
    let base = (signature >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((signature >> 20) & 0xff)
    } else {
        base
    };
    Cpu {
        avx512: std::is_x86_feature_detected!("avx512f"),
        avx2: std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
        split_512: amd && family == 0x19,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu() -> Cpu {
    Cpu::default()
}

/// `dst := lhs · rhs`, or `dst += lhs · rhs` when `read_dst`, with the
/// arguments of `gemm::gemm` (strides in elements, `cs` between columns and
/// `rs` between rows), on `kernel` (which the CPU must support; [`kernel`]
/// gives one that it does).
///
/// # Safety
/// As for `gemm::gemm`: every element addressed through the pointers, sizes
/// and strides must be valid (`dst` for writes, and for reads when
/// `read_dst`), and `dst` must not overlap `lhs` or `rhs`. Strides are not
/// negative.
#[allow(unsafe_code)]
pub(crate) unsafe fn gemm(
    kernel: Kernel,
    (m, n, k): (usize, usize, usize),
    (dst, dst_cs, dst_rs): (*mut f32, isize, isize),
    read_dst: bool,
    (lhs, lhs_cs, lhs_rs): (*const f32, isize, isize),
    (rhs, rhs_cs, rhs_rs): (*const f32, isize, isize),
    parallelism: gemm::Parallelism,
) {
    debug_assert!(
        [dst_cs, dst_rs, lhs_cs, lhs_rs, rhs_cs, rhs_rs]
            .iter()
            .all(|&s| s >= 0)
    );
    // The microkernels write column-major blocks of the destination, so a
    // row-major destination is computed as the transposed product,
    // `dstᵀ = rhsᵀ · lhsᵀ` (the same swap `gemm::gemm` makes before it
    // dispatches; without it the products ran a third slower).
    let ((m, n), (dst_cs, dst_rs), (lhs, lhs_cs, lhs_rs), (rhs, rhs_cs, rhs_rs)) =
        if dst_cs < dst_rs {
            (
                (n, m),
                (dst_rs, dst_cs),
                (rhs, rhs_rs, rhs_cs),
                (lhs, lhs_rs, lhs_cs),
            )
        } else {
            (
                (m, n),
                (dst_cs, dst_rs),
                (lhs, lhs_cs, lhs_rs),
                (rhs, rhs_cs, rhs_rs),
            )
        };
    // `gemm`'s own entry point instantiates this generic function with the
    // microkernels and register-block sizes of the kernel it detects; here
    // the same instantiations are made for the kernel chosen above.
    #[cfg(target_arch = "x86_64")]
    macro_rules! with {
        ($simd:ty, $kernels:path, $lanes:expr) => {{
            use gemm_common::simd::MixedSimd;
            use $kernels as k_;
            // SAFETY: the caller's promise; the kernel's instruction set was
            // detected when it was chosen (`try_new` checks it again).
            unsafe {
                gemm_common::gemm::gemm_basic_generic::<
                    _,
                    f32,
                    { $lanes },
                    { k_::MR_DIV_N * $lanes },
                    { k_::NR },
                    { k_::MR_DIV_N },
                    { k_::H_M },
                    { k_::H_N },
                >(
                    <$simd as MixedSimd<f32, f32, f32, f32>>::try_new()
                        .expect("the chosen kernel's instruction set is present"),
                    m,
                    n,
                    k,
                    dst,
                    dst_cs,
                    dst_rs,
                    read_dst,
                    lhs,
                    lhs_cs,
                    lhs_rs,
                    rhs,
                    rhs_cs,
                    rhs_rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &k_::UKR,
                    &k_::H_UKR,
                    false,
                    parallelism,
                )
            }
        }};
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => with!(
            gemm_common::simd::V4,
            gemm_f32::microkernel::avx512f::f32,
            16
        ),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => with!(gemm_common::simd::V3, gemm_f32::microkernel::fma::f32, 8),
        // SAFETY: the caller's promise.
        _ => unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                dst_cs,
                dst_rs,
                read_dst,
                lhs,
                lhs_cs,
                lhs_rs,
                rhs,
                rhs_cs,
                rhs_rs,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            )
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEN4: Cpu = Cpu {
        avx512: true,
        avx2: true,
        split_512: true,
    };
    const XEON: Cpu = Cpu {
        avx512: true,
        avx2: true,
        split_512: false,
    };
    const HASWELL: Cpu = Cpu {
        avx512: false,
        avx2: true,
        split_512: false,
    };

    #[test]
    fn full_width_avx512_is_chosen_and_split_avx512_is_not() {
        assert_eq!(choose(None, XEON), Ok(Kernel::Avx512));
        assert_eq!(choose(None, ZEN4), Ok(Kernel::Avx2));
        assert_eq!(choose(Some("auto"), HASWELL), Ok(Kernel::Avx2));
        assert_eq!(choose(None, Cpu::default()), Ok(Kernel::Portable));
    }

    #[test]
    fn the_variable_overrides_within_what_the_cpu_has() {
        assert_eq!(choose(Some("avx512"), ZEN4), Ok(Kernel::Avx512));
        assert_eq!(choose(Some(" avx2 "), XEON), Ok(Kernel::Avx2));
        let lacking = choose(Some("avx512"), HASWELL).unwrap_err();
        assert!(
            lacking.contains("cannot run the avx512 kernel"),
            "{lacking}"
        );
        let unknown = choose(Some("sse"), XEON).unwrap_err();
        assert!(unknown.contains("\"sse\" is not a kernel"), "{unknown}");
    }

    #[test]
    fn the_kernel_chosen_here_runs_on_this_cpu() {
        let here = cpu();
        match kernel() {
            Kernel::Avx512 => assert!(here.avx512),
            Kernel::Avx2 => assert!(here.avx2),
            Kernel::Portable => assert!(!here.avx2),
        }
    }
}
