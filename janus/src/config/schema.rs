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
    /// Every size within what a model can have and this runtime can
    /// allocate, every float usable: absurd values fail here, with the
    /// field and its range, instead of as an allocation abort or a hang.
    fn check_ranges(&self) -> Result<()> {
        fn size(field: &str, v: usize, lo: usize, hi: usize) -> Result<()> {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(cfg_err(format!("{field} is {v}, outside {lo}..={hi}")))
            }
        }
        fn positive(field: &str, v: f64) -> Result<()> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(cfg_err(format!(
                    "{field} is {v}; it must be a positive number"
                )))
            }
        }
        let l = &self.language;
        size("language vocab_size", l.vocab_size, 1, 1 << 22)?;
        size("language hidden_size", l.hidden_size, 1, 1 << 16)?;
        size(
            "language intermediate_size",
            l.intermediate_size,
            1,
            1 << 18,
        )?;
        size("language num_hidden_layers", l.num_hidden_layers, 1, 512)?;
        size(
            "language num_attention_heads",
            l.num_attention_heads,
            1,
            1024,
        )?;
        // The rotary tables hold every position: 1M positions of a 128-wide head are 1 GB.
        size(
            "language max_position_embeddings",
            l.max_position_embeddings,
            1,
            1 << 20,
        )?;
        if l.head_dim() % 2 != 0 {
            return Err(cfg_err(format!(
                "language head size {} (hidden_size / num_attention_heads) must be even for RoPE",
                l.head_dim()
            )));
        }
        positive("language rope_theta", l.rope_theta)?;
        positive("language rms_norm_eps", l.rms_norm_eps)?;
        let v = &self.vision;
        size("vision image_size", v.image_size, 1, 4096)?;
        size("vision patch_size", v.patch_size, 1, v.image_size)?;
        size("vision width", v.width, 1, 1 << 14)?;
        size("vision layers", v.layers, 1, 256)?;
        size("vision heads", v.heads, 1, 1024)?;
        positive("vision mlp_ratio", v.mlp_ratio)?;
        if v.mlp_ratio > 64.0 || v.width % v.heads != 0 || v.image_size % v.patch_size != 0 {
            return Err(cfg_err(format!(
                "vision tower: image_size {} / patch_size {}, width {} / heads {} and mlp_ratio {} are inconsistent",
                v.image_size, v.patch_size, v.width, v.heads, v.mlp_ratio
            )));
        }
        let q = &self.gen_vision;
        size("gen_vision codebook size", q.codebook_size, 1, 1 << 22)?;
        size(
            "gen_vision codebook embedding",
            q.codebook_embed_dim,
            1,
            4096,
        )?;
        size("gen_vision base channels", q.ch, 1, 4096)?;
        size("gen_vision z_channels", q.z_channels, 1, 4096)?;
        size("gen_vision num_res_blocks", q.num_res_blocks, 1, 16)?;
        for (field, mult) in [
            ("gen_vision encoder_ch_mult", &q.encoder_ch_mult),
            ("gen_vision decoder_ch_mult", &q.decoder_ch_mult),
        ] {
            size(&format!("{field} length"), mult.len(), 1, 8)?;
            for &m in mult {
                size(field, m, 1, 64)?;
            }
        }
        for (field, p) in [
            ("aligner", &self.aligner),
            ("gen_aligner", &self.gen_aligner),
        ] {
            size(&format!("{field} input_dim"), p.input_dim, 1, 1 << 16)?;
            if let ProjectorKind::MlpGelu { depth } = p.kind {
                size(&format!("{field} depth"), depth, 1, 64)?;
            }
        }
        size(
            "gen_head image_token_embed",
            self.gen_head.image_token_embed,
            1,
            1 << 16,
        )?;
        Ok(())
    }

    /// Sizes that must agree between sections, checked before any weight is read.
    pub(crate) fn check_consistency(&self) -> Result<()> {
        self.check_ranges()?;
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
