//! `gguf_trim SRC.gguf DST.gguf N`: the first N layers of a GGUF model, byte for byte
//! ([`pdq_engine::gguf::write::trim_layers`]). `scripts/gpu-check.sh --bundle` uses it to carry
//! a real checkpoint within the GPU machine's transfer limit.

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let [_, src, dst, n] = &a[..] else {
        eprintln!("usage: gguf_trim SRC.gguf DST.gguf N_LAYERS");
        std::process::exit(2)
    };
    let n: usize = n.parse().unwrap_or_else(|_| {
        eprintln!("gguf_trim: N_LAYERS must be a number, got {n}");
        std::process::exit(2)
    });
    if let Err(e) = pdq_engine::gguf::write::trim_layers(src.as_ref(), dst.as_ref(), n) {
        eprintln!("gguf_trim: {e}");
        std::process::exit(1)
    }
}
