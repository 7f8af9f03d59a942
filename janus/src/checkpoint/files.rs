//! The files of a model folder: which hold weights (in order of
//! preference), which sit beside them, and the shards an index names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{JanusError, Result};

/// The weight file of a quantised model folder (see [`crate::save_quantized`]).
pub const GGUF_FILE: &str = "model.gguf";

/// Files a model folder may hold besides weights; absent ones are skipped.
pub(crate) const SIDE_FILES: [&str; 5] = [
    "tokenizer.json",
    "processor_config.json",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
];

/// Weight layouts in order of preference, each named by its first file.
pub(crate) const WEIGHT_ENTRIES: [&str; 5] = [
    GGUF_FILE,
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
];

/// Shard file names of a `*.index.json`, in first-seen order.
pub(crate) fn index_shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| JanusError::bad_file(index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| JanusError::bad_file(index, format!("invalid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| JanusError::bad_file(index, "no weight_map object"))?;
    let mut seen = BTreeSet::new();
    let mut files = vec![];
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| JanusError::bad_file(index, "weight_map values must be file names"))?;
        if !is_plain_relative(file) {
            return Err(JanusError::bad_file(
                index,
                format!("weight_map names {file:?}, which is not a file of the model folder"),
            ));
        }
        if seen.insert(file.to_owned()) {
            files.push(file.to_owned());
        }
    }
    Ok(files)
}

/// Whether `name` stays inside the folder it is joined to: relative, with
/// no `..`, root or drive component. (Checked by name, not by resolving
/// links: a hub cache's snapshot files are links into its blob store.)
fn is_plain_relative(name: &str) -> bool {
    use std::path::Component;
    !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Shard paths of a `*.index.json`, each checked to exist.
pub(crate) fn index_shards(index: &Path) -> Result<Vec<PathBuf>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: Vec<PathBuf> = index_shard_names(index)?
        .iter()
        .map(|f| dir.join(f))
        .collect();
    for f in &files {
        if !f.exists() {
            return Err(JanusError::MissingFile {
                what: "weight shard".into(),
                path: f.clone(),
            });
        }
    }
    Ok(files)
}
