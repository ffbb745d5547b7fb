//! Inbox: what the bot did not understand well (`Service::label_inbox`: low confidence,
//! clarify, not understood, marked unhelpful), grouped by the intent the engine found
//! likeliest. An operator assigns the right intent from intents.yml (`Service::assign_label`,
//! under the session's operator name); `/console/labels.yml` downloads the labels as the Rasa
//! NLU YAML `intentd train` reads (`Service::export_labels_between`).
//!
//! Both take the same filter (`filters::read_days`): a bot or every bot, and a window of days
//! in the bot's time zone (30 by default, at most 62), so the download holds the labels of the
//! messages the page lists.

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;

use super::filters::{self, DayWindow, FilterQuery};
use super::guard::{flash, redirect_with, CheckedForm, Operator};
use super::layout::{csrf_field, errors, notice, page, pct, respond, Chrome};
use super::sessions::Session;
use super::state::ConsoleState;
use crate::service::labels::{InboxGroup, InboxItem, InboxQuery, DEFAULT_BELOW_CONFIDENCE};

const PATH: &str = "/console/inbox";
/// How far back the inbox looks by default, and at most, in days.
const DAYS: u64 = 30;
const MAX_DAYS: u64 = filters::MAX_DAYS;

#[derive(Debug, Deserialize, Default)]
pub struct InboxParams {
    /// `1`: labelled messages too.
    #[serde(default)]
    pub all: String,
    #[serde(default)]
    pub bot: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
}

/// What the page shows: the filter, labelled messages or not, and whether the filter was
/// given (links and the label form's way back keep it) or is the default.
struct View {
    w: DayWindow,
    all: bool,
    explicit: bool,
}

impl View {
    /// The inbox page of this view, with labelled messages when `all`.
    fn url(&self, all: bool) -> String {
        let all = if all { "all=1" } else { "" };
        match (self.explicit, all.is_empty()) {
            (false, true) => PATH.to_string(),
            (false, false) => format!("{PATH}?{all}"),
            (true, true) => format!("{PATH}?{}", self.w.query()),
            (true, false) => format!("{PATH}?{}&{all}", self.w.query()),
        }
    }
}

impl InboxParams {
    fn view(&self, state: &ConsoleState) -> (View, Vec<String>) {
        let (w, problems) = self.window(state);
        let explicit = [&self.bot, &self.from, &self.to]
            .iter()
            .any(|v| !v.trim().is_empty());
        let view = View {
            w,
            all: self.all == "1",
            explicit,
        };
        (view, problems)
    }

    fn window(&self, state: &ConsoleState) -> (DayWindow, Vec<String>) {
        let q = FilterQuery {
            bot: self.bot.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            ..FilterQuery::default()
        };
        filters::read_days(state, &q, DAYS, MAX_DAYS)
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct LabelForm {
    #[serde(default)]
    pub conversation_id: String,
    #[serde(default)]
    pub intent: String,
    /// The page's filter, to go back to it after labelling.
    #[serde(default)]
    pub bot: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub all: String,
}

fn item_row(
    state: &ConsoleState,
    s: &Session,
    intents: &[String],
    v: &View,
    i: &InboxItem,
) -> Markup {
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
                    @if v.explicit {
                        input type="hidden" name="bot" value=(v.w.bot);
                        input type="hidden" name="from" value=(v.w.from.to_string());
                        input type="hidden" name="to" value=(v.w.to.to_string());
                    }
                    @if v.all { input type="hidden" name="all" value="1"; }
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
    v: &View,
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
    let w = &v.w;
    let (from_ms, to_ms) = w.span_ms();
    let (_, labelled) = state.service.export_labels_between(&w.bot, from_ms, to_ms);
    let all_hidden = [("all", "1")];
    let body = html! {
        (flash(state, s))
        (errors(problems))
        (filters::days_form(state, PATH, w, if v.all { &all_hidden[..] } else { &[] }))
        p.muted {
            "Messages of " @if w.bot.is_empty() { "every bot" } @else { "bot " code { (w.bot) } }
            " from " (w.from) " to " (w.to) " the bot did not understand well: answered below "
            (pct(f64::from(DEFAULT_BELOW_CONFIDENCE))) " confidence, asked to clarify, handed off because it did not understand, "
            "or marked unhelpful. Assign the right intent; the labels train the next model."
        }
        p {
            a.button #export href={ "/console/labels.yml?" (w.query()) } download="labels.yml" { "Download labels.yml" }
            " " span.muted { (labelled) " labelled messages in this filter · Rasa NLU YAML, for intentd train" }
            " · "
            @if v.all { a href=(v.url(false)) { "Hide labelled messages" } }
            @else { a href=(v.url(true)) { "Show labelled messages too" } }
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
                            tbody { @for i in &g.items { (item_row(state, s, &intents, v, i)) } }
                        }
                    }
                }
            }
        }
    };
    respond(status, page(&chrome, body))
}

async fn listed(state: &ConsoleState, w: &DayWindow, all: bool) -> Result<Vec<InboxGroup>, String> {
    let (from_ms, to_ms) = w.span_ms();
    let q = InboxQuery {
        bot_id: w.bot.clone(),
        from_ms,
        to_ms,
        below_confidence: DEFAULT_BELOW_CONFIDENCE,
        include_labelled: all,
    };
    state
        .service
        .label_inbox(&q)
        .await
        .map_err(|e| e.to_string())
}

/// A bad filter is named on the page (400) and the defaults are shown instead.
pub async fn show(
    State(state): State<ConsoleState>,
    Operator(s): Operator,
    Query(q): Query<InboxParams>,
) -> Response {
    let (v, problems) = q.view(&state);
    let groups = listed(&state, &v.w, v.all).await;
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    render(&state, &s, &v, groups, &problems, status)
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
    let (v, filter_problems) = InboxParams {
        all: form.all.clone(),
        bot: form.bot.clone(),
        from: form.from.clone(),
        to: form.to.clone(),
    }
    .view(&state);
    problems.extend(filter_problems);
    let id = match id {
        Ok(id) if problems.is_empty() => id,
        _ => {
            let groups = listed(&state, &v.w, v.all).await;
            return render(
                &state,
                &session,
                &v,
                groups,
                &problems,
                StatusCode::BAD_REQUEST,
            );
        }
    };
    let back = v.url(v.all);
    match state.service.assign_label(id, intent, &session.name).await {
        Ok(l) => redirect_with(
            &state,
            &session,
            "ok",
            format!("Labelled “{}” as {} (by {}).", l.text, l.intent, l.by),
            &back,
        ),
        Err(e) => redirect_with(
            &state,
            &session,
            "error",
            format!("Message {id} not labelled: {e}"),
            &back,
        ),
    }
}

/// The labels of the inbox's filter (`bot`, `from`, `to`; every bot and the last 30 days
/// without them) as Rasa NLU YAML, as a download. A bad filter is a 400 naming it: a download
/// must not quietly hold something else than asked.
pub async fn export(
    State(state): State<ConsoleState>,
    Operator(s): Operator,
    Query(q): Query<InboxParams>,
) -> Response {
    let (w, problems) = q.window(&state);
    if !problems.is_empty() {
        return super::layout::problem(
            StatusCode::BAD_REQUEST,
            "Bad filter",
            &format!("labels.yml not exported: {}", problems.join("; ")),
            Some(&s),
        );
    }
    let (from_ms, to_ms) = w.span_ms();
    let (yaml, _) = state.service.export_labels_between(&w.bot, from_ms, to_ms);
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
