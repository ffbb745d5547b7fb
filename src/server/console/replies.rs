//! Replies: the reply library of the operator snapshot in service (`Service::operator`), a
//! live preview of a set's variants with a sample user, group, style and local date-time
//! (`policy::preview`, with the banned-word check on each rendered text), and Reload
//! (`Service::reload_operator`), which shows the `file:line` of a broken operator file and
//! keeps the files in service as they were.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDateTime};
use maud::{html, Markup};
use serde::Deserialize;

use super::guard::{CheckedForm, Operator};
use super::layout::{csrf_field, errors, notice, page, respond, Chrome};
use super::sessions::Session;
use super::state::ConsoleState;
use crate::operator::OperatorSnapshot;
use crate::policy::preview::{self, Rendered, Sample};

#[derive(Debug, Deserialize, Default, Clone)]
pub struct PreviewForm {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub variant: String,
    #[serde(default)]
    pub style: String,
    #[serde(default)]
    pub nickname: String,
    #[serde(default)]
    pub group_name: String,
    /// `YYYY-MM-DDTHH:MM` (a datetime-local field).
    #[serde(default)]
    pub at: String,
}

/// What the page shows beside the library.
#[derive(Default)]
struct Outcome {
    reload: Option<Result<String, String>>,
    problems: Vec<String>,
    preview: Option<Vec<Rendered>>,
}

const AT_FORMATS: [&str; 2] = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"];

/// Now, in the first bot's time zone (the default of the preview's date-time field).
fn local_now(state: &ConsoleState, op: &OperatorSnapshot) -> NaiveDateTime {
    let bot = state.bots().first().cloned().unwrap_or_default();
    let tz = op.policy.settings(&bot, "").timezone;
    DateTime::from_timestamp_millis(state.service.now_ms())
        .unwrap_or_default()
        .with_timezone(&tz)
        .naive_local()
}

fn preview_form(s: &Session, op: &OperatorSnapshot, f: &PreviewForm) -> Markup {
    let lib = &op.policy.replies;
    html! {
        form.card #preview method="post" action="/console/replies/preview" {
            (csrf_field(s))
            div.row {
                label { "Reply set "
                    select name="key" {
                        @for k in lib.keys() { option value=(k) selected[k == f.key] { (k) } }
                    }
                }
                label { "Variant id " input type="text" name="variant" value=(f.variant) placeholder="all"; }
                label { "Style "
                    select name="style" {
                        option value="" selected[f.style.is_empty()] { "any" }
                        @for st in &lib.styles { option value=(st) selected[*st == f.style] { (st) } }
                    }
                }
            }
            div.row {
                label { "User nickname " input type="text" name="nickname" value=(f.nickname) maxlength="200"; }
                label { "Group name " input type="text" name="group_name" value=(f.group_name) maxlength="200"; }
                label { "Local date and time " input type="datetime-local" name="at" value=(f.at) required; }
            }
            button type="submit" { "Preview" }
            p.hint {
                "Rendered as the playbook renders a send (names cleaned, greeting by time of day, festival by date); "
                "candidates, wait minutes, opening time and countdown get sample values. Each result is checked against banned_words.txt."
            }
        }
    }
}

fn preview_results(list: &[Rendered]) -> Markup {
    html! {
        section #preview-result {
            h2 { "Preview" }
            table.data {
                thead { tr { th { "Variant" } th { "Style" } th { "Rendered text" } th { "Banned-word check" } } }
                tbody {
                    @for r in list {
                        tr {
                            td { code { (r.variant_id) } }
                            td { (r.style) }
                            td.reply { (r.text) }
                            td {
                                @match &r.banned {
                                    None => span.ok { "clean" },
                                    Some(w) => span.bad { "contains the banned word “" (w) "”: it would not be sent" },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn library(op: &OperatorSnapshot) -> Markup {
    let lib = &op.policy.replies;
    html! {
        h2 { "Reply library" }
        p.muted { (lib.keys().len()) " reply sets; styles: " (lib.styles.join(", ")) }
        @for k in lib.keys() {
            details.replyset {
                summary {
                    code { (k) } " · " (lib.variants(k).len())
                    (if lib.variants(k).len() == 1 { " variant" } else { " variants" })
                }
                table.data {
                    thead { tr { th { "Id" } th { "Style" } th { "Template" } } }
                    tbody {
                        @for v in lib.variants(k) {
                            tr { td { code { (v.id) } } td { (v.style) } td.reply { (v.template.source()) } }
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
    f: &PreviewForm,
    out: Outcome,
    status: StatusCode,
) -> Response {
    let op: Arc<OperatorSnapshot> = state.service.operator();
    let chrome = Chrome {
        title: "Replies",
        active: "/console/replies",
        session: Some(s),
        auth_disabled: state.auth.disabled(),
    };
    let body = html! {
        section.card #reload {
            p {
                "Operator files in service: " code #config-hash { (op.config_hash) }
                " from " code { (state.service.settings.operator_dir.display()) }
            }
            @match &out.reload {
                Some(Ok(hash)) => (notice("ok", &format!("Reloaded: operator files {hash} are in service."))),
                Some(Err(e)) => (notice("error", e)),
                None => {},
            }
            form method="post" action="/console/replies/reload" {
                (csrf_field(s))
                button type="submit" { "Reload operator files" }
                span.hint { " Reads every file of the operator folder again; a broken file is reported with file:line and nothing changes." }
            }
        }
        (preview_form(s, &op, f))
        (errors(&out.problems))
        @if let Some(p) = &out.preview { (preview_results(p)) }
        (library(&op))
    };
    respond(status, page(&chrome, body))
}

fn defaults(state: &ConsoleState) -> PreviewForm {
    let op = state.service.operator();
    PreviewForm {
        key: "welcome".into(),
        nickname: "小王".into(),
        group_name: "潮鞋交流群".into(),
        at: local_now(state, &op).format("%Y-%m-%dT%H:%M").to_string(),
        ..PreviewForm::default()
    }
}

pub async fn show(State(state): State<ConsoleState>, Operator(s): Operator) -> Response {
    let f = defaults(&state);
    render(&state, &s, &f, Outcome::default(), StatusCode::OK)
}

/// Limits of the sample names (the playbook cleans and caps them further).
const MAX_SAMPLE_CHARS: usize = 200;

pub async fn submit_preview(
    State(state): State<ConsoleState>,
    f: CheckedForm<PreviewForm>,
) -> Response {
    let CheckedForm { session, form } = f;
    let mut problems = Vec::new();
    if form.key.trim().is_empty() {
        problems.push("Reply set: choose one.".to_string());
    }
    for (name, v) in [
        ("Nickname", &form.nickname),
        ("Group name", &form.group_name),
    ] {
        if v.chars().count() > MAX_SAMPLE_CHARS {
            problems.push(format!("{name}: at most {MAX_SAMPLE_CHARS} characters."));
        }
    }
    let at = AT_FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(form.at.trim(), f).ok());
    if at.is_none() {
        problems.push(format!(
            "Local date and time: '{}' is not a date-time like 2026-11-25T10:00.",
            crate::service::validate::shown(&form.at)
        ));
    }
    let mut out = Outcome::default();
    if let (true, Some(at)) = (problems.is_empty(), at) {
        let op = state.service.operator();
        let sample = Sample {
            nickname: form.nickname.clone(),
            group_name: form.group_name.clone(),
            at,
        };
        match preview::preview(
            &op.policy,
            form.key.trim(),
            form.variant.trim(),
            form.style.trim(),
            &sample,
        ) {
            Ok(list) => out.preview = Some(list),
            Err(e) => problems.push(e),
        }
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    out.problems = problems;
    render(&state, &session, &form, out, status)
}

#[derive(Deserialize)]
pub struct ReloadForm {}

pub async fn submit_reload(
    State(state): State<ConsoleState>,
    f: CheckedForm<ReloadForm>,
) -> Response {
    let result = state
        .service
        .reload_operator("console")
        .await
        .map_err(|e| e.to_string());
    let status = if result.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let out = Outcome {
        reload: Some(result),
        ..Outcome::default()
    };
    let form = defaults(&state);
    render(&state, &f.session, &form, out, status)
}
