//! One batched step on the device. Rows are packed decode items first (one token each, read by
//! `paged_attention_decode`), then prefill chunks (read by `prefill_attention`); logits come
//! back in batch order. Layer by layer, as in `forward.rs`:
//! `normed = rms(x)` -> q, k, v GEMMs -> RoPE -> KV write -> attention -> o GEMM ->
//! `x += o; normed = rms(x)` (fused) -> gate, up GEMMs -> SwiGLU -> down GEMM -> next layer's
//! fused `x += down; normed = rms(x)`. The residual stream is bf16 here (f32 on the CPU): that is
//! the main source of difference from the CPU forward.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use pdq_kernels::cuda::{KvViews, SampleArgs};
use pdq_kernels::paged::{cu_seqlens, slot_mapping, BlockTables};
use pdq_kernels::{AttnShape, CudaBackend};

use super::dev_err;
use super::staging::Staging;
use super::weights::{self, DeviceLinear, DeviceWeights};
use crate::error::EngineError;
use crate::executor::{StepItem, StepOut, Want};
use crate::model::Model;
use crate::paged::{PagedKv, SeqId, DEFAULT_BLOCK_SIZE};

/// A model whose weights live on one GPU. The host model stays for validation, tokenizer and
/// config (its f32 weights are not needed after upload; dropping them is future work).
pub struct GpuModel {
    model: Arc<Model>,
    cuda: CudaBackend,
    pub(crate) w: DeviceWeights,
}

/// The KV cache on the device plus the block tables that address it.
pub struct GpuKv {
    pub(crate) tables: PagedKv,
    /// Per layer, `[num_blocks, block_size, n_kv_heads, head_dim]`.
    pub(crate) k: Vec<CudaSlice<bf16>>,
    pub(crate) v: Vec<CudaSlice<bf16>>,
    /// Where pages cross to and from the host.
    pub(crate) staging: Staging,
}

impl GpuKv {
    /// The block tables: add and release sequences here, exactly as on a CPU pool.
    pub fn tables(&self) -> &PagedKv {
        &self.tables
    }

    pub fn tables_mut(&mut self) -> &mut PagedKv {
        &mut self.tables
    }

    /// Bytes of K and V a step reads for the given cached token count (every layer), for the
    /// roofline.
    pub fn bytes_per_token(&self) -> usize {
        let l = self.tables.layout();
        l.n_layers * 2 * l.row() * 2
    }
}

/// Host inputs of one step, packed in device order (decode items, then prefill items).
#[derive(Debug)]
pub(crate) struct StepPlan {
    pub ids: Vec<u32>,
    pub positions: Vec<i32>,
    pub slots: Vec<i64>,
    /// Per batch item (batch order), its last row in the packed order.
    pub last_rows: Vec<i32>,
    pub n_dec: usize,
    pub dec_tables: BlockTables,
    pub dec_ctx: Vec<i32>,
    pub pre_tables: BlockTables,
    pub pre_ctx: Vec<i32>,
    pub pre_cu: Vec<i32>,
    pub pre_max_q: usize,
}

impl GpuModel {
    /// Uploads `model`'s weights to the GPU of `cuda`.
    pub fn new(model: Arc<Model>, cuda: CudaBackend) -> Result<GpuModel, EngineError> {
        let w = weights::upload(&cuda, &model)?;
        cuda.synchronize()?;
        Ok(GpuModel { model, cuda, w })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn model_arc(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn backend(&self) -> &CudaBackend {
        &self.cuda
    }

    /// Bytes of weights one step reads (the lm_head once, embedding rows not counted).
    pub fn weight_bytes(&self) -> usize {
        self.w.bytes
    }

    fn stream(&self) -> &Arc<CudaStream> {
        self.cuda.stream()
    }

    /// A device KV cache of `n_blocks` blocks of [`DEFAULT_BLOCK_SIZE`] tokens, zeroed.
    pub fn new_kv(&self, n_blocks: usize) -> Result<GpuKv, EngineError> {
        let layout = self.model.kv_layout(DEFAULT_BLOCK_SIZE);
        let elems = n_blocks * layout.block_size * layout.row();
        let mut k = Vec::with_capacity(layout.n_layers);
        let mut v = Vec::with_capacity(layout.n_layers);
        for _ in 0..layout.n_layers {
            k.push(self.stream().alloc_zeros::<bf16>(elems.max(1)).map_err(dev_err)?);
            v.push(self.stream().alloc_zeros::<bf16>(elems.max(1)).map_err(dev_err)?);
        }
        Ok(GpuKv { tables: PagedKv::tables_only(layout, n_blocks), k, v, staging: Staging::default() })
    }

    /// As [`Model::forward_batch`]: runs each item's tokens at positions `len(seq)..`, appends
    /// their KV, and returns each item's last-position logits (f32, widened from bf16).
    pub fn forward_batch(&self, kv: &mut GpuKv, batch: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>, EngineError> {
        let logits = self.step(kv, batch)?;
        let host = self.stream().clone_dtoh(&logits).map_err(dev_err)?;
        let vocab = self.model.config.vocab_size;
        Ok(host.chunks_exact(vocab).map(|r| r.iter().map(|x| x.to_f32()).collect()).collect())
    }

    /// [`GpuModel::forward_batch`] followed by a greedy choice on the device: only the token
    /// ids come back (what a decode loop needs, without copying logits).
    pub fn forward_batch_greedy(&self, kv: &mut GpuKv, batch: &[(SeqId, &[u32])]) -> Result<Vec<u32>, EngineError> {
        let logits = self.step(kv, batch)?;
        let mut out = self.stream().alloc_zeros::<i32>(batch.len()).map_err(dev_err)?;
        self.cuda.argmax(&logits.as_view(), self.model.config.vocab_size, &mut out.as_view_mut())?;
        let ids = self.stream().clone_dtoh(&out).map_err(dev_err)?;
        Ok(ids.into_iter().map(|t| t as u32).collect())
    }

    /// The executor's step: one forward, then each item's [`Want`] served on the device. Every
    /// row that wants a token is chosen by one sampling launch (greedy rows by the same rule
    /// inside it) with the host's seeded uniform numbers ([`crate::Draw`]), and only the ids
    /// come back; rows that want logits are copied back whole (f32, widened from bf16).
    pub fn step_outputs(&self, kv: &mut GpuKv, batch: &[StepItem<'_>]) -> Result<Vec<StepOut>, EngineError> {
        // Checked before any launch: the engine loop never asks (`Executor::embeds` is false).
        if batch.iter().any(|i| matches!(i.want, Want::Embed(_))) {
            return Err(EngineError::Unsupported("embeddings are computed by the CPU executor only".into()));
        }
        let items: Vec<(SeqId, &[u32])> = batch.iter().map(|i| (i.seq, i.tokens)).collect();
        let logits = self.step(kv, &items)?;
        let (s, vocab) = (self.stream(), self.model.config.vocab_size);
        let tokens = if batch.iter().any(|i| matches!(i.want, Want::Token(_))) {
            let rows = batch.len();
            let SamplingRows { temperature: temp, top_k, top_p, min_p, uniform: u } = sampling_rows(batch);
            let mut out = s.alloc_zeros::<i32>(rows).map_err(dev_err)?;
            if temp.iter().all(|&t| t <= 0.0) {
                self.cuda.argmax(&logits.as_view(), vocab, &mut out.as_view_mut())?;
            } else {
                let up_f = |x: &[f32]| s.clone_htod(x).map_err(dev_err);
                let (temp, top_p, min_p, u) = (up_f(&temp)?, up_f(&top_p)?, up_f(&min_p)?, up_f(&u)?);
                let top_k = s.clone_htod(&top_k).map_err(dev_err)?;
                let args = SampleArgs {
                    temperature: temp.as_view(),
                    top_k: top_k.as_view(),
                    top_p: top_p.as_view(),
                    min_p: min_p.as_view(),
                    uniform: u.as_view(),
                };
                self.cuda.sample(&logits.as_view(), vocab, &args, &mut out.as_view_mut())?;
            }
            s.clone_dtoh(&out).map_err(dev_err)?
        } else {
            Vec::new()
        };
        let host = if batch.iter().any(|i| matches!(i.want, Want::Logits)) {
            s.clone_dtoh(&logits).map_err(dev_err)?
        } else {
            Vec::new()
        };
        Ok(batch
            .iter()
            .enumerate()
            .map(|(r, item)| match item.want {
                Want::Token(_) => StepOut::Token(tokens[r] as u32),
                Want::Logits => StepOut::Logits(host[r * vocab..(r + 1) * vocab].iter().map(|x| x.to_f32()).collect()),
                Want::Embed(_) => unreachable!("refused above"),
            })
            .collect())
    }

    /// The step; returns bf16 logits `[batch.len(), vocab]` on the device, in batch order.
    fn step(&self, kv: &mut GpuKv, batch: &[(SeqId, &[u32])]) -> Result<CudaSlice<bf16>, EngineError> {
        let p = plan(&self.model, &mut kv.tables, batch)?;
        let c = &self.model.config;
        let (h, hd, inter, vocab) = (c.hidden_size, c.head_dim, c.intermediate_size, c.vocab_size);
        let shape = AttnShape { n_heads: c.num_attention_heads, n_kv_heads: c.num_key_value_heads, head_dim: hd };
        let (q_dim, kv_dim) = (shape.n_heads * hd, shape.n_kv_heads * hd);
        let eps = c.rms_norm_eps as f32;
        let bs = kv.tables.layout().block_size;
        let (s, cu) = (self.stream(), &self.cuda);
        let n = p.ids.len();
        let (n_dec, n_pre_rows) = (p.n_dec, n - p.n_dec);

        // A zero-byte device allocation is an error: an empty list (no decode or no prefill
        // items) goes up as one unused 0 and is never passed to a launcher.
        let htod_i32 = |v: &[i32]| s.clone_htod(if v.is_empty() { &[0][..] } else { v }).map_err(dev_err);
        let ids = s.clone_htod(&p.ids).map_err(dev_err)?;
        let positions = htod_i32(&p.positions)?;
        let slots = s.clone_htod(&p.slots).map_err(dev_err)?;
        let last_rows = htod_i32(&p.last_rows)?;
        let (dec_bt, dec_ctx) = (htod_i32(&p.dec_tables.flat)?, htod_i32(&p.dec_ctx)?);
        let (pre_bt, pre_ctx, pre_cu) = (htod_i32(&p.pre_tables.flat)?, htod_i32(&p.pre_ctx)?, htod_i32(&p.pre_cu)?);

        let buf = |len: usize| s.alloc_zeros::<bf16>(len.max(1)).map_err(dev_err);
        let (mut x, mut normed) = (buf(n * h)?, buf(n * h)?);
        let (mut q, mut k, mut v) = (buf(n * q_dim)?, buf(n * kv_dim)?, buf(n * kv_dim)?);
        let (mut attn, mut proj) = (buf(n * q_dim)?, buf(n * h)?);
        let (mut gate, mut up, mut act) = (buf(n * inter)?, buf(n * inter)?, buf(n * inter)?);

        let linear = |x: &CudaSlice<bf16>, l: &DeviceLinear, y: &mut CudaSlice<bf16>| {
            cu.matmul(
                &x.as_view(),
                &l.weight.as_view(),
                l.bias.as_ref().map(|b| b.as_view()).as_ref(),
                x.len() / n,
                &mut y.as_view_mut(),
            )
        };

        cu.embedding(&self.w.embed.as_view(), &ids.as_view(), h, &mut x.as_view_mut())?;
        for (li, lw) in self.w.layers.iter().enumerate() {
            if li == 0 {
                cu.rms_norm(&x.as_view(), &lw.input_norm.as_view(), eps, &mut normed.as_view_mut())?;
            } else {
                cu.fused_add_rms_norm(
                    &mut x.as_view_mut(),
                    &proj.as_view(),
                    &lw.input_norm.as_view(),
                    eps,
                    &mut normed.as_view_mut(),
                )?;
            }
            linear(&normed, &lw.q, &mut q)?;
            linear(&normed, &lw.k, &mut k)?;
            linear(&normed, &lw.v, &mut v)?;
            cu.rope(&mut q.as_view_mut(), shape.n_heads, &positions.as_view(), &self.w.inv_freq.as_view())?;
            cu.rope(&mut k.as_view_mut(), shape.n_kv_heads, &positions.as_view(), &self.w.inv_freq.as_view())?;
            cu.kv_write(
                &mut kv.k[li].as_view_mut(),
                &mut kv.v[li].as_view_mut(),
                &k.as_view(),
                &v.as_view(),
                &slots.as_view(),
                kv_dim,
            )?;
            let (mut attn_dec, mut attn_pre) = attn.split_at_mut(n_dec * q_dim);
            if n_dec > 0 {
                let views = KvViews {
                    k_cache: kv.k[li].as_view(),
                    v_cache: kv.v[li].as_view(),
                    block_tables: dec_bt.as_view(),
                    max_blocks: p.dec_tables.max_blocks,
                    context_lens: dec_ctx.as_view(),
                    block_size: bs,
                };
                cu.paged_attention_decode(&q.slice(..n_dec * q_dim), &views, shape, &mut attn_dec)?;
            }
            if n_pre_rows > 0 {
                let views = KvViews {
                    k_cache: kv.k[li].as_view(),
                    v_cache: kv.v[li].as_view(),
                    block_tables: pre_bt.as_view(),
                    max_blocks: p.pre_tables.max_blocks,
                    context_lens: pre_ctx.as_view(),
                    block_size: bs,
                };
                let q_pre = q.slice(n_dec * q_dim..n * q_dim);
                cu.prefill_attention(
                    &q_pre,
                    &pre_cu.as_view(),
                    p.pre_max_q,
                    &views,
                    shape,
                    &mut attn_pre.slice_mut(..n_pre_rows * q_dim),
                )?;
            }
            linear(&attn, &lw.o, &mut proj)?;
            cu.fused_add_rms_norm(
                &mut x.as_view_mut(),
                &proj.as_view(),
                &lw.post_norm.as_view(),
                eps,
                &mut normed.as_view_mut(),
            )?;
            linear(&normed, &lw.gate, &mut gate)?;
            linear(&normed, &lw.up, &mut up)?;
            cu.silu_mul(&gate.as_view(), &up.as_view(), &mut act.as_view_mut())?;
            linear(&act, &lw.down, &mut proj)?;
        }
        // Final norm over every row (fused with the last residual add), then only each item's
        // last row goes through the lm_head: rows gathered as one-row "blocks".
        cu.fused_add_rms_norm(
            &mut x.as_view_mut(),
            &proj.as_view(),
            &self.w.norm.as_view(),
            eps,
            &mut normed.as_view_mut(),
        )?;
        let mut last = buf(batch.len() * h)?;
        cu.kv_gather_blocks(&normed.as_view(), &last_rows.as_view(), h, &mut last.as_view_mut())?;
        let mut logits = buf(batch.len() * vocab)?;
        cu.matmul(&last.as_view(), &self.w.lm_head().as_view(), None, h, &mut logits.as_view_mut())?;
        Ok(logits)
    }
}

/// The sampling kernel's per-row inputs for a step (rules in `pdq_kernels::cpu::sample`).
#[derive(Debug, PartialEq)]
pub(crate) struct SamplingRows {
    pub temperature: Vec<f32>,
    pub top_k: Vec<i32>,
    pub top_p: Vec<f32>,
    pub min_p: Vec<f32>,
    pub uniform: Vec<f32>,
}

/// One row per batch item. A row that wants logits is sampled greedily and its id ignored (one
/// launch serves the whole batch); a greedy draw keeps temperature 0 whatever its filters say,
/// so the kernel's greedy rule is the host's ([`crate::Draw::is_greedy`]).
pub(crate) fn sampling_rows(batch: &[StepItem<'_>]) -> SamplingRows {
    let rows = batch.len();
    let mut r = SamplingRows {
        temperature: vec![0.0; rows],
        top_k: vec![0; rows],
        top_p: vec![1.0; rows],
        min_p: vec![0.0; rows],
        uniform: vec![0.0; rows],
    };
    for (i, item) in batch.iter().enumerate() {
        if let Want::Token(draw) = item.want {
            let f = draw.filters;
            if let Some(u) = draw.uniform {
                r.temperature[i] = f.temperature;
                r.uniform[i] = u as f32;
            }
            r.top_k[i] = i32::try_from(f.top_k).unwrap_or(i32::MAX);
            r.top_p[i] = f.top_p;
            r.min_p[i] = f.min_p;
        }
    }
    r
}

/// Validates the batch, grows each sequence, and packs the host inputs of one step. Pure host
/// work (tested without a GPU in `tests.rs`).
pub(crate) fn plan(model: &Model, kv: &mut PagedKv, batch: &[(SeqId, &[u32])]) -> Result<StepPlan, EngineError> {
    model.check_batch(kv, batch)?;
    let bs = kv.layout().block_size;
    let mut starts = Vec::with_capacity(batch.len());
    for &(id, tokens) in batch {
        let start = kv.len(id)?;
        starts.push(start);
        kv.grow(id, start + tokens.len())?;
    }
    // Decode items (one token after a non-empty context) first, prefill chunks after.
    let is_dec = |i: usize| batch[i].1.len() == 1 && starts[i] > 0;
    let order: Vec<usize> =
        (0..batch.len()).filter(|&i| is_dec(i)).chain((0..batch.len()).filter(|&i| !is_dec(i))).collect();
    let n_dec = order.iter().filter(|&&i| is_dec(i)).count();
    let mut p = StepPlan {
        ids: Vec::new(),
        positions: Vec::new(),
        slots: Vec::new(),
        last_rows: vec![0; batch.len()],
        n_dec,
        dec_tables: BlockTables::new(&[]),
        dec_ctx: Vec::new(),
        pre_tables: BlockTables::new(&[]),
        pre_ctx: Vec::new(),
        pre_cu: Vec::new(),
        pre_max_q: 0,
    };
    let (mut dec_t, mut pre_t, mut pre_lens) = (Vec::new(), Vec::new(), Vec::new());
    for &i in &order {
        let (id, tokens) = batch[i];
        let (start, n) = (starts[i], tokens.len());
        let table = kv.block_table(id)?.to_vec();
        p.ids.extend_from_slice(tokens);
        p.positions.extend((start..start + n).map(|x| x as i32));
        p.slots.extend(slot_mapping(&table, start, n, bs));
        p.last_rows[i] = (p.ids.len() - 1) as i32;
        let ctx = (start + n) as i32;
        if is_dec(i) {
            dec_t.push(table);
            p.dec_ctx.push(ctx);
        } else {
            pre_t.push(table);
            p.pre_ctx.push(ctx);
            pre_lens.push(n);
            p.pre_max_q = p.pre_max_q.max(n);
        }
    }
    p.dec_tables = BlockTables::new(&dec_t);
    p.pre_tables = BlockTables::new(&pre_t);
    p.pre_cu = cu_seqlens(&pre_lens);
    Ok(p)
}
