//! `janus generate` and `janus vq encode|decode`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use janus::{GenerateOptions, ImageProcessor, JanusError};

use crate::output::{ctrl_c_token, print_line, progress_bar, save_png, set_idle, write_file};
use crate::ModelArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A prompt; repeat the flag for several.
    #[arg(long, required_unless_present = "prompts")]
    prompt: Vec<String>,
    /// A file with one prompt per line (blank lines skipped).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    parallel_size: usize,
    /// Most images generated in one batch (default: all images of a prompt).
    #[arg(long)]
    batch_size: Option<usize>,
    #[command(flatten)]
    sampling: crate::ImageSamplingArgs,
    /// Fixes every image: image k of the call always gets the same codes.
    #[arg(long)]
    seed: Option<u64>,
    /// Upscale the outputs to SIZE x SIZE with Lanczos, as the official demo.
    #[arg(long)]
    size: Option<u32>,
    /// Output folder; images are written as <n>.png, n counting over all prompts.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Print one JSON object {"images", "image_tokens"}.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn read_prompts(args: &GenerateArgs) -> janus::Result<Vec<String>> {
    let mut prompts = args.prompt.clone();
    if let Some(file) = &args.prompts {
        if !file.exists() {
            return Err(JanusError::MissingFile {
                what: "prompts file".into(),
                path: file.clone(),
            });
        }
        let text = std::fs::read_to_string(file).map_err(|e| JanusError::BadFile {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        prompts.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    if prompts.is_empty() {
        return Err(JanusError::Input("no prompt given".into()));
    }
    Ok(prompts)
}

fn upscale(img: image::RgbImage, size: Option<u32>) -> janus::Result<image::RgbImage> {
    match size {
        None => Ok(img),
        Some(0) => Err(JanusError::Input("--size must be at least 1".into())),
        Some(s) if s > 8192 => Err(JanusError::Input(format!("--size {s} is larger than 8192"))),
        Some(s) => janus::resize_square(&img, s),
    }
}

pub fn generate(args: GenerateArgs) -> janus::Result<()> {
    let prompts = read_prompts(&args)?;
    let opts = GenerateOptions {
        parallel_size: args.parallel_size,
        seed: args.seed,
        ..args.sampling.options()
    };
    let model = args.model.load()?;
    let cancel = ctrl_c_token();
    set_idle(false);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let batch = args.batch_size.unwrap_or(args.parallel_size);
    let bar = progress_bar(0, "generating", args.quiet);
    let tokens = model.generate_tokens_many(&refs, &opts, batch, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.step as u64);
        cancel.check()
    })?;
    bar.finish_and_clear();

    std::fs::create_dir_all(&args.out).map_err(|e| JanusError::BadFile {
        path: args.out.clone(),
        reason: format!("cannot create output folder: {e}"),
    })?;
    let all: Vec<Vec<u32>> = tokens.into_iter().flatten().collect();
    let bar = progress_bar(all.len(), "decoding", args.quiet);
    let mut paths = Vec::with_capacity(all.len());
    for (i, codes) in all.iter().enumerate() {
        cancel.check()?;
        let img = model.decode_images(std::slice::from_ref(codes))?.remove(0);
        let path = args.out.join(format!("{i}.png"));
        save_png(&upscale(img, args.size)?, &path)?;
        paths.push(path);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.json {
        let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        print_line(serde_json::json!({"images": paths, "image_tokens": all}))?;
    } else {
        for p in &paths {
            print_line(p.display())?;
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum VqCommand {
    /// Encode an image into VQ codes (centre square crop, resized to the generation size).
    Encode {
        image: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Write the codes JSON here instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Decode VQ codes (a JSON list of ints, a list of such lists, or {"codes": ...}) into PNGs.
    Decode {
        codes: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Output PNG; with several images, <stem>_<n>.png beside it.
        #[arg(long)]
        out: PathBuf,
        /// Upscale to SIZE x SIZE with Lanczos.
        #[arg(long)]
        size: Option<u32>,
    },
}

fn read_codes(path: &Path) -> janus::Result<Vec<Vec<u32>>> {
    if !path.exists() {
        return Err(JanusError::MissingFile {
            what: "codes file".into(),
            path: path.into(),
        });
    }
    let bad = |reason: String| JanusError::BadFile {
        path: path.into(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let value = value.get("codes").cloned().unwrap_or(value);
    let as_row = |v: &serde_json::Value| -> Option<Vec<u32>> {
        v.as_array()?
            .iter()
            .map(|c| c.as_u64().and_then(|c| u32::try_from(c).ok()))
            .collect()
    };
    if let Some(row) = as_row(&value) {
        return Ok(vec![row]);
    }
    value
        .as_array()
        .and_then(|rows| rows.iter().map(as_row).collect::<Option<Vec<_>>>())
        .ok_or_else(|| bad("expected a list of non-negative integers, a list of such lists, or {\"codes\": ...}".into()))
}

pub fn vq(cmd: VqCommand) -> janus::Result<()> {
    match cmd {
        VqCommand::Encode { image, model, out } => {
            let img = ImageProcessor::open(&image)?;
            let model = model.load()?;
            let codes = model.vq_encode_image(&img)?;
            let (_, side) = model.image_grid()?;
            let json = serde_json::json!({"grid": [side, side], "codes": codes}).to_string();
            match out {
                Some(path) => write_file(&path, json.as_bytes()),
                None => print_line(json),
            }
        }
        VqCommand::Decode {
            codes,
            model,
            out,
            size,
        } => {
            let rows = read_codes(&codes)?;
            let model = model.load()?;
            let images = model.decode_images(&rows)?;
            let many = images.len() > 1;
            for (i, img) in images.into_iter().enumerate() {
                let path = if many {
                    let stem = out
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    out.with_file_name(format!("{stem}_{i}.png"))
                } else {
                    out.clone()
                };
                save_png(&upscale(img, size)?, &path)?;
                print_line(path.display())?;
            }
            Ok(())
        }
    }
}
