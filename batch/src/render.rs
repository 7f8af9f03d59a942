//! `janus batch generate`: images for every row of a prompt file, each
//! written whole with a manifest line (prompt, seed, file, codes), images
//! of several prompts generated together.

use std::collections::HashSet;
use std::path::PathBuf;

use janus::{CancelToken, GenerateOptions, JanusError, JanusPro, PromptImages};
use serde_json::{json, Value};

use crate::files::{fingerprint, save_png, Journal, OPTIONS_FIELD};
use crate::inputs::PromptRow;
use crate::job::{one_line, JobProgress, Summary};

/// The manifest's file name in the output folder.
pub const MANIFEST: &str = "manifest.jsonl";

/// A rendering job: every row of a prompt file into images.
#[derive(Debug, Clone)]
pub struct RenderJob {
    /// The prompt rows, in order.
    pub rows: Vec<PromptRow>,
    /// CFG weight and sampling (`parallel_size` and `seed` come from each row).
    pub options: GenerateOptions,
    /// Most images generated together.
    pub batch_size: usize,
    /// Side of the written images in pixels (resized); None: as generated.
    pub size: Option<u32>,
    /// The output folder (created if needed): `<row>-<image>.png` and [`MANIFEST`].
    pub out_dir: PathBuf,
    /// The model and how it was loaded (part of what a rerun compares).
    pub model_id: String,
}

impl RenderJob {
    fn fingerprint(&self) -> String {
        fingerprint(&[
            "render",
            &self.model_id,
            &format!(
                "{} {:?} {:?}",
                self.options.cfg_weight, self.options.sampling, self.size
            ),
        ])
    }
}

/// The manifest line's identity of image `k` of row `index`.
fn image_key(index: usize, row: &PromptRow, k: usize) -> String {
    format!("{index}\u{1f}{}\u{1f}{}\u{1f}{k}", row.prompt, row.seed)
}

fn line_key(line: &Value) -> Option<String> {
    Some(format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        line.get("row")?.as_u64()?,
        line.get("prompt")?.as_str()?,
        line.get("seed")?.as_u64()?,
        line.get("image")?.as_u64()?
    ))
}

/// Runs `job` on `model`. Rows whose every image an earlier run of the
/// same job wrote (manifest line and file) are skipped; others are
/// generated again. Stops with `Cancelled` within one step once `cancel`
/// is set.
pub fn run_render(
    model: &JanusPro,
    job: &RenderJob,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(&JobProgress),
) -> janus::Result<Summary> {
    job.options.sampling.validate()?;
    if job.batch_size == 0 {
        return Err(JanusError::Input("--batch-size must be at least 1".into()));
    }
    if let Some(side) = job.size {
        janus::resize_square(&image::RgbImage::new(1, 1), side)?;
    }
    std::fs::create_dir_all(&job.out_dir).map_err(|e| JanusError::BadFile {
        path: job.out_dir.clone(),
        reason: format!("cannot create the folder: {e}"),
    })?;
    let fp = job.fingerprint();
    let manifest = job.out_dir.join(MANIFEST);
    let earlier = Journal::read(&manifest, &fp)?;
    let written: HashSet<String> = earlier
        .iter()
        .filter(|l| {
            l.get("file")
                .and_then(Value::as_str)
                .is_some_and(|f| job.out_dir.join(f).is_file())
        })
        .filter_map(line_key)
        .collect();
    let complete = |(i, row): &(usize, &PromptRow)| {
        row.error.is_none() && (0..row.images).all(|k| written.contains(&image_key(*i, row, k)))
    };
    let done: HashSet<usize> = job
        .rows
        .iter()
        .enumerate()
        .filter(complete)
        .map(|(i, _)| i)
        .collect();
    // Only lines of complete rows stay: an unfinished row is redone whole.
    let kept: Vec<Value> = earlier
        .into_iter()
        .filter(|l| {
            let row = l.get("row").and_then(Value::as_u64).map(|r| r as usize);
            row.is_some_and(|r| done.contains(&r))
                && line_key(l).is_some_and(|k| written.contains(&k))
        })
        .collect();
    let mut journal = Journal::create(&manifest, &kept)?;
    let mut progress = JobProgress {
        total: job.rows.len(),
        done: done.len(),
        failed: 0,
        done_before: done.len(),
        steps: None,
    };
    on_progress(&progress);
    let mut chunk: Vec<usize> = vec![];
    let todo = (0..job.rows.len()).filter(|i| !done.contains(i));
    let mut rows = todo.peekable();
    while let Some(i) = rows.next() {
        cancel.check()?;
        let row = &job.rows[i];
        let problem = match &row.error {
            Some(e) => Some(e.clone()),
            None => model
                .generation_ids(&row.prompt)
                .err()
                .map(|e| one_line(&e)),
        };
        if let Some(error) = problem {
            let line = json!({"row": i, "prompt": row.prompt, "seed": row.seed, "error": error, OPTIONS_FIELD: fp});
            journal.append(&line)?;
            progress.done += 1;
            progress.failed += 1;
            on_progress(&progress);
        } else {
            chunk.push(i);
        }
        let images: usize = chunk.iter().map(|&c| job.rows[c].images).sum();
        if !chunk.is_empty() && (images >= job.batch_size || rows.peek().is_none()) {
            let rendered = render_chunk(model, job, &chunk, cancel, &mut |p| {
                progress.steps = Some(p);
                on_progress(&progress);
            });
            progress.steps = None;
            for (&c, result) in chunk.iter().zip(rendered?) {
                let row = &job.rows[c];
                let lines = result.and_then(|(codes, images)| {
                    let mut lines = vec![];
                    for (k, (codes, img)) in codes.iter().zip(&images).enumerate() {
                        let file = format!("{c:05}-{k}.png");
                        save_png(img, &job.out_dir.join(&file))?;
                        lines.push(json!({"row": c, "prompt": row.prompt, "seed": row.seed,
                            "image": k, "file": file, "codes": codes, OPTIONS_FIELD: fp}));
                    }
                    Ok(lines)
                });
                match lines {
                    Ok(lines) => lines.iter().try_for_each(|l| journal.append(l))?,
                    Err(e) => {
                        progress.failed += 1;
                        journal
                            .append(&json!({"row": c, "prompt": row.prompt, "seed": row.seed,
                            "error": one_line(&e), OPTIONS_FIELD: fp}))?;
                    }
                }
                progress.done += 1;
                on_progress(&progress);
            }
            chunk.clear();
        }
    }
    Ok(Summary {
        total: progress.total,
        done_before: progress.done_before,
        failed: progress.failed,
    })
}

type Rendered = janus::Result<(Vec<Vec<u32>>, Vec<image::RgbImage>)>;

/// Codes and images of the rows `chunk`, generated together; the outer
/// error ends the job (cancelled), an inner one fails its row only.
fn render_chunk(
    model: &JanusPro,
    job: &RenderJob,
    chunk: &[usize],
    cancel: &CancelToken,
    on_step: &mut dyn FnMut(janus::Progress),
) -> janus::Result<Vec<Rendered>> {
    let prompts: Vec<PromptImages> = chunk
        .iter()
        .map(|&c| PromptImages {
            prompt: &job.rows[c].prompt,
            images: job.rows[c].images,
            seed: job.rows[c].seed,
        })
        .collect();
    let codes = model.generate_tokens_each(&prompts, &job.options, job.batch_size, &mut |p| {
        on_step(p);
        cancel.check()
    });
    let codes = match codes {
        Ok(c) => c,
        Err(JanusError::Cancelled) => return Err(JanusError::Cancelled),
        Err(e) => {
            let why = one_line(&e);
            return Ok(chunk
                .iter()
                .map(|_| Err(JanusError::Input(why.clone())))
                .collect());
        }
    };
    Ok(codes
        .into_iter()
        .map(|codes| {
            let codes = codes?;
            let images = model.decode_images(&codes)?;
            let images = match job.size {
                Some(side) => images
                    .iter()
                    .map(|i| janus::resize_square(i, side))
                    .collect::<janus::Result<Vec<_>>>()?,
                None => images,
            };
            Ok((codes, images))
        })
        .collect())
}
