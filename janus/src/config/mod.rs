//! Model configuration: `config.json` in DeepSeek's released schema or
//! transformers' native one, resolved into the sizes the modules are built
//! with ([`JanusConfig`]), and `processor_config.json` ([`ProcessorConfig`]).

mod json;
mod processor;
mod released;
mod schema;
mod transformers;

use std::path::Path;

use serde_json::Value;

use crate::error::{JanusError, Result};
use json::cfg_err;
pub(crate) use json::read_text;
pub use processor::ProcessorConfig;
pub use schema::{
    CheckpointLayout, GenHeadConfig, JanusConfig, LlamaConfig, ProjectorConfig, ProjectorKind,
};

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

    /// Parses a `config.json` of either schema (see [`JanusConfig::from_json_str`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_text(path, "model config")?;
        Self::from_json_str(&text).map_err(|e| match e {
            JanusError::Config(msg) => JanusError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses the text of a `config.json`: the released schema
    /// (`model_type: multi_modality`, or none) or transformers' (`janus`).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| cfg_err(format!("invalid JSON: {e}")))?;
        let root = value
            .as_object()
            .ok_or_else(|| cfg_err("top level must be an object"))?;
        match root.get("model_type").and_then(Value::as_str) {
            None | Some("multi_modality") => {}
            Some("janus") => return transformers::parse_config(root),
            Some(mt) => {
                return Err(cfg_err(format!(
                    "model_type: unsupported model type {mt:?} (expected multi_modality or janus)"
                )))
            }
        }
        released::parse_config(root)
    }
}
