//! Building blocks shared by the encoder and the decoder.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::conv::{self, Input};
use crate::norm;
use crate::planes::{Planes, Scratch};

/// `Normalize(channels, "group")` of the reference: 32 groups, eps 1e-6.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
}

impl GroupNorm {
    const GROUPS: usize = 32;
    const EPS: f64 = 1e-6;

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let wb = (&self.weight, &self.bias);
        norm::group_norm(x, Self::GROUPS, Self::EPS, wb, false, false)
    }

    /// `nonlinearity(norm(x))`, fused, written with a ring of zeros around
    /// each plane: the input of a [`Conv3x3::forward_padded`].
    pub fn forward_swish_padded(&self, x: &Tensor) -> Result<Tensor> {
        let wb = (&self.weight, &self.bias);
        norm::group_norm(x, Self::GROUPS, Self::EPS, wb, true, true)
    }
}

/// `conv(swish(norm(x)))` (+ `residual`) of CPU f32 planes `xv` [b, c, h, w]:
/// the norm's padded output in a buffer from `scratch`, handed back once the
/// convolution has read it; the result is in another.
pub(crate) fn norm_conv(
    norm: &GroupNorm,
    conv: &Conv3x3,
    xv: &[f32],
    dims: [usize; 4],
    residual: Option<&[f32]>,
    scratch: &mut Scratch,
) -> Result<Planes> {
    let wb = (&norm.weight, &norm.bias);
    let n = norm::group_norm_planes(xv, dims, GroupNorm::GROUPS, GroupNorm::EPS, wb, scratch)?;
    let y = conv.forward_planes(&n.data, n.dims, Input::Padded, residual, scratch);
    scratch.give(n.data);
    y
}

/// Whether `x` takes the decoder's buffer-reusing CPU path.
pub(crate) fn planes_ok(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 4
}

pub(crate) fn group_norm(channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    if channels % GroupNorm::GROUPS != 0 {
        candle_core::bail!("group norm: {channels} channels do not split into 32 groups")
    }
    let vb = vb.set_dtype(DType::F32);
    Ok(GroupNorm {
        weight: vb.get(channels, "weight")?,
        bias: vb.get(channels, "bias")?,
    })
}

/// 3x3 convolution that keeps the spatial size (one matrix product over
/// zero-padded planes on the CPU, see `conv::conv3x3`).
#[derive(Debug, Clone)]
pub struct Conv3x3 {
    weight: Tensor,
    bias: Tensor,
    /// bf16 compute was asked for (see [`crate::VqModel::load`]): bf16
    /// GEMMs where the CPU has them, and Winograd's products from 64×64
    /// pixels up.
    bf16: bool,
}

impl Conv3x3 {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Input::Plain, None)
    }

    /// The convolution of `x` given with its zero padding (`[b, c, h + 2,
    /// w + 2]`, see [`GroupNorm::forward_swish_padded`]), plus `residual`
    /// when given, added in the output pass.
    pub fn forward_padded(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.run(x, Input::Padded, residual)
    }

    /// The convolution of the nearest-neighbour 2x upsampled `x`, without
    /// materialising the upsampled tensor on the CPU.
    pub fn forward_upsampled(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Input::Upsampled, None)
    }

    fn run(&self, x: &Tensor, input: Input, residual: Option<&Tensor>) -> Result<Tensor> {
        let bias = Some(&self.bias);
        conv::conv3x3(x, &self.weight, bias, input, residual, self.bf16)
    }

    /// [`Conv3x3::run`] of CPU f32 planes `xv` (laid out as `input` says),
    /// into a buffer from `scratch`.
    fn forward_planes(
        &self,
        xv: &[f32],
        dims: [usize; 4],
        input: Input,
        residual: Option<&[f32]>,
        scratch: &mut Scratch,
    ) -> Result<Planes> {
        let (weight, bias) = (&self.weight, Some(&self.bias));
        conv::conv3x3_planes(xv, dims, weight, bias, input, residual, self.bf16, scratch)
    }
}

/// A bf16 `vb` on the CPU selects bf16 compute. With the bf16 GEMM the
/// weight is then also held in bf16: the GEMM rounds it to bf16 anyway, so
/// the results are the same and the decoder takes half the memory.
pub(crate) fn conv3x3(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Conv3x3> {
    let bf16 = vb.dtype() == DType::BF16 && vb.device().is_cpu();
    let weight_dtype = if bf16 && janus_kernels::bf16_gemm::available() {
        DType::BF16
    } else {
        DType::F32
    };
    let vb = vb.set_dtype(DType::F32);
    Ok(Conv3x3 {
        bf16,
        weight: vb.get_with_hints_dtype(
            (out_channels, in_channels, 3, 3),
            "weight",
            Default::default(),
            weight_dtype,
        )?,
        bias: vb.get(out_channels, "bias")?,
    })
}

/// 1x1 convolution: a per-pixel linear map over channels.
pub(crate) fn conv1x1(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Conv2d> {
    candle_nn::conv2d(
        in_channels,
        out_channels,
        1,
        Conv2dConfig::default(),
        vb.set_dtype(DType::F32),
    )
}

/// Pre-activation residual block: norm, swish, conv, twice, plus a 1x1
/// `nin_shortcut` projection of the input when the channel count changes.
#[derive(Debug, Clone)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv3x3,
    norm2: GroupNorm,
    conv2: Conv3x3,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn load(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Self> {
        let nin_shortcut = if in_channels != out_channels {
            Some(conv1x1(in_channels, out_channels, vb.pp("nin_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(in_channels, vb.pp("norm1"))?,
            conv1: conv3x3(in_channels, out_channels, vb.pp("conv1"))?,
            norm2: group_norm(out_channels, vb.pp("norm2"))?,
            conv2: conv3x3(out_channels, out_channels, vb.pp("conv2"))?,
            nin_shortcut,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if planes_ok(x) {
            let (b, c, h, w) = x.dims4()?;
            let scratch = &mut Scratch::default();
            let y = janus_kernels::tensor::with_cpu_slice(x, |xv| {
                self.forward_planes(xv, [b, c, h, w], scratch)
            })??;
            return y.into_tensor();
        }
        // Each norm writes its output already padded for the convolution
        // after it, and the residual is added in the last convolution's
        // output pass.
        let h = self
            .conv1
            .forward_padded(&self.norm1.forward_swish_padded(x)?, None)?;
        let h = self.norm2.forward_swish_padded(&h)?;
        match &self.nin_shortcut {
            Some(shortcut) => self.conv2.forward_padded(&h, Some(&shortcut.forward(x)?)),
            None => self.conv2.forward_padded(&h, Some(x)),
        }
    }

    /// [`ResnetBlock::forward`] of CPU f32 planes `xv`, with the
    /// temporaries (both norms' padded outputs, the first convolution's
    /// output) and the result in buffers from `scratch`.
    pub(crate) fn forward_planes(
        &self,
        xv: &[f32],
        dims: [usize; 4],
        scratch: &mut Scratch,
    ) -> Result<Planes> {
        let h1 = norm_conv(&self.norm1, &self.conv1, xv, dims, None, scratch)?;
        let (norm2, conv2) = (&self.norm2, &self.conv2);
        let y = match &self.nin_shortcut {
            Some(shortcut) => {
                let x = Tensor::from_slice(xv, dims.to_vec(), &candle_core::Device::Cpu)?;
                let r = shortcut.forward(&x)?;
                janus_kernels::tensor::with_cpu_slice(&r, |rv| {
                    norm_conv(norm2, conv2, &h1.data, h1.dims, Some(rv), scratch)
                })?
            }
            None => norm_conv(norm2, conv2, &h1.data, h1.dims, Some(xv), scratch),
        };
        scratch.give(h1.data);
        y
    }
}

/// Single-head self-attention over all pixels, with 1x1 convolutions as
/// the q/k/v/output projections, plus the residual.
#[derive(Debug, Clone)]
pub struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    pub fn load(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            norm: group_norm(channels, vb.pp("norm"))?,
            q: conv1x1(channels, channels, vb.pp("q"))?,
            k: conv1x1(channels, channels, vb.pp("k"))?,
            v: conv1x1(channels, channels, vb.pp("v"))?,
            proj_out: conv1x1(channels, channels, vb.pp("proj_out"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        // Conv outputs are contiguous, so flattening the pixels is free and
        // the transposes below are strided views the matmul reads directly.
        let q = self.q.forward(&normed)?.reshape((b, c, h * w))?;
        let k = self.k.forward(&normed)?.reshape((b, c, h * w))?;
        let v = self.v.forward(&normed)?.reshape((b, c, h * w))?;
        // scores[b, i, j] = <q_i, k_j> / sqrt(c), normalised over the keys j.
        let scores = (q.transpose(1, 2)?.matmul(&k)? * (c as f64).powf(-0.5))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        // out[b, :, i] = sum_j v[b, :, j] * probs[b, i, j]
        let out = v.matmul(&probs.transpose(1, 2)?)?.reshape((b, c, h, w))?;
        x + self.proj_out.forward(&out)?
    }
}

/// The `mid` stack of both encoder and decoder: res, attn, res, stored
/// as `mid.0`, `mid.1`, `mid.2`.
#[derive(Debug, Clone)]
pub struct MidBlock {
    res_in: ResnetBlock,
    attn: AttnBlock,
    res_out: ResnetBlock,
}

impl MidBlock {
    pub fn load(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            res_in: ResnetBlock::load(vb.pp(0), channels, channels)?,
            attn: AttnBlock::load(vb.pp(1), channels)?,
            res_out: ResnetBlock::load(vb.pp(2), channels, channels)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.res_in.forward(x)?;
        let x = self.attn.forward(&x)?;
        self.res_out.forward(&x)
    }
}

/// Halves the resolution with a stride-2 3x3 convolution.
#[derive(Debug, Clone)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn load(vb: VarBuilder, channels: usize) -> Result<Self> {
        let cfg = Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv: candle_nn::conv2d(channels, channels, 3, cfg, vb.pp("conv"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The checkpoint was trained with zero padding on the right and
        // bottom only, which a symmetric conv padding cannot express.
        let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
        self.conv.forward(&x)
    }
}

/// Doubles the resolution (nearest neighbour) and smooths with a 3x3 conv.
#[derive(Debug, Clone)]
pub struct Upsample {
    conv: Conv3x3,
}

impl Upsample {
    pub fn load(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(channels, channels, vb.pp("conv"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The reference upcasts bf16 to f32 around the interpolation; nearest
        // neighbour only copies values, so any dtype gives the same result.
        self.conv.forward_upsampled(x)
    }

    /// [`Upsample::forward`] of CPU f32 planes `xv`: the padded (upsampled,
    /// unless Winograd reads them before upsampling) planes and the result
    /// in buffers from `scratch`.
    pub(crate) fn forward_planes(
        &self,
        xv: &[f32],
        dims: [usize; 4],
        scratch: &mut Scratch,
    ) -> Result<Planes> {
        (self.conv).forward_planes(xv, dims, Input::Upsampled, None, scratch)
    }
}
