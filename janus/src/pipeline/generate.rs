//! The text-to-image pipeline: classifier-free guidance over the LLM, one
//! VQ code per step from the image head, then the VQ decoder.

use candle_core::{DType, IndexOp, Module, Tensor};
use image::{DynamicImage, RgbImage};

use super::model::JanusPro;
use crate::error::{JanusError, Result};
use crate::models::KvCache;
use crate::progress::Progress;
use crate::sampling::{CfgSampler, SamplingParams};

/// Options of a text-to-image run.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Images generated in one batch for the prompt.
    pub parallel_size: usize,
    /// Classifier-free guidance: `uncond + w * (cond - uncond)`.
    pub cfg_weight: f64,
    /// The official code samples the full distribution at temperature 1.
    pub sampling: SamplingParams,
    /// Seed of the first image (image `i` uses [`crate::image_seed`]); random when unset.
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
    /// The decoded images, one per code row.
    pub images: Vec<RgbImage>,
}

/// One prompt of [`JanusPro::generate_tokens_for`] with its own image
/// count and seed.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptImages<'a> {
    /// The text-to-image prompt.
    pub prompt: &'a str,
    /// Images to generate for it.
    pub images: usize,
    /// Seed of its first image, as [`GenerateOptions::seed`].
    pub seed: u64,
}

/// Conditional and unconditional image-head logits of one step, and their CFG mix.
pub struct CfgLogits {
    /// Logits of the conditional rows.
    pub cond: Tensor,
    /// Logits of the unconditional rows.
    pub uncond: Tensor,
    /// `uncond + w * (cond - uncond)`.
    pub mixed: Tensor,
}

/// `image` resized to `side` x `side` pixels (Lanczos3), as `janus
/// generate --size` and the server's larger sizes do; `side` in 1..=8192.
pub fn resize_square(image: &RgbImage, side: u32) -> Result<RgbImage> {
    if !(1..=8192).contains(&side) {
        return Err(JanusError::Input(format!(
            "image size {side} is outside 1..=8192"
        )));
    }
    Ok(image::imageops::resize(
        image,
        side,
        side,
        image::imageops::FilterType::Lanczos3,
    ))
}

impl JanusPro {
    /// How many images' CFG rows fit in memory at once with `positions`
    /// cached positions each (the key/value cache dominates); at least one,
    /// or an error saying why not even one fits.
    fn images_that_fit(&self, positions: usize) -> Result<usize> {
        let Some(available) = crate::memory::available() else {
            return Ok(usize::MAX);
        };
        let l = &self.model.config.language;
        // Two rows (conditional, unconditional), keys and values, f32, per
        // layer; the step's activations and logits roughly double it.
        let per_image = 2 * 2 * 2 * 4 * l.num_hidden_layers * l.num_key_value_heads * l.head_dim();
        let per_image = (per_image as u64).saturating_mul(positions as u64);
        let fit = (available / 2) / per_image.max(1);
        if fit == 0 {
            return Err(JanusError::Input(format!(
                "one image needs about {} for its cache, more than half of the {} available",
                crate::memory::gb(per_image),
                crate::memory::gb(available)
            )));
        }
        Ok(usize::try_from(fit).unwrap_or(usize::MAX))
    }

    /// Refuses to decode `images` images that would not fit in memory
    /// together (their RGB pixels).
    fn check_decoded_size(&self, images: usize) -> Result<()> {
        let side = self.generated_image_size()? as u64;
        self.check_memory(images as u64, side * side * 3, "their pixels")
    }

    /// Refuses to generate `images` images whose codes would not fit in
    /// memory (before anything per image is allocated).
    fn check_code_memory(&self, images: u64) -> Result<()> {
        let (n_tokens, _) = self.image_grid()?;
        self.check_memory(images, n_tokens as u64 * 4, "their codes")
    }

    /// Refuses `images` items of `each` bytes (`what` they are) that would
    /// take more than half of the memory available.
    fn check_memory(&self, images: u64, each: u64, what: &str) -> Result<()> {
        let Some(available) = crate::memory::available() else {
            return Ok(());
        };
        let need = images.saturating_mul(each);
        if need > available / 2 {
            return Err(JanusError::Input(format!(
                "{images} images need {} for {what}, more than half of the {} available; \
                 generate fewer at a time",
                crate::memory::gb(need),
                crate::memory::gb(available)
            )));
        }
        Ok(())
    }
}

impl GenerateOptions {
    /// Rejects options no run can use (no image, a non-finite CFG weight,
    /// meaningless sampling): what every front end checks before a run.
    pub fn validate(&self) -> Result<()> {
        if self.parallel_size == 0 {
            return Err(JanusError::Input("parallel size must be at least 1".into()));
        }
        if !self.cfg_weight.is_finite() {
            return Err(JanusError::Input(format!(
                "cfg weight must be finite, got {}",
                self.cfg_weight
            )));
        }
        self.sampling.validate()
    }
}

impl JanusPro {
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
        self.check_decoded_size(opts.parallel_size)?;
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
        self.check_decoded_size(prompts.len().saturating_mul(opts.parallel_size))?;
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
        opts.validate()?;
        self.check_code_memory((prompts.len() as u64).saturating_mul(opts.parallel_size as u64))?;
        let seed = opts.seed.unwrap_or_else(rand::random);
        let seeds = (0..prompts.len())
            .map(|p| {
                (0..opts.parallel_size)
                    .map(|i| crate::sampling::image_seed(seed, p * opts.parallel_size + i))
                    .collect()
            })
            .collect();
        self.generate_tokens_seeded(prompts, seeds, opts, batch_size, on_step)
    }

    /// Codes for prompts that each carry their own image count and seed
    /// (dataset rows): prompt `p` gets the codes `generate_tokens(p.prompt)`
    /// gives with `parallel_size = p.images` and `seed = p.seed` (exactly
    /// in f32), however the images are batched. `opts.parallel_size` and
    /// `opts.seed` are not used.
    pub fn generate_tokens_for(
        &self,
        prompts: &[PromptImages],
        opts: &GenerateOptions,
        batch_size: usize,
        on_step: &mut dyn FnMut(Progress) -> Result<()>,
    ) -> Result<Vec<Vec<Vec<u32>>>> {
        opts.sampling.validate()?;
        GenerateOptions {
            parallel_size: 1,
            ..opts.clone()
        }
        .validate()?;
        if let Some(p) = prompts.iter().find(|p| p.images == 0) {
            return Err(JanusError::Input(format!(
                "prompt {:?} asks for no image",
                p.prompt
            )));
        }
        let images = prompts
            .iter()
            .fold(0u64, |n, p| n.saturating_add(p.images as u64));
        self.check_code_memory(images)?;
        let texts: Vec<&str> = prompts.iter().map(|p| p.prompt).collect();
        let seeds = prompts
            .iter()
            .map(|p| {
                (0..p.images)
                    .map(|i| crate::sampling::image_seed(p.seed, i))
                    .collect()
            })
            .collect();
        self.generate_tokens_seeded(&texts, seeds, opts, batch_size, on_step)
    }

    /// As [`JanusPro::generate_tokens_for`], with a result per prompt: a
    /// prompt the model refuses (empty, too long, no image) gets its error
    /// and the others run. The outer error stops the whole call (cancelled
    /// by `on_step`, options no row can use, too little memory).
    pub fn generate_tokens_each(
        &self,
        prompts: &[PromptImages],
        opts: &GenerateOptions,
        batch_size: usize,
        on_step: &mut dyn FnMut(Progress) -> Result<()>,
    ) -> Result<Vec<Result<Vec<Vec<u32>>>>> {
        let checks: Vec<Result<()>> = prompts
            .iter()
            .map(|p| {
                if p.images == 0 {
                    return Err(JanusError::Input(
                        "a prompt needs at least one image".into(),
                    ));
                }
                self.generation_ids(p.prompt).map(|_| ())
            })
            .collect();
        let runnable: Vec<PromptImages> = prompts
            .iter()
            .zip(&checks)
            .filter(|(_, c)| c.is_ok())
            .map(|(p, _)| p.clone())
            .collect();
        let mut codes = if runnable.is_empty() {
            vec![]
        } else {
            self.generate_tokens_for(&runnable, opts, batch_size, on_step)?
        }
        .into_iter();
        Ok(checks
            .into_iter()
            .map(|c| c.map(|()| codes.next().unwrap_or_default()))
            .collect())
    }

    /// Codes of `seeds[p].len()` images of each prompt `p`, each image's
    /// sampler seeded with its seed, in batches of at most `batch_size` images.
    fn generate_tokens_seeded(
        &self,
        prompts: &[&str],
        seeds: Vec<Vec<u64>>,
        opts: &GenerateOptions,
        batch_size: usize,
        on_step: &mut dyn FnMut(Progress) -> Result<()>,
    ) -> Result<Vec<Vec<Vec<u32>>>> {
        if batch_size == 0 {
            return Err(JanusError::Input("batch size must be at least 1".into()));
        }
        let ids = prompts
            .iter()
            .map(|p| self.generation_ids(p))
            .collect::<Result<Vec<_>>>()?;
        if ids.is_empty() {
            return Err(JanusError::Input("no prompt given".into()));
        }
        let (n_tokens, _) = self.image_grid()?;
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
        let batch_size = batch_size.min(self.images_that_fit(longest + n_tokens)?);
        // Batches of at most `batch_size` images in call order, each a list
        // of (prompt, first image, images) groups. On the CPU a batch also
        // spans prompts: each prompt's rows are prefilled on their own, then
        // all are decoded together (see `KvCache::stack`); elsewhere batches
        // end with their prompt.
        let span_prompts = self.device.is_cpu();
        let mut batches: Vec<Vec<(usize, usize, usize)>> = vec![];
        let (mut current, mut filled) = (vec![], 0);
        for (p, prompt_seeds) in seeds.iter().enumerate() {
            let mut first = 0;
            while first < prompt_seeds.len() {
                let n = (prompt_seeds.len() - first).min(batch_size - filled);
                current.push((p, first, n));
                (filled, first) = (filled + n, first + n);
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
        for (b, groups) in batches.iter().enumerate() {
            let batch_seeds = groups
                .iter()
                .flat_map(|&(p, first, n)| seeds[p][first..first + n].iter().copied());
            let mut sampler = CfgSampler::from_seeds(&opts.sampling, batch_seeds);
            let done = b * n_tokens;
            let prompts: Vec<(&[u32], usize)> = groups
                .iter()
                .map(|&(p, _, n)| (ids[p].as_slice(), n))
                .collect();
            let mut rows = self
                .generate_rows(&prompts, opts.cfg_weight, &mut sampler, &mut |pr| {
                    on_step(Progress {
                        step: done + pr.step,
                        total,
                    })
                })?
                .into_iter();
            for &(p, _, n) in groups {
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
            KvCache::stack(&caches.iter().collect::<Vec<_>>(), longest + n_tokens)?
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

    /// Previews of images still being generated: each row of `codes` (the
    /// first codes of a grid, in raster order) is completed by repeating,
    /// for every position not drawn yet, the code above it (or the last
    /// code, on the first grid row), then decoded.
    pub fn preview_images(&self, codes: &[Vec<u32>]) -> Result<Vec<RgbImage>> {
        let (n_tokens, side) = self.image_grid()?;
        let full = codes
            .iter()
            .map(|row| {
                let Some(&last) = row.last() else {
                    return Err(JanusError::Input("no code to preview".into()));
                };
                if row.len() > n_tokens {
                    return Err(JanusError::Input(format!(
                        "{} codes for a grid of {n_tokens}",
                        row.len()
                    )));
                }
                let mut full = row.clone();
                for i in row.len()..n_tokens {
                    full.push(if i >= side { full[i - side] } else { last });
                }
                Ok(full)
            })
            .collect::<Result<Vec<_>>>()?;
        self.decode_images(&full)
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
