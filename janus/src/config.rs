//! The released `config.json` schema (and the processor configs beside it),
//! resolved into the sizes the modules are built with.
//!
//! The released configs leave the ViT and VQ sizes implied by names
//! (`siglip_large_patch16_384`, `VQ-16`); explicit fields win, the known
//! names fill the rest, and anything else is an error naming the field.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{JanusError, Result};
use janus_vision::SiglipVitConfig;
use janus_vq::VqConfig;

/// `MlpProjector` variants of the reference (`projector_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum ProjectorKind {
    Identity,
    Linear,
    /// `depth` linears with GELU between them.
    MlpGelu {
        depth: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorConfig {
    pub kind: ProjectorKind,
    pub input_dim: usize,
    pub n_embed: usize,
}

/// The image-token head of the generation path (`vision_head`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenHeadConfig {
    pub n_embed: usize,
    pub image_token_embed: usize,
    pub image_token_size: usize,
}

/// The DeepSeek-LLM language model, a LLaMA; defaults are transformers'
/// `LlamaConfig` defaults, which the released 7B config relies on.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
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
    pub layout: CheckpointLayout,
    pub vision: SiglipVitConfig,
    pub aligner: ProjectorConfig,
    pub gen_vision: VqConfig,
    pub gen_aligner: ProjectorConfig,
    pub gen_head: GenHeadConfig,
    pub language: LlamaConfig,
}

fn cfg_err(msg: impl Into<String>) -> JanusError {
    JanusError::Config(msg.into())
}

/// Typed access to one `{cls, params}` section, with errors naming the field.
struct Section<'a> {
    name: &'static str,
    map: &'a Map<String, Value>,
}

impl<'a> Section<'a> {
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                cfg_err(format!(
                    "{}.{key} must be a non-negative integer, got {v}",
                    self.name
                ))
            }),
        }
    }
    fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("{}.{key} must be an integer, got {v}", self.name))),
        }
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("{}.{key} must be a number, got {v}", self.name))),
        }
    }
    fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("{}.{key} must be a string, got {v}", self.name))),
        }
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                cfg_err(format!(
                    "{}.{key} must be true or false, got {v}",
                    self.name
                ))
            }),
        }
    }
    fn opt_usize_list(&self, key: &str) -> Result<Option<Vec<usize>>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| v.as_u64().map(|x| x as usize))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| {
                    cfg_err(format!(
                        "{}.{key} must be a list of non-negative integers",
                        self.name
                    ))
                }),
            Some(v) => Err(cfg_err(format!(
                "{}.{key} must be a non-empty list of integers, got {v}",
                self.name
            ))),
        }
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| cfg_err(format!("{}.{key} is missing", self.name)))
    }
}

/// Returns `(cls, params)` of a `{cls, params}` section.
fn section<'a>(root: &'a Map<String, Value>, name: &'static str) -> Result<(&'a str, Section<'a>)> {
    let obj = root
        .get(name)
        .and_then(Value::as_object)
        .ok_or_else(|| cfg_err(format!("{name} is missing or not an object")))?;
    let cls = obj
        .get("cls")
        .and_then(Value::as_str)
        .ok_or_else(|| cfg_err(format!("{name}.cls is missing")))?;
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    let params = match obj.get("params") {
        None | Some(Value::Null) => EMPTY.get_or_init(Map::new),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(cfg_err(format!("{name}.params must be an object"))),
    };
    Ok((cls, Section { name, map: params }))
}

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

impl JanusConfig {
    /// The `config.json` of the model folder `dir`; a missing folder is
    /// reported as such rather than as a missing config file.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(JanusError::MissingFile {
                what: "model folder".into(),
                path: dir.into(),
            });
        }
        Self::from_file(&dir.join("config.json"))
    }

    /// Parses a `config.json` of the released (`multi_modality`) layout.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_text(path, "model config")?;
        Self::from_json_str(&text).map_err(|e| match e {
            JanusError::Config(msg) => JanusError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| cfg_err(format!("invalid JSON: {e}")))?;
        let root = value
            .as_object()
            .ok_or_else(|| cfg_err("top level must be an object"))?;
        match root.get("model_type").and_then(Value::as_str) {
            None | Some("multi_modality") => {}
            Some("janus") => return crate::transformers_layout::parse_config(root),
            Some(mt) => {
                return Err(cfg_err(format!(
                    "model_type: unsupported model type {mt:?} (expected multi_modality or janus)"
                )))
            }
        }
        let cfg = Self {
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

/// `processor_config.json`: how prompts are built.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    pub image_tag: String,
    pub num_image_tokens: usize,
    pub add_special_token: bool,
    pub sft_format: String,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            image_tag: "<image_placeholder>".into(),
            num_image_tokens: 576,
            add_special_token: false,
            sft_format: "deepseek".into(),
        }
    }
}

impl ProcessorConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_text(path, "processor config")?;
        let value: Value = serde_json::from_str(&text).map_err(|e| JanusError::BadFile {
            path: path.into(),
            reason: format!("invalid JSON: {e}"),
        })?;
        let map = value.as_object().ok_or_else(|| JanusError::BadFile {
            path: path.into(),
            reason: "top level must be an object".into(),
        })?;
        let s = Section {
            name: "processor_config",
            map,
        };
        let d = Self::default();
        let cfg = Self {
            image_tag: s
                .opt_str("image_tag")?
                .map(str::to_owned)
                .unwrap_or(d.image_tag),
            num_image_tokens: s
                .opt_usize("num_image_tokens")?
                .unwrap_or(d.num_image_tokens),
            add_special_token: s
                .opt_bool("add_special_token")?
                .unwrap_or(d.add_special_token),
            sft_format: s
                .opt_str("sft_format")?
                .map(str::to_owned)
                .unwrap_or(d.sft_format),
        };
        if cfg.sft_format != "deepseek" {
            return Err(cfg_err(format!(
                "processor_config.sft_format: unsupported format {:?} (expected deepseek)",
                cfg.sft_format
            )));
        }
        Ok(cfg)
    }
}

pub(crate) fn read_text(path: &Path, what: &str) -> Result<String> {
    if !path.exists() {
        return Err(JanusError::MissingFile {
            what: what.into(),
            path: path.into(),
        });
    }
    std::fs::read_to_string(path).map_err(|e| JanusError::BadFile {
        path: path.into(),
        reason: e.to_string(),
    })
}
