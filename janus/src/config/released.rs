//! The released `config.json` schema (`model_type: multi_modality`).
//!
//! The released configs leave the ViT and VQ sizes implied by names
//! (`siglip_large_patch16_384`, `VQ-16`); explicit fields win, the known
//! names fill the rest, and anything else is an error naming the field.

use serde_json::{Map, Value};

use super::json::{cfg_err, section, Section};
use super::schema::{
    CheckpointLayout, GenHeadConfig, JanusConfig, LlamaConfig, ProjectorConfig, ProjectorKind,
};
use crate::error::Result;
use janus_vision::SiglipVitConfig;
use janus_vq::VqConfig;

/// The official table of named SigLIP towers (`SigLIP_MODEL_CONFIG`).
fn known_siglip(model_name: &str) -> Option<SiglipVitConfig> {
    let (image_size, patch_size, width, layers, heads, mlp_ratio) = match model_name {
        "siglip_large_patch16_384" => (384, 16, 1024, 24, 16, 4.0),
        "siglip_so400m_patch14_384" => (336, 14, 1152, 27, 16, 3.7362),
        "siglip_so400m_patch14_224" => (224, 14, 1152, 27, 16, 3.7362),
        _ => return None,
    };
    Some(SiglipVitConfig {
        image_size,
        patch_size,
        width,
        layers,
        heads,
        mlp_ratio,
    })
}

fn parse_vision(root: &Map<String, Value>) -> Result<SiglipVitConfig> {
    let (cls, p) = section(root, "vision_config")?;
    if !cls.contains("CLIPVisionTower") {
        return Err(cfg_err(format!(
            "vision_config.cls: unsupported vision tower {cls:?} (expected CLIPVisionTower)"
        )));
    }
    let model_name = p
        .opt_str("model_name")?
        .unwrap_or("siglip_large_patch16_384");
    if !model_name.starts_with("siglip") {
        return Err(cfg_err(format!(
            "vision_config.params.model_name: unsupported tower {model_name:?} (only SigLIP towers are used by Janus-Pro)"
        )));
    }
    let known = known_siglip(model_name);
    let pick_usize = |key: &str, from: fn(&SiglipVitConfig) -> usize| -> Result<usize> {
        match (p.opt_usize(key)?, &known) {
            (Some(v), _) => Ok(v),
            (None, Some(k)) => Ok(from(k)),
            (None, None) => Err(cfg_err(format!(
                "vision_config.params.{key} is missing and model_name {model_name:?} is not a known SigLIP tower"
            ))),
        }
    };
    let image_size = pick_usize("image_size", |k| k.image_size)?;
    let patch_size = pick_usize("patch_size", |k| k.patch_size)?;
    let width = pick_usize("width", |k| k.width)?;
    let full_layers = pick_usize("layers", |k| k.layers)?;
    let heads = pick_usize("heads", |k| k.heads)?;
    let mlp_ratio = match (p.opt_f64("mlp_ratio")?, &known) {
        (Some(v), _) => v,
        (None, Some(k)) => k.mlp_ratio,
        (None, None) => {
            return Err(cfg_err(format!(
                "vision_config.params.mlp_ratio is missing and model_name {model_name:?} is not a known SigLIP tower"
            )))
        }
    };
    // create_siglip_vit: -1 keeps all blocks, -k the first layers-k+1, +k the first k.
    let select_layer = p.opt_i64("select_layer")?.unwrap_or(-1);
    let layers = if select_layer <= 0 {
        (full_layers as i64 + select_layer + 1).min(full_layers as i64)
    } else {
        select_layer.min(full_layers as i64)
    };
    if layers < 1 {
        return Err(cfg_err(format!(
            "vision_config.params.select_layer {select_layer} leaves no ViT block"
        )));
    }
    if patch_size == 0 || image_size % patch_size != 0 || heads == 0 || width % heads != 0 {
        return Err(cfg_err(format!(
            "vision_config.params: inconsistent sizes (image_size {image_size}, patch_size {patch_size}, width {width}, heads {heads})"
        )));
    }
    if let Some(sel) = p.opt_str("select_feature")? {
        if !matches!(sel, "same" | "patch" | "cls_patch") {
            return Err(cfg_err(format!(
                "vision_config.params.select_feature: unknown value {sel:?}"
            )));
        }
    }
    Ok(SiglipVitConfig {
        image_size,
        patch_size,
        width,
        layers: layers as usize,
        heads,
        mlp_ratio,
    })
}

fn parse_projector(root: &Map<String, Value>, name: &'static str) -> Result<ProjectorConfig> {
    let (cls, p) = section(root, name)?;
    if !cls.contains("MlpProjector") {
        return Err(cfg_err(format!(
            "{name}.cls: unsupported projector {cls:?} (expected MlpProjector)"
        )));
    }
    let kind = match p.opt_str("projector_type")?.unwrap_or("linear") {
        "identity" => ProjectorKind::Identity,
        "linear" => ProjectorKind::Linear,
        "mlp_gelu" => {
            let depth = p.opt_usize("depth")?.unwrap_or(1);
            if depth == 0 {
                return Err(cfg_err(format!("{name}.params.depth must be at least 1")));
            }
            ProjectorKind::MlpGelu { depth }
        }
        other => {
            return Err(cfg_err(format!(
                "{name}.params.projector_type: unknown projector type {other:?}"
            )))
        }
    };
    Ok(ProjectorConfig {
        kind,
        input_dim: p.usize("input_dim")?,
        n_embed: p.usize("n_embed")?,
    })
}

fn parse_gen_vision(root: &Map<String, Value>) -> Result<VqConfig> {
    let (cls, p) = section(root, "gen_vision_config")?;
    if cls != "VQ-16" {
        return Err(cfg_err(format!(
            "gen_vision_config.cls: unknown VQ model {cls:?} (expected VQ-16)"
        )));
    }
    let mut cfg = VqConfig::vq16(
        p.opt_usize("image_token_size")?.unwrap_or(16384),
        p.opt_usize("n_embed")?.unwrap_or(8),
    );
    if let Some(ch) = p.opt_usize("ch")? {
        cfg.ch = ch;
    }
    if let Some(m) = p.opt_usize_list("encoder_ch_mult")? {
        cfg.encoder_ch_mult = m;
    }
    if let Some(m) = p.opt_usize_list("decoder_ch_mult")? {
        cfg.decoder_ch_mult = m;
    }
    if let Some(z) = p.opt_usize("z_channels")? {
        cfg.z_channels = z;
    }
    if let Some(n) = p.opt_usize("num_res_blocks")? {
        cfg.num_res_blocks = n;
    }
    Ok(cfg)
}

fn parse_gen_head(root: &Map<String, Value>) -> Result<GenHeadConfig> {
    let (cls, p) = section(root, "gen_head_config")?;
    if cls != "vision_head" {
        return Err(cfg_err(format!(
            "gen_head_config.cls: unknown head {cls:?} (expected vision_head)"
        )));
    }
    Ok(GenHeadConfig {
        n_embed: p.usize("n_embed")?,
        image_token_embed: p.usize("image_token_embed")?,
        image_token_size: p.usize("image_token_size")?,
    })
}

fn parse_language(root: &Map<String, Value>) -> Result<LlamaConfig> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    let map = match root.get("language_config") {
        None | Some(Value::Null) => EMPTY.get_or_init(Map::new),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(cfg_err("language_config must be an object")),
    };
    parse_language_section(map, "language_config")
}

/// A transformers `LlamaConfig` dict; missing fields take its defaults.
pub(crate) fn parse_language_section(
    map: &Map<String, Value>,
    name: &'static str,
) -> Result<LlamaConfig> {
    let s = Section { name, map };
    if let Some(mt) = s.opt_str("model_type")? {
        if mt != "llama" {
            return Err(cfg_err(format!(
                "{name}.model_type: unsupported language model {mt:?} (expected llama)"
            )));
        }
    }
    if let Some(act) = s.opt_str("hidden_act")? {
        if act != "silu" {
            return Err(cfg_err(format!(
                "{name}.hidden_act: unsupported activation {act:?} (expected silu)"
            )));
        }
    }
    if !matches!(map.get("rope_scaling"), None | Some(Value::Null)) {
        return Err(cfg_err(format!(
            "{name}.rope_scaling: RoPE scaling is not supported"
        )));
    }
    for flag in ["attention_bias", "mlp_bias"] {
        if s.opt_bool(flag)? == Some(true) {
            return Err(cfg_err(format!(
                "{name}.{flag}: biased LLaMA projections are not supported"
            )));
        }
    }
    let num_attention_heads = s.opt_usize("num_attention_heads")?.unwrap_or(32);
    let cfg = LlamaConfig {
        vocab_size: s.opt_usize("vocab_size")?.unwrap_or(32000),
        hidden_size: s.opt_usize("hidden_size")?.unwrap_or(4096),
        intermediate_size: s.opt_usize("intermediate_size")?.unwrap_or(11008),
        num_hidden_layers: s.opt_usize("num_hidden_layers")?.unwrap_or(32),
        num_attention_heads,
        num_key_value_heads: s
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads),
        max_position_embeddings: s.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        rms_norm_eps: s.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta: s.opt_f64("rope_theta")?.unwrap_or(10000.0),
        tie_word_embeddings: s.opt_bool("tie_word_embeddings")?.unwrap_or(false),
    };
    if cfg.num_attention_heads == 0
        || cfg.hidden_size % cfg.num_attention_heads != 0
        || cfg.num_key_value_heads == 0
        || cfg.num_attention_heads % cfg.num_key_value_heads != 0
    {
        return Err(cfg_err(format!(
            "{name}: hidden_size {} / num_attention_heads {} / num_key_value_heads {} are inconsistent",
            cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        )));
    }
    Ok(cfg)
}

/// A whole released config, checked for consistency.
pub(super) fn parse_config(root: &Map<String, Value>) -> Result<JanusConfig> {
    let cfg = JanusConfig {
        layout: CheckpointLayout::Released,
        vision: parse_vision(root)?,
        aligner: parse_projector(root, "aligner_config")?,
        gen_vision: parse_gen_vision(root)?,
        gen_aligner: parse_projector(root, "gen_aligner_config")?,
        gen_head: parse_gen_head(root)?,
        language: parse_language(root)?,
    };
    cfg.check_consistency()?;
    Ok(cfg)
}
