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
