//! The pool's invariants under admission, growth and release, and the page format's round trip.

use super::*;

fn layout(block_size: usize) -> KvLayout {
    KvLayout { n_layers: 2, n_kv_heads: 2, head_dim: 4, block_size }
}

/// Fills every row of `id` with values derived from (layer, position), as a forward pass would.
fn fill(kv: &mut PagedKv, id: SeqId) {
    for layer in 0..2 {
        for p in 0..kv.len(id).unwrap() {
            let (k, v) = kv.row_mut(id, layer, p);
            k.iter_mut().enumerate().for_each(|(i, x)| *x = (layer * 1000 + p * 10 + i) as f32);
            v.iter_mut().enumerate().for_each(|(i, x)| *x = -((layer * 1000 + p * 10 + i) as f32));
        }
    }
}

#[test]
fn reservations_gate_admission_and_growth_never_fails_within_them() {
    let mut kv = PagedKv::new(layout(4), 10);
    let a = kv.add_sequence(17).unwrap(); // 5 blocks promised
    assert_eq!(kv.available_blocks(), 5);
    assert!(kv.can_admit(20) && !kv.can_admit(21));
    let err = kv.add_sequence(24).unwrap_err();
    assert_eq!(err.error_type(), "kv_capacity");
    let b = kv.add_sequence(8).unwrap();
    kv.check().unwrap();
    for len in 1..=17 {
        kv.grow(a, len).unwrap();
        kv.check().unwrap();
    }
    assert_eq!(kv.available_blocks(), 3);
    // Past its reservation a sequence draws on unreserved blocks, and fails cleanly without them.
    kv.grow(a, 28).unwrap();
    assert_eq!(kv.available_blocks(), 1);
    assert_eq!(kv.grow(a, 40).unwrap_err().error_type(), "kv_capacity");
    assert_eq!(kv.len(a).unwrap(), 28);
    kv.check().unwrap();
    kv.release(a);
    kv.grow(b, 8).unwrap();
    kv.check().unwrap();
    kv.release(b);
    kv.check().unwrap();
    assert_eq!(kv.available_blocks(), 10);
    assert_eq!(kv.n_sequences(), 0);
}

#[test]
fn pages_round_trip_between_pools_with_different_block_sizes() {
    let mut src = PagedKv::new(layout(4), 8);
    let id = src.add_sequence(0).unwrap();
    src.grow(id, 11).unwrap();
    fill(&mut src, id);
    let bytes = src.export(id).unwrap();
    assert_eq!(bytes.len(), PageHeader::byte_len(src.layout(), 11));
    let h = PageHeader::parse(&bytes).unwrap();
    assert_eq!((h.len, h.layout), (11, *src.layout()));

    let mut dst = PagedKv::new(layout(3), 20);
    let other = dst.add_sequence(5).unwrap(); // so the import does not start at block 0
    let got = dst.import(&bytes, 30).unwrap();
    dst.check().unwrap();
    assert_eq!(dst.len(got).unwrap(), 11);
    assert_eq!(dst.available_blocks(), 20 - 2 - 10);
    let mut want = PagedKv::new(layout(3), 4);
    let w = want.add_sequence(0).unwrap();
    want.grow(w, 11).unwrap();
    fill(&mut want, w);
    assert_eq!(dst.export(got).unwrap(), want.export(w).unwrap());
    dst.release(other);
    dst.release(got);
    dst.check().unwrap();
}

#[test]
fn bad_pages_are_rejected_before_any_block_is_taken() {
    let mut src = PagedKv::new(layout(4), 4);
    let id = src.add_sequence(6).unwrap();
    src.grow(id, 6).unwrap();
    let bytes = src.export(id).unwrap();
    let mut dst = PagedKv::new(layout(4), 4);
    for bad in [&bytes[..bytes.len() - 4], &bytes[..10]] {
        assert_eq!(dst.import(bad, 0).unwrap_err().error_type(), "kv_cache");
    }
    let mut wrong = PagedKv::new(KvLayout { n_kv_heads: 1, ..layout(4) }, 4);
    assert_eq!(wrong.import(&bytes, 0).unwrap_err().error_type(), "kv_cache");
    let mut small = PagedKv::new(layout(4), 1);
    assert_eq!(small.import(&bytes, 0).unwrap_err().error_type(), "kv_capacity");
    assert_eq!((dst.available_blocks(), small.available_blocks()), (4, 1));
    dst.check().unwrap();
}

/// The GPU cache keeps its tables in a tables-only pool: same allocator and block tables as a
/// host pool, no host rows, and a clear error where rows would be needed.
#[test]
fn tables_only_pool_allocates_like_a_host_pool_and_refuses_row_access() {
    let (mut host, mut tables) = (PagedKv::new(layout(4), 6), PagedKv::tables_only(layout(4), 6));
    assert!(host.has_host_data() && !tables.has_host_data());
    for kv in [&mut host, &mut tables] {
        let a = kv.add_sequence(9).unwrap();
        kv.grow(a, 9).unwrap();
        kv.check().unwrap();
    }
    let (ha, ta) = (host.seqs.keys().next().copied().unwrap(), tables.seqs.keys().next().copied().unwrap());
    assert_eq!(host.block_table(ha).unwrap(), tables.block_table(ta).unwrap());
    assert_eq!((tables.n_blocks(), tables.available_blocks()), (6, 3));
    assert!(tables.data.is_empty());
    let e = tables.export(ta).unwrap_err().to_string();
    assert!(e.contains("tables-only"), "{e}");
    let pages = host.export(ha).unwrap();
    assert!(tables.import(&pages, 0).unwrap_err().to_string().contains("tables-only"));
}

#[test]
fn forks_share_full_blocks_and_copy_the_partial_one() {
    let mut kv = PagedKv::new(layout(4), 12);
    let a = kv.add_sequence(10).unwrap();
    kv.grow(a, 10).unwrap(); // blocks 0, 1 full; block 2 holds 2 of 4 rows
    fill(&mut kv, a);
    let before = kv.export(a).unwrap();
    assert_eq!(kv.fork_cost(10, 14), 2, "4 blocks for 14 tokens, 2 of them shared");
    let available = kv.available_blocks();
    let b = kv.fork(a, 14).unwrap();
    kv.check().unwrap();
    assert_eq!(kv.available_blocks(), available - 2);
    assert_eq!(kv.block_table(a).unwrap()[..2], kv.block_table(b).unwrap()[..2]);
    assert_ne!(kv.block_table(a).unwrap()[2], kv.block_table(b).unwrap()[2]);
    assert_eq!(kv.export(b).unwrap(), before, "a fork reads as its source");
    // Each writes its next rows into a block of its own; the other does not see them.
    kv.grow(a, 11).unwrap();
    kv.grow(b, 13).unwrap();
    kv.row_mut(b, 0, 10).0.fill(7.0);
    kv.row_mut(a, 0, 10).0.fill(-7.0);
    kv.check().unwrap();
    assert_eq!(kv.layer_blocks(b, 0)[2].0[2 * 8], 7.0);
    assert_eq!(kv.layer_blocks(a, 0)[2].0[2 * 8], -7.0);
    // Shared blocks go back to the pool with their last holder only.
    kv.release(a);
    kv.check().unwrap();
    let first_row: Vec<f32> = (0..8).map(|i| i as f32).collect();
    assert_eq!(kv.layer_blocks(b, 0)[0].0[..8], first_row[..], "the shared block is b's alone now, unchanged");
    kv.release(b);
    kv.check().unwrap();
    assert_eq!(kv.available_blocks(), 12);
    // A fork of a sequence that ends on a block boundary copies nothing.
    let c = kv.add_sequence(8).unwrap();
    kv.grow(c, 8).unwrap();
    let d = kv.fork(c, 9).unwrap();
    assert_eq!(kv.fork_cost(8, 9), 1);
    assert_eq!(kv.block_table(d).unwrap(), kv.block_table(c).unwrap());
    kv.check().unwrap();
    assert_eq!(kv.fork(c, 1000).unwrap_err().error_type(), "kv_capacity");
    kv.check().unwrap();
}

/// A tables-only pool forks by bookkeeping alone and names the block its owner must copy; the
/// tables match a host pool's fork exactly.
#[test]
fn tables_only_forks_name_the_block_to_copy() {
    let (mut host, mut tables) = (PagedKv::new(layout(4), 12), PagedKv::tables_only(layout(4), 12));
    let (ha, ta) = (host.add_sequence(10).unwrap(), tables.add_sequence(10).unwrap());
    host.grow(ha, 10).unwrap();
    tables.grow(ta, 10).unwrap();
    assert!(tables.fork(ta, 14).unwrap_err().to_string().contains("tables-only"), "rows would be needed");
    tables.check().unwrap();
    let hb = host.fork(ha, 14).unwrap();
    let (tb, copy) = tables.fork_tables(ta, 14).unwrap();
    tables.check().unwrap();
    assert_eq!(host.block_table(hb).unwrap(), tables.block_table(tb).unwrap());
    assert_eq!(copy, Some((tables.block_table(ta).unwrap()[2], tables.block_table(tb).unwrap()[2])));
    assert_eq!(host.available_blocks(), tables.available_blocks());
    // On a block boundary nothing is copied, and `fork` works on tables alone.
    let c = tables.add_sequence(8).unwrap();
    tables.grow(c, 8).unwrap();
    assert_eq!(tables.fork_tables(c, 9).unwrap().1, None);
    assert!(tables.fork(c, 9).is_ok());
    tables.check().unwrap();
}
