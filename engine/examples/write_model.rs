//! Writes a generated checkpoint without building the whole `pdq` binary; `scripts/golden.py`
//! uses it for the tiny model.
//!
//! Usage: `cargo run -p pdq-engine --example write_model -- tiny DIR`
//!        `cargo run -p pdq-engine --example write_model -- random PRESET DIR [SEED]`

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["tiny", dir] => pdq_engine::tiny::write(Path::new(dir)),
        ["random", preset, dir] => pdq_engine::random::write(preset, Path::new(dir), 0),
        ["random", preset, dir, seed] => match seed.parse() {
            Ok(seed) => pdq_engine::random::write(preset, Path::new(dir), seed),
            Err(e) => {
                eprintln!("error: SEED {seed:?}: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => {
            eprintln!("usage: write_model tiny DIR | write_model random PRESET DIR [SEED]");
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
