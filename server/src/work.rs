//! What the engine runs: chat completions and image generations, and the
//! events each reports back to its HTTP handler.

use std::collections::HashMap;
use std::time::Instant;

use image::{DynamicImage, RgbImage};
use janus::{CancelToken, GenerateOptions, JanusError, Message, UnderstandOptions};
use tokio::sync::mpsc::UnboundedSender;

/// A chat completion to run.
pub struct ChatWork {
    /// The conversation, ending with an empty assistant turn.
    pub conversation: Vec<Message>,
    /// Its images, in placeholder order.
    pub images: Vec<DynamicImage>,
    /// The system prompt (the official default unless the request set one).
    pub system_prompt: String,
    /// Sampling and length.
    pub options: UnderstandOptions,
    /// Stop strings: the answer ends before the first one it contains.
    pub stop: Vec<String>,
    /// Where the answer goes, piece by piece.
    pub events: UnboundedSender<ChatEvent>,
}

/// What a chat completion reports.
pub enum ChatEvent {
    /// More answer text.
    Delta(String),
    /// The whole answer.
    Done(ChatResult),
    /// The request failed (or was cancelled).
    Failed(JanusError),
}

/// A finished chat completion.
pub struct ChatResult {
    /// The answer's text.
    pub text: String,
    /// Tokens of the prompt, images included.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// `stop` (end of sentence or a stop string) or `length`.
    pub finish_reason: &'static str,
}

/// An image generation to run.
pub struct ImageWork {
    /// The prompt.
    pub prompt: String,
    /// Images, CFG weight, sampling, seed.
    pub options: GenerateOptions,
    /// Previews of the images being drawn to send before the end (0 to 3).
    pub partial_images: usize,
    /// Where the result goes.
    pub events: UnboundedSender<ImageEvent>,
}

/// What an image generation reports.
pub enum ImageEvent {
    /// One more image-token step of `total` is done.
    Step {
        /// Steps done.
        step: usize,
        /// Steps in all.
        total: usize,
    },
    /// Previews of every image, part drawn (the rest filled in, see
    /// [`janus::JanusPro::preview_images`]); `index` counts previews from 0.
    Partial {
        /// Which preview this is.
        index: usize,
        /// One preview per image.
        images: Vec<RgbImage>,
    },
    /// The images.
    Done(Vec<RgbImage>),
    /// The request failed (or was cancelled).
    Failed(JanusError),
}

/// Work for the engine.
pub enum Work {
    /// A chat completion.
    Chat(ChatWork),
    /// An image generation.
    Images(ImageWork),
}

/// A taken request: its work, its cancel token and its deadline.
pub(crate) struct Job {
    pub(crate) work: Work,
    pub(crate) cancel: CancelToken,
    pub(crate) deadline: Option<Instant>,
}

/// Whether a job should stop: cancelled, past its deadline, or nobody
/// listens any more.
pub(crate) fn should_stop(cancel: &CancelToken, deadline: Option<Instant>, closed: bool) -> bool {
    closed || cancel.is_cancelled() || deadline.is_some_and(|d| Instant::now() >= d)
}

/// A request in a running batch: where its events go and what stops it.
pub(crate) struct Ticket<E> {
    events: UnboundedSender<E>,
    cancel: CancelToken,
    deadline: Option<Instant>,
    started: Instant,
}

impl<E> Ticket<E> {
    pub(crate) fn new(
        events: UnboundedSender<E>,
        cancel: CancelToken,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            events,
            cancel,
            deadline,
            started: Instant::now(),
        }
    }

    /// Sends `event` (a client that left no longer listens: nothing to do).
    pub(crate) fn send(&self, event: E) {
        let _ = self.events.send(event);
    }

    /// Seconds since the request joined.
    pub(crate) fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// A batch's row that carries a [`Ticket`].
pub(crate) trait Ticketed {
    /// What the request reports.
    type Event;
    /// Its ticket.
    fn ticket(&self) -> &Ticket<Self::Event>;
}

/// Fails every row with `message` and empties `rows` (the batch broke and
/// is in an unknown state); returns how many requests ended.
pub(crate) fn fail_all<R: Ticketed>(
    rows: &mut HashMap<u64, R>,
    message: &str,
    failed: fn(JanusError) -> R::Event,
) -> usize {
    let ended = rows.len();
    for (_, row) in rows.drain() {
        row.ticket()
            .send(failed(JanusError::Io(std::io::Error::other(
                message.to_owned(),
            ))));
    }
    ended
}

/// The keys of the rows to stop: cancelled, past their deadline, or with
/// nobody listening any more.
pub(crate) fn stopping<R: Ticketed>(rows: &HashMap<u64, R>) -> Vec<u64> {
    rows.iter()
        .filter(|(_, r)| {
            let t = r.ticket();
            should_stop(&t.cancel, t.deadline, t.events.is_closed())
        })
        .map(|(&k, _)| k)
        .collect()
}
