//! Log in with the admin token (`auth.admin_token`), log out. Logins and refused tokens are
//! audited (`admin_call`, actor `console`).
//!
//! Wrong tokens are counted per client address and in total ([`super::login_limit`]): past the
//! limit every login attempt from that address (or from all) is answered 429 with a
//! `Retry-After` header and a page saying when to try again, the right token included. A
//! login or logout answers once the session's row is committed (with a store), so a restart
//! right after it neither logs the operator out nor brings the session back.
//!
//! With `auth.disabled: true` the rest of the server takes any caller, and so does the
//! console: the login form asks for no token (one button), but a session and its CSRF token
//! are still required for every form. With authentication on and no admin token configured,
//! nobody can log in (the page says how to configure one).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::guard::{
    bad_form, clear_cookie, cookie_value, csrf_of, csrf_refused, decode_form, session_of,
    set_cookie, CheckedForm,
};
use super::layout::{csrf_field, notice, page, problem, respond, Chrome};
use super::login_limit::Locked;
use super::sessions::{Session, LOGIN_PAGE_TTL};
use super::state::ConsoleState;
use crate::service::desk::check_agent;
use crate::store::AuditAction;

/// A wrong token waits this long before its answer (slows guessing down).
const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(400);

#[derive(Deserialize, Default)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    /// Who logs in: the desk records reviews, claims and labels under this name.
    #[serde(default)]
    name: String,
}

fn login_page(state: &ConsoleState, s: &Session, error: Option<&str>) -> Markup {
    let disabled = state.auth.disabled();
    let chrome = Chrome {
        title: "Log in",
        active: "",
        session: None,
        auth_disabled: disabled,
    };
    page(
        &chrome,
        html! {
            @if let Some(e) = error { (notice("error", e)) }
            @if !disabled && !state.auth.has_admin() {
                (notice("error", "No admin token is configured: set auth.admin_token in the configuration (or the variable named by auth.admin_token_env) and restart to use the console."))
            } @else {
                form.card method="post" action="/console/login" {
                    (csrf_field(s))
                    @if disabled {
                        p { "Authentication is off: no token is needed." }
                    } @else {
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        p.hint { "The token of auth.admin_token (or the variable named by auth.admin_token_env)." }
                    }
                    label for="name" { "Your operator name" }
                    input #name type="text" name="name" maxlength="64" required autocomplete="username";
                    p.hint { "Reviews, handoff claims and labels are recorded under this name (1 to 64 characters)." }
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

/// The login form; a logged-in operator goes to the overview.
pub async fn show(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let session = match session_of(&state, &headers) {
        Some(s) if s.operator => return Redirect::to("/console/overview").into_response(),
        Some(s) => s,
        None => state.sessions.start_anonymous(Instant::now()),
    };
    let mut resp = respond(StatusCode::OK, login_page(&state, &session, None));
    resp.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&state, &session.id, LOGIN_PAGE_TTL.as_secs()),
    );
    resp
}

/// The 429 answer while failed logins lock the client out: when to try again, in seconds
/// (`Retry-After`) and as a time on the service clock.
fn locked_out(state: &ConsoleState, session: &Session, l: Locked) -> Response {
    let secs = l.retry_after.as_secs().max(1);
    let at = chrono::DateTime::from_timestamp_millis(
        state.service.now_ms().saturating_add(secs as i64 * 1000),
    )
    .map(|t| t.format("%H:%M:%S UTC").to_string())
    .unwrap_or_default();
    let (limit, window) = state.logins.per_address();
    let who = if l.global {
        "from all addresses together"
    } else {
        "from your address"
    };
    let msg = format!(
        "Too many wrong tokens {who} (the limit is {limit} per address, and more from all, \
         within {} minutes): logging in is locked. Try again in {secs} seconds (after {at}).",
        window.as_secs().div_ceil(60)
    );
    let mut resp = respond(
        StatusCode::TOO_MANY_REQUESTS,
        login_page(state, session, Some(&msg)),
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&secs.to_string()).expect("digits are a valid header value"),
    );
    resp
}

/// Checks the login form's CSRF token (its anonymous session's), the failed-login lock and
/// the admin token; on success a new session id replaces the login page's.
pub async fn submit(State(state): State<ConsoleState>, req: Request) -> Response {
    let headers = req.headers().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let bytes = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Bad form",
                "The login form is too large.",
                None,
            )
        }
    };
    let Some(session) = session_of(&state, &headers) else {
        // No session: the login page was not loaded first, or it expired.
        return csrf_refused(None);
    };
    if !session.csrf_matches(&csrf_of(&bytes)) {
        return csrf_refused(None);
    }
    let form: LoginForm = match decode_form(&bytes) {
        Ok(f) => f,
        Err(e) => return bad_form(e, None),
    };
    let service = &state.service;
    if !state.auth.disabled() {
        if let Err(l) = state.logins.check(peer, Instant::now()) {
            service.audit(
                "console",
                AuditAction::AdminCall,
                &format!(
                    "console login refused: locked after failed logins ({})",
                    if l.global {
                        "all addresses"
                    } else {
                        "this address"
                    }
                ),
            );
            return locked_out(&state, &session, l);
        }
        if form.token.trim().is_empty() {
            return respond(
                StatusCode::BAD_REQUEST,
                login_page(&state, &session, Some("Enter the admin token.")),
            );
        }
        if !state.auth.is_admin_token(form.token.trim()) {
            state.logins.failed(peer, Instant::now());
            service.audit(
                "console",
                AuditAction::AdminCall,
                "console login refused: wrong token",
            );
            tokio::time::sleep(WRONG_TOKEN_DELAY).await;
            return respond(
                StatusCode::UNAUTHORIZED,
                login_page(
                    &state,
                    &session,
                    Some("Wrong token: this is not the admin token."),
                ),
            );
        }
    }
    let name = form.name.trim();
    if let Err(e) = check_agent("name", name) {
        let msg = format!("Operator name: {e}");
        return respond(
            StatusCode::BAD_REQUEST,
            login_page(&state, &session, Some(&msg)),
        );
    }
    state.logins.succeeded(peer);
    let old = cookie_value(&headers).unwrap_or_default();
    let op = state.sessions.log_in(&old, name, Instant::now());
    if let Err(e) = service.store_console_sessions().await {
        // The session works; it is written with a later commit (or lost by a restart).
        tracing::warn!(error = %e, "console login: session not stored yet");
    }
    service.audit(name, AuditAction::AdminCall, "console login");
    let mut resp = Redirect::to("/console/overview").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&state, &op.id, state.sessions.max_age().as_secs()),
    );
    resp
}

#[derive(Deserialize)]
pub struct Empty {}

pub async fn logout(State(state): State<ConsoleState>, f: CheckedForm<Empty>) -> Response {
    state.sessions.end(&f.session.id);
    if let Err(e) = state.service.store_console_sessions().await {
        tracing::warn!(error = %e, "console logout: the ended session's row is not deleted yet");
    }
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(&state));
    resp
}
