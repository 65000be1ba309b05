//! The GPU forward: the batched step of `forward.rs` on one CUDA device, in bf16 with f32
//! accumulation (cuBLAS GEMMs, the kernels of `kernels/cuda/`).
//!
//! Invariants:
//! - weights are uploaded once ([`GpuModel::new`]) and never leave the device;
//! - [`GpuKv`] keeps the block tables in a tables-only [`crate::PagedKv`] (same allocator, same
//!   reservations, same ids as the CPU pool) and the rows on the device, per layer
//!   `[num_blocks, block_size, n_kv_heads, head_dim]` for K and for V;
//! - a step is validated by the CPU path's own `check_batch` before anything changes, so a
//!   rejected batch leaves the pool as it was;
//! - KV pages leave and enter in the host page format of `paged/pages.rs` (f32 values), so a
//!   GPU prefill and a CPU decode (or the reverse) exchange KV freely.
//!
//! [`GpuExecutor`] is this forward behind the engine's executor seam (`crate::Executor`), what
//! `--device cuda` runs. Nothing here has run on a GPU yet: `scripts/gpu-check.sh` checks it
//! against the CPU forward and the CPU engine loop.

mod executor;
mod forward;
mod pages;
mod staging;
#[cfg(test)]
mod tests;
mod weights;

pub use executor::GpuExecutor;
pub use forward::{GpuKv, GpuModel};

use crate::error::EngineError;

/// A CUDA driver error as the engine's device error; every file of the GPU forward uses it.
fn dev_err(e: cudarc::driver::DriverError) -> EngineError {
    EngineError::Device(e.to_string())
}
