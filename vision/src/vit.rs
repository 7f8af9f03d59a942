use candle_core::{Module, Result, Tensor};
use candle_nn::{
    layer_norm, linear, Conv2d, Conv2dConfig, LayerNorm, LayerNormConfig, Linear, VarBuilder,
};

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

fn ln(size: usize, vb: VarBuilder) -> Result<LayerNorm> {
    layer_norm(
        size,
        LayerNormConfig {
            eps: LN_EPS,
            ..Default::default()
        },
        vb,
    )
}

struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &SiglipVitConfig) -> Result<Self> {
        let head_dim = cfg.width / cfg.heads;
        Ok(Self {
            qkv: linear(cfg.width, 3 * cfg.width, vb.pp("qkv"))?,
            proj: linear(cfg.width, cfg.width, vb.pp("proj"))?,
            heads: cfg.heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let head_dim = c / self.heads;
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

struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &SiglipVitConfig) -> Result<Self> {
        let hidden = cfg.mlp_hidden();
        Ok(Self {
            fc1: linear(cfg.width, hidden, vb.pp("fc1"))?,
            fc2: linear(hidden, cfg.width, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // nn.GELU() default: the exact erf form, not the tanh approximation.
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
    fn load(vb: VarBuilder, cfg: &SiglipVitConfig) -> Result<Self> {
        Ok(Self {
            norm1: ln(cfg.width, vb.pp("norm1"))?,
            attn: Attention::load(vb.pp("attn"), cfg)?,
            norm2: ln(cfg.width, vb.pp("norm2"))?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
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
    cfg: SiglipVitConfig,
}

impl SiglipVit {
    /// Loads from the `vision_model.vision_tower` prefix of a Janus checkpoint.
    pub fn load(vb: VarBuilder, cfg: &SiglipVitConfig) -> Result<Self> {
        let conv_cfg = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        let patch_embed = candle_nn::conv2d(
            3,
            cfg.width,
            cfg.patch_size,
            conv_cfg,
            vb.pp("patch_embed.proj"),
        )?;
        let pos_embed = vb.get((1, cfg.num_patches(), cfg.width), "pos_embed")?;
        let blocks = (0..cfg.layers)
            .map(|i| Block::load(vb.pp(format!("blocks.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = ln(cfg.width, vb.pp("norm"))?;
        Ok(Self {
            patch_embed,
            pos_embed,
            blocks,
            norm,
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
