//! Host-side parts of the GPU forward that need no GPU: how a mixed batch is packed.

use pdq_kernels::paged::BlockTables;

use super::forward::plan;
use crate::model::Model;
use crate::paged::{PagedKv, DEFAULT_BLOCK_SIZE};

fn tiny() -> Model {
    let dir = crate::tiny::cached_in(&std::env::temp_dir().join("pdq-engine-unit")).expect("tiny model");
    Model::load(&dir).expect("load tiny model")
}

#[test]
fn decode_rows_are_packed_first_and_logits_rows_follow_batch_order() {
    let m = tiny();
    let mut kv = PagedKv::tables_only(m.kv_layout(DEFAULT_BLOCK_SIZE), 16);
    let (a, b) = (kv.add_sequence(40).unwrap(), kv.add_sequence(40).unwrap());
    // a: 20-token prompt (prefill), then one token (decode); b: 3-token prompt in the same step.
    let p0 = plan(&m, &mut kv, &[(a, &[5; 20])]).unwrap();
    assert_eq!((p0.n_dec, p0.pre_cu.clone(), p0.pre_max_q, p0.last_rows.clone()), (0, vec![0, 20], 20, vec![19]));
    assert_eq!(p0.slots[16], kv.block_table(a).unwrap()[1] as i64 * 16, "position 16 opens a's second block");
    let p = plan(&m, &mut kv, &[(b, &[7, 8, 9]), (a, &[6])]).unwrap();
    assert_eq!(p.n_dec, 1);
    assert_eq!(p.ids, vec![6, 7, 8, 9], "a's decode row first, then b's chunk");
    assert_eq!(p.positions, vec![20, 0, 1, 2]);
    assert_eq!(p.last_rows, vec![3, 0], "batch order: b's last row is 3, a's is 0");
    assert_eq!((p.dec_ctx.clone(), p.pre_ctx.clone(), p.pre_cu.clone()), (vec![21], vec![3], vec![0, 3]));
    let ta: Vec<Vec<u32>> = vec![kv.block_table(a).unwrap().to_vec()];
    assert_eq!(p.dec_tables, BlockTables::new(&ta));
    assert_eq!(p.slots[0], ta[0][1] as i64 * 16 + 4);
    // A rejected batch changes nothing.
    let before = (kv.len(a).unwrap(), kv.available_blocks());
    assert!(plan(&m, &mut kv, &[(a, &[1]), (a, &[2])]).is_err());
    assert_eq!((kv.len(a).unwrap(), kv.available_blocks()), before);
}

/// Staging <-> pages on the host, against the CPU pool's own export: same bytes for the same
/// block size, and re-slotted rows for pages from a pool with another block size.
#[test]
fn staging_copies_round_trip_the_page_format() {
    use super::pages::{fill_staging, write_rows};
    use crate::paged::{KvLayout, PageHeader};

    let layout = |block_size| KvLayout { n_layers: 2, n_kv_heads: 2, head_dim: 4, block_size };
    let len = 21;
    // Values exact in bf16 (small integers), distinct per (layer, k|v, position, element).
    let fill = |kv: &mut PagedKv, id| {
        for layer in 0..2 {
            for p in 0..len {
                let (k, v) = kv.row_mut(id, layer, p);
                k.iter_mut().enumerate().for_each(|(i, x)| *x = (layer * 100 + p * 4 + i) as f32);
                v.iter_mut().enumerate().for_each(|(i, x)| *x = -((layer * 100 + p * 4 + i) as f32));
            }
        }
    };
    for sender_bs in [16, 4] {
        let mut cpu = PagedKv::new(layout(sender_bs), 8);
        let id = cpu.add_sequence(len).unwrap();
        cpu.grow(id, len).unwrap();
        fill(&mut cpu, id);
        let pages = cpu.export(id).unwrap();
        let h = PageHeader::parse(&pages).unwrap();
        let mine = layout(16);
        let nb = mine.blocks_for(len);
        let mut staging = vec![half::bf16::ZERO; mine.n_layers * 2 * nb * mine.block_elems()];
        fill_staging(&mine, &h, &pages, nb, &mut staging);
        let mut out = Vec::new();
        PageHeader { layout: mine, len }.write(&mut out);
        write_rows(&mine, len, nb, &staging, &mut out);
        // What a block-size-16 CPU pool exports after importing the same pages.
        let mut reference = PagedKv::new(mine, 8);
        let rid = reference.import(&pages, 0).unwrap();
        assert_eq!(out, reference.export(rid).unwrap(), "sender block size {sender_bs}");
    }
}

/// The device sampler's per-row inputs: seeded draws carry their filters and the host's
/// uniform number; greedy draws (temperature 0, or top-k 1) and rows that want logits run the
/// kernel's greedy rule.
#[test]
fn sampling_rows_follow_the_hosts_draws() {
    use super::forward::{sampling_rows, SamplingRows};
    use crate::executor::{StepItem, Want};
    use crate::SamplingParams;

    let mut kv = PagedKv::tables_only(tiny().kv_layout(DEFAULT_BLOCK_SIZE), 8);
    let ids: Vec<_> = (0..4).map(|_| kv.add_sequence(4).unwrap()).collect();
    let seeded = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.9, min_p: 0.05, seed: 9, ..Default::default() };
    let top1 = SamplingParams { temperature: 0.8, top_k: 1, ..Default::default() };
    let draw = seeded.draw(3);
    let t = [1u32];
    let batch = [
        StepItem { seq: ids[0], tokens: &t, want: Want::Token(draw) },
        StepItem { seq: ids[1], tokens: &t, want: Want::Token(SamplingParams::default().draw(0)) },
        StepItem { seq: ids[2], tokens: &t, want: Want::Token(top1.draw(0)) },
        StepItem { seq: ids[3], tokens: &t, want: Want::Logits },
    ];
    let u = draw.uniform.expect("a seeded draw draws") as f32;
    assert_eq!(
        sampling_rows(&batch),
        SamplingRows {
            temperature: vec![0.8, 0.0, 0.0, 0.0],
            top_k: vec![40, 0, 1, 0],
            top_p: vec![0.9, 1.0, 1.0, 1.0],
            min_p: vec![0.05, 0.0, 0.0, 0.0],
            uniform: vec![u, 0.0, 0.0, 0.0],
        }
    );
}
