//! Where named tensors come from, and the `VarBuilder` backend that
//! checks every request against the stored shape before reading data.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// Where named tensors come from, under the released names (and, where a
/// source stores them, quantised blocks as raw bytes under their
/// `janus_nn::blocks_name`).
pub(crate) trait TensorReader: Send + Sync {
    /// The stored shape, without reading data.
    fn shape_of(&self, name: &str) -> Option<Vec<usize>>;
    /// The tensor in its stored dtype.
    fn load_raw(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor>;

    /// As [`TensorReader::load_raw`], after checking the stored shape
    /// against `dims`, so a mismatch names the key and both shapes.
    fn load_checked(
        &self,
        name: &str,
        dims: &[usize],
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.shape_of(name) {
            None => candle_core::bail!("tensor {name} is missing from the checkpoint"),
            Some(stored) if stored.as_slice() != dims => {
                candle_core::bail!(
                    "tensor {name} has shape {stored:?} in the checkpoint, the model expects {dims:?}"
                )
            }
            Some(_) => self.load_raw(name, dev),
        }
    }
}

impl<T: TensorReader + ?Sized> TensorReader for Box<T> {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        (**self).shape_of(name)
    }

    fn load_raw(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        (**self).load_raw(name, dev)
    }
}

/// A [`TensorReader`] as a `VarBuilder` backend: every request is checked
/// against the stored shape before any data is read.
pub(crate) struct Checked<T>(pub T);

impl<T: TensorReader> SimpleBackend for Checked<T> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.load_checked(name, s.dims(), dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.load_raw(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.shape_of(name).is_some()
    }
}
