//! `vision_head`: hidden state to logits over the VQ codebook.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::GenHeadConfig;
use janus_nn::{QLinear, Quant};

/// The image-token head: hidden states to VQ code logits.
pub struct GenHead {
    output_mlp_projector: QLinear,
    vision_head: QLinear,
}

impl GenHead {
    /// `vb` is the `gen_head` prefix.
    pub fn load(vb: VarBuilder, cfg: &GenHeadConfig) -> Result<Self> {
        Self::load_quantized(vb, cfg, Quant::None)
    }

    /// As [`GenHead::load`], with both linear weights in `quant`.
    pub fn load_quantized(vb: VarBuilder, cfg: &GenHeadConfig, quant: Quant) -> Result<Self> {
        Ok(Self {
            output_mlp_projector: QLinear::load(
                cfg.n_embed,
                cfg.image_token_embed,
                true,
                vb.pp("output_mlp_projector"),
                quant,
            )?,
            vision_head: QLinear::load(
                cfg.image_token_embed,
                cfg.image_token_size,
                true,
                vb.pp("vision_head"),
                quant,
            )?,
        })
    }
}

impl Module for GenHead {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.vision_head
            .forward(&self.output_mlp_projector.forward(x)?.gelu_erf()?)
    }
}
