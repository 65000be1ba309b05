//! Random but valid blocks for fixtures: random quants, and f16 scales that are finite and
//! sized so the dequantized weights spread like the engine's random checkpoints (std ~0.15),
//! which keeps greedy decisions far from ties.

use half::{bf16, f16};

use super::QuantType;

/// A small deterministic generator (the kernels crate has no `rand` dependency).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }

    /// Uniform in `[-1, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
}

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// `n` weights of type `t` (a whole number of blocks) as stored bytes.
pub fn random_blocks(t: QuantType, n: usize, rng: &mut Lcg) -> Vec<u8> {
    let bytes = t.bytes_for(n).expect("random_blocks: whole blocks");
    let mut out: Vec<u8> = (0..bytes).map(|_| rng.next_u32() as u8).collect();
    let scale = |base: f32, rng: &mut Lcg| base * (1.0 + 0.5 * rng.next_f32());
    for b in out.chunks_exact_mut(t.block_bytes()) {
        match t {
            QuantType::F32 => b.copy_from_slice(&(0.26 * rng.next_f32()).to_le_bytes()),
            QuantType::F16 => put_f16(b, 0, 0.26 * rng.next_f32()),
            QuantType::BF16 => b.copy_from_slice(&bf16::from_f32(0.26 * rng.next_f32()).to_le_bytes()),
            QuantType::Q4_0 => put_f16(b, 0, scale(0.033, rng)),
            QuantType::Q4_1 => {
                put_f16(b, 0, scale(0.033, rng));
                put_f16(b, 2, -scale(0.25, rng));
            }
            QuantType::Q8_0 => put_f16(b, 0, scale(0.002, rng)),
            QuantType::Q4_K => {
                put_f16(b, 0, scale(0.001, rng));
                put_f16(b, 2, scale(0.008, rng));
            }
            QuantType::Q6_K => {
                // Scales in [-64, 63], so `d * scale` stays near the other types' spread.
                for s in &mut b[192..208] {
                    *s = ((*s as i8) / 2) as u8;
                }
                put_f16(b, 208, scale(0.00025, rng));
            }
        }
    }
    out
}
