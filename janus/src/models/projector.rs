//! `MlpProjector`: maps vision features (aligner) or VQ code embeddings
//! (gen aligner) into the language model's hidden size.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::{ProjectorConfig, ProjectorKind};
use janus_nn::{activation_dtype, QLinear, Quant};

/// The reference `MlpProjector`: linears with GELU between them.
pub struct MlpProjector {
    /// Linears in order; GELU (exact erf, `nn.GELU()`) sits between them.
    linears: Vec<QLinear>,
    act_dtype: candle_core::DType,
}

impl MlpProjector {
    /// `vb` is the projector's prefix (`aligner` or `gen_aligner`).
    pub fn load(vb: VarBuilder, cfg: &ProjectorConfig) -> Result<Self> {
        let lin = |i: usize, o: usize, vb: VarBuilder| QLinear::load(i, o, true, vb, Quant::None);
        let linears = match cfg.kind {
            ProjectorKind::Identity => vec![],
            // `self.layers = nn.Linear(...)`: no index in the weight names.
            ProjectorKind::Linear => vec![lin(cfg.input_dim, cfg.n_embed, vb.pp("layers"))?],
            // `nn.Sequential(Linear, GELU, Linear, GELU, ...)`: linears at even indices.
            ProjectorKind::MlpGelu { depth } => (0..depth)
                .map(|i| {
                    let in_dim = if i == 0 { cfg.input_dim } else { cfg.n_embed };
                    lin(in_dim, cfg.n_embed, vb.pp(format!("layers.{}", 2 * i)))
                })
                .collect::<Result<_>>()?,
        };
        Ok(Self {
            linears,
            act_dtype: activation_dtype(vb.device(), vb.dtype()),
        })
    }
}

impl Module for MlpProjector {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = if x.dtype() == self.act_dtype {
            x.clone()
        } else {
            x.to_dtype(self.act_dtype)?
        };
        for (i, l) in self.linears.iter().enumerate() {
            if i > 0 {
                x = x.gelu_erf()?;
            }
            x = l.forward(&x)?;
        }
        Ok(x)
    }
}
