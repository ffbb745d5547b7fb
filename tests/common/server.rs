//! Starts the real `intentd serve` binary on ephemeral ports with its own database, and gives
//! tonic clients that carry the bot or admin token.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use intentd::pb;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub const BOT: &str = "demo";
pub const BOT_TOKEN: &str = "dev-demo-token";
pub const ADMIN_TOKEN: &str = "dev-admin-token";
/// 2026-11-25 10:00:00 Asia/Shanghai (02:00 UTC), a Wednesday.
pub const T0: i64 = 1_795_572_000_000;

#[derive(Default)]
pub struct ServerOptions {
    /// Model folder; `None` = a folder that does not exist (rules only, auto_train off).
    pub model: Option<PathBuf>,
    pub manual_clock: Option<i64>,
    /// Extra YAML appended to a copy of config/intentd.yml (later keys win).
    pub extra_config: String,
    /// Operator folder to use instead of config/operator.
    pub operator_dir: Option<PathBuf>,
    /// Reuse this data folder (database + key) instead of a fresh one (restart tests).
    pub data_dir: Option<PathBuf>,
    /// gRPC address to listen on instead of an ephemeral port (a restart on the same address).
    pub listen: Option<String>,
    /// With a model: return once the port is open instead of waiting for SERVING (a model
    /// that is expected not to load).
    pub no_wait_serving: bool,
    /// Largest file the server may write, in bytes (RLIMIT_FSIZE, with SIGXFSZ ignored so a
    /// write past it fails with EFBIG like on a full disk).
    pub file_size_limit: Option<u64>,
}

pub struct TestServer {
    pub child: Child,
    pub addr: String,
    pub metrics_addr: String,
    /// The HTTP/JSON door (`host:port`); empty when `http.enabled: false`.
    pub http_addr: String,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub stderr_log: PathBuf,
}

pub type AuthedChannel = InterceptedService<Channel, TokenInterceptor>;

#[derive(Clone)]
pub struct TokenInterceptor(Option<MetadataValue<tonic::metadata::Ascii>>);

impl TokenInterceptor {
    pub fn bot() -> Self {
        Self::bearer(BOT_TOKEN)
    }

    pub fn bearer(token: &str) -> Self {
        TokenInterceptor(Some(format!("Bearer {token}").parse().unwrap()))
    }
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A config file for the test: the shipped one with paths made absolute and overrides.
fn write_config(dir: &Path, opts: &ServerOptions, data_dir: &Path) -> PathBuf {
    let root = super::repo_root();
    let model = opts.model.clone().unwrap_or_else(|| dir.join("no-model"));
    let operator = opts
        .operator_dir
        .clone()
        .unwrap_or_else(|| root.join("config/operator"));
    let mut text = std::fs::read_to_string(root.join("config/intentd.yml")).unwrap();
    // Without a model the server serves from rules (it would stop if the model were required).
    let optional = if opts.model.is_none() && !opts.extra_config.contains("\nmodel:") {
        "model:\n  required: false\n"
    } else {
        ""
    };
    let overrides = format!(
        "listen: {}\nmodel_dir: {}\nauto_train: false\noperator_dir: {}\ntraining_data: {}\n{optional}{}",
        opts.listen.as_deref().unwrap_or("127.0.0.1:0"),
        model.display(),
        operator.display(),
        root.join("training-data/nlu").display(),
        opts.extra_config
    );
    text = text.replace(
        "  path: data/intentd.db",
        &format!("  path: {}/intentd.db", data_dir.display()),
    );
    text = text.replace(
        "  key_file: data/intentd.key",
        &format!("  key_file: {}/intentd.key", data_dir.display()),
    );
    text = text.replace("  listen: 127.0.0.1:9464", "  listen: 127.0.0.1:0");
    // The HTTP door on an ephemeral port too, so parallel tests never collide on 8080.
    text = text.replace("  listen: 127.0.0.1:8080", "  listen: 127.0.0.1:0");
    // Duplicate keys are not allowed in YAML: overrides replace whole top-level sections.
    let merged = merge_top_level(&text, &overrides);
    let path = dir.join("intentd.yml");
    std::fs::write(&path, merged).unwrap();
    path
}

/// Replaces top-level keys of `base` by those in `extra` (whole sections).
fn merge_top_level(base: &str, extra: &str) -> String {
    let keys: Vec<String> = extra
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#') && l.contains(':'))
        .map(|l| l.split(':').next().unwrap().trim().to_string())
        .collect();
    let mut out = String::new();
    let mut skipping = false;
    for line in base.lines() {
        let top = !line.starts_with(' ') && !line.starts_with('#') && !line.trim().is_empty();
        if top {
            let key = line.split(':').next().unwrap().trim();
            skipping = keys.iter().any(|k| k == key);
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(extra);
    out.push('\n');
    out
}

impl TestServer {
    pub async fn start(opts: ServerOptions) -> TestServer {
        let with_model = opts.model.is_some() && !opts.no_wait_serving;
        let s = TestServer::spawn(opts).wait_listening(Duration::from_secs(60));
        if with_model {
            s.wait_serving().await;
        }
        s
    }

    /// Starts the process without waiting for it to listen (a standby replica waits for the
    /// leader lease first): see [`Starting::wait_listening`].
    pub fn spawn(opts: ServerOptions) -> Starting {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        std::fs::create_dir_all(&data_dir).unwrap();
        let config_path = write_config(tmp.path(), &opts, &data_dir);
        let stderr_log = tmp.path().join("stderr.log");
        let mut cmd = Command::new(super::intentd_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .arg("--http-listen")
            .arg("127.0.0.1:0");
        if let Some(t) = opts.manual_clock {
            cmd.arg("--manual-clock").arg(t.to_string());
        }
        if let Some(limit) = opts.file_size_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only async-signal-safe calls (signal, setrlimit).
            unsafe {
                cmd.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let r = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.current_dir(super::repo_root())
            .env_remove("INTENTD_LOG_KEY")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap());
        let mut child = cmd.spawn().expect("start intentd serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Starting {
            child: Some(child),
            lines: rx,
            seen: Vec::new(),
            data_dir,
            config_path,
            tmp: Some(tmp),
            stderr_log,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    fn interceptor(token: Option<&str>) -> TokenInterceptor {
        TokenInterceptor(token.map(|t| format!("Bearer {t}").parse().unwrap()))
    }

    /// IntentService client with the demo bot's token.
    pub async fn client(&self) -> pb::intent_service_client::IntentServiceClient<AuthedChannel> {
        self.client_with_token(Some(BOT_TOKEN)).await
    }

    pub async fn client_with_token(
        &self,
        token: Option<&str>,
    ) -> pb::intent_service_client::IntentServiceClient<AuthedChannel> {
        pb::intent_service_client::IntentServiceClient::with_interceptor(
            self.channel().await,
            Self::interceptor(token),
        )
    }

    pub async fn admin(&self) -> pb::admin_service_client::AdminServiceClient<AuthedChannel> {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel().await,
            Self::interceptor(Some(ADMIN_TOKEN)),
        )
    }

    pub async fn health(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        tonic_health::pb::health_client::HealthClient::new(self.channel().await)
    }

    pub async fn health_status(&self, service: &str) -> i32 {
        let mut h = self.health().await;
        h.check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
    }

    pub async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.health_status("").await
            != tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            assert!(
                Instant::now() < deadline,
                "server never became SERVING: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A started `intentd serve` that may not listen yet; killed on drop.
pub struct Starting {
    child: Option<Child>,
    lines: std::sync::mpsc::Receiver<String>,
    /// Stdout lines read so far.
    pub seen: Vec<String>,
    data_dir: PathBuf,
    config_path: PathBuf,
    tmp: Option<tempfile::TempDir>,
    stderr_log: PathBuf,
}

impl Starting {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Reads stdout until `pred` matches a line or `within` passes; true when it matched.
    pub fn wait_line(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> bool {
        if self.seen.iter().any(|l| pred(l)) {
            return true;
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Waits until the process announces its addresses (panics after `within`).
    pub fn wait_listening(mut self, within: Duration) -> TestServer {
        let ok = self.wait_line(within, |l| l.starts_with("intentd listening on "));
        if !ok {
            panic!("server did not start: {}", self.stderr());
        }
        let mut addr = String::new();
        let mut metrics_addr = String::new();
        let mut http_addr = String::new();
        for line in &self.seen {
            if let Some(a) = line.strip_prefix("intentd listening on ") {
                addr = a.trim().to_string();
            } else if let Some(a) = line.strip_prefix("http listening on http://") {
                http_addr = a.trim().to_string();
            } else if let Some(a) = line.strip_prefix("metrics listening on http://") {
                metrics_addr = a.trim().trim_end_matches("/metrics").to_string();
            }
        }
        // Announced before the gRPC line.
        assert!(!metrics_addr.is_empty(), "{:?}", self.seen);
        TestServer {
            child: self.child.take().unwrap(),
            addr,
            metrics_addr,
            http_addr,
            data_dir: self.data_dir.clone(),
            config_path: self.config_path.clone(),
            _tmp: self.tmp.take(),
            stderr_log: self.stderr_log.clone(),
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A valid Classify request from user `user` in group `g1`.
pub fn classify_req(message_id: &str, text: &str, user: &str) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        bot_id: BOT.into(),
        chat_id: "g1".into(),
        message_id: message_id.into(),
        text: text.into(),
        sent_at_ms: 0,
        user: Some(pb::User {
            id: user.into(),
            nickname: format!("昵称{user}"),
            ..Default::default()
        }),
        chat_name: "测试群".into(),
    }
}

/// GET /metrics over a plain TCP socket: (content type, body).
pub async fn scrape_metrics(addr: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics port");
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n").expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (header("content-type").unwrap_or_default(), body)
}
