use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{layer_norm, Conv2d, Conv2dConfig, LayerNorm, LayerNormConfig, VarBuilder};
use janus_kernels::tensor::map_rows;
use janus_nn::{activation_dtype, QLinear, Quant};

/// Sizes of a SigLIP ViT. `layers` is the number of blocks actually built,
/// i.e. after the reference's `select_layer` truncation.
#[derive(Debug, Clone, PartialEq)]
pub struct SiglipVitConfig {
    /// Side of the square input image, in pixels.
    pub image_size: usize,
    /// Side of a patch, in pixels.
    pub patch_size: usize,
    /// Width of the token embeddings.
    pub width: usize,
    /// Transformer blocks built.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width over `width`.
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

    /// Patches (tokens) per image.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// timm computes the MLP width as `int(dim * mlp_ratio)`.
    pub fn mlp_hidden(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
}

const LN_EPS: f64 = 1e-6;

fn ln(size: usize, vb: VarBuilder) -> Result<LayerNorm> {
    let act = activation_dtype(vb.device(), vb.dtype());
    layer_norm(
        size,
        LayerNormConfig {
            eps: LN_EPS,
            ..Default::default()
        },
        vb.set_dtype(act),
    )
}

struct Attention {
    qkv: QLinear,
    proj: QLinear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &SiglipVitConfig, quant: Quant) -> Result<Self> {
        let head_dim = cfg.width / cfg.heads;
        Ok(Self {
            qkv: QLinear::load(cfg.width, 3 * cfg.width, true, vb.pp("qkv"), quant)?,
            proj: QLinear::load(cfg.width, cfg.width, true, vb.pp("proj"), quant)?,
            heads: cfg.heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let head_dim = c / self.heads;
        if self.qkv.rounds_inputs(x) {
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
    fc1: QLinear,
    fc2: QLinear,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &SiglipVitConfig, quant: Quant) -> Result<Self> {
        let hidden = cfg.mlp_hidden();
        Ok(Self {
            fc1: QLinear::load(cfg.width, hidden, true, vb.pp("fc1"), quant)?,
            fc2: QLinear::load(hidden, cfg.width, true, vb.pp("fc2"), quant)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // nn.GELU() default: the exact erf form, not the tanh approximation.
        self.fc2.forward(&self.fc1.forward_gelu(x)?)
    }
}

struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &SiglipVitConfig, quant: Quant) -> Result<Self> {
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
        Self::load_quantized(vb, cfg, Quant::None)
    }

    /// As [`SiglipVit::load`], with the blocks' linear weights quantised to
    /// `quant` as they are read (see [`QLinear::load`]).
    pub fn load_quantized(vb: VarBuilder, cfg: &SiglipVitConfig, quant: Quant) -> Result<Self> {
        let conv_cfg = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        // candle has no bf16 conv2d on the CPU: the small patch embedding
        // (and the position table) are kept in the activation dtype.
        let act = activation_dtype(vb.device(), vb.dtype());
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

    /// The sizes it was built with.
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
