//! The engine: one worker thread owns the model behind a bounded queue.
//! Chat completions are answered together, one decoding step for all of
//! them, and image generations are run together, one code of every image
//! per step; requests join as soon as there is room (continuous batching).
//! Every request can be cancelled within one step (its client went away,
//! its deadline passed, or the server is shutting down).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use janus::{CancelToken, JanusError, JanusPro};

use crate::chat_rows::ChatRows;
use crate::image_rows::ImageRows;
use crate::work::{should_stop, ChatEvent, ImageEvent, Job, Work};

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

/// Most images generated together (over all requests; one request of up to
/// [`crate::openai::MAX_IMAGES`] always runs, alone if need be). Eight
/// images are 16 rows, the few-row kernels' limit: a request's rows then
/// take the same f32 kernels alone or batched, so its pixels do not depend
/// on who else is generating.
const MAX_IMAGES_TOGETHER: usize = 8;

/// The worker: waits for work when idle; otherwise takes what is queued
/// while it fits (in arrival order), then runs one step for every chat and
/// one for every image.
fn work(model: &JanusPro, rx: &Receiver<Job>, pending: &AtomicUsize, max_batch: usize) {
    let mut chats = ChatRows::new(model);
    let mut images = ImageRows::new(model);
    let chat_width = max_batch.min(chats.max_rows());
    let ended = |n: usize| {
        if n > 0 {
            let left = pending.fetch_sub(n, Ordering::SeqCst) - n;
            metrics::gauge!("janus_queue_depth").set(left as f64);
        }
    };
    // A job that did not fit yet: the next to start.
    let mut held: Option<Job> = None;
    loop {
        if chats.len() + images.len() == 0 && held.is_none() {
            let Ok(job) = rx.recv() else { return };
            held = Some(job);
        }
        loop {
            let job = match held.take() {
                Some(job) => job,
                None => match rx.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if chats.len() + images.len() == 0 => return,
                    Err(TryRecvError::Disconnected) => break,
                },
            };
            let fits = match &job.work {
                Work::Chat(_) => chats.len() < chat_width,
                Work::Images(w) => {
                    images.len() == 0
                        || (images.len() < images.max_requests()
                            && images.images() + w.options.parallel_size <= MAX_IMAGES_TOGETHER)
                }
            };
            if !fits {
                held = Some(job);
                break;
            }
            ended(take(&mut chats, &mut images, job));
        }
        metrics::gauge!("janus_running_requests").set((chats.len() + images.len()) as f64);
        if chats.len() > 0 {
            ended(chats.step());
        }
        if images.len() > 0 {
            ended(images.step());
        }
        metrics::gauge!("janus_running_requests").set((chats.len() + images.len()) as f64);
    }
}

/// Starts `job`: it joins the chats or the images being generated.
/// Returns how many requests ended (0, or 1 when it was refused).
fn take(chats: &mut ChatRows, images: &mut ImageRows, job: Job) -> usize {
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
            if should_stop(&cancel, deadline, w.events.is_closed()) {
                let _ = w.events.send(ImageEvent::Failed(JanusError::Cancelled));
                return 1;
            }
            usize::from(!images.add(w, cancel, deadline))
        }
    }
}
