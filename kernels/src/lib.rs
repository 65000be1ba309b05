//! Compute kernels for pdq's engine.
//!
//! Every op exists on the CPU reference backend ([`cpu`]); [`Backend`] is what the engine's CPU
//! forward calls through. The CUDA backend ([`cuda`], feature `cuda`) keeps its kernels in
//! `kernels/cuda/*.cu`, compiled by NVRTC at run time, with device-resident buffers: the engine's
//! GPU executor calls [`CudaBackend`] directly, never through host slices. Without the feature,
//! [`CudaBackend`] is an empty enum that cannot be constructed, so `cfg` stays at this module
//! boundary. Invariants every backend keeps:
//! - tensors are dense row-major slices; shapes are passed explicitly and asserted;
//! - each output row is computed independently with a fixed summation order, so a row's result
//!   does not depend on which other rows share the batch (prefill == incremental decode, bit for
//!   bit, on the CPU; the CUDA backend is checked against the CPU within per-dtype tolerances);
//! - that holds with threads too: work is split over output columns, never over a reduction.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "no_cuda.rs"]
pub mod cuda;
mod error;
pub mod launch;
pub mod paged;
pub mod quant;

pub use cpu::{AttnShape, CpuBackend};
pub use cuda::CudaBackend;
pub use error::KernelError;
pub use quant::{Activations, QMatrix, QuantType};

/// The CPU forward's kernels on host slices. A device is not a variant here: a GPU runs a whole
/// step on device-resident buffers (`pdq_engine`'s executors), since copying in and out per op
/// would cost more than the op.
#[derive(Debug, Clone, Default)]
pub struct Backend(CpuBackend);

/// The `--device` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when this build has it and a driver and GPU are present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self, KernelError> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(KernelError::UnknownDevice(other.to_string())),
        }
    }
}

impl Backend {
    /// The CPU reference backend.
    pub fn cpu() -> Backend {
        Backend(CpuBackend)
    }

    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        "cpu"
    }

    /// `y[m, n] = x[m, k] · w[n, k]^T (+ bias[n])`, the layout of an HF `nn.Linear` weight.
    /// `m` and `n` are derived from the slice lengths and `k`.
    pub fn matmul(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, y: &mut [f32]) {
        cpu::matmul(x, w, bias, k, y)
    }

    /// [`Backend::matmul`] with a weight kept in a ggml block format: the blocks are dequantized
    /// panel by panel, bit-identical to `matmul` on the dequantized matrix. With
    /// [`Activations::Int8`] each row of `x` is quantized per block and the dots are taken in
    /// integers where the weight type has an int8 kernel (else it stays exact).
    pub fn matmul_quant(&self, x: &[f32], w: &QMatrix<'_>, bias: Option<&[f32]>, y: &mut [f32], act: Activations) {
        if act == Activations::Int8 && quant::int8::supported(w.dtype) {
            quant::int8::matmul_int8(x, w, bias, y)
        } else {
            cpu::matmul_quant(x, w, bias, y)
        }
    }

    /// [`Backend::matmul_quant`] for several matrices on the same `x` (Q, K and V; gate and up):
    /// one parallel region, the same results as separate calls.
    pub fn matmul_quant_many(&self, x: &[f32], ws: &[cpu::QLinear<'_, '_>], ys: &mut [&mut [f32]], act: Activations) {
        cpu::matmul_quant_many(x, ws, ys, act)
    }

    /// Row-wise RMS norm over rows of `weight.len()` values.
    pub fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
        cpu::rms_norm(x, weight, eps, y)
    }

    /// Rotary embedding in place on `x[tokens, n_heads, head_dim]`, token `t` at `positions[t]`.
    pub fn rope(&self, x: &mut [f32], n_heads: usize, positions: &[usize], inv_freq: &[f32]) {
        cpu::rope_inplace(x, n_heads, positions, inv_freq)
    }

    /// Numerically stable softmax of one row, in place.
    pub fn softmax(&self, x: &mut [f32]) {
        cpu::softmax_inplace(x)
    }

    /// `out = silu(gate) * up`, element-wise.
    pub fn silu_mul(&self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        cpu::silu_mul(gate, up, out)
    }

    /// One query token attending over every row of a K/V cache (grouped-query attention).
    pub fn attention(&self, q: &[f32], k: &[f32], v: &[f32], shape: AttnShape, out: &mut [f32]) {
        cpu::attention(q, k, v, shape, out)
    }

    /// [`Backend::attention`] over the first `len` rows of a paged cache: `blocks[b]` holds the
    /// K and V rows `b * block_size..` of the sequence. Same result as the contiguous call.
    pub fn attention_paged(
        &self,
        q: &[f32],
        blocks: &[(&[f32], &[f32])],
        len: usize,
        block_size: usize,
        shape: AttnShape,
        out: &mut [f32],
    ) {
        cpu::attention_paged(q, blocks, len, block_size, shape, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choice_parses() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda);
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        let e = "gpu".parse::<DeviceChoice>().unwrap_err();
        assert_eq!(e.to_string(), "unknown device `gpu`: expected `auto`, `cpu` or `cuda`");
        assert_eq!(e.error_type(), "config");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_the_feature_cuda_is_not_built() {
        let e = CudaBackend::new(0).unwrap_err();
        assert!(matches!(e, KernelError::NotBuilt), "{e}");
    }
}
