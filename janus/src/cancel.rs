//! Cooperative cancellation shared by the CLI, the Python bindings and the
//! ComfyUI nodes: a flag that long runs check between steps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{JanusError, Result};

/// A cheap, cloneable cancellation flag; all clones see `cancel()`.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every run that checks this token (and its clones).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Clears the flag so the token can serve the next run.
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called (since the last reset).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled; use inside progress callbacks.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(JanusError::Cancelled)
        } else {
            Ok(())
        }
    }
}
