//! API errors: one JSON shape, uniform bodies where distinguishing would leak.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::AuthFailure;
use crate::model::ErrorBody;
use crate::store::StoreError;

/// Everything a request can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// 401: no or bad credentials (same body for every cause).
    Unauthorized(AuthFailure),
    /// 403: authenticated, but the role may not do this (checked before any lookup).
    Forbidden,
    /// 404: unknown, or not visible to the caller (same body for both).
    NotFound,
    /// 400 with a message.
    BadRequest(String),
    /// 413.
    PayloadTooLarge(usize),
    /// 409 with a code and message.
    Conflict(&'static str, String),
    /// 410: the version was destroyed.
    Gone,
    /// 410: the blind-index generation was retired (answered like a destroyed version).
    IndexRetired,
    /// 500 (details only in the server log).
    Internal,
}

impl ApiError {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Conflict(..) => StatusCode::CONFLICT,
            Self::Gone | Self::IndexRetired => StatusCode::GONE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Outcome recorded in the audit log (may be more precise than the response).
    pub fn audit_outcome(&self) -> String {
        match self {
            Self::Unauthorized(f) => f.audit_code().to_owned(),
            Self::Conflict(code, _) => (*code).to_owned(),
            other => other.body().error,
        }
    }

    /// Response body.
    pub fn body(&self) -> ErrorBody {
        let (error, message) = match self {
            Self::Unauthorized(_) => ("unauthorized", "missing or invalid credentials".to_owned()),
            Self::Forbidden => (
                "forbidden",
                "the caller's role may not perform this action".to_owned(),
            ),
            Self::NotFound => ("not_found", "not found or access denied".to_owned()),
            Self::BadRequest(m) => ("bad_request", m.clone()),
            Self::PayloadTooLarge(max) => (
                "payload_too_large",
                format!("request body exceeds {max} bytes"),
            ),
            Self::Conflict(code, m) => (*code, m.clone()),
            Self::Gone => (
                "version_destroyed",
                "the key version was destroyed".to_owned(),
            ),
            Self::IndexRetired => (
                "index_generation_retired",
                "the blind-index generation was retired by a completed rotation".to_owned(),
            ),
            Self::Internal => ("internal", "internal error".to_owned()),
        };
        ErrorBody {
            error: error.to_owned(),
            message,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            StoreError::AlreadyExists => {
                Self::Conflict("already_exists", "a resource with that name exists".into())
            }
            StoreError::Conflict(code, m) => Self::Conflict(code, m),
            StoreError::Invalid(m) => Self::BadRequest(m),
            StoreError::Destroyed => Self::Gone,
            StoreError::IndexRetired => Self::IndexRetired,
            other => {
                tracing::error!(error = %other, "storage failure");
                Self::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), Json(self.body())).into_response();
        if matches!(self, Self::Unauthorized(_)) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
