//! Times the quantized matmul per tensor type against the f32 matmul and bare dequantization,
//! at decode (m = 1) and prefill (m = 64) sizes of a 768 x 1536 matrix, and the (unwired,
//! inexact) int8-activation kernel at m = 1:
//! `cargo run --release -p pdq-kernels --example qmatmul`.

use std::time::Instant;

use pdq_kernels::cpu::{matmul, matmul_quant};
use pdq_kernels::quant::int8;
use pdq_kernels::quant::random::{random_blocks, Lcg};
use pdq_kernels::{QMatrix, QuantType};

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let (k, n) = (768, 1536);
    let mut rng = Lcg(1);
    println!("k {k} x n {n}; microseconds per call");
    println!("| type | dequantize | m=1 quant | m=1 f32 | m=64 quant | m=64 f32 | m=1 int8 activations |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for t in QuantType::ALL {
        let bytes = random_blocks(t, n * k, &mut rng);
        let w = QMatrix::new(t, n, k, &bytes).unwrap();
        let dense = w.to_f32();
        let mut buf = vec![0f32; n * k];
        let deq = time(50, || w.dequantize_rows(0..n, &mut buf));
        let mut row = vec![format!("| {t} | {:.0} |", deq * 1e6)];
        for m in [1usize, 64] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.next_f32()).collect();
            let mut y = vec![0f32; m * n];
            let reps = if m == 1 { 200 } else { 20 };
            let q = time(reps, || matmul_quant(&x, &w, None, &mut y));
            let f = time(reps, || matmul(&x, &dense, None, k, &mut y));
            row.push(format!(" {:.0} | {:.0} |", q * 1e6, f * 1e6));
        }
        if int8::supported(t) {
            let x: Vec<f32> = (0..k).map(|_| rng.next_f32()).collect();
            let mut y = vec![0f32; n];
            row.push(format!(" {:.0} |", time(200, || int8::matmul_int8(&x, &w, None, &mut y)) * 1e6));
        } else {
            row.push(" - |".into());
        }
        println!("{}", row.concat());
    }
}
