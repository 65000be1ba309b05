//! GEMM through cuBLAS: `y[m, n] = x[m, k] · w[n, k]^T`, the HF `nn.Linear` layout, with bf16
//! or f32 storage and f32 compute (`cublasGemmEx` with `CUBLAS_COMPUTE_32F` for bf16). No
//! hand-written GEMM: cuBLAS picks the tensor-core kernel for the shape.
//!
//! cuBLAS is column-major. Row-major `y[m, n]` is column-major `y^T[n, m]`, and
//! `y^T = w · x^T`: `w` row-major `[n, k]` read transposed (op T, ld k), `x` row-major `[m, k]`
//! read as is (op N, ld k), `y` with ld n.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaView, CudaViewMut};

use super::{CudaBackend, DType};
use crate::KernelError;

impl CudaBackend {
    /// `y = x · w^T (+ bias)`; `m` and `n` follow from the lengths and `k`.
    pub fn matmul<T: DType>(
        &self,
        x: &CudaView<T>,
        w: &CudaView<T>,
        bias: Option<&CudaView<T>>,
        k: usize,
        y: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError>
    where
        CudaBlas: Gemm<T>,
    {
        let shape = |what: &str| KernelError::Shape(format!("matmul: {what}"));
        if k == 0 || x.len() % k != 0 || w.len() % k != 0 || x.is_empty() || w.is_empty() {
            return Err(shape(&format!("x ({}) and w ({}) must be non-empty multiples of k {k}", x.len(), w.len())));
        }
        let (m, n) = (x.len() / k, w.len() / k);
        if y.len() != m * n {
            return Err(shape(&format!("y holds {}, want m {m} * n {n}", y.len())));
        }
        let dim = |v: usize| i32::try_from(v).map_err(|_| shape(&format!("dimension {v} exceeds i32")));
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: dim(n)?,
            n: dim(m)?,
            k: dim(k)?,
            alpha: T::from_f32(1.0),
            lda: dim(k)?,
            ldb: dim(k)?,
            beta: T::from_f32(0.0),
            ldc: dim(n)?,
        };
        // SAFETY: the config describes exactly the buffers' extents checked above (A = w with
        // n*k values, B = x with m*k, C = y with m*n), all on the handle's stream.
        unsafe { self.inner.blas.gemm(cfg, w, x, y) }
            .map_err(|e| KernelError::Blas(format!("gemm m={m} n={n} k={k}: {e}")))?;
        self.after_launch("matmul")?;
        if let Some(b) = bias {
            self.add_bias(y, b)?;
        }
        Ok(())
    }
}
