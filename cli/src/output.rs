//! Terminal and file output: progress bars, Ctrl-C, atomic writes.

use std::io::IsTerminal;
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressStyle};
use janus::CancelToken;

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

pub use janus_batch::{save_png, write_file};

/// Prints `line` and a newline to stdout; a write error (a full disk, a
/// closed pipe) is returned, not a panic as with `println!`.
pub fn print_line(line: impl std::fmt::Display) -> janus::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
