//! The transformers-native weight names (`model_type: "janus"`, published
//! as `deepseek-community/Janus-Pro-1B|7B`) served under the released ones:
//! renamed, the ViT's split q/k/v re-fused and the position embedding's
//! batch axis restored.

use candle_core::{Device, Tensor};

use super::reader::TensorReader;

/// How a released-layout tensor is found in a transformers-layout checkpoint.
enum Stored {
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

fn vit_name(rest: &str) -> Stored {
    const V: &str = "model.vision_model";
    match rest {
        "pos_embed" => {
            return Stored::Unsqueezed(format!("{V}.embeddings.position_embedding.weight"))
        }
        _ => {}
    }
    if let Some(t) = rest.strip_prefix("patch_embed.proj.") {
        return Stored::Same(format!("{V}.embeddings.patch_embedding.{t}"));
    }
    if let Some(t) = rest.strip_prefix("norm.") {
        return Stored::Same(format!("{V}.post_layernorm.{t}"));
    }
    if let Some(b) = rest.strip_prefix("blocks.") {
        if let Some((n, tail)) = b.split_once('.') {
            let layer = format!("{V}.encoder.layers.{n}");
            if let Some(t) = tail.strip_prefix("attn.qkv.") {
                return Stored::Fused(
                    ["q_proj", "k_proj", "v_proj"].map(|p| format!("{layer}.self_attn.{p}.{t}")),
                );
            }
            if let Some(t) = tail.strip_prefix("attn.proj.") {
                return Stored::Same(format!("{layer}.self_attn.projection_layer.{t}"));
            }
            if let Some(t) = tail.strip_prefix("norm1.") {
                return Stored::Same(format!("{layer}.layer_norm1.{t}"));
            }
            if let Some(t) = tail.strip_prefix("norm2.") {
                return Stored::Same(format!("{layer}.layer_norm2.{t}"));
            }
            return Stored::Same(format!("{layer}.{tail}"));
        }
    }
    Stored::Same(format!("{V}.{rest}"))
}

/// Where the released-layout tensor `name` lives in a transformers-layout checkpoint.
fn locate(name: &str) -> Stored {
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
    Stored::Same(renamed.unwrap_or_else(|| name.to_owned()))
}

/// A transformers-layout checkpoint served under the released names.
pub(crate) struct TransformersNames<R>(pub R);

impl<R: TensorReader> TensorReader for TransformersNames<R> {
    fn load_raw(&self, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        match locate(name) {
            Stored::Same(n) => self.0.load_raw(&n, dev),
            Stored::Unsqueezed(n) => self.0.load_raw(&n, dev)?.unsqueeze(0),
            Stored::Fused(parts) => {
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
            Stored::Same(n) => self.0.shape_of(&n),
            Stored::Unsqueezed(n) => self.0.shape_of(&n).map(|s| [vec![1], s].concat()),
            Stored::Fused(parts) => {
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
