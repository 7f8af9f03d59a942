//! `vision_head`: hidden state to logits over the VQ codebook.

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use crate::config::GenHeadConfig;

pub struct GenHead {
    output_mlp_projector: Linear,
    vision_head: Linear,
}

impl GenHead {
    /// `vb` is the `gen_head` prefix.
    pub fn load(vb: VarBuilder, cfg: &GenHeadConfig) -> Result<Self> {
        Ok(Self {
            output_mlp_projector: linear(
                cfg.n_embed,
                cfg.image_token_embed,
                vb.pp("output_mlp_projector"),
            )?,
            vision_head: linear(
                cfg.image_token_embed,
                cfg.image_token_size,
                vb.pp("vision_head"),
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
