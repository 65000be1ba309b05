//! The kernels crate's one error type. CPU ops keep panicking on shape violations (a caller bug);
//! these errors are for what can fail at run time: finding a device, compiling, launching.

/// An error from device selection or a device op.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("`--device cuda` needs a CUDA driver: {0}")]
    NoDevice(String),
    #[error("unknown device `{0}`: expected `auto`, `cpu` or `cuda`")]
    UnknownDevice(String),
    #[error("this build has no CUDA support: rebuild with `--features cuda`")]
    NotBuilt,
    #[error("NVRTC could not compile `{file}`:\n{log}")]
    Compile { file: &'static str, log: String },
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("cuBLAS: {0}")]
    Blas(String),
    #[error("{0}")]
    Shape(String),
}

impl KernelError {
    /// Class for logs and metrics: `config` errors need a different flag or build, `device` ones
    /// a different machine, `shape` ones a code fix.
    pub fn error_type(&self) -> &'static str {
        match self {
            KernelError::NoDevice(_) | KernelError::Driver(_) | KernelError::Blas(_) => "device",
            KernelError::UnknownDevice(_) | KernelError::NotBuilt => "config",
            KernelError::Compile { .. } | KernelError::Shape(_) => "shape",
        }
    }
}
