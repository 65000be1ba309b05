//! A weight matrix as the engine holds it: dense f32, or ggml blocks left as stored.
//!
//! Invariant: a quantized matrix's bytes are exactly `rows` rows of whole blocks (checked when
//! it is built, by [`QMatrix::new`]), so [`Matrix::view`] cannot fail later. Quantized bytes are
//! usually a range of the GGUF file's memory map, shared by every matrix of the model.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;
use pdq_kernels::cpu::QLinear;
use pdq_kernels::{Activations, Backend, QMatrix, QuantType};

/// Where quantized bytes live.
pub(crate) enum Bytes {
    /// Rows reordered at load (llama.cpp's Q/K permutation undone), so no longer the file's.
    Owned(Vec<u8>),
    Mapped {
        map: Arc<Mmap>,
        range: Range<usize>,
    },
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, range } => &map[range.clone()],
        }
    }
}

pub(crate) enum Matrix {
    /// `[rows, cols]` row-major.
    Dense {
        data: Vec<f32>,
        cols: usize,
    },
    Quant {
        dtype: QuantType,
        rows: usize,
        cols: usize,
        bytes: Bytes,
    },
}

impl Matrix {
    pub fn dense(data: Vec<f32>, cols: usize) -> Matrix {
        Matrix::Dense { data, cols }
    }

    /// A quantized matrix; `Err` names the size mismatch.
    pub fn quant(dtype: QuantType, rows: usize, cols: usize, bytes: Bytes) -> Result<Matrix, String> {
        QMatrix::new(dtype, rows, cols, bytes.as_slice())?;
        Ok(Matrix::Quant { dtype, rows, cols, bytes })
    }

    pub fn rows(&self) -> usize {
        match self {
            Matrix::Dense { data, cols } => data.len() / cols,
            Matrix::Quant { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Matrix::Dense { cols, .. } | Matrix::Quant { cols, .. } => *cols,
        }
    }

    /// Number of weights (the CUDA upload's size).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn len(&self) -> usize {
        self.rows() * self.cols()
    }

    /// Bytes held in memory (the roofline's weight traffic).
    pub fn stored_bytes(&self) -> usize {
        match self {
            Matrix::Dense { data, .. } => data.len() * 4,
            Matrix::Quant { bytes, .. } => bytes.as_slice().len(),
        }
    }

    /// The storage type's name, for logs.
    pub fn dtype_name(&self) -> String {
        match self {
            Matrix::Dense { .. } => "F32".into(),
            Matrix::Quant { dtype, .. } => dtype.to_string(),
        }
    }

    fn view(&self) -> Option<QMatrix<'_>> {
        match self {
            Matrix::Dense { .. } => None,
            Matrix::Quant { dtype, rows, cols, bytes } => {
                Some(QMatrix::new(*dtype, *rows, *cols, bytes.as_slice()).expect("checked in Matrix::quant"))
            }
        }
    }

    /// Row `r` as f32, into `out` (`cols` floats): an embedding lookup.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        match self {
            Matrix::Dense { data, cols } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            Matrix::Quant { .. } => self.view().expect("quantized").dequantize_rows(r..r + 1, out),
        }
    }

    /// The whole matrix as f32: borrowed when dense, dequantized otherwise (the CUDA upload).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            Matrix::Dense { data, .. } => Cow::Borrowed(data),
            Matrix::Quant { .. } => Cow::Owned(self.view().expect("quantized").to_f32()),
        }
    }

    /// `ys[i] = x · ms[i].0^T (+ ms[i].1)` for matrices on the same input: one grouped call when
    /// every matrix is quantized (one parallel region, same bits), else one call each.
    pub fn matmul_many(
        backend: &Backend,
        x: &[f32],
        ms: &[(&Matrix, Option<&[f32]>)],
        ys: &mut [&mut [f32]],
        act: Activations,
    ) {
        let views: Option<Vec<_>> = ms.iter().map(|(m, bias)| m.view().map(|w| QLinear { w, bias: *bias })).collect();
        match views {
            Some(ws) => backend.matmul_quant_many(x, &ws, ys, act),
            None => {
                for ((m, bias), y) in ms.iter().zip(ys.iter_mut()) {
                    m.matmul(backend, x, *bias, y, act);
                }
            }
        }
    }

    /// Whether [`Activations::Int8`] changes this matrix's matmul (it has an int8 kernel).
    pub fn takes_int8(&self) -> bool {
        matches!(self, Matrix::Quant { dtype, .. } if pdq_kernels::quant::int8::supported(*dtype))
    }

    /// `y = x · self^T (+ bias)`; `act` only matters for quantized matrices.
    pub fn matmul(&self, backend: &Backend, x: &[f32], bias: Option<&[f32]>, y: &mut [f32], act: Activations) {
        match self {
            Matrix::Dense { data, cols } => backend.matmul(x, data, bias, *cols, y),
            Matrix::Quant { .. } => backend.matmul_quant(x, &self.view().expect("quantized"), bias, y, act),
        }
    }
}
