//! A/B experiments: per experiment its variants with exposures, conversions and rate, the
//! chi-square test's p-value, and the winner, or why there is none yet ("not enough data"),
//! from the `StatsReport` (`store::ab_report`). Experiments configured in the playbook that have
//! no exposures in the window are listed too.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};

use super::chart;
use super::filters::{self, FilterQuery};
use super::guard::Operator;
use super::layout::{errors, page, pct, respond, Chrome};
use super::state::ConsoleState;
use crate::store::ab_report::AbResult;
use crate::store::stats::StatsQuery;

fn verdict(r: &AbResult) -> Markup {
    html! {
        @match &r.winner {
            Some(w) => p.verdict.winner { "Winner: " strong { (w) } " (p = " (format!("{:.4}", r.p_value)) ")" },
            None if r.significant => p.verdict.pending { "Significant (p = " (format!("{:.4}", r.p_value)) "), but no winner yet: " (r.warning) },
            None => p.verdict.pending { "Not enough data: " (if r.warning.is_empty() { "the difference is not significant" } else { &r.warning }) },
        }
    }
}

/// `set`: the reply set under test, when the playbook still configures the experiment.
fn experiment(r: &AbResult, set: Option<&str>) -> Markup {
    let labels: Vec<String> = r.variants.iter().map(|v| v.variant_id.clone()).collect();
    let rates: Vec<f64> = r.variants.iter().map(|v| v.rate * 100.0).collect();
    html! {
        section.experiment {
            h2 { (r.experiment) }
            @if let Some(set) = set { p.muted { "Reply set " code { (set) } } }
            (verdict(r))
            table.data {
                thead { tr { th { "Variant" } th.num { "Exposures" } th.num { "Conversions" } th.num { "Rate" } } }
                tbody {
                    @for v in &r.variants {
                        tr class=[(r.winner.as_deref() == Some(v.variant_id.as_str())).then_some("best")] {
                            td { (v.variant_id) }
                            td.num { (v.exposures) }
                            td.num { (v.conversions) }
                            td.num { (pct(v.rate)) }
                        }
                    }
                }
            }
            p.muted {
                "χ² = " (format!("{:.3}", r.chi_square)) ", degrees of freedom " (r.degrees_of_freedom)
                ", p-value " (format!("{:.4}", r.p_value))
                ", minimum sample " (r.min_sample) " exposures per variant."
            }
            div.charts.narrow { (chart::bars("Conversion rate per variant (%)", &labels, &rates)) }
        }
    }
}

pub async fn show(
    State(state): State<ConsoleState>,
    Operator(session): Operator,
    Query(q): Query<FilterQuery>,
) -> Response {
    let (w, mut problems) = filters::read(&state, &q);
    let (from_ms, to_ms) = w.span_ms();
    let query = StatsQuery {
        bot_id: w.bot.clone(),
        chat_id: w.chat.clone(),
        from_ms,
        to_ms,
        experiment: w.experiment.clone(),
    };
    let report = state.service.stats(&query).await;
    let chats: Vec<String> = match &report {
        Ok(r) => r.by_chat.iter().map(|g| g.key.clone()).collect(),
        Err(_) => Vec::new(),
    };
    let operator = state.service.operator();
    let configured: Vec<_> = operator
        .policy
        .settings(&w.bot, &w.chat)
        .experiments
        .iter()
        .filter(|e| w.experiment.is_empty() || e.id == w.experiment)
        .cloned()
        .collect();
    let body = match report {
        Err(e) => {
            problems.push(format!("Statistics are not available: {e}"));
            html! {}
        }
        Ok(r) => {
            let idle: Vec<_> = configured
                .iter()
                .filter(|e| !r.experiments.iter().any(|x| x.experiment == e.id))
                .collect();
            html! {
                p.muted {
                    "Exposures are sends that showed a variant: replies, and proactive sends such as welcomes, pushes and reminders; a conversion is a click on that send's link or card (or feedback naming it). "
                    "A winner is named only when the chi-square test is significant (p < alpha) and every variant has the minimum sample (store.ab_min_sample)."
                }
                @for e in &r.experiments {
                    (experiment(e, configured.iter().find(|c| c.id == e.experiment).map(|c| c.key.as_str())))
                }
                @if r.experiments.is_empty() && idle.is_empty() {
                    p.muted { "No experiment has exposures in this window." }
                }
                @for e in idle {
                    section.experiment {
                        h2 { (e.id) }
                        p.verdict.pending { "Not enough data: no exposures in this window." }
                        p.muted {
                            "Reply set " code { (e.key) } "; variants "
                            @for (i, (v, weight)) in e.variants.iter().enumerate() {
                                @if i > 0 { ", " }
                                (v) " (weight " (weight) ")"
                            }
                        }
                    }
                }
            }
        }
    };
    let chrome = Chrome {
        title: "A/B experiments",
        active: "/console/experiments",
        session: Some(&session),
        auth_disabled: state.auth.disabled(),
    };
    let filters = filters::form(&state, "/console/experiments", &w, &chats, false, true);
    respond(
        StatusCode::OK,
        page(
            &chrome,
            html! {
                (filters)
                (errors(&problems))
                (body)
            },
        ),
    )
}
