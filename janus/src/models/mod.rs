//! The modules of Janus-Pro, assembled as the official `MultiModalityCausalLM`.

mod attention;
mod gen_head;
mod kv_cache;
mod llama;
mod projector;
mod rotary;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};
use janus_vision::SiglipVit;
use janus_vq::VqModel;

use crate::config::JanusConfig;
pub use gen_head::GenHead;
use janus_nn::{reduced_precision_cpu, Quant};
pub(crate) use kv_cache::keep_batch_rows;
pub use kv_cache::KvCache;
pub use llama::Llama;
pub use projector::MlpProjector;

/// Every module of a Janus-Pro checkpoint, under the official weight names.
pub struct JanusModel {
    /// SigLIP tower (understanding).
    pub vision: SiglipVit,
    /// SigLIP features to LLM embeddings.
    pub aligner: MlpProjector,
    /// VQ tokenizer (generation).
    pub gen_vision: VqModel,
    /// VQ code embeddings to LLM embeddings.
    pub gen_aligner: MlpProjector,
    /// LLM hidden states to VQ code logits.
    pub gen_head: GenHead,
    /// VQ code embeddings.
    pub gen_embed: Embedding,
    /// The language model.
    pub language: Llama,
    /// The sizes it was built with.
    pub config: JanusConfig,
}

impl JanusModel {
    /// Loads every module from `vb` (released names) with `cfg`'s sizes.
    pub fn load(vb: VarBuilder, cfg: &JanusConfig) -> Result<Self> {
        Self::load_quantized(vb, cfg, Quant::None)
    }

    /// As [`JanusModel::load`], with the language model's and image head's
    /// linear weights quantised to `quant` as they are read (and the vision
    /// tower's to q8_0).
    pub fn load_quantized(vb: VarBuilder, cfg: &JanusConfig, quant: Quant) -> Result<Self> {
        Ok(Self {
            // With quantisation the vision tower's linears take q8_0 (not
            // 4-bit: image features feed every answer token).
            vision: SiglipVit::load_quantized(
                vb.pp("vision_model.vision_tower"),
                &cfg.vision,
                if quant == Quant::None {
                    Quant::None
                } else {
                    Quant::Q8_0
                },
            )?,
            aligner: MlpProjector::load(vb.pp("aligner"), &cfg.aligner)?,
            // The VQ is convolutional and candle has no bf16/f16 conv2d on the
            // CPU. A bf16 builder asks for bf16 compute in its 3x3
            // convolutions (see `VqModel::load`: bf16 GEMMs where the CPU has
            // them, Winograd's products on every CPU); everything else in it
            // stays f32.
            gen_vision: VqModel::load(
                vb.pp("gen_vision_model").set_dtype(
                    if reduced_precision_cpu(vb.device(), vb.dtype(), quant) {
                        DType::BF16
                    } else {
                        DType::F32
                    },
                ),
                &cfg.gen_vision,
            )?,
            gen_aligner: MlpProjector::load(vb.pp("gen_aligner"), &cfg.gen_aligner)?,
            gen_head: GenHead::load_quantized(vb.pp("gen_head"), &cfg.gen_head, quant)?,
            gen_embed: embedding(
                cfg.gen_vision.codebook_size,
                cfg.gen_vision.codebook_embed_dim,
                vb.pp("gen_embed"),
            )?,
            language: Llama::load_quantized(vb.pp("language_model"), &cfg.language, quant)?,
            config: cfg.clone(),
        })
    }

    /// Understanding path: pixels [n, 3, S, S] -> image embeddings [n, tokens, hidden].
    pub fn encode_images(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.aligner.forward(&self.vision.forward(pixel_values)?)
    }

    /// Generation path: VQ codes [..] -> input embeddings [.., hidden].
    pub fn gen_image_embeds(&self, codes: &Tensor) -> Result<Tensor> {
        self.gen_aligner.forward(&self.gen_embed.forward(codes)?)
    }
}
