//! Terminal and file output: progress bars, Ctrl-C, atomic writes.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressStyle};
use janus::{CancelToken, JanusError};

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A progress bar on stderr; hidden when stderr is not a terminal or `quiet`.
pub fn progress_bar(total: usize, what: &str, quiet: bool) -> ProgressBar {
    if quiet || !stderr_is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// The token Ctrl-C cancels. The first Ctrl-C cancels the running work;
/// while the program is idle (see [`set_idle`]), it ends the program.
pub fn ctrl_c_token() -> &'static CancelToken {
    static TOKEN: OnceLock<CancelToken> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let token = CancelToken::new();
        let t = token.clone();
        let _ = ctrlc::set_handler(move || {
            if IDLE.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!();
                std::process::exit(130);
            }
            t.cancel();
        });
        token
    })
}

static IDLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks whether Ctrl-C should end the program (idle) or cancel work.
pub fn set_idle(idle: bool) {
    IDLE.store(idle, std::sync::atomic::Ordering::SeqCst);
}

/// Writes the file next to `path` and renames, so an interrupted run never
/// leaves a half-written file.
pub fn write_atomically(
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
        JanusError::BadFile {
            path: path.into(),
            reason: format!("cannot write: {e}"),
        }
    })
}

/// Writes `bytes` to `path` (through a temporary file, see
/// [`write_atomically`]), checking every step: a full disk is an error,
/// never a short file.
pub fn write_file(path: &Path, bytes: &[u8]) -> janus::Result<()> {
    write_atomically(path, |target| {
        let fail = |e: std::io::Error| JanusError::BadFile {
            path: path.into(),
            reason: format!("cannot write: {e}"),
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(target)
            .map_err(fail)?;
        std::io::Write::write_all(&mut f, bytes).map_err(fail)?;
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

/// Prints `line` and a newline to stdout; a write error (a full disk, a
/// closed pipe) is returned, not a panic as with `println!`.
pub fn print_line(line: impl std::fmt::Display) -> janus::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
