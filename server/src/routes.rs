//! The HTTP routes: request parsing and response shapes only; the model
//! runs in the engine.

use std::convert::Infallible;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use image::RgbImage;
use janus::{CancelToken, JanusError};
use serde::de::DeserializeOwned;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::{channel, unbounded_channel, Sender, UnboundedReceiver};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::openai::{ChatRequest, ImagesRequest};
use crate::work::{ChatEvent, ChatResult, ChatWork, ImageEvent, ImageWork, Work};
use crate::AppState;

/// Every route, with authentication, the body limit and request metrics.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limit = state.options.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/images/generations", post(image_generations))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(crate::web::routes())
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(v1)
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_large_bodies,
        ))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// `janus_http_requests_total{route, status}`.
async fn count_requests(req: Request, next: Next) -> Response {
    let route = match req.uri().path() {
        p @ ("/"
        | "/health"
        | "/metrics"
        | "/v1/models"
        | "/v1/chat/completions"
        | "/v1/images/generations") => p.to_owned(),
        _ => "other".to_owned(),
    };
    let response = next.run(req).await;
    metrics::counter!(
        "janus_http_requests_total",
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// A body announced larger than the limit is refused at once (413), before
/// it is read; one without a length is cut at the limit while read.
async fn refuse_large_bodies(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let limit = state.options.max_body_bytes;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return ApiError::too_large(limit).into_response();
    }
    next.run(req).await
}

/// With `--api-key`, the `/v1` routes need `Authorization: Bearer <key>`.
async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.options.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.ready() {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let queued = state.ready().map_or(0, |(engine, _)| engine.pending());
    metrics::gauge!("janus_queue_depth").set(queued as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let (_, model) = state.ready()?;
    let side = model.generated_image_size()?;
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": state.options.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "deepseek-ai",
            "capabilities": {
                "understanding": true,
                "image_generation": true,
                "native_image_size": format!("{side}x{side}"),
            },
        }],
    }))
    .into_response())
}

/// The JSON body as `T`; 413 over the limit, 400 when it does not parse.
fn parse_body<T: DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(state.options.max_body_bytes),
        _ => ApiError::invalid(e.body_text(), None),
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A request's cancel token and deadline; the token is cancelled when the
/// returned guard is dropped (the client went away mid-response).
struct Running {
    cancel: CancelToken,
    deadline: Option<Instant>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn start(state: &AppState) -> Running {
    Running {
        cancel: CancelToken::new(),
        deadline: state.options.request_timeout.map(|t| Instant::now() + t),
    }
}

/// The error a failed run answers with: a cancellation past the deadline
/// is a timeout.
fn failure(e: JanusError, run: &Running) -> ApiError {
    match e {
        JanusError::Cancelled if run.deadline.is_some_and(|d| Instant::now() >= d) => {
            ApiError::timeout()
        }
        JanusError::Cancelled => ApiError::unavailable("the request was cancelled"),
        other => other.into(),
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ChatRequest = parse_body(&state, body)?;
    let (engine, _) = state.ready()?;
    let stream = request.stream;
    let include_usage = request.include_usage();
    let images = state.images.clone();
    let input = tokio::task::spawn_blocking(move || request.into_input(&images))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let (tx, rx) = unbounded_channel();
    let run = start(&state);
    let work = Work::Chat(ChatWork {
        conversation: input.conversation,
        images: input.images,
        system_prompt: input.system_prompt,
        options: input.options,
        stop: input.stop,
        events: tx,
    });
    engine
        .submit(work, run.cancel.clone(), run.deadline)
        .map_err(|_| ApiError::busy())?;
    let id = format!("chatcmpl-{:016x}", rand_id());
    let model_id = state.options.model_id.clone();
    let created = unix_now();
    if stream {
        return Ok(chat_stream(rx, run, id, model_id, created, include_usage));
    }
    let mut rx = rx;
    let result = loop {
        match rx.recv().await {
            Some(ChatEvent::Delta(_)) => {}
            Some(ChatEvent::Done(r)) => break r,
            Some(ChatEvent::Failed(e)) => return Err(failure(e, &run)),
            None => return Err(ApiError::unavailable("the engine stopped")),
        }
    };
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model_id,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "finish_reason": result.finish_reason,
        }],
        "usage": usage(&result),
    }))
    .into_response())
}

fn usage(r: &ChatResult) -> serde_json::Value {
    json!({
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
    })
}

/// A request id's random part.
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Server-sent events from a task that `fill`s them: the stream ends when
/// the task does, and the task sees a closed channel once the client went
/// away (and then drops its [`Running`], which cancels the job).
fn sse<F>(fill: impl FnOnce(Sender<Result<Event, Infallible>>) -> F) -> Response
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (out, out_rx) = channel(16);
    tokio::spawn(fill(out));
    Sse::new(ReceiverStream::new(out_rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Sends one event; false once the client is gone.
async fn send(out: &Sender<Result<Event, Infallible>>, data: String) -> bool {
    out.send(Ok(Event::default().data(data))).await.is_ok()
}

/// `chat.completion.chunk` events, then `data: [DONE]`.
fn chat_stream(
    mut rx: UnboundedReceiver<ChatEvent>,
    run: Running,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
) -> Response {
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
        .to_string()
    };
    sse(move |out| async move {
        let run = run;
        if !send(
            &out,
            chunk(json!({"role": "assistant", "content": ""}), None),
        )
        .await
        {
            return;
        }
        while let Some(ev) = rx.recv().await {
            match ev {
                ChatEvent::Delta(text) => {
                    if !send(&out, chunk(json!({"content": text}), None)).await {
                        return;
                    }
                }
                ChatEvent::Done(r) => {
                    let mut last: serde_json::Value =
                        serde_json::from_str(&chunk(json!({}), Some(r.finish_reason)))
                            .unwrap_or_default();
                    if include_usage {
                        last["usage"] = usage(&r);
                    }
                    if send(&out, last.to_string()).await {
                        send(&out, "[DONE]".into()).await;
                    }
                    return;
                }
                ChatEvent::Failed(e) => {
                    if send(&out, failure(e, &run).body().to_string()).await {
                        send(&out, "[DONE]".into()).await;
                    }
                    return;
                }
            }
        }
    })
}

fn png_base64(img: &RgbImage) -> Result<String, ApiError> {
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ApiError::internal(format!("cannot encode a PNG: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(png))
}

/// The images as base64 PNGs, resized to `side` when asked.
fn encode_images(images: Vec<RgbImage>, side: Option<u32>) -> Result<Vec<String>, ApiError> {
    images
        .into_iter()
        .map(|img| match side {
            Some(s) => png_base64(&janus::resize_square(&img, s)?),
            None => png_base64(&img),
        })
        .collect()
}

async fn image_generations(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ImagesRequest = parse_body(&state, body)?;
    let (engine, model) = state.ready()?;
    let (options, side) = request.options(model.generated_image_size()?)?;
    let partial_images = if request.stream {
        request.previews()?
    } else {
        0
    };
    let (tx, mut rx) = unbounded_channel();
    let run = start(&state);
    let work = Work::Images(ImageWork {
        prompt: request.prompt,
        options,
        partial_images,
        events: tx,
    });
    engine
        .submit(work, run.cancel.clone(), run.deadline)
        .map_err(|_| ApiError::busy())?;
    let created = unix_now();
    if request.stream {
        return Ok(image_stream(
            rx,
            run,
            side,
            created,
            request.stream_progress,
        ));
    }
    let images = loop {
        match rx.recv().await {
            Some(ImageEvent::Step { .. } | ImageEvent::Partial { .. }) => {}
            Some(ImageEvent::Done(images)) => break images,
            Some(ImageEvent::Failed(e)) => return Err(failure(e, &run)),
            None => return Err(ApiError::unavailable("the engine stopped")),
        }
    };
    let encoded = tokio::task::spawn_blocking(move || encode_images(images, side))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    let data: Vec<_> = encoded
        .into_iter()
        .map(|b| json!({"b64_json": b}))
        .collect();
    Ok(Json(json!({"created": created, "data": data})).into_response())
}

/// `image_generation.completed` per image, once all are done, then
/// `data: [DONE]`; before, `image_generation.partial_image` per image and
/// preview asked for, and with `progress` `image_generation.progress` after
/// every step.
fn image_stream(
    mut rx: UnboundedReceiver<ImageEvent>,
    run: Running,
    side: Option<u32>,
    created: u64,
    progress: bool,
) -> Response {
    sse(move |out| async move {
        let run = run;
        while let Some(ev) = rx.recv().await {
            let events = match ev {
                ImageEvent::Step { .. } if out.is_closed() => return,
                ImageEvent::Step { step, total } if progress => {
                    let event =
                        json!({"type": "image_generation.progress", "step": step, "total": total});
                    if !send(&out, event.to_string()).await {
                        return;
                    }
                    continue;
                }
                ImageEvent::Step { .. } => continue,
                ImageEvent::Partial { index, images } => {
                    let encoded =
                        tokio::task::spawn_blocking(move || encode_images(images, side)).await;
                    let Ok(Ok(all)) = encoded else { continue };
                    for (i, b) in all.into_iter().enumerate() {
                        let event = json!({
                            "type": "image_generation.partial_image",
                            "b64_json": b,
                            "partial_image_index": index,
                            "index": i,
                            "created_at": created,
                            "output_format": "png",
                        });
                        if !send(&out, event.to_string()).await {
                            return;
                        }
                    }
                    continue;
                }
                ImageEvent::Done(images) => {
                    match tokio::task::spawn_blocking(move || encode_images(images, side)).await {
                        Ok(Ok(all)) => all
                            .into_iter()
                            .enumerate()
                            .map(|(i, b)| {
                                json!({
                                    "type": "image_generation.completed",
                                    "b64_json": b,
                                    "index": i,
                                    "created_at": created,
                                    "output_format": "png",
                                })
                                .to_string()
                            })
                            .collect::<Vec<_>>(),
                        Ok(Err(e)) => vec![e.body().to_string()],
                        Err(e) => vec![ApiError::internal(e.to_string()).body().to_string()],
                    }
                }
                ImageEvent::Failed(e) => vec![failure(e, &run).body().to_string()],
            };
            for data in events.into_iter().chain(["[DONE]".to_owned()]) {
                if !send(&out, data).await {
                    return;
                }
            }
            return;
        }
    })
}
