//! What a job runs over: the images of a folder, a glob pattern or a list
//! file, and the rows of a prompt file.

use std::path::{Path, PathBuf};

use janus::JanusError;
use serde_json::Value;

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The images `spec` names, in a stable order: a folder (its image files,
/// subfolders included, sorted by path), a list file (one path per line,
/// relative to the list's folder; blank lines and `#` comments skipped), a
/// glob pattern (`photos/*.jpg`, sorted) or one image file.
pub fn list_images(spec: &str) -> janus::Result<Vec<PathBuf>> {
    let path = Path::new(spec);
    if path.is_dir() {
        let mut found = vec![];
        walk(path, &mut found)?;
        found.sort();
        return Ok(found);
    }
    if path.is_file() {
        if is_image(path) {
            return Ok(vec![path.into()]);
        }
        return read_list(path);
    }
    if spec.contains(['*', '?', '[']) {
        let pattern =
            glob::glob(spec).map_err(|e| JanusError::Input(format!("--images {spec:?}: {e}")))?;
        let mut found: Vec<PathBuf> = pattern
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        return Ok(found);
    }
    Err(JanusError::Input(format!(
        "--images {spec:?} is not a folder, a list file, a glob pattern or an image"
    )))
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> janus::Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| JanusError::BadFile {
        path: dir.into(),
        reason: format!("cannot list the folder: {e}"),
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        // Symbolic links to folders are not followed: no loops.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&path, found)?;
        } else if is_image(&path) {
            found.push(path);
        }
    }
    Ok(())
}

fn read_list(list: &Path) -> janus::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(list).map_err(|e| JanusError::BadFile {
        path: list.into(),
        reason: format!("cannot read the image list: {e}"),
    })?;
    let dir = list.parent().unwrap_or(Path::new("."));
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| dir.join(l))
        .collect())
}

/// One row of a prompt file.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    /// The prompt text.
    pub prompt: String,
    /// Seed of its first image (as `janus generate --seed`).
    pub seed: u64,
    /// Images to generate for it.
    pub images: usize,
    /// Why the row cannot run (a malformed line), if it cannot.
    pub error: Option<String>,
}

/// Most images one prompt row may ask for.
pub const MAX_IMAGES_PER_PROMPT: usize = 256;

/// The rows of a prompt file: `.jsonl` lines `{"prompt", "seed"?, "n"?}`,
/// or any other file's non-blank lines as prompts. A row without its own
/// seed takes `seed + row number`; without `n`, `images`. A malformed line
/// becomes a row with an error, so the job records it and goes on.
pub fn read_prompts(path: &Path, seed: u64, images: usize) -> janus::Result<Vec<PromptRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| JanusError::BadFile {
        path: path.into(),
        reason: format!("cannot read the prompts: {e}"),
    })?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let rows = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let default = PromptRow {
                prompt: line.trim().to_owned(),
                seed: seed.wrapping_add(i as u64),
                images,
                error: None,
            };
            if jsonl {
                prompt_line(line, default)
            } else {
                default
            }
        })
        .collect();
    Ok(rows)
}

fn prompt_line(line: &str, default: PromptRow) -> PromptRow {
    let bad = |why: String| PromptRow {
        error: Some(why),
        ..default.clone()
    };
    let Ok(Value::Object(row)) = serde_json::from_str::<Value>(line) else {
        return bad("not a JSON object".into());
    };
    let Some(prompt) = row.get("prompt").and_then(Value::as_str) else {
        return bad("no \"prompt\" string".into());
    };
    let seed = match row.get("seed") {
        None | Some(Value::Null) => default.seed,
        Some(v) => match v.as_u64() {
            Some(s) => s,
            None => return bad(format!("\"seed\" must be a whole number >= 0, got {v}")),
        },
    };
    let images = match row.get("n") {
        None | Some(Value::Null) => default.images,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_IMAGES_PER_PROMPT as u64).contains(&n) => n as usize,
            _ => {
                return bad(format!(
                    "\"n\" must be in 1..={MAX_IMAGES_PER_PROMPT}, got {v}"
                ))
            }
        },
    };
    PromptRow {
        prompt: prompt.to_owned(),
        seed,
        images,
        error: None,
    }
}
