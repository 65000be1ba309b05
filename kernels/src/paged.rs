//! Paged KV layout, shared by the CPU references and the CUDA launchers.
//!
//! A layer's cache is `[num_blocks, block_size, n_kv_heads, head_dim]`. A sequence owns a list of
//! block ids (its block table); token `t` lives in block `table[t / block_size]` at offset
//! `t % block_size`, i.e. slot `table[t / block_size] * block_size + t % block_size`. Kernels
//! take the tables flattened to `[num_seqs, max_blocks]` `i32`, padded with block 0 (never read:
//! kernels stop at each sequence's context length). A slot of `-1` marks a padding token.

/// Tokens per block: small enough that the last, partly filled block wastes little, large
/// enough that a block's rows are contiguous for a sizeable stretch of attention.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// Geometry of a paged KV pool: the model's KV shape and the block size. The one definition for
/// every backend: the CPU pool (`pdq_engine::PagedKv`, a block holds every layer's rows), the
/// CUDA cache (one `[num_blocks, block_size, n_kv_heads, head_dim]` buffer per layer for K and
/// for V) and the page format that moves a sequence between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

impl KvLayout {
    /// Values in one token row of one layer's K (or V): `n_kv_heads * head_dim`.
    pub fn row(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Values in one block of one layer's K (or V).
    pub fn block_elems(&self) -> usize {
        self.block_size * self.row()
    }

    /// Values in one block across every layer, K and V.
    pub fn block_floats(&self) -> usize {
        self.n_layers * 2 * self.block_elems()
    }

    /// Blocks needed for `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        blocks_for(tokens, self.block_size)
    }
}

/// Blocks needed to hold `len` tokens.
pub fn blocks_for(len: usize, block_size: usize) -> usize {
    assert!(block_size > 0, "block_size must be > 0");
    len.div_ceil(block_size)
}

/// Slots for positions `start..start + n` of a sequence with block table `table`.
/// Panics when the table is too short: the allocator must reserve blocks before the write.
pub fn slot_mapping(table: &[u32], start: usize, n: usize, block_size: usize) -> Vec<i64> {
    assert!(
        blocks_for(start + n, block_size) <= table.len(),
        "slot_mapping: positions up to {} need {} blocks, table has {}",
        start + n,
        blocks_for(start + n, block_size),
        table.len()
    );
    (start..start + n).map(|t| table[t / block_size] as i64 * block_size as i64 + (t % block_size) as i64).collect()
}

/// Block tables flattened for a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTables {
    /// `[num_seqs, max_blocks]`, row-major, padded with block 0.
    pub flat: Vec<i32>,
    pub num_seqs: usize,
    pub max_blocks: usize,
}

impl BlockTables {
    pub fn new(tables: &[Vec<u32>]) -> BlockTables {
        let max_blocks = tables.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = vec![0i32; tables.len() * max_blocks];
        for (row, t) in flat.chunks_exact_mut(max_blocks).zip(tables) {
            for (dst, &b) in row.iter_mut().zip(t) {
                *dst = i32::try_from(b).expect("block id fits i32");
            }
        }
        BlockTables { flat, num_seqs: tables.len(), max_blocks }
    }

    /// Block ids of sequence `i`, padding included.
    pub fn row(&self, i: usize) -> &[i32] {
        &self.flat[i * self.max_blocks..(i + 1) * self.max_blocks]
    }
}

/// `[0, l0, l0 + l1, ...]`: where each sequence's rows start in a packed varlen batch.
pub fn cu_seqlens(lens: &[usize]) -> Vec<i32> {
    let mut out = Vec::with_capacity(lens.len() + 1);
    let mut acc = 0i32;
    out.push(0);
    for &l in lens {
        acc += i32::try_from(l).expect("sequence length fits i32");
        out.push(acc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_block_table() {
        // Block size 4, sequence stored in blocks 7 then 2: positions 0..4 -> 28..32, 4.. -> 8..
        assert_eq!(slot_mapping(&[7, 2], 2, 4, 4), vec![30, 31, 8, 9]);
        assert_eq!(slot_mapping(&[5], 0, 1, DEFAULT_BLOCK_SIZE), vec![80]);
    }

    #[test]
    #[should_panic(expected = "need 2 blocks, table has 1")]
    fn slot_mapping_refuses_a_short_table() {
        slot_mapping(&[0], 3, 2, 4);
    }

    #[test]
    fn block_tables_pad_to_the_longest() {
        let t = BlockTables::new(&[vec![3], vec![1, 4, 9], vec![]]);
        assert_eq!((t.num_seqs, t.max_blocks), (3, 3));
        assert_eq!(t.flat, vec![3, 0, 0, 1, 4, 9, 0, 0, 0]);
        assert_eq!(t.row(1), &[1, 4, 9]);
        assert_eq!(BlockTables::new(&[]).max_blocks, 1, "never a zero-width table");
    }

    #[test]
    fn blocks_and_cu_seqlens() {
        assert_eq!((blocks_for(0, 16), blocks_for(16, 16), blocks_for(17, 16)), (0, 1, 2));
        assert_eq!(cu_seqlens(&[3, 0, 5]), vec![0, 3, 3, 8]);
        let l = KvLayout { n_layers: 3, block_size: 16, n_kv_heads: 2, head_dim: 64 };
        assert_eq!((l.row(), l.block_elems(), l.block_floats(), l.blocks_for(17)), (128, 2048, 12288, 2));
    }
}
