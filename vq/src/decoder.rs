//! Latent -> image half of the tokenizer (`Decoder` of the reference).

use candle_core::{Error, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::VqConfig;
use crate::layers::{
    conv3x3, group_norm, norm_conv, planes_ok, AttnBlock, Conv3x3, GroupNorm, MidBlock,
    ResnetBlock, Upsample,
};
use crate::planes::{Planes, Scratch};

/// One resolution level, `decoder.conv_blocks.{i}`. Levels are stored in
/// processing order, i.e. `decoder_ch_mult` reversed.
#[derive(Debug, Clone)]
struct DecoderLevel {
    /// `res.{j}`, each followed by `attn.{j}` on the first (coarsest) level only.
    blocks: Vec<(ResnetBlock, Option<AttnBlock>)>,
    /// Absent on the last level, which is already at full resolution.
    upsample: Option<Upsample>,
}

/// Maps `[b, z_channels, h, w]` latents to `[b, 3, h*f, w*f]` images in
/// roughly [-1, 1], where `f` is [`VqConfig::downsample_factor`].
#[derive(Debug, Clone)]
pub struct VqDecoder {
    conv_in: Conv3x3,
    mid: MidBlock,
    levels: Vec<DecoderLevel>,
    norm_out: GroupNorm,
    conv_out: Conv3x3,
}

impl VqDecoder {
    /// Loads the decoder's weights from `vb` (the VQ model's `decoder`).
    pub fn load(vb: VarBuilder, cfg: &VqConfig) -> Result<Self> {
        let ch_mult = &cfg.decoder_ch_mult;
        let Some(&top_mult) = ch_mult.last() else {
            return Err(Error::Msg("VQ decoder_ch_mult is empty".into()));
        };
        let mut block_in = cfg.ch * top_mult;
        let conv_in = conv3x3(cfg.z_channels, block_in, vb.pp("conv_in"))?;
        let mid = MidBlock::load(vb.pp("mid"), block_in)?;
        let mut levels = Vec::with_capacity(ch_mult.len());
        for (i, &mult) in ch_mult.iter().rev().enumerate() {
            let vb_level = vb.pp("conv_blocks").pp(i);
            let block_out = cfg.ch * mult;
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks + 1);
            for j in 0..=cfg.num_res_blocks {
                let res = ResnetBlock::load(vb_level.pp("res").pp(j), block_in, block_out)?;
                block_in = block_out;
                let attn = if i == 0 {
                    Some(AttnBlock::load(vb_level.pp("attn").pp(j), block_out)?)
                } else {
                    None
                };
                blocks.push((res, attn));
            }
            let upsample = if i + 1 == ch_mult.len() {
                None
            } else {
                Some(Upsample::load(vb_level.pp("upsample"), block_in)?)
            };
            levels.push(DecoderLevel { blocks, upsample });
        }
        Ok(Self {
            conv_in,
            mid,
            levels,
            norm_out: group_norm(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, 3, vb.pp("conv_out"))?,
        })
    }

    /// Latents `[b, z_channels, h, w]` (after `post_quant_conv`) to images
    /// `[b, 3, h f, w f]` in [-1, 1], `f` = [`VqConfig::downsample_factor`].
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let h = self.conv_in.forward(z)?;
        let h = self.mid.forward(&h)?;
        if planes_ok(&h) {
            return self.forward_planes(Planes::from_tensor(&h)?);
        }
        let mut h = h;
        for level in &self.levels {
            for (res, attn) in &level.blocks {
                h = res.forward(&h)?;
                if let Some(attn) = attn {
                    h = attn.forward(&h)?;
                }
            }
            if let Some(upsample) = &level.upsample {
                h = upsample.forward(&h)?;
            }
        }
        let h = self.norm_out.forward_swish_padded(&h)?;
        self.conv_out.forward_padded(&h, None)
    }

    /// The levels and the output of [`VqDecoder::forward`] on the CPU: the
    /// activations stay in plain buffers, each handed back to one scratch
    /// once read and reused, so a decode takes fresh memory only when it
    /// reaches a finer level. (Every fresh buffer of the full-resolution
    /// planes is fresh pages the kernel zeroes on first touch.)
    fn forward_planes(&self, mut h: Planes) -> Result<Tensor> {
        let scratch = &mut Scratch::default();
        for level in &self.levels {
            for (res, attn) in &level.blocks {
                let y = res.forward_planes(&h.data, h.dims, scratch)?;
                scratch.give(std::mem::replace(&mut h, y).data);
                if let Some(attn) = attn {
                    // The coarsest level only: small.
                    h = Planes::from_tensor(&attn.forward(&h.into_tensor()?)?)?;
                }
            }
            if let Some(upsample) = &level.upsample {
                let y = upsample.forward_planes(&h.data, h.dims, scratch)?;
                scratch.give(std::mem::replace(&mut h, y).data);
            }
        }
        let y = norm_conv(
            &self.norm_out,
            &self.conv_out,
            &h.data,
            h.dims,
            None,
            scratch,
        )?;
        y.into_tensor()
    }
}
