//! `--device`: which device an engine runs on, decided once at start ([`crate::Device::open`]).
//!
//! `cpu` always works; `cuda` needs a build with the `cuda` feature and a driver and GPU (the
//! kernels crate probes libcuda before touching the driver); `auto` takes CUDA exactly when
//! both are there, else the CPU.

pub use pdq_kernels::DeviceChoice;

/// One line for `--device cuda` on a build without the feature.
pub const NOT_BUILT: &str = "this pdq was built without CUDA; rebuild with --features cuda";

/// Whether this build carries the GPU executor (`pdq_engine::cuda`).
pub const fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}
