//! `processor_config.json`: how prompts are built.

use std::path::Path;

use serde_json::Value;

use super::json::{cfg_err, read_text, Section};
use crate::error::{JanusError, Result};

/// `processor_config.json`: how prompts are built.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessorConfig {
    /// The placeholder a prompt marks each image with.
    pub image_tag: String,
    /// Tokens each image expands to (also the generated code grid).
    pub num_image_tokens: usize,
    /// Whether the official processor adds special tokens itself.
    pub add_special_token: bool,
    /// The conversation template (`deepseek`).
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
    /// Reads a `processor_config.json`; absent fields take the defaults.
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
