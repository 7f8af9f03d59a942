//! `janus bench`: the command around the library's benchmark
//! ([`janus::bench`]): each dtype/quantisation in its own process (peak RSS
//! is per configuration), a Markdown table or one JSON object.

use std::io::Write;
use std::path::PathBuf;

use candle_core::DType;
use clap::Args;
use janus::bench::{run_configuration, BenchResult, BenchSettings};
use janus::{JanusError, Quant};

/// Arguments of `janus bench`.
#[derive(Args, Debug, Clone)]
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
    /// Instead of timings: each quantised weight's error and its layer's
    /// output error against f32 (q8_0 and q4k, or --quant), on N Gaussian
    /// input rows (default 16).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "16")]
    pub layer_errors: Option<usize>,
}

fn input_err(msg: impl Into<String>) -> JanusError {
    JanusError::Input(msg.into())
}

/// f32 or bf16: the weight dtypes the benchmark measures.
fn parse_dtype(name: &str) -> janus::Result<DType> {
    match janus::parse_dtype(name)? {
        d @ (DType::F32 | DType::BF16) => Ok(d),
        _ => Err(input_err(format!(
            "bench dtype {name:?}: expected f32 or bf16"
        ))),
    }
}

/// Entry point of the subcommand.
pub fn run(args: BenchArgs) -> janus::Result<()> {
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
    if let Some(rows) = args.layer_errors {
        return print_layer_errors(&args, quant, rows);
    }
    if args.json || dtype.is_some() || quant.is_some() {
        let quant = quant.unwrap_or_default();
        let dtype = dtype.unwrap_or(if quant == Quant::None {
            DType::F32
        } else {
            DType::BF16
        });
        let settings = BenchSettings {
            config: args.config.clone(),
            dtype,
            quant,
            steps: args.steps.unwrap_or(if args.full { 576 } else { 8 }),
            reps: args.reps.unwrap_or(if args.full { 3 } else { 1 }),
            weights_dir: args.weights_dir.clone(),
            from_gguf: args.from_gguf,
        };
        let result = run_configuration(&settings)?;
        if args.json {
            crate::output::print_line(serde_json::to_string(&result).unwrap_or_default())?;
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
        cmd.arg("bench").args(child_args(&args, d, q));
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

/// The arguments of one configuration's process: every option of this run
/// but the configuration, which it names.
fn child_args(args: &BenchArgs, dtype: &str, quant: &str) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec!["--config".into(), args.config.clone().into()];
    for a in ["--dtype", dtype, "--quant", quant, "--json"] {
        v.push(a.into());
    }
    if let Some(s) = args.steps {
        v.extend(["--steps".into(), s.to_string().into()]);
    }
    if let Some(r) = args.reps {
        v.extend(["--reps".into(), r.to_string().into()]);
    }
    if args.full {
        v.push("--full".into());
    }
    if let Some(t) = args.threads {
        v.extend(["--threads".into(), t.to_string().into()]);
    }
    if let Some(w) = &args.weights_dir {
        v.extend(["--weights-dir".into(), w.clone().into()]);
    }
    if args.from_gguf {
        v.push("--from-gguf".into());
    }
    v
}

/// A relative error for the table, "-" where there is none (f32 itself).
fn error_cell(e: Option<f64>) -> String {
    e.map_or("-".into(), |e| format!("{e:.2e}"))
}

fn print_table(results: &[BenchResult]) {
    let mut out = std::io::stdout().lock();
    let cols: [(&str, fn(&BenchResult) -> String); 14] = [
        ("ViT encode s", |r| format!("{:.3}", r.vit_encode_s)),
        ("prefill s", |r| format!("{:.3}", r.und_prefill_s)),
        ("decode s/tok", |r| format!("{:.4}", r.und_decode_token_s)),
        ("t2i step s", |r| format!("{:.4}", r.t2i_step_s)),
        ("t2i step p4 s", |r| format!("{:.4}", r.t2i_step_p4_s)),
        ("t2i step p16 s", |r| format!("{:.4}", r.t2i_step_p16_s)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: BenchArgs,
    }

    /// Every option of the all-configurations run reaches each configuration's process.
    #[test]
    fn each_configuration_gets_every_option() {
        let w = Wrap::parse_from([
            "bench",
            "--config",
            "c.json",
            "--steps",
            "3",
            "--reps",
            "2",
            "--full",
            "--threads",
            "1",
            "--weights-dir",
            "/w",
            "--from-gguf",
        ]);
        let got: Vec<String> = child_args(&w.args, "bf16", "q4k")
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            got.join(" "),
            "--config c.json --dtype bf16 --quant q4k --json --steps 3 --reps 2 --full \
             --threads 1 --weights-dir /w --from-gguf"
        );
    }
}

/// `--layer-errors`: a Markdown table per quantisation, or JSON lines.
fn print_layer_errors(args: &BenchArgs, quant: Option<Quant>, rows: usize) -> janus::Result<()> {
    use janus::bench::layer_errors::layer_errors;
    if rows == 0 {
        return Err(input_err("--layer-errors needs at least 1 row"));
    }
    let quants = match quant {
        Some(Quant::None) => {
            return Err(input_err("--layer-errors: --quant none stores no blocks"))
        }
        Some(q) => vec![q],
        None => vec![Quant::Q8_0, Quant::Q4K],
    };
    for q in quants {
        let kinds = layer_errors(&args.config, q, rows)?;
        if args.json {
            for k in &kinds {
                crate::output::print_line(serde_json::to_string(k).unwrap_or_default())?;
            }
            continue;
        }
        let pct = |v: [f64; 3]| {
            format!(
                "{:.2} / {:.2} / {:.2}",
                100.0 * v[0],
                100.0 * v[1],
                100.0 * v[2]
            )
        };
        let mut text = format!(
            "\n--quant {q} ({rows} input rows): relative L2 error in %, smallest / median / largest\n\n\
             | weight | format | shape | layers | weights | layer output |\n| --- | --- | --- | ---: | ---: | ---: |\n"
        );
        for k in &kinds {
            text += &format!(
                "| `{}` | {} | {:?} | {} | {} | {} |\n",
                k.kind,
                k.format,
                k.shape,
                k.count,
                pct(k.weight_rel_l2),
                pct(k.output_rel_l2)
            );
        }
        crate::output::print_line(text)?;
    }
    Ok(())
}
