//! Stand-in for the CUDA backend in builds without the `cuda` feature: an empty enum, so the
//! engine's device selection compiles everywhere but a CUDA backend can never be constructed.

use crate::KernelError;

/// Uninhabited without the `cuda` feature.
#[derive(Debug, Clone)]
pub enum CudaBackend {}

/// Always false: this build has no CUDA support.
pub fn is_available() -> bool {
    false
}

impl CudaBackend {
    pub fn new(_ordinal: usize) -> Result<CudaBackend, KernelError> {
        Err(KernelError::NotBuilt)
    }
}
