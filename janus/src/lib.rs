//! Janus-Pro in Rust: image understanding and text-to-image generation,
//! matching DeepSeek's reference implementation.
//!
//! ```no_run
//! use std::path::Path;
//! use candle_core::{DType, Device};
//! use janus::{JanusPro, Message, UnderstandOptions, GenerateOptions};
//!
//! # fn main() -> janus::Result<()> {
//! let model = JanusPro::load(Path::new("Janus-Pro-1B"), &Device::Cpu, DType::F32)?;
//! let image = janus::ImageProcessor::open(Path::new("cat.png"))?;
//! let conversation = [Message::user("<image_placeholder>\nWhat is in this image?"), Message::assistant("")];
//! let answer = model.understand(&conversation, &[image], &UnderstandOptions::default())?;
//! println!("{}", answer.text);
//!
//! let generated = model.generate("A red apple on a wooden table", &GenerateOptions::default())?;
//! generated.images[0].save("apple.png").expect("write png");
//! # Ok(()) }
//! ```

pub mod bench;
pub mod cancel;
pub mod chat;
pub mod config;
pub mod error;
mod hub;
pub mod image_processor;
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
