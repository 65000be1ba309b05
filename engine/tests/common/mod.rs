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
