//! Review: the queue of blocked messages (`Service::list_reviews`). Per pending item an
//! operator approves it (a false positive: the message is answered after all, optionally with
//! its word allowed in that group from now on) or confirms the block
//! (`Service::approve_review`, `Service::confirm_review`), under the session's operator name.
//! The outcome (the answer's action and reply, or why it was refused) is shown after the
//! redirect (POST-redirect-GET).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

use super::guard::{flash, redirect_with, CheckedForm, Operator};
use super::layout::{csrf_field, errors, notice, page, respond, Chrome};
use super::sessions::Session;
use super::state::ConsoleState;
use crate::service::desk::{ReviewEntry, ReviewOutcome};

const PATH: &str = "/console/review";

#[derive(Debug, Deserialize, Default)]
pub struct ReviewQuery {
    /// `1`: decided entries too.
    #[serde(default)]
    pub all: String,
}

#[derive(Debug, Deserialize, Default)]
pub struct DecideForm {
    #[serde(default)]
    pub id: String,
    /// Present (a checked box): allow the matched word in the message's group.
    #[serde(default)]
    pub allow_word: Option<String>,
}

fn item_row(state: &ConsoleState, s: &Session, e: &ReviewEntry) -> Markup {
    let r = &e.item;
    html! {
        tr id={ "review-" (e.id) } {
            td.num { (e.id) }
            td { (state.local_time(&r.bot_id, &r.chat_id, r.at_ms)) }
            td { code { (r.bot_id) } " / " code { (r.chat_id) } br; span.muted { "user " (r.user_id) } }
            td.reply { (r.text) }
            td { @if r.matched.is_empty() { span.muted { "—" } } @else { span.term { (r.matched) } } }
            td { code { (r.reason) } }
            td {
                @match &r.verdict {
                    Some(v) => {
                        @if v.approved {
                            span.ok { "approved" } @if v.allowed_word { " (word allowed in this group)" }
                        } @else {
                            span.bad { "block confirmed" }
                        }
                        " by " (v.by) " at " (state.local_time(&r.bot_id, &r.chat_id, v.at_ms))
                    }
                    None => {
                        form.inline method="post" action="/console/review/approve" {
                            (csrf_field(s))
                            input type="hidden" name="id" value=(e.id);
                            @if !r.matched.is_empty() {
                                label.check { input type="checkbox" name="allow_word" value="1"; " allow this word in this group" }
                            }
                            button type="submit" { "Approve" }
                        }
                        form.inline method="post" action="/console/review/confirm" {
                            (csrf_field(s))
                            input type="hidden" name="id" value=(e.id);
                            button.secondary type="submit" { "Confirm" }
                        }
                    }
                }
            }
        }
    }
}

fn render(
    state: &ConsoleState,
    s: &Session,
    all: bool,
    list: Result<Vec<ReviewEntry>, String>,
    problems: &[String],
    status: StatusCode,
) -> Response {
    let chrome = Chrome {
        title: "Review",
        active: PATH,
        session: Some(s),
        auth_disabled: state.auth.disabled(),
    };
    let body = html! {
        (flash(state, s))
        (errors(problems))
        p.muted {
            "Messages the compliance check blocked (a banned word or a blocked intent). Approve a false positive: "
            "the message is answered after all. Confirm: the block stands. Your decisions are recorded as “"
            (s.name) "”."
        }
        p {
            @if all {
                a href=(PATH) { "Show pending only" }
            } @else {
                a href={ (PATH) "?all=1" } { "Show decided ones too" }
            }
        }
        @match list {
            Err(e) => (notice("error", &e)),
            Ok(list) if list.is_empty() => p #empty.muted { "Nothing to review." },
            Ok(list) => table.data #reviews {
                thead { tr {
                    th.num { "#" } th { "Time" } th { "Bot / group" } th { "Message" }
                    th { "Matched word" } th { "Reason" } th { "Decision" }
                } }
                tbody { @for e in &list { (item_row(state, s, e)) } }
            },
        }
    };
    respond(status, page(&chrome, body))
}

async fn listed(state: &ConsoleState, all: bool) -> Result<Vec<ReviewEntry>, String> {
    state
        .service
        .list_reviews(!all)
        .await
        .map_err(|e| e.to_string())
}

pub async fn show(
    State(state): State<ConsoleState>,
    Operator(s): Operator,
    Query(q): Query<ReviewQuery>,
) -> Response {
    let all = q.all == "1";
    let list = listed(&state, all).await;
    render(&state, &s, all, list, &[], StatusCode::OK)
}

/// The review id of a form, or the page again with the problem (400).
async fn id_of(state: &ConsoleState, s: &Session, f: &DecideForm) -> Result<u64, Response> {
    match f.id.trim().parse::<u64>() {
        Ok(id) => Ok(id),
        Err(_) => {
            let problem = format!(
                "Review id: '{}' is not a review number.",
                crate::service::validate::shown(&f.id)
            );
            let list = listed(state, false).await;
            Err(render(
                state,
                s,
                false,
                list,
                &[problem],
                StatusCode::BAD_REQUEST,
            ))
        }
    }
}

/// What an approval did, in words.
pub fn approved_text(o: &ReviewOutcome, allow_word: bool) -> String {
    let id = o.entry.id;
    match &o.answer {
        None => format!("Review #{id} was already approved by you: nothing changed."),
        Some(d) => {
            let mut t = format!(
                "Approved review #{id}: the message is answered now (action {}, rule {})",
                d.action.as_str(),
                d.reason
            );
            match d.reply.as_ref().filter(|r| !r.text.is_empty()) {
                Some(r) => t.push_str(&format!("; reply queued: “{}”", r.text)),
                None => t.push_str("; no reply is sent"),
            }
            if allow_word && !o.entry.item.matched.is_empty() {
                t.push_str(&format!(
                    ". “{}” is allowed in group {} from now on",
                    o.entry.item.matched, o.entry.item.chat_id
                ));
            }
            t.push('.');
            t
        }
    }
}

pub async fn submit_approve(
    State(state): State<ConsoleState>,
    f: CheckedForm<DecideForm>,
) -> Response {
    let CheckedForm { session, form } = f;
    let id = match id_of(&state, &session, &form).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let allow = form.allow_word.is_some();
    match state.service.approve_review(id, allow, &session.name).await {
        Ok(o) => redirect_with(&state, &session, "ok", approved_text(&o, allow), PATH),
        Err(e) => redirect_with(
            &state,
            &session,
            "error",
            format!("Review #{id} not approved: {e}"),
            PATH,
        ),
    }
}

pub async fn submit_confirm(
    State(state): State<ConsoleState>,
    f: CheckedForm<DecideForm>,
) -> Response {
    let CheckedForm { session, form } = f;
    let id = match id_of(&state, &session, &form).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    match state.service.confirm_review(id, &session.name).await {
        Ok(_) => redirect_with(
            &state,
            &session,
            "ok",
            format!("Review #{id}: the block stands (confirmed)."),
            PATH,
        ),
        Err(e) => redirect_with(
            &state,
            &session,
            "error",
            format!("Review #{id} not confirmed: {e}"),
            PATH,
        ),
    }
}
