//! `janus`: understand images and generate them with Janus-Pro from the terminal.

mod batch;
mod bench;
mod generate;
mod output;
mod serve;
mod understand;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use janus::{JanusError, JanusPro, LoadOptions, SamplingParams};

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
    Understand(understand::UnderstandArgs),
    /// Chat about images in the terminal, turn after turn.
    Chat(understand::ChatArgs),
    /// Generate images from text prompts.
    Generate(generate::GenerateArgs),
    /// The VQ image tokenizer on its own.
    #[command(subcommand)]
    Vq(generate::VqCommand),
    /// Save a quantised copy of a model (a folder with model.gguf) that loads
    /// without quantising again.
    Quantize(QuantizeArgs),
    /// Time every stage on a real-size model with random weights (no download).
    Bench(bench::BenchArgs),
    /// Caption an image dataset or render a prompt list, resumably.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
}

#[derive(Args)]
struct QuantizeArgs {
    /// A local model folder or a Hugging Face hub id.
    #[arg(long, default_value = janus::DEFAULT_MODEL)]
    model: String,
    /// Use only the local Hugging Face cache (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// q8_0 or q4k (as `--quant` of the other commands).
    #[arg(long)]
    quant: String,
    /// The folder to write (created if needed); load it with `--model`.
    #[arg(long)]
    out: std::path::PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn quantize(args: QuantizeArgs) -> janus::Result<()> {
    let quant = janus::Quant::parse(&args.quant).map_err(JanusError::Input)?;
    if quant == janus::Quant::None {
        return Err(JanusError::Input("--quant must be q8_0 or q4k".into()));
    }
    let opts = LoadOptions {
        offline: args.offline,
        progress: output::stderr_is_terminal() && !args.quiet,
        ..Default::default()
    };
    let dir = janus::resolve_model(&args.model, &opts)?;
    let cancel = output::ctrl_c_token();
    output::set_idle(false);
    let bar = output::progress_bar(0, "quantising", args.quiet);
    let path = janus::save_quantized(&dir, quant, &args.out, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.step as u64);
        cancel.check()
    })?;
    bar.finish_and_clear();
    output::print_line(path.display())?;
    Ok(())
}

/// Which model to run and how.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A local model folder or a Hugging Face hub id.
    #[arg(long, default_value = janus::DEFAULT_MODEL)]
    pub model: String,
    /// Use only the local Hugging Face cache (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// cpu, cuda, cuda:N or metal (GPU backends need the matching cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32 (exact), bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Quantise at load: none, q8_0 or q4k (language model, image head and
    /// token embeddings; the vision tower then takes q8_0).
    #[arg(long, default_value = "none")]
    pub quant: String,
}

impl ModelArgs {
    pub fn load(&self) -> janus::Result<JanusPro> {
        let quant = janus::Quant::parse(&self.quant).map_err(JanusError::Input)?;
        let opts = LoadOptions {
            device: janus::parse_device(&self.device)?,
            dtype: janus::parse_dtype(&self.dtype)?,
            offline: self.offline,
            progress: output::stderr_is_terminal(),
            quant,
        };
        JanusPro::from_pretrained(&self.model, &opts)
    }
}

/// Sampling flags shared by the text commands.
#[derive(Args, Clone)]
pub struct TextSamplingArgs {
    /// 0 is greedy decoding, as the official inference script.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    #[arg(long)]
    pub top_k: Option<usize>,
    /// transformers' repetition penalty; 1 is off.
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// The official demo's sampling (temperature 0.1, top-p 0.95); overrides the above.
    #[arg(long)]
    pub demo_sampling: bool,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
}

impl TextSamplingArgs {
    pub fn options(&self) -> janus::UnderstandOptions {
        let sampling = if self.demo_sampling {
            SamplingParams {
                repetition_penalty: self.repetition_penalty,
                ..SamplingParams::demo()
            }
        } else {
            SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                repetition_penalty: self.repetition_penalty,
            }
        };
        janus::UnderstandOptions {
            max_new_tokens: self.max_new_tokens,
            sampling,
            seed: self.seed,
        }
    }
}

/// Guidance and sampling flags of the image commands.
#[derive(Args, Clone)]
pub struct ImageSamplingArgs {
    /// Classifier-free guidance weight.
    #[arg(long, default_value_t = 5.0)]
    pub cfg_weight: f64,
    /// Sampling temperature; 0 is argmax.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Sample only among the k most likely codes (default: all, as the official code).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling (default 1: the full distribution, as the official code).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
}

impl ImageSamplingArgs {
    /// Options of one image with these flags (no seed).
    pub fn options(&self) -> janus::GenerateOptions {
        janus::GenerateOptions {
            cfg_weight: self.cfg_weight,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// Exit codes: 0 success, 1 a failure while running, 2 unusable input
/// (as clap's usage errors), 3 a batch job whose rows failed in part,
/// 130 cancelled by Ctrl-C.
fn main() -> ExitCode {
    let cli = Cli::parse();
    // Until a command starts cancellable work, Ctrl-C simply ends the program.
    output::set_idle(true);
    output::ctrl_c_token();
    let mut partial = false;
    let result = match cli.command {
        Command::Understand(a) => understand::understand(a),
        Command::Chat(a) => understand::chat(a),
        Command::Generate(a) => generate::generate(a),
        Command::Vq(c) => generate::vq(c),
        Command::Quantize(a) => quantize(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::serve(a),
        Command::Batch(c) => batch::run(c).map(|failed| partial = failed > 0),
    };
    match result {
        Ok(()) if partial => ExitCode::from(3),
        Ok(()) => ExitCode::SUCCESS,
        Err(JanusError::Cancelled) => {
            eprintln!("cancelled");
            ExitCode::from(130)
        }
        // A closed pipe (`janus ... | head`) ends quietly, as other tools do.
        Err(JanusError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(141),
        Err(e) => {
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            match e {
                JanusError::Candle(_) | JanusError::Io(_) => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
    }
}
