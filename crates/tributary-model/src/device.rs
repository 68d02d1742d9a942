//! Choosing the burn device from a backend name.
//!
//! `flex` (pure-Rust CPU) is always built; `cuda` and `tch` exist when the crate
//! is built with the cargo features of the same names.

use burn::tensor::Device;

use crate::error::ModelError;

/// Names of the backends compiled into this build.
pub fn available_backends() -> Vec<&'static str> {
    let mut v = vec!["flex"];
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "tch") {
        v.push("tch");
    }
    v
}

/// The device for `backend` (`flex`, `cuda` or `tch`).
pub fn device_for(backend: &str) -> Result<Device, ModelError> {
    match backend {
        "flex" => {
            // A bad TRIBUTARY_MATMUL_KERNEL is reported here, where every
            // command chooses its device, rather than ignored.
            crate::kernel::configured().map_err(ModelError::Argument)?;
            Ok(Device::flex())
        }
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(feature = "tch")]
        #[allow(deprecated)]
        "tch" => Ok(Device::libtorch()),
        other => Err(ModelError::Argument(format!(
            "backend {other:?} is not available in this build (available: {})",
            available_backends().join(", ")
        ))),
    }
}

/// Runs `f` on one of rayon's worker threads and returns its result.
///
/// The `flex` backend and the matrix products split their work over rayon's
/// pool. Called from a thread outside the pool, every parallel operation
/// hands its work to the pool and puts the caller to sleep until it is done:
/// two thread wake-ups per operation, hundreds of operations per training
/// step. Run from a worker, the same operations split their work in place.
/// Training steps run through this function trained about 10 % more tokens
/// per second on a 2-core machine (BENCHMARKS.md, "Expert training",
/// change 10). Called from a worker already, `f` simply runs.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_pool_runs_on_a_rayon_worker_and_nested_calls_stay_there() {
        // The test harness runs tests on threads of its own, outside the pool.
        assert_eq!(rayon::current_thread_index(), None);
        let caller = std::thread::current().id();
        let (outer, inner, value) = on_pool(|| {
            let outer = (rayon::current_thread_index(), std::thread::current().id());
            let (inner, value) = on_pool(|| {
                let here = (rayon::current_thread_index(), std::thread::current().id());
                // Parallel work inside still runs and returns its result.
                let value: u64 = {
                    use rayon::prelude::*;
                    (1..=1000u64).into_par_iter().sum()
                };
                (here, value)
            });
            (outer, inner, value)
        });
        assert!(outer.0.is_some(), "f ran outside rayon's pool");
        assert_ne!(outer.1, caller, "f ran on the calling thread");
        assert_eq!(inner, outer, "a nested call moved to another thread");
        assert_eq!(value, 500_500);
        // Errors come back as values.
        let failed: Result<(), String> = on_pool(|| Err("no".into()));
        assert_eq!(failed, Err("no".to_string()));
    }
}
