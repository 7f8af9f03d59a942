//! Hugging Face hub downloads (filled in with hf-hub).

use std::path::PathBuf;

use crate::error::{JanusError, Result};
use crate::source::LoadOptions;

pub fn fetch(model: &str, _opts: &LoadOptions) -> Result<PathBuf> {
    Err(JanusError::Input(format!("model {model:?}: hub downloads are not available yet; pass a local folder")))
}
