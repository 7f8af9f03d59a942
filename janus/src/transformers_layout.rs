//! The transformers-native layout (`model_type: "janus"`, published as
//! `deepseek-community/Janus-Pro-1B|7B`): another config schema and other
//! weight names for the same modules. The config is mapped onto
//! [`JanusConfig`]; weights are served under the released names by
//! renaming, re-fusing the ViT's split q/k/v and restoring the position
//! embedding's batch axis.

use candle_core::{Device, Tensor};
use serde_json::{Map, Value};

use crate::config::{CheckpointLayout, GenHeadConfig, JanusConfig, ProjectorConfig, ProjectorKind};
use crate::error::{JanusError, Result};
use crate::weights::{Checkpoint, TensorSource};
use janus_vision::SiglipVitConfig;
use janus_vq::VqConfig;

fn cfg_err(msg: impl Into<String>) -> JanusError {
    JanusError::Config(msg.into())
}

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
pub(crate) fn parse_config(root: &Map<String, Value>) -> Result<JanusConfig> {
    let v = sub(root, "vision_config")?;
    let q = sub(root, "vq_config")?;
    let language = crate::config::parse_language_section(sub(root, "text_config")?, "text_config")?;
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

/// How a released-layout tensor is found in a transformers-layout checkpoint.
enum Source {
    Same(String),
    /// `pos_embed` [1, n, d] is stored as [n, d].
    Unsqueezed(String),
    /// The fused `qkv` of a ViT block is stored as q/k/v projections.
    Fused([String; 3]),
}

/// Released projector names `layers.0`, `layers.2`, ... are `fc1`, `hidden_layers.0`, ...
fn projector_name(rest: &str, prefix: &str) -> Option<String> {
    let rest = rest.strip_prefix("layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    Some(if idx == 0 {
        format!("{prefix}.fc1.{tail}")
    } else {
        format!("{prefix}.hidden_layers.{}.{tail}", idx / 2 - 1)
    })
}

fn vq_name(rest: &str) -> String {
    let mut parts: Vec<String> = rest.split('.').map(str::to_owned).collect();
    for i in 0..parts.len() {
        let next = parts.get(i + 1).cloned();
        match (parts[i].as_str(), next.as_deref()) {
            ("conv_blocks", _) if i > 0 && parts[i - 1] == "encoder" => parts[i] = "down".into(),
            ("conv_blocks", _) if i > 0 && parts[i - 1] == "decoder" => parts[i] = "up".into(),
            ("res", _) => parts[i] = "block".into(),
            ("mid", Some("0")) => parts[i + 1] = "block_1".into(),
            ("mid", Some("1")) => parts[i + 1] = "attn_1".into(),
            ("mid", Some("2")) => parts[i + 1] = "block_2".into(),
            _ => {}
        }
    }
    format!("model.vqmodel.{}", parts.join("."))
}

fn vit_name(rest: &str) -> Source {
    const V: &str = "model.vision_model";
    match rest {
        "pos_embed" => {
            return Source::Unsqueezed(format!("{V}.embeddings.position_embedding.weight"))
        }
        _ => {}
    }
    if let Some(t) = rest.strip_prefix("patch_embed.proj.") {
        return Source::Same(format!("{V}.embeddings.patch_embedding.{t}"));
    }
    if let Some(t) = rest.strip_prefix("norm.") {
        return Source::Same(format!("{V}.post_layernorm.{t}"));
    }
    if let Some(b) = rest.strip_prefix("blocks.") {
        if let Some((n, tail)) = b.split_once('.') {
            let layer = format!("{V}.encoder.layers.{n}");
            if let Some(t) = tail.strip_prefix("attn.qkv.") {
                return Source::Fused(
                    ["q_proj", "k_proj", "v_proj"].map(|p| format!("{layer}.self_attn.{p}.{t}")),
                );
            }
            if let Some(t) = tail.strip_prefix("attn.proj.") {
                return Source::Same(format!("{layer}.self_attn.projection_layer.{t}"));
            }
            if let Some(t) = tail.strip_prefix("norm1.") {
                return Source::Same(format!("{layer}.layer_norm1.{t}"));
            }
            if let Some(t) = tail.strip_prefix("norm2.") {
                return Source::Same(format!("{layer}.layer_norm2.{t}"));
            }
            return Source::Same(format!("{layer}.{tail}"));
        }
    }
    Source::Same(format!("{V}.{rest}"))
}

/// Where the released-layout tensor `name` lives in a transformers-layout checkpoint.
fn locate(name: &str) -> Source {
    if let Some(rest) = name.strip_prefix("vision_model.vision_tower.") {
        return vit_name(rest);
    }
    let renamed = if let Some(rest) = name.strip_prefix("gen_aligner.") {
        projector_name(rest, "model.generation_aligner")
    } else if let Some(rest) = name.strip_prefix("aligner.") {
        projector_name(rest, "model.aligner")
    } else if let Some(rest) = name.strip_prefix("gen_head.output_mlp_projector.") {
        Some(format!("model.generation_head.proj_out.{rest}"))
    } else if let Some(rest) = name.strip_prefix("gen_head.") {
        Some(format!("model.generation_head.{rest}"))
    } else if let Some(rest) = name.strip_prefix("gen_embed.") {
        Some(format!("model.generation_embeddings.{rest}"))
    } else if let Some(rest) = name.strip_prefix("gen_vision_model.") {
        Some(vq_name(rest))
    } else if name == "language_model.lm_head.weight" {
        Some("lm_head.weight".into())
    } else {
        name.strip_prefix("language_model.model.")
            .map(|rest| format!("model.language_model.{rest}"))
    };
    Source::Same(renamed.unwrap_or_else(|| name.to_owned()))
}

/// A transformers-layout checkpoint served under the released names.
pub struct TransformersCheckpoint(pub Checkpoint);

impl TensorSource for TransformersCheckpoint {
    fn load_raw(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        match locate(name) {
            Source::Same(n) => self.0.load_raw(&n, dev),
            Source::Unsqueezed(n) => self.0.load_raw(&n, dev)?.unsqueeze(0),
            Source::Fused(parts) => {
                let parts = parts
                    .iter()
                    .map(|n| self.0.load_raw(n, dev))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)
            }
        }
    }

    /// The released-layout shape, derived from the stored shapes.
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        match locate(name) {
            Source::Same(n) => self.0.shape_of(&n),
            Source::Unsqueezed(n) => self.0.shape_of(&n).map(|s| [vec![1], s].concat()),
            Source::Fused(parts) => {
                let shapes = parts
                    .iter()
                    .map(|n| self.0.shape_of(n))
                    .collect::<Option<Vec<_>>>()?;
                let mut fused = shapes[0].clone();
                fused[0] = shapes.iter().map(|s| s[0]).sum();
                Some(fused)
            }
        }
    }
}
