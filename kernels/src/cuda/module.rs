//! NVRTC compilation of the kernel files, and the list of kernels each file must export.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

use crate::launch::sources;
use crate::KernelError;

/// Base names of the kernels in each file; each is exported as `<base>_f32` and `<base>_bf16`.
pub const KERNELS: &[(&str, &[&str])] = &[
    ("embedding.cu", &["embedding"]),
    ("rms_norm.cu", &["rms_norm", "fused_add_rms_norm"]),
    ("rope.cu", &["rope"]),
    ("activation.cu", &["silu_mul", "add_bias", "softmax"]),
    ("kv_cache.cu", &["kv_write", "kv_gather_blocks", "kv_scatter_blocks"]),
    ("paged_attention.cu", &["paged_attention_decode"]),
    ("prefill_attention.cu", &["prefill_attention"]),
    ("sampling.cu", &["argmax", "sample"]),
];

/// Every exported kernel name of `file`.
pub fn kernel_names(file: &str) -> Vec<String> {
    let bases = KERNELS.iter().find(|k| k.0 == file).map_or(&[][..], |k| k.1);
    bases.iter().flat_map(|b| [format!("{b}_f32"), format!("{b}_bf16")]).collect()
}

/// What NVRTC sees for `file`: the common header, then the file.
pub fn program_source(file: &str) -> Option<String> {
    let code = sources::ALL.iter().find(|s| s.0 == file)?.1;
    Some(format!("{}\n{code}", sources::COMMON))
}

/// PTX for `file` targeting `arch` (`compute_90`). Needs libnvrtc, never the driver.
pub fn compile(file: &'static str, arch: &str) -> Result<Ptx, KernelError> {
    let src = program_source(file).ok_or_else(|| KernelError::Compile { file, log: "no such kernel file".into() })?;
    let opts = CompileOptions {
        name: Some(file.to_string()),
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts).map_err(|e| match e {
        CompileError::CompileError { log, .. } => {
            KernelError::Compile { file, log: log.to_string_lossy().into_owned() }
        }
        other => KernelError::Compile { file, log: format!("{other:?}") },
    })
}
