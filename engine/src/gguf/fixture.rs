//! Small random Llama (and Qwen2) checkpoints written twice: as a GGUF file with every matrix in one tensor
//! type (Q/K rows permuted as llama.cpp's converter stores them), and as an HF directory holding
//! the same weights dequantized to f32 in HF order. Tests compare the two loads; `scripts/golden.py`
//! runs transformers on the GGUF file.
//!
//! Invariant: the output depends only on the tensor type (a fixed seed per type, integer RNG),
//! so the committed goldens always describe the file the tests write. Dimensions are multiples
//! of 256, the K-quant block, so every type fits every matrix.

use std::path::Path;

use pdq_kernels::quant::random::{random_blocks, Lcg};
use pdq_kernels::QuantType;
use serde_json::{json, Value as Json};

use super::file::Value;
use super::write::GgufWriter;
use crate::error::EngineError;
use crate::tiny::{pretty, write_file, write_text_files, CHAT_TEMPLATE};

pub const HIDDEN: usize = 256;
pub const INTERMEDIATE: usize = 512;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;
pub const MAX_POSITIONS: usize = 512;
const ROPE_THETA: f32 = 10000.0;
const EPS: f32 = 1e-5;

/// llama.cpp's `permute`: HF row `(head, half, i)` is stored at GGUF row `(head, i, half)`.
fn permute_rows(bytes: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let (rb, hd) = (bytes.len() / rows, rows / heads);
    let mut out = vec![0u8; bytes.len()];
    for r in 0..rows {
        let (h, within) = (r / hd, r % hd);
        let (half, i) = (within / (hd / 2), within % (hd / 2));
        let g = h * hd + 2 * i + half;
        out[g * rb..(g + 1) * rb].copy_from_slice(&bytes[r * rb..(r + 1) * rb]);
    }
    out
}

/// GGUF `tokenizer.ggml.*` entries equivalent to the tiny byte-level BPE's tokenizer.json.
fn tokenizer_metadata(w: &mut GgufWriter, tokenizer_json: &str) -> Result<(), EngineError> {
    let bad = |m: &str| EngineError::Tokenizer(format!("tiny tokenizer.json: {m}"));
    let doc: Json = serde_json::from_str(tokenizer_json).map_err(|e| bad(&e.to_string()))?;
    let vocab = doc["model"]["vocab"].as_object().ok_or_else(|| bad("no model.vocab"))?;
    let added = doc["added_tokens"].as_array().ok_or_else(|| bad("no added_tokens"))?;
    let n = vocab.len() + added.len();
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n];
    for (tok, id) in vocab {
        tokens[id.as_u64().ok_or_else(|| bad("vocab id"))? as usize] = tok.clone();
    }
    for a in added {
        let id = a["id"].as_u64().ok_or_else(|| bad("added id"))? as usize;
        tokens[id] = a["content"].as_str().ok_or_else(|| bad("added content"))?.to_string();
        types[id] = 3;
    }
    let merges: Vec<Value> = doc["model"]["merges"]
        .as_array()
        .ok_or_else(|| bad("no merges"))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Value::String(s.clone()),
            _ => Value::String(format!("{} {}", m[0].as_str().unwrap_or(""), m[1].as_str().unwrap_or(""))),
        })
        .collect();
    let id = |t: &str| tokens.iter().position(|x| x == t).map(|i| i as u32).ok_or_else(|| bad(t));
    let (bos, eos) = (id(crate::tiny::BOS)?, id(crate::tiny::EOT)?);
    w.meta("tokenizer.ggml.model", Value::String("gpt2".into()))
        .meta("tokenizer.ggml.pre", Value::String("default".into()))
        .meta("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect()))
        .meta("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()))
        .meta("tokenizer.ggml.merges", Value::Array(merges))
        .meta("tokenizer.ggml.bos_token_id", Value::U32(bos))
        .meta("tokenizer.ggml.eos_token_id", Value::U32(eos))
        .meta("tokenizer.ggml.add_bos_token", Value::Bool(true))
        .meta("tokenizer.chat_template", Value::String(CHAT_TEMPLATE.into()));
    Ok(())
}

/// Writes `dir/model.gguf` (a Llama, every matrix in `dtype`, norms in F32) and `dir/hf/` (the
/// same model as an HF directory, f32 safetensors).
pub fn write(dtype: QuantType, dir: &Path) -> Result<(), EngineError> {
    write_arch(false, dtype, dir)
}

/// [`write()`] for a Qwen2: q/k/v biases (F32), and no Q/K permutation (llama.cpp stores Qwen2's
/// rows in HF order, since its RoPE there is the NeoX layout HF uses).
pub fn write_qwen2(dtype: QuantType, dir: &Path) -> Result<(), EngineError> {
    write_arch(true, dtype, dir)
}

fn write_arch(qwen2: bool, dtype: QuantType, dir: &Path) -> Result<(), EngineError> {
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).map_err(|e| EngineError::io(&hf, e))?;
    let text = write_text_files(&hf, MAX_POSITIONS)?;
    let vocab = text.vocab_size;
    let tok_json = std::fs::read_to_string(hf.join("tokenizer.json")).map_err(|e| EngineError::io(&hf, e))?;

    let mut w = GgufWriter::new();
    let a = if qwen2 { "qwen2" } else { "llama" };
    w.meta("general.architecture", Value::String(a.into()))
        .meta("general.name", Value::String(format!("pdq fixture {dtype}")))
        .meta(&format!("{a}.context_length"), Value::U32(MAX_POSITIONS as u32))
        .meta(&format!("{a}.embedding_length"), Value::U32(HIDDEN as u32))
        .meta(&format!("{a}.block_count"), Value::U32(LAYERS as u32))
        .meta(&format!("{a}.feed_forward_length"), Value::U32(INTERMEDIATE as u32))
        .meta(&format!("{a}.attention.head_count"), Value::U32(HEADS as u32))
        .meta(&format!("{a}.attention.head_count_kv"), Value::U32(KV_HEADS as u32))
        .meta(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(EPS))
        .meta(&format!("{a}.rope.freq_base"), Value::F32(ROPE_THETA))
        .meta(&format!("{a}.rope.dimension_count"), Value::U32(HEAD_DIM as u32))
        .meta(&format!("{a}.vocab_size"), Value::U32(vocab as u32));
    tokenizer_metadata(&mut w, &tok_json)?;

    let mut rng = Lcg(0x9e37 + dtype as u64);
    let mut hf_tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut matrix = |w: &mut GgufWriter, gguf: &str, hf: &str, rows: usize, cols: usize, heads: Option<usize>| {
        let bytes = random_blocks(dtype, rows * cols, &mut rng);
        let mut dense = vec![0f32; rows * cols];
        dtype.dequantize(&bytes, &mut dense);
        let stored = match heads.filter(|_| !qwen2) {
            Some(h) => permute_rows(&bytes, rows, h),
            None => bytes,
        };
        w.tensor(gguf, &[cols as u64, rows as u64], dtype, stored);
        hf_tensors.push((hf.to_string(), vec![rows, cols], dense));
    };
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    matrix(&mut w, "token_embd.weight", "model.embed_tokens.weight", vocab, HIDDEN, None);
    for l in 0..LAYERS {
        let (g, h) = (format!("blk.{l}"), format!("model.layers.{l}"));
        matrix(&mut w, &format!("{g}.attn_q.weight"), &format!("{h}.self_attn.q_proj.weight"), q, HIDDEN, Some(HEADS));
        matrix(
            &mut w,
            &format!("{g}.attn_k.weight"),
            &format!("{h}.self_attn.k_proj.weight"),
            kv,
            HIDDEN,
            Some(KV_HEADS),
        );
        matrix(&mut w, &format!("{g}.attn_v.weight"), &format!("{h}.self_attn.v_proj.weight"), kv, HIDDEN, None);
        matrix(&mut w, &format!("{g}.attn_output.weight"), &format!("{h}.self_attn.o_proj.weight"), HIDDEN, q, None);
        matrix(
            &mut w,
            &format!("{g}.ffn_gate.weight"),
            &format!("{h}.mlp.gate_proj.weight"),
            INTERMEDIATE,
            HIDDEN,
            None,
        );
        matrix(&mut w, &format!("{g}.ffn_up.weight"), &format!("{h}.mlp.up_proj.weight"), INTERMEDIATE, HIDDEN, None);
        matrix(
            &mut w,
            &format!("{g}.ffn_down.weight"),
            &format!("{h}.mlp.down_proj.weight"),
            HIDDEN,
            INTERMEDIATE,
            None,
        );
    }
    if qwen2 {
        for l in 0..LAYERS {
            for (g, h, n) in [("attn_q", "q_proj", q), ("attn_k", "k_proj", kv), ("attn_v", "v_proj", kv)] {
                let v: Vec<f32> = (0..n).map(|_| 0.2 * rng.next_f32()).collect();
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.tensor(&format!("blk.{l}.{g}.bias"), &[n as u64], QuantType::F32, bytes);
                hf_tensors.push((format!("model.layers.{l}.self_attn.{h}.bias"), vec![n], v));
            }
        }
    }
    let mut norms = Vec::new();
    for l in 0..LAYERS {
        norms.push((format!("blk.{l}.attn_norm.weight"), format!("model.layers.{l}.input_layernorm.weight")));
        norms.push((format!("blk.{l}.ffn_norm.weight"), format!("model.layers.{l}.post_attention_layernorm.weight")));
    }
    norms.push(("output_norm.weight".into(), "model.norm.weight".into()));
    for (g, h) in norms {
        let v: Vec<f32> = (0..HIDDEN).map(|_| 1.0 + 0.1 * rng.next_f32()).collect();
        w.tensor(&g, &[HIDDEN as u64], QuantType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect());
        hf_tensors.push((h, vec![HIDDEN], v));
    }
    w.write(&dir.join("model.gguf"))?;

    let (class, model_type) = if qwen2 { ("Qwen2ForCausalLM", "qwen2") } else { ("LlamaForCausalLM", "llama") };
    let config = json!({
        "architectures": [class], "model_type": model_type, "hidden_act": "silu", "use_sliding_window": false,
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "vocab_size": vocab, "max_position_embeddings": MAX_POSITIONS, "rms_norm_eps": EPS,
        "rope_theta": ROPE_THETA, "tie_word_embeddings": true, "bos_token_id": text.bos,
        "eos_token_id": text.eos, "torch_dtype": "float32",
    });
    write_file(&hf, "config.json", &pretty(&config))?;
    write_safetensors(&hf.join("model.safetensors"), &hf_tensors)
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<(), EngineError> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + data.len() * 4]}),
        );
        offset += data.len() * 4;
    }
    let mut header = serde_json::to_vec(&header).expect("JSON value serialises");
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    for (_, _, data) in tensors {
        out.extend(data.iter().flat_map(|x| x.to_le_bytes()));
    }
    std::fs::write(path, out).map_err(|e| EngineError::io(path, e))
}
