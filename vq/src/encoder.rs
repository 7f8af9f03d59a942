//! Image -> latent half of the tokenizer (`Encoder` of the reference).

use candle_core::{Error, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::VqConfig;
use crate::layers::{
    conv3x3, group_norm, AttnBlock, Conv3x3, Downsample, GroupNorm, MidBlock, ResnetBlock,
};

/// One resolution level, `encoder.conv_blocks.{i}`.
#[derive(Debug, Clone)]
struct EncoderLevel {
    /// `res.{j}`, each followed by `attn.{j}` on the last level only.
    blocks: Vec<(ResnetBlock, Option<AttnBlock>)>,
    /// Absent on the last level, which sets the token grid.
    downsample: Option<Downsample>,
}

/// Maps `[b, 3, H, W]` images to `[b, z_channels, H/f, W/f]` latents, where
/// `f` is [`VqConfig::downsample_factor`].
#[derive(Debug, Clone)]
pub struct VqEncoder {
    conv_in: Conv3x3,
    levels: Vec<EncoderLevel>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv3x3,
}

impl VqEncoder {
    /// Loads the encoder's weights from `vb` (the VQ model's `encoder`).
    pub fn load(vb: VarBuilder, cfg: &VqConfig) -> Result<Self> {
        let ch_mult = &cfg.encoder_ch_mult;
        if ch_mult.is_empty() {
            return Err(Error::Msg("VQ encoder_ch_mult is empty".into()));
        }
        let conv_in = conv3x3(3, cfg.ch, vb.pp("conv_in"))?;
        let mut block_in = cfg.ch;
        let mut levels = Vec::with_capacity(ch_mult.len());
        for (i, &mult) in ch_mult.iter().enumerate() {
            let vb_level = vb.pp("conv_blocks").pp(i);
            let is_last = i + 1 == ch_mult.len();
            let block_out = cfg.ch * mult;
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks);
            for j in 0..cfg.num_res_blocks {
                let res = ResnetBlock::load(vb_level.pp("res").pp(j), block_in, block_out)?;
                block_in = block_out;
                let attn = if is_last {
                    Some(AttnBlock::load(vb_level.pp("attn").pp(j), block_out)?)
                } else {
                    None
                };
                blocks.push((res, attn));
            }
            let downsample = if is_last {
                None
            } else {
                Some(Downsample::load(vb_level.pp("downsample"), block_in)?)
            };
            levels.push(EncoderLevel { blocks, downsample });
        }
        Ok(Self {
            conv_in,
            levels,
            mid: MidBlock::load(vb.pp("mid"), block_in)?,
            norm_out: group_norm(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, cfg.z_channels, vb.pp("conv_out"))?,
        })
    }

    /// Images `[b, 3, H, W]` in [-1, 1] to latents `[b, z_channels, H / f,
    /// W / f]` (before `quant_conv`), `f` = [`VqConfig::downsample_factor`].
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(images)?;
        for level in &self.levels {
            for (res, attn) in &level.blocks {
                h = res.forward(&h)?;
                if let Some(attn) = attn {
                    h = attn.forward(&h)?;
                }
            }
            if let Some(downsample) = &level.downsample {
                h = downsample.forward(&h)?;
            }
        }
        let h = self.mid.forward(&h)?;
        let h = self.norm_out.forward_swish_padded(&h)?;
        self.conv_out.forward_padded(&h, None)
    }
}
