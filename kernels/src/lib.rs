//! Compute kernels for pdq's engine.
//!
//! Every op exists on the CPU reference backend ([`cpu`]); [`Backend`] is the closed enum the
//! engine calls through, so a CUDA variant can be added at this boundary without touching the
//! model code. Invariants every backend keeps:
//! - tensors are dense row-major `f32` slices; shapes are passed explicitly and asserted;
//! - each output row is computed independently with a fixed summation order, so a row's result
//!   does not depend on which other rows share the batch (prefill == incremental decode, bit for bit);
//! - that holds with threads too: work is split over output columns, never over a reduction.

pub mod cpu;

pub use cpu::{AttnShape, CpuBackend};

/// The compute backend. Closed on purpose: adding a device means adding a variant here and a
/// module beside [`cpu`], not threading `cfg` through the engine.
#[derive(Debug, Clone)]
pub enum Backend {
    Cpu(CpuBackend),
}

impl Default for Backend {
    fn default() -> Self {
        Backend::cpu()
    }
}

impl Backend {
    /// The CPU reference backend.
    pub fn cpu() -> Backend {
        Backend::Cpu(CpuBackend)
    }

    /// Short name for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Cpu(_) => "cpu",
        }
    }

    /// `y[m, n] = x[m, k] · w[n, k]^T (+ bias[n])`, the layout of an HF `nn.Linear` weight.
    /// `m` and `n` are derived from the slice lengths and `k`.
    pub fn matmul(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, y: &mut [f32]) {
        match self {
            Backend::Cpu(_) => cpu::matmul(x, w, bias, k, y),
        }
    }

    /// Row-wise RMS norm over rows of `weight.len()` values.
    pub fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
        match self {
            Backend::Cpu(_) => cpu::rms_norm(x, weight, eps, y),
        }
    }

    /// Rotary embedding in place on `x[tokens, n_heads, head_dim]`, token `t` at `positions[t]`.
    pub fn rope(&self, x: &mut [f32], n_heads: usize, positions: &[usize], inv_freq: &[f32]) {
        match self {
            Backend::Cpu(_) => cpu::rope_inplace(x, n_heads, positions, inv_freq),
        }
    }

    /// Numerically stable softmax of one row, in place.
    pub fn softmax(&self, x: &mut [f32]) {
        match self {
            Backend::Cpu(_) => cpu::softmax_inplace(x),
        }
    }

    /// `out = silu(gate) * up`, element-wise.
    pub fn silu_mul(&self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        match self {
            Backend::Cpu(_) => cpu::silu_mul(gate, up, out),
        }
    }

    /// One query token attending over every row of a K/V cache (grouped-query attention).
    pub fn attention(&self, q: &[f32], k: &[f32], v: &[f32], shape: AttnShape, out: &mut [f32]) {
        match self {
            Backend::Cpu(_) => cpu::attention(q, k, v, shape, out),
        }
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
        match self {
            Backend::Cpu(_) => cpu::attention_paged(q, blocks, len, block_size, shape, out),
        }
    }
}
