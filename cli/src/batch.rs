//! `janus batch understand|generate`: dataset jobs (see `janus-batch`),
//! with a progress bar, Ctrl-C and a summary.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use janus::{
    load_conversation, question_conversation, CancelToken, JanusPro, DEFAULT_SYSTEM_PROMPT,
};
use janus_batch::{CaptionJob, JobProgress, RenderJob, Summary};

use crate::output::{ctrl_c_token, set_idle, stderr_is_terminal};
use crate::{ImageSamplingArgs, ModelArgs, TextSamplingArgs};

#[derive(Subcommand)]
pub enum BatchCommand {
    /// Answer the same question about every image: one JSON line per image.
    Understand(UnderstandBatchArgs),
    /// Generate images for every prompt of a file, with a manifest.
    Generate(GenerateBatchArgs),
}

#[derive(Args)]
pub struct UnderstandBatchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A folder (searched with its subfolders), a list file (one path per
    /// line, relative to the list) or a glob pattern such as "photos/*.jpg".
    #[arg(long)]
    images: String,
    /// The question asked about each image.
    #[arg(long, required_unless_present = "conversation_template")]
    question: Option<String>,
    /// A conversation file whose image "{image}" is each row's image.
    #[arg(long, conflicts_with = "question")]
    conversation_template: Option<PathBuf>,
    /// The system prompt (default: the official one; "" for none).
    #[arg(long)]
    system_prompt: Option<String>,
    #[command(flatten)]
    sampling: TextSamplingArgs,
    /// Most images answered together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// The results file: {"image", "answer", "token_ids"} or {"image", "error"} per line.
    #[arg(long)]
    out: PathBuf,
    /// No progress bar or summary.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
pub struct GenerateBatchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// One prompt per line, or .jsonl lines {"prompt", "seed"?, "n"?}.
    #[arg(long)]
    prompts: PathBuf,
    /// Images per prompt of rows without their own "n".
    #[arg(long, default_value_t = 1)]
    parallel_size: usize,
    /// Rows without their own "seed" take SEED + their row number.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    sampling: ImageSamplingArgs,
    /// Most images generated together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Resize the outputs to SIZE x SIZE with Lanczos, as the official demo.
    #[arg(long)]
    size: Option<u32>,
    /// The output folder: <row>-<image>.png and manifest.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// No progress bar or summary.
    #[arg(long)]
    quiet: bool,
}

/// Runs the job; returns how many rows failed.
pub fn run(command: BatchCommand) -> janus::Result<usize> {
    match command {
        BatchCommand::Understand(a) => understand(a),
        BatchCommand::Generate(a) => generate(a),
    }
}

fn model_id(m: &ModelArgs) -> String {
    format!("{} {} {} {}", m.model, m.device, m.dtype, m.quant)
}

fn understand(args: UnderstandBatchArgs) -> janus::Result<usize> {
    let images = janus_batch::list_images(&args.images)?;
    let conversation = match (&args.conversation_template, &args.question) {
        (Some(file), _) => load_conversation(file)?,
        (None, question) => question_conversation(question.as_deref().unwrap_or_default(), 1),
    };
    let job = CaptionJob {
        images,
        conversation,
        system_prompt: args
            .system_prompt
            .clone()
            .unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_owned()),
        options: args.sampling.options(),
        batch_size: args.batch_size,
        out: args.out.clone(),
        model_id: model_id(&args.model),
    };
    run_job(&args.model, args.quiet, |model, cancel, show| {
        janus_batch::run_caption(model, &job, cancel, show)
    })
}

fn generate(args: GenerateBatchArgs) -> janus::Result<usize> {
    let rows = janus_batch::read_prompts(&args.prompts, args.seed, args.parallel_size)?;
    let job = RenderJob {
        rows,
        options: args.sampling.options(),
        batch_size: args.batch_size,
        size: args.size,
        out_dir: args.out.clone(),
        model_id: model_id(&args.model),
    };
    run_job(&args.model, args.quiet, |model, cancel, show| {
        janus_batch::run_render(model, &job, cancel, show)
    })
}

type Job<'a> = dyn FnMut(&JobProgress) + 'a;

/// Loads the model, runs `job` with Ctrl-C and a progress bar, reports;
/// returns how many rows failed.
fn run_job(
    model: &ModelArgs,
    quiet: bool,
    job: impl FnOnce(&JanusPro, &CancelToken, &mut Job) -> janus::Result<Summary>,
) -> janus::Result<usize> {
    let model = model.load()?;
    let cancel = ctrl_c_token();
    set_idle(false);
    let bar = rows_bar(quiet);
    let start = Instant::now();
    let summary = job(&model, cancel, &mut |p| show(&bar, p))?;
    bar.finish_and_clear();
    report(&summary, start, quiet);
    Ok(summary.failed)
}

/// Rows done, rows per minute and the time left.
fn rows_bar(quiet: bool) -> ProgressBar {
    if quiet || !stderr_is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {pos}/{len} rows, {per_min} rows/min, ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key(
        "per_min",
        |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1}", s.per_sec() * 60.0);
        },
    )
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn show(bar: &ProgressBar, p: &JobProgress) {
    if bar.length() != Some(p.total as u64) {
        bar.set_length(p.total as u64);
        // Rows done before do not count toward the rate.
        bar.set_position(p.done as u64);
        bar.reset_eta();
    }
    bar.set_position(p.done as u64);
    let steps = p
        .steps
        .map(|s| format!(" step {}/{}", s.step, s.total))
        .unwrap_or_default();
    bar.set_message(format!("{} failed{steps}", p.failed));
}

fn report(s: &Summary, start: Instant, quiet: bool) {
    if quiet {
        return;
    }
    let ran = s.total - s.done_before;
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    eprintln!(
        "{} rows: {} done now ({} failed), {} done before; {:.1} rows/min",
        s.total,
        ran,
        s.failed,
        s.done_before,
        if minutes > 0.0 {
            ran as f64 / minutes
        } else {
            0.0
        }
    );
}
