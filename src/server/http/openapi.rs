//! The OpenAPI 3.1 document of the HTTP front door, generated from the handlers' annotations
//! and the JSON types (utoipa), served at `/openapi.json` and checked in as
//! `docs/openapi.json` (tests/http.rs fails when they differ and says how to regenerate).

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, error, inbox, json, rasa, sse, v1};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "intentd HTTP/JSON API",
        description = "Chinese intent recognition and auto-reply decisions for chat bots: the HTTP/JSON front door over the same service as gRPC (intentd.v1). Errors are always {\"error\": {\"code\", \"message\", \"field\"}} with the gRPC code name.",
        license(name = "Apache-2.0")
    ),
    paths(
        v1::classify,
        v1::classify_batch,
        v1::handle_event,
        v1::feedback,
        v1::human_reply,
        v1::stats,
        sse::outbound,
        v1::healthz,
        v1::readyz,
        rasa::parse,
        admin::list_reviews,
        admin::approve_review,
        admin::confirm_review,
        admin::list_handoffs,
        admin::claim_handoff,
        admin::close_handoff,
        inbox::list,
        inbox::label,
        inbox::export,
    ),
    components(schemas(error::ErrorBody, json::Outbound)),
    modifiers(&BearerAuth),
    tags(
        (name = "intent", description = "classification, events, feedback, stats, proactive sends"),
        (name = "rasa", description = "Rasa-compatible parse endpoint"),
        (name = "probes", description = "liveness and readiness"),
        (name = "admin", description = "the operators' desk (admin token): review queue and handoffs"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("a bot's token from auth.bots (or the admin token)"))
                    .build(),
            ),
        );
    }
}

/// The document as served and checked in (pretty, with a final newline). The version is the
/// crate's, fixed here so the document changes only when the API does.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut text = doc
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}
