//! Errors in the OpenAI error shape: `{"error": {"message", "type", "param", "code"}}`,
//! with the HTTP status a client library maps to its exception.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `code` (`context_length_exceeded`, ...), when there is one.
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
}

impl ApiError {
    /// A request the server cannot take as written (400).
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), code: None, param: None }
    }

    /// A bad value of one field (400, naming it).
    pub fn param(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { param: Some(param), ..ApiError::bad(message) }
    }

    pub fn status(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), code: None, param: None }
    }

    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The queue is full (503, with Retry-After).
    pub fn busy() -> ApiError {
        ApiError::status(StatusCode::SERVICE_UNAVAILABLE, "the server is busy: every slot and queue place is taken")
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 405 | 413 | 415 | 422 => "invalid_request_error",
            503 => "server_busy",
            504 => "timeout",
            _ => "server_error",
        }
    }

    /// The error body as an SSE event's data, for a stream that has already started.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// A request body as JSON of type `T`: the JSON error names the line and column, a field
/// of the wrong type names the field (serde's message).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}
