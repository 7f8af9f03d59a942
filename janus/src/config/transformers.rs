//! transformers' native `config.json` schema (`model_type: "janus"`, as
//! published in `deepseek-community/Janus-Pro-1B|7B`), mapped onto
//! [`JanusConfig`] with transformers' defaults.

use serde_json::{Map, Value};

use super::json::cfg_err;
use super::released::parse_language_section;
use super::schema::{CheckpointLayout, GenHeadConfig, JanusConfig, ProjectorConfig, ProjectorKind};
use crate::error::Result;
use janus_vision::SiglipVitConfig;
use janus_vq::VqConfig;

fn sub<'a>(root: &'a Map<String, Value>, key: &str) -> Result<&'a Map<String, Value>> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match root.get(key) {
        None | Some(Value::Null) => Ok(EMPTY.get_or_init(Map::new)),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(cfg_err(format!("{key} must be an object"))),
    }
}

fn get_usize(m: &Map<String, Value>, section: &str, key: &str, default: usize) -> Result<usize> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
            cfg_err(format!(
                "{section}.{key} must be a non-negative integer, got {v}"
            ))
        }),
    }
}

fn get_f64(m: &Map<String, Value>, section: &str, key: &str, default: f64) -> Result<f64> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| cfg_err(format!("{section}.{key} must be a number, got {v}"))),
    }
}

/// Maps a transformers `JanusConfig` (defaults as in transformers) onto ours.
pub(super) fn parse_config(root: &Map<String, Value>) -> Result<JanusConfig> {
    let v = sub(root, "vision_config")?;
    let q = sub(root, "vq_config")?;
    let language = parse_language_section(sub(root, "text_config")?, "text_config")?;
    let hidden = language.hidden_size;
    if v.get("use_qk_norm").and_then(Value::as_bool) == Some(true) {
        return Err(cfg_err(
            "vision_config.use_qk_norm: query/key norms are not supported",
        ));
    }
    if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
        if act != "gelu" {
            return Err(cfg_err(format!(
                "vision_config.hidden_act: unsupported activation {act:?} (expected gelu)"
            )));
        }
    }
    let vision = SiglipVitConfig {
        image_size: get_usize(v, "vision_config", "image_size", 384)?,
        patch_size: get_usize(v, "vision_config", "patch_size", 16)?,
        width: get_usize(v, "vision_config", "hidden_size", 1024)?,
        layers: get_usize(v, "vision_config", "num_hidden_layers", 24)?,
        heads: get_usize(v, "vision_config", "num_attention_heads", 16)?,
        mlp_ratio: get_f64(v, "vision_config", "mlp_ratio", 4.0)?,
    };
    let mult = match q.get("channel_multiplier") {
        None | Some(Value::Null) => vec![1, 1, 2, 2, 4],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| cfg_err("vq_config.channel_multiplier must be a list of integers"))?,
        Some(other) => {
            return Err(cfg_err(format!(
                "vq_config.channel_multiplier must be a list, got {other}"
            )))
        }
    };
    let mut gen_vision = VqConfig::vq16(
        get_usize(q, "vq_config", "num_embeddings", 16384)?,
        get_usize(q, "vq_config", "embed_dim", 8)?,
    );
    gen_vision.ch = get_usize(q, "vq_config", "base_channels", 128)?;
    gen_vision.encoder_ch_mult = mult.clone();
    gen_vision.decoder_ch_mult = mult;
    gen_vision.z_channels = get_usize(q, "vq_config", "latent_channels", 256)?;
    gen_vision.num_res_blocks = get_usize(q, "vq_config", "num_res_blocks", 2)?;
    let aligner = ProjectorConfig {
        kind: ProjectorKind::MlpGelu {
            depth: get_usize(v, "vision_config", "depth", 2)?.max(1),
        },
        input_dim: vision.width,
        n_embed: get_usize(v, "vision_config", "projection_dim", 2048)?,
    };
    let gen_aligner = ProjectorConfig {
        kind: ProjectorKind::MlpGelu {
            depth: get_usize(q, "vq_config", "num_hidden_layers", 2)?.max(1),
        },
        input_dim: gen_vision.codebook_embed_dim,
        n_embed: get_usize(q, "vq_config", "projection_dim", 2048)?,
    };
    let gen_head = GenHeadConfig {
        n_embed: hidden,
        image_token_embed: get_usize(q, "vq_config", "image_token_embed_dim", 2048)?,
        image_token_size: gen_vision.codebook_size,
    };
    let cfg = JanusConfig {
        layout: CheckpointLayout::Transformers,
        vision,
        aligner,
        gen_vision,
        gen_aligner,
        gen_head,
        language,
    };
    cfg.check_consistency()?;
    Ok(cfg)
}
