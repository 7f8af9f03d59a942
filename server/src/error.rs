//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use janus::JanusError;
use serde_json::json;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's error type (`invalid_request_error`, ...).
    pub kind: &'static str,
    /// One line for the user.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A short machine-readable code.
    pub code: Option<&'static str>,
    /// Seconds after which to retry (429, 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into().replace('\n', " "),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: a value the server cannot use.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.map(str::to_owned);
        e
    }

    /// 401: no or a wrong API key.
    pub fn unauthorized() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or invalid API key (send Authorization: Bearer <key>)",
        );
        e.code = Some("invalid_api_key");
        e
    }

    /// 404: no such route.
    pub fn not_found(path: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no route {path}"),
        );
        e.code = Some("not_found");
        e
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "the request body is over the limit of {} MB (--max-body-mb)",
                limit >> 20
            ),
        );
        e.code = Some("request_too_large");
        e
    }

    /// 429: the queue is full.
    pub fn busy() -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "the server's queue is full; retry later",
        );
        e.code = Some("queue_full");
        e.retry_after = Some(1);
        e
    }

    /// 503: the model is loading, or the server is stopping.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.code = Some("unavailable");
        e.retry_after = Some(5);
        e
    }

    /// 500: the server failed (a worker task died, an image would not encode).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// 504: the request ran past `--request-timeout` and was cancelled.
    pub fn timeout() -> Self {
        let mut e = Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "the request ran past the server's time limit (--request-timeout) and was cancelled",
        );
        e.code = Some("timeout");
        e
    }

    /// The body, also sent as a server-sent event when a stream fails.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<JanusError> for ApiError {
    /// Bad input is the client's (400); anything else is the server's (500).
    fn from(e: JanusError) -> Self {
        match e {
            JanusError::Input(_) | JanusError::Image { .. } => Self::invalid(e.to_string(), None),
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}
