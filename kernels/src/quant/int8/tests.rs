use super::*;
use crate::cpu::matmul_reference;
use crate::quant::random::{random_blocks, Lcg};

const TYPES: [QuantType; 3] = [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0];

#[test]
fn quantize_block_is_ggml_q8_0_with_seven_more_bits() {
    let mut x = [0f32; 32];
    x[0] = -2.54; // the largest magnitude: Q = -16256, q1 = -127, q2 = 0
    x[1] = 1.27; // half of it: Q = 8128 = 128 * 63.5, q1 = 64, q2 = -64
    x[2] = 0.003;
    x[3] = -0.5 * 2.54 / 127.0 / 128.0; // exactly half a step: rounds to even, 0
    let a = Q8Rows::quantize(&x, 32);
    let s = 2.54f32 / 127.0 / 128.0;
    assert_eq!(a.scales[0], s);
    let q: Vec<i32> = (0..32).map(|i| 128 * a.q[0][i] as i32 + a.q[1][i] as i32).collect();
    assert_eq!((a.q[0][0], a.q[1][0]), (-127, 0));
    assert_eq!(q[1], (1.27 * (1.0 / s)).round_ties_even() as i32);
    assert!(a.q[1].iter().all(|&d| (-64..64).contains(&d)), "the low digit is in -64..64");
    assert_eq!(q[2], (0.003 * (1.0 / s)).round_ties_even() as i32);
    assert_eq!(q[3], 0);
    // x ~ s * Q to half a step, 2^-15 of the block's largest value.
    assert!(x.iter().zip(&q).all(|(&v, &q)| (v - s * q as f32).abs() <= 0.5001 * s));
    assert_eq!(a.scales[1], s * q.iter().sum::<i32>() as f32);
    assert_eq!(a.neg_sums[0], -(q[0] + q[1] + q[2] + q[3]));
    // One block of 32 pads to two: the padding is zeros.
    assert_eq!((a.stride, a.q[0].len()), (2, 64));
    assert!(a.q[0][32..].iter().all(|&q| q == 0) && a.scales[2..] == [0.0, 0.0]);
    // An all-zero block has scale 0 and zero quants, not NaN.
    let z = Q8Rows::quantize(&[0.0; 64], 64);
    assert!(z.scales.iter().all(|&s| s == 0.0) && z.q.iter().flatten().all(|&q| q == 0));
}

#[test]
fn simd_quantization_is_the_portable_definition() {
    let mut rng = Lcg(20);
    let k = 96;
    // Values of every magnitude, exact halves (ties) and an all-zero block.
    let mut x: Vec<f32> = (0..5 * k).map(|i| rng.next_f32() * (1 << (i % 9)) as f32).collect();
    x[..32].iter_mut().for_each(|v| *v = 0.0);
    x[40] = 0.5;
    let (a, b) = (Q8Rows::quantize(&x, k), Q8Rows::quantize_portable(&x, k));
    assert_eq!((&a.q, &a.neg_sums), (&b.q, &b.neg_sums));
    let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.scales), bits(&b.scales));
}

#[test]
fn every_kernel_is_the_portable_definition_bit_for_bit() {
    let mut rng = Lcg(21);
    // Odd block counts (the padding block), short weight groups, one and four activation rows.
    for &(m, k, n) in &[(1, 96, 5), (5, 64, 9), (4, 576, 8), (9, 320, 7)] {
        for t in TYPES {
            let bytes = random_blocks(t, n * k, &mut rng);
            let w = QMatrix::new(t, n, k, &bytes).unwrap();
            let x: Vec<f32> = (0..m * k).map(|_| rng.next_f32()).collect();
            let a = Q8Rows::quantize(&x, k);
            let want: Vec<u32> =
                (0..m * n).map(|e| dot_portable(t, w.row_data(e % n..e % n + 1), &a, e / n).to_bits()).collect();
            for kernel in Int8Kernel::available() {
                let mut got = vec![f32::NAN; m * n];
                matmul_q8(kernel, &a, &w, None, &mut got);
                let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{t} on {kernel:?} at m {m} k {k} n {n}");
            }
        }
    }
}

#[test]
fn int8_activations_stay_close_to_the_exact_matmul() {
    let mut rng = Lcg(22);
    let (m, k, n) = (3, 512, 96);
    for t in TYPES {
        let bytes = random_blocks(t, n * k, &mut rng);
        let w = QMatrix::new(t, n, k, &bytes).unwrap();
        let x: Vec<f32> = (0..m * k).map(|_| rng.next_f32()).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
        let mut want = vec![0f32; m * n];
        matmul_reference(&x, &w.to_f32(), Some(&bias), k, &mut want);
        let mut got = vec![f32::NAN; m * n];
        matmul_int8(&x, &w, Some(&bias), &mut got);
        let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
        let err = got.iter().zip(&want).fold(0f32, |e, (a, b)| e.max((a - b).abs())) / scale;
        // Two Q8 digits carry ~2^-15 relative error per value.
        assert!(err < 1e-4, "{t}: relative error {err:e}");
        assert!(err > 0.0, "{t}: int8 activations cannot be exact on random inputs");
    }
}

#[test]
fn a_row_gets_the_same_bits_alone_and_in_any_batch() {
    let mut rng = Lcg(23);
    let (k, n) = (256, 300);
    for t in TYPES {
        let bytes = random_blocks(t, n * k, &mut rng);
        let w = QMatrix::new(t, n, k, &bytes).unwrap();
        let x: Vec<f32> = (0..11 * k).map(|_| rng.next_f32()).collect();
        let mut batch = vec![0f32; 11 * n];
        matmul_int8(&x, &w, None, &mut batch);
        for r in [0, 4, 10] {
            let mut alone = vec![0f32; n];
            matmul_int8(&x[r * k..(r + 1) * k], &w, None, &mut alone);
            let same = alone.iter().zip(&batch[r * n..(r + 1) * n]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{t}: row {r} differs alone and in a batch of 11");
        }
    }
}
