//! The checks in front of `/api` (the daemon's whole API over HTTPS): a live session cookie, and
//! for anything that changes state, the session's CSRF token and a same-origin `Origin`.
//!
//! Why both: the cookie is `SameSite=Strict`, so other sites' pages cannot send it in the first
//! place; the CSRF header (which a cross-origin page cannot set without a CORS preflight the
//! daemon never allows) and the `Origin` check each hold even if the other fails (an old browser
//! without SameSite, a proxy that strips a header). A WebSocket is opened by a plain GET that
//! carries the cookie and cannot carry custom headers, so its upgrade (a GET, nothing else) is
//! held to the `Origin` check (browsers always send `Origin` on WebSocket requests).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use model::manager::ErrorKind;

use crate::error::ManagerError;
use crate::server::AppState;

/// The session cookie's name. The `__Host-` prefix makes the browser insist on `Secure`,
/// `Path=/` and no `Domain`: cookies are not kept apart by port, and without it another HTTPS
/// service on the same host could set or shadow this one (cookie tossing, login fixation).
pub const COOKIE: &str = "__Host-kestrel_session";
/// The header that carries the session's CSRF token.
pub const CSRF_HEADER: &str = "x-kestrel-csrf";

/// The value of the session cookie in the request's `Cookie` headers.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that opens a session. `Secure`: HTTPS only; `HttpOnly`: no script
/// reads it; `SameSite=Strict`: no other site's page sends it.
pub fn set_cookie(value: &str) -> String {
    format!("{COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/")
}

/// The `Set-Cookie` value that clears the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0")
}

/// What a request's `Origin` says.
#[derive(Debug, PartialEq, Eq)]
pub enum Origin {
    /// No `Origin` header (curl, a same-origin GET).
    Absent,
    /// `https://` + the request's own `Host`.
    Same,
    /// Anything else (another site, `null`, plain http, no `Host` to compare with).
    Foreign,
}

/// Compares the request's `Origin` with `https://<Host>`. Host names are case-insensitive.
pub fn origin(headers: &HeaderMap) -> Origin {
    let Some(origin) = headers.get(header::ORIGIN) else { return Origin::Absent };
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), headers.get(header::HOST).map(|h| h.to_str()))
    else {
        return Origin::Foreign;
    };
    match origin.strip_prefix("https://") {
        Some(rest) if !host.is_empty() && rest.eq_ignore_ascii_case(host) => Origin::Same,
        _ => Origin::Foreign,
    }
}

/// Whether two secrets are equal, in time that depends only on their lengths.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn forbidden(message: &str) -> Response {
    ManagerError::new(ErrorKind::Forbidden, message).into_response()
}

/// Why a request to `/api` is refused, or `None` when it may go on. `csrf` is the session's
/// token (`None`: no live session). `path` is the path without its `/api` prefix (as the nested
/// router sees it).
pub fn refusal(method: &Method, path: &str, headers: &HeaderMap, csrf: Option<&str>) -> Option<Response> {
    let Some(csrf) = csrf else {
        return Some(
            ManagerError::new(ErrorKind::Unauthorized, "log in first: no session, or it has ended")
                .into_response(),
        );
    };
    // The web's API router has no `/v1/web/*` routes (`server::web_router`); this is a second
    // check, should a route ever be added there or a path be normalised on the way. It answers
    // as the router would: there is no such route here.
    if path == "/v1/web" || path.starts_with("/v1/web/") {
        return Some(
            ManagerError::not_found(
                "no such API route on the web console: tokens are made only on the daemon's socket (kestrel daemon web-token)",
            )
            .into_response(),
        );
    }
    let origin = origin(headers);
    if origin == Origin::Foreign {
        return Some(forbidden(
            "the request's Origin is not this console's (cross-site requests are refused)",
        ));
    }
    // Only a GET can be a WebSocket handshake; any other method with an Upgrade header is an
    // ordinary request and gets the CSRF check below.
    if *method == Method::GET && is_websocket(headers) {
        if origin != Origin::Same {
            return Some(forbidden("a WebSocket needs an Origin header naming this console"));
        }
        return None;
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let sent = headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !secrets_equal(sent, csrf.as_bytes()) {
        return Some(forbidden("missing or wrong X-Kestrel-CSRF header (reload the page)"));
    }
    if origin != Origin::Same {
        return Some(forbidden(
            "a request that changes something needs an Origin header naming this console",
        ));
    }
    None
}

/// The middleware in front of the nested `/api` router. A request let through carries its
/// session's [`super::session::SessionEnd`], so what it keeps open (a console, an events stream) ends with it.
pub async fn require_session(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let live = session_cookie(request.headers()).and_then(|cookie| state.web_sessions.check(cookie));
    // `nest` has already taken `/api` off the path.
    let csrf = live.as_ref().map(|live| live.csrf.as_str());
    if let Some(refused) = refusal(request.method(), request.uri().path(), request.headers(), csrf) {
        return refused;
    }
    if let Some(live) = live {
        request.extensions_mut().insert(live.end);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn status(response: Option<Response>) -> Option<u16> {
        response.map(|r| r.status().as_u16())
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        assert_eq!(
            session_cookie(&headers(&[("cookie", "a=1; __Host-kestrel_session=abc; b=2")])),
            Some("abc")
        );
        assert_eq!(
            session_cookie(&headers(&[("cookie", "a=1"), ("cookie", "__Host-kestrel_session=xyz")])),
            Some("xyz")
        );
        assert_eq!(session_cookie(&headers(&[("cookie", "__Host-kestrel_session_x=abc")])), None);
        assert_eq!(session_cookie(&headers(&[("cookie", "__Host-kestrel_session=")])), None);
        assert_eq!(session_cookie(&headers(&[("cookie", "kestrel_session=abc")])), None, "no prefix");
        assert_eq!(session_cookie(&headers(&[])), None);
        assert!(set_cookie("v").contains("HttpOnly; Secure; SameSite=Strict; Path=/"));
        assert!(clear_cookie().contains("Max-Age=0"));
    }

    #[test]
    fn the_origin_must_be_https_and_the_host() {
        let h = |origin: &str| origin_of(&headers(&[("host", "127.0.0.1:8443"), ("origin", origin)]));
        fn origin_of(map: &HeaderMap) -> Origin {
            origin(map)
        }
        assert_eq!(h("https://127.0.0.1:8443"), Origin::Same);
        assert_eq!(h("http://127.0.0.1:8443"), Origin::Foreign);
        assert_eq!(h("https://127.0.0.1:8444"), Origin::Foreign);
        assert_eq!(h("https://evil.example"), Origin::Foreign);
        assert_eq!(h("null"), Origin::Foreign);
        assert_eq!(h("https://127.0.0.1:8443.evil.example"), Origin::Foreign);
        assert_eq!(
            origin(&headers(&[("host", "LocalHost:1"), ("origin", "https://localhost:1")])),
            Origin::Same
        );
        assert_eq!(origin(&headers(&[("origin", "https://localhost:1")])), Origin::Foreign, "no Host");
        assert_eq!(origin(&headers(&[("host", "localhost:1")])), Origin::Absent);
    }

    #[test]
    fn api_requests_need_a_session_csrf_and_origin() {
        let same = [("host", "h:1"), ("origin", "https://h:1")];
        let csrf = Some("token");
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(status(refusal(&get, "/v1/vms", &headers(&[]), None)), Some(401));
        assert_eq!(status(refusal(&get, "/v1/vms", &headers(&[]), csrf)), None, "a GET without Origin");
        assert_eq!(status(refusal(&get, "/v1/vms", &headers(&same), csrf)), None);
        assert_eq!(
            status(refusal(&get, "/v1/vms", &headers(&[("host", "h:1"), ("origin", "https://x")]), csrf)),
            Some(403)
        );
        assert_eq!(status(refusal(&get, "/v1/web/tokens", &headers(&same), csrf)), Some(404));
        assert_eq!(status(refusal(&post, "/v1/web/tokens", &headers(&same), None)), Some(401));
        // State changes: the CSRF header and the Origin, both.
        assert_eq!(status(refusal(&post, "/v1/vms/a/start", &headers(&same), csrf)), Some(403));
        let with_csrf = [("host", "h:1"), ("origin", "https://h:1"), (CSRF_HEADER, "token")];
        assert_eq!(status(refusal(&post, "/v1/vms/a/start", &headers(&with_csrf), csrf)), None);
        let wrong = [("host", "h:1"), ("origin", "https://h:1"), (CSRF_HEADER, "tokem")];
        assert_eq!(status(refusal(&post, "/v1/vms/a/start", &headers(&wrong), csrf)), Some(403));
        let no_origin = [("host", "h:1"), (CSRF_HEADER, "token")];
        assert_eq!(status(refusal(&Method::DELETE, "/v1/vms/a", &headers(&no_origin), csrf)), Some(403));
        // WebSockets: a same-origin Origin, no CSRF header.
        let ws = [("host", "h:1"), ("upgrade", "websocket")];
        assert_eq!(status(refusal(&get, "/v1/vms/a/console", &headers(&ws), csrf)), Some(403));
        let ws_same = [("host", "h:1"), ("upgrade", "WebSocket"), ("origin", "https://h:1")];
        assert_eq!(status(refusal(&get, "/v1/vms/a/console", &headers(&ws_same), csrf)), None);
        assert_eq!(status(refusal(&get, "/v1/vms/a/console", &headers(&ws_same), None)), Some(401));
        // An Upgrade header does not spare another method the CSRF check.
        assert_eq!(status(refusal(&post, "/v1/vms/a/start", &headers(&ws_same), csrf)), Some(403));
        assert_eq!(status(refusal(&Method::DELETE, "/v1/vms/a", &headers(&ws_same), csrf)), Some(403));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"ab"));
        assert!(!secrets_equal(b"", b"a"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any header bytes a client sends: the parsers and the guard answer, never panic,
            /// and without a session nothing passes.
            #[test]
            fn hostile_headers_never_panic_or_pass_without_a_session(
                cookie in proptest::collection::vec(any::<u8>(), 0..200),
                origin_bytes in proptest::collection::vec(any::<u8>(), 0..100),
                host in proptest::collection::vec(any::<u8>(), 0..100),
                path in "[ -~]{0,60}",
            ) {
                let mut map = HeaderMap::new();
                for (name, value) in [(header::COOKIE, &cookie), (header::ORIGIN, &origin_bytes), (header::HOST, &host)] {
                    if let Ok(value) = HeaderValue::from_bytes(value) {
                        map.append(name, value);
                    }
                }
                let _ = session_cookie(&map);
                let _ = origin(&map);
                for method in [Method::GET, Method::POST, Method::DELETE] {
                    let refused = refusal(&method, &path, &map, None);
                    prop_assert_eq!(refused.map(|r| r.status().as_u16()), Some(401));
                }
            }

            /// The session cookie is found among any other cookies, whatever their order.
            #[test]
            fn the_session_cookie_is_found_among_any_others(
                value in "[A-Za-z0-9_-]{1,43}",
                before in proptest::collection::vec("[a-z]{1,8}=[a-z0-9]{0,8}", 0..4),
                after in proptest::collection::vec("[a-z]{1,8}=[a-z0-9]{0,8}", 0..4),
            ) {
                let mut pairs = before.clone();
                pairs.push(format!("{COOKIE}={value}"));
                pairs.extend(after);
                let map = headers(&[("cookie", &pairs.join("; "))]);
                prop_assert_eq!(session_cookie(&map), Some(value.as_str()));
            }
        }
    }
}
