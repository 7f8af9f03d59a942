//! The decoder's activations on the CPU outside tensors: f32 NCHW planes
//! and the scratch that recycles their buffers.

use candle_core::{DType, Device, Result, Tensor};
use janus_kernels::tensor::zeroed;
use rayon::prelude::*;

/// Whether `t` can take the CPU paths (f32 on the CPU).
pub(crate) fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on the contiguous f32 data of `t`.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    janus_kernels::tensor::with_cpu_slice(t, f)
}

/// Buffers that one run of the decoder hands back once read and takes
/// again for its next temporaries. A fresh buffer of the full-resolution
/// planes comes from fresh pages, which the kernel zeroes on first touch.
/// Reused ones keep the peak where it was.
#[derive(Default)]
pub(crate) struct Scratch(Vec<Vec<f32>>);

impl Scratch {
    /// A buffer of `len` values with unspecified contents: the smallest
    /// handed-back one that is large enough but not more than twice that,
    /// else a fresh one, and then the handed-back ones are freed first:
    /// they are from another level of the decoder, whose buffers would only
    /// raise the peak from now on.
    pub(crate) fn take(&mut self, len: usize) -> Vec<f32> {
        let fit = (self.0.iter().enumerate())
            .filter(|(_, v)| (len..=2 * len).contains(&v.capacity()))
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        match fit {
            Some(i) => {
                let mut v = self.0.swap_remove(i);
                v.resize(len, 0.0);
                v
            }
            None => {
                self.0.clear();
                zeroed(len)
            }
        }
    }

    /// Hands a buffer back for reuse.
    pub(crate) fn give(&mut self, v: Vec<f32>) {
        self.0.push(v);
    }
}

/// f32 NCHW planes `[b, c, h, w]` outside a tensor, so that their buffer
/// can go back to a [`Scratch`] (padded planes count their ring in h, w).
pub(crate) struct Planes {
    pub data: Vec<f32>,
    pub dims: [usize; 4],
}

impl Planes {
    /// A copy of `t` (CPU f32 [b, c, h, w]).
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (b, c, h, w) = t.dims4()?;
        Ok(Self {
            data: t.flatten_all()?.to_vec1()?,
            dims: [b, c, h, w],
        })
    }

    pub fn into_tensor(self) -> Result<Tensor> {
        Tensor::from_vec(self.data, self.dims.to_vec(), &Device::Cpu)
    }
}

/// Zeroes the one-value ring around each of the `(h + 2) x (w + 2)` planes of `buf`.
pub(crate) fn zero_ring(buf: &mut [f32], h: usize, w: usize) {
    let wp = w + 2;
    buf.par_chunks_mut((h + 2) * wp).for_each(|plane| {
        plane[..wp].fill(0.0);
        plane[(h + 1) * wp..].fill(0.0);
        for y in 1..=h {
            plane[y * wp] = 0.0;
            plane[y * wp + wp - 1] = 0.0;
        }
    });
}
