//! OpenAI error objects: `{"error": {"message", "type", "param", "code"}}` with the status code
//! OpenAI's clients map to their exception classes (400 BadRequest, 401 Authentication,
//! 404 NotFound, 409 Conflict, 5xx InternalServer).

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pdq_producer::ProducerError;
use pdq_protocol::ErrorClass;
use pdq_store::StoreError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("No such {what}: '{id}'")]
    NotFound { what: &'static str, id: String },
    #[error("{message}")]
    Invalid { message: String, param: Option<&'static str> },
    #[error("The file is over this server's limit of {limit} bytes")]
    FileTooLarge { limit: u64 },
    #[error("The file has more than {limit} lines, this server's limit")]
    TooManyLines { limit: u64 },
    #[error("{0}")]
    Conflict(String),
    /// A body that is not multipart/form-data, or that breaks off.
    #[error("Invalid multipart body: {message}")]
    Multipart { status: StatusCode, message: String },
    #[error("Unknown request URL")]
    NoRoute,
    #[error("Method not allowed for this URL")]
    BadMethod,
    /// A task of the server itself stopped (a panic): a bug, not the request's fault.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Producer(#[from] ProducerError),
}

impl ApiError {
    pub(crate) fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
        ApiError::Invalid { message: message.into(), param: Some(param) }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::BadMethod => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Invalid { .. } | ApiError::TooManyLines { .. } => StatusCode::BAD_REQUEST,
            ApiError::FileTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Multipart { status, .. } => *status,
            ApiError::Store(e) => store_status(e),
            ApiError::Producer(ProducerError::Store(e)) => store_status(e),
            ApiError::Producer(ProducerError::Broker(_) | ProducerError::NoCluster(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Producer(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::Unauthorized(_) => Some("invalid_api_key"),
            ApiError::FileTooLarge { .. } => Some("file_too_large"),
            ApiError::TooManyLines { .. } => Some("too_many_lines"),
            ApiError::NoRoute => Some("unknown_url"),
            ApiError::Store(e) | ApiError::Producer(ProducerError::Store(e)) => Some(e.code()),
            ApiError::Producer(e) => Some(e.code()),
            _ => None,
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::Invalid { param, .. } => *param,
            ApiError::FileTooLarge { .. } | ApiError::TooManyLines { .. } | ApiError::Multipart { .. } => Some("file"),
            _ => None,
        }
    }

    fn error_type(&self) -> &'static str {
        if self.status().is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }
}

fn store_status(e: &StoreError) -> StatusCode {
    match e.class() {
        ErrorClass::Transient => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<MultipartError> for ApiError {
    fn from(e: MultipartError) -> Self {
        ApiError::Multipart { status: e.status(), message: e.body_text() }
    }
}

impl From<MultipartRejection> for ApiError {
    fn from(e: MultipartRejection) -> Self {
        ApiError::Multipart { status: e.status(), message: e.body_text() }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::Invalid { message: e.body_text(), param: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "api request failed");
        }
        let body = json!({"error": {
            "message": self.to_string(),
            "type": self.error_type(),
            "param": self.param(),
            "code": self.code(),
        }});
        crate::reply::json(status, &body)
    }
}
