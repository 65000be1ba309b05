//! Block formats against hand-computed values, SIMD against portable, and the quantized matmul
//! against the f32 reference on the dequantized matrix (bit for bit). The formats against
//! gguf-py's numpy dequantization are pinned in `pdq-engine`'s GGUF fixtures.

use half::f16;

use super::random::{random_blocks, Lcg};
use super::*;
use crate::cpu::{matmul_quant, matmul_reference};

fn f16b(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

fn dequant(t: QuantType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / t.block_bytes() * t.block_len();
    let mut out = vec![f32::NAN; n];
    t.dequantize(bytes, &mut out);
    out
}

#[test]
fn q4_0_and_q4_1_put_low_nibbles_first() {
    let mut b = f16b(0.5).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequant(QuantType::Q4_0, &b);
    assert_eq!(y[0], -4.0); // (0 - 8) * 0.5
    assert_eq!(y[15], 3.5); // (15 - 8) * 0.5
    assert_eq!(y[16], 3.5); // high nibble of qs[0] is 15
    assert_eq!(y[31], -4.0);

    let mut b = [f16b(0.25), f16b(-1.0)].concat();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequant(QuantType::Q4_1, &b);
    assert_eq!((y[0], y[3], y[16], y[31]), (-1.0, -0.25, 2.75, -1.0));
}

#[test]
fn q8_0_is_signed() {
    let mut b = f16b(0.125).to_vec();
    b.extend((0..32).map(|j| (j as i8 - 16) as u8));
    let y = dequant(QuantType::Q8_0, &b);
    assert_eq!((y[0], y[16], y[31]), (-2.0, 0.0, 1.875));
}

#[test]
fn q4_k_unpacks_six_bit_scales_and_mins() {
    // Sub-block j has scale j + 1 and min 2 * j; for j >= 4 the top two bits live in bytes 0..8.
    let mut scales = [0u8; 12];
    for j in 0..8 {
        let (sc, m) = (j as u8 + 1 + if j >= 4 { 48 } else { 0 }, 2 * j as u8);
        if j < 4 {
            scales[j] = sc;
            scales[j + 4] = m;
        } else {
            scales[j + 4] = (sc & 0x0F) | ((m & 0x0F) << 4);
            scales[j - 4] |= (sc >> 4) << 6;
            scales[j] |= (m >> 4) << 6;
        }
    }
    for j in 0..8 {
        let want = (j as u8 + 1 + if j >= 4 { 48 } else { 0 }, 2 * j as u8);
        assert_eq!(blocks::scale_min_k4(j, &scales), want, "sub-block {j}");
    }
    let mut b = [f16b(1.0), f16b(0.5)].concat();
    b.extend(scales);
    b.extend((0..128).map(|i| if i % 32 == 0 { 0x3A } else { 0 }));
    let y = dequant(QuantType::Q4_K, &b);
    // Weight 0: sub-block 0, low nibble 0xA: 1 * 1 * 10 - 0.5 * 0. Weight 32: sub-block 1, high 3.
    assert_eq!(y[0], 10.0);
    assert_eq!(y[32], 2.0 * 3.0 - 0.5 * 2.0);
    // Weight 64 + 32 + 1: sub-block 3, nibble 0: just the min.
    assert_eq!(y[97], -0.5 * 6.0);
    // Weight 224: sub-block 7 (scale 56, min 14), high nibble 3.
    assert_eq!(y[224], 56.0 * 3.0 - 0.5 * 14.0);
}

#[test]
fn q6_k_combines_low_and_high_bits() {
    let mut b = vec![0u8; 210];
    b[0] = 0x21; // ql[0]: weight 0 low bits 1, weight 64 low bits 2
    b[128] = 0b11_10_01_00; // qh[0]: high bits of weights 0, 32, 64, 96
    for (i, s) in b[192..208].iter_mut().enumerate() {
        *s = (i as i8 - 8) as u8;
    }
    b[208..210].copy_from_slice(&f16b(0.5));
    let y = dequant(QuantType::Q6_K, &b);
    assert_eq!(y[0], 0.5 * -8.0 * (1 - 32) as f32);
    assert_eq!(y[32], 0.5 * -6.0 * ((1 << 4) - 32) as f32);
    assert_eq!(y[64], 0.5 * -4.0 * ((2 | (2 << 4)) - 32) as f32);
    assert_eq!(y[96], 0.5 * -2.0 * ((3 << 4) - 32) as f32);
    // Second half of the block uses scales 8..16.
    assert_eq!(y[128], 0.5 * 0.0 * -32.0);
    assert_eq!(y[255], 0.5 * 7.0 * -32.0);
}

#[test]
fn simd_dequantization_is_the_portable_definition() {
    let mut rng = Lcg(5);
    for t in QuantType::ALL {
        let bytes = random_blocks(t, 4 * 256, &mut rng);
        let mut portable = vec![0f32; 1024];
        t.dequantize_portable(&bytes, &mut portable);
        let fast = dequant(t, &bytes);
        assert!(portable.iter().all(|v| v.is_finite()), "{t}: random blocks must be finite");
        assert!(fast.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()), "{t}");
    }
}

#[test]
fn rejects_partial_blocks_and_wrong_sizes() {
    let e = QMatrix::new(QuantType::Q4_K, 2, 128, &[0; 144]).unwrap_err();
    assert!(e.contains("not whole blocks of 256"), "{e}");
    let e = QMatrix::new(QuantType::Q8_0, 2, 64, &[0; 100]).unwrap_err();
    assert_eq!(e, "Q8_0 [2, 64] needs 136 bytes, got 100");
    assert_eq!(QuantType::from_ggml(13), None);
    assert_eq!(QuantType::ggml_name(13), "Q5_K");
    assert_eq!(QuantType::from_ggml(30), Some(QuantType::BF16));
}

/// Every type, batch sizes that hit full tiles, partial tiles and the threaded path: the
/// quantized matmul is the reference on the dequantized weights, bit for bit.
#[test]
fn matmul_quant_is_the_reference_on_dequantized_weights() {
    let mut rng = Lcg(9);
    for t in QuantType::ALL {
        for &(m, k, n) in &[(1, 256, 7), (5, 512, 33), (70, 256, 300), (1, 1024, 600), (33, 256, 37)] {
            let bytes = random_blocks(t, n * k, &mut rng);
            let w = QMatrix::new(t, n, k, &bytes).unwrap();
            let dense = w.to_f32();
            let x: Vec<f32> = (0..m * k).map(|_| rng.next_f32()).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
            let mut want = vec![0f32; m * n];
            matmul_reference(&x, &dense, Some(&bias), k, &mut want);
            for kernel in crate::cpu::gemm_kernels() {
                let mut got = vec![f32::NAN; m * n];
                crate::cpu::matmul_quant_on(kernel, &x, &w, Some(&bias), &mut got);
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{t} on {kernel:?} differs at m {m} k {k} n {n}");
            }
            let mut got = vec![f32::NAN; m * n];
            matmul_quant(&x, &w, Some(&bias), &mut got);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{t} dispatch");
        }
    }
}

/// Each fused kernel variant on its own (dispatch picks one per CPU and batch size), against
/// `dot` on the dequantized rows.
#[cfg(target_arch = "x86_64")]
#[test]
fn every_fused_kernel_is_dot_on_dequantized_rows() {
    use super::x86::{dot_rows, dot_rows4_avx512, fused512_available, fused_available};
    let mut rng = Lcg(3);
    let k = 320;
    for t in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
        if !fused_available(t) {
            eprintln!("SKIPPED fused {t}: no AVX2/F16C");
            continue;
        }
        let bytes = random_blocks(t, 4 * k, &mut rng);
        let w = QMatrix::new(t, 4, k, &bytes).unwrap();
        let dense = w.to_f32();
        let x: Vec<f32> = (0..4 * k).map(|_| rng.next_f32()).collect();
        let want = |i: usize, j: usize| crate::cpu::dot(&x[i * k..(i + 1) * k], &dense[j * k..(j + 1) * k]).to_bits();
        let xs = [0, 1, 2, 3].map(|i| x[i * k..].as_ptr());
        let ws = [0, 1, 2, 3].map(|j| w.row_data(j..j + 1).as_ptr());
        let mut out = [[f32::NAN; 4]; 4];
        // SAFETY: features checked above; rows are `k` floats and whole weight rows.
        unsafe { dot_rows::<1, 4>(t, &xs, &ws, k, &mut out) };
        assert!((0..4).all(|j| out[0][j].to_bits() == want(0, j)), "{t} 1x4");
        unsafe { dot_rows::<4, 1>(t, &xs, &ws, k, &mut out) };
        assert!((0..4).all(|i| out[i][0].to_bits() == want(i, 0)), "{t} 4x1");
        if fused512_available() {
            out = [[f32::NAN; 4]; 4];
            unsafe { dot_rows4_avx512(t, &xs, &ws, k, &mut out) };
            assert!((0..4).all(|j| out[0][j].to_bits() == want(0, j)), "{t} avx512 1x4");
        } else {
            eprintln!("SKIPPED fused avx512 {t}: no AVX-512");
        }
    }
}

/// The K formats' fused kernel (each super-block dequantized into L1, then the eight-lane sums)
/// for every `m` and short weight groups, against `dot` on the dequantized rows.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_k_fused_kernel_is_dot_on_dequantized_rows() {
    use super::x86::{dot_rows_dequant, fused_dequant_available};
    let mut rng = Lcg(4);
    let k = 512;
    for t in [QuantType::Q4_K, QuantType::Q6_K] {
        if !fused_dequant_available(t) {
            eprintln!("SKIPPED fused {t}: no AVX2/F16C");
            continue;
        }
        let bytes = random_blocks(t, 4 * k, &mut rng);
        let w = QMatrix::new(t, 4, k, &bytes).unwrap();
        let dense = w.to_f32();
        let x: Vec<f32> = (0..8 * k).map(|_| rng.next_f32()).collect();
        let want = |i: usize, j: usize| crate::cpu::dot(&x[i * k..(i + 1) * k], &dense[j * k..(j + 1) * k]).to_bits();
        let ws = [0, 1, 2, 3].map(|j| w.row_data(j..j + 1).as_ptr());
        if t == QuantType::Q4_K && super::x86::fused512_available() {
            let mut out = [f32::NAN; 4];
            // SAFETY: features checked; `x` row 0 is `k` floats; four whole weight rows.
            unsafe { super::x86::dot_rows4_q4k_avx512(x.as_ptr(), &ws, k, &mut out) };
            assert!((0..4).all(|j| out[j].to_bits() == want(0, j)), "{t} avx512 registers");
        }
        for m in 1..=8 {
            for nr in 1..=4 {
                let mut out = [[f32::NAN; 4]; 8];
                // SAFETY: features checked above; `x` holds 8 rows of `k`; whole weight rows.
                unsafe { dot_rows_dequant(t, &x, m, &ws, nr, k, &mut out) };
                let same = (0..m).all(|i| (0..nr).all(|j| out[i][j].to_bits() == want(i, j)));
                assert!(same, "{t} m {m} nr {nr}");
            }
        }
    }
}
