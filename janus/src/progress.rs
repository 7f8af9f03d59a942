//! What long calls report to their callbacks.

/// Where a run is; handed to progress callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Steps done (1 after the first).
    pub step: usize,
    /// Steps in the whole run.
    pub total: usize,
}
