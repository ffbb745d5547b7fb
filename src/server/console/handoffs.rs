//! Handoffs: the open and claimed handoffs of every bot (`Service::list_handoffs`), with
//! Claim and Close (`Service::claim_handoff`, `Service::close_handoff`) under the session's
//! operator name. The outcome (or why it was refused: claimed by another agent, already
//! closed) is shown after the redirect (POST-redirect-GET).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

use super::guard::{flash, redirect_with, CheckedForm, Operator};
use super::layout::{csrf_field, errors, notice, page, respond, Chrome};
use super::sessions::Session;
use super::state::ConsoleState;
use crate::policy::operator_desk::HandoffEntry;

const PATH: &str = "/console/handoffs";

#[derive(Debug, Deserialize, Default)]
pub struct HandoffForm {
    #[serde(default)]
    pub bot: String,
    #[serde(default)]
    pub chat: String,
    #[serde(default)]
    pub id: String,
}

fn action_form(s: &Session, e: &HandoffEntry, what: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action={ (PATH) "/" (what) } {
            (csrf_field(s))
            input type="hidden" name="bot" value=(e.bot_id);
            input type="hidden" name="chat" value=(e.chat_id);
            input type="hidden" name="id" value=(e.handoff.id);
            button type="submit" { (label) }
        }
    }
}

fn item_row(state: &ConsoleState, s: &Session, e: &HandoffEntry) -> Markup {
    let h = &e.handoff;
    let when = |ms: i64| state.local_time(&e.bot_id, &e.chat_id, ms);
    html! {
        tr id={ "handoff-" (e.chat_id) "-" (h.id) } {
            td { (if e.chat_name.is_empty() { &e.chat_id } else { &e.chat_name }) br;
                 span.muted { code { (e.bot_id) } " / " code { (e.chat_id) } " #" (h.id) } }
            td { (h.user_id) }
            td { code { (h.reason) } }
            td.num { (h.wait_minutes) " min" }
            td { (when(h.opened_ms)) }
            td {
                @if h.claimed() {
                    span.state.claimed { "claimed" } " by " strong { (h.claimed_by) }
                    " at " (when(h.claimed_ms))
                } @else {
                    span.state.open { "open" }
                    @if let Some(x) = e.expires_ms { br; span.muted { "stops counting at " (when(x)) } }
                }
            }
            td {
                @if !h.claimed() || h.claimed_by == s.name {
                    @if !h.claimed() { (action_form(s, e, "claim", "Claim")) }
                    (action_form(s, e, "close", "Close"))
                } @else {
                    span.muted { "taken by another agent" }
                }
            }
        }
    }
}

fn render(
    state: &ConsoleState,
    s: &Session,
    list: Result<Vec<HandoffEntry>, String>,
    problems: &[String],
    status: StatusCode,
) -> Response {
    let chrome = Chrome {
        title: "Handoffs",
        active: PATH,
        session: Some(s),
        auth_disabled: state.auth.disabled(),
    };
    let body = html! {
        (flash(state, s))
        (errors(problems))
        p.muted {
            "Conversations the bot handed to a person, oldest first. Claim one to take it (as “"
            (s.name) "”), close it when you are done."
        }
        @match list {
            Err(e) => (notice("error", &e)),
            Ok(list) if list.is_empty() => p #empty.muted { "No open handoffs." },
            Ok(list) => table.data #handoffs {
                thead { tr {
                    th { "Group" } th { "User" } th { "Reason" } th.num { "Announced wait" }
                    th { "Opened" } th { "State" } th { "" }
                } }
                tbody { @for e in &list { (item_row(state, s, e)) } }
            },
        }
    };
    respond(status, page(&chrome, body))
}

async fn listed(state: &ConsoleState) -> Result<Vec<HandoffEntry>, String> {
    state
        .service
        .list_handoffs("")
        .await
        .map_err(|e| e.to_string())
}

pub async fn show(State(state): State<ConsoleState>, Operator(s): Operator) -> Response {
    let list = listed(&state).await;
    render(&state, &s, list, &[], StatusCode::OK)
}

/// Claim or close; `claim` picks which.
async fn act(state: ConsoleState, f: CheckedForm<HandoffForm>, claim: bool) -> Response {
    let CheckedForm { session, form } = f;
    let mut problems = Vec::new();
    let id = form.id.trim().parse::<u64>();
    if id.is_err() {
        problems.push(format!(
            "Handoff id: '{}' is not a handoff number.",
            crate::service::validate::shown(&form.id)
        ));
    }
    for (name, v) in [("Bot", &form.bot), ("Group", &form.chat)] {
        if v.trim().is_empty() {
            problems.push(format!("{name}: missing."));
        }
    }
    let id = match id {
        Ok(id) if problems.is_empty() => id,
        _ => {
            let list = listed(&state).await;
            return render(&state, &session, list, &problems, StatusCode::BAD_REQUEST);
        }
    };
    let (bot, chat, agent) = (form.bot.trim(), form.chat.trim(), session.name.as_str());
    let svc = &state.service;
    let result = if claim {
        svc.claim_handoff(bot, chat, id, agent).await
    } else {
        svc.close_handoff(bot, chat, id, agent).await
    };
    let verb = if claim { "claimed" } else { "closed" };
    match result {
        Ok(h) => redirect_with(
            &state,
            &session,
            "ok",
            format!(
                "Handoff #{id} in group {chat} (user {}) {verb} by {agent}.",
                h.user_id
            ),
            PATH,
        ),
        Err(e) => redirect_with(
            &state,
            &session,
            "error",
            format!("Handoff #{id} in group {chat} not {verb}: {e}"),
            PATH,
        ),
    }
}

pub async fn submit_claim(
    State(state): State<ConsoleState>,
    f: CheckedForm<HandoffForm>,
) -> Response {
    act(state, f, true).await
}

pub async fn submit_close(
    State(state): State<ConsoleState>,
    f: CheckedForm<HandoffForm>,
) -> Response {
    act(state, f, false).await
}
