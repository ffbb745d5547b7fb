//! Inbox: what the bot did not understand well (`Service::label_inbox`: low confidence,
//! clarify, not understood, marked unhelpful), grouped by the intent the engine found
//! likeliest. An operator assigns the right intent from intents.yml (`Service::assign_label`,
//! under the session's operator name); `/console/labels.yml` downloads every label as the
//! Rasa NLU YAML `intentd train` reads (`Service::export_labels`).

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::guard::{flash, redirect_with, CheckedForm, Operator};
use super::layout::{csrf_field, errors, notice, page, pct, respond, Chrome};
use super::sessions::Session;
use super::state::ConsoleState;
use crate::service::labels::{InboxGroup, InboxItem, InboxQuery, DEFAULT_BELOW_CONFIDENCE};

const PATH: &str = "/console/inbox";
/// How far back the inbox looks, in days.
const DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Deserialize, Default)]
pub struct InboxParams {
    /// `1`: labelled messages too.
    #[serde(default)]
    pub all: String,
}

#[derive(Debug, Deserialize, Default)]
pub struct LabelForm {
    #[serde(default)]
    pub conversation_id: String,
    #[serde(default)]
    pub intent: String,
}

fn item_row(state: &ConsoleState, s: &Session, intents: &[String], i: &InboxItem) -> Markup {
    html! {
        tr id={ "inbox-" (i.conversation_id) } {
            td { (state.local_time(&i.bot_id, &i.chat_id, i.at_ms)) br;
                 span.muted { code { (i.bot_id) } " / " code { (i.chat_id) } } }
            td.reply { (i.text) }
            td { @for w in &i.why { span.term { (w) } " " } }
            td.num { (pct(f64::from(i.confidence))) }
            td { span.action { (i.action.as_str()) } br; code { (i.reason) } }
            td {
                form.inline method="post" action="/console/inbox/label" {
                    (csrf_field(s))
                    input type="hidden" name="conversation_id" value=(i.conversation_id);
                    select name="intent" aria-label="Intent" {
                        @for id in intents {
                            option value=(id) selected[Some(id) == i.label.as_ref() || (i.label.is_none() && *id == i.intent)] { (id) }
                        }
                    }
                    button type="submit" { (if i.label.is_some() { "Relabel" } else { "Label" }) }
                }
                @if let Some(l) = &i.label { span.ok { "labelled " code { (l) } } }
            }
        }
    }
}

fn render(
    state: &ConsoleState,
    s: &Session,
    all: bool,
    groups: Result<Vec<InboxGroup>, String>,
    problems: &[String],
    status: StatusCode,
) -> Response {
    let chrome = Chrome {
        title: "Inbox",
        active: PATH,
        session: Some(s),
        auth_disabled: state.auth.disabled(),
    };
    let intents: Vec<String> = state
        .service
        .operator()
        .catalog
        .ids()
        .map(str::to_string)
        .collect();
    let (_, labelled) = state.service.export_labels("");
    let body = html! {
        (flash(state, s))
        (errors(problems))
        p.muted {
            "Messages of the last " (DAYS) " days the bot did not understand well: answered below "
            (pct(f64::from(DEFAULT_BELOW_CONFIDENCE))) " confidence, asked to clarify, handed off because it did not understand, "
            "or marked unhelpful. Assign the right intent; the labels train the next model."
        }
        p {
            a.button #export href="/console/labels.yml" download="labels.yml" { "Download labels.yml" }
            " " span.muted { (labelled) " labelled messages · Rasa NLU YAML, for intentd train" }
            " · "
            @if all { a href=(PATH) { "Hide labelled messages" } }
            @else { a href={ (PATH) "?all=1" } { "Show labelled messages too" } }
        }
        @match groups {
            Err(e) => (notice("error", &e)),
            Ok(groups) if groups.is_empty() => p #empty.muted { "The inbox is empty." },
            Ok(groups) => {
                @for g in &groups {
                    section.inbox-group {
                        h2 {
                            "Likely intent: "
                            @if g.likely_intent.is_empty() { "none recognised" } @else { code { (g.likely_intent) } }
                            " · " (g.items.len())
                        }
                        table.data {
                            thead { tr {
                                th { "Time" } th { "Message" } th { "Why" } th.num { "Confidence" }
                                th { "Action" } th { "Assign intent" }
                            } }
                            tbody { @for i in &g.items { (item_row(state, s, &intents, i)) } }
                        }
                    }
                }
            }
        }
    };
    respond(status, page(&chrome, body))
}

async fn listed(state: &ConsoleState, all: bool) -> Result<Vec<InboxGroup>, String> {
    let q = InboxQuery {
        bot_id: String::new(),
        from_ms: state.service.now_ms() - DAYS * DAY_MS,
        to_ms: 0,
        below_confidence: DEFAULT_BELOW_CONFIDENCE,
        include_labelled: all,
    };
    state
        .service
        .label_inbox(&q)
        .await
        .map_err(|e| e.to_string())
}

pub async fn show(
    State(state): State<ConsoleState>,
    Operator(s): Operator,
    Query(q): Query<InboxParams>,
) -> Response {
    let all = q.all == "1";
    let groups = listed(&state, all).await;
    render(&state, &s, all, groups, &[], StatusCode::OK)
}

pub async fn submit_label(
    State(state): State<ConsoleState>,
    f: CheckedForm<LabelForm>,
) -> Response {
    let CheckedForm { session, form } = f;
    let mut problems = Vec::new();
    let id = form.conversation_id.trim().parse::<i64>();
    if id.is_err() {
        problems.push(format!(
            "Message: '{}' is not a logged message number.",
            crate::service::validate::shown(&form.conversation_id)
        ));
    }
    let intent = form.intent.trim();
    if intent.is_empty() {
        problems.push("Intent: choose one.".to_string());
    } else if !state.service.operator().catalog.contains(intent) {
        problems.push(format!(
            "Intent: '{}' is not an intent of intents.yml.",
            crate::service::validate::shown(intent)
        ));
    }
    let id = match id {
        Ok(id) if problems.is_empty() => id,
        _ => {
            let groups = listed(&state, false).await;
            return render(
                &state,
                &session,
                false,
                groups,
                &problems,
                StatusCode::BAD_REQUEST,
            );
        }
    };
    match state.service.assign_label(id, intent, &session.name).await {
        Ok(l) => redirect_with(
            &state,
            &session,
            "ok",
            format!("Labelled “{}” as {} (by {}).", l.text, l.intent, l.by),
            PATH,
        ),
        Err(e) => redirect_with(
            &state,
            &session,
            "error",
            format!("Message {id} not labelled: {e}"),
            PATH,
        ),
    }
}

/// Every label as Rasa NLU YAML, as a download.
pub async fn export(State(state): State<ConsoleState>, Operator(_): Operator) -> Response {
    let (yaml, _) = state.service.export_labels("");
    let mut resp = (StatusCode::OK, yaml).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/yaml; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"labels.yml\""),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
