//! Image generations of several requests run together: each prompt's CFG
//! rows are prefilled on their own, then one step draws the next code of
//! every image of every request (the weights are read once per step for
//! all of them). Requests join and leave between steps.

use candle_core::{DType, IndexOp, Module, Tensor};

use super::generate::GenerateOptions;
use super::model::JanusPro;
use crate::error::{JanusError, Result};
use crate::models::{keep_batch_rows, KvCache};
use crate::sampling::{image_seed, Sampler};

/// What one step gave one request of an [`ImageBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageStep {
    /// The key the request was added with.
    pub key: u64,
    /// Steps done for this request (codes per image so far).
    pub step: usize,
    /// Steps in all (codes per image).
    pub total: usize,
    /// On the last step: the codes of every image (decode them with
    /// [`JanusPro::decode_images`]). The request has then left the batch.
    pub finished: Option<Vec<Vec<u32>>>,
}

struct Request {
    key: u64,
    cfg_weight: f64,
    /// One sampler per image.
    samplers: Vec<Sampler>,
    /// Codes so far, one row per image.
    codes: Vec<Vec<u32>>,
}

/// Image generations being run together, one code per image per [`step`].
/// Each request gets the codes [`JanusPro::generate_tokens`] gives it alone
/// (exactly with f32 weights).
///
/// [`step`]: ImageBatch::step
pub struct ImageBatch<'m> {
    model: &'m JanusPro,
    requests: Vec<Request>,
    /// Two rows (conditional, unconditional) per image, in request order.
    cache: Option<KvCache>,
    /// Last hidden state of every row [rows, 1, hidden].
    hidden: Option<Tensor>,
}

impl JanusPro {
    /// An empty batch of image generations to run together.
    pub fn image_batch(&self) -> ImageBatch<'_> {
        ImageBatch {
            model: self,
            requests: vec![],
            cache: None,
            hidden: None,
        }
    }
}

impl ImageBatch<'_> {
    /// Most requests this device runs together: many on the CPU, one elsewhere.
    pub fn max_requests(&self) -> usize {
        if self.model.device().is_cpu() {
            usize::MAX
        } else {
            1
        }
    }

    /// Requests being generated.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether no request is being generated.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Images being generated, over all requests.
    pub fn images(&self) -> usize {
        self.requests.iter().map(|r| r.codes.len()).sum()
    }

    /// The codes drawn so far for request `key`, one row per image (for
    /// [`JanusPro::preview_images`]).
    pub fn codes(&self, key: u64) -> Option<&[Vec<u32>]> {
        self.requests
            .iter()
            .find(|r| r.key == key)
            .map(|r| r.codes.as_slice())
    }

    /// Prefills `prompt` for `opts.parallel_size` images and adds it under
    /// `key`; its first codes come with the next step. A bad prompt or
    /// option is an error and leaves the batch as it was.
    pub fn add(&mut self, key: u64, prompt: &str, opts: &GenerateOptions) -> Result<()> {
        opts.validate()?;
        if self.requests.len() >= self.max_requests() {
            return Err(JanusError::Input(format!(
                "this device generates for {} request(s) at a time",
                self.max_requests()
            )));
        }
        if self.requests.iter().any(|r| r.key == key) {
            return Err(JanusError::Input(format!(
                "key {key} is already in the batch"
            )));
        }
        let model = self.model;
        let ids = model.generation_ids(prompt)?;
        let (n_tokens, _) = model.image_grid()?;
        let lm = &model.modules().language;
        let n = opts.parallel_size;
        let reserve = if self.requests.is_empty() {
            ids.len() + n_tokens
        } else {
            ids.len()
        };
        let mut cache = lm.new_cache_with_capacity(reserve);
        let hidden = lm.forward_embeds(&model.cfg_prompt_embeds(&ids, n)?, &mut cache)?;
        let last = hidden.i((.., ids.len() - 1.., ..))?;
        let seed = opts.seed.unwrap_or_else(rand::random);
        let request = Request {
            key,
            cfg_weight: opts.cfg_weight,
            samplers: (0..n)
                .map(|i| Sampler::new(opts.sampling.clone(), Some(image_seed(seed, i))))
                .collect(),
            codes: vec![Vec::with_capacity(n_tokens); n],
        };
        let (cache, hidden) = match (&self.cache, &self.hidden) {
            (Some(held), Some(h)) => {
                // Room for every request's remaining codes, aligned at the end.
                let end = held.len().max(ids.len());
                (
                    KvCache::stack(&[held, &cache], end + n_tokens)?,
                    Tensor::cat(&[h, &last], 0)?,
                )
            }
            _ => (cache, last),
        };
        self.cache = Some(cache);
        self.hidden = Some(hidden);
        self.requests.push(request);
        Ok(())
    }

    /// Removes request `key` (e.g. cancelled); returns whether it was there.
    pub fn remove(&mut self, key: u64) -> Result<bool> {
        let Some(at) = self.requests.iter().position(|r| r.key == key) else {
            return Ok(false);
        };
        let keep: Vec<usize> = (0..self.requests.len()).filter(|&i| i != at).collect();
        self.keep(&keep)?;
        Ok(true)
    }

    /// One code for every image of every request, in batch order; finished
    /// requests leave the batch with their codes.
    pub fn step(&mut self) -> Result<Vec<ImageStep>> {
        let Some(hidden) = self.hidden.take() else {
            return Ok(vec![]);
        };
        let model = self.model;
        let (n_tokens, _) = model.image_grid()?;
        let last = hidden.i((.., hidden.dim(1)? - 1, ..))?.contiguous()?;
        let logits = model
            .modules()
            .gen_head
            .forward(&last)?
            .to_dtype(DType::F32)?;
        let mut steps = Vec::with_capacity(self.requests.len());
        let mut keep = vec![];
        let mut row = 0;
        for (i, request) in self.requests.iter_mut().enumerate() {
            let n = request.codes.len();
            // This request's rows: conditional and unconditional per image.
            let pairs = logits.narrow(0, row, 2 * n)?.reshape((n, 2, ()))?;
            row += 2 * n;
            let (cond, uncond) = (pairs.i((.., 0, ..))?, pairs.i((.., 1, ..))?);
            let mixed = (&uncond + ((&cond - &uncond)? * request.cfg_weight)?)?;
            let mixed: Vec<Vec<f32>> = mixed.to_vec2()?;
            for ((codes, sampler), l) in request
                .codes
                .iter_mut()
                .zip(&mut request.samplers)
                .zip(&mixed)
            {
                codes.push(sampler.sample(l));
            }
            let step = request.codes[0].len();
            let done = step >= n_tokens;
            if !done {
                keep.push(i);
            }
            steps.push(ImageStep {
                key: request.key,
                step,
                total: n_tokens,
                finished: done.then(|| request.codes.clone()),
            });
        }
        if keep.len() < self.requests.len() {
            self.keep(&keep)?;
        }
        if self.requests.is_empty() {
            return Ok(steps);
        }
        // Both CFG rows of an image continue with its code.
        let next: Vec<u32> = self
            .requests
            .iter()
            .flat_map(|r| r.codes.iter().flat_map(|c| [*c.last().expect("a code"); 2]))
            .collect();
        let rows = next.len();
        let codes = Tensor::from_vec(next, (rows, 1), model.device())?;
        let embeds = model.modules().gen_image_embeds(&codes)?;
        let cache = self.cache.as_mut().expect("requests have a cache");
        self.hidden = Some(model.modules().language.forward_embeds(&embeds, cache)?);
        Ok(steps)
    }

    /// Keeps requests `keep` (indices, in order) with their cache rows and
    /// pending hidden states.
    fn keep(&mut self, keep: &[usize]) -> Result<()> {
        let rows: Vec<usize> = {
            let mut first = 0;
            let mut spans = vec![];
            for r in &self.requests {
                spans.push((first, 2 * r.codes.len()));
                first += 2 * r.codes.len();
            }
            keep.iter()
                .flat_map(|&i| spans[i].0..spans[i].0 + spans[i].1)
                .collect()
        };
        let mut i = 0;
        self.requests.retain(|_| {
            i += 1;
            keep.contains(&(i - 1))
        });
        Ok(keep_batch_rows(&mut self.cache, &mut self.hidden, &rows)?)
    }
}
