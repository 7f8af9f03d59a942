//! The engine: one worker thread owns the model behind a bounded queue.
//! Chat completions are answered together, one decoding step for all of
//! them, requests joining as soon as there is room (continuous batching);
//! an image generation runs whole between two steps. Every request can be
//! cancelled within one step (its client went away, its deadline passed,
//! or the server is shutting down).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use janus::{CancelToken, JanusError, JanusPro};

use crate::chat_rows::ChatRows;
use crate::work::{should_stop, ChatEvent, ImageEvent, ImageWork, Job, Work};

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
    /// are held at once (running ones included), and at most `max_batch`
    /// chat completions are answered together.
    pub fn start(model: Arc<JanusPro>, capacity: usize, max_batch: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, rx) = sync_channel::<Job>(capacity);
        let pending = Arc::new(AtomicUsize::new(0));
        let done = pending.clone();
        std::thread::Builder::new()
            .name("janus-engine".into())
            .spawn(move || work(&model, &rx, &done, max_batch.max(1)))
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

/// The worker: waits for work when idle; otherwise takes what is queued
/// while the batch has room, then runs one step for every chat.
fn work(model: &JanusPro, rx: &Receiver<Job>, pending: &AtomicUsize, max_batch: usize) {
    let mut chats = ChatRows::new(model);
    let width = max_batch.min(chats.max_rows());
    let ended = |n: usize| {
        if n > 0 {
            let left = pending.fetch_sub(n, Ordering::SeqCst) - n;
            metrics::gauge!("janus_queue_depth").set(left as f64);
        }
    };
    loop {
        if chats.len() == 0 {
            let Ok(job) = rx.recv() else { return };
            ended(take(model, &mut chats, job));
        }
        while chats.len() < width {
            match rx.try_recv() {
                Ok(job) => ended(take(model, &mut chats, job)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if chats.len() == 0 => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        metrics::gauge!("janus_running_requests").set(chats.len() as f64);
        if chats.len() > 0 {
            ended(chats.step());
        }
    }
}

/// Starts `job`: a chat joins the batch; an image generation runs whole.
/// Returns how many requests ended (0 or 1).
fn take(model: &JanusPro, chats: &mut ChatRows, job: Job) -> usize {
    let Job {
        work,
        cancel,
        deadline,
    } = job;
    match work {
        Work::Chat(w) => {
            if should_stop(&cancel, deadline, w.events.is_closed()) {
                let _ = w.events.send(ChatEvent::Failed(JanusError::Cancelled));
                return 1;
            }
            usize::from(!chats.add(w, cancel, deadline))
        }
        Work::Images(w) => {
            metrics::gauge!("janus_running_requests").set((chats.len() + 1) as f64);
            run_images(model, w, &cancel, deadline);
            1
        }
    }
}

fn run_images(model: &JanusPro, w: ImageWork, cancel: &CancelToken, deadline: Option<Instant>) {
    let started = Instant::now();
    let events = w.events.clone();
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
        if should_stop(cancel, deadline, events.is_closed()) {
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
