//! `JanusPro`: a loaded model with its text and image processors; the
//! pipelines ([`super::understand`], [`super::generate`], [`super::chat`])
//! are its methods.

use std::path::Path;

use candle_core::{DType, Device};

use crate::checkpoint::Checkpoint;
use crate::config::{JanusConfig, ProcessorConfig};
use crate::error::{JanusError, Result};
use crate::image_processor::{ImageProcessor, ImageProcessorConfig};
use crate::loading::{resolve_model, LoadOptions};
use crate::models::JanusModel;
use crate::text_processor::TextProcessor;
use janus_nn::Quant;

/// A loaded Janus-Pro model.
pub struct JanusPro {
    pub(crate) model: JanusModel,
    pub(crate) processor: TextProcessor,
    pub(crate) image_processor: ImageProcessor,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
    pub(crate) quant: Quant,
}

impl JanusPro {
    /// Loads a model from a local folder or a hub id (e.g. [`crate::loading::DEFAULT_MODEL`]).
    pub fn from_pretrained(model: &str, opts: &LoadOptions) -> Result<Self> {
        let dir = resolve_model(model, opts)?;
        Self::load_quantized(&dir, &opts.device, opts.dtype, opts.quant)
    }

    /// Loads a model folder in the released layout (`config.json`,
    /// `tokenizer.json`, processor configs and weights) computing in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_quantized(dir, device, dtype, Quant::None)
    }

    /// As [`JanusPro::load`], quantising the language model's and image
    /// head's linear weights and the token embeddings to `quant` (and the
    /// vision tower's to q8_0) while reading them (see [`janus_nn::QLinear`]).
    /// A quantised folder (see [`crate::save_quantized`]) loads in the quantisation it
    /// was saved with: `quant` must be that one or `Quant::None`.
    pub fn load_quantized(dir: &Path, device: &Device, dtype: DType, quant: Quant) -> Result<Self> {
        let config = JanusConfig::from_model_dir(dir)?;
        let proc_path = dir.join("processor_config.json");
        let proc_cfg = if proc_path.exists() {
            ProcessorConfig::from_file(&proc_path)?
        } else {
            ProcessorConfig::default()
        };
        let image_cfg = ImageProcessorConfig::from_file(&dir.join("preprocessor_config.json"))?;
        if image_cfg.image_size != config.vision.image_size {
            return Err(JanusError::Config(format!(
                "preprocessor_config.json image_size {} != vision tower image_size {}",
                image_cfg.image_size, config.vision.image_size
            )));
        }
        let processor = TextProcessor::from_files(&dir.join("tokenizer.json"), proc_cfg)?;
        // Every id the tokenizer can produce must have an embedding row.
        let vocab = config.language.vocab_size;
        let top = processor
            .tokenizer
            .get_vocab(true)
            .into_values()
            .max()
            .unwrap_or(0);
        if top as usize >= vocab {
            return Err(JanusError::Config(format!(
                "tokenizer.json has token id {top}, outside the model's vocabulary of {vocab} \
                 (config.json vocab_size)"
            )));
        }
        let checkpoint = Checkpoint::open(dir)?;
        // A quantised folder (`model.gguf`) loads in its own quantisation.
        let quant = match (checkpoint.stored_quant(), quant) {
            (None, q) => q,
            (Some(stored), Quant::None) => stored,
            (Some(stored), q) if q == stored => q,
            (Some(stored), q) => {
                return Err(JanusError::Input(format!(
                    "{} holds {stored} weights; load it with quant {stored} (or none), not {q}",
                    checkpoint.files()[0].display()
                )))
            }
        };
        let vb = checkpoint.into_var_builder(config.layout, dtype, device);
        let model = JanusModel::load_quantized(vb, &config, quant).map_err(JanusError::weights)?;
        let this = Self {
            model,
            processor,
            image_processor: ImageProcessor::new(image_cfg),
            device: device.clone(),
            dtype,
            quant,
        };
        this.image_grid()?;
        Ok(this)
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The quantisation chosen at load ([`Quant::None`] for none).
    pub fn quant(&self) -> Quant {
        self.quant
    }

    /// The compute dtype chosen at load.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The model's sizes.
    pub fn config(&self) -> &JanusConfig {
        &self.model.config
    }

    /// The loaded modules (LLM, vision tower, VQ model, heads), for
    /// stage-by-stage use.
    pub fn modules(&self) -> &JanusModel {
        &self.model
    }

    /// The tokenizer and prompt template.
    pub fn text_processor(&self) -> &TextProcessor {
        &self.processor
    }

    /// The image preprocessing of the understanding path.
    pub fn image_processor(&self) -> &ImageProcessor {
        &self.image_processor
    }
}
