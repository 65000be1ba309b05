//! Writes a generated checkpoint without building the whole `pdq` binary; `scripts/golden.py`
//! uses it for the tiny model.
//!
//! Usage: `cargo run -p pdq-engine --example write_model -- tiny DIR`
//!        `cargo run -p pdq-engine --example write_model -- random PRESET DIR [SEED]`
//!        `cargo run -p pdq-engine --example write_model -- gguf|gguf-qwen2 TYPE DIR` (TYPE: F32, Q4_K, ...)

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["tiny", dir] => pdq_engine::tiny::write(Path::new(dir)),
        [arch @ ("gguf" | "gguf-qwen2"), ty, dir] => {
            match pdq_kernels::QuantType::ALL.into_iter().find(|t| t.to_string() == ty) {
                Some(t) if arch == "gguf" => pdq_engine::gguf::fixture::write(t, Path::new(dir)),
                Some(t) => pdq_engine::gguf::fixture::write_qwen2(t, Path::new(dir)),
                None => {
                    eprintln!("error: TYPE {ty:?} is not one of {:?}", pdq_kernels::QuantType::ALL);
                    return ExitCode::FAILURE;
                }
            }
        }
        ["random", preset, dir] => pdq_engine::random::write(preset, Path::new(dir), 0),
        ["random", preset, dir, seed] => match seed.parse() {
            Ok(seed) => pdq_engine::random::write(preset, Path::new(dir), seed),
            Err(e) => {
                eprintln!("error: SEED {seed:?}: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => {
            eprintln!("usage: write_model tiny DIR | write_model random PRESET DIR [SEED] | write_model gguf|gguf-qwen2 TYPE DIR");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
