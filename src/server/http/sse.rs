//! `GET /v1/outbound`: the proactive sends of a bot (welcomes, schedules, countdowns, delayed
//! replies) as Server-Sent Events, what gRPC `Subscribe` streams. Each send is one `outbound`
//! event whose data is a JSON `Outbound`; a comment every 15 s keeps proxies from closing an
//! idle stream. What a client did not receive goes back to the outbox for the next one.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio_stream::{Stream, StreamExt};

use super::error::{ApiError, ErrorBody};
use super::json;
use super::{ApiQuery, HttpState};
use crate::server::convert;

#[utoipa::path(
    get, path = "/v1/outbound", tag = "intent",
    params(json::OutboundQuery),
    responses(
        (status = 200, description = "a text/event-stream of `outbound` events, each with a JSON Outbound as data",
         content_type = "text/event-stream", body = json::Outbound),
        (status = "4XX", description = "the request is wrong", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn outbound(
    State(st): State<HttpState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<json::OutboundQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let who = st.caller(&headers)?;
    who.check_bot(&q.bot_id)?;
    let rx = st.service.subscribe(&q.bot_id, q.chat_ids())?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
        let body: json::Outbound = convert::outbound(&item).into();
        // Serialising plain strings and numbers cannot fail; say so in the stream if it did.
        Ok(Event::default()
            .event("outbound")
            .json_data(&body)
            .unwrap_or_else(|e| Event::default().comment(format!("unserialisable outbound: {e}"))))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
