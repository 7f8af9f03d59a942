//! `janus`: understand images and generate them with Janus-Pro from the terminal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};
use janus::processor::{load_conversation, question_conversation, TextStreamer};
use janus::{
    GenerateOptions, ImageProcessor, JanusError, JanusPro, SamplingParams, UnderstandOptions,
};

#[derive(Parser)]
#[command(
    name = "janus",
    version,
    about = "Janus-Pro image understanding and generation, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a question about images (or a whole conversation).
    Understand(UnderstandArgs),
    /// Generate images from a text prompt.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// Model folder in the released layout (config.json, tokenizer.json, weights).
    #[arg(long)]
    model: PathBuf,
}

#[derive(Args)]
struct UnderstandArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image file(s); each gets an <image_placeholder> before the question.
    #[arg(long, num_args = 1.., requires = "question", conflicts_with = "conversation")]
    image: Vec<PathBuf>,
    /// The question about the image(s).
    #[arg(long, required_unless_present = "conversation")]
    question: Option<String>,
    /// A conversation file: [{"role", "content", "images"?}], image paths relative to it.
    #[arg(long, conflicts_with = "question")]
    conversation: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object {"answer", "token_ids"} instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    /// Images generated in one batch.
    #[arg(long, default_value_t = 1)]
    parallel_size: usize,
    /// Classifier-free guidance weight.
    #[arg(long, default_value_t = 5.0)]
    cfg_weight: f64,
    /// Sampling temperature; 0 is argmax.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long)]
    seed: Option<u64>,
    /// Output folder; images are written as <n>.png.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Print one JSON object {"images", "image_tokens"}.
    #[arg(long)]
    json: bool,
}

fn load(model: &ModelArgs) -> janus::Result<JanusPro> {
    JanusPro::load(&model.model, &Device::Cpu, DType::F32)
}

fn understand(args: UnderstandArgs) -> janus::Result<()> {
    let (conversation, image_paths) = match &args.conversation {
        Some(file) => {
            let conv = load_conversation(file)?;
            let paths: Vec<PathBuf> = conv.iter().flat_map(|m| m.images.clone()).collect();
            (conv, paths)
        }
        None => {
            let question = args.question.clone().unwrap_or_default();
            (question_conversation(&question, args.image.len()), args.image.clone())
        }
    };
    let images = image_paths
        .iter()
        .map(|p| ImageProcessor::open(p))
        .collect::<janus::Result<Vec<_>>>()?;
    let model = load(&args.model)?;
    let opts = UnderstandOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: None,
        },
        seed: args.seed,
    };
    if args.json {
        let answer = model.understand(&conversation, &images, &opts)?;
        println!(
            "{}",
            serde_json::json!({"answer": answer.text, "token_ids": answer.token_ids})
        );
        return Ok(());
    }
    // Stream: print each piece of text as soon as it decodes completely.
    let mut streamer = TextStreamer::new(&model.processor);
    let mut stdout = std::io::stdout();
    model.understand_with(&conversation, &images, &opts, &mut |id, _| {
        if let Some(piece) = streamer.push(id)? {
            stdout.write_all(piece.as_bytes())?;
            stdout.flush()?;
        }
        Ok(())
    })?;
    if let Some(piece) = streamer.finish()? {
        stdout.write_all(piece.as_bytes())?;
    }
    writeln!(stdout)?;
    Ok(())
}

/// Writes next to the target and renames, so no half-written PNG is ever left.
fn save_png_atomically(img: &image::RgbImage, path: &Path) -> janus::Result<()> {
    let tmp = path.with_extension("png.partial");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            JanusError::BadFile {
                path: path.into(),
                reason: format!("cannot write image: {e}"),
            }
        })?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn generate(args: GenerateArgs) -> janus::Result<()> {
    let model = load(&args.model)?;
    let opts = GenerateOptions {
        parallel_size: args.parallel_size,
        cfg_weight: args.cfg_weight,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: 1.0,
            top_k: None,
        },
        seed: args.seed,
    };
    let generated = model.generate(&args.prompt, &opts)?;
    std::fs::create_dir_all(&args.out).map_err(|e| JanusError::BadFile {
        path: args.out.clone(),
        reason: format!("cannot create output folder: {e}"),
    })?;
    let mut paths = Vec::new();
    for (i, img) in generated.images.iter().enumerate() {
        let path = args.out.join(format!("{i}.png"));
        save_png_atomically(img, &path)?;
        paths.push(path);
    }
    if args.json {
        let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        println!(
            "{}",
            serde_json::json!({"images": paths, "image_tokens": generated.tokens})
        );
    } else {
        for p in &paths {
            println!("{}", p.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Understand(a) => understand(a),
        Command::Generate(a) => generate(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            eprintln!("error: {msg}");
            // 2: the input was unusable (as clap's usage errors); 1: anything else.
            match e {
                JanusError::Candle(_) | JanusError::Io(_) => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
    }
}
