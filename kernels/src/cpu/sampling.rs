//! Token choice given the uniform random number from the host, the reference for `sampling.cu`.
//!
//! The rules are the engine's: NaN counts as -inf; ties go to the lower id; temperature <= 0 or
//! `top_k == 1` is greedy; otherwise top_k, then top_p (keep a token while the mass before it is
//! <= top_p, the first always), then min_p, all on the temperature-scaled softmax over the whole
//! vocabulary; finally the kept tokens, in descending order, are walked with `u * kept mass`.

/// Filters of one row; the defaults switch every filter off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// <= 0 means greedy.
    pub temperature: f32,
    /// 0 means off.
    pub top_k: usize,
    /// 1 means off.
    pub top_p: f32,
    /// 0 means off.
    pub min_p: f32,
}

impl Default for SampleParams {
    fn default() -> Self {
        SampleParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0 }
    }
}

fn key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// Index of the largest logit, the lowest on ties; NaN never wins over a number.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if key(x) > key(logits[best]) {
            best = i;
        }
    }
    best as u32
}

/// The sampled token for uniform `u` in `[0, 1)`.
pub fn sample(logits: &[f32], p: &SampleParams, u: f64) -> u32 {
    assert!(!logits.is_empty(), "sample: empty logits");
    if p.temperature <= 0.0 || p.top_k == 1 {
        return argmax(logits);
    }
    let max = logits.iter().map(|&x| key(x)).fold(f32::NEG_INFINITY, f32::max) as f64;
    if max == f64::NEG_INFINITY {
        return argmax(logits);
    }
    let inv_t = 1.0 / p.temperature as f64;
    let mut probs: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &x)| (i as u32, ((key(x) as f64 - max) * inv_t).exp())).collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));

    let mut keep = probs.len();
    if p.top_k > 0 {
        keep = keep.min(p.top_k);
    }
    if p.top_p < 1.0 {
        let mut before = 0.0;
        let top_p = p.top_p as f64;
        let n = probs[..keep].iter().take_while(|q| {
            let ok = before <= top_p;
            before += q.1;
            ok
        });
        keep = n.count().max(1);
    }
    if p.min_p > 0.0 {
        let threshold = probs[0].1 * p.min_p as f64;
        keep = probs[..keep].iter().take_while(|q| q.1 >= threshold).count().max(1);
    }
    let kept = &probs[..keep];
    let target = u * kept.iter().map(|q| q.1).sum::<f64>();
    let mut acc = 0.0;
    for q in kept {
        acc += q.1;
        if target < acc {
            return q.0;
        }
    }
    kept[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_ties() {
        let g = SampleParams { temperature: 0.0, ..Default::default() };
        assert_eq!(sample(&[0.0, 3.0, 3.0, 1.0], &g, 0.5), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn u_walks_the_descending_order() {
        // probs ~ [0.09, 0.67, 0.24]: sorted ids 1, 2, 0.
        let l = [0.0, 2.0, 1.0];
        let p = SampleParams::default();
        assert_eq!(sample(&l, &p, 0.0), 1);
        assert_eq!(sample(&l, &p, 0.7), 2);
        assert_eq!(sample(&l, &p, 0.99), 0);
        let k2 = SampleParams { top_k: 2, ..p };
        assert_eq!(sample(&l, &k2, 0.99), 2, "top_k 2 drops id 0");
        let p05 = SampleParams { top_p: 0.5, ..p };
        assert_eq!(sample(&l, &p05, 0.99), 1, "0.67 > 0.5: only the first stays");
        let m = SampleParams { min_p: 0.5, ..p };
        assert_eq!(sample(&l, &m, 0.99), 1, "0.24 / 0.67 < 0.5");
    }
}
