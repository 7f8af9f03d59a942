//! The rotary position embedding (RoPE) of the language model.

use candle_core::{DType, Device, Result, Tensor};

use crate::config::LlamaConfig;

/// Cos/sin tables of the rotary embedding for every position.
pub(crate) struct Rotary {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
}

impl Rotary {
    pub(crate) fn new(cfg: &LlamaConfig, dtype: DType, dev: &Device) -> Result<Self> {
        let dim = cfg.head_dim();
        // As transformers: inv_freq = 1 / theta^(2i/d) in f32, angles = pos * inv_freq.
        let inv_freq: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1f32 / (cfg.rope_theta as f32).powf(i as f32 / dim as f32))
            .collect();
        let n = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, n), dev)?;
        let pos = Tensor::arange(0u32, cfg.max_position_embeddings as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let angles = pos.matmul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// Rotates `q`/`k` of shape [b, heads, t, head_dim] starting at `offset`.
    pub(crate) fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        candle_nn::rotary_emb::rope(&x, &cos, &sin)
    }

    /// Rotates one position per sequence, `x` [b, heads, 1, head_dim], row
    /// `i` at position `positions[i]`.
    pub(crate) fn apply_rows(&self, x: &Tensor, positions: &[u32]) -> Result<Tensor> {
        let idx = Tensor::new(positions, x.device())?;
        let b = positions.len();
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(&idx, 0)?.reshape((b, 1, half))?;
        let sin = self.sin.index_select(&idx, 0)?.reshape((b, 1, half))?;
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
    }
}
