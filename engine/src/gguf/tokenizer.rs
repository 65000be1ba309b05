//! A `tokenizers` tokenizer from GGUF metadata (`tokenizer.ggml.*`), built as the tokenizer.json
//! the model shipped with would read:
//! - `gpt2`: byte-level BPE from `tokens` and `merges`, split first as `tokenizer.ggml.pre` names
//!   (llama.cpp's list; an unknown name is an error, since a wrong split silently changes ids);
//! - `llama`: SentencePiece-style BPE with byte fallback, merges recovered from the scores as
//!   transformers' GGUF loader does.
//!
//! Tokens marked control (type 3) become special added tokens, user-defined (type 4) plain added
//! tokens, so both are matched whole in text. BOS is added when `add_bos_token` says so
//! (default: yes for `llama`, no for `gpt2`, as in transformers).

use serde_json::{json, Value as Json};
use tokenizers::Tokenizer;

use super::file::GgufFile;
use crate::error::EngineError;
use crate::text::TextSpec;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The pre-tokenizer for `tokenizer.ggml.pre` (llama.cpp's `llama-vocab.cpp` names).
fn pre_tokenizer(pre: &str) -> Result<Json, String> {
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // SmolLM's own tokenizer.json: every digit alone, then GPT-2's split.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true),
        ]}),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3" | "pixtral" => split(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => split(QWEN2_SPLIT),
        other => {
            return Err(format!(
                "`tokenizer.ggml.pre` `{other}` is not supported (supported: default, gpt2, smollm, llama-bpe, qwen2)"
            ))
        }
    })
}

fn strings(f: &GgufFile, key: &str) -> Result<Option<Vec<String>>, String> {
    let Some(v) = f.get(key) else { return Ok(None) };
    let items = v.as_array().ok_or(format!("`{key}` must be an array"))?;
    items
        .iter()
        .map(|s| s.as_str().map(str::to_string).ok_or(format!("`{key}` must hold strings")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Merges a SentencePiece vocabulary implies: every split of a token into two tokens, best
/// score first (transformers' `generate_merges`, whose stable order this keeps).
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let index: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut all = Vec::new();
    for (tok, &score) in tokens.iter().zip(scores) {
        let mut local = Vec::new();
        for (at, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(at);
            if let (Some(&il), Some(&ir)) = (index.get(l), index.get(r)) {
                local.push((il, ir, l, r));
            }
        }
        local.sort_by_key(|&(il, ir, _, _)| (il, ir));
        all.extend(local.into_iter().map(|(_, _, l, r)| (score, l, r)));
    }
    all.sort_by(|a, b| {
        let key = |m: &(f32, &str, &str)| (m.0, m.1.chars().count(), m.2.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    all.into_iter().map(|(_, l, r)| (l.to_string(), r.to_string())).collect()
}

/// The tokenizer and its special tokens from `f`'s metadata.
pub(crate) fn build(f: &GgufFile) -> Result<(Tokenizer, TextSpec), EngineError> {
    let err = |m: String| EngineError::Tokenizer(format!("`{}`: {m}", f.path.display()));
    let model = f
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .ok_or_else(|| err("no `tokenizer.ggml.model`".into()))?;
    let tokens =
        strings(f, "tokenizer.ggml.tokens").map_err(err)?.ok_or_else(|| err("no `tokenizer.ggml.tokens`".into()))?;
    let types: Vec<i64> = match f.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let id = |key: &str| f.get(key).and_then(|v| v.as_u64()).map(|v| v as u32).filter(|&v| (v as usize) < tokens.len());
    let bos_id = id("tokenizer.ggml.bos_token_id");
    let eos_id = id("tokenizer.ggml.eos_token_id");
    // Llama 3 and others end a turn with an end-of-turn token distinct from EOS; both stop.
    let mut eos_ids: Vec<u32> =
        [eos_id, id("tokenizer.ggml.eot_token_id"), id("tokenizer.ggml.eom_token_id")].into_iter().flatten().collect();
    eos_ids.sort_unstable();
    eos_ids.dedup();
    let add_bos = f.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(model == "llama");

    let vocab: serde_json::Map<String, Json> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let (model_json, normalizer, pre, decoder) = match model {
        "gpt2" => {
            let merges = strings(f, "tokenizer.ggml.merges")
                .map_err(err)?
                .ok_or_else(|| err("no `tokenizer.ggml.merges`".into()))?;
            let merges: Vec<Json> = merges
                .iter()
                .map(|m| {
                    m.split_once(' ')
                        .map(|(a, b)| json!([a, b]))
                        .ok_or_else(|| err(format!("merge `{m}` has no space")))
                })
                .collect::<Result<_, _>>()?;
            let pre_name = f.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
            let bpe = json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges});
            let decoder =
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (bpe, Json::Null, pre_tokenizer(pre_name).map_err(err)?, decoder)
        }
        "llama" => {
            let scores: Vec<f32> = match f.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
                Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                None => return Err(err("a `llama` tokenizer needs `tokenizer.ggml.scores`".into())),
            };
            let merges: Vec<Json> =
                merges_from_scores(&tokens, &scores).into_iter().map(|(a, b)| json!([a, b])).collect();
            let unk = id("tokenizer.ggml.unknown_token_id").map(|i| tokens[i as usize].clone());
            let bpe = json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges});
            // SentencePiece's dummy prefix, unless the file turns it off.
            let prefix = f.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(true);
            let mut steps = vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
            if prefix {
                steps.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
            }
            let normalizer = json!({"type": "Sequence", "normalizers": steps});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ]});
            (bpe, normalizer, Json::Null, decoder)
        }
        other => {
            return Err(err(format!("`tokenizer.ggml.model` `{other}` is not supported (supported: gpt2, llama)")))
        }
    };
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t == CONTROL || t == USER_DEFINED)
        .map(|(i, (tok, &t))| {
            json!({"id": i, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": t == CONTROL})
        })
        .collect();
    let post = match bos_id.filter(|_| add_bos) {
        Some(b) => {
            let bos = &tokens[b as usize];
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [b], "tokens": [bos]}}})
        }
        None => Json::Null,
    };
    let doc = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": post, "decoder": decoder, "model": model_json});
    let tokenizer: Tokenizer = doc.to_string().parse().map_err(|e| err(format!("building the tokenizer: {e}")))?;

    let chat = f.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(|s| (s.to_string(), "the GGUF metadata"));
    let token = |id: Option<u32>| id.map(|i| tokens[i as usize].clone()).unwrap_or_default();
    let spec = TextSpec { bos_id, bos_token: token(bos_id), eos_token: token(eos_id), eos_ids, chat };
    Ok((tokenizer, spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_from_scores_rank_by_the_merged_token() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].map(String::from).to_vec();
        let scores = [0.0, 0.0, 0.0, -1.0, -0.5, -2.0];
        let merges = merges_from_scores(&tokens, &scores);
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(pairs, [("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]);
    }

    /// A SentencePiece-style vocabulary: words split on "▁", merges from the scores, BOS
    /// added, and characters outside the vocabulary falling back to byte tokens.
    #[test]
    fn llama_sentencepiece_vocabularies_encode_and_decode() {
        use super::super::file::Value;
        use super::super::write::GgufWriter;
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
        let mut types = vec![2, 3, 3];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        types.extend([6; 256]);
        let words = ["\u{2581}", "h", "e", "l", "o", "\u{2581}h", "ll", "\u{2581}he", "llo", "\u{2581}hello"];
        tokens.extend(words.iter().map(|w| w.to_string()));
        types.extend([1; 10]);
        // Longer pieces score higher, so "▁hello" wins over its parts.
        let scores: Vec<Value> = tokens.iter().map(|t| Value::F32(t.chars().count() as f32)).collect();
        let mut w = GgufWriter::new();
        w.meta("tokenizer.ggml.model", Value::String("llama".into()))
            .meta("tokenizer.ggml.tokens", Value::Array(tokens.iter().cloned().map(Value::String).collect()))
            .meta("tokenizer.ggml.scores", Value::Array(scores))
            .meta("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()))
            .meta("tokenizer.ggml.bos_token_id", Value::U32(1))
            .meta("tokenizer.ggml.eos_token_id", Value::U32(2))
            .meta("tokenizer.ggml.unknown_token_id", Value::U32(0));
        let path = std::env::temp_dir().join(format!("pdq-spm-{}.gguf", std::process::id()));
        w.write(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        let (tok, spec) = build(&f).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!((spec.bos_id, spec.eos_ids.as_slice(), spec.bos_token.as_str()), (Some(1), &[2][..], "<s>"));
        let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
        let enc = tok.encode("hello", true).unwrap();
        assert_eq!(enc.get_ids(), [1, id("\u{2581}hello")]);
        // "x" is not in the vocabulary: its UTF-8 byte comes back as a byte token.
        let enc = tok.encode("hex", false).unwrap();
        assert_eq!(enc.get_ids(), [id("\u{2581}he"), id("<0x78>")]);
        assert_eq!(tok.decode(&[1, id("\u{2581}hello"), id("<0x78>")], true).unwrap(), "hellox");
    }

    #[test]
    fn unknown_pre_tokenizers_are_named() {
        let e = pre_tokenizer("chameleon").unwrap_err();
        assert!(e.contains("`chameleon` is not supported"), "{e}");
        assert!(pre_tokenizer("smollm").is_ok());
    }
}
