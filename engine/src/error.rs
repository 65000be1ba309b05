//! The engine's one error type. Messages name the file, field or tensor that is wrong, so an
//! operator can fix a model directory from the log line alone.

use std::path::PathBuf;

#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    #[error("missing model file `{}`", path.display())]
    MissingFile { path: PathBuf },
    #[error("cannot access `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid `{}`: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("weights in `{}`: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("sequence of {len} tokens exceeds the model context of {max} tokens")]
    ContextLength { len: usize, max: usize },
    #[error("KV cache: {0}")]
    KvCache(String),
    #[error("KV pool has {available} free blocks, {needed} needed")]
    KvCapacity { needed: usize, available: usize },
    /// A device op failed (CUDA driver, cuBLAS, a kernel that did not compile), or the device
    /// asked for is not available in this build or on this machine.
    #[error("device: {0}")]
    Device(String),
    /// An output constraint that does not compile, or that the sequence could not follow.
    #[error("structured output: {0}")]
    Grammar(String),
    /// Work this engine does not do (embeddings on an executor without them).
    #[error("not supported: {0}")]
    Unsupported(String),
}

impl EngineError {
    /// Stable class name: decides ack / requeue / dead-letter upstream and labels metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            EngineError::MissingFile { .. } => "missing_file",
            EngineError::Io { .. } => "io",
            EngineError::Config { .. } => "config",
            EngineError::Weights { .. } => "weights",
            EngineError::Tokenizer(_) => "tokenizer",
            EngineError::ChatTemplate(_) => "chat_template",
            EngineError::InvalidInput(_) => "invalid_input",
            EngineError::ContextLength { .. } => "context_length",
            EngineError::KvCache(_) => "kv_cache",
            EngineError::KvCapacity { .. } => "kv_capacity",
            EngineError::Device(_) => "device",
            EngineError::Grammar(_) => "grammar",
            EngineError::Unsupported(_) => "unsupported",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> EngineError {
        EngineError::Io { path: path.into(), source }
    }
}

/// Reads a file, turning "not found" into [`EngineError::MissingFile`] naming it.
impl From<pdq_kernels::KernelError> for EngineError {
    fn from(e: pdq_kernels::KernelError) -> EngineError {
        EngineError::Device(e.to_string())
    }
}

pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, EngineError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::MissingFile { path: path.to_path_buf() },
        _ => EngineError::io(path, e),
    })
}

/// Reads an optional JSON file: `Ok(None)` when absent, an error naming it when malformed.
pub(crate) fn read_json_opt(path: &std::path::Path) -> Result<Option<serde_json::Value>, EngineError> {
    match read_file(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EngineError::Config { path: path.to_path_buf(), message: e.to_string() }),
        Err(EngineError::MissingFile { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
