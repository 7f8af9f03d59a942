use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{layer_norm, Conv2d, Conv2dConfig, LayerNorm, LayerNormConfig, VarBuilder};
use janus_kernels::quant::dequant_row;
use janus_kernels::tensor::{map_rows, with_cpu_slice};
use janus_nn::{load_weight, Loaded};

/// Sizes of a SigLIP ViT. `layers` is the number of blocks actually built,
/// i.e. after the reference's `select_layer` truncation.
#[derive(Debug, Clone, PartialEq)]
pub struct SiglipVitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
}

impl SiglipVitConfig {
    /// `siglip_large_patch16_384`, the encoder of Janus-Pro 1B and 7B.
    pub fn siglip_large_patch16_384() -> Self {
        Self {
            image_size: 384,
            patch_size: 16,
            width: 1024,
            layers: 24,
            heads: 16,
            mlp_ratio: 4.0,
        }
    }

    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// timm computes the MLP width as `int(dim * mlp_ratio)`.
    pub fn mlp_hidden(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
}

const LN_EPS: f64 = 1e-6;

/// The dtype activations flow in: f32 on the CPU (candle's CPU bf16 kernels
/// convert per call, and has no bf16 conv2d there), the weight dtype elsewhere.
fn activation_dtype(vb: &VarBuilder) -> DType {
    if vb.device().is_cpu() {
        DType::F32
    } else {
        vb.dtype()
    }
}

fn ln(size: usize, vb: VarBuilder) -> Result<LayerNorm> {
    let act = activation_dtype(&vb);
    layer_norm(
        size,
        LayerNormConfig {
            eps: LN_EPS,
            ..Default::default()
        },
        vb.set_dtype(act),
    )
}

/// `y = x W^T + b`. With bf16 or quantised weights on the CPU only that
/// copy is kept: the bf16 GEMM reads it directly (dequantising q8_0 blocks
/// panel by panel), and elsewhere it is widened to f32 for each call (the
/// ViT always multiplies hundreds of rows, so the widening is a small part
/// of the matmul).
struct Linear {
    weight: Weight,
    bias: Tensor,
}

enum Weight {
    Dense(Tensor),
    /// GGUF blocks `[out, in]` (see [`SiglipVit::load_quantized`]).
    Quantized(QTensor),
}

impl Linear {
    fn load(
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder,
        quant: Option<GgmlDType>,
    ) -> Result<Self> {
        let act = activation_dtype(&vb);
        let bias = vb.get(out_dim, "bias")?.to_dtype(act)?;
        let quant = quant.filter(|q| in_dim % q.block_size() == 0);
        let weight = match load_weight(&vb, "weight", (out_dim, in_dim), quant)? {
            Loaded::Blocks(q) => Weight::Quantized(q),
            Loaded::Dense(w) => Weight::Dense(w),
        };
        Ok(Self { weight, bias })
    }

    /// Whether `x` goes through the bf16 GEMM (bf16 or quantised weight,
    /// f32 activations on a CPU that has it).
    fn fast(&self, x: &Tensor) -> bool {
        let weight_ok = match &self.weight {
            Weight::Dense(w) => w.dtype() == DType::BF16,
            Weight::Quantized(q) => matches!(q.dtype(), GgmlDType::Q8_0 | GgmlDType::Q4K),
        };
        weight_ok
            && x.dtype() == DType::F32
            && x.device().is_cpu()
            && janus_kernels::bf16_gemm::available()
    }
}

/// bf16 -> f32 of a contiguous CPU tensor, split across threads.
fn widen_bf16(w: &Tensor) -> Result<Tensor> {
    let (storage, layout) = w.storage_and_layout();
    let src = match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(v)), Some((a, b))) => &v[a..b],
        _ => return w.to_dtype(DType::F32),
    };
    let mut out = vec![0f32; src.len()];
    janus_kernels::tensor::widen_bf16(src, &mut out);
    drop(storage);
    Tensor::from_vec(out, w.shape().clone(), &candle_core::Device::Cpu)
}

/// `x Φ(x)` with `erf` from Abramowitz & Stegun 7.1.26 (absolute error
/// < 1.5e-7, far below the bf16 rounding of this path); branch-free so
/// loops over it vectorise.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let erf_abs = 1.0 - poly * janus_kernels::math::fast_exp(-z * z);
    0.5 * x * (1.0 + erf_abs.copysign(x))
}

impl Linear {
    /// `x W^T + b` through the bf16 GEMM (activations rounded to bf16, f32
    /// sums, as PyTorch bf16), then exact-form GELU when `gelu` (bias and
    /// activation in one pass over the output).
    fn forward_bf16(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        use janus_kernels::bf16_gemm::{gemm, Rhs};
        use rayon::prelude::*;
        let run = |rhs: &Rhs, n: usize, k: usize| {
            with_cpu_slice::<f32, _>(&self.bias, |bias| {
                map_rows(x, k, n, |xv, m, out| {
                    gemm(m, n, k, xv, k, rhs, out, n, false, true);
                    // Two loops, not a branch per element, so each vectorises.
                    out.par_chunks_mut(n).for_each(|row| {
                        if gelu {
                            for (y, &b) in row.iter_mut().zip(bias) {
                                *y = gelu_erf(*y + b);
                            }
                        } else {
                            for (y, &b) in row.iter_mut().zip(bias) {
                                *y += b;
                            }
                        }
                    });
                    Ok(())
                })
            })?
        };
        match &self.weight {
            Weight::Dense(w) => {
                let (n, k) = w.dims2()?;
                with_cpu_slice::<half::bf16, _>(w, |wv| {
                    run(&Rhs::Bf16Rows { data: wv, ld: k }, n, k)
                })?
            }
            Weight::Quantized(q) => {
                use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0};
                let (n, k) = q.shape().dims2()?;
                let data = q.data()?;
                let row: &(dyn Fn(usize, usize, &mut [f32]) + Sync) = match q.dtype() {
                    GgmlDType::Q8_0 => &|j, l0, out| dequant_row::<BlockQ8_0>(&data, k, j, l0, out),
                    _ => &|j, l0, out| dequant_row::<BlockQ4K>(&data, k, j, l0, out),
                };
                run(&Rhs::Rows(row), n, k)
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.fast(x) {
            return self.forward_bf16(x, false);
        }
        let w = match &self.weight {
            Weight::Dense(w) => w.clone(),
            Weight::Quantized(q) => q.dequantize(&Device::Cpu)?.to_device(x.device())?,
        };
        let w = if w.dtype() == x.dtype() {
            w
        } else if w.dtype() == DType::BF16 && x.dtype() == DType::F32 && x.device().is_cpu() {
            widen_bf16(&w)?
        } else {
            w.to_dtype(x.dtype())?
        };
        // As candle_nn::Linear: a batch-broadcast transposed weight.
        let w = match *x.dims() {
            [b1, b2, _, _] => w.broadcast_left((b1, b2))?.t()?,
            [bsize, _, _] => w.broadcast_left(bsize)?.t()?,
            _ => w.t()?,
        };
        x.matmul(&w)?.broadcast_add(&self.bias)
    }
}

struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &SiglipVitConfig, quant: Option<GgmlDType>) -> Result<Self> {
        let head_dim = cfg.width / cfg.heads;
        Ok(Self {
            qkv: Linear::load(cfg.width, 3 * cfg.width, vb.pp("qkv"), quant)?,
            proj: Linear::load(cfg.width, cfg.width, vb.pp("proj"), quant)?,
            heads: cfg.heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let head_dim = c / self.heads;
        if self.qkv.fast(x) {
            return self
                .proj
                .forward(&self.attention_bf16(&self.qkv.forward(x)?)?);
        }
        // [b, n, 3c] -> [3, b, heads, n, head_dim]
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, self.heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * self.scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let attn = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        self.proj.forward(&out)
    }
}

impl Attention {
    /// Attention of `qkv` [b, n, 3c] with the fused CPU kernel, reading q, k
    /// and v where the projection put them. Returns [b, n, c].
    fn attention_bf16(&self, qkv: &Tensor) -> Result<Tensor> {
        use janus_kernels::attention::{attention, AttentionShape, Heads};
        let (_, n, c3) = qkv.dims3()?;
        let c = c3 / 3;
        let hd = c / self.heads;
        let shape = AttentionShape {
            heads: self.heads,
            kv_heads: self.heads,
            head_dim: hd,
            queries: n,
            keys: n,
            scale: self.scale as f32,
            causal: None,
        };
        map_rows(qkv, c3, c, |v, _, out| {
            for (image, o) in v.chunks(n * c3).zip(out.chunks_mut(n * c)) {
                let part = |i: usize| Heads {
                    data: &image[i * c..],
                    row: c3,
                    head: hd,
                };
                attention(&shape, part(0), part(1), part(2), o, c);
            }
            Ok(())
        })
    }
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &SiglipVitConfig, quant: Option<GgmlDType>) -> Result<Self> {
        let hidden = cfg.mlp_hidden();
        Ok(Self {
            fc1: Linear::load(cfg.width, hidden, vb.pp("fc1"), quant)?,
            fc2: Linear::load(hidden, cfg.width, vb.pp("fc2"), quant)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // nn.GELU() default: the exact erf form, not the tanh approximation.
        if self.fc1.fast(x) {
            return self.fc2.forward(&self.fc1.forward_bf16(x, true)?);
        }
        self.fc2.forward(&self.fc1.forward(x)?.gelu_erf()?)
    }
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &SiglipVitConfig, quant: Option<GgmlDType>) -> Result<Self> {
        Ok(Self {
            norm1: ln(cfg.width, vb.pp("norm1"))?,
            attn: Attention::load(vb.pp("attn"), cfg, quant)?,
            norm2: ln(cfg.width, vb.pp("norm2"))?,
            mlp: Mlp::load(vb.pp("mlp"), cfg, quant)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm1.forward(x)?)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

/// The SigLIP vision tower: pixels `[n, 3, S, S]` to features `[n, patches, width]`.
pub struct SiglipVit {
    patch_embed: Conv2d,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    act_dtype: DType,
    cfg: SiglipVitConfig,
}

impl SiglipVit {
    /// Loads from the `vision_model.vision_tower` prefix of a Janus checkpoint.
    pub fn load(vb: VarBuilder, cfg: &SiglipVitConfig) -> Result<Self> {
        Self::load_quantized(vb, cfg, None)
    }

    /// As [`SiglipVit::load`], with the blocks' linear weights quantised to
    /// `quant` (GGUF q8_0 or q4_K blocks) as they are read, on the CPU.
    pub fn load_quantized(
        vb: VarBuilder,
        cfg: &SiglipVitConfig,
        quant: Option<GgmlDType>,
    ) -> Result<Self> {
        let conv_cfg = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        // candle has no bf16 conv2d on the CPU: the small patch embedding
        // (and the position table) are kept in the activation dtype.
        let act = activation_dtype(&vb);
        let patch_embed = candle_nn::conv2d(
            3,
            cfg.width,
            cfg.patch_size,
            conv_cfg,
            vb.pp("patch_embed.proj").set_dtype(act),
        )?;
        let pos_embed = vb
            .clone()
            .set_dtype(act)
            .get((1, cfg.num_patches(), cfg.width), "pos_embed")?;
        let blocks = (0..cfg.layers)
            .map(|i| Block::load(vb.pp(format!("blocks.{i}")), cfg, quant))
            .collect::<Result<Vec<_>>>()?;
        let norm = ln(cfg.width, vb.pp("norm"))?;
        Ok(Self {
            patch_embed,
            pos_embed,
            blocks,
            norm,
            act_dtype: act,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &SiglipVitConfig {
        &self.cfg
    }

    /// `pixel_values`: normalised images `[n, 3, S, S]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixel_values.dims4()?;
        if c != 3 || h != self.cfg.image_size || w != self.cfg.image_size {
            candle_core::bail!(
                "vision tower expects [n, 3, {s}, {s}] pixels, got {:?}",
                pixel_values.dims(),
                s = self.cfg.image_size
            )
        }
        let pixel_values = &pixel_values.to_dtype(self.act_dtype)?;
        // [n, width, gh, gw] -> [n, gh*gw, width]
        let x = self
            .patch_embed
            .forward(pixel_values)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let mut x = x.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.norm.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gelu_matches_candle_exact_form() {
        let xs: Vec<f32> = (-1200..1200).map(|i| i as f32 / 100.0).collect();
        let t = candle_core::Tensor::new(xs.as_slice(), &candle_core::Device::Cpu).unwrap();
        let want: Vec<f32> = t.gelu_erf().unwrap().to_vec1().unwrap();
        for (x, w) in xs.iter().zip(want) {
            assert!((super::gelu_erf(*x) - w).abs() < 1e-6, "{x}");
        }
    }
}
