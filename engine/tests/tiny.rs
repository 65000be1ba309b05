//! The generated tiny model: determinism, caching under races, and load errors.

mod common;

use std::path::Path;

use pdq_engine::{tiny, EngineError, Model};

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn write_is_byte_identical_twice() {
    let (a, b) = (common::scratch("det-a"), common::scratch("det-b"));
    tiny::write(&a).unwrap();
    tiny::write(&b).unwrap();
    let (fa, fb) = (files(&a), files(&b));
    let names: Vec<&str> = fa.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    );
    for ((na, da), (_, db)) in fa.iter().zip(&fb) {
        assert!(da == db, "{na} differs between two writes");
    }
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn cached_in_is_safe_under_races() {
    let root = common::scratch("cache");
    let paths: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| tiny::cached_in(&root).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(paths.iter().all(|p| *p == root.join(tiny::DIR_NAME)));
    let leftovers: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, [tiny::DIR_NAME], "temp directories must be cleaned up");
    let model = Model::load(&paths[0]).unwrap();
    assert_eq!(model.name(), tiny::DIR_NAME);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn missing_files_are_named() {
    let dir = common::scratch("missing");
    tiny::write(&dir).unwrap();
    for name in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::fs::remove_file(dir.join(name)).unwrap();
        let err = Model::load(&dir).err().expect("load must fail");
        assert!(matches!(err, EngineError::MissingFile { .. }), "{err}");
        assert_eq!(err.error_type(), "missing_file");
        assert!(err.to_string().contains(name), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_config_field_is_named() {
    let dir = common::scratch("badcfg");
    tiny::write(&dir).unwrap();
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["num_key_value_heads"] = 3.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = Model::load(&dir).err().expect("load must fail");
    assert_eq!(err.error_type(), "config");
    let msg = err.to_string();
    assert!(msg.contains("config.json") && msg.contains("`num_key_value_heads`"), "{msg}");

    cfg["num_key_value_heads"] = 2.into();
    cfg["hidden_size"] = 32.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let msg = Model::load(&dir).err().expect("shape mismatch must fail").to_string();
    assert!(msg.contains("model.embed_tokens.weight") || msg.contains("shape"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}
