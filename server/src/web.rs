//! The page `janus serve` shows at `/`: plain HTML, CSS and JavaScript
//! compiled into the binary (no build step, nothing fetched from the
//! network). It uses only the public `/v1` API, so anything it does a
//! script can do; with `--api-key` it asks for the key.

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

const INDEX: &str = include_str!("web/index.html");
const SCRIPT: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/app.css");

/// Only this server's own files and the API: no inline script, no other origin.
const POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; \
                      style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `/`, `/app.js` and `/app.css`.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/app.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
