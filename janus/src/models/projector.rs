//! `MlpProjector`: maps vision features (aligner) or VQ code embeddings
//! (gen aligner) into the language model's hidden size.

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use crate::config::{ProjectorConfig, ProjectorKind};

pub struct MlpProjector {
    /// Linears in order; GELU (exact erf, `nn.GELU()`) sits between them.
    linears: Vec<Linear>,
}

impl MlpProjector {
    /// `vb` is the projector's prefix (`aligner` or `gen_aligner`).
    pub fn load(vb: VarBuilder, cfg: &ProjectorConfig) -> Result<Self> {
        let linears = match cfg.kind {
            ProjectorKind::Identity => vec![],
            // `self.layers = nn.Linear(...)`: no index in the weight names.
            ProjectorKind::Linear => vec![linear(cfg.input_dim, cfg.n_embed, vb.pp("layers"))?],
            // `nn.Sequential(Linear, GELU, Linear, GELU, ...)`: linears at even indices.
            ProjectorKind::MlpGelu { depth } => (0..depth)
                .map(|i| {
                    let in_dim = if i == 0 { cfg.input_dim } else { cfg.n_embed };
                    linear(in_dim, cfg.n_embed, vb.pp(format!("layers.{}", 2 * i)))
                })
                .collect::<Result<_>>()?,
        };
        Ok(Self { linears })
    }
}

impl Module for MlpProjector {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.linears.iter().enumerate() {
            if i > 0 {
                x = x.gelu_erf()?;
            }
            x = l.forward(&x)?;
        }
        Ok(x)
    }
}
