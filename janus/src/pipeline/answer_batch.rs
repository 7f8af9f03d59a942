//! Many conversations answered together: each prompt is prefilled on its
//! own, then one decoding step runs every unfinished answer as one batch
//! (the weights are read once per step for all of them). Conversations join
//! and leave between steps, so a long answer never holds back the next one.

use candle_core::{DType, IndexOp, Tensor};
use image::DynamicImage;

use super::model::JanusPro;
use super::understand::{Answer, UnderstandOptions};
use crate::error::{JanusError, Result};
use crate::models::{keep_batch_rows, KvCache};
use crate::sampling::Sampler;
use crate::text_processor::Message;

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model produced its end-of-sentence token.
    Stop,
    /// `max_new_tokens` or the model's context was reached.
    Length,
}

/// What one decoding step gave one conversation of an [`AnswerBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerStep {
    /// The key the conversation was added with.
    pub key: u64,
    /// The token chosen this step.
    pub token: u32,
    /// Set on the conversation's last token: its whole answer and why it
    /// ended. The conversation has then left the batch.
    pub finished: Option<(Answer, Finish)>,
}

struct Row {
    key: u64,
    sampler: Sampler,
    ids: Vec<u32>,
    prompt_len: usize,
    max_new_tokens: usize,
}

/// Conversations being answered together, one token each per [`step`].
/// An answer equals what [`JanusPro::understand_with_system`] gives for
/// the same conversation and options (exactly with f32 weights; bf16 or
/// quantised weights round several rows unlike one).
///
/// [`step`]: AnswerBatch::step
pub struct AnswerBatch<'m> {
    model: &'m JanusPro,
    rows: Vec<Row>,
    /// Every row's keys and values, aligned at their ends (see [`KvCache::stack`]).
    cache: Option<KvCache>,
    /// Last hidden state of every row [rows, 1, hidden]: the next step's input.
    hidden: Option<Tensor>,
}

/// One conversation of [`JanusPro::answer_all`].
#[derive(Debug, Clone)]
pub struct AnswerRequest {
    /// The conversation, its last turn an empty assistant turn.
    pub conversation: Vec<Message>,
    /// Its images, one per placeholder, in order.
    pub images: Vec<DynamicImage>,
    /// The system prompt (empty: none).
    pub system_prompt: String,
    /// Length, sampling and seed.
    pub options: UnderstandOptions,
}

impl JanusPro {
    /// Answers every request, at most `batch_size` together, rows joining
    /// as others finish. `requests` is read lazily, one row as a place
    /// frees up (so images are decoded only when needed). An `Err` item
    /// (e.g. an unreadable image) or a request the model refuses is that
    /// row's result and the others go on. `on_done(index, result)` is
    /// called as each row finishes, in finishing order; `on_step()` after
    /// every decoding step. An error from either callback, or a failed
    /// step, stops the call.
    pub fn answer_all(
        &self,
        requests: impl IntoIterator<Item = Result<AnswerRequest>>,
        batch_size: usize,
        on_step: &mut dyn FnMut() -> Result<()>,
        on_done: &mut dyn FnMut(usize, Result<Answer>) -> Result<()>,
    ) -> Result<()> {
        if batch_size == 0 {
            return Err(JanusError::Input("batch size must be at least 1".into()));
        }
        let mut batch = self.answer_batch();
        let width = batch_size.min(batch.max_rows());
        let mut next = requests.into_iter().enumerate();
        loop {
            while batch.len() < width {
                let Some((i, request)) = next.next() else {
                    break;
                };
                let added = request.and_then(|r| {
                    batch.add(
                        i as u64,
                        &r.conversation,
                        &r.images,
                        &r.system_prompt,
                        &r.options,
                    )
                });
                if let Err(e) = added {
                    on_done(i, Err(e))?;
                }
            }
            if batch.is_empty() {
                return Ok(());
            }
            for step in batch.step()? {
                if let Some((answer, _)) = step.finished {
                    on_done(step.key as usize, Ok(answer))?;
                }
            }
            on_step()?;
        }
    }

    /// An empty batch of conversations to answer together.
    pub fn answer_batch(&self) -> AnswerBatch<'_> {
        AnswerBatch {
            model: self,
            rows: vec![],
            cache: None,
            hidden: None,
        }
    }
}

impl AnswerBatch<'_> {
    /// Most conversations this device decodes together: many on the CPU,
    /// where the attention kernels take rows of different lengths; one
    /// elsewhere.
    pub fn max_rows(&self) -> usize {
        if self.model.device().is_cpu() {
            usize::MAX
        } else {
            1
        }
    }

    /// Conversations still being answered.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no conversation is being answered.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Keys of the conversations being answered, in batch order.
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.rows.iter().map(|r| r.key)
    }

    /// Prefills a conversation (whose last turn is an empty assistant turn)
    /// and adds it under `key`; its first token comes with the next step.
    /// Returns the prompt's length in tokens (images included). A bad
    /// conversation or option is an error and leaves the batch as it was.
    pub fn add(
        &mut self,
        key: u64,
        conversation: &[Message],
        images: &[DynamicImage],
        system_prompt: &str,
        opts: &UnderstandOptions,
    ) -> Result<usize> {
        opts.sampling.validate()?;
        if opts.max_new_tokens == 0 {
            return Err(JanusError::Input(
                "max new tokens must be at least 1".into(),
            ));
        }
        if self.rows.len() >= self.max_rows() {
            return Err(JanusError::Input(format!(
                "this device answers {} conversation(s) at a time",
                self.max_rows()
            )));
        }
        if self.rows.iter().any(|r| r.key == key) {
            return Err(JanusError::Input(format!(
                "key {key} is already in the batch"
            )));
        }
        let model = self.model;
        let (ids, embeds) =
            model.understanding_inputs_with_system(conversation, images, system_prompt)?;
        let lm = &model.modules().language;
        let t = ids.len();
        // A lone conversation gets room for its whole answer at once; stacked
        // caches are sized when stacked.
        let reserve = if self.rows.is_empty() {
            t + opts.max_new_tokens
        } else {
            t
        };
        let mut cache = lm.new_cache_with_capacity(reserve);
        let hidden = lm.forward_embeds(&embeds, &mut cache)?;
        let last = hidden.i((.., t - 1.., ..))?;
        let row = Row {
            key,
            sampler: Sampler::new(opts.sampling.clone(), opts.seed),
            ids: vec![],
            prompt_len: t,
            max_new_tokens: opts.max_new_tokens,
        };
        let (cache, hidden) = match (&self.cache, &self.hidden) {
            (Some(held), Some(h)) => {
                let end = held.len().max(t);
                // Room for every row's longest possible answer, aligned at the end.
                let room = self
                    .rows
                    .iter()
                    .chain(std::iter::once(&row))
                    .map(|r| r.max_new_tokens - r.ids.len())
                    .max()
                    .unwrap_or(0);
                (
                    KvCache::stack(&[held, &cache], end + room)?,
                    Tensor::cat(&[h, &last], 0)?,
                )
            }
            _ => (cache, last),
        };
        self.cache = Some(cache);
        self.hidden = Some(hidden);
        self.rows.push(row);
        Ok(t)
    }

    /// Removes the conversation `key` (e.g. a cancelled request) and
    /// returns the tokens it had, or None if it is not in the batch.
    pub fn remove(&mut self, key: u64) -> Result<Option<Vec<u32>>> {
        let Some(at) = self.rows.iter().position(|r| r.key == key) else {
            return Ok(None);
        };
        let keep: Vec<usize> = (0..self.rows.len()).filter(|&i| i != at).collect();
        self.keep_rows(&keep)?;
        Ok(Some(self.rows.remove(at).ids))
    }

    /// One token for every conversation, in batch order; finished ones
    /// leave the batch, the others' tokens are fed for the next step.
    pub fn step(&mut self) -> Result<Vec<AnswerStep>> {
        let Some(hidden) = self.hidden.take() else {
            return Ok(vec![]);
        };
        let model = self.model;
        let lm = &model.modules().language;
        let eos = model.text_processor().special.eos;
        let max_pos = lm.config().max_position_embeddings;
        let logits = lm
            .lm_logits(&hidden.i((.., 0, ..))?)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        // Each row has its own sampler: sampling the rows in parallel gives
        // the same tokens (top-p sorts a whole vocabulary per row).
        let tokens: Vec<u32> = {
            use rayon::prelude::*;
            self.rows
                .par_iter_mut()
                .zip(logits.par_iter())
                .map(|(row, logits)| row.sampler.sample_with_history(logits, &row.ids))
                .collect()
        };
        let mut steps = Vec::with_capacity(self.rows.len());
        let mut keep = vec![];
        for (i, (row, token)) in self.rows.iter_mut().zip(tokens).enumerate() {
            row.ids.push(token);
            let finish = if token == eos {
                Some(Finish::Stop)
            } else if row.ids.len() >= row.max_new_tokens
                || row.prompt_len + row.ids.len() > max_pos
            {
                Some(Finish::Length)
            } else {
                keep.push(i);
                None
            };
            let finished = match finish {
                Some(f) => Some((
                    Answer {
                        text: model.text_processor().decode(&row.ids)?,
                        token_ids: row.ids.clone(),
                    },
                    f,
                )),
                None => None,
            };
            steps.push(AnswerStep {
                key: row.key,
                token,
                finished,
            });
        }
        if keep.is_empty() {
            self.rows.clear();
            self.cache = None;
            return Ok(steps);
        }
        if keep.len() < self.rows.len() {
            self.keep_rows(&keep)?;
            let mut i = 0;
            self.rows.retain(|_| {
                i += 1;
                keep.contains(&(i - 1))
            });
        }
        let next: Vec<u32> = self
            .rows
            .iter()
            .map(|r| *r.ids.last().expect("a token"))
            .collect();
        let n = next.len();
        let embeds = lm.embed(&Tensor::from_vec(next, (n, 1), model.device())?)?;
        let cache = self.cache.as_mut().expect("rows have a cache");
        self.hidden = Some(lm.forward_embeds(&embeds, cache)?);
        Ok(steps)
    }

    /// Keeps the cache rows and pending hidden states of rows `keep`
    /// (the caller drops the other `rows`).
    fn keep_rows(&mut self, keep: &[usize]) -> Result<()> {
        Ok(keep_batch_rows(&mut self.cache, &mut self.hidden, keep)?)
    }
}
