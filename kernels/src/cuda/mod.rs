//! CUDA backend through cudarc: kernels from `kernels/cuda/*.cu` compiled by NVRTC for the
//! device's architecture on first use (one module per file, cached per backend), GEMMs through
//! cuBLAS (bf16 or f32 storage, f32 compute).
//!
//! Invariants:
//! - nothing touches the driver before [`is_available`] says libcuda loads and a GPU answers
//!   (cudarc panics, rather than erroring, when a library is missing);
//! - every driver, NVRTC and cuBLAS result is checked; debug builds also synchronize after each
//!   launch so a faulting kernel is reported by the op that launched it;
//! - launchers check every length a kernel indexes with before launching; what they cannot check
//!   without a copy (block ids, context lengths) is the caller's contract, stated per op.

mod dtype;
mod gemm;
mod module;
mod ops;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};

pub use dtype::DType;
pub use module::{compile, kernel_names, program_source};
pub use ops::{KvViews, SampleArgs};

use crate::KernelError;

/// True when libcuda loads and reports at least one GPU. Never panics.
pub fn is_available() -> bool {
    // SAFETY: only tries to dlopen libcuda; no symbol is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return false;
    }
    matches!(CudaContext::device_count(), Ok(n) if n > 0)
}

/// True when libnvrtc loads (it needs no driver or GPU).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen libnvrtc.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn cublas_available() -> bool {
    // SAFETY: only tries to dlopen libcublas.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

pub(crate) fn driver_err(e: cudarc::driver::DriverError) -> KernelError {
    KernelError::Driver(e.to_string())
}

/// One GPU: its context, the stream every op is queued on, a cuBLAS handle and the kernel cache.
/// Cloning shares all of it.
#[derive(Clone)]
pub struct CudaBackend {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// `compute_XY` of the device, what NVRTC compiles for.
    arch: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("ordinal", &self.inner.ctx.ordinal())
            .field("arch", &self.inner.arch)
            .finish()
    }
}

impl CudaBackend {
    /// The backend on GPU `ordinal`. Fails with [`KernelError::NoDevice`] when there is no driver,
    /// no GPU, or no NVRTC or cuBLAS library to load.
    pub fn new(ordinal: usize) -> Result<CudaBackend, KernelError> {
        // SAFETY: dlopen probe only.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(KernelError::NoDevice("libcuda.so not found (no NVIDIA driver on this machine)".into()));
        }
        let count = CudaContext::device_count().map_err(|e| KernelError::NoDevice(format!("cuInit failed: {e}")))?;
        if ordinal as i64 >= count as i64 {
            return Err(KernelError::NoDevice(format!("GPU {ordinal} requested, {count} present")));
        }
        if !nvrtc_available() {
            return Err(KernelError::NoDevice("libnvrtc.so not found: add its directory to LD_LIBRARY_PATH".into()));
        }
        if !cublas_available() {
            return Err(KernelError::NoDevice("libcublas.so not found: add its directory to LD_LIBRARY_PATH".into()));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err)?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| KernelError::Blas(e.to_string()))?;
        Ok(CudaBackend {
            inner: Arc::new(Inner {
                ctx,
                stream,
                blas,
                arch: format!("compute_{major}{minor}"),
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The stream every op is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// The device's context (pinned host allocations are made through it).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// Device name and compute capability, for logs.
    pub fn describe(&self) -> String {
        let name = self.inner.ctx.name().unwrap_or_else(|e| format!("<name: {e}>"));
        format!("{name} ({})", self.inner.arch)
    }

    /// Waits for every queued op.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.inner.stream.synchronize().map_err(driver_err)
    }

    /// `{base}_{suffix}` from `file`, compiling and loading the file on first use.
    fn function(&self, file: &'static str, base: &str, suffix: &str) -> Result<CudaFunction, KernelError> {
        let name = format!("{base}_{suffix}");
        if let Some(f) = self.inner.functions.lock().unwrap_or_else(|p| p.into_inner()).get(&name) {
            return Ok(f.clone());
        }
        let module = {
            let mut modules = self.inner.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(file) {
                Some(m) => m.clone(),
                None => {
                    let ptx = module::compile(file, &self.inner.arch)?;
                    let m = self.inner.ctx.load_module(ptx).map_err(driver_err)?;
                    modules.insert(file, m.clone());
                    m
                }
            }
        };
        let f =
            module.load_function(&name).map_err(|e| KernelError::Driver(format!("kernel `{name}` in {file}: {e}")))?;
        self.inner.functions.lock().unwrap_or_else(|p| p.into_inner()).insert(name, f.clone());
        Ok(f)
    }

    /// After a launch: debug builds wait for the kernel so a fault names the op that caused it.
    fn after_launch(&self, what: &str) -> Result<(), KernelError> {
        if cfg!(debug_assertions) {
            self.inner.stream.synchronize().map_err(|e| KernelError::Driver(format!("{what}: {e}")))?;
        }
        Ok(())
    }
}
