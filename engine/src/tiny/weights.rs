//! The tiny model's weights: fixed-seed pseudo-normal values, identical on every machine.
//!
//! Values are Irwin-Hall sums of 12 uniforms (mean 0, std 1) built from integer RNG output with
//! IEEE additions only, so no libm function (whose last bit varies by platform) is involved.

use rand::RngCore;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::{HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS};
use crate::error::EngineError;

const SEED: u64 = 0x5eed;

fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let mut s = 0f32;
    for _ in 0..12 {
        s += (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0);
    }
    s - 6.0
}

/// (name, shape, std); std 0 means a norm weight of ones.
fn specs(vocab: usize) -> Vec<(String, Vec<usize>, f32)> {
    let (h, q, kv, i) = (HIDDEN, HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, INTERMEDIATE);
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, h], 0.1),
        ("model.norm.weight".to_string(), vec![h], 0.0),
        ("lm_head.weight".to_string(), vec![vocab, h], 0.1),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        v.push((format!("{p}.input_layernorm.weight"), vec![h], 0.0));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h], 0.0));
        v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h], 0.1));
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h], 0.1));
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h], 0.1));
        v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q], 0.05));
        v.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h], 0.1));
        v.push((format!("{p}.mlp.up_proj.weight"), vec![i, h], 0.1));
        v.push((format!("{p}.mlp.down_proj.weight"), vec![h, i], 0.05));
    }
    // Sorted so the RNG stream is assigned to tensors in a documented, stable order.
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub(crate) fn safetensors(vocab: usize) -> Result<Vec<u8>, EngineError> {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = specs(vocab)
        .into_iter()
        .map(|(name, shape, std)| {
            let n: usize = shape.iter().product();
            let mut bytes = Vec::with_capacity(n * 4);
            for _ in 0..n {
                let x = if std == 0.0 { 1.0 } else { normal(&mut rng) * std };
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            (name, shape, bytes)
        })
        .collect();
    let err = |e: safetensors::SafeTensorError| EngineError::Weights {
        path: "model.safetensors".into(),
        message: e.to_string(),
    };
    let views = buffers
        .iter()
        .map(|(name, shape, bytes)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(err)?)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    safetensors::serialize(views, None).map_err(err)
}
