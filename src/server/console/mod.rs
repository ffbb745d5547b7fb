//! The operator console: server-rendered HTML pages under `/console` on the HTTP listener, for
//! the people who run the groups. Another thin front door: it only calls the `Service` and
//! renders (maud, every value escaped); it holds no business logic.
//!
//! One file per concept: [`sessions`] (sessions in memory and, with a store, written through
//! the service; CSRF tokens), [`guard`] (the cookie, the login requirement, CSRF-checked
//! forms), [`login`] with [`login_limit`] (failed logins per address), [`layout`] (page shell, security
//! headers), [`filters`] (bot / group / window), [`chart`] (inline SVG), and the pages
//! [`overview`], [`experiments`], [`try_it`], [`replies`], and the operators' desk [`review`],
//! [`handoffs`], [`inbox`]; [`assets`] embeds the stylesheet.

pub mod assets;
pub mod chart;
pub mod experiments;
pub mod filters;
pub mod guard;
pub mod handoffs;
pub mod inbox;
pub mod layout;
pub mod login;
pub mod login_limit;
pub mod overview;
pub mod replies;
pub mod review;
pub mod sessions;
pub mod state;
pub mod try_it;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

pub use state::ConsoleState;

async fn home() -> Response {
    Redirect::to("/console/overview").into_response()
}

async fn not_found(State(state): State<ConsoleState>, req: Request) -> Response {
    let session = guard::session_of(&state, req.headers()).filter(|s| s.operator);
    layout::problem(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!(
            "There is no console page {} {}.",
            req.method(),
            req.uri().path()
        ),
        session.as_ref(),
    )
}

/// The console's routes, to be nested under `/console` (any outer router state).
pub fn router<S: Clone + Send + Sync + 'static>(state: ConsoleState) -> Router<S> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login::show).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/overview", get(overview::show))
        .route("/experiments", get(experiments::show))
        .route("/try", get(try_it::show).post(try_it::submit))
        .route("/replies", get(replies::show))
        .route("/replies/preview", post(replies::submit_preview))
        .route("/replies/reload", post(replies::submit_reload))
        .route("/review", get(review::show))
        .route("/review/approve", post(review::submit_approve))
        .route("/review/confirm", post(review::submit_confirm))
        .route("/handoffs", get(handoffs::show))
        .route("/handoffs/claim", post(handoffs::submit_claim))
        .route("/handoffs/close", post(handoffs::submit_close))
        .route("/inbox", get(inbox::show))
        .route("/inbox/label", post(inbox::submit_label))
        .route("/labels.yml", get(inbox::export))
        .route("/assets/console.css", get(assets::css))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            only_where_it_leads,
        ))
        .with_state(state)
}

/// Among replicas that all serve, the console (its sessions, the labels) lives on the one
/// holding the leader lease; the others answer 503 so a balancer moves on to it
/// (`proxy_next_upstream http_503` in the nginx example). Nothing was done, so a form posted
/// here is safe to send again.
async fn only_where_it_leads(
    State(state): State<ConsoleState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if state.service.leads() {
        return next.run(req).await;
    }
    let mut resp = layout::problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Not on this replica",
        "This intentd replica does not hold the leader lease; the console is served by the one \
         that does. Try again: the balancer sends you there.",
        None,
    );
    resp.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    resp
}
