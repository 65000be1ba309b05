//! Times the quantized matmuls on SmolLM2-135M's shapes (k x n: 576 x 576, 576 x 1536,
//! 1536 x 576, and the 576 x 49152 Q8_0 lm_head) at decode (m = 1) and 32-concurrent (m = 32)
//! batch sizes: the exact path, the int8-activation path, and the f32 matmul on the dequantized
//! matrix for scale. Then every type at 768 x 1536.
//! `cargo run --release -p pdq-kernels --example qmatmul [-- --all]`.

#[path = "common/timing.rs"]
mod timing;

use pdq_kernels::cpu::{matmul, matmul_quant};
use pdq_kernels::quant::int8;
use pdq_kernels::quant::random::{random_blocks, Lcg};
use pdq_kernels::{QMatrix, QuantType};

fn row(t: QuantType, k: usize, n: usize, rng: &mut Lcg) {
    let bytes = random_blocks(t, n * k, rng);
    let w = QMatrix::new(t, n, k, &bytes).unwrap();
    let dense = w.to_f32();
    let mut cells = vec![format!("| {t} {k}x{n} |")];
    for m in [1usize, 32] {
        let x: Vec<f32> = (0..m * k).map(|_| rng.next_f32()).collect();
        let mut y = vec![0f32; m * n];
        let reps = if m == 1 { 400 } else { 40 } * 576 * 576 / (k * n).max(576 * 576) + 5;
        let q = timing::median_secs(reps, || matmul_quant(&x, &w, None, &mut y));
        let f = timing::median_secs(reps, || matmul(&x, &dense, None, k, &mut y));
        let i8 = if int8::supported(t) {
            format!("{:.1}", timing::median_secs(reps, || int8::matmul_int8(&x, &w, None, &mut y)) * 1e6)
        } else {
            "-".into()
        };
        cells.push(format!(" {:.1} | {i8} | {:.1} |", q * 1e6, f * 1e6));
    }
    println!("{}", cells.concat());
}

fn main() {
    let mut rng = Lcg(1);
    println!("microseconds per call (median); {} threads", rayon::current_num_threads());
    println!("| weights | m=1 exact | m=1 int8 | m=1 f32 | m=32 exact | m=32 int8 | m=32 f32 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (k, n) in [(576, 576), (576, 192), (576, 1536), (1536, 576)] {
        row(QuantType::Q4_1, k, n, &mut rng);
    }
    row(QuantType::Q8_0, 576, 49152, &mut rng);
    if std::env::args().any(|a| a == "--all") {
        for t in QuantType::ALL {
            row(t, 768, 1536, &mut rng);
        }
    }
}
