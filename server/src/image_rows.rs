//! The image generations being run together: one [`ImageBatch`] request
//! per HTTP request, its steps reported, finished ones decoded and
//! answered, cancelled ones dropped.

use std::collections::HashMap;
use std::time::Instant;

use janus::{CancelToken, ImageBatch, JanusError, JanusPro};

use crate::work::{fail_all, stopping, ImageEvent, ImageWork, Ticket, Ticketed};

/// One request being generated.
struct Row {
    /// Previews to send, spread evenly over the steps.
    partial_images: usize,
    /// Previews sent.
    previews: usize,
    ticket: Ticket<ImageEvent>,
}

impl Ticketed for Row {
    type Event = ImageEvent;
    fn ticket(&self) -> &Ticket<ImageEvent> {
        &self.ticket
    }
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
                    ticket: Ticket::new(work.events, cancel, deadline),
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
                let ended = fail_all(&mut self.rows, &e.to_string(), ImageEvent::Failed);
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
            row.ticket.send(ImageEvent::Step {
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
                    row.ticket.send(ImageEvent::Partial { index, images });
                }
                row.previews += 1;
            }
            if let Some(codes) = step.finished {
                let row = self.rows.remove(&step.key).expect("a row");
                let result = self.model.decode_images(&codes);
                metrics::histogram!("janus_request_seconds", "kind" => "images")
                    .record(row.ticket.seconds());
                row.ticket.send(match result {
                    Ok(images) => ImageEvent::Done(images),
                    Err(e) => ImageEvent::Failed(e),
                });
                ended += 1;
            }
        }
        for key in stopping(&self.rows) {
            let row = self.rows.remove(&key).expect("a row");
            let _ = self.batch.remove(key);
            row.ticket.send(ImageEvent::Failed(JanusError::Cancelled));
            ended += 1;
        }
        ended
    }
}
