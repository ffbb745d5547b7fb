//! `intentd bench`: a load generator for Classify over gRPC (or HTTP/JSON `POST /v1/classify`
//! with `--http`), so anyone can measure a running server the same way the project's own
//! figures were measured.
//!
//! Two ways to load a server:
//! - closed loop (`--concurrency N`): N clients, each sending its next request as soon as the
//!   previous answer arrives. Finds the maximum throughput; latency is per request.
//! - open loop (`--rate R`): requests start on a fixed schedule whatever the server does, the
//!   way real users behave. Latency is measured from the *scheduled* start, so a server that
//!   stalls is charged for the requests that queued behind the stall (no coordinated omission).
//!
//! Latencies go into HDR histograms (microsecond resolution, 3 significant digits), so the tail
//! percentiles are exact to 0.1 % and memory stays constant however long the run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Semaphore;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use intentd::clock::{Clock, SystemClock};
use intentd::data::texts::read_texts;
use intentd::pb;
use intentd::pb::intent_service_client::IntentServiceClient;
use intentd::server::http::error::code_name;

/// Upper bounds on the arguments, so a typo cannot start an endless or machine-filling run.
const MAX_DURATION_S: f64 = 3600.0;
const MAX_CONCURRENCY: usize = 10_000;
const MAX_RATE: f64 = 1_000_000.0;
const MAX_CONNECTIONS: usize = 256;
/// The histogram's range: 1 µs to 1 hour.
const HIST_MAX_US: u64 = 3_600_000_000;

/// Load a running intentd with Classify calls and report throughput, latency and errors.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Server address, HOST:PORT (or a full http:// URI). Several, comma-separated, spread
    /// the connections round-robin over replicas (gRPC only).
    #[arg(long)]
    pub addr: String,
    /// Texts to send: a TSV with a `text` header (first column is used) or one text per line.
    /// Requests cycle through the texts in order.
    #[arg(long)]
    pub texts: PathBuf,
    /// Closed loop: this many clients, each sending back-to-back (the default, with 1 client).
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: start this many requests per second on a fixed schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to measure, in seconds.
    #[arg(long)]
    pub duration: f64,
    /// Run the same load this long first and discard it (connection set-up, lazy init, caches).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Bot token, sent as `authorization: Bearer TOKEN`.
    #[arg(long, env = "INTENTD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// bot_id of every request.
    #[arg(long, default_value = "demo")]
    pub bot_id: String,
    /// Requests are spread over this many chat ids (bench-chat-0 ...), like many groups.
    #[arg(long, default_value_t = 64)]
    pub chats: usize,
    /// ... and this many user ids (bench-user-0 ...).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// HTTP/2 connections to open (0: one per client up to 16 in closed loop, 4 in open loop).
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// Open loop: most requests outstanding at once. When reached, the schedule waits (and the
    /// wait counts in the latency); requests still unsent at the end are reported as `not_sent`.
    #[arg(long, default_value_t = 512)]
    pub max_outstanding: usize,
    /// Per-request deadline in milliseconds (sent as grpc-timeout and enforced by the client);
    /// a late answer counts as DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// First wait up to this many seconds for the server's gRPC health check to report SERVING
    /// (the model is loaded); the wait is reported as `serving_wait_ms`. 0: do not wait.
    #[arg(long, default_value_t = 0.0)]
    pub wait_serving: f64,
    /// Threads of the load generator itself. One is the default: on a small machine shared
    /// with the server, every extra client thread takes CPU from the server and adds
    /// cross-thread wake-ups to each measured request.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Send the same requests as HTTP/JSON `POST /v1/classify` to --addr (the server's
    /// `http.listen`), over HTTP/1.1 keep-alive connections (one per outstanding request).
    /// --wait-serving then polls `GET /readyz`.
    #[arg(long)]
    pub http: bool,
}

impl LoadgenArgs {
    /// The runtime the load generator runs on (`--client-threads`).
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime> {
        let rt = if self.client_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.client_threads)
                .enable_all()
                .build()?
        };
        Ok(rt)
    }
}

/// The health-check service name whose status means "Classify answers from the model".
pub const HEALTH_SERVICE: &str = "intentd.v1.IntentService";

/// How the load was applied.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    Closed { clients: usize },
    Open { rate: f64, max_outstanding: usize },
}

/// The outcome of one measured run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// "closed" or "open".
    pub mode: String,
    pub addr: String,
    /// Distinct texts in the texts file.
    pub texts: usize,
    pub concurrency: Option<usize>,
    pub target_rate: Option<f64>,
    pub duration_s: f64,
    /// Wall time from the first request to the last answer.
    pub elapsed_s: f64,
    pub sent: u64,
    /// Sent requests that got an answer or an error.
    pub completed: u64,
    pub ok: u64,
    /// Total errors; `errors_by_code` splits them by gRPC code.
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    /// One message per error code, as the server (or client) worded it.
    pub error_samples: BTreeMap<String, String>,
    /// Open loop: requests scheduled within the duration that were never sent because
    /// `max_outstanding` requests were still waiting for answers.
    pub not_sent: u64,
    /// Successful answers per second.
    pub requests_per_s: f64,
    /// Answers of any kind (ok and errors) per second.
    pub completed_per_s: f64,
    /// "send" (closed loop) or "schedule" (open loop): where each latency starts.
    pub latency_from: String,
    /// Latency of successful requests, in milliseconds (null when none succeeded).
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// The server's own `timings.total_us`, when it reports it.
    pub server_p50_ms: Option<f64>,
    pub server_p99_ms: Option<f64>,
    /// Where the server's time went (its `timings`): waiting for a batch, and the forward pass
    /// of the batch the request rode in.
    pub server_queue_p50_ms: Option<f64>,
    pub server_queue_p99_ms: Option<f64>,
    pub server_inference_p50_ms: Option<f64>,
    pub server_inference_p99_ms: Option<f64>,
    /// Open loop: the longest a request started after its scheduled time (the client's own lag).
    pub max_send_lag_ms: f64,
    /// Successful answers by `source` (MODEL, KEYWORD, ...), as counts and as shares of `ok`.
    pub source_counts: BTreeMap<String, u64>,
    pub source_share: BTreeMap<String, f64>,
    /// With `--wait-serving`: how long this run waited for SERVING, and the wall-clock time
    /// (Unix ms) it was first seen, so a script can time a cold start from the server's launch.
    pub serving_wait_ms: Option<f64>,
    pub serving_at_unix_ms: Option<i64>,
}

/// Runs the load described by `args`, prints the report (text or JSON) to stdout and returns it.
/// Fails when the arguments or texts are unusable, the server cannot be reached, or not a
/// single request succeeded (the report is printed first, so the errors are visible).
pub async fn run(args: LoadgenArgs) -> Result<LoadReport> {
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    if report.ok == 0 {
        bail!(
            "no request succeeded ({} errors); see the report above",
            report.errors
        );
    }
    Ok(report)
}

/// Runs the load and returns the report without printing it.
pub async fn measure(args: &LoadgenArgs) -> Result<LoadReport> {
    let load = check_args(args)?;
    let texts = Arc::new(read_texts(&args.texts)?);
    let auth = match args.token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(
            MetadataValue::try_from(format!("Bearer {t}"))
                .context("--token contains characters that cannot go in a gRPC header")?,
        ),
        None => None,
    };
    let connections = match (args.connections, load) {
        (0, Load::Closed { clients }) => clients.min(16),
        (0, Load::Open { .. }) => 4,
        (n, _) => n,
    };
    let uris: Vec<String> = args
        .addr
        .split(',')
        .map(|a| endpoint_uri(a.trim()))
        .collect();
    let uri = uris.join(",");
    // At least one connection to every replica.
    let connections = connections.max(uris.len());
    let serving = if args.wait_serving > 0.0 {
        let within = Duration::from_secs_f64(args.wait_serving);
        let mut waited = Duration::ZERO;
        for u in &uris {
            waited = waited.max(if args.http {
                wait_ready_http(u, within).await?
            } else {
                wait_serving(u, HEALTH_SERVICE, within).await?
            });
        }
        Some((waited, SystemClock.now_ms()))
    } else {
        None
    };
    let channels = if args.http {
        vec![Target::Http(connect_http(&uri).await?)]
    } else {
        let mut channels = Vec::with_capacity(connections);
        // Connection i goes to replica i mod n: calls are spread evenly.
        for (k, u) in uris.iter().enumerate() {
            let n = connections / uris.len() + usize::from(k < connections % uris.len());
            channels.extend(connect(u, n).await?.into_iter().map(Target::Grpc));
        }
        interleave(channels, uris.len())
    };
    let ctx = Arc::new(RequestFactory {
        texts,
        bot_id: args.bot_id.clone(),
        chats: args.chats.max(1),
        users: args.users.max(1),
        // Unique per run, so message ids never repeat across runs against the same server.
        run_id: SystemClock.now_ms(),
        seq: AtomicU64::new(0),
        auth,
        timeout: Duration::from_millis(args.timeout_ms),
    });

    if args.warmup > 0.0 {
        run_phase(load, &channels, &ctx, Duration::from_secs_f64(args.warmup)).await;
    }
    let phase = run_phase(
        load,
        &channels,
        &ctx,
        Duration::from_secs_f64(args.duration),
    )
    .await;
    let mut report = phase.into_report(load, &uri, ctx.texts.len(), args.duration);
    if let Some((waited, at)) = serving {
        report.serving_wait_ms = Some(waited.as_secs_f64() * 1000.0);
        report.serving_at_unix_ms = Some(at);
    }
    Ok(report)
}

fn check_args(args: &LoadgenArgs) -> Result<Load> {
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION_S) {
        bail!(
            "--duration must be more than 0 and at most {MAX_DURATION_S} seconds, got {}",
            args.duration
        );
    }
    if !(args.warmup >= 0.0 && args.warmup <= MAX_DURATION_S) {
        bail!(
            "--warmup must be between 0 and {MAX_DURATION_S} seconds, got {}",
            args.warmup
        );
    }
    if !(args.wait_serving >= 0.0 && args.wait_serving <= MAX_DURATION_S) {
        bail!(
            "--wait-serving must be between 0 and {MAX_DURATION_S} seconds, got {}",
            args.wait_serving
        );
    }
    if args.timeout_ms == 0 {
        bail!("--timeout-ms must be at least 1");
    }
    if args.connections > MAX_CONNECTIONS {
        bail!(
            "--connections must be at most {MAX_CONNECTIONS}, got {}",
            args.connections
        );
    }
    if args.bot_id.trim().is_empty() {
        bail!("--bot-id must not be empty");
    }
    let addrs = args.addr.split(',').count();
    if args.addr.split(',').any(|a| a.trim().is_empty()) {
        bail!("--addr has an empty address in '{}'", args.addr);
    }
    if addrs > 1 && args.http {
        bail!("--http takes one --addr, got {addrs}");
    }
    if addrs > MAX_CONNECTIONS {
        bail!("--addr names {addrs} servers; at most {MAX_CONNECTIONS}");
    }
    match (args.concurrency, args.rate) {
        (Some(_), Some(_)) => bail!("give either --concurrency or --rate, not both"),
        (_, Some(rate)) => {
            if !(rate > 0.0 && rate <= MAX_RATE) {
                bail!("--rate must be more than 0 and at most {MAX_RATE} requests/s, got {rate}");
            }
            if args.max_outstanding == 0 || args.max_outstanding > MAX_CONCURRENCY {
                bail!(
                    "--max-outstanding must be between 1 and {MAX_CONCURRENCY}, got {}",
                    args.max_outstanding
                );
            }
            Ok(Load::Open {
                rate,
                max_outstanding: args.max_outstanding,
            })
        }
        (clients, None) => {
            let clients = clients.unwrap_or(1);
            if clients == 0 || clients > MAX_CONCURRENCY {
                bail!("--concurrency must be between 1 and {MAX_CONCURRENCY}, got {clients}");
            }
            Ok(Load::Closed { clients })
        }
    }
}

fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Where the requests go: a gRPC channel, or the HTTP door (one keep-alive pool).
#[derive(Clone)]
enum Target {
    Grpc(IntentServiceClient<Channel>),
    Http(HttpTarget),
}

#[derive(Clone)]
struct HttpTarget {
    client: reqwest::Client,
    classify_url: String,
}

/// Checks the HTTP door answers before the clock starts (`GET /healthz`).
async fn connect_http(uri: &str) -> Result<HttpTarget> {
    let client = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(MAX_CONCURRENCY)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("HTTP client")?;
    let health = format!("{uri}/healthz");
    client
        .get(&health)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot reach {health} (is the HTTP door of `intentd serve` there? see http.listen)"))?;
    Ok(HttpTarget {
        client,
        classify_url: format!("{uri}/v1/classify"),
    })
}

/// Polls `GET /readyz` every 10 ms until it answers 200 (the model is loaded).
async fn wait_ready_http(uri: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let client = reqwest::Client::new();
    let url = format!("{uri}/readyz");
    loop {
        let last = match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => return Ok(start.elapsed()),
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => format!("cannot connect: {e}"),
        };
        if start.elapsed() >= timeout {
            bail!(
                "{url} not ready after {:.1} s (last: {last})",
                timeout.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The parts of the HTTP answer the tally reads (the rest of the JSON is ignored).
#[derive(serde::Deserialize)]
struct HttpAnswer {
    source: String,
    timings: HttpTimings,
}

#[derive(serde::Deserialize)]
struct HttpTimings {
    total_us: u64,
    inference_us: u64,
    queue_us: u64,
    tokenize_us: u64,
}

/// The gRPC code named by the HTTP error body's `error.code`.
fn code_from_name(name: &str) -> Code {
    (0..=16)
        .map(Code::from_i32)
        .find(|c| code_name(*c) == name)
        .unwrap_or(Code::Unknown)
}

/// `v` holds `parts` runs (one per replica) back to back; returns them interleaved, so that
/// consecutive connections go to different replicas.
fn interleave<T>(v: Vec<T>, parts: usize) -> Vec<T> {
    let total = v.len();
    let mut runs: Vec<Vec<T>> = Vec::with_capacity(parts);
    let mut it = v.into_iter();
    for k in 0..parts {
        let n = total / parts + usize::from(k < total % parts);
        runs.push(it.by_ref().take(n).collect());
    }
    let mut out = Vec::with_capacity(total);
    let mut iters: Vec<_> = runs.into_iter().map(|r| r.into_iter()).collect();
    while out.len() < total {
        for i in iters.iter_mut() {
            if let Some(x) = i.next() {
                out.push(x);
            }
        }
    }
    out
}

/// Opens the connections before the clock starts, so connection set-up is not measured and an
/// unreachable server is a clear error rather than a report full of UNAVAILABLE.
async fn connect(uri: &str, n: usize) -> Result<Vec<IntentServiceClient<Channel>>> {
    let endpoint = Endpoint::from_shared(uri.to_string())
        .with_context(|| format!("invalid --addr '{uri}'"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let channel = endpoint.connect().await.with_context(|| {
            format!("cannot connect to {uri} (is `intentd serve` running there?)")
        })?;
        clients.push(IntentServiceClient::new(channel));
    }
    Ok(clients)
}

/// Polls the standard gRPC health service every 10 ms until `service` is SERVING; returns how
/// long that took. A server that is not listening yet, or is still loading its model
/// (NOT_SERVING), is waited for; one without a health service is an error at once.
pub async fn wait_serving(uri: &str, service: &str, timeout: Duration) -> Result<Duration> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    let start = Instant::now();
    let endpoint = Endpoint::from_shared(uri.to_string())
        .with_context(|| format!("invalid --addr '{uri}'"))?
        .connect_timeout(Duration::from_millis(500));
    let mut last = String::from("no answer yet");
    let mut client: Option<HealthClient<Channel>> = None;
    loop {
        if client.is_none() {
            match endpoint.connect().await {
                Ok(ch) => client = Some(HealthClient::new(ch)),
                Err(e) => last = format!("cannot connect: {e}"),
            }
        }
        if let Some(c) = client.as_mut() {
            match c
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
            {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
                    return Ok(start.elapsed())
                }
                Ok(r) => {
                    last = ServingStatus::try_from(r.get_ref().status)
                        .map(|s| s.as_str_name().to_string())
                        .unwrap_or_else(|_| format!("status {}", r.get_ref().status));
                }
                Err(s) if s.code() == Code::Unimplemented => {
                    bail!("{uri} has no gRPC health service; run without --wait-serving")
                }
                Err(s) => {
                    last = format!("{}: {}", code_name(s.code()), s.message());
                    client = None;
                }
            }
        }
        if start.elapsed() >= timeout {
            bail!(
                "{uri}: {service} not SERVING after {:.1} s (last: {last})",
                timeout.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Builds valid, distinct ClassifyRequests.
struct RequestFactory {
    texts: Arc<Vec<String>>,
    bot_id: String,
    chats: usize,
    users: usize,
    run_id: i64,
    seq: AtomicU64,
    auth: Option<MetadataValue<tonic::metadata::Ascii>>,
    timeout: Duration,
}

impl RequestFactory {
    fn next(&self) -> tonic::Request<pb::ClassifyRequest> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let i = n as usize;
        let msg = pb::ClassifyRequest {
            bot_id: self.bot_id.clone(),
            chat_id: format!("bench-chat-{}", i % self.chats),
            message_id: format!("bench-{}-{n}", self.run_id),
            text: self.texts[i % self.texts.len()].clone(),
            sent_at_ms: 0,
            user: Some(pb::User {
                id: format!("bench-user-{}", i % self.users),
                ..Default::default()
            }),
            chat_name: "bench".into(),
        };
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        if let Some(v) = &self.auth {
            req.metadata_mut().insert("authorization", v.clone());
        }
        req
    }

    /// Sends one request; the client enforces the deadline too, in case the server ignores it.
    async fn call(&self, target: Target) -> Result<pb::ClassifyResponse, Status> {
        let req = self.next();
        let answer = async {
            match target {
                Target::Grpc(mut client) => {
                    client.classify(req).await.map(tonic::Response::into_inner)
                }
                Target::Http(h) => self.call_http(&h, req).await,
            }
        };
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {} ms (client-side deadline)",
                self.timeout.as_millis()
            ))),
        }
    }
}

impl RequestFactory {
    /// The same request as JSON `POST /v1/classify` (deadline in `X-Timeout-Ms`).
    async fn call_http(
        &self,
        h: &HttpTarget,
        req: tonic::Request<pb::ClassifyRequest>,
    ) -> Result<pb::ClassifyResponse, Status> {
        let m = req.into_inner();
        let user = m.user.unwrap_or_default();
        let body = serde_json::json!({
            "bot_id": m.bot_id, "chat_id": m.chat_id, "chat_name": m.chat_name,
            "message_id": m.message_id, "text": m.text, "user": {"id": user.id},
        });
        let mut r = h
            .client
            .post(&h.classify_url)
            .header("x-timeout-ms", self.timeout.as_millis().to_string())
            .json(&body);
        if let Some(v) = &self.auth {
            r = r.header("authorization", v.as_bytes());
        }
        let resp = r
            .send()
            .await
            .map_err(|e| Status::unavailable(format!("HTTP: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Status::unavailable(format!("HTTP body: {e}")))?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let code = code_from_name(v["error"]["code"].as_str().unwrap_or(""));
            let message = v["error"]["message"].as_str().unwrap_or("").to_string();
            return Err(Status::new(code, format!("HTTP {status}: {message}")));
        }
        let a: HttpAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| Status::internal(format!("unexpected HTTP answer: {e}")))?;
        Ok(pb::ClassifyResponse {
            source: pb::Source::from_str_name(&a.source).map_or(0, |s| s as i32),
            timings: Some(pb::Timings {
                tokenize_us: a.timings.tokenize_us,
                inference_us: a.timings.inference_us,
                total_us: a.timings.total_us,
                queue_us: a.timings.queue_us,
            }),
            ..Default::default()
        })
    }
}

/// What one phase measured.
struct Tally {
    latency_us: Histogram<u64>,
    server_us: Histogram<u64>,
    queue_us: Histogram<u64>,
    inference_us: Histogram<u64>,
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, String>,
    sources: BTreeMap<String, u64>,
    not_sent: u64,
    max_send_lag: Duration,
    elapsed: Duration,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, HIST_MAX_US, 3)
                .expect("valid histogram bounds"),
            server_us: Histogram::new_with_bounds(1, HIST_MAX_US, 3)
                .expect("valid histogram bounds"),
            queue_us: Histogram::new_with_bounds(1, HIST_MAX_US, 3)
                .expect("valid histogram bounds"),
            inference_us: Histogram::new_with_bounds(1, HIST_MAX_US, 3)
                .expect("valid histogram bounds"),
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            sources: BTreeMap::new(),
            not_sent: 0,
            max_send_lag: Duration::ZERO,
            elapsed: Duration::ZERO,
        }
    }

    fn record(&mut self, outcome: Result<pb::ClassifyResponse, Status>, latency: Duration) {
        match outcome {
            Ok(resp) => {
                self.ok += 1;
                self.latency_us
                    .saturating_record((latency.as_micros() as u64).max(1));
                if let Some(t) = resp.timings.filter(|t| t.total_us > 0) {
                    self.server_us.saturating_record(t.total_us);
                    // Only requests that went through the model have these.
                    if t.inference_us > 0 {
                        self.queue_us.saturating_record(t.queue_us.max(1));
                        self.inference_us.saturating_record(t.inference_us);
                    }
                }
                let source = pb::Source::try_from(resp.source)
                    .map(|s| s.as_str_name().to_string())
                    .unwrap_or_else(|_| format!("UNKNOWN_{}", resp.source));
                *self.sources.entry(source).or_default() += 1;
            }
            Err(status) => {
                let code = code_name(status.code()).to_string();
                *self.errors.entry(code.clone()).or_default() += 1;
                self.error_samples
                    .entry(code)
                    .or_insert_with(|| status.message().to_string());
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("same histogram bounds");
        self.server_us
            .add(&other.server_us)
            .expect("same histogram bounds");
        self.queue_us
            .add(&other.queue_us)
            .expect("same histogram bounds");
        self.inference_us
            .add(&other.inference_us)
            .expect("same histogram bounds");
        self.sent += other.sent;
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.error_samples {
            self.error_samples.entry(k).or_insert(v);
        }
        for (k, v) in other.sources {
            *self.sources.entry(k).or_default() += v;
        }
        self.not_sent += other.not_sent;
        self.max_send_lag = self.max_send_lag.max(other.max_send_lag);
    }

    fn into_report(self, load: Load, addr: &str, texts: usize, duration_s: f64) -> LoadReport {
        let errors: u64 = self.errors.values().sum();
        let completed = self.ok + errors;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let ms = |h: &Histogram<u64>, q: f64| {
            (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
        };
        let l = &self.latency_us;
        let (mode, concurrency, target_rate, latency_from) = match load {
            Load::Closed { clients } => ("closed", Some(clients), None, "send"),
            Load::Open { rate, .. } => ("open", None, Some(rate), "schedule"),
        };
        let source_share = self
            .sources
            .iter()
            .map(|(k, &v)| (k.clone(), v as f64 / self.ok.max(1) as f64))
            .collect();
        LoadReport {
            mode: mode.into(),
            addr: addr.into(),
            texts,
            concurrency,
            target_rate,
            duration_s,
            elapsed_s: secs,
            sent: self.sent,
            completed,
            ok: self.ok,
            errors,
            errors_by_code: self.errors,
            error_samples: self.error_samples,
            not_sent: self.not_sent,
            requests_per_s: self.ok as f64 / secs,
            completed_per_s: completed as f64 / secs,
            latency_from: latency_from.into(),
            mean_ms: (!l.is_empty()).then(|| l.mean() / 1000.0),
            p50_ms: ms(l, 0.50),
            p90_ms: ms(l, 0.90),
            p95_ms: ms(l, 0.95),
            p99_ms: ms(l, 0.99),
            p999_ms: ms(l, 0.999),
            max_ms: (!l.is_empty()).then(|| l.max() as f64 / 1000.0),
            server_p50_ms: ms(&self.server_us, 0.50),
            server_p99_ms: ms(&self.server_us, 0.99),
            server_queue_p50_ms: ms(&self.queue_us, 0.50),
            server_queue_p99_ms: ms(&self.queue_us, 0.99),
            server_inference_p50_ms: ms(&self.inference_us, 0.50),
            server_inference_p99_ms: ms(&self.inference_us, 0.99),
            max_send_lag_ms: self.max_send_lag.as_secs_f64() * 1000.0,
            source_counts: self.sources,
            source_share,
            serving_wait_ms: None,
            serving_at_unix_ms: None,
        }
    }
}

async fn run_phase(
    load: Load,
    clients: &[Target],
    ctx: &Arc<RequestFactory>,
    duration: Duration,
) -> Tally {
    match load {
        Load::Closed { clients: n } => closed_loop(n, clients, ctx, duration).await,
        Load::Open {
            rate,
            max_outstanding,
        } => open_loop(rate, max_outstanding, clients, ctx, duration).await,
    }
}

/// N workers, each sending its next request when the previous one is answered, until the
/// duration is over. Each keeps its own tally (no shared lock on the hot path).
async fn closed_loop(
    n: usize,
    clients: &[Target],
    ctx: &Arc<RequestFactory>,
    duration: Duration,
) -> Tally {
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::with_capacity(n);
    for w in 0..n {
        let client = clients[w % clients.len()].clone();
        let ctx = ctx.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                tally.sent += 1;
                let outcome = ctx.call(client.clone()).await;
                tally.record(outcome, t0.elapsed());
            }
            tally
        }));
    }
    let mut total = Tally::new();
    for w in workers {
        match w.await {
            Ok(t) => total.merge(t),
            // A worker only panics on a bug here; count it rather than lose the whole run.
            Err(e) => {
                *total.errors.entry("CLIENT_PANIC".into()).or_default() += 1;
                total
                    .error_samples
                    .entry("CLIENT_PANIC".into())
                    .or_insert_with(|| e.to_string());
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Starts request i at `start + i / rate` whether or not earlier ones were answered. Latency
/// counts from the scheduled start; when `max_outstanding` requests are unanswered, the
/// schedule waits for one (that wait is part of the latency of the late requests).
async fn open_loop(
    rate: f64,
    max_outstanding: usize,
    clients: &[Target],
    ctx: &Arc<RequestFactory>,
    duration: Duration,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::new()));
    let slots = Arc::new(Semaphore::new(max_outstanding));
    let start = Instant::now();
    let deadline = start + duration;
    // Requests whose scheduled start falls inside the duration.
    let scheduled = ((duration.as_secs_f64() * rate).ceil() as u64).max(1);
    let mut sent = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut in_flight = Vec::new();
    for i in 0..scheduled {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        // Biased: a free slot wins over a deadline that passed while this task waited to be
        // woken (a busy machine), so a request scheduled inside the duration is still sent.
        let permit = tokio::select! {
            biased;
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = tokio::time::sleep_until(deadline.into()) => break,
        };
        max_lag = max_lag.max(at.elapsed());
        sent += 1;
        let client = clients[(i as usize) % clients.len()].clone();
        let ctx = ctx.clone();
        let tally = tally.clone();
        in_flight.push(tokio::spawn(async move {
            let outcome = ctx.call(client).await;
            tally.lock().record(outcome, at.elapsed());
            drop(permit);
        }));
        // Keep the handle list short on long runs.
        if in_flight.len() >= 4096 {
            in_flight.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
        }
    }
    for h in in_flight {
        let _ = h.await;
    }
    let elapsed = start.elapsed();
    let mut t = std::mem::replace(&mut *tally.lock(), Tally::new());
    t.sent = sent;
    t.not_sent = scheduled - sent;
    t.max_send_lag = max_lag;
    t.elapsed = elapsed;
    t
}

impl LoadReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let f = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.2}"));
        let mut s = String::new();
        let how = match (self.concurrency, self.target_rate) {
            (Some(n), _) => format!("closed loop, {n} client(s)"),
            (_, Some(r)) => format!("open loop, {r} requests/s"),
            _ => self.mode.clone(),
        };
        let _ = writeln!(
            s,
            "intentd bench: {how}, {} s against {} ({} texts)",
            self.duration_s, self.addr, self.texts
        );
        let _ = writeln!(
            s,
            "requests:   {} sent, {} ok, {} errors in {:.2} s",
            self.sent, self.ok, self.errors, self.elapsed_s
        );
        let _ = writeln!(
            s,
            "throughput: {:.1} ok requests/s ({:.1} answers/s incl. errors)",
            self.requests_per_s, self.completed_per_s
        );
        let _ = writeln!(
            s,
            "latency ms: p50 {}  p90 {}  p95 {}  p99 {}  p99.9 {}  max {}  mean {}  (ok requests, from {})",
            f(self.p50_ms),
            f(self.p90_ms),
            f(self.p95_ms),
            f(self.p99_ms),
            f(self.p999_ms),
            f(self.max_ms),
            f(self.mean_ms),
            self.latency_from
        );
        if self.server_p50_ms.is_some() {
            let _ = writeln!(
                s,
                "server ms:  p50 {}  p99 {}  (timings.total_us reported by the server)",
                f(self.server_p50_ms),
                f(self.server_p99_ms)
            );
        }
        if self.server_inference_p50_ms.is_some() {
            let _ = writeln!(
                s,
                "server ms:  queue p50 {} p99 {}  forward pass p50 {} p99 {}  (model answers only)",
                f(self.server_queue_p50_ms),
                f(self.server_queue_p99_ms),
                f(self.server_inference_p50_ms),
                f(self.server_inference_p99_ms)
            );
        }
        if let Some(w) = self.serving_wait_ms {
            let _ = writeln!(
                s,
                "serving:    waited {w:.0} ms for the health check to report SERVING"
            );
        }
        if self.target_rate.is_some() {
            let _ = writeln!(
                s,
                "send lag:   max {:.2} ms behind schedule",
                self.max_send_lag_ms
            );
        }
        if self.not_sent > 0 {
            let _ = writeln!(
                s,
                "not sent:   {} scheduled requests (the server fell behind and the outstanding limit was reached)",
                self.not_sent
            );
        }
        if self.errors_by_code.is_empty() {
            let _ = writeln!(s, "errors:     none");
        } else {
            for (code, n) in &self.errors_by_code {
                let sample = self
                    .error_samples
                    .get(code)
                    .map(String::as_str)
                    .unwrap_or("");
                let _ = writeln!(s, "errors:     {code} {n} (e.g. \"{sample}\")");
            }
        }
        if !self.source_share.is_empty() {
            let parts: Vec<String> = self
                .source_share
                .iter()
                .map(|(k, v)| format!("{k} {:.1}%", v * 100.0))
                .collect();
            let _ = writeln!(s, "source:     {}", parts.join("  "));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::path::Path;
    use tonic::{Request, Response};

    use intentd::pb::intent_service_server::{IntentService, IntentServiceServer};

    /// A stand-in IntentService: answers Classify after a fixed delay, turns every
    /// `reject_every`-th request away with RESOURCE_EXHAUSTED, and checks each request the way
    /// the real front door would (required fields, unique message ids, the bearer token).
    struct Mock {
        delay: Duration,
        reject_every: u64,
        token: Option<String>,
        count: AtomicU64,
        rejected: AtomicU64,
        invalid: AtomicU64,
        seen_ids: Mutex<HashSet<String>>,
        by_source: Mutex<BTreeMap<String, u64>>,
    }

    impl Mock {
        fn new(delay_ms: u64, reject_every: u64, token: Option<&str>) -> Arc<Self> {
            Arc::new(Self {
                delay: Duration::from_millis(delay_ms),
                reject_every,
                token: token.map(str::to_string),
                count: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                invalid: AtomicU64::new(0),
                seen_ids: Mutex::new(HashSet::new()),
                by_source: Mutex::new(BTreeMap::new()),
            })
        }
    }

    struct MockService(Arc<Mock>);

    #[tonic::async_trait]
    impl IntentService for MockService {
        async fn classify(
            &self,
            request: Request<pb::ClassifyRequest>,
        ) -> Result<Response<pb::ClassifyResponse>, Status> {
            let m = &self.0;
            let n = m.count.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(t) = &m.token {
                let got = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok());
                if got != Some(format!("Bearer {t}").as_str()) {
                    return Err(Status::unauthenticated("missing or wrong bearer token"));
                }
            }
            let r = request.into_inner();
            let user_ok = r.user.as_ref().is_some_and(|u| !u.id.is_empty());
            let fresh = m.seen_ids.lock().insert(r.message_id.clone());
            if r.bot_id.is_empty()
                || r.chat_id.is_empty()
                || r.text.is_empty()
                || !user_ok
                || !fresh
            {
                m.invalid.fetch_add(1, Ordering::SeqCst);
                return Err(Status::invalid_argument("bad request"));
            }
            if m.reject_every > 0 && n.is_multiple_of(m.reject_every) {
                m.rejected.fetch_add(1, Ordering::SeqCst);
                return Err(Status::resource_exhausted("too many requests in flight"));
            }
            tokio::time::sleep(m.delay).await;
            let source = if n.is_multiple_of(2) {
                pb::Source::Model
            } else {
                pb::Source::Keyword
            };
            *m.by_source
                .lock()
                .entry(source.as_str_name().to_string())
                .or_default() += 1;
            Ok(Response::new(pb::ClassifyResponse {
                intent: "price".into(),
                confidence: 0.9,
                source: source as i32,
                action: pb::Action::Reply as i32,
                message_id: r.message_id,
                timings: Some(pb::Timings {
                    total_us: 1500,
                    ..Default::default()
                }),
                ..Default::default()
            }))
        }
        async fn classify_batch(
            &self,
            _: Request<pb::ClassifyBatchRequest>,
        ) -> Result<Response<pb::ClassifyBatchResponse>, Status> {
            Err(Status::unimplemented("mock"))
        }
        async fn handle_event(
            &self,
            _: Request<pb::Event>,
        ) -> Result<Response<pb::Decision>, Status> {
            Err(Status::unimplemented("mock"))
        }
        type SubscribeStream = tokio_stream::Empty<Result<pb::Outbound, Status>>;
        async fn subscribe(
            &self,
            _: Request<pb::SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            Err(Status::unimplemented("mock"))
        }
        async fn feedback(
            &self,
            _: Request<pb::FeedbackRequest>,
        ) -> Result<Response<pb::FeedbackResponse>, Status> {
            Err(Status::unimplemented("mock"))
        }
        async fn report_human_reply(
            &self,
            _: Request<pb::HumanReplyRequest>,
        ) -> Result<Response<pb::HumanReplyResponse>, Status> {
            Err(Status::unimplemented("mock"))
        }
        async fn get_stats(
            &self,
            _: Request<pb::StatsRequest>,
        ) -> Result<Response<pb::StatsResponse>, Status> {
            Err(Status::unimplemented("mock"))
        }
    }

    /// Serves the mock on 127.0.0.1 with an OS-chosen port.
    async fn start(mock: Arc<Mock>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(IntentServiceServer::new(MockService(mock)))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        addr
    }

    fn texts_file() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut f,
            "text\tlabel\n多少钱\tprice\n\n什么时候发货\tshipping_time\n你好\tgreeting\n"
                .as_bytes(),
        )
        .unwrap();
        f
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn args(addr: SocketAddr, texts: &Path, extra: &[&str]) -> LoadgenArgs {
        let mut argv = vec!["bench", "--addr"];
        let addr = addr.to_string();
        argv.push(&addr);
        let texts = texts.to_str().unwrap().to_string();
        argv.extend(["--texts", &texts]);
        argv.extend(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_counts_every_request_and_errors_by_code() {
        let mock = Mock::new(5, 4, Some("s3cret"));
        let addr = start(mock.clone()).await;
        let f = texts_file();
        let a = args(
            addr,
            f.path(),
            &[
                "--concurrency",
                "4",
                "--duration",
                "1",
                "--token",
                "s3cret",
                "--json",
            ],
        );
        let r = measure(&a).await.unwrap();

        // Everything the server saw is in the report, and nothing else.
        let served = mock.count.load(Ordering::SeqCst);
        assert_eq!(r.sent, served);
        assert_eq!(r.completed, served);
        assert_eq!(r.ok + r.errors, r.completed);
        assert_eq!(
            mock.invalid.load(Ordering::SeqCst),
            0,
            "every request must be valid and unique"
        );
        let rejected = mock.rejected.load(Ordering::SeqCst);
        assert!(rejected > 0);
        assert_eq!(r.errors_by_code.get("RESOURCE_EXHAUSTED"), Some(&rejected));
        assert_eq!(r.errors, rejected);
        assert_eq!(
            r.error_samples["RESOURCE_EXHAUSTED"],
            "too many requests in flight"
        );
        // 4 clients, >= 5 ms per ok answer, for ~1 s: at most ~4 * 200 ok answers.
        assert!(r.ok >= 40 && r.ok <= 4 * 210, "ok = {}", r.ok);
        assert!(
            r.elapsed_s >= 1.0 && r.elapsed_s < 1.5,
            "elapsed {}",
            r.elapsed_s
        );
        assert!(r.p50_ms.unwrap() >= 5.0, "p50 {:?}", r.p50_ms);
        assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.max_ms);
        assert_eq!(r.server_p50_ms, Some(1.5));
        // Shares by source match what the mock answered.
        let by_source = mock.by_source.lock().clone();
        assert_eq!(r.source_counts, by_source);
        let total: f64 = r.source_share.values().sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert_eq!(r.mode, "closed");
        assert_eq!(r.concurrency, Some(4));
    }

    /// Several `--addr`, comma-separated: the load is spread over every server (replicas).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_addresses_share_the_load() {
        let (m1, m2) = (Mock::new(1, 100, None), Mock::new(1, 100, None));
        let (a1, a2) = (start(m1.clone()).await, start(m2.clone()).await);
        let f = texts_file();
        let both = format!("{a1}, {a2}");
        let mut a = args(a1, f.path(), &["--concurrency", "4", "--duration", "0.5"]);
        a.addr = both;
        let r = measure(&a).await.unwrap();
        let (n1, n2) = (
            m1.count.load(Ordering::SeqCst),
            m2.count.load(Ordering::SeqCst),
        );
        assert_eq!(r.completed, n1 + n2);
        assert!(n1 > 0 && n2 > 0, "{n1} and {n2}");
        let ratio = n1 as f64 / n2 as f64;
        assert!((0.5..2.0).contains(&ratio), "{n1} vs {n2}");

        a.addr = format!("{a1},,{a2}");
        let e = measure(&a).await.unwrap_err().to_string();
        assert!(e.contains("--addr has an empty address"), "{e}");
        a.addr = format!("{a1},{a2}");
        a.http = true;
        let e = measure(&a).await.unwrap_err().to_string();
        assert!(e.contains("--http takes one --addr, got 2"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_keeps_the_target_rate() {
        let mock = Mock::new(3, 10, None);
        let addr = start(mock.clone()).await;
        let f = texts_file();
        let a = args(addr, f.path(), &["--rate", "200", "--duration", "1"]);
        let r = measure(&a).await.unwrap();

        assert_eq!(
            r.sent, 200,
            "every scheduled request is sent when the server keeps up"
        );
        assert_eq!(r.not_sent, 0);
        assert_eq!(r.completed, mock.count.load(Ordering::SeqCst));
        assert_eq!(r.completed, 200);
        assert_eq!(r.errors_by_code.get("RESOURCE_EXHAUSTED"), Some(&20));
        let achieved = r.completed_per_s;
        assert!(
            (achieved - 200.0).abs() / 200.0 < 0.15,
            "achieved {achieved} requests/s for a target of 200"
        );
        assert!(r.p50_ms.unwrap() >= 3.0);
        assert_eq!(r.latency_from, "schedule");
        assert_eq!(r.target_rate, Some(200.0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_charges_server_stalls_to_latency() {
        // The server does 1 request per 20 ms (one at a time); the schedule asks for one every 10 ms.
        let mock = Mock::new(20, 0, None);
        let addr = start(mock.clone()).await;
        let f = texts_file();
        let a = args(
            addr,
            f.path(),
            &["--rate", "100", "--duration", "1", "--max-outstanding", "1"],
        );
        let r = measure(&a).await.unwrap();

        assert_eq!(r.errors, 0);
        assert!(
            r.not_sent > 20,
            "about half the schedule cannot be sent, got {} not sent",
            r.not_sent
        );
        assert_eq!(r.sent + r.not_sent, 100);
        // The last requests sent waited ~0.5 s behind their schedule; a latency measured from the
        // send (coordinated omission) would show ~20 ms.
        assert!(r.p99_ms.unwrap() > 250.0, "p99 {:?}", r.p99_ms);
        assert!(r.max_send_lag_ms > 250.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_report_has_the_documented_fields() {
        let mock = Mock::new(1, 0, None);
        let addr = start(mock).await;
        let f = texts_file();
        let a = args(
            addr,
            f.path(),
            &["--concurrency", "2", "--duration", "0.3", "--json"],
        );
        let r = measure(&a).await.unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        for k in ["requests_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms"] {
            assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} = {}", v[k]);
        }
        assert_eq!(v["errors"], 0);
        assert!(v["errors_by_code"].as_object().unwrap().is_empty());
        assert!(v["source_share"].is_object());
        let text = r.to_text();
        assert!(text.contains("errors:     none"), "{text}");
        assert!(text.contains("p99"), "{text}");
    }

    #[tokio::test]
    async fn wrong_token_is_counted_as_unauthenticated() {
        let mock = Mock::new(1, 0, Some("right"));
        let addr = start(mock).await;
        let f = texts_file();
        let a = args(
            addr,
            f.path(),
            &[
                "--concurrency",
                "1",
                "--duration",
                "0.2",
                "--token",
                "wrong",
            ],
        );
        let r = measure(&a).await.unwrap();
        assert_eq!(r.ok, 0);
        assert!(r.errors > 0);
        assert_eq!(r.errors_by_code["UNAUTHENTICATED"], r.errors);
        assert_eq!(r.p50_ms, None);
        assert!(r.to_text().contains("UNAUTHENTICATED"));
        // The CLI entry point fails when nothing succeeded.
        let err = run(a).await.unwrap_err().to_string();
        assert!(err.contains("no request succeeded"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waits_for_the_health_check_to_report_serving() {
        use tonic_health::ServingStatus;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(HEALTH_SERVICE, ServingStatus::NotServing)
            .await;
        let mock = Mock::new(1, 0, None);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(IntentServiceServer::new(MockService(mock)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let uri = format!("http://{addr}");

        // Still loading: the wait gives up with the status it last saw.
        let err = wait_serving(&uri, HEALTH_SERVICE, Duration::from_millis(200))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not SERVING") && err.contains("NOT_SERVING"),
            "{err}"
        );

        let flip = reporter.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            flip.set_service_status(HEALTH_SERVICE, ServingStatus::Serving)
                .await;
        });
        let f = texts_file();
        let a = args(
            addr,
            f.path(),
            &["--duration", "0.2", "--wait-serving", "5"],
        );
        let r = measure(&a).await.unwrap();
        let waited = r.serving_wait_ms.unwrap();
        assert!((250.0..2000.0).contains(&waited), "waited {waited} ms");
        assert!(r.serving_at_unix_ms.unwrap() > 1_704_067_200_000);
        assert!(r.ok > 0);

        // A server without a health service is reported at once, not after the timeout.
        let plain = start(Mock::new(1, 0, None)).await;
        let t0 = Instant::now();
        let err = wait_serving(
            &format!("http://{plain}"),
            HEALTH_SERVICE,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("no gRPC health service"), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn texts_from_tsv_or_plain_lines_and_clear_errors() {
        let f = texts_file();
        assert_eq!(
            read_texts(f.path()).unwrap(),
            vec!["多少钱", "什么时候发货", "你好"]
        );

        let mut plain = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut plain, "  退款\r\n\n换货\n".as_bytes()).unwrap();
        assert_eq!(read_texts(plain.path()).unwrap(), vec!["退款", "换货"]);

        let mut only_header = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut only_header, b"text\tlabel\n\n").unwrap();
        let err = read_texts(only_header.path()).unwrap_err().to_string();
        assert!(err.contains("no texts"), "{err}");

        let err = format!(
            "{:#}",
            read_texts(Path::new("/nonexistent/texts.tsv")).unwrap_err()
        );
        assert!(err.contains("/nonexistent/texts.tsv"), "{err}");
    }

    #[tokio::test]
    async fn bad_arguments_and_unreachable_servers_are_clear_errors() {
        let f = texts_file();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let both = Cli::try_parse_from([
            "bench",
            "--addr",
            "127.0.0.1:9",
            "--texts",
            "x",
            "--concurrency",
            "2",
            "--rate",
            "5",
            "--duration",
            "1",
        ]);
        assert!(
            both.is_err(),
            "--concurrency and --rate together must be refused"
        );

        for (extra, needle) in [
            (&["--rate", "0", "--duration", "1"][..], "--rate"),
            (
                &["--concurrency", "0", "--duration", "1"][..],
                "--concurrency",
            ),
            (&["--duration", "0"][..], "--duration"),
            (&["--duration", "100000"][..], "--duration"),
        ] {
            let err = measure(&args(addr, f.path(), extra))
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{extra:?}: {err}");
        }

        // Nothing listens on the discard port of loopback: a connect error, not a hang.
        let err = format!(
            "{:#}",
            measure(&args(addr, f.path(), &["--duration", "1"]))
                .await
                .unwrap_err()
        );
        assert!(
            err.contains("cannot connect to http://127.0.0.1:9"),
            "{err}"
        );
    }
}
