//! Each op against a naive `f64` reference on small random inputs.

use super::*;

/// Small deterministic generator so the kernels crate needs no `rand` dependency.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn assert_close(a: &[f32], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((*x as f64 - y).abs() <= tol * (1.0 + y.abs()), "index {i}: {x} vs {y}");
    }
}

#[test]
fn matmul_matches_naive_with_and_without_bias() {
    let mut r = Lcg(1);
    for &(m, k, n) in &[(1, 1, 1), (3, 7, 5), (4, 19, 9), (2, 64, 3)] {
        let x = r.vec(m * k);
        let w = r.vec(n * k);
        let bias = r.vec(n);
        for with_bias in [false, true] {
            let mut y = vec![f32::NAN; m * n];
            matmul(&x, &w, with_bias.then_some(&bias[..]), k, &mut y);
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut s = if with_bias { bias[j] as f64 } else { 0.0 };
                    for l in 0..k {
                        s += x[i * k + l] as f64 * w[j * k + l] as f64;
                    }
                    want[i * n + j] = s;
                }
            }
            assert_close(&y, &want, 1e-5);
        }
    }
}

#[test]
fn matmul_row_is_independent_of_batch() {
    let mut r = Lcg(2);
    let (k, n) = (37, 11);
    let x = r.vec(5 * k);
    let w = r.vec(n * k);
    let mut full = vec![0f32; 5 * n];
    matmul(&x, &w, None, k, &mut full);
    for i in 0..5 {
        let mut one = vec![0f32; n];
        matmul(&x[i * k..(i + 1) * k], &w, None, k, &mut one);
        assert_eq!(&full[i * n..(i + 1) * n], &one[..], "row {i} differs bitwise");
    }
}

#[test]
fn rms_norm_matches_naive() {
    let mut r = Lcg(3);
    let (rows, d) = (3, 10);
    let x = r.vec(rows * d);
    let w = r.vec(d);
    let mut y = vec![0f32; rows * d];
    rms_norm(&x, &w, 1e-5, &mut y);
    let mut want = vec![0f64; rows * d];
    for i in 0..rows {
        let ms: f64 = x[i * d..(i + 1) * d].iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
        for j in 0..d {
            want[i * d + j] = x[i * d + j] as f64 / (ms + 1e-5).sqrt() * w[j] as f64;
        }
    }
    assert_close(&y, &want, 1e-5);
}

#[test]
fn softmax_matches_naive_and_sums_to_one() {
    let mut r = Lcg(4);
    let mut x: Vec<f32> = r.vec(13).iter().map(|v| v * 50.0).collect();
    let max = x.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
    let z: f64 = x.iter().map(|v| (*v as f64 - max).exp()).sum();
    let want: Vec<f64> = x.iter().map(|v| (*v as f64 - max).exp() / z).collect();
    softmax_inplace(&mut x);
    assert_close(&x, &want, 1e-5);
    assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}

#[test]
fn silu_mul_matches_naive() {
    let mut r = Lcg(5);
    let g: Vec<f32> = r.vec(17).iter().map(|v| v * 8.0).collect();
    let u = r.vec(17);
    let mut out = vec![0f32; 17];
    silu_mul(&g, &u, &mut out);
    let want: Vec<f64> = g.iter().zip(&u).map(|(g, u)| *g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64).collect();
    assert_close(&out, &want, 1e-5);
}

#[test]
fn rope_position_zero_is_identity_and_norm_is_preserved() {
    let mut r = Lcg(6);
    let (heads, hd) = (3, 8);
    let inv = rope_inv_freq(hd, 10000.0);
    let orig = r.vec(2 * heads * hd);
    let mut x = orig.clone();
    rope_inplace(&mut x, heads, &[0, 17], &inv);
    assert_eq!(&x[..heads * hd], &orig[..heads * hd], "position 0 must be the identity");
    for h in 0..heads {
        let base = heads * hd + h * hd;
        for i in 0..hd / 2 {
            let n0 = orig[base + i].hypot(orig[base + i + hd / 2]);
            let n1 = x[base + i].hypot(x[base + i + hd / 2]);
            assert!((n0 - n1).abs() < 1e-5, "pair ({i}, {}) norm changed", i + hd / 2);
        }
    }
}

#[test]
fn rope_rotates_pairs_i_and_i_plus_half() {
    let (hd, theta, pos) = (4, 100.0, 3usize);
    let inv = rope_inv_freq(hd, theta);
    assert_eq!(inv, vec![1.0, 0.1]);
    // A unit vector in slot i must move only into slot i + d/2.
    let mut x = vec![1.0, 0.0, 0.0, 0.0];
    rope_inplace(&mut x, 1, &[pos], &inv);
    let a = pos as f64 * 1.0;
    assert_close(&x, &[a.cos(), 0.0, a.sin(), 0.0], 1e-6);
    let mut x = vec![0.0, 0.0, 0.0, 1.0];
    rope_inplace(&mut x, 1, &[pos], &inv);
    let a = pos as f64 * 0.1;
    assert_close(&x, &[0.0, -a.sin(), 0.0, a.cos()], 1e-6);
}

#[test]
fn attention_matches_naive_gqa() {
    let mut r = Lcg(7);
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 8 };
    let len = 5;
    let q = r.vec(4 * 8);
    let k = r.vec(len * 2 * 8);
    let v = r.vec(len * 2 * 8);
    let mut out = vec![f32::NAN; 4 * 8];
    attention(&q, &k, &v, shape, &mut out);
    let mut want = vec![0f64; 4 * 8];
    for h in 0..4 {
        let kvh = h / 2;
        let s: Vec<f64> = (0..len)
            .map(|t| (0..8).map(|d| q[h * 8 + d] as f64 * k[t * 16 + kvh * 8 + d] as f64).sum::<f64>() / 8f64.sqrt())
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        for d in 0..8 {
            want[h * 8 + d] = (0..len).map(|t| (s[t] - m).exp() / z * v[t * 16 + kvh * 8 + d] as f64).sum();
        }
    }
    assert_close(&out, &want, 1e-5);
}

#[test]
fn backend_dispatches_to_cpu() {
    let b = crate::Backend::cpu();
    assert_eq!(b.name(), "cpu");
    let mut y = vec![0f32; 1];
    b.matmul(&[1.0, 2.0], &[3.0, 4.0], Some(&[0.5]), 2, &mut y);
    assert_eq!(y, vec![11.5]);
}

#[test]
fn llama3_scaling_with_factor_one_is_the_plain_table() {
    let s = Llama3RopeScaling {
        factor: 1.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let (a, b) = (rope_inv_freq_llama3(64, 500000.0, s), rope_inv_freq(64, 500000.0));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-7 * y.abs(), "{x} vs {y}");
    }
    // Llama 3.1 values: the highest frequency is untouched, the lowest divided by 8.
    let s = Llama3RopeScaling { factor: 8.0, ..s };
    let a = rope_inv_freq_llama3(128, 500000.0, s);
    let b = rope_inv_freq(128, 500000.0);
    assert_eq!(a[0], b[0]);
    assert!((a[63] * 8.0 - b[63]).abs() <= 1e-6 * b[63]);
}

/// A cache whose blocks are deliberately out of order, and the contiguous rows it holds.
fn scattered_cache(
    r: &mut Lcg,
    lens: &[usize],
    bs: usize,
    row: usize,
) -> (Vec<f32>, Vec<f32>, crate::paged::BlockTables, Vec<Vec<f32>>) {
    let total: usize = lens.iter().map(|&l| crate::paged::blocks_for(l, bs)).sum();
    let num_blocks = total + 3;
    // Hand out blocks from the end, skipping one, so tables are neither contiguous nor sorted.
    let mut free: Vec<u32> = (0..num_blocks as u32).rev().filter(|b| b % 4 != 1).collect();
    let mut k_cache = vec![f32::NAN; num_blocks * bs * row];
    let mut v_cache = k_cache.clone();
    let mut tables = Vec::new();
    let mut rows = Vec::new();
    for &len in lens {
        let table: Vec<u32> = (0..crate::paged::blocks_for(len, bs)).map(|_| free.remove(0)).collect();
        let (k, v) = (r.vec(len * row), r.vec(len * row));
        kv_write(&mut k_cache, &mut v_cache, &k, &v, &crate::paged::slot_mapping(&table, 0, len, bs), row);
        tables.push(table);
        rows.push(k.into_iter().chain(v).collect());
    }
    (k_cache, v_cache, crate::paged::BlockTables::new(&tables), rows)
}

#[test]
fn paged_decode_equals_contiguous_attention() {
    let mut r = Lcg(8);
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 8 };
    let (bs, row) = (4, 16);
    let lens = [5usize, 1, 9, 0];
    let (kc, vc, tables, rows) = scattered_cache(&mut r, &lens, bs, row);
    let q = r.vec(lens.len() * 32);
    let ctx: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    let mut out = vec![f32::NAN; q.len()];
    paged_attention_decode(&q, &kc, &vc, &tables, &ctx, shape, bs, &mut out);
    for (s, &len) in lens.iter().enumerate() {
        let got = &out[s * 32..(s + 1) * 32];
        if len == 0 {
            assert!(got.iter().all(|&x| x == 0.0), "a zero-length row gives zeros");
            continue;
        }
        let (k, v) = rows[s].split_at(len * row);
        let mut want = vec![0f32; 32];
        attention(&q[s * 32..(s + 1) * 32], k, v, shape, &mut want);
        assert_eq!(got, &want[..], "sequence {s}");
    }
}

#[test]
fn prefill_rows_see_exactly_their_prefix() {
    let mut r = Lcg(9);
    let shape = AttnShape { n_heads: 2, n_kv_heads: 1, head_dim: 4 };
    let (bs, row) = (3, 4);
    // Sequence 0: a fresh 5-token prompt; sequence 1: a 2-token chunk after 5 cached tokens.
    let (kc, vc, tables, rows) = scattered_cache(&mut r, &[5, 7], bs, row);
    let cu = crate::paged::cu_seqlens(&[5, 2]);
    let q = r.vec(7 * 8);
    let mut out = vec![f32::NAN; q.len()];
    prefill_attention(&q, &kc, &vc, &cu, &[5, 7], &tables, shape, bs, &mut out);
    for (qrow, (s, pos)) in [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6)].into_iter().enumerate() {
        let len = [5, 7][s];
        let (k, v) = rows[s].split_at(len * row);
        let mut want = vec![0f32; 8];
        attention(&q[qrow * 8..(qrow + 1) * 8], &k[..(pos + 1) * row], &v[..(pos + 1) * row], shape, &mut want);
        assert_eq!(&out[qrow * 8..(qrow + 1) * 8], &want[..], "query row {qrow}");
    }
}

#[test]
fn block_gather_and_scatter_round_trip() {
    let mut r = Lcg(10);
    let block = 6;
    let cache = r.vec(5 * block);
    let ids = [4, 0, 2];
    let mut pages = vec![f32::NAN; ids.len() * block];
    kv_gather_blocks(&cache, &ids, block, &mut pages);
    assert_eq!(&pages[..block], &cache[4 * block..5 * block]);
    let mut other = vec![f32::NAN; 5 * block];
    kv_scatter_blocks(&mut other, &pages, &[1, 3, 0], block);
    assert_eq!(&other[block..2 * block], &cache[4 * block..5 * block]);
    assert_eq!(&other[..block], &cache[2 * block..3 * block]);
    assert!(other[2 * block].is_nan(), "blocks not listed stay untouched");
}

#[test]
fn fast_matmul_is_bitwise_the_reference_for_every_shape() {
    let mut r = Lcg(8);
    // Covers tile edges (m % 4, n % 4, k % 8), the M_BLOCK edge and the threaded path.
    for &(m, k, n) in
        &[(1, 1, 1), (1, 7, 3), (3, 8, 5), (4, 19, 9), (5, 64, 6), (9, 172, 11), (70, 172, 300), (1, 768, 1029)]
    {
        let x = r.vec(m * k);
        let w = r.vec(n * k);
        let bias = r.vec(n);
        for b in [None, Some(&bias[..])] {
            let mut fast = vec![f32::NAN; m * n];
            let mut want = vec![f32::NAN; m * n];
            matmul(&x, &w, b, k, &mut fast);
            matmul_reference(&x, &w, b, k, &mut want);
            let same = fast.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "m {m} k {k} n {n} bias {}: fast matmul differs from the reference", b.is_some());
        }
    }
}

#[test]
fn matmul_rows_do_not_depend_on_batch_size() {
    let mut r = Lcg(9);
    let (k, n) = (172, 257);
    let x = r.vec(40 * k);
    let w = r.vec(n * k);
    let mut alone = vec![0f32; 40 * n];
    for i in 0..40 {
        matmul(&x[i * k..(i + 1) * k], &w, None, k, &mut alone[i * n..(i + 1) * n]);
    }
    for m in [2, 7, 32, 40] {
        let mut batch = vec![0f32; m * n];
        matmul(&x[..m * k], &w, None, k, &mut batch);
        assert_eq!(&batch[..], &alone[..m * n], "batch of {m} differs from rows run alone");
    }
}

#[test]
fn paged_attention_equals_contiguous_for_any_block_size() {
    let mut r = Lcg(10);
    let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 8 };
    let row = 16;
    for len in [1, 5, 16, 17, 40] {
        let q = r.vec(32);
        let k = r.vec(len * row);
        let v = r.vec(len * row);
        let mut want = vec![0f32; 32];
        attention(&q, &k, &v, shape, &mut want);
        for bs in [1, 3, 16, 64] {
            // Scatter the rows into blocks with junk after `len`, as a pool would hold them.
            let nb = len.div_ceil(bs);
            let (mut kb, mut vb) = (r.vec(nb * bs * row), r.vec(nb * bs * row));
            kb[..len * row].copy_from_slice(&k);
            vb[..len * row].copy_from_slice(&v);
            let blocks: Vec<(&[f32], &[f32])> = kb.chunks(bs * row).zip(vb.chunks(bs * row)).collect();
            let mut got = vec![f32::NAN; 32];
            attention_paged(&q, &blocks, len, bs, shape, &mut got);
            assert_eq!(got, want, "len {len} block size {bs}");
        }
    }
}
