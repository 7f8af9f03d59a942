//! `JanusPro`: a loaded model with its processor, and the two pipelines
//! (understanding, text-to-image) on top of the modules.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use image::{DynamicImage, RgbImage};

use crate::config::{JanusConfig, ProcessorConfig};
use crate::error::{JanusError, Result};
use crate::image_processor::{ImageProcessor, ImageProcessorConfig};
use crate::models::{JanusModel, KvCache};
use crate::processor::{JanusProcessor, Message};
use crate::sampling::{CfgSampler, Sampler, SamplingParams};
use crate::weights::Checkpoint;

/// Options of an understanding (text answer) run.
#[derive(Debug, Clone, PartialEq)]
pub struct UnderstandOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
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
    pub text: String,
    /// Generated ids in order, including EOS if it was produced.
    pub token_ids: Vec<u32>,
}

/// Options of a text-to-image run.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Images generated in one batch for the prompt.
    pub parallel_size: usize,
    /// Classifier-free guidance: `uncond + w * (cond - uncond)`.
    pub cfg_weight: f64,
    /// The official code samples the full distribution at temperature 1.
    pub sampling: SamplingParams,
    pub seed: Option<u64>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            parallel_size: 1,
            cfg_weight: 5.0,
            sampling: SamplingParams::default(),
            seed: None,
        }
    }
}

/// Generated images and the VQ codes they were decoded from.
#[derive(Debug, Clone)]
pub struct GeneratedImages {
    /// One row of `image_token_count()` codes per image.
    pub tokens: Vec<Vec<u32>>,
    pub images: Vec<RgbImage>,
}

/// Where a run is; handed to progress callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub step: usize,
    pub total: usize,
}

/// Conditional and unconditional image-head logits of one step, and their CFG mix.
pub struct CfgLogits {
    pub cond: Tensor,
    pub uncond: Tensor,
    pub mixed: Tensor,
}

/// A loaded Janus-Pro model.
pub struct JanusPro {
    pub model: JanusModel,
    pub processor: JanusProcessor,
    pub image_processor: ImageProcessor,
    device: Device,
    dtype: DType,
    quant: crate::quant::Quant,
}

fn weights_err(e: candle_core::Error) -> JanusError {
    JanusError::Weights(crate::error::without_backtrace(e).to_string())
}

impl JanusPro {
    /// Loads a model from a local folder or a hub id (e.g. [`crate::DEFAULT_MODEL`]).
    pub fn from_pretrained(model: &str, opts: &crate::LoadOptions) -> Result<Self> {
        let dir = crate::source::resolve_model(model, opts)?;
        Self::load_quantized(&dir, &opts.device, opts.dtype, opts.quant)
    }

    /// Loads a model folder in the released layout (`config.json`,
    /// `tokenizer.json`, processor configs and weights) computing in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_quantized(dir, device, dtype, crate::quant::Quant::None)
    }

    /// As [`JanusPro::load`], quantising the language model's and image
    /// head's linear weights and the token embeddings to `quant` (and the
    /// vision tower's to q8_0) while reading them (see [`crate::quant`]).
    /// A quantised folder (see [`crate::gguf`]) loads in the quantisation it
    /// was saved with: `quant` must be that one or `Quant::None`.
    pub fn load_quantized(
        dir: &Path,
        device: &Device,
        dtype: DType,
        quant: crate::quant::Quant,
    ) -> Result<Self> {
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
        let processor = JanusProcessor::from_files(&dir.join("tokenizer.json"), proc_cfg)?;
        let checkpoint = Checkpoint::open(dir)?;
        // A quantised folder (`model.gguf`) loads in its own quantisation.
        let quant = match (checkpoint.stored_quant(), quant) {
            (None, q) => q,
            (Some(stored), crate::quant::Quant::None) => stored,
            (Some(stored), q) if q == stored => q,
            (Some(stored), q) => {
                return Err(JanusError::Input(format!(
                    "{} holds {stored} weights; load it with quant {stored} (or none), not {q}",
                    checkpoint.files()[0].display()
                )))
            }
        };
        let vb = checkpoint.into_var_builder(config.layout, dtype, device);
        let model = JanusModel::load_quantized(vb, &config, quant).map_err(weights_err)?;
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

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The quantisation chosen at load ([`crate::quant::Quant::None`] for none).
    pub fn quant(&self) -> crate::quant::Quant {
        self.quant
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn config(&self) -> &JanusConfig {
        &self.model.config
    }

    // ---------------------------------------------------------------- understanding

    /// Prompt ids and input embeddings [1, T, hidden] of a conversation,
    /// image embeddings spliced in at the placeholder positions in order.
    pub fn understanding_inputs(
        &self,
        conversation: &[Message],
        images: &[DynamicImage],
    ) -> Result<(Vec<u32>, Tensor)> {
        let ids = self
            .processor
            .understanding_ids(conversation, images.len())?;
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
        opts.sampling.validate()?;
        let (_, embeds) = self.understanding_inputs(conversation, images)?;
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
    /// place: see [`crate::chat`] for how a chat turn keeps them.
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

    // ---------------------------------------------------------------- generation

    /// Codes per generated image and the side of their square grid.
    pub fn image_grid(&self) -> Result<(usize, usize)> {
        let n = self.processor.config.num_image_tokens;
        let side = (n as f64).sqrt().round() as usize;
        if side * side != n || n == 0 {
            return Err(JanusError::Config(format!(
                "processor_config num_image_tokens {n} is not a square grid"
            )));
        }
        Ok((n, side))
    }

    /// Prompt ids of a text-to-image prompt.
    pub fn generation_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        if prompt.trim().is_empty() {
            return Err(JanusError::Input("the prompt is empty".into()));
        }
        let ids = self
            .processor
            .encode(&self.processor.generation_prompt(prompt))?;
        let (tokens, _) = self.image_grid()?;
        let max_pos = self.model.config.language.max_position_embeddings;
        if ids.len() + tokens > max_pos {
            return Err(JanusError::Input(format!(
                "the prompt has {} tokens; with {tokens} image tokens that exceeds the model's context of {max_pos}",
                ids.len()
            )));
        }
        Ok(ids)
    }

    /// Input embeddings [2 * parallel, T, hidden] of the CFG batch: even rows
    /// conditional, odd rows unconditional (first and last prompt token kept,
    /// the rest padded), as `generation_inference.py`.
    pub fn cfg_prompt_embeds(&self, ids: &[u32], parallel_size: usize) -> Result<Tensor> {
        let mut uncond = ids.to_vec();
        let len = uncond.len();
        if len > 2 {
            uncond[1..len - 1].fill(self.processor.special.pad);
        }
        let rows: Vec<u32> = (0..parallel_size)
            .flat_map(|_| ids.iter().copied().chain(uncond.iter().copied()))
            .collect();
        let tokens = Tensor::from_vec(rows, (2 * parallel_size, len), &self.device)?;
        Ok(self.model.language.embed(&tokens)?)
    }

    /// Image-head logits of the last position of `hidden` [2p, t, hidden], split and mixed.
    pub fn cfg_logits(&self, hidden: &Tensor, cfg_weight: f64) -> Result<CfgLogits> {
        let last = hidden.i((.., hidden.dim(1)? - 1, ..))?.contiguous()?;
        let logits = self.model.gen_head.forward(&last)?.to_dtype(DType::F32)?;
        let (rows, vocab) = logits.dims2()?;
        let pairs = logits.reshape((rows / 2, 2, vocab))?;
        let cond = pairs.i((.., 0, ..))?;
        let uncond = pairs.i((.., 1, ..))?;
        let mixed = (&uncond + ((&cond - &uncond)? * cfg_weight)?)?;
        Ok(CfgLogits {
            cond,
            uncond,
            mixed,
        })
    }

    /// Text-to-image: `parallel_size` images for one prompt.
    pub fn generate(&self, prompt: &str, opts: &GenerateOptions) -> Result<GeneratedImages> {
        self.generate_with(prompt, opts, &mut |_| Ok(()))
    }

    /// As `generate`, calling `on_step` after every image-token step; an
    /// error returned by the callback (e.g. `Cancelled`) stops the run.
    pub fn generate_with(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        on_step: &mut dyn FnMut(Progress) -> Result<()>,
    ) -> Result<GeneratedImages> {
        let tokens = self.generate_tokens(prompt, opts, on_step)?;
        let images = self.decode_images(&tokens)?;
        Ok(GeneratedImages { tokens, images })
    }

    /// The CFG sampling loop alone: VQ codes of `parallel_size` images.
    pub fn generate_tokens(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        on_step: &mut dyn FnMut(Progress) -> Result<()>,
    ) -> Result<Vec<Vec<u32>>> {
        let mut per_prompt = self.generate_tokens_many(&[prompt], opts, usize::MAX, on_step)?;
        Ok(per_prompt.remove(0))
    }

    /// Several prompts, `parallel_size` images each, run in batches of at
    /// most `batch_size` images; on the CPU a batch may hold images of
    /// several prompts (prefilled one by one, decoded together). Image k of
    /// the whole call is seeded `image_seed(seed, k)`, so in f32 results do
    /// not depend on the batching (with bf16 or quantised weights, several
    /// rows round activations unlike one). Progress counts steps over all
    /// batches.
    pub fn generate_many(
        &self,
        prompts: &[&str],
        opts: &GenerateOptions,
        batch_size: usize,
        on_step: &mut dyn FnMut(Progress) -> Result<()>,
    ) -> Result<Vec<GeneratedImages>> {
        let tokens = self.generate_tokens_many(prompts, opts, batch_size, on_step)?;
        tokens
            .into_iter()
            .map(|t| {
                Ok(GeneratedImages {
                    images: self.decode_images(&t)?,
                    tokens: t,
                })
            })
            .collect()
    }

    /// The codes of [`JanusPro::generate_many`], one list of rows per prompt.
    pub fn generate_tokens_many(
        &self,
        prompts: &[&str],
        opts: &GenerateOptions,
        batch_size: usize,
        on_step: &mut dyn FnMut(Progress) -> Result<()>,
    ) -> Result<Vec<Vec<Vec<u32>>>> {
        if opts.parallel_size == 0 {
            return Err(JanusError::Input("parallel size must be at least 1".into()));
        }
        if batch_size == 0 {
            return Err(JanusError::Input("batch size must be at least 1".into()));
        }
        if !opts.cfg_weight.is_finite() {
            return Err(JanusError::Input(format!(
                "cfg weight must be finite, got {}",
                opts.cfg_weight
            )));
        }
        opts.sampling.validate()?;
        let ids = prompts
            .iter()
            .map(|p| self.generation_ids(p))
            .collect::<Result<Vec<_>>>()?;
        if ids.is_empty() {
            return Err(JanusError::Input("no prompt given".into()));
        }
        let seed = opts.seed.unwrap_or_else(rand::random);
        let (n_tokens, _) = self.image_grid()?;
        // Batches of at most `batch_size` images in call order, each a list
        // of (prompt, images) groups. On the CPU a batch also spans prompts:
        // each prompt's rows are prefilled on their own, then all are decoded
        // together (see `KvCache::stack`); elsewhere batches end with their prompt.
        let span_prompts = self.device.is_cpu();
        let mut batches: Vec<Vec<(usize, usize)>> = vec![];
        let (mut current, mut filled) = (vec![], 0);
        for p in 0..ids.len() {
            let mut left = opts.parallel_size;
            while left > 0 {
                let n = left.min(batch_size - filled);
                current.push((p, n));
                (filled, left) = (filled + n, left - n);
                if filled == batch_size {
                    batches.push(std::mem::take(&mut current));
                    filled = 0;
                }
            }
            if !span_prompts && filled > 0 {
                batches.push(std::mem::take(&mut current));
                filled = 0;
            }
        }
        if filled > 0 {
            batches.push(current);
        }
        let total = batches.len() * n_tokens;
        let mut out: Vec<Vec<Vec<u32>>> = vec![vec![]; ids.len()];
        let mut first_index = 0;
        for (b, groups) in batches.iter().enumerate() {
            let images = groups.iter().map(|g| g.1).sum();
            let mut sampler = CfgSampler::new(&opts.sampling, seed, first_index, images);
            first_index += images;
            let done = b * n_tokens;
            let prompts: Vec<(&[u32], usize)> = groups
                .iter()
                .map(|&(p, n)| (ids[p].as_slice(), n))
                .collect();
            let mut rows = self
                .generate_rows(&prompts, opts.cfg_weight, &mut sampler, &mut |pr| {
                    on_step(Progress {
                        step: done + pr.step,
                        total,
                    })
                })?
                .into_iter();
            for &(p, n) in groups {
                out[p].extend(rows.by_ref().take(n));
            }
        }
        Ok(out)
    }

    /// The CFG loop for `images` rows of each of `prompts` (prompt ids,
    /// images), decoded as one batch; the rows come back in that order.
    fn generate_rows(
        &self,
        prompts: &[(&[u32], usize)],
        cfg_weight: f64,
        sampler: &mut CfgSampler,
        on_step: &mut dyn FnMut(Progress) -> Result<()>,
    ) -> Result<Vec<Vec<u32>>> {
        let (n_tokens, _) = self.image_grid()?;
        let lm = &self.model.language;
        let images: usize = prompts.iter().map(|p| p.1).sum();
        let longest = prompts.iter().map(|p| p.0.len()).max().unwrap_or(0);
        // Each prompt's rows are prefilled on their own; the caches then
        // become one, sized once for the prompt and every image token, so
        // decoding never reallocates.
        let mut caches = Vec::with_capacity(prompts.len());
        let mut last = Vec::with_capacity(prompts.len());
        for &(ids, n) in prompts {
            let reserve = if prompts.len() == 1 {
                ids.len() + n_tokens
            } else {
                ids.len()
            };
            let mut cache: KvCache = lm.new_cache_with_capacity(reserve);
            let hidden = lm.forward_embeds(&self.cfg_prompt_embeds(ids, n)?, &mut cache)?;
            last.push(hidden.i((.., hidden.dim(1)? - 1.., ..))?);
            caches.push(cache);
        }
        let mut cache = if caches.len() == 1 {
            caches.pop().expect("one cache")
        } else {
            KvCache::stack(&caches, longest + n_tokens)?
        };
        drop(caches);
        let mut hidden = Tensor::cat(&last, 0)?;
        let mut out = vec![Vec::with_capacity(n_tokens); images];
        for step in 0..n_tokens {
            let logits = self.cfg_logits(&hidden, cfg_weight)?;
            let next = sampler.sample(&logits.mixed)?;
            for (row, &code) in out.iter_mut().zip(&next) {
                row.push(code);
            }
            on_step(Progress {
                step: step + 1,
                total: n_tokens,
            })?;
            if step + 1 < n_tokens {
                // Both CFG rows of an image continue with the same code.
                let pairs: Vec<u32> = next.iter().flat_map(|&c| [c, c]).collect();
                let codes = Tensor::from_vec(pairs, (2 * images, 1), &self.device)?;
                let embeds = self.model.gen_image_embeds(&codes)?;
                hidden = lm.forward_embeds(&embeds, &mut cache)?;
            }
        }
        Ok(out)
    }

    /// Side in pixels of generated images: the code grid times the VQ downsampling.
    pub fn generated_image_size(&self) -> Result<usize> {
        Ok(self.image_grid()?.1 * self.model.config.gen_vision.downsample_factor())
    }

    /// VQ-encodes an image into `image_token_count` codes: the centred
    /// square crop, resized (Catmull-Rom) to the generation size, scaled to [-1, 1].
    pub fn vq_encode_image(&self, image: &DynamicImage) -> Result<Vec<u32>> {
        let size = self.generated_image_size()? as u32;
        let rgb = image.to_rgb8();
        let (w, h) = rgb.dimensions();
        if w == 0 || h == 0 {
            return Err(JanusError::Input("the image is empty".into()));
        }
        let side = w.min(h);
        let square =
            image::imageops::crop_imm(&rgb, (w - side) / 2, (h - side) / 2, side, side).to_image();
        let resized =
            image::imageops::resize(&square, size, size, image::imageops::FilterType::CatmullRom);
        let pixels = Tensor::from_vec(
            resized.into_raw(),
            (1, size as usize, size as usize, 3),
            &self.device,
        )?
        .permute((0, 3, 1, 2))?
        .to_dtype(DType::F32)?;
        let pixels = ((pixels / 127.5)? - 1.0)?;
        let encoded = self.model.gen_vision.encode(&pixels)?;
        Ok(encoded.indices.flatten_all()?.to_vec1::<u32>()?)
    }

    /// VQ-decodes code rows into RGB images (`floor(clip((x+1)/2*255))`).
    pub fn decode_images(&self, tokens: &[Vec<u32>]) -> Result<Vec<RgbImage>> {
        let (n_tokens, side) = self.image_grid()?;
        if tokens.is_empty() {
            return Ok(vec![]);
        }
        if let Some(bad) = tokens.iter().find(|r| r.len() != n_tokens) {
            return Err(JanusError::Input(format!(
                "expected {n_tokens} codes per image, got {}",
                bad.len()
            )));
        }
        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        let codes = Tensor::from_vec(flat, (tokens.len(), n_tokens), &self.device)?;
        let decoded = self.model.gen_vision.decode_code(&codes, (side, side))?;
        let pixels = janus_vq::to_u8_pixels(&decoded)?;
        let (b, h, w, _) = pixels.dims4()?;
        let data = pixels.flatten_all()?.to_vec1::<u8>()?;
        let per = h * w * 3;
        (0..b)
            .map(|i| {
                RgbImage::from_raw(w as u32, h as u32, data[i * per..(i + 1) * per].to_vec())
                    .ok_or_else(|| JanusError::Input("decoded image has an unexpected size".into()))
            })
            .collect()
    }
}
