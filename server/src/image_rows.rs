//! The image generations being run together: one [`ImageBatch`] request
//! per HTTP request, its steps reported, finished ones decoded and
//! answered, cancelled ones dropped.

use std::collections::HashMap;
use std::time::Instant;

use janus::{CancelToken, ImageBatch, JanusError, JanusPro};
use tokio::sync::mpsc::UnboundedSender;

use crate::work::{should_stop, ImageEvent, ImageWork};

/// One request being generated.
struct Row {
    /// Previews to send, spread evenly over the steps.
    partial_images: usize,
    /// Previews sent.
    previews: usize,
    events: UnboundedSender<ImageEvent>,
    cancel: CancelToken,
    deadline: Option<Instant>,
    started: Instant,
}

/// The image requests being generated together.
pub(crate) struct ImageRows<'m> {
    model: &'m JanusPro,
    batch: ImageBatch<'m>,
    rows: HashMap<u64, Row>,
    next_key: u64,
}

impl<'m> ImageRows<'m> {
    pub(crate) fn new(model: &'m JanusPro) -> Self {
        Self {
            model,
            batch: model.image_batch(),
            rows: HashMap::new(),
            next_key: 0,
        }
    }

    /// Requests being generated.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Images being generated, over all requests.
    pub(crate) fn images(&self) -> usize {
        self.batch.images()
    }

    /// Most requests this device generates together.
    pub(crate) fn max_requests(&self) -> usize {
        self.batch.max_requests()
    }

    /// Prefills `work` and adds it; returns whether it joined (a refused
    /// request has been answered with its error).
    pub(crate) fn add(
        &mut self,
        work: ImageWork,
        cancel: CancelToken,
        deadline: Option<Instant>,
    ) -> bool {
        let key = self.next_key;
        self.next_key += 1;
        match self.batch.add(key, &work.prompt, &work.options) {
            Ok(()) => {
                let row = Row {
                    partial_images: work.partial_images,
                    previews: 0,
                    events: work.events,
                    cancel,
                    deadline,
                    started: Instant::now(),
                };
                self.rows.insert(key, row);
                true
            }
            Err(e) => {
                let _ = work.events.send(ImageEvent::Failed(e));
                false
            }
        }
    }

    /// One code for every image; returns how many requests ended
    /// (answered, failed or cancelled).
    pub(crate) fn step(&mut self) -> usize {
        let started = Instant::now();
        let steps = match self.batch.step() {
            Ok(s) => s,
            Err(e) => {
                let message = e.to_string();
                let ended = self.rows.len();
                for (_, row) in self.rows.drain() {
                    let err = JanusError::Io(std::io::Error::other(message.clone()));
                    let _ = row.events.send(ImageEvent::Failed(err));
                }
                self.batch = self.model.image_batch();
                return ended;
            }
        };
        metrics::histogram!("janus_step_seconds", "kind" => "image")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("janus_image_steps_total").increment(steps.len() as u64);
        let mut ended = 0;
        for step in steps {
            let Some(row) = self.rows.get_mut(&step.key) else {
                continue;
            };
            let _ = row.events.send(ImageEvent::Step {
                step: step.step,
                total: step.total,
            });
            // Preview k (from 1) of p at step k * total / (p + 1).
            let due = (row.previews + 1) * step.total / (row.partial_images + 1);
            if row.previews < row.partial_images && step.step >= due && step.finished.is_none() {
                let previews = self
                    .batch
                    .codes(step.key)
                    .map(|c| self.model.preview_images(c));
                if let Some(Ok(images)) = previews {
                    let index = row.previews;
                    let _ = row.events.send(ImageEvent::Partial { index, images });
                }
                row.previews += 1;
            }
            if let Some(codes) = step.finished {
                let row = self.rows.remove(&step.key).expect("a row");
                let result = self.model.decode_images(&codes);
                metrics::histogram!("janus_request_seconds", "kind" => "images")
                    .record(row.started.elapsed().as_secs_f64());
                let _ = row.events.send(match result {
                    Ok(images) => ImageEvent::Done(images),
                    Err(e) => ImageEvent::Failed(e),
                });
                ended += 1;
            }
        }
        let stopped: Vec<u64> = self
            .rows
            .iter()
            .filter(|(_, r)| should_stop(&r.cancel, r.deadline, r.events.is_closed()))
            .map(|(&k, _)| k)
            .collect();
        for key in stopped {
            let row = self.rows.remove(&key).expect("a row");
            let _ = self.batch.remove(key);
            let _ = row.events.send(ImageEvent::Failed(JanusError::Cancelled));
            ended += 1;
        }
        ended
    }
}
