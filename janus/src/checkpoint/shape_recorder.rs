//! Listing a model's parameters without their data.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use janus_nn::parse_blocks_name;

/// A backend that records which tensors a model asks for and hands out
/// zero-stride views instead of data, so a full-size model can be "built"
/// to list its parameters without allocating them.
/// Clones share one record.
/// It has no pre-quantised blocks: asked for some (see
/// [`janus_nn::stored_blocks`]), it records which and says no.
#[derive(Default, Clone)]
pub struct ShapeRecorder {
    requested: std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<usize>)>>>,
    blocks: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ShapeRecorder {
    /// Every `(name, shape)` requested so far, in request order.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.requested.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The tensors the model asked for as quantised blocks, with their
    /// format, in request order.
    pub fn requested_blocks(&self) -> Vec<(String, candle_core::quantized::GgmlDType)> {
        let names = self.blocks.lock().map(|r| r.clone()).unwrap_or_default();
        names
            .iter()
            .filter_map(|n| parse_blocks_name(n))
            .map(|(n, d)| (n.to_owned(), d))
            .collect()
    }
}

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut r) = self.requested.lock() {
            r.push((name.to_owned(), s.dims().to_vec()));
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("shape recorder cannot serve {name} without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        if parse_blocks_name(name).is_none() {
            return true;
        }
        if let Ok(mut b) = self.blocks.lock() {
            b.push(name.to_owned());
        }
        false
    }
}
