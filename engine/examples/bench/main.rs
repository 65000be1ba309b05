//! CPU throughput of the batched engine against the memory-bandwidth roofline, in one run:
//! `cargo run --release -p pdq-engine --example bench`.
//! With `-- --gguf FILE` it benchmarks that GGUF checkpoint against llama.cpp instead ([`gguf`]).
//!
//! Builds a random ~125M-parameter Llama (hidden 768, 12 layers, 12 heads, 4 KV heads,
//! intermediate 2048, vocab 32000, untied head) in a temp dir, measures the machine's copy
//! bandwidth, then decode tokens/s at batch 1 and 16 and prefill tokens/s. The roofline step time
//! is (weight bytes + KV bytes read per decode step) / copy bandwidth: a decode step must stream
//! every weight once, so no CPU implementation beats it at small batch.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use pdq_engine::{tiny, Model, SeqId};
use rayon::prelude::*;

mod gguf;

const HIDDEN: usize = 768;
const LAYERS: usize = 12;
const HEADS: usize = 12;
const KV_HEADS: usize = 4;
const INTERMEDIATE: usize = 2048;
const VOCAB: usize = 32000;
const PROMPT: usize = 128;
const DECODE_STEPS: usize = 32;

/// xorshift64*, so the benchmark needs no RNG crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Writes the model directory: the tiny model's tokenizer files, a 125M config and random BF16 weights.
fn write_model(dir: &Path) -> std::io::Result<usize> {
    tiny::write(dir).map_err(std::io::Error::other)?;
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
    for (k, v) in [
        ("hidden_size", HIDDEN),
        ("num_hidden_layers", LAYERS),
        ("num_attention_heads", HEADS),
        ("num_key_value_heads", KV_HEADS),
        ("head_dim", HIDDEN / HEADS),
        ("intermediate_size", INTERMEDIATE),
        ("vocab_size", VOCAB),
        ("max_position_embeddings", 4096),
    ] {
        config[k] = v.into();
    }
    config["tie_word_embeddings"] = false.into();
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;

    let kv = KV_HEADS * HIDDEN / HEADS;
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
        ("lm_head.weight".into(), vec![VOCAB, HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm", vec![HIDDEN]),
            ("post_attention_layernorm", vec![HIDDEN]),
            ("self_attn.q_proj", vec![HIDDEN, HIDDEN]),
            ("self_attn.k_proj", vec![kv, HIDDEN]),
            ("self_attn.v_proj", vec![kv, HIDDEN]),
            ("self_attn.o_proj", vec![HIDDEN, HIDDEN]),
            ("mlp.gate_proj", vec![INTERMEDIATE, HIDDEN]),
            ("mlp.up_proj", vec![INTERMEDIATE, HIDDEN]),
            ("mlp.down_proj", vec![HIDDEN, INTERMEDIATE]),
        ] {
            tensors.push((format!("{p}.{name}.weight"), shape));
        }
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in &tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&header)?;
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("model.safetensors"))?);
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(&h)?;
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let mut params = 0;
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        params += n;
        let norm = name.ends_with("norm.weight");
        let scale = 1.0 / (shape.last().copied().unwrap_or(1) as f32).sqrt();
        for _ in 0..n {
            let x = if norm { 1.0 } else { rng.next() * scale };
            f.write_all(&half::bf16::from_f32(x).to_le_bytes())?;
        }
    }
    f.flush()?;
    Ok(params)
}

/// Copy bandwidth (bytes read + written per second) of a 512 MiB buffer on all threads; best of 5.
fn copy_bandwidth() -> f64 {
    let n = 128 << 20;
    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    let chunk = n / rayon::current_num_threads() / 16;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    (2 * n * 4) as f64 / best
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, path] = &args[..] {
        if flag == "--gguf" {
            return gguf::run(Path::new(path));
        }
    }
    let dir = std::env::temp_dir().join(format!("pdq-bench-{}", std::process::id()));
    let t = Instant::now();
    let params = write_model(&dir).expect("writing the benchmark model");
    let model = Model::load(&dir).expect("loading the benchmark model");
    let _ = std::fs::remove_dir_all(&dir);
    println!("model: {:.1}M parameters, built in {:.1}s", params as f64 / 1e6, t.elapsed().as_secs_f64());
    let bw = copy_bandwidth();
    let threads = rayon::current_num_threads();
    println!("threads: {threads}; copy bandwidth: {:.1} GB/s", bw / 1e9);

    // Streamed per decode step: every matrix except the embedding table (one row of it).
    let streamed = (params - VOCAB * HIDDEN) * 4;
    let layout = model.kv_layout(pdq_engine::DEFAULT_BLOCK_SIZE);
    let kv_row_bytes = LAYERS * 2 * layout.row() * 4;

    println!();
    println!("| phase            | batch | tokens/s | step ms | roofline step ms | vs roofline |");
    println!("|------------------|------:|---------:|--------:|-----------------:|------------:|");
    for batch in [1usize, 16] {
        let mut kv = model.new_paged_kv(batch * (PROMPT + DECODE_STEPS + 1).div_ceil(16) + 8);
        let seqs: Vec<SeqId> = (0..batch).map(|_| kv.add_sequence(PROMPT + DECODE_STEPS + 1).unwrap()).collect();
        let prompts: Vec<Vec<u32>> =
            (0..batch).map(|b| (0..PROMPT).map(|i| ((b * 7919 + i * 31) % 500 + 3) as u32).collect()).collect();
        let items: Vec<(SeqId, &[u32])> = seqs.iter().zip(&prompts).map(|(&s, p)| (s, &p[..])).collect();
        let t = Instant::now();
        let mut logits = model.forward_batch(&mut kv, &items).unwrap();
        let prefill_s = t.elapsed().as_secs_f64();
        if batch == 16 {
            let n = batch * PROMPT;
            let flops = 2.0 * (params - VOCAB * HIDDEN) as f64 * n as f64;
            println!(
                "| prefill          | {batch:>5} | {:>8.0} | {:>7.1} | {:>16} | {:>8.1} GFLOP/s |",
                n as f64 / prefill_s,
                prefill_s * 1e3,
                "-",
                flops / prefill_s / 1e9
            );
        }
        let t = Instant::now();
        for _ in 0..DECODE_STEPS {
            let next: Vec<[u32; 1]> = logits
                .iter()
                .map(|l| [l.iter().enumerate().fold(0, |b, (i, &x)| if x > l[b] { i } else { b }) as u32])
                .collect();
            let items: Vec<(SeqId, &[u32])> = seqs.iter().zip(&next).map(|(&s, t)| (s, &t[..])).collect();
            logits = model.forward_batch(&mut kv, &items).unwrap();
        }
        let step = t.elapsed().as_secs_f64() / DECODE_STEPS as f64;
        let mean_len = PROMPT + DECODE_STEPS / 2;
        let roofline = (streamed + batch * mean_len * kv_row_bytes) as f64 / bw;
        println!(
            "| decode           | {batch:>5} | {:>8.1} | {:>7.1} | {:>16.1} | {:>10.2}x |",
            batch as f64 / step,
            step * 1e3,
            roofline * 1e3,
            roofline / step
        );
    }
    println!();
    println!("roofline: {:.0} MB of weights + KV per step at the copy bandwidth; 'vs roofline' = roofline step / measured step", streamed as f64 / 1e6);
}
