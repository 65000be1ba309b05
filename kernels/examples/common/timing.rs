//! Shared by the kernel examples (a folder without `main.rs`, so cargo does not take it for an
//! example of its own).

use std::time::Instant;

/// Median seconds per call of `f` over `reps` calls, after one warm-up call.
pub fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}
