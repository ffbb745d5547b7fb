//! Try it: classify a text as a message of the chosen bot (`Service::classify`, the same path
//! as any message) and show the decision trace: the fused ranking and the model's own
//! probabilities before fusion, the keyword terms that matched, which fusion step decided, and
//! the playbook's action with the rule (reason) behind it.
//!
//! The message is real: it is decided by the playbook and logged (user `console-operator`, group
//! `console-try-it` unless another is given), so it counts in that group's statistics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use rand::RngCore;
use serde::Deserialize;

use super::guard::{CheckedForm, Operator};
use super::layout::{csrf_field, errors, page, pct, respond, Chrome};
use super::sessions::Session;
use super::state::ConsoleState;
use crate::engine::fusion::FusionConfig;
use crate::service::{ClassifyOutcome, ClassifyRequest};
use crate::types::{Source, UserInfo};

pub const DEFAULT_CHAT: &str = "console-try-it";
const USER_ID: &str = "console-operator";

#[derive(Debug, Deserialize, Default, Clone)]
pub struct TryForm {
    #[serde(default)]
    pub bot: String,
    #[serde(default)]
    pub chat: String,
    #[serde(default)]
    pub nickname: String,
    #[serde(default)]
    pub text: String,
}

/// Which step of the fusion (engine/fusion.rs) decided, in words, with the thresholds in force.
fn fusion_step(source: Source, f: &FusionConfig) -> String {
    match source {
        Source::Model => format!(
            "step 2, the model: its top intent reached the threshold ({:.2}) and led the runner-up by the margin ({:.2})",
            f.threshold, f.ambiguity_margin
        ),
        Source::Keyword | Source::Regex => format!(
            "step 1 or 3, the {} rules: a `priority: always` rule, or the model was unsure and the rule score reached keyword_min_score ({:.2})",
            source.as_str(),
            f.keyword_min_score
        ),
        Source::Fallback => {
            "step 4: neither the model nor the rules were sure: clarify between the best candidates, or fall back".into()
        }
        Source::Policy => {
            "before classification: the playbook's compliance check decided (a banned word)".into()
        }
        // Only logged proactive sends carry this source; a classification never does.
        Source::Proactive => "a proactive send of the playbook (no classification)".into(),
    }
}

fn form(state: &ConsoleState, s: &Session, f: &TryForm) -> Markup {
    let bots = state.bots();
    html! {
        form.card method="post" action="/console/try" {
            (csrf_field(s))
            div.row {
                label {
                    "Bot "
                    @if bots.is_empty() {
                        input type="text" name="bot" value=(f.bot) required;
                    } @else {
                        select name="bot" {
                            @for b in bots { option value=(b) selected[*b == f.bot] { (b) } }
                        }
                    }
                }
                label { "Group " input type="text" name="chat" value=(f.chat) placeholder=(DEFAULT_CHAT); }
                label { "Nickname " input type="text" name="nickname" value=(f.nickname) placeholder="小王"; }
            }
            label for="text" { "Message" }
            textarea #text name="text" rows="3" required placeholder="买的鞋子不合适，想退货退款" { (f.text) }
            button type="submit" { "Classify" }
            p.hint {
                "The message goes through the whole service like a real one: it is decided by the playbook and logged (user "
                code { (USER_ID) } ", group " code { (DEFAULT_CHAT) } " unless you name another), so it counts in that group's statistics."
            }
        }
    }
}

fn trace(o: &ClassifyOutcome, fusion: &FusionConfig) -> Markup {
    let c = &o.classification;
    let d = &o.decision;
    html! {
        section.trace #trace {
            h2 { "Decision" }
            table.kv {
                tr { th { "Action" } td { strong.action { (d.action.as_str()) } } }
                tr { th { "Rule (reason)" } td { code { (d.reason) } } }
                @if let Some(r) = &d.reply {
                    tr { th { "Reply" } td.reply { (r.text) } }
                    tr { th { "Variant" } td { code { (r.variant_id) } " · style " (r.style)
                        @if !r.experiment.is_empty() { " · experiment " code { (r.experiment) } } } }
                }
                @for n in &d.notices { tr { th { "Notice" } td { (n) } } }
                @if d.send_after_ms > 0 { tr { th { "Send after" } td { (d.send_after_ms) " ms (group spacing)" } } }
            }
            h2 { "Classification" }
            table.kv {
                tr { th { "Intent" } td {
                    @if c.intent.is_empty() { "(none)" } @else { code { (c.intent) } }
                    " · confidence " (format!("{:.3}", c.confidence)) } }
                tr { th { "Fusion step (source)" } td { code { (c.source.as_str()) } " — " (fusion_step(c.source, fusion)) } }
                tr { th { "Matched terms" } td {
                    @if c.matched_terms.is_empty() { span.muted { "none" } }
                    @for t in &c.matched_terms { span.term { (t) } " " }
                } }
                @if c.needs_clarification { tr { th { "Clarify" } td { "the candidates below are offered" } } }
                @if !c.entities.is_empty() {
                    tr { th { "Entities" } td {
                        @for e in &c.entities { span.term { (e.entity) ": " (e.value) @if e.canonical != e.value { " → " (e.canonical) } } " " }
                    } }
                }
                @if c.truncated { tr { th { "Truncated" } td { "the text was cut to the model's token limit" } } }
                tr { th { "Model" } td {
                    @if c.model_loaded { (o.model_version) } @else { "no model loaded: rules alone" } } }
                tr { th { "Time" } td { (format!("{:.1}", o.timings.total_us as f64 / 1000.0)) " ms (forward pass "
                    (format!("{:.1}", o.timings.inference_us as f64 / 1000.0)) " ms)" } }
            }
            h2 { "Ranking" }
            @if o.ranking.is_empty() {
                p.muted { "No ranking (decided before classification)." }
            } @else {
                table.data {
                    thead { tr { th { "#" } th { "Intent" } th { "Name" } th.num { "Score" } th {} } }
                    tbody {
                        @for (i, r) in o.ranking.iter().enumerate() {
                            tr {
                                td { (i + 1) }
                                td { code { (r.intent) } }
                                td { (r.display_name) }
                                td.num { (pct(f64::from(r.confidence))) }
                                td { meter min="0" max="1" value=(format!("{:.3}", r.confidence)) {} }
                            }
                        }
                    }
                }
                p.hint { "Scores after fusion: the model's probabilities, merged with the rule scores when the rules decided." }
            }
            h2 { "Model alone (before fusion)" }
            @if !c.model_loaded {
                p #model-ranking.muted { "No model loaded: the rules decided alone." }
            } @else if c.model_ranking.is_empty() {
                p #model-ranking.muted { "No model scores: the playbook decided before classification." }
            } @else {
                table.data #model-ranking {
                    thead { tr { th { "#" } th { "Intent" } th.num { "Probability" } th {} } }
                    tbody {
                        @for (i, r) in c.model_ranking.iter().enumerate() {
                            tr {
                                td { (i + 1) }
                                td { code { (r.intent) } }
                                td.num { (pct(f64::from(r.confidence))) }
                                td { meter min="0" max="1" value=(format!("{:.3}", r.confidence)) {} }
                            }
                        }
                    }
                }
                p.hint { "The model's own top-k probabilities, before the keyword rules were merged in: compare with the ranking above to see what the rules changed." }
            }
        }
    }
}

fn render(
    state: &ConsoleState,
    s: &Session,
    f: &TryForm,
    problems: &[String],
    outcome: Option<&ClassifyOutcome>,
    status: StatusCode,
) -> Response {
    let chrome = Chrome {
        title: "Try it",
        active: "/console/try",
        session: Some(s),
        auth_disabled: state.auth.disabled(),
    };
    let fusion = state.service.operator().fusion.clone();
    respond(
        status,
        page(
            &chrome,
            html! {
                (form(state, s, f))
                (errors(problems))
                @if let Some(o) = outcome { (trace(o, &fusion)) }
            },
        ),
    )
}

pub async fn show(State(state): State<ConsoleState>, Operator(s): Operator) -> Response {
    let f = TryForm {
        bot: state.bots().first().cloned().unwrap_or_default(),
        ..TryForm::default()
    };
    render(&state, &s, &f, &[], None, StatusCode::OK)
}

pub async fn submit(State(state): State<ConsoleState>, f: CheckedForm<TryForm>) -> Response {
    let CheckedForm { session, form } = f;
    let mut problems = Vec::new();
    let bots = state.bots();
    if form.bot.trim().is_empty() {
        problems.push("Bot: choose a bot.".to_string());
    } else if !bots.is_empty() && !bots.contains(&form.bot) {
        problems.push(format!(
            "Bot: '{}' is not a configured bot.",
            crate::service::validate::shown(&form.bot)
        ));
    }
    if form.text.trim().is_empty() {
        problems.push("Message: enter a text to classify.".to_string());
    }
    if !problems.is_empty() {
        return render(
            &state,
            &session,
            &form,
            &problems,
            None,
            StatusCode::BAD_REQUEST,
        );
    }
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    let chat = if form.chat.trim().is_empty() {
        DEFAULT_CHAT.to_string()
    } else {
        form.chat.trim().to_string()
    };
    let req = ClassifyRequest {
        bot_id: form.bot.clone(),
        chat_id: chat,
        chat_name: String::new(),
        message_id: format!("console-{}", hex::encode(id)),
        text: form.text.clone(),
        sent_at_ms: 0,
        user: Some(UserInfo {
            id: USER_ID.to_string(),
            nickname: form.nickname.trim().to_string(),
            ..UserInfo::default()
        }),
    };
    let result = crate::metrics::with_transport("console", state.service.classify(&req)).await;
    match result {
        Ok(o) => render(&state, &session, &form, &[], Some(&o), StatusCode::OK),
        Err(e) => {
            let status = match e {
                crate::service::ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            render(
                &state,
                &session,
                &form,
                &[format!("The service refused the message: {e}")],
                None,
                status,
            )
        }
    }
}
