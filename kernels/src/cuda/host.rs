//! The engine's current host-slice f32 interface on CUDA, for [`crate::Backend`]: each call
//! copies its inputs to the device, runs the kernel and copies the result back. Correct, and a
//! whole-model check against the CPU today; not fast (the device-resident ops are the fast path).
//! A device error panics with the op's name: the host interface is infallible by design.

use cudarc::driver::{CudaSlice, DeviceRepr};

use super::CudaBackend;
use crate::{AttnShape, KernelError};

fn ok<T>(op: &str, r: Result<T, KernelError>) -> T {
    r.unwrap_or_else(|e| panic!("CUDA {op} failed: {e}"))
}

impl CudaBackend {
    fn up<T: DeviceRepr>(&self, op: &str, x: &[T]) -> CudaSlice<T> {
        ok(op, self.stream().clone_htod(x).map_err(super::driver_err))
    }

    fn down(&self, op: &str, d: &CudaSlice<f32>, out: &mut [f32]) {
        let v = ok(op, self.stream().clone_dtoh(d).map_err(super::driver_err));
        out.copy_from_slice(&v);
    }

    pub fn host_matmul(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, k: usize, y: &mut [f32]) {
        let (dx, dw) = (self.up("matmul", x), self.up("matmul", w));
        let db = bias.map(|b| self.up("matmul", b));
        let mut dy = self.up("matmul", y);
        ok(
            "matmul",
            self.matmul(
                &dx.as_view(),
                &dw.as_view(),
                db.as_ref().map(|b| b.as_view()).as_ref(),
                k,
                &mut dy.as_view_mut(),
            ),
        );
        self.down("matmul", &dy, y);
    }

    pub fn host_rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
        let (dx, dw) = (self.up("rms_norm", x), self.up("rms_norm", weight));
        let mut dy = self.up("rms_norm", y);
        ok("rms_norm", self.rms_norm(&dx.as_view(), &dw.as_view(), eps, &mut dy.as_view_mut()));
        self.down("rms_norm", &dy, y);
    }

    pub fn host_rope(&self, x: &mut [f32], n_heads: usize, positions: &[usize], inv_freq: &[f32]) {
        let pos: Vec<i32> = positions.iter().map(|&p| i32::try_from(p).expect("position fits i32")).collect();
        let mut dx = self.up("rope", x);
        let (dp, df) = (self.up("rope", &pos), self.up("rope", inv_freq));
        ok("rope", self.rope(&mut dx.as_view_mut(), n_heads, &dp.as_view(), &df.as_view()));
        self.down("rope", &dx, x);
    }

    pub fn host_softmax(&self, x: &mut [f32]) {
        if x.is_empty() {
            return;
        }
        let mut dx = self.up("softmax", x);
        ok("softmax", self.softmax(&mut dx.as_view_mut(), x.len()));
        self.down("softmax", &dx, x);
    }

    pub fn host_silu_mul(&self, gate: &[f32], up: &[f32], out: &mut [f32]) {
        let (dg, du) = (self.up("silu_mul", gate), self.up("silu_mul", up));
        let mut dout = self.up("silu_mul", out);
        ok("silu_mul", self.silu_mul(&dg.as_view(), &du.as_view(), &mut dout.as_view_mut()));
        self.down("silu_mul", &dout, out);
    }

    /// Contiguous K/V `[len, n_kv_heads, head_dim]` is a paged cache of one block of `len` tokens.
    pub fn host_attention(&self, q: &[f32], k: &[f32], v: &[f32], shape: AttnShape, out: &mut [f32]) {
        let len = k.len() / (shape.n_kv_heads * shape.head_dim);
        let (dq, dk, dv) = (self.up("attention", q), self.up("attention", k), self.up("attention", v));
        let (dt, dl) = (self.up("attention", &[0i32]), self.up("attention", &[len as i32]));
        let mut dout = self.up("attention", out);
        let kv = super::KvViews {
            k_cache: dk.as_view(),
            v_cache: dv.as_view(),
            block_tables: dt.as_view(),
            max_blocks: 1,
            context_lens: dl.as_view(),
            block_size: len,
        };
        ok("attention", self.paged_attention_decode(&dq.as_view(), &kv, shape, &mut dout.as_view_mut()));
        self.down("attention", &dout, out);
    }

    /// The host-slice path over a paged cache: the blocks are gathered into contiguous rows on
    /// the host first (the device kernel reads block tables itself when the cache lives on the GPU).
    pub fn host_attention_paged(
        &self,
        q: &[f32],
        blocks: &[(&[f32], &[f32])],
        len: usize,
        block_size: usize,
        shape: AttnShape,
        out: &mut [f32],
    ) {
        let row = shape.n_kv_heads * shape.head_dim;
        let (mut k, mut v) = (Vec::with_capacity(len * row), Vec::with_capacity(len * row));
        for (kb, vb) in blocks {
            let take = (len - k.len() / row).min(block_size) * row;
            k.extend_from_slice(&kb[..take]);
            v.extend_from_slice(&vb[..take]);
        }
        self.host_attention(q, &k, &v, shape, out);
    }
}
