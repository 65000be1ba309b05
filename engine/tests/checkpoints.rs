//! Loading HF directories: config layouts of transformers 4.x and 5.x, the three architectures,
//! and one-line errors naming what is wrong with a directory.

mod common;

use std::path::{Path, PathBuf};

use pdq_engine::{Architecture, Model};
use serde_json::{json, Value as Json};

/// A copy of fixture checkpoint `name` (or the tiny model) in a scratch directory.
fn copy_of(name: &str, tag: &str) -> PathBuf {
    let dir = common::scratch(tag);
    if name == "tiny" {
        pdq_engine::tiny::write(&dir).unwrap();
        return dir;
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Json)) {
    let mut v: Json = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut Json)) {
    edit_json(&dir.join("config.json"), edit)
}

/// Loading must fail with one line of class `error_type` containing every fragment.
fn load_error(dir: &Path, error_type: &str, fragments: &[&str]) {
    let err = Model::load(dir).err().expect("load must fail");
    let msg = err.to_string();
    assert_eq!(err.error_type(), error_type, "{msg}");
    assert!(!msg.contains('\n'), "error spans lines: {msg}");
    for f in fragments {
        assert!(msg.contains(f), "{msg:?} lacks {f:?}");
    }
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = copy_of("tiny", "arch");
    edit_config(&dir, |c| c["architectures"] = json!(["GPT2LMHeadModel"]));
    load_error(&dir, "config", &["config.json", "GPT2LMHeadModel", "LlamaForCausalLM"]);
    edit_config(&dir, |c| {
        c.as_object_mut().unwrap().remove("architectures");
        c["model_type"] = json!("gemma");
    });
    load_error(&dir, "config", &["`model_type`", "gemma"]);
    edit_config(&dir, |c| c["model_type"] = json!("mistral"));
    assert_eq!(Model::load(&dir).unwrap().config.architecture, Architecture::Mistral);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_attention_and_rope_variants_are_rejected() {
    let dir = copy_of("qwen2-gqa-bias", "variants");
    edit_config(&dir, |c| c["use_sliding_window"] = json!(true));
    load_error(&dir, "config", &["`use_sliding_window`"]);
    edit_config(&dir, |c| {
        c["use_sliding_window"] = json!(false);
        c["layer_types"] = json!(["full_attention", "sliding_attention"]);
    });
    load_error(&dir, "config", &["`layer_types`", "sliding_attention"]);
    edit_config(&dir, |c| {
        c.as_object_mut().unwrap().remove("layer_types");
        c["rope_parameters"] = json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0});
    });
    load_error(&dir, "config", &["`rope_parameters.rope_type`", "yarn"]);
    edit_config(&dir, |c| {
        c["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 10000.0});
        c["hidden_act"] = json!("gelu");
    });
    load_error(&dir, "config", &["`hidden_act`", "gelu"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_shard_and_tensors_are_named() {
    let dir = copy_of("mistral-window", "shards");
    let index: Json =
        serde_json::from_slice(&std::fs::read(dir.join("model.safetensors.index.json")).unwrap()).unwrap();
    let shard = index["weight_map"]["model.norm.weight"].as_str().unwrap().to_string();
    std::fs::remove_file(dir.join(&shard)).unwrap();
    load_error(&dir, "missing_file", &[&shard]);
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    load_error(&dir, "missing_file", &["model.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();

    // Untying needs an `lm_head.weight` the tied checkpoint does not have.
    let dir = copy_of("llama3-tied-rope", "untied");
    edit_config(&dir, |c| c["tie_word_embeddings"] = json!(false));
    load_error(&dir, "weights", &["`lm_head.weight`", "missing"]);
    // Llama `attention_bias` asks for biases on all four projections.
    edit_config(&dir, |c| {
        c["tie_word_embeddings"] = json!(true);
        c["attention_bias"] = json!(true);
    });
    load_error(&dir, "weights", &["self_attn.", "_proj.bias`", "missing"]);
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = copy_of("tiny", "notok");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    load_error(&dir, "missing_file", &["tokenizer.json"]);
    std::fs::remove_dir_all(&dir).unwrap();
    load_error(&dir, "missing_file", &["pdq-engine-notok"]);
}

#[test]
fn v5_rope_parameters_and_v4_rope_theta_give_the_same_model() {
    let dir = copy_of("tiny", "v5cfg");
    let v4 = Model::load(&dir).unwrap();
    edit_config(&dir, |c| {
        let o = c.as_object_mut().unwrap();
        let theta = o.remove("rope_theta").unwrap();
        o.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": theta}));
    });
    let v5 = Model::load(&dir).unwrap();
    assert_eq!(v5.config.rope_theta, v4.config.rope_theta);
    assert!(v5.config.rope_scaling.is_none());
    let prompt = [3, 50, 7, 200, 11];
    assert_eq!(v5.prefill(&prompt).unwrap().1, v4.prefill(&prompt).unwrap().1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mistral_window_defaults_follow_transformers() {
    let dir = copy_of("mistral-window", "window");
    // Absent: MistralConfig's default window of 4096, above this model's 128 positions.
    edit_config(&dir, |c| {
        c.as_object_mut().unwrap().remove("sliding_window");
    });
    let m = Model::load(&dir).unwrap();
    assert_eq!((m.config.sliding_window, m.max_context()), (None, 128));
    edit_config(&dir, |c| {
        c["sliding_window"] = Json::Null;
        c["max_position_embeddings"] = json!(8192);
    });
    assert_eq!(Model::load(&dir).unwrap().max_context(), 8192);
    edit_config(&dir, |c| {
        c.as_object_mut().unwrap().remove("sliding_window");
    });
    assert_eq!(Model::load(&dir).unwrap().max_context(), 4096);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eos_ids_come_from_generation_config_too() {
    let dir = copy_of("tiny", "eos");
    let base = Model::load(&dir).unwrap().eos_token_ids().to_vec();
    edit_json(&dir.join("generation_config.json"), |g| g["eos_token_id"] = json!([base[0], 77]));
    let ids = Model::load(&dir).unwrap().eos_token_ids().to_vec();
    assert!(ids.contains(&77) && base.iter().all(|id| ids.contains(id)), "{ids:?}");
    edit_json(&dir.join("generation_config.json"), |g| g["eos_token_id"] = json!(78));
    assert!(Model::load(&dir).unwrap().eos_token_ids().contains(&78));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// transformers 5 writes the template to `chat_template.jinja`; it wins over
/// tokenizer_config.json, and a directory with only the `.jinja` file chats too.
#[test]
fn chat_template_jinja_is_read_and_preferred() {
    let dir = copy_of("tiny", "chat-jinja");
    let messages = json!([{"role": "user", "content": "hi"}]);
    std::fs::write(dir.join("chat_template.jinja"), "{% for m in messages %}[{{ m['content'] }}]{% endfor %}").unwrap();
    assert_eq!(Model::load(&dir).unwrap().render_chat(&messages).unwrap(), "[hi]");
    edit_json(&dir.join("tokenizer_config.json"), |c| {
        c.as_object_mut().unwrap().remove("chat_template");
    });
    assert_eq!(Model::load(&dir).unwrap().render_chat(&messages).unwrap(), "[hi]");
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    let err = Model::load(&dir).unwrap().render_chat(&messages).unwrap_err();
    assert_eq!(err.to_string(), "chat template: the model has no chat template");
    let _ = std::fs::remove_dir_all(&dir);
}
