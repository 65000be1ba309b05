//! The batched forward pass: any mix of prefill chunks and decode tokens from many sequences in
//! one pass over the weights, with each sequence's KV in a shared [`PagedKv`].
//!
//! Invariant (batch invariance): a token row's result depends only on its own sequence. Every
//! linear layer is one `[rows, in] x W^T` matmul whose rows are computed with a fixed summation
//! order regardless of the row count; norms, RoPE and activations are row-wise; attention runs
//! per row over that row's own block table, causally (rows `0..=position`). So a request gets the
//! same bits alone, in a batch of any size, prefilled with others or alone, and prefill logits
//! equal incremental decode logits.

use pdq_kernels::AttnShape;
use rayon::prelude::*;

use crate::error::EngineError;
use crate::model::Model;
use crate::paged::{KvLayout, PagedKv, SeqId, DEFAULT_BLOCK_SIZE};
use crate::pooling::Pooling;
use crate::weights::Linear;

impl Model {
    /// The KV geometry of this model with `block_size`-token blocks.
    pub fn kv_layout(&self, block_size: usize) -> KvLayout {
        let c = &self.config;
        KvLayout { n_layers: c.num_hidden_layers, n_kv_heads: c.num_key_value_heads, head_dim: c.head_dim, block_size }
    }

    /// A shared pool of `n_blocks` blocks of [`DEFAULT_BLOCK_SIZE`] tokens for this model.
    pub fn new_paged_kv(&self, n_blocks: usize) -> PagedKv {
        PagedKv::new(self.kv_layout(DEFAULT_BLOCK_SIZE), n_blocks)
    }

    /// Checks `tokens` may run after `start` cached tokens (ids in range, context not exceeded).
    pub fn check_tokens(&self, start: usize, tokens: &[u32]) -> Result<(), EngineError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(EngineError::InvalidInput("no tokens to run".into()));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(EngineError::InvalidInput(format!("token id {t} >= `vocab_size` {}", c.vocab_size)));
        }
        let len = start + tokens.len();
        if len > self.max_context() {
            return Err(EngineError::ContextLength { len, max: self.max_context() });
        }
        Ok(())
    }

    /// Validates the whole batch before touching `kv`, so a rejected call changes nothing.
    pub(crate) fn check_batch(&self, kv: &PagedKv, batch: &[(SeqId, &[u32])]) -> Result<(), EngineError> {
        let (want, have) = (self.kv_layout(kv.layout().block_size), *kv.layout());
        if want != have {
            return Err(EngineError::KvCache(format!("pool layout {have:?} does not fit this model ({want:?})")));
        }
        if batch.is_empty() {
            return Err(EngineError::InvalidInput("empty batch".into()));
        }
        let mut grow = Vec::with_capacity(batch.len());
        for (i, &(id, tokens)) in batch.iter().enumerate() {
            if batch[..i].iter().any(|&(other, _)| other == id) {
                return Err(EngineError::InvalidInput(format!("sequence {id:?} appears twice in one batch")));
            }
            let start = kv.len(id)?;
            self.check_tokens(start, tokens)?;
            grow.push((id, start + tokens.len()));
        }
        let extra = kv.extra_blocks(&grow)?;
        if extra > kv.available_blocks() {
            return Err(EngineError::KvCapacity { needed: extra, available: kv.available_blocks() });
        }
        Ok(())
    }

    fn linear(&self, x: &[f32], l: &Linear, k: usize, out: &mut Vec<f32>) {
        self.linears(x, &[l], k, &mut [out]);
    }

    /// Several linear layers on the same input (Q, K, V; gate, up), grouped into one matmul call.
    fn linears(&self, x: &[f32], ls: &[&Linear], k: usize, outs: &mut [&mut Vec<f32>]) {
        for (l, out) in ls.iter().zip(outs.iter_mut()) {
            debug_assert_eq!(l.weight.cols(), k);
            out.clear();
            out.resize(x.len() / k * l.weight.rows(), 0.0);
        }
        let ms: Vec<_> = ls.iter().map(|l| (&l.weight, l.bias.as_deref())).collect();
        let mut ys: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
        crate::matrix::Matrix::matmul_many(&self.backend, x, &ms, &mut ys, self.weights.activations);
    }

    /// Runs each item's tokens at positions `kv.len(seq)..`, appends their KV, and returns the
    /// logits of each item's last token, in batch order.
    pub fn forward_batch(&self, kv: &mut PagedKv, batch: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.forward_heads(kv, batch, &vec![Head::Logits; batch.len()])
    }

    /// [`Model::forward_batch`] where each item says what it takes from the last layer
    /// (`heads[i]` for `batch[i]`): its last token's logits, or its rows pooled into an
    /// embedding. An item pooled over more than its last row must start at position 0.
    pub(crate) fn forward_heads(
        &self,
        kv: &mut PagedKv,
        batch: &[(SeqId, &[u32])],
        heads: &[Head],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        assert_eq!(batch.len(), heads.len(), "one head per batch item");
        for (&(id, _), head) in batch.iter().zip(heads) {
            if matches!(head, Head::Pooled(Pooling::Mean | Pooling::Cls)) && kv.len(id)? != 0 {
                return Err(EngineError::InvalidInput(format!(
                    "sequence {id:?} pools every row of its input but holds cached tokens"
                )));
            }
        }
        // Every matmul forks over rayon's pool. Forked from a thread outside the pool (the
        // engine loop's, a bench's main), each fork is a hand-off: the caller sleeps while pool
        // threads wake, ~200 times per decode token. Run on a pool thread, a fork is a local
        // push that the caller works on too, while the other thread steals.
        if rayon::current_thread_index().is_some() {
            return self.forward_on_pool(kv, batch, heads);
        }
        rayon::scope(|_| self.forward_on_pool(kv, batch, heads))
    }

    fn forward_on_pool(
        &self,
        kv: &mut PagedKv,
        batch: &[(SeqId, &[u32])],
        heads: &[Head],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        if !kv.has_host_data() {
            return Err(EngineError::KvCache(
                "the CPU forward needs a pool with host rows, got a tables-only pool".into(),
            ));
        }
        self.check_batch(kv, batch)?;
        let c = &self.config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let shape = AttnShape { n_heads: c.num_attention_heads, n_kv_heads: c.num_key_value_heads, head_dim: hd };
        let (q_dim, kv_dim) = (shape.n_heads * hd, shape.n_kv_heads * hd);
        let eps = c.rms_norm_eps as f32;
        let b = &self.backend;

        // One entry per token row: (batch item, position).
        let mut rows = Vec::new();
        // Each item's rows, `first..=last`.
        let mut first_rows = Vec::with_capacity(batch.len());
        let mut last_rows = Vec::with_capacity(batch.len());
        for (item, &(id, tokens)) in batch.iter().enumerate() {
            let start = kv.len(id)?;
            first_rows.push(rows.len());
            rows.extend((start..start + tokens.len()).map(|p| (item, p)));
            last_rows.push(rows.len() - 1);
            kv.grow(id, start + tokens.len())?;
        }
        let n = rows.len();
        let positions: Vec<usize> = rows.iter().map(|&(_, p)| p).collect();
        let mut x = vec![0f32; n * h];
        let ids = batch.iter().flat_map(|&(_, tokens)| tokens);
        for (row, &t) in x.chunks_exact_mut(h).zip(ids) {
            self.weights.embed.row_into(t as usize, row);
        }
        let mut normed = vec![0f32; n * h];
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        let (mut attn, mut proj) = (vec![0f32; n * q_dim], Vec::new());
        let (mut gate, mut up, mut act) = (Vec::new(), Vec::new(), Vec::new());
        for (li, lw) in self.weights.layers.iter().enumerate() {
            b.rms_norm(&x, &lw.input_norm, eps, &mut normed);
            self.linears(&normed, &[&lw.q, &lw.k, &lw.v], h, &mut [&mut q, &mut k, &mut v]);
            b.rope(&mut q, shape.n_heads, &positions, &self.inv_freq);
            b.rope(&mut k, shape.n_kv_heads, &positions, &self.inv_freq);
            for (r, &(item, p)) in rows.iter().enumerate() {
                let (kr, vr) = kv.row_mut(batch[item].0, li, p);
                kr.copy_from_slice(&k[r * kv_dim..(r + 1) * kv_dim]);
                vr.copy_from_slice(&v[r * kv_dim..(r + 1) * kv_dim]);
            }
            let kv_ref = &*kv;
            let blocks: Vec<_> = batch.iter().map(|&(id, _)| kv_ref.layer_blocks(id, li)).collect();
            let bs = kv_ref.layout().block_size;
            attn.par_chunks_mut(q_dim).zip(q.par_chunks(q_dim)).zip(rows.par_iter()).for_each(
                |((out, qr), &(item, p))| {
                    // Causal: the token at position p sees rows 0..=p of its own sequence.
                    b.attention_paged(qr, &blocks[item], p + 1, bs, shape, out);
                },
            );
            self.linear(&attn, &lw.o, q_dim, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, p)| *a += p);

            b.rms_norm(&x, &lw.post_norm, eps, &mut normed);
            self.linears(&normed, &[&lw.gate, &lw.up], h, &mut [&mut gate, &mut up]);
            act.resize(gate.len(), 0.0);
            b.silu_mul(&gate, &up, &mut act);
            self.linear(&act, &lw.down, c.intermediate_size, &mut proj);
            x.iter_mut().zip(&proj).for_each(|(a, p)| *a += p);
        }

        // Only each item's last position needs logits: those rows alone go through the lm_head.
        let wants_logits: Vec<usize> = (0..batch.len()).filter(|&i| heads[i] == Head::Logits).collect();
        let mut last = Vec::with_capacity(wants_logits.len() * h);
        for &i in &wants_logits {
            let r = last_rows[i];
            last.extend_from_slice(&x[r * h..(r + 1) * h]);
        }
        let mut last_normed = vec![0f32; last.len()];
        b.rms_norm(&last, &self.weights.norm, eps, &mut last_normed);
        let mut logits = vec![0f32; wants_logits.len() * c.vocab_size];
        if !wants_logits.is_empty() {
            self.weights.lm_head().matmul(b, &last_normed, None, &mut logits, self.weights.activations);
        }
        let mut logits = logits.chunks_exact(c.vocab_size).map(<[f32]>::to_vec);
        Ok(heads
            .iter()
            .enumerate()
            .map(|(i, head)| match head {
                Head::Logits => logits.next().expect("one logits row per item that wants one"),
                // The rows the lm_head would read (after the final norm), pooled.
                Head::Pooled(pooling) => {
                    let first = if *pooling == Pooling::Last { last_rows[i] } else { first_rows[i] };
                    let rows = &x[first * h..(last_rows[i] + 1) * h];
                    let mut normed = vec![0f32; rows.len()];
                    b.rms_norm(rows, &self.weights.norm, eps, &mut normed);
                    pooling.pool(&normed, h)
                }
            })
            .collect())
    }
}

/// What a batch item takes from the last layer ([`Model::forward_heads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    Logits,
    Pooled(Pooling),
}
