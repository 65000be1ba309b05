//! Storage types the kernels are instantiated for; arithmetic is always f32.

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

/// A storage type with a `_<suffix>` instantiation of every kernel.
pub trait DType: DeviceRepr + ValidAsZeroBits + Copy + std::fmt::Debug + Send + Sync + 'static {
    /// Kernel name suffix: `rms_norm_bf16`.
    const SUFFIX: &'static str;
    /// Largest `head_dim` of `prefill_attention_<suffix>` (static shared-memory budget).
    const PREFILL_MAX_HD: usize;
    /// Relative error a kernel may show against the f32 CPU oracle.
    const TOLERANCE: f64;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl DType for f32 {
    const SUFFIX: &'static str = "f32";
    const PREFILL_MAX_HD: usize = crate::launch::FA_MAX_HD_F32;
    const TOLERANCE: f64 = 1e-5;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl DType for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    const PREFILL_MAX_HD: usize = crate::launch::FA_MAX_HD_BF16;
    const TOLERANCE: f64 = 1e-2;
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}
