//! Weight-streaming rate of the quantized matmuls, one shape at a time, for measuring kernel
//! changes one by one: `cargo run --release -p pdq-kernels --example qstream -- TYPE K N [M]`
//! (TYPE: Q4_0, Q4_1, Q8_0, Q4_K, Q6_K; M defaults to 1). Prints the median microseconds per
//! call and the weight bytes streamed per second, for the exact and the int8-activation paths.
//! Use `RAYON_NUM_THREADS` to pick the threads. With `COPIES` (a fifth argument), each timed
//! call goes over that many distinct copies of the matrix in turn, as a model's layers do, so
//! the weights come from L3 or DRAM instead of staying in L2.

#[path = "common/timing.rs"]
mod timing;

use pdq_kernels::cpu::matmul_quant;
use pdq_kernels::quant::int8;
use pdq_kernels::quant::random::{random_blocks, Lcg};
use pdq_kernels::{QMatrix, QuantType};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let t = QuantType::ALL
        .into_iter()
        .find(|t| t.to_string() == args.first().map_or("Q4_1", |s| s.as_str()))
        .expect("TYPE");
    let num = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().expect("number"));
    let (k, n, m, copies) = (num(1, 576), num(2, 1536), num(3, 1), num(4, 1));
    let mut rng = Lcg(1);
    let all: Vec<Vec<u8>> = (0..copies).map(|_| random_blocks(t, n * k, &mut rng)).collect();
    let ws: Vec<QMatrix> = all.iter().map(|b| QMatrix::new(t, n, k, b).unwrap()).collect();
    let bytes = &all[0];
    let x: Vec<f32> = (0..m * k).map(|_| rng.next_f32()).collect();
    let mut y = vec![0f32; m * n];
    let reps = (200_000_000 / (copies * bytes.len())).clamp(5, 2000);
    let gbs = |s: f64| (copies * bytes.len()) as f64 / s / 1e9;
    let e = timing::median_secs(reps, || ws.iter().for_each(|w| matmul_quant(&x, w, None, &mut y)));
    print!(
        "{t} {k}x{n} x{copies} m={m} threads={}: exact {:.1} us {:.1} GB/s",
        rayon::current_num_threads(),
        e * 1e6,
        gbs(e)
    );
    if int8::supported(t) {
        let i = timing::median_secs(reps, || ws.iter().for_each(|w| int8::matmul_int8(&x, w, None, &mut y)));
        print!("; int8 {:.1} us {:.1} GB/s", i * 1e6, gbs(i));
    }
    println!();
}
