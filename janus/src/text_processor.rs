//! Prompts as the official `VLChatProcessor` builds them: the `deepseek`
//! conversation format, tokenisation (BOS prepended by the tokenizer's
//! template), and `<image_placeholder>` expansion.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::config::ProcessorConfig;
use crate::error::{JanusError, Result};

/// The system prompt the official processor uses for understanding.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.";

/// The user's role name in conversations.
pub const USER_ROLE: &str = "<|User|>";
/// The assistant's role name in conversations.
pub const ASSISTANT_ROLE: &str = "<|Assistant|>";
const BOS: &str = "<｜begin▁of▁sentence｜>";
const EOS: &str = "<｜end▁of▁sentence｜>";
const PAD: &str = "<｜▁pad▁｜>";
const IMAGE_START: &str = "<begin_of_image>";
const IMAGE_END: &str = "<end_of_image>";

/// One turn of the official conversation list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// [`USER_ROLE`] or [`ASSISTANT_ROLE`].
    pub role: String,
    /// The text, with one `<image_placeholder>` per image of the turn.
    pub content: String,
    /// Image files of this turn, one per `<image_placeholder>` in `content`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<PathBuf>,
}

impl Message {
    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: USER_ROLE.into(),
            content: content.into(),
            images: vec![],
        }
    }

    /// An assistant turn (empty: the one to answer).
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: ASSISTANT_ROLE.into(),
            content: content.into(),
            images: vec![],
        }
    }
}

/// A one-turn conversation asking `question` about `num_images` images: one
/// `<image_placeholder>` line per image before the question, as the official
/// demo, unless the question already places them itself.
pub fn question_conversation(question: &str, num_images: usize) -> Vec<Message> {
    let content = if question.contains("<image_placeholder>") {
        question.to_owned()
    } else {
        format!("{}{question}", "<image_placeholder>\n".repeat(num_images))
    };
    vec![Message::user(content), Message::assistant("")]
}

/// Turns generated ids into text pieces as they arrive, holding back bytes
/// that do not yet decode to complete characters (never half a character).
pub struct TextStreamer<'a> {
    processor: &'a TextProcessor,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStreamer<'a> {
    /// A streamer over `processor`'s tokenizer.
    pub fn new(processor: &'a TextProcessor) -> Self {
        Self {
            processor,
            ids: vec![],
            emitted: 0,
        }
    }

    /// Adds a token; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.processor.decode(&self.ids)?;
        // A trailing U+FFFD is an incomplete byte sequence that later tokens may finish.
        if text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        Ok(self.take_new(&text))
    }

    /// The text still held back at the end of generation.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.processor.decode(&self.ids)?;
        Ok(self.take_new(&text))
    }

    fn take_new(&mut self, text: &str) -> Option<String> {
        if text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return None;
        }
        let piece = text[self.emitted..].to_owned();
        self.emitted = text.len();
        Some(piece)
    }
}

/// Reads a conversation file (`[{"role", "content", "images"?}]`); image
/// paths are taken relative to the file.
pub fn load_conversation(path: &Path) -> Result<Vec<Message>> {
    let text = crate::config::read_text(path, "conversation file")?;
    let mut messages: Vec<Message> =
        serde_json::from_str(&text).map_err(|e| JanusError::BadFile {
            path: path.into(),
            reason: format!(
                "expected a list of {{\"role\", \"content\", \"images\"?}} objects: {e}"
            ),
        })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for m in &mut messages {
        for img in &mut m.images {
            if img.is_relative() {
                *img = dir.join(&*img);
            }
        }
    }
    Ok(messages)
}

/// Token ids the pipelines need, looked up by their strings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpecialTokens {
    /// Beginning of sentence.
    pub bos: u32,
    /// End of sentence (ends an answer).
    pub eos: u32,
    /// Padding (the unconditional CFG rows).
    pub pad: u32,
    /// `<image_placeholder>`.
    pub image: u32,
    /// `<begin_of_image>`.
    pub image_start: u32,
    /// `<end_of_image>`.
    pub image_end: u32,
}

/// The tokenizer and prompt template of a model folder.
pub struct TextProcessor {
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// The folder's `processor_config.json`.
    pub config: ProcessorConfig,
    /// Ids of the special tokens.
    pub special: SpecialTokens,
}

/// Encodes and decodes a sample prompt, so that a tokenizer.json that
/// deserializes but then panics (tokenizers trusts its file: a template
/// naming a special token it lacks indexes a map) fails at load, as an
/// error. The panic hook is silenced meanwhile: the error is the message.
fn try_tokenizer(tokenizer: &Tokenizer, image_tag: &str) -> std::result::Result<(), String> {
    static QUIET: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let sample = format!("You are a helpful assistant.\n\n<|User|>: {image_tag}\nWhat is in 图片? 1.5 é\n\n<|Assistant|>:");
    let _serial = QUIET.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ids = tokenizer
            .encode(sample.as_str(), true)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default();
        let _ = tokenizer.decode(&ids, true);
        let _ = tokenizer.decode(&ids, false);
    }));
    std::panic::set_hook(hook);
    run.map_err(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("the tokenizer fails on a sample prompt ({why})")
    })
}

impl TextProcessor {
    /// Loads `tokenizer.json` and looks up the special tokens.
    pub fn from_files(tokenizer_json: &Path, config: ProcessorConfig) -> Result<Self> {
        if !tokenizer_json.exists() {
            return Err(JanusError::MissingFile {
                what: "tokenizer".into(),
                path: tokenizer_json.into(),
            });
        }
        let bad = |reason: String| JanusError::BadFile {
            path: tokenizer_json.into(),
            reason,
        };
        // A real tokenizer.json is a few MB; this bounds what a hostile one costs.
        const MAX_BYTES: u64 = 256 << 20;
        let size = std::fs::metadata(tokenizer_json)
            .map_err(|e| bad(e.to_string()))?
            .len();
        if size > MAX_BYTES {
            return Err(bad(format!(
                "{size} bytes, more than a tokenizer's {} MiB",
                MAX_BYTES >> 20
            )));
        }
        let text = std::fs::read_to_string(tokenizer_json).map_err(|e| bad(e.to_string()))?;
        // The JSON is checked first: tokenizers panics on a truncated or
        // malformed "decoder" (an `expect` in its deserializer).
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| bad(e.to_string()))?;
        let tokenizer = Tokenizer::from_str(&text).map_err(|e| bad(e.to_string()))?;
        try_tokenizer(&tokenizer, &config.image_tag).map_err(bad)?;
        let id = |tok: &str| {
            tokenizer
                .token_to_id(tok)
                .ok_or_else(|| JanusError::BadFile {
                    path: tokenizer_json.into(),
                    reason: format!("the tokenizer has no {tok} token"),
                })
        };
        let special = SpecialTokens {
            bos: id(BOS)?,
            eos: id(EOS)?,
            pad: id(PAD)?,
            image: id(&config.image_tag)?,
            image_start: id(IMAGE_START)?,
            image_end: id(IMAGE_END)?,
        };
        Ok(Self {
            tokenizer,
            config,
            special,
        })
    }

    /// The `deepseek` template: `role: content` turns separated by "\n\n"
    /// after user turns and EOS after assistant turns; an empty last turn
    /// leaves `role:` open for the model to continue.
    pub fn sft_prompt(&self, conversation: &[Message], system_prompt: &str) -> String {
        let seps = ["\n\n", EOS];
        let mut out = if system_prompt.is_empty() {
            String::new()
        } else {
            format!("{system_prompt}{}", seps[0])
        };
        for (i, m) in conversation.iter().enumerate() {
            let content = m.content.trim();
            if content.is_empty() {
                out.push_str(&m.role);
                out.push(':');
            } else {
                out.push_str(&format!("{}: {}{}", m.role, content, seps[i % 2]));
            }
        }
        out.trim().to_owned()
    }

    /// Tokenises with the tokenizer's template (BOS first).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| JanusError::Input(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes generated ids, dropping special tokens as the official demo does.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| JanusError::Input(format!("tokenizer: {e}")))
    }

    /// Replaces each `<image_placeholder>` id by `<begin_of_image>`,
    /// `num_image_tokens` placeholders and `<end_of_image>`. Returns the
    /// new ids and the number of images the prompt asks for.
    pub fn expand_image_tokens(&self, ids: &[u32]) -> (Vec<u32>, usize) {
        let n = self.config.num_image_tokens;
        let mut out = Vec::with_capacity(ids.len());
        let mut images = 0;
        for &id in ids {
            if id == self.special.image {
                if self.config.add_special_token {
                    out.push(id);
                }
                out.push(self.special.image_start);
                out.extend(std::iter::repeat_n(self.special.image, n));
                out.push(self.special.image_end);
                images += 1;
            } else {
                out.push(id);
            }
        }
        (out, images)
    }

    /// Prompt ids of an understanding conversation, with the default system
    /// prompt, checked against the number of images supplied.
    pub fn understanding_ids(
        &self,
        conversation: &[Message],
        num_images: usize,
    ) -> Result<Vec<u32>> {
        self.understanding_ids_with_system(conversation, num_images, DEFAULT_SYSTEM_PROMPT)
    }

    /// As [`TextProcessor::understanding_ids`] with another system prompt
    /// (empty: none).
    pub fn understanding_ids_with_system(
        &self,
        conversation: &[Message],
        num_images: usize,
        system_prompt: &str,
    ) -> Result<Vec<u32>> {
        let prompt = self.sft_prompt(conversation, system_prompt);
        let (ids, placeholders) = self.expand_image_tokens(&self.encode(&prompt)?);
        if placeholders != num_images {
            return Err(JanusError::Input(format!(
                "the conversation has {placeholders} {} placeholder(s) but {num_images} image(s) were given",
                self.config.image_tag
            )));
        }
        Ok(ids)
    }

    /// The text-to-image prompt: one user turn, no system prompt, then
    /// `<begin_of_image>` (as `generation_inference.py`).
    pub fn generation_prompt(&self, prompt: &str) -> String {
        let conv = [Message::user(prompt), Message::assistant("")];
        format!("{}{IMAGE_START}", self.sft_prompt(&conv, ""))
    }
}
