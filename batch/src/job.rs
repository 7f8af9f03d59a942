//! What a job reports: progress after every row, a summary at the end.

/// Where a job stands, after every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobProgress {
    /// Rows of the job.
    pub total: usize,
    /// Rows with a result (done now or before), failed ones included.
    pub done: usize,
    /// Rows that failed in this run.
    pub failed: usize,
    /// Rows an earlier run had done.
    pub done_before: usize,
    /// Steps of the batch of images being generated (rendering only).
    pub steps: Option<janus::Progress>,
}

/// How a finished job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Rows of the job.
    pub total: usize,
    /// Rows an earlier run had done (skipped).
    pub done_before: usize,
    /// Rows that failed (recorded as error lines).
    pub failed: usize,
}

/// An error as one line (results hold one line per row).
pub(crate) fn one_line(e: &janus::JanusError) -> String {
    e.to_string().replace('\n', " ")
}
