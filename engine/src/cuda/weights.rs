//! The model's weights on the device: every tensor uploaded once as bf16, in the same
//! `[out, in]` layout as the host copy (what `CudaBackend::matmul` reads). A tied lm_head shares
//! the embedding buffer.

use cudarc::driver::CudaSlice;
use half::bf16;
use pdq_kernels::CudaBackend;

use crate::error::EngineError;
use crate::model::Model;
use crate::weights::Linear;

pub(crate) struct DeviceLinear {
    pub weight: CudaSlice<bf16>,
    pub bias: Option<CudaSlice<bf16>>,
}

pub(crate) struct DeviceLayer {
    pub input_norm: CudaSlice<bf16>,
    pub q: DeviceLinear,
    pub k: DeviceLinear,
    pub v: DeviceLinear,
    pub o: DeviceLinear,
    pub post_norm: CudaSlice<bf16>,
    pub gate: DeviceLinear,
    pub up: DeviceLinear,
    pub down: DeviceLinear,
}

pub(crate) struct DeviceWeights {
    pub embed: CudaSlice<bf16>,
    pub layers: Vec<DeviceLayer>,
    pub norm: CudaSlice<bf16>,
    /// `None` when tied to `embed`.
    pub lm_head: Option<CudaSlice<bf16>>,
    /// The model's RoPE frequencies (Llama 3 scaling applied), f32 as the kernel reads them.
    pub inv_freq: CudaSlice<f32>,
    /// Bytes of every weight read by one step (lm_head once), for the roofline.
    pub bytes: usize,
}

impl DeviceWeights {
    pub fn lm_head(&self) -> &CudaSlice<bf16> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

fn up(cuda: &CudaBackend, x: &[f32]) -> Result<CudaSlice<bf16>, EngineError> {
    let host: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    cuda.stream().clone_htod(&host).map_err(|e| EngineError::Device(format!("weight upload: {e}")))
}

fn up_linear(cuda: &CudaBackend, l: &Linear) -> Result<DeviceLinear, EngineError> {
    Ok(DeviceLinear {
        weight: up(cuda, &l.weight.to_f32())?,
        bias: l.bias.as_deref().map(|b| up(cuda, b)).transpose()?,
    })
}

/// Uploads `model`'s weights (converted to bf16 on the host, one tensor at a time).
pub(crate) fn upload(cuda: &CudaBackend, model: &Model) -> Result<DeviceWeights, EngineError> {
    let w = &model.weights;
    let mut layers = Vec::with_capacity(w.layers.len());
    let mut bytes = 0usize;
    let lin = |l: &Linear| (l.weight.len() + l.bias.as_ref().map_or(0, Vec::len)) * 2;
    for l in &w.layers {
        bytes += (l.input_norm.len() + l.post_norm.len()) * 2;
        bytes += [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].into_iter().map(lin).sum::<usize>();
        layers.push(DeviceLayer {
            input_norm: up(cuda, &l.input_norm)?,
            q: up_linear(cuda, &l.q)?,
            k: up_linear(cuda, &l.k)?,
            v: up_linear(cuda, &l.v)?,
            o: up_linear(cuda, &l.o)?,
            post_norm: up(cuda, &l.post_norm)?,
            gate: up_linear(cuda, &l.gate)?,
            up: up_linear(cuda, &l.up)?,
            down: up_linear(cuda, &l.down)?,
        });
    }
    // A step reads the embedding rows of its tokens only, and the lm_head whole.
    bytes += (w.norm.len() + w.lm_head().len()) * 2;
    let inv_freq = cuda.stream().clone_htod(&model.inv_freq).map_err(|e| EngineError::Device(e.to_string()))?;
    Ok(DeviceWeights {
        embed: up(cuda, &w.embed.to_f32())?,
        layers,
        norm: up(cuda, &w.norm)?,
        lm_head: w.lm_head.as_ref().map(|x| up(cuda, &x.to_f32())).transpose()?,
        inv_freq,
        bytes,
    })
}
