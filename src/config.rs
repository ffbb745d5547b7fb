//! The server's one configuration file (`config/intentd.yml`). Every key has a default that
//! works out of the box on a developer machine; unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::connectors::wechat::settings::ResolvedAccount;
use crate::connectors::wechat::WechatConfig;
use crate::engine::fusion::FusionConfig;
use crate::policy::StateLimits;
use crate::service::batcher::BatchConfig;
use crate::service::idempotency::IdempotencyConfig;
use crate::service::outbox::OutboxConfig;
use crate::service::validate::Limits;
use crate::service::ServiceSettings;
use crate::store::pg_lease::LeaderConfig;
use crate::store::StoreConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Trained model folder (written by `intentd train`).
    pub model_dir: PathBuf,
    /// When `model_dir` is missing: fetch the encoder and train it from `training_data` first.
    pub auto_train: bool,
    /// Operator files: intents.yml, rules.yml, replies.yml, playbook.yml, banned_words.txt, calendar.yml.
    pub operator_dir: PathBuf,
    /// Rasa-style YAML whose `synonym` / `regex` / `lookup` entries feed the keyword layer (and
    /// the default model's training data).
    pub training_data: PathBuf,
    /// Seed for reply selection, jitter and A/B salts.
    pub seed: u64,
    /// Requests being processed at once; beyond it RESOURCE_EXHAUSTED immediately.
    pub max_in_flight: usize,
    /// Upper bound for one request when the client sets no deadline.
    pub request_timeout_ms: u64,
    /// How long SIGTERM waits for in-flight requests before exiting anyway.
    pub shutdown_grace_ms: u64,
    pub limits: Limits,
    pub batching: BatchConfig,
    pub serving: ServingConfig,
    pub fusion: FusionConfig,
    /// Proactive sends waiting for a bot's Subscribe stream.
    pub outbox: OutboxConfig,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    pub store: StoreConfig,
    pub metrics: MetricsConfig,
    /// The HTTP/JSON front door (`/v1/...`, Rasa's `/model/parse`, `/openapi.json`).
    pub http: HttpConfig,
    /// Retries of the same (bot_id, message_id) / (bot_id, event_id) get the first answer.
    pub idempotency: IdempotencyConfig,
    pub model: ModelConfig,
    /// Official Account / WeCom app callbacks on the HTTP listener (`/wechat/{id}`).
    pub wechat: WechatConfig,
    /// How much the playbook's in-memory queues (review, dropped sends) keep.
    pub playbook_state: StateLimits,
    /// With PostgreSQL: one process serves the database, standbys take over (docs/deploy.md).
    pub leader: LeaderConfig,
}

/// `model:`: what the server does when the model cannot be loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// true: a missing or damaged model (no model.json, a truncated model.safetensors, no
    /// tokenizer.json) stops the server with one line saying why and a non-zero exit, after
    /// finishing what it answered meanwhile from rules. false: keep serving from rules alone
    /// (health NOT_SERVING), e.g. a keyword-only deployment.
    pub required: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { required: true }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".parse().expect("static address"),
            model_dir: "models/intentd-default".into(),
            auto_train: true,
            operator_dir: "config/operator".into(),
            training_data: "training-data/nlu".into(),
            seed: 42,
            max_in_flight: 256,
            request_timeout_ms: 5000,
            shutdown_grace_ms: 10_000,
            limits: Limits::default(),
            batching: BatchConfig::default(),
            serving: ServingConfig::default(),
            fusion: FusionConfig::default(),
            outbox: OutboxConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            store: StoreConfig::default(),
            metrics: MetricsConfig::default(),
            http: HttpConfig::default(),
            idempotency: IdempotencyConfig::default(),
            model: ModelConfig::default(),
            wechat: WechatConfig::default(),
            playbook_state: StateLimits::default(),
            leader: LeaderConfig::default(),
        }
    }
}

/// How the encoder computes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServingConfig {
    /// Dense layers: auto (int8 where the CPU has VNNI, else fp32), fp32 or int8.
    /// `INTENTD_DENSE_KERNEL` overrides it.
    pub precision: crate::model::dense::Precision,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Turn authentication off (local development only; logged loudly at start-up).
    pub disabled: bool,
    /// Admin token, for the AdminService RPCs; `admin_token_env` wins when that variable is set.
    pub admin_token: Option<String>,
    pub admin_token_env: Option<String>,
    /// The bots allowed to call, each with its token.
    pub bots: Vec<BotAuth>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotAuth {
    pub id: String,
    /// Literal token (for local use); `token_env` wins when that variable is set.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Prometheus `/metrics` address (a separate HTTP port).
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".parse().expect("static address"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    /// HTTP/JSON address (plain HTTP/1.1; put a TLS proxy in front for other hosts).
    pub listen: SocketAddr,
    /// Largest request body accepted; beyond it 413.
    pub max_body_bytes: usize,
    /// The operator console (`/console`, server-rendered HTML behind the admin token).
    pub console: ConsoleConfig,
}

/// `http.console`: the operator console's sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// Mark the session cookie `Secure` (the console is reached through a TLS proxy): browsers
    /// then send it over HTTPS only.
    pub secure_cookies: bool,
    /// A session unused this long is logged out (60..=86400).
    pub session_idle_s: u64,
    /// A session ends this long after login whatever its use (the cookie's Max-Age too;
    /// session_idle_s..=2592000).
    pub session_max_s: u64,
    /// Sessions held in memory (login pages not yet submitted included); beyond it the least
    /// recently used goes (16..=1000000).
    pub max_sessions: usize,
    /// Wrong admin tokens from one client address within `login_window_s` that lock that
    /// address out of the login until the oldest leaves the window (1..=1000).
    pub login_max_failures: usize,
    /// Wrong tokens from all addresses together within the window that lock every login
    /// (login_max_failures..=1000000).
    pub login_max_failures_global: usize,
    /// The window the failures are counted in, in seconds (10..=86400).
    pub login_window_s: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            secure_cookies: false,
            session_idle_s: 1800,
            session_max_s: 12 * 3600,
            max_sessions: 10_000,
            login_max_failures: 5,
            login_max_failures_global: 100,
            login_window_s: 300,
        }
    }
}

impl ConsoleConfig {
    pub fn validate(&self) -> Result<()> {
        if !(60..=86_400).contains(&self.session_idle_s) {
            bail!(
                "http.console.session_idle_s = {} is outside 60..=86400",
                self.session_idle_s
            );
        }
        if !(self.session_idle_s..=30 * 86_400).contains(&self.session_max_s) {
            bail!(
                "http.console.session_max_s = {} is outside session_idle_s ({})..=2592000",
                self.session_max_s,
                self.session_idle_s
            );
        }
        if !(16..=1_000_000).contains(&self.max_sessions) {
            bail!(
                "http.console.max_sessions = {} is outside 16..=1000000",
                self.max_sessions
            );
        }
        if !(1..=1000).contains(&self.login_max_failures) {
            bail!(
                "http.console.login_max_failures = {} is outside 1..=1000",
                self.login_max_failures
            );
        }
        if !(self.login_max_failures..=1_000_000).contains(&self.login_max_failures_global) {
            bail!(
                "http.console.login_max_failures_global = {} is outside login_max_failures ({})..=1000000",
                self.login_max_failures_global,
                self.login_max_failures
            );
        }
        if !(10..=86_400).contains(&self.login_window_s) {
            bail!(
                "http.console.login_window_s = {} is outside 10..=86400",
                self.login_window_s
            );
        }
        Ok(())
    }
}

/// Bounds of `http.max_body_bytes`: a batch of `limits.max_batch_requests` long texts must fit,
/// and no body may pin a large buffer.
pub const HTTP_BODY_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=64 * 1024 * 1024;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8080".parse().expect("static address"),
            max_body_bytes: 1024 * 1024,
            console: ConsoleConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Reads the file; relative paths inside it are taken from the current directory (the
    /// repository root when following the README).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: ServerConfig = serde_yaml_ng::from_str(&text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}", l.line()))
                .unwrap_or_default();
            anyhow::anyhow!("{}{at}: {e}", path.display())
        })?;
        cfg.validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.idempotency.window_s == 0 || self.idempotency.window_s > 30 * 86_400 {
            bail!(
                "idempotency.window_s = {} is outside 1..=2592000 (30 days)",
                self.idempotency.window_s
            );
        }
        if self.idempotency.cache_entries == 0 {
            bail!("idempotency.cache_entries must be at least 1");
        }
        if !HTTP_BODY_BYTES_RANGE.contains(&self.http.max_body_bytes) {
            bail!(
                "http.max_body_bytes = {} is outside {}..={}",
                self.http.max_body_bytes,
                HTTP_BODY_BYTES_RANGE.start(),
                HTTP_BODY_BYTES_RANGE.end()
            );
        }
        if self.http.enabled
            && self.metrics.enabled
            && self.http.listen == self.metrics.listen
            && self.http.listen.port() != 0
        {
            bail!(
                "http.listen and metrics.listen are both {}: give them different ports",
                self.http.listen
            );
        }
        if self.http.enabled && self.http.listen == self.listen && self.listen.port() != 0 {
            bail!(
                "http.listen and listen (gRPC) are both {}: give them different ports",
                self.listen
            );
        }
        self.http.console.validate()?;
        if self.max_in_flight == 0 {
            bail!("max_in_flight must be at least 1");
        }
        if self.limits.max_text_chars == 0 || self.limits.max_text_chars > 100_000 {
            bail!(
                "limits.max_text_chars must be 1..=100000, got {}",
                self.limits.max_text_chars
            );
        }
        if self.batching.max_batch_size == 0 || self.batching.max_batch_size > 256 {
            bail!(
                "batching.max_batch_size must be 1..=256, got {}",
                self.batching.max_batch_size
            );
        }
        if self.batching.queue_budget_ms > crate::service::batcher::MAX_QUEUE_BUDGET_MS {
            bail!(
                "batching.queue_budget_ms must be 0 (no limit) to {}, got {}",
                crate::service::batcher::MAX_QUEUE_BUDGET_MS,
                self.batching.queue_budget_ms
            );
        }
        if !self.auth.disabled && self.auth.bots.is_empty() {
            bail!("auth.bots is empty: list the bots with their tokens, or set auth.disabled: true for local use");
        }
        let mut seen = std::collections::HashSet::new();
        for b in &self.auth.bots {
            if b.id.trim().is_empty() {
                bail!("auth.bots: a bot has an empty id");
            }
            if !seen.insert(&b.id) {
                bail!("auth.bots: bot '{}' is listed twice", b.id);
            }
        }
        self.outbox.validate().map_err(anyhow::Error::msg)?;
        self.playbook_state.validate().map_err(anyhow::Error::msg)?;
        self.leader.validate().map_err(anyhow::Error::msg)?;
        self.wechat_accounts()?;
        self.store
            .validate()
            .map_err(|e| anyhow::anyhow!("store: {e}"))?;
        Ok(())
    }

    /// The WeChat accounts with their secrets read and checked.
    pub fn wechat_accounts(&self) -> Result<Vec<ResolvedAccount>> {
        if !self.wechat.accounts.is_empty() && !self.http.enabled {
            bail!("wechat.accounts are served on the HTTP listener: set http.enabled: true");
        }
        let bots = self.bot_ids();
        self.wechat
            .validate(|b| bots.is_empty() || bots.iter().any(|x| x == b))
            .map_err(anyhow::Error::msg)
    }

    /// Bots known to the server (even with auth disabled, bot ids are checked against this
    /// list when it is not empty).
    pub fn bot_ids(&self) -> Vec<String> {
        self.auth.bots.iter().map(|b| b.id.clone()).collect()
    }

    /// The part of the configuration the service layer works with.
    pub fn service_settings(&self) -> ServiceSettings {
        ServiceSettings {
            limits: self.limits.clone(),
            batching: self.batching.clone(),
            outbox: self.outbox.clone(),
            max_in_flight: self.max_in_flight,
            request_timeout_ms: self.request_timeout_ms,
            top_k: self.fusion.top_k,
            fusion: self.fusion.clone(),
            model_dir: self.model_dir.clone(),
            operator_dir: self.operator_dir.clone(),
            training_data: self.training_data.clone(),
            bots: self.bot_ids(),
            idempotency: self.idempotency.clone(),
        }
    }

    /// The store's settings, with what it needs from other sections.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            answer_window_s: self.idempotency.window_s,
            ..self.store.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/intentd.yml");
        let cfg = ServerConfig::load(&path).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:50051");
        assert!(!cfg.auth.bots.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yml");
        std::fs::write(&p, "listen: 127.0.0.1:1\nmax_inflight: 3\n").unwrap();
        let e = format!("{:#}", ServerConfig::load(&p).unwrap_err());
        assert!(e.contains("c.yml:2") && e.contains("max_inflight"), "{e}");
    }

    #[test]
    fn http_body_limit_and_ports_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yml");
        let base = "auth:\n  disabled: true\n";
        std::fs::write(&p, format!("{base}http:\n  max_body_bytes: 10\n")).unwrap();
        let e = format!("{:#}", ServerConfig::load(&p).unwrap_err());
        assert!(
            e.contains("http.max_body_bytes = 10 is outside 1024"),
            "{e}"
        );
        std::fs::write(&p, format!("{base}http:\n  listen: 127.0.0.1:50051\n")).unwrap();
        let e = format!("{:#}", ServerConfig::load(&p).unwrap_err());
        assert!(e.contains("http.listen and listen (gRPC)"), "{e}");
        std::fs::write(&p, format!("{base}http:\n  enabled: false\n")).unwrap();
        assert!(!ServerConfig::load(&p).unwrap().http.enabled);
    }

    #[test]
    fn console_sessions_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yml");
        let base = "auth:\n  disabled: true\nhttp:\n  console:\n";
        for (extra, want) in [
            (
                "    session_idle_s: 5\n",
                "http.console.session_idle_s = 5 is outside 60..=86400",
            ),
            (
                "    session_idle_s: 3600\n    session_max_s: 600\n",
                "http.console.session_max_s = 600 is outside session_idle_s (3600)",
            ),
            (
                "    max_sessions: 1\n",
                "http.console.max_sessions = 1 is outside 16",
            ),
        ] {
            std::fs::write(&p, format!("{base}{extra}")).unwrap();
            let e = format!("{:#}", ServerConfig::load(&p).unwrap_err());
            assert!(e.contains(want), "{e}");
        }
        std::fs::write(&p, format!("{base}    secure_cookies: true\n")).unwrap();
        let c = ServerConfig::load(&p).unwrap().http.console;
        assert!(c.enabled && c.secure_cookies);
        assert_eq!((c.session_idle_s, c.session_max_s), (1800, 43200));
    }

    #[test]
    fn wechat_accounts_are_checked_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yml");
        let account = |key: &str| {
            format!(
                "auth:\n  disabled: true\nwechat:\n  accounts:\n    - id: shop\n      kind: official_account\n      bot_id: demo\n      token: t\n      app_id: wx1\n      secret: s\n      encrypted: true\n      encoding_aes_key: {key}\n"
            )
        };
        std::fs::write(&p, account("tooshort")).unwrap();
        let e = format!("{:#}", ServerConfig::load(&p).unwrap_err());
        assert!(
            e.contains("wechat.accounts[0] (shop)") && e.contains("must be 43 characters, got 8"),
            "{e}"
        );
        std::fs::write(&p, account("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")).unwrap();
        let cfg = ServerConfig::load(&p).unwrap();
        assert_eq!(cfg.wechat.reply_budget_ms, 4500);
        assert_eq!(cfg.wechat.timestamp_window_s, 300);
        assert_eq!(cfg.wechat_accounts().unwrap()[0].receiver_id, "wx1");
        std::fs::write(&p, "auth:\n  disabled: true\nwechat:\n  reply_budget: 3\n").unwrap();
        let e = format!("{:#}", ServerConfig::load(&p).unwrap_err());
        assert!(e.contains("c.yml:4") && e.contains("reply_budget"), "{e}");
    }

    #[test]
    fn playbook_state_limits_are_checked_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yml");
        let with = |queue: &str| {
            format!("auth:\n  disabled: true\nplaybook_state:\n  {queue}:\n    max_entries: 0\n")
        };
        std::fs::write(&p, with("review_queue")).unwrap();
        let e = format!("{:#}", ServerConfig::load(&p).unwrap_err());
        assert!(
            e.contains("playbook_state.review_queue.max_entries = 0 is outside 1..=10000000"),
            "{e}"
        );
        std::fs::write(&p, with("dropped_sends")).unwrap();
        let e = format!("{:#}", ServerConfig::load(&p).unwrap_err());
        assert!(
            e.contains("playbook_state.dropped_sends.max_entries"),
            "{e}"
        );
        std::fs::write(&p, with("delayed_jobs")).unwrap();
        let e = format!("{:#}", ServerConfig::load(&p).unwrap_err());
        assert!(e.contains("playbook_state.delayed_jobs.max_entries"), "{e}");
        std::fs::write(
            &p,
            "auth:\n  disabled: true\nplaybook_state:\n  review_queue:\n    max_age_s: 60\n",
        )
        .unwrap();
        let cfg = ServerConfig::load(&p).unwrap();
        assert_eq!(cfg.playbook_state.review_queue.max_age_s, 60);
        assert_eq!(cfg.playbook_state.review_queue.max_entries, 10_000);
    }

    #[test]
    fn empty_bot_list_needs_explicit_auth_off() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yml");
        std::fs::write(&p, "auth:\n  bots: []\n").unwrap();
        assert!(format!("{:#}", ServerConfig::load(&p).unwrap_err()).contains("auth.disabled"));
        std::fs::write(&p, "auth:\n  disabled: true\n").unwrap();
        assert!(ServerConfig::load(&p).is_ok());
    }
}
