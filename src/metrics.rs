//! Prometheus metrics and the `/metrics` HTTP endpoint (OpenMetrics text), on its own port so
//! scraping never competes with the gRPC listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

tokio::task_local! {
    /// The front door serving the current request; the service reads it when it counts the
    /// request, so the service itself needs no transport parameter.
    static TRANSPORT: &'static str;
}

/// Runs `fut` (a front door's service call) with its request metrics labelled `transport`.
pub async fn with_transport<F: Future>(transport: &'static str, fut: F) -> F::Output {
    TRANSPORT.scope(transport, fut).await
}

/// The current request's transport; "grpc" outside [`with_transport`] (the gRPC door and the
/// in-process callers).
fn transport() -> &'static str {
    TRANSPORT.try_with(|t| *t).unwrap_or("grpc")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Which front door took the request: "grpc" or "http" (see [`with_transport`]).
    pub transport: String,
    pub rpc: String,
    pub source: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub transport: String,
    pub rpc: String,
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub transport: String,
    /// The gRPC method, or the HTTP route (`POST /v1/classify`); `unknown` for other paths.
    pub rpc: String,
    /// The gRPC status code name ("OK", "RESOURCE_EXHAUSTED", ...); HTTP answers carry theirs.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    /// `overflow` (the bot's queue was full) or `expired` (too long past its send time).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateDiscardLabels {
    /// `review_queue`, `dropped_sends` or `delayed_jobs` (`playbook_state:` in the configuration).
    pub queue: String,
    /// The limit that discarded them: `max_entries`, `max_bytes` or `max_age`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WechatLabels {
    /// The configured account id (`wechat.accounts[].id`).
    pub account: String,
    /// reply, success, deferred, sent_late, send_failed, rate_limited, unsupported,
    /// url_verified, refused, error.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub version: String,
}

/// All service metrics. Cheap to update from any thread; share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    /// `intentd_requests_total{transport,rpc,source,action}`
    pub requests: Family<RequestLabels, Counter>,
    /// `intentd_request_duration_seconds{transport,rpc,source}`
    pub request_duration: Family<DurationLabels, Histogram>,
    /// `intentd_model_info{version}`: 1 for the model being served.
    pub model_info: Family<ModelLabels, Gauge>,
    /// `intentd_in_flight`: requests being answered now.
    pub in_flight: Gauge,
    /// `intentd_write_queue_depth`: records waiting for the store writer.
    pub write_queue_depth: Gauge,
    /// `intentd_write_queue_full_total`: records refused because the write queue was full.
    pub write_queue_full: Counter,
    /// `intentd_store_errors_total`: failed store commits.
    pub store_errors: Counter,
    /// `intentd_store_commit_seconds`: how long each store transaction took (what a request
    /// waits for after its decision, beside its turn in the queue).
    pub store_commit: Histogram,
    /// `intentd_store_commit_records`: records (log rows and state writes) per transaction.
    pub store_commit_records: Histogram,
    /// `intentd_outbound_dropped_total{reason}`: proactive sends dropped before any Subscribe
    /// stream took them.
    pub outbound_dropped: Family<DroppedLabels, Counter>,
    /// `intentd_outbound_queued`: proactive sends waiting for a Subscribe stream.
    pub outbound_queued: Gauge,
    /// `intentd_replayed_total`: retries answered with their stored first answer.
    pub replayed: Counter,
    /// `intentd_inference_queue_seconds`: how long a text waited for its forward pass (one
    /// observation per text that went through the model).
    pub inference_queue: Histogram,
    /// `intentd_forward_pass_seconds`: the forward pass a text rode in (per text, so a batch of
    /// n counts n times: the latency each caller saw).
    pub forward_pass: Histogram,
    /// `intentd_batch_texts`: the size of the batch each text rode in.
    pub batch_texts: Histogram,
    /// `intentd_wechat_callbacks_total{account,outcome}`: WeChat callbacks by how they ended.
    pub wechat_callbacks: Family<WechatLabels, Counter>,
    /// `intentd_responses_total{transport,rpc,code}`: every answer by status code, refusals
    /// included (`intentd_requests_total` counts decided requests only).
    pub responses: Family<ResponseLabels, Counter>,
    /// `intentd_store_healthy`: 1 while log commits succeed, 0 once they keep failing (the
    /// server then reports NOT_SERVING until a commit succeeds again).
    pub store_healthy: Gauge,
    /// `intentd_store_memory_bytes`: what the store's database library holds in memory (SQLite:
    /// page caches and statements of every connection), read after each commit.
    pub store_memory: Gauge,
    /// `intentd_state_discarded_total{queue,reason}`: records the playbook's in-memory queues
    /// discarded to stay within their limits.
    pub state_discarded: Family<StateDiscardLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency buckets from 100 µs to ~6.5 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("intentd");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<DurationLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let model_info = Family::<ModelLabels, Gauge>::default();
        let in_flight = Gauge::default();
        let write_queue_depth = Gauge::default();
        let write_queue_full = Counter::default();
        let store_errors = Counter::default();
        let store_commit = latency_histogram();
        let store_commit_records = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let outbound_dropped = Family::<DroppedLabels, Counter>::default();
        let outbound_queued = Gauge::default();
        let replayed = Counter::default();
        let inference_queue = latency_histogram();
        let forward_pass = latency_histogram();
        let batch_texts = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        let wechat_callbacks = Family::<WechatLabels, Counter>::default();
        let responses = Family::<ResponseLabels, Counter>::default();
        let store_healthy = Gauge::default();
        store_healthy.set(1);
        let store_memory = Gauge::default();
        let state_discarded = Family::<StateDiscardLabels, Counter>::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "requests",
            "Requests answered, by RPC, decision source and action",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Request latency, by RPC and decision source",
            Unit::Seconds,
            request_duration.clone(),
        );
        registry.register(
            "model_info",
            "Model version being served (value 1)",
            model_info.clone(),
        );
        registry.register(
            "in_flight",
            "Requests being answered now",
            in_flight.clone(),
        );
        registry.register(
            "write_queue_depth",
            "Records waiting for the store writer",
            write_queue_depth.clone(),
        );
        registry.register(
            "write_queue_full",
            "Records refused because the store write queue was full",
            write_queue_full.clone(),
        );
        registry.register("store_errors", "Failed store commits", store_errors.clone());
        registry.register_with_unit(
            "store_commit",
            "Duration of each store transaction (group commit)",
            Unit::Seconds,
            store_commit.clone(),
        );
        registry.register(
            "store_commit_records",
            "Records (log rows and playbook state writes) per store transaction",
            store_commit_records.clone(),
        );
        registry.register(
            "replayed",
            "Retried Classify / HandleEvent requests answered with their stored first answer",
            replayed.clone(),
        );
        registry.register(
            "outbound_dropped",
            "Proactive sends dropped before a Subscribe stream took them, by reason",
            outbound_dropped.clone(),
        );
        registry.register(
            "outbound_queued",
            "Proactive sends waiting for a Subscribe stream of their bot",
            outbound_queued.clone(),
        );
        registry.register_with_unit(
            "inference_queue",
            "Time a text waited for its forward pass (texts that went through the model)",
            Unit::Seconds,
            inference_queue.clone(),
        );
        registry.register_with_unit(
            "forward_pass",
            "Duration of the forward pass each text rode in",
            Unit::Seconds,
            forward_pass.clone(),
        );
        registry.register(
            "batch_texts",
            "Size of the batch each text rode in",
            batch_texts.clone(),
        );
        registry.register(
            "wechat_callbacks",
            "WeChat Official Account / WeCom callbacks, by account and how they ended",
            wechat_callbacks.clone(),
        );
        registry.register(
            "responses",
            "Answers by transport, RPC (or HTTP route) and status code, refusals included",
            responses.clone(),
        );
        registry.register(
            "store_healthy",
            "1 while log commits succeed; 0 while they keep failing (readiness NOT_SERVING)",
            store_healthy.clone(),
        );
        registry.register(
            "store_memory_bytes",
            "Bytes the store's database library holds in memory (SQLite page caches and statements)",
            store_memory.clone(),
        );
        registry.register(
            "state_discarded",
            "Records the playbook's in-memory queues discarded to stay within playbook_state limits, by queue and limit",
            state_discarded.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            model_info,
            in_flight,
            write_queue_depth,
            write_queue_full,
            store_errors,
            store_commit,
            store_commit_records,
            outbound_dropped,
            outbound_queued,
            replayed,
            inference_queue,
            forward_pass,
            batch_texts,
            wechat_callbacks,
            responses,
            store_healthy,
            store_memory,
            state_discarded,
        }
    }

    /// Counts one answer by its status code name.
    pub fn count_response(&self, transport: &str, rpc: &str, code: &str) {
        self.responses
            .get_or_create(&ResponseLabels {
                transport: transport.into(),
                rpc: rpc.into(),
                code: code.into(),
            })
            .inc();
    }

    /// Where a model answer's time went: the wait for a batch, the forward pass, the batch.
    pub fn observe_inference(&self, queue_us: u64, inference_us: u64, batch_size: usize) {
        self.inference_queue.observe(queue_us as f64 / 1e6);
        self.forward_pass.observe(inference_us as f64 / 1e6);
        self.batch_texts.observe(batch_size as f64);
    }

    /// Counts one WeChat callback outcome.
    pub fn count_wechat(&self, account: &str, outcome: &str) {
        self.wechat_callbacks
            .get_or_create(&WechatLabels {
                account: account.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts one answered request and its latency.
    pub fn observe_request(&self, rpc: &str, source: &str, action: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                transport: transport().into(),
                rpc: rpc.into(),
                source: source.into(),
                action: action.into(),
            })
            .inc();
        self.request_duration
            .get_or_create(&DurationLabels {
                transport: transport().into(),
                rpc: rpc.into(),
                source: source.into(),
            })
            .observe(seconds);
    }

    /// Marks `version` as the served model (the previous version's series disappears).
    pub fn set_model_version(&self, version: &str) {
        self.model_info.clear();
        self.model_info
            .get_or_create(&ModelLabels {
                version: version.into(),
            })
            .set(1);
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn in_flight_guard(&self) -> InFlightGuard {
        self.in_flight.inc();
        InFlightGuard {
            gauge: self.in_flight.clone(),
        }
    }

    /// The OpenMetrics text exposition, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Decrements `intentd_in_flight` on drop (also when a request future is cancelled).
#[derive(Debug)]
pub struct InFlightGuard {
    gauge: Gauge,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], metrics.encode())
}

/// The `/metrics` router, for callers that build their own server.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(metrics)
}

/// Serves `GET /metrics` on `addr` until `shutdown` completes.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for /metrics on {addr}: {e}"))?;
    serve_metrics_on(listener, metrics, shutdown).await
}

/// Like [`serve_metrics`] on an already bound listener (port 0 in tests).
pub async fn serve_metrics_on(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn is_metric_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Parses `k="v",k="v"` (values may hold escaped quotes); None when malformed.
    fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let eq = rest.find('=')?;
            let key = &rest[..eq];
            if !is_metric_name(key) || key.contains(':') {
                return None;
            }
            let after = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => value.push(chars.next()?.1),
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            out.push((key.to_string(), value));
            rest = &after[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.is_empty() {
                return None;
            }
        }
        Some(out)
    }

    /// A strict check of the OpenMetrics text format; returns samples keyed by
    /// `name{labels}`. Panics with the offending line when something is off.
    fn parse_openmetrics(text: &str) -> HashMap<String, f64> {
        let mut samples = HashMap::new();
        let mut family: Option<(String, String)> = None; // (name, type)
        let mut lines = text.lines().peekable();
        let mut saw_eof = false;
        while let Some(line) = lines.next() {
            assert!(!saw_eof, "content after # EOF: {line}");
            if line == "# EOF" {
                assert!(lines.peek().is_none(), "# EOF must be the last line");
                saw_eof = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (kind, name, arg) = (
                    parts.next().unwrap(),
                    parts.next().unwrap_or(""),
                    parts.next(),
                );
                assert!(is_metric_name(name), "bad name in: {line}");
                match kind {
                    "TYPE" => {
                        let t = arg.unwrap_or("");
                        assert!(
                            [
                                "counter",
                                "gauge",
                                "histogram",
                                "info",
                                "summary",
                                "unknown",
                                "stateset",
                                "gaugehistogram"
                            ]
                            .contains(&t),
                            "bad type in: {line}"
                        );
                        family = Some((name.to_string(), t.to_string()));
                    }
                    "HELP" | "UNIT" => assert!(arg.is_some(), "empty {kind}: {line}"),
                    _ => panic!("unknown descriptor: {line}"),
                }
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value: {line}"));
            let v: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in: {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (
                    n,
                    parse_labels(l.strip_suffix('}').expect("closing brace")).expect(line),
                ),
                None => (series, Vec::new()),
            };
            assert!(is_metric_name(name), "bad sample name: {line}");
            let (fam, ty) = family
                .as_ref()
                .unwrap_or_else(|| panic!("sample before # TYPE: {line}"));
            let suffix = name
                .strip_prefix(fam.as_str())
                .unwrap_or_else(|| panic!("{name} outside family {fam}"));
            let allowed: &[&str] = match ty.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_count", "_sum", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            assert!(
                allowed.contains(&suffix),
                "suffix '{suffix}' not allowed for a {ty}: {line}"
            );
            if suffix == "_bucket" {
                assert!(
                    labels.iter().any(|(k, _)| k == "le"),
                    "bucket without le: {line}"
                );
            }
            samples.insert(series.to_string(), v);
        }
        assert!(saw_eof, "exposition must end with # EOF");
        samples
    }

    #[test]
    fn families_have_the_documented_names() {
        let m = Metrics::new();
        m.observe_request("Classify", "model", "reply", 0.003);
        m.observe_request("Classify", "model", "reply", 0.2);
        m.set_model_version("v1");
        m.set_model_version("v2");
        {
            let _g = m.in_flight_guard();
            assert_eq!(m.in_flight.get(), 1);
        }
        assert_eq!(m.in_flight.get(), 0);
        m.write_queue_full.inc();
        let s = parse_openmetrics(&m.encode());
        assert_eq!(
            s[r#"intentd_requests_total{transport="grpc",rpc="Classify",source="model",action="reply"}"#],
            2.0
        );
        assert_eq!(
            s[r#"intentd_request_duration_seconds_count{transport="grpc",rpc="Classify",source="model"}"#],
            2.0
        );
        assert_eq!(s[r#"intentd_model_info{version="v2"}"#], 1.0);
        assert!(!s.contains_key(r#"intentd_model_info{version="v1"}"#));
        assert_eq!(s["intentd_write_queue_full_total"], 1.0);
        assert_eq!(s["intentd_in_flight"], 0.0);
        assert_eq!(s["intentd_write_queue_depth"], 0.0);
        assert_eq!(s["intentd_store_errors_total"], 0.0);
    }

    #[test]
    fn the_checker_rejects_broken_text() {
        for bad in [
            "# TYPE x counter\nx_total 1\n",                   // no EOF
            "# TYPE x counter\nx_total one\n# EOF\n",          // bad value
            "# TYPE x counter\ny_total 1\n# EOF\n",            // outside its family
            "# TYPE x gauge\nx{a=\"1\" 1\n# EOF\n",            // broken labels
            "# TYPE x counter\nx_total 1\n# EOF\nx_total 2\n", // after EOF
        ] {
            assert!(
                std::panic::catch_unwind(|| parse_openmetrics(bad)).is_err(),
                "accepted: {bad}"
            );
        }
    }

    #[tokio::test]
    async fn scrape_over_a_real_socket_parses_as_openmetrics() {
        let metrics = Arc::new(Metrics::new());
        metrics.observe_request("Classify", "keyword", "handoff", 0.000_35);
        metrics.observe_request("Feedback", "", "", 0.001);
        metrics.set_model_version("bert-zh-2025.1");
        metrics.write_queue_depth.set(3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics_on(listener, metrics.clone(), async {
            let _ = stop_rx.await;
        }));

        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let ct = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_string())
            })
            .expect("content-type header");
        assert_eq!(ct, CONTENT_TYPE_OPENMETRICS);
        let s = parse_openmetrics(body);
        assert_eq!(
            s[r#"intentd_requests_total{transport="grpc",rpc="Classify",source="keyword",action="handoff"}"#],
            1.0
        );
        assert_eq!(
            s[r#"intentd_request_duration_seconds_bucket{le="0.0004",transport="grpc",rpc="Classify",source="keyword"}"#],
            1.0
        );
        assert_eq!(s[r#"intentd_model_info{version="bert-zh-2025.1"}"#], 1.0);
        assert_eq!(s["intentd_write_queue_depth"], 3.0);

        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
