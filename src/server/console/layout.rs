//! The page shell every console page shares (head, navigation, logout form), the HTML response
//! with its security headers, and small formatting helpers. maud escapes every interpolated
//! value, so message text, nicknames and replies can never become markup.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::sessions::Session;

/// The console's pages, in navigation order: (path under /console, title).
pub const NAV: [(&str, &str); 7] = [
    ("/console/overview", "Overview"),
    ("/console/experiments", "A/B experiments"),
    ("/console/try", "Try it"),
    ("/console/replies", "Replies"),
    ("/console/review", "Review"),
    ("/console/handoffs", "Handoffs"),
    ("/console/inbox", "Inbox"),
];

/// The name of the hidden field every POST form carries.
pub const CSRF_FIELD: &str = "csrf";

/// Where a page sits and who looks at it.
pub struct Chrome<'a> {
    pub title: &'a str,
    /// The navigation entry to highlight (a path from [`NAV`]).
    pub active: &'a str,
    /// The logged-in session (None on the login page and error pages without one).
    pub session: Option<&'a Session>,
    /// Authentication is off: shown on every page.
    pub auth_disabled: bool,
}

/// A whole page: `<!DOCTYPE html>`, UTF-8, the stylesheet, navigation and `body`.
pub fn page(c: &Chrome, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="zh-CN" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (c.title) " · intentd console" }
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header.top {
                    a.brand href="/console/overview" { "intentd" span { " console" } }
                    @if let Some(s) = c.session {
                        nav {
                            @for (path, name) in NAV {
                                a href=(path) class=[(path == c.active).then_some("active")] { (name) }
                            }
                        }
                        form.logout method="post" action="/console/logout" {
                            (csrf_field(s))
                            @if !s.name.is_empty() { span.who { (s.name) " " } }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                @if c.auth_disabled {
                    p.banner.warn {
                        "Authentication is disabled (auth.disabled: true): anyone who can reach this port can use the console."
                    }
                }
                main {
                    h1 { (c.title) }
                    (body)
                }
            }
        }
    }
}

/// The session's CSRF token as the hidden form field.
pub fn csrf_field(s: &Session) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(s.csrf); }
}

/// A message box: `kind` is `ok`, `error` or `info`.
pub fn notice(kind: &str, text: &str) -> Markup {
    html! { p class={ "notice " (kind) } role=[(kind == "error").then_some("alert")] { (text) } }
}

/// Several validation messages at once.
pub fn errors(list: &[String]) -> Markup {
    html! {
        @if !list.is_empty() {
            div.notice.error role="alert" {
                @if list.len() == 1 {
                    (list[0])
                } @else {
                    "Please correct:"
                    ul { @for e in list { li { (e) } } }
                }
            }
        }
    }
}

/// An HTML answer with the console's headers: no caching, no framing, no scripts, styles from
/// the console's own stylesheet only (inline SVG charts use presentation attributes).
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// A page that only says what went wrong (403, 404, ...).
pub fn problem(status: StatusCode, title: &str, text: &str, session: Option<&Session>) -> Response {
    let chrome = Chrome {
        title,
        active: "",
        session,
        auth_disabled: false,
    };
    respond(
        status,
        page(
            &chrome,
            html! {
                (notice("error", text))
                p { a href="/console/overview" { "Back to the console" } }
            },
        ),
    )
}

/// `0.1234` as `12.3%`.
pub fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_the_page_is_utf8() {
        let chrome = Chrome {
            title: "<b>标题</b>",
            active: "/console/try",
            session: None,
            auth_disabled: false,
        };
        let out = page(&chrome, notice("error", "<script>alert(1)</script>\"'")).into_string();
        assert!(out.contains("<meta charset=\"utf-8\">"), "{out}");
        assert!(out.contains("&lt;b&gt;标题&lt;/b&gt;"), "{out}");
        assert!(
            out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{out}"
        );
        assert!(!out.contains("<script"), "{out}");
    }

    #[test]
    fn percentages_have_one_decimal() {
        assert_eq!(pct(0.1234), "12.3%");
        assert_eq!(pct(0.0), "0.0%");
        assert_eq!(pct(1.0), "100.0%");
    }
}
