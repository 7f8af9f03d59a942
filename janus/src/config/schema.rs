//! The sizes a Janus-Pro model is built with, whichever `config.json`
//! schema they were read from.

use janus_vision::SiglipVitConfig;
use janus_vq::VqConfig;

use super::json::cfg_err;
use crate::error::Result;

/// `MlpProjector` variants of the reference (`projector_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum ProjectorKind {
    /// No projection.
    Identity,
    /// One linear layer.
    Linear,
    /// `depth` linears with GELU between them.
    MlpGelu {
        /// Number of linear layers.
        depth: usize,
    },
}

/// An MLP projector (aligner) between two widths.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorConfig {
    /// Its layers.
    pub kind: ProjectorKind,
    /// Width of its input.
    pub input_dim: usize,
    /// Width of its output (the LLM's hidden size).
    pub n_embed: usize,
}

/// The image-token head of the generation path (`vision_head`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenHeadConfig {
    /// Width of its input (the LLM's hidden size).
    pub n_embed: usize,
    /// Hidden width of the head.
    pub image_token_embed: usize,
    /// Codes the head chooses from (the VQ codebook size).
    pub image_token_size: usize,
}

/// The DeepSeek-LLM language model, a LLaMA; defaults are transformers'
/// `LlamaConfig` defaults, which the released 7B config relies on.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Text vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Context length.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// The text head shares the token embeddings.
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// How a checkpoint names its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointLayout {
    /// DeepSeek's release (`model_type: multi_modality`).
    Released,
    /// transformers' `JanusForConditionalGeneration` (`model_type: janus`).
    Transformers,
}

/// A whole Janus-Pro model's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct JanusConfig {
    /// How the checkpoint names its weights.
    pub layout: CheckpointLayout,
    /// The SigLIP tower of the understanding path.
    pub vision: SiglipVitConfig,
    /// Projects SigLIP features into the LLM.
    pub aligner: ProjectorConfig,
    /// The VQ image tokenizer of the generation path.
    pub gen_vision: VqConfig,
    /// Projects VQ code embeddings into the LLM.
    pub gen_aligner: ProjectorConfig,
    /// The image-token head.
    pub gen_head: GenHeadConfig,
    /// The language model.
    pub language: LlamaConfig,
}

impl JanusConfig {
    /// Sizes that must agree between sections, checked before any weight is read.
    pub(crate) fn check_consistency(&self) -> Result<()> {
        let h = self.language.hidden_size;
        let check = |ok: bool, msg: String| if ok { Ok(()) } else { Err(cfg_err(msg)) };
        check(
            self.aligner.input_dim == self.vision.width,
            format!(
                "aligner_config.params.input_dim {} != vision width {}",
                self.aligner.input_dim, self.vision.width
            ),
        )?;
        check(
            self.aligner.n_embed == h,
            format!(
                "aligner_config.params.n_embed {} != language hidden_size {h}",
                self.aligner.n_embed
            ),
        )?;
        check(
            self.gen_aligner.input_dim == self.gen_vision.codebook_embed_dim,
            format!(
                "gen_aligner_config.params.input_dim {} != gen_vision_config.params.n_embed {}",
                self.gen_aligner.input_dim, self.gen_vision.codebook_embed_dim
            ),
        )?;
        check(
            self.gen_aligner.n_embed == h,
            format!(
                "gen_aligner_config.params.n_embed {} != language hidden_size {h}",
                self.gen_aligner.n_embed
            ),
        )?;
        check(
            self.gen_head.n_embed == h,
            format!(
                "gen_head_config.params.n_embed {} != language hidden_size {h}",
                self.gen_head.n_embed
            ),
        )?;
        check(
            self.gen_head.image_token_size == self.gen_vision.codebook_size,
            format!(
                "gen_head_config.params.image_token_size {} != gen_vision_config.params.image_token_size {}",
                self.gen_head.image_token_size, self.gen_vision.codebook_size
            ),
        )
    }
}
