//! What every console handler shares.

use std::sync::Arc;
use std::time::Instant;

use crate::config::ConsoleConfig;
use crate::server::auth::Authenticator;
use crate::service::Service;

use super::login_limit::LoginLimiter;
use super::sessions::Sessions;

#[derive(Clone)]
pub struct ConsoleState {
    pub service: Arc<Service>,
    pub auth: Arc<Authenticator>,
    pub sessions: Arc<Sessions>,
    /// Failed logins per client address and in total.
    pub logins: Arc<LoginLimiter>,
    pub config: ConsoleConfig,
}

impl ConsoleState {
    /// With a store, logged-in sessions are written through the service and the ones a
    /// previous run stored are loaded.
    pub fn new(service: Arc<Service>, auth: Arc<Authenticator>, config: &ConsoleConfig) -> Self {
        let rows = service.console_sessions();
        let sessions = if rows.is_durable() {
            Sessions::durable(config, rows, Instant::now(), service.now_ms())
        } else {
            Sessions::new(config)
        };
        Self {
            service,
            auth,
            sessions: Arc::new(sessions),
            logins: Arc::new(LoginLimiter::new(config)),
            config: config.clone(),
        }
    }

    /// Bots an operator can pick: the configured ones (empty when any bot id is accepted).
    pub fn bots(&self) -> &[String] {
        &self.service.settings.bots
    }
}

impl ConsoleState {
    /// `at_ms` as `YYYY-MM-DD HH:MM` in the time zone of the bot's group.
    pub fn local_time(&self, bot_id: &str, chat_id: &str, at_ms: i64) -> String {
        let tz = self
            .service
            .operator()
            .policy
            .settings(bot_id, chat_id)
            .timezone;
        chrono::DateTime::from_timestamp_millis(at_ms)
            .unwrap_or_default()
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M")
            .to_string()
    }
}
