//! The one error body of the HTTP front door, `{"error": {"code", "message", "field"}}`, and the
//! one mapping from a gRPC code to an HTTP status. Service errors get their gRPC code from
//! `convert::code` (shared with the gRPC door); transport problems (bad JSON, content type,
//! body size, route, method) get theirs here.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tonic::Code;
use utoipa::ToSchema;

use crate::server::convert;
use crate::service::ServiceError;

/// Seconds a client should wait after RESOURCE_EXHAUSTED (admission is immediate, so a short
/// backoff is enough; clients add their own jitter).
pub const RETRY_AFTER_S: u32 = 1;

/// The error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The gRPC status code name, e.g. "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED".
    pub code: String,
    /// What is wrong, naming the field and the limit where there is one.
    pub message: String,
    /// The request field at fault, or null.
    pub field: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

/// The HTTP status of a gRPC code: written once. FAILED_PRECONDITION is 409 Conflict (the
/// request is fine, the server's state refuses it: store off, a broken reload).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical upper-case gRPC code name, "INVALID_ARGUMENT" for `Code::InvalidArgument`, as in
/// the gRPC spec and the proto comments (the names clients know; also the load generator's).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            status: http_status(code),
            message: message.into(),
            field: None,
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.to_string()),
            ..Self::new(Code::InvalidArgument, message)
        }
    }

    /// A transport problem with its own HTTP status (413, 415, 404, 405).
    pub fn with_status(code: Code, status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            ..Self::new(code, message)
        }
    }

    pub fn deadline(ms: u64) -> Self {
        Self::new(
            Code::DeadlineExceeded,
            format!("deadline of {ms} ms exceeded (timeout_ms / X-Timeout-Ms, at most the server's request_timeout_ms)"),
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let code = convert::code(&e);
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        let field = match &e {
            ServiceError::Invalid(f) => Some(f.field.clone()),
            _ => None,
        };
        ApiError {
            field,
            ..Self::new(code, e.to_string())
        }
    }
}

/// Authentication and permission errors come as gRPC statuses from the shared authenticator.
impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        Self::new(s.code(), s.message())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::with_status(
                Code::InvalidArgument,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON with `Content-Type: application/json`",
            ),
            JsonRejection::JsonSyntaxError(e) => ApiError::new(
                Code::InvalidArgument,
                format!("malformed JSON: {}", source_text(&e)),
            ),
            JsonRejection::JsonDataError(e) => {
                let text = source_text(&e);
                ApiError {
                    field: field_in(&text),
                    ..ApiError::new(Code::InvalidArgument, format!("invalid JSON body: {text}"))
                }
            }
            other => {
                ApiError::with_status(Code::InvalidArgument, other.status(), other.body_text())
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        let text = source_text(&r);
        ApiError {
            field: field_in(&text),
            ..ApiError::new(
                Code::InvalidArgument,
                format!("invalid query string: {text}"),
            )
        }
    }
}

/// A body over `http.max_body_bytes` (the extractor knows the limit and names it).
pub fn too_large(limit: usize) -> ApiError {
    ApiError::with_status(
        Code::ResourceExhausted,
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than http.max_body_bytes ({limit} bytes)"),
    )
}

/// The innermost error text (serde's message with line and column), not axum's wrapper.
fn source_text(e: &dyn std::error::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The field serde names in "missing field `text`", "unknown field `txt`", or the path of a
/// type error ("user.vip_level: invalid type ...").
fn field_in(text: &str) -> Option<String> {
    let after_tick = |marker: &str| {
        text.split_once(marker)
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(f, _)| f.to_string())
    };
    after_tick("missing field `")
        .or_else(|| after_tick("unknown field `"))
        .or_else(|| {
            // serde_path_to_error style "a.b: message" (axum's JsonDataError uses it).
            text.split_once(": ")
                .map(|(path, _)| path)
                .filter(|p| {
                    !p.is_empty()
                        && *p != "."
                        && p.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']')
                        })
                })
                .map(String::from)
        })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry =
            self.code == Code::ResourceExhausted && self.status == StatusCode::TOO_MANY_REQUESTS;
        let body = ErrorBody {
            error: ErrorDetail {
                code: code_name(self.code).to_string(),
                message: self.message,
                field: self.field,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        // For `intentd_responses_total`: the code, not guessed back from the HTTP status.
        resp.extensions_mut().insert(self.code);
        resp
    }
}

/// The gRPC code of an HTTP answer that is not an [`ApiError`] (axum's own refusals, the
/// WeChat callback's plain answers): the usual HTTP-to-gRPC mapping.
pub fn code_of_status(status: StatusCode) -> Code {
    match status.as_u16() {
        200..=399 => Code::Ok,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 | 501 => Code::Unimplemented,
        409 => Code::Aborted,
        413 | 429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        // 400, 415 and the other client errors.
        400..=499 => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mapped_code_has_its_status() {
        for (code, status) in [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 409),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
        ] {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn service_errors_keep_their_field() {
        let e: ApiError = ServiceError::Invalid(crate::service::validate::InvalidField {
            field: "text".into(),
            problem: "is empty".into(),
        })
        .into();
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (400, Some("text")));
        let busy: ApiError = ServiceError::Busy("full".into()).into();
        let resp = busy.into_response();
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn serde_messages_name_the_field() {
        assert_eq!(
            field_in("missing field `text` at line 1 column 2").as_deref(),
            Some("text")
        );
        assert_eq!(
            field_in("unknown field `txt`, expected one of").as_deref(),
            Some("txt")
        );
        assert_eq!(
            field_in("user.vip_level: invalid type: string \"x\", expected u32").as_deref(),
            Some("user.vip_level")
        );
        assert_eq!(field_in("expected value at line 1 column 1"), None);
    }
}
