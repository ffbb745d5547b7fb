//! `intentd_responses_total{transport="grpc",rpc,code}`: every gRPC answer counted by its status
//! code, refusals (RESOURCE_EXHAUSTED, UNAUTHENTICATED, decode errors) included, so an operator
//! sees what clients were told and not only what the service decided.
//!
//! A tower layer around the whole gRPC server: it sees every call, also the ones the services
//! never reach. An error is a trailers-only answer (`grpc-status` in the headers) and is counted
//! at once; any other answer is counted from the `grpc-status` of its trailers when the body
//! ends, or CANCELLED when the body is dropped before that (the client went away). The `rpc`
//! label is the method name for the methods this server offers and `unknown` for any other
//! path, so a client cannot grow the label set.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, Request, Response};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::Message;
use tonic::body::Body;
use tonic::Code;

use crate::metrics::Metrics;
use crate::server::http::error::code_name;

/// Method names by request path (`/intentd.v1.IntentService/Classify` → `Classify`).
#[derive(Debug, Default)]
pub struct KnownRpcs(HashMap<String, Arc<str>>);

impl KnownRpcs {
    /// Every method of the descriptor sets the server registers (intentd, health, reflection).
    pub fn of_this_server() -> Self {
        let mut known = KnownRpcs::default();
        for set in [
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            known.add_descriptor_set(set);
        }
        known
    }

    fn add_descriptor_set(&mut self, encoded: &[u8]) {
        // The sets are compiled in; one that does not decode would add no names, not fail.
        let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
            return;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    let name = method.name.unwrap_or_default();
                    let path = format!("/{package}.{service_name}/{name}");
                    self.0.insert(path, name.into());
                }
            }
        }
    }

    pub fn name(&self, path: &str) -> Arc<str> {
        self.0
            .get(path)
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    }
}

/// See the module doc.
#[derive(Clone)]
pub struct CountResponsesLayer {
    metrics: Arc<Metrics>,
    rpcs: Arc<KnownRpcs>,
}

impl CountResponsesLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            rpcs: Arc::new(KnownRpcs::of_this_server()),
        }
    }
}

impl<S> tower::Layer<S> for CountResponsesLayer {
    type Service = CountResponses<S>;
    fn layer(&self, inner: S) -> CountResponses<S> {
        CountResponses {
            inner,
            metrics: self.metrics.clone(),
            rpcs: self.rpcs.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CountResponses<S> {
    inner: S,
    metrics: Arc<Metrics>,
    rpcs: Arc<KnownRpcs>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<Request<B>> for CountResponses<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let rpc = self.rpcs.name(req.uri().path());
        let metrics = self.metrics.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            if let Some(code) = status_code(resp.headers()) {
                metrics.count_response("grpc", &rpc, code_name(code));
                return Ok(resp);
            }
            Ok(resp.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    counter: Some((metrics, rpc)),
                })
            }))
        })
    }
}

fn status_code(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// A streamed answer's body: counts its final status once.
struct CountedBody {
    inner: Body,
    /// Taken when counted.
    counter: Option<(Arc<Metrics>, Arc<str>)>,
}

impl CountedBody {
    fn count(&mut self, code: &str) {
        if let Some((metrics, rpc)) = self.counter.take() {
            metrics.count_response("grpc", &rpc, code);
        }
    }
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).unwrap_or(Code::Unknown);
                    self.count(code_name(code));
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = code_name(status.code());
                self.count(code);
            }
            // Ended without trailers: gRPC always sends them, so this is not a known status.
            Poll::Ready(None) => self.count(code_name(Code::Unknown)),
            Poll::Pending => {}
        }
        polled
    }

    // Never "ended" up front: `Body::new` would drop an ended body unpolled, uncounted.
    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    /// Dropped before its trailers: the client cancelled or disconnected.
    fn drop(&mut self) {
        self.count(code_name(Code::Cancelled));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_method_names_and_anything_else_to_unknown() {
        let rpcs = KnownRpcs::of_this_server();
        let name = |p: &str| rpcs.name(p).to_string();
        assert_eq!(name("/intentd.v1.IntentService/Classify"), "Classify");
        assert_eq!(name("/intentd.v1.AdminService/Reload"), "Reload");
        assert_eq!(name("/grpc.health.v1.Health/Check"), "Check");
        assert_eq!(
            name("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "ServerReflectionInfo"
        );
        assert_eq!(name("/intentd.v1.IntentService/Nope"), "unknown");
        assert_eq!(name(&format!("/{}", "x".repeat(10_000))), "unknown");
    }
}
