//! `janus serve` on loopback with the tiny fixture: every route, streaming
//! and not, the error statuses, and equality with the library's results.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use janus::UnderstandOptions;
use janus::{question_conversation, GenerateOptions, ImageProcessor, JanusPro, LoadOptions};
use janus_server::ServerOptions;
use serde_json::{json, Value};

#[path = "common/folders.rs"]
mod folders;
use folders::{fixture_dir, tiny_576};

/// The tests of this file run one at a time: the metrics recorder is the
/// process's, and one test counts image steps.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A server on 127.0.0.1 (a free port) that stops when dropped.
struct Server {
    _serial: std::sync::MutexGuard<'static, ()>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<janus::Result<()>>>,
}

impl Server {
    fn start(options: ServerOptions) -> Self {
        Self::start_with(options, fixture_dir())
    }

    /// A server of the model in `dir`.
    fn start_with(options: ServerOptions, dir: PathBuf) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(janus_server::serve(
                ServerOptions {
                    host: "127.0.0.1".into(),
                    port: 0,
                    ..options
                },
                move || JanusPro::from_pretrained(dir.to_str().unwrap(), &LoadOptions::default()),
                move |addr| addr_tx.send(addr).unwrap(),
                async move {
                    let _ = stop_rx.await;
                },
            ))
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("listening");
        let server = Self {
            _serial: serial,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        };
        let t = Instant::now();
        while server.get("/health").0 != 200 {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "model never became ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn get(&self, path: &str) -> (u16, String) {
        response(ureq::get(&self.url(path)).call())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with(path, body, None)
    }

    fn post_with(&self, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut req = ureq::post(&self.url(path));
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let (status, text) = response(req.send_json(body.clone()));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The `data:` payloads of a streamed response, up to `[DONE]`.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let resp = ureq::post(&self.url(path)).send_json(body.clone()).unwrap();
        assert_eq!(resp.content_type(), "text/event-stream");
        let mut out = vec![];
        for line in BufReader::new(resp.into_reader()).lines() {
            let line = line.unwrap();
            if let Some(data) = line.strip_prefix("data: ") {
                out.push(data.to_owned());
                if data == "[DONE]" {
                    break;
                }
            }
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

fn response(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
        Err(e) => panic!("request failed: {e}"),
    }
}

fn library() -> JanusPro {
    JanusPro::from_pretrained(fixture_dir().to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// The length of the official processor's `input_ids` of `case`, read
/// from the shape in expected.safetensors' header (8-byte length, JSON).
fn official_prompt_len(case: &str) -> u64 {
    let bytes = std::fs::read(fixture_dir().join("expected.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let shape = &header[format!("{case}.input_ids")]["shape"];
    assert_eq!(shape.as_array().map(Vec::len), Some(1), "{shape}");
    shape[0].as_u64().unwrap()
}

fn image_url() -> String {
    let png = std::fs::read(fixture_dir().join("images/wide.png")).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

fn chat_body(max_tokens: usize) -> Value {
    json!({
        "model": "janus",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url()}},
            {"type": "text", "text": "Describe this image in detail."},
        ]}],
        "max_tokens": max_tokens,
    })
}

/// What `janus understand --image wide.png --question ...` answers.
fn library_answer(max_tokens: usize) -> janus::Answer {
    let model = library();
    let image = ImageProcessor::open(&fixture_dir().join("images/wide.png")).unwrap();
    let opts = UnderstandOptions {
        max_new_tokens: max_tokens,
        ..Default::default()
    };
    let conv = question_conversation("Describe this image in detail.", 1);
    model.understand(&conv, &[image], &opts).unwrap()
}

#[test]
fn chat_completions_answer_as_the_library_does() {
    let server = Server::start(ServerOptions::default());
    let want = library_answer(12);

    let (status, v) = server.post("/v1/chat/completions", &chat_body(12));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], want.text.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    // The library's prompt of the same conversation, image tokens included,
    // and the official processor's (expected.safetensors' input_ids).
    let image = ImageProcessor::open(&fixture_dir().join("images/wide.png")).unwrap();
    let conv = question_conversation("Describe this image in detail.", 1);
    let (ids, _) = library().understanding_inputs(&conv, &[image]).unwrap();
    assert_eq!(prompt_tokens, ids.len() as u64);
    assert_eq!(prompt_tokens, official_prompt_len("understand.single"));

    // Streamed: the deltas add up to the same answer.
    let mut body = chat_body(12);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = server.stream("/v1/chat/completions", &body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, want.text);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["prompt_tokens"].as_u64(), Some(prompt_tokens));

    // A stop string ends the answer before it, streamed or not.
    let cut: String = want.text.chars().skip(3).take(2).collect();
    let mut body = chat_body(12);
    body["stop"] = json!([cut]);
    let (_, v) = server.post("/v1/chat/completions", &body);
    let head = &want.text[..want.text.find(&cut).unwrap()];
    assert_eq!(v["choices"][0]["message"]["content"], head);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn image_generations_match_the_library() {
    let server = Server::start(ServerOptions::default());
    let (status, v) = server.post(
        "/v1/images/generations",
        &json!({"prompt": "A red apple on a wooden table", "n": 2, "seed": 7, "response_format": "b64_json"}),
    );
    assert_eq!(status, 200, "{v}");
    let want = library()
        .generate(
            "A red apple on a wooden table",
            &GenerateOptions {
                parallel_size: 2,
                seed: Some(7),
                ..Default::default()
            },
        )
        .unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (d, img) in data.iter().zip(&want.images) {
        let png = base64::engine::general_purpose::STANDARD
            .decode(d["b64_json"].as_str().unwrap())
            .unwrap();
        let got = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(got.as_raw(), img.as_raw());
    }

    // Streamed: one completed event per image, the same pixels; a size
    // other than the native one is resized.
    let events = server.stream(
        "/v1/images/generations",
        &json!({"prompt": "A red apple on a wooden table", "n": 2, "seed": 7, "stream": true, "size": "32x32"}),
    );
    assert_eq!(events.len(), 3);
    for (e, img) in events.iter().zip(&want.images) {
        let e: Value = serde_json::from_str(e).unwrap();
        assert_eq!(e["type"], "image_generation.completed");
        let png = base64::engine::general_purpose::STANDARD
            .decode(e["b64_json"].as_str().unwrap())
            .unwrap();
        let got = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(
            got.as_raw(),
            janus::resize_square(img, 32).unwrap().as_raw()
        );
    }
}

#[test]
fn health_models_metrics_and_errors() {
    let server = Server::start(ServerOptions {
        max_body_bytes: 256 << 10,
        ..Default::default()
    });
    assert_eq!(server.get("/health"), (200, r#"{"status":"ok"}"#.into()));
    let (status, text) = server.get("/v1/models");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"][0]["capabilities"]["image_generation"], true);

    let error = |status: u16, v: &Value, needle: &str| {
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{status}: {msg:?} lacks {needle:?}");
    };
    let (s, v) = server.post("/v1/chat/completions", &json!({"messages": "hi"}));
    assert_eq!(s, 400);
    error(s, &v, "invalid request body");
    let mut body = chat_body(4);
    body["n"] = json!(2);
    let (s, v) = server.post("/v1/chat/completions", &body);
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("n")));
    let (s, v) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
    );
    assert_eq!(s, 400);
    error(s, &v, "remote image URLs are not fetched");
    let (s, v) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}),
    );
    assert_eq!(s, 400);
    error(s, &v, "not an image");
    let (s, v) = server.post("/v1/images/generations", &json!({"prompt": "x", "n": 99}));
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("n")));
    let (s, v) = server.post(
        "/v1/images/generations",
        &json!({"prompt": "x", "size": "10x20"}),
    );
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("size")));
    let (s, v) = server.post("/v1/nothing", &json!({}));
    assert_eq!(s, 404);
    error(s, &v, "no route");
    assert_eq!(v["error"]["code"], "not_found", "{v}");
    // A body over the limit is refused from its Content-Length, before it
    // is read (a client still sending would see its connection closed, so
    // this one sends the headers alone and reads the answer).
    {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(server.addr).unwrap();
        write!(
            tcp,
            "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            300 << 10
        )
        .unwrap();
        // The whole answer, not EOF: the server may keep the connection
        // open for the body it refused.
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut bytes = vec![];
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&bytes).trim_end().ends_with("}}") {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
        let answer = String::from_utf8_lossy(&bytes);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("over the limit"), "{answer}");
        for field in [
            r#""type":"invalid_request_error""#,
            r#""code":"request_too_large""#,
        ] {
            assert!(answer.contains(field), "{field} in {answer}");
        }
    }

    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"janus_http_requests_total{route="/v1/images/generations",status="413"}"#),
        "{text}"
    );
}

#[test]
fn api_key_is_required_when_set() {
    let server = Server::start(ServerOptions {
        api_key: Some("sesame".into()),
        ..Default::default()
    });
    let body = json!({"prompt": "x", "n": 99});
    assert_eq!(
        server.post_with("/v1/images/generations", &body, None).0,
        401
    );
    assert_eq!(
        server
            .post_with("/v1/images/generations", &body, Some("sesam"))
            .0,
        401
    );
    // With the key the request is read (and refused for its n).
    assert_eq!(
        server
            .post_with("/v1/images/generations", &body, Some("sesame"))
            .0,
        400
    );
    assert_eq!(server.get("/health").0, 200, "health stays open");
}

/// The value of a counter or gauge in `/metrics` (0 when absent).
fn metric(server: &Server, name: &str) -> f64 {
    let (_, text) = server.get("/metrics");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Sixteen images: a job that always runs every step (no early stop).
fn sixteen_images(stream: bool) -> Value {
    json!({"prompt": "a red apple", "n": 16, "seed": 1, "stream": stream})
}

#[test]
fn a_full_queue_answers_429_and_a_gone_client_is_cancelled() {
    let server = Server::start(ServerOptions {
        max_queue: 1,
        ..Default::default()
    });
    let steps_before = metric(&server, "janus_image_steps_total");
    // A streamed job; its response (headers) arrives once it is queued.
    let resp = ureq::post(&server.url("/v1/images/generations"))
        .send_json(sixteen_images(true))
        .unwrap();
    let (s, v) = server.post("/v1/chat/completions", &chat_body(2));
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    // The client goes away: the job stops within a step, short of its 16.
    drop(resp);
    let t = Instant::now();
    loop {
        let (s, _) = server.post("/v1/chat/completions", &chat_body(2));
        if s == 200 {
            break;
        }
        assert_eq!(s, 429);
        assert!(t.elapsed() < Duration::from_secs(30), "never freed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let steps = metric(&server, "janus_image_steps_total") - steps_before;
    assert!(
        steps < 16.0,
        "the job ran {steps} of its 16 steps after its client left"
    );
}

#[test]
fn a_request_past_its_timeout_is_cancelled() {
    let server = Server::start(ServerOptions {
        request_timeout: Some(Duration::from_millis(1)),
        ..Default::default()
    });
    let (s, v) = server.post("/v1/images/generations", &sixteen_images(false));
    assert_eq!(s, 504, "{v}");
    assert_eq!(v["error"]["code"], "timeout");
}

/// Chats sent at once are answered together (fewer decoding steps than
/// their tokens) and each gets the answer the library gives it alone.
#[test]
fn concurrent_chats_share_steps_and_keep_their_answers() {
    let server = Server::start(ServerOptions {
        max_batch: 8,
        ..Default::default()
    });
    let model = library();
    let image = ImageProcessor::open(&fixture_dir().join("images/wide.png")).unwrap();
    let cases: Vec<(String, usize, f64, u64)> = (0..6)
        .map(|i| {
            (
                format!("Question number {i}?"),
                150 + 10 * i,
                0.2 * i as f64,
                i as u64,
            )
        })
        .collect();
    let want: Vec<janus::Answer> = cases
        .iter()
        .map(|(q, max, temperature, seed)| {
            let opts = UnderstandOptions {
                max_new_tokens: *max,
                sampling: janus::SamplingParams {
                    temperature: *temperature,
                    top_p: 0.9,
                    ..Default::default()
                },
                seed: Some(*seed),
            };
            model
                .understand(
                    &question_conversation(q, 1),
                    std::slice::from_ref(&image),
                    &opts,
                )
                .unwrap()
        })
        .collect();
    let steps = r#"janus_step_seconds_count{kind="chat"}"#;
    let before = metric(&server, steps);
    let url = server.url("/v1/chat/completions");
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(q, max, temperature, seed)| {
                let body = json!({
                    "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": image_url()}},
                        {"type": "text", "text": q},
                    ]}],
                    "max_tokens": max, "temperature": temperature, "top_p": 0.9, "seed": seed,
                });
                let url = url.clone();
                s.spawn(move || {
                    let (status, text) = response(ureq::post(&url).send_json(body));
                    assert_eq!(status, 200, "{text}");
                    serde_json::from_str::<Value>(&text).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (got, want) in answers.iter().zip(&want) {
        assert_eq!(got["choices"][0]["message"]["content"], want.text.as_str());
        assert_eq!(got["usage"]["completion_tokens"], want.token_ids.len());
    }
    let tokens: usize = want.iter().map(|a| a.token_ids.len()).sum();
    let ran = metric(&server, steps) - before;
    assert!(
        ran > 0.0 && ran < 0.6 * tokens as f64,
        "{ran} decoding steps for {tokens} tokens: the requests were not batched"
    );
}

/// The JSON events of a streamed response (without `[DONE]`).
fn json_events(server: &Server, path: &str, body: &Value) -> Vec<Value> {
    let events = server.stream(path, body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// The RGB pixels of an event's or a data item's `b64_json` PNG.
fn png_pixels(v: &Value) -> Vec<u8> {
    let png = base64::engine::general_purpose::STANDARD
        .decode(v["b64_json"].as_str().unwrap())
        .unwrap();
    image::load_from_memory(&png).unwrap().to_rgb8().into_raw()
}

/// The page and its files are served with a strict content policy, and
/// `stream_progress` adds one progress event per image-token step.
#[test]
fn the_page_and_progress_events() {
    let server = Server::start(ServerOptions::default());
    for (path, kind, needle) in [
        ("/", "text/html", "Janus-Pro"),
        ("/app.js", "text/javascript", "/v1/chat/completions"),
        ("/app.css", "text/css", "prefers-color-scheme"),
    ] {
        let resp = ureq::get(&server.url(path)).call().unwrap();
        assert!(resp.content_type().starts_with(kind), "{path}");
        let policy = resp.header("content-security-policy").unwrap().to_owned();
        assert!(policy.contains("default-src 'self'"), "{path}: {policy}");
        assert!(resp.into_string().unwrap().contains(needle), "{path}");
    }
    let body = json!({"prompt": "a red apple", "n": 2, "seed": 1, "stream": true, "stream_progress": true});
    let events = json_events(&server, "/v1/images/generations", &body);
    let steps = library().image_grid().unwrap().0;
    let progress: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "image_generation.progress")
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(progress, (1..=steps as u64).collect::<Vec<_>>());
    // The library's images of the same prompt, n and seed.
    let model = library();
    let generated = model
        .generate(
            "a red apple",
            &GenerateOptions {
                parallel_size: 2,
                seed: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    let completed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "image_generation.completed")
        .collect();
    assert_eq!(completed.len(), 2);
    for (i, (e, img)) in completed.iter().zip(&generated.images).enumerate() {
        assert_eq!(e["index"], i);
        assert_eq!(png_pixels(e), img.as_raw().as_slice(), "image {i}");
    }

    // Two previews of each image, before the images, as PNGs of their size.
    let mut body = body;
    body["partial_images"] = json!(2);
    let events = json_events(&server, "/v1/images/generations", &body);
    let kinds: Vec<(String, u64, u64)> = events
        .iter()
        .filter(|e| e["type"] != "image_generation.progress")
        .map(|e| {
            let kind = e["type"]
                .as_str()
                .unwrap()
                .rsplit('.')
                .next()
                .unwrap()
                .to_owned();
            let preview = e["partial_image_index"].as_u64().unwrap_or(9);
            (kind, preview, e["index"].as_u64().unwrap())
        })
        .collect();
    let want: Vec<(String, u64, u64)> = [
        ("partial_image", 0, 0),
        ("partial_image", 0, 1),
        ("partial_image", 1, 0),
        ("partial_image", 1, 1),
        ("completed", 9, 0),
        ("completed", 9, 1),
    ]
    .iter()
    .map(|&(k, p, i)| (k.to_owned(), p, i))
    .collect();
    assert_eq!(kinds, want);
    // Preview k (from 0) of p = 2 comes at step (k + 1) * steps / 3: the
    // library's preview of the codes drawn by then; then the same images.
    let side = model.generated_image_size().unwrap() as u32;
    let previews: Vec<Vec<image::RgbImage>> = (0..2)
        .map(|k| {
            let drawn = (k + 1) * steps / 3;
            let rows: Vec<Vec<u32>> = generated
                .tokens
                .iter()
                .map(|t| t[..drawn].to_vec())
                .collect();
            model.preview_images(&rows).unwrap()
        })
        .collect();
    for e in events
        .iter()
        .filter(|e| e["type"] != "image_generation.progress")
    {
        let i = e["index"].as_u64().unwrap() as usize;
        let img = if e["type"] == "image_generation.partial_image" {
            &previews[e["partial_image_index"].as_u64().unwrap() as usize][i]
        } else {
            &generated.images[i]
        };
        assert_eq!(img.dimensions(), (side, side));
        assert_eq!(png_pixels(e), img.as_raw().as_slice(), "{}", e["type"]);
    }
    // The previews show the image in the making: neither the final image
    // nor each other.
    assert_ne!(previews[0][0], previews[1][0]);
    assert_ne!(previews[1][0], generated.images[0]);
    let too_many = json!({"prompt": "a", "partial_images": 4, "stream": true});
    let (status, v) = server.post("/v1/images/generations", &too_many);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "partial_images");
}

/// Image requests sent at once are generated together (fewer steps than
/// theirs added up) and each gets the pixels the library gives it alone.
#[test]
fn concurrent_image_requests_share_steps_and_keep_their_pixels() {
    let tmp = std::env::temp_dir().join(format!("janus-server-{}", std::process::id()));
    let dir = tiny_576(&tmp);
    let server = Server::start_with(ServerOptions::default(), dir.clone());
    let model = JanusPro::from_pretrained(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let requests = [("a cat", 2, 1u64), ("a red apple", 1, 2), ("a dog", 3, 1)];
    let steps = r#"janus_step_seconds_count{kind="image"}"#;
    let before = metric(&server, steps);
    let url = server.url("/v1/images/generations");
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|&(prompt, n, seed)| {
                let url = url.clone();
                s.spawn(move || {
                    let body = json!({"prompt": prompt, "n": n, "seed": seed});
                    let (status, text) = response(ureq::post(&url).send_json(body));
                    assert_eq!(status, 200, "{text}");
                    serde_json::from_str::<Value>(&text).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ran = metric(&server, steps) - before;
    for (&(prompt, n, seed), got) in requests.iter().zip(&answers) {
        let opts = GenerateOptions {
            parallel_size: n,
            seed: Some(seed),
            ..Default::default()
        };
        let want = model.generate(prompt, &opts).unwrap().images;
        let data = got["data"].as_array().unwrap();
        assert_eq!(data.len(), n);
        for (img, want) in data.iter().zip(&want) {
            let png = base64::engine::general_purpose::STANDARD
                .decode(img["b64_json"].as_str().unwrap())
                .unwrap();
            let got = image::load_from_memory(&png).unwrap().to_rgb8();
            assert_eq!(got.as_raw(), want.as_raw(), "{prompt}");
        }
    }
    assert!(
        ran > 0.0 && ran < 0.7 * 3.0 * 576.0,
        "{ran} steps for three requests of 576: they were not generated together"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Thirty-two mixed requests at once (chats and images, some streamed, some
/// abandoned midway) against a queue of 24: every accepted request that is
/// read to the end gets what it gets alone, the others 429, nothing hangs,
/// and the engine ends idle.
#[test]
fn a_mixed_load_of_32_requests() {
    let tmp = std::env::temp_dir().join(format!("janus-load-{}", std::process::id()));
    let dir = tiny_576(&tmp);
    let server = Server::start_with(
        ServerOptions {
            max_queue: 24,
            ..Default::default()
        },
        dir.clone(),
    );
    let model = JanusPro::from_pretrained(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    enum Want {
        Text(String),
        Pixels(Vec<Vec<u8>>),
    }
    // (path, body, streamed, abandoned after the first event)
    let requests: Vec<(&str, Value, bool, bool)> = (0..32)
        .map(|i| {
            let stream = i % 3 == 0;
            let abandon = i % 8 == 5;
            if i % 2 == 0 {
                // Text only: this model's image grid is not its ViT's.
                let body = json!({
                    "messages": [{"role": "user", "content": format!("Question {i}?")}],
                    "max_tokens": 40 + i, "temperature": 0.5, "seed": i, "stream": stream,
                });
                ("/v1/chat/completions", body, stream, abandon)
            } else {
                let body = json!({"prompt": format!("picture {i}"), "n": 1 + i % 2, "seed": i,
                                  "stream": stream, "stream_progress": stream});
                ("/v1/images/generations", body, stream, abandon)
            }
        })
        .collect();
    let want = |body: &Value| -> Want {
        if let Some(prompt) = body["prompt"].as_str() {
            let opts = GenerateOptions {
                parallel_size: body["n"].as_u64().unwrap() as usize,
                seed: body["seed"].as_u64(),
                ..Default::default()
            };
            let images = model.generate(prompt, &opts).unwrap().images;
            Want::Pixels(images.into_iter().map(|i| i.into_raw()).collect())
        } else {
            let q = body["messages"][0]["content"].as_str().unwrap();
            let opts = UnderstandOptions {
                max_new_tokens: body["max_tokens"].as_u64().unwrap() as usize,
                sampling: janus::SamplingParams {
                    temperature: 0.5,
                    top_p: 0.95,
                    ..Default::default()
                },
                seed: body["seed"].as_u64(),
            };
            let conv = question_conversation(q, 0);
            Want::Text(model.understand(&conv, &[], &opts).unwrap().text)
        }
    };
    let base = server.url("");
    // (status, the full answer: text or pixels; None when abandoned)
    let outcomes: Vec<(u16, Option<Want>)> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|(path, body, stream, abandon)| {
                let url = format!("{base}{path}");
                s.spawn(move || {
                    let resp = match ureq::post(&url)
                        .timeout(Duration::from_secs(120))
                        .send_json(body.clone())
                    {
                        Ok(r) => r,
                        Err(ureq::Error::Status(code, r)) => {
                            assert_eq!(r.header("retry-after"), Some("1"));
                            let text = r.into_string().unwrap();
                            assert_eq!(code, 429, "{text}");
                            let v: Value = serde_json::from_str(&text).unwrap();
                            assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
                            assert_eq!(v["error"]["code"], "queue_full", "{v}");
                            return (code, None);
                        }
                        Err(e) => panic!("{e}"),
                    };
                    let status = resp.status();
                    let mut text = String::new();
                    let mut pngs = vec![];
                    if *stream {
                        for line in BufReader::new(resp.into_reader()).lines() {
                            let line = line.unwrap();
                            let Some(data) = line.strip_prefix("data: ") else {
                                continue;
                            };
                            if *abandon {
                                return (status, None); // the connection drops here
                            }
                            if data == "[DONE]" {
                                break;
                            }
                            let ev: Value = serde_json::from_str(data).unwrap();
                            assert!(ev.get("error").is_none(), "{ev}");
                            if let Some(t) = ev["choices"][0]["delta"]["content"].as_str() {
                                text.push_str(t);
                            }
                            if ev["type"] == "image_generation.completed" {
                                pngs.push(ev["b64_json"].as_str().unwrap().to_owned());
                            }
                        }
                    } else {
                        let v: Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
                        if let Some(t) = v["choices"][0]["message"]["content"].as_str() {
                            text = t.to_owned();
                        }
                        if let Some(data) = v["data"].as_array() {
                            pngs = data
                                .iter()
                                .map(|d| d["b64_json"].as_str().unwrap().to_owned())
                                .collect();
                        }
                    }
                    let got = if pngs.is_empty() {
                        Want::Text(text)
                    } else {
                        Want::Pixels(
                            pngs.iter()
                                .map(|b| {
                                    let png = base64::engine::general_purpose::STANDARD
                                        .decode(b)
                                        .unwrap();
                                    image::load_from_memory(&png).unwrap().to_rgb8().into_raw()
                                })
                                .collect(),
                        )
                    };
                    (status, Some(got))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let rejected = outcomes.iter().filter(|o| o.0 == 429).count();
    assert!(rejected >= 1, "32 requests at once against a queue of 24");
    let mut checked = 0;
    for ((_, body, _, _), (status, got)) in requests.iter().zip(&outcomes) {
        let Some(got) = got else { continue };
        assert_eq!(*status, 200);
        match (got, want(body)) {
            (Want::Text(g), Want::Text(w)) => assert_eq!(*g, w, "{body}"),
            (Want::Pixels(g), Want::Pixels(w)) => assert!(*g == w, "{body}"),
            _ => panic!("a chat answered with images or the reverse: {body}"),
        }
        checked += 1;
    }
    assert!(checked >= 8, "{checked} requests completed");
    let t = Instant::now();
    while metric(&server, "janus_running_requests") > 0.0
        || metric(&server, "janus_queue_depth") > 0.0
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the engine never went idle"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A plain HTTP server on loopback holding wide.png at /wide.png (and a
/// redirect to it at /hop); stopped when dropped.
struct ImageHost {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ImageHost {
    fn start() -> Self {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let png = std::fs::read(fixture_dir().join("images/wide.png")).unwrap();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut line = String::new();
                let _ = BufReader::new(&conn).read_line(&mut line);
                let head = |status: &str, extra: &str, len: usize| {
                    format!("HTTP/1.1 {status}\r\n{extra}Content-Length: {len}\r\nConnection: close\r\n\r\n")
                };
                let reply = match line.split_whitespace().nth(1) {
                    Some("/wide.png") => [
                        head("200 OK", "Content-Type: image/png\r\n", png.len()).into_bytes(),
                        png.clone(),
                    ]
                    .concat(),
                    Some("/hop") => head("302 Found", "Location: /wide.png\r\n", 0).into_bytes(),
                    _ => head("404 Not Found", "", 0).into_bytes(),
                };
                let _ = conn.write_all(&reply);
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for ImageHost {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn image_urls_are_fetched_as_image_urls_allows() {
    use janus_server::ImageUrls;
    let host = ImageHost::start();
    let chat = |url: String| {
        let mut body = chat_body(12);
        body["messages"][0]["content"][0]["image_url"]["url"] = json!(url);
        body
    };
    let want = library_answer(12);
    {
        let server = Server::start(ServerOptions {
            image_urls: ImageUrls::Any,
            ..Default::default()
        });
        // Fetched, through a redirect too: the answer of the inline image.
        for path in ["/wide.png", "/hop"] {
            let (s, v) = server.post("/v1/chat/completions", &chat(host.url(path)));
            assert_eq!(s, 200, "{path}: {v}");
            assert_eq!(
                v["choices"][0]["message"]["content"],
                want.text.as_str(),
                "{path}"
            );
        }
        let (s, v) = server.post("/v1/chat/completions", &chat(host.url("/missing.png")));
        assert_eq!(s, 400);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("gave HTTP 404"),
            "{v}"
        );
    }
    {
        // Public addresses only: loopback is refused.
        let server = Server::start(ServerOptions {
            image_urls: ImageUrls::Public,
            ..Default::default()
        });
        let (s, v) = server.post("/v1/chat/completions", &chat(host.url("/wide.png")));
        assert_eq!(s, 400);
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("loopback, private or link-local"), "{msg}");
    }
    {
        // Larger than --max-body-mb allows.
        let options = ServerOptions {
            image_urls: ImageUrls::Any,
            max_body_bytes: 4096,
            ..Default::default()
        };
        let server = Server::start(options);
        let (s, v) = server.post("/v1/chat/completions", &chat(host.url("/wide.png")));
        assert_eq!(s, 400);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("is larger than 4096 bytes"),
            "{v}"
        );
    }
}
