//! Loading Llama weights from safetensors into `f32` host buffers.
//!
//! Every tensor is checked against the shape `config.json` implies before the model exists, so
//! a loaded model never indexes out of bounds. `f16`/`bf16` checkpoints are widened with `half`.
//! A single `model.safetensors` or a sharded `model.safetensors.index.json` is accepted.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::config::ModelConfig;
use crate::error::{read_file, EngineError};
use crate::matrix::Matrix;
use pdq_kernels::Activations;

/// One decoder layer; `[out, in]` matrices in HF `nn.Linear` layout.
pub(crate) struct LayerWeights {
    pub input_norm: Vec<f32>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub post_norm: Vec<f32>,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

pub(crate) struct Linear {
    pub weight: Matrix,
    pub bias: Option<Vec<f32>>,
}

pub(crate) struct Weights {
    pub embed: Matrix,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// `None` when tied to `embed` (`tie_word_embeddings`), which avoids a second vocab-sized copy.
    pub lm_head: Option<Matrix>,
    /// How quantized matmuls treat activations ([`crate::Model::with_activations`]).
    pub activations: Activations,
}

impl Weights {
    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes the matrices occupy in memory (norms and biases left out), for the load log.
    pub fn stored_bytes(&self) -> usize {
        let layer = |l: &LayerWeights| {
            [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].iter().map(|m| m.weight.stored_bytes()).sum::<usize>()
        };
        self.embed.stored_bytes()
            + self.lm_head.as_ref().map_or(0, Matrix::stored_bytes)
            + self.layers.iter().map(layer).sum::<usize>()
    }
}

/// The safetensors files of a model directory, in a stable order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(EngineError::MissingFile { path: single });
    }
    let bad = |message: String| EngineError::Config { path: index.clone(), message };
    let json: serde_json::Value = serde_json::from_slice(&read_file(&index)?).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("`weight_map` must be an object".into()))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("`weight_map.{name}` must be a string")))?;
        files.insert(file.to_string());
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
    file: PathBuf,
}

fn to_f32(path: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, EngineError> {
    let v = match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(EngineError::Weights {
                path: path.to_path_buf(),
                message: format!("tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 are supported"),
            })
        }
    };
    Ok(v)
}

/// Reads the tensors named in `wanted` from every weight file; absent names are simply missing
/// from the result (the caller decides which absences are errors).
fn read_tensors(dir: &Path, wanted: &BTreeSet<String>) -> Result<HashMap<String, Tensor>, EngineError> {
    let mut out = HashMap::new();
    for path in weight_files(dir)? {
        let bytes = read_file(&path)?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| EngineError::Weights { path: path.clone(), message: e.to_string() })?;
        for name in st.names() {
            let name: &str = name;
            if !wanted.contains(name) {
                continue;
            }
            let view =
                st.tensor(name).map_err(|e| EngineError::Weights { path: path.clone(), message: e.to_string() })?;
            let data = to_f32(&path, name, view.dtype(), view.data())?;
            out.insert(name.to_string(), Tensor { shape: view.shape().to_vec(), data, file: path.clone() });
        }
    }
    Ok(out)
}

/// Takes tensor `name` and checks it has `shape`.
fn take(t: &mut HashMap<String, Tensor>, dir: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
    let tensor = t.remove(name).ok_or_else(|| EngineError::Weights {
        path: dir.to_path_buf(),
        message: format!("tensor `{name}` is missing"),
    })?;
    if tensor.shape != shape {
        return Err(EngineError::Weights {
            path: tensor.file,
            message: format!("tensor `{name}` has shape {:?}, config.json implies {shape:?}", tensor.shape),
        });
    }
    Ok(tensor.data)
}

pub(crate) fn load(dir: &Path, c: &ModelConfig) -> Result<Weights, EngineError> {
    let (h, hd, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let mut wanted = BTreeSet::new();
    wanted.insert("model.embed_tokens.weight".to_string());
    wanted.insert("model.norm.weight".to_string());
    if !c.tie_word_embeddings {
        wanted.insert("lm_head.weight".to_string());
    }
    let attn = ["q_proj", "k_proj", "v_proj", "o_proj"];
    let mlp = ["gate_proj", "up_proj", "down_proj"];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        wanted.insert(format!("{p}.input_layernorm.weight"));
        wanted.insert(format!("{p}.post_attention_layernorm.weight"));
        for m in attn {
            wanted.insert(format!("{p}.self_attn.{m}.weight"));
            if (m == "o_proj" && c.o_bias) || (m != "o_proj" && c.qkv_bias) {
                wanted.insert(format!("{p}.self_attn.{m}.bias"));
            }
        }
        for m in mlp {
            wanted.insert(format!("{p}.mlp.{m}.weight"));
            if c.mlp_bias {
                wanted.insert(format!("{p}.mlp.{m}.bias"));
            }
        }
    }
    let mut t = read_tensors(dir, &wanted)?;
    let linear = |t: &mut HashMap<String, Tensor>, name: String, out: usize, inp: usize, bias: bool| {
        let weight = Matrix::dense(take(t, dir, &format!("{name}.weight"), &[out, inp])?, inp);
        let bias = if bias { Some(take(t, dir, &format!("{name}.bias"), &[out])?) } else { None };
        Ok::<_, EngineError>(Linear { weight, bias })
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let (ab, ob, mb) = (c.qkv_bias, c.o_bias, c.mlp_bias);
        layers.push(LayerWeights {
            input_norm: take(&mut t, dir, &format!("{p}.input_layernorm.weight"), &[h])?,
            q: linear(&mut t, format!("{p}.self_attn.q_proj"), q_out, h, ab)?,
            k: linear(&mut t, format!("{p}.self_attn.k_proj"), kv_out, h, ab)?,
            v: linear(&mut t, format!("{p}.self_attn.v_proj"), kv_out, h, ab)?,
            o: linear(&mut t, format!("{p}.self_attn.o_proj"), h, q_out, ob)?,
            post_norm: take(&mut t, dir, &format!("{p}.post_attention_layernorm.weight"), &[h])?,
            gate: linear(&mut t, format!("{p}.mlp.gate_proj"), i, h, mb)?,
            up: linear(&mut t, format!("{p}.mlp.up_proj"), i, h, mb)?,
            down: linear(&mut t, format!("{p}.mlp.down_proj"), h, i, mb)?,
        });
    }
    let embed = Matrix::dense(take(&mut t, dir, "model.embed_tokens.weight", &[c.vocab_size, h])?, h);
    let norm = take(&mut t, dir, "model.norm.weight", &[h])?;
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(Matrix::dense(take(&mut t, dir, "lm_head.weight", &[c.vocab_size, h])?, h))
    };
    Ok(Weights { embed, layers, norm, lm_head, activations: Activations::Exact })
}
