//! Weight matrices stored in ggml's block formats, and their dequantization.
//!
//! Invariants:
//! - a [`QMatrix`] row is a whole number of blocks (`cols % block_len == 0`) and `data` holds
//!   exactly `rows * row_bytes` bytes, checked once in [`QMatrix::new`];
//! - dequantization is ggml's definition to the bit: scales widened from f16 to f32, then the
//!   same f32 multiplies and adds in the same order as `ggml-quants.c` and gguf-py's numpy
//!   (never fused), so every implementation here (scalar or SIMD) yields identical floats;
//! - the matmul on a `QMatrix` equals [`crate::cpu::matmul`] on its dequantized rows bit for bit.

mod blocks;
pub mod int8;
pub mod random;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use std::fmt;

/// How a matmul on quantized weights treats its activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// f32 activations against exactly dequantized weights (the default): the same result as
    /// the f32 matmul on the dequantized matrix, bit for bit.
    #[default]
    Exact,
    /// Activations quantized to int8 per 32-value block and dotted in integers ([`int8`]), for
    /// Q4_0, Q4_1 and Q8_0 weights (other types stay exact). Faster, and close, not exact.
    Int8,
}

/// The tensor types pdq reads from GGUF files; discriminants are ggml's `ggml_type` ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 8,
    Q4_K = 12,
    Q6_K = 14,
    BF16 = 30,
}

impl QuantType {
    pub const ALL: [QuantType; 8] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q4_K,
        QuantType::Q6_K,
    ];

    /// The type for a `ggml_type` id, or `None` for one pdq does not implement.
    pub fn from_ggml(id: u32) -> Option<QuantType> {
        Self::ALL.into_iter().find(|t| *t as u32 == id)
    }

    /// ggml's name for an id, including types pdq does not implement (for error messages).
    pub fn ggml_name(id: u32) -> String {
        const NAMES: [&str; 31] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K",
            "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
            "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
        ];
        NAMES.get(id as usize).map_or_else(|| format!("type id {id}"), |n| n.to_string())
    }

    /// Weights per block.
    pub fn block_len(self) -> usize {
        match self {
            QuantType::F32 | QuantType::F16 | QuantType::BF16 => 1,
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0 => 32,
            QuantType::Q4_K | QuantType::Q6_K => 256,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::F32 => 4,
            QuantType::F16 | QuantType::BF16 => 2,
            QuantType::Q4_0 => 2 + 16,
            QuantType::Q4_1 => 2 + 2 + 16,
            QuantType::Q8_0 => 2 + 32,
            QuantType::Q4_K => 2 + 2 + 12 + 128,
            QuantType::Q6_K => 128 + 64 + 16 + 2,
        }
    }

    /// Bytes of `n` weights; `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_len()).then(|| n / self.block_len() * self.block_bytes())
    }

    /// Dequantizes whole blocks: `out.len()` weights from `bytes` (exactly their blocks).
    pub fn dequantize(self, bytes: &[u8], out: &mut [f32]) {
        assert_eq!(Some(bytes.len()), self.bytes_for(out.len()), "dequantize {self}: byte count");
        #[cfg(target_arch = "x86_64")]
        if x86::dequantize(self, bytes, out) {
            return;
        }
        blocks::dequantize(self, bytes, out);
    }

    /// The portable definition, for tests that pin the SIMD paths to it.
    pub fn dequantize_portable(self, bytes: &[u8], out: &mut [f32]) {
        assert_eq!(Some(bytes.len()), self.bytes_for(out.len()), "dequantize {self}: byte count");
        blocks::dequantize(self, bytes, out);
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Self::ggml_name(*self as u32))
    }
}

/// A `[rows, cols]` weight matrix in the HF `nn.Linear` layout (`[out, in]`), each row stored as
/// `cols / block_len` consecutive blocks, borrowed from wherever the bytes live (a memory map).
#[derive(Clone, Copy)]
pub struct QMatrix<'a> {
    pub dtype: QuantType,
    pub rows: usize,
    pub cols: usize,
    data: &'a [u8],
}

impl fmt::Debug for QMatrix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QMatrix({} [{}, {}])", self.dtype, self.rows, self.cols)
    }
}

impl<'a> QMatrix<'a> {
    /// Checks that `data` is exactly `rows` rows of whole blocks.
    pub fn new(dtype: QuantType, rows: usize, cols: usize, data: &'a [u8]) -> Result<QMatrix<'a>, String> {
        let row_bytes = dtype
            .bytes_for(cols)
            .ok_or_else(|| format!("{dtype} rows of {cols} values are not whole blocks of {}", dtype.block_len()))?;
        if data.len() != rows * row_bytes {
            return Err(format!("{dtype} [{rows}, {cols}] needs {} bytes, got {}", rows * row_bytes, data.len()));
        }
        Ok(QMatrix { dtype, rows, cols, data })
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// The stored bytes of rows `range`.
    pub fn row_data(&self, range: std::ops::Range<usize>) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[range.start * rb..range.end * rb]
    }

    /// Dequantizes rows `range` into `out` (`range.len() * cols` floats).
    pub fn dequantize_rows(&self, range: std::ops::Range<usize>, out: &mut [f32]) {
        self.dtype.dequantize(self.row_data(range), out);
    }

    /// The whole matrix as f32 (for the CUDA upload and tests; the CPU matmul never needs it).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows(0..self.rows, &mut out);
        out
    }
}

#[cfg(test)]
mod tests;
