//! Output files written whole: a file appears complete or not at all, and
//! a results journal gains whole lines only.

use std::io::Write;
use std::path::{Path, PathBuf};

use janus::JanusError;
use serde_json::Value;

/// Writes the file next to `path` and renames, so an interrupted run never
/// leaves a half-written file.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> janus::Result<()>,
) -> janus::Result<()> {
    // An existing device or pipe (/dev/null, /dev/stdout, a FIFO) is
    // written into: renaming a file over it would replace the node.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return write(path);
    }
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".partial");
    let tmp = path.with_file_name(tmp_name);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        cannot_write(path, e)
    })
}

fn cannot_write(path: &Path, e: std::io::Error) -> JanusError {
    JanusError::BadFile {
        path: path.into(),
        reason: format!("cannot write: {e}"),
    }
}

/// Writes `bytes` to `path` (through a temporary file, see
/// `write_atomically`), checking every step: a full disk is an error,
/// never a short file.
pub fn write_file(path: &Path, bytes: &[u8]) -> janus::Result<()> {
    write_atomically(path, |target| {
        let fail = |e| cannot_write(path, e);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(target)
            .map_err(fail)?;
        f.write_all(bytes).map_err(fail)?;
        // A device (/dev/null) has nothing to sync.
        if f.metadata().is_ok_and(|m| m.is_file()) {
            f.sync_all().map_err(fail)?;
        }
        Ok(())
    })
}

/// Encodes `img` as PNG in memory, then [`write_file`]s it.
pub fn save_png(img: &image::RgbImage, path: &Path) -> janus::Result<()> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| JanusError::BadFile {
            path: path.into(),
            reason: format!("cannot encode the image: {e}"),
        })?;
    write_file(path, &png)
}

/// A JSON-lines results file that a job appends to row by row and that a
/// rerun of the same job reads back to skip the rows already done.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
}

/// The field that ties a journal line to the job options that made it.
pub const OPTIONS_FIELD: &str = "options";

impl Journal {
    /// The lines a journal at `path` holds for a job with options
    /// `fingerprint`: every whole line without an `error` (failed rows are
    /// tried again). A torn last line (a crash mid-write) is dropped; a line
    /// made with other options is an error, so a changed job never mixes
    /// its rows with another's.
    pub fn read(path: &Path, fingerprint: &str) -> janus::Result<Vec<Value>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => {
                return Err(JanusError::BadFile {
                    path: path.into(),
                    reason: format!("cannot read: {e}"),
                })
            }
        };
        let mut kept = vec![];
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(Value::Object(row)) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            match row.get(OPTIONS_FIELD).and_then(Value::as_str) {
                Some(f) if f == fingerprint => {}
                _ => {
                    return Err(JanusError::Input(format!(
                        "{} holds rows of a job with other options or inputs; choose another \
                         output or remove it",
                        path.display()
                    )))
                }
            }
            if !row.contains_key("error") {
                kept.push(Value::Object(row));
            }
        }
        Ok(kept)
    }

    /// Starts the journal at `path` with the lines `kept` (written whole,
    /// replacing what was there), then appends.
    pub fn create(path: &Path, kept: &[Value]) -> janus::Result<Self> {
        let mut text = String::new();
        for row in kept {
            text.push_str(&row.to_string());
            text.push('\n');
        }
        write_file(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| cannot_write(path, e))?;
        Ok(Self {
            path: path.into(),
            file,
        })
    }

    /// Appends `row` as one line, in one write.
    pub fn append(&mut self, row: &Value) -> janus::Result<()> {
        let mut line = row.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| cannot_write(&self.path, e))
    }
}

/// A short stable digest of `parts` (64-bit FNV-1a, hex): what journal
/// lines record so a rerun can tell its own rows. Not for security.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
