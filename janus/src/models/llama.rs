//! The DeepSeek-LLM language model: a LLaMA decoder (RMSNorm, RoPE, SiLU
//! MLP, grouped-query attention) that returns hidden states, so both the
//! text head (`lm_head`) and the image head can read them.
//!
//! Linear weights are [`QLinear`]s: f32 (exact), bf16 or quantised at load
//! (see [`janus_nn::QLinear`]). The q/k/v projections and the gate/up projections
//! are each concatenated into one weight at load, so a decoding step runs
//! four matmuls per layer instead of seven. Activations, norms and the
//! key/value cache stay in f32 on the CPU.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, RmsNorm, VarBuilder};

use super::attention::Attention;
use super::kv_cache::{KvCache, LayerCache};
use super::rotary::Rotary;
use crate::config::LlamaConfig;
use janus_nn::{activation_dtype, bf16_compute, QLinear, Quant};

struct Mlp {
    gate_up_proj: QLinear,
    down_proj: QLinear,
    intermediate: usize,
    /// bf16 compute: `silu(gate) * up` in one pass (the exact f32 path keeps
    /// candle's ops).
    bf16_compute: bool,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &LlamaConfig, quant: Quant) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_up_proj: QLinear::stacked(&vb, &[("gate_proj", i), ("up_proj", i)], h, quant)?,
            down_proj: QLinear::load(i, h, false, vb.pp("down_proj"), quant)?,
            intermediate: i,
            bf16_compute: bf16_compute(vb.device(), vb.dtype(), quant),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up_proj.forward(x)?;
        let i = self.intermediate;
        if self.bf16_compute && gate_up.dtype() == DType::F32 {
            return self.down_proj.forward(&silu_mul(&gate_up, i)?);
        }
        let gate = candle_nn::ops::silu(&gate_up.narrow(2, 0, i)?)?;
        self.down_proj.forward(&(gate * gate_up.narrow(2, i, i)?)?)
    }
}

/// `silu(gate) * up` of `gate_up` [.., 2 i] (gate first) -> [.., i].
fn silu_mul(gate_up: &Tensor, i: usize) -> Result<Tensor> {
    use janus_kernels::math::fast_exp;
    use rayon::prelude::*;
    janus_kernels::tensor::map_rows(gate_up, 2 * i, i, |src, _, out| {
        out.par_chunks_mut(i)
            .zip(src.par_chunks(2 * i))
            .for_each(|(o, row)| {
                let (g, u) = row.split_at(i);
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = g / (1.0 + fast_exp(-g)) * u;
                }
            });
        Ok(())
    })
}

struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// RMSNorm weights in the activation dtype, whatever the checkpoint holds.
fn rms_norm(size: usize, eps: f64, vb: VarBuilder, act: DType) -> Result<RmsNorm> {
    let w = vb.get(size, "weight")?.to_dtype(act)?;
    Ok(RmsNorm::new(w, eps))
}

impl DecoderLayer {
    fn load(vb: VarBuilder, cfg: &LlamaConfig, quant: Quant, act: DType) -> Result<Self> {
        Ok(Self {
            input_layernorm: rms_norm(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
                act,
            )?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg, quant)?,
            post_attention_layernorm: rms_norm(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
                act,
            )?,
            mlp: Mlp::load(vb.pp("mlp"), cfg, quant)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        cache: &mut LayerCache,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = (x + self.self_attn.forward(
            &self.input_layernorm.forward(x)?,
            rotary,
            cache,
            mask,
        )?)?;
        &h + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&h)?)?
    }
}

/// The language model: token embeddings, decoder layers, final norm and text head.
pub struct Llama {
    embed_tokens: TokenEmbedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: QLinear,
    rotary: Rotary,
    act_dtype: DType,
    /// Keys and values are cached in bf16 with bf16 compute (the attention
    /// GEMMs round them to bf16 anyway; half the memory), else in `act_dtype`.
    kv_dtype: DType,
    cfg: LlamaConfig,
}

impl Llama {
    /// `vb` is the `language_model` prefix (`model.*` and `lm_head`).
    pub fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        Self::load_quantized(vb, cfg, Quant::None)
    }

    /// As [`Llama::load`], with the linear weights (and `lm_head`) in `quant`.
    /// With quantisation the token embedding table is stored in the same
    /// blocks (rows are dequantised as they are looked up); otherwise in the
    /// load dtype.
    pub fn load_quantized(vb: VarBuilder, cfg: &LlamaConfig, quant: Quant) -> Result<Self> {
        let act = activation_dtype(vb.device(), vb.dtype());
        let m = vb.pp("model");
        let embed_tokens = TokenEmbedding::load(m.pp("embed_tokens"), cfg, quant)?;
        // The two vocabulary-sized matrices first, while little else is
        // resident: their full-precision transients then never stack on top
        // of the whole model.
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.tied_head(quant)?
        } else {
            QLinear::load(
                cfg.hidden_size,
                cfg.vocab_size,
                false,
                vb.pp("lm_head"),
                quant,
            )?
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(m.pp(format!("layers.{i}")), cfg, quant, act))
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"), act)?;
        let rotary = Rotary::new(cfg, act, vb.device())?;
        let kv_dtype = if bf16_compute(vb.device(), vb.dtype(), quant) {
            DType::BF16
        } else {
            act
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            act_dtype: act,
            kv_dtype,
            cfg: cfg.clone(),
        })
    }

    /// The sizes it was built with.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The dtype of hidden states (f32 on the CPU).
    pub fn activation_dtype(&self) -> DType {
        self.act_dtype
    }

    /// Bytes held by the linear weights of the decoder layers and `lm_head`.
    pub fn linear_weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.self_attn.weight_bytes()
                    + l.mlp.gate_up_proj.weight_bytes()
                    + l.mlp.down_proj.weight_bytes()
            })
            .sum::<usize>()
            + self.lm_head.weight_bytes()
    }

    /// An empty cache; its buffers are sized on first use and grow as needed.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_with_capacity(0)
    }

    /// An empty cache whose buffers are allocated once for `positions`
    /// positions (e.g. prompt + 576 image tokens), so decoding never reallocates.
    pub fn new_cache_with_capacity(&self, positions: usize) -> KvCache {
        let reserve = positions.min(self.cfg.max_position_embeddings);
        KvCache {
            layers: vec![
                LayerCache {
                    kv: None,
                    len: 0,
                    starts: vec![],
                    reserve,
                    dtype: Some(self.kv_dtype),
                };
                self.layers.len()
            ],
        }
    }

    /// Token embeddings, `ids` [b, t] -> [b, t, hidden].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let e = self.embed_tokens.lookup(ids)?;
        if e.dtype() == self.act_dtype {
            Ok(e)
        } else {
            e.to_dtype(self.act_dtype)
        }
    }

    /// Runs `embeds` [b, t, hidden] after the positions already in `cache`
    /// and returns the final-norm hidden states [b, t, hidden].
    pub fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        let offset = cache.len();
        if offset + t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} tokens exceeds the model's context of {} positions",
                offset + t,
                self.cfg.max_position_embeddings
            )
        }
        let embeds = if embeds.dtype() == self.act_dtype {
            embeds.clone()
        } else {
            embeds.to_dtype(self.act_dtype)?
        };
        let mask = if t > 1 {
            Some(causal_mask(t, offset, self.act_dtype, embeds.device())?)
        } else {
            None
        };
        // One position per sequence (decoding) is dozens of short parallel
        // loops: run them from a pool thread. Not a prefill: its large
        // buffers would then come from that thread's malloc arena and stay
        // there, out of reach of later allocations on this thread (a higher
        // peak RSS by the VQ decode).
        let on_pool = embeds.device().is_cpu() && t == 1;
        let run = || {
            let mut x = embeds;
            for (layer, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
                x = layer.forward(&x, &self.rotary, c, mask.as_ref())?;
            }
            self.norm.forward(&x)
        };
        if on_pool {
            janus_kernels::on_pool(run)
        } else {
            run()
        }
    }

    /// Text logits of hidden states [.., hidden] -> [.., vocab].
    pub fn lm_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}

/// The token embedding table: as loaded, or in the model's quantisation blocks.
enum TokenEmbedding {
    Dense(Embedding),
    Quantized(candle_core::quantized::QTensor),
}

impl TokenEmbedding {
    /// `vb` is the `embed_tokens` prefix. The table is quantised with the
    /// model (see [`Quant::for_in_dim`]) on the CPU, or taken as stored.
    fn load(vb: VarBuilder, cfg: &LlamaConfig, quant: Quant) -> Result<Self> {
        use janus_nn::{load_weight, Loaded};
        let dims = (cfg.vocab_size, cfg.hidden_size);
        let dtype = quant.for_in_dim(cfg.hidden_size).ggml();
        Ok(match load_weight(&vb, "weight", dims, dtype)? {
            Loaded::Blocks(q) => Self::Quantized(q),
            Loaded::Dense(w) => Self::Dense(Embedding::new(w, cfg.hidden_size)),
        })
    }

    /// An output head tied to this table, in `quant`.
    fn tied_head(&self, quant: Quant) -> Result<QLinear> {
        match self {
            Self::Dense(e) => QLinear::from_weight(e.embeddings().clone(), None, quant),
            Self::Quantized(q) => QLinear::from_blocks(
                candle_core::quantized::ggml_file::qtensor_from_ggml(
                    q.dtype(),
                    &q.data()?,
                    q.shape().dims().to_vec(),
                    &Device::Cpu,
                )?,
                None,
                quant,
            ),
        }
    }

    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(e) => e.forward(ids),
            Self::Quantized(q) => q.embedding(ids),
        }
    }
}

/// Additive mask [t, offset + t]: query i sees keys 0..=offset+i.
fn causal_mask(t: usize, offset: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..offset + t).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, offset + t), dev)?.to_dtype(dtype)
}
