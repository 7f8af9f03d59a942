//! One error type for the whole crate, with messages a user can act on.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running Janus-Pro.
#[derive(Debug, thiserror::Error)]
pub enum JanusError {
    /// A file the model needs is not there.
    #[error("{what} not found: {}", path.display())]
    MissingFile {
        /// What the file is for.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file exists but cannot be read or parsed.
    #[error("cannot read {}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A config field holds a value this runtime does not know.
    #[error("config: {0}")]
    Config(String),
    /// A weight is absent from the checkpoint or has the wrong shape.
    #[error("weights: {0}")]
    Weights(String),
    /// An image could not be decoded or has an unusable size.
    #[error("image {source_name}: {reason}")]
    Image {
        /// The file or source of the image.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller's input is unusable (prompt too long, too many images, ...).
    #[error("{0}")]
    Input(String),
    /// The run was cancelled through a cancellation token.
    #[error("cancelled")]
    Cancelled,
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(candle_core::Error),
    /// An I/O error while writing outputs.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The result of every fallible call of this crate.
pub type Result<T> = std::result::Result<T, JanusError>;

impl JanusError {
    /// [`JanusError::BadFile`] for `path`.
    pub(crate) fn bad_file(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        JanusError::BadFile {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// [`JanusError::Weights`] from a loader's error, on one line.
    pub(crate) fn weights(e: candle_core::Error) -> Self {
        JanusError::Weights(without_backtrace(e).to_string())
    }
}

/// Drops captured backtraces (candle records one when `RUST_BACKTRACE` is
/// set), so messages stay one readable line.
pub(crate) fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}

impl From<candle_core::Error> for JanusError {
    fn from(e: candle_core::Error) -> Self {
        JanusError::Candle(without_backtrace(e))
    }
}
