//! Dataset jobs for Janus-Pro: caption every image of a folder or list
//! ([`run_caption`]) and render every prompt of a file ([`run_render`]).
//!
//! Jobs are resumable: results are appended one whole line (and whole
//! image file) at a time, each line records a digest of the job's options,
//! and rerunning the same job skips the rows already done. A bad row
//! becomes an error line and the job goes on.
#![warn(missing_docs)]

mod caption;
mod files;
mod inputs;
mod job;
mod render;

pub use caption::{run_caption, CaptionJob, IMAGE_SLOT};
pub use files::{fingerprint, save_png, write_file, Journal, OPTIONS_FIELD};
pub use inputs::{list_images, read_prompts, PromptRow, MAX_IMAGES_PER_PROMPT};
pub use job::{JobProgress, Summary};
pub use render::{run_render, RenderJob, MANIFEST};
