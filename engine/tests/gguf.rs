//! GGUF models against their f32 twins, one fixture per tensor type: the same random Llama
//! written as a quantized GGUF file (Q/K rows permuted as llama.cpp stores them) and as an HF
//! directory of the dequantized weights. Logits must agree bit for bit (the quantized matmul is
//! exact, and the Q/K permutation undone), greedy tokens and text handling too. Against
//! transformers itself, see `fidelity.rs`'s GGUF goldens.

mod common;

use std::path::{Path, PathBuf};

use pdq_engine::gguf::file::Value;
use pdq_engine::gguf::{fixture, write::GgufWriter};
use pdq_engine::Model;
use pdq_kernels::QuantType;
use serde_json::json;

fn write_fixture(t: QuantType) -> PathBuf {
    let dir = common::scratch(&format!("gguf-{t}"));
    fixture::write(t, &dir).expect("write fixture");
    dir
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b }) as u32
}

/// Prefill logits and 6 greedy tokens (with the logits of each step) through the KV cache.
fn trace(m: &Model, prompt: &[u32]) -> Vec<Vec<u32>> {
    let (mut kv, mut logits) = m.prefill(prompt).unwrap();
    let mut out = vec![bits(&logits)];
    for _ in 0..6 {
        let t = argmax(&logits);
        logits = m.decode_step(&mut kv, t).unwrap();
        out.push(vec![t]);
        out.push(bits(&logits));
    }
    out
}

#[test]
fn every_tensor_type_equals_its_dequantized_twin_bit_for_bit() {
    for t in QuantType::ALL {
        let dir = write_fixture(t);
        let gguf = Model::load(&dir.join("model.gguf")).unwrap_or_else(|e| panic!("{t}: {e}"));
        let twin = Model::load(&dir.join("hf")).unwrap();
        assert_eq!(gguf.config.num_key_value_heads, fixture::KV_HEADS);
        assert!(gguf.config.tie_word_embeddings, "no output.weight means tied");
        for prompt in [vec![5u32], vec![7, 300, 12, 99, 480, 3, 3, 41]] {
            assert!(trace(&gguf, &prompt) == trace(&twin, &prompt), "{t}: GGUF and twin differ on {prompt:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn qwen2_biases_and_unpermuted_rows_equal_the_twin() {
    let dir = common::scratch("gguf-qwen2");
    fixture::write_qwen2(QuantType::Q8_0, &dir).unwrap();
    let gguf = Model::load(&dir.join("model.gguf")).unwrap();
    let twin = Model::load(&dir.join("hf")).unwrap();
    assert_eq!(gguf.config.architecture, pdq_engine::Architecture::Qwen2);
    assert!(gguf.config.qkv_bias && !gguf.config.o_bias);
    let prompt = [9u32, 200, 31, 4];
    assert!(trace(&gguf, &prompt) == trace(&twin, &prompt), "Qwen2 GGUF and twin differ");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn text_comes_from_the_metadata() {
    let dir = write_fixture(QuantType::Q8_0);
    let gguf = Model::load(&dir.join("model.gguf")).unwrap();
    let twin = Model::load(&dir.join("hf")).unwrap();
    assert_eq!(gguf.name(), "model.gguf");
    // Found by its magic without the extension, as Ollama stores blobs.
    std::fs::copy(dir.join("model.gguf"), dir.join("blob")).unwrap();
    assert_eq!(Model::load(&dir.join("blob")).unwrap().encode("fox").unwrap(), gguf.encode("fox").unwrap());
    let text = "The quick brown fox, 42 times.";
    assert_eq!(gguf.encode(text).unwrap(), twin.encode(text).unwrap());
    let ids = gguf.encode(text).unwrap();
    assert_eq!(gguf.decode(&ids).unwrap(), twin.decode(&ids).unwrap());
    let messages = json!([{"role": "user", "content": "Hi there"}]);
    assert_eq!(gguf.render_chat(&messages).unwrap(), twin.render_chat(&messages).unwrap());
    let chat = gguf.encode_chat(&messages).unwrap();
    assert_eq!(chat, twin.encode_chat(&messages).unwrap());
    assert_eq!(chat.iter().filter(|&&t| Some(t) == gguf.config.bos_token_id).count(), 1, "exactly one BOS");
    assert!(gguf.eos_token_ids().iter().all(|e| twin.eos_token_ids().contains(e)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fixture file with one metadata value or tensor type replaced.
fn patched(dir: &Path, edit: impl Fn(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(dir.join("model.gguf")).unwrap();
    edit(&mut bytes);
    let path = dir.join("patched.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn replace_once(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from).expect("pattern in file");
    bytes[at..at + from.len()].copy_from_slice(to);
}

#[test]
fn unsupported_architecture_and_tensor_type_fail_with_one_line_naming_them() {
    let dir = write_fixture(QuantType::Q4_0);
    // Same length as "llama", so offsets stay valid.
    let arch = patched(&dir, |b| replace_once(b, b"\x05\0\0\0\0\0\0\0llama", b"\x05\0\0\0\0\0\0\0gemma"));
    let e = Model::load(&arch).err().expect("gemma is refused").to_string();
    assert!(e.contains("unsupported GGUF architecture `gemma`"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");

    // `token_embd.weight`'s info: name, 2 dims, then its type id (Q4_0 = 2) -> Q5_0 (6).
    let name = b"token_embd.weight";
    let ty = patched(&dir, |b| {
        let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 16;
        assert_eq!(b[at..at + 4], 2u32.to_le_bytes());
        b[at..at + 4].copy_from_slice(&6u32.to_le_bytes());
    });
    let e = Model::load(&ty).err().expect("Q5_0 is refused").to_string();
    assert!(e.contains("tensor `token_embd.weight` has type Q5_0, which pdq does not implement"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_files_are_refused_not_trusted() {
    let dir = common::scratch("gguf-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.gguf");
    std::fs::write(&path, b"GGML\x03\0\0\0").unwrap();
    let e = Model::load(&path).err().unwrap().to_string();
    assert!(e.contains("magic"), "{e}");

    // A header that announces more metadata than the file holds.
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()));
    let mut bytes = w.to_bytes();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = Model::load(&path).err().unwrap().to_string();
    assert!(e.contains("exceeds the file"), "{e}");

    // A tensor whose data would run past the end.
    let mut w = GgufWriter::new();
    w.tensor("t", &[32], QuantType::Q8_0, vec![0; 34]);
    let mut bytes = w.to_bytes();
    bytes.truncate(bytes.len() - 40);
    std::fs::write(&path, &bytes).unwrap();
    let e = pdq_engine::gguf::file::GgufFile::open(&path).err().unwrap().to_string();
    assert!(e.contains("past the end of the file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
