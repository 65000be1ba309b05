//! The staging buffers KV pages cross the PCIe bus through: a device buffer the blocks are
//! gathered into (or scattered from) and a pinned host buffer of the same size, both kept by
//! the executor and grown to the largest sequence seen. Pinned (page-locked) memory lets the
//! copy engine DMA straight into it; a pageable `Vec` would be copied through the driver's own
//! bounce buffer at about half the rate.
//!
//! The host side is plain page-locked memory, not write-combined: exports read it back on the
//! CPU, and write-combined memory is uncached for CPU reads.

use cudarc::driver::{CudaSlice, PinnedHostSlice};
use half::bf16;
use pdq_kernels::CudaBackend;

use super::dev_err;
use crate::error::EngineError;

#[derive(Default)]
pub(crate) struct Staging {
    dev: Option<CudaSlice<bf16>>,
    host: Option<PinnedHostSlice<bf16>>,
}

impl Staging {
    /// Grows both buffers to hold at least `n` values (to the next power of two, so a run of
    /// growing sequences reallocates a few times, not every time).
    fn ensure(&mut self, cuda: &CudaBackend, n: usize) -> Result<(), EngineError> {
        if self.dev.as_ref().is_some_and(|d| d.len() >= n) {
            return Ok(());
        }
        let cap = n.max(1).next_power_of_two();
        // Drop the old pair before taking the new one: the peak is one pair, not two.
        self.dev = None;
        self.host = None;
        self.dev = Some(cuda.stream().alloc_zeros::<bf16>(cap).map_err(dev_err)?);
        // SAFETY: flags 0 is plain page-locked memory; every value is written (by a copy from
        // the device or by the caller) before it is read, and bf16 is valid for any bits.
        self.host = Some(unsafe { cuda.context().alloc_pinned_with_flags::<bf16>(cap, 0) }.map_err(dev_err)?);
        Ok(())
    }

    /// The device buffer, at least `n` values long, to gather blocks into.
    pub fn device(&mut self, cuda: &CudaBackend, n: usize) -> Result<&mut CudaSlice<bf16>, EngineError> {
        self.ensure(cuda, n)?;
        Ok(self.dev.as_mut().expect("ensured"))
    }

    /// Copies the first `n` values of the device buffer to the host and waits for them.
    pub fn download(&mut self, cuda: &CudaBackend, n: usize) -> Result<&[bf16], EngineError> {
        self.ensure(cuda, n)?;
        let (dev, host) = (self.dev.as_ref().expect("ensured"), self.host.as_mut().expect("ensured"));
        let host = host.as_mut_slice().map_err(dev_err)?;
        // The copy moves exactly as many values as the host slice holds: cut both to `n`.
        cuda.stream().memcpy_dtoh(&dev.slice(..n), &mut host[..n]).map_err(dev_err)?;
        cuda.stream().synchronize().map_err(dev_err)?;
        Ok(&host[..n])
    }

    /// Lets `fill` write the first `n` host values, copies them to the device buffer, and
    /// returns it for scattering (the copy is ordered before later ops on the stream).
    pub fn upload(
        &mut self,
        cuda: &CudaBackend,
        n: usize,
        fill: impl FnOnce(&mut [bf16]),
    ) -> Result<&CudaSlice<bf16>, EngineError> {
        self.ensure(cuda, n)?;
        let (dev, host) = (self.dev.as_mut().expect("ensured"), self.host.as_mut().expect("ensured"));
        // Waits for an earlier copy out of this buffer before overwriting it.
        let host = host.as_mut_slice().map_err(dev_err)?;
        fill(&mut host[..n]);
        cuda.stream().memcpy_htod(&host[..n], &mut dev.slice_mut(..n)).map_err(dev_err)?;
        // The host buffer is reused by the next call: the copy must be done before then. A
        // plain slice gives cudarc no event to wait on, so wait here.
        cuda.stream().synchronize().map_err(dev_err)?;
        Ok(dev)
    }
}
