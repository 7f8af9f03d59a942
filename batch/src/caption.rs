//! `janus batch understand`: one answer per image of a dataset, written
//! to a JSON-lines file as each finishes, conversations decoded together.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use janus::{AnswerRequest, CancelToken, ImageProcessor, JanusPro, Message, UnderstandOptions};
use serde_json::{json, Value};

use crate::files::{fingerprint, Journal, OPTIONS_FIELD};
use crate::job::{one_line, JobProgress, Summary};

/// The image path that a conversation template marks as the row's image.
pub const IMAGE_SLOT: &str = "{image}";

/// A captioning job: the same conversation about every image.
#[derive(Debug, Clone)]
pub struct CaptionJob {
    /// The images, in order; results name them as given here.
    pub images: Vec<PathBuf>,
    /// What is asked: a question conversation without image files (the
    /// row's image is its only image, as `janus understand --image`), or a
    /// template whose image files named [`IMAGE_SLOT`] take the row's image.
    pub conversation: Vec<Message>,
    /// The system prompt (empty: none).
    pub system_prompt: String,
    /// Sampling and length, as `janus understand`.
    pub options: UnderstandOptions,
    /// Most conversations decoded together.
    pub batch_size: usize,
    /// The JSON-lines results file.
    pub out: PathBuf,
    /// The model and how it was loaded (part of what a rerun compares).
    pub model_id: String,
}

impl CaptionJob {
    /// The digest of everything that decides the answers.
    fn fingerprint(&self) -> String {
        let conversation = serde_json::to_string(&self.conversation).unwrap_or_default();
        fingerprint(&[
            "caption",
            &self.model_id,
            &conversation,
            &self.system_prompt,
            &format!("{:?}", self.options),
        ])
    }

    /// The image files of `row`'s conversation.
    fn row_images(&self, row: &Path) -> Vec<PathBuf> {
        let template: Vec<&PathBuf> = self.conversation.iter().flat_map(|m| &m.images).collect();
        if template.is_empty() {
            return vec![row.into()];
        }
        template
            .into_iter()
            .map(|p| {
                if p.file_name().is_some_and(|n| n == IMAGE_SLOT) {
                    row.into()
                } else {
                    p.clone()
                }
            })
            .collect()
    }

    fn check(&self) -> janus::Result<()> {
        let bad = |m: String| Err(janus::JanusError::Input(m));
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        let slots = self.conversation.iter().flat_map(|m| &m.images);
        let has_images = slots.clone().next().is_some();
        if has_images
            && !slots
                .clone()
                .any(|p| p.file_name().is_some_and(|n| n == IMAGE_SLOT))
        {
            return bad(format!(
                "the conversation template names no image {IMAGE_SLOT:?} for the row's image"
            ));
        }
        self.options.sampling.validate()
    }
}

/// Runs `job` on `model`: rows already in the results file (from an
/// earlier run of the same job) are skipped, failed rows tried again; each
/// image's result is appended as one line as soon as it is answered.
/// Stops with `Cancelled` between two steps once `cancel` is set.
pub fn run_caption(
    model: &JanusPro,
    job: &CaptionJob,
    cancel: &CancelToken,
    on_progress: &mut dyn FnMut(&JobProgress),
) -> janus::Result<Summary> {
    job.check()?;
    let fp = job.fingerprint();
    let listed: HashSet<String> = job.images.iter().map(|p| key(p)).collect();
    // Lines of images no longer listed are kept: they are still results.
    let kept = Journal::read(&job.out, &fp)?;
    let done: HashSet<String> = kept
        .iter()
        .filter_map(|r| r.get("image").and_then(Value::as_str))
        .filter(|k| listed.contains(*k))
        .map(str::to_owned)
        .collect();
    let mut journal = Journal::create(&job.out, &kept)?;
    let todo: Vec<&PathBuf> = job
        .images
        .iter()
        .filter(|p| !done.contains(&key(p)))
        .collect();
    let mut progress = JobProgress {
        total: job.images.len(),
        done: job.images.len() - todo.len(),
        failed: 0,
        done_before: job.images.len() - todo.len(),
        steps: None,
    };
    on_progress(&progress);
    let requests = todo.iter().map(|path| -> janus::Result<AnswerRequest> {
        cancel.check()?;
        Ok(AnswerRequest {
            conversation: job.conversation.clone(),
            images: job
                .row_images(path)
                .iter()
                .map(|p| ImageProcessor::open(p))
                .collect::<janus::Result<Vec<_>>>()?,
            system_prompt: job.system_prompt.clone(),
            options: job.options.clone(),
        })
    });
    model.answer_all(
        requests,
        job.batch_size,
        &mut || cancel.check(),
        &mut |i, result| {
            let image = key(todo[i]);
            let line = match &result {
                Err(janus::JanusError::Cancelled) => return Err(janus::JanusError::Cancelled),
                Ok(answer) => json!({
                    "image": image,
                    "answer": answer.text,
                    "token_ids": answer.token_ids,
                    OPTIONS_FIELD: fp,
                }),
                Err(e) => json!({"image": image, "error": one_line(e), OPTIONS_FIELD: fp}),
            };
            journal.append(&line)?;
            progress.done += 1;
            progress.failed += usize::from(result.is_err());
            on_progress(&progress);
            Ok(())
        },
    )?;
    Ok(Summary {
        total: progress.total,
        done_before: progress.done_before,
        failed: progress.failed,
    })
}

/// How a results line names an image: its path as listed.
fn key(path: &Path) -> String {
    path.display().to_string()
}
