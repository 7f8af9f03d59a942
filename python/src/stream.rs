//! `TextStream`: an understanding run on a Rust thread, its text pieces
//! handed to Python through a channel.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use image::DynamicImage;
use janus::{CancelToken, JanusError, JanusPro, Message, TextStreamer, UnderstandOptions};
use pyo3::prelude::*;

use crate::errors::to_py;
use crate::hooks::RunGuard;

/// What the generation thread sends.
pub(crate) enum Event {
    Piece(String),
    Progress(usize, usize),
    Done(Result<(), JanusError>),
}

/// How often a waiting `__next__` looks at Ctrl-C and the cancel event.
const POLL: Duration = Duration::from_millis(50);

/// An iterator over the text pieces of an answer as they are generated
/// (returned by `JanusPro.stream_understand` and `JanusPro.stream_chat`).
///
/// The answer is generated on a background thread; `next()` waits for the
/// next piece with the GIL released. The pieces joined are the answer
/// `understand` / `chat` returns. `progress(step, total)` is called from
/// the iterating thread. `close()` (also on garbage collection and at the end
/// of a `with` block) stops the generation; a stream stopped by
/// `cancel_event`, `JanusPro.cancel()` or `close()` raises
/// `janus_rs.Cancelled` from `next()`.
#[pyclass(module = "janus_rs", name = "TextStream", frozen)]
pub struct TextStream {
    rx: Mutex<Option<Receiver<Event>>>,
    token: CancelToken,
    progress: Option<Py<PyAny>>,
    cancel_event: Option<Py<PyAny>>,
}

impl TextStream {
    fn new(
        rx: Receiver<Event>,
        token: CancelToken,
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> Self {
        Self {
            rx: Mutex::new(Some(rx)),
            token,
            progress,
            cancel_event,
        }
    }

    /// Waits (without the GIL) for the next event; `None` once finished.
    fn recv(&self, py: Python<'_>) -> Option<Result<Event, RecvTimeoutError>> {
        py.detach(|| {
            let guard = self.rx.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_ref().map(|rx| rx.recv_timeout(POLL))
        })
    }

    fn finish(&self) {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Ctrl-C and the cancel event, with the GIL held.
    pub fn check_python(&self, py: Python<'_>) -> PyResult<()> {
        if let Err(e) = py.check_signals() {
            self.token.cancel();
            self.finish();
            return Err(e);
        }
        if let Some(ev) = &self.cancel_event {
            if ev.call_method0(py, "is_set")?.is_truthy(py)? {
                self.token.cancel();
            }
        }
        Ok(())
    }
}

impl Drop for TextStream {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            match self.recv(py) {
                None => return Ok(None),
                Some(Ok(Event::Piece(piece))) => return Ok(Some(piece)),
                Some(Ok(Event::Progress(step, total))) => {
                    if let Some(cb) = &self.progress {
                        if let Err(e) = cb.call1(py, (step, total)) {
                            self.token.cancel();
                            self.finish();
                            return Err(e);
                        }
                    }
                    self.check_python(py)?;
                }
                Some(Ok(Event::Done(result))) => {
                    self.finish();
                    return match result {
                        Ok(()) => Ok(None),
                        Err(e) => Err(to_py(py, e)),
                    };
                }
                Some(Err(RecvTimeoutError::Timeout)) => self.check_python(py)?,
                Some(Err(RecvTimeoutError::Disconnected)) => {
                    self.finish();
                    return Err(crate::errors::JanusError::new_err(
                        "the generation thread stopped without a result",
                    ));
                }
            }
        }
    }

    /// Stops the generation (if still running) and ends the iteration.
    fn close(&self) {
        self.token.cancel();
        self.finish();
    }

    /// Stops the generation; the next `next()` raises `janus_rs.Cancelled`.
    fn cancel(&self) {
        self.token.cancel();
    }

    /// The whole (remaining) answer: the pieces still to come, joined.
    fn read(&self, py: Python<'_>) -> PyResult<String> {
        let mut out = String::new();
        while let Some(piece) = self.__next__(py)? {
            out.push_str(&piece);
        }
        Ok(out)
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }
}

impl TextStream {
    /// Starts answering `conversation` on a Rust thread registered as
    /// `guard` and returns the stream of its text pieces.
    pub(crate) fn start(
        py: Python<'_>,
        model: Arc<JanusPro>,
        guard: RunGuard,
        (conversation, images, opts): (Vec<Message>, Vec<DynamicImage>, UnderstandOptions),
        progress: Option<Py<PyAny>>,
        cancel_event: Option<Py<PyAny>>,
    ) -> PyResult<TextStream> {
        let token = guard.token.clone();
        let (tx, rx) = mpsc::channel::<Event>();
        let stream = TextStream::new(rx, token.clone(), progress, cancel_event);
        // An already set cancel_event cancels before the first step.
        stream.check_python(py)?;
        let worker = move || {
            let _registered = guard;
            let run =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> janus::Result<()> {
                    token.check()?;
                    let send = |ev: Event| tx.send(ev).map_err(|_| JanusError::Cancelled);
                    let mut streamer = TextStreamer::new(model.text_processor());
                    model.understand_with(&conversation, &images, &opts, &mut |id, p| {
                        token.check()?;
                        if let Some(piece) = streamer.push(id)? {
                            send(Event::Piece(piece))?;
                        }
                        send(Event::Progress(p.step, p.total))?;
                        token.check()
                    })?;
                    if let Some(piece) = streamer.finish()? {
                        send(Event::Piece(piece))?;
                    }
                    Ok(())
                }));
            let result = run.unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                // Reported as a plain janus_rs.JanusError, not as a bad input.
                Err(JanusError::Io(std::io::Error::other(format!(
                    "internal error in the generation thread: {msg}"
                ))))
            });
            let _ = tx.send(Event::Done(result));
        };
        std::thread::Builder::new()
            .name("janus-stream".into())
            .spawn(worker)
            .map_err(|e| {
                crate::errors::JanusError::new_err(format!(
                    "cannot start the generation thread: {e}"
                ))
            })?;
        Ok(stream)
    }
}
