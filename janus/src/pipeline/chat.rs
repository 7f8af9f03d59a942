//! Multi-turn chat that keeps the attention cache of earlier turns, so each
//! turn only runs the model over what is new.

use image::DynamicImage;

use super::model::JanusPro;
use super::understand::{Answer, UnderstandOptions};
use crate::error::{JanusError, Result};
use crate::models::KvCache;
use crate::progress::Progress;
use crate::text_processor::Message;

/// The state of one conversation: its turns, its images and the cache of
/// every token the model has already seen.
///
/// ```
/// use janus::{ChatSession, ImageProcessor, JanusPro, LoadOptions, UnderstandOptions};
/// # fn main() -> janus::Result<()> {
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny");
/// let model = JanusPro::from_pretrained(dir, &LoadOptions::default())?;
/// let opts = UnderstandOptions { max_new_tokens: 8, ..Default::default() };
/// let mut chat = ChatSession::new();
/// let image = ImageProcessor::open(format!("{dir}/images/square.png").as_ref())?;
/// let first = model.chat_turn(&mut chat, "What is this?", vec![image], &opts, &mut |_, _| Ok(()))?;
/// let second = model.chat_turn(&mut chat, "Why?", vec![], &opts, &mut |_, _| Ok(()))?;
/// assert_eq!(chat.messages().len(), 4);
/// assert!(second.new_prompt_tokens < 50, "earlier turns come from the cache");
/// # let _ = first; Ok(()) }
/// ```
#[derive(Default)]
pub struct ChatSession {
    messages: Vec<Message>,
    images: Vec<DynamicImage>,
    cache: Option<KvCache>,
    /// The ids whose keys and values `cache` holds, in order.
    cached_ids: Vec<u32>,
}

/// One chat answer; `stopped` when the caller cancelled it part way.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// The answer (as far as it got when stopped).
    pub answer: Answer,
    /// The turn was cancelled midway; its partial answer is kept in the history.
    pub stopped: bool,
    /// Prompt tokens the model had to run this turn (the rest came from the cache).
    pub new_prompt_tokens: usize,
}

impl ChatSession {
    /// An empty conversation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every turn, image and cached token.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// The conversation so far (the official list format).
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The images given so far, in order.
    pub fn images(&self) -> &[DynamicImage] {
        &self.images
    }
}

impl JanusPro {
    /// Adds a user turn (with `images`, each placed by an
    /// `<image_placeholder>` in `text` or, when `text` has none, on lines of
    /// their own before it) and answers it. A callback error of `Cancelled`
    /// ends the answer early but keeps the turn; other errors leave the
    /// session as it was.
    pub fn chat_turn(
        &self,
        session: &mut ChatSession,
        text: &str,
        images: Vec<DynamicImage>,
        opts: &UnderstandOptions,
        on_token: &mut dyn FnMut(u32, Progress) -> Result<()>,
    ) -> Result<ChatReply> {
        opts.sampling.validate()?;
        let tag = self.processor.config.image_tag.clone();
        let content = if images.is_empty() || text.contains(&tag) {
            text.to_owned()
        } else {
            format!("{}{text}", format!("{tag}\n").repeat(images.len()))
        };
        let mut messages = session.messages.clone();
        messages.push(Message::user(content));
        messages.push(Message::assistant(""));
        let all_images: Vec<DynamicImage> = session
            .images
            .iter()
            .cloned()
            .chain(images.iter().cloned())
            .collect();
        let ids = self
            .processor
            .understanding_ids(&messages, all_images.len())?;
        let max_pos = self.model.config.language.max_position_embeddings;
        if ids.len() >= max_pos {
            return Err(JanusError::Input(format!(
                "the conversation has {} tokens, more than the model's context of {max_pos}; use /reset",
                ids.len()
            )));
        }

        // Reuse the cache for the longest unchanged prefix (the answer's
        // re-tokenisation may differ from the generated ids), never cutting
        // into an image span; the images of the new part are the last ones.
        let mut start = ids
            .iter()
            .zip(&session.cached_ids)
            .take_while(|(a, b)| a == b)
            .count();
        start = start.min(ids.len() - 1);
        while start > 0 && ids[start] == self.processor.special.image {
            start -= 1;
        }
        let mut cache = match session.cache.take() {
            Some(mut cache) if start > 0 => {
                cache.truncate(start);
                cache
            }
            _ => {
                start = 0;
                self.model.language.new_cache()
            }
        };
        let new_ids = &ids[start..];
        let new_placeholders = new_ids
            .iter()
            .filter(|&&id| id == self.processor.special.image)
            .count();
        let new_images = new_placeholders / self.processor.config.num_image_tokens.max(1);
        let embeds = self.embed_prompt(new_ids, &all_images[all_images.len() - new_images..])?;

        let mut generated = Vec::new();
        let result = self.decode_answer(&mut cache, &embeds, opts, &mut |id, p| {
            generated.push(id);
            on_token(id, p)
        });
        let stopped = match result {
            Ok(_) => false,
            Err(JanusError::Cancelled) => true,
            Err(e) => return Err(e),
        };
        let text = self.processor.decode(&generated)?;
        if let Some(last) = messages.last_mut() {
            last.content = text.clone();
        }
        session.messages = messages;
        session.images = all_images;
        // Every generated id but the last was fed to the model.
        session.cached_ids = ids
            .iter()
            .chain(generated.iter().take(generated.len().saturating_sub(1)))
            .copied()
            .collect();
        session.cache = Some(cache);
        Ok(ChatReply {
            answer: Answer {
                text,
                token_ids: generated,
            },
            stopped,
            new_prompt_tokens: new_ids.len(),
        })
    }
}
