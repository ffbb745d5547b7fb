//! tonic answers a request it cannot decode with INTERNAL (malformed protobuf, invalid UTF-8
//! in a string field) or OUT_OF_RANGE (a message over the size limit): codes that tell a
//! client the server broke, or that a value was out of range, when the request itself was bad.
//! This response layer rewrites exactly those answers (recognised by the [`Status`] tonic
//! attaches to them and by tonic's own wording) to INVALID_ARGUMENT and RESOURCE_EXHAUSTED,
//! with a message naming the problem and the limit. Every other answer passes untouched.

use axum::http::Response;
use tonic::{Code, Status};

/// The largest request message the gRPC server decodes (tonic's default, 4 MiB).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The rewritten status for one of tonic's decode failures, or None for any other status.
pub fn client_fault(status: &Status) -> Option<Status> {
    let msg = status.message();
    match status.code() {
        // tonic-prost: `Status::internal(prost::DecodeError::to_string())`.
        Code::Internal if msg.starts_with("failed to decode Protobuf message") => {
            Some(Status::invalid_argument(format!(
                "the request is not a valid protobuf message of this RPC's type ({msg}); \
                 string fields must be UTF-8"
            )))
        }
        // tonic's decoder: "Error, decoded message length too large: found N bytes, the
        // limit is: M bytes".
        Code::OutOfRange if msg.starts_with("Error, decoded message length too large") => {
            let found = msg
                .split("found ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or("?");
            Some(Status::resource_exhausted(format!(
                "the request message is {found} bytes, over the limit of {MAX_REQUEST_BYTES} \
                 bytes; send long texts in several calls"
            )))
        }
        _ => None,
    }
}

/// For `tower::util::MapResponseLayer`: rewrites a trailers-only answer carrying one of
/// tonic's decode failures.
pub fn remap<B>(mut resp: Response<B>) -> Response<B> {
    let Some(better) = resp.extensions().get::<Status>().and_then(client_fault) else {
        return resp;
    };
    let headers = resp.headers_mut();
    headers.remove(Status::GRPC_MESSAGE);
    if better.add_header(headers).is_ok() {
        resp.extensions_mut().insert(better);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_failures_become_client_errors_and_others_pass() {
        let bad = Status::internal(
            "failed to decode Protobuf message: ClassifyRequest.text: invalid string value: data is not UTF-8 encoded",
        );
        let s = client_fault(&bad).unwrap();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("not UTF-8"), "{}", s.message());
        let big = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        let s = client_fault(&big).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "the request message is 5000000 bytes, over the limit of 4194304 bytes; send long \
             texts in several calls"
        );
        assert!(client_fault(&Status::internal("inference failed")).is_none());
        assert!(client_fault(&Status::out_of_range("page 9 of 3")).is_none());
    }

    #[test]
    fn the_layer_rewrites_headers_of_trailers_only_answers() {
        let resp: Response<()> =
            Status::internal("failed to decode Protobuf message: buffer underflow").into_http();
        let resp = remap(resp);
        assert_eq!(resp.headers()["grpc-status"], "3");
        let other: Response<()> = Status::unavailable("later").into_http();
        assert_eq!(remap(other).headers()["grpc-status"], "14");
    }
}
