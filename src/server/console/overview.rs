//! Overview: per bot and group, volume, answered share, human share against its target, and
//! the response / resolution / conversion / satisfaction rates, over the window and per day or
//! hour (one `Service::stats_series` call for all the chart's points), each with its definition
//! and denominator.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};

use super::chart::{self, Series};
use super::filters::{self, FilterQuery, Window};
use super::guard::Operator;
use super::layout::{errors, notice, page, pct, respond, Chrome};
use super::state::ConsoleState;
use crate::store::series::SeriesQuery;
use crate::store::stats::{Rates, StatsQuery, StatsReport};

/// Messages the bot answered itself (replies and clarifying questions) / messages.
pub fn answered_share(r: &Rates) -> f64 {
    let c = &r.counts;
    if c.messages == 0 {
        0.0
    } else {
        (c.auto_replies.min(c.messages)) as f64 / c.messages as f64
    }
}

/// Each figure: (name, definition with its denominator).
pub const DEFINITIONS: [(&str, &str); 7] = [
    ("Volume", "messages received (the conversation log's message rows)."),
    (
        "Answered share",
        "messages the bot answered itself (a reply or a clarifying question) / messages.",
    ),
    (
        "Human share",
        "(handoffs + human replies) / messages, beside the playbook's target (handoff.human_share_target) for the bot or group.",
    ),
    (
        "Response rate",
        "triggered messages (an intent with replies) that got an auto reply / triggered messages.",
    ),
    (
        "Resolution rate",
        "resolved / (resolved + unresolved) feedback: messages without feedback are in neither.",
    ),
    (
        "Conversion rate",
        "auto replies whose link or card was clicked / auto replies (exposures).",
    ),
    (
        "Satisfaction",
        "(thumbs up − thumbs down) / (thumbs up + thumbs down), from −100% to +100%.",
    ),
];

async fn report(
    state: &ConsoleState,
    w: &Window,
    chat: &str,
    span: (i64, i64),
) -> Result<StatsReport, String> {
    let q = StatsQuery {
        bot_id: w.bot.clone(),
        chat_id: chat.to_string(),
        from_ms: span.0,
        to_ms: span.1,
        experiment: String::new(),
    };
    state.service.stats(&q).await.map_err(|e| e.to_string())
}

/// The chart's labels and the rates of each bucket of the window, in one grouped query.
async fn series(state: &ConsoleState, w: &Window) -> Result<(Vec<String>, Vec<Rates>), String> {
    let buckets = w.buckets();
    let spans: Vec<(i64, i64)> = buckets.iter().map(|b| (b.1, b.2)).collect();
    let q = SeriesQuery {
        bot_id: w.bot.clone(),
        chat_id: w.chat.clone(),
        edges: SeriesQuery::edges_of(&spans).map_err(|e| e.to_string())?,
    };
    let per = state
        .service
        .stats_series(&q)
        .await
        .map_err(|e| e.to_string())?;
    Ok((buckets.into_iter().map(|b| b.0).collect(), per))
}

fn figure(name: &str, value: String, detail: String, class: Option<&str>) -> Markup {
    html! {
        div class={ "figure " (class.unwrap_or("")) } {
            div.name { (name) }
            div.value { (value) }
            div.detail { (detail) }
        }
    }
}

fn figures(r: &Rates) -> Markup {
    let c = &r.counts;
    let over = r.human_share > r.human_share_target;
    html! {
        div.figures {
            (figure("Volume", c.messages.to_string(), "messages".into(), None))
            (figure("Answered share", pct(answered_share(r)),
                format!("{} of {} messages", c.auto_replies.min(c.messages), c.messages), None))
            (figure("Human share", pct(r.human_share),
                format!("{} handoffs + {} human replies of {} messages; target {}",
                    c.handoffs, c.human_replies, c.messages, pct(r.human_share_target)),
                Some(if over { "over" } else { "within" })))
            (figure("Response rate", pct(r.response_rate),
                format!("{} of {} triggered messages", c.triggers_replied, c.triggers), None))
            (figure("Resolution rate", pct(r.resolution_rate),
                format!("{} of {} with resolution feedback", c.resolved, c.resolved + c.unresolved), None))
            (figure("Conversion rate", pct(r.conversion_rate),
                format!("{} of {} auto replies clicked", c.auto_replies_clicked, c.auto_replies), None))
            (figure("Satisfaction", format!("{:+.1}%", r.satisfaction * 100.0),
                format!("{} up, {} down", c.thumbs_up, c.thumbs_down), None))
        }
    }
}

fn rates_table(title: &str, key: &str, rows: &[(String, Rates)]) -> Markup {
    html! {
        h2 { (title) }
        @if rows.is_empty() {
            p.muted { "No traffic in this window." }
        } @else {
            table.data {
                thead { tr {
                    th { (key) } th.num { "Messages" } th.num { "Answered" } th.num { "Human share" }
                    th.num { "Target" } th.num { "Response" } th.num { "Resolution" }
                    th.num { "Conversion" } th.num { "Satisfaction" }
                } }
                tbody {
                    @for (k, r) in rows {
                        tr {
                            td { (k) }
                            td.num { (r.counts.messages) }
                            td.num { (pct(answered_share(r))) }
                            td.num class=[(r.human_share > r.human_share_target).then_some("over")] { (pct(r.human_share)) }
                            td.num { (pct(r.human_share_target)) }
                            td.num title={ (r.counts.triggers_replied) "/" (r.counts.triggers) } { (pct(r.response_rate)) }
                            td.num title={ (r.counts.resolved) "/" (r.counts.resolved + r.counts.unresolved) } { (pct(r.resolution_rate)) }
                            td.num title={ (r.counts.auto_replies_clicked) "/" (r.counts.auto_replies) } { (pct(r.conversion_rate)) }
                            td.num { (format!("{:+.1}%", r.satisfaction * 100.0)) }
                        }
                    }
                }
            }
        }
    }
}

pub fn definitions() -> Markup {
    html! {
        h2 { "Definitions" }
        dl.definitions {
            @for (name, def) in DEFINITIONS {
                dt { (name) } dd { (def) }
            }
        }
    }
}

pub async fn show(
    State(state): State<ConsoleState>,
    Operator(session): Operator,
    Query(q): Query<FilterQuery>,
) -> Response {
    let (w, mut problems) = filters::read(&state, &q);
    let span = w.span_ms();
    let chrome = Chrome {
        title: "Overview",
        active: "/console/overview",
        session: Some(&session),
        auth_disabled: state.auth.disabled(),
    };
    // The bot's groups over the window (for the group list), then the chosen group's report.
    let bot_report = report(&state, &w, "", span).await;
    let chats: Vec<String> = match &bot_report {
        Ok(r) => r.by_chat.iter().map(|g| g.key.clone()).collect(),
        Err(_) => Vec::new(),
    };
    let chosen = if w.chat.is_empty() {
        bot_report
    } else {
        report(&state, &w, &w.chat, span).await
    };
    let body = match chosen {
        Err(e) => {
            problems.push(format!("Statistics are not available: {e}"));
            html! {}
        }
        Ok(r) => {
            let (labels, per) = match series(&state, &w).await {
                Ok(points) => points,
                Err(e) => {
                    problems.push(format!("The charts are not available: {e}"));
                    (Vec::new(), Vec::new())
                }
            };
            let volume: Vec<f64> = per.iter().map(|r| r.counts.messages as f64).collect();
            let line = |name, f: &dyn Fn(&Rates) -> f64| Series {
                name,
                values: per.iter().map(f).collect(),
            };
            let series = [
                line("answered share", &answered_share),
                line("human share", &|r: &Rates| r.human_share),
                line("response", &|r: &Rates| r.response_rate),
                line("resolution", &|r: &Rates| r.resolution_rate),
                line("conversion", &|r: &Rates| r.conversion_rate),
            ];
            let groups: Vec<(String, Rates)> = r
                .by_chat
                .iter()
                .map(|g| (g.key.clone(), g.rates.clone()))
                .collect();
            let intents: Vec<(String, Rates)> = r
                .by_intent
                .iter()
                .map(|g| {
                    let key = if g.key.is_empty() {
                        "(none)".to_string()
                    } else {
                        g.key.clone()
                    };
                    (key, g.rates.clone())
                })
                .collect();
            let scope = if w.chat.is_empty() {
                format!("bot {}, all groups", w.bot)
            } else {
                format!("bot {}, group {}", w.bot, w.chat)
            };
            html! {
                p.muted { (scope) ", " (w.from) " to " (w.to) " (" (w.tz.name()) ")" }
                (figures(&r.total))
                div.charts {
                    (chart::bars(&format!("Messages per {}", w.bucket.as_str()), &labels, &volume))
                    (chart::rate_lines(&format!("Rates per {}", w.bucket.as_str()), &labels, &series))
                }
                @if w.chat.is_empty() {
                    (rates_table("Per group", "Group", &groups))
                }
                (rates_table("Per intent", "Intent", &intents))
                (definitions())
            }
        }
    };
    let filters = filters::form(&state, "/console/overview", &w, &chats, true, false);
    let status = StatusCode::OK;
    respond(
        status,
        page(
            &chrome,
            html! {
                (filters)
                (errors(&problems))
                @if state.bots().is_empty() && w.bot.is_empty() {
                    (notice("info", "No bots are configured: enter a bot id."))
                }
                (body)
            },
        ),
    )
}
