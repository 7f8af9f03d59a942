//! The pipelines on top of the modules: a loaded [`JanusPro`] answers
//! questions about images ([`understand`]), keeps a conversation going
//! ([`chat`]) and generates images ([`generate`]).

pub mod answer_batch;
pub mod chat;
pub mod generate;
pub mod image_batch;
pub mod model;
pub mod understand;

pub use answer_batch::{AnswerBatch, AnswerRequest, AnswerStep, Finish};
pub use chat::{ChatReply, ChatSession};
pub use generate::{resize_square, CfgLogits, GenerateOptions, GeneratedImages, PromptImages};
pub use image_batch::{ImageBatch, ImageStep};
pub use model::JanusPro;
pub use understand::{Answer, UnderstandOptions};
