//! VQ-16 image tokenizer of Janus-Pro's generation path.
//!
//! A port of the official `janus/models/vq_model.py` (itself LlamaGen's
//! VQ-16): a convolutional [`VqEncoder`] that downsamples images by
//! [`VqConfig::downsample_factor`], a [`VectorQuantizer`] that snaps every
//! latent pixel to the nearest entry of an L2-normalised codebook, and a
//! [`VqDecoder`] that maps the selected entries back to pixels. Janus
//! generates the token grid autoregressively and only needs
//! [`VqModel::decode_code`]; [`VqModel::encode`] is the inverse direction.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use janus_vq::{to_u8_pixels, VqConfig, VqModel};
//! # fn main() -> candle_core::Result<()> {
//! let cfg = VqConfig::vq16(16384, 8);
//! let vb = unsafe {
//!     candle_nn::VarBuilder::from_mmaped_safetensors(&["model.safetensors"], DType::F32, &Device::Cpu)?
//! };
//! let vq = VqModel::load(vb.pp("gen_vision_model"), &cfg)?;
//! // One 384x384 image is a 24x24 grid of tokens.
//! let tokens = Tensor::zeros((1, 24 * 24), DType::U32, &Device::Cpu)?;
//! let image = vq.decode_code(&tokens, (24, 24))?; // [1, 3, 384, 384] in [-1, 1]
//! let pixels = to_u8_pixels(&image)?; // [1, 384, 384, 3] u8
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod conv;
mod decoder;
mod encoder;
mod layers;
mod model;
mod norm;
mod pixels;
mod planes;
mod quantizer;
mod winograd;

pub use config::VqConfig;
pub use decoder::VqDecoder;
pub use encoder::VqEncoder;
pub use model::VqModel;
pub use pixels::to_u8_pixels;
pub use quantizer::{VectorQuantizer, VqEncoding};
