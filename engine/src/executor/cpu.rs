//! The CPU executor: [`Model::forward_batch`] over a host [`PagedKv`], sampling on the host.

use std::sync::Arc;

use super::{Executor, StepItem, StepOut, Want};
use crate::error::EngineError;
use crate::forward::Head;
use crate::model::Model;
use crate::paged::{PagedKv, SeqId, DEFAULT_BLOCK_SIZE};

pub struct CpuExecutor {
    model: Arc<Model>,
    kv: PagedKv,
}

impl CpuExecutor {
    /// A pool of `pool_bytes / block bytes` f32 blocks (at least one), committed by the OS only
    /// as blocks are written, with the prefix cache on: the CPU forward is chunk-invariant, so a
    /// cache hit gives a cold run's bits.
    pub fn new(model: Arc<Model>, pool_bytes: usize) -> CpuExecutor {
        let block_bytes = model.kv_layout(DEFAULT_BLOCK_SIZE).block_floats() * 4;
        let mut kv = model.new_paged_kv((pool_bytes / block_bytes).max(1));
        kv.set_prefix_cache(true);
        CpuExecutor { model, kv }
    }
}

impl Executor for CpuExecutor {
    fn model(&self) -> &Arc<Model> {
        &self.model
    }

    fn device(&self) -> &'static str {
        "cpu"
    }

    fn pool(&self) -> &PagedKv {
        &self.kv
    }

    fn add_sequence(&mut self, max_len: usize) -> Result<SeqId, EngineError> {
        self.kv.add_sequence(max_len)
    }

    fn add_prompt(&mut self, prompt: &[u32], max_len: usize) -> Result<(SeqId, usize), EngineError> {
        self.kv.add_prompt(prompt, max_len)
    }

    fn register_prompt(&mut self, seq: SeqId, prompt: &[u32]) -> Result<(), EngineError> {
        self.kv.register_prompt(seq, prompt)
    }

    fn set_prefix_cache(&mut self, on: bool) -> bool {
        self.kv.set_prefix_cache(on);
        true
    }

    fn release(&mut self, seq: SeqId) {
        self.kv.release(seq)
    }

    fn fork(&mut self, src: SeqId, max_len: usize) -> Result<SeqId, EngineError> {
        self.kv.fork(src, max_len)
    }

    fn export(&mut self, seq: SeqId) -> Result<Vec<u8>, EngineError> {
        self.kv.export(seq)
    }

    fn import(&mut self, pages: &[u8], max_len: usize) -> Result<SeqId, EngineError> {
        self.kv.import(pages, max_len)
    }

    fn embeds(&self) -> bool {
        true
    }

    fn step(&mut self, batch: &[StepItem<'_>]) -> Result<Vec<StepOut>, EngineError> {
        let items: Vec<(SeqId, &[u32])> = batch.iter().map(|i| (i.seq, i.tokens)).collect();
        let heads: Vec<Head> = batch
            .iter()
            .map(|i| match i.want {
                Want::Embed(pooling) => Head::Pooled(pooling),
                Want::Logits | Want::Token(_) => Head::Logits,
            })
            .collect();
        let outs = self.model.forward_heads(&mut self.kv, &items, &heads)?;
        Ok(batch
            .iter()
            .zip(outs)
            .map(|(item, out)| match item.want {
                Want::Logits => StepOut::Logits(out),
                Want::Token(draw) => StepOut::Token(draw.pick(&out)),
                Want::Embed(_) => StepOut::Embedding(out),
            })
            .collect())
    }
}
