//! The whole tokenizer (`VQModel` of the reference).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};

use crate::config::VqConfig;
use crate::decoder::VqDecoder;
use crate::encoder::VqEncoder;
use crate::layers::conv1x1;
use crate::quantizer::{VectorQuantizer, VqEncoding};

/// VQ-16 image tokenizer: images <-> grids of codebook ids.
#[derive(Debug, Clone)]
pub struct VqModel {
    encoder: VqEncoder,
    quant_conv: Conv2d,
    quantize: VectorQuantizer,
    post_quant_conv: Conv2d,
    decoder: VqDecoder,
    config: VqConfig,
}

impl VqModel {
    /// Loads the weights under `vb` (`gen_vision_model` in Janus checkpoints).
    /// The tokenizer computes in f32. When `vb`'s dtype is bf16 on a CPU
    /// with the bf16 GEMM (AVX-512-BF16), the decoder's 3×3 convolutions,
    /// nearly all of its work, round their inputs to bf16 and sum in f32,
    /// as PyTorch's bf16 convolutions do, and keep their weights in bf16
    /// (rounded there all the same); every other weight is held in f32.
    /// From 64×64 pixels up they go by Winograd's F(2×2, 3×3), 2.25x fewer
    /// products: a 384² decode of the released size is 1.47e-2 off f32 in
    /// relative L2 (mean 0.5 of a pixel level) against 1.14e-2 for direct
    /// bf16 products (random weights). On other CPUs a bf16 `vb` still
    /// selects Winograd's products, in f32 (4e-7 off the direct ones).
    pub fn load(vb: VarBuilder, cfg: &VqConfig) -> Result<Self> {
        let decoder_vb = vb.pp("decoder");
        let vb = vb.set_dtype(candle_core::DType::F32);
        Ok(Self {
            encoder: VqEncoder::load(vb.pp("encoder"), cfg)?,
            quant_conv: conv1x1(cfg.z_channels, cfg.codebook_embed_dim, vb.pp("quant_conv"))?,
            quantize: VectorQuantizer::load(vb.pp("quantize"), cfg)?,
            post_quant_conv: conv1x1(
                cfg.codebook_embed_dim,
                cfg.z_channels,
                vb.pp("post_quant_conv"),
            )?,
            decoder: VqDecoder::load(decoder_vb, cfg)?,
            config: cfg.clone(),
        })
    }

    /// The sizes it was built with.
    pub fn config(&self) -> &VqConfig {
        &self.config
    }

    /// Tokenizes `[b, 3, H, W]` images with values in [-1, 1].
    pub fn encode(&self, images: &Tensor) -> Result<VqEncoding> {
        let z = self.encoder.forward(images)?;
        self.quantize.forward(&self.quant_conv.forward(&z)?)
    }

    /// Decodes a `[b, embed_dim, h, w]` quantised latent to `[b, 3, H, W]`
    /// images in roughly [-1, 1].
    pub fn decode(&self, quant: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&self.post_quant_conv.forward(quant)?)
    }

    /// Decodes image tokens `[b, h*w]` (u32 or i64, row-major over the
    /// `(h, w)` grid) to `[b, 3, H, W]` images in roughly [-1, 1]. Token
    /// counts that do not match the grid and ids outside the codebook are
    /// reported as errors.
    pub fn decode_code(&self, codes: &Tensor, grid: (usize, usize)) -> Result<Tensor> {
        self.decode(&self.quantize.codebook_entry(codes, grid)?)
    }
}
