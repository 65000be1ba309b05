//! Stand-in for the CUDA backend in builds without the `cuda` feature: an empty enum, so
//! `Backend::Cuda` exists for exhaustive matches but can never be constructed.

use crate::{AttnShape, KernelError};

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
    pub fn host_matmul(&self, _: &[f32], _: &[f32], _: Option<&[f32]>, _: usize, _: &mut [f32]) {
        match *self {}
    }
    pub fn host_rms_norm(&self, _: &[f32], _: &[f32], _: f32, _: &mut [f32]) {
        match *self {}
    }
    pub fn host_rope(&self, _: &mut [f32], _: usize, _: &[usize], _: &[f32]) {
        match *self {}
    }
    pub fn host_softmax(&self, _: &mut [f32]) {
        match *self {}
    }
    pub fn host_silu_mul(&self, _: &[f32], _: &[f32], _: &mut [f32]) {
        match *self {}
    }
    pub fn host_attention(&self, _: &[f32], _: &[f32], _: &[f32], _: AttnShape, _: &mut [f32]) {
        match *self {}
    }

    pub fn host_attention_paged(
        &self,
        _: &[f32],
        _: &[(&[f32], &[f32])],
        _: usize,
        _: usize,
        _: AttnShape,
        _: &mut [f32],
    ) {
        match *self {}
    }
}
