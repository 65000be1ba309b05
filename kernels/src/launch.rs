//! Launch shapes for the CUDA kernels, as plain arithmetic so the default build tests them.
//!
//! The constants mirror the `#define`s of the `.cu` files (a test reads the sources and checks);
//! every function validates what its kernel assumes and returns a [`KernelError::Shape`] naming
//! the value, never a launch the kernel would run out of bounds with.

use crate::KernelError;

/// CUDA C sources, compiled at run time by NVRTC. [`COMMON`](sources::COMMON) is prepended to each.
pub mod sources {
    pub const COMMON: &str = include_str!("../cuda/common.cuh");
    /// `(file, code)` for every kernel file.
    pub const ALL: &[(&str, &str)] = &[
        ("embedding.cu", include_str!("../cuda/embedding.cu")),
        ("rms_norm.cu", include_str!("../cuda/rms_norm.cu")),
        ("rope.cu", include_str!("../cuda/rope.cu")),
        ("activation.cu", include_str!("../cuda/activation.cu")),
        ("kv_cache.cu", include_str!("../cuda/kv_cache.cu")),
        ("paged_attention.cu", include_str!("../cuda/paged_attention.cu")),
        ("prefill_attention.cu", include_str!("../cuda/prefill_attention.cu")),
        ("sampling.cu", include_str!("../cuda/sampling.cu")),
    ];
}

/// Grid and block dimensions of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// Threads for one-block-per-row kernels (norms, embedding, RoPE, KV writes).
pub const ROW_THREADS: u32 = 256;
/// Threads for grid-stride element-wise kernels.
pub const ELEMENTWISE_THREADS: u32 = 256;
/// Grid-stride kernels never launch more blocks than this; each thread loops.
pub const MAX_GRID_STRIDE_BLOCKS: u32 = 4096;
/// `paged_attention.cu`: `PA_WARPS`, `PA_MAX_HD`.
pub const PA_WARPS: u32 = 4;
pub const PA_MAX_HD: usize = 256;
/// `prefill_attention.cu`: `FA_BQ`, `FA_WARPS`; head_dim limits per dtype (shared-memory budget).
pub const FA_BQ: usize = 16;
pub const FA_WARPS: u32 = 4;
pub const FA_MAX_HD_F32: usize = 128;
pub const FA_MAX_HD_BF16: usize = 256;
/// `sampling.cu`: `SAMPLE_THREADS`.
pub const SAMPLE_THREADS: u32 = 1024;
/// Hardware limit on grid y and z.
const MAX_GRID_YZ: usize = 65535;

fn shape_err(msg: String) -> KernelError {
    KernelError::Shape(msg)
}

fn fits_u32(name: &str, v: usize) -> Result<u32, KernelError> {
    u32::try_from(v).map_err(|_| shape_err(format!("`{name}` {v} does not fit a grid dimension")))
}

fn fits_yz(name: &str, v: usize) -> Result<u32, KernelError> {
    if v > MAX_GRID_YZ {
        return Err(shape_err(format!("`{name}` must be <= {MAX_GRID_YZ}, got {v}")));
    }
    Ok(v as u32)
}

/// One block per row, threads striding over the row; at least one warp, at most [`ROW_THREADS`].
pub fn per_row(rows: usize, row_len: usize) -> Result<Launch, KernelError> {
    if rows == 0 || row_len == 0 {
        return Err(shape_err(format!("per-row launch needs rows and row length >= 1, got {rows} x {row_len}")));
    }
    let threads = (row_len.div_ceil(32) * 32).min(ROW_THREADS as usize) as u32;
    Ok(Launch { grid: (fits_u32("rows", rows)?, 1, 1), block: (threads, 1, 1) })
}

/// Grid-stride over `n` elements.
pub fn elementwise(n: usize) -> Result<Launch, KernelError> {
    if n == 0 {
        return Err(shape_err("element-wise launch over 0 elements".into()));
    }
    let blocks = n.div_ceil(ELEMENTWISE_THREADS as usize).min(MAX_GRID_STRIDE_BLOCKS as usize) as u32;
    Ok(Launch { grid: (blocks, 1, 1), block: (ELEMENTWISE_THREADS, 1, 1) })
}

/// `n_heads` must be a positive multiple of `n_kv_heads` (grouped-query attention).
pub fn check_gqa(n_heads: usize, n_kv_heads: usize) -> Result<(), KernelError> {
    if n_kv_heads == 0 || n_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(shape_err(format!("`n_heads` {n_heads} must be a positive multiple of `n_kv_heads` {n_kv_heads}")));
    }
    Ok(())
}

/// Decode attention: grid (n_heads, num_seqs), [`PA_WARPS`] warps.
pub fn paged_decode(
    num_seqs: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
) -> Result<Launch, KernelError> {
    check_gqa(n_heads, n_kv_heads)?;
    if head_dim == 0 || head_dim > PA_MAX_HD {
        return Err(shape_err(format!("`head_dim` must be in 1..={PA_MAX_HD} for paged attention, got {head_dim}")));
    }
    if num_seqs == 0 {
        return Err(shape_err("paged attention over 0 sequences".into()));
    }
    Ok(Launch {
        grid: (fits_u32("n_heads", n_heads)?, fits_yz("num_seqs", num_seqs)?, 1),
        block: (PA_WARPS * 32, 1, 1),
    })
}

/// Prefill attention: grid (query tiles of the longest chunk, n_heads, num_seqs).
pub fn prefill(
    max_q_len: usize,
    num_seqs: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    max_head_dim: usize,
) -> Result<Launch, KernelError> {
    check_gqa(n_heads, n_kv_heads)?;
    if head_dim == 0 || head_dim > max_head_dim {
        return Err(shape_err(format!(
            "`head_dim` must be in 1..={max_head_dim} for prefill attention in this dtype, got {head_dim}"
        )));
    }
    if max_q_len == 0 || num_seqs == 0 {
        return Err(shape_err(format!("prefill attention needs queries, got {num_seqs} sequences of <= {max_q_len}")));
    }
    Ok(Launch {
        grid: (
            fits_u32("query tiles", max_q_len.div_ceil(FA_BQ))?,
            fits_yz("n_heads", n_heads)?,
            fits_yz("num_seqs", num_seqs)?,
        ),
        block: (FA_WARPS * 32, 1, 1),
    })
}

/// Whole-block copies: grid (chunks of a block, number of blocks).
pub fn kv_blocks(n_blocks: usize, block_elems: usize) -> Result<Launch, KernelError> {
    if n_blocks == 0 || block_elems == 0 {
        return Err(shape_err(format!("block copy of {n_blocks} blocks of {block_elems} values")));
    }
    let chunks = block_elems.div_ceil(ELEMENTWISE_THREADS as usize).min(MAX_GRID_STRIDE_BLOCKS as usize) as u32;
    Ok(Launch { grid: (chunks, fits_yz("n_blocks", n_blocks)?, 1), block: (ELEMENTWISE_THREADS, 1, 1) })
}

/// Argmax and sampling: one block of [`SAMPLE_THREADS`] per row.
pub fn sampling(rows: usize, vocab: usize) -> Result<Launch, KernelError> {
    if rows == 0 || vocab == 0 {
        return Err(shape_err(format!("sampling needs rows and a vocabulary, got {rows} x {vocab}")));
    }
    if vocab >= 1 << 24 {
        return Err(shape_err(format!("`vocab` must be < 2^24 (counts are exact f32), got {vocab}")));
    }
    Ok(Launch { grid: (fits_u32("rows", rows)?, 1, 1), block: (SAMPLE_THREADS, 1, 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_row_uses_whole_warps_and_caps_threads() {
        assert_eq!(per_row(3, 1).unwrap().block, (32, 1, 1));
        assert_eq!(per_row(3, 33).unwrap().block, (64, 1, 1));
        assert_eq!(per_row(3, 4096).unwrap(), Launch { grid: (3, 1, 1), block: (ROW_THREADS, 1, 1) });
        assert!(per_row(0, 8).is_err());
    }

    #[test]
    fn elementwise_caps_the_grid_and_covers_small_inputs() {
        assert_eq!(elementwise(1).unwrap().grid, (1, 1, 1));
        assert_eq!(elementwise(257).unwrap().grid, (2, 1, 1));
        assert_eq!(elementwise(1 << 30).unwrap().grid, (MAX_GRID_STRIDE_BLOCKS, 1, 1));
        assert!(elementwise(0).is_err());
    }

    #[test]
    fn attention_shapes_are_validated() {
        assert_eq!(paged_decode(5, 32, 8, 128).unwrap().grid, (32, 5, 1));
        let e = paged_decode(5, 6, 4, 64).unwrap_err().to_string();
        assert!(e.contains("`n_heads` 6 must be a positive multiple of `n_kv_heads` 4"), "{e}");
        assert!(paged_decode(1, 8, 8, 512).is_err());
        assert!(paged_decode(70_000, 8, 8, 64).is_err(), "grid y limit");
        let l = prefill(33, 2, 8, 2, 128, FA_MAX_HD_F32).unwrap();
        assert_eq!(l.grid, (3, 8, 2));
        assert!(prefill(33, 2, 8, 2, 256, FA_MAX_HD_F32).is_err());
        assert!(prefill(33, 2, 8, 2, 256, FA_MAX_HD_BF16).is_ok());
    }

    #[test]
    fn block_copies_and_sampling() {
        assert_eq!(kv_blocks(3, 16 * 8 * 128).unwrap().grid, (64, 3, 1));
        assert!(kv_blocks(0, 10).is_err());
        assert_eq!(sampling(4, 128_256).unwrap(), Launch { grid: (4, 1, 1), block: (SAMPLE_THREADS, 1, 1) });
        assert!(sampling(1, 1 << 24).is_err());
    }

    /// The Rust constants must match the `#define`s the kernels are compiled with.
    #[test]
    fn constants_match_the_cuda_sources() {
        let src = |f: &str| sources::ALL.iter().find(|s| s.0 == f).unwrap().1;
        let defines = |f: &str, name: &str, v: usize| {
            let line = format!("#define {name} {v}");
            assert!(src(f).contains(&line), "{f} lacks `{line}`");
        };
        defines("paged_attention.cu", "PA_WARPS", PA_WARPS as usize);
        defines("paged_attention.cu", "PA_MAX_HD", PA_MAX_HD);
        defines("prefill_attention.cu", "FA_BQ", FA_BQ);
        defines("prefill_attention.cu", "FA_WARPS", FA_WARPS as usize);
        defines("sampling.cu", "SAMPLE_THREADS", SAMPLE_THREADS as usize);
        assert!(src("prefill_attention.cu").contains(&format!("PREFILL_ATTENTION(float, f32, {FA_MAX_HD_F32})")));
        assert!(src("prefill_attention.cu").contains(&format!("PREFILL_ATTENTION(bf16, bf16, {FA_MAX_HD_BF16})")));
    }
}
