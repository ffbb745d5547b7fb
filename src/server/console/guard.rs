//! The console's gate: the session cookie, the logged-in extractor ([`Operator`]) and POST
//! forms checked against the session's CSRF token ([`CheckedForm`]).
//!
//! Without a logged-in session a page (GET) redirects to the login form and anything else is
//! 401. A POST whose `csrf` field is missing or not the session's token is 403 and does
//! nothing. The cookie is `HttpOnly` and `SameSite=Strict` (and `Secure` with
//! `http.console.secure_cookies`), so other sites can neither read it nor send it.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use maud::{html, Markup};

use super::layout::{notice, problem};
use super::sessions::Session;
use super::state::ConsoleState;

pub const COOKIE: &str = "intentd_console";

/// The session id in the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value for a session living `max_age_s`.
pub fn set_cookie(state: &ConsoleState, id: &str, max_age_s: u64) -> HeaderValue {
    let secure = if state.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .expect("hex ids are valid header values")
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(state: &ConsoleState) -> HeaderValue {
    set_cookie(state, "", 0)
}

/// The request's live session, if any (logged in or not).
pub fn session_of(state: &ConsoleState, headers: &HeaderMap) -> Option<Session> {
    let id = cookie_value(headers)?;
    state.sessions.get(&id, Instant::now())
}

/// A logged-in operator's session.
pub struct Operator(pub Session);

impl FromRequestParts<ConsoleState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ConsoleState) -> Result<Self, Response> {
        match session_of(state, &parts.headers) {
            Some(s) if s.operator => Ok(Operator(s)),
            _ if parts.method == Method::GET || parts.method == Method::HEAD => {
                Err(Redirect::to("/console/login").into_response())
            }
            _ => Err(problem(
                StatusCode::UNAUTHORIZED,
                "Login required",
                "Log in to the console first (your session may have expired).",
                None,
            )),
        }
    }
}

/// POST-redirect-GET: leaves `text` for the session's next page and sends the browser to `to`.
pub fn redirect_with(
    state: &ConsoleState,
    session: &Session,
    kind: &'static str,
    text: String,
    to: &str,
) -> Response {
    state.sessions.set_flash(&session.id, kind, text);
    Redirect::to(to).into_response()
}

/// The message a form left for this page, if any (shown once).
pub fn flash(state: &ConsoleState, session: &Session) -> Markup {
    match state.sessions.take_flash(&session.id) {
        Some(f) => html! { div #outcome { (notice(f.kind, &f.text)) } },
        None => html! {},
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// The 403 answer to a form without the session's token.
pub fn csrf_refused(session: Option<&Session>) -> Response {
    problem(
        StatusCode::FORBIDDEN,
        "Form refused",
        "This form has no valid CSRF token (it was not sent by a console page of your session, \
         or the page is older than your login). Reload the page and submit it again.",
        session,
    )
}

/// Decodes an `application/x-www-form-urlencoded` body into `T`.
pub fn decode_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_urlencoded::de::Error> {
    serde_urlencoded::from_bytes(bytes)
}

/// The 400 answer to a form body that does not fit its fields.
pub fn bad_form(e: serde_urlencoded::de::Error, session: Option<&Session>) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "Bad form",
        &format!("The form could not be read: {e}"),
        session,
    )
}

/// The CSRF token in a form body ("" when missing or unreadable).
pub fn csrf_of(bytes: &[u8]) -> String {
    serde_urlencoded::from_bytes::<CsrfOnly>(bytes)
        .map(|c| c.csrf)
        .unwrap_or_default()
}

/// A POST form of a logged-in operator whose `csrf` field is the session's token.
pub struct CheckedForm<T> {
    pub session: Session,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<ConsoleState> for CheckedForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &ConsoleState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Operator(session) = Operator::from_request_parts(&mut parts, state).await?;
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        if !session.csrf_matches(&csrf_of(&bytes)) {
            return Err(csrf_refused(Some(&session)));
        }
        let form = decode_form(&bytes).map_err(|e| bad_form(e, Some(&session)))?;
        Ok(CheckedForm { session, form })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; intentd_console=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "x=1".parse().unwrap());
        h.append(header::COOKIE, "intentd_console=def".parse().unwrap());
        assert_eq!(cookie_value(&h).as_deref(), Some("def"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "intentd_console=".parse().unwrap());
        assert_eq!(cookie_value(&h), None);
    }

    #[test]
    fn csrf_is_read_from_the_form() {
        assert_eq!(csrf_of(b"text=%E4%BD%A0&csrf=abc"), "abc");
        assert_eq!(csrf_of(b"text=x"), "");
        assert_eq!(csrf_of(b"\xff\xfe"), "");
    }
}
