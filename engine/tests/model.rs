//! Loading, text handling, the forward pass and the KV cache of the tiny model.

mod common;

use common::model;
use pdq_engine::{KvCache, Model};
use serde_json::json;

#[test]
fn model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Model>();
    check::<KvCache>();
}

#[test]
fn load_reads_config_and_special_tokens() {
    let m = model();
    let c = &m.config;
    assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads), (64, 2, 4, 2));
    assert_eq!((c.head_dim, c.intermediate_size), (16, 172));
    assert_eq!(c.vocab_size, m.tokenizer_vocab_size());
    assert_eq!(c.vocab_size, 512);
    assert_eq!(m.max_context(), 1024);
    assert_eq!(m.eos_token_ids().len(), 2);
    assert!(c.bos_token_id.is_some());
}

#[test]
fn encode_decode_round_trip_with_single_bos() {
    let m = model();
    let bos = m.config.bos_token_id.unwrap();
    for text in ["Hello! How are you today?", "The river bends twice.\nNumbers: 7, 12, 100.", "naïve café ✓"] {
        let ids = m.encode(text).unwrap();
        assert_eq!(ids[0], bos);
        assert_ne!(ids[1], bos);
        assert_eq!(m.decode(&ids).unwrap(), text);
    }
    // Text that already starts with the BOS string does not get a second BOS.
    let ids = m.encode("<|begin_of_text|>Hello").unwrap();
    assert_eq!(ids[0], bos);
    assert_ne!(ids[1], bos);
}

#[test]
fn chat_rendering_contains_messages_and_ends_with_assistant_header() {
    let m = model();
    let messages = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "What is two plus two?"}]},
    ]);
    let text = m.render_chat(&messages).unwrap();
    assert!(text.starts_with("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"));
    assert!(text.contains("<|start_header_id|>user<|end_header_id|>\n\nWhat is two plus two?<|eot_id|>"));
    assert!(text.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"), "{text:?}");

    let ids = m.encode_chat(&messages).unwrap();
    let bos = m.config.bos_token_id.unwrap();
    assert_eq!(ids[0], bos);
    assert_eq!(ids.iter().filter(|&&t| t == bos).count(), 1);
    assert_eq!(ids, m.encode(&text).unwrap(), "encode(render_chat) must agree with encode_chat");

    let err = m.render_chat(&json!({"role": "user"})).unwrap_err();
    assert_eq!(err.error_type(), "invalid_input");
}

#[test]
fn incremental_decode_equals_full_prefill() {
    let m = model();
    let tokens = m.encode("The harbour town woke slowly on winter mornings, and the clock struck seven.").unwrap();
    assert!(tokens.len() > 8);
    let (full_kv, full_logits) = m.prefill(&tokens).unwrap();
    let (mut kv, _) = m.prefill(&tokens[..1]).unwrap();
    let mut logits = Vec::new();
    for &t in &tokens[1..] {
        logits = m.decode_step(&mut kv, t).unwrap();
    }
    assert_eq!(kv.len(), tokens.len());
    assert_eq!(logits.len(), m.config.vocab_size);
    let max_diff = logits.iter().zip(&full_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_diff <= 1e-5, "incremental vs full logits differ by {max_diff}");
    assert_eq!(kv, full_kv, "KV rows must not depend on how the tokens were batched");
    assert!(full_logits.iter().all(|x| x.is_finite()));
}

#[test]
fn kv_cache_bytes_round_trip_and_validation() {
    let m = model();
    let (kv, _) = m.prefill(&m.encode("Rules are useful when they are simple.").unwrap()).unwrap();
    let bytes = kv.to_bytes();
    assert_eq!(bytes.len(), kv.byte_len());
    let back = KvCache::from_bytes(&bytes).unwrap();
    assert_eq!(back, kv);
    assert_eq!((back.len(), back.n_layers(), back.n_kv_heads(), back.head_dim()), (kv.len(), 2, 2, 16));

    assert!(KvCache::from_bytes(&bytes[..bytes.len() - 4]).is_err(), "truncated payload");
    assert!(KvCache::from_bytes(&bytes[..10]).is_err(), "truncated header");
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert_eq!(KvCache::from_bytes(&bad).unwrap_err().error_type(), "kv_cache");
    let mut huge = bytes.clone();
    huge[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(KvCache::from_bytes(&huge).is_err(), "overflowing length");
}

#[test]
fn invalid_inputs_are_rejected_without_touching_the_cache() {
    let m = model();
    assert_eq!(m.prefill(&[]).unwrap_err().error_type(), "invalid_input");
    let (mut kv, _) = m.prefill(&[1, 2, 3]).unwrap();
    assert_eq!(m.decode_step(&mut kv, 100_000).unwrap_err().error_type(), "invalid_input");
    assert_eq!(kv.len(), 3);
    let too_long = vec![5u32; m.max_context() + 1];
    assert_eq!(m.prefill(&too_long).unwrap_err().error_type(), "context_length");
}
