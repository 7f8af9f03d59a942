//! `janus bench`: times every stage of both pipelines on a real-size model
//! with random weights, so no download is needed.
//!
//! The weights are written once (bf16, as released) to a safetensors file in
//! a cache folder next to a copy of the config, and loaded from there through
//! the same code path as a released checkpoint, so load time and peak memory
//! are those of a real load. One call measures one dtype/quantisation; the
//! `janus bench` command runs each in its own process (peak RSS is per process).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Module, Tensor};

use crate::checkpoint::files::GGUF_FILE;
use crate::checkpoint::Checkpoint;
use crate::config::{CheckpointLayout, JanusConfig};
use crate::error::{JanusError, Result};
use crate::models::{JanusModel, KvCache};
use crate::quantize::{plan, write_gguf};
use crate::sampling::{argmax, Sampler, SamplingParams};
use janus_kernels::random::SplitMix;

pub mod layer_errors;
use janus_nn::Quant;

/// What one benchmark run measures: a config, a dtype/quantisation and
/// how long to time each workload.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// A Janus-Pro `config.json`; its random weights are cached by content.
    pub config: PathBuf,
    /// Weight dtype: f32 or bf16.
    pub dtype: DType,
    /// Quantisation of the language model and image head.
    pub quant: Quant,
    /// Decoding / image-token steps timed per workload.
    pub steps: usize,
    /// Repetitions of the heavy stages (ViT, prefill, VQ); the best is kept.
    pub reps: usize,
    /// Where the random weights are cached (default: the system temp folder).
    pub weights_dir: Option<PathBuf>,
    /// Quantised configurations load a saved `model.gguf` (written once
    /// beside the random weights, as `janus quantize` does).
    pub from_gguf: bool,
}

/// Timings of one configuration, seconds unless named otherwise.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BenchResult {
    /// Weight dtype (`f32`, `bf16`).
    pub dtype: String,
    /// Quantisation (`none`, `q8_0`, `q4k`).
    pub quant: String,
    /// Threads of the run.
    pub threads: usize,
    /// The CPU kernels this run could use: `avx512`, `avx2` or `baseline`
    /// (see `JANUS_CPU`), `+bf16` with the bf16 GEMM, `+vnni` with the
    /// VNNI q4_K kernel.
    #[serde(default)]
    pub cpu: String,
    /// SigLIP encoding of one image.
    pub vit_encode_s: f64,
    /// Prefill of an understanding prompt (one image and a question).
    pub und_prefill_s: f64,
    /// Tokens of that prompt.
    pub und_prefill_tokens: usize,
    /// One answer token.
    pub und_decode_token_s: f64,
    /// Prefill of a text-to-image prompt (CFG pair).
    pub t2i_prefill_s: f64,
    /// One image-token step for one image (CFG pair).
    pub t2i_step_s: f64,
    /// One image-token step for four images at once.
    pub t2i_step_p4_s: f64,
    /// One image-token step for sixteen images at once (the official
    /// script's `parallel_size`).
    #[serde(default)]
    pub t2i_step_p16_s: f64,
    /// VQ decoding of one image.
    pub vq_decode_s: f64,
    /// Prompt prefill + 576 steps + VQ decode, for one image.
    pub full_image_s: f64,
    /// Loading the model (quantising where asked).
    pub load_s: f64,
    /// Peak resident memory of the process.
    pub peak_rss_bytes: u64,
    /// Resident memory right after loading (weights in their final form).
    #[serde(default)]
    pub load_rss_bytes: u64,
    /// Bytes of the language model's linear weights (shows the quantisation).
    pub llm_linear_bytes: u64,
    /// Steps timed per workload.
    pub steps: usize,
    /// Relative L2 error against the f32 run of the same weights and inputs
    /// (absent for f32 itself, or when no f32 run left its reference).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub und_logits_rel_l2: Option<f64>,
    /// The first image step's mixed logits, likewise.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub t2i_logits_rel_l2: Option<f64>,
    /// The decoded image's, likewise (bf16 compute in the VQ decoder).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vq_image_rel_l2: Option<f64>,
}

fn input_err(msg: impl Into<String>) -> JanusError {
    JanusError::Input(msg.into())
}

/// What [`BenchResult::cpu`] says.
fn cpu_kernels() -> String {
    let mut s = format!("{:?}", janus_kernels::cpu::level()).to_lowercase();
    if janus_kernels::bf16_gemm::available() {
        s += "+bf16";
    }
    if janus_kernels::cpu::dispatch().vnni {
        s += "+vnni";
    }
    s
}

// ---------------------------------------------------------------- random weights

fn name_seed(name: &str) -> u64 {
    // FNV-1a, so each tensor's values depend only on its name.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Initial values by parameter role: norms' scales 1, biases 0, the rest
/// N(0, 0.02) as transformers initialises these models.
fn fill_param(name: &str, out: &mut [half::bf16]) {
    let is_norm_scale = name.ends_with(".weight")
        && (name.contains("norm") || name.contains("layernorm"))
        && !name.contains("proj");
    if name.ends_with(".bias") {
        out.fill(half::bf16::ZERO);
        return;
    }
    if is_norm_scale {
        out.fill(half::bf16::ONE);
        return;
    }
    use rayon::prelude::*;
    let seed = name_seed(name);
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
        let mut rng = SplitMix(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for v in c.iter_mut() {
            *v = half::bf16::from_f32(0.02 * rng.normal());
        }
    });
}

/// Every parameter the model loads, in load order.
fn parameter_list(cfg: &JanusConfig) -> Result<Vec<(String, Vec<usize>)>> {
    Ok(plan(cfg, Quant::None)?.0)
}

/// Writes a bf16 safetensors file of random weights, streaming tensor by tensor.
fn write_random_safetensors(path: &Path, params: &[(String, Vec<usize>)]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in params {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&serde_json::Value::Object(header))
        .map_err(|e| input_err(e.to_string()))?
        .into_bytes();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let tmp = path.with_extension("partial");
    let file = std::fs::File::create(&tmp)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 22, file);
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(&text)?;
    for (name, shape) in params {
        let n: usize = shape.iter().product();
        let mut data = vec![half::bf16::ZERO; n];
        fill_param(name, &mut data);
        // SAFETY: bf16 is a plain 2-byte value; the slice covers exactly `data`.
        let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, n * 2) };
        w.write_all(bytes)?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The cache folder of random weights for `cfg`, created on first use.
fn random_model_dir(args: &BenchSettings, config_text: &str, cfg: &JanusConfig) -> Result<PathBuf> {
    let base = args
        .weights_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("janus-bench"));
    // Version the generator so a change of initialisation rewrites the file.
    let key = name_seed(&format!("v1:{config_text}"));
    let dir = base.join(format!("{key:016x}"));
    let st = dir.join("model.safetensors");
    if !st.exists() {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.json"), config_text)?;
        let params = parameter_list(cfg)?;
        let total: usize = params
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        eprintln!(
            "bench: writing {:.2}B random parameters (bf16) to {} (once)",
            total as f64 / 1e9,
            st.display()
        );
        let t = Instant::now();
        write_random_safetensors(&st, &params)?;
        eprintln!("bench: written in {:.1} s", t.elapsed().as_secs_f64());
    }
    Ok(dir)
}

// ---------------------------------------------------------------- workloads

fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM:")
}

/// A `kB` field of /proc/self/status, in bytes (0 where there is none).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

/// Best time of `reps` runs of `f`.
fn best_of(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let ((), s) = time(&mut f)?;
        best = best.min(s);
    }
    Ok(best)
}

/// Deterministic ids in the ordinary vocabulary range.
fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix(seed);
    let hi = vocab.saturating_sub(1000).max(2) as u64;
    (0..n).map(|_| (100 + rng.next_u64() % hi) as u32).collect()
}

/// One t2i run of `parallel` images: prompt prefill, then `steps` timed steps
/// (after one untimed warm-up step). Returns (prefill s, s per step, first mixed logits).
fn t2i(
    model: &JanusModel,
    prompt: &[u32],
    parallel: usize,
    steps: usize,
    total_tokens: usize,
) -> Result<(f64, f64, Tensor)> {
    let dev = Device::Cpu;
    let lm = &model.language;
    let pad = 100_002u32.min(model.config.language.vocab_size as u32 - 1);
    let mut uncond = prompt.to_vec();
    let len = uncond.len();
    uncond[1..len - 1].fill(pad);
    let rows: Vec<u32> = (0..parallel)
        .flat_map(|_| prompt.iter().copied().chain(uncond.iter().copied()))
        .collect();
    let tokens = Tensor::from_vec(rows, (2 * parallel, len), &dev)?;
    let mut sampler = Sampler::new(
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            repetition_penalty: 1.0,
        },
        Some(7),
    );
    let cfg_weight = 5.0;
    let mut cache = lm.new_cache_with_capacity(len + total_tokens);
    let step = |hidden: &Tensor, sampler: &mut Sampler| -> Result<(Tensor, Tensor)> {
        let last = hidden.i((.., hidden.dim(1)? - 1, ..))?.contiguous()?;
        let logits = model.gen_head.forward(&last)?.to_dtype(DType::F32)?;
        let (r, vocab) = logits.dims2()?;
        let pairs = logits.reshape((r / 2, 2, vocab))?;
        let cond = pairs.i((.., 0, ..))?;
        let uncond = pairs.i((.., 1, ..))?;
        let mixed = (&uncond + ((&cond - &uncond)? * cfg_weight)?)?;
        let next = sampler.sample_rows(&mixed)?;
        let pairs: Vec<u32> = next.iter().flat_map(|&c| [c, c]).collect();
        let codes = Tensor::from_vec(pairs, (2 * parallel, 1), &Device::Cpu)?;
        Ok((model.gen_image_embeds(&codes)?, mixed))
    };
    let ((mut embeds, first), prefill_s) = time(|| {
        let embeds = lm.embed(&tokens)?;
        let hidden = lm.forward_embeds(&embeds, &mut cache)?;
        step(&hidden, &mut sampler)
    })?;
    // Warm-up step, then the timed ones.
    let hidden = lm.forward_embeds(&embeds, &mut cache)?;
    embeds = step(&hidden, &mut sampler)?.0;
    let t = Instant::now();
    for _ in 0..steps {
        let hidden = lm.forward_embeds(&embeds, &mut cache)?;
        embeds = step(&hidden, &mut sampler)?.0;
    }
    let per_step = t.elapsed().as_secs_f64() / steps.max(1) as f64;
    Ok((prefill_s, per_step, first))
}

/// Loads `settings.config` with random weights (written once) and times
/// every workload of both pipelines in this process.
pub fn run_configuration(settings: &BenchSettings) -> Result<BenchResult> {
    let args = settings;
    let (dtype, quant) = (args.dtype, args.quant);
    let config_text = std::fs::read_to_string(&args.config).map_err(|e| JanusError::BadFile {
        path: args.config.clone(),
        reason: e.to_string(),
    })?;
    let cfg = JanusConfig::from_json_str(&config_text)?;
    let dir = random_model_dir(args, &config_text, &cfg)?;
    let steps = args.steps.max(1);
    let reps = args.reps.max(1);
    let dev = Device::Cpu;
    let threads = rayon::current_num_threads();
    let label = format!("{}/{}", dtype.as_str(), quant);
    let stage = |what: &str| {
        eprintln!(
            "bench {label}: {what} (peak RSS so far {:.2} GB)",
            status_bytes("VmHWM:") as f64 / 1e9
        )
    };
    let weights_dir = if args.from_gguf && quant != Quant::None {
        let gguf_dir = dir.join(quant.name());
        if !gguf_dir.join(GGUF_FILE).exists() {
            stage("writing model.gguf (once)");
            std::fs::create_dir_all(&gguf_dir)?;
            let tmp = gguf_dir.join("model.gguf.partial");
            write_gguf(
                &cfg,
                Checkpoint::open(&dir)?,
                quant,
                "bench",
                &tmp,
                &mut |_| Ok(()),
            )?;
            std::fs::rename(&tmp, gguf_dir.join(GGUF_FILE))?;
            // Only what follows counts towards the peak.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
        gguf_dir
    } else {
        dir.clone()
    };
    stage("loading");

    let (model, load_s) = time(|| {
        let vb = Checkpoint::open(&weights_dir)?.into_var_builder(
            CheckpointLayout::Released,
            dtype,
            &dev,
        );
        Ok(JanusModel::load_quantized(vb, &cfg, quant)?)
    })?;
    let load_rss_bytes = status_bytes("VmRSS:");
    let lm = &model.language;
    let vocab = cfg.language.vocab_size;
    let img = cfg.vision.image_size;

    // ViT: one image, one warm-up.
    stage("ViT");
    let pixels = {
        let mut rng = SplitMix(11);
        let v: Vec<f32> = (0..3 * img * img)
            .map(|_| (rng.next_u64() % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        Tensor::from_vec(v, (1, 3, img, img), &dev)?
    };
    let image_embeds = model.encode_images(&pixels)?;
    let vit_encode_s = best_of(reps, || {
        model.encode_images(&pixels)?;
        Ok(())
    })?;

    // Understanding: system prompt + <image> x 576 + a short question, as the official template.
    stage("understanding prefill");
    let n_img = image_embeds.dim(1)?;
    let (before, after) = (14usize, 30usize);
    let text = Tensor::new(random_ids(before + after, vocab, 3), &dev)?;
    let text_e = lm.embed(&text)?;
    let embeds = Tensor::cat(
        &[
            &text_e.narrow(0, 0, before)?,
            &image_embeds.squeeze(0)?,
            &text_e.narrow(0, before, after)?,
        ],
        0,
    )?
    .unsqueeze(0)?;
    let prompt_len = before + n_img + after;
    let max_new = steps + 2;
    // Warm-up on a short prefix (first-call costs: page faults, kernel packing).
    {
        let mut c = lm.new_cache();
        lm.forward_embeds(&embeds.narrow(1, 0, 64.min(prompt_len))?, &mut c)?;
    }
    let mut und_logits = None;
    let mut cache = lm.new_cache_with_capacity(prompt_len + max_new);
    let und_prefill_s = best_of(reps, || {
        cache = lm.new_cache_with_capacity(prompt_len + max_new);
        let h = lm.forward_embeds(&embeds, &mut cache)?;
        let last = h.i((.., prompt_len - 1, ..))?;
        und_logits = Some(lm.lm_logits(&last)?.squeeze(0)?.to_dtype(DType::F32)?);
        Ok(())
    })?;
    let und_logits = und_logits.expect("prefill ran");

    stage("understanding decode");
    let mut next = argmax(&und_logits.to_vec1::<f32>()?);
    let mut decode = |cache: &mut KvCache| -> Result<()> {
        let e = lm.embed(&Tensor::new(&[[next]], &dev)?)?;
        let h = lm.forward_embeds(&e, cache)?;
        let logits = lm
            .lm_logits(&h.i((.., 0, ..))?)?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        next = argmax(&logits.to_vec1::<f32>()?);
        Ok(())
    };
    decode(&mut cache)?;
    let t = Instant::now();
    for _ in 0..steps {
        decode(&mut cache)?;
    }
    let und_decode_token_s = t.elapsed().as_secs_f64() / steps as f64;
    drop(cache);

    // Text to image, CFG, parallel 1, 4 and 16.
    let grid = img / cfg.gen_vision.downsample_factor();
    let n_tokens = grid * grid;
    let prompt = random_ids(24, vocab, 5);
    stage("text-to-image steps (parallel 1)");
    let (t2i_prefill_s, t2i_step_s, t2i_logits) = t2i(&model, &prompt, 1, steps, n_tokens)?;
    stage("text-to-image steps (parallel 4)");
    let (_, t2i_step_p4_s, _) = t2i(&model, &prompt, 4, steps, n_tokens)?;
    stage("text-to-image steps (parallel 16)");
    let (_, t2i_step_p16_s, _) = t2i(&model, &prompt, 16, steps, n_tokens)?;

    // VQ decode of one image.
    stage("VQ decode");
    let codes = {
        let mut rng = SplitMix(13);
        let v: Vec<u32> = (0..n_tokens)
            .map(|_| (rng.next_u64() % cfg.gen_vision.codebook_size as u64) as u32)
            .collect();
        Tensor::from_vec(v, (1, n_tokens), &dev)?
    };
    let image = model.gen_vision.decode_code(&codes, (grid, grid))?;
    let vq_decode_s = best_of(reps, || {
        model.gen_vision.decode_code(&codes, (grid, grid))?;
        Ok(())
    })?;

    stage("done");
    // Quality against the f32 run of the same weights and inputs.
    let ref_path = dir.join("reference-logits.safetensors");
    let (mut und_err, mut t2i_err, mut vq_err) = (None, None, None);
    if dtype == DType::F32 && quant == Quant::None {
        let map = std::collections::HashMap::from([
            ("und".to_string(), und_logits.clone()),
            ("t2i".to_string(), t2i_logits.clone()),
            ("vq".to_string(), image.clone()),
        ]);
        candle_core::safetensors::save(&map, &ref_path)?;
    } else if ref_path.exists() {
        let map = candle_core::safetensors::load(&ref_path, &dev)?;
        let err = |got: &Tensor, key: &str| {
            map.get(key)
                .map(|want| janus_kernels::tensor::rel_l2(got, want))
                .transpose()
        };
        und_err = err(&und_logits, "und")?;
        t2i_err = err(&t2i_logits, "t2i")?;
        vq_err = err(&image, "vq")?;
    }

    Ok(BenchResult {
        dtype: dtype.as_str().into(),
        quant: quant.name().into(),
        threads,
        cpu: cpu_kernels(),
        vit_encode_s,
        und_prefill_s,
        und_prefill_tokens: prompt_len,
        und_decode_token_s,
        t2i_prefill_s,
        t2i_step_s,
        t2i_step_p4_s,
        t2i_step_p16_s,
        vq_decode_s,
        full_image_s: t2i_prefill_s + n_tokens as f64 * t2i_step_s + vq_decode_s,
        load_s,
        peak_rss_bytes: peak_rss_bytes(),
        load_rss_bytes,
        llm_linear_bytes: lm.linear_weight_bytes() as u64,
        steps,
        und_logits_rel_l2: und_err,
        t2i_logits_rel_l2: t2i_err,
        vq_image_rel_l2: vq_err,
    })
}
