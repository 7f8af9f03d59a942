//! SigLIP ViT encoder of Janus-Pro's understanding path.
//!
//! A timm-style `VisionTransformer` as built by the official
//! `janus/models/siglip_vit.py`: convolutional patch embedding, a learned
//! position embedding without class token, pre-norm blocks with a fused
//! `qkv` projection and exact (erf) GELU, and the final `norm`. The
//! attention-pooling head (`attn_pool.*`) is never used by Janus, so it is
//! not loaded.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use janus_vision::{SiglipVit, SiglipVitConfig};
//! # fn main() -> candle_core::Result<()> {
//! let cfg = SiglipVitConfig::siglip_large_patch16_384();
//! let vb = unsafe {
//!     candle_nn::VarBuilder::from_mmaped_safetensors(&["model.safetensors"], DType::F32, &Device::Cpu)?
//! };
//! let vit = SiglipVit::load(vb.pp("vision_model.vision_tower"), &cfg)?;
//! let pixels = Tensor::zeros((1, 3, 384, 384), DType::F32, &Device::Cpu)?;
//! let features = vit.forward(&pixels)?; // [1, 576, 1024]
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod vit;

pub use vit::{SiglipVit, SiglipVitConfig};
