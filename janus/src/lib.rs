//! Janus-Pro in Rust: image understanding and text-to-image generation,
//! matching DeepSeek's reference implementation.
//!
//! [`JanusPro`] is the entry point: load a model folder or a hub id, then
//! answer questions about images ([`JanusPro::understand`], streamed with
//! [`JanusPro::understand_with`], multi-turn with [`ChatSession`]) or
//! generate images ([`JanusPro::generate`], [`JanusPro::generate_many`]).
//! Every long call takes a callback that sees each step and can stop the
//! run with a [`CancelToken`]; every error is a [`JanusError`].
//!
//! ```
//! use janus::processor::question_conversation;
//! use janus::{GenerateOptions, ImageProcessor, JanusPro, LoadOptions, SamplingParams, UnderstandOptions};
//!
//! # fn main() -> janus::Result<()> {
//! // A local folder (here the tiny test model) or a hub id such as "deepseek-ai/Janus-Pro-1B".
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny");
//! let model = JanusPro::from_pretrained(dir, &LoadOptions::default())?;
//!
//! let image = ImageProcessor::open(format!("{dir}/images/wide.png").as_ref())?;
//! let conversation = question_conversation("Describe this image in detail.", 1);
//! let opts = UnderstandOptions { max_new_tokens: 12, ..Default::default() };
//! let answer = model.understand(&conversation, &[image], &opts)?;
//! assert_eq!(answer.token_ids.len(), 12);
//!
//! let opts = GenerateOptions { parallel_size: 2, sampling: SamplingParams::greedy(), ..Default::default() };
//! let generated = model.generate("A red apple on a wooden table", &opts)?;
//! assert_eq!(generated.images.len(), 2);
//! assert_eq!(generated.images[0].dimensions(), (16, 16)); // 384 x 384 for the real models
//! # Ok(()) }
//! ```

pub mod bench;
pub mod cancel;
pub mod chat;
pub mod config;
pub mod error;
pub mod gguf;
mod hub;
pub mod image_processor;
mod jpeg;
pub mod models;
pub mod pipeline;
pub mod processor;
pub mod quant;
pub mod sampling;
pub mod source;
mod transformers_layout;
pub mod weights;

pub use cancel::CancelToken;
pub use chat::{ChatReply, ChatSession};
pub use config::JanusConfig;
pub use error::{JanusError, Result};
pub use image_processor::ImageProcessor;
pub use pipeline::{
    Answer, GenerateOptions, GeneratedImages, JanusPro, Progress, UnderstandOptions,
};
pub use processor::Message;
pub use quant::Quant;
pub use sampling::SamplingParams;
pub use source::{parse_device, parse_dtype, LoadOptions, DEFAULT_MODEL};
