//! Running model calls with the GIL released: the registry of running calls
//! (for `JanusPro.cancel()`) and the per-step hook that reports progress,
//! polls `cancel_event` and lets Ctrl-C through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use janus::CancelToken;
use pyo3::prelude::*;

/// The calls running on one model, each with its own cancellation token.
#[derive(Clone, Default)]
pub struct Runs(Arc<RunsInner>);

#[derive(Default)]
pub struct RunsInner {
    next: AtomicU64,
    active: Mutex<HashMap<u64, CancelToken>>,
}

impl Runs {
    fn active(&self) -> MutexGuard<'_, HashMap<u64, CancelToken>> {
        // A panic elsewhere cannot leave the map inconsistent: use it anyway.
        self.0.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new call; it stays registered until the guard is dropped.
    pub fn start(&self) -> RunGuard {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        let token = CancelToken::new();
        self.active().insert(id, token.clone());
        RunGuard {
            runs: self.clone(),
            id,
            token,
        }
    }

    /// Cancels every registered call; returns how many there were.
    pub fn cancel_all(&self) -> usize {
        let active = self.active();
        for token in active.values() {
            token.cancel();
        }
        active.len()
    }
}

/// A running call's registration and token.
pub struct RunGuard {
    runs: Runs,
    id: u64,
    pub token: CancelToken,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.runs.active().remove(&self.id);
    }
}

/// What a call does between steps: stop if cancelled, report progress.
pub struct Hooks {
    pub token: CancelToken,
    progress: Option<Py<PyAny>>,
    cancel_event: Option<Py<PyAny>>,
    /// An exception raised by the progress callback, `cancel_event.is_set()`
    /// or a signal handler (KeyboardInterrupt); re-raised as is.
    pub error: Option<PyErr>,
}

impl Hooks {
    pub fn new(
        token: CancelToken,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> Self {
        Self {
            token,
            progress,
            cancel_event,
            error: None,
        }
    }

    /// True when the call's `cancel_event` is set.
    pub fn event_is_set(&self, py: Python<'_>) -> PyResult<bool> {
        match &self.cancel_event {
            Some(ev) => ev.call_method0(py, "is_set")?.is_truthy(py),
            None => Ok(false),
        }
    }

    /// Before the run: an already set `cancel_event` cancels at once.
    pub fn before(&self, py: Python<'_>) -> PyResult<()> {
        if self.event_is_set(py)? {
            self.token.cancel();
        }
        Ok(())
    }

    /// The Python part of a step, with the GIL held: signals, the progress
    /// callback, then the cancel event.
    pub fn python_step(&self, py: Python<'_>, step: usize, total: usize) -> PyResult<()> {
        py.check_signals()?;
        if let Some(cb) = &self.progress {
            cb.call1(py, (step, total))?;
        }
        if self.event_is_set(py)? {
            self.token.cancel();
        }
        Ok(())
    }

    /// Called after every step, without the GIL.
    pub fn step(&mut self, step: usize, total: usize) -> janus::Result<()> {
        self.token.check()?;
        if let Err(e) = Python::attach(|py| self.python_step(py, step, total)) {
            self.error = Some(e);
            self.token.cancel();
        }
        self.token.check()
    }

    /// The exception for a failed run: the callback's own, or the library's.
    pub fn into_error(mut self, py: Python<'_>, e: janus::JanusError) -> PyErr {
        match self.error.take() {
            Some(err) => err,
            None => crate::errors::to_py(py, e),
        }
    }
}
