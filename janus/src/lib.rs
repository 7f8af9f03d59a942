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
//! use janus::{question_conversation, GenerateOptions, ImageProcessor, JanusPro, LoadOptions, SamplingParams, UnderstandOptions};
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
//!
//! The modules below the pipelines are public for stage-by-stage use
//! ([`models`], [`checkpoint`], [`config`]); [`bench`](mod@bench) is the benchmark
//! behind `janus bench`. ARCHITECTURE.md in the repository shows the layers.

#![warn(missing_docs)]

// Layers, bottom up: each imports only those above it in this list.
pub mod bench;
mod cancel;
pub mod checkpoint;
pub mod config;
mod error;
mod hub;
mod image_processor;
mod jpeg;
mod loading;
mod memory;
pub mod models;
mod pillow_resize;
mod pipeline;
mod pixel_limit;
mod progress;
mod quantize;
mod sampling;
mod text_processor;

pub use cancel::CancelToken;
pub use config::JanusConfig;
pub use error::{JanusError, Result};
pub use image_processor::{ImageProcessor, ImageProcessorConfig, MAX_IMAGE_PIXELS};
pub use janus_nn::Quant;
pub use loading::{parse_device, parse_dtype, resolve_model, LoadOptions, DEFAULT_MODEL};
pub use pipeline::{
    resize_square, Answer, AnswerBatch, AnswerRequest, AnswerStep, CfgLogits, ChatReply,
    ChatSession, Finish, GenerateOptions, GeneratedImages, ImageBatch, ImageStep, JanusPro,
    PromptImages, UnderstandOptions,
};
pub use progress::Progress;
pub use quantize::save_quantized;
pub use sampling::{image_seed, SamplingParams};
pub use text_processor::{
    load_conversation, question_conversation, Message, SpecialTokens, TextProcessor, TextStreamer,
    ASSISTANT_ROLE, DEFAULT_SYSTEM_PROMPT, USER_ROLE,
};
