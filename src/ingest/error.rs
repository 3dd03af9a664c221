//! Ingest errors and the JSON body every refusal carries.

use crate::event::parse::{Location, ParseError};
use crate::outbox::AppendError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A refused request: status, a stable code (also the metric's `reason`) and a message.
#[derive(Debug)]
pub struct IngestError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub location: Location,
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
}

impl IngestError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        IngestError {
            status,
            code,
            message: message.into(),
            location: Location::Whole,
            retry_after_secs: None,
        }
    }
}

impl From<ParseError> for IngestError {
    fn from(error: ParseError) -> Self {
        let status = if error.is_too_large() {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        IngestError {
            status,
            code: error.code,
            message: error.to_string(),
            location: error.location,
            retry_after_secs: None,
        }
    }
}

impl From<AppendError> for IngestError {
    fn from(error: AppendError) -> Self {
        let message = error.to_string();
        match error {
            AppendError::Full { retry_after, .. } => IngestError {
                retry_after_secs: Some(retry_after.as_secs().max(1)),
                ..IngestError::new(StatusCode::SERVICE_UNAVAILABLE, "outbox_full", message)
            },
            AppendError::LargerThanQuota(_) => {
                IngestError::new(StatusCode::PAYLOAD_TOO_LARGE, "larger_than_outbox", message)
            }
            AppendError::DiskFull(_) => IngestError {
                retry_after_secs: Some(5),
                ..IngestError::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", message)
            },
            AppendError::Storage(_) => IngestError {
                retry_after_secs: Some(1),
                ..IngestError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_error", message)
            },
            AppendError::Closed => IngestError {
                retry_after_secs: Some(1),
                ..IngestError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            },
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let (index, line) = match self.location {
            Location::Whole => (None, None),
            Location::Index(i) => (Some(i), None),
            Location::Line(l) => (None, Some(l)),
        };
        let body = Body {
            error: self.code,
            message: &self.message,
            index,
            line,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: not reusable.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
