//! The console's static files, embedded in the binary (no build step, nothing to deploy).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The one stylesheet.
pub const CSS: &str = include_str!("console.css");

pub async fn css() -> Response {
    let mut resp = CSS.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
