//! `janus bench`: times every stage of both pipelines on a real-size model
//! with random weights, so no download is needed.
//!
//! The weights are written once (bf16, as released) to a safetensors file in
//! a cache folder next to a copy of the config, and loaded from there through
//! the same code path as a released checkpoint, so load time and peak memory
//! are those of a real load. Each dtype/quantisation runs in its own process
//! (peak RSS is per configuration); `--json` runs one and prints one object.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Module, Tensor};

use crate::config::JanusConfig;
use crate::error::{JanusError, Result};
use crate::models::JanusModel;
use crate::quant::Quant;
use crate::sampling::{Sampler, SamplingParams};
use crate::weights::Checkpoint;

/// Arguments of `janus bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// A Janus-Pro `config.json` (e.g. tests/fixtures/reference/Janus-Pro-1B/config.json).
    #[arg(long)]
    pub config: PathBuf,
    /// Weight dtype: f32 or bf16 (default: f32, or bf16 with --quant). Without
    /// --dtype and --quant (and without --json) every configuration is run.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Quantisation of the language model and image head: none, q8_0 or q4k.
    #[arg(long)]
    pub quant: Option<String>,
    /// Decoding / image-token steps timed per workload (default 8; 576 with --full).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Full size: a whole image's 576 steps and 3 repetitions of the heavy stages.
    #[arg(long)]
    pub full: bool,
    /// Repetitions of the heavy stages (ViT, prefill, VQ); the best is kept.
    #[arg(long)]
    pub reps: Option<usize>,
    /// Threads (default: all cores); sets RAYON_NUM_THREADS for this process.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the random weights are cached (default: the system temp folder).
    #[arg(long)]
    pub weights_dir: Option<PathBuf>,
    /// Quantised configurations load a saved `model.gguf` (written once
    /// beside the random weights, as `janus quantize` does) instead of
    /// quantising while loading.
    #[arg(long)]
    pub from_gguf: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Timings of one configuration, seconds unless named otherwise.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BenchResult {
    pub dtype: String,
    pub quant: String,
    pub threads: usize,
    /// The CPU kernels this run could use: `avx512`, `avx2` or `baseline`
    /// (see `JANUS_CPU`), `+bf16` with the bf16 GEMM, `+vnni` with the
    /// VNNI q4_K kernel.
    #[serde(default)]
    pub cpu: String,
    pub vit_encode_s: f64,
    pub und_prefill_s: f64,
    pub und_prefill_tokens: usize,
    pub und_decode_token_s: f64,
    pub t2i_prefill_s: f64,
    pub t2i_step_s: f64,
    pub t2i_step_p4_s: f64,
    pub vq_decode_s: f64,
    /// Prompt prefill + 576 steps + VQ decode, for one image.
    pub full_image_s: f64,
    pub load_s: f64,
    pub peak_rss_bytes: u64,
    /// Resident memory right after loading (weights in their final form).
    #[serde(default)]
    pub load_rss_bytes: u64,
    /// Bytes of the language model's linear weights (shows the quantisation).
    pub llm_linear_bytes: u64,
    pub steps: usize,
    /// Relative L2 error against the f32 run of the same weights and inputs
    /// (absent for f32 itself, or when no f32 run left its reference).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub und_logits_rel_l2: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub t2i_logits_rel_l2: Option<f64>,
    /// The decoded image's, likewise (bf16 compute in the VQ decoder).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vq_image_rel_l2: Option<f64>,
}

fn input_err(msg: impl Into<String>) -> JanusError {
    JanusError::Input(msg.into())
}

fn parse_dtype(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(input_err(format!(
            "bench dtype {other:?}: expected f32 or bf16"
        ))),
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

/// Entry point of the subcommand.
pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(t) = args.threads {
        if t == 0 {
            return Err(input_err("--threads must be at least 1"));
        }
        // Must precede the first use of rayon's / candle's pools in this process.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let quant = args
        .quant
        .as_deref()
        .map(Quant::parse)
        .transpose()
        .map_err(input_err)?;
    let dtype = args.dtype.as_deref().map(parse_dtype).transpose()?;
    if args.json || dtype.is_some() || quant.is_some() {
        let quant = quant.unwrap_or_default();
        let dtype = dtype.unwrap_or(if quant == Quant::None {
            DType::F32
        } else {
            DType::BF16
        });
        let result = run_one(&args, dtype, quant)?;
        if args.json {
            println!("{}", to_json(&result));
        } else {
            print_table(&[result]);
        }
        return Ok(());
    }
    // Every configuration, each in its own process; f32 first, as the reference.
    let exe = std::env::current_exe()?;
    let mut results = vec![];
    for (d, q) in [
        ("f32", "none"),
        ("bf16", "none"),
        ("bf16", "q8_0"),
        ("bf16", "q4k"),
    ] {
        eprintln!("bench: {d} / {q} ...");
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("bench").arg("--config").arg(&args.config);
        cmd.args(["--dtype", d, "--quant", q, "--json"]);
        if let Some(s) = args.steps {
            cmd.args(["--steps", &s.to_string()]);
        }
        if let Some(r) = args.reps {
            cmd.args(["--reps", &r.to_string()]);
        }
        if args.full {
            cmd.arg("--full");
        }
        if let Some(t) = args.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        if let Some(w) = &args.weights_dir {
            cmd.arg("--weights-dir").arg(w);
        }
        let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
        if !out.status.success() {
            return Err(input_err(format!("bench {d}/{q} failed ({})", out.status)));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or("");
        let r: BenchResult = serde_json::from_str(line)
            .map_err(|e| input_err(format!("bench {d}/{q}: bad output {line:?}: {e}")))?;
        results.push(r);
    }
    print_table(&results);
    Ok(())
}

/// What [`BenchResult::cpu`] says.
fn cpu_kernels() -> String {
    let mut s = format!("{:?}", janus_kernels::cpu::level()).to_lowercase();
    if janus_kernels::bf16_gemm::available() {
        s += "+bf16";
    }
    if crate::quant::vnni_available() {
        s += "+vnni";
    }
    s
}

fn to_json(r: &BenchResult) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// A relative error for the table, "-" where there is none (f32 itself).
fn error_cell(e: Option<f64>) -> String {
    e.map_or("-".into(), |e| format!("{e:.2e}"))
}

fn print_table(results: &[BenchResult]) {
    let mut out = std::io::stdout();
    let cols: [(&str, fn(&BenchResult) -> String); 13] = [
        ("ViT encode s", |r| format!("{:.3}", r.vit_encode_s)),
        ("prefill s", |r| format!("{:.3}", r.und_prefill_s)),
        ("decode s/tok", |r| format!("{:.4}", r.und_decode_token_s)),
        ("t2i step s", |r| format!("{:.4}", r.t2i_step_s)),
        ("t2i step p4 s", |r| format!("{:.4}", r.t2i_step_p4_s)),
        ("VQ decode s", |r| format!("{:.3}", r.vq_decode_s)),
        ("image s", |r| format!("{:.1}", r.full_image_s)),
        ("load s", |r| format!("{:.1}", r.load_s)),
        ("peak RSS GB", |r| {
            format!("{:.2}", r.peak_rss_bytes as f64 / 1e9)
        }),
        ("LLM weights GB", |r| {
            format!("{:.2}", r.llm_linear_bytes as f64 / 1e9)
        }),
        ("und logits err", |r| error_cell(r.und_logits_rel_l2)),
        ("t2i logits err", |r| error_cell(r.t2i_logits_rel_l2)),
        ("VQ image err", |r| error_cell(r.vq_image_rel_l2)),
    ];
    let _ = write!(out, "| workload |");
    for r in results {
        let _ = write!(out, " {} {} |", r.dtype, r.quant);
    }
    let _ = writeln!(out);
    let _ = write!(out, "| --- |");
    for _ in results {
        let _ = write!(out, " ---: |");
    }
    let _ = writeln!(out);
    for (name, f) in cols {
        let _ = write!(out, "| {name} |");
        for r in results {
            let _ = write!(out, " {} |", f(r));
        }
        let _ = writeln!(out);
    }
    if let Some(r) = results.first() {
        let _ = writeln!(
            out,
            "\n{} threads, {} timed steps, prefill of {} tokens, {} kernels",
            r.threads, r.steps, r.und_prefill_tokens, r.cpu
        );
    }
}

// ---------------------------------------------------------------- random weights

/// splitmix64: a small, fast, well-mixed generator for bulk random weights.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Approximately N(0, 1): the centred sum of four 16-bit uniforms, scaled.
    fn normal(&mut self) -> f32 {
        let r = self.next();
        let s = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
        // Sum of 4 U(0,1): mean 2, variance 1/3.
        ((s as f32 / 65536.0) - 2.0) * 3f32.sqrt()
    }
}

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
    Ok(crate::gguf::plan(cfg, Quant::None)?.0)
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
fn random_model_dir(args: &BenchArgs, config_text: &str, cfg: &JanusConfig) -> Result<PathBuf> {
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
    (0..n).map(|_| (100 + rng.next() % hi) as u32).collect()
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

fn run_one(args: &BenchArgs, dtype: DType, quant: Quant) -> Result<BenchResult> {
    let config_text = std::fs::read_to_string(&args.config).map_err(|e| JanusError::BadFile {
        path: args.config.clone(),
        reason: e.to_string(),
    })?;
    let cfg = JanusConfig::from_json_str(&config_text)?;
    let dir = random_model_dir(args, &config_text, &cfg)?;
    let steps = args.steps.unwrap_or(if args.full { 576 } else { 8 }).max(1);
    let reps = args.reps.unwrap_or(if args.full { 3 } else { 1 }).max(1);
    let dev = Device::Cpu;
    let threads = rayon::current_num_threads();
    let label = format!("{}/{}", dtype_name(dtype), quant);
    let stage = |what: &str| {
        eprintln!(
            "bench {label}: {what} (peak RSS so far {:.2} GB)",
            status_bytes("VmHWM:") as f64 / 1e9
        )
    };
    let weights_dir = if args.from_gguf && quant != Quant::None {
        let gguf_dir = dir.join(quant.name());
        if !gguf_dir.join(crate::gguf::GGUF_FILE).exists() {
            stage("writing model.gguf (once)");
            std::fs::create_dir_all(&gguf_dir)?;
            let tmp = gguf_dir.join("model.gguf.partial");
            crate::gguf::write_gguf(
                &cfg,
                Checkpoint::open(&dir)?,
                quant,
                "bench",
                &tmp,
                &mut |_| Ok(()),
            )?;
            std::fs::rename(&tmp, gguf_dir.join(crate::gguf::GGUF_FILE))?;
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
            crate::config::CheckpointLayout::Released,
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
            .map(|_| (rng.next() % 2000) as f32 / 1000.0 - 1.0)
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
    let mut next = crate::sampling::argmax(&und_logits.to_vec1::<f32>()?);
    let mut decode = |cache: &mut crate::models::KvCache| -> Result<()> {
        let e = lm.embed(&Tensor::new(&[[next]], &dev)?)?;
        let h = lm.forward_embeds(&e, cache)?;
        let logits = lm
            .lm_logits(&h.i((.., 0, ..))?)?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        next = crate::sampling::argmax(&logits.to_vec1::<f32>()?);
        Ok(())
    };
    decode(&mut cache)?;
    let t = Instant::now();
    for _ in 0..steps {
        decode(&mut cache)?;
    }
    let und_decode_token_s = t.elapsed().as_secs_f64() / steps as f64;
    drop(cache);

    // Text to image, CFG, parallel 1 and 4.
    let grid = img / cfg.gen_vision.downsample_factor();
    let n_tokens = grid * grid;
    let prompt = random_ids(24, vocab, 5);
    stage("text-to-image steps (parallel 1)");
    let (t2i_prefill_s, t2i_step_s, t2i_logits) = t2i(&model, &prompt, 1, steps, n_tokens)?;
    stage("text-to-image steps (parallel 4)");
    let (_, t2i_step_p4_s, _) = t2i(&model, &prompt, 4, steps, n_tokens)?;

    // VQ decode of one image.
    stage("VQ decode");
    let codes = {
        let mut rng = SplitMix(13);
        let v: Vec<u32> = (0..n_tokens)
            .map(|_| (rng.next() % cfg.gen_vision.codebook_size as u64) as u32)
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
        dtype: dtype_name(dtype).into(),
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
