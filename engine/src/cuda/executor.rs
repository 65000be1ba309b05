//! The GPU executor: [`GpuModel`]'s step over a device [`GpuKv`], sampling on the device, pages
//! staged through pinned host memory. The model (weights on the device) is shared by every
//! executor of the process; each executor has its own pool.

use std::sync::Arc;

use super::forward::{GpuKv, GpuModel};
use crate::error::EngineError;
use crate::executor::{Executor, StepItem, StepOut};
use crate::model::Model;
use crate::paged::{PagedKv, SeqId, DEFAULT_BLOCK_SIZE};

pub struct GpuExecutor {
    gpu: Arc<GpuModel>,
    kv: GpuKv,
}

impl GpuExecutor {
    /// Makes the device's context current on the calling thread. The executor is built on one
    /// thread and driven from the engine's; cudarc binds before its own copies and launches,
    /// but cuBLAS calls run on whatever context is current.
    fn bind(&self) -> Result<(), EngineError> {
        self.gpu.backend().context().bind_to_thread().map_err(super::dev_err)
    }

    /// A device pool of `pool_bytes / block bytes` bf16 blocks (at least one), allocated and
    /// zeroed now, so a pool that does not fit fails at start, not mid-batch.
    pub fn new(gpu: Arc<GpuModel>, pool_bytes: usize) -> Result<GpuExecutor, EngineError> {
        let block_bytes = gpu.model().kv_layout(DEFAULT_BLOCK_SIZE).block_floats() * 2;
        let kv = gpu.new_kv((pool_bytes / block_bytes).max(1))?;
        Ok(GpuExecutor { gpu, kv })
    }
}

impl Executor for GpuExecutor {
    fn model(&self) -> &Arc<Model> {
        self.gpu.model_arc()
    }

    fn device(&self) -> &'static str {
        "cuda"
    }

    fn pool(&self) -> &PagedKv {
        self.kv.tables()
    }

    fn add_sequence(&mut self, max_len: usize) -> Result<SeqId, EngineError> {
        self.kv.tables_mut().add_sequence(max_len)
    }

    fn release(&mut self, seq: SeqId) {
        self.kv.tables_mut().release(seq)
    }

    fn fork(&mut self, src: SeqId, max_len: usize) -> Result<SeqId, EngineError> {
        self.bind()?;
        let (id, copy) = self.kv.tables_mut().fork_tables(src, max_len)?;
        if let Some((from, to)) = copy {
            if let Err(e) = self.gpu.copy_block(&mut self.kv, from, to) {
                self.kv.tables_mut().release(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    fn export(&mut self, seq: SeqId) -> Result<Vec<u8>, EngineError> {
        self.bind()?;
        self.gpu.export_pages(&mut self.kv, seq)
    }

    fn import(&mut self, pages: &[u8], max_len: usize) -> Result<SeqId, EngineError> {
        self.bind()?;
        self.gpu.import_pages(&mut self.kv, pages, max_len)
    }

    fn step(&mut self, batch: &[StepItem<'_>]) -> Result<Vec<StepOut>, EngineError> {
        self.bind()?;
        self.gpu.step_outputs(&mut self.kv, batch)
    }
}
