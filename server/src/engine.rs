//! The engine: one worker thread owns the model and runs requests one at a
//! time in arrival order, behind a bounded queue. Every request can be
//! cancelled within one step (its client went away, its deadline passed,
//! or the server is shutting down).
//!
//! Requests do not share steps yet: continuous batching (rows of several
//! requests in one step) is the next stage of this engine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use image::{DynamicImage, RgbImage};
use janus::{
    CancelToken, GenerateOptions, JanusError, JanusPro, Message, TextStreamer, UnderstandOptions,
};
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

struct Job {
    work: Work,
    cancel: CancelToken,
    deadline: Option<Instant>,
}

/// The queue is full; the request was not taken.
#[derive(Debug)]
pub struct Busy;

/// A handle on the engine's worker; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    /// Requests taken and not finished (queued or running).
    pending: Arc<AtomicUsize>,
    capacity: usize,
}

impl Engine {
    /// Starts the worker thread for `model`; at most `capacity` requests
    /// are held at once (the running one included).
    pub fn start(model: Arc<JanusPro>, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = sync_channel::<Job>(capacity);
        let pending = Arc::new(AtomicUsize::new(0));
        let done = pending.clone();
        std::thread::Builder::new()
            .name("janus-engine".into())
            .spawn(move || {
                for job in rx {
                    metrics::gauge!("janus_running_requests").set(1.0);
                    run(&model, job);
                    metrics::gauge!("janus_running_requests").set(0.0);
                    let left = done.fetch_sub(1, Ordering::SeqCst) - 1;
                    metrics::gauge!("janus_queue_depth").set(left as f64);
                }
            })
            .expect("spawn the engine thread");
        Self {
            tx,
            pending,
            capacity,
        }
    }

    /// Queues `work`; `cancel` (and `deadline`) stop it within one step.
    pub fn submit(
        &self,
        work: Work,
        cancel: CancelToken,
        deadline: Option<Instant>,
    ) -> Result<(), Busy> {
        let taken = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            });
        let Ok(before) = taken else {
            return Err(Busy);
        };
        metrics::gauge!("janus_queue_depth").set((before + 1) as f64);
        let job = Job {
            work,
            cancel,
            deadline,
        };
        self.tx.try_send(job).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            Busy
        })
    }

    /// Requests taken and not finished.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }
}

/// Whether a job should stop: cancelled, past its deadline, or nobody
/// listens any more.
fn should_stop(job_cancel: &CancelToken, deadline: Option<Instant>, closed: bool) -> bool {
    closed || job_cancel.is_cancelled() || deadline.is_some_and(|d| Instant::now() >= d)
}

fn run(model: &JanusPro, job: Job) {
    let Job {
        work,
        cancel,
        deadline,
    } = job;
    match work {
        Work::Chat(w) => {
            let events = w.events.clone();
            let started = Instant::now();
            let result = run_chat(model, w, &cancel, deadline);
            metrics::histogram!("janus_request_seconds", "kind" => "chat")
                .record(started.elapsed().as_secs_f64());
            let _ = events.send(match result {
                Ok(r) => ChatEvent::Done(r),
                Err(e) => ChatEvent::Failed(e),
            });
        }
        Work::Images(w) => {
            let started = Instant::now();
            let events = w.events.clone();
            let stop = |closed| should_stop(&cancel, deadline, closed);
            let mut last = Instant::now();
            let result = model.generate_with(&w.prompt, &w.options, &mut |p| {
                metrics::histogram!("janus_step_seconds", "kind" => "image")
                    .record(last.elapsed().as_secs_f64());
                metrics::counter!("janus_image_steps_total").increment(1);
                last = Instant::now();
                let _ = events.send(ImageEvent::Step {
                    step: p.step,
                    total: p.total,
                });
                if stop(events.is_closed()) {
                    return Err(JanusError::Cancelled);
                }
                Ok(())
            });
            metrics::histogram!("janus_request_seconds", "kind" => "images")
                .record(started.elapsed().as_secs_f64());
            let _ = events.send(match result {
                Ok(g) => ImageEvent::Done(g.images),
                Err(e) => ImageEvent::Failed(e),
            });
        }
    }
}

/// The answer text streamed so far and what may still be sent: with stop
/// strings, the last few characters are held back until they cannot start
/// one.
struct StopScanner {
    stop: Vec<String>,
    text: String,
    sent: usize,
}

impl StopScanner {
    /// Adds `piece`; returns the text that is safe to send and whether a
    /// stop string was reached (the text then ends before it).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        if let Some(at) = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(at);
            let out = self.text[self.sent.min(at)..].to_owned();
            self.sent = at;
            return (out, true);
        }
        let hold = self
            .stop
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        let mut safe = self.text.len().saturating_sub(hold).max(self.sent);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let out = self.text[self.sent..safe].to_owned();
        self.sent = safe;
        (out, false)
    }

    /// What is left to send at the end.
    fn finish(&mut self) -> String {
        let out = self.text[self.sent..].to_owned();
        self.sent = self.text.len();
        out
    }
}

fn run_chat(
    model: &JanusPro,
    w: ChatWork,
    cancel: &CancelToken,
    deadline: Option<Instant>,
) -> janus::Result<ChatResult> {
    let processor = model.text_processor();
    let prompt_tokens = processor
        .understanding_ids_with_system(&w.conversation, w.images.len(), &w.system_prompt)?
        .len();
    let mut streamer = TextStreamer::new(processor);
    let mut scanner = StopScanner {
        stop: w.stop.clone(),
        text: String::new(),
        sent: 0,
    };
    let mut ids = Vec::new();
    let mut hit_stop = false;
    let mut last = Instant::now();
    let events = &w.events;
    let result = model.understand_with_system(
        &w.conversation,
        &w.images,
        &w.system_prompt,
        &w.options,
        &mut |id, _| {
            metrics::histogram!("janus_step_seconds", "kind" => "chat")
                .record(last.elapsed().as_secs_f64());
            metrics::counter!("janus_chat_tokens_total").increment(1);
            last = Instant::now();
            ids.push(id);
            if let Some(piece) = streamer.push(id)? {
                let (safe, stop) = scanner.push(&piece);
                if !safe.is_empty() {
                    let _ = events.send(ChatEvent::Delta(safe));
                }
                if stop {
                    hit_stop = true;
                    return Err(JanusError::Cancelled);
                }
            }
            if should_stop(cancel, deadline, events.is_closed()) {
                return Err(JanusError::Cancelled);
            }
            Ok(())
        },
    );
    match result {
        Ok(_) => {}
        Err(JanusError::Cancelled) if hit_stop => {}
        Err(e) => return Err(e),
    }
    if !hit_stop {
        if let Some(piece) = streamer.finish()? {
            let (safe, stop) = scanner.push(&piece);
            hit_stop = stop;
            if !safe.is_empty() {
                let _ = events.send(ChatEvent::Delta(safe));
            }
        }
        let rest = scanner.finish();
        if !rest.is_empty() {
            let _ = events.send(ChatEvent::Delta(rest));
        }
    }
    let eos = ids.last() == Some(&processor.special.eos);
    let text = if hit_stop {
        scanner.text.clone()
    } else {
        processor.decode(&ids)?
    };
    Ok(ChatResult {
        text,
        prompt_tokens,
        completion_tokens: ids.len(),
        finish_reason: if hit_stop || eos { "stop" } else { "length" },
    })
}

#[cfg(test)]
mod tests {
    use super::StopScanner;

    fn scan(stop: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let mut s = StopScanner {
            stop: stop.iter().map(|s| s.to_string()).collect(),
            text: String::new(),
            sent: 0,
        };
        let mut out = vec![];
        for p in pieces {
            let (safe, stop) = s.push(p);
            out.push(safe);
            if stop {
                return (out, s.text.clone(), true);
            }
        }
        out.push(s.finish());
        (out, s.text.clone(), false)
    }

    #[test]
    fn stop_strings_end_the_text_before_them_even_across_pieces() {
        let (sent, text, stopped) = scan(&["END"], &["hello E", "N", "D more"]);
        assert!(stopped);
        assert_eq!(text, "hello ");
        assert_eq!(sent.concat(), "hello ");
        // Held back while it could still start "END", released at the end.
        let (sent, text, stopped) = scan(&["END"], &["a E", "b"]);
        assert!(!stopped);
        assert_eq!(sent, ["a", " ", "Eb"]);
        assert_eq!(text, "a Eb");
        let (sent, _, _) = scan(&[], &["é", "x"]);
        assert_eq!(sent, ["é", "x", ""]);
    }
}
