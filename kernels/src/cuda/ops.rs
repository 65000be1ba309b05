//! Launchers: one per kernel, device-resident inputs and outputs, generic over [`DType`].
//! Each checks the lengths its kernel indexes with, launches on the backend's stream and checks
//! the result; inputs are views so callers can pass sub-ranges of larger buffers.

use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use super::{driver_err, CudaBackend, DType};
use crate::launch::{self, Launch};
use crate::{AttnShape, KernelError};

fn cfg(l: Launch) -> LaunchConfig {
    LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: 0 }
}

fn int(name: &str, v: usize) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::Shape(format!("`{name}` {v} does not fit an i32 kernel argument")))
}

fn expect_len(name: &str, got: usize, want: usize) -> Result<(), KernelError> {
    if got != want {
        return Err(KernelError::Shape(format!("`{name}` must hold {want} values, got {got}")));
    }
    Ok(())
}

fn rows_of(name: &str, len: usize, row: usize) -> Result<usize, KernelError> {
    if row == 0 || len == 0 || !len.is_multiple_of(row) {
        return Err(KernelError::Shape(format!("`{name}` length {len} is not a positive multiple of {row}")));
    }
    Ok(len / row)
}

/// One layer's paged K/V cache plus the batch's block tables (layout: [`crate::paged`]).
/// Contract the launchers cannot check without a copy: every id in `block_tables` is below
/// `num_blocks`, and `context_lens[s] <= max_blocks * block_size`.
pub struct KvViews<'a, T> {
    /// `[num_blocks, block_size, n_kv_heads, head_dim]`.
    pub k_cache: CudaView<'a, T>,
    pub v_cache: CudaView<'a, T>,
    /// `[num_seqs, max_blocks]`.
    pub block_tables: CudaView<'a, i32>,
    pub max_blocks: usize,
    /// `[num_seqs]`: cached tokens per sequence, including the ones being computed.
    pub context_lens: CudaView<'a, i32>,
    pub block_size: usize,
}

impl<T> KvViews<'_, T> {
    fn check(&self, shape: AttnShape) -> Result<usize, KernelError> {
        let num_seqs = self.context_lens.len();
        expect_len("block_tables", self.block_tables.len(), num_seqs * self.max_blocks)?;
        let block = self.block_size * shape.n_kv_heads * shape.head_dim;
        rows_of("k_cache", self.k_cache.len(), block)?;
        expect_len("v_cache", self.v_cache.len(), self.k_cache.len())?;
        Ok(num_seqs)
    }
}

/// Per-row sampling inputs, each `[rows]`; rules in `cpu::sample`.
pub struct SampleArgs<'a> {
    pub temperature: CudaView<'a, f32>,
    pub top_k: CudaView<'a, i32>,
    pub top_p: CudaView<'a, f32>,
    pub min_p: CudaView<'a, f32>,
    /// Uniform numbers in `[0, 1)` drawn by the host.
    pub uniform: CudaView<'a, f32>,
}

impl CudaBackend {
    /// `out[t, :] = table[ids[t], :]`; an id outside the table yields a NaN row.
    pub fn embedding<T: DType>(
        &self,
        table: &CudaView<T>,
        ids: &CudaView<u32>,
        hidden: usize,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        let vocab = rows_of("table", table.len(), hidden)?;
        expect_len("out", out.len(), ids.len() * hidden)?;
        let l = launch::per_row(ids.len(), hidden)?;
        let f = self.function("embedding.cu", "embedding", T::SUFFIX)?;
        let (hidden, vocab) = (int("hidden", hidden)?, int("vocab", vocab)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(table).arg(ids).arg(&hidden).arg(&vocab);
        // SAFETY: arguments match `embedding_<T>(T*, const T*, const unsigned*, int, int)`; out has
        // ids.len() rows of `hidden`, and ids are bounds-checked against `vocab` in the kernel.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("embedding")
    }

    /// Row-wise RMS norm over rows of `w.len()` values.
    pub fn rms_norm<T: DType>(
        &self,
        x: &CudaView<T>,
        w: &CudaView<T>,
        eps: f32,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        let rows = rows_of("x", x.len(), w.len())?;
        expect_len("out", out.len(), x.len())?;
        let l = launch::per_row(rows, w.len())?;
        let f = self.function("rms_norm.cu", "rms_norm", T::SUFFIX)?;
        let dim = int("dim", w.len())?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(x).arg(w).arg(&dim).arg(&eps);
        // SAFETY: matches `rms_norm_<T>(T*, const T*, const T*, int, float)`; x and out hold
        // `rows` rows of `dim`, one block per row.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("rms_norm")
    }

    /// `residual += delta; out = rms_norm(residual) * w`, row by row.
    pub fn fused_add_rms_norm<T: DType>(
        &self,
        residual: &mut CudaViewMut<T>,
        delta: &CudaView<T>,
        w: &CudaView<T>,
        eps: f32,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        let rows = rows_of("residual", residual.len(), w.len())?;
        expect_len("delta", delta.len(), residual.len())?;
        expect_len("out", out.len(), residual.len())?;
        let l = launch::per_row(rows, w.len())?;
        let f = self.function("rms_norm.cu", "fused_add_rms_norm", T::SUFFIX)?;
        let dim = int("dim", w.len())?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(residual).arg(delta).arg(w).arg(out).arg(&dim).arg(&eps);
        // SAFETY: matches `fused_add_rms_norm_<T>(T*, const T*, const T*, T*, int, float)`; all
        // three row buffers hold `rows * dim` values.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("fused_add_rms_norm")
    }

    /// RoPE in place on `x[tokens, n_heads, 2 * inv_freq.len()]`, token `t` at `positions[t]`.
    pub fn rope<T: DType>(
        &self,
        x: &mut CudaViewMut<T>,
        n_heads: usize,
        positions: &CudaView<i32>,
        inv_freq: &CudaView<f32>,
    ) -> Result<(), KernelError> {
        let half = inv_freq.len();
        expect_len("x", x.len(), positions.len() * n_heads * 2 * half)?;
        let l = launch::per_row(positions.len(), n_heads * half)?;
        let f = self.function("rope.cu", "rope", T::SUFFIX)?;
        let (n_heads, half) = (int("n_heads", n_heads)?, int("half", half)?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(x).arg(positions).arg(inv_freq).arg(&n_heads).arg(&half);
        // SAFETY: matches `rope_<T>(T*, const int*, const float*, int, int)`; x holds
        // tokens * n_heads * 2 * half values, one block per token.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("rope")
    }

    /// `out = silu(gate) * up`.
    pub fn silu_mul<T: DType>(
        &self,
        gate: &CudaView<T>,
        up: &CudaView<T>,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        expect_len("up", up.len(), gate.len())?;
        expect_len("out", out.len(), gate.len())?;
        let l = launch::elementwise(gate.len())?;
        let f = self.function("activation.cu", "silu_mul", T::SUFFIX)?;
        let n = gate.len() as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(gate).arg(up).arg(&n);
        // SAFETY: matches `silu_mul_<T>(T*, const T*, const T*, long long)`; all hold n values.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("silu_mul")
    }

    /// `y[m, n] += bias[n]`.
    pub fn add_bias<T: DType>(&self, y: &mut CudaViewMut<T>, bias: &CudaView<T>) -> Result<(), KernelError> {
        let m = rows_of("y", y.len(), bias.len())?;
        let l = launch::elementwise(y.len())?;
        let f = self.function("activation.cu", "add_bias", T::SUFFIX)?;
        let (m, n) = (m as i64, int("n", bias.len())?);
        let mut b = self.stream().launch_builder(&f);
        b.arg(y).arg(bias).arg(&m).arg(&n);
        // SAFETY: matches `add_bias_<T>(T*, const T*, long long, int)`; y holds m * n values.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("add_bias")
    }

    /// Softmax in place over rows of `n` values.
    pub fn softmax<T: DType>(&self, x: &mut CudaViewMut<T>, n: usize) -> Result<(), KernelError> {
        let rows = rows_of("x", x.len(), n)?;
        let l = launch::per_row(rows, n)?;
        let f = self.function("activation.cu", "softmax", T::SUFFIX)?;
        let n = int("n", n)?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(x).arg(&n);
        // SAFETY: matches `softmax_<T>(T*, int)`; x holds rows * n values, one block per row.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("softmax")
    }

    /// Scatters `k`/`v` rows (`[tokens, row]`) into cache slots; slot -1 skips a padding token.
    /// Contract: every slot is below the cache's token capacity.
    pub fn kv_write<T: DType>(
        &self,
        k_cache: &mut CudaViewMut<T>,
        v_cache: &mut CudaViewMut<T>,
        k: &CudaView<T>,
        v: &CudaView<T>,
        slots: &CudaView<i64>,
        row: usize,
    ) -> Result<(), KernelError> {
        expect_len("k", k.len(), slots.len() * row)?;
        expect_len("v", v.len(), k.len())?;
        rows_of("k_cache", k_cache.len(), row)?;
        expect_len("v_cache", v_cache.len(), k_cache.len())?;
        let l = launch::per_row(slots.len(), row)?;
        let f = self.function("kv_cache.cu", "kv_write", T::SUFFIX)?;
        let row = int("row", row)?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(k_cache).arg(v_cache).arg(k).arg(v).arg(slots).arg(&row);
        // SAFETY: matches `kv_write_<T>(T*, T*, const T*, const T*, const long long*, int)`; k/v
        // hold tokens * row values; slots are in range by contract.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("kv_write")
    }

    /// `pages[i] = cache[block_ids[i]]` (data plane send). Contract: ids are below num_blocks.
    pub fn kv_gather_blocks<T: DType>(
        &self,
        cache: &CudaView<T>,
        block_ids: &CudaView<i32>,
        block_elems: usize,
        pages: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        rows_of("cache", cache.len(), block_elems)?;
        expect_len("pages", pages.len(), block_ids.len() * block_elems)?;
        let l = launch::kv_blocks(block_ids.len(), block_elems)?;
        let f = self.function("kv_cache.cu", "kv_gather_blocks", T::SUFFIX)?;
        let be = block_elems as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(pages).arg(cache).arg(block_ids).arg(&be);
        // SAFETY: matches `kv_gather_blocks_<T>(T*, const T*, const int*, long long)`; pages
        // holds one block per id; ids are in range by contract.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("kv_gather_blocks")
    }

    /// `cache[block_ids[i]] = pages[i]` (data plane receive). Contract: ids are below num_blocks.
    pub fn kv_scatter_blocks<T: DType>(
        &self,
        cache: &mut CudaViewMut<T>,
        pages: &CudaView<T>,
        block_ids: &CudaView<i32>,
        block_elems: usize,
    ) -> Result<(), KernelError> {
        rows_of("cache", cache.len(), block_elems)?;
        expect_len("pages", pages.len(), block_ids.len() * block_elems)?;
        let l = launch::kv_blocks(block_ids.len(), block_elems)?;
        let f = self.function("kv_cache.cu", "kv_scatter_blocks", T::SUFFIX)?;
        let be = block_elems as i64;
        let mut b = self.stream().launch_builder(&f);
        b.arg(cache).arg(pages).arg(block_ids).arg(&be);
        // SAFETY: matches `kv_scatter_blocks_<T>(T*, const T*, const int*, long long)`; as gather.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("kv_scatter_blocks")
    }

    /// Decode attention: `q[num_seqs, n_heads, head_dim]`, each sequence over its cached tokens.
    pub fn paged_attention_decode<T: DType>(
        &self,
        q: &CudaView<T>,
        kv: &KvViews<T>,
        shape: AttnShape,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        let num_seqs = kv.check(shape)?;
        let l = launch::paged_decode(num_seqs, shape.n_heads, shape.n_kv_heads, shape.head_dim)?;
        expect_len("q", q.len(), num_seqs * shape.n_heads * shape.head_dim)?;
        expect_len("out", out.len(), q.len())?;
        let f = self.function("paged_attention.cu", "paged_attention_decode", T::SUFFIX)?;
        let (nh, nkv, hd) =
            (int("n_heads", shape.n_heads)?, int("n_kv_heads", shape.n_kv_heads)?, int("head_dim", shape.head_dim)?);
        let (bs, mb) = (int("block_size", kv.block_size)?, int("max_blocks", kv.max_blocks)?);
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(q).arg(&kv.k_cache).arg(&kv.v_cache).arg(&kv.block_tables).arg(&kv.context_lens);
        b.arg(&nh).arg(&nkv).arg(&hd).arg(&bs).arg(&mb).arg(&scale);
        // SAFETY: matches `paged_attention_decode_<T>(T*, const T*, const T*, const T*, const int*,
        // const int*, int, int, int, int, int, float)`; lengths checked above, block ids and
        // context lengths in range by the KvViews contract.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("paged_attention_decode")
    }

    /// Causal prefill over a packed batch (`cu_q_lens[num_seqs + 1]`, rows of the longest chunk
    /// `max_q_len`); K/V of the chunk must already be in the cache. Contract:
    /// `context_lens[s] >= q_len(s)` and `max_q_len` is the longest chunk.
    pub fn prefill_attention<T: DType>(
        &self,
        q: &CudaView<T>,
        cu_q_lens: &CudaView<i32>,
        max_q_len: usize,
        kv: &KvViews<T>,
        shape: AttnShape,
        out: &mut CudaViewMut<T>,
    ) -> Result<(), KernelError> {
        let num_seqs = kv.check(shape)?;
        expect_len("cu_q_lens", cu_q_lens.len(), num_seqs + 1)?;
        let qd = shape.n_heads * shape.head_dim;
        let rows = rows_of("q", q.len(), qd)?;
        expect_len("out", out.len(), q.len())?;
        if max_q_len > rows {
            return Err(KernelError::Shape(format!("`max_q_len` {max_q_len} exceeds the {rows} query rows")));
        }
        let l =
            launch::prefill(max_q_len, num_seqs, shape.n_heads, shape.n_kv_heads, shape.head_dim, T::PREFILL_MAX_HD)?;
        let f = self.function("prefill_attention.cu", "prefill_attention", T::SUFFIX)?;
        let (nh, nkv, hd) =
            (int("n_heads", shape.n_heads)?, int("n_kv_heads", shape.n_kv_heads)?, int("head_dim", shape.head_dim)?);
        let (bs, mb) = (int("block_size", kv.block_size)?, int("max_blocks", kv.max_blocks)?);
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(q).arg(&kv.k_cache).arg(&kv.v_cache).arg(cu_q_lens).arg(&kv.context_lens).arg(&kv.block_tables);
        b.arg(&nh).arg(&nkv).arg(&hd).arg(&bs).arg(&mb).arg(&scale);
        // SAFETY: matches `prefill_attention_<T>(T*, const T*, const T*, const T*, const int*,
        // const int*, const int*, int, int, int, int, int, float)`; lengths checked above, the
        // rest by the contracts of this op and KvViews.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("prefill_attention")
    }

    /// Greedy choice per row of `logits[rows, vocab]`.
    pub fn argmax<T: DType>(
        &self,
        logits: &CudaView<T>,
        vocab: usize,
        out: &mut CudaViewMut<i32>,
    ) -> Result<(), KernelError> {
        let rows = rows_of("logits", logits.len(), vocab)?;
        expect_len("out", out.len(), rows)?;
        let l = launch::sampling(rows, vocab)?;
        let f = self.function("sampling.cu", "argmax", T::SUFFIX)?;
        let vocab = int("vocab", vocab)?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out).arg(logits).arg(&vocab);
        // SAFETY: matches `argmax_<T>(int*, const T*, int)`; one block per row of `vocab`.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("argmax")
    }

    /// Sampled token per row of `logits[rows, vocab]`, with the host's uniform numbers.
    pub fn sample<T: DType>(
        &self,
        logits: &CudaView<T>,
        vocab: usize,
        args: &SampleArgs,
        out: &mut CudaViewMut<i32>,
    ) -> Result<(), KernelError> {
        let rows = rows_of("logits", logits.len(), vocab)?;
        expect_len("out", out.len(), rows)?;
        for (name, len) in [
            ("temperature", args.temperature.len()),
            ("top_k", args.top_k.len()),
            ("top_p", args.top_p.len()),
            ("min_p", args.min_p.len()),
            ("uniform", args.uniform.len()),
        ] {
            expect_len(name, len, rows)?;
        }
        let l = launch::sampling(rows, vocab)?;
        let f = self.function("sampling.cu", "sample", T::SUFFIX)?;
        let vocab = int("vocab", vocab)?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(out)
            .arg(logits)
            .arg(&args.temperature)
            .arg(&args.top_k)
            .arg(&args.top_p)
            .arg(&args.min_p)
            .arg(&args.uniform);
        b.arg(&vocab);
        // SAFETY: matches `sample_<T>(int*, const T*, const float*, const int*, const float*,
        // const float*, const float*, int)`; every per-row input holds `rows` values.
        unsafe { b.launch(cfg(l)) }.map_err(driver_err)?;
        self.after_launch("sample")
    }
}
