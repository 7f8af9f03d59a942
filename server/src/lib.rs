//! `janus serve`: Janus-Pro behind an OpenAI-compatible HTTP API (axum on
//! tokio), so any OpenAI client, Open WebUI or a script can ask about images
//! and generate them.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /health` | 503 while the model loads (or the server stops), then 200 `{"status":"ok"}` |
//! | `GET /v1/models` | the loaded model and its capabilities |
//! | `POST /v1/chat/completions` | answers about images (`stream` gives server-sent events) |
//! | `POST /v1/images/generations` | text to image, `b64_json` PNGs (`stream` gives events) |
//! | `GET /metrics` | Prometheus text |
//!
//! [`serve`] binds first and loads the model behind it, so `/health` can
//! answer while it loads. One [`engine::Engine`] owns the model.

#![warn(missing_docs)]

mod chat_rows;
mod engine;
mod error;
mod image_fetch;
mod image_rows;
mod openai;
mod routes;
mod web;
mod work;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use image_fetch::ImageFetcher;
use janus::{JanusError, JanusPro};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use engine::{Busy, Engine};
pub use image_fetch::ImageUrls;
pub use work::{ChatEvent, ChatResult, ChatWork, ImageEvent, ImageWork, Work};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to bind (loopback by default: expose it on purpose).
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Requests must send `Authorization: Bearer <key>` (compared in
    /// constant time) on the `/v1` routes.
    pub api_key: Option<String>,
    /// Requests held at once, running ones included; more get 429.
    pub max_queue: usize,
    /// Most chat completions answered together (one decoding step for all).
    pub max_batch: usize,
    /// A request running longer is cancelled (504).
    pub request_timeout: Option<Duration>,
    /// Largest request body (413 above).
    pub max_body_bytes: usize,
    /// The model's name in `/v1/models` and responses.
    pub model_id: String,
    /// Which `http(s)` image URLs chat requests may name (off: inline
    /// `data:` URLs only).
    pub image_urls: ImageUrls,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            max_queue: 64,
            max_batch: 8,
            request_timeout: None,
            max_body_bytes: 32 << 20,
            model_id: janus::DEFAULT_MODEL.into(),
            image_urls: ImageUrls::Off,
        }
    }
}

/// Where the server is: loading, serving, or failed to load.
enum Phase {
    Loading,
    Ready {
        engine: Engine,
        model: Arc<JanusPro>,
    },
    Failed(String),
}

/// What every handler sees.
pub(crate) struct AppState {
    phase: RwLock<Phase>,
    options: ServerOptions,
    created: u64,
    metrics: PrometheusHandle,
    images: Arc<ImageFetcher>,
}

impl AppState {
    /// The engine and model once loaded; else the 503 to answer.
    pub(crate) fn ready(&self) -> Result<(Engine, Arc<JanusPro>), error::ApiError> {
        match &*self.phase.read().unwrap_or_else(|e| e.into_inner()) {
            Phase::Ready { engine, model } => Ok((engine.clone(), model.clone())),
            Phase::Loading => Err(error::ApiError::unavailable("the model is loading")),
            Phase::Failed(e) => Err(error::ApiError::unavailable(format!(
                "the model failed to load: {e}"
            ))),
        }
    }
}

/// The process's Prometheus recorder (installed once: tests run several
/// servers in one process).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (an embedding
            // program's): then this one only renders what it saw, nothing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Binds `options.host:options.port`, calls `on_listening` with the bound
/// address, loads the model with `load` (on a blocking thread; `/health`
/// answers 503 meanwhile) and serves until `shutdown` completes; then stops
/// accepting connections and finishes the requests in flight. A model that
/// fails to load ends the server with its error.
pub async fn serve(
    options: ServerOptions,
    load: impl FnOnce() -> janus::Result<JanusPro> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> janus::Result<()> {
    let listener = tokio::net::TcpListener::bind((options.host.as_str(), options.port))
        .await
        .map_err(|e| {
            JanusError::Input(format!(
                "cannot listen on {}:{}: {e}",
                options.host, options.port
            ))
        })?;
    let addr = listener.local_addr()?;
    let capacity = options.max_queue;
    let max_batch = options.max_batch;
    let images = Arc::new(ImageFetcher::new(
        options.image_urls,
        options.max_body_bytes,
    ));
    let state = Arc::new(AppState {
        phase: RwLock::new(Phase::Loading),
        options,
        images,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        metrics: prometheus(),
    });
    on_listening(addr);

    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<JanusError>();
    let loader_state = state.clone();
    tokio::task::spawn_blocking(move || {
        let phase = match load() {
            Ok(model) => {
                let model = Arc::new(model);
                Phase::Ready {
                    engine: Engine::start(model.clone(), capacity, max_batch),
                    model,
                }
            }
            Err(e) => {
                let phase = Phase::Failed(e.to_string());
                let _ = failed_tx.send(e);
                phase
            }
        };
        *loader_state
            .phase
            .write()
            .unwrap_or_else(|e| e.into_inner()) = phase;
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = routes::router(state);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let mut stop_rx = stop_rx;
        let _ = stop_rx.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(async move { server.await });
    let load_failure = tokio::select! {
        _ = shutdown => None,
        Ok(e) = failed_rx => Some(e),
    };
    let _ = stop_tx.send(true);
    let _ = server.await;
    match load_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
