//! The understanding pipeline: a conversation with images in, a text
//! answer out, token by token.

use candle_core::{DType, IndexOp, Tensor};
use image::DynamicImage;

use super::model::JanusPro;
use crate::error::{JanusError, Result};
use crate::models::KvCache;
use crate::progress::Progress;
use crate::sampling::{Sampler, SamplingParams};
use crate::text_processor::{Message, DEFAULT_SYSTEM_PROMPT};

/// Options of an understanding (text answer) run.
#[derive(Debug, Clone, PartialEq)]
pub struct UnderstandOptions {
    /// Most tokens to generate (EOS ends the answer sooner).
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: SamplingParams,
    /// Seed of the sampler (random when unset; unused when greedy).
    pub seed: Option<u64>,
}

impl Default for UnderstandOptions {
    /// Greedy, as the official inference script.
    fn default() -> Self {
        Self {
            max_new_tokens: 512,
            sampling: SamplingParams {
                top_p: 0.95,
                ..SamplingParams::greedy()
            },
            seed: None,
        }
    }
}

/// The answer to a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The decoded answer.
    pub text: String,
    /// Generated ids in order, including EOS if it was produced.
    pub token_ids: Vec<u32>,
}

impl JanusPro {
    /// Prompt ids and input embeddings [1, T, hidden] of a conversation,
    /// image embeddings spliced in at the placeholder positions in order.
    pub fn understanding_inputs(
        &self,
        conversation: &[Message],
        images: &[DynamicImage],
    ) -> Result<(Vec<u32>, Tensor)> {
        self.understanding_inputs_with_system(conversation, images, DEFAULT_SYSTEM_PROMPT)
    }

    /// As [`JanusPro::understanding_inputs`] with another system prompt
    /// (empty: none).
    pub fn understanding_inputs_with_system(
        &self,
        conversation: &[Message],
        images: &[DynamicImage],
        system_prompt: &str,
    ) -> Result<(Vec<u32>, Tensor)> {
        let ids = self.processor.understanding_ids_with_system(
            conversation,
            images.len(),
            system_prompt,
        )?;
        let max_pos = self.model.config.language.max_position_embeddings;
        if ids.len() >= max_pos {
            return Err(JanusError::Input(format!(
                "the prompt has {} tokens, more than the model's context of {max_pos}",
                ids.len()
            )));
        }
        let embeds = self.embed_prompt(&ids, images)?;
        Ok((ids, embeds))
    }

    /// Input embeddings [1, T, hidden] of prompt ids, with the embeddings of
    /// `images` (in order) at the image placeholder positions.
    pub fn embed_prompt(&self, ids: &[u32], images: &[DynamicImage]) -> Result<Tensor> {
        let placeholders = ids
            .iter()
            .filter(|&&id| id == self.processor.special.image)
            .count();
        let per_image = self.processor.config.num_image_tokens;
        let patches = self.model.config.vision.num_patches();
        if !images.is_empty() && per_image != patches {
            return Err(JanusError::Config(format!(
                "processor_config.json: num_image_tokens {per_image} does not equal the vision \
                 encoder's {patches} patches per image (a missing file means the default 576)"
            )));
        }
        if placeholders != images.len() * per_image {
            return Err(JanusError::Input(format!(
                "{placeholders} image placeholder tokens for {} image(s) of {per_image} tokens",
                images.len()
            )));
        }
        let ids_t = Tensor::new(ids, &self.device)?;
        let text = self.model.language.embed(&ids_t)?;
        if images.is_empty() {
            return Ok(text.unsqueeze(0)?);
        }
        let pixels = self
            .image_processor
            .preprocess(images, &self.device)?
            .to_dtype(self.dtype)?;
        let img = self.model.encode_images(&pixels)?;
        let (n, per, d) = img.dims3()?;
        let img = img.reshape((n * per, d))?;
        // Row t of the result is text row t, or image row k for the k-th placeholder.
        let t = ids.len() as u32;
        let mut k = 0u32;
        let index: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                if id == self.processor.special.image {
                    k += 1;
                    t + k - 1
                } else {
                    i as u32
                }
            })
            .collect();
        let table = Tensor::cat(&[&text, &img], 0)?;
        let embeds = table.index_select(&Tensor::new(index, &self.device)?, 0)?;
        Ok(embeds.unsqueeze(0)?)
    }

    /// Answers a conversation whose last turn is an empty assistant turn.
    pub fn understand(
        &self,
        conversation: &[Message],
        images: &[DynamicImage],
        opts: &UnderstandOptions,
    ) -> Result<Answer> {
        self.understand_with(conversation, images, opts, &mut |_, _| Ok(()))
    }

    /// As `understand`, calling `on_token(id, progress)` after every token;
    /// an error returned by the callback (e.g. `Cancelled`) stops the run.
    pub fn understand_with(
        &self,
        conversation: &[Message],
        images: &[DynamicImage],
        opts: &UnderstandOptions,
        on_token: &mut dyn FnMut(u32, Progress) -> Result<()>,
    ) -> Result<Answer> {
        self.understand_with_system(conversation, images, DEFAULT_SYSTEM_PROMPT, opts, on_token)
    }

    /// As [`JanusPro::understand_with`] with another system prompt (empty:
    /// none) in place of the official default.
    pub fn understand_with_system(
        &self,
        conversation: &[Message],
        images: &[DynamicImage],
        system_prompt: &str,
        opts: &UnderstandOptions,
        on_token: &mut dyn FnMut(u32, Progress) -> Result<()>,
    ) -> Result<Answer> {
        opts.sampling.validate()?;
        let (_, embeds) =
            self.understanding_inputs_with_system(conversation, images, system_prompt)?;
        // Sized once for the prompt and the longest answer (grows if a caller goes on).
        let mut cache = self
            .model
            .language
            .new_cache_with_capacity(embeds.dim(1)? + opts.max_new_tokens);
        let ids = self.decode_answer(&mut cache, &embeds, opts, on_token)?;
        Ok(Answer {
            text: self.processor.decode(&ids)?,
            token_ids: ids,
        })
    }

    /// Feeds `embeds` after what `cache` holds, then generates up to
    /// `max_new_tokens` ids (stopping after EOS or at the context's end).
    /// Every id but the last is fed back, so `cache` ends holding them.
    /// When the callback fails, the ids generated so far are in the error's
    /// place: see [`super::chat`] for how a chat turn keeps them.
    pub(crate) fn decode_answer(
        &self,
        cache: &mut KvCache,
        embeds: &Tensor,
        opts: &UnderstandOptions,
        on_token: &mut dyn FnMut(u32, Progress) -> Result<()>,
    ) -> Result<Vec<u32>> {
        let lm = &self.model.language;
        let mut sampler = Sampler::new(opts.sampling.clone(), opts.seed);
        let max_pos = lm.config().max_position_embeddings;
        let mut hidden = lm.forward_embeds(embeds, cache)?;
        let mut ids = Vec::new();
        for step in 0..opts.max_new_tokens {
            let last = hidden.i((.., hidden.dim(1)? - 1, ..))?;
            let logits = lm.lm_logits(&last)?;
            let row: Vec<f32> = logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            let next = sampler.sample_with_history(&row, &ids);
            ids.push(next);
            on_token(
                next,
                Progress {
                    step: step + 1,
                    total: opts.max_new_tokens,
                },
            )?;
            if next == self.processor.special.eos || cache.len() + 1 > max_pos {
                break;
            }
            if step + 1 < opts.max_new_tokens {
                let e = lm.embed(&Tensor::new(&[[next]], &self.device)?)?;
                hidden = lm.forward_embeds(&e, cache)?;
            }
        }
        Ok(ids)
    }
}
