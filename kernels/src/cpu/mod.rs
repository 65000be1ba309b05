//! CPU reference backend: plain loops over `f32` slices, the oracle other backends are tested
//! against.
//!
//! Determinism: reductions use [`dot`]'s fixed 8-lane order (or a plain sequential loop) and each
//! output row reads only its own input row, so results are independent of batch composition and
//! thread count. No op allocates per element; scratch buffers are per call. [`matmul`] and
//! [`matmul_quant`] split their output columns over rayon's pool (both cores); every other op runs
//! on the calling thread.

mod attention;
mod elementwise;
mod gemm;
mod matmul;
mod paged;
mod qgemm;
mod qgroup;
mod rope;
mod sampling;

#[cfg(test)]
mod tests;

pub use attention::{attention, attention_paged, AttnShape};
pub use elementwise::{rms_norm, silu_mul, softmax_inplace};
pub(crate) use gemm::combine as combine_lanes;
pub(crate) use gemm::OutPtr;
pub use gemm::{matmul, matmul_reference};
pub use matmul::dot;
pub use paged::{kv_gather_blocks, kv_scatter_blocks, kv_write, paged_attention_decode, prefill_attention};
pub use qgemm::matmul_quant;
pub use qgroup::{matmul_quant_many, QLinear};
pub use rope::{rope_inplace, rope_inv_freq, rope_inv_freq_llama3, Llama3RopeScaling};
pub use sampling::{argmax, sample, SampleParams};

/// Marker for the CPU backend; holds no state (threads come from rayon's global pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

/// Every matmul tile kernel this CPU can run, for tests that pin each to the reference.
#[cfg(test)]
pub(crate) fn gemm_kernels() -> Vec<gemm::Kernel> {
    gemm::Kernel::available()
}

#[cfg(test)]
pub(crate) fn matmul_quant_on(
    kernel: gemm::Kernel,
    x: &[f32],
    w: &crate::QMatrix<'_>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    qgemm::matmul_quant_with(kernel, x, w, bias, y)
}
