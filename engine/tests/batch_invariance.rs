//! A request's tokens depend only on the request: identical alone or in continuous batches of 1,
//! 7 and 32 mixed-length requests, prefilled together or one by one, and equal to the
//! single-sequence `Model::prefill` / `decode_step` path. Compared bit for bit, logits included.
//! The same holds for a GGUF model with quantized weights, whose small batches take the fused
//! kernel and large ones the dequantized-panel kernel.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::OnceLock;

use pdq_engine::{tiny, Model, PagedKv, SeqId};

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = tiny::cached_in(Path::new(env!("CARGO_TARGET_TMPDIR"))).expect("tiny model");
        Model::load(&dir).expect("load tiny model")
    })
}

/// 32 prompts of 1 to 61 tokens, and how many tokens each generates (so they leave at different steps).
fn requests(m: &Model) -> Vec<(Vec<u32>, usize)> {
    let vocab = m.config.vocab_size as u32;
    (0..32u32)
        .map(|i| {
            let len = 1 + (i * 29 % 61) as usize;
            let prompt = (0..len as u32).map(|j| (i * 131 + j * 17 + j * j) % (vocab - 3) + 3).collect();
            (prompt, 3 + (i as usize * 5) % 9)
        })
        .collect()
}

/// Each step's greedy token and the bits of its whole logits row.
type Trace = Vec<(u32, Vec<u32>)>;

fn step(logits: &[f32]) -> (u32, Vec<u32>) {
    let best = logits.iter().enumerate().fold(0, |b, (i, &x)| if x > logits[b] { i } else { b });
    (best as u32, logits.iter().map(|x| x.to_bits()).collect())
}

/// Continuous batching: at most `max_running` sequences decode together; waiting requests join
/// as others finish, prefilled in one batch (`prefill_together`) or one at a time.
fn run(m: &Model, reqs: &[(Vec<u32>, usize)], max_running: usize, prefill_together: bool) -> Vec<Trace> {
    let mut kv: PagedKv = m.new_paged_kv(4096);
    let mut traces: Vec<Trace> = vec![Vec::new(); reqs.len()];
    let mut waiting: VecDeque<usize> = (0..reqs.len()).collect();
    let mut running: Vec<(usize, SeqId)> = Vec::new();
    while !waiting.is_empty() || !running.is_empty() {
        let mut joining = Vec::new();
        while running.len() + joining.len() < max_running {
            let Some(r) = waiting.pop_front() else { break };
            let max_len = reqs[r].0.len() + reqs[r].1;
            joining.push((r, kv.add_sequence(max_len).unwrap()));
        }
        let batches: Vec<Vec<(usize, SeqId)>> =
            if prefill_together { vec![joining.clone()] } else { joining.iter().map(|&j| vec![j]).collect() };
        for group in batches.iter().filter(|g| !g.is_empty()) {
            let items: Vec<(SeqId, &[u32])> = group.iter().map(|&(r, s)| (s, &reqs[r].0[..])).collect();
            for (&(r, _), logits) in group.iter().zip(m.forward_batch(&mut kv, &items).unwrap()) {
                traces[r].push(step(&logits));
            }
        }
        running.extend(joining);
        running.retain(|&(r, s)| {
            let done = traces[r].len() >= reqs[r].1;
            if done {
                kv.release(s);
            }
            !done
        });
        if running.is_empty() {
            continue;
        }
        let last: Vec<[u32; 1]> = running.iter().map(|&(r, _)| [traces[r].last().unwrap().0]).collect();
        let items: Vec<(SeqId, &[u32])> = running.iter().zip(&last).map(|(&(_, s), t)| (s, &t[..])).collect();
        for (&(r, _), logits) in running.iter().zip(m.forward_batch(&mut kv, &items).unwrap()) {
            traces[r].push(step(&logits));
        }
        kv.check().unwrap();
    }
    assert_eq!(kv.n_sequences(), 0);
    assert_eq!(kv.available_blocks(), kv.n_blocks(), "every block is back in the pool");
    traces
}

/// The Q4_1 GGUF fixture (Q8_0 would do too: both have fused and panel kernels).
fn quantized_model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("batch-invariance-gguf-{}", std::process::id()));
        pdq_engine::gguf::fixture::write(pdq_kernels::QuantType::Q4_1, &dir).expect("GGUF fixture");
        let m = Model::load(&dir.join("model.gguf")).expect("load GGUF fixture");
        let _ = std::fs::remove_dir_all(&dir);
        m
    })
}

#[test]
fn tokens_do_not_depend_on_batch_composition() {
    assert_batch_invariant(model());
}

#[test]
fn quantized_tokens_do_not_depend_on_batch_composition() {
    assert_batch_invariant(quantized_model());
}

fn assert_batch_invariant(m: &Model) {
    let reqs = requests(m);
    let alone = run(m, &reqs, 1, false);
    for (r, t) in alone.iter().enumerate() {
        assert_eq!(t.len(), reqs[r].1, "request {r} generated the wrong number of tokens");
    }
    for (max_running, together) in [(1, true), (7, true), (7, false), (32, true), (32, false)] {
        let got = run(m, &reqs, max_running, together);
        for (r, (a, b)) in alone.iter().zip(&got).enumerate() {
            let tokens = |t: &Trace| t.iter().map(|s| s.0).collect::<Vec<_>>();
            assert_eq!(
                tokens(a),
                tokens(b),
                "request {r}: tokens differ in batches of {max_running} (prefill together: {together})"
            );
            assert!(
                a == b,
                "request {r}: logits bits differ in batches of {max_running} (prefill together: {together})"
            );
        }
    }
}

#[test]
fn batched_engine_matches_the_single_sequence_api() {
    let m = model();
    let reqs = requests(m);
    let batched = run(m, &reqs, 32, true);
    for (r, (prompt, n)) in reqs.iter().enumerate().step_by(5) {
        let (mut kv, mut logits) = m.prefill(prompt).unwrap();
        let mut trace = vec![step(&logits)];
        while trace.len() < *n {
            logits = m.decode_step(&mut kv, trace.last().unwrap().0).unwrap();
            trace.push(step(&logits));
        }
        assert!(trace == batched[r], "request {r}: KvCache path differs from the batched engine");
    }
}

#[test]
fn a_rejected_batch_changes_nothing() {
    let m = model();
    let mut kv = m.new_paged_kv(4);
    let a = kv.add_sequence(16).unwrap();
    let b = kv.add_sequence(16).unwrap();
    let bad = [m.config.vocab_size as u32];
    let err = m.forward_batch(&mut kv, &[(a, &[1, 2, 3][..]), (b, &bad[..])]).unwrap_err();
    assert_eq!(err.error_type(), "invalid_input");
    assert_eq!((kv.len(a).unwrap(), kv.len(b).unwrap()), (0, 0));
    let err = m.forward_batch(&mut kv, &[(a, &[1][..]), (a, &[2][..])]).unwrap_err();
    assert_eq!(err.error_type(), "invalid_input");
    // 50 tokens need 4 blocks: `a` has 1 promised, and only 2 of the 4 are unreserved.
    let long = [5u32; 50];
    assert_eq!(m.forward_batch(&mut kv, &[(a, &long[..])]).unwrap_err().error_type(), "kv_capacity");
    kv.check().unwrap();
}
