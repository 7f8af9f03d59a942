//! Where a model comes from: a local folder or a Hugging Face hub id, and
//! the device and dtype it runs with.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::error::{JanusError, Result};
use janus_nn::Quant;

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "deepseek-ai/Janus-Pro-1B";

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the model runs (CPU by default; see [`parse_device`]).
    pub device: Device,
    /// Compute dtype; f32 is exact and the default on CPU.
    pub dtype: DType,
    /// Use only the local hub cache, never the network (also `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Show download progress bars on stderr.
    pub progress: bool,
    /// Quantisation of the language model and image head, done at load.
    pub quant: Quant,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            offline: false,
            progress: false,
            quant: Quant::None,
        }
    }
}

/// `cpu`, `cuda`, `cuda:N` or `metal`; GPU backends need the matching cargo feature.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = n.strip_prefix("cuda:").map_or(Ok(0), |o| {
                o.parse::<usize>()
                    .map_err(|_| JanusError::Input(format!("device {name:?}: bad CUDA ordinal")))
            })?;
            if !candle_core::utils::cuda_is_available() {
                return Err(JanusError::Input(
                    "device cuda: this build has no CUDA support (rebuild with `--features cuda`)"
                        .into(),
                ));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                return Err(JanusError::Input(
                    "device metal: this build has no Metal support (rebuild with `--features metal`)".into(),
                ));
            }
            Ok(Device::new_metal(0)?)
        }
        _ => Err(JanusError::Input(format!(
            "unknown device {name:?} (expected cpu, cuda, cuda:N or metal)"
        ))),
    }
}

/// `f32`, `bf16` or `f16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(JanusError::Input(format!(
            "unknown dtype {other:?} (expected f32, bf16 or f16)"
        ))),
    }
}

/// Resolves `model` to a local folder: an existing path is used as is;
/// anything shaped like `owner/name` is a hub id, fetched into (or found in)
/// the Hugging Face cache.
pub fn resolve_model(model: &str, opts: &LoadOptions) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_file() {
        return Err(JanusError::Input(format!(
            "{model} is a file; pass the model folder that holds it (with config.json and the tokenizer)"
        )));
    }
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let looks_like_hub_id =
        model.split('/').count() == 2 && !model.starts_with('.') && !model.starts_with('/');
    if !looks_like_hub_id {
        return Err(JanusError::MissingFile {
            what: "model folder".into(),
            path: path.into(),
        });
    }
    crate::hub::fetch(model, opts.offline, opts.progress)
}
