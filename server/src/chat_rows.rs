//! The chat completions being answered together: one [`AnswerBatch`] row
//! per request, its tokens streamed as text (held back where a stop string
//! could start), finished rows answered, cancelled ones dropped.

use std::collections::HashMap;
use std::time::Instant;

use janus::{AnswerBatch, CancelToken, Finish, JanusError, JanusPro, TextStreamer};

use crate::work::{fail_all, stopping, ChatEvent, ChatResult, ChatWork, Ticket, Ticketed};

/// One request being answered.
struct Row<'m> {
    streamer: TextStreamer<'m>,
    scanner: StopScanner,
    ids: Vec<u32>,
    prompt_tokens: usize,
    ticket: Ticket<ChatEvent>,
}

impl Ticketed for Row<'_> {
    type Event = ChatEvent;
    fn ticket(&self) -> &Ticket<ChatEvent> {
        &self.ticket
    }
}

/// The requests being answered together.
pub(crate) struct ChatRows<'m> {
    model: &'m JanusPro,
    batch: AnswerBatch<'m>,
    rows: HashMap<u64, Row<'m>>,
    next_key: u64,
}

impl<'m> ChatRows<'m> {
    pub(crate) fn new(model: &'m JanusPro) -> Self {
        Self {
            model,
            batch: model.answer_batch(),
            rows: HashMap::new(),
            next_key: 0,
        }
    }

    /// Requests being answered.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Most requests this device answers together.
    pub(crate) fn max_rows(&self) -> usize {
        self.batch.max_rows()
    }

    /// Prefills `work` and adds it to the batch; returns whether it joined
    /// (a refused request has been answered with its error).
    pub(crate) fn add(
        &mut self,
        work: ChatWork,
        cancel: CancelToken,
        deadline: Option<Instant>,
    ) -> bool {
        let processor = self.model.text_processor();
        let key = self.next_key;
        self.next_key += 1;
        let joined = self.batch.add(
            key,
            &work.conversation,
            &work.images,
            &work.system_prompt,
            &work.options,
        );
        match joined {
            Ok(prompt_tokens) => {
                self.rows.insert(
                    key,
                    Row {
                        streamer: TextStreamer::new(processor),
                        scanner: StopScanner {
                            stop: work.stop,
                            text: String::new(),
                            sent: 0,
                            stopped: false,
                        },
                        ids: vec![],
                        prompt_tokens,
                        ticket: Ticket::new(work.events, cancel, deadline),
                    },
                );
                true
            }
            Err(e) => {
                let _ = work.events.send(ChatEvent::Failed(e));
                false
            }
        }
    }

    /// One token for every request; returns how many requests ended
    /// (answered, failed or cancelled).
    pub(crate) fn step(&mut self) -> usize {
        let started = Instant::now();
        let steps = match self.batch.step() {
            Ok(s) => s,
            Err(e) => {
                let ended = fail_all(&mut self.rows, &e.to_string(), ChatEvent::Failed);
                self.batch = self.model.answer_batch();
                return ended;
            }
        };
        metrics::histogram!("janus_step_seconds", "kind" => "chat")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("janus_chat_tokens_total").increment(steps.len() as u64);
        let mut ended = 0;
        for step in steps {
            let Some(row) = self.rows.get_mut(&step.key) else {
                continue;
            };
            row.ids.push(step.token);
            let outcome = stream_token(row, step.token, step.finished.as_ref().map(|(_, f)| *f));
            match outcome {
                Ok(None) => continue,
                Ok(Some(finish_reason)) => {
                    let row = self.rows.remove(&step.key).expect("a row");
                    if finish_reason == "stop" && step.finished.is_none() {
                        // A stop string: the row leaves before its end.
                        let _ = self.batch.remove(step.key);
                    }
                    finish(self.model, row, finish_reason);
                }
                Err(e) => {
                    let row = self.rows.remove(&step.key).expect("a row");
                    let _ = self.batch.remove(step.key);
                    row.ticket.send(ChatEvent::Failed(e));
                }
            }
            ended += 1;
        }
        // Requests whose client left, or whose time is up, stop here.
        for key in stopping(&self.rows) {
            let row = self.rows.remove(&key).expect("a row");
            let _ = self.batch.remove(key);
            row.ticket.send(ChatEvent::Failed(JanusError::Cancelled));
            ended += 1;
        }
        ended
    }
}

/// Streams `token`'s text; returns the finish reason once the request is
/// done: a stop string reached, or the answer's end (`finished`).
fn stream_token(
    row: &mut Row,
    token: u32,
    finished: Option<Finish>,
) -> janus::Result<Option<&'static str>> {
    if let Some(piece) = row.streamer.push(token)? {
        let (safe, stop) = row.scanner.push(&piece);
        if !safe.is_empty() {
            row.ticket.send(ChatEvent::Delta(safe));
        }
        if stop {
            return Ok(Some("stop"));
        }
    }
    let Some(finish) = finished else {
        return Ok(None);
    };
    if let Some(piece) = row.streamer.finish()? {
        let (safe, stop) = row.scanner.push(&piece);
        if !safe.is_empty() {
            row.ticket.send(ChatEvent::Delta(safe));
        }
        if stop {
            return Ok(Some("stop"));
        }
    }
    let rest = row.scanner.finish();
    if !rest.is_empty() {
        row.ticket.send(ChatEvent::Delta(rest));
    }
    Ok(Some(match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }))
}

/// Sends a finished request its result.
fn finish(model: &JanusPro, row: Row, finish_reason: &'static str) {
    metrics::histogram!("janus_request_seconds", "kind" => "chat").record(row.ticket.seconds());
    let stopped_by_string = row.scanner.stopped;
    let text = if stopped_by_string {
        Ok(row.scanner.text.clone())
    } else {
        model.text_processor().decode(&row.ids)
    };
    row.ticket.send(match text {
        Ok(text) => ChatEvent::Done(ChatResult {
            text,
            prompt_tokens: row.prompt_tokens,
            completion_tokens: row.ids.len(),
            finish_reason,
        }),
        Err(e) => ChatEvent::Failed(e),
    });
}

/// The answer text streamed so far and what may still be sent: with stop
/// strings, the last few characters are held back until they cannot start
/// one.
struct StopScanner {
    stop: Vec<String>,
    text: String,
    sent: usize,
    /// A stop string was reached.
    stopped: bool,
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
            self.stopped = true;
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

#[cfg(test)]
mod tests {
    use super::StopScanner;

    fn scan(stop: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let mut s = StopScanner {
            stop: stop.iter().map(|s| s.to_string()).collect(),
            text: String::new(),
            sent: 0,
            stopped: false,
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
