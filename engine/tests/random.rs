//! Random-weight checkpoints in real shapes: the presets' numbers, and that what is written
//! loads, runs and is reproducible. Full-size presets are GBs, so tests write copies with
//! fewer layers and a smaller vocabulary; the writer does not depend on the sizes.

mod common;

use pdq_engine::random::{self, Preset};
use pdq_engine::{Architecture, Model};

fn small(name: &str) -> Preset {
    Preset { num_hidden_layers: 1, vocab_size: 1024, ..random::preset(name).unwrap().clone() }
}

#[test]
fn presets_have_the_published_shapes() {
    let names: Vec<&str> = random::presets().iter().map(|p| p.name).collect();
    assert_eq!(names, ["llama-3.2-1b", "qwen2.5-0.5b", "llama-100m"]);
    // Parameter counts of the released checkpoints (tied embeddings counted once).
    assert_eq!(random::preset("llama-3.2-1b").unwrap().num_parameters(), 1_235_814_400);
    assert_eq!(random::preset("qwen2.5-0.5b").unwrap().num_parameters(), 494_032_768);
    let p = random::preset("llama-100m").unwrap();
    assert!((100_000_000..150_000_000).contains(&p.num_parameters()), "{}", p.num_parameters());
    let err = random::preset("gpt-5").unwrap_err();
    assert_eq!(err.error_type(), "invalid_input");
    assert!(err.to_string().contains("llama-3.2-1b"), "{err}");
}

#[test]
fn written_presets_load_and_run() {
    for name in ["llama-3.2-1b", "qwen2.5-0.5b", "llama-100m"] {
        let preset = small(name);
        let dir = common::scratch(&format!("random-{name}"));
        random::write_preset(&preset, &dir, 7).unwrap();
        let m = Model::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let c = &m.config;
        assert_eq!(c.architecture, preset.architecture);
        assert_eq!(
            (c.hidden_size, c.num_attention_heads, c.num_key_value_heads),
            (preset.hidden_size, preset.num_attention_heads, preset.num_key_value_heads)
        );
        assert_eq!((c.head_dim, c.intermediate_size, c.vocab_size), (preset.head_dim, preset.intermediate_size, 1024));
        assert_eq!(c.tie_word_embeddings, preset.tie_word_embeddings);
        assert_eq!(c.qkv_bias, preset.architecture == Architecture::Qwen2);
        assert_eq!(c.rope_scaling.is_some(), preset.llama3_rope.is_some());
        let ids = m.encode("Hello there").unwrap();
        let (_, logits) = m.prefill(&ids).unwrap();
        assert_eq!(logits.len(), 1024);
        assert!(logits.iter().all(|x| x.is_finite()), "{name}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_weights() {
    let preset = Preset {
        hidden_size: 64,
        head_dim: 16,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        intermediate_size: 96,
        ..small("qwen2.5-0.5b")
    };
    let read = |seed: u64, tag: &str| {
        let dir = common::scratch(tag);
        random::write_preset(&preset, &dir, seed).unwrap();
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        assert!(!dir.join("model.safetensors.partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
        bytes
    };
    let a = read(1, "seed-a");
    assert_eq!(a, read(1, "seed-b"));
    assert_ne!(a, read(2, "seed-c"));
}

#[test]
fn vocab_below_the_tokenizer_is_rejected() {
    let preset = Preset { vocab_size: 100, ..small("llama-100m") };
    let dir = common::scratch("random-vocab");
    let err = random::write_preset(&preset, &dir, 0).unwrap_err();
    assert!(err.to_string().contains("`vocab_size` 100"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
