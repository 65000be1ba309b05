//! `--device`: the backend an engine runs on, decided once at start.
//!
//! `cpu` always works; `cuda` needs a build with the `cuda` feature and a driver and GPU;
//! `auto` takes CUDA exactly when both are there (`pdq_kernels::select` probes libcuda before
//! touching the driver), else the CPU.

pub use pdq_kernels::DeviceChoice;
use pdq_kernels::{Backend, KernelError};

use crate::error::EngineError;

/// One line for `--device cuda` on a build without the feature.
pub const NOT_BUILT: &str = "this pdq was built without CUDA; rebuild with --features cuda";

/// The backend for `choice`, with a one-line error when it cannot be had.
pub fn select_device(choice: DeviceChoice) -> Result<Backend, EngineError> {
    match pdq_kernels::select(choice) {
        Ok(b) => Ok(b),
        Err(KernelError::NotBuilt) => Err(EngineError::Device(NOT_BUILT.into())),
        Err(e) => Err(e.into()),
    }
}

/// Whether this build carries the GPU forward (`pdq_engine::cuda`).
pub const fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_always_and_auto_falls_back_without_a_gpu() {
        assert_eq!(select_device(DeviceChoice::Cpu).unwrap().name(), "cpu");
        if !cuda_built() {
            assert_eq!(select_device(DeviceChoice::Auto).unwrap().name(), "cpu");
            let e = select_device(DeviceChoice::Cuda).unwrap_err();
            assert_eq!(e.to_string(), format!("device: {NOT_BUILT}"));
            assert_eq!(e.error_type(), "device");
        }
    }
}
